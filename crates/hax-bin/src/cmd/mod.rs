//! The commands of `hax` that ask a running daemon, or Consul, and print
//! what they learn: `hax status` ([`status`]) and `hax sns` ([`sns`]).
//! They talk to the daemon's HTTP API ([`daemon_api`]), found through the
//! daemon's own settings.
//!
//! Exit status: 0 done; 1 the daemon or Consul could not be reached, or
//! refused or failed the request (an unknown pool included); 2 a usage or
//! configuration error found before anything was asked.

pub mod daemon_api;
pub mod sns;
pub mod status;

use std::process::ExitCode;
use std::time::Duration;

use crate::cli::{Args, Command};
use crate::config::ConfigError;

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
pub enum CmdError {
    /// The settings could not be read.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The command line asks for something that cannot be.
    #[error("{0}")]
    Usage(String),
    /// The daemon did not answer.
    #[error("cannot reach the hax daemon at {url} ({from}): {reason}{hint}")]
    Unreachable {
        /// Its API's address.
        url: String,
        /// Where that address came from.
        from: &'static str,
        /// What went wrong.
        reason: String,
        /// What else the operator can do, with its leading separator.
        hint: &'static str,
    },
    /// The daemon answered with an error.
    #[error("the hax daemon at {url} answered {status}: {message}")]
    Refused {
        /// Its API's address.
        url: String,
        /// The HTTP status.
        status: u16,
        /// Its explanation.
        message: String,
    },
    /// Consul could not be read.
    #[error("cannot read Consul at {address} (consul.address): {reason}")]
    Consul {
        /// The agent's address.
        address: String,
        /// What went wrong.
        reason: String,
    },
    /// What was asked for does not exist.
    #[error("{0}")]
    NotFound(String),
}

impl CmdError {
    /// The exit status of the command.
    pub fn exit_code(&self) -> u8 {
        match self {
            CmdError::Config(_) | CmdError::Usage(_) => 2,
            CmdError::Unreachable { .. }
            | CmdError::Refused { .. }
            | CmdError::Consul { .. }
            | CmdError::NotFound(_) => 1,
        }
    }
}

/// Runs `command` with the settings of `args`; prints its output on stdout
/// and an error on stderr.
pub fn run(args: &Args, command: &Command) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("hax: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async {
        let cfg = args.client_config()?;
        match command {
            Command::Status(a) => status::run(&cfg, a).await,
            Command::Sns(a) => sns::run(&cfg, a).await,
        }
    });
    match result {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("hax: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

/// The timeout of `--timeout`.
pub(crate) fn timeout(secs: u64) -> Duration {
    Duration::from_secs(secs)
}
