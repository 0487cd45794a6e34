//! The `m0d-sim` binary: its help, and runs against the emulator.

use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};

use hax_core::{
    Callbacks, Ctx, Delivery, EntrypointReply, EntrypointRequest, EntrypointResponder, Fid,
    FidType, HaMsg, HaMsgData, HaNote, HaState, Halon, HalonConfig, LinkId, LinkInfo, NvecGet, Tag,
    Uint128,
};

const SIM: &str = env!("CARGO_BIN_EXE_m0d-sim");

fn run(args: &[&str]) -> Output {
    Command::new(SIM)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("m0d-sim runs")
}

#[test]
fn help_describes_every_option() {
    let out = run(&["--help"]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    for opt in [
        "--ha-endpoint",
        "--count",
        "--fid-base",
        "--events",
        "--nvec-get",
        "--failvec",
        "--keepalive",
        "--duration",
        "--delivery",
        "--json",
        "Exit status",
    ] {
        assert!(text.contains(opt), "--help lacks {opt}");
    }
}

#[test]
fn usage_errors_exit_2() {
    assert_eq!(run(&[]).status.code(), Some(2));
    assert_eq!(
        run(&["--ha-endpoint", "x", "--nvec-get", "nonsense"])
            .status
            .code(),
        Some(2)
    );
}

#[test]
fn unreachable_hax_fails() {
    let port = free_port();
    let ep = format!("inet:tcp:127.0.0.1@{port}");
    let out = run(&[
        "--ha-endpoint",
        &ep,
        "--connect-timeout",
        "0.3",
        "--duration",
        "0",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("cannot connect"), "{text}");
}

struct Hax {
    links: Mutex<Vec<LinkInfo>>,
}

struct Cb(Arc<Hax>);

impl Callbacks for Cb {
    fn entrypoint_request(&self, cx: &Ctx<'_>, _req: EntrypointRequest, r: EntrypointResponder) {
        let reply = EntrypointReply {
            confds: vec![hax_core::Confd {
                fid: Fid::typed(FidType::Process, 1, 50),
                endpoint: "inet:tcp:127.0.0.1@3050".into(),
            }],
            quorum: 1,
            rm_fid: Fid::typed(FidType::Service, 1, 5),
            rm_endpoint: "inet:tcp:127.0.0.1@3050".into(),
        };
        r.accept_now(cx, &reply).unwrap();
    }

    fn nvec_get(&self, cx: &Ctx<'_>, get: NvecGet, d: Delivery) {
        get.answer_now(cx, |_| HaState::Online).unwrap();
        d.deliver_now(cx).unwrap();
    }

    fn link_connected(&self, cx: &Ctx<'_>, _req: Uint128, link: &LinkInfo) {
        self.0.links.lock().unwrap().push(link.clone());
        if !link.is_self {
            // Greet every new peer with a state broadcast.
            let note = HaNote::new(link.process_fid, HaState::Online);
            cx.send(link.id, &HaMsg::nvec_set(vec![note])).unwrap();
        }
    }

    fn msg_received(&self, cx: &Ctx<'_>, link: LinkId, _t: Tag, m: HaMsg, d: Delivery) {
        if let HaMsgData::KeepaliveReq { id } = m.data {
            let rep = HaMsg::new(HaMsgData::KeepaliveRep { id, counter: 7 });
            cx.send(link, &rep).unwrap();
        }
        d.deliver_now(cx).unwrap();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start() -> (Halon<Cb>, String) {
    // A port found free may be taken by another test before the emulator
    // binds it (EADDRINUSE): try another.
    for attempt in 1.. {
        let ep = format!("inet:tcp:127.0.0.1@{}", free_port());
        let cfg = HalonConfig {
            endpoint: ep.clone(),
            process_fid: Fid::typed(FidType::Process, 1, 3),
            ha_service_fid: Fid::typed(FidType::Service, 1, 4),
            rm_service_fid: Fid::typed(FidType::Service, 1, 5),
            debug_options: "emu-stop-timeout-ms=2000".into(),
            receive_buffers: 0,
            node_uuid: None,
        };
        let hax = Arc::new(Hax {
            links: Mutex::default(),
        });
        match Halon::start(cfg, Cb(hax)) {
            Ok(h) => return (h, ep),
            Err(
                e @ hax_core::Error::Glue {
                    code: hax_core::GlueCode::Errno(98),
                    ..
                },
            ) if attempt < 5 => {
                eprintln!("{ep} taken meanwhile ({e}); another port");
            }
            Err(e) => panic!("halon start on {ep}: {e}"),
        }
    }
    unreachable!("the loop returns or panics")
}

#[test]
fn a_demo_run_against_the_emulator() {
    let (mut halon, ep) = start();
    let out = run(&[
        "--ha-endpoint",
        &ep,
        "--count",
        "3",
        "--fid-base",
        "10",
        "--events",
        "--nvec-get",
        "0x7200000000000001:0xa,s|1:4",
        "--failvec",
        "o|1:1",
        "--keepalive",
        "--keepalive-interval",
        "0.2",
        "--duration",
        "0.5",
    ]);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    halon.stop().unwrap();
    assert!(out.status.success(), "{text}\n{err}");
    for want in [
        "m0d-sim: 3 processes",
        "entrypoint answered (new link)",
        "← msg 1: nvec SET [0x7200000000000001:0xa ONLINE] (ignore same)",
        "→ msg 2: process 0x7200000000000001:0xa STARTING (m0d, pid 10010)",
        "✓ msg 2 delivered to hax",
        "✓ NVEC GET answered rightly",
        "✓ failure vector answered",
        "STOPPED",
        "summary: 3 processes (0 fenced)",
        "0 protocol violations: ok",
    ] {
        assert!(text.contains(want), "output lacks {want:?}:\n{text}");
    }
}

/// A broken hax, scripted with the crate's codec: it answers an NVEC GET
/// with the fids reversed.
fn broken_hax() -> (String, std::thread::JoinHandle<()>) {
    use hax_sim::wire::split_frame;
    use hax_sim::{Control, EpRep, HaxFrame, PeerFrame};
    use std::io::{Read, Write};
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let ep = format!("inet:tcp:127.0.0.1@{}", l.local_addr().unwrap().port());
    let t = std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        let send = |s: &mut std::net::TcpStream, f: HaxFrame| {
            let mut out = Vec::new();
            f.encode(&mut out).unwrap();
            s.write_all(&out).unwrap();
        };
        loop {
            let Some((frame, used)) = split_frame(&buf).unwrap() else {
                let n = s.read(&mut chunk).unwrap_or(0);
                if n == 0 {
                    return;
                }
                buf.extend_from_slice(&chunk[..n]);
                continue;
            };
            let f = PeerFrame::decode(frame).unwrap();
            buf.drain(..used);
            match f {
                PeerFrame::Hello => send(&mut s, HaxFrame::Hello),
                PeerFrame::EpReq(_) => send(
                    &mut s,
                    HaxFrame::EpRep(EpRep {
                        control: Control::Consume,
                        do_reconnect: false,
                        disconnected_previously: false,
                        req_id: Uint128::new(0, 2),
                        cookie: Uint128::new(1, 1),
                        link_id: 2,
                        next_out_tag: 2,
                        next_in_tag: 1,
                        quorum: 1,
                        rm_fid: Fid::typed(FidType::Service, 1, 5),
                        rm_ep: "inet:tcp:127.0.0.1@3050".into(),
                        confds: vec![],
                    }),
                ),
                PeerFrame::Msg { tag, msg, .. } => {
                    send(&mut s, HaxFrame::Delivered { link_id: 2, tag });
                    if let HaMsgData::Nvec(n) = msg.data {
                        let mut notes = n.notes;
                        notes.reverse();
                        for x in &mut notes {
                            x.state = HaState::Online;
                        }
                        let mut reply = HaMsg::nvec_set(notes);
                        if let HaMsgData::Nvec(r) = &mut reply.data {
                            r.id_of_get = n.id_of_get;
                        }
                        send(
                            &mut s,
                            HaxFrame::Msg {
                                link_id: 2,
                                tag: 1,
                                msg: reply,
                            },
                        );
                    }
                }
                PeerFrame::Delivered { .. } | PeerFrame::Ctl { .. } => {}
            }
        }
    });
    (ep, t)
}

#[test]
fn json_lines_and_a_failed_check() {
    let (ep, fake) = broken_hax();
    let out = run(&[
        "--ha-endpoint",
        &ep,
        "--nvec-get",
        "0x6400000000000001:0x1,0x6400000000000001:0x2",
        "--duration",
        "0",
        "--json",
    ]);
    fake.join().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(out.status.code(), Some(1), "{text}");
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let up = lines.iter().find(|l| l["event"] == "up").unwrap();
    assert_eq!(up["warnings"].as_array().unwrap().len(), 2, "{up}");
    let failed = lines
        .iter()
        .find(|l| l["event"] == "nvec_get_failed")
        .unwrap();
    assert!(
        failed["error"].as_str().unwrap().contains("note 0 is for"),
        "{failed}"
    );
    assert!(lines.iter().any(|l| l["event"] == "violation"));
    let last = lines.last().unwrap();
    assert_eq!(last["event"], "summary");
    assert_eq!(last["ok"], false);
    assert_eq!(last["violations"], 1);
}
