//! State shared by the callbacks, hax-core's threads and every handle, and
//! [`Ctx`], the view of it on a thread Motr knows.

use std::collections::HashMap;
use std::ffi::CString;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex, MutexGuard, RwLock};

use hax_sys as sys;
use tokio::sync::oneshot;

use crate::entrypoint::{EntrypointReply, LinkInfo};
use crate::error::{Error, Result};
use crate::fid::{Fid, Uint128};
use crate::msg::{HaMsg, LinkId, Tag};
use crate::raw;
use crate::thread::MotrThread;

/// A call handed to the adopted call thread.
pub(crate) type Call = Box<dyn for<'t> FnOnce(&Ctx<'t>) + Send>;

pub(crate) enum CallMsg {
    Run(Call),
    Quit,
}

/// How a sent message ended (Motr reports exactly one of the two).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The peer's user delivered it.
    Delivered,
    /// The link stopped before that.
    NotDelivered,
}

#[derive(Debug)]
struct LinkEntry {
    info: LinkInfo,
    undelivered: u64,
    disconnecting: bool,
    /// Its process reported PROCESS STOPPED on it: such a process tears its
    /// links down by itself, and a broadcast that still reaches it makes
    /// Motr disconnect the links it is closing (its stop then hangs).
    process_stopped: bool,
    /// A newer link of its process connected: a process talks to its HA on
    /// one link, so this one belongs to an earlier incarnation (dead, or
    /// ending). A send to a dead peer costs Motr an RPC timeout.
    superseded: bool,
    disconnect_requested: bool,
    disconnect_issued: bool,
}

/// Waiters for the outcome of tracked sends. An outcome can be reported
/// before the sender learns its tag (self-link sends are confirmed at once),
/// so outcomes that arrive while a tracked send is in flight on their link are
/// kept until the sender collects them.
#[derive(Default)]
struct Herald {
    waiters: HashMap<(LinkId, Tag), oneshot::Sender<Outcome>>,
    in_flight: HashMap<LinkId, usize>,
    early: HashMap<(LinkId, Tag), Outcome>,
}

/// Slots the herald's maps keep once no send is waiting. A broadcast to a
/// thousand links fills them with thousands of entries, and a `HashMap`
/// never gives its room back by itself: the largest burst's would stay.
const HERALD_IDLE_CAPACITY: usize = 64;

impl Herald {
    /// Gives back the room of a burst once its maps are empty.
    fn shrink_when_empty(&mut self) {
        if self.waiters.is_empty() && self.waiters.capacity() > HERALD_IDLE_CAPACITY {
            self.waiters.shrink_to(HERALD_IDLE_CAPACITY);
        }
        if self.early.is_empty() && self.early.capacity() > HERALD_IDLE_CAPACITY {
            self.early.shrink_to(HERALD_IDLE_CAPACITY);
        }
        if self.in_flight.is_empty() && self.in_flight.capacity() > HERALD_IDLE_CAPACITY {
            self.in_flight.shrink_to(HERALD_IDLE_CAPACITY);
        }
    }
}

struct GluePtr(*mut sys::hax_glue);

// SAFETY: the handle is only passed to hax_glue_* functions, which are
// thread-safe for threads Motr knows; hax-core checks that with MotrThread.
unsafe impl Send for GluePtr {}
// SAFETY: as above; the pointer itself is never written through by Rust.
unsafe impl Sync for GluePtr {}

pub(crate) struct Shared {
    glue: RwLock<GluePtr>,
    calls: Mutex<Option<mpsc::Sender<CallMsg>>>,
    links: Mutex<HashMap<LinkId, LinkEntry>>,
    herald: Mutex<Herald>,
    pub(crate) dead: AtomicBool,
    pub(crate) panic: Mutex<Option<String>>,
    pub(crate) local_endpoint: String,
    pub(crate) process_fid: Fid,
    pub(crate) stop_requests: Mutex<Option<mpsc::Sender<()>>>,
    pub(crate) client: Arc<crate::client::Core>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("endpoint", &self.local_endpoint)
            .finish_non_exhaustive()
    }
}

/// Locks a mutex; a poisoned lock still holds consistent data here, since no
/// critical section of hax-core panics halfway.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    pub(crate) fn new(local_endpoint: String, process_fid: Fid) -> Self {
        Shared {
            glue: RwLock::new(GluePtr(std::ptr::null_mut())),
            calls: Mutex::new(None),
            links: Mutex::new(HashMap::new()),
            herald: Mutex::new(Herald::default()),
            dead: AtomicBool::new(false),
            panic: Mutex::new(None),
            local_endpoint,
            process_fid,
            stop_requests: Mutex::new(None),
            client: Arc::default(),
        }
    }

    pub(crate) fn set_glue(&self, p: *mut sys::hax_glue) {
        self.glue.write().unwrap_or_else(|e| e.into_inner()).0 = p;
    }

    pub(crate) fn set_calls(&self, tx: Option<mpsc::Sender<CallMsg>>) {
        *lock(&self.calls) = tx;
    }

    /// Runs `f` with the live handle; fails once the interface is finalised.
    fn with_glue<R>(&self, f: impl FnOnce(*mut sys::hax_glue) -> Result<R>) -> Result<R> {
        let g = self.glue.read().unwrap_or_else(|e| e.into_inner());
        if g.0.is_null() {
            return Err(Error::NotRunning);
        }
        f(g.0)
    }

    /// Violations the C side has counted (always 0 on real Motr).
    pub(crate) fn violations(&self) -> u64 {
        // SAFETY: hax_glue_violations may be called from any thread on a live
        // handle; with_glue guarantees it is live.
        self.with_glue(|g| Ok(unsafe { sys::hax_glue_violations(g) }))
            .unwrap_or(0)
    }

    /// Hands `f` to the adopted call thread.
    pub(crate) fn submit(&self, f: Call) -> Result<()> {
        let calls = lock(&self.calls);
        let tx = calls.as_ref().ok_or(Error::NotRunning)?;
        tx.send(CallMsg::Run(f)).map_err(|_| Error::NotRunning)
    }

    /// Hands `f` to the call thread and returns a receiver of its result. If
    /// the thread is gone, the closure and its sender are dropped, which the
    /// receiver sees as [`Error::NotRunning`].
    pub(crate) fn call<R: Send + 'static>(
        &self,
        f: impl for<'t> FnOnce(&Ctx<'t>) -> Result<R> + Send + 'static,
    ) -> crate::Completion<R> {
        let (tx, rx) = oneshot::channel();
        let _ = self.submit(Box::new(move |cx| {
            let _ = tx.send(f(cx));
        }));
        crate::Completion { rx }
    }

    // ---- link table, fed by the trampolines ----

    pub(crate) fn link_connected(&self, info: LinkInfo) {
        let mut links = lock(&self.links);
        if !info.is_self && !info.process_fid.is_zero() {
            for e in links.values_mut() {
                if !e.info.is_self && e.info.process_fid == info.process_fid {
                    e.superseded = true;
                }
            }
        }
        links.insert(
            info.id,
            LinkEntry {
                info,
                undelivered: 0,
                disconnecting: false,
                process_stopped: false,
                superseded: false,
                disconnect_requested: false,
                disconnect_issued: false,
            },
        );
    }

    pub(crate) fn link_disconnected(&self, link: LinkId) {
        lock(&self.links).remove(&link);
    }

    /// Marks the link as disconnecting; false if it is unknown.
    pub(crate) fn link_disconnecting(&self, link: LinkId) -> bool {
        match lock(&self.links).get_mut(&link) {
            Some(e) => {
                e.disconnecting = true;
                true
            }
            None => false,
        }
    }

    /// Counts a received message that now awaits delivery; false if the link
    /// is already being disconnected by hax (the message cannot be delivered).
    pub(crate) fn message_received(&self, link: LinkId) -> bool {
        match lock(&self.links).get_mut(&link) {
            Some(e) if !e.disconnect_issued => {
                e.undelivered += 1;
                true
            }
            _ => false,
        }
    }

    pub(crate) fn links(&self) -> Vec<LinkInfo> {
        let mut v: Vec<LinkInfo> = lock(&self.links).values().map(|e| e.info.clone()).collect();
        v.sort_by_key(|i| i.id);
        v
    }

    /// Notes that the process `fid` reported PROCESS STOPPED on `link`; the
    /// link is no broadcast target from then on if the process made it.
    pub(crate) fn process_stopped(&self, link: LinkId, fid: Fid) -> bool {
        match lock(&self.links).get_mut(&link) {
            Some(e) if e.info.process_fid == fid => {
                e.process_stopped = true;
                true
            }
            _ => false,
        }
    }

    /// Links a broadcast may use: connected, not disconnecting, their
    /// process has not reported itself stopped, and no newer link of their
    /// process has connected.
    pub(crate) fn active_links(&self) -> Vec<LinkId> {
        let mut v: Vec<LinkId> = lock(&self.links)
            .values()
            .filter(|e| !e.disconnecting && !e.process_stopped && !e.superseded)
            .map(|e| e.info.id)
            .collect();
        v.sort();
        v
    }

    /// Records a panic caught at the C edge; [`crate::Halon::stop`] reports
    /// the first one. With `stop_callbacks`, the callbacks value is not
    /// called again: its view of the links may have lost an event, and the
    /// reply objects' safe answers are all Motr needs from then on.
    pub(crate) fn record_panic(&self, what: &str, msg: String, stop_callbacks: bool) {
        if stop_callbacks {
            self.dead.store(true, Ordering::Release);
        }
        // What panicked may be the tracing subscriber itself.
        crate::trampoline::quietly(|| {
            if stop_callbacks {
                tracing::error!(callback = what, panic = %msg, "callback panicked; no further callbacks will run");
            } else {
                tracing::error!(callback = what, panic = %msg, "callback panicked");
            }
        });
        let mut slot = lock(&self.panic);
        if slot.is_none() {
            *slot = Some(format!("{what}: {msg}"));
        }
    }

    // ---- outcomes of sends ----

    pub(crate) fn outcome(&self, link: LinkId, tag: Tag, o: Outcome) {
        let mut h = lock(&self.herald);
        if let Some(w) = h.waiters.remove(&(link, tag)) {
            let _ = w.send(o);
            h.shrink_when_empty();
        } else if h.in_flight.get(&link).is_some_and(|n| *n > 0) {
            h.early.insert((link, tag), o);
        }
    }

    pub(crate) fn drop_waiters(&self) {
        let mut h = lock(&self.herald);
        h.waiters.clear();
        h.early.clear();
    }
}

/// Access to the halon interface on a thread Motr knows: handed to every
/// callback, and to closures run with [`crate::HaLink::run`]. Neither `Send`
/// nor `Sync`: it carries a [`MotrThread`].
pub struct Ctx<'t> {
    pub(crate) shared: &'t Arc<Shared>,
    pub(crate) thread: MotrThread<'t>,
}

impl std::fmt::Debug for Ctx<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ctx")
            .field("endpoint", &self.shared.local_endpoint)
            .finish()
    }
}

impl<'t> Ctx<'t> {
    /// The proof that this thread is known to Motr.
    pub fn thread(&self) -> MotrThread<'t> {
        self.thread
    }

    /// A handle usable from any thread and from async code.
    pub fn handle(&self) -> crate::HaLink {
        crate::HaLink {
            shared: Arc::clone(self.shared),
        }
    }

    /// hax's own process fid.
    pub fn process_fid(&self) -> Fid {
        self.shared.process_fid
    }

    /// The links connected now.
    pub fn links(&self) -> Vec<LinkInfo> {
        self.shared.links()
    }

    /// Sends `msg` on `link`; returns its tag. The message is checked first
    /// against the rules Motr asserts on.
    pub fn send(&self, link: LinkId, msg: &HaMsg) -> Result<Tag> {
        msg.validate_for_send()?;
        self.send_checked(link, msg)
    }

    /// Sends `msg` on every link in `links`, converting it once. Links that
    /// are gone give [`Error::LinkGone`] in their slot.
    pub fn broadcast(&self, links: &[LinkId], msg: &HaMsg) -> Result<Vec<(LinkId, Result<Tag>)>> {
        msg.validate_for_send()?;
        let mut raw_msg = Box::<sys::hax_msg>::default();
        raw::msg_to_raw(msg, &mut raw_msg)?;
        Ok(links
            .iter()
            .map(|&l| (l, self.send_raw(l, &raw_msg)))
            .collect())
    }

    /// Sends a message already checked (or built by a reply object).
    pub(crate) fn send_checked(&self, link: LinkId, msg: &HaMsg) -> Result<Tag> {
        let mut raw_msg = Box::<sys::hax_msg>::default();
        raw::msg_to_raw(msg, &mut raw_msg)?;
        self.send_raw(link, &raw_msg)
    }

    fn send_raw(&self, link: LinkId, raw_msg: &sys::hax_msg) -> Result<Tag> {
        let usable = lock(&self.shared.links)
            .get(&link)
            .is_some_and(|e| !e.disconnect_issued);
        if !usable {
            return Err(Error::LinkGone(link));
        }
        self.shared.with_glue(|g| {
            let mut tag = 0u64;
            // SAFETY: g is live (with_glue), this thread is known to Motr
            // (self.thread), raw_msg and tag outlive the call.
            let rc = unsafe { sys::hax_glue_send(g, link.0, raw_msg, &mut tag) };
            if rc == 0 {
                Ok(Tag(tag))
            } else {
                Err(Error::glue("hax_glue_send", rc))
            }
        })
    }

    /// Sends and registers a waiter for the message's outcome.
    pub(crate) fn send_tracked(
        &self,
        link: LinkId,
        msg: &HaMsg,
    ) -> Result<(Tag, oneshot::Receiver<Outcome>)> {
        msg.validate_for_send()?;
        *lock(&self.shared.herald).in_flight.entry(link).or_default() += 1;
        let sent = self.send_checked(link, msg);
        let mut h = lock(&self.shared.herald);
        let n = h.in_flight.entry(link).or_default();
        *n = n.saturating_sub(1);
        let idle = *n == 0;
        let (tx, rx) = oneshot::channel();
        if let Ok(tag) = sent {
            match h.early.remove(&(link, tag)) {
                Some(o) => {
                    let _ = tx.send(o);
                }
                None => {
                    h.waiters.insert((link, tag), tx);
                }
            }
        }
        if idle {
            h.in_flight.remove(&link);
            h.early.retain(|(l, _), _| *l != link);
            h.shrink_when_empty();
        }
        sent.map(|tag| (tag, rx))
    }

    /// Delivers a received message, then issues a disconnect that was waiting
    /// for the link's last delivery.
    pub(crate) fn complete_delivery(&self, link: LinkId, tag: Tag) -> Result<()> {
        let r = self.shared.with_glue(|g| {
            // SAFETY: live handle, known thread.
            let rc = unsafe { sys::hax_glue_delivered(g, link.0, tag.0) };
            if rc == 0 {
                Ok(())
            } else {
                Err(Error::glue("hax_glue_delivered", rc))
            }
        });
        let disconnect = {
            let mut links = lock(&self.shared.links);
            match links.get_mut(&link) {
                Some(e) => {
                    e.undelivered = e.undelivered.saturating_sub(1);
                    let go = e.disconnect_requested && !e.disconnect_issued && e.undelivered == 0;
                    e.disconnect_issued |= go;
                    go
                }
                None => false,
            }
        };
        if disconnect {
            self.raw_disconnect(link)?;
        }
        r
    }

    /// Disconnects once every received message of the link is delivered.
    pub(crate) fn request_disconnect(&self, link: LinkId) -> Result<()> {
        let go = {
            let mut links = lock(&self.shared.links);
            let e = links.get_mut(&link).ok_or(Error::LinkGone(link))?;
            if !e.disconnecting {
                return Err(Error::InvalidArgument(format!(
                    "{link} was not asked to disconnect"
                )));
            }
            e.disconnect_requested = true;
            let go = !e.disconnect_issued && e.undelivered == 0;
            e.disconnect_issued |= go;
            go
        };
        if go {
            self.raw_disconnect(link)?;
        }
        Ok(())
    }

    fn raw_disconnect(&self, link: LinkId) -> Result<()> {
        self.shared.with_glue(|g| {
            // SAFETY: live handle, known thread.
            let rc = unsafe { sys::hax_glue_disconnect(g, link.0) };
            if rc == 0 {
                Ok(())
            } else {
                Err(Error::glue("hax_glue_disconnect", rc))
            }
        })
    }

    pub(crate) fn entrypoint_reply(
        &self,
        req_id: Uint128,
        reply: std::result::Result<&EntrypointReply, i32>,
    ) -> Result<()> {
        let empty = EntrypointReply::default();
        let (rc, rep) = match reply {
            Ok(rep) => (0, rep),
            Err(rc) => (rc, &empty),
        };
        let cstr = |s: &str| {
            CString::new(s)
                .map_err(|_| Error::InvalidArgument(format!("endpoint {s:?} contains a NUL byte")))
        };
        let eps: Vec<CString> = rep
            .confds
            .iter()
            .map(|c| cstr(&c.endpoint))
            .collect::<Result<_>>()?;
        let ep_ptrs: Vec<*const std::ffi::c_char> = eps.iter().map(|c| c.as_ptr()).collect();
        let fids: Vec<sys::hax_fid> = rep.confds.iter().map(|c| raw::fid_to_raw(c.fid)).collect();
        let rm_ep = cstr(&rep.rm_endpoint)?;
        let rm_fid = raw::fid_to_raw(rep.rm_fid);
        let nr = u32::try_from(fids.len())
            .map_err(|_| Error::InvalidArgument("too many confds".into()))?;
        let req = raw::u128_to_raw(req_id);
        self.shared.with_glue(|g| {
            // SAFETY: live handle, known thread; every pointer refers to a
            // local that outlives the call, arrays hold `nr` elements.
            let rc = unsafe {
                sys::hax_glue_entrypoint_reply(
                    g,
                    &req,
                    rc,
                    nr,
                    fids.as_ptr(),
                    ep_ptrs.as_ptr(),
                    rep.quorum,
                    &rm_fid,
                    rm_ep.as_ptr(),
                )
            };
            if rc == 0 {
                Ok(())
            } else {
                Err(Error::glue("hax_glue_entrypoint_reply", rc))
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A broadcast to many links leaves as many waiters; once their
    /// outcomes are in, the map's room goes too, or every burst would keep
    /// the largest one's (issue 15, point 8).
    #[test]
    fn the_herald_gives_back_a_bursts_room() {
        let shared = Shared::new("inet:tcp:127.0.0.1@1".into(), Fid::default());
        let mut outcomes = Vec::new();
        {
            let mut h = lock(&shared.herald);
            for link in 0..2_000 {
                let (tx, rx) = oneshot::channel();
                h.waiters.insert((LinkId(link), Tag(1)), tx);
                outcomes.push(rx);
            }
            assert!(h.waiters.capacity() >= 2_000);
        }
        for link in 0..2_000 {
            shared.outcome(LinkId(link), Tag(1), Outcome::Delivered);
        }
        for mut rx in outcomes {
            assert_eq!(rx.try_recv(), Ok(Outcome::Delivered));
        }
        let h = lock(&shared.herald);
        assert!(h.waiters.is_empty());
        assert!(
            h.waiters.capacity() <= 2 * HERALD_IDLE_CAPACITY,
            "{} slots kept",
            h.waiters.capacity()
        );
    }
}
