//! Motr client operations: rconfc, SNS repair and rebalance control and
//! status, pool version status, filesystem stats and per-ioservice byte
//! counts (Motr's spiel API).
//!
//! A [`MotrClient`] comes from [`crate::HaLink::client`] or
//! [`crate::Halon::client`]. Its operations are async and run, one at a time,
//! on a Motr-adopted thread of their own that the [`crate::Halon`] starts and
//! stops: a slow client operation (spiel waits for every service to answer)
//! never holds up HA messages. Once the interface begins to stop, every
//! operation, queued or new, ends with [`ClientError::ShuttingDown`].
//!
//! ```no_run
//! # async fn demo(link: hax_core::HaLink, profile: hax_core::Fid, pool: hax_core::Fid)
//! # -> Result<(), hax_core::ClientError> {
//! use hax_core::{CmStatus, SnsKind, SnsOp};
//! let client = link.client();
//! client.start_rconfc(profile).await?;
//! client.sns(SnsKind::Repair, SnsOp::Start, pool).await?;
//! let statuses = client.sns_status(SnsKind::Repair, pool).await?;
//! let done = statuses.iter().all(|s| s.state == CmStatus::Idle);
//! # let _ = done;
//! # Ok(())
//! # }
//! ```

mod ffi;
mod raw;
mod thread;
mod types;

use std::sync::Arc;

use tokio::sync::oneshot;

pub(crate) use thread::{ClientThread, Core};
pub use types::{
    ByteCountStats, ClientError, CmStatus, FsStats, PverByteCount, PverInfo, PverState, SnsKind,
    SnsOp, SnsStatus,
};

use crate::fid::{Fid, FidType};
use thread::Runner;

/// Motr's client operations on a running halon interface. Cheap to clone,
/// `Send + Sync`; obtained from [`crate::HaLink::client`] (and
/// [`crate::Halon::client`]).
#[derive(Clone, Debug)]
pub struct MotrClient {
    core: Arc<Core>,
}

impl MotrClient {
    pub(crate) fn new(core: Arc<Core>) -> Self {
        MotrClient { core }
    }

    /// Runs `f` on the client thread and waits for its result.
    async fn run<T: Send + 'static>(
        &self,
        f: impl for<'t> FnOnce(&Runner<'t>, &Core) -> Result<T, ClientError> + Send + 'static,
    ) -> Result<T, ClientError> {
        let (tx, rx) = oneshot::channel();
        let core = Arc::clone(&self.core);
        self.core.submit(Box::new(move |runner| {
            let r = match runner {
                Some(runner) => f(runner, &core),
                None => Err(ClientError::ShuttingDown),
            };
            let _ = tx.send(r);
        }))?;
        // A dropped job (the thread ended first) is a stop.
        rx.await.unwrap_or(Err(ClientError::ShuttingDown))
    }

    /// Starts rconfc with `profile` (a profile fid, type `p`):
    /// `m0_spiel_cmd_profile_set` and `m0_spiel_rconfc_start`. Every other
    /// operation but [`MotrClient::stop_rconfc`] needs it. Blocks in Motr
    /// until rconfc has a confd quorum. [`ClientError::Busy`] when already
    /// started.
    pub async fn start_rconfc(&self, profile: Fid) -> Result<(), ClientError> {
        if !profile.is(FidType::Profile) {
            return Err(ClientError::Invalid(format!(
                "{profile} is not a profile fid (type 'p')"
            )));
        }
        self.run(move |r, core| match r.rconfc_start(profile) {
            0 => {
                core.set_ready(true);
                Ok(())
            }
            rc => Err(raw::error_from_rc(
                "rconfc start",
                rc,
                Some(profile),
                core.closing(),
            )),
        })
        .await
    }

    /// Stops rconfc (`m0_spiel_rconfc_stop`). Harmless when not started. The
    /// halon interface stops rconfc itself when it stops.
    pub async fn stop_rconfc(&self) -> Result<(), ClientError> {
        self.run(move |r, core| match r.rconfc_stop() {
            0 => {
                core.set_ready(false);
                Ok(())
            }
            rc => Err(raw::error_from_rc("rconfc stop", rc, None, core.closing())),
        })
        .await
    }

    /// Whether rconfc is started (by this client, and not stopped since).
    pub fn is_ready(&self) -> bool {
        self.core.ready() && !self.core.closing()
    }

    /// Starts, aborts, pauses or resumes repair or rebalance of `pool`
    /// (`m0_spiel_sns_<kind>_<op>`). Motr answers Ok from any state of the
    /// copy machine (start while running, pause while idle, ...): what the
    /// call did shows only in [`MotrClient::sns_status`].
    /// [`ClientError::Busy`] only when the call itself is refused (`-EBUSY`
    /// and the like over RPC); [`ClientError::NotFound`] for an unknown pool.
    ///
    /// ```no_run
    /// # async fn demo(c: hax_core::MotrClient, pool: hax_core::Fid) {
    /// use hax_core::{ClientError, SnsKind, SnsOp};
    /// match c.sns(SnsKind::Rebalance, SnsOp::Quiesce, pool).await {
    ///     Ok(()) => {}
    ///     Err(ClientError::Busy) => { /* refused: try again later */ }
    ///     Err(e) => eprintln!("{e}"),
    /// }
    /// # }
    /// ```
    pub async fn sns(&self, kind: SnsKind, op: SnsOp, pool: Fid) -> Result<(), ClientError> {
        let name = sns_op_name(kind, op);
        self.run(
            move |r, core| match r.sns(raw::kind_to_raw(kind), raw::op_to_raw(op), pool) {
                0 => Ok(()),
                rc => Err(raw::error_from_rc(name, rc, Some(pool), core.closing())),
            },
        )
        .await
    }

    /// The state and progress of repair or rebalance of `pool`, one entry per
    /// ioservice of the pool (`m0_spiel_sns_<kind>_status`; rebalance asks
    /// rebalance, not repair).
    pub async fn sns_status(
        &self,
        kind: SnsKind,
        pool: Fid,
    ) -> Result<Vec<SnsStatus>, ClientError> {
        let name = match kind {
            SnsKind::Repair => "sns repair status",
            SnsKind::Rebalance => "sns rebalance status",
        };
        self.run(move |r, core| {
            let mut out = Vec::new();
            match r.sns_status(raw::kind_to_raw(kind), pool, &mut out) {
                0 => out.iter().map(raw::sns_status_from_raw).collect(),
                rc => Err(raw::error_from_rc(name, rc, Some(pool), core.closing())),
            }
        })
        .await
    }

    /// The state and layout of pool version `pver`
    /// (`m0_spiel_conf_pver_status`).
    pub async fn pver_status(&self, pver: Fid) -> Result<PverInfo, ClientError> {
        self.run(move |r, core| {
            let mut out = hax_sys::hax_pver_info::default();
            match r.pver_status(pver, &mut out) {
                0 => raw::pver_info_from_raw(&out),
                rc => Err(raw::error_from_rc(
                    "pver status",
                    rc,
                    Some(pver),
                    core.closing(),
                )),
            }
        })
        .await
    }

    /// Filesystem totals (`m0_spiel_filesystem_stats_fetch`).
    pub async fn fs_stats(&self) -> Result<FsStats, ClientError> {
        self.run(move |r, core| {
            let mut out = hax_sys::hax_fs_stats::default();
            match r.fs_stats(&mut out) {
                0 => Ok(raw::fs_stats_from_raw(&out)),
                rc => Err(raw::error_from_rc("fs stats", rc, None, core.closing())),
            }
        })
        .await
    }

    /// The bytes and objects written per pool version and user, as ioservice
    /// `ios` counts them (`m0_spiel_proc_counters_fetch`).
    pub async fn proc_counters(&self, ios: Fid) -> Result<ByteCountStats, ClientError> {
        self.run(move |r, core| {
            let mut proc_fid = hax_sys::hax_fid::default();
            let mut out = Vec::new();
            match r.proc_counters(ios, &mut proc_fid, &mut out) {
                0 => Ok(ByteCountStats {
                    proc_fid: crate::raw::fid_from_raw(&proc_fid),
                    counts: out.iter().map(raw::count_from_raw).collect(),
                }),
                rc => Err(raw::error_from_rc(
                    "proc counters",
                    rc,
                    Some(ios),
                    core.closing(),
                )),
            }
        })
        .await
    }
}

fn sns_op_name(kind: SnsKind, op: SnsOp) -> &'static str {
    match (kind, op) {
        (SnsKind::Repair, SnsOp::Start) => "sns repair start",
        (SnsKind::Repair, SnsOp::Abort) => "sns repair abort",
        (SnsKind::Repair, SnsOp::Quiesce) => "sns repair quiesce",
        (SnsKind::Repair, SnsOp::Continue) => "sns repair continue",
        (SnsKind::Rebalance, SnsOp::Start) => "sns rebalance start",
        (SnsKind::Rebalance, SnsOp::Abort) => "sns rebalance abort",
        (SnsKind::Rebalance, SnsOp::Quiesce) => "sns rebalance quiesce",
        (SnsKind::Rebalance, SnsOp::Continue) => "sns rebalance continue",
    }
}
