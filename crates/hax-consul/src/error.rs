//! Errors of the Consul client.

use std::time::Duration;

use http::StatusCode;

/// One failed operation of a rejected transaction, as Consul reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxnOpError {
    /// Position of the failed operation in the submitted list (0-based).
    pub op_index: usize,
    /// Consul's explanation, e.g. `current modify index 12 != 11`.
    pub what: String,
}

impl std::fmt::Display for TxnOpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "op #{}: {}", self.op_index, self.what)
    }
}

/// Everything that can go wrong when talking to a Consul agent.
///
/// The HTTP outcomes that callers react to differently have their own variant:
/// 404, 409, 429, 5xx, "no cluster leader", connection refused and timeouts.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConsulError {
    /// The configuration cannot be used (bad address, unsupported scheme...).
    #[error("invalid Consul client configuration: {0}")]
    Config(String),

    /// A key or prefix that cannot be sent to Consul.
    #[error("invalid KV key {key:?}: {reason}")]
    InvalidKey {
        /// The key as given.
        key: String,
        /// Why it was rejected.
        reason: &'static str,
    },

    /// A value over Consul's per-value limit; refused before sending.
    #[error("value for {key:?} is {len} bytes, over Consul's limit of {max} bytes")]
    ValueTooLarge {
        /// Target key.
        key: String,
        /// Size of the value.
        len: usize,
        /// The limit.
        max: usize,
    },

    /// A transaction with more operations than Consul accepts; refused before sending.
    #[error("transaction has {ops} operations, Consul accepts at most {max}")]
    TxnTooLarge {
        /// Number of operations given.
        ops: usize,
        /// The limit.
        max: usize,
    },

    /// Consul rolled a transaction back (HTTP 409) because some operations failed.
    #[error("transaction rolled back: {}", fmt_txn_errors(.errors))]
    TxnFailed {
        /// The failed operations, in the order Consul listed them.
        errors: Vec<TxnOpError>,
    },

    /// HTTP 404 from an endpoint where a missing object is an error (e.g. renewing
    /// a session that has expired).
    #[error("not found: {path}")]
    NotFound {
        /// Request path.
        path: String,
    },

    /// HTTP 409 outside of transactions.
    #[error("conflict on {path}: {body}")]
    Conflict {
        /// Request path.
        path: String,
        /// Body of the answer.
        body: String,
    },

    /// HTTP 429: the agent is rate limiting this client.
    #[error("rate limited by Consul on {path}")]
    RateLimited {
        /// Request path.
        path: String,
    },

    /// The cluster has no leader; requests that need one fail until it elects one.
    #[error("Consul has no cluster leader ({path})")]
    NoLeader {
        /// Request path.
        path: String,
    },

    /// HTTP 5xx other than "no leader".
    #[error("Consul server error {status} on {path}: {body}")]
    Server {
        /// HTTP status.
        status: StatusCode,
        /// Request path.
        path: String,
        /// Body of the answer.
        body: String,
    },

    /// Any other unexpected status: 4xx (bad request, permission denied...) and
    /// 3xx (redirects are never followed; Consul redirects non-normalised keys).
    #[error("unexpected HTTP status {status} on {path}: {body}")]
    Status {
        /// HTTP status.
        status: StatusCode,
        /// Request path.
        path: String,
        /// Body of the answer (or the `Location` of a redirect).
        body: String,
    },

    /// Nothing listens at the agent's address.
    #[error("connection refused by Consul at {address}")]
    ConnectionRefused {
        /// The agent address.
        address: String,
        /// The transport error.
        #[source]
        source: reqwest::Error,
    },

    /// The request did not complete within its deadline.
    #[error("request to Consul {path} timed out after {after:?}")]
    Timeout {
        /// Request path.
        path: String,
        /// The deadline that was exceeded.
        after: Duration,
    },

    /// Other transport failures (connection reset, DNS, TLS...).
    #[error("HTTP transport error talking to Consul ({path}): {source}")]
    Transport {
        /// Request path.
        path: String,
        /// The transport error.
        #[source]
        source: reqwest::Error,
    },

    /// The answer does not have the expected shape.
    #[error("cannot decode Consul answer for {what}: {reason}")]
    Decode {
        /// What was being decoded (endpoint or key).
        what: String,
        /// Why it failed.
        reason: String,
    },

    /// A blocking-capable endpoint answered without `X-Consul-Index`.
    #[error("Consul answer for {path} has no valid X-Consul-Index header")]
    MissingIndex {
        /// Request path.
        path: String,
    },
}

fn fmt_txn_errors(errors: &[TxnOpError]) -> String {
    if errors.is_empty() {
        return "no error detail".to_owned();
    }
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

impl ConsulError {
    /// Whether repeating the same *idempotent* request may succeed: transport
    /// failures, timeouts, 429, 5xx and "no leader". Writes are never retried
    /// on this basis alone.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            ConsulError::ConnectionRefused { .. }
                | ConsulError::Timeout { .. }
                | ConsulError::Transport { .. }
                | ConsulError::RateLimited { .. }
                | ConsulError::NoLeader { .. }
                | ConsulError::Server { .. }
        )
    }

    /// Whether the agent itself could not be reached (down, restarting, hung).
    pub fn is_unreachable(&self) -> bool {
        matches!(
            self,
            ConsulError::ConnectionRefused { .. }
                | ConsulError::Timeout { .. }
                | ConsulError::Transport { .. }
        )
    }
}

/// Result alias of the client.
pub type Result<T, E = ConsulError> = std::result::Result<T, E>;
