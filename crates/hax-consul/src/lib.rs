//! The Consul side of hax: a typed HTTP client, the KV schema, the broadcast and
//! event queues, and the HTTP server that receives Consul watch handlers. It
//! knows nothing of Motr.
#![forbid(unsafe_code)]

pub mod backoff;
pub mod bounded_json;
pub mod catalog;
pub mod client;
pub mod error;
pub mod kv;
pub mod pyjson;
pub mod queue;
pub mod schema;
pub mod server;
pub mod session;
pub mod txn;
pub mod watch;
pub mod writer;

pub use client::{AclToken, ConsulClient, ConsulConfig, Indexed, QueryOptions, RetryPolicy};
pub use error::{ConsulError, TxnOpError};
pub use kv::KvPair;
pub use txn::{TxnOp, TxnResponse};
