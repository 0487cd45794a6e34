// The callback context cannot be sent to another thread.
use hax_core::{Callbacks, Ctx, EntrypointRequest, EntrypointResponder};

struct Sender;

impl Callbacks for Sender {
    fn entrypoint_request(&self, cx: &Ctx<'_>, _req: EntrypointRequest, _r: EntrypointResponder) {
        std::thread::scope(|s| {
            s.spawn(|| {
                let _ = cx.links();
            });
        });
    }
}

fn main() {}
