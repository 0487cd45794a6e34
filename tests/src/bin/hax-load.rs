//! Figures of the whole daemon: a real Consul agent, the sample cluster, the
//! `hax` binary (release build next to this one unless `HAX_BIN` is set) and
//! simulated `m0d` peers. Prints a Markdown table with the run's parameters.
//!
//! ```text
//! cargo build --release -p hax-bin && cargo run --release -p hax-e2e --bin hax-load
//! ```
//!
//! Parameters (environment): `LOAD_PEERS` (links, 100), `LOAD_EVENT_PEERS`
//! (peers sending process events, 16), `LOAD_EVENTS` (events per sending
//! peer, 200), `LOAD_BROADCASTS` (BQ entries broadcast, 20), `LOAD_STARTS`
//! (start-to-ready runs, 5).

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hax_bin::sample;
use hax_consul::catalog::CheckStatus;
use hax_core::{Fid, FidType, ProcessEventKind};
use hax_e2e::{device_entry, ios_fid, wait_for, Env, Options, T};
use hax_sim::{SimCluster, SimConfig, SimEvent, SimEventKind, SimProcess};
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

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

struct Row {
    measure: String,
    params: String,
    result: String,
    target: String,
}

fn row(measure: &str, params: String, result: String, target: &str) -> Row {
    Row {
        measure: measure.into(),
        params,
        result,
        target: target.into(),
    }
}

/// The release `hax` next to this executable, unless `HAX_BIN` names one.
fn set_hax_bin() {
    if std::env::var_os("HAX_BIN").is_some() {
        return;
    }
    let exe = std::env::current_exe().expect("current_exe");
    let bin = exe.with_file_name("hax");
    assert!(
        bin.is_file(),
        "{} missing: run `cargo build --release -p hax-bin` first, or set HAX_BIN",
        bin.display()
    );
    std::env::set_var("HAX_BIN", &bin);
}

fn main() {
    set_hax_bin();
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

async fn run() {
    let peers_n = param("LOAD_PEERS", 100);
    let event_peers = param("LOAD_EVENT_PEERS", 16);
    let events = param("LOAD_EVENTS", 200);
    let broadcasts = param("LOAD_BROADCASTS", 20);
    let starts = param("LOAD_STARTS", 5);
    assert!(event_peers <= peers_n, "LOAD_EVENT_PEERS > LOAD_PEERS");
    let bin = PathBuf::from(std::env::var_os("HAX_BIN").expect("HAX_BIN"));
    let mut rows = Vec::new();

    let mut env = Env::start(Options {
        ioservices: event_peers as u64,
        ..Options::default()
    })
    .await;
    let work = tempfile::tempdir().expect("work dir");

    // ------------------------------------------------------------ start
    env.sigterm();
    env.wait_exit(T).await;
    let mut healthz = Vec::new();
    let mut ready_ms = Vec::new();
    for i in 0..starts {
        let (h, e) = timed_start(&env, &bin, &work.path().join(format!("start.{i}.log"))).await;
        healthz.push(h);
        ready_ms.push(e);
    }
    healthz.sort();
    ready_ms.sort();
    rows.push(row(
        "start -> ready",
        format!("{starts} starts, sample with {event_peers} ioservices, agent up"),
        format!(
            "spawn -> `/healthz` 200: median {}, max {}; `hax ready` elapsed_ms: median {}, max {}",
            ms(healthz[healthz.len() / 2]),
            ms(healthz[healthz.len() - 1]),
            ready_ms[ready_ms.len() / 2],
            ready_ms[ready_ms.len() - 1]
        ),
        "<= 100 ms",
    ));
    env.start_hax().await;

    // ------------------------------------------------------------ RSS idle
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_idle = rss_kib(env.hax_pid());
    rows.push(row(
        "RSS idle",
        "after start, no peers, 1 s settled".into(),
        mib(rss_idle),
        "<= 15 MiB",
    ));

    // ------------------------------------------------------------ entrypoints
    // A first peer makes hax read and cache the configuration.
    let warm = SimProcess::connect(SimConfig::new(
        env.hax_endpoint.clone(),
        Fid::typed(FidType::Process, 1, 900_000),
    ))
    .await
    .expect("warm-up peer");
    warm.close();
    let (tx, mut rx) = mpsc::unbounded_channel::<SimEvent>();
    let cfgs: Vec<SimConfig> = (0..peers_n)
        .map(|i| {
            let mut c = if i < event_peers {
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
    let t0 = Instant::now();
    let peers = Arc::new(
        SimCluster::connect(cfgs)
            .await
            .expect("peers connected")
            .into_processes(),
    );
    let all_up = t0.elapsed();
    // Request -> CONSUME reply per peer, from the peers' event stream.
    let mut requested: HashMap<Fid, Instant> = HashMap::new();
    let mut ep_lat = Vec::new();
    let mut queries = 0u32;
    while let Ok(e) = rx.try_recv() {
        match e.kind {
            SimEventKind::Requested { .. } => {
                requested.entry(e.process).or_insert(e.at);
            }
            SimEventKind::Up(ep) => {
                queries += ep.queries;
                if let Some(r) = requested.get(&e.process) {
                    ep_lat.push(e.at.duration_since(*r));
                }
            }
            _ => {}
        }
    }
    ep_lat.sort();
    rows.push(row(
        "entrypoint request -> reply",
        format!(
            "{peers_n} peers connecting at once (configuration cached), {} replies, {queries} QUERY answers",
            ep_lat.len()
        ),
        format!(
            "p50 {}, p99 {}, max {}; all {peers_n} links up in {}",
            us(quantile(&ep_lat, 0.5)),
            us(quantile(&ep_lat, 0.99)),
            us(quantile(&ep_lat, 1.0)),
            ms(all_up)
        ),
        "p99 <= 1 ms",
    ));

    // ------------------------------------------------------------ RSS links
    env.wait_idle().await;
    let rss_links = rss_kib(env.hax_pid());
    rows.push(row(
        "RSS with links",
        format!("{peers_n} links up, idle"),
        mib(rss_links),
        "<= 40 MiB",
    ));

    // ------------------------------------------------------------ broadcasts
    // BQ M0_HA_MSG_NVEC entries (one drive each), the drive of ioservice 0
    // alternating failed/online: publish -> every peer received the SET,
    // and -> every outcome delivered.
    env.wait_bq_consumed().await;
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
            "{broadcasts} BQ `M0_HA_MSG_NVEC` entries (1 note each) to {peers_n} links, one at a time; from the publish call"
        ),
        format!(
            "every peer received: p50 {}, max {}; every outcome delivered: p50 {}, max {}",
            ms(quantile(&to_all, 0.5)),
            ms(quantile(&to_all, 1.0)),
            ms(quantile(&to_delivered, 0.5)),
            ms(quantile(&to_delivered, 1.0))
        ),
        "1,000 notes to 100 links <= 20 ms (not triggerable through the daemon's inputs)",
    ));

    // ------------------------------------------------------------ events
    env.wait_idle().await;
    env.wait_bq_consumed().await;
    while rx.try_recv().is_ok() {}
    let seq = |i: usize| {
        if i % 2 == 0 {
            ProcessEventKind::Starting
        } else {
            ProcessEventKind::Started
        }
    };
    let t0 = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..event_peers {
        let peers = Arc::clone(&peers);
        tasks.spawn(async move {
            let p = &peers[i];
            let msgs: Vec<_> = (0..events).map(|i| p.process_event(seq(i))).collect();
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
    let last = seq(events - 1);
    for i in 0..event_peers {
        wait_for("the final process state in KV", T, || async {
            let s = env.process_status(ios_fid(i)).await?;
            (s.state == hax_e2e::recorded_as(last)).then_some(())
        })
        .await;
    }
    let in_kv = t0.elapsed();
    let mut sent: HashMap<(Fid, u64), Instant> = HashMap::new();
    let mut lat = Vec::new();
    while let Ok(e) = rx.try_recv() {
        match e.kind {
            SimEventKind::Sent { tag, .. } => {
                sent.insert((e.process, tag), e.at);
            }
            SimEventKind::Confirmed { tag } => {
                if let Some(s) = sent.get(&(e.process, tag)) {
                    lat.push(e.at.duration_since(*s));
                }
            }
            _ => {}
        }
    }
    lat.sort();
    let total = event_peers * events;
    rows.push(row(
        "process events -> Consul KV",
        format!(
            "{event_peers} peers x {events} events (STARTING/STARTED alternating, pipelined), {peers_n} links up; confirmed = written to KV"
        ),
        format!(
            "{:.0} events/s (all confirmed in {}, final states read back at {}); send -> confirmed p50 {}, p99 {}, max {} ({} samples)",
            total as f64 / confirmed.as_secs_f64(),
            ms(confirmed),
            ms(in_kv),
            ms(quantile(&lat, 0.5)),
            ms(quantile(&lat, 0.99)),
            ms(quantile(&lat, 1.0)),
            lat.len()
        ),
        ">= 5,000 events/s, p99 <= 50 ms",
    ));

    // A Consul health flip of ioservice 0: its process tree broadcast.
    let mut flip = Vec::new();
    let mut flip_notes = 0;
    for (i, status) in [CheckStatus::Critical, CheckStatus::Passing]
        .into_iter()
        .enumerate()
    {
        env.wait_idle().await;
        env.wait_bq_consumed().await;
        let before: Vec<usize> = peers.iter().map(|p| p.received_count()).collect();
        let t0 = Instant::now();
        env.set_check(sample::fids::IOS, status).await;
        let deadline = t0 + T;
        while !peers
            .iter()
            .zip(&before)
            .all(|(p, n)| p.received_count() > *n)
        {
            if Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        let reached = peers
            .iter()
            .zip(&before)
            .all(|(p, n)| p.received_count() > *n);
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
    ));

    env.wait_idle().await;
    rows.push(row(
        "RSS with links, after the load",
        format!("{peers_n} links up, after the runs above"),
        mib(rss_kib(env.hax_pid())),
        "<= 40 MiB",
    ));

    println!("| measure | parameters | result | target |");
    println!("|---|---|---|---|");
    for r in &rows {
        println!(
            "| {} | {} | {} | {} |",
            r.measure, r.params, r.result, r.target
        );
    }
    println!(
        "\nhax: {}; {} CPUs",
        bin.display(),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    for p in peers.iter() {
        p.close();
    }
    env.assert_no_contract_violations();
}
