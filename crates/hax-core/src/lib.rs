//! The safe model of Motr's halon interface: fids, HA states and messages,
//! HA links, and calls into Motr that can only be made from threads Motr knows.
//!
//! `hax-sys` is the C boundary; nothing `unsafe` leaves this crate.

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
pub use halon::{Completion, HaLink, Halon, HalonConfig, StopReport, Tracked, DEFAULT_DROP_WAIT};
pub use reply::{Delivery, Disconnect, EntrypointResponder, FailvecRequest, NvecGet, EAGAIN};

/// The backend hax-sys was built with: `"emulator"` or `"motr"` (feature
/// `motr`). Re-exported so that crates above this one can report it (build
/// information in metrics) without naming the C boundary.
pub const BACKEND: &str = hax_sys::BACKEND;
pub use thread::MotrThread;
