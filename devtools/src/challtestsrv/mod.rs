//! The challenge test server: a DNS server, an http-01 responder and a tls-alpn-01 responder, programmed over pebble-challtestsrv's
//! management API or in-process through [`ChallTestSrv`].
//!
//! Quarry's va resolves through its DNS server in dev and tests, and ACME client test suites written for Pebble's
//! test server drive it unchanged.

mod dns;
mod error;
mod http01;
mod management;
mod state;
mod subject;
mod tlsalpn01;

use std::future::Future;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use error::Error;
pub use state::{
    CaaPolicy, ChallTestSrv, DnsQuestion, DnsRequestEvent, HttpRequestEvent, RequestKind, TlsAlpnRequestEvent,
};
pub use tlsalpn01::ACME_TLS_ALPN;

/// How long `shutdown` lets the HTTP servers finish requests in flight before cutting them off.
const GRACE: Duration = Duration::from_secs(5);

/// Where the server listens and what it answers by default.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// UDP and TCP, on the same port; `None` runs no DNS server.
    pub dns_addr: Option<SocketAddr>,
    /// `None` runs no http-01 responder (the subscriber's own server answers instead).
    pub http01_addr: Option<SocketAddr>,
    /// `None` runs no tls-alpn-01 responder.
    pub tlsalpn01_addr: Option<SocketAddr>,
    pub management_addr: SocketAddr,
    /// The A record of every name without one of its own.
    pub default_ipv4: Option<Ipv4Addr>,
    /// The AAAA record of every name without one of its own. pebble-challtestsrv defaults to `::1`; Quarry to none,
    /// so that validation uses IPv4 loopback.
    pub default_ipv6: Option<Ipv6Addr>,
}

impl Default for Config {
    /// pebble-challtestsrv's ports, on loopback: DNS 8053, http-01 5002, tls-alpn-01 5001, management 8055.
    fn default() -> Self {
        Self {
            dns_addr: Some(SocketAddr::from((Ipv4Addr::LOCALHOST, 8053))),
            http01_addr: Some(SocketAddr::from((Ipv4Addr::LOCALHOST, 5002))),
            tlsalpn01_addr: Some(SocketAddr::from((Ipv4Addr::LOCALHOST, 5001))),
            management_addr: SocketAddr::from((Ipv4Addr::LOCALHOST, 8055)),
            default_ipv4: Some(Ipv4Addr::LOCALHOST),
            default_ipv6: None,
        }
    }
}

impl Config {
    /// Every server on a loopback port the OS picks: for tests running side by side.
    pub fn ephemeral() -> Self {
        let any_port = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
        Self {
            dns_addr: Some(any_port),
            http01_addr: Some(any_port),
            tlsalpn01_addr: Some(any_port),
            management_addr: any_port,
            ..Self::default()
        }
    }
}

/// A started server. Dropping it stops the servers; [`RunningServer::shutdown`] also waits for them.
pub struct RunningServer {
    /// Where the DNS server actually listens (UDP and TCP), the OS's pick if port 0 was asked for.
    pub dns_addr: Option<SocketAddr>,
    pub http01_addr: Option<SocketAddr>,
    /// Where the tls-alpn-01 responder actually listens.
    pub tlsalpn01_addr: Option<SocketAddr>,
    pub management_addr: SocketAddr,
    /// The served state, for programming the server in-process.
    pub state: ChallTestSrv,
    /// The DNS servers, stopped by aborting: a UDP exchange has nothing to finish.
    dns_tasks: Vec<JoinHandle<()>>,
    /// The HTTP servers and the tls-alpn-01 responder, stopped gracefully through `stop`.
    http_tasks: Vec<JoinHandle<()>>,
    /// Dropping the sender tells the HTTP servers to stop accepting and finish what they have.
    stop: Option<watch::Sender<()>>,
}

impl RunningServer {
    /// `http://` plus the management address, the base URL clients of pebble-challtestsrv are configured with.
    pub fn management_url(&self) -> String {
        format!("http://{}", self.management_addr)
    }

    /// Stops every server, giving HTTP requests in flight a few seconds, and waits until all sockets are closed.
    pub async fn shutdown(mut self) {
        self.stop.take();
        for task in std::mem::take(&mut self.dns_tasks) {
            task.abort();
            let _ = task.await;
        }
        let deadline = tokio::time::Instant::now() + GRACE;
        for mut task in std::mem::take(&mut self.http_tasks) {
            if tokio::time::timeout_at(deadline, &mut task).await.is_err() {
                task.abort();
                let _ = task.await;
            }
        }
    }
}

impl Drop for RunningServer {
    fn drop(&mut self) {
        for task in self.dns_tasks.iter().chain(&self.http_tasks) {
            task.abort();
        }
    }
}

impl ChallTestSrv {
    /// Binds every configured socket (port 0 allowed; see the returned addresses) and serves from fresh state.
    /// Nothing runs if any bind fails.
    pub async fn start(config: Config) -> Result<RunningServer, Error> {
        let state = ChallTestSrv::new(config.default_ipv4, config.default_ipv6);
        let dns = match config.dns_addr {
            Some(addr) => Some(dns::bind(addr).await?),
            None => None,
        };
        let http01 = match config.http01_addr {
            Some(addr) => Some(bind_tcp("http-01", addr).await?),
            None => None,
        };
        let tlsalpn01 = match config.tlsalpn01_addr {
            Some(addr) => Some(bind_tcp("tls-alpn-01", addr).await?),
            None => None,
        };
        let management = bind_tcp("management", config.management_addr).await?;

        let local_addr = |what, listener: &TcpListener, asked| {
            listener.local_addr().map_err(|source| Error::Bind { what, protocol: "TCP", addr: asked, source })
        };
        let dns_addr = match (&dns, config.dns_addr) {
            (Some((_, tcp)), Some(asked)) => Some(local_addr("DNS", tcp, asked)?),
            _ => None,
        };
        let http01_addr = match (&http01, config.http01_addr) {
            (Some(listener), Some(asked)) => Some(local_addr("http-01", listener, asked)?),
            _ => None,
        };
        let tlsalpn01_addr = match (&tlsalpn01, config.tlsalpn01_addr) {
            (Some(listener), Some(asked)) => Some(local_addr("tls-alpn-01", listener, asked)?),
            _ => None,
        };
        let management_addr = local_addr("management", &management, config.management_addr)?;

        let (stop, stopped) = watch::channel(());
        let mut dns_tasks = Vec::new();
        if let Some((udp, tcp)) = dns {
            dns_tasks.push(tokio::spawn(dns::serve_udp(udp, state.clone())));
            dns_tasks.push(tokio::spawn(dns::serve_tcp(tcp, state.clone())));
        }
        let mut http_tasks = Vec::new();
        if let Some(listener) = http01 {
            http_tasks.push(serve_http("http-01", listener, http01::router(state.clone()), stopped.clone()));
        }
        if let Some(listener) = tlsalpn01 {
            http_tasks.push(tokio::spawn(tlsalpn01::serve(listener, state.clone(), stopped.clone())));
        }
        http_tasks.push(serve_http("management", management, management::router(state.clone()), stopped));

        Ok(RunningServer {
            dns_addr,
            http01_addr,
            tlsalpn01_addr,
            management_addr,
            state,
            dns_tasks,
            http_tasks,
            stop: Some(stop),
        })
    }
}

async fn bind_tcp(what: &'static str, addr: SocketAddr) -> Result<TcpListener, Error> {
    TcpListener::bind(addr).await.map_err(|source| Error::Bind { what, protocol: "TCP", addr, source })
}

fn serve_http(
    what: &'static str,
    listener: TcpListener,
    router: axum::Router,
    mut stopped: watch::Receiver<()>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let signal = async move {
            // Resolves when the sender is dropped, which is the only thing ever done with it.
            let _ = stopped.changed().await;
        };
        let limits = quarry_core::http_server::ListenerConfig::default();
        quarry_core::http_server::serve(what, listener, None, router, limits, signal).await;
    })
}

/// Runs the challenge test server until `shutdown` resolves: the `quarry challtestsrv` subcommand.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), Error> {
    let server = ChallTestSrv::start(config).await?;
    tracing::info!(
        dns = ?server.dns_addr,
        http01 = ?server.http01_addr,
        tlsalpn01 = ?server.tlsalpn01_addr,
        management = %server.management_addr,
        default_ipv4 = ?server.state.default_ipv4(),
        default_ipv6 = ?server.state.default_ipv6(),
        "challenge test server listening"
    );
    shutdown.await;
    tracing::info!("challenge test server stopping");
    server.shutdown().await;
    Ok(())
}
