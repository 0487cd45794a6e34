//! Consul misbehaving under load: answering 429 and 500 (before or after
//! doing the work) through a fault-injecting proxy, having no leader, and
//! SIGKILLed and restarted again and again while BQ entries are broadcast.
//! (`outage.rs` covers one 10 s outage during an event storm.)
//!
//! The guarantees checked: every event a peer sent is recorded, in order,
//! and nothing is confirmed before it is durable; every BQ entry reaches
//! every peer once, in order, with no gap and no repeat, also when a kill
//! cuts off the commit of an entry already broadcast; no BQ entry is
//! appended twice.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hax_consul::queue::QueuePublisher;
use hax_consul::schema::{BroadcastMessage, QueueKind};
use hax_core::{Fid, HaState, ProcessEventKind};
use hax_e2e::{
    assert_no_violations, device_entry, event_storm, hax_binary, nvec_sets, wait_for, Env, Fault,
    Options, T,
};
use hax_sim::SimProcess;
use hax_testkit::dev_agent::{AgentMode, DevAgent};

/// Each peer's events are recorded, in order, and all were confirmed; how
/// many BQ entries were applied twice.
async fn assert_all_recorded(
    env: &Env,
    peers: &[SimProcess],
    sent: &[Vec<ProcessEventKind>],
) -> usize {
    let repeats = env.assert_events_recorded(peers, sent).await;
    for (p, sent) in peers.iter().zip(sent) {
        let s = p.stats();
        assert_eq!((s.sent, s.confirmed), (sent.len() as u64, s.sent));
    }
    repeats
}

/// Nothing confirmed that is not durable: the events a peer has had
/// confirmed are all in Consul already (read after the confirmations).
async fn assert_confirmed_are_durable(env: &Env, peers: &[SimProcess]) -> u64 {
    let confirmed: Vec<u64> = peers.iter().map(|p| p.stats().confirmed).collect();
    for (p, c) in peers.iter().zip(&confirmed) {
        let mut bq = env.bq_process_updates(p.fid()).await;
        // Repeats of a lost answer are one event.
        bq.dedup();
        // Consecutive events of a peer always differ (STORM_CYCLE), so after
        // dedup each entry is one event.
        assert!(
            bq.len() as u64 >= *c,
            "{}: {c} events confirmed, {} recorded",
            p.fid(),
            bq.len()
        );
    }
    confirmed.iter().sum()
}

/// How many events of each peer Consul holds (repeats of a lost answer
/// counted once), read from the agent itself.
async fn recorded_events(env: &Env, peers: &[SimProcess]) -> Vec<u64> {
    let mut counts = Vec::new();
    for p in peers {
        let mut bq = env.bq_process_updates(p.fid()).await;
        bq.dedup();
        counts.push(bq.len() as u64);
    }
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consul_answering_429_and_500_loses_nothing() {
    let env = Env::start(Options {
        proxy: true,
        ..Options::default()
    })
    .await;
    let proxy = env.proxy.as_ref().expect("proxy");
    let peers = Arc::new(env.connect_peers(3).await);
    let stop = Arc::new(AtomicBool::new(false));
    let storm = event_storm(&peers, &stop, Duration::from_millis(20));

    // Phase 1: one request in three fails: 429 before it reaches Consul,
    // 500 before, or 500 after Consul did the work (its answer lost).
    proxy.set_schedule(Some(Box::new(|n, _, _| match n % 6 {
        1 => Fault::Refuse(429),
        3 => Fault::Refuse(500),
        5 => Fault::LoseAnswer(500),
        _ => Fault::Pass,
    })));
    let t = Instant::now();
    let mut checks = 0;
    while t.elapsed() < Duration::from_secs(6) {
        assert_confirmed_are_durable(&env, &peers).await;
        checks += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Phase 2: no leader for 3 s: every request answered 500. What hax
    // confirms meanwhile must have been durable when the window opened
    // (its writes landed before; only the confirmation was on its way), and
    // nothing reaches Consul in the window.
    proxy.set_schedule(Some(Box::new(|_, _, _| Fault::Refuse(500))));
    wait_for(
        "writes forwarded before the window to be answered",
        T,
        || async { (proxy.writes_in_flight() == 0).then_some(()) },
    )
    .await;
    let durable_at_start = recorded_events(&env, &peers).await;
    let at_start = assert_confirmed_are_durable(&env, &peers).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let at_end = assert_confirmed_are_durable(&env, &peers).await;
    assert_eq!(
        recorded_events(&env, &peers).await,
        durable_at_start,
        "events recorded while every request to Consul was refused"
    );
    for (p, durable) in peers.iter().zip(&durable_at_start) {
        let confirmed = p.stats().confirmed;
        assert!(
            confirmed <= *durable,
            "{}: {confirmed} events confirmed, {durable} durable when Consul lost its leader",
            p.fid()
        );
    }
    eprintln!(
        "no leader for 3 s: {} confirmations landed, of events durable before",
        at_end - at_start
    );
    // Phase 3: back to one request in three failing, then clean.
    proxy.set_schedule(Some(Box::new(|n, _, _| match n % 6 {
        1 => Fault::Refuse(429),
        3 => Fault::LoseAnswer(500),
        _ => Fault::Pass,
    })));
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);
    let sent = storm.await.unwrap();
    proxy.set_schedule(None);
    for p in peers.iter() {
        p.wait_all_confirmed(Duration::from_secs(60)).await.unwrap();
    }
    let repeats = assert_all_recorded(&env, &peers, &sent).await;
    let stats = proxy.stats();
    let m = env.wait_idle().await;
    eprintln!(
        "{} events, {checks} durability checks; proxy: {} requests, faults {:?}; \
         hax retries {}, errors {}; BQ entries applied twice: {repeats}",
        sent.iter().map(Vec::len).sum::<usize>(),
        stats.requests,
        stats.faults,
        m.n("hax_consul_retries_total"),
        m.n("hax_consul_errors_total"),
    );
    assert!(stats.injected() > 100, "{stats:?}");
    assert_no_violations(&peers);
    env.assert_no_contract_violations();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hax_waits_for_a_consul_leader() {
    let agent = DevAgent::builder()
        .mode(AgentMode::Leaderless)
        .start()
        .await
        .expect("agent");
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("hax.log");
    let http = std::net::SocketAddr::from(([127, 0, 0, 1], hax_e2e::free_port()));
    let mut hax = std::process::Command::new(hax_binary())
        .args(["--consul-address", &agent.http_addr().to_string()])
        .args(["--http-bind", &http.to_string()])
        .args(["--log-format", "json"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let pid = nix::unistd::Pid::from_raw(hax.id() as i32);
    let no_leader = || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .matches("consul has no leader yet")
            .count()
    };
    let n = wait_for("hax to ask for a leader three times", T, || async {
        (no_leader() >= 3).then(no_leader)
    })
    .await;
    // Still waiting, not ready, not crashed.
    assert!(hax.try_wait().unwrap().is_none(), "hax exited");
    assert!(
        std::net::TcpStream::connect(http).is_err(),
        "hax serves HTTP without Consul"
    );
    let t = Instant::now();
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let status = loop {
        if let Some(s) = hax.try_wait().unwrap() {
            break s;
        }
        assert!(t.elapsed() < T, "hax did not stop");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    eprintln!(
        "no leader: {n} waits logged; SIGTERM -> {status} in {:?}",
        t.elapsed()
    );
    assert!(status.success(), "{status}");
}

/// Kills of the agent while BQ entries are broadcast and events recorded.
async fn consul_killed_during_broadcasts(kills: usize) {
    const DRIVES: usize = 6;
    let mut env = Env::start(Options {
        ioservices: DRIVES as u64,
        mode: AgentMode::Persistent,
        ..Options::default()
    })
    .await;
    let peers = Arc::new(env.connect_peers(3).await);
    let stop = Arc::new(AtomicBool::new(false));
    let storm = event_storm(&peers, &stop, Duration::from_millis(50));
    // Entry i: drive i % 6 goes online or failed, in turns: consecutive
    // entries differ, so a repeat or a gap shows in what a peer receives.
    let (node, drives) = (env.sample.node.clone(), env.sample.drives.clone());
    let state = |i: usize| {
        if (i / DRIVES) % 2 == 0 {
            "failed"
        } else {
            "online"
        }
    };
    let note = move |i: usize| {
        let s = if (i / DRIVES) % 2 == 0 {
            HaState::Failed
        } else {
            HaState::Online
        };
        (drives[i % DRIVES], s)
    };
    let publisher = tokio::spawn({
        let (client, stop, node) = (env.client.clone(), Arc::clone(&stop), node.clone());
        async move {
            let publisher = QueuePublisher::new(client, QueueKind::Broadcast);
            let (mut i, mut last_epoch) = (0, 0);
            while !stop.load(Ordering::Relaxed) {
                // The agent may be down: retry the same entry until it is in.
                match publisher
                    .publish(&device_entry(&node, i % DRIVES, state(i)))
                    .await
                {
                    Ok(e) => {
                        i += 1;
                        last_epoch = e;
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
                tokio::time::sleep(Duration::from_millis(30)).await;
            }
            (i, last_epoch)
        }
    });
    let mut outages = Vec::new();
    for k in 0..kills {
        // A random moment of the run, then 1 to 3 s down.
        tokio::time::sleep(Duration::from_millis(fastrand::u64(300..1500))).await;
        env.agent.kill();
        let down = Duration::from_millis(fastrand::u64(1000..3000));
        tokio::time::sleep(down).await;
        let t = Instant::now();
        env.agent.start_again().await.expect("agent back");
        outages.push((down, t.elapsed()));
        eprintln!("kill {k}: down {down:?}, agent back in {:?}", t.elapsed());
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    let (published, last_epoch) = publisher.await.unwrap();
    let sent = storm.await.unwrap();
    for p in peers.iter() {
        p.wait_all_confirmed(Duration::from_secs(60)).await.unwrap();
    }
    let last = note(published - 1);
    let is_drive = |f: Fid| env.sample.drives.contains(&f);
    let drive_notes = |p: &SimProcess| -> Vec<(Fid, HaState)> {
        nvec_sets(&p.received())
            .into_iter()
            .filter(|n| n.len() == 1 && is_drive(n[0].fid))
            .map(|n| (n[0].fid, n[0].state))
            .collect()
    };
    // Entries repeat their note every 12: the offset tells when the last
    // one was handled.
    wait_for(
        "every peer to receive the last entry",
        Duration::from_secs(60),
        || async {
            (env.bq_offset().await >= last_epoch
                && peers.iter().all(|p| drive_notes(p).last() == Some(&last)))
            .then_some(())
        },
    )
    .await;
    let at_wait: Vec<usize> = peers.iter().map(|p| drive_notes(p).len()).collect();
    let repeats = assert_all_recorded(&env, &peers, &sent).await;

    // What the BQ holds, in order: the publisher retries an entry whose
    // answer a kill cut off, so an entry may be there twice, and peers must
    // get it twice. Every peer gets exactly the BQ's sequence: no gap, no
    // repeat.
    let device_index = |d: &str| (0..DRIVES).find(|&i| hax_e2e::ios_device(i) == d);
    let in_bq: Vec<(Fid, HaState)> = env
        .bq()
        .await
        .into_iter()
        .filter_map(|(n, m)| match m.broadcast(&format!("bq/{n}")).ok()? {
            BroadcastMessage::DeviceState(u) => {
                let i = device_index(&u.device)?;
                let s = if u.state == "failed" {
                    HaState::Failed
                } else {
                    HaState::Online
                };
                Some((env.sample.drives[i], s))
            }
            _ => None,
        })
        .collect();
    assert!(
        in_bq.len() >= published,
        "{} entries in the BQ, {published} published",
        in_bq.len()
    );
    let mut repeated = 0;
    for (p, at_wait) in peers.iter().zip(at_wait) {
        let got = drive_notes(p);
        assert_eq!(
            got.len(),
            at_wait,
            "{}: drive notes received after the last entry: {:?}",
            p.fid(),
            &got[at_wait.min(got.len())..]
        );
        if let Some(k) = (0..got.len().min(in_bq.len())).find(|&k| got[k] != in_bq[k]) {
            panic!(
                "{}: note {k} {:?} differs from BQ entry {k} {:?} ({} notes, {} entries)",
                p.fid(),
                got[k],
                in_bq[k],
                got.len(),
                in_bq.len()
            );
        }
        assert_eq!(got.len(), in_bq.len(), "{}: every BQ entry, once", p.fid());
        repeated += got.windows(2).filter(|w| w[0] == w[1]).count();
    }
    eprintln!(
        "{kills} kills {outages:?}: {published} BQ entries published ({} in the BQ: the \
         publisher's retries), each received once by {} peers ({repeated} notes equal to the \
         one before, all BQ entries); {} events, {repeats} BQ event entries applied twice",
        in_bq.len(),
        peers.len(),
        sent.iter().map(Vec::len).sum::<usize>()
    );
    assert_eq!(repeats, 0, "BQ event entries appended twice");
    assert_no_violations(&peers);
    env.assert_no_contract_violations();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consul_sigkilled_during_broadcasts() {
    consul_killed_during_broadcasts(3).await;
}

/// `cargo test -p hax-e2e --test faults_consul -- --ignored --nocapture`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "long: 10 kills of the agent (about 40 s)"]
async fn consul_sigkilled_during_broadcasts_10_times() {
    consul_killed_during_broadcasts(10).await;
}
