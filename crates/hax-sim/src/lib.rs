//! Simulated `m0d` processes that speak the emulator's peer protocol
//! (`docs/emulator-protocol.md`) to hax.
//!
//! - [`wire`]: the frames of the protocol, both directions, with strict checks.
//! - [`endpoint`]: Motr endpoint strings and the sockets they name.
//! - [`process`]: [`SimProcess`], one simulated `m0d`.
//! - [`describe`]: one-line descriptions of messages and replies.
//! - [`cluster`]: [`SimCluster`], N of them connected at once.
//!
//! The binary `m0d-sim` drives a cluster from the command line.

#![forbid(unsafe_code)]

pub mod cluster;
pub mod describe;
pub mod endpoint;
pub mod process;
pub mod wire;

pub use cluster::SimCluster;
pub use endpoint::{Endpoint, EndpointError};
pub use process::{
    check_get_reply, Delivery, Entrypoint, LinkOutcome, LinkState, NvecReplyError, Received,
    SimConfig, SimError, SimEvent, SimEventKind, SimProcess, SimStats, Violation, FIRST_GET_ID,
};
pub use wire::{Confd, Control, EpRep, EpReq, HaxFrame, PeerFrame, WireError};
