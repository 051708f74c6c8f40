//! The outbound HTTP(S) client shared by everything that calls another server over HTTP: the publisher's CT log
//! submissions and the load generator's ACME requests. Connections are kept and reused.

use std::path::Path;

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

/// An HTTP/1.1 client over plain TCP or TLS, sending whole bodies.
pub type HttpClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

/// Why a client could not be made: its extra trust anchors did not load.
#[derive(Debug, thiserror::Error)]
pub enum HttpClientError {
    #[error("{}: {source}", path.display())]
    Io {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("trust anchors: {0}")]
    Roots(String),
}

/// A client trusting the system's roots plus those in `extra_roots` (PEM), for servers reached over HTTPS; plain
/// HTTP URLs are accepted too (a server on loopback in tests and in the dev stack).
pub fn http_client(extra_roots: Option<&Path>) -> Result<HttpClient, HttpClientError> {
    Ok(http_client_from(tls_config(extra_roots)?, None))
}

/// The TLS settings of [`http_client`]: the system's roots plus those in `extra_roots` (PEM).
pub fn tls_config(extra_roots: Option<&Path>) -> Result<rustls::ClientConfig, HttpClientError> {
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    roots.add_parsable_certificates(native.certs);
    if let Some(path) = extra_roots {
        let pem = std::fs::read(path).map_err(|source| HttpClientError::Io { path: path.to_owned(), source })?;
        for cert in CertificateDer::pem_slice_iter(&pem) {
            let cert = cert.map_err(|e| HttpClientError::Roots(format!("{}: {e}", path.display())))?;
            roots.add(cert).map_err(|e| HttpClientError::Roots(format!("{}: {e}", path.display())))?;
        }
    }
    Ok(rustls::ClientConfig::builder().with_root_certificates(roots).with_no_client_auth())
}

/// A client with the TLS settings `tls` whose connections leave from `local_address` when one is given (the load
/// generator spreads its clients over loopback addresses, as real clients come from many).
pub fn http_client_from(tls: rustls::ClientConfig, local_address: Option<std::net::IpAddr>) -> HttpClient {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    // Requests here are small and awaited one by one: no Nagle delay.
    http.set_nodelay(true);
    http.set_local_address(local_address);
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    Client::builder(TokioExecutor::new()).build(connector)
}
