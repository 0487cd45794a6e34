//! The view and the entrypoint configuration read clusters exactly as
//! hare's cfgen writes them (hax-testkit's fixtures, imported as
//! `hare-bootstrap` imports them) from a real Consul agent: profiles that
//! name their pools, fid keys numbered per object type from 0, process
//! objects named after their portal group, Motr clients; and a value hax
//! cannot use leaves out its own entry only.

use std::sync::Arc;
use std::time::Duration;

use hax_consul::schema::{ConfKey, FidText};
use hax_consul::ConsulClient;
use hax_core::{EntrypointReply, Fid, FidType};
use hax_ha::model::facts::EntrypointSnapshot;
use hax_ha::view::{ClusterState, ClusterView, ViewConfig};
use hax_testkit::cfgen::{self, CfgenKv};
use hax_testkit::dev_agent::DevAgent;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

const T: Duration = Duration::from_secs(20);

fn ft(kind: FidType, key: u64) -> FidText {
    let f = Fid::typed(kind, 1, key);
    FidText::new(f.container, f.key)
}

/// An agent named `srvnode-1` holding `kv` as hare's bootstrap leaves it for
/// that node: imported, its services registered, its Consul node mapped,
/// and itself elected RC leader.
async fn bootstrap(kv: &CfgenKv) -> (DevAgent, ConsulClient) {
    let agent = DevAgent::builder()
        .node_name("srvnode-1")
        .start()
        .await
        .expect("agent");
    let c = agent.client().expect("client");
    cfgen::import(&c, kv).await.expect("import");
    cfgen::register_services(&c, kv, "srvnode-1")
        .await
        .expect("services");
    cfgen::map_consul_node(&c, "srvnode-1", "srvnode-1")
        .await
        .expect("consul/node");
    cfgen::elect(&c, "srvnode-1").await.expect("leader");
    (agent, c)
}

/// Every process of the fixture is where cfgen put it, with its services
/// and endpoint; every sdev has its drive.
fn assert_structure(st: &ClusterState, kv: &CfgenKv) {
    assert!(st.conf().malformed.is_empty(), "{:?}", st.conf().malformed);
    assert!(
        st.conf().unrecognised.is_empty(),
        "{:?}",
        st.conf().unrecognised
    );
    for node in kv.nodes() {
        let node_fid = st.node_fid_by_name(&node.name).expect("node by name");
        for p in &node.processes {
            let fid = p.fid();
            assert_eq!(st.node_name_of_process(fid), Some(node.name.as_str()));
            assert_eq!(st.endpoint_of_process(fid), Some(p.endpoint.as_str()));
            let services: Vec<(String, Fid)> = st
                .services_of_process(fid)
                .into_iter()
                .map(|(t, f)| (t.to_owned(), f))
                .collect();
            let want: Vec<(String, Fid)> = p
                .services
                .iter()
                .map(|(t, k)| (t.clone(), Fid::typed(FidType::Service, 1, *k)))
                .collect();
            let mut got = services.clone();
            got.sort_by_key(|(_, f)| f.key);
            assert_eq!(got, want, "services of {fid}");
            assert_eq!(st.is_confd(fid), p.has("confd"), "{fid}");
            assert_eq!(
                st.is_client(fid),
                p.has("m0_client_other"),
                "{fid} is a client by m0_client_types"
            );
        }
        let ios: Vec<Fid> = node.ioservices().iter().map(|p| p.fid()).collect();
        assert_eq!(st.ios_processes_of_node(node_fid), ios, "{}", node.name);
        for p in node.ioservices() {
            let svc = p.service("ios").expect("ios service");
            let sdevs = st.sdevs_of(p.fid(), svc);
            assert!(!sdevs.is_empty(), "sdevs of {}", p.fid());
            for sdev in sdevs {
                let drive = st.drive_of_sdev(sdev).expect("drive of sdev");
                assert_eq!(st.sdev_of_drive(drive), Some(sdev));
            }
            assert!(st.ctrl_of_process(p.fid()).is_some(), "ctrl of {}", p.fid());
        }
        assert!(st.encl_of_node(node_fid).is_some());
    }
}

fn assert_pools(st: &ClusterState) {
    // cfgen: `"pools": ["the pool", null, null]`, the pool named in
    // `m0conf/pools/`.
    let pool = ft(FidType::Pool, 0);
    assert_eq!(st.conf().pools(), [(pool, "the pool")]);
    assert_eq!(st.conf().profile_pools(ft(FidType::Profile, 0)), [pool]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_node_as_cfgen_writes_it() {
    let kv = CfgenKv::one_node();
    let (_agent, c) = bootstrap(&kv).await;
    let cancel = CancellationToken::new();
    let config = ViewConfig::new("srvnode-1", Fid::typed(FidType::Process, 1, 0));
    let view = ClusterView::spawn(c.clone(), config, &cancel, &TaskTracker::new());
    let st = view.wait_loaded(T).await.expect("view loaded");
    assert_structure(&st, &kv);
    assert_pools(&st);
    assert!(st.is_rc());
    // cfgen numbers each type from 0: hax is process 0, its HA service 0.
    let hax = Fid::typed(FidType::Process, 1, 0);
    assert_eq!(
        st.services_of_process(hax),
        [
            ("ha", Fid::typed(FidType::Service, 1, 0)),
            ("rms", Fid::typed(FidType::Service, 1, 1))
        ]
    );

    // The entrypoint: the confd process (key 1) and the rms of that process
    // (service key 2), at the confd's endpoint.
    let mut ep = view.entrypoint();
    let reply = tokio::time::timeout(T, ep.wait_for(Option::is_some))
        .await
        .expect("entrypoint ready in time")
        .expect("entrypoint watch")
        .clone()
        .expect("reply");
    let confd = kv.node("srvnode-1").and_then(|n| n.confd().cloned());
    let confd = confd.expect("confd");
    assert_eq!(reply.confds.len(), 1);
    assert_eq!(reply.confds[0].fid, confd.fid());
    assert_eq!(reply.confds[0].endpoint, confd.endpoint);
    assert_eq!(reply.quorum, 1);
    assert_eq!(reply.rm_fid, Fid::typed(FidType::Service, 1, 2));
    assert_eq!(reply.rm_endpoint, confd.endpoint);
    cancel.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_as_cfgen_writes_them() {
    let kv = CfgenKv::three_nodes();
    let (_agent, c) = bootstrap(&kv).await;
    let cancel = CancellationToken::new();
    let config = ViewConfig::new("srvnode-1", Fid::typed(FidType::Process, 1, 0));
    let view = ClusterView::spawn(c.clone(), config, &cancel, &TaskTracker::new());
    let st = view.wait_loaded(T).await.expect("view loaded");
    assert_structure(&st, &kv);
    assert_pools(&st);
    // Processes of the other nodes: theirs, not local.
    let hax2 = Fid::typed(FidType::Process, 1, 4);
    assert_eq!(st.node_name_of_process(hax2), Some("srvnode-2"));
    assert!(!st.is_local_process(hax2));
    assert_eq!(
        st.process_of_service(Fid::typed(FidType::Service, 1, 45)),
        Some(Fid::typed(FidType::Process, 1, 10)),
        "the ios service of srvnode-3"
    );
    cancel.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_value_leaves_out_its_own_entry() {
    let mut kv = CfgenKv::one_node();
    let site = "m0conf/sites/0x5300000000000001:0x0/racks/0x6100000000000001:0x0/encls/0x6500000000000001:0x0/ctrls/0x6300000000000001:0x0";
    let drive = format!("{site}/drives/0x6b00000000000001:0x1");
    kv.set(&drive, r#"{"sdev": "not a fid", "state": "M0_NC_UNKNOWN"}"#);
    let (_agent, c) = bootstrap(&kv).await;
    let cancel = CancellationToken::new();
    let config = ViewConfig::new("srvnode-1", Fid::typed(FidType::Process, 1, 0));
    let view = ClusterView::spawn(c.clone(), config, &cancel, &TaskTracker::new());
    let st = view.wait_loaded(T).await.expect("view loaded");
    let malformed: Vec<&str> = st.conf().malformed.iter().map(|m| m.key.as_str()).collect();
    assert_eq!(malformed, [drive.as_str()]);
    let left_out = ConfKey::parse(&drive).expect("key");
    assert!(st.conf_entry(&left_out).is_none());
    // Everything else is there: the drive's sdev just has no drive.
    let sdev1 = Fid::typed(FidType::Sdev, 1, 1);
    assert_eq!(st.drive_of_sdev(sdev1), None);
    assert_eq!(
        st.drive_of_sdev(Fid::typed(FidType::Sdev, 1, 0)),
        Some(Fid::typed(FidType::Drive, 1, 0))
    );
    assert_pools(&st);
    let mut ep = view.entrypoint();
    tokio::time::timeout(T, ep.wait_for(Option::is_some))
        .await
        .expect("entrypoint ready in time")
        .expect("entrypoint watch");
    cancel.cancel();
}

/// The first entrypoint reply for which `pred` holds, waited for at most `T`.
async fn reply_where(
    ep: &mut EntrypointSnapshot,
    what: &str,
    pred: &dyn Fn(&EntrypointReply) -> bool,
) -> Arc<EntrypointReply> {
    let r = tokio::time::timeout(T, ep.wait_for(|r| r.as_ref().is_some_and(|r| pred(r))))
        .await
        .unwrap_or_else(|_| panic!("entrypoint reply with {what} in time"))
        .expect("entrypoint watch")
        .clone();
    r.expect("reply")
}

/// The entrypoint reply follows, through the view, a confd registered on
/// another node's agent, the `leader` lock taken by a session of that node
/// (the principal RM moves to its confd), and a change of that confd's
/// `rms` service in `m0conf/`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_entrypoint_follows_the_leader_the_confds_and_m0conf() {
    let kv = CfgenKv::three_nodes();
    let (agent1, c1) = bootstrap(&kv).await;
    let cancel = CancellationToken::new();
    let config = ViewConfig::new("srvnode-1", Fid::typed(FidType::Process, 1, 0));
    let view = ClusterView::spawn(c1.clone(), config, &cancel, &TaskTracker::new());
    let mut ep = view.entrypoint();
    let node1 = kv.node("srvnode-1").expect("srvnode-1");
    let confd1 = node1.confd().expect("confd of srvnode-1");
    let r = reply_where(&mut ep, "srvnode-1's RM", &|r| r.confds.len() == 1).await;
    assert_eq!(r.rm_fid, confd1.service("rms").expect("rms"));
    assert_eq!(r.rm_endpoint, confd1.endpoint);

    // srvnode-2's agent joins and registers its services.
    let agent2 = DevAgent::builder()
        .node_name("srvnode-2")
        .client_of(&agent1)
        .start()
        .await
        .expect("agent of srvnode-2");
    let c2 = agent2.client().expect("client");
    cfgen::register_services(&c2, &kv, "srvnode-2")
        .await
        .expect("services");
    let node2 = kv.node("srvnode-2").expect("srvnode-2");
    let confd2 = node2.confd().expect("confd of srvnode-2");
    let r = reply_where(&mut ep, "two confds", &|r| r.confds.len() == 2).await;
    assert_eq!(r.quorum, 2);
    assert!(r.confds.iter().any(|c| c.fid == confd2.fid()));
    assert_eq!(r.rm_endpoint, confd1.endpoint, "the leader has not moved");

    // srvnode-2 becomes the RC leader: its session holds the lock.
    let s1 = c1
        .kv_get("leader")
        .await
        .expect("leader read")
        .value
        .and_then(|p| p.session)
        .expect("leader session");
    assert!(c1
        .kv_release("leader", b"srvnode-1", &s1)
        .await
        .expect("released"));
    c1.session_destroy(&s1).await.expect("session destroyed");
    cfgen::elect(&c2, "srvnode-2")
        .await
        .expect("srvnode-2 elected");
    let rms2 = confd2.service("rms").expect("rms of srvnode-2's confd");
    let r = reply_where(&mut ep, "srvnode-2's RM", &|r| r.rm_fid == rms2).await;
    assert_eq!(r.rm_endpoint, confd2.endpoint);

    // The rms service of srvnode-2's confd changes in m0conf.
    let key = format!(
        "m0conf/nodes/srvnode-2/processes/{}/services/rms",
        confd2.key
    );
    c1.kv_put(&key, "99").await.expect("rms rewritten");
    let moved = Fid::typed(FidType::Service, 1, 99);
    reply_where(&mut ep, "the rewritten rms", &|r| r.rm_fid == moved).await;
    cancel.cancel();
}

/// The service named `name` in a node of the fetch-fids answer.
fn service<'a>(node: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    node["svcs"]
        .as_array()
        .and_then(|svcs| svcs.iter().find(|s| s["name"] == name))
        .unwrap_or_else(|| panic!("no {name} in {node}"))
}

/// A node's name and its services: name, fid, endpoint.
type NodeServices = (String, Vec<(String, String, String)>);

/// `GET /v1/cluster/fetch-fids` answers what hare-fetch-fids reads from
/// the same keys: every node, its hax, confd, ioservice and client
/// processes in Consul's key order, their endpoints, the ioservice's
/// metadata device, the node's HA endpoint and one UUID per node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_fids_reads_what_hare_fetch_fids_reads() {
    let kv = CfgenKv::three_nodes();
    let (_agent, c) = bootstrap(&kv).await;
    let cancel = CancellationToken::new();
    let config = ViewConfig::new("srvnode-1", Fid::typed(FidType::Process, 1, 0));
    let view = ClusterView::spawn(c.clone(), config, &cancel, &TaskTracker::new());
    let st = view.wait_loaded(T).await.expect("view loaded");
    let mut n = 0;
    let answer = hax_ha::http::fetch_fids::fetch_fids(&st, || {
        n += 1;
        format!("uuid-{n}")
    });

    // hare-fetch-fids's reading of the imported keys, in Consul's order.
    let store = kv.imported();
    let clients: Vec<String> =
        serde_json::from_str(store["m0_client_types"]).expect("m0_client_types");
    let mut expected: Vec<NodeServices> = store
        .iter()
        .filter(|(k, _)| k.starts_with("m0conf/nodes/0x") && k.split('/').count() == 3)
        .map(|(_, v)| {
            let v: serde_json::Value = serde_json::from_str(v).expect("node");
            (v["name"].as_str().expect("name").to_owned(), Vec::new())
        })
        .collect();
    for k in store.keys() {
        let parts: Vec<&str> = k.split('/').collect();
        if parts.len() != 7 || parts[3] != "processes" || parts[5] != "services" {
            continue;
        }
        let name = match parts[6] {
            "ha" => "hax",
            "confd" => "confd",
            "ios" => "ioservice",
            t if clients.iter().any(|c| c == t) => t,
            _ => continue,
        };
        let key: u64 = parts[4].parse().expect("process key");
        let ep = store[format!("m0conf/nodes/{}/processes/{key}/endpoint", parts[2]).as_str()];
        let node = expected
            .iter_mut()
            .find(|(n, _)| n == parts[2])
            .expect("a named node");
        node.1.push((
            name.to_owned(),
            format!("0x7200000000000001:{key:#x}"),
            ep.to_owned(),
        ));
    }
    let got: Vec<NodeServices> = answer
        .iter()
        .map(|n| {
            let svcs = n
                .svcs
                .iter()
                .map(|s| (s.name.clone(), s.fid.to_string(), s.ep.clone().expect("ep")))
                .collect();
            (n.name.clone(), svcs)
        })
        .collect();
    assert_eq!(got, expected);
    assert_eq!(answer.len(), 3);
    for (i, node) in answer.iter().enumerate() {
        assert_eq!(
            node.svcs.len(),
            4,
            "{}: hax, confd, ioservice, client",
            node.name
        );
        // In key order: srvnode-3's processes 10 and 11 come before 8 and 9.
        let hax = node.svcs.iter().find(|s| s.name == "hax").expect("hax");
        assert_eq!(node.ha_ep.as_deref(), hax.ep.as_deref());
        assert_eq!(node.uuid, format!("uuid-{}", i + 1));
        let json = serde_json::to_value(node).expect("json");
        let ios = service(&json, "ioservice");
        let key = ios["fid"].as_str().unwrap().rsplit("0x").next().unwrap();
        let key = u64::from_str_radix(key, 16).unwrap();
        assert_eq!(
            ios["be_seg_path"],
            store[format!("m0conf/nodes/{}/processes/{key}/meta_data", node.name).as_str()]
        );
        assert_eq!(ios["uuid"], node.uuid.as_str());
        assert_eq!(ios["ha_ep"], node.ha_ep.as_deref().unwrap());
        let confd = service(&json, "confd");
        assert_eq!(confd["conf_xc"], "/etc/motr/confd.xc");
        let client = service(&json, "m0_client_other");
        assert_eq!(client["profile_fid"], "0x7000000000000001:0x0");
        let hax = service(&json, "hax");
        assert!(client.get("uuid").is_none() && hax.get("ha_ep").is_none());
    }
    cancel.cancel();
}
