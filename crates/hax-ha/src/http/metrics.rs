//! `GET /metrics`: every part's counters in the Prometheus text format.

use std::sync::Arc;

use hax_consul::writer::WriterMetrics;

use crate::http::ApiMetrics;
use crate::leader::stats::StatsMetrics;
use crate::metrics::{BqMetrics, EventMetrics, Metrics};
use crate::motr::fencing::HeldMetrics;

/// How many events wait in the pipeline's input, read when `/metrics` is
/// asked for.
pub type QueueDepth = Arc<dyn Fn() -> usize + Send + Sync>;

/// The counters `/metrics` renders, one per part of the daemon.
#[derive(Clone)]
pub struct MetricsSources {
    /// The daemon's own.
    pub daemon: Arc<Metrics>,
    /// The Consul writer's.
    pub writer: Arc<WriterMetrics>,
    /// The BQ consumer's.
    pub bq: Arc<BqMetrics>,
    /// The event pipeline's.
    pub events: Arc<EventMetrics>,
    /// The HTTP API's.
    pub api: Arc<ApiMetrics>,
    /// The RC leader's statistics updaters'.
    pub stats: Arc<StatsMetrics>,
    /// The held FAILED notes'.
    pub held: Arc<HeldMetrics>,
    /// The pipeline's input depth.
    pub queue_depth: QueueDepth,
}

impl std::fmt::Debug for MetricsSources {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetricsSources").finish_non_exhaustive()
    }
}

impl MetricsSources {
    /// Everything, as `/metrics` answers it.
    pub fn render(&self) -> String {
        self.daemon.events_queued.store(
            i64::try_from((self.queue_depth)()).unwrap_or(i64::MAX),
            std::sync::atomic::Ordering::Relaxed,
        );
        let mut text = self.daemon.render_all(&self.writer, &self.bq, &self.events);
        self.api.render(&mut text);
        self.stats.render(&mut text);
        self.held.render(&mut text);
        text
    }
}
