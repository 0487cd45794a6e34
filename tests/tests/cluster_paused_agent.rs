//! A node's Consul agent frozen (SIGSTOP) for 30 s under a running cluster:
//! that node's hax waits. Its processes' events are not confirmed while the
//! agent cannot make them durable, no other node hears of them, and the
//! node's processes hear nothing of the others meanwhile; once the agent
//! resumes, every event lands, and every process hears of each once.

use std::time::{Duration, Instant};

use hax_core::{HaState, ProcessEventKind};
use hax_e2e::cluster::{bq_consumed, spec, start};
use hax_e2e::{assert_no_violations, sets_with, wait_for};

/// How long the agent stays frozen.
const PAUSE: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_agent_holds_its_node_back_and_loses_nothing() {
    let mut bed = start(spec(3, 1)).await;
    let names: Vec<String> = bed.nodes.iter().map(|n| n.name.clone()).collect();
    // [confd, ios] on each node; the RC leader is the first node, the
    // frozen one the second.
    let (frozen, other) = (1, 0);
    let here = bed.nodes[frozen].peers[1].fid();
    let there = bed.nodes[other].peers[1].fid();

    bed.agents.clients[frozen].pause().expect("agent frozen");
    let t = Instant::now();
    let frozen_peer = bed.nodes[frozen].peer(here).expect("peer");
    frozen_peer
        .send_process_event(ProcessEventKind::DtmRecovered)
        .expect("sent");
    let other_peer = bed.nodes[other].peer(there).expect("peer");
    other_peer
        .send_process_event(ProcessEventKind::DtmRecovered)
        .expect("sent");
    other_peer
        .wait_all_confirmed(Duration::from_secs(15))
        .await
        .expect("a live node's event confirmed");

    // DTM_RECOVERED is told as ONLINE; before it, the ioservices were
    // told DTM_RECOVERING only.
    while t.elapsed() < PAUSE {
        assert!(
            !frozen_peer.unconfirmed().is_empty(),
            "confirmed while its node's agent is frozen"
        );
        for p in bed.peers().filter(|p| p.fid() != here) {
            assert_eq!(
                sets_with(p, here, HaState::Online),
                0,
                "{} heard of an event its node could not record",
                p.fid()
            );
        }
        for p in &bed.nodes[frozen].peers {
            assert_eq!(
                sets_with(p, there, HaState::Online),
                0,
                "{} heard from the queue its node's agent cannot serve",
                p.fid()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    bed.agents.clients[frozen].resume().expect("agent resumed");
    let t = Instant::now();
    frozen_peer
        .wait_all_confirmed(Duration::from_secs(30))
        .await
        .expect("confirmed once the agent is back");
    eprintln!("event confirmed {:?} after the agent resumed", t.elapsed());
    let recipients: Vec<_> = bed
        .peers()
        .filter(|p| p.fid() != here && p.fid() != there)
        .collect();
    wait_for(
        "every process to hear of both events",
        Duration::from_secs(30),
        || async {
            recipients
                .iter()
                .all(|p| {
                    sets_with(p, here, HaState::Online) >= 1
                        && sets_with(p, there, HaState::Online) >= 1
                })
                .then_some(())
        },
    )
    .await;
    eprintln!(
        "both events heard everywhere {:?} after the agent resumed",
        t.elapsed()
    );
    let client = bed.node_client(&names[other]).expect("client");
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    wait_for(
        "every node to consume the queue",
        Duration::from_secs(30),
        || async { bq_consumed(&client, &refs).await.then_some(()) },
    )
    .await;
    for p in &recipients {
        for f in [here, there] {
            assert_eq!(
                sets_with(p, f, HaState::Online),
                1,
                "{} heard of {f}'s recovery once",
                p.fid()
            );
        }
    }
    for n in &mut bed.nodes {
        assert_no_violations(&n.peers);
    }
}
