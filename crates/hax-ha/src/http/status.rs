//! `GET /v1/cluster/status` and `GET /v1/cluster/status/bytecount`: what
//! hare's `hare-status --json` and `--bytecount` print, which the original
//! hax ran as child processes. Here they are computed in the daemon: the
//! configuration, the recorded process states, the node checks and the RC
//! leader come from the cluster view; pools, profiles, byte counts,
//! filesystem statistics and the broadcast queue's offsets are read from
//! Consul at each request; the links from Motr's halon interface.
//!
//! The keys of hare-status come first, in its order; hax adds what an
//! operator of hax needs besides (`leader`, `bq`, `links`, and each
//! process's recorded `state`), which readers of hare-status's keys
//! ignore:
//!
//! ```json
//! {
//!   "bytecount": {"critical": 0, "damaged": 0, "degraded": 0, "healthy": 0},
//!   "pools": [{"fid": "0x6f00000000000001:0x9", "name": "the pool"}],
//!   "profiles": [{"fid": "0x7000000000000001:0x1", "name": "default", "pools": ["the pool"]}],
//!   "filesystem": {"stats": {...}, "timestamp": 1700000000.5, "date": "..."},
//!   "nodes": [{"name": "srvnode-1", "svcs": [
//!     {"name": "hax", "fid": "0x7200000000000001:0x6", "ep": "inet:tcp:...",
//!      "status": "started", "state": "M0_CONF_HA_PROCESS_STARTED"}]}],
//!   "leader": "srvnode-1",
//!   "bq": {"epoch": 42, "nodes": [{"node": "srvnode-1", "offset": 42, "lag": 0}]},
//!   "links": {"node": "srvnode-1", "hax": "0x7200000000000001:0x6", "links": [
//!     {"id": 1, "process": "0x7200000000000001:0x6", "name": "hax", "node": "srvnode-1",
//!      "endpoint": "inet:tcp:...", "is_self": true, "active": true}]}
//! }
//! ```
//!
//! Where hare-status failed (no `bytecount/` or `m0conf/pools/` keys, a
//! process without services), this answers with what there is: an empty
//! object or list, a process named `m0_client`. [`gather`] builds the
//! answer from any view of the cluster: `hax status --consul` uses it on a
//! view of its own, without links (`null`), which only the daemon knows.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use hax_consul::catalog::CheckStatus;
use hax_consul::schema::{
    ConfKey, FidText, HaxKv, PoolRecord, ProcessState, ProfileRecord, QueueKind, SchemaError,
    ServiceType,
};
use hax_core::{LinkId, LinkInfo};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{json_response, ApiState, Failure};
use crate::model::vocab::fid_text;
use crate::view::ClusterState;

/// hare-status's word for a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Liveness {
    /// Its node passes its node check and it is recorded STARTED or
    /// DTM_RECOVERED.
    Started,
    /// Its node fails its node check, or it is recorded in another state.
    Offline,
    /// Nothing is recorded for it.
    Unknown,
}

impl Liveness {
    /// The word, as in the JSON answer.
    pub fn as_str(self) -> &'static str {
        match self {
            Liveness::Started => "started",
            Liveness::Offline => "offline",
            Liveness::Unknown => "unknown",
        }
    }
}

/// A process line of a node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessLine {
    /// `hax`, `confd`, `ioservice`, `s3server`, a client type, or
    /// `m0_client`.
    pub name: String,
    /// The process fid.
    pub fid: FidText,
    /// Its endpoint (`**ERROR**` when the configuration has none).
    pub ep: String,
    /// hare-status's `started`, `offline` or `unknown`.
    pub status: Liveness,
    /// The state recorded in `processes/<fid>`, `null` when none is.
    #[serde(default)]
    pub state: Option<ProcessState>,
}

/// A node and its processes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeLine {
    /// Node name.
    pub name: String,
    /// Its processes, by fid key.
    pub svcs: Vec<ProcessLine>,
}

/// How far one node consumed the broadcast queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BqNode {
    /// The node (the consumer name of `bq-delivered/<node>`).
    pub node: String,
    /// The last entry it handled; `null` when it never consumed.
    pub offset: Option<u64>,
    /// Entries published after its offset; `null` when it never consumed.
    pub lag: Option<u64>,
}

/// The broadcast queue.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BqStatus {
    /// The last entry published (`epoch`); 0 before the first.
    pub epoch: u64,
    /// Every node of the configuration, then every other consumer with an
    /// offset, by name.
    pub nodes: Vec<BqNode>,
}

/// One HA link of the answering hax.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkLine {
    /// The link's number, as hax's log lines name it.
    pub id: u64,
    /// The process fid of the entrypoint request that made the link.
    pub process: FidText,
    /// What hare-status calls that process ([`process_name`]).
    pub name: String,
    /// Its node, when the configuration has the process.
    pub node: Option<String>,
    /// The peer's endpoint.
    pub endpoint: String,
    /// The link of hax's own Motr instance.
    pub is_self: bool,
    /// Whether broadcasts go to it: false once it is disconnecting or its
    /// process reported itself stopped on it.
    pub active: bool,
}

/// The links the answering hax holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldLinks {
    /// The node of that hax.
    pub node: String,
    /// Its process fid.
    pub hax: FidText,
    /// Its links, by number.
    pub links: Vec<LinkLine>,
}

/// The whole answer of `GET /v1/cluster/status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClusterStatus {
    /// `bytecount/<class>` values present.
    pub bytecount: BTreeMap<String, Value>,
    /// `m0conf/pools/`.
    pub pools: Vec<PoolRecord>,
    /// `m0conf/profiles/`.
    pub profiles: Vec<ProfileRecord>,
    /// `stats/filesystem`, or `{"stats": {}}` before the first update.
    pub filesystem: Value,
    /// Every node of the configuration.
    pub nodes: Vec<NodeLine>,
    /// The RC leader's node (`leader`); `null` while there is none.
    #[serde(default)]
    pub leader: Option<String>,
    /// The broadcast queue and each node's offset in it.
    #[serde(default)]
    pub bq: BqStatus,
    /// The links of the hax that answered; `null` when the answer was
    /// built from Consul alone.
    #[serde(default)]
    pub links: Option<HeldLinks>,
}

/// The answer of `GET /v1/cluster/status/bytecount`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BytecountStatus {
    /// `bytecount/<class>` values present.
    pub bytecount: BTreeMap<String, Value>,
}

/// What hare-status calls a process, from the types of its services: the
/// first (in key order) with a display name wins.
pub fn process_name<'a>(
    service_types: impl IntoIterator<Item = &'a str>,
    client_types: &[String],
) -> String {
    for t in service_types {
        let name = match t.parse() {
            Ok(ServiceType::Confd) => Some("confd"),
            Ok(ServiceType::Ha) => Some("hax"),
            Ok(ServiceType::Ios) => Some("ioservice"),
            // A client type hare-status knows by name.
            _ if t == "m0_client_s3" => Some("s3server"),
            _ => None,
        };
        if let Some(name) = name {
            return name.to_owned();
        }
        if client_types.iter().any(|c| c == t) {
            return t.to_owned();
        }
    }
    "m0_client".to_owned()
}

/// [`process_name`] of the process with fid key `key` in `state`.
fn name_of_process_key(state: &ClusterState, key: u64) -> String {
    let conf = state.conf();
    let types: Vec<&str> = conf
        .services_of_process_key(key)
        .into_iter()
        .map(|(t, _)| t)
        .collect();
    process_name(types, state.client_types())
}

/// hare-status's process status: `offline` unless the node passes its node
/// check; then `started` for a process recorded STARTED or DTM_RECOVERED,
/// `unknown` when nothing is recorded, `offline` otherwise.
pub fn process_status(node_passing: bool, recorded: Option<ProcessState>) -> Liveness {
    if !node_passing {
        return Liveness::Offline;
    }
    match recorded {
        Some(ProcessState::Started | ProcessState::DtmRecovered) => Liveness::Started,
        Some(_) => Liveness::Offline,
        None => Liveness::Unknown,
    }
}

/// The node lines of `state`: every `m0conf/nodes/<fid>` node with a name,
/// its processes by fid key.
pub fn node_lines(state: &ClusterState) -> Vec<NodeLine> {
    let conf = state.conf();
    conf.entries
        .keys()
        .filter_map(|k| match k {
            ConfKey::Node { node } => Some(*node),
            _ => None,
        })
        .filter_map(|node| {
            let name = conf.node_name(node)?.to_owned();
            let passing = state
                .node_checks(&name)
                .and_then(|c| c.node_status())
                .is_some_and(|s| s == CheckStatus::Passing);
            let mut procs: Vec<FidText> = conf
                .processes_of(node)
                .into_iter()
                .map(|(p, _)| p)
                .collect();
            procs.sort_by_key(|p| (p.key(), p.container()));
            let svcs = procs
                .into_iter()
                .map(|p| {
                    let recorded = state.process_statuses().get(&p).map(|s| s.state);
                    ProcessLine {
                        name: name_of_process_key(state, p.key()),
                        fid: p,
                        ep: conf
                            .endpoint_of_process_key(p.key())
                            .unwrap_or("**ERROR**")
                            .to_owned(),
                        status: process_status(passing, recorded),
                        state: recorded,
                    }
                })
                .collect();
            Some(NodeLine { name, svcs })
        })
        .collect()
}

/// The broadcast queue's lines: `nodes` first (those of the
/// configuration, in their order), then the other consumers of `offsets`.
pub fn bq_status(epoch: u64, nodes: &[NodeLine], offsets: &BTreeMap<String, u64>) -> BqStatus {
    let line = |node: &str| {
        let offset = offsets.get(node).copied();
        BqNode {
            node: node.to_owned(),
            offset,
            lag: offset.map(|o| epoch.saturating_sub(o)),
        }
    };
    let known = |name: &str| nodes.iter().any(|n| n.name == name);
    BqStatus {
        epoch,
        nodes: nodes
            .iter()
            .map(|n| line(&n.name))
            .chain(
                offsets
                    .keys()
                    .filter(|name| !known(name))
                    .map(|name| line(name)),
            )
            .collect(),
    }
}

/// The links of the hax of `state`, from the halon interface's table
/// (`links`) and the ones broadcasts use (`active`).
pub fn held_links(state: &ClusterState, links: Vec<LinkInfo>, active: &[LinkId]) -> HeldLinks {
    HeldLinks {
        node: state.local_node().to_owned(),
        hax: fid_text(state.hax_fid()),
        links: links
            .into_iter()
            .map(|l| LinkLine {
                id: l.id.0,
                process: fid_text(l.process_fid),
                name: name_of_process_key(state, l.process_fid.key),
                node: state.node_name_of_process(l.process_fid).map(str::to_owned),
                endpoint: l.endpoint,
                is_self: l.is_self,
                active: active.contains(&l.id),
            })
            .collect(),
    }
}

/// The whole status: the configuration, states and leader of `state`,
/// what the KV store holds now, and `links` as given.
pub async fn gather(
    kv: &HaxKv,
    state: &ClusterState,
    links: Option<HeldLinks>,
) -> Result<ClusterStatus, SchemaError> {
    let (bytecount, pools, profiles, fs, epoch, offsets) = tokio::try_join!(
        kv.bytecount_entries(),
        kv.pool_records(),
        kv.profile_records(),
        kv.fs_stats(),
        kv.queue_epoch(QueueKind::Broadcast),
        kv.queue_offsets(QueueKind::Broadcast),
    )?;
    let filesystem = fs
        .and_then(|record| serde_json::to_value(record).ok())
        .unwrap_or_else(|| serde_json::json!({ "stats": {} }));
    let nodes = node_lines(state);
    let bq = bq_status(epoch.unwrap_or(0), &nodes, &offsets);
    Ok(ClusterStatus {
        bytecount,
        pools,
        profiles,
        filesystem,
        nodes,
        leader: state.leader().map(str::to_owned),
        bq,
        links,
    })
}

/// `GET /v1/cluster/status`.
pub async fn cluster_status(State(state): State<ApiState>) -> Result<Response, Failure> {
    let _slot = state.consul_slot().await?;
    let snapshot = state.view.snapshot();
    let links = state
        .links
        .as_ref()
        .map(|ha| held_links(&snapshot, ha.links(), &ha.active_links()));
    let answer = gather(&state.kv, &snapshot, links)
        .await
        .map_err(|e| Failure::consul(&e))?;
    Ok(json_response(StatusCode::OK, &answer))
}

/// `GET /v1/cluster/status/bytecount`.
pub async fn bytecount_status(State(state): State<ApiState>) -> Result<Response, Failure> {
    let _slot = state.consul_slot().await?;
    let answer = BytecountStatus {
        bytecount: state
            .kv
            .bytecount_entries()
            .await
            .map_err(|e| Failure::consul(&e))?,
    };
    Ok(json_response(StatusCode::OK, &answer))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::view::sample::{self, Sample};
    use crate::view::ClusterView;
    use hax_consul::schema::{ProcessStatus, ProcessType};

    #[test]
    fn names_follow_hare_status() {
        let clients = vec!["m0_client_other".to_owned()];
        assert_eq!(process_name(["ha"], &clients), "hax");
        assert_eq!(process_name(["confd", "rms"], &clients), "confd");
        assert_eq!(process_name(["addb2", "ios", "rms"], &clients), "ioservice");
        assert_eq!(process_name(["m0_client_s3"], &clients), "s3server");
        assert_eq!(
            process_name(["m0_client_other"], &clients),
            "m0_client_other"
        );
        assert_eq!(process_name(["rms"], &clients), "m0_client");
        assert_eq!(process_name([], &clients), "m0_client");
    }

    #[test]
    fn statuses_follow_hare_status() {
        use ProcessState::*;
        let word = |passing, recorded| process_status(passing, recorded).as_str();
        assert_eq!(word(true, Some(Started)), "started");
        assert_eq!(word(true, Some(DtmRecovered)), "started");
        assert_eq!(word(true, Some(Stopped)), "offline");
        assert_eq!(word(true, Some(Starting)), "offline");
        assert_eq!(word(true, None), "unknown");
        assert_eq!(word(false, Some(DtmRecovered)), "offline");
        assert_eq!(word(false, None), "offline");
    }

    fn line<'a>(nodes: &'a [NodeLine], node: &str, fid: hax_core::Fid) -> &'a ProcessLine {
        nodes
            .iter()
            .find(|n| n.name == node)
            .and_then(|n| {
                n.svcs
                    .iter()
                    .find(|p| p.fid == crate::model::vocab::fid_text(fid))
            })
            .unwrap_or_else(|| panic!("{fid} of {node} missing"))
    }

    #[test]
    fn every_node_and_process_of_the_configuration() {
        let mut d = sample::view_data();
        d.processes.insert(
            crate::model::vocab::fid_text(Sample::IOS1),
            ProcessStatus {
                state: ProcessState::Stopped,
                kind: ProcessType::M0d,
            },
        );
        d.processes
            .remove(&crate::model::vocab::fid_text(Sample::CONFD1));
        d.health = sample::health_entries(&[], false);
        let nodes = node_lines(&ClusterView::from_data(d).snapshot());
        assert_eq!(
            nodes.iter().map(|n| n.name.as_str()).collect::<Vec<_>>(),
            [Sample::NODE1_NAME, Sample::NODE2_NAME]
        );
        let hax = line(&nodes, Sample::NODE1_NAME, Sample::HAX1);
        assert_eq!(
            (hax.name.as_str(), hax.status, hax.ep.clone()),
            ("hax", Liveness::Started, Sample::endpoint(Sample::HAX1))
        );
        let confd = line(&nodes, Sample::NODE1_NAME, Sample::CONFD1);
        assert_eq!(
            (confd.name.as_str(), confd.status, confd.state),
            ("confd", Liveness::Unknown, None)
        );
        let ios = line(&nodes, Sample::NODE1_NAME, Sample::IOS1);
        assert_eq!(
            (ios.name.as_str(), ios.status, ios.state),
            ("ioservice", Liveness::Offline, Some(ProcessState::Stopped))
        );
        // Node 2 fails its serfHealth check: all its processes are offline.
        let node2 = nodes.iter().find(|n| n.name == Sample::NODE2_NAME).unwrap();
        assert!(!node2.svcs.is_empty());
        assert!(node2.svcs.iter().all(|p| p.status == Liveness::Offline));
        for n in &nodes {
            let keys: Vec<u64> = n.svcs.iter().map(|p| p.fid.key()).collect();
            let mut sorted = keys.clone();
            sorted.sort_unstable();
            assert_eq!(keys, sorted, "processes of {} by fid key", n.name);
        }
    }

    #[test]
    fn the_answer_has_hare_status_shape() {
        let status = ClusterStatus {
            bytecount: [("healthy".to_owned(), serde_json::json!(4096))].into(),
            pools: vec![PoolRecord {
                fid: FidText::new(0x6f00_0000_0000_0001, 9),
                name: "tier1".into(),
            }],
            profiles: vec![ProfileRecord {
                fid: FidText::new(0x7000_0000_0000_0001, 1),
                name: "default".into(),
                pools: vec!["tier1".into()],
            }],
            filesystem: serde_json::json!({"stats": {}}),
            nodes: vec![NodeLine {
                name: "srvnode-1".into(),
                svcs: vec![ProcessLine {
                    name: "hax".into(),
                    fid: FidText::new(0x7200_0000_0000_0001, 6),
                    ep: "inet:tcp:10.0.0.1@22001".into(),
                    status: Liveness::Started,
                    state: Some(ProcessState::DtmRecovered),
                }],
            }],
            leader: Some("srvnode-1".into()),
            bq: BqStatus {
                epoch: 42,
                nodes: vec![BqNode {
                    node: "srvnode-1".into(),
                    offset: Some(40),
                    lag: Some(2),
                }],
            },
            links: Some(HeldLinks {
                node: "srvnode-1".into(),
                hax: FidText::new(0x7200_0000_0000_0001, 6),
                links: vec![LinkLine {
                    id: 1,
                    process: FidText::new(0x7200_0000_0000_0001, 6),
                    name: "hax".into(),
                    node: Some("srvnode-1".into()),
                    endpoint: "inet:tcp:10.0.0.1@22001".into(),
                    is_self: true,
                    active: true,
                }],
            }),
        };
        let text = serde_json::to_string_pretty(&status).unwrap();
        let expected = r#"{
  "bytecount": {
    "healthy": 4096
  },
  "pools": [
    {
      "fid": "0x6f00000000000001:0x9",
      "name": "tier1"
    }
  ],
  "profiles": [
    {
      "fid": "0x7000000000000001:0x1",
      "name": "default",
      "pools": [
        "tier1"
      ]
    }
  ],
  "filesystem": {
    "stats": {}
  },
  "nodes": [
    {
      "name": "srvnode-1",
      "svcs": [
        {
          "name": "hax",
          "fid": "0x7200000000000001:0x6",
          "ep": "inet:tcp:10.0.0.1@22001",
          "status": "started",
          "state": "M0_CONF_HA_PROCESS_DTM_RECOVERED"
        }
      ]
    }
  ],
  "leader": "srvnode-1",
  "bq": {
    "epoch": 42,
    "nodes": [
      {
        "node": "srvnode-1",
        "offset": 40,
        "lag": 2
      }
    ]
  },
  "links": {
    "node": "srvnode-1",
    "hax": "0x7200000000000001:0x6",
    "links": [
      {
        "id": 1,
        "process": "0x7200000000000001:0x6",
        "name": "hax",
        "node": "srvnode-1",
        "endpoint": "inet:tcp:10.0.0.1@22001",
        "is_self": true,
        "active": true
      }
    ]
  }
}"#;
        assert_eq!(text, expected);
        // What `hax status` reads back is what was sent.
        let back: ClusterStatus = serde_json::from_str(&text).unwrap();
        assert_eq!(back, status);
        // An answer of an older hax, without hax's own keys, still reads.
        let mut old: Value = serde_json::from_str(&text).unwrap();
        for key in ["leader", "bq", "links"] {
            old.as_object_mut().unwrap().remove(key);
        }
        let back: ClusterStatus = serde_json::from_value(old).unwrap();
        assert_eq!(
            (back.leader, back.bq, back.links),
            (None, BqStatus::default(), None)
        );
    }

    #[test]
    fn bq_lines_name_every_node_and_other_consumers() {
        let node = |name: &str| NodeLine {
            name: name.into(),
            svcs: Vec::new(),
        };
        let offsets: BTreeMap<String, u64> = [
            ("srvnode-2".to_owned(), 30),
            ("gone".to_owned(), 3),
            ("srvnode-1".to_owned(), 42),
        ]
        .into();
        let bq = bq_status(
            42,
            &[node("srvnode-1"), node("srvnode-2"), node("srvnode-3")],
            &offsets,
        );
        let lines: Vec<(&str, Option<u64>, Option<u64>)> = bq
            .nodes
            .iter()
            .map(|n| (n.node.as_str(), n.offset, n.lag))
            .collect();
        assert_eq!(
            lines,
            [
                ("srvnode-1", Some(42), Some(0)),
                ("srvnode-2", Some(30), Some(12)),
                ("srvnode-3", None, None),
                ("gone", Some(3), Some(39)),
            ]
        );
        // An offset past the epoch (the queue was reset) lags by nothing.
        let bq = bq_status(5, &[node("srvnode-2")], &offsets);
        assert_eq!(bq.nodes[0].lag, Some(0));
    }

    #[test]
    fn links_are_named_from_the_configuration() {
        let state = ClusterView::from_data(sample::view_data()).snapshot();
        let stranger = hax_core::Fid::typed(hax_core::FidType::Process, 1, 0x999);
        let infos = vec![
            LinkInfo {
                id: LinkId(1),
                endpoint: Sample::endpoint(Sample::HAX1),
                process_fid: Sample::HAX1,
                is_self: true,
            },
            LinkInfo {
                id: LinkId(2),
                endpoint: Sample::endpoint(Sample::IOS1),
                process_fid: Sample::IOS1,
                is_self: false,
            },
            LinkInfo {
                id: LinkId(3),
                endpoint: "inet:tcp:10.0.0.9@1".into(),
                process_fid: stranger,
                is_self: false,
            },
        ];
        let held = held_links(&state, infos, &[LinkId(1), LinkId(3)]);
        assert_eq!(held.node, state.local_node());
        assert_eq!(held.hax, fid_text(state.hax_fid()));
        let lines: Vec<(u64, &str, Option<&str>, bool, bool)> = held
            .links
            .iter()
            .map(|l| {
                (
                    l.id,
                    l.name.as_str(),
                    l.node.as_deref(),
                    l.is_self,
                    l.active,
                )
            })
            .collect();
        assert_eq!(
            lines,
            [
                (1, "hax", Some(Sample::NODE1_NAME), true, true),
                (2, "ioservice", Some(Sample::NODE1_NAME), false, false),
                (3, "m0_client", None, false, true),
            ]
        );
        assert_eq!(held.links[1].process, fid_text(Sample::IOS1));
    }
}
