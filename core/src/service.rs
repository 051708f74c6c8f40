//! The one shape of every service's process: its configuration loaded from layered files and checked, telemetry
//! (logs, spans, metrics) started, the service run until Ctrl-C or SIGTERM, its requests in flight drained for a
//! bounded time, and an exit status that says what went wrong. A service's crate implements [`Service`]; the binary's
//! `main` calls [`main`] with it. Listeners, TLS and the health service come from [`crate::grpc::serve`] and
//! [`crate::http_server`], which every service's `run` uses.

use std::fmt::Display;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::OnceLock;
use std::time::Duration;

use serde::de::DeserializeOwned;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use crate::telemetry::TelemetryConfig;

/// Exit status for a configuration the program cannot use (sysexits' EX_USAGE).
pub const EX_USAGE: u8 = 64;
/// Exit status for a service the program needed and could not reach (sysexits' EX_UNAVAILABLE).
pub const EX_UNAVAILABLE: u8 = 69;

/// How long a stopping service may take to finish requests in flight; a peer's idle keep-alive connection must
/// not hold it up for ever.
pub const DRAIN_GRACE: Duration = Duration::from_secs(5);

/// Set by `quarry dev` on the services it starts, so that they stop when it goes away, however it went.
pub const SUPERVISED_ENV: &str = "QUARRY_SUPERVISED";

/// A service as its process runs it.
pub trait Service {
    /// Its name in logs, metrics, spans and error messages (`"ra"`).
    const NAME: &'static str;
    /// How long it may drain once told to stop.
    const DRAIN_GRACE: Duration = DRAIN_GRACE;
    /// Its configuration file's type.
    type Config: DeserializeOwned + Send + 'static;
    /// What stops it.
    type Error: Display + Send;

    /// The configuration's `[telemetry]` section.
    fn telemetry(config: &Self::Config) -> &TelemetryConfig;

    /// Checks what the types cannot (values that must agree with each other), before anything starts; the
    /// message names the key.
    fn validate(_config: &Self::Config) -> Result<(), String> {
        Ok(())
    }

    /// Binds its listeners and serves until `shutdown` completes.
    fn run(
        config: Self::Config,
        shutdown: WaitForCancellationFutureOwned,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send;
}

/// What every process of the project does first: the crypto provider, the build it reports, and its parent (see
/// [`stopped`]).
pub fn start_process(build: crate::build::BuildInfo) {
    SUPERVISOR.get_or_init(std::os::unix::process::parent_id);
    crate::install_crypto_provider();
    crate::build::set(build);
}

/// Runs service `S` from its layered configuration files to its exit status.
pub fn main<S: Service>(config_files: &[PathBuf]) -> ExitCode {
    let config: S::Config = match load_config(config_files) {
        Ok(config) => config,
        Err(code) => return code,
    };
    if let Err(reason) = S::validate(&config) {
        eprintln!("quarry {}: {reason}", S::NAME);
        return ExitCode::from(EX_USAGE);
    }
    let result = runtime().block_on(async {
        let telemetry = crate::telemetry::init(S::NAME, S::telemetry(&config)).map_err(|e| e.to_string())?;
        let result = drain_bounded(S::NAME, S::DRAIN_GRACE, |stop| S::run(config, stop)).await;
        telemetry.shutdown().await;
        result.map_err(|e| e.to_string())
    });
    report(S::NAME, result)
}

/// Loads a configuration from layered files (each over the ones before; `${file:PATH}` and `${name}` placeholders
/// filled) or explains, naming the file and key, why it cannot.
pub fn load_config<T: DeserializeOwned>(files: &[PathBuf]) -> Result<T, ExitCode> {
    crate::config::load_layers(files, crate::config::placeholder_value).map_err(|err| {
        eprintln!("quarry: {err}");
        ExitCode::from(EX_USAGE)
    })
}

/// The multi-threaded runtime every process runs on.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("start the tokio runtime")
}

/// The exit status of a command: success, or failure with its error on standard error.
pub fn report<E: Display>(command: &str, result: Result<(), E>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("quarry {command}: {err}");
            ExitCode::FAILURE
        }
    }
}

/// The process id of the parent at start-up.
static SUPERVISOR: OnceLock<u32> = OnceLock::new();

/// Completes on Ctrl-C or SIGTERM, and, for a service `quarry dev` started, when `quarry dev` is gone (even
/// killed with SIGKILL): a service is reparented then, so its parent process id changes.
pub async fn stopped() {
    if std::env::var_os(SUPERVISED_ENV).is_none() {
        return crate::shutdown::signal().await;
    }
    // Read when the process started: a service slow to start (key generation) must not take the init process it
    // was reparented to for its supervisor.
    let parent = *SUPERVISOR.get_or_init(std::os::unix::process::parent_id);
    let parent_gone = async {
        while std::os::unix::process::parent_id() == parent {
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    };
    tokio::select! {
        _ = crate::shutdown::signal() => {}
        _ = parent_gone => tracing::info!("quarry dev is gone; stopping"),
    }
}

/// Runs a service until [`stopped`], then lets it drain for at most `grace`.
pub async fn drain_bounded<F, E>(
    name: &str,
    grace: Duration,
    service: impl FnOnce(WaitForCancellationFutureOwned) -> F,
) -> Result<(), E>
where
    F: Future<Output = Result<(), E>>,
{
    let stop = CancellationToken::new();
    let service = service(stop.clone().cancelled_owned());
    tokio::pin!(service);
    tokio::select! {
        result = &mut service => result,
        () = stopped() => {
            stop.cancel();
            match tokio::time::timeout(grace, service).await {
                Ok(result) => result,
                Err(_) => {
                    tracing::warn!(service = name, grace_secs = grace.as_secs(), "requests still in flight; stopping anyway");
                    Ok(())
                }
            }
        }
    }
}
