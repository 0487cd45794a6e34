//! What real Motr showed (docs/motr.md, "Where real Motr and the emulator
//! differ"), pinned where the emulator now does the same, so that hax is
//! tested against it in every run:
//!
//! * a peer is reported in the transport's own endpoint form, whatever form
//!   it was given (Motr's SOCK: `inet:stream:<ip>@<port>` for a peer started
//!   as `127.0.0.1@tcp:12345:<portal>:<tmid>`; the emulator:
//!   `inet:tcp:<ip>@<port>`), while hax's own link keeps the endpoint hax
//!   was started with; hax matches peers by process fid, never by endpoint;
//! * SOCK's own form `inet:stream:<ip>@<port>` is an endpoint hax can listen
//!   on (SOCK refuses `inet:tcp:`; the emulator takes both);
//! * an m0d reports the services it starts before reading its configuration
//!   with fid 0 and service type 0 (`M0_CST__UNUSED`) or SSS/FDMI: hax
//!   receives them as service events like any other;
//! * an m0d answers hax's keepalive request with the same id;
//! * SNS repair and rebalance control (start, quiesce, continue, abort)
//!   answers Ok from every state of the copy machine (spiel checks RPC
//!   errors only; the trigger handler turns `-EBUSY` into success): what an
//!   op did shows only in the status. Start makes an idle or failed machine
//!   started; quiesce makes an idle or started one paused; continue makes a
//!   paused or idle one started; abort makes any but a failed one idle.
//!
//! Runs on the emulator; reported as ignored when hax-testkit is built with
//! `--features motr`, hax-core's on real Motr (its peers speak the emulator's
//! protocol; what they pin on real Motr is what hax-core's `motr_m0d`,
//! `motr_m0ham` and `motr_client` saw).

use std::sync::Arc;
use std::time::Duration;

use emu_support::{free_endpoint, free_port, halon_config, Log};
use hax_core::{
    Callbacks, CmStatus, Confd, Ctx, Delivery, EntrypointReply, EntrypointRequest,
    EntrypointResponder, Fid, FidType, HaMsg, HaMsgData, Halon, HalonConfig, LinkId, LinkInfo,
    PverState, ServiceEvent, ServiceEventKind, ServiceType, SnsKind, SnsOp, Tag, Uint128,
};

#[path = "../../hax-core/tests/emu_support/mod.rs"]
mod emu_support;
use hax_sim::{PoolDef, PverDef, SimConfig, SimControl, SimProcess};

struct Ha(Arc<Log>);

impl Callbacks for Ha {
    fn entrypoint_request(&self, cx: &Ctx<'_>, req: EntrypointRequest, reply: EntrypointResponder) {
        self.0.push(format!(
            "entrypoint {} from {}",
            req.process_fid, req.remote_endpoint
        ));
        let rep = EntrypointReply {
            confds: vec![Confd {
                fid: Fid::typed(FidType::Service, 1, 4),
                endpoint: "inet:tcp:127.0.0.1@1".into(),
            }],
            quorum: 1,
            rm_fid: Fid::typed(FidType::Service, 1, 2),
            rm_endpoint: "inet:tcp:127.0.0.1@1".into(),
        };
        reply.accept_now(cx, &rep).unwrap();
    }

    fn msg_received(&self, cx: &Ctx<'_>, link: LinkId, _tag: Tag, msg: HaMsg, d: Delivery) {
        match msg.data {
            HaMsgData::ServiceEvent(e) => self.0.push(format!(
                "{link} service {} {:?} {:?}",
                msg.fid, e.service_type, e.event
            )),
            HaMsgData::KeepaliveRep { id, .. } => self
                .0
                .push(format!("{link} keepalive reply {id} fid {}", msg.fid)),
            _ => {}
        }
        d.deliver_now(cx).unwrap();
    }

    fn link_connected(&self, _cx: &Ctx<'_>, _req: Uint128, link: &LinkInfo) {
        self.0.push(format!(
            "connected {} {} self {} ep {}",
            link.id, link.process_fid, link.is_self, link.endpoint
        ));
    }
}

fn service_event(event: ServiceEventKind, service_type: ServiceType) -> HaMsg {
    // fid 0: what an m0d sends for the services it starts before it has
    // read its configuration.
    HaMsg::new(HaMsgData::ServiceEvent(ServiceEvent {
        event,
        service_type,
        pid: 4242,
    }))
}

#[test]
#[cfg_attr(
    feature = "motr",
    ignore = "runs on the emulator backend: its peers speak the emulator's protocol"
)]
fn endpoints_early_service_events_and_keepalive_as_on_real_motr() {
    let port = free_port();
    let ep = format!("inet:stream:127.0.0.1@{port}");
    let log = Arc::new(Log::default());
    let cfg = HalonConfig {
        endpoint: ep.clone(),
        process_fid: Fid::typed(FidType::Process, 1, 6),
        ha_service_fid: Fid::typed(FidType::Service, 1, 7),
        rm_service_fid: Fid::typed(FidType::Service, 1, 2),
        debug_options: "emu-stop-timeout-ms=2000".into(),
        receive_buffers: 0,
        node_uuid: None,
    };
    let mut halon = Halon::start(cfg, Ha(Arc::clone(&log))).expect("starts on inet:stream:");
    // hax's own link keeps the endpoint hax was started with.
    log.wait_for("the self link", |ev| {
        ev.iter()
            .any(|e| e.contains("self true") && e.ends_with(&format!("ep {ep}")))
    });

    // A peer started with the LNet form is reported in the transport's own
    // form: 127.0.0.1@tcp:12345:34:101 listens on 101 | 1 << 10 | 4 << 11.
    let peer = Fid::typed(FidType::Process, 1, 0x10);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let mut c = SimConfig::new(format!("inet:tcp:127.0.0.1@{port}"), peer);
    c.endpoint = "127.0.0.1@tcp:12345:34:101".into();
    c.timeout = Duration::from_secs(15);
    let p: SimProcess = rt.block_on(SimProcess::connect(c)).expect("peer connects");
    let canonical = "inet:tcp:127.0.0.1@9317";
    let ev = log.wait_for("the peer's link", |ev| {
        ev.iter()
            .any(|e| e.starts_with("connected") && e.contains(&peer.to_string()))
    });
    assert!(
        ev.contains(&format!("entrypoint {peer} from {canonical}")),
        "{ev:?}"
    );
    let info = halon
        .handle()
        .links()
        .into_iter()
        .find(|l| l.process_fid == peer)
        .expect("the peer's link is listed");
    assert_eq!(info.endpoint, canonical);

    // The services an m0d starts before its configuration: fid 0, type 0
    // (then SSS), STARTING then STARTED.
    for m in [
        service_event(ServiceEventKind::Starting, ServiceType::Unused),
        service_event(ServiceEventKind::Started, ServiceType::Unused),
        service_event(ServiceEventKind::Starting, ServiceType::Sss),
    ] {
        p.send(m).expect("sent");
    }
    let link = info.id;
    let zero = Fid::default();
    let want = [
        format!("{link} service {zero} Unused Starting"),
        format!("{link} service {zero} Unused Started"),
        format!("{link} service {zero} Sss Starting"),
    ];
    let ev = log.wait_for("the early service events", |ev| {
        want.iter().all(|w| ev.contains(w))
    });
    let mine: Vec<&String> = ev
        .iter()
        .filter(|e| e.starts_with(&format!("{link} service")))
        .collect();
    assert_eq!(mine, want.iter().collect::<Vec<_>>(), "in order: {ev:?}");

    // hax asks, the m0d answers with the same id and message fid 0.
    let id = Uint128::new(0x4b41, 7);
    halon
        .handle()
        .send(link, HaMsg::new(HaMsgData::KeepaliveReq { id }))
        .wait()
        .expect("keepalive request sent");
    log.wait_for("the keepalive reply", |ev| {
        ev.contains(&format!(
            "{link} keepalive reply {id} fid {}",
            Fid::default()
        ))
    });

    drop(p);
    let report = halon.stop().expect("stop");
    assert_eq!(report.violations, 0);
}

/// The copy machine's status after `op` from `from`, as real Motr answers:
/// every op is Ok (docs/motr.md, "SNS control").
const SNS_TABLE: [(CmStatus, SnsOp, CmStatus); 16] = {
    use CmStatus::{Failed, Idle, Paused, Started};
    use SnsOp::{Abort, Continue, Quiesce, Start};
    [
        (Idle, Start, Started),
        (Idle, Quiesce, Paused),
        (Idle, Continue, Started),
        (Idle, Abort, Idle),
        (Started, Start, Started),
        (Started, Quiesce, Paused),
        (Started, Continue, Started),
        (Started, Abort, Idle),
        (Paused, Start, Paused),
        (Paused, Quiesce, Paused),
        (Paused, Continue, Started),
        (Paused, Abort, Idle),
        (Failed, Start, Started),
        (Failed, Quiesce, Failed),
        (Failed, Continue, Failed),
        (Failed, Abort, Failed),
    ]
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    feature = "motr",
    ignore = "runs on the emulator backend: the SNS model is the emulator's"
)]
async fn sns_control_answers_ok_from_every_state_as_on_real_motr() {
    let ep = free_endpoint();
    let cfg = halon_config(&ep);
    let log = Arc::new(Log::default());
    let ha = Ha(Arc::clone(&log));
    let mut halon = tokio::task::spawn_blocking(move || Halon::start(cfg, ha))
        .await
        .expect("join")
        .expect("start");
    let client = halon.client();
    let ctl = SimControl::connect(&ep).await.expect("control");
    let pool = Fid::typed(FidType::Pool, 1, 1);
    let define = || PoolDef {
        fid: pool,
        ioservices: vec![Fid::typed(FidType::Service, 1, 100)],
        pvers: vec![PverDef {
            fid: Fid::typed(FidType::Pver, 1, 1),
            state: PverState::Healthy,
            data_units: 1,
            parity_units: 0,
            pool_width: 1,
            unit_size: 1 << 20,
        }],
    };
    ctl.set_sns_rate(0).await.expect("rate: states only");
    client
        .start_rconfc(Fid::typed(FidType::Profile, 1, 0))
        .await
        .expect("rconfc");
    let status = |kind| {
        let client = &client;
        async move {
            let v = client.sns_status(kind, pool).await.expect("status");
            assert_eq!(v.len(), 1, "{v:?}");
            v[0].state
        }
    };
    for kind in [SnsKind::Repair, SnsKind::Rebalance] {
        let other = match kind {
            SnsKind::Repair => SnsKind::Rebalance,
            SnsKind::Rebalance => SnsKind::Repair,
        };
        for (from, op, to) in SNS_TABLE {
            // A pool defined again starts with idle machines.
            ctl.define_pool(define()).await.expect("pool");
            let reach: &[SnsOp] = match from {
                CmStatus::Started => &[SnsOp::Start],
                CmStatus::Paused => &[SnsOp::Start, SnsOp::Quiesce],
                _ => &[],
            };
            for r in reach {
                client.sns(kind, *r, pool).await.expect("reach");
            }
            if from == CmStatus::Failed {
                ctl.fail_sns(pool, kind).await.expect("fail");
            }
            assert_eq!(status(kind).await, from, "{kind:?} reaches {from:?}");
            let what = format!("{kind:?} {op:?} from {from:?}");
            assert_eq!(client.sns(kind, op, pool).await, Ok(()), "{what}");
            assert_eq!(status(kind).await, to, "{what}");
            assert_eq!(status(other).await, CmStatus::Idle, "{what}: the other");
        }
    }
    let report = tokio::task::spawn_blocking(move || halon.stop().expect("stop"))
        .await
        .expect("join");
    assert_eq!(report.violations, 0);
}
