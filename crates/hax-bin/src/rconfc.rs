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
//! up. Nothing here delays the daemon's start or its stop; the halon
//! interface stops rconfc when it stops.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use hax_consul::schema::HaxKv;
use hax_core::{ClientError, Fid, MotrClient};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::stats::{ioservices, StatsMetrics};
use crate::view::{fid_of, ClusterView};

/// How long rconfc waits for every ioservice to be healthy before it is
/// started anyway.
pub const IOS_GRACE: Duration = Duration::from_secs(60);

/// First and largest delay between two attempts.
pub const RETRY_FIRST: Duration = Duration::from_secs(1);
/// See [`RETRY_FIRST`].
pub const RETRY_MAX: Duration = Duration::from_secs(30);

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
    let mut delay = RETRY_FIRST;
    loop {
        match kv.profile_records().await {
            Ok(profiles) => match profiles.first() {
                Some(p) => return Some(fid_of(p.fid)),
                None => tracing::warn!("no profile in m0conf/profiles/: rconfc waits for one"),
            },
            Err(e) => tracing::warn!(error = %e, "profiles not read: rconfc waits"),
        }
        if !pause(cancel, delay).await {
            return None;
        }
        delay = (delay * 2).min(RETRY_MAX);
    }
}

async fn run(
    motr: MotrClient,
    kv: HaxKv,
    view: ClusterView,
    ready: watch::Sender<bool>,
    metrics: Arc<StatsMetrics>,
    ios_grace: Duration,
    cancel: CancellationToken,
) {
    let Some(profile) = profile(&kv, &cancel).await else {
        return;
    };
    let all_ios_ok = |st: &crate::view::ClusterState| ioservices(st).iter().all(|(_, ok)| *ok);
    tokio::select! {
        _ = cancel.cancelled() => return,
        r = view.wait_until(ios_grace, all_ios_ok) => if r.is_err() {
            tracing::warn!(
                grace = ?ios_grace,
                "not every ioservice is healthy; starting rconfc anyway"
            );
        },
    }
    let mut delay = RETRY_FIRST;
    loop {
        metrics.rconfc_attempts.fetch_add(1, Ordering::Relaxed);
        tracing::info!(%profile, "starting rconfc");
        let result = tokio::select! {
            _ = cancel.cancelled() => return,
            r = motr.start_rconfc(profile) => r,
        };
        match result {
            Ok(()) => {
                tracing::info!(%profile, "rconfc started");
                metrics.rconfc_ready.store(1, Ordering::Relaxed);
                let _ = ready.send(true);
                return;
            }
            Err(ClientError::ShuttingDown) => return,
            Err(e) => tracing::warn!(
                %profile,
                error = %e,
                retry_in = ?delay,
                "rconfc did not start; retrying"
            ),
        }
        if !pause(&cancel, delay).await {
            return;
        }
        delay = (delay * 2).min(RETRY_MAX);
    }
}

impl RconfcStarter {
    /// Starts rconfc in the background (see the module documentation).
    pub fn spawn(
        motr: MotrClient,
        kv: HaxKv,
        view: ClusterView,
        metrics: Arc<StatsMetrics>,
        cancel: CancellationToken,
    ) -> Self {
        let (tx, ready) = watch::channel(false);
        let task = tokio::spawn(run(motr, kv, view, tx, metrics, IOS_GRACE, cancel.clone()));
        RconfcStarter {
            task,
            cancel,
            ready,
        }
    }

    /// Becomes true once rconfc runs.
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
