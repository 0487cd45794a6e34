//! The hax daemon as a library: what `hax` runs, reusable by tests and other
//! tools. `main.rs` only parses the command line and calls [`app::run`].
#![forbid(unsafe_code)]

pub mod api;
pub mod app;
pub mod bq;
pub mod bq_trim;
pub mod bridge;
pub mod broadcast;
pub mod civil;
pub mod cli;
pub mod config;
pub mod entrypoint;
pub mod events;
pub mod fencing;
pub mod health;
pub mod identity;
pub mod keepalive;
pub mod logging;
pub mod metrics;
pub mod model;
pub mod notify;
pub mod rconfc;
pub mod sample;
pub mod stats;
pub mod view;
pub mod writer;
