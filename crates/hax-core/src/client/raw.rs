//! Conversions between the client model and the flat structs of `hax_glue.h`.
//! Total: every C value either reads back into the model or gives
//! [`ClientError::Invalid`]; every return code maps to one [`ClientError`].

use hax_sys as sys;

use super::types::{
    ClientError, CmStatus, FsStats, PverByteCount, PverInfo, PverState, SnsKind, SnsOp, SnsStatus,
};
use crate::fid::Fid;
use crate::raw::fid_from_raw;

// Linux errno values Motr returns (negated).
const ENOENT: i32 = 2;
const EBUSY: i32 = 16;
const EPROTO: i32 = 71;
const EDESTADDRREQ: i32 = 89;
const ESHUTDOWN: i32 = 108;
const ETIMEDOUT: i32 = 110;
const EALREADY: i32 = 114;

pub(crate) fn kind_to_raw(k: SnsKind) -> u32 {
    match k {
        SnsKind::Repair => sys::HAX_SNS_REPAIR,
        SnsKind::Rebalance => sys::HAX_SNS_REBALANCE,
    }
}

pub(crate) fn op_to_raw(o: SnsOp) -> u32 {
    match o {
        SnsOp::Start => sys::HAX_SNS_START,
        SnsOp::Abort => sys::HAX_SNS_ABORT,
        SnsOp::Quiesce => sys::HAX_SNS_QUIESCE,
        SnsOp::Continue => sys::HAX_SNS_CONTINUE,
    }
}

pub(crate) fn cm_status_from_raw(v: u32) -> Result<CmStatus, ClientError> {
    match v {
        sys::HAX_CM_INVALID => Ok(CmStatus::Invalid),
        sys::HAX_CM_IDLE => Ok(CmStatus::Idle),
        sys::HAX_CM_STARTED => Ok(CmStatus::Started),
        sys::HAX_CM_FAILED => Ok(CmStatus::Failed),
        sys::HAX_CM_PAUSED => Ok(CmStatus::Paused),
        other => Err(ClientError::Invalid(format!(
            "copy machine status {other} is not in 0..=4"
        ))),
    }
}

pub(crate) fn pver_state_from_raw(v: u32) -> Result<PverState, ClientError> {
    match v {
        sys::HAX_PVER_HEALTHY => Ok(PverState::Healthy),
        sys::HAX_PVER_DEGRADED => Ok(PverState::Degraded),
        sys::HAX_PVER_CRITICAL => Ok(PverState::Critical),
        sys::HAX_PVER_DAMAGED => Ok(PverState::Damaged),
        other => Err(ClientError::Invalid(format!(
            "pool version state {other} is not in 0..=3"
        ))),
    }
}

pub(crate) fn sns_status_from_raw(s: &sys::hax_sns_status) -> Result<SnsStatus, ClientError> {
    Ok(SnsStatus {
        fid: fid_from_raw(&s.fid),
        state: cm_status_from_raw(s.state)?,
        progress: s.progress,
    })
}

pub(crate) fn pver_info_from_raw(p: &sys::hax_pver_info) -> Result<PverInfo, ClientError> {
    Ok(PverInfo {
        fid: fid_from_raw(&p.fid),
        state: pver_state_from_raw(p.state)?,
        data_units: p.data_units,
        parity_units: p.parity_units,
        pool_width: p.pool_width,
        unit_size: p.unit_size,
    })
}

pub(crate) fn fs_stats_from_raw(s: &sys::hax_fs_stats) -> FsStats {
    FsStats {
        free_seg: s.free_seg,
        total_seg: s.total_seg,
        free_disk: s.free_disk,
        avail_disk: s.avail_disk,
        total_disk: s.total_disk,
        svc_total: s.svc_total,
        svc_replied: s.svc_replied,
    }
}

pub(crate) fn count_from_raw(c: &sys::hax_pver_count) -> PverByteCount {
    PverByteCount {
        pver: fid_from_raw(&c.pver),
        user_id: c.user_id,
        byte_count: c.byte_count,
        object_count: c.object_count,
    }
}

/// The error for a non-zero return code of operation `op`. `subject` is the
/// fid the operation was about (what -ENOENT names); `closing` tells whether
/// hax-core has begun to stop the interface (a lifecycle refusal then means
/// shutting down, otherwise not started yet).
pub(crate) fn error_from_rc(
    op: &'static str,
    rc: i32,
    subject: Option<Fid>,
    closing: bool,
) -> ClientError {
    match rc {
        sys::HAX_E_RCONFC => ClientError::NotReady,
        sys::HAX_E_STATE if closing => ClientError::ShuttingDown,
        sys::HAX_E_STATE => ClientError::NotReady,
        _ if rc == -EDESTADDRREQ => ClientError::NotReady,
        _ if rc == -ESHUTDOWN => ClientError::ShuttingDown,
        _ if rc == -ENOENT => match subject {
            Some(f) => ClientError::NotFound(f),
            None => ClientError::Motr { op, code: rc },
        },
        _ if rc == -EBUSY || rc == -EALREADY || rc == -EPROTO => ClientError::Busy,
        _ if rc == -ETIMEDOUT => ClientError::Timeout,
        _ => ClientError::Motr { op, code: rc },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_map_to_their_variants() {
        let f = Fid::new(1, 2);
        let m = |rc, closing| error_from_rc("op", rc, Some(f), closing);
        assert_eq!(m(sys::HAX_E_RCONFC, false), ClientError::NotReady);
        assert_eq!(m(sys::HAX_E_STATE, false), ClientError::NotReady);
        assert_eq!(m(sys::HAX_E_STATE, true), ClientError::ShuttingDown);
        assert_eq!(m(-EDESTADDRREQ, false), ClientError::NotReady);
        assert_eq!(m(-ESHUTDOWN, false), ClientError::ShuttingDown);
        assert_eq!(m(-ENOENT, false), ClientError::NotFound(f));
        assert_eq!(
            error_from_rc("fs", -ENOENT, None, false),
            ClientError::Motr {
                op: "fs",
                code: -ENOENT
            }
        );
        for rc in [-EBUSY, -EALREADY, -EPROTO] {
            assert_eq!(m(rc, false), ClientError::Busy);
        }
        assert_eq!(m(-ETIMEDOUT, false), ClientError::Timeout);
        assert_eq!(m(-5, false), ClientError::Motr { op: "op", code: -5 });
        assert_eq!(
            m(sys::HAX_E_THREAD, false),
            ClientError::Motr {
                op: "op",
                code: sys::HAX_E_THREAD
            }
        );
    }

    #[test]
    fn out_of_range_values_are_invalid() {
        assert!(matches!(
            cm_status_from_raw(5),
            Err(ClientError::Invalid(_))
        ));
        assert!(matches!(
            pver_state_from_raw(4),
            Err(ClientError::Invalid(_))
        ));
        for (v, s) in [
            (0, CmStatus::Invalid),
            (1, CmStatus::Idle),
            (2, CmStatus::Started),
            (3, CmStatus::Failed),
            (4, CmStatus::Paused),
        ] {
            assert_eq!(cm_status_from_raw(v), Ok(s));
            assert_eq!(s.code(), v as i32);
        }
        let raw = sys::hax_sns_status {
            fid: sys::hax_fid {
                container: 1,
                key: 2,
            },
            state: 9,
            pad_: 0,
            progress: 3,
        };
        assert!(sns_status_from_raw(&raw).is_err());
    }
}
