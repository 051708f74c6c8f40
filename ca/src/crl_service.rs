//! The `quarry.ca.v1.CrlGenerator` gRPC service: the crl-updater streams in a shard's metadata and entries, and gets
//! the signed CRL back in chunks.

use std::pin::Pin;
use std::sync::Arc;

use futures::{Stream, StreamExt as _};
use quarry_core::config::ConfigError;
use quarry_core::grpc::ClientAllowlist;
use quarry_core::{ErrorKind, Problem};
use quarry_proto::ca::crl_generator_server::{CrlGenerator, CrlGeneratorServer};
use quarry_proto::ca::generate_crl_request::Payload;
use quarry_proto::ca::{CrlChunk, GenerateCrlRequest};
use time::{Duration, OffsetDateTime};
use tonic::service::interceptor::InterceptedService;
use tonic::{Request, Response, Status, Streaming};
use tracing::info;

use crate::Error;
use crate::crl::{CrlEntry, CrlRequest, MAX_CRL_VALIDITY, sign_crl};
use crate::service::{ConfiguredIssuer, on_signing_thread};

/// The full gRPC name of the service, the key of its allowlist in `grpc.services`.
pub const SERVICE_NAME: &str = quarry_proto::ca::crl_generator_server::SERVICE_NAME;

/// The size of the pieces a CRL is sent back in, well under gRPC's default message limit.
const CHUNK_BYTES: usize = 64 * 1024;

/// Shards hold a bounded number of entries; this stops a runaway request from exhausting memory.
const MAX_ENTRIES: usize = 1_000_000;

pub(crate) struct CrlService {
    issuers: Arc<Vec<ConfiguredIssuer>>,
    /// The ca's `crl_shards`, by which it named each certificate's shard: every entry must be of the shard asked.
    crl_shards: i64,
    validity: Duration,
}

impl CrlService {
    pub(crate) fn new(issuers: Arc<Vec<ConfiguredIssuer>>, crl_shards: i64, validity_secs: u64) -> Result<Self, Error> {
        let validity = i64::try_from(validity_secs)
            .ok()
            .map(Duration::seconds)
            .filter(|v| *v > Duration::ZERO && *v <= MAX_CRL_VALIDITY);
        let validity = validity.ok_or_else(|| {
            Error::Config(ConfigError::Invalid(format!(
                "crl_validity_secs {validity_secs} must be within (0, 10 days]"
            )))
        })?;
        Ok(Self { issuers, crl_shards, validity })
    }

    pub(crate) fn into_server(
        self,
        allowlist: ClientAllowlist,
    ) -> InterceptedService<CrlGeneratorServer<Self>, ClientAllowlist> {
        CrlGeneratorServer::with_interceptor(self, allowlist)
    }

    /// Signs the CRL the stream asks for. A problem is answered with its kind's code, except a shard this ca's
    /// `crl_shards` does not give (FailedPrecondition, see [`shard_disagreement`]).
    async fn generate(&self, mut requests: Streaming<GenerateCrlRequest>) -> Result<Vec<u8>, Status> {
        let first =
            requests.next().await.ok_or_else(|| Problem::malformed("no CRL metadata"))?.map_err(Problem::from)?;
        let Some(Payload::Metadata(metadata)) = first.payload else {
            return Err(Problem::malformed("the first message must be the CRL metadata").into());
        };
        let issuer = self
            .issuers
            .iter()
            .find(|i| i.id == metadata.issuer_id)
            .ok_or_else(|| Problem::not_found(format!("no issuer with id {}", metadata.issuer_id)))?;
        if !(0..self.crl_shards).contains(&metadata.shard) {
            return Err(shard_disagreement(format!(
                "CRL shard {} is not one of the ca's crl_shards {}",
                metadata.shard, self.crl_shards
            )));
        }
        let this_update = OffsetDateTime::from_unix_timestamp(metadata.this_update)
            .map_err(|_| Problem::malformed("this_update is out of range"))?;
        let mut entries = Vec::new();
        while let Some(message) = requests.next().await {
            let Some(Payload::Entry(entry)) = message.map_err(Problem::from)?.payload else {
                return Err(Problem::malformed("only entries may follow the metadata").into());
            };
            if entries.len() == MAX_ENTRIES {
                return Err(Problem::malformed(format!("a shard holds at most {MAX_ENTRIES} entries")).into());
            }
            let serial = hex::decode(&entry.serial).map_err(|_| Problem::malformed("a serial is not hex"))?;
            // One parse of the serial's last bytes per entry, on the string already received.
            let own_shard = quarry_core::crl::shard(&entry.serial, self.crl_shards);
            if own_shard != metadata.shard {
                return Err(shard_disagreement(format!(
                    "revoked serial {} belongs to CRL shard {own_shard} under the ca's crl_shards {}, not to the \
                     requested shard {}",
                    entry.serial, self.crl_shards, metadata.shard
                )));
            }
            let revoked_at = OffsetDateTime::from_unix_timestamp(entry.revoked_at)
                .map_err(|_| Problem::malformed("revoked_at is out of range"))?;
            entries.push(CrlEntry { serial, revoked_at, reason: entry.reason });
        }
        let count = entries.len();
        let request = CrlRequest {
            this_update,
            validity: self.validity,
            url: format!("{}{}.crl", issuer.crl_url_prefix, metadata.shard),
            entries,
        };
        let der = on_signing_thread(&issuer.issuer, move |issuer| sign_crl(issuer, &request)).await.map_err(|p| {
            // A request the ca refuses (bad reason code, duplicate serial) is the updater's bug, not an outage.
            if p.kind == ErrorKind::BadCsr { Problem::malformed(p.detail) } else { p }
        })?;
        info!(issuer_id = issuer.id, shard = metadata.shard, entries = count, bytes = der.len(), "signed CRL");
        Ok(der)
    }
}

#[tonic::async_trait]
impl CrlGenerator for CrlService {
    type GenerateCrlStream = Pin<Box<dyn Stream<Item = Result<CrlChunk, Status>> + Send>>;

    async fn generate_crl(
        &self,
        request: Request<Streaming<GenerateCrlRequest>>,
    ) -> Result<Response<Self::GenerateCrlStream>, Status> {
        let der = self.generate(request.into_inner()).await?;
        let chunks: Vec<Result<CrlChunk, Status>> =
            der.chunks(CHUNK_BYTES).map(|chunk| Ok(CrlChunk { chunk: chunk.to_vec() })).collect();
        Ok(Response::new(Box::pin(futures::stream::iter(chunks))))
    }
}

/// A request for a shard other than this ca's `crl_shards` gives — a shard it does not have, or an entry of another
/// shard — says that the sa's or the crl-updater's count is not the ca's: the deployment's files drifted apart. The
/// CRL would not list what the certificates' distribution points promise, so it is refused, as a conflict carried as
/// FailedPrecondition (`quarry_core::grpc` gives that code to no kind but an ACME order's).
fn shard_disagreement(what: String) -> Status {
    let problem = Problem::new(
        ErrorKind::Misconfigured,
        format!(
            "{what}: the ca's and the sa's crl_shards and the crl-updater's shards must be equal (quarry_core::crl; \
             `quarry env check` compares them)"
        ),
    );
    Status::from(problem)
}
