//! Configuration: the shipped deploy files parse, defaults are sensible, and bad settings stop start-up by name.

use quarry_nonce::Config;
use quarry_testkit::pki::TestPki;

use crate::config;

fn deploy_file(env: &str) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../deploy/env/{env}/nonce.toml"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

const MINIMAL: &str = r#"
    version = 1
    prefix_key = "sixteen bytes or more"
    [grpc]
    listen = "127.0.0.1:0"
    [tls]
    cert = "c.pem"
    key = "k.pem"
    ca = "ca.pem"
"#;

#[test]
fn the_deploy_files_make_a_valid_config() {
    let fill = |text: String| {
        text.replace("${pki_dir}", "/tmp/pki")
            .replace("${nonce_listen}", "127.0.0.1:9094")
            .replace("${nonce_prefix_key}", "the dev stack's nonce prefix key")
    };
    let mut base: toml::Table = toml::from_str(&fill(deploy_file("base"))).expect("base parses as toml");
    let overlay: toml::Table = toml::from_str(&fill(deploy_file("dev"))).expect("dev overlay parses as toml");
    quarry_core::config::merge(&mut base, &overlay);
    let config: Config = quarry_core::config::parse(&base.to_string(), "base+dev").expect("valid nonce config");
    assert_eq!(config.grpc.services[quarry_nonce::SERVICE_NAME].client_names, ["wfe.quarry"]);
    assert_eq!(config.max_used, quarry_nonce::DEFAULT_MAX_USED);
    assert!(config.prefix_key.len() >= quarry_nonce::MIN_PREFIX_KEY_LEN);
}

#[test]
fn a_pods_ipv6_address_is_advertised_without_brackets() {
    for (advertise, expected) in
        [("10.1.2.3:9301", "10.1.2.3:9301"), ("fd00::7:9301", "[fd00::7]:9301"), ("[fd00::7]:9301", "[fd00::7]:9301")]
    {
        let text = MINIMAL.replace("version = 1", &format!("version = 1\nadvertise = \"{advertise}\""));
        let config: Config = quarry_core::config::parse(&text, advertise).expect(advertise);
        assert_eq!(config.advertise.map(|a| a.to_string()).as_deref(), Some(expected));
    }
}

#[test]
fn optional_settings_have_defaults() {
    let config: Config = quarry_core::config::parse(MINIMAL, "minimal").expect("minimal config");
    assert_eq!(config.prefix_key, "sixteen bytes or more");
    assert_eq!(config.advertise, None);
    assert_eq!(config.max_used, 65_536);
}

#[test]
fn bad_files_are_refused_naming_the_key() {
    let cases = [
        ("missing prefix key", MINIMAL.replace("prefix_key = \"sixteen bytes or more\"", ""), "prefix_key"),
        ("bad advertise", MINIMAL.replace("version = 1", "version = 1\nadvertise = \"nonce:1\""), "advertise"),
        ("negative max_used", MINIMAL.replace("version = 1", "version = 1\nmax_used = -1"), "max_used"),
        ("typo", MINIMAL.replace("version = 1", "version = 1\nmax_usd = 5"), "max_usd"),
    ];
    for (name, text, key) in cases {
        let err = quarry_core::config::parse::<Config>(&text, name).expect_err(name).to_string();
        assert!(err.contains(key), "{name}: {err}");
    }
}

#[tokio::test]
async fn bad_settings_stop_start_up() {
    let pki = TestPki::new();
    type Adjust = fn(&mut Config);
    let cases: [(&str, &str, Adjust); 5] = [
        ("short prefix key", "invalid prefix_key", |c| c.prefix_key = "fifteen bytes!!".into()),
        ("unspecified advertise", "invalid advertise", |c| c.advertise = Some("0.0.0.0:9301".parse().expect("addr"))),
        ("zero max_used", "invalid max_used", |c| c.max_used = 0),
        ("missing allowlist", "grpc.services", |c| c.grpc.services.clear()),
        ("missing certificate", "missing.pem", |c| c.tls.cert = c.tls.cert.with_file_name("missing.pem")),
    ];
    for (name, expected, adjust) in cases {
        let mut config = config(&pki);
        adjust(&mut config);
        let listener = tokio::net::TcpListener::bind(config.grpc.listen).await.expect("bind");
        let served = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            quarry_nonce::serve(config, listener, std::future::pending()),
        )
        .await
        .unwrap_or_else(|_| panic!("{name}: the service started"));
        let err = served.expect_err(name).to_string();
        assert!(err.contains(expected), "{name}: {err}");
    }
}
