//! The environment configurations compiled into the binary (`deploy/env/base` and its overlays), rendered into
//! one TOML file per service with the run-time values (data directory, ports) filled in.

use std::collections::BTreeMap;

use anyhow::{Context, bail};

/// The services of the stack, in start order (peers before their callers).
pub const SERVICES: &[&str] =
    &["nonce", "sa", "va-remote-a", "va-remote-b", "va", "publisher", "ca", "crl-updater", "ra", "wfe"];

/// The `quarry` subcommand that runs `service`: remote perspectives are the va.
pub fn subcommand(service: &str) -> &str {
    if service.starts_with("va-remote-") { "va" } else { service }
}

/// The stack's gRPC servers: each one's service, the placeholder its peers dial it by (the URLs of every replica,
/// separated by commas) and the one it listens on.
const GRPC_SERVERS: &[(&str, &str, &str)] = &[
    ("nonce", "nonce_addresses", "nonce_listen"),
    ("sa", "sa_addresses", "sa_listen"),
    ("va-remote-a", "va_remote_a_addresses", "va_remote_a_listen"),
    ("va-remote-b", "va_remote_b_addresses", "va_remote_b_listen"),
    ("va", "va_addresses", "va_listen"),
    ("publisher", "publisher_addresses", "publisher_listen"),
    ("ca", "ca_addresses", "ca_listen"),
    ("ra", "ra_addresses", "ra_listen"),
];

/// The gRPC port of `service` in a stack whose ports start at `base_port` (one per service, in `SERVICES` order).
pub fn grpc_port(base_port: u16, service: &str) -> u16 {
    base_port + SERVICES.iter().position(|s| *s == service).unwrap_or(0) as u16
}

/// The placeholder `service` listens on (its gRPC listen address), if it serves gRPC.
pub fn listen_placeholder(service: &str) -> Option<&'static str> {
    GRPC_SERVERS.iter().find(|(name, ..)| *name == service).map(|(_, _, listen)| *listen)
}

/// How many processes of `service` a stack of `replicas` runs: every service is replicated but the crl-updater,
/// whose leases let several share the work but which needs no second for availability (DESIGN: replication).
pub fn replicas_of(service: &str, replicas: usize) -> usize {
    if service == "crl-updater" { 1 } else { replicas.max(1) }
}

/// The process name of replica `index` of `service`: the service's own for the first, `<service>-<n>` after it.
pub fn replica_name(service: &str, index: usize) -> String {
    if index == 0 { service.to_owned() } else { format!("{service}-{}", index + 1) }
}

/// The URLs of `hosts`, each on `port`, separated by commas: the value of an `…_addresses` placeholder.
pub fn address_list(hosts: impl IntoIterator<Item = String>, port: u16) -> String {
    hosts.into_iter().map(|host| format!("https://{host}:{port}")).collect::<Vec<_>>().join(",")
}

/// Adds every gRPC server's dial and listen placeholders for `replicas` replicas of each: replica `i` listens on
/// `listen_ip(i)` and is dialled at `dial_host(service, i)`, on its service's port from `base_port`. The listen
/// placeholder is the first replica's; each other replica's configuration is rendered with its own.
pub fn add_grpc_addresses(
    vars: &mut BTreeMap<&'static str, String>,
    base_port: u16,
    replicas: usize,
    listen_ip: impl Fn(usize) -> std::net::IpAddr,
    dial_host: impl Fn(&str, usize) -> String,
) {
    for (service, addresses_key, listen_key) in GRPC_SERVERS {
        let port = grpc_port(base_port, service);
        let hosts = (0..replicas_of(service, replicas)).map(|index| dial_host(service, index));
        vars.insert(addresses_key, address_list(hosts, port));
        vars.insert(listen_key, std::net::SocketAddr::new(listen_ip(0), port).to_string());
    }
}

macro_rules! env_files {
    ($env:literal) => {
        &[
            ("nonce", include_str!(concat!("../../deploy/env/", $env, "/nonce.toml"))),
            ("sa", include_str!(concat!("../../deploy/env/", $env, "/sa.toml"))),
            ("va-remote-a", include_str!(concat!("../../deploy/env/", $env, "/va-remote-a.toml"))),
            ("va-remote-b", include_str!(concat!("../../deploy/env/", $env, "/va-remote-b.toml"))),
            ("va", include_str!(concat!("../../deploy/env/", $env, "/va.toml"))),
            ("publisher", include_str!(concat!("../../deploy/env/", $env, "/publisher.toml"))),
            ("ca", include_str!(concat!("../../deploy/env/", $env, "/ca.toml"))),
            ("crl-updater", include_str!(concat!("../../deploy/env/", $env, "/crl-updater.toml"))),
            ("ra", include_str!(concat!("../../deploy/env/", $env, "/ra.toml"))),
            ("wfe", include_str!(concat!("../../deploy/env/", $env, "/wfe.toml"))),
        ]
    };
}

/// Every service's configuration shared by all environments.
const BASE: &[(&str, &str)] = env_files!("base");
/// The permissive rate limits of `quarry dev`.
pub const DEV_RATELIMITS: &str = include_str!("../../deploy/env/dev/ratelimits.toml");

/// The developer overlay that `quarry dev` uses.
pub const DEV: &[(&str, &str)] = env_files!("dev");

fn file<'a>(files: &[(&str, &'a str)], service: &str) -> anyhow::Result<&'a str> {
    files
        .iter()
        .find(|(name, _)| *name == service)
        .map(|(_, text)| *text)
        .with_context(|| format!("no {service} config"))
}

/// The operator's `quarry admin` configuration for `quarry dev`.
pub const DEV_ADMIN: &str = include_str!("../../deploy/env/dev/admin.toml");

/// `text` with every `${name}` of `vars` filled in, parsed; an unset placeholder is an error naming `origin`.
pub fn substitute(origin: String, text: &str, vars: &BTreeMap<&str, String>) -> anyhow::Result<toml::Table> {
    let mut text = text.to_owned();
    for (name, value) in vars {
        text = text.replace(&format!("${{{name}}}"), value);
    }
    if let Some(start) = text.find("${") {
        let rest = &text[start..];
        bail!("{origin}: unset variable {}", &rest[..rest.find('}').map_or(rest.len(), |end| end + 1)]);
    }
    toml::from_str(&text).with_context(|| origin)
}

/// Substitutes every `${name}` of `vars` into the base and overlay files of `service`, then merges the overlay
/// over the base. Substitution comes first so that placeholders may stand for numbers, not only strings.
pub fn render(service: &str, overlay: &[(&str, &str)], vars: &BTreeMap<&str, String>) -> anyhow::Result<String> {
    let mut merged = substitute(format!("base/{service}.toml"), file(BASE, service)?, vars)?;
    let layer = substitute(format!("overlay {service}.toml"), file(overlay, service)?, vars)?;
    quarry_core::config::merge(&mut merged, &layer);
    Ok(merged.to_string())
}

/// Parses `text` as the typed configuration of `service`: a rendered file the service would refuse fails here.
pub fn parse_as(service: &str, text: &str, origin: &str) -> Result<(), quarry_core::config::ConfigError> {
    use quarry_core::config::parse;
    match subcommand(service) {
        "nonce" => parse::<quarry_nonce::Config>(text, origin).map(drop),
        "sa" => parse::<quarry_sa::Config>(text, origin).map(drop),
        "va" => parse::<quarry_va::Config>(text, origin).map(drop),
        "ca" => parse::<quarry_ca::Config>(text, origin).map(drop),
        "publisher" => parse::<quarry_publisher::Config>(text, origin).map(drop),
        "crl-updater" => parse::<quarry_crl_updater::Config>(text, origin).map(drop),
        "ra" => parse::<quarry_ra::Config>(text, origin).map(drop),
        "wfe" => parse::<quarry_wfe::Config>(text, origin).map(drop),
        other => panic!("unknown service {other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Staging's and production's configurations, with their secrets filled in, are valid typed configurations:
    /// a typo in an overlay fails here, not at deployment.
    #[test]
    fn staging_and_production_configs_parse() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/env");
        let secrets = BTreeMap::from([
            ("file:/etc/quarry/secrets/database/url", "postgres://quarry@db.example.com/quarry".to_owned()),
            ("file:/etc/quarry/secrets/redis/url", "redis://redis.example.com:6379/".to_owned()),
            ("file:/etc/quarry/secrets/nonce/prefix-key", "a production nonce prefix key".to_owned()),
            ("pod_ip", "10.1.2.3".to_owned()),
        ]);
        for env in ["pre-staging", "staging", "production"] {
            for service in SERVICES {
                // Exactly as a deployed service loads them: both files, secrets from its environment.
                let files =
                    [dir.join("base").join(format!("{service}.toml")), dir.join(env).join(format!("{service}.toml"))];
                let lookup = |name: &str| secrets.get(name).cloned();
                let merged: toml::Table = quarry_core::config::load_layers(&files, lookup).expect("layers");
                let text = merged.to_string();
                let origin = format!("{env}/{service}");
                let result = parse_as(service, &text, &origin);
                result.unwrap_or_else(|e| panic!("{origin}: {e}\n{text}"));
            }
        }
    }

    #[test]
    fn unset_variables_are_reported() {
        let err = render("sa", DEV, &BTreeMap::new()).unwrap_err().to_string();
        assert!(err.contains("unset variable ${"), "{err}");
    }
}
