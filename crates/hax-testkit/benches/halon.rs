//! Figures of the halon path on the emulator with simulated m0d peers:
//! messages per second from 1 and 16 peers into a callback, and the round
//! trip of a message hax sends until its delivery is reported.
//!
//! `cargo bench -p hax-testkit --bench halon` prints a table; `HAX_BENCH_MSGS`
//! sets the messages per peer (default 50000).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hax_core::{
    Callbacks, Ctx, Delivery, EntrypointReply, EntrypointRequest, EntrypointResponder, Fid,
    FidType, HaMsg, HaNote, HaState, Halon, HalonConfig, LinkId, ProcessEventKind, Tag,
};
use hax_sim::{cluster, SimCluster, SimConfig, SimProcess};
use tokio::sync::Notify;

struct Counter {
    received: AtomicU64,
    target: AtomicU64,
    done: Notify,
}

impl Callbacks for CounterHandle {
    fn entrypoint_request(&self, cx: &Ctx<'_>, req: EntrypointRequest, reply: EntrypointResponder) {
        let rep = EntrypointReply {
            quorum: 1,
            rm_fid: Fid::typed(FidType::Service, 1, 5),
            rm_endpoint: req.remote_endpoint,
            ..Default::default()
        };
        let _ = reply.accept_now(cx, &rep);
    }

    fn msg_received(&self, cx: &Ctx<'_>, _l: LinkId, _t: Tag, _m: HaMsg, d: Delivery) {
        let _ = d.deliver_now(cx);
        let n = self.0.received.fetch_add(1, Ordering::Relaxed) + 1;
        if n == self.0.target.load(Ordering::Relaxed) {
            self.0.done.notify_one();
        }
    }
}

fn start() -> (Halon<CounterHandle>, Arc<Counter>, String) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port");
    let ep = format!("inet:tcp:127.0.0.1@{port}");
    let c = Arc::new(Counter {
        received: AtomicU64::new(0),
        target: AtomicU64::new(u64::MAX),
        done: Notify::new(),
    });
    let cfg = HalonConfig {
        endpoint: ep.clone(),
        process_fid: Fid::typed(FidType::Process, 1, 3),
        ha_service_fid: Fid::typed(FidType::Service, 1, 4),
        rm_service_fid: Fid::typed(FidType::Service, 1, 5),
        debug_options: String::new(),
        receive_buffers: 0,
        node_uuid: None,
    };
    let h = Halon::start(cfg, CounterHandle(Arc::clone(&c))).expect("start");
    (h, c, ep)
}

/// The callbacks, sharing the counters with the bench.
struct CounterHandle(Arc<Counter>);

async fn throughput(peers: usize, per_peer: usize) -> (f64, Duration) {
    let (mut halon, counter, ep) = start();
    let cl = SimCluster::connect(cluster::configs(&ep, peers, 100))
        .await
        .expect("peers");
    // The 4 start events of the self link are counted too.
    let base = counter.received.load(Ordering::Relaxed);
    counter
        .target
        .store(base + (peers * per_peer) as u64, Ordering::Relaxed);
    let procs: Vec<Arc<SimProcess>> = cl.into_processes().into_iter().map(Arc::new).collect();
    let msgs: Vec<Vec<HaMsg>> = procs
        .iter()
        .map(|p| {
            (0..per_peer)
                .map(|_| p.process_event(ProcessEventKind::Started))
                .collect()
        })
        .collect();
    let t = Instant::now();
    let done = counter.done.notified();
    let mut tasks = Vec::new();
    for (p, m) in procs.iter().zip(msgs) {
        let p = Arc::clone(p);
        tasks.push(tokio::spawn(async move { p.send_many(m).await }));
    }
    tokio::time::timeout(Duration::from_secs(120), done)
        .await
        .expect("all messages received");
    let elapsed = t.elapsed();
    for task in tasks {
        task.await.expect("join").expect("sent");
    }
    for p in &procs {
        p.close();
    }
    tokio::task::spawn_blocking(move || halon.stop().map(|_| ()))
        .await
        .expect("join")
        .expect("stop");
    ((peers * per_peer) as f64 / elapsed.as_secs_f64(), elapsed)
}

async fn round_trip(n: usize) -> (Duration, Duration, Duration) {
    let (mut halon, _counter, ep) = start();
    let fid = Fid::typed(FidType::Process, 1, 100);
    let p = SimProcess::connect(SimConfig::new(ep, fid))
        .await
        .expect("peer");
    let ha = halon.handle();
    let link = ha
        .links()
        .into_iter()
        .find(|l| l.process_fid == fid)
        .expect("link")
        .id;
    let msg = HaMsg::nvec_set(vec![HaNote::new(
        Fid::typed(FidType::Sdev, 1, 1),
        HaState::Online,
    )]);
    let mut lat = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let tracked = ha.send_tracked(link, msg.clone()).await.expect("send");
        tracked.outcome().await.expect("outcome");
        lat.push(t.elapsed());
    }
    lat.sort();
    p.close();
    tokio::task::spawn_blocking(move || halon.stop().map(|_| ()))
        .await
        .expect("join")
        .expect("stop");
    (lat[n / 2], lat[n * 99 / 100], lat[n - 1])
}

fn main() {
    let per_peer: usize = std::env::var("HAX_BENCH_MSGS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50_000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        println!("| measure | parameters | result |");
        println!("|---|---|---|");
        for peers in [1usize, 16] {
            let n = if peers == 1 { per_peer * 4 } else { per_peer };
            let (rate, el) = throughput(peers, n).await;
            println!(
                "| HA messages into a callback | {peers} peer(s) x {n} process events, delivered in the callback | {rate:.0} msgs/s ({:.2} s) |",
                el.as_secs_f64()
            );
        }
        let n = 5000;
        let (p50, p99, max) = round_trip(n).await;
        println!(
            "| send -> delivered round trip | {n} sequential tracked sends from async code, 1 peer | p50 {:.0} us, p99 {:.0} us, max {:.0} us |",
            p50.as_secs_f64() * 1e6,
            p99.as_secs_f64() * 1e6,
            max.as_secs_f64() * 1e6
        );
    });
}
