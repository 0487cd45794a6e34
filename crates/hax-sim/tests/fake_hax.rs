//! `SimProcess` against a scripted hax that speaks the protocol through the
//! crate's own codec: every step of the peer's behaviour, checked frame by
//! frame.

use std::time::Duration;

use hax_core::{
    Cookie, FailvecRep, Fid, FidType, HaMsg, HaMsgData, HaNote, HaState, Nvec, NvecKind,
    ProcessEventKind, ServiceEventKind, Uint128,
};
use hax_sim::wire::{split_frame, HEADER_LEN};
use hax_sim::{
    Confd, Control, Delivery, EpRep, EpReq, HaxFrame, LinkOutcome, LinkState, NvecReplyError,
    PeerFrame, SimConfig, SimError, SimProcess, Violation,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;

const T: Duration = Duration::from_secs(5);
const COOKIE: Uint128 = Uint128::new(0xc0c0, 1);

struct Fake {
    listener: TcpListener,
    ep: String,
}

struct Conn {
    r: Box<dyn AsyncRead + Unpin + Send>,
    w: Box<dyn AsyncWrite + Unpin + Send>,
    buf: Vec<u8>,
}

impl Fake {
    async fn new() -> Fake {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        Fake {
            listener,
            ep: format!("inet:tcp:127.0.0.1@{port}"),
        }
    }

    async fn accept(&self) -> Conn {
        let (s, _) = tokio::time::timeout(T, self.listener.accept())
            .await
            .expect("a connection")
            .unwrap();
        let (r, w) = s.into_split();
        let mut c = Conn {
            r: Box::new(r),
            w: Box::new(w),
            buf: Vec::new(),
        };
        assert_eq!(c.recv().await, PeerFrame::Hello);
        c.send(HaxFrame::Hello).await;
        c
    }
}

impl Conn {
    async fn try_recv(&mut self) -> Option<PeerFrame> {
        loop {
            if let Some((frame, used)) = split_frame(&self.buf).unwrap() {
                let f = PeerFrame::decode(frame).unwrap();
                self.buf.drain(..used);
                return Some(f);
            }
            let n = tokio::time::timeout(T, self.r.read_buf(&mut self.buf))
                .await
                .expect("a frame in time")
                .unwrap();
            if n == 0 {
                return None;
            }
        }
    }

    async fn recv(&mut self) -> PeerFrame {
        self.try_recv().await.expect("a frame, not EOF")
    }

    async fn recv_req(&mut self) -> EpReq {
        match self.recv().await {
            PeerFrame::EpReq(r) => r,
            f => panic!("expected EP_REQ, got {f:?}"),
        }
    }

    /// The next MSG, skipping DELIVERED frames.
    async fn recv_msg(&mut self) -> (u64, u64, HaMsg) {
        loop {
            match self.recv().await {
                PeerFrame::Msg { link_id, tag, msg } => return (link_id, tag, msg),
                PeerFrame::Delivered { .. } | PeerFrame::Ctl { .. } => {}
                f => panic!("expected MSG, got {f:?}"),
            }
        }
    }

    async fn send(&mut self, f: HaxFrame) {
        let mut out = Vec::new();
        f.encode(&mut out).unwrap();
        self.w.write_all(&out).await.unwrap();
    }

    async fn send_raw(&mut self, b: &[u8]) {
        self.w.write_all(b).await.unwrap();
    }

    async fn expect_eof(&mut self) {
        assert_eq!(self.try_recv().await, None);
    }
}

fn rep(control: Control, link_id: u64, out: u64, inn: u64, flags: u8) -> HaxFrame {
    HaxFrame::EpRep(EpRep {
        control,
        do_reconnect: flags & 1 != 0,
        disconnected_previously: flags & 2 != 0,
        req_id: Uint128::new(0, 1),
        cookie: COOKIE,
        link_id,
        next_out_tag: out,
        next_in_tag: inn,
        quorum: 1,
        rm_fid: Fid::typed(FidType::Service, 1, 1),
        rm_ep: "inet:tcp:127.0.0.1@3001".into(),
        confds: vec![Confd {
            fid: Fid::typed(FidType::Service, 1, 2),
            ep: "inet:tcp:127.0.0.1@3002".into(),
        }],
    })
}

fn pfid(k: u64) -> Fid {
    Fid::typed(FidType::Process, 1, k)
}

fn sdev(k: u64) -> Fid {
    Fid::typed(FidType::Sdev, 1, k)
}

fn set(id: u64, notes: Vec<HaNote>) -> HaMsg {
    HaMsg::new(HaMsgData::Nvec(Nvec {
        kind: NvecKind::Set,
        id_of_get: id,
        ignore_same_state: id == 0,
        notes,
    }))
}

/// A process connected through a CONSUME on its first request, link 5.
async fn connected(fake: &Fake, delivery: Delivery) -> (SimProcess, Conn) {
    let mut cfg = SimConfig::new(fake.ep.clone(), pfid(1));
    cfg.delivery = delivery;
    cfg.timeout = T;
    let p = SimProcess::new(cfg).unwrap();
    let (r, c) = tokio::join!(p.start(), async {
        let mut c = fake.accept().await;
        let req = c.recv_req().await;
        assert!(req.first_request);
        c.send(rep(Control::Consume, 5, 2, 1, 0)).await;
        c
    });
    assert_eq!(r.unwrap().outcome, LinkOutcome::New);
    (p, c)
}

#[tokio::test]
async fn first_request_with_query_then_consume() {
    let fake = Fake::new().await;
    let mut cfg = SimConfig::new(fake.ep.clone(), pfid(3));
    cfg.timeout = T;
    let p = SimProcess::new(cfg.clone()).unwrap();
    let (r, c) = tokio::join!(p.start(), async {
        let mut c = fake.accept().await;
        let req = c.recv_req().await;
        assert!(req.first_request);
        assert_eq!(req.process_fid, pfid(3));
        assert_eq!(req.pid, cfg.pid);
        assert_eq!(req.endpoint, cfg.endpoint);
        assert_eq!(req.git_rev_id, cfg.git_rev);
        assert_eq!(req.cookie_expected, Uint128::default());
        assert_eq!((req.link_id, req.next_out_tag, req.next_in_tag), (0, 0, 0));
        c.send(rep(Control::Query, 5, 2, 1, 0)).await;
        // Asked again at once, with the link parameters of the reply.
        let again = c.recv_req().await;
        assert!(!again.first_request);
        assert!(again.generation > req.generation);
        assert_eq!(again.cookie_expected, COOKIE);
        assert_eq!(
            (again.link_id, again.next_out_tag, again.next_in_tag),
            (5, 2, 1)
        );
        c.send(rep(Control::Query, 5, 2, 1, 0)).await;
        assert!(!c.recv_req().await.first_request);
        c.send(rep(Control::Consume, 5, 2, 1, 0)).await;
        c
    });
    let mut c = c;
    let ep = r.unwrap();
    assert_eq!(ep.queries, 2);
    assert_eq!(ep.outcome, LinkOutcome::New);
    assert_eq!(ep.reply.confds.len(), 1);
    assert!(ep.warnings().is_empty(), "{:?}", ep.warnings());
    assert_eq!(p.state(), LinkState::Up);
    assert_eq!(p.link_id(), 5);
    assert_eq!(p.send_process_event(ProcessEventKind::Started).unwrap(), 2);
    assert_eq!(p.stats().queries, 2);
    // The first message carries tag 2.
    let (link, tag, msg) = c.recv_msg().await;
    assert_eq!((link, tag), (5, 2));
    assert!(matches!(msg.data, HaMsgData::ProcessEvent(e) if e.event == ProcessEventKind::Started));
    assert_eq!(p.unconfirmed(), vec![2]);
}

#[tokio::test]
async fn sends_are_pipelined_and_confirmed() {
    let fake = Fake::new().await;
    let (p, mut c) = connected(&fake, Delivery::Auto).await;
    let t1 = p.send_process_event(ProcessEventKind::Starting).unwrap();
    let tags = p.send_service_events(ServiceEventKind::Started).unwrap();
    let t3 = p.send_process_event(ProcessEventKind::Started).unwrap();
    assert_eq!((t1, tags.as_slice(), t3), (2, &[4][..], 6));
    for want in [2, 4, 6] {
        let (_, tag, msg) = c.recv_msg().await;
        assert_eq!(tag, want);
        if tag == 4 {
            assert_eq!(msg.source_process, pfid(1));
            assert_eq!(msg.fid, p.config().services[0].0);
        }
    }
    assert_eq!(p.unconfirmed(), vec![2, 4, 6]);
    c.send(HaxFrame::Delivered { link_id: 5, tag: 4 }).await;
    p.wait_confirmed(4, T).await.unwrap();
    assert_eq!(p.unconfirmed(), vec![2, 6]);
    c.send(HaxFrame::Delivered { link_id: 5, tag: 2 }).await;
    c.send(HaxFrame::Delivered { link_id: 5, tag: 6 }).await;
    c.send(HaxFrame::Delivered { link_id: 5, tag: 6 }).await;
    p.wait_all_confirmed(T).await.unwrap();
    let s = p.stats();
    assert_eq!((s.sent, s.confirmed), (3, 3));
    // A DELIVERED for a tag never sent is a violation.
    c.send(HaxFrame::Delivered {
        link_id: 5,
        tag: 100,
    })
    .await;
    c.send(HaxFrame::Delivered { link_id: 9, tag: 2 }).await;
    p.wait_violations(2, T).await.unwrap();
    assert_eq!(p.violations()[0], Violation::DeliveredUnsent(100));
    assert!(matches!(
        p.violations()[1],
        Violation::WrongLink { link_id: 9, .. }
    ));
    assert_eq!(p.stats().confirmed_again, 1);
}

#[tokio::test]
async fn send_many_keeps_its_window() {
    let fake = Fake::new().await;
    let mut cfg = SimConfig::new(fake.ep.clone(), pfid(1));
    cfg.window = 16;
    let p = SimProcess::new(cfg).unwrap();
    let (r, mut c) = tokio::join!(p.start(), async {
        let mut c = fake.accept().await;
        c.recv_req().await;
        c.send(rep(Control::Consume, 5, 2, 1, 0)).await;
        c
    });
    r.unwrap();
    let msgs: Vec<HaMsg> = (0..1000)
        .map(|_| p.process_event(ProcessEventKind::Started))
        .collect();
    let (sent, ()) = tokio::join!(p.send_many(msgs), async {
        let mut want = 2;
        for _ in 0..1000 {
            let (_, tag, _) = c.recv_msg().await;
            assert_eq!(tag, want);
            want += 2;
            c.send(HaxFrame::Delivered { link_id: 5, tag }).await;
        }
    });
    assert_eq!(sent.unwrap(), (1000, Some(2000)));
    p.wait_all_confirmed(T).await.unwrap();
    assert_eq!(p.stats().confirmed, 1000);
}

#[tokio::test]
async fn receives_acknowledges_and_drops_resends() {
    let fake = Fake::new().await;
    let (p, mut c) = connected(&fake, Delivery::Auto).await;
    let note = HaNote::new(pfid(2), HaState::Failed);
    c.send(HaxFrame::Msg {
        link_id: 5,
        tag: 1,
        msg: set(0, vec![note]),
    })
    .await;
    assert_eq!(c.recv().await, PeerFrame::Delivered { link_id: 5, tag: 1 });
    p.wait_received(1, T).await.unwrap();
    // A resend of tag 1 is dropped and confirmed again.
    c.send(HaxFrame::Msg {
        link_id: 5,
        tag: 1,
        msg: set(0, vec![note]),
    })
    .await;
    assert_eq!(c.recv().await, PeerFrame::Delivered { link_id: 5, tag: 1 });
    // A tag beyond the next one is dropped without a word.
    c.send(HaxFrame::Msg {
        link_id: 5,
        tag: 5,
        msg: set(0, vec![note]),
    })
    .await;
    c.send(HaxFrame::Msg {
        link_id: 5,
        tag: 3,
        msg: set(0, vec![note]),
    })
    .await;
    assert_eq!(c.recv().await, PeerFrame::Delivered { link_id: 5, tag: 3 });
    p.wait_received(2, T).await.unwrap();
    let got = p.received();
    assert_eq!(got.iter().map(|r| r.tag).collect::<Vec<_>>(), [1, 3]);
    assert_eq!(got[0].msg, set(0, vec![note]));
    assert!(got[0].at <= got[1].at);
    assert_eq!(p.take_received().len(), 2);
    assert!(p.received().is_empty());
    assert_eq!(p.received_count(), 2);
    let s = p.stats();
    assert_eq!((s.received, s.duplicates, s.out_of_order), (2, 1, 1));
    assert!(p.violations().is_empty());
    // A SET a real m0d asserts on is recorded as a violation (and delivered).
    c.send(HaxFrame::Msg {
        link_id: 5,
        tag: 5,
        msg: set(0, vec![HaNote::new(pfid(2), HaState::Unknown)]),
    })
    .await;
    assert_eq!(c.recv().await, PeerFrame::Delivered { link_id: 5, tag: 5 });
    assert!(matches!(
        p.violations()[..],
        [Violation::BadSet { tag: 5, .. }]
    ));
}

#[tokio::test]
async fn manual_and_never_delivery() {
    let fake = Fake::new().await;
    let (p, mut c) = connected(&fake, Delivery::Manual).await;
    let note = HaNote::new(pfid(2), HaState::Online);
    for tag in [1, 3, 5] {
        c.send(HaxFrame::Msg {
            link_id: 5,
            tag,
            msg: set(0, vec![note]),
        })
        .await;
    }
    p.wait_received(3, T).await.unwrap();
    assert_eq!(p.undelivered(), vec![1, 3, 5]);
    // A resend of an undelivered message is not confirmed.
    c.send(HaxFrame::Msg {
        link_id: 5,
        tag: 3,
        msg: set(0, vec![note]),
    })
    .await;
    p.deliver(3).unwrap();
    assert_eq!(c.recv().await, PeerFrame::Delivered { link_id: 5, tag: 3 });
    assert!(matches!(p.deliver(3), Err(SimError::UnknownTag(3))));
    assert_eq!(p.deliver_all(), 2);
    assert_eq!(c.recv().await, PeerFrame::Delivered { link_id: 5, tag: 1 });
    assert_eq!(c.recv().await, PeerFrame::Delivered { link_id: 5, tag: 5 });
    p.set_delivery(Delivery::Never);
    c.send(HaxFrame::Msg {
        link_id: 5,
        tag: 7,
        msg: set(0, vec![note]),
    })
    .await;
    p.wait_received(4, T).await.unwrap();
    assert_eq!(p.undelivered(), vec![7]);
}

#[tokio::test]
async fn nvec_get_replies_are_checked() {
    let fake = Fake::new().await;
    let (p, mut c) = connected(&fake, Delivery::Auto).await;
    let fids = [sdev(1), sdev(2)];
    // Right answer.
    let (r, ()) = tokio::join!(p.nvec_get(&fids), async {
        let (_, tag, msg) = c.recv_msg().await;
        assert_eq!(tag, 2);
        let HaMsgData::Nvec(n) = msg.data else {
            panic!("{msg:?}")
        };
        assert_eq!((n.kind, n.id_of_get), (NvecKind::Get, 100));
        assert!(n.notes.iter().all(|n| n.state == HaState::Unknown));
        let notes = fids
            .iter()
            .map(|f| HaNote::new(*f, HaState::Online))
            .collect();
        c.send(HaxFrame::Msg {
            link_id: 5,
            tag: 1,
            msg: set(100, notes),
        })
        .await;
        assert_eq!(c.recv().await, PeerFrame::Delivered { link_id: 5, tag: 1 });
    });
    assert_eq!(r.unwrap().len(), 2);
    // Fids out of order.
    let (r, ()) = tokio::join!(p.nvec_get(&fids), async {
        let (_, _, msg) = c.recv_msg().await;
        let HaMsgData::Nvec(n) = msg.data else {
            panic!()
        };
        assert_eq!(n.id_of_get, 101);
        let notes = vec![
            HaNote::new(sdev(2), HaState::Online),
            HaNote::new(sdev(1), HaState::Online),
        ];
        c.send(HaxFrame::Msg {
            link_id: 5,
            tag: 3,
            msg: set(101, notes),
        })
        .await;
    });
    assert!(matches!(
        r,
        Err(SimError::NvecReply(NvecReplyError::Fid {
            id: 101,
            index: 0,
            ..
        }))
    ));
    // Wrong count, and an UNKNOWN state.
    for (id, tag, notes, ok) in [
        (102, 5, vec![HaNote::new(sdev(1), HaState::Online)], false),
        (
            103,
            7,
            vec![
                HaNote::new(sdev(1), HaState::Online),
                HaNote::new(sdev(2), HaState::Unknown),
            ],
            false,
        ),
    ] {
        let (r, ()) = tokio::join!(p.nvec_get(&fids), async {
            c.recv_msg().await;
            c.send(HaxFrame::Msg {
                link_id: 5,
                tag,
                msg: set(id, notes),
            })
            .await;
        });
        assert_eq!(r.is_ok(), ok);
    }
    // An unknown id fails the oldest outstanding GET.
    let (r, ()) = tokio::join!(p.nvec_get(&fids), async {
        c.recv_msg().await;
        let notes = fids
            .iter()
            .map(|f| HaNote::new(*f, HaState::Online))
            .collect();
        c.send(HaxFrame::Msg {
            link_id: 5,
            tag: 9,
            msg: set(77, notes),
        })
        .await;
    });
    assert!(matches!(
        r,
        Err(SimError::NvecReply(NvecReplyError::UnknownId(77)))
    ));
    assert_eq!(p.violations().len(), 4);
}

#[tokio::test]
async fn failvec_and_keepalive() {
    let fake = Fake::new().await;
    let (p, mut c) = connected(&fake, Delivery::Auto).await;
    let pool = Fid::typed(FidType::Pool, 1, 1);
    let (r, ()) = tokio::join!(p.failvec(pool), async {
        let (_, _, msg) = c.recv_msg().await;
        let HaMsgData::FailvecReq(q) = msg.data else {
            panic!()
        };
        assert_eq!(q.pool, pool);
        // Hare answers with another pool fid; only the cookie must match.
        let rep = FailvecRep {
            pool: Fid::typed(FidType::Pool, 2, 9),
            cookie: q.cookie,
            notes: vec![],
        };
        c.send(HaxFrame::Msg {
            link_id: 5,
            tag: 1,
            msg: HaMsg::new(HaMsgData::FailvecRep(rep)),
        })
        .await;
    });
    assert_eq!(r.unwrap().notes.len(), 0);
    let (r, ()) = tokio::join!(p.failvec(pool), async {
        let (_, _, msg) = c.recv_msg().await;
        let HaMsgData::FailvecReq(q) = msg.data else {
            panic!()
        };
        let cookie = Cookie {
            addr: q.cookie.addr + 1,
            generation: q.cookie.generation,
        };
        let rep = FailvecRep {
            pool,
            cookie,
            notes: vec![],
        };
        c.send(HaxFrame::Msg {
            link_id: 5,
            tag: 3,
            msg: HaMsg::new(HaMsgData::FailvecRep(rep)),
        })
        .await;
    });
    assert!(matches!(r, Err(SimError::FailvecCookie { .. })));
    let (r, ()) = tokio::join!(p.keepalive(), async {
        let (_, _, msg) = c.recv_msg().await;
        let HaMsgData::KeepaliveReq { id } = msg.data else {
            panic!()
        };
        let msg = HaMsg::new(HaMsgData::KeepaliveRep { id, counter: 42 });
        c.send(HaxFrame::Msg {
            link_id: 5,
            tag: 5,
            msg,
        })
        .await;
    });
    assert_eq!(r.unwrap(), 42);
    // A keepalive request from hax is answered.
    let id = Uint128::new(7, 7);
    c.send(HaxFrame::Msg {
        link_id: 5,
        tag: 7,
        msg: HaMsg::new(HaMsgData::KeepaliveReq { id }),
    })
    .await;
    let mut answered = false;
    for _ in 0..6 {
        match c.recv().await {
            PeerFrame::Msg { msg, .. } => {
                assert!(matches!(msg.data, HaMsgData::KeepaliveRep { id: i, .. } if i == id));
                answered = true;
                break;
            }
            PeerFrame::Delivered { .. } | PeerFrame::Ctl { .. } => {}
            f => panic!("{f:?}"),
        }
    }
    assert!(answered);
}

#[tokio::test]
async fn vanish_and_reattach_resends_unconfirmed() {
    let fake = Fake::new().await;
    let (p, mut c) = connected(&fake, Delivery::Auto).await;
    for _ in 0..3 {
        p.send_process_event(ProcessEventKind::Started).unwrap();
    }
    for _ in 0..3 {
        c.recv_msg().await;
    }
    c.send(HaxFrame::Delivered { link_id: 5, tag: 2 }).await;
    p.wait_confirmed(2, T).await.unwrap();
    c.send(HaxFrame::Msg {
        link_id: 5,
        tag: 1,
        msg: set(0, vec![HaNote::new(pfid(2), HaState::Online)]),
    })
    .await;
    assert_eq!(c.recv().await, PeerFrame::Delivered { link_id: 5, tag: 1 });
    p.vanish();
    assert_eq!(p.state(), LinkState::Disconnected);
    c.expect_eof().await;
    // Sent while away: kept, written after attaching.
    assert_eq!(p.send_process_event(ProcessEventKind::Started).unwrap(), 8);
    let (r, ()) = tokio::join!(p.reattach(), async {
        let mut c = fake.accept().await;
        let req = c.recv_req().await;
        assert!(!req.first_request);
        assert_eq!(req.cookie_expected, COOKIE);
        assert_eq!((req.link_id, req.next_out_tag, req.next_in_tag), (5, 4, 3));
        c.send(rep(Control::Consume, 5, 4, 3, 0)).await;
        for want in [4, 6, 8] {
            let (link, tag, _) = c.recv_msg().await;
            assert_eq!((link, tag), (5, want));
        }
        // hax resends its unconfirmed message 1: confirmed again.
        c.send(HaxFrame::Msg {
            link_id: 5,
            tag: 1,
            msg: set(0, vec![HaNote::new(pfid(2), HaState::Online)]),
        })
        .await;
        assert_eq!(c.recv().await, PeerFrame::Delivered { link_id: 5, tag: 1 });
        for tag in [4, 6, 8] {
            c.send(HaxFrame::Delivered { link_id: 5, tag }).await;
        }
    });
    let ep = r.unwrap();
    assert_eq!(ep.outcome, LinkOutcome::Reused);
    p.wait_all_confirmed(T).await.unwrap();
    let s = p.stats();
    assert_eq!((s.resent, s.duplicates, s.received), (3, 1, 1));
    assert_eq!(p.received_count(), 1);
}

#[tokio::test]
async fn hax_restart_gives_a_new_link_whose_tags_continue() {
    let fake = Fake::new().await;
    let (p, mut c) = connected(&fake, Delivery::Auto).await;
    p.send_process_event(ProcessEventKind::Started).unwrap();
    c.recv_msg().await;
    drop(c); // hax goes away
    p.wait_state(LinkState::Disconnected, T).await.unwrap();
    let (r, ()) = tokio::join!(p.reattach(), async {
        let mut c = fake.accept().await;
        let req = c.recv_req().await;
        assert_eq!((req.link_id, req.next_out_tag, req.next_in_tag), (5, 2, 1));
        let mut r = rep(Control::Consume, 9, 2, 1, 1);
        if let HaxFrame::EpRep(r) = &mut r {
            r.cookie = Uint128::new(0xc0c0, 2);
        }
        c.send(r).await;
        assert_eq!(c.recv_msg().await.1, 2);
        c.send(HaxFrame::Delivered { link_id: 9, tag: 2 }).await;
    });
    assert_eq!(r.unwrap().outcome, LinkOutcome::Reconnected);
    assert_eq!(p.link_id(), 9);
    p.wait_all_confirmed(T).await.unwrap();
}

#[tokio::test]
async fn nolink_then_fenced() {
    let fake = Fake::new().await;
    let (p, mut c) = connected(&fake, Delivery::Auto).await;
    let tag = p.send_process_event(ProcessEventKind::Started).unwrap();
    c.recv_msg().await;
    let (fenced, ()) = tokio::join!(p.wait_fenced(T), async {
        c.send(HaxFrame::NoLink { link_id: 5 }).await;
        let req = c.recv_req().await;
        assert!(!req.first_request);
        assert_eq!(req.link_id, 5);
        assert_eq!(req.cookie_expected, COOKIE);
        c.send(rep(Control::Consume, 0, 0, 0, 2)).await;
        // A fenced m0d dies: its connection closes.
        c.expect_eof().await;
    });
    assert!(fenced.unwrap().disconnected_previously);
    assert_eq!(p.state(), LinkState::Fenced);
    assert!(matches!(
        p.send_process_event(ProcessEventKind::Started),
        Err(SimError::Fenced)
    ));
    assert!(matches!(
        p.wait_confirmed(tag, T).await,
        Err(SimError::Fenced)
    ));
    assert!(matches!(p.reattach().await, Err(SimError::Fenced)));
    // A restart is a new process with the same fid: a first request again.
    let (r, ()) = tokio::join!(p.restart(), async {
        let mut c = fake.accept().await;
        let req = c.recv_req().await;
        assert!(req.first_request);
        assert_eq!(req.process_fid, pfid(1));
        assert_eq!(req.cookie_expected, Uint128::default());
        c.send(rep(Control::Consume, 6, 2, 1, 0)).await;
    });
    assert_eq!(r.unwrap().outcome, LinkOutcome::New);
    assert_eq!(p.link_id(), 6);
    assert_eq!(p.stats().lost, 1);
    assert!(p.violations().is_empty());
}

#[tokio::test]
async fn bad_frames_drop_the_connection() {
    let fake = Fake::new().await;
    let (p, mut c) = connected(&fake, Delivery::Auto).await;
    // A note state of 8.
    let mut b = Vec::new();
    HaxFrame::Msg {
        link_id: 5,
        tag: 1,
        msg: set(0, vec![HaNote::new(pfid(2), HaState::Online)]),
    }
    .encode(&mut b)
    .unwrap();
    let at = b.len() - 4;
    b[at] = 8;
    c.send_raw(&b).await;
    c.expect_eof().await;
    p.wait_state(LinkState::Disconnected, T).await.unwrap();
    assert!(matches!(
        p.violations()[..],
        [Violation::BadFrame(hax_sim::WireError::BadState(8))]
    ));
    assert_eq!(p.received_count(), 0);
    // A frame before HELLO.
    let p2 = SimProcess::new(SimConfig::new(fake.ep.clone(), pfid(2))).unwrap();
    let (r, ()) = tokio::join!(p2.start(), async {
        let (s, _) = fake.listener.accept().await.unwrap();
        let (r, w) = s.into_split();
        let mut c = Conn {
            r: Box::new(r),
            w: Box::new(w),
            buf: Vec::new(),
        };
        assert_eq!(c.recv().await, PeerFrame::Hello);
        c.recv_req().await;
        c.send(rep(Control::Consume, 5, 2, 1, 0)).await;
        c.expect_eof().await;
    });
    assert!(matches!(r, Err(SimError::ConnectionLost(_))), "{r:?}");
    assert_eq!(p2.violations(), vec![Violation::BeforeHello("EP_REP")]);
    // An oversized length header.
    let (p3, mut c3) = connected(&fake, Delivery::Auto).await;
    c3.send_raw(&[1, 0, 1, 0, 0x83]).await;
    c3.expect_eof().await;
    p3.wait_state(LinkState::Disconnected, T).await.unwrap();
    assert_eq!(
        p3.violations(),
        vec![Violation::BadFrame(hax_sim::WireError::BadLength(65537))]
    );
    let _ = HEADER_LEN;
}

#[tokio::test]
async fn a_peer_that_stops_reading() {
    let fake = Fake::new().await;
    let (p, mut c) = connected(&fake, Delivery::Auto).await;
    p.stop_reading();
    let note = HaNote::new(pfid(2), HaState::Online);
    c.send(HaxFrame::Msg {
        link_id: 5,
        tag: 1,
        msg: set(0, vec![note]),
    })
    .await;
    // It still writes.
    p.send_process_event(ProcessEventKind::Started).unwrap();
    assert_eq!(c.recv_msg().await.1, 2);
    assert_eq!(p.received_count(), 0);
    p.resume_reading();
    assert_eq!(c.recv().await, PeerFrame::Delivered { link_id: 5, tag: 1 });
    p.wait_received(1, T).await.unwrap();
}

#[tokio::test]
async fn timeouts_are_errors() {
    let fake = Fake::new().await;
    let (p, _c) = connected(&fake, Delivery::Auto).await;
    let r = p.wait_received(1, Duration::from_millis(20)).await;
    assert!(matches!(r, Err(SimError::Timeout { .. })), "{r:?}");
    let tag = p.send_process_event(ProcessEventKind::Started).unwrap();
    assert!(matches!(
        p.wait_confirmed(tag, Duration::from_millis(20)).await,
        Err(SimError::Timeout { .. })
    ));
}

#[cfg(unix)]
#[tokio::test]
async fn unix_socket_endpoint() {
    let dir = std::env::temp_dir().join(format!("hax-sim-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("ha.sock");
    let _ = std::fs::remove_file(&path);
    let listener = tokio::net::UnixListener::bind(&path).unwrap();
    let p = SimProcess::new(SimConfig::new(format!("unix:{}", path.display()), pfid(1))).unwrap();
    let (r, ()) = tokio::join!(p.start(), async {
        let (s, _) = listener.accept().await.unwrap();
        let (r, w) = s.into_split();
        let mut c = Conn {
            r: Box::new(r),
            w: Box::new(w),
            buf: Vec::new(),
        };
        assert_eq!(c.recv().await, PeerFrame::Hello);
        c.send(HaxFrame::Hello).await;
        c.recv_req().await;
        c.send(rep(Control::Consume, 1, 2, 1, 0)).await;
    });
    r.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn connect_errors() {
    let fake = Fake::new().await;
    let port = fake.listener.local_addr().unwrap().port();
    drop(fake);
    let r = SimProcess::connect(SimConfig::new(
        format!("inet:tcp:127.0.0.1@{port}"),
        pfid(1),
    ))
    .await;
    assert!(matches!(r, Err(SimError::Connect { .. })), "{r:?}");
    let r = SimProcess::connect(SimConfig::new("nonsense", pfid(1))).await;
    assert!(matches!(r, Err(SimError::Endpoint(_))), "{r:?}");
}
