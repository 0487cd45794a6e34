//! `hax`: the HA link eXtender daemon.

fn main() {}
