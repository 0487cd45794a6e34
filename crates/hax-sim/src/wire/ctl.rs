//! The `CTL` and `CTL_R` frames: a peer shapes the emulator's model of Motr's
//! client side (pools, SNS progress, stats, counters, faults). See
//! `docs/emulator-protocol.md`, "Client model and control".

use hax_core::{Fid, FsStats, PverByteCount, PverState, SnsKind};

use super::{Rd, WireError, Wr};

/// Operation bytes of a `CTL` frame.
pub mod ctl_op {
    /// Define or replace a pool.
    pub const POOL: u8 = 1;
    /// Set a pool version's state.
    pub const PVER_STATE: u8 = 2;
    /// Set the filesystem stats.
    pub const FS_STATS: u8 = 3;
    /// Set an ioservice's byte counts.
    pub const COUNTERS: u8 = 4;
    /// Set the SNS progress rate.
    pub const SNS_RATE: u8 = 5;
    /// Force a copy machine to failed.
    pub const SNS_FAIL: u8 = 6;
    /// Inject a fault.
    pub const FAULT: u8 = 7;
    /// Forget the model.
    pub const CLEAR: u8 = 8;
    /// Count the client calls waiting in an injected delay.
    pub const DELAYED: u8 = 9;
}

/// Size of one encoded pool version (fid, four u32, u64).
const PVER_WIRE: usize = 40;
/// Size of one encoded byte count (fid, three u64).
const COUNT_WIRE: usize = 40;
/// Highest progress rate the emulator takes, in percent per second.
pub const SNS_RATE_MAX: u32 = 100_000;
/// Longest fault delay the emulator takes, in milliseconds.
pub const FAULT_DELAY_MAX_MS: u32 = 600_000;

/// A pool version of a [`PoolDef`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PverDef {
    /// Its fid (type `v`).
    pub fid: Fid,
    /// Its state.
    pub state: PverState,
    /// N.
    pub data_units: u32,
    /// K.
    pub parity_units: u32,
    /// P.
    pub pool_width: u32,
    /// Unit size in bytes.
    pub unit_size: u64,
}

/// A pool: its ioservices (what SNS status lists) and pool versions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolDef {
    /// Its fid (type `o`).
    pub fid: Fid,
    /// The SNS services of the pool, in the order SNS status lists them.
    pub ioservices: Vec<Fid>,
    /// Its pool versions.
    pub pvers: Vec<PverDef>,
}

/// A client operation of the emulator that faults can be injected into.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ClientOp {
    /// rconfc start.
    RconfcStart,
    /// Any SNS control operation (both kinds).
    Sns,
    /// SNS status (both kinds).
    SnsStatus,
    /// Pool version status.
    PverStatus,
    /// Filesystem stats.
    FsStats,
    /// Byte counts of an ioservice.
    ProcCounters,
}

impl ClientOp {
    /// The operation's byte on the wire.
    pub fn raw(self) -> u8 {
        match self {
            ClientOp::RconfcStart => 1,
            ClientOp::Sns => 2,
            ClientOp::SnsStatus => 3,
            ClientOp::PverStatus => 4,
            ClientOp::FsStats => 5,
            ClientOp::ProcCounters => 6,
        }
    }

    fn from_raw(v: u8) -> Result<Self, WireError> {
        Ok(match v {
            1 => ClientOp::RconfcStart,
            2 => ClientOp::Sns,
            3 => ClientOp::SnsStatus,
            4 => ClientOp::PverStatus,
            5 => ClientOp::FsStats,
            6 => ClientOp::ProcCounters,
            _ => return Err(bad("fault operation", u64::from(v))),
        })
    }
}

/// A fault: the next `count` calls of `op` wait `delay_ms`, then fail with
/// `rc` (a negative errno), or with `rc` 0 go on normally.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fault {
    /// The operation.
    pub op: ClientOp,
    /// How many calls.
    pub count: u32,
    /// Negative errno, or 0 for a delay only.
    pub rc: i32,
    /// Delay before the call answers, at most [`FAULT_DELAY_MAX_MS`].
    pub delay_ms: u32,
}

/// One control operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CtlOp {
    /// Defines a pool, or replaces the pool of the same fid.
    Pool(PoolDef),
    /// Sets a pool version's state.
    PverState {
        /// The pool version.
        pver: Fid,
        /// Its new state.
        state: PverState,
    },
    /// Sets the filesystem stats.
    FsStats(FsStats),
    /// Sets (replaces) the byte counts of an ioservice process.
    Counters {
        /// The ioservice process fid.
        ios: Fid,
        /// Its counts.
        counts: Vec<PverByteCount>,
    },
    /// Sets the SNS progress rate, percent per second (0 ..= [`SNS_RATE_MAX`]).
    SnsRate(u32),
    /// Forces a pool's repair or rebalance to failed.
    SnsFail {
        /// The pool.
        pool: Fid,
        /// Which copy machine.
        kind: SnsKind,
    },
    /// Injects a fault.
    Fault(Fault),
    /// Forgets pools, stats, counters and faults.
    Clear,
    /// Asks how many client calls wait in an injected delay now (the
    /// answer's `rc`).
    Delayed,
}

impl CtlOp {
    /// The operation's byte on the wire.
    pub fn raw(&self) -> u8 {
        match self {
            CtlOp::Pool(_) => ctl_op::POOL,
            CtlOp::PverState { .. } => ctl_op::PVER_STATE,
            CtlOp::FsStats(_) => ctl_op::FS_STATS,
            CtlOp::Counters { .. } => ctl_op::COUNTERS,
            CtlOp::SnsRate(_) => ctl_op::SNS_RATE,
            CtlOp::SnsFail { .. } => ctl_op::SNS_FAIL,
            CtlOp::Fault(_) => ctl_op::FAULT,
            CtlOp::Clear => ctl_op::CLEAR,
            CtlOp::Delayed => ctl_op::DELAYED,
        }
    }

    /// A short name for logs.
    pub fn name(&self) -> &'static str {
        match self {
            CtlOp::Pool(_) => "POOL",
            CtlOp::PverState { .. } => "PVER_STATE",
            CtlOp::FsStats(_) => "FS_STATS",
            CtlOp::Counters { .. } => "COUNTERS",
            CtlOp::SnsRate(_) => "SNS_RATE",
            CtlOp::SnsFail { .. } => "SNS_FAIL",
            CtlOp::Fault(_) => "FAULT",
            CtlOp::Clear => "CLEAR",
            CtlOp::Delayed => "DELAYED",
        }
    }
}

fn bad(field: &'static str, value: u64) -> WireError {
    WireError::BadCtl { field, value }
}

fn count(n: usize, field: &'static str) -> Result<u32, WireError> {
    u32::try_from(n).map_err(|_| bad(field, n as u64))
}

pub(super) fn pver_state_raw(s: PverState) -> u32 {
    match s {
        PverState::Healthy => 0,
        PverState::Degraded => 1,
        PverState::Critical => 2,
        PverState::Damaged => 3,
    }
}

fn pver_state(v: u32) -> Result<PverState, WireError> {
    Ok(match v {
        0 => PverState::Healthy,
        1 => PverState::Degraded,
        2 => PverState::Critical,
        3 => PverState::Damaged,
        _ => return Err(bad("pool version state", u64::from(v))),
    })
}

/// Writes a `CTL` body after its `seq`.
pub(super) fn encode_ctl(w: &mut Wr<'_>, op: &CtlOp) -> Result<(), WireError> {
    w.u8(op.raw());
    match op {
        CtlOp::Pool(p) => {
            w.fid(&p.fid);
            w.u32(count(p.ioservices.len(), "ioservice count")?);
            for f in &p.ioservices {
                w.fid(f);
            }
            w.u32(count(p.pvers.len(), "pool version count")?);
            for v in &p.pvers {
                w.fid(&v.fid);
                w.u32(pver_state_raw(v.state));
                w.u32(v.data_units);
                w.u32(v.parity_units);
                w.u32(v.pool_width);
                w.u64(v.unit_size);
            }
        }
        CtlOp::PverState { pver, state } => {
            w.fid(pver);
            w.u32(pver_state_raw(*state));
        }
        CtlOp::FsStats(s) => {
            for v in [
                s.free_seg,
                s.total_seg,
                s.free_disk,
                s.avail_disk,
                s.total_disk,
            ] {
                w.u64(v);
            }
            w.u32(s.svc_total);
            w.u32(s.svc_replied);
        }
        CtlOp::Counters { ios, counts } => {
            w.fid(ios);
            w.u32(count(counts.len(), "counter count")?);
            for c in counts {
                w.fid(&c.pver);
                w.u64(c.user_id);
                w.u64(c.byte_count);
                w.u64(c.object_count);
            }
        }
        CtlOp::SnsRate(r) => w.u32(*r),
        CtlOp::SnsFail { pool, kind } => {
            w.fid(pool);
            w.u8(match kind {
                SnsKind::Repair => 0,
                SnsKind::Rebalance => 1,
            });
        }
        CtlOp::Fault(f) => {
            w.u8(f.op.raw());
            w.u32(f.count);
            w.u32(f.rc as u32);
            w.u32(f.delay_ms);
        }
        CtlOp::Clear | CtlOp::Delayed => {}
    }
    Ok(())
}

/// Reads a `CTL` body after its `seq`.
pub(super) fn decode_ctl(r: &mut Rd<'_>) -> Result<CtlOp, WireError> {
    let op = r.u8()?;
    Ok(match op {
        ctl_op::POOL => {
            let fid = r.fid()?;
            let n = r.u32()?;
            if n as usize > r.buf.len() / 16 {
                return Err(bad("ioservice count", u64::from(n)));
            }
            let ioservices = (0..n).map(|_| r.fid()).collect::<Result<_, _>>()?;
            let n = r.u32()?;
            if n as usize > r.buf.len() / PVER_WIRE {
                return Err(bad("pool version count", u64::from(n)));
            }
            let mut pvers = Vec::with_capacity(n as usize);
            for _ in 0..n {
                pvers.push(PverDef {
                    fid: r.fid()?,
                    state: pver_state(r.u32()?)?,
                    data_units: r.u32()?,
                    parity_units: r.u32()?,
                    pool_width: r.u32()?,
                    unit_size: r.u64()?,
                });
            }
            CtlOp::Pool(PoolDef {
                fid,
                ioservices,
                pvers,
            })
        }
        ctl_op::PVER_STATE => CtlOp::PverState {
            pver: r.fid()?,
            state: pver_state(r.u32()?)?,
        },
        ctl_op::FS_STATS => CtlOp::FsStats(FsStats {
            free_seg: r.u64()?,
            total_seg: r.u64()?,
            free_disk: r.u64()?,
            avail_disk: r.u64()?,
            total_disk: r.u64()?,
            svc_total: r.u32()?,
            svc_replied: r.u32()?,
        }),
        ctl_op::COUNTERS => {
            let ios = r.fid()?;
            let n = r.u32()?;
            if n as usize > r.buf.len() / COUNT_WIRE {
                return Err(bad("counter count", u64::from(n)));
            }
            let mut counts = Vec::with_capacity(n as usize);
            for _ in 0..n {
                counts.push(PverByteCount {
                    pver: r.fid()?,
                    user_id: r.u64()?,
                    byte_count: r.u64()?,
                    object_count: r.u64()?,
                });
            }
            CtlOp::Counters { ios, counts }
        }
        ctl_op::SNS_RATE => CtlOp::SnsRate(r.u32()?),
        ctl_op::SNS_FAIL => CtlOp::SnsFail {
            pool: r.fid()?,
            kind: match r.u8()? {
                0 => SnsKind::Repair,
                1 => SnsKind::Rebalance,
                v => return Err(bad("SNS kind", u64::from(v))),
            },
        },
        ctl_op::FAULT => CtlOp::Fault(Fault {
            op: ClientOp::from_raw(r.u8()?)?,
            count: r.u32()?,
            rc: r.u32()? as i32,
            delay_ms: r.u32()?,
        }),
        ctl_op::CLEAR => CtlOp::Clear,
        ctl_op::DELAYED => CtlOp::Delayed,
        v => return Err(bad("operation", u64::from(v))),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{HaxFrame, PeerFrame, HEADER_LEN};
    use hax_core::FidType;

    fn every_op() -> Vec<CtlOp> {
        let f = |t, k| Fid::typed(t, 1, k);
        vec![
            CtlOp::Pool(PoolDef {
                fid: f(FidType::Pool, 1),
                ioservices: vec![f(FidType::Service, 2), Fid::new(u64::MAX, u64::MAX)],
                pvers: vec![
                    PverDef {
                        fid: f(FidType::Pver, 3),
                        state: PverState::Damaged,
                        data_units: u32::MAX,
                        parity_units: 0,
                        pool_width: 7,
                        unit_size: u64::MAX,
                    },
                    PverDef {
                        fid: f(FidType::Pver, 4),
                        state: PverState::Degraded,
                        data_units: 1,
                        parity_units: 1,
                        pool_width: 3,
                        unit_size: 4096,
                    },
                ],
            }),
            CtlOp::Pool(PoolDef {
                fid: f(FidType::Pool, 9),
                ioservices: vec![],
                pvers: vec![],
            }),
            CtlOp::PverState {
                pver: f(FidType::Pver, 3),
                state: PverState::Critical,
            },
            CtlOp::FsStats(FsStats {
                free_seg: 1,
                total_seg: 2,
                free_disk: 3,
                avail_disk: 4,
                total_disk: u64::MAX,
                svc_total: 6,
                svc_replied: u32::MAX,
            }),
            CtlOp::Counters {
                ios: f(FidType::Process, 20),
                counts: vec![PverByteCount {
                    pver: f(FidType::Pver, 3),
                    user_id: 7,
                    byte_count: u64::MAX,
                    object_count: 9,
                }],
            },
            CtlOp::SnsRate(SNS_RATE_MAX),
            CtlOp::SnsFail {
                pool: f(FidType::Pool, 1),
                kind: SnsKind::Rebalance,
            },
            CtlOp::Fault(Fault {
                op: ClientOp::ProcCounters,
                count: 3,
                rc: -110,
                delay_ms: FAULT_DELAY_MAX_MS,
            }),
            CtlOp::Clear,
            CtlOp::Delayed,
        ]
    }

    #[test]
    fn every_operation_round_trips() {
        for (seq, op) in every_op().into_iter().enumerate() {
            let f = PeerFrame::Ctl {
                seq: seq as u64,
                op,
            };
            let mut out = Vec::new();
            f.encode(&mut out).expect("encode");
            assert_eq!(PeerFrame::decode(&out[HEADER_LEN..]), Ok(f));
        }
        let r = HaxFrame::CtlReply { seq: 5, rc: -17 };
        let mut out = Vec::new();
        r.encode(&mut out).expect("encode");
        assert_eq!(out[HEADER_LEN], crate::wire::frame_type::CTL_R);
        assert_eq!(HaxFrame::decode(&out[HEADER_LEN..]), Ok(r));
    }

    fn ctl(op: u8, body: &[u8]) -> Vec<u8> {
        let mut b = vec![crate::wire::frame_type::CTL];
        b.extend_from_slice(&1u64.to_le_bytes());
        b.push(op);
        b.extend_from_slice(body);
        b
    }

    #[test]
    fn bad_bodies_are_refused() {
        let bad_field = |b: Vec<u8>, field: &str| match PeerFrame::decode(&b) {
            Err(WireError::BadCtl { field: f, .. }) => assert_eq!(f, field),
            other => panic!("{field}: {other:?}"),
        };
        bad_field(ctl(0, &[]), "operation");
        bad_field(ctl(10, &[]), "operation");
        let mut b = vec![0u8; 16];
        b.extend_from_slice(&u32::MAX.to_le_bytes());
        bad_field(ctl(ctl_op::POOL, &b), "ioservice count");
        let mut b = vec![0u8; 16];
        b.extend_from_slice(&2u32.to_le_bytes());
        b.extend_from_slice(&[0; 40]);
        bad_field(ctl(ctl_op::COUNTERS, &b), "counter count");
        let mut b = vec![0u8; 16];
        b.extend_from_slice(&4u32.to_le_bytes());
        bad_field(ctl(ctl_op::PVER_STATE, &b), "pool version state");
        let mut b = vec![0u8; 16];
        b.push(2);
        bad_field(ctl(ctl_op::SNS_FAIL, &b), "SNS kind");
        let mut b = vec![7u8];
        b.extend_from_slice(&[0; 12]);
        bad_field(ctl(ctl_op::FAULT, &b), "fault operation");
        assert!(matches!(
            PeerFrame::decode(&ctl(ctl_op::CLEAR, &[0])),
            Err(WireError::TrailingBytes { frame: "CTL", .. })
        ));
        assert!(matches!(
            PeerFrame::decode(&ctl(ctl_op::SNS_RATE, &[0, 0])),
            Err(WireError::Truncated { frame: "CTL" })
        ));
    }
}
