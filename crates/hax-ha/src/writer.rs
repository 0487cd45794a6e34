//! The Consul write path of the daemon: one task that takes KV writes and
//! queue publications, coalesces writes of the same key, batches them into
//! transactions, retries through Consul outages without losing anything,
//! and only then completes them (delivers the Motr messages that asked for
//! them, resolves waiters).
//!
//! # Coalescing and order
//!
//! A write of a key that is still waiting replaces the waiting value (last
//! value wins) and its completion joins the ones already attached: they all
//! complete when the final value is durable. Keys keep the position of their
//! first waiting write. Batches are sent one at a time, so a key written
//! again after its batch left is written after it, and queue entries
//! (`bq/<n>`, `eq/<n>`) are appended in submission order.
//!
//! # Bounds
//!
//! At most [`WriterConfig::max_pending`] keys and queue entries wait to be
//! sent, and at most [`WriterConfig::max_acks`] completions wait in all.
//! A write that would pass a bound waits for room in
//! [`KvWriter::submit`]; [`KvWriter::try_submit`] never waits and hands the
//! write and its completion back instead ([`TrySubmitError::Full`]). A write
//! of a key already waiting needs no room (it coalesces), unless it brings a
//! completion and the completions are at their bound.
//!
//! # Failures
//!
//! Connection refused, timeouts, transport errors, 429, 5xx and "no leader"
//! are an outage: the batch is retried, with capped exponential backoff and
//! jitter, until it commits. Queue publications are guarded by a
//! check-and-set of the epoch counter; when an attempt's answer was lost,
//! the next attempts first look whether it landed, so an entry is never
//! appended twice. Consul refusing a batch outright (a 4xx) is retried one
//! write at a time, so only the offending write fails; its completion gets
//! [`WriteError::Rejected`].
//!
//! A request whose answer was lost may in principle still be applied by an
//! agent that was hung, after later writes: the writer resends the same
//! value, so this only matters if the key was written again in between.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use hax_consul::client::Consistency;
use hax_consul::kv::{normalize_key, MAX_VALUE_SIZE};
use hax_consul::schema::{decode_decimal, QueueKind, QueueMessage};
use hax_consul::txn::MAX_TXN_OPS;
use hax_consul::{ConsulClient, ConsulError, KvPair, QueryOptions, TxnOp};
use tokio::sync::{oneshot, Notify};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

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
    fn sanitized(mut self) -> Self {
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

/// What to do once a write is durable (or definitely failed). Called once,
/// from the writer task: it must not block.
pub struct Ack(Box<dyn FnOnce(Result<(), WriteError>) + Send>);

impl fmt::Debug for Ack {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Ack")
    }
}

impl Ack {
    /// An ack calling `f` with the outcome.
    pub fn new(f: impl FnOnce(Result<(), WriteError>) + Send + 'static) -> Self {
        Ack(Box::new(f))
    }

    /// Delivers a received Motr message once the write is durable. A write
    /// that failed for good is delivered too, with a warning: Motr cannot be
    /// told anything else, and keeping it would only make the peer resend
    /// the same message to the same failure.
    pub fn delivery(delivery: hax_core::Delivery) -> Self {
        Ack::new(move |outcome| {
            if let Err(e) = &outcome {
                tracing::warn!(link = %delivery.link(), tag = %delivery.tag(), error = %e, "delivering a message whose Consul write failed");
            }
            delivery.deliver();
        })
    }

    /// An ack and the future that resolves with its outcome.
    pub fn channel() -> (Ack, AckWaiter) {
        let (tx, rx) = oneshot::channel();
        (
            Ack::new(move |outcome| {
                let _ = tx.send(outcome);
            }),
            AckWaiter(rx),
        )
    }

    /// Splits into `n` acks; this one completes once all of them have, with
    /// the first error among them. `n == 0` completes it at once.
    pub fn split(self, n: usize) -> Vec<Ack> {
        if n == 0 {
            self.complete(Ok(()));
            return Vec::new();
        }
        let group = Arc::new(Mutex::new(AckGroup {
            remaining: n,
            outcome: Ok(()),
            ack: Some(self),
        }));
        (0..n)
            .map(|_| {
                let group = Arc::clone(&group);
                Ack::new(move |outcome| {
                    let done = {
                        let mut g = lock(&group);
                        if let (Err(e), Ok(())) = (outcome, &g.outcome) {
                            g.outcome = Err(e);
                        }
                        g.remaining -= 1;
                        if g.remaining == 0 {
                            g.ack.take().map(|a| (a, g.outcome.clone()))
                        } else {
                            None
                        }
                    };
                    if let Some((ack, outcome)) = done {
                        ack.complete(outcome);
                    }
                })
            })
            .collect()
    }

    /// Runs the ack.
    pub fn complete(self, outcome: Result<(), WriteError>) {
        (self.0)(outcome)
    }
}

struct AckGroup {
    remaining: usize,
    outcome: Result<(), WriteError>,
    ack: Option<Ack>,
}

/// Resolves with the outcome of an [`Ack::channel`] ack;
/// [`WriteError::Abandoned`] if the ack was dropped unrun.
#[derive(Debug)]
pub struct AckWaiter(oneshot::Receiver<Result<(), WriteError>>);

impl Future for AckWaiter {
    type Output = Result<(), WriteError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0)
            .poll(cx)
            .map(|r| r.unwrap_or(Err(WriteError::Abandoned)))
    }
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

/// Why [`KvWriter::try_submit`] did not take a write.
#[derive(Debug, thiserror::Error)]
pub enum TrySubmitError {
    /// No room now: the write and its ack are handed back untouched.
    #[error("the Consul writer is full")]
    Full {
        /// The write.
        op: WriteOp,
        /// Its ack.
        ack: Option<Ack>,
    },
    /// The write can never be taken; its ack has been completed with this
    /// error.
    #[error(transparent)]
    Refused(WriteError),
}

/// The writer did not finish in time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{pending} writes still waiting for Consul at the deadline")]
pub struct FlushTimeout {
    /// Keys and queue entries not yet durable.
    pub pending: usize,
}

/// What [`KvWriter::shutdown`] left behind.
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
    /// Sum over committed writes of the time from submission to commit, µs.
    pub latency_us_sum: AtomicU64,
    /// Committed writes counted in `latency_us_sum`.
    pub latency_count: AtomicU64,
    /// Longest time from submission to commit, µs.
    pub latency_us_max: AtomicU64,
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

    fn observe_latency(&self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        self.latency_us_sum.fetch_add(us, Ordering::Relaxed);
        self.latency_count.fetch_add(1, Ordering::Relaxed);
        self.latency_us_max.fetch_max(us, Ordering::Relaxed);
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock leaves plain data behind; keep going.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A waiting key write.
struct PendingKey {
    /// `None`: delete.
    value: Option<Vec<u8>>,
    acks: Vec<Ack>,
    first_seq: u64,
    since: Instant,
}

/// A waiting queue entry (body already encoded).
struct PendingPublish {
    queue: QueueKind,
    body: String,
    ack: Option<Ack>,
    seq: u64,
    since: Instant,
}

enum Slot {
    Key(String),
    Publish(PendingPublish),
}

#[derive(Default)]
struct State {
    keys: HashMap<String, PendingKey>,
    order: VecDeque<Slot>,
    acks: usize,
    next_seq: u64,
    /// Lowest submission sequence number in the batch being sent.
    in_flight_seq: Option<u64>,
    in_flight: usize,
    closed: bool,
}

impl State {
    /// Lowest sequence number not yet durable.
    fn lowest_outstanding(&self) -> Option<u64> {
        let waiting = self.order.iter().filter_map(|s| match s {
            Slot::Key(k) => self.keys.get(k).map(|p| p.first_seq),
            Slot::Publish(p) => Some(p.seq),
        });
        waiting.chain(self.in_flight_seq).min()
    }
}

struct Shared {
    config: WriterConfig,
    state: Mutex<State>,
    /// Wakes the task: something to write, or closed.
    work: Notify,
    /// Wakes submitters waiting for room.
    room: Notify,
    /// Wakes flushers: a batch finished.
    progress: Notify,
    metrics: Arc<WriterMetrics>,
    /// Stop retrying and fail what is left.
    abandon: CancellationToken,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl Shared {
    fn update_gauges(&self, st: &State) {
        let m = &self.metrics;
        m.queue_depth
            .store(st.order.len() as u64, Ordering::Relaxed);
        m.waiting_acks.store(st.acks as u64, Ordering::Relaxed);
        m.in_flight.store(st.in_flight as u64, Ordering::Relaxed);
    }
}

/// Handle to the writer task; cheap to clone.
#[derive(Clone)]
pub struct KvWriter {
    shared: Arc<Shared>,
}

impl fmt::Debug for KvWriter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KvWriter")
            .field("config", &self.shared.config)
            .finish_non_exhaustive()
    }
}

impl KvWriter {
    /// Starts the writer task on the current tokio runtime.
    pub fn spawn(client: ConsulClient, config: WriterConfig) -> Self {
        let shared = Arc::new(Shared {
            config: config.sanitized(),
            state: Mutex::new(State::default()),
            work: Notify::new(),
            room: Notify::new(),
            progress: Notify::new(),
            metrics: Arc::new(WriterMetrics::default()),
            abandon: CancellationToken::new(),
            task: Mutex::new(None),
        });
        let task = Task {
            shared: Arc::clone(&shared),
            client,
            epochs: HashMap::new(),
        };
        let handle = tokio::spawn(task.run());
        *lock(&shared.task) = Some(handle);
        KvWriter { shared }
    }

    /// The counters.
    pub fn metrics(&self) -> Arc<WriterMetrics> {
        Arc::clone(&self.shared.metrics)
    }

    /// Takes a write, waiting for room if needed (see the module's bounds).
    /// `ack` runs once the write is durable or failed for good. On error the
    /// ack has been completed with the same error.
    pub async fn submit(&self, op: WriteOp, ack: Option<Ack>) -> Result<(), WriteError> {
        let mut op = op;
        let mut ack = ack;
        loop {
            let room = self.shared.room.notified();
            tokio::pin!(room);
            // Registered before the check, so a wake-up between the check
            // and the wait is not lost.
            room.as_mut().enable();
            match self.try_submit(op, ack) {
                Ok(()) => return Ok(()),
                Err(TrySubmitError::Refused(e)) => return Err(e),
                Err(TrySubmitError::Full { op: o, ack: a }) => {
                    op = o;
                    ack = a;
                }
            }
            room.await;
        }
    }

    /// Takes a write now or hands it back ([`TrySubmitError::Full`]); never
    /// waits.
    pub fn try_submit(&self, op: WriteOp, ack: Option<Ack>) -> Result<(), TrySubmitError> {
        let prepared = match prepare(&op) {
            Ok(p) => p,
            Err(e) => return Err(refuse(e, ack)),
        };
        let shared = &self.shared;
        let mut st = lock(&shared.state);
        if st.closed {
            drop(st);
            return Err(refuse(WriteError::Closed, ack));
        }
        let needs_slot = match &prepared {
            Prepared::Key { key, .. } => !st.keys.contains_key(key),
            Prepared::Publish { .. } => true,
        };
        if (needs_slot && st.order.len() >= shared.config.max_pending)
            || (ack.is_some() && st.acks >= shared.config.max_acks)
        {
            drop(st);
            shared.metrics.full.fetch_add(1, Ordering::Relaxed);
            return Err(TrySubmitError::Full { op, ack });
        }
        let seq = st.next_seq;
        st.next_seq += 1;
        if ack.is_some() {
            st.acks += 1;
        }
        let now = Instant::now();
        match prepared {
            Prepared::Key { key, value } => {
                if let Some(p) = st.keys.get_mut(&key) {
                    p.value = value;
                    p.acks.extend(ack);
                    shared.metrics.coalesced.fetch_add(1, Ordering::Relaxed);
                } else {
                    st.keys.insert(
                        key.clone(),
                        PendingKey {
                            value,
                            acks: ack.into_iter().collect(),
                            first_seq: seq,
                            since: now,
                        },
                    );
                    st.order.push_back(Slot::Key(key));
                }
            }
            Prepared::Publish { queue, body } => {
                st.order.push_back(Slot::Publish(PendingPublish {
                    queue,
                    body,
                    ack,
                    seq,
                    since: now,
                }))
            }
        }
        shared.update_gauges(&st);
        drop(st);
        shared.metrics.submitted.fetch_add(1, Ordering::Relaxed);
        shared.work.notify_one();
        Ok(())
    }

    /// Takes a write and waits until it is durable (or failed for good).
    pub async fn write(&self, op: WriteOp) -> Result<(), WriteError> {
        let (ack, done) = Ack::channel();
        self.submit(op, Some(ack)).await?;
        done.await
    }

    /// Waits until every write taken before the call is durable (or failed
    /// for good), or the deadline passes.
    pub async fn flush(&self, deadline: Instant) -> Result<(), FlushTimeout> {
        let upto = lock(&self.shared.state).next_seq;
        loop {
            let progress = self.shared.progress.notified();
            tokio::pin!(progress);
            progress.as_mut().enable();
            let pending = {
                let st = lock(&self.shared.state);
                match st.lowest_outstanding() {
                    Some(s) if s < upto => Some(st.order.len() + st.in_flight),
                    _ => None,
                }
            };
            let Some(pending) = pending else {
                return Ok(());
            };
            if tokio::time::timeout_at(deadline, progress).await.is_err() {
                return Err(FlushTimeout { pending });
            }
        }
    }

    /// Stops taking writes: later submissions fail with
    /// [`WriteError::Closed`]; what was taken is still written.
    pub fn close(&self) {
        lock(&self.shared.state).closed = true;
        self.shared.work.notify_one();
        // Submitters waiting for room must see the close.
        self.shared.room.notify_waiters();
    }

    /// Closes, writes what is waiting until `deadline`, then stops the task;
    /// whatever is still not durable then is failed with
    /// [`WriteError::Abandoned`]. Calling it again returns at once.
    pub async fn shutdown(&self, deadline: Instant) -> ShutdownReport {
        self.close();
        let before = self.shared.metrics.abandoned.load(Ordering::Relaxed);
        if let Err(e) = self.flush(deadline).await {
            tracing::warn!(
                pending = e.pending,
                "Consul writes not finished by the shutdown deadline; abandoning them"
            );
            self.shared.abandon.cancel();
        }
        self.shared.work.notify_one();
        let handle = lock(&self.shared.task).take();
        if let Some(handle) = handle {
            if let Err(e) = handle.await {
                tracing::error!(error = %e, "Consul writer task failed");
            }
        }
        ShutdownReport {
            abandoned: self.shared.metrics.abandoned.load(Ordering::Relaxed) - before,
        }
    }
}

fn refuse(e: WriteError, ack: Option<Ack>) -> TrySubmitError {
    if let Some(a) = ack {
        a.complete(Err(e.clone()));
    }
    TrySubmitError::Refused(e)
}

enum Prepared {
    Key { key: String, value: Option<Vec<u8>> },
    Publish { queue: QueueKind, body: String },
}

/// Validates a write before it is queued, so that a bad one fails its
/// caller instead of a whole batch later.
fn prepare(op: &WriteOp) -> Result<Prepared, WriteError> {
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
struct Batch {
    keys: Vec<(String, PendingKey)>,
    publishes: Vec<PendingPublish>,
    /// Queue entries of earlier attempts whose answer was lost: if one of
    /// them is in Consul with our body, that attempt committed.
    landed_if: Vec<(String, String)>,
}

impl Batch {
    fn len(&self) -> usize {
        self.keys.len() + self.publishes.len()
    }

    fn min_seq(&self) -> Option<u64> {
        let k = self.keys.iter().map(|(_, p)| p.first_seq);
        k.chain(self.publishes.iter().map(|p| p.seq)).min()
    }

    fn ack_count(&self) -> usize {
        self.keys.iter().map(|(_, p)| p.acks.len()).sum::<usize>()
            + self.publishes.iter().filter(|p| p.ack.is_some()).count()
    }

    /// Queues used, in first-use order, with their entries.
    fn queues(&self) -> Vec<(QueueKind, Vec<&PendingPublish>)> {
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
    fn split(self) -> Vec<Batch> {
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

    fn describe(&self) -> String {
        match (self.keys.first(), self.publishes.first()) {
            (Some((k, _)), _) if self.len() == 1 => k.clone(),
            (None, Some(p)) if self.len() == 1 => p.queue.prefix().to_owned(),
            _ => format!("{} writes", self.len()),
        }
    }

    fn complete(self, outcome: &Result<(), WriteError>, metrics: &WriterMetrics) {
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
enum AttemptError {
    /// Consul is unavailable: try again later.
    Outage(ConsulError),
    /// Another writer moved an epoch counter: try again at once.
    Conflict,
    /// Consul refused: retrying the same cannot help.
    Refused(String),
}

fn classify(e: ConsulError) -> AttemptError {
    if e.is_retryable() {
        AttemptError::Outage(e)
    } else {
        AttemptError::Refused(e.to_string())
    }
}

/// The epoch counter of a queue as last seen: value and modify index.
type Epoch = (u64, u64);

enum Outcome {
    Committed,
    Refused(String),
    Abandoned,
}

struct Task {
    shared: Arc<Shared>,
    client: ConsulClient,
    /// Epoch counters as this writer last left them, so that a publication
    /// needs no read while no one else publishes.
    epochs: HashMap<QueueKind, Epoch>,
}

impl Task {
    async fn run(mut self) {
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

    fn abandon_all(&self, st: &mut State) {
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

    fn take_batch(&self, st: &mut State) -> Batch {
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

    async fn process(&mut self, batch: Batch) {
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

    fn finish_single(&self, batch: Batch, outcome: Outcome) {
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
    async fn commit(&mut self, mut batch: Batch) -> (Batch, Outcome) {
        let cfg = self.shared.config.clone();
        let metrics = Arc::clone(&self.shared.metrics);
        let mut backoff = cfg.backoff_initial;
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
                    // Equal jitter: half fixed, half random.
                    let half = backoff / 2;
                    let jitter = Duration::from_micros(fastrand::u64(
                        0..=u64::try_from(half.as_micros()).unwrap_or(u64::MAX),
                    ));
                    let pause = half + jitter;
                    backoff = (backoff * 2).min(cfg.backoff_max);
                    pause
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = self.shared.abandon.cancelled() => {}
            }
        }
    }

    async fn epoch(&mut self, queue: QueueKind) -> Result<Epoch, AttemptError> {
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
    async fn read_consistent(&self, key: &str) -> Result<Option<KvPair>, AttemptError> {
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
    async fn attempt(&mut self, batch: &mut Batch) -> Result<(), AttemptError> {
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
            cas_op: usize,
            checks: std::ops::Range<usize>,
            seen: Epoch,
            last: u64,
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
            let last = seen.0 + bodies.len() as u64;
            let cas_op = ops.len();
            ops.push(TxnOp::cas(queue.epoch_key(), last.to_string(), seen.1));
            let mut first = None;
            for (i, body) in bodies.into_iter().enumerate() {
                let key = queue.entry_key(seen.0 + 1 + i as u64);
                if first.is_none() {
                    // Never overwrite an entry, even if the counter went
                    // back (a restored store): the entries above a counter
                    // are contiguous from the next one (trimming deletes
                    // only below it), so the next key being free means the
                    // ones after it are too.
                    ops.push(TxnOp::check_not_exists(key.clone()));
                    first = Some((key.clone(), body.clone()));
                }
                ops.push(TxnOp::set(key, body));
            }
            let Some(first) = first else { continue };
            plans.push(Plan {
                queue,
                cas_op,
                checks: cas_op + 1..ops.len(),
                seen,
                last,
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
                            self.epochs.insert(plan.queue, (plan.last, index));
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
                    if errors.iter().any(|e| plan.checks.contains(&e.op_index)) {
                        self.repair_epoch(plan.queue, plan.seen.1).await?;
                        return Err(AttemptError::Conflict);
                    }
                }
                if plans
                    .iter()
                    .any(|p| errors.iter().any(|e| e.op_index == p.cas_op))
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

    /// The counter is behind the entries (deleted or restored): move it up
    /// to the highest existing entry.
    async fn repair_epoch(&mut self, queue: QueueKind, index: u64) -> Result<(), AttemptError> {
        let keys = self
            .client
            .kv_keys(queue.prefix(), None)
            .await
            .map_err(classify)?
            .value;
        let highest = keys
            .iter()
            .filter_map(|k| queue.parse_entry_key(k))
            .max()
            .unwrap_or(0);
        tracing::warn!(queue = ?queue, highest, "epoch counter behind the entries, moving it up");
        // Losing this race means someone else moved the counter: fine.
        self.client
            .kv_cas(queue.epoch_key(), highest.to_string(), index)
            .await
            .map_err(classify)?;
        Ok(())
    }
}
