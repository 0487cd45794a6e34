//! The periodic statistics the RC leader writes to Consul:
//!
//! * filesystem statistics: Motr's totals of every ioservice into
//!   `stats/filesystem` (`{"stats": {...}, "timestamp", "date"}`);
//! * byte counts: each ioservice's bytes and objects per pool version and
//!   user into `ioservices/<ios>/pvers/<pver>/users/<uid>`, then the bytes
//!   of user data (parity removed) by pool-version state into
//!   `bytecount/{healthy,degraded,critical,damaged}` ([`bytecount_totals`]).
//!
//! Each updater runs once per period, and only on the node that holds the RC
//! leadership, once rconfc runs (it waits for that without polling), and
//! while the ioservices it asks are healthy, as the original. A run that
//! fails (Motr or Consul) is logged and counted, and the next period tries
//! again: unlike the original, a failed fetch never ends an updater, and a
//! cluster without ioservices does not make one spin. Both stop as soon as
//! they are told to, even in the middle of a run.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hax_consul::schema::{
    ByteCount, ConfKey, FidText, FsStats as FsStatsValue, FsStatsRecord, HaxKv, PverHealth,
    ServiceType,
};
use hax_core::{ClientError, Fid, MotrClient, PverState};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::model::civil::CivilTime;
use crate::model::vocab::{fid_of, fid_text};
use crate::model::ObjHealth;
use crate::view::{ClusterState, ClusterView};

/// How long one Motr call of an updater may take.
pub const MOTR_CALL_TIMEOUT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------
// Byte count arithmetic

/// What the byte counts need to know of a pool version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PverLayout {
    /// Its state.
    pub health: PverHealth,
    /// Data units of a parity group (N).
    pub data_units: u32,
    /// Parity units of a parity group (K).
    pub parity_units: u32,
}

/// The `bytecount/<state>` class of a pool-version state.
pub fn health_class(state: PverState) -> PverHealth {
    match state {
        PverState::Healthy => PverHealth::Healthy,
        PverState::Degraded => PverHealth::Degraded,
        PverState::Critical => PverHealth::Critical,
        PverState::Damaged => PverHealth::Damaged,
    }
}

/// The user data in `bytes` stored with `n` data and `k` parity units per
/// group: the original's `bytes - ceil(bytes / (n + k)) * k`. A layout
/// without units counts as all data (the original divided by zero), and the
/// result never goes below zero (with `n = 0` the formula does).
pub fn bytes_without_parity(bytes: u64, n: u32, k: u32) -> u64 {
    let units = u64::from(n) + u64::from(k);
    if units == 0 {
        return bytes;
    }
    let per_unit = bytes.div_ceil(units);
    bytes.saturating_sub(per_unit.saturating_mul(u64::from(k)))
}

/// The `bytecount/<state>` totals: the recorded byte counts (every
/// ioservice and user) summed per pool version, parity removed
/// ([`bytes_without_parity`]), then summed by the state of the pool version.
/// Pool versions missing from `layouts` are left out; every class is
/// present, 0 when no pool version is in it.
pub fn bytecount_totals(
    counts: &[(FidText, FidText, u64, ByteCount)],
    layouts: &BTreeMap<FidText, PverLayout>,
) -> [(PverHealth, u64); 4] {
    let mut per_pver: BTreeMap<FidText, u64> = BTreeMap::new();
    for (_, pver, _, c) in counts {
        let sum = per_pver.entry(*pver).or_default();
        *sum = sum.saturating_add(c.bc);
    }
    let mut totals = PverHealth::ALL.map(|h| (h, 0u64));
    for (pver, bytes) in per_pver {
        let Some(layout) = layouts.get(&pver) else {
            continue;
        };
        let data = bytes_without_parity(bytes, layout.data_units, layout.parity_units);
        if let Some(t) = totals.iter_mut().find(|(h, _)| *h == layout.health) {
            t.1 = t.1.saturating_add(data);
        }
    }
    totals
}

// ---------------------------------------------------------------------------
// Filesystem record

/// `YYYY-MM-DDTHH:MM:SS[.ffffff]` of a time since the epoch, in UTC (the
/// layout of Python's `datetime.isoformat()`, which omits a zero fraction).
pub fn iso_date(since_epoch: Duration) -> String {
    let t = CivilTime::from_epoch(since_epoch);
    let mut out = format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
        t.year, t.month, t.day, t.hour, t.minute, t.second
    );
    if t.micros != 0 {
        let _ = write!(out, ".{:06}", t.micros);
    }
    out
}

/// The `stats/filesystem` value of `fs` taken at `since_epoch`.
pub fn fs_record(fs: &hax_core::FsStats, since_epoch: Duration) -> FsStatsRecord {
    FsStatsRecord {
        stats: FsStatsValue {
            fs_free_seg: fs.free_seg,
            fs_total_seg: fs.total_seg,
            fs_free_disk: fs.free_disk,
            fs_avail_disk: fs.avail_disk,
            fs_total_disk: fs.total_disk,
            fs_svc_total: fs.svc_total,
            fs_svc_replied: fs.svc_replied,
        },
        timestamp: since_epoch.as_secs_f64(),
        date: iso_date(since_epoch),
    }
}

// ---------------------------------------------------------------------------
// The cluster as the updaters see it

/// Every ioservice process of the configuration (processes with an `ios`
/// service), with whether it is healthy (recorded DTM_RECOVERED, checks
/// passing).
pub fn ioservices(state: &ClusterState) -> Vec<(Fid, bool)> {
    let conf = state.conf();
    let mut out = Vec::new();
    for key in conf.entries.keys() {
        let ConfKey::Node { node } = key else {
            continue;
        };
        let Some(name) = conf.node_name(*node) else {
            continue;
        };
        for (p, _) in conf.processes_of(*node) {
            let is_ios = conf
                .services_of_process_key(p.key())
                .iter()
                .any(|(t, _)| ServiceType::Ios.is(t));
            if is_ios {
                let ok = state.service_health(name, p.key()) == ObjHealth::Ok;
                out.push((fid_of(p), ok));
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------
// Metrics

/// What a run of an updater came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Values written.
    Written,
    /// Nothing to do this period (not the leader, ioservices not healthy...).
    Skipped,
    /// Motr or Consul failed; what could be written was.
    Failed,
}

/// Runs of each updater by outcome, and rconfc's state.
#[derive(Debug, Default)]
pub struct StatsMetrics {
    runs: [[AtomicU64; 3]; 2],
    running: [AtomicU64; 2],
    /// Attempts to start rconfc.
    pub rconfc_attempts: AtomicU64,
    /// 1 once rconfc runs.
    pub rconfc_ready: AtomicU64,
}

/// The updaters, as named in metrics and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Updater {
    /// `stats/filesystem`.
    Filesystem,
    /// Byte counts.
    Bytecount,
}

impl Updater {
    /// Its name.
    pub fn name(self) -> &'static str {
        match self {
            Updater::Filesystem => "filesystem",
            Updater::Bytecount => "bytecount",
        }
    }
}

impl StatsMetrics {
    fn count(&self, u: Updater, o: Outcome) {
        self.runs[u as usize][o as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Whether a run of `u` is under way.
    pub fn running(&self, u: Updater) -> bool {
        self.running[u as usize].load(Ordering::Relaxed) == 1
    }

    /// Runs of `u` that came to `o`.
    pub fn runs(&self, u: Updater, o: Outcome) -> u64 {
        self.runs[u as usize][o as usize].load(Ordering::Relaxed)
    }
}

// ---------------------------------------------------------------------------
// The updaters

/// Periods of the updaters (`None`: off).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatsConfig {
    /// Filesystem statistics.
    pub filesystem: Option<Duration>,
    /// Byte counts.
    pub bytecount: Option<Duration>,
}

#[derive(Clone)]
struct Ctx {
    motr: MotrClient,
    kv: HaxKv,
    view: ClusterView,
    metrics: Arc<StatsMetrics>,
}

async fn call<T>(
    what: &'static str,
    f: impl Future<Output = Result<T, ClientError>>,
) -> Result<T, ClientError> {
    match tokio::time::timeout(MOTR_CALL_TIMEOUT, f).await {
        Ok(r) => r,
        Err(_) => {
            tracing::debug!(what, "Motr call did not answer in time");
            Err(ClientError::Timeout)
        }
    }
}

/// Whether this run should go on: the RC leader, rconfc running, and (when
/// `need_all_ios`) every ioservice healthy.
fn may_run(ctx: &Ctx, u: Updater, need_all_ios: bool) -> Option<Vec<(Fid, bool)>> {
    let state = ctx.view.snapshot();
    if !state.is_rc() {
        tracing::debug!(updater = u.name(), "not the RC leader: nothing to do");
        return None;
    }
    if !ctx.motr.is_ready() {
        tracing::debug!(updater = u.name(), "rconfc not running: nothing to do");
        return None;
    }
    let ios = ioservices(&state);
    if need_all_ios && !ios.iter().all(|(_, ok)| *ok) {
        tracing::info!(
            updater = u.name(),
            "not every ioservice is healthy: statistics not fetched this period"
        );
        return None;
    }
    Some(ios)
}

async fn filesystem_run(ctx: &Ctx) -> Outcome {
    if may_run(ctx, Updater::Filesystem, true).is_none() {
        return Outcome::Skipped;
    }
    let fs = match call("fs_stats", ctx.motr.fs_stats()).await {
        Ok(fs) => fs,
        Err(e) => {
            tracing::warn!(error = %e, "filesystem statistics not fetched; next period tries again");
            return Outcome::Failed;
        }
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let record = fs_record(&fs, now);
    match ctx.kv.put_fs_stats(&record).await {
        Ok(()) => {
            tracing::debug!(?record, "filesystem statistics written");
            Outcome::Written
        }
        Err(e) => {
            tracing::warn!(error = %e, "filesystem statistics not written; next period tries again");
            Outcome::Failed
        }
    }
}

async fn bytecount_run(ctx: &Ctx) -> Outcome {
    let Some(ios) = may_run(ctx, Updater::Bytecount, false) else {
        return Outcome::Skipped;
    };
    if ios.is_empty() {
        tracing::debug!("no ioservice in the configuration: no byte counts");
        return Outcome::Skipped;
    }
    let mut failed = false;
    let mut fresh: Vec<(FidText, FidText, u64, ByteCount)> = Vec::new();
    for (fid, _) in ios.iter().filter(|(_, ok)| *ok) {
        match call("proc_counters", ctx.motr.proc_counters(*fid)).await {
            Ok(stats) => fresh.extend(stats.counts.iter().map(|c| {
                (
                    fid_text(stats.proc_fid),
                    fid_text(c.pver),
                    c.user_id,
                    ByteCount {
                        bc: c.byte_count,
                        object_cnt: c.object_count,
                    },
                )
            })),
            Err(e) => {
                tracing::warn!(ios = %fid, error = %e, "byte counts of an ioservice not fetched");
                failed = true;
            }
        }
    }
    if let Err(e) = ctx.kv.put_byte_counts(&fresh).await {
        tracing::warn!(error = %e, "byte counts not written; next period tries again");
        return Outcome::Failed;
    }
    // The totals cover every count recorded, also those of ioservices not
    // asked this time (down now, their data still there), as the original.
    let recorded = match ctx.kv.byte_counts().await {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(error = %e, "byte counts not read back; next period tries again");
            return Outcome::Failed;
        }
    };
    let pvers: BTreeSet<FidText> = recorded.iter().map(|(_, p, _, _)| *p).collect();
    let mut layouts = BTreeMap::new();
    for pver in pvers {
        match call("pver_status", ctx.motr.pver_status(fid_of(pver))).await {
            Ok(info) => {
                layouts.insert(
                    pver,
                    PverLayout {
                        health: health_class(info.state),
                        data_units: info.data_units,
                        parity_units: info.parity_units,
                    },
                );
            }
            Err(ClientError::NotFound(_)) => {
                tracing::debug!(%pver, "pool version no longer configured: left out of the totals");
            }
            Err(e) => {
                // Totals without this pool version would be wrong: keep the
                // previous ones.
                tracing::warn!(%pver, error = %e, "pool version state not fetched; totals not updated");
                return Outcome::Failed;
            }
        }
    }
    let totals = bytecount_totals(&recorded, &layouts);
    if let Err(e) = ctx.kv.put_bytecount_totals(&totals).await {
        tracing::warn!(error = %e, "byte count totals not written; next period tries again");
        return Outcome::Failed;
    }
    tracing::debug!(?totals, "byte counts written");
    if failed {
        Outcome::Failed
    } else {
        Outcome::Written
    }
}

/// Runs `run` every `period` until `cancel`, starting once `ready` says
/// rconfc runs.
async fn every<F, Fut>(
    u: Updater,
    period: Duration,
    mut ready: watch::Receiver<bool>,
    metrics: Arc<StatsMetrics>,
    cancel: CancellationToken,
    mut run: F,
) where
    F: FnMut() -> Fut,
    Fut: Future<Output = Outcome>,
{
    tokio::select! {
        _ = cancel.cancelled() => return,
        r = ready.wait_for(|r| *r) => if r.is_err() {
            return;
        },
    }
    tracing::info!(updater = u.name(), ?period, "statistics updater running");
    let mut ticks = tokio::time::interval(period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = ticks.tick() => {}
        }
        metrics.running[u as usize].store(1, Ordering::Relaxed);
        let outcome = tokio::select! {
            _ = cancel.cancelled() => None,
            o = run() => Some(o),
        };
        metrics.running[u as usize].store(0, Ordering::Relaxed);
        match outcome {
            Some(o) => metrics.count(u, o),
            None => break,
        }
    }
    tracing::debug!(updater = u.name(), "statistics updater stopped");
}

/// The running updaters.
#[derive(Debug)]
pub struct StatsUpdaters {
    tasks: Vec<JoinHandle<()>>,
    cancel: CancellationToken,
}

impl StatsUpdaters {
    /// Starts the updaters `cfg` turns on, as tasks of `tasks`; they begin
    /// once `ready` is true and end on `cancel` (or [`StatsUpdaters::stop`]).
    #[allow(clippy::too_many_arguments)]
    pub fn spawn(
        cfg: StatsConfig,
        motr: MotrClient,
        kv: HaxKv,
        view: ClusterView,
        ready: watch::Receiver<bool>,
        metrics: Arc<StatsMetrics>,
        cancel: CancellationToken,
        tasks: &TaskTracker,
    ) -> Self {
        let ctx = Ctx {
            motr,
            kv,
            view,
            metrics,
        };
        let mut handles = Vec::new();
        if let Some(period) = cfg.filesystem {
            let c = ctx.clone();
            handles.push(tasks.spawn(every(
                Updater::Filesystem,
                period,
                ready.clone(),
                Arc::clone(&ctx.metrics),
                cancel.clone(),
                move || {
                    let c = c.clone();
                    async move { filesystem_run(&c).await }
                },
            )));
        }
        if let Some(period) = cfg.bytecount {
            let c = ctx.clone();
            handles.push(tasks.spawn(every(
                Updater::Bytecount,
                period,
                ready,
                Arc::clone(&ctx.metrics),
                cancel.clone(),
                move || {
                    let c = c.clone();
                    async move { bytecount_run(&c).await }
                },
            )));
        }
        StatsUpdaters {
            tasks: handles,
            cancel,
        }
    }

    /// Stops the updaters and waits for them: a run in progress is dropped
    /// where it is.
    pub async fn stop(self) {
        self.cancel.cancel();
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P1: FidText = FidText::new(0x7600_0000_0000_0001, 1);
    const P2: FidText = FidText::new(0x7600_0000_0000_0001, 2);
    const P3: FidText = FidText::new(0x7600_0000_0000_0001, 3);
    const IOS_A: FidText = FidText::new(0x7200_0000_0000_0001, 0x20);
    const IOS_B: FidText = FidText::new(0x7200_0000_0000_0001, 0x21);

    fn bc(bytes: u64) -> ByteCount {
        ByteCount {
            bc: bytes,
            object_cnt: 1,
        }
    }

    fn layout(health: PverHealth, n: u32, k: u32) -> PverLayout {
        PverLayout {
            health,
            data_units: n,
            parity_units: k,
        }
    }

    #[test]
    fn parity_is_removed_per_group() {
        // 4+2: a third of the bytes is parity.
        assert_eq!(bytes_without_parity(6 * 4096, 4, 2), 4 * 4096);
        // ceil(100 / 6) = 17 per unit, 34 of parity.
        assert_eq!(bytes_without_parity(100, 4, 2), 66);
        // No parity, and nothing stored.
        assert_eq!(bytes_without_parity(12_345, 1, 0), 12_345);
        assert_eq!(bytes_without_parity(0, 4, 2), 0);
        // Degenerate layouts: no units, only parity.
        assert_eq!(bytes_without_parity(500, 0, 0), 500);
        assert_eq!(bytes_without_parity(5, 0, 2), 0);
        // No overflow at the top.
        assert_eq!(bytes_without_parity(u64::MAX, 1, 1), u64::MAX / 2);
    }

    #[test]
    fn totals_by_pool_version_state() {
        let counts = vec![
            (IOS_A, P1, 1, bc(3000)),
            (IOS_A, P1, 2, bc(3000)),
            (IOS_B, P1, 1, bc(6000)),
            (IOS_A, P2, 1, bc(100)),
            (IOS_B, P3, 1, bc(7777)),
        ];
        let layouts: BTreeMap<FidText, PverLayout> = [
            (P1, layout(PverHealth::Healthy, 4, 2)),
            (P2, layout(PverHealth::Degraded, 4, 2)),
            // P3 is unknown to Motr: left out.
        ]
        .into();
        let totals = bytecount_totals(&counts, &layouts);
        assert_eq!(
            totals,
            [
                (PverHealth::Healthy, 8000),
                (PverHealth::Degraded, 66),
                (PverHealth::Critical, 0),
                (PverHealth::Damaged, 0),
            ]
        );
        // Two pool versions in one state add up (after parity, each).
        let both_healthy: BTreeMap<FidText, PverLayout> = [
            (P1, layout(PverHealth::Healthy, 4, 2)),
            (P2, layout(PverHealth::Healthy, 4, 2)),
            (P3, layout(PverHealth::Damaged, 1, 0)),
        ]
        .into();
        assert_eq!(
            bytecount_totals(&counts, &both_healthy),
            [
                (PverHealth::Healthy, 8066),
                (PverHealth::Degraded, 0),
                (PverHealth::Critical, 0),
                (PverHealth::Damaged, 7777),
            ]
        );
        assert_eq!(
            bytecount_totals(&[], &both_healthy).map(|(_, b)| b),
            [0, 0, 0, 0]
        );
    }

    #[test]
    fn pver_states_map_to_classes() {
        assert_eq!(health_class(PverState::Healthy), PverHealth::Healthy);
        assert_eq!(health_class(PverState::Degraded), PverHealth::Degraded);
        assert_eq!(health_class(PverState::Critical), PverHealth::Critical);
        assert_eq!(health_class(PverState::Damaged), PverHealth::Damaged);
    }

    #[test]
    fn dates_look_like_pythons_isoformat() {
        assert_eq!(iso_date(Duration::ZERO), "1970-01-01T00:00:00");
        assert_eq!(
            iso_date(Duration::new(1_707_393_600, 123_456_000)),
            "2024-02-08T12:00:00.123456"
        );
        // A leap day.
        assert_eq!(
            iso_date(Duration::from_secs(951_782_400)),
            "2000-02-29T00:00:00"
        );
    }

    #[test]
    fn the_filesystem_record_has_the_original_shape() {
        let fs = hax_core::FsStats {
            free_seg: 1,
            total_seg: 2,
            free_disk: 3,
            avail_disk: 4,
            total_disk: 5,
            svc_total: 6,
            svc_replied: 7,
        };
        let r = fs_record(&fs, Duration::new(1_707_393_600, 500_000_000));
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "stats": {
                    "fs_free_seg": 1, "fs_total_seg": 2, "fs_free_disk": 3,
                    "fs_avail_disk": 4, "fs_total_disk": 5, "fs_svc_total": 6,
                    "fs_svc_replied": 7
                },
                "timestamp": 1_707_393_600.5,
                "date": "2024-02-08T12:00:00.500000"
            })
        );
    }

    #[test]
    fn ioservices_of_the_configuration_with_their_health() {
        use crate::view::sample::{self, Sample};
        let mut d = sample::view_data();
        d.health = sample::health_entries(&[(Sample::IOS2A.key, "critical")], true);
        let ios = ioservices(&ClusterView::from_data(d).snapshot());
        let mut got: Vec<(u64, bool)> = ios.iter().map(|(f, ok)| (f.key, *ok)).collect();
        got.sort_unstable();
        assert_eq!(
            got,
            [
                (Sample::IOS1.key, true),
                (Sample::IOS2A.key, false),
                (Sample::IOS2B.key, true)
            ]
        );
    }
}
