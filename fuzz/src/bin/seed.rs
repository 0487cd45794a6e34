//! Writes the seed corpus (`corpus/<target>/seed-*`): well-formed inputs of
//! every shape each target reads, made with the project's own encoders.
//! Run from `fuzz/`: `cargo run --no-default-features --features stable --bin seed`.

use std::path::Path;

use hax_core::{
    BeIoErr, BeLocation, CmOp, Cookie, FailvecRep, FailvecReq, Fid, FidType, HaMsg, HaMsgData,
    HaNote, HaState, Nvec, NvecKind, ProcessEvent, ProcessEventKind, ProcessType, RpcEvent,
    ServiceEvent, ServiceEventKind, ServiceType, SnsErr, StobIoqError, Uint128,
};
use hax_sim::wire::{Confd, Control, EpRep, EpReq, HaxFrame, PeerFrame};

fn b64(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in data.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= c.len() {
                out.push(A[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn messages() -> Vec<HaMsg> {
    let p = Fid::typed(FidType::Process, 1, 6);
    let s = Fid::typed(FidType::Service, 1, 7);
    let notes = vec![
        HaNote::new(p, HaState::Online),
        HaNote::new(Fid::typed(FidType::Sdev, 1, 30), HaState::Failed),
    ];
    let data = [
        HaMsgData::StobIoq(StobIoqError {
            conf_sdev: Fid::typed(FidType::Sdev, 1, 30),
            stob_domain: Fid::new(1, 2),
            stob_fid: Fid::new(3, 4),
            fd: 5,
            opcode: 1,
            rc: -5,
            offset: 4096,
            size: 512,
            bshift: 12,
        }),
        HaMsgData::Nvec(Nvec {
            kind: NvecKind::Set,
            id_of_get: 0,
            ignore_same_state: true,
            notes: notes.clone(),
        }),
        HaMsgData::Nvec(Nvec {
            kind: NvecKind::Get,
            id_of_get: 42,
            ignore_same_state: false,
            notes: notes.clone(),
        }),
        HaMsgData::FailvecReq(FailvecReq {
            pool: Fid::typed(FidType::Pool, 1, 2),
            cookie: Cookie {
                addr: 9,
                generation: 1,
            },
        }),
        HaMsgData::FailvecRep(FailvecRep {
            pool: Fid::typed(FidType::Pool, 1, 2),
            cookie: Cookie {
                addr: 9,
                generation: 1,
            },
            notes,
        }),
        HaMsgData::KeepaliveReq {
            id: Uint128::new(1, 2),
        },
        HaMsgData::KeepaliveRep {
            id: Uint128::new(1, 2),
            counter: 3,
        },
        HaMsgData::ProcessEvent(ProcessEvent {
            event: ProcessEventKind::Started,
            process_type: ProcessType::M0d,
            pid: 1234,
        }),
        HaMsgData::ServiceEvent(ServiceEvent {
            event: ServiceEventKind::Started,
            service_type: ServiceType::Ios,
            pid: 1234,
        }),
        HaMsgData::RpcEvent(RpcEvent {
            attempts: 2,
            state: HaState::Transient,
        }),
        HaMsgData::BeIoErr(BeIoErr {
            errcode: 5,
            location: BeLocation::try_from(1).expect("location"),
            opcode: 2,
        }),
        HaMsgData::SnsErr(SnsErr {
            errcode: 5,
            opcode: CmOp::try_from(1).expect("op"),
        }),
    ];
    data.into_iter()
        .map(|d| {
            let mut m = HaMsg::new(d);
            m.fid = p;
            m.source_process = p;
            m.source_service = s;
            m.time_ns = 1_700_000_000_000_000_000;
            m.epoch = 7;
            m
        })
        .collect()
}

fn frames() -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut one = |f: &dyn Fn(&mut Vec<u8>)| {
        let mut v = Vec::new();
        f(&mut v);
        out.push(v);
    };
    one(&|v| PeerFrame::Hello.encode(v).expect("hello"));
    one(&|v| HaxFrame::Hello.encode(v).expect("hello"));
    one(&|v| {
        PeerFrame::EpReq(EpReq {
            first_request: true,
            generation: 1,
            process_fid: Fid::typed(FidType::Process, 1, 6),
            pid: 99,
            cookie_expected: Uint128::new(0, 0),
            link_id: 0,
            next_out_tag: 1,
            next_in_tag: 1,
            endpoint: "inet:tcp:127.0.0.1@3001".into(),
            git_rev_id: "abc".into(),
        })
        .encode(v)
        .expect("ep req")
    });
    one(&|v| {
        HaxFrame::EpRep(EpRep {
            control: Control::Consume,
            do_reconnect: false,
            disconnected_previously: true,
            req_id: Uint128::new(1, 2),
            cookie: Uint128::new(3, 4),
            link_id: 5,
            next_out_tag: 1,
            next_in_tag: 1,
            quorum: 1,
            rm_fid: Fid::typed(FidType::Service, 1, 9),
            rm_ep: "inet:tcp:127.0.0.1@2001".into(),
            confds: vec![Confd {
                fid: Fid::typed(FidType::Service, 1, 10),
                ep: "inet:tcp:127.0.0.1@2002".into(),
            }],
        })
        .encode(v)
        .expect("ep rep")
    });
    one(&|v| {
        PeerFrame::Delivered { link_id: 5, tag: 9 }
            .encode(v)
            .expect("d")
    });
    one(&|v| HaxFrame::NoLink { link_id: 5 }.encode(v).expect("nolink"));
    for m in messages() {
        let mut v = Vec::new();
        PeerFrame::Msg {
            link_id: 5,
            tag: 2,
            msg: m,
        }
        .encode(&mut v)
        .expect("msg");
        out.push(v);
    }
    out
}

fn write(dir: &Path, target: &str, items: &[Vec<u8>]) {
    let d = dir.join(target);
    std::fs::create_dir_all(&d).expect("corpus dir");
    for (i, item) in items.iter().enumerate() {
        std::fs::write(d.join(format!("seed-{i:02}")), item).expect("seed written");
    }
    println!("{target}: {} seeds", items.len());
}

fn main() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    let frames = frames();
    // A stream of every frame, and each frame alone.
    let mut wire = frames.clone();
    wire.push(frames.concat());
    write(&dir, "sim_wire", &wire);
    // Messages alone: a MSG frame less its header, type byte, link and tag.
    let msgs: Vec<Vec<u8>> = frames
        .iter()
        .filter(|f| f.get(4) == Some(&hax_sim::wire::frame_type::PEER_MSG))
        .map(|f| f[21..].to_vec())
        .collect();
    write(&dir, "emu_wire", &msgs);

    let bq = |n: u64, ty: &str, payload: &str| {
        let value = format!(
            r#"{{"timestamp": "2026-01-01 00:00:00.000000", "message_type": "{ty}", "payload": {payload}}}"#
        );
        format!(
            r#"{{"Key":"bq/{n}","CreateIndex":{n},"ModifyIndex":{n},"LockIndex":0,"Flags":0,"Value":"{}","Session":""}}"#,
            b64(value.as_bytes())
        )
    };
    let process_state =
        br#"{"state": "M0_CONF_HA_PROCESS_STARTED", "type": "M0_CONF_HA_PROCESS_M0D"}"#;
    let watch: Vec<Vec<u8>> = vec![
        b"null".to_vec(),
        Vec::new(),
        format!(
            "[{},{},{},{}]",
            bq(1, "PROCESS-STATE-UPDATE", r#"{"fid": "0x7200000000000001:0x6", "state": "M0_CONF_HA_PROCESS_STARTED", "type": "M0_CONF_HA_PROCESS_M0D"}"#),
            bq(2, "M0_HA_MSG_NVEC", r#"{"node": "n1", "device": "/dev/sdb", "state": "failed"}"#),
            bq(3, "SNS_OP", r#"{"op": "rebalance", "pool": "0x6f00000000000001:0x2"}"#),
            bq(4, "STOB_IOQ_ERROR", r#"{"conf_sdev": "0x6400000000000001:0x1e"}"#),
        )
        .into_bytes(),
        format!(
            r#"{{"Key":"processes/0x7200000000000001:0x6","CreateIndex":5,"ModifyIndex":5,"LockIndex":0,"Flags":0,"Value":"{}","Session":""}}"#,
            b64(process_state)
        )
        .into_bytes(),
        format!(
            r#"[{{"Key":"m0conf/nodes/0x6e00000000000001:0x3/processes/0x7200000000000001:0x6","Value":"{}"}},{{"Key":"epoch","Value":"MTA="}}]"#,
            b64(br#"{"name": "m0_server", "state": "online"}"#)
        )
        .into_bytes(),
        br#"[{"Node":{"Node":"n1","Address":"127.0.0.1"},"Service":{"ID":"6","Service":"ios","Port":3001,"Address":"127.0.0.1"},"Checks":[{"Node":"n1","CheckID":"service:6","Name":"ios","Status":"critical","ServiceID":"6","ServiceName":"ios","Output":""}]}]"#.to_vec(),
        br#"[{"Node":"n1","CheckID":"serfHealth","Name":"Serf Health Status","Status":"passing","ServiceID":"","ServiceName":"","Output":"Agent alive"}]"#.to_vec(),
    ];
    write(&dir, "consul_watch", &watch);

    let fids: Vec<Vec<u8>> = [
        "0x7200000000000001:0x6",
        "7200000000000001:6",
        "<0x7200000000000001:0x6>",
        "r|1:6",
        "s|0x1:0x7",
        " 0x1:0x2 ",
        "processes/0x7200000000000001:0x6",
        "bq/17",
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect();
    write(&dir, "fid", &fids);

    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let configs = vec![
        std::fs::read(repo.join("dist/hax.toml")).expect("dist/hax.toml"),
        b"[consul]\naddress = \"http://127.0.0.1:9500\"\ntoken_file = \"/etc/hax/token\"\nrequest_timeout_ms = 5\n[http]\nbind = \"127.0.0.1:9008\"\n[identity]\nnode = \"ssu1\"\nprocess_fid = \"0x7200000000000001:0x6\"\nha_service_fid = \"0x7300000000000001:0x7\"\n[log]\nformat = \"json\"\n[limits]\nevent_queue = 10\npending_writes = 1\nresync_secs = 1\n".to_vec(),
        Vec::new(),
        b"127.0.0.1:8008".to_vec(),
    ];
    write(&dir, "config", &configs);
}
