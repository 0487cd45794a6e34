//! Security of the running daemon: where it listens, the bearer token on
//! every state-changing request (the watch routes and the API routes), and
//! the Consul ACL token read from a file and never written to a log or an
//! answer, even at trace level and when Consul refuses it.

use std::time::Duration;

use hax_core::ProcessEventKind;
use hax_e2e::{hax_binary, json, wait_for, Env, Options, T};

fn secret(what: &str) -> String {
    format!(
        "{what}-{:016x}{:016x}",
        fastrand::u64(..),
        fastrand::u64(..)
    )
}

/// Without `http.bind`, hax listens where the original did and where hare's
/// watches call it: the node of its catalog service (here `localhost`) and
/// the service's `http_port` meta. `hax status` finds it the same way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_http_bind_hax_listens_where_the_catalog_says() {
    let env = Env::start(Options {
        node_name: Some("localhost".into()),
        bind_from_catalog: true,
        ..Options::default()
    })
    .await;
    // Env::start waited for /healthz on the sample's http_port.
    let listening = env.log_messages(1, "http listening");
    assert_eq!(listening.len(), 1, "{listening:?}");
    assert_eq!(listening[0]["addr"], env.http.to_string());
    assert!(
        listening[0]["from"]
            .as_str()
            .is_some_and(|f| f.contains("catalog")),
        "{listening:?}"
    );
    let out = std::process::Command::new(hax_binary())
        .args([
            "--consul-address",
            &env.agent.http_addr().to_string(),
            "status",
            "--json",
        ])
        .env_remove("HAX_HTTP_BIND")
        .output()
        .expect("hax status");
    assert!(out.status.success(), "{out:?}");
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert!(
        status["links"]["links"].is_array(),
        "answered by the daemon: {status}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_guard_and_never_leak() {
    let consul_token = secret("consul");
    let http_token = secret("http");
    let token_dir = tempfile::tempdir().unwrap();
    let http_token_file = token_dir.path().join("http-token");
    std::fs::write(&http_token_file, format!("{http_token}\n")).unwrap();
    let env = Env::start(Options {
        acl_token: Some(consul_token.clone()),
        log_filter: "trace".into(),
        hax_args: vec![
            "--http-token-file".into(),
            http_token_file.display().to_string(),
        ],
        ..Options::default()
    })
    .await;
    // hax works through the ACLs: an event is recorded and confirmed.
    let peers = env.connect_peers(1).await;
    peers[0]
        .send_process_event(ProcessEventKind::Started)
        .unwrap();
    peers[0].wait_all_confirmed(T).await.unwrap();

    let web = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let url = |p: &str| format!("http://{}{p}", env.http);
    let send = |method: &str, path: &str, token: Option<&str>| {
        let mut r = web
            .request(
                reqwest::Method::from_bytes(method.as_bytes()).unwrap(),
                url(path),
            )
            .header("content-type", "application/json")
            .body("{}");
        if let Some(t) = token {
            r = r.header("authorization", format!("Bearer {t}"));
        }
        async move {
            let r = r.send().await.expect("answer");
            let status = r.status().as_u16();
            (status, r.text().await.unwrap_or_default())
        }
    };
    let mut bodies = Vec::new();
    // Every state-changing route, the API's included, and routes that do
    // not exist: nothing without the token or with a wrong one.
    let writes = [
        ("POST", "/"),
        ("POST", "/watcher/bq"),
        ("POST", "/watcher/processes"),
        ("POST", "/watch/key/x"),
        ("POST", "/api/v1/sns/rebalance-start"),
        ("POST", "/api/v1/sns/repair-stop"),
        ("POST", "/v1/events/subscribe"),
        ("POST", "/v1/events/unsubscribe"),
        ("POST", "/no/such/route"),
        ("PUT", "/watcher/bq"),
        ("DELETE", "/v1/events/subscribe"),
        ("PATCH", "/"),
    ];
    for (method, path) in writes {
        for token in [
            None,
            Some("wrong"),
            Some(&http_token[..http_token.len() - 1]),
        ] {
            let (status, body) = send(method, path, token).await;
            assert_eq!(status, 401, "{method} {path} with {token:?}: {body}");
            bodies.push(body);
        }
        let (status, body) = send(method, path, Some(&http_token)).await;
        assert_ne!(status, 401, "{method} {path} with the token: {body}");
        bodies.push(body);
    }
    // RFC 7235: the scheme is case-insensitive, the token is not.
    for (scheme, token, want_401) in [
        ("bearer", http_token.clone(), false),
        ("BEARER", http_token.clone(), false),
        ("bearer", http_token.to_uppercase(), true),
    ] {
        for path in ["/watcher/bq", "/v1/events/subscribe"] {
            let r = web
                .post(url(path))
                .header("authorization", format!("{scheme} {token}"))
                .header("content-type", "application/json")
                .body("{}")
                .send()
                .await
                .expect("answer");
            assert_eq!(r.status() == 401, want_401, "{scheme} on {path}");
        }
    }
    // Reading needs no token.
    for path in ["/healthz", "/", "/metrics", "/v1/cluster/status"] {
        let (status, body) = send("GET", path, None).await;
        assert_eq!(status, 200, "GET {path}: {body}");
    }
    // Error answers of every kind (bad payloads, unknown routes) with the
    // token.
    for (path, body) in [("/", "{"), ("/watcher/bq", "[1]"), ("/nope", "{}")] {
        let r = web
            .post(url(path))
            .header("authorization", format!("Bearer {http_token}"))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_client_error());
        bodies.push(r.text().await.unwrap());
    }
    for b in &bodies {
        assert!(
            !b.contains(&http_token) && !b.contains(&consul_token),
            "{b}"
        );
    }

    // A second hax with a wrong Consul token, at trace level: Consul refuses
    // it; neither token appears in what it writes.
    let wrong = secret("wrong-consul");
    let wrong_file = token_dir.path().join("wrong");
    std::fs::write(&wrong_file, &wrong).unwrap();
    let log = token_dir.path().join("wrong.log");
    let mut other = std::process::Command::new(hax_binary())
        .env_clear()
        .args(["--consul-address", &env.agent.http_addr().to_string()])
        .args(["--consul-token-file", &wrong_file.display().to_string()])
        .args([
            "--http-bind",
            &format!("127.0.0.1:{}", hax_e2e::free_port()),
        ])
        .args(["--log-format", "json", "--log", "trace"])
        .stdout(std::fs::File::create(token_dir.path().join("wrong.out")).unwrap())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let refused = wait_for("Consul to refuse the wrong token", T, || async {
        let text = std::fs::read_to_string(&log)
            .unwrap_or_default()
            .to_lowercase();
        (text.contains("acl not found")
            || text.contains("permission denied")
            || text.contains("403"))
        .then_some(text.len())
    })
    .await;
    let _ = other.kill();
    let _ = other.wait();
    let mut written = std::fs::read_to_string(&log).unwrap();
    written += &std::fs::read_to_string(token_dir.path().join("wrong.out")).unwrap();
    assert!(!written.contains(&wrong), "the wrong token was written");
    for run in 1..=env.runs() {
        let text = env.log_text(run);
        assert!(text.len() > 10_000, "a trace log of {} bytes", text.len());
        assert!(
            !text.contains(&consul_token),
            "the Consul token is in the log"
        );
        assert!(!text.contains(&http_token), "the HTTP token is in the log");
    }
    eprintln!(
        "{} answers and {} bytes of trace logs (refused run: {refused} bytes) hold no token",
        bodies.len(),
        env.log_text(1).len() + written.len()
    );
}

/// What a page of any site can make a browser send to hax without a CORS
/// preflight (`text/plain`, a form, multipart, no type at all) changes
/// nothing: 415. What hare's own rules send (`curl --data` with a JSON
/// body, so a form type, and no `Origin`) is still taken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_a_web_page_can_send_change_nothing() {
    let env = Env::start(Options::default()).await;
    let key = hax_consul::schema::keys::event_subscription("node").expect("key");
    let stored = || async {
        env.client.kv_get(&key).await.expect("get").value.map(|p| {
            (
                String::from_utf8_lossy(&p.value).into_owned(),
                p.modify_index,
            )
        })
    };
    let web = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let send = |path: &str, headers: &[(&str, &str)], body: &str| {
        let mut r = web
            .post(format!("http://{}{path}", env.http))
            .body(body.to_owned());
        for (k, v) in headers {
            r = r.header(*k, *v);
        }
        async move {
            let r = r.send().await.expect("answer");
            (r.status().as_u16(), r.text().await.unwrap_or_default())
        }
    };
    // hax subscribes at its start, as the original.
    let at_start = stored().await;
    assert_eq!(
        at_start.as_ref().map(|(v, _)| v.as_str()),
        Some(r#"["health_message"]"#)
    );
    let subscribe = r#"{"node": "health_message"}"#;
    let sns = format!(r#"{{"cmd": "start", "fid": "{}"}}"#, hax_e2e::pool_fid());
    let origin = ("origin", "https://attacker.example");
    let fetch_site = ("sec-fetch-site", "cross-site");
    let form = ("content-type", "application/x-www-form-urlencoded");
    // What a page can send unasked: a form's or a fetch's simple types, and
    // a body without a type; a browser adds Origin (and Sec-Fetch-*).
    let page_requests: Vec<Vec<(&str, &str)>> = vec![
        vec![("content-type", "text/plain"), origin],
        vec![("content-type", "text/plain;charset=UTF-8")],
        vec![("content-type", "multipart/form-data; boundary=x"), origin],
        vec![("content-type", "multipart/form-data; boundary=x")],
        vec![form, origin, fetch_site],
        vec![form, ("origin", "null")],
        vec![origin],
        vec![fetch_site],
    ];
    for headers in &page_requests {
        for path in ["/v1/events/subscribe", "/v1/events/unsubscribe"] {
            let (status, body) = send(path, headers, subscribe).await;
            assert_eq!(status, 415, "{path} {headers:?}: {body}");
            assert_eq!(json(&body)["error_type"], "content-type", "{body}");
        }
        let (status, body) = send("/api/v1/sns/repair-start", headers, &sns).await;
        assert_eq!(status, 415, "SNS {headers:?}: {body}");
    }
    // The watch routes take untyped bodies from Consul, not from a page.
    for headers in [vec![origin], vec![fetch_site]] {
        for path in ["/", "/watcher/bq", "/watch/keyprefix/x"] {
            let (status, body) = send(path, &headers, "[]").await;
            assert_eq!(status, 415, "{path} {headers:?}: {body}");
        }
    }
    assert_eq!(stored().await, at_start, "a refused request wrote the KV");
    assert!(
        !env.log_has(1, "SNS operation requested"),
        "a refused request reached Motr"
    );

    // hare's rules/sns-repair: `curl --request POST --data "$payload"`.
    let curl = [form, ("user-agent", "curl/7.61.1"), ("accept", "*/*")];
    let (status, body) = send("/api/v1/sns/repair-start", &curl, &sns).await;
    assert_ne!(status, 415, "{body}");
    // It reached Motr, whose answer it is (rconfc is not running here).
    assert_eq!(json(&body)["error_type"], "not_ready", "{body}");
    assert!(env.log_has(1, "SNS operation requested"));
    let (status, body) = send("/v1/events/subscribe", &curl, subscribe).await;
    assert_eq!(status, 200, "{body}");
    // Declared JSON needs a preflight, which hax never grants: taken even
    // with an Origin (a browser would not send it).
    let (status, body) = send(
        "/v1/events/unsubscribe",
        &[("content-type", "application/json"), origin],
        subscribe,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(stored().await.map(|(v, _)| v).as_deref(), Some("[]"));
    let m = env.metrics().await;
    assert_eq!(
        m.n("hax_api_requests_total{route=\"/v1/events/subscribe\",code=\"415\"}"),
        page_requests.len() as u64
    );
}

/// hare gives its hax the Consul token in `CONSUL_HTTP_TOKEN`, not in a
/// file: with it alone hax works through the ACLs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_consul_token_hare_sets_in_the_environment_is_used() {
    let consul_token = secret("consul");
    let env = Env::start(Options {
        acl_token: Some(consul_token.clone()),
        acl_token_in_env: true,
        ..Options::default()
    })
    .await;
    let peers = env.connect_peers(1).await;
    peers[0]
        .send_process_event(ProcessEventKind::Started)
        .unwrap();
    peers[0].wait_all_confirmed(T).await.unwrap();
    assert_eq!(
        env.process_status(peers[0].config().fid)
            .await
            .map(|s| s.state),
        Some(hax_consul::schema::ProcessState::Started)
    );
    assert!(!env.log_text(1).contains(&consul_token), "the token leaked");
}
