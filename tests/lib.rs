//! Shared harness of the end-to-end tests: a real Consul agent whose watches
//! POST to hax, the sample cluster loaded into it, the real `hax` binary as a
//! child process, and simulated `m0d` peers (`hax-sim`).
//!
//! Every test builds its own [`Env`]: its own agent, ports, `hax` and
//! working directory, so the tests of a file run in parallel (the files,
//! `tests/*.rs`, run one after another). Dropping an `Env` (also when a test
//! panics) kills `hax` and the agent; on a panic the tail of hax's log and of
//! the agent's log is printed and the working directory is kept.
//!
//! # The `hax` binary
//!
//! `$HAX_BIN` when set (it must exist). Otherwise `target/<profile>/hax`
//! next to the test executable. `cargo test --workspace` builds it before
//! running tests; `cargo test -p hax-e2e` alone does not, so the harness
//! runs `cargo build -p hax-bin --bins` (same profile and target directory)
//! once per test process before the first start: a no-op when the binary is
//! up to date, and it keeps a stale binary from being tested. If cargo is not
//! available the existing binary is used; if there is none, the test fails
//! saying so. (Cargo does not hold its build lock while tests run, so this
//! nested build does not wait on the outer `cargo test`.) A change to the C
//! emulator alone may leave `hax` unlinked again (cargo sees hax-sys's
//! metadata unchanged): touch a hax-bin source file then.
//!
//! # Keepalive probes
//!
//! hax runs with its keepalive probes off (`HAX_MOTR_KEEPALIVE_INTERVAL_MS=0`)
//! unless a test turns them on with `--motr-keepalive-interval-ms` in
//! [`Options::hax_args`]: they write Consul and send messages on their own
//! schedule, which tests comparing the KV store or message counts must not
//! see. For the same reason, and because tests read the whole broadcast
//! queue back, the RC leader's BQ trimming is off
//! (`HAX_LIMITS_BQ_TRIM_INTERVAL_MS=0`) unless [`Options::hax_env`] turns it
//! on.
//!
//! # Waiting
//!
//! Nothing sleeps and hopes: [`wait_for`] polls a condition until a
//! deadline and fails naming what it waited for.

pub mod cluster;

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use hax_consul::catalog::CheckStatus;
use hax_consul::kv::KvPair;
use hax_consul::queue::QueuePublisher;
use hax_consul::schema::{
    BroadcastMessage, ConfKey, ConfValue, FidText, HaxKv, ProcessState, ProcessStatus, QueueKind,
    QueueMessage,
};
use hax_consul::ConsulClient;
use hax_core::{Fid, FidType, HaMsgData, HaNote, HaState, NvecKind, ProcessEventKind, ServiceType};
use hax_sim::{Received, SimCluster, SimConfig, SimControl, SimProcess};
use hax_testkit::dev_agent::{AgentMode, DevAgent};
use hax_testkit::sample::{self, Sample, SampleSpec};

/// The usual deadline of one awaited condition.
pub const T: Duration = Duration::from_secs(15);

/// How long `hax` may take to become ready.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------
// The binary

static HAX_BIN: OnceLock<Result<PathBuf, String>> = OnceLock::new();

/// The `hax` binary to test (see the module documentation).
pub fn hax_binary() -> PathBuf {
    match HAX_BIN.get_or_init(locate_hax) {
        Ok(p) => p.clone(),
        Err(e) => panic!("{e}"),
    }
}

fn locate_hax() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("HAX_BIN") {
        let p = PathBuf::from(p);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(format!("HAX_BIN={} does not exist", p.display()))
        };
    }
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    // target/<profile>/deps/<test>-<hash>
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .ok_or_else(|| format!("unexpected test executable path {}", exe.display()))?;
    let bin = profile_dir.join("hax");
    build_hax(profile_dir);
    if bin.is_file() {
        Ok(bin)
    } else {
        Err(format!(
            "the hax binary is missing at {} and could not be built: run \
             `cargo build -p hax-bin` (or `cargo test --workspace`), or set HAX_BIN",
            bin.display()
        ))
    }
}

/// Brings `<profile_dir>/hax` up to date with cargo, if cargo is there.
fn build_hax(profile_dir: &Path) {
    let Some(name) = profile_dir.file_name().and_then(|n| n.to_str()) else {
        return;
    };
    let profile = if name == "debug" { "dev" } else { name };
    let Some(target_dir) = profile_dir.parent() else {
        return;
    };
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = Command::new(&cargo)
        .args(["build", "-p", "hax-bin", "--bins", "--profile", profile])
        .env("CARGO_TARGET_DIR", target_dir)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdin(Stdio::null())
        .output();
    match out {
        Ok(o) if o.status.success() => {}
        Ok(o) => eprintln!(
            "hax-e2e: `cargo build -p hax-bin` failed ({}); using the existing binary if any:\n{}",
            o.status,
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(e) => eprintln!("hax-e2e: cannot run cargo ({e}); using the existing binary if any"),
    }
}

// ---------------------------------------------------------------------------
// Small helpers

/// Raises this test process's soft descriptor limit to the hard one, for
/// tests that open thousands of sockets; panics when even that is below `need`.
pub fn raise_own_fd_limit(need: u64) {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit");
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard).expect("setrlimit");
    }
    assert!(
        hard >= need,
        "this test needs {need} descriptors, the hard limit is {hard}"
    );
}

/// A TCP port free on 127.0.0.1 right now, below the kernel's ephemeral
/// range when there is room: hax is restarted on the same ports, and a port
/// of the ephemeral range may meanwhile become the local end of some
/// connection, or be handed to another test asking for port 0.
pub fn free_port() -> u16 {
    hax_testkit::ports::free_port().expect("a free port")
}

/// Polls `f` every 25 ms until it gives a value or `timeout` passes; then
/// fails naming `what`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// The text form of a fid, as Consul keys hold it.
pub fn ft(f: Fid) -> FidText {
    FidText::new(f.container, f.key)
}

/// The process fid of ioservice `i` of the sample.
pub fn ios_fid(i: usize) -> Fid {
    Fid::typed(FidType::Process, 1, sample::fids::IOS + i as u64)
}

/// The ios service fid of ioservice `i` of the sample.
pub fn ios_service(i: usize) -> Fid {
    Fid::typed(FidType::Service, 1, 100 + i as u64)
}

/// The device path of the disk of ioservice `i` of the sample.
pub fn ios_device(i: usize) -> String {
    format!("/dev/sd{}", (b'b' + i as u8) as char)
}

/// The notes of every NVEC SET in `received`, one entry per message.
pub fn nvec_sets(received: &[Received]) -> Vec<Vec<HaNote>> {
    received
        .iter()
        .filter_map(|r| match &r.msg.data {
            HaMsgData::Nvec(n) if n.kind == NvecKind::Set && n.id_of_get == 0 => {
                Some(n.notes.clone())
            }
            _ => None,
        })
        .collect()
}

/// How many NVEC SETs `p` received with the note `(fid, state)`.
pub fn sets_with(p: &SimProcess, fid: Fid, state: HaState) -> usize {
    nvec_sets(&p.received())
        .iter()
        .filter(|notes| notes.iter().any(|n| n.fid == fid && n.state == state))
        .count()
}

/// Fails if any of `peers` saw hax break the protocol.
pub fn assert_no_violations(peers: &[SimProcess]) {
    for p in peers {
        assert!(
            p.violations().is_empty(),
            "{} saw protocol violations: {:?}",
            p.fid(),
            p.violations()
        );
    }
}

/// The state `processes/<fid>` records for a process event.
pub fn recorded_as(e: ProcessEventKind) -> ProcessState {
    match e {
        ProcessEventKind::Starting => ProcessState::Starting,
        ProcessEventKind::Started => ProcessState::Started,
        ProcessEventKind::Stopping => ProcessState::Stopping,
        ProcessEventKind::Stopped => ProcessState::Stopped,
        ProcessEventKind::DtmRecovered => ProcessState::DtmRecovered,
    }
}

/// The process events [`event_storm`] sends, in turn: consecutive events of
/// a peer always differ.
pub const STORM_CYCLE: [ProcessEventKind; 3] = [
    ProcessEventKind::Starting,
    ProcessEventKind::Started,
    ProcessEventKind::DtmRecovered,
];

/// Every peer sends the next event of [`STORM_CYCLE`] every `every`,
/// without waiting for confirmations, until `stop`; the task gives what each
/// sent.
pub fn event_storm(
    peers: &Arc<Vec<SimProcess>>,
    stop: &Arc<AtomicBool>,
    every: Duration,
) -> tokio::task::JoinHandle<Vec<Vec<ProcessEventKind>>> {
    let (peers, stop) = (Arc::clone(peers), Arc::clone(stop));
    tokio::spawn(async move {
        let mut sent = vec![Vec::new(); peers.len()];
        let mut i = 0;
        while !stop.load(Ordering::Relaxed) {
            let event = STORM_CYCLE[i % STORM_CYCLE.len()];
            for (k, p) in peers.iter().enumerate() {
                p.send_process_event(event).expect("sent");
                sent[k].push(event);
            }
            i += 1;
            tokio::time::sleep(every).await;
        }
        sent
    })
}

/// A BQ `M0_HA_MSG_NVEC` entry: the disk of ioservice `i` of `node` is
/// `state`.
pub fn device_entry(node: &str, i: usize, state: &str) -> QueueMessage {
    QueueMessage::new(
        "2026-01-01 00:00:00.000000",
        "M0_HA_MSG_NVEC",
        serde_json::json!({
            "node": node,
            "device": ios_device(i),
            "state": state,
        }),
    )
}

// ---------------------------------------------------------------------------
// Metrics

/// A `/metrics` answer: value by `name{labels}`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Metrics(pub BTreeMap<String, f64>);

impl Metrics {
    /// Parses the Prometheus text format (and OpenMetrics text, whose
    /// `# EOF` is a comment here).
    pub fn parse(text: &str) -> Metrics {
        Metrics(
            text.lines()
                .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
                .filter_map(|l| {
                    let (k, v) = l.rsplit_once(' ')?;
                    Some((k.to_owned(), v.parse().ok()?))
                })
                .collect(),
        )
    }

    /// The value of `key` (`name` or `name{labels}`); fails if absent.
    pub fn get(&self, key: &str) -> f64 {
        *self
            .0
            .get(key)
            .unwrap_or_else(|| panic!("metric {key} missing from /metrics"))
    }

    /// [`Metrics::get`] as an integer.
    pub fn n(&self, key: &str) -> u64 {
        self.get(key) as u64
    }

    /// Entrypoint requests answered, whatever the outcome.
    pub fn entrypoint_answers(&self) -> u64 {
        ["accepted", "refused", "empty", "failed"]
            .iter()
            .map(|o| self.n(&format!("hax_entrypoint_requests_total{{outcome=\"{o}\"}}")))
            .sum()
    }

    /// Sent messages with an outcome (delivered or not).
    pub fn outcomes(&self) -> u64 {
        self.n("hax_sent_outcomes_total{outcome=\"delivered\"}")
            + self.n("hax_sent_outcomes_total{outcome=\"not_delivered\"}")
    }

    /// Messages sent, every type.
    pub fn sent(&self) -> u64 {
        self.0
            .iter()
            .filter(|(k, _)| k.starts_with("hax_messages_total{direction=\"out\""))
            .map(|(_, v)| *v as u64)
            .sum()
    }

    /// `hax_sent_outcomes_total{outcome="not_delivered"}`.
    pub fn not_delivered(&self) -> u64 {
        self.n("hax_sent_outcomes_total{outcome=\"not_delivered\"}")
    }
}

// ---------------------------------------------------------------------------
// The environment

/// What a settled cluster looked like, for [`Env::assert_unchanged_since`].
#[derive(Debug)]
pub struct Settled {
    kv: Vec<KvPair>,
    metrics: Metrics,
    received: usize,
}

/// How an [`Env`] is made.
#[derive(Debug, Clone)]
pub struct Options {
    /// ioservices in the sample.
    pub ioservices: u64,
    /// Agent mode (`Persistent` keeps data across agent restarts).
    pub mode: AgentMode,
    /// hax's log filter.
    pub log_filter: String,
    /// Put a [`FaultProxy`] between hax and the agent ([`Env::proxy`]).
    pub proxy: bool,
    /// Extra command-line arguments of hax.
    pub hax_args: Vec<String>,
    /// Run the agent with ACLs (default deny) and this master token; hax
    /// reads it from a token file (`--consul-token-file`).
    pub acl_token: Option<String>,
    /// hax gets [`Options::acl_token`] from `CONSUL_HTTP_TOKEN`, as hare
    /// gives it, instead of a token file.
    pub acl_token_in_env: bool,
    /// Environment of hax, over the harness's defaults.
    pub hax_env: Vec<(String, String)>,
    /// Run hax under these descriptor limits, soft and hard (`ulimit -n`).
    pub nofile: Option<(u64, u64)>,
    /// The agent's node name (default `hax-test`).
    pub node_name: Option<String>,
    /// The agent has hare's watches pointing at hax (default); without,
    /// hax learns only from its own reads of Consul.
    pub watches: bool,
    /// hax is not told where to listen (`--http-bind`): it takes the hax
    /// catalog service's node and `http_port` meta, as the original. Needs
    /// a node name that resolves to loopback ([`Options::node_name`]).
    pub bind_from_catalog: bool,
    /// Load the sample without its RC leader: `leader` deleted, its session
    /// destroyed, as in a cluster without hare's election (hax then waits
    /// for a leader unless it elects one, `HAX_LEADER_ELECT`).
    pub no_rc_leader: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            ioservices: 3,
            mode: AgentMode::Dev,
            log_filter: "info".into(),
            proxy: false,
            hax_args: Vec::new(),
            acl_token: None,
            acl_token_in_env: false,
            hax_env: Vec::new(),
            nofile: None,
            node_name: None,
            watches: true,
            bind_from_catalog: false,
            no_rc_leader: false,
        }
    }
}

struct HaxChild {
    child: Child,
}

/// One agent, the sample, one `hax` (restartable), peers made on demand.
pub struct Env {
    /// The Consul agent.
    pub agent: DevAgent,
    /// A client of it.
    pub client: ConsulClient,
    /// Typed KV access.
    pub kv: HaxKv,
    /// What the sample loaded.
    pub sample: Sample,
    /// hax's HTTP address.
    pub http: SocketAddr,
    /// hax's Motr endpoint.
    pub hax_endpoint: String,
    /// The proxy hax talks to Consul through, with [`Options::proxy`].
    pub proxy: Option<FaultProxy>,
    opts: Options,
    dir: Option<tempfile::TempDir>,
    hax: Option<HaxChild>,
    logs: Vec<PathBuf>,
    web: reqwest::Client,
}

impl std::fmt::Debug for Env {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Env")
            .field("http", &self.http)
            .field("hax_endpoint", &self.hax_endpoint)
            .field("runs", &self.logs.len())
            .finish_non_exhaustive()
    }
}

fn watches(http: SocketAddr) -> serde_json::Value {
    let handler = |path: &str| {
        serde_json::json!({
            "path": format!("http://{http}{path}"),
            "method": "POST",
            "timeout": "10s",
        })
    };
    serde_json::json!({
        // Everything here comes from 127.0.0.1: the tests, hax, and the
        // runs of hax killed before, whose blocking queries the agent
        // counts until they return (the default allows 200 per address).
        "limits": {"http_max_conns_per_client": 4096},
        "watches": [
            {"type": "service", "service": "ios", "handler_type": "http",
             "http_handler_config": handler("/")},
            {"type": "keyprefix", "prefix": "bq/", "handler_type": "http",
             "http_handler_config": handler("/watcher/bq")},
        ]
    })
}

impl Env {
    /// An agent with watches pointing at hax, the sample loaded, and hax
    /// started and ready.
    pub async fn start(opts: Options) -> Env {
        let bin = hax_binary();
        assert!(bin.is_file(), "{} missing", bin.display());
        let http = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let hax_endpoint = format!("inet:tcp:127.0.0.1@{}", free_port());
        let mut builder = DevAgent::builder().mode(opts.mode);
        if opts.watches {
            builder = builder.extra_config(watches(http));
        }
        if let Some(t) = &opts.acl_token {
            builder = builder.acl_master_token(t.clone());
        }
        if let Some(n) = &opts.node_name {
            builder = builder.node_name(n);
        }
        let agent = builder
            .start()
            .await
            .expect("consul agent (scripts/install-consul.sh installs it)");
        let client = agent.client().expect("consul client");
        let spec = SampleSpec {
            node: None,
            hax_endpoint: hax_endpoint.clone(),
            hax_http_port: http.port(),
            ioservices: opts.ioservices,
            first_port: free_port(),
        };
        let sample = sample::load(&client, &spec).await.expect("sample loaded");
        if opts.no_rc_leader {
            // Released before the session goes: an invalidation would hold
            // `leader` back for the session's lock-delay.
            client
                .kv_release("leader", sample.node.as_bytes(), &sample.session)
                .await
                .expect("leader released");
            client.kv_delete("leader").await.expect("leader deleted");
            client
                .session_destroy(&sample.session)
                .await
                .expect("leader session destroyed");
        }
        // The sample's TTL checks are registered passing; an update makes
        // the agent persist that state, so that an agent restarted on its
        // data (AgentMode::Persistent) brings them back passing rather than
        // critical.
        let ids = [sample::fids::HAX, sample::fids::CONFD]
            .into_iter()
            .chain((0..opts.ioservices).map(|i| sample::fids::IOS + i));
        for id in ids {
            client
                .agent_check_update(&format!("service:{id}"), CheckStatus::Passing, "loaded")
                .await
                .expect("check updated");
        }
        let dir = tempfile::Builder::new()
            .prefix("hax-e2e.")
            .tempdir()
            .expect("work dir");
        let proxy = if opts.proxy {
            Some(FaultProxy::start(agent.http_addr()).await)
        } else {
            None
        };
        let mut env = Env {
            proxy,
            kv: HaxKv::new(client.clone()),
            agent,
            client,
            sample,
            http,
            hax_endpoint,
            opts,
            dir: Some(dir),
            hax: None,
            logs: Vec::new(),
            // A fresh connection per request: one hax closed (after a 4xx,
            // or hax restarted) is never reused.
            web: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .pool_max_idle_per_host(0)
                .build()
                .expect("http client"),
        };
        if let Some(t) = &env.opts.acl_token {
            std::fs::write(env.consul_token_file(), format!("{t}\n")).expect("token file");
        }
        env.start_hax().await;
        env
    }

    /// The Consul token file hax reads with [`Options::acl_token`].
    pub fn consul_token_file(&self) -> PathBuf {
        self.dir().join("consul-token")
    }

    fn dir(&self) -> &Path {
        self.dir.as_ref().map(|d| d.path()).expect("work dir")
    }

    // ----------------------------------------------------------- hax itself

    /// Starts hax (again) and waits until it is ready: `GET /healthz`
    /// answers and the log says `hax ready`.
    pub async fn start_hax(&mut self) {
        assert!(self.hax.is_none(), "hax is already running");
        let log = self.dir().join(format!("hax.{}.log", self.logs.len() + 1));
        let file = std::fs::File::create(&log).expect("log file");
        let mut cmd = match self.opts.nofile {
            // The shell execs hax: the pid stays the one spawned.
            Some((soft, hard)) => {
                let mut c = Command::new("/bin/sh");
                c.arg("-c")
                    .arg(format!(
                        "ulimit -S -n {soft} && ulimit -H -n {hard} && exec \"$0\" \"$@\""
                    ))
                    .arg(hax_binary());
                c
            }
            None => Command::new(hax_binary()),
        };
        // hax reads hare's variables too (`hax_bin::hare_env`).
        for (k, _) in std::env::vars_os() {
            let name = k.to_string_lossy();
            if ["HAX_", "HARE_HAX_", "CONSUL_HTTP_"]
                .iter()
                .any(|p| name.starts_with(p))
                || k == "NOTIFY_SOCKET"
            {
                cmd.env_remove(k);
            }
        }
        cmd.env("HAX_MOTR_KEEPALIVE_INTERVAL_MS", "0");
        cmd.env("HAX_LIMITS_BQ_TRIM_INTERVAL_MS", "0");
        cmd.envs(self.opts.hax_env.iter().map(|(k, v)| (k, v)));
        let consul = self
            .proxy
            .as_ref()
            .map_or(self.agent.http_addr(), FaultProxy::addr);
        cmd.arg("--consul-address")
            .arg(consul.to_string())
            .args(
                (!self.opts.bind_from_catalog)
                    .then(|| ["--http-bind".to_owned(), self.http.to_string()])
                    .into_iter()
                    .flatten(),
            )
            .args(["--log-format", "json", "--log", &self.opts.log_filter])
            .args(&self.opts.hax_args)
            .args(
                self.opts
                    .acl_token
                    .as_ref()
                    .filter(|_| !self.opts.acl_token_in_env)
                    .map(|_| vec!["--consul-token-file".into(), self.consul_token_file()])
                    .unwrap_or_default(),
            )
            .envs(
                self.opts
                    .acl_token
                    .as_ref()
                    .filter(|_| self.opts.acl_token_in_env)
                    .map(|t| ("CONSUL_HTTP_TOKEN", t)),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file);
        let child = cmd.spawn().expect("hax started");
        self.hax = Some(HaxChild { child });
        self.logs.push(log);
        let run = self.logs.len();
        let started = Instant::now();
        let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = self.try_wait() {
                panic!(
                    "hax exited with {status} before it was ready; its log:\n{}",
                    self.log_text(run)
                );
            }
            if self.log_has(run, "hax ready") && self.healthz().await {
                break;
            }
            if tokio::time::Instant::now() >= deadline {
                panic!(
                    "hax not ready after {READY_TIMEOUT:?}; its log:\n{}",
                    self.log_text(run)
                );
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        eprintln!("hax run {run} ready in {:?}", started.elapsed());
    }

    /// Whether `GET /healthz` answers 200.
    pub async fn healthz(&self) -> bool {
        matches!(self.http_get("/healthz").await, Ok((200, _)))
    }

    /// hax's pid (it must be running).
    pub fn hax_pid(&self) -> u32 {
        self.hax.as_ref().expect("hax is running").child.id()
    }

    /// Whether hax has exited; reaps it if so.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        let h = self.hax.as_mut()?;
        match h.child.try_wait() {
            Ok(Some(s)) => {
                self.hax = None;
                Some(s)
            }
            _ => None,
        }
    }

    fn signal(&self, sig: nix::sys::signal::Signal) {
        let pid = i32::try_from(self.hax_pid()).expect("pid");
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig).expect("signal sent");
    }

    /// Sends SIGTERM to hax (it must be running); see [`Env::wait_exit`].
    pub fn sigterm(&self) {
        self.signal(nix::sys::signal::Signal::SIGTERM);
    }

    /// Kills hax with SIGKILL and reaps it.
    pub fn sigkill(&mut self) {
        if let Some(mut h) = self.hax.take() {
            let _ = h.child.kill();
            let _ = h.child.wait();
        }
    }

    /// Waits until hax exits, at most `timeout`; its exit status.
    pub async fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(s) = self.try_wait() {
                return s;
            }
            if tokio::time::Instant::now() >= deadline {
                panic!(
                    "hax still running {timeout:?} later; its log:\n{}",
                    self.log_tail(self.runs(), 80)
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// hax's resident set size, in KiB (`VmRSS` of `/proc/<pid>/status`).
    pub fn rss_kib(&self) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.hax_pid())).expect("status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS: line")
    }

    /// hax's peak resident set size so far, in KiB (`VmHWM` of
    /// `/proc/<pid>/status`): unlike sampling `VmRSS`, it misses no spike.
    pub fn peak_rss_kib(&self) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.hax_pid())).expect("status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmHWM: line")
    }

    /// The working directory of the test (logs, token files...).
    pub fn work_dir(&self) -> &Path {
        self.dir()
    }

    /// Open file descriptors of hax.
    pub fn fd_count(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.hax_pid()))
            .expect("/proc/<pid>/fd")
            .count()
    }

    /// Threads of hax.
    pub fn thread_count(&self) -> usize {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.hax_pid())).expect("status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("Threads:"))
            .and_then(|v| v.trim().parse().ok())
            .expect("Threads: line")
    }

    // ----------------------------------------------------------- logs

    /// How many times hax was started.
    pub fn runs(&self) -> usize {
        self.logs.len()
    }

    /// The log of run `run` (1-based).
    pub fn log_text(&self, run: usize) -> String {
        std::fs::read_to_string(&self.logs[run - 1]).unwrap_or_default()
    }

    /// The last `n` lines of the log of run `run`.
    pub fn log_tail(&self, run: usize, n: usize) -> String {
        let text = self.log_text(run);
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// The JSON log lines of run `run` (lines that do not parse are left out).
    pub fn log_lines(&self, run: usize) -> Vec<serde_json::Value> {
        self.log_text(run)
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// The log lines of run `run` whose message is `message`.
    pub fn log_messages(&self, run: usize, message: &str) -> Vec<serde_json::Value> {
        self.log_lines(run)
            .into_iter()
            .filter(|l| l["message"] == message)
            .collect()
    }

    /// Index of the first line of run `run` (among [`Env::log_lines`])
    /// satisfying `pred`.
    pub fn log_position(
        &self,
        run: usize,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> Option<usize> {
        self.log_lines(run).iter().position(pred)
    }

    /// Whether a line of run `run` has message `message`.
    pub fn log_has(&self, run: usize, message: &str) -> bool {
        !self.log_messages(run, message).is_empty()
    }

    /// Fails if any run logged a contract violation (the emulator logs each
    /// one at error level) or a panic.
    pub fn assert_no_contract_violations(&self) {
        for run in 1..=self.runs() {
            for line in self.log_text(run).lines() {
                let l = line.to_ascii_lowercase();
                assert!(
                    !l.contains("contract violation") && !l.contains("panicked"),
                    "run {run} of hax logged: {line}"
                );
            }
        }
    }

    // ----------------------------------------------------------- HTTP

    /// `GET path` on hax's HTTP server: status and body.
    pub async fn http_get(&self, path: &str) -> Result<(u16, String), reqwest::Error> {
        let r = self
            .web
            .get(format!("http://{}{path}", self.http))
            .send()
            .await?;
        let status = r.status().as_u16();
        Ok((status, r.text().await?))
    }

    /// `POST path` with `body` (JSON content type): status and body.
    pub async fn http_post(&self, path: &str, body: &str) -> Result<(u16, String), reqwest::Error> {
        let r = self
            .web
            .post(format!("http://{}{path}", self.http))
            .header("content-type", "application/json")
            .body(body.to_owned())
            .send()
            .await?;
        let status = r.status().as_u16();
        Ok((status, r.text().await?))
    }

    /// hax's `/metrics`.
    pub async fn metrics(&self) -> Metrics {
        let (status, body) = self.http_get("/metrics").await.expect("GET /metrics");
        assert_eq!(status, 200, "GET /metrics: {body}");
        Metrics::parse(&body)
    }

    /// Waits until `/metrics` satisfies `pred`; returns that answer.
    pub async fn wait_metrics(&self, what: &str, pred: impl Fn(&Metrics) -> bool) -> Metrics {
        wait_for(what, T, || async {
            let m = self.metrics().await;
            pred(&m).then_some(m)
        })
        .await
    }

    // ----------------------------------------------------------- peers

    /// The configuration of a peer playing ioservice `i` of the sample.
    pub fn peer_config(&self, i: usize) -> SimConfig {
        let mut c = SimConfig::new(self.hax_endpoint.clone(), ios_fid(i));
        c.endpoint = self.sample.ioservices[i].1.clone();
        c.services = vec![(ios_service(i), ServiceType::Ios)];
        c.timeout = T;
        c
    }

    /// Peers playing ioservices `0..n`, connected at once.
    pub async fn connect_peers(&self, n: usize) -> Vec<SimProcess> {
        let cfgs = (0..n).map(|i| self.peer_config(i)).collect();
        SimCluster::connect(cfgs)
            .await
            .expect("peers connected")
            .into_processes()
    }

    /// Connects `n` simulated processes, each of which then reports itself
    /// started and has that confirmed.
    pub async fn connect_started(&self, n: usize) -> Vec<SimProcess> {
        let peers = self.connect_peers(n).await;
        for p in &peers {
            p.send_process_event(ProcessEventKind::Started).unwrap();
            p.wait_all_confirmed(T).await.unwrap();
        }
        peers
    }

    // ----------------------------------------------------------- Consul

    /// Sets the TTL check of the service instance with id `service_id`.
    pub async fn set_check(&self, service_id: u64, status: CheckStatus) {
        self.client
            .agent_check_update(&format!("service:{service_id}"), status, "set by a test")
            .await
            .expect("check updated");
    }

    /// `processes/<fid>`.
    pub async fn process_status(&self, fid: Fid) -> Option<ProcessStatus> {
        self.kv
            .process_status(ft(fid))
            .await
            .expect("processes/<fid>")
    }

    /// Every `bq/<n>` entry, by epoch.
    pub async fn bq(&self) -> Vec<(u64, QueueMessage)> {
        cluster::bq(&self.client).await
    }

    /// The `PROCESS-STATE-UPDATE` entries of the BQ about `fid`, in order.
    pub async fn bq_process_updates(&self, fid: Fid) -> Vec<ProcessState> {
        self.bq()
            .await
            .into_iter()
            .filter_map(|(n, m)| match m.broadcast(&format!("bq/{n}")).ok()? {
                BroadcastMessage::ProcessStateUpdate(u) if u.fid == ft(fid) => Some(u.state),
                _ => None,
            })
            .collect()
    }

    /// Checks that each peer's last sent event is its recorded state and that
    /// the BQ holds all its events in order, a write whose answer was lost
    /// being allowed to land twice (a repeat in a row). Returns how many
    /// repeats there were.
    pub async fn assert_events_recorded(
        &self,
        peers: &[SimProcess],
        sent: &[Vec<ProcessEventKind>],
    ) -> usize {
        let mut repeats = 0;
        for (p, sent) in peers.iter().zip(sent) {
            let last = recorded_as(*sent.last().expect("the peer sent events"));
            assert_eq!(
                self.process_status(p.fid()).await.map(|s| s.state),
                Some(last),
                "{}",
                p.fid()
            );
            let mut bq = self.bq_process_updates(p.fid()).await;
            let n = bq.len();
            bq.dedup();
            repeats += n - bq.len();
            let want: Vec<ProcessState> = sent.iter().map(|e| recorded_as(*e)).collect();
            assert_eq!(bq, want, "{}: BQ entries", p.fid());
        }
        repeats
    }

    /// Starts `peer`'s process, waits until all that caused has settled and
    /// notes what input hax must refuse may not change.
    pub async fn settle_started(&self, peer: &SimProcess) -> Settled {
        peer.send_process_event(ProcessEventKind::Started).unwrap();
        peer.wait_all_confirmed(T).await.unwrap();
        self.wait_bq_consumed().await;
        let kv = self.client.kv_list("").await.unwrap().value;
        let metrics = self.wait_idle().await;
        Settled {
            kv,
            metrics,
            received: peer.received_count(),
        }
    }

    /// Checks that hax is healthy and nothing changed since `before`: the
    /// same KV (indexes included), no broadcast, nothing more sent to `peer`.
    pub async fn assert_unchanged_since(&self, before: &Settled, peer: &SimProcess) {
        assert!(self.healthz().await);
        let m = self.metrics().await;
        assert_eq!(
            m.n("hax_broadcasts_total"),
            before.metrics.n("hax_broadcasts_total")
        );
        let kv = self.client.kv_list("").await.unwrap().value;
        assert_eq!(before.kv, kv);
        assert_eq!(peer.received_count(), before.received);
    }

    /// The BQ epoch counter (the last published entry).
    pub async fn bq_epoch(&self) -> u64 {
        self.kv
            .queue_epoch(QueueKind::Broadcast)
            .await
            .expect("epoch")
            .unwrap_or(0)
    }

    /// This node's BQ offset (`bq-delivered/<node>`), 0 when absent.
    pub async fn bq_offset(&self) -> u64 {
        self.kv
            .queue_offset(QueueKind::Broadcast, &self.sample.node)
            .await
            .expect("offset")
            .unwrap_or(0)
    }

    /// Waits until this node's BQ offset reached the last published entry.
    pub async fn wait_bq_consumed(&self) -> u64 {
        wait_for("the BQ offset to reach the last entry", T, || async {
            let (epoch, offset) = (self.bq_epoch().await, self.bq_offset().await);
            (offset == epoch).then_some(offset)
        })
        .await
    }

    /// Publishes a BQ message; its epoch.
    pub async fn publish_bq(&self, msg: &QueueMessage) -> u64 {
        QueuePublisher::new(self.client.clone(), QueueKind::Broadcast)
            .publish(msg)
            .await
            .expect("BQ publish")
    }

    /// The `m0conf` key of the sdev of ioservice `i`.
    pub async fn sdev_key(&self, i: usize) -> ConfKey {
        let sdev = ft(self.sample.sdevs[i]);
        let tree = self.kv.conf_tree().await.expect("m0conf");
        tree.entries
            .keys()
            .find(|k| matches!(k, ConfKey::Sdev { sdev: s, .. } if *s == sdev))
            .cloned()
            .expect("sdev key")
    }

    /// The `m0conf` key of process `fid` (fid branch).
    pub async fn process_conf_key(&self, fid: Fid) -> ConfKey {
        let tree = self.kv.conf_tree().await.expect("m0conf");
        tree.entries
            .keys()
            .find(|k| matches!(k, ConfKey::Process { process, .. } if *process == ft(fid)))
            .cloned()
            .expect("process key")
    }

    /// The `state` of a configuration entry.
    pub async fn conf_state(&self, key: &ConfKey) -> Option<String> {
        let e = self.kv.conf_entry(key).await.expect("m0conf entry")?;
        match e.value {
            ConfValue::Object(o) => o.state,
            _ => None,
        }
    }

    /// Waits until there are no queued events or Consul writes in hax.
    pub async fn wait_idle(&self) -> Metrics {
        self.wait_metrics("hax's queues to drain", |m| {
            m.n("hax_event_queue_depth") == 0 && m.n("hax_consul_write_queue_depth") == 0
        })
        .await
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        self.sigkill();
        if std::thread::panicking() {
            if let Some(run) = (self.runs() > 0).then(|| self.runs()) {
                eprintln!(
                    "---- last lines of hax's log (run {run}):\n{}",
                    self.log_tail(run, 60)
                );
            }
            eprintln!(
                "---- last lines of the agent's log:\n{}",
                self.agent.log_tail(4000)
            );
            if let Some(dir) = self.dir.take() {
                eprintln!("---- logs kept in {}", dir.keep().display());
            }
        }
    }
}

// ---------------------------------------------------------------------------
// A fault-injecting proxy in front of the agent

/// What [`FaultProxy`] does with one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Forward it and pass the answer back.
    Pass,
    /// Answer this status without forwarding: Consul never saw it.
    Refuse(u16),
    /// Forward it, then answer this status instead of Consul's answer: the
    /// request took effect and its answer was lost.
    LoseAnswer(u16),
}

/// Which requests get which [`Fault`]: called with the request's number
/// (from 0), method and path with query.
pub type FaultSchedule = Box<dyn Fn(u64, &str, &str) -> Fault + Send + Sync>;

#[derive(Default)]
struct ProxyShared {
    schedule: std::sync::Mutex<Option<FaultSchedule>>,
    requests: std::sync::atomic::AtomicU64,
    /// Requests other than `GET` forwarded to the agent and not answered
    /// yet: what may still change Consul after a schedule that refuses all.
    writes_in_flight: std::sync::atomic::AtomicU64,
    faults: std::sync::Mutex<BTreeMap<String, u64>>,
}

/// Counts of what a [`FaultProxy`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProxyStats {
    /// Requests seen.
    pub requests: u64,
    /// Faults injected, by `refused 429`, `lost 500`, ...
    pub faults: BTreeMap<String, u64>,
}

impl ProxyStats {
    /// Faults injected, every kind.
    pub fn injected(&self) -> u64 {
        self.faults.values().sum()
    }
}

/// A small HTTP proxy in front of the real agent that answers 429 or 500
/// (as Consul does when rate limited or without a leader) on a schedule,
/// before or after forwarding.
pub struct FaultProxy {
    addr: SocketAddr,
    shared: std::sync::Arc<ProxyShared>,
    task: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for FaultProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaultProxy")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn fault_body(status: u16) -> &'static str {
    match status {
        429 => "rate limit exceeded",
        500 => "No cluster leader",
        _ => "injected fault",
    }
}

impl FaultProxy {
    /// A proxy on a free loopback port forwarding to `upstream`; it passes
    /// everything until [`FaultProxy::set_schedule`].
    pub async fn start(upstream: SocketAddr) -> FaultProxy {
        use std::sync::Arc;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("proxy bound");
        let addr = listener.local_addr().expect("proxy address");
        let shared = Arc::new(ProxyShared::default());
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(8)
            .build()
            .expect("proxy client");
        let task = tokio::spawn({
            let shared = Arc::clone(&shared);
            async move {
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        continue;
                    };
                    let (shared, client) = (Arc::clone(&shared), client.clone());
                    tokio::spawn(async move {
                        let service = hyper::service::service_fn(move |req| {
                            proxy_one(Arc::clone(&shared), client.clone(), upstream, req)
                        });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                            .await;
                    });
                }
            }
        });
        FaultProxy { addr, shared, task }
    }

    /// Where hax should send its Consul requests.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Sets (or, with `None`, clears) the schedule of faults.
    pub fn set_schedule(&self, schedule: Option<FaultSchedule>) {
        *self.shared.schedule.lock().expect("schedule") = schedule;
    }

    /// Requests other than `GET` forwarded to the agent whose answer has
    /// not come back yet.
    pub fn writes_in_flight(&self) -> u64 {
        self.shared
            .writes_in_flight
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// What it did so far.
    pub fn stats(&self) -> ProxyStats {
        ProxyStats {
            requests: self
                .shared
                .requests
                .load(std::sync::atomic::Ordering::Relaxed),
            faults: self.shared.faults.lock().expect("faults").clone(),
        }
    }
}

async fn proxy_one(
    shared: std::sync::Arc<ProxyShared>,
    client: reqwest::Client,
    upstream: SocketAddr,
    req: hyper::Request<hyper::body::Incoming>,
) -> Result<hyper::Response<http_body_util::Full<bytes::Bytes>>, std::convert::Infallible> {
    use http_body_util::BodyExt;
    let n = shared
        .requests
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let method = req.method().clone();
    let path = req
        .uri()
        .path_and_query()
        .map_or_else(|| "/".to_owned(), |p| p.as_str().to_owned());
    let fault = shared
        .schedule
        .lock()
        .expect("schedule")
        .as_ref()
        .map_or(Fault::Pass, |s| s(n, method.as_str(), &path));
    let answer = |status: u16, body: bytes::Bytes, headers: Vec<(String, Vec<u8>)>| {
        let mut r = hyper::Response::builder().status(status);
        for (k, v) in headers {
            r = r.header(k, v);
        }
        r.body(http_body_util::Full::new(body))
            .expect("proxy answer")
    };
    let count = |what: String| {
        *shared
            .faults
            .lock()
            .expect("faults")
            .entry(what)
            .or_default() += 1;
    };
    if let Fault::Refuse(status) = fault {
        count(format!("refused {status}"));
        return Ok(answer(status, fault_body(status).into(), Vec::new()));
    }
    let headers: Vec<(String, Vec<u8>)> = req
        .headers()
        .iter()
        .filter(|(k, _)| *k != "host" && *k != "content-length")
        .map(|(k, v)| (k.as_str().to_owned(), v.as_bytes().to_vec()))
        .collect();
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return Ok(answer(502, "proxy: body".into(), Vec::new())),
    };
    let mut fwd = client.request(
        reqwest::Method::from_bytes(method.as_str().as_bytes()).expect("method"),
        format!("http://{upstream}{path}"),
    );
    for (k, v) in headers {
        fwd = fwd.header(k, v);
    }
    // Counted until Consul's answer is in: a write forwarded before a
    // schedule refusing everything may land after the schedule is set.
    struct InFlight<'a>(Option<&'a std::sync::atomic::AtomicU64>);
    impl Drop for InFlight<'_> {
        fn drop(&mut self) {
            if let Some(n) = self.0 {
                n.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
            }
        }
    }
    let write = (method != hyper::Method::GET).then_some(&shared.writes_in_flight);
    if let Some(n) = write {
        n.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
    let in_flight = InFlight(write);
    let sent = fwd.body(body.to_vec()).send().await;
    let resp = match sent {
        Ok(r) => r,
        // The agent is down: as if the connection was refused.
        Err(_) => {
            return Ok(answer(
                502,
                "proxy: upstream unreachable".into(),
                Vec::new(),
            ))
        }
    };
    let status = resp.status().as_u16();
    let headers: Vec<(String, Vec<u8>)> = resp
        .headers()
        .iter()
        .filter(|(k, _)| *k != "content-length" && *k != "transfer-encoding" && *k != "connection")
        .map(|(k, v)| (k.as_str().to_owned(), v.as_bytes().to_vec()))
        .collect();
    let body = resp.bytes().await.unwrap_or_default();
    drop(in_flight);
    if let Fault::LoseAnswer(status) = fault {
        count(format!("lost {status}"));
        return Ok(answer(status, fault_body(status).into(), Vec::new()));
    }
    Ok(answer(status, body, headers))
}

// ---------------------------------------------------------------------------
// Motr client operations (SNS, statistics)

/// The pool the client-operation tests define in the emulator's model.
pub fn pool_fid() -> Fid {
    Fid::typed(FidType::Pool, 1, 1)
}

/// Pool version `i` of [`pool_fid`].
pub fn pver_fid(i: u64) -> Fid {
    Fid::typed(FidType::Pver, 1, 1 + i)
}

/// Options whose hax runs its statistics updaters every `fs` and `bc`
/// milliseconds (0: off).
pub fn stats_options(fs_ms: u64, bc_ms: u64) -> Options {
    Options {
        hax_args: vec![
            "--stats-filesystem-interval-ms".into(),
            fs_ms.to_string(),
            "--stats-bytecount-interval-ms".into(),
            bc_ms.to_string(),
        ],
        ..Options::default()
    }
}

impl Env {
    /// Peers playing ioservices `0..n`, each having reported STARTED and
    /// DTM_RECOVERED, recorded in Consul: healthy to hax, which then starts
    /// rconfc.
    pub async fn ioservices_up(&self, n: usize) -> Vec<SimProcess> {
        let peers = self.connect_peers(n).await;
        for p in &peers {
            for e in [ProcessEventKind::Started, ProcessEventKind::DtmRecovered] {
                let tag = p.send_process_event(e).expect("process event sent");
                p.wait_confirmed(tag, T)
                    .await
                    .expect("process event confirmed");
            }
        }
        for p in &peers {
            let fid = p.fid();
            wait_for("the ioservice recorded DTM_RECOVERED", T, || async move {
                (self.process_status(fid).await.map(|s| s.state)
                    == Some(ProcessState::DtmRecovered))
                .then_some(())
            })
            .await;
        }
        peers
    }

    /// A control connection to the emulator inside hax.
    pub async fn control(&self) -> SimControl {
        SimControl::connect(&self.hax_endpoint)
            .await
            .expect("control connection")
    }

    /// Waits until hax reports rconfc running (`hax_rconfc_ready`).
    pub async fn wait_rconfc(&self) {
        self.wait_metrics("rconfc to run", |m| m.n("hax_rconfc_ready") == 1)
            .await;
    }

    /// `POST path` with `body` and `Authorization: Bearer <token>`.
    pub async fn http_post_auth(
        &self,
        path: &str,
        body: &str,
        token: &str,
    ) -> Result<(u16, String), reqwest::Error> {
        let r = self
            .web
            .post(format!("http://{}{path}", self.http))
            .header("content-type", "application/json")
            .header("authorization", format!("Bearer {token}"))
            .body(body.to_owned())
            .send()
            .await?;
        let status = r.status().as_u16();
        Ok((status, r.text().await?))
    }
}

/// The JSON of an HTTP answer body; fails naming the body otherwise.
pub fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

/// CPU time (user + system) of process `pid`.
pub fn process_cpu(pid: u32) -> std::time::Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command (which may hold spaces) start at "state".
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<u64> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    // utime and stime are fields 14 and 15 of stat, 12 and 13 after ")".
    let ticks = f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0);
    // The kernel's USER_HZ is 100 on every Linux this runs on.
    std::time::Duration::from_millis(ticks * 10)
}

/// The release `hax` next to the running executable (a benchmark of
/// `tests/src/bin`), unless `HAX_BIN` names one.
pub fn set_hax_bin() {
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

/// The `Environment=` settings of the systemd unit, so that hax runs here
/// as it is deployed (they are read by glibc when hax starts).
pub fn unit_environment() -> Vec<(String, String)> {
    let unit = concat!(env!("CARGO_MANIFEST_DIR"), "/../dist/hax.service");
    let text = std::fs::read_to_string(unit).unwrap_or_else(|e| panic!("{unit}: {e}"));
    text.lines()
        .filter_map(|l| l.strip_prefix("Environment="))
        .flat_map(str::split_whitespace)
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}
