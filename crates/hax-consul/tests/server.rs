//! The watch server: routes through `oneshot`, a real client on a real port,
//! and a real Consul agent whose watch handlers POST to it.

use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use base64::Engine as _;
use hax_consul::catalog::{CheckRegistration, CheckStatus, ServiceRegistration};
use hax_consul::queue::QueuePublisher;
use hax_consul::schema::{FidText, QueueKind, QueueMessage};
use hax_consul::server::{
    reconcile, router, serve, spawn_resync, ApiError, AppState, ResyncTarget, ServerConfig,
    UpdateData, UpdateOrigin, WatchUpdate,
};
use hax_consul::AclToken;
use hax_testkit::dev_agent::DevAgent;
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

const T: Duration = Duration::from_secs(10);

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

fn app(capacity: usize, config: ServerConfig) -> (axum::Router, mpsc::Receiver<WatchUpdate>) {
    let (tx, rx) = mpsc::channel(capacity);
    (router(AppState::new(tx, config)), rx)
}

async fn call(app: &axum::Router, req: Request<Body>) -> (StatusCode, Vec<u8>) {
    let resp = app.clone().oneshot(req).await.expect("infallible");
    let status = resp.status();
    let body = resp
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes()
        .to_vec();
    (status, body)
}

fn post(path: &str, body: impl Into<Body>) -> Request<Body> {
    Request::post(path)
        .header("content-type", "application/json")
        .body(body.into())
        .expect("request")
}

fn error_body(body: &[u8]) -> ApiError {
    serde_json::from_slice(body)
        .unwrap_or_else(|e| panic!("JSON error body ({e}): {}", String::from_utf8_lossy(body)))
}

const SERVICE_PAYLOAD: &str = r#"[{"Node":{"ID":"a","Node":"n1","Address":"127.0.0.1","Datacenter":"dc1","Meta":null},
  "Service":{"ID":"6","Service":"hax","Tags":[],"Address":"","Meta":{"http_port":"8008"},"Port":22001},
  "Checks":[{"Node":"n1","CheckID":"serfHealth","Name":"Serf","Status":"passing","ServiceID":""},
            {"Node":"n1","CheckID":"service:6","Name":"hax","Status":"critical","ServiceID":"6"}]}]"#;

#[tokio::test]
async fn routes_decode_and_queue_typed_updates() {
    let (app, mut rx) = app(16, ServerConfig::default());

    let (status, body) = call(
        &app,
        Request::get("/healthz").body(Body::empty()).expect("req"),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, br#"{"status":"ok"}"#);
    let (status, body) = call(&app, Request::get("/").body(Body::empty()).expect("req")).await;
    assert_eq!(
        (status, body.as_slice()),
        (StatusCode::OK, b"I'm alive! Sincerely, HaX".as_slice())
    );

    let (status, _) = call(&app, post("/", SERVICE_PAYLOAD)).await;
    assert_eq!(status, StatusCode::OK);
    let u = rx.recv().await.expect("update");
    assert_eq!(
        (u.label.as_str(), u.origin),
        ("service", UpdateOrigin::Watch)
    );
    match u.data {
        UpdateData::Service(entries) => {
            assert_eq!(entries[0].service.id, "6");
            assert_eq!(entries[0].aggregated_status(), CheckStatus::Critical);
        }
        other => panic!("{other:?}"),
    }

    let msg = r#"{"timestamp": "t", "message_type": "PROCESS-STATE-UPDATE", "payload": {}}"#;
    let bq = format!(
        r#"[{{"Key":"bq/10","Value":"{}"}},{{"Key":"bq/9","Value":"{}"}},{{"Key":"bq/x","Value":null}}]"#,
        b64(msg),
        b64("not json")
    );
    assert_eq!(call(&app, post("/watcher/bq", bq)).await.0, StatusCode::OK);
    match rx.recv().await.expect("update").data {
        UpdateData::BroadcastQueue(entries) => {
            assert_eq!(entries.iter().map(|e| e.epoch).collect::<Vec<_>>(), [9, 10]);
            assert!(
                entries[0].message.is_err(),
                "bad inner JSON is handed over, not refused"
            );
            assert!(entries[1].message.is_ok());
        }
        other => panic!("{other:?}"),
    }

    let proc = format!(
        r#"{{"Key":"processes/0x7200000000000001:0x6","Value":"{}"}}"#,
        b64(r#"{"state": "M0_CONF_HA_PROCESS_STOPPED", "type": "M0_CONF_HA_PROCESS_M0D"}"#)
    );
    assert_eq!(
        call(&app, post("/watcher/processes", proc)).await.0,
        StatusCode::OK
    );
    match rx.recv().await.expect("update").data {
        UpdateData::ProcessState { fid, status } => {
            assert_eq!(fid, FidText::new(0x7200_0000_0000_0001, 6));
            assert!(status.is_some());
        }
        other => panic!("{other:?}"),
    }

    // Generic kinds, including the null payloads of missing data.
    assert_eq!(
        call(&app, post("/watch/key/leader", "null")).await.0,
        StatusCode::OK
    );
    let u = rx.recv().await.expect("update");
    assert_eq!(
        (u.label.as_str(), u.data),
        ("leader", UpdateData::Key(None))
    );
    assert_eq!(
        call(&app, post("/watch/keyprefix/conf", "null")).await.0,
        StatusCode::OK
    );
    assert_eq!(
        rx.recv().await.expect("update").data,
        UpdateData::KeyPrefix(vec![])
    );
    assert_eq!(
        call(&app, post("/watch/service/confd", "null")).await.0,
        StatusCode::OK
    );
    assert_eq!(
        rx.recv().await.expect("update").data,
        UpdateData::Service(vec![])
    );
    let checks =
        r#"[{"Node":"n1","CheckID":"service:6","Name":"x","Status":"passing","ServiceID":"6"}]"#;
    assert_eq!(
        call(&app, post("/watch/checks/hax", checks)).await.0,
        StatusCode::OK
    );
    match rx.recv().await.expect("update").data {
        UpdateData::Checks(c) => assert_eq!(c[0].status, CheckStatus::Passing),
        other => panic!("{other:?}"),
    }
    assert!(rx.try_recv().is_err(), "one update per request");
}

#[tokio::test]
async fn bad_input_gets_json_4xx_and_nothing_is_queued() {
    let config = ServerConfig {
        body_limit: 1024,
        ..ServerConfig::default()
    };
    let (app, mut rx) = app(16, config);
    let cases: Vec<(&str, String, StatusCode, &str)> = vec![
        ("/", "{not json".into(), StatusCode::BAD_REQUEST, "json"),
        ("/", r#"{"a": 1}"#.into(), StatusCode::BAD_REQUEST, "shape"),
        (
            "/",
            r#"[{"Node":{"Node":"n"},"Service":{"ID":"x","Service":"hax"}}]"#.into(),
            StatusCode::BAD_REQUEST,
            "fid",
        ),
        (
            "/watcher/bq",
            r#"[{"Key":"bq/1","Value":"@@@"}]"#.into(),
            StatusCode::BAD_REQUEST,
            "base64",
        ),
        (
            "/watcher/bq",
            r#"[{"Key":5}]"#.into(),
            StatusCode::BAD_REQUEST,
            "shape",
        ),
        (
            "/watcher/processes",
            r#"{"Key":"processes/nope","Value":null}"#.into(),
            StatusCode::BAD_REQUEST,
            "fid",
        ),
        (
            "/watcher/processes",
            format!(r#"{{"Key":"processes/0x1:0x2","Value":"{}"}}"#, b64("{}")),
            StatusCode::BAD_REQUEST,
            "value",
        ),
        (
            "/watcher/processes",
            "null".into(),
            StatusCode::BAD_REQUEST,
            "shape",
        ),
        (
            "/watch/key/x",
            "[]".into(),
            StatusCode::BAD_REQUEST,
            "shape",
        ),
        (
            "/watch/bogus/x",
            "null".into(),
            StatusCode::NOT_FOUND,
            "route",
        ),
        (
            "/no/such/route",
            "null".into(),
            StatusCode::NOT_FOUND,
            "route",
        ),
        (
            "/watcher/bq",
            format!("[{}]", "0,".repeat(600) + "0"),
            StatusCode::PAYLOAD_TOO_LARGE,
            "body",
        ),
    ];
    for (path, body, want, kind) in cases {
        let (status, resp) = call(&app, post(path, body.clone())).await;
        assert_eq!(status, want, "{path} {body:.60}");
        let err = error_body(&resp);
        assert_eq!(err.status_code, want.as_u16());
        assert_eq!(err.error_type, kind, "{path}: {}", err.error_message);
    }
    assert!(rx.try_recv().is_err(), "nothing queued");
}

#[tokio::test]
async fn full_or_closed_receiver_is_503() {
    let config = ServerConfig {
        enqueue_timeout: Duration::from_millis(50),
        ..ServerConfig::default()
    };
    let (app, rx) = app(1, config);
    assert_eq!(
        call(&app, post("/watch/key/a", "null")).await.0,
        StatusCode::OK
    );
    let (status, body) = call(&app, post("/watch/key/a", "null")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(error_body(&body).error_type, "busy");
    drop(rx);
    let (status, body) = call(&app, post("/watch/key/a", "null")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(error_body(&body).error_type, "closed");
}

#[tokio::test]
async fn bearer_token_guards_every_state_changing_request() {
    let config = ServerConfig {
        bearer_token: Some(AclToken::new("s3cret")),
        ..ServerConfig::default()
    };
    let (app, mut rx) = app(4, config);
    assert_eq!(
        call(
            &app,
            Request::get("/healthz").body(Body::empty()).expect("req")
        )
        .await
        .0,
        StatusCode::OK
    );
    // Reading needs no token.
    assert_eq!(
        call(&app, Request::get("/").body(Body::empty()).expect("req"))
            .await
            .0,
        StatusCode::OK
    );
    let (status, body) = call(&app, post("/watch/key/a", "null")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(error_body(&body).error_type, "auth");
    for path in ["/", "/watcher/bq", "/watcher/processes", "/no/such/route"] {
        assert_eq!(
            call(&app, post(path, "null")).await.0,
            StatusCode::UNAUTHORIZED,
            "POST {path}"
        );
    }
    let wrong = Request::post("/watch/key/a")
        .header("authorization", "Bearer nope")
        .body(Body::from("null"))
        .expect("req");
    assert_eq!(call(&app, wrong).await.0, StatusCode::UNAUTHORIZED);
    let right = Request::post("/watch/key/a")
        .header("authorization", "Bearer s3cret")
        .body(Body::from("null"))
        .expect("req");
    assert_eq!(call(&app, right).await.0, StatusCode::OK);
    assert!(rx.recv().await.is_some());
}

#[tokio::test]
async fn real_socket_timeout_and_graceful_shutdown() {
    let config = ServerConfig {
        request_timeout: Duration::from_millis(300),
        ..ServerConfig::default()
    };
    let (app, mut rx) = app(4, config);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let cancel = CancellationToken::new();
    let server = tokio::spawn(serve(listener, app, cancel.clone()));

    let http = reqwest::Client::new();
    let resp = http
        .post(format!("http://{addr}/watch/key/leader"))
        .body(format!(r#"{{"Key":"leader","Value":"{}"}}"#, b64("node1")))
        .send()
        .await
        .expect("post");
    assert_eq!(resp.status().as_u16(), 200);
    match rx.recv().await.expect("update").data {
        UpdateData::Key(Some(kv)) => assert_eq!(kv.value, b"node1"),
        other => panic!("{other:?}"),
    }

    // A client that stalls mid-body gets 408 instead of holding the server.
    let mut sock = tokio::net::TcpStream::connect(addr).await.expect("connect");
    sock.write_all(b"POST /watch/key/a HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"Key\"")
        .await
        .expect("write");
    let mut buf = vec![0u8; 1024];
    let n = tokio::time::timeout(T, sock.read(&mut buf))
        .await
        .expect("answered")
        .expect("read");
    let text = String::from_utf8_lossy(&buf[..n]);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");

    cancel.cancel();
    tokio::time::timeout(T, server)
        .await
        .expect("server stopped")
        .expect("join")
        .expect("serve ok");
    assert!(
        http.get(format!("http://{addr}/healthz"))
            .send()
            .await
            .is_err(),
        "closed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consul_watch_handlers_deliver_to_the_server_and_resync_fills_gaps() {
    let (tx, mut rx) = mpsc::channel(64);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let cancel = CancellationToken::new();
    let server = tokio::spawn(serve(
        listener,
        router(AppState::new(tx.clone(), ServerConfig::default())),
        cancel.clone(),
    ));
    let handler = |path: &str| {
        serde_json::json!({
            "handler_type": "http",
            "http_handler_config": {
                "path": format!("http://{addr}{path}"),
                "method": "POST",
                "timeout": "10s"
            }
        })
    };
    let mut watches = Vec::new();
    for (mut w, path) in [
        (
            serde_json::json!({"type": "key", "key": "leader"}),
            "/watch/key/leader",
        ),
        (
            serde_json::json!({"type": "keyprefix", "prefix": "bq/"}),
            "/watcher/bq",
        ),
        (
            serde_json::json!({"type": "service", "service": "hax"}),
            "/",
        ),
    ] {
        if let (Some(obj), Some(h)) = (w.as_object_mut(), handler(path).as_object()) {
            obj.extend(h.clone());
        }
        watches.push(w);
    }
    let agent = DevAgent::builder()
        .extra_config(serde_json::json!({ "watches": watches }))
        .start()
        .await
        .expect("agent with watches");
    let c = agent.client().expect("client");

    // Collects updates until one matches.
    async fn until(
        rx: &mut mpsc::Receiver<WatchUpdate>,
        what: &str,
        pred: impl Fn(&WatchUpdate) -> bool,
    ) -> WatchUpdate {
        tokio::time::timeout(T, async {
            loop {
                let u = rx.recv().await.expect("channel open");
                if pred(&u) {
                    return u;
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("no update: {what}"))
    }

    // Watches fire once at start with the current (missing) data.
    until(&mut rx, "initial leader", |u| {
        u.label == "leader" && u.data == UpdateData::Key(None)
    })
    .await;

    c.kv_put("leader", "node1").await.expect("put");
    until(
        &mut rx,
        "leader written",
        |u| matches!(&u.data, UpdateData::Key(Some(kv)) if kv.value == b"node1"),
    )
    .await;

    let p = QueuePublisher::new(c.clone(), QueueKind::Broadcast);
    let m = QueueMessage::new(
        "t",
        "PROCESS-STATE-UPDATE",
        serde_json::json!({"fid": "0x7200000000000001:0x6", "state": "M0_CONF_HA_PROCESS_STARTED", "type": "M0_CONF_HA_PROCESS_M0D"}),
    );
    p.publish(&m).await.expect("publish");
    p.publish(&m).await.expect("publish");
    let bq = until(
        &mut rx,
        "two bq entries",
        |u| matches!(&u.data, UpdateData::BroadcastQueue(e) if e.len() == 2),
    )
    .await;

    c.agent_service_register(&ServiceRegistration {
        id: "6".into(),
        name: "hax".into(),
        port: 22001,
        checks: vec![CheckRegistration {
            check_id: Some("service:6".into()),
            name: "hax".into(),
            ttl: Some("60s".into()),
            status: Some(CheckStatus::Passing),
        }],
        ..ServiceRegistration::default()
    })
    .await
    .expect("register");
    until(
        &mut rx,
        "hax service",
        |u| matches!(&u.data, UpdateData::Service(e) if e.len() == 1 && e[0].service.id == "6"),
    )
    .await;

    // Reconciliation produces the same updates from the store.
    let (rtx, mut rrx) = mpsc::channel(16);
    let targets = vec![
        ResyncTarget::BroadcastQueue,
        ResyncTarget::Key {
            label: "leader".into(),
            key: "leader".into(),
        },
        ResyncTarget::Service {
            label: "service".into(),
            name: "hax".into(),
        },
    ];
    assert_eq!(reconcile(&c, &targets, &rtx).await.expect("reconcile"), 3);
    let r = rrx.recv().await.expect("bq resync");
    assert_eq!((r.label.as_str(), r.origin), ("bq", UpdateOrigin::Resync));
    assert_eq!(r.data, bq.data);
    assert!(matches!(
        rrx.recv().await.expect("leader").data,
        UpdateData::Key(Some(_))
    ));
    let svc = rrx.recv().await.expect("service").data;
    assert!(
        matches!(svc, UpdateData::Service(ref e) if e.len() == 1),
        "{svc:?}"
    );

    // A reload re-fires every watch with unchanged data: the duplicates are
    // equal to what was delivered before, so handling them again is harmless.
    // (Last of the checks on the service: a reload may take an
    // API-registered service out of the catalog for a while.)
    c.agent_reload().await.expect("reload");
    let again = until(&mut rx, "bq re-fired after reload", |u| u.label == "bq").await;
    assert_eq!(again.data, bq.data);

    // The periodic task delivers again after its period, until cancelled.
    let resync_cancel = CancellationToken::new();
    let task = spawn_resync(
        c.clone(),
        vec![ResyncTarget::BroadcastQueue],
        rtx,
        Duration::from_millis(100),
        resync_cancel.clone(),
    );
    for _ in 0..3 {
        let u = tokio::time::timeout(T, rrx.recv())
            .await
            .expect("periodic")
            .expect("open");
        assert_eq!(u.data, bq.data);
    }
    resync_cancel.cancel();
    tokio::time::timeout(T, task)
        .await
        .expect("resync stopped")
        .expect("join");

    cancel.cancel();
    drop(agent);
    tokio::time::timeout(T, server)
        .await
        .expect("stopped")
        .expect("join")
        .expect("serve");
}

/// With a certificate (hare's `ssl/hax`), the server answers over HTTPS:
/// Consul's watch handlers, configured as hare's update-consul-conf writes
/// them for https (`tls_skip_verify`), deliver to it; a client that does not
/// speak TLS gets nothing and holds nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consul_watch_handlers_deliver_over_https() {
    let dir = tempfile::tempdir().expect("dir");
    let made = rcgen::generate_simple_self_signed(vec!["localhost".into()]).expect("cert");
    let (cert, key) = (dir.path().join("hax.crt"), dir.path().join("hax.key"));
    std::fs::write(&cert, made.cert.pem()).expect("cert file");
    std::fs::write(&key, made.signing_key.serialize_pem()).expect("key file");
    let config = ServerConfig {
        bind: "127.0.0.1:0".parse().expect("addr"),
        tls: Some(hax_consul::server::TlsConfig::from_pem_files(&cert, &key).expect("tls")),
        ..ServerConfig::default()
    };
    let (tx, mut rx) = mpsc::channel(64);
    let listener = hax_consul::server::bind(&config).await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let cancel = CancellationToken::new();
    let server = {
        let router = router(AppState::new(tx, config.clone()));
        let cancel = cancel.clone();
        tokio::spawn(async move {
            hax_consul::server::serve_with(listener, router, cancel, &config).await
        })
    };
    let watches = serde_json::json!([{
        "type": "keyprefix", "prefix": "bq/", "handler_type": "http",
        "http_handler_config": {
            "path": format!("https://{addr}/watcher/bq"), "method": "POST",
            "tls_skip_verify": true, "timeout": "10s"
        }
    }]);
    let agent = DevAgent::builder()
        .extra_config(serde_json::json!({ "watches": watches }))
        .start()
        .await
        .expect("agent with watches");
    let c = agent.client().expect("client");
    let m = QueueMessage::new(
        "t",
        "PROCESS-STATE-UPDATE",
        serde_json::json!({"fid": "0x7200000000000001:0x6", "state": "M0_CONF_HA_PROCESS_STARTED", "type": "M0_CONF_HA_PROCESS_M0D"}),
    );
    QueuePublisher::new(c.clone(), QueueKind::Broadcast)
        .publish(&m)
        .await
        .expect("publish");
    tokio::time::timeout(T, async {
        loop {
            let u = rx.recv().await.expect("channel open");
            if matches!(&u.data, UpdateData::BroadcastQueue(e) if e.len() == 1) {
                return;
            }
        }
    })
    .await
    .expect("the BQ entry delivered over https");

    // Plain HTTP on the TLS port: no answer, and the connection is closed.
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: hax\r\n\r\n")
        .await
        .expect("write");
    let mut buf = Vec::new();
    let read = tokio::time::timeout(T, s.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "the server closed the connection");
    assert!(!buf.starts_with(b"HTTP/1.1 200"), "{buf:?}");

    cancel.cancel();
    server.await.expect("join").expect("served");
}
