//! `quarry`: the one binary of the CA. Each service is a subcommand (`quarry sa --config sa.toml`), and
//! `quarry dev` runs the whole split stack on one machine, every service its own process.

mod admin;
mod balancer;
mod compose;
mod dev;
mod env;
mod envcheck;
mod health;
mod loadgen;
mod orphans;
mod probe;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

/// `quarry --version`: the version, the git commit and its date (stamped by build.rs).
const LONG_VERSION: &str =
    concat!(env!("CARGO_PKG_VERSION"), " (commit ", env!("QUARRY_GIT_COMMIT"), ", ", env!("QUARRY_GIT_DATE"), ")");

/// This binary's build, for the metric, the gRPC header and the health answer.
const BUILD: quarry_core::build::BuildInfo = quarry_core::build::BuildInfo {
    version: env!("CARGO_PKG_VERSION"),
    commit: env!("QUARRY_GIT_COMMIT"),
    date: env!("QUARRY_GIT_DATE"),
};

/// Exit status for a configuration the program cannot use (sysexits' EX_USAGE).
const EX_USAGE: u8 = 64;
/// Exit status for a service the program needed and could not reach (sysexits' EX_UNAVAILABLE).
const EX_UNAVAILABLE: u8 = 69;

#[derive(Parser)]
#[command(name = "quarry", version = LONG_VERSION, about = "An ACME certificate authority split into gRPC services")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The ACME web front end.
    Wfe(ConfigArg),
    /// The registration authority.
    Ra(ConfigArg),
    /// The storage authority.
    Sa(ConfigArg),
    /// The certificate authority.
    Ca(ConfigArg),
    /// The validation authority.
    Va(ConfigArg),
    /// The nonce service.
    Nonce(ConfigArg),
    /// The Certificate Transparency publisher.
    Publisher(ConfigArg),
    /// The CRL updater: keeps every CRL shard signed and stored.
    CrlUpdater(ConfigArg),
    /// Brings the sa's database schema up to date and exits (a deployment's migration step).
    Migrate(ConfigArg),
    /// The challenge test server: DNS, http-01 and tls-alpn-01 responders with a pebble-challtestsrv compatible API.
    Challtestsrv(dev::ChalltestsrvArgs),
    /// Runs the whole CA locally on embedded defaults, every service as its own process.
    Dev(dev::DevArgs),
    /// `quarry dev` with Pebble's command line (`-config FILE -dnsserver ADDR`): a drop-in for Pebble in a client's
    /// test suite; a link named `pebble` to this binary runs it too.
    Pebble(dev::PebbleArgs),
    /// Prepares the container stack's data volume: dev PKI and every service's configuration.
    ComposeInit(compose::ComposeInitArgs),
    /// A fake Certificate Transparency log that signs real SCTs (the dev and container stacks' logs).
    FakeCtLog(compose::FakeCtLogArgs),
    /// A TCP load balancer over replicas: connections in turn, a replica that refuses them skipped (the compose
    /// stack's, in front of its wfes).
    Balance(balancer::BalanceArgs),
    /// Exits 0 when a running service says it is ready (container health checks, Kubernetes probes).
    Health(health::HealthArgs),
    /// Proves an environment end to end: issues and revokes a certificate, timing every step.
    Probe(probe::ProbeArgs),
    /// Concurrent ACME clients issuing certificates, with latencies and the servers' CPU per certificate.
    Loadgen(loadgen::LoadgenArgs),
    /// Environment tools: `env check A B` proves two environments differ only where they may.
    Env(EnvArgs),
    /// The operator's commands (unpausing accounts), through the sa with the admin identity.
    Admin(admin::AdminArgs),
    /// Makes an environment's issuing hierarchy (root and intermediates) and the PKI sections that point at it.
    Ceremony(CeremonyArgs),
}

#[derive(clap::Args)]
struct EnvArgs {
    #[command(subcommand)]
    command: EnvCommand,
}

#[derive(clap::Subcommand)]
enum EnvCommand {
    /// Lists every key two environments differ in; fails when one lies outside addresses/secrets, PKI and rate limits.
    Check {
        a: String,
        b: String,
        /// The configuration tree: `base/` and one directory per environment.
        #[arg(long, default_value = "deploy/env")]
        dir: PathBuf,
    },
}

fn env_check(args: &EnvArgs) -> ExitCode {
    let EnvCommand::Check { a, b, dir } = &args.command;
    match envcheck::check(dir, a, b) {
        Ok(report) => {
            println!("{a} vs {b}:\n{report}");
            if report.passes() { ExitCode::SUCCESS } else { ExitCode::FAILURE }
        }
        Err(err) => {
            eprintln!("quarry env check: {err:#}");
            ExitCode::from(EX_USAGE)
        }
    }
}

#[derive(clap::Args)]
struct CeremonyArgs {
    /// The ceremony file (see deploy/ceremony/quarry.toml).
    #[arg(long)]
    config: PathBuf,
    /// Which of the file's environments to make.
    #[arg(long)]
    environment: String,
    /// Where the PEMs and the `pki/` sections go; must not hold a hierarchy already.
    #[arg(long)]
    out: PathBuf,
    /// Where the deployment will find the PEMs (e.g. a mounted secret); the PKI sections name files there.
    #[arg(long)]
    install_dir: Option<PathBuf>,
}

fn ceremony(args: &CeremonyArgs) -> Result<(), String> {
    let config: quarry_ceremony::hierarchy::CeremonyConfig =
        quarry_core::config::load(&args.config).map_err(|e| e.to_string())?;
    let output =
        quarry_ceremony::hierarchy::run_ceremony(&config, &args.environment, &args.out, args.install_dir.as_deref())
            .map_err(|e| e.to_string())?;
    println!("root:          {}", output.root_pem.display());
    for (name, cert, _) in &output.intermediates {
        println!("intermediate:  {name} {}", cert.display());
    }
    println!(
        "PKI sections:  {} (ca.toml, wfe.toml, crl-updater.toml for the {} overlay)",
        output.pki_dir.display(),
        args.environment
    );
    Ok(())
}

#[derive(clap::Args)]
struct ConfigArg {
    /// The service's TOML configuration; given again, each file is layered over the ones before (e.g.
    /// `--config base/sa.toml --config staging/sa.toml`); `${file:PATH}` placeholders are filled with the file's
    /// content (a mounted secret), `${name}` ones with the environment variable `QUARRY_<NAME>`.
    #[arg(long, required = true)]
    config: Vec<PathBuf>,
}

/// Loads a service's configuration or explains, naming the file and key, why it cannot.
fn load<T: serde::de::DeserializeOwned>(arg: &ConfigArg) -> Result<T, ExitCode> {
    quarry_core::config::load_layers(&arg.config, quarry_core::config::placeholder_value).map_err(|err| {
        eprintln!("quarry: {err}");
        ExitCode::from(EX_USAGE)
    })
}

macro_rules! run_service {
    ($name:literal, $krate:ident, $arg:expr) => {
        run_service!($name, $krate, $arg, DRAIN_GRACE)
    };
    ($name:literal, $krate:ident, $arg:expr, $grace:expr) => {{
        let config: $krate::Config = match load(&$arg) {
            Ok(config) => config,
            Err(code) => return code,
        };
        let result = runtime().block_on(async {
            let telemetry = quarry_core::telemetry::init($name, &config.telemetry).map_err(|e| e.to_string())?;
            let result = drain_bounded($name, $grace, |stop| $krate::run(config, stop)).await;
            telemetry.shutdown().await;
            result.map_err(|e| e.to_string())
        });
        report($name, result)
    }};
}

/// The process id of the parent at start-up.
static SUPERVISOR: std::sync::OnceLock<u32> = std::sync::OnceLock::new();

/// Set by `quarry dev` on the services it starts, so that they stop when it goes away, however it went.
const SUPERVISED_ENV: &str = "QUARRY_SUPERVISED";

/// Completes on Ctrl-C or SIGTERM, and, for a service `quarry dev` started, when `quarry dev` is gone (even
/// killed with SIGKILL): a service is reparented then, so its parent process id changes.
async fn shutdown() {
    if std::env::var_os(SUPERVISED_ENV).is_none() {
        return quarry_core::shutdown::signal().await;
    }
    // Read when the process started: a service slow to start (key generation) must not take the init process it
    // was reparented to for its supervisor.
    let parent = *SUPERVISOR.get_or_init(std::os::unix::process::parent_id);
    let parent_gone = async {
        while std::os::unix::process::parent_id() == parent {
            tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        }
    };
    tokio::select! {
        _ = quarry_core::shutdown::signal() => {}
        _ = parent_gone => tracing::info!("quarry dev is gone; stopping"),
    }
}

/// How long a stopping service may take to finish requests in flight; a peer's idle keep-alive connection must
/// not hold it up for ever.
const DRAIN_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// Runs a service until [`shutdown`], then lets it drain for at most `grace`.
async fn drain_bounded<F, E>(
    name: &str,
    grace: std::time::Duration,
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
        () = shutdown() => {
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

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("start the tokio runtime")
}

fn report<E: std::fmt::Display>(service: &str, result: Result<(), E>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("quarry {service}: {err}");
            ExitCode::FAILURE
        }
    }
}

/// The command line, read as Pebble's when the binary is called `pebble` or given the `pebble` subcommand (whose
/// options Pebble writes with one dash: `-config FILE`).
fn parse_command_line() -> Cli {
    let mut args: Vec<String> = std::env::args().collect();
    let called_pebble =
        args.first().and_then(|first| Path::new(first).file_name()).is_some_and(|name| name == "pebble");
    if called_pebble {
        args.insert(1, "pebble".to_owned());
    }
    if args.get(1).is_some_and(|command| command == "pebble") {
        let rest = dev::pebble_argv(args.split_off(2));
        args.extend(rest);
    }
    Cli::parse_from(args)
}

fn main() -> ExitCode {
    SUPERVISOR.get_or_init(std::os::unix::process::parent_id);
    quarry_core::install_crypto_provider();
    quarry_core::build::set(BUILD);
    match parse_command_line().command {
        Command::Wfe(arg) => run_service!("wfe", quarry_wfe, arg),
        // The ra bounds its own drain (background validations and finalizations included); this is a backstop.
        Command::Ra(arg) => run_service!("ra", quarry_ra, arg, quarry_ra::SHUTDOWN_GRACE + DRAIN_GRACE * 2),
        Command::Sa(arg) => run_service!("sa", quarry_sa, arg),
        Command::Ca(arg) => run_service!("ca", quarry_ca, arg),
        Command::Va(arg) => run_service!("va", quarry_va, arg),
        Command::Nonce(arg) => run_service!("nonce", quarry_nonce, arg),
        Command::Publisher(arg) => run_service!("publisher", quarry_publisher, arg),
        Command::CrlUpdater(arg) => run_service!("crl-updater", quarry_crl_updater, arg),
        Command::Migrate(arg) => {
            let config: quarry_sa::Config = match load(&arg) {
                Ok(config) => config,
                Err(code) => return code,
            };
            quarry_core::telemetry::init_logs("migrate");
            report("migrate", runtime().block_on(quarry_sa::migrate(&config)))
        }
        Command::Challtestsrv(args) => {
            quarry_core::telemetry::init_logs("challtestsrv");
            report("challtestsrv", runtime().block_on(dev::run_challtestsrv(args)))
        }
        Command::Env(args) => env_check(&args),
        Command::Admin(args) => {
            quarry_core::telemetry::init_logs("admin");
            report("admin", runtime().block_on(admin::run(args)))
        }
        Command::Ceremony(args) => {
            quarry_core::telemetry::init_logs("ceremony");
            report("ceremony", ceremony(&args))
        }
        Command::Dev(args) => {
            quarry_core::telemetry::init_logs("dev");
            report("dev", runtime().block_on(dev::run(args)))
        }
        Command::Pebble(args) if args.version => {
            println!("quarry {} (as pebble)", quarry_core::build::get().describe());
            ExitCode::SUCCESS
        }
        Command::Pebble(args) => {
            quarry_core::telemetry::init_logs("pebble");
            report("pebble", runtime().block_on(dev::run(args.into_dev())))
        }
        Command::ComposeInit(args) => {
            quarry_core::telemetry::init_logs("compose-init");
            report("compose-init", runtime().block_on(compose::init(args)))
        }
        Command::Balance(args) => {
            quarry_core::telemetry::init_logs("balance");
            report("balance", runtime().block_on(balancer::run(args)))
        }
        Command::FakeCtLog(args) => {
            quarry_core::telemetry::init_logs("fake-ct-log");
            report("fake-ct-log", runtime().block_on(compose::run_fake_ct_log(args)))
        }
        Command::Loadgen(args) => match runtime().block_on(loadgen::run(args)) {
            Ok(true) => ExitCode::SUCCESS,
            Ok(false) => ExitCode::FAILURE,
            Err(err) => {
                eprintln!("quarry loadgen: {err:#}");
                ExitCode::from(EX_USAGE)
            }
        },
        Command::Probe(args) => match runtime().block_on(probe::run(args)) {
            Ok(probe::Verdict::Passed) => ExitCode::SUCCESS,
            Ok(probe::Verdict::Failed) => ExitCode::FAILURE,
            Ok(probe::Verdict::NotPushed) => ExitCode::from(EX_UNAVAILABLE),
            Err(err) => {
                eprintln!("quarry probe: {err:#}");
                ExitCode::from(EX_USAGE)
            }
        },
        Command::Health(args) => match runtime().block_on(health::check(&args)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => {
                eprintln!("quarry health: {err:#}");
                ExitCode::FAILURE
            }
        },
    }
}
