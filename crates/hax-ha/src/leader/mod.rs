//! The RC leader: its periodic work, filesystem statistics and byte counts
//! ([`stats`]), and the stale session left by a shutdown ([`stale`]).

pub mod stale;
pub mod stats;
