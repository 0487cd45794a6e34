//! What the tests of the `hax` daemon on real Motr share: child processes
//! killed when dropped, hax's JSON log, its HTTP server and metrics, and the
//! Consul watches hare registers for it.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A free TCP port for hax's HTTP server.
pub fn free_http_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A child process killed (and reaped) when dropped.
pub struct Proc {
    name: String,
    child: Option<Child>,
}

impl Proc {
    pub fn spawn(name: &str, cmd: &mut Command, log: &Path) -> Proc {
        let out = std::fs::File::create(log).expect("log file");
        let err = out.try_clone().expect("log file");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("{name} does not start: {e}"));
        Proc {
            name: name.to_owned(),
            child: Some(child),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or(0)
    }

    pub fn signal(&self, sig: &str) {
        let _ = Command::new("kill")
            .args([format!("-{sig}"), self.pid().to_string()])
            .status();
    }

    /// Exit code once it exits within `limit`; killed (None) otherwise.
    pub fn wait(&mut self, limit: Duration) -> Option<i32> {
        let deadline = Instant::now() + limit;
        let child = self.child.as_mut()?;
        loop {
            match child.try_wait() {
                Ok(Some(st)) => {
                    self.child = None;
                    return st.code();
                }
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                _ => {
                    eprintln!("{} did not exit within {limit:?}: killed", self.name);
                    let _ = child.kill();
                    let _ = child.wait();
                    self.child = None;
                    return None;
                }
            }
        }
    }

    pub fn exited(&mut self) -> bool {
        matches!(
            self.child.as_mut().map(Child::try_wait),
            Some(Ok(Some(_))) | None
        )
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

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
    let hax = Proc::spawn(
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
