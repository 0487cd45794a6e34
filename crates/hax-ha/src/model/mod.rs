//! Types shared by the daemon's parts: object health as hax reasons about it,
//! and the HA state updates that become broadcasts.

pub mod broadcast;
pub mod civil;
pub mod facts;
pub mod records;
pub mod vocab;

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

/// What the Motr side hands to the daemon's event pipeline. Each message
/// carries its [`Delivery`]: the pipeline delivers it once what the message
/// asks for is durable (written to Consul), so a message is never lost, only
/// possibly handled twice after a crash.
#[derive(Debug)]
pub enum MotrEvent {
    /// A process event (`M0_HA_MSG_EVENT_PROCESS`); `fid` is the process.
    Process {
        /// The link it came on.
        link: LinkId,
        /// The process.
        fid: Fid,
        /// The event.
        event: ProcessEvent,
        /// Deliver once handled.
        delivery: Delivery,
    },
    /// A service event (`M0_HA_MSG_EVENT_SERVICE`); `fid` is the service.
    Service {
        /// The link it came on.
        link: LinkId,
        /// The service.
        fid: Fid,
        /// Its process.
        source_process: Fid,
        /// The event.
        event: ServiceEvent,
        /// Deliver once handled.
        delivery: Delivery,
    },
    /// A failed disk I/O (`M0_HA_MSG_STOB_IOQ`); `fid` is the message's fid.
    StobIoq {
        /// The link it came on.
        link: LinkId,
        /// The message's fid.
        fid: Fid,
        /// The error.
        error: StobIoqError,
        /// Deliver once handled.
        delivery: Delivery,
    },
    /// States a process reports (`M0_HA_MSG_NVEC` SET).
    NvecSet {
        /// The link it came on.
        link: LinkId,
        /// The notes.
        notes: Vec<HaNote>,
        /// Deliver once handled.
        delivery: Delivery,
    },
    /// A first entrypoint request from a process other than hax: a restart
    /// must be noticed (and the old incarnation declared failed) before the
    /// reply, which is `reply` once that is done.
    FirstRequest {
        /// The request.
        req: EntrypointRequest,
        /// The reply the configuration snapshot gives.
        reply: EntrypointReply,
        /// Answer it.
        responder: EntrypointResponder,
        /// When Motr handed the request over.
        received: std::time::Instant,
    },
}

impl MotrEvent {
    /// Gives up on the event without recording it (hax is stopping): the
    /// message is delivered, a first request is refused so that it is asked
    /// again of the next hax.
    pub fn abandon(self) {
        match self {
            MotrEvent::Process { delivery, .. }
            | MotrEvent::Service { delivery, .. }
            | MotrEvent::StobIoq { delivery, .. }
            | MotrEvent::NvecSet { delivery, .. } => delivery.deliver(),
            MotrEvent::FirstRequest { responder, .. } => {
                if let Some(rc) = std::num::NonZeroI32::new(hax_core::EAGAIN) {
                    responder.refuse(rc);
                }
            }
        }
    }
}

pub use hax_core::{
    Delivery, EntrypointReply, EntrypointRequest, EntrypointResponder, HaNote, LinkId,
    ProcessEvent, ServiceEvent, StobIoqError,
};
