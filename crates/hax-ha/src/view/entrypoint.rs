//! The configuration an entrypoint reply carries, derived from the cluster
//! view so that entrypoint requests are answered from memory and Consul is
//! followed once: the confd servers (catalog service `confd`), the quorum,
//! and the principal RM (the confd on the node whose session holds the
//! `leader` lock, and its `rms` service in `m0conf/`).

use std::sync::Arc;

use hax_consul::catalog::CatalogService;
use hax_core::{Confd, EntrypointReply, Fid, FidType};
use tokio::sync::watch;

use super::sources::{PART_CONF, PART_CONFDS, PART_LEADER};
use super::state::{ClusterState, ConfStructure};
use crate::model::facts::EntrypointSnapshot;

/// Why there is no entrypoint reply yet; the requester is told to ask again.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotReady {
    /// No confd service in the catalog.
    #[error("no confd service is registered")]
    NoConfd,
    /// The `leader` key is not held by a session.
    #[error("no RC leader holds the leader lock")]
    NoLeader,
    /// No confd runs on the leader's node.
    #[error("no confd on the principal RM node {0}")]
    NoRmConfd(String),
    /// The principal RM's `rms` service is not in the configuration tree.
    #[error("no rms service for process key {0} in m0conf")]
    NoRmService(u64),
    /// A confd's ServiceID is not a decimal fid key.
    #[error("confd service id {0:?} is not a decimal fid key")]
    BadServiceId(String),
}

/// The Motr endpoint of a catalog service, as the original builds it:
/// `address@port`, or `address:port` for the LNet transport.
pub fn service_endpoint(s: &CatalogService) -> String {
    let address = if s.service_address.is_empty() {
        &s.address
    } else {
        &s.service_address
    };
    let sep = match s.service_meta.get("transport_type").map(String::as_str) {
        Some("lnet") => ':',
        _ => '@',
    };
    format!("{address}{sep}{}", s.service_port)
}

/// A node name without the `:<suffix>` that container deployments add.
pub fn strip_node_suffix(node: &str) -> &str {
    node.split(':').next().unwrap_or(node)
}

/// The reply of one view state ([`build_reply`] of its confd services,
/// leader session node and `rms` services).
pub fn reply_of(st: &ClusterState) -> Result<EntrypointReply, NotReady> {
    build_reply(st.confd_services(), st.leader_session_node(), |key| {
        st.rms_of_process_key(key)
    })
}

/// Builds the reply from the confd services, the principal RM node (the
/// leader session's node) and the `rms` service key of a process key.
pub fn build_reply(
    confds: &[CatalogService],
    principal_rm: Option<&str>,
    rms_of: impl Fn(u64) -> Option<u64>,
) -> Result<EntrypointReply, NotReady> {
    let mut seen = std::collections::BTreeSet::new();
    let mut list: Vec<(&str, u64, String)> = Vec::new();
    for s in confds {
        if !seen.insert(s.service_id.as_str()) {
            continue;
        }
        let key: u64 = s
            .service_id
            .parse()
            .map_err(|_| NotReady::BadServiceId(s.service_id.clone()))?;
        list.push((strip_node_suffix(&s.node), key, service_endpoint(s)));
    }
    if list.is_empty() {
        return Err(NotReady::NoConfd);
    }
    let rm_node = principal_rm.ok_or(NotReady::NoLeader)?;
    let (_, rm_process_key, rm_endpoint) = list
        .iter()
        .find(|(node, _, _)| *node == rm_node)
        .ok_or_else(|| NotReady::NoRmConfd(rm_node.to_owned()))?;
    let rms_key = rms_of(*rm_process_key).ok_or(NotReady::NoRmService(*rm_process_key))?;
    Ok(EntrypointReply {
        quorum: EntrypointReply::majority(list.len()),
        rm_fid: Fid::typed(FidType::Service, 1, rms_key),
        rm_endpoint: rm_endpoint.clone(),
        confds: list
            .into_iter()
            .map(|(_, key, endpoint)| Confd {
                fid: Fid::typed(FidType::Process, 1, key),
                endpoint,
            })
            .collect(),
    })
}

/// What a reply is built from, compared by identity: a view state shares
/// the parts that did not change with the state before it.
#[derive(Debug)]
struct Inputs {
    confds: Arc<Vec<CatalogService>>,
    rm_node: Option<String>,
    structure: Arc<ConfStructure>,
}

impl Inputs {
    fn of(st: &ClusterState) -> Self {
        Inputs {
            confds: Arc::clone(&st.confds),
            rm_node: st.leader_session_node.clone(),
            structure: Arc::clone(&st.structure),
        }
    }

    fn same(&self, other: &Inputs) -> bool {
        Arc::ptr_eq(&self.confds, &other.confds)
            && self.rm_node == other.rm_node
            && Arc::ptr_eq(&self.structure, &other.structure)
    }
}

/// Publishes the entrypoint reply of the view's states: rebuilt when what it
/// is built from changes, published and logged when the outcome changes.
#[derive(Debug)]
pub(super) struct EntrypointPublisher {
    inputs: Option<Inputs>,
    last: Option<Result<EntrypointReply, NotReady>>,
    tx: watch::Sender<Option<Arc<EntrypointReply>>>,
}

impl EntrypointPublisher {
    pub(super) fn new() -> Self {
        EntrypointPublisher {
            inputs: None,
            last: None,
            tx: watch::Sender::new(None),
        }
    }

    /// Follows view state `st`. Until the parts a reply is built from have
    /// been read, there is no reply and nothing is said about it.
    pub(super) fn refresh(&mut self, st: &ClusterState) {
        if st
            .missing()
            .iter()
            .any(|m| [PART_CONF, PART_LEADER, PART_CONFDS].contains(m))
        {
            return;
        }
        let inputs = Inputs::of(st);
        if self.inputs.as_ref().is_some_and(|i| i.same(&inputs)) {
            return;
        }
        self.inputs = Some(inputs);
        let result = reply_of(st);
        if self.last.as_ref() == Some(&result) {
            return;
        }
        match &result {
            Ok(r) => {
                tracing::info!(confds = r.confds.len(), quorum = r.quorum, rm = %r.rm_fid, rm_endpoint = %r.rm_endpoint, "entrypoint configuration ready")
            }
            Err(e) => tracing::warn!(reason = %e, "entrypoint configuration not ready"),
        }
        self.tx.send_replace(result.clone().ok().map(Arc::new));
        self.last = Some(result);
    }

    pub(super) fn subscribe(&self) -> EntrypointSnapshot {
        self.tx.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::super::lock;
    use super::*;
    use crate::view::sample::{self, Sample};

    fn svc(node: &str, id: &str, addr: &str, port: u16) -> CatalogService {
        serde_json::from_value(serde_json::json!({
            "Node": node, "Address": "10.0.0.1", "ServiceID": id, "ServiceName": "confd",
            "ServiceAddress": addr, "ServicePort": port,
            "ServiceMeta": {"transport_type": "libfab"}
        }))
        .expect("service")
    }

    /// The `rms` services of processes 6 and 16.
    fn rms(key: u64) -> Option<u64> {
        match key {
            6 => Some(9),
            16 => Some(19),
            _ => None,
        }
    }

    #[test]
    fn reply_lists_confds_and_the_principal_rm() {
        let confds = vec![
            svc("srvnode-1", "6", "inet:tcp:10.0.0.1", 21001),
            svc("srvnode-2:0a1b2c3d", "16", "inet:tcp:10.0.0.2", 21001),
            svc("srvnode-1", "6", "inet:tcp:10.0.0.1", 21001),
        ];
        let r = build_reply(&confds, Some("srvnode-2"), rms).expect("ready");
        assert_eq!(r.confds.len(), 2, "deduplicated by service id");
        assert_eq!(r.confds[0].fid.to_string(), "0x7200000000000001:0x6");
        assert_eq!(r.confds[1].endpoint, "inet:tcp:10.0.0.2@21001");
        assert_eq!(r.quorum, 2);
        assert_eq!(r.rm_fid.to_string(), "0x7300000000000001:0x13");
        assert_eq!(r.rm_endpoint, "inet:tcp:10.0.0.2@21001");
    }

    #[test]
    fn missing_pieces_are_named() {
        let confds = vec![svc("srvnode-1", "6", "inet:tcp:10.0.0.1", 21001)];
        assert_eq!(build_reply(&[], Some("n"), rms), Err(NotReady::NoConfd));
        assert_eq!(build_reply(&confds, None, rms), Err(NotReady::NoLeader));
        assert_eq!(
            build_reply(&confds, Some("srvnode-3"), rms),
            Err(NotReady::NoRmConfd("srvnode-3".into()))
        );
        assert_eq!(
            build_reply(&confds, Some("srvnode-1"), |_| None),
            Err(NotReady::NoRmService(6))
        );
        let bad = vec![svc("srvnode-1", "six", "a", 1)];
        assert_eq!(
            build_reply(&bad, Some("srvnode-1"), rms),
            Err(NotReady::BadServiceId("six".into()))
        );
    }

    #[test]
    fn endpoints_follow_the_transport() {
        let mut s = svc("n", "1", "10.0.0.1@tcp:12345:34", 101);
        s.service_meta
            .insert("transport_type".into(), "lnet".into());
        assert_eq!(service_endpoint(&s), "10.0.0.1@tcp:12345:34:101");
        assert_eq!(strip_node_suffix("node:abcd"), "node");
    }

    /// The sample with the confd of node 1 registered and node 1's session
    /// holding `leader`.
    fn view() -> crate::view::ClusterView {
        let mut d = sample::view_data();
        d.confds = vec![svc(
            Sample::CONSUL1,
            &Sample::CONFD1.key.to_string(),
            "inet:tcp:10.0.0.1",
            21001,
        )];
        d.leader_session_node = Some(Sample::NODE1_NAME.into());
        crate::view::ClusterView::from_data(d)
    }

    #[test]
    fn the_reply_is_built_from_the_view() {
        let view = view();
        let r = view.entrypoint().borrow().clone().expect("ready");
        assert_eq!(r.confds.len(), 1);
        assert_eq!(r.confds[0].fid, Sample::CONFD1);
        assert_eq!(r.quorum, 1);
        assert_eq!(r.rm_fid, Sample::RMS_CONFD1);
        assert_eq!(r.rm_endpoint, "inet:tcp:10.0.0.1@21001");
        assert_eq!(reply_of(&view.snapshot()).as_ref(), Ok(&*r));
    }

    #[test]
    fn the_reply_follows_the_leader_the_confds_and_m0conf() {
        let view = view();
        let mut ep = view.entrypoint();
        ep.borrow_and_update();

        // What a reply is not built from publishes nothing.
        view.inner
            .update(|s| s.client_types = Arc::new(vec!["other".into()]));
        assert!(!ep.has_changed().expect("open"));

        // The leader's session moves to node 2, which has no confd.
        view.inner
            .update(|s| s.leader_session_node = Some(Sample::NODE2_NAME.into()));
        assert!(ep.has_changed().expect("open"));
        assert!(ep.borrow_and_update().is_none());
        assert_eq!(
            reply_of(&view.snapshot()),
            Err(NotReady::NoRmConfd(Sample::NODE2_NAME.into()))
        );

        // A confd on node 2, whose process has no rms service yet.
        let key = Sample::IOS2A.key;
        view.inner.update(|s| {
            let mut confds = (*s.confds).clone();
            confds.push(svc(
                Sample::CONSUL2,
                &key.to_string(),
                "inet:tcp:10.0.0.2",
                21001,
            ));
            s.confds = Arc::new(confds);
        });
        assert_eq!(reply_of(&view.snapshot()), Err(NotReady::NoRmService(key)));
        assert!(ep.borrow_and_update().is_none());

        // Its rms service appears in m0conf.
        let mut pairs = sample::conf_pairs();
        let mut rms = pairs[0].clone();
        rms.key = format!(
            "m0conf/nodes/{}/processes/{key}/services/rms",
            Sample::NODE2_NAME
        );
        rms.value = b"70".to_vec();
        pairs.push(rms);
        let tree = hax_consul::schema::ConfTree::from_pairs(&pairs).expect("tree");
        view.inner.update(|s| s.set_conf(tree, 100));
        assert!(ep.has_changed().expect("open"));
        let r = ep.borrow_and_update().clone().expect("ready");
        assert_eq!(r.rm_fid, Fid::typed(FidType::Service, 1, 70));
        assert_eq!(r.rm_endpoint, "inet:tcp:10.0.0.2@21001");
        assert_eq!(r.confds.len(), 2);
        assert_eq!(r.quorum, 2);
    }

    #[test]
    fn no_reply_before_its_sources_are_read() {
        let mut s = super::super::sources::Sources {
            confds: Arc::new(vec![svc(Sample::CONSUL1, "9", "a", 1)]),
            leader_session_node: Some(Sample::NODE1_NAME.into()),
            ..Default::default()
        };
        s.set_conf(
            hax_consul::schema::ConfTree::from_pairs(&sample::conf_pairs()).expect("tree"),
            1,
        );
        s.missing.insert(PART_CONFDS.to_owned());
        let inner = super::super::ViewInner::new(s);
        let ep = lock(&inner.entrypoint).subscribe();
        assert!(ep.borrow().is_none());
        inner.update(|s| {
            s.missing.remove(PART_CONFDS);
        });
        assert!(ep.borrow().is_some());
    }
}
