//! Simulated `m0d` processes that speak the emulator's peer protocol
//! (`docs/emulator-protocol.md`) to hax.
//!
//! - [`wire`]: the frames of the protocol, both directions, with strict checks.
//! - [`endpoint`]: Motr endpoint strings and the sockets they name.

#![forbid(unsafe_code)]

pub mod endpoint;
pub mod wire;
