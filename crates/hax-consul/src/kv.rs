//! The KV store endpoints and the key rules (normalisation, encoding).

use base64::Engine as _;
use http::StatusCode;
use percent_encoding::{utf8_percent_encode, AsciiSet, CONTROLS};
use serde::{Deserialize, Serialize};

use crate::client::{ConsulClient, Indexed, QueryOptions, Request};
use crate::error::{ConsulError, Result};

/// Consul refuses values larger than this (512 KiB).
pub const MAX_VALUE_SIZE: usize = 512 * 1024;

/// Characters escaped inside one path segment: everything that is not
/// unreserved or a harmless sub-delimiter, so that `?`, `#`, `%`, spaces and
/// non-ASCII keys reach Consul verbatim.
const SEGMENT: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'%')
    .add(b'+')
    .add(b'<')
    .add(b'>')
    .add(b'?')
    .add(b'[')
    .add(b'\\')
    .add(b']')
    .add(b'^')
    .add(b'`')
    .add(b'{')
    .add(b'|')
    .add(b'}')
    .add(b'/');

/// Normalises a key or prefix: strips leading slashes and collapses repeated
/// slashes, which Consul would otherwise answer with a redirect. A trailing
/// slash is kept (it is meaningful for folders and prefixes). `.` and `..`
/// segments are refused, since HTTP path handling would rewrite them.
pub fn normalize_key(key: &str) -> Result<String> {
    let invalid = |reason| ConsulError::InvalidKey {
        key: key.to_owned(),
        reason,
    };
    let trailing = key.ends_with('/');
    let mut out = String::with_capacity(key.len());
    for segment in key.split('/').filter(|s| !s.is_empty()) {
        if segment == "." || segment == ".." {
            return Err(invalid("`.` and `..` segments are not allowed"));
        }
        if !out.is_empty() {
            out.push('/');
        }
        out.push_str(segment);
    }
    if trailing && !out.is_empty() {
        out.push('/');
    }
    Ok(out)
}

/// A normalised key that must name one entry (not empty).
pub(crate) fn entry_key(key: &str) -> Result<String> {
    let k = normalize_key(key)?;
    if k.is_empty() {
        return Err(ConsulError::InvalidKey {
            key: key.to_owned(),
            reason: "empty key",
        });
    }
    Ok(k)
}

/// Percent-encodes a normalised key for use in a URL path.
pub(crate) fn encode_key(key: &str) -> String {
    key.split('/')
        .map(|s| utf8_percent_encode(s, SEGMENT).to_string())
        .collect::<Vec<_>>()
        .join("/")
}

/// Encodes one path segment that is not a key (service, node, session names).
pub(crate) fn encode_segment(segment: &str) -> Result<String> {
    if segment.is_empty() {
        return Err(ConsulError::InvalidKey {
            key: segment.to_owned(),
            reason: "empty path segment",
        });
    }
    Ok(utf8_percent_encode(segment, SEGMENT).to_string())
}

fn kv_path(key: &str) -> String {
    format!("/v1/kv/{}", encode_key(key))
}

pub(crate) fn check_value_size(key: &str, value: &[u8]) -> Result<()> {
    if value.len() > MAX_VALUE_SIZE {
        return Err(ConsulError::ValueTooLarge {
            key: key.to_owned(),
            len: value.len(),
            max: MAX_VALUE_SIZE,
        });
    }
    Ok(())
}

/// One KV entry as Consul returns it, with the value already decoded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KvPair {
    /// The key (as stored, without leading slash).
    pub key: String,
    /// The raw value; empty when Consul reports `null`.
    pub value: Vec<u8>,
    /// Opaque client flags.
    pub flags: u64,
    /// Index at which the entry was created.
    pub create_index: u64,
    /// Index of the last modification (the one to use with `cas`).
    pub modify_index: u64,
    /// Number of times the lock was acquired.
    pub lock_index: u64,
    /// Session holding the lock, if locked.
    pub session: Option<String>,
}

impl KvPair {
    /// The value as UTF-8 text.
    pub fn value_str(&self) -> Result<&str> {
        std::str::from_utf8(&self.value).map_err(|e| ConsulError::Decode {
            what: format!("value of {}", self.key),
            reason: e.to_string(),
        })
    }
}

/// The wire form of a KV entry (also the element of watch payloads).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "PascalCase")]
pub struct RawKvPair {
    /// Key.
    pub key: String,
    /// Base64 value or `null`.
    #[serde(default)]
    pub value: Option<String>,
    /// Flags.
    #[serde(default)]
    pub flags: u64,
    /// Create index.
    #[serde(default)]
    pub create_index: u64,
    /// Modify index.
    #[serde(default)]
    pub modify_index: u64,
    /// Lock index.
    #[serde(default)]
    pub lock_index: u64,
    /// Locking session.
    #[serde(default)]
    pub session: Option<String>,
}

/// A value that is not valid base64.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("value of key {key:?} is not valid base64: {reason}")]
pub struct Base64Error {
    /// Key of the entry.
    pub key: String,
    /// Decoder message.
    pub reason: String,
}

impl RawKvPair {
    /// Decodes the base64 value.
    pub fn decode(self) -> std::result::Result<KvPair, Base64Error> {
        let value = match &self.value {
            None => Vec::new(),
            Some(v) => base64::engine::general_purpose::STANDARD
                .decode(v.as_bytes())
                .map_err(|e| Base64Error {
                    key: self.key.clone(),
                    reason: e.to_string(),
                })?,
        };
        Ok(KvPair {
            key: self.key,
            value,
            flags: self.flags,
            create_index: self.create_index,
            modify_index: self.modify_index,
            lock_index: self.lock_index,
            session: self.session.filter(|s| !s.is_empty()),
        })
    }
}

pub(crate) fn decode_pairs(what: &str, raw: Vec<RawKvPair>) -> Result<Vec<KvPair>> {
    raw.into_iter()
        .map(|r| {
            r.decode().map_err(|e| ConsulError::Decode {
                what: what.to_owned(),
                reason: e.to_string(),
            })
        })
        .collect()
}

fn parse_bool(path: &str, body: &[u8]) -> Result<bool> {
    match std::str::from_utf8(body).map(str::trim) {
        Ok("true") => Ok(true),
        Ok("false") => Ok(false),
        _ => Err(ConsulError::Decode {
            what: path.to_owned(),
            reason: format!(
                "expected true or false, got {:?}",
                String::from_utf8_lossy(body)
            ),
        }),
    }
}

impl ConsulClient {
    /// Reads one key. A missing key is `Ok` with `None` and the index of the
    /// answer (Consul sends it with the 404), so it can start a blocking query.
    pub async fn kv_get(&self, key: &str) -> Result<Indexed<Option<KvPair>>> {
        self.kv_get_with(key, &QueryOptions::default()).await
    }

    /// [`ConsulClient::kv_get`] with query options (blocking query, consistency).
    pub async fn kv_get_with(
        &self,
        key: &str,
        opts: &QueryOptions,
    ) -> Result<Indexed<Option<KvPair>>> {
        let key = entry_key(key)?;
        let resp = self
            .call(
                Request::get(kv_path(&key))
                    .options(opts)
                    .accept(&[StatusCode::NOT_FOUND]),
            )
            .await?;
        let index = resp.require_index()?;
        if resp.status == StatusCode::NOT_FOUND {
            return Ok(Indexed { value: None, index });
        }
        let raw: Vec<RawKvPair> = resp.json()?;
        let mut pairs = decode_pairs(&resp.path, raw)?;
        // `GET /v1/kv/<key>` without `recurse` yields at most one entry.
        let value = if pairs.is_empty() {
            None
        } else {
            Some(pairs.swap_remove(0))
        };
        Ok(Indexed { value, index })
    }

    /// Lists every entry whose key starts with `prefix` (plain string prefix:
    /// `processes` also matches `processes-old/x`; end the prefix with `/` to
    /// mean a folder). Sorted by key, as Consul returns them.
    pub async fn kv_list(&self, prefix: &str) -> Result<Indexed<Vec<KvPair>>> {
        self.kv_list_with(prefix, &QueryOptions::default()).await
    }

    /// [`ConsulClient::kv_list`] with query options.
    pub async fn kv_list_with(
        &self,
        prefix: &str,
        opts: &QueryOptions,
    ) -> Result<Indexed<Vec<KvPair>>> {
        let prefix = normalize_key(prefix)?;
        let resp = self
            .call(
                Request::get(kv_path(&prefix))
                    .flag("recurse")
                    .options(opts)
                    .accept(&[StatusCode::NOT_FOUND]),
            )
            .await?;
        let index = resp.require_index()?;
        if resp.status == StatusCode::NOT_FOUND {
            return Ok(Indexed {
                value: Vec::new(),
                index,
            });
        }
        let raw: Vec<RawKvPair> = resp.json()?;
        Ok(Indexed {
            value: decode_pairs(&resp.path, raw)?,
            index,
        })
    }

    /// Lists the keys under `prefix`. With a `separator` (usually `/`), keys are
    /// folded at the first separator after the prefix, like a directory listing.
    pub async fn kv_keys(
        &self,
        prefix: &str,
        separator: Option<&str>,
    ) -> Result<Indexed<Vec<String>>> {
        let prefix = normalize_key(prefix)?;
        let mut req = Request::get(kv_path(&prefix))
            .flag("keys")
            .accept(&[StatusCode::NOT_FOUND]);
        if let Some(sep) = separator {
            req = req.query("separator", sep);
        }
        let resp = self.call(req).await?;
        let index = resp.require_index()?;
        if resp.status == StatusCode::NOT_FOUND {
            return Ok(Indexed {
                value: Vec::new(),
                index,
            });
        }
        Ok(Indexed {
            value: resp.json()?,
            index,
        })
    }

    async fn kv_put_request(&self, key: &str, value: &[u8], req: Request) -> Result<bool> {
        check_value_size(key, value)?;
        let resp = self.call(req.body(value.to_vec())).await?;
        parse_bool(&resp.path, &resp.body)
    }

    /// Writes a value unconditionally. Not retried on failure: the caller
    /// decides (use [`ConsulClient::kv_cas`] where a retry must be safe).
    pub async fn kv_put(&self, key: &str, value: impl AsRef<[u8]>) -> Result<()> {
        let key = entry_key(key)?;
        let ok = self
            .kv_put_request(&key, value.as_ref(), Request::put(kv_path(&key)))
            .await?;
        if !ok {
            return Err(ConsulError::Decode {
                what: kv_path(&key),
                reason: "plain PUT answered false".to_owned(),
            });
        }
        Ok(())
    }

    /// Check-and-set: writes only if the key's modify index is still `index`
    /// (`0` = only if the key does not exist). Returns whether it was written.
    pub async fn kv_cas(&self, key: &str, value: impl AsRef<[u8]>, index: u64) -> Result<bool> {
        let key = entry_key(key)?;
        self.kv_put_request(
            &key,
            value.as_ref(),
            Request::put(kv_path(&key)).query("cas", index.to_string()),
        )
        .await
    }

    /// Takes the lock on `key` for `session` and writes `value`. Returns whether
    /// the lock was obtained (false when another session holds it, or during
    /// the lock-delay after an invalidation).
    pub async fn kv_acquire(
        &self,
        key: &str,
        value: impl AsRef<[u8]>,
        session: &str,
    ) -> Result<bool> {
        let key = entry_key(key)?;
        self.kv_put_request(
            &key,
            value.as_ref(),
            Request::put(kv_path(&key)).query("acquire", session),
        )
        .await
    }

    /// Releases the lock `session` holds on `key`, writing `value`. Returns
    /// whether the lock was released (false if `session` did not hold it).
    pub async fn kv_release(
        &self,
        key: &str,
        value: impl AsRef<[u8]>,
        session: &str,
    ) -> Result<bool> {
        let key = entry_key(key)?;
        self.kv_put_request(
            &key,
            value.as_ref(),
            Request::put(kv_path(&key)).query("release", session),
        )
        .await
    }

    /// Deletes one key (deleting a missing key succeeds).
    pub async fn kv_delete(&self, key: &str) -> Result<()> {
        let key = entry_key(key)?;
        self.call(Request::delete(kv_path(&key))).await?;
        Ok(())
    }

    /// Deletes one key only if its modify index is still `index`.
    pub async fn kv_delete_cas(&self, key: &str, index: u64) -> Result<bool> {
        let key = entry_key(key)?;
        let resp = self
            .call(Request::delete(kv_path(&key)).query("cas", index.to_string()))
            .await?;
        parse_bool(&resp.path, &resp.body)
    }

    /// Deletes every key starting with `prefix`. An empty prefix is refused, so
    /// that a bug cannot wipe the whole store.
    pub async fn kv_delete_tree(&self, prefix: &str) -> Result<()> {
        let prefix = entry_key(prefix)?;
        self.call(Request::delete(kv_path(&prefix)).flag("recurse"))
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_normalised() {
        assert_eq!(normalize_key("/a//b/c").expect("ok"), "a/b/c");
        assert_eq!(normalize_key("a/b/").expect("ok"), "a/b/");
        assert_eq!(normalize_key("//").expect("ok"), "");
        assert_eq!(normalize_key("").expect("ok"), "");
        assert!(normalize_key("a/../b").is_err());
        assert!(normalize_key("./a").is_err());
        assert!(entry_key("/").is_err());
    }

    #[test]
    fn keys_are_percent_encoded_per_segment() {
        assert_eq!(encode_key("a b/c?d#e%f"), "a%20b/c%3Fd%23e%25f");
        assert_eq!(
            encode_key("m0conf/nodes/0x6e00000000000001:0x3"),
            "m0conf/nodes/0x6e00000000000001:0x3"
        );
        assert_eq!(encode_key("é"), "%C3%A9");
        assert_eq!(encode_segment("svc/x").expect("ok"), "svc%2Fx");
    }

    #[test]
    fn raw_pairs_decode() {
        let raw: RawKvPair = serde_json::from_str(
            r#"{"Key":"a","Value":"aGVsbG8=","Flags":3,"CreateIndex":1,"ModifyIndex":2,"LockIndex":0}"#,
        )
        .expect("json");
        let kv = raw.decode().expect("base64");
        assert_eq!(kv.value, b"hello");
        assert_eq!(kv.flags, 3);
        assert_eq!(kv.session, None);
        let raw: RawKvPair = serde_json::from_str(r#"{"Key":"a","Value":null}"#).expect("json");
        assert!(raw.decode().expect("null").value.is_empty());
        let raw: RawKvPair = serde_json::from_str(r#"{"Key":"k","Value":"!!"}"#).expect("json");
        let err = raw.decode().expect_err("bad base64");
        assert_eq!(err.key, "k");
    }
}
