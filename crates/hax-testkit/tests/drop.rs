//! Dropping a running `Halon`: bounded in time, and never blocking a thread
//! of an async runtime while the stop goes on.

use std::sync::{mpsc, Mutex};
use std::time::{Duration, Instant};

use emu_support::{free_endpoint, halon_config};
use hax_core::{
    Callbacks, Ctx, Disconnect, EntrypointReply, EntrypointRequest, EntrypointResponder, Fid,
    FidType, Halon, LinkId,
};
use hax_sim::{SimConfig, SimProcess};

#[path = "../../hax-core/tests/emu_support/mod.rs"]
mod emu_support;

/// How long a test waits for what it expects.
const T: Duration = Duration::from_secs(15);
/// What a drop that waits for nothing may take, with room for a slow machine.
const QUICK: Duration = Duration::from_millis(500);

/// What the callbacks do with a link's `Disconnect`.
enum Disconnects {
    /// Agree at once.
    Now,
    /// Never agree: a stop lasts until the emulator gives up.
    Hold(Mutex<Vec<Disconnect>>),
    /// Hand it to async code, which agrees (as a daemon's bridge does): a
    /// stop needs that code's runtime to run.
    Forward(tokio::sync::mpsc::UnboundedSender<Disconnect>),
}

/// Tells the test when it is dropped: the lifecycle thread lets go of the
/// callbacks only after the interface is finalised.
struct Cb {
    gone: Mutex<Option<mpsc::Sender<()>>>,
    disconnects: Disconnects,
}

impl Drop for Cb {
    fn drop(&mut self) {
        if let Some(tx) = self.gone.lock().unwrap().take() {
            let _ = tx.send(());
        }
    }
}

impl Callbacks for Cb {
    fn entrypoint_request(&self, cx: &Ctx<'_>, req: EntrypointRequest, reply: EntrypointResponder) {
        let rep = EntrypointReply {
            quorum: 1,
            rm_fid: Fid::typed(FidType::Service, 1, 5),
            rm_endpoint: req.remote_endpoint,
            ..Default::default()
        };
        reply.accept_now(cx, &rep).unwrap();
    }

    fn link_is_disconnecting(&self, cx: &Ctx<'_>, _link: LinkId, d: Disconnect) {
        match &self.disconnects {
            Disconnects::Now => d.disconnect_now(cx).unwrap(),
            Disconnects::Hold(held) => held.lock().unwrap().push(d),
            Disconnects::Forward(tx) => tx.send(d).unwrap(),
        }
    }
}

fn start(disconnects: Disconnects) -> (Halon<Cb>, String, mpsc::Receiver<()>) {
    let endpoint = free_endpoint();
    let (tx, gone) = mpsc::channel();
    let cb = Cb {
        gone: Mutex::new(Some(tx)),
        disconnects,
    };
    let halon = Halon::start(halon_config(&endpoint), cb).unwrap();
    (halon, endpoint, gone)
}

/// Waits, without blocking the runtime, for the callbacks to be dropped.
async fn stopped(gone: mpsc::Receiver<()>) {
    let waited = tokio::task::spawn_blocking(move || gone.recv_timeout(T));
    let r = tokio::time::timeout(T + T, waited).await;
    assert!(
        matches!(r, Ok(Ok(Ok(())))),
        "the stop did not finish: {r:?}"
    );
}

/// Starts an interface whose disconnects are agreed to by a task of the
/// current runtime, with a peer (also run by the runtime) connected.
async fn start_on_the_runtime() -> (Halon<Cb>, SimProcess, mpsc::Receiver<()>) {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Disconnect>();
    tokio::spawn(async move {
        while let Some(d) = rx.recv().await {
            d.disconnect();
        }
    });
    let (halon, endpoint, gone) = start(Disconnects::Forward(tx));
    let fid = Fid::typed(FidType::Process, 1, 40);
    let peer = SimProcess::connect(SimConfig::new(endpoint, fid))
        .await
        .unwrap();
    assert_eq!(
        halon.handle().links().len(),
        2,
        "the self link and the peer's"
    );
    // Its connection goes, its link stays: the stop still asks the runtime's
    // task to agree to its disconnect. A connected peer would be told NOLINK
    // and ask again while the stop runs; a stop that withholds that request
    // is cut short and keeps the callbacks (`stop_withheld.rs`), which is not
    // what these tests are about.
    peer.vanish();
    (halon, peer, gone)
}

/// Drops `halon` and says how long that took.
fn timed_drop(halon: Halon<Cb>) -> Duration {
    let t = Instant::now();
    drop(halon);
    t.elapsed()
}

#[tokio::test(flavor = "current_thread")]
async fn drop_on_a_current_thread_runtime_returns_at_once_and_the_stop_completes() {
    let (halon, peer, gone) = start_on_the_runtime().await;
    // Waiting here for the stop would wait for a task only this thread runs.
    let took = timed_drop(halon);
    assert!(
        took < QUICK,
        "drop blocked the runtime's thread for {took:?}"
    );
    stopped(gone).await;
    drop(peer);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn drop_on_a_runtime_worker_returns_at_once_and_the_stop_completes() {
    let (halon, peer, gone) = start_on_the_runtime().await;
    // On the only worker, which the task agreeing to disconnects needs too.
    let took = tokio::spawn(async move { timed_drop(halon) })
        .await
        .unwrap();
    assert!(
        took < QUICK,
        "drop blocked the runtime's worker for {took:?}"
    );
    stopped(gone).await;
    drop(peer);
}

#[test]
fn drop_outside_a_runtime_waits_for_the_stop() {
    let (halon, _endpoint, gone) = start(Disconnects::Now);
    drop(halon);
    assert_eq!(
        gone.try_recv(),
        Ok(()),
        "the interface is finalised when drop returns"
    );
}

#[test]
fn drop_outside_a_runtime_gives_up_after_its_wait() {
    // Every disconnect is held back: the emulator's stop gives up only after
    // its 2 s stop timeout (see halon_config), long past the drop wait.
    let (mut halon, _endpoint, gone) = start(Disconnects::Hold(Mutex::default()));
    let wait = Duration::from_millis(200);
    halon.set_drop_wait(wait);
    let took = timed_drop(halon);
    assert!(
        took >= wait && took < wait + QUICK,
        "drop took {took:?} with a wait of {wait:?}"
    );
    assert_eq!(
        gone.try_recv(),
        Err(mpsc::TryRecvError::Empty),
        "the stop was still going on"
    );
    // It finishes on its own thread, unjoined.
    assert_eq!(gone.recv_timeout(T), Ok(()));
}
