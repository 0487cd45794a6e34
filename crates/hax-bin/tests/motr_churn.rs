//! The `hax` daemon on real Motr (feature `motr`) with a real Consul, and a
//! process that restarts again and again: Motr's own `m0ham` connects as an
//! m0d with the same process fid each time (a new incarnation: a first
//! entrypoint request), asks for two objects' states and exits, without ever
//! reporting a state or closing its link. Every incarnation's link must end
//! when the next one asks (hax sends FAILED for the process to its own link
//! before the reply), so that hax holds its own link and the last
//! incarnation's, whatever the number of restarts; its memory and threads
//! stay flat.
//!
//! Ignored unless built with `--features motr`; built with it, fails unless
//! `MOTR_PREFIX` names an installed Motr with `m0ham`. `HAX_CHURN_ROUNDS`
//! sets the number of restarts (default 12, as in CI);
//! `HAX_CHURN_SAME_ENDPOINT=1` starts every incarnation at one endpoint, as
//! an m0d restarts (otherwise each gets a new one). The figures are printed,
//! with where a first request's time goes (docs/motr.md has them for 500):
//!
//! ```text
//! HAX_CHURN_ROUNDS=500 MOTR_PREFIX=/opt/motr cargo test --release -p hax-bin --features motr \
//!     --test motr_churn -- --nocapture
//! ```

use std::time::{Duration, Instant};

use motr_support::{free_inet_endpoint, installed, run_m0ham};

#[path = "../../hax-core/tests/motr_support/mod.rs"]
mod motr_support;

mod daemon_support;
use daemon_support::{bed, http_get, metric, spawn_hax, usage, wait_for, Bed};

/// An NVEC GET of two controllers as one `m0_ha_msg` in xcode text, for
/// m0ham's stdin (the fixed note array lists all 1024 notes).
fn nvec_get_text() -> String {
    let mut notes = vec![
        "((0x6300000000000001, 0x1), 0)".to_owned(),
        "((0x6300000000000001, 0x2), 0)".to_owned(),
    ];
    notes.resize(1024, "((0, 0), 0)".into());
    format!(
        "((0, 0), (0, 0), (0, 0), 0, 0, {{2| (1, 77, 0, 2, <{}>)}}, 0)\n",
        notes.join(", ")
    )
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    percentile(&v, 0.5)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(feature = "motr"),
    ignore = "needs --features motr and an installed Motr (MOTR_PREFIX)"
)]
async fn restarts_leave_no_dead_links_on_real_motr() {
    let rounds: usize = std::env::var("HAX_CHURN_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(12);
    let m0ham = installed("m0ham");
    let Bed {
        root,
        mut taken,
        http,
        hax_ep,
        agent,
        ..
    } = bed("hax-motr-churn").await;

    let hax_log = root.join("hax.log");
    let hax = spawn_hax(
        &root,
        agent.http_addr(),
        http,
        &["--motr-keepalive-interval-ms", "500"],
    )
    .await;
    let metrics = || http_get(http, "/metrics").unwrap_or_default();
    let links = || metric(&metrics(), "hax_links");

    let input = nvec_get_text();
    let mut times = Vec::new();
    let mut most_links = 0;
    let mut early = (0, 0);
    let mut unsolicited = 0;
    // HAX_CHURN_SAME_ENDPOINT=1: every incarnation at one endpoint, as an
    // m0d restarts; otherwise a new one each time.
    let same = std::env::var("HAX_CHURN_SAME_ENDPOINT").is_ok_and(|v| v == "1");
    let fixed = free_inet_endpoint(&mut taken);
    for round in 0..rounds {
        let local = if same {
            fixed.clone()
        } else {
            free_inet_endpoint(&mut taken)
        };
        // Each m0ham writes a 16 MiB trace: kept only for a failed run.
        let dir = root.join(format!("m0ham-{round}"));
        std::fs::create_dir_all(&dir).expect("m0ham dir");
        let t = Instant::now();
        let run = run_m0ham(
            &m0ham,
            &dir,
            &local,
            &hax_ep,
            &input,
            Duration::from_secs(60),
        );
        let (code, took, stderr) = (run.status, t.elapsed(), run.stderr);
        // m0ham's process is not in the cluster's configuration, so the BQ
        // update of its previous incarnation (OFFLINE) is broadcast to every
        // link, its new one included. m0ham, expecting only the answer to its
        // GET, fails at its exit when that broadcast came in time (message
        // #3; `ha/ham.c:676` asserts): its link and its answer were fine.
        let extra = code != Some(0)
            && ["Got entrypoint reply", "Got message #1", "Got message #3"]
                .iter()
                .all(|l| stderr.contains(l));
        assert!(
            code == Some(0) || extra,
            "m0ham run {round} on {local} exits 0; its stderr:\n{stderr}"
        );
        unsolicited += usize::from(extra);
        let _ = std::fs::remove_dir_all(&dir);
        times.push(took);
        most_links = most_links.max(links());
        if round == rounds / 4 {
            early = usage(hax.pid());
        }
    }
    // The last incarnation's link stays (nothing says it is dead); every
    // earlier one ends, those still waiting on an RPC to their gone peer
    // within its timeout.
    let live = wait_for(
        "hax to hold its own link and the last incarnation's",
        Duration::from_secs(90),
        &hax_log,
        || async {
            let n = links();
            (n == 2).then_some(n)
        },
    )
    .await;
    let m = metrics();
    let (rss, threads) = usage(hax.pid());
    let text = std::fs::read_to_string(&hax_log).unwrap_or_default();
    let timeouts = text.lines().filter(|l| l.contains("rc=-110")).count();
    let fenced = metric(&m, "hax_links_of_old_incarnations_fenced_total");
    let disconnected = metric(&m, "hax_links_disconnected_total");
    let replies = metric(&m, "hax_entrypoint_reply_seconds_count{kind=\"first\"}");
    let reply_sum = m
        .lines()
        .find_map(|l| l.strip_prefix("hax_entrypoint_reply_seconds_sum{kind=\"first\"} "))
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0);
    times.sort();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    // hax's side of each first request, from its log: request to reply.
    let mut answered: Vec<Duration> = lines
        .iter()
        .filter(|l| l["message"] == "first entrypoint request answered")
        .filter_map(|l| l["elapsed_us"].as_u64())
        .map(Duration::from_micros)
        .collect();
    // Where a first request's time goes, first and last quarter: hax
    // handling it up to the fence (request to `FAILED to hax's own link`),
    // Motr delivering the fence on hax's own link (to `fenced`), the rest.
    let segments = fence_segments(&lines);
    let q = segments.len() / 4;
    if q > 0 {
        for (name, part) in [
            ("first", &segments[..q]),
            ("last", &segments[segments.len() - q..]),
        ] {
            let med = |i: usize| median(part.iter().map(|s| s[i]).collect());
            eprintln!(
                "{name} {q} fenced restarts, medians: to the fence {:?}, the fence's delivery {:?}, then to the reply {:?}",
                med(0),
                med(1),
                med(2)
            );
        }
    }
    // Whether answered slow down as restarts accumulate: the median of the
    // first and of the last quarter, in the order they came.
    let quarter = answered.len() / 4;
    if quarter > 0 {
        eprintln!(
            "first-request replies: median {:?} over the first {quarter} restarts, {:?} over the last {quarter}",
            median(answered[..quarter].to_vec()),
            median(answered[answered.len() - quarter..].to_vec()),
        );
    }
    answered.sort();
    if !answered.is_empty() {
        let (p50, p99) = (percentile(&answered, 0.5), percentile(&answered, 0.99));
        eprintln!(
            "first-request replies in hax's log: {} p50 {p50:?} p99 {p99:?} ({:.1} times p50) max {:?}; \
             RSS {:+.0} KiB a restart after run {}",
            answered.len(),
            p99.as_secs_f64() / p50.as_secs_f64().max(1e-9),
            answered[answered.len() - 1],
            (rss as f64 - early.0 as f64) / (rounds - rounds / 4 - 1).max(1) as f64,
            rounds / 4 + 1,
        );
    }
    eprintln!(
        "{rounds} m0ham restarts of one process fid: m0ham run p50 {:?} p99 {:?} max {:?}; \
         hax's first-request reply mean {:.1} ms over {replies}; links now {live}, at most {most_links} \
         after a run; old incarnations fenced {fenced}, links disconnected {disconnected}; \
         hax RSS {} KiB / {} threads after {} runs, {rss} KiB / {threads} threads at the end; \
         {timeouts} log lines with rc=-110; {unsolicited} m0ham runs ended by a broadcast it did not expect",
        percentile(&times, 0.5),
        percentile(&times, 0.99),
        times[times.len() - 1],
        reply_sum * 1000.0 / replies.max(1) as f64,
        early.0,
        early.1,
        rounds / 4 + 1,
    );
    assert_eq!(
        fenced,
        rounds as u64 - 1,
        "every incarnation but the first found its predecessor's link"
    );
    assert_eq!(disconnected, rounds as u64 - 1, "and ended it");
    // With the default debug options, Motr logs no message, link or
    // entrypoint at WARN.
    let chatter = text
        .lines()
        .filter(|l| l.contains("ha/halon/interface.c") && l.contains("WARN"))
        .count();
    assert_eq!(chatter, 0, "Motr's halon interface logged at WARN");
    assert!(
        threads <= early.1 + 2,
        "threads flat: {early:?} then {threads}"
    );
    let _ = std::fs::remove_dir_all(&root);
}

/// Seconds since midnight of a log line's `timestamp` (UTC, RFC 3339).
fn seconds_of_day(l: &serde_json::Value) -> Option<f64> {
    let t = l["timestamp"]
        .as_str()?
        .split('T')
        .nth(1)?
        .trim_end_matches('Z');
    let mut parts = t.split(':');
    let h: f64 = parts.next()?.parse().ok()?;
    let m: f64 = parts.next()?.parse().ok()?;
    let s: f64 = parts.next()?.parse().ok()?;
    Some(h * 3600.0 + m * 60.0 + s)
}

/// For each fenced restart in hax's log: request to the fence's send, the
/// fence's delivery, and from there to the reply.
fn fence_segments(lines: &[serde_json::Value]) -> Vec<[Duration; 3]> {
    let mut out = Vec::new();
    let mut request = None;
    let mut fence = None;
    let mut fenced = None;
    let span = |a: f64, b: f64| Duration::from_secs_f64((b - a).rem_euclid(86_400.0));
    for l in lines {
        let Some(t) = seconds_of_day(l) else {
            continue;
        };
        match l["message"].as_str().unwrap_or("") {
            "entrypoint request" if l["first"] == true => {
                (request, fence, fenced) = (Some(t), None, None);
            }
            m if m.starts_with("links of a previous incarnation: FAILED") => fence = Some(t),
            "previous incarnation's links fenced" => fenced = Some(t),
            "first entrypoint request answered" => {
                if let (Some(r), Some(f), Some(d)) = (request, fence, fenced) {
                    out.push([span(r, f), span(f, d), span(d, t)]);
                }
                request = None;
            }
            _ => {}
        }
    }
    out
}
