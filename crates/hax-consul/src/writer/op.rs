//! What the writer is asked to do ([`WriteOp`]), how ([`WriterConfig`]) and
//! what it reports ([`WriteError`], [`WriterMetrics`], ...).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::schema::{QueueKind, QueueMessage};
use crate::txn::MAX_TXN_OPS;

/// Settings of the writer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WriterConfig {
    /// Keys and queue entries waiting to be sent, at most.
    pub max_pending: usize,
    /// Completions (acks) waiting, at most.
    pub max_acks: usize,
    /// Operations per transaction (Consul accepts 64).
    pub max_batch_ops: usize,
    /// Value bytes per transaction: Consul limits the size of a whole
    /// transaction request, not only its operation count.
    pub max_batch_bytes: usize,
    /// First pause after a failed attempt.
    pub backoff_initial: Duration,
    /// Longest pause between attempts.
    pub backoff_max: Duration,
}

impl Default for WriterConfig {
    fn default() -> Self {
        WriterConfig {
            max_pending: 4096,
            max_acks: 65536,
            max_batch_ops: MAX_TXN_OPS,
            max_batch_bytes: 256 * 1024,
            backoff_initial: Duration::from_millis(50),
            backoff_max: Duration::from_secs(5),
        }
    }
}

impl WriterConfig {
    pub(super) fn sanitized(mut self) -> Self {
        self.max_pending = self.max_pending.max(1);
        self.max_acks = self.max_acks.max(1);
        // A queue's first publication needs three operations (epoch, check,
        // entry).
        self.max_batch_ops = self.max_batch_ops.clamp(3, MAX_TXN_OPS);
        self.max_batch_bytes = self.max_batch_bytes.max(1);
        self.backoff_initial = self.backoff_initial.max(Duration::from_millis(1));
        self.backoff_max = self.backoff_max.max(self.backoff_initial);
        self
    }
}

/// Why a write did not reach Consul.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WriteError {
    /// The writer no longer takes writes (shutting down).
    #[error("the Consul writer is closed")]
    Closed,
    /// The write cannot be sent (bad key, value too large, payload that
    /// does not encode).
    #[error("invalid write of {key:?}: {reason}")]
    Invalid {
        /// The key (or queue prefix).
        key: String,
        /// What is wrong.
        reason: String,
    },
    /// Consul refused the write (not an outage: retrying cannot help).
    #[error("Consul refused the write of {key:?}: {reason}")]
    Rejected {
        /// The key (or queue prefix).
        key: String,
        /// Consul's answer.
        reason: String,
    },
    /// The writer stopped (shutdown deadline passed) before the write
    /// reached Consul.
    #[error("the Consul writer stopped before the write was durable")]
    Abandoned,
}

/// One write.
#[derive(Clone, Debug, PartialEq)]
pub enum WriteOp {
    /// Set a key.
    Put {
        /// The key.
        key: String,
        /// The value.
        value: Vec<u8>,
    },
    /// Delete a key.
    Delete {
        /// The key.
        key: String,
    },
    /// Append a message to a queue (BQ or EQ) under the next epoch.
    Publish {
        /// The queue.
        queue: QueueKind,
        /// The message.
        message: QueueMessage,
    },
}

impl WriteOp {
    /// Sets `key` to `value`.
    pub fn put(key: impl Into<String>, value: impl Into<Vec<u8>>) -> Self {
        WriteOp::Put {
            key: key.into(),
            value: value.into(),
        }
    }

    /// Deletes `key`.
    pub fn delete(key: impl Into<String>) -> Self {
        WriteOp::Delete { key: key.into() }
    }

    /// Appends `message` to `queue`.
    pub fn publish(queue: QueueKind, message: QueueMessage) -> Self {
        WriteOp::Publish { queue, message }
    }
}

/// The writer did not finish in time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{pending} writes still waiting for Consul at the deadline")]
pub struct FlushTimeout {
    /// Keys and queue entries not yet durable.
    pub pending: usize,
}

/// What [`KvWriter::shutdown`](super::KvWriter::shutdown) left behind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ShutdownReport {
    /// Writes that never reached Consul (their acks got
    /// [`WriteError::Abandoned`]).
    pub abandoned: u64,
}

/// Counters for `/metrics`. Gauges are current values; the rest only grow.
#[derive(Debug, Default)]
pub struct WriterMetrics {
    /// Gauge: keys and queue entries waiting to be sent.
    pub queue_depth: AtomicU64,
    /// Gauge: writes in the transaction being sent.
    pub in_flight: AtomicU64,
    /// Gauge: completions waiting.
    pub waiting_acks: AtomicU64,
    /// Gauge: 1 while Consul is failing the current batch.
    pub outage: AtomicU64,
    /// Writes taken.
    pub submitted: AtomicU64,
    /// Writes that replaced a waiting value of the same key.
    pub coalesced: AtomicU64,
    /// `try_submit` calls refused for lack of room.
    pub full: AtomicU64,
    /// Keys written and entries appended.
    pub committed: AtomicU64,
    /// Transactions committed.
    pub batches: AtomicU64,
    /// Attempts repeated after an outage error.
    pub retries: AtomicU64,
    /// Attempts that lost an epoch check-and-set race to another writer.
    pub conflicts: AtomicU64,
    /// Failed attempts (any cause).
    pub errors: AtomicU64,
    /// Attempts whose answer was lost but which had committed (found on the
    /// next attempt, so their entries were not appended twice).
    pub recovered: AtomicU64,
    /// Writes refused by Consul for good.
    pub rejected: AtomicU64,
    /// Writes abandoned at shutdown.
    pub abandoned: AtomicU64,
    /// Time from submission to commit of each committed write.
    pub latency: WriteLatency,
    /// Sum of transaction round trips, µs.
    pub txn_us_sum: AtomicU64,
    /// Transactions sent (committed or not).
    pub txn_count: AtomicU64,
}

impl WriterMetrics {
    /// Whether the writer is currently failing to reach Consul.
    pub fn in_outage(&self) -> bool {
        self.outage.load(Ordering::Relaxed) != 0
    }

    pub(super) fn observe_latency(&self, d: Duration) {
        self.latency.observe(d);
    }
}

/// Upper bounds of [`WriteLatency`]'s buckets, µs: from a write that rode a
/// transaction already on its way (under a millisecond on a local agent) to
/// one that waited out an outage with capped backoff (tens of seconds).
pub const WRITE_LATENCY_BOUNDS_US: [u64; 15] = [
    500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000,
    2_500_000, 5_000_000, 10_000_000, 30_000_000,
];

/// A latency histogram in the fixed buckets of [`WRITE_LATENCY_BOUNDS_US`],
/// kept as plain atomics: this crate knows no metrics library, its user
/// exposes the histogram in whatever format it serves (hax: Prometheus).
/// Unlike an average and a maximum, bucket counts add up across nodes and
/// time windows.
#[derive(Debug, Default)]
pub struct WriteLatency {
    /// Observations per bucket, not cumulative; the last is above every
    /// bound.
    buckets: [AtomicU64; 16],
    sum_us: AtomicU64,
}

impl WriteLatency {
    /// Records one observation.
    pub fn observe(&self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        let i = WRITE_LATENCY_BOUNDS_US
            .iter()
            .position(|b| us <= *b)
            .unwrap_or(WRITE_LATENCY_BOUNDS_US.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.buckets.iter().map(|b| b.load(Ordering::Relaxed)).sum()
    }

    /// Sum of the observations, µs.
    pub fn sum_us(&self) -> u64 {
        self.sum_us.load(Ordering::Relaxed)
    }

    /// Observations per bucket (not cumulative), paired with the bucket's
    /// upper bound in µs; `None` for the last, unbounded one.
    pub fn buckets(&self) -> impl Iterator<Item = (Option<u64>, u64)> + '_ {
        self.buckets.iter().enumerate().map(|(i, b)| {
            (
                WRITE_LATENCY_BOUNDS_US.get(i).copied(),
                b.load(Ordering::Relaxed),
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_latencies_land_in_the_bucket_of_their_upper_bound() {
        let l = WriteLatency::default();
        // On a bound, just above it, past the last one.
        for us in [100, 500, 501, 30_000_000, 30_000_001, u64::MAX / 2] {
            l.observe(Duration::from_micros(us));
        }
        let counts: Vec<(Option<u64>, u64)> = l.buckets().filter(|(_, n)| *n > 0).collect();
        assert_eq!(
            counts,
            [
                (Some(500), 2),
                (Some(1_000), 1),
                (Some(30_000_000), 1),
                (None, 2)
            ]
        );
        assert_eq!(l.count(), 6);
        assert_eq!(l.buckets().count(), WRITE_LATENCY_BOUNDS_US.len() + 1);
    }
}
