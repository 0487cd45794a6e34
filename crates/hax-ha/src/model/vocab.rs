//! The Motr <-> KV vocabulary: how fids, process events and types, and
//! device and node states of Motr are written in Consul, and read back.

use hax_consul::schema::{self, FidText, ProcessState};
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

/// The note state of an sdev `state` word (`get_sdev_state`): `unknown`,
/// `m0_nc_unknown`, `dtm_recovering` and `online` → ONLINE, `offline` →
/// TRANSIENT, `failed` → FAILED, `repairing` → REPAIR, `repaired` →
/// REPAIRED, `rebalancing` → REBALANCE. Words the original does not know
/// (it fails and sends no answer) are ONLINE here, as an unknown state is.
pub fn sdev_note_state(word: Option<&str>) -> HaState {
    let Some(w) = word else {
        return HaState::Online;
    };
    match w.to_ascii_lowercase().as_str() {
        "unknown" | "m0_nc_unknown" | "dtm_recovering" | "online" | "m0_nc_online" => {
            HaState::Online
        }
        "offline" | "m0_nc_transient" => HaState::Transient,
        "failed" | "m0_nc_failed" => HaState::Failed,
        "repairing" | "m0_nc_repair" => HaState::Repair,
        "repaired" | "m0_nc_repaired" => HaState::Repaired,
        "rebalancing" | "m0_nc_rebalance" => HaState::Rebalance,
        other => {
            tracing::warn!(state = other, "unknown sdev state, reported ONLINE");
            HaState::Online
        }
    }
}

/// The note state of an `M0_NC_*` state of a node, enclosure or controller:
/// the state of that name, except `M0_NC_UNKNOWN` (and a missing or unknown
/// name) → TRANSIENT.
pub fn nc_note_state(name: Option<&str>) -> HaState {
    match name.and_then(HaState::from_name) {
        None | Some(HaState::Unknown) => HaState::Transient,
        Some(s) => s,
    }
}

/// The process fid with decimal key `key` (`0x7200000000000001:<key>`).
pub fn process_fid(key: u64) -> Fid {
    Fid::typed(FidType::Process, 1, key)
}
