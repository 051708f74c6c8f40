//! Logging set-up shared by every service: human-readable or JSON lines on stderr, filtered by `RUST_LOG`.

use tracing_subscriber::EnvFilter;

/// Installs the global tracing subscriber; `service` names the process in every line.
pub fn init(service: &str, json: bool) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    // Several services may share one test process: only the first installation wins.
    let _ = if json { builder.json().try_init() } else { builder.try_init() };
    tracing::debug!(service, "telemetry initialised");
}
