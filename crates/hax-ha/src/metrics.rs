//! Counters and gauges of the daemon, rendered in the Prometheus text format
//! for `GET /metrics`. Plain atomics owned by the daemon: no global registry.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use hax_consul::writer::WriterMetrics;

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

    /// The Prometheus histogram lines (`_bucket`, `_sum`, `_count`) of
    /// `name` with `labels` (`k="v"` pairs, comma separated, or empty).
    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        let mut cumulative = 0;
        for (i, b) in self.buckets.iter().enumerate() {
            cumulative += b.load(Ordering::Relaxed);
            let le = LATENCY_BOUNDS_US
                .get(i)
                .map_or("+Inf".to_owned(), |us| format!("{}", *us as f64 / 1e6));
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels}{sep}le=\"{le}\"}} {cumulative}"
            );
        }
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let sum = self.sum_us.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum{braces} {sum:.6}");
        let _ = writeln!(out, "{name}_count{braces} {cumulative}");
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
    /// Entrypoint requests received.
    pub entrypoint_requests: AtomicU64,
    /// Entrypoint requests answered rc 0.
    pub entrypoint_accepted: AtomicU64,
    /// Entrypoint requests refused (configuration not ready).
    pub entrypoint_refused: AtomicU64,
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
    /// Events queued for the pipeline now.
    pub events_queued: AtomicI64,
    /// Watch updates received.
    pub watch_updates: AtomicU64,
    /// Keepalive requests sent to linked processes.
    pub keepalive_requests: AtomicU64,
    /// Keepalive replies matched to a request.
    pub keepalive_replies: AtomicU64,
    /// Keepalive rounds a process left unanswered.
    pub keepalive_missed: AtomicU64,
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

    /// The Prometheus text exposition of these metrics and of the Consul
    /// writer's and the broadcast queue consumer's.
    pub fn render_all(
        &self,
        writer: &WriterMetrics,
        bq: &BqMetrics,
        events: &EventMetrics,
    ) -> String {
        let g = |v: &AtomicU64| v.load(Ordering::Relaxed);
        // First requests of other processes are answered by the pipeline,
        // after restart detection.
        let mut out = self.render_with(
            g(&events.first_requests_accepted),
            g(&events.first_requests_refused),
        );
        let mut metric = |name: &str, kind: &str, help: &str, value: String| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        };
        metric(
            "hax_consul_write_queue_depth",
            "gauge",
            "Consul writes waiting.",
            g(&writer.queue_depth).to_string(),
        );
        metric(
            "hax_consul_writes_committed_total",
            "counter",
            "Consul writes committed.",
            g(&writer.committed).to_string(),
        );
        metric(
            "hax_consul_writes_coalesced_total",
            "counter",
            "Consul writes replaced by a newer value of the same key before being sent.",
            g(&writer.coalesced).to_string(),
        );
        metric(
            "hax_consul_transactions_total",
            "counter",
            "Consul transactions sent.",
            g(&writer.batches).to_string(),
        );
        metric(
            "hax_consul_errors_total",
            "counter",
            "Consul write attempts that failed.",
            g(&writer.errors).to_string(),
        );
        metric(
            "hax_consul_retries_total",
            "counter",
            "Consul write attempts retried.",
            g(&writer.retries).to_string(),
        );
        metric(
            "hax_consul_outage",
            "gauge",
            "1 while Consul does not take writes.",
            g(&writer.outage).to_string(),
        );
        let n = g(&writer.latency_count);
        let avg = if n == 0 {
            0.0
        } else {
            g(&writer.latency_us_sum) as f64 / n as f64 / 1e6
        };
        metric(
            "hax_consul_write_seconds_avg",
            "gauge",
            "Average time from submission to commit of a Consul write.",
            format!("{avg:.6}"),
        );
        metric(
            "hax_consul_write_seconds_max",
            "gauge",
            "Longest time from submission to commit of a Consul write.",
            format!("{:.6}", g(&writer.latency_us_max) as f64 / 1e6),
        );
        let _ = writeln!(
            out,
            "# HELP hax_entrypoint_reply_seconds From an entrypoint request to its reply handed to Motr: `first` requests wait for restart detection (its Consul writes), `memory` ones are answered at once.\n# TYPE hax_entrypoint_reply_seconds histogram"
        );
        events.first_request_reply.render(
            &mut out,
            "hax_entrypoint_reply_seconds",
            "kind=\"first\"",
        );
        self.entrypoint_reply
            .render(&mut out, "hax_entrypoint_reply_seconds", "kind=\"memory\"");
        let mut metric = |name: &str, kind: &str, help: &str, value: String| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        };
        metric(
            "hax_bq_offset",
            "gauge",
            "Last broadcast queue entry handled by this node.",
            g(&bq.offset).to_string(),
        );
        metric(
            "hax_bq_consumed_total",
            "counter",
            "Broadcast queue entries handled.",
            g(&bq.consumed).to_string(),
        );
        out
    }

    /// The Prometheus text exposition of these metrics.
    pub fn render(&self) -> String {
        self.render_with(0, 0)
    }

    fn render_with(&self, more_accepted: u64, more_refused: u64) -> String {
        let mut out = String::with_capacity(4096);
        let g = |v: &AtomicU64| v.load(Ordering::Relaxed);
        let gi = |v: &AtomicI64| v.load(Ordering::Relaxed);
        let mut metric = |name: &str, kind: &str, help: &str, lines: Vec<(String, String)>| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (labels, value) in lines {
                let _ = writeln!(out, "{name}{labels} {value}");
            }
        };
        let one = |v: String| vec![(String::new(), v)];
        metric(
            "hax_links",
            "gauge",
            "HA links connected now.",
            one(gi(&self.links).to_string()),
        );
        metric(
            "hax_links_connected_total",
            "counter",
            "HA links connected.",
            one(g(&self.links_connected).to_string()),
        );
        metric(
            "hax_links_disconnected_total",
            "counter",
            "HA links disconnected.",
            one(g(&self.links_disconnected).to_string()),
        );
        metric(
            "hax_entrypoint_requests_total",
            "counter",
            "Entrypoint requests by outcome.",
            vec![
                (
                    "{outcome=\"received\"}".into(),
                    g(&self.entrypoint_requests).to_string(),
                ),
                (
                    "{outcome=\"accepted\"}".into(),
                    (g(&self.entrypoint_accepted) + more_accepted).to_string(),
                ),
                (
                    "{outcome=\"refused\"}".into(),
                    (g(&self.entrypoint_refused) + more_refused).to_string(),
                ),
            ],
        );
        let by_type = |arr: &[AtomicU64; 12], dir: &str| {
            MSG_TYPES
                .iter()
                .zip(arr)
                .map(|(t, v)| {
                    (
                        format!("{{direction=\"{dir}\",type=\"{t}\"}}"),
                        g(v).to_string(),
                    )
                })
                .collect::<Vec<_>>()
        };
        let mut lines = by_type(&self.received, "in");
        lines.extend(by_type(&self.sent, "out"));
        metric(
            "hax_messages_total",
            "counter",
            "HA messages by direction and type.",
            lines,
        );
        metric(
            "hax_sent_outcomes_total",
            "counter",
            "Outcomes of sent messages.",
            vec![
                (
                    "{outcome=\"delivered\"}".into(),
                    g(&self.delivered).to_string(),
                ),
                (
                    "{outcome=\"not_delivered\"}".into(),
                    g(&self.not_delivered).to_string(),
                ),
            ],
        );
        metric(
            "hax_broadcast_groups_total",
            "counter",
            "Groups of broadcasts done together (one Consul round trip, shared messages).",
            one(g(&self.broadcast_groups).to_string()),
        );
        metric(
            "hax_broadcast_seconds_total",
            "counter",
            "Time the broadcaster spent, by step.",
            ["plan", "write", "send"]
                .iter()
                .zip(&self.broadcast_us)
                .map(|(step, v)| {
                    (
                        format!("{{step=\"{step}\"}}"),
                        format!("{:.6}", g(v) as f64 / 1e6),
                    )
                })
                .collect(),
        );
        metric(
            "hax_conf_transactions_total",
            "counter",
            "Check-and-set transactions of configuration states, by result.",
            vec![
                ("{result=\"sent\"}".into(), g(&self.conf_txns).to_string()),
                (
                    "{result=\"conflict\"}".into(),
                    g(&self.conf_txn_conflicts).to_string(),
                ),
            ],
        );
        metric(
            "hax_broadcasts_total",
            "counter",
            "HA state broadcasts.",
            one(g(&self.broadcasts).to_string()),
        );
        metric(
            "hax_event_queue_depth",
            "gauge",
            "Motr events waiting for the pipeline.",
            one(gi(&self.events_queued).to_string()),
        );
        metric(
            "hax_event_queue_overflow_total",
            "counter",
            "Motr events that found the pipeline queue full.",
            one(g(&self.events_overflow).to_string()),
        );
        metric(
            "hax_watch_updates_total",
            "counter",
            "Updates received from Consul watches and resyncs.",
            one(g(&self.watch_updates).to_string()),
        );
        metric(
            "hax_keepalive_requests_total",
            "counter",
            "Keepalive requests sent to linked processes.",
            one(g(&self.keepalive_requests).to_string()),
        );
        metric(
            "hax_keepalive_replies_total",
            "counter",
            "Keepalive replies matched to a request.",
            one(g(&self.keepalive_replies).to_string()),
        );
        metric(
            "hax_keepalive_missed_total",
            "counter",
            "Keepalive rounds a linked process left unanswered.",
            one(g(&self.keepalive_missed).to_string()),
        );
        metric(
            "hax_bq_trimmed_total",
            "counter",
            "Broadcast-queue entries deleted by the RC leader's trimming.",
            one(g(&self.bq_trimmed).to_string()),
        );
        metric(
            "hax_bq_trim_failures_total",
            "counter",
            "Broadcast-queue trims that failed (tried again next period).",
            one(g(&self.bq_trim_failures).to_string()),
        );
        out
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latencies_render_as_a_cumulative_histogram() {
        let l = Latency::default();
        for us in [10, 30, 30, 700, 2_000_000] {
            l.observe(std::time::Duration::from_micros(us));
        }
        let mut out = String::new();
        l.render(&mut out, "x_seconds", "kind=\"a\"");
        let line = |le: &str| {
            out.lines()
                .find(|l| l.starts_with(&format!("x_seconds_bucket{{kind=\"a\",le=\"{le}\"}} ")))
                .and_then(|l| l.rsplit(' ').next())
                .map(str::to_owned)
        };
        assert_eq!(line("0.000025").as_deref(), Some("1"));
        assert_eq!(line("0.00005").as_deref(), Some("3"));
        assert_eq!(line("0.0005").as_deref(), Some("3"));
        assert_eq!(line("0.001").as_deref(), Some("4"));
        assert_eq!(line("1").as_deref(), Some("4"));
        assert_eq!(line("+Inf").as_deref(), Some("5"));
        assert!(out.contains("x_seconds_count{kind=\"a\"} 5\n"), "{out}");
        assert!(
            out.contains("x_seconds_sum{kind=\"a\"} 2.000770\n"),
            "{out}"
        );
    }

    #[test]
    fn renders_counters_with_labels() {
        let m = Metrics::default();
        m.count_received("event_process");
        m.count_received("event_process");
        m.count_sent("nvec_set", 3);
        m.count_received("no such type");
        m.links.store(2, Ordering::Relaxed);
        m.keepalive_missed.store(4, Ordering::Relaxed);
        let text = m.render();
        assert!(text.contains("\nhax_keepalive_missed_total 4\n"), "{text}");
        assert!(text.contains("hax_messages_total{direction=\"in\",type=\"event_process\"} 2\n"));
        assert!(text.contains("hax_messages_total{direction=\"out\",type=\"nvec_set\"} 3\n"));
        assert!(text.contains("# TYPE hax_links gauge\nhax_links 2\n"));
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (name, value) = line.rsplit_once(' ').expect("name value");
            assert!(name.starts_with("hax_"), "{line}");
            assert!(value.parse::<f64>().is_ok(), "{line}");
        }
    }
}
