//! The Consul side of hax: a typed HTTP client, the KV schema, the broadcast and
//! event queues, and the HTTP server that receives Consul watch handlers. It
//! knows nothing of Motr.
#![forbid(unsafe_code)]
