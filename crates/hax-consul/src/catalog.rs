//! Catalog, health, agent and status endpoints.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize};

use crate::client::{ConsulClient, Indexed, QueryOptions, Request};
use crate::error::Result;
use crate::kv::encode_segment;

/// Consul writes `null` for empty maps and lists in several answers.
fn null_as_default<'de, D, T>(d: D) -> std::result::Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// String-to-string metadata (service and node meta).
pub type Meta = BTreeMap<String, String>;

/// One instance of a service in the catalog (`/v1/catalog/service/<name>`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct CatalogService {
    /// Node name.
    pub node: String,
    /// Node address.
    #[serde(default)]
    pub address: String,
    /// Datacenter.
    #[serde(default)]
    pub datacenter: String,
    /// Service instance id (hax: the decimal fid key of the process).
    #[serde(rename = "ServiceID")]
    pub service_id: String,
    /// Service name.
    pub service_name: String,
    /// Service address (may be empty: then the node address applies).
    #[serde(default)]
    pub service_address: String,
    /// Service port.
    #[serde(default)]
    pub service_port: u16,
    /// Tags.
    #[serde(default, deserialize_with = "null_as_default")]
    pub service_tags: Vec<String>,
    /// Metadata.
    #[serde(default, deserialize_with = "null_as_default")]
    pub service_meta: Meta,
}

/// A node of the catalog.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct CatalogNode {
    /// Node id (UUID).
    #[serde(rename = "ID", default)]
    pub id: String,
    /// Node name.
    pub node: String,
    /// Address.
    #[serde(default)]
    pub address: String,
    /// Datacenter.
    #[serde(default)]
    pub datacenter: String,
    /// Metadata.
    #[serde(default, deserialize_with = "null_as_default")]
    pub meta: Meta,
}

/// Status of a health check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckStatus {
    /// Healthy.
    Passing,
    /// Degraded.
    Warning,
    /// Failing.
    Critical,
    /// In maintenance mode.
    Maintenance,
    /// A status this client does not know.
    #[serde(other)]
    Unknown,
}

/// One health check (`/v1/health/node`, `/v1/health/checks`, `checks` watches).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct HealthCheck {
    /// Node name.
    #[serde(default)]
    pub node: String,
    /// Check id (`serfHealth`, `service:<id>`...).
    #[serde(rename = "CheckID")]
    pub check_id: String,
    /// Check name.
    #[serde(default)]
    pub name: String,
    /// Status.
    pub status: CheckStatus,
    /// Notes.
    #[serde(default)]
    pub notes: String,
    /// Last output.
    #[serde(default)]
    pub output: String,
    /// Service id the check belongs to (empty for node checks).
    #[serde(rename = "ServiceID", default)]
    pub service_id: String,
    /// Service name the check belongs to.
    #[serde(default)]
    pub service_name: String,
}

/// The node part of a health service entry.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct HealthNode {
    /// Node id.
    #[serde(rename = "ID", default)]
    pub id: String,
    /// Node name.
    pub node: String,
    /// Address.
    #[serde(default)]
    pub address: String,
    /// Datacenter.
    #[serde(default)]
    pub datacenter: String,
    /// Metadata.
    #[serde(default, deserialize_with = "null_as_default")]
    pub meta: Meta,
}

/// The service part of a health service entry.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct HealthService {
    /// Instance id.
    #[serde(rename = "ID")]
    pub id: String,
    /// Service name.
    pub service: String,
    /// Tags.
    #[serde(default, deserialize_with = "null_as_default")]
    pub tags: Vec<String>,
    /// Address.
    #[serde(default)]
    pub address: String,
    /// Port.
    #[serde(default)]
    pub port: u16,
    /// Metadata.
    #[serde(default, deserialize_with = "null_as_default")]
    pub meta: Meta,
}

/// One element of `/v1/health/service/<name>` and of `service` watch payloads.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct ServiceEntry {
    /// The node running the instance.
    pub node: HealthNode,
    /// The instance.
    pub service: HealthService,
    /// Node and service checks, node checks (`serfHealth`) first.
    #[serde(default, deserialize_with = "null_as_default")]
    pub checks: Vec<HealthCheck>,
}

impl ServiceEntry {
    /// Worst status of the entry's checks (`Passing` when there are none).
    pub fn aggregated_status(&self) -> CheckStatus {
        let rank = |s: CheckStatus| match s {
            CheckStatus::Passing => 0,
            CheckStatus::Warning => 1,
            CheckStatus::Unknown => 2,
            CheckStatus::Maintenance => 3,
            CheckStatus::Critical => 4,
        };
        self.checks
            .iter()
            .map(|c| c.status)
            .max_by_key(|s| rank(*s))
            .unwrap_or(CheckStatus::Passing)
    }
}

/// The parts of `/v1/agent/self` hax uses.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct AgentSelf {
    /// The agent's configuration summary.
    pub config: AgentConfig,
    /// The whole answer, for fields not modelled here.
    #[serde(flatten)]
    pub other: BTreeMap<String, serde_json::Value>,
}

/// `Config` section of `/v1/agent/self`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct AgentConfig {
    /// Node name of the agent.
    pub node_name: String,
    /// Datacenter.
    #[serde(default)]
    pub datacenter: String,
    /// Node id.
    #[serde(rename = "NodeID", default)]
    pub node_id: String,
    /// Whether the agent is a server.
    #[serde(default)]
    pub server: bool,
    /// Consul version.
    #[serde(default)]
    pub version: String,
}

/// A check attached to a service registration.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct CheckRegistration {
    /// Check id (defaults to `service:<service id>`).
    #[serde(rename = "CheckID", skip_serializing_if = "Option::is_none")]
    pub check_id: Option<String>,
    /// Name.
    pub name: String,
    /// TTL of a TTL check (`"10s"`), updated with [`ConsulClient::agent_check_update`].
    #[serde(rename = "TTL", skip_serializing_if = "Option::is_none")]
    pub ttl: Option<String>,
    /// Initial status.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<CheckStatus>,
}

/// A service registration on the local agent.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct ServiceRegistration {
    /// Instance id.
    #[serde(rename = "ID")]
    pub id: String,
    /// Service name.
    pub name: String,
    /// Address.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub address: String,
    /// Port.
    pub port: u16,
    /// Tags.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// Metadata.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub meta: Meta,
    /// Checks.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub checks: Vec<CheckRegistration>,
}

impl ConsulClient {
    /// Names of all services with their tags.
    pub async fn catalog_services(&self) -> Result<Indexed<BTreeMap<String, Vec<String>>>> {
        let resp = self
            .call(Request::get("/v1/catalog/services".to_owned()))
            .await?;
        let map: Option<BTreeMap<String, Option<Vec<String>>>> = resp.json()?;
        Ok(Indexed {
            value: map
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.unwrap_or_default()))
                .collect(),
            index: resp.require_index()?,
        })
    }

    /// Instances of one service.
    pub async fn catalog_service(&self, name: &str) -> Result<Indexed<Vec<CatalogService>>> {
        self.catalog_service_with(name, &QueryOptions::default())
            .await
    }

    /// [`ConsulClient::catalog_service`] with query options.
    pub async fn catalog_service_with(
        &self,
        name: &str,
        opts: &QueryOptions,
    ) -> Result<Indexed<Vec<CatalogService>>> {
        let path = format!("/v1/catalog/service/{}", encode_segment(name)?);
        let resp = self.call(Request::get(path).options(opts)).await?;
        let list: Option<Vec<CatalogService>> = resp.json()?;
        Ok(Indexed {
            value: list.unwrap_or_default(),
            index: resp.require_index()?,
        })
    }

    /// All nodes.
    pub async fn catalog_nodes(&self) -> Result<Indexed<Vec<CatalogNode>>> {
        let resp = self
            .call(Request::get("/v1/catalog/nodes".to_owned()))
            .await?;
        let list: Option<Vec<CatalogNode>> = resp.json()?;
        Ok(Indexed {
            value: list.unwrap_or_default(),
            index: resp.require_index()?,
        })
    }

    /// Health entries (node, instance, checks) of one service; with
    /// `passing_only`, instances with any failing check are left out.
    pub async fn health_service(
        &self,
        name: &str,
        passing_only: bool,
    ) -> Result<Indexed<Vec<ServiceEntry>>> {
        self.health_service_with(name, passing_only, &QueryOptions::default())
            .await
    }

    /// [`ConsulClient::health_service`] with query options.
    pub async fn health_service_with(
        &self,
        name: &str,
        passing_only: bool,
        opts: &QueryOptions,
    ) -> Result<Indexed<Vec<ServiceEntry>>> {
        let path = format!("/v1/health/service/{}", encode_segment(name)?);
        let mut req = Request::get(path).options(opts);
        if passing_only {
            req = req.flag("passing");
        }
        let resp = self.call(req).await?;
        let list: Option<Vec<ServiceEntry>> = resp.json()?;
        Ok(Indexed {
            value: list.unwrap_or_default(),
            index: resp.require_index()?,
        })
    }

    /// Checks of one node (node checks and the checks of its services).
    pub async fn health_node(&self, node: &str) -> Result<Indexed<Vec<HealthCheck>>> {
        let path = format!("/v1/health/node/{}", encode_segment(node)?);
        let resp = self.call(Request::get(path)).await?;
        let list: Option<Vec<HealthCheck>> = resp.json()?;
        Ok(Indexed {
            value: list.unwrap_or_default(),
            index: resp.require_index()?,
        })
    }

    /// Checks of one service, on all nodes.
    pub async fn health_checks(
        &self,
        service: &str,
        opts: &QueryOptions,
    ) -> Result<Indexed<Vec<HealthCheck>>> {
        let path = format!("/v1/health/checks/{}", encode_segment(service)?);
        let resp = self.call(Request::get(path).options(opts)).await?;
        let list: Option<Vec<HealthCheck>> = resp.json()?;
        Ok(Indexed {
            value: list.unwrap_or_default(),
            index: resp.require_index()?,
        })
    }

    /// The agent's own description (node name, datacenter...).
    pub async fn agent_self(&self) -> Result<AgentSelf> {
        let resp = self.call(Request::get("/v1/agent/self".to_owned())).await?;
        resp.json()
    }

    /// Address (`ip:port`) of the Raft leader, or `None` while there is none.
    pub async fn status_leader(&self) -> Result<Option<String>> {
        let resp = self
            .call(Request::get("/v1/status/leader".to_owned()))
            .await?;
        let leader: String = resp.json()?;
        Ok(Some(leader).filter(|l| !l.is_empty()))
    }

    /// Registers (or replaces) a service on the local agent.
    pub async fn agent_service_register(&self, reg: &ServiceRegistration) -> Result<()> {
        let mut req = Request::put("/v1/agent/service/register".to_owned()).json(reg)?;
        // Registration replaces by id, so repeating it is harmless.
        req.retry = true;
        self.call(req).await?;
        Ok(())
    }

    /// Removes a service from the local agent.
    pub async fn agent_service_deregister(&self, id: &str) -> Result<()> {
        let path = format!("/v1/agent/service/deregister/{}", encode_segment(id)?);
        self.call(Request::put(path)).await?;
        Ok(())
    }

    /// Sets the status of a TTL check on the local agent.
    pub async fn agent_check_update(
        &self,
        check_id: &str,
        status: CheckStatus,
        output: &str,
    ) -> Result<()> {
        #[derive(Serialize)]
        #[serde(rename_all = "PascalCase")]
        struct Update<'a> {
            status: CheckStatus,
            output: &'a str,
        }
        let path = format!("/v1/agent/check/update/{}", encode_segment(check_id)?);
        let mut req = Request::put(path).json(&Update { status, output })?;
        req.retry = true;
        self.call(req).await?;
        Ok(())
    }

    /// Asks the agent to reload its configuration (watches fire again).
    pub async fn agent_reload(&self) -> Result<()> {
        self.call(Request::put("/v1/agent/reload".to_owned()))
            .await?;
        Ok(())
    }

    /// Waits until the cluster has a leader, polling with a deadline.
    pub async fn wait_for_leader(&self, timeout: Duration) -> Result<String> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut backoff =
            crate::backoff::Backoff::new(Duration::from_millis(20), Duration::from_millis(250));
        loop {
            let last = match self.status_leader().await {
                Ok(Some(leader)) => return Ok(leader),
                Ok(None) => None,
                Err(e) => Some(e),
            };
            let delay = backoff.next_pause();
            if tokio::time::Instant::now() + delay > deadline {
                return Err(last.unwrap_or(crate::ConsulError::NoLeader {
                    path: "/v1/status/leader".to_owned(),
                }));
            }
            tokio::time::sleep(delay).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_entry_with_nulls_decodes() {
        let json = r#"[{"Node":{"ID":"x","Node":"n1","Address":"127.0.0.1","Datacenter":"dc1","Meta":null},
            "Service":{"ID":"6","Service":"hax","Tags":null,"Address":"","Meta":null,"Port":22001},
            "Checks":[{"Node":"n1","CheckID":"serfHealth","Name":"Serf","Status":"passing","ServiceID":""},
                      {"Node":"n1","CheckID":"service:6","Name":"s","Status":"critical","ServiceID":"6"},
                      {"Node":"n1","CheckID":"c","Name":"c","Status":"weird","ServiceID":"6"}]}]"#;
        let entries: Vec<ServiceEntry> = serde_json::from_str(json).expect("decodes");
        assert_eq!(entries[0].service.id, "6");
        assert_eq!(entries[0].checks[2].status, CheckStatus::Unknown);
        assert_eq!(entries[0].aggregated_status(), CheckStatus::Critical);
    }
}
