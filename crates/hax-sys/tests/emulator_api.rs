//! The emulator through the raw C API, without peers: lifecycle, the own
//! entrypoint request, the self link, the thread rule, contract violations,
//! hang reporting in stop(), several handles.

#[path = "emulator_support.rs"]
mod support;

use hax_sys::*;
use std::ffi::{CStr, CString};
use std::ptr;
use std::sync::mpsc;
use std::thread;
use support::*;

const EV_STARTING: u64 = 0;
const EV_STARTED: u64 = 1;
const EV_STOPPING: u64 = 2;
const EV_STOPPED: u64 = 3;

#[test]
fn backend_version_and_null_handle() {
    // SAFETY: these take no handle or accept NULL.
    unsafe {
        assert_eq!(hax_glue_abi_version(), HAX_GLUE_ABI_VERSION);
        assert_eq!(CStr::from_ptr(hax_glue_backend()).to_str(), Ok("emulator"));
        assert_eq!(hax_glue_violations(ptr::null_mut()), 0);
        assert_eq!(
            hax_glue_init(ptr::null_mut(), ptr::null(), ptr::null()),
            HAX_E_INVAL
        );
        assert_eq!(hax_glue_fini(ptr::null_mut()), HAX_E_INVAL);
        assert_eq!(hax_glue_stop(ptr::null_mut()), HAX_E_INVAL);
    }
}

/// Checks the six events of start (or stop) on the self link, in real Motr's
/// order: the process event, the HA and RM service events (HA first at start,
/// RM first at stop), the process event.
fn check_events(msgs: &[(u64, Msg)], first_tag: u64, proc_ev: [u64; 2], svc_ev: [u64; 2]) {
    assert_eq!(msgs.len(), 6, "{msgs:?}");
    let pid = u64::from(std::process::id());
    for (i, (tag, m)) in msgs.iter().enumerate() {
        assert_eq!(*tag, first_tag + 2 * i as u64, "tags step by 2");
        assert_eq!(m.0.tag, *tag);
    }
    let starting = proc_ev[0] == EV_STARTING;
    let (first, second) = if starting {
        ((HA_SVC, 6), (RM_SVC, 4))
    } else {
        ((RM_SVC, 4), (HA_SVC, 6))
    };
    let want = [
        (HAX_MSG_EVENT_PROCESS, proc_ev[0], None),
        (HAX_MSG_EVENT_SERVICE, svc_ev[0], Some(first)),
        (HAX_MSG_EVENT_SERVICE, svc_ev[1], Some(first)),
        (HAX_MSG_EVENT_SERVICE, svc_ev[0], Some(second)),
        (HAX_MSG_EVENT_SERVICE, svc_ev[1], Some(second)),
        (HAX_MSG_EVENT_PROCESS, proc_ev[1], None),
    ];
    for ((_, m), (ty, ev, svc)) in msgs.iter().zip(want) {
        let m = &m.0;
        assert_eq!(m.type_, ty);
        // SAFETY: event messages use the event member.
        let e = unsafe { m.u.event };
        assert_eq!(e.event, ev);
        assert_eq!(e.pid, pid);
        assert!(m.time_ns > 0);
        match svc {
            None => {
                assert_eq!(
                    (m.fid.container, m.fid.key),
                    (PROCESS.container, PROCESS.key)
                );
                assert_eq!(e.type_, 3, "M0_CONF_HA_PROCESS_M0D");
            }
            Some((fid, svc_type)) => {
                assert_eq!((m.fid.container, m.fid.key), (fid.container, fid.key));
                assert_eq!(m.source_process.container, PROCESS.container);
                assert_eq!(m.source_service.key, fid.key);
                assert_eq!(e.type_, svc_type, "M0_CST_HA (6) or M0_CST_RMS (4)");
            }
        }
    }
}

#[test]
fn start_with_reply_inside_callback_then_stop() {
    let mut e = Emu::started();
    let evs = e.events();
    let Some(Ev::EpReq {
        req,
        ep,
        fid,
        git,
        pid,
        first,
        th: req_th,
    }) = evs.first().cloned()
    else {
        panic!("first event must be the own entrypoint request: {evs:?}");
    };
    assert_eq!(req, 1, "req_id {{0,1}}");
    assert_eq!(ep, e.ep, "remote_ep == local_ep");
    assert_eq!((fid.container, fid.key), (PROCESS.container, PROCESS.key));
    assert!(
        git.is_empty(),
        "Motr's own request carries an empty git rev id"
    );
    assert_eq!(pid, u64::from(std::process::id()));
    assert!(first);
    let Some(Ev::Connected {
        req: creq,
        link,
        ep: cep,
        fid: cfid,
        th,
    }) = evs.get(1).cloned()
    else {
        panic!("link_connected must follow inside the reply: {evs:?}");
    };
    assert_eq!(creq, 1);
    assert_eq!(cep, e.ep);
    assert_eq!(cfid.key, PROCESS.key);
    assert_eq!(th, req_th, "link_connected runs on the replying thread");
    assert!(link != 0);
    let rcs = e.wait_inner("the reply's rc", |g| {
        (!g.auto_rcs.is_empty()).then(|| g.auto_rcs.clone())
    });
    assert_eq!(rcs.first(), Some(&("entrypoint_reply", 0)));

    let l = e.wait_started();
    let evs = e.wait("start events", |evs| {
        (recv_of(evs, l).len() == 6).then(|| evs.to_vec())
    });
    check_events(
        &recv_of(&evs, l),
        2,
        [EV_STARTING, EV_STARTED],
        [EV_STARTING, EV_STARTED],
    );
    // Every asynchronous callback runs on one handler thread.
    let handler = evs
        .iter()
        .find_map(|ev| match ev {
            Ev::Recv { th, .. } => Some(*th),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no Recv"));
    assert_eq!(
        handler, req_th,
        "entrypoint_request and msg_received share the handler thread"
    );
    assert_ne!(handler, thread::current().id());

    let mut ep_buf = [0u8; 256];
    // SAFETY: live handle, valid buffer.
    let rc = unsafe { hax_glue_link_endpoint(e.h, l, ep_buf.as_mut_ptr().cast(), ep_buf.len()) };
    assert_eq!(rc, 0);
    let got = CStr::from_bytes_until_nul(&ep_buf).map(|c| c.to_string_lossy().into_owned());
    assert_eq!(got.as_deref(), Ok(e.ep.as_str()));
    // SAFETY: live handle, valid buffer.
    let rc = unsafe { hax_glue_link_endpoint(e.h, l, ep_buf.as_mut_ptr().cast(), 4) };
    assert_eq!(rc, HAX_E_LIMIT);
    // SAFETY: live handle, valid buffer.
    let rc = unsafe { hax_glue_link_endpoint(e.h, 999, ep_buf.as_mut_ptr().cast(), ep_buf.len()) };
    assert_eq!(rc, HAX_E_NOLINK);

    e.clear();
    assert_eq!(e.stop(), 0);
    let evs = e.events();
    check_events(
        &recv_of(&evs, l),
        14,
        [EV_STOPPING, EV_STOPPED],
        [EV_STOPPING, EV_STOPPED],
    );
    let pos = |f: &dyn Fn(&Ev) -> bool| evs.iter().position(f).unwrap_or(usize::MAX);
    let last_recv = evs
        .iter()
        .rposition(|ev| matches!(ev, Ev::Recv { .. }))
        .unwrap_or(0);
    let disc = pos(&|ev| matches!(ev, Ev::Disconnecting { link, .. } if *link == l));
    let gone = pos(&|ev| matches!(ev, Ev::Disconnected { link, .. } if *link == l));
    assert!(
        last_recv < disc && disc < gone && gone < evs.len(),
        "{evs:?}"
    );
    assert_eq!(e.violations(), 0);
    assert!(e.violation_events().is_empty());
    // The link is dead now.
    assert_eq!(e.stop(), HAX_E_STATE);
}

#[test]
fn start_with_reply_from_an_adopted_thread() {
    let mut e = Emu::init("");
    e.set_policy(Policy {
        auto_reply: false,
        ..Policy::default()
    });
    let h = SendPtr(e.h);
    let shared = e.shared.clone();
    let (tx, rx) = mpsc::channel();
    let replier = thread::spawn(move || {
        let h = h;
        // SAFETY: live handle.
        assert_eq!(unsafe { hax_glue_thread_adopt(h.0) }, 0);
        // SAFETY: adopting twice is harmless.
        assert_eq!(unsafe { hax_glue_thread_adopt(h.0) }, 0);
        let deadline = std::time::Instant::now() + WAIT;
        let req = loop {
            let g = shared.inner.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(r) = g.events.iter().find_map(|ev| match ev {
                Ev::EpReq { req, .. } => Some(*req),
                _ => None,
            }) {
                break r;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no entrypoint request"
            );
            drop(
                shared
                    .cv
                    .wait_timeout(g, WAIT)
                    .unwrap_or_else(|e| e.into_inner()),
            );
        };
        assert_eq!(reply_raw(h, req, 0), 0);
        // A second reply to the same request is a contract violation.
        assert_eq!(reply_raw(h, req, 0), HAX_E_NOREQ);
        tx.send(thread::current().id()).unwrap_or(());
        // SAFETY: live handle.
        assert_eq!(unsafe { hax_glue_thread_shun(h.0) }, 0);
        // SAFETY: live handle; now unknown again.
        assert_eq!(unsafe { hax_glue_thread_shun(h.0) }, HAX_E_THREAD);
    });
    let ep = unix_ep();
    e.start(&ep);
    replier
        .join()
        .unwrap_or_else(|_| panic!("replier panicked"));
    let replier_id = rx.recv().unwrap_or_else(|_| panic!("no thread id"));
    let evs = e.events();
    assert!(
        evs.iter()
            .any(|ev| matches!(ev, Ev::Connected { th, .. } if *th == replier_id)),
        "link_connected on the replying thread: {evs:?}"
    );
    e.wait_started();
    assert_eq!(
        e.violations(),
        2,
        "duplicate reply + shun from an unknown thread"
    );
    assert_eq!(
        e.violation_events().len(),
        1,
        "the thread rule is not reported as a violation"
    );
    assert_eq!(e.violation_events()[0].0, HAX_E_NOREQ);
    assert_eq!(e.stop(), 0);
}

#[test]
fn query_reply_makes_motr_ask_again_and_reuse_the_link() {
    let mut p = Policy::default();
    p.reply_rcs.extend([-11, -11]);
    let e = Emu::started_with("", p);
    let l = e.wait_started();
    let evs = e.events();
    let kinds: Vec<String> = evs
        .iter()
        .take(6)
        .map(|ev| match ev {
            Ev::EpReq { req, first, .. } => format!("req{req}{}", if *first { "f" } else { "" }),
            Ev::Connected { req, link, .. } => format!("conn{req}:{}", *link == l),
            Ev::Reused { req, link, .. } => format!("reuse{req}:{}", *link == l),
            other => format!("{other:?}"),
        })
        .collect();
    assert_eq!(
        kinds,
        [
            "req1f",
            "conn1:true",
            "req2",
            "reuse2:true",
            "req3",
            "reuse3:true"
        ],
        "{evs:?}"
    );
    let msgs = recv_of(&evs, l);
    assert_eq!(
        msgs.first().map(|m| m.0),
        Some(2),
        "the self link's tags start at 2"
    );
}

#[test]
fn thread_rule() {
    let e = Emu::started();
    let l = e.wait_started();
    let h = SendPtr(e.h);
    let before = e.violations();
    let res = thread::spawn(move || {
        let h = h;
        let m = keepalive(1, 2);
        let mut tag = 0;
        // SAFETY: live handle; the thread is unknown.
        let unknown = unsafe {
            [
                hax_glue_send(h.0, l, &*m, &mut tag),
                hax_glue_delivered(h.0, l, 2),
                hax_glue_disconnect(h.0, l),
                hax_glue_stop(h.0),
                hax_glue_fini(h.0),
            ]
        };
        // SAFETY: live handle.
        let adopt = unsafe { hax_glue_thread_adopt(h.0) };
        // SAFETY: live handle; the thread is adopted now.
        let sent = unsafe { hax_glue_send(h.0, l, &*m, &mut tag) };
        // SAFETY: adopted threads still may not stop.
        let stop = unsafe { hax_glue_stop(h.0) };
        // SAFETY: live handle.
        let shun = unsafe { hax_glue_thread_shun(h.0) };
        // SAFETY: live handle; unknown again.
        let after = unsafe { hax_glue_send(h.0, l, &*m, &mut tag) };
        (unknown, adopt, sent, tag, stop, shun, after)
    })
    .join()
    .unwrap_or_else(|_| panic!("thread panicked"));
    let (unknown, adopt, sent, tag, stop, shun, after) = res;
    assert_eq!(unknown, [HAX_E_THREAD; 5]);
    assert_eq!(
        (adopt, sent, tag, stop, shun, after),
        (0, 0, 1, HAX_E_THREAD, 0, HAX_E_THREAD)
    );
    assert_eq!(e.violations(), before + 7);
    assert!(
        e.violation_events().is_empty(),
        "no contract_violation for the thread rule"
    );
    assert!(e
        .logs()
        .iter()
        .any(|(lvl, t)| *lvl == HAX_LOG_ERROR as i32 && t.contains("unknown")));
}

#[test]
fn receive_buffers_are_set_before_start_only() {
    let mut e = Emu::init("");
    support::receive_buffers_before_start(&e);
    e.start(&unix_ep());
    support::receive_buffers_after_start(&e);
    e.wait_started();
    assert_eq!(e.stop(), 0);
}

#[test]
fn lifecycle_states_and_bad_arguments() {
    let mut e = Emu::init("");
    // SAFETY: live handle.
    unsafe {
        assert_eq!(hax_glue_stop(e.h), HAX_E_STATE);
        let m = keepalive(0, 0);
        let mut tag = 0;
        assert_eq!(hax_glue_send(e.h, 1, &*m, &mut tag), HAX_E_STATE);
        assert_eq!(hax_glue_delivered(e.h, 1, 2), HAX_E_STATE);
    }
    for bad in [
        "",
        "tcp:127.0.0.1@3000",
        "inet:tcp:127.0.0.1",
        "inet:tcp:127.0.0.1@",
        "inet:tcp:127.0.0.1@70000",
        "inet:tcp:127.0.0.1@0",
        "inet:udp:127.0.0.1@3000",
        "0@lo:12346:34:101",
        "0@lo:12345:34",
        "0@lo:12345:34:*",
        "0@lo:12345:99:101",
        "127.0.0.1@o2ib:12345:34:101",
        "300.0.0.1@tcp:12345:34:101",
        "unix:",
        "lnet:whatever",
    ] {
        assert_eq!(e.try_start(bad), HAX_E_INVAL, "endpoint {bad:?}");
    }
    let long = format!("unix:/tmp/{}", "x".repeat(200));
    assert_eq!(e.try_start(&long), HAX_E_INVAL);
    // NULL callbacks are refused.
    let ep = CString::new(unix_ep()).unwrap_or_default();
    let mut cbs = e.callbacks();
    cbs.link_absent = None;
    // SAFETY: live handle, valid pointers.
    let rc = unsafe { hax_glue_start(e.h, ep.as_ptr(), &PROCESS, &HA_SVC, &RM_SVC, &cbs) };
    assert_eq!(rc, HAX_E_INVAL);
    // SAFETY: as above, NULL fid.
    let rc = unsafe { hax_glue_start(e.h, ep.as_ptr(), ptr::null(), &HA_SVC, &RM_SVC, &cbs) };
    assert_eq!(rc, HAX_E_INVAL);

    let ep = unix_ep();
    e.start(&ep);
    assert_eq!(e.try_start(&ep), HAX_E_STATE, "start twice");
    // SAFETY: live handle, init thread, but started.
    assert_eq!(unsafe { hax_glue_fini(e.h) }, HAX_E_STATE);
    e.wait_started();
    assert_eq!(e.stop(), 0);
    assert_eq!(e.stop(), HAX_E_STATE);
    assert_eq!(e.violations(), 0);
}

#[test]
fn sends_on_the_self_link_are_confirmed_in_order() {
    let e = Emu::started();
    let l = e.wait_started();
    let before = e.events().len();
    let mut tags = vec![];
    for i in 0..5 {
        let (rc, tag) = e.send(l, &keepalive(0, i));
        assert_eq!(rc, 0);
        tags.push(tag);
    }
    assert_eq!(tags, [1, 3, 5, 7, 9]);
    let d = e.wait_n("5 delivered", 5, |ev| matches!(ev, Ev::Delivered { .. }));
    let dt: Vec<u64> = d
        .iter()
        .filter_map(|ev| match ev {
            Ev::Delivered { link, tag, .. } if *link == l => Some(*tag),
            _ => None,
        })
        .collect();
    assert_eq!(dt, tags);
    // KEEPALIVE_REQ is answered on the self link with a counter.
    let reps = e.wait("keepalive replies", |evs| {
        let r: Vec<(u64, Msg)> = recv_of(&evs[before..], l);
        (r.len() == 5).then_some(r)
    });
    for (i, (tag, m)) in reps.iter().enumerate() {
        assert_eq!(*tag, 14 + 2 * i as u64);
        assert_eq!(m.0.type_, HAX_MSG_KEEPALIVE_REP);
        // SAFETY: KEEPALIVE_REP uses the keepalive member.
        let k = unsafe { m.0.u.keepalive };
        assert_eq!((k.id.hi, k.id.lo, k.counter), (0, i as u64, i as u64 + 1));
    }
    assert_eq!(e.violations(), 0);
}

#[test]
fn get_on_the_self_link_is_answered_with_online() {
    let e = Emu::started();
    let l = e.wait_started();
    let a = fid(b'd', 1, 7);
    let b = fid(b'n', 1, 9);
    let (rc, _) = e.send(l, &nvec(HAX_NVEC_GET, 100, 0, &[(a, 0), (b, 0)]));
    assert_eq!(rc, 0);
    let m = e.wait("GET reply", |evs| {
        recv_of(evs, l)
            .into_iter()
            .find(|(_, m)| m.0.type_ == HAX_MSG_NVEC)
            .map(|(_, m)| m)
    });
    // SAFETY: NVEC uses the nvec member.
    let nv = unsafe { m.0.u.nvec };
    assert_eq!((nv.dir, nv.id_of_get), (u64::from(HAX_NVEC_SET), 100));
    assert_eq!(m.0.nr_notes, 2);
    assert_eq!(m.0.notes[0].id.key, 7);
    assert_eq!(m.0.notes[1].id.key, 9);
    assert!(m.0.notes[..2].iter().all(|n| n.state == HAX_NC_ONLINE));
    assert!(
        m.0.notes[2..].iter().all(|n| n.state == 0 && n.id.key == 0),
        "scratch is clean"
    );
}

#[test]
fn contract_violations_without_peers() {
    let e = Emu::started_with(
        "",
        Policy {
            auto_deliver: false,
            ..Policy::default()
        },
    );
    let l = e.wait_started();
    // Deliver the start events by hand; the second time is a violation.
    for t in [2, 4, 6, 8, 10, 12] {
        assert_eq!(e.delivered(l, t), 0);
    }
    let d = e.expect_violation(HAX_E_NOTAG, || e.delivered(l, 2));
    assert!(d.contains("delivered already"), "{d}");
    e.expect_violation(HAX_E_NOTAG, || e.delivered(l, 100));
    e.expect_violation(HAX_E_NOTAG, || e.delivered(l, 3));
    e.expect_violation(HAX_E_NOLINK, || e.delivered(9999, 2));

    let mut m = keepalive(1, 1);
    m.tag = 5;
    e.expect_violation(HAX_E_TAG, || e.send(l, &m).0);
    e.expect_violation(HAX_E_NOLINK, || e.send(9999, &keepalive(1, 1)).0);
    let mut bad = keepalive(0, 0);
    bad.type_ = 12;
    assert_eq!(e.send(l, &bad).0, HAX_E_INVAL);

    e.expect_violation(HAX_E_NOREQ, || e.reply(77, 0));
    e.expect_violation(HAX_E_NOREQ, || e.reply(1, 0));
    let d = e.expect_violation(HAX_E_ORDER, || e.disconnect(l));
    assert!(d.contains("link_is_disconnecting"), "{d}");
    e.expect_violation(HAX_E_NOLINK, || e.disconnect(9999));

    let p = fid(b'r', 1, 77);
    let pool = fid(b'o', 1, 1);
    let d = e.expect_violation(HAX_E_NVEC, || e.send(l, &nvec(HAX_NVEC_SET, 0, 0, &[])).0);
    assert!(d.contains("no notes"), "{d}");
    let many: Vec<(hax_fid, u32)> = (0..1025).map(|i| (fid(b'd', 1, i), 1)).collect();
    let mut big = nvec(HAX_NVEC_SET, 0, 0, &many[..1024]);
    big.nr_notes = 1025;
    e.expect_violation(HAX_E_LIMIT, || e.send(l, &big).0);
    e.expect_violation(HAX_E_NVEC, || {
        e.send(l, &nvec(HAX_NVEC_SET, 0, 2, &[(p, 1)])).0
    });
    e.expect_violation(HAX_E_NVEC, || {
        e.send(l, &nvec(HAX_NVEC_SET, 0, 0, &[(p, 0)])).0
    });
    e.expect_violation(HAX_E_NVEC, || {
        e.send(l, &nvec(HAX_NVEC_SET, 0, 0, &[(p, 8)])).0
    });
    e.expect_violation(HAX_E_NVEC, || {
        e.send(l, &nvec(HAX_NVEC_GET, 100, 0, &[(p, 9)])).0
    });
    e.expect_violation(HAX_E_NVEC, || e.send(l, &nvec(3, 0, 0, &[(p, 1)])).0);
    let d = e.expect_violation(HAX_E_NVEC, || {
        e.send(
            l,
            &nvec(HAX_NVEC_SET, 0, 0, &[(pool, 1), (p, HAX_NC_REPAIR)]),
        )
        .0
    });
    assert!(d.contains("REPAIR"), "{d}");
    e.expect_violation(HAX_E_NVEC, || {
        e.send(l, &nvec(HAX_NVEC_SET, 0, 0, &[(p, HAX_NC_REBALANCE)]))
            .0
    });
    e.expect_violation(HAX_E_NVEC, || {
        e.send(l, &nvec(HAX_NVEC_SET, 0, 0, &[(fid(0, 1, 2), 1)])).0
    });
    let d = e.expect_violation(HAX_E_NVEC, || {
        e.send(l, &nvec(HAX_NVEC_SET, 100, 0, &[(p, 1)])).0
    });
    assert!(d.contains("GET"), "{d}");
    let mut fv = zmsg();
    fv.type_ = HAX_MSG_FVEC_REP;
    fv.u.fvec = hax_fvec {
        pool: fid(b'o', 2, 9),
        cookie_addr: 1,
        cookie_gen: 2,
    };
    e.expect_violation(HAX_E_COOKIE, || e.send(l, &fv).0);
    // What Motr accepts passes.
    for t in [b'o', b'd', b'n', b'k'] {
        let ok = nvec(
            HAX_NVEC_SET,
            0,
            1,
            &[
                (fid(t, 1, 1), HAX_NC_REPAIR),
                (fid(t, 1, 2), HAX_NC_REBALANCE),
            ],
        );
        assert_eq!(e.send(l, &ok).0, 0);
    }
    assert_eq!(
        e.send(l, &nvec(HAX_NVEC_SET, 0, 0, &[(hax_fid::default(), 1)]))
            .0,
        0
    );
    // Every refused send left the tags alone.
    let (rc, tag) = e.send(l, &keepalive(0, 0));
    assert_eq!((rc, tag), (0, 11));
    assert_eq!(e.violations(), e.violation_events().len() as u64);
}

#[test]
fn process_fid_table_holds_4096_entries() {
    let e = Emu::started();
    let l = e.wait_started();
    for chunk in 0..4u64 {
        let notes: Vec<(hax_fid, u32)> = (0..1024)
            .map(|i| (fid(b'r', 5, chunk * 1024 + i), HAX_NC_ONLINE))
            .collect();
        assert_eq!(
            e.send(l, &nvec(HAX_NVEC_SET, 0, 1, &notes)).0,
            0,
            "chunk {chunk}"
        );
    }
    // Known fids are fine, duplicates within one message count once.
    let again = nvec(
        HAX_NVEC_SET,
        0,
        1,
        &[(fid(b'r', 5, 7), HAX_NC_TRANSIENT), (fid(b'r', 5, 7), 1)],
    );
    assert_eq!(e.send(l, &again).0, 0);
    let d = e.expect_violation(HAX_E_LIMIT, || {
        e.send(
            l,
            &nvec(HAX_NVEC_SET, 0, 1, &[(fid(b'r', 5, 5000), HAX_NC_ONLINE)]),
        )
        .0
    });
    assert!(d.contains("4096"), "{d}");
    // Non-process fids do not count.
    assert_eq!(
        e.send(l, &nvec(HAX_NVEC_SET, 0, 1, &[(fid(b's', 5, 5000), 1)]))
            .0,
        0
    );
}

#[test]
fn failed_note_fences_the_self_link() {
    let mut e = Emu::started_with(
        "",
        Policy {
            auto_deliver: false,
            auto_disconnect: false,
            ..Policy::default()
        },
    );
    let l = e.wait_started();
    for t in [2, 4, 6, 8, 10, 12] {
        assert_eq!(e.delivered(l, t), 0);
    }
    let failed = |ignore_same| nvec(HAX_NVEC_SET, 0, ignore_same, &[(PROCESS, HAX_NC_FAILED)]);
    // First sighting of a fid only records its state.
    assert_eq!(e.send(l, &failed(0)).0, 0);
    // Same state again with ignore_same: skipped.
    assert_eq!(e.send(l, &failed(1)).0, 0);
    e.wait_n("2 delivered", 2, |ev| matches!(ev, Ev::Delivered { .. }));
    assert!(!e
        .events()
        .iter()
        .any(|ev| matches!(ev, Ev::Disconnecting { .. })));
    // A keepalive leaves a received message undelivered.
    assert_eq!(e.send(l, &keepalive(4, 4)).0, 0);
    let (ka_tag, _) = e.wait("keepalive reply", |evs| {
        recv_of(evs, l)
            .into_iter()
            .find(|(_, m)| m.0.type_ == HAX_MSG_KEEPALIVE_REP)
    });
    // Same state, ignore_same 0: FAILED acts.
    let (rc, ftag) = e.send(l, &failed(0));
    assert_eq!(rc, 0);
    e.wait("link_is_disconnecting", |evs| {
        evs.iter()
            .any(|ev| matches!(ev, Ev::Disconnecting { link, .. } if *link == l))
            .then_some(())
    });
    // link_is_disconnecting comes before the FAILED note's msg_delivered.
    let evs = e.wait("FAILED delivered", |evs| {
        evs.iter()
            .any(|ev| matches!(ev, Ev::Delivered { tag, .. } if *tag == ftag))
            .then(|| evs.to_vec())
    });
    let di = evs
        .iter()
        .position(|ev| matches!(ev, Ev::Disconnecting { .. }));
    let de = evs
        .iter()
        .position(|ev| matches!(ev, Ev::Delivered { tag, .. } if *tag == ftag));
    assert!(di < de, "{evs:?}");
    // Once only, whatever comes next.
    assert_eq!(e.send(l, &failed(0)).0, 0);
    e.wait_n(
        "delivered",
        1,
        |ev| matches!(ev, Ev::Delivered { tag, .. } if *tag == ftag + 2),
    );
    let d = e.expect_violation(HAX_E_UNDELIVERED, || e.disconnect(l));
    assert!(d.contains("not delivered"), "{d}");
    assert_eq!(e.delivered(l, ka_tag), 0);
    assert_eq!(e.disconnect(l), 0);
    e.expect_violation(HAX_E_ORDER, || e.disconnect(l));
    e.wait("link_disconnected", |evs| {
        evs.iter()
            .any(|ev| matches!(ev, Ev::Disconnected { link, .. } if *link == l))
            .then_some(())
    });
    let d = e.expect_violation(HAX_E_NOLINK, || e.send(l, &keepalive(0, 0)).0);
    assert!(d.contains("disconnected"), "{d}");
    e.expect_violation(HAX_E_ORDER, || e.disconnect(l));
    assert_eq!(
        e.events()
            .iter()
            .filter(|ev| matches!(ev, Ev::Disconnecting { .. }))
            .count(),
        1,
        "link_is_disconnecting once"
    );
    // stop() has nothing left to do on the self link.
    assert_eq!(e.stop(), 0);
    assert_eq!(e.violations(), 4);
}

#[test]
fn stop_reports_where_motr_would_hang() {
    let mut e = Emu::started_with(
        "emu-stop-timeout-ms=200",
        Policy {
            auto_deliver: false,
            auto_disconnect: false,
            ..Policy::default()
        },
    );
    let l = e.wait_started();
    let t0 = std::time::Instant::now();
    assert_eq!(e.stop(), HAX_E_HANG);
    assert!(
        t0.elapsed() >= std::time::Duration::from_millis(350),
        "two deadlines"
    );
    let v = e.violation_events();
    assert_eq!(v.len(), 2, "{v:?}");
    assert!(v.iter().all(|(c, _)| *c == HAX_E_HANG));
    assert!(
        v[0].1.contains("self link") && v[0].1.contains("m0_ha_flush"),
        "{}",
        v[0].1
    );
    assert!(
        v[1].1.contains(&format!("link {l}")) && v[1].1.contains("not disconnected"),
        "{}",
        v[1].1
    );
    // The forced handshake still ran its callbacks.
    let evs = e.events();
    assert!(evs
        .iter()
        .any(|ev| matches!(ev, Ev::Disconnecting { link, .. } if *link == l)));
    assert!(evs
        .iter()
        .any(|ev| matches!(ev, Ev::Disconnected { link, .. } if *link == l)));
    assert_eq!(e.violations(), 2);

    // The handle starts again, with fresh request ids.
    e.clear();
    e.set_policy(Policy::default());
    let ep = unix_ep();
    e.start(&ep);
    let l2 = e.wait_started();
    assert!(l2 > l, "link ids are never reused");
    assert!(matches!(e.events().first(), Some(Ev::EpReq { req: 1, .. })));
    assert_eq!(e.stop(), 0);
}

#[test]
fn start_gives_up_when_its_request_is_never_answered() {
    let mut e = Emu::init("emu-stop-timeout-ms=10 emu-start-timeout-ms=150");
    e.set_policy(Policy {
        auto_reply: false,
        ..Policy::default()
    });
    let ep = unix_ep();
    assert_eq!(e.try_start(&ep), HAX_E_HANG);
    let v = e.violation_events();
    assert_eq!(v.len(), 1);
    assert!(v[0].1.contains("start"), "{v:?}");
    // A late reply finds nothing.
    assert_eq!(e.reply(1, 0), HAX_E_STATE);
    e.set_policy(Policy::default());
    e.start(&ep);
    e.wait_started();
}

#[test]
fn repeated_start_stop_on_one_handle() {
    let mut e = Emu::init("");
    let mut last = 0;
    for round in 0..3 {
        e.clear();
        let ep = unix_ep();
        e.start(&ep);
        let l = e.wait_started();
        assert!(l > last, "round {round}: link ids grow");
        last = l;
        assert!(
            matches!(e.events().first(), Some(Ev::EpReq { req: 1, .. })),
            "req ids restart"
        );
        assert_eq!(
            e.send(l, &keepalive(0, 0)).1,
            1,
            "tags restart on the new self link"
        );
        assert_eq!(e.stop(), 0);
    }
    assert_eq!(e.violations(), 0);
}

#[test]
fn several_handles_at_once() {
    let threads: Vec<_> = (0..6)
        .map(|i| {
            thread::spawn(move || {
                let mut e = Emu::started();
                let l = e.wait_started();
                for k in 0..50 {
                    let (rc, tag) = e.send(l, &keepalive(i, k));
                    assert_eq!((rc, tag), (0, 1 + 2 * k));
                }
                e.wait_n("50 delivered", 50, |ev| matches!(ev, Ev::Delivered { .. }));
                assert_eq!(e.stop(), 0);
                assert_eq!(e.violations(), 0);
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap_or_else(|_| panic!("a handle failed"));
    }
}

#[test]
fn endpoint_forms_listen_where_motr_would() {
    use std::net::{TcpListener, TcpStream};
    use std::os::unix::net::UnixStream;
    // inet style on a free port.
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("{e}"));
    let mut e = Emu::init("");
    e.start(&format!("inet:tcp:127.0.0.1@{port}"));
    e.wait_started();
    assert!(TcpStream::connect(("127.0.0.1", port)).is_ok());
    assert_eq!(e.stop(), 0);
    assert!(
        TcpStream::connect(("127.0.0.1", port)).is_err(),
        "closed after stop"
    );
    // LNet style: port tmid | 1<<10 | (portal-30)<<11; portal 60 keeps it high.
    let tmid = (std::process::id() % 1000) as u16;
    let port = tmid | 1 << 10 | 30 << 11;
    e.start(&format!("0@lo:12345:60:{tmid}"));
    e.wait_started();
    assert!(
        TcpStream::connect(("127.0.0.1", port)).is_ok(),
        "LNet port {port}"
    );
    assert_eq!(e.stop(), 0);
    e.start(&format!("127.0.0.1@tcp:12345:60:{tmid}"));
    e.wait_started();
    assert!(TcpStream::connect(("127.0.0.1", port)).is_ok());
    assert_eq!(e.stop(), 0);
    // Unix: a stale socket file is replaced, and removed on stop.
    let ep = unix_ep();
    let path = ep.trim_start_matches("unix:").to_owned();
    let stale = std::os::unix::net::UnixListener::bind(&path).unwrap_or_else(|e| panic!("{e}"));
    drop(stale);
    e.start(&ep);
    e.wait_started();
    assert!(UnixStream::connect(&path).is_ok());
    assert_eq!(e.stop(), 0);
    assert!(!std::path::Path::new(&path).exists());
    // A busy endpoint fails with errno.
    let busy = TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
    let port = busy.local_addr().map(|a| a.port()).unwrap_or(0);
    assert_eq!(
        e.try_start(&format!("inet:tcp:127.0.0.1@{port}")),
        -98,
        "EADDRINUSE"
    );
}
