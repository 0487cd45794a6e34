//! Log output: human-readable lines by default, JSON lines on request.

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Installs the global subscriber (once, by the binary). Fails if the filter
/// does not parse or a subscriber is already set.
pub fn init(format: LogFormat, filter: &str) -> Result<(), String> {
    let filter = EnvFilter::try_new(filter).map_err(|e| format!("log filter {filter:?}: {e}"))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // A log line that cannot be written is dropped. Reporting it would
        // print to the same stderr, and printing to a closed pipe panics: the
        // thread logging SIGTERM died with it and hax never stopped.
        .log_internal_errors(false)
        .with_target(true);
    let r = match format {
        LogFormat::Human => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    r.map_err(|e| e.to_string())
}
