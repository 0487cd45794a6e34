//! hax's own election of the RC leader against a real Consul agent: a free
//! `leader` is taken with a session tied to the node's health, released at
//! stop so that another elector takes over at once, passed on after the
//! lock-delay when the leader's session is invalidated, and a session left
//! by a killed run is adopted. A dev agent is one Consul node: the electors
//! differ only by the node name they write, which is what the cluster view
//! reads.

use std::future::Future;
use std::time::{Duration, Instant};

use hax_consul::catalog::{CheckRegistration, CheckStatus, ServiceRegistration};
use hax_consul::session::{SessionBehavior, SessionRequest};
use hax_consul::ConsulClient;
use hax_ha::leader::elect::{ElectConfig, Elector, SESSION_NAME};
use hax_testkit::dev_agent::DevAgent;
use tokio_util::task::TaskTracker;

const T: Duration = Duration::from_secs(10);

async fn wait_for<R, F, Fut>(what: &str, timeout: Duration, mut f: F) -> R
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<R>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `leader`'s value and the session holding it.
async fn leader(client: &ConsulClient) -> Option<(String, Option<String>)> {
    let pair = client.kv_get("leader").await.expect("leader read").value?;
    Some((
        String::from_utf8_lossy(&pair.value).into_owned(),
        pair.session.filter(|s| !s.is_empty()),
    ))
}

/// The session holding `leader` for `node`, once there is one.
async fn held_by(client: &ConsulClient, node: &str) -> String {
    wait_for(&format!("leader held for {node}"), T, || async {
        match leader(client).await {
            Some((v, Some(s))) if v == node => Some(s),
            _ => None,
        }
    })
    .await
}

async fn alive(client: &ConsulClient, session: &str) -> bool {
    client
        .session_info(session)
        .await
        .expect("session info")
        .value
        .is_some()
}

fn config(node: &str, lock_delay: Duration) -> ElectConfig {
    ElectConfig {
        lock_delay,
        max_backoff: Duration::from_millis(500),
        ..ElectConfig::new(node)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_free_leader_is_taken_and_released_at_stop() {
    let agent = DevAgent::start().await.expect("agent");
    let client = agent.client().expect("client");
    let a = Elector::spawn(
        client.clone(),
        ElectConfig::new("node-a"),
        &TaskTracker::new(),
    );
    let session = held_by(&client, "node-a").await;
    let info = client
        .session_info(&session)
        .await
        .expect("info")
        .value
        .expect("the leader's session exists");
    assert_eq!(info.name, SESSION_NAME);
    assert_eq!(info.node, agent.node_name(), "tied to this Consul node");
    assert_eq!(info.lock_delay, 2_000_000_000, "hare's lock-delay, 2 s");
    assert_eq!(info.ttl, "", "no TTL: nothing to renew");
    assert!(
        info.check_ids().contains(&"serfHealth"),
        "tied to the node's serfHealth"
    );
    wait_for("the elector to say it leads", T, || async {
        a.is_leading().then_some(())
    })
    .await;

    a.stop().await;
    assert_eq!(
        leader(&client).await,
        Some(("node-a".into(), None)),
        "released at stop, the value kept"
    );
    assert!(!alive(&client, &session).await, "session destroyed at stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_waiting_elector_takes_over_at_once_when_the_leader_stops() {
    let agent = DevAgent::start().await.expect("agent");
    let client = agent.client().expect("client");
    // A lock-delay far above the takeover time: a release has none.
    let lock_delay = Duration::from_secs(15);
    let a = Elector::spawn(
        client.clone(),
        config("node-a", lock_delay),
        &TaskTracker::new(),
    );
    let first = held_by(&client, "node-a").await;
    let b = Elector::spawn(
        client.clone(),
        config("node-b", lock_delay),
        &TaskTracker::new(),
    );
    let mut b_leading = b.leading();
    assert!(!*b_leading.borrow_and_update());

    let stopped = Instant::now();
    a.stop().await;
    let second = held_by(&client, "node-b").await;
    let took = stopped.elapsed();
    eprintln!("takeover after a clean stop: {took:?}");
    assert_ne!(first, second);
    assert!(took < Duration::from_secs(5), "takeover took {took:?}");
    wait_for("node-b's elector to say it leads", T, || async {
        b.is_leading().then_some(())
    })
    .await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalidated_leader_session_passes_leadership_after_the_lock_delay() {
    let agent = DevAgent::start().await.expect("agent");
    let client = agent.client().expect("client");
    let lock_delay = Duration::from_secs(2);
    let a = Elector::spawn(
        client.clone(),
        config("node-a", lock_delay),
        &TaskTracker::new(),
    );
    let first = held_by(&client, "node-a").await;
    let b = Elector::spawn(
        client.clone(),
        config("node-b", lock_delay),
        &TaskTracker::new(),
    );

    // What Consul does when the node's serfHealth fails.
    let invalidated = Instant::now();
    client.session_destroy(&first).await.expect("destroyed");
    let (value, second) = wait_for("leader held again", T, || async {
        match leader(&client).await {
            Some((v, Some(s))) if s != first => Some((v, s)),
            _ => None,
        }
    })
    .await;
    let took = invalidated.elapsed();
    eprintln!("leader held again {took:?} after the invalidation, by {value}");
    assert!(
        took >= lock_delay,
        "acquired within the lock-delay ({took:?})"
    );
    assert!(took < lock_delay + Duration::from_secs(5), "took {took:?}");
    assert!(alive(&client, &second).await);
    let (winner, loser) = match value.as_str() {
        "node-a" => (&a, &b),
        "node-b" => (&b, &a),
        other => panic!("leader holds {other:?}"),
    };
    wait_for("the winner to say it leads", T, || async {
        (winner.is_leading() && !loser.is_leading()).then_some(())
    })
    .await;
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_left_by_a_killed_run_is_adopted_and_others_are_not() {
    let agent = DevAgent::start().await.expect("agent");
    let client = agent.client().expect("client");
    // What a hax killed while leading leaves: its session holding `leader`.
    let left = client
        .session_create(&SessionRequest {
            name: Some(SESSION_NAME.into()),
            lock_delay: Some(Duration::from_secs(2)),
            behavior: SessionBehavior::Release,
            checks: Some(vec!["serfHealth".into()]),
            ..SessionRequest::default()
        })
        .await
        .expect("session");
    assert!(client
        .kv_acquire("leader", "node-a", &left)
        .await
        .expect("acquire"));
    // Another node's elector leaves it alone...
    let b = Elector::spawn(
        client.clone(),
        config("node-b", Duration::from_secs(2)),
        &TaskTracker::new(),
    );
    // ...and node-a's, started again, takes it as its own.
    let a = Elector::spawn(
        client.clone(),
        config("node-a", Duration::from_secs(2)),
        &TaskTracker::new(),
    );
    wait_for("the restarted elector to adopt its session", T, || async {
        a.is_leading().then_some(())
    })
    .await;
    assert_eq!(
        leader(&client).await,
        Some(("node-a".into(), Some(left.clone())))
    );
    assert!(!b.is_leading());
    // Adopted means released at stop, and node-b takes over.
    a.stop().await;
    assert!(!alive(&client, &left).await);
    held_by(&client, "node-b").await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_session_follows_the_nodes_confd_check() {
    let agent = DevAgent::start().await.expect("agent");
    let client = agent.client().expect("client");
    let check = "service:9";
    client
        .agent_service_register(&ServiceRegistration {
            id: "9".into(),
            name: "confd".into(),
            checks: vec![CheckRegistration {
                check_id: Some(check.into()),
                name: "confd 9".into(),
                ttl: Some("24h".into()),
                status: Some(CheckStatus::Critical),
            }],
            ..ServiceRegistration::default()
        })
        .await
        .expect("confd registered");
    let lock_delay = Duration::from_secs(1);
    let a = Elector::spawn(
        client.clone(),
        config("node-a", lock_delay),
        &TaskTracker::new(),
    );
    // Consul refuses a session over a critical check: no leader while the
    // node's confd is down (the elector keeps trying).
    client
        .agent_check_update(check, CheckStatus::Passing, "up")
        .await
        .expect("check passing");
    let session = held_by(&client, "node-a").await;
    let info = client
        .session_info(&session)
        .await
        .expect("info")
        .value
        .expect("session");
    assert!(info.check_ids().contains(&check), "tied to confd's check");

    // confd fails: Consul invalidates the session, the lock goes.
    client
        .agent_check_update(check, CheckStatus::Critical, "down")
        .await
        .expect("check critical");
    wait_for("leadership lost with confd", T, || async {
        (!a.is_leading() && !alive(&client, &session).await).then_some(())
    })
    .await;
    assert_eq!(leader(&client).await.and_then(|(_, s)| s), None);
    client
        .agent_check_update(check, CheckStatus::Passing, "up again")
        .await
        .expect("check passing");
    let again = held_by(&client, "node-a").await;
    assert_ne!(again, session);
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_placeholder_written_over_the_lock_stays_at_the_release() {
    let agent = DevAgent::start().await.expect("agent");
    let client = agent.client().expect("client");
    let a = Elector::spawn(
        client.clone(),
        config("node-a", Duration::from_secs(2)),
        &TaskTracker::new(),
    );
    let session = held_by(&client, "node-a").await;
    // What `hctl shutdown` writes so that the next start elects anew; the
    // lock stays held.
    client.kv_put("leader", "elect2805").await.expect("put");
    assert_eq!(
        leader(&client).await,
        Some(("elect2805".into(), Some(session.clone())))
    );
    a.stop().await;
    assert_eq!(leader(&client).await, Some(("elect2805".into(), None)));
    assert!(!alive(&client, &session).await);
}
