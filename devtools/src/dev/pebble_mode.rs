//! Pebble mode: `quarry pebble` (Pebble's own command line, also as a binary called `pebble`) and `quarry dev
//! --pebble-config`, which read Pebble's configuration file (`pebble_config`) and apply it to what `quarry dev` runs,
//! with Pebble's defaults where Quarry's would surprise a suite written for Pebble (`/dir`, port 15000, page size 3,
//! the system's resolver, no responders of Quarry's own).

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use anyhow::Context;

use super::args::DevArgs;
use super::knobs::{self, ServiceOverlays};
use super::pebble_config;

/// `quarry pebble`: Pebble's own command line (`-config`, `-dnsserver`, `-strict`, with one dash or two), running
/// `quarry dev` as `--pebble-config` does. A `pebble` link to the binary runs it too.
#[derive(clap::Args, Debug)]
pub struct PebbleArgs {
    /// Pebble's configuration file.
    #[arg(long, default_value = "test/config/pebble-config.json")]
    config: PathBuf,
    /// The DNS server the validations ask (`host:port`); default: the system's resolver, as Pebble's.
    #[arg(long)]
    dnsserver: Option<SocketAddr>,
    /// Pebble's strict mode: accepted, since Quarry always behaves as production does.
    #[arg(long)]
    strict: bool,
    /// Print the version and exit, as Pebble's `-version` does.
    #[arg(long)]
    pub version: bool,
    /// Where the dev PKI, the database and logs live (Quarry's own option).
    #[arg(long, default_value = ".quarry")]
    data_dir: PathBuf,
    /// The first of the ten loopback ports of the services' gRPC servers (Quarry's own option).
    #[arg(long, default_value_t = 9301)]
    grpc_base_port: u16,
    /// Where the CRLs are served (Quarry's own option).
    #[arg(long, default_value = "127.0.0.1:4002")]
    crl_addr: SocketAddr,
}

impl PebbleArgs {
    /// The `quarry dev` arguments it stands for (Pebble's variables included).
    pub fn into_dev(self) -> DevArgs {
        let mut dev = DevArgs::defaults();
        dev.pebble_config = Some(self.config);
        dev.va_dns = self.dnsserver;
        dev.data_dir = self.data_dir;
        dev.grpc_base_port = self.grpc_base_port;
        dev.crl_addr = self.crl_addr;
        dev
    }
}

/// Pebble's single-dash long options (`-config FILE`, `-dnsserver=ADDR`) as clap reads them; the rest unchanged.
pub fn pebble_argv(args: impl IntoIterator<Item = String>) -> Vec<String> {
    args.into_iter()
        .map(|arg| match arg.strip_prefix('-') {
            Some(rest) if !rest.starts_with('-') && rest.len() > 1 => format!("--{rest}"),
            _ => arg,
        })
        .collect()
}

/// The first `nameserver` of `/etc/resolv.conf` (port 53), or 127.0.0.1:53: the resolver Pebble would use.
fn system_resolver() -> SocketAddr {
    let conf = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    conf.lines()
        .filter_map(|line| line.trim().strip_prefix("nameserver"))
        .find_map(|rest| rest.trim().parse::<IpAddr>().ok())
        .map_or(SocketAddr::from(([127, 0, 0, 1], 53)), |ip| SocketAddr::new(ip, 53))
}

/// Applies a Pebble configuration file to `args` and `overlays`; returns it for what `run` still needs (the HTTPS
/// certificate, the notes).
pub(super) fn apply(
    args: &mut DevArgs,
    overlays: &mut ServiceOverlays,
    path: &Path,
) -> anyhow::Result<pebble_config::PebbleConfig> {
    let mut pebble = pebble_config::read(path)?;
    if let Some(listen) = pebble.listen {
        args.acme_addr = listen;
    }
    args.management_addr = args
        .management_addr
        .or(pebble.management)
        .or(Some(SocketAddr::new(args.acme_addr.ip(), PEBBLE_MANAGEMENT_PORT)));
    if let Some(port) = pebble.http_port {
        args.va_http_port = port;
    }
    if let Some(port) = pebble.tls_port {
        args.va_tls_port = port;
    }
    // A suite run against Pebble brings its own responders (and often its DNS server, given with -dnsserver).
    args.no_http01_responder = true;
    args.no_tlsalpn01_responder = true;
    args.va_dns = args.va_dns.or_else(|| Some(system_resolver()));
    if let Some((cert, key)) = &mut pebble.https {
        *cert = std::fs::canonicalize(&*cert).with_context(|| format!("certificate {}", cert.display()))?;
        *key = std::fs::canonicalize(&*key).with_context(|| format!("privateKey {}", key.display()))?;
        knobs::set_key(overlays, "wfe", &["https_cert"], cert.display().to_string().into());
        knobs::set_key(overlays, "wfe", &["https_key"], key.display().to_string().into());
    }
    knobs::add_overlays(overlays, std::mem::take(&mut pebble.overlays));
    if args.knobs.orders_per_page.is_none() {
        // Pebble's page size, which a suite written for it may count on to see a second page.
        knobs::set_key(overlays, "wfe", &["orders_per_page"], toml::Value::Integer(PEBBLE_ORDERS_PER_PAGE));
    }
    Ok(pebble)
}

/// Pebble's default page size of an account's orders list.
const PEBBLE_ORDERS_PER_PAGE: i64 = 3;

/// Pebble's management port, where its API is when the configuration names no address.
const PEBBLE_MANAGEMENT_PORT: u16 = 15000;
