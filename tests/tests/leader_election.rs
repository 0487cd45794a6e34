//! The RC leader elected by hax (`[leader] elect`): a cluster without
//! hare's election gets one, the leader's work runs on it, the leadership
//! passes at a stop; off, or with a leader already there, hax leaves
//! `leader` alone.

use std::time::Instant;

use hax_consul::schema::QueueKind;
use hax_consul::ConsulClient;
use hax_e2e::{device_entry, wait_for, Env, Options, T};
use hax_ha::leader::elect::{ElectConfig, Elector, SESSION_NAME};
use tokio_util::task::TaskTracker;

fn options(elect: bool, no_rc_leader: bool) -> Options {
    let mut hax_env = vec![
        // The leader's work to watch: trimming, often.
        ("HAX_LIMITS_BQ_TRIM_INTERVAL_MS".into(), "100".into()),
        ("HAX_LIMITS_BQ_STALLED_AFTER_MS".into(), "3000".into()),
    ];
    if elect {
        hax_env.push(("HAX_LEADER_ELECT".into(), "true".into()));
    }
    Options {
        ioservices: 1,
        hax_env,
        no_rc_leader,
        ..Options::default()
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

async fn sessions(client: &ConsulClient) -> Vec<String> {
    let mut ids: Vec<String> = client
        .session_list()
        .await
        .expect("sessions")
        .value
        .into_iter()
        .map(|s| s.id)
        .collect();
    ids.sort();
    ids
}

async fn bq_entries(env: &Env) -> Vec<u64> {
    let keys = env.client.kv_keys("bq/", None).await.expect("keys").value;
    let mut epochs: Vec<u64> = keys
        .iter()
        .filter_map(|k| QueueKind::Broadcast.parse_entry_key(k))
        .collect();
    epochs.sort_unstable();
    epochs
}

/// Publishes a few broadcast-queue entries and waits until the leader's
/// trimming has left only the newest. hax publishes entries of its own
/// (its process's events at start): the newest is read at each look.
async fn trimmed(env: &Env) {
    for i in 0..3 {
        env.publish_bq(&device_entry(
            &env.sample.node,
            0,
            ["online", "failed"][i % 2],
        ))
        .await;
    }
    let published = env.bq_epoch().await;
    wait_for(
        "the leader's trimming of the broadcast queue",
        T,
        || async {
            let last = env.bq_epoch().await;
            (last >= published
                && env.bq_offset().await == last
                && bq_entries(env).await == vec![last])
            .then_some(())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_electing_hax_leads_a_cluster_without_a_leader_and_releases_it_at_stop() {
    // Ready means elected: hax's identity waits for the leader's RM.
    let mut env = Env::start(options(true, true)).await;
    let (value, session) = leader(&env.client).await.expect("leader written");
    assert_eq!(value, env.sample.node, "this node's name");
    let session = session.expect("held by a session");
    let info = env
        .client
        .session_info(&session)
        .await
        .expect("info")
        .value
        .expect("session alive");
    assert_eq!(info.name, SESSION_NAME);
    let checks = info.check_ids();
    for c in ["serfHealth", "service:6", "service:9"] {
        assert!(checks.contains(&c), "session not tied to {c}: {checks:?}");
    }
    assert_eq!(info.lock_delay, 2_000_000_000);
    trimmed(&env).await;

    let stopped = Instant::now();
    env.sigterm();
    wait_for("leader released", T, || async {
        matches!(leader(&env.client).await, Some((_, None))).then_some(())
    })
    .await;
    eprintln!("leader released {:?} after SIGTERM", stopped.elapsed());
    assert!(env.wait_exit(T).await.success());
    assert!(sessions(&env.client).await.is_empty(), "session destroyed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_node_takes_over_when_the_leading_hax_stops() {
    let mut env = Env::start(options(true, true)).await;
    let (_, first) = leader(&env.client).await.expect("leader");
    let first = first.expect("held");
    // Another node's election (a dev agent is one Consul node: it differs
    // by the name it writes), waiting behind hax's.
    let other = Elector::spawn(
        env.client.clone(),
        ElectConfig::new("srvnode-2"),
        &TaskTracker::new(),
    );

    let stopped = Instant::now();
    env.sigterm();
    let second = wait_for("srvnode-2 leading", T, || async {
        match leader(&env.client).await {
            Some((v, Some(s))) if v == "srvnode-2" => Some(s),
            _ => None,
        }
    })
    .await;
    let took = stopped.elapsed();
    eprintln!("another node leads {took:?} after SIGTERM of the leading hax");
    assert_ne!(first, second);
    wait_for("the other elector to say it leads", T, || async {
        other.is_leading().then_some(())
    })
    .await;
    assert!(env.wait_exit(T).await.success());
    other.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_elect_leader_is_left_alone() {
    let mut env = Env::start(options(false, false)).await;
    let before = leader(&env.client).await;
    assert_eq!(
        before,
        Some((env.sample.node.clone(), Some(env.sample.session.clone())))
    );
    // The leader's work runs under the sample's leader (this node)...
    trimmed(&env).await;
    // ...and hax neither made a session nor touched the key, running or
    // stopped.
    assert_eq!(
        sessions(&env.client).await,
        vec![env.sample.session.clone()]
    );
    env.sigterm();
    assert!(env.wait_exit(T).await.success());
    assert_eq!(leader(&env.client).await, before);
    assert_eq!(
        sessions(&env.client).await,
        vec![env.sample.session.clone()]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_electing_hax_leaves_a_held_leader_alone() {
    // The sample's leader is hare's: a session named `leader`.
    let mut env = Env::start(options(true, false)).await;
    let before = leader(&env.client).await;
    let run = env.runs();
    wait_for("hax to see the leader held", T, || async {
        env.log_has(run, "the RC leader lock is held by another session")
            .then_some(())
    })
    .await;
    assert_eq!(
        sessions(&env.client).await,
        vec![env.sample.session.clone()]
    );
    env.sigterm();
    assert!(env.wait_exit(T).await.success());
    assert_eq!(leader(&env.client).await, before, "not released at stop");
    assert_eq!(
        sessions(&env.client).await,
        vec![env.sample.session.clone()]
    );
}

/// Hands `leader` from the session `from` to a session `to` writing `node`
/// (released first: an acquisition right after a release has no
/// lock-delay).
async fn hand_over(client: &ConsulClient, from: &str, to: &str, node: &str) {
    let pair = client.kv_get("leader").await.expect("leader").value;
    let value = pair.map(|p| p.value).unwrap_or_default();
    assert!(client
        .kv_release("leader", value, from)
        .await
        .expect("released"));
    assert!(client
        .kv_acquire("leader", node, to)
        .await
        .expect("acquired"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leaders_work_follows_the_leader_key() {
    let env = Env::start(options(false, false)).await;
    env.wait_metrics("hax the RC leader", |m| m.n("hax_rc_leader") == 1)
        .await;
    trimmed(&env).await;

    // Another node leads: this hax stops trimming.
    let other = env
        .client
        .session_create(&Default::default())
        .await
        .expect("session");
    hand_over(&env.client, &env.sample.session, &other, "srvnode-2").await;
    env.wait_metrics("hax no longer the RC leader", |m| m.n("hax_rc_leader") == 0)
        .await;
    let first = env.bq_epoch().await;
    for i in 0..3 {
        env.publish_bq(&device_entry(
            &env.sample.node,
            0,
            ["online", "failed"][i % 2],
        ))
        .await;
    }
    let last = env.bq_epoch().await;
    wait_for("the entries consumed", T, || async {
        (env.bq_offset().await == last).then_some(())
    })
    .await;
    // Nothing marks a trim that does not happen: ten trim periods without one.
    let window = Instant::now() + std::time::Duration::from_secs(1);
    while Instant::now() < window {
        let left = bq_entries(&env).await;
        assert!(
            (first..=last).all(|e| left.contains(&e)),
            "trimmed by a hax that is not the leader: {first}..={last} published, {left:?} left"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }

    // This node leads again: trimming resumes.
    hand_over(&env.client, &other, &env.sample.session, &env.sample.node).await;
    env.wait_metrics("hax the RC leader again", |m| m.n("hax_rc_leader") == 1)
        .await;
    wait_for("trimming resumed", T, || async {
        let newest = env.bq_epoch().await;
        (newest >= last && bq_entries(&env).await == vec![newest]).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leadership_leaves_a_node_whose_confd_fails_and_comes_back_to_it() {
    use hax_consul::catalog::CheckStatus;
    use hax_testkit::sample::fids;

    let env = Env::start(options(true, true)).await;
    env.wait_metrics("hax the RC leader", |m| m.n("hax_rc_leader") == 1)
        .await;
    let (_, first) = leader(&env.client).await.expect("leader");
    let first = first.expect("held");
    // Another node, whose session follows its serfHealth alone.
    let mut config = ElectConfig::new("srvnode-2");
    config.services.clear();
    let other = Elector::spawn(env.client.clone(), config, &TaskTracker::new());

    // This node's confd fails: Consul invalidates hax's session, and
    // refuses it a new one while the check is critical.
    let failed = Instant::now();
    env.set_check(fids::CONFD, CheckStatus::Critical).await;
    wait_for("srvnode-2 leading", T, || async {
        matches!(leader(&env.client).await, Some((v, Some(_))) if v == "srvnode-2").then_some(())
    })
    .await;
    eprintln!("srvnode-2 leads {:?} after confd failed", failed.elapsed());
    assert!(
        env.client
            .session_info(&first)
            .await
            .expect("info")
            .value
            .is_none(),
        "hax's session invalidated"
    );
    env.wait_metrics("hax no longer the RC leader", |m| m.n("hax_rc_leader") == 0)
        .await;

    // confd is back, and srvnode-2 stops: hax leads again and trims.
    env.set_check(fids::CONFD, CheckStatus::Passing).await;
    other.stop().await;
    env.wait_metrics("hax the RC leader again", |m| m.n("hax_rc_leader") == 1)
        .await;
    trimmed(&env).await;
}
