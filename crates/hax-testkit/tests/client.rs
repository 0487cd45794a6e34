//! hax-core's Motr client operations against the emulator, whose model
//! (pools, SNS progress, stats, counters, faults) hax-sim's `SimControl`
//! shapes: the SNS state machines through the typed API, rebalance's own
//! status, not-found and not-ready cases, injected errors and what they map
//! to, stop during and after calls, and HA sends while a client call is slow.

use std::time::{Duration, Instant};

use emu_support::{free_endpoint, halon_config};
use hax_core::{
    ByteCountStats, Callbacks, ClientError, CmStatus, Ctx, EntrypointReply, EntrypointRequest,
    EntrypointResponder, Fid, FidType, FsStats, HaLink, HaMsg, HaMsgData, Halon, MotrClient,
    Outcome, PverByteCount, PverInfo, PverState, SnsKind, SnsOp, SnsStatus, Uint128,
};
use hax_sim::{ClientOp, PoolDef, PverDef, SimControl};

#[path = "../../hax-core/tests/emu_support/mod.rs"]
mod emu_support;

const WAIT: Duration = Duration::from_secs(10);

struct Accept;

impl Callbacks for Accept {
    fn entrypoint_request(&self, cx: &Ctx<'_>, req: EntrypointRequest, reply: EntrypointResponder) {
        let rep = EntrypointReply {
            confds: vec![],
            quorum: 1,
            rm_fid: Fid::typed(FidType::Service, 1, 2),
            rm_endpoint: req.remote_endpoint.clone(),
        };
        if let Err(e) = reply.accept_now(cx, &rep) {
            panic!("entrypoint reply: {e}");
        }
    }
}

fn profile() -> Fid {
    Fid::typed(FidType::Profile, 1, 0)
}
fn pool() -> Fid {
    Fid::typed(FidType::Pool, 1, 1)
}
fn ios(i: u64) -> Fid {
    Fid::typed(FidType::Service, 1, 100 + i)
}
fn ios_process(i: u64) -> Fid {
    Fid::typed(FidType::Process, 1, 20 + i)
}
fn pver() -> Fid {
    Fid::typed(FidType::Pver, 1, 1)
}

/// A started halon interface, its client, and a control connection to its
/// emulator with one pool of `n_ios` ioservices.
struct Fixture {
    halon: Option<Halon<Accept>>,
    link: HaLink,
    client: MotrClient,
    ctl: SimControl,
}

impl Fixture {
    async fn new(n_ios: u64) -> Fixture {
        let ep = free_endpoint();
        let cfg = halon_config(&ep);
        let halon = tokio::task::spawn_blocking(move || Halon::start(cfg, Accept))
            .await
            .expect("join")
            .expect("start");
        let ctl = SimControl::connect(&ep).await.expect("control");
        ctl.define_pool(PoolDef {
            fid: pool(),
            ioservices: (0..n_ios).map(ios).collect(),
            pvers: vec![PverDef {
                fid: pver(),
                state: PverState::Degraded,
                data_units: 4,
                parity_units: 2,
                pool_width: 8,
                unit_size: 1 << 20,
            }],
        })
        .await
        .expect("pool");
        Fixture {
            link: halon.handle(),
            client: halon.client(),
            halon: Some(halon),
            ctl,
        }
    }

    async fn ready(n_ios: u64) -> Fixture {
        let f = Fixture::new(n_ios).await;
        f.client.start_rconfc(profile()).await.expect("rconfc");
        f
    }

    async fn stop(&mut self) {
        if let Some(mut h) = self.halon.take() {
            tokio::task::spawn_blocking(move || h.stop().expect("stop"))
                .await
                .expect("join");
        }
    }

    /// The pool's status; every ioservice reports the same.
    async fn status(&self, kind: SnsKind) -> (CmStatus, u64) {
        let v = self.client.sns_status(kind, pool()).await.expect("status");
        assert!(!v.is_empty());
        assert!(v
            .iter()
            .all(|s| (s.state, s.progress) == (v[0].state, v[0].progress)));
        (v[0].state, v[0].progress)
    }

    async fn wait_status(&self, kind: SnsKind, what: &str, pred: impl Fn(CmStatus, u64) -> bool) {
        let deadline = Instant::now() + WAIT;
        loop {
            let (s, p) = self.status(kind).await;
            if pred(s, p) {
                return;
            }
            assert!(Instant::now() < deadline, "{what}: still {s:?} at {p}%");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Makes the next `count` calls of `op` fail with `rc`.
    async fn fail_next(&self, op: ClientOp, count: u32, rc: i32) {
        self.ctl.fail_next(op, count, rc).await.expect("fault");
    }

    fn self_link(&self) -> hax_core::LinkId {
        self.link
            .links()
            .into_iter()
            .find(|l| l.is_self)
            .map(|l| l.id)
            .expect("self link")
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        if let Some(mut h) = self.halon.take() {
            let _ = std::thread::spawn(move || h.stop()).join();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repair_starts_progresses_and_ends_idle() {
    let f = Fixture::ready(3).await;
    f.ctl.set_sns_rate(20).await.expect("rate");
    assert_eq!(f.status(SnsKind::Repair).await, (CmStatus::Idle, 0));
    f.client
        .sns(SnsKind::Repair, SnsOp::Start, pool())
        .await
        .expect("start");
    let v = f
        .client
        .sns_status(SnsKind::Repair, pool())
        .await
        .expect("status");
    assert_eq!(
        v.iter().map(|s| s.fid).collect::<Vec<_>>(),
        [ios(0), ios(1), ios(2)],
        "one entry per ioservice"
    );
    f.wait_status(SnsKind::Repair, "progress", |s, p| {
        (s == CmStatus::Started && p >= 10) || p == 100
    })
    .await;
    // Runs end within a millisecond at this rate.
    f.ctl.set_sns_rate(100_000).await.expect("rate");
    f.wait_status(SnsKind::Repair, "repair done", |s, p| {
        s == CmStatus::Idle && p == 100
    })
    .await;
    assert_eq!(CmStatus::Idle.code(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_calls_answer_ok_and_show_in_the_status() {
    let f = Fixture::ready(2).await;
    f.ctl.set_sns_rate(0).await.expect("rate");
    let sns = |op| f.client.sns(SnsKind::Repair, op, pool());
    // As on real Motr, no control call is refused: what it did shows only in
    // the status.
    sns(SnsOp::Quiesce).await.expect("quiesce while idle");
    assert_eq!(f.status(SnsKind::Repair).await, (CmStatus::Paused, 0));
    sns(SnsOp::Abort).await.expect("abort while paused");
    assert_eq!(f.status(SnsKind::Repair).await.0, CmStatus::Idle);
    sns(SnsOp::Continue).await.expect("continue while idle");
    assert_eq!(
        f.status(SnsKind::Repair).await,
        (CmStatus::Started, 0),
        "continue of an idle machine starts it"
    );
    sns(SnsOp::Start).await.expect("started twice");
    assert_eq!(f.status(SnsKind::Repair).await.0, CmStatus::Started);
    sns(SnsOp::Quiesce).await.expect("quiesce");
    assert_eq!(f.status(SnsKind::Repair).await.0, CmStatus::Paused);
    // A paused repair does not progress, however fast the rate.
    f.ctl.set_sns_rate(100_000).await.expect("rate");
    assert_eq!(f.status(SnsKind::Repair).await, (CmStatus::Paused, 0));
    sns(SnsOp::Quiesce).await.expect("quiesce twice");
    sns(SnsOp::Start).await.expect("start while paused");
    assert_eq!(f.status(SnsKind::Repair).await, (CmStatus::Paused, 0));
    f.ctl.set_sns_rate(0).await.expect("rate");
    sns(SnsOp::Continue).await.expect("continue");
    assert_eq!(f.status(SnsKind::Repair).await.0, CmStatus::Started);
    sns(SnsOp::Abort).await.expect("abort");
    assert_eq!(f.status(SnsKind::Repair).await.0, CmStatus::Idle);
    sns(SnsOp::Start).await.expect("start after abort");
    // A refusal comes only from the emulator's fault injection now.
    f.fail_next(ClientOp::Sns, 1, -16).await;
    assert_eq!(sns(SnsOp::Start).await, Err(ClientError::Busy));
    assert_eq!(f.status(SnsKind::Repair).await.0, CmStatus::Started);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebalance_status_is_rebalances() {
    let f = Fixture::ready(2).await;
    f.ctl.set_sns_rate(0).await.expect("rate");
    f.client
        .sns(SnsKind::Rebalance, SnsOp::Start, pool())
        .await
        .expect("rebalance start");
    assert_eq!(f.status(SnsKind::Rebalance).await.0, CmStatus::Started);
    assert_eq!(f.status(SnsKind::Repair).await.0, CmStatus::Idle);
    f.ctl
        .fail_sns(pool(), SnsKind::Rebalance)
        .await
        .expect("fail");
    assert_eq!(f.status(SnsKind::Rebalance).await.0, CmStatus::Failed);
    assert_eq!(f.status(SnsKind::Repair).await.0, CmStatus::Idle);
    f.client
        .sns(SnsKind::Repair, SnsOp::Start, pool())
        .await
        .expect("repair start");
    f.client
        .sns(SnsKind::Rebalance, SnsOp::Abort, pool())
        .await
        .expect("rebalance abort");
    assert_eq!(f.status(SnsKind::Repair).await.0, CmStatus::Started);
    assert_eq!(
        f.status(SnsKind::Rebalance).await.0,
        CmStatus::Failed,
        "abort leaves a failed machine failed"
    );
    f.client
        .sns(SnsKind::Rebalance, SnsOp::Start, pool())
        .await
        .expect("rebalance start again");
    assert_eq!(f.status(SnsKind::Rebalance).await.0, CmStatus::Started);
    f.client
        .sns(SnsKind::Rebalance, SnsOp::Abort, pool())
        .await
        .expect("rebalance abort");
    assert_eq!(f.status(SnsKind::Rebalance).await.0, CmStatus::Idle);
    assert_eq!(f.status(SnsKind::Repair).await.0, CmStatus::Started);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pver_stats_and_counters() {
    // More ioservices than the first array holds.
    let f = Fixture::ready(150).await;
    let v = f
        .client
        .sns_status(SnsKind::Repair, pool())
        .await
        .expect("status");
    assert_eq!(v.len(), 150);
    assert_eq!(
        v[149],
        SnsStatus {
            fid: ios(149),
            state: CmStatus::Idle,
            progress: 0
        }
    );

    assert_eq!(
        f.client.pver_status(pver()).await,
        Ok(PverInfo {
            fid: pver(),
            state: PverState::Degraded,
            data_units: 4,
            parity_units: 2,
            pool_width: 8,
            unit_size: 1 << 20,
        })
    );
    f.ctl
        .set_pver_state(pver(), PverState::Damaged)
        .await
        .expect("pver state");
    assert_eq!(
        f.client.pver_status(pver()).await.map(|p| p.state),
        Ok(PverState::Damaged)
    );

    let stats = FsStats {
        free_seg: 1,
        total_seg: 2,
        free_disk: 30,
        avail_disk: 25,
        total_disk: 40,
        svc_total: 5,
        svc_replied: 4,
    };
    f.ctl.set_fs_stats(stats).await.expect("fs stats");
    assert_eq!(f.client.fs_stats().await, Ok(stats));

    let counts: Vec<PverByteCount> = (0..100)
        .map(|u| PverByteCount {
            pver: pver(),
            user_id: u,
            byte_count: 4096 * u,
            object_count: u,
        })
        .collect();
    f.ctl
        .set_counters(ios_process(0), counts.clone())
        .await
        .expect("counters");
    assert_eq!(
        f.client.proc_counters(ios_process(0)).await,
        Ok(ByteCountStats {
            proc_fid: ios_process(0),
            counts
        })
    );
    // An ioservice listed in a pool, with nothing counted yet.
    assert_eq!(
        f.client.proc_counters(ios(3)).await.map(|b| b.counts.len()),
        Ok(0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_objects_are_not_found() {
    let f = Fixture::ready(1).await;
    let other_pool = Fid::typed(FidType::Pool, 1, 99);
    for kind in [SnsKind::Repair, SnsKind::Rebalance] {
        assert_eq!(
            f.client.sns(kind, SnsOp::Start, other_pool).await,
            Err(ClientError::NotFound(other_pool))
        );
        assert_eq!(
            f.client.sns_status(kind, other_pool).await,
            Err(ClientError::NotFound(other_pool))
        );
    }
    let other_pver = Fid::typed(FidType::Pver, 1, 99);
    assert_eq!(
        f.client.pver_status(other_pver).await,
        Err(ClientError::NotFound(other_pver))
    );
    let other_ios = ios_process(99);
    assert_eq!(
        f.client.proc_counters(other_ios).await,
        Err(ClientError::NotFound(other_ios))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_ready_before_rconfc_and_after_its_stop() {
    let f = Fixture::new(1).await;
    let c = &f.client;
    assert!(!c.is_ready());
    assert_eq!(
        c.sns(SnsKind::Repair, SnsOp::Start, pool()).await,
        Err(ClientError::NotReady)
    );
    assert_eq!(
        c.sns_status(SnsKind::Rebalance, pool()).await,
        Err(ClientError::NotReady)
    );
    assert_eq!(c.pver_status(pver()).await, Err(ClientError::NotReady));
    assert_eq!(c.fs_stats().await, Err(ClientError::NotReady));
    assert_eq!(
        c.proc_counters(ios_process(0)).await,
        Err(ClientError::NotReady)
    );
    assert_eq!(c.stop_rconfc().await, Ok(()), "stop without start");
    assert!(matches!(
        c.start_rconfc(Fid::typed(FidType::Process, 1, 0)).await,
        Err(ClientError::Invalid(_))
    ));
    c.start_rconfc(profile()).await.expect("rconfc");
    assert!(c.is_ready());
    assert!(f.link.client().is_ready(), "every handle sees it");
    assert_eq!(c.start_rconfc(profile()).await, Err(ClientError::Busy));
    c.fs_stats().await.expect("fs stats");
    c.stop_rconfc().await.expect("rconfc stop");
    assert!(!c.is_ready());
    assert_eq!(c.fs_stats().await, Err(ClientError::NotReady));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injected_errors_map_to_their_variants() {
    let f = Fixture::ready(1).await;
    let cases = [
        (-110, ClientError::Timeout),
        (-16, ClientError::Busy),
        (-114, ClientError::Busy),
        (-71, ClientError::Busy),
        (-108, ClientError::ShuttingDown),
        (-89, ClientError::NotReady),
        (
            -2,
            ClientError::Motr {
                op: "fs stats",
                code: -2,
            },
        ),
        (
            -5,
            ClientError::Motr {
                op: "fs stats",
                code: -5,
            },
        ),
    ];
    for (rc, want) in cases {
        f.fail_next(ClientOp::FsStats, 1, rc).await;
        assert_eq!(f.client.fs_stats().await, Err(want), "rc {rc}");
    }
    assert!(f.client.fs_stats().await.is_ok(), "faults are used up");

    f.fail_next(ClientOp::Sns, 2, -5).await;
    assert_eq!(
        f.client
            .sns(SnsKind::Rebalance, SnsOp::Quiesce, pool())
            .await,
        Err(ClientError::Motr {
            op: "sns rebalance quiesce",
            code: -5
        })
    );
    assert_eq!(
        f.client.sns(SnsKind::Repair, SnsOp::Start, pool()).await,
        Err(ClientError::Motr {
            op: "sns repair start",
            code: -5
        })
    );
    f.fail_next(ClientOp::SnsStatus, 1, -2).await;
    assert_eq!(
        f.client.sns_status(SnsKind::Repair, pool()).await,
        Err(ClientError::NotFound(pool())),
        "-ENOENT names the pool asked about"
    );
    f.fail_next(ClientOp::PverStatus, 1, -110).await;
    assert_eq!(
        f.client.pver_status(pver()).await,
        Err(ClientError::Timeout)
    );
    f.fail_next(ClientOp::ProcCounters, 1, -1).await;
    assert_eq!(
        f.client.proc_counters(ios(0)).await,
        Err(ClientError::Motr {
            op: "proc counters",
            code: -1
        })
    );
    f.client.stop_rconfc().await.expect("stop rconfc");
    f.fail_next(ClientOp::RconfcStart, 1, -110).await;
    assert_eq!(
        f.client.start_rconfc(profile()).await,
        Err(ClientError::Timeout)
    );
    assert!(!f.client.is_ready());
}

/// Waits until `n` client calls are held in an injected delay.
async fn wait_delayed(ctl: &SimControl, n: u32) {
    let deadline = Instant::now() + WAIT;
    while ctl.delayed_calls().await.expect("delayed") != n {
        assert!(
            Instant::now() < deadline,
            "no client call reached its delay"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_client_call_does_not_delay_ha_sends() {
    let mut f = Fixture::ready(1).await;
    f.ctl
        .delay_next(ClientOp::SnsStatus, 1, Duration::from_secs(60))
        .await
        .expect("delay");
    let c = f.client.clone();
    let slow = tokio::spawn(async move { c.sns_status(SnsKind::Repair, pool()).await });
    wait_delayed(&f.ctl, 1).await;
    // A queued client call waits behind it; HA sends do not.
    let c = f.client.clone();
    let queued = tokio::spawn(async move { c.fs_stats().await });
    let l = f.self_link();
    for i in 0..5 {
        let msg = HaMsg::new(HaMsgData::KeepaliveReq {
            id: Uint128::new(7, i),
        });
        let tracked = tokio::time::timeout(WAIT, f.link.send_tracked(l, msg))
            .await
            .expect("send in time")
            .expect("send");
        let outcome = tokio::time::timeout(WAIT, tracked.outcome())
            .await
            .expect("outcome in time");
        assert_eq!(outcome.expect("outcome"), Outcome::Delivered);
    }
    assert!(!slow.is_finished(), "the slow call returned early");
    assert!(!queued.is_finished(), "client calls run one at a time");
    // Stop does not wait 60 s: the call in progress and the queued one end.
    let began = Instant::now();
    f.stop().await;
    assert!(
        began.elapsed() < Duration::from_secs(8),
        "{:?}",
        began.elapsed()
    );
    let r = tokio::time::timeout(WAIT, slow)
        .await
        .expect("in time")
        .expect("join");
    assert_eq!(r, Err(ClientError::ShuttingDown));
    let r = tokio::time::timeout(WAIT, queued)
        .await
        .expect("in time")
        .expect("join");
    assert_eq!(r, Err(ClientError::ShuttingDown));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_after_stop_end_at_once() {
    let mut f = Fixture::ready(1).await;
    let client = f.client.clone();
    f.stop().await;
    assert!(!client.is_ready());
    let began = Instant::now();
    assert_eq!(client.fs_stats().await, Err(ClientError::ShuttingDown));
    assert_eq!(
        client.sns(SnsKind::Repair, SnsOp::Start, pool()).await,
        Err(ClientError::ShuttingDown)
    );
    assert_eq!(
        client.start_rconfc(profile()).await,
        Err(ClientError::ShuttingDown)
    );
    assert_eq!(client.stop_rconfc().await, Err(ClientError::ShuttingDown));
    assert_eq!(
        f.link.client().pver_status(pver()).await,
        Err(ClientError::ShuttingDown)
    );
    assert!(began.elapsed() < Duration::from_secs(1));
}
