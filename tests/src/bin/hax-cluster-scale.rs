//! How the cost of a process event grows with the size of the cluster: for
//! each N, a cluster bed (hax-testkit's `ClusterBed`: three Consul servers,
//! one client agent and one `hax` per node, hare's watches, simulated `m0d`
//! processes per node), then
//!
//! 1. an idle window, for the background rate of Raft commits (sessions,
//!    anti-entropy, checks);
//! 2. events one at a time on the first ioservice of a random node: STOPPED
//!    when it is up, else it starts again as a new incarnation (hax fenced
//!    the old one's links) and reports STARTED; the time until every other
//!    process of every node was told the new state is measured from the
//!    receive times the simulated processes record; Consul's Raft commit
//!    index, Consul's own KV/transaction apply counts, hax's writes,
//!    broadcasts and watch deliveries are counted over the phase, and the
//!    body a `bq/` watch posts is read after each event (watch bytes are
//!    estimated from it: hax does not count them);
//! 3. a sustained rate of such events (offered: each restart is awaited
//!    before the next event), sampling every hax's broadcast-queue position
//!    (`hax_bq_offset`) against the newest entry any node knows
//!    (`hax_bq_newest`) for the lag, and the CPU and RSS of every hax and
//!    the CPU of the agents.
//!
//! Figures and what they mean: docs/performance.md, "Cluster size".
//!
//! Prints a Markdown table, one column per N. A benchmark, not a test:
//! nothing is asserted beyond the events arriving.
//!
//! ```text
//! cargo build --release -p hax-bin -p hax-e2e --bins
//! HAX_CONSUL_BIN=... cargo run --release -p hax-e2e --bin hax-cluster-scale
//! ```
//!
//! Parameters (environment):
//!
//! | variable | default | what |
//! |---|---|---|
//! | `SCALE_NODES` | `1,4,8` | cluster sizes, comma-separated (add `16` on a machine that holds it) |
//! | `SCALE_PROCS` | 8 | `m0d` processes per node (confd and `SCALE_PROCS - 1` ioservices) |
//! | `SCALE_EVENTS` | 50 | events of the latency phase |
//! | `SCALE_IDLE_SECS` | 5 | idle window for the background rates |
//! | `SCALE_RATE` | 20 | events per second of the sustained phase |
//! | `SCALE_SECS` | 10 | seconds of the sustained phase |
//! | `SCALE_SEED` | 1 | seed of the random choice of nodes |

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hax_consul::schema::QueueKind;
use hax_core::{Fid, HaMsgData, HaState, NvecKind, ProcessEventKind};
use hax_e2e::cluster::{is_down, spec, start};
use hax_e2e::{process_cpu as cpu, set_hax_bin, unit_environment, wait_for, Metrics};
use hax_sim::SimCluster;
use hax_testkit::cluster::ClusterBed;

fn param(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{name}={v}: not a number"))
        })
        .unwrap_or(default)
}

fn sizes() -> Vec<usize> {
    std::env::var("SCALE_NODES")
        .unwrap_or_else(|_| "1,4,8".into())
        .split(',')
        .map(|s| {
            s.trim()
                .parse()
                .unwrap_or_else(|_| panic!("SCALE_NODES: {s} is not a number"))
        })
        .collect()
}

/// Value at quantile `q` of sorted `v`.
fn quantile(v: &[Duration], q: f64) -> Duration {
    assert!(!v.is_empty(), "no samples");
    v[((v.len() - 1) as f64 * q).round() as usize]
}

fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1e3)
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

fn rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .unwrap_or(0.0)
        / 1024.0
}

/// The sum of every sample of metric `name` (whatever its labels).
fn sum(m: &Metrics, name: &str) -> f64 {
    m.0.iter()
        .filter(|(k, _)| {
            k.strip_prefix(name)
                .is_some_and(|r| r.is_empty() || r.starts_with('{'))
        })
        .map(|(_, v)| *v)
        .sum()
}

async fn get_text(web: &reqwest::Client, url: &str) -> String {
    match web.get(url).send().await {
        Ok(r) => r.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    }
}

/// What is counted at one moment, over the whole cluster.
#[derive(Debug, Default, Clone)]
struct Snap {
    at: Option<Instant>,
    /// Raft commit index of the first server.
    commit_index: u64,
    /// KV and transaction applies (Consul's own counts, every server).
    kv_applies: f64,
    txn_applies: f64,
    /// hax's Consul writes (single writes committed, transactions).
    hax_writes: f64,
    hax_txns: f64,
    /// Watch updates every hax received.
    watch_updates: f64,
    /// Broadcasts every hax sent.
    broadcasts: f64,
    /// CPU of each hax, of the servers and of the client agents.
    hax_cpu: Vec<Duration>,
    servers_cpu: Duration,
    clients_cpu: Duration,
}

async fn snap(bed: &ClusterBed, web: &reqwest::Client) -> Snap {
    let mut s = Snap {
        at: Some(Instant::now()),
        ..Snap::default()
    };
    if let Some(first) = bed.agents.servers.first() {
        let selfj = get_text(web, &format!("http://{}/v1/agent/self", first.http_addr())).await;
        s.commit_index = serde_json::from_str::<serde_json::Value>(&selfj)
            .ok()
            .and_then(|v| v["Stats"]["raft"]["commit_index"].as_str()?.parse().ok())
            .unwrap_or(0);
    }
    for a in &bed.agents.servers {
        let text = get_text(
            web,
            &format!(
                "http://{}/v1/agent/metrics?format=prometheus",
                a.http_addr()
            ),
        )
        .await;
        let m = Metrics::parse(&text);
        s.kv_applies += sum(&m, "consul_kvs_apply_count");
        s.txn_applies += sum(&m, "consul_txn_apply_count");
        if let Some(pid) = a.pid() {
            s.servers_cpu += cpu(pid);
        }
    }
    for a in &bed.agents.clients {
        if let Some(pid) = a.pid() {
            s.clients_cpu += cpu(pid);
        }
    }
    for n in &bed.nodes {
        let m = Metrics::parse(&get_text(web, &format!("http://{}/metrics", n.hax_http)).await);
        s.hax_writes += sum(&m, "hax_consul_writes_committed_total");
        s.hax_txns += sum(&m, "hax_consul_transactions_total");
        s.watch_updates += sum(&m, "hax_watch_updates_total");
        s.broadcasts += sum(&m, "hax_broadcasts_total");
        let pid = n.hax_pid().unwrap_or(0);
        s.hax_cpu.push(cpu(pid));
    }
    s
}

fn elapsed(a: &Snap, b: &Snap) -> Duration {
    match (a.at, b.at) {
        (Some(x), Some(y)) => y.duration_since(x),
        _ => Duration::ZERO,
    }
}

/// The body a `keyprefix` watch of `bq/` posts: the whole prefix.
async fn bq_listing(bed: &ClusterBed, web: &reqwest::Client) -> String {
    get_text(
        web,
        &format!(
            "http://{}/v1/kv/{}?recurse",
            bed.agents.clients[0].http_addr(),
            QueueKind::Broadcast.prefix()
        ),
    )
    .await
}

/// Each node's (`hax_bq_offset`, `hax_bq_newest`), from the hax at each
/// of `addrs`.
async fn bq_positions(addrs: &[SocketAddr], web: &reqwest::Client) -> Vec<(f64, f64)> {
    let mut out = Vec::new();
    for a in addrs {
        let m = Metrics::parse(&get_text(web, &format!("http://{a}/metrics")).await);
        out.push((sum(&m, "hax_bq_offset"), sum(&m, "hax_bq_newest")));
    }
    out
}

/// Samples every 100 ms, until `stop`, how far each node is behind the
/// newest entry any node knows; the largest gap of each node.
fn spawn_lag_sampler(
    addrs: Vec<SocketAddr>,
    web: reqwest::Client,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Vec<f64>> {
    tokio::spawn(async move {
        let mut max_lag = vec![0.0f64; addrs.len()];
        while !stop.load(Ordering::Relaxed) {
            let pos = bq_positions(&addrs, &web).await;
            let newest = pos.iter().map(|p| p.1).fold(0.0, f64::max);
            for (l, p) in max_lag.iter_mut().zip(&pos) {
                *l = l.max(newest - p.0);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        max_lag
    })
}

/// Whether `msg` tells that process `fid` is down (`down`) or up again.
fn tells(msg: &HaMsgData, fid: Fid, down: bool) -> bool {
    match msg {
        HaMsgData::Nvec(n) if n.kind == NvecKind::Set && n.id_of_get == 0 => {
            n.notes.iter().any(|x| {
                x.fid == fid
                    && if down {
                        is_down(x.state)
                    } else {
                        // A process started again after a failure is in
                        // DTM recovery until it reports DTM_RECOVERED.
                        matches!(x.state, HaState::Online | HaState::DtmRecovering)
                    }
            })
        }
        _ => false,
    }
}

/// Every figure of one N, by row name.
type Column = BTreeMap<&'static str, String>;

/// Row names in print order.
const ROWS: &[&str] = &[
    "m0d processes / Consul agents",
    "bed start (s)",
    "event -> every process told: p50 / p99 / max (ms)",
    "event -> one process told: p50 / p99 (ms)",
    "Raft commits per event (background/s subtracted)",
    "background Raft commits/s (idle)",
    "Consul KV + txn applies per event",
    "hax Consul writes + txns per event (all haxes)",
    "hax broadcasts per event (all haxes)",
    "watch deliveries per event (all haxes / per node)",
    "watch bytes per event, estimate (all haxes / per node)",
    "bq/ watch body during the events (bytes, mean)",
    "bq/ watch body at end (bytes, entries)",
    "ios service watch body (bytes, instances)",
    "sustained: events/s sent (for s)",
    "sustained: max BQ lag per node (entries, worst node / mean of nodes)",
    "sustained: drain after last event (s)",
    "sustained: Raft commits / Consul KV + txn applies per event",
    "sustained: watch deliveries per event (all haxes)",
    "sustained: hax CPU per node (% of a core, mean / max)",
    "sustained: Consul servers CPU (% of a core, sum) / client agent mean",
    "hax RSS per node after (MiB, mean / max)",
    "load average before",
];

/// One event of source `k` (the first ioservice of node `k`): STOPPED when
/// it is up; else the process starts again, as a new incarnation on the
/// same fid and endpoint (hax fenced the old one's links), and reports
/// STARTED. Returns the process fid, whether it went down, and when the
/// event was sent.
async fn event(bed: &mut ClusterBed, k: usize, up: &mut [bool]) -> (Fid, bool, Instant) {
    let down = up[k];
    up[k] = !down;
    if down {
        let p = &bed.nodes[k].peers[1];
        let at = Instant::now();
        p.send_process_event(ProcessEventKind::Stopped)
            .expect("STOPPED sent");
        return (p.fid(), true, at);
    }
    // From the new incarnation's first contact: hax may tell the others
    // of it before its STARTED arrives.
    let at = Instant::now();
    let cfg = bed.nodes[k].peers[1].config().clone();
    bed.nodes[k].peers[1].close();
    let mut fresh = SimCluster::connect(vec![cfg])
        .await
        .expect("process started again")
        .into_processes();
    bed.nodes[k].peers[1] = fresh.remove(0);
    let p = &bed.nodes[k].peers[1];
    p.send_process_event(ProcessEventKind::Started)
        .expect("STARTED sent");
    (p.fid(), false, at)
}

async fn run(n: usize, procs: usize, rng: &mut fastrand::Rng) -> Column {
    let events = param("SCALE_EVENTS", 50);
    let idle = Duration::from_secs(param("SCALE_IDLE_SECS", 5) as u64);
    let rate = param("SCALE_RATE", 20).max(1);
    let secs = param("SCALE_SECS", 10);
    let web = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("http client");
    let mut col = Column::new();
    col.insert("load average before", loadavg());
    eprintln!("== N={n}: starting the bed (load {})", loadavg());

    let mut s = spec(n, procs.saturating_sub(1).max(1));
    s.hax_env.extend(unit_environment());
    // The production trimming period (the bed turns it off): the size of
    // what the bq/ watch posts depends on it.
    s.hax_env
        .push(("HAX_LIMITS_BQ_TRIM_INTERVAL_MS".into(), "10000".into()));
    // "hax ready" (hax_bin) is what the bed waits for.
    s.log_filter = "warn,hax_bin=info".into();
    s.timeout = Duration::from_secs(120 + 15 * n as u64);
    let t = Instant::now();
    let mut bed = start(s).await;
    col.insert("bed start (s)", format!("{:.1}", t.elapsed().as_secs_f64()));
    let peers: usize = bed.nodes.iter().map(|x| x.peers.len()).sum();
    col.insert(
        "m0d processes / Consul agents",
        format!("{peers} / {}", bed.agents.all().count()),
    );
    // The first ioservice of each node is the one that stops and starts:
    // once hax tells its own Motr that a process failed, Motr (and the
    // emulator) disconnects that process's links, so it comes back as a new
    // incarnation; the processes told are the others.
    let sources: Vec<Fid> = bed.nodes.iter().map(|x| x.peers[1].fid()).collect();
    let mut up = vec![true; sources.len()];
    for p in bed.peers() {
        p.take_received();
    }

    // 1. Idle.
    let s0 = snap(&bed, &web).await;
    tokio::time::sleep(idle).await;
    let s1 = snap(&bed, &web).await;
    let bg_rate = s1.commit_index.saturating_sub(s0.commit_index) as f64
        / elapsed(&s0, &s1).as_secs_f64().max(1e-3);
    col.insert("background Raft commits/s (idle)", format!("{bg_rate:.1}"));

    // 2. One event at a time.
    eprintln!("== N={n}: {events} events one at a time");
    let mut every = Vec::new();
    let mut bq_body = Vec::new();
    let mut one = Vec::new();
    for _ in 0..events {
        let k = rng.usize(0..sources.len());
        let (fid, down, sent) = event(&mut bed, k, &mut up).await;
        let recipients: Vec<_> = bed
            .peers()
            .filter(|p| !sources.contains(&p.fid()))
            .collect();
        let mut told: Vec<Option<Instant>> = vec![None; recipients.len()];
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            for (i, p) in recipients.iter().enumerate() {
                for r in p.take_received() {
                    if told[i].is_none() && r.at >= sent && tells(&r.msg.data, fid, down) {
                        told[i] = Some(r.at);
                    }
                }
            }
            if told.iter().all(Option::is_some) {
                break;
            }
            if Instant::now() >= deadline {
                let missing: Vec<String> = recipients
                    .iter()
                    .zip(&told)
                    .filter(|(_, t)| t.is_none())
                    .map(|(p, _)| {
                        format!("{} (state {:?}, stats {:?})", p.fid(), p.state(), p.stats())
                    })
                    .collect();
                panic!(
                    "{} of {fid} not told within 60 s to {missing:?}",
                    if down { "STOPPED" } else { "STARTED" }
                );
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // What the bq/ watch posts now to every node (read after the
        // event was measured, so that the read does not delay it).
        bq_body.push(bq_listing(&bed, &web).await.len());
        let lat: Vec<Duration> = told.iter().flatten().map(|a| *a - sent).collect();
        every.push(lat.iter().copied().max().unwrap_or_default());
        one.extend(lat);
    }
    let s2 = snap(&bed, &web).await;
    every.sort();
    one.sort();
    col.insert(
        "event -> every process told: p50 / p99 / max (ms)",
        format!(
            "{} / {} / {}",
            ms(quantile(&every, 0.5)),
            ms(quantile(&every, 0.99)),
            ms(quantile(&every, 1.0))
        ),
    );
    col.insert(
        "event -> one process told: p50 / p99 (ms)",
        format!("{} / {}", ms(quantile(&one, 0.5)), ms(quantile(&one, 0.99))),
    );
    let ev = events.max(1) as f64;
    let dt = elapsed(&s1, &s2).as_secs_f64();
    let commits = s2.commit_index.saturating_sub(s1.commit_index) as f64;
    col.insert(
        "Raft commits per event (background/s subtracted)",
        format!(
            "{:.1} ({:.1} raw)",
            (commits - bg_rate * dt).max(0.0) / ev,
            commits / ev
        ),
    );
    col.insert(
        "Consul KV + txn applies per event",
        format!(
            "{:.1} + {:.1}",
            (s2.kv_applies - s1.kv_applies) / ev,
            (s2.txn_applies - s1.txn_applies) / ev
        ),
    );
    col.insert(
        "hax Consul writes + txns per event (all haxes)",
        format!(
            "{:.1} + {:.1}",
            (s2.hax_writes - s1.hax_writes) / ev,
            (s2.hax_txns - s1.hax_txns) / ev
        ),
    );
    col.insert(
        "hax broadcasts per event (all haxes)",
        format!("{:.1}", (s2.broadcasts - s1.broadcasts) / ev),
    );
    let wu = (s2.watch_updates - s1.watch_updates) / ev;
    col.insert(
        "bq/ watch body during the events (bytes, mean)",
        format!(
            "{:.0}",
            bq_body.iter().sum::<usize>() as f64 / bq_body.len().max(1) as f64
        ),
    );
    col.insert(
        "watch deliveries per event (all haxes / per node)",
        format!("{wu:.1} / {:.1}", wu / n as f64),
    );
    let body = bq_body.iter().sum::<usize>() as f64 / bq_body.len().max(1) as f64;
    col.insert(
        "watch bytes per event, estimate (all haxes / per node)",
        format!("{:.0} / {:.0}", wu * body, wu * body / n as f64),
    );

    // 3. Sustained rate.
    eprintln!("== N={n}: {rate} events/s for {secs} s");
    let addrs: Vec<SocketAddr> = bed.nodes.iter().map(|x| x.hax_http).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = spawn_lag_sampler(addrs.clone(), web.clone(), Arc::clone(&stop));
    let s3 = snap(&bed, &web).await;
    let period = Duration::from_secs_f64(1.0 / rate as f64);
    let phase = Duration::from_secs(secs as u64);
    let begin = Instant::now();
    let mut next_event = begin;
    let mut sent = 0usize;
    while begin.elapsed() < phase {
        let k = rng.usize(0..sources.len());
        event(&mut bed, k, &mut up).await;
        sent += 1;
        for p in bed.peers() {
            p.take_received();
        }
        next_event += period;
        tokio::time::sleep_until(next_event.into()).await;
    }
    let sent_for = begin.elapsed();
    let s4 = snap(&bed, &web).await;
    // Drained: every node handled the newest entry anyone knows, and that
    // is the queue's last (the leader may still be writing).
    let last_key = QueueKind::Broadcast.prefix();
    let server = bed.node_client(&bed.nodes[0].name).expect("client");
    wait_for(
        "every node to drain the queue",
        Duration::from_secs(120),
        || {
            let addrs = &addrs;
            let web = &web;
            let server = &server;
            async move {
                let pos = bq_positions(addrs, web).await;
                let newest = pos.iter().map(|p| p.1).fold(0.0, f64::max);
                let last = server
                    .kv_list(last_key)
                    .await
                    .ok()?
                    .value
                    .iter()
                    .filter_map(|p| QueueKind::Broadcast.parse_entry_key(&p.key))
                    .max()
                    .unwrap_or(0) as f64;
                pos.iter()
                    .all(|p| p.0 >= newest && p.0 >= last)
                    .then_some(())
            }
        },
    )
    .await;
    let drained = begin.elapsed().saturating_sub(sent_for);
    stop.store(true, Ordering::Relaxed);
    let max_lag = sampler.await.expect("lag sampler");
    // What the events cost, drain included.
    let s5 = snap(&bed, &web).await;
    col.insert(
        "sustained: events/s sent (for s)",
        format!(
            "{:.1} ({:.1})",
            sent as f64 / sent_for.as_secs_f64(),
            sent_for.as_secs_f64()
        ),
    );
    let worst = max_lag.iter().copied().fold(0.0, f64::max);
    let mean = max_lag.iter().sum::<f64>() / n as f64;
    col.insert(
        "sustained: max BQ lag per node (entries, worst node / mean of nodes)",
        format!("{worst:.0} / {mean:.1}"),
    );
    col.insert(
        "sustained: drain after last event (s)",
        format!("{:.2}", drained.as_secs_f64()),
    );
    let sev = sent.max(1) as f64;
    col.insert(
        "sustained: Raft commits / Consul KV + txn applies per event",
        format!(
            "{:.1} / {:.1}",
            s5.commit_index.saturating_sub(s3.commit_index) as f64 / sev,
            (s5.kv_applies - s3.kv_applies + s5.txn_applies - s3.txn_applies) / sev
        ),
    );
    col.insert(
        "sustained: watch deliveries per event (all haxes)",
        format!("{:.1}", (s5.watch_updates - s3.watch_updates) / sev),
    );
    let span = elapsed(&s3, &s4).as_secs_f64().max(1e-3);
    let pct: Vec<f64> = s3
        .hax_cpu
        .iter()
        .zip(&s4.hax_cpu)
        .map(|(a, b)| (b.saturating_sub(*a)).as_secs_f64() / span * 100.0)
        .collect();
    col.insert(
        "sustained: hax CPU per node (% of a core, mean / max)",
        format!(
            "{:.1} / {:.1}",
            pct.iter().sum::<f64>() / n as f64,
            pct.iter().copied().fold(0.0, f64::max)
        ),
    );
    col.insert(
        "sustained: Consul servers CPU (% of a core, sum) / client agent mean",
        format!(
            "{:.1} / {:.1}",
            s4.servers_cpu.saturating_sub(s3.servers_cpu).as_secs_f64() / span * 100.0,
            s4.clients_cpu.saturating_sub(s3.clients_cpu).as_secs_f64() / span * 100.0 / n as f64
        ),
    );
    let rss: Vec<f64> = bed
        .nodes
        .iter()
        .map(|x| rss_mib(x.hax_pid().unwrap_or(0)))
        .collect();
    col.insert(
        "hax RSS per node after (MiB, mean / max)",
        format!(
            "{:.1} / {:.1}",
            rss.iter().sum::<f64>() / n as f64,
            rss.iter().copied().fold(0.0, f64::max)
        ),
    );
    let listing = bq_listing(&bed, &web).await;
    let entries = serde_json::from_str::<serde_json::Value>(&listing)
        .ok()
        .and_then(|v| v.as_array().map(Vec::len))
        .unwrap_or(0);
    col.insert(
        "bq/ watch body at end (bytes, entries)",
        format!("{} ({entries})", listing.len()),
    );
    let health = get_text(
        &web,
        &format!(
            "http://{}/v1/health/service/ios",
            bed.agents.clients[0].http_addr()
        ),
    )
    .await;
    let instances = serde_json::from_str::<serde_json::Value>(&health)
        .ok()
        .and_then(|v| v.as_array().map(Vec::len))
        .unwrap_or(0);
    col.insert(
        "ios service watch body (bytes, instances)",
        format!("{} ({instances})", health.len()),
    );
    drop(bed);
    col
}

fn main() {
    // Before any thread: the environment is read by the bed's spec.
    set_hax_bin();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(bench());
}

async fn bench() {
    let sizes = sizes();
    let procs = param("SCALE_PROCS", 8).max(2);
    let mut rng = fastrand::Rng::with_seed(param("SCALE_SEED", 1) as u64);
    let mut cols = Vec::new();
    for &n in &sizes {
        let col = run(n, procs, &mut rng).await;
        eprintln!("== N={n}: {col:#?}");
        cols.push(col);
    }
    println!(
        "\nhax-cluster-scale: {procs} m0d processes per node, SCALE_EVENTS={}, \
         SCALE_RATE={} for SCALE_SECS={}\n",
        param("SCALE_EVENTS", 50),
        param("SCALE_RATE", 20),
        param("SCALE_SECS", 10)
    );
    let head: Vec<String> = sizes.iter().map(|n| format!("N={n}")).collect();
    println!("| measure | {} |", head.join(" | "));
    println!("|---|{}", "---|".repeat(sizes.len()));
    for r in ROWS {
        let vals: Vec<&str> = cols
            .iter()
            .map(|c| c.get(r).map_or("-", String::as_str))
            .collect();
        println!("| {r} | {} |", vals.join(" | "));
    }
}
