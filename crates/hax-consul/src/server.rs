//! The HTTP server that Consul watch handlers POST to.
//!
//! Handlers decode the payloads (base64 values included) into typed
//! [`WatchUpdate`]s and hand them to the daemon through a bounded channel. A
//! 2xx answer means the update is in that channel: Consul never retries a
//! failed handler, so when the channel stays full the answer is 503 and the
//! update is recovered by the next [`reconcile`] (run on start and
//! periodically by [`spawn_resync`]), which reads the same data from Consul
//! and sends the same updates.
//!
//! Routes:
//! * `GET /healthz` – liveness;
//! * `GET /` – the original hax liveness text;
//! * `POST /` – `service` watches of hax, confd, ios... (service ids must be
//!   decimal fid keys);
//! * `POST /watcher/bq` – `keyprefix` watch of `bq/`;
//! * `POST /watcher/processes` – `key` watch of one `processes/<fid>` key;
//! * `POST /watch/{kind}/{label}` with kind `key`, `keyprefix`, `service` or
//!   `checks` – any other watch, labelled by the deployment.
//!
//! Bad input (malformed JSON, wrong shapes, bad base64, bad fids, oversize
//! bodies, a content type other than JSON) is answered with a 4xx and a JSON
//! error body, and logged.
//!
//! Connections are bounded ([`ServerConfig::max_connections`]), so are the
//! bytes of request bodies read at once ([`ServerConfig::body_budget`]), and a
//! client
//! must send a request's head within [`ServerConfig::header_timeout`], also
//! between the requests of a kept-alive connection: a slow or idle client
//! cannot hold the server's descriptors. When every connection is open, a
//! new one takes the place of the one that has waited longest for a request
//! head, so slow clients that reconnect cannot keep Consul's watch
//! deliveries and health checks out.

mod slots;
mod tls;

pub use tls::{TlsConfig, TlsError};

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::bounded_json;
use crate::catalog::{HealthCheck, ServiceEntry};
use crate::client::{AclToken, ConsulClient, QueryOptions};
use crate::error::ConsulError;
use crate::kv::KvPair;
use crate::queue::QueueEntry;
use crate::schema::{keys, FidText, ProcessStatus, QueueKind, QueueMessage};

/// Where an update came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpdateOrigin {
    /// A Consul watch handler POST.
    Watch,
    /// A read of the KV store / catalog by [`reconcile`].
    Resync,
}

/// The data of an update.
#[derive(Debug, Clone, PartialEq)]
pub enum UpdateData {
    /// A `key` watch: the entry, or `None` when the key does not exist.
    Key(Option<KvPair>),
    /// A `keyprefix` watch: every entry under the prefix.
    KeyPrefix(Vec<KvPair>),
    /// A `service` watch: health entries of the service's instances.
    Service(Vec<ServiceEntry>),
    /// A `checks` watch.
    Checks(Vec<HealthCheck>),
    /// The broadcast queue (`bq/`), as entries sorted by epoch.
    BroadcastQueue(Vec<QueueEntry>),
    /// One process state (`processes/<fid>`); `None` when the key is gone.
    ProcessState {
        /// The process.
        fid: FidText,
        /// Its recorded state.
        status: Option<ProcessStatus>,
    },
}

/// A typed update handed to the daemon.
#[derive(Debug, Clone, PartialEq)]
pub struct WatchUpdate {
    /// Label of the watch: `service` for `POST /`, `bq` for the BQ route,
    /// `processes` for the processes route, the `{label}` of generic routes.
    pub label: String,
    /// Watch POST or resync.
    pub origin: UpdateOrigin,
    /// The data.
    pub data: UpdateData,
}

/// Settings of the server.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Address to bind (loopback by default).
    pub bind: SocketAddr,
    /// Largest accepted request body; more is answered 413. The BQ watch
    /// posts the whole `bq/` tree, so this bounds the queue size too.
    pub body_limit: usize,
    /// Deadline of one request (408 after it).
    pub request_timeout: Duration,
    /// How long a handler waits for room in the update channel before 503.
    pub enqueue_timeout: Duration,
    /// When set, every request that may change state (any method but `GET`
    /// and `HEAD`) needs `Authorization: Bearer <token>`.
    pub bearer_token: Option<AclToken>,
    /// Bytes of request bodies read and decoded at once, all connections
    /// together (a body without a length counts as `body_limit`); a request
    /// that finds no room within `request_timeout` gets 503. With
    /// `max_connections` it bounds the memory that clients can make the
    /// server hold.
    pub body_budget: usize,
    /// Connections open at once. A new one beyond it takes the slot of the
    /// connection that has waited longest for a request head, or waits until
    /// one is free when each is serving a request.
    pub max_connections: usize,
    /// Deadline for a request's head (request line and headers), counted
    /// from the first byte, or from the end of the previous request on a
    /// kept-alive connection: the connection is closed after it.
    pub header_timeout: Duration,
    /// Answer over TLS (HTTPS) with this certificate; plain HTTP when
    /// `None`. A client must finish its handshake within `header_timeout`.
    pub tls: Option<TlsConfig>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            bind: SocketAddr::from(([127, 0, 0, 1], 8008)),
            body_limit: 16 * 1024 * 1024,
            request_timeout: Duration::from_secs(10),
            enqueue_timeout: Duration::from_millis(500),
            bearer_token: None,
            body_budget: 32 * 1024 * 1024,
            max_connections: 256,
            header_timeout: Duration::from_secs(5),
            tls: None,
        }
    }
}

/// What the routes share.
#[derive(Debug, Clone)]
pub struct AppState {
    updates: mpsc::Sender<WatchUpdate>,
    config: Arc<ServerConfig>,
    bq_floor: Option<Arc<AtomicU64>>,
}

impl AppState {
    /// State handing updates to `updates`.
    pub fn new(updates: mpsc::Sender<WatchUpdate>, config: ServerConfig) -> Self {
        AppState {
            updates,
            config: Arc::new(config),
            bq_floor: None,
        }
    }

    /// Drops the BQ route's entries at or below the epoch `floor` holds
    /// before decoding them ([`decode_bq_payload_above`]). A watch delivers
    /// the whole queue every time and entries are never deleted, so without
    /// it every delivery decodes every entry ever published; the consumer
    /// raises `floor` as it commits its offset.
    pub fn with_bq_floor(mut self, floor: Arc<AtomicU64>) -> Self {
        self.bq_floor = Some(floor);
        self
    }
}

// ---------------------------------------------------------------------------
// Payload decoding (pure, never panics)

/// Why a payload was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind}: {message}")]
pub struct PayloadError {
    /// Short class of the error (`json`, `base64`, `fid`, ...).
    pub kind: &'static str,
    /// Details.
    pub message: String,
}

impl PayloadError {
    fn new(kind: &'static str, message: impl Into<String>) -> Self {
        PayloadError {
            kind,
            message: message.into(),
        }
    }
}

/// What a payload may decode into ([`bounded_json`]), against its size.
/// Consul's payloads take 1.1 to 2.7 times their size as they are charged
/// (health entries the most: a one-entry `Meta` map is a whole B-tree
/// node), so four times leaves room for them and stops bodies built to blow
/// up, whose decoding held 16 to 62 times their size through
/// `serde_json::Value` (`tests/decode_memory.rs`).
pub fn decode_allowance(body_len: usize) -> usize {
    body_len.saturating_mul(4).saturating_add(64 * 1024)
}

/// Why `body` was refused. Broken JSON and JSON of the wrong shape are told
/// apart: a shape error may come before a syntax error further on, so the
/// body is read once more, building nothing, to find the latter.
fn json_error(body: &[u8], e: bounded_json::Error) -> PayloadError {
    match e {
        bounded_json::Error::TooLarge { .. } => PayloadError::new("size", e.to_string()),
        bounded_json::Error::Json(e) => match e.classify() {
            serde_json::error::Category::Data => {
                match serde_json::from_slice::<serde::de::IgnoredAny>(body) {
                    Ok(_) => PayloadError::new("shape", e.to_string()),
                    Err(syntax) => PayloadError::new("json", syntax.to_string()),
                }
            }
            _ => PayloadError::new("json", e.to_string()),
        },
    }
}

/// Decodes `body` in one pass, within [`decode_allowance`]: no intermediate
/// `serde_json::Value`, unknown fields skipped unbuilt.
fn parse_json<'de, T: Deserialize<'de>>(body: &'de [u8]) -> Result<Option<T>, PayloadError> {
    // Consul posts `null` when the watched data does not exist; an empty
    // body is read the same way.
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    bounded_json::from_slice::<Option<T>>(body, decode_allowance(body.len()))
        .map_err(|e| json_error(body, e))
}

/// A KV entry as a watch posts it, its strings borrowed from the body: the
/// base64 value is decoded from the body itself, never copied first.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct PostedPair<'a> {
    #[serde(borrow)]
    key: Cow<'a, str>,
    #[serde(default, borrow)]
    value: Option<Cow<'a, str>>,
    #[serde(default)]
    flags: u64,
    #[serde(default)]
    create_index: u64,
    #[serde(default)]
    modify_index: u64,
    #[serde(default)]
    lock_index: u64,
    #[serde(default, borrow)]
    session: Option<Cow<'a, str>>,
}

/// The bytes of a posted base64 `value` of `key` (none when `null`).
fn posted_value(key: &str, value: Option<&str>) -> Result<Vec<u8>, PayloadError> {
    use base64::Engine as _;
    match value {
        None => Ok(Vec::new()),
        Some(v) => base64::engine::general_purpose::STANDARD
            .decode(v.as_bytes())
            .map_err(|e| {
                PayloadError::new(
                    "base64",
                    format!("value of key {key:?} is not valid base64: {e}"),
                )
            }),
    }
}

impl PostedPair<'_> {
    fn decode(self) -> Result<KvPair, PayloadError> {
        Ok(KvPair {
            value: posted_value(&self.key, self.value.as_deref())?,
            key: self.key.into_owned(),
            flags: self.flags,
            create_index: self.create_index,
            modify_index: self.modify_index,
            lock_index: self.lock_index,
            session: self.session.filter(|s| !s.is_empty()).map(Cow::into_owned),
        })
    }
}

/// Decodes a `key` watch payload: one entry or `null`.
pub fn decode_key_payload(body: &[u8]) -> Result<Option<KvPair>, PayloadError> {
    parse_json::<PostedPair<'_>>(body)?
        .map(PostedPair::decode)
        .transpose()
}

/// Decodes a `keyprefix` watch payload: a list of entries or `null`.
pub fn decode_keyprefix_payload(body: &[u8]) -> Result<Vec<KvPair>, PayloadError> {
    parse_json::<Vec<PostedPair<'_>>>(body)?
        .unwrap_or_default()
        .into_iter()
        .map(PostedPair::decode)
        .collect()
}

/// Decodes a `service` watch payload: health entries or `null`.
pub fn decode_service_payload(body: &[u8]) -> Result<Vec<ServiceEntry>, PayloadError> {
    Ok(parse_json::<Vec<ServiceEntry>>(body)?.unwrap_or_default())
}

/// Decodes a `checks` watch payload: checks or `null`.
pub fn decode_checks_payload(body: &[u8]) -> Result<Vec<HealthCheck>, PayloadError> {
    Ok(parse_json::<Vec<HealthCheck>>(body)?.unwrap_or_default())
}

/// Decodes the payload of the hax `service` route: service ids are the
/// decimal fid keys of Motr processes.
pub fn decode_hax_service_payload(body: &[u8]) -> Result<Vec<ServiceEntry>, PayloadError> {
    let entries = decode_service_payload(body)?;
    for e in &entries {
        if e.service.id.parse::<u64>().is_err() {
            return Err(PayloadError::new(
                "fid",
                format!(
                    "service id {:?} of {:?} is not a decimal fid key",
                    e.service.id, e.service.service
                ),
            ));
        }
    }
    Ok(entries)
}

/// Decodes the BQ watch payload into entries sorted by epoch. Keys that are
/// not `bq/<n>` are skipped (logged): refusing the whole delivery would stall
/// the queue, since every later delivery carries the same keys.
pub fn decode_bq_payload(body: &[u8]) -> Result<Vec<QueueEntry>, PayloadError> {
    let pairs = decode_keyprefix_payload(body)?;
    for p in &pairs {
        if QueueKind::Broadcast.parse_entry_key(&p.key).is_none() {
            tracing::warn!(key = %p.key, "ignoring a key under bq/ that is not an entry");
        }
    }
    Ok(QueueEntry::from_pairs(QueueKind::Broadcast, &pairs))
}

/// A `bq/` entry as a watch posts it: what a [`QueueEntry`] needs, the
/// other fields skipped unbuilt.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct PostedEntry<'a> {
    #[serde(borrow)]
    key: Cow<'a, str>,
    #[serde(default, borrow)]
    value: Option<Cow<'a, str>>,
}

/// [`decode_bq_payload`] of the entries above epoch `floor` only: the
/// others are skipped before their values are decoded.
///
/// The entries' messages are decoded within what is left of the payload's
/// allowance ([`decode_allowance`]); past it, an entry's message is an error
/// (as one that does not decode), never the payload: the consumer reads the
/// entries it is told of from Consul again before handling them.
pub fn decode_bq_payload_above(body: &[u8], floor: u64) -> Result<Vec<QueueEntry>, PayloadError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Vec::new());
    }
    let allowance = bounded_json::Allowance::new(decode_allowance(body.len()));
    let pairs = allowance
        .from_slice::<Option<Vec<PostedEntry<'_>>>>(body)
        .map_err(|e| json_error(body, e))?
        .unwrap_or_default();
    let mut entries = Vec::new();
    for p in pairs {
        let Some(epoch) = QueueKind::Broadcast.parse_entry_key(&p.key) else {
            tracing::warn!(key = %p.key, "ignoring a key under bq/ that is not an entry");
            continue;
        };
        if epoch <= floor {
            continue;
        }
        let value = posted_value(&p.key, p.value.as_deref())?;
        let message = allowance
            .from_slice::<QueueMessage>(&value)
            .map_err(|e| format!("value of KV key {:?} is malformed: {e}", p.key));
        entries.push(QueueEntry {
            epoch,
            message,
            key: p.key.into_owned(),
        });
    }
    entries.sort_by_key(|e| e.epoch);
    Ok(entries)
}

fn process_update(entry_key: &str, value: Option<&[u8]>) -> Result<UpdateData, PayloadError> {
    let fid_text = entry_key
        .strip_prefix(keys::PROCESSES_PREFIX)
        .ok_or_else(|| PayloadError::new("key", format!("{entry_key:?} is not processes/<fid>")))?;
    let fid = FidText::parse(fid_text).map_err(|e| PayloadError::new("fid", e.to_string()))?;
    let status = match value {
        None => None,
        Some(v) => Some(
            serde_json::from_slice::<ProcessStatus>(v)
                .map_err(|e| PayloadError::new("value", format!("{entry_key}: {e}")))?,
        ),
    };
    Ok(UpdateData::ProcessState { fid, status })
}

/// Decodes the payload of the processes route (a `key` watch of
/// `processes/<fid>`). A `null` payload carries no key, so it cannot name
/// the process: it is refused.
pub fn decode_processes_payload(body: &[u8]) -> Result<UpdateData, PayloadError> {
    let pair = decode_key_payload(body)?
        .ok_or_else(|| PayloadError::new("shape", "null payload names no process"))?;
    let value = (!pair.value.is_empty()).then_some(pair.value.as_slice());
    process_update(&pair.key, value)
}

// ---------------------------------------------------------------------------
// Errors as JSON

/// An error answer: `{"status_code", "error_type", "error_message", "reason"}`
/// (the shape of the original hax).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP status.
    pub status_code: u16,
    /// Class of the error.
    pub error_type: String,
    /// Details.
    pub error_message: String,
    /// Short human explanation.
    pub reason: String,
}

impl ApiError {
    fn new(status: StatusCode, error_type: &str, message: impl Into<String>, reason: &str) -> Self {
        ApiError {
            status_code: status.as_u16(),
            error_type: error_type.to_owned(),
            error_message: message.into(),
            reason: reason.to_owned(),
        }
    }

    /// 401: a request that needs the bearer token came without it.
    pub fn unauthorised() -> Self {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "auth",
            "missing or wrong bearer token",
            "Unauthorized",
        )
    }

    fn bad_payload(e: PayloadError) -> Self {
        if e.kind == "size" {
            return ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                e.kind,
                e.message,
                "Payload too large once decoded",
            );
        }
        ApiError::new(
            StatusCode::BAD_REQUEST,
            e.kind,
            e.message,
            "Bad payload provided",
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status =
            StatusCode::from_u16(self.status_code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (status, Json(self)).into_response()
    }
}

/// The status and reason of a request body that could not be read (413 when
/// over the body limit).
pub fn body_rejection(r: &BytesRejection) -> (StatusCode, &'static str) {
    let status = r.status();
    let reason = if status == StatusCode::PAYLOAD_TOO_LARGE {
        "Request body too large"
    } else {
        "Cannot read the request body"
    };
    (status, reason)
}

fn body_or_error(body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    body.map_err(|r| {
        let (status, reason) = body_rejection(&r);
        ApiError::new(status, "body", r.body_text(), reason)
    })
}

// ---------------------------------------------------------------------------
// Handlers

async fn enqueue(state: &AppState, label: &str, data: UpdateData) -> Result<StatusCode, ApiError> {
    let update = WatchUpdate {
        label: label.to_owned(),
        origin: UpdateOrigin::Watch,
        data,
    };
    match state
        .updates
        .send_timeout(update, state.config.enqueue_timeout)
        .await
    {
        Ok(()) => Ok(StatusCode::OK),
        Err(mpsc::error::SendTimeoutError::Timeout(_)) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "busy",
            "the update queue is full",
            "Update not queued; it will be recovered by the next resync",
        )),
        Err(mpsc::error::SendTimeoutError::Closed(_)) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "closed",
            "the update receiver is gone",
            "Server is shutting down",
        )),
    }
}

async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok" }))
}

async fn alive() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        "I'm alive! Sincerely, HaX",
    )
}

async fn post_service(
    State(state): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<StatusCode, ApiError> {
    let body = body_or_error(body)?;
    let entries = decode_hax_service_payload(&body).map_err(ApiError::bad_payload)?;
    enqueue(&state, "service", UpdateData::Service(entries)).await
}

async fn post_bq(
    State(state): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<StatusCode, ApiError> {
    let body = body_or_error(body)?;
    let floor = state
        .bq_floor
        .as_ref()
        .map_or(0, |f| f.load(std::sync::atomic::Ordering::Acquire));
    let entries = decode_bq_payload_above(&body, floor).map_err(ApiError::bad_payload)?;
    enqueue(&state, "bq", UpdateData::BroadcastQueue(entries)).await
}

async fn post_processes(
    State(state): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<StatusCode, ApiError> {
    let body = body_or_error(body)?;
    let data = decode_processes_payload(&body).map_err(ApiError::bad_payload)?;
    enqueue(&state, "processes", data).await
}

async fn post_generic(
    State(state): State<AppState>,
    Path((kind, label)): Path<(String, String)>,
    body: Result<Bytes, BytesRejection>,
) -> Result<StatusCode, ApiError> {
    let body = body_or_error(body)?;
    let data = match kind.as_str() {
        "key" => UpdateData::Key(decode_key_payload(&body).map_err(ApiError::bad_payload)?),
        "keyprefix" => {
            UpdateData::KeyPrefix(decode_keyprefix_payload(&body).map_err(ApiError::bad_payload)?)
        }
        "service" => {
            UpdateData::Service(decode_service_payload(&body).map_err(ApiError::bad_payload)?)
        }
        "checks" => {
            UpdateData::Checks(decode_checks_payload(&body).map_err(ApiError::bad_payload)?)
        }
        other => {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "route",
                format!("unknown watch kind {other:?} (key, keyprefix, service, checks)"),
                "Not found",
            ))
        }
    };
    enqueue(&state, &label, data).await
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "route", "no such route", "Not found")
}

/// Equal-time comparison, so the token cannot be guessed byte by byte.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Whether `headers` carry `token` as `Authorization: Bearer <token>`
/// (always, when no token is configured). The scheme is matched without
/// regard to case, as RFC 7235 (section 2.1) has it: `bearer <token>` is the
/// same credential.
pub fn bearer_token_given(token: Option<&AclToken>, headers: &HeaderMap) -> bool {
    let Some(token) = token else {
        return true;
    };
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim_start().split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .is_some_and(|(_, given)| {
            same_secret(given.trim().as_bytes(), token.expose_secret().as_bytes())
        })
}

/// Whether a request may go on: read-only methods always, others with the
/// bearer token when one is configured.
fn authorised(config: &ServerConfig, method: &Method, headers: &HeaderMap) -> bool {
    matches!(*method, Method::GET | Method::HEAD)
        || bearer_token_given(config.bearer_token.as_ref(), headers)
}

fn unauthorised(req: &Request) -> Response {
    tracing::warn!(method = %req.method(), path = %req.uri().path(), "request without a valid bearer token");
    ApiError::unauthorised().into_response()
}

/// Whether a request carries what browsers add to every request a page
/// makes to another site: `Origin` (on every `POST`, by the Fetch standard)
/// or `Sec-Fetch-Site`. Tools (curl, Consul's watch handlers, Python's
/// requests) send neither.
pub fn sent_by_a_browser(headers: &HeaderMap) -> bool {
    headers.contains_key(header::ORIGIN) || headers.contains_key("sec-fetch-site")
}

/// Which bodies a state-changing route takes besides declared JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyTypes {
    /// Declared JSON (`application/json`, `application/<x>+json`), or no
    /// type at all from a client that is not a browser.
    Json,
    /// Also `application/x-www-form-urlencoded` from a client that is not a
    /// browser: what `curl --data` sends, as hare's rules (`sns-repair`,
    /// `sns-rebalance`) do with a JSON body.
    JsonOrToolForm,
}

/// Why a `POST` body must not be decoded, from its declared type: `None`
/// when it may be read as JSON, else a 415.
///
/// A page of any site can make a browser send a `POST` without asking
/// first (no CORS preflight) when its type is `text/plain`, a form or
/// multipart, or when it has no type; a JSON type needs a preflight, which
/// hax never grants. So a JSON type is taken from anyone, no type (and a
/// form with [`BodyTypes::JsonOrToolForm`]) only from a request without the
/// headers every browser adds ([`sent_by_a_browser`]), and anything else
/// never: the body is JSON in every case.
pub fn refuse_body_type(headers: &HeaderMap, accepted: BodyTypes) -> Option<ApiError> {
    let declared = headers.get(header::CONTENT_TYPE);
    let essence = declared.map(|v| {
        v.to_str()
            .unwrap_or("")
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase()
    });
    let json = essence.as_deref().is_some_and(|e| {
        e == "application/json"
            || e.strip_prefix("application/")
                .is_some_and(|t| t.ends_with("+json"))
    });
    let tool_type = match essence.as_deref() {
        None => true,
        Some("application/x-www-form-urlencoded") => accepted == BodyTypes::JsonOrToolForm,
        Some(_) => false,
    };
    if json || (tool_type && !sent_by_a_browser(headers)) {
        return None;
    }
    let given = declared
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .unwrap_or_default();
    let message = if tool_type {
        format!("content type {given:?} from a browser: the body must be declared application/json")
    } else {
        format!("content type {given:?}: the body must be application/json")
    };
    Some(ApiError::new(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "content-type",
        message,
        "Unsupported media type",
    ))
}

async fn guard(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    if !authorised(&state.config, &method, req.headers()) {
        return unauthorised(&req);
    }
    if method == Method::POST {
        if let Some(refusal) = refuse_body_type(req.headers(), BodyTypes::Json) {
            tracing::warn!(%method, %path, reason = %refusal.error_message, "request body is not JSON");
            return refusal.into_response();
        }
    }
    let response = match tokio::time::timeout(state.config.request_timeout, next.run(req)).await {
        Ok(r) => r,
        Err(_) => ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "timeout",
            format!("not handled within {:?}", state.config.request_timeout),
            "Request timeout",
        )
        .into_response(),
    };
    let status = response.status();
    if status.is_client_error() {
        tracing::warn!(%method, %path, %status, "watch request refused");
    } else if status.is_server_error() {
        tracing::error!(%method, %path, %status, "watch request failed");
    } else {
        tracing::debug!(%method, %path, %status, "watch request handled");
    }
    response
}

/// The bearer token check alone, for routes added to the router after
/// [`router`] (see [`serve_with`]).
async fn auth_only(State(config): State<Arc<ServerConfig>>, req: Request, next: Next) -> Response {
    if !authorised(&config, req.method(), req.headers()) {
        return unauthorised(&req);
    }
    next.run(req).await
}

/// The shared allowance of request body bytes (see [`ServerConfig::body_budget`]).
#[derive(Debug, Clone)]
struct BodyBudget {
    bytes: Arc<tokio::sync::Semaphore>,
    total: usize,
    body_limit: usize,
    wait: Duration,
}

impl BodyBudget {
    fn new(config: &ServerConfig) -> Self {
        let total = config.body_budget.clamp(1, u32::MAX as usize);
        BodyBudget {
            bytes: Arc::new(tokio::sync::Semaphore::new(total)),
            total,
            body_limit: config.body_limit,
            wait: config.request_timeout,
        }
    }

    /// What a request may read: its length, or the body limit when it does
    /// not say (chunked); nothing for reads without a body.
    fn cost(&self, req: &Request) -> usize {
        let length = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        let cost = match length {
            Some(n) => usize::try_from(n)
                .unwrap_or(usize::MAX)
                .min(self.body_limit),
            None if matches!(*req.method(), Method::GET | Method::HEAD) => 0,
            None => self.body_limit,
        };
        cost.min(self.total)
    }
}

async fn body_budget(State(budget): State<BodyBudget>, req: Request, next: Next) -> Response {
    let cost = budget.cost(&req);
    let Ok(cost) = u32::try_from(cost) else {
        return next.run(req).await;
    };
    if cost == 0 {
        return next.run(req).await;
    }
    let permit = tokio::time::timeout(
        budget.wait,
        Arc::clone(&budget.bytes).acquire_many_owned(cost),
    )
    .await;
    match permit {
        Ok(Ok(_held)) => next.run(req).await,
        _ => {
            tracing::warn!(method = %req.method(), path = %req.uri().path(), bytes = cost, "no room for the request body");
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "busy",
                format!("no room for {cost} more bytes of request bodies"),
                "Too many request bodies at once; try again",
            )
            .into_response()
        }
    }
}

/// The routes, with body limit, timeout, optional bearer token and logging.
pub fn router(state: AppState) -> Router {
    let limit = state.config.body_limit;
    Router::new()
        .route("/healthz", get(healthz))
        .route("/", get(alive).post(post_service))
        .route("/watcher/bq", post(post_bq))
        .route("/watcher/processes", post(post_processes))
        .route("/watch/{kind}/{label}", post(post_generic))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(limit))
        .layer(middleware::from_fn_with_state(state.clone(), guard))
        .with_state(state)
}

/// Connections the kernel holds for the server before it accepts them
/// (the kernel caps it at `net.core.somaxconn`). A slow-client flood keeps
/// every slot taken and the rest waiting here; once this is full the kernel
/// drops new connections' SYNs, and a client retries only after 1 s, 3 s...
/// The default backlog (128) was filled by a few hundred slow clients.
const LISTEN_BACKLOG: u32 = 4096;

/// Binds `config.bind`.
pub async fn bind(config: &ServerConfig) -> std::io::Result<TcpListener> {
    let socket = match config.bind {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    // As std and tokio do: a restarted hax can bind its port at once.
    socket.set_reuseaddr(true)?;
    socket.bind(config.bind)?;
    socket.listen(LISTEN_BACKLOG)
}

/// [`serve_with`] with the default limits and no token check beyond the
/// routes of [`router`].
pub async fn serve(
    listener: TcpListener,
    router: Router,
    cancel: CancellationToken,
) -> std::io::Result<()> {
    let config = ServerConfig {
        bearer_token: None,
        ..ServerConfig::default()
    };
    serve_with(listener, router, cancel, &config).await
}

/// Serves one connection until it ends, its slot goes to a newer one, its
/// request head does not come within `head_timeout`, or `cancel` (then
/// in-flight requests finish).
async fn serve_connection<S, IO>(
    http: &hyper::server::conn::http1::Builder,
    stream: IO,
    service: S,
    slot: Arc<slots::Slot>,
    head_timeout: Duration,
    cancel: CancellationToken,
    peer: SocketAddr,
) where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::HttpService<hyper::body::Incoming>,
    S::ResBody: 'static,
    <S::ResBody as hyper::body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let conn = http.serve_connection(hyper_util::rt::TokioIo::new(stream), service);
    let mut conn = std::pin::pin!(conn);
    let result = loop {
        // hyper's own head deadline starts at the first byte; this one also
        // closes a connection that sends nothing.
        let head_deadline = slot.head_deadline(head_timeout);
        tokio::select! {
            r = conn.as_mut() => break r,
            _ = cancel.cancelled() => {
                conn.as_mut().graceful_shutdown();
                break conn.as_mut().await;
            }
            _ = slot.taken_over() => {
                tracing::debug!(%peer, "http connection closed: its slot went to a new connection");
                return;
            }
            _ = sleep_until_some(head_deadline) => {
                if slot.head_deadline(head_timeout).is_some_and(|d| d <= tokio::time::Instant::now()) {
                    tracing::debug!(%peer, "http connection closed: no request head within the deadline");
                    return;
                }
            }
        }
    };
    if let Err(e) = result {
        tracing::debug!(%peer, error = %e, "http connection ended");
    }
}

/// Sleeps until `deadline`, forever without one.
async fn sleep_until_some(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Serves `router` on `listener` until `cancel`, then lets in-flight requests
/// finish (each bounded by the request timeout).
///
/// At most `config.max_connections` connections are served at once. When
/// all are open, a new connection takes the place of the one that has waited
/// longest for a request head, and waits only when every one is serving a
/// request (see `slots`). At most `config.body_budget` bytes of
/// request bodies are read at once, on every route. A connection whose client does not
/// send a whole request head within `config.header_timeout` (idle between
/// requests included) is closed. When `config.bearer_token` is set, every
/// request but `GET` and `HEAD` needs it, on routes added after [`router`]
/// too.
pub async fn serve_with(
    listener: TcpListener,
    router: Router,
    cancel: CancellationToken,
    config: &ServerConfig,
) -> std::io::Result<()> {
    use hyper_util::rt::TokioTimer;
    use hyper_util::service::TowerToHyperService;

    let addr = listener.local_addr()?;
    tracing::info!(%addr, max_connections = config.max_connections, https = config.tls.is_some(), "watch server listening");
    let router = router.layer(middleware::from_fn_with_state(
        BodyBudget::new(config),
        body_budget,
    ));
    let router = if config.bearer_token.is_some() {
        router.layer(middleware::from_fn_with_state(
            Arc::new(config.clone()),
            auth_only,
        ))
    } else {
        router
    };
    let service = TowerToHyperService::new(router);
    let slots = slots::Slots::new(config.max_connections);
    let head_timeout = config.header_timeout;
    let connections = tokio_util::task::TaskTracker::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(config.header_timeout)
        .keep_alive(true);
    loop {
        let (stream, peer) = tokio::select! {
            _ = cancel.cancelled() => break,
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // Out of descriptors, or a connection reset before it was
                    // accepted: wait a little rather than spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let slot = tokio::select! {
            _ = cancel.cancelled() => break,
            s = slots.take() => Arc::new(s),
        };
        let _ = stream.set_nodelay(true);
        let service = slots::Marked {
            inner: service.clone(),
            slot: Arc::clone(&slot),
        };
        let http = http.clone();
        let cancel = cancel.clone();
        let tls = config.tls.clone();
        connections.spawn(async move {
            let Some(tls) = tls else {
                return serve_connection(&http, stream, service, slot, head_timeout, cancel, peer)
                    .await;
            };
            let acceptor = tokio_rustls::TlsAcceptor::from(Arc::clone(&tls.0));
            let handshake = tokio::select! {
                r = tokio::time::timeout(head_timeout, acceptor.accept(stream)) => r,
                _ = slot.taken_over() => return,
                _ = cancel.cancelled() => return,
            };
            match handshake {
                Ok(Ok(stream)) => {
                    serve_connection(&http, stream, service, slot, head_timeout, cancel, peer).await
                }
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                Err(_) => tracing::debug!(%peer, "TLS handshake not done within the head deadline"),
            }
        });
    }
    drop(listener);
    connections.close();
    // In-flight requests are bounded by the request timeout; a connection
    // still reading a request head by the header timeout.
    let grace = config.request_timeout + config.header_timeout;
    if tokio::time::timeout(grace, connections.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            open = connections.len(),
            "http connections still open at shutdown; dropping them"
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Reconciliation

/// Something to re-read from Consul and deliver as an update, for the
/// deliveries Consul may have lost.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResyncTarget {
    /// A key, delivered as [`UpdateData::Key`].
    Key {
        /// Update label.
        label: String,
        /// The key.
        key: String,
    },
    /// A prefix, delivered as [`UpdateData::KeyPrefix`].
    KeyPrefix {
        /// Update label.
        label: String,
        /// The prefix.
        prefix: String,
    },
    /// A service's health, delivered as [`UpdateData::Service`].
    Service {
        /// Update label.
        label: String,
        /// Service name.
        name: String,
    },
    /// A service's checks, delivered as [`UpdateData::Checks`].
    Checks {
        /// Update label.
        label: String,
        /// Service name.
        name: String,
    },
    /// The broadcast queue, delivered as [`UpdateData::BroadcastQueue`] (label `bq`).
    BroadcastQueue,
    /// Every `processes/<fid>`, each delivered as [`UpdateData::ProcessState`]
    /// (label `processes`).
    Processes,
}

async fn read_target(
    client: &ConsulClient,
    target: &ResyncTarget,
) -> Result<Vec<WatchUpdate>, ConsulError> {
    let one = |label: &str, data| {
        vec![WatchUpdate {
            label: label.to_owned(),
            origin: UpdateOrigin::Resync,
            data,
        }]
    };
    Ok(match target {
        ResyncTarget::Key { label, key } => {
            one(label, UpdateData::Key(client.kv_get(key).await?.value))
        }
        ResyncTarget::KeyPrefix { label, prefix } => one(
            label,
            UpdateData::KeyPrefix(client.kv_list(prefix).await?.value),
        ),
        ResyncTarget::Service { label, name } => one(
            label,
            UpdateData::Service(client.health_service(name, false).await?.value),
        ),
        ResyncTarget::Checks { label, name } => one(
            label,
            UpdateData::Checks(
                client
                    .health_checks(name, &QueryOptions::default())
                    .await?
                    .value,
            ),
        ),
        ResyncTarget::BroadcastQueue => {
            let pairs = client.kv_list(QueueKind::Broadcast.prefix()).await?.value;
            one(
                "bq",
                UpdateData::BroadcastQueue(QueueEntry::from_pairs(QueueKind::Broadcast, &pairs)),
            )
        }
        ResyncTarget::Processes => {
            let pairs = client.kv_list(keys::PROCESSES_PREFIX).await?.value;
            let mut updates = Vec::new();
            for p in pairs {
                match process_update(&p.key, Some(&p.value)) {
                    Ok(data) => updates.push(WatchUpdate {
                        label: "processes".to_owned(),
                        origin: UpdateOrigin::Resync,
                        data,
                    }),
                    Err(e) => {
                        tracing::warn!(key = %p.key, error = %e, "skipping malformed process state")
                    }
                }
            }
            updates
        }
    })
}

/// Reads every target from Consul and sends the resulting updates (waiting
/// for room in the channel). Returns how many updates were sent. Stops at the
/// first Consul error; a closed channel ends it quietly.
pub async fn reconcile(
    client: &ConsulClient,
    targets: &[ResyncTarget],
    updates: &mpsc::Sender<WatchUpdate>,
) -> Result<usize, ConsulError> {
    let mut sent = 0;
    for target in targets {
        for update in read_target(client, target).await? {
            if updates.send(update).await.is_err() {
                return Ok(sent);
            }
            sent += 1;
        }
    }
    Ok(sent)
}

/// Runs [`reconcile`] now and then every `period` until `cancel`. Errors are
/// logged and retried at the next period.
pub fn spawn_resync(
    client: ConsulClient,
    targets: Vec<ResyncTarget>,
    updates: mpsc::Sender<WatchUpdate>,
    period: Duration,
    cancel: CancellationToken,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let run = tokio::select! {
                _ = cancel.cancelled() => break,
                r = reconcile(&client, &targets, &updates) => r,
            };
            match run {
                Ok(n) => tracing::debug!(updates = n, "resync done"),
                Err(e) => tracing::warn!(error = %e, "resync failed, will retry"),
            }
            if updates.is_closed() {
                break;
            }
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tokio::time::sleep(period) => {}
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_compare_whole() {
        let token = AclToken::new("s3cret");
        let with = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::AUTHORIZATION, v.parse().unwrap());
            h
        };
        assert!(bearer_token_given(None, &HeaderMap::new()));
        assert!(bearer_token_given(Some(&token), &with("Bearer s3cret")));
        assert!(!bearer_token_given(Some(&token), &with("Bearer s3cre")));
        assert!(!bearer_token_given(Some(&token), &with("Bearer s3cretX")));
        assert!(!bearer_token_given(Some(&token), &with("Basic s3cret")));
        assert!(!bearer_token_given(Some(&token), &HeaderMap::new()));
        // RFC 7235: the scheme is case-insensitive; the token is not.
        for given in ["bearer s3cret", "BEARER s3cret", "bEaReR  s3cret"] {
            assert!(bearer_token_given(Some(&token), &with(given)), "{given}");
        }
        assert!(!bearer_token_given(Some(&token), &with("bearer S3CRET")));
        assert!(!bearer_token_given(Some(&token), &with("Bearers3cret")));
        assert!(!bearer_token_given(Some(&token), &with("Bearer")));
    }

    #[test]
    fn body_types_a_page_can_send_unasked_are_refused() {
        let with = |pairs: &[(&str, &str)]| {
            let mut h = HeaderMap::new();
            for (k, v) in pairs {
                h.insert(
                    header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                    v.parse().unwrap(),
                );
            }
            h
        };
        let refused = |pairs: &[(&str, &str)], accepted| {
            refuse_body_type(&with(pairs), accepted).map(|e| e.status_code)
        };
        use BodyTypes::{Json, JsonOrToolForm};
        let form = ("content-type", "application/x-www-form-urlencoded");
        let origin = ("origin", "https://example.com");
        for accepted in [Json, JsonOrToolForm] {
            // JSON needs a preflight: taken from anyone.
            for t in [
                "application/json",
                "Application/JSON; charset=utf-8",
                "application/merge-patch+json",
            ] {
                assert_eq!(refused(&[("content-type", t)], accepted), None, "{t}");
                assert_eq!(refused(&[("content-type", t), origin], accepted), None);
            }
            // Types a page sends unasked, and others: never.
            for t in [
                "text/plain",
                "multipart/form-data; boundary=x",
                "application/xml",
                "application/jsonx",
                "",
            ] {
                assert_eq!(refused(&[("content-type", t)], accepted), Some(415), "{t}");
            }
            // No type: from a tool, not from a page.
            assert_eq!(refused(&[], accepted), None);
            assert_eq!(refused(&[origin], accepted), Some(415));
            assert_eq!(
                refused(&[("sec-fetch-site", "cross-site")], accepted),
                Some(415)
            );
            assert_eq!(refused(&[("origin", "null")], accepted), Some(415));
        }
        // `curl --data` (hare's rules): a form type, from a tool only, and
        // only where the route takes it.
        assert_eq!(refused(&[form], Json), Some(415));
        assert_eq!(refused(&[form], JsonOrToolForm), None);
        assert_eq!(refused(&[form, origin], JsonOrToolForm), Some(415));
        assert_eq!(
            refused(&[form, ("sec-fetch-site", "same-site")], JsonOrToolForm),
            Some(415)
        );
    }

    #[test]
    fn payload_shapes() {
        assert_eq!(decode_key_payload(b"null").expect("null"), None);
        assert_eq!(decode_key_payload(b"").expect("empty"), None);
        let kv = decode_key_payload(br#"{"Key":"leader","Value":"bm9kZTE=","ModifyIndex":5}"#)
            .expect("entry")
            .expect("some");
        assert_eq!(kv.value, b"node1");
        assert_eq!(decode_keyprefix_payload(b"null").expect("null"), vec![]);
        assert_eq!(decode_key_payload(b"{").expect_err("json").kind, "json");
        assert_eq!(decode_key_payload(b"[1]").expect_err("shape").kind, "shape");
        assert_eq!(
            decode_key_payload(br#"{"Key":"k","Value":"***"}"#)
                .expect_err("b64")
                .kind,
            "base64"
        );
        let svc = br#"[{"Node":{"Node":"n1"},"Service":{"ID":"x1","Service":"hax"},"Checks":[]}]"#;
        assert_eq!(decode_service_payload(svc).expect("generic").len(), 1);
        assert_eq!(
            decode_hax_service_payload(svc).expect_err("fid").kind,
            "fid"
        );
        assert!(same_secret(b"abc", b"abc"));
        assert!(!same_secret(b"abc", b"abd"));
        assert!(!same_secret(b"abc", b"ab"));
    }

    #[test]
    fn processes_payload() {
        let body = br#"{"Key":"processes/0x7200000000000001:0x6","Value":"eyJzdGF0ZSI6ICJNMF9DT05GX0hBX1BST0NFU1NfU1RBUlRFRCIsICJ0eXBlIjogIk0wX0NPTkZfSEFfUFJPQ0VTU19NMEQifQ=="}"#;
        match decode_processes_payload(body).expect("decodes") {
            UpdateData::ProcessState { fid, status } => {
                assert_eq!(fid, FidText::new(0x7200_0000_0000_0001, 6));
                assert!(status.is_some());
            }
            other => panic!("{other:?}"),
        }
        let bad = br#"{"Key":"processes/zzz","Value":null}"#;
        assert_eq!(decode_processes_payload(bad).expect_err("fid").kind, "fid");
        assert_eq!(
            decode_processes_payload(b"null").expect_err("null").kind,
            "shape"
        );
    }
}
