//! The thread rule of Motr as a type.
//!
//! Motr keeps per-thread state; calls into it are valid only from threads it
//! knows: its own (inside a callback) or one adopted by hax-core. A
//! [`MotrThread`] token proves that the current thread is such a thread. It is
//! zero-sized, `Copy`, neither `Send` nor `Sync`, and borrowed for the time
//! the proof holds, so it can neither move to another thread nor outlive the
//! callback that handed it out:
//!
//! ```compile_fail
//! fn needs_send<T: Send>(_: T) {}
//! fn leak(t: hax_core::MotrThread<'_>) { needs_send(t) }
//! ```
//!
//! ```compile_fail
//! fn keep(t: hax_core::MotrThread<'_>) -> hax_core::MotrThread<'static> { t }
//! ```

use std::fmt;
use std::marker::PhantomData;

/// Proof that the current thread is known to Motr, for lifetime `'t`.
#[derive(Clone, Copy)]
pub struct MotrThread<'t> {
    _marker: PhantomData<(&'t (), *mut ())>,
}

impl MotrThread<'_> {
    /// # Safety
    /// The current thread must be known to the running halon interface for
    /// as long as the token (and copies of it) live.
    pub(crate) unsafe fn assume() -> Self {
        MotrThread {
            _marker: PhantomData,
        }
    }
}

impl fmt::Debug for MotrThread<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MotrThread")
    }
}
