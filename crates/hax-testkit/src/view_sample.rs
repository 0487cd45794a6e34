//! The view sample: a two-node cluster (hax, a confd and ioservices with
//! their disks on node 1; hax and ioservices on node 2) as Consul holds it:
//! the configuration tree, the recorded process states and the service
//! health entries, for tests of what hax derives from them.

use std::collections::BTreeMap;

use hax_consul::catalog::ServiceEntry;
use hax_consul::schema::{FidText, ProcessState, ProcessStatus, ProcessType};
use hax_consul::KvPair;
use hax_core::{Fid, FidType};

fn fid_text(fid: Fid) -> FidText {
    FidText::new(fid.container, fid.key)
}

/// The fids and names of the sample.
#[derive(Debug)]
pub struct Sample;

/// A process of the sample: fid, node name, process name, services
/// (type, fid).
pub type SampleProcess = (Fid, &'static str, &'static str, Vec<(&'static str, Fid)>);

const fn f(t: FidType, key: u64) -> Fid {
    Fid::typed(t, 1, key)
}

#[allow(missing_docs)]
impl Sample {
    pub const NODE1_NAME: &'static str = "srvnode-1";
    pub const NODE2_NAME: &'static str = "srvnode-2";
    /// Consul node names (a container-style suffix, as hare uses).
    pub const CONSUL1: &'static str = "srvnode-1:0a1b2c3d";
    pub const CONSUL2: &'static str = "srvnode-2:4e5f6a7b";
    pub const NODE1: Fid = f(FidType::Node, 0x3);
    pub const NODE2: Fid = f(FidType::Node, 0x20);
    pub const HAX1: Fid = f(FidType::Process, 0x6);
    pub const HA1: Fid = f(FidType::Service, 0x7);
    pub const RMS_HAX1: Fid = f(FidType::Service, 0x8);
    pub const CONFD1: Fid = f(FidType::Process, 0x9);
    pub const CONFD1_SVC: Fid = f(FidType::Service, 0xa);
    pub const RMS_CONFD1: Fid = f(FidType::Service, 0xb);
    pub const IOS1: Fid = f(FidType::Process, 0xc);
    pub const IOS1_SVC: Fid = f(FidType::Service, 0xd);
    pub const SDEV1A: Fid = f(FidType::Sdev, 0xe);
    pub const SDEV1B: Fid = f(FidType::Sdev, 0xf);
    pub const RMS_IOS1: Fid = f(FidType::Service, 0x10);
    pub const HAX2: Fid = f(FidType::Process, 0x21);
    pub const HA2: Fid = f(FidType::Service, 0x22);
    pub const IOS2A: Fid = f(FidType::Process, 0x24);
    pub const IOS2A_SVC: Fid = f(FidType::Service, 0x25);
    pub const SDEV2A: Fid = f(FidType::Sdev, 0x26);
    pub const SDEV2B: Fid = f(FidType::Sdev, 0x27);
    pub const IOS2B: Fid = f(FidType::Process, 0x29);
    pub const IOS2B_SVC: Fid = f(FidType::Service, 0x2a);
    pub const SDEV2C: Fid = f(FidType::Sdev, 0x2b);
    /// An sdev no drive references.
    pub const SDEV2_ORPHAN: Fid = f(FidType::Sdev, 0x2c);
    pub const SITE: Fid = f(FidType::Site, 0x1);
    pub const RACK: Fid = f(FidType::Rack, 0x2);
    pub const ENCL1: Fid = f(FidType::Enclosure, 0x30);
    pub const CTRL1: Fid = f(FidType::Controller, 0x31);
    pub const DRIVE1A: Fid = f(FidType::Drive, 0x32);
    pub const DRIVE1B: Fid = f(FidType::Drive, 0x33);
    pub const ENCL2: Fid = f(FidType::Enclosure, 0x40);
    pub const CTRL2: Fid = f(FidType::Controller, 0x41);
    pub const DRIVE2A: Fid = f(FidType::Drive, 0x42);
    pub const DRIVE2B: Fid = f(FidType::Drive, 0x43);
    pub const DRIVE2C: Fid = f(FidType::Drive, 0x44);
    pub const PROFILE: Fid = f(FidType::Profile, 0x50);
    pub const POOL: Fid = f(FidType::Pool, 0x51);

    /// Every process with its node name, process name and services
    /// (type, fid).
    pub fn processes() -> Vec<SampleProcess> {
        vec![
            (
                Self::HAX1,
                Self::NODE1_NAME,
                "hax",
                vec![("ha", Self::HA1), ("rms", Self::RMS_HAX1)],
            ),
            (
                Self::CONFD1,
                Self::NODE1_NAME,
                "m0_server",
                vec![("confd", Self::CONFD1_SVC), ("rms", Self::RMS_CONFD1)],
            ),
            (
                Self::IOS1,
                Self::NODE1_NAME,
                "m0_server",
                vec![("ios", Self::IOS1_SVC), ("rms", Self::RMS_IOS1)],
            ),
            (Self::HAX2, Self::NODE2_NAME, "hax", vec![("ha", Self::HA2)]),
            (
                Self::IOS2A,
                Self::NODE2_NAME,
                "m0_server",
                vec![("ios", Self::IOS2A_SVC)],
            ),
            (
                Self::IOS2B,
                Self::NODE2_NAME,
                "m0_server",
                vec![("ios", Self::IOS2B_SVC)],
            ),
        ]
    }

    /// The sdevs of each ios service, with their device paths.
    pub fn sdevs() -> Vec<(Fid, Fid, Fid, &'static str)> {
        vec![
            (Self::IOS1, Self::IOS1_SVC, Self::SDEV1A, "/dev/sdb"),
            (Self::IOS1, Self::IOS1_SVC, Self::SDEV1B, "/dev/sdc"),
            (Self::IOS2A, Self::IOS2A_SVC, Self::SDEV2A, "/dev/sdb"),
            (Self::IOS2A, Self::IOS2A_SVC, Self::SDEV2B, "/dev/sdc"),
            (Self::IOS2B, Self::IOS2B_SVC, Self::SDEV2C, "/dev/sdd"),
            (Self::IOS2B, Self::IOS2B_SVC, Self::SDEV2_ORPHAN, "/dev/sde"),
        ]
    }

    /// Drives: (enclosure, controller, drive, sdev).
    pub fn drives() -> Vec<(Fid, Fid, Fid, Fid)> {
        vec![
            (Self::ENCL1, Self::CTRL1, Self::DRIVE1A, Self::SDEV1A),
            (Self::ENCL1, Self::CTRL1, Self::DRIVE1B, Self::SDEV1B),
            (Self::ENCL2, Self::CTRL2, Self::DRIVE2A, Self::SDEV2A),
            (Self::ENCL2, Self::CTRL2, Self::DRIVE2B, Self::SDEV2B),
            (Self::ENCL2, Self::CTRL2, Self::DRIVE2C, Self::SDEV2C),
        ]
    }

    /// The fid of a node by name.
    pub fn node(name: &str) -> Fid {
        if name == Self::NODE1_NAME {
            Self::NODE1
        } else {
            Self::NODE2
        }
    }

    /// The endpoint of a process.
    pub fn endpoint(p: Fid) -> String {
        format!("inet:tcp:192.168.0.1@{}", 3000 + p.key)
    }
}

/// The configuration as (key, value) text, in cfgen's layout.
pub fn conf_entries() -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    let unknown = "M0_NC_UNKNOWN";
    for (name, node) in [
        (Sample::NODE1_NAME, Sample::NODE1),
        (Sample::NODE2_NAME, Sample::NODE2),
    ] {
        out.push((
            format!("m0conf/nodes/{node}"),
            format!(r#"{{"name": "{name}", "state": "{unknown}"}}"#),
        ));
    }
    for (p, node_name, pname, services) in Sample::processes() {
        let node = Sample::node(node_name);
        let pk = format!("m0conf/nodes/{node}/processes/{p}");
        out.push((
            pk.clone(),
            format!(r#"{{"name": "{pname}", "state": "{unknown}"}}"#),
        ));
        for (t, s) in &services {
            out.push((
                format!("{pk}/services/{s}"),
                format!(r#"{{"name": "{t}", "state": "{unknown}"}}"#),
            ));
            out.push((
                format!("m0conf/nodes/{node_name}/processes/{}/services/{t}", p.key),
                s.key.to_string(),
            ));
        }
        out.push((
            format!("m0conf/nodes/{node_name}/processes/{}/endpoint", p.key),
            Sample::endpoint(p),
        ));
    }
    for (p, s, d, path) in Sample::sdevs() {
        let node = Sample::node(
            Sample::processes()
                .iter()
                .find(|x| x.0 == p)
                .map_or(Sample::NODE1_NAME, |x| x.1),
        );
        out.push((
            format!("m0conf/nodes/{node}/processes/{p}/services/{s}/sdevs/{d}"),
            format!(r#"{{"path": "{path}", "state": "{unknown}"}}"#),
        ));
    }
    let site = format!("m0conf/sites/{}", Sample::SITE);
    let rack = format!("{site}/racks/{}", Sample::RACK);
    out.push((site.clone(), format!(r#"{{"state": "{unknown}"}}"#)));
    out.push((rack.clone(), format!(r#"{{"state": "{unknown}"}}"#)));
    for (encl, node) in [
        (Sample::ENCL1, Sample::NODE1),
        (Sample::ENCL2, Sample::NODE2),
    ] {
        out.push((
            format!("{rack}/encls/{encl}"),
            format!(r#"{{"node": "{node}", "state": "{unknown}"}}"#),
        ));
    }
    let mut ctrls: Vec<(Fid, Fid)> = Vec::new();
    for (encl, ctrl, drive, sdev) in Sample::drives() {
        if !ctrls.contains(&(encl, ctrl)) {
            ctrls.push((encl, ctrl));
            out.push((
                format!("{rack}/encls/{encl}/ctrls/{ctrl}"),
                format!(r#"{{"state": "{unknown}"}}"#),
            ));
        }
        out.push((
            format!("{rack}/encls/{encl}/ctrls/{ctrl}/drives/{drive}"),
            format!(r#"{{"sdev": "{sdev}", "state": "{unknown}"}}"#),
        ));
    }
    out.push((
        format!("m0conf/profiles/{}", Sample::PROFILE),
        format!(
            r#"{{"name": "Profile_the_pool", "pools": ["{}"]}}"#,
            Sample::POOL
        ),
    ));
    out
}

/// [`conf_entries`] as KV pairs (modify indexes 1, 2, ...).
pub fn conf_pairs() -> Vec<KvPair> {
    conf_entries()
        .into_iter()
        .zip(1u64..)
        .map(|((key, value), i)| KvPair {
            key,
            value: value.into_bytes(),
            flags: 0,
            create_index: i,
            modify_index: i,
            lock_index: 0,
            session: None,
        })
        .collect()
}

/// Every process recorded DTM_RECOVERED (hax with its `HA` type).
pub fn process_statuses() -> BTreeMap<FidText, ProcessStatus> {
    Sample::processes()
        .into_iter()
        .map(|(p, _, pname, _)| {
            let kind = if pname == "hax" {
                ProcessType::Ha
            } else {
                ProcessType::M0d
            };
            (
                fid_text(p),
                ProcessStatus {
                    state: ProcessState::DtmRecovered,
                    kind,
                },
            )
        })
        .collect()
}

/// Consul health entries of every process: `serfHealth` passing (node 2:
/// critical unless `node2_alive`) and each service check passing unless
/// `overrides` gives (process key, status).
pub fn health_entries(overrides: &[(u64, &str)], node2_alive: bool) -> Vec<ServiceEntry> {
    Sample::processes()
        .into_iter()
        .filter(|(_, _, _, services)| {
            services
                .iter()
                .any(|(t, _)| ["ha", "confd", "ios"].contains(t))
        })
        .map(|(p, node_name, pname, _)| {
            let consul = if node_name == Sample::NODE1_NAME {
                Sample::CONSUL1
            } else {
                Sample::CONSUL2
            };
            let serf = if node_name == Sample::NODE2_NAME && !node2_alive {
                "critical"
            } else {
                "passing"
            };
            let id = p.key.to_string();
            let status = overrides
                .iter()
                .find(|(k, _)| *k == p.key)
                .map_or("passing", |(_, s)| *s);
            let json = serde_json::json!({
                "Node": {"Node": consul, "Address": "192.168.0.1"},
                "Service": {"ID": id, "Service": if pname == "hax" { "hax" } else { "ios" }, "Port": 3000 + p.key},
                "Checks": [
                    {"Node": consul, "CheckID": "serfHealth", "Name": "Serf Health Status", "Status": serf, "ServiceID": ""},
                    {"Node": consul, "CheckID": format!("service:{id}"), "Name": "m0d", "Status": status, "ServiceID": id},
                ],
            });
            serde_json::from_value(json).unwrap_or_else(|e| panic!("sample entry: {e}"))
        })
        .collect()
}
