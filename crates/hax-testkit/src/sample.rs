//! A small sample cluster description in Consul, shaped like cfgen's output:
//! one node with hax, a confd (with the RM service) and a few ioservices with
//! one disk each, their catalog services with passing TTL checks, and the
//! `leader` lock held by a session of this node. The demo and the end-to-end
//! tests load it; `hax-sample-cluster` loads it from the command line.

use std::time::Duration;

use hax_consul::catalog::{CheckRegistration, CheckStatus, ServiceRegistration};
use hax_consul::schema::{keys, ConfKey, FidText};
use hax_consul::session::{SessionBehavior, SessionRequest};
use hax_consul::{ConsulClient, ConsulError, TxnOp};
use hax_core::{Fid, FidType};
use serde_json::json;

/// What the sample describes.
#[derive(Clone, Debug)]
pub struct SampleSpec {
    /// Node name (default: the agent's node name).
    pub node: Option<String>,
    /// hax's endpoint.
    pub hax_endpoint: String,
    /// hax's HTTP port (service meta `http_port`).
    pub hax_http_port: u16,
    /// Number of ioservice processes.
    pub ioservices: u64,
    /// First TCP port of the m0d endpoints (confd, then the ioservices).
    pub first_port: u16,
}

/// Fid keys of the sample (containers are `<type>00000000000001`).
pub mod fids {
    /// hax's process key; its HA service is the next key.
    pub const HAX: u64 = 6;
    /// The confd process key; its services are 10 (confd) and 11 (rms).
    pub const CONFD: u64 = 9;
    /// First ioservice process key; process `i` is `IOS + i`.
    pub const IOS: u64 = 20;
}

/// What was loaded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sample {
    /// Node name.
    pub node: String,
    /// hax's process fid.
    pub hax: Fid,
    /// The confd process fid and endpoint.
    pub confd: (Fid, String),
    /// ioservice process fids and endpoints.
    pub ioservices: Vec<(Fid, String)>,
    /// The sdev of each ioservice (same order).
    pub sdevs: Vec<Fid>,
    /// The drive of each ioservice (same order).
    pub drives: Vec<Fid>,
    /// The leader session.
    pub session: String,
}

/// Process key, name, endpoint, and its (service type, service key)s.
type SampleProcess = (u64, &'static str, String, Vec<(&'static str, u64)>);

fn t(kind: FidType, key: u64) -> FidText {
    let f = Fid::typed(kind, 1, key);
    FidText::new(f.container, f.key)
}

fn fid(kind: FidType, key: u64) -> Fid {
    Fid::typed(kind, 1, key)
}

fn split_endpoint(ep: &str) -> (String, u16) {
    match ep.rsplit_once('@') {
        Some((addr, port)) => (addr.to_owned(), port.parse().unwrap_or(0)),
        None => (ep.to_owned(), 0),
    }
}

/// Loads the sample into the Consul agent `client` talks to.
pub async fn load(client: &ConsulClient, spec: &SampleSpec) -> Result<Sample, ConsulError> {
    let node = match &spec.node {
        Some(n) => n.clone(),
        None => client.agent_self().await?.config.node_name,
    };
    let node_fid = t(FidType::Node, 2);
    let (site, rack, encl, ctrl) = (
        t(FidType::Site, 3),
        t(FidType::Rack, 4),
        t(FidType::Enclosure, 5),
        t(FidType::Controller, 6),
    );
    let ep = |i: u16| format!("inet:tcp:127.0.0.1@{}", spec.first_port + i);
    let mut ops: Vec<TxnOp> = Vec::new();
    let mut put = |key: ConfKey, value: serde_json::Value| {
        ops.push(TxnOp::set(key.to_key(), value.to_string().into_bytes()));
    };
    put(
        ConfKey::Node { node: node_fid },
        json!({"name": node, "state": "M0_NC_UNKNOWN"}),
    );
    put(ConfKey::Site { site }, json!({"state": "M0_NC_UNKNOWN"}));
    put(
        ConfKey::Rack { site, rack },
        json!({"state": "M0_NC_UNKNOWN"}),
    );
    put(
        ConfKey::Enclosure { site, rack, encl },
        json!({"node": node_fid.to_string(), "state": "M0_NC_UNKNOWN"}),
    );
    put(
        ConfKey::Controller {
            site,
            rack,
            encl,
            ctrl,
        },
        json!({"state": "M0_NC_UNKNOWN"}),
    );
    put(
        ConfKey::Profile {
            profile: t(FidType::Profile, 1),
        },
        json!({"name": "Profile_the_pool", "pools": [t(FidType::Pool, 1).to_string()]}),
    );
    let mut attrs: Vec<(ConfKey, String)> = Vec::new();
    let mut procs: Vec<SampleProcess> = vec![
        (
            fids::HAX,
            "hax",
            spec.hax_endpoint.clone(),
            vec![("ha", fids::HAX + 1)],
        ),
        (
            fids::CONFD,
            "m0_server",
            ep(0),
            vec![("confd", 10), ("rms", 11)],
        ),
    ];
    for i in 0..spec.ioservices {
        let port_offset = u16::try_from(i + 1).unwrap_or(u16::MAX);
        procs.push((
            fids::IOS + i,
            "m0_server",
            ep(port_offset),
            vec![("ios", 100 + i)],
        ));
    }
    let mut sdevs = Vec::new();
    let mut drives = Vec::new();
    for (pkey, name, endpoint, services) in &procs {
        let process = t(FidType::Process, *pkey);
        put(
            ConfKey::Process {
                node: node_fid,
                process,
            },
            json!({"name": name, "state": "M0_NC_UNKNOWN"}),
        );
        attrs.push((
            ConfKey::ProcessAttr {
                node_name: node.clone(),
                process_key: *pkey,
                attr: "endpoint".into(),
            },
            endpoint.clone(),
        ));
        for (stype, skey) in services {
            let service = t(FidType::Service, *skey);
            put(
                ConfKey::Service {
                    node: node_fid,
                    process,
                    service,
                },
                json!({"name": stype, "state": "M0_NC_UNKNOWN"}),
            );
            attrs.push((
                ConfKey::ServiceKey {
                    node_name: node.clone(),
                    process_key: *pkey,
                    service_type: (*stype).to_owned(),
                },
                skey.to_string(),
            ));
            if *stype == "ios" {
                let n = 200 + (pkey - fids::IOS);
                let (sdev, drive) = (t(FidType::Sdev, n), t(FidType::Drive, n));
                put(
                    ConfKey::Sdev {
                        node: node_fid,
                        process,
                        service,
                        sdev,
                    },
                    json!({"path": format!("/dev/sd{}", disk_letters(n - 198)), "state": "online"}),
                );
                put(
                    ConfKey::Drive {
                        site,
                        rack,
                        encl,
                        ctrl,
                        drive,
                    },
                    json!({"sdev": sdev.to_string(), "state": "M0_NC_ONLINE"}),
                );
                sdevs.push(fid(FidType::Sdev, n));
                drives.push(fid(FidType::Drive, n));
            }
        }
    }
    for (k, v) in attrs {
        ops.push(TxnOp::set(k.to_key(), v.into_bytes()));
    }
    for q in [
        hax_consul::schema::QueueKind::Broadcast,
        hax_consul::schema::QueueKind::Event,
    ] {
        if client.kv_get(q.epoch_key()).await?.value.is_none() {
            ops.push(TxnOp::set(q.epoch_key(), b"1".to_vec()));
        }
    }
    ops.push(TxnOp::set(
        keys::consul_node(&node).map_err(schema_err)?,
        node.clone().into_bytes(),
    ));
    for chunk in ops.chunks(64) {
        client.txn(chunk).await?;
    }

    // Catalog services with TTL checks, passing.
    let (hax_addr, hax_port) = split_endpoint(&spec.hax_endpoint);
    let mut regs = vec![ServiceRegistration {
        id: fids::HAX.to_string(),
        name: "hax".into(),
        address: hax_addr,
        port: hax_port,
        meta: [
            ("transport_type".to_owned(), "libfab".to_owned()),
            ("http_port".to_owned(), spec.hax_http_port.to_string()),
        ]
        .into(),
        ..Default::default()
    }];
    for (name, key, endpoint) in std::iter::once(("confd", fids::CONFD, ep(0))).chain(
        (0..spec.ioservices).map(|i| ("ios", fids::IOS + i, ep(u16::try_from(i + 1).unwrap_or(0)))),
    ) {
        let (address, port) = split_endpoint(&endpoint);
        regs.push(ServiceRegistration {
            id: key.to_string(),
            name: name.into(),
            address,
            port,
            meta: [("transport_type".to_owned(), "libfab".to_owned())].into(),
            ..Default::default()
        });
    }
    for mut r in regs {
        r.checks = vec![CheckRegistration {
            check_id: Some(format!("service:{}", r.id)),
            name: format!("{} {}", r.name, r.id),
            ttl: Some("24h".into()),
            status: Some(CheckStatus::Passing),
        }];
        let check = format!("service:{}", r.id);
        client.agent_service_register(&r).await?;
        // An agent restarted on its data keeps a TTL check's status only
        // once the check has been updated.
        client
            .agent_check_update(&check, CheckStatus::Passing, "sample cluster")
            .await?;
    }

    // The RC leader: this node, holding `leader` with a session.
    let session = client
        .session_create(&SessionRequest {
            name: Some("leader".into()),
            lock_delay: Some(Duration::from_secs(1)),
            behavior: SessionBehavior::Release,
            ..Default::default()
        })
        .await?;
    client
        .kv_acquire(keys::LEADER, node.as_bytes(), &session)
        .await?;

    Ok(Sample {
        hax: fid(FidType::Process, fids::HAX),
        confd: (fid(FidType::Process, fids::CONFD), ep(0)),
        ioservices: (0..spec.ioservices)
            .map(|i| {
                (
                    fid(FidType::Process, fids::IOS + i),
                    ep(u16::try_from(i + 1).unwrap_or(0)),
                )
            })
            .collect(),
        sdevs,
        drives,
        node,
        session,
    })
}

fn schema_err(e: hax_consul::schema::SchemaError) -> ConsulError {
    ConsulError::Config(e.to_string())
}

/// The letters of the `i`th disk as Linux names them (1: `a`, 26: `z`,
/// 27: `aa`, ...), so that any number of ioservices gets a disk.
fn disk_letters(mut i: u64) -> String {
    let mut out = Vec::new();
    while i > 0 {
        i -= 1;
        out.push(b'a' + (i % 26) as u8);
        i /= 26;
    }
    out.reverse();
    String::from_utf8(out).unwrap_or_default()
}

#[cfg(test)]
mod disk_tests {
    use super::disk_letters;

    #[test]
    fn disks_are_named_as_linux_names_them() {
        let names: Vec<String> = [1, 2, 26, 27, 28, 702, 703].map(disk_letters).into();
        assert_eq!(names, ["a", "b", "z", "aa", "ab", "zz", "aaa"]);
    }
}
