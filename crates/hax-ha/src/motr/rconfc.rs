//! Starting Motr's configuration client (rconfc) in the background, which
//! the SNS operations and the statistics need.
//!
//! As the original, rconfc is started after halon with the first profile of
//! `m0conf/profiles/` (the profile fid is passed as it is; the original
//! rewrote its type to `r`), once the ioservices are healthy: rconfc needs
//! the confd quorum, which is up when the services started after it are.
//! Unlike the original, a cluster whose ioservices do not all come up does
//! not keep rconfc from starting for ever (it is tried after
//! [`IOS_GRACE`]: repairing a pool is precisely what a missing ioservice
//! calls for), and a failed start is retried with backoff rather than given
//! up. An ioservice counts as up once started: DTM recovery may never be
//! reported (Motr without DTM0 sends no DTM_RECOVERED).
//!
//! rconfc holds a configuration read lock lent by the confd's RM: a
//! stopping confd waits for it, and stopping rconfc once the confd is gone
//! takes Motr's RPC timeouts (~41 s). So when a confd process reports
//! STOPPING or STOPPED ([`ConfdEvent`], from the event pipeline) rconfc is
//! stopped, and once a confd reports STARTED again it is started again in
//! the background, with the same retries. Meanwhile hax's own Motr is
//! answered without confds ([`ConfdsDown`]): the confd's RM revokes the
//! lock as it stops, and rconfc, told of the confd again, would reconnect to
//! it again and again (which kept the confd's RPC machine from going idle,
//! so the confd never finished stopping), while Motr's rconfc stop waits
//! for that to settle. Nothing here delays the daemon's
//! start or its stop; the halon interface stops rconfc when it stops.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use hax_consul::backoff::Backoff;
use hax_consul::schema::HaxKv;
use hax_core::{ClientError, Fid, MotrClient};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::leader::stats::{ioservices, StatsMetrics};
use crate::model::vocab::fid_of;
use crate::model::ObjHealth;
use crate::view::{ClusterState, ClusterView};

/// How long rconfc waits for every ioservice to be healthy before it is
/// started anyway.
pub const IOS_GRACE: Duration = Duration::from_secs(60);

/// First and largest delay between two attempts.
pub const RETRY_FIRST: Duration = Duration::from_secs(1);
/// See [`RETRY_FIRST`].
pub const RETRY_MAX: Duration = Duration::from_secs(30);

/// What a confd process reported, as rconfc needs it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConfdEvent {
    /// STOPPING or STOPPED: rconfc lets go of the confd.
    Stopping(Fid),
    /// STARTED (or DTM recovered): rconfc may start again.
    Started(Fid),
}

/// Confd processes that reported STOPPING or STOPPED and not STARTED
/// since. While there is one, hax's own Motr is answered without confds
/// (see [`crate::motr::bridge::Bridge::with_confds_down`]).
#[derive(Clone, Debug, Default)]
pub struct ConfdsDown(Arc<std::sync::Mutex<std::collections::HashSet<Fid>>>);

impl ConfdsDown {
    /// Whether a confd is stopping or stopped.
    pub fn any(&self) -> bool {
        !self.0.lock().unwrap_or_else(|p| p.into_inner()).is_empty()
    }

    fn set(&self, fid: Fid, down: bool) {
        let mut set = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if down {
            set.insert(fid);
        } else {
            set.remove(&fid);
        }
    }
}

/// Where the event pipeline reports confd processes stopping and starting:
/// to rconfc, and to the [`ConfdsDown`] the Motr callbacks read.
#[derive(Clone, Debug)]
pub struct ConfdEvents {
    tx: mpsc::UnboundedSender<ConfdEvent>,
    down: ConfdsDown,
}

impl ConfdEvents {
    /// Events recorded in `down` and sent to the returned receiver (for
    /// [`RconfcStarter::spawn`]).
    pub fn new(down: ConfdsDown) -> (Self, mpsc::UnboundedReceiver<ConfdEvent>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (ConfdEvents { tx, down }, rx)
    }

    /// Records and sends `ev`.
    pub fn send(&self, ev: ConfdEvent) {
        match ev {
            ConfdEvent::Stopping(fid) => self.down.set(fid, true),
            ConfdEvent::Started(fid) => self.down.set(fid, false),
        }
        let _ = self.tx.send(ev);
    }
}

/// The background start of rconfc.
#[derive(Debug)]
pub struct RconfcStarter {
    task: JoinHandle<()>,
    cancel: CancellationToken,
    ready: watch::Receiver<bool>,
}

/// Waits `delay` unless `cancel` comes first; false when cancelled.
async fn pause(cancel: &CancellationToken, delay: Duration) -> bool {
    tokio::select! {
        _ = cancel.cancelled() => false,
        _ = tokio::time::sleep(delay) => true,
    }
}

/// The profile rconfc is started with: the first of `m0conf/profiles/`,
/// retried until there is one or `cancel`.
async fn profile(kv: &HaxKv, cancel: &CancellationToken) -> Option<Fid> {
    let mut backoff = Backoff::new(RETRY_FIRST, RETRY_MAX);
    loop {
        match kv.profile_records().await {
            Ok(profiles) => match profiles.first() {
                Some(p) => return Some(fid_of(p.fid)),
                None => tracing::warn!("no profile in m0conf/profiles/: rconfc waits for one"),
            },
            Err(e) => tracing::warn!(error = %e, "profiles not read: rconfc waits"),
        }
        if !pause(cancel, backoff.next_pause()).await {
            return None;
        }
    }
}

/// Whether every ioservice is up (started, recovered or not).
fn all_ios_up(st: &ClusterState) -> bool {
    ioservices(st).iter().all(|(fid, ok)| {
        *ok || st
            .node_name_of_process(*fid)
            .is_some_and(|node| st.service_health(node, fid.key) == ObjHealth::Recovering)
    })
}

/// How a wait for confd events ended.
enum Confd {
    /// A confd stopping.
    Stopping,
    /// A confd started.
    Started,
    /// Cancelled, or the pipeline is gone.
    Gone,
}

/// The next confd event, or `Gone` at `cancel`.
async fn next_confd(
    confds: &mut mpsc::UnboundedReceiver<ConfdEvent>,
    cancel: &CancellationToken,
) -> Confd {
    tokio::select! {
        _ = cancel.cancelled() => Confd::Gone,
        ev = confds.recv() => match ev {
            Some(ConfdEvent::Stopping(fid)) => {
                tracing::info!(confd = %fid, "confd stopping");
                Confd::Stopping
            }
            Some(ConfdEvent::Started(fid)) => {
                tracing::info!(confd = %fid, "confd started");
                Confd::Started
            }
            None => Confd::Gone,
        },
    }
}

/// How a start ended.
enum Start {
    Started,
    /// A confd is stopping: the attempt was left.
    ConfdStopping,
    Gone,
}

/// Starts rconfc, retrying with backoff, until it runs, a confd stops or
/// `cancel`.
async fn start(
    motr: &MotrClient,
    profile: Fid,
    metrics: &StatsMetrics,
    confds: &mut mpsc::UnboundedReceiver<ConfdEvent>,
    cancel: &CancellationToken,
) -> Start {
    let mut backoff = Backoff::new(RETRY_FIRST, RETRY_MAX);
    loop {
        metrics.rconfc_attempts.fetch_add(1, Ordering::Relaxed);
        tracing::info!(%profile, "starting rconfc");
        let attempt = motr.start_rconfc(profile);
        tokio::pin!(attempt);
        let result = loop {
            tokio::select! {
                r = &mut attempt => break r,
                c = next_confd(confds, cancel) => match c {
                    Confd::Stopping => return Start::ConfdStopping,
                    Confd::Started => {}
                    Confd::Gone => return Start::Gone,
                },
            }
        };
        match result {
            Ok(()) => return Start::Started,
            Err(ClientError::ShuttingDown) => return Start::Gone,
            Err(e) => tracing::warn!(
                %profile,
                error = %e,
                retry_in = ?backoff.peek(),
                "rconfc did not start; retrying"
            ),
        }
        let paused = tokio::select! {
            p = pause(cancel, backoff.next_pause()) => p,
            c = next_confd(confds, cancel) => match c {
                Confd::Stopping => return Start::ConfdStopping,
                Confd::Started => true,
                Confd::Gone => false,
            },
        };
        if !paused {
            return Start::Gone;
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn run(
    motr: MotrClient,
    kv: HaxKv,
    view: ClusterView,
    ready: watch::Sender<bool>,
    metrics: Arc<StatsMetrics>,
    ios_grace: Duration,
    mut confds: mpsc::UnboundedReceiver<ConfdEvent>,
    cancel: CancellationToken,
) {
    let Some(profile) = profile(&kv, &cancel).await else {
        return;
    };
    tokio::select! {
        _ = cancel.cancelled() => return,
        r = view.wait_until(ios_grace, all_ios_up) => if r.is_err() {
            tracing::warn!(
                grace = ?ios_grace,
                "not every ioservice is up; starting rconfc anyway"
            );
        },
    }
    loop {
        match start(&motr, profile, &metrics, &mut confds, &cancel).await {
            Start::Started => {
                tracing::info!(%profile, "rconfc started");
                metrics.rconfc_ready.store(1, Ordering::Relaxed);
                let _ = ready.send(true);
                loop {
                    match next_confd(&mut confds, &cancel).await {
                        Confd::Stopping => break,
                        Confd::Started => {}
                        Confd::Gone => return,
                    }
                }
            }
            Start::ConfdStopping => {}
            Start::Gone => return,
        }
        // Let go of the confd's read lock (an attempt left above is over
        // by now: the client runs one call at a time).
        metrics.rconfc_ready.store(0, Ordering::Relaxed);
        let _ = ready.send(false);
        let t = std::time::Instant::now();
        match motr.stop_rconfc().await {
            Ok(()) => tracing::info!(
                elapsed_ms = t.elapsed().as_millis() as u64,
                "rconfc stopped: a confd stops"
            ),
            Err(ClientError::ShuttingDown) => return,
            Err(e) => tracing::warn!(error = %e, "rconfc stop failed"),
        }
        loop {
            match next_confd(&mut confds, &cancel).await {
                Confd::Started => break,
                Confd::Stopping => {}
                Confd::Gone => return,
            }
        }
    }
}

impl RconfcStarter {
    /// Starts rconfc in the background, as a task of `tasks` (see the
    /// module documentation). `confds` tells it of confd processes stopping
    /// and starting.
    pub fn spawn(
        motr: MotrClient,
        kv: HaxKv,
        view: ClusterView,
        metrics: Arc<StatsMetrics>,
        confds: mpsc::UnboundedReceiver<ConfdEvent>,
        cancel: CancellationToken,
        tasks: &TaskTracker,
    ) -> Self {
        let (tx, ready) = watch::channel(false);
        let task = tasks.spawn(run(
            motr,
            kv,
            view,
            tx,
            metrics,
            IOS_GRACE,
            confds,
            cancel.clone(),
        ));
        RconfcStarter {
            task,
            cancel,
            ready,
        }
    }

    /// True while rconfc runs.
    pub fn ready(&self) -> watch::Receiver<bool> {
        self.ready.clone()
    }

    /// Stops trying (an attempt in progress is abandoned). rconfc itself,
    /// when it runs, is stopped by the halon interface as it stops, after
    /// the client calls queued by then.
    pub async fn stop(self) {
        self.cancel.cancel();
        let _ = self.task.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use hax_core::{Callbacks, Ctx, EntrypointReply, EntrypointRequest, EntrypointResponder};
    use hax_core::{Halon, HalonConfig};
    use hax_testkit::dev_agent::DevAgent;

    use crate::view::sample::{self, Sample};

    /// Accepts every entrypoint request.
    struct Accept;

    impl Callbacks for Accept {
        fn entrypoint_request(
            &self,
            cx: &Ctx<'_>,
            req: EntrypointRequest,
            reply: EntrypointResponder,
        ) {
            let rep = EntrypointReply {
                quorum: 1,
                rm_fid: Sample::RMS_HAX1,
                rm_endpoint: req.remote_endpoint,
                ..EntrypointReply::default()
            };
            if let Err(e) = reply.accept_now(cx, &rep) {
                tracing::error!(error = %e, "entrypoint reply");
            }
        }
    }

    async fn until(rx: &mut watch::Receiver<bool>, want: bool) {
        tokio::time::timeout(Duration::from_secs(20), rx.wait_for(|r| *r == want))
            .await
            .unwrap_or_else(|_| panic!("rconfc ready = {want} in time"))
            .expect("the starter runs");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn rconfc_lets_go_of_a_stopping_confd_and_starts_again_when_one_is_back() {
        let agent = DevAgent::start().await.expect("consul agent");
        let c = agent.client().expect("client");
        for (key, value) in sample::conf_entries() {
            c.kv_put(&key, value).await.expect("conf entry");
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port");
        let cfg = HalonConfig {
            endpoint: format!("inet:tcp:127.0.0.1@{port}"),
            process_fid: Sample::HAX1,
            ha_service_fid: Sample::HA1,
            rm_service_fid: Sample::RMS_HAX1,
            debug_options: "emu-stop-timeout-ms=2000".into(),
            receive_buffers: 0,
            node_uuid: None,
        };
        let mut halon = tokio::task::spawn_blocking(move || Halon::start(cfg, Accept))
            .await
            .expect("joined")
            .expect("halon starts");
        let motr = halon.client();
        let metrics = Arc::new(StatsMetrics::default());
        let (tx, mut ready) = watch::channel(false);
        let (confds, rx) = mpsc::unbounded_channel();
        let cancel = CancellationToken::new();
        // The sample's ioservices are not all up here: the grace is short.
        let task = tokio::spawn(run(
            motr.clone(),
            HaxKv::new(c.clone()),
            ClusterView::from_data(sample::view_data()),
            tx,
            Arc::clone(&metrics),
            Duration::from_millis(50),
            rx,
            cancel.clone(),
        ));
        until(&mut ready, true).await;
        assert!(motr.is_ready());

        // A confd stops: rconfc is stopped; another event of the stopping
        // confd changes nothing.
        confds
            .send(ConfdEvent::Stopping(Sample::CONFD1))
            .expect("sent");
        until(&mut ready, false).await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while motr.is_ready() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "rconfc stopped in Motr"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(metrics.rconfc_ready.load(Ordering::Relaxed), 0);
        let attempts = metrics.rconfc_attempts.load(Ordering::Relaxed);
        confds
            .send(ConfdEvent::Stopping(Sample::CONFD1))
            .expect("sent");

        // It is back: rconfc starts again.
        confds
            .send(ConfdEvent::Started(Sample::CONFD1))
            .expect("sent");
        until(&mut ready, true).await;
        assert!(motr.is_ready());
        assert_eq!(
            metrics.rconfc_attempts.load(Ordering::Relaxed),
            attempts + 1
        );

        cancel.cancel();
        task.await.expect("the starter ends");
        let report = tokio::task::spawn_blocking(move || halon.stop())
            .await
            .expect("joined")
            .expect("clean stop");
        assert_eq!(report.violations, 0);
    }
}
