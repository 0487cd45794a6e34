//! `hax`: the HA link eXtender daemon. Parses the command line, sets up
//! logging, and runs [`hax_bin::app::run`] until SIGTERM or SIGINT; a second
//! signal exits at once.

use std::process::ExitCode;

use hax_bin::cli::Args;
use tokio::signal::unix::{signal, SignalKind};
use tokio_util::sync::CancellationToken;

fn main() -> ExitCode {
    let args = Args::from_env();
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
    let result = rt.block_on(async {
        let shutdown = CancellationToken::new();
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            return Err("cannot install signal handlers".to_owned());
        };
        let token = shutdown.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            tracing::info!("signal received: stopping (a second signal exits at once)");
            token.cancel();
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            tracing::warn!("second signal: exiting now");
            std::process::exit(130);
        });
        hax_bin::app::run(cfg, shutdown)
            .await
            .map_err(|e| e.to_string())
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("hax: {e}");
            ExitCode::FAILURE
        }
    }
}
