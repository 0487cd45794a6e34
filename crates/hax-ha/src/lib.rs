//! What hax does, between the Motr processes linked to it (through
//! [`hax_core`]) and Consul (through [`hax_consul`]), one module per concern:
//!
//! | module | what it holds |
//! |---|---|
//! | [`model`] | the types and contracts the parts share, and the Motr ↔ KV vocabulary |
//! | [`motr`] | the Motr side: the callbacks Motr's threads call, keepalive probes, fencing of stopped processes, rconfc |
//! | [`pipeline`] | the event pipeline: what hax does with each message a process sends |
//! | [`broadcast`] | HA state broadcasts to the linked processes |
//! | [`view`] | the cluster as hax knows it: configuration, states, health, entrypoint replies, identity |
//! | [`inbound`] | what comes from Consul: watch updates, the broadcast queue and its trimming, reported failures |
//! | [`leader`] | the RC leader: its election (opt-in), its periodic work (statistics), the stale session |
//! | [`http`] | the HTTP API |
//! | [`metrics`] | the daemon's counters and their collectors for one `prometheus-client` registry |

//!
//! A daemon (`hax-bin`) wires them together; nothing here owns global state
//! or ends the process.
#![forbid(unsafe_code)]

pub mod broadcast;
pub mod http;
pub mod inbound;
pub mod leader;
pub mod metrics;
pub mod model;
pub mod motr;
pub mod pipeline;
pub mod view;
