//! What dist/ gives operators besides the daemon: the Prometheus alert rules
//! pass promtool's checks and their unit tests, the Grafana dashboard's
//! queries parse, both use only metrics a running hax exposes, and the
//! systemd watchdog the unit asks for is fed.
//!
//! promtool comes from Debian's prometheus package, unpacked by
//! scripts/install-promtool.sh (which scripts/setup.sh runs) into
//! `.local/prometheus/`; `HAX_PROMTOOL` names another.

use std::collections::BTreeSet;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use hax_consul::schema::QueueMessage;
use hax_e2e::{wait_for, Env, Options, T};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn read(rel: &str) -> String {
    let path = repo().join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn promtool() -> PathBuf {
    let path = std::env::var_os("HAX_PROMTOOL")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join(".local/prometheus/usr/bin/promtool"));
    assert!(
        path.is_file(),
        "{} missing: run scripts/install-promtool.sh (or set HAX_PROMTOOL)",
        path.display()
    );
    path
}

/// Runs promtool in `dir`; its output, or a failure that shows it.
fn run_promtool(dir: &Path, args: &[&str]) -> String {
    let out = Command::new(promtool())
        .args(args)
        .current_dir(dir)
        .output()
        .expect("promtool runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?} failed:\n{text}");
    text
}

#[test]
fn alert_rules_pass_promtool_check_and_their_unit_tests() {
    let dist = repo().join("dist");
    let out = run_promtool(&dist, &["check", "rules", "prometheus-alerts.yml"]);
    assert!(out.contains("SUCCESS: 5 rules found"), "{out}");
    let out = run_promtool(&dist, &["test", "rules", "prometheus-alerts.test.yml"]);
    assert!(out.contains("SUCCESS"), "{out}");
    // Every alert the issue asks for has a unit test.
    let tests = read("dist/prometheus-alerts.test.yml");
    for alert in [
        "HaxDown",
        "HaxConsulUnreachable",
        "HaxBroadcastQueueLagGrowing",
        "HaxEventQueueOverflowing",
        "HaxProcessesNotAnsweringKeepalives",
    ] {
        assert!(
            tests.contains(&format!("alertname: {alert}\n")),
            "{alert} untested"
        );
    }
}

/// The dashboard's panels that show data, and their queries.
fn dashboard_queries() -> Vec<(String, String)> {
    let d: serde_json::Value =
        serde_json::from_str(&read("dist/grafana-dashboard.json")).expect("the dashboard is JSON");
    let mut ids = BTreeSet::new();
    let mut queries = Vec::new();
    for p in d["panels"].as_array().expect("panels") {
        assert!(
            ids.insert(p["id"].as_u64().expect("panel id")),
            "two panels share an id"
        );
        if p["type"] == "row" {
            continue;
        }
        let title = p["title"].as_str().expect("title").to_owned();
        assert_eq!(p["datasource"]["uid"], "${datasource}", "{title}");
        let targets = p["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{title} shows nothing");
        for t in targets {
            let expr = t["expr"].as_str().expect("expr").to_owned();
            queries.push((title.clone(), expr));
        }
    }
    assert!(queries.len() > 20, "{queries:?}");
    queries
}

#[test]
fn dashboard_queries_parse() {
    // promtool parses PromQL in rules only: each query becomes a recording
    // rule, with Grafana's variables given values (JSON is YAML).
    let rules: Vec<_> = dashboard_queries()
        .into_iter()
        .enumerate()
        .map(|(i, (_, expr))| {
            let expr = expr
                .replace("$__rate_interval", "5m")
                .replace("$instance", ".*");
            serde_json::json!({"record": format!("dashboard:query_{i}"), "expr": expr})
        })
        .collect();
    let n = rules.len();
    let dir = tempfile::tempdir().expect("dir");
    let file = dir.path().join("dashboard-queries.yml");
    let doc = serde_json::json!({"groups": [{"name": "dashboard", "rules": rules}]});
    std::fs::write(&file, doc.to_string()).expect("written");
    let out = run_promtool(dir.path(), &["check", "rules", "dashboard-queries.yml"]);
    assert!(out.contains(&format!("SUCCESS: {n} rules found")), "{out}");
}

/// The `hax_*` names in `text`.
fn hax_names(text: &str) -> BTreeSet<String> {
    text.split(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
        .filter(|w| w.starts_with("hax_"))
        .map(str::to_owned)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_and_the_alerts_use_only_metrics_hax_exposes() {
    let env = Env::start(Options::default()).await;
    let (status, text) = env.http_get("/metrics").await.expect("GET /metrics");
    assert_eq!(status, 200);
    // Families, as `# TYPE` names them (a family with no series yet, like
    // a labelled counter nothing has counted, has its line too).
    let families: BTreeSet<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    let exposed = |name: &str| {
        families.contains(name)
            || ["_bucket", "_sum", "_count"].iter().any(|s| {
                name.strip_suffix(s)
                    .is_some_and(|f| text.contains(&format!("# TYPE {f} histogram\n")))
            })
    };
    let mut used = hax_names(&read("dist/prometheus-alerts.yml"));
    used.extend(hax_names(&read("dist/prometheus-alerts.test.yml")));
    for (_, expr) in dashboard_queries() {
        used.extend(hax_names(&expr));
    }
    assert!(used.len() > 20, "{used:?}");
    let missing: Vec<_> = used.iter().filter(|n| !exposed(n)).collect();
    assert!(missing.is_empty(), "not in /metrics: {missing:?}\n{text}");

    // The broadcast-queue lag the alert reads: an entry is known as soon as
    // it is announced, and handled.
    let msg = QueueMessage::new(
        "2026-01-01 00:00:00.000000",
        "NO-SUCH-TYPE",
        serde_json::json!({}),
    );
    let epoch = env.publish_bq(&msg).await;
    let m = env
        .wait_metrics("the entry known and handled", |m| {
            m.get("hax_bq_newest") >= epoch as f64 && m.get("hax_bq_offset") >= epoch as f64
        })
        .await;
    assert_eq!(m.get("hax_bq_newest"), m.get("hax_bq_offset"), "{m:?}");
    assert_eq!(m.get("hax_keepalive_not_responding"), 0.0);
}

/// Datagrams systemd would have received, in order.
fn received(sock: &UnixDatagram) -> Vec<String> {
    let mut out = Vec::new();
    let mut buf = [0u8; 256];
    while let Ok(n) = sock.recv(&mut buf) {
        out.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_watchdog_is_fed_once_ready_and_not_after_stopping() {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&path).expect("socket");
    sock.set_nonblocking(true).expect("nonblocking");
    // 400 ms: a ping every 200 ms.
    let mut env = Env::start(Options {
        hax_env: vec![
            ("NOTIFY_SOCKET".into(), path.to_string_lossy().into_owned()),
            ("WATCHDOG_USEC".into(), "400000".into()),
        ],
        ..Options::default()
    })
    .await;
    let mut seen: Vec<String> = Vec::new();
    wait_for("three WATCHDOG=1 after READY=1", T, || {
        seen.extend(received(&sock));
        let pings = seen.iter().filter(|m| *m == "WATCHDOG=1").count();
        std::future::ready((pings >= 3).then_some(()))
    })
    .await;
    assert_eq!(seen[0], "READY=1", "{seen:?}");
    assert!(seen[1..].iter().all(|m| m == "WATCHDOG=1"), "{seen:?}");
    let run = env.runs();
    assert!(env.log_has(
        run,
        "systemd watchdog on: WATCHDOG=1 every half period while hax works"
    ));

    env.sigterm();
    let status = env.wait_exit(Duration::from_secs(60)).await;
    assert!(status.success(), "{status}");
    seen.extend(received(&sock));
    let stopping = seen
        .iter()
        .position(|m| m == "STOPPING=1")
        .unwrap_or_else(|| panic!("no STOPPING=1: {seen:?}"));
    assert!(
        seen[stopping + 1..].is_empty(),
        "sent after STOPPING=1: {seen:?}"
    );
}
