//! SNS repair and rebalance of a pool.
//!
//! * `POST /api/v1/sns/{operation}` with `{"fid": "<pool fid>"}` (other keys
//!   ignored); `operation` is `repair-` or `rebalance-` followed by `start`,
//!   `stop` (abort), `pause` (quiesce) or `resume` (continue).
//! * `GET /api/v1/sns/repair-status?pool_fid=<fid>` and
//!   `GET /api/v1/sns/rebalance-status?pool_fid=<fid>`: one
//!   `{"fid", "state", "progress"}` per ioservice of the pool, `state` being
//!   Motr's `m0_cm_status` number (0 invalid, 1 idle, 2 started, 3 failed,
//!   4 paused).
//!
//! The original queued the operation and answered 200 before Motr was even
//! asked; here the answer is Motr's: 200 when done, 409 when Motr refuses
//! the call as busy, 404 for a pool Motr does not know, 503 before rconfc
//! runs or while stopping, 502 when Motr fails, 504 when it does not answer within
//! [`super::MOTR_TIMEOUT`]. Rebalance status asks for rebalance's status (the
//! original asked for repair's). `disk-attach` and `disk-detach`, which the
//! original accepted and then dropped, are answered 501. Motr does an
//! operation from any state of the copy machine (start while running, pause
//! while idle, ...): what it did shows in the status, not in the answer.
//!
//! SNS operations that come through the broadcast queue (`SNS_OP`, which
//! every node consumes, as in the original) are carried out by
//! [`serve_queue`]; after the first node, Motr answers the others Ok and
//! leaves the machine as the first one left it.

use std::collections::HashMap;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use hax_consul::backoff::Backoff;
use hax_core::{ClientError, Fid, FidType, MotrClient, SnsKind, SnsOp, SnsStatus};
use serde::Serialize;
use tokio::sync::mpsc;

use crate::inbound::bq::SnsRequest;

use super::{body_bytes, json_kind, json_object, json_response, ApiState, Failure};

/// What an `{operation}` of the route names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    /// An SNS operation.
    Sns(SnsKind, SnsOp),
    /// A name the original accepted but never carried out.
    Unsupported(&'static str),
}

/// Every operation name the route takes, for messages.
pub const OPERATIONS: [&str; 8] = [
    "repair-start",
    "repair-stop",
    "repair-pause",
    "repair-resume",
    "rebalance-start",
    "rebalance-stop",
    "rebalance-pause",
    "rebalance-resume",
];

/// The operation named `name`, `None` for a name the route does not know.
pub fn parse_operation(name: &str) -> Option<Operation> {
    let op = |s: &str| match s {
        "start" => Some(SnsOp::Start),
        "stop" => Some(SnsOp::Abort),
        "pause" => Some(SnsOp::Quiesce),
        "resume" => Some(SnsOp::Continue),
        _ => None,
    };
    match name {
        "disk-attach" => Some(Operation::Unsupported("disk-attach")),
        "disk-detach" => Some(Operation::Unsupported("disk-detach")),
        _ => {
            if let Some(rest) = name.strip_prefix("repair-") {
                op(rest).map(|o| Operation::Sns(SnsKind::Repair, o))
            } else if let Some(rest) = name.strip_prefix("rebalance-") {
                op(rest).map(|o| Operation::Sns(SnsKind::Rebalance, o))
            } else {
                None
            }
        }
    }
}

/// A pool fid given as text: a fid of type `o`.
pub fn parse_pool_fid(text: &str) -> Result<Fid, Failure> {
    let fid: Fid = text
        .parse()
        .map_err(|e| Failure::bad_request(format!("{text:?} is not a fid: {e}")))?;
    if !fid.is(FidType::Pool) {
        return Err(Failure::bad_request(format!(
            "{fid} is not a pool fid (type '{}')",
            FidType::Pool.letter()
        )));
    }
    Ok(fid)
}

/// The pool of a `POST /api/v1/sns/{operation}` body.
pub fn pool_of_body(body: &[u8]) -> Result<Fid, Failure> {
    let object = json_object(body)?;
    match object.get("fid") {
        None => Err(Failure::bad_request(
            "missing \"fid\": expected {\"fid\": \"<pool fid>\"}",
        )),
        Some(serde_json::Value::String(s)) => parse_pool_fid(s),
        Some(other) => Err(Failure::bad_request(format!(
            "\"fid\" must be a string, got {}",
            json_kind(other)
        ))),
    }
}

/// The answer to a failed Motr call about `pool`.
pub fn client_failure(e: &ClientError, pool: Fid) -> Failure {
    match e {
        ClientError::NotReady => Failure::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            e.to_string(),
            "Motr's configuration client (rconfc) is not started yet",
        ),
        ClientError::ShuttingDown => Failure::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting_down",
            e.to_string(),
            "hax is stopping",
        ),
        ClientError::NotFound(fid) => Failure::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("{fid} is not in Motr's configuration (pool {pool})"),
            "Unknown pool",
        ),
        ClientError::Busy => Failure::new(
            StatusCode::CONFLICT,
            "busy",
            e.to_string(),
            "Operation not allowed in the current state",
        ),
        ClientError::Timeout => timeout_failure(),
        ClientError::Motr { .. } | ClientError::Invalid(_) => Failure::new(
            StatusCode::BAD_GATEWAY,
            "motr",
            e.to_string(),
            "Motr failed",
        ),
        _ => Failure::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "motr",
            e.to_string(),
            "Unexpected error",
        ),
    }
}

fn timeout_failure() -> Failure {
    Failure::new(
        StatusCode::GATEWAY_TIMEOUT,
        "timeout",
        "Motr did not answer in time",
        "Motr timeout",
    )
}

/// The answer to a done operation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OperationDone {
    /// The operation, as named in the route.
    pub operation: String,
    /// The pool.
    pub fid: String,
    /// `ok`.
    pub result: &'static str,
}

/// One entry of a status answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StatusEntry {
    /// The ioservice.
    pub fid: String,
    /// `m0_cm_status`.
    pub state: i32,
    /// Progress.
    pub progress: u64,
}

impl From<&SnsStatus> for StatusEntry {
    fn from(s: &SnsStatus) -> Self {
        StatusEntry {
            fid: s.fid.to_string(),
            state: s.state.code(),
            progress: s.progress,
        }
    }
}

/// `POST /api/v1/sns/{operation}`.
pub async fn post_operation(
    State(state): State<ApiState>,
    Path(operation): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, Failure> {
    let (kind, op) = match parse_operation(&operation) {
        Some(Operation::Sns(kind, op)) => (kind, op),
        Some(Operation::Unsupported(name)) => {
            return Err(Failure::new(
                StatusCode::NOT_IMPLEMENTED,
                "unsupported",
                format!("{name} is not supported: attach or detach the disk through its HA state"),
                "Not implemented",
            ))
        }
        None => {
            return Err(Failure::new(
                StatusCode::NOT_FOUND,
                "unknown_operation",
                format!("unknown SNS operation {operation:?} (known: {OPERATIONS:?})"),
                "Not found",
            ))
        }
    };
    let pool = pool_of_body(&body_bytes(body)?)?;
    tracing::info!(%operation, %pool, "SNS operation requested");
    match tokio::time::timeout(super::MOTR_TIMEOUT, state.motr.sns(kind, op, pool)).await {
        Err(_) => Err(timeout_failure()),
        Ok(Err(e)) => {
            tracing::warn!(%operation, %pool, error = %e, "SNS operation failed");
            Err(client_failure(&e, pool))
        }
        Ok(Ok(())) => Ok(json_response(
            StatusCode::OK,
            &OperationDone {
                operation,
                fid: pool.to_string(),
                result: "ok",
            },
        )),
    }
}

async fn status(
    state: &ApiState,
    kind: SnsKind,
    query: &HashMap<String, String>,
) -> Result<Response, Failure> {
    let text = query.get("pool_fid").ok_or_else(|| {
        Failure::bad_request("missing query parameter pool_fid (?pool_fid=<pool fid>)")
    })?;
    let pool = parse_pool_fid(text)?;
    match tokio::time::timeout(super::MOTR_TIMEOUT, state.motr.sns_status(kind, pool)).await {
        Err(_) => Err(timeout_failure()),
        Ok(Err(e)) => Err(client_failure(&e, pool)),
        Ok(Ok(list)) => Ok(json_response(
            StatusCode::OK,
            &list.iter().map(StatusEntry::from).collect::<Vec<_>>(),
        )),
    }
}

/// `GET /api/v1/sns/repair-status?pool_fid=<fid>`.
pub async fn repair_status(
    State(state): State<ApiState>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, Failure> {
    status(&state, SnsKind::Repair, &query).await
}

/// `GET /api/v1/sns/rebalance-status?pool_fid=<fid>`.
pub async fn rebalance_status(
    State(state): State<ApiState>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, Failure> {
    status(&state, SnsKind::Rebalance, &query).await
}

/// How long a queued SNS operation waits for rconfc to run.
pub const QUEUE_READY_WAIT: Duration = Duration::from_secs(120);

/// Carries out the SNS operations of the broadcast queue, one after
/// another, until `requests` closes. An operation that comes before rconfc
/// runs waits for it (at most [`QUEUE_READY_WAIT`]); the outcome is logged.
pub async fn serve_queue(motr: MotrClient, mut requests: mpsc::Receiver<SnsRequest>) {
    while let Some(req) = requests.recv().await {
        let name = req.op.name();
        let (kind, op) = match parse_operation(name) {
            Some(Operation::Sns(kind, op)) => (kind, op),
            _ => {
                tracing::warn!(operation = name, pool = %req.pool, "SNS operation not supported; skipped");
                continue;
            }
        };
        let deadline = tokio::time::Instant::now() + QUEUE_READY_WAIT;
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
        let result = loop {
            let r = match tokio::time::timeout(super::MOTR_TIMEOUT, motr.sns(kind, op, req.pool))
                .await
            {
                Ok(r) => r,
                Err(_) => Err(ClientError::Timeout),
            };
            match r {
                Err(ClientError::NotReady)
                    if tokio::time::Instant::now() + backoff.peek() < deadline =>
                {
                    tokio::time::sleep(backoff.next_pause()).await;
                }
                r => break r,
            }
        };
        match result {
            Ok(()) => {
                tracing::info!(operation = name, pool = %req.pool, "SNS operation from the broadcast queue done")
            }
            Err(ClientError::Busy) => tracing::info!(
                operation = name,
                pool = %req.pool,
                "SNS operation from the broadcast queue refused by Motr as busy"
            ),
            Err(e) => {
                tracing::warn!(operation = name, pool = %req.pool, error = %e, "SNS operation from the broadcast queue failed")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hax_core::CmStatus;

    #[test]
    fn operation_names() {
        assert_eq!(
            parse_operation("repair-start"),
            Some(Operation::Sns(SnsKind::Repair, SnsOp::Start))
        );
        assert_eq!(
            parse_operation("repair-stop"),
            Some(Operation::Sns(SnsKind::Repair, SnsOp::Abort))
        );
        assert_eq!(
            parse_operation("rebalance-pause"),
            Some(Operation::Sns(SnsKind::Rebalance, SnsOp::Quiesce))
        );
        assert_eq!(
            parse_operation("rebalance-resume"),
            Some(Operation::Sns(SnsKind::Rebalance, SnsOp::Continue))
        );
        for name in OPERATIONS {
            assert!(
                matches!(parse_operation(name), Some(Operation::Sns(..))),
                "{name}"
            );
        }
        assert_eq!(
            parse_operation("disk-attach"),
            Some(Operation::Unsupported("disk-attach"))
        );
        for bad in [
            "repair",
            "repair-",
            "repair-abort",
            "rebalance-status",
            "Repair-start",
            "",
        ] {
            assert_eq!(parse_operation(bad), None, "{bad}");
        }
    }

    #[test]
    fn pool_fids() {
        let pool = parse_pool_fid("0x6f00000000000001:0x9").unwrap();
        assert_eq!((pool.container, pool.key), (0x6f00_0000_0000_0001, 9));
        let e = parse_pool_fid("0x7200000000000001:0x9").unwrap_err();
        assert!(e.message.contains("not a pool fid"), "{}", e.message);
        let e = parse_pool_fid("pool-1").unwrap_err();
        assert!(e.message.contains("is not a fid"), "{}", e.message);
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
    }

    #[test]
    fn bodies() {
        let pool = pool_of_body(
            br#"{"fid": "0x6f00000000000001:0x9", "comment": "extra keys are ignored"}"#,
        )
        .unwrap();
        assert_eq!(pool.key, 9);
        for (body, needle) in [
            (&b"{}"[..], "missing \"fid\""),
            (br#"{"fid": 9}"#, "must be a string, got a number"),
            (br#"{"fid": "0x6f00000000000001"}"#, "is not a fid"),
            (br#""0x6f00000000000001:0x9""#, "expected a JSON object"),
            (b"{fid}", "key must be a string"),
        ] {
            let e = pool_of_body(body).unwrap_err();
            assert_eq!(e.status, StatusCode::BAD_REQUEST);
            assert!(e.message.contains(needle), "{}", e.message);
        }
    }

    #[test]
    fn motr_errors_become_statuses() {
        let pool = parse_pool_fid("0x6f00000000000001:0x9").unwrap();
        let cases = [
            (ClientError::NotReady, StatusCode::SERVICE_UNAVAILABLE),
            (ClientError::ShuttingDown, StatusCode::SERVICE_UNAVAILABLE),
            (ClientError::NotFound(pool), StatusCode::NOT_FOUND),
            (ClientError::Busy, StatusCode::CONFLICT),
            (ClientError::Timeout, StatusCode::GATEWAY_TIMEOUT),
            (
                ClientError::Motr {
                    op: "sns_repair_start",
                    code: -5,
                },
                StatusCode::BAD_GATEWAY,
            ),
            (
                ClientError::Invalid("state 9".into()),
                StatusCode::BAD_GATEWAY,
            ),
        ];
        for (e, status) in cases {
            assert_eq!(client_failure(&e, pool).status, status, "{e:?}");
        }
    }

    #[test]
    fn status_entries_carry_the_motr_numbers() {
        let ios = Fid::typed(FidType::Service, 1, 0x20);
        let e = StatusEntry::from(&SnsStatus {
            fid: ios,
            state: CmStatus::Paused,
            progress: 42,
        });
        assert_eq!(
            serde_json::to_value(&e).unwrap(),
            serde_json::json!({"fid": ios.to_string(), "state": 4, "progress": 42})
        );
    }
}
