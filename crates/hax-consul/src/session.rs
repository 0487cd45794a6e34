//! Sessions: the liveness handles behind KV locks.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::client::{ConsulClient, Indexed, Request};
use crate::error::{ConsulError, Result};
use crate::kv::encode_segment;

/// What happens to the locks of a session when it is invalidated.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SessionBehavior {
    /// Locks are released; the keys stay.
    #[default]
    Release,
    /// Locked keys are deleted.
    Delete,
}

/// Parameters of a new session.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionRequest {
    /// Human-readable name.
    pub name: Option<String>,
    /// Node the session is tied to (the agent's own if unset).
    pub node: Option<String>,
    /// Time to live, between 10 s and 24 h; `None` for a session that lives as
    /// long as its checks pass.
    pub ttl: Option<Duration>,
    /// Lock-delay after invalidation (Consul's default is 15 s).
    pub lock_delay: Option<Duration>,
    /// Behaviour on invalidation.
    pub behavior: SessionBehavior,
    /// Health checks tying the session's life (Consul's default: `serfHealth`).
    pub checks: Option<Vec<String>>,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct WireSessionRequest {
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    node: Option<String>,
    #[serde(rename = "TTL", skip_serializing_if = "Option::is_none")]
    ttl: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    lock_delay: Option<String>,
    behavior: SessionBehavior,
    #[serde(skip_serializing_if = "Option::is_none")]
    checks: Option<Vec<String>>,
}

/// Go duration text; whole seconds as `"10s"`, the form Consul echoes back.
fn go_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms % 1000 == 0 {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

/// A session as Consul describes it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct SessionInfo {
    /// Session id.
    #[serde(rename = "ID")]
    pub id: String,
    /// Name.
    #[serde(default)]
    pub name: String,
    /// Node the session belongs to.
    pub node: String,
    /// Lock-delay in nanoseconds.
    #[serde(default)]
    pub lock_delay: u64,
    /// Behaviour on invalidation.
    #[serde(default)]
    pub behavior: SessionBehavior,
    /// TTL as Consul prints it (`"10s"`), empty when none.
    #[serde(rename = "TTL", default)]
    pub ttl: String,
    /// Health checks, as Consul before 1.7 lists them.
    #[serde(default)]
    pub checks: Option<Vec<String>>,
    /// Node health checks (Consul 1.7 and later list the checks given as
    /// `Checks` here).
    #[serde(default)]
    pub node_checks: Option<Vec<String>>,
    /// Service health checks (Consul 1.7 and later).
    #[serde(default)]
    pub service_checks: Option<Vec<ServiceCheck>>,
    /// Creation index.
    #[serde(default)]
    pub create_index: u64,
}

/// A service check a session is tied to.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ServiceCheck {
    /// Check id.
    #[serde(rename = "ID")]
    pub id: String,
    /// Namespace (Consul Enterprise), empty otherwise.
    #[serde(default)]
    pub namespace: String,
}

impl SessionInfo {
    /// The ids of every check the session is tied to, whichever field the
    /// agent's version lists them in.
    pub fn check_ids(&self) -> Vec<&str> {
        let listed = self.checks.iter().chain(&self.node_checks).flatten();
        listed
            .map(String::as_str)
            .chain(self.service_checks.iter().flatten().map(|c| c.id.as_str()))
            .collect()
    }
}

#[derive(Deserialize)]
struct CreatedSession {
    #[serde(rename = "ID")]
    id: String,
}

fn check_ttl(ttl: Duration) -> Result<()> {
    if ttl < Duration::from_secs(10) || ttl > Duration::from_secs(86_400) {
        return Err(ConsulError::Config(format!(
            "session TTL {ttl:?} is outside Consul's range of 10s to 24h"
        )));
    }
    Ok(())
}

impl ConsulClient {
    /// Creates a session and returns its id. Not retried: a retry after a lost
    /// answer would leak a session.
    pub async fn session_create(&self, req: &SessionRequest) -> Result<String> {
        if let Some(ttl) = req.ttl {
            check_ttl(ttl)?;
        }
        let wire = WireSessionRequest {
            name: req.name.clone(),
            node: req.node.clone(),
            ttl: req.ttl.map(go_duration),
            lock_delay: req.lock_delay.map(go_duration),
            behavior: req.behavior,
            checks: req.checks.clone(),
        };
        let resp = self
            .call(Request::put("/v1/session/create".to_owned()).json(&wire)?)
            .await?;
        let created: CreatedSession = resp.json()?;
        Ok(created.id)
    }

    /// Renews a TTL session. A session that has expired or was destroyed is
    /// [`ConsulError::NotFound`]. Idempotent, so transient failures are retried.
    pub async fn session_renew(&self, id: &str) -> Result<SessionInfo> {
        let path = format!("/v1/session/renew/{}", encode_segment(id)?);
        let mut req = Request::put(path);
        req.retry = true;
        let resp = self.call(req).await?;
        let infos: Option<Vec<SessionInfo>> = resp.json()?;
        infos
            .and_then(|mut v| v.pop())
            .ok_or_else(|| ConsulError::NotFound { path: resp.path })
    }

    /// Destroys a session (its locks are handled per its behaviour). Destroying
    /// a missing session succeeds.
    pub async fn session_destroy(&self, id: &str) -> Result<()> {
        let path = format!("/v1/session/destroy/{}", encode_segment(id)?);
        let mut req = Request::put(path);
        // Destroying twice is harmless, so a retry is safe.
        req.retry = true;
        self.call(req).await?;
        Ok(())
    }

    /// Describes a session; `None` when it does not exist (any more).
    pub async fn session_info(&self, id: &str) -> Result<Indexed<Option<SessionInfo>>> {
        let path = format!("/v1/session/info/{}", encode_segment(id)?);
        let resp = self.call(Request::get(path)).await?;
        let infos: Option<Vec<SessionInfo>> = resp.json()?;
        Ok(Indexed {
            value: infos.and_then(|mut v| v.pop()),
            index: resp.require_index()?,
        })
    }

    /// Every session of the datacenter.
    pub async fn session_list(&self) -> Result<Indexed<Vec<SessionInfo>>> {
        let resp = self
            .call(Request::get("/v1/session/list".to_owned()))
            .await?;
        let infos: Option<Vec<SessionInfo>> = resp.json()?;
        Ok(Indexed {
            value: infos.unwrap_or_default(),
            index: resp.require_index()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl_range_is_checked_before_sending() {
        assert!(check_ttl(Duration::from_secs(9)).is_err());
        assert!(check_ttl(Duration::from_secs(10)).is_ok());
        assert!(check_ttl(Duration::from_secs(86_401)).is_err());
    }

    #[test]
    fn checks_are_read_from_every_field() {
        let info: SessionInfo = serde_json::from_str(
            r#"{"ID":"s","Node":"vm","NodeChecks":["serfHealth","service:9"],
               "ServiceChecks":[{"ID":"service:6","Namespace":""}]}"#,
        )
        .expect("1.8 form");
        assert_eq!(info.check_ids(), ["serfHealth", "service:9", "service:6"]);
        let old: SessionInfo =
            serde_json::from_str(r#"{"ID":"s","Node":"vm","Checks":["serfHealth"]}"#)
                .expect("older form");
        assert_eq!(old.check_ids(), ["serfHealth"]);
    }

    #[test]
    fn request_wire_form() {
        let wire = WireSessionRequest {
            name: Some("leader".into()),
            node: None,
            ttl: Some(go_duration(Duration::from_secs(10))),
            lock_delay: Some(go_duration(Duration::from_secs(2))),
            behavior: SessionBehavior::Delete,
            checks: Some(vec![]),
        };
        assert_eq!(
            serde_json::to_string(&wire).expect("json"),
            r#"{"Name":"leader","TTL":"10s","LockDelay":"2s","Behavior":"delete","Checks":[]}"#
        );
    }
}
