//! `hax`: the HA link eXtender daemon. Parses the command line, sets up
//! logging, and runs [`hax_bin::app::run`] until SIGTERM or SIGINT; a second
//! signal exits at once. With a command (`hax status`, `hax sns`), runs that
//! instead ([`hax_bin::cmd::run`]).

mod nofile;
mod signals;

use std::process::ExitCode;

use hax_bin::cli::Args;
use tokio_util::sync::CancellationToken;

fn main() -> ExitCode {
    // Parsing starts no thread. A command is a client: Ctrl-C ends it as
    // any tool, so it keeps the signals unblocked.
    let args = Args::from_env();
    if let Some(command) = &args.command {
        return hax_bin::cmd::run(&args, command);
    }
    // Before anything can start a thread: every thread must inherit the mask.
    let blocked = match signals::block() {
        Ok(b) => b,
        Err(e) => {
            eprintln!("hax: {e}");
            return ExitCode::FAILURE;
        }
    };
    let cfg = match args.config() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("hax: {e}");
            return ExitCode::from(2);
        }
    };
    if args.check_config {
        return hax_bin::cli::print_config(&cfg);
    }
    if let Err(e) = hax_bin::logging::init(cfg.log.format, &cfg.log.filter) {
        eprintln!("hax: {e}");
        return ExitCode::from(2);
    }
    nofile::raise();
    let shutdown = CancellationToken::new();
    let token = shutdown.clone();
    let waiter = blocked.spawn_waiter(
        move |sig| {
            tracing::info!(
                signal = sig.as_str(),
                "signal received: stopping (a second signal exits at once)"
            );
            token.cancel();
        },
        |sig| {
            tracing::warn!(signal = sig.as_str(), "second signal: exiting now");
            std::process::exit(130);
        },
    );
    if let Err(e) = waiter {
        eprintln!("hax: cannot start the signal thread: {e}");
        return ExitCode::FAILURE;
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("hax-rt")
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("hax: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(hax_bin::app::run(cfg, shutdown)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("hax: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
