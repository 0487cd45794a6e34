//! Service health: what Consul's health checks and the recorded process
//! states say about a Motr process, and what a Consul-detected failure
//! implies.
//!
//! * [`NodeChecks`] / [`NodeHealthMap`]: the checks of each Consul node, merged
//!   from the service-health watches the [`crate::view::ClusterView`] keeps,
//!   so that no question needs a Consul round trip.
//! * [`service_health`]: the original hax's `get_service_health` table, local
//!   and remote node.
//!
//! What a failure Consul reports implies is [`crate::inbound::failures`].

use std::collections::BTreeMap;

use hax_consul::catalog::{CheckStatus, HealthCheck, ServiceEntry};
use hax_consul::schema::ProcessState;

use crate::model::ObjHealth;

/// The Consul node check that says whether the node itself is alive.
pub const SERF_HEALTH: &str = "serfHealth";

/// The checks of one Consul node: its node checks and the checks of the
/// service instances on it that hax watches.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeChecks {
    /// Checks in the order Consul lists them (node checks first), each once.
    pub checks: Vec<HealthCheck>,
}

impl NodeChecks {
    /// The node's own status: its `serfHealth` check, or else the first check
    /// (the original reads the first entry of `/v1/health/node`, which is
    /// `serfHealth` on every hare node). `None` when there are no checks.
    pub fn node_status(&self) -> Option<CheckStatus> {
        self.checks
            .iter()
            .find(|c| c.check_id == SERF_HEALTH)
            .or_else(|| self.checks.first())
            .map(|c| c.status)
    }

    /// Status of the first check of service instance `service_id`.
    pub fn service_status(&self, service_id: &str) -> Option<CheckStatus> {
        self.checks
            .iter()
            .find(|c| c.service_id == service_id)
            .map(|c| c.status)
    }

    /// Whether the node passes its node check (`get_proc_node_health` OK).
    pub fn node_passing(&self) -> bool {
        self.node_status() == Some(CheckStatus::Passing)
    }
}

/// Checks of every Consul node seen in the service-health watches.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeHealthMap {
    nodes: BTreeMap<String, NodeChecks>,
}

impl NodeHealthMap {
    /// Merges service-health entries: every check is kept once per node (by
    /// check id), so the node checks repeated in each entry count once.
    pub fn from_entries<'a>(entries: impl IntoIterator<Item = &'a ServiceEntry>) -> Self {
        let mut nodes: BTreeMap<String, NodeChecks> = BTreeMap::new();
        for e in entries {
            let node = nodes.entry(e.node.node.clone()).or_default();
            for c in &e.checks {
                if !node.checks.iter().any(|k| k.check_id == c.check_id) {
                    node.checks.push(c.clone());
                }
            }
        }
        NodeHealthMap { nodes }
    }

    /// The checks of Consul node `name`.
    pub fn node(&self, name: &str) -> Option<&NodeChecks> {
        self.nodes.get(name)
    }

    /// The checks of the Consul node whose name, with the `:<suffix>` of
    /// container deployments removed, is `hostname`.
    pub fn node_of_host(&self, hostname: &str) -> Option<&NodeChecks> {
        self.nodes.get(hostname).or_else(|| {
            self.nodes
                .iter()
                .find(|(n, _)| n.split(':').next() == Some(hostname))
                .map(|(_, c)| c)
        })
    }

    /// Consul node names known.
    pub fn node_names(&self) -> impl Iterator<Item = &str> {
        self.nodes.keys().map(String::as_str)
    }
}

/// The original's `get_service_health(node, key)`:
///
/// * no checks for the node, or its node check not passing → OFFLINE;
/// * no check of service instance `service_id` → UNKNOWN;
/// * that check not passing → OFFLINE (the original has no answer for
///   `maintenance` and fails; it is taken as not passing here);
/// * passing → from the process state recorded in `processes/<fid>`:
///
/// | recorded | local node | remote node |
/// |---|---|---|
/// | STARTING | UNKNOWN | UNKNOWN |
/// | STOPPING | UNKNOWN | OFFLINE |
/// | STARTED | RECOVERING | RECOVERING |
/// | DTM_RECOVERED | OK | OK |
/// | STOPPED | UNKNOWN | UNKNOWN |
/// | none | UNKNOWN | UNKNOWN |
///
/// It never answers FAILED: Consul-detected failures are TRANSIENT.
pub fn service_health(
    checks: Option<&NodeChecks>,
    service_id: &str,
    recorded: Option<ProcessState>,
    local: bool,
) -> ObjHealth {
    let Some(checks) = checks.filter(|c| !c.checks.is_empty()) else {
        return ObjHealth::Offline;
    };
    if !checks.node_passing() {
        return ObjHealth::Offline;
    }
    match checks.service_status(service_id) {
        None => ObjHealth::Unknown,
        Some(CheckStatus::Passing) => match recorded {
            Some(ProcessState::Started) => ObjHealth::Recovering,
            Some(ProcessState::DtmRecovered) => ObjHealth::Ok,
            Some(ProcessState::Stopping) if !local => ObjHealth::Offline,
            Some(ProcessState::Starting | ProcessState::Stopping | ProcessState::Stopped)
            | None => ObjHealth::Unknown,
        },
        Some(_) => ObjHealth::Offline,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A health check of a watch payload.
    pub(crate) fn check(node: &str, id: &str, status: &str, service: &str) -> serde_json::Value {
        serde_json::json!({"Node": node, "CheckID": id, "Name": id, "Status": status,
                           "ServiceID": service, "ServiceName": ""})
    }

    /// An `ios` service entry of node `node` with `checks`.
    pub(crate) fn entry(node: &str, service: &str, checks: Vec<serde_json::Value>) -> ServiceEntry {
        serde_json::from_value(serde_json::json!({
            "Node": {"Node": node, "Address": "127.0.0.1"},
            "Service": {"ID": service, "Service": "ios", "Port": 0},
            "Checks": checks,
        }))
        .expect("entry")
    }

    fn checks_of(node_status: &str, svc: Option<(&str, &str)>) -> NodeChecks {
        let mut checks = vec![check("n", SERF_HEALTH, node_status, "")];
        if let Some((id, st)) = svc {
            checks.push(check("n", &format!("service:{id}"), st, id));
        }
        NodeHealthMap::from_entries(&[entry("n", "12", checks)])
            .node("n")
            .cloned()
            .expect("node")
    }

    #[test]
    fn passing_services_follow_the_recorded_state_table() {
        use ObjHealth::*;
        use ProcessState as P;
        let c = checks_of("passing", Some(("12", "passing")));
        let rows = [
            (Some(P::Starting), Unknown, Unknown),
            (Some(P::Stopping), Unknown, Offline),
            (Some(P::Started), Recovering, Recovering),
            (Some(P::DtmRecovered), Ok, Ok),
            (Some(P::Stopped), Unknown, Unknown),
            (None, Unknown, Unknown),
        ];
        for (recorded, local, remote) in rows {
            assert_eq!(
                service_health(Some(&c), "12", recorded, true),
                local,
                "{recorded:?} local"
            );
            assert_eq!(
                service_health(Some(&c), "12", recorded, false),
                remote,
                "{recorded:?} remote"
            );
        }
    }

    #[test]
    fn failing_checks_and_dead_nodes_are_offline() {
        let started = Some(ProcessState::DtmRecovered);
        for st in ["warning", "critical", "maintenance"] {
            let c = checks_of("passing", Some(("12", st)));
            assert_eq!(
                service_health(Some(&c), "12", started, true),
                ObjHealth::Offline,
                "{st}"
            );
        }
        let c = checks_of("critical", Some(("12", "passing")));
        assert_eq!(
            service_health(Some(&c), "12", started, false),
            ObjHealth::Offline
        );
        assert_eq!(
            service_health(None, "12", started, false),
            ObjHealth::Offline
        );
        assert_eq!(
            service_health(Some(&NodeChecks::default()), "12", started, false),
            ObjHealth::Offline
        );
        let c = checks_of("passing", Some(("12", "passing")));
        assert_eq!(
            service_health(Some(&c), "13", started, true),
            ObjHealth::Unknown,
            "no check of that instance"
        );
    }

    #[test]
    fn node_checks_merge_and_use_serf_health() {
        let a = entry(
            "srv:1a2b",
            "12",
            vec![
                check("srv:1a2b", SERF_HEALTH, "passing", ""),
                check("srv:1a2b", "service:12", "critical", "12"),
            ],
        );
        let b = entry(
            "srv:1a2b",
            "6",
            vec![
                check("srv:1a2b", SERF_HEALTH, "passing", ""),
                check("srv:1a2b", "service:6", "passing", "6"),
            ],
        );
        let map = NodeHealthMap::from_entries(&[a, b]);
        let n = map.node_of_host("srv").expect("container node name");
        assert_eq!(n.checks.len(), 3, "serfHealth counted once");
        assert!(n.node_passing());
        assert_eq!(n.service_status("12"), Some(CheckStatus::Critical));
        assert_eq!(n.service_status("6"), Some(CheckStatus::Passing));
        assert!(map.node_of_host("sr").is_none());
    }
}
