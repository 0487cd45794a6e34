//! The BQ route skips the entries a consumer has committed before decoding
//! them: a watch delivers the whole queue every time.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use base64::Engine as _;
use hax_consul::server::{
    decode_bq_payload, decode_bq_payload_above, router, AppState, ServerConfig, UpdateData,
};
use tokio::sync::mpsc;
use tower::ServiceExt;

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

fn message(n: u64) -> String {
    format!(
        r#"{{"timestamp": "t", "message_type": "PROCESS-STATE-UPDATE", "payload": {{"n": {n}}}}}"#
    )
}

/// A watch payload of `bq/1..=n`, plus `bq/x` (not an entry) and, at epoch
/// `broken`, a value that is not base64.
fn payload(n: u64, broken: u64) -> String {
    let mut items: Vec<String> = (1..=n)
        .map(|e| {
            let value = if e == broken {
                "%%%".to_owned()
            } else {
                b64(&message(e))
            };
            format!(
                r#"{{"Key":"bq/{e}","Value":"{value}","Flags":0,"CreateIndex":{e},"ModifyIndex":{e},"LockIndex":0}}"#
            )
        })
        .collect();
    items.push(format!(
        r#"{{"Key":"bq/x","Value":"{}","CreateIndex":1,"ModifyIndex":1}}"#,
        b64("{}")
    ));
    format!("[{}]", items.join(","))
}

#[test]
fn entries_at_or_below_the_floor_are_not_decoded() {
    let body = payload(10, 3);
    // Everything decoded: the broken value fails the whole payload.
    assert!(decode_bq_payload(body.as_bytes()).is_err());
    assert!(decode_bq_payload_above(body.as_bytes(), 0).is_err());
    // Above the broken one: only the rest, as the full decoder gives them.
    let above = decode_bq_payload_above(body.as_bytes(), 6).expect("decodes");
    assert_eq!(
        above.iter().map(|e| e.epoch).collect::<Vec<_>>(),
        vec![7, 8, 9, 10]
    );
    let whole = decode_bq_payload(payload(10, 0).as_bytes()).expect("decodes");
    assert_eq!(above.as_slice(), &whole[6..]);
    assert!(decode_bq_payload_above(body.as_bytes(), 10)
        .expect("decodes")
        .is_empty());
    assert!(decode_bq_payload_above(b"null", 0)
        .expect("null")
        .is_empty());
    assert!(decode_bq_payload_above(b" ", 0).expect("empty").is_empty());
    assert!(decode_bq_payload_above(b"[{", 0).is_err());
}

#[tokio::test]
async fn the_route_follows_the_floor_it_is_given() {
    let (tx, mut rx) = mpsc::channel(4);
    let floor = Arc::new(AtomicU64::new(0));
    let app = router(AppState::new(tx, ServerConfig::default()).with_bq_floor(Arc::clone(&floor)));
    let post = |body: String| {
        Request::post("/watcher/bq")
            .header("content-type", "application/json")
            .body(Body::from(body))
            .expect("request")
    };
    let epochs = |d: UpdateData| match d {
        UpdateData::BroadcastQueue(e) => e.iter().map(|e| e.epoch).collect::<Vec<_>>(),
        other => panic!("{other:?}"),
    };
    let resp = app
        .clone()
        .oneshot(post(payload(5, 0)))
        .await
        .expect("call");
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        epochs(rx.recv().await.expect("update").data),
        vec![1, 2, 3, 4, 5]
    );
    floor.store(4, Ordering::Release);
    let resp = app.oneshot(post(payload(6, 2))).await.expect("call");
    assert_eq!(resp.status(), StatusCode::OK, "the broken entry is below");
    assert_eq!(epochs(rx.recv().await.expect("update").data), vec![5, 6]);
}
