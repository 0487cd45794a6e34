//! Gives the C heap's free pages back to the system once resident memory
//! not in use has grown: after a burst of work the allocator keeps what was
//! freed (see `hax_core::heap`), and hax's resident size would otherwise
//! stay near each burst's peak and ratchet up with the next one.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use hax_core::heap::{heap_usage, release_free_heap};
use hax_ha::metrics::HeapMetrics;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How often the heap is looked at (a walk of the allocator's free lists).
pub const CHECK_EVERY: Duration = Duration::from_secs(5);

/// Growth of resident memory not in use, since the last trim, that makes
/// the next one: small enough that a burst's leftovers do not stay, large
/// enough that a steady load does not trim at every check.
pub const RETAINED_GROWTH: u64 = 8 << 20;

/// Resident bytes of this process (`VmRSS`).
fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}

/// Resident bytes not in use by an allocation (free heap pages not given
/// back, plus what is never heap: code, stacks), and the bytes in use.
fn retained() -> Option<(u64, u64)> {
    let usage = heap_usage()?;
    Some((resident_bytes()?.saturating_sub(usage.in_use), usage.in_use))
}

/// Checks every [`CHECK_EVERY`] until `stop`; trims when what is retained
/// is [`RETAINED_GROWTH`] above the least ever seen, and grew by a quarter
/// of that since the last trim (what a trim cannot give back, pages partly
/// in use, does not make a trim at every check). Ends at once where the C
/// library is not glibc. Runs on `tasks`.
pub fn spawn(
    metrics: Arc<HeapMetrics>,
    stop: CancellationToken,
    tasks: &TaskTracker,
) -> JoinHandle<()> {
    tasks.spawn(async move {
        let Some((mut floor, in_use)) = retained() else {
            return;
        };
        metrics.in_use.store(in_use, Ordering::Relaxed);
        let mut last = floor;
        let mut tick = tokio::time::interval(CHECK_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            let Some((now, in_use)) = retained() else {
                return;
            };
            metrics.retained.store(now, Ordering::Relaxed);
            metrics.in_use.store(in_use, Ordering::Relaxed);
            floor = floor.min(now);
            last = last.min(now);
            if now < floor + RETAINED_GROWTH || now < last + RETAINED_GROWTH / 4 {
                continue;
            }
            // The walk takes the arenas' locks: off the runtime's threads.
            let released = tokio::task::spawn_blocking(release_free_heap)
                .await
                .unwrap_or(false);
            let after = retained().map_or(now, |(r, _)| r);
            metrics.trims.fetch_add(1, Ordering::Relaxed);
            metrics.retained.store(after, Ordering::Relaxed);
            tracing::debug!(
                retained_before = now,
                retained_after = after,
                released,
                "heap: free pages given back"
            );
            floor = floor.min(after);
            last = after;
        }
    })
}
