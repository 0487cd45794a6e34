//! A panicking callback, through the public `Callbacks` trait, against
//! simulated m0d peers: the process lives on, what Motr is owed still gets
//! answered, the links keep working, and stop reports the panic.

use std::time::Duration;

use emu_support::{free_endpoint, halon_config};
use hax_core::{
    Callbacks, Ctx, Delivery, Disconnect, EntrypointReply, EntrypointRequest, EntrypointResponder,
    Error, Fid, FidType, HaMsg, HaNote, HaState, Halon, LinkId, NvecGet, ProcessEventKind, Tag,
};
use hax_sim::{SimConfig, SimProcess};

#[path = "../../hax-core/tests/emu_support/mod.rs"]
mod emu_support;

const T: Duration = Duration::from_secs(15);
const PEER: Fid = Fid::typed(FidType::Process, 1, 40);

/// Behaves until the callback named `panics_in` runs for a link other than
/// hax's own, and panics there.
struct Flaky {
    panics_in: &'static str,
}

impl Flaky {
    fn maybe_panic(&self, cx: &Ctx<'_>, method: &str, link: LinkId) {
        let is_self = cx.links().iter().any(|l| l.id == link && l.is_self);
        if method == self.panics_in && !is_self {
            panic!("boom in {method}");
        }
    }
}

impl Callbacks for Flaky {
    fn entrypoint_request(&self, cx: &Ctx<'_>, req: EntrypointRequest, reply: EntrypointResponder) {
        let rep = EntrypointReply {
            quorum: 1,
            rm_fid: Fid::typed(FidType::Service, 1, 5),
            rm_endpoint: req.remote_endpoint,
            ..Default::default()
        };
        reply.accept_now(cx, &rep).unwrap();
    }

    fn msg_received(&self, cx: &Ctx<'_>, link: LinkId, _t: Tag, _m: HaMsg, d: Delivery) {
        self.maybe_panic(cx, "msg_received", link);
        d.deliver_now(cx).unwrap();
    }

    fn nvec_get(&self, cx: &Ctx<'_>, get: NvecGet, d: Delivery) {
        self.maybe_panic(cx, "nvec_get", get.link());
        get.answer_now(cx, |_| HaState::Online).unwrap();
        d.deliver_now(cx).unwrap();
    }

    fn link_is_disconnecting(&self, cx: &Ctx<'_>, link: LinkId, d: Disconnect) {
        self.maybe_panic(cx, "link_is_disconnecting", link);
        d.disconnect_now(cx).unwrap();
    }
}

async fn start(panics_in: &'static str) -> (Halon<Flaky>, SimProcess, LinkId) {
    let endpoint = free_endpoint();
    let halon = Halon::start(halon_config(&endpoint), Flaky { panics_in }).unwrap();
    let peer = SimProcess::connect(SimConfig::new(endpoint, PEER))
        .await
        .unwrap();
    let link = halon
        .handle()
        .links()
        .into_iter()
        .find(|l| l.process_fid == PEER)
        .expect("the peer's link")
        .id;
    (halon, peer, link)
}

/// hax still sends on `link`, and the peer gets it.
async fn link_works(halon: &Halon<Flaky>, peer: &SimProcess, link: LinkId) {
    let before = peer.received_count();
    let note = HaNote::new(Fid::typed(FidType::Sdev, 1, 7), HaState::Online);
    halon
        .handle()
        .send(link, HaMsg::nvec_set(vec![note]))
        .await
        .unwrap();
    peer.wait_received(before + 1, T).await.unwrap();
}

/// Stops, and checks that the panic of `method` is what stop reports and
/// that the C side saw no broken rule and no hang.
async fn stop_reports(mut halon: Halon<Flaky>, method: &str) {
    let (r, report) = tokio::task::spawn_blocking(move || (halon.stop(), halon.report()))
        .await
        .unwrap();
    let want = format!("{method}: boom in {method}");
    assert!(
        matches!(&r, Err(Error::CallbackPanicked(m)) if m == &want),
        "{r:?}"
    );
    let report = report.expect("stop ran");
    assert_eq!(report.violations, 0);
    assert!(!report.would_hang);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_in_msg_received_still_delivers_and_the_link_works() {
    let (halon, peer, link) = start("msg_received").await;
    peer.send_process_event(ProcessEventKind::Started).unwrap();
    // Delivered by the dropped Delivery, although the method never got to it.
    peer.wait_all_confirmed(T).await.unwrap();
    link_works(&halon, &peer, link).await;
    // Later messages are delivered too, without the callbacks.
    peer.send_process_event(ProcessEventKind::Started).unwrap();
    peer.wait_all_confirmed(T).await.unwrap();
    stop_reports(halon, "msg_received").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_in_nvec_get_still_answers_and_the_link_works() {
    let (halon, peer, link) = start("nvec_get").await;
    let fids = [
        Fid::typed(FidType::Sdev, 1, 1),
        Fid::typed(FidType::Sdev, 1, 2),
    ];
    let notes = peer.nvec_get(&fids).await.unwrap();
    let states: Vec<(Fid, HaState)> = notes.iter().map(|n| (n.fid, n.state)).collect();
    assert_eq!(
        states,
        fids.map(|f| (f, HaState::Transient)),
        "the dropped NvecGet's answer"
    );
    peer.wait_all_confirmed(T).await.unwrap();
    link_works(&halon, &peer, link).await;
    stop_reports(halon, "nvec_get").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_in_link_is_disconnecting_still_lets_stop_finish() {
    let (halon, peer, link) = start("link_is_disconnecting").await;
    link_works(&halon, &peer, link).await;
    // The panic comes during stop: the dropped Disconnect agrees in its place.
    stop_reports(halon, "link_is_disconnecting").await;
    drop(peer);
}
