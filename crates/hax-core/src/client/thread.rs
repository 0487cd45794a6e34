//! The client thread: one Motr-adopted thread per running interface that runs
//! client operations one at a time. Client operations block (spiel waits for
//! RPC replies), so they get their own thread: the call thread that sends HA
//! messages never waits behind them.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;

use hax_sys as sys;

use super::types::ClientError;
use crate::ctx::lock;
use crate::error::{Error, Result};
use crate::thread::MotrThread;

/// An operation for the client thread; `None` when the interface is stopping
/// and the operation must not reach Motr.
pub(crate) type Job = Box<dyn for<'t> FnOnce(Option<&Runner<'t>>) + Send>;

/// The client side of a halon interface, shared by every [`super::MotrClient`].
#[derive(Debug, Default)]
pub(crate) struct Core {
    tx: Mutex<Option<mpsc::Sender<Job>>>,
    closing: AtomicBool,
    ready: AtomicBool,
}

impl Core {
    /// Hands `job` to the client thread.
    pub(crate) fn submit(&self, job: Job) -> Result<(), ClientError> {
        let tx = lock(&self.tx);
        if self.closing() {
            return Err(ClientError::ShuttingDown);
        }
        match tx.as_ref() {
            Some(tx) => tx.send(job).map_err(|_| ClientError::ShuttingDown),
            // Not open yet: the interface is starting.
            None => Err(ClientError::NotReady),
        }
    }

    pub(crate) fn closing(&self) -> bool {
        self.closing.load(Ordering::Acquire)
    }

    pub(crate) fn ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    pub(crate) fn set_ready(&self, on: bool) {
        self.ready.store(on, Ordering::Release);
    }

    fn open(&self, tx: mpsc::Sender<Job>) {
        *lock(&self.tx) = Some(tx);
    }

    /// From now on operations fail with `ShuttingDown`, queued ones
    /// included; the thread ends once its queue is empty.
    pub(crate) fn close(&self) {
        let mut tx = lock(&self.tx);
        self.closing.store(true, Ordering::Release);
        self.ready.store(false, Ordering::Release);
        *tx = None;
    }
}

/// What an operation runs with on the client thread: the live handle and the
/// proof that this thread is adopted.
pub(crate) struct Runner<'t> {
    pub(super) glue: *mut sys::hax_glue,
    pub(super) _thread: MotrThread<'t>,
}

struct GluePtr(*mut sys::hax_glue);
// SAFETY: the pointer goes to the client thread, which Motr adopts before any
// use, and which ends before the handle is finalised.
unsafe impl Send for GluePtr {}

/// A running client thread.
#[derive(Debug)]
pub(crate) struct ClientThread {
    handle: JoinHandle<()>,
}

impl ClientThread {
    /// Starts and adopts the thread; operations reach it once it returns.
    pub(crate) fn spawn(core: &Arc<Core>, glue: *mut sys::hax_glue) -> Result<Self> {
        let (tx, rx) = mpsc::channel::<Job>();
        let (adopted_tx, adopted_rx) = mpsc::channel();
        let g = GluePtr(glue);
        let c = Arc::clone(core);
        let handle = std::thread::Builder::new()
            .name("hax-motr-client".into())
            .spawn(move || run(&c, g, rx, adopted_tx))
            .map_err(Error::Thread)?;
        match adopted_rx.recv() {
            Ok(Ok(())) => {
                core.open(tx);
                Ok(ClientThread { handle })
            }
            Ok(Err(e)) => {
                let _ = handle.join();
                Err(e)
            }
            Err(_) => {
                let _ = handle.join();
                Err(Error::NotRunning)
            }
        }
    }

    /// Waits for the thread to end; call [`Core::close`] first.
    pub(crate) fn join(self) {
        if self.handle.join().is_err() {
            tracing::error!("the Motr client thread panicked");
        }
    }
}

fn run(core: &Core, glue: GluePtr, rx: mpsc::Receiver<Job>, adopted: mpsc::Sender<Result<()>>) {
    let glue = glue.0;
    // SAFETY: the handle is initialised; adoption registers this thread.
    let rc = unsafe { sys::hax_glue_thread_adopt(glue) };
    if rc != 0 {
        let _ = adopted.send(Err(Error::glue("hax_glue_thread_adopt", rc)));
        return;
    }
    let _ = adopted.send(Ok(()));
    {
        // SAFETY: this thread is adopted until thread_shun below, and the
        // token does not leave this block.
        let thread = unsafe { MotrThread::assume() };
        let runner = Runner {
            glue,
            _thread: thread,
        };
        while let Ok(job) = rx.recv() {
            // Queued before the stop began, run after: kept away from Motr.
            let live = (!core.closing()).then_some(&runner);
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job(live)));
            if r.is_err() {
                tracing::error!("a Motr client operation panicked");
            }
        }
    }
    // SAFETY: this thread was adopted above.
    let rc = unsafe { sys::hax_glue_thread_shun(glue) };
    if rc != 0 {
        tracing::warn!(code = %crate::error::GlueCode::from_rc(rc), "client thread shun failed");
    }
}
