//! What Consul sends hax: the watch updates, each to its handler
//! ([`watches`]); the broadcast queue, consumed by every node ([`bq`]) and
//! trimmed by the RC leader ([`bq_trim`]); and the failures Consul's health
//! checks report ([`failures`]).

pub mod bq;
pub mod bq_trim;
pub mod failures;
pub mod watches;
