//! Bad input on the Motr side: connections to hax's endpoint that send
//! mutated protocol frames (wrong lengths, types, fields, truncations,
//! garbage) and hang up. The emulator's frame decoder must drop each such
//! connection and nothing else: hax stays up, a well-behaved peer's events
//! are confirmed all along, and no descriptor is left behind.
//! (`fuzz/` fuzzes the decoders themselves, outside the daemon.)

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use hax_core::{Fid, FidType, HaMsg, HaMsgData, ProcessEventKind, Uint128};
use hax_e2e::{assert_no_violations, wait_for, Env, Options, T};
use hax_sim::wire::{EpReq, PeerFrame};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Well-formed frames a peer sends: the material the mutations start from.
fn frames() -> Vec<Vec<u8>> {
    let fid = Fid::typed(FidType::Process, 1, 999);
    let msgs = [
        HaMsgData::KeepaliveReq {
            id: Uint128::new(1, 2),
        },
        HaMsgData::ProcessEvent(hax_core::ProcessEvent {
            event: ProcessEventKind::Started,
            process_type: hax_core::ProcessType::M0d,
            pid: 7,
        }),
    ];
    let mut out = vec![
        PeerFrame::Hello,
        PeerFrame::EpReq(EpReq {
            first_request: false,
            generation: 1,
            process_fid: fid,
            pid: 7,
            cookie_expected: Uint128::default(),
            link_id: 0,
            next_out_tag: 0,
            next_in_tag: 0,
            endpoint: "inet:tcp:127.0.0.1@1".into(),
            git_rev_id: String::new(),
        }),
        PeerFrame::Delivered { link_id: 1, tag: 1 },
    ];
    for m in msgs {
        let mut msg = HaMsg::new(m);
        msg.fid = fid;
        out.push(PeerFrame::Msg {
            link_id: 1,
            tag: 2,
            msg,
        });
    }
    out.into_iter()
        .map(|f| {
            let mut v = Vec::new();
            f.encode(&mut v).expect("frame");
            v
        })
        .collect()
}

/// A stream of 1 to 4 frames, then 1 to 4 random changes.
fn mutated(material: &[Vec<u8>]) -> Vec<u8> {
    let mut s = Vec::new();
    for _ in 0..fastrand::usize(1..=4) {
        s.extend_from_slice(&material[fastrand::usize(..material.len())]);
    }
    for _ in 0..fastrand::usize(1..=4) {
        let n = s.len();
        match fastrand::u8(..7) {
            0 if n > 0 => s[fastrand::usize(..n)] ^= 1 << fastrand::u8(..8),
            1 if n > 0 => s[fastrand::usize(..n)] = fastrand::u8(..),
            2 if n > 4 => {
                // A length header: zero, huge, one off.
                let at = fastrand::usize(..n - 4);
                let v: u32 = match fastrand::u8(..4) {
                    0 => 0,
                    1 => u32::MAX,
                    2 => 65_537,
                    _ => u32::from_le_bytes(s[at..at + 4].try_into().unwrap()).wrapping_add(1),
                };
                s[at..at + 4].copy_from_slice(&v.to_le_bytes());
            }
            3 if n > 0 => s.truncate(fastrand::usize(..n)),
            4 => {
                let at = fastrand::usize(..=n);
                let junk: Vec<u8> = (0..fastrand::usize(1..64))
                    .map(|_| fastrand::u8(..))
                    .collect();
                s.splice(at..at, junk);
            }
            5 if n > 0 => {
                let at = fastrand::usize(..n);
                s.drain(at..(at + fastrand::usize(1..16)).min(n));
            }
            _ => s.extend((0..fastrand::usize(1..32)).map(|_| fastrand::u8(..))),
        }
    }
    s
}

fn endpoint_addr(env: &Env) -> SocketAddr {
    let port = env
        .hax_endpoint
        .rsplit_once('@')
        .and_then(|(_, p)| p.parse().ok())
        .expect("inet:tcp:HOST@PORT");
    SocketAddr::from(([127, 0, 0, 1], port))
}

async fn garbage_connections(streams: usize) {
    let mut env = Env::start(Options::default()).await;
    let peers = env.connect_peers(1).await;
    peers[0]
        .send_process_event(ProcessEventKind::Started)
        .unwrap();
    peers[0].wait_all_confirmed(T).await.unwrap();
    let base_fds = env.fd_count();
    let addr = endpoint_addr(&env);
    let material = frames();
    let t = Instant::now();
    let (mut bytes, mut answered) = (0usize, 0usize);
    for i in 0..streams {
        let data = mutated(&material);
        bytes += data.len();
        let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let _ = s.write_all(&data).await;
        // Whatever hax answers (its HELLO, an entrypoint reply), briefly.
        let mut buf = [0u8; 4096];
        if let Ok(Ok(n)) = tokio::time::timeout(Duration::from_millis(5), s.read(&mut buf)).await {
            answered += usize::from(n > 0);
        }
        drop(s);
        if i % 250 == 249 {
            assert!(env.try_wait().is_none(), "hax exited after {i} streams");
            peers[0]
                .send_process_event(ProcessEventKind::DtmRecovered)
                .unwrap();
            peers[0].wait_all_confirmed(T).await.unwrap();
        }
    }
    let took = t.elapsed();
    assert!(env.try_wait().is_none(), "hax exited");
    peers[0]
        .send_process_event(ProcessEventKind::Started)
        .unwrap();
    peers[0].wait_all_confirmed(T).await.unwrap();
    let fds = wait_for("hax's descriptors back to their level", T, || async {
        let n = env.fd_count();
        (n <= base_fds + 3).then_some(n)
    })
    .await;
    eprintln!(
        "{streams} mutated frame streams ({bytes} bytes) in {took:?}, {answered} answered; \
         hax fds {base_fds} -> {fds}"
    );
    assert!(env.healthz().await);
    assert_no_violations(&peers);
    for run in 1..=env.runs() {
        assert!(!env.log_text(run).contains("panicked"), "hax panicked");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutated_frames_drop_only_their_connection() {
    garbage_connections(2_000).await;
}

/// `cargo test -p hax-e2e --test faults_wire -- --ignored --nocapture`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "long: 100,000 streams"]
async fn mutated_frames_drop_only_their_connection_100000() {
    garbage_connections(100_000).await;
}
