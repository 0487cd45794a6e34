//! The daemon's Motr callbacks through the emulator: messages that ask for
//! nothing are delivered at once, even behind one still waiting for Consul.

use std::sync::Arc;
use std::time::Duration;

use hax_core::{
    EntrypointReply, Fid, FidType, HaState, Halon, ProcessEventKind, ServiceEventKind, ServiceType,
};
use hax_ha::metrics::Metrics;
use hax_ha::model::facts::StateSource;
use hax_ha::model::MotrEvent;
use hax_ha::motr::bridge::Bridge;
use hax_sim::{SimConfig, SimProcess};
use support::sample::Sample;
use tokio::sync::{mpsc, oneshot, watch};

mod support;
use support::hax_halon_config;
use tokio_util::task::TaskTracker;

const T: Duration = Duration::from_secs(15);

struct Online;

impl StateSource for Online {
    fn nvec_state(&self, _fid: Fid) -> HaState {
        HaState::Online
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_event_is_delivered_ahead_of_a_process_event_waiting_for_consul() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port");
    let endpoint = format!("inet:tcp:127.0.0.1@{port}");
    let (events_tx, mut events) = mpsc::channel(64);
    let config = EntrypointReply {
        quorum: 1,
        rm_fid: Sample::RMS_HAX1,
        rm_endpoint: endpoint.clone(),
        ..EntrypointReply::default()
    };
    let (_config_tx, snapshot) = watch::channel(Some(Arc::new(config)));
    let bridge = Bridge::new(
        events_tx,
        snapshot,
        Arc::new(Online),
        Sample::HAX1,
        Arc::new(Metrics::default()),
        tokio::runtime::Handle::current(),
        &TaskTracker::new(),
    );
    let peer = Fid::typed(FidType::Process, 1, 0x42);
    // What the pipeline would do, but whatever of the peer's reaches it
    // waits until released, in order, as in a lane waiting for Consul.
    let (release, released) = oneshot::channel::<()>();
    let consumer = tokio::spawn(async move {
        let mut held = Vec::new();
        let mut released = Some(released);
        loop {
            let ev = tokio::select! {
                ev = events.recv() => ev,
                _ = async { released.as_mut().expect("not yet").await }, if released.is_some() => {
                    released = None;
                    held.drain(..).for_each(MotrEvent::abandon);
                    continue;
                }
            };
            match ev {
                None => break,
                Some(MotrEvent::FirstRequest {
                    reply, responder, ..
                }) => responder.accept(reply),
                Some(ev @ MotrEvent::Process { fid, .. }) if fid == peer && released.is_some() => {
                    held.push(ev)
                }
                Some(ev @ MotrEvent::Service { source_process, .. })
                    if source_process == peer && released.is_some() =>
                {
                    held.push(ev)
                }
                Some(ev) => ev.abandon(),
            }
        }
    });
    let cfg = hax_halon_config(endpoint.clone());
    let mut halon = tokio::task::spawn_blocking(move || Halon::start(cfg, bridge))
        .await
        .expect("joined")
        .expect("halon starts");

    let p = SimProcess::connect(SimConfig::new(&endpoint, peer))
        .await
        .expect("peer connects");
    let event = p
        .send_process_event(ProcessEventKind::Starting)
        .expect("sent");
    let service = Fid::typed(FidType::Service, 1, 0x42);
    let svc = p
        .send_service_event(service, ServiceType::Ios, ServiceEventKind::Started)
        .expect("sent");
    p.wait_confirmed(svc, T)
        .await
        .expect("the service event is delivered");
    assert_eq!(p.unconfirmed(), vec![event], "the process event waits");
    release.send(()).expect("consumer running");
    p.wait_confirmed(event, T)
        .await
        .expect("then the process event");
    p.close();
    let report = tokio::task::spawn_blocking(move || halon.stop())
        .await
        .expect("joined")
        .expect("clean stop");
    assert_eq!(report.violations, 0);
    consumer.await.expect("consumer ends");
}
