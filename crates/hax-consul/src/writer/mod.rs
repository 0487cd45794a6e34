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

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use crate::ConsulClient;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

mod ack;
mod op;
mod task;

use self::ack::lock;
pub use self::ack::{Ack, AckWaiter};
pub use self::op::{
    FlushTimeout, ShutdownReport, WriteError, WriteLatency, WriteOp, WriterConfig, WriterMetrics,
    WRITE_LATENCY_BOUNDS_US,
};
use self::task::*;

fn refuse(e: WriteError, ack: Option<Ack>) -> TrySubmitError {
    if let Some(a) = ack {
        a.complete(Err(e.clone()));
    }
    TrySubmitError::Refused(e)
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
