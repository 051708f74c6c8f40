//! `quarry health SERVICE --config …`: asks a running service, from inside its own container or pod, whether it
//! is ready — the gRPC health service over the service's own mutual-TLS identity, or the wfe's `/healthz` — and
//! exits 0 when it is; with `--live`, whether it is alive (answers at all). Container health checks and Kubernetes
//! exec probes run it.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use quarry_core::config::{GrpcClientConfig, TlsFiles};

/// How long one health check may take, connection included.
const TIMEOUT: Duration = Duration::from_secs(5);

#[derive(clap::Args, Debug)]
pub struct HealthArgs {
    /// The service to ask (`sa`, `va-remote-a`, `wfe`…); a gRPC service's certificate names `<service>.quarry`.
    service: String,
    /// The service's configuration files, as the service itself was given them.
    #[arg(long, required = true)]
    config: Vec<PathBuf>,
    /// For the wfe: the CA that issued its HTTPS certificate.
    #[arg(long)]
    https_ca: Option<PathBuf>,
    /// Liveness rather than readiness: exits 0 while the service answers at all, ready or not, so that a peer's or
    /// the database's outage does not get every replica restarted.
    #[arg(long)]
    live: bool,
}

/// The parts of any service's configuration a health check needs; the rest is the service's business.
#[derive(serde::Deserialize)]
struct ProbeConfig {
    tls: TlsFiles,
    grpc: Option<GrpcListen>,
    /// The wfe's HTTPS listener.
    listen: Option<SocketAddr>,
    /// The wfe's public URL: its certificate's name.
    base_url: Option<String>,
}

#[derive(serde::Deserialize)]
struct GrpcListen {
    listen: SocketAddr,
}

/// Checks the service once; the error says what is wrong.
pub async fn check(args: &HealthArgs) -> anyhow::Result<()> {
    let config: ProbeConfig = quarry_core::config::load_layers(&args.config, quarry_core::config::placeholder_value)?;
    if let Some(grpc) = &config.grpc {
        let client = GrpcClientConfig {
            timeout_ms: TIMEOUT.as_millis() as u64,
            ..GrpcClientConfig::at(format!("https://{}", reachable(grpc.listen)), format!("{}.quarry", args.service))
        };
        let channel = quarry_core::grpc::channel(&client, &config.tls)?;
        // The empty name is the server as a whole, which tonic's health service reports.
        let status = quarry_core::grpc::health_status(channel, "", Some(Instant::now() + TIMEOUT)).await;
        return match status {
            Ok(serving) if serving || args.live => Ok(()),
            Ok(_) => bail!("{} at {}: not serving", args.service, client.address[0]),
            Err(why) => bail!("{} at {}: {why}", args.service, client.address[0]),
        };
    }
    let listen = config.listen.context("the configuration has neither [grpc] listen nor an HTTPS listen")?;
    let ca = args.https_ca.as_ref().context("--https-ca is needed to check the wfe")?;
    let name = config.base_url.as_deref().and_then(host_of).context("the wfe's configuration has no base_url")?;
    let addr = reachable(listen);
    let status = tokio::time::timeout(TIMEOUT, wfe_healthz(&tls_connector(ca)?, addr, &name))
        .await
        .context("no answer in time")?
        .with_context(|| format!("wfe at {addr}"))?;
    // Any answer means the wfe is alive; ready only when its peers are (200, else 503).
    if status != 200 && !args.live {
        bail!("wfe at {addr}: /healthz answered {status}");
    }
    Ok(())
}

/// Where a server listening on `listen` is reached from its own host: the unspecified address means loopback.
fn reachable(listen: SocketAddr) -> SocketAddr {
    match listen.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => SocketAddr::new(Ipv4Addr::LOCALHOST.into(), listen.port()),
        IpAddr::V6(ip) if ip.is_unspecified() => SocketAddr::new(Ipv6Addr::LOCALHOST.into(), listen.port()),
        _ => listen,
    }
}

/// The host name of an `https://` URL.
fn host_of(url: &str) -> Option<String> {
    let authority = url.strip_prefix("https://")?.split('/').next()?;
    let host = match authority.strip_prefix('[') {
        Some(bracketed) => bracketed.split(']').next()?,
        None => authority.rsplit_once(':').map_or(authority, |(host, _)| host),
    };
    Some(host.to_owned())
}

/// TLS to a wfe whose HTTPS certificate `ca` issued.
pub fn tls_connector(ca: &std::path::Path) -> anyhow::Result<tokio_rustls::TlsConnector> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).with_context(|| format!("read {}", ca.display()))? {
        roots.add(cert?)?;
    }
    let config = rustls::ClientConfig::builder().with_root_certificates(roots).with_no_client_auth();
    Ok(tokio_rustls::TlsConnector::from(std::sync::Arc::new(config)))
}

/// A TLS client that accepts exactly the certificate first in the PEM file `cert` (signatures still checked), for
/// a server whose certificate is known but whose CA is not.
pub fn pinned_connector(cert: &std::path::Path) -> anyhow::Result<tokio_rustls::TlsConnector> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let expected = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("read {}", cert.display()))?
        .next()
        .with_context(|| format!("{} holds no certificate", cert.display()))??
        .into_owned();
    let provider = rustls::crypto::CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider()));
    let verifier = PinnedCertificate { expected, algorithms: provider.signature_verification_algorithms };
    let config = rustls::ClientConfig::builder()
        .dangerous()
        .with_custom_certificate_verifier(std::sync::Arc::new(verifier))
        .with_no_client_auth();
    Ok(tokio_rustls::TlsConnector::from(std::sync::Arc::new(config)))
}

#[derive(Debug)]
struct PinnedCertificate {
    expected: rustls_pki_types::CertificateDer<'static>,
    algorithms: rustls::crypto::WebPkiSupportedAlgorithms,
}

impl rustls::client::danger::ServerCertVerifier for PinnedCertificate {
    fn verify_server_cert(
        &self,
        end_entity: &rustls_pki_types::CertificateDer<'_>,
        _intermediates: &[rustls_pki_types::CertificateDer<'_>],
        _server_name: &rustls_pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        if end_entity.as_ref() == self.expected.as_ref() {
            Ok(rustls::client::danger::ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General("not the configured certificate".into()))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// The status of `GET /healthz` at the wfe replica at `addr`, over HTTP/1.1 and TLS, its certificate checked as
/// `name` (the name clients reach it by, whatever address this replica has: a pod's, a loopback alias).
pub async fn wfe_healthz(tls: &tokio_rustls::TlsConnector, addr: SocketAddr, name: &str) -> std::io::Result<u16> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server_name = rustls_pki_types::ServerName::try_from(name.to_owned()).map_err(std::io::Error::other)?;
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let mut stream = tls.connect(server_name, tcp).await?;
    let request = format!("GET /healthz HTTP/1.1\r\nHost: {name}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).await?;
    // "HTTP/1.1 200"
    std::str::from_utf8(&head[9..12])
        .ok()
        .and_then(|status| status.parse().ok())
        .ok_or_else(|| std::io::Error::other("not an HTTP response"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_wfes_name_is_its_base_urls_host() {
        assert_eq!(super::host_of("https://localhost:14000").as_deref(), Some("localhost"));
        assert_eq!(super::host_of("https://acme.example.com/").as_deref(), Some("acme.example.com"));
        assert_eq!(super::host_of("https://[::1]:14000").as_deref(), Some("::1"));
        assert_eq!(super::host_of("http://plain.example"), None);
    }
}
