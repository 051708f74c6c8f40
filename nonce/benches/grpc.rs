//! The cheapest gRPC call of the stack (`Redeem` of a nonce that is refused) through the production channel and
//! server (mutual TLS, HTTP/2, the metrics and trace layers, the allowlist): what every one of the ~39 calls a
//! certificate costs before it does any work. Client and server share one current-thread runtime, so the time per
//! call is CPU time of both ends and the kernel's loopback, without the context switches between processes.
//! `cargo bench -p quarry-nonce --bench grpc`

use criterion::{Criterion, criterion_group, criterion_main};
use quarry_core::config::ConfigVersion;
use quarry_proto::nonce::NonceMessage;
use quarry_proto::nonce::nonce_service_client::NonceServiceClient;
use quarry_testkit::pki::TestPki;

fn round_trip(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
    let pki = TestPki::new();
    let config = quarry_nonce::Config {
        telemetry: Default::default(),
        version: ConfigVersion::CURRENT,
        grpc: pki.server_config(&[(quarry_nonce::SERVICE_NAME, &["wfe"])]),
        tls: pki.tls("nonce"),
        prefix_key: "the benchmark's nonce prefix key".to_owned(),
        advertise: None,
        max_used: 1024,
    };
    let mut client = runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(config.grpc.listen).await.expect("bind");
        let addr = listener.local_addr().expect("address");
        tokio::spawn(quarry_nonce::serve(config, listener, std::future::pending()));
        NonceServiceClient::new(pki.channel("wfe", "nonce", addr))
    });
    let refused = NonceMessage { nonce: "benchgrpAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA".into() };
    // The first call connects (TCP and the mutual-TLS handshake); the benchmark measures the calls after it.
    runtime.block_on(client.redeem(refused.clone())).expect("connects");
    c.bench_function("grpc_unary_round_trip_mtls", |b| {
        b.iter(|| {
            let reply = runtime.block_on(client.redeem(refused.clone())).expect("an answer");
            assert!(!reply.get_ref().valid);
        })
    });
}

criterion_group!(benches, round_trip);
criterion_main!(benches);
