//! The library crates' examples, run: each example's code is included here
//! and driven against what it expects in real use (hax-core's `ha_link`
//! against a simulated m0d), so an example that compiles but no longer works
//! fails the suite.

use std::time::Duration;

use emu_support::free_endpoint;
use hax_core::{Fid, FidType, HaMsgData, ProcessEventKind};
use hax_sim::{SimConfig, SimProcess};

#[path = "../../hax-core/tests/emu_support/mod.rs"]
mod emu_support;

// The example's `main` is not called here.
#[allow(dead_code)]
#[path = "../../hax-core/examples/ha_link.rs"]
mod ha_link;

const WAIT: Duration = Duration::from_secs(15);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ha_link_accepts_a_peer_and_receives_its_message() {
    let ep = free_endpoint();
    let start_ep = ep.clone();
    let (mut halon, messages) = tokio::task::spawn_blocking(move || ha_link::start(&start_ep))
        .await
        .expect("join")
        .expect("the example starts");

    let fid = Fid::typed(FidType::Process, 1, 0x21);
    let peer = SimProcess::connect(SimConfig::new(ep.clone(), fid))
        .await
        .expect("the peer gets its configuration");
    let entry = peer.entrypoint().expect("an entrypoint reply");
    assert_eq!(
        (entry.reply.rm_fid, entry.reply.rm_ep.as_str()),
        (Fid::typed(FidType::Service, 1, 5), ep.as_str()),
        "the example names its own RM service"
    );
    assert!(
        entry.warnings().is_empty(),
        "Motr's rconfc would object: {:?}",
        entry.warnings()
    );

    let tag = peer
        .send_process_event(ProcessEventKind::Started)
        .expect("send");
    peer.wait_confirmed(tag, WAIT)
        .await
        .expect("the example delivers the message");
    let (link, msg) = tokio::task::spawn_blocking(move || messages.recv_timeout(WAIT))
        .await
        .expect("join")
        .expect("the example hands the peer's message on");
    assert!(
        !halon
            .handle()
            .links()
            .iter()
            .any(|l| l.id == link && l.is_self),
        "hax's own start events are skipped"
    );
    assert_eq!(msg.fid, fid);
    match msg.data {
        HaMsgData::ProcessEvent(e) => assert_eq!(e.event, ProcessEventKind::Started),
        other => panic!("expected the process event, got {}", other.type_name()),
    }

    drop(peer);
    let report = tokio::task::spawn_blocking(move || halon.stop())
        .await
        .expect("join")
        .expect("a clean stop");
    assert_eq!(report.violations, 0, "the example kept Motr's contract");
}
