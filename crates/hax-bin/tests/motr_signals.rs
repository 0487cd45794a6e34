//! A stop is a stop on the libfabric Motr: the `hax` daemon on real Motr
//! (feature `motr`), its endpoint in libfabric's form
//! `inet:tcp:127.0.0.1@<port>` as hare writes it, ready and idle, stops on
//! SIGTERM and on SIGINT: exit 0, the "signal received" line, and its self
//! link through the disconnect handshake.
//!
//! Libraries loaded with libmotr (libfabric's providers) install SIGINT and
//! SIGTERM handlers of their own; hax, whose handler chained to theirs, used
//! to exit 1 within ~50 ms with no log line. hax now blocks both signals in
//! every thread and takes them with `sigwait` (`src/signals.rs`): this test
//! also checks that every thread of hax blocks them, so no handler can run.
//!
//! Ignored without `--features motr`; about 10 s:
//!
//! ```text
//! MOTR_PREFIX=/opt/motr cargo test -p hax-bin --features motr --test motr_signals -- --nocapture
//! ```

use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hax_testkit::dev_agent::DevAgent;
use hax_testkit::sample::{self, SampleSpec};
use nix::sys::signal::Signal;

#[path = "../../hax-core/tests/motr_support/mod.rs"]
mod motr_support;

/// A free TCP port on 127.0.0.1.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn json_lines(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn log_text(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// hax, killed and reaped when dropped.
struct Hax(Option<Child>);

impl Hax {
    /// Its exit status once it has exited (then reaped).
    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        let st = self.0.as_mut()?.try_wait().ok().flatten()?;
        self.0 = None;
        Some(st)
    }
}

impl Drop for Hax {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The signals a thread blocks or catches: the bit mask of the
/// `SigBlk:`/`SigCgt:` line of `/proc/<pid>/task/<tid>/status`.
fn mask(status: &str, key: &str) -> u64 {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or_else(|| panic!("no {key} in {status}"))
}

fn bit(sig: Signal) -> u64 {
    1 << (sig as u64 - 1)
}

/// Every thread of `pid` (name, SigBlk), and the process's SigCgt.
fn signal_masks(pid: u32) -> (Vec<(String, u64)>, u64) {
    let mut threads = Vec::new();
    let mut caught = 0;
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("hax's threads");
    for t in tasks.flatten() {
        let Ok(status) = std::fs::read_to_string(t.path().join("status")) else {
            continue; // the thread ended meanwhile
        };
        let name = status
            .lines()
            .find_map(|l| l.strip_prefix("Name:"))
            .unwrap_or("?")
            .trim()
            .to_owned();
        threads.push((name, mask(&status, "SigBlk:")));
        caught = mask(&status, "SigCgt:");
    }
    (threads, caught)
}

/// What hax is doing when the signal comes.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Doing {
    /// Ready and idle.
    Idle,
    /// Starting rconfc again and again: the sample's confd is not running.
    RetryingRconfc,
}

async fn stop_on(sig: Signal, doing: Doing) {
    let t0 = Instant::now();
    let root = std::env::temp_dir().join(format!(
        "hax-motr-signals-{}-{}-{doing:?}",
        std::process::id(),
        sig.as_str()
    ));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).expect("work dir");
    let http = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let endpoint = format!("inet:tcp:127.0.0.1@{}", free_port());

    let agent = DevAgent::builder()
        .start()
        .await
        .expect("consul agent (scripts/install-consul.sh installs it)");
    let client = agent.client().expect("consul client");
    sample::load(
        &client,
        &SampleSpec {
            node: None,
            hax_endpoint: endpoint.clone(),
            hax_http_port: http.port(),
            // With no ioservice to wait for, rconfc starts at once.
            ioservices: if doing == Doing::RetryingRconfc { 0 } else { 1 },
            first_port: free_port(),
        },
    )
    .await
    .expect("sample loaded");

    let log = root.join("hax.log");
    let out = std::fs::File::create(&log).expect("log file");
    let err = out.try_clone().expect("log file");
    let child = Command::new(env!("CARGO_BIN_EXE_hax"))
        .arg("--consul-address")
        .arg(agent.http_addr().to_string())
        .arg("--http-bind")
        .arg(http.to_string())
        .args(["--log-format", "json", "--log", "info"])
        .current_dir(&root)
        .env("M0_TRACE_DIR", &root)
        .env_remove("HAX_CONFIG")
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .expect("hax starts");
    let pid = child.id();
    let mut hax = Hax(Some(child));

    let deadline = Instant::now() + Duration::from_secs(60);
    let ready = loop {
        if let Some(l) = json_lines(&log)
            .into_iter()
            .find(|l| l["message"] == "hax ready")
        {
            break l;
        }
        if let Some(st) = hax.exited() {
            panic!("hax exited ({st}) before it was ready:\n{}", log_text(&log));
        }
        assert!(
            Instant::now() < deadline,
            "hax not ready in 60 s:\n{}",
            log_text(&log)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(ready["endpoint"], endpoint.as_str(), "{ready}");
    eprintln!("{sig}: hax ready on {endpoint} at {:?}", t0.elapsed());

    // No thread can run a handler for either signal, whoever installed it
    // (hax installs none: a handler here is a library's). The thread in
    // sigwait shows them unblocked: the kernel unblocks what sigwait waits
    // for while it waits, and dequeues it there, running no handler.
    let (threads, caught) = signal_masks(pid);
    let both = bit(Signal::SIGTERM) | bit(Signal::SIGINT);
    eprintln!(
        "{sig}: {} threads; SIGTERM/SIGINT handlers installed (SigCgt & both): {:#x}",
        threads.len(),
        caught & both
    );
    assert!(
        threads.iter().any(|(name, _)| name == "hax-signals"),
        "no signal thread: {threads:?}"
    );
    let open: Vec<_> = threads
        .iter()
        .filter(|(name, m)| name != "hax-signals" && m & both != both)
        .collect();
    assert!(
        open.is_empty(),
        "threads of hax not blocking SIGTERM and SIGINT: {open:?}"
    );

    if doing == Doing::RetryingRconfc {
        // Motr's rconfc has consumed an entrypoint reply and failed to
        // reach the confd at least once (it then tries again).
        let deadline = Instant::now() + Duration::from_secs(60);
        while !log_text(&log).contains("rconfc_start_internal") {
            if let Some(st) = hax.exited() {
                panic!(
                    "hax exited ({st}) while rconfc started:\n{}",
                    log_text(&log)
                );
            }
            assert!(
                Instant::now() < deadline,
                "rconfc not retrying in 60 s:\n{}",
                log_text(&log)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        eprintln!("{sig}: rconfc retrying at {:?}", t0.elapsed());
    }

    let sent = Instant::now();
    let raw = nix::unistd::Pid::from_raw(i32::try_from(pid).expect("pid"));
    nix::sys::signal::kill(raw, sig).expect("signal sent");
    let deadline = sent + Duration::from_secs(60);
    let status = loop {
        if let Some(st) = hax.exited() {
            break st;
        }
        assert!(
            Instant::now() < deadline,
            "hax still running 60 s after {sig}:\n{}",
            log_text(&log)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    eprintln!(
        "{sig}: hax exited ({status}) {:?} after the signal",
        sent.elapsed()
    );
    assert_eq!(status.code(), Some(0), "{sig}:\n{}", log_text(&log));

    let lines = json_lines(&log);
    let position = |what: &str, f: &dyn Fn(&serde_json::Value) -> bool| {
        lines
            .iter()
            .position(f)
            .unwrap_or_else(|| panic!("{sig}: no {what} in hax's log:\n{}", log_text(&log)))
    };
    let received = position("signal received", &|l| {
        l["message"] == "signal received: stopping (a second signal exits at once)"
            && l["signal"] == sig.as_str()
    });
    // hax's own (self) link is its first; Motr disconnects it at the stop,
    // after hax agrees.
    let link = lines
        .iter()
        .find(|l| l["message"] == "link connected")
        .map(|l| l["link"].clone())
        .unwrap_or_else(|| panic!("{sig}: no link connected in hax's log"));
    let disconnecting = position("link is disconnecting", &|l| {
        l["message"] == "link is disconnecting" && l["link"] == link
    });
    let disconnected = position("link disconnected", &|l| {
        l["message"] == "link disconnected" && l["link"] == link
    });
    let stopped = position("halon stopped", &|l| l["message"] == "halon stopped");
    let finished = position("consul writes finished", &|l| {
        l["message"] == "consul writes finished"
    });
    let order = [received, disconnecting, disconnected, stopped, finished];
    assert!(
        order.windows(2).all(|w| w[0] < w[1]),
        "{sig}: stop out of order {order:?}:\n{}",
        log_text(&log)
    );
    assert_eq!(lines[stopped]["violations"], 0, "{}", lines[stopped]);
    let _ = std::fs::remove_dir_all(&root);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(feature = "motr"),
    ignore = "needs --features motr and an installed Motr (MOTR_PREFIX)"
)]
async fn sigterm_stops_hax_on_libfabric_motr() {
    stop_on(Signal::SIGTERM, Doing::Idle).await;
}

/// Motr's rconfc keeps the active RM's fid in its phony cache after a start
/// that could not reach the confds, and its finalisation asserts that the
/// cache is empty: a stop then was a Motr panic (exit 1).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(feature = "motr"),
    ignore = "needs --features motr and an installed Motr (MOTR_PREFIX)"
)]
async fn sigterm_stops_hax_while_rconfc_cannot_reach_the_confd() {
    stop_on(Signal::SIGTERM, Doing::RetryingRconfc).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(feature = "motr"),
    ignore = "needs --features motr and an installed Motr (MOTR_PREFIX)"
)]
async fn sigint_stops_hax_on_libfabric_motr() {
    stop_on(Signal::SIGINT, Doing::Idle).await;
}
