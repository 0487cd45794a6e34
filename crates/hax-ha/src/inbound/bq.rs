//! The broadcast-queue (BQ) consumer of this node: every hax handles every
//! `bq/<n>` entry once, in order, keeping its offset in
//! `bq-delivered/<hostname>`.
//!
//! | message type | effect |
//! |---|---|
//! | `PROCESS-STATE-UPDATE` | for a process of another node: broadcast of its health to the local links (no KV update), and `<local node>/processes/<fid>` |
//! | `M0_HA_MSG_NVEC` | the drive of `{node, device}` broadcast with the given state; waits (bounded) for one delivery |
//! | `SNS_OP` | handed on as an [`SnsRequest`] |
//! | `STOB_IOQ_ERROR` | the sdev broadcast FAILED; waits (bounded) for one delivery |
//! | other | logged, skipped |
//!
//! # The offset
//!
//! Entries are committed by [`QueueConsumer`] in groups of at most
//! [`BqConfig::commit_batch`]: one transaction with the KV writes their
//! handling produced and the last one's offset, after their broadcasts were
//! handed to Motr. So a hax killed at any point resumes after the last
//! committed entry: nothing is skipped, Consul effects happen once, and Motr
//! sees again at most the broadcasts of one group whose commit was lost, in
//! their order (harmless: broadcasts ask Motr to ignore states it already
//! has). One commit per entry would cost a Consul round trip per entry, and
//! every hax consumes every entry, including the one published per process
//! event. A broadcast that could not be
//! handed over for a reason that may pass (Consul unavailable) leaves the
//! entry pending: it is tried again on the next trigger or resync. Malformed
//! entries and unknown types are skipped, as the original does.
//!
//! One task consumes, so watch deliveries arriving together never handle
//! an entry twice.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hax_consul::pyjson;
use hax_consul::queue::{ConsumerConfig, Handled, QueueConsumer, QueueEntry, QueueError};
use hax_consul::schema::{
    keys, BroadcastMessage, DeviceState, DeviceStateUpdate, FidText, ProcessState,
    ProcessStateUpdate, ProcessStatus, QueueKind, SnsOp,
};
use hax_consul::server::{UpdateData, WatchUpdate};
use hax_consul::{ConsulClient, TxnOp};
use hax_core::Fid;
use tokio::sync::{mpsc, Notify};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::metrics::BqMetrics;
use crate::model::broadcast::{Broadcast, BroadcastOptions, Sent};
use crate::model::facts::ClusterFacts;
use crate::model::{HaUpdate, ObjHealth};

/// An SNS operation asked for through the BQ (`SNS_OP`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SnsOperation {
    /// `rebalance-start`
    RebalanceStart,
    /// `rebalance-stop`
    RebalanceStop,
    /// `rebalance-pause`
    RebalancePause,
    /// `rebalance-resume`
    RebalanceResume,
    /// `repair-start`
    RepairStart,
    /// `repair-stop`
    RepairStop,
    /// `repair-pause`
    RepairPause,
    /// `repair-resume`
    RepairResume,
    /// `disk-attach`
    DiskAttach,
    /// `disk-detach`
    DiskDetach,
}

impl SnsOperation {
    /// Every operation.
    pub const ALL: [SnsOperation; 10] = [
        SnsOperation::RebalanceStart,
        SnsOperation::RebalanceStop,
        SnsOperation::RebalancePause,
        SnsOperation::RebalanceResume,
        SnsOperation::RepairStart,
        SnsOperation::RepairStop,
        SnsOperation::RepairPause,
        SnsOperation::RepairResume,
        SnsOperation::DiskAttach,
        SnsOperation::DiskDetach,
    ];

    /// The operation's name (as in `POST /api/v1/sns/{operation}`).
    pub fn name(self) -> &'static str {
        match self {
            SnsOperation::RebalanceStart => "rebalance-start",
            SnsOperation::RebalanceStop => "rebalance-stop",
            SnsOperation::RebalancePause => "rebalance-pause",
            SnsOperation::RebalanceResume => "rebalance-resume",
            SnsOperation::RepairStart => "repair-start",
            SnsOperation::RepairStop => "repair-stop",
            SnsOperation::RepairPause => "repair-pause",
            SnsOperation::RepairResume => "repair-resume",
            SnsOperation::DiskAttach => "disk-attach",
            SnsOperation::DiskDetach => "disk-detach",
        }
    }

    /// The operation of a name.
    pub fn from_name(name: &str) -> Option<Self> {
        SnsOperation::ALL.into_iter().find(|o| o.name() == name)
    }
}

/// An SNS operation on a pool, for the SNS handler.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SnsRequest {
    /// The operation.
    pub op: SnsOperation,
    /// The pool.
    pub pool: Fid,
}

/// Settings of the consumer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BqConfig {
    /// How often the whole queue is read from Consul even without a watch
    /// delivery (a lost POST loses nothing).
    pub resync_every: Duration,
    /// Pause before an entry left pending is tried again.
    pub retry_after: Duration,
    /// How long device and STOB broadcasts wait for a delivery (the
    /// original: 30 s).
    pub delivery_wait: Duration,
    /// Entries committed together at most (see the module's notes).
    pub commit_batch: usize,
}

impl Default for BqConfig {
    fn default() -> Self {
        BqConfig {
            resync_every: Duration::from_secs(60),
            retry_after: Duration::from_secs(1),
            delivery_wait: Duration::from_secs(30),
            // Entries that told Motr nothing commit with the next that did
            // or at the end of a round; the bound only caps what a crash
            // hands again (and a round's writes, 64 operations a commit).
            commit_batch: 1024,
        }
    }
}

fn inc(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// Why an entry stays pending.
#[derive(Debug, thiserror::Error)]
pub enum BqError {
    /// The broadcast could not be handed over for now.
    #[error("broadcast not handed to Motr: {0}")]
    Broadcast(String),
    /// The SNS handler is gone.
    #[error("SNS operations are not taken any more")]
    SnsClosed,
}

/// Handles BQ entries (what one entry does; the consumer task commits).
pub struct BqProcessor<B, C> {
    broadcaster: Arc<B>,
    cluster: Arc<C>,
    sns: mpsc::Sender<SnsRequest>,
    config: BqConfig,
    metrics: Arc<BqMetrics>,
}

impl<B, C> std::fmt::Debug for BqProcessor<B, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BqProcessor")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

fn fid_of(t: FidText) -> Fid {
    Fid::new(t.container(), t.key())
}

/// An entry whose handling told Motr or the SNS handler something, and
/// wrote nothing.
fn told() -> Handled {
    Handled {
        ops: Vec::new(),
        commit_now: true,
    }
}

/// The health a process event stands for in a BQ `PROCESS-STATE-UPDATE`
/// (the original's `event_to_svchealth`).
pub fn update_health(state: ProcessState) -> ObjHealth {
    match state {
        ProcessState::Starting | ProcessState::DtmRecovered => ObjHealth::Ok,
        ProcessState::Started => ObjHealth::Recovering,
        ProcessState::Stopping | ProcessState::Stopped => ObjHealth::Offline,
    }
}

/// The event recorded for a health (the original's
/// `objHealthToProcessEvent`).
pub fn health_event(health: ObjHealth) -> ProcessState {
    match health {
        ObjHealth::Recovering => ProcessState::Started,
        ObjHealth::Ok => ProcessState::DtmRecovered,
        _ => ProcessState::Stopped,
    }
}

/// The health of the device state of an `M0_HA_MSG_NVEC` entry.
pub fn device_health(state: DeviceState) -> ObjHealth {
    match state {
        DeviceState::Online => ObjHealth::Ok,
        DeviceState::Failed => ObjHealth::Failed,
        DeviceState::Offline => ObjHealth::Offline,
        DeviceState::Repair => ObjHealth::Repair,
        DeviceState::Repaired => ObjHealth::Repaired,
        DeviceState::Rebalance => ObjHealth::Rebalance,
    }
}

impl<B: Broadcast, C: ClusterFacts> BqProcessor<B, C> {
    /// A processor broadcasting with `broadcaster` and handing SNS
    /// operations to `sns`.
    pub fn new(
        broadcaster: Arc<B>,
        cluster: Arc<C>,
        sns: mpsc::Sender<SnsRequest>,
        config: BqConfig,
    ) -> Self {
        BqProcessor {
            broadcaster,
            cluster,
            sns,
            config,
            metrics: Arc::new(BqMetrics::default()),
        }
    }

    /// The counters.
    pub fn metrics(&self) -> Arc<BqMetrics> {
        Arc::clone(&self.metrics)
    }

    fn skip(&self, entry: &QueueEntry, why: &str) -> Result<Handled, BqError> {
        inc(&self.metrics.skipped);
        tracing::warn!(key = %entry.key, reason = why, "BQ entry skipped");
        Ok(Handled::default())
    }

    async fn broadcast(
        &self,
        updates: Vec<HaUpdate>,
        options: BroadcastOptions,
    ) -> Result<Option<Sent>, BqError> {
        match self.broadcaster.broadcast(updates, options).await {
            Ok(sent) => Ok(Some(sent)),
            Err(e) if e.transient => Err(BqError::Broadcast(e.reason)),
            Err(e) => {
                tracing::error!(error = %e, "BQ broadcast failed for good; entry skipped");
                Ok(None)
            }
        }
    }

    async fn wait_any(&self, entry: &QueueEntry, sent: Option<Sent>) {
        let Some(sent) = sent else { return };
        if sent.is_empty() {
            return;
        }
        let report = sent
            .wait_any(Instant::now() + self.config.delivery_wait)
            .await;
        if report.delivered == 0 {
            inc(&self.metrics.not_delivered);
            tracing::warn!(key = %entry.key, not_delivered = report.not_delivered, pending = report.pending, "BQ broadcast not delivered");
        }
    }

    /// Handles one entry; returns the KV writes to commit with its offset,
    /// and whether it told Motr or the SNS handler something (then it is
    /// committed at once). An error leaves the entry pending.
    pub async fn handle(&self, entry: &QueueEntry) -> Result<Handled, BqError> {
        let message = match &entry.message {
            Ok(m) => m,
            Err(e) => return self.skip(entry, e),
        };
        let typed = match message.broadcast(&entry.key) {
            Ok(t) => t,
            Err(e) => return self.skip(entry, &e.to_string()),
        };
        // Every process event of this node comes back through the queue:
        // those are logged where something is done with them.
        if !matches!(typed, BroadcastMessage::ProcessStateUpdate(_)) {
            tracing::info!(key = %entry.key, kind = %message.message_type, "BQ message");
        }
        match typed {
            BroadcastMessage::ProcessStateUpdate(u) => self.on_process_update(entry, u).await,
            BroadcastMessage::DeviceState(d) => self.on_device_state(entry, &d).await,
            BroadcastMessage::SnsOp(op) => self.on_sns_op(entry, &op).await,
            BroadcastMessage::StobIoqError(e) => {
                let sdev = fid_of(e.conf_sdev);
                if sdev.is_zero() {
                    return self.skip(entry, "STOB I/O error without an sdev");
                }
                inc(&self.metrics.stob_errors);
                let sent = self
                    .broadcast(
                        vec![HaUpdate::new(sdev, ObjHealth::Failed)],
                        BroadcastOptions::default(),
                    )
                    .await?;
                self.wait_any(entry, sent).await;
                Ok(told())
            }
            BroadcastMessage::Other(m) => {
                self.skip(entry, &format!("unknown message type {:?}", m.message_type))
            }
        }
    }

    async fn on_process_update(
        &self,
        entry: &QueueEntry,
        u: ProcessStateUpdate,
    ) -> Result<Handled, BqError> {
        let fid = fid_of(u.fid);
        // A local process was handled when its event arrived here.
        if self.cluster.is_local(fid) {
            tracing::debug!(key = %entry.key, process = %fid, "BQ update of a local process; nothing to do");
            return Ok(Handled::default());
        }
        let health = update_health(u.state);
        tracing::info!(key = %entry.key, process = %fid, state = ?u.state, "BQ process update of another node");
        inc(&self.metrics.process_updates);
        // The process' own node (or the RC) keeps the configuration tree:
        // this is only the Motr broadcast.
        let options = BroadcastOptions {
            update_kv: false,
            ..BroadcastOptions::default()
        };
        self.broadcast(vec![HaUpdate::new(fid, health)], options)
            .await?;
        let status = ProcessStatus {
            state: health_event(health),
            kind: u.kind,
        };
        let node = self.cluster.local_node();
        let key = match keys::node_process(&node, u.fid) {
            Ok(k) => k,
            Err(e) => return self.skip(entry, &e.to_string()),
        };
        let value = match pyjson::to_string(&status) {
            Ok(v) => v,
            Err(e) => return self.skip(entry, &e.to_string()),
        };
        Ok(Handled {
            ops: vec![TxnOp::set(key, value)],
            commit_now: true,
        })
    }

    async fn on_device_state(
        &self,
        entry: &QueueEntry,
        d: &DeviceStateUpdate,
    ) -> Result<Handled, BqError> {
        let Ok(state) = d.device_state() else {
            return self.skip(entry, &format!("unknown device state {:?}", d.state));
        };
        let health = device_health(state);
        // The original broadcast the fid 0:0 for a device it did not know.
        let Some(drive) = self.cluster.drive_of_device(&d.node, &d.device) else {
            return self.skip(
                entry,
                &format!("no drive for device {} on node {}", d.device, d.node),
            );
        };
        inc(&self.metrics.device_updates);
        tracing::info!(node = %d.node, device = %d.device, %drive, state = %d.state, "device state from the BQ");
        let sent = self
            .broadcast(
                vec![HaUpdate::new(drive, health)],
                BroadcastOptions::default(),
            )
            .await?;
        self.wait_any(entry, sent).await;
        Ok(told())
    }

    async fn on_sns_op(&self, entry: &QueueEntry, op: &SnsOp) -> Result<Handled, BqError> {
        let Some(kind) = SnsOperation::from_name(&op.op_name) else {
            return self.skip(entry, &format!("unknown SNS operation {:?}", op.op_name));
        };
        inc(&self.metrics.sns_ops);
        let req = SnsRequest {
            op: kind,
            pool: fid_of(op.fid),
        };
        tracing::info!(op = kind.name(), pool = %req.pool, "SNS operation from the BQ");
        self.sns.send(req).await.map_err(|_| BqError::SnsClosed)?;
        Ok(told())
    }
}

/// The consumer of this node's offset (`bq-delivered/<hostname>`).
pub fn consumer(client: ConsulClient, hostname: &str) -> Result<QueueConsumer, QueueError> {
    QueueConsumer::new(
        client,
        ConsumerConfig {
            kind: QueueKind::Broadcast,
            name: hostname.to_owned(),
            delete_consumed: false,
        },
    )
}

/// What makes the consumer look at the queue: the entries of a watch
/// delivery (`POST /watcher/bq`, [`hax_consul::server::UpdateData::BroadcastQueue`])
/// or a request to read the queue from Consul.
#[derive(Clone, Debug, PartialEq)]
pub enum BqTrigger {
    /// The whole `bq/` tree as a watch delivered it: what it announces is
    /// read back from Consul before anything is handled.
    Entries(Vec<QueueEntry>),
    /// Read the queue now.
    Resync,
}

impl BqTrigger {
    /// The trigger of a watch-server update, if it is one of the BQ route
    /// (or a resync of it).
    pub fn from_update(update: WatchUpdate) -> Option<Self> {
        match update.data {
            UpdateData::BroadcastQueue(entries) => Some(BqTrigger::Entries(entries)),
            _ => None,
        }
    }
}

/// Where watch deliveries and resync requests wait for the consumer: one
/// pending trigger, into which later ones are folded. A watch delivers the
/// whole queue every time (only what every node has read is trimmed), so
/// deliveries arriving while the consumer is busy are not kept side by side: entries
/// are unioned by epoch (a later delivery holds the newer tree), a resync
/// wins over entries, and entries the consumer has committed are dropped
/// on arrival.
#[derive(Debug, Default)]
pub struct BqInbox {
    pending: Mutex<Option<BqTrigger>>,
    wake: Notify,
    /// The last offset the consumer committed (0: none known yet).
    committed: Arc<AtomicU64>,
    /// The newest epoch a delivery announced.
    newest: Arc<AtomicU64>,
}

impl BqInbox {
    /// An empty inbox.
    pub fn new() -> Arc<Self> {
        Arc::new(BqInbox::default())
    }

    /// Hands a trigger to the consumer; never waits.
    pub fn deliver(&self, trigger: BqTrigger) {
        let committed = self.committed.load(Ordering::Acquire);
        let trigger = match trigger {
            BqTrigger::Entries(mut entries) => {
                if let Some(top) = entries.iter().map(|e| e.epoch).max() {
                    self.newest.fetch_max(top, Ordering::AcqRel);
                }
                entries.retain(|e| e.epoch > committed);
                if entries.is_empty() {
                    // Nothing this node has not consumed: no reason to read.
                    return;
                }
                BqTrigger::Entries(entries)
            }
            BqTrigger::Resync => BqTrigger::Resync,
        };
        {
            let mut slot = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            *slot = Some(match slot.take() {
                None => trigger,
                Some(earlier) => fold(earlier, trigger),
            });
        }
        self.wake.notify_one();
    }

    /// The last offset the consumer committed, as it moves (for the watch
    /// server, to skip what is done before decoding it).
    pub fn committed(&self) -> Arc<AtomicU64> {
        Arc::clone(&self.committed)
    }

    /// The newest epoch a delivery announced, as it moves (for
    /// `hax_bq_newest`: read when the metrics are, not when the consumer is
    /// done, so that a consumer stuck on a round shows its lag).
    pub fn newest(&self) -> Arc<AtomicU64> {
        Arc::clone(&self.newest)
    }

    /// Whether a trigger waits for the consumer.
    pub fn is_pending(&self) -> bool {
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some()
    }

    fn take(&self) -> Option<BqTrigger> {
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    }
}

/// Folds a later trigger into an earlier one.
fn fold(earlier: BqTrigger, later: BqTrigger) -> BqTrigger {
    match (earlier, later) {
        (BqTrigger::Resync, _) | (_, BqTrigger::Resync) => BqTrigger::Resync,
        (BqTrigger::Entries(a), BqTrigger::Entries(b)) => {
            let mut by_epoch: BTreeMap<u64, QueueEntry> =
                a.into_iter().map(|e| (e.epoch, e)).collect();
            by_epoch.extend(b.into_iter().map(|e| (e.epoch, e)));
            BqTrigger::Entries(by_epoch.into_values().collect())
        }
    }
}

/// Runs the consumer on `tasks` until `cancel`: consumes on every trigger
/// of `inbox`, every [`BqConfig::resync_every`], and
/// [`BqConfig::retry_after`] after a round that left an entry pending.
pub fn spawn<B: Broadcast, C: ClusterFacts>(
    consumer: QueueConsumer,
    processor: Arc<BqProcessor<B, C>>,
    inbox: Arc<BqInbox>,
    cancel: CancellationToken,
    tasks: &TaskTracker,
) -> JoinHandle<()> {
    tasks.spawn(async move {
        let metrics = processor.metrics();
        let config = processor.config.clone();
        tracing::info!(offset_key = consumer.offset_key(), "BQ consumer started");
        // The RC leader's trimming keeps what this node has not read only
        // once its offset exists; until then (Consul away) the first commit
        // creates it.
        if let Err(e) = consumer.register().await {
            tracing::warn!(error = %e, "BQ offset not created yet");
        }
        // Read everything at start: entries published while hax was down.
        let mut next = Some(BqTrigger::Resync);
        let mut resync_at = Instant::now() + config.resync_every;
        loop {
            if let Some(trigger) = next.take() {
                let result = consume(&consumer, &processor, trigger).await;
                match result {
                    Ok(n) => {
                        if n > 0 {
                            tracing::debug!(entries = n, "BQ entries consumed");
                            metrics.consumed.fetch_add(n as u64, Ordering::Relaxed);
                        }
                    }
                    Err(e) => {
                        inc(&metrics.failed_rounds);
                        tracing::warn!(error = %e, "BQ consumption stopped; will retry");
                        resync_at = resync_at.min(Instant::now() + config.retry_after);
                    }
                }
                if let Ok(Some(o)) = consumer.offset().await {
                    metrics.offset.store(o, Ordering::Relaxed);
                    inbox.committed.fetch_max(o, Ordering::AcqRel);
                }
            }
            if let Some(t) = inbox.take() {
                next = Some(t);
                continue;
            }
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = inbox.wake.notified() => next = inbox.take(),
                _ = tokio::time::sleep_until(resync_at) => {
                    next = Some(BqTrigger::Resync);
                    resync_at = Instant::now() + config.resync_every;
                }
            }
        }
        tracing::info!("BQ consumer stopped");
    })
}

async fn consume<B: Broadcast, C: ClusterFacts>(
    consumer: &QueueConsumer,
    processor: &Arc<BqProcessor<B, C>>,
    trigger: BqTrigger,
) -> Result<usize, QueueError> {
    let handler = |entry: &QueueEntry| {
        let entry = entry.clone();
        let processor = Arc::clone(processor);
        async move { processor.handle(&entry).await }
    };
    let batch = processor.config.commit_batch;
    // What a delivery carries is never handled as it is: anyone who reaches
    // the HTTP port can post entries, and one beyond the queue's end would
    // move the offset past entries never broadcast. The entries it announces
    // are read back from Consul, the truth; if Consul does not hold one of
    // them, the whole queue is read.
    match trigger {
        BqTrigger::Entries(announced) => match consumer.read_back(&announced).await? {
            Some(entries) => {
                consumer
                    .consume_entries_batched(&entries, batch, handler)
                    .await
            }
            None => {
                tracing::warn!(
                    entries = announced.len(),
                    "a BQ delivery announced entries Consul does not hold; reading the queue"
                );
                consumer.consume_available_batched(batch, handler).await
            }
        },
        BqTrigger::Resync => consumer.consume_available_batched(batch, handler).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use hax_consul::queue::QueuePublisher;
    use hax_consul::schema::QueueMessage;
    use hax_consul::ConsulClient;
    use hax_testkit::dev_agent::DevAgent;

    use crate::pipeline::testing::{process, Call, Facts, Recorder};

    const LOCAL: u64 = 0x30;

    fn facts() -> Facts {
        Facts {
            hax: process(0x10),
            node: "node-1".into(),
            local: vec![process(0x10), process(LOCAL)],
            drives: vec![(
                "node-2".into(),
                "/dev/sdc".into(),
                Fid::typed(hax_core::FidType::Drive, 1, 0x44),
            )],
            ..Facts::default()
        }
    }

    fn update(fid: Fid, state: &str) -> QueueMessage {
        QueueMessage::new(
            "2024-01-01 00:00:00.000000",
            "PROCESS-STATE-UPDATE",
            serde_json::json!({"fid": fid.to_string(), "state": format!("M0_CONF_HA_PROCESS_{state}"), "type": "M0_CONF_HA_PROCESS_M0D"}),
        )
    }

    fn other(kind: &str, payload: serde_json::Value) -> QueueMessage {
        QueueMessage::new("2024-01-01 00:00:00.000000", kind, payload)
    }

    struct Run {
        handle: JoinHandle<()>,
        recorder: Arc<Recorder>,
        inbox: Arc<BqInbox>,
        sns: mpsc::Receiver<SnsRequest>,
        cancel: CancellationToken,
    }

    fn start(client: &ConsulClient, block_at: Option<usize>) -> Run {
        let recorder = Arc::new(Recorder {
            block_at,
            ..Recorder::default()
        });
        let (sns_tx, sns) = mpsc::channel(16);
        let processor = Arc::new(BqProcessor::new(
            Arc::clone(&recorder),
            Arc::new(facts()),
            sns_tx,
            BqConfig {
                resync_every: Duration::from_secs(3600),
                retry_after: Duration::from_millis(100),
                delivery_wait: Duration::from_secs(5),
                ..BqConfig::default()
            },
        ));
        let inbox = BqInbox::new();
        let cancel = CancellationToken::new();
        let handle = spawn(
            consumer(client.clone(), "host-1").expect("consumer"),
            processor,
            Arc::clone(&inbox),
            cancel.clone(),
            &TaskTracker::new(),
        );
        Run {
            handle,
            recorder,
            inbox,
            sns,
            cancel,
        }
    }

    async fn offset(client: &ConsulClient) -> Option<u64> {
        client
            .kv_get("bq-delivered/host-1")
            .await
            .expect("read")
            .value
            .map(|p| {
                String::from_utf8(p.value)
                    .expect("utf-8")
                    .parse()
                    .expect("decimal")
            })
    }

    async fn wait_offset(client: &ConsulClient, epoch: u64) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while offset(client).await != Some(epoch) {
            assert!(Instant::now() < deadline, "offset never reached {epoch}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn deliveries_arriving_together_handle_each_entry_once() {
        let agent = DevAgent::start().await.expect("agent");
        let client = agent.client().expect("client");
        let publisher = QueuePublisher::new(client.clone(), QueueKind::Broadcast);
        for _ in 0..10 {
            publisher
                .publish(&update(process(0x40), "STARTED"))
                .await
                .expect("publish");
        }
        let pairs = client.kv_list("bq/").await.expect("list").value;
        let entries = QueueEntry::from_pairs(QueueKind::Broadcast, &pairs);
        let run = start(&client, None);
        // The start-up read and several deliveries of the same tree race.
        for _ in 0..5 {
            run.inbox.deliver(BqTrigger::Entries(entries.clone()));
            run.inbox.deliver(BqTrigger::Resync);
        }
        wait_offset(&client, 10).await;
        // Let every trigger be looked at.
        let deadline = Instant::now() + Duration::from_secs(30);
        while run.inbox.is_pending() {
            assert!(Instant::now() < deadline, "triggers not taken");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        run.cancel.cancel();
        run.handle.await.expect("stops");
        assert_eq!(run.recorder.calls().len(), 10);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn posted_entries_the_queue_does_not_hold_are_never_handled() {
        let agent = DevAgent::start().await.expect("agent");
        let client = agent.client().expect("client");
        let publisher = QueuePublisher::new(client.clone(), QueueKind::Broadcast);
        let run = start(&client, None);
        wait_offset(&client, 0).await;
        for _ in 0..3 {
            publisher
                .publish(&update(process(0x40), "STARTED"))
                .await
                .expect("publish");
        }
        // A well-formed entry far beyond the queue's end, and one forging the
        // content of an entry the queue holds, as a POST can carry them.
        let forged = |epoch: u64| {
            let key = format!("bq/{epoch}");
            let body = update(process(0x41), "STOPPED")
                .encode(&key)
                .expect("encoded");
            QueueEntry::from_pairs(
                QueueKind::Broadcast,
                &[hax_consul::KvPair {
                    key,
                    value: body.into_bytes(),
                    flags: 0,
                    create_index: 1,
                    modify_index: 1,
                    lock_index: 0,
                    session: None,
                }],
            )
        };
        let mut posted = forged(2);
        posted.extend(forged(1000));
        run.inbox.deliver(BqTrigger::Entries(posted));
        wait_offset(&client, 3).await;
        let deadline = Instant::now() + Duration::from_secs(30);
        while run.inbox.is_pending() {
            assert!(Instant::now() < deadline, "triggers not taken");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        run.cancel.cancel();
        run.handle.await.expect("stops");
        assert_eq!(
            offset(&client).await,
            Some(3),
            "offset moved past the queue"
        );
        let calls = run.recorder.calls();
        assert_eq!(calls.len(), 3, "{calls:?}");
        assert!(
            calls
                .iter()
                .all(|(updates, _)| updates.iter().all(|u| u.fid == process(0x40))),
            "a forged entry was broadcast: {calls:?}"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_consumer_killed_mid_stream_neither_repeats_nor_skips() {
        let agent = DevAgent::start().await.expect("agent");
        let client = agent.client().expect("client");
        let publisher = QueuePublisher::new(client.clone(), QueueKind::Broadcast);
        let remote = [process(0x40), process(0x41)];
        let states = [
            "STARTING",
            "STARTED",
            "DTM_RECOVERED",
            "STOPPING",
            "STOPPED",
        ];
        let mut expected = Vec::new();
        let mut last_state = std::collections::HashMap::new();
        for i in 0..20 {
            let fid = remote[i % 2];
            let state = states[i % states.len()];
            publisher
                .publish(&update(fid, state))
                .await
                .expect("publish");
            let health = update_health(
                serde_json::from_value(serde_json::json!(format!("M0_CONF_HA_PROCESS_{state}")))
                    .expect("state"),
            );
            expected.push(HaUpdate::new(fid, health));
            last_state.insert(fid, health_event(health));
        }
        // The consumer is stopped while it hands the 8th broadcast over,
        // as a SIGKILL would stop it.
        let run = start(&client, Some(8));
        tokio::time::timeout(Duration::from_secs(30), run.recorder.blocked.notified())
            .await
            .expect("8th broadcast reached");
        run.handle.abort();
        assert!(run.handle.await.is_err_and(|e| e.is_cancelled()));
        assert_eq!(offset(&client).await, Some(7));
        let mut seen: Vec<HaUpdate> = run
            .recorder
            .calls()
            .into_iter()
            .flat_map(|(u, o)| {
                assert!(!o.update_kv, "remote updates do not rewrite the tree");
                u
            })
            .collect();
        assert_eq!(seen.len(), 7);

        let run = start(&client, None);
        wait_offset(&client, 20).await;
        seen.extend(run.recorder.calls().into_iter().flat_map(|(u, _)| u));
        assert_eq!(seen, expected, "each entry once, in order");
        for (fid, state) in &last_state {
            let key =
                keys::node_process("node-1", crate::model::vocab::fid_text(*fid)).expect("key");
            let value = client
                .kv_get(&key)
                .await
                .expect("read")
                .value
                .expect("written");
            let status: ProcessStatus = serde_json::from_slice(&value.value).expect("status");
            assert_eq!(status.state, *state);
        }

        // Later entries, delivered by a watch POST.
        publisher
            .publish(&update(process(LOCAL), "STARTED"))
            .await
            .expect("publish");
        publisher
            .publish(&other(
                "SNS_OP",
                serde_json::json!({"op_name": "repair-start", "fid": "0x6f00000000000001:0x9"}),
            ))
            .await
            .expect("publish");
        publisher
            .publish(&other("NEW-THING", serde_json::json!({})))
            .await
            .expect("publish");
        publisher
            .publish(&other(
                "M0_HA_MSG_NVEC",
                serde_json::json!({"node": "node-2", "device": "/dev/sdc", "state": "failed"}),
            ))
            .await
            .expect("publish");
        publisher
            .publish(&other(
                "M0_HA_MSG_NVEC",
                serde_json::json!({"node": "node-2", "device": "/dev/sdz", "state": "failed"}),
            ))
            .await
            .expect("publish");
        let stob = |sdev: &str| {
            other(
                "STOB_IOQ_ERROR",
                serde_json::json!({"fid": "0x5:0x6", "conf_sdev": sdev,
                    "stob_id": {"domain_fid": "0xc:0xd", "fid": "0xe:0xf"},
                    "fd": 42, "opcode": 4, "rc": 2, "offset": 191, "size": 100, "bshift": 4}),
            )
        };
        publisher.publish(&stob("0x0:0x0")).await.expect("publish");
        publisher
            .publish(&stob("0x6400000000000001:0x2"))
            .await
            .expect("publish");
        let pairs = client.kv_list("bq/").await.expect("list").value;
        run.inbox.deliver(BqTrigger::Entries(QueueEntry::from_pairs(
            QueueKind::Broadcast,
            &pairs,
        )));
        wait_offset(&client, 27).await;
        let mut run = run;
        assert_eq!(
            run.sns.recv().await,
            Some(SnsRequest {
                op: SnsOperation::RepairStart,
                pool: Fid::new(0x6f00000000000001, 9),
            })
        );
        let calls = run.recorder.calls();
        let tail: Vec<&Call> = calls.iter().skip(calls.len() - 2).collect();
        assert_eq!(
            tail,
            vec![
                &(
                    vec![HaUpdate::new(
                        Fid::typed(hax_core::FidType::Drive, 1, 0x44),
                        ObjHealth::Failed
                    )],
                    BroadcastOptions::default()
                ),
                &(
                    vec![HaUpdate::new(
                        Fid::new(0x6400000000000001, 2),
                        ObjHealth::Failed
                    )],
                    BroadcastOptions::default()
                ),
            ]
        );
        // Nothing for the local process, the unknown type, the unknown
        // device and the STOB error without an sdev.
        assert_eq!(calls.len(), 13 + 2);
        let key = keys::node_process("node-1", crate::model::vocab::fid_text(process(LOCAL)))
            .expect("key");
        assert!(client.kv_get(&key).await.expect("read").value.is_none());
        run.cancel.cancel();
        run.handle.await.expect("stops");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn entries_telling_motr_nothing_are_committed_with_the_next_that_does() {
        let agent = DevAgent::start().await.expect("agent");
        let client = agent.client().expect("client");
        let publisher = QueuePublisher::new(client.clone(), QueueKind::Broadcast);
        for state in ["STARTING", "STARTED", "DTM_RECOVERED"] {
            publisher
                .publish(&update(process(LOCAL), state))
                .await
                .expect("publish");
        }
        publisher
            .publish(&update(process(0x40), "STARTED"))
            .await
            .expect("publish");
        // Killed while handing over the broadcast of the 4th entry: the
        // three before it, which told Motr nothing, are not committed
        // either.
        let run = start(&client, Some(1));
        tokio::time::timeout(Duration::from_secs(30), run.recorder.blocked.notified())
            .await
            .expect("the broadcast reached");
        run.handle.abort();
        assert!(run.handle.await.is_err_and(|e| e.is_cancelled()));
        // Registered at start, nothing committed.
        assert_eq!(offset(&client).await, Some(0));
        // The next run handles the four again; Motr gets the broadcast once.
        let run = start(&client, None);
        wait_offset(&client, 4).await;
        assert_eq!(
            run.recorder.calls(),
            vec![(
                vec![HaUpdate::new(process(0x40), ObjHealth::Recovering)],
                BroadcastOptions {
                    update_kv: false,
                    ..BroadcastOptions::default()
                }
            )]
        );
        // Local updates alone are committed together, after the last.
        for state in ["STOPPING", "STOPPED"] {
            publisher
                .publish(&update(process(LOCAL), state))
                .await
                .expect("publish");
        }
        run.inbox.deliver(BqTrigger::Resync);
        wait_offset(&client, 6).await;
        assert_eq!(run.recorder.calls().len(), 1);
        run.cancel.cancel();
        run.handle.await.expect("stops");
    }

    fn entry(epoch: u64) -> QueueEntry {
        QueueEntry {
            epoch,
            key: format!("bq/{epoch}"),
            message: Ok(update(process(LOCAL), "STARTED")),
        }
    }

    fn epochs(t: Option<BqTrigger>) -> Option<Vec<u64>> {
        match t? {
            BqTrigger::Entries(e) => Some(e.iter().map(|e| e.epoch).collect()),
            BqTrigger::Resync => None,
        }
    }

    #[test]
    fn the_inbox_keeps_one_trigger_without_what_was_committed() {
        let inbox = BqInbox::new();
        assert!(!inbox.is_pending());
        inbox.deliver(BqTrigger::Entries(vec![entry(1), entry(2), entry(3)]));
        inbox.deliver(BqTrigger::Entries(vec![entry(2), entry(3), entry(4)]));
        assert_eq!(epochs(inbox.take()), Some(vec![1, 2, 3, 4]));
        assert!(!inbox.is_pending());
        // Committed entries are dropped on arrival.
        inbox.committed.store(3, Ordering::Release);
        inbox.deliver(BqTrigger::Entries(vec![
            entry(1),
            entry(3),
            entry(4),
            entry(5),
        ]));
        assert_eq!(epochs(inbox.take()), Some(vec![4, 5]));
        assert_eq!(inbox.newest().load(Ordering::Acquire), 5);
        // Only committed entries: nothing to read, but the newest is known.
        inbox.committed.store(9, Ordering::Release);
        inbox.deliver(BqTrigger::Entries(vec![entry(8), entry(9)]));
        assert!(!inbox.is_pending());
        assert_eq!(inbox.newest().load(Ordering::Acquire), 9);
        // A resync wins over entries, before or after.
        inbox.deliver(BqTrigger::Entries(vec![entry(6)]));
        inbox.deliver(BqTrigger::Resync);
        inbox.deliver(BqTrigger::Entries(vec![entry(7)]));
        assert!(matches!(inbox.take(), Some(BqTrigger::Resync)));
        assert!(inbox.take().is_none());
    }

    #[test]
    fn sns_operation_names_round_trip() {
        for op in SnsOperation::ALL {
            assert_eq!(SnsOperation::from_name(op.name()), Some(op));
        }
        assert_eq!(SnsOperation::from_name("repair-status"), None);
    }

    #[test]
    fn process_updates_map_as_the_original() {
        assert_eq!(update_health(ProcessState::Starting), ObjHealth::Ok);
        assert_eq!(update_health(ProcessState::Started), ObjHealth::Recovering);
        assert_eq!(update_health(ProcessState::DtmRecovered), ObjHealth::Ok);
        assert_eq!(update_health(ProcessState::Stopping), ObjHealth::Offline);
        assert_eq!(update_health(ProcessState::Stopped), ObjHealth::Offline);
        assert_eq!(health_event(ObjHealth::Recovering), ProcessState::Started);
        assert_eq!(health_event(ObjHealth::Ok), ProcessState::DtmRecovered);
        assert_eq!(health_event(ObjHealth::Offline), ProcessState::Stopped);
        assert_eq!(device_health(DeviceState::Repair), ObjHealth::Repair);
        assert_eq!(device_health(DeviceState::Online), ObjHealth::Ok);
    }
}
