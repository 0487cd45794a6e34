//! One-line, human-readable descriptions of HA messages and entrypoint
//! replies, for logs and `m0d-sim`'s output.

use std::fmt::Write;

use hax_core::{HaMsg, HaMsgData, HaNote, NvecKind};

use crate::wire::{Control, EpRep};

/// How many notes a description lists before summing up the rest.
const NOTES_SHOWN: usize = 6;

fn notes(out: &mut String, notes: &[HaNote]) {
    out.push('[');
    for (i, n) in notes.iter().take(NOTES_SHOWN).enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        let state = n.state.name().trim_start_matches("M0_NC_");
        let _ = write!(out, "{} {state}", n.fid);
    }
    if notes.len() > NOTES_SHOWN {
        let _ = write!(out, ", … {} more", notes.len() - NOTES_SHOWN);
    }
    out.push(']');
}

/// `process 0x72…:0x1 STARTED (m0d, pid 10001)`, `nvec SET [0x64…:0x1 ONLINE]`…
pub fn msg(m: &HaMsg) -> String {
    let mut s = String::new();
    match &m.data {
        HaMsgData::StobIoq(e) => {
            let _ = write!(
                s,
                "stob I/O error on sdev {}: rc {} opcode {} offset {} size {}",
                e.conf_sdev, e.rc, e.opcode, e.offset, e.size
            );
        }
        HaMsgData::Nvec(n) => {
            let kind = match n.kind {
                NvecKind::Set => "SET",
                NvecKind::Get => "GET",
            };
            let _ = write!(s, "nvec {kind} ");
            if n.id_of_get != 0 {
                let _ = write!(s, "id {} ", n.id_of_get);
            }
            notes(&mut s, &n.notes);
            if n.ignore_same_state {
                s.push_str(" (ignore same)");
            }
        }
        HaMsgData::FailvecReq(r) => {
            let _ = write!(
                s,
                "failvec request for pool {} (cookie {:#x}/{})",
                r.pool, r.cookie.addr, r.cookie.generation
            );
        }
        HaMsgData::FailvecRep(r) => {
            let _ = write!(
                s,
                "failvec reply for pool {} (cookie {:#x}/{}) ",
                r.pool, r.cookie.addr, r.cookie.generation
            );
            notes(&mut s, &r.notes);
        }
        HaMsgData::KeepaliveReq { id } => {
            let _ = write!(s, "keepalive request {id}");
        }
        HaMsgData::KeepaliveRep { id, counter } => {
            let _ = write!(s, "keepalive reply {id} counter {counter}");
        }
        HaMsgData::ProcessEvent(e) => {
            let _ = write!(
                s,
                "process {} {} ({}, pid {})",
                m.fid,
                e.event.name().trim_start_matches("M0_CONF_HA_PROCESS_"),
                e.process_type
                    .name()
                    .trim_start_matches("M0_CONF_HA_PROCESS_")
                    .to_lowercase(),
                e.pid
            );
        }
        HaMsgData::ServiceEvent(e) => {
            let _ = write!(
                s,
                "service {} {} ({}, pid {})",
                m.fid,
                e.event.name().trim_start_matches("M0_CONF_HA_SERVICE_"),
                e.service_type.name().trim_start_matches("M0_CST_"),
                e.pid
            );
        }
        HaMsgData::RpcEvent(e) => {
            let _ = write!(
                s,
                "rpc to {} {} after {} attempts",
                m.fid,
                e.state.name().trim_start_matches("M0_NC_"),
                e.attempts
            );
        }
        HaMsgData::BeIoErr(e) => {
            let _ = write!(
                s,
                "BE I/O error {} at {} opcode {}",
                e.errcode,
                e.location.name().trim_start_matches("M0_BE_LOC_"),
                e.opcode
            );
        }
        HaMsgData::SnsErr(e) => {
            let _ = write!(s, "SNS error {} in {}", e.errcode, e.opcode.name());
        }
    }
    s
}

/// `CONSUME link 3, quorum 1, confds [0x73…:0x1 at inet:…], rm 0x73…:0x2 at inet:…`
pub fn ep_rep(r: &EpRep) -> String {
    let mut s = String::new();
    let _ = write!(
        s,
        "{} link {}",
        match r.control {
            Control::Consume => "CONSUME",
            Control::Query => "QUERY",
        },
        r.link_id
    );
    if r.do_reconnect {
        s.push_str(" (do_reconnect)");
    }
    if r.disconnected_previously {
        s.push_str(" (disconnected_previously)");
    }
    let _ = write!(s, ", quorum {}, confds [", r.quorum);
    for (i, c) in r.confds.iter().enumerate() {
        if i > 0 {
            s.push_str(", ");
        }
        let _ = write!(s, "{} at {}", c.fid, c.ep);
    }
    let _ = write!(s, "], rm {} at {:?}", r.rm_fid, r.rm_ep);
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use hax_core::{Fid, FidType, HaState, Nvec, ProcessEvent, ProcessEventKind, ProcessType};

    #[test]
    fn reads_well() {
        let p = Fid::typed(FidType::Process, 1, 1);
        let m = HaMsg {
            fid: p,
            ..HaMsg::new(HaMsgData::ProcessEvent(ProcessEvent {
                event: ProcessEventKind::Started,
                process_type: ProcessType::M0d,
                pid: 7,
            }))
        };
        assert_eq!(
            msg(&m),
            "process 0x7200000000000001:0x1 STARTED (m0d, pid 7)"
        );
        let notes: Vec<_> = (0..8)
            .map(|k| HaNote::new(Fid::typed(FidType::Sdev, 1, k), HaState::Online))
            .collect();
        let m = HaMsg::new(HaMsgData::Nvec(Nvec {
            kind: NvecKind::Get,
            id_of_get: 100,
            ignore_same_state: false,
            notes,
        }));
        let d = msg(&m);
        assert!(
            d.starts_with("nvec GET id 100 [0x6400000000000001:0x0 ONLINE, "),
            "{d}"
        );
        assert!(d.ends_with(", … 2 more]"), "{d}");
    }
}
