//! Raw bindings to `csrc/hax_glue.h`, the flat C boundary between hax and Motr's
//! `m0_halon_interface`.
//!
//! Everything here is `unsafe` to use and has C names. The safe model lives in
//! `hax-core`; use that instead. Two backends implement the same header: the
//! emulator (default, `csrc/hax_glue_emu.c`) and the real libmotr (feature
//! `motr`). Which one was linked is [`BACKEND`], and at run time
//! `hax_glue_backend()`.
//!
//! The header needs no Motr header: Motr's types stay in
//! `csrc/hax_glue_motr.c`. Its comments state the rules every caller keeps
//! (which thread may call what, who owns which memory). The bindings in
//! `src/bindings.rs` are generated from it and checked in, so no build needs
//! libclang; the crate's `bindings` test regenerates them and fails on any
//! difference.
//!
//! # Backends and feature flags
//!
//! | feature | default | effect |
//! |---|---|---|
//! | `motr` | off | Build `csrc/hax_glue_motr.c` and link the installed libmotr, found through `MOTR_PREFIX` (`$MOTR_PREFIX/include/motr`, `$MOTR_PREFIX/lib`), then `pkg-config motr`. Without it, `build.rs` compiles the emulator (C11, needs only a C compiler and pthreads): it speaks a small socket protocol to simulated `m0d` processes (`hax-sim`). |
//!
//! The crate declares `links = "hax_glue"`: a build script of a dependent
//! finds the header's directory in `DEP_HAX_GLUE_INCLUDE`.

#![no_std]
#![cfg_attr(docsrs, feature(doc_cfg))]
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
