//! The C entry points: one monomorphic `extern "C"` function per callback.
//! Each copies its arguments out of C memory, builds the reply objects, and
//! runs the user's method. The whole body runs inside `catch_unwind`: a panic
//! that unwinds into C aborts the process, and one can come from anywhere,
//! the user's method, hax-core's decoding and bookkeeping, or a tracing
//! subscriber. What Motr is owed is built first, so a panic drops it, and its
//! `Drop` gives the safe answer (EAGAIN, delivered, TRANSIENT, disconnect).
//! Once a callback has panicked, user code is no longer called; the reply
//! objects built for later calls are dropped instead.

use std::any::Any;
use std::ffi::{c_char, c_void, CStr};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use hax_sys as sys;

use crate::callbacks::Callbacks;
use crate::ctx::{Ctx, Outcome, Shared};
use crate::entrypoint::{EntrypointRequest, LinkInfo};
use crate::msg::{HaMsgData, LinkId, NvecKind, Tag};
use crate::raw;
use crate::reply::{Delivery, Disconnect, EntrypointResponder, FailvecRequest, NvecGet};
use crate::state::ProcessEventKind;
use crate::thread::MotrThread;

/// What the C side's `user` pointer points to.
pub(crate) struct Inner<C> {
    pub(crate) cb: C,
    pub(crate) shared: Arc<Shared>,
}

pub(crate) fn table<C: Callbacks>(inner: &Arc<Inner<C>>) -> sys::hax_callbacks {
    sys::hax_callbacks {
        user: Arc::as_ptr(inner).cast_mut().cast(),
        entrypoint_request: Some(entrypoint_request::<C>),
        msg_received: Some(msg_received::<C>),
        msg_delivered: Some(msg_delivered::<C>),
        msg_not_delivered: Some(msg_not_delivered::<C>),
        link_connected: Some(link_connected::<C>),
        link_reused: Some(link_reused::<C>),
        link_absent: Some(link_absent::<C>),
        link_is_disconnecting: Some(link_is_disconnecting::<C>),
        link_disconnected: Some(link_disconnected::<C>),
        contract_violation: Some(contract_violation::<C>),
        log: Some(log::<C>),
    }
}

fn panic_message(p: &(dyn Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_owned()
    }
}

/// Runs `f`; returns the message of its panic, if it panicked.
pub(crate) fn catch(f: impl FnOnce()) -> Option<String> {
    let p = catch_unwind(AssertUnwindSafe(f)).err()?;
    let msg = panic_message(&*p);
    // A payload's own `Drop` can panic too; that one is lost, not unwound.
    if let Err(again) = catch_unwind(AssertUnwindSafe(move || drop(p))) {
        std::mem::forget(again);
    }
    Some(msg)
}

/// Runs `f`, a log line written while handling a panic; if the subscriber
/// panics again, there is nowhere left to report it.
pub(crate) fn quietly(f: impl FnOnce()) {
    let _ = catch(f);
}

/// Runs the user's method `f` unless an earlier one panicked.
fn run<C: Callbacks>(inner: &Inner<C>, what: &'static str, f: impl FnOnce(&Ctx<'_>, &C)) {
    // SAFETY: every caller is a callback the C side runs on a thread it
    // knows, and the token does not outlive this call.
    let thread = unsafe { MotrThread::assume() };
    let cx = Ctx {
        shared: &inner.shared,
        thread,
    };
    if inner.shared.dead.load(Ordering::Acquire) {
        // Dropping `f` drops the reply objects it owns: they answer safely.
        drop(f);
        return;
    }
    if let Some(msg) = catch(|| f(&cx, &inner.cb)) {
        inner.shared.record_panic(what, msg, true);
    }
}

/// Runs the whole body of callback `what` so that no panic leaves it. A
/// panic outside the user's method (decoding, bookkeeping, logging) is
/// recorded as one of the callback and stops the callbacks as well.
fn edge<C: Callbacks>(inner: &Inner<C>, what: &'static str, body: impl FnOnce(&Inner<C>)) {
    if let Some(msg) = catch(|| body(inner)) {
        inner
            .shared
            .record_panic(&format!("{what} (hax-core)"), msg, true);
    }
}

/// The C side called back without the user pointer it was given.
fn no_user(what: &'static str) {
    quietly(|| {
        tracing::error!(
            callback = what,
            "callback without its user pointer; ignored"
        )
    });
}

/// A pointer the C side had to pass was NULL: nothing can be answered.
fn missing(what: &'static str, arg: &'static str) {
    tracing::error!(callback = what, arg, "Motr passed NULL; callback ignored");
}

/// # Safety
/// `user` is NULL or the pointer `table()` registered for this `C`, which
/// `Halon` keeps alive until the C side is finalised, after its last callback.
unsafe fn inner<'a, C>(user: *mut c_void) -> Option<&'a Inner<C>> {
    // SAFETY: see the function's contract.
    unsafe { user.cast::<Inner<C>>().as_ref() }
}

/// # Safety
/// `p` is NULL or a NUL-terminated string valid for the call.
unsafe fn string(p: *const c_char) -> String {
    if p.is_null() {
        String::new()
    } else {
        // SAFETY: see the function's contract.
        unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
    }
}

unsafe extern "C" fn entrypoint_request<C: Callbacks>(
    user: *mut c_void,
    req_id: *const sys::hax_u128,
    remote_ep: *const c_char,
    process_fid: *const sys::hax_fid,
    git_rev_id: *const c_char,
    pid: u64,
    first_request: bool,
) {
    const WHAT: &str = "entrypoint_request";
    // SAFETY: `user` comes from table().
    let Some(inner) = (unsafe { inner::<C>(user) }) else {
        return no_user(WHAT);
    };
    edge(inner, WHAT, |inner| {
        // SAFETY: NULL or valid for the call.
        let Some(req_id) = (unsafe { req_id.as_ref() }) else {
            return missing(WHAT, "req_id");
        };
        // Built first: a panic from here on drops it, which answers EAGAIN.
        let reply = EntrypointResponder::new(Arc::clone(&inner.shared), raw::u128_from_raw(req_id));
        // SAFETY: NULL or valid for the call.
        let Some(process_fid) = (unsafe { process_fid.as_ref() }) else {
            return missing(WHAT, "process_fid");
        };
        let req = EntrypointRequest {
            req_id: reply.req_id(),
            // SAFETY: NULL or NUL-terminated strings valid for the call.
            remote_endpoint: unsafe { string(remote_ep) },
            process_fid: raw::fid_from_raw(process_fid),
            // SAFETY: as above.
            git_rev_id: unsafe { string(git_rev_id) },
            pid,
            first_request,
        };
        tracing::debug!(req_id = %req.req_id, endpoint = %req.remote_endpoint, process = %req.process_fid, first = req.first_request, "entrypoint request");
        run(inner, WHAT, move |cx, cb| {
            cb.entrypoint_request(cx, req, reply)
        });
    });
}

unsafe extern "C" fn msg_received<C: Callbacks>(
    user: *mut c_void,
    link: sys::hax_link_id,
    msg: *const sys::hax_msg,
) {
    const WHAT: &str = "msg_received";
    // SAFETY: `user` comes from table().
    let Some(inner) = (unsafe { inner::<C>(user) }) else {
        return no_user(WHAT);
    };
    edge(inner, WHAT, |inner| {
        let link = LinkId(link);
        // SAFETY: NULL or a whole hax_msg, valid for the call.
        let Some(raw_msg) = (unsafe { msg.as_ref() }) else {
            return missing(WHAT, "msg");
        };
        let tag = Tag(raw_msg.tag);
        let shared = &inner.shared;
        if !shared.message_received(link) {
            tracing::warn!(%link, %tag, "message on a link being disconnected; dropped");
            return;
        }
        // Built right after the message is counted: a panic from here on
        // drops it, which delivers the message (and lets the link's
        // disconnect go ahead).
        let delivery = Delivery::new(Arc::clone(shared), link, tag);
        let msg = match raw::msg_from_raw(raw_msg) {
            Ok(m) => m,
            Err(e) => {
                tracing::error!(%link, %tag, error = %e, "unreadable HA message; delivering it unread");
                delivery.deliver();
                return;
            }
        };
        if let HaMsgData::ProcessEvent(ev) = &msg.data {
            if ev.event == ProcessEventKind::Stopped && shared.process_stopped(link, msg.fid) {
                tracing::info!(%link, process = %msg.fid, "process stopped; its link gets no more broadcasts");
            }
        }
        match msg.data {
            HaMsgData::Nvec(n) if n.kind == NvecKind::Get => {
                let get = NvecGet::new(
                    Arc::clone(shared),
                    link,
                    n.id_of_get,
                    n.notes.iter().map(|note| note.fid).collect(),
                );
                run(inner, "nvec_get", move |cx, cb| {
                    cb.nvec_get(cx, get, delivery)
                });
            }
            HaMsgData::FailvecReq(r) => {
                let req = FailvecRequest::new(Arc::clone(shared), link, r.pool, r.cookie);
                run(inner, "failvec_request", move |cx, cb| {
                    cb.failvec_request(cx, req, delivery)
                });
            }
            _ => run(inner, WHAT, move |cx, cb| {
                cb.msg_received(cx, link, tag, msg, delivery)
            }),
        }
    });
}

unsafe extern "C" fn msg_delivered<C: Callbacks>(user: *mut c_void, link: u64, tag: u64) {
    // SAFETY: `user` comes from table().
    let Some(inner) = (unsafe { inner::<C>(user) }) else {
        return no_user("msg_delivered");
    };
    edge(inner, "msg_delivered", |inner| {
        let (link, tag) = (LinkId(link), Tag(tag));
        inner.shared.outcome(link, tag, Outcome::Delivered);
        run(inner, "msg_delivered", |cx, cb| {
            cb.msg_delivered(cx, link, tag)
        });
    });
}

unsafe extern "C" fn msg_not_delivered<C: Callbacks>(user: *mut c_void, link: u64, tag: u64) {
    // SAFETY: `user` comes from table().
    let Some(inner) = (unsafe { inner::<C>(user) }) else {
        return no_user("msg_not_delivered");
    };
    edge(inner, "msg_not_delivered", |inner| {
        let (link, tag) = (LinkId(link), Tag(tag));
        inner.shared.outcome(link, tag, Outcome::NotDelivered);
        run(inner, "msg_not_delivered", |cx, cb| {
            cb.msg_not_delivered(cx, link, tag)
        });
    });
}

unsafe extern "C" fn link_connected<C: Callbacks>(
    user: *mut c_void,
    req_id: *const sys::hax_u128,
    link: u64,
    remote_ep: *const c_char,
    process_fid: *const sys::hax_fid,
) {
    const WHAT: &str = "link_connected";
    // SAFETY: `user` comes from table().
    let Some(inner) = (unsafe { inner::<C>(user) }) else {
        return no_user(WHAT);
    };
    edge(inner, WHAT, |inner| {
        // SAFETY: NULL or valid for the call.
        let (Some(req_id), Some(process_fid)) =
            (unsafe { (req_id.as_ref(), process_fid.as_ref()) })
        else {
            return missing(WHAT, "req_id or process_fid");
        };
        let req_id = raw::u128_from_raw(req_id);
        let process_fid = raw::fid_from_raw(process_fid);
        // SAFETY: NULL or a NUL-terminated string valid for the call.
        let endpoint = unsafe { string(remote_ep) };
        let shared = &inner.shared;
        let info = LinkInfo {
            id: LinkId(link),
            is_self: endpoint == shared.local_endpoint && process_fid == shared.process_fid,
            endpoint,
            process_fid,
        };
        shared.link_connected(info.clone());
        tracing::info!(link = %info.id, endpoint = %info.endpoint, process = %info.process_fid, is_self = info.is_self, "link connected");
        run(inner, WHAT, |cx, cb| cb.link_connected(cx, req_id, &info));
    });
}

unsafe extern "C" fn link_reused<C: Callbacks>(
    user: *mut c_void,
    req_id: *const sys::hax_u128,
    link: u64,
) {
    const WHAT: &str = "link_reused";
    // SAFETY: `user` comes from table().
    let Some(inner) = (unsafe { inner::<C>(user) }) else {
        return no_user(WHAT);
    };
    edge(inner, WHAT, |inner| {
        // SAFETY: NULL or valid for the call.
        let Some(req_id) = (unsafe { req_id.as_ref() }) else {
            return missing(WHAT, "req_id");
        };
        let req_id = raw::u128_from_raw(req_id);
        tracing::info!(link = %LinkId(link), %req_id, "link reused");
        run(inner, WHAT, |cx, cb| {
            cb.link_reused(cx, req_id, LinkId(link))
        });
    });
}

unsafe extern "C" fn link_absent<C: Callbacks>(user: *mut c_void, req_id: *const sys::hax_u128) {
    const WHAT: &str = "link_absent";
    // SAFETY: `user` comes from table().
    let Some(inner) = (unsafe { inner::<C>(user) }) else {
        return no_user(WHAT);
    };
    edge(inner, WHAT, |inner| {
        // SAFETY: NULL or valid for the call.
        let Some(req_id) = (unsafe { req_id.as_ref() }) else {
            return missing(WHAT, "req_id");
        };
        let req_id = raw::u128_from_raw(req_id);
        tracing::info!(%req_id, "link absent: the requester was disconnected before");
        run(inner, WHAT, |cx, cb| cb.link_absent(cx, req_id));
    });
}

unsafe extern "C" fn link_is_disconnecting<C: Callbacks>(user: *mut c_void, link: u64) {
    // SAFETY: `user` comes from table().
    let Some(inner) = (unsafe { inner::<C>(user) }) else {
        return no_user("link_is_disconnecting");
    };
    edge(inner, "link_is_disconnecting", |inner| {
        let link = LinkId(link);
        let known = inner.shared.link_disconnecting(link);
        // Built once the link is marked: a panic from here on drops it,
        // which agrees to the disconnect.
        let disconnect = Disconnect::new(Arc::clone(&inner.shared), link);
        tracing::info!(%link, "link is disconnecting");
        if !known {
            tracing::error!(%link, "disconnecting an unknown link");
        }
        run(inner, "link_is_disconnecting", move |cx, cb| {
            cb.link_is_disconnecting(cx, link, disconnect)
        });
    });
}

unsafe extern "C" fn link_disconnected<C: Callbacks>(user: *mut c_void, link: u64) {
    // SAFETY: `user` comes from table().
    let Some(inner) = (unsafe { inner::<C>(user) }) else {
        return no_user("link_disconnected");
    };
    edge(inner, "link_disconnected", |inner| {
        let link = LinkId(link);
        inner.shared.link_disconnected(link);
        tracing::info!(%link, "link disconnected");
        run(inner, "link_disconnected", |cx, cb| {
            cb.link_disconnected(cx, link)
        });
    });
}

/// Reports a panic of the `log` or `contract_violation` callback. Neither
/// runs user code or touches the link table (what panics there is the
/// tracing subscriber), so the callbacks go on; `stop` reports the panic.
///
/// # Safety
/// As for [`inner`].
unsafe fn diagnostics_panicked<C: Callbacks>(user: *mut c_void, what: &'static str, msg: String) {
    // SAFETY: see the function's contract.
    match unsafe { inner::<C>(user) } {
        Some(inner) => inner.shared.record_panic(what, msg, false),
        None => quietly(|| tracing::error!(callback = what, panic = %msg, "callback panicked")),
    }
}

unsafe extern "C" fn contract_violation<C: Callbacks>(
    user: *mut c_void,
    code: i32,
    detail: *const c_char,
) {
    let panicked = catch(|| {
        // SAFETY: NULL or a string valid for the call.
        let detail = unsafe { string(detail) };
        tracing::error!(code = %crate::error::GlueCode::from_rc(code), %detail, "Motr contract violation");
    });
    if let Some(msg) = panicked {
        // SAFETY: `user` comes from table().
        unsafe { diagnostics_panicked::<C>(user, "contract_violation", msg) };
    }
}

unsafe extern "C" fn log<C: Callbacks>(user: *mut c_void, level: i32, text: *const c_char) {
    let panicked = catch(|| {
        // SAFETY: NULL or a string valid for the call.
        let text = unsafe { string(text) };
        match level {
            1 => tracing::error!(target: "hax_glue", "{text}"),
            2 => tracing::warn!(target: "hax_glue", "{text}"),
            3 => tracing::info!(target: "hax_glue", "{text}"),
            _ => tracing::debug!(target: "hax_glue", "{text}"),
        }
    });
    if let Some(msg) = panicked {
        // SAFETY: `user` comes from table().
        unsafe { diagnostics_panicked::<C>(user, "log", msg) };
    }
}

#[cfg(test)]
mod tests {
    use std::ptr;
    use std::sync::atomic::AtomicU32;
    use std::sync::mpsc;

    use super::*;
    use crate::ctx::{lock, CallMsg};
    use crate::fid::Fid;

    /// A subscriber that panics on every event whose message contains its
    /// needle, as a broken tracing layer would.
    struct PanicOn(&'static str);

    struct Message(String);

    impl tracing::field::Visit for Message {
        fn record_debug(&mut self, f: &tracing::field::Field, v: &dyn std::fmt::Debug) {
            if f.name() == "message" {
                self.0 = format!("{v:?}");
            }
        }
    }

    impl tracing::Subscriber for PanicOn {
        fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
            true
        }
        fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
            tracing::span::Id::from_u64(1)
        }
        fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
        fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
        fn event(&self, e: &tracing::Event<'_>) {
            let mut m = Message(String::new());
            e.record(&mut m);
            if m.0.contains(self.0) {
                panic!("subscriber broke on {}", m.0);
            }
        }
        fn enter(&self, _: &tracing::span::Id) {}
        fn exit(&self, _: &tracing::span::Id) {}
    }

    /// Counts its calls; panics in each if `panics`.
    #[derive(Default)]
    struct Cb {
        calls: AtomicU32,
        panics: bool,
    }

    impl Cb {
        fn called(&self) {
            self.calls.fetch_add(1, Ordering::Relaxed);
            assert!(!self.panics, "boom in the user's method");
        }
    }

    impl Callbacks for Cb {
        fn entrypoint_request(&self, _: &Ctx<'_>, _: EntrypointRequest, _: EntrypointResponder) {
            self.called();
        }
        fn link_connected(&self, _: &Ctx<'_>, _: crate::Uint128, _: &LinkInfo) {
            self.called();
        }
    }

    /// The callbacks behind a `user` pointer, with no C side: what Motr is
    /// owed goes to `calls` instead of the call thread.
    struct Fixture {
        inner: Arc<Inner<Cb>>,
        calls: mpsc::Receiver<CallMsg>,
    }

    impl Fixture {
        fn new(panics: bool) -> Self {
            let shared = Arc::new(Shared::new("inet:tcp:127.0.0.1@1".into(), Fid::new(1, 3)));
            let (tx, calls) = mpsc::channel();
            shared.set_calls(Some(tx));
            let cb = Cb {
                panics,
                ..Cb::default()
            };
            Fixture {
                inner: Arc::new(Inner { cb, shared }),
                calls,
            }
        }

        fn user(&self) -> *mut c_void {
            table(&self.inner).user
        }

        fn panic(&self) -> Option<String> {
            lock(&self.inner.shared.panic).clone()
        }

        fn dead(&self) -> bool {
            self.inner.shared.dead.load(Ordering::Acquire)
        }

        fn user_calls(&self) -> u32 {
            self.inner.cb.calls.load(Ordering::Relaxed)
        }

        /// How many answers were handed over for the call thread.
        fn answers(&self) -> usize {
            self.calls.try_iter().count()
        }

        fn entrypoint_request(&self, req_id: *const sys::hax_u128) {
            let fid = sys::hax_fid {
                container: 0x7200_0000_0000_0001,
                key: 9,
            };
            // SAFETY: the pointers are NULL or valid for the call, `user`
            // comes from table() and `self.inner` outlives the call.
            unsafe {
                entrypoint_request::<Cb>(
                    self.user(),
                    req_id,
                    c"inet:tcp:127.0.0.1@2".as_ptr(),
                    &fid,
                    ptr::null(),
                    7,
                    true,
                )
            }
        }
    }

    const REQ: sys::hax_u128 = sys::hax_u128 { hi: 0, lo: 5 };

    #[test]
    fn a_panicking_user_method_is_recorded_and_its_request_answered() {
        let fx = Fixture::new(true);
        fx.entrypoint_request(&REQ);
        assert_eq!(fx.user_calls(), 1);
        let panic = fx.panic().expect("the panic is recorded");
        assert!(
            panic.starts_with("entrypoint_request: boom in the user's method"),
            "{panic}"
        );
        assert!(fx.dead());
        assert_eq!(fx.answers(), 1, "the dropped responder answers EAGAIN");

        // Later requests are answered without the user.
        fx.entrypoint_request(&REQ);
        assert_eq!(fx.user_calls(), 1);
        assert_eq!(fx.answers(), 1);
    }

    #[test]
    fn a_panic_in_bookkeeping_is_recorded_and_stops_the_callbacks() {
        let fx = Fixture::new(false);
        let process = sys::hax_fid {
            container: 0x7200_0000_0000_0001,
            key: 9,
        };
        tracing::subscriber::with_default(PanicOn("link connected"), || {
            // SAFETY: pointers valid for the call; `user` from table().
            unsafe {
                link_connected::<Cb>(
                    fx.user(),
                    &REQ,
                    4,
                    c"inet:tcp:127.0.0.1@2".as_ptr(),
                    &process,
                )
            }
        });
        let panic = fx.panic().expect("the panic is recorded");
        assert!(
            panic.starts_with("link_connected (hax-core): subscriber broke on link connected"),
            "{panic}"
        );
        assert!(fx.dead());
        assert_eq!(
            fx.user_calls(),
            0,
            "the panic came before the user's method"
        );
        assert_eq!(
            fx.inner.shared.links().len(),
            1,
            "the link table was written before the log line"
        );

        // A panic while the entrypoint request is read still answers it.
        let fx = Fixture::new(false);
        tracing::subscriber::with_default(PanicOn("entrypoint request"), || {
            fx.entrypoint_request(&REQ)
        });
        assert!(fx
            .panic()
            .is_some_and(|p| p.starts_with("entrypoint_request (hax-core)")));
        assert_eq!(fx.user_calls(), 0);
        assert_eq!(fx.answers(), 1, "EAGAIN, from the dropped responder");
    }

    #[test]
    fn a_panicking_log_or_violation_line_is_recorded_and_the_callbacks_go_on() {
        let fx = Fixture::new(false);
        tracing::subscriber::with_default(PanicOn("glue says"), || {
            // SAFETY: a string valid for the call; `user` from table().
            unsafe { log::<Cb>(fx.user(), 3, c"glue says hello".as_ptr()) }
        });
        let panic = fx.panic().expect("the panic is recorded");
        assert!(
            panic.starts_with("log: subscriber broke on glue says hello"),
            "{panic}"
        );
        assert!(!fx.dead(), "a log line shares nothing with the callbacks");

        tracing::subscriber::with_default(PanicOn("contract violation"), || {
            // SAFETY: as above; also with no user pointer at all.
            unsafe {
                contract_violation::<Cb>(fx.user(), sys::HAX_E_ORDER, c"out of order".as_ptr());
                contract_violation::<Cb>(ptr::null_mut(), sys::HAX_E_ORDER, ptr::null());
                log::<Cb>(ptr::null_mut(), 1, c"glue says bye".as_ptr());
            }
        });
        assert!(!fx.dead());
        fx.entrypoint_request(&REQ);
        assert_eq!(fx.user_calls(), 1, "the callbacks still run");
        // The first panic is the one kept for stop().
        assert!(fx.panic().is_some_and(|p| p.starts_with("log: ")));
    }

    #[test]
    fn null_arguments_are_refused_without_calling_the_user() {
        let fx = Fixture::new(false);
        fx.entrypoint_request(ptr::null());
        // SAFETY: NULL where C owes a pointer; `user` from table(), and no
        // user pointer at all.
        unsafe {
            msg_received::<Cb>(fx.user(), 1, ptr::null());
            link_absent::<Cb>(fx.user(), ptr::null());
            link_disconnected::<Cb>(ptr::null_mut(), 1);
        }
        assert_eq!(fx.user_calls(), 0);
        assert_eq!(fx.answers(), 0, "no request id, nothing to answer");
        assert_eq!(fx.panic(), None);
    }
}
