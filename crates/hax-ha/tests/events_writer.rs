//! The Consul writer against a real agent: coalescing, batching, outages
//! (dead and hung agent, lost answers), bounds, shutdown, and queue appends
//! racing another publisher.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use hax_consul::queue::{QueueEntry, QueuePublisher};
use hax_consul::schema::{QueueKind, QueueMessage};
use hax_consul::writer::{
    Ack, AckWaiter, KvWriter, TrySubmitError, WriteError, WriteOp, WriterConfig,
};
use hax_consul::{ConsulClient, ConsulConfig};
use hax_testkit::dev_agent::{AgentMode, DevAgent};
use tokio::time::Instant;

const DEADLINE: Duration = Duration::from_secs(60);

fn message(source: &str, seq: u64) -> QueueMessage {
    QueueMessage::new(
        "2024-01-01 00:00:00.000000",
        "TEST",
        serde_json::json!({ "source": source, "seq": seq }),
    )
}

async fn wait_acks(waiters: Vec<AckWaiter>) -> Vec<Result<(), WriteError>> {
    let deadline = Instant::now() + DEADLINE;
    let mut out = Vec::new();
    for w in waiters {
        out.push(
            tokio::time::timeout_at(deadline, w)
                .await
                .expect("ack within the deadline"),
        );
    }
    out
}

/// Polls `cond` until it holds or the deadline passes.
async fn wait_for(what: &str, cond: impl FnMut() -> bool) {
    wait_for_within(what, DEADLINE, cond).await;
}

/// Polls `cond` until it holds or `bound` passes.
async fn wait_for_within(what: &str, bound: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + bound;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn value(client: &ConsulClient, key: &str) -> Option<String> {
    client
        .kv_get(key)
        .await
        .expect("read")
        .value
        .map(|p| String::from_utf8(p.value).expect("utf-8"))
}

async fn queue(client: &ConsulClient, kind: QueueKind) -> Vec<QueueEntry> {
    let pairs = client.kv_list(kind.prefix()).await.expect("list").value;
    QueueEntry::from_pairs(kind, &pairs)
}

fn seqs_of(entries: &[QueueEntry], source: &str) -> Vec<u64> {
    entries
        .iter()
        .filter_map(|e| {
            let m = e.message.as_ref().expect("decodable");
            (m.payload["source"] == source).then(|| m.payload["seq"].as_u64().expect("seq"))
        })
        .collect()
}

#[tokio::test]
async fn writes_of_one_key_coalesce_into_the_last_value() {
    let agent = DevAgent::start().await.expect("agent");
    let client = agent.client().expect("client");
    let writer = KvWriter::spawn(client.clone(), WriterConfig::default());
    let mut waiters = Vec::new();
    // No await in between: the writer task cannot take anything before the
    // last write, so all of them wait on one key.
    for i in 0..1000u32 {
        let (ack, w) = Ack::channel();
        writer
            .try_submit(WriteOp::put("coalesce/k", i.to_string()), Some(ack))
            .expect("room");
        waiters.push(w);
    }
    let results = wait_acks(waiters).await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    assert_eq!(value(&client, "coalesce/k").await.as_deref(), Some("999"));
    let m = writer.metrics();
    assert_eq!(m.submitted.load(Ordering::Relaxed), 1000);
    assert_eq!(m.coalesced.load(Ordering::Relaxed), 999);
    assert_eq!(m.committed.load(Ordering::Relaxed), 1);
    assert_eq!(m.batches.load(Ordering::Relaxed), 1);
    assert_eq!(m.waiting_acks.load(Ordering::Relaxed), 0);
    assert_eq!(m.latency.count(), 1);
}

#[tokio::test]
async fn more_keys_than_a_transaction_holds_are_batched() {
    let agent = DevAgent::start().await.expect("agent");
    let client = agent.client().expect("client");
    let writer = KvWriter::spawn(client.clone(), WriterConfig::default());
    let mut waiters = Vec::new();
    for i in 0..1000u32 {
        let (ack, w) = Ack::channel();
        writer
            .try_submit(
                WriteOp::put(format!("batch/{i:04}"), i.to_string()),
                Some(ack),
            )
            .expect("room");
        waiters.push(w);
    }
    assert!(wait_acks(waiters).await.iter().all(Result::is_ok));
    let listed = client.kv_list("batch/").await.expect("list").value;
    assert_eq!(listed.len(), 1000);
    for p in &listed {
        let i: u32 = p.key["batch/".len()..].parse().expect("index");
        assert_eq!(p.value, i.to_string().into_bytes());
    }
    let m = writer.metrics();
    // 64 operations per transaction.
    assert_eq!(m.batches.load(Ordering::Relaxed), 16);
    assert_eq!(m.committed.load(Ordering::Relaxed), 1000);

    // Queue entries: the epoch's check-and-set and the check that the
    // first key is free, then a set per entry.
    let mut waiters = Vec::new();
    for i in 0..100 {
        let (ack, w) = Ack::channel();
        writer
            .try_submit(
                WriteOp::publish(QueueKind::Broadcast, message("w", i)),
                Some(ack),
            )
            .expect("room");
        waiters.push(w);
    }
    assert!(wait_acks(waiters).await.iter().all(Result::is_ok));
    let entries = queue(&client, QueueKind::Broadcast).await;
    assert_eq!(
        entries.iter().map(|e| e.epoch).collect::<Vec<_>>(),
        (1..=100).collect::<Vec<_>>()
    );
    assert_eq!(seqs_of(&entries, "w"), (0..100).collect::<Vec<_>>());
    assert_eq!(value(&client, "epoch").await.as_deref(), Some("100"));
    // 62 entries per transaction.
    assert_eq!(m.batches.load(Ordering::Relaxed), 16 + 2);
}

/// Writes a stream of keys (50 keys rewritten over and over) and queue
/// entries while `outage` runs; checks that everything is there once.
async fn stream_through(
    agent: &mut DevAgent,
    writer: &KvWriter,
    outage: impl AsyncFnOnce(&mut DevAgent, &KvWriter),
) {
    let client = agent.client().expect("client");
    let mut waiters = Vec::new();
    let mut last = BTreeMap::new();
    let mut published = 0;
    let mut submit = async |i: u64, waiters: &mut Vec<AckWaiter>| {
        let key = format!("stream/key{}", i % 50);
        let (ack, w) = Ack::channel();
        writer
            .submit(WriteOp::put(key.clone(), i.to_string()), Some(ack))
            .await
            .expect("taken");
        waiters.push(w);
        last.insert(key, i.to_string());
        if i % 5 == 0 {
            let (ack, w) = Ack::channel();
            writer
                .submit(
                    WriteOp::publish(QueueKind::Broadcast, message("stream", i)),
                    Some(ack),
                )
                .await
                .expect("taken");
            waiters.push(w);
            published += 1;
        }
    };
    for i in 0..200 {
        submit(i, &mut waiters).await;
    }
    outage(agent, writer).await;
    for i in 200..400 {
        submit(i, &mut waiters).await;
    }
    let results = wait_acks(waiters).await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    for (key, v) in &last {
        assert_eq!(value(&client, key).await.as_ref(), Some(v), "{key}");
    }
    let entries = queue(&client, QueueKind::Broadcast).await;
    let seqs = seqs_of(&entries, "stream");
    assert_eq!(seqs.len(), published, "each entry exactly once");
    assert_eq!(seqs, (0..400).step_by(5).collect::<Vec<_>>(), "in order");
    assert_eq!(
        entries.iter().map(|e| e.epoch).collect::<Vec<_>>(),
        (1..=entries.len() as u64).collect::<Vec<_>>(),
        "contiguous epochs"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_agent_mid_stream_loses_nothing() {
    let mut agent = DevAgent::builder()
        .mode(AgentMode::Persistent)
        .start()
        .await
        .expect("agent");
    let writer = KvWriter::spawn(agent.client().expect("client"), WriterConfig::default());
    let m = writer.metrics();
    stream_through(&mut agent, &writer, async |agent, writer| {
        agent.kill();
        // More writes while the agent is gone, then wait until the writer
        // has noticed.
        for i in 0..20 {
            writer
                .submit(WriteOp::put("stream/during", i.to_string()), None)
                .await
                .expect("taken");
        }
        wait_for("the writer to see the outage", || {
            writer.metrics().in_outage()
        })
        .await;
        agent.start_again().await.expect("agent back");
    })
    .await;
    assert!(m.retries.load(Ordering::Relaxed) > 0);
    assert!(!m.in_outage());
    let client = agent.client().expect("client");
    assert_eq!(value(&client, "stream/during").await.as_deref(), Some("19"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_agent_mid_stream_neither_loses_nor_duplicates() {
    let mut agent = DevAgent::builder()
        .mode(AgentMode::Persistent)
        .start()
        .await
        .expect("agent");
    // Short timeouts: requests sent to the hung agent time out, and the
    // agent handles them when it wakes up, after the writer gave up on them.
    let client = ConsulClient::new(ConsulConfig {
        request_timeout: Duration::from_millis(300),
        ..agent.client_config()
    })
    .expect("client");
    let writer = KvWriter::spawn(client, WriterConfig::default());
    let m = writer.metrics();
    stream_through(&mut agent, &writer, async |agent, writer| {
        agent.pause().expect("pause");
        for i in 0..10 {
            writer
                .submit(
                    WriteOp::publish(QueueKind::Broadcast, message("hung", i)),
                    None,
                )
                .await
                .expect("taken");
        }
        // Each failed attempt is a consistent read retried by the client,
        // every try waiting its whole timeout: seconds on a quiet machine,
        // more than a minute seen on two cores shared by several builds.
        wait_for_within("attempts to time out", 3 * DEADLINE, || {
            writer.metrics().errors.load(Ordering::Relaxed) >= 3
        })
        .await;
        agent.resume().expect("resume");
    })
    .await;
    assert!(m.retries.load(Ordering::Relaxed) >= 3);
    let entries = queue(&agent.client().expect("client"), QueueKind::Broadcast).await;
    assert_eq!(seqs_of(&entries, "hung"), (0..10).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_writer_holds_callers_back_until_consul_returns() {
    let mut agent = DevAgent::builder()
        .mode(AgentMode::Persistent)
        .start()
        .await
        .expect("agent");
    let client = agent.client().expect("client");
    let writer = KvWriter::spawn(
        client.clone(),
        WriterConfig {
            max_pending: 8,
            max_acks: 100,
            ..WriterConfig::default()
        },
    );
    let m = writer.metrics();
    agent.kill();
    let mut waiters = Vec::new();
    for i in 0..8 {
        let (ack, w) = Ack::channel();
        writer
            .try_submit(WriteOp::put(format!("full/{i:02}"), "x"), Some(ack))
            .expect("room");
        waiters.push(w);
    }
    // The writer holds what it took in its failing transaction and takes
    // nothing more: new keys fill the pending room, then are refused.
    wait_for("the outage", || m.in_outage()).await;
    let mut next = 8;
    loop {
        let (ack, w) = Ack::channel();
        match writer.try_submit(WriteOp::put(format!("full/{next:02}"), "x"), Some(ack)) {
            Ok(()) => {
                waiters.push(w);
                next += 1;
            }
            Err(TrySubmitError::Full { .. }) => break,
            Err(e) => panic!("{e}"),
        }
        assert!(next < 100, "the writer never filled up");
    }
    assert_eq!(m.queue_depth.load(Ordering::Relaxed), 8);
    assert_eq!(m.full.load(Ordering::Relaxed), 1);
    // A waiting key still takes a new value: it coalesces.
    let last = format!("full/{:02}", next - 1);
    writer
        .try_submit(WriteOp::put(last.clone(), "y"), None)
        .expect("coalesces");
    let blocked = {
        let writer = writer.clone();
        let key = format!("full/{next:02}");
        tokio::spawn(async move { writer.write(WriteOp::put(key, "x")).await })
    };
    tokio::task::yield_now().await;
    assert!(!blocked.is_finished());
    agent.start_again().await.expect("agent back");
    tokio::time::timeout(DEADLINE, blocked)
        .await
        .expect("blocked write finishes")
        .expect("task")
        .expect("written");
    assert!(wait_acks(waiters).await.iter().all(Result::is_ok));
    let listed = client.kv_list("full/").await.expect("list").value;
    assert_eq!(listed.len(), next + 1);
    assert_eq!(value(&client, &last).await.as_deref(), Some("y"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_flushes_and_abandons_only_at_the_deadline() {
    let mut agent = DevAgent::builder()
        .mode(AgentMode::Persistent)
        .start()
        .await
        .expect("agent");
    let client = agent.client().expect("client");

    let writer = KvWriter::spawn(client.clone(), WriterConfig::default());
    for i in 0..100 {
        writer
            .try_submit(WriteOp::put(format!("flush/{i}"), "v"), None)
            .expect("room");
    }
    let report = writer.shutdown(Instant::now() + DEADLINE).await;
    assert_eq!(report.abandoned, 0);
    assert_eq!(
        client.kv_list("flush/").await.expect("list").value.len(),
        100
    );
    let (ack, w) = Ack::channel();
    assert!(matches!(
        writer
            .submit(WriteOp::put("flush/late", "v"), Some(ack))
            .await,
        Err(WriteError::Closed)
    ));
    assert_eq!(w.await, Err(WriteError::Closed));

    let writer = KvWriter::spawn(client.clone(), WriterConfig::default());
    agent.kill();
    let mut waiters = Vec::new();
    for i in 0..5 {
        let (ack, w) = Ack::channel();
        writer
            .try_submit(WriteOp::put(format!("lost/{i}"), "v"), Some(ack))
            .expect("room");
        waiters.push(w);
    }
    let started = Instant::now();
    let report = writer
        .shutdown(Instant::now() + Duration::from_millis(500))
        .await;
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(report.abandoned, 5);
    for r in wait_acks(waiters).await {
        assert_eq!(r, Err(WriteError::Abandoned));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_racing_another_publisher_keep_every_entry_once() {
    let agent = DevAgent::start().await.expect("agent");
    let client = agent.client().expect("client");
    let writer = KvWriter::spawn(client.clone(), WriterConfig::default());
    let publisher = QueuePublisher::new(agent.client().expect("client"), QueueKind::Event);
    let other = tokio::spawn(async move {
        for i in 0..100 {
            publisher
                .publish(&message("other", i))
                .await
                .expect("publish");
        }
    });
    let mut waiters = Vec::new();
    for i in 0..200 {
        let (ack, w) = Ack::channel();
        writer
            .submit(
                WriteOp::publish(QueueKind::Event, message("writer", i)),
                Some(ack),
            )
            .await
            .expect("taken");
        waiters.push(w);
        if i % 20 == 0 {
            tokio::task::yield_now().await;
        }
    }
    other.await.expect("other publisher");
    assert!(wait_acks(waiters).await.iter().all(Result::is_ok));
    let entries = queue(&client, QueueKind::Event).await;
    assert_eq!(
        entries.iter().map(|e| e.epoch).collect::<Vec<_>>(),
        (1..=300).collect::<Vec<_>>()
    );
    assert_eq!(seqs_of(&entries, "writer"), (0..200).collect::<Vec<_>>());
    assert_eq!(seqs_of(&entries, "other"), (0..100).collect::<Vec<_>>());
}

#[tokio::test]
async fn a_counter_gone_back_never_overwrites_an_entry() {
    let agent = DevAgent::start().await.expect("agent");
    let client = agent.client().expect("client");
    let publish = |tag: &'static str, n: u64| {
        let client = client.clone();
        async move {
            // A new writer each time: it reads the counter again.
            let writer = KvWriter::spawn(client, WriterConfig::default());
            let mut waiters = Vec::new();
            for i in 0..n {
                let (ack, w) = Ack::channel();
                writer
                    .submit(
                        WriteOp::publish(QueueKind::Broadcast, message(tag, i)),
                        Some(ack),
                    )
                    .await
                    .expect("taken");
                waiters.push(w);
            }
            assert!(wait_acks(waiters).await.iter().all(Result::is_ok));
        }
    };
    publish("first", 5).await;
    // The counter goes back (a store restored from an older snapshot).
    client.kv_put("epoch", "2").await.expect("put");
    publish("second", 3).await;
    let entries = queue(&client, QueueKind::Broadcast).await;
    assert_eq!(
        entries.iter().map(|e| e.epoch).collect::<Vec<_>>(),
        (1..=8).collect::<Vec<_>>()
    );
    assert_eq!(seqs_of(&entries, "first"), (0..5).collect::<Vec<_>>());
    assert_eq!(seqs_of(&entries, "second"), (0..3).collect::<Vec<_>>());
    assert_eq!(value(&client, "epoch").await.as_deref(), Some("8"));
}

#[tokio::test]
async fn invalid_writes_fail_their_caller_only() {
    let agent = DevAgent::start().await.expect("agent");
    let client = agent.client().expect("client");
    let writer = KvWriter::spawn(client.clone(), WriterConfig::default());
    let (ack, w) = Ack::channel();
    let r = writer.try_submit(WriteOp::put("a/../b", "v"), Some(ack));
    assert!(matches!(
        r,
        Err(TrySubmitError::Refused(WriteError::Invalid { .. }))
    ));
    assert!(matches!(w.await, Err(WriteError::Invalid { .. })));
    let big = vec![b'x'; 600 * 1024];
    assert!(matches!(
        writer.write(WriteOp::put("big", big)).await,
        Err(WriteError::Invalid { .. })
    ));
    writer
        .write(WriteOp::put("fine", "v"))
        .await
        .expect("written");
    writer
        .write(WriteOp::delete("fine"))
        .await
        .expect("deleted");
    assert_eq!(value(&client, "fine").await, None);
}

/// A TCP proxy in front of the agent that can swallow the agent's answers:
/// requests still reach Consul and are applied, the client never hears.
async fn answer_swallowing_proxy(
    upstream: std::net::SocketAddr,
) -> (String, std::sync::Arc<std::sync::atomic::AtomicBool>) {
    use std::sync::atomic::AtomicBool;
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let swallow = Arc::new(AtomicBool::new(false));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let flag = Arc::clone(&swallow);
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let Ok(server) = tokio::net::TcpStream::connect(upstream).await else {
                continue;
            };
            let (mut cr, mut cw) = client.into_split();
            let (mut sr, mut sw) = server.into_split();
            tokio::spawn(async move {
                let _ = tokio::io::copy(&mut cr, &mut sw).await;
            });
            let flag = Arc::clone(&flag);
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    let n = match sr.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    if !flag.load(Ordering::SeqCst) && cw.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    (format!("http://{addr}"), swallow)
}

// One thread: the five entries are all taken before the writer runs, so
// they go in one transaction.
#[tokio::test]
async fn a_lost_answer_does_not_append_entries_twice() {
    let agent = DevAgent::start().await.expect("agent");
    let (url, swallow) = answer_swallowing_proxy(agent.http_addr()).await;
    let client = ConsulClient::new(ConsulConfig {
        request_timeout: Duration::from_millis(300),
        ..ConsulConfig::new(url)
    })
    .expect("client");
    let writer = KvWriter::spawn(client, WriterConfig::default());
    let m = writer.metrics();
    writer
        .write(WriteOp::publish(QueueKind::Broadcast, message("lost", 0)))
        .await
        .expect("first entry");
    swallow.store(true, Ordering::SeqCst);
    let mut waiters = Vec::new();
    for i in 1..6 {
        let (ack, w) = Ack::channel();
        writer
            .try_submit(
                WriteOp::publish(QueueKind::Broadcast, message("lost", i)),
                Some(ack),
            )
            .expect("room");
        waiters.push(w);
    }
    let direct = agent.client().expect("client");
    // The transaction is applied although its answer never arrives.
    let deadline = Instant::now() + DEADLINE;
    while queue(&direct, QueueKind::Broadcast).await.len() < 6 {
        assert!(Instant::now() < deadline, "transaction never applied");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    wait_for("the lost answer to count as an error", || {
        m.errors.load(Ordering::Relaxed) >= 1
    })
    .await;
    swallow.store(false, Ordering::SeqCst);
    assert!(wait_acks(waiters).await.iter().all(Result::is_ok));
    let entries = queue(&direct, QueueKind::Broadcast).await;
    assert_eq!(seqs_of(&entries, "lost"), (0..6).collect::<Vec<_>>());
    assert_eq!(m.recovered.load(Ordering::Relaxed), 1);
    // The writer goes on from the right epoch.
    writer
        .write(WriteOp::publish(QueueKind::Broadcast, message("lost", 6)))
        .await
        .expect("next entry");
    let entries = queue(&direct, QueueKind::Broadcast).await;
    assert_eq!(seqs_of(&entries, "lost"), (0..7).collect::<Vec<_>>());
    assert_eq!(entries.last().map(|e| e.epoch), Some(7));
}
