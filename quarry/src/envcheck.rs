//! `quarry env check A B`: merges every service's base configuration with each environment's overlay, compares the
//! two key by key, and fails on any difference outside the short list of keys environments may differ in — and on
//! anything a hosted environment must never hold (a placeholder left behind, an inline secret, an address of another
//! environment, an overlay that names the wrong environment).
//!
//! The allowed differences are leaves, not sections: addresses that are the same once each environment's own names
//! (its namespace and public domain, from `environment.toml`) are put back as `{namespace}` and `{domain}`; issuer
//! key references and certificates, CT logs and chain files; the rate-limit values of `ratelimits.toml` (its limits
//! must be the same); secret references. A key present in one environment only is never allowed.
//!
//! Each environment is also checked on its own for what its services must agree on (`agreement`: one CRL shard
//! count, profile sets that nest); comparing an environment with itself checks just that environment.

mod agreement;

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use anyhow::Context;

use crate::env::SERVICES;

/// How a key that may differ between environments is held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rule {
    /// An address or URL: equal once each environment's namespace and domain are replaced by placeholders.
    Address,
    /// A `${file:…}` reference to a mounted secret.
    SecretReference,
    /// The environment's own PKI: issuer certificates and key references, CT logs, chain files.
    Pki,
    /// A number in `ratelimits.toml`.
    RateLimitValue,
    /// The overlay's `environment`, which must name its own directory.
    EnvironmentName,
}

impl Rule {
    fn kind(self) -> &'static str {
        match self {
            Self::Address => "address",
            Self::SecretReference => "secret reference",
            Self::Pki => "PKI",
            Self::RateLimitValue => "rate-limit value",
            Self::EnvironmentName => "environment name",
        }
    }
}

/// Every key environments may differ in (`*` stands for one segment, `name[*]` for any element of a list), and how.
/// Nothing covers a key below it: each pattern names leaves.
const ALLOWED: &[(&str, Rule)] = &[
    ("*.environment", Rule::EnvironmentName),
    ("*.sa.address", Rule::Address),
    ("*.ra.address", Rule::Address),
    ("*.va.address", Rule::Address),
    ("*.ca.address", Rule::Address),
    ("*.publisher.address", Rule::Address),
    ("*.telemetry.otlp_endpoint", Rule::Address),
    ("*.telemetry.metrics_listen", Rule::Address),
    ("*.grpc.listen", Rule::Address),
    ("*.dns_resolver", Rule::Address),
    ("va.remotes[*].address", Rule::Address),
    ("nonce.advertise", Rule::Address),
    ("*.lane.replicas", Rule::Address),
    ("*.lane.own", Rule::Address),
    ("ra.account_uri_prefix", Rule::Address),
    ("wfe.listen", Rule::Address),
    ("wfe.base_url", Rule::Address),
    ("wfe.nonce.address", Rule::Address),
    ("wfe.crl.listen", Rule::Address),
    ("wfe.directory_meta.terms_of_service", Rule::Address),
    ("wfe.directory_meta.website", Rule::Address),
    ("ca.issuers[*].issuer_url", Rule::Address),
    ("ca.issuers[*].crl_url_prefix", Rule::Address),
    ("sa.database_url", Rule::SecretReference),
    ("ra.rate_limits.redis_url", Rule::SecretReference),
    ("nonce.prefix_key", Rule::SecretReference),
    ("wfe.nonce_prefix_key", Rule::SecretReference),
    ("wfe.external_account_binding.keys.*", Rule::SecretReference),
    ("ca.serial_prefix", Rule::Pki),
    ("ca.issuers[*].cert", Rule::Pki),
    ("ca.issuers[*].key", Rule::Pki),
    ("ca.issuers[*].pkcs11.*", Rule::Pki),
    ("wfe.chains[*]", Rule::Pki),
    ("wfe.crl.issuers.*", Rule::Pki),
    ("crl-updater.issuers[*]", Rule::Pki),
    ("publisher.logs[*].name", Rule::Pki),
    ("publisher.logs[*].url", Rule::Pki),
    ("publisher.logs[*].operator", Rule::Pki),
    ("publisher.logs[*].public_key", Rule::Pki),
    ("ratelimits.limits.*.*", Rule::RateLimitValue),
];

/// Keys that hold secrets (a trailing `.` covers every key below): in a hosted environment each must be a
/// `${file:/etc/quarry/secrets/…}` reference, so that the secret itself lives in the cluster and the service checks
/// its shape at start-up (`quarry_core::config::hosted_rules`). The first four are required.
const SECRETS: &[(&str, bool)] = &[
    ("sa.database_url", true),
    ("ra.rate_limits.redis_url", true),
    ("nonce.prefix_key", true),
    ("wfe.nonce_prefix_key", true),
    ("sa.read_replica_url", false),
    ("wfe.external_account_binding.keys.", false),
];
const SECRET_REFERENCE_PREFIX: &str = "${file:/etc/quarry/secrets/";

/// Words an operator writes where a value is still to come (compared with a value's words, whatever their case);
/// so is anything in angle brackets. `${pod_ip}` is the one run-time value a hosted overlay may name.
const PLACEHOLDER_WORDS: &[&str] = &["TODO", "FIXME", "TBD", "CHANGEME", "CHANGE_ME", "REPLACEME", "REPLACE_ME", "XXX"];
const RUNTIME_PLACEHOLDERS: &[&str] = &["${pod_ip}"];

/// Who an environment is: the names its addresses are built from (`deploy/env/<name>/environment.toml`).
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Identity {
    pub name: String,
    /// The Kubernetes namespace its services are addressed in.
    pub namespace: String,
    /// The public domain its URLs live under (the ACME server, issuer and CRL URLs).
    pub domain: String,
}

impl Identity {
    /// `value` with this environment's names replaced by `{namespace}` and `{domain}`.
    fn generic(&self, value: &str) -> String {
        value.replace(&self.namespace, "{namespace}").replace(&self.domain, "{domain}")
    }
}

/// One key that differs between the two environments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Difference {
    /// `<service>.<path>`, list elements as `[n]`, list lengths as `.len()`; `ratelimits.<path>` for the limits file.
    pub key: String,
    pub a: Option<String>,
    pub b: Option<String>,
    /// The kind of key that may differ, or `None` when this difference is not allowed.
    pub allowed_as: Option<&'static str>,
    /// Why it is not allowed, when that is more than "this key must be equal".
    pub reason: Option<String>,
}

/// All differences between two environments, and what either must not hold.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub differences: Vec<Difference>,
    /// Problems of one environment on its own (`<environment>: <key>: <problem>`).
    pub findings: Vec<String>,
}

impl Report {
    pub fn forbidden(&self) -> impl Iterator<Item = &Difference> {
        self.differences.iter().filter(|d| d.allowed_as.is_none())
    }

    pub fn passes(&self) -> bool {
        self.forbidden().next().is_none() && self.findings.is_empty()
    }

    /// Every key named as a problem: forbidden differences and findings.
    #[cfg(test)]
    pub fn problem_keys(&self) -> Vec<String> {
        let findings = self.findings.iter().map(|f| f.split(": ").nth(1).unwrap_or(f).to_owned());
        self.forbidden().map(|d| d.key.clone()).chain(findings).collect()
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let show = |v: &Option<String>| v.clone().unwrap_or_else(|| "(absent)".into());
        for d in &self.differences {
            match (d.allowed_as, &d.reason) {
                (Some(kind), _) => writeln!(f, "  allowed ({kind}): {}", d.key)?,
                (None, None) => writeln!(f, "  NOT ALLOWED: {}: {} ≠ {}", d.key, show(&d.a), show(&d.b))?,
                (None, Some(reason)) => {
                    writeln!(f, "  NOT ALLOWED: {}: {} ≠ {} ({reason})", d.key, show(&d.a), show(&d.b))?
                }
            }
        }
        for finding in &self.findings {
            writeln!(f, "  NOT ALLOWED: {finding}")?;
        }
        let forbidden = self.forbidden().count();
        writeln!(
            f,
            "{} keys differ, {forbidden} of them not allowed; {} other problems",
            self.differences.len(),
            self.findings.len()
        )
    }
}

/// Compares environments `a` and `b` of the configuration tree at `dir` (`deploy/env`).
pub fn check(dir: &Path, a: &str, b: &str) -> anyhow::Result<Report> {
    let (env_a, env_b) = (Environment::read(dir, a)?, Environment::read(dir, b)?);
    let mut report = Report::default();
    let others = known_namespaces(dir)?;
    report.findings.extend(env_a.findings(&others));
    report.findings.extend(env_b.findings(&others));
    report.findings.extend(env_a.client_testing_findings());
    report.findings.extend(env_b.client_testing_findings());
    report.findings.extend(deployment_client_testing_findings(dir)?);
    report.findings.extend(agreement::findings(&env_a.name, &env_a.services));
    report.findings.extend(agreement::findings(&env_b.name, &env_b.services));
    // An environment compared with itself (how one environment is checked alone) is named once per problem.
    let mut seen = std::collections::BTreeSet::new();
    report.findings.retain(|finding| seen.insert(finding.clone()));
    let mut keys: Vec<&String> = env_a.flat.keys().chain(env_b.flat.keys()).collect();
    keys.sort();
    keys.dedup();
    for key in keys {
        let (va, vb) = (env_a.flat.get(key), env_b.flat.get(key));
        if va == vb {
            continue;
        }
        let (allowed_as, reason) = judge(key, va, vb, &env_a, &env_b);
        report.differences.push(Difference { key: key.clone(), a: va.cloned(), b: vb.cloned(), allowed_as, reason });
    }
    Ok(report)
}

/// Whether two different values of `key` are allowed, and if not, why (when the key itself may differ).
fn judge(
    key: &str,
    va: Option<&String>,
    vb: Option<&String>,
    env_a: &Environment,
    env_b: &Environment,
) -> (Option<&'static str>, Option<String>) {
    let Some(rule) = rule_for(key) else { return (None, None) };
    let (Some(va), Some(vb)) = (va, vb) else {
        return (None, Some("present in one environment only".to_owned()));
    };
    match rule {
        Rule::Address => match (&env_a.identity, &env_b.identity) {
            (Some(ia), Some(ib)) if ia.generic(va) == ib.generic(vb) => (Some(rule.kind()), None),
            (Some(ia), Some(ib)) => (
                None,
                Some(format!("differs beyond each environment's own names: {} ≠ {}", ia.generic(va), ib.generic(vb))),
            ),
            _ => (None, Some("an environment without environment.toml has no names to compare by".to_owned())),
        },
        Rule::RateLimitValue if va.parse::<i64>().is_err() || vb.parse::<i64>().is_err() => {
            (None, Some("only the numbers of a limit may differ".to_owned()))
        }
        Rule::EnvironmentName if unquote(va) != env_a.name || unquote(vb) != env_b.name => {
            (None, Some("each overlay names its own environment".to_owned()))
        }
        _ => (Some(rule.kind()), None),
    }
}

/// One environment's merged configuration, flattened, with its identity.
struct Environment {
    name: String,
    identity: Option<Identity>,
    /// `<service>.<path>` → value, and `ratelimits.<path>` for the limits file.
    flat: BTreeMap<String, String>,
    /// Each service's merged configuration (none for a service whose overlay is missing).
    services: BTreeMap<&'static str, toml::Table>,
}

impl Environment {
    fn read(dir: &Path, name: &str) -> anyhow::Result<Self> {
        let env_dir = dir.join(name);
        if !env_dir.is_dir() {
            anyhow::bail!("no environment {name:?} in {}", dir.display());
        }
        let identity_path = env_dir.join("environment.toml");
        let identity = match std::fs::read_to_string(&identity_path) {
            Ok(text) => Some(
                quarry_core::config::parse::<Identity>(&text, &identity_path.display().to_string())
                    .with_context(|| format!("read {}", identity_path.display()))?,
            ),
            Err(_) => None,
        };
        let (mut flat, mut services) = (BTreeMap::new(), BTreeMap::new());
        for service in SERVICES {
            let overlay_path = env_dir.join(format!("{service}.toml"));
            if !overlay_path.exists() {
                flat.insert(format!("{service}.(overlay)"), "missing".to_owned());
                continue;
            }
            let mut merged = read_toml(&dir.join("base").join(format!("{service}.toml")))?;
            quarry_core::config::merge(&mut merged, &read_toml(&overlay_path)?);
            flatten(service, &toml::Value::Table(merged.clone()), &mut flat);
            services.insert(*service, merged);
        }
        let limits = env_dir.join("ratelimits.toml");
        if limits.exists() {
            flatten("ratelimits", &toml::Value::Table(read_toml(&limits)?), &mut flat);
        }
        Ok(Self { name: name.to_owned(), identity, flat, services })
    }

    /// What this environment must not hold, on its own. Dev is exempt: its overlay is placeholders by design.
    fn findings(&self, namespaces: &BTreeMap<String, String>) -> Vec<String> {
        if self.name == "dev" {
            return Vec::new();
        }
        let env = &self.name;
        let mut findings = Vec::new();
        match &self.identity {
            None => findings.push(format!(
                "{env}: environment.toml: missing (its name, namespace and domain, which addresses are compared by)"
            )),
            Some(identity) if &identity.name != env => {
                findings.push(format!("{env}: environment.toml: name = {:?}, not {env:?}", identity.name))
            }
            Some(_) => {}
        }
        for service in SERVICES {
            let key = format!("{service}.environment");
            match self.flat.get(&key) {
                Some(value) if value == &format!("{env:?}") || value == env => {}
                other => findings.push(format!(
                    "{env}: {key}: {} (every overlay says which environment it is: environment = {env:?})",
                    other.map_or("(absent)", String::as_str)
                )),
            }
        }
        for (key, value) in &self.flat {
            if let Some(mark) = placeholder_in(value) {
                findings.push(format!("{env}: {key}: {value} holds {mark:?}, a placeholder left in the overlay"));
            }
            for (other, namespace) in namespaces {
                if other != env && value.contains(namespace.as_str()) {
                    findings.push(format!("{env}: {key}: {value} addresses {other}'s namespace {namespace}"));
                }
            }
        }
        for (secret, required) in SECRETS {
            let mut present = self.flat.iter().filter(|(key, _)| match secret.strip_suffix('.') {
                Some(prefix) => key.starts_with(prefix) && !key.ends_with("len()"),
                None => key == secret,
            });
            let mut seen = false;
            for (key, value) in present.by_ref() {
                seen = true;
                if !unquote(value).starts_with(SECRET_REFERENCE_PREFIX) {
                    findings.push(format!(
                        "{env}: {key}: not a secret reference: a hosted environment names its mounted secret \
                         (\"{SECRET_REFERENCE_PREFIX}…}}\"), never the value"
                    ));
                }
            }
            if !seen && *required {
                findings.push(format!(
                    "{env}: {secret}: (absent): a hosted environment's replicas share it, from a secret"
                ));
            }
        }
        findings
    }
}

impl Environment {
    /// Client-testing knobs turned on in a shipped overlay, dev's included: they come from `quarry dev`'s flags (or
    /// Pebble's variables), and every service but a dev one refuses them at start-up.
    fn client_testing_findings(&self) -> Vec<String> {
        let section = format!(".{}.", quarry_core::testing::SECTION);
        self.flat
            .iter()
            .filter(|(key, _)| key.contains(&section))
            .map(|(key, value)| {
                format!(
                    "{}: {key}: {value} turns a client-testing knob on; only quarry dev's flags (or Pebble's PEBBLE_* \
                     variables) may",
                    self.name
                )
            })
            .collect()
    }
}

/// What turns a client-testing knob on in the files that deploy an environment: the compose stack (`compose/`) and
/// the chart's values (`helm/quarry/`), beside `dir` (`deploy/env`). Comment lines are skipped.
fn deployment_client_testing_findings(dir: &Path) -> anyhow::Result<Vec<String>> {
    use quarry_core::testing::{KNOB_FLAGS, KNOB_VARIABLE_PREFIX, SECTION};
    let Some(deploy) = dir.parent() else { return Ok(Vec::new()) };
    let markers: Vec<&str> = [SECTION, KNOB_VARIABLE_PREFIX].into_iter().chain(KNOB_FLAGS.iter().copied()).collect();
    let mut findings = Vec::new();
    for folder in [deploy.join("compose"), deploy.join("helm/quarry")] {
        let Ok(entries) = std::fs::read_dir(&folder) else { continue };
        let mut files: Vec<_> = entries.filter_map(Result::ok).map(|entry| entry.path()).collect();
        files.sort();
        for path in files.iter().filter(|path| path.extension().is_some_and(|ext| ext == "yaml" || ext == "yml")) {
            let text = std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
            for (number, line) in text.lines().enumerate() {
                if line.trim_start().starts_with('#') {
                    continue;
                }
                if let Some(marker) = markers.iter().find(|marker| line.contains(**marker)) {
                    findings.push(format!(
                        "{}:{}: {marker}: a client-testing knob in a deployment; they are for quarry dev only",
                        path.display(),
                        number + 1
                    ));
                }
            }
        }
    }
    Ok(findings)
}

/// The namespace of every environment of `dir` that has an `environment.toml`, by environment name.
fn known_namespaces(dir: &Path) -> anyhow::Result<BTreeMap<String, String>> {
    let mut namespaces = BTreeMap::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("read {}", dir.display()))? {
        let path = entry?.path().join("environment.toml");
        if let Ok(text) = std::fs::read_to_string(&path) {
            let identity: Identity = quarry_core::config::parse(&text, &path.display().to_string())?;
            namespaces.insert(identity.name, identity.namespace);
        }
    }
    Ok(namespaces)
}

fn read_toml(path: &Path) -> anyhow::Result<toml::Table> {
    let text = std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
    toml::from_str(&quote_bare_placeholders(&text)).with_context(|| format!("parse {}", path.display()))
}

/// The placeholder mark in `value`, if it holds one: an operator's marker or a `${…}` that is neither a mounted
/// secret nor a run-time value.
fn placeholder_in(value: &str) -> Option<String> {
    let words = value.split(|c: char| !c.is_ascii_alphanumeric() && c != '_');
    if let Some(word) = words.into_iter().find(|word| PLACEHOLDER_WORDS.contains(&word.to_ascii_uppercase().as_str())) {
        return Some(word.to_owned());
    }
    if let Some((_, after)) = value.split_once('<').filter(|(_, after)| after.contains('>')) {
        return Some(format!("<{}", after.split('>').next().unwrap_or_default()));
    }
    let mut rest = value;
    while let Some(start) = rest.find("${") {
        let end = rest[start..].find('}').map_or(rest.len(), |end| start + end + 1);
        let placeholder = &rest[start..end];
        let secret = placeholder.starts_with(SECRET_REFERENCE_PREFIX);
        if !secret && !RUNTIME_PLACEHOLDERS.contains(&placeholder) {
            return Some(placeholder.to_owned());
        }
        rest = &rest[end..];
    }
    None
}

fn unquote(value: &str) -> &str {
    value.trim_matches('"')
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

/// Every leaf as `path` → value; every list has its `.len()` and its elements as `[n]`, so a list that grows in one
/// environment shows as a length of its own.
fn flatten(path: &str, value: &toml::Value, out: &mut BTreeMap<String, String>) {
    match value {
        toml::Value::Table(table) => {
            for (key, value) in table {
                flatten(&format!("{path}.{key}"), value, out);
            }
        }
        toml::Value::Array(items) => {
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

/// How `key` may differ, when it may.
fn rule_for(key: &str) -> Option<Rule> {
    let segments = split(key);
    ALLOWED.iter().find_map(|(pattern, rule)| {
        let pattern = split(pattern);
        (pattern.len() == segments.len() && pattern.iter().zip(&segments).all(|(p, s)| segment_matches(p, s)))
            .then_some(*rule)
    })
}

/// `*` matches any segment; `remotes[*]` any element of `remotes` (not its length).
fn segment_matches(pattern: &str, segment: &str) -> bool {
    match pattern.strip_suffix("[*]") {
        _ if pattern == "*" => true,
        Some(list) => segment.strip_prefix(list).is_some_and(|index| index.starts_with('[')),
        None => pattern == segment,
    }
}

/// A key's segments: dots separate them; `a[1].b` is `a[1]`, `b`; `len()` is a segment of its own.
fn split(key: &str) -> Vec<&str> {
    key.split('.').collect()
}

#[cfg(test)]
mod tests;
