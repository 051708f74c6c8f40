//! `quarry health SERVICE --config …`: asks a running service, from inside its own container or pod, whether it
//! is ready — the gRPC health service over the service's own mutual-TLS identity, or the wfe's `/healthz` — and
//! exits 0 when it is. Container health checks and Kubernetes exec probes run it.

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
}

/// The parts of any service's configuration a health check needs; the rest is the service's business.
#[derive(serde::Deserialize)]
struct ProbeConfig {
    tls: TlsFiles,
    grpc: Option<GrpcListen>,
    /// The wfe's HTTPS listener.
    listen: Option<SocketAddr>,
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
        return quarry_core::grpc::check_health(channel, "", Some(Instant::now() + TIMEOUT))
            .await
            .map_err(|why| anyhow::anyhow!("{} at {}: {why}", args.service, client.address[0]));
    }
    let listen = config.listen.context("the configuration has neither [grpc] listen nor an HTTPS listen")?;
    let ca = args.https_ca.as_ref().context("--https-ca is needed to check the wfe")?;
    tokio::time::timeout(TIMEOUT, healthz(reachable(listen), ca)).await.context("no answer in time")?
}

/// Where a server listening on `listen` is reached from its own host: the unspecified address means loopback.
fn reachable(listen: SocketAddr) -> SocketAddr {
    match listen.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => SocketAddr::new(Ipv4Addr::LOCALHOST.into(), listen.port()),
        IpAddr::V6(ip) if ip.is_unspecified() => SocketAddr::new(Ipv6Addr::LOCALHOST.into(), listen.port()),
        _ => listen,
    }
}

/// `GET /healthz` over HTTPS, trusting `ca`; succeeds on status 200.
async fn healthz(addr: SocketAddr, ca: &std::path::Path) -> anyhow::Result<()> {
    use http_body_util::BodyExt;
    let client = quarry_publisher::log::http_client(Some(ca))?;
    let request = http::Request::get(format!("https://{addr}/healthz")).body(Default::default())?;
    let response = client.request(request).await.with_context(|| format!("GET https://{addr}/healthz"))?;
    let status = response.status();
    if status != http::StatusCode::OK {
        let body = response.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
        bail!("wfe at {addr}: {status}: {}", String::from_utf8_lossy(&body));
    }
    Ok(())
}
