//! Test support for hax's crates, tests and benchmarks: a Consul agent of
//! the tests' own ([`dev_agent`]), clusters exactly as hare's cfgen writes
//! them and hare's bootstrap loads them ([`cfgen`]), a sample cluster loaded
//! into Consul as hare's cfgen shapes it ([`sample`]), and the view sample, a
//! two-node cluster as Consul holds it ([`view_sample`]), and a
//! multi-node cluster on loopback, with a hax per node ([`cluster`]). Not published:
//! nothing here is part of a library's API.

pub mod cfgen;
pub mod cluster;
pub mod dev_agent;
pub mod ports;
pub mod sample;
pub mod view_sample;
