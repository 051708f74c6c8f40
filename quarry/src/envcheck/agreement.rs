//! Agreement within one environment: the values several services must hold alike, read from each service's merged
//! configuration. The CRL shard count of the sa, the ca and the crl-updater is one number (`quarry_core::crl`), and
//! the profiles nest — every profile the wfe advertises is one of the ra's, every one of the ra's (and each default)
//! one of the ca's (`quarry_core::profile`). No call between the services carries a whole set, so this is where a
//! mismatch is caught before deployment; each service checks its own values at start-up by the same rules.
//!
//! A key a configuration leaves out holds the service's default, which comes from the same rule
//! (`DEFAULT_SHARDS`, `DEFAULT_PROFILE`); a `${…}` placeholder, known only once rendered, is not compared.

use std::collections::{BTreeMap, BTreeSet};

use quarry_core::crl::{DEFAULT_SHARDS, check_shard_count};
use quarry_core::profile::{DEFAULT_PROFILE, HeldBy, NamedBy, ProfileSets, check_name, unnested};

/// Every key holding the CRL shard count, as (service, key). The first present is the one the others are compared
/// with: the sa, which files each revocation under its shard.
const SHARD_COUNTS: &[(&str, &str)] = &[("sa", "crl_shards"), ("ca", "crl_shards"), ("crl-updater", "shards")];

/// What `env`'s services (merged configurations by service name; a service without one is left out) fail to agree
/// on, as `<env>: <key>: <problem>`.
pub fn findings(env: &str, services: &BTreeMap<&str, toml::Table>) -> Vec<String> {
    let mut findings = shard_count_findings(env, services);
    findings.extend(profile_findings(env, services));
    findings
}

/// A shard count as configured: its value, and whether it is the default because the key is absent.
struct ShardCount {
    key: String,
    value: i64,
    defaulted: bool,
}

impl ShardCount {
    fn shown(&self) -> String {
        if self.defaulted { format!("{} (the default)", self.value) } else { self.value.to_string() }
    }
}

fn shard_count_findings(env: &str, services: &BTreeMap<&str, toml::Table>) -> Vec<String> {
    let mut findings = Vec::new();
    let mut counts = Vec::new();
    for (service, field) in SHARD_COUNTS {
        let Some(table) = services.get(service) else { continue };
        let key = format!("{service}.{field}");
        let (value, defaulted) = match table.get(*field) {
            None => (DEFAULT_SHARDS, true),
            Some(toml::Value::Integer(value)) => (*value, false),
            Some(toml::Value::String(value)) if value.starts_with("${") => continue,
            Some(other) => {
                findings.push(format!("{env}: {key}: {other} is not a number"));
                continue;
            }
        };
        if let Err(why) = check_shard_count(value) {
            findings.push(format!("{env}: {key}: {why} (quarry_core::crl)"));
        }
        counts.push(ShardCount { key, value, defaulted });
    }
    if let Some((reference, others)) = counts.split_first() {
        for other in others.iter().filter(|other| other.value != reference.value) {
            findings.push(format!(
                "{env}: {}: {} ≠ {} {}: the ca names a certificate's CRL shard, the sa files its revocation and the \
                 crl-updater signs the shards by one count (quarry_core::crl); all three must be equal",
                other.key,
                other.shown(),
                reference.key,
                reference.shown()
            ));
        }
    }
    findings
}

/// The names of the table at `path` in `table`, or `default` when it is absent.
fn names<'a>(table: &'a toml::Table, path: &[&str], default: &[&'a str]) -> BTreeSet<&'a str> {
    let mut value = Some(table);
    let (last, parents) = path.split_last().expect("a path");
    for key in parents {
        value = value.and_then(|table| table.get(*key)).and_then(toml::Value::as_table);
    }
    match value.and_then(|table| table.get(*last)) {
        Some(toml::Value::Table(profiles)) => profiles.keys().map(String::as_str).collect(),
        _ => default.iter().copied().collect(),
    }
}

fn default_profile(table: &toml::Table) -> &str {
    table.get("default_profile").and_then(toml::Value::as_str).unwrap_or(DEFAULT_PROFILE)
}

fn profile_findings(env: &str, services: &BTreeMap<&str, toml::Table>) -> Vec<String> {
    let mut findings = Vec::new();
    let (Some(wfe), Some(ra), Some(ca)) = (services.get("wfe"), services.get("ra"), services.get("ca")) else {
        return findings;
    };
    let sets = ProfileSets {
        advertised: names(wfe, &["directory_meta", "profiles"], &[]),
        ra: names(ra, &["profiles"], &[DEFAULT_PROFILE]),
        ra_default: default_profile(ra),
        ca: names(ca, &["profiles"], &[DEFAULT_PROFILE]),
        ca_default: default_profile(ca),
    };
    let named =
        [("wfe.directory_meta.profiles", &sets.advertised), ("ra.profiles", &sets.ra), ("ca.profiles", &sets.ca)];
    for (key, set) in named {
        for name in set.iter() {
            if let Err(why) = check_name(name) {
                findings.push(format!("{env}: {key}.{name}: {why} (quarry_core::profile)"));
            }
        }
    }
    for problem in unnested(&sets) {
        let name = problem.name;
        let (key, why) = match problem.named_by {
            NamedBy::WfeDirectory => {
                (format!("wfe.directory_meta.profiles.{name}"), "the wfe advertises it, so clients may order it")
            }
            NamedBy::RaProfile => (format!("ra.profiles.{name}"), "the ra takes orders for it, for the ca to issue"),
            NamedBy::RaDefault => ("ra.default_profile".to_owned(), "orders naming no profile get it"),
            NamedBy::CaDefault => ("ca.default_profile".to_owned(), "requests naming no profile get it"),
        };
        let (holder, held) = match problem.missing_from {
            HeldBy::Ra => ("ra.profiles", &sets.ra),
            HeldBy::Ca => ("ca.profiles", &sets.ca),
        };
        let held: Vec<&str> = held.iter().copied().collect();
        findings.push(format!(
            "{env}: {key}: {name:?} is not in {holder} ({}): {why}; every advertised profile is an ra profile, every ra \
             profile a ca profile (quarry_core::profile)",
            held.join(", ")
        ));
    }
    findings
}

#[cfg(test)]
mod tests {
    use super::*;

    fn services(files: &[(&'static str, &str)]) -> BTreeMap<&'static str, toml::Table> {
        files.iter().map(|(service, text)| (*service, toml::from_str(text).expect("toml"))).collect()
    }

    #[test]
    fn absent_keys_are_the_services_defaults() {
        let defaults = services(&[("sa", ""), ("ca", ""), ("crl-updater", ""), ("ra", ""), ("wfe", "")]);
        assert_eq!(findings("dev", &defaults), Vec::<String>::new());
    }

    #[test]
    fn a_shard_count_other_than_the_sas_is_named_with_both_values() {
        let files = services(&[("sa", ""), ("ca", "crl_shards = 64"), ("crl-updater", "shards = 0")]);
        let found = findings("staging", &files);
        assert_eq!(found.len(), 3, "{found:#?}");
        assert!(found[0].starts_with("staging: crl-updater.shards: must be between 1 and"), "{found:#?}");
        assert!(found[1].starts_with("staging: ca.crl_shards: 64 ≠ sa.crl_shards 128 (the default): "), "{found:#?}");
        assert!(
            found[2].starts_with("staging: crl-updater.shards: 0 ≠ sa.crl_shards 128 (the default): "),
            "{found:#?}"
        );
        let placeholder = services(&[("sa", "crl_shards = \"${shards}\""), ("ca", "crl_shards = 64")]);
        assert_eq!(findings("dev", &placeholder), Vec::<String>::new(), "not known before rendering");
    }

    #[test]
    fn profiles_that_do_not_nest_are_named_where_they_are_named() {
        let files = services(&[
            ("wfe", "[directory_meta.profiles]\nclassic = \"90 days\"\npremium = \"for the few\"\n"),
            ("ra", "default_profile = \"classic\"\n[profiles.classic]\n[profiles.premium]\n[profiles.\"two words\"]\n"),
            ("ca", "[profiles.classic]\n[profiles.\"two words\"]\n"),
        ]);
        let found = findings("production", &files);
        let keys: Vec<&str> = found.iter().map(|f| f.split(": ").nth(1).unwrap_or_default()).collect();
        assert_eq!(
            keys,
            [
                "ra.profiles.two words",
                "ca.profiles.two words",
                "wfe.directory_meta.profiles.premium",
                "ra.profiles.premium"
            ],
            "{found:#?}"
        );
        assert!(found[2].contains("\"premium\" is not in ca.profiles (classic, two words)"), "{found:#?}");
    }
}
