//! What the queue tests share.

use hax_consul::queue::{QueueEntry, QueuePublisher};
use hax_consul::schema::{QueueKind, QueueMessage};
use hax_consul::ConsulClient;

/// Publishes `n` BQ entries numbered in their payload; returns every entry
/// of the BQ.
pub async fn publish(c: &ConsulClient, n: u32) -> Vec<QueueEntry> {
    let publisher = QueuePublisher::new(c.clone(), QueueKind::Broadcast);
    for seq in 0..n {
        let m = QueueMessage::new(
            "2024-01-01 00:00:00.000000",
            "PROCESS-STATE-UPDATE",
            serde_json::json!({ "seq": seq }),
        );
        publisher.publish(&m).await.expect("publish");
    }
    let pairs = c.kv_list("bq/").await.expect("list").value;
    QueueEntry::from_pairs(QueueKind::Broadcast, &pairs)
}
