//! What the view follows in Consul ([`Sources`]: the configuration tree, the
//! process states, the service health, the Consul nodes, the leader and the
//! node of its session, the confd services and the client types) and how
//! each is read into [`ViewData`].

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use hax_consul::catalog::{CatalogService, ServiceEntry};
use hax_consul::schema::{keys, ConfEntry, ConfKey, ConfTree, FidText, ProcessStatus};
use hax_consul::{ConsulClient, KvPair};
use hax_core::Fid;

use super::conf_reader::ConfReader;
use super::health::NodeHealthMap;
use super::reported::Reported;
use super::state::{ClusterState, ConfStructure};

/// Parts of the view, for readiness reports.
pub(super) const PART_CONF: &str = keys::CONF_PREFIX;

pub(super) const PART_PROCESSES: &str = keys::PROCESSES_PREFIX;

pub(super) const PART_HEALTH: &str = "service health";

pub(super) const PART_CONSUL_NODES: &str = keys::CONSUL_NODES_PREFIX;

pub(super) const PART_LEADER: &str = keys::LEADER;

pub(super) const PART_CLIENT_TYPES: &str = keys::M0_CLIENT_TYPES;

pub(super) const PART_CONFDS: &str = "catalog service confd";

/// The latest data of each source, and hax's own writes not yet seen in it.
#[derive(Debug, Default)]
pub(super) struct Sources {
    pub(super) local_node: String,
    pub(super) hax_fid: Fid,
    pub(super) conf_reader: ConfReader,
    pub(super) processes_reported: Reported,
    pub(super) conf_snapshot: Arc<ConfTree>,
    pub(super) conf_index: u64,
    pub(super) conf_overlay: BTreeMap<ConfKey, ConfEntry>,
    pub(super) conf: Arc<ConfTree>,
    pub(super) structure: Arc<ConfStructure>,
    /// `processes/` entries with their modify indexes.
    pub(super) processes_snapshot: BTreeMap<FidText, (ProcessStatus, u64)>,
    pub(super) processes_index: u64,
    pub(super) process_overlay: BTreeMap<FidText, (ProcessStatus, Until)>,
    pub(super) processes: Arc<BTreeMap<FidText, ProcessStatus>>,
    pub(super) health_by_service: BTreeMap<String, Vec<ServiceEntry>>,
    pub(super) health: Arc<NodeHealthMap>,
    pub(super) consul_nodes: Arc<BTreeMap<String, String>>,
    pub(super) leader: Option<String>,
    /// The node of the session holding `leader`, suffix stripped.
    pub(super) leader_session_node: Option<String>,
    /// Catalog instances of the `confd` service.
    pub(super) confds: Arc<Vec<CatalogService>>,
    pub(super) client_types: Arc<Vec<String>>,
    pub(super) dynamic_fids: Arc<BTreeMap<FidText, FidText>>,
    /// Parts not loaded yet; health services are listed by name.
    pub(super) missing: BTreeSet<String>,
    pub(super) version: u64,
}

impl Sources {
    pub(super) fn state(&self) -> ClusterState {
        let mut missing: Vec<&'static str> = Vec::new();
        for m in &self.missing {
            let part = match m.as_str() {
                PART_CONF => PART_CONF,
                PART_PROCESSES => PART_PROCESSES,
                PART_CONSUL_NODES => PART_CONSUL_NODES,
                PART_LEADER => PART_LEADER,
                PART_CLIENT_TYPES => PART_CLIENT_TYPES,
                PART_CONFDS => PART_CONFDS,
                _ => PART_HEALTH,
            };
            if !missing.contains(&part) {
                missing.push(part);
            }
        }
        ClusterState {
            local_node: self.local_node.clone(),
            hax_fid: self.hax_fid,
            conf: Arc::clone(&self.conf),
            structure: Arc::clone(&self.structure),
            processes: Arc::clone(&self.processes),
            health: Arc::clone(&self.health),
            consul_nodes: Arc::clone(&self.consul_nodes),
            leader: self.leader.clone(),
            leader_session_node: self.leader_session_node.clone(),
            confds: Arc::clone(&self.confds),
            client_types: Arc::clone(&self.client_types),
            dynamic_fids: Arc::clone(&self.dynamic_fids),
            missing,
            version: self.version,
        }
    }

    /// Reads a snapshot of `m0conf/` ([`ConfReader`]) and sets it.
    pub(super) fn read_conf(&mut self, pairs: &BTreeMap<String, KvPair>, index: u64) {
        let tree = self.conf_reader.read(pairs);
        self.set_conf(tree, index);
    }

    pub(super) fn set_conf(&mut self, tree: ConfTree, index: u64) {
        self.conf_index = index;
        self.conf_overlay.retain(|_, e| e.modify_index > index);
        self.structure = Arc::new(ConfStructure::build(&tree));
        self.conf_snapshot = Arc::new(tree);
        self.merge_conf();
    }

    pub(super) fn merge_conf(&mut self) {
        self.conf = if self.conf_overlay.is_empty() {
            Arc::clone(&self.conf_snapshot)
        } else {
            let mut t = (*self.conf_snapshot).clone();
            for (k, e) in &self.conf_overlay {
                // Overlay only what exists: a key deleted since is gone.
                if t.entries.contains_key(k) {
                    t.entries.insert(k.clone(), e.clone());
                }
            }
            Arc::new(t)
        };
    }

    /// Reads a snapshot of `processes/` and sets it; an entry hax cannot use
    /// is left out and reported once.
    pub(super) fn read_processes(&mut self, pairs: &BTreeMap<String, KvPair>, index: u64) {
        let (map, bad) = parse_processes(pairs);
        for (key, _, error) in self.processes_reported.update(bad) {
            tracing::warn!(%key, %error, "process state ignored");
        }
        self.set_processes(map, index);
    }

    pub(super) fn set_processes(
        &mut self,
        map: BTreeMap<FidText, (ProcessStatus, u64)>,
        index: u64,
    ) {
        self.processes_index = index;
        self.process_overlay.retain(|fid, (_, until)| {
            let entry = map.get(fid).map(|(_, i)| *i);
            !until.caught_up(index, entry)
        });
        self.processes_snapshot = map;
        self.merge_processes();
    }

    pub(super) fn merge_processes(&mut self) {
        let mut m: BTreeMap<FidText, ProcessStatus> = self
            .processes_snapshot
            .iter()
            .map(|(f, (s, _))| (*f, *s))
            .collect();
        for (f, (s, _)) in &self.process_overlay {
            m.insert(*f, *s);
        }
        self.processes = Arc::new(m);
    }

    pub(super) fn set_health(&mut self, service: &str, entries: Vec<ServiceEntry>) {
        self.health_by_service.insert(service.to_owned(), entries);
        self.health = Arc::new(NodeHealthMap::from_entries(
            self.health_by_service.values().flatten(),
        ));
    }
}

/// `processes/` entries with their modify indexes.
type ProcessEntries = BTreeMap<FidText, (ProcessStatus, u64)>;

/// The entries of a `processes/` snapshot, and those left out (key, modify
/// index, why).
pub(super) fn parse_processes(
    pairs: &BTreeMap<String, KvPair>,
) -> (ProcessEntries, Vec<(&str, u64, String)>) {
    let mut map = BTreeMap::new();
    let mut bad = Vec::new();
    for p in pairs.values() {
        let Some(fid) = p
            .key
            .strip_prefix(keys::PROCESSES_PREFIX)
            .and_then(|t| FidText::parse(t).ok())
        else {
            bad.push((p.key.as_str(), p.modify_index, "not a fid".to_owned()));
            continue;
        };
        match serde_json::from_slice::<ProcessStatus>(&p.value) {
            Ok(s) => {
                map.insert(fid, (s, p.modify_index));
            }
            Err(e) => bad.push((p.key.as_str(), p.modify_index, e.to_string())),
        }
    }
    (map, bad)
}

pub(super) fn parse_consul_nodes(pairs: &BTreeMap<String, KvPair>) -> BTreeMap<String, String> {
    pairs
        .values()
        .filter_map(|p| {
            let host = p.key.strip_prefix(keys::CONSUL_NODES_PREFIX)?;
            let node = std::str::from_utf8(&p.value).ok()?.trim();
            (!host.is_empty() && !node.is_empty()).then(|| (host.to_owned(), node.to_owned()))
        })
        .collect()
}

/// The leader's node name: none while the key is empty or holds an
/// `elect<N>` placeholder.
pub(super) fn parse_leader(pair: Option<&KvPair>) -> Option<String> {
    let text = std::str::from_utf8(&pair?.value).ok()?.trim();
    let placeholder = text
        .strip_prefix("elect")
        .is_some_and(|d| !d.is_empty() && d.bytes().all(|c| c.is_ascii_digit()));
    (!text.is_empty() && !placeholder).then(|| text.to_owned())
}

pub(super) fn parse_client_types(pair: Option<&KvPair>) -> Vec<String> {
    let Some(p) = pair else {
        return Vec::new();
    };
    serde_json::from_slice(&p.value).unwrap_or_else(|e| {
        tracing::warn!(error = %e, "m0_client_types ignored");
        Vec::new()
    })
}

/// Top-level `<base fid>` keys, whose values (JSON strings) are full fids.
pub(super) async fn load_dynamic_fids(
    client: &ConsulClient,
) -> Result<BTreeMap<FidText, FidText>, hax_consul::ConsulError> {
    let mut out = BTreeMap::new();
    let listed = client
        .kv_keys(keys::DYNAMIC_FIDS_PREFIX, Some("/"))
        .await?
        .value;
    for key in listed {
        let Ok(base) = FidText::parse(&key) else {
            continue;
        };
        if let Some(p) = client.kv_get(&key).await?.value {
            match serde_json::from_slice::<FidText>(&p.value) {
                Ok(full) => {
                    out.insert(base, full);
                }
                Err(e) => tracing::warn!(%key, error = %e, "dynamic fid ignored"),
            }
        }
    }
    Ok(out)
}

/// How long an overlay of hax's own write stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Until {
    /// The write's modify index is known: until a snapshot that new.
    Index(u64),
    /// Written through a path that does not report the index: until the
    /// entry changes from the version seen when the write was recorded (the
    /// write itself, or a later one), or disappears after having existed.
    EntryNewerThan(u64),
}

impl Until {
    pub(super) fn caught_up(self, snapshot_index: u64, entry_index: Option<u64>) -> bool {
        match self {
            Until::Index(w) => snapshot_index >= w,
            Until::EntryNewerThan(base) => match entry_index {
                Some(i) => i > base,
                None => base > 0,
            },
        }
    }
}
