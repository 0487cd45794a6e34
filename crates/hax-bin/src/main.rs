//! `hax`: the HA link eXtender daemon.

mod config;

fn main() {}
