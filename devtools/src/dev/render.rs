//! Rendering a stack's configuration files: the embedded `base` + `dev` environment with a stack's values, one file
//! per replica of every service, plus what a stack adds (Redis, span export, metrics listeners, the overlays of
//! `quarry dev`'s knobs and Pebble mode). `quarry dev` and `quarry compose-init` both write their files here.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;

use super::knobs::ServiceOverlays;
use super::loopback::replica_ip;
use quarry::env;

/// What a stack adds to the rendered `dev` files.
pub struct Extras<'a> {
    /// Keep the ra's rate-limit buckets in this Redis.
    pub redis_url: Option<&'a str>,
    /// Export every service's spans here (OTLP/gRPC).
    pub otlp_endpoint: Option<&'a str>,
    /// Serve every service's metrics on loopback ports from this one, in start order.
    pub metrics_base_port: Option<u16>,
    /// What to layer over each service's rendered configuration: `quarry dev`'s client-testing knobs and the
    /// mapping of a Pebble configuration file.
    pub overlays: ServiceOverlays,
}

/// Sets the placeholders replica `index` of `service` differs in.
pub type ReplicaVars<'a> = &'a dyn Fn(&str, usize, &mut BTreeMap<&'static str, String>);

/// How many replicas a stack runs, and what each replica's configuration differs in (its listen addresses).
pub struct Layout<'a> {
    pub replicas: usize,
    pub replica_vars: ReplicaVars<'a>,
}

/// One replica's configuration file.
pub struct WrittenConfig {
    pub service: &'static str,
    pub index: usize,
    /// `sa`, `sa-2`…
    pub name: String,
    pub path: PathBuf,
    /// Where it serves its metrics, when asked to.
    pub metrics: Option<SocketAddr>,
}

/// Writes `ratelimits.toml`, `admin.toml` and the configuration of every replica of every service, rendered from
/// the embedded base + dev files with `vars` (each replica's own as `layout` says) and `extras`, into
/// `config_dir`; returns them in start order (peers before their callers).
pub fn write_configs(
    config_dir: &Path,
    vars: &BTreeMap<&'static str, String>,
    extras: &Extras<'_>,
    layout: &Layout<'_>,
) -> anyhow::Result<Vec<WrittenConfig>> {
    std::fs::create_dir_all(config_dir).with_context(|| format!("create {}", config_dir.display()))?;
    std::fs::write(config_dir.join("ratelimits.toml"), env::DEV_RATELIMITS)?;
    let admin = env::substitute("dev/admin.toml".into(), env::DEV_ADMIN, vars)?;
    std::fs::write(config_dir.join("admin.toml"), admin.to_string())?;
    let mut written = Vec::new();
    for service in env::SERVICES {
        for index in 0..env::replicas_of(service, layout.replicas) {
            let mut vars = vars.clone();
            (layout.replica_vars)(service, index, &mut vars);
            let mut rendered = env::render(service, env::DEV, &vars)?;
            if let (true, Some(url)) = (*service == "ra", extras.redis_url) {
                rendered = with_redis(&rendered, url)?;
            }
            if let Some(overlay) = extras.overlays.get(service) {
                let mut table: toml::Table = toml::from_str(&rendered)?;
                quarry_core::config::merge(&mut table, overlay);
                rendered = table.to_string();
            }
            if let Some(endpoint) = extras.otlp_endpoint {
                rendered = with_telemetry(&rendered, "otlp_endpoint", endpoint.to_owned())?;
            }
            let metrics = extras
                .metrics_base_port
                .map(|base| SocketAddr::new(replica_ip(index).into(), env::grpc_port(base, service)));
            if let Some(addr) = metrics {
                rendered = with_telemetry(&rendered, "metrics_listen", addr.to_string())?;
            }
            let name = env::replica_name(service, index);
            let path = config_dir.join(format!("{name}.toml"));
            std::fs::write(&path, rendered)?;
            written.push(WrittenConfig { service, index, name, path, metrics });
        }
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

/// A rendered configuration with the keys of `values` set in its table `name`.
fn with_table(rendered: &str, name: &str, values: &toml::Table) -> anyhow::Result<String> {
    let mut table: toml::Table = toml::from_str(rendered)?;
    let entry = table.entry(name).or_insert_with(|| toml::Value::Table(toml::Table::new()));
    let entry = entry.as_table_mut().with_context(|| format!("[{name}] is not a table"))?;
    entry.extend(values.clone());
    Ok(table.to_string())
}

/// A rendered configuration with `[telemetry] key = value` set.
fn with_telemetry(rendered: &str, key: &str, value: String) -> anyhow::Result<String> {
    with_table(rendered, "telemetry", &toml::Table::from_iter([(key.to_owned(), toml::Value::String(value))]))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use quarry::env::{DEV, SERVICES, parse_as, render};

    fn dev_vars() -> BTreeMap<&'static str, String> {
        let log = crate::ctlog::FakeCtLog::new();
        let logs = [
            ("http://127.0.0.1:1/".to_owned(), log.public_key_base64()),
            ("http://127.0.0.1:2/".to_owned(), log.public_key_base64()),
        ];
        let mut vars = crate::dev::DevArgs::defaults().variables(std::path::Path::new("/tmp/quarry-test"), &logs);
        vars.insert("nonce_prefix_key", "a dev stack's nonce prefix key".to_owned());
        vars
    }

    #[test]
    fn every_dev_config_renders_and_parses() {
        let vars = dev_vars();
        for service in SERVICES {
            let text = render(service, DEV, &vars).unwrap();
            let result = parse_as(service, &text, service);
            result.unwrap_or_else(|e| panic!("{service}: {e}\n{text}"));
        }
    }
}
