//! The RC leader: its election by hax when asked to ([`elect`]), its
//! periodic work, filesystem statistics and byte counts ([`stats`]), and the
//! stale session left by a shutdown ([`stale`]).

pub mod elect;
pub mod stale;
pub mod stats;
