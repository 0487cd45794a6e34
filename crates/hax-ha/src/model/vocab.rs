//! The Motr <-> KV vocabulary: how fids, process events and types, and
//! device and node states of Motr are written in Consul, and read back.

use hax_consul::schema::{self, ConfState, FidText, NcState, ObjState, ProcessState};
use hax_core::{Fid, FidType, HaState, ProcessEventKind, ProcessType};

use crate::model::ObjHealth;

/// Health of a process after an event (the original's
/// `processEventToObjHealth`); `None` for pairs it has no entry for.
pub fn process_event_health(kind: ProcessType, event: ProcessEventKind) -> Option<ObjHealth> {
    use ProcessEventKind as E;
    use ProcessType as T;
    match (kind, event) {
        (T::M0mkfs, E::Started) => Some(ObjHealth::Ok),
        (T::M0mkfs, E::Stopped) => Some(ObjHealth::Failed),
        (T::M0d | T::Other, E::Started) => Some(ObjHealth::Recovering),
        (T::M0d | T::Other, E::DtmRecovered) => Some(ObjHealth::Ok),
        (T::M0d | T::Other, E::Stopped) => Some(ObjHealth::Failed),
        _ => None,
    }
}

/// The KV name of a process event.
pub fn process_state(event: ProcessEventKind) -> ProcessState {
    match event {
        ProcessEventKind::Starting => ProcessState::Starting,
        ProcessEventKind::Started => ProcessState::Started,
        ProcessEventKind::Stopping => ProcessState::Stopping,
        ProcessEventKind::Stopped => ProcessState::Stopped,
        ProcessEventKind::DtmRecovered => ProcessState::DtmRecovered,
    }
}

/// The KV name of a process type.
pub fn process_kind(kind: ProcessType) -> schema::ProcessType {
    match kind {
        ProcessType::Other => schema::ProcessType::Other,
        ProcessType::Kernel => schema::ProcessType::Kernel,
        ProcessType::M0mkfs => schema::ProcessType::M0mkfs,
        ProcessType::M0d => schema::ProcessType::M0d,
    }
}

/// A fid as the KV schema writes it.
pub fn fid_text(fid: Fid) -> FidText {
    FidText::new(fid.container, fid.key)
}

/// The fid of a KV fid text.
pub fn fid_of(text: FidText) -> Fid {
    Fid::new(text.container(), text.key())
}

/// The upper 32 bits of process and service keys are a dynamic part; the
/// configuration knows objects by their base fid (key with those bits clear).
const BASE_KEY_MASK: u64 = 0xffff_ffff;

/// The base fid of a process or service fid; other fids are their own base.
pub fn base_fid(fid: Fid) -> Fid {
    if fid.is(FidType::Process) || fid.is(FidType::Service) {
        Fid::new(fid.container, fid.key & BASE_KEY_MASK)
    } else {
        fid
    }
}

/// The service fid with decimal key `key` (`0x7300000000000001:<key>`).
pub fn service_fid(key: u64) -> Fid {
    Fid::typed(FidType::Service, 1, key)
}

/// Sdev fids are compared by key with the sdev container, as the original
/// rebuilds them from the key before matching.
pub(crate) fn sdev_fid(f: FidText) -> FidText {
    fid_text(Fid::typed(FidType::Sdev, 1, f.key()))
}

/// An sdev's `state` as the configuration tree holds it, in either
/// vocabulary and any case: hax writes lowercase words ([`ObjState`]),
/// cfgen writes `M0_NC_UNKNOWN`, and other writers have used `M0_NC_*`
/// names ([`NcState`]).
pub fn sdev_conf_state(word: &str) -> Option<ConfState> {
    let lower = word.to_ascii_lowercase();
    match lower.parse::<ObjState>() {
        Ok(w) => Some(ConfState::Word(w)),
        Err(_) => word.to_ascii_uppercase().parse().ok().map(ConfState::Nc),
    }
}

/// The note state of an sdev `state` word (`get_sdev_state`): `unknown`,
/// `m0_nc_unknown`, `dtm_recovering` and `online` → ONLINE, `offline` →
/// TRANSIENT, `failed` → FAILED, `repairing` → REPAIR, `repaired` →
/// REPAIRED, `rebalancing` → REBALANCE; the `M0_NC_*` names of these
/// states alike. Words the original does not know (it fails and sends no
/// answer) are ONLINE here, as an unknown state is.
pub fn sdev_note_state(word: Option<&str>) -> HaState {
    let Some(w) = word else {
        return HaState::Online;
    };
    let state = match sdev_conf_state(w) {
        Some(ConfState::Word(s)) => match s {
            ObjState::Unknown | ObjState::DtmRecovering | ObjState::Online => Some(HaState::Online),
            ObjState::Offline => Some(HaState::Transient),
            ObjState::Failed => Some(HaState::Failed),
            ObjState::Repairing => Some(HaState::Repair),
            ObjState::Repaired => Some(HaState::Repaired),
            ObjState::Rebalancing => Some(HaState::Rebalance),
            ObjState::Stopped => None,
        },
        Some(ConfState::Nc(n)) => match n {
            NcState::DtmRecovering => None,
            n => Some(nc_ha_state(n)),
        },
        None => None,
    };
    state.unwrap_or_else(|| {
        tracing::warn!(state = w, "unknown sdev state, reported ONLINE");
        HaState::Online
    })
}

/// The note state of an `M0_NC_*` state of a node, enclosure or controller:
/// the state of that name, except `M0_NC_UNKNOWN` (and a missing or unknown
/// name) → TRANSIENT.
pub fn nc_note_state(name: Option<&str>) -> HaState {
    match name.and_then(|n| n.parse::<NcState>().ok()) {
        None | Some(NcState::Unknown) => HaState::Transient,
        Some(s) => nc_ha_state(s),
    }
}

/// The Motr state of an `M0_NC_*` name.
pub fn nc_ha_state(state: NcState) -> HaState {
    match state {
        NcState::Unknown => HaState::Unknown,
        NcState::Online => HaState::Online,
        NcState::Failed => HaState::Failed,
        NcState::Transient => HaState::Transient,
        NcState::Repair => HaState::Repair,
        NcState::Repaired => HaState::Repaired,
        NcState::Rebalance => HaState::Rebalance,
        NcState::DtmRecovering => HaState::DtmRecovering,
    }
}

/// The process fid with decimal key `key` (`0x7200000000000001:<key>`).
pub fn process_fid(key: u64) -> Fid {
    Fid::typed(FidType::Process, 1, key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nc_names_are_motr_state_names() {
        for n in NcState::ALL {
            assert_eq!(nc_ha_state(n).name(), n.as_str(), "{n:?}");
            assert_eq!(HaState::from_name(n.as_str()), Some(nc_ha_state(n)));
        }
    }

    #[test]
    fn nc_states_read_as_the_original_reads_them() {
        // cfgen writes M0_NC_UNKNOWN on every node, enclosure and controller.
        assert_eq!(nc_note_state(Some("M0_NC_UNKNOWN")), HaState::Transient);
        assert_eq!(nc_note_state(None), HaState::Transient);
        assert_eq!(nc_note_state(Some("m0_nc_online")), HaState::Transient);
        assert_eq!(nc_note_state(Some("online")), HaState::Transient);
        for n in NcState::ALL.into_iter().filter(|n| *n != NcState::Unknown) {
            assert_eq!(nc_note_state(Some(n.as_str())), nc_ha_state(n), "{n:?}");
        }
    }

    #[test]
    fn sdev_states_read_in_both_vocabularies() {
        for w in ObjState::ALL {
            for text in [w.as_str().to_owned(), w.as_str().to_ascii_uppercase()] {
                assert_eq!(sdev_conf_state(&text), Some(ConfState::Word(w)), "{text}");
            }
        }
        for n in NcState::ALL {
            let want = if n == NcState::Unknown {
                // Read as the word, which means the same.
                ConfState::Word(ObjState::Unknown)
            } else {
                ConfState::Nc(n)
            };
            for text in [n.as_str().to_owned(), n.as_str().to_ascii_lowercase()] {
                assert_eq!(sdev_conf_state(&text), Some(want), "{text}");
            }
        }
        assert_eq!(sdev_conf_state("bogus"), None);
        let table = [
            ("M0_NC_UNKNOWN", HaState::Online),
            ("M0_NC_ONLINE", HaState::Online),
            ("m0_nc_transient", HaState::Transient),
            ("M0_NC_FAILED", HaState::Failed),
            ("M0_NC_REPAIR", HaState::Repair),
            ("M0_NC_REPAIRED", HaState::Repaired),
            ("M0_NC_REBALANCE", HaState::Rebalance),
            ("M0_NC_DTM_RECOVERING", HaState::Online),
            ("stopped", HaState::Online),
            ("Failed", HaState::Failed),
        ];
        for (word, want) in table {
            assert_eq!(sdev_note_state(Some(word)), want, "{word}");
        }
    }
}
