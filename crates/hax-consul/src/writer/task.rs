//! The writer's task: pending writes coalesced per key, batched into
//! transactions, retried through Consul outages, queue publications given
//! their epoch numbers.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::backoff::Backoff;
use crate::client::Consistency;
use crate::kv::{normalize_key, MAX_VALUE_SIZE};
use crate::queue::{append_ops, repair_epoch, AppendPlan};
use crate::schema::{decode_decimal, QueueKind};
use crate::{ConsulClient, ConsulError, KvPair, QueryOptions, TxnOp};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::ack::*;
use super::op::*;

/// A waiting key write.
pub(super) struct PendingKey {
    /// `None`: delete.
    pub(super) value: Option<Vec<u8>>,
    pub(super) acks: Vec<Ack>,
    pub(super) first_seq: u64,
    pub(super) since: Instant,
}

/// A waiting queue entry (body already encoded).
pub(super) struct PendingPublish {
    pub(super) queue: QueueKind,
    pub(super) body: String,
    pub(super) ack: Option<Ack>,
    pub(super) seq: u64,
    pub(super) since: Instant,
}

pub(super) enum Slot {
    Key(String),
    Publish(PendingPublish),
}

#[derive(Default)]
pub(super) struct State {
    pub(super) keys: HashMap<String, PendingKey>,
    pub(super) order: VecDeque<Slot>,
    pub(super) acks: usize,
    pub(super) next_seq: u64,
    /// Lowest submission sequence number in the batch being sent.
    pub(super) in_flight_seq: Option<u64>,
    pub(super) in_flight: usize,
    pub(super) closed: bool,
}

/// Slots the pending map and queue keep once the writer is idle. A burst
/// (a thousand processes restarting) grows both to its size, and neither a
/// `HashMap` nor a `VecDeque` gives its room back by itself: the largest
/// burst's would stay.
const IDLE_CAPACITY: usize = 64;

impl State {
    /// Gives back the room of a burst once nothing waits.
    pub(super) fn shrink_when_empty(&mut self) {
        if self.keys.is_empty() && self.keys.capacity() > IDLE_CAPACITY {
            self.keys.shrink_to(IDLE_CAPACITY);
        }
        if self.order.is_empty() && self.order.capacity() > IDLE_CAPACITY {
            self.order.shrink_to(IDLE_CAPACITY);
        }
    }

    /// Lowest sequence number not yet durable.
    pub(super) fn lowest_outstanding(&self) -> Option<u64> {
        let waiting = self.order.iter().filter_map(|s| match s {
            Slot::Key(k) => self.keys.get(k).map(|p| p.first_seq),
            Slot::Publish(p) => Some(p.seq),
        });
        waiting.chain(self.in_flight_seq).min()
    }
}

pub(super) struct Shared {
    pub(super) config: WriterConfig,
    pub(super) state: Mutex<State>,
    /// Wakes the task: something to write, or closed.
    pub(super) work: Notify,
    /// Wakes submitters waiting for room.
    pub(super) room: Notify,
    /// Wakes flushers: a batch finished.
    pub(super) progress: Notify,
    pub(super) metrics: Arc<WriterMetrics>,
    /// Stop retrying and fail what is left.
    pub(super) abandon: CancellationToken,
    pub(super) task: Mutex<Option<JoinHandle<()>>>,
}

impl Shared {
    pub(super) fn update_gauges(&self, st: &State) {
        let m = &self.metrics;
        m.queue_depth
            .store(st.order.len() as u64, Ordering::Relaxed);
        m.waiting_acks.store(st.acks as u64, Ordering::Relaxed);
        m.in_flight.store(st.in_flight as u64, Ordering::Relaxed);
    }
}

pub(super) enum Prepared {
    Key { key: String, value: Option<Vec<u8>> },
    Publish { queue: QueueKind, body: String },
}

/// Validates a write before it is queued, so that a bad one fails its
/// caller instead of a whole batch later.
pub(super) fn prepare(op: &WriteOp) -> Result<Prepared, WriteError> {
    let key_of = |key: &str| -> Result<String, WriteError> {
        let k = normalize_key(key).map_err(|e| WriteError::Invalid {
            key: key.to_owned(),
            reason: e.to_string(),
        })?;
        if k.is_empty() || k.ends_with('/') {
            return Err(WriteError::Invalid {
                key: key.to_owned(),
                reason: "not a key of one entry".to_owned(),
            });
        }
        Ok(k)
    };
    let size_ok = |key: &str, len: usize| {
        if len > MAX_VALUE_SIZE {
            Err(WriteError::Invalid {
                key: key.to_owned(),
                reason: format!("{len} bytes, over Consul's limit of {MAX_VALUE_SIZE}"),
            })
        } else {
            Ok(())
        }
    };
    match op {
        WriteOp::Put { key, value } => {
            let key = key_of(key)?;
            size_ok(&key, value.len())?;
            Ok(Prepared::Key {
                key,
                value: Some(value.clone()),
            })
        }
        WriteOp::Delete { key } => Ok(Prepared::Key {
            key: key_of(key)?,
            value: None,
        }),
        WriteOp::Publish { queue, message } => {
            let body = message
                .encode(queue.prefix())
                .map_err(|e| WriteError::Invalid {
                    key: queue.prefix().to_owned(),
                    reason: e.to_string(),
                })?;
            size_ok(queue.prefix(), body.len())?;
            Ok(Prepared::Publish {
                queue: *queue,
                body,
            })
        }
    }
}

/// One transaction's worth of writes.
#[derive(Default)]
pub(super) struct Batch {
    pub(super) keys: Vec<(String, PendingKey)>,
    pub(super) publishes: Vec<PendingPublish>,
    /// Queue entries of earlier attempts whose answer was lost: if one of
    /// them is in Consul with our body, that attempt committed.
    pub(super) landed_if: Vec<(String, String)>,
}

impl Batch {
    pub(super) fn len(&self) -> usize {
        self.keys.len() + self.publishes.len()
    }

    pub(super) fn min_seq(&self) -> Option<u64> {
        let k = self.keys.iter().map(|(_, p)| p.first_seq);
        k.chain(self.publishes.iter().map(|p| p.seq)).min()
    }

    pub(super) fn ack_count(&self) -> usize {
        self.keys.iter().map(|(_, p)| p.acks.len()).sum::<usize>()
            + self.publishes.iter().filter(|p| p.ack.is_some()).count()
    }

    /// Queues used, in first-use order, with their entries.
    pub(super) fn queues(&self) -> Vec<(QueueKind, Vec<&PendingPublish>)> {
        let mut out: Vec<(QueueKind, Vec<&PendingPublish>)> = Vec::new();
        for p in &self.publishes {
            match out.iter_mut().find(|(q, _)| *q == p.queue) {
                Some((_, v)) => v.push(p),
                None => out.push((p.queue, vec![p])),
            }
        }
        out
    }

    /// Every write as a batch of its own.
    pub(super) fn split(self) -> Vec<Batch> {
        let keys = self.keys.into_iter().map(|k| Batch {
            keys: vec![k],
            ..Batch::default()
        });
        let pubs = self.publishes.into_iter().map(|p| Batch {
            publishes: vec![p],
            ..Batch::default()
        });
        keys.chain(pubs).collect()
    }

    pub(super) fn describe(&self) -> String {
        match (self.keys.first(), self.publishes.first()) {
            (Some((k, _)), _) if self.len() == 1 => k.clone(),
            (None, Some(p)) if self.len() == 1 => p.queue.prefix().to_owned(),
            _ => format!("{} writes", self.len()),
        }
    }

    pub(super) fn complete(self, outcome: &Result<(), WriteError>, metrics: &WriterMetrics) {
        let now = Instant::now();
        for (_, p) in self.keys {
            if outcome.is_ok() {
                metrics.observe_latency(now - p.since);
            }
            for a in p.acks {
                a.complete(outcome.clone());
            }
        }
        for p in self.publishes {
            if outcome.is_ok() {
                metrics.observe_latency(now - p.since);
            }
            if let Some(a) = p.ack {
                a.complete(outcome.clone());
            }
        }
    }
}

/// How one attempt failed.
pub(super) enum AttemptError {
    /// Consul is unavailable: try again later.
    Outage(ConsulError),
    /// Another writer moved an epoch counter: try again at once.
    Conflict,
    /// Consul refused: retrying the same cannot help.
    Refused(String),
}

pub(super) fn classify(e: ConsulError) -> AttemptError {
    if e.is_retryable() {
        AttemptError::Outage(e)
    } else {
        AttemptError::Refused(e.to_string())
    }
}

/// The epoch counter of a queue as last seen: value and modify index.
pub(super) type Epoch = (u64, u64);

pub(super) enum Outcome {
    Committed,
    Refused(String),
    Abandoned,
}

pub(super) struct Task {
    pub(super) shared: Arc<Shared>,
    pub(super) client: ConsulClient,
    /// Epoch counters as this writer last left them, so that a publication
    /// needs no read while no one else publishes.
    pub(super) epochs: HashMap<QueueKind, Epoch>,
}

impl Task {
    pub(super) async fn run(mut self) {
        loop {
            let batch = {
                let mut st = lock(&self.shared.state);
                if self.shared.abandon.is_cancelled() {
                    self.abandon_all(&mut st);
                    return;
                }
                if st.order.is_empty() {
                    if st.closed {
                        tracing::debug!("Consul writer finished");
                        return;
                    }
                    st.shrink_when_empty();
                    None
                } else {
                    Some(self.take_batch(&mut st))
                }
            };
            match batch {
                Some(batch) => self.process(batch).await,
                None => {
                    tokio::select! {
                        _ = self.shared.work.notified() => {}
                        _ = self.shared.abandon.cancelled() => {}
                    }
                }
            }
        }
    }

    pub(super) fn abandon_all(&self, st: &mut State) {
        let order = std::mem::take(&mut st.order);
        let mut keys = std::mem::take(&mut st.keys);
        st.acks = 0;
        self.shared.update_gauges(st);
        let mut n = 0;
        for slot in order {
            n += 1;
            match slot {
                Slot::Key(k) => {
                    for a in keys.remove(&k).map(|p| p.acks).unwrap_or_default() {
                        a.complete(Err(WriteError::Abandoned));
                    }
                }
                Slot::Publish(p) => {
                    if let Some(a) = p.ack {
                        a.complete(Err(WriteError::Abandoned));
                    }
                }
            }
        }
        if n > 0 {
            tracing::warn!(writes = n, "Consul writer stopped; writes abandoned");
        }
        self.shared
            .metrics
            .abandoned
            .fetch_add(n, Ordering::Relaxed);
        self.shared.progress.notify_waiters();
        self.shared.room.notify_waiters();
    }

    pub(super) fn take_batch(&self, st: &mut State) -> Batch {
        let cfg = &self.shared.config;
        let mut batch = Batch::default();
        let mut ops = 0;
        let mut bytes = 0;
        let mut queues: Vec<QueueKind> = Vec::new();
        while let Some(slot) = st.order.front() {
            let (cost, size) = match slot {
                Slot::Key(k) => (
                    1,
                    st.keys
                        .get(k)
                        .and_then(|p| p.value.as_ref())
                        .map_or(0, Vec::len),
                ),
                // The first of a queue: the epoch's check-and-set, the
                // check that its key is free, the entry; the others: the
                // entry.
                Slot::Publish(p) => (if queues.contains(&p.queue) { 1 } else { 3 }, p.body.len()),
            };
            if ops > 0 && (ops + cost > cfg.max_batch_ops || bytes + size > cfg.max_batch_bytes) {
                break;
            }
            ops += cost;
            bytes += size;
            match st.order.pop_front() {
                Some(Slot::Key(k)) => {
                    if let Some(p) = st.keys.remove(&k) {
                        batch.keys.push((k, p));
                    }
                }
                Some(Slot::Publish(p)) => {
                    if !queues.contains(&p.queue) {
                        queues.push(p.queue);
                    }
                    batch.publishes.push(p);
                }
                None => break,
            }
        }
        st.in_flight_seq = batch.min_seq();
        st.in_flight = batch.len();
        self.shared.update_gauges(st);
        // Taking the batch freed slots.
        self.shared.room.notify_waiters();
        batch
    }

    pub(super) async fn process(&mut self, batch: Batch) {
        let acks = batch.ack_count();
        let n = batch.len() as u64;
        let (batch, outcome) = self.commit(batch).await;
        let metrics = &self.shared.metrics;
        match outcome {
            Outcome::Committed => {
                metrics.committed.fetch_add(n, Ordering::Relaxed);
                metrics.batches.fetch_add(1, Ordering::Relaxed);
                batch.complete(&Ok(()), metrics);
            }
            Outcome::Refused(reason) if batch.len() > 1 => {
                tracing::warn!(writes = batch.len(), %reason, "Consul refused a batch; writing its writes one by one");
                for single in batch.split() {
                    let (single, outcome) = self.commit(single).await;
                    self.finish_single(single, outcome);
                }
            }
            outcome => self.finish_single(batch, outcome),
        }
        let mut st = lock(&self.shared.state);
        st.acks = st.acks.saturating_sub(acks);
        st.in_flight_seq = None;
        st.in_flight = 0;
        self.shared.update_gauges(&st);
        drop(st);
        self.shared.room.notify_waiters();
        self.shared.progress.notify_waiters();
    }

    pub(super) fn finish_single(&self, batch: Batch, outcome: Outcome) {
        let metrics = &self.shared.metrics;
        let n = batch.len() as u64;
        match outcome {
            Outcome::Committed => {
                metrics.committed.fetch_add(n, Ordering::Relaxed);
                metrics.batches.fetch_add(1, Ordering::Relaxed);
                batch.complete(&Ok(()), metrics);
            }
            Outcome::Refused(reason) => {
                let key = batch.describe();
                tracing::error!(%key, %reason, "Consul refused a write; dropping it");
                metrics.rejected.fetch_add(n, Ordering::Relaxed);
                batch.complete(&Err(WriteError::Rejected { key, reason }), metrics);
            }
            Outcome::Abandoned => {
                metrics.abandoned.fetch_add(n, Ordering::Relaxed);
                batch.complete(&Err(WriteError::Abandoned), metrics);
            }
        }
    }

    /// Sends the batch until it commits, is refused, or the writer is told
    /// to abandon.
    pub(super) async fn commit(&mut self, mut batch: Batch) -> (Batch, Outcome) {
        let cfg = self.shared.config.clone();
        let metrics = Arc::clone(&self.shared.metrics);
        let mut backoff = Backoff::new(cfg.backoff_initial, cfg.backoff_max).jittered();
        let mut outage_since: Option<Instant> = None;
        let mut conflicts = 0u32;
        loop {
            if self.shared.abandon.is_cancelled() {
                return (batch, Outcome::Abandoned);
            }
            // At the shutdown deadline an attempt stuck on a hung agent is
            // given up too, not only the pauses between attempts.
            let abandon = self.shared.abandon.clone();
            let result = tokio::select! {
                r = self.attempt(&mut batch) => r,
                _ = abandon.cancelled() => return (batch, Outcome::Abandoned),
            };
            if result.is_ok() || matches!(result, Err(AttemptError::Refused(_))) {
                if let Some(since) = outage_since {
                    metrics.outage.store(0, Ordering::Relaxed);
                    tracing::info!(after = ?since.elapsed(), "Consul writes resumed");
                }
            }
            let pause = match result {
                Ok(()) => return (batch, Outcome::Committed),
                Err(AttemptError::Refused(reason)) => {
                    metrics.errors.fetch_add(1, Ordering::Relaxed);
                    return (batch, Outcome::Refused(reason));
                }
                Err(AttemptError::Conflict) => {
                    metrics.conflicts.fetch_add(1, Ordering::Relaxed);
                    conflicts += 1;
                    // Another writer is publishing: spread out a little.
                    Duration::from_millis(fastrand::u64(0..=(2u64 << conflicts.min(5))))
                }
                Err(AttemptError::Outage(e)) => {
                    metrics.errors.fetch_add(1, Ordering::Relaxed);
                    metrics.retries.fetch_add(1, Ordering::Relaxed);
                    if outage_since.is_none() {
                        outage_since = Some(Instant::now());
                        metrics.outage.store(1, Ordering::Relaxed);
                        tracing::warn!(error = %e, writes = batch.len(), "Consul unavailable; holding writes and retrying");
                    } else {
                        tracing::debug!(error = %e, "Consul write attempt failed");
                    }
                    backoff.next_pause()
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = self.shared.abandon.cancelled() => {}
            }
        }
    }

    pub(super) async fn epoch(&mut self, queue: QueueKind) -> Result<Epoch, AttemptError> {
        if let Some(e) = self.epochs.get(&queue) {
            return Ok(*e);
        }
        let key = queue.epoch_key();
        let epoch = match self.read_consistent(key).await? {
            None => (0, 0),
            Some(p) => (
                decode_decimal(key, &p.value).map_err(|e| AttemptError::Refused(e.to_string()))?,
                p.modify_index,
            ),
        };
        self.epochs.insert(queue, epoch);
        Ok(epoch)
    }

    /// Reads `key` as of every commit. A leader just restarted answers
    /// from its log replay in the default mode: an entry that did land may
    /// not show yet (and would be appended again), the epoch counter may be
    /// behind.
    pub(super) async fn read_consistent(&self, key: &str) -> Result<Option<KvPair>, AttemptError> {
        let opts = QueryOptions {
            consistency: Consistency::Consistent,
            ..QueryOptions::default()
        };
        Ok(self
            .client
            .kv_get_with(key, &opts)
            .await
            .map_err(classify)?
            .value)
    }

    /// One transaction attempt.
    pub(super) async fn attempt(&mut self, batch: &mut Batch) -> Result<(), AttemptError> {
        for (key, body) in &batch.landed_if {
            let got = self.read_consistent(key).await?;
            if got.is_some_and(|p| p.value == body.as_bytes()) {
                tracing::info!(%key, "an earlier attempt whose answer was lost had committed");
                self.shared
                    .metrics
                    .recovered
                    .fetch_add(1, Ordering::Relaxed);
                self.epochs.clear();
                return Ok(());
            }
        }
        let mut ops: Vec<TxnOp> = batch
            .keys
            .iter()
            .map(|(k, p)| match &p.value {
                Some(v) => TxnOp::set(k.clone(), v.clone()),
                None => TxnOp::delete(k.clone()),
            })
            .collect();
        struct Plan {
            queue: QueueKind,
            append: AppendPlan,
            seen: Epoch,
            first: (String, String),
        }
        let mut plans: Vec<Plan> = Vec::new();
        let queues: Vec<(QueueKind, Vec<String>)> = batch
            .queues()
            .into_iter()
            .map(|(q, ps)| (q, ps.iter().map(|p| p.body.clone()).collect()))
            .collect();
        for (queue, bodies) in queues {
            let seen = self.epoch(queue).await?;
            let append = append_ops(queue, seen, bodies, &mut ops);
            let Some(first) = append.first.clone() else {
                continue;
            };
            plans.push(Plan {
                queue,
                append,
                seen,
                first,
            });
        }
        let metrics = &self.shared.metrics;
        let started = Instant::now();
        let result = self.client.txn(&ops).await;
        let us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        metrics.txn_us_sum.fetch_add(us, Ordering::Relaxed);
        metrics.txn_count.fetch_add(1, Ordering::Relaxed);
        match result {
            Ok(resp) => {
                for plan in &plans {
                    let key = plan.queue.epoch_key();
                    match resp
                        .results
                        .iter()
                        .filter(|r| r.key == key)
                        .map(|r| r.modify_index)
                        .max()
                    {
                        Some(index) => {
                            self.epochs.insert(plan.queue, (plan.append.last, index));
                        }
                        None => {
                            self.epochs.remove(&plan.queue);
                        }
                    }
                }
                Ok(())
            }
            Err(ConsulError::TxnFailed { errors }) => {
                for plan in &plans {
                    self.epochs.remove(&plan.queue);
                }
                for plan in &plans {
                    if errors
                        .iter()
                        .any(|e| plan.append.checks.contains(&e.op_index))
                    {
                        repair_epoch(&self.client, plan.queue, plan.seen.1)
                            .await
                            .map_err(classify)?;
                        return Err(AttemptError::Conflict);
                    }
                }
                if plans
                    .iter()
                    .any(|p| errors.iter().any(|e| e.op_index == p.append.cas_op))
                {
                    return Err(AttemptError::Conflict);
                }
                Err(AttemptError::Refused(
                    ConsulError::TxnFailed { errors }.to_string(),
                ))
            }
            Err(e) => {
                for plan in &plans {
                    self.epochs.remove(&plan.queue);
                    // Refused connections and rate limits never reach the
                    // store; anything else may have committed unseen.
                    if !matches!(
                        e,
                        ConsulError::ConnectionRefused { .. } | ConsulError::RateLimited { .. }
                    ) {
                        batch.landed_if.push(plan.first.clone());
                    }
                }
                Err(classify(e))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// After a burst has been taken in batches, the idle writer keeps a few
    /// slots, not the burst's thousands (issue 15, point 8).
    #[test]
    fn an_idle_writer_gives_back_a_bursts_room() {
        let mut st = State::default();
        for i in 0..5_000u64 {
            let key = format!("processes/0x7200000000000001:{i:#x}");
            st.keys.insert(
                key.clone(),
                PendingKey {
                    value: Some(b"{}".to_vec()),
                    acks: Vec::new(),
                    first_seq: i,
                    since: Instant::now(),
                },
            );
            st.order.push_back(Slot::Key(key));
        }
        while let Some(Slot::Key(k)) = st.order.pop_front() {
            st.keys.remove(&k);
        }
        assert!(st.keys.capacity() >= 5_000 && st.order.capacity() >= 5_000);
        st.shrink_when_empty();
        assert!(
            st.keys.capacity() <= 2 * IDLE_CAPACITY,
            "{}",
            st.keys.capacity()
        );
        assert!(
            st.order.capacity() <= 2 * IDLE_CAPACITY,
            "{}",
            st.order.capacity()
        );
    }
}
