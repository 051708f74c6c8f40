//! `quarry dev`: the whole split CA on one machine. It makes a dev PKI on first run, renders each service's
//! configuration from the embedded `base` + `dev` environment, starts every replica of every service as its own
//! process under a supervisor, and runs the challenge test server as the va's DNS resolver unless told to use
//! another. With `--replicas N`, replica `i` of a service listens on 127.0.0.(1 + i) and its peers find every replica
//! through the same client-side discovery and balancing as in Kubernetes (a static list here, a headless Service's
//! DNS name there); a load balancer stands in front of the wfes.

mod args;
mod knobs;
mod loopback;
mod management;
mod pebble_config;
mod pebble_mode;
mod render;
mod supervisor;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::challtestsrv;
use anyhow::Context;

use quarry::env;
use supervisor::{HealthChecker, ReplicaSpec, Supervisor};

pub use args::DevArgs;
pub use knobs::{Knobs, ServiceOverlays};
pub use loopback::{LoopbackLayout, replica_ip};
pub use pebble_mode::{PebbleArgs, pebble_argv};
pub use quarry::stack_file::{ReplicaInfo, StackInfo};
pub use render::{Extras, Layout, write_configs};

/// The internal certificate names of the stack's services, plus the operator's.
pub const PKI_NAMES: &[&str] =
    &["wfe", "ra", "sa", "ca", "va", "va-remote-a", "va-remote-b", "nonce", "publisher", "crl-updater", "admin"];

#[derive(clap::Args, Debug)]
pub struct ChalltestsrvArgs {
    /// DNS server address (UDP and TCP).
    #[arg(long, default_value = "127.0.0.1:8053")]
    dns_addr: SocketAddr,
    /// http-01 responder address.
    #[arg(long, default_value = "127.0.0.1:5002")]
    http01_addr: SocketAddr,
    /// tls-alpn-01 responder address.
    #[arg(long, alias = "tlsalpn01", default_value = "127.0.0.1:5001")]
    tlsalpn01_addr: SocketAddr,
    /// Management API address.
    #[arg(long, default_value = "127.0.0.1:8055")]
    management_addr: SocketAddr,
    /// The IPv4 address every name resolves to unless set otherwise, or a host name to resolve at start (a
    /// container's own service name, so that validations reach its responders).
    #[arg(long, default_value = "127.0.0.1")]
    default_ipv4: String,
}

/// Runs the challenge test server alone until Ctrl-C.
pub async fn run_challtestsrv(args: ChalltestsrvArgs) -> anyhow::Result<()> {
    let default_ipv4 = match args.default_ipv4.parse::<Ipv4Addr>() {
        Ok(ip) => ip,
        Err(_) => tokio::net::lookup_host((args.default_ipv4.as_str(), 0))
            .await
            .with_context(|| format!("resolve {}", args.default_ipv4))?
            .find_map(|addr| match addr.ip() {
                IpAddr::V4(ip) => Some(ip),
                IpAddr::V6(_) => None,
            })
            .with_context(|| format!("{} has no IPv4 address", args.default_ipv4))?,
    };
    let config = challtestsrv::Config {
        dns_addr: Some(args.dns_addr),
        http01_addr: Some(args.http01_addr),
        tlsalpn01_addr: Some(args.tlsalpn01_addr),
        management_addr: args.management_addr,
        default_ipv4: Some(default_ipv4),
        default_ipv6: None,
    };
    challtestsrv::run(config, quarry_core::shutdown::signal()).await?;
    Ok(())
}

/// Starts the stack, prints where it is, and runs until Ctrl-C, restarting any replica that exits.
pub async fn run(mut args: DevArgs) -> anyhow::Result<()> {
    let mut overlays = args.knobs.overlays();
    let pebble = match args.pebble_config.clone() {
        Some(path) => Some(pebble_mode::apply(&mut args, &mut overlays, &path)?),
        None => None,
    };
    // Pebble mode names the management address too, so this follows it.
    if args.management_addr.is_some() {
        knobs::add_overlays(&mut overlays, knobs::management_overlays());
    }
    std::fs::create_dir_all(&args.data_dir).with_context(|| format!("create {}", args.data_dir.display()))?;
    let data_dir = std::fs::canonicalize(&args.data_dir)?;
    let pki = quarry_ceremony::ensure_dev_pki(&data_dir.join("pki"), PKI_NAMES).context("dev PKI")?;
    let chains = match args.knobs.chain_shape() {
        (1, 0) => quarry_ceremony::chains::single(&pki),
        (length, alternates) => {
            let chains = quarry_ceremony::chains::ensure_dev_chains(&pki, length, alternates)?;
            // Every chain after the leaf, E1's and R1's of each, the default chain first.
            let served = chains.iter().flat_map(|chain| chain.issuer_chains.iter());
            let served = served.map(|path| toml::Value::String(path.display().to_string())).collect();
            knobs::set_key(&mut overlays, "wfe", &["chains"], toml::Value::Array(served));
            chains
        }
    };

    let challtestsrv = match args.va_dns {
        Some(_) => None,
        None => Some(start_challtestsrv(&args).await?),
    };

    let config_dir = data_dir.join("config");
    let logs_dir = data_dir.join("logs");
    std::fs::create_dir_all(&logs_dir)?;
    let (ct_logs, stop_ct_logs) = start_ct_logs(&pki.ct_log_keys).await?;
    let mut vars = args.variables(&data_dir, &ct_logs);
    vars.insert("nonce_prefix_key", read_secret(&pki.nonce_prefix_key)?);
    let exe = crate::quarry_binary()?;
    if let Some(path) = &args.ratelimits {
        let text = std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
        let file: quarry_ratelimits::LimitsFile =
            toml::from_str(&text).with_context(|| format!("{} is not a limits file", path.display()))?;
        quarry_ratelimits::Limits::from_file(&file).with_context(|| format!("{}", path.display()))?;
    }
    let extras = Extras {
        redis_url: args.redis.as_deref(),
        otlp_endpoint: args.otlp_endpoint.as_deref(),
        metrics_base_port: args.metrics_base_port,
        overlays,
    };
    let loopback = args.layout();
    let layout = Layout {
        replicas: args.replicas(),
        replica_vars: &|service, index, vars| loopback.replica_vars(service, index, vars),
    };
    let specs = write_configs(&config_dir, &vars, &extras, &layout)?
        .into_iter()
        .map(|written| ReplicaSpec {
            health: loopback.health(written.service, written.index),
            subcommand: env::subcommand(written.service),
            service: written.service,
            name: written.name,
            config: written.path,
            metrics: written.metrics,
        })
        .collect();

    let stop_balancers = tokio_util::sync::CancellationToken::new();
    for (front, backends) in loopback.balanced() {
        let listener = tokio::net::TcpListener::bind(front).await.with_context(|| format!("bind {front}"))?;
        tokio::spawn(crate::balancer::serve(listener, backends, stop_balancers.clone()));
    }
    let supervisor = Supervisor::start(specs, &exe, &logs_dir)?;
    let (admin_cert, admin_key) = pki.service_cert("admin");
    let admin_tls = quarry_core::config::TlsFiles::new(admin_cert, admin_key, &pki.internal_ca_pem);
    let checker = match pebble.as_ref().and_then(|pebble| pebble.https.as_ref()) {
        // The operator's certificate, of a CA quarry dev does not know: the wfe is known by that very certificate.
        Some((cert, _)) => HealthChecker::pinned(admin_tls, cert)?,
        None => HealthChecker::new(admin_tls, &pki.https_ca_pem)?,
    };
    let ready = supervisor.wait_ready(&checker, Duration::from_secs(args.start_timeout_secs)).await;
    if let Err(err) = ready {
        supervisor.stop().await;
        return Err(err);
    }

    let stop_management = tokio_util::sync::CancellationToken::new();
    let management = match args.management_addr {
        Some(addr) => {
            let sa = quarry::admin::sa_client(&config_dir.join("admin.toml"))?;
            let https = pebble.as_ref().and_then(|pebble| pebble.https.clone());
            let (cert, key) = https.unwrap_or_else(|| (pki.https_cert.clone(), pki.https_key.clone()));
            let stop = stop_management.clone().cancelled_owned();
            management::serve(addr, &pki, &chains, (&cert, &key), sa, stop).await?;
            Some(format!("https://{addr}"))
        }
        None => None,
    };

    let directory_path = if pebble.is_some() { "dir" } else { "directory" };
    let mut info = StackInfo {
        directory_url: format!("{}/{directory_path}", args.base_url()),
        tls_ca_pem: pki.https_ca_pem.clone(),
        // The default chain's root: a longer chain has a root of its own.
        root_pem: chains[0].root_pem.clone(),
        challtestsrv_url: challtestsrv.as_ref().map(|srv| format!("http://{}", srv.management_addr)),
        crl_base_url: format!("http://{}/", args.crl_addr),
        logs_dir: Some(logs_dir.clone()),
        replicas: supervisor.replicas(),
        management_url: management,
    };
    let stack_file = data_dir.join("stack.json");
    write_stack_file(&stack_file, &info)?;
    let replicas = if args.replicas() > 1 { format!(" ({} replicas of each)", args.replicas()) } else { String::new() };
    println!("Quarry is running; every service is its own process{replicas} (logs in {}).", logs_dir.display());
    println!("ACME directory:        {}", info.directory_url);
    println!("Trust for HTTPS (PEM): {}", info.tls_ca_pem.display());
    println!("Issuing root (PEM):    {}", info.root_pem.display());
    println!("CRLs:                  {}{{e1,r1}}/<shard>.crl", info.crl_base_url);
    if let Some(url) = &info.challtestsrv_url {
        println!("Challenge test server: {url} (DNS on {})", args.va_dns());
    }
    if let Some(url) = &info.management_url {
        println!("Management API:        {url}/roots/0 (Pebble's)");
    }
    if let Some(pebble) = &pebble {
        if let Some((cert, _)) = &pebble.https {
            println!("HTTPS certificate:     {} (the Pebble configuration's)", cert.display());
        }
        for note in &pebble.notes {
            println!("Pebble configuration:  {note}");
        }
    }
    println!("Stack facts as JSON:   {}", stack_file.display());
    println!("A service that exits is restarted; press Ctrl-C to stop.");

    // The stack file follows restarts (their process ids) until Ctrl-C.
    let mut changes = supervisor.changes();
    let outcome = loop {
        tokio::select! {
            _ = quarry_core::shutdown::signal() => break Ok(()),
            changed = changes.changed() => {
                if changed.is_err() {
                    break Ok(());
                }
                info.replicas = supervisor.replicas();
                if let Err(err) = write_stack_file(&stack_file, &info) {
                    break Err(err);
                }
            }
        }
    };
    supervisor.stop().await;
    stop_balancers.cancel();
    stop_management.cancel();
    if let Some(srv) = challtestsrv {
        srv.shutdown().await;
    }
    stop_ct_logs.cancel();
    outcome
}

/// Writes the stack file whole (through a temporary file), so that a reader never sees half of it.
fn write_stack_file(path: &Path, info: &StackInfo) -> anyhow::Result<()> {
    let partial = path.with_extension("json.partial");
    std::fs::write(&partial, serde_json::to_string_pretty(info)? + "\n")?;
    std::fs::rename(&partial, path)?;
    Ok(())
}

/// Starts the dev stack's two fake CT logs (of distinct operators, as the SCT policy needs) on ephemeral loopback
/// ports with the dev PKI's log keys; returns their (URL, base64 public key).
async fn start_ct_logs(
    keys: &[PathBuf; 2],
) -> anyhow::Result<([(String, String); 2], tokio_util::sync::CancellationToken)> {
    let stop = tokio_util::sync::CancellationToken::new();
    let mut logs = Vec::new();
    for key_path in keys {
        let key = rcgen::KeyPair::from_pem(&std::fs::read_to_string(key_path)?)
            .with_context(|| format!("read {}", key_path.display()))?;
        let log = crate::ctlog::FakeCtLog::with_key(key);
        let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let url = format!("http://{}/", listener.local_addr()?);
        let key = log.public_key_base64();
        tokio::spawn(log.serve(listener, stop.clone().cancelled_owned()));
        logs.push((url, key));
    }
    let logs: [(String, String); 2] = logs.try_into().map_err(|_| anyhow::anyhow!("two CT logs"))?;
    Ok((logs, stop))
}

/// A secret file of the dev PKI, without surrounding whitespace.
pub fn read_secret(path: &Path) -> anyhow::Result<String> {
    Ok(std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?.trim().to_owned())
}

async fn start_challtestsrv(args: &DevArgs) -> anyhow::Result<challtestsrv::RunningServer> {
    let config = challtestsrv::Config {
        dns_addr: Some(args.va_dns()),
        http01_addr: (!args.no_http01_responder).then(|| SocketAddr::from(([127, 0, 0, 1], args.va_http_port))),
        tlsalpn01_addr: (!args.no_tlsalpn01_responder).then(|| SocketAddr::from(([127, 0, 0, 1], args.va_tls_port))),
        management_addr: SocketAddr::from(([127, 0, 0, 1], 8055)),
        default_ipv4: Some(Ipv4Addr::LOCALHOST),
        default_ipv6: None,
    };
    challtestsrv::ChallTestSrv::start(config).await.context("start the challenge test server (ports 8053, 8055)")
}
