//! The RC leader's node dies (its Consul agent and its hax killed) under a
//! running cluster. The bed elects leaders as hare does (a session of the
//! node's agent holding `leader`, taken again by another node's elector once
//! the dead node's session is invalidated and the lock-delay has passed):
//! a new leader comes within the lock-delay plus Consul's failure detection,
//! the broadcast queue's trimming and the statistics updaters go on from
//! there, and the events the surviving nodes' processes send meanwhile are
//! each queued and heard once.

use std::time::{Duration, Instant};

use hax_consul::ConsulClient;
use hax_core::ProcessEventKind;
use hax_e2e::cluster::{bq, spec, start, told_everywhere_once};
use hax_e2e::{assert_no_violations, wait_for};
use hax_testkit::cluster::Election;

/// The lowest entry of the broadcast queue, if any.
async fn bq_first(client: &ConsulClient) -> Option<u64> {
    bq(client).await.first().map(|(n, _)| *n)
}

/// What the leader's filesystem statistics updater logs when it runs while
/// an ioservice is down (those of the dead node are): only the RC leader's
/// updater gets that far.
const STATS_SKIPPED: &str = "not every ioservice is healthy: statistics not fetched this period";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_node_dies_and_another_leads() {
    leader_node_dies(Election::Bed).await;
}

/// The same with no hare scripts: each hax elects (`[leader] elect`), and
/// the survivors' haxes take the leadership over from the dead node's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_node_dies_and_another_hax_elects_itself() {
    leader_node_dies(Election::Hax).await;
}

async fn leader_node_dies(election: Election) {
    let mut s = spec(3, 1);
    s.election = election;
    s.hax_env = [
        ("HAX_LIMITS_BQ_TRIM_INTERVAL_MS", "300"),
        // The dead node stops consuming: the leader trims past it soon.
        ("HAX_LIMITS_BQ_STALLED_AFTER_MS", "8000"),
        ("HAX_LIMITS_BQ_RETAIN", "1"),
        ("HAX_STATS_FILESYSTEM_INTERVAL_MS", "300"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    let lock_delay = s.lock_delay;
    let mut bed = start(s).await;
    let names: Vec<String> = bed.nodes.iter().map(|n| n.name.clone()).collect();
    let old = bed
        .wait_leader(None, Duration::from_secs(5))
        .await
        .expect("a leader");
    assert_eq!(old, names[0], "the first node is elected first");
    let survivor = bed.node_client(&names[1]).expect("client");

    // The first leader trims.
    wait_for(
        "the first leader to trim the queue",
        Duration::from_secs(20),
        || async { bq_first(&survivor).await.filter(|n| *n > 1) },
    )
    .await;

    bed.kill_node(&names[0]).expect("node killed");
    let t = Instant::now();
    let queue_end = bq(&survivor).await.last().map_or(0, |(n, _)| *n);
    // Events while no one leads.
    let failed = [bed.nodes[1].peers[1].fid(), bed.nodes[2].peers[1].fid()];
    for (node, f) in [(1, failed[0]), (2, failed[1])] {
        bed.nodes[node]
            .peer(f)
            .expect("peer")
            .send_process_event(ProcessEventKind::Stopped)
            .expect("sent");
    }

    let new = wait_for("a new RC leader", Duration::from_secs(45), || async {
        match bed.leader(&names[1]).await {
            Ok(Some(l)) if l != names[0] => Some(l),
            _ => None,
        }
    })
    .await;
    let elected = t.elapsed();
    eprintln!("{new} leads {elected:?} after {old} died (lock-delay {lock_delay:?})");
    assert!(
        elected < lock_delay + Duration::from_secs(20),
        "a new leader only {elected:?} after the old one died"
    );

    // The new leader trims past what the dead node never consumed, and its
    // statistics updaters run (they skip fetching while the dead node's
    // ioservice is down, as the original does).
    wait_for(
        "the new leader to trim the queue",
        Duration::from_secs(30),
        || async { bq_first(&survivor).await.filter(|n| *n > queue_end) },
    )
    .await;
    let leader_node = bed
        .nodes
        .iter()
        .position(|n| n.name == new)
        .expect("the leader is a node");
    wait_for(
        "the new leader's statistics updater",
        Duration::from_secs(30),
        || async {
            bed.nodes[leader_node]
                .hax_log()
                .contains(STATS_SKIPPED)
                .then_some(())
        },
    )
    .await;
    eprintln!(
        "trimming and statistics resumed {:?} after the death",
        t.elapsed()
    );

    // Nothing lost or repeated: each event heard once by every survivor
    // (the queue itself is trimmed meanwhile).
    for (node, f) in [(1, failed[0]), (2, failed[1])] {
        bed.nodes[node]
            .peer(f)
            .expect("peer")
            .wait_all_confirmed(Duration::from_secs(15))
            .await
            .expect("confirmed");
    }
    told_everywhere_once(&bed, &failed, &[&names[0]], true, Duration::from_secs(30)).await;
    for n in &bed.nodes[1..] {
        assert_no_violations(&n.peers);
    }
}
