//! `m0d-sim`: plays N Motr `m0d` processes against hax over the emulator's
//! peer protocol, and tells what happens, one line per event.

use std::collections::HashMap;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use hax_core::{Fid, ProcessEventKind, ServiceEventKind, ServiceType};
use hax_sim::process::SimEventKind;
use hax_sim::{
    cluster, describe, Delivery, LinkOutcome, LinkState, Model, SimConfig, SimControl, SimError,
    SimEvent, SimProcess, SimStats,
};
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

/// Simulated Motr m0d processes for hax.
///
/// Connects N processes to hax's endpoint, each with its own process fid
/// (r|1:K, r|1:K+1, …), endpoint and pid. Each makes an entrypoint request
/// (asking again at once on QUERY), and then, as asked: sends process and
/// service events, an NVEC GET, a failure vector request, keepalives. Every
/// message hax sends is printed and acknowledged with DELIVERED; every
/// delivery confirmation from hax is printed. A lost connection is re-attached
/// once a second, as a real m0d does. On exit (after --duration, or on SIGINT
/// or SIGTERM) the processes send their stop events, and a summary follows.
///
/// Exit status: 0 if all went well, 1 on a protocol violation by hax or a
/// failed check (a wrong NVEC GET answer, a failure vector reply with another
/// cookie, an unanswered keepalive), 2 on a usage error.
#[derive(Debug, Parser)]
#[command(name = "m0d-sim", version, about, long_about, max_term_width = 100)]
struct Args {
    /// hax's endpoint: inet:tcp:HOST@PORT, an LNet-style NID@NET:12345:PORTAL:TMID,
    /// or unix:PATH.
    #[arg(long, value_name = "EP", env = "HAX_ENDPOINT")]
    ha_endpoint: String,

    /// Number of processes.
    #[arg(long, short = 'n', default_value_t = 1, value_name = "N",
          value_parser = clap::value_parser!(u64).range(1..=4096))]
    count: u64,

    /// Key of the first process fid (r|1:K); the others follow.
    #[arg(long, default_value_t = 1, value_name = "K")]
    fid_base: u64,

    /// Send the events a real m0d sends: at start, process STARTING, STARTING
    /// and STARTED of the services started before the configuration is read
    /// (fid 0; types 0, SSS, FDMI), the same for each configured service,
    /// process STARTED; on exit, process STOPPING, service STOPPING for each
    /// configured service in reverse order, process STOPPED.
    #[arg(long)]
    events: bool,

    /// Ask hax for the states of these objects with an NVEC GET from each
    /// process, and check the answer (same id, same fids in the same order, no
    /// UNKNOWN state). Fids as 0xC:0xK or T|C:K, comma-separated.
    #[arg(long, value_name = "FID,...", value_delimiter = ',', value_parser = parse_fid)]
    nvec_get: Vec<Fid>,

    /// Send a failure vector request for this pool from each process, and
    /// check the reply echoes its cookie.
    #[arg(long, value_name = "POOL_FID", value_parser = parse_fid)]
    failvec: Option<Fid>,

    /// Send a keepalive request from each process every --keepalive-interval
    /// seconds and expect the reply.
    #[arg(long)]
    keepalive: bool,

    /// Seconds between keepalives.
    #[arg(long, default_value_t = 5.0, value_name = "SECS")]
    keepalive_interval: f64,

    /// Run this many seconds, then stop. Without it, run until SIGINT or
    /// SIGTERM.
    #[arg(long, value_name = "SECS")]
    duration: Option<f64>,

    /// What to do with hax's messages: deliver them at once, or never (a hung
    /// m0d, for fault tests).
    #[arg(long, value_enum, default_value_t = DeliveryArg::Auto)]
    delivery: DeliveryArg,

    /// Seconds to keep retrying the first connection while hax is not
    /// listening yet.
    #[arg(long, default_value_t = 10.0, value_name = "SECS")]
    connect_timeout: f64,

    /// Seconds to wait for each entrypoint reply and each request's reply.
    #[arg(long, default_value_t = 10.0, value_name = "SECS")]
    timeout: f64,

    /// Do not re-attach lost connections.
    #[arg(long)]
    no_reattach: bool,

    /// Load this client model into hax's emulator once connected: pools with
    /// their ioservices and pool versions, filesystem stats, byte counts, SNS
    /// progress rate (JSON; see hax_sim::Model). It shapes what hax's rconfc,
    /// SNS, stats and byte-count calls answer.
    #[arg(long, value_name = "FILE")]
    model: Option<std::path::PathBuf>,

    /// Print one JSON object per line instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum DeliveryArg {
    Auto,
    Never,
}

fn parse_fid(s: &str) -> Result<Fid, String> {
    s.parse::<Fid>().map_err(|e| e.to_string())
}

fn secs(v: f64, what: &str) -> Result<Duration, String> {
    Duration::try_from_secs_f64(v).map_err(|_| format!("--{what} {v}: not a number of seconds"))
}

/// Prints events and results, as text or JSON lines.
struct Out {
    start: Instant,
    json: bool,
    names: HashMap<Fid, String>,
}

impl Out {
    fn name(&self, fid: &Fid) -> String {
        self.names
            .get(fid)
            .cloned()
            .unwrap_or_else(|| fid.to_string())
    }

    fn line(&self, at: Instant, process: Option<&Fid>, text: &str, j: Value) {
        let t = at.saturating_duration_since(self.start).as_secs_f64();
        if self.json {
            let mut obj = json!({ "t": (t * 1e6).round() / 1e6 });
            if let Some(p) = process {
                obj["process"] = json!(p.to_string());
            }
            if let (Value::Object(o), Value::Object(extra)) = (&mut obj, j) {
                o.extend(extra);
            }
            println!("{obj}");
        } else {
            match process {
                Some(p) => println!("{t:9.3}  {:<6} {text}", self.name(p)),
                None => println!("{t:9.3}  {text}"),
            }
        }
    }

    fn event(&self, e: &SimEvent) {
        let p = Some(&e.process);
        let (text, j) = match &e.kind {
            SimEventKind::Connecting { endpoint } => (
                format!("connecting to {endpoint}"),
                json!({"event": "connecting", "endpoint": endpoint}),
            ),
            SimEventKind::Requested { first, generation } => (
                format!(
                    "→ entrypoint request{} (generation {generation})",
                    if *first { ", first" } else { "" }
                ),
                json!({"event": "ep_request", "first": first, "generation": generation}),
            ),
            SimEventKind::Query(r) => (
                format!("← QUERY (hax is not ready), asking again: {}", describe::ep_rep(r)),
                json!({"event": "ep_query", "link": r.link_id}),
            ),
            SimEventKind::Up(ep) => {
                let how = match ep.outcome {
                    LinkOutcome::New => "new link",
                    LinkOutcome::Reused => "link reused",
                    LinkOutcome::Reconnected => "hax restarted, link reconnected",
                };
                let mut text = format!("← entrypoint answered ({how}): {}", describe::ep_rep(&ep.reply));
                if ep.queries > 0 {
                    text.push_str(&format!(" after {} QUERY", ep.queries));
                }
                for w in ep.warnings() {
                    text.push_str(&format!("\n{:9}  {:<6} ! {w}", "", self.name(&e.process)));
                }
                let r = &ep.reply;
                (
                    text,
                    json!({
                        "event": "up", "outcome": format!("{:?}", ep.outcome).to_lowercase(),
                        "link": r.link_id, "queries": ep.queries, "quorum": r.quorum,
                        "confds": r.confds.iter().map(|c| json!({"fid": c.fid.to_string(), "ep": c.ep})).collect::<Vec<_>>(),
                        "rm_fid": r.rm_fid.to_string(), "rm_ep": r.rm_ep,
                        "cookie": r.cookie.to_string(), "warnings": ep.warnings(),
                    }),
                )
            }
            SimEventKind::Fenced(r) => (
                format!(
                    "← FENCED: hax disconnected this process before (a real m0d asserts and dies): {}",
                    describe::ep_rep(r)
                ),
                json!({"event": "fenced"}),
            ),
            SimEventKind::Received(r) => (
                format!("← msg {}: {}", r.tag, describe::msg(&r.msg)),
                json!({"event": "received", "link": r.link_id, "tag": r.tag,
                       "type": r.msg.data.type_name(), "text": describe::msg(&r.msg)}),
            ),
            SimEventKind::Duplicate { tag, reacknowledged } => (
                format!(
                    "← resend of msg {tag} dropped{}",
                    if *reacknowledged { ", confirmed again" } else { "" }
                ),
                json!({"event": "duplicate", "tag": tag, "reacknowledged": reacknowledged}),
            ),
            SimEventKind::Sent { tag, msg } => (
                format!("→ msg {tag}: {}", describe::msg(msg)),
                json!({"event": "sent", "tag": tag, "type": msg.data.type_name(),
                       "text": describe::msg(msg)}),
            ),
            SimEventKind::Confirmed { tag } => (
                format!("✓ msg {tag} delivered to hax"),
                json!({"event": "confirmed", "tag": tag}),
            ),
            SimEventKind::Resent { count } => (
                format!("→ resent {count} unconfirmed messages"),
                json!({"event": "resent", "count": count}),
            ),
            SimEventKind::NoLink { link_id } => (
                format!("← NOLINK for link {link_id}"),
                json!({"event": "nolink", "link": link_id}),
            ),
            SimEventKind::ConnectionLost { reason } => (
                format!("connection lost: {reason}"),
                json!({"event": "connection_lost", "reason": reason}),
            ),
            SimEventKind::Violation(v) => (
                format!("!! protocol violation by hax: {v}"),
                json!({"event": "violation", "what": v.to_string()}),
            ),
        };
        self.line(e.at, p, &text, j);
    }
}

/// Connects one process, retrying while hax is not listening.
async fn connect(cfg: SimConfig, patience: Duration) -> Result<SimProcess, SimError> {
    let p = SimProcess::new(cfg)?;
    let deadline = Instant::now() + patience;
    loop {
        match p.start().await {
            Ok(_) => return Ok(p),
            Err(SimError::Connect { .. }) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

async fn stop_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// The services a real m0d starts before it has read its configuration, in
/// the order it reports them (docs/motr.md, "a real m0d with hax as its HA"):
/// their events carry fid 0.
const EARLY_SERVICES: [ServiceType; 5] = [
    ServiceType::Unused,
    ServiceType::Unused,
    ServiceType::Sss,
    ServiceType::Unused,
    ServiceType::Fdmi,
];

/// A real m0d's start: process STARTING, each early service (fid 0) and
/// then each configured service STARTING then STARTED, process STARTED.
fn send_start_events(p: &SimProcess) -> Result<(), SimError> {
    p.send_process_event(ProcessEventKind::Starting)?;
    let early = EARLY_SERVICES.iter().map(|t| (Fid::default(), *t));
    let configured = p.config().services.clone();
    for (fid, ty) in early.chain(configured) {
        p.send_service_event(fid, ty, ServiceEventKind::Starting)?;
        p.send_service_event(fid, ty, ServiceEventKind::Started)?;
    }
    p.send_process_event(ProcessEventKind::Started)?;
    Ok(())
}

/// A real m0d's stop: process STOPPING, SERVICE STOPPING for each
/// configured service in reverse order (no SERVICE STOPPED), process
/// STOPPED.
fn send_stop_events(p: &SimProcess) -> Result<(), SimError> {
    p.send_process_event(ProcessEventKind::Stopping)?;
    for (fid, ty) in p.config().services.iter().rev() {
        p.send_service_event(*fid, *ty, ServiceEventKind::Stopping)?;
    }
    p.send_process_event(ProcessEventKind::Stopped)?;
    Ok(())
}

async fn run(args: Args) -> Result<bool, String> {
    let timeout = secs(args.timeout, "timeout")?;
    let patience = secs(args.connect_timeout, "connect-timeout")?;
    let ka_every = secs(args.keepalive_interval, "keepalive-interval")?;
    let duration = args.duration.map(|d| secs(d, "duration")).transpose()?;
    if ka_every.is_zero() {
        return Err("--keepalive-interval must be above 0".into());
    }
    let model = match &args.model {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("--model {}: {e}", path.display()))?;
            Some(Model::from_json(&text).map_err(|e| format!("--model {}: {e}", path.display()))?)
        }
        None => None,
    };
    let (tx, mut rx) = mpsc::unbounded_channel::<SimEvent>();
    let mut cfgs = cluster::configs(&args.ha_endpoint, args.count as usize, args.fid_base);
    let mut names = HashMap::new();
    for (i, c) in cfgs.iter_mut().enumerate() {
        c.events = Some(tx.clone());
        c.timeout = timeout;
        c.delivery = match args.delivery {
            DeliveryArg::Auto => Delivery::Auto,
            DeliveryArg::Never => Delivery::Never,
        };
        names.insert(c.fid, format!("m0d#{}", i));
    }
    let out = Arc::new(Out {
        start: Instant::now(),
        json: args.json,
        names,
    });
    if !out.json {
        println!(
            "m0d-sim: {} process{} → hax at {}",
            args.count,
            if args.count == 1 { "" } else { "es" },
            args.ha_endpoint
        );
        for c in &cfgs {
            println!(
                "           {:<6} process {}  pid {}  endpoint {}  services {}",
                out.name(&c.fid),
                c.fid,
                c.pid,
                c.endpoint,
                c.services
                    .iter()
                    .map(|(f, t)| format!("{f} ({})", t.name().trim_start_matches("M0_CST_")))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
    }
    let printer = {
        let out = out.clone();
        tokio::spawn(async move {
            while let Some(e) = rx.recv().await {
                out.event(&e);
            }
        })
    };
    drop(tx);

    let mut failed = false;
    let mut set = JoinSet::new();
    for (i, c) in cfgs.into_iter().enumerate() {
        set.spawn(async move { (i, connect(c, patience).await) });
    }
    let mut procs: Vec<Option<SimProcess>> = (0..args.count).map(|_| None).collect();
    while let Some(r) = set.join_next().await {
        match r {
            Ok((i, Ok(p))) => procs[i] = Some(p),
            Ok((i, Err(e))) => {
                out.line(
                    Instant::now(),
                    None,
                    &format!("m0d#{i}: cannot connect: {e}"),
                    json!({"event": "connect_failed", "index": i, "error": e.to_string()}),
                );
                failed = true;
            }
            Err(e) => return Err(format!("a connecting task failed: {e}")),
        }
    }
    let procs: Vec<Arc<SimProcess>> = procs.into_iter().flatten().map(Arc::new).collect();

    if let Some(m) = &model {
        let loaded = async {
            let ctl = SimControl::connect(&args.ha_endpoint).await?;
            ctl.load(m).await
        };
        match tokio::time::timeout(timeout, loaded).await {
            Ok(Ok(())) => out.line(
                Instant::now(),
                None,
                &format!(
                    "client model loaded: {} pools, {} ioservice counters",
                    m.pools.len(),
                    m.counters.len()
                ),
                json!({"event": "model_loaded", "pools": m.pools.len(), "counters": m.counters.len()}),
            ),
            Ok(Err(e)) => {
                out.line(
                    Instant::now(),
                    None,
                    &format!("✗ client model: {e}"),
                    json!({"event": "model_failed", "error": e.to_string()}),
                );
                failed = true;
            }
            Err(_) => {
                out.line(
                    Instant::now(),
                    None,
                    "✗ client model: no answer in time",
                    json!({"event": "model_failed", "error": "timeout"}),
                );
                failed = true;
            }
        }
    }

    if args.events {
        for p in &procs {
            if let Err(e) = send_start_events(p) {
                out.line(
                    Instant::now(),
                    Some(&p.fid()),
                    &format!("cannot send events: {e}"),
                    json!({"event": "error", "error": e.to_string()}),
                );
            }
        }
    }

    // Requests with replies, from every process at once.
    let mut checks = JoinSet::new();
    for p in &procs {
        if !args.nvec_get.is_empty() {
            let (p, fids, out) = (p.clone(), args.nvec_get.clone(), out.clone());
            checks.spawn(async move {
                match p.nvec_get(&fids).await {
                    Ok(notes) => {
                        let text = notes
                            .iter()
                            .map(|n| format!("{} {}", n.fid, n.state.name().trim_start_matches("M0_NC_")))
                            .collect::<Vec<_>>()
                            .join(", ");
                        out.line(Instant::now(), Some(&p.fid()), &format!("✓ NVEC GET answered rightly: {text}"),
                                 json!({"event": "nvec_get_ok", "notes": notes.iter().map(|n| json!({"fid": n.fid.to_string(), "state": n.state.name()})).collect::<Vec<_>>()}));
                        true
                    }
                    Err(e) => {
                        out.line(Instant::now(), Some(&p.fid()), &format!("✗ NVEC GET: {e}"),
                                 json!({"event": "nvec_get_failed", "error": e.to_string()}));
                        false
                    }
                }
            });
        }
        if let Some(pool) = args.failvec {
            let (p, out) = (p.clone(), out.clone());
            checks.spawn(async move {
                match p.failvec(pool).await {
                    Ok(rep) => {
                        out.line(Instant::now(), Some(&p.fid()),
                                 &format!("✓ failure vector answered: {} failed", rep.notes.len()),
                                 json!({"event": "failvec_ok", "pool": rep.pool.to_string(), "notes": rep.notes.len()}));
                        true
                    }
                    Err(e) => {
                        out.line(Instant::now(), Some(&p.fid()), &format!("✗ failure vector: {e}"),
                                 json!({"event": "failvec_failed", "error": e.to_string()}));
                        false
                    }
                }
            });
        }
    }
    while let Some(r) = checks.join_next().await {
        if !r.unwrap_or(false) {
            failed = true;
        }
    }

    // Until the end: keepalives, and re-attaching lost connections.
    let end = async {
        match duration {
            Some(d) => tokio::time::sleep(d).await,
            None => stop_signal().await,
        }
    };
    tokio::pin!(end);
    let mut ka = tokio::time::interval(ka_every);
    let mut keepalives: JoinSet<bool> = JoinSet::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    loop {
        tokio::select! {
            _ = &mut end => break,
            _ = ka.tick(), if args.keepalive => {
                for p in &procs {
                    if p.state() != LinkState::Up { continue; }
                    let (p, out) = (p.clone(), out.clone());
                    keepalives.spawn(async move {
                        match p.keepalive().await {
                            Ok(counter) => {
                                out.line(Instant::now(), Some(&p.fid()), &format!("✓ keepalive answered (counter {counter})"),
                                         json!({"event": "keepalive_ok", "counter": counter}));
                                true
                            }
                            Err(e) => {
                                out.line(Instant::now(), Some(&p.fid()), &format!("✗ keepalive: {e}"),
                                         json!({"event": "keepalive_failed", "error": e.to_string()}));
                                false
                            }
                        }
                    });
                }
            }
            Some(r) = keepalives.join_next(), if !keepalives.is_empty() => {
                if !r.unwrap_or(false) { failed = true; }
            }
            _ = tick.tick(), if !args.no_reattach => {
                for p in &procs {
                    if p.state() == LinkState::Disconnected {
                        let p = p.clone();
                        tokio::spawn(async move { let _ = p.reattach().await; });
                    }
                }
            }
        }
    }

    // Keepalives still waiting at the end prove nothing either way.
    keepalives.abort_all();

    // Stop: events, and a last wait for hax's confirmations.
    if args.events {
        for p in &procs {
            if p.state() == LinkState::Up {
                let _ = send_stop_events(p);
            }
        }
    }
    let grace = Duration::from_secs(5);
    for p in &procs {
        if matches!(p.state(), LinkState::Up) && p.wait_all_confirmed(grace).await.is_err() {
            let n = p.unconfirmed().len();
            out.line(
                Instant::now(),
                Some(&p.fid()),
                &format!("! {n} messages still unconfirmed by hax"),
                json!({"event": "unconfirmed_at_exit", "count": n}),
            );
        }
    }

    let mut total = SimStats::default();
    let mut states = Vec::new();
    let mut violations = 0;
    for p in &procs {
        total.add(&p.stats());
        violations += p.violations().len();
        states.push((p.fid(), p.state()));
        p.close();
    }
    drop(procs);
    let _ = printer.await;
    if violations > 0 {
        failed = true;
    }
    let fenced = states
        .iter()
        .filter(|(_, s)| *s == LinkState::Fenced)
        .count();
    if out.json {
        println!(
            "{}",
            json!({
                "event": "summary", "processes": states.len(), "fenced": fenced,
                "sent": total.sent, "confirmed": total.confirmed, "resent": total.resent,
                "received": total.received, "duplicates": total.duplicates,
                "ep_requests": total.ep_requests, "queries": total.queries,
                "connections": total.connections, "violations": violations, "ok": !failed,
            })
        );
    } else {
        println!("summary: {} processes ({} fenced)", states.len(), fenced);
        println!(
            "  sent {} messages, {} confirmed by hax, {} resent",
            total.sent, total.confirmed, total.resent
        );
        println!(
            "  received {} messages from hax ({} resends dropped)",
            total.received, total.duplicates
        );
        println!(
            "  {} entrypoint requests ({} QUERY), {} connections",
            total.ep_requests, total.queries, total.connections
        );
        println!(
            "  {} protocol violations: {}",
            violations,
            if failed { "FAILED" } else { "ok" }
        );
    }
    Ok(!failed)
}

fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("m0d-sim: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(args)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("m0d-sim: {e}");
            ExitCode::from(2)
        }
    }
}
