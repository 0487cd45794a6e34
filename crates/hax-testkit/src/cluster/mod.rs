//! A multi-node cluster on loopback for tests and benchmarks
//! ([`ClusterBed`]): three Consul servers and one client agent per
//! simulated node ([`agents`]), the cluster's configuration as hare's cfgen
//! writes it for N nodes ([`config`]) loaded as hare's bootstrap loads it,
//! one `hax` per node bound to its node's agent, simulated `m0d` processes
//! (hax-sim) per node linked to their node's hax, a TTL check per process
//! that tests flip as hare's `check-service` would, and the RC leader
//! elected as hare elects it ([`elector`]).

pub mod agents;
pub mod bed;
pub mod config;
pub mod elector;

pub use bed::{BedNode, BedSpec, ClusterBed, Election};
pub use config::{cfgen_kv, NodesSpec};

use std::process::ExitStatus;

use crate::dev_agent::DevAgentError;

/// Why the bed could not be started or driven.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BedError {
    /// An agent failed.
    #[error(transparent)]
    Agent(#[from] DevAgentError),
    /// A Consul request failed.
    #[error(transparent)]
    Consul(#[from] hax_consul::ConsulError),
    /// A simulated process failed.
    #[error(transparent)]
    Sim(#[from] hax_sim::SimError),
    /// Something did not happen in time.
    #[error("timed out waiting for {what}\n{detail}")]
    Timeout {
        /// What was awaited.
        what: String,
        /// Logs or state that tell why.
        detail: String,
    },
    /// A hax exited before it was ready.
    #[error("hax of {node} exited with {status}; log tail:\n{log}")]
    HaxExited {
        /// Its node.
        node: String,
        /// Exit status.
        status: ExitStatus,
        /// End of its log.
        log: String,
    },
    /// No such node, or it is not running.
    #[error("{0}")]
    Usage(String),
}
