//! The KV schema of hax: every key hax reads or writes, built here and
//! nowhere else, with typed values.
//!
//! The layout is the one of the original hax and of hare's tools, which read
//! and write the same keys, so the JSON values are written byte-compatible
//! with Python's `json.dumps` (see [`crate::pyjson`]).
//!
//! | key | value |
//! |---|---|
//! | `leader` | RC leader node name (or `elect<N>`), locked by a session |
//! | `consul/node/<hostname>` | Consul node name of a host |
//! | `m0conf/...` | configuration tree ([`ConfKey`]) |
//! | `m0conf/pools/<fid>` | pool name ([`PoolRecord`]) |
//! | `m0_client_types` | JSON list of client service types |
//! | `ssl/hax` | [`SslConfig`] |
//! | `processes/<fid>` | [`ProcessStatus`] (cluster-wide view) |
//! | `<node>/processes/<fid>` | [`ProcessStatus`] (a node's copy for remote processes) |
//! | `<node>/process_restarts/<fid>` | restart count, a JSON string such as `"2"` |
//! | `<node>/keepalive/<fid>` | [`KeepaliveStatus`] of a process linked to that node's hax |
//! | `epoch`, `bq/<n>`, `bq-delivered/<node>` | broadcast queue ([`QueueKind::Broadcast`]) |
//! | `eq-epoch`, `eq/<n>`, `eq-delivered/<consumer>` | event queue ([`QueueKind::Event`]) |
//! | `stats/filesystem` | [`FsStatsRecord`] |
//! | `ioservices/<ios>/pvers/<pver>/users/<uid>` | [`ByteCount`] |
//! | `bytecount/<healthy\|degraded\|critical\|damaged>` | JSON integer |
//! | `events/subscription/<resource>` | JSON list of interfaces |
//! | `failvec` | JSON object fid → state (read only) |
//! | `config_path` | ConfStore URL (read only) |
//! | `<machine id>` / `<node name>` | node name / machine id (read only) |
//! | `<base fid>` | JSON string of the full dynamic fid (read only) |
//!
//! Fids appear in keys and values as text (`0x7200000000000001:0x3`); this
//! crate keeps them as [`FidText`] and attaches no Motr meaning to them.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::client::ConsulClient;
use crate::error::ConsulError;
use crate::kv::KvPair;
use crate::pyjson;

/// Errors of schema access: bad keys, malformed or unknown values (always
/// naming the key), and Consul errors.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SchemaError {
    /// A key that does not fit the schema.
    #[error("KV key {key:?} does not fit the schema: {reason}")]
    BadKey {
        /// The key.
        key: String,
        /// What is wrong.
        reason: String,
    },
    /// A name that cannot be a key segment (empty, contains `/`...).
    #[error("{what} {segment:?} cannot be used in a KV key: {reason}")]
    BadSegment {
        /// What the segment names (node name, hostname...).
        what: &'static str,
        /// The segment.
        segment: String,
        /// Why.
        reason: &'static str,
    },
    /// Text that is not a fid.
    #[error("{text:?} is not a fid (expected 0x<container>:0x<key>)")]
    BadFid {
        /// The text.
        text: String,
    },
    /// A value that cannot be decoded.
    #[error("value of KV key {key:?} is malformed: {reason}")]
    BadValue {
        /// The key.
        key: String,
        /// Why.
        reason: String,
    },
    /// A write kept losing a check-and-set race.
    #[error("KV key {key:?} kept changing during a read-modify-write")]
    Contended {
        /// The key.
        key: String,
    },
    /// Consul failed.
    #[error(transparent)]
    Consul(#[from] ConsulError),
}

/// Result alias of the schema.
pub type Result<T, E = SchemaError> = std::result::Result<T, E>;

// ---------------------------------------------------------------------------
// Fids as text

/// A fid in its text form `0x<container>:0x<key>` (lowercase hex, no padding).
/// Parsing accepts any `A:B` of two base-16 numbers, with or without `0x`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FidText {
    container: u64,
    key: u64,
}

impl FidText {
    /// A fid from its two halves.
    pub const fn new(container: u64, key: u64) -> Self {
        FidText { container, key }
    }

    /// The container (type and dynamic part).
    pub const fn container(&self) -> u64 {
        self.container
    }

    /// The key.
    pub const fn key(&self) -> u64 {
        self.key
    }

    /// Parses the text form.
    pub fn parse(text: &str) -> Result<Self> {
        let bad = || SchemaError::BadFid {
            text: text.to_owned(),
        };
        let (a, b) = text.split_once(':').ok_or_else(bad)?;
        let half = |s: &str| {
            let s = s.trim();
            let digits = s
                .strip_prefix("0x")
                .or_else(|| s.strip_prefix("0X"))
                .unwrap_or(s);
            if digits.is_empty() || !digits.bytes().all(|c| c.is_ascii_hexdigit()) {
                return None;
            }
            u64::from_str_radix(digits, 16).ok()
        };
        Ok(FidText {
            container: half(a).ok_or_else(bad)?,
            key: half(b).ok_or_else(bad)?,
        })
    }
}

impl fmt::Display for FidText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}:{:#x}", self.container, self.key)
    }
}

impl FromStr for FidText {
    type Err = SchemaError;

    fn from_str(s: &str) -> Result<Self> {
        FidText::parse(s)
    }
}

impl Serialize for FidText {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for FidText {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        FidText::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// Checks a free-form name used as one key segment.
fn segment<'a>(what: &'static str, s: &'a str) -> Result<&'a str> {
    let bad = |reason| SchemaError::BadSegment {
        what,
        segment: s.to_owned(),
        reason,
    };
    if s.is_empty() {
        return Err(bad("empty"));
    }
    if s.contains('/') {
        return Err(bad("contains '/'"));
    }
    if s == "." || s == ".." {
        return Err(bad("is a dot segment"));
    }
    Ok(s)
}

// ---------------------------------------------------------------------------
// Key builders (the only place key strings are formatted)

/// Key builders. Names given as `&str` are validated as single segments.
pub mod keys {
    use super::{segment, FidText, Result};

    /// `leader`
    pub const LEADER: &str = "leader";
    /// `m0conf/` (the configuration tree)
    pub const CONF_PREFIX: &str = "m0conf/";
    /// `m0conf/nodes/`
    pub const CONF_NODES_PREFIX: &str = "m0conf/nodes/";
    /// `m0conf/sites/`
    pub const CONF_SITES_PREFIX: &str = "m0conf/sites/";
    /// `m0conf/profiles/`
    pub const CONF_PROFILES_PREFIX: &str = "m0conf/profiles/";
    /// `m0_client_types`
    pub const M0_CLIENT_TYPES: &str = "m0_client_types";
    /// `ssl/hax`
    pub const SSL_HAX: &str = "ssl/hax";
    /// `processes/`
    pub const PROCESSES_PREFIX: &str = "processes/";
    /// `stats/filesystem`
    pub const FS_STATS: &str = "stats/filesystem";
    /// `ioservices/`
    pub const IOSERVICES_PREFIX: &str = "ioservices/";
    /// `bytecount/`
    pub const BYTECOUNT_PREFIX: &str = "bytecount/";
    /// `failvec`
    pub const FAILVEC: &str = "failvec";
    /// `config_path`
    pub const CONFIG_PATH: &str = "config_path";
    /// `m0conf/pools/` (pool fid → pool name, written by cfgen)
    pub const CONF_POOLS_PREFIX: &str = "m0conf/pools/";

    /// `m0conf/pools/<fid>`
    pub fn conf_pool(fid: FidText) -> String {
        format!("{CONF_POOLS_PREFIX}{fid}")
    }

    /// The top-level `<base fid>` keys (`0x...`), whose values are the full
    /// fids of processes and services with a dynamic key part.
    pub const DYNAMIC_FIDS_PREFIX: &str = "0x";
    /// `consul/node/` (host name → Consul node name)
    pub const CONSUL_NODES_PREFIX: &str = "consul/node/";

    /// `consul/node/<hostname>`
    pub fn consul_node(hostname: &str) -> Result<String> {
        Ok(format!(
            "{CONSUL_NODES_PREFIX}{}",
            segment("hostname", hostname)?
        ))
    }

    /// `processes/<fid>`
    pub fn process(fid: FidText) -> String {
        format!("{PROCESSES_PREFIX}{fid}")
    }

    /// `<node>/processes/<fid>`
    pub fn node_process(node: &str, fid: FidText) -> Result<String> {
        Ok(format!("{}/processes/{fid}", segment("node name", node)?))
    }

    /// `<node>/processes/`
    pub fn node_processes_prefix(node: &str) -> Result<String> {
        Ok(format!("{}/processes/", segment("node name", node)?))
    }

    /// `<node>/process_restarts/<fid>`
    pub fn process_restarts(node: &str, fid: FidText) -> Result<String> {
        Ok(format!(
            "{}/process_restarts/{fid}",
            segment("node name", node)?
        ))
    }

    /// `<node>/process_restarts/`
    pub fn process_restarts_prefix(node: &str) -> Result<String> {
        Ok(format!("{}/process_restarts/", segment("node name", node)?))
    }

    /// `<node>/keepalive/<fid>`
    pub fn keepalive(node: &str, fid: FidText) -> Result<String> {
        Ok(format!("{}/keepalive/{fid}", segment("node name", node)?))
    }

    /// `<node>/keepalive/`
    pub fn keepalive_prefix(node: &str) -> Result<String> {
        Ok(format!("{}/keepalive/", segment("node name", node)?))
    }

    /// `m0conf/profiles/<fid>`
    pub fn profile(fid: FidText) -> String {
        format!("{CONF_PROFILES_PREFIX}{fid}")
    }

    /// `m0conf/nodes/<node name>/processes/`: the by-name branch of a node.
    pub fn conf_node_processes_by_name(node: &str) -> Result<String> {
        Ok(format!(
            "{CONF_NODES_PREFIX}{}/processes/",
            segment("node name", node)?
        ))
    }

    /// `ioservices/<ios>/pvers/<pver>/users/<uid>`
    pub fn ioservice_user(ios: FidText, pver: FidText, user: u64) -> String {
        format!("{IOSERVICES_PREFIX}{ios}/pvers/{pver}/users/{user}")
    }

    /// `events/subscription/<resource>`
    pub fn event_subscription(resource: &str) -> Result<String> {
        Ok(format!(
            "events/subscription/{}",
            segment("resource type", resource)?
        ))
    }

    /// Top-level `<name>` keys (machine id ↔ node name mappings).
    pub fn top_level(name: &str) -> Result<String> {
        Ok(segment("name", name)?.to_owned())
    }

    /// Top-level `<base fid>` key holding the full dynamic fid.
    pub fn dynamic_fid(base: FidText) -> String {
        base.to_string()
    }
}

// ---------------------------------------------------------------------------
// Value codecs

fn decode<T: DeserializeOwned>(key: &str, bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| SchemaError::BadValue {
        key: key.to_owned(),
        reason: e.to_string(),
    })
}

fn encode<T: Serialize + ?Sized>(key: &str, value: &T) -> Result<String> {
    pyjson::to_string(value).map_err(|e| SchemaError::BadValue {
        key: key.to_owned(),
        reason: format!("cannot encode: {e}"),
    })
}

fn text<'a>(key: &str, bytes: &'a [u8]) -> Result<&'a str> {
    std::str::from_utf8(bytes).map_err(|e| SchemaError::BadValue {
        key: key.to_owned(),
        reason: format!("not UTF-8: {e}"),
    })
}

/// Decodes a decimal counter stored as plain text (`epoch`, offsets).
pub fn decode_decimal(key: &str, bytes: &[u8]) -> Result<u64> {
    let t = text(key, bytes)?.trim();
    // Hare's tools sometimes write the JSON string form.
    let t = t
        .strip_prefix('"')
        .and_then(|s| s.strip_suffix('"'))
        .unwrap_or(t);
    t.parse().map_err(|_| SchemaError::BadValue {
        key: key.to_owned(),
        reason: format!("expected a decimal number, got {t:?}"),
    })
}

// ---------------------------------------------------------------------------
// Value types

/// Process life-cycle event names (`M0_CONF_HA_PROCESS_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ProcessState {
    /// Starting.
    #[serde(rename = "M0_CONF_HA_PROCESS_STARTING")]
    Starting,
    /// Started.
    #[serde(rename = "M0_CONF_HA_PROCESS_STARTED")]
    Started,
    /// Stopping.
    #[serde(rename = "M0_CONF_HA_PROCESS_STOPPING")]
    Stopping,
    /// Stopped.
    #[serde(rename = "M0_CONF_HA_PROCESS_STOPPED")]
    Stopped,
    /// DTM recovery done.
    #[serde(rename = "M0_CONF_HA_PROCESS_DTM_RECOVERED")]
    DtmRecovered,
}

impl ProcessState {
    /// Every state, for tables and tests.
    pub const ALL: [ProcessState; 5] = [
        ProcessState::Starting,
        ProcessState::Started,
        ProcessState::Stopping,
        ProcessState::Stopped,
        ProcessState::DtmRecovered,
    ];

    /// The name as written in Consul (`M0_CONF_HA_PROCESS_STARTED`).
    pub const fn as_str(self) -> &'static str {
        match self {
            ProcessState::Starting => "M0_CONF_HA_PROCESS_STARTING",
            ProcessState::Started => "M0_CONF_HA_PROCESS_STARTED",
            ProcessState::Stopping => "M0_CONF_HA_PROCESS_STOPPING",
            ProcessState::Stopped => "M0_CONF_HA_PROCESS_STOPPED",
            ProcessState::DtmRecovered => "M0_CONF_HA_PROCESS_DTM_RECOVERED",
        }
    }

    /// The name without its `M0_CONF_HA_PROCESS_` prefix (`STARTED`).
    pub fn short_name(self) -> &'static str {
        let name = self.as_str();
        name.strip_prefix("M0_CONF_HA_PROCESS_").unwrap_or(name)
    }
}

/// Process types (`M0_CONF_HA_PROCESS_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ProcessType {
    /// Other.
    #[serde(rename = "M0_CONF_HA_PROCESS_OTHER")]
    Other,
    /// Kernel client.
    #[serde(rename = "M0_CONF_HA_PROCESS_KERNEL")]
    Kernel,
    /// m0mkfs.
    #[serde(rename = "M0_CONF_HA_PROCESS_M0MKFS")]
    M0mkfs,
    /// m0d.
    #[serde(rename = "M0_CONF_HA_PROCESS_M0D")]
    M0d,
    /// hax itself.
    #[serde(rename = "M0_CONF_HA_PROCESS_HA")]
    Ha,
}

/// Value of `processes/<fid>` and `<node>/processes/<fid>`:
/// `{"state": "M0_CONF_HA_PROCESS_STARTED", "type": "M0_CONF_HA_PROCESS_M0D"}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessStatus {
    /// Last event.
    pub state: ProcessState,
    /// Process type.
    #[serde(rename = "type")]
    pub kind: ProcessType,
}

/// Value of `<node>/keepalive/<fid>`: what the node's hax last learned by
/// probing the process with keepalive requests.
/// `{"counter": 12, "replied_at": "2024-05-01T10:00:00.123456Z", "responding": true, "missed": 0}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeepaliveStatus {
    /// The process's own counter from its last reply (it counts the
    /// keepalive replies it made); 0 before any reply.
    pub counter: u64,
    /// When the last reply arrived, RFC 3339 in UTC; empty before any reply.
    pub replied_at: String,
    /// False once the process left several requests in a row unanswered.
    pub responding: bool,
    /// Requests in a row left unanswered (0 after a reply).
    pub missed: u32,
}

/// The `leader` key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leader {
    /// What the value says.
    pub value: LeaderValue,
    /// Session holding the lock, if any.
    pub session: Option<String>,
    /// Modify index (for cas).
    pub modify_index: u64,
}

/// Value of the `leader` key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaderValue {
    /// No value (empty).
    Empty,
    /// `elect<N>`: a placeholder written to trigger a new election.
    ElectionPlaceholder(String),
    /// The node name of the RC leader.
    Node(String),
}

impl LeaderValue {
    fn parse(key: &str, bytes: &[u8]) -> Result<Self> {
        let t = text(key, bytes)?;
        if t.is_empty() {
            return Ok(LeaderValue::Empty);
        }
        let is_placeholder = t
            .strip_prefix("elect")
            .is_some_and(|d| !d.is_empty() && d.bytes().all(|c| c.is_ascii_digit()));
        Ok(if is_placeholder {
            LeaderValue::ElectionPlaceholder(t.to_owned())
        } else {
            LeaderValue::Node(t.to_owned())
        })
    }

    /// The leader's node name, if the value names one.
    pub fn node(&self) -> Option<&str> {
        match self {
            LeaderValue::Node(n) => Some(n),
            _ => None,
        }
    }
}

/// Filesystem statistics fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FsStats {
    /// Free segments.
    pub fs_free_seg: u64,
    /// Total segments.
    pub fs_total_seg: u64,
    /// Free disk bytes.
    pub fs_free_disk: u64,
    /// Available disk bytes.
    pub fs_avail_disk: u64,
    /// Total disk bytes.
    pub fs_total_disk: u64,
    /// Services asked.
    pub fs_svc_total: u32,
    /// Services that replied.
    pub fs_svc_replied: u32,
}

/// Value of `stats/filesystem`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FsStatsRecord {
    /// The statistics.
    pub stats: FsStats,
    /// Seconds since the epoch (local clock).
    pub timestamp: f64,
    /// ISO-8601 local time without zone.
    pub date: String,
}

/// Value of `ioservices/<ios>/pvers/<pver>/users/<uid>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ByteCount {
    /// Bytes.
    pub bc: u64,
    /// Objects.
    pub object_cnt: u64,
}

/// Pool-version health classes of the `bytecount/<state>` keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PverHealth {
    /// `bytecount/healthy`
    Healthy,
    /// `bytecount/degraded`
    Degraded,
    /// `bytecount/critical`
    Critical,
    /// `bytecount/damaged`
    Damaged,
}

impl PverHealth {
    /// All classes.
    pub const ALL: [PverHealth; 4] = [
        PverHealth::Healthy,
        PverHealth::Degraded,
        PverHealth::Critical,
        PverHealth::Damaged,
    ];

    /// The key of this class.
    pub fn key(self) -> String {
        let name = match self {
            PverHealth::Healthy => "healthy",
            PverHealth::Degraded => "degraded",
            PverHealth::Critical => "critical",
            PverHealth::Damaged => "damaged",
        };
        format!("{}{name}", keys::BYTECOUNT_PREFIX)
    }
}

/// A profile as `m0conf/profiles/<fid>` holds it: cfgen lists the pools of
/// a profile by name, other writers by fid, so they are kept as text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProfileRecord {
    /// The profile.
    pub fid: FidText,
    /// Its name.
    pub name: String,
    /// Its pools as written (names or fids), without cfgen's `null`s (the
    /// pools it does not name).
    pub pools: Vec<String>,
}

/// A pool as `m0conf/pools/<fid>` holds it: the value is the pool's name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolRecord {
    /// The pool.
    pub fid: FidText,
    /// Its name.
    pub name: String,
}

/// Value of `ssl/hax`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SslConfig {
    /// `http` or `https`.
    pub http_protocol: String,
    /// Certificate chain file.
    #[serde(default)]
    pub cert_path: String,
    /// Private key file.
    #[serde(default)]
    pub key_path: String,
}

// ---------------------------------------------------------------------------
// Queues

/// The two epoch-ordered queues.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QueueKind {
    /// Broadcast queue: `epoch`, `bq/<n>`, consumed by every hax.
    Broadcast,
    /// Event queue: `eq-epoch`, `eq/<n>`, consumed by the RC.
    Event,
}

impl QueueKind {
    /// Entry prefix with trailing slash (`bq/`, `eq/`).
    pub fn prefix(self) -> &'static str {
        match self {
            QueueKind::Broadcast => "bq/",
            QueueKind::Event => "eq/",
        }
    }

    /// Key of the epoch counter (`epoch`, `eq-epoch`).
    pub fn epoch_key(self) -> &'static str {
        match self {
            QueueKind::Broadcast => "epoch",
            QueueKind::Event => "eq-epoch",
        }
    }

    /// Key of entry `n`.
    pub fn entry_key(self, n: u64) -> String {
        format!("{}{n}", self.prefix())
    }

    /// The epoch of an entry key (`bq/17` → 17), if it is one.
    pub fn parse_entry_key(self, key: &str) -> Option<u64> {
        let digits = key.strip_prefix(self.prefix())?;
        if digits.is_empty() || !digits.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        digits.parse().ok()
    }

    /// Key of a consumer's delivered offset (`bq-delivered/<consumer>`).
    pub fn offset_key(self, consumer: &str) -> Result<String> {
        Ok(format!(
            "{}{}",
            self.offsets_prefix(),
            segment("consumer name", consumer)?
        ))
    }

    /// Prefix of the consumers' offsets (`bq-delivered/`, `eq-delivered/`).
    pub fn offsets_prefix(self) -> &'static str {
        match self {
            QueueKind::Broadcast => "bq-delivered/",
            QueueKind::Event => "eq-delivered/",
        }
    }
}

/// A queue entry: `{"timestamp": "...", "message_type": "...", "payload": {...}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueueMessage {
    /// Free-form time text (consumers ignore it).
    pub timestamp: String,
    /// Message type.
    pub message_type: String,
    /// Type-specific payload.
    pub payload: serde_json::Value,
}

impl QueueMessage {
    /// A message of `message_type`, time-stamped by the caller's text.
    pub fn new(
        timestamp: impl Into<String>,
        message_type: impl Into<String>,
        payload: serde_json::Value,
    ) -> Self {
        QueueMessage {
            timestamp: timestamp.into(),
            message_type: message_type.into(),
            payload,
        }
    }

    /// Encodes the value stored under `key`.
    pub fn encode(&self, key: &str) -> Result<String> {
        encode(key, self)
    }

    /// Decodes the value stored under `key`.
    pub fn decode(key: &str, bytes: &[u8]) -> Result<Self> {
        decode(key, bytes)
    }

    /// Decodes the payload into the typed broadcast message of its type.
    pub fn broadcast(&self, key: &str) -> Result<BroadcastMessage> {
        fn payload<T: DeserializeOwned>(m: &QueueMessage, key: &str) -> Result<T> {
            serde_json::from_value(m.payload.clone()).map_err(|e| SchemaError::BadValue {
                key: key.to_owned(),
                reason: format!("{} payload: {e}", m.message_type),
            })
        }
        Ok(match self.message_type.as_str() {
            "PROCESS-STATE-UPDATE" => BroadcastMessage::ProcessStateUpdate(payload(self, key)?),
            "M0_HA_MSG_NVEC" => BroadcastMessage::DeviceState(payload(self, key)?),
            "SNS_OP" => BroadcastMessage::SnsOp(payload(self, key)?),
            "STOB_IOQ_ERROR" => BroadcastMessage::StobIoqError(payload(self, key)?),
            _ => BroadcastMessage::Other(self.clone()),
        })
    }
}

/// Payload of `PROCESS-STATE-UPDATE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessStateUpdate {
    /// Process fid.
    pub fid: FidText,
    /// Event.
    pub state: ProcessState,
    /// Type.
    #[serde(rename = "type")]
    pub kind: ProcessType,
}

/// Payload of `M0_HA_MSG_NVEC` (a device state change by node and path).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceStateUpdate {
    /// Node name.
    pub node: String,
    /// Device path, e.g. `/dev/sdc`.
    pub device: String,
    /// `online|failed|offline|repair|repaired|rebalance` ([`DeviceState`]);
    /// kept as text so that an entry with another word is skipped alone.
    pub state: String,
}

impl DeviceStateUpdate {
    /// The state, if it is one of the words hare's `hctl drive-state`
    /// writes.
    pub fn device_state(&self) -> std::result::Result<DeviceState, String> {
        self.state.parse()
    }
}

/// The device states of an `M0_HA_MSG_NVEC` entry (hare's
/// `hctl drive-state`): not the words of the configuration tree
/// ([`ObjState`]), whose `repairing` and `rebalancing` are `repair` and
/// `rebalance` here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeviceState {
    /// `online`
    Online,
    /// `failed`
    Failed,
    /// `offline`
    Offline,
    /// `repair`
    Repair,
    /// `repaired`
    Repaired,
    /// `rebalance`
    Rebalance,
}

impl DeviceState {
    /// Every state, for tables and tests.
    pub const ALL: [DeviceState; 6] = [
        DeviceState::Online,
        DeviceState::Failed,
        DeviceState::Offline,
        DeviceState::Repair,
        DeviceState::Repaired,
        DeviceState::Rebalance,
    ];

    /// The word as written in the queue entry.
    pub const fn as_str(self) -> &'static str {
        match self {
            DeviceState::Online => "online",
            DeviceState::Failed => "failed",
            DeviceState::Offline => "offline",
            DeviceState::Repair => "repair",
            DeviceState::Repaired => "repaired",
            DeviceState::Rebalance => "rebalance",
        }
    }
}

impl std::fmt::Display for DeviceState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for DeviceState {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        DeviceState::ALL
            .into_iter()
            .find(|d| d.as_str() == s)
            .ok_or_else(|| format!("{s:?} is not a device state"))
    }
}

/// Payload of `SNS_OP`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnsOp {
    /// Operation name (`repair-start`, ...).
    pub op_name: String,
    /// Pool fid.
    pub fid: FidText,
}

/// The stob id of a STOB I/O error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StobId {
    /// Domain fid.
    pub domain_fid: FidText,
    /// Stob fid.
    pub fid: FidText,
}

/// Payload of `STOB_IOQ_ERROR` (and of the EQ `stob-ioq` event).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StobIoqError {
    /// Message fid.
    pub fid: FidText,
    /// The failing sdev (`0:0` when unknown).
    pub conf_sdev: FidText,
    /// The stob.
    pub stob_id: StobId,
    /// File descriptor.
    pub fd: i64,
    /// Opcode.
    pub opcode: i64,
    /// Return code.
    pub rc: i64,
    /// Offset.
    pub offset: u64,
    /// Size.
    pub size: u64,
    /// Block shift.
    pub bshift: u32,
}

/// A decoded broadcast-queue message.
#[derive(Debug, Clone, PartialEq)]
pub enum BroadcastMessage {
    /// `PROCESS-STATE-UPDATE`.
    ProcessStateUpdate(ProcessStateUpdate),
    /// `M0_HA_MSG_NVEC`.
    DeviceState(DeviceStateUpdate),
    /// `SNS_OP`.
    SnsOp(SnsOp),
    /// `STOB_IOQ_ERROR`.
    StobIoqError(StobIoqError),
    /// Any other type, kept as is.
    Other(QueueMessage),
}

// ---------------------------------------------------------------------------
// Configuration tree

/// The Motr service types hax looks for, as cfgen writes them: the last
/// segment of `m0conf/nodes/<name>/processes/<key>/services/<type>` and the
/// `name` of a service object. The others (`addb2`, `cas`, the client types
/// of `m0_client_types`, ...) stay text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ServiceType {
    /// `ha`: hax's HA service.
    Ha,
    /// `confd`
    Confd,
    /// `rms`: resource manager.
    Rms,
    /// `ios`: I/O service.
    Ios,
}

impl ServiceType {
    /// Every type, for tables and tests.
    pub const ALL: [ServiceType; 4] = [
        ServiceType::Ha,
        ServiceType::Confd,
        ServiceType::Rms,
        ServiceType::Ios,
    ];

    /// The type as written in the tree.
    pub const fn as_str(self) -> &'static str {
        match self {
            ServiceType::Ha => "ha",
            ServiceType::Confd => "confd",
            ServiceType::Rms => "rms",
            ServiceType::Ios => "ios",
        }
    }

    /// Whether a service type read from the tree is this one.
    pub fn is(self, text: &str) -> bool {
        text == self.as_str()
    }
}

impl std::fmt::Display for ServiceType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for ServiceType {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        ServiceType::ALL
            .into_iter()
            .find(|t| t.is(s))
            .ok_or_else(|| format!("{s:?} is not a service type hax uses"))
    }
}

/// A key of the `m0conf/` configuration tree.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ConfKey {
    /// `m0conf/nodes/<node fid>`: `{"name", "state"}`.
    Node {
        /// Node fid.
        node: FidText,
    },
    /// `m0conf/nodes/<node fid>/processes/<process fid>`: `{"name", "state"}`.
    Process {
        /// Node fid.
        node: FidText,
        /// Process fid.
        process: FidText,
    },
    /// `.../processes/<process fid>/services/<service fid>`: `{"name", "state"}`.
    Service {
        /// Node fid.
        node: FidText,
        /// Process fid.
        process: FidText,
        /// Service fid.
        service: FidText,
    },
    /// `.../services/<service fid>/sdevs/<sdev fid>`: `{"path", "state"}`.
    Sdev {
        /// Node fid.
        node: FidText,
        /// Process fid.
        process: FidText,
        /// Service fid.
        service: FidText,
        /// Sdev fid.
        sdev: FidText,
    },
    /// `m0conf/nodes/<node name>/processes/<key>/services/<type>`: decimal
    /// service fid key.
    ServiceKey {
        /// Node name.
        node_name: String,
        /// Decimal process fid key.
        process_key: u64,
        /// Service type (`ha`, `rms`, `confd`, `ios`, client types...).
        service_type: String,
    },
    /// `m0conf/nodes/<node name>/processes/<key>/<attr>` (`endpoint`,
    /// `meta_data`, `log`...): plain text.
    ProcessAttr {
        /// Node name.
        node_name: String,
        /// Decimal process fid key.
        process_key: u64,
        /// Attribute name.
        attr: String,
    },
    /// `m0conf/nodes/<node name>/processes/<key>/disks/<disk uuid>`.
    Disk {
        /// Node name.
        node_name: String,
        /// Decimal process fid key.
        process_key: u64,
        /// Disk id.
        disk: String,
    },
    /// `m0conf/sites/<site>`.
    Site {
        /// Site fid.
        site: FidText,
    },
    /// `m0conf/sites/<site>/racks/<rack>`.
    Rack {
        /// Site fid.
        site: FidText,
        /// Rack fid.
        rack: FidText,
    },
    /// `.../racks/<rack>/encls/<encl>`: `{"node", "state"}`.
    Enclosure {
        /// Site fid.
        site: FidText,
        /// Rack fid.
        rack: FidText,
        /// Enclosure fid.
        encl: FidText,
    },
    /// `.../encls/<encl>/ctrls/<ctrl>`: `{"state"}`.
    Controller {
        /// Site fid.
        site: FidText,
        /// Rack fid.
        rack: FidText,
        /// Enclosure fid.
        encl: FidText,
        /// Controller fid.
        ctrl: FidText,
    },
    /// `.../ctrls/<ctrl>/drives/<drive>`: `{"sdev", "state"}`.
    Drive {
        /// Site fid.
        site: FidText,
        /// Rack fid.
        rack: FidText,
        /// Enclosure fid.
        encl: FidText,
        /// Controller fid.
        ctrl: FidText,
        /// Drive fid.
        drive: FidText,
    },
    /// `m0conf/profiles/<profile>`: `{"name", "pools"}`.
    Profile {
        /// Profile fid.
        profile: FidText,
    },
    /// `m0conf/pools/<pool>`: the pool's name, plain text (cfgen writes
    /// one per SNS pool; profiles name their pools by it).
    Pool {
        /// Pool fid.
        pool: FidText,
    },
}

impl ConfKey {
    /// Parses a key of the configuration tree.
    pub fn parse(key: &str) -> Result<Self> {
        let bad = |reason: &str| SchemaError::BadKey {
            key: key.to_owned(),
            reason: reason.to_owned(),
        };
        let rest = key
            .strip_prefix(keys::CONF_PREFIX)
            .ok_or_else(|| bad("not under m0conf/"))?;
        let segs: Vec<&str> = rest.split('/').collect();
        let fid = |s: &str| FidText::parse(s).map_err(|_| bad("expected a fid segment"));
        let word = |s: &str, w: &str| -> Result<()> {
            if s == w {
                Ok(())
            } else {
                Err(bad(&format!("expected {w:?}, found {s:?}")))
            }
        };
        match segs.as_slice() {
            ["nodes", n] => Ok(ConfKey::Node { node: fid(n)? }),
            ["nodes", n, rest @ ..] if FidText::parse(n).is_ok() => {
                let node = fid(n)?;
                match rest {
                    [p, pf] => {
                        word(p, "processes")?;
                        Ok(ConfKey::Process {
                            node,
                            process: fid(pf)?,
                        })
                    }
                    [p, pf, s, sf] => {
                        word(p, "processes")?;
                        word(s, "services")?;
                        Ok(ConfKey::Service {
                            node,
                            process: fid(pf)?,
                            service: fid(sf)?,
                        })
                    }
                    [p, pf, s, sf, d, df] => {
                        word(p, "processes")?;
                        word(s, "services")?;
                        word(d, "sdevs")?;
                        Ok(ConfKey::Sdev {
                            node,
                            process: fid(pf)?,
                            service: fid(sf)?,
                            sdev: fid(df)?,
                        })
                    }
                    _ => Err(bad("unexpected shape under m0conf/nodes/<node fid>")),
                }
            }
            ["nodes", name, p, pk, rest @ ..] => {
                word(p, "processes")?;
                let node_name = segment("node name", name)
                    .map_err(|_| bad("bad node name"))?
                    .to_owned();
                let process_key: u64 = pk
                    .parse()
                    .map_err(|_| bad("expected a decimal process key"))?;
                match rest {
                    ["services", t] if !t.is_empty() => Ok(ConfKey::ServiceKey {
                        node_name,
                        process_key,
                        service_type: (*t).to_owned(),
                    }),
                    ["disks", d] if !d.is_empty() => Ok(ConfKey::Disk {
                        node_name,
                        process_key,
                        disk: (*d).to_owned(),
                    }),
                    [attr] if !attr.is_empty() && *attr != "services" && *attr != "disks" => {
                        Ok(ConfKey::ProcessAttr {
                            node_name,
                            process_key,
                            attr: (*attr).to_owned(),
                        })
                    }
                    _ => Err(bad(
                        "unexpected shape under m0conf/nodes/<node name>/processes",
                    )),
                }
            }
            ["sites", s] => Ok(ConfKey::Site { site: fid(s)? }),
            ["sites", s, "racks", r] => Ok(ConfKey::Rack {
                site: fid(s)?,
                rack: fid(r)?,
            }),
            ["sites", s, "racks", r, "encls", e] => Ok(ConfKey::Enclosure {
                site: fid(s)?,
                rack: fid(r)?,
                encl: fid(e)?,
            }),
            ["sites", s, "racks", r, "encls", e, "ctrls", c] => Ok(ConfKey::Controller {
                site: fid(s)?,
                rack: fid(r)?,
                encl: fid(e)?,
                ctrl: fid(c)?,
            }),
            ["sites", s, "racks", r, "encls", e, "ctrls", c, "drives", d] => Ok(ConfKey::Drive {
                site: fid(s)?,
                rack: fid(r)?,
                encl: fid(e)?,
                ctrl: fid(c)?,
                drive: fid(d)?,
            }),
            ["profiles", p] => Ok(ConfKey::Profile { profile: fid(p)? }),
            ["pools", p] => Ok(ConfKey::Pool { pool: fid(p)? }),
            _ => Err(bad("unknown configuration key")),
        }
    }

    /// The key text.
    pub fn to_key(&self) -> String {
        self.to_string()
    }

    /// Which vocabulary the `state` field of this key's value uses, if any.
    pub fn state_vocabulary(&self) -> Option<StateVocabulary> {
        match self {
            ConfKey::Process { .. } | ConfKey::Sdev { .. } => Some(StateVocabulary::Words),
            ConfKey::Node { .. }
            | ConfKey::Enclosure { .. }
            | ConfKey::Controller { .. }
            | ConfKey::Drive { .. }
            | ConfKey::Service { .. }
            | ConfKey::Site { .. }
            | ConfKey::Rack { .. } => Some(StateVocabulary::NcNames),
            ConfKey::ServiceKey { .. }
            | ConfKey::ProcessAttr { .. }
            | ConfKey::Disk { .. }
            | ConfKey::Profile { .. }
            | ConfKey::Pool { .. } => None,
        }
    }
}

impl fmt::Display for ConfKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let p = keys::CONF_PREFIX;
        match self {
            ConfKey::Node { node } => write!(f, "{p}nodes/{node}"),
            ConfKey::Process { node, process } => write!(f, "{p}nodes/{node}/processes/{process}"),
            ConfKey::Service {
                node,
                process,
                service,
            } => {
                write!(f, "{p}nodes/{node}/processes/{process}/services/{service}")
            }
            ConfKey::Sdev {
                node,
                process,
                service,
                sdev,
            } => write!(
                f,
                "{p}nodes/{node}/processes/{process}/services/{service}/sdevs/{sdev}"
            ),
            ConfKey::ServiceKey {
                node_name,
                process_key,
                service_type,
            } => write!(
                f,
                "{p}nodes/{node_name}/processes/{process_key}/services/{service_type}"
            ),
            ConfKey::ProcessAttr {
                node_name,
                process_key,
                attr,
            } => {
                write!(f, "{p}nodes/{node_name}/processes/{process_key}/{attr}")
            }
            ConfKey::Disk {
                node_name,
                process_key,
                disk,
            } => {
                write!(
                    f,
                    "{p}nodes/{node_name}/processes/{process_key}/disks/{disk}"
                )
            }
            ConfKey::Site { site } => write!(f, "{p}sites/{site}"),
            ConfKey::Rack { site, rack } => write!(f, "{p}sites/{site}/racks/{rack}"),
            ConfKey::Enclosure { site, rack, encl } => {
                write!(f, "{p}sites/{site}/racks/{rack}/encls/{encl}")
            }
            ConfKey::Controller {
                site,
                rack,
                encl,
                ctrl,
            } => {
                write!(f, "{p}sites/{site}/racks/{rack}/encls/{encl}/ctrls/{ctrl}")
            }
            ConfKey::Drive {
                site,
                rack,
                encl,
                ctrl,
                drive,
            } => write!(
                f,
                "{p}sites/{site}/racks/{rack}/encls/{encl}/ctrls/{ctrl}/drives/{drive}"
            ),
            ConfKey::Profile { profile } => write!(f, "{p}profiles/{profile}"),
            ConfKey::Pool { pool } => write!(f, "{p}pools/{pool}"),
        }
    }
}

/// The two state vocabularies of the configuration tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StateVocabulary {
    /// Lowercase words (processes, sdevs): [`ObjState`].
    Words,
    /// `M0_NC_*` names (nodes, enclosures, controllers): [`NcState`].
    NcNames,
}

/// Lowercase object states of processes and sdevs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ObjState {
    /// `online`
    Online,
    /// `failed`
    Failed,
    /// `offline`
    Offline,
    /// `unknown` (cfgen's initial `M0_NC_UNKNOWN` reads as this too)
    #[serde(alias = "M0_NC_UNKNOWN", alias = "m0_nc_unknown")]
    Unknown,
    /// `stopped`
    Stopped,
    /// `dtm_recovering`
    DtmRecovering,
    /// `repairing`
    Repairing,
    /// `repaired`
    Repaired,
    /// `rebalancing`
    Rebalancing,
}

/// `M0_NC_*` object states (nodes, enclosures, controllers, drives).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum NcState {
    /// `M0_NC_UNKNOWN`
    #[serde(rename = "M0_NC_UNKNOWN")]
    Unknown,
    /// `M0_NC_ONLINE`
    #[serde(rename = "M0_NC_ONLINE")]
    Online,
    /// `M0_NC_FAILED`
    #[serde(rename = "M0_NC_FAILED")]
    Failed,
    /// `M0_NC_TRANSIENT`
    #[serde(rename = "M0_NC_TRANSIENT")]
    Transient,
    /// `M0_NC_REPAIR`
    #[serde(rename = "M0_NC_REPAIR")]
    Repair,
    /// `M0_NC_REPAIRED`
    #[serde(rename = "M0_NC_REPAIRED")]
    Repaired,
    /// `M0_NC_REBALANCE`
    #[serde(rename = "M0_NC_REBALANCE")]
    Rebalance,
    /// `M0_NC_DTM_RECOVERING`
    #[serde(rename = "M0_NC_DTM_RECOVERING")]
    DtmRecovering,
}

/// A state to write into a configuration object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfState {
    /// For processes and sdevs.
    Word(ObjState),
    /// For nodes, enclosures, controllers.
    Nc(NcState),
}

impl ObjState {
    /// Every state, for tables and tests.
    pub const ALL: [ObjState; 9] = [
        ObjState::Online,
        ObjState::Failed,
        ObjState::Offline,
        ObjState::Unknown,
        ObjState::Stopped,
        ObjState::DtmRecovering,
        ObjState::Repairing,
        ObjState::Repaired,
        ObjState::Rebalancing,
    ];

    /// The word as written in Consul.
    pub const fn as_str(self) -> &'static str {
        match self {
            ObjState::Online => "online",
            ObjState::Failed => "failed",
            ObjState::Offline => "offline",
            ObjState::Unknown => "unknown",
            ObjState::Stopped => "stopped",
            ObjState::DtmRecovering => "dtm_recovering",
            ObjState::Repairing => "repairing",
            ObjState::Repaired => "repaired",
            ObjState::Rebalancing => "rebalancing",
        }
    }
}

impl std::str::FromStr for ObjState {
    type Err = String;

    /// The word as Consul holds it; cfgen's initial `M0_NC_UNKNOWN` reads
    /// as [`ObjState::Unknown`].
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        if s == "M0_NC_UNKNOWN" || s == "m0_nc_unknown" {
            return Ok(ObjState::Unknown);
        }
        ObjState::ALL
            .into_iter()
            .find(|w| w.as_str() == s)
            .ok_or_else(|| format!("{s:?} is not an object state"))
    }
}

impl NcState {
    /// Every state, for tables and tests.
    pub const ALL: [NcState; 8] = [
        NcState::Unknown,
        NcState::Online,
        NcState::Failed,
        NcState::Transient,
        NcState::Repair,
        NcState::Repaired,
        NcState::Rebalance,
        NcState::DtmRecovering,
    ];

    /// The `M0_NC_*` name as written in Consul.
    pub const fn as_str(self) -> &'static str {
        match self {
            NcState::Unknown => "M0_NC_UNKNOWN",
            NcState::Online => "M0_NC_ONLINE",
            NcState::Failed => "M0_NC_FAILED",
            NcState::Transient => "M0_NC_TRANSIENT",
            NcState::Repair => "M0_NC_REPAIR",
            NcState::Repaired => "M0_NC_REPAIRED",
            NcState::Rebalance => "M0_NC_REBALANCE",
            NcState::DtmRecovering => "M0_NC_DTM_RECOVERING",
        }
    }
}

impl std::str::FromStr for NcState {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        NcState::ALL
            .into_iter()
            .find(|n| n.as_str() == s)
            .ok_or_else(|| format!("{s:?} is not an M0_NC_* state"))
    }
}

impl ConfState {
    /// The text of the state as stored in an object's `state` field.
    pub const fn as_str(self) -> &'static str {
        match self {
            ConfState::Word(w) => w.as_str(),
            ConfState::Nc(n) => n.as_str(),
        }
    }
}

/// The JSON object of a configuration entry. Known fields are typed; others
/// are kept so that rewriting `state` preserves them.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct ConfObject {
    /// `name` (nodes, processes, services, profiles).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `path` (sdevs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// `sdev` (drives).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sdev: Option<FidText>,
    /// `node` (enclosures).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<FidText>,
    /// `pools` (profiles): cfgen names them, other writers give fids.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pools: Option<Vec<PoolRef>>,
    /// `state`, in the vocabulary of the key (see [`ConfKey::state_vocabulary`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    /// Other fields.
    #[serde(flatten)]
    pub other: BTreeMap<String, serde_json::Value>,
}

impl ConfObject {
    /// The `state` as an [`ObjState`] (processes, sdevs).
    pub fn obj_state(&self, key: &str) -> Result<Option<ObjState>> {
        self.state
            .as_deref()
            .map(|s| {
                serde_json::from_value(serde_json::Value::String(s.to_owned())).map_err(|_| {
                    SchemaError::BadValue {
                        key: key.to_owned(),
                        reason: format!("unknown object state {s:?}"),
                    }
                })
            })
            .transpose()
    }

    /// The `state` as an [`NcState`] (nodes, enclosures, controllers).
    pub fn nc_state(&self, key: &str) -> Result<Option<NcState>> {
        self.state
            .as_deref()
            .map(|s| {
                serde_json::from_value(serde_json::Value::String(s.to_owned())).map_err(|_| {
                    SchemaError::BadValue {
                        key: key.to_owned(),
                        reason: format!("unknown M0_NC state {s:?}"),
                    }
                })
            })
            .transpose()
    }
}

/// One element of a profile's `pools`. cfgen writes the names of the SNS
/// pools (`m0conf/pools/<fid>` values) and `null` for the pools it does not
/// name (its DIX and metadata pools); other writers give fids. Anything else
/// is kept as written so that no element makes the profile unreadable.
#[derive(Debug, Clone, PartialEq)]
pub enum PoolRef {
    /// A fid.
    Fid(FidText),
    /// A pool name.
    Name(String),
    /// `null`: a pool without a name.
    Unnamed,
    /// Any other JSON value.
    Other(serde_json::Value),
}

impl Serialize for PoolRef {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        match self {
            PoolRef::Fid(f) => f.serialize(s),
            PoolRef::Name(n) => s.serialize_str(n),
            PoolRef::Unnamed => s.serialize_none(),
            PoolRef::Other(v) => v.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for PoolRef {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        Ok(match serde_json::Value::deserialize(d)? {
            serde_json::Value::String(t) => match FidText::parse(&t) {
                Ok(f) => PoolRef::Fid(f),
                Err(_) => PoolRef::Name(t),
            },
            serde_json::Value::Null => PoolRef::Unnamed,
            other => PoolRef::Other(other),
        })
    }
}

/// The value of a configuration key.
#[derive(Debug, Clone, PartialEq)]
pub enum ConfValue {
    /// A JSON object.
    Object(ConfObject),
    /// A decimal fid key (`ServiceKey`).
    FidKey(u64),
    /// Plain text (`ProcessAttr`, `Disk`, `Pool`).
    Text(String),
}

/// One parsed entry of the configuration tree.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfEntry {
    /// The key.
    pub key: ConfKey,
    /// The value.
    pub value: ConfValue,
    /// Modify index (for cas).
    pub modify_index: u64,
}

/// An entry of `m0conf/` whose value could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MalformedEntry {
    /// The key.
    pub key: String,
    /// Its modify index: a value rewritten since is another value.
    pub modify_index: u64,
    /// Why it was left out.
    pub reason: String,
}

/// The configuration tree as read from `m0conf/`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ConfTree {
    /// Entries by key.
    pub entries: BTreeMap<ConfKey, ConfEntry>,
    /// Keys under `m0conf/` that this schema does not know (kept for logs).
    pub unrecognised: Vec<String>,
    /// Known keys whose values were left out ([`ConfTree::from_pairs_tolerant`]).
    pub malformed: Vec<MalformedEntry>,
}

impl ConfTree {
    /// Parses a listing of `m0conf/`. Unknown key shapes are collected in
    /// `unrecognised`; a malformed value of a known key is an error naming it.
    pub fn from_pairs(pairs: &[KvPair]) -> Result<Self> {
        let tree = Self::from_pairs_tolerant(pairs);
        match tree.malformed.first() {
            Some(m) => Err(SchemaError::BadValue {
                key: m.key.clone(),
                reason: m.reason.clone(),
            }),
            None => Ok(tree),
        }
    }

    /// Parses a listing of `m0conf/` entry by entry: a value that cannot be
    /// decoded leaves out its own entry only, recorded in `malformed`, so
    /// that one bad object never hides the rest of the tree.
    pub fn from_pairs_tolerant<'a>(pairs: impl IntoIterator<Item = &'a KvPair>) -> Self {
        let mut tree = ConfTree::default();
        for pair in pairs {
            let key = match ConfKey::parse(&pair.key) {
                Ok(k) => k,
                Err(_) => {
                    tree.unrecognised.push(pair.key.clone());
                    continue;
                }
            };
            match decode_conf_value(&key, &pair.key, &pair.value) {
                Ok(value) => {
                    tree.entries.insert(
                        key.clone(),
                        ConfEntry {
                            key,
                            value,
                            modify_index: pair.modify_index,
                        },
                    );
                }
                Err(e) => tree.malformed.push(MalformedEntry {
                    key: pair.key.clone(),
                    modify_index: pair.modify_index,
                    reason: match e {
                        SchemaError::BadValue { reason, .. } => reason,
                        other => other.to_string(),
                    },
                }),
            }
        }
        tree
    }

    fn object(&self, key: &ConfKey) -> Option<&ConfObject> {
        match self.entries.get(key).map(|e| &e.value) {
            Some(ConfValue::Object(o)) => Some(o),
            _ => None,
        }
    }

    /// Fid of the node named `name` (`m0conf/nodes/<fid>` with that `name`).
    pub fn node_fid_by_name(&self, name: &str) -> Option<FidText> {
        self.entries
            .values()
            .find_map(|e| match (&e.key, &e.value) {
                (ConfKey::Node { node }, ConfValue::Object(o))
                    if o.name.as_deref() == Some(name) =>
                {
                    Some(*node)
                }
                _ => None,
            })
    }

    /// Name of the node with fid `node`.
    pub fn node_name(&self, node: FidText) -> Option<&str> {
        self.object(&ConfKey::Node { node })?.name.as_deref()
    }

    /// Processes of a node (by fid) with their objects.
    pub fn processes_of(&self, node: FidText) -> Vec<(FidText, &ConfObject)> {
        self.entries
            .values()
            .filter_map(|e| match (&e.key, &e.value) {
                (ConfKey::Process { node: n, process }, ConfValue::Object(o)) if *n == node => {
                    Some((*process, o))
                }
                _ => None,
            })
            .collect()
    }

    /// The node fid a process fid belongs to.
    pub fn node_of_process(&self, process: FidText) -> Option<FidText> {
        self.entries.keys().find_map(|k| match k {
            ConfKey::Process { node, process: p } if *p == process => Some(*node),
            _ => None,
        })
    }

    /// Services (type, decimal service key) of the process with decimal key
    /// `process_key`, on any node.
    pub fn services_of_process_key(&self, process_key: u64) -> Vec<(&str, u64)> {
        self.entries
            .values()
            .filter_map(|e| match (&e.key, &e.value) {
                (
                    ConfKey::ServiceKey {
                        process_key: pk,
                        service_type,
                        ..
                    },
                    ConfValue::FidKey(k),
                ) if *pk == process_key => Some((service_type.as_str(), *k)),
                _ => None,
            })
            .collect()
    }

    /// Endpoint of the process with decimal key `process_key`.
    pub fn endpoint_of_process_key(&self, process_key: u64) -> Option<&str> {
        self.entries
            .values()
            .find_map(|e| match (&e.key, &e.value) {
                (
                    ConfKey::ProcessAttr {
                        process_key: pk,
                        attr,
                        ..
                    },
                    ConfValue::Text(t),
                ) if *pk == process_key && attr == "endpoint" => Some(t.as_str()),
                _ => None,
            })
    }

    /// Sdevs of a service (by fid) with their keys.
    pub fn sdevs_of_service(&self, service: FidText) -> Vec<(&ConfKey, &ConfObject)> {
        self.entries
            .values()
            .filter_map(|e| match (&e.key, &e.value) {
                (k @ ConfKey::Sdev { service: s, .. }, ConfValue::Object(o)) if *s == service => {
                    Some((k, o))
                }
                _ => None,
            })
            .collect()
    }

    /// The drive whose value references `sdev`, with its key.
    pub fn drive_of_sdev(&self, sdev: FidText) -> Option<(&ConfKey, FidText)> {
        self.entries
            .values()
            .find_map(|e| match (&e.key, &e.value) {
                (k @ ConfKey::Drive { drive, .. }, ConfValue::Object(o))
                    if o.sdev == Some(sdev) =>
                {
                    Some((k, *drive))
                }
                _ => None,
            })
    }

    /// The sdev a drive references.
    pub fn sdev_of_drive(&self, drive: FidText) -> Option<FidText> {
        self.entries
            .values()
            .find_map(|e| match (&e.key, &e.value) {
                (ConfKey::Drive { drive: d, .. }, ConfValue::Object(o)) if *d == drive => o.sdev,
                _ => None,
            })
    }

    /// The SNS pools cfgen names (`m0conf/pools/<fid>`): fid and name.
    pub fn pools(&self) -> Vec<(FidText, &str)> {
        self.entries
            .values()
            .filter_map(|e| match (&e.key, &e.value) {
                (ConfKey::Pool { pool }, ConfValue::Text(name)) => Some((*pool, name.as_str())),
                _ => None,
            })
            .collect()
    }

    /// The pools of a profile as fids, in the profile's order: names are
    /// resolved through the pools' own records as hare does, fids are taken
    /// as they are. An unnamed pool (cfgen's `null` for its DIX and metadata
    /// pools) or a name no pool record holds is left out.
    pub fn profile_pools(&self, profile: FidText) -> Vec<FidText> {
        let Some(obj) = self.object(&ConfKey::Profile { profile }) else {
            return Vec::new();
        };
        let pools = self.pools();
        obj.pools
            .iter()
            .flatten()
            .filter_map(|p| match p {
                PoolRef::Fid(f) => Some(*f),
                PoolRef::Name(n) => pools.iter().find(|(_, name)| name == n).map(|(f, _)| *f),
                PoolRef::Unnamed | PoolRef::Other(_) => None,
            })
            .collect()
    }

    /// Profiles with their pools.
    pub fn profiles(&self) -> Vec<(FidText, &ConfObject)> {
        self.entries
            .values()
            .filter_map(|e| match (&e.key, &e.value) {
                (ConfKey::Profile { profile }, ConfValue::Object(o)) => Some((*profile, o)),
                _ => None,
            })
            .collect()
    }
}

fn decode_conf_value(key: &ConfKey, raw_key: &str, bytes: &[u8]) -> Result<ConfValue> {
    Ok(match key {
        ConfKey::ServiceKey { .. } => ConfValue::FidKey(decode_decimal(raw_key, bytes)?),
        ConfKey::ProcessAttr { .. } | ConfKey::Disk { .. } | ConfKey::Pool { .. } => {
            ConfValue::Text(text(raw_key, bytes)?.to_owned())
        }
        _ => ConfValue::Object(decode(raw_key, bytes)?),
    })
}

/// Decodes one `m0conf/profiles/<fid>` entry.
fn profile_record(p: &KvPair) -> Result<ProfileRecord> {
    #[derive(Deserialize)]
    struct Value {
        name: String,
        #[serde(default)]
        pools: Vec<PoolRef>,
    }
    let fid = last_segment_fid(&p.key, keys::CONF_PROFILES_PREFIX)?;
    let v: Value = decode(&p.key, &p.value)?;
    Ok(ProfileRecord {
        fid,
        name: v.name,
        pools: v
            .pools
            .into_iter()
            .filter_map(|r| match r {
                PoolRef::Fid(f) => Some(f.to_string()),
                PoolRef::Name(n) => Some(n),
                PoolRef::Unnamed | PoolRef::Other(_) => None,
            })
            .collect(),
    })
}

/// The fid that ends `key`, a key directly under `prefix`.
fn last_segment_fid(key: &str, prefix: &str) -> Result<FidText> {
    key.strip_prefix(prefix)
        .and_then(|rest| FidText::parse(rest).ok())
        .ok_or_else(|| SchemaError::BadKey {
            key: key.to_owned(),
            reason: format!("expected {prefix}<fid>"),
        })
}

// ---------------------------------------------------------------------------
// Typed access

/// How many times a read-modify-write retries after losing a cas race.
const RMW_ATTEMPTS: usize = 8;

/// Typed access to hax's keys over a [`ConsulClient`].
#[derive(Debug, Clone)]
pub struct HaxKv {
    client: ConsulClient,
}

impl HaxKv {
    /// Wraps a client.
    pub fn new(client: ConsulClient) -> Self {
        HaxKv { client }
    }

    /// The underlying client.
    pub fn client(&self) -> &ConsulClient {
        &self.client
    }

    async fn get_raw(&self, key: &str) -> Result<Option<KvPair>> {
        Ok(self.client.kv_get(key).await?.value)
    }

    async fn get_json<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>> {
        match self.get_raw(key).await? {
            None => Ok(None),
            Some(p) => decode(key, &p.value).map(Some),
        }
    }

    async fn put_json<T: Serialize + ?Sized>(&self, key: &str, value: &T) -> Result<()> {
        let body = encode(key, value)?;
        self.client.kv_put(key, body).await?;
        Ok(())
    }

    // -- leader and sessions

    /// The `leader` key, or `None` if it does not exist.
    pub async fn leader(&self) -> Result<Option<Leader>> {
        Ok(match self.get_raw(keys::LEADER).await? {
            None => None,
            Some(p) => Some(Leader {
                value: LeaderValue::parse(keys::LEADER, &p.value)?,
                session: p.session,
                modify_index: p.modify_index,
            }),
        })
    }

    /// Consul node name of a host (`consul/node/<hostname>`).
    pub async fn consul_node_of(&self, hostname: &str) -> Result<Option<String>> {
        let key = keys::consul_node(hostname)?;
        self.get_raw(&key)
            .await?
            .map(|p| text(&key, &p.value).map(str::to_owned))
            .transpose()
    }

    /// Records the Consul node name of a host.
    pub async fn put_consul_node(&self, hostname: &str, consul_node: &str) -> Result<()> {
        self.client
            .kv_put(&keys::consul_node(hostname)?, consul_node)
            .await?;
        Ok(())
    }

    // -- process states

    /// `processes/<fid>`.
    pub async fn process_status(&self, fid: FidText) -> Result<Option<ProcessStatus>> {
        self.get_json(&keys::process(fid)).await
    }

    /// Writes `processes/<fid>`.
    pub async fn put_process_status(&self, fid: FidText, status: ProcessStatus) -> Result<()> {
        self.put_json(&keys::process(fid), &status).await
    }

    /// Every `processes/<fid>` entry.
    pub async fn process_statuses(&self) -> Result<BTreeMap<FidText, ProcessStatus>> {
        let listed = self.client.kv_list(keys::PROCESSES_PREFIX).await?.value;
        listed
            .iter()
            .map(|p| {
                let fid_text = p.key.strip_prefix(keys::PROCESSES_PREFIX).unwrap_or(&p.key);
                let fid = FidText::parse(fid_text).map_err(|_| SchemaError::BadKey {
                    key: p.key.clone(),
                    reason: "expected processes/<fid>".to_owned(),
                })?;
                Ok((fid, decode(&p.key, &p.value)?))
            })
            .collect()
    }

    /// `<node>/processes/<fid>`: a node's record of a remote process.
    pub async fn node_process_status(
        &self,
        node: &str,
        fid: FidText,
    ) -> Result<Option<ProcessStatus>> {
        self.get_json(&keys::node_process(node, fid)?).await
    }

    /// Writes `<node>/processes/<fid>`.
    pub async fn put_node_process_status(
        &self,
        node: &str,
        fid: FidText,
        status: ProcessStatus,
    ) -> Result<()> {
        self.put_json(&keys::node_process(node, fid)?, &status)
            .await
    }

    /// `<node>/keepalive/<fid>`, if written.
    pub async fn keepalive_status(
        &self,
        node: &str,
        fid: FidText,
    ) -> Result<Option<KeepaliveStatus>> {
        self.get_json(&keys::keepalive(node, fid)?).await
    }

    /// Every `<node>/keepalive/<fid>` key of a node (names only).
    pub async fn keepalive_keys(&self, node: &str) -> Result<Vec<String>> {
        let prefix = keys::keepalive_prefix(node)?;
        Ok(self.client.kv_keys(&prefix, None).await?.value)
    }

    /// `<node>/process_restarts/<fid>`, 0 when absent.
    pub async fn process_restarts(&self, node: &str, fid: FidText) -> Result<u64> {
        let key = keys::process_restarts(node, fid)?;
        match self.get_raw(&key).await? {
            None => Ok(0),
            Some(p) => decode_decimal(&key, &p.value),
        }
    }

    /// Every `<node>/process_restarts/<fid>` of a node. Entries whose key
    /// or count does not parse are left out, named in the second list.
    pub async fn all_process_restarts(
        &self,
        node: &str,
    ) -> Result<(BTreeMap<FidText, u64>, Vec<String>)> {
        let prefix = keys::process_restarts_prefix(node)?;
        // Read once and then kept by hax: a leader just restarted would
        // answer from its log replay with counts that are behind, and a
        // restart would go unnoticed.
        let opts = crate::client::QueryOptions {
            consistency: crate::client::Consistency::Consistent,
            ..crate::client::QueryOptions::default()
        };
        let listed = self.client.kv_list_with(&prefix, &opts).await?.value;
        let mut counts = BTreeMap::new();
        let mut bad = Vec::new();
        for p in &listed {
            let fid = p
                .key
                .strip_prefix(&prefix)
                .and_then(|f| FidText::parse(f).ok());
            match (fid, decode_decimal(&p.key, &p.value)) {
                (Some(fid), Ok(n)) => {
                    counts.insert(fid, n);
                }
                _ => bad.push(p.key.clone()),
            }
        }
        Ok((counts, bad))
    }

    /// Writes `<node>/process_restarts/<fid>` as a JSON string (`"2"`).
    pub async fn put_process_restarts(&self, node: &str, fid: FidText, count: u64) -> Result<()> {
        self.put_json(&keys::process_restarts(node, fid)?, &count.to_string())
            .await
    }

    // -- configuration tree

    /// Reads and parses the whole `m0conf/` tree.
    pub async fn conf_tree(&self) -> Result<ConfTree> {
        let pairs = self.client.kv_list(keys::CONF_PREFIX).await?.value;
        ConfTree::from_pairs(&pairs)
    }

    /// Reads one configuration entry.
    pub async fn conf_entry(&self, key: &ConfKey) -> Result<Option<ConfEntry>> {
        let raw = key.to_key();
        Ok(match self.get_raw(&raw).await? {
            None => None,
            Some(p) => Some(ConfEntry {
                key: key.clone(),
                value: decode_conf_value(key, &raw, &p.value)?,
                modify_index: p.modify_index,
            }),
        })
    }

    /// Rewrites the `state` field of a configuration object, keeping its
    /// other fields. Check-and-set, so concurrent writers of other fields are
    /// not overwritten. `keep` lists current states that must not be replaced
    /// (e.g. a failed sdev is not brought back by a process update); returns
    /// whether the state was written. A missing key is not created.
    pub async fn set_conf_state(
        &self,
        key: &ConfKey,
        state: ConfState,
        keep: &[ConfState],
    ) -> Result<bool> {
        let raw = key.to_key();
        let expected = match state {
            ConfState::Word(_) => StateVocabulary::Words,
            ConfState::Nc(_) => StateVocabulary::NcNames,
        };
        if key.state_vocabulary() != Some(expected) {
            return Err(SchemaError::BadKey {
                key: raw,
                reason: format!("a {expected:?} state does not apply to this key"),
            });
        }
        let new_state = state.as_str().to_owned();
        for _ in 0..RMW_ATTEMPTS {
            let Some(pair) = self.get_raw(&raw).await? else {
                return Ok(false);
            };
            let mut obj: ConfObject = decode(&raw, &pair.value)?;
            if obj
                .state
                .as_deref()
                .is_some_and(|s| keep.iter().any(|k| k.as_str() == s))
            {
                return Ok(false);
            }
            if obj.state.as_deref() == Some(new_state.as_str()) {
                return Ok(true);
            }
            obj.state = Some(new_state.clone());
            let body = encode(&raw, &obj)?;
            if self.client.kv_cas(&raw, body, pair.modify_index).await? {
                return Ok(true);
            }
        }
        Err(SchemaError::Contended { key: raw })
    }

    /// `m0_client_types` (empty when absent).
    pub async fn m0_client_types(&self) -> Result<Vec<String>> {
        Ok(self
            .get_json(keys::M0_CLIENT_TYPES)
            .await?
            .unwrap_or_default())
    }

    /// `ssl/hax`.
    pub async fn ssl_config(&self) -> Result<Option<SslConfig>> {
        self.get_json(keys::SSL_HAX).await
    }

    /// `config_path`.
    pub async fn config_path(&self) -> Result<Option<String>> {
        self.get_raw(keys::CONFIG_PATH)
            .await?
            .map(|p| text(keys::CONFIG_PATH, &p.value).map(str::to_owned))
            .transpose()
    }

    /// A top-level name mapping (`<machine id>` → node name and back).
    pub async fn name_mapping(&self, name: &str) -> Result<Option<String>> {
        let key = keys::top_level(name)?;
        self.get_raw(&key)
            .await?
            .map(|p| text(&key, &p.value).map(str::to_owned))
            .transpose()
    }

    /// The full dynamic fid of a base fid (top-level `<base fid>` key holding
    /// a JSON string), or the base fid itself when absent.
    pub async fn full_fid(&self, base: FidText) -> Result<FidText> {
        let key = keys::dynamic_fid(base);
        Ok(self.get_json::<FidText>(&key).await?.unwrap_or(base))
    }

    /// `failvec`: fid text → state, when present. cfgen creates the key
    /// empty, which reads as absent.
    pub async fn failvec(&self) -> Result<Option<BTreeMap<String, String>>> {
        match self.get_raw(keys::FAILVEC).await? {
            Some(p) if !p.value.iter().all(u8::is_ascii_whitespace) => {
                decode(keys::FAILVEC, &p.value).map(Some)
            }
            _ => Ok(None),
        }
    }

    // -- statistics

    /// `stats/filesystem`.
    pub async fn fs_stats(&self) -> Result<Option<FsStatsRecord>> {
        self.get_json(keys::FS_STATS).await
    }

    /// Writes `stats/filesystem`.
    pub async fn put_fs_stats(&self, record: &FsStatsRecord) -> Result<()> {
        self.put_json(keys::FS_STATS, record).await
    }

    /// Writes `ioservices/<ios>/pvers/<pver>/users/<uid>`.
    pub async fn put_byte_count(
        &self,
        ios: FidText,
        pver: FidText,
        user: u64,
        count: ByteCount,
    ) -> Result<()> {
        self.put_json(&keys::ioservice_user(ios, pver, user), &count)
            .await
    }

    /// Every `ioservices/...` byte count as (ios, pver, user, count).
    pub async fn byte_counts(&self) -> Result<Vec<(FidText, FidText, u64, ByteCount)>> {
        let listed = self.client.kv_list(keys::IOSERVICES_PREFIX).await?.value;
        listed
            .iter()
            .map(|p| {
                let bad = || SchemaError::BadKey {
                    key: p.key.clone(),
                    reason: "expected ioservices/<ios>/pvers/<pver>/users/<uid>".to_owned(),
                };
                let segs: Vec<&str> = p.key.split('/').collect();
                let [_, ios, "pvers", pver, "users", user] = segs.as_slice() else {
                    return Err(bad());
                };
                Ok((
                    FidText::parse(ios).map_err(|_| bad())?,
                    FidText::parse(pver).map_err(|_| bad())?,
                    user.parse().map_err(|_| bad())?,
                    decode(&p.key, &p.value)?,
                ))
            })
            .collect()
    }

    /// `bytecount/<class>` (0 when absent).
    pub async fn bytecount_total(&self, class: PverHealth) -> Result<u64> {
        Ok(self.get_json(&class.key()).await?.unwrap_or(0))
    }

    /// Writes `bytecount/<class>`.
    pub async fn put_bytecount_total(&self, class: PverHealth, bytes: u64) -> Result<()> {
        self.put_json(&class.key(), &bytes).await
    }

    /// Every readable `m0conf/profiles/<fid>` entry, in the order of the key
    /// text (as Consul lists them: `0x10` before `0x9`). An entry that cannot
    /// be read is logged and left out: one bad profile must not hide the
    /// others from rconfc or the status answer.
    pub async fn profile_records(&self) -> Result<Vec<ProfileRecord>> {
        let listed = self.client.kv_list(keys::CONF_PROFILES_PREFIX).await?.value;
        Ok(listed
            .iter()
            .filter_map(|p| match profile_record(p) {
                Ok(r) => Some(r),
                Err(e) => {
                    tracing::warn!(key = %p.key, error = %e, "profile ignored");
                    None
                }
            })
            .collect())
    }

    /// Every `m0conf/pools/<fid>` entry, in the order of the key text.
    pub async fn pool_records(&self) -> Result<Vec<PoolRecord>> {
        let listed = self.client.kv_list(keys::CONF_POOLS_PREFIX).await?.value;
        listed
            .iter()
            .map(|p| {
                Ok(PoolRecord {
                    fid: last_segment_fid(&p.key, keys::CONF_POOLS_PREFIX)?,
                    name: text(&p.key, &p.value)?.to_owned(),
                })
            })
            .collect()
    }

    /// Writes many `ioservices/<ios>/pvers/<pver>/users/<uid>` values, in
    /// transactions of at most [`crate::txn::MAX_TXN_OPS`] writes.
    pub async fn put_byte_counts(
        &self,
        counts: &[(FidText, FidText, u64, ByteCount)],
    ) -> Result<()> {
        let ops = counts
            .iter()
            .map(|(ios, pver, user, count)| {
                let key = keys::ioservice_user(*ios, *pver, *user);
                let body = encode(&key, count)?;
                Ok(crate::txn::TxnOp::set(key, body.into_bytes()))
            })
            .collect::<Result<Vec<_>>>()?;
        for chunk in ops.chunks(crate::txn::MAX_TXN_OPS) {
            self.client.txn(chunk).await?;
        }
        Ok(())
    }

    /// Every `bytecount/<class>` entry present, by class name (the last key
    /// segment), with its JSON value (`null` when it is not JSON).
    pub async fn bytecount_entries(&self) -> Result<BTreeMap<String, serde_json::Value>> {
        let listed = self.client.kv_list(keys::BYTECOUNT_PREFIX).await?.value;
        Ok(listed
            .iter()
            .filter_map(|p| {
                let class = p.key.strip_prefix(keys::BYTECOUNT_PREFIX)?;
                let value = serde_json::from_slice(&p.value).unwrap_or(serde_json::Value::Null);
                Some((class.to_owned(), value))
            })
            .collect())
    }

    /// Writes every `bytecount/<class>` in one transaction, so that readers
    /// never see totals of two different runs.
    pub async fn put_bytecount_totals(&self, totals: &[(PverHealth, u64)]) -> Result<()> {
        let ops = totals
            .iter()
            .map(|(class, bytes)| {
                let key = class.key();
                let body = encode(&key, bytes)?;
                Ok(crate::txn::TxnOp::set(key, body.into_bytes()))
            })
            .collect::<Result<Vec<_>>>()?;
        for chunk in ops.chunks(crate::txn::MAX_TXN_OPS) {
            self.client.txn(chunk).await?;
        }
        Ok(())
    }

    // -- event subscriptions

    /// `events/subscription/<resource>` (empty when absent).
    pub async fn event_subscriptions(&self, resource: &str) -> Result<Vec<String>> {
        Ok(self
            .get_json(&keys::event_subscription(resource)?)
            .await?
            .unwrap_or_default())
    }

    /// Writes `events/subscription/<resource>`.
    pub async fn put_event_subscriptions(
        &self,
        resource: &str,
        interfaces: &[String],
    ) -> Result<()> {
        self.put_json(&keys::event_subscription(resource)?, interfaces)
            .await
    }

    /// Read-modify-write of `events/subscription/<resource>` with
    /// check-and-set: `change` edits the list (empty when absent) and says
    /// whether it changed; nothing is written when it did not. Returns the
    /// list as stored afterwards.
    pub async fn update_event_subscriptions(
        &self,
        resource: &str,
        mut change: impl FnMut(&mut Vec<String>) -> bool,
    ) -> Result<Vec<String>> {
        let key = keys::event_subscription(resource)?;
        for _ in 0..RMW_ATTEMPTS {
            let current = self.get_raw(&key).await?;
            let (mut list, index): (Vec<String>, u64) = match &current {
                None => (Vec::new(), 0),
                Some(p) => (decode(&key, &p.value)?, p.modify_index),
            };
            if !change(&mut list) {
                return Ok(list);
            }
            let body = encode(&key, &list)?;
            if self.client.kv_cas(&key, body, index).await? {
                return Ok(list);
            }
        }
        Err(SchemaError::Contended { key })
    }

    // -- queues

    /// A consumer's delivered offset, `None` when it never consumed.
    pub async fn queue_offset(&self, kind: QueueKind, consumer: &str) -> Result<Option<u64>> {
        let key = kind.offset_key(consumer)?;
        match self.get_raw(&key).await? {
            None => Ok(None),
            Some(p) if p.value.is_empty() => Ok(None),
            Some(p) => decode_decimal(&key, &p.value).map(Some),
        }
    }

    /// Every consumer's delivered offset (`bq-delivered/<consumer>`), by
    /// consumer name. An offset that is not a number is left out: its
    /// consumer cannot read it either.
    pub async fn queue_offsets(&self, kind: QueueKind) -> Result<BTreeMap<String, u64>> {
        let prefix = kind.offsets_prefix();
        let listed = self.client.kv_list(prefix).await?.value;
        Ok(listed
            .iter()
            .filter_map(|p| {
                let name = p.key.strip_prefix(prefix).filter(|n| !n.is_empty())?;
                let offset = decode_decimal(&p.key, &p.value).ok()?;
                Some((name.to_owned(), offset))
            })
            .collect())
    }

    /// The current epoch of a queue, `None` when never initialised.
    pub async fn queue_epoch(&self, kind: QueueKind) -> Result<Option<u64>> {
        let key = kind.epoch_key();
        match self.get_raw(key).await? {
            None => Ok(None),
            Some(p) => decode_decimal(key, &p.value).map(Some),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fid_text_round_trips() {
        let f = FidText::parse("0x7200000000000001:0x15").expect("fid");
        assert_eq!(f, FidText::new(0x7200_0000_0000_0001, 0x15));
        assert_eq!(f.to_string(), "0x7200000000000001:0x15");
        assert_eq!(FidText::parse("7200000000000001:15").expect("no 0x"), f);
        assert_eq!(
            FidText::parse("0x0:0x0").expect("zero").to_string(),
            "0x0:0x0"
        );
        for bad in [
            "",
            ":",
            "0x1",
            "0x:0x1",
            "0xg:1",
            "1:2:3",
            "0x1:0x10000000000000000",
        ] {
            assert!(FidText::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn process_status_is_byte_compatible() {
        let s = ProcessStatus {
            state: ProcessState::Started,
            kind: ProcessType::M0d,
        };
        assert_eq!(
            pyjson::to_string(&s).expect("json"),
            r#"{"state": "M0_CONF_HA_PROCESS_STARTED", "type": "M0_CONF_HA_PROCESS_M0D"}"#
        );
        let err = decode::<ProcessStatus>(
            "processes/0x1:0x2",
            br#"{"state": "BOGUS", "type": "M0_CONF_HA_PROCESS_M0D"}"#,
        )
        .expect_err("unknown state");
        assert!(err.to_string().contains("processes/0x1:0x2"), "{err}");
    }

    #[test]
    fn keepalive_key_and_value() {
        let fid = FidText::new(0x7200_0000_0000_0001, 0x15);
        assert_eq!(
            keys::keepalive("ssu1", fid).expect("key"),
            "ssu1/keepalive/0x7200000000000001:0x15"
        );
        assert!(keys::keepalive("a/b", fid).is_err());
        assert_eq!(
            keys::keepalive_prefix("ssu1").expect("prefix"),
            "ssu1/keepalive/"
        );
        let v = KeepaliveStatus {
            counter: 7,
            replied_at: "2024-05-01T10:00:00.000001Z".into(),
            responding: true,
            missed: 0,
        };
        let text = pyjson::to_string(&v).expect("json");
        assert_eq!(
            text,
            r#"{"counter": 7, "replied_at": "2024-05-01T10:00:00.000001Z", "responding": true, "missed": 0}"#
        );
        assert_eq!(
            decode::<KeepaliveStatus>("k", text.as_bytes()).expect("decoded"),
            v
        );
    }

    #[test]
    fn conf_keys_parse_and_format() {
        let keys = [
            "m0conf/nodes/0x6e00000000000001:0x3",
            "m0conf/nodes/0x6e00000000000001:0x3/processes/0x7200000000000001:0x6",
            "m0conf/nodes/0x6e00000000000001:0x3/processes/0x7200000000000001:0x6/services/0x7300000000000001:0x7",
            "m0conf/nodes/0x6e00000000000001:0x3/processes/0x7200000000000001:0x6/services/0x7300000000000001:0x7/sdevs/0x6400000000000001:0x8",
            "m0conf/nodes/srvnode-1/processes/6/services/rms",
            "m0conf/nodes/srvnode-1/processes/6/endpoint",
            "m0conf/nodes/srvnode-1/processes/6/disks/abc-123",
            "m0conf/sites/0x5300000000000001:0x1",
            "m0conf/sites/0x5300000000000001:0x1/racks/0x6100000000000001:0x2",
            "m0conf/sites/0x5300000000000001:0x1/racks/0x6100000000000001:0x2/encls/0x6500000000000001:0x21",
            "m0conf/sites/0x5300000000000001:0x1/racks/0x6100000000000001:0x2/encls/0x6500000000000001:0x21/ctrls/0x6300000000000001:0x22",
            "m0conf/sites/0x5300000000000001:0x1/racks/0x6100000000000001:0x2/encls/0x6500000000000001:0x21/ctrls/0x6300000000000001:0x22/drives/0x6b00000000000001:0x2d",
            "m0conf/profiles/0x7000000000000001:0x1",
            "m0conf/pools/0x6f00000000000001:0x0",
        ];
        for k in keys {
            let parsed = ConfKey::parse(k).unwrap_or_else(|e| panic!("{k}: {e}"));
            assert_eq!(parsed.to_key(), k);
        }
        for bad in [
            "m0conf/nodes/srvnode-1",
            "m0conf/nodes/srvnode-1/processes/x/endpoint",
            "m0conf/nodes/0x6e00000000000001:0x3/procs/0x1:0x2",
            "m0conf/pools/the-pool",
            "other/x",
        ] {
            let err = ConfKey::parse(bad).expect_err(bad);
            assert!(err.to_string().contains(bad), "{err}");
        }
    }

    fn pair(key: &str, value: &str, modify_index: u64) -> KvPair {
        KvPair {
            key: key.into(),
            value: value.as_bytes().to_vec(),
            flags: 0,
            create_index: 1,
            modify_index,
            lock_index: 0,
            session: None,
        }
    }

    #[test]
    fn profiles_name_their_pools_as_cfgen_writes_them() {
        let pool = FidText::new(0x6f00_0000_0000_0001, 0);
        let (p0, p1) = (
            FidText::new(0x7000_0000_0000_0001, 0),
            FidText::new(0x7000_0000_0000_0001, 1),
        );
        let cfgen = r#"{"name": "default", "pools": ["the pool", null, null]}"#;
        let tree = ConfTree::from_pairs(&[
            pair("m0conf/pools/0x6f00000000000001:0x0", "the pool", 1),
            pair(&keys::profile(p0), cfgen, 1),
            pair(
                &keys::profile(p1),
                r#"{"name": "p1", "pools": ["0x6f00000000000001:0x5", "no such pool", 3]}"#,
                1,
            ),
        ])
        .expect("cfgen's profiles are readable");
        assert!(tree.unrecognised.is_empty(), "{:?}", tree.unrecognised);
        assert_eq!(tree.pools(), [(pool, "the pool")]);
        assert_eq!(tree.profile_pools(p0), [pool]);
        assert_eq!(
            tree.profile_pools(p1),
            [FidText::new(0x6f00_0000_0000_0001, 5)]
        );
        // Written back as read.
        let obj = tree.profiles()[0].1;
        assert_eq!(pyjson::to_string(obj).expect("json"), cfgen);
    }

    #[test]
    fn a_malformed_value_leaves_out_its_own_entry_only() {
        let node = "m0conf/nodes/0x6e00000000000001:0x0";
        let drive = "m0conf/sites/0x5300000000000001:0x0/racks/0x6100000000000001:0x0/encls/0x6500000000000001:0x0/ctrls/0x6300000000000001:0x0/drives/0x6b00000000000001:0x0";
        let svc = "m0conf/nodes/srvnode-1/processes/1/services/confd";
        let pairs = [
            pair(
                node,
                r#"{"name": "srvnode-1", "state": "M0_NC_UNKNOWN"}"#,
                3,
            ),
            pair(
                drive,
                r#"{"sdev": "not a fid", "state": "M0_NC_UNKNOWN"}"#,
                4,
            ),
            pair(svc, "3", 5),
            pair("m0conf/nodes/srvnode-1/processes/1/services/rms", "two", 6),
        ];
        let tree = ConfTree::from_pairs_tolerant(&pairs);
        assert_eq!(tree.entries.len(), 2);
        assert_eq!(tree.services_of_process_key(1), [("confd", 3)]);
        let bad: Vec<_> = tree
            .malformed
            .iter()
            .map(|m| (m.key.as_str(), m.modify_index))
            .collect();
        assert_eq!(
            bad,
            [
                (drive, 4),
                ("m0conf/nodes/srvnode-1/processes/1/services/rms", 6)
            ]
        );
        let err = ConfTree::from_pairs(&pairs).expect_err("strict");
        assert!(err.to_string().contains(drive), "{err}");
    }

    #[test]
    fn conf_objects_keep_unknown_fields() {
        let o: ConfObject = decode(
            "k",
            br#"{"name": "ios", "state": "M0_NC_UNKNOWN", "extra": [1]}"#,
        )
        .expect("obj");
        assert_eq!(o.obj_state("k").expect("state"), Some(ObjState::Unknown));
        assert_eq!(o.nc_state("k").expect("state"), Some(NcState::Unknown));
        assert_eq!(
            pyjson::to_string(&o).expect("json"),
            r#"{"name": "ios", "state": "M0_NC_UNKNOWN", "extra": [1]}"#
        );
        let bad = ConfObject {
            state: Some("weird".into()),
            ..ConfObject::default()
        };
        assert!(bad
            .obj_state("k")
            .expect_err("unknown")
            .to_string()
            .contains("\"k\""));
    }

    #[test]
    fn queue_keys() {
        let bq = QueueKind::Broadcast;
        assert_eq!(bq.entry_key(17), "bq/17");
        assert_eq!(bq.parse_entry_key("bq/17"), Some(17));
        assert_eq!(bq.parse_entry_key("bq/x"), None);
        assert_eq!(bq.parse_entry_key("bq/"), None);
        assert_eq!(bq.parse_entry_key("eq/1"), None);
        assert_eq!(bq.offset_key("node1").expect("key"), "bq-delivered/node1");
        assert!(bq.offset_key("a/b").is_err());
        assert_eq!(QueueKind::Event.epoch_key(), "eq-epoch");
    }

    #[test]
    fn broadcast_messages_decode() {
        let m = QueueMessage::decode(
            "bq/2",
            br#"{"timestamp": "t", "message_type": "PROCESS-STATE-UPDATE", "payload": {"fid": "0x7200000000000001:0x6", "state": "M0_CONF_HA_PROCESS_STOPPED", "type": "M0_CONF_HA_PROCESS_M0D"}}"#,
        )
        .expect("message");
        match m.broadcast("bq/2").expect("typed") {
            BroadcastMessage::ProcessStateUpdate(u) => {
                assert_eq!(u.fid, FidText::new(0x7200_0000_0000_0001, 6));
                assert_eq!(u.state, ProcessState::Stopped);
            }
            other => panic!("{other:?}"),
        }
        let bad = QueueMessage::new("t", "SNS_OP", serde_json::json!({"op_name": "x"}));
        assert!(bad
            .broadcast("bq/3")
            .expect_err("missing fid")
            .to_string()
            .contains("bq/3"));
        let other = QueueMessage::new("t", "NEW-THING", serde_json::json!(1));
        assert!(matches!(
            other.broadcast("bq/4").expect("kept"),
            BroadcastMessage::Other(_)
        ));
    }

    #[test]
    fn process_state_names_are_what_serde_writes() {
        for st in ProcessState::ALL {
            let json = serde_json::to_value(st).expect("json");
            assert_eq!(json.as_str(), Some(st.as_str()));
            let back: ProcessState = serde_json::from_value(json).expect("read back");
            assert_eq!(back, st);
        }
        assert_eq!(ProcessState::DtmRecovered.short_name(), "DTM_RECOVERED");
    }

    #[test]
    fn service_types_are_the_words_of_cfgen() {
        for t in ServiceType::ALL {
            assert_eq!(t.as_str().parse::<ServiceType>(), Ok(t));
            assert_eq!(t.to_string(), t.as_str());
        }
        // As cfgen lists a confd process: by type under the node's name, and
        // the service object's name under the node's fid.
        let pairs = [
            pair("m0conf/nodes/srvnode-1/processes/1/services/confd", "3", 1),
            pair("m0conf/nodes/srvnode-1/processes/1/services/rms", "4", 1),
            pair("m0conf/nodes/srvnode-1/processes/1/services/addb2", "5", 1),
        ];
        let tree = ConfTree::from_pairs(&pairs).expect("tree");
        let types: Vec<Option<ServiceType>> = tree
            .services_of_process_key(1)
            .into_iter()
            .map(|(t, _)| t.parse().ok())
            .collect();
        assert_eq!(
            types,
            [None, Some(ServiceType::Confd), Some(ServiceType::Rms)],
            "addb2 is not one hax uses"
        );
        assert!(ServiceType::Ios.is("ios"));
        assert!(!ServiceType::Ios.is("IOS"));
        assert!("m0_client_other".parse::<ServiceType>().is_err());
    }

    #[test]
    fn device_states_are_the_words_of_hctl_drive_state() {
        for d in DeviceState::ALL {
            assert_eq!(d.as_str().parse::<DeviceState>(), Ok(d));
            assert_eq!(d.to_string(), d.as_str());
        }
        // As `hctl drive-state` queues it.
        let m = QueueMessage::decode(
            "bq/5",
            br#"{"timestamp": "t", "message_type": "M0_HA_MSG_NVEC", "payload": {"node": "srvnode-1", "device": "/dev/sdc", "state": "rebalance"}}"#,
        )
        .expect("message");
        let BroadcastMessage::DeviceState(u) = m.broadcast("bq/5").expect("typed") else {
            panic!("{m:?}");
        };
        assert_eq!(u.device_state(), Ok(DeviceState::Rebalance));
        // The configuration tree's words, or another case, are not these.
        for word in [
            "repairing",
            "rebalancing",
            "unknown",
            "Online",
            "M0_NC_ONLINE",
        ] {
            let u = DeviceStateUpdate {
                state: word.into(),
                ..u.clone()
            };
            assert!(u.device_state().is_err(), "{word}");
        }
    }

    #[test]
    fn leader_values() {
        assert_eq!(
            LeaderValue::parse("leader", b"").expect("empty"),
            LeaderValue::Empty
        );
        assert_eq!(
            LeaderValue::parse("leader", b"elect2805").expect("placeholder"),
            LeaderValue::ElectionPlaceholder("elect2805".into())
        );
        assert_eq!(
            LeaderValue::parse("leader", b"node1").expect("node").node(),
            Some("node1")
        );
        assert_eq!(
            LeaderValue::parse("leader", b"elect").expect("node").node(),
            Some("elect")
        );
    }

    #[test]
    fn decimals() {
        assert_eq!(decode_decimal("epoch", b"12").expect("n"), 12);
        assert_eq!(decode_decimal("r", b"\"2\"").expect("n"), 2);
        assert!(decode_decimal("epoch", b"x")
            .expect_err("bad")
            .to_string()
            .contains("epoch"));
    }
}
