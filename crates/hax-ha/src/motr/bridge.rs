//! The Motr side of the daemon: the [`Callbacks`] that Motr's threads call.
//! Nothing here waits: answers that hax knows from memory (entrypoint replies
//! from the configuration snapshot, NVEC GET states, keepalives) are given at
//! once, and messages that ask for nothing (service events, ...) are
//! delivered at once; everything that needs Consul is copied into a
//! [`MotrEvent`] and queued for the event pipeline, which delivers the
//! message once it is durable.

use std::collections::VecDeque;
use std::num::NonZeroI32;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hax_core::{
    Callbacks, Ctx, Delivery, Disconnect, EntrypointReply, EntrypointRequest, EntrypointResponder,
    Fid, HaMsg, HaMsgData, LinkId, LinkInfo, NvecGet, NvecKind, Tag, Uint128,
};
use tokio::sync::mpsc;
use tokio_util::task::TaskTracker;

use crate::metrics::Metrics;
use crate::model::facts::EntrypointSnapshot;
use crate::model::facts::StateSource;
use crate::model::MotrEvent;
use crate::motr::fencing::LinkWatch;
use crate::motr::keepalive::KeepaliveInbox;
use crate::motr::rconfc::ConfdsDown;

/// How long an entrypoint request waits for the configuration before it is
/// refused (so that the requester asks again): long enough not to flood,
/// short enough to answer as soon as the configuration is there.
const CONFIG_WAIT: Duration = Duration::from_secs(1);

/// The daemon's [`Callbacks`].
pub struct Bridge {
    events: mpsc::Sender<MotrEvent>,
    entrypoint: EntrypointSnapshot,
    states: Arc<dyn StateSource>,
    hax_fid: Fid,
    stopping: AtomicBool,
    metrics: Arc<Metrics>,
    runtime: tokio::runtime::Handle,
    /// Where those waits run.
    tasks: TaskTracker,
    /// Events that found the queue full, in arrival order. While it is not
    /// empty every new event joins it, and one task moves them to the queue
    /// in order: the events of a process are recorded in the order Motr
    /// sent them.
    overflow: Arc<Mutex<VecDeque<MotrEvent>>>,
    /// Where keepalive replies go, when hax probes the processes.
    keepalives: Option<KeepaliveInbox>,
    /// Told of the links hax's side disconnects.
    links: LinkWatch,
    /// Confd processes stopping or stopped.
    confds_down: ConfdsDown,
}

impl std::fmt::Debug for Bridge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bridge")
            .field("hax_fid", &self.hax_fid)
            .finish()
    }
}

impl Bridge {
    /// A bridge queuing into `events`. `runtime` runs the few waits that must
    /// not happen on Motr's threads, as tasks of `tasks`; each ends within
    /// a second or once its event is queued.
    pub fn new(
        events: mpsc::Sender<MotrEvent>,
        entrypoint: EntrypointSnapshot,
        states: Arc<dyn StateSource>,
        hax_fid: Fid,
        metrics: Arc<Metrics>,
        runtime: tokio::runtime::Handle,
        tasks: &TaskTracker,
    ) -> Self {
        Bridge {
            events,
            entrypoint,
            states,
            hax_fid,
            stopping: AtomicBool::new(false),
            metrics,
            runtime,
            tasks: tasks.clone(),
            overflow: Arc::default(),
            keepalives: None,
            links: LinkWatch::new(),
            confds_down: ConfdsDown::default(),
        }
    }

    /// While a confd in `down` is stopping or stopped, hax's own Motr
    /// (its rconfc asking again) is answered without confds: its rconfc
    /// then fails at once instead of reconnecting to the stopping confd
    /// again and again, which keeps the confd's RPC machine from going idle
    /// and the confd from stopping; and hax's stop of rconfc, which waits
    /// for rconfc to settle, returns.
    pub fn with_confds_down(mut self, down: ConfdsDown) -> Self {
        self.confds_down = down;
        self
    }

    /// Reports the links hax's side disconnects (and hax's stop) to `links`.
    pub fn with_link_watch(mut self, links: LinkWatch) -> Self {
        self.links = links;
        self
    }

    /// Hands keepalive replies to `inbox` (the probes of
    /// [`crate::motr::keepalive`]).
    pub fn with_keepalives(mut self, inbox: KeepaliveInbox) -> Self {
        self.keepalives = Some(inbox);
        self
    }

    /// From now on entrypoint requests get an empty configuration, as the
    /// original does while it stops (nothing may wait on Consul any more).
    pub fn set_stopping(&self) {
        self.stopping.store(true, Ordering::Release);
        self.links.set_stopping();
    }

    /// Queues an event; when the queue is full the event waits in the
    /// overflow (counted), never on Motr's thread, and keeps its place.
    fn queue(&self, ev: MotrEvent) {
        // A poisoned lock only means a panic elsewhere; the deque is intact.
        let mut overflow = self.overflow.lock().unwrap_or_else(|p| p.into_inner());
        if !overflow.is_empty() {
            self.metrics.events_overflow.fetch_add(1, Ordering::Relaxed);
            overflow.push_back(ev);
            return;
        }
        match self.events.try_send(ev) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(ev)) => {
                self.metrics.events_overflow.fetch_add(1, Ordering::Relaxed);
                overflow.push_back(ev);
                drop(overflow);
                // The overflow was empty: no mover runs; start one.
                self.tasks.spawn_on(
                    move_overflow(self.events.clone(), Arc::clone(&self.overflow)),
                    &self.runtime,
                );
            }
            Err(mpsc::error::TrySendError::Closed(ev)) => {
                // The pipeline has stopped (hax is stopping): nothing more
                // is recorded; the message is delivered so Motr can stop.
                tracing::debug!(?ev, "event pipeline closed; event not recorded");
                ev.abandon();
            }
        }
    }

    fn answer_entrypoint(
        &self,
        cx: &Ctx<'_>,
        req: EntrypointRequest,
        reply: EntrypointResponder,
        config: Arc<EntrypointReply>,
        received: Instant,
    ) {
        if req.first_request && req.process_fid != self.hax_fid {
            self.queue(MotrEvent::FirstRequest {
                req,
                reply: (*config).clone(),
                responder: reply,
                received,
            });
            return;
        }
        match reply.accept_now(cx, &config) {
            Ok(()) => {
                self.metrics.entrypoint_reply.observe(received.elapsed());
                self.metrics
                    .entrypoint_accepted
                    .fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                self.metrics
                    .entrypoint_failed
                    .fetch_add(1, Ordering::Relaxed);
                tracing::error!(error = %e, "entrypoint reply failed");
            }
        }
    }
}

impl Callbacks for Bridge {
    fn entrypoint_request(&self, cx: &Ctx<'_>, req: EntrypointRequest, reply: EntrypointResponder) {
        let received = Instant::now();
        self.metrics
            .entrypoint_requests
            .fetch_add(1, Ordering::Relaxed);
        tracing::info!(req_id = %req.req_id, endpoint = %req.remote_endpoint, process = %req.process_fid, first = req.first_request, "entrypoint request");
        let own_rconfc = req.process_fid == self.hax_fid && !req.first_request;
        if self.stopping.load(Ordering::Acquire) || (own_rconfc && self.confds_down.any()) {
            let empty = EntrypointReply::default();
            let outcome = match reply.accept_now(cx, &empty) {
                Ok(()) => &self.metrics.entrypoint_empty,
                Err(e) => {
                    tracing::error!(error = %e, "entrypoint reply failed");
                    &self.metrics.entrypoint_failed
                }
            };
            outcome.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let config = self.entrypoint.borrow().clone();
        match config {
            Some(config) => self.answer_entrypoint(cx, req, reply, config, received),
            None => {
                // Wait for the configuration off Motr's thread, then answer
                // through the call thread; refuse if it does not come.
                let mut snapshot = self.entrypoint.clone();
                let events = self.events.clone();
                let metrics = Arc::clone(&self.metrics);
                let hax_fid = self.hax_fid;
                self.tasks.spawn_on(async move {
                    let ready = tokio::time::timeout(CONFIG_WAIT, snapshot.wait_for(Option::is_some))
                        .await
                        .ok()
                        .and_then(|r| r.ok().and_then(|c| c.clone()));
                    match ready {
                        Some(config) if req.first_request && req.process_fid != hax_fid => {
                            let ev = MotrEvent::FirstRequest {
                                req,
                                reply: (*config).clone(),
                                responder: reply,
                                received,
                            };
                            let _ = events.send(ev).await;
                        }
                        Some(config) => {
                            metrics.entrypoint_accepted.fetch_add(1, Ordering::Relaxed);
                            reply.accept((*config).clone());
                        }
                        None => {
                            tracing::warn!(process = %req.process_fid, "configuration not ready; entrypoint request refused");
                            metrics.entrypoint_refused.fetch_add(1, Ordering::Relaxed);
                            reply.refuse(NonZeroI32::new(hax_core::EAGAIN).unwrap_or(NonZeroI32::MIN));
                        }
                    }
                }, &self.runtime);
            }
        }
    }

    fn msg_received(&self, cx: &Ctx<'_>, link: LinkId, tag: Tag, msg: HaMsg, delivery: Delivery) {
        self.metrics.count_received(msg.data.type_name());
        tracing::debug!(%link, %tag, kind = msg.data.type_name(), fid = %msg.fid, "message received");
        let fid = msg.fid;
        match msg.data {
            HaMsgData::ProcessEvent(event) => self.queue(MotrEvent::Process {
                link,
                fid,
                event,
                delivery,
            }),
            HaMsgData::ServiceEvent(event) => {
                // Nothing to record (the original ignores them): delivered
                // at once, ahead of earlier messages of the link still
                // waiting for Consul, which Motr allows (it confirms the
                // delivered prefix).
                tracing::debug!(%link, service = %fid, process = %msg.source_process, event = %event.event, kind = %event.service_type, "service event");
                deliver(cx, delivery);
            }
            HaMsgData::StobIoq(error) => self.queue(MotrEvent::StobIoq {
                link,
                fid,
                error,
                delivery,
            }),
            HaMsgData::Nvec(n) if n.kind == NvecKind::Set => self.queue(MotrEvent::NvecSet {
                link,
                notes: n.notes,
                delivery,
            }),
            HaMsgData::KeepaliveReq { id } => {
                // What Motr's own keepalive handler does: echo the id.
                let rep = HaMsg::new(HaMsgData::KeepaliveRep { id, counter: tag.0 });
                match cx.send(link, &rep) {
                    Ok(_) => self.metrics.count_sent("keepalive_rep", 1),
                    Err(e) => tracing::warn!(%link, error = %e, "keepalive reply failed"),
                }
                deliver(cx, delivery);
            }
            HaMsgData::KeepaliveRep { id, counter } => {
                match &self.keepalives {
                    Some(inbox) => inbox.reply(link, id, counter),
                    None => tracing::debug!(%link, %id, "keepalive reply while not probing"),
                }
                deliver(cx, delivery);
            }
            HaMsgData::BeIoErr(e) => {
                tracing::error!(%link, errcode = e.errcode, location = %e.location, opcode = e.opcode, "BE I/O error reported");
                deliver(cx, delivery);
            }
            HaMsgData::SnsErr(e) => {
                tracing::error!(%link, errcode = e.errcode, opcode = %e.opcode, "SNS error reported");
                deliver(cx, delivery);
            }
            other => {
                tracing::debug!(%link, kind = other.type_name(), "message needs no action");
                deliver(cx, delivery);
            }
        }
    }

    fn nvec_get(&self, cx: &Ctx<'_>, get: NvecGet, delivery: Delivery) {
        self.metrics.count_received("nvec_get");
        let states = &self.states;
        match get.answer_now(cx, |fid| states.nvec_state(fid)) {
            Ok(_) => self.metrics.count_sent("nvec_set", 1),
            Err(e) => tracing::warn!(error = %e, "NVEC GET reply failed"),
        }
        deliver(cx, delivery);
    }

    fn msg_delivered(&self, _cx: &Ctx<'_>, _link: LinkId, _tag: Tag) {
        self.metrics.delivered.fetch_add(1, Ordering::Relaxed);
    }

    fn msg_not_delivered(&self, _cx: &Ctx<'_>, link: LinkId, tag: Tag) {
        self.metrics.not_delivered.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(%link, %tag, "message not delivered");
    }

    fn link_connected(&self, _cx: &Ctx<'_>, _req: Uint128, _link: &LinkInfo) {
        self.metrics.links.fetch_add(1, Ordering::Relaxed);
        self.metrics.links_connected.fetch_add(1, Ordering::Relaxed);
    }

    fn link_is_disconnecting(&self, cx: &Ctx<'_>, link: LinkId, disconnect: Disconnect) {
        self.links.link_gone(link);
        if let Err(e) = disconnect.disconnect_now(cx) {
            tracing::warn!(%link, error = %e, "disconnect failed");
        }
    }

    fn link_disconnected(&self, _cx: &Ctx<'_>, link: LinkId) {
        self.links.link_gone(link);
        self.metrics.links.fetch_sub(1, Ordering::Relaxed);
        self.metrics
            .links_disconnected
            .fetch_add(1, Ordering::Relaxed);
    }
}

fn deliver(cx: &Ctx<'_>, delivery: Delivery) {
    if let Err(e) = delivery.deliver_now(cx) {
        tracing::warn!(error = %e, "delivered failed");
    }
}

/// Moves the overflow into the queue, oldest first, until it is empty. It
/// leaves while holding the lock on an empty overflow, so that a later event
/// either joins a non-empty overflow (this mover takes it) or goes straight
/// to the queue after everything that was waiting.
async fn move_overflow(events: mpsc::Sender<MotrEvent>, overflow: Arc<Mutex<VecDeque<MotrEvent>>>) {
    loop {
        let permit = events.reserve().await;
        let mut waiting = overflow.lock().unwrap_or_else(|p| p.into_inner());
        let Ok(permit) = permit else {
            // The pipeline has stopped: deliver what waited so Motr can stop.
            for ev in waiting.drain(..) {
                ev.abandon();
            }
            return;
        };
        match waiting.pop_front() {
            Some(ev) => permit.send(ev),
            None => return,
        }
        if waiting.is_empty() {
            return;
        }
    }
}
