//! Typed TOML configuration: loading with clear errors, layering an environment overlay over a base,
//! and the blocks every service shares (mutual TLS files, gRPC server and client settings).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};

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

/// Parses TOML text into `T`; `origin` names the source in error messages.
pub fn parse<T: DeserializeOwned>(text: &str, origin: &str) -> Result<T, ConfigError> {
    toml::from_str(text).map_err(|e| ConfigError::Parse { origin: origin.to_owned(), message: e.to_string() })
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
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
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
    /// `https://host:port`.
    pub address: String,
    /// The DNS name the peer's certificate must carry.
    pub server_name: String,
    /// The default deadline of a call when the caller has none.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
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
}
