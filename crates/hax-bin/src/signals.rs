//! SIGTERM and SIGINT, taken by a thread of hax's own rather than by a
//! handler.
//!
//! A handler is process-wide and last-installer-wins: libraries loaded with
//! libmotr (libfabric's providers) install their own for SIGINT and SIGTERM,
//! and a handler installed before them is chained to theirs or replaced, so
//! a `kill -TERM` of hax on the libfabric transport ended it with status 1
//! and no log line. A blocked signal runs no handler whoever installed it:
//! both are blocked in `main` before any thread exists, so every thread
//! (the runtime's, Motr's, libfabric's) inherits the mask, and one thread
//! takes them with `sigwait` (docs/motr.md, "Signals").

use nix::sys::signal::{SigSet, Signal};

/// SIGTERM and SIGINT, blocked in the thread that made this value.
pub struct Blocked(SigSet);

/// Blocks SIGTERM and SIGINT in the calling thread. Call it first thing in
/// `main`: only threads created after it inherit the mask, and a thread
/// without it would run whatever handler a library installed.
pub fn block() -> Result<Blocked, String> {
    let mut set = SigSet::empty();
    set.add(Signal::SIGTERM);
    set.add(Signal::SIGINT);
    set.thread_block()
        .map_err(|e| format!("cannot block SIGTERM and SIGINT: {e}"))?;
    Ok(Blocked(set))
}

impl Blocked {
    /// Starts the thread that waits for the blocked signals: the first one
    /// calls `first`, the second `second` (which is expected not to return:
    /// a third signal has no one to take it and stays pending).
    pub fn spawn_waiter(
        self,
        first: impl FnOnce(Signal) + Send + 'static,
        second: impl FnOnce(Signal) + Send + 'static,
    ) -> std::io::Result<()> {
        let set = self.0;
        std::thread::Builder::new()
            .name("hax-signals".into())
            .spawn(move || {
                let Some(sig) = wait(&set) else { return };
                first(sig);
                let Some(sig) = wait(&set) else { return };
                second(sig);
            })
            .map(drop)
    }
}

/// The next of the blocked signals, or None when `sigwait` fails (it fails
/// only for an invalid set, so this is logged rather than retried).
fn wait(set: &SigSet) -> Option<Signal> {
    match set.wait() {
        Ok(sig) => Some(sig),
        Err(e) => {
            tracing::error!("cannot wait for SIGTERM and SIGINT: {e}; hax stops only when killed");
            None
        }
    }
}
