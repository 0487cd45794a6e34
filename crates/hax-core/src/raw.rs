//! Conversions between the typed model and the flat C structs of `hax_glue.h`.
//! Both directions are total: every model value has a C form, and every C
//! value either reads back into the model or gives a [`ConvertError`].

use hax_sys as sys;

use crate::error::ConvertError;
use crate::fid::{Fid, Uint128};
use crate::msg::{
    BeIoErr, Cookie, FailvecRep, FailvecReq, HaMsg, HaMsgData, HaNote, InvalidMsg, Nvec, NvecKind,
    ProcessEvent, RpcEvent, ServiceEvent, SnsErr, StobIoqError, NOTES_MAX,
};
use crate::state::{
    BeLocation, CmOp, HaState, ProcessEventKind, ProcessType, ServiceEventKind, ServiceType,
};

pub(crate) fn fid_to_raw(f: Fid) -> sys::hax_fid {
    sys::hax_fid {
        container: f.container,
        key: f.key,
    }
}

pub(crate) fn fid_from_raw(f: &sys::hax_fid) -> Fid {
    Fid::new(f.container, f.key)
}

pub(crate) fn u128_to_raw(v: Uint128) -> sys::hax_u128 {
    sys::hax_u128 { hi: v.hi, lo: v.lo }
}

pub(crate) fn u128_from_raw(v: &sys::hax_u128) -> Uint128 {
    Uint128::new(v.hi, v.lo)
}

fn notes_to_raw(notes: &[HaNote], out: &mut sys::hax_msg) -> Result<(), InvalidMsg> {
    if notes.len() > NOTES_MAX {
        return Err(InvalidMsg::TooManyNotes(notes.len()));
    }
    for (slot, n) in out.notes.iter_mut().zip(notes) {
        *slot = sys::hax_note {
            id: fid_to_raw(n.fid),
            state: n.state.raw(),
            pad_: 0,
        };
    }
    // The length was checked against NOTES_MAX (1024) above.
    out.nr_notes = notes.len() as u32;
    Ok(())
}

/// Writes `msg` into `out` with tag 0, as `hax_glue_send()` wants it.
pub(crate) fn msg_to_raw(msg: &HaMsg, out: &mut sys::hax_msg) -> Result<(), InvalidMsg> {
    out.fid = fid_to_raw(msg.fid);
    out.source_process = fid_to_raw(msg.source_process);
    out.source_service = fid_to_raw(msg.source_service);
    out.time_ns = msg.time_ns;
    out.epoch = msg.epoch;
    out.tag = 0;
    out.type_ = msg.type_id();
    out.nr_notes = 0;
    out.u = Default::default();
    match &msg.data {
        HaMsgData::StobIoq(s) => {
            out.u.stob_ioq = sys::hax_stob_ioq {
                conf_sdev: fid_to_raw(s.conf_sdev),
                stob_domain: fid_to_raw(s.stob_domain),
                stob_fid: fid_to_raw(s.stob_fid),
                fd: s.fd,
                opcode: s.opcode,
                rc: s.rc,
                offset: s.offset,
                size: s.size,
                bshift: s.bshift,
                pad_: 0,
            }
        }
        HaMsgData::Nvec(n) => {
            out.u.nvec = sys::hax_nvec {
                dir: match n.kind {
                    NvecKind::Set => u64::from(sys::HAX_NVEC_SET),
                    NvecKind::Get => u64::from(sys::HAX_NVEC_GET),
                },
                id_of_get: n.id_of_get,
                ignore_same: u64::from(n.ignore_same_state),
            };
            notes_to_raw(&n.notes, out)?;
        }
        HaMsgData::FailvecReq(r) => {
            out.u.fvec = sys::hax_fvec {
                pool: fid_to_raw(r.pool),
                cookie_addr: r.cookie.addr,
                cookie_gen: r.cookie.generation,
            }
        }
        HaMsgData::FailvecRep(r) => {
            out.u.fvec = sys::hax_fvec {
                pool: fid_to_raw(r.pool),
                cookie_addr: r.cookie.addr,
                cookie_gen: r.cookie.generation,
            };
            notes_to_raw(&r.notes, out)?;
        }
        HaMsgData::KeepaliveReq { id } => {
            out.u.keepalive = sys::hax_kalive {
                id: u128_to_raw(*id),
                counter: 0,
            }
        }
        HaMsgData::KeepaliveRep { id, counter } => {
            out.u.keepalive = sys::hax_kalive {
                id: u128_to_raw(*id),
                counter: *counter,
            }
        }
        HaMsgData::ProcessEvent(e) => {
            out.u.event = sys::hax_event {
                event: u64::from(e.event.raw()),
                type_: u64::from(e.process_type.raw()),
                pid: e.pid,
            }
        }
        HaMsgData::ServiceEvent(e) => {
            out.u.event = sys::hax_event {
                event: u64::from(e.event.raw()),
                type_: u64::from(e.service_type.raw()),
                pid: e.pid,
            }
        }
        HaMsgData::RpcEvent(e) => {
            out.u.rpc = sys::hax_rpcev {
                attempts: e.attempts,
                state: u64::from(e.state.raw()),
            }
        }
        HaMsgData::BeIoErr(e) => {
            out.u.err = sys::hax_err {
                errcode: e.errcode,
                location: e.location.raw() as u8,
                opcode: e.opcode,
                pad_: 0,
            }
        }
        HaMsgData::SnsErr(e) => {
            out.u.err = sys::hax_err {
                errcode: e.errcode,
                location: 0,
                opcode: e.opcode.raw() as u8,
                pad_: 0,
            }
        }
    }
    Ok(())
}

fn notes_from_raw(raw: &sys::hax_msg) -> Result<Vec<HaNote>, ConvertError> {
    let nr = raw.nr_notes as usize;
    if nr > NOTES_MAX {
        return Err(ConvertError::TooManyNotes(raw.nr_notes));
    }
    raw.notes[..nr]
        .iter()
        .map(|n| {
            Ok(HaNote::new(
                fid_from_raw(&n.id),
                HaState::try_from(u64::from(n.state))?,
            ))
        })
        .collect()
}

/// Reads a message the C side handed us. `tag` is not part of the model; the
/// caller takes it from `raw.tag`.
pub(crate) fn msg_from_raw(raw: &sys::hax_msg) -> Result<HaMsg, ConvertError> {
    // SAFETY (for each union read below): every union member is plain old data
    // made only of integers, so any bit pattern is a valid value; `type_`
    // selects the member the writer used.
    let data = match raw.type_ {
        sys::HAX_MSG_STOB_IOQ => {
            // SAFETY: see above.
            let s = unsafe { raw.u.stob_ioq };
            HaMsgData::StobIoq(StobIoqError {
                conf_sdev: fid_from_raw(&s.conf_sdev),
                stob_domain: fid_from_raw(&s.stob_domain),
                stob_fid: fid_from_raw(&s.stob_fid),
                fd: s.fd,
                opcode: s.opcode,
                rc: s.rc,
                offset: s.offset,
                size: s.size,
                bshift: s.bshift,
            })
        }
        sys::HAX_MSG_NVEC => {
            // SAFETY: see above.
            let n = unsafe { raw.u.nvec };
            let kind = match n.dir {
                d if d == u64::from(sys::HAX_NVEC_SET) => NvecKind::Set,
                d if d == u64::from(sys::HAX_NVEC_GET) => NvecKind::Get,
                d => return Err(ConvertError::BadNvecDir(d)),
            };
            let ignore_same_state = match n.ignore_same {
                0 => false,
                1 => true,
                v => return Err(ConvertError::BadIgnoreSame(v)),
            };
            HaMsgData::Nvec(Nvec {
                kind,
                id_of_get: n.id_of_get,
                ignore_same_state,
                notes: notes_from_raw(raw)?,
            })
        }
        sys::HAX_MSG_FVEC_REQ => {
            // SAFETY: see above.
            let f = unsafe { raw.u.fvec };
            HaMsgData::FailvecReq(FailvecReq {
                pool: fid_from_raw(&f.pool),
                cookie: Cookie {
                    addr: f.cookie_addr,
                    generation: f.cookie_gen,
                },
            })
        }
        sys::HAX_MSG_FVEC_REP => {
            // SAFETY: see above.
            let f = unsafe { raw.u.fvec };
            HaMsgData::FailvecRep(FailvecRep {
                pool: fid_from_raw(&f.pool),
                cookie: Cookie {
                    addr: f.cookie_addr,
                    generation: f.cookie_gen,
                },
                notes: notes_from_raw(raw)?,
            })
        }
        sys::HAX_MSG_KEEPALIVE_REQ => {
            // SAFETY: see above.
            let k = unsafe { raw.u.keepalive };
            HaMsgData::KeepaliveReq {
                id: u128_from_raw(&k.id),
            }
        }
        sys::HAX_MSG_KEEPALIVE_REP => {
            // SAFETY: see above.
            let k = unsafe { raw.u.keepalive };
            HaMsgData::KeepaliveRep {
                id: u128_from_raw(&k.id),
                counter: k.counter,
            }
        }
        sys::HAX_MSG_EVENT_PROCESS => {
            // SAFETY: see above.
            let e = unsafe { raw.u.event };
            HaMsgData::ProcessEvent(ProcessEvent {
                event: ProcessEventKind::try_from(e.event)?,
                process_type: ProcessType::try_from(e.type_)?,
                pid: e.pid,
            })
        }
        sys::HAX_MSG_EVENT_SERVICE => {
            // SAFETY: see above.
            let e = unsafe { raw.u.event };
            HaMsgData::ServiceEvent(ServiceEvent {
                event: ServiceEventKind::try_from(e.event)?,
                service_type: ServiceType::try_from(e.type_)?,
                pid: e.pid,
            })
        }
        sys::HAX_MSG_EVENT_RPC => {
            // SAFETY: see above.
            let r = unsafe { raw.u.rpc };
            HaMsgData::RpcEvent(RpcEvent {
                attempts: r.attempts,
                state: HaState::try_from(r.state)?,
            })
        }
        sys::HAX_MSG_BE_IO_ERR => {
            // SAFETY: see above.
            let e = unsafe { raw.u.err };
            HaMsgData::BeIoErr(BeIoErr {
                errcode: e.errcode,
                location: BeLocation::try_from(u64::from(e.location))?,
                opcode: e.opcode,
            })
        }
        sys::HAX_MSG_SNS_ERR => {
            // SAFETY: see above.
            let e = unsafe { raw.u.err };
            HaMsgData::SnsErr(SnsErr {
                errcode: e.errcode,
                opcode: CmOp::try_from(u64::from(e.opcode))?,
            })
        }
        other => return Err(ConvertError::BadType(other)),
    };
    Ok(HaMsg {
        fid: fid_from_raw(&raw.fid),
        source_process: fid_from_raw(&raw.source_process),
        source_service: fid_from_raw(&raw.source_service),
        time_ns: raw.time_ns,
        epoch: raw.epoch,
        data,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fid::FidType;

    fn samples() -> Vec<HaMsg> {
        let f = |k| Fid::typed(FidType::Sdev, 1, k);
        let notes = vec![
            HaNote::new(f(1), HaState::Online),
            HaNote::new(f(2), HaState::Failed),
        ];
        let datas = vec![
            HaMsgData::StobIoq(StobIoqError {
                conf_sdev: f(1),
                stob_domain: Fid::new(0xc, 0xd),
                stob_fid: Fid::new(0xe, 0xf),
                fd: 42,
                opcode: 4,
                rc: -5,
                offset: 191,
                size: 100,
                bshift: 4,
            }),
            HaMsgData::Nvec(Nvec {
                kind: NvecKind::Get,
                id_of_get: 100,
                ignore_same_state: false,
                notes: vec![HaNote::new(f(1), HaState::Unknown)],
            }),
            HaMsgData::Nvec(Nvec {
                kind: NvecKind::Set,
                id_of_get: 0,
                ignore_same_state: true,
                notes: notes.clone(),
            }),
            HaMsgData::FailvecReq(FailvecReq {
                pool: Fid::typed(FidType::Pool, 2, 9),
                cookie: Cookie {
                    addr: 7,
                    generation: 8,
                },
            }),
            HaMsgData::FailvecRep(FailvecRep {
                pool: Fid::typed(FidType::Pool, 2, 9),
                cookie: Cookie {
                    addr: 7,
                    generation: 8,
                },
                notes,
            }),
            HaMsgData::KeepaliveReq {
                id: Uint128::new(1, 2),
            },
            HaMsgData::KeepaliveRep {
                id: Uint128::new(1, 2),
                counter: 3,
            },
            HaMsgData::ProcessEvent(ProcessEvent {
                event: ProcessEventKind::Started,
                process_type: ProcessType::M0d,
                pid: 77,
            }),
            HaMsgData::ServiceEvent(ServiceEvent {
                event: ServiceEventKind::Failed,
                service_type: ServiceType::Dtm0,
                pid: 78,
            }),
            HaMsgData::RpcEvent(RpcEvent {
                attempts: 3,
                state: HaState::Transient,
            }),
            HaMsgData::BeIoErr(BeIoErr {
                errcode: 5,
                location: BeLocation::Segment2,
                opcode: 2,
            }),
            HaMsgData::SnsErr(SnsErr {
                errcode: 6,
                opcode: CmOp::RebalanceAbort,
            }),
        ];
        datas
            .into_iter()
            .enumerate()
            .map(|(i, data)| HaMsg {
                fid: Fid::typed(FidType::Process, 1, i as u64),
                source_process: Fid::new(1, 2),
                source_service: Fid::new(3, 4),
                time_ns: 1_700_000_000_000_000_000 + i as u64,
                epoch: i as u64,
                data,
            })
            .collect()
    }

    #[test]
    fn every_type_round_trips() {
        let mut raw = Box::<sys::hax_msg>::default();
        let mut seen = std::collections::BTreeSet::new();
        for msg in samples() {
            raw.tag = 99;
            msg_to_raw(&msg, &mut raw).unwrap();
            assert_eq!(raw.tag, 0, "send wants tag 0");
            assert_eq!(raw.type_, msg.type_id());
            assert_eq!(msg_from_raw(&raw).unwrap(), msg);
            seen.insert(msg.type_id());
        }
        assert_eq!(seen.len(), 11, "a sample for every message type");
    }

    #[test]
    fn bad_raw_values_are_errors() {
        let mut raw = Box::<sys::hax_msg>::default();
        assert_eq!(msg_from_raw(&raw), Err(ConvertError::BadType(0)));
        raw.type_ = 12;
        assert_eq!(msg_from_raw(&raw), Err(ConvertError::BadType(12)));

        raw.type_ = sys::HAX_MSG_NVEC;
        raw.nr_notes = 1025;
        assert_eq!(msg_from_raw(&raw), Err(ConvertError::TooManyNotes(1025)));
        raw.nr_notes = 1;
        raw.notes[0].state = 8;
        assert!(matches!(
            msg_from_raw(&raw),
            Err(ConvertError::OutOfRange(_))
        ));
        raw.notes[0].state = 1;
        raw.u.nvec.dir = 2;
        assert_eq!(msg_from_raw(&raw), Err(ConvertError::BadNvecDir(2)));
        raw.u.nvec.dir = 0;
        raw.u.nvec.ignore_same = 2;
        assert_eq!(msg_from_raw(&raw), Err(ConvertError::BadIgnoreSame(2)));

        raw.type_ = sys::HAX_MSG_EVENT_PROCESS;
        raw.u.event = sys::hax_event {
            event: 9,
            type_: 0,
            pid: 0,
        };
        assert!(matches!(
            msg_from_raw(&raw),
            Err(ConvertError::OutOfRange(_))
        ));
        raw.type_ = sys::HAX_MSG_BE_IO_ERR;
        raw.u.err.location = 4;
        assert!(matches!(
            msg_from_raw(&raw),
            Err(ConvertError::OutOfRange(_))
        ));
    }

    #[test]
    fn too_many_notes_is_refused_on_the_way_out() {
        let mut raw = Box::<sys::hax_msg>::default();
        let msg = HaMsg::nvec_set(vec![
            HaNote::new(Fid::new(1, 1), HaState::Online);
            NOTES_MAX + 1
        ]);
        assert_eq!(
            msg_to_raw(&msg, &mut raw),
            Err(InvalidMsg::TooManyNotes(NOTES_MAX + 1))
        );
        let full = HaMsg::nvec_set(vec![
            HaNote::new(Fid::new(1, 1), HaState::Online);
            NOTES_MAX
        ]);
        msg_to_raw(&full, &mut raw).unwrap();
        assert_eq!(raw.nr_notes as usize, NOTES_MAX);
    }
}
