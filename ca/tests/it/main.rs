//! Integration tests of the ca: the service runs as a real gRPC server over mutual TLS on loopback, called through
//! its generated client, with the sa played by a recording fake and a real publisher in front of two fake CT logs.

mod ceremony;
mod config;
mod crl;
mod fake_sa;
mod issue;
mod pkilint;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use quarry_ca::{Config, ProfileConfig};
use quarry_core::config::ConfigVersion;
use quarry_core::grpc::Channel;
use quarry_proto::ca::certificate_authority_client::CertificateAuthorityClient;
use quarry_testkit::ctlog::TestPublisher;
use quarry_testkit::pki::TestPki;

pub const SERIAL_PREFIX: u8 = 0x2a;

/// The ca's second service, which the crl-updater calls.
pub const CRL_GENERATOR: &str = quarry_proto::ca::crl_generator_server::SERVICE_NAME;

pub fn ca_service_name() -> &'static str {
    quarry_proto::ca::certificate_authority_server::SERVICE_NAME
}

/// A ca configuration for `pki`, allowing the "ra" certificate, with the sa at `sa_addr` and the publisher at
/// `publisher_addr`; the ECDSA and RSA issuers both active.
pub fn config(pki: &TestPki, sa_addr: SocketAddr, publisher_addr: SocketAddr) -> Config {
    Config {
        telemetry: Default::default(),
        lane: None,
        version: ConfigVersion::CURRENT,
        grpc: pki.server_config(&[(ca_service_name(), &["ra"]), (CRL_GENERATOR, &["crl-updater"])]),
        tls: pki.tls("ca"),
        sa: pki.client_config("sa", sa_addr),
        publisher: pki.client_config("publisher", publisher_addr),
        serial_prefix: SERIAL_PREFIX,
        issuers: pki.issuers(),
        crl_shards: quarry_core::crl::DEFAULT_SHARDS,
        crl_validity_secs: 9 * 86_400,
        client_testing: Default::default(),
        profiles: [
            ("classic".to_owned(), ProfileConfig::classic()),
            ("tlsserver".to_owned(), ProfileConfig::tlsserver()),
            ("shortlived".to_owned(), ProfileConfig::shortlived()),
        ]
        .into(),
        default_profile: "classic".to_owned(),
    }
}

/// A running ca with its fake sa; both stop when this is dropped.
pub struct Stack {
    pub pki: Arc<TestPki>,
    pub sa: fake_sa::Handle,
    pub publisher: TestPublisher,
    pub addr: SocketAddr,
    _stop_ca: tokio::sync::oneshot::Sender<()>,
    _stop_sa: tokio::sync::oneshot::Sender<()>,
}

impl Stack {
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    /// Starts with `adjust` applied to the configuration first.
    pub async fn start_with(adjust: impl FnOnce(&mut Config)) -> Self {
        let pki = Arc::new(TestPki::new());
        let sa = fake_sa::Handle::default();
        let (sa_addr, stop_sa) = fake_sa::start(&pki, sa.clone()).await;
        let publisher = TestPublisher::start(&pki).await;
        let mut config = config(&pki, sa_addr, publisher.addr);
        adjust(&mut config);
        let listener = tokio::net::TcpListener::bind(config.grpc.listen).await.expect("bind ca");
        let addr = listener.local_addr().expect("ca address");
        let (stop_ca, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            let shutdown = async {
                let _ = stopped.await;
            };
            if let Err(e) = quarry_ca::serve(config, listener, shutdown).await {
                panic!("ca failed: {e}");
            }
        });
        Self { pki, sa, publisher, addr, _stop_ca: stop_ca, _stop_sa: stop_sa }
    }

    /// A client of the ca presenting `client`'s internal certificate.
    pub fn client(&self, client: &str) -> CertificateAuthorityClient<Channel> {
        CertificateAuthorityClient::new(self.pki.channel(client, "ca", self.addr))
    }
}

pub fn read_cert(path: &Path) -> Vec<u8> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    CertificateDer::from_pem_file(path).expect("certificate pem").to_vec()
}
