//! The cluster as the view knows it at one moment ([`ClusterState`]): the
//! configuration tree with its structure resolved ([`ConfStructure`]: which
//! node, process and service each object belongs to), process states and
//! service health, and the questions the other parts ask of it.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use hax_consul::catalog::CatalogService;
use hax_consul::schema::{
    ConfEntry, ConfKey, ConfObject, ConfTree, ConfValue, FidText, ProcessStatus, ProcessType,
    ServiceType,
};
use hax_core::{Fid, FidType, HaState};

use super::health::{NodeChecks, NodeHealthMap};
use crate::model::vocab::{
    base_fid, fid_of, fid_text, nc_note_state, sdev_fid, sdev_note_state, service_fid,
};
use crate::model::ObjHealth;

/// Lookups over the keys (and the fields that do not change at run time) of
/// a configuration tree, built once per tree.
#[derive(Debug, Default)]
pub(super) struct ConfStructure {
    pub(super) node_by_name: HashMap<String, FidText>,
    pub(super) node_name: HashMap<FidText, String>,
    /// `m0conf/nodes/<nf>/processes/<pf>` keys of each process.
    pub(super) process_keys: HashMap<FidText, Vec<ConfKey>>,
    pub(super) process_node: HashMap<FidText, FidText>,
    /// Processes holding each service (`.../services/<sf>` keys).
    pub(super) service_process: HashMap<FidText, Vec<FidText>>,
    /// Processes of a node that hold an `ios` service.
    pub(super) ios_of_node: HashMap<FidText, Vec<FidText>>,
    /// By-name branch: (service type, service key) of each process key.
    pub(super) services_by_pkey: HashMap<u64, Vec<(String, u64)>>,
    pub(super) pkey_node_name: HashMap<u64, String>,
    pub(super) endpoints: HashMap<u64, String>,
    /// Sdevs of (process, service).
    pub(super) sdevs: HashMap<(FidText, FidText), Vec<FidText>>,
    /// The sdev of a process listed first in KV order.
    pub(super) first_sdev_of_process: HashMap<FidText, (String, FidText)>,
    pub(super) sdev_keys: HashMap<FidText, Vec<ConfKey>>,
    /// Sdev of each (node, device path).
    pub(super) sdev_by_path: HashMap<(FidText, String), FidText>,
    pub(super) drive_sdev: HashMap<FidText, FidText>,
    pub(super) drive_of_sdev: HashMap<FidText, FidText>,
    pub(super) ctrl_of_sdev: HashMap<FidText, FidText>,
    pub(super) encl_of_node: HashMap<FidText, FidText>,
    pub(super) encl_keys: HashMap<FidText, Vec<ConfKey>>,
    pub(super) ctrl_keys: HashMap<FidText, Vec<ConfKey>>,
    pub(super) ctrls_of_encl: HashMap<FidText, Vec<FidText>>,
}

impl ConfStructure {
    pub(super) fn build(tree: &ConfTree) -> Self {
        let mut s = ConfStructure::default();
        for (key, entry) in &tree.entries {
            let obj = match &entry.value {
                ConfValue::Object(o) => Some(o),
                _ => None,
            };
            match key {
                ConfKey::Node { node } => {
                    if let Some(name) = obj.and_then(|o| o.name.clone()) {
                        s.node_by_name.entry(name.clone()).or_insert(*node);
                        s.node_name.insert(*node, name);
                    }
                }
                ConfKey::Process { node, process } => {
                    s.process_keys
                        .entry(*process)
                        .or_default()
                        .push(key.clone());
                    s.process_node.entry(*process).or_insert(*node);
                }
                ConfKey::Service {
                    node,
                    process,
                    service,
                } => {
                    s.service_process
                        .entry(*service)
                        .or_default()
                        .push(*process);
                    if obj
                        .and_then(|o| o.name.as_deref())
                        .is_some_and(|n| ServiceType::Ios.is(n))
                    {
                        s.ios_of_node.entry(*node).or_default().push(*process);
                    }
                }
                ConfKey::Sdev {
                    node,
                    process,
                    service,
                    sdev,
                } => {
                    if let Some(path) = obj.and_then(|o| o.path.clone()) {
                        s.sdev_by_path.entry((*node, path)).or_insert(*sdev);
                    }
                    s.sdevs.entry((*process, *service)).or_default().push(*sdev);
                    s.sdev_keys
                        .entry(sdev_fid(*sdev))
                        .or_default()
                        .push(key.clone());
                    let text = key.to_key();
                    let first = s
                        .first_sdev_of_process
                        .entry(*process)
                        .or_insert_with(|| (text.clone(), *sdev));
                    if text < first.0 {
                        *first = (text, *sdev);
                    }
                }
                ConfKey::ServiceKey {
                    node_name,
                    process_key,
                    service_type,
                } => {
                    if let ConfValue::FidKey(k) = entry.value {
                        s.services_by_pkey
                            .entry(*process_key)
                            .or_default()
                            .push((service_type.clone(), k));
                    }
                    s.pkey_node_name
                        .entry(*process_key)
                        .or_insert_with(|| node_name.clone());
                }
                ConfKey::ProcessAttr {
                    node_name,
                    process_key,
                    attr,
                } => {
                    if let (ConfValue::Text(t), "endpoint") = (&entry.value, attr.as_str()) {
                        s.endpoints.insert(*process_key, t.clone());
                    }
                    s.pkey_node_name
                        .entry(*process_key)
                        .or_insert_with(|| node_name.clone());
                }
                ConfKey::Enclosure { encl, .. } => {
                    s.encl_keys.entry(*encl).or_default().push(key.clone());
                    if let Some(node) = obj.and_then(|o| o.node) {
                        s.encl_of_node.entry(node).or_insert(*encl);
                    }
                }
                ConfKey::Controller { encl, ctrl, .. } => {
                    s.ctrl_keys.entry(*ctrl).or_default().push(key.clone());
                    let list = s.ctrls_of_encl.entry(*encl).or_default();
                    if !list.contains(ctrl) {
                        list.push(*ctrl);
                    }
                }
                ConfKey::Drive { ctrl, drive, .. } => {
                    if let Some(sdev) = obj.and_then(|o| o.sdev) {
                        let sdev = sdev_fid(sdev);
                        s.drive_sdev.insert(*drive, sdev);
                        s.drive_of_sdev.entry(sdev).or_insert(*drive);
                        s.ctrl_of_sdev.entry(sdev).or_insert(*ctrl);
                    }
                }
                _ => {}
            }
        }
        s
    }
}

/// One consistent picture of the cluster. Cheap to share (`Arc`), queried
/// synchronously, never changes: a newer picture is a new value.
#[derive(Debug)]
pub struct ClusterState {
    pub(super) local_node: String,
    pub(super) hax_fid: Fid,
    pub(super) conf: Arc<ConfTree>,
    pub(super) structure: Arc<ConfStructure>,
    pub(super) processes: Arc<BTreeMap<FidText, ProcessStatus>>,
    pub(super) health: Arc<NodeHealthMap>,
    pub(super) consul_nodes: Arc<BTreeMap<String, String>>,
    pub(super) leader: Option<String>,
    pub(super) leader_session_node: Option<String>,
    pub(super) confds: Arc<Vec<CatalogService>>,
    pub(super) client_types: Arc<Vec<String>>,
    pub(super) dynamic_fids: Arc<BTreeMap<FidText, FidText>>,
    pub(super) missing: Vec<&'static str>,
    pub(super) version: u64,
}

impl ClusterState {
    /// This node's name.
    pub fn local_node(&self) -> &str {
        &self.local_node
    }

    /// hax's process fid.
    pub fn hax_fid(&self) -> Fid {
        self.hax_fid
    }

    /// Whether every part has been read from Consul at least once.
    pub fn loaded(&self) -> bool {
        self.missing.is_empty()
    }

    /// The parts not read yet.
    pub fn missing(&self) -> &[&'static str] {
        &self.missing
    }

    /// Changes since the view was made (a new value each time).
    pub fn version(&self) -> u64 {
        self.version
    }

    /// The configuration tree (with hax's own recent writes).
    pub fn conf(&self) -> &ConfTree {
        &self.conf
    }

    /// One configuration entry.
    pub fn conf_entry(&self, key: &ConfKey) -> Option<&ConfEntry> {
        self.conf.entries.get(key)
    }

    /// The object of a configuration entry, if it holds one.
    pub fn conf_object(&self, key: &ConfKey) -> Option<&ConfObject> {
        match self.conf_entry(key).map(|e| &e.value) {
            Some(ConfValue::Object(o)) => Some(o),
            _ => None,
        }
    }

    /// The `state` of a configuration object.
    pub fn conf_state(&self, key: &ConfKey) -> Option<&str> {
        self.conf_object(key)?.state.as_deref()
    }

    /// The recorded status of a process (`processes/<base fid>`).
    pub fn process_status(&self, fid: Fid) -> Option<ProcessStatus> {
        self.processes.get(&fid_text(base_fid(fid))).copied()
    }

    /// Every recorded process status.
    pub fn process_statuses(&self) -> &BTreeMap<FidText, ProcessStatus> {
        &self.processes
    }

    /// Whether the process is recorded as an m0mkfs run.
    pub fn is_mkfs(&self, fid: Fid) -> bool {
        self.process_status(fid)
            .is_some_and(|s| s.kind == ProcessType::M0mkfs)
    }

    /// The name of the node a process belongs to.
    pub fn node_name_of_process(&self, fid: Fid) -> Option<&str> {
        let base = base_fid(fid);
        let s = &self.structure;
        s.process_node
            .get(&fid_text(base))
            .and_then(|n| s.node_name.get(n))
            .or_else(|| s.pkey_node_name.get(&base.key))
            .map(String::as_str)
    }

    /// The fid of the node named `name`.
    pub fn node_fid_by_name(&self, name: &str) -> Option<Fid> {
        self.structure.node_by_name.get(name).copied().map(fid_of)
    }

    /// The name of node `fid`.
    pub fn node_name(&self, fid: Fid) -> Option<&str> {
        self.structure
            .node_name
            .get(&fid_text(fid))
            .map(String::as_str)
    }

    /// Whether the process runs on this node.
    pub fn is_local_process(&self, fid: Fid) -> bool {
        self.node_name_of_process(fid) == Some(self.local_node.as_str())
    }

    /// The services (type, fid) of a process, from the by-name branch of the
    /// tree (`m0conf/nodes/<name>/processes/<key>/services/<type>`).
    pub fn services_of_process(&self, fid: Fid) -> Vec<(&str, Fid)> {
        self.structure
            .services_by_pkey
            .get(&base_fid(fid).key)
            .map(|v| {
                v.iter()
                    .map(|(t, k)| (t.as_str(), service_fid(*k)))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Whether the process holds a `confd` service.
    pub fn is_confd(&self, fid: Fid) -> bool {
        self.services_of_process(fid)
            .iter()
            .any(|(t, _)| ServiceType::Confd.is(t))
    }

    /// Whether the process is a Motr client (one of its service types is in
    /// `m0_client_types`).
    pub fn is_client(&self, fid: Fid) -> bool {
        self.services_of_process(fid)
            .iter()
            .any(|(t, _)| self.client_types.iter().any(|c| c == t))
    }

    /// The endpoint of a process.
    pub fn endpoint_of_process(&self, fid: Fid) -> Option<&str> {
        self.structure
            .endpoints
            .get(&base_fid(fid).key)
            .map(String::as_str)
    }

    /// The process holding a service.
    pub fn process_of_service(&self, fid: Fid) -> Option<Fid> {
        let list = self.structure.service_process.get(&fid_text(fid))?;
        if list.len() > 1 {
            tracing::warn!(service = %fid, processes = list.len(), "service listed under several processes, using the first");
        }
        list.first().copied().map(fid_of)
    }

    /// The sdevs of service `service` of process `process`.
    pub fn sdevs_of(&self, process: Fid, service: Fid) -> Vec<Fid> {
        self.structure
            .sdevs
            .get(&(fid_text(process), fid_text(service)))
            .map(|v| v.iter().copied().map(fid_of).collect())
            .unwrap_or_default()
    }

    /// The keys of an sdev (one per listing of it).
    pub fn sdev_keys(&self, sdev: Fid) -> &[ConfKey] {
        self.structure
            .sdev_keys
            .get(&sdev_fid(fid_text(sdev)))
            .map_or(&[], Vec::as_slice)
    }

    /// The drive that references an sdev.
    pub fn drive_of_sdev(&self, sdev: Fid) -> Option<Fid> {
        self.structure
            .drive_of_sdev
            .get(&sdev_fid(fid_text(sdev)))
            .copied()
            .map(fid_of)
    }

    /// The drive of the sdev with device path `path` on node `node` (BQ
    /// device state messages name drives so).
    pub fn drive_of_device(&self, node: &str, path: &str) -> Option<Fid> {
        let node = self.structure.node_by_name.get(node)?;
        let sdev = self.structure.sdev_by_path.get(&(*node, path.to_owned()))?;
        self.drive_of_sdev(fid_of(*sdev))
    }

    /// The sdev a drive references.
    pub fn sdev_of_drive(&self, drive: Fid) -> Option<Fid> {
        self.structure
            .drive_sdev
            .get(&fid_text(drive))
            .copied()
            .map(fid_of)
    }

    /// The controller of a process: that of the drive of the process's first
    /// sdev (the original's `get_ioservice_ctrl_fid`).
    pub fn ctrl_of_process(&self, process: Fid) -> Option<Fid> {
        let s = &self.structure;
        let (_, sdev) = s.first_sdev_of_process.get(&fid_text(process))?;
        s.ctrl_of_sdev.get(&sdev_fid(*sdev)).copied().map(fid_of)
    }

    /// The enclosure of a node.
    pub fn encl_of_node(&self, node: Fid) -> Option<Fid> {
        self.structure
            .encl_of_node
            .get(&fid_text(node))
            .copied()
            .map(fid_of)
    }

    /// The keys of an enclosure.
    pub fn encl_keys(&self, encl: Fid) -> &[ConfKey] {
        self.structure
            .encl_keys
            .get(&fid_text(encl))
            .map_or(&[], Vec::as_slice)
    }

    /// The controllers of an enclosure.
    pub fn ctrls_of_encl(&self, encl: Fid) -> Vec<Fid> {
        self.structure
            .ctrls_of_encl
            .get(&fid_text(encl))
            .map(|v| v.iter().copied().map(fid_of).collect())
            .unwrap_or_default()
    }

    /// The keys of a controller.
    pub fn ctrl_keys(&self, ctrl: Fid) -> &[ConfKey] {
        self.structure
            .ctrl_keys
            .get(&fid_text(ctrl))
            .map_or(&[], Vec::as_slice)
    }

    /// The keys of a process under `m0conf/nodes/<node fid>/processes/`.
    pub fn process_keys(&self, process: Fid) -> &[ConfKey] {
        self.structure
            .process_keys
            .get(&fid_text(base_fid(process)))
            .map_or(&[], Vec::as_slice)
    }

    /// The processes of a node that hold an `ios` service.
    pub fn ios_processes_of_node(&self, node: Fid) -> Vec<Fid> {
        self.structure
            .ios_of_node
            .get(&fid_text(node))
            .map(|v| v.iter().copied().map(fid_of).collect())
            .unwrap_or_default()
    }

    /// The full (dynamic) fid of a base fid; the base fid when none is known.
    pub fn full_fid(&self, base: Fid) -> Fid {
        self.dynamic_fids
            .get(&fid_text(base))
            .copied()
            .map_or(base, fid_of)
    }

    /// The checks of the Consul node of host `node`: through
    /// `consul/node/<node>` when set, else the Consul node of that name
    /// (container deployments add a `:<suffix>`).
    pub fn node_checks(&self, node: &str) -> Option<&NodeChecks> {
        match self.consul_nodes.get(node) {
            Some(consul) => self.health.node(consul),
            None => self.health.node_of_host(node),
        }
    }

    /// The health checks of every followed node.
    pub fn health(&self) -> &NodeHealthMap {
        &self.health
    }

    /// The health of process `key` (decimal fid key) of node `node`
    /// ([`super::health::service_health`], with the recorded state and whether
    /// `node` is this node).
    pub fn service_health(&self, node: &str, key: u64) -> ObjHealth {
        let recorded = self
            .process_status(crate::model::vocab::process_fid(key))
            .map(|s| s.state);
        super::health::service_health(
            self.node_checks(node),
            &key.to_string(),
            recorded,
            node == self.local_node,
        )
    }

    /// The RC leader's node name.
    pub fn leader(&self) -> Option<&str> {
        self.leader.as_deref()
    }

    /// The node of the session holding `leader` (the principal RM's node),
    /// without a container suffix; none while no session holds the key.
    pub fn leader_session_node(&self) -> Option<&str> {
        self.leader_session_node.as_deref()
    }

    /// The catalog instances of the `confd` service.
    pub fn confd_services(&self) -> &[CatalogService] {
        &self.confds
    }

    /// The key of the `rms` service of process `key`, from the by-name
    /// branch of the tree.
    pub fn rms_of_process_key(&self, key: u64) -> Option<u64> {
        self.structure
            .services_by_pkey
            .get(&key)?
            .iter()
            .find_map(|(t, k)| ServiceType::Rms.is(t).then_some(*k))
    }

    /// Whether this node is the RC leader.
    pub fn is_rc(&self) -> bool {
        self.leader.as_deref() == Some(self.local_node.as_str())
    }

    /// `m0_client_types`.
    pub fn client_types(&self) -> &[String] {
        &self.client_types
    }

    /// The state to answer an NVEC GET with (the original's
    /// `get_conf_obj_status`):
    ///
    /// * process, service (through its process): the health of the process
    ///   ([`ClusterState::service_health`]) as a note state, except that a
    ///   RECOVERING confd or hax is ONLINE (they skip DTM recovery);
    /// * sdev, drive (through its sdev): the sdev's `state`
    ///   ([`sdev_note_state`]);
    /// * node, enclosure, controller: their `M0_NC_*` state
    ///   ([`nc_note_state`]);
    /// * objects not found, and every other type: ONLINE. (The original sent
    ///   no answer at all for processes and services it could not find.)
    pub fn nvec_state(&self, fid: Fid) -> HaState {
        match fid.kind() {
            Some(FidType::Process) => self.process_note_state(fid),
            Some(FidType::Service) => match self.process_of_service(fid) {
                Some(p) => self.process_note_state(p),
                None => HaState::Online,
            },
            Some(FidType::Sdev) => self.sdev_state(fid),
            Some(FidType::Drive) => match self.sdev_of_drive(fid) {
                Some(sdev) => self.sdev_state(sdev),
                None => HaState::Online,
            },
            Some(FidType::Node) => match self.conf_entry(&ConfKey::Node {
                node: fid_text(fid),
            }) {
                Some(_) => nc_note_state(self.conf_state(&ConfKey::Node {
                    node: fid_text(fid),
                })),
                None => HaState::Online,
            },
            Some(FidType::Enclosure) => self.first_nc_state(self.encl_keys(fid)),
            Some(FidType::Controller) => self.first_nc_state(self.ctrl_keys(fid)),
            _ => HaState::Online,
        }
    }

    pub(super) fn process_note_state(&self, fid: Fid) -> HaState {
        let Some(node) = self.node_name_of_process(fid) else {
            return HaState::Online;
        };
        let health = self.service_health(node, fid.key);
        let started_early = self.is_confd(fid) || base_fid(fid) == base_fid(self.hax_fid);
        if health == ObjHealth::Recovering && started_early {
            return HaState::Online;
        }
        health.note_state()
    }

    pub(super) fn sdev_state(&self, sdev: Fid) -> HaState {
        match self.sdev_keys(sdev).first() {
            Some(k) => sdev_note_state(self.conf_state(k)),
            None => HaState::Online,
        }
    }

    pub(super) fn first_nc_state(&self, keys: &[ConfKey]) -> HaState {
        match keys.first() {
            Some(k) => nc_note_state(self.conf_state(k)),
            None => HaState::Online,
        }
    }
}
