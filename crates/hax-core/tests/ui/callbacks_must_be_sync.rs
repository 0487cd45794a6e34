// Callbacks run on several Motr threads at once: a non-Sync handler is rejected.
use hax_core::{Callbacks, Ctx, EntrypointRequest, EntrypointResponder};
use std::cell::Cell;

struct Counter {
    n: Cell<u64>,
}

impl Callbacks for Counter {
    fn entrypoint_request(&self, _cx: &Ctx<'_>, _req: EntrypointRequest, _r: EntrypointResponder) {
        self.n.set(self.n.get() + 1);
    }
}

fn main() {}
