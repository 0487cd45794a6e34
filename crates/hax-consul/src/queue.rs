//! The broadcast queue (BQ) and event queue (EQ): epoch-numbered KV entries.
//!
//! Publishing takes the next epoch with a transaction that check-and-sets the
//! epoch counter and creates the entry together, so concurrent writers never
//! share or skip an epoch: the loser of a race gets a 409, re-reads and tries
//! again.
//!
//! Consuming walks the entries above the consumer's offset in numeric order.
//! After each entry the offset is advanced by a transaction that also checks
//! the offset has not moved (another consumer with the same name) and may
//! carry the handler's own KV writes. Effects written that way happen exactly
//! once with the offset: a consumer killed at any point resumes after the last
//! committed entry and neither repeats nor skips one. Effects outside Consul
//! (e.g. notifying Motr) happen once for as long as the consumer lives: when
//! a commit fails (Consul down, the answer lost), the consumer remembers the
//! entries it handled and commits their operations with a later attempt
//! instead of handling them again. Only a consumer that dies between handling
//! an entry and its commit handles it again (at-least-once across a crash).
//! A consumer may commit several entries at once (one transaction, the last
//! one's offset), trading Consul round trips for more entries handled again
//! after a crash.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::time::{Duration, Instant};

use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

use crate::client::{Consistency, ConsulClient, QueryOptions};
use crate::error::ConsulError;
use crate::kv::KvPair;
use crate::schema::{decode_decimal, QueueKind, QueueMessage, SchemaError};
use crate::txn::{TxnOp, MAX_TXN_OPS};
use crate::watch::{PrefixSource, WatchConfig, Watcher};

/// Errors of publishing and consuming.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum QueueError {
    /// Consul failed. A failed publish may or may not have been applied when
    /// the failure is a lost answer (timeout, reset): it is not retried here.
    #[error(transparent)]
    Consul(#[from] ConsulError),
    /// A key or value does not fit the schema.
    #[error(transparent)]
    Schema(#[from] SchemaError),
    /// Too many concurrent writers: the epoch kept moving.
    #[error("{kind:?} queue: epoch still contended after {attempts} attempts")]
    Contended {
        /// The queue.
        kind: QueueKind,
        /// Attempts made.
        attempts: usize,
    },
    /// The handler asked for more KV operations than fit in one transaction.
    #[error(
        "handler of {key} returned {ops} operations; at most {max} fit with the offset update"
    )]
    TooManyOps {
        /// Entry key.
        key: String,
        /// Operations returned.
        ops: usize,
        /// Limit.
        max: usize,
    },
    /// The handler failed; the entry stays pending.
    #[error("handler failed on {key}: {reason}")]
    Handler {
        /// Entry key.
        key: String,
        /// The handler's error.
        reason: String,
    },
    /// The handler's own transaction operations failed (the offset did not move).
    #[error("effects of {key} rolled back: {source}")]
    Effects {
        /// Entry key.
        key: String,
        /// The transaction error.
        #[source]
        source: ConsulError,
    },
}

/// Result alias of the queues.
pub type Result<T, E = QueueError> = std::result::Result<T, E>;

/// How many times a publish re-reads the epoch after losing a race.
const PUBLISH_ATTEMPTS: usize = 200;
/// How many times one consumption re-reads an offset moved by someone else.
const MAX_OFFSET_RACES: usize = 1000;

/// Appends messages to a queue.
#[derive(Debug, Clone)]
pub struct QueuePublisher {
    client: ConsulClient,
    kind: QueueKind,
}

impl QueuePublisher {
    /// A publisher of `kind`.
    pub fn new(client: ConsulClient, kind: QueueKind) -> Self {
        QueuePublisher { client, kind }
    }

    /// Appends `message` and returns its epoch. A missing epoch counter counts
    /// as 0 and is created (only if still absent), so the first entry is 1;
    /// clusters where cfgen set it to 1 start at 2, as with the original.
    pub async fn publish(&self, message: &QueueMessage) -> Result<u64> {
        let epoch_key = self.kind.epoch_key();
        for attempt in 0..PUBLISH_ATTEMPTS {
            let current = self.client.kv_get(epoch_key).await?.value;
            let (epoch, index) = match &current {
                None => (0, 0),
                Some(p) => (decode_decimal(epoch_key, &p.value)?, p.modify_index),
            };
            let body = message.encode(&self.kind.entry_key(epoch + 1))?;
            let mut ops = Vec::with_capacity(3);
            let plan = append_ops(self.kind, (epoch, index), vec![body], &mut ops);
            match self.client.txn(&ops).await {
                Ok(_) => {
                    tracing::debug!(queue = ?self.kind, epoch = plan.last, "published");
                    return Ok(plan.last);
                }
                Err(ConsulError::TxnFailed { errors }) => {
                    if errors.iter().any(|e| plan.checks.contains(&e.op_index)) {
                        repair_epoch(&self.client, self.kind, index).await?;
                    } else {
                        // Lost the race to another writer: back off a little,
                        // with jitter so the writers spread out.
                        let ms = fastrand::u64(0..=(2u64 << attempt.min(5)));
                        tokio::time::sleep(Duration::from_millis(ms)).await;
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(QueueError::Contended {
            kind: self.kind,
            attempts: PUBLISH_ATTEMPTS,
        })
    }
}

/// Where the operations of one queue append stand in a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AppendPlan {
    /// The epoch counter's check-and-set.
    pub cas_op: usize,
    /// The operations that fail when the counter is behind its entries.
    pub checks: std::ops::Range<usize>,
    /// The epoch of the last entry appended.
    pub last: u64,
    /// The first entry's key and body: whether it landed tells whether a
    /// transaction whose answer was lost committed.
    pub first: Option<(String, String)>,
}

/// The operations that append `bodies` to the queue `kind` whose counter was
/// seen at `seen` (value, modify index), added to `ops`: the counter's
/// check-and-set to the last epoch, a check that the first new key is free,
/// and the entries. The protocol of every publication, so that no two
/// writers of hax ever append differently.
pub(crate) fn append_ops(
    kind: QueueKind,
    seen: (u64, u64),
    bodies: Vec<String>,
    ops: &mut Vec<TxnOp>,
) -> AppendPlan {
    let last = seen.0 + bodies.len() as u64;
    let cas_op = ops.len();
    ops.push(TxnOp::cas(kind.epoch_key(), last.to_string(), seen.1));
    let mut first = None;
    for (epoch, body) in (seen.0 + 1..).zip(bodies) {
        let key = kind.entry_key(epoch);
        if first.is_none() {
            // Never overwrite an entry, even if the counter went back (a
            // restored store): the entries above a counter are contiguous
            // from the next one (trimming deletes only below it), so the
            // next key being free means the ones after it are too.
            ops.push(TxnOp::check_not_exists(key.clone()));
            first = Some((key.clone(), body.clone()));
        }
        ops.push(TxnOp::set(key, body));
    }
    AppendPlan {
        cas_op,
        checks: cas_op + 1..ops.len(),
        last,
        first,
    }
}

/// The counter of `kind` is behind its entries (deleted or restored): moves
/// it up to the highest existing entry, if it still has modify index
/// `index`. Losing that race means someone else moved the counter: fine.
pub(crate) async fn repair_epoch(
    client: &ConsulClient,
    kind: QueueKind,
    index: u64,
) -> std::result::Result<(), ConsulError> {
    let keys = client.kv_keys(kind.prefix(), None).await?.value;
    let highest = keys
        .iter()
        .filter_map(|k| kind.parse_entry_key(k))
        .max()
        .unwrap_or(0);
    tracing::warn!(queue = ?kind, highest, "epoch counter behind the entries, moving it up");
    client
        .kv_cas(kind.epoch_key(), highest.to_string(), index)
        .await?;
    Ok(())
}

/// One queue entry handed to a consumer.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueEntry {
    /// Its epoch.
    pub epoch: u64,
    /// Its key.
    pub key: String,
    /// The decoded message, or why it could not be decoded (the handler
    /// decides whether to skip it).
    pub message: std::result::Result<QueueMessage, String>,
}

impl QueueEntry {
    /// Builds entries from KV pairs (a listing or a watch payload): keys that
    /// are not entries of `kind` are ignored; sorted by epoch.
    pub fn from_pairs(kind: QueueKind, pairs: &[KvPair]) -> Vec<QueueEntry> {
        let mut entries: Vec<QueueEntry> = pairs
            .iter()
            .filter_map(|p| {
                let epoch = kind.parse_entry_key(&p.key)?;
                Some(QueueEntry {
                    epoch,
                    key: p.key.clone(),
                    message: QueueMessage::decode(&p.key, &p.value).map_err(|e| e.to_string()),
                })
            })
            .collect();
        entries.sort_by_key(|e| e.epoch);
        entries
    }
}

/// What one [`QueueTrimmer::trim`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrimReport {
    /// Entries deleted.
    pub deleted: u64,
    /// Entries up to this epoch are gone (0: none yet).
    pub trimmed_to: u64,
    /// Consumers whose offset is below what was trimmed: they lost the
    /// entries between, as the retention bound says.
    pub lagging: Vec<(String, u64)>,
}

/// Deletes the entries of a queue that several consumers read and none
/// deletes (the BQ: every node's hax reads every entry).
///
/// An entry goes once every consumer with an offset has consumed it. A
/// consumer that stopped (its offset has not moved for a while though
/// entries wait for it) holds only the newest `retain` entries: a node that
/// is down does not make the queue grow without bound (every watch delivery
/// carries the whole queue), while a node that is only slow loses nothing. A consumer that never committed an
/// offset holds nothing back; it starts with the oldest entry left. The
/// newest entry always stays, so the epoch counter can be repaired from it.
#[derive(Debug)]
pub struct QueueTrimmer {
    client: ConsulClient,
    kind: QueueKind,
    retain: u64,
    stalled_after: Duration,
    /// The oldest entry that may exist, once known.
    next: Option<u64>,
    /// Each consumer's offset and since when it has not moved while
    /// behind.
    progress: HashMap<String, (u64, Instant)>,
}

impl QueueTrimmer {
    /// A trimmer of `kind` keeping at most `retain` entries (at least 1)
    /// for consumers whose offset has not moved for `stalled_after` while
    /// entries wait for them. Offsets are seen moving only by calls of
    /// [`QueueTrimmer::trim`]: with [`Duration::ZERO`] every consumer
    /// behind counts as stalled.
    pub fn new(
        client: ConsulClient,
        kind: QueueKind,
        retain: u64,
        stalled_after: Duration,
    ) -> Self {
        QueueTrimmer {
            client,
            kind,
            retain: retain.max(1),
            stalled_after,
            next: None,
            progress: HashMap::new(),
        }
    }

    /// Deletes what may go now.
    pub async fn trim(&mut self) -> Result<TrimReport> {
        let opts = QueryOptions {
            consistency: Consistency::Consistent,
            ..QueryOptions::default()
        };
        let epoch_key = self.kind.epoch_key();
        let Some(epoch) = self.client.kv_get_with(epoch_key, &opts).await?.value else {
            return Ok(TrimReport::default());
        };
        let epoch = decode_decimal(epoch_key, &epoch.value)?;
        let prefix = self.kind.offsets_prefix();
        let offsets = self.client.kv_list_with(prefix, &opts).await?.value;
        let mut consumers = Vec::new();
        for pair in &offsets {
            let name = pair.key.strip_prefix(prefix).unwrap_or(&pair.key);
            match decode_decimal(&pair.key, &pair.value) {
                Ok(offset) => consumers.push((name.to_owned(), offset)),
                // That consumer cannot read its offset either; it cannot
                // hold the queue.
                Err(e) => {
                    tracing::warn!(key = %pair.key, error = %e, "offset not a number; ignored for trimming")
                }
            }
        }
        let now = Instant::now();
        self.progress
            .retain(|name, _| consumers.iter().any(|(n, _)| n == name));
        let mut live = None::<u64>;
        let mut stalled = None::<u64>;
        for (name, offset) in &consumers {
            let seen = self.progress.entry(name.clone()).or_insert((*offset, now));
            // Moving, or with nothing left to read: not stalled.
            if seen.0 != *offset || *offset >= epoch {
                *seen = (*offset, now);
            }
            let slot = if now.duration_since(seen.1) >= self.stalled_after {
                &mut stalled
            } else {
                &mut live
            };
            *slot = Some(slot.map_or(*offset, |m: u64| m.min(*offset)));
        }
        let newest_to_drop = epoch.saturating_sub(1);
        let live_bound = live.unwrap_or(newest_to_drop);
        let bound = epoch.saturating_sub(self.retain);
        // No consumer yet: the entries wait for the first, up to the bound.
        let stalled_bound = match (stalled, live) {
            (Some(s), _) => s.max(bound),
            (None, None) => bound,
            (None, Some(_)) => newest_to_drop,
        };
        let upto = live_bound.min(stalled_bound).min(newest_to_drop);
        let next = match self.next {
            Some(n) => n,
            None => {
                let keys = self.client.kv_keys(self.kind.prefix(), None).await?.value;
                keys.iter()
                    .filter_map(|k| self.kind.parse_entry_key(k))
                    .min()
                    .unwrap_or(upto + 1)
            }
        };
        let mut report = TrimReport {
            trimmed_to: next.saturating_sub(1),
            lagging: consumers.into_iter().filter(|(_, o)| *o < upto).collect(),
            ..TrimReport::default()
        };
        let mut from = next;
        while from <= upto {
            let to = upto.min(from + MAX_TXN_OPS as u64 - 1);
            let ops: Vec<TxnOp> = (from..=to)
                .map(|n| TxnOp::delete(self.kind.entry_key(n)))
                .collect();
            self.client.txn(&ops).await?;
            report.deleted += to - from + 1;
            report.trimmed_to = to;
            from = to + 1;
            self.next = Some(from);
        }
        self.next = Some(from.max(next));
        Ok(report)
    }
}

/// Settings of a consumer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerConfig {
    /// Queue.
    pub kind: QueueKind,
    /// Name under which the offset is stored (`bq-delivered/<name>`): the
    /// node's hostname for the BQ.
    pub name: String,
    /// Delete each entry together with its offset update (the EQ is consumed
    /// this way; BQ entries are shared by all nodes and go by
    /// [`QueueTrimmer`]).
    pub delete_consumed: bool,
}

#[derive(Debug, Default)]
struct OffsetState {
    /// Last consumed epoch, `None` if nothing was ever consumed.
    value: Option<u64>,
    /// Modify index of the offset key, 0 if absent.
    index: u64,
    /// Entries handled here whose commit failed, with their operations: a
    /// later attempt commits them without handling them again. At most one
    /// failed commit's entries (consumption stops at a failed commit).
    uncommitted: BTreeMap<u64, Vec<TxnOp>>,
}

/// What handling one entry produced, for
/// [`QueueConsumer::consume_entries_batched`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Handled {
    /// KV operations to commit with the offset.
    pub ops: Vec<TxnOp>,
    /// The handling did something outside Consul (told Motr, say): commit
    /// it now, with the entries before it, so that a crash repeats at most
    /// this one.
    pub commit_now: bool,
}

/// Entries handled, not committed yet.
#[derive(Default)]
struct Pending<'a> {
    /// Index (in the sorted entries) of the first one.
    first: usize,
    count: usize,
    last: Option<&'a QueueEntry>,
    ops: Vec<TxnOp>,
    /// Each entry's epoch and how many of `ops` are its own, in order.
    spans: Vec<(u64, usize)>,
}

/// Consumes a queue in order, keeping its offset in Consul.
#[derive(Debug)]
pub struct QueueConsumer {
    client: ConsulClient,
    config: ConsumerConfig,
    offset_key: String,
    // Serialises consumption within this process: two watch deliveries
    // handled at once must not run the same entry twice.
    state: Mutex<OffsetState>,
}

impl QueueConsumer {
    /// A consumer; fails on a name that cannot be a key segment.
    pub fn new(client: ConsulClient, config: ConsumerConfig) -> Result<Self> {
        let offset_key = config.kind.offset_key(&config.name)?;
        Ok(QueueConsumer {
            client,
            config,
            offset_key,
            state: Mutex::new(OffsetState::default()),
        })
    }

    /// The offset key.
    pub fn offset_key(&self) -> &str {
        &self.offset_key
    }

    async fn load(&self, state: &mut OffsetState) -> Result<()> {
        // The offset decides what is handled next. A leader that was just
        // restarted serves old values in the default mode while it replays
        // its log: handing out entries again, their broadcasts included,
        // with states that are no longer true. Read it linearizably (the
        // agent refuses until it has caught up; the caller retries).
        let opts = QueryOptions {
            consistency: Consistency::Consistent,
            ..QueryOptions::default()
        };
        let got = self
            .client
            .kv_get_with(&self.offset_key, &opts)
            .await?
            .value;
        let (value, index) = match got {
            None => (None, 0),
            Some(p) => (
                if p.value.is_empty() {
                    None
                } else {
                    Some(decode_decimal(&self.offset_key, &p.value)?)
                },
                p.modify_index,
            ),
        };
        state.value = value;
        state.index = index;
        // A commit whose answer was lost may have landed after all.
        if let Some(v) = value {
            state.uncommitted.retain(|&epoch, _| epoch > v);
        }
        Ok(())
    }

    /// Makes this consumer known before it consumes anything: creates its
    /// offset at 0 (nothing consumed) when absent, so that a
    /// [`QueueTrimmer`] keeps the entries it has not read.
    pub async fn register(&self) -> Result<()> {
        // Refused when it exists: then there is nothing to do.
        self.client.kv_cas(&self.offset_key, "0", 0).await?;
        Ok(())
    }

    /// The last consumed epoch as stored in Consul.
    pub async fn offset(&self) -> Result<Option<u64>> {
        let mut state = self.state.lock().await;
        self.load(&mut state).await?;
        Ok(state.value)
    }

    /// Reads the queue and handles every entry above the offset, in order.
    /// Returns how many entries were handled.
    pub async fn consume_available<F, Fut, E>(&self, handler: F) -> Result<usize>
    where
        F: FnMut(&QueueEntry) -> Fut,
        Fut: Future<Output = std::result::Result<Vec<TxnOp>, E>>,
        E: std::fmt::Display,
    {
        let pairs = self.client.kv_list(self.config.kind.prefix()).await?.value;
        self.consume_entries(&QueueEntry::from_pairs(self.config.kind, &pairs), handler)
            .await
    }

    /// The entries `announced` (e.g. by a watch POST, which anyone who
    /// reaches the port can send) as Consul holds them, read back in
    /// transactions of gets; `None` when Consul does not hold one of them
    /// (beyond the queue's end, or deleted), so that the caller reads the
    /// whole queue instead. What the announcement carried is never used.
    pub async fn read_back(&self, announced: &[QueueEntry]) -> Result<Option<Vec<QueueEntry>>> {
        let mut pairs = Vec::with_capacity(announced.len());
        for chunk in announced.chunks(MAX_TXN_OPS) {
            let ops: Vec<TxnOp> = chunk.iter().map(|e| TxnOp::get(e.key.clone())).collect();
            match self.client.txn(&ops).await {
                Ok(resp) => pairs.extend(resp.results),
                // A get of a missing key rolls the transaction back.
                Err(ConsulError::TxnFailed { .. }) => return Ok(None),
                Err(e) => return Err(e.into()),
            }
        }
        let entries = QueueEntry::from_pairs(self.config.kind, &pairs);
        Ok((entries.len() == announced.len()).then_some(entries))
    }

    /// [`QueueConsumer::consume_available`], committing up to `batch`
    /// entries at once ([`QueueConsumer::consume_entries_batched`]).
    pub async fn consume_available_batched<F, Fut, E>(
        &self,
        batch: usize,
        handler: F,
    ) -> Result<usize>
    where
        F: FnMut(&QueueEntry) -> Fut,
        Fut: Future<Output = std::result::Result<Handled, E>>,
        E: std::fmt::Display,
    {
        let pairs = self.client.kv_list(self.config.kind.prefix()).await?.value;
        let entries = QueueEntry::from_pairs(self.config.kind, &pairs);
        self.consume_entries_batched(&entries, batch, handler).await
    }

    /// Handles the given entries (e.g. from a watch payload) that are above
    /// the offset, in epoch order. For each, `handler` returns KV operations
    /// to commit atomically with the offset update (none for pure side
    /// effects). A handler error stops consumption and leaves that entry
    /// pending. Returns how many entries were handled.
    pub async fn consume_entries<F, Fut, E>(
        &self,
        entries: &[QueueEntry],
        mut handler: F,
    ) -> Result<usize>
    where
        F: FnMut(&QueueEntry) -> Fut,
        Fut: Future<Output = std::result::Result<Vec<TxnOp>, E>>,
        E: std::fmt::Display,
    {
        let handler = |entry: &QueueEntry| {
            let handled = handler(entry);
            async move {
                handled.await.map(|ops| Handled {
                    ops,
                    commit_now: true,
                })
            }
        };
        self.consume_entries_batched(entries, 1, handler).await
    }

    /// [`QueueConsumer::consume_entries`], committing up to `batch` entries
    /// in one transaction: their operations together with the offset of the
    /// last one. A batch ends earlier when the operations would not fit in
    /// a transaction ([`MAX_TXN_OPS`]), and with an entry whose handling
    /// asks to be committed at once ([`Handled::commit_now`]). An entry is
    /// handled before the ones before it are committed: a consumer killed
    /// meanwhile handles them again, so entries with effects outside Consul
    /// ask for `commit_now`, and a crash repeats at most one of them, as
    /// without batches. A handler error commits the entries handled before
    /// it, then stops.
    pub async fn consume_entries_batched<F, Fut, E>(
        &self,
        entries: &[QueueEntry],
        batch: usize,
        mut handler: F,
    ) -> Result<usize>
    where
        F: FnMut(&QueueEntry) -> Fut,
        Fut: Future<Output = std::result::Result<Handled, E>>,
        E: std::fmt::Display,
    {
        let batch = batch.max(1);
        let mut sorted: Vec<&QueueEntry> = entries.iter().collect();
        sorted.sort_by_key(|e| e.epoch);
        let mut state = self.state.lock().await;
        // Always start from the stored offset: another process may have
        // consumed under the same name since the last call.
        self.load(&mut state).await?;
        let mut pending = Pending::default();
        let mut handled = 0;
        let mut i = 0;
        let mut moved = 0;
        loop {
            let Some(entry) = sorted.get(i).copied() else {
                // The end: commit what is pending, or go on from where a
                // race left the offset.
                let last = pending.last.map_or(0, |e| e.epoch);
                if self.flush(&mut state, &mut pending, &mut handled).await? {
                    break;
                }
                i = pending.first;
                pending = Pending::default();
                self.after_race(&mut state, &mut moved, last).await?;
                continue;
            };
            if state.value.is_some_and(|o| entry.epoch <= o) {
                i += 1;
                continue;
            }
            // Offset 0: registered, nothing read yet; such a consumer starts
            // with the oldest entry left.
            if state.value.is_some_and(|o| o > 0 && entry.epoch > o + 1) && pending.count == 0 {
                tracing::warn!(consumer = %self.offset_key, offset = ?state.value, next = entry.epoch, "entries below the next one were trimmed before this consumer reached them");
            }
            let remembered = state.uncommitted.remove(&entry.epoch);
            let reused = remembered.is_some();
            let (mut ops, commit_now) = match remembered {
                Some(ops) => (ops, false),
                None => match handler(entry).await {
                    Ok(h) => (h.ops, h.commit_now),
                    Err(e) => {
                        self.flush(&mut state, &mut pending, &mut handled).await?;
                        return Err(QueueError::Handler {
                            key: entry.key.clone(),
                            reason: e.to_string(),
                        });
                    }
                },
            };
            if self.config.delete_consumed && !reused {
                ops.push(TxnOp::delete(entry.key.clone()));
            }
            let extra = ops.len();
            if extra + 2 > MAX_TXN_OPS {
                self.flush(&mut state, &mut pending, &mut handled).await?;
                let fixed = if self.config.delete_consumed { 3 } else { 2 };
                return Err(QueueError::TooManyOps {
                    key: entry.key.clone(),
                    ops: extra + 2 - fixed,
                    max: MAX_TXN_OPS - fixed,
                });
            }
            let mut raced = false;
            if pending.count > 0 && pending.ops.len() + extra + 2 > MAX_TXN_OPS {
                raced = !self.flush(&mut state, &mut pending, &mut handled).await?;
                if raced {
                    // Handled, not committed: remembered like the others.
                    state.uncommitted.insert(entry.epoch, ops);
                    ops = Vec::new();
                }
            }
            if !raced {
                if pending.count == 0 {
                    pending.first = i;
                }
                pending.spans.push((entry.epoch, ops.len()));
                pending.ops.append(&mut ops);
                pending.last = Some(entry);
                pending.count += 1;
                i += 1;
                if pending.count >= batch || commit_now {
                    raced = !self.flush(&mut state, &mut pending, &mut handled).await?;
                }
            }
            if raced {
                i = pending.first;
                pending = Pending::default();
                self.after_race(&mut state, &mut moved, entry.epoch).await?;
            }
        }
        Ok(handled)
    }

    /// The offset moved under a commit: someone else consumed under this
    /// name, or a commit of ours whose answer was lost landed late. Goes on
    /// from the stored offset; entries handled here stay remembered, so the
    /// ones still above it are not handled again.
    async fn after_race(
        &self,
        state: &mut OffsetState,
        moved: &mut usize,
        epoch: u64,
    ) -> Result<()> {
        *moved += 1;
        if *moved > MAX_OFFSET_RACES {
            return Err(QueueError::Contended {
                kind: self.config.kind,
                attempts: *moved,
            });
        }
        tracing::info!(consumer = %self.offset_key, epoch, "offset moved under a commit");
        self.load(state).await
    }

    /// Keeps the operations of `txn` (a commit of `spans`) for a later
    /// commit of the same entries.
    fn remember(state: &mut OffsetState, spans: Vec<(u64, usize)>, txn: Vec<TxnOp>) {
        let mut ops = txn.into_iter().skip(2);
        for (epoch, n) in spans {
            state
                .uncommitted
                .insert(epoch, ops.by_ref().take(n).collect());
        }
    }

    /// Commits the pending entries with their operations. `Ok(false)` when
    /// the offset had moved (nothing committed; the entries are remembered).
    async fn flush(
        &self,
        state: &mut OffsetState,
        pending: &mut Pending<'_>,
        handled: &mut usize,
    ) -> Result<bool> {
        let Some(last) = pending.last else {
            return Ok(true);
        };
        let guard = if state.index == 0 {
            TxnOp::check_not_exists(self.offset_key.clone())
        } else {
            TxnOp::check_index(self.offset_key.clone(), state.index)
        };
        let mut txn = vec![
            guard,
            TxnOp::set(self.offset_key.clone(), last.epoch.to_string()),
        ];
        txn.append(&mut pending.ops);
        match self.client.txn(&txn).await {
            Ok(resp) => {
                state.value = Some(last.epoch);
                // The guard's result carries the old index; the set's the
                // new one.
                state.index = resp
                    .results
                    .iter()
                    .filter(|r| r.key == self.offset_key)
                    .map(|r| r.modify_index)
                    .max()
                    .unwrap_or(resp.index);
                *handled += pending.count;
                *pending = Pending::default();
                Ok(true)
            }
            Err(ConsulError::TxnFailed { errors }) if errors.iter().any(|e| e.op_index == 0) => {
                Self::remember(state, std::mem::take(&mut pending.spans), txn);
                Ok(false)
            }
            Err(e @ ConsulError::TxnFailed { .. }) => {
                // Refused as a whole: committing the same again cannot help.
                *pending = Pending::default();
                Err(QueueError::Effects {
                    key: last.key.clone(),
                    source: e,
                })
            }
            Err(e) => {
                // Not committed, or the answer was lost after a commit: the
                // next call re-reads the stored offset, then commits what is
                // still above it without handling it again.
                Self::remember(state, std::mem::take(&mut pending.spans), txn);
                *pending = Pending::default();
                Err(e.into())
            }
        }
    }

    /// Follows the queue with a watcher and handles entries as they appear,
    /// until `cancel`. Handler and Consul errors are logged and retried on
    /// the next change or after `retry_after`.
    pub async fn run<F, Fut, E>(
        &self,
        watch: WatchConfig,
        retry_after: Duration,
        cancel: &CancellationToken,
        mut handler: F,
    ) where
        F: FnMut(&QueueEntry) -> Fut,
        Fut: Future<Output = std::result::Result<Vec<TxnOp>, E>>,
        E: std::fmt::Display,
    {
        let watcher = Watcher::spawn(
            self.client.clone(),
            PrefixSource(self.config.kind.prefix().to_owned()),
            watch,
            cancel,
        );
        let mut rx = watcher.subscribe();
        loop {
            let snapshot = rx.borrow_and_update().clone();
            if snapshot.loaded {
                let pairs: Vec<KvPair> = snapshot.value.values().cloned().collect();
                let entries = QueueEntry::from_pairs(self.config.kind, &pairs);
                if let Err(e) = self.consume_entries(&entries, &mut handler).await {
                    tracing::warn!(consumer = %self.offset_key, error = %e, "queue consumption failed, will retry");
                    tokio::select! {
                        _ = cancel.cancelled() => break,
                        _ = tokio::time::sleep(retry_after) => continue,
                    }
                }
            }
            tokio::select! {
                _ = cancel.cancelled() => break,
                changed = rx.changed() => if changed.is_err() { break },
            }
        }
        watcher.shutdown().await;
    }
}
