//! What Motr answers a process whose link is gone, and what a stopping hax
//! does about it (docs/motr.md, "Stop never fences a live process").
//!
//! Pinned from Motr's source (cortx-motr `ha/ha.c`):
//!
//! * a later request whose link is no longer among the incoming links, with
//!   the cookie of this run, is answered `disconnected_previously`
//!   (`ha_link_handle()`), whatever rc hax gives: the rc only picks CONSUME
//!   or QUERY, and the requester asserts on the flag before it looks at
//!   them (`ha_entrypoint_state_cb()`);
//! * Motr's stop disconnects every link before it stops the entrypoint
//!   service, so a peer told NOLINK during the stop asks again while the
//!   service still answers. The glue withholds that request (never passed
//!   up, never answered); Motr's stop then cannot finish, and the stop is
//!   reported cut short once the links are gone.
//!
//! Runs on the emulator; reported as ignored when hax-testkit is built with
//! `--features motr` (its peers speak the emulator's protocol).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use hax_core::{
    Callbacks, Ctx, EntrypointReply, EntrypointRequest, EntrypointResponder, Fid, FidType, HaMsg,
    HaNote, HaState, Halon, HalonConfig, LinkId, LinkInfo, Uint128,
};
use hax_sim::{Control, LinkState, SimCluster, SimConfig, SimEventKind, SimProcess};

const T: Duration = Duration::from_secs(15);
const HAX: Fid = Fid::typed(FidType::Process, 1, 3);

/// Answers first requests with a configuration and every later one with
/// EAGAIN; records the later ones.
struct Cb {
    later: Later,
}

type Later = Arc<Mutex<Vec<Fid>>>;

impl Callbacks for Cb {
    fn entrypoint_request(&self, cx: &Ctx<'_>, req: EntrypointRequest, reply: EntrypointResponder) {
        if req.first_request {
            let rep = EntrypointReply {
                quorum: 1,
                rm_fid: Fid::typed(FidType::Service, 1, 5),
                rm_endpoint: req.remote_endpoint,
                ..Default::default()
            };
            reply.accept_now(cx, &rep).unwrap();
        } else {
            self.later.lock().unwrap().push(req.process_fid);
            let eagain = std::num::NonZeroI32::new(hax_core::EAGAIN).unwrap();
            reply.refuse_now(cx, eagain).unwrap();
        }
    }

    fn link_connected(&self, _cx: &Ctx<'_>, _req: Uint128, _link: &LinkInfo) {}
}

struct Started {
    halon: Halon<Cb>,
    later: Later,
    peers: Vec<SimProcess>,
    events: tokio::sync::mpsc::UnboundedReceiver<hax_sim::SimEvent>,
}

async fn start(debug_options: &str, n: u64) -> Started {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let endpoint = format!("inet:tcp:127.0.0.1@{port}");
    let cfg = HalonConfig {
        endpoint: endpoint.clone(),
        process_fid: HAX,
        ha_service_fid: Fid::typed(FidType::Service, 1, 4),
        rm_service_fid: Fid::typed(FidType::Service, 1, 5),
        debug_options: debug_options.into(),
        receive_buffers: 0,
        node_uuid: None,
    };
    let later = Later::default();
    let halon = {
        let cb = Cb {
            later: Arc::clone(&later),
        };
        tokio::task::spawn_blocking(move || Halon::start(cfg, cb).unwrap())
            .await
            .unwrap()
    };
    let (tx, events) = tokio::sync::mpsc::unbounded_channel();
    let cfgs = (0..n)
        .map(|i| {
            let mut c = SimConfig::new(endpoint.clone(), Fid::typed(FidType::Process, 2, i));
            c.timeout = T;
            c.events = Some(tx.clone());
            c
        })
        .collect();
    let peers = SimCluster::connect(cfgs).await.unwrap().into_processes();
    Started {
        halon,
        later,
        peers,
        events,
    }
}

async fn stop(mut halon: Halon<Cb>) -> hax_core::StopReport {
    tokio::task::spawn_blocking(move || halon.stop().unwrap())
        .await
        .unwrap()
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

/// A process hax disconnected asks again (told NOLINK); answered with
/// EAGAIN, the reply still carries `disconnected_previously`, as QUERY:
/// the process is fenced whatever the rc.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    feature = "motr",
    ignore = "runs on the emulator backend: its peers speak the emulator's protocol"
)]
async fn any_answer_to_a_disconnected_process_fences_it() {
    let Started {
        halon,
        later,
        peers,
        mut events,
    } = start("emu-stop-timeout-ms=3000", 1).await;
    let p = &peers[0];
    let ha = halon.handle();
    let me = self_link(&halon);
    for state in [HaState::Online, HaState::Failed] {
        ha.send(me, HaMsg::nvec_set(vec![HaNote::new(p.fid(), state)]))
            .await
            .unwrap();
    }
    let rep = p.wait_fenced(T).await.unwrap();
    assert!(rep.disconnected_previously);
    assert_eq!(rep.control, Control::Query, "hax's rc was EAGAIN");
    assert_eq!(*later.lock().unwrap(), vec![p.fid()]);
    assert_eq!(p.state(), LinkState::Fenced);
    let mut fenced = 0;
    while let Ok(e) = events.try_recv() {
        fenced += usize::from(matches!(e.kind, SimEventKind::Fenced(_)));
    }
    assert_eq!(fenced, 1);
    let report = stop(halon).await;
    assert_eq!(report.violations, 0);
    assert!(!report.cut_short, "nothing was withheld: {report:?}");
}

/// hax stops: every peer is told NOLINK and asks again at once, while the
/// entrypoint service still answers (held open 300 ms). Those requests are
/// withheld: hax's callback never sees them, no peer is fenced, and the stop
/// is cut short.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    feature = "motr",
    ignore = "runs on the emulator backend: its peers speak the emulator's protocol"
)]
async fn a_stop_withholds_what_would_fence_live_processes() {
    let Started {
        halon,
        later,
        peers,
        mut events,
    } = start("emu-stop-timeout-ms=3000 emu-ep-linger-ms=300", 3).await;
    let report = stop(halon).await;
    assert!(report.cut_short, "{report:?}");
    assert_eq!(report.violations, 0);
    assert!(!report.would_hang);
    assert!(
        later.lock().unwrap().is_empty(),
        "a withheld request reached hax: {:?}",
        later.lock().unwrap()
    );
    // The connections end with the stop; the peers were never fenced.
    let deadline = tokio::time::Instant::now() + T;
    while !peers.iter().all(|p| p.state() == LinkState::Disconnected) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "peers: {:?}",
            peers.iter().map(SimProcess::state).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (mut nolink, mut requests) = (0, 0);
    while let Ok(e) = events.try_recv() {
        match e.kind {
            SimEventKind::Fenced(rep) => panic!("{} fenced: {rep:?}", e.process),
            SimEventKind::NoLink { .. } => nolink += 1,
            SimEventKind::Requested { first: false, .. } => requests += 1,
            _ => {}
        }
    }
    assert_eq!(nolink, peers.len(), "every peer was told NOLINK");
    assert_eq!(requests, peers.len(), "every peer asked again");
}
