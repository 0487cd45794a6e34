//! State changes reach every peer: a Consul-detected failure exactly once,
//! and BQ entries across a SIGKILL of hax with nothing skipped.

use std::collections::BTreeSet;

use hax_consul::catalog::CheckStatus;
use hax_consul::queue::QueuePublisher;
use hax_consul::schema::{ProcessState, ProcessStatus, ProcessType, QueueKind, QueueMessage};
use hax_core::{HaState, ProcessEventKind};
use hax_e2e::{
    assert_no_violations, device_entry, nvec_sets, sets_with, wait_for, Env, Options, T,
};
use hax_sim::{LinkOutcome, LinkState};

/// A process of any service hare watches, here confd, that Consul finds
/// failed is heard of even when no watch delivery reaches hax (lost, or a
/// watch that cannot reach its address): hax's own rereads of Consul find it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_confd_is_heard_without_watch_deliveries() {
    let env = Env::start(Options {
        ioservices: 2,
        watches: false,
        hax_args: vec!["--limits-resync-secs".into(), "1".into()],
        ..Options::default()
    })
    .await;
    let peers = env.connect_started(2).await;
    // confd, started and recorded: a failure is acted on only for a
    // process with a recorded state.
    let (confd, endpoint) = env.sample.confd.clone();
    let mut cfg = hax_sim::SimConfig::new(env.hax_endpoint.clone(), confd);
    cfg.endpoint = endpoint;
    cfg.timeout = T;
    let confd_peer = hax_sim::SimProcess::connect(cfg).await.expect("confd peer");
    confd_peer
        .send_process_event(ProcessEventKind::Started)
        .unwrap();
    confd_peer.wait_all_confirmed(T).await.unwrap();
    env.set_check(confd.key, CheckStatus::Critical).await;
    wait_for(
        "the confd failure recorded in processes/<fid>",
        T,
        || async {
            (env.process_status(confd).await.map(|s| s.state) == Some(ProcessState::Stopped))
                .then_some(())
        },
    )
    .await;
    wait_for("every peer to hear the confd failure", T, || async {
        peers
            .iter()
            .all(|p| sets_with(p, confd, HaState::Transient) >= 1)
            .then_some(())
    })
    .await;
    assert_no_violations(&peers);
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
        env.bq_process_updates(victim).await,
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
    // Entries run 2 began to handle before every peer was back: those may
    // have gone to the links there were then. Anything later must reach
    // every peer.
    let begun_before_attach: BTreeSet<String> = env
        .log_messages(2, "BQ message")
        .iter()
        .filter_map(|l| l["key"].as_str().map(str::to_owned))
        .collect();
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
        let first_required = (s..ENTRIES)
            .find(|&i| !begun_before_attach.contains(&format!("bq/{}", epochs[i])))
            .expect("entries published after the peers came back");
        assert!(
            j <= first_required && j >= s,
            "{}: after the restart from entry {j}; run 2 handled from {s}, \
             the first begun after the peers came back is {first_required}",
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
