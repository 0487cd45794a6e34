//! `GET /v1/cluster/fetch-fids`: what hare's `hare-fetch-fids --all
//! --use-kv-store` prints, which the original hax ran as a child process
//! (provisioning tools read it to start Motr processes). Here it is computed
//! from the configuration tree of the cluster view.
//!
//! The shape is hare-fetch-fids's: one object per `m0conf/nodes/<fid>` node,
//!
//! ```json
//! [{"name": "srvnode-1",
//!   "svcs": [{"name": "hax", "fid": "0x7200000000000001:0x0", "ep": "inet:tcp:10.0.0.1@22001"},
//!            {"name": "confd", "fid": "...", "ep": "...", "ha_ep": "...",
//!             "conf_xc": "/etc/motr/confd.xc", "uuid": "..."},
//!            {"name": "ioservice", "fid": "...", "ep": "...", "ha_ep": "...", "uuid": "...",
//!             "be_seg_path": "/dev/sdb"},
//!            {"name": "m0_client_other", "fid": "...", "ep": "...", "ha_ep": "...",
//!             "profile_fid": "0x7000000000000001:0x3e"}],
//!   "ha_ep": "inet:tcp:10.0.0.1@22001",
//!   "uuid": "..."}]
//! ```
//!
//! A service is listed for each `m0conf/nodes/<name>/processes/<key>/services/<type>`
//! key whose type is `ha` (as `hax`), `confd`, `ios` (as `ioservice`) or one
//! of `m0_client_types`, in the order Consul lists the keys. `uuid` is a
//! fresh time-based UUID per node and answer, as `uuidgen --time` gave
//! hare-fetch-fids. Where hare-fetch-fids failed (a node without an HA
//! process, a process without an endpoint), this answers `null`.

use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use hax_consul::schema::{ConfKey, ConfValue, FidText, ServiceType};
use serde::Serialize;

use super::{json_response, ApiState, Failure};
use crate::model::vocab;
use crate::view::ClusterState;

/// Where hare's mini-provisioner puts confd's configuration.
const CONF_XC: &str = "/etc/motr/confd.xc";

/// A node and its Motr services.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NodeFids {
    /// Node name.
    pub name: String,
    /// Its services, in Consul's key order.
    pub svcs: Vec<ServiceFids>,
    /// Endpoint of the node's hax (its process with an `ha` service).
    pub ha_ep: Option<String>,
    /// A fresh time-based UUID.
    pub uuid: String,
}

/// One service of a node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ServiceFids {
    /// `hax`, `confd`, `ioservice` or the client type.
    pub name: String,
    /// The fid of the process that runs it.
    pub fid: FidText,
    /// That process's endpoint.
    pub ep: Option<String>,
    /// confd, ioservice and clients: the node's `ha_ep`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ha_ep: Option<Option<String>>,
    /// confd only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub conf_xc: Option<&'static str>,
    /// confd and ioservice: the node's `uuid`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uuid: Option<String>,
    /// ioservice: its `meta_data` (the BE segment device), when set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub be_seg_path: Option<String>,
    /// Clients: the first profile.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub profile_fid: Option<Option<FidText>>,
}

/// A service key of the tree: node name, decimal process key, type.
type ServiceKey<'a> = (&'a str, u64, &'a str);

/// The answer for `state`; `uuid` makes each node's UUID.
pub fn fetch_fids(state: &ClusterState, mut uuid: impl FnMut() -> String) -> Vec<NodeFids> {
    let conf = state.conf();
    let clients = state.client_types();
    let mut services: Vec<ServiceKey<'_>> = conf
        .entries
        .keys()
        .filter_map(|k| match k {
            ConfKey::ServiceKey {
                node_name,
                process_key,
                service_type,
            } => Some((node_name.as_str(), *process_key, service_type.as_str())),
            _ => None,
        })
        .collect();
    // Consul lists keys in byte order: process 10 before process 2.
    services.sort_by_key(|(node, key, kind)| (*node, key.to_string(), *kind));
    let attr = |node: &str, key: u64, name: &str| -> Option<String> {
        conf.entries.iter().find_map(|(k, e)| match (k, &e.value) {
            (
                ConfKey::ProcessAttr {
                    node_name,
                    process_key,
                    attr,
                },
                ConfValue::Text(t),
            ) if node_name == node && *process_key == key && attr == name => Some(t.clone()),
            _ => None,
        })
    };
    let profile = conf.profiles().first().map(|(fid, _)| *fid);
    let nodes = conf.entries.keys().filter_map(|k| match k {
        ConfKey::Node { node } => conf.node_name(*node),
        _ => None,
    });
    nodes
        .map(|name| {
            let ha_ep = services
                .iter()
                .find(|(n, _, kind)| *n == name && ServiceType::Ha.is(kind))
                .and_then(|(_, key, _)| attr(name, *key, "endpoint"));
            let uuid = uuid();
            let svcs = services
                .iter()
                .filter(|(n, _, _)| *n == name)
                .filter_map(|&(_, key, kind)| {
                    let display = match kind.parse() {
                        Ok(ServiceType::Ha) => "hax",
                        Ok(ServiceType::Confd) => "confd",
                        Ok(ServiceType::Ios) => "ioservice",
                        _ if clients.iter().any(|c| c == kind) => kind,
                        _ => return None,
                    };
                    let mut svc = ServiceFids {
                        name: display.to_owned(),
                        fid: vocab::fid_text(vocab::process_fid(key)),
                        ep: attr(name, key, "endpoint"),
                        ha_ep: None,
                        conf_xc: None,
                        uuid: None,
                        be_seg_path: None,
                        profile_fid: None,
                    };
                    match display {
                        "hax" => {}
                        "confd" => {
                            svc.ha_ep = Some(ha_ep.clone());
                            svc.conf_xc = Some(CONF_XC);
                            svc.uuid = Some(uuid.clone());
                        }
                        "ioservice" => {
                            svc.ha_ep = Some(ha_ep.clone());
                            svc.uuid = Some(uuid.clone());
                            svc.be_seg_path = attr(name, key, "meta_data");
                        }
                        _ => {
                            svc.ha_ep = Some(ha_ep.clone());
                            svc.profile_fid = Some(profile);
                        }
                    }
                    Some(svc)
                })
                .collect();
            NodeFids {
                name: name.to_owned(),
                svcs,
                ha_ep,
                uuid,
            }
        })
        .collect()
}

/// A time-based (version 1) UUID, as `uuidgen --time` makes: the time in
/// 100 ns since 1582-10-15, a clock sequence and a random node id (with the
/// multicast bit set, as RFC 4122 asks of a node id that is no MAC address).
pub fn time_uuid() -> String {
    use std::collections::hash_map::RandomState;
    use std::hash::{BuildHasher, Hasher};

    // 1582-10-15 to 1970-01-01 in 100 ns.
    const GREGORIAN_OFFSET: u64 = 0x01B2_1DD2_1381_4000;
    let since_epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let ticks = GREGORIAN_OFFSET
        .wrapping_add(since_epoch.as_secs().wrapping_mul(10_000_000))
        .wrapping_add(u64::from(since_epoch.subsec_nanos() / 100));
    // std's per-process random keys: enough for a clock sequence and a
    // node id that only need to differ between hosts and calls.
    let mut h = RandomState::new().build_hasher();
    h.write_u64(ticks);
    let random = h.finish();
    let time_low = ticks & 0xFFFF_FFFF;
    let time_mid = (ticks >> 32) & 0xFFFF;
    let time_hi = ((ticks >> 48) & 0x0FFF) | 0x1000;
    let clock_seq = ((random >> 48) & 0x3FFF) | 0x8000;
    let node = (random & 0xFFFF_FFFF_FFFF) | 0x0100_0000_0000;
    format!("{time_low:08x}-{time_mid:04x}-{time_hi:04x}-{clock_seq:04x}-{node:012x}")
}

/// `GET /v1/cluster/fetch-fids`.
pub async fn cluster_fetch_fids(State(state): State<ApiState>) -> Result<Response, Failure> {
    let answer = fetch_fids(&state.view.snapshot(), time_uuid);
    Ok(json_response(StatusCode::OK, &answer))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_uuids_are_version_1_and_differ() {
        let a = time_uuid();
        let b = time_uuid();
        assert_ne!(a, b);
        let parts: Vec<&str> = a.split('-').collect();
        assert_eq!(
            parts.iter().map(|p| p.len()).collect::<Vec<_>>(),
            [8, 4, 4, 4, 12]
        );
        assert!(parts[2].starts_with('1'), "version 1: {a}");
        assert!(
            matches!(parts[3].as_bytes()[0], b'8' | b'9' | b'a' | b'b'),
            "RFC 4122 variant: {a}"
        );
    }
}
