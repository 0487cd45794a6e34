//! hax on real Motr next to Motr's own HA listener, measured the same way:
//! Motr's `m0ham` connects as an m0d again and again (each run a new
//! incarnation of one process fid, as `m0ham` always uses the same one),
//! first to `m0ham -l`, then to the `hax` daemon (built with `--features
//! motr`) on a Consul dev agent with the sample cluster. For each listener:
//!
//! - the entrypoint latency at the peer: from m0ham's `Connecting to` to its
//!   `Got entrypoint reply` (median, p99, max);
//! - the listener's CPU time per connect (`/proc/<pid>/stat`);
//! - its RSS and threads idle (before the first connect) and after the last;
//! - for hax, its links at the end (its own and the last incarnation's, when
//!   every earlier one was ended), the CPU it spends while the last ones end,
//!   and how long SIGTERM takes.
//!
//! With `FIG_M0PEERS`, then hax with `FIG_LINKS` processes linked at once
//! (`hax-m0peers`): its RSS and threads before and with every link, the
//! connects at the peers, its CPU with every link probed, and SIGTERM with
//! every peer still linked.
//!
//! Prints a Markdown table (docs/motr.md, "Side by side"). A benchmark, not a
//! test: it fails only when a run cannot be made.
//!
//! ```text
//! scripts/motr-figures.sh            # builds hax with the motr feature, runs this
//! FIG_HAX=target/motr/release/hax MOTR_PREFIX=/opt/motr \
//!     cargo run --release -p hax-e2e --bin hax-motr-figures
//! ```
//!
//! | variable | default | what |
//! |---|---|---|
//! | `FIG_HAX` | (required) | the `hax` binary built with `--features motr` |
//! | `MOTR_PREFIX` | `/opt/motr` | the installed Motr (`sbin/m0ham`) |
//! | `FIG_ROUNDS` | 30 | connects per listener |
//! | `FIG_KEEP` | (unset) | set: keep the scratch directory (hax's log) |
//! | `FIG_M0PEERS` | (unset) | `hax-m0peers` (tests/motr-peers): also measure hax with `FIG_LINKS` linked processes |
//! | `FIG_LINKS` | 100 | processes linked at once in that run |
//! | `FIG_HAX_ARGS` | (none) | more options for hax, e.g. `--motr-receive-buffers 0` |
//! | `FIG_SAME_ENDPOINT` | (unset) | `1`: every connect from one endpoint, as an m0d restarts (otherwise a new one each time) |

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use hax_e2e::process_cpu as cpu;
use hax_testkit::dev_agent::DevAgent;
use hax_testkit::sample::{self, SampleSpec};

fn param(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A free TCP port on 127.0.0.1 (`hax_e2e::free_port`) not handed out
/// before: hax's ports are chosen before it binds them.
fn free_port(taken: &mut Vec<u16>) -> Result<u16, String> {
    for _ in 0..100 {
        let port = hax_e2e::free_port();
        if !taken.contains(&port) {
            taken.push(port);
            return Ok(port);
        }
    }
    Err("no free port".into())
}

fn inet(port: u16) -> String {
    format!("inet:tcp:127.0.0.1@{port}")
}

/// RSS (KiB) and threads of `pid`.
fn usage(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("Threads:"))
}

/// Output lines of `child` as they come, with their arrival time.
fn lines(child: &mut Child) -> mpsc::Receiver<(Instant, String)> {
    let (tx, rx) = mpsc::channel();
    lines_to(child, &tx);
    rx
}

/// Sends the output lines of `child` to `tx` as they come.
fn lines_to(child: &mut Child, tx: &mpsc::Sender<(Instant, String)>) {
    let out = child
        .stdout
        .take()
        .map(|o| Box::new(o) as Box<dyn std::io::Read + Send>);
    let err = child
        .stderr
        .take()
        .map(|e| Box::new(e) as Box<dyn std::io::Read + Send>);
    for stream in [out, err].into_iter().flatten() {
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                if tx.send((Instant::now(), line)).is_err() {
                    break;
                }
            }
        });
    }
}

fn wait_line(
    rx: &mpsc::Receiver<(Instant, String)>,
    what: &str,
    limit: Duration,
) -> Result<Instant, String> {
    let deadline = Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok((t, l)) if l.contains(what) => return Ok(t),
            Ok(_) => {}
            Err(_) => return Err(format!("no {what:?} within {limit:?}")),
        }
    }
}

/// One m0ham connect from `local` to `listener`: the entrypoint latency.
fn connect(m0ham: &Path, dir: &Path, local: &str, listener: &str) -> Result<Duration, String> {
    let mut child = Command::new(m0ham)
        .args(["-v", "-s", local, listener])
        .current_dir(dir)
        .env("M0_TRACE_DIR", dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("m0ham: {e}"))?;
    let rx = lines(&mut child);
    let result = wait_line(&rx, "Connecting to", Duration::from_secs(30)).and_then(|t0| {
        wait_line(&rx, "Got entrypoint reply", Duration::from_secs(60)).map(|t1| t1 - t0)
    });
    reap(&mut child, Duration::from_secs(30));
    // Each m0ham leaves a 16 MiB trace.
    remove_traces(dir);
    result
}

/// Waits up to `limit` for `child` to exit, then kills it: its exit status
/// if it exited by itself.
fn reap(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let t = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => break Some(st),
            Ok(None) if t.elapsed() < limit => std::thread::sleep(Duration::from_millis(10)),
            _ => break None,
        }
    };
    let _ = child.kill();
    let _ = child.wait();
    status
}

fn remove_traces(dir: &Path) {
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_name().to_string_lossy().starts_with("m0trace") {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}

#[derive(Default)]
struct Figures {
    latencies: Vec<Duration>,
    cpu_per_connect: Duration,
    /// CPU the listener spends per second with no peer connecting.
    cpu_idle_per_s: Duration,
    idle: (u64, u64),
    after: (u64, u64),
    /// hax's links once settled, and how long after the last connect.
    links: Option<(u64, Duration)>,
    /// CPU spent from the last connect until the links settled, and the
    /// links that ended meanwhile.
    cpu_settling: Duration,
    ended_settling: u64,
    stop: Option<(Option<i32>, Duration)>,
}

impl Figures {
    fn pct(&self, p: f64) -> Duration {
        let mut v = self.latencies.clone();
        v.sort();
        let i = ((v.len() as f64 - 1.0) * p).round() as usize;
        v.get(i).copied().unwrap_or_default()
    }
}

/// Runs `rounds` connects against the listener `pid` at `ep`.
fn measure(
    m0ham: &Path,
    dir: &Path,
    pid: u32,
    ep: &str,
    rounds: usize,
    taken: &mut Vec<u16>,
) -> Result<Figures, String> {
    let quiet = Duration::from_secs(5);
    let c0 = cpu(pid);
    std::thread::sleep(quiet);
    let mut f = Figures {
        idle: usage(pid),
        cpu_idle_per_s: (cpu(pid) - c0).div_f64(quiet.as_secs_f64()),
        ..Figures::default()
    };
    // FIG_SAME_ENDPOINT=1: every incarnation at one endpoint, as an m0d
    // restarts; otherwise a new one each time.
    let same = std::env::var("FIG_SAME_ENDPOINT").is_ok_and(|v| v == "1");
    let fixed = inet(free_port(taken)?);
    let c0 = cpu(pid);
    for _ in 0..rounds {
        let local = if same {
            fixed.clone()
        } else {
            inet(free_port(taken)?)
        };
        f.latencies.push(connect(m0ham, dir, &local, ep)?);
    }
    f.cpu_per_connect = (cpu(pid) - c0) / rounds.max(1) as u32;
    f.after = usage(pid);
    Ok(f)
}

fn listener_baseline(
    m0ham: &Path,
    root: &Path,
    rounds: usize,
    taken: &mut Vec<u16>,
) -> Result<Figures, String> {
    let dir = root.join("m0ham-l");
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let ep = inet(free_port(taken)?);
    let mut child = Command::new(m0ham)
        .args(["-v", "-l", "-w", "3600", &ep])
        .current_dir(&dir)
        .env("M0_TRACE_DIR", &dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("m0ham -l: {e}"))?;
    let rx = lines(&mut child);
    let ready = wait_line(&rx, "Listening at", Duration::from_secs(30));
    // Drained so that the listener never blocks on a full pipe.
    std::thread::spawn(move || while rx.recv().is_ok() {});
    let f = ready.and_then(|_| {
        std::thread::sleep(Duration::from_secs(1));
        measure(m0ham, &dir, child.id(), &ep, rounds, taken)
    });
    let _ = child.kill();
    let _ = child.wait();
    remove_traces(&dir);
    f
}

/// Where the dynamic loader finds the installed libmotr.
fn lib_path() -> String {
    let prefix = std::env::var("MOTR_PREFIX").unwrap_or_else(|_| "/opt/motr".into());
    match std::env::var("LD_LIBRARY_PATH") {
        Ok(p) if !p.is_empty() => format!("{prefix}/lib:{p}"),
        _ => format!("{prefix}/lib"),
    }
}

fn metric(http: SocketAddr, key: &str) -> Option<u64> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(http).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map(|v| v as u64)
}

/// hax on real Motr on a dev agent with the sample cluster, its output kept
/// in `<dir>/hax.log`.
struct RunningHax {
    // Stops with the run.
    _agent: DevAgent,
    child: Child,
    http: SocketAddr,
    endpoint: String,
    sample: sample::Sample,
    dir: PathBuf,
    writer: std::thread::JoinHandle<()>,
    written: mpsc::Receiver<()>,
}

impl RunningHax {
    /// Starts hax in `dir` with a sample of `ioservices` processes and waits
    /// for `hax ready`.
    async fn start(
        hax: &Path,
        dir: PathBuf,
        ioservices: u64,
        taken: &mut Vec<u16>,
    ) -> Result<RunningHax, String> {
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let agent = DevAgent::builder()
            .start()
            .await
            .map_err(|e| format!("consul agent: {e}"))?;
        let client = agent.client().map_err(|e| e.to_string())?;
        let endpoint = inet(free_port(taken)?);
        let http_port = free_port(taken)?;
        let first_port = free_port(taken)?;
        let sample = sample::load(
            &client,
            &SampleSpec {
                node: None,
                hax_endpoint: endpoint.clone(),
                hax_http_port: http_port,
                ioservices,
                first_port,
            },
        )
        .await
        .map_err(|e| format!("sample: {e}"))?;
        let http = SocketAddr::from(([127, 0, 0, 1], http_port));
        let extra = std::env::var("FIG_HAX_ARGS").unwrap_or_default();
        let mut child = Command::new(hax)
            .arg("--consul-address")
            .arg(agent.http_addr().to_string())
            .arg("--http-bind")
            .arg(http.to_string())
            .args(["--log-format", "json", "--log", "info"])
            .args(extra.split_whitespace())
            .current_dir(&dir)
            .env("M0_TRACE_DIR", &dir)
            .env("LD_LIBRARY_PATH", lib_path())
            .env_remove("HAX_CONFIG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("{}: {e}", hax.display()))?;
        let rx = lines(&mut child);
        let ready = wait_line(&rx, "\"hax ready\"", Duration::from_secs(60));
        let log = dir.join("hax.log");
        let (log_tx, written) = mpsc::channel::<()>();
        let writer = std::thread::spawn(move || {
            let mut text = String::new();
            while let Ok((_, l)) = rx.recv() {
                text.push_str(&l);
                text.push('\n');
            }
            let _ = std::fs::write(&log, text);
            let _ = log_tx.send(());
        });
        let running = RunningHax {
            _agent: agent,
            child,
            http,
            endpoint,
            sample,
            dir,
            writer,
            written,
        };
        match ready {
            Ok(_) => Ok(running),
            Err(e) => {
                let (_, dir) = running.stop();
                Err(with_tail(e, &dir))
            }
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn links(&self) -> Option<u64> {
        metric(self.http, "hax_links")
    }

    /// Waits (up to `limit`) until hax holds `n` links: how long it took.
    fn wait_links(&self, n: u64, limit: Duration) -> Result<Duration, String> {
        let t = Instant::now();
        while self.links() != Some(n) {
            if t.elapsed() > limit {
                return Err(format!("hax holds {:?} links, not {n}", self.links()));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(t.elapsed())
    }

    /// SIGTERM: hax's exit status and how long it took; the directory of its
    /// log, written.
    fn stop(mut self) -> ((Option<i32>, Duration), PathBuf) {
        let pid = self.child.id();
        let _ = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status();
        let t = Instant::now();
        let code = reap(&mut self.child, Duration::from_secs(30)).and_then(|st| st.code());
        let took = t.elapsed();
        let _ = self.written.recv_timeout(Duration::from_secs(5));
        let _ = self.writer.join();
        remove_traces(&self.dir);
        ((code, took), self.dir)
    }
}

/// `e` with the last lines of hax's log in `dir`.
fn with_tail(e: String, dir: &Path) -> String {
    let text = std::fs::read_to_string(dir.join("hax.log")).unwrap_or_default();
    let tail: Vec<&str> = text.lines().rev().take(20).collect();
    let tail: Vec<&str> = tail.into_iter().rev().collect();
    format!("{e}; hax's last lines:\n{}", tail.join("\n"))
}

async fn hax_run(
    hax: &Path,
    m0ham: &Path,
    root: &Path,
    rounds: usize,
    taken: &mut Vec<u16>,
) -> Result<Figures, String> {
    let run = RunningHax::start(hax, root.join("hax"), 1, taken).await?;
    std::thread::sleep(Duration::from_secs(2));
    let f = measure(m0ham, &run.dir, run.pid(), &run.endpoint, rounds, taken).map(|mut f| {
        // The earlier incarnations' links end once Motr's RPCs to their
        // gone peers time out: hax's own and the last one's stay.
        let c0 = cpu(run.pid());
        let t = Instant::now();
        f.ended_settling = run.links().unwrap_or(2).saturating_sub(2);
        let _ = run.wait_links(2, Duration::from_secs(60));
        f.links = run.links().map(|l| (l, t.elapsed()));
        f.cpu_settling = cpu(run.pid()) - c0;
        f.after = usage(run.pid());
        f
    });
    let (stop, dir) = run.stop();
    let mut f = f.map_err(|e| with_tail(e, &dir))?;
    f.stop = Some(stop);
    Ok(f)
}

/// hax with `n` linked processes (the sample's ioservices, each a link of
/// `hax-m0peers`).
#[derive(Default)]
struct LinkFigures {
    n: usize,
    idle: (u64, u64),
    connects: Vec<Duration>,
    all_linked: Duration,
    linked: (u64, u64),
    cpu_linked_per_s: Duration,
    stop: (Option<i32>, Duration),
}

async fn links_run(
    hax: &Path,
    peers: &Path,
    root: &Path,
    n: usize,
    taken: &mut Vec<u16>,
) -> Result<LinkFigures, String> {
    let run = RunningHax::start(hax, root.join("hax-links"), n as u64, taken).await?;
    std::thread::sleep(Duration::from_secs(2));
    let mut f = LinkFigures {
        n,
        idle: usage(run.pid()),
        ..LinkFigures::default()
    };
    let mut peers = Peers::start(&run, peers);
    let result = peers.wait_linked(&run, &mut f);
    // hax stops with every peer still linked, as on a node being stopped.
    let (stop, dir) = run.stop();
    peers.stop();
    result.map_err(|e| with_tail(e, &dir))?;
    f.stop = stop;
    Ok(f)
}

/// Links one `hax-m0peers` process holds: Motr's lockers table (one slot
/// per request handler service, `lib/lockers.c`) overflows past about 60.
const PEERS_PER_PROCESS: usize = 50;

/// The `hax-m0peers` processes linking the sample's ioservices to hax.
struct Peers {
    children: Vec<Child>,
    rx: mpsc::Receiver<(Instant, String)>,
    spawned: Result<(), String>,
    t0: Instant,
}

impl Peers {
    fn start(run: &RunningHax, peers: &Path) -> Peers {
        let t0 = Instant::now();
        let (tx, rx) = mpsc::channel();
        let mut children = Vec::new();
        let mut spawned = Ok(());
        for chunk in run.sample.ioservices.chunks(PEERS_PER_PROCESS) {
            let child = Command::new(peers)
                .arg(&run.endpoint)
                .args(chunk.iter().map(|(fid, ep)| format!("{fid}@{ep}")))
                .current_dir(&run.dir)
                .env("M0_TRACE_DIR", &run.dir)
                .env("LD_LIBRARY_PATH", lib_path())
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn();
            match child {
                Ok(mut c) => {
                    lines_to(&mut c, &tx);
                    children.push(c);
                }
                Err(e) => {
                    spawned = Err(format!("{}: {e}", peers.display()));
                    break;
                }
            }
        }
        Peers {
            children,
            rx,
            spawned,
            t0,
        }
    }

    /// Waits until every peer is linked, then measures hax with them.
    fn wait_linked(&mut self, run: &RunningHax, f: &mut LinkFigures) -> Result<(), String> {
        self.spawned.clone()?;
        let limit = Duration::from_secs(30 + 2 * f.n as u64);
        let mut all = 0;
        while all < self.children.len() {
            let (_, l) = self
                .rx
                .recv_timeout(limit)
                .map_err(|_| format!("hax-m0peers: no line in {limit:?}"))?;
            if let Some(rest) = l.strip_prefix("connected ") {
                let us = rest.rsplit(' ').next().and_then(|v| v.parse().ok());
                f.connects.push(Duration::from_micros(us.unwrap_or(0)));
            } else if l.starts_with("all connected") {
                all += 1;
            } else if l.starts_with("hax-m0peers error:") || l.contains("panic") {
                return Err(l);
            }
        }
        f.all_linked = self.t0.elapsed();
        run.wait_links(f.n as u64 + 1, Duration::from_secs(60))?;
        // A few keepalive rounds with every link probed.
        std::thread::sleep(Duration::from_secs(5));
        let quiet = Duration::from_secs(10);
        let c0 = cpu(run.pid());
        std::thread::sleep(quiet);
        f.cpu_linked_per_s = (cpu(run.pid()) - c0).div_f64(quiet.as_secs_f64());
        f.linked = usage(run.pid());
        Ok(())
    }

    /// End of input: the peers close their links and exit (killed if they
    /// do not within a while: hax, stopped, no longer answers them).
    fn stop(self) {
        let mut children = self.children;
        for c in &mut children {
            drop(c.stdin.take());
        }
        for c in &mut children {
            reap(c, Duration::from_secs(20));
        }
    }
}

fn links_table(f: &LinkFigures) {
    let mib = |(k, t): (u64, u64)| format!("{:.0} MiB / {t}", k as f64 / 1024.0);
    let mut v = f.connects.clone();
    v.sort();
    let pct = |p: f64| {
        let i = ((v.len() as f64 - 1.0) * p).round() as usize;
        v.get(i).copied().unwrap_or_default()
    };
    println!();
    println!(
        "| figure ({} processes linked at once, `hax-m0peers`) | hax |",
        f.n
    );
    println!("|---|---|");
    println!("| RSS / threads before | {} |", mib(f.idle));
    println!(
        "| connect at the peer (its RPC machine, entrypoint, link), median / p99 / max | {} / {} / {} |",
        ms(pct(0.5)),
        ms(pct(0.99)),
        ms(pct(1.0))
    );
    println!("| all {} linked after | {} |", f.n, ms(f.all_linked));
    println!("| RSS / threads with every link | {} |", mib(f.linked));
    println!(
        "| CPU per second with every link (keepalives) | {} |",
        ms(f.cpu_linked_per_s)
    );
    println!(
        "| SIGTERM with every link live: exit status, time | {:?}, {} |",
        f.stop.0,
        ms(f.stop.1)
    );
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn table(rounds: usize, base: &Figures, hax: &Figures) {
    let mib = |k: u64| format!("{:.0} MiB", k as f64 / 1024.0);
    println!("| figure ({rounds} connects, one process fid) | `m0ham -l` | hax |");
    println!("|---|---|---|");
    let row = |name: &str, f: &dyn Fn(&Figures) -> String| {
        println!("| {name} | {} | {} |", f(base), f(hax));
    };
    row(
        "entrypoint latency at the peer, median",
        &|f| ms(f.pct(0.5)),
    );
    row("entrypoint latency, p99", &|f| ms(f.pct(0.99)));
    row("entrypoint latency, max", &|f| ms(f.pct(1.0)));
    row("listener CPU per connect", &|f| ms(f.cpu_per_connect));
    row("listener CPU per second, idle", &|f| ms(f.cpu_idle_per_s));
    row("RSS / threads idle", &|f| {
        format!("{} / {}", mib(f.idle.0), f.idle.1)
    });
    row("RSS / threads after", &|f| {
        format!("{} / {}", mib(f.after.0), f.after.1)
    });
    row("links after the last connect (settled after)", &|f| {
        f.links
            .map_or("-".into(), |(l, t)| format!("{l} ({})", ms(t)))
    });
    row("listener CPU until the links settled (links ended)", &|f| {
        format!("{} ({})", ms(f.cpu_settling), f.ended_settling)
    });
    row("SIGTERM: exit status, time", &|f| {
        f.stop
            .map_or("-".into(), |(c, t)| format!("{c:?}, {}", ms(t)))
    });
}

fn main() -> ExitCode {
    let Some(hax) = std::env::var_os("FIG_HAX").and_then(|p| std::fs::canonicalize(p).ok()) else {
        eprintln!(
            "hax-motr-figures: FIG_HAX must name a hax built with --features motr (and exist)"
        );
        return ExitCode::from(2);
    };
    let prefix = std::env::var("MOTR_PREFIX").unwrap_or_else(|_| "/opt/motr".into());
    let m0ham = Path::new(&prefix).join("sbin/m0ham");
    if !m0ham.exists() {
        eprintln!(
            "hax-motr-figures: no {} (scripts/install-motr.sh)",
            m0ham.display()
        );
        return ExitCode::from(2);
    }
    let rounds = param("FIG_ROUNDS", 30);
    let root = match tempfile::Builder::new()
        .prefix("hax-motr-figures.")
        .tempdir()
    {
        Ok(d) => d,
        Err(e) => {
            eprintln!("hax-motr-figures: scratch directory: {e}");
            return ExitCode::FAILURE;
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("hax-motr-figures: runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut taken = Vec::new();
    let base = listener_baseline(&m0ham, root.path(), rounds, &mut taken);
    let ours = rt.block_on(hax_run(&hax, &m0ham, root.path(), rounds, &mut taken));
    // Canonical: the peers run in a directory of their own.
    let peers =
        std::env::var_os("FIG_M0PEERS").map(|p| std::fs::canonicalize(&p).unwrap_or(p.into()));
    let links = peers.map(|peers| {
        let n = param("FIG_LINKS", 100);
        rt.block_on(links_run(&hax, &peers, root.path(), n, &mut taken))
    });
    if std::env::var_os("FIG_KEEP").is_some() {
        eprintln!("hax-motr-figures: logs kept in {}", root.keep().display());
    }
    match (base, ours) {
        (Ok(b), Ok(h)) => {
            table(rounds, &b, &h);
            match links {
                Some(Ok(l)) => links_table(&l),
                Some(Err(e)) => {
                    eprintln!("hax-motr-figures: links: {e}");
                    return ExitCode::FAILURE;
                }
                None => println!("\n(FIG_M0PEERS unset: no run with many links)"),
            }
            ExitCode::SUCCESS
        }
        (b, h) => {
            for e in [b.err(), h.err()].into_iter().flatten() {
                eprintln!("hax-motr-figures: {e}");
            }
            ExitCode::FAILURE
        }
    }
}
