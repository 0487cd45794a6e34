//! The emulator against a minimal peer speaking docs/emulator-protocol.md over a
//! Unix socket: entrypoint and link callbacks, tags and delivery both ways,
//! vanish and reattach, fencing, bad frames, GET/failvec answers, restart.

#[path = "emulator_support.rs"]
mod support;

use hax_sys::*;
use std::thread;
use support::peer::*;
use support::*;

fn has(evs: &[Ev], f: impl Fn(&Ev) -> bool) -> bool {
    evs.iter().any(f)
}

const PEER: hax_fid = hax_fid {
    container: 0x7200_0000_0000_0001,
    key: 0x10,
};
const PEER2: hax_fid = hax_fid {
    container: 0x7200_0000_0000_0001,
    key: 0x20,
};

#[test]
fn entrypoint_messages_and_delivery() {
    let e = Emu::started();
    e.wait_started();
    let mut p = Peer::hello(&e.ep);
    let r = p.first(PEER, "inet:tcp:10.0.0.1@3000");
    assert_eq!(
        (r.control, r.flags, r.next_out, r.next_in, r.quorum),
        (0, 0, 2, 1, 1)
    );
    assert!(r.link > 0 && r.req == 2, "{r:?}");
    let l = r.link;
    let evs = e.events();
    assert!(has(
        &evs,
        |ev| matches!(ev, Ev::EpReq { req: 2, ep, pid: 4242, first: true, git, .. }
        if ep == "inet:tcp:10.0.0.1@3000" && git == "peer-git")
    ));
    assert!(has(
        &evs,
        |ev| matches!(ev, Ev::Connected { req: 2, link, ep, fid, .. }
        if *link == l && ep == "inet:tcp:10.0.0.1@3000" && fid.key == PEER.key)
    ));
    let mut buf = [0u8; 64];
    // SAFETY: live handle, valid buffer.
    let rc = unsafe { hax_glue_link_endpoint(e.h, l, buf.as_mut_ptr().cast(), buf.len()) };
    assert_eq!(rc, 0);
    assert!(buf.starts_with(b"inet:tcp:10.0.0.1@3000\0"));

    // Peer -> hax: tags 2, 4; a resend is confirmed again; a gap is dropped.
    p.msg(l, 2, &enc_event(PEER, 1));
    assert_eq!(p.recv_delivered(), (l, 2));
    p.msg(l, 2, &enc_event(PEER, 1));
    assert_eq!(p.recv_delivered(), (l, 2), "resend of a delivered message");
    p.msg(l, 6, &enc_event(PEER, 1));
    p.msg(l, 4, &enc_event(PEER, 2));
    assert_eq!(p.recv_delivered(), (l, 4));
    let got = recv_of(&e.events(), l);
    assert_eq!(got.iter().map(|(t, _)| *t).collect::<Vec<_>>(), [2, 4]);
    // SAFETY: EVENT_PROCESS uses the event member.
    assert_eq!(unsafe { got[1].1 .0.u.event }.event, 2);

    // hax -> peer: odd tags; msg_delivered only after DELIVERED, as a prefix.
    let m = keepalive(1, 2);
    assert_eq!(e.send(l, &m), (0, 1));
    assert_eq!(e.send(l, &m), (0, 3));
    assert_eq!(p.recv_msg(), (l, 1, HAX_MSG_KEEPALIVE_REQ));
    assert_eq!(p.recv_msg(), (l, 3, HAX_MSG_KEEPALIVE_REQ));
    p.delivered(l, 3);
    // Prove the emulator processed it: a later frame is answered.
    p.msg(l, 6, &enc_event(PEER, 1));
    assert_eq!(p.recv_delivered(), (l, 6));
    assert!(!has(
        &e.events(),
        |ev| matches!(ev, Ev::Delivered { link, .. } if *link == l)
    ));
    p.delivered(l, 1);
    p.delivered(l, 1);
    let d = e.wait_n(
        "two msg_delivered",
        2,
        |ev| matches!(ev, Ev::Delivered { link, .. } if *link == l),
    );
    let tags: Vec<u64> = d
        .iter()
        .filter_map(|ev| match ev {
            Ev::Delivered { tag, .. } => Some(*tag),
            _ => None,
        })
        .collect();
    assert_eq!(tags, [1, 3]);
    assert_eq!(e.violations(), 0);
}

#[test]
fn vanished_peer_gets_its_messages_resent() {
    let e = Emu::started();
    e.wait_started();
    let mut p = Peer::hello(&e.ep);
    let r = p.first(PEER, "peer-1");
    let l = r.link;
    let m = keepalive(0, 0);
    for want in [1, 3, 5] {
        assert_eq!(e.send(l, &m), (0, want));
        assert_eq!(p.recv_msg().1, want);
    }
    p.delivered(l, 1);
    e.wait_n("delivered 1", 1, |ev| {
        matches!(ev, Ev::Delivered { tag: 1, .. })
    });
    drop(p);
    e.wait_logs("connection lost", 0, |t| {
        t.contains("peer connection") && t.contains("lost")
    });
    assert_eq!(e.send(l, &m), (0, 7), "sends go on while the peer is away");
    let mut p = Peer::hello(&e.ep);
    p.ep_req(false, PEER, r.cookie, l, 2, 3, "peer-1");
    let r2 = p.ep_rep();
    assert_eq!((r2.control, r2.flags, r2.link), (0, 0, l));
    e.wait("link_reused", |evs| {
        has(
            evs,
            |ev| matches!(ev, Ev::Reused { link, .. } if *link == l),
        )
        .then_some(())
    });
    let resent: Vec<u64> = (0..3).map(|_| p.recv_msg().1).collect();
    assert_eq!(resent, [3, 5, 7], "unconfirmed, in tag order");
    for t in [7, 3, 5] {
        p.delivered(l, t);
    }
    e.wait_n(
        "all delivered",
        4,
        |ev| matches!(ev, Ev::Delivered { link, .. } if *link == l),
    );
    assert!(!has(&e.events(), |ev| matches!(
        ev,
        Ev::NotDelivered { .. }
    )));
}

#[test]
fn failed_note_fences_a_peer() {
    let e = Emu::started();
    let s = e.wait_started();
    let mut p = Peer::hello(&e.ep);
    let r = p.first(PEER, "peer-1");
    let l = r.link;
    let mut q = Peer::hello(&e.ep);
    let l2 = q.first(PEER2, "peer-2").link;
    let m = keepalive(0, 0);
    for _ in 0..3 {
        e.send(l, &m);
        p.recv_msg();
    }
    p.delivered(l, 1);
    e.wait_n(
        "delivered 1",
        1,
        |ev| matches!(ev, Ev::Delivered { link, .. } if *link == l),
    );
    let note = |st| nvec(HAX_NVEC_SET, 0, 0, &[(PEER, st)]);
    assert_eq!(e.send(s, &note(HAX_NC_ONLINE)).0, 0);
    assert_eq!(e.send(s, &note(HAX_NC_FAILED)).0, 0);
    e.wait("link_disconnected", |evs| {
        has(
            evs,
            |ev| matches!(ev, Ev::Disconnected { link, .. } if *link == l),
        )
        .then_some(())
    });
    let seq: Vec<String> = e
        .events()
        .iter()
        .filter_map(|ev| match ev {
            Ev::Disconnecting { link, .. } if *link == l => Some("disconnecting".into()),
            Ev::NotDelivered { link, tag, .. } if *link == l => Some(format!("nd{tag}")),
            Ev::Disconnected { link, .. } if *link == l => Some("disconnected".into()),
            _ => None,
        })
        .collect();
    assert_eq!(seq, ["disconnecting", "nd3", "nd5", "disconnected"]);
    assert_eq!(p.expect(R_NOLINK), l.to_le_bytes().to_vec());
    assert!(!has(
        &e.events(),
        |ev| matches!(ev, Ev::Disconnecting { link, .. } if *link == l2)
    ));
    // The fenced peer asks again with the same cookie: link_absent.
    p.ep_req(false, PEER, r.cookie, l, 4, 7, "peer-1");
    let r2 = p.ep_rep();
    assert_eq!((r2.control, r2.flags, r2.link), (0, 2, 0));
    e.wait("link_absent", |evs| {
        has(evs, |ev| matches!(ev, Ev::Absent { .. })).then_some(())
    });
    p.msg(l, 2, &enc_event(PEER, 1));
    assert_eq!(p.expect(R_NOLINK), l.to_le_bytes().to_vec());
    p.delivered(l, 3);
    assert_eq!(p.expect(R_NOLINK), l.to_le_bytes().to_vec());
    assert_eq!(e.send(l, &m).0, HAX_E_NOLINK);
    // SAFETY: live handle, valid buffer.
    let rc = unsafe { hax_glue_link_endpoint(e.h, l, [0u8; 8].as_mut_ptr().cast(), 8) };
    assert_eq!(rc, HAX_E_NOLINK);
    assert_eq!(e.violations(), 1, "only the send on the dead link");
}

#[test]
fn bad_frames_drop_only_that_connection() {
    let e = Emu::started();
    e.wait_started();
    let mut good = Peer::hello(&e.ep);
    let l = good.first(PEER, "good").link;
    let frame = |ty: u8, body: &[u8]| {
        let mut f = ((body.len() + 1) as u32).to_le_bytes().to_vec();
        f.push(ty);
        f.extend_from_slice(body);
        f
    };
    let msg_body = |m: Vec<u8>| {
        let mut b = l.to_le_bytes().to_vec();
        b.extend_from_slice(&2u64.to_le_bytes());
        b.extend_from_slice(&m);
        b
    };
    let mut ep_req = vec![1u8];
    ep_req.extend_from_slice(&[0u8; 72]);
    let mut long = ep_req.clone();
    long.extend_from_slice(&300u16.to_le_bytes());
    long.extend_from_slice(&[b'a'; 300]);
    put_str(&mut long, "g");
    let mut utf = ep_req.clone();
    utf.extend_from_slice(&2u16.to_le_bytes());
    utf.extend_from_slice(&[0xc3, 0x28]);
    put_str(&mut utf, "g");
    let mut nul = ep_req.clone();
    put_str(&mut nul, "a\0b");
    put_str(&mut nul, "g");
    let mut first2 = ep_req.clone();
    first2[0] = 2;
    put_str(&mut first2, "a");
    put_str(&mut first2, "g");
    let mut short_ev = enc_event(PEER, 1);
    short_ev.pop();
    let mut long_ev = enc_event(PEER, 1);
    long_ev.push(0);
    let mut hello = MAGIC.to_le_bytes().to_vec();
    hello.extend_from_slice(&1u32.to_le_bytes());
    let mut bad_hello = MAGIC.to_le_bytes().to_vec();
    bad_hello.extend_from_slice(&2u32.to_le_bytes());
    let cases: Vec<(&str, bool, Vec<u8>)> = vec![
        ("garbage", true, vec![0xff; 64]),
        (
            "oversize length",
            true,
            [&70000u32.to_le_bytes()[..], &[3]].concat(),
        ),
        ("zero length", true, 0u32.to_le_bytes().to_vec()),
        ("unknown type", true, frame(0x42, b"")),
        (
            "hax's own type",
            true,
            frame(R_MSG, &msg_body(enc_event(PEER, 1))),
        ),
        (
            "message type 0",
            true,
            frame(MSG, &msg_body(enc_header(PEER, 0))),
        ),
        (
            "message type 12",
            true,
            frame(MSG, &msg_body(enc_header(PEER, 12))),
        ),
        ("short payload", true, frame(MSG, &msg_body(short_ev))),
        ("long payload", true, frame(MSG, &msg_body(long_ev))),
        (
            "note state 8",
            true,
            frame(MSG, &msg_body(enc_nvec(1, 1, &[(PEER, 8)]))),
        ),
        ("short MSG", true, frame(MSG, &[0; 10])),
        ("long DELIVERED", true, frame(DELIVERED, &[0; 17])),
        ("long string", true, frame(EP_REQ, &long)),
        ("bad UTF-8", true, frame(EP_REQ, &utf)),
        ("NUL in a string", true, frame(EP_REQ, &nul)),
        ("first_request 2", true, frame(EP_REQ, &first2)),
        ("second HELLO", true, frame(HELLO, &hello)),
        ("bad HELLO", false, frame(HELLO, &bad_hello)),
        (
            "frame before HELLO",
            false,
            frame(MSG, &msg_body(enc_event(PEER, 1))),
        ),
    ];
    for (what, hello_first, bytes) in &cases {
        let mut b = if *hello_first {
            Peer::hello(&e.ep)
        } else {
            Peer::connect(&e.ep)
        };
        b.raw(bytes);
        b.expect_closed(what);
    }
    // Two outstanding requests on one connection.
    e.policy(|p| p.auto_reply = false);
    let mut b = Peer::hello(&e.ep);
    b.ep_req(true, PEER2, (0, 0), 0, 0, 0, "x");
    b.ep_req(true, PEER2, (0, 0), 0, 0, 0, "x");
    b.expect_closed("two outstanding EP_REQ");
    let drops = e.wait_logs("drop logs", cases.len(), |t| t.contains("dropped:"));
    assert!(drops.iter().any(|t| t.contains("UTF-8")), "{drops:?}");
    assert!(
        drops.iter().any(|t| t.contains("before HELLO")),
        "{drops:?}"
    );
    // The good connection and its link are untouched.
    good.msg(l, 2, &enc_event(PEER, 1));
    assert_eq!(good.recv_delivered(), (l, 2));
    assert!(!has(
        &e.events(),
        |ev| matches!(ev, Ev::Disconnecting { link, .. } if *link == l)
    ));
    // The first of the two requests reached the user, whose connection is gone:
    // replying is still fine (and stop() would wait for it).
    let pending = e.wait("the first request", |evs| {
        evs.iter().find_map(|ev| match ev {
            Ev::EpReq { req, ep, .. } if ep == "x" => Some(*req),
            _ => None,
        })
    });
    assert_eq!(e.reply(pending, 0), 0);
    e.policy(|p| p.auto_reply = true);
    assert_eq!(e.violations(), 0);
}

#[test]
fn get_and_failvec_answers_are_checked() {
    let e = Emu::started();
    let s = e.wait_started();
    let mut p = Peer::hello(&e.ep);
    let l = p.first(PEER, "peer-1").link;
    let mut q = Peer::hello(&e.ep);
    let l2 = q.first(PEER2, "peer-2").link;
    let a = fid(b'd', 1, 1);
    let b = fid(b'd', 1, 2);
    p.msg(l, 2, &enc_nvec(1, 100, &[(a, 0), (b, 0)]));
    q.msg(l2, 2, &enc_nvec(1, 100, &[(a, 0)]));
    assert_eq!(p.recv_delivered(), (l, 2));
    assert_eq!(q.recv_delivered(), (l2, 2));
    let set = |id, notes: &[(hax_fid, u32)]| nvec(HAX_NVEC_SET, id, 0, notes);
    e.expect_violation(HAX_E_NVEC, || e.send(l, &set(100, &[(b, 1), (a, 1)])).0);
    e.expect_violation(HAX_E_NVEC, || e.send(l, &set(100, &[(a, 1)])).0);
    e.expect_violation(HAX_E_NVEC, || e.send(l, &set(101, &[(a, 1), (b, 1)])).0);
    e.expect_violation(HAX_E_NVEC, || e.send(s, &set(100, &[(a, 1), (b, 1)])).0);
    assert_eq!(e.send(l, &set(100, &[(a, 1), (b, 2)])).0, 0);
    e.expect_violation(HAX_E_NVEC, || e.send(l, &set(100, &[(a, 1), (b, 2)])).0);
    assert_eq!(
        e.send(l2, &set(100, &[(a, 3)])).0,
        0,
        "same id on another link"
    );
    let (lk, tag, ty) = p.recv_msg();
    assert_eq!((lk, tag, ty), (l, 1, HAX_MSG_NVEC));

    p.msg(l, 4, &enc_fvec_req((7, 8)));
    assert_eq!(p.recv_delivered(), (l, 4));
    let fv = |addr, gen| {
        let mut m = zmsg();
        m.type_ = HAX_MSG_FVEC_REP;
        m.u.fvec = hax_fvec {
            pool: fid(b'o', 2, 9),
            cookie_addr: addr,
            cookie_gen: gen,
        };
        m
    };
    e.expect_violation(HAX_E_COOKIE, || e.send(l, &fv(7, 9)).0);
    e.expect_violation(HAX_E_COOKIE, || e.send(l2, &fv(7, 8)).0);
    assert_eq!(e.send(l, &fv(7, 8)).0, 0);
    e.expect_violation(HAX_E_COOKIE, || e.send(l, &fv(7, 8)).0);
    let (_, tag, ty) = p.recv_msg();
    assert_eq!((tag, ty), (3, HAX_MSG_FVEC_REP));
}

#[test]
fn query_reply_then_reuse_over_the_wire() {
    let e = Emu::started();
    e.wait_started();
    e.policy(|p| p.reply_rcs.push_back(-11));
    let mut p = Peer::hello(&e.ep);
    let r = p.first(PEER, "peer-1");
    assert_eq!(r.control, 2, "QUERY: rc != 0, the number is not sent");
    assert!(r.link > 0);
    p.ep_req(
        false, PEER, r.cookie, r.link, r.next_out, r.next_in, "peer-1",
    );
    let r2 = p.ep_rep();
    assert_eq!((r2.control, r2.link, r2.flags), (0, r.link, 0));
    assert!(has(
        &e.events(),
        |ev| matches!(ev, Ev::Connected { link, .. } if *link == r.link)
    ));
    assert!(has(
        &e.events(),
        |ev| matches!(ev, Ev::Reused { link, .. } if *link == r.link)
    ));
}

#[test]
fn restart_reconnects_with_continued_tags_and_stop_sends_nolink() {
    let mut e = Emu::started();
    e.wait_started();
    let mut p = Peer::hello(&e.ep);
    let r = p.first(PEER, "peer-1");
    let l = r.link;
    assert_eq!(e.send(l, &keepalive(0, 0)).1, 1);
    assert_eq!(p.recv_msg().1, 1);
    assert_eq!(e.stop(), 0);
    let evs = e.events();
    assert!(has(
        &evs,
        |ev| matches!(ev, Ev::NotDelivered { link, tag: 1, .. } if *link == l)
    ));
    assert_eq!(p.expect(R_NOLINK), l.to_le_bytes().to_vec());
    p.expect_closed("stop");

    let ep = e.ep.clone();
    e.clear();
    e.start(&ep);
    e.wait_started();
    let mut p = Peer::hello(&e.ep);
    // The peer keeps its link: next out tag 6, it expects hax's tag 3.
    p.ep_req(false, PEER, r.cookie, l, 6, 3, "peer-1");
    let r2 = p.ep_rep();
    assert_eq!(
        (r2.control, r2.flags, r2.next_out, r2.next_in),
        (0, 1, 6, 3)
    );
    assert!(r2.link > l);
    assert_ne!(r2.cookie, r.cookie);
    assert!(has(
        &e.events(),
        |ev| matches!(ev, Ev::Connected { link, .. } if *link == r2.link)
    ));
    assert_eq!(e.send(r2.link, &keepalive(0, 0)).1, 3);
    assert_eq!(p.recv_msg(), (r2.link, 3, HAX_MSG_KEEPALIVE_REQ));
    p.msg(r2.link, 6, &enc_event(PEER, 1));
    assert_eq!(p.recv_delivered(), (r2.link, 6));
    assert!(has(
        &e.events(),
        |ev| matches!(ev, Ev::Recv { link, tag: 6, .. } if *link == r2.link)
    ));
}

#[test]
fn stop_answers_requests_that_arrive_during_stop() {
    let mut e = Emu::started_with(
        "",
        Policy {
            auto_disconnect: false,
            ..Policy::default()
        },
    );
    let s = e.wait_started();
    let h = SendPtr(e.h);
    let shared = e.shared.clone();
    let ep = e.ep.clone();
    let helper = thread::spawn(move || {
        let h = h;
        // SAFETY: live handle.
        assert_eq!(unsafe { hax_glue_thread_adopt(h.0) }, 0);
        let wait = |f: &dyn Fn(&Ev) -> bool| {
            let deadline = std::time::Instant::now() + WAIT;
            let mut g = shared.inner.lock().unwrap_or_else(|e| e.into_inner());
            loop {
                if let Some(ev) = g.events.iter().find(|ev| f(ev)) {
                    return ev.clone();
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "helper timed out: {:?}",
                    g.events
                );
                g = shared
                    .cv
                    .wait_timeout(g, WAIT)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            }
        };
        wait(&|ev| matches!(ev, Ev::Disconnecting { link, .. } if *link == s));
        // stop() is running: a peer comes and is answered (automatically).
        let mut p = Peer::hello(&ep);
        let r = p.first(PEER, "late");
        assert_eq!(r.control, 0);
        wait(&|ev| matches!(ev, Ev::Disconnecting { link, .. } if *link == r.link));
        // SAFETY: live handle, adopted thread.
        assert_eq!(unsafe { hax_glue_disconnect(h.0, r.link) }, 0);
        assert_eq!(p.expect(R_NOLINK), r.link.to_le_bytes().to_vec());
        // SAFETY: as above.
        assert_eq!(unsafe { hax_glue_disconnect(h.0, s) }, 0);
        // SAFETY: live handle.
        assert_eq!(unsafe { hax_glue_thread_shun(h.0) }, 0);
    });
    assert_eq!(e.stop(), 0);
    helper.join().unwrap_or_else(|_| panic!("helper failed"));
    let evs = e.events();
    let connected = evs
        .iter()
        .position(|ev| matches!(ev, Ev::Connected { ep, .. } if ep == "late"));
    let disc = evs
        .iter()
        .position(|ev| matches!(ev, Ev::Disconnecting { link, .. } if *link != s));
    assert!(
        connected < disc,
        "link_connected before its link_is_disconnecting"
    );
    assert_eq!(e.violations(), 0);
}

#[test]
fn stop_reports_an_unanswered_request() {
    let mut e = Emu::started_with("emu-stop-timeout-ms=200", Policy::default());
    e.wait_started();
    e.policy(|p| p.auto_reply = false);
    let mut p = Peer::hello(&e.ep);
    p.ep_req(true, PEER, (0, 0), 0, 0, 0, "silent");
    e.wait("request", |evs| {
        has(
            evs,
            |ev| matches!(ev, Ev::EpReq { ep, .. } if ep == "silent"),
        )
        .then_some(())
    });
    assert_eq!(e.stop(), HAX_E_HANG);
    let v = e.violation_events();
    assert_eq!(v.len(), 1, "{v:?}");
    assert!(
        v[0].1.contains("entrypoint request") && v[0].1.contains("silent"),
        "{v:?}"
    );
    p.expect_closed("stop");
}

#[test]
fn slow_reader_is_dropped_and_its_link_resent_in_slices() {
    let e = Emu::started();
    e.wait_started();
    let mut p = Peer::hello(&e.ep);
    let r = p.first(PEER, "slow");
    let l = r.link;
    let notes: Vec<(hax_fid, u32)> = (0..1024)
        .map(|i| (fid(b'd', 1, i), HAX_NC_ONLINE))
        .collect();
    let big = nvec(HAX_NVEC_SET, 0, 1, &notes);
    let mut n = 0u64;
    // 16 MiB of unread output drops the connection, not the link.
    let deadline = std::time::Instant::now() + WAIT;
    while !e.logs().iter().any(|(_, t)| t.contains("does not read")) {
        assert!(
            std::time::Instant::now() < deadline,
            "slow peer not dropped after {n} sends"
        );
        for _ in 0..50 {
            assert_eq!(e.send(l, &big).0, 0);
            n += 1;
        }
    }
    assert!(n * 20_000 > 16 << 20, "{n}");
    drop(p);
    let mut p = Peer::hello(&e.ep);
    p.ep_req(false, PEER, r.cookie, l, 2, 1, "slow");
    assert_eq!(p.ep_rep().link, l);
    for want in 0..n {
        let (lk, tag, ty) = p.recv_msg();
        assert_eq!((lk, tag, ty), (l, 1 + 2 * want, HAX_MSG_NVEC));
        p.delivered(l, tag);
    }
    e.wait_n(
        "all delivered",
        n as usize,
        |ev| matches!(ev, Ev::Delivered { link, .. } if *link == l),
    );
    assert!(!has(&e.events(), |ev| matches!(
        ev,
        Ev::Disconnecting { .. }
    )));
}

fn hello_frame() -> Vec<u8> {
    let mut f = 9u32.to_le_bytes().to_vec();
    f.push(HELLO);
    f.extend_from_slice(&MAGIC.to_le_bytes());
    f.extend_from_slice(&1u32.to_le_bytes());
    f
}

/// Closed by hax; how long after `t0`.
fn closed_after(p: &mut Peer, t0: std::time::Instant, what: &str) -> std::time::Duration {
    p.expect_closed(what);
    t0.elapsed()
}

#[test]
fn silent_and_half_sent_connections_are_closed_by_their_timeouts() {
    let ms = 400;
    let e = Emu::started_with(
        &format!("emu-hello-timeout-ms={ms} emu-frame-timeout-ms={ms}"),
        Policy::default(),
    );
    e.wait_started();
    let bound = std::time::Duration::from_millis(ms);
    let t0 = std::time::Instant::now();
    let mut silent = Peer::connect(&e.ep);
    let mut half_hello = Peer::connect(&e.ep);
    half_hello.raw(&hello_frame()[..3]);
    let mut half_frame = Peer::hello(&e.ep);
    let mut f = 1000u32.to_le_bytes().to_vec();
    f.extend_from_slice(&[MSG; 10]);
    half_frame.raw(&f);
    // A peer that said HELLO and is then silent is a peer: it stays.
    let mut quiet = Peer::hello(&e.ep);
    // Anything but a HELLO first is refused before it arrives whole.
    let mut big_first = Peer::connect(&e.ep);
    big_first.raw(&65_536u32.to_le_bytes());
    big_first.expect_closed("a 64 KiB frame before HELLO");
    for (p, what) in [
        (&mut silent, "silent"),
        (&mut half_hello, "half a HELLO"),
        (&mut half_frame, "half a frame"),
    ] {
        let took = closed_after(p, t0, what);
        // The emulator's clock counts whole milliseconds.
        assert!(
            took + std::time::Duration::from_millis(2) >= bound,
            "{what}: closed after {took:?}, before {bound:?}"
        );
    }
    let r = quiet.first(PEER, "inet:tcp:10.0.0.1@3000");
    assert!(r.link > 0, "{r:?}");
    let logs = e.logs();
    for why in [
        "no HELLO within 400 ms",
        "frame unfinished after 400 ms",
        "before HELLO",
    ] {
        assert!(logs.iter().any(|(_, t)| t.contains(why)), "{why}: {logs:?}");
    }
}

#[test]
fn connections_past_the_bounds_make_room_or_are_refused() {
    let e = Emu::started_with(
        "emu-max-conns=6 emu-max-pending=3 emu-hello-timeout-ms=600000",
        Policy::default(),
    );
    e.wait_started();
    // Past 3 connections without HELLO, the oldest makes room.
    let mut silent: Vec<Peer> = (0..3).map(|_| Peer::connect(&e.ep)).collect();
    let _newer = Peer::connect(&e.ep);
    silent[0].expect_closed("the oldest connection without HELLO");
    // A peer saying HELLO always gets in while some have not said it...
    let mut peers: Vec<Peer> = (0..3).map(|_| Peer::hello(&e.ep)).collect();
    // ...and 6 connections are the most: a newcomer takes the place of one
    // without HELLO, never of a peer.
    for _ in 0..3 {
        peers.push(Peer::hello(&e.ep));
    }
    let mut refused = Peer::connect(&e.ep);
    // The close may come first and fail the write: what matters is the close.
    let _ = std::io::Write::write_all(&mut refused.s, &hello_frame());
    let got = refused.try_recv().map(|(t, _)| t);
    assert!(
        matches!(&got, Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof
            || e.kind() == std::io::ErrorKind::ConnectionReset),
        "a connection past the cap: {got:?}"
    );
    for p in &mut peers {
        let r = p.first(PEER, "inet:tcp:10.0.0.1@3000");
        assert!(r.link > 0, "{r:?}");
    }
    // The first connection shed is reported at once, the rest at most
    // every 10 s.
    let logs = e.logs();
    assert!(
        logs.iter()
            .any(|(_, t)| t.contains("1 without HELLO, the oldest, to make room (at most 3)")),
        "{logs:?}"
    );
}
