//! Integration tests of the nonce service: it runs as a real gRPC server over mutual TLS on loopback and is called
//! through its generated client with certificates from `TestPki`.

mod config;
mod grpc;

use std::net::SocketAddr;

use quarry_core::config::ConfigVersion;
use quarry_core::grpc::Channel;
use quarry_nonce::Config;
use quarry_proto::nonce::nonce_service_client::NonceServiceClient;
use quarry_testkit::pki::TestPki;

pub const PREFIX: &str = "it-nonce";

/// A configuration for `pki` that allows the wfe only, as in the full stack.
pub fn config(pki: &TestPki) -> Config {
    Config {
        telemetry: Default::default(),
        version: ConfigVersion::CURRENT,
        grpc: pki.server_config(&[(quarry_nonce::SERVICE_NAME, &["wfe"])]),
        tls: pki.tls("nonce"),
        prefix: PREFIX.to_owned(),
        max_used: 64,
    }
}

/// A running nonce service; it stops when this is dropped.
pub struct Running {
    pub addr: SocketAddr,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl Running {
    pub async fn start(config: Config) -> Self {
        let listener = tokio::net::TcpListener::bind(config.grpc.listen).await.expect("bind nonce");
        let addr = listener.local_addr().expect("nonce address");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            let shutdown = async {
                let _ = stopped.await;
            };
            if let Err(e) = quarry_nonce::serve(config, listener, shutdown).await {
                panic!("nonce service failed: {e}");
            }
        });
        Self { addr, _stop: stop }
    }

    /// A client presenting `client`'s internal certificate.
    pub fn client(&self, pki: &TestPki, client: &str) -> NonceServiceClient<Channel> {
        NonceServiceClient::new(pki.channel(client, "nonce", self.addr))
    }
}
