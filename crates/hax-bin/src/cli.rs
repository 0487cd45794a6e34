//! The `hax` command line: every setting of [`Config`] can be given here, and
//! overrides the configuration file and the `HAX_*` environment.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;
use hax_core::Fid;

use crate::config::{Config, ConfigError, LogFormat};

/// hax: the HA link eXtender between Motr m0d processes and Consul.
///
/// Settings come from the configuration file (TOML), then HAX_* environment
/// variables, then these options. Unset identity settings are read from
/// Consul (the `hax` service registered on the local node).
#[derive(Debug, Parser)]
#[command(name = "hax", version)]
pub struct Args {
    /// Configuration file (TOML).
    #[arg(short, long, env = "HAX_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Consul agent address (host:port or URL).
    #[arg(long, value_name = "ADDR")]
    pub consul_address: Option<String>,
    /// File holding the Consul ACL token.
    #[arg(long, value_name = "FILE")]
    pub consul_token_file: Option<PathBuf>,
    /// Address of the HTTP server (watch handlers, /metrics, /healthz).
    #[arg(long, value_name = "ADDR:PORT")]
    pub http_bind: Option<SocketAddr>,
    /// File holding the bearer token HTTP requests must carry.
    #[arg(long, value_name = "FILE")]
    pub http_token_file: Option<PathBuf>,
    /// Period of the filesystem statistics in milliseconds (0: off).
    #[arg(long, value_name = "MS")]
    pub stats_filesystem_interval_ms: Option<u64>,
    /// Period of the byte counts in milliseconds (0: off).
    #[arg(long, value_name = "MS")]
    pub stats_bytecount_interval_ms: Option<u64>,
    /// Local node name.
    #[arg(long)]
    pub node: Option<String>,
    /// hax's Motr endpoint.
    #[arg(long, value_name = "ENDPOINT")]
    pub endpoint: Option<String>,
    /// hax's process fid (0x7200000000000001:0x6).
    #[arg(long, value_name = "FID")]
    pub process_fid: Option<Fid>,
    /// hax's HA service fid.
    #[arg(long, value_name = "FID")]
    pub ha_service_fid: Option<Fid>,
    /// The principal RM service fid.
    #[arg(long, value_name = "FID")]
    pub rm_service_fid: Option<Fid>,
    /// Motr debug options.
    #[arg(long, value_name = "OPTIONS")]
    pub motr_debug_options: Option<String>,
    /// Period of the keepalive probes of linked processes in milliseconds (0: off).
    #[arg(long, value_name = "MS")]
    pub motr_keepalive_interval_ms: Option<u64>,
    /// Log format.
    #[arg(long, value_enum)]
    pub log_format: Option<LogFormat>,
    /// Log filter (e.g. `info`, `hax_bin=debug`).
    #[arg(long, value_name = "FILTER")]
    pub log: Option<String>,
    /// Print the effective configuration and exit.
    #[arg(long)]
    pub check_config: bool,
}

impl Args {
    /// The effective configuration: file, then environment (`lookup`), then
    /// these options; validated.
    pub fn config(&self, lookup: impl Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let mut c = match &self.config {
            Some(path) => Config::from_file(path)?,
            None => Config::default(),
        };
        c.apply_env(lookup)?;
        if let Some(v) = &self.consul_address {
            c.consul.address = v.clone();
        }
        if let Some(v) = &self.consul_token_file {
            c.consul.token_file = Some(v.clone());
        }
        if let Some(v) = self.http_bind {
            c.http.bind = v;
        }
        if let Some(v) = &self.http_token_file {
            c.http.token_file = Some(v.clone());
        }
        if let Some(v) = self.stats_filesystem_interval_ms {
            c.stats.filesystem_interval_ms = v;
        }
        if let Some(v) = self.stats_bytecount_interval_ms {
            c.stats.bytecount_interval_ms = v;
        }
        if let Some(v) = &self.node {
            c.identity.node = Some(v.clone());
        }
        if let Some(v) = &self.endpoint {
            c.identity.endpoint = Some(v.clone());
        }
        c.identity.process_fid = self.process_fid.or(c.identity.process_fid);
        c.identity.ha_service_fid = self.ha_service_fid.or(c.identity.ha_service_fid);
        c.identity.rm_service_fid = self.rm_service_fid.or(c.identity.rm_service_fid);
        if let Some(v) = &self.motr_debug_options {
            c.motr.debug_options = v.clone();
        }
        if let Some(v) = self.motr_keepalive_interval_ms {
            c.motr.keepalive_interval_ms = v;
        }
        if let Some(v) = self.log_format {
            c.log.format = v;
        }
        if let Some(v) = &self.log {
            c.log.filter = v.clone();
        }
        c.validate()?;
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_override_the_environment() {
        let args = Args::try_parse_from([
            "hax",
            "--http-bind",
            "127.0.0.1:9100",
            "--process-fid",
            "0x7200000000000001:0x6",
            "--log-format",
            "json",
        ])
        .unwrap();
        let env = |n: &str| (n == "HAX_HTTP_BIND").then(|| "127.0.0.1:9000".to_owned());
        let c = args.config(env).unwrap();
        assert_eq!(c.http.bind.port(), 9100);
        assert_eq!(c.identity.process_fid.map(|f| f.key), Some(6));
        assert_eq!(c.log.format, LogFormat::Json);
    }

    #[test]
    fn stats_and_token_options() {
        let args = Args::try_parse_from([
            "hax",
            "--stats-filesystem-interval-ms",
            "200",
            "--stats-bytecount-interval-ms",
            "0",
            "--http-token-file",
            "/etc/hax/http-token",
        ])
        .unwrap();
        let env = |n: &str| (n == "HAX_STATS_FILESYSTEM_INTERVAL_MS").then(|| "9000".to_owned());
        let c = args.config(env).unwrap();
        assert_eq!(c.stats.filesystem_interval_ms, 200);
        assert_eq!(c.stats.bytecount_interval(), None);
        assert_eq!(
            c.http.token_file.as_deref(),
            Some(std::path::Path::new("/etc/hax/http-token"))
        );
        let e = Args::try_parse_from(["hax", "--stats-bytecount-interval-ms", "1"])
            .unwrap()
            .config(|_| None)
            .unwrap_err();
        assert!(e.to_string().contains("minimum"), "{e}");
    }

    #[test]
    fn keepalive_option() {
        let args = Args::try_parse_from(["hax", "--motr-keepalive-interval-ms", "200"]).unwrap();
        let env = |n: &str| (n == "HAX_MOTR_KEEPALIVE_INTERVAL_MS").then(|| "0".to_owned());
        let c = args.config(env).unwrap();
        assert_eq!(c.motr.keepalive_interval_ms, 200);
        let off = Args::try_parse_from(["hax"]).unwrap().config(env).unwrap();
        assert_eq!(off.motr.keepalive_interval(), None);
        let e = Args::try_parse_from(["hax", "--motr-keepalive-interval-ms", "5"])
            .unwrap()
            .config(|_| None)
            .unwrap_err();
        assert!(e.to_string().contains("motr.keepalive_interval_ms"), "{e}");
        let e = Args::try_parse_from(["hax", "--motr-keepalive-interval-ms", "soon"]).unwrap_err();
        assert!(e.to_string().contains("soon"), "{e}");
    }

    #[test]
    fn bad_values_are_refused_by_the_parser() {
        let e = Args::try_parse_from(["hax", "--process-fid", "nope"]).unwrap_err();
        assert!(e.to_string().contains("invalid fid"), "{e}");
        let e = Args::try_parse_from(["hax", "--rm-service-fid", "0x7200000000000001:0x1"])
            .unwrap()
            .config(|_| None)
            .unwrap_err();
        assert!(e.to_string().contains("not a fid of type 's'"), "{e}");
    }
}
