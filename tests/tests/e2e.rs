//! End to end: a real Consul agent whose watches POST to hax, the sample
//! cluster, the real `hax` binary, and simulated m0d peers. Each test has
//! its own agent, ports and hax, so they run in parallel.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hax_consul::catalog::CheckStatus;
use hax_consul::dev_agent::AgentMode;
use hax_consul::queue::QueuePublisher;
use hax_consul::schema::{
    BroadcastMessage, ConfState, ObjState, ProcessState, ProcessStatus, ProcessType, QueueKind,
    QueueMessage,
};
use hax_core::{Fid, FidType, HaState, ProcessEventKind};
use hax_e2e::{ft, ios_device, ios_fid, nvec_sets, wait_for, Env, Options, T};
use hax_sim::{LinkOutcome, LinkState, SimProcess};

/// PROCESS-STATE-UPDATE entries of the BQ about `fid`, in epoch order.
async fn bq_process_updates(env: &Env, fid: Fid) -> Vec<ProcessState> {
    env.bq()
        .await
        .into_iter()
        .filter_map(|(n, m)| match m.broadcast(&format!("bq/{n}")).ok()? {
            BroadcastMessage::ProcessStateUpdate(u) if u.fid == ft(fid) => Some(u.state),
            _ => None,
        })
        .collect()
}

/// How many NVEC SETs `p` received with the note `(fid, state)`.
fn sets_with(p: &SimProcess, fid: Fid, state: HaState) -> usize {
    nvec_sets(&p.received())
        .iter()
        .filter(|notes| notes.iter().any(|n| n.fid == fid && n.state == state))
        .count()
}

fn assert_no_violations(peers: &[SimProcess]) {
    for p in peers {
        assert!(
            p.violations().is_empty(),
            "{} saw protocol violations: {:?}",
            p.fid(),
            p.violations()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entrypoint_events_and_answers() {
    let env = Env::start(Options::default()).await;
    let s = env.sample.clone();
    let peers = env.connect_peers(3).await;

    // Entrypoints: the sample's confd, quorum and principal RM (the rms
    // service of the confd process, on the leader's node).
    let rm = Fid::typed(FidType::Service, 1, 11);
    for p in &peers {
        let e = p.entrypoint().expect("entrypoint");
        assert_eq!(e.outcome, LinkOutcome::New);
        assert!(e.warnings().is_empty(), "{:?}", e.warnings());
        let confds: Vec<_> = e
            .reply
            .confds
            .iter()
            .map(|c| (c.fid, c.ep.clone()))
            .collect();
        assert_eq!(confds, vec![s.confd.clone()]);
        assert_eq!(e.reply.quorum, 1);
        assert_eq!(
            (e.reply.rm_fid, e.reply.rm_ep.as_str()),
            (rm, s.confd.1.as_str())
        );
    }

    // Process events: confirmed only once durable, so KV and the BQ hold
    // them as soon as each peer has its confirmations.
    for p in &peers {
        p.send_process_event(ProcessEventKind::Starting).unwrap();
        p.send_process_event(ProcessEventKind::Started).unwrap();
    }
    for p in &peers {
        p.wait_all_confirmed(T).await.unwrap();
    }
    for p in &peers {
        assert_eq!(
            env.process_status(p.fid()).await,
            Some(ProcessStatus {
                state: ProcessState::Started,
                kind: ProcessType::M0d
            }),
            "processes/{}",
            p.fid()
        );
        assert_eq!(
            bq_process_updates(&env, p.fid()).await,
            vec![ProcessState::Starting, ProcessState::Started],
            "BQ entries of {}",
            p.fid()
        );
    }
    // Every peer hears that every peer started (DTM_RECOVERING).
    wait_for("every peer to hear of every start", T, || async {
        peers
            .iter()
            .all(|p| {
                peers
                    .iter()
                    .all(|q| sets_with(p, q.fid(), HaState::DtmRecovering) >= 1)
            })
            .then_some(())
    })
    .await;

    // NVEC GET answers from what Consul says.
    let p = &peers[0];
    let sdev = s.sdevs[0];
    let notes = p.nvec_get(&[sdev, s.drives[0]]).await.unwrap();
    assert_eq!(notes[0].state, HaState::Online, "{notes:?}");
    let key = env.sdev_key(0).await;
    for (word, state) in [
        (ObjState::Failed, HaState::Failed),
        (ObjState::Online, HaState::Online),
    ] {
        env.kv
            .set_conf_state(&key, ConfState::Word(word), &[])
            .await
            .unwrap();
        wait_for(
            &format!("NVEC GET of the sdev to answer {state}"),
            T,
            || async {
                let notes = p.nvec_get(&[sdev]).await.unwrap();
                (notes[0].state == state).then_some(())
            },
        )
        .await;
    }

    // Failure vector: the pool asked for, the cookie echoed (hax-sim checks
    // it), no failed devices.
    let pool = Fid::typed(FidType::Pool, 1, 1);
    let rep = peers[1].failvec(pool).await.unwrap();
    assert_eq!(rep.pool, pool);
    assert!(rep.notes.is_empty(), "{:?}", rep.notes);

    // Keepalive answered with the request's id (hax-sim checks it).
    peers[2].keepalive().await.unwrap();

    let m = env.metrics().await;
    assert_eq!(m.n("hax_links"), 4, "three peers and hax's own link");
    assert_eq!(
        m.n("hax_entrypoint_requests_total{outcome=\"received\"}"),
        4
    );
    // Six from the peers, two from hax's own start on its self link.
    assert_eq!(
        m.n("hax_messages_total{direction=\"in\",type=\"event_process\"}"),
        8
    );
    assert_eq!(
        m.n("hax_messages_total{direction=\"in\",type=\"keepalive_req\"}"),
        1
    );
    assert_eq!(
        m.n("hax_messages_total{direction=\"out\",type=\"keepalive_rep\"}"),
        1
    );
    assert_no_violations(&peers);
    env.assert_no_contract_violations();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_http_input_changes_nothing() {
    let env = Env::start(Options::default()).await;
    let peers = env.connect_peers(1).await;
    peers[0]
        .send_process_event(ProcessEventKind::Started)
        .unwrap();
    peers[0].wait_all_confirmed(T).await.unwrap();
    env.wait_bq_consumed().await;
    let kv_before = env.client.kv_list("").await.unwrap().value;
    let m_before = env.wait_idle().await;

    let bad = [
        ("/", "{not json"),
        ("/", "{\"a\": 1}"),
        (
            "/",
            r#"[{"Node": {"Node": "n", "Address": "127.0.0.1"},
                 "Service": {"ID": "not-a-key", "Service": "ios", "Port": 0},
                 "Checks": [{"Node": "n", "CheckID": "service:x", "Name": "x",
                             "Status": "critical", "ServiceID": "x", "ServiceName": "ios"}]}]"#,
        ),
        (
            "/watcher/bq",
            r#"[{"Key": "bq/999", "Value": "***", "Flags": 0}]"#,
        ),
        ("/watcher/bq", "null null"),
        (
            "/watcher/processes",
            r#"{"Key": "processes/zz", "Value": null}"#,
        ),
        ("/no/such/route", "{}"),
    ];
    for (path, body) in bad {
        let (status, answer) = env.http_post(path, body).await.unwrap();
        assert!(
            (400..500).contains(&status),
            "POST {path} {body:?}: {status} {answer}"
        );
    }

    // Nothing changed: same KV (indexes included), no broadcast, no update
    // taken, hax still healthy.
    assert!(env.healthz().await);
    let m = env.metrics().await;
    assert_eq!(
        m.n("hax_watch_updates_total"),
        m_before.n("hax_watch_updates_total")
    );
    assert_eq!(
        m.n("hax_broadcasts_total"),
        m_before.n("hax_broadcasts_total")
    );
    let kv_after = env.client.kv_list("").await.unwrap().value;
    assert_eq!(kv_before, kv_after);
    assert!(peers[0].received().len() == peers[0].received_count());
    let _ = BTreeSet::<u64>::new();
    let _ = Duration::ZERO;
    let _ = ios_fid(0);
    let _ = CheckStatus::Passing;
    env.assert_no_contract_violations();
}

/// A BQ `M0_HA_MSG_NVEC` entry: the disk of ioservice `i` is `state`.
fn device_entry(node: &str, i: usize, state: &str) -> QueueMessage {
    QueueMessage::new(
        "2026-01-01 00:00:00.000000",
        "M0_HA_MSG_NVEC",
        serde_json::json!({
            "node": node,
            "device": ios_device(i),
            "state": state,
        }),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_change_reaches_every_peer_exactly_once() {
    let env = Env::start(Options {
        ioservices: 4,
        ..Options::default()
    })
    .await;
    let peers = env.connect_peers(4).await;
    for p in &peers {
        p.send_process_event(ProcessEventKind::Started).unwrap();
    }
    for p in &peers {
        p.wait_all_confirmed(T).await.unwrap();
    }
    env.wait_bq_consumed().await;

    // Consul sees ioservice 1 fail: its check goes critical; the service
    // watch POSTs to hax.
    let victim = peers[1].fid();
    env.set_check(victim.key, CheckStatus::Critical).await;
    wait_for("the failure recorded in processes/<fid>", T, || async {
        (env.process_status(victim).await
            == Some(ProcessStatus {
                state: ProcessState::Stopped,
                kind: ProcessType::M0d,
            }))
        .then_some(())
    })
    .await;
    wait_for("every peer to hear the failure (TRANSIENT)", T, || async {
        peers
            .iter()
            .all(|p| sets_with(p, victim, HaState::Transient) >= 1)
            .then_some(())
    })
    .await;

    // Quiescence by condition: the BQ entry announcing the failure is
    // consumed; then a marker broadcast (a BQ device entry) goes through
    // after anything still queued, and is the only broadcast meanwhile.
    env.wait_bq_consumed().await;
    let before = env.wait_idle().await.n("hax_broadcasts_total");
    let drive = env.sample.drives[3];
    env.publish_bq(&device_entry(&env.sample.node, 3, "online"))
        .await;
    wait_for("every peer to receive the marker", T, || async {
        peers
            .iter()
            .all(|p| {
                nvec_sets(&p.received())
                    .iter()
                    .any(|n| n.len() == 1 && n[0].fid == drive && n[0].state == HaState::Online)
            })
            .then_some(())
    })
    .await;
    env.wait_bq_consumed().await;
    let after = env.wait_idle().await.n("hax_broadcasts_total");
    assert_eq!(after, before + 1, "only the marker was broadcast meanwhile");

    // Exactly one TRANSIENT per peer (the broadcast goes to every link; the
    // victim's process is still connected, so it gets one too).
    for p in &peers {
        assert_eq!(
            sets_with(p, victim, HaState::Transient),
            1,
            "{} received {:?}",
            p.fid(),
            nvec_sets(&p.received())
        );
    }
    // Recorded: processes/<fid> STOPPED (above), its configuration object
    // offline, and one PROCESS-STATE-UPDATE for the other nodes.
    let conf = env.process_conf_key(victim).await;
    assert_eq!(env.conf_state(&conf).await.as_deref(), Some("offline"));
    assert_eq!(
        bq_process_updates(&env, victim).await,
        vec![ProcessState::Started, ProcessState::Stopped]
    );
    assert_no_violations(&peers);
    env.assert_no_contract_violations();
}

/// Device states of BQ entries, with the note state each is broadcast as.
const DEVICE_STATES: [(&str, HaState); 6] = [
    ("online", HaState::Online),
    ("failed", HaState::Failed),
    ("offline", HaState::Transient),
    ("repair", HaState::Repair),
    ("repaired", HaState::Repaired),
    ("rebalance", HaState::Rebalance),
];

/// Position in the run of the line of `run` whose message is `message`
/// (first match), if any.
fn line_index(env: &Env, run: usize, pred: impl Fn(&serde_json::Value) -> bool) -> Option<usize> {
    env.log_lines(run).iter().position(pred)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_and_restart() {
    const DRIVES: usize = 6;
    const ENTRIES: usize = 30;
    let mut env = Env::start(Options {
        ioservices: DRIVES as u64,
        ..Options::default()
    })
    .await;
    let peers = env.connect_peers(3).await;
    // Entry i: drive i % 6 goes to state i / 6: every entry's broadcast is
    // a distinct one-note NVEC SET.
    let (node, drives) = (env.sample.node.clone(), env.sample.drives.clone());
    let entry = |i: usize| device_entry(&node, i % DRIVES, DEVICE_STATES[i / DRIVES].0);
    let note = |i: usize| (drives[i % DRIVES], DEVICE_STATES[i / DRIVES].1);
    let index_of = |n: &hax_core::HaNote| (0..ENTRIES).find(|&i| note(i) == (n.fid, n.state));

    // A run of entries; hax is killed once peer 0 has seen four of them,
    // while the rest are still being published; more are published while
    // it is down.
    let publisher = QueuePublisher::new(env.client.clone(), QueueKind::Broadcast);
    let first: Vec<QueueMessage> = (0..12).map(entry).collect();
    let run = tokio::spawn(async move {
        let mut epochs = Vec::new();
        for m in &first {
            epochs.push(publisher.publish(m).await.expect("publish"));
        }
        epochs
    });
    peers[0].wait_received(4, T).await.unwrap();
    env.sigkill();
    // What each peer got from the first run: all it read before the
    // connection ended.
    let mut before_kill = Vec::new();
    for p in &peers {
        p.wait_state(LinkState::Disconnected, T).await.unwrap();
        before_kill.push(p.received_count());
    }
    let mut epochs = run.await.unwrap();
    for i in 12..20 {
        epochs.push(env.publish_bq(&entry(i)).await);
    }

    // Restarted, the peers come back: new links whose tags continue.
    env.start_hax().await;
    for p in &peers {
        let e = p.reattach().await.unwrap();
        assert_eq!(e.outcome, LinkOutcome::Reconnected, "{}", p.fid());
    }
    for i in 20..ENTRIES {
        epochs.push(env.publish_bq(&entry(i)).await);
    }
    let last = *epochs.last().unwrap();
    wait_for("the BQ offset to reach the last entry", T, || async {
        (env.bq_offset().await == last).then_some(())
    })
    .await;
    wait_for("every peer to receive the last entry", T, || async {
        peers
            .iter()
            .all(|p| {
                nvec_sets(&p.received())
                    .iter()
                    .any(|n| n.len() == 1 && index_of(&n[0]) == Some(ENTRIES - 1))
            })
            .then_some(())
    })
    .await;

    // Which entries each run of hax handled, in order.
    let handled = |run: usize| -> Vec<usize> {
        env.log_messages(run, "BQ message")
            .iter()
            .filter_map(|l| {
                let key = l["key"].as_str()?;
                let n: u64 = key.strip_prefix("bq/")?.parse().ok()?;
                epochs.iter().position(|e| *e == n)
            })
            .collect()
    };
    let (h1, h2) = (handled(1), handled(2));
    let k1 = h1.len();
    assert_eq!(
        h1,
        (0..k1).collect::<Vec<_>>(),
        "run 1 handled a prefix, in order"
    );
    let s = *h2.first().expect("run 2 handled entries");
    assert_eq!(
        h2,
        (s..ENTRIES).collect::<Vec<_>>(),
        "run 2 handled the rest, in order"
    );
    // Nothing skipped; at most the entry whose commit the kill lost is
    // handled again.
    assert!(
        s == k1 || s + 1 == k1,
        "run 1 handled {k1} entries, run 2 started at {s}"
    );
    let repeated = (s + 1 == k1).then_some(s);
    eprintln!(
        "run 1 handled {k1} entries (of 12 published while it ran), run 2 from entry {s}; \
         repeated by hax: {repeated:?}"
    );

    for (p, before) in peers.iter().zip(before_kill) {
        let got = p.received();
        let new_link = p.link_id();
        let indexes = |rs: &[hax_sim::Received]| -> Vec<usize> {
            nvec_sets(rs)
                .into_iter()
                .map(|n| {
                    assert_eq!(n.len(), 1, "{n:?}");
                    index_of(&n[0]).unwrap_or_else(|| panic!("unexpected note {n:?}"))
                })
                .collect()
        };
        let (r1, r2) = (indexes(&got[..before]), indexes(&got[before..]));
        // Before the kill: every entry run 1 handled, in order, except
        // possibly the last one if it was still on its way.
        let m = r1.len();
        assert_eq!(
            r1,
            (0..m).collect::<Vec<_>>(),
            "{}: before the kill",
            p.fid()
        );
        assert!(m == k1 || m + 1 == k1, "{}: got {m} of {k1}", p.fid());
        if m + 1 == k1 {
            assert_eq!(
                repeated,
                Some(m),
                "{}: entry {m} was handed over, committed and never received",
                p.fid()
            );
        }
        // After the restart: from some entry on, everything, in order.
        // Entries run 2 took before this peer's new link existed went to the
        // links there were (hax's own): the peer cannot have them.
        let j = *r2.first().expect("entries after the restart");
        assert_eq!(
            r2,
            (j..ENTRIES).collect::<Vec<_>>(),
            "{}: after the restart",
            p.fid()
        );
        let connected = line_index(&env, 2, |l| {
            l["message"]
                .as_str()
                .is_some_and(|m| m.starts_with(&format!("link {new_link} connected")))
        })
        .expect("the new link in run 2's log");
        let lines = env.log_lines(2);
        let first_after = lines[connected..]
            .iter()
            .filter(|l| l["message"] == "BQ message")
            .filter_map(|l| {
                let n: u64 = l["key"].as_str()?.strip_prefix("bq/")?.parse().ok()?;
                epochs.iter().position(|e| *e == n)
            })
            .next()
            .unwrap_or(ENTRIES);
        assert!(
            j <= first_after && j >= s,
            "{}: after the restart from entry {j}; run 2 handled from {s}, \
             the first after the link came is {first_after}",
            p.fid()
        );
        let repeats = usize::from(r1.last() == r2.first());
        assert!(repeats == 0 || repeated == r2.first().copied());
        eprintln!(
            "{}: {m} entries before the kill, from {j} after the restart ({} taken before it \
             reattached), repeats {repeats}",
            p.fid(),
            j.saturating_sub(s)
        );
    }
    assert_no_violations(&peers);
    env.assert_no_contract_violations();
}

fn recorded_as(e: ProcessEventKind) -> ProcessState {
    match e {
        ProcessEventKind::Starting => ProcessState::Starting,
        ProcessEventKind::Started => ProcessState::Started,
        ProcessEventKind::Stopping => ProcessState::Stopping,
        ProcessEventKind::Stopped => ProcessState::Stopped,
        ProcessEventKind::DtmRecovered => ProcessState::DtmRecovered,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consul_outage_during_an_event_storm() {
    const OUTAGE: Duration = Duration::from_secs(10);
    const CYCLE: [ProcessEventKind; 3] = [
        ProcessEventKind::Starting,
        ProcessEventKind::Started,
        ProcessEventKind::DtmRecovered,
    ];
    let mut env = Env::start(Options {
        mode: AgentMode::Persistent,
        ..Options::default()
    })
    .await;
    let peers = Arc::new(env.connect_peers(3).await);

    // The storm: every peer sends a process event every 50 ms, without
    // waiting for confirmations, before, during and after the outage.
    let stop = Arc::new(AtomicBool::new(false));
    let storm = tokio::spawn({
        let (peers, stop) = (Arc::clone(&peers), Arc::clone(&stop));
        async move {
            let mut sent = vec![Vec::new(); peers.len()];
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                for (k, p) in peers.iter().enumerate() {
                    p.send_process_event(CYCLE[i % CYCLE.len()]).expect("sent");
                    sent[k].push(CYCLE[i % CYCLE.len()]);
                }
                i += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            sent
        }
    });
    wait_for("events confirmed before the outage", T, || async {
        peers
            .iter()
            .all(|p| p.stats().confirmed >= 10)
            .then_some(())
    })
    .await;

    env.agent.kill();
    env.wait_metrics("hax to see the outage", |m| m.n("hax_consul_outage") == 1)
        .await;
    let confirmed_at_kill: Vec<u64> = peers.iter().map(|p| p.stats().confirmed).collect();
    tokio::time::sleep(OUTAGE).await;
    // Nothing is confirmed that is not durable: while Consul is away the
    // peers' events wait.
    for p in peers.iter() {
        assert!(!p.unconfirmed().is_empty(), "{}: all confirmed", p.fid());
    }
    eprintln!(
        "during the outage: {} events unconfirmed, {} confirmed since the kill",
        peers.iter().map(|p| p.unconfirmed().len()).sum::<usize>(),
        peers
            .iter()
            .zip(&confirmed_at_kill)
            .map(|(p, c)| p.stats().confirmed - c)
            .sum::<u64>()
    );
    let back = std::time::Instant::now();
    env.agent.start_again().await.expect("agent back");
    let confirmed_at_restart: Vec<u64> = peers.iter().map(|p| p.stats().confirmed).collect();
    wait_for(
        "events confirmed again",
        Duration::from_secs(30),
        || async {
            peers
                .iter()
                .zip(&confirmed_at_restart)
                .all(|(p, c)| p.stats().confirmed > *c)
                .then_some(())
        },
    )
    .await;
    eprintln!(
        "confirmations resumed {:?} after the agent was started again",
        back.elapsed()
    );
    stop.store(true, Ordering::Relaxed);
    let sent = storm.await.unwrap();
    for p in peers.iter() {
        p.wait_all_confirmed(Duration::from_secs(30)).await.unwrap();
    }
    eprintln!(
        "every event confirmed {:?} after the agent was started again; {} events",
        back.elapsed(),
        sent.iter().map(Vec::len).sum::<usize>()
    );

    // Nothing lost: each process's last event is its recorded state, and the
    // BQ holds every event in order (a publish whose answer the outage lost
    // may be applied twice: a repeat of the same state in a row).
    let mut repeats = 0;
    for (p, sent) in peers.iter().zip(&sent) {
        let last = recorded_as(*sent.last().unwrap());
        assert_eq!(
            env.process_status(p.fid()).await.map(|s| s.state),
            Some(last),
            "{}",
            p.fid()
        );
        let mut bq = bq_process_updates(&env, p.fid()).await;
        let n = bq.len();
        bq.dedup();
        repeats += n - bq.len();
        let want: Vec<ProcessState> = sent.iter().map(|e| recorded_as(*e)).collect();
        assert_eq!(bq, want, "{}: BQ entries", p.fid());
        let s = p.stats();
        assert_eq!(
            (s.sent, s.confirmed, s.resent),
            (sent.len() as u64, s.sent, 0)
        );
    }
    eprintln!("BQ entries applied twice: {repeats}");
    assert_eq!(env.metrics().await.n("hax_consul_outage"), 0);
    assert_no_violations(&peers);
    env.assert_no_contract_violations();
}

/// How a victim's failure becomes known.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Route {
    /// Its Consul check goes critical (TRANSIENT, as the original); its
    /// next incarnation's first entrypoint request declares the old one
    /// FAILED.
    ConsulCheck,
    /// Its own STOPPED event reaches hax just before it dies.
    StoppedEvent,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_peer_is_failed_and_fenced() {
    const CYCLES: usize = 10;
    let env = Env::start(Options::default()).await;
    let victim = ios_fid(0);
    // As after m0mkfs: the next start of the victim is its first m0d start,
    // every later one a restart after a crash.
    env.kv
        .put_process_restarts(&env.sample.node, ft(victim), 1)
        .await
        .unwrap();
    let mut helpers = Vec::new();
    for i in 1..3 {
        let h = SimProcess::connect(env.peer_config(i)).await.unwrap();
        h.send_process_event(ProcessEventKind::Started).unwrap();
        h.wait_all_confirmed(T).await.unwrap();
        helpers.push(h);
    }
    let incarnation = || {
        let mut cfg = env.peer_config(0);
        // A dying m0d: it never delivers what hax sends it.
        cfg.delivery = hax_sim::Delivery::Never;
        cfg
    };

    // The previous incarnation, its undelivered messages and the metrics
    // before it died.
    let mut prev: Option<(SimProcess, usize, hax_e2e::Metrics)> = None;
    let mut usage = Vec::new();
    for cycle in 0..=CYCLES {
        let v = SimProcess::connect(incarnation()).await.unwrap();
        assert_eq!(v.entrypoint().unwrap().outcome, LinkOutcome::New);
        if let Some((old, pending, before)) = prev.take() {
            // Whichever way its failure became known, the dead incarnation's
            // link went through the disconnect handshake and every message
            // pending on it ended not delivered.
            let m = env
                .wait_metrics("the dead incarnation's link to be disconnected", |m| {
                    m.n("hax_links_disconnected_total")
                        == before.n("hax_links_disconnected_total") + 1
                        && m.not_delivered() >= before.not_delivered() + pending as u64
                })
                .await;
            eprintln!(
                "cycle {cycle}: {pending} messages pending at the dead peer, {} ended not delivered",
                m.not_delivered() - before.not_delivered()
            );
            // It is fenced: coming back, it learns hax disconnected it.
            assert!(matches!(
                old.reattach().await,
                Err(hax_sim::SimError::Fenced)
            ));
            assert_eq!(old.state(), LinkState::Fenced);
            assert_no_violations(std::slice::from_ref(&old));
            for h in &helpers {
                assert!(
                    sets_with(h, victim, HaState::Failed) >= cycle,
                    "{}",
                    h.fid()
                );
            }
            if cycle == 2 {
                usage.push((env.fd_count(), env.thread_count()));
            }
        }
        if cycle == CYCLES {
            v.deliver_all();
            v.set_delivery(hax_sim::Delivery::Auto);
            break;
        }

        v.send_process_event(ProcessEventKind::Started).unwrap();
        v.wait_all_confirmed(T).await.unwrap();
        // Mid-stream: the others' events make broadcasts it never delivers.
        for h in &helpers {
            h.send_process_event(ProcessEventKind::DtmRecovered)
                .unwrap();
        }
        v.wait_received(3, T).await.unwrap();
        let before = env.wait_idle().await;
        let pending = v.undelivered().len();
        assert!(pending >= 3, "{pending}");

        let route = if cycle % 2 == 0 {
            Route::ConsulCheck
        } else {
            Route::StoppedEvent
        };
        match route {
            Route::ConsulCheck => {
                v.vanish();
                let transient: Vec<usize> = helpers
                    .iter()
                    .map(|h| sets_with(h, victim, HaState::Transient))
                    .collect();
                env.set_check(victim.key, CheckStatus::Critical).await;
                wait_for("the victim recorded STOPPED", T, || async {
                    (env.process_status(victim).await.map(|s| s.state)
                        == Some(ProcessState::Stopped))
                    .then_some(())
                })
                .await;
                wait_for("the helpers to hear TRANSIENT", T, || async {
                    helpers
                        .iter()
                        .zip(&transient)
                        .all(|(h, n)| sets_with(h, victim, HaState::Transient) > *n)
                        .then_some(())
                })
                .await;
                // TRANSIENT does not stop a link: it lives on, its messages
                // pending, until the process is declared FAILED.
                let m = env.wait_idle().await;
                assert_eq!(m.n("hax_links"), before.n("hax_links"));
                assert_eq!(m.not_delivered(), before.not_delivered());
                // The check passes again before the next incarnation.
                let updates = m.n("hax_watch_updates_total");
                env.set_check(victim.key, CheckStatus::Passing).await;
                env.wait_metrics("the passing check to reach hax", |m| {
                    m.n("hax_watch_updates_total") > updates
                })
                .await;
            }
            Route::StoppedEvent => {
                let received =
                    before.n("hax_messages_total{direction=\"in\",type=\"event_process\"}");
                v.send_process_event(ProcessEventKind::Stopped).unwrap();
                env.wait_metrics("hax to receive the STOPPED event", |m| {
                    m.n("hax_messages_total{direction=\"in\",type=\"event_process\"}") > received
                })
                .await;
                v.vanish();
                wait_for("the victim recorded STOPPED", T, || async {
                    (env.process_status(victim).await.map(|s| s.state)
                        == Some(ProcessState::Stopped))
                    .then_some(())
                })
                .await;
            }
        }
        if cycle == 0 {
            usage.push((env.fd_count(), env.thread_count()));
        }
        prev = Some((v, pending, before));
    }

    // Every message hax sent has an outcome; nothing leaked over the cycles.
    let m = env
        .wait_metrics("every sent message to have an outcome", |m| {
            m.sent() == m.outcomes()
        })
        .await;
    assert_eq!(
        m.n("hax_links"),
        4,
        "the helpers, the last incarnation, hax"
    );
    usage.push((env.fd_count(), env.thread_count()));
    eprintln!("hax (fds, threads) after cycle 1, 2 and {CYCLES}: {usage:?}");
    // Open descriptors vary by a few with Consul connections kept for reuse.
    let (fds, threads) = usage[1];
    let (fds_end, threads_end) = usage[2];
    assert!(fds_end <= fds + 3, "fds {usage:?}");
    assert!(threads_end <= threads, "threads {usage:?}");
    assert_no_violations(&helpers);
    env.assert_no_contract_violations();
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
    // connection (NOLINK included) before it is closed.
    wait_for("every peer to see its connection end", T, || async {
        peers
            .iter()
            .all(|p| matches!(p.state(), LinkState::Disconnected | LinkState::Fenced))
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
        line_index(&env, run, |l| l["message"] == m)
            .unwrap_or_else(|| panic!("no {m:?} in the log"))
    };
    // Motr stops while the pipeline still records what arrives; the
    // writes are flushed after.
    let order = [
        position("signal received: stopping (a second signal exits at once)"),
        position("stopping"),
        position("halon stopped"),
        position("consul writes finished"),
    ];
    assert!(order.windows(2).all(|w| w[0] < w[1]), "{order:?}");
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
        let recorded = bq_process_updates(&env, p.fid()).await;
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
