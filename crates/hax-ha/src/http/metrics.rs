//! `GET /metrics`: the daemon's registry, encoded as the scraper asks, and
//! the collectors of the parts whose folders do not import [`crate::metrics`]
//! (the API, the RC leader's statistics and whether this node is the leader,
//! the held FAILED notes).

use std::fmt::Error as FmtError;
use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError};

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{prometheus_text, text, DescriptorEncoder};
use prometheus_client::registry::Registry;

use crate::http::ApiMetrics;
use crate::leader::stats::{Outcome, StatsMetrics, Updater};
use crate::metrics::Families;
pub use crate::metrics::QueueDepth;
use crate::motr::fencing::HeldMetrics;
use crate::view::ClusterView;

/// The `Content-Type` of OpenMetrics text, which prometheus-client's `text`
/// encoder writes.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// `registry` in the format `headers` accept: OpenMetrics text when the
/// scraper asks for it (Prometheus does), else the Prometheus text format
/// 0.0.4, which every scraper and `curl | grep` reads.
pub fn answer(registry: &Registry, headers: &HeaderMap) -> Response {
    let openmetrics = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/openmetrics-text"));
    match encode(registry, openmetrics) {
        Ok((content_type, body)) => (
            [(header::CONTENT_TYPE, HeaderValue::from_static(content_type))],
            body,
        )
            .into_response(),
        Err(FmtError) => {
            // Only a collector can fail (writing to a String cannot): a bug.
            tracing::error!("metrics could not be encoded");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

/// `registry` as text: OpenMetrics or the Prometheus format; with its
/// `Content-Type`.
pub fn encode(registry: &Registry, openmetrics: bool) -> Result<(&'static str, String), FmtError> {
    let mut body = String::with_capacity(16 << 10);
    if openmetrics {
        text::encode(&mut body, registry)?;
        Ok((OPENMETRICS_CONTENT_TYPE, body))
    } else {
        prometheus_text::encode(&mut body, registry)?;
        Ok((prometheus_text::CONTENT_TYPE, body))
    }
}

#[derive(Debug)]
struct ApiCollector(Arc<ApiMetrics>);

/// Registers the API's `hax_api_requests_total{route,code}`.
pub fn register_api(registry: &mut Registry, api: Arc<ApiMetrics>) {
    registry.register_collector(Box::new(ApiCollector(api)));
}

impl Collector for ApiCollector {
    fn encode(&self, encoder: DescriptorEncoder) -> Result<(), FmtError> {
        // Copied out so that requests are not held up while encoding.
        let answered: Vec<((String, u16), u64)> = self
            .0
            .answered
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(k, n)| (k.clone(), *n))
            .collect();
        Families(encoder).counters(
            "hax_api_requests_total",
            "API requests answered, by route and status code.",
            answered
                .into_iter()
                .map(|((route, code), n)| ([("route", route), ("code", code.to_string())], n)),
        )
    }
}

#[derive(Debug)]
struct StatsCollector(Arc<StatsMetrics>);

/// Registers the statistics updaters' and rconfc's metrics.
pub fn register_stats(registry: &mut Registry, stats: Arc<StatsMetrics>) {
    registry.register_collector(Box::new(StatsCollector(stats)));
}

const UPDATERS: [Updater; 2] = [Updater::Filesystem, Updater::Bytecount];

impl Collector for StatsCollector {
    fn encode(&self, encoder: DescriptorEncoder) -> Result<(), FmtError> {
        let s = &*self.0;
        let mut f = Families(encoder);
        f.counters(
            "hax_stats_runs_total",
            "Runs of the statistics updaters, by outcome.",
            UPDATERS.iter().flat_map(|u| {
                [
                    (Outcome::Written, "written"),
                    (Outcome::Skipped, "skipped"),
                    (Outcome::Failed, "failed"),
                ]
                .map(|(o, name)| ([("updater", u.name()), ("outcome", name)], s.runs(*u, o)))
            }),
        )?;
        f.gauges(
            "hax_stats_run_in_progress",
            "Whether a run of the updater is under way.",
            UPDATERS.map(|u| ([("updater", u.name())], i64::from(s.running(u)))),
        )?;
        f.gauge(
            "hax_rconfc_ready",
            "Whether Motr's configuration client runs.",
            i64::from(s.rconfc_ready.load(Ordering::Relaxed) != 0),
        )?;
        f.counter(
            "hax_rconfc_start_attempts_total",
            "Attempts to start rconfc.",
            s.rconfc_attempts.load(Ordering::Relaxed),
        )
    }
}

struct LeaderCollector(ClusterView);

impl std::fmt::Debug for LeaderCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LeaderCollector")
    }
}

/// Registers `hax_rc_leader`: whether the cluster view names this node the
/// RC leader, which is what the leader's work follows.
pub fn register_rc_leader(registry: &mut Registry, view: ClusterView) {
    registry.register_collector(Box::new(LeaderCollector(view)));
}

impl Collector for LeaderCollector {
    fn encode(&self, encoder: DescriptorEncoder) -> Result<(), FmtError> {
        Families(encoder).gauge(
            "hax_rc_leader",
            "Whether this node is the RC leader (the leader key names it): the leader's work runs here.",
            i64::from(self.0.snapshot().is_rc()),
        )
    }
}

#[derive(Debug)]
struct HeldCollector(Arc<HeldMetrics>);

/// Registers `hax_held_failures_total{end}`.
pub fn register_held(registry: &mut Registry, held: Arc<HeldMetrics>) {
    registry.register_collector(Box::new(HeldCollector(held)));
}

impl Collector for HeldCollector {
    fn encode(&self, encoder: DescriptorEncoder) -> Result<(), FmtError> {
        let h = &*self.0;
        Families(encoder).counters(
            "hax_held_failures_total",
            "FAILED notes of stopped processes held back from hax's own link, by how they ended.",
            [
                ("held", &h.held),
                ("sent_link_gone", &h.sent_link_gone),
                ("sent_bound", &h.sent_bound),
                ("sent_restart", &h.sent_restart),
                ("dropped", &h.dropped),
            ]
            .map(|(end, n)| ([("end", end)], n.load(Ordering::Relaxed))),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prometheus_text(r: &Registry) -> String {
        encode(r, false).expect("encodes").1
    }

    #[test]
    fn api_requests_are_counted_by_route_and_code() {
        let m = Arc::new(ApiMetrics::default());
        m.count("/v1/cluster/status", StatusCode::OK);
        m.count("/v1/cluster/status", StatusCode::OK);
        m.count("/api/v1/sns/{operation}", StatusCode::CONFLICT);
        assert_eq!(m.answered("/v1/cluster/status", 200), 2);
        let mut r = Registry::default();
        register_api(&mut r, m);
        let out = prometheus_text(&r);
        assert!(
            out.contains("\nhax_api_requests_total{route=\"/v1/cluster/status\",code=\"200\"} 2\n"),
            "{out}"
        );
        assert!(out.contains("route=\"/api/v1/sns/{operation}\",code=\"409\"} 1\n"));
    }

    #[test]
    fn stats_and_held_notes_are_exposed_with_their_labels() {
        let stats = Arc::new(StatsMetrics::default());
        stats.rconfc_ready.store(1, Ordering::Relaxed);
        stats.rconfc_attempts.store(2, Ordering::Relaxed);
        let held = Arc::new(HeldMetrics::default());
        held.sent_bound.store(3, Ordering::Relaxed);
        let mut r = Registry::default();
        register_stats(&mut r, stats);
        register_held(&mut r, held);
        let out = prometheus_text(&r);
        for line in [
            "hax_stats_runs_total{updater=\"bytecount\",outcome=\"failed\"} 0",
            "hax_stats_run_in_progress{updater=\"filesystem\"} 0",
            "hax_rconfc_ready 1",
            "hax_rconfc_start_attempts_total 2",
            "hax_held_failures_total{end=\"sent_bound\"} 3",
            "# TYPE hax_held_failures_total counter",
        ] {
            assert!(out.lines().any(|l| l == line), "{line} missing from\n{out}");
        }
    }

    #[test]
    fn openmetrics_is_answered_to_those_who_ask_for_it() {
        let mut r = Registry::default();
        crate::metrics::register_build_info(&mut r, "0.1.0");
        let (ct, body) = encode(&r, false).expect("encodes");
        assert_eq!(ct, "text/plain; version=0.0.4; charset=utf-8");
        assert!(!body.contains("# EOF"), "{body}");
        let (ct, body) = encode(&r, true).expect("encodes");
        assert_eq!(ct, OPENMETRICS_CONTENT_TYPE);
        assert!(body.ends_with("# EOF\n"), "{body}");

        let mut headers = HeaderMap::new();
        headers.insert(
            header::ACCEPT,
            HeaderValue::from_static("application/openmetrics-text;version=1.0.0,text/plain;q=0.5"),
        );
        let answer = super::answer(&r, &headers);
        assert_eq!(answer.status(), StatusCode::OK);
        assert_eq!(
            answer
                .headers()
                .get(header::CONTENT_TYPE)
                .map(HeaderValue::as_bytes),
            Some(OPENMETRICS_CONTENT_TYPE.as_bytes())
        );
        let answer = super::answer(&r, &HeaderMap::new());
        assert_eq!(
            answer
                .headers()
                .get(header::CONTENT_TYPE)
                .map(HeaderValue::as_bytes),
            Some(prometheus_text::CONTENT_TYPE.as_bytes())
        );
    }
}
