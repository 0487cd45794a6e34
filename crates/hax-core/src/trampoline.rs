//! The C entry points: one monomorphic `extern "C"` function per callback.
//! Each copies its arguments out of C memory, builds the reply objects, and
//! runs the user's method inside `catch_unwind`, so no panic reaches C. Once a
//! method has panicked, user code is no longer called; the reply objects built
//! for the call are dropped instead, which gives Motr its safe answers.

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
        contract_violation: Some(contract_violation),
        log: Some(log),
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
    if let Err(p) = catch_unwind(AssertUnwindSafe(|| f(&cx, &inner.cb))) {
        inner.shared.record_panic(what, panic_message(&*p));
    }
}

/// # Safety
/// `user` is the pointer `table()` registered; `Halon` keeps its `Arc`
/// alive until the C side is finalised, after its last callback.
unsafe fn inner<'a, C>(user: *mut c_void) -> &'a Inner<C> {
    // SAFETY: see the function's contract.
    unsafe { &*user.cast::<Inner<C>>() }
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
    // SAFETY: registered by table(); C passes valid pointers for the call.
    let inner = unsafe { inner::<C>(user) };
    // SAFETY: the C side passes valid pointers for the duration of the call.
    let req = unsafe {
        EntrypointRequest {
            req_id: raw::u128_from_raw(&*req_id),
            remote_endpoint: string(remote_ep),
            process_fid: raw::fid_from_raw(&*process_fid),
            git_rev_id: string(git_rev_id),
            pid,
            first_request,
        }
    };
    tracing::debug!(req_id = %req.req_id, endpoint = %req.remote_endpoint, process = %req.process_fid, first = req.first_request, "entrypoint request");
    let reply = EntrypointResponder::new(Arc::clone(&inner.shared), req.req_id);
    run(inner, "entrypoint_request", move |cx, cb| {
        cb.entrypoint_request(cx, req, reply)
    });
}

unsafe extern "C" fn msg_received<C: Callbacks>(
    user: *mut c_void,
    link: sys::hax_link_id,
    msg: *const sys::hax_msg,
) {
    // SAFETY: registered by table().
    let inner = unsafe { inner::<C>(user) };
    let link = LinkId(link);
    // SAFETY: `msg` points to a whole hax_msg, valid for the call.
    let raw_msg = unsafe { &*msg };
    let tag = Tag(raw_msg.tag);
    let shared = &inner.shared;
    if !shared.message_received(link) {
        tracing::warn!(%link, %tag, "message on a link being disconnected; dropped");
        return;
    }
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
        _ => run(inner, "msg_received", move |cx, cb| {
            cb.msg_received(cx, link, tag, msg, delivery)
        }),
    }
}

unsafe extern "C" fn msg_delivered<C: Callbacks>(user: *mut c_void, link: u64, tag: u64) {
    // SAFETY: registered by table().
    let inner = unsafe { inner::<C>(user) };
    let (link, tag) = (LinkId(link), Tag(tag));
    inner.shared.outcome(link, tag, Outcome::Delivered);
    run(inner, "msg_delivered", |cx, cb| {
        cb.msg_delivered(cx, link, tag)
    });
}

unsafe extern "C" fn msg_not_delivered<C: Callbacks>(user: *mut c_void, link: u64, tag: u64) {
    // SAFETY: registered by table().
    let inner = unsafe { inner::<C>(user) };
    let (link, tag) = (LinkId(link), Tag(tag));
    inner.shared.outcome(link, tag, Outcome::NotDelivered);
    run(inner, "msg_not_delivered", |cx, cb| {
        cb.msg_not_delivered(cx, link, tag)
    });
}

unsafe extern "C" fn link_connected<C: Callbacks>(
    user: *mut c_void,
    req_id: *const sys::hax_u128,
    link: u64,
    remote_ep: *const c_char,
    process_fid: *const sys::hax_fid,
) {
    // SAFETY: registered by table().
    let inner = unsafe { inner::<C>(user) };
    // SAFETY: valid pointers for the call.
    let (req_id, endpoint, process_fid) = unsafe {
        (
            raw::u128_from_raw(&*req_id),
            string(remote_ep),
            raw::fid_from_raw(&*process_fid),
        )
    };
    let shared = &inner.shared;
    let info = LinkInfo {
        id: LinkId(link),
        is_self: endpoint == shared.local_endpoint && process_fid == shared.process_fid,
        endpoint,
        process_fid,
    };
    tracing::info!(link = %info.id, endpoint = %info.endpoint, process = %info.process_fid, is_self = info.is_self, "link connected");
    shared.link_connected(info.clone());
    run(inner, "link_connected", |cx, cb| {
        cb.link_connected(cx, req_id, &info)
    });
}

unsafe extern "C" fn link_reused<C: Callbacks>(
    user: *mut c_void,
    req_id: *const sys::hax_u128,
    link: u64,
) {
    // SAFETY: registered by table().
    let inner = unsafe { inner::<C>(user) };
    // SAFETY: valid pointer for the call.
    let req_id = raw::u128_from_raw(unsafe { &*req_id });
    tracing::info!(link = %LinkId(link), %req_id, "link reused");
    run(inner, "link_reused", |cx, cb| {
        cb.link_reused(cx, req_id, LinkId(link))
    });
}

unsafe extern "C" fn link_absent<C: Callbacks>(user: *mut c_void, req_id: *const sys::hax_u128) {
    // SAFETY: registered by table().
    let inner = unsafe { inner::<C>(user) };
    // SAFETY: valid pointer for the call.
    let req_id = raw::u128_from_raw(unsafe { &*req_id });
    tracing::info!(%req_id, "link absent: the requester was disconnected before");
    run(inner, "link_absent", |cx, cb| cb.link_absent(cx, req_id));
}

unsafe extern "C" fn link_is_disconnecting<C: Callbacks>(user: *mut c_void, link: u64) {
    // SAFETY: registered by table().
    let inner = unsafe { inner::<C>(user) };
    let link = LinkId(link);
    tracing::info!(%link, "link is disconnecting");
    if !inner.shared.link_disconnecting(link) {
        tracing::error!(%link, "disconnecting an unknown link");
    }
    let disconnect = Disconnect::new(Arc::clone(&inner.shared), link);
    run(inner, "link_is_disconnecting", move |cx, cb| {
        cb.link_is_disconnecting(cx, link, disconnect)
    });
}

unsafe extern "C" fn link_disconnected<C: Callbacks>(user: *mut c_void, link: u64) {
    // SAFETY: registered by table().
    let inner = unsafe { inner::<C>(user) };
    let link = LinkId(link);
    tracing::info!(%link, "link disconnected");
    inner.shared.link_disconnected(link);
    run(inner, "link_disconnected", |cx, cb| {
        cb.link_disconnected(cx, link)
    });
}

unsafe extern "C" fn contract_violation(_user: *mut c_void, code: i32, detail: *const c_char) {
    // SAFETY: NULL or a string valid for the call.
    let detail = unsafe { string(detail) };
    tracing::error!(code = %crate::error::GlueCode::from_rc(code), %detail, "Motr contract violation");
}

unsafe extern "C" fn log(_user: *mut c_void, level: i32, text: *const c_char) {
    // SAFETY: NULL or a string valid for the call.
    let text = unsafe { string(text) };
    match level {
        1 => tracing::error!(target: "hax_glue", "{text}"),
        2 => tracing::warn!(target: "hax_glue", "{text}"),
        3 => tracing::info!(target: "hax_glue", "{text}"),
        _ => tracing::debug!(target: "hax_glue", "{text}"),
    }
}
