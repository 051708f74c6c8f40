//! The certificate authority's client: issuance (the ra's) and CRL signing (the crl-updater's).

use std::time::Instant;

use quarry_core::Problem;
use quarry_core::peer::Peer;
use tonic::Response;

use crate::ca::certificate_authority_client::CertificateAuthorityClient as Ca;
use crate::ca::crl_generator_client::CrlGeneratorClient as CrlGenerator;
use crate::ca::*;
use crate::client::{idempotence, rpc};

/// The ca, through every replica.
#[derive(Clone, Debug)]
pub struct CaClient {
    peer: Peer,
}

type Deadline = Option<Instant>;

impl CaClient {
    pub fn new(peer: Peer) -> Self {
        Self { peer }
    }

    pub async fn issue_certificate(
        &self,
        request: IssueCertificateRequest,
        deadline: Deadline,
    ) -> Result<IssueCertificateResponse, Problem> {
        rpc!(self.peer, Ca, issue_certificate, "/quarry.ca.v1.CertificateAuthority/IssueCertificate", request, deadline)
    }

    /// Finishes an issuance a crash interrupted after its precertificate (serial `serial`) was stored.
    pub async fn issue_certificate_for_precertificate(
        &self,
        serial: &str,
        order_id: i64,
        deadline: Deadline,
    ) -> Result<IssueCertificateResponse, Problem> {
        let request = IssueCertificateForPrecertificateRequest { serial: serial.to_owned(), order_id };
        rpc!(
            self.peer,
            Ca,
            issue_certificate_for_precertificate,
            "/quarry.ca.v1.CertificateAuthority/IssueCertificateForPrecertificate",
            request,
            deadline
        )
    }

    /// Has a CRL signed: `messages` are the metadata, then every entry; the answer is the DER CRL.
    pub async fn generate_crl(
        &self,
        messages: Vec<GenerateCrlRequest>,
        deadline: Deadline,
    ) -> Result<Vec<u8>, Problem> {
        const PATH: &str = "/quarry.ca.v1.CrlGenerator/GenerateCrl";
        self.peer
            .call(PATH, idempotence(PATH), &messages, deadline, |channel, request| async move {
                let mut chunks =
                    CrlGenerator::new(channel).generate_crl(request.map(futures::stream::iter)).await?.into_inner();
                let mut der = Vec::new();
                while let Some(chunk) = chunks.message().await? {
                    der.extend_from_slice(&chunk.chunk);
                }
                Ok(Response::new(der))
            })
            .await
            .map_err(Problem::from)
    }
}
