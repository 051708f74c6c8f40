//! Starts sa, ca, nonce, a fake va, ra and the wfe on loopback ports for one test.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use quarry_core::config::ConfigVersion;
use quarry_jose::Algorithm;
use quarry_testkit::client::{AcmeAccount, AcmeClient};
use quarry_testkit::fakes::FakeVa;
use quarry_testkit::pki::TestPki;
use serde_json::{Value, json};

pub struct Stack {
    pub client: AcmeClient,
    pub va: FakeVa,
    pub base: String,
    _pki: TestPki,
    _db: tempfile::TempDir,
}

async fn listen(addr: SocketAddr) -> (tokio::net::TcpListener, SocketAddr) {
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    let addr = listener.local_addr().unwrap();
    (listener, addr)
}

impl Stack {
    pub async fn start() -> Stack {
        let pki = TestPki::new();
        let db = tempfile::tempdir().unwrap();
        let sa_config = quarry_sa::Config {
            version: ConfigVersion::CURRENT,
            grpc: pki.server_config(&[
                ("quarry.sa.v1.StorageAuthorityReadOnly", &["wfe", "ra", "ca"]),
                ("quarry.sa.v1.StorageAuthority", &["ra", "ca"]),
            ]),
            tls: pki.tls("sa"),
            database_url: format!("sqlite://{}/quarry.db?mode=rwc", db.path().display()),
            max_connections: 4,
        };
        let (listener, sa) = listen(sa_config.grpc.listen).await;
        tokio::spawn(quarry_sa::serve(sa_config, listener, std::future::pending()));

        let ca_config = quarry_ca::Config {
            version: ConfigVersion::CURRENT,
            grpc: pki.server_config(&[("quarry.ca.v1.CertificateAuthority", &["ra"])]),
            tls: pki.tls("ca"),
            sa: pki.client_config("sa", sa),
            serial_prefix: 1,
            issuers: vec![quarry_ca::IssuerConfig { cert: pki.issuer_cert(), key: pki.issuer_key() }],
            profiles: BTreeMap::from([(
                "classic".to_owned(),
                quarry_ca::ProfileConfig { validity_secs: 90 * 86_400, include_common_name: true },
            )]),
            default_profile: "classic".into(),
        };
        let (listener, ca) = listen(ca_config.grpc.listen).await;
        tokio::spawn(quarry_ca::serve(ca_config, listener, std::future::pending()));

        let nonce_config = quarry_nonce::Config {
            version: ConfigVersion::CURRENT,
            grpc: pki.server_config(&[("quarry.nonce.v1.NonceService", &["wfe"])]),
            tls: pki.tls("nonce"),
            prefix: "testnonc".into(),
            max_used: 1000,
        };
        let (listener, nonce) = listen(nonce_config.grpc.listen).await;
        tokio::spawn(quarry_nonce::serve(nonce_config, listener, std::future::pending()));

        let va = FakeVa::default();
        let va_addr = va.start(&pki).await;
        let ra_config = quarry_ra::Config {
            version: ConfigVersion::CURRENT,
            grpc: pki.server_config(&[("quarry.ra.v1.RegistrationAuthority", &["wfe"])]),
            tls: pki.tls("ra"),
            sa: pki.client_config("sa", sa),
            va: pki.client_config("va", va_addr),
            ca: pki.client_config("ca", ca),
            pending_authorization_lifetime_secs: 7 * 86_400,
            valid_authorization_lifetime_secs: 30 * 86_400,
            order_lifetime_secs: 7 * 86_400,
            max_names_per_order: 100,
            profiles: vec!["classic".into()],
            default_profile: "classic".into(),
            challenge_types: vec!["http-01".into(), "dns-01".into()],
            validation_timeout_ms: 5_000,
            finalize_timeout_ms: 10_000,
        };
        let (listener, ra) = listen(ra_config.grpc.listen).await;
        tokio::spawn(quarry_ra::serve(ra_config, listener, std::future::pending()));

        let (listener, wfe) = listen(SocketAddr::from(([127, 0, 0, 1], 0))).await;
        let base = format!("http://{wfe}");
        let wfe_config = quarry_wfe::Config {
            version: ConfigVersion::CURRENT,
            tls: pki.tls("wfe"),
            ra: pki.client_config("ra", ra),
            sa: pki.client_config("sa", sa),
            nonce_services: vec![quarry_wfe::NonceServiceConfig {
                prefix: "testnonc".into(),
                address: format!("https://{nonce}"),
                server_name: "nonce.quarry".into(),
                timeout_ms: 5_000,
            }],
            listen: wfe,
            https_cert: None,
            https_key: None,
            base_url: base.clone(),
            chains: vec![pki.issuer_cert()],
            request_timeout_ms: 10_000,
            retry_after_secs: 1,
            directory_meta: quarry_wfe::DirectoryMeta {
                website: Some("https://quarry.example".into()),
                ..Default::default()
            },
        };
        tokio::spawn(quarry_wfe::serve(wfe_config, listener, std::future::pending()));
        let client = AcmeClient::new(&format!("{base}/directory"), None).await.expect("directory");
        Stack { client, va, base, _pki: pki, _db: db }
    }

    pub async fn account(&self, alg: Algorithm) -> AcmeAccount {
        let mut account = AcmeAccount::generate(alg);
        self.client.register(&mut account).await.expect("register");
        account
    }

    /// A new order for `names`; returns (order URL, order JSON).
    pub async fn order(&self, account: &AcmeAccount, names: &[&str]) -> (String, Value) {
        let identifiers: Vec<Value> = names.iter().map(|n| json!({"type": "dns", "value": n})).collect();
        let response = self
            .client
            .post(account, &self.client.url("newOrder"), Some(&json!({ "identifiers": identifiers })))
            .await
            .unwrap();
        assert_eq!(response.status, 201, "{}", String::from_utf8_lossy(&response.body));
        (response.header("location").expect("order location"), response.json())
    }

    /// Answers every challenge of the order (the fake va passes) and waits until the order is ready.
    pub async fn make_ready(&self, account: &AcmeAccount, order_url: &str, order: &Value) {
        for authz_url in order["authorizations"].as_array().unwrap() {
            let authz = self.client.post(account, authz_url.as_str().unwrap(), None).await.unwrap().json();
            let challenge = authz["challenges"][0]["url"].as_str().unwrap().to_owned();
            let answer = self.client.post(account, &challenge, Some(&json!({}))).await.unwrap();
            assert_eq!(answer.status, 200, "{}", String::from_utf8_lossy(&answer.body));
        }
        self.client.poll(account, order_url, 100, |o| o["status"] == "ready").await.expect("order ready");
    }
}

pub fn csr(names: &[&str]) -> String {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
    params.distinguished_name = rcgen::DistinguishedName::new();
    quarry_jose::b64_encode(params.serialize_request(&key).unwrap().der())
}
