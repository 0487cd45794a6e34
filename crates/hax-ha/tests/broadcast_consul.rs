//! The cluster view and broadcasts against a real Consul agent and the
//! emulator: the sample configuration loaded into KV, service health from
//! Consul checks, a Consul-detected failure recorded and broadcast, and the
//! configuration states the broadcast writes.

use std::time::Duration;

use hax_consul::catalog::CheckStatus;
use hax_consul::schema::{HaxKv, ProcessState, ProcessType, QueueKind, QueueMessage};
use hax_consul::writer::{KvWriter, WriterConfig};
use hax_core::{HaState, Halon};
use hax_ha::broadcast::{wait_for_outcomes, Broadcaster};
use hax_ha::inbound::failures::{commit_process_failure, plan_process_failure};
use hax_ha::model::broadcast::BroadcastOptions;
use hax_ha::model::vocab::fid_text;
use hax_ha::model::{HaUpdate, ObjHealth};
use hax_ha::view::{ClusterView, ViewConfig};
use hax_testkit::dev_agent::DevAgent;
use support::sample::{self, Sample};
use tokio_util::sync::CancellationToken;

mod support;
use support::{check_id, hax_halon_config, kv_state, load_sample, Hax};
use tokio_util::task::TaskTracker;

const T: Duration = Duration::from_secs(20);

fn start_halon() -> Halon<Hax> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port");
    let cfg = hax_halon_config(format!("inet:tcp:127.0.0.1@{port}"));
    Halon::start(cfg, Hax::counting().0).expect("halon starts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consul_detected_failure_is_recorded_broadcast_and_written() {
    let agent = DevAgent::start().await.expect("consul agent");
    let c = agent.client().expect("client");
    load_sample(&agent, &c, r#"["m0_client_s3"]"#).await;
    c.kv_put(QueueKind::Broadcast.epoch_key(), "1")
        .await
        .expect("epoch");
    let kv = HaxKv::new(c.clone());

    let cancel = CancellationToken::new();
    let view = ClusterView::spawn(
        c.clone(),
        ViewConfig::new(Sample::NODE1_NAME, Sample::HAX1),
        &cancel,
        &tokio_util::task::TaskTracker::new(),
    );
    let st = view.wait_loaded(T).await.expect("view loaded");
    assert!(st.is_rc());
    assert_eq!(st.client_types(), ["m0_client_s3".to_owned()]);
    assert_eq!(st.nvec_state(Sample::IOS1), HaState::Online);
    assert_eq!(st.nvec_state(Sample::CONFD1), HaState::Online);
    assert_eq!(
        st.nvec_state(Sample::IOS2A),
        HaState::Transient,
        "node 2 has no Consul agent here"
    );

    // Consul notices the ios is gone; the view follows.
    c.agent_check_update(&check_id(Sample::IOS1), CheckStatus::Critical, "gone")
        .await
        .expect("check update");
    let st = view
        .wait_until(T, |s| s.nvec_state(Sample::IOS1) == HaState::Transient)
        .await
        .expect("health followed");

    // The watch reports it (as FAILED, say): it is this node's process, so
    // it is recorded STOPPED and announced, and broadcast as it is now.
    let plan = plan_process_failure(&st, &[HaUpdate::new(Sample::IOS1, ObjHealth::Failed)]);
    assert_eq!(
        plan.broadcast,
        vec![HaUpdate::new(Sample::IOS1, ObjHealth::Offline)]
    );
    let writer = KvWriter::spawn(c.clone(), WriterConfig::default());
    commit_process_failure(&plan, &writer, &view)
        .await
        .expect("recorded");
    let status = kv
        .process_status(fid_text(Sample::IOS1))
        .await
        .expect("read")
        .expect("recorded");
    assert_eq!(status.state, ProcessState::Stopped);
    assert_eq!(status.kind, ProcessType::M0d);
    let bq = c
        .kv_get("bq/2")
        .await
        .expect("read")
        .value
        .expect("published");
    let msg = QueueMessage::decode("bq/2", &bq.value).expect("message");
    assert_eq!(msg.message_type, "PROCESS-STATE-UPDATE");
    assert_eq!(
        msg.payload["state"],
        serde_json::json!("M0_CONF_HA_PROCESS_STOPPED")
    );

    let mut halon = start_halon();
    let b = Broadcaster::new(
        view.clone(),
        halon.handle(),
        kv.clone(),
        &TaskTracker::new(),
    );
    let tracked = b
        .broadcast_outcomes(plan.broadcast.clone(), BroadcastOptions::default())
        .await
        .expect("broadcast");
    assert_eq!(tracked.len(), 1, "one message, to hax's own link");
    let outcomes = wait_for_outcomes(tracked, T).await;
    assert_eq!(outcomes.delivered, 1);

    // What the original writes for an OFFLINE process whose node has no
    // other ios: the process, its sdevs, controller, node and enclosure.
    for (f, want) in [
        (Sample::IOS1, "offline"),
        (Sample::SDEV1A, "offline"),
        (Sample::SDEV1B, "offline"),
        (Sample::CTRL1, "M0_NC_TRANSIENT"),
        (Sample::NODE1, "M0_NC_TRANSIENT"),
        (Sample::ENCL1, "M0_NC_TRANSIENT"),
        (Sample::CONFD1, "M0_NC_UNKNOWN"),
        (Sample::SDEV2A, "M0_NC_UNKNOWN"),
    ] {
        assert_eq!(kv_state(&kv, &st, f).await, want, "{f}");
    }
    // Answers from memory reflect the writes at once.
    assert_eq!(view.nvec_state(Sample::DRIVE1A), HaState::Transient);
    assert_eq!(view.nvec_state(Sample::NODE1), HaState::Transient);

    // A device failure recorded meanwhile (by the RC) survives the process
    // coming back; the other sdev comes back online.
    c.kv_put(
        &st.sdev_keys(Sample::SDEV1A)[0].to_key(),
        r#"{"path": "/dev/sdb", "state": "failed"}"#,
    )
    .await
    .expect("device failure");
    view.wait_until(T, |s| s.nvec_state(Sample::DRIVE1A) == HaState::Failed)
        .await
        .expect("seen");
    let tracked = b
        .broadcast_outcomes(
            vec![HaUpdate::new(Sample::IOS1, ObjHealth::Ok)],
            BroadcastOptions::default(),
        )
        .await
        .expect("broadcast");
    assert_eq!(wait_for_outcomes(tracked, T).await.delivered, 1);
    assert_eq!(kv_state(&kv, &st, Sample::SDEV1A).await, "failed");
    assert_eq!(kv_state(&kv, &st, Sample::SDEV1B).await, "online");
    assert_eq!(kv_state(&kv, &st, Sample::IOS1).await, "online");
    assert_eq!(kv_state(&kv, &st, Sample::NODE1).await, "M0_NC_ONLINE");

    cancel.cancel();
    let report = tokio::task::spawn_blocking(move || halon.stop())
        .await
        .expect("joined")
        .expect("clean stop");
    assert_eq!(report.violations, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_planned_on_a_stale_view_are_redone_from_fresh_reads() {
    let agent = DevAgent::start().await.expect("consul agent");
    let c = agent.client().expect("client");
    load_sample(&agent, &c, r#"["m0_client_s3"]"#).await;
    c.kv_put(QueueKind::Broadcast.epoch_key(), "1")
        .await
        .expect("epoch");
    let kv = HaxKv::new(c.clone());
    // A device failed after the view was taken: the view still says
    // M0_NC_UNKNOWN, and its modify indexes are not Consul's.
    let stale = ClusterView::from_data(sample::view_data());
    let st = stale.snapshot();
    c.kv_put(
        &st.sdev_keys(Sample::SDEV2B)[0].to_key(),
        r#"{"path": "/dev/sdc", "state": "failed"}"#,
    )
    .await
    .expect("device failure");

    let mut halon = start_halon();
    let b = Broadcaster::new(
        stale.clone(),
        halon.handle(),
        kv.clone(),
        &TaskTracker::new(),
    );
    let report = b
        .broadcast_report(
            vec![HaUpdate::new(Sample::IOS2A, ObjHealth::Ok)],
            BroadcastOptions::default(),
        )
        .await
        .expect("broadcast");
    assert!(
        report
            .plan
            .kv_writes
            .iter()
            .any(|w| w.key == st.sdev_keys(Sample::SDEV2B)[0]),
        "the stale view planned to bring the sdev online"
    );
    for (f, want) in [
        (Sample::IOS2A, "online"),
        (Sample::SDEV2A, "online"),
        (Sample::SDEV2B, "failed"),
        (Sample::CTRL2, "M0_NC_ONLINE"),
        (Sample::NODE2, "M0_NC_ONLINE"),
        (Sample::ENCL2, "M0_NC_ONLINE"),
    ] {
        assert_eq!(kv_state(&kv, &st, f).await, want, "{f}");
    }
    // The view now holds what was written, Consul's version of it.
    let now = stale.snapshot();
    assert_eq!(now.nvec_state(Sample::DRIVE2B), HaState::Failed);
    assert_eq!(now.nvec_state(Sample::DRIVE2A), HaState::Online);
    let key = &st.sdev_keys(Sample::SDEV2A)[0];
    let in_consul = kv.conf_entry(key).await.expect("read").expect("entry");
    assert_eq!(
        now.conf_entry(key).map(|e| e.modify_index),
        Some(in_consul.modify_index)
    );

    let tracked = report.sent.into_iter().map(|s| s.tracked).collect();
    assert_eq!(wait_for_outcomes(tracked, T).await.delivered, 1);
    let report = tokio::task::spawn_blocking(move || halon.stop())
        .await
        .expect("joined")
        .expect("clean stop");
    assert_eq!(report.violations, 0);
}
