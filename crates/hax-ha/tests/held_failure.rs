//! The FAILED note of a stopped process and hax's own link, through the
//! daemon's parts (Motr callbacks, event pipeline, broadcaster) on the
//! emulator with simulated m0d peers and a real Consul. The emulator fences
//! a process, as Motr does, when hax sends a FAILED note about it on its
//! own link: the peer's link at hax goes through the disconnect handshake.
//! So "hax's own link got the note" shows as the peer's link going away.

use std::sync::Arc;
use std::time::Duration;

use hax_consul::schema::HaxKv;
use hax_consul::writer::{KvWriter, WriterConfig};
use hax_core::{
    EntrypointReply, Fid, HaLink, HaMsgData, HaState, Halon, LinkId, NvecKind, ProcessEventKind,
};
use hax_ha::broadcast::Broadcaster;
use hax_ha::metrics::Metrics;
use hax_ha::motr::bridge::Bridge;
use hax_ha::motr::fencing::{HeldMetrics, LinkWatch};
use hax_ha::pipeline::{EventPipeline, EventsConfig};
use hax_sim::{SimConfig, SimProcess};
use hax_testkit::dev_agent::DevAgent;
use support::sample::Sample;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

mod support;
use support::{free_endpoint, hax_halon_config, sample_view};
use tokio_util::task::TaskTracker;

const T: Duration = Duration::from_secs(20);

/// The bound of a held note here (the daemon's is Motr's 5 s).
const HOLD: Duration = Duration::from_millis(300);

struct Daemon {
    halon: Halon<Bridge>,
    endpoint: String,
    held: Arc<HeldMetrics>,
    cancel: CancellationToken,
    _agent: DevAgent,
}

/// hax's parts as the daemon wires them, with a short hold.
async fn daemon() -> Daemon {
    let (agent, c, view, cancel) = sample_view(T).await;
    let endpoint = free_endpoint();
    let reply = EntrypointReply {
        quorum: 1,
        rm_fid: Sample::RMS_HAX1,
        rm_endpoint: endpoint.clone(),
        ..EntrypointReply::default()
    };
    let (_, snapshot) = watch::channel(Some(Arc::new(reply)));
    let (events_tx, events_rx) = mpsc::channel(1024);
    let links = LinkWatch::new();
    let bridge = Bridge::new(
        events_tx,
        snapshot,
        Arc::new(view.clone()),
        Sample::HAX1,
        Arc::new(Metrics::default()),
        tokio::runtime::Handle::current(),
        &TaskTracker::new(),
    )
    .with_link_watch(links.clone());
    let cfg = hax_halon_config(endpoint.clone());
    let halon = tokio::task::spawn_blocking(move || Halon::start(cfg, bridge))
        .await
        .expect("joined")
        .expect("halon starts");
    let kv = HaxKv::new(c.clone());
    let broadcaster = Arc::new(Broadcaster::new(
        view.clone(),
        halon.handle(),
        kv.clone(),
        &TaskTracker::new(),
    ));
    let pipeline = EventPipeline::new(
        KvWriter::spawn(c.clone(), WriterConfig::default()),
        kv,
        broadcaster,
        Arc::new(view),
        EventsConfig {
            self_failed_hold: HOLD,
            ..EventsConfig::default()
        },
        &TaskTracker::new(),
    )
    .with_link_watch(links);
    let held = pipeline.held_metrics();
    pipeline.spawn(events_rx, cancel.clone());
    Daemon {
        halon,
        endpoint,
        held,
        cancel,
        _agent: agent,
    }
}

impl Daemon {
    async fn stop(mut self) {
        self.halon.callbacks().set_stopping();
        let report = tokio::task::spawn_blocking(move || self.halon.stop())
            .await
            .expect("joined")
            .expect("clean stop");
        assert_eq!(report.violations, 0);
        self.cancel.cancel();
    }

    async fn peer(&self, fid: Fid) -> SimProcess {
        SimProcess::connect(SimConfig::new(&self.endpoint, fid))
            .await
            .expect("peer connects")
    }
}

/// hax's links made by `fid`.
fn links_of(ha: &HaLink, fid: Fid) -> Vec<LinkId> {
    ha.links()
        .into_iter()
        .filter(|l| l.process_fid == fid && !l.is_self)
        .map(|l| l.id)
        .collect()
}

/// Waits until `cond` holds; fails after [`T`] naming `what`.
async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + T;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The peer reports STARTED: hax's own link hears of the process (Motr
/// ignores a FAILED note about a process its link never heard of).
async fn started(p: &SimProcess) {
    let tag = p
        .send_process_event(ProcessEventKind::Started)
        .expect("sent");
    p.wait_confirmed(tag, T).await.expect("STARTED delivered");
}

/// Whether `p` got an NVEC SET saying `fid` is FAILED.
fn told_failed(p: &SimProcess, fid: Fid) -> bool {
    p.received().into_iter().any(|r| match r.msg.data {
        HaMsgData::Nvec(n) if n.kind == NvecKind::Set => n
            .notes
            .iter()
            .any(|note| note.fid == fid && note.state == HaState::Failed),
        _ => false,
    })
}

fn count(c: &std::sync::atomic::AtomicU64) -> u64 {
    c.load(std::sync::atomic::Ordering::Relaxed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_process_is_fenced_only_after_the_hold_and_the_others_are_told_at_once() {
    let d = daemon().await;
    let ha = d.halon.handle();
    let ios = d.peer(Sample::IOS1).await;
    let confd = d.peer(Sample::CONFD1).await;
    started(&ios).await;
    let [ios_link] = links_of(&ha, Sample::IOS1)[..] else {
        panic!("one link of the ios");
    };

    let stopped = ios
        .send_process_event(ProcessEventKind::Stopped)
        .expect("sent");
    ios.wait_confirmed(stopped, T)
        .await
        .expect("STOPPED delivered");
    let delivered = Instant::now();
    // The other process is told at once; hax's own link is not yet, so the
    // stopping process keeps its link while it flushes.
    eventually("the confd told", || told_failed(&confd, Sample::IOS1)).await;
    assert!(
        ha.links().iter().any(|l| l.id == ios_link),
        "not fenced while it flushes"
    );
    assert_eq!(count(&d.held.held), 1);
    // Its link never goes from its side (the emulator, as Motr, does not
    // report that): the note goes at the bound and fences it.
    eventually("the ios fenced", || links_of(&ha, Sample::IOS1).is_empty()).await;
    assert!(
        delivered.elapsed() >= HOLD - Duration::from_millis(50),
        "fenced {:?} after delivery",
        delivered.elapsed()
    );
    assert_eq!(count(&d.held.sent_bound), 1);
    confd.close();
    ios.close();
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newer_state_drops_the_held_note_and_a_restart_gets_it_before_its_link() {
    let d = daemon().await;
    let ha = d.halon.handle();

    // STOPPED then STARTING before the bound: the note is dropped, the link
    // is never fenced.
    let ios = d.peer(Sample::IOS1).await;
    started(&ios).await;
    let [ios_link] = links_of(&ha, Sample::IOS1)[..] else {
        panic!("one link of the ios");
    };
    ios.send_process_event(ProcessEventKind::Stopped)
        .expect("sent");
    let starting = ios
        .send_process_event(ProcessEventKind::Starting)
        .expect("sent");
    ios.wait_confirmed(starting, T).await.expect("delivered");
    let newer = Instant::now();
    eventually("the note dropped", || count(&d.held.dropped) == 1).await;
    tokio::time::sleep_until(newer + HOLD * 3).await;
    assert_eq!(links_of(&ha, Sample::IOS1), vec![ios_link], "not fenced");
    assert_eq!(count(&d.held.sent_bound) + count(&d.held.sent_link_gone), 0);

    // STOPPED, then the process starts again (a first entrypoint request):
    // the note fences the old link before the reply, so the new link lives
    // and the note never comes after it.
    let confd = d.peer(Sample::CONFD1).await;
    started(&confd).await;
    let [old] = links_of(&ha, Sample::CONFD1)[..] else {
        panic!("one link of the confd");
    };
    let stopped = confd
        .send_process_event(ProcessEventKind::Stopped)
        .expect("sent");
    confd.wait_confirmed(stopped, T).await.expect("delivered");
    let t = Instant::now();
    confd
        .restart()
        .await
        .expect("the new incarnation is answered");
    assert!(t.elapsed() < HOLD, "answered before the bound");
    assert_eq!(count(&d.held.sent_restart), 1);
    eventually("the old link fenced", || {
        !links_of(&ha, Sample::CONFD1).contains(&old)
    })
    .await;
    let [new] = links_of(&ha, Sample::CONFD1)[..] else {
        panic!("the new link only");
    };
    tokio::time::sleep_until(t + HOLD * 3).await;
    assert_eq!(
        links_of(&ha, Sample::CONFD1),
        vec![new],
        "the new link lives"
    );
    let started = confd
        .send_process_event(ProcessEventKind::Starting)
        .expect("sent");
    confd.wait_confirmed(started, T).await.expect("delivered");
    ios.close();
    confd.close();
    d.stop().await;
}
