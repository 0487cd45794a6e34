//! Figures against a real local Consul agent (`cargo bench -p hax-consul`):
//! KV writes one by one vs batched in transactions, queue publishing, watch
//! POSTs handled per second, and blocking-query notification latency.

use std::time::{Duration, Instant};

use hax_consul::queue::QueuePublisher;
use hax_consul::schema::{QueueKind, QueueMessage};
use hax_consul::server::{router, serve, AppState, ServerConfig};
use hax_consul::txn::MAX_TXN_OPS;
use hax_consul::watch::{watch_key, WatchConfig};
use hax_consul::TxnOp;
use hax_testkit::dev_agent::DevAgent;
use tokio_util::sync::CancellationToken;

fn per_sec(n: usize, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let agent = DevAgent::start()
        .await
        .expect("consul agent (run scripts/install-consul.sh)");
    let c = agent.client().expect("client");

    let n = 1000;
    let t = Instant::now();
    for i in 0..n {
        c.kv_put(&format!("bench/single/{i}"), "v")
            .await
            .expect("put");
    }
    let single = t.elapsed();
    println!(
        "kv put one by one:       {:>9.0} keys/s ({n} keys in {single:.2?})",
        per_sec(n, single)
    );

    let batches = 50;
    let t = Instant::now();
    for b in 0..batches {
        let ops: Vec<TxnOp> = (0..MAX_TXN_OPS)
            .map(|i| TxnOp::set(format!("bench/txn/{b}/{i}"), "v"))
            .collect();
        c.txn(&ops).await.expect("txn");
    }
    let batched = t.elapsed();
    let keys = batches * MAX_TXN_OPS;
    println!(
        "kv put in txns of {MAX_TXN_OPS}:   {:>9.0} keys/s ({keys} keys in {batched:.2?})",
        per_sec(keys, batched)
    );

    let msg = QueueMessage::new(
        "t",
        "PROCESS-STATE-UPDATE",
        serde_json::json!({"fid": "0x7200000000000001:0x6"}),
    );
    for writers in [1usize, 2] {
        let per = 200;
        let t = Instant::now();
        let tasks: Vec<_> = (0..writers)
            .map(|_| {
                let p = QueuePublisher::new(agent.client().expect("client"), QueueKind::Event);
                let msg = msg.clone();
                tokio::spawn(async move {
                    for _ in 0..per {
                        p.publish(&msg).await.expect("publish");
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.expect("writer");
        }
        let d = t.elapsed();
        println!(
            "queue publish, {writers} writer(s): {:>7.0} msgs/s ({} in {d:.2?})",
            per_sec(writers * per, d),
            writers * per
        );
    }

    // Watch POSTs over a real socket, the receiver draining.
    let (tx, mut rx) = tokio::sync::mpsc::channel(1024);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let cancel = CancellationToken::new();
    let server = tokio::spawn(serve(
        listener,
        router(AppState::new(tx, ServerConfig::default())),
        cancel.clone(),
    ));
    let drain = tokio::spawn(async move {
        let mut n = 0usize;
        while rx.recv().await.is_some() {
            n += 1;
        }
        n
    });
    let http = reqwest::Client::new();
    let body = r#"[{"Key":"bq/1","Value":"eyJ0aW1lc3RhbXAiOiAidCIsICJtZXNzYWdlX3R5cGUiOiAiWCIsICJwYXlsb2FkIjoge319"}]"#;
    let posts = 2000;
    let t = Instant::now();
    for _ in 0..posts {
        let r = http
            .post(format!("http://{addr}/watcher/bq"))
            .body(body)
            .send()
            .await
            .expect("post");
        assert!(r.status().is_success());
    }
    let d = t.elapsed();
    println!(
        "watch POSTs (sequential): {:>8.0} req/s ({posts} in {d:.2?})",
        per_sec(posts, d)
    );
    cancel.cancel();
    server.await.expect("join").expect("serve");
    assert_eq!(drain.await.expect("drain"), posts);

    // Notification latency: write completes -> watcher snapshot updated.
    let cancel = CancellationToken::new();
    let w = watch_key(c.clone(), "bench/latency", WatchConfig::default(), &cancel);
    w.loaded(Duration::from_secs(10)).await.expect("loaded");
    let mut rx = w.subscribe();
    let mut samples = Vec::new();
    for i in 0..200 {
        rx.borrow_and_update();
        // From the start of the write: the watcher often sees the change
        // before the writer has read its own answer.
        let t = Instant::now();
        c.kv_put("bench/latency", i.to_string()).await.expect("put");
        rx.changed().await.expect("changed");
        samples.push(t.elapsed());
    }
    samples.sort();
    println!(
        "write start -> watcher notified: p50 {:.2?}, p99 {:.2?}, max {:.2?} ({} samples)",
        percentile(&samples, 0.5),
        percentile(&samples, 0.99),
        samples[samples.len() - 1],
        samples.len()
    );
    w.shutdown().await;
}
