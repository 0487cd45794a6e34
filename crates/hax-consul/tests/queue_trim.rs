//! Trimming the broadcast queue, against a real Consul agent: what every
//! consumer has read goes, a consumer that stopped holds the queue only up
//! to the retention bound, the newest entry stays.

mod support;

use std::time::Duration;

use hax_consul::queue::{ConsumerConfig, QueueConsumer, QueueTrimmer};
use hax_consul::schema::QueueKind;
use hax_consul::{ConsulClient, TxnOp};
use hax_testkit::dev_agent::DevAgent;
use support::publish;

/// Epochs of the entries left.
async fn left(c: &ConsulClient) -> Vec<u64> {
    let keys = c.kv_keys("bq/", None).await.expect("keys").value;
    let mut epochs: Vec<u64> = keys
        .iter()
        .filter_map(|k| QueueKind::Broadcast.parse_entry_key(k))
        .collect();
    epochs.sort_unstable();
    epochs
}

fn consumer(c: &ConsulClient, node: &str) -> QueueConsumer {
    let config = ConsumerConfig {
        kind: QueueKind::Broadcast,
        name: node.into(),
        delete_consumed: false,
    };
    QueueConsumer::new(c.clone(), config).expect("consumer")
}

/// Consumes everything available up to `upto`; returns the epochs handled.
async fn consume_upto(c: &ConsulClient, node: &str, upto: u64) -> Vec<u64> {
    let seen = std::sync::Mutex::new(Vec::new());
    let pairs = c.kv_list("bq/").await.expect("list").value;
    let entries: Vec<_> = hax_consul::queue::QueueEntry::from_pairs(QueueKind::Broadcast, &pairs)
        .into_iter()
        .filter(|e| e.epoch <= upto)
        .collect();
    consumer(c, node)
        .consume_entries(&entries, |e| {
            seen.lock().expect("seen").push(e.epoch);
            async { Ok::<Vec<TxnOp>, String>(Vec::new()) }
        })
        .await
        .expect("consume");
    seen.into_inner().expect("seen")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_every_consumer_read_go_and_the_newest_stays() {
    let agent = DevAgent::start().await.expect("agent");
    let c = agent.client().expect("client");
    publish(&c, 10).await;
    assert_eq!(consume_upto(&c, "node1", 7).await.len(), 7);
    assert_eq!(consume_upto(&c, "node2", 4).await.len(), 4);
    let mut trimmer = QueueTrimmer::new(c.clone(), QueueKind::Broadcast, 100, Duration::ZERO);
    let r = trimmer.trim().await.expect("trim");
    assert_eq!((r.deleted, r.trimmed_to), (4, 4));
    assert!(r.lagging.is_empty());
    assert_eq!(left(&c).await, (5..=10).collect::<Vec<_>>());
    // Nothing more until node2 goes on.
    assert_eq!(trimmer.trim().await.expect("trim").deleted, 0);
    assert_eq!(
        consume_upto(&c, "node2", 10).await,
        (5..=10).collect::<Vec<_>>()
    );
    assert_eq!(consume_upto(&c, "node1", 10).await, vec![8, 9, 10]);
    let r = trimmer.trim().await.expect("trim");
    // The newest entry stays: the epoch counter can be repaired from it.
    assert_eq!((r.deleted, r.trimmed_to), (5, 9));
    assert_eq!(left(&c).await, vec![10]);
    // Publishing and consuming go on.
    publish(&c, 2).await;
    assert_eq!(consume_upto(&c, "node1", 100).await, vec![11, 12]);
    // A new trimmer finds where the queue starts.
    let mut fresh = QueueTrimmer::new(c.clone(), QueueKind::Broadcast, 100, Duration::ZERO);
    let r = fresh.trim().await.expect("trim");
    assert_eq!((r.deleted, r.trimmed_to), (1, 10), "node2 is at 10");
    assert_eq!(consume_upto(&c, "node2", 100).await, vec![11, 12]);
    assert_eq!(fresh.trim().await.expect("trim").deleted, 1);
    assert_eq!(left(&c).await, vec![12]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_consumer_holds_the_queue_only_up_to_the_bound() {
    let agent = DevAgent::start().await.expect("agent");
    let c = agent.client().expect("client");
    publish(&c, 10).await;
    assert_eq!(consume_upto(&c, "node1", 10).await.len(), 10);
    assert_eq!(consume_upto(&c, "down", 2).await.len(), 2);
    let mut trimmer = QueueTrimmer::new(c.clone(), QueueKind::Broadcast, 3, Duration::ZERO);
    let r = trimmer.trim().await.expect("trim");
    assert_eq!((r.deleted, r.trimmed_to), (7, 7));
    assert_eq!(r.lagging, vec![("down".to_owned(), 2)]);
    assert_eq!(left(&c).await, vec![8, 9, 10]);
    // The node back handles what is left, in order.
    assert_eq!(consume_upto(&c, "down", 100).await, vec![8, 9, 10]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_only_slow_holds_the_queue_past_the_bound() {
    let agent = DevAgent::start().await.expect("agent");
    let c = agent.client().expect("client");
    publish(&c, 10).await;
    assert_eq!(consume_upto(&c, "node1", 10).await.len(), 10);
    assert_eq!(consume_upto(&c, "slow", 2).await.len(), 2);
    let hour = Duration::from_secs(3600);
    let mut trimmer = QueueTrimmer::new(c.clone(), QueueKind::Broadcast, 3, hour);
    let r = trimmer.trim().await.expect("trim");
    assert_eq!((r.deleted, r.trimmed_to), (2, 2));
    assert!(r.lagging.is_empty());
    assert_eq!(left(&c).await, (3..=10).collect::<Vec<_>>());
    // Once it stalls (here: at once), the bound applies.
    let mut strict = QueueTrimmer::new(c.clone(), QueueKind::Broadcast, 3, Duration::ZERO);
    let r = strict.trim().await.expect("trim");
    assert_eq!((r.deleted, r.trimmed_to), (5, 7));
    assert_eq!(r.lagging, vec![("slow".to_owned(), 2)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_consumers_only_the_bound_applies() {
    let agent = DevAgent::start().await.expect("agent");
    let c = agent.client().expect("client");
    let mut trimmer = QueueTrimmer::new(c.clone(), QueueKind::Broadcast, 4, Duration::ZERO);
    assert_eq!(
        trimmer.trim().await.expect("empty queue"),
        Default::default()
    );
    publish(&c, 150).await;
    // More than one transaction of deletions.
    let r = trimmer.trim().await.expect("trim");
    assert_eq!((r.deleted, r.trimmed_to), (146, 146));
    assert_eq!(left(&c).await, vec![147, 148, 149, 150]);
    // A malformed offset holds nothing back and fails nothing.
    c.kv_put("bq-delivered/bad", "x").await.expect("put");
    publish(&c, 1).await;
    let r = trimmer.trim().await.expect("trim");
    assert_eq!((r.deleted, r.trimmed_to), (1, 147));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registered_consumer_that_read_nothing_keeps_every_entry() {
    let agent = DevAgent::start().await.expect("agent");
    let c = agent.client().expect("client");
    let fresh = consumer(&c, "fresh");
    fresh.register().await.expect("register");
    publish(&c, 20).await;
    let hour = Duration::from_secs(3600);
    let mut trimmer = QueueTrimmer::new(c.clone(), QueueKind::Broadcast, 3, hour);
    assert_eq!(trimmer.trim().await.expect("trim").deleted, 0);
    // Registering again changes nothing.
    assert_eq!(consume_upto(&c, "fresh", 5).await.len(), 5);
    fresh.register().await.expect("register again");
    assert_eq!(fresh.offset().await.expect("offset"), Some(5));
    assert_eq!(trimmer.trim().await.expect("trim").deleted, 5);
    assert_eq!(left(&c).await, (6..=20).collect::<Vec<_>>());
}
