//! `quarry-dev`: the dev tools' binary. `quarry dev` and the other dev commands of `quarry` are handed to it; a link
//! to it named `pebble` runs the Pebble drop-in with Pebble's command line.

use std::path::Path;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use quarry_core::service::{self, EX_USAGE, runtime};
use quarry_devtools::{balancer, compose, dev, loadgen};

#[derive(Parser)]
#[command(name = "quarry", version = quarry::LONG_VERSION, about = "Quarry's dev tools: the local stack, test servers, load")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Runs the whole CA locally on embedded defaults, every service as its own process.
    Dev(dev::DevArgs),
    /// `quarry dev` with Pebble's command line (`-config FILE -dnsserver ADDR`): a drop-in for Pebble in a client's
    /// test suite; a link named `pebble` to this binary runs it too.
    Pebble(dev::PebbleArgs),
    /// The challenge test server: DNS, http-01 and tls-alpn-01 responders with a pebble-challtestsrv compatible API.
    Challtestsrv(dev::ChalltestsrvArgs),
    /// Prepares the container stack's data volume: dev PKI and every service's configuration.
    ComposeInit(compose::ComposeInitArgs),
    /// A fake Certificate Transparency log that signs real SCTs (the dev and container stacks' logs).
    FakeCtLog(compose::FakeCtLogArgs),
    /// A TCP load balancer over replicas: connections in turn, a replica that refuses them skipped (the compose
    /// stack's, in front of its wfes).
    Balance(balancer::BalanceArgs),
    /// Concurrent ACME clients issuing certificates, with latencies and the servers' CPU per certificate.
    Loadgen(loadgen::LoadgenArgs),
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

/// Runs a tool with the plain logs every tool prints.
fn tool(name: &str, work: impl Future<Output = anyhow::Result<()>>) -> ExitCode {
    quarry_core::telemetry::init_logs(name);
    service::report(name, runtime().block_on(work).map_err(|err| format!("{err:#}")))
}

fn main() -> ExitCode {
    service::start_process(quarry::BUILD);
    match parse_command_line().command {
        Command::Dev(args) => tool("dev", dev::run(args)),
        Command::Pebble(args) if args.version => {
            println!("quarry {} (as pebble)", quarry_core::build::get().describe());
            ExitCode::SUCCESS
        }
        Command::Pebble(args) => tool("pebble", dev::run(args.into_dev())),
        Command::Challtestsrv(args) => tool("challtestsrv", dev::run_challtestsrv(args)),
        Command::ComposeInit(args) => tool("compose-init", compose::init(args)),
        Command::FakeCtLog(args) => tool("fake-ct-log", compose::run_fake_ct_log(args)),
        Command::Balance(args) => tool("balance", balancer::run(args)),
        Command::Loadgen(args) => match runtime().block_on(loadgen::run(args)) {
            Ok(true) => ExitCode::SUCCESS,
            Ok(false) => ExitCode::FAILURE,
            Err(err) => {
                eprintln!("quarry loadgen: {err:#}");
                ExitCode::from(EX_USAGE)
            }
        },
    }
}
