// A token handed to a callback cannot outlive it, even on the same thread.
use hax_core::{Callbacks, Ctx, EntrypointRequest, EntrypointResponder, MotrThread};
use std::cell::Cell;

thread_local! {
    static KEPT: Cell<Option<MotrThread<'static>>> = const { Cell::new(None) };
}

struct Keeper;

impl Callbacks for Keeper {
    fn entrypoint_request(&self, cx: &Ctx<'_>, _req: EntrypointRequest, _r: EntrypointResponder) {
        KEPT.with(|k| k.set(Some(cx.thread())));
    }
}

fn main() {}
