//! Types shared by the daemon's parts: object health as hax reasons about it,
//! and the HA state updates that become broadcasts.

use hax_core::{Fid, HaState};

/// Health of a configuration object (the original hax's `ObjHealth`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ObjHealth {
    /// Working.
    Ok,
    /// Permanently failed.
    Failed,
    /// Temporarily unavailable.
    Offline,
    /// Stopped on purpose.
    Stopped,
    /// Started, recovering (DTM).
    Recovering,
    /// Under SNS repair.
    Repair,
    /// Repaired.
    Repaired,
    /// Under rebalance.
    Rebalance,
    /// Not known.
    Unknown,
}

impl ObjHealth {
    /// The HA note state a health is broadcast as.
    pub fn note_state(self) -> HaState {
        match self {
            ObjHealth::Ok => HaState::Online,
            ObjHealth::Failed => HaState::Failed,
            ObjHealth::Offline | ObjHealth::Stopped | ObjHealth::Unknown => HaState::Transient,
            ObjHealth::Recovering => HaState::DtmRecovering,
            ObjHealth::Repair => HaState::Repair,
            ObjHealth::Repaired => HaState::Repaired,
            ObjHealth::Rebalance => HaState::Rebalance,
        }
    }

    /// The health an HA note state stands for.
    pub fn from_note_state(s: HaState) -> Self {
        match s {
            HaState::Unknown => ObjHealth::Unknown,
            HaState::Online => ObjHealth::Ok,
            HaState::Failed => ObjHealth::Failed,
            HaState::Transient => ObjHealth::Offline,
            HaState::Repair => ObjHealth::Repair,
            HaState::Repaired => ObjHealth::Repaired,
            HaState::Rebalance => ObjHealth::Rebalance,
            HaState::DtmRecovering => ObjHealth::Recovering,
        }
    }
}

/// One object's new health, to be broadcast.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HaUpdate {
    /// The object.
    pub fid: Fid,
    /// Its health.
    pub health: ObjHealth,
}

impl HaUpdate {
    /// An update.
    pub fn new(fid: Fid, health: ObjHealth) -> Self {
        HaUpdate { fid, health }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_maps_to_note_states_as_the_original() {
        assert_eq!(ObjHealth::Unknown.note_state(), HaState::Transient);
        assert_eq!(ObjHealth::Stopped.note_state(), HaState::Transient);
        assert_eq!(ObjHealth::Recovering.note_state(), HaState::DtmRecovering);
        for s in HaState::ALL {
            if *s != HaState::Unknown {
                assert_eq!(ObjHealth::from_note_state(*s).note_state(), *s);
            }
        }
    }
}
