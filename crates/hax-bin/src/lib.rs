//! The `hax` daemon: its command line, settings, logging and the wiring of
//! [`hax_ha`]'s parts. `main.rs` only parses the command line and calls
//! [`app::run`].
#![forbid(unsafe_code)]

pub mod app;
pub mod cli;
pub mod config;
pub mod heap;
pub mod logging;
pub mod notify;
pub mod watchdog;
