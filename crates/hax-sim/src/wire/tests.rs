use super::*;
use hax_core::FidType;
use proptest::prelude::*;

fn fid(t: FidType, k: u64) -> Fid {
    Fid::typed(t, 1, k)
}

fn base(data: HaMsgData) -> HaMsg {
    HaMsg {
        fid: fid(FidType::Process, 7),
        source_process: fid(FidType::Process, 8),
        source_service: fid(FidType::Service, 9),
        time_ns: 1_700_000_000_123_456_789,
        epoch: 42,
        data,
    }
}

fn notes(n: usize) -> Vec<HaNote> {
    (0..n)
        .map(|i| HaNote::new(fid(FidType::Sdev, i as u64), HaState::ALL[i % 8]))
        .collect()
}

/// One message of every type, with values at the edges of their ranges.
fn every_msg() -> Vec<HaMsg> {
    vec![
        base(HaMsgData::StobIoq(StobIoqError {
            conf_sdev: fid(FidType::Sdev, 1),
            stob_domain: Fid::new(u64::MAX, 0),
            stob_fid: Fid::new(0, u64::MAX),
            fd: -1,
            opcode: i64::MIN,
            rc: -5,
            offset: u64::MAX,
            size: 4096,
            bshift: 12,
        })),
        base(HaMsgData::Nvec(Nvec {
            kind: NvecKind::Set,
            id_of_get: 0,
            ignore_same_state: true,
            notes: notes(3),
        })),
        base(HaMsgData::Nvec(Nvec {
            kind: NvecKind::Get,
            id_of_get: 100,
            ignore_same_state: false,
            notes: vec![HaNote::new(fid(FidType::Process, 1), HaState::Unknown)],
        })),
        base(HaMsgData::Nvec(Nvec {
            kind: NvecKind::Set,
            id_of_get: 101,
            ignore_same_state: false,
            notes: notes(NOTES_MAX),
        })),
        base(HaMsgData::Nvec(Nvec {
            kind: NvecKind::Set,
            id_of_get: 0,
            ignore_same_state: false,
            notes: vec![],
        })),
        base(HaMsgData::FailvecReq(FailvecReq {
            pool: fid(FidType::Pool, 2),
            cookie: Cookie {
                addr: 0xdead_beef,
                generation: 3,
            },
        })),
        base(HaMsgData::FailvecRep(FailvecRep {
            pool: fid(FidType::Pool, 2),
            cookie: Cookie {
                addr: 0xdead_beef,
                generation: 3,
            },
            notes: vec![],
        })),
        base(HaMsgData::FailvecRep(FailvecRep {
            pool: fid(FidType::Pool, 2),
            cookie: Cookie::default(),
            notes: notes(NOTES_MAX),
        })),
        base(HaMsgData::KeepaliveReq {
            id: Uint128::new(1, u64::MAX),
        }),
        base(HaMsgData::KeepaliveRep {
            id: Uint128::new(1, 2),
            counter: 77,
        }),
        base(HaMsgData::ProcessEvent(ProcessEvent {
            event: ProcessEventKind::DtmRecovered,
            process_type: ProcessType::M0d,
            pid: 4242,
        })),
        base(HaMsgData::ServiceEvent(ServiceEvent {
            event: ServiceEventKind::Failed,
            service_type: ServiceType::Dtm0,
            pid: 4242,
        })),
        base(HaMsgData::RpcEvent(RpcEvent {
            attempts: 3,
            state: HaState::Transient,
        })),
        base(HaMsgData::BeIoErr(BeIoErr {
            errcode: 5,
            location: BeLocation::Segment2,
            opcode: 255,
        })),
        base(HaMsgData::SnsErr(SnsErr {
            errcode: 28,
            opcode: CmOp::RebalanceAbort,
        })),
    ]
}

fn ep_req(first: bool, endpoint: &str, rev: &str) -> EpReq {
    EpReq {
        first_request: first,
        generation: 3,
        process_fid: fid(FidType::Process, 5),
        pid: 1234,
        cookie_expected: Uint128::new(9, 10),
        link_id: 11,
        next_out_tag: 12,
        next_in_tag: 13,
        endpoint: endpoint.into(),
        git_rev_id: rev.into(),
    }
}

fn ep_rep(control: Control, dr: bool, dp: bool, confds: usize) -> EpRep {
    EpRep {
        control,
        do_reconnect: dr,
        disconnected_previously: dp,
        req_id: Uint128::new(0, 4),
        cookie: Uint128::new(0xc0, 0x0c),
        link_id: 3,
        next_out_tag: 2,
        next_in_tag: 1,
        quorum: 2,
        rm_fid: fid(FidType::Service, 1),
        rm_ep: "inet:tcp:127.0.0.1@3001".into(),
        confds: (0..confds)
            .map(|i| Confd {
                fid: fid(FidType::Service, i as u64),
                ep: format!("inet:tcp:127.0.0.1@{}", 3000 + i),
            })
            .collect(),
    }
}

fn all_peer_frames() -> Vec<PeerFrame> {
    let mut v = vec![
        PeerFrame::Hello,
        PeerFrame::EpReq(ep_req(true, "inet:tcp:127.0.0.1@21001", "abc123")),
        PeerFrame::EpReq(ep_req(false, "", "")),
        PeerFrame::EpReq(ep_req(false, &"é".repeat(127), &"x".repeat(255))),
        PeerFrame::Delivered {
            link_id: 1,
            tag: u64::MAX,
        },
    ];
    for (i, msg) in every_msg().into_iter().enumerate() {
        v.push(PeerFrame::Msg {
            link_id: 5,
            tag: 2 * i as u64 + 2,
            msg,
        });
    }
    v
}

fn all_hax_frames() -> Vec<HaxFrame> {
    let mut v = vec![
        HaxFrame::Hello,
        HaxFrame::EpRep(ep_rep(Control::Consume, false, false, 3)),
        HaxFrame::EpRep(ep_rep(Control::Query, true, false, 0)),
        HaxFrame::EpRep(ep_rep(Control::Consume, false, true, 1)),
        HaxFrame::EpRep(ep_rep(Control::Query, true, true, CONFDS_MAX)),
        HaxFrame::Delivered { link_id: 1, tag: 2 },
        HaxFrame::NoLink { link_id: 9 },
    ];
    for (i, msg) in every_msg().into_iter().enumerate() {
        v.push(HaxFrame::Msg {
            link_id: 5,
            tag: 2 * i as u64 + 1,
            msg,
        });
    }
    v
}

fn enc_peer(f: &PeerFrame) -> Vec<u8> {
    let mut out = Vec::new();
    f.encode(&mut out).expect("encodes");
    out
}

fn enc_hax(f: &HaxFrame) -> Vec<u8> {
    let mut out = Vec::new();
    f.encode(&mut out).expect("encodes");
    out
}

/// The `type + body` bytes of an encoded frame, after checking its header.
fn content(bytes: &[u8]) -> &[u8] {
    let (frame, used) = split_frame(bytes).expect("valid header").expect("complete");
    assert_eq!(used, bytes.len());
    frame
}

fn dec_peer(bytes: &[u8]) -> Result<PeerFrame, WireError> {
    PeerFrame::decode(&bytes[HEADER_LEN..])
}

fn dec_hax(bytes: &[u8]) -> Result<HaxFrame, WireError> {
    HaxFrame::decode(&bytes[HEADER_LEN..])
}

#[test]
fn every_peer_frame_round_trips() {
    for f in all_peer_frames() {
        let bytes = enc_peer(&f);
        assert_eq!(PeerFrame::decode(content(&bytes)).as_ref(), Ok(&f), "{f:?}");
    }
}

#[test]
fn every_hax_frame_round_trips() {
    for f in all_hax_frames() {
        let bytes = enc_hax(&f);
        assert_eq!(HaxFrame::decode(content(&bytes)).as_ref(), Ok(&f), "{f:?}");
    }
}

#[test]
fn every_msg_type_is_covered() {
    let mut types: Vec<u32> = every_msg().iter().map(HaMsg::type_id).collect();
    types.dedup();
    assert_eq!(types, (1..=11).collect::<Vec<_>>());
}

#[test]
fn exact_bytes() {
    assert_eq!(
        enc_peer(&PeerFrame::Hello),
        [9, 0, 0, 0, 0x01, 0x45, 0x58, 0x41, 0x48, 1, 0, 0, 0]
    );
    assert_eq!(
        enc_hax(&HaxFrame::Hello),
        [9, 0, 0, 0, 0x81, 0x45, 0x58, 0x41, 0x48, 1, 0, 0, 0]
    );
    assert_eq!(
        enc_peer(&PeerFrame::Delivered {
            link_id: 1,
            tag: 0x0102
        }),
        [17, 0, 0, 0, 0x04, 1, 0, 0, 0, 0, 0, 0, 0, 2, 1, 0, 0, 0, 0, 0, 0]
    );
    assert_eq!(
        enc_hax(&HaxFrame::NoLink { link_id: 7 }),
        [9, 0, 0, 0, 0x85, 7, 0, 0, 0, 0, 0, 0, 0]
    );
    // A keepalive request: link, tag, 3 fids, time, epoch, type 5, u128 id.
    let msg = HaMsg::new(HaMsgData::KeepaliveReq {
        id: Uint128::new(1, 2),
    });
    let b = enc_peer(&PeerFrame::Msg {
        link_id: 3,
        tag: 4,
        msg,
    });
    assert_eq!(b.len(), 4 + 1 + 16 + 48 + 16 + 4 + 16);
    assert_eq!(&b[..5], &[(b.len() - 4) as u8, 0, 0, 0, 0x03]);
    assert_eq!(&b[85..89], &[5, 0, 0, 0]);
    assert_eq!(&b[89..], &[1, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0]);
    // EP_REP flags: bit 0 do_reconnect, bit 1 disconnected_previously.
    let b = enc_hax(&HaxFrame::EpRep(ep_rep(Control::Query, true, true, 0)));
    assert_eq!(&b[5..9], &[2, 0, 0, 0]);
    assert_eq!(b[9], 0b11);
}

#[test]
fn largest_frames_fit() {
    let nvec = PeerFrame::Msg {
        link_id: 1,
        tag: 2,
        msg: every_msg().swap_remove(3),
    };
    let b = enc_peer(&nvec);
    assert_eq!(b.len(), 4 + 1 + 16 + 68 + 8 * 3 + 4 + NOTES_MAX * 20);
    assert!(b.len() - 4 <= FRAME_MAX);
    let rep = ep_rep(Control::Consume, false, false, CONFDS_MAX);
    let rep = EpRep {
        rm_ep: "r".repeat(STR_MAX),
        confds: rep
            .confds
            .into_iter()
            .map(|c| Confd {
                ep: "e".repeat(STR_MAX),
                ..c
            })
            .collect(),
        ..rep
    };
    let f = HaxFrame::EpRep(rep);
    assert_eq!(HaxFrame::decode(content(&enc_hax(&f))), Ok(f));
}

#[test]
fn split_frame_waits_for_whole_frames() {
    let mut stream = Vec::new();
    for f in all_peer_frames() {
        f.encode(&mut stream).unwrap();
    }
    // Every prefix shorter than the first frame is "not yet".
    let first = enc_peer(&PeerFrame::Hello).len();
    for n in 0..first {
        assert_eq!(split_frame(&stream[..n]), Ok(None));
    }
    let mut rest = &stream[..];
    let mut got = Vec::new();
    while let Some((frame, used)) = split_frame(rest).unwrap() {
        got.push(PeerFrame::decode(frame).unwrap());
        rest = &rest[used..];
    }
    assert!(rest.is_empty());
    assert_eq!(got, all_peer_frames());
}

#[test]
fn bad_lengths() {
    assert_eq!(frame_len([0, 0, 0, 0]), Err(WireError::BadLength(0)));
    assert_eq!(frame_len([1, 0, 0, 0]), Ok(1));
    assert_eq!(frame_len([0, 0, 1, 0]), Ok(FRAME_MAX));
    assert_eq!(frame_len([1, 0, 1, 0]), Err(WireError::BadLength(65537)));
    assert_eq!(
        frame_len([0xff; 4]),
        Err(WireError::BadLength(u64::from(u32::MAX)))
    );
    // A bad header is an error before the body arrives.
    assert_eq!(split_frame(&[0, 0, 0, 0]), Err(WireError::BadLength(0)));
    assert_eq!(
        split_frame(&[1, 0, 1, 0, 0x01]),
        Err(WireError::BadLength(65537))
    );
    assert_eq!(PeerFrame::decode(&[]), Err(WireError::BadLength(0)));
    assert_eq!(HaxFrame::decode(&[]), Err(WireError::BadLength(0)));
}

#[test]
fn unknown_frame_types() {
    for ty in [0x00u8, 0x06, 0x80, 0x81, 0x82, 0x83, 0x84, 0x85, 0xff] {
        assert_eq!(
            PeerFrame::decode(&[ty, 0, 0]),
            Err(WireError::UnknownFrameType(ty))
        );
    }
    for ty in [0x00u8, 0x01, 0x02, 0x03, 0x04, 0x05, 0x80, 0x86 + 1, 0xff] {
        assert_eq!(
            HaxFrame::decode(&[ty, 0, 0]),
            Err(WireError::UnknownFrameType(ty))
        );
    }
}

#[test]
fn every_short_body_is_truncated() {
    for f in all_peer_frames() {
        let b = enc_peer(&f);
        let c = content(&b);
        for n in 1..c.len() {
            assert_eq!(
                PeerFrame::decode(&c[..n]),
                Err(WireError::Truncated { frame: f.name() }),
                "{f:?} cut to {n}"
            );
        }
    }
    for f in all_hax_frames() {
        let b = enc_hax(&f);
        let c = content(&b);
        for n in 1..c.len() {
            assert_eq!(
                HaxFrame::decode(&c[..n]),
                Err(WireError::Truncated { frame: f.name() }),
                "{f:?} cut to {n}"
            );
        }
    }
}

#[test]
fn every_long_body_is_rejected() {
    for f in all_peer_frames() {
        let mut c = content(&enc_peer(&f)).to_vec();
        c.extend_from_slice(&[0, 0, 0]);
        assert_eq!(
            PeerFrame::decode(&c),
            Err(WireError::TrailingBytes {
                frame: f.name(),
                extra: 3
            })
        );
    }
    for f in all_hax_frames() {
        let mut c = content(&enc_hax(&f)).to_vec();
        c.push(0);
        assert_eq!(
            HaxFrame::decode(&c),
            Err(WireError::TrailingBytes {
                frame: f.name(),
                extra: 1
            })
        );
    }
}

#[test]
fn bad_hello() {
    let mut b = enc_peer(&PeerFrame::Hello);
    b[5] = 0;
    assert_eq!(
        dec_peer(&b),
        Err(WireError::BadHello {
            magic: 0x4841_5800,
            version: 1
        })
    );
    let mut b = enc_hax(&HaxFrame::Hello);
    b[9] = 2;
    assert_eq!(
        dec_hax(&b),
        Err(WireError::BadHello {
            magic: MAGIC,
            version: 2
        })
    );
}

/// Offset of the first `str` length in an `EP_REQ` frame (header included).
const EP_REQ_STR: usize = 4 + 1 + 1 + 8 + 16 + 8 + 16 + 8 + 8 + 8;

/// An `EP_REQ` whose endpoint string is `s` raw, with the length written as `n`.
fn ep_req_with_raw_endpoint(n: u16, s: &[u8]) -> Vec<u8> {
    let mut b = enc_peer(&PeerFrame::EpReq(ep_req(true, "", "")));
    b.truncate(EP_REQ_STR);
    b.extend_from_slice(&n.to_le_bytes());
    b.extend_from_slice(s);
    b.extend_from_slice(&[0, 0]); // empty git rev
    let len = (b.len() - 4) as u32;
    b[..4].copy_from_slice(&len.to_le_bytes());
    b
}

#[test]
fn bad_strings() {
    assert!(dec_peer(&ep_req_with_raw_endpoint(3, b"abc")).is_ok());
    assert_eq!(
        dec_peer(&ep_req_with_raw_endpoint(255, &[b'a'; 255])).map(|_| ()),
        Ok(())
    );
    assert_eq!(
        dec_peer(&ep_req_with_raw_endpoint(256, &[b'a'; 256])),
        Err(WireError::StringTooLong(256))
    );
    assert_eq!(
        dec_peer(&ep_req_with_raw_endpoint(2, &[0xc3, 0x28])),
        Err(WireError::StringNotUtf8)
    );
    assert_eq!(
        dec_peer(&ep_req_with_raw_endpoint(3, b"a\0b")),
        Err(WireError::StringHasNul)
    );
    // Encoding refuses the same, leaving the buffer untouched.
    let mut out = vec![1, 2, 3];
    for (req, err) in [
        (
            ep_req(true, &"a".repeat(256), ""),
            WireError::StringTooLong(256),
        ),
        (ep_req(true, "", "a\0"), WireError::StringHasNul),
    ] {
        assert_eq!(PeerFrame::EpReq(req).encode(&mut out), Err(err));
        assert_eq!(out, [1, 2, 3]);
    }
    let mut rep = ep_rep(Control::Consume, false, false, 1);
    rep.confds[0].ep = "x".repeat(300);
    assert_eq!(
        HaxFrame::EpRep(rep).encode(&mut out),
        Err(WireError::StringTooLong(300))
    );
    assert_eq!(out, [1, 2, 3]);
}

fn msg_frame(msg: HaMsg) -> Vec<u8> {
    enc_hax(&HaxFrame::Msg {
        link_id: 1,
        tag: 1,
        msg,
    })
}

/// Offsets in a MSG frame (header included).
const MSG_TYPE: usize = 85;
const PAYLOAD: usize = 89;

fn nvec(notes: Vec<HaNote>) -> HaMsg {
    base(HaMsgData::Nvec(Nvec {
        kind: NvecKind::Set,
        id_of_get: 0,
        ignore_same_state: true,
        notes,
    }))
}

#[test]
fn bad_note_counts_and_states() {
    // nr = 1025 with no notes after it: the count is rejected first.
    let mut b = msg_frame(nvec(vec![]));
    b[PAYLOAD + 24..PAYLOAD + 28].copy_from_slice(&1025u32.to_le_bytes());
    assert_eq!(dec_hax(&b), Err(WireError::TooManyNotes(1025)));
    let mut b = msg_frame(nvec(vec![]));
    b[PAYLOAD + 24..PAYLOAD + 28].copy_from_slice(&u32::MAX.to_le_bytes());
    assert_eq!(
        dec_hax(&b),
        Err(WireError::TooManyNotes(u64::from(u32::MAX)))
    );
    // The same for a failure vector reply (nr after pool and cookie).
    let rep = base(HaMsgData::FailvecRep(FailvecRep {
        pool: Fid::default(),
        cookie: Cookie::default(),
        notes: vec![],
    }));
    let mut b = msg_frame(rep);
    b[PAYLOAD + 32..PAYLOAD + 36].copy_from_slice(&2000u32.to_le_bytes());
    assert_eq!(dec_hax(&b), Err(WireError::TooManyNotes(2000)));
    // State 8 and above.
    for bad in [8u32, 9, u32::MAX] {
        let mut b = msg_frame(nvec(notes(1)));
        b[PAYLOAD + 28 + 16..PAYLOAD + 28 + 20].copy_from_slice(&bad.to_le_bytes());
        assert_eq!(dec_hax(&b), Err(WireError::BadState(u64::from(bad))));
    }
    // Encoding more than 1024 notes fails.
    let mut out = Vec::new();
    let f = PeerFrame::Msg {
        link_id: 1,
        tag: 2,
        msg: nvec(notes(NOTES_MAX + 1)),
    };
    assert_eq!(f.encode(&mut out), Err(WireError::TooManyNotes(1025)));
    assert!(out.is_empty());
}

#[test]
fn bad_msg_types() {
    for t in [0u32, 12, 255, u32::MAX] {
        let mut b = msg_frame(base(HaMsgData::KeepaliveReq {
            id: Uint128::default(),
        }));
        b[MSG_TYPE..MSG_TYPE + 4].copy_from_slice(&t.to_le_bytes());
        assert_eq!(dec_hax(&b), Err(WireError::BadMsgType(t)));
        assert_eq!(
            dec_peer(&{
                let mut p = b.clone();
                p[4] = frame_type::PEER_MSG;
                p
            }),
            Err(WireError::BadMsgType(t))
        );
    }
}

#[test]
fn bad_enumerations_in_payloads() {
    let event = |ev: u64, ty: u64, service: bool| {
        let data = if service {
            HaMsgData::ServiceEvent(ServiceEvent {
                event: ServiceEventKind::Started,
                service_type: ServiceType::Ios,
                pid: 1,
            })
        } else {
            HaMsgData::ProcessEvent(ProcessEvent {
                event: ProcessEventKind::Started,
                process_type: ProcessType::M0d,
                pid: 1,
            })
        };
        let mut b = msg_frame(base(data));
        b[PAYLOAD..PAYLOAD + 8].copy_from_slice(&ev.to_le_bytes());
        b[PAYLOAD + 8..PAYLOAD + 16].copy_from_slice(&ty.to_le_bytes());
        dec_hax(&b)
    };
    assert!(event(4, 3, false).is_ok());
    assert!(matches!(event(5, 3, false), Err(WireError::OutOfRange(e)) if e.value == 5));
    assert!(matches!(event(0, 4, false), Err(WireError::OutOfRange(e)) if e.value == 4));
    assert!(event(4, 22, true).is_ok());
    assert!(matches!(event(5, 0, true), Err(WireError::OutOfRange(e)) if e.value == 5));
    assert!(matches!(event(0, 23, true), Err(WireError::OutOfRange(e)) if e.value == 23));

    let mut b = msg_frame(base(HaMsgData::RpcEvent(RpcEvent {
        attempts: 1,
        state: HaState::Online,
    })));
    b[PAYLOAD + 8] = 8;
    assert_eq!(dec_hax(&b), Err(WireError::BadState(8)));

    let mut b = msg_frame(base(HaMsgData::BeIoErr(BeIoErr {
        errcode: 1,
        location: BeLocation::Log,
        opcode: 0,
    })));
    b[PAYLOAD + 4] = 4;
    assert!(matches!(dec_hax(&b), Err(WireError::OutOfRange(e)) if e.value == 4));

    let mut b = msg_frame(base(HaMsgData::SnsErr(SnsErr {
        errcode: 1,
        opcode: CmOp::Repair,
    })));
    b[PAYLOAD + 4] = 11;
    assert!(matches!(dec_hax(&b), Err(WireError::OutOfRange(e)) if e.value == 11));
}

#[test]
fn bad_booleans() {
    let mut b = enc_peer(&PeerFrame::EpReq(ep_req(true, "", "")));
    b[5] = 2;
    assert_eq!(
        dec_peer(&b),
        Err(WireError::BadBool {
            field: "first_request",
            value: 2
        })
    );
    let mut b = msg_frame(nvec(notes(1)));
    b[PAYLOAD] = 2;
    assert_eq!(
        dec_hax(&b),
        Err(WireError::BadBool {
            field: "NVEC dir",
            value: 2
        })
    );
    let mut b = msg_frame(nvec(notes(1)));
    b[PAYLOAD + 16 + 7] = 0x80;
    assert_eq!(
        dec_hax(&b),
        Err(WireError::BadBool {
            field: "NVEC ignore_same",
            value: 1 << 63 | 1
        })
    );
}

#[test]
fn bad_ep_rep_fields() {
    let good = enc_hax(&HaxFrame::EpRep(ep_rep(Control::Consume, false, false, 2)));
    let mut b = good.clone();
    b[5] = 1; // M0_HA_ENTRYPOINT_QUIT is not on this wire
    assert_eq!(dec_hax(&b), Err(WireError::BadControl(1)));
    let mut b = good.clone();
    b[5] = 3;
    assert_eq!(dec_hax(&b), Err(WireError::BadControl(3)));
    let mut b = good.clone();
    b[9] = 0b100;
    assert_eq!(dec_hax(&b), Err(WireError::BadFlags(4)));
    // confd_nr follows rm_ep; find it from the end: 2 × (fid + str).
    let confds_len: usize = 2 * (16 + 2 + "inet:tcp:127.0.0.1@3000".len());
    let at = good.len() - confds_len - 4;
    let mut b = good.clone();
    b[at..at + 4].copy_from_slice(&65u32.to_le_bytes());
    assert_eq!(dec_hax(&b), Err(WireError::TooManyConfds(65)));
    let mut b = good;
    b[at..at + 4].copy_from_slice(&3u32.to_le_bytes());
    assert_eq!(dec_hax(&b), Err(WireError::Truncated { frame: "EP_REP" }));
    let mut out = Vec::new();
    assert_eq!(
        HaxFrame::EpRep(ep_rep(Control::Consume, false, false, 65)).encode(&mut out),
        Err(WireError::TooManyConfds(65))
    );
}

#[test]
fn errors_read_well() {
    assert_eq!(
        WireError::Truncated { frame: "EP_REP" }.to_string(),
        "EP_REP frame is shorter than its fields"
    );
    assert_eq!(
        WireError::UnknownFrameType(0x86).to_string(),
        "unknown frame type 0x86"
    );
    assert_eq!(
        WireError::BadLength(0).to_string(),
        "frame length 0 is outside 1..=65536"
    );
}

/// A deterministic byte mutator for the fuzz loop below (xorshift).
fn mutations(seed: u64, frame: &[u8], out: &mut Vec<Vec<u8>>) {
    let mut x = seed | 1;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for _ in 0..64 {
        let mut m = frame.to_vec();
        let flips = 1 + next() % 4;
        for _ in 0..flips {
            if m.is_empty() {
                break;
            }
            let i = (next() % m.len() as u64) as usize;
            m[i] = next() as u8;
        }
        out.push(m);
    }
}

/// Decoding is canonical: whatever decodes re-encodes to the same bytes.
fn check_canonical(content: &[u8]) {
    let mut framed = (content.len() as u32).to_le_bytes().to_vec();
    framed.extend_from_slice(content);
    if let Ok(f) = PeerFrame::decode(content) {
        assert_eq!(enc_peer(&f), framed, "{f:?}");
    }
    if let Ok(f) = HaxFrame::decode(content) {
        assert_eq!(enc_hax(&f), framed, "{f:?}");
    }
}

#[test]
fn mutated_frames_never_panic_and_decode_canonically() {
    let mut cases = Vec::new();
    for (i, f) in all_peer_frames().iter().enumerate() {
        mutations(i as u64 * 7919 + 1, content(&enc_peer(f)), &mut cases);
    }
    for (i, f) in all_hax_frames().iter().enumerate() {
        mutations(i as u64 * 104_729 + 3, content(&enc_hax(f)), &mut cases);
    }
    for c in &cases {
        check_canonical(c);
        let _ = split_frame(c);
    }
}

proptest! {
    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let _ = split_frame(&bytes);
        check_canonical(&bytes);
    }

    #[test]
    fn random_msg_bodies_never_panic(ty in 0x01u8..=0x05, body in proptest::collection::vec(any::<u8>(), 0..400)) {
        let mut c = vec![ty];
        c.extend_from_slice(&body);
        check_canonical(&c);
        c[0] = ty | 0x80;
        check_canonical(&c);
    }

    #[test]
    fn nvec_round_trips(
        raw in proptest::collection::vec((any::<u64>(), any::<u64>(), 0u32..8), 0..50),
        id in any::<u64>(), get in any::<bool>(), same in any::<bool>(), tag in any::<u64>(),
    ) {
        let notes = raw.iter().map(|&(c, k, s)| HaNote::new(Fid::new(c, k), HaState::ALL[s as usize])).collect();
        let f = HaxFrame::Msg { link_id: 1, tag, msg: base(HaMsgData::Nvec(Nvec {
            kind: if get { NvecKind::Get } else { NvecKind::Set },
            id_of_get: id, ignore_same_state: same, notes,
        }))};
        prop_assert_eq!(HaxFrame::decode(content(&enc_hax(&f))), Ok(f));
    }
}
