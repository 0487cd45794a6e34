//! The Motr side: the callbacks Motr's threads call ([`bridge`]), keepalive
//! probes of the linked processes ([`keepalive`]), when hax's own Motr fences
//! a stopped process ([`fencing`]) and hax's configuration client
//! ([`rconfc`]).

pub mod bridge;
pub mod fencing;
pub mod keepalive;
pub mod rconfc;
