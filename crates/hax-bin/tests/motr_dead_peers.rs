//! The `hax` daemon on real Motr (feature `motr`) stopped while processes it
//! links are dead. Motr's stop ends the incoming links one after another, and
//! a link whose peer is gone takes Motr's RPC timeout and then its
//! disconnect timeout (5 s) to end: six dead peers held a plain stop for
//! over a minute. hax fences the processes that left the last keepalive
//! round unanswered just before Motr's stop, so their links end together
//! (15 s here).
//!
//! The peers are `hax-m0peers` (tests/motr-peers, built by
//! `scripts/build-m0peers.sh`; `HAX_M0PEERS` names it): one process holding
//! the HA links of several processes and answering keepalives as Motr does,
//! killed with `SIGKILL`. Ignored unless built with `--features motr`; built
//! with it, fails unless `MOTR_PREFIX` names an installed Motr and
//! `HAX_M0PEERS` the tool.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use hax_consul::schema::{FidText, HaxKv};
use hax_core::Fid;

#[path = "../../hax-core/tests/motr_support/mod.rs"]
mod motr_support;

mod daemon_support;
use daemon_support::{bed_with, json_lines, spawn_hax, tail, wait_for, Bed};

/// Processes linked from the one `hax-m0peers` process.
const PEERS: u16 = 6;

/// Motr's HA link disconnect timeout (`ha/ha.c`): the least a link to a
/// gone peer takes to end in Motr's stop.
const DISCONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The keepalive record of `fid`, if it satisfies `pred`.
async fn record(
    kv: &HaxKv,
    node: &str,
    fid: Fid,
    pred: impl Fn(&hax_consul::schema::KeepaliveStatus) -> bool,
) -> Option<()> {
    let key = FidText::new(fid.container, fid.key);
    let k = kv.keepalive_status(node, key).await.ok().flatten()?;
    pred(&k).then_some(())
}

fn m0peers() -> PathBuf {
    let path = std::env::var_os("HAX_M0PEERS").map(PathBuf::from);
    match path {
        Some(p) if p.exists() => p,
        _ => panic!(
            "HAX_M0PEERS names no hax-m0peers (scripts/build-m0peers.sh builds it): {path:?}"
        ),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(feature = "motr"),
    ignore = "needs --features motr, an installed Motr (MOTR_PREFIX) and HAX_M0PEERS"
)]
async fn a_stop_ends_the_links_of_dead_peers_together() {
    let peers_bin = m0peers();
    let Bed {
        root,
        http,
        hax_ep,
        agent,
        client,
        sample: s,
        ..
    } = bed_with("hax-motr-dead-peers", PEERS).await;
    let kv = HaxKv::new(client.clone());
    let hax_log = root.join("hax.log");
    // Keepalives every 200 ms, never fenced for silence while hax runs: only
    // the stop fences them.
    let mut hax = spawn_hax(
        &root,
        agent.http_addr(),
        http,
        &[
            "--motr-keepalive-interval-ms",
            "200",
            "--motr-keepalive-fence-rounds",
            "0",
        ],
    )
    .await;

    // Its standard input stays open: at its end the tool closes its links.
    let prefix = std::env::var("MOTR_PREFIX").unwrap_or_else(|_| "/opt/motr".into());
    let mut peers: Child = motr_support::command(&peers_bin)
        .arg(&hax_ep)
        .args(s.ioservices.iter().map(|(fid, ep)| format!("{fid}@{ep}")))
        .current_dir(&root)
        .env("M0_TRACE_DIR", &root)
        .env("LD_LIBRARY_PATH", format!("{prefix}/lib"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("hax-m0peers starts");
    let stdout = peers.stdout.take().expect("its stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = rx
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("hax-m0peers linked in 90 s:\n{}", tail(&hax_log, 40)));
        assert!(!line.starts_with("hax-m0peers error"), "{line}");
        if line.starts_with("all connected") {
            break;
        }
    }
    for (fid, _) in &s.ioservices {
        let what = format!("{fid} answering keepalives");
        wait_for(&what, Duration::from_secs(30), &hax_log, || {
            record(&kv, &s.node, *fid, |k| k.responding && k.counter > 0)
        })
        .await;
    }

    // Every peer dies at once: no STOPPED, the links left at hax.
    let _ = std::process::Command::new("kill")
        .args(["-KILL", &peers.id().to_string()])
        .status();
    let _ = peers.wait();
    for (fid, _) in &s.ioservices {
        let what = format!("{fid}'s missed round recorded");
        wait_for(&what, Duration::from_secs(30), &hax_log, || {
            record(&kv, &s.node, *fid, |k| k.missed >= 1)
        })
        .await;
    }

    let t = Instant::now();
    hax.signal("TERM");
    let rc = hax.wait(Duration::from_secs(120));
    let took = t.elapsed();
    eprintln!("hax exited {rc:?} {took:?} after SIGTERM with {PEERS} dead peers");
    assert_eq!(rc, Some(0), "hax exits 0:\n{}", tail(&hax_log, 40));
    let lines = json_lines(&hax_log);
    let fenced: Vec<&serde_json::Value> = lines
        .iter()
        .filter(|l| l["message"] == "processes silent at the stop fenced together")
        .collect();
    assert_eq!(fenced.len(), 1, "{fenced:?}");
    let listed = fenced[0]["processes"].as_str().unwrap_or_default();
    for (fid, _) in &s.ioservices {
        assert!(listed.contains(&fid.to_string()), "{fid} in {listed}");
    }
    // One after another, the dead links would take at least the timeout
    // each.
    let serial = DISCONNECT_TIMEOUT * u32::from(PEERS);
    assert!(
        took < serial,
        "the dead links ended together: stop took {took:?}, {serial:?} or more one after another"
    );
    if std::env::var_os("HAX_KEEP_TEST_DIR").is_none() {
        let _ = std::fs::remove_dir_all(&root);
    } else {
        eprintln!("logs kept in {}", root.display());
    }
}
