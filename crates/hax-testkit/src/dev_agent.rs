//! A real Consul agent for tests: started on free loopback ports, ready when
//! it has a leader and its node is registered, stopped when dropped (also when
//! the test panics).
//!
//! Two modes:
//! * [`AgentMode::Dev`]: `consul agent -dev`, state in memory only. A restart
//!   loses every key and resets the Raft index, which is exactly what index-reset
//!   tests need.
//! * [`AgentMode::Persistent`]: a single-node server (`-server
//!   -bootstrap-expect=1 -data-dir <dir>`). Consul 1.8's `-dev` ignores
//!   `-data-dir`, so restart tests that must keep the data use this mode; the
//!   node id and Raft log live in the data dir, so the restarted agent elects
//!   itself again (about 1.5 s) and serves the same keys with the same indexes.
//!
//! The binary is looked up in `$HAX_CONSUL_BIN`, then
//! `<workspace>/.local/consul/usr/bin/consul` (installed by
//! `scripts/install-consul.sh`), then `consul` on `PATH`.

use std::fs::File;
use std::io::Read as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use hax_consul::backoff::Backoff;
use hax_consul::catalog::CheckStatus;
use hax_consul::client::{AclToken, ConsulClient, ConsulConfig, RetryPolicy};

/// Errors of starting or driving a test agent.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DevAgentError {
    /// No Consul binary was found.
    #[error(
        "no consul binary found (looked at: {tried}); run scripts/install-consul.sh \
         or set HAX_CONSUL_BIN"
    )]
    BinaryNotFound {
        /// The places that were looked at.
        tried: String,
    },
    /// File or process handling failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The agent exited during start-up.
    #[error("consul agent exited during start-up ({status}); log tail:\n{log}")]
    Exited {
        /// Exit status.
        status: ExitStatus,
        /// End of the agent's output.
        log: String,
    },
    /// The agent did not become ready in time.
    #[error("consul agent not ready after {timeout:?}; log tail:\n{log}")]
    NotReady {
        /// The deadline.
        timeout: Duration,
        /// End of the agent's output.
        log: String,
    },
    /// The agent is not running (it was killed and not started again).
    #[error("consul agent is not running")]
    NotRunning,
    /// Sending a signal failed.
    #[error("signal {signal} to consul agent: {source}")]
    Signal {
        /// The signal.
        signal: Signal,
        /// The error.
        #[source]
        source: nix::Error,
    },
    /// The client could not be built.
    #[error(transparent)]
    Client(#[from] hax_consul::ConsulError),
}

pub(crate) fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> DevAgentError {
    let what = what.into();
    move |source| DevAgentError::Io { what, source }
}

/// Sends an agent's output (both streams) to the end of `log`; no input.
pub(crate) fn log_to(cmd: &mut Command, log: &Path) -> Result<(), DevAgentError> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(io_err("open an agent log"))?;
    let copy = file.try_clone().map_err(io_err("clone an agent log"))?;
    cmd.stdin(Stdio::null())
        .stdout(Stdio::from(file))
        .stderr(Stdio::from(copy));
    Ok(())
}

/// Finds the Consul binary (see the module documentation for the order).
pub fn find_consul_binary() -> Result<PathBuf, DevAgentError> {
    let mut tried = Vec::new();
    if let Some(path) = std::env::var_os("HAX_CONSUL_BIN") {
        let path = PathBuf::from(path);
        if path.is_file() {
            return Ok(path);
        }
        // An explicit choice that does not exist is an error, not a hint to
        // silently test against some other binary.
        return Err(DevAgentError::BinaryNotFound {
            tried: format!("$HAX_CONSUL_BIN={}", path.display()),
        });
    }
    let local = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.local/consul/usr/bin/consul");
    if local.is_file() {
        return Ok(local);
    }
    tried.push(local.display().to_string());
    if let Some(paths) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&paths) {
            let candidate = dir.join("consul");
            if candidate.is_file() {
                return Ok(candidate);
            }
        }
    }
    tried.push("consul on PATH".to_owned());
    Err(DevAgentError::BinaryNotFound {
        tried: tried.join(", "),
    })
}

/// How the agent keeps its state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum AgentMode {
    /// `-dev`: in memory; a restart starts from scratch.
    #[default]
    Dev,
    /// Single-node server with a data dir; a restart keeps the data.
    Persistent,
    /// A server that waits for a second one (`-bootstrap-expect=2`) and so
    /// never elects a leader: for "no cluster leader" tests. Ready as soon as
    /// its HTTP API answers.
    Leaderless,
    /// A client (non-server) agent joined to another agent's serf LAN port,
    /// e.g. to test client-side RPC rate limits (HTTP 429).
    Client {
        /// Serf LAN port of the agent to join.
        join_serf_lan: u16,
    },
}

/// The loopback ports of one agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AgentPorts {
    /// HTTP API.
    pub http: u16,
    /// Serf LAN (TCP and UDP).
    pub serf_lan: u16,
    /// Serf WAN (TCP and UDP).
    pub serf_wan: u16,
    /// Server RPC.
    pub server: u16,
    /// gRPC.
    pub grpc: u16,
}

impl AgentPorts {
    /// Picks five distinct ports that are free right now on 127.0.0.1, for TCP
    /// and (serf) UDP. Another process may still take one before the agent
    /// binds it; the start-up retries with new ports if that happens.
    pub fn pick() -> Result<Self, DevAgentError> {
        let mut all = Self::pick_many(1)?;
        all.pop().ok_or(DevAgentError::NotRunning)
    }

    /// [`AgentPorts::pick`] for `n` agents at once: all `5 * n` ports are
    /// distinct, since every one stays bound until all are picked.
    pub fn pick_many(n: usize) -> Result<Vec<Self>, DevAgentError> {
        let ports = crate::ports::free_ports(5 * n, true)?;
        Ok(ports
            .chunks_exact(5)
            .map(|p| AgentPorts {
                http: p[0],
                serf_lan: p[1],
                serf_wan: p[2],
                server: p[3],
                grpc: p[4],
            })
            .collect())
    }
}

/// Settings of a test agent.
#[derive(Debug, Clone)]
pub struct DevAgentBuilder {
    mode: AgentMode,
    node_name: String,
    extra_config: Option<serde_json::Value>,
    acl_token: Option<AclToken>,
    ready_timeout: Duration,
}

impl Default for DevAgentBuilder {
    fn default() -> Self {
        DevAgentBuilder {
            mode: AgentMode::Dev,
            node_name: "hax-test".to_owned(),
            extra_config: None,
            acl_token: None,
            ready_timeout: Duration::from_secs(30),
        }
    }
}

impl DevAgentBuilder {
    /// State kept in memory or in a data dir.
    pub fn mode(mut self, mode: AgentMode) -> Self {
        self.mode = mode;
        self
    }

    /// Node name of the agent (default `hax-test`).
    pub fn node_name(mut self, name: impl Into<String>) -> Self {
        self.node_name = name.into();
        self
    }

    /// Extra agent configuration, written as a JSON config file (e.g.
    /// `{"watches": [...]}`). JSON, not HCL: HCL mangles one-element blocks.
    pub fn extra_config(mut self, config: serde_json::Value) -> Self {
        self.extra_config = Some(config);
        self
    }

    /// Enables ACLs with a default-deny policy and `token` as the master (and
    /// agent) token. [`DevAgent::client_config`] then carries that token.
    pub fn acl_master_token(mut self, token: impl Into<String>) -> Self {
        self.acl_token = Some(AclToken::new(token));
        self
    }

    /// Joins the agent to `server` as a client (non-server) agent.
    pub fn client_of(mut self, server: &DevAgent) -> Self {
        self.mode = AgentMode::Client {
            join_serf_lan: server.ports().serf_lan,
        };
        self
    }

    /// How long to wait for a leader and a registered node.
    pub fn ready_timeout(mut self, timeout: Duration) -> Self {
        self.ready_timeout = timeout;
        self
    }

    /// Starts the agent and waits until it is ready.
    pub async fn start(self) -> Result<DevAgent, DevAgentError> {
        let binary = find_consul_binary()?;
        let mut last_err = None;
        // Free ports can be taken by someone else between picking and binding.
        for _ in 0..3 {
            let dir = tempfile::Builder::new()
                .prefix("hax-consul-agent.")
                .tempdir()
                .map_err(io_err("create the agent directory"))?;
            let mut agent = DevAgent {
                binary: binary.clone(),
                dir,
                ports: AgentPorts::pick()?,
                settings: self.clone(),
                child: None,
                starts: 0,
            };
            match agent.spawn_and_wait().await {
                Ok(()) => return Ok(agent),
                Err(DevAgentError::Exited { status, log })
                    if log.contains("address already in use") =>
                {
                    tracing::warn!(%status, "consul agent lost a port race, retrying");
                    last_err = Some(DevAgentError::Exited { status, log });
                }
                Err(e) => return Err(e),
            }
        }
        Err(last_err.unwrap_or(DevAgentError::NotRunning))
    }
}

/// A running test agent, stopped (SIGKILL) when dropped.
#[derive(Debug)]
pub struct DevAgent {
    binary: PathBuf,
    dir: tempfile::TempDir,
    ports: AgentPorts,
    settings: DevAgentBuilder,
    child: Option<Child>,
    starts: u32,
}

impl DevAgent {
    /// Starts an in-memory `-dev` agent with default settings.
    pub async fn start() -> Result<Self, DevAgentError> {
        DevAgentBuilder::default().start().await
    }

    /// Settings for a customised agent.
    pub fn builder() -> DevAgentBuilder {
        DevAgentBuilder::default()
    }

    /// The agent's ports.
    pub fn ports(&self) -> AgentPorts {
        self.ports
    }

    /// Address of the HTTP API.
    pub fn http_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.ports.http))
    }

    /// Base URL of the HTTP API.
    pub fn http_url(&self) -> String {
        format!("http://{}", self.http_addr())
    }

    /// Node name of the agent.
    pub fn node_name(&self) -> &str {
        &self.settings.node_name
    }

    /// Client configuration pointing at this agent (with the master token when
    /// ACLs are enabled).
    pub fn client_config(&self) -> ConsulConfig {
        ConsulConfig {
            token: self.settings.acl_token.clone(),
            ..ConsulConfig::new(self.http_url())
        }
    }

    /// A client of this agent.
    pub fn client(&self) -> Result<ConsulClient, DevAgentError> {
        Ok(ConsulClient::new(self.client_config())?)
    }

    /// Process id of the running agent.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Directory holding the data dir, config files and log.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("agent.log")
    }

    /// The last `max` bytes of the agent's output (of all its runs).
    pub fn log_tail(&self, max: usize) -> String {
        let mut text = String::new();
        if let Ok(mut f) = File::open(self.log_path()) {
            let mut bytes = Vec::new();
            if f.read_to_end(&mut bytes).is_ok() {
                let start = bytes.len().saturating_sub(max);
                text = String::from_utf8_lossy(&bytes[start..]).into_owned();
            }
        }
        text
    }

    fn command(&self) -> Result<Command, DevAgentError> {
        let p = self.ports;
        let mut cmd = Command::new(&self.binary);
        cmd.arg("agent");
        match self.settings.mode {
            AgentMode::Dev => {
                cmd.arg("-dev");
            }
            AgentMode::Client { join_serf_lan } => {
                let data = self.dir.path().join("data");
                std::fs::create_dir_all(&data).map_err(io_err("create the data dir"))?;
                cmd.arg(format!("-data-dir={}", data.display()))
                    .arg(format!("-retry-join=127.0.0.1:{join_serf_lan}"));
            }
            AgentMode::Persistent | AgentMode::Leaderless => {
                let data = self.dir.path().join("data");
                std::fs::create_dir_all(&data).map_err(io_err("create the data dir"))?;
                let expect = if self.settings.mode == AgentMode::Leaderless {
                    2
                } else {
                    1
                };
                cmd.arg("-server")
                    .arg(format!("-bootstrap-expect={expect}"))
                    .arg(format!("-data-dir={}", data.display()));
            }
        }
        cmd.arg("-bind=127.0.0.1")
            .arg("-client=127.0.0.1")
            .arg(format!("-node={}", self.settings.node_name))
            .arg(format!("-http-port={}", p.http))
            .arg("-dns-port=-1")
            .arg(format!("-serf-lan-port={}", p.serf_lan))
            .arg(format!("-serf-wan-port={}", p.serf_wan))
            .arg(format!("-server-port={}", p.server))
            .arg(format!("-grpc-port={}", p.grpc));
        let base = serde_json::json!({
            "disable_update_check": true,
            // Fast Raft timing, as -dev uses: elections in about a second.
            "performance": { "raft_multiplier": 1 },
        });
        let mut base = base;
        if let Some(token) = &self.settings.acl_token {
            base["primary_datacenter"] = "dc1".into();
            base["acl"] = serde_json::json!({
                "enabled": true,
                "default_policy": "deny",
                "tokens": {
                    "master": token.expose_secret(),
                    "agent": token.expose_secret(),
                },
            });
        }
        let base_path = self.dir.path().join("base.json");
        write_json(&base_path, &base)?;
        cmd.arg(format!("-config-file={}", base_path.display()));
        if let Some(extra) = &self.settings.extra_config {
            let extra_path = self.dir.path().join("extra.json");
            write_json(&extra_path, extra)?;
            cmd.arg(format!("-config-file={}", extra_path.display()));
        }
        log_to(&mut cmd, &self.log_path())?;
        Ok(cmd)
    }

    async fn spawn_and_wait(&mut self) -> Result<(), DevAgentError> {
        let mut cmd = self.command()?;
        let child = cmd
            .spawn()
            .map_err(io_err(format!("start {}", self.binary.display())))?;
        self.starts += 1;
        tracing::debug!(
            pid = child.id(),
            http = self.ports.http,
            "consul agent started"
        );
        self.child = Some(child);
        self.wait_ready().await
    }

    /// Waits for a leader and for this node's `serfHealth` to pass (sessions
    /// need a registered node), polling with a deadline.
    async fn wait_ready(&mut self) -> Result<(), DevAgentError> {
        let timeout = self.settings.ready_timeout;
        let deadline = tokio::time::Instant::now() + timeout;
        let client = ConsulClient::new(ConsulConfig {
            request_timeout: Duration::from_secs(2),
            retry: RetryPolicy::none(),
            ..self.client_config()
        })?;
        let mut backoff = Backoff::new(Duration::from_millis(20), Duration::from_millis(200));
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Some(status) = child.try_wait().map_err(io_err("poll the agent"))? {
                    self.child = None;
                    return Err(DevAgentError::Exited {
                        status,
                        log: self.log_tail(4000),
                    });
                }
            } else {
                return Err(DevAgentError::NotRunning);
            }
            if self.is_ready(&client).await {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(DevAgentError::NotReady {
                    timeout,
                    log: self.log_tail(4000),
                });
            }
            tokio::time::sleep(backoff.next_pause()).await;
        }
    }

    async fn is_ready(&self, client: &ConsulClient) -> bool {
        if self.settings.mode == AgentMode::Leaderless {
            return client.status_leader().await.is_ok();
        }
        if !matches!(client.status_leader().await, Ok(Some(_))) {
            return false;
        }
        match client.health_node(&self.settings.node_name).await {
            Ok(checks) => checks
                .value
                .iter()
                .any(|c| c.check_id == "serfHealth" && c.status == CheckStatus::Passing),
            Err(_) => false,
        }
    }

    /// Kills the agent (SIGKILL) and waits for it to exit; keeps its data dir
    /// and ports. No-op if it is not running.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            // A stopped process still dies on SIGKILL.
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the agent again on the same ports and data dir, after
    /// [`DevAgent::kill`], and waits until it is ready.
    pub async fn start_again(&mut self) -> Result<(), DevAgentError> {
        if self.child.is_some() {
            return Ok(());
        }
        self.spawn_and_wait().await
    }

    /// Kills and starts the agent again on the same ports. In
    /// [`AgentMode::Dev`] all data is lost and the index starts over.
    pub async fn restart(&mut self) -> Result<(), DevAgentError> {
        self.kill();
        self.spawn_and_wait().await
    }

    /// Whether the agent process is running (possibly paused).
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    fn signal(&self, signal: Signal) -> Result<(), DevAgentError> {
        let child = self.child.as_ref().ok_or(DevAgentError::NotRunning)?;
        let pid = i32::try_from(child.id()).map_err(|_| DevAgentError::NotRunning)?;
        kill(Pid::from_raw(pid), signal).map_err(|source| DevAgentError::Signal { signal, source })
    }

    /// Freezes the agent (SIGSTOP): connections are accepted by the kernel but
    /// never answered, as with a hung agent.
    ///
    /// Returns once every thread of the agent is stopped (or after 5 s): the
    /// signal is delivered asynchronously, and a request sent at once could
    /// otherwise still be answered.
    pub fn pause(&self) -> Result<(), DevAgentError> {
        self.signal(Signal::SIGSTOP)?;
        let Some(pid) = self.child.as_ref().map(std::process::Child::id) else {
            return Ok(());
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline && !all_threads_stopped(pid) {
            std::thread::sleep(Duration::from_millis(2));
        }
        Ok(())
    }

    /// Resumes a paused agent (SIGCONT).
    pub fn resume(&self) -> Result<(), DevAgentError> {
        self.signal(Signal::SIGCONT)
    }

    /// Replaces the extra configuration file and asks the running agent to
    /// reload it (`PUT /v1/agent/reload`). Later (re)starts use it too.
    pub async fn reload_with(&mut self, extra: serde_json::Value) -> Result<(), DevAgentError> {
        write_json(&self.dir.path().join("extra.json"), &extra)?;
        let had_extra = self.settings.extra_config.is_some();
        self.settings.extra_config = Some(extra);
        if !had_extra {
            // The running process was started without the file; only a
            // restart can add a new `-config-file`.
            return Err(DevAgentError::Io {
                what: "reload".to_owned(),
                source: std::io::Error::other(
                    "the agent was started without extra config; use restart()",
                ),
            });
        }
        self.client()?.agent_reload().await?;
        Ok(())
    }

    /// Number of times the agent process was started.
    pub fn starts(&self) -> u32 {
        self.starts
    }
}

impl Drop for DevAgent {
    fn drop(&mut self) {
        self.kill();
    }
}

pub(crate) fn write_json(path: &Path, value: &serde_json::Value) -> Result<(), DevAgentError> {
    let text = serde_json::to_vec_pretty(value).map_err(|e| DevAgentError::Io {
        what: format!("encode {}", path.display()),
        source: std::io::Error::other(e),
    })?;
    std::fs::write(path, text).map_err(io_err(format!("write {}", path.display())))
}

/// Whether every thread of process `pid` is stopped (state `T` or `t` in
/// `/proc/<pid>/task/*/stat`); false when that cannot be read.
pub(crate) fn all_threads_stopped(pid: u32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    let mut any = false;
    for task in tasks.flatten() {
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
            return false;
        };
        // The state follows the command name, which is in parentheses.
        let state = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next());
        if !matches!(state, Some("T" | "t")) {
            return false;
        }
        any = true;
    }
    any
}
