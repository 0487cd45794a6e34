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

/// `[motr]`
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MotrSection {
    /// Debug options passed to the halon interface.
    pub debug_options: String,
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
        }
    }
}

impl Default for MotrSection {
    fn default() -> Self {
        MotrSection {
            debug_options: "log-entrypoint log-link log-msg".into(),
        }
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
    /// `HAX_LOG_FORMAT`, `HAX_LOG`.
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
        if self.limits.event_queue == 0 || self.limits.pending_writes == 0 {
            return Err(ConfigError::Invalid {
                name: "limits",
                message: "queue bounds must be positive".into(),
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

    /// Timeout of each Consul request.
    pub fn consul_timeout(&self) -> Duration {
        Duration::from_millis(self.consul.request_timeout_ms)
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
