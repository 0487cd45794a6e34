//! The safe model of Motr's halon interface (`m0_halon_interface`): fids, HA
//! states and messages, HA links, and calls into Motr that can only be made
//! from threads Motr knows.
//!
//! Motr's `m0d` processes talk to their HA side over HA links: each asks for
//! the cluster's configuration with an *entrypoint request*, reports process
//! and service events, asks for HA states (NVEC GET) and failure vectors, and
//! is told of state changes (NVEC SET). This crate is that HA side, as hax (the
//! HA link eXtender of cortx-hare) uses it: [`Halon`] starts the interface and
//! calls a [`Callbacks`] implementation for everything Motr says; what must be
//! answered comes as a reply object ([`reply`]); [`HaLink`] sends from any
//! thread and from async code; [`MotrClient`] runs Motr's client operations
//! (rconfc, SNS, statistics). `hax-sys` is the C boundary; nothing `unsafe`
//! leaves this crate.
//!
//! # Quick start
//!
//! Hand what Motr sends to async code through a bounded channel, and answer
//! it there. On the emulator backend this runs as it is: hax's own process
//! reports its start on a link of its own, so there is a message to receive
//! even with no `m0d` connected.
//!
//! ```
//! use hax_core::{
//!     Callbacks, Confd, Ctx, Delivery, EntrypointReply, EntrypointRequest, EntrypointResponder,
//!     Fid, FidType, HaMsg, HaMsgData, Halon, HalonConfig, LinkId, ProcessEventKind, Tag,
//! };
//! use tokio::sync::mpsc;
//!
//! struct Bridge {
//!     config: HalonConfig,
//!     events: mpsc::Sender<(HaMsg, Delivery)>,
//! }
//!
//! impl Callbacks for Bridge {
//!     fn entrypoint_request(&self, cx: &Ctx<'_>, _: EntrypointRequest, reply: EntrypointResponder) {
//!         let rep = EntrypointReply {
//!             confds: vec![Confd {
//!                 fid: Fid::typed(FidType::Process, 1, 0x10),
//!                 endpoint: "inet:tcp:127.0.0.1@22002".into(),
//!             }],
//!             quorum: 1,
//!             rm_fid: self.config.rm_service_fid,
//!             rm_endpoint: self.config.endpoint.clone(),
//!         };
//!         if let Err(e) = reply.accept_now(cx, &rep) {
//!             tracing::warn!(error = %e, "entrypoint reply failed");
//!         }
//!     }
//!
//!     fn msg_received(&self, _: &Ctx<'_>, _: LinkId, _: Tag, msg: HaMsg, delivery: Delivery) {
//!         // Never block Motr's thread. When the queue is full, the Delivery is
//!         // dropped, which answers "delivered" and logs a warning.
//!         let _ = self.events.try_send((msg, delivery));
//!     }
//! }
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # if hax_core::BACKEND != "emulator" { return Ok(()); }
//! # let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
//! let config = HalonConfig {
//!     endpoint: format!("inet:tcp:127.0.0.1@{port}"),
//!     process_fid: Fid::typed(FidType::Process, 1, 3),
//!     ha_service_fid: Fid::typed(FidType::Service, 1, 4),
//!     rm_service_fid: Fid::typed(FidType::Service, 1, 5),
//!     debug_options: String::new(),
//!     receive_buffers: 0,
//!     node_uuid: None,
//! };
//! let (events, mut rx) = mpsc::channel(64);
//! // Blocks until hax's own process has its configuration: from async code,
//! // call it in spawn_blocking.
//! let mut halon = Halon::start(config.clone(), Bridge { config, events })?;
//!
//! let rt = tokio::runtime::Runtime::new()?;
//! rt.block_on(async {
//!     let (msg, delivery) = rx.recv().await.expect("hax's own start event");
//!     assert_eq!(msg.fid, Fid::typed(FidType::Process, 1, 3));
//!     assert!(matches!(msg.data, HaMsgData::ProcessEvent(e) if e.event == ProcessEventKind::Starting));
//!     // Once what the message asked for is done: confirm it to its sender.
//!     // From any thread; hax-core's call thread makes the call into Motr.
//!     delivery.deliver();
//! });
//! // A link disconnects only once its messages are answered: answer (or drop)
//! // those still queued before stopping.
//! drop(rx);
//! let report = halon.stop()?;
//! assert_eq!(report.violations, 0);
//! # Ok(())
//! # }
//! ```
//!
//! `examples/ha_link.rs` is a complete minimal HA side that accepts `m0d`
//! processes; `examples/halon_demo.rs` also answers NVEC GETs and keepalives
//! and broadcasts state changes. Both run against simulated `m0d` processes
//! (`hax-sim`'s `m0d-sim`).
//!
//! # Threads
//!
//! Motr calls back on its own threads and accepts calls only from threads it
//! knows. hax-core turns that rule into types:
//!
//! - [`Callbacks`] methods run on Motr's threads, possibly several at once, so
//!   the trait is `Send + Sync + 'static` and its methods take `&self`. They
//!   must not block (no lock held across Motr calls, no `block_on`, no
//!   network): copy what is needed and hand it on.
//! - Each callback gets a [`Ctx`], which carries a [`MotrThread`] token: proof
//!   that the current thread is known to Motr. The token is neither `Send` nor
//!   `Sync` and cannot outlive the callback, so the direct calls that need it
//!   ([`Ctx::send`], the `*_now` methods of the reply objects) cannot be made
//!   from a wrong thread: such code does not compile.
//! - Everywhere else, [`HaLink`] (cloneable, `Send + Sync`) and the reply
//!   objects' other methods hand the call to a thread hax-core owns and Motr
//!   has adopted. [`HaLink`] returns a [`Completion`]: await it, or
//!   [`Completion::wait`] outside async code. [`HaLink::run`] runs any closure
//!   there with a [`Ctx`].
//! - [`Halon::start`] and [`Halon::stop`] block while Motr starts and stops
//!   (Motr wants both on one thread, which hax-core owns). Dropping a
//!   [`Halon`] stops it too, waiting a bounded time ([`DEFAULT_DROP_WAIT`]).
//!
//! # Answers owed to Motr
//!
//! What Motr needs answered exactly once is a value consumed by its answer:
//! [`EntrypointResponder`], [`Delivery`], [`NvecGet`], [`FailvecRequest`],
//! [`Disconnect`]. One dropped unanswered gives the safe answer (EAGAIN,
//! delivered, TRANSIENT states, an empty failure vector, disconnect) and logs
//! a warning, so Motr is never left waiting, whatever path the object takes.
//!
//! # Panics
//!
//! A panic in a callback is caught before it reaches C. After one, no method
//! of that [`Callbacks`] value is called again: the reply objects of later
//! callbacks are dropped, which answers Motr, and [`Halon::stop`] returns
//! [`Error::CallbackPanicked`].
//!
//! # Backends and feature flags
//!
//! The same API runs on two implementations of the halon interface; [`BACKEND`]
//! says which one was built.
//!
//! | feature | default | effect |
//! |---|---|---|
//! | `motr` | off | Link the installed libmotr (found through `MOTR_PREFIX`, then `pkg-config motr`) instead of the emulator. The emulator speaks a small socket protocol to simulated `m0d` processes (`hax-sim`) and needs nothing installed. |
//!
//! Events come through the `tracing` crate; install a subscriber to see them.

#![warn(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod fid;
pub mod msg;
pub mod state;

pub use fid::{Fid, FidParseError, FidType, Uint128};
pub use msg::{
    BeIoErr, Cookie, FailvecRep, FailvecReq, HaMsg, HaMsgData, HaNote, InvalidMsg, LinkId, Nvec,
    NvecKind, ProcessEvent, RpcEvent, ServiceEvent, SnsErr, StobIoqError, Tag, NOTES_MAX,
};
pub use state::{
    BeLocation, CmOp, HaState, OutOfRange, ProcessEventKind, ProcessType, ServiceEventKind,
    ServiceType,
};

mod callbacks;
pub mod client;
mod ctx;
mod entrypoint;
mod error;
mod halon;
pub mod heap;
mod raw;
pub mod reply;
mod thread;
mod trampoline;

pub use callbacks::Callbacks;
pub use client::{
    ByteCountStats, ClientError, CmStatus, FsStats, MotrClient, PverByteCount, PverInfo, PverState,
    SnsKind, SnsOp, SnsStatus,
};
pub use ctx::{Ctx, Outcome};
pub use entrypoint::{Confd, EntrypointReply, EntrypointRequest, LinkInfo};
pub use error::{ConvertError, Error, GlueCode, Result};
pub use halon::{
    Completion, HaLink, Halon, HalonConfig, StopReport, Tracked, DEFAULT_DROP_WAIT,
    RECEIVE_BUFFERS_MAX,
};
pub use reply::{Delivery, Disconnect, EntrypointResponder, FailvecRequest, NvecGet, EAGAIN};

/// The backend hax-sys was built with: `"emulator"` or `"motr"` (feature
/// `motr`). Re-exported so that crates above this one can report it (build
/// information in metrics) without naming the C boundary.
pub const BACKEND: &str = hax_sys::BACKEND;
pub use thread::MotrThread;
