//! hax-core's Motr client operations (spiel) on real Motr (feature `motr`)
//! against a real `m0d`: one process with confd, RM, I/O and SNS repair and
//! rebalance services (`motr_support::conf`), hax as its HA answering every
//! NVEC GET with ONLINE. Proves rconfc start and stop (and a start that
//! cannot finish: the m0d stopped with SIGSTOP), filesystem stats, pool
//! version status, the byte counters of the ioservice process, and SNS
//! status and control as far as a single node allows; prints every result.
//! Endpoints in the LNet form `127.0.0.1@tcp:12345:37:<tmid>` (the other
//! m0d tests use libfabric's `inet:tcp:` form), the m0d on hax's transport.
//!
//! Ignored unless hax-core is built with `--features motr`; built with it,
//! fails unless `MOTR_PREFIX` names an installed Motr with `m0d` and `m0mkfs`:
//!
//! ```text
//! MOTR_PREFIX=/opt/motr cargo test -p hax-core --features motr --test motr_client -- --nocapture
//! ```

mod motr_support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use hax_core::{
    Callbacks, ClientError, CmStatus, Ctx, EntrypointRequest, EntrypointResponder, Fid, FidType,
    HaMsgData, HaState, Halon, HalonConfig, LinkId, LinkInfo, MotrClient, NvecGet, PverState,
    SnsKind, SnsOp, Tag, Uint128,
};
use motr_support::*;

#[derive(Clone)]
struct Ha(Arc<EventLog>);

impl Callbacks for Ha {
    fn entrypoint_request(&self, cx: &Ctx<'_>, req: EntrypointRequest, reply: EntrypointResponder) {
        let r = reply.accept_now(cx, &entrypoint_reply(&self.0.m0d_ep()));
        self.0.note(format!(
            "entrypoint_request {} process {} first {} answered {r:?}",
            req.req_id, req.process_fid, req.first_request
        ));
    }

    fn msg_received(
        &self,
        cx: &Ctx<'_>,
        link: LinkId,
        _tag: Tag,
        msg: hax_core::HaMsg,
        d: hax_core::Delivery,
    ) {
        if let HaMsgData::ProcessEvent(e) = &msg.data {
            self.0
                .note(format!("{link} process {} {:?}", msg.fid, e.event));
        }
        let _ = d.deliver_now(cx);
    }

    fn nvec_get(&self, cx: &Ctx<'_>, get: NvecGet, d: hax_core::Delivery) {
        let n = get.fids().len();
        let link = get.link();
        let r = get.answer_now(cx, |_| HaState::Online);
        self.0
            .note(format!("nvec_get {link} {n} fids answered {r:?}"));
        let _ = d.deliver_now(cx);
    }

    fn link_connected(&self, _cx: &Ctx<'_>, _req: Uint128, link: &LinkInfo) {
        self.0.note(format!(
            "link_connected {} process {} self {}",
            link.id, link.process_fid, link.is_self
        ));
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// Runs `f` and prints how long it took and what it gave.
fn timed<T: std::fmt::Debug>(
    what: &str,
    rt: &tokio::runtime::Runtime,
    f: impl std::future::Future<Output = T>,
) -> T {
    let t = Instant::now();
    let r = rt.block_on(f);
    eprintln!("{what}: {r:?} in {:?}", t.elapsed());
    r
}

#[test]
#[cfg_attr(
    not(feature = "motr"),
    ignore = "needs --features motr and an installed Motr (MOTR_PREFIX)"
)]
fn client_operations_on_a_real_m0d() {
    let tools = tools();
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter("info")
        .try_init();
    let dir = scratch("hax-motr-client");
    std::env::set_var("M0_TRACE_DIR", &dir);
    let mut ports = Vec::new();
    let m0d_ep = free_endpoint(37, &mut ports);
    let hax_ep = free_endpoint(37, &mut ports);
    std::fs::write(dir.join("conf.xc"), conf(&m0d_ep, true)).expect("conf.xc");

    let mut mkfs = Proc::spawn(&tools.m0mkfs, &dir, &m0_args(&dir, &m0d_ep), "m0mkfs.log");
    let rc = mkfs.wait(Duration::from_secs(120));
    assert_eq!(rc, Some(0), "m0mkfs:\n{}", tail(&dir, "m0mkfs.log", 30));

    let seen = Arc::new(EventLog::default());
    *seen.m0d_ep.lock().unwrap() = m0d_ep.clone();
    let cfg = HalonConfig {
        endpoint: hax_ep.clone(),
        process_fid: Fid::typed(FidType::Process, 9, 1),
        ha_service_fid: Fid::typed(FidType::Service, 9, 2),
        rm_service_fid: RMS,
        // A start of rconfc that cannot finish returns after 3 s.
        debug_options: "rconfc-timeout-ms=3000".into(),
        receive_buffers: 0,
        node_uuid: None,
    };
    let mut halon = Halon::start(cfg, Ha(Arc::clone(&seen))).expect("halon interface starts");
    let mut args = m0_args(&dir, &m0d_ep);
    args.extend(["-H".to_string(), hax_ep.clone()]);
    let mut m0d = Proc::spawn(&tools.m0d, &dir, &args, "m0d.log");
    let m0d_fid = PROCESS.to_string();
    let started = seen.wait_for("m0d's PROCESS STARTED", Duration::from_secs(90), |e| {
        e.contains(&format!("process {m0d_fid} Started"))
    });
    assert!(started, "m0d started:\n{}", tail(&dir, "m0d.log", 30));
    assert_eq!(
        shared_sockets(m0d.pid()),
        Vec::<String>::new(),
        "m0d holds no socket of the test process"
    );

    let rt = rt();
    let client: MotrClient = halon.client();

    // Before rconfc: every operation but the start is refused.
    let r = timed("fs_stats before rconfc", &rt, client.fs_stats());
    assert!(matches!(r, Err(ClientError::NotReady)), "{r:?}");

    // rconfc: a confd quorum of one, and hax's own Motr asks hax (on its
    // own link) for the HA states of what it read.
    let r = timed("start_rconfc", &rt, client.start_rconfc(PROFILE));
    assert!(r.is_ok(), "{r:?}");
    assert!(client.is_ready());
    let r = timed("start_rconfc again", &rt, client.start_rconfc(PROFILE));
    assert!(matches!(r, Err(ClientError::Busy)), "{r:?}");

    let fs = timed("fs_stats", &rt, client.fs_stats()).expect("fs stats");
    assert!(fs.svc_total >= 1, "the I/O service counts: {fs:?}");
    assert_eq!(fs.svc_replied, fs.svc_total, "{fs:?}");
    assert!(fs.total_seg > 0 && fs.free_seg <= fs.total_seg, "{fs:?}");

    let pv = timed("pver_status", &rt, client.pver_status(PVER)).expect("pver status");
    assert_eq!(pv.fid, PVER);
    // Motr's m0_conf_pver_status() says CRITICAL when the failures equal K:
    // a pool version with K = 0 is CRITICAL with no failure at all.
    assert_eq!(pv.state, PverState::Critical);
    assert_eq!((pv.data_units, pv.parity_units, pv.pool_width), (1, 0, 1));
    let r = timed(
        "pver_status of an unknown pool version",
        &rt,
        client.pver_status(Fid::typed(FidType::Pver, 1, 0x99)),
    );
    assert!(matches!(r, Err(ClientError::NotFound(_))), "{r:?}");

    let bc = timed(
        "proc_counters of the process",
        &rt,
        client.proc_counters(PROCESS),
    )
    .expect("byte counts");
    assert_eq!(bc.proc_fid, PROCESS);
    assert!(bc.counts.is_empty(), "nothing written: {bc:?}");
    let r = timed(
        "proc_counters of the I/O service fid",
        &rt,
        client.proc_counters(IOS),
    );
    assert!(r.is_err(), "a service fid names no process: {r:?}");
    let r = timed(
        "proc_counters of an unknown process",
        &rt,
        client.proc_counters(Fid::typed(FidType::Process, 1, 0x99)),
    );
    assert!(matches!(r, Err(ClientError::NotFound(_))), "{r:?}");

    // SNS: one status per ioservice of the pool, named by the service fid.
    for kind in [SnsKind::Repair, SnsKind::Rebalance] {
        let st = timed(
            &format!("sns_status {kind:?}"),
            &rt,
            client.sns_status(kind, POOL),
        )
        .expect("sns status");
        assert_eq!(st.len(), 1, "{st:?}");
        assert_eq!(st[0].fid, IOS);
        assert_eq!(st[0].state, CmStatus::Idle, "{st:?}");
    }
    let r = timed(
        "sns_status of an unknown pool",
        &rt,
        client.sns_status(SnsKind::Repair, Fid::typed(FidType::Pool, 1, 0x99)),
    );
    assert!(r.is_err(), "{r:?}");
    // Control: what Motr answers on an idle single-node pool with no failed
    // device, and the statuses after each operation.
    let states = |rt: &tokio::runtime::Runtime| {
        let st = |k| {
            rt.block_on(client.sns_status(k, POOL))
                .ok()
                .and_then(|v: Vec<hax_core::SnsStatus>| v.first().map(|s| s.state))
        };
        (st(SnsKind::Repair), st(SnsKind::Rebalance))
    };
    let mut after = Vec::new();
    for (kind, op) in [
        (SnsKind::Rebalance, SnsOp::Quiesce),
        (SnsKind::Rebalance, SnsOp::Continue),
        (SnsKind::Rebalance, SnsOp::Abort),
        (SnsKind::Repair, SnsOp::Quiesce),
        (SnsKind::Repair, SnsOp::Continue),
        (SnsKind::Repair, SnsOp::Abort),
        (SnsKind::Repair, SnsOp::Start),
        (SnsKind::Repair, SnsOp::Abort),
    ] {
        let r = timed(
            &format!("sns {kind:?} {op:?}"),
            &rt,
            client.sns(kind, op, POOL),
        );
        let st = states(&rt);
        eprintln!("  statuses (repair, rebalance) after: {st:?}");
        after.push((kind, op, r.is_ok(), st));
    }
    // Motr accepts every control operation (the copy machine acts on it
    // later, or not at all); what happened shows only in the statuses.
    assert!(after.iter().all(|a| a.2), "{after:?}");
    // Rebalance's status is rebalance's own: quiescing rebalance pauses
    // rebalance and leaves repair idle; then repair's quiesce pauses repair.
    assert_eq!(
        after[0].3,
        (Some(CmStatus::Idle), Some(CmStatus::Paused)),
        "{after:?}"
    );
    assert_eq!(after[3].3 .0, Some(CmStatus::Paused), "{after:?}");

    // rconfc stop and start again.
    let r = timed("stop_rconfc", &rt, client.stop_rconfc());
    assert!(r.is_ok(), "{r:?}");
    let r = timed("fs_stats after stop_rconfc", &rt, client.fs_stats());
    assert!(matches!(r, Err(ClientError::NotReady)), "{r:?}");
    let r = timed(
        "start_rconfc after a stop",
        &rt,
        client.start_rconfc(PROFILE),
    );
    assert!(r.is_ok(), "{r:?}");
    let r = timed("stop_rconfc", &rt, client.stop_rconfc());
    assert!(r.is_ok(), "{r:?}");

    // A start that cannot finish (the m0d does not run): it returns at its
    // deadline and goes on; once the m0d runs again, a new start call sees
    // it finish.
    m0d.signal("STOP");
    let t = Instant::now();
    let r = timed(
        "start_rconfc with the m0d stopped",
        &rt,
        client.start_rconfc(PROFILE),
    );
    assert!(matches!(r, Err(ClientError::Timeout)), "{r:?}");
    assert!(
        t.elapsed() >= Duration::from_millis(2900),
        "{:?}",
        t.elapsed()
    );
    m0d.signal("CONT");
    let deadline = Instant::now() + Duration::from_secs(60);
    let r = loop {
        let r = timed(
            "start_rconfc, m0d running again",
            &rt,
            client.start_rconfc(PROFILE),
        );
        if !matches!(r, Err(ClientError::Timeout)) || Instant::now() > deadline {
            break r;
        }
    };
    assert!(r.is_ok(), "{r:?}");
    let fs = timed("fs_stats", &rt, client.fs_stats());
    assert!(fs.is_ok(), "{fs:?}");

    // rconfc holds a read lock that the m0d's RM lent it: an m0d asked to
    // stop while hax holds it does not exit (it waits for the lock to come
    // back), so rconfc stops first. Then the m0d exits 0 and hax stops.
    let r = timed("stop_rconfc", &rt, client.stop_rconfc());
    assert!(r.is_ok(), "{r:?}");
    m0d.signal("TERM");
    let t = Instant::now();
    let rc = m0d.wait(Duration::from_secs(60));
    eprintln!("m0d exit {rc:?} in {:?}", t.elapsed());
    assert_eq!(rc, Some(0), "m0d exits 0:\n{}", tail(&dir, "m0d.log", 30));
    let t = Instant::now();
    let report = halon.stop().expect("stop");
    eprintln!("hax stopped in {:?}: {report:?}", t.elapsed());
    assert_eq!(report.violations, 0);
    let r = timed("fs_stats after stop", &rt, client.fs_stats());
    assert!(matches!(r, Err(ClientError::ShuttingDown)), "{r:?}");
    let _ = std::fs::remove_dir_all(&dir);
}
