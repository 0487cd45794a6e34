//! The configuration of an N-node cluster in the format hare's cfgen writes
//! (`consul-kv.json`, see `fixtures/README.md`): the same key families,
//! values and fid numbering as the fixtures, for any number of nodes. Each
//! node has hax (`ha`, `rms`), a confd process (`rms`, `confd`) and some
//! ioservices (`rms`, `ios`) with data disks; one SNS pool and its profile.
//! Left out, since hax reads none of them: the Motr clients, the extra
//! services cfgen gives an ioservice (`sns_rep`, `cas`, ...), metadata and
//! log disks, and the `last_*_fid_key` counters of objects not listed here.

use hax_core::{Fid, FidType};
use serde_json::json;

use crate::cfgen::CfgenKv;

/// The shape of the cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodesSpec {
    /// Node (host) names, in order.
    pub names: Vec<String>,
    /// ioservice processes per node.
    pub ioservices: usize,
    /// Data disks per ioservice.
    pub disks: usize,
}

impl NodesSpec {
    /// `n` nodes `srvnode-1..n`, as hare names them.
    pub fn new(n: usize, ioservices: usize, disks: usize) -> Self {
        NodesSpec {
            names: (1..=n).map(|i| format!("srvnode-{i}")).collect(),
            ioservices,
            disks,
        }
    }
}

fn text(kind: FidType, key: u64) -> String {
    let f = Fid::typed(kind, 1, key);
    format!("{:#x}:{:#x}", f.container, f.key)
}

fn state() -> String {
    py(json!({"state": "M0_NC_UNKNOWN"}))
}

/// JSON text as cfgen (Python's `json.dumps`) writes it.
fn py(value: serde_json::Value) -> String {
    hax_consul::pyjson::to_string(&value).unwrap_or_default()
}

/// Keys of one object type, numbered from 0 as cfgen numbers them.
#[derive(Default)]
struct Counter(u64);

impl Counter {
    fn next(&mut self) -> u64 {
        self.0 += 1;
        self.0 - 1
    }
}

/// A service: its type, its key, and its disks (sdev key, device path).
type Service = (&'static str, u64, Vec<(u64, String)>);

/// What cfgen writes for `spec`, with its endpoints on the data addresses
/// cfgen would use (`192.168.10.<11+i>`, hax on 22001, m0ds from 21001):
/// a bed moves them to loopback with [`CfgenKv::rewrite_endpoints`].
pub fn cfgen_kv(spec: &NodesSpec) -> CfgenKv {
    let mut out: Vec<(String, String)> = Vec::new();
    let mut put = |k: String, v: String| out.push((k, v));
    let (mut nodes, mut procs, mut svcs, mut sdevs) = (
        Counter::default(),
        Counter::default(),
        Counter::default(),
        Counter::default(),
    );
    let (mut encls, mut ctrls, mut drives) =
        (Counter::default(), Counter::default(), Counter::default());

    // Every object first, so that the counters are known for the header.
    struct Proc {
        key: u64,
        name: &'static str,
        endpoint: String,
        services: Vec<Service>,
    }
    struct Node {
        name: String,
        key: u64,
        procs: Vec<Proc>,
    }
    let mut built = Vec::new();
    for (i, name) in spec.names.iter().enumerate() {
        let addr = format!("inet:tcp:192.168.10.{}", 11 + i);
        let mut ps = vec![
            Proc {
                key: procs.next(),
                name: "hax",
                endpoint: format!("{addr}@22001"),
                services: vec![("ha", svcs.next(), vec![]), ("rms", svcs.next(), vec![])],
            },
            Proc {
                key: procs.next(),
                name: "m0_server",
                endpoint: format!("{addr}@21001"),
                services: vec![("rms", svcs.next(), vec![]), ("confd", svcs.next(), vec![])],
            },
        ];
        for j in 0..spec.ioservices {
            let key = procs.next();
            let rms = svcs.next();
            let ios = svcs.next();
            let disks = (0..spec.disks)
                .map(|d| (sdevs.next(), format!("/dev/sd{}", disk_letter(d))))
                .collect();
            ps.push(Proc {
                key,
                name: "m0_server",
                endpoint: format!("{addr}@{}", 21002 + j),
                services: vec![("rms", rms, vec![]), ("ios", ios, disks)],
            });
        }
        built.push(Node {
            name: name.clone(),
            key: nodes.next(),
            procs: ps,
        });
    }

    for k in ["epoch", "eq-epoch"] {
        put(k.into(), "1".into());
    }
    put("leader".into(), String::new());
    for (kind, n) in [
        ("node", nodes.0),
        ("process", procs.0),
        ("service", svcs.0),
        ("sdev", sdevs.0),
        ("site", 1),
        ("rack", 1),
        ("enclosure", nodes.0),
        ("controller", nodes.0),
        ("drive", sdevs.0),
        ("pool", 1),
        ("profile", 1),
    ] {
        put(format!("last_base_fid_key/{kind}"), n.to_string());
        put(format!("last_dynamic_fid_key/{kind}"), "0".into());
    }
    put("failvec".into(), String::new());
    for b in ["healthy", "degraded", "critical", "damaged"] {
        put(format!("bytecount/{b}"), "0".into());
    }
    for n in &built {
        put(format!("ports/{}/hax", n.name), r#"{"http": 8008}"#.into());
    }
    put("m0_client_types".into(), "[]".into());
    let pool = text(FidType::Pool, 0);
    put(format!("m0conf/pools/{pool}"), "the pool".into());
    put(
        format!("m0conf/profiles/{}", text(FidType::Profile, 0)),
        py(json!({"name": "Profile_the_pool", "pools": ["the pool", null, null]})),
    );
    for n in &built {
        for p in &n.procs {
            for (stype, skey, _) in &p.services {
                put(
                    format!(
                        "m0conf/nodes/{}/processes/{}/services/{stype}",
                        n.name, p.key
                    ),
                    skey.to_string(),
                );
            }
        }
    }
    for n in &built {
        for p in &n.procs {
            // cfgen writes the endpoint once per service of the process.
            for _ in &p.services {
                put(
                    format!("m0conf/nodes/{}/processes/{}/endpoint", n.name, p.key),
                    p.endpoint.clone(),
                );
            }
        }
    }
    for n in &built {
        let node = format!("m0conf/nodes/{}", text(FidType::Node, n.key));
        put(
            node.clone(),
            py(json!({"name": n.name, "state": "M0_NC_UNKNOWN"})),
        );
        for p in &n.procs {
            let process = format!("{node}/processes/{}", text(FidType::Process, p.key));
            put(
                process.clone(),
                py(json!({"name": p.name, "state": "M0_NC_UNKNOWN"})),
            );
            for (stype, skey, disks) in &p.services {
                let service = format!("{process}/services/{}", text(FidType::Service, *skey));
                put(
                    service.clone(),
                    py(json!({"name": stype, "state": "M0_NC_UNKNOWN"})),
                );
                for (sdev, path) in disks {
                    put(
                        format!("{service}/sdevs/{}", text(FidType::Sdev, *sdev)),
                        py(json!({"path": path, "state": "M0_NC_UNKNOWN"})),
                    );
                }
            }
        }
    }
    let site = format!("m0conf/sites/{}", text(FidType::Site, 0));
    let rack = format!("{site}/racks/{}", text(FidType::Rack, 0));
    put(site, state());
    put(rack.clone(), state());
    for n in &built {
        let encl = format!("{rack}/encls/{}", text(FidType::Enclosure, encls.next()));
        put(
            encl.clone(),
            py(json!({"node": text(FidType::Node, n.key), "state": "M0_NC_UNKNOWN"})),
        );
        let ctrl = format!("{encl}/ctrls/{}", text(FidType::Controller, ctrls.next()));
        put(ctrl.clone(), state());
        for p in &n.procs {
            for (_, _, disks) in &p.services {
                for (sdev, _) in disks {
                    // cfgen numbers a drive as its sdev.
                    let _ = drives.next();
                    put(
                        format!("{ctrl}/drives/{}", text(FidType::Drive, *sdev)),
                        py(json!({"sdev": text(FidType::Sdev, *sdev), "state": "M0_NC_UNKNOWN"})),
                    );
                }
            }
        }
    }
    CfgenKv::from_entries(out)
}

/// `b`, `c`, ... for disk `d` (`/dev/sda` is the system disk).
fn disk_letter(d: usize) -> String {
    let letters = b"bcdefghijklmnopqrstuvwxyz";
    match letters.get(d) {
        Some(c) => (*c as char).to_string(),
        None => format!("x{d}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    /// A key with every fid and number replaced, and the node name: its
    /// family.
    fn family(key: &str) -> String {
        key.split('/')
            .map(|seg| {
                if seg.starts_with("0x") {
                    "<fid>".to_owned()
                } else if seg.parse::<u64>().is_ok() {
                    "<n>".to_owned()
                } else if seg.starts_with("srvnode-") {
                    "<node>".to_owned()
                } else {
                    seg.to_owned()
                }
            })
            .collect::<Vec<_>>()
            .join("/")
    }

    #[test]
    fn three_nodes_read_as_cfgen_output_reads() {
        let made = cfgen_kv(&NodesSpec::new(3, 1, 2));
        let fixture = CfgenKv::three_nodes();
        let families = |kv: &CfgenKv| -> BTreeSet<String> {
            kv.imported().keys().map(|k| family(k)).collect()
        };
        let (ours, theirs) = (families(&made), families(&fixture));
        let extra: Vec<_> = ours.difference(&theirs).collect();
        assert!(
            extra.is_empty(),
            "key families cfgen never writes: {extra:?}"
        );

        // Where both have them, the values are the same.
        for k in [
            "epoch",
            "leader",
            "ports/srvnode-2/hax",
            "m0conf/pools/0x6f00000000000001:0x0",
            "m0conf/nodes/0x6e00000000000001:0x1",
            "m0conf/nodes/0x6e00000000000001:0x0/processes/0x7200000000000001:0x0",
            "m0conf/sites/0x5300000000000001:0x0",
        ] {
            assert_eq!(made.get(k), fixture.get(k), "{k}");
        }

        // The nodes and their processes as update-consul-conf reads them.
        let nodes = made.nodes();
        let names: Vec<&str> = nodes.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names, ["srvnode-1", "srvnode-2", "srvnode-3"]);
        for (i, n) in nodes.iter().enumerate() {
            let hax = n.hax().expect("hax");
            assert_eq!(hax.key, 3 * i as u64, "process keys run on across nodes");
            assert!(n.confd().is_some());
            assert_eq!(n.ioservices().len(), 1);
            let ios = n.ioservices()[0].service("ios").expect("ios");
            let sdevs = made.sdevs_of(ios);
            assert_eq!(sdevs.len(), 2);
            assert!(sdevs.iter().all(|s| made.drive_of(*s).is_some()));
        }
        let eps: BTreeSet<String> = nodes
            .iter()
            .flat_map(|n| n.processes.iter().map(|p| p.endpoint.clone()))
            .collect();
        assert_eq!(eps.len(), 9, "one endpoint per process");
    }
}
