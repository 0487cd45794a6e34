//! HA messages (`struct m0_ha_msg`) with typed payloads.

use crate::fid::{Fid, FidType, Uint128};
use crate::state::{
    BeLocation, CmOp, HaState, ProcessEventKind, ProcessType, ServiceEventKind, ServiceType,
};

/// Most notes one NVEC or failure vector carries (`M0_HA_STATE_UPDATE_LIMIT`).
pub const NOTES_MAX: usize = 1024;

/// An HA link, as the halon interface names it. Ids are never reused while
/// one [`crate::Halon`] runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LinkId(pub u64);

/// The tag of a message on a link: unique per link and direction.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tag(pub u64);

impl std::fmt::Display for LinkId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "link#{}", self.0)
    }
}

impl std::fmt::Display for Tag {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// One HA message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HaMsg {
    /// The object the message is about (process fid for process events, service
    /// fid for service and RPC events, sdev fid for I/O errors, zero for NVEC
    /// and failure vectors).
    pub fid: Fid,
    /// Set by service events.
    pub source_process: Fid,
    /// Set by service events.
    pub source_service: Fid,
    /// Sender's timestamp, ns since the Unix epoch (may be 0).
    pub time_ns: u64,
    /// Carried opaquely.
    pub epoch: u64,
    /// The payload.
    pub data: HaMsgData,
}

impl HaMsg {
    /// A message with only a payload (fids, time and epoch zero).
    pub fn new(data: HaMsgData) -> Self {
        HaMsg {
            fid: Fid::default(),
            source_process: Fid::default(),
            source_service: Fid::default(),
            time_ns: 0,
            epoch: 0,
            data,
        }
    }

    /// An unsolicited NVEC SET (`id_of_get` 0) with `ignore_same_state` set, as
    /// hax broadcasts state changes.
    pub fn nvec_set(notes: Vec<HaNote>) -> Self {
        HaMsg::new(HaMsgData::Nvec(Nvec {
            kind: NvecKind::Set,
            id_of_get: 0,
            ignore_same_state: true,
            notes,
        }))
    }

    /// The message type number (`enum m0_ha_msg_type`).
    pub fn type_id(&self) -> u32 {
        self.data.type_id()
    }
}

/// The payload of an HA message, one variant per `m0_ha_msg_type`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HaMsgData {
    /// `M0_HA_MSG_STOB_IOQ`: a failed disk I/O.
    StobIoq(StobIoqError),
    /// `M0_HA_MSG_NVEC`: a note vector (GET or SET).
    Nvec(Nvec),
    /// `M0_HA_MSG_FAILURE_VEC_REQ`.
    FailvecReq(FailvecReq),
    /// `M0_HA_MSG_FAILURE_VEC_REP`.
    FailvecRep(FailvecRep),
    /// `M0_HA_MSG_KEEPALIVE_REQ`.
    KeepaliveReq {
        /// Request id.
        id: Uint128,
    },
    /// `M0_HA_MSG_KEEPALIVE_REP`.
    KeepaliveRep {
        /// The request's id.
        id: Uint128,
        /// Replier's counter.
        counter: u64,
    },
    /// `M0_HA_MSG_EVENT_PROCESS`.
    ProcessEvent(ProcessEvent),
    /// `M0_HA_MSG_EVENT_SERVICE`.
    ServiceEvent(ServiceEvent),
    /// `M0_HA_MSG_EVENT_RPC`.
    RpcEvent(RpcEvent),
    /// `M0_HA_MSG_BE_IO_ERR`.
    BeIoErr(BeIoErr),
    /// `M0_HA_MSG_SNS_ERR`.
    SnsErr(SnsErr),
}

impl HaMsgData {
    /// The message type number (`enum m0_ha_msg_type`).
    pub fn type_id(&self) -> u32 {
        match self {
            HaMsgData::StobIoq(_) => 1,
            HaMsgData::Nvec(_) => 2,
            HaMsgData::FailvecReq(_) => 3,
            HaMsgData::FailvecRep(_) => 4,
            HaMsgData::KeepaliveReq { .. } => 5,
            HaMsgData::KeepaliveRep { .. } => 6,
            HaMsgData::ProcessEvent(_) => 7,
            HaMsgData::ServiceEvent(_) => 8,
            HaMsgData::RpcEvent(_) => 9,
            HaMsgData::BeIoErr(_) => 10,
            HaMsgData::SnsErr(_) => 11,
        }
    }

    /// A short name for logs and metrics.
    pub fn type_name(&self) -> &'static str {
        match self {
            HaMsgData::StobIoq(_) => "stob_ioq",
            HaMsgData::Nvec(n) if n.kind == NvecKind::Get => "nvec_get",
            HaMsgData::Nvec(_) => "nvec_set",
            HaMsgData::FailvecReq(_) => "failvec_req",
            HaMsgData::FailvecRep(_) => "failvec_rep",
            HaMsgData::KeepaliveReq { .. } => "keepalive_req",
            HaMsgData::KeepaliveRep { .. } => "keepalive_rep",
            HaMsgData::ProcessEvent(_) => "event_process",
            HaMsgData::ServiceEvent(_) => "event_service",
            HaMsgData::RpcEvent(_) => "event_rpc",
            HaMsgData::BeIoErr(_) => "be_io_err",
            HaMsgData::SnsErr(_) => "sns_err",
        }
    }
}

/// One object and its state (`struct m0_ha_note`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct HaNote {
    /// The object.
    pub fid: Fid,
    /// Its state.
    pub state: HaState,
}

impl HaNote {
    /// A note.
    pub const fn new(fid: Fid, state: HaState) -> Self {
        HaNote { fid, state }
    }
}

/// Direction of a note vector.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NvecKind {
    /// States pushed to the receiver.
    Set,
    /// States asked for; answered by a SET with the same `id_of_get`.
    Get,
}

/// `struct m0_ha_msg_nvec`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Nvec {
    /// SET or GET.
    pub kind: NvecKind,
    /// Non-zero in a GET and in the SET that answers it.
    pub id_of_get: u64,
    /// Receivers act only on changed states.
    pub ignore_same_state: bool,
    /// The notes, at most [`NOTES_MAX`].
    pub notes: Vec<HaNote>,
}

/// `struct m0_cookie`: opaque, echoed back unchanged.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Cookie {
    /// `co_addr`.
    pub addr: u64,
    /// `co_generation`.
    pub generation: u64,
}

/// `struct m0_ha_msg_failure_vec_req`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FailvecReq {
    /// The pool asked about.
    pub pool: Fid,
    /// To be echoed in the reply.
    pub cookie: Cookie,
}

/// `struct m0_ha_msg_failure_vec_rep`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FailvecRep {
    /// The pool.
    pub pool: Fid,
    /// The request's cookie.
    pub cookie: Cookie,
    /// Failed devices, at most [`NOTES_MAX`].
    pub notes: Vec<HaNote>,
}

/// `struct m0_conf_ha_process`, with the message's fid being the process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProcessEvent {
    /// What happened.
    pub event: ProcessEventKind,
    /// What kind of process.
    pub process_type: ProcessType,
    /// Its pid.
    pub pid: u64,
}

/// `struct m0_conf_ha_service`, with the message's fid being the service.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServiceEvent {
    /// What happened.
    pub event: ServiceEventKind,
    /// What kind of service.
    pub service_type: ServiceType,
    /// Pid of its process.
    pub pid: u64,
}

/// `struct m0_ha_msg_rpc`: state of an RPC connection to the message's fid.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RpcEvent {
    /// Connection attempts.
    pub attempts: u64,
    /// TRANSIENT or ONLINE.
    pub state: HaState,
}

/// `struct m0_stob_ioq_error`: a failed disk I/O.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StobIoqError {
    /// The storage device (conf sdev).
    pub conf_sdev: Fid,
    /// Stob domain fid.
    pub stob_domain: Fid,
    /// Stob fid.
    pub stob_fid: Fid,
    /// File descriptor.
    pub fd: i64,
    /// `SIO_*` opcode.
    pub opcode: i64,
    /// Error code.
    pub rc: i64,
    /// Offset of the I/O.
    pub offset: u64,
    /// Size of the I/O.
    pub size: u64,
    /// Block shift.
    pub bshift: u32,
}

/// `struct m0_be_io_err`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BeIoErr {
    /// Error code.
    pub errcode: u32,
    /// Where in BE.
    pub location: BeLocation,
    /// I/O opcode.
    pub opcode: u8,
}

/// `struct m0_ha_sns_err`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SnsErr {
    /// Error code.
    pub errcode: u32,
    /// The failed operation.
    pub opcode: CmOp,
}

/// Why a message may not be sent: each is a rule whose breach makes Motr assert.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidMsg {
    /// More notes than a message carries.
    #[error("{0} notes: a message carries at most {NOTES_MAX}")]
    TooManyNotes(usize),
    /// An NVEC without notes.
    #[error("an NVEC must carry at least one note")]
    EmptyNvec,
    /// UNKNOWN is only for GET requests.
    #[error("note for {0} has state M0_NC_UNKNOWN, which a SET may not carry")]
    UnknownInSet(Fid),
    /// REPAIR and REBALANCE apply to pools, sdevs, nodes and drives only.
    #[error("note for {0}: {1} applies only to pools, sdevs, nodes and drives")]
    WrongTypeForState(Fid, HaState),
    /// A note's fid has no configuration type.
    #[error("note for {0}: not a configuration object fid")]
    NotConfFid(Fid),
    /// hax answers GETs; it does not send them.
    #[error("hax does not send NVEC GET requests")]
    GetNotAllowed,
    /// A SET answering a GET must go through the GET's reply object.
    #[error("an NVEC SET with id_of_get {0} answers a GET: use its reply object")]
    UnsolicitedReply(u64),
    /// A failure vector reply must go through the request's reply object.
    #[error("a failure vector reply answers a request: use its reply object")]
    UnsolicitedFailvec,
}

impl HaMsg {
    /// Checks the rules Motr asserts on for a message hax sends on its own
    /// initiative (not as a reply).
    pub fn validate_for_send(&self) -> Result<(), InvalidMsg> {
        match &self.data {
            HaMsgData::Nvec(n) => {
                if n.kind == NvecKind::Get {
                    return Err(InvalidMsg::GetNotAllowed);
                }
                if n.id_of_get != 0 {
                    return Err(InvalidMsg::UnsolicitedReply(n.id_of_get));
                }
                validate_set_notes(&n.notes)
            }
            HaMsgData::FailvecRep(_) => Err(InvalidMsg::UnsolicitedFailvec),
            _ => Ok(()),
        }
    }
}

/// The note rules of an NVEC SET (`note_invariant` in Motr).
pub(crate) fn validate_set_notes(notes: &[HaNote]) -> Result<(), InvalidMsg> {
    if notes.is_empty() {
        return Err(InvalidMsg::EmptyNvec);
    }
    if notes.len() > NOTES_MAX {
        return Err(InvalidMsg::TooManyNotes(notes.len()));
    }
    for n in notes {
        let kind = n.fid.kind().ok_or(InvalidMsg::NotConfFid(n.fid))?;
        match n.state {
            HaState::Unknown => return Err(InvalidMsg::UnknownInSet(n.fid)),
            HaState::Repair | HaState::Rebalance
                if !matches!(
                    kind,
                    FidType::Pool | FidType::Sdev | FidType::Node | FidType::Drive
                ) =>
            {
                return Err(InvalidMsg::WrongTypeForState(n.fid, n.state))
            }
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn note(t: FidType, state: HaState) -> HaNote {
        HaNote::new(Fid::typed(t, 1, 1), state)
    }

    #[test]
    fn set_rules() {
        assert_eq!(
            HaMsg::nvec_set(vec![note(FidType::Process, HaState::Online)]).validate_for_send(),
            Ok(())
        );
        assert_eq!(
            HaMsg::nvec_set(vec![]).validate_for_send(),
            Err(InvalidMsg::EmptyNvec)
        );
        assert!(matches!(
            HaMsg::nvec_set(vec![note(FidType::Process, HaState::Unknown)]).validate_for_send(),
            Err(InvalidMsg::UnknownInSet(_))
        ));
        assert!(matches!(
            HaMsg::nvec_set(vec![note(FidType::Process, HaState::Repair)]).validate_for_send(),
            Err(InvalidMsg::WrongTypeForState(_, HaState::Repair))
        ));
        assert_eq!(
            HaMsg::nvec_set(vec![note(FidType::Drive, HaState::Rebalance)]).validate_for_send(),
            Ok(())
        );
        assert!(matches!(
            HaMsg::nvec_set(vec![HaNote::new(Fid::new(1, 1), HaState::Online)]).validate_for_send(),
            Err(InvalidMsg::NotConfFid(_))
        ));
        let many = vec![note(FidType::Sdev, HaState::Online); NOTES_MAX + 1];
        assert_eq!(
            HaMsg::nvec_set(many).validate_for_send(),
            Err(InvalidMsg::TooManyNotes(NOTES_MAX + 1))
        );
        let mut reply = HaMsg::nvec_set(vec![note(FidType::Sdev, HaState::Online)]);
        if let HaMsgData::Nvec(n) = &mut reply.data {
            n.id_of_get = 100;
        }
        assert_eq!(
            reply.validate_for_send(),
            Err(InvalidMsg::UnsolicitedReply(100))
        );
    }
}
