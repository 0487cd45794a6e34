//! Keepalive probes of the linked processes.
//!
//! A Motr process never sends keepalive requests on its own; it answers
//! hax's `M0_HA_MSG_KEEPALIVE_REQ` with `M0_HA_MSG_KEEPALIVE_REP`, echoing
//! the id and adding its own reply counter. Every round (`[motr]
//! keepalive_interval_ms`) one task sends a request with a fresh id on each
//! active link whose process is known, other than hax's own link, and
//! records what it learns in `<node>/keepalive/<process fid>`
//! ([`KeepaliveStatus`]): at most one write per process per round, through
//! the daemon's [`KvWriter`].
//!
//! A round that ends without a reply from a process counts as missed;
//! [`MISS_LIMIT`] missed rounds in a row mark it not responding (logged
//! once, at warn), and its next reply marks it responding again (logged at
//! info). A process that never answered is not written until it answers or
//! reaches the limit. Replies are matched by id on the link they came on;
//! a late reply to one of the last [`KEPT_IDS`] requests still counts, any
//! other is logged at debug and ignored. With [`KEPT_IDS`] requests
//! unanswered, a link gets a request only one round in [`KEPT_IDS`] until
//! it answers: a hung process collects fewer messages. A link that goes away drops its
//! probe state; once no link of its process is probed, the process's key is
//! deleted (a restarted process has a new link, and its key stays).
//!
//! A process that answered before and then leaves `fence_after` rounds in a
//! row unanswered on every link it has is dead or hung for good: nothing
//! else would end its link (Motr says nothing when a peer dies, and a dead
//! m0d never reports STOPPED), and every round and broadcast would go on
//! waiting for RPC timeouts to it. Its links are fenced as a restart's are,
//! with a FAILED note on hax's own link ([`Broadcast::send_to_self_link`]);
//! a hung m0d that wakes up later finds its link gone and restarts. A
//! process that never answered is not fenced: not every Motr peer answers
//! keepalives (`m0ham` has no keepalive handler).
//!
//! At hax's stop, every process that left the last round unanswered, having
//! answered before or not, is fenced the same way ([`fence_silent_at_stop`]):
//! Motr's stop would end the links one after another, each link to a gone
//! peer taking seconds.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use hax_consul::pyjson;
use hax_consul::schema::{keys, KeepaliveStatus};
use hax_core::{Fid, HaLink, HaMsg, HaMsgData, HaNote, HaState, LinkId, Uint128};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::metrics::Metrics;
use crate::model::broadcast::Broadcast;
use crate::model::civil::CivilTime;
use crate::model::vocab::fid_text;
use crate::motr::fencing::Incarnations;
use hax_consul::writer::{KvWriter, TrySubmitError, WriteOp};

/// Missed rounds in a row after which a process is not responding.
pub const MISS_LIMIT: u32 = 3;

/// Requests of a link whose late replies still count.
pub const KEPT_IDS: usize = 4;

/// `YYYY-MM-DDTHH:MM:SS.ffffffZ`: RFC 3339 in UTC, always with microseconds
/// so that the text sorts as the time does.
pub fn rfc3339(t: SystemTime) -> String {
    let since = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let c = CivilTime::from_epoch(since);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z",
        c.year, c.month, c.day, c.hour, c.minute, c.second, c.micros
    )
}

/// What hax knows of a process's answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Liveness {
    /// No reply yet and fewer than [`MISS_LIMIT`] rounds missed.
    Unknown,
    /// It answered, and has missed fewer than [`MISS_LIMIT`] rounds since.
    Responding,
    /// [`MISS_LIMIT`] or more rounds missed in a row.
    NotResponding,
}

#[derive(Debug)]
struct Probe {
    process: Fid,
    /// Ids sent and not answered, oldest first, at most [`KEPT_IDS`].
    pending: VecDeque<Uint128>,
    /// The request of the round now running, once sent.
    asked: Option<Uint128>,
    /// A reply arrived in the round now running.
    answered: bool,
    /// The last reply: the process's counter and when it arrived.
    last: Option<(u64, SystemTime)>,
    /// Since when the link has been silent: its last reply, or its first
    /// round.
    silent_since: Instant,
    missed: u32,
    /// Rounds without a request since the kept requests went unanswered.
    quiet_rounds: usize,
    liveness: Liveness,
    /// Changed since last written.
    dirty: bool,
    /// Its record was handed out to be written at least once.
    recorded: bool,
    /// Its process's links were fenced for missed rounds.
    fenced: bool,
}

impl Probe {
    fn record(&self) -> KeepaliveStatus {
        KeepaliveStatus {
            counter: self.last.map_or(0, |(c, _)| c),
            replied_at: self.last.map(|(_, t)| rfc3339(t)).unwrap_or_default(),
            responding: self.liveness == Liveness::Responding,
            missed: self.missed,
        }
    }
}

/// What a reply was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyMatch {
    /// It answers a request of its link.
    Matched {
        /// The process.
        process: Fid,
        /// It had been marked not responding: now it is again.
        recovered: bool,
    },
    /// No request of that link has this id (too old, another hax's, or
    /// unsolicited).
    Unknown,
}

/// What a new round does.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Round {
    /// A request to send on each link, with its id.
    pub requests: Vec<(LinkId, Uint128)>,
    /// Processes that missed the round that ended.
    pub missed: Vec<Fid>,
    /// Processes that have just reached [`MISS_LIMIT`].
    pub lost: Vec<Fid>,
    /// Links gone since the last round, whose state was dropped.
    pub dropped: usize,
    /// Processes with a record written whose every probed link is gone:
    /// their record goes too.
    pub forgotten: Vec<Fid>,
    /// Processes to fence, with their last reply: every link of theirs
    /// answered once and has since missed the fencing bound of rounds in a
    /// row.
    pub fence: Vec<(Fid, Instant)>,
}

/// The probe state of every link: no I/O, driven by [`Probes::round`] and
/// [`Probes::reply`] (which read the monotonic clock for silences).
#[derive(Debug)]
pub struct Probes {
    /// High half of every id: differs between runs of hax, so a reply to a
    /// request of an earlier run is not taken for one of this run.
    run: u64,
    next: u64,
    links: HashMap<LinkId, Probe>,
    /// Processes whose record's deletion found no room: tried again.
    forget_again: HashSet<Fid>,
    /// Missed rounds after which a process that answered before is fenced.
    fence_after: Option<u32>,
}

impl Probes {
    /// No links yet; ids are `run:1`, `run:2`, ...
    pub fn new(run: u64) -> Self {
        Probes {
            run,
            next: 1,
            links: HashMap::new(),
            forget_again: HashSet::new(),
            fence_after: None,
        }
    }

    /// Fences processes that answered before once they miss `rounds`
    /// rounds in a row on every link; `None` never fences.
    pub fn set_fence_after(&mut self, rounds: Option<u32>) {
        self.fence_after = rounds;
    }

    /// Ends the running round and begins a new one on `links` (link and its
    /// process): links not listed are forgotten, new ones start unknown,
    /// every listed link gets a request with a fresh id.
    pub fn round(&mut self, links: &[(LinkId, Fid)]) -> Round {
        let mut round = Round::default();
        let listed: HashMap<LinkId, Fid> = links.iter().copied().collect();
        let before = self.links.len();
        let mut gone_recorded: Vec<Fid> = self.forget_again.drain().collect();
        self.links.retain(|id, p| {
            let keep = listed.get(id) == Some(&p.process);
            if !keep && p.recorded {
                gone_recorded.push(p.process);
            }
            keep
        });
        round.dropped = before - self.links.len();
        let probed: HashSet<Fid> = listed.values().copied().collect();
        gone_recorded.sort();
        gone_recorded.dedup();
        round.forgotten = gone_recorded
            .into_iter()
            .filter(|f| !probed.contains(f))
            .collect();
        for &(link, process) in links {
            let p = self.links.entry(link).or_insert_with(|| Probe {
                process,
                pending: VecDeque::new(),
                asked: None,
                answered: false,
                last: None,
                silent_since: Instant::now(),
                missed: 0,
                quiet_rounds: 0,
                liveness: Liveness::Unknown,
                dirty: false,
                recorded: false,
                fenced: false,
            });
            if p.asked.is_some() && !p.answered {
                p.missed = p.missed.saturating_add(1);
                round.missed.push(process);
                if p.missed >= MISS_LIMIT && p.liveness != Liveness::NotResponding {
                    p.liveness = Liveness::NotResponding;
                    round.lost.push(process);
                }
                // A process never heard from is written only once it is
                // known not to respond.
                p.dirty = p.liveness != Liveness::Unknown;
            }
            p.answered = false;
            if p.pending.len() >= KEPT_IDS {
                // The process has not answered its last requests: they may
                // wait unread in its link's queue, or be lost. Ask only one
                // round in KEPT_IDS, so that a hung process collects a
                // quarter of the messages and one that lost them is still
                // asked; a reply to any kept request counts.
                p.quiet_rounds += 1;
                if p.quiet_rounds < KEPT_IDS {
                    p.asked = p.pending.back().copied();
                    continue;
                }
                p.pending.pop_front();
            }
            p.quiet_rounds = 0;
            let id = Uint128::new(self.run, self.next);
            self.next += 1;
            p.pending.push_back(id);
            p.asked = Some(id);
            round.requests.push((link, id));
        }
        if let Some(bound) = self.fence_after {
            round.fence = self.take_silent(bound);
        }
        round
    }

    /// Processes every link of which answered once and has since missed
    /// `bound` rounds in a row, not fenced yet, with their last reply; they
    /// are marked fenced.
    fn take_silent(&mut self, bound: u32) -> Vec<(Fid, Instant)> {
        let fence = self.silent_where(bound, true);
        for p in self.links.values_mut() {
            if fence.iter().any(|(f, _)| *f == p.process) {
                p.fenced = true;
            }
        }
        fence
    }

    /// Processes not fenced yet whose every link left its last `rounds`
    /// rounds unanswered, answered before or not, with since when they are
    /// silent.
    pub fn silent(&self, rounds: u32) -> Vec<(Fid, Instant)> {
        self.silent_where(rounds, false)
    }

    /// Processes not fenced yet whose every link missed `rounds` rounds in
    /// a row (and, with `answered`, answered before), with the latest
    /// instant since which one of their links is silent.
    fn silent_where(&self, rounds: u32, answered: bool) -> Vec<(Fid, Instant)> {
        let mut verdict: HashMap<Fid, Option<Instant>> = HashMap::new();
        for p in self.links.values() {
            let silent = !p.fenced && p.missed >= rounds && (!answered || p.last.is_some());
            let since = silent.then_some(p.silent_since);
            let v = verdict.entry(p.process).or_insert(since);
            *v = v.zip(since).map(|(a, b)| a.max(b));
        }
        let mut silent: Vec<(Fid, Instant)> = verdict
            .into_iter()
            .filter_map(|(f, since)| Some((f, since?)))
            .collect();
        silent.sort();
        silent
    }

    /// The fence of `process` could not be sent: the next round tries again.
    pub fn fence_not_sent(&mut self, process: Fid) {
        for p in self.links.values_mut().filter(|p| p.process == process) {
            p.fenced = false;
        }
    }

    /// A request could not be sent: it is not waited for.
    pub fn not_sent(&mut self, link: LinkId, id: Uint128) {
        if let Some(p) = self.links.get_mut(&link) {
            p.pending.retain(|i| *i != id);
            if p.asked == Some(id) {
                p.asked = None;
            }
        }
    }

    /// A reply `id` with the process's `counter` arrived on `link` at `at`.
    pub fn reply(&mut self, link: LinkId, id: Uint128, counter: u64, at: SystemTime) -> ReplyMatch {
        let Some(p) = self.links.get_mut(&link) else {
            return ReplyMatch::Unknown;
        };
        let Some(pos) = p.pending.iter().position(|i| *i == id) else {
            return ReplyMatch::Unknown;
        };
        // Replies come in the order of the requests: the older ones will
        // not be answered any more.
        p.pending.drain(..=pos);
        let recovered = p.liveness == Liveness::NotResponding;
        p.liveness = Liveness::Responding;
        p.answered = true;
        p.missed = 0;
        p.last = Some((counter, at));
        p.silent_since = Instant::now();
        p.dirty = true;
        ReplyMatch::Matched {
            process: p.process,
            recovered,
        }
    }

    /// The records changed since last taken, one per link.
    pub fn take_records(&mut self) -> Vec<(Fid, KeepaliveStatus)> {
        self.links
            .values_mut()
            .filter_map(|p| {
                std::mem::take(&mut p.dirty).then(|| {
                    p.recorded = true;
                    (p.process, p.record())
                })
            })
            .collect()
    }

    /// Has the deletion of the record of `process` made again next round
    /// (it found no room), unless a link of the process is probed by then.
    pub fn forget_again(&mut self, process: Fid) {
        self.forget_again.insert(process);
    }

    /// Marks the record of `process` to be written again (its write found
    /// no room).
    pub fn retry(&mut self, process: Fid) {
        for p in self.links.values_mut().filter(|p| p.process == process) {
            p.dirty = true;
        }
    }

    /// What is known of the process on `link`.
    pub fn liveness(&self, link: LinkId) -> Option<Liveness> {
        self.links.get(&link).map(|p| p.liveness)
    }

    /// Processes probed now that are marked not responding.
    pub fn not_responding(&self) -> usize {
        let lost: HashSet<Fid> = self
            .links
            .values()
            .filter(|p| p.liveness == Liveness::NotResponding)
            .map(|p| p.process)
            .collect();
        lost.len()
    }

    /// Links probed.
    pub fn len(&self) -> usize {
        self.links.len()
    }

    /// Whether no link is probed.
    pub fn is_empty(&self) -> bool {
        self.links.is_empty()
    }
}

/// Where the Motr side hands keepalive replies over: shared between the
/// [`crate::motr::bridge::Bridge`] (Motr's threads, never waiting) and the probe
/// task.
#[derive(Clone, Debug)]
pub struct KeepaliveInbox {
    probes: Arc<Mutex<Probes>>,
    wake: Arc<Notify>,
    metrics: Arc<Metrics>,
}

impl KeepaliveInbox {
    /// An inbox counting into `metrics`.
    pub fn new(metrics: Arc<Metrics>) -> Self {
        let run = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
        KeepaliveInbox {
            probes: Arc::new(Mutex::new(Probes::new(run))),
            wake: Arc::new(Notify::new()),
            metrics,
        }
    }

    fn count_not_responding(&self, probes: &Probes) {
        let n = i64::try_from(probes.not_responding()).unwrap_or(i64::MAX);
        self.metrics
            .keepalive_not_responding
            .store(n, Ordering::Relaxed);
    }

    fn lock(&self) -> MutexGuard<'_, Probes> {
        // A poisoned lock only means a panic elsewhere; the state is whole.
        self.probes.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A `KEEPALIVE_REP` arrived on `link`. Never waits.
    pub fn reply(&self, link: LinkId, id: Uint128, counter: u64) {
        let m = self.lock().reply(link, id, counter, SystemTime::now());
        match m {
            ReplyMatch::Matched { process, recovered } => {
                self.metrics
                    .keepalive_replies
                    .fetch_add(1, Ordering::Relaxed);
                if recovered {
                    tracing::info!(%link, %process, counter, "process answers keepalives again");
                    self.count_not_responding(&self.lock());
                }
                self.wake.notify_one();
            }
            ReplyMatch::Unknown => {
                tracing::debug!(%link, %id, counter, "keepalive reply matches no request; ignored");
            }
        }
    }
}

/// Settings of the probe task.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeepaliveConfig {
    /// Time between rounds.
    pub interval: Duration,
    /// This node's name (the key prefix).
    pub node: String,
    /// Missed rounds in a row after which a process that answered before
    /// has its links fenced; `None` never fences.
    pub fence_after: Option<u32>,
}

/// The links to probe now: active, not hax's own, process known.
fn targets(ha: &HaLink) -> Vec<(LinkId, Fid)> {
    let active: HashSet<LinkId> = ha.active_links().into_iter().collect();
    ha.links()
        .into_iter()
        .filter(|l| !l.is_self && !l.process_fid.is_zero() && active.contains(&l.id))
        .map(|l| (l.id, l.process_fid))
        .collect()
}

/// What the probe task works with besides its settings.
#[derive(Debug)]
pub struct KeepaliveParts<B> {
    /// The links to probe and send on.
    pub ha: HaLink,
    /// Where the replies arrive.
    pub inbox: KeepaliveInbox,
    /// The records' one write path.
    pub writer: KvWriter,
    /// What fences a process ([`Broadcast::send_to_self_link`]).
    pub fencer: Arc<B>,
    /// The first entrypoint requests the fences are ordered with.
    pub incarnations: Incarnations,
}

/// Starts the probe task on `tasks`; it ends when `stop` is cancelled.
pub fn spawn<B: Broadcast>(
    cfg: KeepaliveConfig,
    parts: KeepaliveParts<B>,
    stop: CancellationToken,
    tasks: &TaskTracker,
) -> JoinHandle<()> {
    let KeepaliveParts {
        ha,
        inbox,
        writer,
        fencer,
        incarnations,
    } = parts;
    inbox.lock().set_fence_after(cfg.fence_after);
    let fences = Fences {
        fencer,
        incarnations,
        tasks: tasks.clone(),
    };
    // A fence follows a silence of `fence_after` rounds. A first request
    // older than twice that made a link the rounds have probed since, and a
    // fence needs every link of its process silent: it may be forgotten.
    let look_back = cfg
        .interval
        .saturating_mul(
            cfg.fence_after
                .unwrap_or(0)
                .saturating_add(2)
                .saturating_mul(2),
        )
        .max(Duration::from_secs(60));
    tasks.spawn(async move {
        let mut tick = tokio::time::interval(cfg.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                _ = stop.cancelled() => break,
                _ = tick.tick() => {
                    let fence = run_round(&cfg, &ha, &inbox, &writer).await;
                    for (process, last_reply) in fence {
                        fences.fence(process, last_reply, &inbox);
                    }
                    if let Some(t) = Instant::now().checked_sub(look_back) {
                        fences.incarnations.forget_before(t);
                    }
                }
                _ = inbox.wake.notified() => write_records(&cfg, &inbox, &writer),
            }
        }
        tracing::debug!("keepalive probes stopped");
    })
}

/// What fences the processes that stopped answering.
struct Fences<B> {
    fencer: Arc<B>,
    incarnations: Incarnations,
    tasks: TaskTracker,
}

impl<B: Broadcast> Fences<B> {
    /// Queues the FAILED that ends the links of `process`, silent since
    /// `last_reply`, unless a new incarnation asked for the entrypoint
    /// since (its restart fences the old links itself). Does not hold up
    /// the rounds; one that is not sent is tried again next round.
    fn fence(&self, process: Fid, last_reply: Instant, inbox: &KeepaliveInbox) {
        let note = vec![HaNote::new(process, HaState::Failed)];
        let queued = self
            .incarnations
            .fence_unless_restarted(process, last_reply, || self.fencer.send_to_self_link(note));
        let Some(sent) = queued else {
            tracing::info!(%process, "process stopped answering keepalives, but a new incarnation asked for the entrypoint: its restart fences the old links");
            return;
        };
        inbox
            .metrics
            .keepalive_fenced
            .fetch_add(1, Ordering::Relaxed);
        tracing::warn!(%process, "process stopped answering keepalives: its links are fenced");
        let inbox = inbox.clone();
        self.tasks.spawn(async move {
            if let Err(e) = sent.await {
                tracing::warn!(%process, error = %e, "fence of a process that stopped answering keepalives not sent; tried again next round");
                inbox.lock().fence_not_sent(process);
            }
        });
    }
}

/// Fences together, at hax's stop, the processes whose every link left the
/// last round unanswered (gone or hung, answering keepalives or not), unless
/// they reported STOPPED or a new incarnation asked for the entrypoint since;
/// waits up to `wait` for Motr to take the notes. Motr's stop ends the links
/// one after another, a gone peer's taking an RPC timeout and then 5 s
/// (about 12 s each on libfabric); told first, theirs end at once. Returns the processes fenced.
pub async fn fence_silent_at_stop<B: Broadcast>(
    inbox: &KeepaliveInbox,
    fencer: &B,
    incarnations: &Incarnations,
    wait: Duration,
) -> Vec<Fid> {
    let silent = inbox.lock().silent(1);
    let queued = incarnations.fence_those_not_restarted(&silent, |fids| {
        let notes = fids
            .iter()
            .map(|f| HaNote::new(*f, HaState::Failed))
            .collect();
        fencer.send_to_self_link(notes)
    });
    let Some((fenced, sent)) = queued else {
        return Vec::new();
    };
    let deadline = tokio::time::Instant::now() + wait;
    match tokio::time::timeout_at(deadline, sent).await {
        Ok(Ok(sent)) => {
            let report = sent.wait_all(deadline).await;
            let processes: Vec<String> = fenced.iter().map(Fid::to_string).collect();
            tracing::info!(
                ?processes,
                delivered = report.delivered,
                pending = report.pending,
                "processes silent at the stop fenced together"
            );
        }
        Ok(Err(e)) => {
            tracing::warn!(processes = fenced.len(), error = %e, "processes silent at the stop not fenced")
        }
        Err(_) => {
            tracing::warn!(
                processes = fenced.len(),
                "fencing the processes silent at the stop is taking long; stopping anyway"
            )
        }
    }
    fenced
}

/// Runs one round; returns the processes to fence, with their last reply.
async fn run_round(
    cfg: &KeepaliveConfig,
    ha: &HaLink,
    inbox: &KeepaliveInbox,
    writer: &KvWriter,
) -> Vec<(Fid, Instant)> {
    let links = targets(ha);
    let round = {
        let mut probes = inbox.lock();
        let round = probes.round(&links);
        inbox.count_not_responding(&probes);
        round
    };
    let m = &inbox.metrics;
    m.keepalive_missed
        .fetch_add(round.missed.len() as u64, Ordering::Relaxed);
    for process in &round.lost {
        tracing::warn!(%process, rounds = MISS_LIMIT, "process does not answer keepalives");
    }
    for process in &round.forgotten {
        // Submitted before any record of a later link of the process: the
        // writer keeps the order.
        let deleted = keys::keepalive(&cfg.node, fid_text(*process))
            .map_err(|e| e.to_string())
            .and_then(|key| match writer.try_submit(WriteOp::delete(key), None) {
                Ok(()) => Ok(()),
                Err(TrySubmitError::Full { .. }) => {
                    inbox.lock().forget_again(*process);
                    Ok(())
                }
                Err(TrySubmitError::Refused(e)) => Err(e.to_string()),
            });
        if let Err(e) = deleted {
            tracing::warn!(%process, error = %e, "keepalive record of a gone process not deleted");
        }
    }
    write_records(cfg, inbox, writer);
    let fence = round.fence;
    if round.requests.is_empty() {
        return fence;
    }
    let requests = round.requests;
    let sent = ha
        .run(move |cx| {
            Ok(requests
                .into_iter()
                .map(|(link, id)| {
                    let msg = HaMsg::new(HaMsgData::KeepaliveReq { id });
                    (link, id, cx.send(link, &msg))
                })
                .collect::<Vec<_>>())
        })
        .await;
    let sent = match sent {
        Ok(s) => s,
        Err(e) => {
            tracing::debug!(error = %e, "keepalive requests not sent");
            return fence;
        }
    };
    let mut ok = 0;
    let mut probes = inbox.lock();
    for (link, id, r) in sent {
        match r {
            Ok(_) => ok += 1,
            Err(e) => {
                // The link went away meanwhile: the next round drops it.
                tracing::debug!(%link, error = %e, "keepalive request not sent");
                probes.not_sent(link, id);
            }
        }
    }
    drop(probes);
    m.keepalive_requests.fetch_add(ok, Ordering::Relaxed);
    m.count_sent("keepalive_req", ok);
    fence
}

fn write_records(cfg: &KeepaliveConfig, inbox: &KeepaliveInbox, writer: &KvWriter) {
    let records = inbox.lock().take_records();
    for (process, status) in records {
        let op = keys::keepalive(&cfg.node, fid_text(process)).and_then(|key| {
            pyjson::to_string(&status)
                .map(|v| WriteOp::put(key.clone(), v))
                .map_err(|e| hax_consul::schema::SchemaError::BadValue {
                    key,
                    reason: e.to_string(),
                })
        });
        let op = match op {
            Ok(op) => op,
            Err(e) => {
                tracing::warn!(%process, error = %e, "keepalive record not written");
                continue;
            }
        };
        match writer.try_submit(op, None) {
            Ok(()) => {}
            Err(TrySubmitError::Full { .. }) => inbox.lock().retry(process),
            Err(TrySubmitError::Refused(e)) => {
                tracing::warn!(%process, error = %e, "keepalive record not written");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hax_core::FidType;

    fn p(key: u64) -> Fid {
        Fid::typed(FidType::Process, 1, key)
    }

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn id_of(r: &Round, link: u64) -> Uint128 {
        r.requests
            .iter()
            .find(|(l, _)| *l == LinkId(link))
            .map(|(_, id)| *id)
            .expect("a request on the link")
    }

    #[test]
    fn ids_are_fresh_and_carry_the_run() {
        let mut probes = Probes::new(77);
        let links = [(LinkId(1), p(1)), (LinkId(2), p(2))];
        let a = probes.round(&links);
        let b = probes.round(&links);
        let mut ids: Vec<_> = a.requests.iter().chain(&b.requests).map(|r| r.1).collect();
        assert!(ids.iter().all(|i| i.hi == 77));
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), 4);
    }

    #[test]
    fn replies_match_by_id_and_link() {
        let mut probes = Probes::new(1);
        let r = probes.round(&[(LinkId(1), p(1)), (LinkId(2), p(2))]);
        let (id1, id2) = (id_of(&r, 1), id_of(&r, 2));
        // Another link's id, an unknown id, an unknown link: ignored.
        assert_eq!(probes.reply(LinkId(1), id2, 5, at(1)), ReplyMatch::Unknown);
        assert_eq!(
            probes.reply(LinkId(1), Uint128::new(9, 9), 5, at(1)),
            ReplyMatch::Unknown
        );
        assert_eq!(probes.reply(LinkId(3), id1, 5, at(1)), ReplyMatch::Unknown);
        assert!(probes.take_records().is_empty(), "nothing learned yet");
        assert_eq!(
            probes.reply(LinkId(1), id1, 5, at(1)),
            ReplyMatch::Matched {
                process: p(1),
                recovered: false
            }
        );
        // The same reply again matches nothing any more.
        assert_eq!(probes.reply(LinkId(1), id1, 5, at(1)), ReplyMatch::Unknown);
        let recs = probes.take_records();
        assert_eq!(
            recs,
            vec![(
                p(1),
                KeepaliveStatus {
                    counter: 5,
                    replied_at: "1970-01-01T00:00:01.000000Z".into(),
                    responding: true,
                    missed: 0
                }
            )]
        );
        assert!(probes.take_records().is_empty(), "written once");
    }

    #[test]
    fn misses_mark_a_process_not_responding_then_a_reply_recovers_it() {
        let mut probes = Probes::new(1);
        let links = [(LinkId(1), p(1))];
        let r = probes.round(&links);
        probes.reply(LinkId(1), id_of(&r, 1), 1, at(1));
        probes.take_records();
        let mut last = Round::default();
        for n in 1..=MISS_LIMIT {
            last = probes.round(&links);
            let recs = probes.take_records();
            if n == 1 {
                // The first round ending here was answered.
                assert!(last.missed.is_empty());
                assert!(recs.is_empty());
                continue;
            }
            assert_eq!(last.missed, vec![p(1)]);
            assert_eq!(recs.len(), 1);
            assert_eq!(recs[0].1.missed, n - 1);
            assert!(recs[0].1.responding, "round {n}");
            assert!(last.lost.is_empty());
        }
        assert_eq!(probes.not_responding(), 0);
        let r = probes.round(&links);
        assert_eq!(r.lost, vec![p(1)]);
        assert_eq!(probes.not_responding(), 1);
        let recs = probes.take_records();
        assert_eq!(recs[0].1.missed, MISS_LIMIT);
        assert!(!recs[0].1.responding);
        assert_eq!(recs[0].1.counter, 1, "the last reply's counter stays");
        assert_eq!(probes.liveness(LinkId(1)), Some(Liveness::NotResponding));
        // Lost is reported once; with its last requests unanswered the
        // process is asked again only one round in KEPT_IDS.
        let again = probes.round(&links);
        assert!(again.lost.is_empty());
        assert!(again.requests.is_empty(), "{again:?}");
        assert_eq!(probes.take_records()[0].1.missed, MISS_LIMIT + 1);
        // A late reply to a kept request counts; older ones are dropped.
        assert_eq!(
            probes.reply(LinkId(1), id_of(&last, 1), 9, at(9)),
            ReplyMatch::Matched {
                process: p(1),
                recovered: true
            }
        );
        assert_eq!(
            probes.reply(LinkId(1), id_of(&last, 1), 9, at(9)),
            ReplyMatch::Unknown
        );
        let recs = probes.take_records();
        assert!(recs[0].1.responding);
        assert_eq!(probes.not_responding(), 0);
        assert_eq!((recs[0].1.counter, recs[0].1.missed), (9, 0));
        // The newest request is still awaited.
        assert!(matches!(
            probes.reply(LinkId(1), id_of(&r, 1), 10, at(10)),
            ReplyMatch::Matched {
                recovered: false,
                ..
            }
        ));
    }

    #[test]
    fn a_silent_process_is_written_only_once_known_not_to_respond() {
        let mut probes = Probes::new(1);
        let links = [(LinkId(1), p(1))];
        for _ in 0..MISS_LIMIT {
            probes.round(&links);
            assert!(probes.take_records().is_empty());
        }
        let r = probes.round(&links);
        assert_eq!(r.lost, vec![p(1)]);
        let recs = probes.take_records();
        assert_eq!(
            recs[0].1,
            KeepaliveStatus {
                counter: 0,
                replied_at: String::new(),
                responding: false,
                missed: MISS_LIMIT
            }
        );
    }

    #[test]
    fn a_link_with_its_requests_unanswered_is_asked_less() {
        let mut probes = Probes::new(1);
        let links = [(LinkId(1), p(1))];
        for _ in 0..KEPT_IDS {
            assert_eq!(probes.round(&links).requests.len(), 1);
        }
        let mut asked = Vec::new();
        for _ in 0..3 * KEPT_IDS {
            let r = probes.round(&links);
            assert_eq!(r.missed, vec![p(1)], "still a missed round");
            asked.extend(r.requests.iter().map(|(_, id)| *id));
        }
        assert_eq!(asked.len(), 3, "one round in {KEPT_IDS}");
        // Its reply to the newest kept request counts.
        assert_eq!(
            probes.reply(LinkId(1), asked[2], 1, at(1)),
            ReplyMatch::Matched {
                process: p(1),
                recovered: true
            }
        );
        assert_eq!(probes.round(&links).requests.len(), 1);
    }

    #[test]
    fn gone_links_drop_their_state() {
        let mut probes = Probes::new(1);
        let r = probes.round(&[(LinkId(1), p(1)), (LinkId(2), p(2))]);
        let id1 = id_of(&r, 1);
        let r2 = probes.round(&[(LinkId(2), p(2))]);
        assert_eq!(r2.dropped, 1);
        assert_eq!(probes.len(), 1);
        assert_eq!(probes.liveness(LinkId(1)), None);
        assert_eq!(probes.reply(LinkId(1), id1, 1, at(1)), ReplyMatch::Unknown);
        // A link id reused for another process starts afresh.
        probes.round(&[(LinkId(2), p(3))]);
        assert_eq!(probes.liveness(LinkId(2)), Some(Liveness::Unknown));
        assert!(probes.take_records().is_empty());
    }

    #[test]
    fn a_process_whose_links_are_gone_loses_its_record() {
        let mut probes = Probes::new(1);
        let r = probes.round(&[(LinkId(1), p(1)), (LinkId(2), p(2))]);
        probes.reply(LinkId(1), id_of(&r, 1), 1, at(1));
        probes.reply(LinkId(2), id_of(&r, 2), 1, at(1));
        assert_eq!(probes.take_records().len(), 2);
        // Process 1 restarted: its new link is probed, its record stays.
        let r = probes.round(&[(LinkId(3), p(1)), (LinkId(2), p(2))]);
        assert_eq!((r.dropped, r.forgotten.clone()), (1, vec![]));
        // Process 2's only link is gone: its record goes.
        let r = probes.round(&[(LinkId(3), p(1))]);
        assert_eq!(r.forgotten, vec![p(2)]);
        // A deletion that found no room is made again next round, unless
        // the process is probed again by then.
        probes.forget_again(p(2));
        assert_eq!(probes.round(&[(LinkId(3), p(1))]).forgotten, vec![p(2)]);
        probes.forget_again(p(1));
        assert!(probes.round(&[(LinkId(3), p(1))]).forgotten.is_empty());
        // A link never recorded leaves no record to delete.
        probes.round(&[(LinkId(3), p(1)), (LinkId(4), p(4))]);
        let r = probes.round(&[(LinkId(3), p(1))]);
        assert!(r.forgotten.is_empty());
    }

    #[test]
    fn a_process_that_stops_answering_is_fenced_once() {
        let mut probes = Probes::new(1);
        probes.set_fence_after(Some(5));
        let links = [(LinkId(1), p(1)), (LinkId(2), p(2))];
        let r = probes.round(&links);
        probes.reply(LinkId(1), id_of(&r, 1), 1, at(1));
        probes.reply(LinkId(2), id_of(&r, 2), 1, at(1));
        let mut fenced_at = None;
        for n in 1..=8 {
            let r = probes.round(&links);
            // Process 2 goes on answering whatever it is asked.
            for (link, id) in &r.requests {
                if *link == LinkId(2) {
                    probes.reply(*link, *id, n, at(n));
                }
            }
            if !r.fence.is_empty() {
                let fenced: Vec<Fid> = r.fence.iter().map(|(f, _)| *f).collect();
                assert_eq!(fenced, vec![p(1)], "round {n}");
                assert!(fenced_at.is_none(), "fenced once: round {n}");
                fenced_at = Some(n);
            }
        }
        // The round ending the fifth missed one fences it (the first round
        // here ends the answered one).
        assert_eq!(fenced_at, Some(6));
        // A fence that was not sent is tried again next round.
        probes.fence_not_sent(p(1));
        let again = probes.round(&links).fence;
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].0, p(1));
        assert!(probes.round(&links).fence.is_empty());
    }

    #[test]
    fn a_process_never_heard_from_or_answering_on_a_link_is_not_fenced() {
        let mut probes = Probes::new(1);
        probes.set_fence_after(Some(3));
        // Process 1 never answered (a peer without a keepalive handler);
        // process 2 answers on its new link, not on its old one.
        let links = [(LinkId(1), p(1)), (LinkId(2), p(2)), (LinkId(3), p(2))];
        let r = probes.round(&links);
        probes.reply(LinkId(2), id_of(&r, 2), 1, at(1));
        probes.reply(LinkId(3), id_of(&r, 3), 1, at(1));
        for n in 1..20 {
            let r = probes.round(&links);
            assert!(r.fence.is_empty(), "round {n}: {r:?}");
            for (link, id) in &r.requests {
                if *link == LinkId(3) {
                    probes.reply(*link, *id, n, at(n));
                }
            }
        }
        // Without a bound nothing is fenced.
        let mut probes = Probes::new(1);
        let r = probes.round(&links[1..2]);
        probes.reply(LinkId(2), id_of(&r, 2), 1, at(1));
        for _ in 0..20 {
            assert!(probes.round(&links[1..2]).fence.is_empty());
        }
    }

    #[test]
    fn processes_silent_for_a_round_on_every_link_are_listed() {
        let mut probes = Probes::new(1);
        probes.set_fence_after(Some(3));
        // 1 answers; 2 never answers; 3 answers on one of its links only.
        let links = [
            (LinkId(1), p(1)),
            (LinkId(2), p(2)),
            (LinkId(3), p(3)),
            (LinkId(4), p(3)),
        ];
        let answer = |probes: &mut Probes, r: &Round, which: &[u64]| {
            for (link, id) in &r.requests {
                if which.contains(&link.0) {
                    probes.reply(*link, *id, 1, at(1));
                }
            }
        };
        let r = probes.round(&links);
        assert!(probes.silent(1).is_empty(), "no round ended yet");
        answer(&mut probes, &r, &[1, 3]);
        let r = probes.round(&links);
        let silent: Vec<Fid> = probes.silent(1).into_iter().map(|(f, _)| f).collect();
        assert_eq!(silent, vec![p(2)]);
        // 1 stops answering too; 3's silent link does not make it silent.
        answer(&mut probes, &r, &[3]);
        probes.round(&links);
        let silent: Vec<Fid> = probes.silent(1).into_iter().map(|(f, _)| f).collect();
        assert_eq!(silent, vec![p(1), p(2)]);
        // Fenced for its silence, 1 is not listed again.
        let r = probes.round(&links);
        answer(&mut probes, &r, &[3]);
        let r = probes.round(&links);
        answer(&mut probes, &r, &[3]);
        let fence = r.fence;
        assert_eq!(
            fence.iter().map(|(f, _)| *f).collect::<Vec<_>>(),
            vec![p(1)]
        );
        let silent: Vec<Fid> = probes.silent(1).into_iter().map(|(f, _)| f).collect();
        assert_eq!(silent, vec![p(2)]);
    }

    #[test]
    fn unsent_requests_are_not_counted_missed() {
        let mut probes = Probes::new(1);
        let links = [(LinkId(1), p(1))];
        let r = probes.round(&links);
        probes.not_sent(LinkId(1), id_of(&r, 1));
        let next = probes.round(&links);
        assert!(next.missed.is_empty());
    }

    #[test]
    fn times_are_rfc3339_utc() {
        assert_eq!(
            rfc3339(SystemTime::UNIX_EPOCH + Duration::new(951_827_696, 789_000)),
            "2000-02-29T12:34:56.000789Z"
        );
        assert_eq!(rfc3339(at(0)), "1970-01-01T00:00:00.000000Z");
    }
}
