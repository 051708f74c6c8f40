//! Integration tests of the nonce service: it runs as a real gRPC server over mutual TLS on loopback and is called
//! through its generated client with certificates from `TestPki`.

mod config;
mod connection;
mod grpc;
mod replicas;

use std::net::SocketAddr;

use quarry_core::config::ConfigVersion;
use quarry_core::grpc::Channel;
use quarry_nonce::Config;
use quarry_proto::nonce::nonce_service_client::NonceServiceClient;
use quarry_testkit::pki::TestPki;

/// The key the tests' replicas derive their prefixes from.
pub const PREFIX_KEY: &str = "the nonce tests' prefix key";

/// A configuration for `pki` that allows the wfe only, as in the full stack.
pub fn config(pki: &TestPki) -> Config {
    Config {
        telemetry: Default::default(),
        version: ConfigVersion::CURRENT,
        grpc: pki.server_config(&[(quarry_nonce::SERVICE_NAME, &["wfe"])]),
        tls: pki.tls("nonce"),
        prefix_key: PREFIX_KEY.to_owned(),
        advertise: None,
        max_used: 64,
    }
}

/// A running nonce service; it stops when this is dropped.
pub struct Running {
    pub addr: SocketAddr,
    /// The prefix of its nonces: derived from the address the wfe reaches it at.
    pub prefix: String,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl Running {
    pub async fn start(config: Config) -> Self {
        let listener = tokio::net::TcpListener::bind(config.grpc.listen).await.expect("bind nonce");
        let addr = listener.local_addr().expect("nonce address");
        let prefix = quarry_proto::client::nonce_prefix(PREFIX_KEY.as_bytes(), config.advertise.unwrap_or(addr));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            let shutdown = async {
                let _ = stopped.await;
            };
            if let Err(e) = quarry_nonce::serve(config, listener, shutdown).await {
                panic!("nonce service failed: {e}");
            }
        });
        Self { addr, prefix, _stop: stop }
    }

    /// A client presenting `client`'s internal certificate.
    pub fn client(&self, pki: &TestPki, client: &str) -> NonceServiceClient<Channel> {
        NonceServiceClient::new(pki.channel(client, "nonce", self.addr))
    }
}
