//! The configuration an entrypoint reply carries, kept up to date from Consul
//! so that entrypoint requests are answered from memory: the confd servers
//! (catalog service `confd`), the quorum, and the principal RM (the confd on
//! the node whose session holds the `leader` lock, and its `rms` service).

use std::sync::Arc;

use hax_consul::catalog::CatalogService;
use hax_consul::schema::{keys, ConfTree};
use hax_consul::watch::{self, CatalogServiceSource, WatchConfig, Watcher};
use hax_consul::{ConsulClient, KvPair};
use hax_core::{Confd, EntrypointReply, Fid, FidType};
use tokio::sync::watch as tokio_watch;
use tokio_util::sync::CancellationToken;

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

/// Builds the reply from the confd services, the principal RM node (the
/// leader session's node) and the configuration tree.
pub fn build_reply(
    confds: &[CatalogService],
    principal_rm: Option<&str>,
    conf: &ConfTree,
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
    let rms_key = conf
        .services_of_process_key(*rm_process_key)
        .into_iter()
        .find_map(|(t, k)| (t == "rms").then_some(k))
        .ok_or(NotReady::NoRmService(*rm_process_key))?;
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

/// Keeps an [`EntrypointSnapshot`] up to date from Consul until `cancel`.
pub fn spawn(client: ConsulClient, cancel: &CancellationToken) -> EntrypointSnapshot {
    let (tx, rx) = tokio_watch::channel(None);
    let cancel = cancel.child_token();
    let cfg = WatchConfig::default();
    let leader = watch::watch_key(client.clone(), keys::LEADER, cfg, &cancel);
    let confds = Watcher::spawn(
        client.clone(),
        CatalogServiceSource("confd".into()),
        cfg,
        &cancel,
    );
    let conf = watch::watch_prefix(client.clone(), keys::CONF_PREFIX, cfg, &cancel);
    tokio::spawn(async move {
        let mut leader_rx = leader.subscribe();
        let mut confd_rx = confds.subscribe();
        let mut conf_rx = conf.subscribe();
        let mut last: Option<Result<EntrypointReply, NotReady>> = None;
        loop {
            let leader_kv: Option<KvPair> = (*leader_rx.borrow_and_update().value).clone();
            let confd_list: Arc<Vec<CatalogService>> = confd_rx.borrow_and_update().value.clone();
            let pairs: Vec<KvPair> = conf_rx
                .borrow_and_update()
                .value
                .values()
                .cloned()
                .collect();
            let rm_node = match leader_kv.and_then(|kv| kv.session) {
                Some(id) => match client.session_info(&id).await {
                    Ok(info) => info.value.map(|s| strip_node_suffix(&s.node).to_owned()),
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot read the leader session");
                        None
                    }
                },
                None => None,
            };
            // Entry by entry: one value hax cannot use must not keep every
            // entrypoint request waiting. The view reports what is left out.
            let tree = ConfTree::from_pairs_tolerant(&pairs);
            let result = build_reply(&confd_list, rm_node.as_deref(), &tree);
            if last.as_ref() != Some(&result) {
                match &result {
                    Ok(r) => {
                        tracing::info!(confds = r.confds.len(), quorum = r.quorum, rm = %r.rm_fid, rm_endpoint = %r.rm_endpoint, "entrypoint configuration ready")
                    }
                    Err(e) => tracing::warn!(reason = %e, "entrypoint configuration not ready"),
                }
                let _ = tx.send(result.clone().ok().map(Arc::new));
                last = Some(result);
            }
            tokio::select! {
                _ = cancel.cancelled() => break,
                r = leader_rx.changed() => if r.is_err() { break },
                r = confd_rx.changed() => if r.is_err() { break },
                r = conf_rx.changed() => if r.is_err() { break },
            }
        }
        drop((leader, confds, conf));
    });
    rx
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(node: &str, id: &str, addr: &str, port: u16) -> CatalogService {
        serde_json::from_value(serde_json::json!({
            "Node": node, "Address": "10.0.0.1", "ServiceID": id, "ServiceName": "confd",
            "ServiceAddress": addr, "ServicePort": port,
            "ServiceMeta": {"transport_type": "libfab"}
        }))
        .expect("service")
    }

    fn tree() -> ConfTree {
        let pair = |k: &str, v: &str| KvPair {
            key: k.into(),
            value: v.as_bytes().to_vec(),
            flags: 0,
            create_index: 1,
            modify_index: 1,
            lock_index: 0,
            session: None,
        };
        ConfTree::from_pairs(&[
            pair("m0conf/nodes/srvnode-1/processes/6/services/rms", "9"),
            pair("m0conf/nodes/srvnode-2/processes/16/services/rms", "19"),
        ])
        .expect("tree")
    }

    #[test]
    fn reply_lists_confds_and_the_principal_rm() {
        let confds = vec![
            svc("srvnode-1", "6", "inet:tcp:10.0.0.1", 21001),
            svc("srvnode-2:0a1b2c3d", "16", "inet:tcp:10.0.0.2", 21001),
            svc("srvnode-1", "6", "inet:tcp:10.0.0.1", 21001),
        ];
        let r = build_reply(&confds, Some("srvnode-2"), &tree()).expect("ready");
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
        assert_eq!(build_reply(&[], Some("n"), &tree()), Err(NotReady::NoConfd));
        assert_eq!(build_reply(&confds, None, &tree()), Err(NotReady::NoLeader));
        assert_eq!(
            build_reply(&confds, Some("srvnode-3"), &tree()),
            Err(NotReady::NoRmConfd("srvnode-3".into()))
        );
        let no_rms = ConfTree::from_pairs(&[]).expect("empty");
        assert_eq!(
            build_reply(&confds, Some("srvnode-1"), &no_rms),
            Err(NotReady::NoRmService(6))
        );
        let bad = vec![svc("srvnode-1", "six", "a", 1)];
        assert_eq!(
            build_reply(&bad, Some("srvnode-1"), &tree()),
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
}
