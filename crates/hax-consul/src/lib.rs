//! The Consul side of hax: a typed HTTP client, the KV schema, the broadcast and
//! event queues, the write path, and the HTTP server that receives Consul watch
//! handlers. It knows nothing of Motr: fids are only text ([`schema::FidText`]).
//!
//! The KV layout is the one of cortx-hare's `hax` and tools, which read and
//! write the same keys; values are written byte-compatible with Python's
//! `json.dumps`, so both can run against one Consul.
//!
//! # Quick start
//!
//! Typed reads and writes go through [`schema::HaxKv`]; plain KV, transactions
//! and sessions are methods of [`ConsulClient`]; [`watch`] keeps a snapshot of
//! Consul data up to date with blocking queries.
//!
//! ```
//! use std::time::Duration;
//!
//! use hax_consul::schema::{keys, FidText, HaxKv, ProcessState, ProcessStatus, ProcessType};
//! use hax_consul::watch::{watch_key, WatchConfig};
//! use hax_consul::{ConsulClient, ConsulConfig, KvPair};
//! use tokio_util::sync::CancellationToken;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let agent = hax_testkit::dev_agent::DevAgent::start().await?;
//! # std::env::set_var("CONSUL_HTTP_ADDR", agent.http_addr().to_string());
//! // CONSUL_HTTP_ADDR, CONSUL_HTTP_SSL and CONSUL_HTTP_TOKEN, as the consul CLI.
//! let client = ConsulClient::new(ConsulConfig::from_env())?;
//! let kv = HaxKv::new(client.clone());
//!
//! let fid = FidText::parse("0x7200000000000001:0x15")?;
//! let started = ProcessStatus { state: ProcessState::Started, kind: ProcessType::M0d };
//! kv.put_process_status(fid, started).await?;
//! assert_eq!(kv.process_status(fid).await?, Some(started));
//!
//! // The raw entry: the JSON hare's tools read.
//! let pair = client.kv_get(&keys::process(fid)).await?.value.expect("written");
//! assert_eq!(
//!     pair.value_str()?,
//!     r#"{"state": "M0_CONF_HA_PROCESS_STARTED", "type": "M0_CONF_HA_PROCESS_M0D"}"#
//! );
//!
//! // Follow the key: the watcher's task stops when the token is cancelled or
//! // the watcher dropped.
//! let cancel = CancellationToken::new();
//! let watcher = watch_key(client, keys::process(fid), WatchConfig::default(), &cancel);
//! watcher.loaded(Duration::from_secs(10)).await?;
//! kv.put_process_status(fid, ProcessStatus { state: ProcessState::Stopped, ..started }).await?;
//! // A snapshot newer than the entry read above:
//! let seen = watcher
//!     .wait_until(Duration::from_secs(10), |s| s.index > pair.modify_index)
//!     .await?;
//! let now: &Option<KvPair> = &seen.value;
//! assert!(now.as_ref().is_some_and(|p| p.value_str().is_ok_and(|v| v.contains("STOPPED"))));
//! watcher.shutdown().await;
//! # Ok(())
//! # }
//! ```
//!
//! `examples/kv_typed.rs` does the same with a typed watch: a
//! [`watch::WatchSource`] that decodes the value, so the snapshot holds a
//! `ProcessStatus`.
//!
//! # What is inside
//!
//! | module | holds |
//! |---|---|
//! | [`client`] | [`ConsulClient`], [`ConsulConfig`], retries of idempotent reads ([`RetryPolicy`]), blocking-query options |
//! | [`kv`], [`txn`], [`session`], [`catalog`] | the endpoints: KV (with check-and-set), transactions, sessions and locks, catalog, health and agent |
//! | [`watch`] | [`watch::Watcher`]: blocking-query loops that follow Consul's index rules, publishing snapshots |
//! | [`schema`] | every key hax reads or writes, and its typed value; [`schema::HaxKv`] |
//! | [`queue`] | the broadcast and event queues: epoch-numbered entries, publishers, consumers, trimming |
//! | [`writer`] | [`writer::KvWriter`]: coalesced, batched KV writes retried through outages until they commit |
//! | [`server`] | the axum server that Consul watch handlers POST to, and the periodic resync that makes a lost POST harmless |
//! | [`error`] | [`ConsulError`]: the outcomes callers treat differently (404, 409, 429, 5xx, no leader, refused, timeout) have their own variants |
//! | [`backoff`], [`bounded_json`], [`pyjson`] | capped exponential backoff with jitter; JSON decoding with bounded memory; JSON text as Python writes it |
//!
//! # Runtime
//!
//! Everything is async, on tokio. Watchers, the writer, queue trimming and
//! the server spawn tasks, so they need a running runtime (either flavour);
//! each stops on a [`CancellationToken`](tokio_util::sync::CancellationToken)
//! or when dropped. The crate keeps no global state: any number of clients,
//! to any number of agents, can live in one process.
//!
//! # Feature flags
//!
//! | feature | default | effect |
//! |---|---|---|
//! | `tls` | off | HTTPS towards the agent (`https://` addresses, `CONSUL_HTTP_SSL=true`), through rustls. Without it such an address is refused by [`ConsulClient::new`] and [`ConsulConfig::check`]. The local agent normally speaks plain HTTP. |
#![forbid(unsafe_code)]
#![warn(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

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
