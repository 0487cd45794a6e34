//! SIGTERM during traffic: every link goes through the disconnect
//! handshake, what hax confirmed is recorded, hax exits 0. SIGINT stops hax
//! the same way; a second signal exits at once.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use hax_consul::schema::ProcessState;
use hax_core::{Fid, ProcessEventKind};
use hax_e2e::{assert_no_violations, recorded_as, wait_for, Env, Options, T};
use hax_sim::{LinkState, SimProcess};
use nix::sys::signal::Signal;

/// Sends `sig` to hax.
fn signal(env: &Env, sig: Signal) {
    let pid = i32::try_from(env.hax_pid()).expect("pid");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig).expect("signal sent");
}

/// A hax stopped by SIGTERM while every peer sends process events.
struct Stopped {
    env: Env,
    peers: Vec<SimProcess>,
    /// Each peer's link before the stop.
    links: Vec<u64>,
    /// Each peer's events, with their tags.
    sent: Vec<Vec<(u64, ProcessEventKind)>>,
    /// `(process, link)` of every NOLINK the peers were told.
    nolink: BTreeSet<(Fid, u64)>,
}

/// Peers send process events every 5 ms (peer 2 delivers nothing hax
/// sends it); hax gets SIGTERM in the middle and must exit 0.
async fn sigterm_during_traffic() -> Stopped {
    const KINDS: [ProcessEventKind; 2] =
        [ProcessEventKind::Started, ProcessEventKind::DtmRecovered];
    let mut env = Env::start(Options::default()).await;
    let (tx, mut events) = tokio::sync::mpsc::unbounded_channel();
    let mut cfgs: Vec<_> = (0..3).map(|i| env.peer_config(i)).collect();
    for c in &mut cfgs {
        c.events = Some(tx.clone());
    }
    // Peer 2 holds on to what hax sends it: at the stop those messages are
    // still pending.
    cfgs[2].delivery = hax_sim::Delivery::Manual;
    let peers = Arc::new(
        hax_sim::SimCluster::connect(cfgs)
            .await
            .unwrap()
            .into_processes(),
    );
    let links: Vec<u64> = peers.iter().map(|p| p.link_id()).collect();
    let storm = tokio::spawn({
        let peers = Arc::clone(&peers);
        async move {
            let mut sent: Vec<Vec<(u64, ProcessEventKind)>> = vec![Vec::new(); peers.len()];
            for i in 0..3000 {
                let mut any = false;
                for (k, p) in peers.iter().enumerate() {
                    let kind = KINDS[i % KINDS.len()];
                    if let Ok(tag) = p.send_process_event(kind) {
                        sent[k].push((tag, kind));
                        any = true;
                    }
                }
                if !any {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            sent
        }
    });
    wait_for("traffic", T, || async {
        peers.iter().all(|p| p.stats().confirmed >= 5).then_some(())
    })
    .await;

    env.sigterm();
    let t = std::time::Instant::now();
    let status = env.wait_exit(Duration::from_secs(30)).await;
    eprintln!("hax exited with {status} {:?} after SIGTERM", t.elapsed());
    assert!(status.success(), "exit status {status}");
    // hax is gone: each peer reads what it was sent up to the end of its
    // connection (NOLINK included) before it is closed; none was fenced
    // (stop_fence.rs).
    wait_for("every peer to see its connection end", T, || async {
        peers
            .iter()
            .all(|p| p.state() == LinkState::Disconnected)
            .then_some(())
    })
    .await;
    for p in peers.iter() {
        p.close();
    }
    let sent = storm.await.unwrap();
    let mut nolink = BTreeSet::new();
    while let Ok(e) = events.try_recv() {
        if let hax_sim::SimEventKind::NoLink { link_id } = e.kind {
            nolink.insert((e.process, link_id));
        }
    }
    let peers = Arc::try_unwrap(peers).expect("the storm is over");
    Stopped {
        env,
        peers,
        links,
        sent,
        nolink,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_is_graceful() {
    let Stopped {
        env,
        peers,
        links,
        nolink,
        ..
    } = sigterm_during_traffic().await;
    // Every link went through the disconnect handshake: each peer was told
    // NOLINK for its link.
    for (p, link) in peers.iter().zip(&links) {
        assert!(
            nolink.contains(&(p.fid(), *link)),
            "{} was not told NOLINK for link {link}: {nolink:?}",
            p.fid()
        );
        assert!(
            matches!(p.state(), LinkState::Closed),
            "{}: {:?}",
            p.fid(),
            p.state()
        );
    }
    assert_no_violations(&peers);

    // hax's log: the stop in order, no contract violation, no forced step.
    env.assert_no_contract_violations();
    let run = 1;
    let position = |m: &str| {
        env.log_position(run, |l| l["message"] == m)
            .unwrap_or_else(|| panic!("no {m:?} in the log"))
    };
    // Motr stops while the pipeline still records what arrives; the
    // writes are flushed after; then every task of the daemon has ended.
    let order = [
        position("signal received: stopping (a second signal exits at once)"),
        position("stopping"),
        position("halon stopped"),
        position("consul writes finished"),
        position("daemon tasks ended"),
    ];
    assert!(order.windows(2).all(|w| w[0] < w[1]), "{order:?}");
    // Which backend this is, said at start; on the emulator, a warning.
    let ready = env.log_messages(run, "hax ready");
    assert_eq!(ready[0]["backend"], hax_core::BACKEND, "{ready:?}");
    let warned = env.log_messages(
        run,
        "built without Motr: this hax is not connected to Motr (simulated m0d peers only)",
    );
    assert_eq!(warned.len(), usize::from(hax_core::BACKEND != "motr"));
    let stopped = env.log_messages(run, "halon stopped");
    assert_eq!(stopped.len(), 1, "{stopped:?}");
    assert_eq!(stopped[0]["violations"], 0);
    let finished = env.log_messages(run, "consul writes finished");
    assert_eq!(finished[0]["report"], "ShutdownReport { abandoned: 0 }");
    assert!(
        !env.log_text(run).contains("forcing a hang"),
        "the emulator forced a stop step"
    );
    // The messages peer 2 still held ended not delivered when its link went
    // (the emulator reports them per link).
    let not_delivered: u64 = env
        .log_lines(run)
        .iter()
        .filter_map(|l| {
            let m = l["message"].as_str()?;
            let rest = m.strip_prefix(&format!("link {} (", links[2]))?;
            let (_, n) = rest.split_once(") disconnected, ")?;
            n.strip_suffix(" messages not delivered")?
                .parse::<u64>()
                .ok()
        })
        .sum();
    let held = peers[2].undelivered().len() as u64;
    assert!(held > 0);
    assert!(
        not_delivered >= held,
        "{not_delivered} not delivered, {held} held"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_confirms_only_recorded_events() {
    let Stopped {
        env, peers, sent, ..
    } = sigterm_during_traffic().await;
    // What hax confirmed is durable. Events are recorded in order, each with
    // a BQ entry, so the recorded ones are the first of those sent: every
    // confirmed event must be among them.
    let mut late = 0;
    for (p, sent) in peers.iter().zip(&sent) {
        let unconfirmed: BTreeSet<u64> = p.unconfirmed().into_iter().collect();
        let recorded = env.bq_process_updates(p.fid()).await;
        let want: Vec<ProcessState> = sent[..recorded.len()]
            .iter()
            .map(|(_, k)| recorded_as(*k))
            .collect();
        assert_eq!(recorded, want, "{}: recorded in order", p.fid());
        let confirmed_unrecorded = sent[recorded.len()..]
            .iter()
            .filter(|(tag, _)| !unconfirmed.contains(tag))
            .count();
        eprintln!(
            "{}: {} sent, {} recorded, {} confirmed without being recorded",
            p.fid(),
            sent.len(),
            recorded.len(),
            confirmed_unrecorded
        );
        late += confirmed_unrecorded;
    }
    assert_eq!(late, 0, "events confirmed but not recorded");
}

/// SIGINT stops hax as SIGTERM does: its peer's link through the disconnect
/// handshake, the stop in order, exit 0. hax takes both signals on a thread
/// of its own with every thread blocking them (docs/motr.md, "Signals").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_is_graceful() {
    let mut env = Env::start(Options::default()).await;
    let (tx, mut events) = tokio::sync::mpsc::unbounded_channel();
    let mut cfg = env.peer_config(0);
    cfg.events = Some(tx);
    let peer = SimProcess::connect(cfg).await.expect("peer connected");
    let link = peer.link_id();

    signal(&env, Signal::SIGINT);
    let status = env.wait_exit(Duration::from_secs(30)).await;
    assert!(status.success(), "exit status {status}");
    wait_for("the peer to see its connection end", T, || async {
        (peer.state() == LinkState::Disconnected).then_some(())
    })
    .await;
    peer.close();
    let mut nolink = Vec::new();
    while let Ok(e) = events.try_recv() {
        if let hax_sim::SimEventKind::NoLink { link_id } = e.kind {
            nolink.push(link_id);
        }
    }
    assert_eq!(nolink, [link], "the peer is told NOLINK for its link");
    assert_no_violations(std::slice::from_ref(&peer));

    let run = 1;
    let received = env.log_messages(
        run,
        "signal received: stopping (a second signal exits at once)",
    );
    assert_eq!(received.len(), 1, "{received:?}");
    assert_eq!(received[0]["signal"], "SIGINT");
    let position = |m: &str| {
        env.log_position(run, |l| l["message"] == m)
            .unwrap_or_else(|| panic!("no {m:?} in the log"))
    };
    let order = [
        position("signal received: stopping (a second signal exits at once)"),
        position("halon stopped"),
        position("consul writes finished"),
    ];
    assert!(order.windows(2).all(|w| w[0] < w[1]), "{order:?}");
    assert_eq!(env.log_messages(run, "halon stopped")[0]["violations"], 0);
}

/// A second signal during the stop exits at once, with status 130. SIGTERM
/// then SIGINT: two different signals are both kept pending (a second
/// SIGTERM sent before hax took the first would merge with it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_signal_exits_at_once() {
    let mut env = Env::start(Options::default()).await;
    let _peers = env.connect_started(1).await;

    signal(&env, Signal::SIGTERM);
    signal(&env, Signal::SIGINT);
    let status = env.wait_exit(Duration::from_secs(30)).await;
    assert_eq!(status.code(), Some(130), "exit status {status}");
    let run = 1;
    let first = env.log_messages(
        run,
        "signal received: stopping (a second signal exits at once)",
    );
    let second = env.log_messages(run, "second signal: exiting now");
    assert_eq!(first.len(), 1, "{first:?}");
    assert_eq!(second.len(), 1, "{second:?}");
    // Both may be pending when hax takes the first, and the lower-numbered
    // pending signal comes first: either order.
    let mut taken = [&first[0]["signal"], &second[0]["signal"]];
    taken.sort_by_key(|s| s.as_str());
    assert_eq!(taken, ["SIGINT", "SIGTERM"]);
}
