//! The contract of the halon interface, exercised from the safe API against
//! simulated m0d peers on the emulator: outcomes of sends are exactly once,
//! links stop only through the handshake, and nothing the safe API allows is
//! a contract violation.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hax_core::{
    Callbacks, Ctx, Delivery, EntrypointReply, EntrypointRequest, EntrypointResponder, Fid,
    FidType, HaMsg, HaNote, HaState, Halon, HalonConfig, LinkId, LinkInfo, Tag, Uint128,
};
use hax_sim::{cluster, Delivery as PeerDelivery, SimCluster, SimConfig, SimProcess};
use tokio::sync::watch;

const T: Duration = Duration::from_secs(15);
const HAX: Fid = Fid::typed(FidType::Process, 1, 3);

/// What hax saw, per kind of callback.
#[derive(Default, Debug)]
struct Record {
    delivered: BTreeMap<(LinkId, Tag), u32>,
    not_delivered: BTreeMap<(LinkId, Tag), u32>,
    connected: Vec<LinkInfo>,
    disconnecting: Vec<LinkId>,
    disconnected: Vec<LinkId>,
    received: u64,
}

struct Recorder {
    rec: Mutex<Record>,
    changed: watch::Sender<u64>,
}

impl Recorder {
    fn with<R>(&self, f: impl FnOnce(&mut Record) -> R) -> R {
        let r = f(&mut self.rec.lock().unwrap());
        self.changed.send_modify(|v| *v += 1);
        r
    }

    async fn wait(&self, what: &str, pred: impl Fn(&Record) -> bool) {
        let mut rx = self.changed.subscribe();
        let ok = tokio::time::timeout(T, async {
            loop {
                rx.borrow_and_update();
                if pred(&self.rec.lock().unwrap()) {
                    return;
                }
                rx.changed().await.unwrap();
            }
        })
        .await;
        assert!(
            ok.is_ok(),
            "timed out waiting for {what}: {:?}",
            self.rec.lock().unwrap()
        );
    }
}

struct Cb(Arc<Recorder>);

impl Callbacks for Cb {
    fn entrypoint_request(&self, cx: &Ctx<'_>, req: EntrypointRequest, reply: EntrypointResponder) {
        let rep = EntrypointReply {
            quorum: 1,
            rm_fid: Fid::typed(FidType::Service, 1, 5),
            rm_endpoint: req.remote_endpoint,
            ..Default::default()
        };
        reply.accept_now(cx, &rep).unwrap();
    }

    fn msg_received(&self, cx: &Ctx<'_>, _l: LinkId, _t: Tag, _m: HaMsg, d: Delivery) {
        self.0.with(|r| r.received += 1);
        d.deliver_now(cx).unwrap();
    }

    fn msg_delivered(&self, _cx: &Ctx<'_>, link: LinkId, tag: Tag) {
        self.0
            .with(|r| *r.delivered.entry((link, tag)).or_default() += 1);
    }

    fn msg_not_delivered(&self, _cx: &Ctx<'_>, link: LinkId, tag: Tag) {
        self.0
            .with(|r| *r.not_delivered.entry((link, tag)).or_default() += 1);
    }

    fn link_connected(&self, _cx: &Ctx<'_>, _req: Uint128, link: &LinkInfo) {
        let link = link.clone();
        self.0.with(|r| r.connected.push(link));
    }

    fn link_is_disconnecting(&self, cx: &Ctx<'_>, link: LinkId, d: hax_core::Disconnect) {
        self.0.with(|r| r.disconnecting.push(link));
        d.disconnect_now(cx).unwrap();
    }

    fn link_disconnected(&self, _cx: &Ctx<'_>, link: LinkId) {
        self.0.with(|r| r.disconnected.push(link));
    }
}

fn start() -> (Halon<Cb>, Arc<Recorder>, String) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let endpoint = format!("inet:tcp:127.0.0.1@{port}");
    let rec = Arc::new(Recorder {
        rec: Mutex::default(),
        changed: watch::channel(0).0,
    });
    let cfg = HalonConfig {
        endpoint: endpoint.clone(),
        process_fid: HAX,
        ha_service_fid: Fid::typed(FidType::Service, 1, 4),
        rm_service_fid: Fid::typed(FidType::Service, 1, 5),
        debug_options: "emu-stop-timeout-ms=3000".into(),
        receive_buffers: 0,
        node_uuid: None,
    };
    let halon = Halon::start(cfg, Cb(Arc::clone(&rec))).unwrap();
    (halon, rec, endpoint)
}

async fn stop(mut halon: Halon<Cb>) -> hax_core::StopReport {
    tokio::task::spawn_blocking(move || halon.stop().unwrap())
        .await
        .unwrap()
}

fn note(key: u64, state: HaState) -> HaMsg {
    HaMsg::nvec_set(vec![HaNote::new(Fid::typed(FidType::Sdev, 1, key), state)])
}

fn self_link(halon: &Halon<Cb>) -> LinkId {
    halon
        .handle()
        .links()
        .into_iter()
        .find(|l| l.is_self)
        .unwrap()
        .id
}

fn link_of(rec: &Recorder, fid: Fid) -> LinkId {
    rec.with(|r| {
        r.connected
            .iter()
            .rev()
            .find(|l| l.process_fid == fid)
            .unwrap()
            .id
    })
}

/// Every tag sent on `link` has exactly one outcome, and which one is right.
fn assert_outcomes(rec: &Recorder, link: LinkId, delivered: &[Tag], not_delivered: &[Tag]) {
    rec.with(|r| {
        for t in delivered {
            assert_eq!(
                r.delivered.get(&(link, *t)),
                Some(&1),
                "delivered once: {t}"
            );
            assert_eq!(r.not_delivered.get(&(link, *t)), None, "{t}");
        }
        for t in not_delivered {
            assert_eq!(
                r.not_delivered.get(&(link, *t)),
                Some(&1),
                "not delivered once: {t}"
            );
            assert_eq!(r.delivered.get(&(link, *t)), None, "{t}");
        }
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vanished_peer_keeps_its_messages_until_its_link_is_stopped() {
    let (halon, rec, ep) = start();
    let ha = halon.handle();
    let fid = Fid::typed(FidType::Process, 1, 40);
    let p = SimProcess::connect(SimConfig::new(ep, fid)).await.unwrap();
    let link = link_of(&rec, fid);

    let mut early = Vec::new();
    for k in [1, 2] {
        early.push(ha.send(link, note(k, HaState::Online)).await.unwrap());
    }
    p.wait_received(2, T).await.unwrap();
    rec.wait("the first two delivered", |r| r.delivered.len() == 2)
        .await;

    // The peer vanishes: what hax sends now stays pending, with no outcome.
    p.vanish();
    let mut late = Vec::new();
    for k in 3..8 {
        late.push(ha.send(link, note(k, HaState::Transient)).await.unwrap());
    }
    rec.with(|r| {
        assert!(
            r.not_delivered.is_empty(),
            "no outcome while the link lives"
        )
    });

    // hax declares the process failed on its self link: handshake, then
    // every pending message is not delivered, once, before disconnected.
    let me = self_link(&halon);
    ha.send(me, HaMsg::nvec_set(vec![HaNote::new(fid, HaState::Online)]))
        .await
        .unwrap();
    ha.send(me, HaMsg::nvec_set(vec![HaNote::new(fid, HaState::Failed)]))
        .await
        .unwrap();
    rec.wait("the link to stop", |r| r.disconnected.contains(&link))
        .await;
    assert_eq!(rec.with(|r| r.disconnecting.clone()), vec![link]);
    assert_outcomes(&rec, link, &early, &late);
    assert!(matches!(
        ha.send(link, note(9, HaState::Online)).await,
        Err(hax_core::Error::LinkGone(l)) if l == link
    ));

    // Coming back, the peer is told it was disconnected: fenced.
    p.reattach().await.ok();
    p.wait_fenced(T).await.unwrap();
    let report = stop(halon).await;
    assert_eq!(report.violations, 0);
    assert!(!report.would_hang);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_gives_every_pending_message_its_outcome() {
    let (halon, rec, ep) = start();
    let ha = halon.handle();
    let fid = Fid::typed(FidType::Process, 1, 41);
    let mut cfg = SimConfig::new(ep, fid);
    cfg.delivery = PeerDelivery::Manual;
    let p = SimProcess::connect(cfg).await.unwrap();
    let link = link_of(&rec, fid);
    let mut sent = Vec::new();
    for k in 0..6 {
        sent.push(ha.send(link, note(k, HaState::Online)).await.unwrap());
    }
    p.wait_received(6, T).await.unwrap();
    // The peer delivers the first two only.
    p.deliver(sent[0].0).unwrap();
    p.deliver(sent[1].0).unwrap();
    rec.wait("two delivered", |r| r.delivered.len() == 2).await;
    let report = stop(halon).await;
    assert_outcomes(&rec, link, &sent[..2], &sent[2..]);
    rec.with(|r| {
        assert!(r.disconnected.contains(&link));
        // The self link stops too, and everything hax sent it was delivered.
        assert_eq!(r.disconnecting.len(), 2);
    });
    assert_eq!(report.violations, 0);
    assert!(!report.would_hang);
    drop(p);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_peers_at_once() {
    let (halon, rec, ep) = start();
    let cl = SimCluster::connect(cluster::configs(&ep, 64, 1000))
        .await
        .unwrap();
    assert_eq!(cl.len(), 64);
    assert_eq!(halon.handle().active_links().len(), 65);
    for p in cl.processes() {
        p.send_process_event(hax_core::ProcessEventKind::Started)
            .unwrap();
    }
    cl.wait_all_confirmed(T).await.unwrap();
    // A broadcast to all of them, each tracked to its outcome.
    let links: Vec<LinkId> = halon
        .handle()
        .links()
        .into_iter()
        .filter(|l| !l.is_self)
        .map(|l| l.id)
        .collect();
    let tracked = halon
        .handle()
        .broadcast(links, note(1, HaState::Failed))
        .await
        .unwrap();
    assert_eq!(tracked.len(), 64);
    cl.wait_received(1, T).await.unwrap();
    for (_, t) in tracked {
        assert_eq!(
            t.unwrap().outcome().await.unwrap(),
            hax_core::Outcome::Delivered
        );
    }
    assert!(cl.violations().is_empty());
    rec.wait("64 events", |r| r.received >= 64 + 4).await;
    let report = stop(halon).await;
    assert_eq!(report.violations, 0);
    assert_eq!(rec.with(|r| r.disconnected.len()), 65);
}

/// A process talks to its HA on one link: when a new incarnation of it
/// connects, the earlier incarnation's link (dead, or ending) is no broadcast
/// or keepalive target any more, though it stays until Motr ends it. A send
/// to a dead peer costs Motr an RPC timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_earlier_incarnations_link_is_no_target() {
    let (halon, rec, ep) = start();
    let configs = cluster::configs(&ep, 2, 2100);
    let first = SimCluster::connect(configs.clone()).await.unwrap();
    let [a, b] = first.processes() else {
        panic!("two peers")
    };
    let (old_a, lb) = (link_of(&rec, a.fid()), link_of(&rec, b.fid()));
    let active = halon.handle().active_links();
    assert!(
        active.contains(&old_a) && active.contains(&lb),
        "{active:?}"
    );
    // a again, as a new incarnation, while its first link is still there.
    let again = SimCluster::connect(configs[..1].to_vec()).await.unwrap();
    let new_a = link_of(&rec, a.fid());
    assert_ne!(new_a, old_a);
    let active = halon.handle().active_links();
    assert!(!active.contains(&old_a), "{active:?}");
    assert!(
        active.contains(&new_a) && active.contains(&lb),
        "{active:?}"
    );
    assert!(halon.handle().links().iter().any(|l| l.id == old_a));
    drop((first, again));
    let report = stop(halon).await;
    assert_eq!(report.violations, 0);
}

/// A process that reports itself stopped closes its links on its own; a
/// broadcast that still reached it would make Motr disconnect them under it.
/// Its link leaves the broadcast targets, and only its own report does that.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_that_reports_stopped_gets_no_more_broadcasts() {
    let (halon, rec, ep) = start();
    let cl = SimCluster::connect(cluster::configs(&ep, 3, 2000))
        .await
        .unwrap();
    let [a, b, c] = cl.processes() else {
        panic!("three peers")
    };
    let (la, lb, lc) = (
        link_of(&rec, a.fid()),
        link_of(&rec, b.fid()),
        link_of(&rec, c.fid()),
    );
    // b reports a STOPPED about another process (a): that does not stop b's link.
    let mut about_a = b.process_event(hax_core::ProcessEventKind::Stopped);
    about_a.fid = a.fid();
    let t = b.send(about_a).unwrap();
    b.wait_confirmed(t, T).await.unwrap();
    // c reports STARTING: no change either.
    let t = c
        .send_process_event(hax_core::ProcessEventKind::Starting)
        .unwrap();
    c.wait_confirmed(t, T).await.unwrap();
    let active = halon.handle().active_links();
    assert!(
        [la, lb, lc].iter().all(|l| active.contains(l)),
        "{active:?}"
    );
    // a reports its own STOPPED.
    let t = a
        .send_process_event(hax_core::ProcessEventKind::Stopped)
        .unwrap();
    a.wait_confirmed(t, T).await.unwrap();
    let active = halon.handle().active_links();
    assert!(!active.contains(&la), "{active:?}");
    assert!(active.contains(&lb) && active.contains(&lc), "{active:?}");
    // The link itself is still there until the process closes it.
    assert!(halon.handle().links().iter().any(|l| l.id == la));
    let report = stop(halon).await;
    assert_eq!(report.violations, 0);
}
