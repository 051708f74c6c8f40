//! The `quarry.nonce.v1.NonceService` gRPC service: one [`NonceSource`] behind a mutex.
//!
//! An invalid nonce is an answer (`valid: false`), not an RPC error: the wfe turns it into `badNonce`.

use std::future::Future;
use std::sync::{Mutex, MutexGuard, PoisonError};

use quarry_core::Problem;
use quarry_core::grpc::ClientAllowlist;
use quarry_proto::core::Empty;
use quarry_proto::nonce::nonce_service_server::{NonceService, NonceServiceServer};
use quarry_proto::nonce::{NonceBatchRequest, NonceBatchResponse, NonceMessage, RedeemResponse};
use tonic::{Request, Response, Status};
use tracing::{debug, error, info};

use crate::source::NonceSource;
use crate::{Config, Error, SERVICE_NAME};

/// The most nonces one `NonceBatch` call mints.
pub const MAX_BATCH: u32 = 256;

pub(crate) struct Nonces {
    source: Mutex<NonceSource>,
}

impl Nonces {
    /// The lock is held for one mint or redeem, microseconds, and never across an await.
    fn source(&self) -> MutexGuard<'_, NonceSource> {
        // No source method panics halfway through an update, so a poisoned lock still guards a consistent state.
        self.source.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// `count` fresh nonces (at least one), counted in the metrics.
    fn mint(&self, count: u32) -> Result<Vec<String>, Status> {
        let minted: Result<Vec<String>, _> = {
            let mut source = self.source();
            (0..count.max(1)).map(|_| source.mint()).collect()
        };
        match minted {
            Ok(nonces) => {
                metrics::counter!("quarry_nonces_minted_total").increment(nonces.len() as u64);
                Ok(nonces)
            }
            Err(err) => {
                error!(%err, "minting a nonce failed");
                Err(Problem::internal("could not create a nonce").into())
            }
        }
    }
}

#[tonic::async_trait]
impl NonceService for Nonces {
    async fn nonce(&self, _request: Request<Empty>) -> Result<Response<NonceMessage>, Status> {
        let nonce = self.mint(1)?.pop().unwrap_or_default();
        Ok(Response::new(NonceMessage { nonce }))
    }

    async fn nonce_batch(&self, request: Request<NonceBatchRequest>) -> Result<Response<NonceBatchResponse>, Status> {
        let nonces = self.mint(request.get_ref().count.clamp(1, MAX_BATCH))?;
        Ok(Response::new(NonceBatchResponse { nonces }))
    }

    async fn redeem(&self, request: Request<NonceMessage>) -> Result<Response<RedeemResponse>, Status> {
        let (redeemed, remembered) = {
            let mut source = self.source();
            let redeemed = source.try_redeem(&request.get_ref().nonce);
            (redeemed, source.remembered())
        };
        if let Err(refusal) = redeemed {
            debug!(reason = refusal.as_str(), "nonce refused");
        }
        let result = redeemed.as_ref().map_or_else(|refusal| refusal.as_str(), |()| "valid");
        metrics::counter!("quarry_nonce_redemptions_total", "result" => result).increment(1);
        metrics::gauge!("quarry_nonce_remembered_redemptions").set(remembered as f64);
        Ok(Response::new(RedeemResponse { valid: redeemed.is_ok() }))
    }
}

pub(crate) async fn serve(
    config: Config,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    if config.prefix_key.len() < crate::MIN_PREFIX_KEY_LEN {
        return Err(Error::Setting {
            key: "prefix_key",
            reason: format!("must be at least {} bytes", crate::MIN_PREFIX_KEY_LEN),
        });
    }
    let advertised = match config.advertise {
        Some(addr) => addr,
        None => {
            let listen =
                listener.local_addr().map_err(|e| Error::Setting { key: "grpc.listen", reason: e.to_string() })?;
            if listen.ip().is_unspecified() { own_address(listen.port()).await.unwrap_or(listen) } else { listen }
        }
    };
    if advertised.ip().is_unspecified() || advertised.port() == 0 {
        return Err(Error::Setting {
            key: "advertise",
            reason: format!(
                "{advertised} is not an address the wfe can reach this replica at; set advertise (e.g. \"${{pod_ip}}:9301\")"
            ),
        });
    }
    let prefix = quarry_proto::client::nonce_prefix(config.prefix_key.as_bytes(), advertised);
    let source = NonceSource::new(&prefix, config.max_used)?;
    let allowlist = ClientAllowlist::for_service(&config.grpc, SERVICE_NAME)?;
    let service = NonceServiceServer::with_interceptor(Nonces { source: Mutex::new(source) }, allowlist);
    info!(addr = ?listener.local_addr().ok(), %advertised, %prefix, max_used = config.max_used, "nonce listening");
    quarry_core::grpc::serve(listener, &config.tls, tonic::service::Routes::new(service), &[SERVICE_NAME], shutdown)
        .await?;
    Ok(())
}

/// The address this host's name resolves to (a container's or a pod's own address, which their runtimes list in
/// `/etc/hosts`), on `port`: what peers reach a replica listening on every address at, when not told.
async fn own_address(port: u16) -> Option<std::net::SocketAddr> {
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname").ok()?;
    let found = tokio::net::lookup_host((hostname.trim(), port)).await.ok()?;
    found.into_iter().find(|addr| !addr.ip().is_loopback())
}
