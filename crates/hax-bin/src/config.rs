//! The daemon's settings: a TOML file, then `HAX_*` environment variables,
//! then command-line options, each overriding the one before. This module
//! holds the settings and the file; the environment and the command line are
//! declared once per setting in [`crate::cli`].

use std::path::{Path, PathBuf};
use std::time::Duration;

use hax_core::Fid;

use crate::listen::BindAddr;
use serde::{Deserialize, Serialize};

/// A setting that could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML for these settings.
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong, with its position.
        message: String,
    },
    /// A value is not valid.
    #[error("setting {name}{}: {message}", origin.as_ref().map(|o| format!(" (from {o})")).unwrap_or_default())]
    Invalid {
        /// The setting, as its file key (`section.key`).
        name: &'static str,
        /// Where the value came from, when known.
        origin: Option<Origin>,
        /// What is wrong.
        message: String,
    },
    /// The settings cannot be written as TOML.
    #[error("cannot write the configuration as TOML: {0}")]
    Write(String),
}

/// Where a setting's value came from: an operator told which of three places
/// to fix needs its name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    /// Nothing set it.
    Default,
    /// The configuration file.
    File(PathBuf),
    /// An environment variable.
    Env(&'static str),
    /// A command-line option (`--name`).
    Flag(String),
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Origin::Default => f.write_str("the default"),
            Origin::File(p) => write!(f, "{}", p.display()),
            Origin::Env(name) => write!(f, "environment variable {name}"),
            Origin::Flag(name) => write!(f, "option --{name}"),
        }
    }
}

/// How logs are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One human-readable line per event.
    #[default]
    Human,
    /// One JSON object per line.
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "human" => Ok(LogFormat::Human),
            "json" => Ok(LogFormat::Json),
            _ => Err("neither \"human\" nor \"json\"".into()),
        }
    }
}

/// Every setting of the daemon.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Consul agent.
    pub consul: ConsulSection,
    /// The daemon's own HTTP server.
    pub http: HttpSection,
    /// Who this hax is. Unset fields are read from Consul, as the original does.
    pub identity: IdentitySection,
    /// Motr's halon interface.
    pub motr: MotrSection,
    /// Logging.
    pub log: LogSection,
    /// Queue bounds and intervals.
    pub limits: LimitsSection,
    /// Periodic statistics written by the RC leader.
    pub stats: StatsSection,
    /// Election of the RC leader by hax.
    pub leader: LeaderSection,
}

/// `[consul]`
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConsulSection {
    /// Agent address (`host:port` or URL).
    pub address: String,
    /// File holding the ACL token (never logged).
    pub token_file: Option<PathBuf>,
    /// Timeout of each request, in milliseconds.
    pub request_timeout_ms: u64,
}

/// `[http]`
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpSection {
    /// Where the HTTP server listens (`host:port`, the host an address or
    /// a name). Unset: where the original hax listened, the node of the
    /// local `hax` catalog service and its `http_port` meta
    /// ([`crate::listen`]); `127.0.0.1:8008` when the catalog has none.
    pub bind: Option<BindAddr>,
    /// File holding a bearer token: when set, requests need
    /// `Authorization: Bearer <token>` (all but `GET /healthz`, `GET
    /// /metrics` and the read-only API routes). Never logged.
    pub token_file: Option<PathBuf>,
}

/// `[identity]`
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct IdentitySection {
    /// Local node name (default: the Consul agent's node name).
    pub node: Option<String>,
    /// hax's Motr endpoint.
    pub endpoint: Option<String>,
    /// hax's process fid.
    #[serde(default, deserialize_with = "de_fid", serialize_with = "ser_fid")]
    pub process_fid: Option<Fid>,
    /// hax's HA service fid.
    #[serde(default, deserialize_with = "de_fid", serialize_with = "ser_fid")]
    pub ha_service_fid: Option<Fid>,
    /// The RM service fid.
    #[serde(default, deserialize_with = "de_fid", serialize_with = "ser_fid")]
    pub rm_service_fid: Option<Fid>,
}

impl IdentitySection {
    /// What this section sets of hax's identity.
    pub fn overrides(&self) -> hax_ha::view::identity::IdentityOverrides {
        hax_ha::view::identity::IdentityOverrides {
            node: self.node.clone(),
            endpoint: self.endpoint.clone(),
            process_fid: self.process_fid,
            ha_service_fid: self.ha_service_fid,
            rm_service_fid: self.rm_service_fid,
        }
    }
}

/// `[motr]`
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct MotrSection {
    /// Debug options passed to the halon interface.
    pub debug_options: String,
    /// Period of the keepalive probes of the linked processes
    /// (`<node>/keepalive/<fid>`), in milliseconds; 0 turns them off.
    pub keepalive_interval_ms: u64,
    /// Keepalive rounds in a row a process that answered before may leave
    /// unanswered before its links are fenced; 0 never fences.
    pub keepalive_fence_rounds: u32,
    /// Receive buffers Motr keeps posted (1 to 100); 0 keeps the halon
    /// interface's 100, which hold about 100 MiB on libfabric.
    pub receive_buffers: u32,
}

/// `[log]`
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogSection {
    /// Human or JSON lines.
    pub format: LogFormat,
    /// A tracing filter (`info`, `hax=debug,hax_consul=info`, ...).
    pub filter: String,
}

/// `[limits]`
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsSection {
    /// Events from Motr waiting to be handled; past it the oldest writes of
    /// the same key are coalesced and new keys wait (see docs/operations.md).
    pub event_queue: usize,
    /// Pending Consul key writes before new events are held back.
    pub pending_writes: usize,
    /// How often the watched state is reread from Consul, in seconds.
    pub resync_secs: u64,
    /// Broadcast-queue entries kept for a node that stopped consuming: the
    /// RC leader deletes the entries every node has consumed, and for a
    /// node stalled (see `bq_stalled_after_ms`) all but this many newest
    /// (it misses the others when it comes back).
    pub bq_retain: u64,
    /// How long a node's offset stays unmoved, while entries wait for it,
    /// before it counts as stalled, in milliseconds.
    pub bq_stalled_after_ms: u64,
    /// How often the RC leader trims the broadcast queue, in milliseconds;
    /// 0 turns trimming off (the queue then grows without bound).
    pub bq_trim_interval_ms: u64,
}

/// `[stats]`
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct StatsSection {
    /// Period of the filesystem statistics (`stats/filesystem`), in
    /// milliseconds; 0 turns them off.
    pub filesystem_interval_ms: u64,
    /// Period of the byte counts (`ioservices/...`, `bytecount/...`), in
    /// milliseconds; 0 turns them off.
    pub bytecount_interval_ms: u64,
}

/// `[leader]`
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct LeaderSection {
    /// Elect the RC leader from hax, as hare's `elect-rc-leader` watch does:
    /// for a cluster without hare's scripts. Off, hax only reads `leader`.
    pub elect: bool,
    /// Lock-delay of the leader session, in milliseconds: after the session
    /// is invalidated (the node's Consul agent or a tied check failed), no
    /// node can take `leader` for this long. At most 60000 (Consul's bound).
    pub lock_delay_ms: u64,
    /// Tie the session also to the health checks of this node's confd and
    /// hax services, as hare does (else to `serfHealth` alone).
    pub service_checks: bool,
}

impl Default for LeaderSection {
    fn default() -> Self {
        LeaderSection {
            elect: false,
            lock_delay_ms: hax_ha::leader::elect::DEFAULT_LOCK_DELAY.as_millis() as u64,
            service_checks: true,
        }
    }
}

impl LeaderSection {
    /// The election's settings for node `node`, `None` when off.
    pub fn elect_config(&self, node: &str) -> Option<hax_ha::leader::elect::ElectConfig> {
        if !self.elect {
            return None;
        }
        let mut c = hax_ha::leader::elect::ElectConfig::new(node);
        c.lock_delay = Duration::from_millis(self.lock_delay_ms);
        if !self.service_checks {
            c.services.clear();
        }
        Some(c)
    }
}

/// The longest lock-delay Consul takes.
pub const MAX_LOCK_DELAY: Duration = Duration::from_secs(60);

/// The longest period or timeout: longer ones are mistakes, and would
/// overflow the clock arithmetic of the timers they set.
pub const MAX_PERIOD: Duration = Duration::from_secs(365 * 86_400);

/// The largest queue bound (tokio's largest bounded channel).
pub const MAX_QUEUE_BOUND: usize = tokio::sync::Semaphore::MAX_PERMITS;

/// The shortest keepalive period: each round sends a message on every link
/// and may write a key per process.
pub const MIN_KEEPALIVE_INTERVAL: Duration = Duration::from_millis(100);

/// The shortest period a statistics updater may have: each run makes Motr
/// calls that reach every ioservice.
pub const MIN_STATS_INTERVAL: Duration = Duration::from_millis(100);

impl Default for StatsSection {
    fn default() -> Self {
        // The original ran both every 600 s as a workaround for a Motr
        // problem. Filesystem statistics are one call answered by every
        // ioservice and are what capacity displays read: a minute keeps
        // them current at no real cost. Byte counts cost a call per
        // ioservice and per pool version plus a key per (ioservice, pool
        // version, user), and only move with the data: five minutes.
        StatsSection {
            filesystem_interval_ms: 60_000,
            bytecount_interval_ms: 300_000,
        }
    }
}

impl StatsSection {
    /// The filesystem statistics period, `None` when off.
    pub fn filesystem_interval(&self) -> Option<Duration> {
        (self.filesystem_interval_ms > 0)
            .then(|| Duration::from_millis(self.filesystem_interval_ms))
    }

    /// The byte count period, `None` when off.
    pub fn bytecount_interval(&self) -> Option<Duration> {
        (self.bytecount_interval_ms > 0).then(|| Duration::from_millis(self.bytecount_interval_ms))
    }
}

impl Default for ConsulSection {
    fn default() -> Self {
        ConsulSection {
            address: "127.0.0.1:8500".into(),
            token_file: None,
            request_timeout_ms: 10_000,
        }
    }
}

impl Default for MotrSection {
    fn default() -> Self {
        MotrSection {
            debug_options: String::new(),
            // Three missed rounds mark a process not responding: half a
            // minute, well inside Consul's usual check periods.
            keepalive_interval_ms: 10_000,
            // A minute of silence: twice the time that marks a process not
            // responding, so an alert comes first, and past the 30 s a
            // loaded m0d may take to answer an HA message.
            keepalive_fence_rounds: 6,
            // Four times m0d's own queue (2): idle RSS on libfabric 56 MB
            // instead of 150 (docs/motr.md, "Where hax's memory goes").
            receive_buffers: 8,
        }
    }
}

impl MotrSection {
    /// The keepalive period, `None` when off.
    pub fn keepalive_interval(&self) -> Option<Duration> {
        (self.keepalive_interval_ms > 0).then(|| Duration::from_millis(self.keepalive_interval_ms))
    }

    /// The missed rounds after which a process is fenced, `None` when never.
    pub fn keepalive_fence_after(&self) -> Option<u32> {
        (self.keepalive_fence_rounds > 0).then_some(self.keepalive_fence_rounds)
    }
}

impl Default for LogSection {
    fn default() -> Self {
        LogSection {
            format: LogFormat::Human,
            filter: "info".into(),
        }
    }
}

impl Default for LimitsSection {
    fn default() -> Self {
        LimitsSection {
            event_queue: 65_536,
            pending_writes: 16_384,
            resync_secs: 60,
            bq_retain: 4096,
            bq_stalled_after_ms: 120_000,
            bq_trim_interval_ms: 10_000,
        }
    }
}

// Fids are written as Motr prints them, which `de_fid` reads back.
fn ser_fid<S: serde::Serializer>(fid: &Option<Fid>, s: S) -> Result<S::Ok, S::Error> {
    match fid {
        Some(f) => s.serialize_some(&f.to_string()),
        None => s.serialize_none(),
    }
}

fn de_fid<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Fid>, D::Error> {
    let s: Option<String> = Option::deserialize(d)?;
    s.map(|s| s.parse().map_err(serde::de::Error::custom))
        .transpose()
}

impl Config {
    /// Reads a TOML file.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_toml(&text).map_err(|message| ConfigError::Parse {
            path: path.to_owned(),
            message,
        })
    }

    /// Reads a TOML file, and tells which settings it sets (`section.key`):
    /// the others keep their defaults.
    pub fn from_file_with_keys(path: &Path) -> Result<(Self, Vec<String>), ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let parse_error = |message| ConfigError::Parse {
            path: path.to_owned(),
            message,
        };
        let c = Self::from_toml(&text).map_err(parse_error)?;
        let table: toml::Table = toml::from_str(&text).map_err(|e| parse_error(e.to_string()))?;
        let keys = table
            .iter()
            .filter_map(|(section, t)| Some((section, t.as_table()?)))
            .flat_map(|(section, t)| t.keys().map(move |k| format!("{section}.{k}")))
            .collect();
        Ok((c, keys))
    }

    /// Parses TOML text.
    pub fn from_toml(text: &str) -> Result<Self, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    /// The settings as TOML, which [`Config::from_toml`] reads back as they
    /// are (unset settings are left out). Values [`Config::validate`]
    /// accepts always fit.
    pub fn to_toml(&self) -> Result<String, ConfigError> {
        toml::to_string(self).map_err(|e| ConfigError::Write(e.to_string()))
    }

    /// Checks values that parse but make no sense.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |name, message| {
            Err(ConfigError::Invalid {
                name,
                origin: None,
                message,
            })
        };
        let fid_type = |name, fid: Option<Fid>, t: hax_core::FidType| match fid {
            Some(f) if !f.is(t) => {
                invalid(name, format!("{f} is not a fid of type '{}'", t.letter()))
            }
            _ => Ok(()),
        };
        fid_type(
            "identity.process_fid",
            self.identity.process_fid,
            hax_core::FidType::Process,
        )?;
        fid_type(
            "identity.ha_service_fid",
            self.identity.ha_service_fid,
            hax_core::FidType::Service,
        )?;
        fid_type(
            "identity.rm_service_fid",
            self.identity.rm_service_fid,
            hax_core::FidType::Service,
        )?;
        let l = &self.limits;
        for (name, bound) in [
            ("limits.event_queue", l.event_queue),
            ("limits.pending_writes", l.pending_writes),
        ] {
            if bound == 0 {
                return invalid(name, "must be positive".into());
            }
            // Tokio refuses (panics on) a bounded queue any larger.
            if bound > MAX_QUEUE_BOUND {
                return invalid(
                    name,
                    format!("{bound} is above the maximum of {MAX_QUEUE_BOUND}"),
                );
            }
        }
        if l.bq_retain == 0 {
            return invalid(
                "limits.bq_retain",
                "must be positive (the newest entry always stays)".into(),
            );
        }
        // Larger than TOML's integers: `--check-config` could not print it.
        if l.bq_retain > i64::MAX as u64 {
            return invalid(
                "limits.bq_retain",
                format!("{} is above the maximum of {}", l.bq_retain, i64::MAX),
            );
        }
        for (name, period) in [
            (
                "consul.request_timeout_ms",
                Duration::from_millis(self.consul.request_timeout_ms),
            ),
            (
                "motr.keepalive_interval_ms",
                Duration::from_millis(self.motr.keepalive_interval_ms),
            ),
            ("limits.resync_secs", Duration::from_secs(l.resync_secs)),
            (
                "limits.bq_stalled_after_ms",
                Duration::from_millis(l.bq_stalled_after_ms),
            ),
            (
                "limits.bq_trim_interval_ms",
                Duration::from_millis(l.bq_trim_interval_ms),
            ),
            (
                "stats.filesystem_interval_ms",
                Duration::from_millis(self.stats.filesystem_interval_ms),
            ),
            (
                "stats.bytecount_interval_ms",
                Duration::from_millis(self.stats.bytecount_interval_ms),
            ),
        ] {
            if period > MAX_PERIOD {
                return invalid(
                    name,
                    format!(
                        "{period:?} is above the maximum of {} days",
                        MAX_PERIOD.as_secs() / 86_400
                    ),
                );
            }
        }
        for (name, ms) in [
            (
                "stats.filesystem_interval_ms",
                self.stats.filesystem_interval_ms,
            ),
            (
                "stats.bytecount_interval_ms",
                self.stats.bytecount_interval_ms,
            ),
        ] {
            if ms != 0 && Duration::from_millis(ms) < MIN_STATS_INTERVAL {
                return invalid(
                    name,
                    format!(
                        "{ms} ms is below the minimum of {} ms (0 turns it off)",
                        MIN_STATS_INTERVAL.as_millis()
                    ),
                );
            }
        }
        let ka = self.motr.keepalive_interval_ms;
        if ka != 0 && Duration::from_millis(ka) < MIN_KEEPALIVE_INTERVAL {
            return invalid(
                "motr.keepalive_interval_ms",
                format!(
                    "{ka} ms is below the minimum of {} ms (0 turns it off)",
                    MIN_KEEPALIVE_INTERVAL.as_millis()
                ),
            );
        }
        let fence = self.motr.keepalive_fence_rounds;
        if fence != 0 && fence < hax_ha::motr::keepalive::MISS_LIMIT {
            return invalid(
                "motr.keepalive_fence_rounds",
                format!(
                    "{fence} is below the {} rounds that mark a process not responding (0 never fences)",
                    hax_ha::motr::keepalive::MISS_LIMIT
                ),
            );
        }
        if self.motr.receive_buffers > hax_core::RECEIVE_BUFFERS_MAX {
            return invalid(
                "motr.receive_buffers",
                format!(
                    "{} is above the halon interface's pool of {} (0 keeps it)",
                    self.motr.receive_buffers,
                    hax_core::RECEIVE_BUFFERS_MAX
                ),
            );
        }
        let lock_delay = Duration::from_millis(self.leader.lock_delay_ms);
        if lock_delay > MAX_LOCK_DELAY {
            return invalid(
                "leader.lock_delay_ms",
                format!(
                    "{} ms is above Consul's maximum of {} ms",
                    self.leader.lock_delay_ms,
                    MAX_LOCK_DELAY.as_millis()
                ),
            );
        }
        if self.consul.request_timeout_ms == 0 {
            return invalid("consul.request_timeout_ms", "must be positive".into());
        }
        if let Err(e) = hax_consul::ConsulConfig::new(self.consul.address.clone()).check() {
            return invalid("consul.address", e.to_string());
        }
        // Refused here rather than when logging starts, so that
        // `--check-config` catches it too.
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log.filter) {
            return invalid(
                "log.filter",
                format!("{:?} is not a tracing filter: {e}", self.log.filter),
            );
        }
        Ok(())
    }

    /// Period of the broadcast-queue trimming, `None` when off.
    pub fn bq_trim_interval(&self) -> Option<Duration> {
        (self.limits.bq_trim_interval_ms > 0)
            .then(|| Duration::from_millis(self.limits.bq_trim_interval_ms))
    }

    /// Timeout of each Consul request.
    pub fn consul_timeout(&self) -> Duration {
        Duration::from_millis(self.consul.request_timeout_ms)
    }

    /// The Consul client's settings: the agent's address, each request's
    /// timeout (at most `wait`) and `token`.
    pub fn consul_config(
        &self,
        wait: Duration,
        token: Option<hax_consul::AclToken>,
    ) -> hax_consul::ConsulConfig {
        let mut cc = hax_consul::ConsulConfig::new(self.consul.address.clone());
        cc.request_timeout = self.consul_timeout().min(wait);
        cc.token = token;
        cc
    }

    /// The tokens the settings name files of, read. A file that cannot be
    /// read, or holds nothing but blanks, is refused with the setting's
    /// name: an empty HTTP token would let every request through, an empty
    /// Consul token is Consul's anonymous one (leave the setting out for
    /// that). `--check-config` reads them too, so that it refuses what a
    /// start would. Without `consul.token_file`, the Consul token is
    /// `CONSUL_HTTP_TOKEN`'s, as hare sets it.
    pub fn secrets(&self) -> Result<Secrets, ConfigError> {
        self.secrets_with(|name| std::env::var(name).ok())
    }

    /// [`Config::secrets`], with the environment read through `lookup`.
    pub fn secrets_with(
        &self,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<Secrets, ConfigError> {
        Ok(Secrets {
            consul_token: self.consul_token_with(lookup)?,
            http_token: self.http_token()?,
        })
    }

    /// The bearer token of `http.token_file`, read now; `None` when unset.
    pub fn http_token(&self) -> Result<Option<hax_consul::AclToken>, ConfigError> {
        read_token("http.token_file", self.http.token_file.as_deref())
    }

    /// The Consul ACL token of `consul.token_file`, read now, or else
    /// `CONSUL_HTTP_TOKEN`'s; `None` when neither is set.
    pub fn consul_token(&self) -> Result<Option<hax_consul::AclToken>, ConfigError> {
        self.consul_token_with(|name| std::env::var(name).ok())
    }

    /// [`Config::consul_token`], with the environment read through `lookup`.
    pub fn consul_token_with(
        &self,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<hax_consul::AclToken>, ConfigError> {
        match self.consul.token_file.as_deref() {
            Some(path) => read_token("consul.token_file", Some(path)),
            None => Ok(crate::hare_env::consul_token(lookup)),
        }
    }
}

/// What the files named by the settings hold; never logged.
#[derive(Debug, Clone, Default)]
pub struct Secrets {
    /// From `consul.token_file`.
    pub consul_token: Option<hax_consul::AclToken>,
    /// From `http.token_file`.
    pub http_token: Option<hax_consul::AclToken>,
}

fn read_token(
    name: &'static str,
    path: Option<&Path>,
) -> Result<Option<hax_consul::AclToken>, ConfigError> {
    let Some(path) = path else {
        return Ok(None);
    };
    let invalid = |message| ConfigError::Invalid {
        name,
        origin: None,
        message,
    };
    let text = std::fs::read_to_string(path)
        .map_err(|e| invalid(format!("cannot read {}: {e}", path.display())))?;
    let token = text.trim();
    if token.is_empty() {
        return Err(invalid(format!("{} is empty", path.display())));
    }
    Ok(Some(hax_consul::AclToken::new(token)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bind_defaults_to_the_catalog() {
        let c = Config::default();
        assert_eq!(c.http.bind, None);
        assert_eq!(Config::from_toml("").unwrap(), c);
    }

    #[test]
    fn reads_every_section() {
        let c = Config::from_toml(
            r#"
            [consul]
            address = "http://127.0.0.1:9500"
            token_file = "/etc/hax/token"
            [http]
            bind = "127.0.0.1:9008"
            [identity]
            node = "ssu1"
            endpoint = "inet:tcp:127.0.0.1@22001"
            process_fid = "0x7200000000000001:0x6"
            ha_service_fid = "0x7300000000000001:0x7"
            rm_service_fid = "0x7300000000000001:0x9"
            [log]
            format = "json"
            filter = "debug"
            [limits]
            event_queue = 10
            "#,
        )
        .unwrap();
        assert_eq!(c.consul.address, "http://127.0.0.1:9500");
        assert_eq!(
            c.identity.process_fid,
            Some("0x7200000000000001:0x6".parse().unwrap())
        );
        assert_eq!(c.log.format, LogFormat::Json);
        assert_eq!(c.limits.event_queue, 10);
        assert_eq!(
            c.limits.pending_writes,
            LimitsSection::default().pending_writes
        );
        c.validate().unwrap();
    }

    #[test]
    fn bad_input_is_a_clear_error() {
        let e = Config::from_toml("[consul]\nadress = \"x\"").unwrap_err();
        assert!(e.contains("unknown field `adress`"), "{e}");
        let e = Config::from_toml("[identity]\nprocess_fid = \"0x72:zz\"").unwrap_err();
        assert!(e.contains("invalid fid"), "{e}");
        let e = Config::from_toml("[http]\nbind = 8008").unwrap_err();
        assert!(e.contains("bind"), "{e}");
        let c = Config::from_toml("[identity]\nprocess_fid = \"0x7300000000000001:0x6\"").unwrap();
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("not a fid of type 'r'"));
    }

    #[test]
    fn stats_intervals() {
        let c =
            Config::from_toml("[stats]\nfilesystem_interval_ms = 250\nbytecount_interval_ms = 0\n")
                .unwrap();
        c.validate().unwrap();
        assert_eq!(
            c.stats.filesystem_interval(),
            Some(Duration::from_millis(250))
        );
        assert_eq!(c.stats.bytecount_interval(), None);
        let d = Config::default();
        assert_eq!(d.stats.filesystem_interval(), Some(Duration::from_secs(60)));
        assert_eq!(d.stats.bytecount_interval(), Some(Duration::from_secs(300)));
        let fast = Config::from_toml("[stats]\nbytecount_interval_ms = 5").unwrap();
        let e = fast.validate().unwrap_err().to_string();
        assert!(e.contains("stats.bytecount_interval_ms"), "{e}");
    }

    #[test]
    fn bq_trimming() {
        let d = Config::default();
        assert_eq!(d.limits.bq_retain, 4096);
        assert_eq!(d.bq_trim_interval(), Some(Duration::from_secs(10)));
        let off = Config::from_toml("[limits]\nbq_trim_interval_ms = 0\n").unwrap();
        assert_eq!(off.bq_trim_interval(), None);
        let zero = Config::from_toml("[limits]\nbq_retain = 0\n").unwrap();
        let e = zero.validate().unwrap_err().to_string();
        assert!(e.contains("limits.bq_retain"), "{e}");
    }

    #[test]
    fn leader_election_is_off_unless_asked() {
        let d = Config::default();
        assert!(d.leader.elect_config("n1").is_none());
        let c = Config::from_toml("[leader]\nelect = true\n").unwrap();
        c.validate().unwrap();
        let e = c.leader.elect_config("n1").expect("on");
        assert_eq!(e.node, "n1");
        assert_eq!(e.lock_delay, Duration::from_secs(2));
        assert_eq!(e.services, ["confd", "hax"]);
        let c = Config::from_toml(
            "[leader]\nelect = true\nlock_delay_ms = 0\nservice_checks = false\n",
        )
        .unwrap();
        c.validate().unwrap();
        let e = c.leader.elect_config("n1").expect("on");
        assert_eq!(e.lock_delay, Duration::ZERO);
        assert!(e.services.is_empty());
        let long = Config::from_toml("[leader]\nlock_delay_ms = 60001\n").unwrap();
        let e = long.validate().unwrap_err().to_string();
        assert!(e.contains("leader.lock_delay_ms"), "{e}");
    }

    #[test]
    fn keepalive_interval() {
        let d = Config::default();
        assert_eq!(d.motr.keepalive_interval(), Some(Duration::from_secs(10)));
        let c = Config::from_toml("[motr]\nkeepalive_interval_ms = 0\n").unwrap();
        c.validate().unwrap();
        assert_eq!(c.motr.keepalive_interval(), None);
        assert_eq!(c.motr.debug_options, d.motr.debug_options);
        assert_eq!(d.motr.keepalive_fence_after(), Some(6));
        let c = Config::from_toml("[motr]\nkeepalive_fence_rounds = 0\n").unwrap();
        c.validate().unwrap();
        assert_eq!(c.motr.keepalive_fence_after(), None);
        let c = Config::from_toml("[motr]\nkeepalive_fence_rounds = 2\n").unwrap();
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("motr.keepalive_fence_rounds"), "{e}");
        let fast = Config::from_toml("[motr]\nkeepalive_interval_ms = 20").unwrap();
        let e = fast.validate().unwrap_err().to_string();
        assert!(e.contains("motr.keepalive_interval_ms"), "{e}");
        assert!(e.contains("minimum"), "{e}");
        let e = Config::from_toml("[motr]\nkeepalive_interval_ms = -1").unwrap_err();
        assert!(e.contains("keepalive_interval_ms"), "{e}");
    }

    #[test]
    fn receive_buffers_are_bounded_by_motrs_pool() {
        assert_eq!(Config::default().motr.receive_buffers, 8);
        for ok in [0, 1, 100] {
            let c = Config::from_toml(&format!("[motr]\nreceive_buffers = {ok}\n")).unwrap();
            c.validate().unwrap();
        }
        let over = Config::from_toml("[motr]\nreceive_buffers = 101\n").unwrap();
        let e = over.validate().unwrap_err().to_string();
        assert!(e.contains("motr.receive_buffers"), "{e}");
        assert!(e.contains("100"), "{e}");
    }

    #[test]
    fn token_files() {
        let dir = std::env::temp_dir().join(format!("hax-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("token");
        std::fs::write(&path, "s3cret\n").unwrap();
        let mut c = Config::default();
        let none = c.secrets().unwrap();
        assert!(none.http_token.is_none() && none.consul_token.is_none());
        c.http.token_file = Some(path.clone());
        c.consul.token_file = Some(path.clone());
        let s = c.secrets().unwrap();
        assert_eq!(s.http_token.unwrap().expose_secret(), "s3cret");
        assert_eq!(s.consul_token.unwrap().expose_secret(), "s3cret");
        let refused = |c: &Config, name: &str, needle: &str| {
            let e = c.secrets().unwrap_err();
            assert!(
                matches!(&e, ConfigError::Invalid { name: n, .. } if *n == name),
                "{e}"
            );
            assert!(e.to_string().contains(needle), "{e}");
        };
        std::fs::write(&path, " \n").unwrap();
        refused(&c, "consul.token_file", "is empty");
        c.consul.token_file = None;
        refused(&c, "http.token_file", "is empty");
        c.http.token_file = Some(dir.join("absent"));
        refused(&c, "http.token_file", "absent");
        c.http.token_file = None;
        c.consul.token_file = Some(dir.join("absent"));
        refused(&c, "consul.token_file", "cannot read");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn consul_addresses_are_checked_as_a_start_would() {
        for good in ["127.0.0.1:8500", "http://[::1]:8500", "consul.local:8500"] {
            let mut c = Config::default();
            c.consul.address = good.into();
            c.validate().unwrap_or_else(|e| panic!("{good}: {e}"));
        }
        for bad in [
            "http://[::1",
            "ftp://127.0.0.1:8500",
            "http://127.0.0.1:8500/v1",
        ] {
            let mut c = Config::default();
            c.consul.address = bad.into();
            let e = c.validate().unwrap_err();
            assert!(
                matches!(
                    &e,
                    ConfigError::Invalid {
                        name: "consul.address",
                        ..
                    }
                ),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn every_setting_is_written_as_toml_that_reads_back() {
        let mut c = Config::default();
        c.consul.token_file = Some("/etc/hax/consul token".into());
        c.http.token_file = Some("/etc/hax/http-token".into());
        c.identity = IdentitySection {
            node: Some("srvnode-1".into()),
            endpoint: Some("inet:tcp:10.0.0.1@22001".into()),
            process_fid: Some("0x7200000000000001:0x6".parse().unwrap()),
            ha_service_fid: Some("0x7300000000000001:0x7".parse().unwrap()),
            rm_service_fid: Some("0x7300000000000001:0xb".parse().unwrap()),
        };
        c.log.format = LogFormat::Json;
        c.log.filter = "info,hax_glue=warn".into();
        c.limits.bq_retain = i64::MAX as u64;
        c.validate().unwrap();
        let text = c.to_toml().unwrap();
        assert!(
            text.contains("process_fid = \"0x7200000000000001:0x6\""),
            "{text}"
        );
        assert_eq!(Config::from_toml(&text).unwrap(), c, "{text}");
        let d = Config::default();
        assert_eq!(Config::from_toml(&d.to_toml().unwrap()).unwrap(), d);
    }

    #[test]
    fn out_of_range_values_are_refused_by_name() {
        let refused = |text: &str, name: &str| {
            let e = Config::from_toml(text).unwrap().validate().unwrap_err();
            assert!(
                matches!(&e, ConfigError::Invalid { name: n, .. } if *n == name),
                "{text}: {e}"
            );
        };
        refused("[limits]\nevent_queue = 0", "limits.event_queue");
        refused("[limits]\npending_writes = 0", "limits.pending_writes");
        refused(
            "[limits]\nevent_queue = 9223372036854775807",
            "limits.event_queue",
        );
        refused(
            "[limits]\nresync_secs = 9223372036854775807",
            "limits.resync_secs",
        );
        refused(
            "[consul]\nrequest_timeout_ms = 0",
            "consul.request_timeout_ms",
        );
        refused(
            "[limits]\nbq_stalled_after_ms = 31536000001",
            "limits.bq_stalled_after_ms",
        );
        refused("[log]\nfilter = \"hax=loud\"", "log.filter");
        let mut big = Config::default();
        big.limits.bq_retain = u64::MAX;
        assert!(big
            .validate()
            .unwrap_err()
            .to_string()
            .contains("limits.bq_retain"));
        // The longest period itself is accepted.
        Config::from_toml("[limits]\nbq_stalled_after_ms = 31536000000")
            .unwrap()
            .validate()
            .unwrap();
    }
}
