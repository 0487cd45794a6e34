//! On a cluster of three nodes (three Consul servers, an agent, a hax and
//! simulated m0ds per node), process failures, whether Consul reports them
//! (the process's check goes critical) or the process itself (its STOPPED
//! event), reach every other process of every node exactly once, and the
//! failures of other nodes' processes arrive in broadcast-queue order.
//!
//! A node's own failures are told to its processes by its hax directly, not
//! through the queue (docs/architecture.md, steps 6 and 13): their place
//! among other nodes' entries is not the queue's, so only their count is
//! checked on that node.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use hax_consul::catalog::CheckStatus;
use hax_core::{Fid, ProcessEventKind};
use hax_e2e::cluster::{bq_consumed, bq_stopped, spec, start, told_down};
use hax_e2e::{assert_no_violations, wait_for};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_reach_every_node_once_in_queue_order() {
    let bed = start(spec(3, 2)).await;
    let names: Vec<&str> = bed.nodes.iter().map(|n| n.name.as_str()).collect();
    // [confd, ios1, ios2] on each node.
    let ios = |node: usize, i: usize| bed.nodes[node].peers[1 + i].fid();
    let by_check = [ios(0, 0), ios(2, 1)];
    let by_event = [ios(1, 0), ios(0, 1)];
    let failed = [by_check[0], by_event[0], by_check[1], by_event[1]];

    // All at once: the haxes handle them concurrently.
    let t = Instant::now();
    bed.set_check(by_check[0], CheckStatus::Critical)
        .await
        .expect("check critical");
    bed.nodes[1]
        .peer(by_event[0])
        .expect("peer")
        .send_process_event(ProcessEventKind::Stopped)
        .expect("STOPPED sent");
    bed.set_check(by_check[1], CheckStatus::Critical)
        .await
        .expect("check critical");
    bed.nodes[0]
        .peer(by_event[1])
        .expect("peer")
        .send_process_event(ProcessEventKind::Stopped)
        .expect("STOPPED sent");

    // A failed process hears nothing more (hax takes a stopped process out
    // of its broadcasts); every other one hears of every failure.
    let recipients: Vec<(usize, &hax_sim::SimProcess)> = bed
        .nodes
        .iter()
        .enumerate()
        .flat_map(|(i, n)| n.peers.iter().map(move |p| (i, p)))
        .filter(|(_, p)| !failed.contains(&p.fid()))
        .collect();
    wait_for(
        "every process to hear of every failure",
        Duration::from_secs(30),
        || async {
            recipients
                .iter()
                .all(|(_, p)| {
                    let told = told_down(p, &failed);
                    failed.iter().all(|f| told.contains(f))
                })
                .then_some(())
        },
    )
    .await;
    eprintln!("every failure reached every node in {:?}", t.elapsed());

    // Once every hax consumed the queue to its end, nothing more can come
    // from it: then count.
    let server = bed.node_client(names[0]).expect("client");
    let queue = wait_for(
        "the queue with every failure, consumed by every node",
        Duration::from_secs(30),
        || async {
            let queue = bq_stopped(&server, &failed).await;
            (queue.len() >= failed.len() && bq_consumed(&server, &names).await).then_some(queue)
        },
    )
    .await;
    assert_eq!(
        queue.len(),
        failed.len(),
        "each failure announced once in the queue: {queue:?}"
    );
    let node_of: BTreeMap<Fid, usize> = bed
        .nodes
        .iter()
        .enumerate()
        .flat_map(|(i, n)| n.peers.iter().map(move |p| (p.fid(), i)))
        .collect();
    for (node, p) in &recipients {
        let told = told_down(p, &failed);
        for f in &failed {
            assert_eq!(
                told.iter().filter(|x| *x == f).count(),
                1,
                "{} (node {node}) told of {f} once: {told:?}",
                p.fid()
            );
        }
        let others: Vec<Fid> = told
            .iter()
            .copied()
            .filter(|f| node_of[f] != *node)
            .collect();
        let queue_order: Vec<Fid> = queue
            .iter()
            .copied()
            .filter(|f| node_of[f] != *node)
            .collect();
        assert_eq!(
            others,
            queue_order,
            "{} (node {node}) told of other nodes' failures in queue order",
            p.fid()
        );
    }
    for n in &bed.nodes {
        assert_no_violations(&n.peers);
    }
}
