//! The HTTP client core: configuration, request execution, error mapping,
//! timeouts and retries. The endpoint families live in their own modules
//! (`kv`, `txn`, `session`, `catalog`) as further `impl ConsulClient` blocks.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use serde::de::DeserializeOwned;

use crate::error::{ConsulError, Result};

/// Header carrying the ACL token.
const TOKEN_HEADER: &str = "X-Consul-Token";
/// Header carrying the Raft index of the answer.
const INDEX_HEADER: &str = "X-Consul-Index";
/// Consul caps the `wait` of blocking queries at 10 minutes.
pub const MAX_WAIT: Duration = Duration::from_secs(600);
/// Default `wait` of blocking queries when none is given (Consul's own default).
pub const DEFAULT_WAIT: Duration = Duration::from_secs(300);
/// How much of an answer body is kept in error values.
const MAX_ERROR_BODY: usize = 512;

/// A Consul ACL token. Its `Debug` and `Display` never show the secret, so it
/// can sit in configuration structs that are logged.
#[derive(Clone, PartialEq, Eq)]
pub struct AclToken(String);

impl AclToken {
    /// Wraps a token.
    pub fn new(secret: impl Into<String>) -> Self {
        AclToken(secret.into())
    }

    /// The secret itself, for sending it.
    pub fn expose_secret(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for AclToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AclToken(<redacted>)")
    }
}

impl fmt::Display for AclToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Capped exponential backoff with jitter, used for idempotent reads only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Total attempts, including the first one (1 = no retry).
    pub max_attempts: u32,
    /// Delay before the first retry (before jitter).
    pub initial_delay: Duration,
    /// Upper bound of any delay.
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 4,
            initial_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(2),
        }
    }
}

impl RetryPolicy {
    /// No retries at all.
    pub fn none() -> Self {
        RetryPolicy {
            max_attempts: 1,
            ..RetryPolicy::default()
        }
    }

    /// Delay before retry number `retry` (0-based): `initial * 2^retry`, capped
    /// at `max_delay`, then "equal jitter" (half fixed, half random) so that many
    /// clients failing together do not retry in lockstep.
    pub fn delay(&self, retry: u32) -> Duration {
        crate::backoff::Backoff::new(self.initial_delay, self.max_delay)
            .jittered()
            .pause_of(retry)
    }
}

/// Read consistency mode of a query.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Consistency {
    /// Consul's default mode (leader, without an extra round of quorum checks).
    #[default]
    Default,
    /// `?consistent`: linearizable read.
    Consistent,
    /// `?stale`: any server may answer; works without a leader.
    Stale,
}

/// Options of a read: blocking-query index and wait, and consistency.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueryOptions {
    /// Block until the index moves past this value. `None` or `Some(0)` means a
    /// plain read: an index of 0 never blocks.
    pub index: Option<u64>,
    /// Longest time to block (capped at [`MAX_WAIT`]); [`DEFAULT_WAIT`] if unset.
    pub wait: Option<Duration>,
    /// Consistency mode.
    pub consistency: Consistency,
}

impl QueryOptions {
    /// A blocking read after `index`, waiting at most `wait`.
    pub fn blocking(index: u64, wait: Duration) -> Self {
        QueryOptions {
            index: Some(index),
            wait: Some(wait),
            consistency: Consistency::Default,
        }
    }

    /// The index actually sent, if this is a blocking query.
    pub fn blocking_index(&self) -> Option<u64> {
        self.index.filter(|i| *i > 0)
    }

    /// The wait actually sent with a blocking query.
    pub fn effective_wait(&self) -> Duration {
        self.wait.unwrap_or(DEFAULT_WAIT).min(MAX_WAIT)
    }
}

/// A value together with the `X-Consul-Index` of the answer that carried it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Indexed<T> {
    /// The decoded answer.
    pub value: T,
    /// The Raft index of the answer (for the next blocking query).
    pub index: u64,
}

/// How to reach the agent.
#[derive(Debug, Clone)]
pub struct ConsulConfig {
    /// Agent address: `host:port` or a full `http://` / `https://` URL.
    pub address: String,
    /// ACL token, sent as `X-Consul-Token`.
    pub token: Option<AclToken>,
    /// Datacenter to query (`?dc=`); the agent's own if unset.
    pub datacenter: Option<String>,
    /// Timeout of every non-blocking request (and the margin added to the
    /// `wait` of blocking queries).
    pub request_timeout: Duration,
    /// Timeout of establishing a TCP connection.
    pub connect_timeout: Duration,
    /// Retries of idempotent reads.
    pub retry: RetryPolicy,
    /// Idle connections kept open for reuse. A burst of requests opens a
    /// connection each; only this many stay once it is over, so that the
    /// agent's per-client limit (`limits.http_max_conns_per_client`, 200 by
    /// default) is not held by connections nobody uses.
    pub pool_max_idle: usize,
    /// How long an idle connection is kept for reuse.
    pub pool_idle_timeout: Duration,
}

impl Default for ConsulConfig {
    fn default() -> Self {
        ConsulConfig {
            address: "http://127.0.0.1:8500".to_owned(),
            token: None,
            datacenter: None,
            request_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(2),
            retry: RetryPolicy::default(),
            // hax's steady load (a batch of writes, a few reads) reuses
            // these; blocking queries hold their connections while they
            // wait, not as idle ones.
            pool_max_idle: 16,
            pool_idle_timeout: Duration::from_secs(30),
        }
    }
}

impl ConsulConfig {
    /// Configuration for an agent at `address`, other settings default.
    pub fn new(address: impl Into<String>) -> Self {
        ConsulConfig {
            address: address.into(),
            ..ConsulConfig::default()
        }
    }

    /// Reads the variables the Consul CLI uses: `CONSUL_HTTP_ADDR`,
    /// `CONSUL_HTTP_SSL` (`true` selects https for a bare `host:port`) and
    /// `CONSUL_HTTP_TOKEN`. Unset variables keep the defaults.
    pub fn from_env() -> Self {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Like [`ConsulConfig::from_env`], with the variables given by `lookup`.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Self {
        let mut config = ConsulConfig::default();
        let ssl = lookup("CONSUL_HTTP_SSL")
            .map(|v| matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes"))
            .unwrap_or(false);
        if let Some(addr) = lookup("CONSUL_HTTP_ADDR").filter(|a| !a.is_empty()) {
            config.address = if addr.contains("://") {
                addr
            } else if ssl {
                format!("https://{addr}")
            } else {
                format!("http://{addr}")
            };
        } else if ssl {
            config.address = "https://127.0.0.1:8501".to_owned();
        }
        config.token = lookup("CONSUL_HTTP_TOKEN")
            .filter(|t| !t.is_empty())
            .map(AclToken::new);
        config
    }

    /// Checks what [`ConsulClient::new`] checks (the address, and the
    /// `tls` feature an https address needs), without building a client.
    pub fn check(&self) -> Result<()> {
        self.usable_base_url().map(drop)
    }

    fn usable_base_url(&self) -> Result<String> {
        let base = self.base_url()?;
        if base.starts_with("https://") && !cfg!(feature = "tls") {
            return Err(ConsulError::Config(
                "https address given, but hax-consul was built without the `tls` feature"
                    .to_owned(),
            ));
        }
        Ok(base)
    }

    /// The base URL, validated, without a trailing slash.
    fn base_url(&self) -> Result<String> {
        let raw = self.address.trim();
        let with_scheme = if raw.contains("://") {
            raw.to_owned()
        } else {
            format!("http://{raw}")
        };
        let url = reqwest::Url::parse(&with_scheme)
            .map_err(|e| ConsulError::Config(format!("address {raw:?}: {e}")))?;
        match url.scheme() {
            "http" | "https" => {}
            other => {
                return Err(ConsulError::Config(format!(
                    "address {raw:?}: unsupported scheme {other:?}"
                )))
            }
        }
        if url.host_str().is_none() {
            return Err(ConsulError::Config(format!("address {raw:?} has no host")));
        }
        if url.path() != "/" || url.query().is_some() {
            return Err(ConsulError::Config(format!(
                "address {raw:?} must not have a path or query"
            )));
        }
        Ok(with_scheme.trim_end_matches('/').to_owned())
    }
}

/// A typed client of one Consul agent's HTTP API. Cheap to clone.
#[derive(Clone)]
pub struct ConsulClient {
    inner: Arc<Inner>,
}

struct Inner {
    http: reqwest::Client,
    base: String,
    config: ConsulConfig,
}

impl fmt::Debug for ConsulClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConsulClient")
            .field("base", &self.inner.base)
            .field("token", &self.inner.config.token)
            .finish()
    }
}

/// One request as built by an endpoint method.
#[derive(Debug)]
pub(crate) struct Request {
    pub method: Method,
    /// Path starting with `/v1/`, already percent-encoded.
    pub path: String,
    pub query: Vec<(&'static str, String)>,
    pub body: Option<Vec<u8>>,
    /// Idempotent reads may be retried on transient errors.
    pub retry: bool,
    /// Statuses handed back to the caller instead of being mapped to errors.
    pub accept: &'static [StatusCode],
    /// Blocking-query wait, if any, to size the timeout.
    pub wait: Option<Duration>,
}

impl Request {
    pub fn get(path: String) -> Self {
        Request {
            method: Method::GET,
            path,
            query: Vec::new(),
            body: None,
            retry: true,
            accept: &[],
            wait: None,
        }
    }

    pub fn put(path: String) -> Self {
        Request {
            method: Method::PUT,
            retry: false,
            ..Request::get(path)
        }
    }

    pub fn delete(path: String) -> Self {
        Request {
            method: Method::DELETE,
            retry: false,
            ..Request::get(path)
        }
    }

    pub fn query(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.query.push((name, value.into()));
        self
    }

    pub fn flag(self, name: &'static str) -> Self {
        self.query(name, "")
    }

    pub fn body(mut self, body: Vec<u8>) -> Self {
        self.body = Some(body);
        self
    }

    pub fn json<T: serde::Serialize>(self, value: &T) -> Result<Self> {
        let body = serde_json::to_vec(value).map_err(|e| ConsulError::Decode {
            what: format!("request body of {}", self.path),
            reason: e.to_string(),
        })?;
        Ok(self.body(body))
    }

    pub fn accept(mut self, statuses: &'static [StatusCode]) -> Self {
        self.accept = statuses;
        self
    }

    /// Adds blocking-query and consistency parameters.
    pub fn options(mut self, opts: &QueryOptions) -> Self {
        if let Some(index) = opts.blocking_index() {
            let wait = opts.effective_wait();
            self.query.push(("index", index.to_string()));
            self.query.push(("wait", format!("{}ms", wait.as_millis())));
            self.wait = Some(wait);
            // A blocking read that failed is re-issued by its owner (a
            // watcher), with the index rules; retrying it here would only
            // multiply the long timeouts.
            self.retry = false;
        }
        match opts.consistency {
            Consistency::Default => {}
            Consistency::Consistent => self.query.push(("consistent", String::new())),
            Consistency::Stale => self.query.push(("stale", String::new())),
        }
        self
    }
}

/// The parts of an answer the endpoint methods look at.
#[derive(Debug)]
pub(crate) struct Response {
    pub status: StatusCode,
    pub index: Option<u64>,
    pub body: Bytes,
    pub path: String,
}

impl Response {
    pub fn json<T: DeserializeOwned>(&self) -> Result<T> {
        decode_json(&self.path, &self.body)
    }

    pub fn require_index(&self) -> Result<u64> {
        self.index.ok_or_else(|| ConsulError::MissingIndex {
            path: self.path.clone(),
        })
    }
}

pub(crate) fn decode_json<T: DeserializeOwned>(what: &str, body: &[u8]) -> Result<T> {
    serde_json::from_slice(body).map_err(|e| ConsulError::Decode {
        what: what.to_owned(),
        reason: e.to_string(),
    })
}

impl ConsulClient {
    /// Builds a client. Fails on an unusable address; does not contact the agent.
    pub fn new(config: ConsulConfig) -> Result<Self> {
        let base = config.usable_base_url()?;
        let http = reqwest::Client::builder()
            // Consul redirects non-normalised key paths; following them would hide bugs.
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(config.connect_timeout)
            .pool_max_idle_per_host(config.pool_max_idle)
            .pool_idle_timeout(config.pool_idle_timeout)
            .no_proxy()
            .build()
            .map_err(|e| ConsulError::Config(format!("HTTP client: {e}")))?;
        Ok(ConsulClient {
            inner: Arc::new(Inner { http, base, config }),
        })
    }

    /// A client of the agent at `address` with default settings.
    pub fn with_address(address: impl Into<String>) -> Result<Self> {
        Self::new(ConsulConfig::new(address))
    }

    /// The configuration in use.
    pub fn config(&self) -> &ConsulConfig {
        &self.inner.config
    }

    /// The base URL of the agent, e.g. `http://127.0.0.1:8500`.
    pub fn base_url(&self) -> &str {
        &self.inner.base
    }

    /// Sends a request, retrying idempotent ones on transient errors, and maps
    /// statuses to errors (except those the request accepts).
    pub(crate) async fn call(&self, req: Request) -> Result<Response> {
        let policy = if req.retry {
            self.inner.config.retry
        } else {
            RetryPolicy::none()
        };
        let attempts = policy.max_attempts.max(1);
        let mut retry = 0;
        loop {
            match self.send_once(&req).await {
                Ok(resp) => return Ok(resp),
                Err(e) if e.is_retryable() && retry + 1 < attempts => {
                    let delay = policy.delay(retry);
                    tracing::debug!(
                        method = %req.method, path = %req.path, error = %e,
                        delay_ms = delay.as_millis() as u64, "retrying Consul read"
                    );
                    tokio::time::sleep(delay).await;
                    retry += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn timeout_for(&self, req: &Request) -> Duration {
        let margin = self.inner.config.request_timeout;
        match req.wait {
            // Consul adds up to wait/16 of jitter to a blocking query.
            Some(wait) => wait + wait / 16 + margin,
            None => margin,
        }
    }

    async fn send_once(&self, req: &Request) -> Result<Response> {
        let url = format!("{}{}", self.inner.base, req.path);
        let timeout = self.timeout_for(req);
        let mut query = req.query.clone();
        if let Some(dc) = &self.inner.config.datacenter {
            query.push(("dc", dc.clone()));
        }
        let mut builder = self
            .inner
            .http
            .request(req.method.clone(), &url)
            .timeout(timeout);
        if !query.is_empty() {
            builder = builder.query(&query);
        }
        if let Some(token) = &self.inner.config.token {
            let mut value = HeaderValue::from_str(token.expose_secret())
                .map_err(|_| ConsulError::Config("ACL token is not a valid header".to_owned()))?;
            value.set_sensitive(true);
            builder = builder.header(TOKEN_HEADER, value);
        }
        if let Some(body) = &req.body {
            builder = builder.body(body.clone());
        }
        tracing::trace!(method = %req.method, path = %req.path, "Consul request");
        let resp = builder
            .send()
            .await
            .map_err(|e| self.transport_error(&req.path, e, timeout))?;
        let status = resp.status();
        let index = parse_index(resp.headers());
        let location = resp
            .headers()
            .get(http::header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = resp
            .bytes()
            .await
            .map_err(|e| self.transport_error(&req.path, e, timeout))?;
        if status.is_success() || req.accept.contains(&status) {
            return Ok(Response {
                status,
                index,
                body,
                path: req.path.clone(),
            });
        }
        let err = status_error(status, &req.path, &body, location.as_deref());
        tracing::debug!(method = %req.method, path = %req.path, %status, error = %err, "Consul error");
        Err(err)
    }

    fn transport_error(&self, path: &str, e: reqwest::Error, after: Duration) -> ConsulError {
        if e.is_timeout() {
            ConsulError::Timeout {
                path: path.to_owned(),
                after,
            }
        } else if is_connection_refused(&e) {
            ConsulError::ConnectionRefused {
                address: self.inner.base.clone(),
                source: e,
            }
        } else {
            ConsulError::Transport {
                path: path.to_owned(),
                source: e,
            }
        }
    }
}

fn parse_index(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(INDEX_HEADER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

fn is_connection_refused(e: &reqwest::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::ConnectionRefused {
                return true;
            }
        }
        source = err.source();
    }
    false
}

fn body_excerpt(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.len() <= MAX_ERROR_BODY {
        return text.to_owned();
    }
    let mut end = MAX_ERROR_BODY;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &text[..end])
}

pub(crate) fn status_error(
    status: StatusCode,
    path: &str,
    body: &[u8],
    location: Option<&str>,
) -> ConsulError {
    let path = path.to_owned();
    let text = body_excerpt(body);
    match status {
        StatusCode::NOT_FOUND => ConsulError::NotFound { path },
        StatusCode::CONFLICT => ConsulError::Conflict { path, body: text },
        StatusCode::TOO_MANY_REQUESTS => ConsulError::RateLimited { path },
        s if s.is_server_error() && text.contains("No cluster leader") => {
            ConsulError::NoLeader { path }
        }
        s if s.is_server_error() => ConsulError::Server {
            status: s,
            path,
            body: text,
        },
        s if s.is_redirection() => ConsulError::Status {
            status: s,
            path,
            body: format!("redirect to {}", location.unwrap_or("?")),
        },
        s => ConsulError::Status {
            status: s,
            path,
            body: text,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_is_redacted() {
        let token = AclToken::new("s3cr3t-token");
        assert!(!format!("{token:?}").contains("s3cr3t"));
        assert!(!format!("{token}").contains("s3cr3t"));
        let config = ConsulConfig {
            token: Some(token),
            ..ConsulConfig::default()
        };
        assert!(!format!("{config:?}").contains("s3cr3t"));
        let client = ConsulClient::new(config).expect("client");
        assert!(!format!("{client:?}").contains("s3cr3t"));
    }

    #[test]
    fn env_config() {
        let env = |vars: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                vars.iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| (*v).to_owned())
            }
        };
        let c = ConsulConfig::from_lookup(env(&[("CONSUL_HTTP_ADDR", "10.0.0.1:8500")]));
        assert_eq!(c.address, "http://10.0.0.1:8500");
        assert!(c.token.is_none());
        let c = ConsulConfig::from_lookup(env(&[
            ("CONSUL_HTTP_ADDR", "h:1"),
            ("CONSUL_HTTP_SSL", "true"),
            ("CONSUL_HTTP_TOKEN", "t"),
        ]));
        assert_eq!(c.address, "https://h:1");
        assert_eq!(c.token.as_ref().map(AclToken::expose_secret), Some("t"));
    }

    #[test]
    fn bad_addresses_are_config_errors() {
        for addr in ["unix:///tmp/sock", "http://", "http://h:1/path", "::::"] {
            let err = ConsulClient::with_address(addr).expect_err(addr);
            assert!(matches!(err, ConsulError::Config(_)), "{addr}: {err}");
        }
        assert_eq!(
            ConsulClient::with_address("127.0.0.1:8500")
                .expect("valid")
                .base_url(),
            "http://127.0.0.1:8500"
        );
    }

    #[test]
    fn backoff_is_capped_and_jittered() {
        let p = RetryPolicy {
            max_attempts: 10,
            initial_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(1),
        };
        for retry in 0..20 {
            let d = p.delay(retry);
            assert!(d <= Duration::from_secs(1), "{retry}: {d:?}");
        }
        let d0 = p.delay(0);
        assert!(d0 >= Duration::from_millis(50) && d0 <= Duration::from_millis(100));
        let d9 = p.delay(9);
        assert!(d9 >= Duration::from_millis(500));
    }

    #[test]
    fn statuses_map_to_distinct_errors() {
        let e = |code: u16, body: &str| {
            status_error(
                StatusCode::from_u16(code).expect("status"),
                "/v1/x",
                body.as_bytes(),
                Some("/v1/y"),
            )
        };
        assert!(matches!(e(404, ""), ConsulError::NotFound { .. }));
        assert!(matches!(e(409, ""), ConsulError::Conflict { .. }));
        assert!(matches!(e(429, ""), ConsulError::RateLimited { .. }));
        assert!(matches!(
            e(500, "No cluster leader"),
            ConsulError::NoLeader { .. }
        ));
        assert!(matches!(e(503, "boom"), ConsulError::Server { .. }));
        assert!(matches!(e(400, "bad"), ConsulError::Status { .. }));
        let redirect = e(301, "");
        assert!(redirect.to_string().contains("/v1/y"), "{redirect}");
        assert!(e(500, "No cluster leader").is_retryable());
        assert!(!e(409, "").is_retryable());
        assert!(!e(404, "").is_retryable());
    }

    #[tokio::test]
    async fn redirects_are_not_followed() {
        let agent = hax_testkit::dev_agent::DevAgent::start()
            .await
            .expect("agent");
        let client = ConsulClient::with_address(agent.http_addr().to_string()).expect("client");
        client.kv_put("a", "1").await.expect("put");
        // A raw non-normalised path, as a key bypassing normalisation would give.
        let err = client
            .call(Request::get("/v1/kv//a".to_owned()))
            .await
            .expect_err("redirect is an error");
        match err {
            ConsulError::Status { status, body, .. } => {
                assert!(status.is_redirection(), "{status}");
                assert!(body.contains("/v1/kv/a"), "{body}");
            }
            other => panic!("expected a redirect status, got {other:?}"),
        }
    }

    #[test]
    fn blocking_timeout_covers_wait_and_jitter() {
        let client = ConsulClient::with_address("127.0.0.1:1").expect("client");
        let req = Request::get("/v1/kv/a".to_owned())
            .options(&QueryOptions::blocking(5, Duration::from_secs(16)));
        assert_eq!(
            client.timeout_for(&req),
            Duration::from_secs(17) + client.config().request_timeout
        );
        // Index 0 never blocks, so no wait is sent.
        let req = Request::get("/v1/kv/a".to_owned())
            .options(&QueryOptions::blocking(0, Duration::from_secs(16)));
        assert!(req.wait.is_none());
        assert!(!req.query.iter().any(|(k, _)| *k == "index"));
    }
}
