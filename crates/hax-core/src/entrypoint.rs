//! Entrypoint requests and replies, and what hax knows of a link.

use crate::fid::{Fid, Uint128};
use crate::msg::LinkId;

/// An entrypoint request from a Motr process (or from hax's own Motr, whose
/// `remote_endpoint` is hax's local endpoint).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EntrypointRequest {
    /// Names the request; link callbacks of its reply carry it too.
    pub req_id: Uint128,
    /// The requester's endpoint.
    pub remote_endpoint: String,
    /// The requester's process fid.
    pub process_fid: Fid,
    /// The requester's Motr build.
    pub git_rev_id: String,
    /// The requester's pid.
    pub pid: u64,
    /// First request since the requester's HA started.
    pub first_request: bool,
}

/// One configuration server in an entrypoint reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Confd {
    /// Process fid of the confd.
    pub fid: Fid,
    /// Its endpoint.
    pub endpoint: String,
}

/// A positive entrypoint reply (`rc` 0, CONSUME).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EntrypointReply {
    /// The confd servers.
    pub confds: Vec<Confd>,
    /// How many confds must agree.
    pub quorum: u32,
    /// The active RM service.
    pub rm_fid: Fid,
    /// Its endpoint.
    pub rm_endpoint: String,
}

impl EntrypointReply {
    /// Hare's rule for the quorum: a majority of the confds.
    pub fn majority(n: usize) -> u32 {
        u32::try_from(n / 2 + 1).unwrap_or(u32::MAX)
    }
}

/// What hax knows of an HA link.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkInfo {
    /// The link.
    pub id: LinkId,
    /// The peer's endpoint.
    pub endpoint: String,
    /// The process fid of the request that made the link.
    pub process_fid: Fid,
    /// The link from hax's own Motr instance.
    pub is_self: bool,
}
