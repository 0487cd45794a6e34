//! The daemon's HTTP API, beside the Consul watch routes of
//! [`hax_consul::server`]:
//!
//! * `POST /api/v1/sns/{operation}`, `GET /api/v1/sns/repair-status`,
//!   `GET /api/v1/sns/rebalance-status` – SNS repair and rebalance of a pool
//!   ([`sns`]);
//! * `GET /v1/cluster/status`, `GET /v1/cluster/status/bytecount` – what
//!   hare's `hare-status --json` / `--bytecount` print, computed here, with
//!   the RC leader, the broadcast queue's offsets and the links added
//!   ([`status`]; `hax status` prints it);
//! * `POST /v1/events/subscribe`, `POST /v1/events/unsubscribe` – event
//!   subscriptions in `events/subscription/<type>` ([`events`]).
//!
//! Every answer is JSON; errors have the shape of
//! [`hax_consul::server::ApiError`]. Unlike the original, an operation
//! answers with its real outcome: a refused request is a 4xx, a failure of
//! Motr or Consul a 5xx. When a bearer token is configured, the POST routes
//! need it; the GET routes only read.
//!
//! A POST body is always read as JSON, and its declared type must allow it
//! ([`hax_consul::server::refuse_body_type`], else 415): JSON from anyone;
//! no type, or `application/x-www-form-urlencoded`, only from a client that
//! is not a browser. The form type is taken because hare's own rules
//! (`sns-repair`, `sns-rebalance`) post their JSON with `curl --data`, which
//! declares it; a web page could send it to hax without asking first, and
//! browsers mark every such request with `Origin`.

pub mod events;
pub mod fetch_fids;
pub mod metrics;
pub mod sns;
pub mod status;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{header, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use hax_consul::schema::{HaxKv, SchemaError};
use hax_consul::server::{
    bearer_token_given, body_rejection, refuse_body_type, ApiError, BodyTypes,
};
use hax_consul::AclToken;
use hax_core::{HaLink, MotrClient};

use crate::view::ClusterView;

/// Largest request body of these routes: they take one small JSON object.
pub const BODY_LIMIT: usize = 64 * 1024;

/// How long a request waits for Motr (the original's SNS status wait).
pub const MOTR_TIMEOUT: Duration = Duration::from_secs(10);

/// API requests that use Consul at once (a status request makes six
/// reads at a time). Without a bound, the HTTP server's 256 connections
/// opened a thousand connections to the agent, whose default limit per
/// client address (`limits.http_max_conns_per_client`, 200) hax's own
/// writes and watches share.
pub const CONSUL_REQUESTS: usize = 8;

/// How long an API request waits for one of the [`CONSUL_REQUESTS`] slots
/// before it is answered 503.
pub const CONSUL_SLOT_WAIT: Duration = Duration::from_secs(5);

/// What the routes share.
#[derive(Clone, Debug)]
pub struct ApiState {
    kv: HaxKv,
    view: ClusterView,
    motr: MotrClient,
    links: Option<HaLink>,
    token: Option<Arc<AclToken>>,
    metrics: Arc<ApiMetrics>,
    consul_slots: Arc<tokio::sync::Semaphore>,
}

impl ApiState {
    /// State over the KV store, the cluster view and Motr's client; POST
    /// routes need `token` when it is set.
    pub fn new(kv: HaxKv, view: ClusterView, motr: MotrClient, token: Option<AclToken>) -> Self {
        ApiState {
            kv,
            view,
            motr,
            links: None,
            token: token.map(Arc::new),
            metrics: Arc::new(ApiMetrics::default()),
            consul_slots: Arc::new(tokio::sync::Semaphore::new(CONSUL_REQUESTS)),
        }
    }

    /// Shows the links of `ha` in the cluster status
    /// ([`status::ClusterStatus::links`]).
    pub fn with_links(mut self, ha: HaLink) -> Self {
        self.links = Some(ha);
        self
    }

    /// One of the [`CONSUL_REQUESTS`] slots, held while a request uses
    /// Consul; 503 when none is free within [`CONSUL_SLOT_WAIT`].
    pub async fn consul_slot(&self) -> Result<tokio::sync::OwnedSemaphorePermit, Failure> {
        let slot = Arc::clone(&self.consul_slots).acquire_owned();
        match tokio::time::timeout(CONSUL_SLOT_WAIT, slot).await {
            Ok(Ok(permit)) => Ok(permit),
            _ => Err(Failure::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "busy",
                format!(
                    "{CONSUL_REQUESTS} requests are using Consul; none ended within {CONSUL_SLOT_WAIT:?}"
                ),
                "Too many requests at once; try again",
            )),
        }
    }

    /// The request counters, for `/metrics`.
    pub fn metrics(&self) -> Arc<ApiMetrics> {
        Arc::clone(&self.metrics)
    }
}

// ---------------------------------------------------------------------------
// Errors

/// A refused or failed request, answered as an [`ApiError`] body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// HTTP status.
    pub status: StatusCode,
    /// Class of the error (`bad_request`, `not_found`, `busy`, ...).
    pub kind: &'static str,
    /// Details.
    pub message: String,
    /// Short human explanation.
    pub reason: &'static str,
}

impl Failure {
    /// A failure with every field given.
    pub fn new(
        status: StatusCode,
        kind: &'static str,
        message: impl Into<String>,
        reason: &'static str,
    ) -> Self {
        Failure {
            status,
            kind,
            message: message.into(),
            reason,
        }
    }

    /// 400: the request itself is wrong.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Failure::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            message,
            "Bad request",
        )
    }

    /// A Consul failure: 503 when Consul could not be used, 500 when what it
    /// holds is malformed.
    pub fn consul(e: &SchemaError) -> Self {
        match e {
            SchemaError::Consul(_) => Failure::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "consul",
                e.to_string(),
                "Consul is not available",
            ),
            _ => Failure::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "consul_data",
                e.to_string(),
                "Malformed data in Consul",
            ),
        }
    }
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        let body = ApiError {
            status_code: self.status.as_u16(),
            error_type: self.kind.to_owned(),
            error_message: self.message,
            reason: self.reason.to_owned(),
        };
        (self.status, axum::Json(body)).into_response()
    }
}

/// A JSON answer: `value` serialized with two-space indentation (the layout
/// of hare's tools).
pub fn json_response<T: serde::Serialize>(status: StatusCode, value: &T) -> Response {
    match serde_json::to_string_pretty(value) {
        Ok(body) => (
            status,
            [(header::CONTENT_TYPE, "application/json")],
            body + "\n",
        )
            .into_response(),
        Err(e) => Failure::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "encode",
            e.to_string(),
            "Cannot encode the answer",
        )
        .into_response(),
    }
}

/// The body of a request, or the reason it could not be read (413 when over
/// [`BODY_LIMIT`]).
pub fn body_bytes(body: Result<Bytes, BytesRejection>) -> Result<Bytes, Failure> {
    body.map_err(|r| {
        let (status, reason) = body_rejection(&r);
        Failure::new(status, "body", r.body_text(), reason)
    })
}

/// The JSON object a request body must hold. Decoded within the watch
/// routes' allowance ([`hax_consul::server::decode_allowance`]): a body
/// built to blow up in memory is refused (413).
pub fn json_object(body: &[u8]) -> Result<serde_json::Map<String, serde_json::Value>, Failure> {
    let allowance = hax_consul::server::decode_allowance(body.len());
    match hax_consul::bounded_json::from_slice::<serde_json::Value>(body, allowance) {
        Ok(serde_json::Value::Object(m)) => Ok(m),
        Ok(other) => Err(Failure::bad_request(format!(
            "expected a JSON object, got {}",
            json_kind(&other)
        ))),
        Err(e @ hax_consul::bounded_json::Error::TooLarge { .. }) => Err(Failure::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "size",
            e.to_string(),
            "Payload too large once decoded",
        )),
        Err(e) => Err(Failure::new(
            StatusCode::BAD_REQUEST,
            "bad_json",
            e.to_string(),
            "Bad JSON provided",
        )),
    }
}

/// The name of the kind of a JSON value, for messages.
pub fn json_kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

// ---------------------------------------------------------------------------
// Metrics

/// Requests answered, by route and status code.
#[derive(Debug, Default)]
pub struct ApiMetrics {
    answered: Mutex<BTreeMap<(String, u16), u64>>,
}

impl ApiMetrics {
    fn count(&self, route: &str, status: StatusCode) {
        let mut m = self.answered.lock().unwrap_or_else(PoisonError::into_inner);
        *m.entry((route.to_owned(), status.as_u16())).or_default() += 1;
    }

    /// How many requests of `route` were answered `status`.
    pub fn answered(&self, route: &str, status: u16) -> u64 {
        self.answered
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&(route.to_owned(), status))
            .copied()
            .unwrap_or(0)
    }
}

// ---------------------------------------------------------------------------
// Middleware

async fn require_token(State(state): State<ApiState>, req: Request, next: Next) -> Response {
    if bearer_token_given(state.token.as_deref(), req.headers()) {
        next.run(req).await
    } else {
        ApiError::unauthorised().into_response()
    }
}

async fn require_json_body(req: Request, next: Next) -> Response {
    match refuse_body_type(req.headers(), BodyTypes::JsonOrToolForm) {
        None => next.run(req).await,
        Some(refusal) => {
            tracing::warn!(
                method = %req.method(),
                path = %req.uri().path(),
                reason = %refusal.error_message,
                "request body is not JSON"
            );
            refusal.into_response()
        }
    }
}

async fn observe(State(state): State<ApiState>, req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    // The route as declared, so that counters do not grow per fid or
    // operation name.
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| path.clone(), |m| m.as_str().to_owned());
    let response = next.run(req).await;
    let status = response.status();
    state.metrics.count(&route, status);
    if status.is_server_error() {
        tracing::error!(%method, %path, %status, "API request failed");
    } else if status.is_client_error() {
        tracing::warn!(%method, %path, %status, "API request refused");
    } else if method == Method::POST {
        tracing::info!(%method, %path, %status, "API request done");
    } else {
        tracing::debug!(%method, %path, %status, "API request done");
    }
    response
}

/// The API routes, to merge into the daemon's router.
/// The daemon's one router: the Consul watch routes of
/// [`hax_consul::server::router`], the API and `/metrics`.
pub fn daemon_router(
    watches: hax_consul::server::AppState,
    api: ApiState,
    metrics: Arc<prometheus_client::registry::Registry>,
) -> Router {
    hax_consul::server::router(watches)
        .route(
            "/metrics",
            get(move |headers: axum::http::HeaderMap| {
                let registry = Arc::clone(&metrics);
                async move { metrics::answer(&registry, &headers) }
            }),
        )
        .merge(router(api))
}

/// The API's routes.
pub fn router(state: ApiState) -> Router {
    let writes = Router::new()
        .route("/api/v1/sns/{operation}", post(sns::post_operation))
        .route("/v1/events/subscribe", post(events::subscribe))
        .route("/v1/events/unsubscribe", post(events::unsubscribe))
        // The token is checked first (the outer layer): without it, a
        // request learns nothing of what the route takes.
        .route_layer(middleware::from_fn(require_json_body))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token));
    let reads = Router::new()
        .route("/api/v1/sns/repair-status", get(sns::repair_status))
        .route("/api/v1/sns/rebalance-status", get(sns::rebalance_status))
        .route("/v1/cluster/status", get(status::cluster_status))
        .route(
            "/v1/cluster/fetch-fids",
            get(fetch_fids::cluster_fetch_fids),
        )
        .route(
            "/v1/cluster/status/bytecount",
            get(status::bytecount_status),
        );
    writes
        .merge(reads)
        .route_layer(middleware::from_fn_with_state(state.clone(), observe))
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(state)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_must_be_json_objects() {
        assert_eq!(json_object(br#"{"fid": "x"}"#).unwrap().len(), 1);
        let e = json_object(b"[1]").unwrap_err();
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        assert!(e.message.contains("an array"), "{}", e.message);
        let e = json_object(b"{").unwrap_err();
        assert_eq!((e.status, e.kind), (StatusCode::BAD_REQUEST, "bad_json"));
        let e = json_object(b"").unwrap_err();
        assert_eq!(e.kind, "bad_json");
    }
}
