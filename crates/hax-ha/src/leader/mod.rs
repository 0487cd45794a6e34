//! The RC leader's periodic work: filesystem statistics and byte counts
//! ([`stats`]).

pub mod stats;
