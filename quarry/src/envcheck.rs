//! `quarry env check A B`: merges every service's base configuration with each environment's overlay and lists
//! every key whose value differs, failing when one lies outside the three kinds of setting environments may differ
//! in — addresses and secrets, PKI material, rate-limit values. Everything else (feature switches, challenge types,
//! profiles, timeouts, policy, validation rules) and the topology (which services, how many of each list — remote
//! perspectives, nonce instances) must be equal.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use anyhow::Context;

use crate::env::SERVICES;

/// The kinds of setting an environment may change, and the keys of each (`*` stands for one path segment; a pattern
/// also covers every key under it).
const ALLOWED: &[(&str, &[&str])] = &[
    (
        "addresses and secrets",
        &[
            "*.grpc.listen",
            "*.tls",
            "*.sa.address",
            "*.ra.address",
            "*.va.address",
            "*.ca.address",
            "*.publisher.address",
            "*.dns_resolver",
            "*.*.dns_resolver",
            "*.telemetry.otlp_endpoint",
            "*.telemetry.metrics_listen",
            "va.remotes[*].address",
            "nonce.prefix_key",
            "nonce.advertise",
            "sa.database_url",
            "sa.read_replica_url",
            "ra.account_uri_prefix",
            "ra.rate_limits.redis_url",
            "wfe.listen",
            "wfe.base_url",
            "wfe.https_cert",
            "wfe.https_key",
            "wfe.nonce.address",
            "wfe.nonce_prefix_key",
            "wfe.crl.listen",
            "wfe.external_account_binding.keys",
            "wfe.directory_meta.terms_of_service",
            "wfe.directory_meta.website",
        ],
    ),
    (
        "PKI",
        &[
            "ca.issuers",
            "ca.serial_prefix",
            "wfe.chains",
            "wfe.crl.issuers",
            "crl-updater.issuers",
            "publisher.logs",
            "publisher.log_ca",
        ],
    ),
    ("rate limits", &["ra.rate_limits.limits_file"]),
];

/// One key that differs between the two environments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Difference {
    /// `<service>.<path>`, array elements as `[n]`, array lengths as `.len()`.
    pub key: String,
    pub a: Option<String>,
    pub b: Option<String>,
    /// The kind of setting that may differ, or `None` when it may not.
    pub allowed_as: Option<&'static str>,
}

/// All differences between two environments.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub differences: Vec<Difference>,
}

impl Report {
    pub fn forbidden(&self) -> impl Iterator<Item = &Difference> {
        self.differences.iter().filter(|d| d.allowed_as.is_none())
    }

    pub fn passes(&self) -> bool {
        self.forbidden().next().is_none()
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let show = |v: &Option<String>| v.clone().unwrap_or_else(|| "(absent)".into());
        for d in &self.differences {
            match d.allowed_as {
                Some(kind) => writeln!(f, "  allowed ({kind}): {}", d.key)?,
                None => writeln!(f, "  NOT ALLOWED: {}: {} ≠ {}", d.key, show(&d.a), show(&d.b))?,
            }
        }
        let forbidden = self.forbidden().count();
        writeln!(f, "{} keys differ, {forbidden} of them outside the allowed sections", self.differences.len())
    }
}

/// Compares environments `a` and `b` of the configuration tree at `dir` (`deploy/env`).
pub fn check(dir: &Path, a: &str, b: &str) -> anyhow::Result<Report> {
    let (flat_a, flat_b) = (flatten_environment(dir, a)?, flatten_environment(dir, b)?);
    let mut keys: Vec<&String> = flat_a.keys().chain(flat_b.keys()).collect();
    keys.sort();
    keys.dedup();
    let differences = keys
        .into_iter()
        .filter(|key| flat_a.get(*key) != flat_b.get(*key))
        .map(|key| Difference {
            key: key.clone(),
            a: flat_a.get(key).cloned(),
            b: flat_b.get(key).cloned(),
            allowed_as: allowed_as(key),
        })
        .collect();
    Ok(Report { differences })
}

/// Every service's merged configuration, flattened to `<service>.<path>` → value. A service whose overlay is missing
/// is recorded as such, so that a topology difference shows.
fn flatten_environment(dir: &Path, env: &str) -> anyhow::Result<BTreeMap<String, String>> {
    if !dir.join(env).is_dir() {
        anyhow::bail!("no environment {env:?} in {}", dir.display());
    }
    let mut flat = BTreeMap::new();
    for service in SERVICES {
        let read = |path: &Path| -> anyhow::Result<toml::Table> {
            let text = std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
            toml::from_str(&quote_bare_placeholders(&text)).with_context(|| format!("parse {}", path.display()))
        };
        let overlay_path = dir.join(env).join(format!("{service}.toml"));
        if !overlay_path.exists() {
            flat.insert(format!("{service}.(overlay)"), "missing".to_owned());
            continue;
        }
        let mut merged = read(&dir.join("base").join(format!("{service}.toml")))?;
        quarry_core::config::merge(&mut merged, &read(&overlay_path)?);
        flatten(service, &toml::Value::Table(merged), &mut flat);
    }
    Ok(flat)
}

/// A placeholder standing for a number (`port = ${port}`) quoted, so that the file parses before anything is filled
/// in: the check compares placeholders as written.
fn quote_bare_placeholders(text: &str) -> String {
    text.lines()
        .map(|line| match line.split_once('=') {
            Some((key, value)) if value.trim().starts_with("${") && value.trim().ends_with('}') => {
                format!("{key}= \"{}\"", value.trim())
            }
            _ => line.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn flatten(path: &str, value: &toml::Value, out: &mut BTreeMap<String, String>) {
    match value {
        toml::Value::Table(table) => {
            for (key, value) in table {
                flatten(&format!("{path}.{key}"), value, out);
            }
        }
        toml::Value::Array(items) if items.iter().all(toml::Value::is_table) && !items.is_empty() => {
            out.insert(format!("{path}.len()"), items.len().to_string());
            for (index, item) in items.iter().enumerate() {
                flatten(&format!("{path}[{index}]"), item, out);
            }
        }
        other => {
            out.insert(path.to_owned(), other.to_string());
        }
    }
}

/// The kind of setting `key` is, when environments may differ in it.
fn allowed_as(key: &str) -> Option<&'static str> {
    let segments = split(key);
    ALLOWED.iter().find_map(|(kind, patterns)| {
        patterns
            .iter()
            .any(|pattern| {
                let pattern = split(pattern);
                pattern.len() <= segments.len() && pattern.iter().zip(&segments).all(|(p, s)| segment_matches(p, s))
            })
            .then_some(*kind)
    })
}

/// `*` matches any segment; `remotes[*]` any element of `remotes`; `issuers` the list and each of its elements.
fn segment_matches(pattern: &str, segment: &str) -> bool {
    let name = segment.split('[').next().unwrap_or(segment);
    match pattern.strip_suffix("[*]") {
        _ if pattern == "*" || pattern == segment => true,
        Some(list) => list == name && segment.contains('['),
        None => pattern == name,
    }
}

/// A key's segments: dots separate them; `a[1].b` is `a[1]`, `b`; `len()` is a segment of its own.
fn split(key: &str) -> Vec<&str> {
    key.split('.').collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo_env() -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/env")
    }

    #[test]
    fn patterns_match_segments() {
        let cases = [
            ("ra.grpc.listen", Some("addresses and secrets")),
            ("ca.tls.cert", Some("addresses and secrets")),
            ("va.remotes[1].address", Some("addresses and secrets")),
            ("va.remotes[1].rir", None),
            ("va.remotes.len()", None),
            ("ca.issuers[0].key", Some("PKI")),
            ("ca.issuers.len()", Some("PKI")),
            ("ra.rate_limits.limits_file", Some("rate limits")),
            ("ra.async_finalize", None),
            ("ra.sa.server_name", None),
            ("wfe.nonce.server_name", None),
            ("wfe.nonce.address", Some("addresses and secrets")),
            ("ra.sa.dns_resolver", Some("addresses and secrets")),
        ];
        for (key, expected) in cases {
            assert_eq!(allowed_as(key), expected, "{key}");
        }
    }

    #[test]
    fn staging_and_production_differ_only_where_allowed() {
        let report = check(&repo_env(), "staging", "production").expect("check");
        assert!(report.passes(), "{report}");
        assert!(report.differences.iter().any(|d| d.key == "wfe.base_url"), "{report}");
        assert!(report.differences.iter().any(|d| d.key.starts_with("publisher.logs")), "{report}");
    }

    #[test]
    fn a_drifting_environment_fails_with_the_key_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        for env in ["base", "staging", "production"] {
            std::fs::create_dir_all(dir.path().join(env)).expect("mkdir");
            for entry in std::fs::read_dir(repo_env().join(env)).expect("read") {
                let entry = entry.expect("entry");
                std::fs::copy(entry.path(), dir.path().join(env).join(entry.file_name())).expect("copy");
            }
        }
        // A feature switch on in staging only, a remote perspective fewer, a profile lifetime changed.
        let ra = dir.path().join("staging/ra.toml");
        let text = std::fs::read_to_string(&ra).expect("ra");
        std::fs::write(&ra, format!("async_finalize = true\n{text}\n[profiles.classic]\norder_lifetime_secs = 1\n"))
            .expect("write");
        let va = dir.path().join("production/va.toml");
        let text = std::fs::read_to_string(&va).expect("va");
        let cut = text.rfind("[[remotes]]").expect("a remote");
        std::fs::write(&va, &text[..cut]).expect("write");
        let report = check(dir.path(), "staging", "production").expect("check");
        assert!(!report.passes());
        let forbidden: Vec<&str> = report.forbidden().map(|d| d.key.as_str()).collect();
        for expected in ["ra.async_finalize", "ra.profiles.classic.order_lifetime_secs", "va.remotes.len()"] {
            assert!(forbidden.contains(&expected), "{expected} missing from {forbidden:?}");
        }
        assert!(report.to_string().contains("NOT ALLOWED: ra.async_finalize: true ≠ false"), "{report}");
    }

    #[test]
    fn dev_is_not_production() {
        // dev's own knobs (loopback addresses allowed, a 10-second CRL period) are exactly what the check refuses.
        let report = check(&repo_env(), "dev", "production").expect("check");
        let forbidden: Vec<&str> = report.forbidden().map(|d| d.key.as_str()).collect();
        assert!(forbidden.contains(&"ra.allow_non_public_ip_identifiers"), "{forbidden:?}");
        assert!(forbidden.contains(&"crl-updater.update_period_secs"), "{forbidden:?}");
    }
}
