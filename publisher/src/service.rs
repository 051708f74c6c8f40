//! The `quarry.publisher.v1.Publisher` gRPC service: every log asked at once, answers verified, and the SCTs returned
//! as soon as the policy is met.

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use futures::stream::FuturesUnordered;
use quarry_core::grpc::ClientAllowlist;
use quarry_core::http_client::{HttpClient, http_client};
use quarry_core::{ErrorKind, Problem};
use quarry_proto::core::Empty;
use quarry_proto::publisher::publisher_server::{Publisher, PublisherServer};
use quarry_proto::publisher::{Scts, SubmitFinalCertificatesRequest, SubmitRequest};
use tonic::{Request, Response, Status};
use tracing::{info, warn};

use crate::log::{CtLog, Submission};
use crate::policy::{Obtained, SctPolicy};
use crate::{Config, Error, SERVICE_NAME};

/// The most final certificates one `SubmitFinalCertificates` call may carry.
pub const MOST_FINAL_CERTIFICATES: usize = 256;

pub(crate) struct PublisherService {
    logs: Arc<Vec<CtLog>>,
    policy: SctPolicy,
    client: HttpClient,
}

impl PublisherService {
    fn new(config: &Config) -> Result<Self, Error> {
        let timeout = Duration::from_millis(config.submit_timeout_ms);
        let logs = config.logs.iter().map(|log| CtLog::new(log, timeout)).collect::<Result<Vec<_>, _>>()?;
        let operators: BTreeSet<&str> = logs.iter().map(|log| log.operator.as_str()).collect();
        if config.min_scts == 0 || config.min_operators == 0 {
            return Err(Error::Policy("min_scts and min_operators must be at least 1".into()));
        }
        if logs.len() < config.min_scts || operators.len() < config.min_operators {
            return Err(Error::Policy(format!(
                "{} logs from {} operators cannot give {} SCTs from {} operators",
                logs.len(),
                operators.len(),
                config.min_scts,
                config.min_operators
            )));
        }
        let policy = SctPolicy { min_scts: config.min_scts, min_operators: config.min_operators };
        Ok(Self { logs: Arc::new(logs), policy, client: http_client(config.log_ca.as_deref())? })
    }

    async fn get_scts(&self, chain: Vec<Vec<u8>>) -> Result<Vec<Vec<u8>>, Problem> {
        if chain.len() < 2 {
            return Err(Problem::malformed("the chain needs a precertificate and its issuer"));
        }
        let mut pending: FuturesUnordered<_> = self
            .logs
            .iter()
            .map(|log| {
                let chain = &chain;
                async move { (log, log.submit(&self.client, chain, Submission::Precertificate).await) }
            })
            .collect();
        let mut obtained = Vec::new();
        let mut failures = Vec::new();
        while let Some((log, result)) = pending.next().await {
            match result {
                Ok(sct) => {
                    obtained.push(Obtained { operator: log.operator.clone(), sct });
                    if let Some(selected) = self.policy.select(&obtained) {
                        return Ok(selected);
                    }
                }
                Err(reason) => {
                    warn!(log = log.name, reason, "CT log submission failed");
                    failures.push(log.name.as_str());
                }
            }
        }
        Err(Problem::new(
            ErrorKind::Unavailable,
            format!(
                "{} SCTs obtained, which does not satisfy the policy; logs that failed: {}",
                obtained.len(),
                failures.join(", ")
            ),
        ))
    }
}

#[tonic::async_trait]
impl Publisher for PublisherService {
    async fn get_scts(&self, request: Request<SubmitRequest>) -> Result<Response<Scts>, Status> {
        let scts = self.get_scts(request.into_inner().chain).await?;
        Ok(Response::new(Scts { scts }))
    }

    async fn submit_final_certificate(&self, request: Request<SubmitRequest>) -> Result<Response<Empty>, Status> {
        let chain = request.into_inner().chain;
        check_final_chain(&chain)?;
        self.submit_final(chain);
        Ok(Response::new(Empty {}))
    }

    async fn submit_final_certificates(
        &self,
        request: Request<SubmitFinalCertificatesRequest>,
    ) -> Result<Response<Empty>, Status> {
        let certificates = request.into_inner().certificates;
        if certificates.len() > MOST_FINAL_CERTIFICATES {
            let detail = format!("at most {MOST_FINAL_CERTIFICATES} final certificates in one call");
            return Err(Problem::malformed(detail).into());
        }
        for certificate in &certificates {
            check_final_chain(&certificate.chain)?;
        }
        for certificate in certificates {
            self.submit_final(certificate.chain);
        }
        Ok(Response::new(Empty {}))
    }
}

impl PublisherService {
    /// Submits a final certificate to every log that takes them, in the background: nobody waits for these, as the
    /// certificate is already issued with its SCTs embedded.
    fn submit_final(&self, chain: Vec<Vec<u8>>) {
        let (logs, client) = (Arc::clone(&self.logs), self.client.clone());
        tokio::spawn(async move {
            for log in logs.iter().filter(|log| log.submit_final) {
                if let Err(reason) = log.submit(&client, &chain, Submission::FinalCertificate).await {
                    warn!(log = log.name, reason, "final certificate submission failed");
                }
            }
        });
    }
}

fn check_final_chain(chain: &[Vec<u8>]) -> Result<(), Problem> {
    if chain.len() < 2 {
        return Err(Problem::malformed("the chain needs a certificate and its issuer"));
    }
    Ok(())
}

pub(crate) async fn serve(
    config: Config,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    let allowlist = ClientAllowlist::for_service(&config.grpc, SERVICE_NAME)?;
    let service = PublisherService::new(&config)?;
    info!(
        addr = ?listener.local_addr().ok(),
        logs = service.logs.len(),
        min_scts = service.policy.min_scts,
        min_operators = service.policy.min_operators,
        "publisher listening"
    );
    let routes = tonic::service::Routes::new(PublisherServer::with_interceptor(service, allowlist));
    quarry_core::grpc::serve(listener, &config.tls, routes, &[SERVICE_NAME], shutdown).await?;
    Ok(())
}
