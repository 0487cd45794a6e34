//! Consul servers lost under a running cluster. With one of three gone
//! (quorum kept; the Raft leader itself) no process event is lost and no
//! failure is told twice. With two gone (quorum lost) hax confirms nothing
//! it cannot make durable and tells no one; when a server returns it
//! recovers by itself: the event is confirmed, queued once and heard once
//! everywhere.

use std::time::{Duration, Instant};

use hax_core::ProcessEventKind;
use hax_e2e::cluster::{spec, start, told_down, told_everywhere_once};
use hax_e2e::{assert_no_violations, wait_for};
use hax_testkit::cluster::ClusterBed;

/// The index of the server that is the Raft leader.
async fn raft_leader(bed: &mut ClusterBed) -> usize {
    let client = bed.server_client().expect("a server");
    let addr = wait_for("a Raft leader", Duration::from_secs(15), || async {
        client.status_leader().await.ok().flatten()
    })
    .await;
    bed.agents
        .servers
        .iter()
        .position(|s| addr.ends_with(&format!(":{}", s.ports().server)))
        .unwrap_or_else(|| panic!("leader {addr} is none of the servers"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_lost_one_then_two_then_one_back() {
    let mut bed = start(spec(3, 1)).await;
    // [confd, ios] on each node.
    let ios = |bed: &ClusterBed, node: usize| bed.nodes[node].peers[1].fid();

    // One server down, the Raft leader: events sent while the others elect
    // a new one are all confirmed, queued once and heard once.
    let leader = raft_leader(&mut bed).await;
    let t = Instant::now();
    bed.agents.servers[leader].kill();
    let first = [ios(&bed, 0), ios(&bed, 1)];
    for (node, f) in [(0, first[0]), (1, first[1])] {
        bed.nodes[node]
            .peer(f)
            .expect("peer")
            .send_process_event(ProcessEventKind::Stopped)
            .expect("sent");
    }
    for (node, f) in [(0, first[0]), (1, first[1])] {
        bed.nodes[node]
            .peer(f)
            .expect("peer")
            .wait_all_confirmed(Duration::from_secs(30))
            .await
            .expect("confirmed with one server down");
    }
    told_everywhere_once(&bed, &first, &[], false, Duration::from_secs(30)).await;
    eprintln!("one server down: events landed in {:?}", t.elapsed());

    // A second server down: no quorum. The event stays unconfirmed and no
    // one hears of it, however long it lasts.
    let second = (0..3)
        .find(|i| bed.agents.servers[*i].is_running())
        .expect("a running server");
    bed.agents.servers[second].kill();
    let lost = ios(&bed, 2);
    let peer = bed.nodes[2].peer(lost).expect("peer");
    peer.send_process_event(ProcessEventKind::Stopped)
        .expect("sent");
    let window = Instant::now() + Duration::from_secs(8);
    while Instant::now() < window {
        assert!(
            !peer.unconfirmed().is_empty(),
            "STOPPED confirmed without a quorum"
        );
        for p in bed.peers().filter(|p| p.fid() != lost) {
            assert!(
                told_down(p, &[lost]).is_empty(),
                "{} told of a failure Consul does not hold",
                p.fid()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The server back: hax recovers by itself.
    let t = Instant::now();
    bed.agents.servers[second]
        .spawn()
        .expect("server restarted");
    bed.nodes[2]
        .peer(lost)
        .expect("peer")
        .wait_all_confirmed(Duration::from_secs(45))
        .await
        .expect("confirmed once the quorum is back");
    eprintln!("quorum back: the event confirmed in {:?}", t.elapsed());
    let mut all = first.to_vec();
    all.push(lost);
    told_everywhere_once(&bed, &all, &[], false, Duration::from_secs(30)).await;
    for n in &bed.nodes {
        assert_no_violations(&n.peers);
    }
}
