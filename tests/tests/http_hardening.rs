//! The daemon's HTTP server against hostile clients: slow and idle
//! connections (slowloris) cannot hold its descriptors, slow bodies time
//! out, and wrong content types, deep JSON nesting, oversize chunked bodies,
//! oversize heads and unknown routes get a 4xx and change nothing.
//! (`answers.rs` covers malformed payloads of the known routes and a 17 MiB
//! body with a length.)

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hax_consul::server::ServerConfig;
use hax_e2e::{wait_for, Env, Options, T};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Reads until the server closes the connection (or `limit` passes);
/// everything read.
async fn read_to_close(s: &mut TcpStream, limit: Duration) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(out),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    }
}

/// The status code of a raw HTTP/1.1 answer.
fn status_of(answer: &[u8]) -> Option<u16> {
    let text = String::from_utf8_lossy(answer);
    text.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
}

/// Sends `head` and `body` on a fresh connection; the status of the answer.
async fn raw_request(env: &Env, head: &str, body: &[u8]) -> Option<u16> {
    let mut s = TcpStream::connect(env.http).await.expect("connect");
    s.write_all(head.as_bytes()).await.ok()?;
    s.write_all(body).await.ok()?;
    let answer = read_to_close(&mut s, T).await?;
    status_of(&answer)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_idle_clients_cannot_hold_the_server() {
    let limits = ServerConfig::default();
    let env = Env::start(Options::default()).await;
    let base_fds = env.fd_count();

    // More connections than the server serves at once: a third idle (no
    // byte), the rest trickling a request head one header line a second.
    const CLIENTS: usize = 400;
    let started = Instant::now();
    let mut clients = Vec::new();
    for i in 0..CLIENTS {
        let addr = env.http;
        clients.push(tokio::spawn(async move {
            let mut s = TcpStream::connect(addr).await.expect("connect");
            let t = Instant::now();
            if i % 3 != 0 {
                let _ = s
                    .write_all(b"POST /watcher/bq HTTP/1.1\r\nHost: hax\r\n")
                    .await;
            }
            // Trickle until the server closes the connection (a write or a
            // read fails), at most 60 s.
            let mut buf = [0u8; 256];
            for n in 0..60 {
                if i % 3 != 0
                    && s.write_all(format!("X-{n}: y\r\n").as_bytes())
                        .await
                        .is_err()
                {
                    break;
                }
                match tokio::time::timeout(Duration::from_secs(1), s.read(&mut buf)).await {
                    Ok(Ok(0)) | Ok(Err(_)) => break,
                    Ok(Ok(_)) | Err(_) => {}
                }
            }
            t.elapsed()
        }));
    }
    // While they are there: hax keeps its descriptors bounded and still
    // answers a well-behaved client.
    let peak_seen = std::sync::atomic::AtomicUsize::new(0);
    let healthy = wait_for("hax to answer /healthz during the attack", T, || async {
        peak_seen.fetch_max(env.fd_count(), std::sync::atomic::Ordering::Relaxed);
        env.healthz().await.then_some(started.elapsed())
    })
    .await;
    let mut peak = peak_seen.into_inner();
    let mut held = Vec::new();
    for c in clients {
        peak = peak.max(env.fd_count());
        held.push(c.await.unwrap());
    }
    held.sort();
    let longest = *held.last().unwrap();
    eprintln!(
        "{CLIENTS} slow clients: hax fds {base_fds} before, peak {peak}; /healthz answered after \
         {healthy:?}; connections held {:?} (median) to {longest:?} (longest)",
        held[held.len() / 2]
    );
    // Beyond the slots: the one new connection waiting for a slot, and
    // Consul connections (up to 16 idle). A connection whose slot a newer
    // one took keeps counting until it is closed.
    assert!(
        peak <= base_fds + limits.max_connections + 24,
        "fds {base_fds} -> {peak} with at most {} connections",
        limits.max_connections
    );
    // Each was closed by the server: the ones accepted at once after the
    // head deadline, the ones that waited for a slot after a few deadlines.
    let rounds = CLIENTS.div_ceil(limits.max_connections) as u32;
    assert!(
        longest < limits.header_timeout * (rounds + 1) + Duration::from_secs(5),
        "a slow client held a connection {longest:?}"
    );
    let fds = wait_for("hax's descriptors back to their level", T, || async {
        let n = env.fd_count();
        (n <= base_fds + 4).then_some(n)
    })
    .await;
    eprintln!("hax fds after: {fds}");
    assert!(env.healthz().await);
    env.assert_no_contract_violations();
}

/// One slow client's loop: connect, send a partial request head, trickle a
/// header line a second until the server closes the connection, reconnect;
/// until `stop`. How many times it was closed.
async fn slow_client_reconnecting(addr: std::net::SocketAddr, stop: Arc<AtomicBool>) -> usize {
    let mut closed = 0;
    while !stop.load(Ordering::Relaxed) {
        let Ok(Ok(mut s)) =
            tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(addr)).await
        else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        if s.write_all(b"POST /watcher/bq HTTP/1.1\r\nHost: hax\r\n")
            .await
            .is_err()
        {
            continue;
        }
        let mut buf = [0u8; 256];
        let mut n = 0;
        while !stop.load(Ordering::Relaxed) {
            match tokio::time::timeout(Duration::from_secs(1), s.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => break,
                Ok(Ok(_)) => {}
                Err(_) => {
                    n += 1;
                    if s.write_all(format!("X-{n}: y\r\n").as_bytes())
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
            }
        }
        closed += 1;
    }
    closed
}

/// How long a fresh connection takes to get the answer to `head` (with an
/// empty JSON body when it says so), and that answer's status.
async fn timed_request(env: &Env, head: &str, body: &[u8]) -> (Duration, Result<u16, String>) {
    let t = Instant::now();
    let status = async {
        let mut s = TcpStream::connect(env.http)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        s.write_all(head.as_bytes())
            .await
            .and(s.write_all(body).await)
            .map_err(|e| format!("send: {e}"))?;
        let answer = read_to_close(&mut s, T).await.ok_or("no answer")?;
        status_of(&answer).ok_or_else(|| String::from_utf8_lossy(&answer).into_owned())
    }
    .await;
    (t.elapsed(), status)
}

/// Slow clients that reconnect as soon as they are closed, four times more
/// than the server serves at once, keep every slot busy. Consul's health
/// check and a watch delivery, each on a fresh connection as Consul makes
/// them, are still answered within a second: a new connection takes the
/// place of the one that has waited longest for its request head.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnecting_slow_clients_leave_room_for_watches_and_health_checks() {
    const CLIENTS: usize = 1_000;
    const ATTACK: Duration = Duration::from_secs(15);
    hax_e2e::raise_own_fd_limit(CLIENTS as u64 + 500);
    let limits = ServerConfig::default();
    let env = Env::start(Options::default()).await;

    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| tokio::spawn(slow_client_reconnecting(env.http, Arc::clone(&stop))))
        .collect();
    // The server says so at its first takeover. (Counting hax's descriptors
    // against a count taken at start does not: descriptors open then, such
    // as Consul connections, may be closed by now.)
    wait_for(
        "the slow clients to fill every connection slot",
        T,
        || async {
            env.log_has(
                1,
                "every http connection slot was taken: a new connection took the slot of the one waiting longest for its request head",
            )
            .then_some(())
        },
    )
    .await;

    let health = "GET /healthz HTTP/1.1\r\nHost: hax\r\nConnection: close\r\n\r\n";
    let watch = "POST /watcher/bq HTTP/1.1\r\nHost: hax\r\nContent-Type: application/json\r\n\
                 Content-Length: 2\r\nConnection: close\r\n\r\n";
    let mut waits = Vec::new();
    let started = Instant::now();
    while started.elapsed() < ATTACK {
        for (what, head, body) in [("health", health, &b""[..]), ("watch", watch, &b"[]"[..])] {
            let (took, status) = timed_request(&env, head, body).await;
            assert_eq!(
                status,
                Ok(200),
                "{what} request answered {status:?} after {took:?}"
            );
            waits.push(took);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let mut closed = 0;
    for c in clients {
        closed += c.await.unwrap();
    }
    waits.sort();
    let longest = *waits.last().unwrap();
    eprintln!(
        "{CLIENTS} reconnecting slow clients, closed {closed} times in {ATTACK:?}: {} requests \
         answered in {:?} (median) to {longest:?} (longest)",
        waits.len(),
        waits[waits.len() / 2]
    );
    // A slow client waits in the listen backlog for a slot no longer, and
    // takes none from a request that is complete.
    assert!(
        longest < Duration::from_secs(2),
        "a request waited {longest:?} behind slow clients (server closes a waiting head after {:?})",
        limits.header_timeout
    );
    env.assert_no_contract_violations();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_body_times_out() {
    let limits = ServerConfig::default();
    let env = Env::start(Options::default()).await;
    let mut s = TcpStream::connect(env.http).await.unwrap();
    s.write_all(
        b"POST /watcher/bq HTTP/1.1\r\nHost: hax\r\nContent-Type: application/json\r\n\
          Content-Length: 1000\r\n\r\n[",
    )
    .await
    .unwrap();
    let t = Instant::now();
    let mut answer = Vec::new();
    let mut buf = [0u8; 1024];
    // One body byte a second, reading in between: the request as a whole
    // has `request_timeout`.
    for _ in 0..60 {
        match tokio::time::timeout(Duration::from_secs(1), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => {
                answer.extend_from_slice(&buf[..n]);
                if answer.windows(4).any(|w| w == b"\r\n\r\n") {
                    break;
                }
            }
            Err(_) => {
                if s.write_all(b" ").await.is_err() {
                    break;
                }
            }
        }
    }
    let took = t.elapsed();
    eprintln!("slow body answered {:?} after {took:?}", status_of(&answer));
    assert_eq!(
        status_of(&answer),
        Some(408),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    assert!(
        took < limits.request_timeout + Duration::from_secs(5),
        "{took:?}"
    );
    assert!(env.healthz().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_requests_get_4xx_and_change_nothing() {
    let env = Env::start(Options::default()).await;
    let peers = env.connect_peers(1).await;
    let before = env.settle_started(&peers[0]).await;
    let base_fds = env.fd_count();

    let post = |path: &str, ctype: &str, body: &[u8]| {
        format!(
            "POST {path} HTTP/1.1\r\nHost: hax\r\nContent-Type: {ctype}\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        )
    };
    let mut cases: Vec<(String, String, Vec<u8>, u16)> = Vec::new();
    // Wrong content types, with a payload that would otherwise be valid.
    for ctype in [
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "application/xml",
        "application/jsonx",
    ] {
        for path in ["/", "/watcher/bq", "/watcher/processes", "/watch/key/x"] {
            cases.push((
                format!("{path} as {ctype}"),
                post(path, ctype, b"null"),
                b"null".to_vec(),
                415,
            ));
        }
    }
    // Deep nesting: far past serde_json's recursion limit, on every route.
    for depth in [200, 100_000] {
        let body = format!("{}{}", "[".repeat(depth), "]".repeat(depth)).into_bytes();
        for path in ["/", "/watcher/bq", "/watch/checks/x", "/watch/keyprefix/x"] {
            cases.push((
                format!("{path} nested {depth} deep"),
                post(path, "application/json", &body),
                body.clone(),
                400,
            ));
        }
    }
    // Deep nesting inside a BQ entry's value is the BQ's business (an entry
    // that does not decode is skipped); in a process state it is refused.
    let deep_value = format!("{}{}", "{\"a\":".repeat(10_000), "}".repeat(10_000));
    let b64 = |s: &str| {
        use std::fmt::Write;
        const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut out = String::new();
        for c in s.as_bytes().chunks(3) {
            let n = (u32::from(c[0]) << 16)
                | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
                | u32::from(*c.get(2).unwrap_or(&0));
            for i in 0..4 {
                let ch = if i <= c.len() {
                    A[(n >> (18 - 6 * i)) as usize & 63] as char
                } else {
                    '='
                };
                let _ = write!(out, "{ch}");
            }
        }
        out
    };
    let body = format!(
        r#"{{"Key":"processes/0x7200000000000001:0x1","Value":"{}"}}"#,
        b64(&deep_value)
    )
    .into_bytes();
    cases.push((
        "a process state nested 10000 deep".into(),
        post("/watcher/processes", "application/json", &body),
        body,
        400,
    ));
    // Unknown routes, every method; a known route with the wrong method.
    for method in ["GET", "POST", "PUT", "DELETE", "PATCH"] {
        cases.push((
            format!("{method} unknown route"),
            format!(
                "{method} /v0/../../etc/passwd HTTP/1.1\r\nHost: hax\r\nContent-Length: 0\r\n\
                 Connection: close\r\n\r\n"
            ),
            Vec::new(),
            404,
        ));
    }
    cases.push((
        "GET /watcher/bq".into(),
        "GET /watcher/bq HTTP/1.1\r\nHost: hax\r\nConnection: close\r\n\r\n".into(),
        Vec::new(),
        405,
    ));
    cases.push((
        "PUT /watcher/bq".into(),
        post("/watcher/bq", "application/json", b"null").replacen("POST", "PUT", 1),
        b"null".to_vec(),
        405,
    ));
    cases.push((
        "a watch kind that does not exist".into(),
        post("/watch/nodes/x", "application/json", b"[]"),
        b"[]".to_vec(),
        404,
    ));
    // An oversize body without a length: chunked, 17 MiB.
    let chunk = vec![b' '; 1 << 20];
    let mut chunked = Vec::new();
    for _ in 0..17 {
        chunked.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        chunked.extend_from_slice(&chunk);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    cases.push((
        "17 MiB chunked".into(),
        "POST /watcher/bq HTTP/1.1\r\nHost: hax\r\nContent-Type: application/json\r\n\
         Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
            .into(),
        chunked,
        413,
    ));
    // Oversize heads: too many headers, one huge header.
    let many: String = (0..500).map(|i| format!("X-{i}: v\r\n")).collect();
    cases.push((
        "500 headers".into(),
        format!("GET /healthz HTTP/1.1\r\nHost: hax\r\n{many}Connection: close\r\n\r\n"),
        Vec::new(),
        431,
    ));
    let huge = "v".repeat(1 << 20);
    cases.push((
        "a 1 MiB header".into(),
        format!("GET /healthz HTTP/1.1\r\nHost: hax\r\nX-Big: {huge}\r\nConnection: close\r\n\r\n"),
        Vec::new(),
        431,
    ));
    // Not HTTP at all.
    cases.push((
        "garbage".into(),
        "\u{16}\u{3}\u{1}\u{0}\u{a5}\u{1}\u{0}\u{0}\r\n\r\n".into(),
        Vec::new(),
        400,
    ));

    let mut statuses = Vec::new();
    for (what, head, body, want) in &cases {
        let got = raw_request(&env, head, body).await;
        statuses.push((what.clone(), got));
        // A server may refuse an oversize head by closing without an answer;
        // anything else must be the expected 4xx.
        let ok = got == Some(*want)
            || (*want == 431 && got.is_none_or(|s| (400..500).contains(&s)))
            || (*want == 413 && got.is_none());
        assert!(ok, "{what}: want {want}, got {got:?}");
    }
    eprintln!("{} hostile requests: {statuses:?}", cases.len());

    // Nothing changed, and hax's descriptors are back where they were.
    env.assert_unchanged_since(&before, &peers[0]).await;
    wait_for("hax's descriptors back to their level", T, || async {
        (env.fd_count() <= base_fds + 4).then_some(())
    })
    .await;
    env.assert_no_contract_violations();
}
