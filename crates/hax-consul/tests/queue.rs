//! Broadcast and event queues against a real Consul agent: concurrent
//! writers, a consumer killed mid-stream, competing consumers.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hax_consul::queue::{ConsumerConfig, QueueConsumer, QueueEntry, QueueError, QueuePublisher};
use hax_consul::schema::{QueueKind, QueueMessage};
use hax_consul::watch::WatchConfig;
use hax_consul::{ConsulClient, TxnOp};
use hax_testkit::dev_agent::DevAgent;
use tokio_util::sync::CancellationToken;

fn msg(writer: u32, seq: u32) -> QueueMessage {
    QueueMessage::new(
        "2024-01-01 00:00:00.000000",
        "PROCESS-STATE-UPDATE",
        serde_json::json!({ "writer": writer, "seq": seq }),
    )
}

fn writer_seq(entry: &QueueEntry) -> (u64, u64) {
    let m = entry.message.as_ref().expect("decodable");
    (
        m.payload["writer"].as_u64().expect("writer"),
        m.payload["seq"].as_u64().expect("seq"),
    )
}

/// Starts `writers` tasks publishing `per_writer` messages each.
fn spawn_writers(
    agent: &DevAgent,
    writers: u32,
    per_writer: u32,
) -> Vec<tokio::task::JoinHandle<Vec<u64>>> {
    (0..writers)
        .map(|w| {
            // Separate clients: separate connections, real concurrency.
            let publisher =
                QueuePublisher::new(agent.client().expect("client"), QueueKind::Broadcast);
            tokio::spawn(async move {
                let mut epochs = Vec::new();
                for seq in 0..per_writer {
                    epochs.push(publisher.publish(&msg(w, seq)).await.expect("publish"));
                }
                epochs
            })
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_get_distinct_contiguous_epochs() {
    let agent = DevAgent::start().await.expect("agent");
    let c = agent.client().expect("client");
    let mut all = Vec::new();
    for h in spawn_writers(&agent, 2, 40) {
        let epochs = h.await.expect("writer");
        assert!(
            epochs.windows(2).all(|w| w[0] < w[1]),
            "a writer's epochs increase"
        );
        all.extend(epochs);
    }
    all.sort_unstable();
    assert_eq!(
        all,
        (1..=80).collect::<Vec<u64>>(),
        "no epoch shared or skipped"
    );

    let pairs = c.kv_list("bq/").await.expect("list").value;
    let entries = QueueEntry::from_pairs(QueueKind::Broadcast, &pairs);
    assert_eq!(entries.len(), 80);
    // Each writer's messages are in its own order within the queue.
    let mut last: BTreeMap<u64, u64> = BTreeMap::new();
    for e in &entries {
        let (w, seq) = writer_seq(e);
        if let Some(prev) = last.insert(w, seq) {
            assert_eq!(seq, prev + 1, "writer {w} out of order at {}", e.key);
        }
    }
    let epoch = c
        .kv_get("epoch")
        .await
        .expect("get")
        .value
        .expect("present");
    assert_eq!(epoch.value, b"80");
}

#[tokio::test]
async fn publishing_respects_an_initialised_epoch_and_never_overwrites() {
    let agent = DevAgent::start().await.expect("agent");
    let c = agent.client().expect("client");
    // cfgen initialises the counter to 1, so the first message is bq/2.
    c.kv_put("epoch", "1").await.expect("init");
    let p = QueuePublisher::new(c.clone(), QueueKind::Broadcast);
    assert_eq!(p.publish(&msg(0, 0)).await.expect("publish"), 2);
    // The counter going back (e.g. deleted) must not overwrite bq/2.
    c.kv_put("epoch", "1").await.expect("reset");
    assert_eq!(p.publish(&msg(0, 1)).await.expect("publish"), 3);
    let first = c.kv_get("bq/2").await.expect("get").value.expect("kept");
    let m = QueueMessage::decode("bq/2", &first.value).expect("decode");
    assert_eq!(m.payload["seq"], 0);
    assert_eq!(
        first.value_str().expect("utf8"),
        r#"{"timestamp": "2024-01-01 00:00:00.000000", "message_type": "PROCESS-STATE-UPDATE", "payload": {"seq": 0, "writer": 0}}"#
    );
    // The event queue has its own counter.
    let eq = QueuePublisher::new(c.clone(), QueueKind::Event);
    assert_eq!(eq.publish(&msg(9, 0)).await.expect("publish"), 1);
    assert!(c.kv_get("eq/1").await.expect("get").value.is_some());
}

/// Handler whose effect is a Consul key per entry, committed with the offset;
/// `check-not-exists` makes any repeat fail the test.
fn record_effect(entry: &QueueEntry, consumer: &str) -> Vec<TxnOp> {
    let key = format!("seen/{}", entry.epoch);
    vec![
        TxnOp::check_not_exists(key.clone()),
        TxnOp::set(key, consumer.to_owned()),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_killed_mid_stream_resumes_exactly_once_in_order() {
    let agent = DevAgent::start().await.expect("agent");
    let c = agent.client().expect("client");
    let config = ConsumerConfig {
        kind: QueueKind::Broadcast,
        name: "node1".into(),
        delete_consumed: false,
    };
    // Two writers keep publishing while the consumers run.
    let writers = spawn_writers(&agent, 2, 30);

    // First consumer: follows the queue and is aborted after ~15 entries, at
    // whatever point of its handler or commit it happens to be.
    let handled = Arc::new(AtomicU64::new(0));
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel();
    let first = {
        let consumer =
            QueueConsumer::new(agent.client().expect("client"), config.clone()).expect("consumer");
        let handled = handled.clone();
        let mut stop_tx = Some(stop_tx);
        tokio::spawn(async move {
            let cancel = CancellationToken::new();
            consumer
                .run(
                    WatchConfig::default(),
                    Duration::from_millis(50),
                    &cancel,
                    |entry| {
                        let n = handled.fetch_add(1, Ordering::SeqCst) + 1;
                        if n == 15 {
                            if let Some(tx) = stop_tx.take() {
                                let _ = tx.send(());
                            }
                        }
                        let ops = record_effect(entry, "first");
                        async move {
                            tokio::time::sleep(Duration::from_millis(5)).await;
                            Ok::<_, String>(ops)
                        }
                    },
                )
                .await;
        })
    };
    stop_rx.await.expect("first consumer got going");
    first.abort();
    let _ = first.await;

    let mut total = 0;
    for h in writers {
        total += h.await.expect("writer").len() as u64;
    }
    assert_eq!(total, 60);

    // A new consumer under the same name resumes from the stored offset.
    let second = QueueConsumer::new(c.clone(), config.clone()).expect("consumer");
    let resumed_from = second
        .offset()
        .await
        .expect("offset")
        .expect("some entries were committed");
    assert!(resumed_from >= 14, "offset {resumed_from}");
    let mut expected = resumed_from + 1;
    let done = second
        .consume_available(|entry| {
            assert_eq!(entry.epoch, expected, "in order, no gap");
            expected += 1;
            let ops = record_effect(entry, "second");
            async move { Ok::<_, String>(ops) }
        })
        .await
        .expect("resume");
    assert_eq!(done as u64, 60 - resumed_from);
    assert_eq!(second.offset().await.expect("offset"), Some(60));

    // Every entry's effect exists exactly once, split between the consumers
    // at the stored offset.
    let seen = c.kv_list("seen/").await.expect("list").value;
    assert_eq!(seen.len(), 60);
    for pair in &seen {
        let n: u64 = pair.key["seen/".len()..].parse().expect("epoch");
        let by = if n <= resumed_from { "first" } else { "second" };
        assert_eq!(pair.value, by.as_bytes(), "{}", pair.key);
    }
    // Nothing left: consuming again handles nothing.
    assert_eq!(
        second
            .consume_available(|_| async { Ok::<_, String>(vec![]) })
            .await
            .expect("idle"),
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn competing_consumers_under_one_name_never_double_handle() {
    let agent = DevAgent::start().await.expect("agent");
    let p = QueuePublisher::new(agent.client().expect("client"), QueueKind::Broadcast);
    for i in 0..40 {
        p.publish(&msg(0, i)).await.expect("publish");
    }
    let config = ConsumerConfig {
        kind: QueueKind::Broadcast,
        name: "node1".into(),
        delete_consumed: false,
    };
    let run = |who: &'static str| {
        let consumer =
            QueueConsumer::new(agent.client().expect("client"), config.clone()).expect("consumer");
        tokio::spawn(async move {
            consumer
                .consume_available(|entry| {
                    let ops = record_effect(entry, who);
                    async move { Ok::<_, String>(ops) }
                })
                .await
        })
    };
    let (a, b) = (run("a"), run("b"));
    let a = a.await.expect("join");
    let b = b.await.expect("join");
    // A duplicate would have failed the check-not-exists effect.
    let (a, b) = (a.expect("consumer a"), b.expect("consumer b"));
    assert_eq!(a + b, 40, "a={a} b={b}");
    let c = agent.client().expect("client");
    assert_eq!(
        c.kv_keys("seen/", None).await.expect("keys").value.len(),
        40
    );
}

#[tokio::test]
async fn malformed_entries_failing_handlers_and_the_event_queue() {
    let agent = DevAgent::start().await.expect("agent");
    let c = agent.client().expect("client");
    let eq = QueuePublisher::new(c.clone(), QueueKind::Event);
    eq.publish(&msg(0, 0)).await.expect("publish");
    // A foreign writer put garbage at the next epoch.
    c.txn(&[TxnOp::set("eq-epoch", "2"), TxnOp::set("eq/2", "{not json")])
        .await
        .expect("garbage");
    eq.publish(&msg(0, 2)).await.expect("publish");

    let consumer = QueueConsumer::new(
        c.clone(),
        ConsumerConfig {
            kind: QueueKind::Event,
            name: "rc".into(),
            delete_consumed: true,
        },
    )
    .expect("consumer");

    // A failing handler leaves the entry pending.
    let err = consumer
        .consume_available(|_| async { Err::<Vec<TxnOp>, _>("motr unreachable") })
        .await
        .expect_err("handler error");
    assert!(matches!(err, QueueError::Handler { .. }), "{err}");
    assert_eq!(consumer.offset().await.expect("offset"), None);

    // The malformed entry is handed over with its error; the handler skips it.
    let mut seen = Vec::new();
    let n = consumer
        .consume_available(|entry| {
            seen.push((entry.epoch, entry.message.is_ok()));
            async { Ok::<_, String>(vec![]) }
        })
        .await
        .expect("consume");
    assert_eq!(n, 3);
    assert_eq!(seen, [(1, true), (2, false), (3, true)]);
    // EQ entries are deleted with their offset update.
    assert!(c.kv_keys("eq/", None).await.expect("keys").value.is_empty());
    assert_eq!(consumer.offset().await.expect("offset"), Some(3));

    // Effects that fail roll the offset back too.
    eq.publish(&msg(0, 4)).await.expect("publish");
    let err = consumer
        .consume_available(|_| async { Ok::<_, String>(vec![TxnOp::check_index("nothing", 99)]) })
        .await
        .expect_err("effects fail");
    assert!(matches!(err, QueueError::Effects { .. }), "{err}");
    assert_eq!(consumer.offset().await.expect("offset"), Some(3));
    assert!(
        c.kv_get("eq/4").await.expect("get").value.is_some(),
        "still pending"
    );

    let too_many: Vec<TxnOp> = (0..63).map(|i| TxnOp::set(format!("x/{i}"), "v")).collect();
    let err = consumer
        .consume_available(|_| {
            let ops = too_many.clone();
            async move { Ok::<_, String>(ops) }
        })
        .await
        .expect_err("too many ops");
    assert!(matches!(err, QueueError::TooManyOps { .. }), "{err}");
}

#[tokio::test]
async fn entries_from_a_watch_payload_are_filtered_by_the_offset() {
    let agent = DevAgent::start().await.expect("agent");
    let c: ConsulClient = agent.client().expect("client");
    let p = QueuePublisher::new(c.clone(), QueueKind::Broadcast);
    for i in 0..5 {
        p.publish(&msg(0, i)).await.expect("publish");
    }
    let consumer = QueueConsumer::new(
        c.clone(),
        ConsumerConfig {
            kind: QueueKind::Broadcast,
            name: "n".into(),
            delete_consumed: false,
        },
    )
    .expect("consumer");
    c.kv_put(consumer.offset_key(), "3").await.expect("offset");
    // What a keyprefix watch POSTs: the whole prefix, unsorted, with junk keys.
    let mut pairs = c.kv_list("bq/").await.expect("list").value;
    pairs.reverse();
    pairs.push(hax_consul::KvPair {
        key: "bq/not-a-number".into(),
        value: b"x".to_vec(),
        flags: 0,
        create_index: 1,
        modify_index: 1,
        lock_index: 0,
        session: None,
    });
    let entries = QueueEntry::from_pairs(QueueKind::Broadcast, &pairs);
    assert_eq!(
        entries.iter().map(|e| e.epoch).collect::<Vec<_>>(),
        [1, 2, 3, 4, 5]
    );
    let mut got = Vec::new();
    consumer
        .consume_entries(&entries, |e| {
            got.push(e.epoch);
            async { Ok::<_, String>(vec![]) }
        })
        .await
        .expect("consume");
    assert_eq!(got, [4, 5]);
    // The same delivery again (Consul re-fires watches): nothing is redone.
    let again = consumer
        .consume_entries(&entries, |_| async { Ok::<_, String>(vec![]) })
        .await
        .expect("consume");
    assert_eq!(again, 0);
}
