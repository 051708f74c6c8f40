//! `quarry`: the production binary of the CA. Each service is a subcommand (`quarry sa --config sa.toml`), beside
//! the operator's tools (migrations, ceremonies, admin, env check, health, probe). The dev tools (`quarry dev`, the
//! challenge test server, the load generator…) are another binary, `quarry-dev`, that this one hands such commands
//! to when it is installed beside it, as git does its external commands: the production image carries only this one.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use quarry::{admin, envcheck, health, probe};
use quarry_core::service::{self, EX_UNAVAILABLE, EX_USAGE, runtime};

#[derive(Parser)]
#[command(name = "quarry", version = quarry::LONG_VERSION, about = "An ACME certificate authority split into gRPC services")]
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
    /// Exits 0 when a running service says it is ready (container health checks, Kubernetes probes).
    Health(health::HealthArgs),
    /// Proves an environment end to end: issues and revokes a certificate, timing every step.
    Probe(probe::ProbeArgs),
    /// Environment tools: `env check A B` proves two environments differ only where they may.
    Env(EnvArgs),
    /// The operator's commands (unpausing accounts), through the sa with the admin identity.
    Admin(admin::AdminArgs),
    /// Makes an environment's issuing hierarchy (root and intermediates) and the PKI sections that point at it.
    Ceremony(CeremonyArgs),
    /// A dev tool (`dev`, `pebble`, `challtestsrv`, `loadgen`, …): run by the `quarry-dev` binary beside this one.
    #[command(external_subcommand)]
    DevTool(Vec<OsString>),
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

/// Hands a command this binary does not have to `quarry-dev`, beside it or on the `PATH`, with the same arguments;
/// it replaces this process, so signals, exit status and the parent process id are the dev tool's own.
fn run_dev_tool(args: Vec<OsString>) -> ExitCode {
    use std::os::unix::process::CommandExt as _;
    let command = args.first().map(|c| c.to_string_lossy().into_owned()).unwrap_or_default();
    let beside = std::env::current_exe().ok().and_then(|exe| Some(exe.parent()?.join(DEV_TOOLS_BINARY)));
    let program = beside.filter(|path| path.is_file()).unwrap_or_else(|| PathBuf::from(DEV_TOOLS_BINARY));
    let err = std::process::Command::new(&program).args(&args).exec();
    if err.kind() == std::io::ErrorKind::NotFound {
        eprintln!(
            "quarry: no command `{command}`. If it is a dev tool, it is in the `{DEV_TOOLS_BINARY}` binary, which is \
             not installed beside this one (production images carry only `quarry`): build both with \
             `cargo build -p quarry -p quarry-devtools`"
        );
    } else {
        eprintln!("quarry: run {}: {err}", program.display());
    }
    ExitCode::from(EX_USAGE)
}

/// The dev tools' binary (crate `quarry-devtools`).
const DEV_TOOLS_BINARY: &str = "quarry-dev";

fn main() -> ExitCode {
    service::start_process(quarry::BUILD);
    match Cli::parse().command {
        Command::Wfe(arg) => service::main::<quarry_wfe::Process>(&arg.config),
        Command::Ra(arg) => service::main::<quarry_ra::Process>(&arg.config),
        Command::Sa(arg) => service::main::<quarry_sa::Process>(&arg.config),
        Command::Ca(arg) => service::main::<quarry_ca::Process>(&arg.config),
        Command::Va(arg) => service::main::<quarry_va::Process>(&arg.config),
        Command::Nonce(arg) => service::main::<quarry_nonce::Process>(&arg.config),
        Command::Publisher(arg) => service::main::<quarry_publisher::Process>(&arg.config),
        Command::CrlUpdater(arg) => service::main::<quarry_crl_updater::Process>(&arg.config),
        Command::Migrate(arg) => {
            let config: quarry_sa::Config = match service::load_config(&arg.config) {
                Ok(config) => config,
                Err(code) => return code,
            };
            quarry_core::telemetry::init_logs("migrate");
            service::report("migrate", runtime().block_on(quarry_sa::migrate(&config)))
        }
        Command::DevTool(args) => run_dev_tool(args),
        Command::Env(args) => env_check(&args),
        Command::Admin(args) => {
            quarry_core::telemetry::init_logs("admin");
            service::report("admin", runtime().block_on(admin::run(args)))
        }
        Command::Ceremony(args) => {
            quarry_core::telemetry::init_logs("ceremony");
            service::report("ceremony", ceremony(&args))
        }
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
