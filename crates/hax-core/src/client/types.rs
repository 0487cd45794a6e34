//! The values client operations take and return, and their one error type.

use std::fmt;

use crate::fid::Fid;

/// Which copy machine an SNS operation addresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SnsKind {
    /// SNS repair: rebuilds the data of failed devices onto spare space.
    Repair,
    /// SNS rebalance: moves repaired data back to replaced devices.
    Rebalance,
}

/// What an SNS operation does. The HTTP API of hax names them `start`,
/// `stop`, `pause` and `resume`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SnsOp {
    /// Starts a run (`m0_spiel_sns_*_start`).
    Start,
    /// Ends the run (`m0_spiel_sns_*_abort`); HTTP `stop`.
    Abort,
    /// Pauses the run (`m0_spiel_sns_*_quiesce`); HTTP `pause`.
    Quiesce,
    /// Resumes a paused run (`m0_spiel_sns_*_continue`); HTTP `resume`.
    Continue,
}

/// The state of a copy machine on one service (Motr's `enum m0_cm_status`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CmStatus {
    /// `CM_STATUS_INVALID` (0).
    Invalid,
    /// `CM_STATUS_IDLE` (1): nothing running; a finished run ends here.
    Idle,
    /// `CM_STATUS_STARTED` (2).
    Started,
    /// `CM_STATUS_FAILED` (3).
    Failed,
    /// `CM_STATUS_PAUSED` (4).
    Paused,
}

impl CmStatus {
    /// Motr's numeric value, as the HTTP status answer reports it.
    ///
    /// ```
    /// assert_eq!(hax_core::CmStatus::Paused.code(), 4);
    /// ```
    pub fn code(self) -> i32 {
        match self {
            CmStatus::Invalid => 0,
            CmStatus::Idle => 1,
            CmStatus::Started => 2,
            CmStatus::Failed => 3,
            CmStatus::Paused => 4,
        }
    }
}

/// One service's answer to an SNS status query.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SnsStatus {
    /// The SNS service (ioservice) fid.
    pub fid: Fid,
    /// Its copy machine's state.
    pub state: CmStatus,
    /// Progress of the current or last run, in percent as Motr reports it
    /// (normally 0..=100).
    pub progress: u64,
}

/// The state of a pool version by its failures (Motr's `m0_conf_pver_state`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PverState {
    /// No failures.
    Healthy,
    /// Fewer failures than parity units.
    Degraded,
    /// As many failures as parity units.
    Critical,
    /// More failures than parity units: data is lost.
    Damaged,
}

/// A pool version's state and layout (`m0_conf_pver_info`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PverInfo {
    /// The pool version fid.
    pub fid: Fid,
    /// Its state.
    pub state: PverState,
    /// Data units per parity group (N).
    pub data_units: u32,
    /// Parity units per parity group (K).
    pub parity_units: u32,
    /// Pool width (P).
    pub pool_width: u32,
    /// Unit size in bytes.
    pub unit_size: u64,
}

/// Filesystem totals over the processes under the profile (`m0_fs_stats`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FsStats {
    /// Free bytes in BE segments.
    pub free_seg: u64,
    /// Total bytes in BE segments.
    pub total_seg: u64,
    /// Free bytes on drives.
    pub free_disk: u64,
    /// Available bytes on drives.
    pub avail_disk: u64,
    /// Total bytes on drives.
    pub total_disk: u64,
    /// IOS, MDS and CAS services under the profile.
    pub svc_total: u32,
    /// How many of them replied.
    pub svc_replied: u32,
}

/// Bytes and objects one user wrote in one pool version, as one ioservice
/// counts them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PverByteCount {
    /// The pool version.
    pub pver: Fid,
    /// The user.
    pub user_id: u64,
    /// Bytes written.
    pub byte_count: u64,
    /// Objects written.
    pub object_count: u64,
}

/// The byte counts of one ioservice.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ByteCountStats {
    /// The ioservice (Motr's `pc_proc_fid`).
    pub proc_fid: Fid,
    /// One entry per (pool version, user).
    pub counts: Vec<PverByteCount>,
}

/// Why a client operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// rconfc is not started (Motr: `-EDESTADDRREQ`), or the interface is
    /// still starting.
    #[error("Motr client not ready: rconfc is not started")]
    NotReady,
    /// The halon interface is stopping or stopped (Motr: `-ESHUTDOWN`).
    #[error("the halon interface is shutting down")]
    ShuttingDown,
    /// The pool, pool version or ioservice is unknown to the configuration
    /// (`-ENOENT`).
    #[error("{0} is not in the configuration")]
    NotFound(Fid),
    /// The operation is not allowed in the current state (`-EBUSY`,
    /// `-EALREADY`, `-EPROTO`).
    #[error("operation not allowed in the current state")]
    Busy,
    /// Motr did not answer in time (`-ETIMEDOUT`).
    #[error("Motr did not answer in time")]
    Timeout,
    /// Any other failure: the operation and its negative errno (or glue code).
    #[error("{op} failed with {code}")]
    Motr {
        /// The operation.
        op: &'static str,
        /// What it returned.
        code: i32,
    },
    /// A result that does not convert, or an argument Motr cannot take.
    #[error("invalid: {0}")]
    Invalid(String),
}

impl fmt::Display for SnsKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SnsKind::Repair => "repair",
            SnsKind::Rebalance => "rebalance",
        })
    }
}

impl fmt::Display for SnsOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SnsOp::Start => "start",
            SnsOp::Abort => "abort",
            SnsOp::Quiesce => "quiesce",
            SnsOp::Continue => "continue",
        })
    }
}
