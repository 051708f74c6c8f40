//! `quarry dev`'s command line, and what it makes of it: the values of the environment's placeholders, where each
//! replica listens, which DNS resolver the vas ask.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use quarry::env;

use super::knobs::Knobs;
use super::loopback::{LoopbackLayout, MAX_REPLICAS, replica_ip};

#[derive(clap::Args, Debug, Clone)]
pub struct DevArgs {
    /// Where the dev PKI, the SQLite database, rendered configs, logs and stack.json live.
    #[arg(long, default_value = ".quarry")]
    pub(super) data_dir: PathBuf,
    /// Where the ACME server (HTTPS) listens.
    #[arg(long, default_value = "127.0.0.1:14000")]
    pub(super) acme_addr: SocketAddr,
    /// Where the wfe serves the CRLs (plain HTTP), the address in every certificate's CRL distribution point.
    #[arg(long, default_value = "127.0.0.1:4002")]
    pub(super) crl_addr: SocketAddr,
    /// Serve Pebble's management API here (HTTPS, the ACME server's certificate): `/roots/0`, `/root-keys/0`,
    /// `/intermediates/0`, `/intermediate-keys/0`, `/cert-status-by-serial/{hex}`, `POST /set-renewal-info/` — e.g.
    /// `127.0.0.1:15000`, Pebble's port. Off unless asked: it hands out the dev hierarchy's keys.
    #[arg(long)]
    pub(super) management_addr: Option<SocketAddr>,
    /// The DNS resolver the va uses; when given, no challenge test server is started.
    #[arg(long)]
    pub(super) va_dns: Option<SocketAddr>,
    /// The DNS resolvers of the two remote perspectives, in order (default: the primary's); giving them their own
    /// lets a test make perspectives see different answers.
    #[arg(long, num_args = 2, value_names = ["REMOTE_A", "REMOTE_B"])]
    va_remote_dns: Option<Vec<SocketAddr>>,
    /// The port the va connects to for http-01.
    #[arg(long, default_value_t = 5002)]
    pub(super) va_http_port: u16,
    /// The port the va connects to for tls-alpn-01.
    #[arg(long, default_value_t = 5001)]
    pub(super) va_tls_port: u16,
    /// Do not run the challenge test server's http-01 responder (use this when your own server answers
    /// on the va's http-01 port, e.g. certbot --standalone).
    #[arg(long)]
    pub(super) no_http01_responder: bool,
    /// Do not run the challenge test server's tls-alpn-01 responder (use this when your own server answers on the
    /// va's tls-alpn-01 port, e.g. lego --tls).
    #[arg(long)]
    pub(super) no_tlsalpn01_responder: bool,
    /// The sa's database: `postgres://user@host:port/database` (which must exist) instead of SQLite in the data
    /// directory.
    #[arg(long)]
    db: Option<String>,
    /// The rate-limit file the ra enforces (default: the permissive dev limits), e.g.
    /// `deploy/env/production/ratelimits.toml` to see production's limits at work.
    #[arg(long)]
    pub(super) ratelimits: Option<PathBuf>,
    /// Keep the rate-limit buckets in this Redis (`redis://127.0.0.1:6379/`) instead of the ra's memory.
    #[arg(long)]
    pub(super) redis: Option<String>,
    /// Export every service's spans over OTLP/gRPC to this collector (e.g. Jaeger's `http://127.0.0.1:4317`).
    #[arg(long)]
    pub(super) otlp_endpoint: Option<String>,
    /// Serve every service's Prometheus metrics (`GET /metrics`) on ten consecutive loopback ports from this one,
    /// in the order nonce, sa, va-remote-a, va-remote-b, va, publisher, ca, crl-updater, ra, wfe.
    #[arg(long)]
    pub(super) metrics_base_port: Option<u16>,
    /// The first of the loopback ports the services' gRPC servers use (ten consecutive ports).
    #[arg(long, default_value_t = 9301)]
    pub(super) grpc_base_port: u16,
    /// How many processes of each replicable service to run (every one but the crl-updater): replica `i` listens
    /// on 127.0.0.(1 + i), and a load balancer on the ACME and CRL addresses spreads connections over the wfes.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=MAX_REPLICAS as i64))]
    replicas: u8,
    /// How long every process may take to answer its health check as ready; past it, `quarry dev` stops everything
    /// and says which one is not, and why.
    #[arg(long, default_value_t = 60)]
    pub(super) start_timeout_secs: u64,
    /// Pebble's client-testing knobs, and Quarry's own.
    #[command(flatten)]
    pub(super) knobs: Knobs,
    /// Run as Pebble configured by this JSON file (its `pebble` object): its listen addresses, HTTPS certificate,
    /// validation ports, external account binding, blocklist, retry-after and CAA identities; the directory also at
    /// `/dir`, the management API at `managementListenAddress` (default: port 15000), no challenge responders (the
    /// test suite brings its own) and, without `--va-dns`, the system's resolver. A field with no equivalent is
    /// refused.
    #[arg(long)]
    pub(super) pebble_config: Option<PathBuf>,
}

impl DevArgs {
    pub(super) fn replicas(&self) -> usize {
        usize::from(self.replicas)
    }

    /// Where each replica listens.
    pub(super) fn layout(&self) -> LoopbackLayout {
        LoopbackLayout {
            replicas: self.replicas(),
            grpc_base_port: self.grpc_base_port,
            acme: self.acme_addr,
            crl: self.crl_addr,
        }
    }

    pub(super) fn base_url(&self) -> String {
        let host = match self.acme_addr.ip() {
            // Every interface: clients on this machine say localhost (Pebble's `https://localhost:14000/dir`).
            ip if (ip.is_loopback() && ip.is_ipv4()) || ip.is_unspecified() => "localhost".to_owned(),
            ip if ip.is_ipv6() => format!("[{ip}]"),
            ip => ip.to_string(),
        };
        format!("https://{host}:{}", self.acme_addr.port())
    }

    pub(super) fn va_dns(&self) -> SocketAddr {
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
        vars.insert("wfe_addresses", self.layout().wfe_addresses());
        vars
    }

    /// Every option at its default, as a bare `quarry dev` has them (the knobs' `PEBBLE_*` variables read, as on a
    /// command line): Pebble mode's starting point, and the tests'.
    pub fn defaults() -> Self {
        use clap::Parser;
        #[derive(Parser)]
        struct Wrapper {
            #[command(flatten)]
            args: DevArgs,
        }
        Wrapper::parse_from(["quarry"]).args
    }
}
