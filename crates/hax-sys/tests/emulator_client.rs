//! The emulator's client operations (hax_glue.h, "Motr client operations")
//! and the CTL frames that shape its model (docs/emulator-protocol.md):
//! lifecycle and thread refusals, the SNS state machines, progress over
//! time, pool versions, byte counts, injected faults and delays, bad frames.

#[path = "emulator_support.rs"]
mod support;

use hax_sys::*;
use std::ptr;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};
use support::peer::*;
use support::*;

const CTL: u8 = 0x05;
const R_CTL: u8 = 0x86;

const CTL_POOL: u8 = 1;
const CTL_PVER_STATE: u8 = 2;
const CTL_FS_STATS: u8 = 3;
const CTL_COUNTERS: u8 = 4;
const CTL_SNS_RATE: u8 = 5;
const CTL_SNS_FAIL: u8 = 6;
const CTL_FAULT: u8 = 7;
const CTL_CLEAR: u8 = 8;
const CTL_DELAYED: u8 = 9;

const OP_RCONFC_START: u8 = 1;
const OP_SNS: u8 = 2;
const OP_SNS_STATUS: u8 = 3;
const OP_FS_STATS: u8 = 5;

const ENOENT: i32 = 2;
const EINVAL: i32 = 22;
const EALREADY: i32 = 114;
const ETIMEDOUT: i32 = 110;
const ESHUTDOWN: i32 = 108;
const EEXIST: i32 = 17;

fn profile() -> hax_fid {
    fid(b'p', 1, 0)
}
fn pool() -> hax_fid {
    fid(b'o', 1, 0x10)
}
fn ios(n: u64) -> hax_fid {
    fid(b's', 1, 0x20 + n)
}
fn pver(n: u64) -> hax_fid {
    fid(b'v', 1, 0x30 + n)
}

fn put_fid(b: &mut Vec<u8>, f: hax_fid) {
    b.extend_from_slice(&f.container.to_le_bytes());
    b.extend_from_slice(&f.key.to_le_bytes());
}

/// A peer that only sends control frames.
struct Ctl {
    p: Peer,
    seq: u64,
}

impl Ctl {
    fn new(ep: &str) -> Ctl {
        Ctl {
            p: Peer::hello(ep),
            seq: 0,
        }
    }

    /// Sends one control operation and returns the rc of its CTL_R.
    fn op(&mut self, op: u8, body: &[u8]) -> i32 {
        self.seq += 1;
        let mut b = self.seq.to_le_bytes().to_vec();
        b.push(op);
        b.extend_from_slice(body);
        self.p.send(CTL, &b);
        let r = self.p.expect(R_CTL);
        assert_eq!(r.len(), 12, "CTL_R body");
        assert_eq!(u64_at(&r, 0), self.seq, "CTL_R seq");
        u32_at(&r, 8) as i32
    }

    fn pool(
        &mut self,
        pool: hax_fid,
        ios: &[hax_fid],
        pvers: &[(hax_fid, u32, [u32; 3], u64)],
    ) -> i32 {
        let mut b = vec![];
        put_fid(&mut b, pool);
        b.extend_from_slice(&(ios.len() as u32).to_le_bytes());
        for f in ios {
            put_fid(&mut b, *f);
        }
        b.extend_from_slice(&(pvers.len() as u32).to_le_bytes());
        for (f, state, nkp, unit) in pvers {
            put_fid(&mut b, *f);
            b.extend_from_slice(&state.to_le_bytes());
            for v in nkp {
                b.extend_from_slice(&v.to_le_bytes());
            }
            b.extend_from_slice(&unit.to_le_bytes());
        }
        self.op(CTL_POOL, &b)
    }

    fn rate(&mut self, percent_per_s: u32) -> i32 {
        self.op(CTL_SNS_RATE, &percent_per_s.to_le_bytes())
    }

    fn fault(&mut self, op: u8, count: u32, rc: i32, delay_ms: u32) -> i32 {
        let mut b = vec![op];
        b.extend_from_slice(&count.to_le_bytes());
        b.extend_from_slice(&rc.to_le_bytes());
        b.extend_from_slice(&delay_ms.to_le_bytes());
        self.op(CTL_FAULT, &b)
    }
}

/// A started emulator with rconfc running and one pool of three ioservices.
fn ready() -> (Emu, Ctl) {
    let e = Emu::started();
    let mut c = Ctl::new(&e.ep);
    let rc = c.pool(
        pool(),
        &[ios(1), ios(2), ios(3)],
        &[(pver(1), HAX_PVER_HEALTHY, [4, 2, 8], 1 << 20)],
    );
    assert_eq!(rc, 0);
    assert_eq!(rconfc_start(&e, &profile()), 0);
    (e, c)
}

fn rconfc_start(e: &Emu, f: &hax_fid) -> i32 {
    // SAFETY: live handle, init thread, valid fid.
    unsafe { hax_glue_rconfc_start(e.h, f) }
}

fn sns(e: &Emu, kind: u32, op: u32) -> i32 {
    // SAFETY: live handle, known thread, valid fid.
    unsafe { hax_glue_sns(e.h, kind, op, &pool()) }
}

fn status_of(h: *mut hax_glue, kind: u32, pool: &hax_fid) -> Result<Vec<hax_sns_status>, i32> {
    let mut out = vec![hax_sns_status::default(); 8];
    let mut nr = 0u32;
    // SAFETY: live handle; `out` holds `cap` entries.
    let rc = unsafe { hax_glue_sns_status(h, kind, pool, out.as_mut_ptr(), 8, &mut nr) };
    if rc != 0 {
        return Err(rc);
    }
    out.truncate(nr as usize);
    Ok(out)
}

fn status(e: &Emu, kind: u32) -> (u32, u64) {
    let v = status_of(e.h, kind, &pool()).unwrap_or_else(|rc| panic!("sns_status: {rc}"));
    assert_eq!(v.len(), 3, "one entry per ioservice");
    let fids: Vec<u64> = v.iter().map(|s| s.fid.key).collect();
    assert_eq!(fids, [ios(1).key, ios(2).key, ios(3).key]);
    assert!(v
        .iter()
        .all(|s| s.state == v[0].state && s.progress == v[0].progress));
    (v[0].state, v[0].progress)
}

/// Brings the pool's `kind` machine to `state` (at rate 0: no progress).
fn reach(e: &Emu, c: &mut Ctl, kind: u32, state: u32) {
    assert_eq!(sns(e, kind, HAX_SNS_ABORT), 0);
    if status(e, kind).0 == HAX_CM_FAILED {
        // Only a new run leaves a failed machine.
        assert_eq!(sns(e, kind, HAX_SNS_START), 0);
        assert_eq!(sns(e, kind, HAX_SNS_ABORT), 0);
    }
    match state {
        HAX_CM_STARTED => assert_eq!(sns(e, kind, HAX_SNS_START), 0),
        HAX_CM_PAUSED => {
            assert_eq!(sns(e, kind, HAX_SNS_START), 0);
            assert_eq!(sns(e, kind, HAX_SNS_QUIESCE), 0);
        }
        HAX_CM_FAILED => {
            let mut b = vec![];
            put_fid(&mut b, pool());
            b.push(kind as u8);
            assert_eq!(c.op(CTL_SNS_FAIL, &b), 0);
        }
        _ => {}
    }
    assert_eq!(status(e, kind).0, state, "reach {state}");
}

/// Polls the status until `pred` holds; panics after WAIT.
fn wait_status(e: &Emu, kind: u32, what: &str, pred: impl Fn(u32, u64) -> bool) -> (u32, u64) {
    let deadline = Instant::now() + WAIT;
    loop {
        let (s, p) = status(e, kind);
        if pred(s, p) {
            return (s, p);
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: state {s}, progress {p}"
        );
        thread::sleep(Duration::from_millis(5));
    }
}

fn fs_stats(h: *mut hax_glue) -> Result<hax_fs_stats, i32> {
    let mut s = hax_fs_stats::default();
    // SAFETY: live handle, valid out pointer.
    let rc = unsafe { hax_glue_fs_stats(h, &mut s) };
    if rc == 0 {
        Ok(s)
    } else {
        Err(rc)
    }
}

#[test]
fn lifecycle_thread_and_rconfc_refusals() {
    let mut e = Emu::init("");
    // Not started.
    assert_eq!(fs_stats(e.h).err(), Some(HAX_E_STATE));
    assert_eq!(rconfc_start(&e, &profile()), HAX_E_STATE);
    e.start(&unix_ep());
    // rconfc not started.
    assert_eq!(fs_stats(e.h).err(), Some(HAX_E_RCONFC));
    assert_eq!(
        status_of(e.h, HAX_SNS_REPAIR, &pool()).err(),
        Some(HAX_E_RCONFC)
    );
    // SAFETY: live handle.
    assert_eq!(unsafe { hax_glue_rconfc_ready(e.h) }, 0);
    // A profile fid only.
    assert_eq!(rconfc_start(&e, &fid(b'r', 1, 0)), HAX_E_INVAL);
    // SAFETY: NULL is what is tested.
    let rc = unsafe { hax_glue_rconfc_start(e.h, ptr::null()) };
    assert_eq!(rc, HAX_E_INVAL);
    assert_eq!(rconfc_start(&e, &profile()), 0);
    assert_eq!(rconfc_start(&e, &profile()), -EALREADY);
    // SAFETY: live handle.
    assert_eq!(unsafe { hax_glue_rconfc_ready(e.h) }, 1);
    let s = fs_stats(e.h).expect("fs_stats once rconfc runs");
    assert_eq!((s.total_disk, s.svc_total), (0, 0), "nothing set yet");
    // Bad arguments.
    // SAFETY: NULL out pointer is what is tested.
    let rc = unsafe { hax_glue_fs_stats(e.h, ptr::null_mut()) };
    assert_eq!(rc, HAX_E_INVAL);
    // SAFETY: live handle; bad kind and op are what is tested.
    assert_eq!(unsafe { hax_glue_sns(e.h, 2, 0, &pool()) }, HAX_E_INVAL);
    // SAFETY: as above.
    assert_eq!(unsafe { hax_glue_sns(e.h, 0, 4, &pool()) }, HAX_E_INVAL);

    // An unknown thread is refused; an adopted one is not.
    let h = SendPtr(e.h);
    let rcs = thread::spawn(move || {
        let h = h;
        let before = fs_stats(h.0).err();
        // SAFETY: live handle.
        assert_eq!(unsafe { hax_glue_thread_adopt(h.0) }, 0);
        let after = fs_stats(h.0).err();
        // SAFETY: adopted above.
        assert_eq!(unsafe { hax_glue_thread_shun(h.0) }, 0);
        (before, after)
    })
    .join()
    .expect("thread");
    assert_eq!(rcs, (Some(HAX_E_THREAD), None));

    // SAFETY: live handle.
    assert_eq!(unsafe { hax_glue_rconfc_stop(e.h) }, 0);
    // SAFETY: live handle.
    let rc = unsafe { hax_glue_rconfc_stop(e.h) };
    assert_eq!(rc, 0, "stop twice is harmless");
    assert_eq!(fs_stats(e.h).err(), Some(HAX_E_RCONFC));
    assert_eq!(rconfc_start(&e, &profile()), 0, "rconfc starts again");

    // stop() ends rconfc; a new run starts without it.
    assert_eq!(e.stop(), 0);
    assert_eq!(fs_stats(e.h).err(), Some(HAX_E_STATE));
    // SAFETY: live handle.
    assert_eq!(unsafe { hax_glue_rconfc_ready(e.h) }, 0);
    e.start(&unix_ep());
    assert_eq!(fs_stats(e.h).err(), Some(HAX_E_RCONFC));
    assert_eq!(e.violations(), 1, "only the unknown thread counted");
}

static CB_RC: AtomicI32 = AtomicI32::new(1);
static CB_USER_H: std::sync::atomic::AtomicPtr<hax_glue> =
    std::sync::atomic::AtomicPtr::new(ptr::null_mut());

unsafe extern "C" fn delivered_calls_client(_user: *mut std::ffi::c_void, _link: u64, _tag: u64) {
    let h = CB_USER_H.load(Ordering::Acquire);
    if !h.is_null() {
        CB_RC.store(fs_stats(h).err().unwrap_or(0), Ordering::Release);
    }
}

#[test]
fn client_call_from_a_callback_thread_is_refused() {
    let mut e = Emu::init("");
    let mut cbs = e.callbacks();
    cbs.msg_delivered = Some(delivered_calls_client);
    CB_USER_H.store(e.h, Ordering::Release);
    let ep = std::ffi::CString::new(unix_ep()).unwrap_or_default();
    // SAFETY: live handle, init thread, valid pointers.
    let rc = unsafe { hax_glue_start(e.h, ep.as_ptr(), &PROCESS, &HA_SVC, &RM_SVC, &cbs) };
    assert_eq!(rc, 0);
    e.started = true;
    e.ep = ep.to_string_lossy().into_owned();
    assert_eq!(rconfc_start(&e, &profile()), 0);
    let l = e.wait_started();
    // A send to the self link is confirmed at once, on the handler thread.
    assert_eq!(e.send(l, &keepalive(1, 1)).0, 0);
    let deadline = Instant::now() + WAIT;
    while CB_RC.load(Ordering::Acquire) == 1 {
        assert!(Instant::now() < deadline, "msg_delivered did not run");
        thread::sleep(Duration::from_millis(2));
    }
    CB_USER_H.store(ptr::null_mut(), Ordering::Release);
    assert_eq!(CB_RC.load(Ordering::Acquire), HAX_E_THREAD);
    let v = e.violation_events();
    assert_eq!(v.len(), 1, "{v:?}");
    assert_eq!(v[0].0, HAX_E_THREAD);
    assert!(v[0].1.contains("callbacks"), "{}", v[0].1);
}

#[test]
fn repair_and_rebalance_state_machines() {
    let (e, mut c) = ready();
    assert_eq!(c.rate(0), 0, "no progress: states only");
    assert_eq!(status(&e, HAX_SNS_REPAIR), (HAX_CM_IDLE, 0));
    // Real Motr answers 0 to every control call; what it did shows only in
    // the status (docs/motr.md, "SNS control").
    let table = [
        (HAX_CM_IDLE, HAX_SNS_START, HAX_CM_STARTED),
        (HAX_CM_IDLE, HAX_SNS_QUIESCE, HAX_CM_PAUSED),
        (HAX_CM_IDLE, HAX_SNS_CONTINUE, HAX_CM_STARTED),
        (HAX_CM_IDLE, HAX_SNS_ABORT, HAX_CM_IDLE),
        (HAX_CM_STARTED, HAX_SNS_START, HAX_CM_STARTED),
        (HAX_CM_STARTED, HAX_SNS_QUIESCE, HAX_CM_PAUSED),
        (HAX_CM_STARTED, HAX_SNS_CONTINUE, HAX_CM_STARTED),
        (HAX_CM_STARTED, HAX_SNS_ABORT, HAX_CM_IDLE),
        (HAX_CM_PAUSED, HAX_SNS_START, HAX_CM_PAUSED),
        (HAX_CM_PAUSED, HAX_SNS_QUIESCE, HAX_CM_PAUSED),
        (HAX_CM_PAUSED, HAX_SNS_CONTINUE, HAX_CM_STARTED),
        (HAX_CM_PAUSED, HAX_SNS_ABORT, HAX_CM_IDLE),
        (HAX_CM_FAILED, HAX_SNS_START, HAX_CM_STARTED),
        (HAX_CM_FAILED, HAX_SNS_QUIESCE, HAX_CM_FAILED),
        (HAX_CM_FAILED, HAX_SNS_CONTINUE, HAX_CM_FAILED),
        (HAX_CM_FAILED, HAX_SNS_ABORT, HAX_CM_FAILED),
    ];
    for kind in [HAX_SNS_REPAIR, HAX_SNS_REBALANCE] {
        let other = 1 - kind;
        for (from, op, to) in table {
            reach(&e, &mut c, kind, from);
            let before = status(&e, other);
            assert_eq!(sns(&e, kind, op), 0, "kind {kind}: op {op} from {from}");
            assert_eq!(status(&e, kind).0, to, "kind {kind}: op {op} from {from}");
            assert_eq!(status(&e, other), before, "the other machine is its own");
        }
    }

    // Unknown pool.
    let other = fid(b'o', 1, 0x99);
    // SAFETY: live handle, valid fid.
    assert_eq!(unsafe { hax_glue_sns(e.h, 0, 0, &other) }, -ENOENT);
    assert_eq!(status_of(e.h, 0, &other).err(), Some(-ENOENT));
    let mut b = vec![];
    put_fid(&mut b, other);
    b.push(0);
    assert_eq!(c.op(CTL_SNS_FAIL, &b), -ENOENT);

    // A too small array: HAX_E_LIMIT and the count needed.
    let mut out = [hax_sns_status::default(); 2];
    let mut nr = 0;
    // SAFETY: `out` holds 2 entries.
    let rc = unsafe { hax_glue_sns_status(e.h, 0, &pool(), out.as_mut_ptr(), 2, &mut nr) };
    assert_eq!((rc, nr), (HAX_E_LIMIT, 3));
    // SAFETY: cap 0 with NULL is allowed.
    let rc = unsafe { hax_glue_sns_status(e.h, 0, &pool(), ptr::null_mut(), 0, &mut nr) };
    assert_eq!((rc, nr), (HAX_E_LIMIT, 3));
    assert_eq!(e.violations(), 0);
}

#[test]
fn progress_advances_with_time_and_pauses() {
    let (e, mut c) = ready();
    assert_eq!(c.rate(20), 0);
    assert_eq!(sns(&e, HAX_SNS_REPAIR, HAX_SNS_START), 0);
    let (s, p) = wait_status(&e, HAX_SNS_REPAIR, "progress >= 10", |_, p| p >= 10);
    assert!(s == HAX_CM_STARTED || p == 100, "state {s} at {p}%");
    assert_eq!(sns(&e, HAX_SNS_REPAIR, HAX_SNS_QUIESCE), 0);
    let (s, paused_at) = status(&e, HAX_SNS_REPAIR);
    assert_eq!(s, HAX_CM_PAUSED);
    // At this rate a running repair ends within a millisecond; a paused one stays.
    assert_eq!(c.rate(100_000), 0);
    assert_eq!(status(&e, HAX_SNS_REPAIR), (HAX_CM_PAUSED, paused_at));
    assert_eq!(status(&e, HAX_SNS_REBALANCE), (HAX_CM_IDLE, 0));
    assert_eq!(sns(&e, HAX_SNS_REPAIR, HAX_SNS_CONTINUE), 0);
    wait_status(&e, HAX_SNS_REPAIR, "repair done", |s, p| {
        s == HAX_CM_IDLE && p == 100
    });
    // A new start begins at 0.
    assert_eq!(c.rate(0), 0);
    assert_eq!(sns(&e, HAX_SNS_REPAIR, HAX_SNS_START), 0);
    assert_eq!(status(&e, HAX_SNS_REPAIR), (HAX_CM_STARTED, 0));
    // Quiesce or continue of an idle machine has done nothing yet: 0 %,
    // though the last run ended at 100 %.
    assert_eq!(c.rate(100_000), 0);
    wait_status(&e, HAX_SNS_REPAIR, "repair done", |s, p| {
        s == HAX_CM_IDLE && p == 100
    });
    assert_eq!(c.rate(0), 0);
    assert_eq!(sns(&e, HAX_SNS_REPAIR, HAX_SNS_QUIESCE), 0);
    assert_eq!(status(&e, HAX_SNS_REPAIR), (HAX_CM_PAUSED, 0));
    assert_eq!(c.rate(100_000), 0);
    assert_eq!(status(&e, HAX_SNS_REPAIR), (HAX_CM_PAUSED, 0), "paused");
    assert_eq!(sns(&e, HAX_SNS_REPAIR, HAX_SNS_CONTINUE), 0);
    wait_status(&e, HAX_SNS_REPAIR, "repair done", |s, p| {
        s == HAX_CM_IDLE && p == 100
    });
    assert_eq!(c.rate(0), 0);
    assert_eq!(sns(&e, HAX_SNS_REPAIR, HAX_SNS_CONTINUE), 0);
    assert_eq!(status(&e, HAX_SNS_REPAIR), (HAX_CM_STARTED, 0));
    // A failed run keeps its progress; a new start begins at 0.
    assert_eq!(c.rate(20), 0);
    wait_status(&e, HAX_SNS_REPAIR, "progress >= 10", |_, p| p >= 10);
    let mut b = vec![];
    put_fid(&mut b, pool());
    b.push(HAX_SNS_REPAIR as u8);
    assert_eq!(c.op(CTL_SNS_FAIL, &b), 0);
    assert_eq!(c.rate(0), 0);
    let (s, failed_at) = status(&e, HAX_SNS_REPAIR);
    assert_eq!(s, HAX_CM_FAILED);
    assert!(failed_at >= 10, "failed at {failed_at}%");
    assert_eq!(sns(&e, HAX_SNS_REPAIR, HAX_SNS_ABORT), 0);
    assert_eq!(status(&e, HAX_SNS_REPAIR), (HAX_CM_FAILED, failed_at));
    assert_eq!(sns(&e, HAX_SNS_REPAIR, HAX_SNS_START), 0);
    assert_eq!(status(&e, HAX_SNS_REPAIR), (HAX_CM_STARTED, 0));
    assert_eq!(c.rate(100_001), -EINVAL);
}

#[test]
fn pver_status_fs_stats_and_counters() {
    let (e, mut c) = ready();
    let mut info = hax_pver_info::default();
    // SAFETY: live handle, valid pointers.
    assert_eq!(unsafe { hax_glue_pver_status(e.h, &pver(1), &mut info) }, 0);
    assert_eq!(
        (
            info.fid.key,
            info.state,
            info.data_units,
            info.parity_units,
            info.pool_width,
            info.unit_size
        ),
        (pver(1).key, HAX_PVER_HEALTHY, 4, 2, 8, 1 << 20)
    );
    let mut b = vec![];
    put_fid(&mut b, pver(1));
    b.extend_from_slice(&HAX_PVER_CRITICAL.to_le_bytes());
    assert_eq!(c.op(CTL_PVER_STATE, &b), 0);
    // SAFETY: as above.
    assert_eq!(unsafe { hax_glue_pver_status(e.h, &pver(1), &mut info) }, 0);
    assert_eq!(info.state, HAX_PVER_CRITICAL);
    // SAFETY: as above.
    let rc = unsafe { hax_glue_pver_status(e.h, &pver(9), &mut info) };
    assert_eq!(rc, -ENOENT);
    let mut b = vec![];
    put_fid(&mut b, pver(1));
    b.extend_from_slice(&7u32.to_le_bytes());
    assert_eq!(c.op(CTL_PVER_STATE, &b), -EINVAL);

    // A pool version belongs to one pool.
    let rc = c.pool(
        fid(b'o', 1, 0x11),
        &[ios(4)],
        &[(pver(1), 0, [1, 0, 1], 4096)],
    );
    assert_eq!(rc, -EEXIST);
    let rc = c.pool(
        fid(b'o', 1, 0x11),
        &[ios(4)],
        &[(pver(2), 9, [1, 0, 1], 4096)],
    );
    assert_eq!(rc, -EINVAL, "state out of range");

    let mut b = vec![];
    for v in [1u64, 2, 3, 4, 5] {
        b.extend_from_slice(&v.to_le_bytes());
    }
    b.extend_from_slice(&6u32.to_le_bytes());
    b.extend_from_slice(&5u32.to_le_bytes());
    assert_eq!(c.op(CTL_FS_STATS, &b), 0);
    let s = fs_stats(e.h).expect("fs_stats");
    assert_eq!(
        (
            s.free_seg,
            s.total_seg,
            s.free_disk,
            s.avail_disk,
            s.total_disk,
            s.svc_total,
            s.svc_replied
        ),
        (1, 2, 3, 4, 5, 6, 5)
    );

    let counters = |c: &mut Ctl, f: hax_fid, v: &[(hax_fid, u64, u64, u64)]| {
        let mut b = vec![];
        put_fid(&mut b, f);
        b.extend_from_slice(&(v.len() as u32).to_le_bytes());
        for (p, u, bc, oc) in v {
            put_fid(&mut b, *p);
            for x in [u, bc, oc] {
                b.extend_from_slice(&x.to_le_bytes());
            }
        }
        c.op(CTL_COUNTERS, &b)
    };
    let fetch = |f: hax_fid, cap: u32| {
        let mut out = vec![hax_pver_count::default(); cap as usize];
        let mut proc_fid = hax_fid::default();
        let mut nr = 0u32;
        // SAFETY: live handle; `out` holds `cap` entries.
        let rc = unsafe {
            hax_glue_proc_counters(e.h, &f, &mut proc_fid, out.as_mut_ptr(), cap, &mut nr)
        };
        out.truncate(nr.min(cap) as usize);
        (rc, proc_fid, nr, out)
    };
    let (rc, pf, nr, _) = fetch(ios(2), 4);
    assert_eq!((rc, pf.key, nr), (0, ios(2).key, 0), "no counters yet");
    assert_eq!(
        counters(
            &mut c,
            ios(2),
            &[(pver(1), 7, 4096, 2), (pver(1), 8, 100, 1)]
        ),
        0
    );
    let (rc, pf, nr, v) = fetch(ios(2), 4);
    assert_eq!((rc, pf.key, nr), (0, ios(2).key, 2));
    let got: Vec<_> = v
        .iter()
        .map(|x| (x.pver.key, x.user_id, x.byte_count, x.object_count))
        .collect();
    assert_eq!(got, [(pver(1).key, 7, 4096, 2), (pver(1).key, 8, 100, 1)]);
    let (rc, _, nr, _) = fetch(ios(2), 1);
    assert_eq!((rc, nr), (HAX_E_LIMIT, 2));
    let (rc, _, _, _) = fetch(ios(9), 4);
    assert_eq!(rc, -ENOENT);
    // Counters make an ioservice process known.
    assert_eq!(
        counters(&mut c, fid(b'r', 1, 0x20), &[(pver(1), 0, 1, 1)]),
        0
    );
    let (rc, pf, nr, _) = fetch(fid(b'r', 1, 0x20), 4);
    assert_eq!((rc, pf.key, nr), (0, 0x20, 1));
    assert_eq!(counters(&mut c, hax_fid::default(), &[]), -EINVAL);

    // CLEAR forgets the model.
    assert_eq!(c.op(CTL_CLEAR, &[]), 0);
    // SAFETY: as above.
    let rc = unsafe { hax_glue_pver_status(e.h, &pver(1), &mut info) };
    assert_eq!(rc, -ENOENT);
    assert_eq!(fs_stats(e.h).map(|s| s.total_disk), Ok(0));
}

#[test]
fn injected_faults_fail_the_next_calls() {
    let (e, mut c) = ready();
    assert_eq!(c.fault(OP_FS_STATS, 2, -ETIMEDOUT, 0), 0);
    assert_eq!(fs_stats(e.h).err(), Some(-ETIMEDOUT));
    assert_eq!(fs_stats(e.h).err(), Some(-ETIMEDOUT));
    assert!(fs_stats(e.h).is_ok(), "only the next two calls");
    assert_eq!(c.fault(OP_SNS, 1, -EINVAL, 0), 0);
    assert_eq!(sns(&e, HAX_SNS_REPAIR, HAX_SNS_START), -EINVAL);
    assert_eq!(
        status(&e, HAX_SNS_REPAIR).0,
        HAX_CM_IDLE,
        "the failed call did nothing"
    );
    assert_eq!(sns(&e, HAX_SNS_REPAIR, HAX_SNS_START), 0);
    assert_eq!(c.fault(OP_FS_STATS, 1, 5, 0), -EINVAL, "a positive rc");
    assert_eq!(c.fault(9, 1, -5, 0), -EINVAL, "an unknown operation");
    assert_eq!(c.fault(0, 1, -5, 0), -EINVAL, "operation 0");

    // rconfc start can fail too.
    // SAFETY: live handle.
    assert_eq!(unsafe { hax_glue_rconfc_stop(e.h) }, 0);
    assert_eq!(c.fault(OP_RCONFC_START, 1, -ETIMEDOUT, 0), 0);
    assert_eq!(rconfc_start(&e, &profile()), -ETIMEDOUT);
    // SAFETY: live handle.
    assert_eq!(unsafe { hax_glue_rconfc_ready(e.h) }, 0);
    assert_eq!(rconfc_start(&e, &profile()), 0);
}

#[test]
fn a_delayed_client_call_does_not_hold_up_sends() {
    let (e, mut c) = ready();
    let l = e.wait_started();
    assert_eq!(c.fault(OP_SNS_STATUS, 1, 0, 60_000), 0);
    let h = SendPtr(e.h);
    let returned = Arc::new(AtomicBool::new(false));
    let r2 = Arc::clone(&returned);
    let t = thread::spawn(move || {
        let h = h;
        // SAFETY: live handle.
        assert_eq!(unsafe { hax_glue_thread_adopt(h.0) }, 0);
        let r = status_of(h.0, HAX_SNS_REPAIR, &pool());
        r2.store(true, Ordering::Release);
        // SAFETY: adopted above.
        unsafe { hax_glue_thread_shun(h.0) };
        r
    });
    // The call is held in the emulator.
    let deadline = Instant::now() + WAIT;
    while c.op(CTL_DELAYED, &[]) != 1 {
        assert!(
            Instant::now() < deadline,
            "the call never reached its delay"
        );
        thread::sleep(Duration::from_millis(2));
    }
    // The handle stays usable while the call waits: sends are confirmed,
    // the model takes control frames.
    for _ in 0..3 {
        assert_eq!(e.send(l, &keepalive(7, 7)).0, 0);
    }
    e.wait_n("three keepalive replies", 3, |ev| {
        matches!(ev, Ev::Recv { link, msg, .. } if *link == l && msg.0.type_ == HAX_MSG_KEEPALIVE_REP)
    });
    assert_eq!(c.rate(5), 0);
    assert!(
        !returned.load(Ordering::Acquire),
        "the delayed call returned early"
    );
    // stop() cuts the delay short.
    let began = Instant::now();
    let mut e = e;
    assert_eq!(e.stop(), 0);
    let r = t.join().expect("thread");
    assert!(
        began.elapsed() < Duration::from_secs(5),
        "{:?}",
        began.elapsed()
    );
    assert_eq!(r.err(), Some(-ESHUTDOWN));
}

#[test]
fn a_delay_without_error_still_answers() {
    let (e, mut c) = ready();
    assert_eq!(c.fault(OP_SNS_STATUS, 1, 0, 50), 0);
    let began = Instant::now();
    assert_eq!(status(&e, HAX_SNS_REPAIR).0, HAX_CM_IDLE);
    assert!(began.elapsed() >= Duration::from_millis(50));
}

#[test]
fn bad_control_frames_drop_the_connection() {
    let (e, mut good) = ready();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("no operation", 1u64.to_le_bytes().to_vec()),
        ("unknown operation", {
            let mut b = 1u64.to_le_bytes().to_vec();
            b.push(0x42);
            b
        }),
        ("short rate", {
            let mut b = 1u64.to_le_bytes().to_vec();
            b.push(CTL_SNS_RATE);
            b.push(1);
            b
        }),
        ("trailing bytes", {
            let mut b = 1u64.to_le_bytes().to_vec();
            b.push(CTL_CLEAR);
            b.push(0);
            b
        }),
        ("ioservice count over the length", {
            let mut b = 1u64.to_le_bytes().to_vec();
            b.push(CTL_POOL);
            put_fid(&mut b, pool());
            b.extend_from_slice(&u32::MAX.to_le_bytes());
            b
        }),
        ("counter count over the length", {
            let mut b = 1u64.to_le_bytes().to_vec();
            b.push(CTL_COUNTERS);
            put_fid(&mut b, ios(1));
            b.extend_from_slice(&1000u32.to_le_bytes());
            b
        }),
    ];
    for (what, body) in cases {
        let mut p = Peer::hello(&e.ep);
        p.send(CTL, &body);
        p.expect_closed(what);
    }
    // Before HELLO.
    let mut p = Peer::connect(&e.ep);
    p.send(CTL, &[0; 9]);
    p.expect_closed("CTL before HELLO");
    // The model and other connections are untouched.
    assert_eq!(good.rate(0), 0);
    assert_eq!(status(&e, HAX_SNS_REPAIR), (HAX_CM_IDLE, 0));
    assert_eq!(e.violations(), 0);
}

#[test]
fn zero_fids_are_refused_by_control() {
    let (_e, mut c) = ready();
    assert_eq!(c.pool(hax_fid::default(), &[], &[]), -EINVAL);
    assert_eq!(
        c.pool(
            fid(b'o', 1, 0x12),
            &[],
            &[(hax_fid::default(), 0, [1, 0, 1], 1)]
        ),
        -EINVAL
    );
    // Redefining a pool replaces it (its ioservices and versions).
    assert_eq!(c.pool(pool(), &[ios(5)], &[]), 0);
    assert_eq!(
        c.pool(fid(b'o', 1, 0x12), &[], &[(pver(1), 0, [1, 0, 1], 1)]),
        0,
        "pver(1) left its old pool"
    );
}
