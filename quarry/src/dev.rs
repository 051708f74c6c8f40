//! `quarry dev`: the whole split CA on one machine. It makes a dev PKI on first run, renders each service's
//! configuration from the embedded `base` + `dev` environment, starts every service as its own process, and runs
//! the challenge test server as the va's DNS resolver unless told to use another.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures::future::select_all;
use quarry_testkit::challtestsrv;
use tokio::process::{Child, Command};

use crate::env;

/// The internal certificate names of the stack's services, plus the operator's.
pub const PKI_NAMES: &[&str] =
    &["wfe", "ra", "sa", "ca", "va", "va-remote-a", "va-remote-b", "nonce", "publisher", "crl-updater", "admin"];

/// How long a service may take to accept connections after it was started.
const START_TIMEOUT: Duration = Duration::from_secs(30);

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
                std::net::IpAddr::V4(ip) => Some(ip),
                std::net::IpAddr::V6(_) => None,
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

impl DevArgs {
    fn grpc_port(&self, service: &str) -> u16 {
        env::grpc_port(self.grpc_base_port, service)
    }

    fn base_url(&self) -> String {
        let host = match self.acme_addr.ip() {
            ip if ip.is_loopback() && ip.is_ipv4() => "localhost".to_owned(),
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
        env::add_grpc_addresses(&mut vars, self.grpc_base_port, Ipv4Addr::LOCALHOST.into(), |_| "127.0.0.1".into());
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

/// What `quarry dev` tells scripts about the running stack (`<data-dir>/stack.json`).
#[derive(serde::Serialize, serde::Deserialize)]
pub struct StackInfo {
    pub directory_url: String,
    pub tls_ca_pem: PathBuf,
    pub root_pem: PathBuf,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub challtestsrv_url: Option<String>,
    /// Where CRL shards are served: `<crl_base_url><issuer>/<shard>.crl`.
    pub crl_base_url: String,
    /// Where each service's log is (`quarry dev`; a container stack's logs are the containers').
    #[serde(skip_serializing_if = "Option::is_none")]
    pub logs_dir: Option<PathBuf>,
}

/// Which ACME server a client tool (`quarry probe`, `quarry loadgen`) talks to: a directory URL, or the stack file
/// of a running `quarry dev`.
#[derive(clap::Args, Debug)]
pub struct AcmeTarget {
    /// The ACME directory URL.
    #[arg(required_unless_present = "stack", conflicts_with = "stack")]
    directory_url: Option<String>,
    /// A running `quarry dev`'s stack file: its directory, trust anchors and challenge test server.
    #[arg(long)]
    stack: Option<PathBuf>,
    /// The CA certificate(s) to trust for the server's HTTPS (PEM); default: the stack file's.
    #[arg(long)]
    tls_ca: Option<PathBuf>,
}

/// An [`AcmeTarget`] with the stack file read: what is known of the server.
pub struct Target {
    pub directory_url: String,
    pub tls_ca: Option<PathBuf>,
    /// The issuing root, when a stack file says.
    pub root: Option<PathBuf>,
    /// The stack's challenge test server, when it runs one.
    pub challtestsrv: Option<String>,
}

impl AcmeTarget {
    pub fn resolve(&self) -> anyhow::Result<Target> {
        let Some(path) = &self.stack else {
            return Ok(Target {
                directory_url: self.directory_url.clone().context("a directory URL or --stack")?,
                tls_ca: self.tls_ca.clone(),
                root: None,
                challtestsrv: None,
            });
        };
        let text = std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
        let stack: StackInfo =
            serde_json::from_str(&text).with_context(|| format!("{} is not a stack file", path.display()))?;
        Ok(Target {
            directory_url: stack.directory_url,
            tls_ca: self.tls_ca.clone().or(Some(stack.tls_ca_pem)),
            root: Some(stack.root_pem),
            challtestsrv: stack.challtestsrv_url,
        })
    }
}

/// Starts the stack, prints where it is, and runs until Ctrl-C or until a service dies.
pub async fn run(args: DevArgs) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.data_dir).with_context(|| format!("create {}", args.data_dir.display()))?;
    let data_dir = std::fs::canonicalize(&args.data_dir)?;
    let pki = quarry_ca::ceremony::ensure_dev_pki(&data_dir.join("pki"), PKI_NAMES).context("dev PKI")?;

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
    let exe = std::env::current_exe().context("locate the quarry binary")?;
    let mut children = Vec::new();
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
    };
    for (service, config_path) in write_configs(&config_dir, &vars, &extras)? {
        let log = std::fs::File::create(logs_dir.join(format!("{service}.log")))?;
        let mut command = Command::new(&exe);
        // Ten services share this host's cores: one runtime worker each (unless the caller chose otherwise) spares
        // the cross-thread wake-ups that cost about a sixth of the CPU per certificate with a worker per core.
        if std::env::var_os("TOKIO_WORKER_THREADS").is_none() {
            command.env("TOKIO_WORKER_THREADS", "1");
        }
        let child = command
            .arg(env::subcommand(service))
            .arg("--config")
            .arg(&config_path)
            .env(crate::SUPERVISED_ENV, "1")
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("start {service}"))?;
        children.push((service, child));
    }

    for service in env::SERVICES {
        let addr = match *service {
            // A client of the sa and the ca only: nothing to wait for.
            "crl-updater" => continue,
            "wfe" => args.acme_addr,
            other => SocketAddr::from(([127, 0, 0, 1], args.grpc_port(other))),
        };
        wait_for_port(service, addr, &mut children, &logs_dir).await?;
    }

    let info = StackInfo {
        directory_url: format!("{}/directory", args.base_url()),
        tls_ca_pem: pki.https_ca_pem.clone(),
        root_pem: pki.root_pem.clone(),
        challtestsrv_url: challtestsrv.as_ref().map(|srv| format!("http://{}", srv.management_addr)),
        crl_base_url: format!("http://{}/", args.crl_addr),
        logs_dir: Some(logs_dir.clone()),
    };
    std::fs::write(data_dir.join("stack.json"), serde_json::to_string_pretty(&info)? + "\n")?;
    println!("Quarry is running; every service is its own process (logs in {}).", logs_dir.display());
    println!("ACME directory:        {}", info.directory_url);
    println!("Trust for HTTPS (PEM): {}", info.tls_ca_pem.display());
    println!("Issuing root (PEM):    {}", info.root_pem.display());
    println!("CRLs:                  {}{{e1,r1}}/<shard>.crl", info.crl_base_url);
    if let Some(url) = &info.challtestsrv_url {
        println!("Challenge test server: {url} (DNS on {})", args.va_dns());
    }
    println!("Stack facts as JSON:   {}", data_dir.join("stack.json").display());
    println!("Press Ctrl-C to stop.");

    let outcome = tokio::select! {
        _ = quarry_core::shutdown::signal() => Ok(()),
        (service, status) = first_exit(&mut children) => Err(anyhow::anyhow!(
            "{service} exited ({status}); see {}", logs_dir.join(format!("{service}.log")).display()
        )),
    };
    for (_, child) in &mut children {
        let _ = child.start_kill();
    }
    for (_, child) in &mut children {
        let _ = child.wait().await;
    }
    if let Some(srv) = challtestsrv {
        srv.shutdown().await;
    }
    stop_ct_logs.cancel();
    outcome
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
        let log = quarry_testkit::ctlog::FakeCtLog::with_key(key);
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

/// What a stack adds to the rendered `dev` files.
pub struct Extras<'a> {
    /// Keep the ra's rate-limit buckets in this Redis.
    pub redis_url: Option<&'a str>,
    /// Export every service's spans here (OTLP/gRPC).
    pub otlp_endpoint: Option<&'a str>,
    /// Serve every service's metrics on loopback ports from this one, in start order.
    pub metrics_base_port: Option<u16>,
}

/// Writes `ratelimits.toml`, `admin.toml` and every service's configuration, rendered from the embedded base + dev
/// files with `vars` and `extras`, into `config_dir`; returns each service's configuration file, in start order.
pub fn write_configs(
    config_dir: &Path,
    vars: &BTreeMap<&'static str, String>,
    extras: &Extras<'_>,
) -> anyhow::Result<Vec<(&'static str, PathBuf)>> {
    std::fs::create_dir_all(config_dir).with_context(|| format!("create {}", config_dir.display()))?;
    std::fs::write(config_dir.join("ratelimits.toml"), env::DEV_RATELIMITS)?;
    let admin = env::substitute("dev/admin.toml".into(), env::DEV_ADMIN, vars)?;
    std::fs::write(config_dir.join("admin.toml"), admin.to_string())?;
    let mut written = Vec::new();
    for service in env::SERVICES {
        let mut rendered = env::render(service, env::DEV, vars)?;
        if let (true, Some(url)) = (*service == "ra", extras.redis_url) {
            rendered = with_redis(&rendered, url)?;
        }
        if let Some(endpoint) = extras.otlp_endpoint {
            rendered = with_telemetry(&rendered, "otlp_endpoint", endpoint.to_owned())?;
        }
        if let Some(base) = extras.metrics_base_port {
            let port = env::grpc_port(base, service);
            rendered = with_telemetry(&rendered, "metrics_listen", format!("127.0.0.1:{port}"))?;
        }
        let path = config_dir.join(format!("{service}.toml"));
        std::fs::write(&path, rendered)?;
        written.push((*service, path));
    }
    Ok(written)
}

/// The ra's rendered configuration with its rate-limit buckets in the Redis at `url`.
fn with_redis(rendered: &str, url: &str) -> anyhow::Result<String> {
    let mut table: toml::Table = toml::from_str(rendered)?;
    let limits = table
        .get_mut("rate_limits")
        .and_then(toml::Value::as_table_mut)
        .context("the ra's configuration has no [rate_limits]")?;
    limits.insert("redis_url".into(), toml::Value::String(url.to_owned()));
    Ok(table.to_string())
}

/// A rendered configuration with `[telemetry] key = value` set.
fn with_telemetry(rendered: &str, key: &str, value: String) -> anyhow::Result<String> {
    let mut table: toml::Table = toml::from_str(rendered)?;
    let telemetry = table.entry("telemetry").or_insert_with(|| toml::Value::Table(toml::Table::new()));
    let telemetry = telemetry.as_table_mut().context("[telemetry] is not a table")?;
    telemetry.insert(key.into(), toml::Value::String(value));
    Ok(table.to_string())
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

/// Waits until `addr` accepts TCP connections, failing early if any service has already exited.
async fn wait_for_port(
    service: &str,
    addr: SocketAddr,
    children: &mut [(&'static str, Child)],
    logs_dir: &Path,
) -> anyhow::Result<()> {
    let started = Instant::now();
    while started.elapsed() < START_TIMEOUT {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return Ok(());
        }
        for (name, child) in children.iter_mut() {
            if let Some(status) = child.try_wait()? {
                bail!(
                    "{name} exited during start-up ({status}); see {}",
                    logs_dir.join(format!("{name}.log")).display()
                );
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!(
        "{service} did not listen on {addr} within {START_TIMEOUT:?}; see {}",
        logs_dir.join(format!("{service}.log")).display()
    )
}

/// Completes when the first child process exits.
async fn first_exit(children: &mut [(&'static str, Child)]) -> (&'static str, std::process::ExitStatus) {
    let waits = children.iter_mut().map(|(name, child)| {
        Box::pin(async move {
            let status = child.wait().await;
            (*name, status)
        })
    });
    let ((name, status), _, _) = select_all(waits).await;
    (name, status.unwrap_or_else(|_| std::process::ExitStatus::default()))
}
