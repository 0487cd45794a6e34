//! What Consul sends hax: the broadcast queue, consumed by every node
//! ([`bq`]) and trimmed by the RC leader ([`bq_trim`]).

pub mod bq;
pub mod bq_trim;
pub mod failures;
pub mod watches;
