//! Figures of the whole daemon: a real Consul agent, the sample cluster, the
//! `hax` binary (release build next to this one unless `HAX_BIN` is set) and
//! simulated `m0d` peers. Prints a Markdown table of every figure with the
//! run's parameters, its target and whether the run met it.
//!
//! ```text
//! cargo build --release -p hax-bin && cargo run --release -p hax-e2e --bin hax-load
//! ```
//!
//! Parameters (environment):
//!
//! | variable | default | what |
//! |---|---|---|
//! | `LOAD_PEERS` | 100 | links up during the runs |
//! | `LOAD_STARTS` | 5 | start-to-ready runs |
//! | `LOAD_MSG_PEERS` | 16 | peers sending HA messages that need no Consul write |
//! | `LOAD_MSGS` | 20000 | such messages per peer |
//! | `LOAD_BROADCASTS` | 20 | BQ device entries broadcast, one at a time |
//! | `LOAD_NOTES` | 1000 | notes of the large state update |
//! | `LOAD_BIG_BROADCASTS` | 10 | large state updates, one at a time |
//! | `LOAD_EVENT_PEERS` | 16 | peers sending process events |
//! | `LOAD_EVENTS` | 200 | process events per peer of the burst |
//! | `LOAD_EVENT_RATE` | 5000 | process events per second of the paced run, in all |
//! | `LOAD_EVENT_SECS` | 3 | seconds of the paced run |
//! | `LOAD_EVENT_CYCLE` | `starting,started,dtm_recovered` | the events each peer sends, repeated |
//! | `LOAD_METRICS` | unset | `1`: print hax's `/metrics` after each phase to stderr |
//! | `LOAD_GLIBC_DEFAULTS` | unset | `1`: run hax with glibc's malloc defaults, not the `Environment=` of `dist/hax.service` |

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hax_consul::catalog::CheckStatus;
use hax_core::{
    Fid, FidType, HaMsg, HaMsgData, HaNote, HaState, NvecKind, ProcessEventKind, ServiceEventKind,
    ServiceType,
};
use hax_e2e::{
    device_entry, ios_fid, ios_service, set_hax_bin, unit_environment, wait_for, Env, Metrics,
    Options, T,
};
use hax_sim::{SimCluster, SimConfig, SimEvent, SimEventKind, SimProcess};
use hax_testkit::sample;
use tokio::sync::mpsc;

const DELIVERED: &str = "hax_sent_outcomes_total{outcome=\"delivered\"}";

fn param(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{name}={v}: not a number"))
        })
        .unwrap_or(default)
}

/// Value at quantile `q` of sorted `v`.
fn quantile(v: &[Duration], q: f64) -> Duration {
    assert!(!v.is_empty(), "no samples");
    v[((v.len() - 1) as f64 * q).round() as usize]
}

fn us(d: Duration) -> String {
    format!("{} us", d.as_micros())
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

fn rss_kib(pid: u32) -> u64 {
    let status =
        std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc/<pid>/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS line")
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// The machine's load averages: the runs share it with whatever else runs.
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

struct Row {
    measure: String,
    params: String,
    result: String,
    target: String,
    met: Option<bool>,
}

fn row(measure: &str, params: String, result: String, target: &str, met: Option<bool>) -> Row {
    Row {
        measure: measure.into(),
        params,
        result,
        target: target.into(),
        met,
    }
}

/// What the peers report, kept light (no message bodies) and only while
/// recording is on.
#[derive(Debug, Clone, Copy)]
enum RecKind {
    Requested,
    Up {
        queries: u32,
    },
    Sent {
        tag: u64,
    },
    Confirmed {
        tag: u64,
    },
    /// An NVEC SET from hax with this many notes.
    Set {
        notes: usize,
    },
}

#[derive(Debug, Clone, Copy)]
struct Rec {
    process: Fid,
    at: Instant,
    kind: RecKind,
}

#[derive(Default)]
struct Recorder {
    on: AtomicBool,
    recs: Mutex<Vec<Rec>>,
}

impl Recorder {
    /// Forwards the peers' events into the recorder until they all close.
    fn spawn(self: &Arc<Self>, mut rx: mpsc::UnboundedReceiver<SimEvent>) {
        let this = Arc::clone(self);
        tokio::spawn(async move {
            while let Some(e) = rx.recv().await {
                if !this.on.load(Ordering::Relaxed) {
                    continue;
                }
                let kind = match e.kind {
                    SimEventKind::Requested { .. } => RecKind::Requested,
                    SimEventKind::Up(ep) => RecKind::Up {
                        queries: ep.queries,
                    },
                    SimEventKind::Sent { tag, .. } => RecKind::Sent { tag },
                    SimEventKind::Confirmed { tag } => RecKind::Confirmed { tag },
                    SimEventKind::Received(r) => match &r.msg.data {
                        HaMsgData::Nvec(n) if n.kind == NvecKind::Set && n.id_of_get == 0 => {
                            RecKind::Set {
                                notes: n.notes.len(),
                            }
                        }
                        _ => continue,
                    },
                    _ => continue,
                };
                let rec = Rec {
                    process: e.process,
                    at: e.at,
                    kind,
                };
                this.recs.lock().expect("recorder").push(rec);
            }
        });
    }

    /// Starts recording afresh.
    fn start(&self) {
        self.recs.lock().expect("recorder").clear();
        self.on.store(true, Ordering::SeqCst);
    }

    /// Stops recording; what was recorded. Events still in the channel
    /// when it is called are lost, so callers wait for what they expect
    /// first (`wait_recs`).
    fn stop(&self) -> Vec<Rec> {
        self.on.store(false, Ordering::SeqCst);
        std::mem::take(&mut *self.recs.lock().expect("recorder"))
    }

    /// Waits until `pred` holds for the records so far.
    async fn wait_recs(&self, what: &str, pred: impl Fn(&[Rec]) -> bool) {
        wait_for(what, T, || async {
            pred(&self.recs.lock().expect("recorder")).then_some(())
        })
        .await
    }
}

/// The process events each peer sends in turn (`LOAD_EVENT_CYCLE`). A
/// STOPPED would fail the process and end its link, so it is not offered.
fn event_cycle() -> Vec<ProcessEventKind> {
    let text = std::env::var("LOAD_EVENT_CYCLE")
        .unwrap_or_else(|_| "starting,started,dtm_recovered".into());
    let cycle: Vec<ProcessEventKind> = text
        .split(',')
        .map(|w| match w.trim() {
            "starting" => ProcessEventKind::Starting,
            "started" => ProcessEventKind::Started,
            "stopping" => ProcessEventKind::Stopping,
            "dtm_recovered" => ProcessEventKind::DtmRecovered,
            other => panic!(
                "LOAD_EVENT_CYCLE: {other:?} is not starting, started, stopping or dtm_recovered"
            ),
        })
        .collect();
    assert!(!cycle.is_empty(), "LOAD_EVENT_CYCLE is empty");
    cycle
}

/// Request -> CONSUME per peer (its first request of the records), and the
/// QUERY answers seen.
fn entrypoint_latencies(recs: &[Rec]) -> (Vec<Duration>, u32) {
    let mut requested: HashMap<Fid, Instant> = HashMap::new();
    let mut lat = Vec::new();
    let mut queries = 0u32;
    for r in recs {
        match r.kind {
            RecKind::Requested => {
                requested.entry(r.process).or_insert(r.at);
            }
            RecKind::Up { queries: q } => {
                queries += q;
                if let Some(at) = requested.get(&r.process) {
                    lat.push(r.at.duration_since(*at));
                }
            }
            _ => {}
        }
    }
    lat.sort();
    (lat, queries)
}

/// Latencies from each `Sent` to its `Confirmed`.
fn confirm_latencies(recs: &[Rec]) -> Vec<Duration> {
    let mut sent: HashMap<(Fid, u64), Instant> = HashMap::new();
    let mut lat = Vec::new();
    for r in recs {
        match r.kind {
            RecKind::Sent { tag } => {
                sent.insert((r.process, tag), r.at);
            }
            RecKind::Confirmed { tag } => {
                if let Some(s) = sent.get(&(r.process, tag)) {
                    lat.push(r.at.duration_since(*s));
                }
            }
            _ => {}
        }
    }
    lat.sort();
    lat
}

/// The bucket bound (seconds) under which fraction `q` of the observations
/// of histogram `name{kind}` fell between two `/metrics` answers, and how
/// many there were.
fn hist_quantile(before: &Metrics, after: &Metrics, name: &str, kind: &str, q: f64) -> (f64, u64) {
    let prefix = format!("{name}_bucket{{kind=\"{kind}\",le=\"");
    let mut buckets: Vec<(f64, u64)> = after
        .0
        .iter()
        .filter_map(|(k, v)| {
            let le = k.strip_prefix(&prefix)?.strip_suffix("\"}")?;
            let bound = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            let was = before.0.get(k).copied().unwrap_or(0.0);
            Some((bound, (*v - was) as u64))
        })
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    let n = buckets.last().map_or(0, |b| b.1);
    let want = (n as f64 * q).ceil() as u64;
    let bound = buckets
        .iter()
        .find(|b| b.1 >= want)
        .map_or(f64::INFINITY, |b| b.0);
    (bound, n)
}

fn bound_ms(s: f64, n: u64) -> String {
    if n == 0 {
        "not reported by this hax".into()
    } else if s.is_infinite() {
        "> 1 s".into()
    } else {
        format!("<= {} ms", s * 1e3)
    }
}

fn main() {
    set_hax_bin();
    if std::env::var_os("LOAD_GLIBC_DEFAULTS").is_none() {
        for (k, v) in unit_environment() {
            if std::env::var_os(&k).is_none() {
                std::env::set_var(k, v);
            }
        }
    }
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(run());
}

/// Spawns hax as the harness does and times it until `/healthz` answers;
/// the spawn-to-healthz time and the `elapsed_ms` of its `hax ready` line.
async fn timed_start(env: &Env, bin: &PathBuf, log: &std::path::Path) -> (Duration, u64) {
    let file = std::fs::File::create(log).expect("log file");
    let web = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .pool_max_idle_per_host(0)
        .build()
        .expect("http client");
    let url = format!("http://{}/healthz", env.http);
    let mut cmd = Command::new(bin);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("HAX_") || k == "NOTIFY_SOCKET" {
            cmd.env_remove(k);
        }
    }
    cmd.arg("--consul-address")
        .arg(env.agent.http_addr().to_string())
        .arg("--http-bind")
        .arg(env.http.to_string())
        .args(["--log-format", "json", "--log", "info"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(file);
    let t0 = Instant::now();
    let mut child = cmd.spawn().expect("hax started");
    let deadline = t0 + Duration::from_secs(30);
    let healthz = loop {
        if let Ok(r) = web.get(&url).send().await {
            if r.status().as_u16() == 200 {
                break t0.elapsed();
            }
        }
        assert!(Instant::now() < deadline, "hax not healthy after 30 s");
        if let Ok(Some(s)) = child.try_wait() {
            panic!("hax exited with {s}");
        }
        tokio::time::sleep(Duration::from_micros(500)).await;
    };
    let elapsed_ms = wait_for("the `hax ready` line", T, || async {
        std::fs::read_to_string(log)
            .ok()?
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|l| l["message"] == "hax ready")
            .and_then(|l| {
                l["elapsed_ms"]
                    .as_u64()
                    .or_else(|| l["fields"]["elapsed_ms"].as_u64())
            })
    })
    .await;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(child.id()).expect("pid")),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("SIGTERM");
    child.wait().expect("hax reaped");
    (healthz, elapsed_ms)
}

/// Names the phase starting on stderr, with hax's pid (for profilers) and
/// its RSS then.
fn phase(env: &Env, name: &str) {
    eprintln!(
        "hax-load: {name} (hax pid {}, RSS {:.1} MiB)",
        env.hax_pid(),
        mib(rss_kib(env.hax_pid()))
    );
}

async fn dump_metrics(env: &Env, phase: &str) {
    if std::env::var_os("LOAD_METRICS").is_none() {
        return;
    }
    let (_, body) = env.http_get("/metrics").await.expect("GET /metrics");
    eprintln!("---- /metrics after {phase}");
    for l in body.lines().filter(|l| !l.starts_with('#')) {
        eprintln!("{l}");
    }
}

/// Waits until every peer in `peers` got one NVEC SET more than `before`.
async fn wait_all_got_one_more(peers: &[SimProcess], before: &[usize], what: &str) {
    wait_for(what, T, || async {
        peers
            .iter()
            .zip(before)
            .all(|(p, n)| p.received_count() > *n)
            .then_some(())
    })
    .await
}

/// The time from `t0` until every process of `peers` recorded an NVEC SET
/// of `notes` notes (the first one after `t0`).
fn all_received_after(recs: &[Rec], peers: &[SimProcess], t0: Instant, notes: usize) -> Duration {
    peers
        .iter()
        .map(|p| {
            recs.iter()
                .find(|r| {
                    r.process == p.fid()
                        && r.at >= t0
                        && matches!(r.kind, RecKind::Set { notes: n } if n == notes)
                })
                .map(|r| r.at.duration_since(t0))
                .unwrap_or_else(|| panic!("{} did not record the SET", p.fid()))
        })
        .max()
        .unwrap_or_default()
}

async fn run() {
    let peers_n = param("LOAD_PEERS", 100);
    let starts = param("LOAD_STARTS", 5);
    let msg_peers = param("LOAD_MSG_PEERS", 16);
    let msgs = param("LOAD_MSGS", 20_000);
    let broadcasts = param("LOAD_BROADCASTS", 20);
    let big_notes = param("LOAD_NOTES", 1000);
    let big_broadcasts = param("LOAD_BIG_BROADCASTS", 10);
    let event_peers = param("LOAD_EVENT_PEERS", 16);
    let events = param("LOAD_EVENTS", 200);
    let event_rate = param("LOAD_EVENT_RATE", 5000);
    let event_secs = param("LOAD_EVENT_SECS", 3);
    let cycle = Arc::new(event_cycle());
    let cycle_text = std::env::var("LOAD_EVENT_CYCLE")
        .unwrap_or_else(|_| "starting,started,dtm_recovered".into())
        .to_uppercase()
        .replace(',', "/");
    assert!(event_peers <= peers_n, "LOAD_EVENT_PEERS > LOAD_PEERS");
    assert!(msg_peers <= peers_n, "LOAD_MSG_PEERS > LOAD_PEERS");
    assert!(
        (1..=hax_core::NOTES_MAX).contains(&big_notes),
        "LOAD_NOTES must be 1..={}",
        hax_core::NOTES_MAX
    );
    let bin = PathBuf::from(std::env::var_os("HAX_BIN").expect("HAX_BIN"));
    let load_before = loadavg();
    let mut rows = Vec::new();

    // The daemon as shipped: the harness turns the BQ trimming and the
    // keepalive probes off for its tests, the load runs them at their
    // defaults.
    let defaults = hax_bin::config::Config::default();
    let mut env = Env::start(Options {
        ioservices: event_peers.max(msg_peers) as u64,
        hax_env: vec![
            (
                "HAX_LIMITS_BQ_TRIM_INTERVAL_MS".into(),
                defaults.limits.bq_trim_interval_ms.to_string(),
            ),
            (
                "HAX_MOTR_KEEPALIVE_INTERVAL_MS".into(),
                defaults.motr.keepalive_interval_ms.to_string(),
            ),
        ],
        ..Options::default()
    })
    .await;
    let work = tempfile::tempdir().expect("work dir");

    // ------------------------------------------------------------ start
    env.sigterm();
    env.wait_exit(T).await;
    if starts > 0 {
        let mut healthz = Vec::new();
        let mut ready_ms = Vec::new();
        for i in 0..starts {
            let (h, e) = timed_start(&env, &bin, &work.path().join(format!("start.{i}.log"))).await;
            healthz.push(h);
            ready_ms.push(e);
        }
        healthz.sort();
        ready_ms.sort();
        let worst = healthz[healthz.len() - 1];
        rows.push(row(
            "start -> ready",
            format!(
                "{starts} starts, sample with {} ioservices, agent up",
                event_peers.max(msg_peers)
            ),
            format!(
                "spawn -> `/healthz` 200: median {}, max {}; `hax ready` elapsed_ms: median {}, max {}",
                ms(healthz[healthz.len() / 2]),
                ms(worst),
                ready_ms[ready_ms.len() / 2],
                ready_ms[ready_ms.len() - 1]
            ),
            "<= 100 ms",
            Some(worst <= Duration::from_millis(100)),
        ));
    }
    env.start_hax().await;

    // ------------------------------------------------------------ RSS idle
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_idle = mib(rss_kib(env.hax_pid()));
    rows.push(row(
        "RSS idle",
        "after start, no peers, 1 s settled".into(),
        format!("{rss_idle:.1} MiB"),
        "<= 15 MiB",
        Some(rss_idle <= 15.0),
    ));

    // ------------------------------------------------------------ entrypoints
    phase(&env, "entrypoints");
    // A first peer makes hax read and cache what entrypoint replies need.
    let warm = SimProcess::connect(SimConfig::new(
        env.hax_endpoint.clone(),
        Fid::typed(FidType::Process, 1, 900_000),
    ))
    .await
    .expect("warm-up peer");
    warm.close();
    let (tx, rx) = mpsc::unbounded_channel::<SimEvent>();
    let recorder = Arc::new(Recorder::default());
    recorder.spawn(rx);
    let cfgs: Vec<SimConfig> = (0..peers_n)
        .map(|i| {
            let mut c = if i < event_peers.max(msg_peers) {
                env.peer_config(i)
            } else {
                SimConfig::new(
                    env.hax_endpoint.clone(),
                    Fid::typed(FidType::Process, 1, 100_000 + i as u64),
                )
            };
            c.timeout = T;
            c.events = Some(tx.clone());
            c
        })
        .collect();
    drop(tx);
    let m0 = env.metrics().await;
    recorder.start();
    let t0 = Instant::now();
    let peers = Arc::new(
        SimCluster::connect(cfgs)
            .await
            .expect("peers connected")
            .into_processes(),
    );
    let all_up = t0.elapsed();
    recorder
        .wait_recs("every peer's CONSUME recorded", |r| {
            r.iter()
                .filter(|r| matches!(r.kind, RecKind::Up { .. }))
                .count()
                >= peers_n
        })
        .await;
    let (ep_lat, queries) = entrypoint_latencies(&recorder.stop());
    let m1 = env.metrics().await;
    let (in_hax, n) = hist_quantile(&m0, &m1, "hax_entrypoint_reply_seconds", "first", 0.99);
    let ep_p99 = quantile(&ep_lat, 0.99);
    rows.push(row(
        "entrypoint request -> reply, first requests",
        format!(
            "{peers_n} peers connecting at once (restart detection: the count's write durable before the reply), configuration cached; {} replies, {queries} QUERY answers",
            ep_lat.len()
        ),
        format!(
            "at the peers: p50 {}, p99 {}, max {}; all {peers_n} links up in {}. In hax (request -> reply handed to Motr, {n} requests): p99 {}",
            us(quantile(&ep_lat, 0.5)),
            us(ep_p99),
            us(quantile(&ep_lat, 1.0)),
            ms(all_up),
            bound_ms(in_hax, n)
        ),
        "p99 <= 1 ms",
        Some(ep_p99 <= Duration::from_millis(1)),
    ));
    dump_metrics(&env, "entrypoints").await;

    // The same peers ask again at once (first_request = 0, as after a lost
    // connection): answered from memory, the link reused.
    let m0 = env.metrics().await;
    recorder.start();
    let t0 = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..peers_n {
        let peers = Arc::clone(&peers);
        tasks.spawn(async move { peers[i].reattach().await.map(|e| e.outcome) });
    }
    while let Some(r) = tasks.join_next().await {
        let outcome = r.expect("reattach task").expect("reattached");
        assert_eq!(outcome, hax_sim::LinkOutcome::Reused, "the link lives on");
    }
    let all_again = t0.elapsed();
    recorder
        .wait_recs("every peer's CONSUME recorded", |r| {
            r.iter()
                .filter(|r| matches!(r.kind, RecKind::Up { .. }))
                .count()
                >= peers_n
        })
        .await;
    let (again, _) = entrypoint_latencies(&recorder.stop());
    let m1 = env.metrics().await;
    let (in_hax, n) = hist_quantile(&m0, &m1, "hax_entrypoint_reply_seconds", "memory", 0.99);
    let again_p99 = quantile(&again, 0.99);
    rows.push(row(
        "entrypoint request -> reply, requests again",
        format!(
            "the {peers_n} peers asking again at once (first_request = 0, links reused), answered from memory; {} replies",
            again.len()
        ),
        format!(
            "at the peers: p50 {}, p99 {}, max {}; all in {}. In hax ({n} requests): p99 {}",
            us(quantile(&again, 0.5)),
            us(again_p99),
            us(quantile(&again, 1.0)),
            ms(all_again),
            bound_ms(in_hax, n)
        ),
        "p99 <= 1 ms",
        Some(again_p99 <= Duration::from_millis(1)),
    ));

    // ------------------------------------------------------------ RSS links
    env.wait_idle().await;
    let rss_links = mib(rss_kib(env.hax_pid()));
    rows.push(row(
        "RSS with links",
        format!("{peers_n} links up, idle"),
        format!("{rss_links:.1} MiB"),
        "<= 40 MiB",
        Some(rss_links <= 40.0),
    ));

    // ------------------------------------------------------------ HA messages
    // Service events: hax only counts and logs them (the original ignores
    // them), so this is the Motr side alone: receive, callback, delivered.
    if msgs > 0 {
        env.wait_idle().await;
        phase(&env, "HA messages");
        let m0 = env.metrics().await;
        let t0 = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..msg_peers {
            let peers = Arc::clone(&peers);
            tasks.spawn(async move {
                let p = &peers[i];
                let all: Vec<HaMsg> = (0..msgs)
                    .map(|k| {
                        let e = if k % 2 == 0 {
                            ServiceEventKind::Starting
                        } else {
                            ServiceEventKind::Started
                        };
                        p.service_event(ios_service(i), ServiceType::Ios, e)
                    })
                    .collect();
                p.send_many(all).await.expect("messages sent");
                p.wait_all_confirmed(Duration::from_secs(120))
                    .await
                    .expect("messages delivered");
            });
        }
        while let Some(r) = tasks.join_next().await {
            r.expect("sender task");
        }
        let took = t0.elapsed();
        let m1 = env.metrics().await;
        let key = "hax_messages_total{direction=\"in\",type=\"event_service\"}";
        let counted = m1.n(key) - m0.n(key);
        let total = msg_peers * msgs;
        assert_eq!(counted, total as u64, "hax counted every message");
        let rate = total as f64 / took.as_secs_f64();
        rows.push(row(
            "HA messages into the daemon",
            format!(
                "{msg_peers} peers x {msgs} service events (pipelined), {peers_n} links up; first send -> last delivered"
            ),
            format!("{rate:.0} msgs/s ({total} in {})", ms(took)),
            ">= 100,000 msgs/s",
            Some(rate >= 100_000.0),
        ));
        dump_metrics(&env, "HA messages").await;
    }

    // ------------------------------------------------------------ broadcasts
    // BQ M0_HA_MSG_NVEC entries (one drive each), the drive of ioservice 0
    // alternating failed/online: publish -> every peer received the SET,
    // and -> every outcome delivered.
    if broadcasts > 0 {
        env.wait_bq_consumed().await;
        phase(&env, "BQ broadcasts");
        let mut to_all = Vec::new();
        let mut to_delivered = Vec::new();
        for b in 0..broadcasts {
            env.wait_idle().await;
            let before: Vec<usize> = peers.iter().map(|p| p.received_count()).collect();
            let delivered0 = env.metrics().await.n(DELIVERED);
            let state = if b % 2 == 0 { "failed" } else { "online" };
            let entry = device_entry(&env.sample.node, 0, state);
            let t0 = Instant::now();
            env.publish_bq(&entry).await;
            let deadline = t0 + T;
            while !peers
                .iter()
                .zip(&before)
                .all(|(p, n)| p.received_count() > *n)
            {
                assert!(
                    Instant::now() < deadline,
                    "broadcast {b} not received by every peer"
                );
                tokio::time::sleep(Duration::from_micros(200)).await;
            }
            to_all.push(t0.elapsed());
            loop {
                if env.metrics().await.n(DELIVERED) >= delivered0 + peers_n as u64 {
                    break;
                }
                assert!(Instant::now() < deadline, "broadcast {b}: outcomes missing");
                tokio::time::sleep(Duration::from_micros(500)).await;
            }
            to_delivered.push(t0.elapsed());
        }
        to_all.sort();
        to_delivered.sort();
        rows.push(row(
            "BQ entry -> broadcast received",
            format!(
                "{broadcasts} BQ `M0_HA_MSG_NVEC` entries (1 note each, sdev state written) to {peers_n} links, one at a time; from the publish call (includes the agent's watch)"
            ),
            format!(
                "every peer received: p50 {}, max {}; every outcome delivered: p50 {}, max {}",
                ms(quantile(&to_all, 0.5)),
                ms(quantile(&to_all, 1.0)),
                ms(quantile(&to_delivered, 0.5)),
                ms(quantile(&to_delivered, 1.0))
            ),
            "-",
            None,
        ));
    }

    // ------------------------------------------------------------ large update
    // An NVEC SET of `big_notes` ONLINE notes from one process: hax sends
    // the notes again to every link (the original's NVEC SET handling).
    // The fids are sdevs unknown to the configuration, so the update is
    // notes only, no Consul write.
    if big_broadcasts > 0 {
        let notes: Vec<HaNote> = (0..big_notes as u64)
            .map(|k| HaNote::new(Fid::typed(FidType::Sdev, 7, 1 + k), HaState::Online))
            .collect();
        let sender = &peers[peers_n - 1];
        phase(&env, "large updates");
        let mut took = Vec::new();
        for _ in 0..big_broadcasts {
            env.wait_idle().await;
            let before: Vec<usize> = peers.iter().map(|p| p.received_count()).collect();
            recorder.start();
            let t0 = Instant::now();
            let tag = sender
                .send(HaMsg::nvec_set(notes.clone()))
                .expect("large SET sent");
            wait_all_got_one_more(&peers, &before, "the large update at every peer").await;
            sender.wait_confirmed(tag, T).await.expect("SET delivered");
            recorder
                .wait_recs("every peer's large SET recorded", |r| {
                    r.iter()
                        .filter(|r| matches!(r.kind, RecKind::Set { notes } if notes == big_notes))
                        .count()
                        >= peers_n
                })
                .await;
            let recs = recorder.stop();
            took.push(all_received_after(&recs, &peers, t0, big_notes));
        }
        took.sort();
        let worst = quantile(&took, 1.0);
        rows.push(row(
            "large state update -> broadcast received",
            format!(
                "{big_broadcasts} NVEC SETs of {big_notes} ONLINE notes from one peer, one at a time, sent again to {peers_n} links; peer's send -> every peer received"
            ),
            format!(
                "p50 {}, max {}",
                ms(quantile(&took, 0.5)),
                ms(worst)
            ),
            "1,000 notes to 100 links <= 20 ms",
            Some(worst <= Duration::from_millis(20)),
        ));
        dump_metrics(&env, "large updates").await;
    }

    // ------------------------------------------------------------ events
    let seq = |i: usize| cycle[i % cycle.len()];
    let wait_final = |last: ProcessEventKind| {
        let env = &env;
        async move {
            for i in 0..event_peers {
                wait_for("the final process state in KV", T, || async {
                    let s = env.process_status(ios_fid(i)).await?;
                    (s.state == hax_e2e::recorded_as(last)).then_some(())
                })
                .await;
            }
        }
    };
    if events > 0 {
        env.wait_idle().await;
        env.wait_bq_consumed().await;
        phase(&env, "event burst");
        recorder.start();
        let t0 = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..event_peers {
            let peers = Arc::clone(&peers);
            let cycle = Arc::clone(&cycle);
            tasks.spawn(async move {
                let p = &peers[i];
                let msgs: Vec<_> = (0..events)
                    .map(|i| p.process_event(cycle[i % cycle.len()]))
                    .collect();
                p.send_many(msgs).await.expect("events sent");
                p.wait_all_confirmed(Duration::from_secs(120))
                    .await
                    .expect("events confirmed");
            });
        }
        while let Some(r) = tasks.join_next().await {
            r.expect("sender task");
        }
        let confirmed = t0.elapsed();
        let total = event_peers * events;
        recorder
            .wait_recs("every confirmation recorded", |r| {
                r.iter()
                    .filter(|r| matches!(r.kind, RecKind::Confirmed { .. }))
                    .count()
                    >= total
            })
            .await;
        wait_final(seq(events - 1)).await;
        let in_kv = t0.elapsed();
        let lat = confirm_latencies(&recorder.stop());
        let rate = total as f64 / confirmed.as_secs_f64();
        rows.push(row(
            "process events -> Consul KV, burst",
            format!(
                "{event_peers} peers x {events} events ({cycle_text} in turn, all sent at once), {peers_n} links up; confirmed = written to KV"
            ),
            format!(
                "{rate:.0} events/s (all confirmed in {}, final states read back at {}); send -> confirmed p50 {}, p99 {}, max {} ({} samples: queueing behind the burst)",
                ms(confirmed),
                ms(in_kv),
                ms(quantile(&lat, 0.5)),
                ms(quantile(&lat, 0.99)),
                ms(quantile(&lat, 1.0)),
                lat.len()
            ),
            ">= 5,000 events/s",
            Some(rate >= 5000.0),
        ));
        dump_metrics(&env, "event burst").await;
    }

    if event_rate > 0 && event_secs > 0 {
        env.wait_idle().await;
        env.wait_bq_consumed().await;
        phase(&env, "paced events");
        // Each peer sends at its share of the rate; ticks that come late
        // are caught up, so the offered rate holds on average.
        let per_peer = event_rate * event_secs / event_peers;
        let period = Duration::from_secs_f64(event_peers as f64 / event_rate as f64);
        recorder.start();
        let t0 = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..event_peers {
            let peers = Arc::clone(&peers);
            let cycle = Arc::clone(&cycle);
            tasks.spawn(async move {
                let p = &peers[i];
                let start =
                    tokio::time::Instant::now() + period.mul_f64(i as f64 / event_peers as f64);
                let mut tick = tokio::time::interval_at(start, period);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
                for k in 0..per_peer {
                    tick.tick().await;
                    p.send(p.process_event(cycle[k % cycle.len()]))
                        .expect("event sent");
                }
                p.wait_all_confirmed(Duration::from_secs(120))
                    .await
                    .expect("events confirmed");
            });
        }
        while let Some(r) = tasks.join_next().await {
            r.expect("sender task");
        }
        let total = per_peer * event_peers;
        recorder
            .wait_recs("every confirmation recorded", |r| {
                r.iter()
                    .filter(|r| matches!(r.kind, RecKind::Confirmed { .. }))
                    .count()
                    >= total
            })
            .await;
        wait_final(seq(per_peer - 1)).await;
        let recs = recorder.stop();
        let first = recs.iter().map(|r| r.at).min().unwrap_or(t0);
        let last = recs.iter().map(|r| r.at).max().unwrap_or(t0);
        let lat = confirm_latencies(&recs);
        let rate = total as f64 / last.duration_since(first).as_secs_f64();
        let p99 = quantile(&lat, 0.99);
        rows.push(row(
            "process events -> Consul KV, paced",
            format!(
                "{event_peers} peers sending {event_rate} events/s in all for {event_secs} s ({cycle_text} in turn), {peers_n} links up; confirmed = written to KV"
            ),
            format!(
                "{rate:.0} events/s ({total} events, first send -> last confirmed); send -> confirmed p50 {}, p99 {}, max {}",
                ms(quantile(&lat, 0.5)),
                ms(p99),
                ms(quantile(&lat, 1.0)),
            ),
            ">= 5,000 events/s sustained, p99 <= 50 ms",
            Some(rate >= 5000.0 * 0.98 && p99 <= Duration::from_millis(50)),
        ));
        dump_metrics(&env, "paced events").await;
    }

    // A Consul health flip of ioservice 0: its process tree broadcast.
    phase(&env, "health flip");
    let mut flip = Vec::new();
    let mut flip_notes = 0;
    for (i, status) in [CheckStatus::Critical, CheckStatus::Passing]
        .into_iter()
        .enumerate()
    {
        env.wait_idle().await;
        env.wait_bq_consumed().await;
        // Keepalive requests reach the peers too: count broadcasts only.
        let before: Vec<usize> = peers.iter().map(|p| p.received_count()).collect();
        let sets = |p: &SimProcess| p.stats().received_sets;
        let sets_before: Vec<u64> = peers.iter().map(sets).collect();
        let t0 = Instant::now();
        env.set_check(sample::fids::IOS, status).await;
        let deadline = t0 + T;
        let all_got = || peers.iter().zip(&sets_before).all(|(p, n)| sets(p) > *n);
        while !all_got() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        let reached = all_got();
        flip.push(if reached {
            ms(t0.elapsed())
        } else {
            format!("no broadcast within {T:?}")
        });
        if i == 0 {
            let got = peers[peers_n - 1].received();
            flip_notes = hax_e2e::nvec_sets(&got[before[peers_n - 1]..])
                .iter()
                .map(Vec::len)
                .max()
                .unwrap_or(0);
        }
    }
    rows.push(row(
        "Consul health flip -> broadcast received",
        format!(
            "check of ioservice 0 critical, then passing; largest SET {flip_notes} notes; to {peers_n} links; from the check update call"
        ),
        format!("critical: {}; passing: {}", flip[0], flip[1]),
        "-",
        None,
    ));

    env.wait_idle().await;
    phase(&env, "end");
    let rss_after = mib(rss_kib(env.hax_pid()));
    rows.push(row(
        "RSS with links, after the load",
        format!("{peers_n} links up, after the runs above"),
        format!("{rss_after:.1} MiB"),
        "<= 40 MiB",
        Some(rss_after <= 40.0),
    ));

    println!("| measure | parameters | result | target | met |");
    println!("|---|---|---|---|---|");
    for r in &rows {
        let met = match r.met {
            Some(true) => "yes",
            Some(false) => "**no**",
            None => "-",
        };
        println!(
            "| {} | {} | {} | {} | {met} |",
            r.measure, r.params, r.result, r.target
        );
    }
    let malloc: Vec<String> = std::env::vars()
        .filter(|(k, _)| k.starts_with("MALLOC_"))
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    println!(
        "\nhax: {}; {} CPUs; load average before {load_before}, after {}; malloc settings: {}",
        bin.display(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        loadavg(),
        if malloc.is_empty() {
            "glibc defaults".to_owned()
        } else {
            malloc.join(" ")
        }
    );
    for p in peers.iter() {
        p.close();
    }
    // A graceful stop (profilers wrapped around hax write their data then).
    env.sigterm();
    let status = env.wait_exit(Duration::from_secs(60)).await;
    assert!(status.success(), "hax stopped with {status}");
    env.assert_no_contract_violations();
}
