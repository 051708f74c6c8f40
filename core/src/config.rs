//! Typed TOML configuration: loading with clear errors, layering an environment overlay over a base,
//! and the blocks every service shares (mutual TLS files, gRPC server and client settings).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};

use crate::testing;

/// Why a configuration could not be used; the message names the file and the offending key.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("invalid configuration in {origin}: {message}")]
    Parse { origin: String, message: String },
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// Reads and parses a TOML file into `T` (whose structs deny unknown fields).
pub fn load<T: DeserializeOwned>(path: &Path) -> Result<T, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
    parse(&text, &path.display().to_string())
}

/// Reads the TOML files `paths` in order, each layered over the ones before (a base, then an environment's overlay),
/// fills every `${name}` in a string value with `lookup(name)`, and parses the result into `T`.
///
/// This is how a deployment runs the environment files of `deploy/env` unchanged: secrets stay placeholders naming
/// the files they are mounted as ([`placeholder_value`]). Placeholders are filled after merging, so a base
/// placeholder that an overlay replaces needs no value; one still present without a value is an error naming it.
pub fn load_layers<T: DeserializeOwned>(
    paths: &[PathBuf],
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<T, ConfigError> {
    let mut merged = toml::Table::new();
    for path in paths {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
        let layer: toml::Table = toml::from_str(&text)
            .map_err(|e| ConfigError::Parse { origin: path.display().to_string(), message: e.to_string() })?;
        merge(&mut merged, &layer);
    }
    let origin = paths.iter().map(|path| path.display().to_string()).collect::<Vec<_>>().join(" + ");
    for (_, value) in merged.iter_mut() {
        fill_placeholders(value, &lookup).map_err(|name| ConfigError::Parse {
            origin: origin.clone(),
            message: format!("no value for the placeholder ${{{name}}}"),
        })?;
    }
    let environment = take_environment(&mut merged, &origin)?;
    refuse_outside_dev(environment, &merged)
        .map_err(|message| ConfigError::Parse { origin: origin.clone(), message })?;
    if let Some(environment) = environment.filter(|environment| environment.is_hosted()) {
        // Checked here, with the secrets filled in: the mounted contents are what the service will use.
        hosted_rules(environment, &merged).map_err(|message| ConfigError::Parse { origin: origin.clone(), message })?;
    }
    T::deserialize(merged).map_err(|e| ConfigError::Parse { origin, message: e.to_string() })
}

/// The environment a configuration belongs to: its overlay's top-level `environment` key. Every service reads it;
/// the hosted environments are held to [`hosted_rules`] at start-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Environment {
    Dev,
    PreStaging,
    Staging,
    Production,
}

impl Environment {
    pub const ALL: [Environment; 4] = [Self::Dev, Self::PreStaging, Self::Staging, Self::Production];

    pub fn name(self) -> &'static str {
        match self {
            Self::Dev => "dev",
            Self::PreStaging => "pre-staging",
            Self::Staging => "staging",
            Self::Production => "production",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|environment| environment.name() == name)
    }

    /// Runs the replicated topology on shared storage: everything but a developer's machine.
    pub fn is_hosted(self) -> bool {
        self != Self::Dev
    }
}

/// Removes and returns the top-level `environment` key (no service's typed configuration carries it).
fn take_environment(table: &mut toml::Table, origin: &str) -> Result<Option<Environment>, ConfigError> {
    let Some(value) = table.remove("environment") else { return Ok(None) };
    let name = value.as_str().unwrap_or_default();
    Environment::from_name(name).map(Some).ok_or_else(|| ConfigError::Parse {
        origin: origin.to_owned(),
        message: format!(
            "environment = {value}: expected one of {}",
            Environment::ALL.map(Environment::name).join(", ")
        ),
    })
}

/// What a hosted environment's configuration must hold once its secrets are filled in: replicas share one
/// PostgreSQL database and one Redis rate-limit store, so an SQLite file or in-memory buckets — each replica its own —
/// would pass every single-process test and still lose data and limits. The message names the key and the URL's
/// scheme, never the URL (it may carry a password).
pub fn hosted_rules(environment: Environment, table: &toml::Table) -> Result<(), String> {
    let mut problems = Vec::new();
    hosted_rules_in(environment, "", table, &mut problems);
    if problems.is_empty() { Ok(()) } else { Err(problems.join("; ")) }
}

fn hosted_rules_in(environment: Environment, path: &str, table: &toml::Table, problems: &mut Vec<String>) {
    let env = environment.name();
    let scheme_of = |value: &toml::Value| {
        let text = value.as_str().unwrap_or_default();
        text.split_once("://").or_else(|| text.split_once(':')).map_or("(none)", |(scheme, _)| scheme).to_owned()
    };
    for (key, value) in table {
        let key_path = if path.is_empty() { key.clone() } else { format!("{path}.{key}") };
        match (key.as_str(), value) {
            ("database_url" | "read_replica_url", _) if !starts_with_any(value, &["postgres://", "postgresql://"]) => {
                problems.push(format!(
                    "{key_path} is a {} URL: {env} runs replicas on one PostgreSQL database (postgres://…)",
                    scheme_of(value)
                ))
            }
            ("rate_limits", toml::Value::Table(limits)) => match limits.get("redis_url") {
                None => problems.push(format!(
                    "{key_path}.redis_url is missing: {env}'s ra replicas share their rate-limit buckets in Redis, \
                     in-memory buckets would give each replica its own limits"
                )),
                Some(url) if !starts_with_any(url, &["redis://", "rediss://"]) => problems.push(format!(
                    "{key_path}.redis_url is a {} URL: {env} keeps rate limits in Redis (redis://… or rediss://…)",
                    scheme_of(url)
                )),
                Some(_) => hosted_rules_in(environment, &key_path, limits, problems),
            },
            (_, toml::Value::Table(inner)) => hosted_rules_in(environment, &key_path, inner, problems),
            _ => {}
        }
    }
}

/// Refuses a `[client_testing]` table in a configuration that is not dev's (`environment` is the overlay's own
/// `environment` key; a configuration that names none is not dev's either). An empty table turns nothing on and
/// passes.
pub fn refuse_outside_dev(environment: Option<Environment>, table: &toml::Table) -> Result<(), String> {
    let Some(knobs) = table.get(testing::SECTION) else { return Ok(()) };
    let on: Vec<&str> = match knobs {
        toml::Value::Table(knobs) => knobs.keys().map(String::as_str).collect(),
        _ => vec![testing::SECTION],
    };
    if on.is_empty() || environment == Some(Environment::Dev) {
        return Ok(());
    }
    let environment = environment.map_or("(none named)", Environment::name);
    Err(format!(
        "[{}] ({}) is for client test suites against quarry dev only, and this is environment {environment}: \
         remove the table",
        testing::SECTION,
        on.join(", ")
    ))
}

fn starts_with_any(value: &toml::Value, prefixes: &[&str]) -> bool {
    value.as_str().is_some_and(|text| prefixes.iter().any(|prefix| text.starts_with(prefix)))
}

/// Replaces every `${name}` inside the strings of `value`; the error is the first name `lookup` has no value for.
fn fill_placeholders(value: &mut toml::Value, lookup: &impl Fn(&str) -> Option<String>) -> Result<(), String> {
    match value {
        toml::Value::String(text) => {
            // Searching on after each filled value: a secret that itself contains `${` is not expanded again.
            let mut from = 0;
            while let Some(start) = text[from..].find("${").map(|at| from + at) {
                let end = text[start..].find('}').map(|end| start + end).ok_or_else(|| text[start..].to_owned())?;
                let name = text[start + 2..end].to_owned();
                let filled = lookup(&name).ok_or(name)?;
                text.replace_range(start..=end, &filled);
                from = start + filled.len();
            }
            Ok(())
        }
        toml::Value::Array(items) => items.iter_mut().try_for_each(|item| fill_placeholders(item, lookup)),
        toml::Value::Table(table) => table.iter_mut().try_for_each(|(_, item)| fill_placeholders(item, lookup)),
        _ => Ok(()),
    }
}

/// A deployed service's value for the placeholder `${name}`: `${file:PATH}` is the content of the file PATH without
/// its final line break (a mounted secret: secrets are files, never inline), and `${name}` is the environment
/// variable `QUARRY_<NAME>` (`${database_url}` ← `QUARRY_DATABASE_URL`).
pub fn placeholder_value(name: &str) -> Option<String> {
    match name.strip_prefix("file:") {
        Some(path) => {
            let text = std::fs::read_to_string(path).ok()?;
            Some(text.strip_suffix('\n').map(|t| t.strip_suffix('\r').unwrap_or(t)).unwrap_or(&text).to_owned())
        }
        None => std::env::var(format!("QUARRY_{}", name.to_ascii_uppercase())).ok(),
    }
}

/// Parses TOML text into `T`; `origin` names the source in error messages.
pub fn parse<T: DeserializeOwned>(text: &str, origin: &str) -> Result<T, ConfigError> {
    let error = |e: toml::de::Error| ConfigError::Parse { origin: origin.to_owned(), message: e.to_string() };
    let mut table: toml::Table = toml::from_str(text).map_err(error)?;
    let environment = take_environment(&mut table, origin)?;
    refuse_outside_dev(environment, &table)
        .map_err(|message| ConfigError::Parse { origin: origin.to_owned(), message })?;
    T::deserialize(table).map_err(|e| ConfigError::Parse { origin: origin.to_owned(), message: e.to_string() })
}

/// Layers `overlay` over `base`: tables merge key by key, anything else in the overlay replaces the base value.
pub fn merge(base: &mut toml::Table, overlay: &toml::Table) {
    for (key, value) in overlay {
        match (base.get_mut(key), value) {
            (Some(toml::Value::Table(base_table)), toml::Value::Table(overlay_table)) => {
                merge(base_table, overlay_table);
            }
            _ => {
                base.insert(key.clone(), value.clone());
            }
        }
    }
}

/// The configuration format version; this build reads version 1 only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct ConfigVersion(u32);

impl ConfigVersion {
    pub const CURRENT: Self = Self(1);
}

impl<'de> Deserialize<'de> for ConfigVersion {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let version = u32::deserialize(deserializer)?;
        if version == Self::CURRENT.0 {
            Ok(Self(version))
        } else {
            Err(serde::de::Error::custom(format!(
                "unsupported config version {version} (this build reads version {})",
                Self::CURRENT.0
            )))
        }
    }
}

/// The PEM files of a service's mutual-TLS identity and the CA it trusts for its peers.
///
/// They are read again when they change (a rotated Kubernetes Secret), see [`crate::tls`].
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
    /// How often the files are checked for a change (and, in the wfe, its HTTPS certificate and key too).
    #[serde(default = "default_reload_interval_ms")]
    pub reload_interval_ms: u64,
}

impl TlsFiles {
    /// These files, checked for a change at the default interval.
    pub fn new(cert: impl Into<PathBuf>, key: impl Into<PathBuf>, ca: impl Into<PathBuf>) -> Self {
        Self { cert: cert.into(), key: key.into(), ca: ca.into(), reload_interval_ms: default_reload_interval_ms() }
    }

    /// How often the files are checked for a change.
    pub fn reload_interval(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.reload_interval_ms)
    }
}

/// How often a service looks at its certificate files unless configured otherwise: a renewed certificate is used by
/// new connections at most this late.
pub const DEFAULT_RELOAD_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

fn default_reload_interval_ms() -> u64 {
    DEFAULT_RELOAD_INTERVAL.as_millis() as u64
}

/// Where a gRPC server listens and which client certificate names may call each of its services.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrpcServerConfig {
    pub listen: SocketAddr,
    /// Keyed by full gRPC service name, e.g. `quarry.sa.v1.StorageAuthority`.
    #[serde(default)]
    pub services: BTreeMap<String, ServiceAccess>,
}

/// The client certificate names (DNS SANs) allowed to call one gRPC service.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceAccess {
    pub client_names: Vec<String>,
}

/// How to reach a peer service.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrpcClientConfig {
    /// Where its replicas are: `https://HOST:PORT` (an IP address is one replica; a DNS name, every address it
    /// resolves to), `srv://NAME` (every target of NAME's SRV records), or several of these (a list, or one string
    /// with commas between them).
    #[serde(deserialize_with = "one_or_many")]
    pub address: Vec<String>,
    /// The DNS name the peer's certificate must carry.
    pub server_name: String,
    /// The default deadline of a call when the caller has none.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// The DNS server that resolves the address's names, instead of the system's resolver.
    #[serde(default)]
    pub dns_resolver: Option<SocketAddr>,
}

impl GrpcClientConfig {
    /// A peer at one address, with the default timeout.
    pub fn at(address: impl Into<String>, server_name: impl Into<String>) -> Self {
        Self {
            address: vec![address.into()],
            server_name: server_name.into(),
            timeout_ms: default_timeout_ms(),
            dns_resolver: None,
        }
    }
}

/// Which replica of its own service this process is: its calls then keep to its share of each peer's replicas (its
/// lane, [`crate::lane`]) instead of spreading every request over all of them. Without it, calls go round robin.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LaneConfig {
    /// Every replica of this service, written as a peer's address is (a headless Service's name, `srv://`, or a
    /// list).
    #[serde(deserialize_with = "one_or_many")]
    pub replicas: Vec<String>,
    /// This replica's address as that resolution lists it (hosted: `${pod_ip}` and the port; an IPv6 address with or
    /// without brackets).
    #[serde(deserialize_with = "deserialize_ip_port")]
    pub own: SocketAddr,
    /// The DNS server that resolves `replicas`, instead of the system's resolver.
    #[serde(default)]
    pub dns_resolver: Option<SocketAddr>,
}

/// `IP:PORT`, with or without brackets around an IPv6 address (a pod's address, `${pod_ip}`, is filled in without
/// them).
pub fn parse_ip_port(text: &str) -> Option<SocketAddr> {
    text.parse::<SocketAddr>().ok().or_else(|| {
        let (ip, port) = text.rsplit_once(':')?;
        Some(SocketAddr::new(ip.parse().ok()?, port.parse().ok()?))
    })
}

fn deserialize_ip_port<'de, D: Deserializer<'de>>(deserializer: D) -> Result<SocketAddr, D::Error> {
    let text = String::deserialize(deserializer)?;
    parse_ip_port(&text).ok_or_else(|| serde::de::Error::custom(format!("{text:?} is not IP:PORT")))
}

/// A string, or a list of strings; a string may hold several, separated by commas.
fn one_or_many<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    let all = match OneOrMany::deserialize(deserializer)? {
        OneOrMany::One(one) => vec![one],
        OneOrMany::Many(many) => many,
    };
    Ok(all
        .iter()
        .flat_map(|entry| entry.split(','))
        .map(|entry| entry.trim().to_owned())
        .filter(|e| !e.is_empty())
        .collect())
}

fn default_timeout_ms() -> u64 {
    10_000
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Example {
        #[allow(dead_code)]
        version: ConfigVersion,
        grpc: GrpcServerConfig,
    }

    fn table(text: &str) -> toml::Table {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn knobs_are_refused_outside_dev_and_an_empty_table_passes() {
        let knobs = table("[client_testing]\nnonce_reject_percent = 15\n");
        assert!(refuse_outside_dev(Some(Environment::Dev), &knobs).is_ok());
        for environment in
            [None, Some(Environment::PreStaging), Some(Environment::Staging), Some(Environment::Production)]
        {
            let err = refuse_outside_dev(environment, &knobs).unwrap_err();
            assert!(err.contains("nonce_reject_percent") && err.contains("quarry dev only"), "{err}");
        }
        assert!(refuse_outside_dev(Some(Environment::Production), &table("[client_testing]\n")).is_ok());
        assert!(refuse_outside_dev(Some(Environment::Production), &table("client_testing = 1\n")).is_err());
        assert!(refuse_outside_dev(Some(Environment::Production), &table("[other]\nx = 1\n")).is_ok());
    }

    #[test]
    fn overlays_merge_tables_and_replace_values() {
        let mut base: toml::Table = toml::from_str("a = 1\n[t]\nx = 1\ny = [1]\n").unwrap();
        let overlay: toml::Table = toml::from_str("b = 2\n[t]\ny = [2, 3]\n").unwrap();
        merge(&mut base, &overlay);
        assert_eq!(
            base.to_string(),
            toml::Table::from_iter([
                ("a".to_owned(), toml::Value::Integer(1)),
                ("b".to_owned(), toml::Value::Integer(2)),
                ("t".to_owned(), toml::from_str::<toml::Value>("x = 1\ny = [2, 3]").unwrap()),
            ])
            .to_string()
        );
    }

    #[test]
    fn unknown_keys_and_versions_are_refused_by_name() {
        let ok = "version = 1\n[grpc]\nlisten = \"127.0.0.1:1\"\n[grpc.services.\"a.B\"]\nclient_names = [\"x\"]\n";
        let parsed: Example = parse(ok, "ok.toml").unwrap();
        assert_eq!(parsed.grpc.services["a.B"].client_names, ["x"]);

        let unknown = format!("{ok}lisen = 1\n");
        let err = parse::<Example>(&unknown, "bad.toml").unwrap_err().to_string();
        assert!(err.contains("lisen") && err.contains("bad.toml"), "{err}");

        let err = parse::<Example>(&ok.replace("version = 1", "version = 7"), "v.toml").unwrap_err().to_string();
        assert!(err.contains("unsupported config version 7"), "{err}");
    }

    #[test]
    fn layers_merge_in_order_and_fill_placeholders_from_the_lookup() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("base.toml");
        let overlay = dir.path().join("overlay.toml");
        std::fs::write(&base, "version = 1\n[grpc]\nlisten = \"${unused_after_merge}\"\n").unwrap();
        std::fs::write(&overlay, "[grpc]\nlisten = \"127.0.0.1:${port}\"\n").unwrap();
        let lookup = |name: &str| (name == "port").then(|| "9302".to_owned());
        let parsed: Example = load_layers(&[base.clone(), overlay], lookup).unwrap();
        assert_eq!(parsed.grpc.listen.to_string(), "127.0.0.1:9302");

        // Alone, the base keeps its placeholder, which has no value: the error names it and the file.
        let err = load_layers::<Example>(std::slice::from_ref(&base), lookup).unwrap_err().to_string();
        assert!(err.contains("${unused_after_merge}") && err.contains("base.toml"), "{err}");

        // A value that itself contains `${` is not expanded again.
        let lookup = |name: &str| (name == "unused_after_merge").then(|| "${x}".to_owned());
        let err = load_layers::<Example>(&[base], lookup).unwrap_err().to_string();
        assert!(!err.contains("placeholder"), "{err}");
    }

    #[test]
    fn a_hosted_environment_refuses_per_replica_storage_and_names_no_secret() {
        let dir = tempfile::tempdir().unwrap();
        let (base, overlay) = (dir.path().join("base.toml"), dir.path().join("staging.toml"));
        std::fs::write(&base, "version = 1\n[grpc]\nlisten = \"127.0.0.1:1\"\n").unwrap();
        let load = |overlay_text: &str, secret: &str| {
            std::fs::write(&overlay, overlay_text).unwrap();
            let secret = secret.to_owned();
            load_layers::<toml::Table>(&[base.clone(), overlay.clone()], move |_| Some(secret.clone()))
        };
        let sa = "environment = \"staging\"\ndatabase_url = \"${file:/db}\"\n";
        assert!(load(sa, "postgres://quarry:pw@db/quarry").is_ok());
        let err = load(sa, "sqlite:///data/quarry.db?password=hunter2").unwrap_err().to_string();
        assert!(err.contains("database_url is a sqlite URL") && !err.contains("hunter2"), "{err}");
        // dev (or a file naming no environment: tests, tools) may use anything.
        assert!(load(&sa.replace("staging", "dev"), "sqlite:///x.db").is_ok());

        let ra = "environment = \"production\"\n[rate_limits]\nlimits_file = \"l.toml\"\n";
        let err = load(ra, "").unwrap_err().to_string();
        assert!(err.contains("rate_limits.redis_url is missing"), "{err}");
        let with_redis = format!("{ra}redis_url = \"${{file:/redis}}\"\n");
        assert!(load(&with_redis, "rediss://redis:6380/").is_ok());
        let err = load(&with_redis, "memory:").unwrap_err().to_string();
        assert!(err.contains("redis_url is a memory URL"), "{err}");

        let err = load("environment = \"qa\"\n", "").unwrap_err().to_string();
        assert!(err.contains("expected one of dev, pre-staging, staging, production"), "{err}");
        // The key is the overlay's, not the service's: the typed configuration never sees it.
        let parsed: Example = parse("environment = \"dev\"\nversion = 1\n[grpc]\nlisten = \"127.0.0.1:1\"\n", "x")
            .expect("environment is taken out before the typed parse");
        assert_eq!(parsed.grpc.listen.port(), 1);
    }

    #[test]
    fn a_peer_address_is_one_url_several_or_a_list() {
        #[derive(Debug, Deserialize)]
        struct Peer {
            sa: GrpcClientConfig,
        }
        let cases = [
            ("address = \"https://sa.quarry:9302\"", vec!["https://sa.quarry:9302"]),
            (
                "address = \"https://127.0.0.1:1, https://127.0.0.2:1\"",
                vec!["https://127.0.0.1:1", "https://127.0.0.2:1"],
            ),
            (
                "address = [\"https://127.0.0.1:1\", \"srv://sa.quarry\"]",
                vec!["https://127.0.0.1:1", "srv://sa.quarry"],
            ),
        ];
        for (line, expected) in cases {
            let text = format!("[sa]\n{line}\nserver_name = \"sa.quarry\"\n");
            let peer: Peer = parse(&text, "peer.toml").unwrap();
            assert_eq!(peer.sa.address, expected, "{line}");
            assert_eq!(peer.sa.timeout_ms, 10_000);
        }
    }

    #[test]
    fn file_placeholders_read_the_mounted_secret() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("url");
        std::fs::write(&secret, "postgres://quarry:s3cret@db/quarry\n").unwrap();
        let value = placeholder_value(&format!("file:{}", secret.display()));
        assert_eq!(value.as_deref(), Some("postgres://quarry:s3cret@db/quarry"));
        assert_eq!(placeholder_value(&format!("file:{}", dir.path().join("missing").display())), None);
    }
}
