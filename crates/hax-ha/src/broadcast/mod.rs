//! HA state broadcasts: from object health updates to the notes Motr
//! processes get (with the services, drives, controllers, nodes and
//! enclosures they imply) and the configuration-tree states written to
//! Consul, then sent to the links and tracked to delivered / not delivered.
//!
//! Planning ([`plan_broadcast`]) is a pure function of a [`ClusterState`](crate::view::ClusterState),
//! the updates and the [`BroadcastOptions`]: it gives the notes, the
//! `m0conf/` state writes and the links to send to ([`BroadcastPlan`]).
//! Execution ([`Broadcaster`]) writes the states, makes them visible in the
//! [`ClusterView`] at once, and sends the notes in NVEC SETs of at most
//! [`NOTES_MAX`] notes to every selected active link.
//!
//! The rules are those of the original's `broadcast_ha_states`; where it
//! misbehaves, hax does not:
//! * every message of every chunk is returned for delivery tracking (the
//!   original returned only the last chunk's);
//! * an sdev no drive references is left out (the original broadcast the
//!   drive `0:0` for it);
//! * healths without a KV word in the original (STOPPED for devices and
//!   nodes, REPAIR... for processes) are written as their note state says
//!   instead of failing the whole broadcast;
//! * a process or node the configuration does not know yields its own note
//!   only, with a warning (the original retried forever).

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::Poll;
use std::time::Duration;

use hax_consul::schema::{ConfValue, HaxKv, SchemaError};
use hax_consul::txn::MAX_TXN_OPS;
use hax_consul::ConsulError;
use hax_core::{
    Fid, FidType, HaLink, HaMsg, HaMsgData, HaNote, HaState, LinkId, Nvec, NvecKind, Outcome,
    Tracked, NOTES_MAX,
};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_util::task::TaskTracker;

mod plan;

use self::plan::*;
pub use self::plan::{
    plan_broadcast, BroadcastPlan, ConfWrite, LinkSelection, PROTECTED_SDEV_STATES,
};
use crate::metrics::Metrics;
use crate::model::broadcast::{Broadcast, BroadcastFailed};
pub use crate::model::broadcast::{BroadcastOptions, DeliveryReport, Sent};
use crate::model::broadcast::{OutcomeOf, SentOutcome};
use crate::model::HaUpdate;
use crate::view::ClusterView;

/// Why a broadcast failed. Nothing was sent when it fails in the KV step;
/// repeating the broadcast is safe.
#[derive(Debug, thiserror::Error)]
pub enum BroadcastError {
    /// Consul failed while writing the configuration states.
    #[error("writing configuration states: {0}")]
    Consul(#[from] ConsulError),
    /// A configuration state could not be written.
    #[error("writing configuration states: {0}")]
    Schema(#[from] SchemaError),
    /// The halon interface refused the send (not running).
    #[error("sending to Motr: {0}")]
    Motr(#[from] hax_core::Error),
    /// The failure of the group of broadcasts this one was done with.
    #[error(transparent)]
    Group(Arc<BroadcastError>),
    /// The broadcaster stopped before doing the broadcast.
    #[error("the broadcaster stopped")]
    Stopped,
}

impl BroadcastError {
    /// Whether trying again later may succeed (Consul unavailable).
    pub fn is_transient(&self) -> bool {
        match self {
            BroadcastError::Consul(e) | BroadcastError::Schema(SchemaError::Consul(e)) => {
                e.is_retryable()
            }
            BroadcastError::Schema(SchemaError::Contended { .. }) => true,
            BroadcastError::Group(e) => e.is_transient(),
            BroadcastError::Schema(_) | BroadcastError::Motr(_) | BroadcastError::Stopped => false,
        }
    }
}

/// One NVEC SET handed to Motr.
#[derive(Debug)]
pub struct SentMessage {
    /// The link.
    pub link: LinkId,
    /// Which message of the notes sent together (0-based): the notes of a
    /// broadcast, or of consecutive broadcasts to the same links done
    /// together, go in NVEC SETs of at most [`NOTES_MAX`] notes.
    pub chunk: usize,
    /// How many notes the message carries.
    pub notes: usize,
    /// Its outcome to come.
    pub tracked: SentOutcome,
}

/// A broadcast as done.
#[derive(Debug)]
pub struct BroadcastReport {
    /// What was planned.
    pub plan: BroadcastPlan,
    /// Every message sent, all chunks, all links.
    pub sent: Vec<SentMessage>,
}

/// Broadcasts waiting for the broadcaster's task.
struct Request {
    updates: Vec<HaUpdate>,
    opts: BroadcastOptions,
    /// Notes sent as they are to hax's own link only, instead of a plan.
    self_link_notes: Option<Vec<HaNote>>,
    reply: oneshot::Sender<Result<BroadcastReport, BroadcastError>>,
}

/// Most broadcasts done together.
const GROUP_MAX: usize = 256;

/// Plans and performs broadcasts. `Send + Sync`: share it (in an `Arc`)
/// between the daemon's tasks.
///
/// One task does the broadcasts, in call order. What was asked while it was
/// busy is done together, as if one after the other: each broadcast is
/// planned on the state with the earlier ones' writes, all the writes go to
/// Consul in the same check-and-set transactions, and the notes of
/// consecutive broadcasts to the same links that allow it
/// ([`BroadcastOptions::coalesce`]) go in the same messages, in order. So
/// each link still gets the notes in call order, and the notes are sent
/// only once their states are in Consul; under load, a group costs one
/// Consul round trip and one message per link.
#[derive(Debug)]
pub struct Broadcaster {
    inner: Arc<Inner>,
    queue: OnceLock<mpsc::UnboundedSender<Request>>,
}

#[derive(Debug)]
struct Inner {
    view: ClusterView,
    link: HaLink,
    kv: HaxKv,
    metrics: Option<Arc<Metrics>>,
    /// Set by [`Broadcaster::stop_retrying`]: a transient Consul failure
    /// fails the group instead of being waited out.
    give_up: AtomicBool,
    /// Where the broadcaster's tasks run.
    tasks: TaskTracker,
}

/// Pauses between tries of a group whose states Consul could not take for
/// the moment (no Raft leader, agent unreachable).
const RETRY_MIN: Duration = Duration::from_millis(50);
const RETRY_MAX: Duration = Duration::from_secs(1);

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Request")
            .field("updates", &self.updates.len())
            .finish_non_exhaustive()
    }
}

impl Broadcaster {
    /// A broadcaster planning on `view`, writing through `kv`, sending
    /// through `link`, running its tasks on `tasks`. Its task starts with
    /// the first broadcast (inside a tokio runtime) and ends when the
    /// broadcaster is dropped; the tasks following messages shared by
    /// several broadcasts end when those messages have their outcome (at
    /// the latest when the halon interface stops).
    pub fn new(view: ClusterView, link: HaLink, kv: HaxKv, tasks: &TaskTracker) -> Self {
        Broadcaster {
            inner: Arc::new(Inner {
                view,
                link,
                kv,
                metrics: None,
                give_up: AtomicBool::new(false),
                tasks: tasks.clone(),
            }),
            queue: OnceLock::new(),
        }
    }

    /// Counts broadcasts and sent messages in `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        match Arc::get_mut(&mut self.inner) {
            Some(inner) => inner.metrics = Some(metrics),
            None => tracing::warn!("broadcaster already shared; metrics not attached"),
        }
        self
    }

    /// From now on, a group whose states Consul cannot take for the moment
    /// fails at once (the group being retried fails at its next try)
    /// instead of being retried until Consul takes it: at shutdown, so that
    /// the messages waiting on broadcasts are answered and Motr can stop.
    pub fn stop_retrying(&self) {
        self.inner.give_up.store(true, Ordering::Relaxed);
    }

    /// The view it plans on.
    pub fn view(&self) -> &ClusterView {
        &self.inner.view
    }

    /// Broadcasts `updates` ([`plan_broadcast`]): writes the configuration
    /// states, then sends the notes; returns every message sent, to be
    /// waited on with [`wait_for_outcomes`] if needed. While Consul cannot
    /// take the states for the moment (no leader, agent unreachable), the
    /// broadcast is planned and written again after a pause, as the
    /// original retried until the write succeeded (until
    /// [`Broadcaster::stop_retrying`]); another Consul error stops it before
    /// anything is sent, and the caller may repeat it. The broadcast takes
    /// its turn at the call; the future may be awaited later.
    pub fn broadcast_outcomes(
        &self,
        updates: Vec<HaUpdate>,
        opts: BroadcastOptions,
    ) -> impl Future<Output = Result<Vec<SentOutcome>, BroadcastError>> + Send + 'static {
        let report = self.broadcast_report(updates, opts);
        async move { Ok(report.await?.sent.into_iter().map(|s| s.tracked).collect()) }
    }

    /// Sends `notes` as they are to hax's own link only (nothing planned,
    /// nothing written), in turn with the broadcasts: what a broadcast with
    /// [`BroadcastOptions::skip_self_link`] left out.
    pub fn self_link_report(
        &self,
        notes: Vec<HaNote>,
    ) -> impl Future<Output = Result<BroadcastReport, BroadcastError>> + Send + 'static {
        self.enqueue(Vec::new(), BroadcastOptions::default(), Some(notes))
    }

    /// [`Broadcaster::broadcast_outcomes`], with the plan and the messages per link
    /// and chunk.
    pub fn broadcast_report(
        &self,
        updates: Vec<HaUpdate>,
        opts: BroadcastOptions,
    ) -> impl Future<Output = Result<BroadcastReport, BroadcastError>> + Send + 'static {
        self.enqueue(updates, opts, None)
    }

    fn enqueue(
        &self,
        updates: Vec<HaUpdate>,
        opts: BroadcastOptions,
        self_link_notes: Option<Vec<HaNote>>,
    ) -> impl Future<Output = Result<BroadcastReport, BroadcastError>> + Send + 'static {
        let queue = self.queue.get_or_init(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            self.inner.tasks.spawn(Arc::clone(&self.inner).run(rx));
            tx
        });
        let (reply, done) = oneshot::channel();
        let queued = queue.send(Request {
            updates,
            opts,
            self_link_notes,
            reply,
        });
        async move {
            queued.map_err(|_| BroadcastError::Stopped)?;
            done.await.unwrap_or(Err(BroadcastError::Stopped))
        }
    }

    /// Writes configuration states (see [`Broadcaster`]): check-and-set
    /// transactions of at most 64 operations, on the modify indexes the plan
    /// read. When the view was behind (a check failed), that batch is
    /// written again key by key from fresh reads, with the same protected
    /// states. Written values are made visible in the view at once.
    pub async fn write_states(&self, writes: &[ConfWrite]) -> Result<(), BroadcastError> {
        self.inner.write_states(writes).await
    }
}

impl Inner {
    fn count(&self, counter: impl FnOnce(&Metrics) -> &std::sync::atomic::AtomicU64) {
        if let Some(m) = &self.metrics {
            counter(m).fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    async fn run(self: Arc<Self>, mut requests: mpsc::UnboundedReceiver<Request>) {
        while let Some(first) = requests.recv().await {
            let mut group = vec![first];
            while group.len() < GROUP_MAX {
                match requests.try_recv() {
                    Ok(r) => group.push(r),
                    Err(_) => break,
                }
            }
            self.run_group(group).await;
        }
    }

    fn time(&self, step: usize, since: std::time::Instant) {
        if let Some(m) = &self.metrics {
            let us = u64::try_from(since.elapsed().as_micros()).unwrap_or(u64::MAX);
            m.broadcast_us[step].fetch_add(us, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// Does a group; while Consul cannot take its states for the moment,
    /// plans and writes it again after a pause (the original retried its
    /// writes until they succeeded). Failing it instead would lose the
    /// notes: a process event is confirmed to its m0d once its own writes
    /// are durable, and nothing else tells this node's processes of it.
    /// Retrying here, in the one task that does the broadcasts, keeps them
    /// in call order.
    async fn run_group(&self, group: Vec<Request>) {
        let mut backoff = hax_consul::backoff::Backoff::new(RETRY_MIN, RETRY_MAX);
        let mut tries = 0u32;
        let mut group = group;
        loop {
            match self.try_group(group).await {
                None => return,
                Some((again, e)) => {
                    tries += 1;
                    if tries == 1 || tries.is_power_of_two() {
                        tracing::warn!(error = %e, tries, broadcasts = again.len(), "configuration states not written, retrying the broadcasts");
                    }
                    group = again;
                }
            }
            tokio::time::sleep(backoff.next_pause()).await;
        }
    }

    /// One try of a group: `None` when done (each request answered), or
    /// the group back with the transient error that stopped it before
    /// anything was sent.
    async fn try_group(&self, group: Vec<Request>) -> Option<(Vec<Request>, BroadcastError)> {
        let t = std::time::Instant::now();
        let state = self.view.snapshot();
        let (plans, writes) = {
            let requests: Vec<(&[HaUpdate], &BroadcastOptions)> = group
                .iter()
                .map(|r| (r.updates.as_slice(), &r.opts))
                .collect();
            let (mut plans, writes) = plan_group(&state, &requests);
            for (plan, r) in plans.iter_mut().zip(&group) {
                if let Some(notes) = &r.self_link_notes {
                    plan.notes.clone_from(notes);
                    plan.targets = LinkSelection::SelfOnly;
                }
            }
            (plans, writes)
        };
        self.time(0, t);
        let t = std::time::Instant::now();
        let written = self.write_states(&writes).await;
        self.time(1, t);
        if let Err(e) = written {
            if e.is_transient() && !self.give_up.load(Ordering::Relaxed) {
                return Some((group, e));
            }
            let e = Arc::new(e);
            for r in group {
                let _ = r.reply.send(Err(BroadcastError::Group(Arc::clone(&e))));
            }
            return None;
        }
        let t = std::time::Instant::now();
        let coalesce: Vec<bool> = group.iter().map(|r| r.opts.coalesce).collect();
        let (mut sent, messages, failure) = self.send(&plans, &coalesce).await;
        self.time(2, t);
        let notes: usize = plans.iter().map(|p| p.notes.len()).sum();
        let done = plans
            .iter()
            .filter(|p| !p.notes.is_empty() || !p.kv_writes.is_empty())
            .count();
        if done > 0 {
            tracing::info!(
                broadcasts = done,
                notes,
                writes = writes.len(),
                messages,
                "HA states broadcast"
            );
        }
        if let Some(m) = &self.metrics {
            m.broadcasts
                .fetch_add(done as u64, std::sync::atomic::Ordering::Relaxed);
            m.count_sent("nvec_set", messages as u64);
        }
        self.count(|m| &m.broadcast_groups);
        for (i, (r, plan)) in group.into_iter().zip(plans).enumerate() {
            let result = match &failure {
                Some((from, e)) if i >= *from => Err(BroadcastError::Group(Arc::clone(e))),
                _ => Ok(BroadcastReport {
                    plan,
                    sent: std::mem::take(&mut sent[i]),
                }),
            };
            let _ = r.reply.send(result);
        }
        None
    }

    async fn write_states(&self, writes: &[ConfWrite]) -> Result<(), BroadcastError> {
        for (batch, ops) in writes.chunks(MAX_TXN_OPS).zip(txn_batches(writes)?) {
            let mut written = Vec::with_capacity(batch.len());
            self.count(|m| &m.conf_txns);
            match self.kv.client().txn(&ops).await {
                Ok(resp) => {
                    for w in batch {
                        let key = w.key.to_key();
                        let index = resp
                            .results
                            .iter()
                            .find(|r| r.key == key)
                            .map_or(resp.index, |r| r.modify_index);
                        written.push((w.key.clone(), w.object.clone(), index));
                    }
                }
                Err(ConsulError::TxnFailed { errors }) => {
                    self.count(|m| &m.conf_txn_conflicts);
                    tracing::debug!(
                        ?errors,
                        "configuration changed since read, writing key by key"
                    );
                    for w in batch {
                        self.kv.set_conf_state(&w.key, w.state, w.keep).await?;
                        if let Some(e) = self.kv.conf_entry(&w.key).await? {
                            if let ConfValue::Object(o) = e.value {
                                written.push((w.key.clone(), o, e.modify_index));
                            }
                        }
                    }
                }
                Err(e) => return Err(e.into()),
            }
            self.view.record_conf_writes(&written);
        }
        Ok(())
    }

    /// Sends the notes of `plans` to their selected active links:
    /// consecutive plans with the same targets that may `coalesce` share
    /// their messages (NVEC SETs of at most [`NOTES_MAX`] notes, in order). Returns the messages
    /// of each plan, how many messages were sent and, if Motr refused a
    /// send, the first plan not sent and why. A link that goes away
    /// meanwhile is skipped with a warning.
    async fn send(
        &self,
        plans: &[BroadcastPlan],
        coalesce: &[bool],
    ) -> (
        Vec<Vec<SentMessage>>,
        usize,
        Option<(usize, Arc<BroadcastError>)>,
    ) {
        let mut sent: Vec<Vec<SentMessage>> = plans.iter().map(|_| Vec::new()).collect();
        let mut messages = 0;
        if plans.iter().all(|p| p.notes.is_empty()) {
            return (sent, messages, None);
        }
        let links = self.link.links();
        let active = self.link.active_links();
        let mut shared = Vec::new();
        let mut failure = None;
        let mut i = 0;
        'runs: while i < plans.len() {
            let mut j = i + 1;
            while j < plans.len()
                && coalesce[i]
                && coalesce[j]
                && plans[j].targets == plans[i].targets
            {
                j += 1;
            }
            let to = plans[i].targets.select(&links, &active);
            let mut notes: Vec<HaNote> = Vec::new();
            let mut ranges = Vec::with_capacity(j - i);
            for p in &plans[i..j] {
                let from = notes.len();
                notes.extend_from_slice(&p.notes);
                ranges.push(from..notes.len());
            }
            if to.is_empty() {
                i = j;
                continue;
            }
            for (chunk, part) in notes.chunks(NOTES_MAX).enumerate() {
                let lo = chunk * NOTES_MAX;
                let hi = lo + part.len();
                let owners: Vec<usize> = (i..j)
                    .filter(|&m| ranges[m - i].start < hi && ranges[m - i].end > lo)
                    .collect();
                let msg = HaMsg::nvec_set(part.to_vec());
                // hax's own link gets its own form of a part that fails a
                // process (see `fencing_form`).
                let own = links.iter().find(|l| l.is_self && to.contains(&l.id));
                let fencing = own.and_then(|l| Some((l.id, fencing_form(part)?)));
                let plain: Vec<LinkId> = match &fencing {
                    Some((own, _)) => to.iter().copied().filter(|l| l != own).collect(),
                    None => to.clone(),
                };
                let mut results = Vec::new();
                let mut sends: Vec<(Vec<LinkId>, HaMsg)> = Vec::new();
                if !plain.is_empty() {
                    sends.push((plain, msg));
                }
                if let Some((own, msgs)) = fencing {
                    sends.extend(msgs.into_iter().map(|m| (vec![own], m)));
                }
                for (links, msg) in sends {
                    match self.link.broadcast(links, msg).await {
                        Ok(r) => results.extend(r),
                        Err(e) => {
                            failure = Some((i, Arc::new(BroadcastError::Motr(e))));
                            break 'runs;
                        }
                    }
                }
                for (link, result) in results {
                    let tracked = match result {
                        Ok(t) => t,
                        Err(e) => {
                            tracing::warn!(%link, error = %e, "broadcast not sent on this link");
                            continue;
                        }
                    };
                    messages += 1;
                    let message = |tracked| SentMessage {
                        link,
                        chunk,
                        notes: part.len(),
                        tracked,
                    };
                    match owners.as_slice() {
                        [one] => sent[*one].push(message(SentOutcome(OutcomeOf::Own(tracked)))),
                        _ => {
                            let (tx, rx) = watch::channel(None);
                            shared.push((tracked, tx));
                            for m in &owners {
                                sent[*m].push(message(SentOutcome(OutcomeOf::Shared(rx.clone()))));
                            }
                        }
                    }
                }
            }
            i = j;
        }
        if !shared.is_empty() {
            self.tasks.spawn(follow_shared(shared));
        }
        (sent, messages, failure)
    }
}

/// What hax's own link gets instead of an NVEC SET of `notes` that says a
/// process FAILED; `None` when no note does.
///
/// Motr's halon interface ends every link of a process when hax's own link
/// receives a FAILED note for it, but not when that note is the first it
/// sees of the fid, nor, with `ignore_same_state`, when it holds FAILED for
/// it already (`ha/halon/interface.c`, `halon_interface_process_failure_check`):
/// a process that restarts without ever reporting a state (as `m0ham`), or
/// fails twice, would keep its dead links for ever. So each process FAILED
/// goes twice, in a SET without `ignore_same_state`: whatever the interface
/// held, the second note fences. Pairs stay in one message; a form longer
/// than [`NOTES_MAX`] is split.
fn fencing_form(notes: &[HaNote]) -> Option<Vec<HaMsg>> {
    let fails = |n: &HaNote| n.fid.kind() == Some(FidType::Process) && n.state == HaState::Failed;
    if !notes.iter().any(fails) {
        return None;
    }
    let mut msgs = Vec::new();
    let mut cur: Vec<HaNote> = Vec::new();
    for n in notes {
        let times = if fails(n) { 2 } else { 1 };
        if cur.len() + times > NOTES_MAX {
            msgs.push(std::mem::take(&mut cur));
        }
        cur.extend(std::iter::repeat_n(*n, times));
    }
    msgs.push(cur);
    Some(
        msgs.into_iter()
            .map(|notes| {
                HaMsg::new(HaMsgData::Nvec(Nvec {
                    kind: NvecKind::Set,
                    id_of_get: 0,
                    ignore_same_state: false,
                    notes,
                }))
            })
            .collect(),
    )
}

/// Passes the outcomes of messages shared by several broadcasts on to them.
async fn follow_shared(shared: Vec<(Tracked, watch::Sender<Option<Outcome>>)>) {
    let mut pending: Vec<_> = shared
        .into_iter()
        .map(|(t, tx)| (Box::pin(t.outcome()), tx))
        .collect();
    std::future::poll_fn(|cx| {
        pending.retain_mut(|(outcome, tx)| match outcome.as_mut().poll(cx) {
            Poll::Ready(Ok(o)) => {
                tx.send_replace(Some(o));
                false
            }
            // The interface stopped: dropping the sender tells the waiters.
            Poll::Ready(Err(_)) => false,
            Poll::Pending => true,
        });
        if pending.is_empty() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    })
    .await;
}

impl Broadcast for Broadcaster {
    fn broadcast(
        &self,
        updates: Vec<HaUpdate>,
        options: BroadcastOptions,
    ) -> impl Future<Output = Result<Sent, BroadcastFailed>> + Send + 'static {
        let skip_self = options.skip_self_link && !options.broadcast_hax_only;
        sent_of(self.broadcast_report(updates, options), skip_self)
    }

    fn send_to_self_link(
        &self,
        notes: Vec<HaNote>,
    ) -> impl Future<Output = Result<Sent, BroadcastFailed>> + Send + 'static {
        sent_of(self.self_link_report(notes), false)
    }

    fn links_of(&self, process: Fid) -> usize {
        let links = self.inner.link.links();
        links
            .iter()
            .filter(|l| !l.is_self && l.process_fid == process)
            .count()
    }
}

/// A report as a [`Sent`], with the notes hax's own link was left out of
/// when `skip_self`.
async fn sent_of(
    report: impl Future<Output = Result<BroadcastReport, BroadcastError>>,
    skip_self: bool,
) -> Result<Sent, BroadcastFailed> {
    match report.await {
        Ok(r) => {
            let outcomes = r.sent.into_iter().map(|s| s.tracked);
            let sent = Sent::from_outcomes(outcomes.collect());
            Ok(if skip_self {
                sent.with_self_link_notes(r.plan.notes)
            } else {
                sent
            })
        }
        Err(e) => Err(BroadcastFailed {
            reason: e.to_string(),
            transient: e.is_transient(),
        }),
    }
}

/// Waits until every message has an outcome, at most `timeout`: how many
/// were delivered, not delivered (link gone, interface stopped) and still
/// pending at the deadline.
pub async fn wait_for_outcomes(sent: Vec<SentOutcome>, timeout: Duration) -> DeliveryReport {
    Sent::from_outcomes(sent)
        .wait_all(Instant::now() + timeout)
        .await
}

/// Waits until one message is delivered, every message has an outcome, or
/// `timeout` passes (the broadcast queue's wait for "any" delivery).
pub async fn wait_for_any_outcome(sent: Vec<SentOutcome>, timeout: Duration) -> DeliveryReport {
    Sent::from_outcomes(sent)
        .wait_any(Instant::now() + timeout)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::vocab::fid_text;
    use crate::model::ObjHealth;
    use crate::view::sample::{self, Sample};
    use crate::view::ClusterState;
    use crate::view::{ClusterView, ViewData};
    use hax_consul::schema::{ConfKey, ConfState, ConfValue, ObjState};
    use hax_consul::schema::{ProcessState, ProcessStatus, ProcessType};
    use hax_consul::TxnOp;
    use hax_core::{Fid, FidType, HaState, LinkInfo};

    use HaState::{DtmRecovering, Failed, Online, Transient};

    fn data_with(changes: &[(Fid, &str)]) -> ViewData {
        let mut d = sample::view_data();
        let st = ClusterView::from_data(d.clone()).snapshot();
        for (f, state) in changes {
            let key = any_key(&st, *f);
            match d.conf.entries.get_mut(&key).map(|e| &mut e.value) {
                Some(ConfValue::Object(o)) => o.state = Some((*state).to_owned()),
                other => panic!("{key}: {other:?}"),
            }
        }
        d
    }

    /// The (first) configuration key of an object of the sample.
    fn any_key(st: &ClusterState, f: Fid) -> ConfKey {
        match f.kind() {
            Some(FidType::Process) => st.process_keys(f)[0].clone(),
            Some(FidType::Sdev) => st.sdev_keys(f)[0].clone(),
            Some(FidType::Controller) => st.ctrl_keys(f)[0].clone(),
            Some(FidType::Enclosure) => st.encl_keys(f)[0].clone(),
            Some(FidType::Node) => ConfKey::Node { node: fid_text(f) },
            _ => panic!("no key for {f}"),
        }
    }

    fn plan(d: &ViewData, updates: &[(Fid, ObjHealth)], opts: &BroadcastOptions) -> BroadcastPlan {
        let st = ClusterView::from_data(d.clone()).snapshot();
        let updates: Vec<HaUpdate> = updates.iter().map(|(f, h)| HaUpdate::new(*f, *h)).collect();
        plan_broadcast(&st, &updates, opts)
    }

    fn notes(p: &BroadcastPlan) -> Vec<(Fid, HaState)> {
        p.notes.iter().map(|n| (n.fid, n.state)).collect()
    }

    /// Writes as (object fid, new state text).
    fn writes(p: &BroadcastPlan) -> Vec<(Fid, String)> {
        let st = ClusterView::from_data(sample::view_data()).snapshot();
        let all = [
            Sample::IOS1,
            Sample::IOS2A,
            Sample::IOS2B,
            Sample::CONFD1,
            Sample::SDEV1A,
            Sample::SDEV1B,
            Sample::SDEV2A,
            Sample::SDEV2B,
            Sample::SDEV2C,
            Sample::CTRL1,
            Sample::CTRL2,
            Sample::ENCL1,
            Sample::ENCL2,
            Sample::NODE1,
            Sample::NODE2,
        ];
        p.kv_writes
            .iter()
            .map(|w| {
                let f = all
                    .into_iter()
                    .find(|f| any_key(&st, *f) == w.key)
                    .unwrap_or_else(|| panic!("unexpected write of {}", w.key));
                assert_eq!(w.object.state.as_deref(), Some(w.state.as_str()));
                (f, w.state.as_str().to_owned())
            })
            .collect()
    }

    fn w(f: Fid, s: &str) -> (Fid, String) {
        (f, s.to_owned())
    }

    fn opts() -> BroadcastOptions {
        BroadcastOptions::default()
    }

    #[test]
    fn unknown_updates_are_skipped() {
        let p = plan(
            &sample::view_data(),
            &[(Sample::IOS1, ObjHealth::Unknown)],
            &opts(),
        );
        assert!(p.notes.is_empty() && p.kv_writes.is_empty());
        assert_eq!(p.targets, LinkSelection::AllExcept(vec![]));
    }

    #[test]
    fn an_online_process_brings_its_whole_tree() {
        let p = plan(
            &sample::view_data(),
            &[(Sample::IOS1, ObjHealth::Ok)],
            &opts(),
        );
        assert_eq!(
            notes(&p),
            vec![
                (Sample::IOS1, Online),
                (Sample::IOS1_SVC, Online),
                (Sample::RMS_IOS1, Online),
                (Sample::DRIVE1A, Online),
                (Sample::DRIVE1B, Online),
                (Sample::CTRL1, Online),
                (Sample::NODE1, Online),
                (Sample::ENCL1, Online),
            ]
        );
        assert_eq!(
            writes(&p),
            vec![
                w(Sample::IOS1, "online"),
                w(Sample::SDEV1A, "online"),
                w(Sample::SDEV1B, "online"),
                w(Sample::CTRL1, "M0_NC_ONLINE"),
                w(Sample::NODE1, "M0_NC_ONLINE"),
                w(Sample::ENCL1, "M0_NC_ONLINE"),
            ]
        );
        // Other fields are kept, modify indexes are those read.
        let st = ClusterView::from_data(sample::view_data()).snapshot();
        let sdev = &p.kv_writes[1];
        assert_eq!(sdev.object.path.as_deref(), Some("/dev/sdb"));
        assert_eq!(
            Some(sdev.modify_index),
            st.conf_entry(&sdev.key).map(|e| e.modify_index)
        );
        assert_eq!(sdev.keep, PROTECTED_SDEV_STATES);
    }

    #[test]
    fn recovering_and_stopped_processes() {
        let p = plan(
            &sample::view_data(),
            &[(Sample::IOS1, ObjHealth::Recovering)],
            &opts(),
        );
        assert_eq!(
            notes(&p),
            vec![
                (Sample::IOS1, DtmRecovering),
                (Sample::IOS1_SVC, DtmRecovering),
                (Sample::RMS_IOS1, DtmRecovering),
                // dtm_recovering sdevs read as ONLINE.
                (Sample::DRIVE1A, Online),
                (Sample::DRIVE1B, Online),
                (Sample::CTRL1, DtmRecovering),
                (Sample::NODE1, DtmRecovering),
                (Sample::ENCL1, DtmRecovering),
            ]
        );
        assert_eq!(writes(&p)[1], w(Sample::SDEV1A, "dtm_recovering"));
        assert_eq!(writes(&p)[3], w(Sample::CTRL1, "M0_NC_DTM_RECOVERING"));

        // STOPPED: TRANSIENT everywhere, recorded `stopped`; the node's only
        // ios is down, so the node is too.
        let p = plan(
            &sample::view_data(),
            &[(Sample::IOS1, ObjHealth::Stopped)],
            &opts(),
        );
        assert!(
            notes(&p).iter().all(|(_, s)| *s == Transient),
            "{:?}",
            notes(&p)
        );
        assert_eq!(notes(&p).len(), 8);
        assert_eq!(
            writes(&p),
            vec![
                w(Sample::IOS1, "stopped"),
                w(Sample::SDEV1A, "offline"),
                w(Sample::SDEV1B, "offline"),
                w(Sample::CTRL1, "M0_NC_TRANSIENT"),
                w(Sample::NODE1, "M0_NC_TRANSIENT"),
                w(Sample::ENCL1, "M0_NC_TRANSIENT"),
            ]
        );
    }

    #[test]
    fn a_failed_process_makes_its_disks_offline_and_fails_its_node_with_its_last_ios() {
        let p = plan(
            &sample::view_data(),
            &[(Sample::IOS1, ObjHealth::Failed)],
            &opts(),
        );
        assert_eq!(
            notes(&p),
            vec![
                (Sample::IOS1, Failed),
                (Sample::IOS1_SVC, Failed),
                (Sample::RMS_IOS1, Failed),
                (Sample::DRIVE1A, Transient),
                (Sample::DRIVE1B, Transient),
                (Sample::CTRL1, Failed),
                (Sample::NODE1, Failed),
                (Sample::ENCL1, Failed),
            ]
        );
        assert_eq!(
            writes(&p),
            vec![
                w(Sample::IOS1, "failed"),
                w(Sample::SDEV1A, "offline"),
                w(Sample::SDEV1B, "offline"),
                w(Sample::CTRL1, "M0_NC_FAILED"),
                w(Sample::NODE1, "M0_NC_FAILED"),
                w(Sample::ENCL1, "M0_NC_FAILED"),
            ]
        );

        // Node 2 keeps a running ios: the node is not failed.
        let p = plan(
            &sample::view_data(),
            &[(Sample::IOS2A, ObjHealth::Failed)],
            &opts(),
        );
        assert_eq!(
            notes(&p),
            vec![
                (Sample::IOS2A, Failed),
                (Sample::IOS2A_SVC, Failed),
                (Sample::DRIVE2A, Transient),
                (Sample::DRIVE2B, Transient),
                (Sample::CTRL2, Failed),
            ]
        );
        // Unless the other one is already down.
        let d = data_with(&[(Sample::IOS2B, "offline")]);
        let p = plan(&d, &[(Sample::IOS2A, ObjHealth::Offline)], &opts());
        assert_eq!(
            notes(&p)[notes(&p).len() - 2..],
            [(Sample::NODE2, Transient), (Sample::ENCL2, Transient)]
        );
    }

    #[test]
    fn later_rules_see_earlier_writes_and_repeated_notes_go_once() {
        let p = plan(
            &sample::view_data(),
            &[
                (Sample::IOS2A, ObjHealth::Failed),
                (Sample::IOS2B, ObjHealth::Failed),
            ],
            &opts(),
        );
        assert_eq!(
            notes(&p),
            vec![
                (Sample::IOS2A, Failed),
                (Sample::IOS2A_SVC, Failed),
                (Sample::DRIVE2A, Transient),
                (Sample::DRIVE2B, Transient),
                (Sample::CTRL2, Failed),
                (Sample::IOS2B, Failed),
                (Sample::IOS2B_SVC, Failed),
                (Sample::DRIVE2C, Transient),
                // CTRL2 again, same state: once.
                // IOS2A's `failed` planned above counts: the node is down.
                (Sample::NODE2, Failed),
                (Sample::ENCL2, Failed),
            ]
        );
        assert!(
            writes(&p).contains(&w(Sample::NODE2, "M0_NC_FAILED")),
            "{:?}",
            writes(&p)
        );
        // A change of state in between is kept.
        let p = plan(
            &sample::view_data(),
            &[
                (Sample::POOL, ObjHealth::Failed),
                (Sample::POOL, ObjHealth::Ok),
                (Sample::POOL, ObjHealth::Ok),
                (Sample::POOL, ObjHealth::Failed),
            ],
            &opts(),
        );
        assert_eq!(
            notes(&p),
            vec![
                (Sample::POOL, Failed),
                (Sample::POOL, Online),
                (Sample::POOL, Failed)
            ]
        );
    }

    #[test]
    fn process_updates_never_clear_a_device_failure() {
        let d = data_with(&[(Sample::SDEV1A, "failed"), (Sample::SDEV1B, "repairing")]);
        let p = plan(&d, &[(Sample::IOS1, ObjHealth::Ok)], &opts());
        let n = notes(&p);
        assert!(n.contains(&(Sample::DRIVE1A, Failed)), "{n:?}");
        assert!(n.contains(&(Sample::DRIVE1B, HaState::Repair)), "{n:?}");
        let written: Vec<Fid> = writes(&p).into_iter().map(|(f, _)| f).collect();
        assert!(!written.contains(&Sample::SDEV1A) && !written.contains(&Sample::SDEV1B));

        // A drive update does overwrite it.
        let p = plan(&d, &[(Sample::DRIVE1A, ObjHealth::Ok)], &opts());
        assert_eq!(notes(&p), vec![(Sample::DRIVE1A, Online)]);
        assert_eq!(writes(&p), vec![w(Sample::SDEV1A, "online")]);
        assert!(p.kv_writes[0].keep.is_empty());
        let p = plan(&d, &[(Sample::DRIVE1B, ObjHealth::Repaired)], &opts());
        assert_eq!(writes(&p), vec![w(Sample::SDEV1B, "repaired")]);
        let p = plan(
            &d,
            &[(Sample::DRIVE1A, ObjHealth::Ok)],
            &BroadcastOptions {
                update_kv: false,
                ..opts()
            },
        );
        assert!(p.kv_writes.is_empty());
        assert_eq!(notes(&p), vec![(Sample::DRIVE1A, Online)]);
    }

    #[test]
    fn sdevs_without_a_drive_are_not_broadcast_as_fid_zero() {
        let p = plan(
            &sample::view_data(),
            &[(Sample::IOS2B, ObjHealth::Ok)],
            &opts(),
        );
        assert!(p.notes.iter().all(|n| !n.fid.is_zero()), "{:?}", p.notes);
        let drives: Vec<Fid> = p
            .notes
            .iter()
            .filter(|n| n.fid.is(FidType::Drive))
            .map(|n| n.fid)
            .collect();
        assert_eq!(drives, vec![Sample::DRIVE2C]);
    }

    #[test]
    fn hax_mkfs_and_hax_only_broadcasts_carry_the_note_alone() {
        let p = plan(
            &sample::view_data(),
            &[(Sample::HAX1, ObjHealth::Ok)],
            &opts(),
        );
        assert_eq!(notes(&p), vec![(Sample::HAX1, Online)]);
        assert!(p.kv_writes.is_empty());

        let mut d = sample::view_data();
        d.processes.insert(
            fid_text(Sample::IOS1),
            ProcessStatus {
                state: ProcessState::Started,
                kind: ProcessType::M0mkfs,
            },
        );
        let p = plan(&d, &[(Sample::IOS1, ObjHealth::Ok)], &opts());
        assert_eq!(notes(&p), vec![(Sample::IOS1, Online)]);
        assert!(p.kv_writes.is_empty());

        let only = BroadcastOptions {
            broadcast_hax_only: true,
            proc_skip_list: vec![Sample::IOS2A],
            ..opts()
        };
        let p = plan(
            &sample::view_data(),
            &[(Sample::IOS1, ObjHealth::Failed)],
            &only,
        );
        assert_eq!(notes(&p), vec![(Sample::IOS1, Failed)]);
        assert!(p.kv_writes.is_empty());
        assert_eq!(p.targets, LinkSelection::SelfOnly);
    }

    #[test]
    fn without_update_kv_only_the_node_state_is_written() {
        let no_kv = BroadcastOptions {
            update_kv: false,
            ..opts()
        };
        let p = plan(
            &sample::view_data(),
            &[(Sample::IOS1, ObjHealth::Ok)],
            &no_kv,
        );
        assert_eq!(notes(&p).len(), 8);
        assert_eq!(writes(&p), vec![w(Sample::NODE1, "M0_NC_ONLINE")]);

        let no_devices = BroadcastOptions {
            notify_devices: false,
            ..opts()
        };
        let p = plan(
            &sample::view_data(),
            &[(Sample::IOS1, ObjHealth::Ok)],
            &no_devices,
        );
        assert!(!p.notes.iter().any(|n| n.fid.is(FidType::Drive)));
        assert!(!writes(&p).iter().any(|(f, _)| f.is(FidType::Sdev)));
        assert!(notes(&p).contains(&(Sample::CTRL1, Online)));
    }

    #[test]
    fn node_updates_reach_their_enclosure_and_controllers() {
        let p = plan(
            &sample::view_data(),
            &[(Sample::NODE2, ObjHealth::Failed)],
            &opts(),
        );
        assert_eq!(
            notes(&p),
            vec![
                (Sample::NODE2, Failed),
                (Sample::ENCL2, Failed),
                (Sample::CTRL2, Failed)
            ]
        );
        assert_eq!(
            writes(&p),
            vec![
                w(Sample::NODE2, "M0_NC_FAILED"),
                w(Sample::ENCL2, "M0_NC_FAILED"),
                w(Sample::CTRL2, "M0_NC_FAILED"),
            ]
        );
        // Back online: the controllers keep (and report) their own state.
        let d = data_with(&[(Sample::CTRL2, "M0_NC_FAILED")]);
        let p = plan(&d, &[(Sample::NODE2, ObjHealth::Ok)], &opts());
        assert_eq!(
            notes(&p),
            vec![
                (Sample::NODE2, Online),
                (Sample::ENCL2, Online),
                (Sample::CTRL2, Failed)
            ]
        );
        assert_eq!(
            writes(&p),
            vec![
                w(Sample::NODE2, "M0_NC_ONLINE"),
                w(Sample::ENCL2, "M0_NC_ONLINE")
            ]
        );
        // Without update_kv: notes only.
        let p = plan(
            &sample::view_data(),
            &[(Sample::NODE2, ObjHealth::Offline)],
            &BroadcastOptions {
                update_kv: false,
                ..opts()
            },
        );
        assert!(p.kv_writes.is_empty());
        assert_eq!(
            notes(&p),
            vec![
                (Sample::NODE2, Transient),
                (Sample::ENCL2, Transient),
                (Sample::CTRL2, Transient)
            ]
        );
    }

    #[test]
    fn other_objects_get_their_note_alone() {
        for f in [
            Sample::POOL,
            Sample::SDEV1A,
            Sample::IOS1_SVC,
            Sample::SITE,
            Sample::ENCL1,
            Sample::CTRL1,
        ] {
            let p = plan(&sample::view_data(), &[(f, ObjHealth::Failed)], &opts());
            assert_eq!(notes(&p), vec![(f, Failed)], "{f}");
            assert!(p.kv_writes.is_empty(), "{f}");
        }
    }

    #[test]
    fn unchanged_states_are_not_rewritten() {
        let d = data_with(&[
            (Sample::IOS1, "online"),
            (Sample::SDEV1A, "online"),
            (Sample::SDEV1B, "online"),
            (Sample::CTRL1, "M0_NC_ONLINE"),
            (Sample::NODE1, "M0_NC_ONLINE"),
            (Sample::ENCL1, "M0_NC_ONLINE"),
        ]);
        let p = plan(&d, &[(Sample::IOS1, ObjHealth::Ok)], &opts());
        assert!(p.kv_writes.is_empty(), "{:?}", writes(&p));
        assert_eq!(notes(&p).len(), 8, "the notes still go");
    }

    #[test]
    fn state_vocabularies() {
        use ObjHealth as H;
        let words = [
            (H::Ok, Some(ObjState::Online)),
            (H::Failed, Some(ObjState::Failed)),
            (H::Offline, Some(ObjState::Offline)),
            (H::Unknown, Some(ObjState::Unknown)),
            (H::Stopped, Some(ObjState::Stopped)),
            (H::Recovering, Some(ObjState::DtmRecovering)),
            (H::Repair, None),
        ];
        for (h, want) in words {
            assert_eq!(process_word(h), want, "{h:?}");
        }
        let devices = [
            (H::Ok, "online"),
            (H::Unknown, "offline"),
            (H::Offline, "offline"),
            (H::Stopped, "offline"),
            (H::Recovering, "dtm_recovering"),
            (H::Failed, "failed"),
            (H::Repair, "repairing"),
            (H::Repaired, "repaired"),
            (H::Rebalance, "rebalancing"),
        ];
        for (h, want) in devices {
            assert_eq!(ConfState::Word(device_word(h)).as_str(), want, "{h:?}");
        }
        let nc = [
            (H::Unknown, "M0_NC_TRANSIENT"),
            (H::Offline, "M0_NC_TRANSIENT"),
            (H::Stopped, "M0_NC_TRANSIENT"),
            (H::Ok, "M0_NC_ONLINE"),
            (H::Recovering, "M0_NC_DTM_RECOVERING"),
            (H::Failed, "M0_NC_FAILED"),
            (H::Repair, "M0_NC_REPAIR"),
            (H::Repaired, "M0_NC_REPAIRED"),
            (H::Rebalance, "M0_NC_REBALANCE"),
        ];
        for (h, want) in nc {
            assert_eq!(ConfState::Nc(nc_state(h)).as_str(), want, "{h:?}");
        }
    }

    #[test]
    fn hax_own_link_gets_each_process_failed_twice_without_ignore_same_state() {
        let p = Fid::typed(FidType::Process, 1, 7);
        let s = Fid::typed(FidType::Service, 1, 8);
        assert!(fencing_form(&[HaNote::new(p, HaState::Online)]).is_none());
        assert!(fencing_form(&[HaNote::new(s, HaState::Failed)]).is_none());
        let notes = [
            HaNote::new(s, HaState::Failed),
            HaNote::new(p, HaState::Failed),
        ];
        let msgs = fencing_form(&notes).unwrap();
        assert_eq!(msgs.len(), 1);
        let HaMsgData::Nvec(n) = &msgs[0].data else {
            panic!("an NVEC")
        };
        assert_eq!(
            (n.kind, n.id_of_get, n.ignore_same_state),
            (NvecKind::Set, 0, false)
        );
        assert_eq!(n.notes, vec![notes[0], notes[1], notes[1]]);
        // Over NOTES_MAX: split, a pair never across two messages.
        let mut many = vec![HaNote::new(s, HaState::Online); NOTES_MAX - 1];
        many.push(HaNote::new(p, HaState::Failed));
        let msgs = fencing_form(&many).unwrap();
        let lens: Vec<usize> = msgs
            .iter()
            .map(|m| match &m.data {
                HaMsgData::Nvec(n) => n.notes.len(),
                _ => 0,
            })
            .collect();
        assert_eq!(lens, vec![NOTES_MAX - 1, 2]);
    }

    #[test]
    fn nvec_set_notes_are_rebroadcast_or_rolled_back() {
        let f = Sample::SDEV1A;
        let notes: Vec<HaNote> = HaState::ALL.iter().map(|s| HaNote::new(f, *s)).collect();
        assert_eq!(
            crate::pipeline::nvec_set_rebroadcast(&notes),
            vec![
                HaUpdate::new(f, ObjHealth::Ok),
                HaUpdate::new(f, ObjHealth::Failed),
                HaUpdate::new(f, ObjHealth::Repaired),
                HaUpdate::new(f, ObjHealth::Repaired),
            ]
        );
    }

    fn link(id: u64, process: Fid, is_self: bool) -> LinkInfo {
        LinkInfo {
            id: LinkId(id),
            endpoint: format!("inet:tcp:127.0.0.1@{id}"),
            process_fid: process,
            is_self,
        }
    }

    #[test]
    fn links_are_selected_among_the_active_ones() {
        let links = [
            link(1, Sample::HAX1, true),
            link(2, Sample::IOS1, false),
            link(3, Sample::CONFD1, false),
            link(4, Sample::IOS1, false),
        ];
        let active = [LinkId(1), LinkId(2), LinkId(3)];
        assert_eq!(
            LinkSelection::AllExcept(vec![]).select(&links, &active),
            vec![LinkId(1), LinkId(2), LinkId(3)],
            "link 4 is disconnecting"
        );
        assert_eq!(
            LinkSelection::AllExcept(vec![Sample::IOS1]).select(&links, &active),
            vec![LinkId(1), LinkId(3)]
        );
        assert_eq!(
            LinkSelection::SelfOnly.select(&links, &active),
            vec![LinkId(1)]
        );
        assert!(LinkSelection::SelfOnly
            .select(&links, &[LinkId(2)])
            .is_empty());
    }

    #[test]
    fn a_group_is_planned_as_one_broadcast_after_the_other() {
        let st = ClusterView::from_data(sample::view_data()).snapshot();
        let down = [HaUpdate::new(Sample::IOS1, ObjHealth::Failed)];
        let up = [HaUpdate::new(Sample::IOS1, ObjHealth::Ok)];
        let (plans, writes) = plan_group(&st, &[(&down, &opts()), (&up, &opts())]);
        // Each plan is what it would be alone after the ones before it.
        assert_eq!(plans[0], plan_broadcast(&st, &down, &opts()));
        let mut after = sample::view_data();
        for w in &plans[0].kv_writes {
            match after.conf.entries.get_mut(&w.key).map(|e| &mut e.value) {
                Some(ConfValue::Object(o)) => *o = w.object.clone(),
                other => panic!("{}: {other:?}", w.key),
            }
        }
        let alone = plan_broadcast(&ClusterView::from_data(after).snapshot(), &up, &opts());
        assert_eq!(plans[1].notes, alone.notes);
        let keys = |ws: &[ConfWrite]| ws.iter().map(|w| w.key.clone()).collect::<Vec<_>>();
        assert_eq!(keys(&plans[1].kv_writes), keys(&alone.kv_writes));
        // One write per key, with the last value and the index first read.
        let mut seen = std::collections::HashSet::new();
        assert!(writes.iter().all(|w| seen.insert(w.key.clone())));
        for w in &writes {
            let last = plans
                .iter()
                .rev()
                .find_map(|p| p.kv_writes.iter().find(|x| x.key == w.key))
                .expect("planned by one of them");
            assert_eq!(w.object, last.object, "{}", w.key);
            assert_eq!(
                Some(w.modify_index),
                st.conf_entry(&w.key).map(|e| e.modify_index)
            );
        }
        assert_eq!(
            writes
                .iter()
                .find(|w| w.key == st.process_keys(Sample::IOS1)[0])
                .and_then(|w| w.object.state.as_deref()),
            Some("online")
        );
    }

    #[test]
    fn notes_go_in_chunks_of_at_most_notes_max() {
        let updates: Vec<(Fid, ObjHealth)> = (0..2500)
            .map(|k| (Fid::typed(FidType::Pool, 1, k), ObjHealth::Ok))
            .collect();
        let p = plan(&sample::view_data(), &updates, &opts());
        let sizes: Vec<usize> = p.chunks().map(<[HaNote]>::len).collect();
        assert_eq!(sizes, vec![NOTES_MAX, NOTES_MAX, 2500 - 2 * NOTES_MAX]);
    }

    #[test]
    fn writes_go_in_check_and_set_transactions_of_at_most_64() {
        let p = plan(
            &sample::view_data(),
            &[(Sample::IOS1, ObjHealth::Failed)],
            &opts(),
        );
        let many: Vec<ConfWrite> = vec![p.kv_writes[1].clone(); 100];
        let batches = txn_batches(&many).expect("encodes");
        assert_eq!(
            batches.iter().map(Vec::len).collect::<Vec<_>>(),
            vec![64, 36]
        );
        let TxnOp::Cas { key, value, index } = &batches[0][0] else {
            panic!("{:?}", batches[0][0]);
        };
        assert_eq!(*key, p.kv_writes[1].key.to_key());
        assert_eq!(*index, p.kv_writes[1].modify_index);
        assert_eq!(
            String::from_utf8_lossy(value),
            r#"{"path": "/dev/sdb", "state": "offline"}"#
        );
    }
}
