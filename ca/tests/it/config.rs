//! Configuration: the shipped deploy files parse, defaults are sensible, and bad settings stop start-up.

use std::time::Duration;

use quarry_ca::Config;
use quarry_testkit::pki::TestPki;

use crate::config;

fn deploy_file(env: &str) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../deploy/env/{env}/ca.toml"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn the_deploy_files_make_a_valid_config() {
    let fill = |text: String| {
        text.replace("${pki_dir}", "/tmp/pki")
            .replace("${ca_listen}", "127.0.0.1:9093")
            .replace("${sa_addresses}", "https://127.0.0.1:9095,https://127.0.0.2:9095")
            .replace("${publisher_addresses}", "https://127.0.0.1:9096")
            .replace("${ca_addresses}", "https://127.0.0.1:9093,https://127.0.0.2:9093")
    };
    let mut base: toml::Table = toml::from_str(&fill(deploy_file("base"))).expect("base parses as toml");
    let overlay: toml::Table = toml::from_str(&fill(deploy_file("dev"))).expect("dev overlay parses as toml");
    quarry_core::config::merge(&mut base, &overlay);
    let config: Config = quarry_core::config::parse(&base.to_string(), "base+dev").expect("valid ca config");
    assert_eq!(config.profiles["classic"], quarry_ca::ProfileConfig::classic());
    assert_eq!(config.profiles["tlsserver"], quarry_ca::ProfileConfig::tlsserver());
    assert_eq!(config.profiles["shortlived"], quarry_ca::ProfileConfig::shortlived());
    assert_eq!(config.default_profile, "classic");
    assert!(!config.issuers.is_empty());
    assert!(config.grpc.services.contains_key(crate::ca_service_name()));
    config.validate().expect("valid");
    let lane = config.lane.clone().expect("the dev overlay places each ca in its lane");
    assert_eq!(lane.own, "127.0.0.1:9093".parse().unwrap());
    // A hosted overlay's own address is the pod's, filled in without brackets; the replicas must be addresses.
    let mut unbracketed = base.clone();
    let hosted = "[lane]\nreplicas = \"https://quarry-ca.quarry.svc.cluster.local:9307\"\nown = \"fd00::5:9307\"\n";
    quarry_core::config::merge(&mut unbracketed, &toml::from_str(hosted).unwrap());
    let config: Config = quarry_core::config::parse(&unbracketed.to_string(), "hosted").expect("IPv6 own");
    assert_eq!(config.lane.expect("lane").own, "[fd00::5]:9307".parse().unwrap());
    let mut bad = base.clone();
    quarry_core::config::merge(&mut bad, &toml::from_str("[lane]\nreplicas = \"quarry-ca:9307\"").unwrap());
    let config: Config = quarry_core::config::parse(&bad.to_string(), "bad").expect("parses");
    let refused = config.validate().expect_err("not an address").to_string();
    assert!(refused.contains("lane.replicas"), "{refused}");
}

#[test]
fn optional_settings_have_defaults() {
    let text = r#"
        version = 1
        [grpc]
        listen = "127.0.0.1:0"
        [tls]
        cert = "c.pem"
        key = "k.pem"
        ca = "ca.pem"
        [sa]
        address = "https://127.0.0.1:1"
        server_name = "sa.quarry"
        [publisher]
        address = "https://127.0.0.1:2"
        server_name = "publisher.quarry"
        [[issuers]]
        cert = "i.pem"
        key = "i.key.pem"
        issuer_url = "http://i.quarry.test/e1.der"
        crl_url_prefix = "http://c.quarry.test/e1/"
    "#;
    let config: Config = quarry_core::config::parse(text, "minimal").expect("minimal config");
    assert_eq!(config.serial_prefix, 1);
    assert_eq!(config.default_profile, quarry_ca::DEFAULT_PROFILE);
    assert_eq!(config.profiles[quarry_ca::DEFAULT_PROFILE].validity_secs, 90 * 86_400);

    let typo = text.replace("[[issuers]]", "serial_prefx = 2\n[[issuers]]");
    let err = quarry_core::config::parse::<Config>(&typo, "typo").expect_err("unknown key");
    assert!(err.to_string().contains("serial_prefx"), "{err}");
}

#[tokio::test]
async fn bad_settings_stop_start_up() {
    let pki = TestPki::new();
    let sa_addr = std::net::SocketAddr::from(([127, 0, 0, 1], 9));
    type Adjust = Box<dyn Fn(&mut Config, &TestPki)>;
    let cases: Vec<(&str, &str, Adjust)> = vec![
        ("missing allowlist", "grpc.services", Box::new(|c, _| c.grpc.services.clear())),
        ("zero serial prefix", "serial_prefix", Box::new(|c, _| c.serial_prefix = 0)),
        ("high serial prefix", "serial_prefix", Box::new(|c, _| c.serial_prefix = 0x80)),
        ("no issuers", "no active issuer", Box::new(|c, _| c.issuers.clear())),
        ("unknown default profile", "default_profile", Box::new(|c, _| c.default_profile = "nope".into())),
        ("zero validity", "validity_secs", Box::new(|c, _| c.profiles.values_mut().for_each(|p| p.validity_secs = 0))),
        ("key of another certificate", "does not match", Box::new(|c, p| c.issuers[0].key = Some(p.tls("ra").key))),
        (
            "leaf as issuer",
            "not a ca",
            Box::new(|c, p| {
                c.issuers[0] = quarry_ca::IssuerConfig {
                    cert: p.tls("ra").cert,
                    key: Some(p.tls("ra").key),
                    ..c.issuers[0].clone()
                }
            }),
        ),
        ("missing issuer file", "missing.pem", Box::new(|c, p| c.issuers[0].cert = p.dir().join("missing.pem"))),
        ("unknown issuer profile", "unknown profile", Box::new(|c, _| c.issuers[0].profiles = vec!["nope".into()])),
        (
            "no active issuer",
            "no active issuer serves profile",
            Box::new(|c, _| c.issuers.iter_mut().for_each(|i| i.active = false)),
        ),
        ("same issuer twice", "same subject", Box::new(|c, _| c.issuers[1] = c.issuers[0].clone())),
    ];
    for (label, expected, adjust) in cases {
        let mut config = config(&pki, sa_addr, sa_addr);
        adjust(&mut config, &pki);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let result =
            tokio::time::timeout(Duration::from_secs(10), quarry_ca::serve(config, listener, std::future::pending()))
                .await
                .unwrap_or_else(|_| panic!("{label}: the ca started anyway"));
        let err = result.expect_err(label).to_string();
        assert!(err.contains(expected), "{label}: {err}");
    }
}
