//! The Consul agents of a test cluster on loopback: three servers that elect
//! a Raft leader among themselves, and one client agent per simulated node,
//! each with its own ports, data dir and node name, all joined by serf into
//! one datacenter. Each agent can be killed, started again on its data, or
//! frozen (SIGSTOP) and resumed.

use std::fs::File;
use std::io::Read as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use hax_consul::catalog::CheckStatus;
use hax_consul::client::{ConsulClient, ConsulConfig, RetryPolicy};

use super::BedError;
use crate::dev_agent::{all_threads_stopped, io_err, write_json, AgentPorts, DevAgentError};

/// Servers of every bed: the smallest set that survives one loss.
pub const SERVERS: usize = 3;

/// What an agent is in the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// A Raft voter.
    Server,
    /// A node's own agent (hax talks to it).
    Client,
}

/// One agent process of the cluster.
#[derive(Debug)]
pub struct Agent {
    name: String,
    role: Role,
    ports: AgentPorts,
    dir: PathBuf,
    binary: PathBuf,
    join: Vec<u16>,
    extra: Option<serde_json::Value>,
    child: Option<Child>,
}

impl Agent {
    /// Node name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Server or client.
    pub fn role(&self) -> Role {
        self.role
    }

    /// Its ports.
    pub fn ports(&self) -> AgentPorts {
        self.ports
    }

    /// Address of its HTTP API.
    pub fn http_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.ports.http))
    }

    /// A client of this agent. Requests are bounded (5 s) and not retried:
    /// the bed and tests poll with their own deadlines, and an agent that is
    /// killed or frozen must not hold them.
    pub fn client(&self) -> Result<ConsulClient, BedError> {
        Ok(ConsulClient::new(ConsulConfig {
            request_timeout: Duration::from_secs(5),
            retry: RetryPolicy::none(),
            ..ConsulConfig::new(format!("http://{}", self.http_addr()))
        })?)
    }

    /// Process id, when running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join("agent.log")
    }

    /// The last `max` bytes of its output, over all its runs.
    pub fn log_tail(&self, max: usize) -> String {
        let mut bytes = Vec::new();
        if let Ok(mut f) = File::open(self.log_path()) {
            let _ = f.read_to_end(&mut bytes);
        }
        let start = bytes.len().saturating_sub(max);
        String::from_utf8_lossy(&bytes[start..]).into_owned()
    }

    fn command(&self) -> Result<Command, BedError> {
        let p = self.ports;
        let data = self.dir.join("data");
        std::fs::create_dir_all(&data).map_err(io_err("create an agent data dir"))?;
        let mut cmd = Command::new(&self.binary);
        cmd.arg("agent");
        if self.role == Role::Server {
            cmd.arg("-server")
                .arg(format!("-bootstrap-expect={SERVERS}"));
        }
        cmd.arg(format!("-data-dir={}", data.display()))
            .arg("-bind=127.0.0.1")
            .arg("-client=127.0.0.1")
            .arg(format!("-node={}", self.name))
            .arg(format!("-http-port={}", p.http))
            .arg("-dns-port=-1")
            .arg(format!("-serf-lan-port={}", p.serf_lan))
            .arg(format!("-serf-wan-port={}", p.serf_wan))
            .arg(format!("-server-port={}", p.server))
            .arg(format!("-grpc-port={}", p.grpc));
        // Consul retries a failed join every 30 s by default; the agents
        // start together, so the first try often finds no one listening.
        cmd.arg("-retry-interval=1s");
        for port in &self.join {
            if *port != p.serf_lan {
                cmd.arg(format!("-retry-join=127.0.0.1:{port}"));
            }
        }
        let base = serde_json::json!({
            "disable_update_check": true,
            // Raft timing of -dev: an election in about a second, not five.
            "performance": { "raft_multiplier": 1 },
            // The tests, the haxes and the bed all come from 127.0.0.1.
            "limits": { "http_max_conns_per_client": 4096 },
            // Cumulative counters at /v1/agent/metrics?format=prometheus: the
            // default in-memory sink keeps only the last 10 s interval, too
            // short for the cluster-size benchmark's before/after deltas.
            "telemetry": { "prometheus_retention_time": "24h", "disable_hostname": true },
        });
        let base_path = self.dir.join("base.json");
        write_json(&base_path, &base)?;
        cmd.arg(format!("-config-file={}", base_path.display()));
        if let Some(extra) = &self.extra {
            let extra_path = self.dir.join("extra.json");
            write_json(&extra_path, extra)?;
            cmd.arg(format!("-config-file={}", extra_path.display()));
        }
        crate::dev_agent::log_to(&mut cmd, &self.log_path())?;
        Ok(cmd)
    }

    /// Starts the process (again, on the same data and ports) without
    /// waiting for anything: servers wait for each other.
    pub fn spawn(&mut self) -> Result<(), BedError> {
        if self.child.is_some() {
            return Ok(());
        }
        let child = self
            .command()?
            .spawn()
            .map_err(io_err(format!("start {}", self.binary.display())))?;
        tracing::debug!(agent = %self.name, pid = child.id(), "consul agent started");
        self.child = Some(child);
        Ok(())
    }

    /// An error if the process has exited (it is then reaped).
    pub fn check_alive(&mut self) -> Result<(), BedError> {
        let Some(child) = self.child.as_mut() else {
            return Err(BedError::Agent(DevAgentError::NotRunning));
        };
        if let Some(status) = child.try_wait().map_err(io_err("poll an agent"))? {
            self.child = None;
            return Err(BedError::Agent(DevAgentError::Exited {
                status,
                log: self.log_tail(4000),
            }));
        }
        Ok(())
    }

    /// Whether the process runs (possibly frozen).
    pub fn is_running(&mut self) -> bool {
        self.check_alive().is_ok()
    }

    /// SIGKILL, and reaped; its data and ports are kept for [`Agent::spawn`].
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn signal(&self, signal: Signal) -> Result<(), BedError> {
        let pid = self
            .pid()
            .and_then(|p| i32::try_from(p).ok())
            .ok_or(BedError::Agent(DevAgentError::NotRunning))?;
        kill(Pid::from_raw(pid), signal)
            .map_err(|source| BedError::Agent(DevAgentError::Signal { signal, source }))
    }

    /// Freezes the agent (SIGSTOP); returns once every thread of it is
    /// stopped (at most 5 s), since the signal lands asynchronously.
    pub fn pause(&self) -> Result<(), BedError> {
        self.signal(Signal::SIGSTOP)?;
        if let Some(pid) = self.pid() {
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline && !all_threads_stopped(pid) {
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        Ok(())
    }

    /// Resumes a frozen agent (SIGCONT).
    pub fn resume(&self) -> Result<(), BedError> {
        self.signal(Signal::SIGCONT)
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The agents: [`SERVERS`] servers, then one client per node.
#[derive(Debug)]
pub struct Agents {
    /// The servers (`consul-server-<i>`).
    pub servers: Vec<Agent>,
    /// The clients, one per node, named after it.
    pub clients: Vec<Agent>,
}

impl Agents {
    /// Starts the servers and the clients of `nodes`, each client with its
    /// `extra` configuration (hare's watches of that node's hax), and waits
    /// until there is a Raft leader and every member is alive.
    pub async fn start(
        dir: &Path,
        nodes: &[(String, Option<serde_json::Value>)],
        timeout: Duration,
    ) -> Result<Agents, BedError> {
        let binary = crate::dev_agent::find_consul_binary()?;
        let ports = AgentPorts::pick_many(SERVERS + nodes.len())?;
        let join: Vec<u16> = ports[..SERVERS].iter().map(|p| p.serf_lan).collect();
        let make = |name: String, role, ports, extra| -> Result<Agent, BedError> {
            let agent_dir = dir.join(format!("agent-{name}"));
            std::fs::create_dir_all(&agent_dir).map_err(io_err("create an agent dir"))?;
            Ok(Agent {
                name,
                role,
                ports,
                dir: agent_dir,
                binary: binary.clone(),
                join: join.clone(),
                extra,
                child: None,
            })
        };
        let mut servers = Vec::new();
        for (i, p) in ports[..SERVERS].iter().enumerate() {
            servers.push(make(
                format!("consul-server-{}", i + 1),
                Role::Server,
                *p,
                None,
            )?);
        }
        let mut clients = Vec::new();
        for ((name, extra), p) in nodes.iter().zip(&ports[SERVERS..]) {
            clients.push(make(name.clone(), Role::Client, *p, extra.clone())?);
        }
        let mut agents = Agents { servers, clients };
        for a in agents.servers.iter_mut().chain(agents.clients.iter_mut()) {
            a.spawn()?;
        }
        agents.wait_settled(timeout).await?;
        Ok(agents)
    }

    /// Every agent, servers first.
    pub fn all(&self) -> impl Iterator<Item = &Agent> {
        self.servers.iter().chain(self.clients.iter())
    }

    /// The client agent of node `name`.
    pub fn client_of(&self, name: &str) -> Option<&Agent> {
        self.clients.iter().find(|a| a.name == name)
    }

    /// Waits until every running agent knows a Raft leader and the catalog
    /// shows every running agent's node with a passing `serfHealth` (a node must be
    /// registered before sessions can name it); fails at `timeout`, or at
    /// once if an agent exits.
    pub async fn wait_settled(&mut self, timeout: Duration) -> Result<(), BedError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let mut running = Vec::new();
            let mut names = Vec::new();
            for a in self.servers.iter_mut().chain(self.clients.iter_mut()) {
                if a.child.is_some() {
                    a.check_alive()?;
                    running.push(a.client()?);
                    names.push(a.name.clone());
                }
            }
            let mut ok = !running.is_empty();
            for c in &running {
                if !ok {
                    break;
                }
                ok = matches!(c.status_leader().await, Ok(Some(_)));
            }
            for n in &names {
                if !ok {
                    break;
                }
                ok = serf_passing(&running[0], n).await;
            }
            if ok {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                let tails: Vec<String> = self
                    .all()
                    .map(|a| format!("--- {}:\n{}", a.name, a.log_tail(1500)))
                    .collect();
                return Err(BedError::Timeout {
                    what: "a Raft leader and every agent alive".into(),
                    detail: tails.join("\n"),
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Whether the catalog, as `client`'s agent answers, shows `node` with a
/// passing `serfHealth`.
pub(crate) async fn serf_passing(client: &ConsulClient, node: &str) -> bool {
    match client.health_node(node).await {
        Ok(checks) => checks
            .value
            .iter()
            .any(|c| c.check_id == "serfHealth" && c.status == CheckStatus::Passing),
        Err(_) => false,
    }
}
