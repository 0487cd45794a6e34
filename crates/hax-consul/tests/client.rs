//! The client against a real Consul agent.

use std::time::{Duration, Instant};

use hax_consul::catalog::{CheckRegistration, CheckStatus, ServiceRegistration};
use hax_consul::session::{SessionBehavior, SessionRequest};
use hax_consul::txn::MAX_TXN_OPS;
use hax_consul::{
    AclToken, ConsulClient, ConsulConfig, ConsulError, QueryOptions, RetryPolicy, TxnOp,
};
use hax_testkit::dev_agent::{AgentMode, DevAgent};

async fn agent() -> (DevAgent, ConsulClient) {
    let agent = DevAgent::start().await.expect("start consul agent");
    let client = agent.client().expect("client");
    (agent, client)
}

#[tokio::test]
async fn kv_get_put_list_keys_delete() {
    let (_agent, c) = agent().await;

    let missing = c.kv_get("nothing/here").await.expect("get missing");
    assert_eq!(missing.value, None);
    assert!(missing.index > 0, "404 carries an index");

    c.kv_put("processes/0x7200000000000001:0x3", b"{\"state\": \"x\"}")
        .await
        .expect("put");
    c.kv_put("processes-old/a", "old").await.expect("put");
    c.kv_put("/processes//0x7200000000000001:0x4", "")
        .await
        .expect("put normalised");

    let got = c
        .kv_get("processes/0x7200000000000001:0x3")
        .await
        .expect("get")
        .value
        .expect("present");
    assert_eq!(got.value, b"{\"state\": \"x\"}");
    assert_eq!(got.key, "processes/0x7200000000000001:0x3");
    assert!(got.modify_index >= missing.index);

    let empty = c
        .kv_get("processes/0x7200000000000001:0x4")
        .await
        .expect("get")
        .value
        .expect("normalised key was written");
    assert!(empty.value.is_empty(), "empty value reads back empty");

    // Plain string prefix: `processes` also matches `processes-old/`.
    let plain = c.kv_list("processes").await.expect("list");
    assert_eq!(plain.value.len(), 3);
    let folder = c.kv_list("processes/").await.expect("list folder");
    assert_eq!(
        folder
            .value
            .iter()
            .map(|p| p.key.as_str())
            .collect::<Vec<_>>(),
        [
            "processes/0x7200000000000001:0x3",
            "processes/0x7200000000000001:0x4"
        ]
    );
    let none = c.kv_list("absent/").await.expect("list absent");
    assert!(none.value.is_empty() && none.index > 0);

    let top = c.kv_keys("", Some("/")).await.expect("keys");
    assert_eq!(top.value, ["processes-old/", "processes/"]);

    // Awkward characters survive the round trip.
    for key in [
        "odd/a b",
        "odd/q?x=1",
        "odd/h#frag",
        "odd/p%20",
        "odd/é+ü",
        "odd/[x]",
    ] {
        c.kv_put(key, key).await.expect("put odd key");
        let back = c
            .kv_get(key)
            .await
            .expect("get odd key")
            .value
            .expect("present");
        assert_eq!(back.key, key);
        assert_eq!(back.value_str().expect("utf8"), key);
    }
    assert_eq!(c.kv_keys("odd/", None).await.expect("keys").value.len(), 6);

    c.kv_delete("processes-old/a").await.expect("delete");
    c.kv_delete("processes-old/a")
        .await
        .expect("delete again is fine");
    assert!(c
        .kv_get("processes-old/a")
        .await
        .expect("get")
        .value
        .is_none());
    c.kv_delete_tree("odd/").await.expect("delete tree");
    assert!(c.kv_list("odd/").await.expect("list").value.is_empty());
    assert!(matches!(
        c.kv_delete_tree("/").await,
        Err(ConsulError::InvalidKey { .. })
    ));
    assert!(matches!(
        c.kv_put("a/../b", "x").await,
        Err(ConsulError::InvalidKey { .. })
    ));

    let big = vec![b'x'; hax_consul::kv::MAX_VALUE_SIZE + 1];
    assert!(matches!(
        c.kv_put("big", &big).await,
        Err(ConsulError::ValueTooLarge { .. })
    ));
}

#[tokio::test]
async fn cas_and_conflicts() {
    let (_agent, c) = agent().await;
    assert!(c.kv_cas("epoch", "1", 0).await.expect("create"));
    assert!(!c.kv_cas("epoch", "1", 0).await.expect("exists: refused"));
    let cur = c
        .kv_get("epoch")
        .await
        .expect("get")
        .value
        .expect("present");
    assert!(!c
        .kv_cas("epoch", "2", cur.modify_index + 100)
        .await
        .expect("stale"));
    assert!(c.kv_cas("epoch", "2", cur.modify_index).await.expect("cas"));
    assert!(!c
        .kv_cas("epoch", "3", cur.modify_index)
        .await
        .expect("cas reused"));
    let now = c
        .kv_get("epoch")
        .await
        .expect("get")
        .value
        .expect("present");
    assert_eq!(now.value, b"2");
    assert!(!c
        .kv_delete_cas("epoch", cur.modify_index)
        .await
        .expect("stale delete"));
    assert!(c
        .kv_delete_cas("epoch", now.modify_index)
        .await
        .expect("delete"));
    assert!(c.kv_get("epoch").await.expect("get").value.is_none());
}

#[tokio::test]
async fn transactions_commit_or_fail_with_the_op_index() {
    let (_agent, c) = agent().await;
    c.kv_put("epoch", "1").await.expect("put");
    let epoch = c
        .kv_get("epoch")
        .await
        .expect("get")
        .value
        .expect("present");

    let ok = c
        .txn(&[
            TxnOp::cas("epoch", "2", epoch.modify_index),
            TxnOp::set("bq/2", "msg"),
            TxnOp::get("bq/2"),
        ])
        .await
        .expect("txn");
    assert_eq!(ok.results.len(), 3);
    assert_eq!(ok.results[2].value, b"msg");
    assert!(ok.index > epoch.modify_index);

    // Stale cas in second position: 409, named op, nothing applied.
    let err = c
        .txn(&[
            TxnOp::set("bq/3", "never"),
            TxnOp::cas("epoch", "3", epoch.modify_index),
        ])
        .await
        .expect_err("conflict");
    match &err {
        ConsulError::TxnFailed { errors } => {
            assert_eq!(errors.len(), 1, "{errors:?}");
            assert_eq!(errors[0].op_index, 1);
            assert!(errors[0].what.contains("index"), "{}", errors[0].what);
        }
        other => panic!("expected TxnFailed, got {other:?}"),
    }
    assert!(err.to_string().contains("op #1"), "{err}");
    assert!(
        c.kv_get("bq/3").await.expect("get").value.is_none(),
        "rolled back"
    );

    let err = c
        .txn(&[TxnOp::check_not_exists("epoch")])
        .await
        .expect_err("exists");
    assert!(matches!(err, ConsulError::TxnFailed { .. }), "{err:?}");

    // 64 operations are fine, 65 are refused before sending.
    let ops: Vec<_> = (0..MAX_TXN_OPS)
        .map(|i| TxnOp::set(format!("many/{i}"), "v"))
        .collect();
    c.txn(&ops).await.expect("64 ops");
    assert_eq!(
        c.kv_keys("many/", None).await.expect("keys").value.len(),
        64
    );
    let mut ops = ops;
    ops.push(TxnOp::set("many/64", "v"));
    assert!(matches!(
        c.txn(&ops).await,
        Err(ConsulError::TxnTooLarge { ops: 65, max: 64 })
    ));
    assert!(c.kv_get("many/64").await.expect("get").value.is_none());
}

#[tokio::test]
async fn blocking_query_is_woken_by_a_write() {
    let (_agent, c) = agent().await;
    let first = c.kv_get("leader").await.expect("get");

    // Nothing changes: the query returns after its wait with the same index.
    let started = Instant::now();
    let same = c
        .kv_get_with(
            "leader",
            &QueryOptions::blocking(first.index, Duration::from_millis(300)),
        )
        .await
        .expect("blocking get");
    assert!(started.elapsed() >= Duration::from_millis(250));
    assert_eq!(same.index, first.index);

    let reader = {
        let c = c.clone();
        let index = first.index;
        tokio::spawn(async move {
            let t = Instant::now();
            let got = c
                .kv_get_with(
                    "leader",
                    &QueryOptions::blocking(index, Duration::from_secs(20)),
                )
                .await;
            (got, t.elapsed())
        })
    };
    // The query must be parked at the agent before the write, or it would
    // return at once and prove nothing.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let written = Instant::now();
    c.kv_put("leader", "node1").await.expect("put");
    let (got, elapsed) = reader.await.expect("join");
    let got = got.expect("blocking get");
    assert!(got.index > first.index);
    assert_eq!(got.value.expect("written").value, b"node1");
    assert!(
        elapsed >= Duration::from_millis(250),
        "it did block: {elapsed:?}"
    );
    assert!(
        written.elapsed() < Duration::from_secs(2),
        "woken by the write, not by the wait"
    );
}

#[tokio::test]
async fn index_goes_back_after_an_in_memory_restart() {
    let mut agent = DevAgent::start().await.expect("start");
    let c = agent.client().expect("client");
    for i in 0..30 {
        c.kv_put(&format!("k/{i}"), "v").await.expect("put");
    }
    let before = c.kv_get("k/29").await.expect("get").index;
    agent.restart().await.expect("restart");
    let after = c.kv_get("k/29").await.expect("get after restart");
    assert!(after.value.is_none(), "dev agent keeps nothing");
    assert!(
        after.index < before,
        "index went back: {} -> {}",
        before,
        after.index
    );
}

#[tokio::test]
async fn persistent_agent_keeps_data_across_restart() {
    let mut agent = DevAgent::builder()
        .mode(AgentMode::Persistent)
        .start()
        .await
        .expect("start");
    let c = agent.client().expect("client");
    c.kv_put("epoch", "7").await.expect("put");
    let before = c.kv_get("epoch").await.expect("get");
    agent.kill();
    assert!(matches!(
        c.kv_get("epoch").await,
        Err(ConsulError::ConnectionRefused { .. })
    ));
    agent.start_again().await.expect("start again");
    let after = c.kv_get("epoch").await.expect("get after restart");
    assert_eq!(after.value.expect("kept").value, b"7");
    assert!(after.index >= before.index);
    assert_eq!(agent.starts(), 2);
}

#[tokio::test]
async fn sessions_locks_and_expiry() {
    let (agent, c) = agent().await;
    let node = agent.node_name().to_owned();
    let s1 = c
        .session_create(&SessionRequest {
            name: Some("leader".into()),
            ttl: Some(Duration::from_secs(10)),
            lock_delay: Some(Duration::ZERO),
            ..SessionRequest::default()
        })
        .await
        .expect("create");
    let s2 = c
        .session_create(&SessionRequest {
            lock_delay: Some(Duration::ZERO),
            ..SessionRequest::default()
        })
        .await
        .expect("create");

    let info = c
        .session_info(&s1)
        .await
        .expect("info")
        .value
        .expect("exists");
    assert_eq!(info.id, s1);
    assert_eq!(info.node, node);
    assert_eq!(info.behavior, SessionBehavior::Release);
    assert_eq!(info.ttl, "10s");
    assert!(c.session_list().await.expect("list").value.len() >= 2);

    assert!(c.kv_acquire("leader", &node, &s1).await.expect("acquire"));
    assert!(!c
        .kv_acquire("leader", "other", &s2)
        .await
        .expect("held elsewhere"));
    let held = c
        .kv_get("leader")
        .await
        .expect("get")
        .value
        .expect("present");
    assert_eq!(held.session.as_deref(), Some(s1.as_str()));
    assert_eq!(held.value, node.as_bytes());
    assert!(!c
        .kv_release("leader", "", &s2)
        .await
        .expect("not the holder"));
    assert!(c.kv_release("leader", "free", &s1).await.expect("release"));
    assert!(c
        .kv_get("leader")
        .await
        .expect("get")
        .value
        .expect("kept")
        .session
        .is_none());

    // Destroying a session releases its lock; renewing it then is NotFound.
    assert!(c.kv_acquire("leader", &node, &s2).await.expect("acquire"));
    c.session_destroy(&s2).await.expect("destroy");
    assert!(c
        .kv_get("leader")
        .await
        .expect("get")
        .value
        .expect("kept")
        .session
        .is_none());
    assert!(matches!(
        c.session_renew(&s2).await,
        Err(ConsulError::NotFound { .. })
    ));
    assert!(c.session_info(&s2).await.expect("info").value.is_none());

    // A TTL session that is not renewed expires (Consul allows up to 2x TTL)
    // and its lock is released.
    c.session_renew(&s1).await.expect("renew");
    assert!(c.kv_acquire("leader", &node, &s1).await.expect("acquire"));
    let mut index = c.kv_get("leader").await.expect("get").index;
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let got = c
            .kv_get_with(
                "leader",
                &QueryOptions::blocking(index, Duration::from_secs(5)),
            )
            .await
            .expect("watch leader");
        if got.value.as_ref().is_some_and(|p| p.session.is_none()) {
            break;
        }
        assert!(Instant::now() < deadline, "session never expired");
        index = got.index;
    }
    assert!(matches!(
        c.session_renew(&s1).await,
        Err(ConsulError::NotFound { .. })
    ));
}

#[tokio::test]
async fn catalog_health_agent_and_status() {
    let (agent, c) = agent().await;
    let me = c.agent_self().await.expect("agent self");
    assert_eq!(me.config.node_name, agent.node_name());
    assert!(me.config.version.starts_with('1'), "{}", me.config.version);
    let leader = c.status_leader().await.expect("leader").expect("has one");
    assert!(leader.starts_with("127.0.0.1:"), "{leader}");

    c.agent_service_register(&ServiceRegistration {
        id: "6".into(),
        name: "hax".into(),
        address: "127.0.0.1".into(),
        port: 22001,
        meta: [("http_port".to_owned(), "8008".to_owned())].into(),
        checks: vec![CheckRegistration {
            check_id: Some("service:6".into()),
            name: "hax alive".into(),
            ttl: Some("30s".into()),
            status: Some(CheckStatus::Critical),
        }],
        ..ServiceRegistration::default()
    })
    .await
    .expect("register");

    let services = c.catalog_services().await.expect("services").value;
    assert!(services.contains_key("hax") && services.contains_key("consul"));
    let hax = c
        .catalog_service("hax")
        .await
        .expect("catalog service")
        .value;
    assert_eq!(hax.len(), 1);
    assert_eq!(hax[0].service_id, "6");
    assert_eq!(hax[0].service_port, 22001);
    assert_eq!(hax[0].node, agent.node_name());
    assert_eq!(
        hax[0].service_meta.get("http_port").map(String::as_str),
        Some("8008")
    );
    let nodes = c.catalog_nodes().await.expect("nodes").value;
    assert!(nodes.iter().any(|n| n.node == agent.node_name()));

    let health = c.health_service("hax", false).await.expect("health");
    assert_eq!(health.value.len(), 1);
    assert_eq!(health.value[0].aggregated_status(), CheckStatus::Critical);
    assert!(c
        .health_service("hax", true)
        .await
        .expect("passing")
        .value
        .is_empty());

    // The check turning green wakes a blocking health query.
    let waiter = {
        let c = c.clone();
        let index = health.index;
        tokio::spawn(async move {
            c.health_service_with(
                "hax",
                true,
                &QueryOptions::blocking(index, Duration::from_secs(20)),
            )
            .await
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    c.agent_check_update("service:6", CheckStatus::Passing, "ok")
        .await
        .expect("check update");
    let passing = waiter.await.expect("join").expect("blocking health");
    assert_eq!(passing.value.len(), 1);
    assert_eq!(passing.value[0].service.id, "6");

    let node_checks = c.health_node(agent.node_name()).await.expect("node").value;
    assert_eq!(node_checks[0].check_id, "serfHealth");
    assert!(node_checks.iter().any(|k| k.service_id == "6"));
    let checks = c
        .health_checks("hax", &QueryOptions::default())
        .await
        .expect("checks")
        .value;
    assert_eq!(checks.len(), 1);
    assert_eq!(checks[0].status, CheckStatus::Passing);

    c.agent_service_deregister("6").await.expect("deregister");
    assert!(c
        .catalog_service("hax")
        .await
        .expect("catalog")
        .value
        .is_empty());
}

#[tokio::test]
async fn unreachable_and_hung_agents_are_distinct_errors() {
    let mut agent = DevAgent::start().await.expect("start");
    let fast = ConsulClient::new(ConsulConfig {
        request_timeout: Duration::from_millis(400),
        retry: RetryPolicy::none(),
        ..agent.client_config()
    })
    .expect("client");
    fast.kv_put("a", "1").await.expect("put");

    agent.pause().expect("SIGSTOP");
    let t = Instant::now();
    let err = fast.kv_get("a").await.expect_err("hung agent");
    assert!(matches!(err, ConsulError::Timeout { .. }), "{err:?}");
    assert!(t.elapsed() < Duration::from_secs(3));
    agent.resume().expect("SIGCONT");
    // The first request after a freeze may meet a connection the agent drops;
    // reads retry through that.
    let back = agent
        .client()
        .expect("client")
        .kv_get("a")
        .await
        .expect("back");
    assert_eq!(back.value.expect("kept").value, b"1");

    agent.kill();
    let err = fast.kv_get("a").await.expect_err("dead agent");
    assert!(
        matches!(err, ConsulError::ConnectionRefused { .. }),
        "{err:?}"
    );
    assert!(err.is_retryable() && err.is_unreachable());

    // Reads retry with backoff across a short outage; writes do not.
    let patient = ConsulClient::new(ConsulConfig {
        retry: RetryPolicy {
            max_attempts: 50,
            initial_delay: Duration::from_millis(50),
            max_delay: Duration::from_millis(300),
        },
        ..agent.client_config()
    })
    .expect("client");
    let write = patient
        .kv_put("b", "1")
        .await
        .expect_err("write not retried");
    assert!(matches!(write, ConsulError::ConnectionRefused { .. }));
    let read = tokio::spawn({
        let patient = patient.clone();
        async move { patient.kv_get("a").await }
    });
    agent.start_again().await.expect("start again");
    let got = read
        .await
        .expect("join")
        .expect("read retried until the agent came back");
    assert!(got.value.is_none(), "in-memory agent came back empty");
}

#[tokio::test]
async fn acl_token_is_sent_as_header() {
    let agent = DevAgent::builder()
        .acl_master_token("root-secret-token")
        .start()
        .await
        .expect("start ACL agent");
    let anonymous = ConsulClient::new(ConsulConfig {
        token: None,
        ..agent.client_config()
    })
    .expect("client");
    let err = anonymous.kv_put("a", "1").await.expect_err("denied");
    match &err {
        ConsulError::Status { status, .. } => assert_eq!(status.as_u16(), 403),
        other => panic!("expected 403, got {other:?}"),
    }
    let root = ConsulClient::new(ConsulConfig {
        token: Some(AclToken::new("root-secret-token")),
        ..agent.client_config()
    })
    .expect("client");
    root.kv_put("a", "1").await.expect("allowed with the token");
    assert!(!format!("{root:?}").contains("root-secret-token"));
}

#[tokio::test]
async fn no_leader_is_its_own_error() {
    let agent = DevAgent::builder()
        .mode(AgentMode::Leaderless)
        .start()
        .await
        .expect("start leaderless server");
    let c = ConsulClient::new(ConsulConfig {
        retry: RetryPolicy::none(),
        ..agent.client_config()
    })
    .expect("client");
    assert_eq!(c.status_leader().await.expect("status"), None);
    let err = c.kv_put("a", "1").await.expect_err("no leader");
    assert!(matches!(err, ConsulError::NoLeader { .. }), "{err:?}");
    assert!(err.is_retryable());
}

#[tokio::test]
async fn rpc_rate_limit_is_429_and_reads_retry_through_it() {
    let server = DevAgent::start().await.expect("start server");
    let mut agent = DevAgent::builder()
        .client_of(&server)
        .node_name("hax-client")
        .extra_config(serde_json::json!({}))
        .start()
        .await
        .expect("start client agent");
    // Limited only once ready: the agent's own syncing would starve start-up.
    agent
        .reload_with(serde_json::json!({ "limits": { "rpc_rate": 2, "rpc_max_burst": 1 } }))
        .await
        .expect("reload with a rate limit");
    let no_retry = ConsulClient::new(ConsulConfig {
        retry: RetryPolicy::none(),
        ..agent.client_config()
    })
    .expect("client");
    let mut limited = None;
    for _ in 0..10 {
        if let Err(e) = no_retry.kv_get("x").await {
            limited = Some(e);
            break;
        }
    }
    let err = limited.expect("some read is rate limited");
    assert!(matches!(err, ConsulError::RateLimited { .. }), "{err:?}");
    assert!(err.is_retryable());

    let retrying = ConsulClient::new(ConsulConfig {
        retry: RetryPolicy {
            max_attempts: 10,
            initial_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(1),
        },
        ..agent.client_config()
    })
    .expect("client");
    for _ in 0..5 {
        retrying
            .kv_get("x")
            .await
            .expect("read retried through 429");
    }
}
