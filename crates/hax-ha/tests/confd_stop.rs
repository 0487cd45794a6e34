//! A stopping confd and hax's own Motr, through the daemon's parts (Motr
//! callbacks, event pipeline) on the emulator with simulated peers and a
//! real Consul. While a confd process is stopping or stopped, hax answers
//! its own Motr's later entrypoint requests (its rconfc asking again)
//! without confds, so that its rconfc does not reconnect to the stopping
//! confd; other processes still get the confds. A simulated peer with hax's
//! own process fid stands in for hax's Motr asking again.

use std::sync::Arc;
use std::time::Duration;

use hax_consul::schema::HaxKv;
use hax_consul::writer::{KvWriter, WriterConfig};
use hax_core::{Confd, EntrypointReply, Halon, ProcessEventKind};
use hax_ha::broadcast::Broadcaster;
use hax_ha::metrics::Metrics;
use hax_ha::motr::bridge::Bridge;
use hax_ha::motr::rconfc::{ConfdEvent, ConfdEvents, ConfdsDown};
use hax_ha::pipeline::{EventPipeline, EventsConfig};
use hax_sim::{SimConfig, SimProcess};
use support::sample::Sample;
use tokio::sync::{mpsc, watch};

mod support;
use support::{free_endpoint, hax_halon_config, sample_view};
use tokio_util::task::TaskTracker;

const T: Duration = Duration::from_secs(20);

/// The confds a peer was last told of.
fn confds_told(p: &SimProcess) -> usize {
    p.last_reply().expect("a reply").confds.len()
}

/// Asks again on a new connection (an entrypoint request that is not
/// first); the number of confds in the answer.
async fn ask_again(p: &SimProcess) -> usize {
    p.vanish();
    p.reattach().await.expect("answered");
    confds_told(p)
}

async fn next(rx: &mut mpsc::UnboundedReceiver<ConfdEvent>) -> ConfdEvent {
    tokio::time::timeout(T, rx.recv())
        .await
        .expect("a confd event in time")
        .expect("the pipeline runs")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hax_own_motr_is_told_no_confd_while_one_stops() {
    let (_agent, c, view, cancel) = sample_view(T).await;
    let endpoint = free_endpoint();
    let reply = EntrypointReply {
        confds: vec![Confd {
            fid: Sample::CONFD1_SVC,
            endpoint: "inet:tcp:127.0.0.1@1".into(),
        }],
        quorum: 1,
        rm_fid: Sample::RMS_HAX1,
        rm_endpoint: endpoint.clone(),
    };
    let (_config, snapshot) = watch::channel(Some(Arc::new(reply)));
    let (events_tx, events_rx) = mpsc::channel(1024);
    let down = ConfdsDown::default();
    let (confd_events, mut told) = ConfdEvents::new(down.clone());
    let bridge = Bridge::new(
        events_tx,
        snapshot,
        Arc::new(view.clone()),
        Sample::HAX1,
        Arc::new(Metrics::default()),
        tokio::runtime::Handle::current(),
        &TaskTracker::new(),
    )
    .with_confds_down(down.clone());
    let cfg = hax_halon_config(endpoint.clone());
    let mut halon = tokio::task::spawn_blocking(move || Halon::start(cfg, bridge))
        .await
        .expect("joined")
        .expect("halon starts");
    let kv = HaxKv::new(c.clone());
    let pipeline = EventPipeline::new(
        KvWriter::spawn(c.clone(), WriterConfig::default()),
        kv.clone(),
        Arc::new(Broadcaster::new(
            view.clone(),
            halon.handle(),
            kv,
            &TaskTracker::new(),
        )),
        Arc::new(view),
        EventsConfig::default(),
        &TaskTracker::new(),
    )
    .with_confd_events(confd_events);
    pipeline.spawn(events_rx, cancel.clone());

    let own = SimProcess::connect(SimConfig::new(&endpoint, Sample::HAX1))
        .await
        .expect("hax's own Motr connects");
    let ios = SimProcess::connect(SimConfig::new(&endpoint, Sample::IOS1))
        .await
        .expect("the ios connects");
    let confd = SimProcess::connect(SimConfig::new(&endpoint, Sample::CONFD1))
        .await
        .expect("the confd connects");
    assert_eq!(confds_told(&own), 1);
    assert_eq!(ask_again(&own).await, 1, "no confd down: the confds");

    // The confd stops: rconfc is told, and hax's own Motr asking again
    // gets no confd; the other processes still get it.
    let stopping = confd
        .send_process_event(ProcessEventKind::Stopping)
        .expect("sent");
    confd.wait_confirmed(stopping, T).await.expect("delivered");
    assert_eq!(next(&mut told).await, ConfdEvent::Stopping(Sample::CONFD1));
    assert!(down.any());
    assert_eq!(ask_again(&own).await, 0, "hax's own Motr: no confd");
    assert_eq!(ask_again(&ios).await, 1, "the ios: the confds");

    // Back: the confds again.
    let started = confd
        .send_process_event(ProcessEventKind::Started)
        .expect("sent");
    confd.wait_confirmed(started, T).await.expect("delivered");
    assert_eq!(next(&mut told).await, ConfdEvent::Started(Sample::CONFD1));
    assert!(!down.any());
    assert_eq!(ask_again(&own).await, 1, "the confds again");

    for p in [&own, &ios, &confd] {
        p.close();
    }
    halon.callbacks().set_stopping();
    let report = tokio::task::spawn_blocking(move || halon.stop())
        .await
        .expect("joined")
        .expect("clean stop");
    assert_eq!(report.violations, 0);
    cancel.cancel();
}
