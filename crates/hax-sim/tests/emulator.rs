//! Simulated processes against the emulator, driven through hax-core: the
//! sim's view and hax's view of the same exchanges agree.

use std::num::NonZeroI32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hax_core::{
    Callbacks, Confd, Ctx, Delivery, EntrypointReply, EntrypointRequest, EntrypointResponder, Fid,
    FidType, HaMsg, HaMsgData, HaNote, HaState, Halon, HalonConfig, LinkId, LinkInfo, NvecGet,
    ProcessEventKind, Tag, Uint128,
};
use hax_sim::{cluster, LinkOutcome, LinkState, SimCluster, SimConfig, SimProcess};
use tokio::sync::watch;

const T: Duration = Duration::from_secs(10);
const HAX: Fid = Fid::typed(FidType::Process, 1, 3);

#[derive(Default)]
struct Seen {
    /// Messages hax received from peers (not from its own self link).
    msgs: Vec<(LinkId, Tag, HaMsg)>,
    delivered: Vec<(LinkId, Tag)>,
    connected: Vec<LinkInfo>,
    reused: u32,
    absent: u32,
    refused: u32,
}

struct Hax {
    seen: Mutex<Seen>,
    changed: watch::Sender<u64>,
    /// Refuse this many peer requests (QUERY) before accepting.
    refuse: Mutex<u32>,
}

impl Hax {
    fn update(&self, f: impl FnOnce(&mut Seen)) {
        f(&mut self.seen.lock().unwrap());
        self.changed.send_modify(|v| *v += 1);
    }

    async fn wait(&self, what: &str, pred: impl Fn(&Seen) -> bool) {
        let mut rx = self.changed.subscribe();
        let r = tokio::time::timeout(T, async {
            loop {
                rx.borrow_and_update();
                if pred(&self.seen.lock().unwrap()) {
                    return;
                }
                rx.changed().await.unwrap();
            }
        })
        .await;
        assert!(r.is_ok(), "timed out waiting for {what}");
    }
}

struct Cb(Arc<Hax>);

impl Callbacks for Cb {
    fn entrypoint_request(&self, cx: &Ctx<'_>, req: EntrypointRequest, reply: EntrypointResponder) {
        if req.process_fid != HAX {
            let mut refuse = self.0.refuse.lock().unwrap();
            if *refuse > 0 {
                *refuse -= 1;
                drop(refuse);
                self.0.update(|s| s.refused += 1);
                let rc = NonZeroI32::new(-11).unwrap();
                reply.refuse_now(cx, rc).unwrap();
                return;
            }
        }
        let r = EntrypointReply {
            confds: vec![
                Confd {
                    fid: Fid::typed(FidType::Process, 1, 50),
                    endpoint: "inet:tcp:127.0.0.1@3050".into(),
                },
                Confd {
                    fid: Fid::typed(FidType::Process, 1, 51),
                    endpoint: "inet:tcp:127.0.0.1@3051".into(),
                },
            ],
            quorum: EntrypointReply::majority(2),
            rm_fid: Fid::typed(FidType::Service, 1, 5),
            rm_endpoint: "inet:tcp:127.0.0.1@3050".into(),
        };
        reply.accept_now(cx, &r).unwrap();
    }

    fn msg_received(&self, cx: &Ctx<'_>, link: LinkId, tag: Tag, msg: HaMsg, d: Delivery) {
        let is_self = cx.links().iter().any(|l| l.id == link && l.is_self);
        if !is_self {
            self.0.update(|s| s.msgs.push((link, tag, msg)));
        }
        d.deliver_now(cx).unwrap();
    }

    fn nvec_get(&self, cx: &Ctx<'_>, get: NvecGet, d: Delivery) {
        get.answer_now(cx, |f| {
            if f.is(FidType::Sdev) {
                HaState::Failed
            } else {
                HaState::Online
            }
        })
        .unwrap();
        d.deliver_now(cx).unwrap();
    }

    fn msg_delivered(&self, _cx: &Ctx<'_>, link: LinkId, tag: Tag) {
        self.0.update(|s| s.delivered.push((link, tag)));
    }

    fn link_connected(&self, _cx: &Ctx<'_>, _req: Uint128, link: &LinkInfo) {
        let link = link.clone();
        self.0.update(|s| s.connected.push(link));
    }

    fn link_reused(&self, _cx: &Ctx<'_>, _req: Uint128, _link: LinkId) {
        self.0.update(|s| s.reused += 1);
    }

    fn link_absent(&self, _cx: &Ctx<'_>, _req: Uint128) {
        self.0.update(|s| s.absent += 1);
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start(refuse: u32) -> (Halon<Cb>, Arc<Hax>, String) {
    let ep = format!("inet:tcp:127.0.0.1@{}", free_port());
    let hax = Arc::new(Hax {
        seen: Mutex::default(),
        changed: watch::channel(0).0,
        refuse: Mutex::new(refuse),
    });
    let cfg = HalonConfig {
        endpoint: ep.clone(),
        process_fid: HAX,
        ha_service_fid: Fid::typed(FidType::Service, 1, 4),
        rm_service_fid: Fid::typed(FidType::Service, 1, 5),
        debug_options: "emu-stop-timeout-ms=2000".into(),
        receive_buffers: 0,
        node_uuid: None,
    };
    let halon = Halon::start(cfg, Cb(hax.clone())).unwrap();
    (halon, hax, ep)
}

async fn stop(mut halon: Halon<Cb>) -> u64 {
    tokio::task::spawn_blocking(move || halon.stop().unwrap().violations)
        .await
        .unwrap()
}

fn link_of(hax: &Hax, fid: Fid) -> LinkId {
    hax.seen
        .lock()
        .unwrap()
        .connected
        .iter()
        .rev()
        .find(|l| l.process_fid == fid)
        .map(|l| l.id)
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_lives_its_life_against_hax() {
    let (halon, hax, ep) = start(1);
    let fid = Fid::typed(FidType::Process, 1, 20);
    let mut cfg = SimConfig::new(ep.clone(), fid);
    cfg.timeout = T;
    let p = SimProcess::connect(cfg).await.unwrap();

    // One refusal: QUERY, asked again at once, reused.
    let e = p.entrypoint().unwrap();
    assert_eq!((e.queries, e.outcome), (1, LinkOutcome::New));
    assert_eq!(e.reply.confds.len(), 2);
    assert_eq!(e.reply.quorum, 2);
    assert!(e.warnings().is_empty(), "{:?}", e.warnings());
    let link = link_of(&hax, fid);
    assert_eq!(p.link_id(), link.0);
    assert_eq!(hax.seen.lock().unwrap().reused, 1);

    // Events reach hax in order, with the sim's tags, and are confirmed.
    let t1 = p.send_process_event(ProcessEventKind::Starting).unwrap();
    let t2 = p.send_process_event(ProcessEventKind::Started).unwrap();
    p.wait_all_confirmed(T).await.unwrap();
    hax.wait("two events", |s| s.msgs.len() == 2).await;
    {
        let s = hax.seen.lock().unwrap();
        assert_eq!((s.msgs[0].0, s.msgs[0].1), (link, Tag(t1)));
        assert_eq!((s.msgs[1].0, s.msgs[1].1), (link, Tag(t2)));
        assert!(
            matches!(&s.msgs[1].2.data, HaMsgData::ProcessEvent(e) if e.event == ProcessEventKind::Started && e.pid == p.config().pid)
        );
    }

    // A broadcast from hax is received and confirmed back to hax.
    let note = HaNote::new(Fid::typed(FidType::Process, 1, 21), HaState::Online);
    let tag = halon
        .handle()
        .send(link, HaMsg::nvec_set(vec![note]))
        .await
        .unwrap();
    p.wait_received(1, T).await.unwrap();
    assert_eq!(p.received()[0].tag, tag.0);
    hax.wait("the delivery", |s| s.delivered.contains(&(link, tag)))
        .await;

    // NVEC GET: answered with the same fids in the same order.
    let fids = [
        Fid::typed(FidType::Sdev, 1, 1),
        Fid::typed(FidType::Process, 1, 21),
    ];
    let notes = p.nvec_get(&fids).await.unwrap();
    assert_eq!(
        notes.iter().map(|n| n.state).collect::<Vec<_>>(),
        [HaState::Failed, HaState::Online]
    );
    // Failure vector: the cookie comes back.
    let pool = Fid::typed(FidType::Pool, 1, 1);
    assert_eq!(p.failvec(pool).await.unwrap().pool, pool);

    // Vanish, send while away, come back: the link is reused and the
    // messages sent meanwhile arrive.
    p.vanish();
    let t3 = p.send_process_event(ProcessEventKind::Stopping).unwrap();
    let note2 = HaNote::new(Fid::typed(FidType::Process, 1, 21), HaState::Transient);
    let tag2 = halon
        .handle()
        .send(link, HaMsg::nvec_set(vec![note2]))
        .await
        .unwrap();
    let e = p.reattach().await.unwrap();
    assert_eq!(e.outcome, LinkOutcome::Reused);
    p.wait_confirmed(t3, T).await.unwrap();
    // Received so far: the broadcast, the GET's answer, the failure vector.
    p.wait_received(4, T).await.unwrap();
    assert_eq!(p.received()[3].tag, tag2.0);
    hax.wait("the second delivery", |s| {
        s.delivered.contains(&(link, tag2))
    })
    .await;

    // hax declares the process FAILED on its self link: the link stops, the
    // process gets NOLINK, asks again and is fenced.
    let self_link = halon
        .handle()
        .links()
        .into_iter()
        .find(|l| l.is_self)
        .unwrap()
        .id;
    for state in [HaState::Online, HaState::Failed] {
        halon
            .handle()
            .send(self_link, HaMsg::nvec_set(vec![HaNote::new(fid, state)]))
            .await
            .unwrap();
    }
    let rep = p.wait_fenced(T).await.unwrap();
    assert!(rep.disconnected_previously);
    assert_eq!(p.state(), LinkState::Fenced);
    hax.wait("link_absent", |s| s.absent == 1).await;

    // Restarted, it is a new process with the same fid and a new link.
    let e = p.restart().await.unwrap();
    assert_eq!(e.outcome, LinkOutcome::New);
    assert_ne!(p.link_id(), link.0);
    assert!(p.violations().is_empty(), "{:?}", p.violations());
    assert_eq!(stop(halon).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_pipelines_many_messages() {
    let (halon, hax, ep) = start(0);
    let cl = SimCluster::connect(cluster::configs(&ep, 4, 100))
        .await
        .unwrap();
    const N: usize = 2000;
    let mut tasks = Vec::new();
    let procs: Vec<Arc<SimProcess>> = cl.into_processes().into_iter().map(Arc::new).collect();
    for p in &procs {
        let p = p.clone();
        tasks.push(tokio::spawn(async move {
            let msgs: Vec<HaMsg> = (0..N)
                .map(|_| p.process_event(ProcessEventKind::Started))
                .collect();
            p.send_many(msgs).await.unwrap()
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap().0, N as u64);
    }
    for p in &procs {
        p.wait_all_confirmed(T).await.unwrap();
        assert_eq!(p.stats().confirmed, N as u64);
        assert!(p.violations().is_empty());
    }
    hax.wait("every message", |s| s.msgs.len() == 4 * N).await;
    assert_eq!(stop(halon).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hax_restart_reconnects_with_continuing_tags() {
    let (halon, _hax, ep) = start(0);
    let fid = Fid::typed(FidType::Process, 1, 30);
    let p = SimProcess::connect(SimConfig::new(ep.clone(), fid))
        .await
        .unwrap();
    p.send_process_event(ProcessEventKind::Started).unwrap();
    p.wait_all_confirmed(T).await.unwrap();
    let old_link = p.link_id();
    // The process is away while hax stops (else, told NOLINK, it would ask
    // again and might be fenced by the stopping hax, as a real m0d is).
    p.vanish();
    assert_eq!(stop(halon).await, 0);
    // A new hax on the same endpoint: the cookie differs, so the process
    // gets a new link whose tags continue.
    let (halon2, hax2, _) = {
        let hax = Arc::new(Hax {
            seen: Mutex::default(),
            changed: watch::channel(0).0,
            refuse: Mutex::new(0),
        });
        let cfg = HalonConfig {
            endpoint: ep.clone(),
            process_fid: HAX,
            ha_service_fid: Fid::typed(FidType::Service, 1, 4),
            rm_service_fid: Fid::typed(FidType::Service, 1, 5),
            debug_options: "emu-stop-timeout-ms=2000".into(),
            receive_buffers: 0,
            node_uuid: None,
        };
        (Halon::start(cfg, Cb(hax.clone())).unwrap(), hax, ())
    };
    let e = p.reattach().await.unwrap();
    assert_eq!(e.outcome, LinkOutcome::Reconnected);
    assert!(e.reply.do_reconnect);
    // Link ids start again in each run of hax.
    assert_eq!(p.link_id(), old_link);
    let t = p.send_process_event(ProcessEventKind::Stopping).unwrap();
    assert_eq!(t, 4);
    p.wait_confirmed(t, T).await.unwrap();
    hax2.wait("the message on the new link", |s| s.msgs.len() == 1)
        .await;
    assert!(p.violations().is_empty(), "{:?}", p.violations());
    assert_eq!(stop(halon2).await, 0);
}

/// Throughput of 16 processes into hax through the emulator; run with
/// `cargo test --release -p hax-sim --test emulator -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, not a check"]
async fn throughput_of_16_processes() {
    let (halon, hax, ep) = start(0);
    let cl = SimCluster::connect(cluster::configs(&ep, 16, 200))
        .await
        .unwrap();
    const N: usize = 50_000;
    let procs: Vec<Arc<SimProcess>> = cl.into_processes().into_iter().map(Arc::new).collect();
    let msgs: Vec<Vec<HaMsg>> = procs
        .iter()
        .map(|p| {
            (0..N)
                .map(|_| p.process_event(ProcessEventKind::Started))
                .collect()
        })
        .collect();
    let t0 = std::time::Instant::now();
    let mut tasks = Vec::new();
    for (p, m) in procs.iter().zip(msgs) {
        let p = p.clone();
        tasks.push(tokio::spawn(async move {
            p.send_many(m).await.unwrap();
            p.wait_all_confirmed(Duration::from_secs(120))
                .await
                .unwrap();
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let dt = t0.elapsed();
    let total = 16 * N;
    println!(
        "{total} messages confirmed in {dt:?}: {:.0} messages/s",
        total as f64 / dt.as_secs_f64()
    );
    hax.wait("every message", |s| s.msgs.len() == total).await;
    assert_eq!(stop(halon).await, 0);
}
