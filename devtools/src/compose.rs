//! The container stack's own commands: `quarry compose-init` prepares the shared data volume (dev PKI and every
//! service's configuration, rendered from the same embedded `base` + `dev` environment as `quarry dev`, with the
//! stack's addressing), and `quarry fake-ct-log` runs one of the dev CT logs as its own container.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use anyhow::Context;

use quarry::env;

use crate::dev;

/// The stack's ports, the same whichever network it runs on (and the same as `quarry dev`'s defaults).
const GRPC_BASE_PORT: u16 = 9301;
const ACME_PORT: u16 = 14000;
const CRL_PORT: u16 = 4002;
const CT_LOG_PORTS: [u16; 2] = [4600, 4601];
const DNS_PORT: u16 = 8053;
const CHALLTESTSRV_MANAGEMENT_PORT: u16 = 8055;
const HTTP01_PORT: u16 = 5002;
const TLSALPN01_PORT: u16 = 5001;

/// How the stack's containers reach each other.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Network {
    /// Containers on the compose network, each reached by its service name; servers listen on every address.
    Bridge,
    /// Every container on the host's network: servers listen on, and peers dial, 127.0.0.1.
    Host,
}

#[derive(clap::Args, Debug)]
pub struct ComposeInitArgs {
    /// The shared data volume: the dev PKI (kept across runs), `config/` and `stack.json` go here.
    #[arg(long, default_value = "/data")]
    data_dir: PathBuf,
    #[arg(long, value_enum, default_value_t = Network::Bridge)]
    network: Network,
    /// The sa's database (it must exist; the sa applies its migrations).
    #[arg(long)]
    database_url: String,
    /// The Redis that keeps the ra's rate-limit buckets.
    #[arg(long)]
    redis_url: String,
    /// Where every service exports its spans (OTLP/gRPC), e.g. the stack's Jaeger.
    #[arg(long)]
    otlp_endpoint: Option<String>,
    /// How many containers of each replicable service the compose file runs (`<service>`, `<service>-2`…); each
    /// gets its own configuration, and every peer's address lists them all.
    #[arg(long, default_value_t = 2)]
    replicas: usize,
    /// The name (or address) ACME clients reach the stack by: the directory's URLs and the CRL URLs use it, and the
    /// HTTPS certificate (and its name-constrained CA) covers it besides localhost. Set it, and publish the ports on
    /// an address other hosts reach, to use the stack from another machine.
    #[arg(long, default_value = "localhost")]
    public_host: String,
}

#[derive(clap::Args, Debug)]
pub struct FakeCtLogArgs {
    /// The log's P-256 signing key (PEM); `quarry compose-init` makes two in `pki/ct/`.
    #[arg(long)]
    key: PathBuf,
    #[arg(long, default_value = "127.0.0.1:4600")]
    listen: SocketAddr,
}

/// Runs a fake RFC 6962 log until Ctrl-C or SIGTERM.
pub async fn run_fake_ct_log(args: FakeCtLogArgs) -> anyhow::Result<()> {
    let log = crate::ctlog::FakeCtLog::with_key(read_log_key(&args.key)?);
    let listener = tokio::net::TcpListener::bind(args.listen).await.with_context(|| format!("bind {}", args.listen))?;
    println!("fake CT log on http://{} (key {})", args.listen, log.public_key_base64());
    log.serve(listener, quarry_core::shutdown::signal()).await?;
    Ok(())
}

fn read_log_key(path: &Path) -> anyhow::Result<rcgen::KeyPair> {
    let pem = std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
    rcgen::KeyPair::from_pem(&pem).with_context(|| format!("{} is not a PEM private key", path.display()))
}

impl ComposeInitArgs {
    /// The host its peers dial replica `index` of `service` at: its container's name on the compose network, its
    /// loopback address on the host's.
    fn host_of(&self, service: &str, index: usize) -> String {
        match self.network {
            Network::Bridge => env::replica_name(service, index),
            Network::Host => dev::replica_ip(index).to_string(),
        }
    }

    fn listen_ip(&self, index: usize) -> IpAddr {
        match self.network {
            Network::Bridge => Ipv4Addr::UNSPECIFIED.into(),
            Network::Host => dev::replica_ip(index).into(),
        }
    }

    /// Where each replica listens on the host's network (the same as `quarry dev`'s defaults).
    fn loopback(&self) -> dev::LoopbackLayout {
        dev::LoopbackLayout {
            replicas: self.replicas,
            grpc_base_port: GRPC_BASE_PORT,
            acme: SocketAddr::from((Ipv4Addr::LOCALHOST, ACME_PORT)),
            crl: SocketAddr::from((Ipv4Addr::LOCALHOST, CRL_PORT)),
        }
    }

    /// The public host as a URL's authority writes it (an IPv6 address in brackets).
    fn url_host(&self) -> String {
        match self.public_host.parse::<IpAddr>() {
            Ok(IpAddr::V6(ip)) => format!("[{ip}]"),
            _ => self.public_host.clone(),
        }
    }

    /// The placeholders of the `dev` environment, filled for this stack; `log_keys` are the CT logs' public keys.
    async fn variables(&self, log_keys: [String; 2]) -> anyhow::Result<BTreeMap<&'static str, String>> {
        let data_dir = self.data_dir.display().to_string();
        let listen = |port| SocketAddr::new(self.listen_ip(0), port).to_string();
        // The va takes its resolver as an address, so the challenge server's name is resolved here, once; compose
        // starts this after the challenge server.
        let dns = tokio::net::lookup_host((self.host_of("challtestsrv", 0), DNS_PORT))
            .await
            .context("resolve the challenge test server")?
            .find(SocketAddr::is_ipv4)
            .context("the challenge test server has no IPv4 address")?
            .to_string();
        let [log_a_key, log_b_key] = log_keys;
        let mut vars = BTreeMap::from([
            ("data_dir", data_dir.clone()),
            ("pki_dir", format!("{data_dir}/pki")),
            ("database_url", self.database_url.clone()),
            ("ratelimits_file", format!("{data_dir}/config/ratelimits.toml")),
            ("acme_listen", listen(ACME_PORT)),
            // Both are published on the host's loopback, where the developer's ACME clients run.
            ("base_url", format!("https://{}:{ACME_PORT}", self.url_host())),
            ("crl_listen", listen(CRL_PORT)),
            ("crl_authority", format!("{}:{CRL_PORT}", self.url_host())),
            ("va_dns", dns.clone()),
            ("va_remote_a_dns", dns.clone()),
            ("va_remote_b_dns", dns),
            ("va_http_port", HTTP01_PORT.to_string()),
            ("va_tls_port", TLSALPN01_PORT.to_string()),
            ("ct_log_a_url", format!("http://{}:{}/", self.host_of("ct-log-a", 0), CT_LOG_PORTS[0])),
            ("ct_log_a_key", log_a_key),
            ("ct_log_b_url", format!("http://{}:{}/", self.host_of("ct-log-b", 0), CT_LOG_PORTS[1])),
            ("ct_log_b_key", log_b_key),
        ]);
        env::add_grpc_addresses(
            &mut vars,
            GRPC_BASE_PORT,
            self.replicas,
            |index| self.listen_ip(index),
            |service, index| self.host_of(service, index),
        );
        let wfe_addresses = match self.network {
            Network::Bridge => env::address_list((0..self.replicas).map(|index| self.host_of("wfe", index)), ACME_PORT),
            Network::Host => self.loopback().wfe_addresses(),
        };
        vars.insert("wfe_addresses", wfe_addresses);
        Ok(vars)
    }
}

/// Makes (or keeps) the dev PKI in the data volume and writes every service's configuration and `stack.json`.
pub async fn init(args: ComposeInitArgs) -> anyhow::Result<()> {
    let public_hosts = [args.public_host.clone()];
    let pki = quarry_ceremony::ensure_dev_pki_for_hosts(&args.data_dir.join("pki"), dev::PKI_NAMES, &public_hosts)
        .context("dev PKI")?;
    let log_keys = [&pki.ct_log_keys[0], &pki.ct_log_keys[1]]
        .map(|path| read_log_key(path).map(|key| crate::ctlog::FakeCtLog::with_key(key).public_key_base64()));
    let [a, b] = log_keys;
    let mut vars = args.variables([a?, b?]).await?;
    vars.insert("nonce_prefix_key", dev::read_secret(&pki.nonce_prefix_key)?);

    let config_dir = args.data_dir.join("config");
    let extras = dev::Extras {
        redis_url: Some(&args.redis_url),
        otlp_endpoint: args.otlp_endpoint.as_deref(),
        metrics_base_port: None,
        // Pebble's provocations are for `quarry dev` only: the containers run as production does.
        overlays: dev::ServiceOverlays::new(),
    };
    let loopback = args.loopback();
    let replica_vars = |service: &str, index: usize, vars: &mut BTreeMap<&'static str, String>| match args.network {
        // Each container listens on every address of its own; only the names peers dial differ.
        Network::Bridge => {}
        Network::Host => loopback.replica_vars(service, index, vars),
    };
    let layout = dev::Layout { replicas: args.replicas, replica_vars: &replica_vars };
    dev::write_configs(&config_dir, &vars, &extras, &layout)?;

    let info = dev::StackInfo {
        directory_url: format!("{}/directory", vars["base_url"]),
        tls_ca_pem: pki.https_ca_pem.clone(),
        root_pem: pki.root_pem.clone(),
        challtestsrv_url: Some(format!("http://localhost:{CHALLTESTSRV_MANAGEMENT_PORT}")),
        crl_base_url: format!("http://{}/", vars["crl_authority"]),
        logs_dir: None,
        replicas: Vec::new(),
        management_url: None,
    };
    std::fs::write(args.data_dir.join("stack.json"), serde_json::to_string_pretty(&info)? + "\n")?;
    println!("configurations for the {:?} network written to {}", args.network, config_dir.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The stack of host-network.yml, in `dir`, reached by `public_host`.
    fn host_network_args(dir: &Path, public_host: &str) -> ComposeInitArgs {
        ComposeInitArgs {
            data_dir: dir.to_owned(),
            network: Network::Host,
            database_url: "postgres://quarry@127.0.0.1:15432/quarry".into(),
            redis_url: "redis://127.0.0.1:16379/".into(),
            otlp_endpoint: Some("http://127.0.0.1:4317".into()),
            replicas: 2,
            public_host: public_host.into(),
        }
    }

    /// On the host's network every replica listens on, and is dialled at, a loopback address of its own, and every
    /// configuration the init writes is a valid typed configuration of its service.
    #[tokio::test]
    async fn host_network_init_writes_valid_loopback_configs() {
        let dir = tempfile::tempdir().unwrap();
        init(host_network_args(dir.path(), "localhost")).await.unwrap();
        for service in env::SERVICES {
            for index in 0..env::replicas_of(service, 2) {
                let name = env::replica_name(service, index);
                let text = std::fs::read_to_string(dir.path().join(format!("config/{name}.toml"))).unwrap();
                env::parse_as(service, &text, &name).unwrap_or_else(|e| panic!("{name}: {e}\n{text}"));
                assert!(!text.contains("0.0.0.0"), "{name} listens beyond loopback:\n{text}");
            }
        }
        assert!(!dir.path().join("config/crl-updater-2.toml").exists(), "one crl-updater");
        let ra = std::fs::read_to_string(dir.path().join("config/ra.toml")).unwrap();
        assert!(ra.contains("redis://127.0.0.1:16379/"), "{ra}");
        assert!(ra.contains("https://127.0.0.1:9302,https://127.0.0.2:9302"), "both sa replicas: {ra}");
        let ra_2 = std::fs::read_to_string(dir.path().join("config/ra-2.toml")).unwrap();
        assert!(ra_2.contains("listen = \"127.0.0.2:9309\""), "{ra_2}");
        let wfe_2 = std::fs::read_to_string(dir.path().join("config/wfe-2.toml")).unwrap();
        assert!(wfe_2.contains("listen = \"127.0.0.3:14000\""), "behind the load balancer: {wfe_2}");
        assert!(ra.contains("otlp_endpoint = \"http://127.0.0.1:4317\""), "{ra}");
        let stack: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.path().join("stack.json")).unwrap()).unwrap();
        assert_eq!(stack["directory_url"], "https://localhost:14000/directory");
        assert!(dir.path().join("pki/ct/ct-log-a.key.pem").exists());
    }

    #[test]
    fn bridge_network_peers_are_dialled_by_service_name() {
        let args = ComposeInitArgs {
            data_dir: "/data".into(),
            network: Network::Bridge,
            database_url: String::new(),
            redis_url: String::new(),
            otlp_endpoint: None,
            replicas: 2,
            public_host: "localhost".into(),
        };
        assert_eq!(args.host_of("va-remote-a", 0), "va-remote-a");
        assert_eq!(args.host_of("va-remote-a", 1), "va-remote-a-2");
        assert!(args.listen_ip(1).is_unspecified());
    }

    /// A stack other machines use: its URLs name the public host, and its HTTPS certificate chains to the stack's CA
    /// for that name.
    #[tokio::test]
    async fn a_public_host_names_the_urls_and_the_https_certificate() {
        let dir = tempfile::tempdir().unwrap();
        init(host_network_args(dir.path(), "ca.dev.example")).await.unwrap();
        let stack: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.path().join("stack.json")).unwrap()).unwrap();
        assert_eq!(stack["directory_url"], "https://ca.dev.example:14000/directory");
        assert_eq!(stack["crl_base_url"], "http://ca.dev.example:4002/");
        let wfe = std::fs::read_to_string(dir.path().join("config/wfe.toml")).unwrap();
        assert!(wfe.contains("base_url = \"https://ca.dev.example:14000\""), "{wfe}");
        let pem = std::fs::read(dir.path().join("pki/https/wfe.pem")).unwrap();
        let (_, pem) = x509_parser::pem::parse_x509_pem(&pem).unwrap();
        let cert = pem.parse_x509().unwrap();
        let names = cert.subject_alternative_name().unwrap().unwrap().value.general_names.clone();
        assert!(names.iter().any(|name| name.to_string().contains("ca.dev.example")), "{names:?}");
    }
}
