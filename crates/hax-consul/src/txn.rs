//! KV transactions (`PUT /v1/txn`): all operations apply, or none.

use base64::Engine as _;
use http::StatusCode;
use serde::{Deserialize, Serialize};

use crate::client::{ConsulClient, Request};
use crate::error::{ConsulError, Result, TxnOpError};
use crate::kv::{check_value_size, decode_pairs, entry_key, normalize_key, KvPair, RawKvPair};

/// Consul rejects transactions with more operations than this.
pub const MAX_TXN_OPS: usize = 64;

/// One KV operation of a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxnOp {
    /// Write unconditionally.
    Set {
        /// Key.
        key: String,
        /// Value.
        value: Vec<u8>,
    },
    /// Write if the modify index is still `index` (`0`: only if absent).
    Cas {
        /// Key.
        key: String,
        /// Value.
        value: Vec<u8>,
        /// Expected modify index.
        index: u64,
    },
    /// Acquire the lock for `session` and write.
    Lock {
        /// Key.
        key: String,
        /// Value.
        value: Vec<u8>,
        /// Session.
        session: String,
    },
    /// Release the lock held by `session` and write.
    Unlock {
        /// Key.
        key: String,
        /// Value.
        value: Vec<u8>,
        /// Session.
        session: String,
    },
    /// Read a key (fails the transaction if missing).
    Get {
        /// Key.
        key: String,
    },
    /// Read every key under a prefix.
    GetTree {
        /// Prefix.
        prefix: String,
    },
    /// Fail unless the key's modify index is `index`.
    CheckIndex {
        /// Key.
        key: String,
        /// Expected modify index.
        index: u64,
    },
    /// Fail unless `session` holds the key's lock.
    CheckSession {
        /// Key.
        key: String,
        /// Session.
        session: String,
    },
    /// Fail if the key exists.
    CheckNotExists {
        /// Key.
        key: String,
    },
    /// Delete a key.
    Delete {
        /// Key.
        key: String,
    },
    /// Delete every key under a non-empty prefix.
    DeleteTree {
        /// Prefix.
        prefix: String,
    },
    /// Delete if the modify index is still `index`.
    DeleteCas {
        /// Key.
        key: String,
        /// Expected modify index.
        index: u64,
    },
}

impl TxnOp {
    /// `Set` of a value.
    pub fn set(key: impl Into<String>, value: impl Into<Vec<u8>>) -> Self {
        TxnOp::Set {
            key: key.into(),
            value: value.into(),
        }
    }

    /// `Cas` of a value.
    pub fn cas(key: impl Into<String>, value: impl Into<Vec<u8>>, index: u64) -> Self {
        TxnOp::Cas {
            key: key.into(),
            value: value.into(),
            index,
        }
    }

    /// `Delete` of a key.
    pub fn delete(key: impl Into<String>) -> Self {
        TxnOp::Delete { key: key.into() }
    }

    /// `Get` of a key.
    pub fn get(key: impl Into<String>) -> Self {
        TxnOp::Get { key: key.into() }
    }

    /// `CheckIndex` of a key.
    pub fn check_index(key: impl Into<String>, index: u64) -> Self {
        TxnOp::CheckIndex {
            key: key.into(),
            index,
        }
    }

    /// `CheckNotExists` of a key.
    pub fn check_not_exists(key: impl Into<String>) -> Self {
        TxnOp::CheckNotExists { key: key.into() }
    }

    fn to_wire(&self) -> Result<WireOp> {
        let b64 = |v: &[u8]| base64::engine::general_purpose::STANDARD.encode(v);
        let mut kv = WireKv::default();
        let (verb, key, is_tree) = match self {
            TxnOp::Set { key, value } => {
                kv.value = Some(b64(value));
                ("set", key, false)
            }
            TxnOp::Cas { key, value, index } => {
                kv.value = Some(b64(value));
                kv.index = Some(*index);
                ("cas", key, false)
            }
            TxnOp::Lock {
                key,
                value,
                session,
            } => {
                kv.value = Some(b64(value));
                kv.session = Some(session.clone());
                ("lock", key, false)
            }
            TxnOp::Unlock {
                key,
                value,
                session,
            } => {
                kv.value = Some(b64(value));
                kv.session = Some(session.clone());
                ("unlock", key, false)
            }
            TxnOp::Get { key } => ("get", key, false),
            TxnOp::GetTree { prefix } => ("get-tree", prefix, true),
            TxnOp::CheckIndex { key, index } => {
                kv.index = Some(*index);
                ("check-index", key, false)
            }
            TxnOp::CheckSession { key, session } => {
                kv.session = Some(session.clone());
                ("check-session", key, false)
            }
            TxnOp::CheckNotExists { key } => ("check-not-exists", key, false),
            TxnOp::Delete { key } => ("delete", key, false),
            TxnOp::DeleteTree { prefix } => ("delete-tree", prefix, false),
            TxnOp::DeleteCas { key, index } => {
                kv.index = Some(*index);
                ("delete-cas", key, false)
            }
        };
        kv.key = if is_tree {
            normalize_key(key)?
        } else {
            entry_key(key)?
        };
        if let TxnOp::Set { value, .. }
        | TxnOp::Cas { value, .. }
        | TxnOp::Lock { value, .. }
        | TxnOp::Unlock { value, .. } = self
        {
            check_value_size(&kv.key, value)?;
        }
        kv.verb = verb;
        Ok(WireOp { kv })
    }
}

#[derive(Serialize)]
struct WireOp {
    #[serde(rename = "KV")]
    kv: WireKv,
}

#[derive(Serialize, Default)]
#[serde(rename_all = "PascalCase")]
struct WireKv {
    verb: &'static str,
    key: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    value: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    index: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    session: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct WireAnswer {
    #[serde(default)]
    results: Option<Vec<WireResult>>,
    #[serde(default)]
    errors: Option<Vec<WireError>>,
}

#[derive(Deserialize)]
struct WireResult {
    #[serde(rename = "KV")]
    kv: Option<RawKvPair>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct WireError {
    op_index: usize,
    what: String,
}

/// The outcome of a committed transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxnResponse {
    /// One entry per operation that returns one: reads return the value; writes
    /// return the entry's metadata (new modify index) without its value.
    pub results: Vec<KvPair>,
    /// Raft index of the commit (the newest modify index of the results; 0
    /// when no operation returned an entry).
    pub index: u64,
}

impl ConsulClient {
    /// Runs the operations atomically. More than [`MAX_TXN_OPS`] operations (or
    /// none) is refused before sending. A rollback (HTTP 409) becomes
    /// [`ConsulError::TxnFailed`] listing each failed operation's index and
    /// reason. Never retried here: a transaction guarded by `cas` /
    /// `check-index` can be retried safely by the caller after re-reading.
    pub async fn txn(&self, ops: &[TxnOp]) -> Result<TxnResponse> {
        if ops.len() > MAX_TXN_OPS {
            return Err(ConsulError::TxnTooLarge {
                ops: ops.len(),
                max: MAX_TXN_OPS,
            });
        }
        if ops.is_empty() {
            return Ok(TxnResponse {
                results: Vec::new(),
                index: 0,
            });
        }
        let wire = ops.iter().map(TxnOp::to_wire).collect::<Result<Vec<_>>>()?;
        let resp = self
            .call(
                Request::put("/v1/txn".to_owned())
                    .json(&wire)?
                    .accept(&[StatusCode::CONFLICT]),
            )
            .await?;
        let answer: WireAnswer = resp.json()?;
        if resp.status == StatusCode::CONFLICT {
            let errors = answer
                .errors
                .unwrap_or_default()
                .into_iter()
                .map(|e| TxnOpError {
                    op_index: e.op_index,
                    what: e.what,
                })
                .collect();
            return Err(ConsulError::TxnFailed { errors });
        }
        let raw: Vec<RawKvPair> = answer
            .results
            .unwrap_or_default()
            .into_iter()
            .filter_map(|r| r.kv)
            .collect();
        let results = decode_pairs(&resp.path, raw)?;
        // The txn endpoint sends no X-Consul-Index; the commit index is the
        // newest modify index among the results.
        let index = resp
            .index
            .or_else(|| results.iter().map(|r| r.modify_index).max())
            .unwrap_or(0);
        Ok(TxnResponse { results, index })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_form() {
        let op = TxnOp::cas("/epoch", "2", 7).to_wire().expect("valid");
        let json = serde_json::to_string(&op).expect("json");
        assert_eq!(
            json,
            r#"{"KV":{"Verb":"cas","Key":"epoch","Value":"Mg==","Index":7}}"#
        );
        let json =
            serde_json::to_string(&TxnOp::delete("a//b").to_wire().expect("valid")).expect("json");
        assert_eq!(json, r#"{"KV":{"Verb":"delete","Key":"a/b"}}"#);
        assert!(TxnOp::delete("/").to_wire().is_err());
    }
}
