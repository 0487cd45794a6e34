//! Throughput of the emulator with a user that does nothing but deliver:
//! HA messages from 16 peers, and a 1,000-note broadcast to 100 links.
//!
//! The daemon's targets are 100,000 messages/s from 16 peers on 2 cores and a
//! 1,000-note broadcast to 100 links in 20 ms; the emulator must stay well
//! inside them. Debug builds only check that everything arrives, with loose
//! bounds; `cargo test --release` checks the targets.

#[path = "emulator_support.rs"]
mod support;

use hax_sys::*;
use std::ffi::{c_char, c_void, CString};
use std::io::Write;
use std::ptr;
use std::sync::atomic::{AtomicPtr, AtomicU64, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::thread;
use std::time::{Duration, Instant};
use support::peer::*;
use support::{fid, unix_ep, HA_SVC, PROCESS, RM_SVC, WAIT};

#[derive(Default)]
struct Lean {
    h: AtomicPtr<hax_glue>,
    received: AtomicU64,
    delivered: AtomicU64,
    links: Mutex<Vec<u64>>,
    errors: AtomicU64,
}

/// # Safety
/// `u` is the `Lean` registered with the handle.
unsafe fn lean<'a>(u: *mut c_void) -> &'a Lean {
    // SAFETY: per the caller.
    unsafe { &*(u as *const Lean) }
}

unsafe extern "C" fn ep_req(
    u: *mut c_void,
    req: *const hax_u128,
    _: *const c_char,
    _: *const hax_fid,
    _: *const c_char,
    _: u64,
    _: bool,
) {
    // SAFETY: our `Lean`; `req` valid during the call; empty confd lists.
    unsafe {
        let l = lean(u);
        let rm = hax_fid {
            container: 0x7300_0000_0000_0001,
            key: 2,
        };
        let rc = hax_glue_entrypoint_reply(
            l.h.load(Ordering::Acquire),
            req,
            0,
            0,
            ptr::null(),
            ptr::null(),
            1,
            &rm,
            ptr::null(),
        );
        if rc != 0 {
            l.errors.fetch_add(1, Ordering::Relaxed);
        }
    }
}

unsafe extern "C" fn received(u: *mut c_void, link: hax_link_id, m: *const hax_msg) {
    // SAFETY: our `Lean`; `m` valid during the call.
    unsafe {
        let l = lean(u);
        if hax_glue_delivered(l.h.load(Ordering::Acquire), link, (*m).tag) != 0 {
            l.errors.fetch_add(1, Ordering::Relaxed);
        }
        l.received.fetch_add(1, Ordering::Relaxed);
    }
}

unsafe extern "C" fn delivered(u: *mut c_void, _: hax_link_id, _: u64) {
    // SAFETY: our `Lean`.
    unsafe { lean(u) }.delivered.fetch_add(1, Ordering::Relaxed);
}

unsafe extern "C" fn nop_tag(_: *mut c_void, _: hax_link_id, _: u64) {}
unsafe extern "C" fn nop_req(_: *mut c_void, _: *const hax_u128, _: hax_link_id) {}
unsafe extern "C" fn nop_abs(_: *mut c_void, _: *const hax_u128) {}
unsafe extern "C" fn nop_link(_: *mut c_void, _: hax_link_id) {}

unsafe extern "C" fn connected(
    u: *mut c_void,
    _: *const hax_u128,
    link: hax_link_id,
    _: *const c_char,
    f: *const hax_fid,
) {
    // SAFETY: our `Lean`; `f` valid during the call.
    unsafe {
        if ((*f).container, (*f).key) != (PROCESS.container, PROCESS.key) {
            lean(u)
                .links
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(link);
        }
    }
}

unsafe extern "C" fn disconnecting(u: *mut c_void, link: hax_link_id) {
    // SAFETY: our `Lean`.
    unsafe {
        let l = lean(u);
        if hax_glue_disconnect(l.h.load(Ordering::Acquire), link) != 0 {
            l.errors.fetch_add(1, Ordering::Relaxed);
        }
    }
}

struct Handle {
    h: *mut hax_glue,
    lean: Arc<Lean>,
    ep: String,
}

impl Handle {
    fn start() -> Handle {
        let lean = Arc::new(Lean::default());
        let mut h = ptr::null_mut();
        // SAFETY: valid out pointer.
        let rc = unsafe { hax_glue_init(&mut h, ptr::null(), ptr::null()) };
        assert_eq!(rc, 0);
        lean.h.store(h, Ordering::Release);
        let cbs = hax_callbacks {
            user: Arc::as_ptr(&lean) as *mut c_void,
            entrypoint_request: Some(ep_req),
            msg_received: Some(received),
            msg_delivered: Some(delivered),
            msg_not_delivered: Some(nop_tag),
            link_connected: Some(connected),
            link_reused: Some(nop_req),
            link_absent: Some(nop_abs),
            link_is_disconnecting: Some(disconnecting),
            link_disconnected: Some(nop_link),
            contract_violation: None,
            log: None,
        };
        let ep = unix_ep();
        let cep = CString::new(ep.clone()).unwrap_or_default();
        // SAFETY: live handle, valid pointers.
        let rc = unsafe { hax_glue_start(h, cep.as_ptr(), &PROCESS, &HA_SVC, &RM_SVC, &cbs) };
        assert_eq!(rc, 0);
        Handle { h, lean, ep }
    }

    fn wait_for(&self, what: &str, f: impl Fn(&Lean) -> bool) {
        let deadline = Instant::now() + WAIT * 6;
        while !f(&self.lean) {
            assert!(Instant::now() < deadline, "timed out: {what}");
            thread::sleep(Duration::from_micros(200));
        }
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        // SAFETY: live handle, init thread.
        unsafe {
            let stop = hax_glue_stop(self.h);
            let violations = hax_glue_violations(self.h);
            let fini = hax_glue_fini(self.h);
            if !thread::panicking() {
                assert_eq!((stop, violations, fini), (0, 0, 0));
                assert_eq!(self.lean.errors.load(Ordering::Relaxed), 0);
            }
        }
    }
}

/// Under valgrind only correctness is checked, not speed.
fn timed() -> bool {
    !std::env::var("LD_PRELOAD").is_ok_and(|v| v.contains("vgpreload"))
}

fn event_msg(pid: u64) -> Vec<u8> {
    let mut b = vec![];
    for v in [0x7200_0000_0000_0001u64, 7, 0, 0, 0, 0, 1, 0] {
        b.extend_from_slice(&v.to_le_bytes());
    }
    b.extend_from_slice(&HAX_MSG_EVENT_PROCESS.to_le_bytes());
    for v in [1u64, 3, pid] {
        b.extend_from_slice(&v.to_le_bytes());
    }
    b
}

fn msg_frame(out: &mut Vec<u8>, link: u64, tag: u64, m: &[u8]) {
    out.extend_from_slice(&((m.len() + 17) as u32).to_le_bytes());
    out.push(MSG);
    out.extend_from_slice(&link.to_le_bytes());
    out.extend_from_slice(&tag.to_le_bytes());
    out.extend_from_slice(m);
}

#[test]
fn messages_from_16_peers() {
    const PEERS: usize = 16;
    let per_peer: u64 = if cfg!(debug_assertions) {
        5_000
    } else {
        25_000
    };
    let hd = Handle::start();
    let barrier = Arc::new(Barrier::new(PEERS + 1));
    let peers: Vec<_> = (0..PEERS)
        .map(|i| {
            let ep = hd.ep.clone();
            let barrier = barrier.clone();
            thread::spawn(move || {
                let mut p = Peer::hello(&ep);
                let l = p
                    .first(fid(b'r', 1, 100 + i as u64), &format!("peer-{i}"))
                    .link;
                let m = event_msg(i as u64);
                let mut frames = Vec::with_capacity(256 * 130);
                barrier.wait();
                let mut next = 2;
                let mut confirmed = 0;
                while next < 2 + 2 * per_peer {
                    frames.clear();
                    for _ in 0..256 {
                        if next < 2 + 2 * per_peer {
                            msg_frame(&mut frames, l, next, &m);
                            next += 2;
                        }
                    }
                    p.s.write_all(&frames).unwrap_or_else(|e| panic!("{e}"));
                    // Keep at most ~4096 in flight, as a real link's window would.
                    while (next - 2) / 2 - confirmed > 4096 {
                        let (t, _) = p.recv();
                        confirmed += u64::from(t == R_DELIVERED);
                    }
                }
                while confirmed < per_peer {
                    let (t, _) = p.recv();
                    confirmed += u64::from(t == R_DELIVERED);
                }
            })
        })
        .collect();
    barrier.wait();
    let t0 = Instant::now();
    for p in peers {
        p.join().unwrap_or_else(|_| panic!("peer failed"));
    }
    let dt = t0.elapsed();
    let total = per_peer * PEERS as u64;
    assert_eq!(
        hd.lean.received.load(Ordering::Relaxed),
        total + 6,
        "the six start events of the self link too"
    );
    let rate = total as f64 / dt.as_secs_f64();
    eprintln!("{total} messages from {PEERS} peers in {dt:?}: {rate:.0} messages/s");
    let floor = if cfg!(debug_assertions) {
        20_000.0
    } else {
        100_000.0
    };
    assert!(
        !timed() || rate >= floor,
        "{rate:.0} messages/s, want at least {floor}"
    );
}

#[test]
fn broadcast_of_1000_notes_to_100_links() {
    const LINKS: usize = 100;
    let hd = Handle::start();
    let mut peers: Vec<Peer> = (0..LINKS)
        .map(|i| {
            let mut p = Peer::hello(&hd.ep);
            p.first(fid(b'r', 2, i as u64), &format!("bpeer-{i}"));
            p
        })
        .collect();
    hd.wait_for("100 links", |l| {
        l.links.lock().map(|v| v.len()).unwrap_or(0) == LINKS
    });
    let links = hd.lean.links.lock().map(|v| v.clone()).unwrap_or_default();
    let mut m = support::zmsg();
    m.type_ = HAX_MSG_NVEC;
    m.u.nvec = hax_nvec {
        dir: u64::from(HAX_NVEC_SET),
        id_of_get: 0,
        ignore_same: 1,
    };
    m.nr_notes = 1000;
    for i in 0..1000 {
        m.notes[i] = hax_note {
            id: fid(b'd', 3, i as u64),
            state: HAX_NC_ONLINE,
            pad_: 0,
        };
    }
    let mut best_send = Duration::MAX;
    let mut best_all = Duration::MAX;
    for round in 0..5u64 {
        let before = hd.lean.delivered.load(Ordering::Relaxed);
        let t0 = Instant::now();
        for &l in &links {
            let mut tag = 0;
            // SAFETY: live handle, the init thread is known.
            assert_eq!(unsafe { hax_glue_send(hd.h, l, &*m, &mut tag) }, 0);
            assert_eq!(tag, 1 + 2 * round);
        }
        let sent = t0.elapsed();
        thread::scope(|s| {
            for chunk in peers.chunks_mut(25) {
                s.spawn(move || {
                    for p in chunk {
                        let (l, tag, ty) = p.recv_msg();
                        assert_eq!(ty, HAX_MSG_NVEC);
                        p.delivered(l, tag);
                    }
                });
            }
        });
        hd.wait_for("100 msg_delivered", |l| {
            l.delivered.load(Ordering::Relaxed) == before + LINKS as u64
        });
        let all = t0.elapsed();
        best_send = best_send.min(sent);
        best_all = best_all.min(all);
    }
    eprintln!(
        "1000-note broadcast to {LINKS} links: send() x{LINKS} in {best_send:?}, all confirmed in {best_all:?}"
    );
    let bound = Duration::from_millis(if cfg!(debug_assertions) { 200 } else { 20 });
    assert!(
        !timed() || best_send <= bound,
        "{best_send:?} to send, want at most {bound:?}"
    );
}
