//! `GET /v1/cluster/status` and `GET /v1/cluster/status/bytecount`: what
//! hare's `hare-status --json` and `--bytecount` print, which the original
//! hax ran as child processes. Here they are computed in the daemon: the
//! configuration, the recorded process states and the node checks come from
//! the cluster view; pools, profiles, byte counts and filesystem statistics
//! are read from Consul at each request.
//!
//! The shape is hare-status's:
//!
//! ```json
//! {
//!   "bytecount": {"critical": 0, "damaged": 0, "degraded": 0, "healthy": 0},
//!   "pools": [{"fid": "0x6f00000000000001:0x9", "name": "the pool"}],
//!   "profiles": [{"fid": "0x7000000000000001:0x1", "name": "default", "pools": ["the pool"]}],
//!   "filesystem": {"stats": {...}, "timestamp": 1700000000.5, "date": "..."},
//!   "nodes": [{"name": "srvnode-1", "svcs": [
//!     {"name": "hax", "fid": "0x7200000000000001:0x6", "ep": "inet:tcp:...", "status": "started"}]}]
//! }
//! ```
//!
//! Where hare-status failed (no `bytecount/` or `m0conf/pools/` keys, a
//! process without services), this answers with what there is: an empty
//! object or list, a process named `m0_client`.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use hax_consul::catalog::CheckStatus;
use hax_consul::schema::{ConfKey, FidText, PoolRecord, ProcessState, ProfileRecord};
use serde::Serialize;
use serde_json::Value;

use super::{json_response, ApiState, Failure};
use crate::view::ClusterState;

/// A process line of a node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProcessLine {
    /// `hax`, `confd`, `ioservice`, `s3server`, a client type, or
    /// `m0_client`.
    pub name: String,
    /// The process fid.
    pub fid: FidText,
    /// Its endpoint (`**ERROR**` when the configuration has none).
    pub ep: String,
    /// `started`, `offline` or `unknown`.
    pub status: &'static str,
}

/// A node and its processes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NodeLine {
    /// Node name.
    pub name: String,
    /// Its processes, by fid key.
    pub svcs: Vec<ProcessLine>,
}

/// The whole answer of `GET /v1/cluster/status`.
#[derive(Debug, Clone, PartialEq, Serialize)]
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
}

/// The answer of `GET /v1/cluster/status/bytecount`.
#[derive(Debug, Clone, PartialEq, Serialize)]
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
    const NAMES: [(&str, &str); 4] = [
        ("confd", "confd"),
        ("ha", "hax"),
        ("ios", "ioservice"),
        ("m0_client_s3", "s3server"),
    ];
    for t in service_types {
        if let Some((_, name)) = NAMES.iter().find(|(k, _)| *k == t) {
            return (*name).to_owned();
        }
        if client_types.iter().any(|c| c == t) {
            return t.to_owned();
        }
    }
    "m0_client".to_owned()
}

/// hare-status's process status: `offline` unless the node passes its node
/// check; then `started` for a process recorded STARTED or DTM_RECOVERED,
/// `unknown` when nothing is recorded, `offline` otherwise.
pub fn process_status(node_passing: bool, recorded: Option<ProcessState>) -> &'static str {
    if !node_passing {
        return "offline";
    }
    match recorded {
        Some(ProcessState::Started | ProcessState::DtmRecovered) => "started",
        Some(_) => "offline",
        None => "unknown",
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
                    let types: Vec<&str> = conf
                        .services_of_process_key(p.key())
                        .into_iter()
                        .map(|(t, _)| t)
                        .collect();
                    ProcessLine {
                        name: process_name(types, state.client_types()),
                        fid: p,
                        ep: conf
                            .endpoint_of_process_key(p.key())
                            .unwrap_or("**ERROR**")
                            .to_owned(),
                        status: process_status(
                            passing,
                            state.process_statuses().get(&p).map(|s| s.state),
                        ),
                    }
                })
                .collect();
            Some(NodeLine { name, svcs })
        })
        .collect()
}

async fn bytecount(state: &ApiState) -> Result<BTreeMap<String, Value>, Failure> {
    state
        .kv
        .bytecount_entries()
        .await
        .map_err(|e| Failure::consul(&e))
}

/// `GET /v1/cluster/status`.
pub async fn cluster_status(State(state): State<ApiState>) -> Result<Response, Failure> {
    let _slot = state.consul_slot().await?;
    let kv = &state.kv;
    let (bytecount, pools, profiles, fs) = tokio::try_join!(
        bytecount(&state),
        async { kv.pool_records().await.map_err(|e| Failure::consul(&e)) },
        async { kv.profile_records().await.map_err(|e| Failure::consul(&e)) },
        async { kv.fs_stats().await.map_err(|e| Failure::consul(&e)) },
    )?;
    let filesystem = match fs {
        Some(record) => serde_json::to_value(record).map_err(|e| {
            Failure::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "encode",
                e.to_string(),
                "Cannot encode the answer",
            )
        })?,
        None => serde_json::json!({ "stats": {} }),
    };
    let answer = ClusterStatus {
        bytecount,
        pools,
        profiles,
        filesystem,
        nodes: node_lines(&state.view.snapshot()),
    };
    Ok(json_response(StatusCode::OK, &answer))
}

/// `GET /v1/cluster/status/bytecount`.
pub async fn bytecount_status(State(state): State<ApiState>) -> Result<Response, Failure> {
    let _slot = state.consul_slot().await?;
    let answer = BytecountStatus {
        bytecount: bytecount(&state).await?,
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
        assert_eq!(process_status(true, Some(Started)), "started");
        assert_eq!(process_status(true, Some(DtmRecovered)), "started");
        assert_eq!(process_status(true, Some(Stopped)), "offline");
        assert_eq!(process_status(true, Some(Starting)), "offline");
        assert_eq!(process_status(true, None), "unknown");
        assert_eq!(process_status(false, Some(DtmRecovered)), "offline");
        assert_eq!(process_status(false, None), "offline");
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
            ("hax", "started", Sample::endpoint(Sample::HAX1))
        );
        let confd = line(&nodes, Sample::NODE1_NAME, Sample::CONFD1);
        assert_eq!((confd.name.as_str(), confd.status), ("confd", "unknown"));
        let ios = line(&nodes, Sample::NODE1_NAME, Sample::IOS1);
        assert_eq!((ios.name.as_str(), ios.status), ("ioservice", "offline"));
        // Node 2 fails its serfHealth check: all its processes are offline.
        let node2 = nodes.iter().find(|n| n.name == Sample::NODE2_NAME).unwrap();
        assert!(!node2.svcs.is_empty());
        assert!(node2.svcs.iter().all(|p| p.status == "offline"));
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
                    status: "started",
                }],
            }],
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
          "status": "started"
        }
      ]
    }
  ]
}"#;
        assert_eq!(text, expected);
    }
}
