//! The services of the CA started in-process on loopback ports, over mutual TLS, for per-service tests:
//! a real sa (SQLite in a temporary directory), ca, publisher with two fake CT logs, nonce and ra, a [`FakeVa`],
//! and optionally the wfe.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use quarry_core::IdentifierType;
use quarry_core::config::ConfigVersion;

use crate::ctlog::{FakeCtLog, TestPublisher};
use crate::db::TestDatabase;
use crate::fakes::FakeVa;
use crate::pki::TestPki;

/// Where each started service listens; everything stops when the test's runtime ends.
pub struct InProcessStack {
    pub pki: TestPki,
    pub sa: SocketAddr,
    pub ca: SocketAddr,
    /// The first nonce replica.
    pub nonce: SocketAddr,
    /// Every nonce replica, with its prefix (derived from its address with [`NONCE_PREFIX_KEY`]).
    pub nonces: Vec<(String, SocketAddr)>,
    pub ra: SocketAddr,
    /// The ra's configuration, for a test that runs another replica beside it.
    pub ra_config: quarry_ra::Config,
    /// The wfe's base URL (plain HTTP), when it was started.
    pub wfe: Option<String>,
    pub va: FakeVa,
    /// The publisher's two CT logs.
    pub ct_logs: Vec<FakeCtLog>,
    /// The sa's database.
    pub db: TestDatabase,
}

/// The ECDSA issuer's AIA caIssuers URL in tests (see [`TestPki::issuers`]).
pub const ISSUER_URL: &str = "http://i.quarry.example.com/e1.der";
/// The ECDSA issuer's CRL distribution point prefix in tests: a certificate in shard 7 points at `…/7.crl`.
pub const CRL_URL_PREFIX: &str = "http://c.quarry.example.com/e1/";

/// The ra's account URL prefix in tests (the wfe's base URL is only known once it listens).
pub const ACCOUNT_URI_PREFIX: &str = "https://quarry.test/acme/acct/";

/// The permissive limits of `quarry dev`, which tests start from (a test may point the ra at its own file).
pub const DEV_LIMITS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/env/dev/ratelimits.toml");

/// The key the test nonce replicas and the wfe derive replica prefixes from.
pub const NONCE_PREFIX_KEY: &str = "the test stack's nonce prefix key";

/// How many nonce replicas the stack runs.
const NONCE_REPLICAS: usize = 2;

async fn listen(addr: SocketAddr) -> (tokio::net::TcpListener, SocketAddr) {
    let listener = tokio::net::TcpListener::bind(addr).await.expect("bind a loopback port");
    let addr = listener.local_addr().expect("bound address");
    (listener, addr)
}

/// The ra settings tests start from; `configure_ra` may change them.
fn ra_config(pki: &TestPki, sa: SocketAddr, va: SocketAddr, ca: SocketAddr) -> quarry_ra::Config {
    quarry_ra::Config {
        telemetry: Default::default(),
        lane: None,
        version: ConfigVersion::CURRENT,
        grpc: pki.server_config(&[("quarry.ra.v1.RegistrationAuthority", &["wfe"])]),
        tls: pki.tls("ra"),
        sa: pki.client_config("sa", sa),
        va: pki.client_config("va", va),
        ca: pki.client_config("ca", ca),
        profiles: BTreeMap::from([
            ("classic".to_owned(), quarry_ra::ValidationProfile::classic()),
            (
                "shortlived".to_owned(),
                quarry_ra::ValidationProfile {
                    pending_authorization_lifetime_secs: 3_600,
                    valid_authorization_lifetime_secs: 7 * 3_600,
                    order_lifetime_secs: 8 * 3_600,
                    max_names: 25,
                    identifier_types: vec![IdentifierType::Dns, IdentifierType::Ip],
                },
            ),
        ]),
        default_profile: "classic".into(),
        allow_non_public_ip_identifiers: true,
        challenge_types: vec!["http-01".into(), "dns-01".into(), "tls-alpn-01".into()],
        validation_timeout_ms: 5_000,
        finalize_timeout_ms: 10_000,
        async_finalize: false,
        client_testing: Default::default(),
        account_uri_prefix: ACCOUNT_URI_PREFIX.into(),
        caa_recheck_after_secs: 7 * 3_600,
        blocklists: Default::default(),
        rate_limits: quarry_ra::limits::RateLimitsConfig {
            limits_file: DEV_LIMITS.into(),
            redis_url: None,
            overrides_refresh_secs: 300,
        },
    }
}

impl InProcessStack {
    /// Starts sa, ca, nonce, the fake va and the ra (after `configure_ra`), and the wfe when `with_wfe`.
    pub async fn start(with_wfe: bool, configure_ra: impl FnOnce(&mut quarry_ra::Config)) -> Self {
        Self::start_configured(with_wfe, configure_ra, |_| {}).await
    }

    /// As [`InProcessStack::start`], with the wfe's configuration changed by `configure_wfe` first.
    pub async fn start_configured(
        with_wfe: bool,
        configure_ra: impl FnOnce(&mut quarry_ra::Config),
        configure_wfe: impl FnOnce(&mut quarry_wfe::Config),
    ) -> Self {
        Self::start_on(TestDatabase::sqlite(), with_wfe, configure_ra, configure_wfe).await
    }

    /// As [`InProcessStack::start_configured`], with the sa on `db`.
    pub async fn start_on(
        db: TestDatabase,
        with_wfe: bool,
        configure_ra: impl FnOnce(&mut quarry_ra::Config),
        configure_wfe: impl FnOnce(&mut quarry_wfe::Config),
    ) -> Self {
        let pki = TestPki::new();
        let sa_config = quarry_sa::Config {
            telemetry: Default::default(),
            version: ConfigVersion::CURRENT,
            grpc: pki.server_config(&[
                ("quarry.sa.v1.StorageAuthorityReadOnly", &["wfe", "ra", "ca", "crl-updater", "admin"]),
                ("quarry.sa.v1.StorageAuthority", &["ra", "ca", "crl-updater", "admin"]),
            ]),
            tls: pki.tls("sa"),
            database_url: db.url.clone(),
            max_connections: 4,
            statement_timeout_ms: 5_000,
            read_replica_url: None,
            crl_shards: quarry_core::crl::DEFAULT_SHARDS,
            // As quarry dev's sa with its management API: a test stores renewal-information answers through the sa
            // (with the admin identity); whether a wfe serves them is that wfe's own `[client_testing]`.
            client_testing: quarry_sa::ClientTesting { renewal_info_overrides: true },
        };
        let (listener, sa) = listen(sa_config.grpc.listen).await;
        tokio::spawn(quarry_sa::serve(sa_config, listener, std::future::pending()));

        let publisher = TestPublisher::start(&pki).await;
        let ca_config = quarry_ca::Config {
            telemetry: Default::default(),
            lane: None,
            version: ConfigVersion::CURRENT,
            grpc: pki.server_config(&[
                ("quarry.ca.v1.CertificateAuthority", &["ra"]),
                ("quarry.ca.v1.CrlGenerator", &["crl-updater"]),
            ]),
            tls: pki.tls("ca"),
            sa: pki.client_config("sa", sa),
            publisher: pki.client_config("publisher", publisher.addr),
            serial_prefix: 1,
            issuers: pki.issuers(),
            crl_shards: quarry_core::crl::DEFAULT_SHARDS,
            crl_validity_secs: 9 * 86_400,
            profiles: BTreeMap::from([
                ("classic".to_owned(), quarry_ca::ProfileConfig::classic()),
                ("shortlived".to_owned(), quarry_ca::ProfileConfig::shortlived()),
            ]),
            default_profile: "classic".into(),
            client_testing: Default::default(),
        };
        let (listener, ca) = listen(ca_config.grpc.listen).await;
        tokio::spawn(quarry_ca::serve(ca_config, listener, std::future::pending()));

        // Two replicas, as production runs several: the wfe must redeem each nonce where it was minted.
        let mut nonces = Vec::new();
        for _ in 0..NONCE_REPLICAS {
            let nonce_config = quarry_nonce::Config {
                telemetry: Default::default(),
                version: ConfigVersion::CURRENT,
                grpc: pki.server_config(&[("quarry.nonce.v1.NonceService", &["wfe"])]),
                tls: pki.tls("nonce"),
                prefix_key: NONCE_PREFIX_KEY.into(),
                advertise: None,
                max_used: 1000,
            };
            let (listener, addr) = listen(nonce_config.grpc.listen).await;
            tokio::spawn(quarry_nonce::serve(nonce_config, listener, std::future::pending()));
            nonces.push((quarry_proto::client::nonce_prefix(NONCE_PREFIX_KEY.as_bytes(), addr), addr));
        }
        let nonce = nonces[0].1;

        let va = FakeVa::default();
        let va_addr = va.start(&pki).await;
        let mut ra_config = ra_config(&pki, sa, va_addr, ca);
        configure_ra(&mut ra_config);
        let (listener, ra) = listen(ra_config.grpc.listen).await;
        tokio::spawn(quarry_ra::serve(ra_config.clone(), listener, std::future::pending()));

        let wfe = if with_wfe { Some(start_wfe(&pki, ra, sa, &nonces, configure_wfe).await) } else { None };
        Self { pki, sa, ca, nonce, nonces, ra, ra_config, wfe, va, ct_logs: publisher.logs, db }
    }
}

async fn start_wfe(
    pki: &TestPki,
    ra: SocketAddr,
    sa: SocketAddr,
    nonces: &[(String, SocketAddr)],
    configure: impl FnOnce(&mut quarry_wfe::Config),
) -> String {
    let (listener, wfe) = listen(SocketAddr::from(([127, 0, 0, 1], 0))).await;
    let base = format!("http://{wfe}");
    let mut config = quarry_wfe::Config {
        telemetry: Default::default(),
        lane: None,
        account_cache: Default::default(),
        authorization_cache: Default::default(),
        certificate_cache: Default::default(),
        client_testing: Default::default(),
        version: ConfigVersion::CURRENT,
        tls: pki.tls("wfe"),
        ra: pki.client_config("ra", ra),
        sa: pki.client_config("sa", sa),
        nonce: quarry_core::config::GrpcClientConfig {
            address: nonces.iter().map(|(_, addr)| format!("https://{addr}")).collect(),
            ..pki.client_config("nonce", nonces[0].1)
        },
        nonce_prefix_key: NONCE_PREFIX_KEY.into(),
        listen: wfe,
        listener: Default::default(),
        https_cert: None,
        https_key: None,
        base_url: base.clone(),
        chains: vec![pki.issuer_cert(), pki.rsa_issuer_cert()],
        request_timeout_ms: 10_000,
        finalize_timeout_ms: 20_000,
        retry_after_secs: 1,
        authz_retry_after_secs: None,
        hold_processing_ms: 1_500,
        orders_per_page: 100,
        directory_meta: quarry_wfe::DirectoryMeta {
            terms_of_service: Some("https://quarry.example/terms".into()),
            website: Some("https://quarry.example".into()),
            caa_identities: vec!["quarry.example".into()],
            profiles: BTreeMap::from([
                ("classic".to_owned(), "90-day certificates for DNS names".to_owned()),
                ("shortlived".to_owned(), "160-hour certificates for DNS names and IP addresses".to_owned()),
            ]),
        },
        external_account_binding: Default::default(),
        crl: None,
    };
    configure(&mut config);
    tokio::spawn(quarry_wfe::serve(config, listener, std::future::pending()));
    base
}
