//! The check's tests: the shipped environments pass, and every drift fixture fails with its key named.

use super::*;

fn repo_env() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/env")
}

#[test]
fn patterns_name_leaves() {
    let cases = [
        ("ra.grpc.listen", Some(Rule::Address)),
        ("va.remotes[1].address", Some(Rule::Address)),
        ("va.remotes[1].rir", None),
        ("va.remotes.len()", None),
        ("ca.issuers[0].key", Some(Rule::Pki)),
        ("ca.issuers[0].profiles[0]", None),
        ("ca.issuers.len()", None),
        ("ca.issuers[0].pkcs11.token_label", Some(Rule::Pki)),
        ("wfe.chains[1]", Some(Rule::Pki)),
        ("wfe.chains.len()", None),
        ("publisher.logs[0].submit_final", None),
        ("ratelimits.limits.NewOrdersPerAccount.count", Some(Rule::RateLimitValue)),
        ("ra.rate_limits.limits_file", None),
        ("ra.async_finalize", None),
        ("ra.sa.server_name", None),
        ("wfe.nonce.address", Some(Rule::Address)),
        ("ra.sa.dns_resolver", None),
        ("va.dns_resolver", Some(Rule::Address)),
    ];
    for (key, expected) in cases {
        assert_eq!(rule_for(key), expected, "{key}");
    }
}

#[test]
fn hosted_environments_differ_only_where_allowed() {
    for (a, b) in [("staging", "production"), ("pre-staging", "staging"), ("pre-staging", "production")] {
        let report = check(&repo_env(), a, b).expect("check");
        assert!(report.passes(), "{a} vs {b}:\n{report}");
        assert!(report.differences.iter().any(|d| d.key == "wfe.base_url"), "{report}");
    }
    // Production submits to production logs; the tiers before it to test logs.
    let report = check(&repo_env(), "staging", "production").expect("check");
    assert!(report.differences.iter().any(|d| d.key.starts_with("publisher.logs")), "{report}");
}

/// Copies `deploy/env` to a temporary directory, applies `edit`, and checks staging against production.
fn check_with(edit: &dyn Fn(&Path)) -> Report {
    let dir = tempfile::tempdir().expect("tempdir");
    for entry in std::fs::read_dir(repo_env()).expect("read") {
        let env = entry.expect("entry").path();
        let target = dir.path().join(env.file_name().expect("name"));
        std::fs::create_dir_all(&target).expect("mkdir");
        for file in std::fs::read_dir(&env).expect("read") {
            let file = file.expect("file").path();
            std::fs::copy(&file, target.join(file.file_name().expect("name"))).expect("copy");
        }
    }
    edit(dir.path());
    check(dir.path(), "staging", "production").expect("check")
}

fn rewrite(dir: &Path, file: &str, change: impl Fn(String) -> String) {
    let path = dir.join(file);
    let text = std::fs::read_to_string(&path).expect("read");
    let changed = change(text.clone());
    assert_ne!(changed, text, "the drift fixture for {file} changed nothing");
    std::fs::write(&path, changed).expect("write");
}

type Drift = (&'static str, &'static str, &'static str, fn(String) -> String);

/// Every drift that must fail: (what, file, the key the report must name, the edit).
const DRIFTS: &[Drift] = &[
    ("a feature switch on in staging only", "staging/ra.toml", "ra.async_finalize", |t| {
        format!("async_finalize = true\n{t}")
    }),
    ("a profile's lifetime changed", "staging/ra.toml", "ra.profiles.classic.order_lifetime_secs", |t| {
        format!("{t}\n[profiles.classic]\norder_lifetime_secs = 1\n")
    }),
    ("a remote perspective fewer", "production/va.toml", "va.remotes.len()", |t| {
        let cut = t.rfind("[[remotes]]").expect("a remote");
        t[..cut].to_owned()
    }),
    ("a remote va given another environment's address", "staging/va.toml", "va.remotes[1].address", |t| {
        t.replace("quarry-va-remote-b.quarry-staging", "quarry-va-remote-b.quarry-production")
    }),
    ("a placeholder left in an overlay", "production/publisher.toml", "publisher.telemetry.otlp_endpoint", |t| {
        t.replace("http://otel-collector.quarry-production", "http://CHANGEME.quarry-production")
    }),
    ("an unfilled ${…} left in an overlay", "staging/wfe.toml", "wfe.directory_meta.website", |t| {
        t.replace("[directory_meta]\n", "[directory_meta]\nwebsite = \"https://${website}/\"\n")
    }),
    ("an issuer serving another profile", "staging/ca.toml", "ca.issuers[0].profiles.len()", |t| {
        t.replacen(
            "key = \"/etc/quarry/pki/e1.key.pem\"",
            "key = \"/etc/quarry/pki/e1.key.pem\"\nprofiles = [\"tlsserver\"]",
            1,
        )
    }),
    ("an issuer switched off", "production/ca.toml", "ca.issuers[1].active", |t| {
        t.replacen("key = \"/etc/quarry/pki/r1.key.pem\"", "key = \"/etc/quarry/pki/r1.key.pem\"\nactive = false", 1)
    }),
    (
        "a CT log submitted final certificates in one environment",
        "staging/publisher.toml",
        "publisher.logs[0].submit_final",
        |t| t.replacen("operator = \"log-operator-a\"", "operator = \"log-operator-a\"\nsubmit_final = true", 1),
    ),
    ("a chain more in one environment", "staging/wfe.toml", "wfe.chains.len()", |t| {
        t.replace(
            "chains = [\"/etc/quarry/pki/e1.pem\", \"/etc/quarry/pki/r1.pem\"]",
            "chains = [\"/etc/quarry/pki/e1.pem\"]",
        )
    }),
    ("another resolver for one va", "staging/va-remote-a.toml", "va-remote-a.dns_resolver", |t| {
        t.replace("dns_resolver = \"127.0.0.1:5353\"", "dns_resolver = \"8.8.8.8:53\"")
    }),
    ("the Redis rate-limit store removed", "production/ra.toml", "ra.rate_limits.redis_url", |t| {
        t.replace("redis_url = \"${file:/etc/quarry/secrets/redis/url}\"\n", "")
    }),
    ("a read replica in one environment", "production/sa.toml", "sa.read_replica_url", |t| {
        t.replacen(
            "database_url",
            "read_replica_url = \"${file:/etc/quarry/secrets/database/replica-url}\"\ndatabase_url",
            1,
        )
    }),
    ("production on an SQLite file", "production/sa.toml", "sa.database_url", |t| {
        t.replace("${file:/etc/quarry/secrets/database/url}", "sqlite:///data/quarry.db")
    }),
    ("a limit in one environment only", "staging/ratelimits.toml", "ratelimits.limits.Extra.count", |t| {
        format!("{t}\n[limits.Extra]\ncount = 1\nperiod_secs = 1\nburst = 1\n")
    }),
    ("an overlay naming another environment", "production/wfe.toml", "wfe.environment", |t| {
        t.replace("environment = \"production\"", "environment = \"staging\"")
    }),
    ("another TLS file", "staging/ca.toml", "ca.tls.key", |t| {
        t.replace("key = \"/etc/quarry/internal/tls.key\"", "key = \"/etc/quarry/internal/other.key\"")
    }),
    ("another CAA identity", "staging/va.toml", "va.caa_identities[0]", |t| {
        t.replace("caa_identities = [\"quarry.example.com\"]", "caa_identities = [\"staging.example.com\"]")
    }),
    ("a URL path changed with the host", "staging/ca.toml", "ca.issuers[0].issuer_url", |t| {
        t.replace("http://i.staging.quarry.example.com/e1.der", "http://i.staging.quarry.example.com/e1-staging.der")
    }),
    ("a secret written inline", "staging/nonce.toml", "nonce.prefix_key", |t| {
        t.replace("${file:/etc/quarry/secrets/nonce/prefix-key}", "a-key-in-the-repository")
    }),
    ("an overlay missing", "production/publisher.toml", "publisher.(overlay)", |_| String::new()),
    ("a client-testing knob in a hosted overlay", "staging/wfe.toml", "wfe.client_testing.nonce_reject_percent", |t| {
        format!("{t}\n[client_testing]\nnonce_reject_percent = 5\n")
    }),
    ("a client-testing knob in the base", "base/va.toml", "va.client_testing.always_valid", |t| {
        format!("{t}\n[client_testing]\nalways_valid = true\n")
    }),
    // What services of one environment must agree on, changed in the base so that both environments carry it
    // alike: only the agreement check can catch these.
    ("a ca shard count other than the sa's", "base/ca.toml", "ca.crl_shards", |t| {
        t.replacen("version = 1\n", "version = 1\ncrl_shards = 64\n", 1)
    }),
    ("a crl-updater shard count other than the sa's", "base/crl-updater.toml", "crl-updater.shards", |t| {
        t.replacen("version = 1\n", "version = 1\nshards = 256\n", 1)
    }),
    ("a profile the wfe advertises that the ca lacks", "base/wfe.toml", "wfe.directory_meta.profiles.premium", |t| {
        t.replace("[directory_meta.profiles]\n", "[directory_meta.profiles]\npremium = \"For the few\"\n")
    }),
    ("an ra profile the ca lacks", "base/ra.toml", "ra.profiles.premium", |t| {
        let profile = "pending_authorization_lifetime_secs = 3600\nvalid_authorization_lifetime_secs = 3600\n\
                       order_lifetime_secs = 3600\nmax_names = 1\n";
        format!("{t}\n[profiles.premium]\n{profile}")
    }),
];

#[test]
fn every_drift_fails_with_its_key_named() {
    for (what, file, key, edit) in DRIFTS {
        let report = check_with(&|dir| {
            if key.ends_with("(overlay)") {
                std::fs::remove_file(dir.join(file)).expect("remove");
            } else {
                rewrite(dir, file, edit);
            }
        });
        assert!(!report.passes(), "{what}: not caught\n{report}");
        let named = report.problem_keys();
        assert!(named.iter().any(|k| k == key), "{what}: {key} not named in {named:?}\n{report}");
    }
}

#[test]
fn a_difference_is_shown_with_both_values() {
    let report = check_with(&|dir| rewrite(dir, "staging/ra.toml", |t| format!("async_finalize = true\n{t}")));
    assert!(report.to_string().contains("NOT ALLOWED: ra.async_finalize: true ≠ false"), "{report}");
}

#[test]
fn client_testing_knobs_in_the_dev_overlay_a_compose_file_or_chart_values_fail() {
    let root = tempfile::tempdir().expect("tempdir");
    let env = root.path().join("env");
    let copy = |from: &Path, to: &Path| {
        std::fs::create_dir_all(to).expect("mkdir");
        for file in std::fs::read_dir(from).expect("read") {
            let file = file.expect("file").path();
            std::fs::copy(&file, to.join(file.file_name().expect("name"))).expect("copy");
        }
    };
    for name in ["base", "dev", "staging", "production"] {
        copy(&repo_env().join(name), &env.join(name));
    }
    assert!(check(&env, "staging", "production").expect("check").passes());
    rewrite(&env, "dev/ra.toml", |t| format!("{t}\n[client_testing]\nauthz_reuse_percent = 50\n"));
    let report = check(&env, "dev", "production").expect("check");
    assert!(report.problem_keys().contains(&"ra.client_testing.authz_reuse_percent".to_owned()), "{report}");

    let compose = root.path().join("compose");
    std::fs::create_dir_all(&compose).expect("mkdir");
    std::fs::write(compose.join("compose.yaml"), "# PEBBLE_WFE_NONCEREJECT is Pebble's\nservices: {}\n").unwrap();
    assert!(check(&env, "staging", "production").expect("check").passes(), "a comment turns nothing on");
    for (file, text, marker) in [
        ("compose/compose.yaml", "services:\n  ra:\n    environment:\n      PEBBLE_AUTHZREUSE: \"50\"\n", "PEBBLE_"),
        ("compose/compose.yaml", "services:\n  dev:\n    command: [dev, --va-always-valid]\n", "--va-always-valid"),
        ("helm/quarry/values-staging.yaml", "config:\n  wfe:\n    client_testing: {}\n", "client_testing"),
    ] {
        let path = root.path().join(file);
        std::fs::create_dir_all(path.parent().unwrap()).expect("mkdir");
        std::fs::write(&path, text).expect("write");
        let report = check(&env, "staging", "production").expect("check");
        let named = report.findings.iter().any(|f| f.contains(file) && f.contains(&format!(": {marker}")));
        assert!(named, "{file}: {marker} not named\n{report}");
        std::fs::remove_file(&path).expect("remove");
    }
}

#[test]
fn the_shipped_deployments_turn_no_knob_on() {
    let findings = deployment_client_testing_findings(&repo_env()).expect("scan");
    assert!(findings.is_empty(), "{findings:?}");
}

#[test]
fn dev_is_not_production() {
    // dev's own knobs (loopback addresses allowed, a 10-second CRL period) are exactly what the check refuses.
    let report = check(&repo_env(), "dev", "production").expect("check");
    let forbidden: Vec<&str> = report.forbidden().map(|d| d.key.as_str()).collect();
    assert!(forbidden.contains(&"ra.allow_non_public_ip_identifiers"), "{forbidden:?}");
    assert!(forbidden.contains(&"crl-updater.update_period_secs"), "{forbidden:?}");
}

/// Every shipped environment, dev's included, agrees within itself: one shard count, profiles that nest.
#[test]
fn every_shipped_environment_agrees_within_itself() {
    for env in ["dev", "pre-staging", "staging", "production"] {
        let report = check(&repo_env(), env, env).expect("check");
        assert!(report.differences.is_empty(), "{env}:\n{report}");
        let disagreements: Vec<&String> = report.findings.iter().filter(|f| f.contains("quarry_core::")).collect();
        assert!(disagreements.is_empty(), "{env}: {disagreements:#?}");
    }
    assert!(check(&repo_env(), "staging", "staging").expect("check").passes());
}

/// A disagreement names the environment, both services' keys and both values, once per environment.
#[test]
fn a_disagreement_names_the_environment_and_both_keys() {
    let report = check_with(&|dir| rewrite(dir, "production/ca.toml", |t| format!("crl_shards = 64\n{t}")));
    let shards: Vec<&String> = report.findings.iter().filter(|f| f.contains("ca.crl_shards")).collect();
    assert_eq!(shards.len(), 1, "{report}");
    assert!(shards[0].starts_with("production: ca.crl_shards: 64 ≠ sa.crl_shards 128 (the default): "), "{report}");
    assert!(report.differences.iter().any(|d| d.key == "ca.crl_shards"), "staging and production differ too");

    let report = check_with(&|dir| {
        rewrite(dir, "base/wfe.toml", |t| {
            t.replace("[directory_meta.profiles]\n", "[directory_meta.profiles]\npremium = \"For the few\"\n")
        })
    });
    for env in ["staging", "production"] {
        let expected = format!("{env}: wfe.directory_meta.profiles.premium: \"premium\" is not in ca.profiles (");
        assert!(report.findings.iter().any(|f| f.starts_with(&expected)), "{expected}\n{report}");
    }
}
