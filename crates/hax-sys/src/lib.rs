//! Raw bindings to `csrc/hax_glue.h`, the flat C boundary between hax and Motr's
//! `m0_halon_interface`.
//!
//! Everything here is `unsafe` to use and has C names. The safe model lives in
//! `hax-core`. Two backends implement the same header: the emulator (default,
//! `csrc/hax_glue_emu.c`) and the real libmotr (feature `motr`). Which one was
//! linked is [`BACKEND`], and at run time `hax_glue_backend()`.

#![no_std]
#![allow(non_camel_case_types, non_upper_case_globals, non_snake_case)]
#![allow(clippy::all, missing_debug_implementations)]

#[allow(clippy::undocumented_unsafe_blocks)]
#[rustfmt::skip]
mod bindings;
pub use bindings::*;

/// glibc's allocator statistics and trimming (not part of `hax_glue.h`).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub mod heap;

/// The backend this crate was built with: `"emulator"` or `"motr"`.
#[cfg(hax_backend = "emulator")]
pub const BACKEND: &str = "emulator";
/// The backend this crate was built with: `"emulator"` or `"motr"`.
#[cfg(hax_backend = "motr")]
pub const BACKEND: &str = "motr";
