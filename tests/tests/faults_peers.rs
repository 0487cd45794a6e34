//! Peers that die, hang (stop reading) or flood: hax serves the others on
//! time, and its descriptors, threads and memory stay where they were.
//! (`failed_peer.rs` covers a killed peer declared failed and fenced.)

use std::time::{Duration, Instant};

use hax_core::{Fid, HaMsg, HaMsgData, HaState, ProcessEventKind, Uint128};
use hax_e2e::{assert_no_violations, device_entry, ios_fid, nvec_sets, wait_for, Env, Options, T};
use hax_sim::rogue::RoguePeer;
use hax_sim::{LinkOutcome, SimProcess};

/// (fds, threads, RSS in KiB) of hax.
fn usage(env: &Env) -> (usize, usize, u64) {
    (env.fd_count(), env.thread_count(), env.rss_kib())
}

/// hax over six ioservices, three of whose processes have started.
async fn three_started_peers() -> (Env, Vec<SimProcess>) {
    started_peers(Vec::new()).await
}

/// [`three_started_peers`] with hax's environment `hax_env`.
async fn started_peers(hax_env: Vec<(String, String)>) -> (Env, Vec<SimProcess>) {
    let env = Env::start(Options {
        ioservices: 6,
        hax_env,
        ..Options::default()
    })
    .await;
    let peers = env.connect_started(3).await;
    (env, peers)
}

async fn connect_cycles(cycles: usize, events: bool) {
    // Each event adds a BQ entry, and every BQ watch delivery carries the
    // whole queue: with the RC leader trimming it every second, the queue
    // and hax's memory stay short whatever the number of events.
    let trimming = vec![(
        "HAX_LIMITS_BQ_TRIM_INTERVAL_MS".to_owned(),
        "1000".to_owned(),
    )];
    let (env, peers) = started_peers(trimming).await;
    // One cycle: a peer sends an event (with `events`), its connection
    // dies (a killed process), it reconnects, its event is resent and
    // confirmed.
    let cycle = |k: usize| {
        let peers = &peers;
        async move {
            let p = &peers[k % peers.len()];
            if events {
                p.send_process_event(ProcessEventKind::DtmRecovered)
                    .unwrap();
            }
            p.vanish();
            let e = p.reattach().await.unwrap();
            assert_eq!(e.outcome, LinkOutcome::Reused, "cycle {k}");
            p.wait_all_confirmed(T).await.unwrap();
        }
    };
    for k in 0..20 {
        cycle(k).await;
    }
    env.wait_idle().await;
    let before = usage(&env);
    let t = Instant::now();
    for k in 20..20 + cycles {
        cycle(k).await;
    }
    let took = t.elapsed();
    let m = env.wait_idle().await;
    let after = wait_for("hax's descriptors to settle", T, || async {
        let u = usage(&env);
        (u.0 <= before.0 + 3).then_some(u)
    })
    .await;
    let bq = env.bq_epoch().await;
    let left = env
        .client
        .kv_keys("bq/", None)
        .await
        .expect("keys")
        .value
        .len();
    eprintln!(
        "{cycles} connect/disconnect cycles in {took:?}: (fds, threads, RSS KiB) \
         {before:?} -> {after:?}; links connected {} disconnected {}; {bq} BQ entries, \
         {left} left after trimming",
        m.n("hax_links_connected_total"),
        m.n("hax_links_disconnected_total"),
    );
    assert!(after.1 <= before.1 + 1, "threads {before:?} -> {after:?}");
    assert!(
        after.2 <= before.2 + 16 * 1024,
        "RSS {before:?} -> {after:?} with {bq} BQ entries, {left} left"
    );
    assert_no_violations(&peers);
    env.assert_no_contract_violations();
}

/// 500 cycles take a few seconds: part of the default run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_disconnect_500_cycles_leak_nothing() {
    connect_cycles(500, true).await;
}

/// `cargo test -p hax-e2e --test faults_peers -- --ignored --nocapture`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "long: 20,000 cycles"]
async fn connect_disconnect_20000_cycles_leak_nothing() {
    connect_cycles(20_000, true).await;
}

/// `cargo test -p hax-e2e --test faults_peers -- --ignored --nocapture`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "long: 20,000 cycles without events"]
async fn connect_disconnect_20000_cycles_without_events_leak_nothing() {
    connect_cycles(20_000, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hung_and_flooding_peers_do_not_hold_up_the_others() {
    const ENTRIES: usize = 300;
    const FLOOD: u64 = 200_000;
    let (env, peers) = three_started_peers().await;
    env.wait_bq_consumed().await;
    let before = usage(&env);

    // A hung process: makes its link, then never reads again. A flooding
    // one: sends keepalive requests as fast as it can, reading nothing.
    let rogue = |i: usize| {
        let (ha, ep) = (env.hax_endpoint.clone(), env.peer_config(i).endpoint);
        async move { RoguePeer::connect(&ha, ios_fid(i), &ep).await }
    };
    let hung = rogue(3).await.unwrap();
    let mut flooder = rogue(4).await.unwrap();
    let flood = tokio::spawn(async move {
        let msg = HaMsg::new(HaMsgData::KeepaliveReq {
            id: Uint128::new(7, 7),
        });
        let n = flooder
            .flood(
                &msg,
                FLOOD,
                tokio::time::Instant::now() + Duration::from_secs(60),
            )
            .await;
        (flooder, n)
    });
    // Meanwhile broadcasts go to every link (the hung one included) and the
    // well-behaved peers' events must be confirmed on time.
    let node = env.sample.node.clone();
    let t = Instant::now();
    let mut worst = Duration::ZERO;
    for i in 0..ENTRIES {
        let state = if (i / 6) % 2 == 0 { "failed" } else { "online" };
        env.publish_bq(&device_entry(&node, i % 6, state)).await;
        if i % 20 == 0 {
            let s = Instant::now();
            for p in &peers {
                p.send_process_event(ProcessEventKind::DtmRecovered)
                    .unwrap();
            }
            for p in &peers {
                p.wait_all_confirmed(T).await.unwrap();
            }
            worst = worst.max(s.elapsed());
        }
    }
    let last: (Fid, HaState) = (
        env.sample.drives[(ENTRIES - 1) % 6],
        if ((ENTRIES - 1) / 6) % 2 == 0 {
            HaState::Failed
        } else {
            HaState::Online
        },
    );
    wait_for(
        "the good peers to receive the last entry",
        Duration::from_secs(60),
        || async {
            peers
                .iter()
                .all(|p| {
                    nvec_sets(&p.received())
                        .last()
                        .is_some_and(|n| n.len() == 1 && (n[0].fid, n[0].state) == last)
                })
                .then_some(())
        },
    )
    .await;
    let broadcast_time = t.elapsed();
    let (flooder, flooded) = flood.await.unwrap();
    let during = usage(&env);
    let m = env.metrics().await;
    eprintln!(
        "{ENTRIES} BQ entries broadcast in {broadcast_time:?} with a hung peer and a flooding one \
         ({flooded} of {FLOOD} keepalive requests written); slowest event confirmation \
         {worst:?}; (fds, threads, RSS KiB) {before:?} -> {during:?}; keepalives in {}",
        m.n("hax_messages_total{direction=\"in\",type=\"keepalive_req\"}")
    );
    // Held up by the hung peer, a confirmation would wait for its link's
    // sends to time out (tens of seconds); not held up, it takes under a
    // second on a quiet machine and was seen at 5.7 s on two cores shared
    // with a build. The figure itself belongs to the benchmarks.
    assert!(worst < Duration::from_secs(20), "{worst:?}");
    assert!(
        during.2 <= before.2 + 128 * 1024,
        "RSS {before:?} -> {during:?}"
    );
    // Both die; hax goes on.
    hung.kill();
    flooder.kill();
    for p in &peers {
        p.send_process_event(ProcessEventKind::DtmRecovered)
            .unwrap();
        p.wait_all_confirmed(T).await.unwrap();
    }
    assert!(env.healthz().await);
    assert_no_violations(&peers);
    env.assert_no_contract_violations();
}
