//! Shared harness of the emulator tests: a recorder of every callback of the raw
//! C API, with a configurable user (reply, deliver, disconnect automatically or
//! not), and helpers to build messages.
//!
//! Included with `#[path]` by the `emulator_*` test files; compiled alone it
//! holds no test.
#![allow(dead_code, missing_debug_implementations)]

use hax_sys::*;
use std::collections::VecDeque;
use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::fmt;
use std::ptr;
use std::sync::atomic::{AtomicPtr, AtomicU32, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::{self, ThreadId};
use std::time::{Duration, Instant};

/// How long a test waits for a condition before it fails.
pub const WAIT: Duration = Duration::from_secs(10);

/// A received message, kept whole.
#[derive(Clone)]
pub struct Msg(pub Box<hax_msg>);

impl fmt::Debug for Msg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Msg(type {} tag {} notes {})",
            self.0.type_, self.0.tag, self.0.nr_notes
        )
    }
}

/// One callback, as the emulator made it.
#[derive(Debug, Clone)]
pub enum Ev {
    EpReq {
        req: u64,
        ep: String,
        fid: hax_fid,
        git: String,
        pid: u64,
        first: bool,
        th: ThreadId,
    },
    Recv {
        link: u64,
        tag: u64,
        msg: Msg,
        th: ThreadId,
    },
    Delivered {
        link: u64,
        tag: u64,
        th: ThreadId,
    },
    NotDelivered {
        link: u64,
        tag: u64,
        th: ThreadId,
    },
    Connected {
        req: u64,
        link: u64,
        ep: String,
        fid: hax_fid,
        th: ThreadId,
    },
    Reused {
        req: u64,
        link: u64,
        th: ThreadId,
    },
    Absent {
        req: u64,
        th: ThreadId,
    },
    Disconnecting {
        link: u64,
        th: ThreadId,
    },
    Disconnected {
        link: u64,
        th: ThreadId,
    },
    Violation {
        code: i32,
        detail: String,
    },
}

/// What the recording user does on its own, from inside the callbacks.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Reply to entrypoint requests inside the callback.
    pub auto_reply: bool,
    /// rc of successive automatic replies; 0 once empty.
    pub reply_rcs: VecDeque<i32>,
    /// Call delivered() inside msg_received.
    pub auto_deliver: bool,
    /// Call disconnect() inside link_is_disconnecting.
    pub auto_disconnect: bool,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            auto_reply: true,
            reply_rcs: VecDeque::new(),
            auto_deliver: true,
            auto_disconnect: true,
        }
    }
}

#[derive(Default)]
pub struct Inner {
    pub events: Vec<Ev>,
    pub logs: Vec<(i32, String)>,
    pub policy: Policy,
    /// Return codes of the calls the automatic user made.
    pub auto_rcs: Vec<(&'static str, c_int)>,
    /// Received and not delivered yet (without auto_deliver).
    pub pending: Vec<(u64, u64)>,
}

pub struct Shared {
    pub h: AtomicPtr<hax_glue>,
    pub inner: Mutex<Inner>,
    pub cv: Condvar,
    pub log_level: AtomicU32,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn push(&self, ev: Ev) {
        let mut g = self.lock();
        g.events.push(ev);
        drop(g);
        self.cv.notify_all();
    }

    fn auto_rc(&self, what: &'static str, rc: c_int) {
        self.lock().auto_rcs.push((what, rc));
        self.cv.notify_all();
    }
}

fn tid() -> ThreadId {
    thread::current().id()
}

/// # Safety
/// `user` is the `Shared` a live `Emu` registered.
unsafe fn shared<'a>(user: *mut c_void) -> &'a Shared {
    // SAFETY: the caller guarantees `user` points at a live `Shared`.
    unsafe { &*(user as *const Shared) }
}

/// # Safety
/// `s` is NULL or a NUL-terminated string valid for the call.
unsafe fn string(s: *const c_char) -> String {
    if s.is_null() {
        return String::new();
    }
    // SAFETY: non-NULL and NUL-terminated per the caller.
    unsafe { CStr::from_ptr(s) }.to_string_lossy().into_owned()
}

unsafe extern "C" fn cb_entrypoint(
    user: *mut c_void,
    req_id: *const hax_u128,
    remote_ep: *const c_char,
    process_fid: *const hax_fid,
    git_rev_id: *const c_char,
    pid: u64,
    first: bool,
) {
    // SAFETY: the emulator passes our `Shared` and pointers valid during the call.
    let (s, req, ep, fid, git) = unsafe {
        (
            shared(user),
            *req_id,
            string(remote_ep),
            *process_fid,
            string(git_rev_id),
        )
    };
    s.push(Ev::EpReq {
        req: req.lo,
        ep,
        fid,
        git,
        pid,
        first,
        th: tid(),
    });
    let rc = {
        let mut g = s.lock();
        if !g.policy.auto_reply {
            return;
        }
        g.policy.reply_rcs.pop_front().unwrap_or(0)
    };
    let rm = hax_fid {
        container: 0x7300_0000_0000_0001,
        key: 2,
    };
    let rm_ep = CString::new("inet:tcp:127.0.0.1@1").unwrap_or_default();
    // SAFETY: the handle is live while callbacks run; every pointer is valid.
    let r = unsafe {
        hax_glue_entrypoint_reply(
            s.h.load(Ordering::Acquire),
            &req,
            rc,
            0,
            ptr::null(),
            ptr::null(),
            1,
            &rm,
            rm_ep.as_ptr(),
        )
    };
    s.auto_rc("entrypoint_reply", r);
}

unsafe extern "C" fn cb_received(user: *mut c_void, link: hax_link_id, msg: *const hax_msg) {
    // SAFETY: our `Shared`; `msg` is valid during the call.
    let (s, m) = unsafe { (shared(user), Msg(Box::new(*msg))) };
    let tag = m.0.tag;
    s.push(Ev::Recv {
        link,
        tag,
        msg: m,
        th: tid(),
    });
    let auto = {
        let mut g = s.lock();
        if !g.policy.auto_deliver {
            g.pending.push((link, tag));
        }
        g.policy.auto_deliver
    };
    if auto {
        // SAFETY: live handle.
        let r = unsafe { hax_glue_delivered(s.h.load(Ordering::Acquire), link, tag) };
        s.auto_rc("delivered", r);
    }
}

unsafe extern "C" fn cb_delivered(user: *mut c_void, link: hax_link_id, tag: u64) {
    // SAFETY: our `Shared`.
    unsafe { shared(user) }.push(Ev::Delivered {
        link,
        tag,
        th: tid(),
    });
}

unsafe extern "C" fn cb_not_delivered(user: *mut c_void, link: hax_link_id, tag: u64) {
    // SAFETY: our `Shared`.
    unsafe { shared(user) }.push(Ev::NotDelivered {
        link,
        tag,
        th: tid(),
    });
}

unsafe extern "C" fn cb_connected(
    user: *mut c_void,
    req_id: *const hax_u128,
    link: hax_link_id,
    remote_ep: *const c_char,
    process_fid: *const hax_fid,
) {
    // SAFETY: our `Shared`; pointers valid during the call.
    let (s, req, ep, fid) =
        unsafe { (shared(user), (*req_id).lo, string(remote_ep), *process_fid) };
    s.push(Ev::Connected {
        req,
        link,
        ep,
        fid,
        th: tid(),
    });
}

unsafe extern "C" fn cb_reused(user: *mut c_void, req_id: *const hax_u128, link: hax_link_id) {
    // SAFETY: our `Shared`; `req_id` valid during the call.
    let (s, req) = unsafe { (shared(user), (*req_id).lo) };
    s.push(Ev::Reused {
        req,
        link,
        th: tid(),
    });
}

unsafe extern "C" fn cb_absent(user: *mut c_void, req_id: *const hax_u128) {
    // SAFETY: our `Shared`; `req_id` valid during the call.
    let (s, req) = unsafe { (shared(user), (*req_id).lo) };
    s.push(Ev::Absent { req, th: tid() });
}

unsafe extern "C" fn cb_disconnecting(user: *mut c_void, link: hax_link_id) {
    // SAFETY: our `Shared`.
    let s = unsafe { shared(user) };
    s.push(Ev::Disconnecting { link, th: tid() });
    if s.lock().policy.auto_disconnect {
        // SAFETY: live handle.
        let r = unsafe { hax_glue_disconnect(s.h.load(Ordering::Acquire), link) };
        s.auto_rc("disconnect", r);
    }
}

unsafe extern "C" fn cb_disconnected(user: *mut c_void, link: hax_link_id) {
    // SAFETY: our `Shared`.
    unsafe { shared(user) }.push(Ev::Disconnected { link, th: tid() });
}

unsafe extern "C" fn cb_violation(user: *mut c_void, code: i32, detail: *const c_char) {
    // SAFETY: our `Shared`; `detail` valid during the call.
    let (s, detail) = unsafe { (shared(user), string(detail)) };
    s.push(Ev::Violation { code, detail });
}

unsafe extern "C" fn cb_log(user: *mut c_void, level: i32, text: *const c_char) {
    // SAFETY: our `Shared`; `text` valid during the call.
    let (s, text) = unsafe { (shared(user), string(text)) };
    if level as u32 <= s.log_level.load(Ordering::Relaxed) {
        eprintln!("emu[{level}]: {text}");
    }
    s.lock().logs.push((level, text));
    s.cv.notify_all();
}

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A fresh Unix-socket endpoint, unique in this process.
pub fn unix_ep() -> String {
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!(
        "unix:{}/hax-emu-{}-{}.sock",
        std::env::temp_dir().display(),
        std::process::id(),
        n
    )
}

pub const PROCESS: hax_fid = hax_fid {
    container: 0x7200_0000_0000_0001,
    key: 0x3,
};
pub const HA_SVC: hax_fid = hax_fid {
    container: 0x7300_0000_0000_0001,
    key: 0x4,
};
pub const RM_SVC: hax_fid = hax_fid {
    container: 0x7300_0000_0000_0001,
    key: 0x5,
};

/// One handle of the raw API, owned by the thread that made it (its init thread).
pub struct Emu {
    pub h: *mut hax_glue,
    pub shared: Arc<Shared>,
    pub ep: String,
    pub started: bool,
}

impl Emu {
    /// `hax_glue_init()` on the calling thread.
    pub fn init(debug_options: &str) -> Emu {
        let shared = Arc::new(Shared {
            h: AtomicPtr::new(ptr::null_mut()),
            inner: Mutex::new(Inner::default()),
            cv: Condvar::new(),
            log_level: AtomicU32::new(
                std::env::var("HAX_EMU_LOG")
                    .ok()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0),
            ),
        });
        let opts = CString::new(debug_options).unwrap_or_default();
        let mut h = ptr::null_mut();
        // SAFETY: valid out pointer and C string.
        let rc = unsafe { hax_glue_init(&mut h, opts.as_ptr(), ptr::null()) };
        assert_eq!(rc, 0, "hax_glue_init");
        shared.h.store(h, Ordering::Release);
        Emu {
            h,
            shared,
            ep: String::new(),
            started: false,
        }
    }

    pub fn callbacks(&self) -> hax_callbacks {
        hax_callbacks {
            user: Arc::as_ptr(&self.shared) as *mut c_void,
            entrypoint_request: Some(cb_entrypoint),
            msg_received: Some(cb_received),
            msg_delivered: Some(cb_delivered),
            msg_not_delivered: Some(cb_not_delivered),
            link_connected: Some(cb_connected),
            link_reused: Some(cb_reused),
            link_absent: Some(cb_absent),
            link_is_disconnecting: Some(cb_disconnecting),
            link_disconnected: Some(cb_disconnected),
            contract_violation: Some(cb_violation),
            log: Some(cb_log),
        }
    }

    pub fn set_policy(&self, p: Policy) {
        self.shared.lock().policy = p;
    }

    pub fn policy(&self, f: impl FnOnce(&mut Policy)) {
        f(&mut self.shared.lock().policy);
    }

    /// `hax_glue_start()` on `ep` with the recording callbacks.
    pub fn try_start(&mut self, ep: &str) -> c_int {
        let cep = CString::new(ep).unwrap_or_default();
        let cbs = self.callbacks();
        // SAFETY: live handle; valid pointers for the call.
        let rc = unsafe { hax_glue_start(self.h, cep.as_ptr(), &PROCESS, &HA_SVC, &RM_SVC, &cbs) };
        if rc == 0 {
            self.ep = ep.to_owned();
            self.started = true;
        }
        rc
    }

    pub fn start(&mut self, ep: &str) {
        let rc = self.try_start(ep);
        assert_eq!(rc, 0, "hax_glue_start({ep})");
    }

    /// init + start on a fresh Unix endpoint with the default policy.
    pub fn started() -> Emu {
        Emu::started_with("", Policy::default())
    }

    pub fn started_with(opts: &str, p: Policy) -> Emu {
        let mut e = Emu::init(opts);
        e.set_policy(p);
        let ep = unix_ep();
        e.start(&ep);
        e
    }

    pub fn stop(&mut self) -> c_int {
        // SAFETY: live handle, init thread.
        let rc = unsafe { hax_glue_stop(self.h) };
        if rc == 0 || rc == HAX_E_HANG {
            self.started = false;
        }
        rc
    }

    pub fn events(&self) -> Vec<Ev> {
        self.shared.lock().events.clone()
    }

    pub fn logs(&self) -> Vec<(i32, String)> {
        self.shared.lock().logs.clone()
    }

    pub fn auto_rcs(&self) -> Vec<(&'static str, c_int)> {
        self.shared.lock().auto_rcs.clone()
    }

    pub fn clear(&self) {
        let mut g = self.shared.lock();
        g.events.clear();
        g.auto_rcs.clear();
    }

    /// Waits until `pred` holds over the events so far; panics after WAIT.
    pub fn wait<T>(&self, what: &str, mut pred: impl FnMut(&[Ev]) -> Option<T>) -> T {
        self.wait_inner(what, |g| pred(&g.events))
    }

    /// Like `wait`, over everything recorded.
    pub fn wait_inner<T>(&self, what: &str, mut pred: impl FnMut(&Inner) -> Option<T>) -> T {
        let deadline = Instant::now() + WAIT;
        let mut g = self.shared.lock();
        loop {
            if let Some(v) = pred(&g) {
                return v;
            }
            let now = Instant::now();
            assert!(
                now < deadline,
                "timed out waiting for {what}; events: {:#?}",
                g.events
            );
            g = self
                .shared
                .cv
                .wait_timeout(g, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Waits for log lines matching `f`, until there are more than `n`; returns them.
    pub fn wait_logs(&self, what: &str, n: usize, f: impl Fn(&str) -> bool) -> Vec<String> {
        self.wait_inner(what, |g| {
            let v: Vec<String> = g
                .logs
                .iter()
                .filter(|(_, t)| f(t))
                .map(|(_, t)| t.clone())
                .collect();
            (v.len() > n).then_some(v)
        })
    }

    /// Waits until `n` events match `f`, returns them.
    pub fn wait_n(&self, what: &str, n: usize, f: impl Fn(&Ev) -> bool) -> Vec<Ev> {
        self.wait(what, |evs| {
            let v: Vec<Ev> = evs.iter().filter(|e| f(e)).cloned().collect();
            (v.len() >= n).then_some(v)
        })
    }

    /// The self link, from its link_connected.
    pub fn self_link(&self) -> u64 {
        let ep = self.ep.clone();
        self.wait("self link_connected", |evs| {
            evs.iter().find_map(|e| match e {
                Ev::Connected { link, ep: e, .. } if *e == ep => Some(*link),
                _ => None,
            })
        })
    }

    /// Waits for the six start events on the self link (and their delivery).
    pub fn wait_started(&self) -> u64 {
        let l = self.self_link();
        self.wait_n(
            "six start events",
            6,
            |e| matches!(e, Ev::Recv { link, .. } if *link == l),
        );
        l
    }

    pub fn send(&self, link: u64, m: &hax_msg) -> (c_int, u64) {
        let mut tag = u64::MAX;
        // SAFETY: live handle, valid pointers.
        let rc = unsafe { hax_glue_send(self.h, link, m, &mut tag) };
        (rc, tag)
    }

    pub fn delivered(&self, link: u64, tag: u64) -> c_int {
        // SAFETY: live handle.
        let rc = unsafe { hax_glue_delivered(self.h, link, tag) };
        if rc == 0 {
            self.shared.lock().pending.retain(|p| *p != (link, tag));
        }
        rc
    }

    pub fn disconnect(&self, link: u64) -> c_int {
        // SAFETY: live handle.
        unsafe { hax_glue_disconnect(self.h, link) }
    }

    pub fn reply(&self, req: u64, rc: i32) -> c_int {
        reply_raw(SendPtr(self.h), req, rc)
    }

    pub fn violations(&self) -> u64 {
        // SAFETY: live handle.
        unsafe { hax_glue_violations(self.h) }
    }

    /// Violation callbacks so far.
    pub fn violation_events(&self) -> Vec<(i32, String)> {
        self.events()
            .into_iter()
            .filter_map(|e| match e {
                Ev::Violation { code, detail } => Some((code, detail)),
                _ => None,
            })
            .collect()
    }

    /// Runs `f`, then checks it made exactly one violation with `code`.
    pub fn expect_violation(&self, code: c_int, f: impl FnOnce() -> c_int) -> String {
        let before = self.violations();
        let nv = self.violation_events().len();
        let rc = f();
        assert_eq!(rc, code, "return code");
        assert_eq!(self.violations(), before + 1, "violation count");
        let v = self.violation_events();
        assert_eq!(v.len(), nv + 1, "one contract_violation callback: {v:?}");
        assert_eq!(v[nv].0, code, "reported code");
        v[nv].1.clone()
    }
}

impl Drop for Emu {
    fn drop(&mut self) {
        if self.started {
            let pending = {
                let mut g = self.shared.lock();
                g.policy.auto_reply = true;
                g.policy.auto_deliver = true;
                g.policy.auto_disconnect = true;
                std::mem::take(&mut g.pending)
            };
            for (link, tag) in pending {
                let _ = self.delivered(link, tag);
            }
            let _ = self.stop();
        }
        // SAFETY: live handle, init thread; no callback runs after stop.
        let rc = unsafe { hax_glue_fini(self.h) };
        if !thread::panicking() {
            assert_eq!(rc, 0, "hax_glue_fini");
        }
    }
}

pub fn reply_raw(h: SendPtr, req: u64, rc: i32) -> c_int {
    let id = hax_u128 { hi: 0, lo: req };
    let rm = hax_fid {
        container: 0x7300_0000_0000_0001,
        key: 2,
    };
    // SAFETY: valid pointers; NULL lists with confd_nr 0.
    unsafe {
        hax_glue_entrypoint_reply(
            h.0,
            &id,
            rc,
            0,
            ptr::null(),
            ptr::null(),
            1,
            &rm,
            ptr::null(),
        )
    }
}

/// A handle pointer that may cross threads (the tests check the thread rule).
#[derive(Clone, Copy)]
pub struct SendPtr(pub *mut hax_glue);
// SAFETY: the emulator handle is thread-safe; thread rules are what is tested.
unsafe impl Send for SendPtr {}
// SAFETY: as above.
unsafe impl Sync for SendPtr {}

pub fn zmsg() -> Box<hax_msg> {
    Box::new(hax_msg::default())
}

pub fn fid(t: u8, c: u64, k: u64) -> hax_fid {
    hax_fid {
        container: (u64::from(t) << 56) | c,
        key: k,
    }
}

/// An NVEC with the given notes.
pub fn nvec(dir: u32, id_of_get: u64, ignore_same: u64, notes: &[(hax_fid, u32)]) -> Box<hax_msg> {
    let mut m = zmsg();
    m.type_ = HAX_MSG_NVEC;
    m.u.nvec = hax_nvec {
        dir: u64::from(dir),
        id_of_get,
        ignore_same,
    };
    m.nr_notes = notes.len() as u32;
    for (i, (f, s)) in notes.iter().enumerate() {
        m.notes[i] = hax_note {
            id: *f,
            state: *s,
            pad_: 0,
        };
    }
    m
}

pub fn keepalive(hi: u64, lo: u64) -> Box<hax_msg> {
    let mut m = zmsg();
    m.type_ = HAX_MSG_KEEPALIVE_REQ;
    m.u.keepalive = hax_kalive {
        id: hax_u128 { hi, lo },
        counter: 0,
    };
    m
}

pub fn recv_of(evs: &[Ev], l: u64) -> Vec<(u64, Msg)> {
    evs.iter()
        .filter_map(|e| match e {
            Ev::Recv { link, tag, msg, .. } if *link == l => Some((*tag, msg.clone())),
            _ => None,
        })
        .collect()
}

/// A minimal peer speaking docs/emulator-protocol.md.
pub mod peer {
    use super::{fid, WAIT};
    use hax_sys::*;
    use std::io::{ErrorKind, Read, Write};
    use std::os::unix::net::UnixStream;

    pub const HELLO: u8 = 0x01;
    pub const EP_REQ: u8 = 0x02;
    pub const MSG: u8 = 0x03;
    pub const DELIVERED: u8 = 0x04;
    pub const R_HELLO: u8 = 0x81;
    pub const R_EP_REP: u8 = 0x82;
    pub const R_MSG: u8 = 0x83;
    pub const R_DELIVERED: u8 = 0x84;
    pub const R_NOLINK: u8 = 0x85;
    pub const MAGIC: u32 = 0x4841_5845;

    pub fn u64_at(b: &[u8], at: usize) -> u64 {
        let mut a = [0u8; 8];
        a.copy_from_slice(&b[at..at + 8]);
        u64::from_le_bytes(a)
    }

    pub fn u32_at(b: &[u8], at: usize) -> u32 {
        let mut a = [0u8; 4];
        a.copy_from_slice(&b[at..at + 4]);
        u32::from_le_bytes(a)
    }

    #[derive(Debug, Clone, Copy, Default)]
    pub struct Rep {
        pub control: u32,
        pub flags: u8,
        pub req: u64,
        pub cookie: (u64, u64),
        pub link: u64,
        pub next_out: u64,
        pub next_in: u64,
        pub quorum: u32,
    }

    pub struct Peer {
        pub s: UnixStream,
        buf: Vec<u8>,
    }

    pub fn put_str(b: &mut Vec<u8>, s: &str) {
        b.extend_from_slice(&(s.len() as u16).to_le_bytes());
        b.extend_from_slice(s.as_bytes());
    }

    impl Peer {
        pub fn connect(ep: &str) -> Peer {
            let s = UnixStream::connect(ep.trim_start_matches("unix:"))
                .unwrap_or_else(|e| panic!("{e}"));
            s.set_read_timeout(Some(WAIT)).unwrap_or(());
            Peer { s, buf: Vec::new() }
        }

        pub fn hello(ep: &str) -> Peer {
            let mut p = Peer::connect(ep);
            let mut b = MAGIC.to_le_bytes().to_vec();
            b.extend_from_slice(&1u32.to_le_bytes());
            p.send(HELLO, &b);
            let (t, body) = p.recv();
            assert_eq!(t, R_HELLO);
            assert_eq!((u32_at(&body, 0), u32_at(&body, 4)), (MAGIC, 1));
            p
        }

        pub fn raw(&mut self, bytes: &[u8]) {
            self.s
                .write_all(bytes)
                .unwrap_or_else(|e| panic!("write: {e}"));
        }

        pub fn send(&mut self, ty: u8, body: &[u8]) {
            let mut f = ((body.len() + 1) as u32).to_le_bytes().to_vec();
            f.push(ty);
            f.extend_from_slice(body);
            self.raw(&f);
        }

        pub fn try_recv(&mut self) -> std::io::Result<(u8, Vec<u8>)> {
            loop {
                if self.buf.len() >= 4 {
                    let n = u32_at(&self.buf, 0) as usize;
                    if self.buf.len() >= 4 + n {
                        let t = self.buf[4];
                        let body = self.buf[5..4 + n].to_vec();
                        self.buf.drain(..4 + n);
                        return Ok((t, body));
                    }
                }
                let mut chunk = [0u8; 65536];
                let n = self.s.read(&mut chunk)?;
                if n == 0 {
                    return Err(ErrorKind::UnexpectedEof.into());
                }
                self.buf.extend_from_slice(&chunk[..n]);
            }
        }

        pub fn recv(&mut self) -> (u8, Vec<u8>) {
            self.try_recv().unwrap_or_else(|e| panic!("recv: {e}"))
        }

        pub fn expect(&mut self, ty: u8) -> Vec<u8> {
            let (t, b) = self.recv();
            assert_eq!(t, ty, "frame type");
            b
        }

        /// Connection closed by hax (anything still queued is skipped).
        pub fn expect_closed(&mut self, what: &str) {
            loop {
                match self.try_recv() {
                    Ok(_) => continue,
                    Err(e) => {
                        assert!(
                            matches!(
                                e.kind(),
                                ErrorKind::UnexpectedEof | ErrorKind::ConnectionReset
                            ),
                            "{what}: expected a close, got {e}"
                        );
                        return;
                    }
                }
            }
        }

        #[allow(clippy::too_many_arguments)]
        pub fn ep_req(
            &mut self,
            first: bool,
            f: hax_fid,
            cookie: (u64, u64),
            link: u64,
            nout: u64,
            nin: u64,
            ep: &str,
        ) {
            let mut b = vec![u8::from(first)];
            for v in [
                1,
                f.container,
                f.key,
                4242,
                cookie.0,
                cookie.1,
                link,
                nout,
                nin,
            ] {
                b.extend_from_slice(&u64::to_le_bytes(v));
            }
            put_str(&mut b, ep);
            put_str(&mut b, "peer-git");
            self.send(EP_REQ, &b);
        }

        pub fn ep_rep(&mut self) -> Rep {
            let b = self.expect(R_EP_REP);
            Rep {
                control: u32_at(&b, 0),
                flags: b[4],
                req: u64_at(&b, 13),
                cookie: (u64_at(&b, 21), u64_at(&b, 29)),
                link: u64_at(&b, 37),
                next_out: u64_at(&b, 45),
                next_in: u64_at(&b, 53),
                quorum: u32_at(&b, 61),
            }
        }

        pub fn first(&mut self, f: hax_fid, ep: &str) -> Rep {
            self.ep_req(true, f, (0, 0), 0, 0, 0, ep);
            self.ep_rep()
        }

        pub fn msg(&mut self, link: u64, tag: u64, m: &[u8]) {
            let mut b = link.to_le_bytes().to_vec();
            b.extend_from_slice(&tag.to_le_bytes());
            b.extend_from_slice(m);
            self.send(MSG, &b);
        }

        pub fn delivered(&mut self, link: u64, tag: u64) {
            let mut b = link.to_le_bytes().to_vec();
            b.extend_from_slice(&tag.to_le_bytes());
            self.send(DELIVERED, &b);
        }

        /// Next MSG from hax: (link, tag, message type).
        pub fn recv_msg(&mut self) -> (u64, u64, u32) {
            let b = self.expect(R_MSG);
            (u64_at(&b, 0), u64_at(&b, 8), u32_at(&b, 16 + 64))
        }

        pub fn recv_delivered(&mut self) -> (u64, u64) {
            let b = self.expect(R_DELIVERED);
            (u64_at(&b, 0), u64_at(&b, 8))
        }
    }

    pub fn enc_header(f: hax_fid, ty: u32) -> Vec<u8> {
        let mut b = vec![];
        for v in [f.container, f.key, 0, 0, 0, 0, 12345, 0] {
            b.extend_from_slice(&u64::to_le_bytes(v));
        }
        b.extend_from_slice(&ty.to_le_bytes());
        b
    }

    pub fn enc_event(f: hax_fid, ev: u64) -> Vec<u8> {
        let mut b = enc_header(f, HAX_MSG_EVENT_PROCESS);
        for v in [ev, 3, 4242] {
            b.extend_from_slice(&u64::to_le_bytes(v));
        }
        b
    }

    pub fn enc_nvec(dir: u64, id: u64, notes: &[(hax_fid, u32)]) -> Vec<u8> {
        let mut b = enc_header(hax_fid::default(), HAX_MSG_NVEC);
        for v in [dir, id, 0] {
            b.extend_from_slice(&u64::to_le_bytes(v));
        }
        b.extend_from_slice(&(notes.len() as u32).to_le_bytes());
        for (f, s) in notes {
            b.extend_from_slice(&f.container.to_le_bytes());
            b.extend_from_slice(&f.key.to_le_bytes());
            b.extend_from_slice(&s.to_le_bytes());
        }
        b
    }

    pub fn enc_fvec_req(cookie: (u64, u64)) -> Vec<u8> {
        let mut b = enc_header(hax_fid::default(), HAX_MSG_FVEC_REQ);
        for v in [fid(b'o', 2, 9).container, 9, cookie.0, cookie.1] {
            b.extend_from_slice(&u64::to_le_bytes(v));
        }
        b
    }
}

/// The contract of `hax_glue_set_receive_buffers` before start, the same
/// on both backends: over Motr's pool refused, another thread refused, a
/// value within the pool taken.
pub fn receive_buffers_before_start(e: &Emu) {
    let h = SendPtr(e.h);
    // SAFETY: live handle.
    unsafe {
        assert_eq!(
            hax_glue_set_receive_buffers(e.h, HAX_RECEIVE_BUFFERS_MAX + 1),
            HAX_E_INVAL
        );
        assert_eq!(
            hax_glue_set_receive_buffers(std::ptr::null_mut(), 8),
            HAX_E_INVAL
        );
    }
    let rc = std::thread::spawn(move || {
        let h = h;
        // SAFETY: live handle; the call checks the thread first.
        unsafe { hax_glue_set_receive_buffers(h.0, 8) }
    })
    .join()
    .unwrap_or(0);
    assert_eq!(
        rc, HAX_E_THREAD,
        "from a thread the implementation does not know"
    );
    // SAFETY: live handle, init thread.
    unsafe {
        assert_eq!(
            hax_glue_set_receive_buffers(e.h, HAX_RECEIVE_BUFFERS_MAX),
            0
        );
        assert_eq!(hax_glue_set_receive_buffers(e.h, 8), 0);
    }
}

/// Once started, the receive pool is Motr's: the setting is refused.
pub fn receive_buffers_after_start(e: &Emu) {
    // SAFETY: live handle, init thread.
    assert_eq!(unsafe { hax_glue_set_receive_buffers(e.h, 8) }, HAX_E_STATE);
}
