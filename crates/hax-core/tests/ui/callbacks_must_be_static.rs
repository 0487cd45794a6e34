// Callbacks outlive any stack frame: a handler borrowing a local is rejected.
use hax_core::{Callbacks, Ctx, EntrypointRequest, EntrypointResponder};

struct Borrower<'a> {
    name: &'a str,
}

impl<'a> Callbacks for Borrower<'a> {
    fn entrypoint_request(&self, _cx: &Ctx<'_>, _req: EntrypointRequest, _r: EntrypointResponder) {
        let _ = self.name;
    }
}

fn main() {}
