//! The descriptor limit, raised at start from its soft value to the hard one,
//! as daemons serving many connections do (nginx's `worker_rlimit_nofile`,
//! the Go runtime): the soft limit is often 1,024 while systemd's hard limit
//! is far higher. Every peer connection, HTTP client and Consul connection
//! takes a descriptor; the emulator's endpoint takes at most half of the
//! limit (docs/emulator-protocol.md, "Limits"), so what is left keeps the
//! HTTP server and Consul reachable while peers flood the endpoint.

use nix::sys::resource::{getrlimit, setrlimit, Resource};

/// Raises the soft `RLIMIT_NOFILE` to the hard limit, logging what it did; a
/// failure is logged and the limit left as it was.
pub fn raise() {
    let (soft, hard) = match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the descriptor limit");
            return;
        }
    };
    if soft >= hard {
        tracing::debug!(limit = soft, "descriptor limit");
        return;
    }
    match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
        Ok(()) => tracing::info!(from = soft, to = hard, "descriptor limit raised"),
        Err(e) => tracing::warn!(
            error = %e,
            limit = soft,
            hard,
            "cannot raise the descriptor limit"
        ),
    }
}
