//! Counters and gauges of the daemon, and the collectors that expose them in
//! a [`prometheus_client`] registry for `GET /metrics`.
//!
//! The counters are plain atomics owned by the parts that count, not the
//! registry's metric types: the call sites stay a relaxed `fetch_add`, tests
//! read the fields directly, and a part can be used without any registry
//! (libraries keep no global state). Each part's collector reads its atomics
//! when the registry is encoded; the daemon builds the one registry and
//! registers each part's collector in it.

use std::fmt::Error as FmtError;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;

use hax_consul::writer::WriterMetrics;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
/// The registry parts register their collectors in, re-exported so that the
/// daemon builds it with the very version hax-ha encodes.
pub use prometheus_client::registry::Registry;

/// HA message types, in `m0_ha_msg_type` order, for per-type counters.
pub const MSG_TYPES: [&str; 12] = [
    "stob_ioq",
    "nvec_get",
    "nvec_set",
    "failvec_req",
    "failvec_rep",
    "keepalive_req",
    "keepalive_rep",
    "event_process",
    "event_service",
    "event_rpc",
    "be_io_err",
    "sns_err",
];

/// Upper bounds of the latency histograms' buckets, µs.
pub const LATENCY_BOUNDS_US: [u64; 12] = [
    25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 100_000, 1_000_000,
];

/// A latency histogram in fixed buckets ([`LATENCY_BOUNDS_US`]).
#[derive(Debug, Default)]
pub struct Latency {
    /// Observations per bucket (not cumulative); the last is above every
    /// bound.
    pub buckets: [AtomicU64; 13],
    /// Sum of the observations, µs.
    pub sum_us: AtomicU64,
}

impl Latency {
    /// Records one observation.
    pub fn observe(&self, d: std::time::Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        let i = LATENCY_BOUNDS_US
            .iter()
            .position(|b| us <= *b)
            .unwrap_or(LATENCY_BOUNDS_US.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
    }

    /// What the histogram holds now, for encoding.
    pub fn snapshot(&self) -> HistogramSnapshot {
        HistogramSnapshot::from_us(
            self.buckets
                .iter()
                .enumerate()
                .map(|(i, b)| (LATENCY_BOUNDS_US.get(i).copied(), b.load(Ordering::Relaxed))),
            self.sum_us.load(Ordering::Relaxed),
        )
    }
}

/// The daemon's metrics.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Links connected now.
    pub links: AtomicI64,
    /// Links ever connected.
    pub links_connected: AtomicU64,
    /// Links disconnected.
    pub links_disconnected: AtomicU64,
    /// Entrypoint requests received (answered or not yet: only the
    /// pending gauge is derived from it, outcomes are counted apart).
    pub entrypoint_requests: AtomicU64,
    /// Entrypoint requests answered rc 0 from memory (the pipeline counts
    /// the first requests it answers in [`EventMetrics`]).
    pub entrypoint_accepted: AtomicU64,
    /// Entrypoint requests refused (configuration not ready).
    pub entrypoint_refused: AtomicU64,
    /// Entrypoint requests answered rc 0 with an empty configuration: hax
    /// stopping, or its own rconfc asking while every confd is down.
    pub entrypoint_empty: AtomicU64,
    /// Entrypoint answers that could not be handed to Motr.
    pub entrypoint_failed: AtomicU64,
    /// Entrypoint requests answered from memory: from the request to the
    /// reply handed to Motr.
    pub entrypoint_reply: Latency,
    /// Messages received, by type (index in [`MSG_TYPES`]).
    pub received: [AtomicU64; 12],
    /// Messages sent, by type.
    pub sent: [AtomicU64; 12],
    /// Sent messages delivered.
    pub delivered: AtomicU64,
    /// Sent messages not delivered.
    pub not_delivered: AtomicU64,
    /// Broadcasts made.
    pub broadcasts: AtomicU64,
    /// Groups of broadcasts done together.
    pub broadcast_groups: AtomicU64,
    /// Check-and-set transactions of configuration states.
    pub conf_txns: AtomicU64,
    /// Configuration transactions whose check failed (written key by key).
    pub conf_txn_conflicts: AtomicU64,
    /// Time the broadcaster spent planning, writing states and sending, µs.
    pub broadcast_us: [AtomicU64; 3],
    /// Events waiting for the pipeline because its queue was full.
    pub events_overflow: AtomicU64,
    /// Watch updates received.
    pub watch_updates: AtomicU64,
    /// Keepalive requests sent to linked processes.
    pub keepalive_requests: AtomicU64,
    /// Keepalive replies matched to a request.
    pub keepalive_replies: AtomicU64,
    /// Keepalive rounds a process left unanswered.
    pub keepalive_missed: AtomicU64,
    /// Gauge: processes probed now that do not answer keepalives (missed
    /// [`crate::motr::keepalive::MISS_LIMIT`] rounds in a row).
    pub keepalive_not_responding: AtomicI64,
    /// Processes whose links were fenced because they stopped answering
    /// keepalives.
    pub keepalive_fenced: AtomicU64,
    /// Broadcast-queue entries deleted by trimming.
    pub bq_trimmed: AtomicU64,
    /// Broadcast-queue trims that failed (retried next period).
    pub bq_trim_failures: AtomicU64,
}

fn index_of(type_name: &str) -> Option<usize> {
    MSG_TYPES.iter().position(|t| *t == type_name)
}

impl Metrics {
    /// Counts a received message by type name (`HaMsgData::type_name`).
    pub fn count_received(&self, type_name: &str) {
        if let Some(i) = index_of(type_name) {
            self.received[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts a sent message by type name.
    pub fn count_sent(&self, type_name: &str, n: u64) {
        if let Some(i) = index_of(type_name) {
            self.sent[i].fetch_add(n, Ordering::Relaxed);
        }
    }
}

/// Counters for `/metrics`.
#[derive(Debug, Default)]
pub struct EventMetrics {
    /// Process events handled.
    pub process_events: AtomicU64,
    /// Process events with no health-table entry (not recorded, as the
    /// original).
    pub process_events_ignored: AtomicU64,
    /// Service events seen.
    pub service_events: AtomicU64,
    /// STOB I/O errors published to the EQ.
    pub stob_ioq: AtomicU64,
    /// NVEC SETs handled.
    pub nvec_set: AtomicU64,
    /// First entrypoint requests handled.
    pub first_requests: AtomicU64,
    /// Restarts detected (FAILED broadcast before the reply).
    pub restarts: AtomicU64,
    /// First requests of processes whose earlier links hax still held
    /// (ended by a FAILED on hax's own link before the reply).
    pub old_links_fenced: AtomicU64,
    /// First entrypoint requests answered rc 0 after restart detection.
    pub first_requests_accepted: AtomicU64,
    /// First entrypoint requests refused because Consul did not answer.
    pub first_requests_refused: AtomicU64,
    /// From a first entrypoint request to its reply handed to Motr.
    pub first_request_reply: crate::metrics::Latency,
    /// Broadcasts that could not be handed to Motr.
    pub broadcast_failures: AtomicU64,
    /// Writes refused (invalid or writer closed).
    pub write_failures: AtomicU64,
}

/// Counters for `/metrics`.
#[derive(Debug, Default)]
pub struct BqMetrics {
    /// Gauge: the last committed epoch.
    pub offset: AtomicU64,
    /// Entries committed (handled or skipped).
    pub consumed: AtomicU64,
    /// `PROCESS-STATE-UPDATE` entries broadcast.
    pub process_updates: AtomicU64,
    /// `M0_HA_MSG_NVEC` entries broadcast.
    pub device_updates: AtomicU64,
    /// `SNS_OP` entries handed on.
    pub sns_ops: AtomicU64,
    /// `STOB_IOQ_ERROR` entries broadcast.
    pub stob_errors: AtomicU64,
    /// Entries skipped (malformed, unknown, for nothing known).
    pub skipped: AtomicU64,
    /// Broadcasts with no delivery by the deadline.
    pub not_delivered: AtomicU64,
    /// Consumption rounds that stopped on an error (entry left pending).
    pub failed_rounds: AtomicU64,
}

// ---------------------------------------------------------------------------
// Encoding

/// A histogram as read for one encoding: buckets not cumulative, bounds in
/// seconds (`+Inf` last).
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramSnapshot {
    /// Upper bound (s) and observations of each bucket.
    pub buckets: Vec<(f64, u64)>,
    /// Sum of the observations, s.
    pub sum: f64,
    /// Observations.
    pub count: u64,
}

impl HistogramSnapshot {
    /// From buckets whose bounds are µs (`None`: unbounded) and a sum in µs.
    /// The count is the buckets' total, so that it always equals the `+Inf`
    /// bucket even when an observation lands between the reads.
    pub fn from_us(buckets: impl Iterator<Item = (Option<u64>, u64)>, sum_us: u64) -> Self {
        let buckets: Vec<(f64, u64)> = buckets
            .map(|(bound, n)| (bound.map_or(f64::INFINITY, |us| us as f64 / 1e6), n))
            .collect();
        HistogramSnapshot {
            count: buckets.iter().map(|b| b.1).sum(),
            buckets,
            sum: sum_us as f64 / 1e6,
        }
    }
}

/// Writing metric families from a collector, by the names they are exposed
/// under (a counter's ends in `_total`, which the encoder adds itself).
pub(crate) struct Families<'a>(pub DescriptorEncoder<'a>);

fn family_name(name: &str, kind: MetricType) -> &str {
    match kind {
        MetricType::Counter => {
            debug_assert!(name.ends_with("_total"), "counter {name} without _total");
            name.strip_suffix("_total").unwrap_or(name)
        }
        _ => name,
    }
}

impl Families<'_> {
    /// A counter without labels.
    pub fn counter(&mut self, name: &str, help: &str, v: u64) -> Result<(), FmtError> {
        let kind = MetricType::Counter;
        let m = self
            .0
            .encode_descriptor(family_name(name, kind), help, None, kind)?;
        ConstCounter::new(v).encode(m)
    }

    /// A gauge without labels.
    pub fn gauge(&mut self, name: &str, help: &str, v: i64) -> Result<(), FmtError> {
        let m = self
            .0
            .encode_descriptor(name, help, None, MetricType::Gauge)?;
        ConstGauge::new(v).encode(m)
    }

    /// A counter with one series per label set.
    pub fn counters<L: EncodeLabelSet, V: prometheus_client::encoding::EncodeCounterValue>(
        &mut self,
        name: &str,
        help: &str,
        series: impl IntoIterator<Item = (L, V)>,
    ) -> Result<(), FmtError> {
        let kind = MetricType::Counter;
        let mut m = self
            .0
            .encode_descriptor(family_name(name, kind), help, None, kind)?;
        for (labels, v) in series {
            m.encode_family(&labels)?
                .encode_counter::<NoLabelSet, V, f64>(&v, None)?;
        }
        Ok(())
    }

    /// A gauge with one series per label set.
    pub fn gauges<L: EncodeLabelSet>(
        &mut self,
        name: &str,
        help: &str,
        series: impl IntoIterator<Item = (L, i64)>,
    ) -> Result<(), FmtError> {
        let mut m = self
            .0
            .encode_descriptor(name, help, None, MetricType::Gauge)?;
        for (labels, v) in series {
            ConstGauge::new(v).encode(m.encode_family(&labels)?)?;
        }
        Ok(())
    }

    /// A histogram with one series per label set.
    pub fn histograms<L: EncodeLabelSet>(
        &mut self,
        name: &str,
        help: &str,
        series: impl IntoIterator<Item = (L, HistogramSnapshot)>,
    ) -> Result<(), FmtError> {
        let mut m = self
            .0
            .encode_descriptor(name, help, None, MetricType::Histogram)?;
        for (labels, h) in series {
            m.encode_family(&labels)?
                .encode_histogram::<NoLabelSet>(h.sum, h.count, &h.buckets, None)?;
        }
        Ok(())
    }
}

fn load(v: &AtomicU64) -> u64 {
    v.load(Ordering::Relaxed)
}

fn gauge_value(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// How many events wait in the pipeline's input, read when the registry is
/// encoded.
pub type QueueDepth = Arc<dyn Fn() -> usize + Send + Sync>;

struct DaemonCollector {
    m: Arc<Metrics>,
    events: Arc<EventMetrics>,
    queue_depth: QueueDepth,
}

impl std::fmt::Debug for DaemonCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DaemonCollector").finish_non_exhaustive()
    }
}

impl Metrics {
    /// Registers these metrics in `registry`. Entrypoint answers are counted
    /// in two places (from memory here, first requests by the pipeline, in
    /// `events`) and exposed as one family; `queue_depth` gives
    /// `hax_event_queue_depth`.
    pub fn register(
        self: &Arc<Self>,
        registry: &mut Registry,
        events: &Arc<EventMetrics>,
        queue_depth: QueueDepth,
    ) {
        registry.register_collector(Box::new(DaemonCollector {
            m: Arc::clone(self),
            events: Arc::clone(events),
            queue_depth,
        }));
    }
}

impl Collector for DaemonCollector {
    fn encode(&self, encoder: DescriptorEncoder) -> Result<(), FmtError> {
        let (m, ev) = (&*self.m, &*self.events);
        let mut f = Families(encoder);
        f.gauge(
            "hax_links",
            "HA links connected now.",
            m.links.load(Ordering::Relaxed),
        )?;
        f.counter(
            "hax_links_connected_total",
            "HA links connected.",
            load(&m.links_connected),
        )?;
        f.counter(
            "hax_links_disconnected_total",
            "HA links disconnected.",
            load(&m.links_disconnected),
        )?;
        f.counter(
            "hax_links_of_old_incarnations_fenced_total",
            "First entrypoint requests of processes whose earlier links hax still held; those links were ended before the reply.",
            load(&ev.old_links_fenced),
        )?;
        f.counter(
            "hax_process_restarts_total",
            "Restarts after a crash detected at a first entrypoint request (FAILED broadcast to the others before the reply).",
            load(&ev.restarts),
        )?;
        let outcomes = [
            (
                "accepted",
                load(&m.entrypoint_accepted) + load(&ev.first_requests_accepted),
            ),
            (
                "refused",
                load(&m.entrypoint_refused) + load(&ev.first_requests_refused),
            ),
            ("empty", load(&m.entrypoint_empty)),
            ("failed", load(&m.entrypoint_failed)),
        ];
        let answered: u64 = outcomes.iter().map(|o| o.1).sum();
        f.counters(
            "hax_entrypoint_requests_total",
            "Entrypoint requests answered, by outcome: accepted (the configuration), refused (EAGAIN: not ready, or Consul did not answer restart detection), empty (an empty configuration: hax stopping, or every confd down), failed (the answer could not be handed to Motr).",
            outcomes.map(|(o, n)| ([("outcome", o)], n)),
        )?;
        f.gauge(
            "hax_entrypoint_requests_pending",
            "Entrypoint requests received and not answered yet.",
            gauge_value(load(&m.entrypoint_requests).saturating_sub(answered)),
        )?;
        f.histograms(
            "hax_entrypoint_reply_seconds",
            "From an entrypoint request to its reply handed to Motr: `first` requests wait for restart detection (its Consul writes), `memory` ones are answered at once.",
            [
                ([("kind", "first")], ev.first_request_reply.snapshot()),
                ([("kind", "memory")], m.entrypoint_reply.snapshot()),
            ],
        )?;
        let by_type = |counts: &'static str, arr: &[AtomicU64; 12]| {
            MSG_TYPES
                .iter()
                .zip(arr.iter().map(load).collect::<Vec<_>>())
                .map(move |(t, n)| ([("direction", counts), ("type", *t)], n))
        };
        f.counters(
            "hax_messages_total",
            "HA messages by direction and type.",
            by_type("in", &m.received).chain(by_type("out", &m.sent)),
        )?;
        f.counters(
            "hax_sent_outcomes_total",
            "Outcomes of sent messages.",
            [
                ([("outcome", "delivered")], load(&m.delivered)),
                ([("outcome", "not_delivered")], load(&m.not_delivered)),
            ],
        )?;
        f.counter(
            "hax_broadcast_groups_total",
            "Groups of broadcasts done together (one Consul round trip, shared messages).",
            load(&m.broadcast_groups),
        )?;
        f.counters(
            "hax_broadcast_seconds_total",
            "Time the broadcaster spent, by step.",
            ["plan", "write", "send"]
                .iter()
                .zip(&m.broadcast_us)
                .map(|(step, us)| ([("step", *step)], load(us) as f64 / 1e6)),
        )?;
        f.counters(
            "hax_conf_transactions_total",
            "Check-and-set transactions of configuration states, by result.",
            [
                ([("result", "sent")], load(&m.conf_txns)),
                ([("result", "conflict")], load(&m.conf_txn_conflicts)),
            ],
        )?;
        f.counter(
            "hax_broadcasts_total",
            "HA state broadcasts.",
            load(&m.broadcasts),
        )?;
        f.gauge(
            "hax_event_queue_depth",
            "Motr events waiting for the pipeline.",
            i64::try_from((self.queue_depth)()).unwrap_or(i64::MAX),
        )?;
        f.counter(
            "hax_event_queue_overflow_total",
            "Motr events that found the pipeline queue full.",
            load(&m.events_overflow),
        )?;
        f.counter(
            "hax_watch_updates_total",
            "Updates received from Consul watches and resyncs.",
            load(&m.watch_updates),
        )?;
        f.counter(
            "hax_keepalive_requests_total",
            "Keepalive requests sent to linked processes.",
            load(&m.keepalive_requests),
        )?;
        f.counter(
            "hax_keepalive_replies_total",
            "Keepalive replies matched to a request.",
            load(&m.keepalive_replies),
        )?;
        f.counter(
            "hax_keepalive_missed_total",
            "Keepalive rounds a linked process left unanswered.",
            load(&m.keepalive_missed),
        )?;
        f.gauge(
            "hax_keepalive_not_responding",
            "Processes probed now that left their last keepalive rounds unanswered (3 in a row).",
            m.keepalive_not_responding.load(Ordering::Relaxed),
        )?;
        f.counter(
            "hax_keepalive_fenced_total",
            "Processes whose links were fenced because they stopped answering keepalives.",
            load(&m.keepalive_fenced),
        )?;
        f.counter(
            "hax_bq_trimmed_total",
            "Broadcast-queue entries deleted by the RC leader's trimming.",
            load(&m.bq_trimmed),
        )?;
        f.counter(
            "hax_bq_trim_failures_total",
            "Broadcast-queue trims that failed (tried again next period).",
            load(&m.bq_trim_failures),
        )
    }
}

#[derive(Debug)]
struct BqCollector(Arc<BqMetrics>, Arc<AtomicU64>);

impl BqMetrics {
    /// Registers these metrics in `registry`; `newest` is the newest epoch
    /// of the queue this node has heard of
    /// ([`crate::inbound::bq::BqInbox::newest`]).
    pub fn register(self: &Arc<Self>, registry: &mut Registry, newest: Arc<AtomicU64>) {
        registry.register_collector(Box::new(BqCollector(Arc::clone(self), newest)));
    }
}

impl Collector for BqCollector {
    fn encode(&self, encoder: DescriptorEncoder) -> Result<(), FmtError> {
        let mut f = Families(encoder);
        let offset = load(&self.0.offset);
        f.gauge(
            "hax_bq_offset",
            "Last broadcast queue entry handled by this node.",
            gauge_value(offset),
        )?;
        // Never below the offset: an entry handled was known, even if no
        // delivery announced it (the consumer's own reads).
        f.gauge(
            "hax_bq_newest",
            "Newest broadcast queue entry this node knows of; minus hax_bq_offset, the entries it has not handled yet.",
            gauge_value(load(&self.1).max(offset)),
        )?;
        f.counter(
            "hax_bq_consumed_total",
            "Broadcast queue entries handled.",
            load(&self.0.consumed),
        )
    }
}

/// The Consul writer's metrics. Its counters stay plain atomics in
/// hax-consul, which is a Consul library and does not choose its users'
/// metrics library; this collector exposes them.
#[derive(Debug)]
struct WriterCollector(Arc<WriterMetrics>);

/// Registers the Consul writer's metrics in `registry`.
pub fn register_writer(registry: &mut Registry, writer: Arc<WriterMetrics>) {
    registry.register_collector(Box::new(WriterCollector(writer)));
}

impl Collector for WriterCollector {
    fn encode(&self, encoder: DescriptorEncoder) -> Result<(), FmtError> {
        let w = &*self.0;
        let mut f = Families(encoder);
        f.gauge(
            "hax_consul_write_queue_depth",
            "Consul writes waiting.",
            gauge_value(load(&w.queue_depth)),
        )?;
        f.counter(
            "hax_consul_writes_committed_total",
            "Consul writes committed.",
            load(&w.committed),
        )?;
        f.counter(
            "hax_consul_writes_coalesced_total",
            "Consul writes replaced by a newer value of the same key before being sent.",
            load(&w.coalesced),
        )?;
        f.counter(
            "hax_consul_writes_rejected_total",
            "Consul writes refused by Consul for good.",
            load(&w.rejected),
        )?;
        f.counter(
            "hax_consul_writes_abandoned_total",
            "Consul writes abandoned at shutdown.",
            load(&w.abandoned),
        )?;
        f.counter(
            "hax_consul_transactions_total",
            "Consul transactions sent.",
            load(&w.batches),
        )?;
        f.counter(
            "hax_consul_errors_total",
            "Consul write attempts that failed.",
            load(&w.errors),
        )?;
        f.counter(
            "hax_consul_retries_total",
            "Consul write attempts retried.",
            load(&w.retries),
        )?;
        f.gauge(
            "hax_consul_outage",
            "1 while Consul does not take writes.",
            gauge_value(load(&w.outage)),
        )?;
        f.histograms(
            "hax_consul_write_seconds",
            "From submission to commit of a Consul write.",
            [(
                [] as [(&str, &str); 0],
                HistogramSnapshot::from_us(w.latency.buckets(), w.latency.sum_us()),
            )],
        )
    }
}

#[derive(Debug)]
struct BuildInfo {
    version: String,
}

/// Registers `hax_build_info{version, backend} 1`: `version` as given (the
/// daemon's), the backend the Motr interface was built with.
pub fn register_build_info(registry: &mut Registry, version: &str) {
    registry.register_collector(Box::new(BuildInfo {
        version: version.to_owned(),
    }));
}

impl Collector for BuildInfo {
    fn encode(&self, encoder: DescriptorEncoder) -> Result<(), FmtError> {
        Families(encoder).gauges(
            "hax_build_info",
            "Always 1: the version of hax and the Motr backend it was built with (emulator or motr).",
            [(
                [
                    ("version", self.version.as_str()),
                    ("backend", hax_core::BACKEND),
                ],
                1,
            )],
        )
    }
}

/// What the daemon's heap trimmer did (hax-bin's `heap.rs`).
#[derive(Debug, Default)]
pub struct HeapMetrics {
    /// Free heap pages given back to the system.
    pub trims: AtomicU64,
    /// Resident bytes not in use by an allocation, at the last check.
    pub retained: AtomicU64,
    /// Bytes in allocations not freed, at the last check: what hax holds,
    /// as against what the allocator keeps.
    pub in_use: AtomicU64,
}

#[derive(Debug)]
struct HeapCollector(Arc<HeapMetrics>);

/// Registers `hax_heap_trims_total`, `hax_heap_retained_bytes` and
/// `hax_heap_in_use_bytes`.
pub fn register_heap(registry: &mut Registry, heap: Arc<HeapMetrics>) {
    registry.register_collector(Box::new(HeapCollector(heap)));
}

impl Collector for HeapCollector {
    fn encode(&self, encoder: DescriptorEncoder) -> Result<(), FmtError> {
        let mut f = Families(encoder);
        f.counter(
            "hax_heap_trims_total",
            "Times the heap's free pages were given back to the system after resident memory not in use grew.",
            self.0.trims.load(Ordering::Relaxed),
        )?;
        f.gauge(
            "hax_heap_retained_bytes",
            "Resident memory not in use by an allocation (the C heap's free pages, code, stacks), at the last check.",
            i64::try_from(self.0.retained.load(Ordering::Relaxed)).unwrap_or(i64::MAX),
        )?;
        f.gauge(
            "hax_heap_in_use_bytes",
            "Bytes of the C heap in allocations not freed (Rust's and the emulator's), at the last check.",
            i64::try_from(self.0.in_use.load(Ordering::Relaxed)).unwrap_or(i64::MAX),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn encode(registry: &Registry) -> String {
        let mut out = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut out, registry).expect("encodes");
        out
    }

    /// The value of the sample `key` (`name{labels}`), if exposed once.
    fn sample(text: &str, key: &str) -> Option<f64> {
        let mut found = text
            .lines()
            .filter_map(|l| l.strip_prefix(key)?.strip_prefix(' ')?.parse().ok());
        let v = found.next();
        assert!(found.next().is_none(), "{key} twice in\n{text}");
        v
    }

    fn daemon_registry(m: &Arc<Metrics>, events: &Arc<EventMetrics>, depth: usize) -> Registry {
        let mut r = Registry::default();
        m.register(&mut r, events, Arc::new(move || depth));
        r
    }

    #[test]
    fn latencies_encode_as_a_cumulative_histogram_by_kind() {
        let m = Arc::new(Metrics::default());
        let events = Arc::new(EventMetrics::default());
        for us in [10, 30, 30, 700, 2_000_000] {
            m.entrypoint_reply.observe(Duration::from_micros(us));
        }
        events.first_request_reply.observe(Duration::from_millis(3));
        let text = encode(&daemon_registry(&m, &events, 0));
        let b = |kind: &str, le: &str| {
            sample(
                &text,
                &format!("hax_entrypoint_reply_seconds_bucket{{kind=\"{kind}\",le=\"{le}\"}}"),
            )
        };
        assert_eq!(b("memory", "2.5e-05"), Some(1.0), "{text}");
        assert_eq!(b("memory", "5e-05"), Some(3.0));
        assert_eq!(b("memory", "0.0005"), Some(3.0));
        assert_eq!(b("memory", "0.001"), Some(4.0));
        assert_eq!(b("memory", "1"), Some(4.0));
        assert_eq!(b("memory", "+Inf"), Some(5.0));
        assert_eq!(b("first", "0.0025"), Some(0.0));
        assert_eq!(b("first", "0.005"), Some(1.0));
        assert_eq!(
            sample(&text, "hax_entrypoint_reply_seconds_count{kind=\"memory\"}"),
            Some(5.0)
        );
        let sum = sample(&text, "hax_entrypoint_reply_seconds_sum{kind=\"memory\"}");
        assert!(sum.is_some_and(|s| (s - 2.00077).abs() < 1e-9), "{text}");
        assert!(text.contains("# TYPE hax_entrypoint_reply_seconds histogram\n"));
    }

    #[test]
    fn counters_and_gauges_keep_their_names_and_labels() {
        let m = Arc::new(Metrics::default());
        m.count_received("event_process");
        m.count_received("event_process");
        m.count_sent("nvec_set", 3);
        m.count_received("no such type");
        m.links.store(2, Ordering::Relaxed);
        m.keepalive_missed.store(4, Ordering::Relaxed);
        m.keepalive_not_responding.store(2, Ordering::Relaxed);
        m.broadcast_us[1].store(1_500_000, Ordering::Relaxed);
        let text = encode(&daemon_registry(&m, &Arc::default(), 7));
        assert_eq!(sample(&text, "hax_keepalive_missed_total"), Some(4.0));
        assert_eq!(sample(&text, "hax_keepalive_not_responding"), Some(2.0));
        assert_eq!(
            sample(
                &text,
                "hax_messages_total{direction=\"in\",type=\"event_process\"}"
            ),
            Some(2.0)
        );
        assert_eq!(
            sample(
                &text,
                "hax_messages_total{direction=\"out\",type=\"nvec_set\"}"
            ),
            Some(3.0)
        );
        assert_eq!(
            sample(&text, "hax_broadcast_seconds_total{step=\"write\"}"),
            Some(1.5)
        );
        assert_eq!(sample(&text, "hax_event_queue_depth"), Some(7.0));
        assert!(
            text.contains("# TYPE hax_links gauge\nhax_links 2\n"),
            "{text}"
        );
        assert!(text.contains("# TYPE hax_links_connected_total counter\n"));
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (name, value) = line.rsplit_once(' ').expect("name value");
            assert!(name.starts_with("hax_"), "{line}");
            assert!(value.parse::<f64>().is_ok(), "{line}");
        }
    }

    #[test]
    fn entrypoint_outcomes_add_up_to_the_requests_answered() {
        let m = Arc::new(Metrics::default());
        let events = Arc::new(EventMetrics::default());
        // Six received: two answered from memory, one empty while stopping,
        // one refused, one first request accepted by the pipeline, one not
        // answered yet.
        m.entrypoint_requests.store(6, Ordering::Relaxed);
        m.entrypoint_accepted.store(2, Ordering::Relaxed);
        m.entrypoint_empty.store(1, Ordering::Relaxed);
        m.entrypoint_refused.store(1, Ordering::Relaxed);
        events.first_requests_accepted.store(1, Ordering::Relaxed);
        let text = encode(&daemon_registry(&m, &events, 0));
        let outcome = |o: &str| {
            sample(
                &text,
                &format!("hax_entrypoint_requests_total{{outcome=\"{o}\"}}"),
            )
            .unwrap_or_else(|| panic!("{o} missing from\n{text}"))
        };
        assert_eq!(outcome("accepted"), 3.0);
        assert_eq!(outcome("refused"), 1.0);
        assert_eq!(outcome("empty"), 1.0);
        assert_eq!(outcome("failed"), 0.0);
        assert!(!text.contains("outcome=\"received\""), "{text}");
        assert_eq!(sample(&text, "hax_entrypoint_requests_pending"), Some(1.0));
    }

    #[test]
    fn consul_write_latency_is_a_histogram_from_half_a_millisecond_to_thirty_seconds() {
        let w = Arc::new(WriterMetrics::default());
        w.latency.observe(Duration::from_micros(400));
        w.latency.observe(Duration::from_millis(20));
        w.latency.observe(Duration::from_secs(60));
        w.committed.store(3, Ordering::Relaxed);
        let mut r = Registry::default();
        register_writer(&mut r, Arc::clone(&w));
        let text = encode(&r);
        let b = |le: &str| {
            sample(
                &text,
                &format!("hax_consul_write_seconds_bucket{{le=\"{le}\"}}"),
            )
        };
        assert_eq!(b("0.0005"), Some(1.0), "{text}");
        assert_eq!(b("0.01"), Some(1.0));
        assert_eq!(b("0.025"), Some(2.0));
        assert_eq!(b("30"), Some(2.0));
        assert_eq!(b("+Inf"), Some(3.0));
        assert_eq!(sample(&text, "hax_consul_write_seconds_count"), Some(3.0));
        assert_eq!(
            sample(&text, "hax_consul_writes_committed_total"),
            Some(3.0)
        );
        // The gauges it replaces, which could not be aggregated, are gone.
        assert!(!text.contains("hax_consul_write_seconds_avg"), "{text}");
        assert!(!text.contains("hax_consul_write_seconds_max"), "{text}");
    }

    #[test]
    fn build_info_names_the_version_and_the_backend() {
        let mut r = Registry::default();
        register_build_info(&mut r, "1.2.3");
        let text = encode(&r);
        let key = format!(
            "hax_build_info{{version=\"1.2.3\",backend=\"{}\"}}",
            hax_core::BACKEND
        );
        assert_eq!(sample(&text, &key), Some(1.0), "{text}");
        assert!(["emulator", "motr"].contains(&hax_core::BACKEND));
        assert!(text.contains("# TYPE hax_build_info gauge\n"), "{text}");
    }

    #[test]
    fn the_bq_consumer_registers_its_own() {
        let bq = Arc::new(BqMetrics::default());
        bq.offset.store(41, Ordering::Relaxed);
        bq.consumed.store(5, Ordering::Relaxed);
        let newest = Arc::new(AtomicU64::new(40));
        let mut r = Registry::default();
        bq.register(&mut r, Arc::clone(&newest));
        let text = encode(&r);
        assert_eq!(sample(&text, "hax_bq_offset"), Some(41.0));
        assert_eq!(
            sample(&text, "hax_bq_newest"),
            Some(41.0),
            "never below the offset"
        );
        newest.store(44, Ordering::Relaxed);
        assert_eq!(sample(&encode(&r), "hax_bq_newest"), Some(44.0));
        assert_eq!(sample(&text, "hax_bq_consumed_total"), Some(5.0));
    }
}
