//! Starting and stopping the halon interface, and the handle async code uses.
//!
//! Motr wants `init`, `start`, `stop` and `fini` on one thread, and every
//! other call on a thread it knows. hax-core owns three threads for that: the
//! lifecycle thread, which runs the four lifecycle calls and nothing else
//! (it is blocked inside `start` and `stop` while callbacks run); the call
//! thread, adopted by Motr, which runs the calls that [`HaLink`] and the
//! reply objects hand over from other threads; and the client thread, also
//! adopted, which runs the blocking client operations of [`MotrClient`].

use std::ffi::CString;
use std::future::Future;
use std::pin::Pin;
use std::sync::{mpsc, Arc};
use std::task::{Context, Poll};
use std::thread::JoinHandle;
use std::time::Duration;

use hax_sys as sys;
use tokio::sync::oneshot;

use crate::callbacks::Callbacks;
use crate::client::{ClientThread, MotrClient};
use crate::ctx::{lock, CallMsg, Ctx, Outcome, Shared};
use crate::entrypoint::LinkInfo;
use crate::error::{Error, Result};
use crate::fid::Fid;
use crate::msg::{HaMsg, LinkId, Tag};
use crate::raw;
use crate::thread::MotrThread;
use crate::trampoline::{self, quietly, Inner};

/// The most receive buffers [`HalonConfig::receive_buffers`] can keep: the
/// halon interface's own pool.
pub const RECEIVE_BUFFERS_MAX: u32 = sys::HAX_RECEIVE_BUFFERS_MAX;

/// What the halon interface is started with.
#[derive(Clone, Debug)]
pub struct HalonConfig {
    /// hax's endpoint, where Motr processes connect.
    pub endpoint: String,
    /// hax's process fid (type `r`).
    pub process_fid: Fid,
    /// hax's HA service fid (type `s`).
    pub ha_service_fid: Fid,
    /// hax's RM service fid (type `s`).
    pub rm_service_fid: Fid,
    /// Motr debug options (`log-entrypoint log-link log-msg`, ...).
    pub debug_options: String,
    /// Receive buffers Motr keeps posted once started (at most 100); 0
    /// keeps the halon interface's own pool of 100, about 100 MiB resident
    /// on libfabric. The emulator has no such pool.
    pub receive_buffers: u32,
    /// Node UUID; `None` selects Motr's default.
    pub node_uuid: Option<String>,
}

/// What a stop found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StopReport {
    /// Contract violations the C side counted over the run (0 on real Motr).
    pub violations: u64,
    /// Real Motr would have hung in stop (the emulator reported why and went on).
    pub would_hang: bool,
    /// The stop was cut short: entrypoint requests that came while the links
    /// were going were withheld (any answer would have fenced the process
    /// with `disconnected_previously`), and Motr's stop waits for them for
    /// ever. Nothing was finalised; the process is to exit, which ends it.
    pub cut_short: bool,
}

/// The result of a call handed to hax-core's call thread. Await it, or
/// [`Completion::wait`] for it from a thread outside any async runtime.
/// Dropping it does not cancel the call.
#[derive(Debug)]
#[must_use = "a completion does nothing unless awaited; drop it to ignore the result"]
pub struct Completion<T> {
    pub(crate) rx: oneshot::Receiver<Result<T>>,
}

impl<T> Completion<T> {
    /// Blocks until the call has run. Must not be called from async code.
    pub fn wait(self) -> Result<T> {
        self.rx.blocking_recv().unwrap_or(Err(Error::NotRunning))
    }
}

impl<T> Future for Completion<T> {
    type Output = Result<T>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<T>> {
        Pin::new(&mut self.rx)
            .poll(cx)
            .map(|r| r.unwrap_or(Err(Error::NotRunning)))
    }
}

/// A cloneable, `Send + Sync` handle to a running halon interface, for any
/// thread and for async code: every call goes to hax-core's adopted thread.
#[derive(Clone)]
pub struct HaLink {
    pub(crate) shared: Arc<Shared>,
}

impl std::fmt::Debug for HaLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HaLink")
            .field("endpoint", &self.shared.local_endpoint)
            .finish()
    }
}

/// A tracked send: its tag, and the outcome to come.
#[derive(Debug)]
pub struct Tracked {
    /// The message's tag on its link.
    pub tag: Tag,
    outcome: oneshot::Receiver<Outcome>,
}

impl Tracked {
    /// Waits for the outcome; `Err(NotRunning)` if the interface stopped first.
    pub async fn outcome(self) -> Result<Outcome> {
        self.outcome.await.map_err(|_| Error::NotRunning)
    }
}

impl HaLink {
    /// Runs `f` on hax-core's adopted thread, with a [`Ctx`].
    pub fn run<R: Send + 'static>(
        &self,
        f: impl for<'t> FnOnce(&Ctx<'t>) -> Result<R> + Send + 'static,
    ) -> Completion<R> {
        self.shared.call(f)
    }

    /// Sends `msg` on `link`.
    pub fn send(&self, link: LinkId, msg: HaMsg) -> Completion<Tag> {
        self.run(move |cx| cx.send(link, &msg))
    }

    /// Sends `msg` on `link` and tracks whether it is delivered.
    pub fn send_tracked(&self, link: LinkId, msg: HaMsg) -> Completion<Tracked> {
        self.run(move |cx| {
            cx.send_tracked(link, &msg)
                .map(|(tag, outcome)| Tracked { tag, outcome })
        })
    }

    /// Sends `msg` on each of `links`, tracking every send.
    pub fn broadcast(
        &self,
        links: Vec<LinkId>,
        msg: HaMsg,
    ) -> Completion<Vec<(LinkId, Result<Tracked>)>> {
        self.run(move |cx| {
            msg.validate_for_send()?;
            Ok(links
                .into_iter()
                .map(|l| {
                    let r = cx
                        .send_tracked(l, &msg)
                        .map(|(tag, outcome)| Tracked { tag, outcome });
                    (l, r)
                })
                .collect())
        })
    }

    /// The links connected now.
    pub fn links(&self) -> Vec<LinkInfo> {
        self.shared.links()
    }

    /// Links a broadcast should use now: connected, not disconnecting, their
    /// process has not reported PROCESS STOPPED on them (as the original's
    /// `m0_hax_link_stopped`; the process tears them down itself), and no
    /// newer link of their process has connected (an earlier incarnation's).
    pub fn active_links(&self) -> Vec<LinkId> {
        self.shared.active_links()
    }

    /// Contract violations counted by the C side so far (0 on real Motr).
    pub fn violations(&self) -> u64 {
        self.shared.violations()
    }

    /// Motr's client operations (rconfc, SNS, stats) on this interface.
    ///
    /// ```no_run
    /// # async fn demo(link: hax_core::HaLink) -> Result<(), hax_core::ClientError> {
    /// let stats = link.client().fs_stats().await?;
    /// println!("{} of {} bytes free", stats.free_disk, stats.total_disk);
    /// # Ok(())
    /// # }
    /// ```
    pub fn client(&self) -> MotrClient {
        MotrClient::new(Arc::clone(&self.shared.client))
    }

    /// Asks the owner's lifecycle thread to stop the interface. Returns at
    /// once; [`Halon::stop`] waits for it. Harmless when already stopping.
    pub fn request_stop(&self) {
        if let Some(tx) = lock(&self.shared.stop_requests).as_ref() {
            let _ = tx.send(());
        }
    }
}

/// How long dropping a [`Halon`] waits for its stop, unless
/// [`Halon::set_drop_wait`] says otherwise.
pub const DEFAULT_DROP_WAIT: Duration = Duration::from_secs(10);

/// A running halon interface.
///
/// Dropping it stops it, but only [`Halon::stop`] waits as long as the stop
/// takes and says how it went. `Drop` asks the lifecycle thread to stop, then:
///
/// - outside an async runtime, waits for the stop at most the drop wait
///   ([`DEFAULT_DROP_WAIT`], or [`Halon::set_drop_wait`]);
/// - on a thread of a tokio runtime (a worker, a `block_on`, or inside
///   `spawn_blocking`), returns at once and leaves that wait to a thread of
///   its own: the stop may need the runtime (a peer driven by it, a reply
///   answered from a task), so blocking one of its threads can stall the
///   stop with it.
///
/// When the wait passes its bound, a warning is logged and the stop goes on
/// on hax-core's lifecycle thread, which nobody joins any more. Until that
/// thread has finalised the interface, the callbacks value stays alive and
/// may still be called; it is dropped on that thread afterwards. If the
/// process exits first, the stop is cut short: Motr's peers see hax vanish
/// rather than disconnect.
#[must_use = "dropping a Halon stops it"]
pub struct Halon<C: Callbacks> {
    shared: Arc<Shared>,
    inner: Arc<Inner<C>>,
    lifecycle: Option<Lifecycle>,
    outcome: Option<(StopReport, Option<String>)>,
    drop_wait: Duration,
}

/// The lifecycle thread, and word from it that it has ended.
struct Lifecycle {
    thread: JoinHandle<StopReport>,
    ended: mpsc::Receiver<()>,
}

impl Lifecycle {
    /// The report, once the thread has ended; `None` if it has not within
    /// `bound`, in which case the thread is left to end on its own.
    fn finish_within(self, bound: Duration) -> Option<StopReport> {
        match self.ended.recv_timeout(bound) {
            // Disconnected: the thread ended without a word, by a panic.
            Ok(()) | Err(mpsc::RecvTimeoutError::Disconnected) => Some(self.finish()),
            Err(mpsc::RecvTimeoutError::Timeout) => None,
        }
    }

    fn finish(self) -> StopReport {
        self.thread.join().unwrap_or_else(|_| {
            tracing::error!("the lifecycle thread panicked");
            StopReport::default()
        })
    }
}

/// True on a thread where blocking may hold up a tokio runtime.
fn on_async_runtime() -> bool {
    tokio::runtime::Handle::try_current().is_ok()
}

/// What `Drop` does after asking for the stop: waits at most `bound`, then
/// says how the stop went, or that it goes on unwatched.
fn wait_dropped(life: Lifecycle, shared: &Shared, bound: Duration) {
    match life.finish_within(bound) {
        Some(report) => match lock(&shared.panic).as_deref() {
            Some(p) => quietly(
                || tracing::warn!(panic = %p, "halon interface stopped on drop; a callback had panicked"),
            ),
            None => quietly(|| {
                tracing::info!(
                    violations = report.violations,
                    would_hang = report.would_hang,
                    "halon interface stopped on drop"
                )
            }),
        },
        None => quietly(|| {
            tracing::warn!(
                waited = ?bound,
                "halon interface still stopping after the drop wait; it finishes on its own thread, unjoined"
            )
        }),
    }
}

impl<C: Callbacks> std::fmt::Debug for Halon<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Halon")
            .field("endpoint", &self.shared.local_endpoint)
            .field("running", &self.lifecycle.is_some())
            .field("drop_wait", &self.drop_wait)
            .finish()
    }
}

fn cstring(what: &str, s: &str) -> Result<CString> {
    CString::new(s).map_err(|_| Error::InvalidArgument(format!("{what} contains a NUL byte")))
}

impl<C: Callbacks> Halon<C> {
    /// Initialises and starts the halon interface. Blocks until Motr's own
    /// entrypoint request has been answered with rc 0 by `callbacks` (from
    /// async code, call it inside `spawn_blocking`).
    pub fn start(cfg: HalonConfig, callbacks: C) -> Result<Self> {
        let endpoint = cstring("endpoint", &cfg.endpoint)?;
        let debug = cstring("debug options", &cfg.debug_options)?;
        if cfg.receive_buffers > RECEIVE_BUFFERS_MAX {
            return Err(Error::InvalidArgument(format!(
                "receive buffers: {} is over Motr's pool of {}",
                cfg.receive_buffers, RECEIVE_BUFFERS_MAX
            )));
        }
        let uuid = cfg
            .node_uuid
            .as_deref()
            .map(|u| cstring("node uuid", u))
            .transpose()?;
        let shared = Arc::new(Shared::new(cfg.endpoint.clone(), cfg.process_fid));
        let inner = Arc::new(Inner {
            cb: callbacks,
            shared: Arc::clone(&shared),
        });
        let (ready_tx, ready_rx) = mpsc::channel();
        let (stop_tx, stop_rx) = mpsc::channel();
        let (ended_tx, ended_rx) = mpsc::channel();
        *lock(&shared.stop_requests) = Some(stop_tx);
        let life_inner = Arc::clone(&inner);
        let lifecycle = std::thread::Builder::new()
            .name("hax-motr-life".into())
            .spawn(move || {
                let args = StartArgs {
                    endpoint,
                    debug,
                    uuid,
                    process: raw::fid_to_raw(cfg.process_fid),
                    ha_service: raw::fid_to_raw(cfg.ha_service_fid),
                    rm_service: raw::fid_to_raw(cfg.rm_service_fid),
                    receive_buffers: cfg.receive_buffers,
                };
                let report = lifecycle(&life_inner, args, ready_tx, stop_rx);
                // The callbacks go with this thread, not with whoever joins
                // it (a Drop that stopped waiting joins nothing).
                drop(life_inner);
                let _ = ended_tx.send(());
                report
            })
            .map_err(Error::Thread)?;
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(Halon {
                shared,
                inner,
                lifecycle: Some(Lifecycle {
                    thread: lifecycle,
                    ended: ended_rx,
                }),
                outcome: None,
                drop_wait: DEFAULT_DROP_WAIT,
            }),
            Ok(Err(e)) => {
                let _ = lifecycle.join();
                Err(e)
            }
            Err(_) => {
                let _ = lifecycle.join();
                Err(Error::NotRunning)
            }
        }
    }

    /// A handle for other threads and async code.
    pub fn handle(&self) -> HaLink {
        HaLink {
            shared: Arc::clone(&self.shared),
        }
    }

    /// Motr's client operations on this interface (the same as
    /// [`HaLink::client`]).
    pub fn client(&self) -> MotrClient {
        MotrClient::new(Arc::clone(&self.shared.client))
    }

    /// The callbacks.
    pub fn callbacks(&self) -> &C {
        &self.inner.cb
    }

    /// How long dropping this value waits for the stop (see [`Halon`]);
    /// [`DEFAULT_DROP_WAIT`] unless set.
    pub fn set_drop_wait(&mut self, wait: Duration) {
        self.drop_wait = wait;
    }

    /// What the finished stop found, also when it returned an error.
    pub fn report(&self) -> Option<StopReport> {
        self.outcome.as_ref().map(|(r, _)| r.clone())
    }

    /// Stops the interface: Motr sends its stop events to the self link,
    /// disconnects every link, and is finalised. Blocks until done (from async
    /// code, call it inside `spawn_blocking`). Calling it again is harmless
    /// and returns the same result. `Err(CallbackPanicked)` if a callback
    /// panicked during the run.
    pub fn stop(&mut self) -> Result<StopReport> {
        if let Some(life) = self.lifecycle.take() {
            self.request_stop();
            let report = life.finish();
            let panic = lock(&self.shared.panic).clone();
            self.outcome = Some((report, panic));
        }
        match &self.outcome {
            Some((_, Some(p))) => Err(Error::CallbackPanicked(p.clone())),
            Some((report, None)) => Ok(report.clone()),
            None => Err(Error::NotRunning),
        }
    }
}

impl<C: Callbacks> Halon<C> {
    fn request_stop(&self) {
        if let Some(tx) = lock(&self.shared.stop_requests).take() {
            let _ = tx.send(());
        }
    }
}

impl<C: Callbacks> Drop for Halon<C> {
    fn drop(&mut self) {
        let Some(life) = self.lifecycle.take() else {
            return;
        };
        self.request_stop();
        let (shared, bound) = (Arc::clone(&self.shared), self.drop_wait);
        if !on_async_runtime() {
            return wait_dropped(life, &shared, bound);
        }
        let waiter = std::thread::Builder::new()
            .name("hax-motr-drop".into())
            .spawn(move || wait_dropped(life, &shared, bound));
        if let Err(e) = waiter {
            // The closure, and with it the join handle, is gone: the stop
            // goes on unwatched, as when the wait passes its bound.
            quietly(
                || tracing::warn!(error = %e, "no thread to wait for the stop on drop; it finishes unwatched"),
            );
        }
    }
}

struct StartArgs {
    endpoint: CString,
    debug: CString,
    uuid: Option<CString>,
    process: sys::hax_fid,
    ha_service: sys::hax_fid,
    rm_service: sys::hax_fid,
    receive_buffers: u32,
}

struct GlueHandle(*mut sys::hax_glue);
// SAFETY: handed to the call thread, which Motr adopts before using it.
unsafe impl Send for GlueHandle {}

/// The body of the lifecycle thread: init, start, wait, stop, fini.
fn lifecycle<C: Callbacks>(
    inner: &Arc<Inner<C>>,
    args: StartArgs,
    ready: mpsc::Sender<Result<()>>,
    stop: mpsc::Receiver<()>,
) -> StopReport {
    let shared = &inner.shared;
    let mut glue: *mut sys::hax_glue = std::ptr::null_mut();
    // SAFETY: out-pointer and strings are valid for the call; this thread
    // becomes Motr's init thread.
    let rc = unsafe {
        sys::hax_glue_init(
            &mut glue,
            args.debug.as_ptr(),
            args.uuid.as_ref().map_or(std::ptr::null(), |u| u.as_ptr()),
        )
    };
    if rc != 0 {
        let _ = ready.send(Err(Error::glue("hax_glue_init", rc)));
        return StopReport::default();
    }
    shared.set_glue(glue);
    // SAFETY: init thread, handle just made, not started.
    let rc = unsafe { sys::hax_glue_set_receive_buffers(glue, args.receive_buffers) };
    if rc != 0 {
        finish(shared, glue);
        let _ = ready.send(Err(Error::glue("hax_glue_set_receive_buffers", rc)));
        return StopReport::default();
    }

    let (call_tx, call_rx) = mpsc::channel();
    let (adopted_tx, adopted_rx) = mpsc::channel();
    let call_shared = Arc::clone(shared);
    let call_glue = GlueHandle(glue);
    let call_thread = std::thread::Builder::new()
        .name("hax-motr-call".into())
        .spawn(move || call_loop(call_shared, call_glue, call_rx, adopted_tx));
    let call_thread = match call_thread {
        Ok(t) => t,
        Err(e) => {
            finish(shared, glue);
            let _ = ready.send(Err(Error::Thread(e)));
            return StopReport::default();
        }
    };
    if let Ok(Err(e)) | Err(e) = adopted_rx.recv().map_err(|_| Error::NotRunning) {
        let _ = call_thread.join();
        finish(shared, glue);
        let _ = ready.send(Err(e));
        return StopReport::default();
    }
    shared.set_calls(Some(call_tx.clone()));
    let client = match ClientThread::spawn(&shared.client, glue) {
        Ok(c) => c,
        Err(e) => {
            stop_call_thread(shared, &call_tx, call_thread);
            finish(shared, glue);
            let _ = ready.send(Err(e));
            return StopReport::default();
        }
    };

    let cbs = trampoline::table(inner);
    // SAFETY: init thread; strings, fids and the callback table are valid for
    // the call (Motr copies them); `cbs.user` stays valid until fini because
    // this thread holds `inner`.
    let rc = unsafe {
        sys::hax_glue_start(
            glue,
            args.endpoint.as_ptr(),
            &args.process,
            &args.ha_service,
            &args.rm_service,
            &cbs,
        )
    };
    if rc != 0 {
        shared.client.close();
        client.join();
        stop_call_thread(shared, &call_tx, call_thread);
        finish(shared, glue);
        let _ = ready.send(Err(Error::glue("hax_glue_start", rc)));
        return StopReport::default();
    }
    tracing::info!(endpoint = %shared.local_endpoint, "halon interface started");
    let _ = ready.send(Ok(()));

    // Every stop request, or the loss of every sender, ends the run.
    let _ = stop.recv();
    tracing::info!("stopping the halon interface");
    // New and queued client operations end now; one in progress ends when
    // stop reaches it (Motr stops rconfc in hax_glue_stop).
    shared.client.close();
    // SAFETY: init thread, started handle.
    let rc = unsafe { sys::hax_glue_stop(glue) };
    let would_hang = rc == sys::HAX_E_HANG;
    let cut_short = rc == sys::HAX_E_WITHHELD;
    if rc != 0 && !would_hang && !cut_short {
        tracing::error!(code = %crate::error::GlueCode::from_rc(rc), "hax_glue_stop failed");
    }
    let violations = shared.violations();
    client.join();
    stop_call_thread(shared, &call_tx, call_thread);
    if cut_short {
        // Motr's stop goes on, waiting for the withheld requests; the
        // handle cannot be finalised. The callbacks value stays alive too
        // (leaked), for a callback that may still be returning.
        shared.set_glue(std::ptr::null_mut());
        shared.drop_waiters();
        std::mem::forget(Arc::clone(inner));
        tracing::warn!(
            violations,
            "halon interface stop cut short: entrypoint requests withheld (an answer would have fenced their processes); the process is to exit"
        );
    } else {
        finish(shared, glue);
        tracing::info!(violations, would_hang, "halon interface stopped");
    }
    StopReport {
        violations,
        would_hang,
        cut_short,
    }
}

fn stop_call_thread(shared: &Shared, tx: &mpsc::Sender<CallMsg>, t: JoinHandle<()>) {
    shared.set_calls(None);
    let _ = tx.send(CallMsg::Quit);
    if t.join().is_err() {
        tracing::error!("the call thread panicked");
    }
}

/// Finalises the handle once nothing can use it any more.
fn finish(shared: &Shared, glue: *mut sys::hax_glue) {
    shared.set_glue(std::ptr::null_mut());
    shared.drop_waiters();
    // SAFETY: init thread; no thread can reach `glue` any more: the call
    // thread is joined, callbacks ended with stop, and with_glue sees NULL.
    let rc = unsafe { sys::hax_glue_fini(glue) };
    if rc != 0 {
        tracing::error!(code = %crate::error::GlueCode::from_rc(rc), "hax_glue_fini failed");
    }
}

fn call_loop(
    shared: Arc<Shared>,
    glue: GlueHandle,
    rx: mpsc::Receiver<CallMsg>,
    adopted: mpsc::Sender<Result<()>>,
) {
    // SAFETY: the handle is initialised; adoption registers this thread.
    let rc = unsafe { sys::hax_glue_thread_adopt(glue.0) };
    if rc != 0 {
        let _ = adopted.send(Err(Error::glue("hax_glue_thread_adopt", rc)));
        return;
    }
    let _ = adopted.send(Ok(()));
    {
        // SAFETY: this thread is adopted until thread_shun below, and the
        // token does not leave this block.
        let thread = unsafe { MotrThread::assume() };
        let cx = Ctx {
            shared: &shared,
            thread,
        };
        while let Ok(CallMsg::Run(f)) = rx.recv() {
            if let Err(p) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(&cx))) {
                let msg = p
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| p.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                tracing::error!(panic = %msg, "a call handed to the Motr thread panicked");
            }
        }
    }
    // SAFETY: this thread was adopted above.
    let rc = unsafe { sys::hax_glue_thread_shun(glue.0) };
    if rc != 0 {
        tracing::warn!(code = %crate::error::GlueCode::from_rc(rc), "thread shun failed");
    }
}
