//! Watchers against a real Consul agent: updates, restarts, index resets,
//! outages and cancellation.

use std::time::{Duration, Instant};

use hax_consul::catalog::{CheckRegistration, CheckStatus, ServiceRegistration};
use hax_consul::watch::{
    watch_key, watch_prefix, CatalogServiceSource, ServiceHealthSource, WatchConfig, Watcher,
};
use hax_consul::{ConsulClient, ConsulConfig, RetryPolicy};
use hax_testkit::dev_agent::{AgentMode, DevAgent};
use tokio_util::sync::CancellationToken;

const T: Duration = Duration::from_secs(10);

fn quick() -> WatchConfig {
    WatchConfig {
        wait: Duration::from_secs(2),
        error_backoff: RetryPolicy {
            max_attempts: u32::MAX,
            initial_delay: Duration::from_millis(50),
            max_delay: Duration::from_millis(400),
        },
        ..WatchConfig::default()
    }
}

#[tokio::test]
async fn prefix_snapshot_follows_writes_and_notifies_subscribers() {
    let agent = DevAgent::start().await.expect("agent");
    let c = agent.client().expect("client");
    c.kv_put("bq/1", "a").await.expect("put");
    let cancel = CancellationToken::new();
    let w = watch_prefix(c.clone(), "bq/", WatchConfig::default(), &cancel);
    let first = w.loaded(T).await.expect("loaded");
    assert_eq!(first.value.len(), 1);
    let mut rx = w.subscribe();
    rx.borrow_and_update();

    let t = Instant::now();
    c.kv_put("bq/2", "b").await.expect("put");
    tokio::time::timeout(T, rx.changed())
        .await
        .expect("notified")
        .expect("open");
    let latency = t.elapsed();
    let snap = rx.borrow_and_update().clone();
    assert_eq!(snap.value.keys().collect::<Vec<_>>(), ["bq/1", "bq/2"]);
    assert!(latency < Duration::from_secs(1), "notified in {latency:?}");
    assert_eq!(w.current().value.len(), 2, "current() reads the snapshot");

    // Same value again: no index change for the key, no notification.
    c.kv_put("bq/2", "b").await.expect("put same");
    // A write elsewhere moves the global index but not this prefix.
    c.kv_put("elsewhere", "x").await.expect("put");
    let quiet = tokio::time::timeout(Duration::from_millis(500), rx.changed()).await;
    assert!(quiet.is_err(), "no change, no notification");

    c.kv_delete("bq/1").await.expect("delete");
    let snap = w
        .wait_until(T, |s| !s.value.contains_key("bq/1"))
        .await
        .expect("delete seen");
    assert_eq!(snap.value.len(), 1);
    w.shutdown().await;
}

#[tokio::test]
async fn key_watch_survives_an_in_memory_restart_and_its_index_reset() {
    let mut agent = DevAgent::start().await.expect("agent");
    let c = agent.client().expect("client");
    for i in 0..20 {
        c.kv_put(&format!("filler/{i}"), "x").await.expect("put");
    }
    c.kv_put("leader", "node1").await.expect("put");
    let cancel = CancellationToken::new();
    let w = watch_key(c.clone(), "leader", quick(), &cancel);
    let before = w
        .wait_until(T, |s| s.value.as_ref().as_ref().is_some())
        .await
        .expect("loaded");

    agent.restart().await.expect("restart");
    // The in-memory agent lost everything: the watcher must notice the reset
    // and the missing key, without waiting out a blocking query.
    let after = w
        .wait_until(T, |s| s.loaded && !s.stale && s.value.is_none())
        .await
        .expect("reset noticed");
    assert!(
        after.index < before.index,
        "{} < {}",
        after.index,
        before.index
    );
    assert!(after.resets >= 1);

    c.kv_put("leader", "node2")
        .await
        .expect("put after restart");
    let snap = w
        .wait_until(T, |s| {
            s.value
                .as_ref()
                .as_ref()
                .is_some_and(|p| p.value == b"node2")
        })
        .await
        .expect("new value after restart");
    assert!(!snap.stale);
    w.shutdown().await;
}

#[tokio::test]
async fn watch_survives_a_persistent_restart() {
    let mut agent = DevAgent::builder()
        .mode(AgentMode::Persistent)
        .start()
        .await
        .expect("agent");
    let c = agent.client().expect("client");
    c.kv_put("processes/0x7200000000000001:0x1", "started")
        .await
        .expect("put");
    let cancel = CancellationToken::new();
    let w = watch_prefix(c.clone(), "processes/", quick(), &cancel);
    w.wait_until(T, |s| s.value.len() == 1)
        .await
        .expect("loaded");

    agent.kill();
    w.wait_until(T, |s| s.stale).await.expect("outage noticed");
    assert_eq!(
        w.current().value.len(),
        1,
        "last known data kept while stale"
    );
    agent.start_again().await.expect("start again");
    c.kv_put("processes/0x7200000000000001:0x2", "started")
        .await
        .expect("put");
    let snap = w
        .wait_until(T, |s| !s.stale && s.value.len() == 2)
        .await
        .expect("recovered");
    // A restarted agent may answer its first queries with an index below
    // the one seen before the kill while it restores its state (seen 1 run
    // in 4 on a busy machine); the watch then re-reads, which may count a
    // reset or two, never more.
    assert!(snap.resets <= 2, "{} resets after one restart", snap.resets);
    w.shutdown().await;
}

#[tokio::test]
async fn errors_are_rate_limited_and_a_hung_agent_is_survived() {
    let mut agent = DevAgent::start().await.expect("agent");
    let c = ConsulClient::new(ConsulConfig {
        request_timeout: Duration::from_millis(500),
        ..agent.client_config()
    })
    .expect("client");
    c.kv_put("k", "1").await.expect("put");
    let cancel = CancellationToken::new();
    let w = watch_key(c.clone(), "k", quick(), &cancel);
    w.loaded(T).await.expect("loaded");

    // Hung agent: the blocking query times out (wait + wait/16 + margin).
    agent.pause().expect("pause");
    w.wait_until(T, |s| s.stale).await.expect("hang noticed");
    agent.resume().expect("resume");
    w.wait_until(T, |s| !s.stale)
        .await
        .expect("recovered from the hang");

    // Dead agent: refused connections back off instead of spinning.
    agent.kill();
    w.wait_until(T, |s| s.stale).await.expect("outage noticed");
    let start = w.requests();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let sent = w.requests() - start;
    // 50 ms doubling up to 400 ms: about 6-8 attempts in 2 s; a busy loop
    // would make thousands.
    assert!(sent <= 12, "{sent} requests in 2 s");
    assert!(sent >= 2, "still retrying: {sent}");
    w.shutdown().await;
}

#[tokio::test]
async fn cancellation_stops_a_blocked_watch_promptly() {
    let agent = DevAgent::start().await.expect("agent");
    let c = agent.client().expect("client");
    let cancel = CancellationToken::new();
    let w = watch_key(
        c,
        "k",
        WatchConfig {
            wait: Duration::from_secs(300),
            ..WatchConfig::default()
        },
        &cancel,
    );
    w.loaded(T).await.expect("loaded");
    let mut rx = w.subscribe();
    // Let it park in a 5-minute blocking query, then cancel the parent token.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let t = Instant::now();
    cancel.cancel();
    tokio::time::timeout(Duration::from_secs(2), async {
        while rx.changed().await.is_ok() {}
    })
    .await
    .expect("task ended and dropped its sender");
    assert!(t.elapsed() < Duration::from_secs(1));
    drop(w);
}

#[tokio::test]
async fn service_health_watch_sees_a_check_failing() {
    let agent = DevAgent::start().await.expect("agent");
    let c = agent.client().expect("client");
    c.agent_service_register(&ServiceRegistration {
        id: "11".into(),
        name: "confd".into(),
        port: 21001,
        checks: vec![CheckRegistration {
            check_id: Some("service:11".into()),
            name: "confd".into(),
            ttl: Some("60s".into()),
            status: Some(CheckStatus::Passing),
        }],
        ..ServiceRegistration::default()
    })
    .await
    .expect("register");
    let cancel = CancellationToken::new();
    let w = Watcher::spawn(
        c.clone(),
        ServiceHealthSource {
            name: "confd".into(),
            passing_only: false,
        },
        WatchConfig::default(),
        &cancel,
    );
    w.wait_until(T, |s| {
        s.value.len() == 1 && s.value[0].aggregated_status() == CheckStatus::Passing
    })
    .await
    .expect("passing");
    let catalog = Watcher::spawn(
        c.clone(),
        CatalogServiceSource("confd".into()),
        WatchConfig::default(),
        &cancel,
    );
    let listed = catalog.loaded(T).await.expect("catalog loaded");
    assert_eq!(listed.value[0].service_id, "11");
    assert_eq!(listed.value[0].service_port, 21001);
    c.agent_check_update("service:11", CheckStatus::Critical, "down")
        .await
        .expect("fail check");
    w.wait_until(T, |s| {
        s.value.first().map(|e| e.aggregated_status()) == Some(CheckStatus::Critical)
    })
    .await
    .expect("critical seen");
    c.agent_service_deregister("11").await.expect("deregister");
    catalog
        .wait_until(T, |s| s.value.is_empty())
        .await
        .expect("deregistration seen in the catalog");
    w.shutdown().await;
    catalog.shutdown().await;
}

#[tokio::test]
async fn answers_without_news_are_rate_limited() {
    let agent = DevAgent::start().await.expect("agent");
    let c = agent.client().expect("client");
    let cancel = CancellationToken::new();
    // A 10 ms wait makes every answer an empty one: without the token bucket
    // this would be about 100 requests a second.
    let w = watch_key(
        c,
        "k",
        WatchConfig {
            wait: Duration::from_millis(10),
            ..WatchConfig::default()
        },
        &cancel,
    );
    w.loaded(T).await.expect("loaded");
    let before = w.requests();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let sent = w.requests() - before;
    // Burst of 5, then 20 per second.
    assert!(sent <= 5 + 20 + 3, "{sent} requests in 1 s");
    assert!(sent >= 10, "still polling: {sent}");
    w.shutdown().await;
}
