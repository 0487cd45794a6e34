//! Simulated `m0d` processes that speak the emulator's peer protocol
//! (`docs/emulator-protocol.md`) to hax.
//!
//! - [`wire`]: the frames of the protocol, both directions, with strict checks.
//! - [`endpoint`]: Motr endpoint strings and the sockets they name.
//! - [`process`]: [`SimProcess`], one simulated `m0d`.
//! - [`describe`]: one-line descriptions of messages and replies.
//! - [`cluster`]: [`SimCluster`], N of them connected at once.
//! - [`rogue`]: [`rogue::RoguePeer`], a peer that stops reading or floods.
//! - [`control`]: [`SimControl`], which shapes the emulator's model of
//!   Motr's client side (pools, SNS progress, stats, counters, faults).
//!
//! The binary `m0d-sim` drives a cluster from the command line.
//!
//! ```no_run
//! # async fn demo() -> Result<(), hax_sim::SimError> {
//! use std::time::Duration;
//! use hax_core::{Fid, FidType, ProcessEventKind};
//! use hax_sim::{SimConfig, SimProcess};
//!
//! let fid = Fid::typed(FidType::Process, 1, 1);
//! let p = SimProcess::connect(SimConfig::new("inet:tcp:127.0.0.1@22001", fid)).await?;
//! println!("confds: {:?}", p.entrypoint().map(|e| e.reply.confds));
//! let tag = p.send_process_event(ProcessEventKind::Started)?; // does not wait
//! p.wait_confirmed(tag, Duration::from_secs(5)).await?;     // hax's DELIVERED
//! p.wait_received(1, Duration::from_secs(5)).await?;        // a broadcast from hax
//! let notes = p.nvec_get(&[fid]).await?;                    // checked answer
//! # let _ = notes;
//! # Ok(()) }
//! ```

#![forbid(unsafe_code)]

pub mod cluster;
pub mod control;
pub mod describe;
pub mod endpoint;
pub mod process;
pub mod rogue;
pub mod wire;

pub use cluster::SimCluster;
pub use control::{ControlError, Model, SimControl};
pub use endpoint::{Endpoint, EndpointError};
pub use process::{
    check_get_reply, Delivery, Entrypoint, LinkOutcome, LinkState, NvecReplyError, Received,
    SimConfig, SimError, SimEvent, SimEventKind, SimProcess, SimStats, Violation, FIRST_GET_ID,
};
pub use wire::{
    ClientOp, Confd, Control, CtlOp, EpRep, EpReq, Fault, HaxFrame, PeerFrame, PoolDef, PverDef,
    WireError,
};
