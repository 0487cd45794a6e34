//! The one error type of hax-core.

use crate::msg::{InvalidMsg, LinkId};
use crate::state::OutOfRange;

/// A code returned by the C boundary (`enum hax_rc`, or a negative errno).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum GlueCode {
    /// The call is not allowed in the current lifecycle state.
    #[error("not allowed in the current state")]
    State,
    /// Unknown or disconnected link.
    #[error("no such link")]
    NoLink,
    /// Entrypoint request unknown or already answered.
    #[error("no such entrypoint request")]
    NoReq,
    /// Tag is not an undelivered received message.
    #[error("no such undelivered message")]
    NoTag,
    /// A size limit was exceeded.
    #[error("limit exceeded")]
    Limit,
    /// Disconnect out of order.
    #[error("disconnect out of order")]
    Order,
    /// The calling thread is unknown to Motr.
    #[error("calling thread is not known to Motr")]
    Thread,
    /// Send with a non-zero tag.
    #[error("message tag must be 0 on send")]
    Tag,
    /// An NVEC Motr would assert on.
    #[error("invalid NVEC")]
    Nvec,
    /// Failure vector reply with an unknown cookie.
    #[error("failure vector reply matches no request")]
    Cookie,
    /// Bad argument.
    #[error("invalid argument")]
    Inval,
    /// Disconnect with undelivered received messages.
    #[error("link has undelivered received messages")]
    Undelivered,
    /// Stop would have hung in Motr.
    #[error("stop would hang in Motr")]
    Hang,
    /// Stop cut short: entrypoint requests withheld, Motr's stop cannot end.
    #[error("stop cut short: entrypoint requests withheld")]
    Withheld,
    /// A negative errno value from Motr.
    #[error("errno {0} ({text})", text = errno_text(*.0))]
    Errno(i32),
}

/// The system's text for `errno` ("Address already in use"), without the
/// "(os error N)" std adds.
fn errno_text(errno: i32) -> String {
    let text = std::io::Error::from_raw_os_error(errno).to_string();
    match text.rfind(" (os error ") {
        Some(end) => text[..end].to_owned(),
        None => text,
    }
}

impl GlueCode {
    /// The code for a non-zero C return value.
    pub fn from_rc(rc: i32) -> Self {
        match rc {
            hax_sys::HAX_E_STATE => GlueCode::State,
            hax_sys::HAX_E_NOLINK => GlueCode::NoLink,
            hax_sys::HAX_E_NOREQ => GlueCode::NoReq,
            hax_sys::HAX_E_NOTAG => GlueCode::NoTag,
            hax_sys::HAX_E_LIMIT => GlueCode::Limit,
            hax_sys::HAX_E_ORDER => GlueCode::Order,
            hax_sys::HAX_E_THREAD => GlueCode::Thread,
            hax_sys::HAX_E_TAG => GlueCode::Tag,
            hax_sys::HAX_E_NVEC => GlueCode::Nvec,
            hax_sys::HAX_E_COOKIE => GlueCode::Cookie,
            hax_sys::HAX_E_INVAL => GlueCode::Inval,
            hax_sys::HAX_E_UNDELIVERED => GlueCode::Undelivered,
            hax_sys::HAX_E_HANG => GlueCode::Hang,
            hax_sys::HAX_E_WITHHELD => GlueCode::Withheld,
            other => GlueCode::Errno(-other),
        }
    }
}

/// Why a raw message could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConvertError {
    /// Unknown `hed_type`.
    #[error("unknown HA message type {0}")]
    BadType(u32),
    /// `nr_notes` over the limit.
    #[error("{0} notes: at most 1024")]
    TooManyNotes(u32),
    /// A field outside its enumeration.
    #[error(transparent)]
    OutOfRange(#[from] OutOfRange),
    /// `hmnv_type` neither SET nor GET.
    #[error("NVEC direction {0} is neither SET (0) nor GET (1)")]
    BadNvecDir(u64),
    /// `hmnv_ignore_same_state` neither 0 nor 1.
    #[error("NVEC ignore_same_state {0} is neither 0 nor 1")]
    BadIgnoreSame(u64),
}

/// Errors of hax-core.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The halon interface is not running (not started, or stopped).
    #[error("the halon interface is not running")]
    NotRunning,
    /// A call into the C boundary failed.
    #[error("{call} failed: {code}")]
    Glue {
        /// The C function.
        call: &'static str,
        /// What it returned.
        code: GlueCode,
    },
    /// The message breaks a rule Motr asserts on; it was not sent.
    #[error(transparent)]
    InvalidMsg(#[from] InvalidMsg),
    /// The link has been disconnected (or never existed).
    #[error("{0} is disconnected")]
    LinkGone(LinkId),
    /// A user callback panicked; the payload's message.
    #[error("a callback panicked: {0}")]
    CallbackPanicked(String),
    /// A bad argument, with the reason.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// A thread of hax-core could not be started.
    #[error("could not start a thread: {0}")]
    Thread(#[source] std::io::Error),
}

impl Error {
    pub(crate) fn glue(call: &'static str, rc: i32) -> Self {
        Error::Glue {
            call,
            code: GlueCode::from_rc(rc),
        }
    }
}

/// Result of hax-core.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errnos_say_what_they_mean() {
        let e = Error::Glue {
            call: "hax_glue_start",
            code: GlueCode::Errno(98),
        };
        assert_eq!(
            e.to_string(),
            "hax_glue_start failed: errno 98 (Address already in use)"
        );
    }
}
