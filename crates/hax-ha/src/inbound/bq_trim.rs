//! Trimming of the broadcast queue by the RC leader.
//!
//! Every hax reads every `bq/<n>` entry and no one deletes them, and each
//! watch delivery carries the whole queue: left alone it grows with every
//! process event until deliveries pass Consul's and hax's size limits. The
//! RC leader deletes, every period, the entries every node has consumed
//! and, so that a node down for long cannot hold the queue, for a node whose
//! offset has not moved for `bq_stalled_after_ms` all but the newest
//! `bq_retain` entries ([`QueueTrimmer`]; the daemon's `[limits]`
//! settings). A node that is only
//! slow loses nothing. Only the leader trims, so two trimmers never
//! walk the same range; when leadership moves, the new leader starts by
//! finding the oldest entry left.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use hax_consul::queue::QueueTrimmer;
use hax_consul::schema::QueueKind;
use hax_consul::ConsulClient;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::metrics::Metrics;
use crate::view::ClusterView;

/// Settings of the trimming.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TrimConfig {
    /// Period.
    pub interval: Duration,
    /// Entries kept for a stalled node.
    pub retain: u64,
    /// When a node that does not consume counts as stalled.
    pub stalled_after: Duration,
}

/// Starts trimming on `tasks`; it ends with `cancel`.
pub fn spawn(
    client: ConsulClient,
    view: ClusterView,
    config: TrimConfig,
    metrics: Arc<Metrics>,
    cancel: CancellationToken,
    tasks: &TaskTracker,
) -> JoinHandle<()> {
    tasks.spawn(async move {
        let mut trimmer: Option<QueueTrimmer> = None;
        // Not at once: the local consumer registers its offset first.
        let mut ticks = tokio::time::interval_at(
            tokio::time::Instant::now() + config.interval,
            config.interval,
        );
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = ticks.tick() => {}
            }
            if !view.snapshot().is_rc() {
                // Another node trims; where it got to is unknown here.
                trimmer = None;
                continue;
            }
            let t = trimmer.get_or_insert_with(|| {
                QueueTrimmer::new(
                    client.clone(),
                    QueueKind::Broadcast,
                    config.retain,
                    config.stalled_after,
                )
            });
            let result = tokio::select! {
                _ = cancel.cancelled() => return,
                r = t.trim() => r,
            };
            match result {
                Ok(r) => {
                    metrics.bq_trimmed.fetch_add(r.deleted, Ordering::Relaxed);
                    if r.deleted > 0 {
                        tracing::debug!(
                            deleted = r.deleted,
                            upto = r.trimmed_to,
                            "broadcast queue trimmed"
                        );
                    }
                    for (node, offset) in r.lagging.iter().filter(|_| r.deleted > 0) {
                        tracing::warn!(%node, offset, trimmed_to = r.trimmed_to, retain = config.retain, "node behind the broadcast-queue retention: it misses the entries trimmed past its offset");
                    }
                }
                Err(e) => {
                    metrics.bq_trim_failures.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(error = %e, "broadcast queue not trimmed; trying again next period");
                    // What was deleted is unknown: look again next time.
                    trimmer = None;
                }
            }
        }
    })
}
