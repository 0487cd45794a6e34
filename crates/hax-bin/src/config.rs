//! The daemon's settings: a TOML file, then `HAX_*` environment variables,
//! then command-line options, each overriding the one before.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hax_core::Fid;
use serde::Deserialize;

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
    #[error("setting {name}: {message}")]
    Invalid {
        /// The setting.
        name: &'static str,
        /// What is wrong.
        message: String,
    },
}

/// How logs are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One human-readable line per event.
    #[default]
    Human,
    /// One JSON object per line.
    Json,
}

/// Every setting of the daemon.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
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
}

/// `[consul]`
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
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
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpSection {
    /// Where the HTTP server listens (loopback by default).
    pub bind: SocketAddr,
    /// File holding a bearer token: when set, requests need
    /// `Authorization: Bearer <token>` (all but `GET /healthz`, `GET
    /// /metrics` and the read-only API routes). Never logged.
    pub token_file: Option<PathBuf>,
}

/// `[identity]`
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IdentitySection {
    /// Local node name (default: the Consul agent's node name).
    pub node: Option<String>,
    /// hax's Motr endpoint.
    pub endpoint: Option<String>,
    /// hax's process fid.
    #[serde(default, deserialize_with = "de_fid")]
    pub process_fid: Option<Fid>,
    /// hax's HA service fid.
    #[serde(default, deserialize_with = "de_fid")]
    pub ha_service_fid: Option<Fid>,
    /// The RM service fid.
    #[serde(default, deserialize_with = "de_fid")]
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
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MotrSection {
    /// Debug options passed to the halon interface.
    pub debug_options: String,
    /// Period of the keepalive probes of the linked processes
    /// (`<node>/keepalive/<fid>`), in milliseconds; 0 turns them off.
    pub keepalive_interval_ms: u64,
}

/// `[log]`
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogSection {
    /// Human or JSON lines.
    pub format: LogFormat,
    /// A tracing filter (`info`, `hax=debug,hax_consul=info`, ...).
    pub filter: String,
}

/// `[limits]`
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
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
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StatsSection {
    /// Period of the filesystem statistics (`stats/filesystem`), in
    /// milliseconds; 0 turns them off.
    pub filesystem_interval_ms: u64,
    /// Period of the byte counts (`ioservices/...`, `bytecount/...`), in
    /// milliseconds; 0 turns them off.
    pub bytecount_interval_ms: u64,
}

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

impl Default for HttpSection {
    fn default() -> Self {
        HttpSection {
            bind: SocketAddr::from(([127, 0, 0, 1], 8008)),
            token_file: None,
        }
    }
}

impl Default for MotrSection {
    fn default() -> Self {
        MotrSection {
            debug_options: "log-entrypoint log-link log-msg".into(),
            // Three missed rounds mark a process not responding: half a
            // minute, well inside Consul's usual check periods.
            keepalive_interval_ms: 10_000,
        }
    }
}

impl MotrSection {
    /// The keepalive period, `None` when off.
    pub fn keepalive_interval(&self) -> Option<Duration> {
        (self.keepalive_interval_ms > 0).then(|| Duration::from_millis(self.keepalive_interval_ms))
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

    /// Parses TOML text.
    pub fn from_toml(text: &str) -> Result<Self, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    /// Applies `HAX_*` variables given by `lookup`: `HAX_CONSUL_ADDRESS`,
    /// `HAX_CONSUL_TOKEN_FILE`, `HAX_HTTP_BIND`, `HAX_NODE`, `HAX_ENDPOINT`,
    /// `HAX_PROCESS_FID`, `HAX_HA_SERVICE_FID`, `HAX_RM_SERVICE_FID`,
    /// `HAX_LOG_FORMAT`, `HAX_LOG`, `HAX_HTTP_TOKEN_FILE`,
    /// `HAX_STATS_FILESYSTEM_INTERVAL_MS`, `HAX_STATS_BYTECOUNT_INTERVAL_MS`,
    /// `HAX_MOTR_KEEPALIVE_INTERVAL_MS`.
    pub fn apply_env(
        &mut self,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<(), ConfigError> {
        let get = |n: &str| lookup(n).filter(|v| !v.is_empty());
        if let Some(v) = get("HAX_CONSUL_ADDRESS") {
            self.consul.address = v;
        }
        if let Some(v) = get("HAX_CONSUL_TOKEN_FILE") {
            self.consul.token_file = Some(v.into());
        }
        if let Some(v) = get("HAX_HTTP_BIND") {
            self.http.bind = parse("HAX_HTTP_BIND", &v)?;
        }
        if let Some(v) = get("HAX_NODE") {
            self.identity.node = Some(v);
        }
        if let Some(v) = get("HAX_ENDPOINT") {
            self.identity.endpoint = Some(v);
        }
        if let Some(v) = get("HAX_PROCESS_FID") {
            self.identity.process_fid = Some(parse("HAX_PROCESS_FID", &v)?);
        }
        if let Some(v) = get("HAX_HA_SERVICE_FID") {
            self.identity.ha_service_fid = Some(parse("HAX_HA_SERVICE_FID", &v)?);
        }
        if let Some(v) = get("HAX_RM_SERVICE_FID") {
            self.identity.rm_service_fid = Some(parse("HAX_RM_SERVICE_FID", &v)?);
        }
        if let Some(v) = get("HAX_LOG_FORMAT") {
            self.log.format = match v.as_str() {
                "human" => LogFormat::Human,
                "json" => LogFormat::Json,
                _ => {
                    return Err(ConfigError::Invalid {
                        name: "HAX_LOG_FORMAT",
                        message: format!("{v:?} is neither \"human\" nor \"json\""),
                    })
                }
            };
        }
        if let Some(v) = get("HAX_LOG") {
            self.log.filter = v;
        }
        if let Some(v) = get("HAX_HTTP_TOKEN_FILE") {
            self.http.token_file = Some(v.into());
        }
        if let Some(v) = get("HAX_STATS_FILESYSTEM_INTERVAL_MS") {
            self.stats.filesystem_interval_ms = parse("HAX_STATS_FILESYSTEM_INTERVAL_MS", &v)?;
        }
        if let Some(v) = get("HAX_STATS_BYTECOUNT_INTERVAL_MS") {
            self.stats.bytecount_interval_ms = parse("HAX_STATS_BYTECOUNT_INTERVAL_MS", &v)?;
        }
        if let Some(v) = get("HAX_LIMITS_BQ_RETAIN") {
            self.limits.bq_retain = parse("HAX_LIMITS_BQ_RETAIN", &v)?;
        }
        if let Some(v) = get("HAX_LIMITS_BQ_STALLED_AFTER_MS") {
            self.limits.bq_stalled_after_ms = parse("HAX_LIMITS_BQ_STALLED_AFTER_MS", &v)?;
        }
        if let Some(v) = get("HAX_LIMITS_BQ_TRIM_INTERVAL_MS") {
            self.limits.bq_trim_interval_ms = parse("HAX_LIMITS_BQ_TRIM_INTERVAL_MS", &v)?;
        }
        if let Some(v) = get("HAX_MOTR_KEEPALIVE_INTERVAL_MS") {
            self.motr.keepalive_interval_ms = parse("HAX_MOTR_KEEPALIVE_INTERVAL_MS", &v)?;
        }
        Ok(())
    }

    /// Checks values that parse but make no sense.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let fid_type = |name, fid: Option<Fid>, t: hax_core::FidType| match fid {
            Some(f) if !f.is(t) => Err(ConfigError::Invalid {
                name,
                message: format!("{f} is not a fid of type '{}'", t.letter()),
            }),
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
        if self.limits.bq_retain == 0 {
            return Err(ConfigError::Invalid {
                name: "limits.bq_retain",
                message: "must be positive (the newest entry always stays)".into(),
            });
        }
        if self.limits.event_queue == 0 || self.limits.pending_writes == 0 {
            return Err(ConfigError::Invalid {
                name: "limits",
                message: "queue bounds must be positive".into(),
            });
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
                return Err(ConfigError::Invalid {
                    name,
                    message: format!(
                        "{ms} ms is below the minimum of {} ms (0 turns it off)",
                        MIN_STATS_INTERVAL.as_millis()
                    ),
                });
            }
        }
        let ka = self.motr.keepalive_interval_ms;
        if ka != 0 && Duration::from_millis(ka) < MIN_KEEPALIVE_INTERVAL {
            return Err(ConfigError::Invalid {
                name: "motr.keepalive_interval_ms",
                message: format!(
                    "{ka} ms is below the minimum of {} ms (0 turns it off)",
                    MIN_KEEPALIVE_INTERVAL.as_millis()
                ),
            });
        }
        if self.consul.request_timeout_ms == 0 {
            return Err(ConfigError::Invalid {
                name: "consul.request_timeout_ms",
                message: "must be positive".into(),
            });
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

    /// The HTTP bearer token read from `http.token_file`, if set. An empty
    /// file is refused: it would let every request through.
    pub fn http_token(&self) -> Result<Option<hax_consul::AclToken>, ConfigError> {
        let Some(path) = &self.http.token_file else {
            return Ok(None);
        };
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.clone(),
            source,
        })?;
        let token = text.trim();
        if token.is_empty() {
            return Err(ConfigError::Invalid {
                name: "http.token_file",
                message: format!("{} is empty", path.display()),
            });
        }
        Ok(Some(hax_consul::AclToken::new(token)))
    }
}

fn parse<T: std::str::FromStr>(name: &'static str, v: &str) -> Result<T, ConfigError>
where
    T::Err: std::fmt::Display,
{
    v.parse().map_err(|e: T::Err| ConfigError::Invalid {
        name,
        message: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_bind_loopback() {
        let c = Config::default();
        assert!(c.http.bind.ip().is_loopback());
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
        let mut env = Config::default();
        env.apply_env(|n| (n == "HAX_STATS_FILESYSTEM_INTERVAL_MS").then(|| "1500".to_owned()))
            .unwrap();
        assert_eq!(env.stats.filesystem_interval_ms, 1500);
        let e = env
            .apply_env(|n| (n == "HAX_STATS_BYTECOUNT_INTERVAL_MS").then(|| "soon".to_owned()))
            .unwrap_err()
            .to_string();
        assert!(e.contains("HAX_STATS_BYTECOUNT_INTERVAL_MS"), "{e}");
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
        let mut env = Config::default();
        env.apply_env(|k| match k {
            "HAX_LIMITS_BQ_RETAIN" => Some("100".into()),
            "HAX_LIMITS_BQ_TRIM_INTERVAL_MS" => Some("250".into()),
            "HAX_LIMITS_BQ_STALLED_AFTER_MS" => Some("500".into()),
            _ => None,
        })
        .unwrap();
        assert_eq!(env.limits.bq_retain, 100);
        assert_eq!(env.bq_trim_interval(), Some(Duration::from_millis(250)));
        assert_eq!(env.limits.bq_stalled_after_ms, 500);
    }

    #[test]
    fn keepalive_interval() {
        let d = Config::default();
        assert_eq!(d.motr.keepalive_interval(), Some(Duration::from_secs(10)));
        let c = Config::from_toml("[motr]\nkeepalive_interval_ms = 0\n").unwrap();
        c.validate().unwrap();
        assert_eq!(c.motr.keepalive_interval(), None);
        assert_eq!(c.motr.debug_options, d.motr.debug_options);
        let fast = Config::from_toml("[motr]\nkeepalive_interval_ms = 20").unwrap();
        let e = fast.validate().unwrap_err().to_string();
        assert!(e.contains("motr.keepalive_interval_ms"), "{e}");
        assert!(e.contains("minimum"), "{e}");
        let e = Config::from_toml("[motr]\nkeepalive_interval_ms = -1").unwrap_err();
        assert!(e.contains("keepalive_interval_ms"), "{e}");
        let mut env = Config::default();
        env.apply_env(|n| (n == "HAX_MOTR_KEEPALIVE_INTERVAL_MS").then(|| "250".to_owned()))
            .unwrap();
        assert_eq!(
            env.motr.keepalive_interval(),
            Some(Duration::from_millis(250))
        );
        let e = env
            .apply_env(|n| (n == "HAX_MOTR_KEEPALIVE_INTERVAL_MS").then(|| "often".to_owned()))
            .unwrap_err()
            .to_string();
        assert!(e.contains("HAX_MOTR_KEEPALIVE_INTERVAL_MS"), "{e}");
    }

    #[test]
    fn http_token_file() {
        let dir = std::env::temp_dir().join(format!("hax-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("token");
        std::fs::write(&path, "s3cret\n").unwrap();
        let mut c = Config::default();
        assert!(c.http_token().unwrap().is_none());
        c.http.token_file = Some(path.clone());
        assert_eq!(c.http_token().unwrap().unwrap().expose_secret(), "s3cret");
        std::fs::write(&path, " \n").unwrap();
        assert!(c.http_token().unwrap_err().to_string().contains("empty"));
        c.http.token_file = Some(dir.join("absent"));
        assert!(c.http_token().unwrap_err().to_string().contains("absent"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn environment_overrides_the_file() {
        let mut c = Config::default();
        let env = |n: &str| match n {
            "HAX_HTTP_BIND" => Some("127.0.0.1:7000".to_owned()),
            "HAX_PROCESS_FID" => Some("0x7200000000000001:0x9".to_owned()),
            "HAX_LOG_FORMAT" => Some("json".to_owned()),
            _ => None,
        };
        c.apply_env(env).unwrap();
        assert_eq!(c.http.bind.port(), 7000);
        assert_eq!(c.identity.process_fid.map(|f| f.key), Some(9));
        assert_eq!(c.log.format, LogFormat::Json);
        let bad = |n: &str| (n == "HAX_HTTP_BIND").then(|| "nowhere".to_owned());
        assert!(c
            .apply_env(bad)
            .unwrap_err()
            .to_string()
            .contains("HAX_HTTP_BIND"));
    }
}
