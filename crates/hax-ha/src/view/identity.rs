//! Who this hax is: node name, Motr endpoint and fids. Each comes from the
//! configuration when set there, else from Consul, as the original derives
//! it: the `hax` catalog service registered on the local Consul node gives
//! the process fid key (its ServiceID), the HA service fid (the next key) and
//! the endpoint; the RM service is the principal RM of the entrypoint
//! configuration, which the cluster view derives: so the process part is
//! resolved first ([`resolve_process`]), the view started with it, and the
//! RM taken from the view ([`with_principal_rm`]).

use std::time::Duration;

use hax_consul::catalog::CatalogService;
use hax_consul::schema::{decode_decimal, ConfKey, HaxKv, ServiceType};
use hax_consul::ConsulClient;
use hax_core::{Fid, FidType};
use tokio_util::sync::CancellationToken;

use crate::model::facts::EntrypointSnapshot;
use crate::view::entrypoint::{service_endpoint, strip_node_suffix};

/// What the configuration sets of hax's identity; what is left unset comes
/// from Consul.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IdentityOverrides {
    /// Local node name.
    pub node: Option<String>,
    /// hax's Motr endpoint.
    pub endpoint: Option<String>,
    /// hax's process fid.
    pub process_fid: Option<Fid>,
    /// hax's HA service fid.
    pub ha_service_fid: Option<Fid>,
    /// The RM service fid.
    pub rm_service_fid: Option<Fid>,
}

/// hax's identity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// Local node name.
    pub node: String,
    /// hax's Motr endpoint.
    pub endpoint: String,
    /// hax's process fid.
    pub process_fid: Fid,
    /// hax's HA service fid.
    pub ha_service_fid: Fid,
    /// The principal RM service fid.
    pub rm_service_fid: Fid,
}

/// hax's identity but its RM: what the cluster view is started with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcessIdentity {
    /// Local node name.
    pub node: String,
    /// hax's Motr endpoint.
    pub endpoint: String,
    /// hax's process fid.
    pub process_fid: Fid,
    /// hax's HA service fid.
    pub ha_service_fid: Fid,
}

/// Why the identity is not known (yet).
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// Consul could not be asked.
    #[error("consul: {0}")]
    Consul(#[from] hax_consul::ConsulError),
    /// A KV value is malformed.
    #[error(transparent)]
    Schema(#[from] hax_consul::schema::SchemaError),
    /// No `hax` service on the local node.
    #[error("no hax service registered on Consul node {0}")]
    NoHaxService(String),
    /// The hax service's id is not a decimal fid key.
    #[error("hax service id {0:?} is not a decimal fid key")]
    BadServiceId(String),
    /// Stopped while waiting.
    #[error("stopped while resolving the identity")]
    Cancelled,
}

/// The local node name: the configured one, else the Consul agent's node
/// name.
pub async fn node_name(
    client: &ConsulClient,
    cfg: &IdentityOverrides,
) -> Result<String, hax_consul::ConsulError> {
    Ok(match &cfg.node {
        Some(n) => n.clone(),
        None => strip_node_suffix(&client.agent_self().await?.config.node_name).to_owned(),
    })
}

async fn from_consul(
    client: &ConsulClient,
    cfg: &IdentityOverrides,
) -> Result<(String, String, Fid, Fid), IdentityError> {
    let node = node_name(client, cfg).await?;
    if let (Some(ep), Some(p), Some(h)) = (&cfg.endpoint, cfg.process_fid, cfg.ha_service_fid) {
        return Ok((node, ep.clone(), p, h));
    }
    let svc = &local_hax_service(client, &node).await?;
    let key: u64 = svc
        .service_id
        .parse()
        .map_err(|_| IdentityError::BadServiceId(svc.service_id.clone()))?;
    let ha_service_fid = match cfg.ha_service_fid {
        Some(f) => f,
        None => ha_service_of(client, &node, key).await?,
    };
    Ok((
        node,
        cfg.endpoint
            .clone()
            .unwrap_or_else(|| service_endpoint(svc)),
        cfg.process_fid
            .unwrap_or(Fid::typed(FidType::Process, 1, key)),
        ha_service_fid,
    ))
}

/// The `hax` catalog service of `node`.
async fn local_hax_service(
    client: &ConsulClient,
    node: &str,
) -> Result<CatalogService, IdentityError> {
    // consul/node/<hostname> maps a host to its Consul node; without it the
    // node name is the Consul node name.
    let consul_node = HaxKv::new(client.clone())
        .consul_node_of(node)
        .await?
        .unwrap_or_else(|| node.to_owned());
    let services = client.catalog_service("hax").await?.value;
    // Equality, not the original's substring match (node1 vs node10).
    services
        .into_iter()
        .find(|s| strip_node_suffix(&s.node) == strip_node_suffix(&consul_node))
        .ok_or(IdentityError::NoHaxService(consul_node))
}

/// Where the original hax listened for HTTP, from the `hax` catalog service
/// of `node`: the host name of its Consul node (`:` suffix stripped) and the
/// port of its `http_port` meta (`None` without a usable one).
pub async fn catalog_http_address(
    client: &ConsulClient,
    node: &str,
) -> Result<(String, Option<u16>), IdentityError> {
    let svc = local_hax_service(client, node).await?;
    let port = svc
        .service_meta
        .get("http_port")
        .and_then(|p| p.trim().parse().ok());
    Ok((strip_node_suffix(&svc.node).to_owned(), port))
}

/// hax's HA service: the `ha` service cfgen lists under hax's process
/// (`m0conf/nodes/<node>/processes/<key>/services/ha`). Without that entry,
/// the key after the process's, which is what cfgen allocated when one
/// counter numbered every object; the original always assumed it, but cfgen
/// numbers each object type on its own now, so the HA service of process
/// `0x7200000000000001:0x0` is `0x7300000000000001:0x0`.
async fn ha_service_of(
    client: &ConsulClient,
    node: &str,
    process_key: u64,
) -> Result<Fid, IdentityError> {
    let key = ConfKey::ServiceKey {
        node_name: node.to_owned(),
        process_key,
        service_type: ServiceType::Ha.as_str().into(),
    }
    .to_key();
    let listed = client.kv_get(&key).await?.value;
    let service_key = match listed.map(|p| decode_decimal(&key, &p.value)) {
        Some(Ok(k)) => k,
        Some(Err(e)) => {
            tracing::warn!(%key, error = %e, "HA service key ignored: the key after hax's is used");
            process_key + 1
        }
        None => process_key + 1,
    };
    Ok(Fid::typed(FidType::Service, 1, service_key))
}

/// Resolves hax's process, endpoint and HA service, retrying every `retry`
/// while Consul does not know them yet (the original waits the same way),
/// until `cancel`.
pub async fn resolve_process(
    client: &ConsulClient,
    cfg: &IdentityOverrides,
    retry: Duration,
    cancel: &CancellationToken,
) -> Result<ProcessIdentity, IdentityError> {
    loop {
        match from_consul(client, cfg).await {
            Ok((node, endpoint, process_fid, ha_service_fid)) => {
                return Ok(ProcessIdentity {
                    node,
                    endpoint,
                    process_fid,
                    ha_service_fid,
                })
            }
            Err(e) => tracing::warn!(error = %e, "identity not known yet; retrying"),
        }
        tokio::select! {
            _ = cancel.cancelled() => return Err(IdentityError::Cancelled),
            _ = tokio::time::sleep(retry) => {}
        }
    }
}

/// Completes the identity with the principal RM: the configured one, else
/// that of the entrypoint configuration (the view's), waited for until
/// `cancel`.
pub async fn with_principal_rm(
    process: ProcessIdentity,
    cfg: &IdentityOverrides,
    entrypoint: &mut EntrypointSnapshot,
    cancel: &CancellationToken,
) -> Result<Identity, IdentityError> {
    let rm_service_fid = match cfg.rm_service_fid {
        Some(f) => f,
        None => {
            tracing::info!("waiting for the principal RM (leader session, confd, rms)");
            tokio::select! {
                _ = cancel.cancelled() => return Err(IdentityError::Cancelled),
                r = entrypoint.wait_for(Option::is_some) => match r {
                    Ok(rep) => rep.as_ref().map(|r| r.rm_fid).unwrap_or_default(),
                    Err(_) => return Err(IdentityError::Cancelled),
                },
            }
        }
    };
    let ProcessIdentity {
        node,
        endpoint,
        process_fid,
        ha_service_fid,
    } = process;
    let id = Identity {
        node,
        endpoint,
        process_fid,
        ha_service_fid,
        rm_service_fid,
    };
    tracing::info!(node = %id.node, endpoint = %id.endpoint, process = %id.process_fid, ha = %id.ha_service_fid, rm = %id.rm_service_fid, "identity");
    Ok(id)
}
