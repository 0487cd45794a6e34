//! What the hax-bin integration tests share: a hax that accepts every
//! entrypoint, and the sample cluster loaded into a real Consul agent.
#![allow(dead_code)]

use self::sample::Sample;
use hax_consul::catalog::{CheckRegistration, CheckStatus, ServiceRegistration};
use hax_consul::schema::{keys, ConfKey, ConfValue, HaxKv};
use hax_consul::ConsulClient;
use hax_core::{
    Callbacks, Ctx, EntrypointReply, EntrypointRequest, EntrypointResponder, Fid, FidType,
    HalonConfig, LinkInfo, Uint128,
};
use hax_ha::model::vocab::fid_text;
use hax_ha::view::ClusterState;
use hax_ha::view::{ClusterView, ViewConfig};
use hax_testkit::dev_agent::DevAgent;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Accepts every entrypoint request and counts the links made.
pub struct Hax {
    pub links: watch::Sender<usize>,
}

impl Hax {
    /// A hax and the count of its links.
    pub fn counting() -> (Self, watch::Receiver<usize>) {
        let (links, rx) = watch::channel(0);
        (Hax { links }, rx)
    }
}

impl Callbacks for Hax {
    fn entrypoint_request(&self, cx: &Ctx<'_>, req: EntrypointRequest, reply: EntrypointResponder) {
        let rep = EntrypointReply {
            quorum: 1,
            rm_fid: Sample::RMS_HAX1,
            rm_endpoint: req.remote_endpoint,
            ..Default::default()
        };
        if let Err(e) = reply.accept_now(cx, &rep) {
            panic!("entrypoint reply: {e}");
        }
    }

    fn link_connected(&self, _cx: &Ctx<'_>, _req: Uint128, _link: &LinkInfo) {
        self.links.send_modify(|n| *n += 1);
    }
}

/// The Consul check of a sample process's service.
pub fn check_id(p: Fid) -> String {
    format!("service:{}", p.key)
}

/// The sample as cfgen and hare's bootstrap leave it, seen from node 1
/// whose Consul node is the agent's; `client_types` is the JSON list of
/// Motr client service types.
pub async fn load_sample(agent: &DevAgent, c: &ConsulClient, client_types: &str) {
    for (key, value) in sample::conf_entries() {
        c.kv_put(&key, value).await.expect("conf entry");
    }
    let kv = HaxKv::new(c.clone());
    for (fid, status) in sample::process_statuses() {
        kv.put_process_status(fid, status)
            .await
            .expect("process status");
    }
    kv.put_consul_node(Sample::NODE1_NAME, agent.node_name())
        .await
        .expect("consul node");
    c.kv_put(keys::LEADER, Sample::NODE1_NAME)
        .await
        .expect("leader");
    c.kv_put(keys::M0_CLIENT_TYPES, client_types)
        .await
        .expect("client types");
    for (p, name) in [
        (Sample::HAX1, "hax"),
        (Sample::CONFD1, "confd"),
        (Sample::IOS1, "ios"),
    ] {
        c.agent_service_register(&ServiceRegistration {
            id: p.key.to_string(),
            name: name.into(),
            address: "127.0.0.1".into(),
            port: 3000,
            checks: vec![CheckRegistration {
                check_id: Some(check_id(p)),
                name: format!("{name} alive"),
                ttl: Some("600s".into()),
                status: Some(CheckStatus::Passing),
            }],
            ..ServiceRegistration::default()
        })
        .await
        .expect("service registration");
    }
}

/// The `state` of a configuration object in Consul.
pub async fn kv_state(kv: &HaxKv, st: &ClusterState, f: Fid) -> String {
    let key = match f.kind() {
        Some(FidType::Process) => st.process_keys(f)[0].clone(),
        Some(FidType::Sdev) => st.sdev_keys(f)[0].clone(),
        Some(FidType::Controller) => st.ctrl_keys(f)[0].clone(),
        Some(FidType::Enclosure) => st.encl_keys(f)[0].clone(),
        _ => ConfKey::Node { node: fid_text(f) },
    };
    match kv.conf_entry(&key).await.expect("read").map(|e| e.value) {
        Some(ConfValue::Object(o)) => o.state.unwrap_or_default(),
        other => panic!("{key}: {other:?}"),
    }
}

/// A real agent loaded with the sample, and node 1's cluster view following
/// it (stopped by the token).
pub async fn sample_view(
    wait: std::time::Duration,
) -> (DevAgent, ConsulClient, ClusterView, CancellationToken) {
    let agent = DevAgent::start().await.expect("consul agent");
    let c = agent.client().expect("client");
    load_sample(&agent, &c, "[]").await;
    let cancel = CancellationToken::new();
    let view = ClusterView::spawn(
        c.clone(),
        ViewConfig::new(Sample::NODE1_NAME, Sample::HAX1),
        &cancel,
        &tokio_util::task::TaskTracker::new(),
    );
    view.wait_loaded(wait).await.expect("view loaded");
    (agent, c, view, cancel)
}

/// A loopback TCP endpoint on a port free now.
pub fn free_endpoint() -> String {
    let port = hax_testkit::ports::free_port().expect("a free port");
    format!("inet:tcp:127.0.0.1@{port}")
}

/// Node 1's hax on `endpoint`, its halon stop bounded to 2 s.
pub fn hax_halon_config(endpoint: impl Into<String>) -> HalonConfig {
    HalonConfig {
        endpoint: endpoint.into(),
        process_fid: Sample::HAX1,
        ha_service_fid: Sample::HA1,
        rm_service_fid: Sample::RMS_HAX1,
        debug_options: "emu-stop-timeout-ms=2000".into(),
        receive_buffers: 0,
        node_uuid: None,
    }
}

/// The view sample of [`hax_testkit::view_sample`] and the view data it makes.
pub mod sample {
    pub use hax_testkit::view_sample::*;

    use std::collections::BTreeMap;

    use hax_consul::schema::ConfTree;
    use hax_ha::view::ViewData;
    use hax_testkit::view_sample::{
        conf_pairs as sample_conf_pairs, health_entries as sample_health_entries,
        process_statuses as sample_process_statuses,
    };

    /// The whole sample as seen from node 1's hax, everything healthy.
    pub fn view_data() -> ViewData {
        ViewData {
            local_node: Sample::NODE1_NAME.to_owned(),
            hax_fid: Sample::HAX1,
            conf: ConfTree::from_pairs(&sample_conf_pairs())
                .unwrap_or_else(|e| panic!("sample configuration: {e}")),
            processes: sample_process_statuses(),
            health: sample_health_entries(&[], true),
            consul_nodes: [
                (Sample::NODE1_NAME.to_owned(), Sample::CONSUL1.to_owned()),
                (Sample::NODE2_NAME.to_owned(), Sample::CONSUL2.to_owned()),
            ]
            .into_iter()
            .collect(),
            leader: None,
            leader_session_node: None,
            confds: Vec::new(),
            client_types: vec!["m0_client_s3".to_owned()],
            dynamic_fids: BTreeMap::new(),
        }
    }
}
