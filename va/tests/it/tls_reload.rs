//! Certificates, keys and CA bundles replaced under a running gRPC server and client: new connections use the new
//! files within the reload interval, connections already open keep working, and files that do not load change
//! nothing.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hyper_util::rt::TokioIo;
use quarry_core::Identifier;
use quarry_core::tls::MutualTls;
use quarry_proto::va::DcvRequest;
use quarry_proto::va::va_client::VaClient;
use quarry_testkit::fakes::FakeVa;
use quarry_testkit::pki::{TestCa, TestPki};
use quarry_testkit::rotation::{SecretVolume, served_certificate, wait_until_served};
use rustls::pki_types::ServerName;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// The tests' reload interval: a rotation shows within a fraction of a second.
const INTERVAL: Duration = Duration::from_millis(100);
/// How long a rotation may take to show, on a loaded machine too.
const WITHIN: Duration = Duration::from_secs(5);
/// Enough looks at the files for a change that does not load to have been refused.
const SEVERAL_LOOKS: Duration = Duration::from_millis(350);

fn request() -> DcvRequest {
    DcvRequest {
        identifier: Some((&Identifier::dns("a.example.org")).into()),
        challenge_type: "http-01".into(),
        token: "token".into(),
        expected_key_authorization: "token.thumbprint".into(),
        authorization_id: 1,
        account_id: 1,
        caa: None,
    }
}

/// A fake va (callable by the ra) whose identity is `cert` in a Secret volume trusting `bundle`, once it serves.
async fn va_serving(pki: &TestPki, cert: &quarry_testkit::pki::IssuedCert, bundle: &str) -> (SocketAddr, SecretVolume) {
    let volume = SecretVolume::with_identity(&cert.cert_pem, &cert.key_pem, bundle);
    let addr = FakeVa::default().start_with_tls(pki, volume.tls_files(INTERVAL), "ra").await;
    // The server reads its files as it starts: a test must not change them before.
    let served = served_certificate(addr, "va.quarry", ra_client(pki)).await.expect("the va serves");
    assert_eq!(served, cert.der, "the first certificate");
    (addr, volume)
}

/// The ra's TLS client, from the test PKI's files.
fn ra_client(pki: &TestPki) -> Arc<rustls::ClientConfig> {
    MutualTls::open(&pki.tls("ra")).expect("the ra's identity").client_config()
}

/// A gRPC channel over one TLS connection opened now, and the certificate that connection was served: the channel
/// fails rather than open another, so a call that succeeds went over this connection.
async fn channel_over_one_connection(
    addr: SocketAddr,
    client: Arc<rustls::ClientConfig>,
) -> (tonic::transport::Channel, Vec<u8>) {
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let name = ServerName::try_from("va.quarry").expect("name");
    let tls = tokio_rustls::TlsConnector::from(client).connect(name, tcp).await.expect("handshake");
    let served = tls.get_ref().1.peer_certificates().expect("served a certificate")[0].to_vec();
    let connection = Arc::new(Mutex::new(Some(TokioIo::new(tls))));
    let connector = tower::service_fn(move |_: http::Uri| {
        let connection = connection.lock().expect("connection lock").take();
        async move { connection.ok_or_else(|| std::io::Error::other("this channel has used its one connection")) }
    });
    let endpoint = tonic::transport::Endpoint::from_static("http://va.quarry");
    (endpoint.connect_with_connector(connector).await.expect("channel"), served)
}

#[tokio::test]
async fn a_renewed_server_certificate_reaches_new_connections_while_open_ones_keep_working() {
    let pki = TestPki::new();
    let ca = pki.internal_ca();
    let (a, b) = (ca.issue_service("va"), ca.issue_service("va"));
    let (addr, mut volume) = va_serving(&pki, &a, ca.cert_pem()).await;
    let (first, served) = channel_over_one_connection(addr, ra_client(&pki)).await;
    assert_eq!(served, a.der, "the first certificate");
    let mut first = VaClient::new(first);
    first.do_dcv(request()).await.expect("a call over the first connection");

    volume.replace_identity(&b.cert_pem, &b.key_pem, ca.cert_pem());
    wait_until_served(addr, "va.quarry", ra_client(&pki), &b.der, WITHIN).await.expect("the renewed certificate");
    first.do_dcv(request()).await.expect("the connection made with the first certificate still serves");
    // A channel as the services make them: the client names reach the allowlist through the new handshake too.
    let mut renewed = VaClient::new(pki.channel("ra", "va", addr));
    renewed.do_dcv(request()).await.expect("a call over a connection served the renewed certificate");
    let mut intruder = VaClient::new(pki.channel("intruder", "va", addr));
    let refused = intruder.do_dcv(request()).await.expect_err("not on the allowlist");
    assert_eq!(refused.code(), tonic::Code::PermissionDenied);
}

#[tokio::test]
async fn files_that_do_not_load_leave_the_last_good_certificate_in_use() {
    let pki = TestPki::new();
    let ca = pki.internal_ca();
    let (a, b) = (ca.issue_service("va"), ca.issue_service("va"));
    let (addr, mut volume) = va_serving(&pki, &a, ca.cert_pem()).await;
    let still_the_first = async |what: &str| {
        tokio::time::sleep(SEVERAL_LOOKS).await;
        let served = served_certificate(addr, "va.quarry", ra_client(&pki)).await;
        assert_eq!(served.expect(what), a.der, "{what}: the first certificate stays");
    };
    volume.overwrite("tls.crt", b"garbage");
    still_the_first("garbage in the certificate file").await;
    volume.overwrite("tls.crt", &b.cert_pem.as_bytes()[..b.cert_pem.len() / 2]);
    still_the_first("a half-written certificate").await;
    volume.overwrite("tls.crt", b.cert_pem.as_bytes());
    still_the_first("a certificate without its key").await;
    volume.replace(&[("tls.crt", b.cert_pem.as_bytes()), ("ca.crt", ca.cert_pem().as_bytes())]);
    still_the_first("no key file").await;
    volume.replace_identity(&b.cert_pem, &b.key_pem, ca.cert_pem());
    wait_until_served(addr, "va.quarry", ra_client(&pki), &b.der, WITHIN).await.expect("the whole renewal is taken");

    volume.overwrite("ca.crt", b"-----BEGIN CERTIFICATE-----\ngarbage\n");
    tokio::time::sleep(SEVERAL_LOOKS).await;
    let mut ra = VaClient::new(pki.channel("ra", "va", addr));
    ra.do_dcv(request()).await.expect("a broken bundle leaves the last good one verifying clients");
}

#[tokio::test]
async fn a_client_of_a_new_internal_ca_is_admitted_once_the_bundle_names_it() {
    let pki = TestPki::new();
    let (old_ca, new_ca) = (pki.internal_ca(), TestCa::generate("Quarry Internal CA 2"));
    let server = old_ca.issue_service("va");
    let (addr, mut volume) = va_serving(&pki, &server, old_ca.cert_pem()).await;
    // The ra renewed by the new CA; it trusts both, as in the middle of a CA rotation.
    let ra = new_ca.issue_service("ra");
    let both = format!("{}{}", old_ca.cert_pem(), new_ca.cert_pem());
    let ra_volume = SecretVolume::with_identity(&ra.cert_pem, &ra.key_pem, &both);
    let ra_files = ra_volume.tls_files(INTERVAL);
    let call_as_renewed_ra = || async {
        let channel = quarry_core::grpc::channel(&pki.client_config("va", addr), &ra_files).expect("channel");
        VaClient::new(channel).do_dcv(request()).await
    };
    call_as_renewed_ra().await.expect_err("a CA the va does not trust yet");

    volume.replace_identity(&server.cert_pem, &server.key_pem, &both);
    let started = Instant::now();
    while let Err(status) = call_as_renewed_ra().await {
        assert!(started.elapsed() < WITHIN, "still refused after {:?}: {status:?}", started.elapsed());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut ra_of_the_old_ca = VaClient::new(pki.channel("ra", "va", addr));
    ra_of_the_old_ca.do_dcv(request()).await.expect("the old CA is still in the bundle");

    // The rotation's last step: the old CA leaves the bundle, and its certificates are refused on new connections.
    volume.replace_identity(&server.cert_pem, &server.key_pem, new_ca.cert_pem());
    let started = Instant::now();
    while VaClient::new(pki.channel("ra", "va", addr)).do_dcv(request()).await.is_ok() {
        assert!(started.elapsed() < WITHIN, "the old CA still admitted after {:?}", started.elapsed());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    call_as_renewed_ra().await.expect("the new CA's client");
}

/// A TLS server that requires a client certificate of the test PKI's internal CA, sends back the one each
/// connection presented, and closes the connection.
async fn recording_server(pki: &TestPki) -> (SocketAddr, mpsc::UnboundedReceiver<Vec<u8>>) {
    let acceptor = tokio_rustls::TlsAcceptor::from(MutualTls::open(&pki.tls("va")).expect("va").server_config());
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    let (record, presented) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        // Bounded: a test connects a few dozen times at most.
        for _ in 0..500 {
            let Ok((tcp, _)) = listener.accept().await else { return };
            if let Ok(Ok(tls)) = tokio::time::timeout(Duration::from_secs(5), acceptor.accept(tcp)).await
                && let Some(leaf) = tls.get_ref().1.peer_certificates().and_then(|chain| chain.first())
            {
                let _ = record.send(leaf.to_vec());
            }
        }
    });
    (addr, presented)
}

#[tokio::test]
async fn a_client_presents_its_renewed_certificate_on_its_next_connection() {
    let pki = TestPki::new();
    let ca = pki.internal_ca();
    let (a, b) = (ca.issue_service("ra"), ca.issue_service("ra"));
    let mut volume = SecretVolume::with_identity(&a.cert_pem, &a.key_pem, ca.cert_pem());
    let (addr, mut presented) = recording_server(&pki).await;
    let peer = quarry_core::peer::Peer::new(&pki.client_config("va", addr), &volume.tls_files(INTERVAL)).expect("peer");
    // Each call opens a connection (the server closes each one) and fails; the server saw what was presented.
    let mut next_presented = async || {
        let deadline = Instant::now() + Duration::from_secs(2);
        let _ = peer.check_health("", Some(deadline)).await;
        tokio::time::timeout(Duration::from_secs(2), presented.recv()).await.ok().flatten()
    };
    assert_eq!(next_presented().await.as_ref(), Some(&a.der), "the first certificate");

    volume.replace_identity(&b.cert_pem, &b.key_pem, ca.cert_pem());
    let started = Instant::now();
    loop {
        let seen = next_presented().await;
        if seen.as_ref() == Some(&b.der) {
            break;
        }
        assert!(started.elapsed() < WITHIN, "still presenting the first certificate after {:?}", started.elapsed());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
