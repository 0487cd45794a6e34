//! [`ClusterBed`]: the agents, the configuration, one hax per node and the
//! simulated processes of every node, started together and stopped when
//! dropped (also when a test panics: the tails of every log are printed and
//! the working directory is kept).

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use hax_consul::catalog::CheckStatus;
use hax_consul::schema::keys;
use hax_consul::ConsulClient;
use hax_core::{Fid, FidType, HaMsgData, NvecKind, ProcessEventKind, ServiceType};
use hax_sim::{SimCluster, SimConfig, SimProcess};

use super::agents::{serf_passing, Agent, Agents};
use super::config::{cfgen_kv, NodesSpec};
use super::elector::Elector;
use super::BedError;
use crate::cfgen::{self, CfgenKv};
use crate::dev_agent::io_err;

/// Who elects the RC leader.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Election {
    /// The bed, as hare's `elect-rc-leader` does ([`super::elector`]); the
    /// first node wins the first election.
    Bed,
    /// Nobody: the first node is made leader once, by a session of its
    /// agent, and no one takes over when it dies.
    Once,
    /// Every hax, with its own election (`[leader] elect`, the bed's
    /// lock-delay); the first hax started (the first node's) wins the first.
    Hax,
}

/// How a [`ClusterBed`] is made.
#[derive(Debug, Clone)]
pub struct BedSpec {
    /// The nodes and their processes.
    pub nodes: NodesSpec,
    /// The `hax` binary.
    pub hax_bin: PathBuf,
    /// Who elects the RC leader.
    pub election: Election,
    /// Lock-delay of the leader's session.
    pub lock_delay: Duration,
    /// Environment of every hax, over the bed's defaults (keepalive probes
    /// and BQ trimming off).
    pub hax_env: Vec<(String, String)>,
    /// hax's log filter.
    pub log_filter: String,
    /// Bound of each start-up step.
    pub timeout: Duration,
}

impl BedSpec {
    /// `nodes` nodes of `ioservices` ioservices each (one disk each), run by
    /// `hax_bin`, the leader elected by the bed with a 1 s lock-delay.
    pub fn new(hax_bin: impl Into<PathBuf>, nodes: usize, ioservices: usize) -> Self {
        BedSpec {
            nodes: NodesSpec::new(nodes, ioservices, 1),
            hax_bin: hax_bin.into(),
            election: Election::Bed,
            lock_delay: Duration::from_secs(1),
            hax_env: Vec::new(),
            log_filter: "info".into(),
            timeout: Duration::from_secs(60),
        }
    }
}

/// One simulated node: its hax and its processes.
#[derive(Debug)]
pub struct BedNode {
    /// Node name (also its agent's node name).
    pub name: String,
    /// hax's process fid.
    pub hax_fid: Fid,
    /// hax's Motr endpoint.
    pub hax_endpoint: String,
    /// hax's HTTP address (where its agent's watches post).
    pub hax_http: SocketAddr,
    /// The simulated `m0d`s of the node (confd, then the ioservices),
    /// linked to its hax, each having reported STARTED.
    pub peers: Vec<SimProcess>,
    hax: Option<Child>,
    logs: Vec<PathBuf>,
}

impl BedNode {
    /// hax's pid, when it runs.
    pub fn hax_pid(&self) -> Option<u32> {
        self.hax.as_ref().map(Child::id)
    }

    /// The text of hax's log (every run).
    pub fn hax_log(&self) -> String {
        self.logs
            .iter()
            .map(|l| std::fs::read_to_string(l).unwrap_or_default())
            .collect()
    }

    /// The peer with process fid `fid`.
    pub fn peer(&self, fid: Fid) -> Option<&SimProcess> {
        self.peers.iter().find(|p| p.fid() == fid)
    }
}

/// The whole cluster (see the module documentation).
#[derive(Debug)]
pub struct ClusterBed {
    /// The Consul agents.
    pub agents: Agents,
    /// The configuration loaded (endpoints on loopback).
    pub kv: CfgenKv,
    /// The nodes, in configuration order.
    pub nodes: Vec<BedNode>,
    spec: BedSpec,
    elector: Option<Elector>,
    dir: Option<tempfile::TempDir>,
}

/// TCP ports free on 127.0.0.1 right now, distinct (hax may be started
/// again on the same ones).
fn free_ports(n: usize) -> Result<Vec<u16>, BedError> {
    Ok(crate::ports::free_ports(n, false)?)
}

/// hare's watches (`consul-*-conf.json.in`) for the agent of a node whose
/// hax listens on `http`.
fn hare_watches(http: SocketAddr) -> serde_json::Value {
    let handler = |path: &str| {
        serde_json::json!({
            "path": format!("http://{http}{path}"),
            "method": "POST",
            "timeout": "10s",
        })
    };
    let service = |name: &str| {
        serde_json::json!({"type": "service", "service": name, "handler_type": "http",
                           "http_handler_config": handler("")})
    };
    serde_json::json!({
        "watches": [
            {"type": "keyprefix", "prefix": "bq/", "handler_type": "http",
             "http_handler_config": handler("/watcher/bq")},
            service("hax"), service("confd"), service("ios"),
        ]
    })
}

impl ClusterBed {
    /// Starts everything and returns once every hax is ready, every peer is
    /// linked and every peer heard every other's start.
    pub async fn start(spec: BedSpec) -> Result<ClusterBed, BedError> {
        let dir = tempfile::Builder::new()
            .prefix("hax-cluster-bed.")
            .tempdir()
            .map_err(io_err("create the bed directory"))?;
        let mut kv = cfgen_kv(&spec.nodes);
        let names = spec.nodes.names.clone();
        let procs: usize = kv.nodes().iter().map(|n| n.processes.len()).sum();
        let mut ports = free_ports(procs + names.len())?.into_iter();
        let mut next_port = || ports.next().unwrap_or(0);
        kv.rewrite_endpoints(|_| format!("inet:tcp:127.0.0.1@{}", next_port()));
        let mut https = Vec::new();
        for n in &names {
            let http = SocketAddr::from(([127, 0, 0, 1], next_port()));
            kv.set(
                &format!("ports/{n}/hax"),
                format!(r#"{{"http": {}}}"#, http.port()),
            );
            https.push(http);
        }
        let agent_nodes: Vec<(String, Option<serde_json::Value>)> = names
            .iter()
            .zip(&https)
            .map(|(n, h)| (n.clone(), Some(hare_watches(*h))))
            .collect();
        let agents = Agents::start(dir.path(), &agent_nodes, spec.timeout).await?;
        let mut bed = ClusterBed {
            agents,
            kv,
            nodes: Vec::new(),
            spec,
            elector: None,
            dir: Some(dir),
        };
        bed.bootstrap(&names).await?;
        for (name, http) in names.iter().zip(https) {
            let node = bed
                .kv
                .node(name)
                .ok_or_else(|| BedError::Usage(format!("{name} is not in the configuration")))?;
            let hax = node
                .hax()
                .ok_or_else(|| BedError::Usage(format!("{name} has no hax")))?;
            bed.nodes.push(BedNode {
                name: name.clone(),
                hax_fid: hax.fid(),
                hax_endpoint: hax.endpoint.clone(),
                hax_http: http,
                peers: Vec::new(),
                hax: None,
                logs: Vec::new(),
            });
        }
        match bed.start_nodes().await {
            Ok(()) => Ok(bed),
            Err(e) => {
                bed.print_logs();
                if let Some(dir) = bed.dir.take() {
                    eprintln!("---- cluster bed kept in {}", dir.keep().display());
                }
                Err(e)
            }
        }
    }

    /// Every hax, then every node's processes: all linked before any
    /// reports STARTED, so that each hears of every start.
    async fn start_nodes(&mut self) -> Result<(), BedError> {
        for i in 0..self.nodes.len() {
            self.start_hax(i).await?;
        }
        for i in 0..self.nodes.len() {
            self.connect_peers(i).await?;
        }
        for p in self.peers() {
            p.send_process_event(ProcessEventKind::Started)?;
        }
        for p in self.peers() {
            p.wait_all_confirmed(self.spec.timeout).await?;
        }
        self.wait_starts_heard().await
    }

    /// What hare's bootstrap does: the KV imported, each node's services
    /// and checks registered on its own agent, `consul/node/<host>`, and the
    /// first RC leader elected.
    async fn bootstrap(&mut self, names: &[String]) -> Result<(), BedError> {
        let server = self.agents.servers[0].client()?;
        cfgen::import(&server, &self.kv).await?;
        for name in names {
            let agent = self.agent_of(name)?;
            cfgen::register_services(&agent.client()?, &self.kv, name).await?;
            cfgen::map_consul_node(&server, name, name).await?;
        }
        let first = self.agent_of(&names[0])?.client()?;
        match self.spec.election {
            Election::Once => {
                cfgen::elect(&first, &names[0]).await?;
            }
            Election::Hax => {}
            Election::Bed => {
                let mut elector = Elector::default();
                elector.add(names[0].clone(), first, self.spec.lock_delay);
                self.elector = Some(elector);
                self.wait_leader(Some(&names[0]), self.spec.timeout).await?;
                for name in &names[1..] {
                    let c = self.agent_of(name)?.client()?;
                    if let Some(e) = self.elector.as_mut() {
                        e.add(name.clone(), c, self.spec.lock_delay);
                    }
                }
            }
        }
        // Every node's services in the catalog before any hax reads it.
        let want = names.len();
        self.wait_until("every confd in the catalog", self.spec.timeout, || async {
            server
                .catalog_service("confd")
                .await
                .is_ok_and(|l| l.value.len() == want)
        })
        .await
    }

    fn agent_of(&self, name: &str) -> Result<&Agent, BedError> {
        self.agents
            .client_of(name)
            .ok_or_else(|| BedError::Usage(format!("no agent for node {name}")))
    }

    fn node_index(&self, name: &str) -> Result<usize, BedError> {
        self.nodes
            .iter()
            .position(|n| n.name == name)
            .ok_or_else(|| BedError::Usage(format!("no node {name}")))
    }

    /// Polls `cond` every 50 ms until it holds or `timeout` passes.
    pub async fn wait_until<F, Fut>(
        &self,
        what: &str,
        timeout: Duration,
        mut cond: F,
    ) -> Result<(), BedError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if cond().await {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(BedError::Timeout {
                    what: what.to_owned(),
                    detail: format!("after {timeout:?}"),
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Starts (again) the hax of node `i` on its node's agent and waits
    /// until its log says it is ready.
    pub async fn start_hax(&mut self, i: usize) -> Result<(), BedError> {
        let name = self.nodes[i].name.clone();
        let agent = self.agent_of(&name)?.http_addr();
        let dir = self.dir().to_path_buf();
        let node = &mut self.nodes[i];
        if node.hax.is_some() {
            return Ok(());
        }
        let log = dir.join(format!("hax.{name}.{}.log", node.logs.len() + 1));
        let file = std::fs::File::create(&log).map_err(io_err("create a hax log"))?;
        let mut cmd = Command::new(&self.spec.hax_bin);
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("HAX_") || k == "NOTIFY_SOCKET" {
                cmd.env_remove(k);
            }
        }
        // As hare's unit runs it: where the node's agent is, and its port;
        // identity from Consul.
        cmd.env("HAX_MOTR_KEEPALIVE_INTERVAL_MS", "0")
            .env("HAX_LIMITS_BQ_TRIM_INTERVAL_MS", "0")
            .envs(
                (self.spec.election == Election::Hax)
                    .then(|| {
                        [
                            ("HAX_LEADER_ELECT".to_owned(), "true".to_owned()),
                            (
                                "HAX_LEADER_LOCK_DELAY_MS".to_owned(),
                                self.spec.lock_delay.as_millis().to_string(),
                            ),
                        ]
                    })
                    .into_iter()
                    .flatten(),
            )
            .envs(self.spec.hax_env.iter().map(|(k, v)| (k, v)))
            .arg("--consul-address")
            .arg(agent.to_string())
            .arg("--http-bind")
            .arg(node.hax_http.to_string())
            .args(["--log-format", "json", "--log", &self.spec.log_filter])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file);
        let child = cmd
            .spawn()
            .map_err(io_err(format!("start {}", self.spec.hax_bin.display())))?;
        node.hax = Some(child);
        node.logs.push(log.clone());
        let deadline = tokio::time::Instant::now() + self.spec.timeout;
        loop {
            if let Some(status) = node.hax.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                node.hax = None;
                return Err(BedError::HaxExited {
                    node: name,
                    status,
                    log: tail(&std::fs::read_to_string(&log).unwrap_or_default(), 40),
                });
            }
            if std::fs::read_to_string(&log)
                .unwrap_or_default()
                .contains("\"hax ready\"")
            {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(BedError::Timeout {
                    what: format!("hax of {name} ready"),
                    detail: tail(&std::fs::read_to_string(&log).unwrap_or_default(), 40),
                });
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Kills (SIGKILL) the hax of node `i`.
    pub fn kill_hax(&mut self, i: usize) {
        if let Some(mut c) = self.nodes[i].hax.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Links a simulated process for every m0d of node `i` (not hax) to
    /// its hax.
    async fn connect_peers(&mut self, i: usize) -> Result<(), BedError> {
        let node = self
            .kv
            .node(&self.nodes[i].name)
            .ok_or_else(|| BedError::Usage("node left the configuration".into()))?;
        let ha = self.nodes[i].hax_endpoint.clone();
        let cfgs = node
            .processes
            .iter()
            .filter(|p| !p.has("ha"))
            .map(|p| {
                let mut c = SimConfig::new(ha.clone(), p.fid());
                c.endpoint = p.endpoint.clone();
                c.services = p
                    .services
                    .iter()
                    .filter_map(|(t, k)| {
                        let kind = match t.as_str() {
                            "confd" => ServiceType::Confd,
                            "ios" => ServiceType::Ios,
                            "rms" => ServiceType::Rms,
                            _ => return None,
                        };
                        Some((Fid::typed(FidType::Service, 1, *k), kind))
                    })
                    .collect();
                c.timeout = Duration::from_secs(15);
                c
            })
            .collect();
        self.nodes[i].peers = SimCluster::connect(cfgs).await?.into_processes();
        Ok(())
    }

    /// Every peer of every node heard, in an NVEC SET, of every peer's
    /// start: the broadcast queue went round.
    async fn wait_starts_heard(&self) -> Result<(), BedError> {
        let all: Vec<Fid> = self.peers().map(SimProcess::fid).collect();
        self.wait_until(
            "every peer to hear of every start",
            self.spec.timeout,
            || {
                let ok = self.peers().all(|p| {
                    let heard: BTreeSet<Fid> = p
                        .received()
                        .iter()
                        .filter_map(|r| match &r.msg.data {
                            HaMsgData::Nvec(n) if n.kind == NvecKind::Set => Some(n.notes.clone()),
                            _ => None,
                        })
                        .flatten()
                        .map(|n| n.fid)
                        .collect();
                    all.iter().all(|f| heard.contains(f))
                });
                async move { ok }
            },
        )
        .await
    }

    /// Every peer of every node.
    pub fn peers(&self) -> impl Iterator<Item = &SimProcess> {
        self.nodes.iter().flat_map(|n| n.peers.iter())
    }

    /// The node a process fid belongs to.
    pub fn node_of(&self, fid: Fid) -> Option<&BedNode> {
        self.nodes
            .iter()
            .find(|n| n.hax_fid == fid || n.peer(fid).is_some())
    }

    /// The bed's working directory (logs, agents' data).
    pub fn dir(&self) -> &Path {
        self.dir.as_ref().map_or(Path::new("."), |d| d.path())
    }

    /// A client of the agent of node `name`.
    pub fn node_client(&self, name: &str) -> Result<ConsulClient, BedError> {
        self.agent_of(name)?.client()
    }

    /// A client of the first server still running.
    pub fn server_client(&mut self) -> Result<ConsulClient, BedError> {
        for a in &mut self.agents.servers {
            if a.is_running() {
                return a.client();
            }
        }
        Err(BedError::Usage("every server is down".into()))
    }

    /// Sets the TTL check of process `fid` on its node's agent, as hare's
    /// `check-service` reports the process (critical: not running).
    pub async fn set_check(&self, fid: Fid, status: CheckStatus) -> Result<(), BedError> {
        let node = self
            .node_of(fid)
            .ok_or_else(|| BedError::Usage(format!("{fid} is on no node")))?;
        let client = self.node_client(&node.name)?;
        client
            .agent_check_update(&format!("service:{}", fid.key), status, "set by the test")
            .await?;
        Ok(())
    }

    /// The node holding `leader`, as the agent of node `via` reads it; `None`
    /// when no session holds it.
    pub async fn leader(&self, via: &str) -> Result<Option<String>, BedError> {
        let pair = self.node_client(via)?.kv_get(keys::LEADER).await?.value;
        Ok(pair
            .filter(|p| p.session.as_ref().is_some_and(|s| !s.is_empty()))
            .map(|p| String::from_utf8_lossy(&p.value).into_owned()))
    }

    /// Waits until `leader` names `want` (any node, for `None`) as read
    /// through any running client agent; returns the leader.
    pub async fn wait_leader(
        &self,
        want: Option<&str>,
        timeout: Duration,
    ) -> Result<String, BedError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            for a in &self.agents.clients {
                if let Ok(Some(l)) = self.leader(a.name()).await {
                    if want.is_none_or(|w| w == l) {
                        return Ok(l);
                    }
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(BedError::Timeout {
                    what: format!("the RC leader to be {}", want.unwrap_or("any node")),
                    detail: format!("after {timeout:?}"),
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Kills (SIGKILL) the node `name`'s agent and hax; its peers stay, cut
    /// off.
    pub fn kill_node(&mut self, name: &str) -> Result<(), BedError> {
        let i = self.node_index(name)?;
        self.kill_hax(i);
        if let Some(a) = self.agents.clients.iter_mut().find(|a| a.name() == name) {
            a.kill();
        }
        Ok(())
    }

    /// Whether the catalog (through the agent of node `via`) shows node
    /// `name` alive.
    pub async fn node_alive(&self, via: &str, name: &str) -> Result<bool, BedError> {
        Ok(serf_passing(&self.node_client(via)?, name).await)
    }

    fn print_logs(&self) {
        for a in self.agents.all() {
            eprintln!("---- consul agent {}:\n{}", a.name(), a.log_tail(1500));
        }
        for n in &self.nodes {
            eprintln!("---- hax of {}:\n{}", n.name, tail(&n.hax_log(), 40));
        }
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

impl Drop for ClusterBed {
    fn drop(&mut self) {
        self.elector = None;
        for n in &self.nodes {
            for p in &n.peers {
                p.close();
            }
        }
        for i in 0..self.nodes.len() {
            self.kill_hax(i);
        }
        if std::thread::panicking() {
            self.print_logs();
            if let Some(dir) = self.dir.take() {
                eprintln!("---- cluster bed kept in {}", dir.keep().display());
            }
        }
        for a in self
            .agents
            .servers
            .iter_mut()
            .chain(self.agents.clients.iter_mut())
        {
            // A frozen agent must be thawed to die before its dir goes.
            let _ = a.resume();
            a.kill();
        }
    }
}
