//! The challenge test server's tls-alpn-01 responder (RFC 8737; RFC 8738 for IP addresses): for a ClientHello
//! offering `acme-tls/1` with a server name that has a key authorization, a freshly made self-signed certificate
//! naming it and carrying the critical acmeIdentifier extension. Anything else fails the handshake.

use std::sync::Arc;
use std::time::Duration;

use rcgen::{CertificateParams, CustomExtension, KeyPair, SanType};
use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::PrivateKeyDer;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

use super::state::{ChallTestSrv, TlsAlpnRequestEvent};
use super::subject::Subject;

/// The protocol a tls-alpn-01 validation offers, and the only one the responder speaks.
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";
/// A client that stalls mid-handshake is dropped after this long.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Waited after a failed accept (such as too many open files) so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Picks the certificate for each ClientHello from the shared state, recording every hello.
struct Responder {
    srv: ChallTestSrv,
    provider: Arc<CryptoProvider>,
}

impl std::fmt::Debug for Responder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Responder").finish_non_exhaustive()
    }
}

impl ResolvesServerCert for Responder {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let server_name = hello.server_name().unwrap_or_default().to_owned();
        let protocols: Vec<Vec<u8>> = hello.alpn().map(|alpn| alpn.map(<[u8]>::to_vec).collect()).unwrap_or_default();
        self.srv.record_tlsalpn(TlsAlpnRequestEvent {
            server_name: server_name.clone(),
            supported_protos: protocols.iter().map(|p| String::from_utf8_lossy(p).into_owned()).collect(),
        });
        if server_name.is_empty() || !protocols.iter().any(|p| p == ACME_TLS_ALPN) {
            return None;
        }
        let subject = Subject::from_server_name(&server_name);
        let key_authorization = self.srv.tlsalpn01_key_authorization(&subject)?;
        match certified_key(&subject, &key_authorization, &self.provider) {
            Ok(key) => Some(Arc::new(key)),
            Err(err) => {
                tracing::warn!(server_name, error = %err, "challtestsrv: cannot make a tls-alpn-01 certificate");
                None
            }
        }
    }
}

/// A self-signed certificate (ECDSA P-256) whose only subjectAltName is `subject`, with the critical
/// acmeIdentifier extension holding SHA-256(key authorization), and its key.
pub(crate) fn certified_key(
    subject: &Subject,
    key_authorization: &str,
    provider: &CryptoProvider,
) -> Result<CertifiedKey, String> {
    let san = match subject {
        Subject::Dns(name) => SanType::DnsName(name.as_str().try_into().map_err(|err| format!("{err}"))?),
        Subject::Ip(ip) => SanType::IpAddress(*ip),
    };
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, key_authorization.as_bytes());
    let mut params = CertificateParams::default();
    params.subject_alt_names = vec![san];
    params.custom_extensions = vec![CustomExtension::new_acme_identifier(digest.as_ref())];
    let key = KeyPair::generate().map_err(|err| err.to_string())?;
    let cert = params.self_signed(&key).map_err(|err| err.to_string())?;
    let key_der = PrivateKeyDer::Pkcs8(key.serialize_der().into());
    // Not `CertifiedKey::from_der`: its key check parses the certificate with webpki, which refuses the critical
    // acmeIdentifier extension it does not know.
    let signing_key = provider.key_provider.load_private_key(key_der).map_err(|err| err.to_string())?;
    Ok(CertifiedKey::new(vec![cert.der().clone()], signing_key))
}

fn acceptor(srv: ChallTestSrv) -> TlsAcceptor {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let resolver = Arc::new(Responder { srv, provider: provider.clone() });
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        // The default provider supports both versions, so this cannot fail.
        .expect("aws-lc-rs supports TLS 1.2 and 1.3")
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = vec![ACME_TLS_ALPN.to_vec()];
    TlsAcceptor::from(Arc::new(config))
}

/// Accepts until `stopped` fires; each connection is a handshake then a close_notify, as a validation needs no
/// more. Handshakes in flight are abandoned when the server stops.
pub(crate) async fn serve(listener: TcpListener, srv: ChallTestSrv, mut stopped: watch::Receiver<()>) {
    let acceptor = acceptor(srv);
    let mut handshakes = JoinSet::new();
    loop {
        tokio::select! {
            // Resolves when the sender is dropped, which is the only thing ever done with it.
            _ = stopped.changed() => break,
            Some(_) = handshakes.join_next(), if !handshakes.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let acceptor = acceptor.clone();
                    handshakes.spawn(async move {
                        let handshake = async {
                            let mut tls = acceptor.accept(stream).await?;
                            tls.shutdown().await
                        };
                        match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await {
                            Ok(Ok(())) => {}
                            Ok(Err(err)) => tracing::debug!(%peer, error = %err, "challtestsrv: tls-alpn-01 handshake failed"),
                            Err(_) => tracing::debug!(%peer, "challtestsrv: tls-alpn-01 handshake timed out"),
                        }
                    });
                }
                Err(err) => {
                    tracing::warn!(error = %err, "challtestsrv: tls-alpn-01 accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificates_name_the_subject_and_match_their_key() {
        let provider = rustls::crypto::aws_lc_rs::default_provider();
        for subject in [Subject::Dns("example.com".into()), Subject::Ip("192.0.2.1".parse().unwrap())] {
            let key = certified_key(&subject, "token.thumbprint", &provider).expect("certificate");
            assert_eq!(key.cert.len(), 1);
            let (_, cert) = x509_parser::parse_x509_certificate(&key.cert[0]).expect("a certificate");
            let extension = cert
                .extensions()
                .iter()
                .find(|ext| ext.oid.to_id_string() == "1.3.6.1.5.5.7.1.31")
                .expect("acmeIdentifier");
            assert!(extension.critical);
            let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, b"token.thumbprint");
            assert_eq!(extension.value, [&[0x04, 0x20][..], digest.as_ref()].concat());
            let sans = cert.subject_alternative_name().unwrap().expect("subjectAltName").value;
            assert_eq!(sans.general_names.len(), 1);
        }
    }
}
