//! `POST /v1/events/subscribe` and `POST /v1/events/unsubscribe`: a body
//! `{"<resource type>": "<interface>"}` (e.g. `{"node": "health_message"}`)
//! adds the interface to, or removes it from, the JSON list in
//! `events/subscription/<resource type>`.
//!
//! The whole body is checked before anything is written, and a bad one is a
//! 400 (the original answered 200 with an error text, after writing the
//! pairs that came before the bad one). Each list is updated with
//! check-and-set, so that concurrent requests do not undo each other.

use std::collections::BTreeMap;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use hax_consul::schema::{HaxKv, SchemaError};
use serde::Serialize;

use super::{body_bytes, json_kind, json_object, json_response, ApiState, Failure};

/// Resource types that can be subscribed to.
pub const RESOURCE_TYPES: [&str; 1] = ["node"];

/// Interfaces through which events can be delivered.
pub const INTERFACE_TYPES: [&str; 1] = ["health_message"];

/// One (resource type, interface) pair of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscription {
    /// Resource type (`node`).
    pub resource: String,
    /// Interface (`health_message`).
    pub interface: String,
}

/// The pairs of a request body, checked.
pub fn parse_subscriptions(body: &[u8]) -> Result<Vec<Subscription>, Failure> {
    let object = json_object(body)?;
    if object.is_empty() {
        return Err(Failure::bad_request(format!(
            "no subscription given: expected {{\"<resource type>\": \"<interface>\"}} \
             with resource types {RESOURCE_TYPES:?} and interfaces {INTERFACE_TYPES:?}"
        )));
    }
    object
        .into_iter()
        .map(|(resource, v)| {
            if !RESOURCE_TYPES.contains(&resource.as_str()) {
                return Err(Failure::bad_request(format!(
                    "invalid resource type {resource:?} (known: {RESOURCE_TYPES:?})"
                )));
            }
            let interface = match v {
                serde_json::Value::String(s) => s,
                other => {
                    return Err(Failure::bad_request(format!(
                        "the interface of {resource:?} must be a string, got {}",
                        json_kind(&other)
                    )))
                }
            };
            if !INTERFACE_TYPES.contains(&interface.as_str()) {
                return Err(Failure::bad_request(format!(
                    "invalid interface type {interface:?} (known: {INTERFACE_TYPES:?})"
                )));
            }
            Ok(Subscription {
                resource,
                interface,
            })
        })
        .collect()
}

/// The answer: each resource type touched with its list as stored now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SubscriptionsAnswer {
    /// Resource type → interfaces.
    pub subscriptions: BTreeMap<String, Vec<String>>,
}

/// Adds `interface` to `list` (or removes it); whether `list` changed.
fn change(list: &mut Vec<String>, interface: &str, add: bool) -> bool {
    let present = list.iter().any(|i| i == interface);
    if add && !present {
        list.push(interface.to_owned());
        true
    } else if !add && present {
        list.retain(|i| i != interface);
        true
    } else {
        false
    }
}

/// The subscription the original hax makes at its start, node health
/// messages (`events/subscription/node` holds `"health_message"`); what
/// was there stays.
pub async fn subscribe_at_start(kv: &HaxKv) -> Result<Vec<String>, SchemaError> {
    kv.update_event_subscriptions("node", |list| change(list, "health_message", true))
        .await
}

async fn apply(state: &ApiState, body: &[u8], add: bool) -> Result<Response, Failure> {
    let pairs = parse_subscriptions(body)?;
    let _slot = state.consul_slot().await?;
    let mut answer = SubscriptionsAnswer {
        subscriptions: BTreeMap::new(),
    };
    for s in pairs {
        let stored = state
            .kv
            .update_event_subscriptions(&s.resource, |list| change(list, &s.interface, add))
            .await
            .map_err(|e| Failure::consul(&e))?;
        tracing::info!(
            resource = %s.resource,
            interface = %s.interface,
            subscribed = add,
            "event subscription updated"
        );
        answer.subscriptions.insert(s.resource, stored);
    }
    Ok(json_response(StatusCode::OK, &answer))
}

/// `POST /v1/events/subscribe`.
pub async fn subscribe(
    State(state): State<ApiState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, Failure> {
    apply(&state, &body_bytes(body)?, true).await
}

/// `POST /v1/events/unsubscribe`.
pub async fn unsubscribe(
    State(state): State<ApiState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, Failure> {
    apply(&state, &body_bytes(body)?, false).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_original_request_is_accepted() {
        assert_eq!(
            parse_subscriptions(br#"{"node": "health_message"}"#).unwrap(),
            [Subscription {
                resource: "node".into(),
                interface: "health_message".into()
            }]
        );
    }

    #[test]
    fn bad_requests_are_refused_with_the_reason() {
        for (body, needle) in [
            (
                &br#"{"disk": "health_message"}"#[..],
                "invalid resource type \"disk\"",
            ),
            (br#"{"node": "sms"}"#, "invalid interface type \"sms\""),
            (br#"{"node": 1}"#, "must be a string, got a number"),
            (br#"{}"#, "no subscription given"),
            (br#"["node"]"#, "expected a JSON object"),
            (b"node=health_message", "line 1 column"),
            // One bad pair refuses the whole request.
            (
                br#"{"node": "health_message", "rack": "health_message"}"#,
                "\"rack\"",
            ),
        ] {
            let e = parse_subscriptions(body).unwrap_err();
            assert_eq!(e.status, StatusCode::BAD_REQUEST);
            assert!(
                e.message.contains(needle),
                "{}: {}",
                String::from_utf8_lossy(body),
                e.message
            );
        }
    }
}
