//! A small client of the daemon's HTTP API: where the daemon listens (from
//! `--daemon` or `http.bind`), its bearer token on requests that change
//! something, and its error answers turned into [`CmdError`]s.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use hax_consul::server::ApiError;
use hax_consul::AclToken;

use super::CmdError;
use crate::cli::ClientArgs;
use crate::config::Config;
use crate::listen::BindAddr;

/// The daemon's API.
#[derive(Debug, Clone)]
pub struct DaemonApi {
    base: String,
    from: &'static str,
    hint: &'static str,
    token: Option<AclToken>,
    web: reqwest::Client,
}

/// The address a client reaches a server bound to `bind` at: an
/// unspecified address (every address) is reached on loopback.
pub fn reachable(bind: SocketAddr) -> SocketAddr {
    let ip = match bind.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, bind.port())
}

/// The URL of a server bound to `bind`.
fn url_of(bind: &BindAddr) -> String {
    match bind.host().parse::<IpAddr>() {
        Ok(ip) => format!("http://{}", reachable(SocketAddr::new(ip, bind.port()))),
        Err(_) => format!("http://{bind}"),
    }
}

/// Where the daemon listens without `http.bind`, as it decides it
/// ([`crate::listen::address`]): the local `hax` catalog service's node and
/// `http_port`; `None` when Consul does not tell.
async fn from_catalog(cfg: &Config) -> Option<BindAddr> {
    let cc = cfg.consul_config(Duration::from_secs(5), cfg.consul_token().ok()?);
    let client = hax_consul::ConsulClient::new(cc).ok()?;
    let node = match &cfg.identity.node {
        Some(n) => n.clone(),
        None => client.agent_self().await.ok()?.config.node_name,
    };
    let node = hax_ha::view::entrypoint::strip_node_suffix(&node).to_owned();
    let (host, port) = hax_ha::view::identity::catalog_http_address(&client, &node)
        .await
        .ok()?;
    Some(BindAddr::new(
        host,
        port.unwrap_or(crate::listen::DEFAULT_PORT),
    ))
}

/// The API's base URL and where it came from: `--daemon` (`host:port` or
/// an `http://` URL), `http.bind`, else `catalog` (the daemon's choice
/// without `http.bind`, when known) or `127.0.0.1:8008`.
pub fn base_url(
    daemon: Option<&str>,
    cfg: &Config,
    catalog: Option<&BindAddr>,
) -> Result<(String, &'static str), CmdError> {
    match daemon {
        Some(given) => {
            let given = given.trim().trim_end_matches('/');
            if given.is_empty() {
                return Err(CmdError::Usage("--daemon: empty address".into()));
            }
            if given.starts_with("https://") {
                return Err(CmdError::Usage(format!(
                    "--daemon {given}: the daemon serves plain HTTP (http://)"
                )));
            }
            let url = if given.starts_with("http://") {
                given.to_owned()
            } else if given.contains("://") {
                return Err(CmdError::Usage(format!(
                    "--daemon {given}: expected host:port or an http:// URL"
                )));
            } else {
                format!("http://{given}")
            };
            Ok((url, "--daemon"))
        }
        None => Ok(match (&cfg.http.bind, catalog) {
            (Some(bind), _) => (url_of(bind), "http.bind"),
            (None, Some(bind)) => (url_of(bind), "the hax catalog service (no http.bind)"),
            (None, None) => (
                url_of(&BindAddr::new("127.0.0.1", crate::listen::DEFAULT_PORT)),
                "the default (no http.bind, no hax catalog service)",
            ),
        }),
    }
}

impl DaemonApi {
    /// The API of the daemon `args` and `cfg` name. `hint` ends the message
    /// of an unreachable daemon (with its leading separator, or empty).
    pub async fn new(
        cfg: &Config,
        args: &ClientArgs,
        hint: &'static str,
    ) -> Result<Self, CmdError> {
        let catalog = match (&args.daemon, &cfg.http.bind) {
            (None, None) => from_catalog(cfg).await,
            _ => None,
        };
        let (base, from) = base_url(args.daemon.as_deref(), cfg, catalog.as_ref())?;
        let web = reqwest::Client::builder()
            .timeout(super::timeout(args.timeout))
            .connect_timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| CmdError::Usage(format!("cannot build the HTTP client: {e}")))?;
        Ok(DaemonApi {
            base,
            from,
            hint,
            token: None,
            web,
        })
    }

    /// Sends `token` as `Authorization: Bearer` with the requests that
    /// change something.
    pub fn with_token(mut self, token: Option<AclToken>) -> Self {
        self.token = token;
        self
    }

    /// The base URL, for messages.
    pub fn url(&self) -> &str {
        &self.base
    }

    /// `GET path`: the answer's body when it is a success.
    pub async fn get(&self, path: &str) -> Result<String, CmdError> {
        let req = self.web.get(format!("{}{path}", self.base));
        self.send(req).await
    }

    /// `POST path` with the JSON `body` (and the token): the answer's body
    /// when it is a success.
    pub async fn post_json(
        &self,
        path: &str,
        body: &serde_json::Value,
    ) -> Result<String, CmdError> {
        let mut req = self
            .web
            .post(format!("{}{path}", self.base))
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body.to_string());
        if let Some(t) = &self.token {
            req = req.header(
                reqwest::header::AUTHORIZATION,
                format!("Bearer {}", t.expose_secret()),
            );
        }
        self.send(req).await
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> Result<String, CmdError> {
        let unreachable = |e: reqwest::Error| CmdError::Unreachable {
            url: self.base.clone(),
            from: self.from,
            reason: cause(&e),
            hint: self.hint,
        };
        let resp = req.send().await.map_err(unreachable)?;
        let status = resp.status();
        let body = resp.text().await.map_err(unreachable)?;
        if status.is_success() {
            return Ok(body);
        }
        Err(CmdError::Refused {
            url: self.base.clone(),
            status: status.as_u16(),
            message: error_message(&body),
        })
    }
}

/// What an error answer says: `reason: error_message` of an [`ApiError`],
/// else the body itself.
pub fn error_message(body: &str) -> String {
    match serde_json::from_str::<ApiError>(body) {
        Ok(e) if e.reason.is_empty() => e.error_message,
        Ok(e) => format!("{}: {}", e.reason, e.error_message),
        Err(_) if body.trim().is_empty() => "no explanation given".to_owned(),
        Err(_) => body.trim().chars().take(500).collect(),
    }
}

/// The innermost cause of a request's failure ("Connection refused (os
/// error 111)"), which says more than reqwest's outer message.
fn cause(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        return "no answer in time (--timeout)".to_owned();
    }
    let mut last: &dyn std::error::Error = e;
    while let Some(next) = last.source() {
        last = next;
    }
    last.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bound_everywhere_is_reached_on_loopback() {
        let r = |a: &str| reachable(a.parse().unwrap()).to_string();
        assert_eq!(r("0.0.0.0:8008"), "127.0.0.1:8008");
        assert_eq!(r("[::]:8008"), "[::1]:8008");
        assert_eq!(r("10.0.0.5:9000"), "10.0.0.5:9000");
    }

    #[test]
    fn daemon_addresses() {
        let cfg = Config::default();
        let url = |d: Option<&str>| base_url(d, &cfg, None).map_err(|e| e.to_string());
        assert_eq!(url(None).unwrap().0, "http://127.0.0.1:8008");
        let node = BindAddr::new("srvnode-1", 8010);
        assert_eq!(
            base_url(None, &cfg, Some(&node)).unwrap().0,
            "http://srvnode-1:8010"
        );
        let mut bound = Config::default();
        bound.http.bind = Some("0.0.0.0:9000".parse().unwrap());
        assert_eq!(
            base_url(None, &bound, Some(&node)).unwrap(),
            ("http://127.0.0.1:9000".to_owned(), "http.bind")
        );
        assert_eq!(
            url(Some("10.0.0.1:9000")).unwrap().0,
            "http://10.0.0.1:9000"
        );
        assert_eq!(
            url(Some("http://node-1:9000/")).unwrap().0,
            "http://node-1:9000"
        );
        assert!(url(Some("https://n:1")).unwrap_err().contains("plain HTTP"));
        assert!(url(Some("ftp://n:1")).unwrap_err().contains("host:port"));
        assert!(url(Some(" ")).unwrap_err().contains("empty"));
    }

    #[test]
    fn error_answers_are_explained() {
        let body = r#"{"status_code": 404, "error_type": "not_found", "error_message": "0x6f00000000000001:0x4d is not in Motr's configuration", "reason": "Unknown pool"}"#;
        assert_eq!(
            error_message(body),
            "Unknown pool: 0x6f00000000000001:0x4d is not in Motr's configuration"
        );
        assert_eq!(error_message("plain text\n"), "plain text");
        assert_eq!(error_message(""), "no explanation given");
    }
}
