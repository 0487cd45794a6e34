//! The STOPPED path: how a process that reported STOPPED is told to the
//! other processes and, later, fenced by hax's own Motr.
//!
//! A FAILED note about a process fid that hax sends on its own (self) link
//! makes Motr's halon interface disconnect every link that process made.
//! A stopping m0d reports PROCESS STOPPED and only then flushes its last
//! messages and closes its HA link: fenced in that window, it waits for
//! ever in its flush or, seeing its link fail, asks for the entrypoint
//! again, is told it was disconnected and aborts. So the FAILED note of a
//! STOPPED event goes to the other processes at once, but to hax's own link
//! only once the stopped process's link is gone, or [`HA_DISCONNECT_TIMEOUT`]
//! after the event was delivered.
//!
//! The whole path starts here and runs one way, from the event to hax's own
//! link ([`HeldFailures::stopped`]):
//!
//! 1. the pipeline hands over the STOPPED event, in the process's lane (so
//!    in the process's event order), with the event's ack;
//! 2. the FAILED broadcast to the other processes is ordered at once,
//!    leaving hax's own link out (an mkfs run, which only hax's own link
//!    hears of, broadcasts nothing now), and the note is held: a note held
//!    before for the process is dropped;
//! 3. the hold's task takes it from there: once the broadcast is handed to
//!    Motr it completes the broadcast's part of the ack and keeps the notes
//!    hax's own link was left out of;
//! 4. it waits for the first of: the process's link gone, the bound after
//!    the event was delivered, a new incarnation's first entrypoint request
//!    ([`HeldFailures::send_now`]), a newer state of the process
//!    ([`HeldFailures::drop_held`]), hax stopping, the holds dropped;
//! 5. it sends the notes to hax's own link itself, or drops them;
//! 6. until the notes it sent are delivered, a new incarnation's first
//!    request waits for them ([`HeldFailures::send_now`]): answered first,
//!    the new incarnation would make a link that the notes then fence.
//!
//! The pipeline only calls in (the event, a newer state, a first request);
//! nothing here calls back into it.
//!
//! Neither Motr nor the emulator tells hax when a peer closes its side of a
//! link; hax learns that a link is gone when its own side goes through the
//! disconnect handshake (`link_is_disconnecting`, `link_disconnected`), which
//! the daemon's Motr callbacks report to a [`LinkWatch`]. For a peer that
//! closes its link itself, the bound is what ends the wait.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use hax_consul::writer::Ack;
use hax_core::{Fid, HaNote, LinkId};
use tokio::sync::{oneshot, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::metrics::EventMetrics;
use crate::model::broadcast::{Broadcast, BroadcastFailed, BroadcastOptions, DeliveryReport, Sent};
use crate::model::{HaUpdate, ObjHealth};

/// How long a FAILED note for hax's own link is held after the STOPPED
/// event was delivered. Motr's HA link disconnect timeout (`ha/ha.c`, 5 s):
/// once its STOPPED is delivered, a stopping m0d's flush completes in a round
/// trip, and closing its link then takes at most this long; after that the
/// note can no longer catch the process in its flush.
pub const HA_DISCONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Gone links remembered (ids are never reused, so the oldest are dropped).
const GONE_KEPT: usize = 4096;

/// Processes whose last first request is remembered at most (the oldest
/// are dropped).
const INCARNATIONS_KEPT: usize = 4096;

/// Which links are gone, as the Motr callbacks report it; cheap to clone,
/// safe to call from Motr's threads (nothing here blocks for long).
#[derive(Clone, Debug)]
pub struct LinkWatch {
    inner: Arc<WatchInner>,
}

#[derive(Debug)]
struct WatchInner {
    gone: Mutex<BTreeSet<LinkId>>,
    stopping: std::sync::atomic::AtomicBool,
    changed: watch::Sender<u64>,
}

impl Default for LinkWatch {
    fn default() -> Self {
        LinkWatch::new()
    }
}

impl LinkWatch {
    /// A watch that knows of no gone link.
    pub fn new() -> Self {
        LinkWatch {
            inner: Arc::new(WatchInner {
                gone: Mutex::new(BTreeSet::new()),
                stopping: std::sync::atomic::AtomicBool::new(false),
                changed: watch::channel(0).0,
            }),
        }
    }

    fn gone_set(&self) -> MutexGuard<'_, BTreeSet<LinkId>> {
        // A poisoned lock only means a panic elsewhere; the set is intact.
        self.inner.gone.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `link` is going or gone (hax's side disconnects it).
    pub fn link_gone(&self, link: LinkId) {
        {
            let mut gone = self.gone_set();
            gone.insert(link);
            while gone.len() > GONE_KEPT {
                gone.pop_first();
            }
        }
        self.inner.changed.send_modify(|n| *n += 1);
    }

    /// hax is stopping: every link goes, and nothing held is sent any more.
    pub fn set_stopping(&self) {
        self.inner.stopping.store(true, Ordering::Release);
        self.inner.changed.send_modify(|n| *n += 1);
    }

    /// Whether hax is stopping.
    pub fn is_stopping(&self) -> bool {
        self.inner.stopping.load(Ordering::Acquire)
    }

    /// Whether `link` is gone.
    pub fn is_gone(&self, link: LinkId) -> bool {
        self.gone_set().contains(&link)
    }

    /// Resolves once `link` is gone or hax is stopping.
    pub async fn gone(&self, link: LinkId) {
        let mut rx = self.inner.changed.subscribe();
        loop {
            if self.is_gone(link) || self.is_stopping() {
                return;
            }
            // The sender lives in `self`: `changed` fails only if it is gone.
            if rx.changed().await.is_err() {
                return;
            }
        }
    }
}

/// When each process last asked for the entrypoint as a new incarnation,
/// whether it reported STOPPED since, and the order between fencing a
/// process and answering such a request.
///
/// A FAILED note on hax's own link fences every link of its process that
/// Motr holds when the note arrives, a new incarnation's link too if its
/// reply went first. The first-request path records the request
/// ([`Incarnations::first_request`]) before it counts the old links and
/// queues its own fence; a fence sent for any other reason is queued under
/// the same lock ([`Incarnations::fence_unless_restarted`]) unless such a
/// request came since. So a fence queued first reaches Motr before the
/// restart's own fence, which the reply waits for, and one that would come
/// after the request is not sent: the restart fences the old links itself.
/// Neither is one sent for a process that reported STOPPED: the STOPPED
/// path fences it once its flush is over ([`HeldFailures::stopped`]), and a
/// fence in that window would catch it in its flush.
/// Cheap to clone; the clones share the record.
#[derive(Clone, Debug, Default)]
pub struct Incarnations {
    records: Arc<Mutex<HashMap<Fid, Incarnation>>>,
}

#[derive(Clone, Copy, Debug)]
struct Incarnation {
    first_request: Option<std::time::Instant>,
    stopped: bool,
    touched: std::time::Instant,
}

impl Incarnations {
    /// An empty record.
    pub fn new() -> Self {
        Self::default()
    }

    fn update(&self, process: Fid, f: impl FnOnce(&mut Incarnation)) {
        let now = std::time::Instant::now();
        let mut records = lock(&self.records);
        if records.len() >= INCARNATIONS_KEPT && !records.contains_key(&process) {
            let oldest = records
                .iter()
                .min_by_key(|(_, r)| r.touched)
                .map(|(f, _)| *f);
            if let Some(f) = oldest {
                records.remove(&f);
            }
        }
        let r = records.entry(process).or_insert(Incarnation {
            first_request: None,
            stopped: false,
            touched: now,
        });
        r.touched = now;
        f(r);
    }

    /// A first entrypoint request of `process` arrived now.
    pub fn first_request(&self, process: Fid) {
        self.update(process, |r| {
            r.first_request = Some(std::time::Instant::now());
            r.stopped = false;
        });
    }

    /// `process` reported STOPPED.
    pub fn stopped(&self, process: Fid) {
        self.update(process, |r| r.stopped = true);
    }

    /// `process` reported a state newer than STOPPED.
    pub fn running(&self, process: Fid) {
        let mut records = lock(&self.records);
        if let Some(r) = records.get_mut(&process) {
            r.stopped = false;
        }
    }

    /// Runs `send`, which queues a fence of `process`, unless `process`
    /// asked for the entrypoint after `since` or reported STOPPED last;
    /// returns what `send` did.
    pub fn fence_unless_restarted<T>(
        &self,
        process: Fid,
        since: std::time::Instant,
        send: impl FnOnce() -> T,
    ) -> Option<T> {
        self.fence_those_not_restarted(&[(process, since)], |_| send())
            .map(|(_, t)| t)
    }

    /// [`Incarnations::fence_unless_restarted`] for many processes, each
    /// silent since its instant: runs `send` once with those to fence, if
    /// any; returns them and what `send` did.
    pub fn fence_those_not_restarted<T>(
        &self,
        silent: &[(Fid, std::time::Instant)],
        send: impl FnOnce(&[Fid]) -> T,
    ) -> Option<(Vec<Fid>, T)> {
        let records = lock(&self.records);
        let fence: Vec<Fid> = silent
            .iter()
            .filter(|(process, since)| {
                records
                    .get(process)
                    .is_none_or(|r| !r.stopped && r.first_request.is_none_or(|at| at <= *since))
            })
            .map(|(process, _)| *process)
            .collect();
        if fence.is_empty() {
            return None;
        }
        let t = send(&fence);
        Some((fence, t))
    }

    /// Forgets what was recorded before `t` (kept at most as long as a
    /// fence may look back).
    pub fn forget_before(&self, t: std::time::Instant) {
        lock(&self.records).retain(|_, r| r.touched >= t);
    }

    /// Processes with a record.
    pub fn len(&self) -> usize {
        lock(&self.records).len()
    }

    /// Whether no process has a record.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A first request's wait for its process's note: answered once the note
/// reached hax's own link (or that wait ended), with how it went; `None`:
/// nothing was sent.
type SendNow = oneshot::Sender<Option<DeliveryReport>>;

type Waiters = Arc<Mutex<Vec<SendNow>>>;

/// How long a note sent to hax's own link is waited for at most, when a
/// new incarnation's first request waits for it (as the pipeline's default
/// `restart_delivery_wait`).
const SENT_WAIT: Duration = Duration::from_secs(30);

type SendFuture = std::pin::Pin<Box<dyn std::future::Future<Output = Option<Sent>> + Send>>;

type BroadcastFuture =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<Sent, BroadcastFailed>> + Send>>;

enum Entry {
    /// Held: a first request has it sent at once, through `now`.
    Held {
        id: u64,
        now: oneshot::Sender<SendNow>,
    },
    /// Sent at the link's end or the bound, not known delivered yet: a first
    /// request waits for it, so that it does not fence the new link. The
    /// waiters are the sending task's too: a newer hold replacing the entry
    /// does not lose them.
    Sending { id: u64, waiters: Waiters },
}

impl Entry {
    fn id(&self) -> u64 {
        match self {
            Entry::Held { id, .. } | Entry::Sending { id, .. } => *id,
        }
    }
}

/// FAILED notes of stopped processes held back from hax's own link, and
/// the STOPPED path that leads to them (see the module documentation). At
/// most one per process: a newer event of the process drops it
/// ([`HeldFailures::drop_held`]), a new incarnation's first entrypoint
/// request sends it at once ([`HeldFailures::send_now`]), so a held note
/// never reaches Motr after a newer state of its process.
///
/// The holds' tasks run on the tracker given to [`HeldFailures::new`]; they
/// end when hax stops ([`LinkWatch::set_stopping`]) or when this is dropped,
/// dropping what they hold.
pub struct HeldFailures<B> {
    broadcaster: Arc<B>,
    links: LinkWatch,
    hold: Duration,
    held: Arc<Mutex<HashMap<Fid, Entry>>>,
    next: AtomicU64,
    metrics: Arc<HeldMetrics>,
    /// Where a STOPPED broadcast that fails is counted.
    events: Arc<EventMetrics>,
    tasks: TaskTracker,
    /// Cancelled on drop: the holds end with their owner.
    dropped: CancellationToken,
}

impl<B> Drop for HeldFailures<B> {
    fn drop(&mut self) {
        self.dropped.cancel();
    }
}

impl<B> std::fmt::Debug for HeldFailures<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeldFailures")
            .field("hold", &self.hold)
            .finish_non_exhaustive()
    }
}

/// Counters of held notes.
#[derive(Debug, Default)]
pub struct HeldMetrics {
    /// Notes held.
    pub held: AtomicU64,
    /// Sent once the process's link was gone.
    pub sent_link_gone: AtomicU64,
    /// Sent at the bound, the link still there.
    pub sent_bound: AtomicU64,
    /// Sent at once for a new incarnation's first entrypoint request.
    pub sent_restart: AtomicU64,
    /// Dropped: a newer state of the process, or hax stopping.
    pub dropped: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn inc(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// Why a held note ends.
enum End {
    LinkGone,
    Bound,
    Now(SendNow),
    Dropped,
}

/// Where a hold's notes come from.
enum Notes {
    /// Known at once: nothing was broadcast to the others.
    Known(Vec<HaNote>),
    /// What the broadcast to the others left out, once it is handed to
    /// Motr; `ack` is the broadcast's part of the event's ack.
    LeftOut { sent: BroadcastFuture, ack: Ack },
}

impl<B: Broadcast> HeldFailures<B> {
    /// Holds notes for `hold` at most after delivery, sending through
    /// `broadcaster`, told of gone links by `links`, running the holds on
    /// `tasks`; a broadcast that fails is counted in `events`.
    pub fn new(
        broadcaster: Arc<B>,
        links: LinkWatch,
        hold: Duration,
        tasks: &TaskTracker,
        events: Arc<EventMetrics>,
    ) -> Self {
        HeldFailures {
            broadcaster,
            links,
            hold,
            held: Arc::default(),
            next: AtomicU64::new(1),
            metrics: Arc::default(),
            events,
            tasks: tasks.clone(),
            dropped: CancellationToken::new(),
        }
    }

    /// The counters.
    pub fn metrics(&self) -> Arc<HeldMetrics> {
        Arc::clone(&self.metrics)
    }

    /// `process`, other than hax, reported STOPPED on `link`: the STOPPED
    /// path of the module documentation, started here and ended by the
    /// hold's task. `health` is what the broadcast says of the process;
    /// with `hax_only` (an mkfs run) only hax's own link is told, after the
    /// hold. Must be called in the process's event order (its lane), before
    /// the event's writes are submitted: its broadcast is ordered at the
    /// call.
    ///
    /// Takes the event's `ack` and returns what is left of it for the
    /// event's writes; the hold's bound counts from the completion of the
    /// whole (the STOPPED message delivered).
    pub fn stopped(
        &self,
        process: Fid,
        link: LinkId,
        health: ObjHealth,
        hax_only: bool,
        ack: Ack,
    ) -> Ack {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let (now_tx, now_rx) = oneshot::channel();
        if let Some(Entry::Held { .. }) =
            lock(&self.held).insert(process, Entry::Held { id, now: now_tx })
        {
            inc(&self.metrics.dropped);
        }
        inc(&self.metrics.held);
        tracing::info!(%process, %link, hold = ?self.hold, "FAILED for hax's own link held until the process's link is gone");
        let (delivered_tx, delivered) = oneshot::channel();
        let ack = Ack::new(move |outcome| {
            ack.complete(outcome);
            let _ = delivered_tx.send(());
        });
        let (notes, rest) = if hax_only {
            // Only hax's own link would get it: nothing goes now.
            let notes = vec![HaNote::new(process, health.note_state())];
            (Notes::Known(notes), ack)
        } else {
            let options = BroadcastOptions {
                skip_self_link: true,
                coalesce: true,
                ..BroadcastOptions::default()
            };
            let sent = self
                .broadcaster
                .broadcast(vec![HaUpdate::new(process, health)], options);
            let (broadcast, rest) = ack.split_pair();
            let notes = Notes::LeftOut {
                sent: Box::pin(sent),
                ack: broadcast,
            };
            (notes, rest)
        };
        let task = HoldTask {
            broadcaster: Arc::clone(&self.broadcaster),
            links: self.links.clone(),
            hold: self.hold,
            held: Arc::clone(&self.held),
            metrics: Arc::clone(&self.metrics),
            events: Arc::clone(&self.events),
            dropped: self.dropped.clone(),
            process,
            link,
            id,
        };
        self.tasks.spawn(task.run(notes, delivered, now_rx));
        rest
    }

    /// Drops the note held for `process`, if any: the process reported a
    /// newer state.
    pub fn drop_held(&self, process: Fid) {
        let mut held = lock(&self.held);
        // A note already sent cannot be taken back.
        if let Some(Entry::Held { .. }) = held.get(&process) {
            held.remove(&process);
            inc(&self.metrics.dropped);
            tracing::info!(%process, "held FAILED for hax's own link dropped: the process reported a newer state");
        }
    }

    /// A new incarnation of `process` asks for the entrypoint: its old link
    /// must be fenced before the new one exists. Sends the note held for it
    /// now, if any, or joins the wait for a note of it already sent and not
    /// known delivered. Resolves once that note reached hax's own link (or
    /// the wait for it ended).
    pub fn send_now(&self, process: Fid) -> Option<oneshot::Receiver<Option<DeliveryReport>>> {
        let (tx, rx) = oneshot::channel();
        let mut held = lock(&self.held);
        match held.get_mut(&process)? {
            Entry::Sending { waiters, .. } => {
                tracing::info!(%process, "first request waits for the FAILED on its way to hax's own link");
                lock(waiters).push(tx);
            }
            Entry::Held { .. } => {
                let Some(Entry::Held { now, .. }) = held.remove(&process) else {
                    return None;
                };
                drop(held);
                now.send(tx).ok()?;
            }
        }
        Some(rx)
    }
}

struct HoldTask<B> {
    broadcaster: Arc<B>,
    links: LinkWatch,
    hold: Duration,
    held: Arc<Mutex<HashMap<Fid, Entry>>>,
    metrics: Arc<HeldMetrics>,
    events: Arc<EventMetrics>,
    dropped: CancellationToken,
    process: Fid,
    link: LinkId,
    id: u64,
}

impl<B: Broadcast> HoldTask<B> {
    async fn run(
        self,
        notes: Notes,
        delivered: oneshot::Receiver<()>,
        mut now: oneshot::Receiver<SendNow>,
    ) {
        let process = self.process;
        // Not cut short by the holds' drop: the event's delivery waits on
        // the broadcast's part of its ack.
        let notes = match notes {
            Notes::Known(notes) => notes,
            Notes::LeftOut { sent, ack } => {
                let notes = match sent.await {
                    Ok(sent) => sent.self_link_notes().to_vec(),
                    Err(e) => {
                        // Nothing was sent to anyone: nothing to hold.
                        inc(&self.events.broadcast_failures);
                        tracing::warn!(%process, error = %e, "broadcast not handed to Motr");
                        Vec::new()
                    }
                };
                ack.complete(Ok(()));
                notes
            }
        };
        let end = tokio::select! {
            biased;
            r = &mut now => match r {
                Ok(reply) => End::Now(reply),
                Err(_) => End::Dropped,
            },
            _ = self.dropped.cancelled() => {
                if lock(&self.held).remove(&process).is_some() {
                    inc(&self.metrics.dropped);
                    tracing::debug!(%process, "holds dropped: held FAILED dropped");
                }
                End::Dropped
            }
            _ = self.links.gone(self.link) => End::LinkGone,
            _ = async {
                // An ack dropped unrun still ends the wait for delivery.
                let _ = delivered.await;
                tokio::time::sleep(self.hold).await;
            } => End::Bound,
        };
        match end {
            End::Dropped => {}
            End::Now(reply) => {
                inc(&self.metrics.sent_restart);
                tracing::info!(%process, "held FAILED sent to hax's own link before the new incarnation's reply");
                let report = match self.send(notes) {
                    Some(f) => self.delivered(f).await,
                    None => None,
                };
                let _ = reply.send(report);
            }
            End::LinkGone | End::Bound => {
                let waiters = Waiters::default();
                let send = {
                    let mut held = lock(&self.held);
                    if held.get(&process).map(Entry::id) != Some(self.id) {
                        return;
                    }
                    if self.links.is_stopping() {
                        held.remove(&process);
                        inc(&self.metrics.dropped);
                        tracing::debug!(%process, "hax stopping: held FAILED dropped");
                        return;
                    }
                    held.insert(
                        process,
                        Entry::Sending {
                            id: self.id,
                            waiters: Arc::clone(&waiters),
                        },
                    );
                    // Handed to the broadcaster under the lock: a newer
                    // event of the process, which takes the lock to drop
                    // the note, has its broadcast queued after this one,
                    // and a first request either sends the note itself or
                    // finds it on its way.
                    self.send(notes)
                };
                let counter = if matches!(end, End::LinkGone) {
                    &self.metrics.sent_link_gone
                } else {
                    &self.metrics.sent_bound
                };
                inc(counter);
                tracing::info!(%process, link = %self.link, link_gone = matches!(end, End::LinkGone), "held FAILED sent to hax's own link");
                let report = match send {
                    Some(f) => self.delivered(f).await,
                    None => None,
                };
                let waiting = {
                    let mut held = lock(&self.held);
                    if held.get(&process).map(Entry::id) == Some(self.id) {
                        held.remove(&process);
                    }
                    std::mem::take(&mut *lock(&waiters))
                };
                for w in waiting {
                    let _ = w.send(report);
                }
            }
        }
    }

    /// Waits for the send to be handed to Motr, then for its delivery (at
    /// most [`SENT_WAIT`], or until the holds are dropped).
    async fn delivered(&self, send: SendFuture) -> Option<DeliveryReport> {
        let deadline = tokio::time::Instant::now() + SENT_WAIT;
        tokio::select! {
            r = async {
                let sent = send.await?;
                Some(sent.wait_all(deadline).await)
            } => r,
            _ = self.dropped.cancelled() => None,
        }
    }

    /// Queues the notes for hax's own link at the call; the future resolves
    /// with the send once handed to Motr.
    fn send(&self, notes: Vec<HaNote>) -> Option<SendFuture> {
        if notes.is_empty() {
            return None;
        }
        let process = self.process;
        let sent = self.broadcaster.send_to_self_link(notes);
        Some(Box::pin(async move {
            match sent.await {
                Ok(s) => Some(s),
                Err(e) => {
                    tracing::warn!(%process, error = %e, "held FAILED not handed to Motr");
                    None
                }
            }
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hax_core::FidType;
    use std::time::Instant;

    fn p(key: u64) -> Fid {
        Fid::typed(FidType::Process, 1, key)
    }

    #[test]
    fn a_fence_is_not_sent_after_a_new_incarnations_request() {
        let inc = Incarnations::new();
        let silent_since = Instant::now();
        assert_eq!(
            inc.fence_unless_restarted(p(1), silent_since, || 1),
            Some(1)
        );
        inc.first_request(p(1));
        assert_eq!(inc.fence_unless_restarted(p(1), silent_since, || 1), None);
        // A request before the silence began does not stop it.
        let later = Instant::now() + Duration::from_millis(1);
        assert_eq!(inc.fence_unless_restarted(p(1), later, || 2), Some(2));
        assert_eq!(
            inc.fence_unless_restarted(p(2), silent_since, || 3),
            Some(3)
        );
        inc.forget_before(later);
        assert!(inc.is_empty());
        assert_eq!(
            inc.fence_unless_restarted(p(1), silent_since, || 4),
            Some(4)
        );
    }

    #[test]
    fn a_stopped_process_is_left_to_the_stopped_path() {
        let inc = Incarnations::new();
        let silent_since = Instant::now();
        inc.stopped(p(1));
        assert_eq!(inc.fence_unless_restarted(p(1), silent_since, || 1), None);
        // A newer state, or a new incarnation, ends that.
        inc.running(p(1));
        assert_eq!(
            inc.fence_unless_restarted(p(1), silent_since, || 2),
            Some(2)
        );
        inc.stopped(p(1));
        inc.first_request(p(1));
        let later = Instant::now() + Duration::from_millis(1);
        assert_eq!(inc.fence_unless_restarted(p(1), later, || 3), Some(3));
        // Another process is not concerned.
        inc.stopped(p(1));
        assert_eq!(
            inc.fence_unless_restarted(p(2), silent_since, || 4),
            Some(4)
        );
    }

    #[test]
    fn the_record_is_bounded() {
        let inc = Incarnations::new();
        let t = Instant::now();
        for k in 0..(INCARNATIONS_KEPT as u64 + 10) {
            inc.first_request(p(k));
        }
        assert_eq!(inc.len(), INCARNATIONS_KEPT);
        // The newest are kept.
        let last = p(INCARNATIONS_KEPT as u64 + 9);
        assert_eq!(inc.fence_unless_restarted(last, t, || ()), None);
    }
}
