//! Broadcasts asked for together: done as one group, in call order. Runs on
//! a current-thread runtime, so that every broadcast asked for before the
//! first await is queued before the broadcaster's task looks at its queue.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use hax_consul::schema::HaxKv;
use hax_consul::ConsulClient;
use hax_core::{Fid, FidType, HaMsgData, HaNote, HaState, Halon, NvecKind, NOTES_MAX};
use hax_ha::broadcast::{wait_for_outcomes, BroadcastReport, Broadcaster};
use hax_ha::metrics::Metrics;
use hax_ha::model::broadcast::BroadcastOptions;
use hax_ha::model::{HaUpdate, ObjHealth};
use hax_ha::view::{ClusterView, ViewConfig};
use hax_sim::{SimConfig, SimProcess};
use hax_testkit::dev_agent::DevAgent;
use support::sample::{self, Sample};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

mod support;
use support::{hax_halon_config, kv_state, load_sample, Hax};
use tokio_util::task::TaskTracker;

const T: Duration = Duration::from_secs(20);

/// The halon interface and `peers` connected to it (plus hax's own link).
async fn start(peers: &[Fid]) -> (Halon<Hax>, Vec<SimProcess>) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port");
    let endpoint = format!("inet:tcp:127.0.0.1@{port}");
    let (tx, mut links) = watch::channel(0);
    let cfg = hax_halon_config(endpoint.clone());
    let halon = tokio::task::spawn_blocking(move || Halon::start(cfg, Hax { links: tx }))
        .await
        .expect("joined")
        .expect("halon starts");
    let mut procs = Vec::new();
    for f in peers {
        procs.push(
            SimProcess::connect(SimConfig::new(&endpoint, *f))
                .await
                .expect("peer connects"),
        );
    }
    tokio::time::timeout(T, links.wait_for(|n| *n > peers.len()))
        .await
        .expect("links in time")
        .expect("hax running");
    (halon, procs)
}

async fn stop(mut halon: Halon<Hax>) {
    let report = tokio::task::spawn_blocking(move || halon.stop())
        .await
        .expect("joined")
        .expect("clean stop");
    assert_eq!(report.violations, 0);
}

/// The notes of every NVEC SET a peer received, one entry per message.
fn received_sets(p: &SimProcess) -> Vec<Vec<HaNote>> {
    p.received()
        .into_iter()
        .filter_map(|r| match r.msg.data {
            HaMsgData::Nvec(n) if n.kind == NvecKind::Set => Some(n.notes),
            _ => None,
        })
        .collect()
}

fn pools(from: u64, n: u64, health: ObjHealth) -> Vec<HaUpdate> {
    (from..from + n)
        .map(|k| HaUpdate::new(Fid::typed(FidType::Pool, 1, k), health))
        .collect()
}

async fn delivered(report: BroadcastReport) -> usize {
    let tracked = report.sent.into_iter().map(|s| s.tracked).collect();
    let outcome = wait_for_outcomes(tracked, T).await;
    assert_eq!(outcome.pending, 0);
    outcome.delivered
}

#[tokio::test(flavor = "current_thread")]
async fn broadcasts_asked_together_share_messages_in_call_order() {
    let (halon, peers) = start(&[Sample::IOS1, Sample::CONFD1]).await;
    let metrics = Arc::new(Metrics::default());
    let unused = ConsulClient::with_address("127.0.0.1:9").expect("client");
    let b = Broadcaster::new(
        ClusterView::from_data(sample::view_data()),
        halon.handle(),
        HaxKv::new(unused),
        &TaskTracker::new(),
    )
    .with_metrics(Arc::clone(&metrics));
    let all = || BroadcastOptions {
        coalesce: true,
        ..BroadcastOptions::default()
    };
    let only = BroadcastOptions {
        broadcast_hax_only: true,
        coalesce: true,
        ..BroadcastOptions::default()
    };
    // Pools: notes only, no configuration state to write.
    let a = b.broadcast_report(pools(1, 3, ObjHealth::Ok), all());
    let bb = b.broadcast_report(pools(10, 2, ObjHealth::Failed), all());
    let c = b.broadcast_report(pools(20, 1, ObjHealth::Ok), only);
    let d = b.broadcast_report(pools(30, 1, ObjHealth::Failed), all());
    let (a, bb, c, d) = tokio::join!(a, bb, c, d);
    let (a, bb, c, d) = (a.expect("a"), bb.expect("b"), c.expect("c"), d.expect("d"));
    assert_eq!(metrics.broadcast_groups.load(Ordering::Relaxed), 1);
    assert_eq!(metrics.broadcasts.load(Ordering::Relaxed), 4);
    // a and b go to the same links: one message each, shared; c to the
    // self link alone; d again to all, after c.
    let ab = [a.plan.notes.clone(), bb.plan.notes.clone()].concat();
    for p in &peers {
        p.wait_received(2, T).await.expect("two messages");
        assert_eq!(
            received_sets(p),
            vec![ab.clone(), d.plan.notes.clone()],
            "{}",
            p.fid()
        );
    }
    assert_eq!(metrics.sent[2].load(Ordering::Relaxed), 3 + 1 + 3);
    let shared = |r: &BroadcastReport| -> Vec<(u64, usize, usize)> {
        let mut v: Vec<_> = r
            .sent
            .iter()
            .map(|s| (s.link.0, s.chunk, s.notes))
            .collect();
        v.sort_unstable();
        v
    };
    assert_eq!(shared(&a), shared(&bb), "a and b name the same messages");
    assert!(shared(&a)
        .iter()
        .all(|(_, chunk, n)| *chunk == 0 && *n == 5));
    assert_eq!(c.sent.len(), 1);
    // Each broadcast learns the outcome of its messages, shared or not.
    assert_eq!(delivered(a).await, 3);
    assert_eq!(delivered(bb).await, 3);
    assert_eq!(delivered(c).await, 1);
    assert_eq!(delivered(d).await, 3);

    // Merged notes still go in messages of at most NOTES_MAX notes; a
    // broadcast straddling two of them has both.
    let big = b.broadcast_report(pools(100, 1000, ObjHealth::Ok), all());
    let small = b.broadcast_report(pools(2000, 100, ObjHealth::Ok), all());
    let (big, small) = tokio::join!(big, small);
    let (big, small) = (big.expect("big"), small.expect("small"));
    let both = [big.plan.notes.clone(), small.plan.notes.clone()].concat();
    for p in &peers {
        p.wait_received(4, T).await.expect("two more messages");
        let sets = received_sets(p);
        assert_eq!(sets[2].len(), NOTES_MAX);
        assert_eq!(sets[2..].concat(), both, "{}", p.fid());
    }
    assert_eq!(big.sent.len(), 3, "one message on each link");
    assert_eq!(small.sent.len(), 6, "two messages on each link");
    assert_eq!(delivered(big).await, 3);
    assert_eq!(delivered(small).await, 6);

    // A broadcast that does not coalesce keeps messages of its own, in its
    // place, though done with the others.
    let groups = metrics.broadcast_groups.load(Ordering::Relaxed);
    let x = b.broadcast_report(pools(3000, 1, ObjHealth::Ok), all());
    let y = b.broadcast_report(
        pools(3100, 1, ObjHealth::Failed),
        BroadcastOptions::default(),
    );
    let z = b.broadcast_report(pools(3200, 1, ObjHealth::Ok), all());
    let (x, y, z) = tokio::join!(x, y, z);
    let (x, y, z) = (x.expect("x"), y.expect("y"), z.expect("z"));
    assert_eq!(metrics.broadcast_groups.load(Ordering::Relaxed), groups + 1);
    for p in &peers {
        p.wait_received(7, T).await.expect("three more messages");
        assert_eq!(
            received_sets(p)[4..].to_vec(),
            vec![
                x.plan.notes.clone(),
                y.plan.notes.clone(),
                z.plan.notes.clone()
            ],
            "{}",
            p.fid()
        );
    }
    stop(halon).await;
}

#[tokio::test(flavor = "current_thread")]
async fn a_group_writes_its_states_in_one_transaction_each_seeing_the_earlier() {
    let agent = DevAgent::start().await.expect("consul agent");
    let c = agent.client().expect("client");
    load_sample(&agent, &c, "[]").await;
    let kv = HaxKv::new(c.clone());
    let cancel = CancellationToken::new();
    let view = ClusterView::spawn(
        c.clone(),
        ViewConfig::new(Sample::NODE1_NAME, Sample::HAX1),
        &cancel,
        &tokio_util::task::TaskTracker::new(),
    );
    let st = view.wait_loaded(T).await.expect("view loaded");
    let (halon, peers) = start(&[Sample::CONFD1]).await;
    let metrics = Arc::new(Metrics::default());
    let b = Broadcaster::new(
        view.clone(),
        halon.handle(),
        kv.clone(),
        &TaskTracker::new(),
    )
    .with_metrics(Arc::clone(&metrics));

    // The ios fails and comes back, asked for together: the second is
    // planned on the first's writes, the final states land in one
    // check-and-set transaction.
    let coalesce = || BroadcastOptions {
        coalesce: true,
        ..BroadcastOptions::default()
    };
    let failed = b.broadcast_report(
        vec![HaUpdate::new(Sample::IOS1, ObjHealth::Failed)],
        coalesce(),
    );
    let back = b.broadcast_report(vec![HaUpdate::new(Sample::IOS1, ObjHealth::Ok)], coalesce());
    let (failed, back) = tokio::join!(failed, back);
    let (failed, back) = (failed.expect("failed"), back.expect("back"));
    assert_eq!(metrics.broadcast_groups.load(Ordering::Relaxed), 1);
    assert_eq!(metrics.conf_txns.load(Ordering::Relaxed), 1);
    assert_eq!(metrics.conf_txn_conflicts.load(Ordering::Relaxed), 0);
    let state_of = |r: &BroadcastReport, f: Fid| {
        let key = &st.process_keys(f)[0];
        r.plan
            .kv_writes
            .iter()
            .find(|w| &w.key == key)
            .and_then(|w| w.object.state.clone())
    };
    assert_eq!(state_of(&failed, Sample::IOS1).as_deref(), Some("failed"));
    assert_eq!(state_of(&back, Sample::IOS1).as_deref(), Some("online"));
    // The failure took the node down (its only ios); coming back brings it
    // up: the second plan saw the first's node write.
    let note =
        |r: &BroadcastReport, f: Fid| r.plan.notes.iter().find(|n| n.fid == f).map(|n| n.state);
    assert_eq!(note(&failed, Sample::NODE1), Some(HaState::Failed));
    assert_eq!(note(&back, Sample::NODE1), Some(HaState::Online));
    for (f, want) in [
        (Sample::IOS1, "online"),
        (Sample::SDEV1A, "online"),
        (Sample::SDEV1B, "online"),
        (Sample::CTRL1, "M0_NC_ONLINE"),
        (Sample::NODE1, "M0_NC_ONLINE"),
        (Sample::ENCL1, "M0_NC_ONLINE"),
    ] {
        assert_eq!(kv_state(&kv, &st, f).await, want, "{f}");
    }
    // Both trees in one message, the failure first.
    let confd = &peers[0];
    confd.wait_received(1, T).await.expect("the message");
    assert_eq!(
        received_sets(confd),
        vec![[failed.plan.notes.clone(), back.plan.notes.clone()].concat()]
    );
    assert_eq!(view.nvec_state(Sample::DRIVE1A), HaState::Online);
    assert_eq!(delivered(failed).await, 2);
    assert_eq!(delivered(back).await, 2);
    cancel.cancel();
    stop(halon).await;
}
