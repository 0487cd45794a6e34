//! The `hax` daemon: its command line, settings, logging and the wiring of
//! [`hax_ha`]'s parts; and the commands that ask a running daemon
//! ([`cmd`]). `main.rs` only parses the command line and calls [`app::run`]
//! or [`cmd::run`].
#![forbid(unsafe_code)]

pub mod app;
pub mod cli;
pub mod cmd;
pub mod config;
pub mod hare_env;
pub mod heap;
pub mod listen;
pub mod logging;
pub mod notify;
pub mod watchdog;
