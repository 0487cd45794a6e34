//! Clusters exactly as hare's tools put them into Consul: the KV store
//! cfgen writes (`consul-kv.json`, the fixtures under `fixtures/`, described
//! in `fixtures/README.md`), imported as `hare-bootstrap` imports it, and
//! what the rest of hare's bootstrap adds: the catalog services
//! `update-consul-conf` registers from that file on each node, the
//! `consul/node/<host>` mapping of `bootstrap-node`, and the `leader` lock
//! `elect-rc-leader` takes.
//!
//! The fixtures are cfgen's own output, unedited: tests change what must be
//! local (endpoints, hax's HTTP port) with [`CfgenKv::rewrite_endpoints`]
//! and [`CfgenKv::set`] before loading.

use std::collections::BTreeMap;
use std::time::Duration;

use hax_consul::catalog::{CheckRegistration, CheckStatus, ServiceRegistration};
use hax_consul::schema::keys;
use hax_consul::session::{SessionBehavior, SessionRequest};
use hax_consul::{ConsulClient, ConsulError, KvPair, TxnOp};
use hax_core::{Fid, FidType};

/// cfgen's output for one node (`fixtures/cfgen-1node.cdf.yaml`).
pub const ONE_NODE: &str = include_str!("../fixtures/cfgen-1node.json");

/// cfgen's output for three nodes (`fixtures/cfgen-3node.cdf.yaml`).
pub const THREE_NODES: &str = include_str!("../fixtures/cfgen-3node.json");

/// Why a `consul-kv.json` could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FixtureError {
    /// Not a JSON list of `{"key", "value"}` objects.
    #[error("not a cfgen consul-kv.json: {0}")]
    Format(String),
}

/// The entries of a cfgen `consul-kv.json`, in file order, with the values
/// `hare-bootstrap` stores: `jq '.value | @base64'` turns numbers into their
/// decimal text and leaves strings (JSON documents among them) as they are.
/// cfgen repeats some keys (an endpoint per service of a process); the
/// import keeps the last.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CfgenKv {
    entries: Vec<(String, String)>,
}

/// A process as `update-consul-conf` reads it from the KV file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CfgenProcess {
    /// Decimal fid key.
    pub key: u64,
    /// Motr endpoint (`m0conf/nodes/<node>/processes/<key>/endpoint`).
    pub endpoint: String,
    /// Service types with their decimal fid keys
    /// (`m0conf/nodes/<node>/processes/<key>/services/<type>`), in key order.
    pub services: Vec<(String, u64)>,
}

impl CfgenProcess {
    /// The process fid.
    pub fn fid(&self) -> Fid {
        Fid::typed(FidType::Process, 1, self.key)
    }

    /// The fid of its service of type `stype`.
    pub fn service(&self, stype: &str) -> Option<Fid> {
        self.services
            .iter()
            .find(|(t, _)| t == stype)
            .map(|(_, k)| Fid::typed(FidType::Service, 1, *k))
    }

    /// Whether it has a service of type `stype`.
    pub fn has(&self, stype: &str) -> bool {
        self.service(stype).is_some()
    }
}

/// A node's processes, by the by-name branch cfgen writes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CfgenNode {
    /// Node (host) name.
    pub name: String,
    /// Its processes, by key.
    pub processes: Vec<CfgenProcess>,
}

impl CfgenNode {
    /// The process holding a service of type `stype` (the first, by key).
    pub fn process_with(&self, stype: &str) -> Option<&CfgenProcess> {
        self.processes.iter().find(|p| p.has(stype))
    }

    /// hax's process (service `ha`).
    pub fn hax(&self) -> Option<&CfgenProcess> {
        self.process_with("ha")
    }

    /// The confd process.
    pub fn confd(&self) -> Option<&CfgenProcess> {
        self.process_with("confd")
    }

    /// The ioservice processes.
    pub fn ioservices(&self) -> Vec<&CfgenProcess> {
        self.processes.iter().filter(|p| p.has("ios")).collect()
    }
}

impl CfgenKv {
    /// Reads a `consul-kv.json`.
    pub fn parse(text: &str) -> Result<Self, FixtureError> {
        let list: Vec<serde_json::Value> =
            serde_json::from_str(text).map_err(|e| FixtureError::Format(e.to_string()))?;
        let entries = list
            .into_iter()
            .map(|item| {
                let key = item["key"]
                    .as_str()
                    .ok_or_else(|| FixtureError::Format(format!("no key in {item}")))?;
                let value = match &item["value"] {
                    serde_json::Value::String(s) => s.clone(),
                    serde_json::Value::Null => {
                        return Err(FixtureError::Format(format!("no value in {item}")))
                    }
                    other => other.to_string(),
                };
                Ok((key.to_owned(), value))
            })
            .collect::<Result<_, _>>()?;
        Ok(CfgenKv { entries })
    }

    /// Entries given in file order (a generated configuration).
    pub fn from_entries(entries: Vec<(String, String)>) -> Self {
        CfgenKv { entries }
    }

    /// [`ONE_NODE`].
    pub fn one_node() -> Self {
        Self::parse(ONE_NODE).unwrap_or_else(|e| panic!("fixtures/cfgen-1node.json: {e}"))
    }

    /// [`THREE_NODES`].
    pub fn three_nodes() -> Self {
        Self::parse(THREE_NODES).unwrap_or_else(|e| panic!("fixtures/cfgen-3node.json: {e}"))
    }

    /// What the store holds after the import: each key once, its last value.
    pub fn imported(&self) -> BTreeMap<&str, &str> {
        self.entries
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect()
    }

    /// The value the import leaves under `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.entries
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Sets `key` to `value` (a test's change to what cfgen wrote).
    pub fn set(&mut self, key: &str, value: impl Into<String>) {
        self.entries.retain(|(k, _)| k != key);
        self.entries.push((key.to_owned(), value.into()));
    }

    /// Replaces every process endpoint: `map` is called once per distinct
    /// endpoint, so that processes sharing one keep sharing it.
    pub fn rewrite_endpoints(&mut self, mut map: impl FnMut(&str) -> String) {
        let mut done: BTreeMap<String, String> = BTreeMap::new();
        for (k, v) in &mut self.entries {
            if k.starts_with(keys::CONF_NODES_PREFIX) && k.ends_with("/endpoint") {
                let new = done
                    .entry(v.clone())
                    .or_insert_with(|| map(v.as_str()))
                    .clone();
                *v = new;
            }
        }
    }

    /// The `m0conf/` entries as a listing of the prefix returns them (key
    /// order; modify indexes in that order, from 1).
    pub fn conf_pairs(&self) -> Vec<KvPair> {
        self.imported()
            .into_iter()
            .filter(|(k, _)| k.starts_with(keys::CONF_PREFIX))
            .zip(1..)
            .map(|((k, v), i)| KvPair {
                key: k.to_owned(),
                value: v.as_bytes().to_vec(),
                flags: 0,
                create_index: i,
                modify_index: i,
                lock_index: 0,
                session: None,
            })
            .collect()
    }

    /// The nodes and their processes, read from the by-name branch
    /// (`m0conf/nodes/<name>/processes/<key>/...`) as `update-consul-conf`
    /// reads them, in the order nodes first appear in the file.
    pub fn nodes(&self) -> Vec<CfgenNode> {
        let mut order: Vec<String> = Vec::new();
        let mut procs: BTreeMap<(String, u64), CfgenProcess> = BTreeMap::new();
        for (k, v) in self.imported() {
            let Some(rest) = k.strip_prefix(keys::CONF_NODES_PREFIX) else {
                continue;
            };
            let segs: Vec<&str> = rest.split('/').collect();
            let (name, key, tail) = match segs.as_slice() {
                [name, "processes", key, tail @ ..] => match key.parse::<u64>() {
                    Ok(key) => (*name, key, tail),
                    Err(_) => continue,
                },
                _ => continue,
            };
            let p = procs
                .entry((name.to_owned(), key))
                .or_insert_with(|| CfgenProcess {
                    key,
                    endpoint: String::new(),
                    services: Vec::new(),
                });
            match tail {
                ["endpoint"] => p.endpoint = v.to_owned(),
                ["services", stype] => {
                    if let Ok(skey) = v.trim().parse() {
                        p.services.push(((*stype).to_owned(), skey));
                    }
                }
                _ => {}
            }
        }
        for (k, _) in &self.entries {
            if let Some(name) = k
                .strip_prefix(keys::CONF_NODES_PREFIX)
                .and_then(|r| r.split('/').next())
                .filter(|n| !n.starts_with("0x"))
            {
                if !order.iter().any(|o| o == name) {
                    order.push(name.to_owned());
                }
            }
        }
        order
            .into_iter()
            .map(|name| {
                let mut processes: Vec<CfgenProcess> = procs
                    .iter()
                    .filter(|((n, _), _)| *n == name)
                    .map(|(_, p)| p.clone())
                    .collect();
                for p in &mut processes {
                    p.services.sort_by_key(|(_, k)| *k);
                }
                CfgenNode { name, processes }
            })
            .collect()
    }

    /// The node named `name`.
    pub fn node(&self, name: &str) -> Option<CfgenNode> {
        self.nodes().into_iter().find(|n| n.name == name)
    }

    /// The sdevs cfgen lists under service `service`
    /// (`m0conf/nodes/<node fid>/.../services/<service>/sdevs/<sdev>`), in
    /// key order.
    pub fn sdevs_of(&self, service: Fid) -> Vec<Fid> {
        let infix = format!("/services/{}/sdevs/", fid_text(service));
        self.imported()
            .into_keys()
            .filter_map(|k| k.split_once(&infix).and_then(|(_, s)| parse_fid(s)))
            .collect()
    }

    /// The drive whose `sdev` is `sdev` (`m0conf/sites/.../drives/<drive>`).
    pub fn drive_of(&self, sdev: Fid) -> Option<Fid> {
        let sdev = fid_text(sdev);
        self.imported().into_iter().find_map(|(k, v)| {
            let (_, drive) = k.split_once("/drives/")?;
            let value: serde_json::Value = serde_json::from_str(v).ok()?;
            (value["sdev"].as_str() == Some(sdev.as_str()))
                .then(|| parse_fid(drive))
                .flatten()
        })
    }

    /// The Motr client types (`m0_client_types`).
    pub fn client_types(&self) -> Vec<String> {
        self.get(keys::M0_CLIENT_TYPES)
            .and_then(|v| serde_json::from_str(v).ok())
            .unwrap_or_default()
    }
}

fn fid_text(f: Fid) -> String {
    format!("{:#x}:{:#x}", f.container, f.key)
}

fn parse_fid(text: &str) -> Option<Fid> {
    let (a, b) = text.split_once(':')?;
    let half = |s: &str| u64::from_str_radix(s.strip_prefix("0x")?, 16).ok();
    Some(Fid::new(half(a)?, half(b)?))
}

/// Puts every entry into the store, as `consul kv import` does.
pub async fn import(client: &ConsulClient, kv: &CfgenKv) -> Result<(), ConsulError> {
    let ops: Vec<TxnOp> = kv
        .imported()
        .into_iter()
        .map(|(k, v)| TxnOp::set(k, v.as_bytes().to_vec()))
        .collect();
    for chunk in ops.chunks(64) {
        client.txn(chunk).await?;
    }
    Ok(())
}

/// The services `update-consul-conf` registers for node `node` on that
/// node's agent (`client`), with the libfabric transport: `hax`, `confd`,
/// `ios`, and each Motr client as `s3service`, with the process key as
/// service id and the endpoint split at its `@` into address and port.
/// hare's checks run `check-service`, which needs hare installed; here each
/// gets a TTL check, passing, as `check-service` would report the running
/// process. Returns the service ids.
pub async fn register_services(
    client: &ConsulClient,
    kv: &CfgenKv,
    node: &str,
) -> Result<Vec<String>, ConsulError> {
    let Some(n) = kv.node(node) else {
        return Err(ConsulError::Config(format!(
            "node {node} is not in the KV file"
        )));
    };
    let http_port = kv
        .get(&format!("ports/{node}/hax"))
        .and_then(|v| serde_json::from_str::<serde_json::Value>(v).ok())
        .and_then(|v| v["http"].as_u64())
        .unwrap_or(8008);
    let ssl: serde_json::Value = kv
        .get(keys::SSL_HAX)
        .and_then(|v| serde_json::from_str(v).ok())
        .unwrap_or_default();
    let protocol = match ssl["http_protocol"].as_str() {
        Some("https") => "https",
        _ => "http",
    };
    let clients = kv.client_types();
    let mut ids = Vec::new();
    for p in &n.processes {
        let name = if p.has("ha") {
            "hax"
        } else if p.has("confd") {
            "confd"
        } else if p.has("ios") {
            "ios"
        } else if p.services.iter().any(|(t, _)| clients.contains(t)) {
            "s3service"
        } else {
            continue;
        };
        let (address, port) = match p.endpoint.rsplit_once('@') {
            Some((a, port)) => (a.to_owned(), port.parse().unwrap_or(0)),
            None => (p.endpoint.clone(), 0),
        };
        let mut meta: BTreeMap<String, String> =
            [("transport_type".to_owned(), "libfab".to_owned())].into();
        if name == "hax" {
            meta.insert("http_port".into(), http_port.to_string());
            meta.insert("http_protocol".into(), protocol.into());
            for (m, field) in [("ssl_cert_path", "cert_path"), ("ssl_key_path", "key_path")] {
                meta.insert(m.into(), ssl[field].as_str().unwrap_or("").to_owned());
            }
        }
        let id = p.key.to_string();
        let reg = ServiceRegistration {
            id: id.clone(),
            name: name.into(),
            address,
            port,
            meta: meta.into_iter().collect(),
            checks: vec![CheckRegistration {
                check_id: Some(format!("service:{id}")),
                name: format!("{name} {id}"),
                ttl: Some("24h".into()),
                status: Some(CheckStatus::Passing),
            }],
            ..Default::default()
        };
        client.agent_service_register(&reg).await?;
        // An agent restarted on its data keeps a TTL check's status only
        // once the check has been updated.
        client
            .agent_check_update(&format!("service:{id}"), CheckStatus::Passing, "cfgen")
            .await?;
        ids.push(id);
    }
    Ok(ids)
}

/// `consul/node/<host>`: the Consul node of a host, as `bootstrap-node`
/// records it.
pub async fn map_consul_node(
    client: &ConsulClient,
    host: &str,
    consul_node: &str,
) -> Result<(), ConsulError> {
    let key = keys::consul_node(host).map_err(|e| ConsulError::Config(e.to_string()))?;
    client.kv_put(&key, consul_node).await
}

/// Makes `node` the RC leader as `elect-rc-leader` does: its agent's
/// session (`client` talks to that node's agent) locks `leader` with the
/// node name as value. Returns the session.
pub async fn elect(client: &ConsulClient, node: &str) -> Result<String, ConsulError> {
    let session = client
        .session_create(&SessionRequest {
            name: Some("leader".into()),
            lock_delay: Some(Duration::from_secs(1)),
            behavior: SessionBehavior::Release,
            ..Default::default()
        })
        .await?;
    if !client
        .kv_acquire(keys::LEADER, node.as_bytes(), &session)
        .await?
    {
        return Err(ConsulError::Config(format!(
            "the leader lock is held: {node} not elected"
        )));
    }
    Ok(session)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fixtures_read_as_update_consul_conf_reads_them() {
        let one = CfgenKv::one_node();
        assert_eq!(one.get("epoch"), Some("1"), "numbers as decimal text");
        assert_eq!(one.get("leader"), Some(""));
        assert_eq!(one.client_types(), ["m0_client_other"]);
        let nodes = one.nodes();
        assert_eq!(nodes.len(), 1);
        let n = &nodes[0];
        assert_eq!(n.name, "srvnode-1");
        let hax = n.hax().expect("hax");
        assert_eq!(
            (hax.key, hax.service("ha")),
            (0, Some(Fid::typed(FidType::Service, 1, 0)))
        );
        assert_eq!(n.confd().map(|p| p.key), Some(1));
        assert_eq!(n.ioservices().len(), 1);
        assert_eq!(n.processes.len(), 4, "hax, confd, ios, a client");

        let three = CfgenKv::three_nodes();
        let names: Vec<String> = three.nodes().into_iter().map(|n| n.name).collect();
        assert_eq!(names, ["srvnode-1", "srvnode-2", "srvnode-3"]);

        let mut moved = three.clone();
        let mut port = 30000;
        moved.rewrite_endpoints(|_| {
            port += 1;
            format!("inet:tcp:127.0.0.1@{port}")
        });
        let eps: Vec<String> = moved
            .nodes()
            .iter()
            .flat_map(|n| n.processes.iter().map(|p| p.endpoint.clone()))
            .collect();
        assert_eq!(eps.len(), 12);
        assert!(eps.iter().all(|e| e.starts_with("inet:tcp:127.0.0.1@")));
        let distinct: std::collections::BTreeSet<_> = eps.iter().collect();
        assert_eq!(distinct.len(), 12);

        let ios = one
            .node("srvnode-1")
            .and_then(|n| n.ioservices()[0].service("ios"));
        let sdevs = one.sdevs_of(ios.expect("ios service"));
        assert_eq!(
            sdevs,
            (0..4)
                .map(|k| Fid::typed(FidType::Sdev, 1, k))
                .collect::<Vec<_>>()
        );
        assert_eq!(
            one.drive_of(sdevs[3]),
            Some(Fid::typed(FidType::Drive, 1, 3))
        );
    }
}
