//! What the parts ask of the cluster view without depending on it: the facts
//! the pipeline needs ([`ClusterFacts`]), the states NVEC GETs are answered
//! from ([`StateSource`]) and the entrypoint configuration
//! ([`EntrypointSnapshot`]).

use std::sync::Arc;

use hax_consul::schema::ProcessStatus;
use hax_core::{EntrypointReply, Fid, HaState};
use tokio::sync::watch;

/// What the pipeline needs to know of the cluster (implemented by the
/// daemon's cluster view). Answers come from memory.
pub trait ClusterFacts: Send + Sync + 'static {
    /// This hax's process fid.
    fn hax_fid(&self) -> Fid;
    /// The local node's name (as in `<node>/process_restarts/...`).
    fn local_node(&self) -> String;
    /// Whether the process is a confd (in the `confd` catalog service).
    fn is_confd(&self, process: Fid) -> bool;
    /// Whether the process is a Motr client (one of its services has a type
    /// listed in `m0_client_types`).
    fn is_client(&self, process: Fid) -> bool;
    /// Whether the process runs on this node.
    fn is_local(&self, process: Fid) -> bool;
    /// The drive fid of the sdev with path `device` on node `node`.
    fn drive_of_device(&self, node: &str, device: &str) -> Option<Fid>;
    /// Records a process status just written (the in-memory status map).
    fn record_process_status(&self, _process: Fid, _status: ProcessStatus) {}
}

/// The configuration an entrypoint reply is made of; `None` until known.
pub type EntrypointSnapshot = watch::Receiver<Option<Arc<EntrypointReply>>>;

/// Answers NVEC GETs from memory.
pub trait StateSource: Send + Sync + 'static {
    /// The state of one object, as hax knows it now.
    fn nvec_state(&self, fid: Fid) -> HaState;
}
