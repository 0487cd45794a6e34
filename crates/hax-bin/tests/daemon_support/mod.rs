//! What the tests of the `hax` daemon on real Motr share: child processes
//! killed when dropped, hax's JSON log, its HTTP server and metrics, and the
//! Consul watches hare registers for it.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// A free TCP port for hax's HTTP server.
pub fn free_http_port() -> u16 {
    hax_testkit::ports::free_port().expect("a free port")
}

pub use crate::motr_support::Proc;

pub fn tail(path: &Path, n: usize) -> String {
    let s = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

pub fn json_lines(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// Polls `f` until it gives a value or `limit` passes (then fails naming
/// `what`, with hax's log tail).
pub async fn wait_for<T, F, Fut>(what: &str, limit: Duration, hax_log: &Path, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if Instant::now() >= deadline {
            panic!(
                "timed out after {limit:?} waiting for {what}; hax's log:\n{}",
                tail(hax_log, 40)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `GET path` on hax's HTTP server; the body.
pub fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default())
}

/// A counter of hax's `/metrics` (0 when absent).
pub fn metric(text: &str, key: &str) -> u64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            (k == key).then(|| v.parse::<f64>().ok())?
        })
        .map_or(0, |v| v as u64)
}

pub fn watches(http: SocketAddr) -> serde_json::Value {
    let handler = |path: &str| {
        serde_json::json!({
            "path": format!("http://{http}{path}"),
            "method": "POST",
            "timeout": "10s",
        })
    };
    serde_json::json!({
        "watches": [
            {"type": "service", "service": "ios", "handler_type": "http",
             "http_handler_config": handler("/")},
            {"type": "keyprefix", "prefix": "bq/", "handler_type": "http",
             "http_handler_config": handler("/watcher/bq")},
        ]
    })
}

/// Starts the `hax` daemon as it runs in production (JSON log in
/// `root/hax.log`, Motr's trace in `root`), on the agent at `consul`,
/// serving HTTP on `http`, with `extra` options; returns once it logged
/// `hax ready`.
pub async fn spawn_hax(root: &Path, consul: SocketAddr, http: SocketAddr, extra: &[&str]) -> Proc {
    let hax_log = root.join("hax.log");
    let hax = Proc::start(
        "hax",
        Command::new(env!("CARGO_BIN_EXE_hax"))
            .arg("--consul-address")
            .arg(consul.to_string())
            .arg("--http-bind")
            .arg(http.to_string())
            .args(["--log-format", "json", "--log", "info"])
            .args(extra)
            .current_dir(root)
            .env("M0_TRACE_DIR", root)
            .env_remove("HAX_CONFIG"),
        &hax_log,
    );
    let log = hax_log.clone();
    wait_for("hax ready", Duration::from_secs(60), &hax_log, || {
        let log = log.clone();
        async move {
            json_lines(&log)
                .iter()
                .any(|l| l["message"] == "hax ready")
                .then_some(())
        }
    })
    .await;
    hax
}

/// What a daemon test runs on: its scratch directory (kept on failure), a
/// Consul dev agent with hare's watches of hax's HTTP address, and the
/// sample cluster (hax, a confd, one ioservice) loaded with free
/// endpoints in libfabric's form.
pub struct Bed {
    pub root: std::path::PathBuf,
    /// Ports taken so far (for more endpoints).
    pub taken: Vec<u16>,
    pub http: SocketAddr,
    pub hax_ep: String,
    /// The confd's port; the ioservice's is the next.
    pub first_port: u16,
    pub agent: hax_testkit::dev_agent::DevAgent,
    pub client: hax_consul::ConsulClient,
    pub sample: hax_testkit::sample::Sample,
}

/// Sets up a [`Bed`] in a scratch directory called `name`.
pub async fn bed(name: &str) -> Bed {
    bed_with(name, 1).await
}

/// [`bed`] with `ioservices` ioservice processes in the sample.
pub async fn bed_with(name: &str, ioservices: u16) -> Bed {
    use crate::motr_support::{free_inet_endpoint, free_port, scratch};
    let root = scratch(name);
    let mut taken = Vec::new();
    let http = SocketAddr::from(([127, 0, 0, 1], free_http_port()));
    let hax_ep = free_inet_endpoint(&mut taken);
    let first_port = free_port(&mut taken, 1 + ioservices);
    let agent = hax_testkit::dev_agent::DevAgent::builder()
        .extra_config(watches(http))
        .start()
        .await
        .expect("consul agent (scripts/install-consul.sh installs it)");
    let client = agent.client().expect("consul client");
    let sample = hax_testkit::sample::load(
        &client,
        &hax_testkit::sample::SampleSpec {
            node: None,
            hax_endpoint: hax_ep.clone(),
            hax_http_port: http.port(),
            ioservices: ioservices.into(),
            first_port,
        },
    )
    .await
    .expect("sample loaded");
    Bed {
        root,
        taken,
        http,
        hax_ep,
        first_port,
        agent,
        client,
        sample,
    }
}

/// `VmRSS` (KiB) and `Threads` of process `pid`.
pub fn usage(pid: u32) -> (u64, u64) {
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
