//! The event pipeline: what hax does with the messages and requests Motr
//! processes send it ([`MotrEvent`]), as the original's consumer threads do.
//!
//! | event | effect |
//! |---|---|
//! | process event | broadcast of the process health (health table, confd and hax overrides, hax-only for mkfs and hax); `processes/<fid>` (type `M0_CONF_HA_PROCESS_HA` for hax); BQ `PROCESS-STATE-UPDATE` unless mkfs |
//! | service event | logged and counted |
//! | STOB I/O error | EQ `stob-ioq` entry for the RC rule of that name |
//! | NVEC SET | ONLINE/REPAIRED notes broadcast again, REPAIR rolled back to FAILED, REBALANCE to REPAIRED |
//! | first entrypoint request | restart detection with `<node>/process_restarts/<fid>`: on a genuine restart, `processes/<fid>` STOPPED, BQ publication, FAILED broadcast to the other processes and a wait for its delivery, then the reply |
//!
//! Every Consul write goes through the [`KvWriter`]; a message's
//! [`hax_core::Delivery`] rides on the acks of its writes, so the message is
//! delivered once what it asked for is durable.
//!
//! # Ordering
//!
//! Events are spread over lanes by object (process fid, the link for NVEC
//! SETs); a lane handles its events one at a time in arrival order, so the
//! events of one process keep their order while different processes
//! proceed concurrently. Handling an event orders its broadcast and submits
//! its writes, in that order; the lane does not wait for either to finish
//! (the message's delivery does), so the broadcasts and writes of one
//! process's events keep the events' order. The lanes hold a bounded number
//! of events in all; a lane waits when the writer has no room, and then the
//! pipeline's bounded input fills: what the Motr side does then is its own
//! policy (it never blocks).

use std::collections::HashMap;
use std::num::NonZeroI32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hax_consul::backoff::Backoff;
use hax_consul::schema::{
    self, HaxKv, ProcessState, ProcessStatus, QueueKind, QueueMessage, SchemaError,
};
use hax_core::{Fid, HaNote, HaState, LinkId, ProcessEvent, ProcessEventKind, ProcessType};
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::metrics::EventMetrics;
use crate::model::broadcast::Broadcast;
use crate::model::broadcast::BroadcastFailed;
use crate::model::broadcast::BroadcastOptions;
use crate::model::broadcast::DeliveryReport;
use crate::model::broadcast::Sent;
use crate::model::facts::ClusterFacts;
use crate::model::records::process_state_message;
use crate::model::records::process_status_write;
use crate::model::records::restart_count_write;
use crate::model::records::stob_ioq_payload;
use crate::model::records::timestamp_now;
use crate::model::vocab::fid_of;
use crate::model::vocab::process_event_health;
use crate::model::vocab::process_kind;
use crate::model::vocab::process_state;
use crate::model::{
    EntrypointReply, EntrypointRequest, EntrypointResponder, HaUpdate, MotrEvent, ObjHealth,
    StobIoqError,
};
use crate::motr::fencing::{
    HeldFailures, HeldMetrics, Incarnations, LinkWatch, HA_DISCONNECT_TIMEOUT,
};
use crate::motr::rconfc::{ConfdEvent, ConfdEvents};
use hax_consul::writer::{Ack, AckWaiter, KvWriter, WriteOp};

// ---------------------------------------------------------------------------
// What the pipeline needs from the rest of the daemon

// ---------------------------------------------------------------------------
// Tables

/// The notes of an NVEC SET that are broadcast again, with the health they
/// are broadcast with: ONLINE and REPAIRED as they are, a REPAIR rolled back
/// to FAILED and a REBALANCE to REPAIRED (failed repair or rebalance).
pub fn nvec_set_rebroadcast(notes: &[HaNote]) -> Vec<HaUpdate> {
    notes
        .iter()
        .filter_map(|n| {
            let health = match n.state {
                HaState::Online => ObjHealth::Ok,
                HaState::Repaired | HaState::Rebalance => ObjHealth::Repaired,
                HaState::Repair => ObjHealth::Failed,
                _ => return None,
            };
            Some(HaUpdate::new(n.fid, health))
        })
        .collect()
}

// ---------------------------------------------------------------------------
// The pipeline

/// Settings of the pipeline.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventsConfig {
    /// Lanes (events of one object always go to the same lane).
    pub lanes: usize,
    /// Events the lanes hold in all, taken from the input queue and not yet
    /// handled. The bound is shared, not per lane: a lane with many events
    /// waiting (one busy process) does not hold up the others.
    pub lanes_hold: usize,
    /// How long a first entrypoint request of a restarted process waits for
    /// the FAILED broadcast to be delivered (the original: 30 s).
    pub restart_delivery_wait: Duration,
    /// How long a first entrypoint request waits for Consul (restart count
    /// read, writes) before it is refused with EAGAIN, so that the process
    /// asks again.
    pub consul_wait: Duration,
    /// How long the FAILED note of a stopped process is held back from
    /// hax's own link after the STOPPED event is delivered, while the
    /// process's link is there (see [`crate::motr::fencing`]).
    pub self_failed_hold: Duration,
}

impl Default for EventsConfig {
    fn default() -> Self {
        EventsConfig {
            lanes: 64,
            lanes_hold: 4096,
            restart_delivery_wait: Duration::from_secs(30),
            consul_wait: Duration::from_secs(30),
            self_failed_hold: HA_DISCONNECT_TIMEOUT,
        }
    }
}

fn inc(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// The event pipeline.
pub struct EventPipeline<B, C> {
    inner: Arc<Inner<B, C>>,
}

impl<B, C> Clone for EventPipeline<B, C> {
    fn clone(&self) -> Self {
        EventPipeline {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<B, C> std::fmt::Debug for EventPipeline<B, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventPipeline")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

struct Inner<B, C> {
    writer: KvWriter,
    kv: HaxKv,
    broadcaster: Arc<B>,
    cluster: Arc<C>,
    config: EventsConfig,
    metrics: Arc<EventMetrics>,
    /// The node's restart counts once read, as this hax has bumped them.
    restart_counts: tokio::sync::Mutex<Option<HashMap<Fid, u64>>>,
    /// FAILED notes of stopped processes held back from hax's own link.
    held: HeldFailures<B>,
    /// First requests, recorded for the fences sent elsewhere.
    incarnations: Incarnations,
    /// Told of confd processes stopping and starting (rconfc).
    confds: Option<ConfdEvents>,
    /// Where every task of the pipeline runs.
    tasks: TaskTracker,
}

impl<B: Broadcast, C: ClusterFacts> EventPipeline<B, C> {
    /// A pipeline writing through `writer`, reading through `kv`, running
    /// its tasks on `tasks`: they end once the pipeline's task has ended
    /// ([`EventPipeline::spawn`]) and the pipeline is dropped, or hax stops
    /// ([`LinkWatch::set_stopping`]), so closing and waiting for `tasks`
    /// then waits for all of them.
    pub fn new(
        writer: KvWriter,
        kv: HaxKv,
        broadcaster: Arc<B>,
        cluster: Arc<C>,
        config: EventsConfig,
        tasks: &TaskTracker,
    ) -> Self {
        let metrics = Arc::new(EventMetrics::default());
        let held = HeldFailures::new(
            Arc::clone(&broadcaster),
            LinkWatch::new(),
            config.self_failed_hold,
            tasks,
            Arc::clone(&metrics),
        );
        EventPipeline {
            inner: Arc::new(Inner {
                writer,
                kv,
                broadcaster,
                cluster,
                config,
                metrics,
                restart_counts: tokio::sync::Mutex::new(None),
                held,
                incarnations: Incarnations::new(),
                confds: None,
                tasks: tasks.clone(),
            }),
        }
    }

    /// Learns of gone links from `links` (fed by the Motr callbacks);
    /// without it a held FAILED note waits for its bound. Call before the
    /// pipeline is shared.
    pub fn with_link_watch(mut self, links: LinkWatch) -> Self {
        match Arc::get_mut(&mut self.inner) {
            Some(inner) => {
                inner.held = HeldFailures::new(
                    Arc::clone(&inner.broadcaster),
                    links,
                    inner.config.self_failed_hold,
                    &inner.tasks,
                    Arc::clone(&inner.metrics),
                );
            }
            None => tracing::warn!("event pipeline already shared; link watch not attached"),
        }
        self
    }

    /// Records first entrypoint requests in `incarnations`, which fences
    /// sent elsewhere (keepalives) are ordered by. Call before the pipeline
    /// is shared.
    pub fn with_incarnations(mut self, incarnations: Incarnations) -> Self {
        match Arc::get_mut(&mut self.inner) {
            Some(inner) => inner.incarnations = incarnations,
            None => tracing::warn!("event pipeline already shared; incarnations not attached"),
        }
        self
    }

    /// Tells `confds` of confd processes stopping and starting (so that
    /// rconfc lets go of a stopping confd). Call before the pipeline is
    /// shared.
    pub fn with_confd_events(mut self, confds: ConfdEvents) -> Self {
        match Arc::get_mut(&mut self.inner) {
            Some(inner) => inner.confds = Some(confds),
            None => tracing::warn!("event pipeline already shared; confd events not attached"),
        }
        self
    }

    /// The counters of FAILED notes held back from hax's own link.
    pub fn held_metrics(&self) -> Arc<HeldMetrics> {
        self.inner.held.metrics()
    }

    /// The counters.
    pub fn metrics(&self) -> Arc<EventMetrics> {
        Arc::clone(&self.inner.metrics)
    }

    /// Runs the pipeline on `events` until the sender side closes or
    /// `cancel` fires; then the lanes finish the events they hold and the
    /// task ends. Writes submitted are made durable by the writer (flush it
    /// with [`KvWriter::shutdown`] after this task ends). While Consul is
    /// down and the writer is full, lanes wait for room; [`KvWriter::close`]
    /// releases them (their writes then fail with
    /// [`WriteError::Closed`](hax_consul::writer::WriteError::Closed) and their messages are delivered), so a
    /// shutdown that cannot wait longer closes the writer first.
    pub fn spawn(
        &self,
        mut events: mpsc::Receiver<MotrEvent>,
        cancel: CancellationToken,
    ) -> JoinHandle<()> {
        let this = self.clone();
        self.inner.tasks.spawn(async move {
            let n = this.inner.config.lanes.max(1);
            let hold = Arc::new(Semaphore::new(this.inner.config.lanes_hold.max(1)));
            let mut lanes = Vec::with_capacity(n);
            let mut tasks = JoinSet::new();
            for _ in 0..n {
                let (tx, mut rx) = mpsc::unbounded_channel::<(MotrEvent, OwnedSemaphorePermit)>();
                lanes.push(tx);
                let lane = this.clone();
                tasks.spawn(async move {
                    while let Some((ev, held)) = rx.recv().await {
                        lane.handle(ev).await;
                        drop(held);
                    }
                });
            }
            tracing::info!(lanes = n, "event pipeline started");
            loop {
                let ev = tokio::select! {
                    ev = events.recv() => ev,
                    _ = cancel.cancelled() => None,
                };
                let Some(ev) = ev else { break };
                let Ok(held) = Arc::clone(&hold).acquire_owned().await else {
                    break;
                };
                let lane = usize::try_from(route_key(&ev) % n as u64).unwrap_or(0);
                if lanes[lane].send((ev, held)).is_err() {
                    tracing::error!(lane, "event lane ended; event dropped");
                }
            }
            drop(lanes);
            while tasks.join_next().await.is_some() {}
            tracing::info!("event pipeline stopped");
        })
    }

    /// Handles one event to the end (writes submitted, broadcasts handed
    /// over, replies sent).
    pub async fn handle(&self, event: MotrEvent) {
        match event {
            MotrEvent::Process {
                link,
                fid,
                event,
                delivery,
            } => {
                self.on_process(link, fid, event, delivery_ack(delivery))
                    .await
            }
            MotrEvent::Service {
                link,
                fid,
                source_process,
                event,
                delivery,
            } => {
                inc(&self.inner.metrics.service_events);
                tracing::debug!(%link, service = %fid, process = %source_process, event = %event.event, kind = %event.service_type, "service event");
                delivery.deliver();
            }
            MotrEvent::StobIoq {
                link,
                fid,
                error,
                delivery,
            } => {
                self.on_stob_ioq(link, fid, &error, delivery_ack(delivery))
                    .await
            }
            MotrEvent::NvecSet {
                link,
                notes,
                delivery,
            } => {
                self.on_nvec_set(link, &notes).await;
                delivery.deliver();
            }
            MotrEvent::FirstRequest {
                req,
                reply,
                responder,
                received,
            } => self.on_first_request(req, reply, responder, received).await,
        }
    }

    async fn submit(&self, op: WriteOp, ack: Ack) {
        if let Err(e) = self.inner.writer.submit(op, Some(ack)).await {
            inc(&self.inner.metrics.write_failures);
            tracing::error!(error = %e, "Consul write not queued");
        }
    }

    async fn broadcast(&self, updates: Vec<HaUpdate>, options: BroadcastOptions) -> Option<Sent> {
        match self.inner.broadcaster.broadcast(updates, options).await {
            Ok(sent) => Some(sent),
            Err(e) => {
                inc(&self.inner.metrics.broadcast_failures);
                tracing::warn!(error = %e, "broadcast not handed to Motr");
                None
            }
        }
    }

    /// A process event, with `ack` completed once its writes are durable
    /// and its broadcast handed to Motr. The broadcast is ordered before the
    /// writes are submitted, as the original did them, but not waited for
    /// here: the next event of the process is handled meanwhile (its
    /// broadcast and writes come after, in order).
    ///
    /// The FAILED note of a STOPPED process other than hax goes to the other
    /// processes at once and is held back from hax's own link (see
    /// [`crate::motr::fencing`]); the event's delivery does not wait for it. A
    /// later start of the process drops a note still held.
    pub async fn on_process(&self, link: LinkId, fid: Fid, ev: ProcessEvent, mut ack: Ack) {
        let inner = &self.inner;
        inc(&inner.metrics.process_events);
        let is_hax = fid == inner.cluster.hax_fid();
        let mut event = ev.event;
        if let Some(confds) = inner.confds.as_ref().filter(|_| !is_hax) {
            let signal = match event {
                ProcessEventKind::Stopping | ProcessEventKind::Stopped => {
                    Some(ConfdEvent::Stopping(fid))
                }
                ProcessEventKind::Started | ProcessEventKind::DtmRecovered => {
                    Some(ConfdEvent::Started(fid))
                }
                ProcessEventKind::Starting => None,
            };
            if let Some(signal) = signal.filter(|_| inner.cluster.is_confd(fid)) {
                confds.send(signal);
            }
        }
        if !is_hax
            && matches!(
                event,
                ProcessEventKind::Starting
                    | ProcessEventKind::Started
                    | ProcessEventKind::DtmRecovered
            )
        {
            inner.held.drop_held(fid);
            inner.incarnations.running(fid);
        }
        let mut broadcast = None;
        let broadcasting = matches!(
            event,
            ProcessEventKind::DtmRecovered | ProcessEventKind::Started | ProcessEventKind::Stopped
        );
        if broadcasting && is_hax && event == ProcessEventKind::Stopped {
            // The original's hax override rewrote every hax event to
            // DTM_RECOVERED/ONLINE, a stop included; a stopping hax is
            // recorded as stopped, and not broadcast to its own link, where a
            // FAILED note about itself would fence its own Motr.
            tracing::info!(%link, process = %fid, "hax itself stopped; recorded, not broadcast");
        } else if broadcasting {
            let Some(mut health) = process_event_health(ev.process_type, event) else {
                // The original fails on its table lookup and drops the
                // whole event; kernel clients and mkfs DTM recovery are
                // not recorded either.
                inc(&inner.metrics.process_events_ignored);
                tracing::warn!(%link, process = %fid, event = %event, kind = %ev.process_type, "process event with no health entry; ignored");
                ack.complete(Ok(()));
                return;
            };
            // confd and hax skip DTM recovery.
            if (event == ProcessEventKind::Started
                && ev.process_type == ProcessType::M0d
                && inner.cluster.is_confd(fid))
                || is_hax
            {
                health = ObjHealth::Ok;
                event = ProcessEventKind::DtmRecovered;
            }
            let hax_only = ev.process_type == ProcessType::M0mkfs || is_hax;
            if event == ProcessEventKind::Stopped {
                // The STOPPED path is the fencing module's from here on: its
                // broadcast, the hold and hax's own link.
                inner.incarnations.stopped(fid);
                ack = inner.held.stopped(fid, link, health, hax_only, ack);
            } else {
                let options = BroadcastOptions {
                    broadcast_hax_only: hax_only,
                    coalesce: true,
                    ..BroadcastOptions::default()
                };
                broadcast = Some(
                    inner
                        .broadcaster
                        .broadcast(vec![HaUpdate::new(fid, health)], options),
                );
            }
        }
        let status = ProcessStatus {
            state: process_state(event),
            kind: if is_hax {
                schema::ProcessType::Ha
            } else {
                process_kind(ev.process_type)
            },
        };
        tracing::info!(%link, process = %fid, state = ?status.state, kind = ?status.kind, pid = ev.pid, "process event");
        inner.cluster.record_process_status(fid, status);
        let publish = ev.process_type != ProcessType::M0mkfs;
        let parts = 1 + usize::from(publish) + usize::from(broadcast.is_some());
        let mut acks = ack.split(parts).into_iter();
        if let Some((sent, a)) = broadcast.and_then(|b| Some((b, acks.next()?))) {
            let metrics = Arc::clone(&inner.metrics);
            inner.tasks.spawn(async move {
                if let Err(e) = sent.await {
                    inc(&metrics.broadcast_failures);
                    tracing::warn!(process = %fid, error = %e, "broadcast not handed to Motr");
                }
                a.complete(Ok(()));
            });
        }
        match process_status_write(fid, status) {
            Ok(op) => {
                if let Some(a) = acks.next() {
                    self.submit(op, a).await;
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "process status not written");
                if let Some(a) = acks.next() {
                    a.complete(Err(e));
                }
            }
        }
        if let Some(a) = acks.next() {
            let op = WriteOp::publish(QueueKind::Broadcast, process_state_message(fid, status));
            self.submit(op, a).await;
        }
    }

    /// A STOB I/O error: published to the EQ as `stob-ioq`.
    pub async fn on_stob_ioq(&self, link: LinkId, fid: Fid, error: &StobIoqError, ack: Ack) {
        inc(&self.inner.metrics.stob_ioq);
        let payload = stob_ioq_payload(fid, error);
        tracing::warn!(%link, fid = %fid, sdev = %error.conf_sdev, rc = error.rc, opcode = error.opcode, offset = error.offset, size = error.size, "STOB I/O error");
        let message = QueueMessage::new(
            timestamp_now(),
            "stob-ioq",
            serde_json::to_value(payload).unwrap_or_default(),
        );
        self.submit(WriteOp::publish(QueueKind::Event, message), ack)
            .await;
    }

    /// An NVEC SET: states reported by a process, some broadcast again.
    pub async fn on_nvec_set(&self, link: LinkId, notes: &[HaNote]) {
        inc(&self.inner.metrics.nvec_set);
        let updates = nvec_set_rebroadcast(notes);
        tracing::info!(%link, notes = notes.len(), rebroadcast = updates.len(), "NVEC SET");
        if !updates.is_empty() {
            self.broadcast(updates, BroadcastOptions::default()).await;
        }
    }

    /// The restart count of `fid` before this start, counting this start
    /// in memory at once. The counts of the node are read from Consul at
    /// the first need (retried until `deadline`), then kept: this hax is the
    /// only writer of its node's counts, and every count it reads it writes
    /// back bumped. `None` if Consul could not be read in time.
    async fn next_restart_count(&self, node: &str, fid: Fid, deadline: Instant) -> Option<u64> {
        let mut counts = self.inner.restart_counts.lock().await;
        if counts.is_none() {
            *counts = Some(self.load_restart_counts(node, deadline).await?);
        }
        let counts = counts.as_mut()?;
        let count = counts.entry(fid).or_insert(0);
        let before = *count;
        *count += 1;
        Some(before)
    }

    async fn load_restart_counts(
        &self,
        node: &str,
        deadline: Instant,
    ) -> Option<HashMap<Fid, u64>> {
        let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(2));
        loop {
            match self.inner.kv.all_process_restarts(node).await {
                Ok((counts, bad)) => {
                    for key in bad {
                        // A count that cannot be read counts as none: the
                        // process is taken as starting, and the key repaired.
                        tracing::warn!(%key, "restart count unreadable; counting from 0");
                    }
                    tracing::debug!(processes = counts.len(), "restart counts read");
                    return Some(counts.into_iter().map(|(f, n)| (fid_of(f), n)).collect());
                }
                Err(SchemaError::Consul(e)) if e.is_retryable() => {
                    tracing::debug!(error = %e, "restart counts not read yet");
                }
                Err(e) => {
                    tracing::error!(error = %e, "restart counts cannot be read");
                    return None;
                }
            }
            if Instant::now() + backoff.peek() > deadline {
                return None;
            }
            tokio::time::sleep(backoff.next_pause()).await;
        }
    }

    /// A first entrypoint request: restart detection, then the reply (or
    /// EAGAIN when Consul cannot be read, so that the process asks again).
    /// The count is read and the bookkeeping submitted here, in the lane;
    /// the wait for it to be durable (and, on a restart, for the FAILED
    /// broadcast) happens off the lane, so that other processes' events and
    /// requests go on meanwhile.
    pub async fn on_first_request(
        &self,
        req: EntrypointRequest,
        reply: EntrypointReply,
        responder: EntrypointResponder,
        received: std::time::Instant,
    ) {
        match self
            .restart_begin(req.process_fid, &req.remote_endpoint)
            .await
        {
            Ok(begun) => {
                let this = self.clone();
                let process = req.process_fid;
                self.inner.tasks.spawn(async move {
                    this.restart_finish(begun).await;
                    inc(&this.inner.metrics.first_requests_accepted);
                    responder.accept(reply);
                    let took = received.elapsed();
                    this.inner.metrics.first_request_reply.observe(took);
                    // Once per process start: what a slow start of an m0d
                    // is first checked against.
                    tracing::info!(%process, elapsed_us = took.as_micros() as u64, "first entrypoint request answered");
                });
            }
            Err(e) => {
                inc(&self.inner.metrics.first_requests_refused);
                tracing::warn!(process = %req.process_fid, endpoint = %req.remote_endpoint, error = %e, "refusing the entrypoint request");
                responder.refuse(NonZeroI32::new(hax_core::EAGAIN).unwrap_or(NonZeroI32::MIN));
            }
        }
    }

    /// Restart detection of a first entrypoint request: reads and bumps
    /// `<node>/process_restarts/<fid>`; on a genuine restart records the
    /// process STOPPED, publishes it to the BQ, broadcasts it FAILED to the
    /// other processes and waits (bounded) for the deliveries. Returns once
    /// the reply may be sent.
    pub async fn restart_check(
        &self,
        fid: Fid,
        endpoint: &str,
    ) -> Result<RestartCheck, ConsulUnavailable> {
        let begun = self.restart_begin(fid, endpoint).await?;
        Ok(self.restart_finish(begun).await)
    }

    /// The count, and the writes of restart detection submitted in order.
    async fn restart_begin(
        &self,
        fid: Fid,
        endpoint: &str,
    ) -> Result<RestartBegun, ConsulUnavailable> {
        let inner = &self.inner;
        inc(&inner.metrics.first_requests);
        // Before the old links are counted and fenced (see Incarnations).
        inner.incarnations.first_request(fid);
        let node = inner.cluster.local_node();
        let deadline = Instant::now() + inner.config.consul_wait;
        let count = self
            .next_restart_count(&node, fid, deadline)
            .await
            .ok_or(ConsulUnavailable)?;
        // 0: first start ever; 1: the m0d start after m0mkfs (same fid);
        // more: a genuine restart after a crash.
        let restarted =
            fid != inner.cluster.hax_fid() && !inner.cluster.is_client(fid) && count > 1;
        let mut waiting: Vec<AckWaiter> = Vec::new();
        if restarted {
            inc(&inner.metrics.restarts);
            let status = ProcessStatus {
                state: ProcessState::Stopped,
                kind: schema::ProcessType::M0d,
            };
            inner.cluster.record_process_status(fid, status);
            match process_status_write(fid, status) {
                Ok(op) => {
                    let (ack, w) = Ack::channel();
                    self.submit(op, ack).await;
                    waiting.push(w);
                }
                Err(e) => tracing::error!(error = %e, "process status not written"),
            }
            let (ack, w) = Ack::channel();
            let op = WriteOp::publish(QueueKind::Broadcast, process_state_message(fid, status));
            self.submit(op, ack).await;
            waiting.push(w);
        }
        // The previous incarnation's held FAILED goes to hax's own link now,
        // before the new link exists, which a later one would fence too.
        let held = inner.held.send_now(fid);
        // A first request means every link this process made before is dead
        // (a process has one HA link): Motr ends them on a FAILED on hax's
        // own link. Without it they live on, each costing RPC timeouts on
        // every broadcast and keepalive.
        let fence = match held {
            None if fid != inner.cluster.hax_fid() && inner.broadcaster.links_of(fid) > 0 => {
                inc(&inner.metrics.old_links_fenced);
                tracing::info!(process = %fid, %endpoint, "links of a previous incarnation: FAILED to hax's own link before the reply");
                let sent = inner
                    .broadcaster
                    .send_to_self_link(vec![HaNote::new(fid, HaState::Failed)]);
                Some(Box::pin(sent) as FenceSend)
            }
            _ => None,
        };
        match restart_count_write(&node, fid, count + 1) {
            Ok(op) => {
                let (ack, w) = Ack::channel();
                self.submit(op, ack).await;
                waiting.push(w);
            }
            Err(e) => tracing::error!(error = %e, "restart count not written"),
        }
        Ok(RestartBegun {
            fid,
            endpoint: endpoint.to_owned(),
            count,
            restarted,
            waiting,
            held,
            fence,
            deadline,
        })
    }

    /// Waits (bounded) for the bookkeeping to be durable, then on a restart
    /// broadcasts FAILED to the others and waits (bounded) for it.
    async fn restart_finish(&self, begun: RestartBegun) -> RestartCheck {
        let RestartBegun {
            fid,
            endpoint,
            count,
            restarted,
            waiting,
            held,
            fence,
            deadline,
        } = begun;
        // Once hax's own link had this process's FAILED, the restart's
        // broadcast leaves it out.
        let mut own_link_told = false;
        if let Some(held) = held {
            let wait = Instant::now() + self.inner.config.restart_delivery_wait;
            if let Ok(Ok(Some(report))) = tokio::time::timeout_at(wait, held).await {
                own_link_told = true;
                tracing::info!(process = %fid, delivered = report.delivered, pending = report.pending, "held FAILED of the previous incarnation sent to hax's own link");
            }
        }
        if let Some(fence) = fence {
            // Delivered means Motr has ended the old links (it fences on
            // receipt, before it confirms).
            let wait = Instant::now() + self.inner.config.restart_delivery_wait;
            match tokio::time::timeout_at(wait, fence).await {
                Ok(Ok(sent)) => {
                    own_link_told = true;
                    let report = sent.wait_all(wait).await;
                    tracing::info!(process = %fid, delivered = report.delivered, pending = report.pending, "previous incarnation's links fenced");
                }
                Ok(Err(e)) => {
                    tracing::warn!(process = %fid, error = %e, "previous incarnation's links not fenced")
                }
                Err(_) => {
                    tracing::warn!(process = %fid, "fencing the previous incarnation's links is taking long; answering anyway")
                }
            }
        }
        for w in waiting {
            match tokio::time::timeout_at(deadline, w).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::warn!(process = %fid, error = %e, "restart bookkeeping not written")
                }
                Err(_) => {
                    // The writes stay queued and land once Consul is back.
                    tracing::warn!(process = %fid, "restart bookkeeping not durable yet; answering anyway");
                    break;
                }
            }
        }
        let mut delivery = None;
        if restarted {
            tracing::info!(process = %fid, %endpoint, restarts = count, "process restarted; telling the others its previous incarnation failed");
            let options = BroadcastOptions {
                notify_devices: true,
                proc_skip_list: vec![fid],
                skip_self_link: own_link_told,
                ..BroadcastOptions::default()
            };
            if let Some(sent) = self
                .broadcast(vec![HaUpdate::new(fid, ObjHealth::Failed)], options)
                .await
            {
                // Not delivered is no reason to hold the process back.
                let report = sent
                    .wait_all(Instant::now() + self.inner.config.restart_delivery_wait)
                    .await;
                tracing::info!(process = %fid, delivered = report.delivered, not_delivered = report.not_delivered, pending = report.pending, "FAILED broadcast of a restarted process");
                delivery = Some(report);
            }
        } else {
            tracing::debug!(process = %fid, %endpoint, restarts = count, "first entrypoint request");
        }
        RestartCheck {
            count,
            restarted,
            delivery,
        }
    }
}

/// Restart detection under way: the count read, the writes submitted.
struct RestartBegun {
    fid: Fid,
    endpoint: String,
    count: u64,
    restarted: bool,
    waiting: Vec<AckWaiter>,
    /// The previous incarnation's held FAILED, being sent or delivered.
    held: Option<oneshot::Receiver<Option<DeliveryReport>>>,
    /// The FAILED that ends the previous incarnations' links, being sent.
    fence: Option<FenceSend>,
    deadline: Instant,
}

type FenceSend =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<Sent, BroadcastFailed>> + Send>>;

/// What restart detection found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RestartCheck {
    /// The restart count read (before this start).
    pub count: u64,
    /// Whether this start is a restart after a crash.
    pub restarted: bool,
    /// How the FAILED broadcast ended, when one was sent.
    pub delivery: Option<DeliveryReport>,
}

/// Consul could not be read in time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("Consul unavailable for restart detection")]
pub struct ConsulUnavailable;

/// The lane key of an event: events of one process (or one link) share a
/// lane.
fn route_key(ev: &MotrEvent) -> u64 {
    match ev {
        MotrEvent::Process { fid, .. } | MotrEvent::StobIoq { fid, .. } => fid.key,
        MotrEvent::Service { source_process, .. } => source_process.key,
        MotrEvent::NvecSet { link, .. } => link.0,
        MotrEvent::FirstRequest { req, .. } => req.process_fid.key,
    }
}

/// An ack that delivers a received Motr message once the write is durable.
/// A write that failed for good is delivered too, with a warning: Motr
/// cannot be told anything else, and keeping it would only make the peer
/// resend the same message to the same failure.
fn delivery_ack(delivery: hax_core::Delivery) -> Ack {
    Ack::new(move |outcome| {
        if let Err(e) = &outcome {
            tracing::warn!(link = %delivery.link(), tag = %delivery.tag(), error = %e, "delivering a message whose Consul write failed");
        }
        delivery.deliver();
    })
}

/// Recording fakes of what the pipeline calls, for the unit tests of this
/// module and of the BQ consumer.
#[cfg(test)]
pub(crate) mod testing {
    use std::sync::atomic::AtomicUsize;
    use std::sync::Mutex;

    use tokio::sync::Notify;

    use std::future::Future;

    use hax_core::Outcome;

    use super::*;
    use crate::model::broadcast::BroadcastFailed;

    /// One broadcast call.
    pub(crate) type Call = (Vec<HaUpdate>, BroadcastOptions);

    /// Records broadcasts when called; each sends one message that is
    /// delivered. Call number `block_at` (1-based) is not recorded and does
    /// not return until `release` is notified.
    #[derive(Default)]
    pub(crate) struct Recorder {
        pub(crate) calls: Arc<Mutex<Vec<Call>>>,
        pub(crate) started: AtomicUsize,
        pub(crate) block_at: Option<usize>,
        pub(crate) blocked: Arc<Notify>,
        pub(crate) release: Arc<Notify>,
        /// Notes sent to hax's own link alone, in order.
        pub(crate) self_link: Arc<Mutex<Vec<Vec<HaNote>>>>,
        pub(crate) self_link_sent: Arc<Notify>,
        /// When set, what is sent to hax's own link alone is delivered only
        /// once this turns true.
        pub(crate) self_link_gate: Option<tokio::sync::watch::Receiver<bool>>,
        /// The links each process holds, as `links_of` tells.
        pub(crate) links: Arc<Mutex<HashMap<Fid, usize>>>,
    }

    impl Recorder {
        pub(crate) fn calls(&self) -> Vec<Call> {
            self.calls.lock().unwrap_or_else(|e| e.into_inner()).clone()
        }

        pub(crate) fn self_link_sends(&self) -> Vec<Vec<HaNote>> {
            self.self_link
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone()
        }
    }

    impl Broadcast for Recorder {
        fn broadcast(
            &self,
            updates: Vec<HaUpdate>,
            options: BroadcastOptions,
        ) -> impl Future<Output = Result<Sent, BroadcastFailed>> + Send + 'static {
            let n = self.started.fetch_add(1, Ordering::SeqCst) + 1;
            let block = self.block_at == Some(n);
            let self_notes: Vec<HaNote> = if options.skip_self_link {
                updates
                    .iter()
                    .map(|u| HaNote::new(u.fid, u.health.note_state()))
                    .collect()
            } else {
                Vec::new()
            };
            if !block {
                self.calls
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push((updates, options));
            }
            let blocked = Arc::clone(&self.blocked);
            let release = Arc::clone(&self.release);
            async move {
                if block {
                    blocked.notify_one();
                    release.notified().await;
                }
                let sent = Sent::from_futures([async { Some(Outcome::Delivered) }]);
                Ok(if self_notes.is_empty() {
                    sent
                } else {
                    sent.with_self_link_notes(self_notes)
                })
            }
        }

        fn send_to_self_link(
            &self,
            notes: Vec<HaNote>,
        ) -> impl Future<Output = Result<Sent, BroadcastFailed>> + Send + 'static {
            self.self_link
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(notes);
            self.self_link_sent.notify_waiters();
            let gate = self.self_link_gate.clone();
            async move {
                Ok(Sent::from_futures([async move {
                    if let Some(mut gate) = gate {
                        gate.wait_for(|open| *open).await.ok()?;
                    }
                    Some(Outcome::Delivered)
                }]))
            }
        }

        fn links_of(&self, process: Fid) -> usize {
            self.links
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&process)
                .copied()
                .unwrap_or(0)
        }
    }

    /// A cluster described by lists.
    #[derive(Default)]
    pub(crate) struct Facts {
        pub(crate) hax: Fid,
        pub(crate) node: String,
        pub(crate) confds: Vec<Fid>,
        pub(crate) clients: Vec<Fid>,
        pub(crate) local: Vec<Fid>,
        pub(crate) drives: Vec<(String, String, Fid)>,
        pub(crate) recorded: Mutex<Vec<(Fid, ProcessStatus)>>,
    }

    impl ClusterFacts for Facts {
        fn hax_fid(&self) -> Fid {
            self.hax
        }
        fn local_node(&self) -> String {
            self.node.clone()
        }
        fn is_confd(&self, process: Fid) -> bool {
            self.confds.contains(&process)
        }
        fn is_client(&self, process: Fid) -> bool {
            self.clients.contains(&process)
        }
        fn is_local(&self, process: Fid) -> bool {
            self.local.contains(&process)
        }
        fn drive_of_device(&self, node: &str, device: &str) -> Option<Fid> {
            self.drives
                .iter()
                .find(|(n, d, _)| n == node && d == device)
                .map(|(_, _, f)| *f)
        }
        fn record_process_status(&self, process: Fid, status: ProcessStatus) {
            self.recorded
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push((process, status));
        }
    }

    /// A process fid.
    pub(crate) fn process(key: u64) -> Fid {
        Fid::typed(hax_core::FidType::Process, 1, key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::records::format_timestamp;
    use crate::model::vocab::fid_text;
    use hax_consul::pyjson;
    use hax_consul::schema::keys;

    use std::sync::atomic::AtomicU64 as Counter;

    use hax_consul::queue::QueueEntry;
    use hax_consul::ConsulClient;
    use hax_testkit::dev_agent::{AgentMode, DevAgent};

    use super::testing::{process, Facts, Recorder};
    use hax_consul::writer::WriterConfig;

    const HAX: u64 = 0x10;
    const CONFD: u64 = 0x11;
    const CLIENT: u64 = 0x12;
    const IOS: u64 = 0x13;

    fn facts() -> Facts {
        Facts {
            hax: process(HAX),
            node: "node-1".into(),
            confds: vec![process(CONFD)],
            clients: vec![process(CLIENT)],
            local: vec![process(HAX), process(CONFD), process(IOS)],
            ..Facts::default()
        }
    }

    struct Setup {
        _agent: DevAgent,
        client: ConsulClient,
        pipeline: EventPipeline<Recorder, Facts>,
        recorder: Arc<Recorder>,
    }

    async fn setup(agent: DevAgent, config: EventsConfig) -> Setup {
        setup_with(agent, config, Incarnations::new()).await
    }

    async fn setup_with(agent: DevAgent, config: EventsConfig, inc: Incarnations) -> Setup {
        let client = agent.client().expect("client");
        let writer = KvWriter::spawn(client.clone(), WriterConfig::default());
        let recorder = Arc::new(Recorder::default());
        let pipeline = EventPipeline::new(
            writer,
            HaxKv::new(client.clone()),
            Arc::clone(&recorder),
            Arc::new(facts()),
            config,
            &TaskTracker::new(),
        )
        .with_incarnations(inc);
        Setup {
            _agent: agent,
            client,
            pipeline,
            recorder,
        }
    }

    async fn text(client: &ConsulClient, key: &str) -> Option<String> {
        client
            .kv_get(key)
            .await
            .expect("read")
            .value
            .map(|p| String::from_utf8(p.value).expect("utf-8"))
    }

    async fn entries(client: &ConsulClient, kind: QueueKind) -> Vec<QueueMessage> {
        let pairs = client.kv_list(kind.prefix()).await.expect("list").value;
        QueueEntry::from_pairs(kind, &pairs)
            .into_iter()
            .map(|e| e.message.expect("decodable"))
            .collect()
    }

    fn status_json(state: &str, kind: &str) -> String {
        format!(r#"{{"state": "M0_CONF_HA_PROCESS_{state}", "type": "M0_CONF_HA_PROCESS_{kind}"}}"#)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn restart_detection_declares_the_old_incarnation_failed() {
        let s = setup(
            DevAgent::start().await.expect("agent"),
            EventsConfig::default(),
        )
        .await;
        let ios = process(IOS);
        let restarts_key = format!("node-1/process_restarts/{ios}");
        // First start ever, then the m0d start following m0mkfs.
        for expected in [0, 1] {
            let r = s.pipeline.restart_check(ios, "ep").await.expect("checked");
            assert_eq!(r.count, expected);
            assert!(!r.restarted);
        }
        assert!(s.recorder.calls().is_empty());
        assert_eq!(
            text(&s.client, &restarts_key).await.as_deref(),
            Some("\"2\"")
        );
        assert_eq!(text(&s.client, &keys::process(fid_text(ios))).await, None);

        let r = s.pipeline.restart_check(ios, "ep").await.expect("checked");
        assert!(r.restarted);
        assert_eq!(r.count, 2);
        assert_eq!(
            r.delivery,
            Some(DeliveryReport {
                delivered: 1,
                not_delivered: 0,
                pending: 0
            })
        );
        assert_eq!(
            s.recorder.calls(),
            vec![(
                vec![HaUpdate::new(ios, ObjHealth::Failed)],
                BroadcastOptions {
                    notify_devices: true,
                    update_kv: true,
                    broadcast_hax_only: false,
                    proc_skip_list: vec![ios],
                    skip_self_link: false,
                    coalesce: false,
                }
            )]
        );
        // Durable before the reply.
        assert_eq!(
            text(&s.client, &keys::process(fid_text(ios))).await,
            Some(status_json("STOPPED", "M0D"))
        );
        let bq = entries(&s.client, QueueKind::Broadcast).await;
        assert_eq!(bq.len(), 1);
        assert_eq!(bq[0].message_type, "PROCESS-STATE-UPDATE");
        assert_eq!(
            bq[0].payload,
            serde_json::json!({"fid": ios.to_string(), "state": "M0_CONF_HA_PROCESS_STOPPED", "type": "M0_CONF_HA_PROCESS_M0D"})
        );
        assert_eq!(
            text(&s.client, &restarts_key).await.as_deref(),
            Some("\"3\"")
        );

        // hax itself and clients are never declared failed.
        for fid in [process(HAX), process(CLIENT)] {
            for _ in 0..3 {
                let r = s.pipeline.restart_check(fid, "ep").await.expect("checked");
                assert!(!r.restarted);
            }
        }
        assert_eq!(s.recorder.calls().len(), 1);
        let m = s.pipeline.metrics();
        assert_eq!(m.restarts.load(Ordering::Relaxed), 1);
        assert_eq!(m.first_requests.load(Ordering::Relaxed), 9);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_first_request_ends_the_links_its_process_left() {
        let incarnations = Incarnations::new();
        let s = setup_with(
            DevAgent::start().await.expect("agent"),
            EventsConfig::default(),
            incarnations.clone(),
        )
        .await;
        let ios = process(IOS);
        let before = std::time::Instant::now();
        // A fence decided before any request of the process is sent.
        assert_eq!(
            incarnations.fence_unless_restarted(ios, before, || 1),
            Some(1)
        );
        // No link of it held: nothing to end.
        s.pipeline.restart_check(ios, "ep").await.expect("checked");
        assert!(s.recorder.self_link_sends().is_empty());
        // The request is recorded before its old links are counted: a fence
        // of the process from its silence since `before` is not sent.
        assert_eq!(incarnations.fence_unless_restarted(ios, before, || 1), None);
        let other = process(IOS + 1);
        assert_eq!(
            incarnations.fence_unless_restarted(other, before, || 1),
            Some(1)
        );
        // Its first incarnation's link is still held when it asks again
        // (count 1: not a restart, nothing told to the others).
        s.recorder.links.lock().unwrap().insert(ios, 1);
        let r = s.pipeline.restart_check(ios, "ep").await.expect("checked");
        assert!(!r.restarted);
        assert!(s.recorder.calls().is_empty());
        assert_eq!(
            s.recorder.self_link_sends(),
            vec![vec![HaNote::new(ios, HaState::Failed)]],
            "FAILED to hax's own link before the reply"
        );
        // A restart (count 2) whose old link is still held: fenced once,
        // and the FAILED broadcast to the others leaves hax's own link out.
        let r = s.pipeline.restart_check(ios, "ep").await.expect("checked");
        assert!(r.restarted);
        assert_eq!(s.recorder.self_link_sends().len(), 2);
        let calls = s.recorder.calls();
        assert_eq!(calls.len(), 1);
        assert!(calls[0].1.skip_self_link, "{:?}", calls[0].1);
        // hax's own fid is never fenced, whatever it holds.
        s.recorder.links.lock().unwrap().insert(process(HAX), 1);
        s.pipeline
            .restart_check(process(HAX), "ep")
            .await
            .expect("checked");
        assert_eq!(s.recorder.self_link_sends().len(), 2);
        let m = s.pipeline.metrics();
        assert_eq!(m.old_links_fenced.load(Ordering::Relaxed), 2);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn restart_detection_gives_up_when_consul_is_gone() {
        let mut agent = DevAgent::builder()
            .mode(AgentMode::Persistent)
            .start()
            .await
            .expect("agent");
        agent.kill();
        let s = setup(
            agent,
            EventsConfig {
                consul_wait: Duration::from_millis(500),
                ..EventsConfig::default()
            },
        )
        .await;
        let started = Instant::now();
        assert_eq!(
            s.pipeline.restart_check(process(IOS), "ep").await,
            Err(ConsulUnavailable)
        );
        assert!(started.elapsed() < Duration::from_secs(20));
        assert!(s.recorder.calls().is_empty());
    }

    fn ev(event: ProcessEventKind, process_type: ProcessType) -> ProcessEvent {
        ProcessEvent {
            event,
            process_type,
            pid: 42,
        }
    }

    /// Waits until `cond` holds, failing after 20 s.
    async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !cond() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// A process event handled; resolves once it is delivered.
    async fn handled(
        p: &EventPipeline<Recorder, Facts>,
        link: u64,
        fid: Fid,
        e: ProcessEvent,
    ) -> Instant {
        let (ack, w) = Ack::channel();
        p.on_process(LinkId(link), fid, e, ack).await;
        tokio::time::timeout(Duration::from_secs(30), w)
            .await
            .expect("acked")
            .expect("durable");
        Instant::now()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn confd_stops_and_starts_are_told_to_rconfc() {
        use ProcessEventKind as E;
        use ProcessType as T;
        let agent = DevAgent::start().await.expect("agent");
        let client = agent.client().expect("client");
        let down = crate::motr::rconfc::ConfdsDown::default();
        let (tx, mut rx) = ConfdEvents::new(down.clone());
        let p = EventPipeline::new(
            KvWriter::spawn(client.clone(), WriterConfig::default()),
            HaxKv::new(client.clone()),
            Arc::new(Recorder::default()),
            Arc::new(facts()),
            EventsConfig::default(),
            &TaskTracker::new(),
        )
        .with_confd_events(tx);
        for (fid, e) in [
            (IOS, E::Stopping),
            (HAX, E::Stopping),
            (CONFD, E::Starting),
            (CONFD, E::Stopping),
            (CONFD, E::Stopped),
            (CONFD, E::Started),
        ] {
            handled(&p, 1, process(fid), ev(e, T::M0d)).await;
        }
        assert!(!down.any(), "the confd is back");
        drop(p);
        let mut told = Vec::new();
        while let Some(e) = rx.recv().await {
            told.push(e);
        }
        let confd = process(CONFD);
        assert_eq!(
            told,
            vec![
                ConfdEvent::Stopping(confd),
                ConfdEvent::Stopping(confd),
                ConfdEvent::Started(confd)
            ]
        );
    }

    /// Every task of the pipeline runs on its tracker: its loop and lanes,
    /// the wait for a broadcast, the hold of a stopped process whose link
    /// stays. They run on a runtime of their own here (the writer and the
    /// Consul client on the test's), so that its count of live tasks is
    /// theirs alone: once the pipeline is stopped and dropped, none is
    /// left, though the hold's bound is an hour away.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn once_stopped_and_dropped_no_task_of_the_pipeline_remains() {
        use ProcessEventKind as E;
        use ProcessType as T;
        const WAIT: Duration = Duration::from_secs(20);
        let agent = DevAgent::start().await.expect("agent");
        let client = agent.client().expect("client");
        let writer = KvWriter::spawn(client.clone(), WriterConfig::default());
        let recorder = Arc::new(Recorder::default());
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_time()
            .build()
            .expect("runtime");
        let tracker = TaskTracker::new();
        let run = rt.spawn({
            let tracker = tracker.clone();
            let recorder = Arc::clone(&recorder);
            async move {
                let p = EventPipeline::new(
                    writer,
                    HaxKv::new(client),
                    recorder,
                    Arc::new(facts()),
                    EventsConfig {
                        self_failed_hold: Duration::from_secs(3600),
                        ..EventsConfig::default()
                    },
                    &tracker,
                );
                let held = p.held_metrics();
                let (_events, rx) = mpsc::channel(8);
                let cancel = CancellationToken::new();
                let task = p.spawn(rx, cancel.clone());
                handled(&p, 3, process(IOS), ev(E::Stopped, T::M0d)).await;
                handled(&p, 4, process(CONFD), ev(E::Started, T::M0d)).await;
                assert_eq!(held.held.load(Ordering::Relaxed), 1);
                assert!(!tracker.is_empty(), "the hold runs");
                cancel.cancel();
                task.await.expect("the pipeline's task ends");
                drop(p);
                tracker.close();
                tokio::time::timeout(WAIT, tracker.wait())
                    .await
                    .expect("the pipeline's tasks end once it is dropped");
                assert_eq!(held.dropped.load(Ordering::Relaxed), 1);
            }
        });
        run.await.expect("the pipeline ran");
        assert!(
            recorder.self_link_sends().is_empty(),
            "nothing sent at the drop"
        );
        // A task ends a moment after its tracker lets go of it.
        let metrics = rt.metrics();
        let deadline = Instant::now() + WAIT;
        while metrics.num_alive_tasks() > 0 {
            assert!(
                Instant::now() < deadline,
                "{} tasks of the pipeline still alive",
                metrics.num_alive_tasks()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        rt.shutdown_background();
    }

    /// A pipeline holding FAILED notes for `hold`, told of gone links by
    /// `links`.
    fn holding_pipeline(
        client: &ConsulClient,
        recorder: &Arc<Recorder>,
        hold: Duration,
        links: &LinkWatch,
    ) -> EventPipeline<Recorder, Facts> {
        EventPipeline::new(
            KvWriter::spawn(client.clone(), WriterConfig::default()),
            HaxKv::new(client.clone()),
            Arc::clone(recorder),
            Arc::new(facts()),
            EventsConfig {
                self_failed_hold: hold,
                ..EventsConfig::default()
            },
            &TaskTracker::new(),
        )
        .with_link_watch(links.clone())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stopped_process_reaches_hax_own_link_once_its_link_is_gone_or_at_the_bound() {
        use ProcessEventKind as E;
        use ProcessType as T;
        // Long enough that a loaded machine answers a link going or a first
        // request well within it.
        const HOLD: Duration = Duration::from_secs(2);
        let agent = DevAgent::start().await.expect("agent");
        let client = agent.client().expect("client");
        let recorder = Arc::new(Recorder::default());
        let links = LinkWatch::new();
        let incarnations = Incarnations::new();
        let p = holding_pipeline(&client, &recorder, HOLD, &links)
            .with_incarnations(incarnations.clone());
        let held = p.held_metrics();
        let failed = |key| vec![HaNote::new(process(key), HaState::Failed)];
        let sends = || recorder.self_link_sends();

        // The others are told at once, hax's own link is not; once the
        // process's link is gone, it is, without waiting for the bound.
        let silent_since = std::time::Instant::now();
        handled(&p, 3, process(IOS), ev(E::Stopped, T::M0d)).await;
        // Its fence is the STOPPED path's: no other is sent meanwhile.
        let other_fence = incarnations.fence_unless_restarted(process(IOS), silent_since, || ());
        assert_eq!(other_fence, None);
        let last = recorder.calls().pop().expect("broadcast");
        assert_eq!(last.0, vec![HaUpdate::new(process(IOS), ObjHealth::Failed)]);
        assert!(last.1.skip_self_link && !last.1.broadcast_hax_only);
        assert!(sends().is_empty(), "held while the link is there");
        let gone = Instant::now();
        links.link_gone(LinkId(3));
        eventually("the held note sent", || sends() == vec![failed(IOS)]).await;
        assert!(gone.elapsed() < HOLD, "sent when the link went");
        assert_eq!(held.sent_link_gone.load(Ordering::Relaxed), 1);

        // A link that stays: sent at the bound, counted from delivery.
        // The bound counts from the delivery, which comes after the call.
        let called = Instant::now();
        handled(&p, 4, process(CONFD), ev(E::Stopped, T::M0d)).await;
        eventually("the note sent at the bound", || sends().len() == 2).await;
        assert!(called.elapsed() >= HOLD, "{:?}", called.elapsed());
        assert_eq!(sends()[1], failed(CONFD));
        assert_eq!(held.sent_bound.load(Ordering::Relaxed), 1);

        // An mkfs run tells only hax's own link: nothing at once, then the
        // same hold.
        let calls = recorder.calls().len();
        handled(&p, 5, process(0x20), ev(E::Stopped, T::M0mkfs)).await;
        assert_eq!(recorder.calls().len(), calls, "no broadcast now");
        eventually("the mkfs note", || sends().len() == 3).await;
        assert_eq!(sends()[2], failed(0x20));

        // Started again before the bound: the note is dropped, never sent
        // after the newer state.
        let stopped = handled(&p, 6, process(0x30), ev(E::Stopped, T::M0d)).await;
        handled(&p, 7, process(0x30), ev(E::Starting, T::M0d)).await;
        assert_eq!(held.dropped.load(Ordering::Relaxed), 1);
        let stopped2 = handled(&p, 8, process(0x31), ev(E::Stopped, T::M0d)).await;
        handled(&p, 9, process(0x31), ev(E::Started, T::M0d)).await;
        assert_eq!(held.dropped.load(Ordering::Relaxed), 2);
        links.link_gone(LinkId(6));
        // Past both bounds (a note held would have gone by now).
        tokio::time::sleep_until(stopped.max(stopped2) + HOLD * 2).await;
        assert_eq!(sends().len(), 3, "{:?}", sends());

        // A new incarnation's first entrypoint request: the held note goes
        // before the answer, not at the bound.
        let stopped = handled(&p, 10, process(0x32), ev(E::Stopped, T::M0d)).await;
        p.restart_check(process(0x32), "ep").await.expect("checked");
        assert!(stopped.elapsed() < HOLD, "sent before the bound");
        assert_eq!(sends()[3], failed(0x32));
        assert_eq!(held.sent_restart.load(Ordering::Relaxed), 1);

        // hax stopping: what is held is dropped.
        handled(&p, 11, process(0x33), ev(E::Stopped, T::M0d)).await;
        links.set_stopping();
        eventually("dropped at stop", || {
            held.dropped.load(Ordering::Relaxed) == 3
        })
        .await;
        assert_eq!(sends().len(), 4);
        assert_eq!(held.held.load(Ordering::Relaxed), 7);
    }

    /// The held note of a stopped mkfs run is sent once its link is gone;
    /// the m0d of the same fid, starting while that note is still on its
    /// way, is answered only once it reached hax's own link: delivered after
    /// the answer, it would fence the new link.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_first_request_waits_for_the_held_note_on_its_way() {
        use ProcessEventKind as E;
        use ProcessType as T;
        let agent = DevAgent::start().await.expect("agent");
        let client = agent.client().expect("client");
        let (open, gate) = tokio::sync::watch::channel(false);
        let recorder = Arc::new(Recorder {
            self_link_gate: Some(gate),
            ..Recorder::default()
        });
        let links = LinkWatch::new();
        let p = holding_pipeline(&client, &recorder, Duration::from_secs(3600), &links);
        let held = p.held_metrics();
        let ios = process(IOS);
        // The mkfs run asked for the entrypoint first (count 0 to 1).
        p.restart_check(ios, "ep").await.expect("checked");
        handled(&p, 5, ios, ev(E::Stopped, T::M0mkfs)).await;
        links.link_gone(LinkId(5));
        eventually("the held note sent", || {
            recorder.self_link_sends() == vec![vec![HaNote::new(ios, HaState::Failed)]]
        })
        .await;
        assert_eq!(held.sent_link_gone.load(Ordering::Relaxed), 1);

        let answered = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let check = tokio::spawn({
            let p = p.clone();
            let answered = Arc::clone(&answered);
            async move {
                let r = p.restart_check(ios, "ep").await;
                answered.store(true, Ordering::SeqCst);
                r
            }
        });
        // Its bookkeeping is durable, which the answer also waits for; a
        // pipeline not waiting for the note answers right after.
        let restarts_key = format!("node-1/process_restarts/{ios}");
        let durable = Instant::now() + Duration::from_secs(20);
        while text(&client, &restarts_key).await.as_deref() != Some("\"2\"") {
            assert!(Instant::now() < durable, "restart count not written");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // A late STOPPED of the process, held anew, does not end the wait
        // for the note on its way.
        handled(&p, 6, ios, ev(E::Stopped, T::M0d)).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(
            !answered.load(Ordering::SeqCst),
            "answered before the note reached hax's own link"
        );
        open.send_replace(true);
        let r = tokio::time::timeout(Duration::from_secs(20), check)
            .await
            .expect("answered once the note is delivered")
            .expect("joined")
            .expect("checked");
        assert_eq!((r.count, r.restarted), (1, false));
        // The note went once; the late one is still held, and the next
        // start sends it; after that nothing is left waiting.
        assert_eq!(recorder.self_link_sends().len(), 1);
        p.restart_check(ios, "ep").await.expect("checked");
        assert_eq!(recorder.self_link_sends().len(), 2);
        let again = Instant::now();
        p.restart_check(ios, "ep").await.expect("checked");
        assert!(again.elapsed() < Duration::from_secs(10));
        assert_eq!(recorder.self_link_sends().len(), 2);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn process_events_are_recorded_published_and_broadcast() {
        use ProcessEventKind as E;
        use ProcessType as T;
        let s = setup(
            DevAgent::start().await.expect("agent"),
            EventsConfig::default(),
        )
        .await;
        let link = LinkId(1);
        let done = Arc::new(Counter::new(0));
        let cases = [
            (process(IOS), ev(E::Starting, T::M0d)),
            (process(IOS), ev(E::Started, T::M0d)),
            (process(CONFD), ev(E::Started, T::M0d)),
            (process(HAX), ev(E::Started, T::M0d)),
            (process(0x20), ev(E::Started, T::M0mkfs)),
            (process(0x21), ev(E::Started, T::Kernel)),
            (process(IOS), ev(E::Stopped, T::M0d)),
            (process(HAX), ev(E::Stopped, T::M0d)),
        ];
        let mut waiters = Vec::new();
        for (fid, e) in cases {
            let (ack, w) = Ack::channel();
            let done = Arc::clone(&done);
            s.pipeline
                .on_process(
                    link,
                    fid,
                    e,
                    Ack::new(move |r| {
                        done.fetch_add(1, Ordering::SeqCst);
                        ack.complete(r);
                    }),
                )
                .await;
            waiters.push(w);
        }
        for w in waiters {
            tokio::time::timeout(Duration::from_secs(30), w)
                .await
                .expect("acked")
                .expect("durable");
        }
        assert_eq!(done.load(Ordering::SeqCst), cases.len() as u64);
        // Process events come in numbers: their broadcasts may share
        // messages.
        let all = BroadcastOptions {
            coalesce: true,
            ..BroadcastOptions::default()
        };
        let hax_only = BroadcastOptions {
            broadcast_hax_only: true,
            ..all.clone()
        };
        assert_eq!(
            s.recorder.calls(),
            vec![
                (
                    vec![HaUpdate::new(process(IOS), ObjHealth::Recovering)],
                    all.clone()
                ),
                // confd and hax skip DTM recovery.
                (
                    vec![HaUpdate::new(process(CONFD), ObjHealth::Ok)],
                    all.clone()
                ),
                (
                    vec![HaUpdate::new(process(HAX), ObjHealth::Ok)],
                    hax_only.clone()
                ),
                (vec![HaUpdate::new(process(0x20), ObjHealth::Ok)], hax_only),
                // A stopped process: hax's own link gets its FAILED later.
                (
                    vec![HaUpdate::new(process(IOS), ObjHealth::Failed)],
                    BroadcastOptions {
                        skip_self_link: true,
                        ..all
                    }
                ),
            ]
        );
        let kv = |fid: Fid| keys::process(fid_text(fid));
        assert_eq!(
            text(&s.client, &kv(process(IOS))).await,
            Some(status_json("STOPPED", "M0D"))
        );
        assert_eq!(
            text(&s.client, &kv(process(CONFD))).await,
            Some(status_json("DTM_RECOVERED", "M0D"))
        );
        assert_eq!(
            text(&s.client, &kv(process(HAX))).await,
            Some(status_json("STOPPED", "HA"))
        );
        assert_eq!(
            text(&s.client, &kv(process(0x20))).await,
            Some(status_json("STARTED", "M0MKFS"))
        );
        assert_eq!(text(&s.client, &kv(process(0x21))).await, None);
        // Published in order; mkfs is not.
        let bq: Vec<(String, String, String)> = entries(&s.client, QueueKind::Broadcast)
            .await
            .into_iter()
            .map(|m| {
                let f = |k: &str| m.payload[k].as_str().unwrap_or_default().to_owned();
                (f("fid"), f("state"), f("type"))
            })
            .collect();
        let row = |fid: Fid, state: &str, kind: &str| {
            (
                fid.to_string(),
                format!("M0_CONF_HA_PROCESS_{state}"),
                format!("M0_CONF_HA_PROCESS_{kind}"),
            )
        };
        assert_eq!(
            bq,
            vec![
                row(process(IOS), "STARTING", "M0D"),
                row(process(IOS), "STARTED", "M0D"),
                row(process(CONFD), "DTM_RECOVERED", "M0D"),
                row(process(HAX), "DTM_RECOVERED", "HA"),
                row(process(IOS), "STOPPED", "M0D"),
                row(process(HAX), "STOPPED", "HA"),
            ]
        );
        let m = s.pipeline.metrics();
        assert_eq!(m.process_events.load(Ordering::Relaxed), 8);
        assert_eq!(m.process_events_ignored.load(Ordering::Relaxed), 1);
    }

    /// Hands what Motr calls back with to the pipeline, as the daemon's
    /// bridge does.
    struct Forward(mpsc::Sender<MotrEvent>);

    /// hax's halon interface on a free port, its events forwarded to `tx`;
    /// and its endpoint.
    async fn start_halon(tx: mpsc::Sender<MotrEvent>) -> (hax_core::Halon<Forward>, String) {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("port")
            .port();
        let endpoint = format!("inet:tcp:127.0.0.1@{port}");
        let config = hax_core::HalonConfig {
            endpoint: endpoint.clone(),
            process_fid: process(HAX),
            ha_service_fid: Fid::typed(hax_core::FidType::Service, 1, 4),
            rm_service_fid: Fid::typed(hax_core::FidType::Service, 1, 5),
            debug_options: "emu-stop-timeout-ms=5000".into(),
            receive_buffers: 0,
            node_uuid: None,
        };
        let halon =
            tokio::task::spawn_blocking(move || hax_core::Halon::start(config, Forward(tx)))
                .await
                .expect("start task")
                .expect("started");
        (halon, endpoint)
    }

    impl hax_core::Callbacks for Forward {
        fn entrypoint_request(
            &self,
            _cx: &hax_core::Ctx<'_>,
            req: EntrypointRequest,
            responder: EntrypointResponder,
        ) {
            let reply = EntrypointReply {
                quorum: 1,
                rm_fid: Fid::typed(hax_core::FidType::Service, 1, 5),
                rm_endpoint: req.remote_endpoint.clone(),
                ..EntrypointReply::default()
            };
            let _ = self.0.try_send(MotrEvent::FirstRequest {
                req,
                reply,
                responder,
                received: std::time::Instant::now(),
            });
        }

        fn msg_received(
            &self,
            _cx: &hax_core::Ctx<'_>,
            link: LinkId,
            _tag: hax_core::Tag,
            msg: hax_core::HaMsg,
            delivery: hax_core::Delivery,
        ) {
            let ev = match msg.data {
                hax_core::HaMsgData::ProcessEvent(event) => MotrEvent::Process {
                    link,
                    fid: msg.fid,
                    event,
                    delivery,
                },
                hax_core::HaMsgData::ServiceEvent(event) => MotrEvent::Service {
                    link,
                    fid: msg.fid,
                    source_process: msg.source_process,
                    event,
                    delivery,
                },
                hax_core::HaMsgData::Nvec(n) if n.kind == hax_core::NvecKind::Set => {
                    MotrEvent::NvecSet {
                        link,
                        notes: n.notes,
                        delivery,
                    }
                }
                _ => {
                    delivery.deliver();
                    return;
                }
            };
            let _ = self.0.try_send(ev);
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_pipeline_handles_motr_messages_and_answers_them() {
        let s = setup(
            DevAgent::start().await.expect("agent"),
            EventsConfig::default(),
        )
        .await;
        let (tx, rx) = mpsc::channel(64);
        let cancel = CancellationToken::new();
        let task = s.pipeline.spawn(rx, cancel.clone());
        // Start returns once the pipeline answered hax's own first
        // entrypoint request.
        let (mut halon, _) = start_halon(tx).await;
        let hax_key = keys::process(fid_text(process(HAX)));
        let deadline = Instant::now() + Duration::from_secs(30);
        while text(&s.client, &hax_key).await != Some(status_json("DTM_RECOVERED", "HA")) {
            assert!(Instant::now() < deadline, "hax start events not recorded");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let bq: Vec<String> = entries(&s.client, QueueKind::Broadcast)
            .await
            .into_iter()
            .map(|m| m.payload["state"].as_str().unwrap_or_default().to_owned())
            .collect();
        assert_eq!(
            bq,
            [
                "M0_CONF_HA_PROCESS_STARTING",
                "M0_CONF_HA_PROCESS_DTM_RECOVERED"
            ]
        );
        assert_eq!(
            text(
                &s.client,
                &format!("node-1/process_restarts/{}", process(HAX))
            )
            .await,
            Some("\"1\"".to_owned())
        );
        assert_eq!(
            s.recorder.calls(),
            vec![(
                vec![HaUpdate::new(process(HAX), ObjHealth::Ok)],
                BroadcastOptions {
                    broadcast_hax_only: true,
                    coalesce: true,
                    ..BroadcastOptions::default()
                }
            )]
        );
        // Stop waits until every message received is delivered: the stop
        // events go through the pipeline too.
        let report = tokio::task::spawn_blocking(move || halon.stop())
            .await
            .expect("stop task")
            .expect("stopped");
        assert_eq!(report.violations, 0);
        assert!(!report.would_hang);
        cancel.cancel();
        task.await.expect("pipeline ends");
        let m = s.pipeline.metrics();
        assert_eq!(m.first_requests.load(Ordering::Relaxed), 1);
        assert!(m.process_events.load(Ordering::Relaxed) >= 2);
        assert!(m.service_events.load(Ordering::Relaxed) >= 2);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_process_event_is_delivered_once_its_broadcast_is_handed_over() {
        let agent = DevAgent::start().await.expect("agent");
        let client = agent.client().expect("client");
        let writer = KvWriter::spawn(client.clone(), WriterConfig::default());
        let recorder = Arc::new(Recorder {
            block_at: Some(1),
            ..Recorder::default()
        });
        let pipeline = EventPipeline::new(
            writer,
            HaxKv::new(client.clone()),
            Arc::clone(&recorder),
            Arc::new(facts()),
            EventsConfig::default(),
            &TaskTracker::new(),
        );
        let ios = process(IOS);
        let (started, mut started_done) = Ack::channel();
        pipeline
            .on_process(
                LinkId(1),
                ios,
                ev(ProcessEventKind::Started, ProcessType::M0d),
                started,
            )
            .await;
        // The broadcast is under way; the process's next event is handled
        // meanwhile and delivered once written.
        tokio::time::timeout(Duration::from_secs(30), recorder.blocked.notified())
            .await
            .expect("the broadcast began");
        let (starting, starting_done) = Ack::channel();
        pipeline
            .on_process(
                LinkId(1),
                ios,
                ev(ProcessEventKind::Starting, ProcessType::M0d),
                starting,
            )
            .await;
        tokio::time::timeout(Duration::from_secs(30), starting_done)
            .await
            .expect("acked")
            .expect("durable");
        assert_eq!(
            text(&client, &keys::process(fid_text(ios))).await,
            Some(status_json("STARTING", "M0D"))
        );
        // The STARTED event's writes went first and are durable too, but it
        // waits for its broadcast.
        tokio::select! {
            biased;
            r = &mut started_done => panic!("delivered before its broadcast: {r:?}"),
            () = std::future::ready(()) => {}
        }
        recorder.release.notify_one();
        tokio::time::timeout(Duration::from_secs(30), started_done)
            .await
            .expect("acked")
            .expect("durable");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_busy_process_does_not_hold_up_the_others() {
        let agent = DevAgent::start().await.expect("agent");
        let client = agent.client().expect("client");
        let writer = KvWriter::spawn(client.clone(), WriterConfig::default());
        // The second broadcast (hax's own start makes the first; the first
        // NVEC SET the second) hangs until released: the lane of that link
        // is stuck behind it.
        let recorder = Arc::new(Recorder {
            block_at: Some(2),
            ..Recorder::default()
        });
        let config = EventsConfig {
            lanes: 4,
            ..EventsConfig::default()
        };
        let lanes = config.lanes as u64;
        let pipeline = EventPipeline::new(
            writer,
            HaxKv::new(client.clone()),
            Arc::clone(&recorder),
            Arc::new(facts()),
            config,
            &TaskTracker::new(),
        );
        let (tx, rx) = mpsc::channel(1024);
        let cancel = CancellationToken::new();
        let task = pipeline.spawn(rx, cancel.clone());
        let (mut halon, endpoint) = start_halon(tx).await;
        let deadline = Instant::now() + Duration::from_secs(30);
        while recorder.started.load(Ordering::SeqCst) < 1 {
            assert!(Instant::now() < deadline, "hax's own start not broadcast");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let busy = hax_sim::SimProcess::connect(hax_sim::SimConfig::new(&endpoint, process(0x40)))
            .await
            .expect("busy peer");
        // A process whose events go to another lane than the busy link's.
        let other = (0x41..)
            .map(process)
            .find(|f| f.key % lanes != busy.link_id() % lanes)
            .expect("a fid");
        let quiet = hax_sim::SimProcess::connect(hax_sim::SimConfig::new(&endpoint, other))
            .await
            .expect("quiet peer");
        let set = |k| {
            hax_core::HaMsg::nvec_set(vec![HaNote::new(
                Fid::typed(hax_core::FidType::Pool, 1, k),
                HaState::Online,
            )])
        };
        // More than a lane used to hold, all behind the hung one.
        for k in 0..200 {
            busy.send(set(k)).expect("sent");
        }
        tokio::time::timeout(Duration::from_secs(30), recorder.blocked.notified())
            .await
            .expect("the first broadcast began");
        let tag = quiet
            .send_process_event(ProcessEventKind::Starting)
            .expect("sent");
        quiet
            .wait_confirmed(tag, Duration::from_secs(30))
            .await
            .expect("the other process's event is handled");
        assert_eq!(busy.unconfirmed().len(), 200);
        recorder.release.notify_one();
        busy.wait_all_confirmed(Duration::from_secs(30))
            .await
            .expect("the busy link catches up");
        assert_eq!(recorder.calls().len(), 1 + 199);
        busy.close();
        quiet.close();
        let report = tokio::task::spawn_blocking(move || halon.stop())
            .await
            .expect("stop task")
            .expect("stopped");
        assert_eq!(report.violations, 0);
        cancel.cancel();
        task.await.expect("pipeline ends");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn stob_errors_reach_the_event_queue_and_nvec_sets_are_rebroadcast() {
        let s = setup(
            DevAgent::start().await.expect("agent"),
            EventsConfig::default(),
        )
        .await;
        let error = StobIoqError {
            conf_sdev: Fid::new(0x6400000000000001, 2),
            stob_domain: Fid::new(0xc, 0xd),
            stob_fid: Fid::new(0xe, 0xf),
            fd: 42,
            opcode: 4,
            rc: -5,
            offset: 191,
            size: 100,
            bshift: 4,
        };
        let (ack, w) = Ack::channel();
        s.pipeline
            .on_stob_ioq(LinkId(3), Fid::new(5, 6), &error, ack)
            .await;
        w.await.expect("durable");
        let eq = entries(&s.client, QueueKind::Event).await;
        assert_eq!(eq.len(), 1);
        assert_eq!(eq[0].message_type, "stob-ioq");
        assert_eq!(
            eq[0].payload,
            serde_json::json!({"fid": "0x5:0x6", "conf_sdev": "0x6400000000000001:0x2",
                "stob_id": {"domain_fid": "0xc:0xd", "fid": "0xe:0xf"},
                "fd": 42, "opcode": 4, "rc": -5, "offset": 191, "size": 100, "bshift": 4})
        );

        let sdev = |k| Fid::typed(hax_core::FidType::Sdev, 1, k);
        s.pipeline
            .on_nvec_set(
                LinkId(3),
                &[
                    HaNote::new(sdev(1), HaState::Repair),
                    HaNote::new(sdev(2), HaState::Transient),
                ],
            )
            .await;
        s.pipeline
            .on_nvec_set(LinkId(3), &[HaNote::new(sdev(2), HaState::Failed)])
            .await;
        assert_eq!(
            s.recorder.calls(),
            vec![(
                vec![HaUpdate::new(sdev(1), ObjHealth::Failed)],
                BroadcastOptions::default()
            )]
        );
    }

    #[test]
    fn health_table_is_the_original() {
        use ProcessEventKind as E;
        use ProcessType as T;
        assert_eq!(
            process_event_health(T::M0mkfs, E::Started),
            Some(ObjHealth::Ok)
        );
        assert_eq!(
            process_event_health(T::M0mkfs, E::Stopped),
            Some(ObjHealth::Failed)
        );
        assert_eq!(process_event_health(T::M0mkfs, E::DtmRecovered), None);
        for t in [T::M0d, T::Other] {
            assert_eq!(
                process_event_health(t, E::Started),
                Some(ObjHealth::Recovering)
            );
            assert_eq!(
                process_event_health(t, E::DtmRecovered),
                Some(ObjHealth::Ok)
            );
            assert_eq!(process_event_health(t, E::Stopped), Some(ObjHealth::Failed));
        }
        assert_eq!(process_event_health(T::Kernel, E::Started), None);
    }

    #[test]
    fn nvec_set_rolls_back_failed_sns() {
        let f = |k| Fid::typed(hax_core::FidType::Sdev, 1, k);
        let notes = [
            HaNote::new(f(1), HaState::Online),
            HaNote::new(f(2), HaState::Repaired),
            HaNote::new(f(3), HaState::Repair),
            HaNote::new(f(4), HaState::Rebalance),
            HaNote::new(f(5), HaState::Failed),
            HaNote::new(f(6), HaState::Transient),
        ];
        assert_eq!(
            nvec_set_rebroadcast(&notes),
            vec![
                HaUpdate::new(f(1), ObjHealth::Ok),
                HaUpdate::new(f(2), ObjHealth::Repaired),
                HaUpdate::new(f(3), ObjHealth::Failed),
                HaUpdate::new(f(4), ObjHealth::Repaired),
            ]
        );
    }

    #[test]
    fn timestamps_look_like_pythons_str_of_datetime() {
        assert_eq!(
            format_timestamp(Duration::new(0, 0)),
            "1970-01-01 00:00:00.000000"
        );
        // 2021-11-08 16:04:43.061234 UTC
        assert_eq!(
            format_timestamp(Duration::new(1_636_387_483, 61_234_000)),
            "2021-11-08 16:04:43.061234"
        );
        assert_eq!(
            format_timestamp(Duration::new(951_782_400, 0)),
            "2000-02-29 00:00:00.000000"
        );
    }

    #[test]
    fn stob_ioq_payload_is_the_originals() {
        let e = StobIoqError {
            conf_sdev: Fid::new(1, 2),
            stob_domain: Fid::new(0xc, 0xd),
            stob_fid: Fid::new(0xe, 0xf),
            fd: 42,
            opcode: 4,
            rc: 2,
            offset: 191,
            size: 100,
            bshift: 4,
        };
        let p = stob_ioq_payload(Fid::new(5, 6), &e);
        assert_eq!(
            pyjson::to_string(&p).expect("json"),
            r#"{"fid": "0x5:0x6", "conf_sdev": "0x1:0x2", "stob_id": {"domain_fid": "0xc:0xd", "fid": "0xe:0xf"}, "fd": 42, "opcode": 4, "rc": 2, "offset": 191, "size": 100, "bshift": 4}"#
        );
    }

    #[test]
    fn process_messages_carry_fid_state_type() {
        let m = process_state_message(
            Fid::new(0x7200000000000001, 6),
            ProcessStatus {
                state: ProcessState::Stopped,
                kind: schema::ProcessType::M0d,
            },
        );
        assert_eq!(m.message_type, "PROCESS-STATE-UPDATE");
        assert_eq!(
            pyjson::to_string(&m.payload).expect("json"),
            r#"{"fid": "0x7200000000000001:0x6", "state": "M0_CONF_HA_PROCESS_STOPPED", "type": "M0_CONF_HA_PROCESS_M0D"}"#
        );
    }
}
