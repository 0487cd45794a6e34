//! A stale RC leader session (what `hctl shutdown` may leave: a session
//! holding `leader` with the stub `elect<N>` or no value) is destroyed at
//! start, so that a leader can be elected; a leader's session is left alone.

use std::time::Duration;

use hax_consul::session::SessionRequest;
use hax_consul::ConsulClient;
use hax_ha::leader::stale::remove_stale_session;
use hax_testkit::dev_agent::DevAgent;

async fn hold_leader(client: &ConsulClient, value: &str) -> String {
    let session = client
        .session_create(&SessionRequest {
            name: Some("leader".into()),
            lock_delay: Some(Duration::ZERO),
            ..SessionRequest::default()
        })
        .await
        .expect("session");
    assert!(client
        .kv_acquire("leader", value, &session)
        .await
        .expect("acquire"));
    session
}

async fn alive(client: &ConsulClient, session: &str) -> bool {
    client
        .session_info(session)
        .await
        .expect("session info")
        .value
        .is_some()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_leader_sessions_are_destroyed_and_a_leaders_kept() {
    let agent = DevAgent::start().await.expect("agent");
    let client = agent.client().expect("client");

    // A fresh KV: nothing to do.
    assert_eq!(remove_stale_session(&client).await.unwrap(), None);

    for stub in ["elect2805", ""] {
        let session = hold_leader(&client, stub).await;
        assert_eq!(
            remove_stale_session(&client).await.unwrap(),
            Some(session.clone()),
            "{stub:?}"
        );
        assert!(!alive(&client, &session).await, "{stub:?}");
        // The lock is free: a new election can take it.
        let next = hold_leader(&client, "srvnode-1").await;
        client.session_destroy(&next).await.unwrap();
    }

    // A leader's session.
    let session = hold_leader(&client, "srvnode-1").await;
    assert_eq!(remove_stale_session(&client).await.unwrap(), None);
    assert!(alive(&client, &session).await);
}
