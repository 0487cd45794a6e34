//! The `hax` daemon on real Motr (feature `motr`) with real `m0d`s and a real
//! Consul: the sample cluster description (hax, a confd process with its RM
//! service, one ioservice process) is loaded into Consul as hare writes it,
//! endpoints in libfabric's form `inet:tcp:127.0.0.1@<port>` (catalog
//! services with `transport_type` libfab); both m0d processes are
//! formatted with `m0mkfs`, then started with hax as their HA, on hax's
//! transport. The confd m0d
//! reads the configuration from a file; the ioservice m0d has none and gets
//! it from the confd that hax's entrypoint reply names. hax's rconfc starts.
//! Then the ioservice stops, the confd stops (hax's rconfc lets go of it),
//! starts again (rconfc starts again) and stops again; every m0d exits 0,
//! hax fences each stopped process once and only after it is done, and
//! hax, stopped last, exits 0 within 5 s. Process events land in Consul
//! (`processes/<fid>` and the broadcast queue) from start to stop.
//!
//! Ignored unless built with `--features motr`; built with it, fails unless
//! `MOTR_PREFIX` names an installed Motr with `m0d` and `m0mkfs`. About 30 s
//! (`HAX_KEEP_TEST_DIR=1` keeps the logs of a passing run):
//!
//! ```text
//! MOTR_PREFIX=/opt/motr cargo test -p hax-bin --features motr --test motr_daemon -- --nocapture
//! ```

use std::time::{Duration, Instant};

use hax_consul::schema::{BroadcastMessage, FidText, HaxKv, ProcessState, QueueKind, QueueMessage};
use hax_consul::ConsulClient;
use hax_core::Fid;
use motr_support::tools;

#[path = "../../hax-core/tests/motr_support/mod.rs"]
mod motr_support;

mod daemon_support;
use daemon_support::{bed, http_get, json_lines, metric, spawn_hax, tail, wait_for, Bed, Proc};

mod motr_cluster;
use motr_cluster::{
    assert_clean_exit, conf_xc, format_both, m0_args, m0_command, process_state, started,
};

async fn bq_process_updates(client: &ConsulClient, fid: Fid) -> Vec<ProcessState> {
    let pairs = client
        .kv_list(QueueKind::Broadcast.prefix())
        .await
        .expect("bq/ listed")
        .value;
    let mut out: Vec<(u64, ProcessState)> = pairs
        .iter()
        .filter_map(|p| {
            let n = QueueKind::Broadcast.parse_entry_key(&p.key)?;
            let m = QueueMessage::decode(&p.key, &p.value).ok()?;
            match m.broadcast(&p.key).ok()? {
                BroadcastMessage::ProcessStateUpdate(u)
                    if u.fid == FidText::new(fid.container, fid.key) =>
                {
                    Some((n, u.state))
                }
                _ => None,
            }
        })
        .collect();
    out.sort_by_key(|(n, _)| *n);
    out.into_iter().map(|(_, s)| s).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(feature = "motr"),
    ignore = "needs --features motr and an installed Motr (MOTR_PREFIX)"
)]
async fn real_m0ds_with_the_hax_daemon_and_consul() {
    let tools = tools();
    let t0 = Instant::now();
    // Kept on failure (logs, traces); removed at the end of a passing run
    // unless HAX_KEEP_TEST_DIR is set.
    let Bed {
        root,
        http,
        hax_ep,
        first_port,
        agent,
        client,
        sample: s,
        ..
    } = bed("hax-motr-daemon").await;
    let kv = HaxKv::new(client.clone());
    let (confd, ios) = (s.confd.clone(), s.ioservices[0].clone());
    assert_eq!(confd.1, format!("inet:tcp:127.0.0.1@{first_port}"));
    let conf = root.join("conf.xc");
    std::fs::write(&conf, conf_xc(&s, &hax_ep)).expect("conf.xc");

    // Both processes formatted (each is its own HA here), side by side.
    let (confd_dir, ios_dir) = format_both(&tools, &root, &s, &conf);
    eprintln!("m0mkfs x2 done at {:?}", t0.elapsed());

    // hax, as the daemon runs.
    let hax_log = root.join("hax.log");
    let mut hax = spawn_hax(
        &root,
        agent.http_addr(),
        http,
        // Probed often; never fenced for silence: a loaded machine may hold
        // an m0d's answer past a few rounds this short.
        &[
            "--motr-keepalive-interval-ms",
            "200",
            "--motr-keepalive-fence-rounds",
            "0",
        ],
    )
    .await;
    assert!(!hax.exited(), "hax runs");
    eprintln!("hax ready at {:?}", t0.elapsed());

    // The confd process, configuration from its file.
    let confd_args = m0_args(&confd_dir, &confd.1, confd.0, Some(&conf), Some(&hax_ep));
    let args = confd_args.clone();
    let mut m0d_confd = Proc::start(
        "m0d (confd)",
        &mut m0_command(&tools.m0d, &confd_dir, &args),
        &confd_dir.join("m0d.log"),
    );
    wait_for(
        "the confd m0d started in Consul",
        Duration::from_secs(90),
        &hax_log,
        || started(&kv, confd.0),
    )
    .await;
    eprintln!("confd m0d started at {:?}", t0.elapsed());

    // The ioservice process: no configuration file; it reads the
    // configuration from the confd of hax's entrypoint reply.
    let args = m0_args(&ios_dir, &ios.1, ios.0, None, Some(&hax_ep));
    let mut m0d_ios = Proc::start(
        "m0d (ios)",
        &mut m0_command(&tools.m0d, &ios_dir, &args),
        &ios_dir.join("m0d.log"),
    );
    wait_for(
        "the ioservice m0d started in Consul",
        Duration::from_secs(90),
        &hax_log,
        || started(&kv, ios.0),
    )
    .await;
    eprintln!("ioservice m0d started at {:?}", t0.elapsed());

    let lines = json_lines(&hax_log);
    let requests: Vec<&serde_json::Value> = lines
        .iter()
        .filter(|l| l["message"] == "entrypoint request")
        .collect();
    for r in &requests {
        eprintln!(
            "entrypoint request: process {} from {} first {}",
            r["process"], r["endpoint"], r["first"]
        );
    }
    for fid in [confd.0, ios.0] {
        assert!(
            requests
                .iter()
                .any(|r| r["process"] == fid.to_string() && r["first"] == true),
            "a first entrypoint request of {fid} reached hax"
        );
    }
    let metrics = http_get(http, "/metrics").unwrap_or_default();
    for key in [
        "hax_links",
        "hax_entrypoint_requests_total{outcome=\"accepted\"}",
        "hax_entrypoint_requests_pending",
        "hax_messages_total{direction=\"in\",type=\"event_process\"}",
        "hax_messages_total{direction=\"in\",type=\"event_service\"}",
        "hax_messages_total{direction=\"in\",type=\"nvec_get\"}",
        "hax_messages_total{direction=\"in\",type=\"fvec_req\"}",
        "hax_messages_total{direction=\"in\",type=\"keepalive_req\"}",
        "hax_messages_total{direction=\"out\",type=\"nvec_set\"}",
    ] {
        eprintln!("{key} = {}", metric(&metrics, key));
    }
    assert_eq!(
        metric(&metrics, "hax_links"),
        3,
        "hax's own link and two m0ds"
    );

    // hax's rconfc reads the configuration from the confd m0d, holding a
    // read lock its RM lent.
    let logged = |message: &'static str| {
        json_lines(&hax_log)
            .iter()
            .filter(|l| l["message"] == message)
            .count()
    };
    let log = hax_log.clone();
    let rconfc_started = move |n: usize| {
        let log = log.clone();
        move || {
            let log = log.clone();
            async move {
                (json_lines(&log)
                    .iter()
                    .filter(|l| l["message"] == "rconfc started")
                    .count()
                    >= n)
                    .then_some(())
            }
        }
    };
    wait_for(
        "rconfc started",
        Duration::from_secs(90),
        &hax_log,
        rconfc_started(1),
    )
    .await;
    eprintln!("rconfc started at {:?}", t0.elapsed());

    // hax probes each m0d every 200 ms: each answers, and the counter of
    // its replies grows.
    for fid in [confd.0, ios.0] {
        let keepalive = || {
            let (kv, node) = (kv.clone(), s.node.clone());
            async move {
                kv.keepalive_status(&node, FidText::new(fid.container, fid.key))
                    .await
                    .ok()
                    .flatten()
                    .filter(|k| k.responding && k.missed == 0 && !k.replied_at.is_empty())
            }
        };
        let what = format!("{fid} answering keepalives");
        let first = wait_for(&what, Duration::from_secs(10), &hax_log, || async {
            keepalive().await.filter(|k| k.counter > 0)
        })
        .await;
        let what = format!("{fid}'s keepalive counter growing");
        let later = wait_for(&what, Duration::from_secs(10), &hax_log, || async {
            keepalive().await.filter(|k| k.counter > first.counter)
        })
        .await;
        eprintln!(
            "keepalive of {fid}: counter {} then {} (replied at {})",
            first.counter, later.counter, later.replied_at
        );
    }

    // Stop, the ioservice first (stopped after its confd, an m0d of this
    // Motr panics in its own stop). Each stop is recorded, each m0d exits 0.
    let stopped = |f: Fid| {
        let kv = kv.clone();
        move || {
            let kv = kv.clone();
            async move { (process_state(&kv, f).await == Some(ProcessState::Stopped)).then_some(()) }
        }
    };
    let t_ios = Instant::now();
    m0d_ios.signal("TERM");
    let rc = m0d_ios.wait(Duration::from_secs(10));
    eprintln!(
        "ioservice m0d exit {rc:?} {:?} after SIGTERM",
        t_ios.elapsed()
    );
    assert_clean_exit("the ioservice m0d", rc, &ios_dir.join("m0d.log"));
    wait_for(
        "the ioservice m0d stopped in Consul",
        Duration::from_secs(30),
        &hax_log,
        stopped(ios.0),
    )
    .await;

    // Then the confd: hax stops rconfc when the confd reports STOPPING and
    // answers its own Motr without that confd, so the confd's stop neither
    // waits for the read lock nor for hax's rconfc reconnecting (without
    // that it did not end within 60 s). Its stop may still wait for its
    // RPCs to the stopped ioservice to time out (Motr's, not hax's: ~33 s
    // on SOCK, 8-9 s on libfabric).
    let stop_confd = |m0d: &mut Proc, n: usize| {
        let t = Instant::now();
        m0d.signal("TERM");
        let rc = m0d.wait(Duration::from_secs(60));
        eprintln!(
            "confd m0d ({n}) exit {rc:?} {:?} after SIGTERM",
            t.elapsed()
        );
        assert_clean_exit("the confd m0d", rc, &confd_dir.join("m0d.log"));
    };
    stop_confd(&mut m0d_confd, 1);
    wait_for(
        "the confd m0d stopped in Consul",
        Duration::from_secs(30),
        &hax_log,
        stopped(confd.0),
    )
    .await;
    assert_eq!(logged("rconfc stopped: a confd stops"), 1, "rconfc stopped");

    // The confd comes back: its old link is fenced before the new one is
    // made, and rconfc starts again; then it stops again.
    let mut m0d_confd = Proc::start(
        "m0d (confd, again)",
        &mut m0_command(&tools.m0d, &confd_dir, &confd_args),
        &confd_dir.join("m0d-again.log"),
    );
    wait_for(
        "the confd m0d started again in Consul",
        Duration::from_secs(60),
        &hax_log,
        || started(&kv, confd.0),
    )
    .await;
    wait_for(
        "rconfc started again",
        Duration::from_secs(60),
        &hax_log,
        rconfc_started(2),
    )
    .await;
    eprintln!("confd m0d and rconfc back at {:?}", t0.elapsed());
    assert_eq!(
        logged("held FAILED sent to hax's own link before the new incarnation's reply"),
        1,
        "the stopped confd's link fenced before the new one"
    );
    stop_confd(&mut m0d_confd, 2);
    wait_for(
        "the confd m0d stopped again in Consul",
        Duration::from_secs(30),
        &hax_log,
        stopped(confd.0),
    )
    .await;
    assert_eq!(logged("rconfc stopped: a confd stops"), 2, "rconfc stopped");
    // hax fences each stopped m0d on its own link once, at the bound (a peer
    // closing its link is not reported to hax). The fence of a process that
    // is gone costs Motr's RPC timeouts on hax's side of its link (~16 s on
    // SOCK, ~9 s on libfabric); hax's stop would wait for them.
    let t_links = Instant::now();
    wait_for(
        "hax's links to the stopped m0ds gone",
        Duration::from_secs(60),
        &hax_log,
        || async move {
            let m = http_get(http, "/metrics").ok()?;
            (metric(&m, "hax_links") == 1).then_some(())
        },
    )
    .await;
    eprintln!(
        "links to the stopped m0ds gone {:?} after the last m0d's exit",
        t_links.elapsed()
    );
    let held: Vec<serde_json::Value> = json_lines(&hax_log)
        .into_iter()
        .filter(|l| l["message"] == "held FAILED sent to hax's own link")
        .collect();
    for fid in [ios.0, confd.0] {
        let n = held
            .iter()
            .filter(|l| l["process"] == fid.to_string())
            .count();
        assert_eq!(n, 1, "{fid} fenced once, after its stop: {held:?}");
    }

    for fid in [confd.0, ios.0] {
        let bq = bq_process_updates(&client, fid).await;
        eprintln!("BQ process updates of {fid}: {bq:?}");
        // hax, the RC leader, deletes the entries every node consumed:
        // what is left, if anything, ends with the stop.
        if let Some(last) = bq.last() {
            assert_eq!(last, &ProcessState::Stopped, "{fid}: {bq:?}");
        }
    }

    // hax stops: every link through the handshake, exit 0, promptly.
    let t1 = Instant::now();
    hax.signal("TERM");
    let rc = hax.wait(Duration::from_secs(5));
    eprintln!("hax exit {rc:?} after {:?}", t1.elapsed());
    assert_eq!(rc, Some(0), "hax exits 0:\n{}", tail(&hax_log, 40));
    let panics = std::fs::read_to_string(&hax_log)
        .unwrap_or_default()
        .lines()
        .filter(|l| {
            let l = l.to_ascii_lowercase();
            l.contains("contract violation") || l.contains("panicked")
        })
        .count();
    assert_eq!(panics, 0, "hax logged a contract violation or a panic");
    eprintln!("done in {:?}", t0.elapsed());
    if std::env::var_os("HAX_KEEP_TEST_DIR").is_none() {
        let _ = std::fs::remove_dir_all(&root);
    } else {
        eprintln!("logs kept in {}", root.display());
    }
}
