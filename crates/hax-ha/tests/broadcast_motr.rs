//! Broadcasts through the emulator: to hax's own link and to simulated m0d
//! peers, in chunks, to the selected links, every message tracked to its
//! outcome. No Consul here: these broadcasts write no configuration state.

use std::collections::BTreeSet;
use std::time::Duration;

use hax_consul::schema::HaxKv;
use hax_consul::ConsulClient;
use hax_core::{Fid, FidType, HaMsgData, HaNote, HaState, Halon, LinkId, NvecKind, NOTES_MAX};
use hax_ha::broadcast::{wait_for_outcomes, Broadcaster};
use hax_ha::model::broadcast::BroadcastOptions;
use hax_ha::model::{HaUpdate, ObjHealth};
use hax_ha::view::ClusterView;
use hax_sim::{SimConfig, SimProcess};
use support::sample::{self, Sample};
use tokio::sync::watch;

mod support;
use support::{hax_halon_config, Hax};
use tokio_util::task::TaskTracker;

const T: Duration = Duration::from_secs(15);

fn start() -> (Halon<Hax>, watch::Receiver<usize>, String) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port");
    let endpoint = format!("inet:tcp:127.0.0.1@{port}");
    let (tx, rx) = watch::channel(0);
    let cfg = hax_halon_config(endpoint.clone());
    let halon = Halon::start(cfg, Hax { links: tx }).expect("halon starts");
    (halon, rx, endpoint)
}

async fn stop(mut halon: Halon<Hax>) {
    let report = tokio::task::spawn_blocking(move || halon.stop())
        .await
        .expect("joined")
        .expect("clean stop");
    assert_eq!(report.violations, 0);
}

/// hax's own link plus one peer per fid, all connected.
async fn with_peers(
    endpoint: &str,
    links: &mut watch::Receiver<usize>,
    fids: &[Fid],
) -> Vec<SimProcess> {
    let mut peers = Vec::new();
    for f in fids {
        let p = SimProcess::connect(SimConfig::new(endpoint, *f))
            .await
            .expect("peer connects");
        peers.push(p);
    }
    let want = 1 + fids.len();
    tokio::time::timeout(T, links.wait_for(|n| *n >= want))
        .await
        .expect("links in time")
        .expect("hax running");
    peers
}

/// A broadcaster over the sample; its Consul is never contacted.
fn broadcaster(halon: &Halon<Hax>) -> Broadcaster {
    let unused = ConsulClient::with_address("127.0.0.1:9").expect("client");
    Broadcaster::new(
        ClusterView::from_data(sample::view_data()),
        halon.handle(),
        HaxKv::new(unused),
        &TaskTracker::new(),
    )
}

/// The notes of every NVEC SET a peer received, in order.
fn received_sets(p: &SimProcess) -> Vec<Vec<HaNote>> {
    p.received()
        .into_iter()
        .filter_map(|r| match r.msg.data {
            HaMsgData::Nvec(n) if n.kind == NvecKind::Set => {
                assert!(n.ignore_same_state, "broadcasts ignore same states");
                assert_eq!(n.id_of_get, 0, "broadcasts answer no GET");
                Some(n.notes)
            }
            _ => None,
        })
        .collect()
}

fn link_of(halon: &Halon<Hax>, fid: Fid) -> LinkId {
    halon
        .handle()
        .links()
        .into_iter()
        .find(|l| l.process_fid == fid && !l.is_self)
        .map(|l| l.id)
        .unwrap_or_else(|| panic!("no link of {fid}"))
}

fn self_link(halon: &Halon<Hax>) -> LinkId {
    halon
        .handle()
        .links()
        .into_iter()
        .find(|l| l.is_self)
        .map(|l| l.id)
        .expect("the self link")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_broadcast_goes_in_chunks_to_every_link_and_is_delivered() {
    let (halon, mut links, ep) = start();
    let peers = with_peers(&ep, &mut links, &[Sample::IOS1, Sample::CONFD1]).await;
    let b = broadcaster(&halon);

    let updates: Vec<HaUpdate> = (0..2500)
        .map(|k| HaUpdate::new(Fid::typed(FidType::Pool, 1, 0x1000 + k), ObjHealth::Ok))
        .collect();
    let report = b
        .broadcast_report(updates, BroadcastOptions::default())
        .await
        .expect("broadcast");
    assert_eq!(report.plan.notes.len(), 2500);
    assert!(report.plan.kv_writes.is_empty());

    // Three chunks on each of the three links, every chunk returned.
    assert_eq!(report.sent.len(), 9);
    let all_links: BTreeSet<LinkId> = report.sent.iter().map(|s| s.link).collect();
    assert_eq!(
        all_links,
        BTreeSet::from([
            self_link(&halon),
            link_of(&halon, Sample::IOS1),
            link_of(&halon, Sample::CONFD1)
        ])
    );
    for l in &all_links {
        let chunks: Vec<(usize, usize)> = report
            .sent
            .iter()
            .filter(|s| s.link == *l)
            .map(|s| (s.chunk, s.notes))
            .collect();
        assert_eq!(
            chunks,
            vec![(0, NOTES_MAX), (1, NOTES_MAX), (2, 2500 - 2 * NOTES_MAX)],
            "{l}"
        );
    }

    // Each peer got the notes, in order, in three messages.
    for p in &peers {
        p.wait_received(3, T).await.expect("three messages");
        let sets = received_sets(p);
        assert_eq!(sets.len(), 3);
        assert_eq!(sets.concat(), report.plan.notes, "{}", p.fid());
    }

    let tracked = report.sent.into_iter().map(|s| s.tracked).collect();
    let outcomes = wait_for_outcomes(tracked, T).await;
    assert_eq!(
        (outcomes.delivered, outcomes.not_delivered, outcomes.pending),
        (9, 0, 0)
    );
    stop(halon).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skip_lists_and_hax_only_broadcasts_choose_their_links() {
    let (halon, mut links, ep) = start();
    let peers = with_peers(&ep, &mut links, &[Sample::IOS1, Sample::CONFD1]).await;
    let (ios, confd) = (&peers[0], &peers[1]);
    let b = broadcaster(&halon);

    // A failed ios of node 2 (its other ios runs): notes for its services,
    // drives and controller, no node. Without update_kv nothing is written,
    // so the drives report their recorded sdev state (cfgen's, ONLINE).
    let opts = BroadcastOptions {
        update_kv: false,
        proc_skip_list: vec![Sample::IOS1],
        ..BroadcastOptions::default()
    };
    let report = b
        .broadcast_report(vec![HaUpdate::new(Sample::IOS2A, ObjHealth::Failed)], opts)
        .await
        .expect("broadcast");
    let expected = vec![
        HaNote::new(Sample::IOS2A, HaState::Failed),
        HaNote::new(Sample::IOS2A_SVC, HaState::Failed),
        HaNote::new(Sample::DRIVE2A, HaState::Online),
        HaNote::new(Sample::DRIVE2B, HaState::Online),
        HaNote::new(Sample::CTRL2, HaState::Failed),
    ];
    assert_eq!(report.plan.notes, expected);
    let to: BTreeSet<LinkId> = report.sent.iter().map(|s| s.link).collect();
    assert_eq!(
        to,
        BTreeSet::from([self_link(&halon), link_of(&halon, Sample::CONFD1)]),
        "the skipped process's link gets nothing"
    );
    confd.wait_received(1, T).await.expect("the broadcast");
    assert_eq!(received_sets(confd), vec![expected]);
    let tracked = report.sent.into_iter().map(|s| s.tracked).collect();
    assert_eq!(wait_for_outcomes(tracked, T).await.delivered, 2);
    assert_eq!(ios.received_count(), 0);

    // hax only: the self link alone.
    let only = BroadcastOptions {
        broadcast_hax_only: true,
        ..BroadcastOptions::default()
    };
    let tracked = b
        .broadcast_outcomes(vec![HaUpdate::new(Sample::HAX1, ObjHealth::Ok)], only)
        .await
        .expect("broadcast");
    assert_eq!(tracked.len(), 1);
    let report = wait_for_outcomes(tracked, T).await;
    assert_eq!(report.delivered, 1);

    // Unknown healths make no message at all.
    let none = b
        .broadcast_outcomes(
            vec![HaUpdate::new(Sample::IOS1, ObjHealth::Unknown)],
            BroadcastOptions::default(),
        )
        .await
        .expect("broadcast");
    assert!(none.is_empty());
    assert_eq!(confd.received_count(), 1);
    stop(halon).await;
}
