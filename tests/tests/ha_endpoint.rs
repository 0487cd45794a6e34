//! Connections to hax's HA endpoint that never become peers (emulator
//! backend): silent ones, half-sent frames, floods past the connection and
//! descriptor bounds. Each is closed by its bound; real peers, `/healthz` and
//! hax's memory are unaffected (docs/emulator-protocol.md, "Limits").

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use hax_core::ProcessEventKind;
use hax_e2e::{wait_for, Env, Options, T};
use hax_sim::wire::PeerFrame;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn endpoint_addr(env: &Env) -> SocketAddr {
    let port = env
        .hax_endpoint
        .rsplit_once('@')
        .and_then(|(_, p)| p.parse().ok())
        .expect("inet:tcp:HOST@PORT");
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn hello() -> Vec<u8> {
    let mut v = Vec::new();
    PeerFrame::Hello.encode(&mut v).expect("HELLO");
    v
}

/// hax's HELLO: 4 bytes of length (9), type 0x81, magic, version.
const HELLO_REPLY: usize = 13;

/// Whether the connection is closed by hax: end of stream (or a reset),
/// after whatever hax sent before.
async fn closed_within(s: &mut TcpStream, d: Duration) -> bool {
    let mut buf = [0u8; 64];
    let deadline = tokio::time::Instant::now() + d;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
        }
    }
}

/// A connection that said HELLO and got hax's, or `None` when hax closed it
/// instead (refused).
async fn hello_peer(addr: SocketAddr) -> Option<TcpStream> {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(&hello()).await.ok()?;
    let mut buf = [0u8; HELLO_REPLY];
    match tokio::time::timeout(T, s.read_exact(&mut buf)).await {
        Ok(Ok(_)) => Some(s),
        Ok(Err(_)) => None,
        Err(_) => panic!("neither a HELLO nor a close from hax within {T:?}"),
    }
}

async fn peer_event_confirmed(env: &Env) {
    let peers = tokio::time::timeout(T, env.connect_started(1))
        .await
        .expect("a peer connects and its event is confirmed");
    peers[0]
        .send_process_event(ProcessEventKind::DtmRecovered)
        .unwrap();
    peers[0].wait_all_confirmed(T).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_and_half_sent_connections_are_closed() {
    hax_e2e::raise_own_fd_limit(1_000);
    let timeout = Duration::from_millis(1_500);
    let env = Env::start(Options {
        hax_args: vec![
            "--motr-debug-options".into(),
            format!(
                "emu-hello-timeout-ms={0} emu-frame-timeout-ms={0}",
                timeout.as_millis()
            ),
        ],
        ..Options::default()
    })
    .await;
    let addr = endpoint_addr(&env);
    let base_fds = env.fd_count();
    let t0 = Instant::now();
    let mut silent = Vec::new();
    for _ in 0..300 {
        silent.push(TcpStream::connect(addr).await.expect("connect"));
    }
    // Half a HELLO.
    let mut half_hello = Vec::new();
    for _ in 0..20 {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        s.write_all(&hello()[..3]).await.unwrap();
        half_hello.push(s);
    }
    // A HELLO, then a frame announcing 1,000 bytes of which 10 come.
    let mut half_frame = Vec::new();
    for _ in 0..20 {
        let mut s = hello_peer(addr).await.expect("HELLO answered");
        let mut f = 1_000u32.to_le_bytes().to_vec();
        f.extend_from_slice(&[0x03; 10]);
        s.write_all(&f).await.unwrap();
        half_frame.push(s);
    }
    let opened = t0.elapsed();
    // A real peer meanwhile.
    peer_event_confirmed(&env).await;
    let peer_done = t0.elapsed();
    let mut closed_at = Vec::new();
    for s in silent
        .iter_mut()
        .chain(half_hello.iter_mut())
        .chain(half_frame.iter_mut())
    {
        assert!(
            closed_within(s, timeout + T).await,
            "a connection still open {:?} after it was opened",
            t0.elapsed()
        );
        closed_at.push(t0.elapsed());
    }
    let last = closed_at.iter().max().copied().unwrap_or_default();
    eprintln!(
        "340 connections opened in {opened:?}; the peer confirmed at {peer_done:?}; \
         all closed by {last:?}"
    );
    // None closed before its bound (the earliest was opened at t0).
    let first = closed_at.iter().min().copied().unwrap_or_default();
    assert!(
        first >= timeout - Duration::from_millis(100),
        "closed at {first:?}, before the {timeout:?} bound"
    );
    let fds = wait_for("hax's descriptors back to their level", T, || async {
        let n = env.fd_count();
        (n <= base_fds + 3).then_some(n)
    })
    .await;
    eprintln!("hax fds {base_fds} -> {fds}");
    assert!(env.healthz().await);
}

/// The case: a descriptor limit of 1,024 and 1,100 idle
/// connections; then HELLO'd connections past the cap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_flood_leaves_room_for_peers_and_healthz() {
    hax_e2e::raise_own_fd_limit(2_000);
    let env = Env::start(Options {
        nofile: Some((1_024, 1_024)),
        // Only the bounds on connections protect here, not the timeout.
        hax_args: vec![
            "--motr-debug-options".into(),
            "emu-hello-timeout-ms=600000".into(),
        ],
        ..Options::default()
    })
    .await;
    let addr = endpoint_addr(&env);
    let base_fds = env.fd_count();
    let mut idle = Vec::new();
    for _ in 0..1_100 {
        idle.push(Some(TcpStream::connect(addr).await.expect("connect")));
    }
    // At most half of the descriptors for peers: the oldest idle ones
    // make room for the newer.
    let mut peak = 0;
    let mut evicted = 0;
    // Until hax has taken the flood in: closed what is past its bound,
    // or run out of descriptors.
    let deadline = Instant::now() + T;
    while evicted < 1_100 - 512 && peak < 1_000 {
        assert!(
            Instant::now() < deadline,
            "{evicted} idle connections closed by hax after {T:?}, {peak} descriptors"
        );
        peak = peak.max(env.fd_count());
        for slot in idle.iter_mut() {
            if let Some(s) = slot {
                if closed_within(s, Duration::from_millis(1)).await {
                    *slot = None;
                    evicted += 1;
                }
            }
        }
    }
    peak = peak.max(env.fd_count());
    assert!(env.healthz().await, "/healthz with 1,100 idle connections");
    peer_event_confirmed(&env).await;
    eprintln!("1,100 idle connections: hax fds {base_fds} -> {peak}; {evicted} closed by hax");
    assert!(peak <= 512 + base_fds + 64, "hax holds {peak} descriptors");
    assert!(evicted >= 1_100 - 512, "{evicted} idle connections closed");
    drop(idle);
    wait_for("hax's descriptors back to their level", T, || async {
        (env.fd_count() <= base_fds + 3).then_some(())
    })
    .await;

    // Peers past HELLO are never closed for a newcomer: past the cap,
    // newcomers are refused.
    let peers = env.connect_started(1).await;
    let (mut held, mut refused) = (Vec::new(), 0usize);
    for _ in 0..600 {
        match hello_peer(addr).await {
            Some(s) => held.push(s),
            None => refused += 1,
        }
    }
    eprintln!(
        "600 connections saying HELLO: {} held, {refused} refused; hax fds {}",
        held.len(),
        env.fd_count()
    );
    assert!(held.len() <= 512, "{} held", held.len());
    assert!(refused >= 600 - 512, "{refused} refused");
    assert!(env.healthz().await, "/healthz with the HA endpoint full");
    // The peer that was there keeps working.
    peers[0]
        .send_process_event(ProcessEventKind::DtmRecovered)
        .unwrap();
    peers[0].wait_all_confirmed(T).await.unwrap();
}

/// Many connections each holding most of a 64 KiB frame: hax's memory
/// returns near where it was once they are gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_of_partial_frames_is_returned() {
    const CONNS: usize = 2_000;
    hax_e2e::raise_own_fd_limit(CONNS as u64 + 500);
    // The frames stay unfinished until the test closes them.
    let env = Env::start(Options {
        hax_args: vec![
            "--motr-debug-options".into(),
            "emu-frame-timeout-ms=600000".into(),
        ],
        ..Options::default()
    })
    .await;
    let addr = endpoint_addr(&env);
    peer_event_confirmed(&env).await;
    let base_fds = env.fd_count();
    let base = env.rss_kib();
    let mut frame = 65_536u32.to_le_bytes().to_vec();
    frame.push(0x03);
    frame.resize(4 + 65_535, 0);
    // Rounds after the first find the allocator changed by the first
    // (glibc's mmap threshold follows the blocks freed).
    for round in 1..=2 {
        let mut held = Vec::new();
        for _ in 0..CONNS {
            let mut s = hello_peer(addr).await.expect("HELLO answered");
            s.write_all(&frame).await.unwrap();
            held.push(s);
        }
        let peak = wait_for("hax to have read the partial frames", T, || async {
            let r = env.rss_kib();
            (r >= base + (CONNS as u64 * 64) / 2).then_some(r)
        })
        .await;
        drop(held);
        wait_for("hax's descriptors back to their level", T, || async {
            (env.fd_count() <= base_fds + 3).then_some(())
        })
        .await;
        eprintln!(
            "round {round}: RSS when the connections are gone: {} MiB",
            env.rss_kib() / 1024
        );
        let after = wait_for("hax's memory back near its level", T, || async {
            let r = env.rss_kib();
            (r <= base + 16 * 1024).then_some(r)
        })
        .await;
        eprintln!(
            "round {round}: {CONNS} partial 64 KiB frames: RSS {} -> peak {} -> {} MiB",
            base / 1024,
            peak / 1024,
            after / 1024
        );
    }
    assert!(env.healthz().await);
}

/// A soft descriptor limit below the hard one is raised to it at start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_soft_descriptor_limit_is_raised_to_the_hard_one() {
    let env = Env::start(Options {
        nofile: Some((256, 4_096)),
        ..Options::default()
    })
    .await;
    let limits =
        std::fs::read_to_string(format!("/proc/{}/limits", env.hax_pid())).expect("limits");
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("Max open files");
    let n: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(n[3..5], ["4096", "4096"], "{line}");
    assert!(env.log_has(1, "descriptor limit raised"));
}

/// The figure: 5,000 idle connections with the default bounds.
/// `cargo test -p hax-e2e --test ha_endpoint -- --ignored --nocapture`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "5,000 sockets"]
async fn five_thousand_idle_connections() {
    const CONNS: usize = 5_000;
    hax_e2e::raise_own_fd_limit(CONNS as u64 + 500);
    let env = Env::start(Options::default()).await;
    let addr = endpoint_addr(&env);
    let base_fds = env.fd_count();
    let t0 = Instant::now();
    let mut idle = Vec::new();
    for _ in 0..CONNS {
        idle.push(TcpStream::connect(addr).await.expect("connect"));
    }
    let mut peak = env.fd_count();
    peer_event_confirmed(&env).await;
    assert!(env.healthz().await);
    let fds = wait_for("hax's descriptors back to their level", T, || {
        peak = peak.max(env.fd_count());
        async { (env.fd_count() <= base_fds + 3).then_some(env.fd_count()) }
    })
    .await;
    eprintln!(
        "{CONNS} idle connections: hax fds {base_fds} -> peak {peak} -> {fds} after {:?}",
        t0.elapsed()
    );
    assert!(peak <= base_fds + 1_024 + 64, "{peak} descriptors");
    drop(idle);
}
