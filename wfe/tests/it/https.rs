//! The ACME listener over HTTPS: a renewed certificate is served to new connections without a restart, and files
//! that do not load leave the last good one in use.

use std::net::SocketAddr;
use std::time::Duration;

use quarry_testkit::client::AcmeClient;
use quarry_testkit::pki::TestCa;
use quarry_testkit::rotation::{SecretVolume, served_certificate, wait_until_served};
use quarry_testkit::stack::InProcessStack;

#[tokio::test]
async fn the_https_listener_serves_a_renewed_certificate_without_a_restart() {
    let ca = TestCa::generate("Quarry HTTPS CA");
    let names = ["localhost", "127.0.0.1"];
    let (a, b) = (ca.issue(&names), ca.issue(&names));
    let mut volume = SecretVolume::new(&[
        ("tls.crt", a.cert_pem.as_bytes()),
        ("tls.key", a.key_pem.as_bytes()),
        ("ca.crt", ca.cert_pem().as_bytes()),
    ]);
    let (cert, key) = (volume.path("tls.crt"), volume.path("tls.key"));
    let services = InProcessStack::start_configured(
        true,
        |_| {},
        |config| {
            config.https_cert = Some(cert);
            config.https_key = Some(key);
            config.tls.reload_interval_ms = 100;
        },
    )
    .await;
    let base = services.wfe.as_deref().expect("wfe started");
    let addr: SocketAddr = base.trim_start_matches("http://").parse().expect("the wfe's address");
    assert_eq!(served_certificate(addr, "localhost", ca.client_config()).await.expect("handshake"), a.der);

    volume.overwrite("tls.key", b"garbage");
    // Several looks at the files.
    tokio::time::sleep(Duration::from_millis(350)).await;
    let served = served_certificate(addr, "localhost", ca.client_config()).await.expect("handshake");
    assert_eq!(served, a.der, "a key that does not load changes nothing");

    volume.replace(&[
        ("tls.crt", b.cert_pem.as_bytes()),
        ("tls.key", b.key_pem.as_bytes()),
        ("ca.crt", ca.cert_pem().as_bytes()),
    ]);
    let within = Duration::from_secs(5);
    wait_until_served(addr, "localhost", ca.client_config(), &b.der, within).await.expect("the renewed certificate");
    let directory = format!("https://127.0.0.1:{}/directory", addr.port());
    AcmeClient::new(&directory, Some(&volume.path("ca.crt")))
        .await
        .expect("the directory, over the renewed certificate");
}
