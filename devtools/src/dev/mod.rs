//! `quarry dev`: the whole split CA on one machine. It makes a dev PKI on first run, renders each service's
//! configuration from the embedded `base` + `dev` environment, starts every replica of every service as its own
//! process under a supervisor, and runs the challenge test server as the va's DNS resolver unless told to use
//! another. With `--replicas N`, replica `i` of a service listens on 127.0.0.(1 + i) and its peers find every replica
//! through the same client-side discovery and balancing as in Kubernetes (a static list here, a headless Service's
//! DNS name there); a load balancer stands in front of the wfes.

mod knobs;
mod management;
mod pebble_config;
mod pebble_mode;
mod render;
mod supervisor;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::challtestsrv;
use anyhow::Context;

use quarry::env;
use supervisor::{Health, HealthChecker, ReplicaSpec, Supervisor};

pub use knobs::{Knobs, ServiceOverlays};
pub use pebble_mode::{PebbleArgs, pebble_argv};
pub use quarry::stack_file::{ReplicaInfo, StackInfo};
pub use render::{Extras, Layout, write_configs};

/// The internal certificate names of the stack's services, plus the operator's.
pub const PKI_NAMES: &[&str] =
    &["wfe", "ra", "sa", "ca", "va", "va-remote-a", "va-remote-b", "nonce", "publisher", "crl-updater", "admin"];

/// The most replicas of a service: each takes a loopback address of its own.
const MAX_REPLICAS: usize = 8;

#[derive(clap::Args, Debug, Clone)]
pub struct DevArgs {
    /// Where the dev PKI, the SQLite database, rendered configs, logs and stack.json live.
    #[arg(long, default_value = ".quarry")]
    data_dir: PathBuf,
    /// Where the ACME server (HTTPS) listens.
    #[arg(long, default_value = "127.0.0.1:14000")]
    acme_addr: SocketAddr,
    /// Where the wfe serves the CRLs (plain HTTP), the address in every certificate's CRL distribution point.
    #[arg(long, default_value = "127.0.0.1:4002")]
    crl_addr: SocketAddr,
    /// Serve Pebble's management API here (HTTPS, the ACME server's certificate): `/roots/0`, `/root-keys/0`,
    /// `/intermediates/0`, `/intermediate-keys/0`, `/cert-status-by-serial/{hex}`, `POST /set-renewal-info/` — e.g.
    /// `127.0.0.1:15000`, Pebble's port. Off unless asked: it hands out the dev hierarchy's keys.
    #[arg(long)]
    management_addr: Option<SocketAddr>,
    /// The DNS resolver the va uses; when given, no challenge test server is started.
    #[arg(long)]
    va_dns: Option<SocketAddr>,
    /// The DNS resolvers of the two remote perspectives, in order (default: the primary's); giving them their own
    /// lets a test make perspectives see different answers.
    #[arg(long, num_args = 2, value_names = ["REMOTE_A", "REMOTE_B"])]
    va_remote_dns: Option<Vec<SocketAddr>>,
    /// The port the va connects to for http-01.
    #[arg(long, default_value_t = 5002)]
    va_http_port: u16,
    /// The port the va connects to for tls-alpn-01.
    #[arg(long, default_value_t = 5001)]
    va_tls_port: u16,
    /// Do not run the challenge test server's http-01 responder (use this when your own server answers
    /// on the va's http-01 port, e.g. certbot --standalone).
    #[arg(long)]
    no_http01_responder: bool,
    /// Do not run the challenge test server's tls-alpn-01 responder (use this when your own server answers on the
    /// va's tls-alpn-01 port, e.g. lego --tls).
    #[arg(long)]
    no_tlsalpn01_responder: bool,
    /// The sa's database: `postgres://user@host:port/database` (which must exist) instead of SQLite in the data
    /// directory.
    #[arg(long)]
    db: Option<String>,
    /// The rate-limit file the ra enforces (default: the permissive dev limits), e.g.
    /// `deploy/env/production/ratelimits.toml` to see production's limits at work.
    #[arg(long)]
    ratelimits: Option<PathBuf>,
    /// Keep the rate-limit buckets in this Redis (`redis://127.0.0.1:6379/`) instead of the ra's memory.
    #[arg(long)]
    redis: Option<String>,
    /// Export every service's spans over OTLP/gRPC to this collector (e.g. Jaeger's `http://127.0.0.1:4317`).
    #[arg(long)]
    otlp_endpoint: Option<String>,
    /// Serve every service's Prometheus metrics (`GET /metrics`) on ten consecutive loopback ports from this one,
    /// in the order nonce, sa, va-remote-a, va-remote-b, va, publisher, ca, crl-updater, ra, wfe.
    #[arg(long)]
    metrics_base_port: Option<u16>,
    /// The first of the loopback ports the services' gRPC servers use (ten consecutive ports).
    #[arg(long, default_value_t = 9301)]
    grpc_base_port: u16,
    /// How many processes of each replicable service to run (every one but the crl-updater): replica `i` listens
    /// on 127.0.0.(1 + i), and a load balancer on the ACME and CRL addresses spreads connections over the wfes.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=MAX_REPLICAS as i64))]
    replicas: u8,
    /// How long every process may take to answer its health check as ready; past it, `quarry dev` stops everything
    /// and says which one is not, and why.
    #[arg(long, default_value_t = 60)]
    start_timeout_secs: u64,
    /// Pebble's client-testing knobs, and Quarry's own.
    #[command(flatten)]
    knobs: Knobs,
    /// Run as Pebble configured by this JSON file (its `pebble` object): its listen addresses, HTTPS certificate,
    /// validation ports, external account binding, blocklist, retry-after and CAA identities; the directory also at
    /// `/dir`, the management API at `managementListenAddress` (default: port 15000), no challenge responders (the
    /// test suite brings its own) and, without `--va-dns`, the system's resolver. A field with no equivalent is
    /// refused.
    #[arg(long)]
    pebble_config: Option<PathBuf>,
}

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

/// The loopback address of replica `index` of a service.
pub fn replica_ip(index: usize) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, 1 + index as u8)
}

/// Where the replicas of a stack on one host listen (`quarry dev`, the compose stack on the host's network): replica
/// `i` of a service on 127.0.0.(1 + i) at its service's port; with several wfes, a load balancer takes the ACME and
/// CRL addresses and wfe `i` listens on 127.0.0.(2 + i) at their ports.
#[derive(Debug, Clone, Copy)]
pub struct LoopbackLayout {
    pub replicas: usize,
    pub grpc_base_port: u16,
    pub acme: SocketAddr,
    pub crl: SocketAddr,
}

impl LoopbackLayout {
    /// Where replica `index` of the wfe serves ACME and CRLs.
    pub fn wfe_addrs(&self, index: usize) -> (SocketAddr, SocketAddr) {
        if self.replicas == 1 {
            return (self.acme, self.crl);
        }
        let ip = IpAddr::V4(replica_ip(index + 1));
        (SocketAddr::new(ip, self.acme.port()), SocketAddr::new(ip, self.crl.port()))
    }

    /// The wfes' ACME and CRL addresses, for the load balancer in front of them (none for a lone wfe).
    pub fn balanced(&self) -> Vec<(SocketAddr, Vec<String>)> {
        if self.replicas == 1 {
            return Vec::new();
        }
        let wfes = |pick: fn((SocketAddr, SocketAddr)) -> SocketAddr| -> Vec<String> {
            (0..self.replicas).map(|index| pick(self.wfe_addrs(index)).to_string()).collect()
        };
        vec![(self.acme, wfes(|(acme, _)| acme)), (self.crl, wfes(|(_, crl)| crl))]
    }

    /// Sets the placeholders replica `index` of `service` differs in: where it listens.
    pub fn replica_vars(&self, service: &str, index: usize, vars: &mut BTreeMap<&'static str, String>) {
        if service == "wfe" {
            let (acme, crl) = self.wfe_addrs(index);
            vars.insert("acme_listen", acme.to_string());
            vars.insert("crl_listen", crl.to_string());
        } else if let Some(listen) = env::listen_placeholder(service) {
            let port = env::grpc_port(self.grpc_base_port, service);
            vars.insert(listen, SocketAddr::new(replica_ip(index).into(), port).to_string());
        }
    }

    /// How a supervisor learns that replica `index` of `service` is ready.
    fn health(&self, service: &str, index: usize) -> Health {
        match service {
            "wfe" => Health::Https { addr: self.wfe_addrs(index).0 },
            "crl-updater" => Health::Running,
            other => Health::Grpc {
                addr: SocketAddr::new(replica_ip(index).into(), env::grpc_port(self.grpc_base_port, other)),
                server_name: format!("{other}.quarry"),
            },
        }
    }
}

impl DevArgs {
    fn replicas(&self) -> usize {
        usize::from(self.replicas)
    }

    /// Where each replica listens.
    fn layout(&self) -> LoopbackLayout {
        LoopbackLayout {
            replicas: self.replicas(),
            grpc_base_port: self.grpc_base_port,
            acme: self.acme_addr,
            crl: self.crl_addr,
        }
    }

    fn base_url(&self) -> String {
        let host = match self.acme_addr.ip() {
            // Every interface: clients on this machine say localhost (Pebble's `https://localhost:14000/dir`).
            ip if (ip.is_loopback() && ip.is_ipv4()) || ip.is_unspecified() => "localhost".to_owned(),
            ip if ip.is_ipv6() => format!("[{ip}]"),
            ip => ip.to_string(),
        };
        format!("https://{host}:{}", self.acme_addr.port())
    }

    fn va_dns(&self) -> SocketAddr {
        self.va_dns.unwrap_or(SocketAddr::from(([127, 0, 0, 1], 8053)))
    }

    fn remote_dns(&self, index: usize) -> SocketAddr {
        self.va_remote_dns.as_ref().and_then(|all| all.get(index).copied()).unwrap_or_else(|| self.va_dns())
    }

    /// The values substituted into the environment's `${name}` placeholders; `ct_logs` are the (URL, base64 public
    /// key) of the two CT logs.
    pub fn variables(&self, data_dir: &Path, ct_logs: &[(String, String); 2]) -> BTreeMap<&'static str, String> {
        let mut vars = BTreeMap::from([
            ("data_dir", data_dir.display().to_string()),
            (
                "database_url",
                self.db.clone().unwrap_or_else(|| format!("sqlite://{}/quarry.db?mode=rwc", data_dir.display())),
            ),
            ("pki_dir", data_dir.join("pki").display().to_string()),
            ("acme_listen", self.acme_addr.to_string()),
            ("crl_listen", self.crl_addr.to_string()),
            ("crl_authority", self.crl_addr.to_string()),
            (
                "ratelimits_file",
                self.ratelimits.as_ref().map_or_else(
                    || data_dir.join("config/ratelimits.toml").display().to_string(),
                    |path| path.display().to_string(),
                ),
            ),
            ("base_url", self.base_url()),
            ("va_dns", self.va_dns().to_string()),
            ("va_remote_a_dns", self.remote_dns(0).to_string()),
            ("va_remote_b_dns", self.remote_dns(1).to_string()),
            ("va_http_port", self.va_http_port.to_string()),
            ("va_tls_port", self.va_tls_port.to_string()),
            ("ct_log_a_url", ct_logs[0].0.clone()),
            ("ct_log_a_key", ct_logs[0].1.clone()),
            ("ct_log_b_url", ct_logs[1].0.clone()),
            ("ct_log_b_key", ct_logs[1].1.clone()),
        ]);
        env::add_grpc_addresses(
            &mut vars,
            self.grpc_base_port,
            self.replicas(),
            |index| replica_ip(index).into(),
            |_, index| replica_ip(index).to_string(),
        );
        vars
    }

    #[cfg(test)]
    pub fn default_for_tests() -> Self {
        use clap::Parser;
        #[derive(Parser)]
        struct Wrapper {
            #[command(flatten)]
            args: DevArgs,
        }
        Wrapper::parse_from(["quarry"]).args
    }
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
