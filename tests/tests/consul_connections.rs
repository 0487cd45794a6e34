//! Connections hax keeps to Consul under a burst of API requests: a few
//! dozen at most while it lasts, and once it is over only a few stay open
//! for reuse, so that neither holds the agent's per-client limit
//! (`limits.http_max_conns_per_client`, 200 by default), which hax's own
//! writes and watches share.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use hax_e2e::{wait_for, Env, Options};

/// What `hax_consul::ConsulConfig` keeps idle at most.
const POOL_MAX_IDLE: usize = 16;

/// Consul reads of the API at once: `hax_ha::http::CONSUL_REQUESTS`
/// requests of four reads each.
const API_READS: usize = 8 * 4;

/// hax's established TCP connections to `port` on the loopback.
fn connections_to(pid: u32, port: u16) -> usize {
    let inodes: HashSet<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
                .filter_map(|l| {
                    let l = l.to_string_lossy().into_owned();
                    Some(l.strip_prefix("socket:[")?.strip_suffix(']')?.to_owned())
                })
                .collect()
        })
        .unwrap_or_default();
    let mut n = 0;
    for table in ["tcp", "tcp6"] {
        let text = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")).unwrap_or_default();
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 10 {
                continue;
            }
            let remote_port = f[2]
                .rsplit(':')
                .next()
                .and_then(|p| u16::from_str_radix(p, 16).ok());
            // 01: ESTABLISHED.
            if remote_port == Some(port) && f[3] == "01" && inodes.contains(f[9]) {
                n += 1;
            }
        }
    }
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_status_requests_leaves_few_idle_connections_to_consul() {
    let env = Env::start(Options::default()).await;
    let pid = env.hax_pid();
    let port = env.agent.http_addr().port();
    let before = connections_to(pid, port);

    // 600 requests, 300 at a time: more than the HTTP server serves at
    // once (256), each reading Consul several times.
    let web = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .pool_max_idle_per_host(0)
        .build()
        .expect("client");
    let url = format!("http://{}/v1/cluster/status", env.http);
    let started = Instant::now();
    let peak = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(before));
    let sampler = {
        let peak = std::sync::Arc::clone(&peak);
        tokio::spawn(async move {
            loop {
                let n = connections_to(pid, port);
                peak.fetch_max(n, std::sync::atomic::Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let (mut ok, mut busy) = (0, 0);
    for _ in 0..2 {
        let mut requests = tokio::task::JoinSet::new();
        for _ in 0..300 {
            let r = web.get(&url).send();
            requests.spawn(async move { r.await.map(|r| r.status().as_u16()) });
        }
        while let Some(r) = requests.join_next().await {
            match r.expect("request task") {
                Ok(200) => ok += 1,
                // No slot for Consul within 5 s: possible on a busy machine.
                Ok(503) => busy += 1,
                other => panic!("{other:?}"),
            }
        }
    }
    sampler.abort();
    let peak = peak.load(std::sync::atomic::Ordering::Relaxed);
    let burst = started.elapsed();
    assert!(ok >= 300, "{ok} of 600 answered 200, {busy} 503");
    // Besides those before (blocking queries, some idle): the reads in
    // flight, the idle ones, and a connection each read may have started
    // before an idle one came back (the client pool races them; the loser
    // joins the pool or is closed).
    assert!(
        peak <= before + 2 * API_READS + POOL_MAX_IDLE,
        "{peak} connections to Consul during the burst ({before} before)"
    );

    eprintln!(
        "connections to Consul: {before} before, peak {peak} during {ok} answers (and {busy} 503) in {burst:?}, \
         {} at its end",
        connections_to(pid, port)
    );
    // Idle connections beyond the pool's bound are closed as they are
    // returned; give the kernel a moment to show it.
    let waited = Instant::now();
    let after = wait_for(
        "idle connections to Consul back within the pool's bound",
        Duration::from_secs(10),
        || async {
            let n = connections_to(pid, port);
            (n <= before + POOL_MAX_IDLE).then_some(n)
        },
    )
    .await;
    eprintln!("{after} connections {:?} later", waited.elapsed());
    assert!(env.healthz().await);
}
