//! The `hax` command line: every setting of [`Config`] can be given here or
//! in its `HAX_*` environment variable, and overrides the configuration file.
//! Without a command `hax` runs the daemon; the commands ([`Command`]) ask a
//! running daemon, or Consul, and print what they learn.
//!
//! Each setting is declared once, in `settings!` below: its option, its variable
//! (read by clap) and the field it sets. Values are taken as text and parsed
//! here rather than by clap, so that an error can say where a bad value came
//! from (clap does not tell an environment variable from an option).

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use clap::parser::ValueSource;
use clap::{ArgMatches, CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};
use hax_core::Fid;

use crate::config::{Config, ConfigError, LogFormat, Origin};
use crate::listen::BindAddr;

/// `hax --version`: the version and the Motr backend it was built for
/// (hax-core's `BACKEND`, which a test checks it names).
#[cfg(feature = "motr")]
pub const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (backend: motr)");
/// `hax --version`: the version and the Motr backend it was built for
/// (hax-core's `BACKEND`, which a test checks it names).
#[cfg(not(feature = "motr"))]
pub const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (backend: emulator)");

/// Where the commands look for the daemon's configuration when neither
/// `--config` nor `HAX_CONFIG` names one: the file the systemd unit gives
/// the daemon (`dist/hax.service`).
pub const DEFAULT_CONFIG: &str = "/etc/hax/hax.toml";

/// hax: the HA link eXtender between Motr m0d processes and Consul.
///
/// Without a command, runs the daemon. Settings come from the configuration
/// file (TOML), then HAX_* environment variables, then these options. Unset
/// identity settings are read from Consul (the `hax` service registered on
/// the local node).
///
/// The commands `status` and `sns` ask the running daemon instead, found
/// through the same settings (http.bind, http.token_file; consul.address
/// for `status --consul`), read from /etc/hax/hax.toml when no --config is
/// given. Exit status: 0 done, 1 the daemon or Consul could not be reached
/// or refused, 2 a usage or configuration error.
#[derive(Debug, Parser)]
#[command(name = "hax", version = VERSION)]
pub struct Args {
    /// Configuration file (TOML).
    #[arg(short, long, env = "HAX_CONFIG", value_name = "FILE", global = true)]
    pub config: Option<PathBuf>,
    /// Every setting of the file.
    #[command(flatten)]
    pub settings: Settings,
    /// Print the effective configuration (TOML) and exit.
    #[arg(long)]
    pub check_config: bool,
    /// A command for a running hax; none runs the daemon.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Where each setting given here came from; `None` when built by
    /// clap's own `Parser` methods, which do not tell (use
    /// [`Args::from_env`] or [`Args::try_from_args`]).
    #[arg(skip)]
    origins: Option<Vec<(&'static str, Origin)>>,
}

/// The whole `hax` command line, subcommands included: what the man page and
/// the shell completions of the package are made from (crate hax-dist).
pub fn command() -> clap::Command {
    Args::command()
}

/// One setting of [`Config`] and the two other ways to give it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Setting {
    /// The file key, `section.key`.
    pub key: &'static str,
    /// The field of [`Settings`] that holds it (clap's id).
    pub id: &'static str,
    /// The environment variable.
    pub env: &'static str,
}

impl Setting {
    /// The command-line option, without its `--`: clap's name for the
    /// field, in kebab case.
    pub fn flag(&self) -> String {
        self.id.replace('_', "-")
    }
}

/// Declares the settings: a line gives the option (named after the field of
/// [`Settings`]), the environment variable, the field of [`Config`] set and
/// the type its value is read as. Fields that are `Option`s are set to
/// `Some`.
macro_rules! settings {
    ($(
        $(#[doc = $doc:literal])*
        $id:ident, $env:literal => $section:ident . $key:ident : $ty:ty $(, $attr:ident = $val:literal)*;
    )*) => {
        /// The settings given on the command line or in the environment,
        /// as text.
        #[derive(Debug, Default, clap::Args)]
        pub struct Settings {
            $(
                $(#[doc = $doc])*
                #[arg(long, env = $env $(, $attr = $val)*)]
                pub $id: Option<String>,
            )*
        }

        /// Every setting, in the order of `hax --help`.
        pub const SETTINGS: &[Setting] = &[$(
            Setting {
                key: concat!(stringify!($section), ".", stringify!($key)),
                id: stringify!($id),
                env: $env,
            },
        )*];

        impl Settings {
            /// Sets in `c` what is given here; `origin` tells where a
            /// setting came from, for errors.
            fn apply(
                &self,
                c: &mut Config,
                origin: impl Fn(&'static str) -> Option<Origin>,
            ) -> Result<(), ConfigError> {
                $(
                    let key = concat!(stringify!($section), ".", stringify!($key));
                    // An empty variable counts as unset, as it always has: a
                    // unit file may set `HAX_NODE=` to mean "not given".
                    let from_env = matches!(origin(key), Some(Origin::Env(_)));
                    if let Some(v) = self.$id.as_ref().filter(|v| !(v.is_empty() && from_env)) {
                        c.$section.$key = v.parse::<$ty>().map_err(|e| ConfigError::Invalid {
                            name: key,
                            origin: origin(key),
                            message: format!("{v:?} is not valid: {e}"),
                        })?.into();
                    }
                )*
                Ok(())
            }
        }
    };
}

settings! {
    /// Consul agent address (host:port or URL).
    consul_address, "HAX_CONSUL_ADDRESS" => consul.address: String, value_name = "ADDR";
    /// File holding the Consul ACL token.
    consul_token_file, "HAX_CONSUL_TOKEN_FILE" => consul.token_file: PathBuf, value_name = "FILE";
    /// Timeout of each Consul request in milliseconds.
    consul_request_timeout_ms, "HAX_CONSUL_REQUEST_TIMEOUT_MS" => consul.request_timeout_ms: u64, value_name = "MS";
    /// Where the HTTP server listens (watch handlers, API, /metrics, /healthz):
    /// host:port, the host an address or a name; unset, the node and
    /// http_port of the local hax catalog service, as the original hax.
    http_bind, "HAX_HTTP_BIND" => http.bind: BindAddr, value_name = "HOST:PORT";
    /// File holding the bearer token HTTP requests must carry.
    http_token_file, "HAX_HTTP_TOKEN_FILE" => http.token_file: PathBuf, value_name = "FILE";
    /// Local node name.
    node, "HAX_NODE" => identity.node: String, value_name = "NAME";
    /// hax's Motr endpoint.
    endpoint, "HAX_ENDPOINT" => identity.endpoint: String, value_name = "ENDPOINT";
    /// hax's process fid (0x7200000000000001:0x6).
    process_fid, "HAX_PROCESS_FID" => identity.process_fid: Fid, value_name = "FID";
    /// hax's HA service fid.
    ha_service_fid, "HAX_HA_SERVICE_FID" => identity.ha_service_fid: Fid, value_name = "FID";
    /// The principal RM service fid.
    rm_service_fid, "HAX_RM_SERVICE_FID" => identity.rm_service_fid: Fid, value_name = "FID";
    /// Motr debug options.
    motr_debug_options, "HAX_MOTR_DEBUG_OPTIONS" => motr.debug_options: String, value_name = "OPTIONS";
    /// Period of the keepalive probes of linked processes in milliseconds (0: off).
    motr_keepalive_interval_ms, "HAX_MOTR_KEEPALIVE_INTERVAL_MS" => motr.keepalive_interval_ms: u64, value_name = "MS";
    /// Keepalive rounds a process that answered before may miss in a row before its links are fenced (0: never).
    motr_keepalive_fence_rounds, "HAX_MOTR_KEEPALIVE_FENCE_ROUNDS" => motr.keepalive_fence_rounds: u32, value_name = "N";
    /// Receive buffers Motr keeps posted, 1 to 100 (0: the halon interface's 100).
    motr_receive_buffers, "HAX_MOTR_RECEIVE_BUFFERS" => motr.receive_buffers: u32, value_name = "N";
    /// Log format: human or json.
    log_format, "HAX_LOG_FORMAT" => log.format: LogFormat, value_name = "FORMAT";
    /// Log filter (e.g. `info`, `hax_bin=debug`).
    log, "HAX_LOG" => log.filter: String, value_name = "FILTER";
    /// Motr events waiting to be handled.
    limits_event_queue, "HAX_LIMITS_EVENT_QUEUE" => limits.event_queue: usize, value_name = "N";
    /// Pending Consul key writes before new events are held back.
    limits_pending_writes, "HAX_LIMITS_PENDING_WRITES" => limits.pending_writes: usize, value_name = "N";
    /// How often the watched state is reread from Consul, in seconds.
    limits_resync_secs, "HAX_LIMITS_RESYNC_SECS" => limits.resync_secs: u64, value_name = "SECS";
    /// Broadcast-queue entries kept for a stalled node.
    limits_bq_retain, "HAX_LIMITS_BQ_RETAIN" => limits.bq_retain: u64, value_name = "N";
    /// Milliseconds a node's broadcast-queue offset stays unmoved before it counts as stalled.
    limits_bq_stalled_after_ms, "HAX_LIMITS_BQ_STALLED_AFTER_MS" => limits.bq_stalled_after_ms: u64, value_name = "MS";
    /// Period of the broadcast-queue trimming in milliseconds (0: off).
    limits_bq_trim_interval_ms, "HAX_LIMITS_BQ_TRIM_INTERVAL_MS" => limits.bq_trim_interval_ms: u64, value_name = "MS";
    /// Period of the filesystem statistics in milliseconds (0: off).
    stats_filesystem_interval_ms, "HAX_STATS_FILESYSTEM_INTERVAL_MS" => stats.filesystem_interval_ms: u64, value_name = "MS";
    /// Period of the byte counts in milliseconds (0: off).
    stats_bytecount_interval_ms, "HAX_STATS_BYTECOUNT_INTERVAL_MS" => stats.bytecount_interval_ms: u64, value_name = "MS";
    /// Elect the RC leader from hax (true or false).
    leader_elect, "HAX_LEADER_ELECT" => leader.elect: bool, value_name = "BOOL";
    /// Lock-delay of the RC leader session in milliseconds (at most 60000).
    leader_lock_delay_ms, "HAX_LEADER_LOCK_DELAY_MS" => leader.lock_delay_ms: u64, value_name = "MS";
    /// Tie the RC leader session to this node's confd and hax checks too (true or false).
    leader_service_checks, "HAX_LEADER_SERVICE_CHECKS" => leader.service_checks: bool, value_name = "BOOL";
}

/// The commands of `hax`, beside running the daemon.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Show the cluster as hax sees it.
    ///
    /// What `hctl status` shows (data pools, profiles, the processes of each
    /// node with their status and fid, the RC leader), each process's
    /// recorded state, the byte counts, each node's offset and lag in the
    /// broadcast queue, and the HA links the daemon holds. Asks the daemon
    /// of this node (GET /v1/cluster/status at http.bind); with --consul,
    /// reads Consul (consul.address) directly, which works without a
    /// running daemon but cannot show its links.
    Status(StatusArgs),
    /// Control SNS repair or rebalance of a pool, or show its progress.
    ///
    /// Goes through the daemon (POST /api/v1/sns/<kind>-<action>, GET
    /// /api/v1/sns/<kind>-status), which asks Motr and answers with Motr's
    /// outcome. The daemon's bearer token (http.token_file) is sent with
    /// the requests that change something.
    Sns(SnsArgs),
}

/// `hax status`.
#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// Read Consul (consul.address, consul.token_file) directly instead of
    /// asking the daemon; the links are left out.
    #[arg(long)]
    pub consul: bool,
    /// How to reach the daemon and what to print.
    #[command(flatten)]
    pub client: ClientArgs,
}

/// `hax sns`.
#[derive(Debug, clap::Args)]
pub struct SnsArgs {
    /// Which copy machine.
    #[arg(value_enum)]
    pub kind: SnsKindArg,
    /// What to do with it.
    #[arg(value_enum)]
    pub action: SnsAction,
    /// The pool: its fid (0x6f00000000000001:0x9) or its name in
    /// m0conf/pools/.
    #[arg(value_name = "POOL")]
    pub pool: String,
    /// How to reach the daemon and what to print.
    #[command(flatten)]
    pub client: ClientArgs,
}

/// The copy machines of `hax sns`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SnsKindArg {
    /// Rebuild the data of failed drives elsewhere.
    Repair,
    /// Move repaired data back onto replaced drives.
    Rebalance,
}

impl SnsKindArg {
    /// The name the API routes use.
    pub fn as_str(self) -> &'static str {
        match self {
            SnsKindArg::Repair => "repair",
            SnsKindArg::Rebalance => "rebalance",
        }
    }
}

/// What `hax sns` does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SnsAction {
    /// Start it.
    Start,
    /// Abort it.
    Stop,
    /// Pause (quiesce) it.
    Pause,
    /// Resume (continue) it after a pause.
    Resume,
    /// Show the state and progress on each ioservice of the pool.
    Status,
}

impl SnsAction {
    /// The name the API routes use.
    pub fn as_str(self) -> &'static str {
        match self {
            SnsAction::Start => "start",
            SnsAction::Stop => "stop",
            SnsAction::Pause => "pause",
            SnsAction::Resume => "resume",
            SnsAction::Status => "status",
        }
    }
}

/// What the commands share.
#[derive(Debug, Clone, clap::Args)]
pub struct ClientArgs {
    /// Print the answer as JSON (the API's answer) instead of text.
    #[arg(long)]
    pub json: bool,
    /// The daemon's HTTP address, host:port or an http:// URL [default:
    /// http.bind of the configuration, loopback when it binds every
    /// address].
    #[arg(long, value_name = "ADDR")]
    pub daemon: Option<String>,
    /// Seconds to wait for each answer.
    #[arg(long, value_name = "SECS", default_value_t = 30,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub timeout: u64,
}

impl Args {
    /// Parses the process's command line and environment; on a usage error
    /// prints clap's message and exits with status 2.
    pub fn from_env() -> Self {
        Self::try_from_args(std::env::args_os()).unwrap_or_else(|e| e.exit())
    }

    /// Parses `args` (the program name first) and the process's environment.
    pub fn try_from_args<I, T>(args: I) -> Result<Self, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        let m = Self::command().try_get_matches_from(args)?;
        let mut a = Self::from_arg_matches(&m)?;
        a.origins = Some(
            SETTINGS
                .iter()
                .filter_map(|s| Some((s.key, origin(&m, s)?)))
                .collect(),
        );
        Ok(a)
    }

    /// The effective configuration: file, then environment, then these
    /// options; validated, and the files it names read, as a start reads
    /// them ([`Config::secrets`]). An error names the setting and where its
    /// value came from.
    pub fn config(&self) -> Result<Config, ConfigError> {
        self.merged(self.config.as_deref(), true)
    }

    /// The configuration the commands use to find the daemon: as
    /// [`Args::config`], from [`DEFAULT_CONFIG`] when no file is named and
    /// it exists, and without reading the token files, which only the
    /// requests that need a token read ([`Config::http_token`]).
    pub fn client_config(&self) -> Result<Config, ConfigError> {
        let default = Path::new(DEFAULT_CONFIG);
        let file = match &self.config {
            Some(path) => Some(path.as_path()),
            None => default.exists().then_some(default),
        };
        self.merged(file, false)
    }

    fn merged(&self, file: Option<&Path>, read_secrets: bool) -> Result<Config, ConfigError> {
        let (mut c, in_file) = match file {
            Some(path) => Config::from_file_with_keys(path)?,
            None => (Config::default(), Vec::new()),
        };
        let given = |key: &'static str| -> Option<Origin> {
            let (_, o) = self.origins.as_ref()?.iter().find(|(k, _)| *k == key)?;
            Some(o.clone())
        };
        let from_hare = crate::hare_env::apply(
            &mut c,
            |key| given(key).is_some(),
            |name| std::env::var(name).ok(),
        );
        let origin = |key: &'static str| -> Option<Origin> {
            if let Some(o) = given(key) {
                return Some(o);
            }
            if let Some((_, o)) = from_hare.iter().find(|(k, _)| *k == key) {
                return Some(o.clone());
            }
            Some(match file {
                Some(path) if in_file.iter().any(|k| k == key) => Origin::File(path.to_owned()),
                _ => Origin::Default,
            })
        };
        self.settings.apply(&mut c, origin)?;
        c.validate()
            .and_then(|()| {
                if read_secrets {
                    c.secrets().map(drop)
                } else {
                    Ok(())
                }
            })
            .map_err(|e| match e {
                ConfigError::Invalid {
                    name,
                    origin: None,
                    message,
                } => ConfigError::Invalid {
                    name,
                    origin: origin(name),
                    message,
                },
                e => e,
            })?;
        Ok(c)
    }
}

/// `--check-config`: prints `cfg` as TOML on stdout; status 2 if it cannot
/// be written.
pub fn print_config(cfg: &Config) -> std::process::ExitCode {
    match cfg.to_toml() {
        Ok(text) => {
            print!("{text}");
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("hax: {e}");
            std::process::ExitCode::from(2)
        }
    }
}

/// Whether `s` was given by option or by environment variable.
fn origin(m: &ArgMatches, s: &Setting) -> Option<Origin> {
    match m.value_source(s.id)? {
        ValueSource::CommandLine => Some(Origin::Flag(s.flag())),
        ValueSource::EnvVariable => Some(Origin::Env(s.env)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // These run in the test's own environment, which sets no HAX_*
    // variable; the environment's part is tested on the binary
    // (tests/cli.rs), where each run gets its own.

    fn config(args: &[&str]) -> Result<Config, String> {
        let argv = std::iter::once("hax").chain(args.iter().copied());
        let args = Args::try_from_args(argv).map_err(|e| e.to_string())?;
        args.config().map_err(|e| e.to_string())
    }

    #[test]
    fn every_field_of_config_is_a_setting() {
        let mut fields = Vec::new();
        let defaults = serde_json::to_value(Config::default()).unwrap();
        for (section, keys) in defaults.as_object().unwrap() {
            for key in keys.as_object().unwrap().keys() {
                fields.push(format!("{section}.{key}"));
            }
        }
        let mut keys: Vec<String> = SETTINGS.iter().map(|s| s.key.to_owned()).collect();
        fields.sort();
        keys.sort();
        assert_eq!(
            fields, keys,
            "every field of Config, and nothing else, has an option"
        );
    }

    #[test]
    fn settings_name_the_options_and_variables_clap_reads() {
        let cmd = Args::command();
        for s in SETTINGS {
            let arg = cmd
                .get_arguments()
                .find(|a| a.get_id() == s.id)
                .unwrap_or_else(|| panic!("no option for {}", s.key));
            assert_eq!(arg.get_long(), Some(&*s.flag()), "{}", s.key);
            assert_eq!(
                arg.get_env().and_then(|e| e.to_str()),
                Some(s.env),
                "{}",
                s.key
            );
        }
        let mut envs: Vec<_> = SETTINGS.iter().map(|s| s.env).collect();
        envs.sort();
        envs.dedup();
        assert_eq!(envs.len(), SETTINGS.len(), "two settings share a variable");
    }

    #[test]
    fn options_override_the_file() {
        let dir = std::env::temp_dir().join(format!("hax-cli-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("hax.toml");
        std::fs::write(
            &file,
            "[http]\nbind = \"127.0.0.1:9000\"\n[limits]\nevent_queue = 7\nbq_retain = 0\n",
        )
        .unwrap();
        let f = file.to_str().unwrap();
        let c = config(&[
            "--config",
            f,
            "--http-bind",
            "127.0.0.1:9100",
            "--limits-bq-retain",
            "3",
            "--process-fid",
            "0x7200000000000001:0x6",
        ])
        .unwrap();
        assert_eq!(c.http.bind.as_ref().map(|b| b.port()), Some(9100));
        assert_eq!(c.limits.event_queue, 7, "the file's value stays");
        assert_eq!(c.limits.bq_retain, 3);
        assert_eq!(c.identity.process_fid.map(|f| f.key), Some(6));

        // A bad value names the setting and the place to fix.
        let e = config(&["--config", f]).unwrap_err();
        assert!(
            e.contains("limits.bq_retain") && e.contains(&format!("(from {f})")),
            "{e}"
        );
        let e = config(&[
            "--config",
            f,
            "--limits-event-queue",
            "0",
            "--limits-bq-retain",
            "1",
        ])
        .unwrap_err();
        assert!(
            e.contains("limits.event_queue (from option --limits-event-queue)"),
            "{e}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn bad_values_name_the_setting_and_the_option() {
        let e = config(&["--process-fid", "nope"]).unwrap_err();
        assert!(
            e.contains("identity.process_fid (from option --process-fid)")
                && e.contains("invalid fid"),
            "{e}"
        );
        let e = config(&["--rm-service-fid", "0x7200000000000001:0x1"]).unwrap_err();
        assert!(
            e.contains("not a fid of type 's'") && e.contains("--rm-service-fid"),
            "{e}"
        );
        let e = config(&["--log-format", "xml"]).unwrap_err();
        assert!(e.contains("log.format") && e.contains("\"xml\""), "{e}");
        let e = config(&["--motr-keepalive-interval-ms", "soon"]).unwrap_err();
        assert!(
            e.contains("motr.keepalive_interval_ms") && e.contains("soon"),
            "{e}"
        );
        let e = config(&["--stats-bytecount-interval-ms", "1"]).unwrap_err();
        assert!(
            e.contains("minimum") && e.contains("--stats-bytecount-interval-ms"),
            "{e}"
        );
        let e = config(&["--log", "hax=loud"]).unwrap_err();
        assert!(e.contains("log.filter (from option --log)"), "{e}");
    }

    #[test]
    fn an_empty_option_value_is_a_value() {
        // Only an empty variable means unset; an empty option is asked for.
        let c = config(&["--motr-debug-options", ""]).unwrap();
        assert_eq!(c.motr.debug_options, "");
    }
}
