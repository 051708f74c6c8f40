//! A publisher started in-process in front of fake Certificate Transparency logs, for the tests of the services
//! that need SCTs (the ca's, the in-process stack's).

use std::net::SocketAddr;

pub use quarry_devtools::ctlog::FakeCtLog;

/// A publisher started in-process with two fake logs of distinct operators behind it.
pub struct TestPublisher {
    pub addr: SocketAddr,
    pub logs: Vec<FakeCtLog>,
}

impl TestPublisher {
    /// Starts two logs ("operator-a", "operator-b") and a publisher that requires one SCT from each, callable by
    /// the `ca` certificate; everything stops when the test's runtime ends.
    pub async fn start(pki: &crate::pki::TestPki) -> Self {
        let logs = vec![FakeCtLog::new(), FakeCtLog::new()];
        let mut log_configs = Vec::new();
        for (index, log) in logs.iter().enumerate() {
            let url = log.start().await;
            log_configs.push(quarry_publisher::LogConfig {
                name: format!("test-log-{index}"),
                url,
                operator: format!("operator-{}", ["a", "b"][index]),
                public_key: log.public_key_base64(),
                submit_final: true,
            });
        }
        let config = quarry_publisher::Config {
            telemetry: Default::default(),
            version: quarry_core::config::ConfigVersion::CURRENT,
            grpc: pki.server_config(&[(quarry_publisher::SERVICE_NAME, &["ca"])]),
            tls: pki.tls("publisher"),
            logs: log_configs,
            min_scts: 2,
            min_operators: 2,
            submit_timeout_ms: 5_000,
            log_ca: None,
        };
        let listener = tokio::net::TcpListener::bind(config.grpc.listen).await.expect("bind the publisher");
        let addr = listener.local_addr().expect("publisher address");
        tokio::spawn(quarry_publisher::serve(config, listener, std::future::pending()));
        Self { addr, logs }
    }
}
