//! The real Motr backend (feature `motr`) through the raw C API, without
//! peers: lifecycle on one thread, the own entrypoint request, the events on
//! the self link, the thread rule, every call Motr would assert on refused
//! with its code (and Motr still working afterwards), and stop's deadline.
//!
//! Ignored unless built with `--features motr` (which needs an installed
//! Motr; `HAX_REQUIRE_MOTR=1` at build time makes a build without it fail):
//!
//! ```text
//! MOTR_PREFIX=/opt/motr cargo test -p hax-sys --features motr --test motr_api -- --nocapture
//! ```
//!
//! One interface per process (Motr's rule), so everything runs in one test.

#[path = "emulator_support.rs"]
mod support;

use hax_sys::*;
use std::ffi::CStr;
use std::net::TcpListener;
use std::ptr;
use std::thread;
use std::time::{Duration, Instant};
use support::*;

const EV_STARTING: u64 = 0;
const EV_STARTED: u64 = 1;
const EV_STOPPING: u64 = 2;
const EV_STOPPED: u64 = 3;

/// `HAX_REQUIRE_MOTR=1` (CI with Motr installed) makes a real-Motr test that
/// cannot run fail rather than be ignored: built without `--features motr`
/// the test would be ignored, so the build stops instead.
#[cfg(not(feature = "motr"))]
const _: () = assert!(
    !matches!(option_env!("HAX_REQUIRE_MOTR"), Some(v) if matches!(v.as_bytes(), [b'1'])),
    "HAX_REQUIRE_MOTR=1: the real-Motr tests need `--features motr` (docs/motr.md)"
);

/// A free LNet-style endpoint on 127.0.0.1 (every Motr transport parses it).
fn free_endpoint() -> String {
    const PORTAL: u16 = 35;
    let seed = (std::process::id() % 1000) as u16;
    for i in 0..1024u16 {
        let tmid = (seed + i * 13) % 1024;
        let port = tmid + 1024 + (PORTAL - 30) * 2048;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return format!("127.0.0.1@tcp:12345:{PORTAL}:{tmid}");
        }
    }
    panic!("no free port for an LNet-style endpoint");
}

/// (type, event, service type) of the messages received on link `l`.
fn event_list(evs: &[Ev], l: u64) -> Vec<(u32, u64, u64)> {
    recv_of(evs, l)
        .into_iter()
        .map(|(_, m)| {
            // SAFETY: event messages use the event member; others read as zeros.
            let e = unsafe { m.0.u.event };
            (m.0.type_, e.event, e.type_)
        })
        .collect()
}

/// EINVAL on Linux.
const EINVAL: i32 = 22;

fn fvec_rep(cookie: (u64, u64)) -> Box<hax_msg> {
    let mut m = zmsg();
    m.type_ = HAX_MSG_FVEC_REP;
    m.u.fvec = hax_fvec {
        pool: fid(b'o', 1, 9),
        cookie_addr: cookie.0,
        cookie_gen: cookie.1,
    };
    m
}

#[test]
#[cfg_attr(
    not(feature = "motr"),
    ignore = "needs --features motr and an installed Motr (MOTR_PREFIX)"
)]
fn real_motr_lifecycle_contract_and_stop_deadline() {
    let dir = std::env::temp_dir().join(format!("hax-motr-api-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    std::env::set_var("M0_TRACE_DIR", &dir);

    // SAFETY: no handle needed.
    let backend = unsafe { CStr::from_ptr(hax_glue_backend()) };
    assert_eq!(backend.to_str(), Ok("motr"));

    let mut e = Emu::init("stop-timeout-ms=1500 rconfc-timeout-ms=3000");
    // A second interface in the same process: refused (one per process).
    let mut h2 = ptr::null_mut();
    // SAFETY: valid out pointer.
    let rc = unsafe { hax_glue_init(&mut h2, ptr::null(), ptr::null()) };
    assert_eq!(rc, HAX_E_STATE);
    // Calls before start.
    assert_eq!(e.send(1, &keepalive(0, 1)).0, HAX_E_STATE);
    // The run below goes on with 8 receive buffers in use, as the daemon's.
    support::receive_buffers_before_start(&e);

    // --- start: the own entrypoint request, answered inside the callback.
    let ep = free_endpoint();
    let t0 = Instant::now();
    e.start(&ep);
    eprintln!("started on {ep} in {:?}", t0.elapsed());
    support::receive_buffers_after_start(&e);
    assert!(
        e.logs()
            .iter()
            .any(|(_, l)| l.starts_with("receive buffers: ") && l.contains("8 kept in use")),
        "the pool was shrunk: {:?}",
        e.logs()
    );
    let evs = e.events();
    match &evs[0] {
        Ev::EpReq {
            req,
            ep: rep,
            fid,
            first,
            pid,
            ..
        } => {
            assert_eq!(*req, 1, "req_id {{0,1}}");
            assert_eq!(rep, &ep, "remote_ep is our own endpoint");
            assert_eq!((fid.container, fid.key), (PROCESS.container, PROCESS.key));
            assert!(*first);
            assert_eq!(*pid, u64::from(std::process::id()));
        }
        other => panic!("first callback: {other:?}"),
    }
    let l = e.self_link();
    let start_events = e.wait("start events", |evs| {
        let v = event_list(evs, l);
        v.iter()
            .any(|(t, ev, _)| *t == HAX_MSG_EVENT_PROCESS && *ev == EV_STARTED)
            .then_some(v)
    });
    eprintln!("start events on the self link: {start_events:?}");
    assert_eq!(
        start_events.first(),
        Some(&(HAX_MSG_EVENT_PROCESS, EV_STARTING, 3))
    );
    assert_eq!(
        start_events.last(),
        Some(&(HAX_MSG_EVENT_PROCESS, EV_STARTED, 3))
    );
    assert!(start_events.contains(&(HAX_MSG_EVENT_SERVICE, EV_STARTING, 6)));
    assert!(start_events.contains(&(HAX_MSG_EVENT_SERVICE, EV_STARTED, 6)));
    let tags: Vec<u64> = recv_of(&e.events(), l).iter().map(|(t, _)| *t).collect();
    eprintln!("self-link tags: {tags:?}");
    assert!(tags.iter().all(|t| t % 2 == 0), "received tags are even");

    // --- the thread rule.
    let h = SendPtr(e.h);
    let rc = thread::spawn(move || {
        let h = h;
        let mut tag = 0;
        // SAFETY: live handle; the thread rule is what is tested.
        unsafe { hax_glue_send(h.0, 1, &*keepalive(0, 1), &mut tag) }
    })
    .join()
    .expect("thread");
    assert_eq!(rc, HAX_E_THREAD, "an unknown thread is refused");
    let rc = thread::spawn(move || {
        let h = h;
        let mut tag = 0;
        // SAFETY: live handle; this thread is adopted for the call.
        unsafe {
            let a = hax_glue_thread_adopt(h.0);
            let s = hax_glue_send(h.0, l, &*keepalive(7, 8), &mut tag);
            let d = hax_glue_thread_shun(h.0);
            (a, s, tag, d)
        }
    })
    .join()
    .expect("thread");
    eprintln!(
        "adopted thread: adopt {} send {} tag {} shun {}",
        rc.0, rc.1, rc.2, rc.3
    );
    assert_eq!((rc.0, rc.1, rc.3), (0, 0, 0));
    assert_eq!(rc.2 % 2, 1, "sent tags are odd");
    // SAFETY: init thread.
    assert_eq!(unsafe { hax_glue_stop(ptr::null_mut()) }, HAX_E_INVAL);
    let rc = thread::spawn(move || {
        let h = h;
        // SAFETY: live handle; the thread rule is what is tested.
        unsafe { hax_glue_stop(h.0) }
    })
    .join()
    .expect("thread");
    assert_eq!(rc, HAX_E_THREAD, "stop only on the init thread");

    // --- what Motr would assert on: refused with a code, Motr keeps going.
    let mut m = keepalive(1, 2);
    m.tag = 5;
    assert_eq!(e.send(l, &m).0, HAX_E_TAG, "non-zero tag on send");
    let mut m = zmsg();
    m.type_ = 0;
    assert_eq!(e.send(l, &m).0, HAX_E_INVAL, "invalid type");
    let sdev = fid(b'd', 1, 0x20);
    assert_eq!(
        e.send(l, &nvec(HAX_NVEC_SET, 0, 1, &[])).0,
        HAX_E_NVEC,
        "NVEC without notes"
    );
    let mut m = nvec(HAX_NVEC_SET, 0, 1, &[(sdev, HAX_NC_ONLINE)]);
    m.nr_notes = HAX_NOTES_MAX + 1;
    assert_eq!(e.send(l, &m).0, HAX_E_LIMIT, "more than 1024 notes");
    assert_eq!(
        e.send(l, &nvec(HAX_NVEC_SET, 0, 1, &[(sdev, HAX_NC_UNKNOWN)]))
            .0,
        HAX_E_NVEC,
        "UNKNOWN in a SET"
    );
    assert_eq!(
        e.send(l, &nvec(HAX_NVEC_SET, 0, 2, &[(sdev, HAX_NC_ONLINE)]))
            .0,
        HAX_E_NVEC,
        "ignore_same not 0/1"
    );
    assert_eq!(
        e.send(
            l,
            &nvec(HAX_NVEC_SET, 0, 1, &[(fid(b'r', 1, 9), HAX_NC_REPAIR)])
        )
        .0,
        HAX_E_NVEC,
        "REPAIR on a process"
    );
    assert_eq!(
        e.send(l, &nvec(HAX_NVEC_SET, 123, 0, &[(sdev, HAX_NC_ONLINE)]))
            .0,
        HAX_E_NVEC,
        "a GET answer without its GET"
    );
    assert_eq!(
        e.send(l, &fvec_rep((0xabc, 1))).0,
        HAX_E_COOKIE,
        "failvec reply without request"
    );
    assert_eq!(e.send(999, &keepalive(0, 1)).0, HAX_E_NOLINK);
    assert_eq!(e.delivered(999, 2), HAX_E_NOLINK);
    assert_eq!(e.delivered(l, 2), HAX_E_NOTAG, "delivered twice");
    assert_eq!(e.delivered(l, 9999), HAX_E_NOTAG, "never received");
    assert_eq!(e.delivered(l, 3), HAX_E_NOTAG, "a sent tag");
    assert_eq!(e.reply(1, 0), HAX_E_NOREQ, "own request answered twice");
    assert_eq!(e.reply(999, 0), HAX_E_NOREQ, "unknown request");
    assert_eq!(
        e.disconnect(l),
        HAX_E_ORDER,
        "disconnect without link_is_disconnecting"
    );
    assert_eq!(e.disconnect(999), HAX_E_NOLINK);
    assert_eq!(e.try_start(&ep), HAX_E_STATE, "start twice");
    // SAFETY: live handle, init thread, started: refused.
    let rc = unsafe { hax_glue_fini(e.h) };
    assert_eq!(rc, HAX_E_STATE, "fini before stop");
    let mut buf = [0 as std::ffi::c_char; HAX_EP_MAX as usize];
    // SAFETY: live handle, buffer of HAX_EP_MAX bytes.
    let rc = unsafe { hax_glue_link_endpoint(e.h, l, buf.as_mut_ptr(), buf.len()) };
    assert_eq!(rc, 0);
    // SAFETY: NUL-terminated by the call.
    let got = unsafe { CStr::from_ptr(buf.as_ptr()) };
    assert_eq!(got.to_str(), Ok(ep.as_str()));

    // Motr still works: a valid SET and a keepalive on the self link.
    let (rc, tag) = e.send(
        l,
        &nvec(HAX_NVEC_SET, 0, 1, &[(fid(b'r', 1, 0x77), HAX_NC_ONLINE)]),
    );
    assert_eq!(rc, 0);
    eprintln!("self-link SET sent with tag {tag}");
    let (rc, tag) = e.send(l, &keepalive(0x11, 0x22));
    assert_eq!(rc, 0);
    eprintln!("self-link KEEPALIVE_REQ sent with tag {tag}");
    thread::sleep(Duration::from_millis(500));
    let after: Vec<(u32, u64)> = recv_of(&e.events(), l)
        .iter()
        .skip(start_events.len())
        .map(|(t, m)| (m.0.type_, *t))
        .collect();
    eprintln!("self link received after the sends: {after:?}");
    let delivered: Vec<u64> = e
        .events()
        .iter()
        .filter_map(|ev| match ev {
            Ev::Delivered { link, tag, .. } if *link == l => Some(*tag),
            _ => None,
        })
        .collect();
    eprintln!("msg_delivered on the self link: {delivered:?}");
    // SAFETY: live handle.
    assert_eq!(unsafe { hax_glue_violations(e.h) }, 0);

    // --- client operations with no confd to read: refused before rconfc
    // runs; rconfc fails at once on an entrypoint that lists no confd.
    let pool = fid(b'o', 1, 9);
    let mut n = 0u32;
    // SAFETY: live handle, init thread, valid pointers (no array with cap 0).
    let (ready, sns, status, fs, stop, notprofile) = unsafe {
        let mut st: hax_fs_stats = std::mem::zeroed();
        (
            hax_glue_rconfc_ready(e.h),
            hax_glue_sns(e.h, HAX_SNS_REPAIR, HAX_SNS_START, &pool),
            hax_glue_sns_status(e.h, HAX_SNS_REBALANCE, &pool, ptr::null_mut(), 0, &mut n),
            hax_glue_fs_stats(e.h, &mut st),
            hax_glue_rconfc_stop(e.h),
            hax_glue_rconfc_start(e.h, &pool),
        )
    };
    assert_eq!(ready, 0, "rconfc not started");
    assert_eq!(
        (sns, status, fs),
        (HAX_E_RCONFC, HAX_E_RCONFC, HAX_E_RCONFC)
    );
    assert_eq!(stop, 0, "rconfc_stop when not started");
    assert_eq!(notprofile, HAX_E_INVAL, "rconfc_start with a pool fid");
    let rc = thread::spawn(move || {
        let h = h;
        // SAFETY: live handle, valid pointer; the thread rule is tested.
        unsafe {
            let mut st: hax_fs_stats = std::mem::zeroed();
            hax_glue_fs_stats(h.0, &mut st)
        }
    })
    .join()
    .expect("thread");
    assert_eq!(rc, HAX_E_THREAD, "client call from an unknown thread");
    let t = Instant::now();
    // SAFETY: live handle, init thread.
    let rc = unsafe { hax_glue_rconfc_start(e.h, &fid(b'p', 1, 0)) };
    let took = t.elapsed();
    let asked = e
        .events()
        .iter()
        .filter(|ev| matches!(ev, Ev::EpReq { first: false, .. }))
        .count();
    eprintln!("rconfc_start with no confd: rc {rc} in {took:?}, {asked} entrypoint requests");
    assert_eq!(rc, -EINVAL, "rconfc refuses an entrypoint without confds");
    assert!(asked >= 1, "rconfc asked for the entrypoint");
    assert!(took < Duration::from_secs(3), "before its deadline");
    // SAFETY: live handle.
    assert_eq!(unsafe { hax_glue_rconfc_ready(e.h) }, 0);

    // --- stop: events to self, the handshake on the self link.
    e.clear();
    let t1 = Instant::now();
    assert_eq!(e.stop(), 0, "stop");
    eprintln!("stopped in {:?}", t1.elapsed());
    let evs = e.events();
    let stop_events = event_list(&evs, l);
    eprintln!("stop events on the self link: {stop_events:?}");
    assert_eq!(
        stop_events.first(),
        Some(&(HAX_MSG_EVENT_PROCESS, EV_STOPPING, 3))
    );
    assert_eq!(
        stop_events.last(),
        Some(&(HAX_MSG_EVENT_PROCESS, EV_STOPPED, 3))
    );
    assert!(stop_events.contains(&(HAX_MSG_EVENT_SERVICE, EV_STOPPED, 6)));
    let order: Vec<&str> = evs
        .iter()
        .filter_map(|ev| match ev {
            Ev::Disconnecting { link, .. } if *link == l => Some("disconnecting"),
            Ev::Disconnected { link, .. } if *link == l => Some("disconnected"),
            _ => None,
        })
        .collect();
    assert_eq!(order, ["disconnecting", "disconnected"]);
    assert_eq!(e.delivered(l, 2), HAX_E_STATE, "calls after stop");

    // --- start again; leave the stop events undelivered: stop's deadline
    // delivers them, and stop reports the hang it avoided.
    let ep2 = free_endpoint();
    e.start(&ep2);
    let l2 = e.self_link();
    assert!(l2 > l, "link ids are not reused across runs");
    e.wait("start events of run 2", |evs| {
        event_list(evs, l2)
            .iter()
            .any(|(t, ev, _)| *t == HAX_MSG_EVENT_PROCESS && *ev == EV_STARTED)
            .then_some(())
    });
    e.policy(|p| p.auto_deliver = false);
    let t2 = Instant::now();
    let rc = e.stop();
    eprintln!(
        "stop with undelivered events: rc {rc} in {:?}",
        t2.elapsed()
    );
    assert_eq!(rc, HAX_E_HANG);
    assert!(e
        .logs()
        .iter()
        .any(|(_, t)| t.contains("was not delivered within")));
    // SAFETY: live handle.
    assert_eq!(unsafe { hax_glue_violations(e.h) }, 0);
    drop(e); // fini on this thread
    let _ = std::fs::remove_dir_all(&dir);
}
