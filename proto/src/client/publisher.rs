//! The Certificate Transparency publisher's client (the ca's).

use std::time::Instant;

use quarry_core::Problem;
use quarry_core::peer::Peer;

use crate::client::{rpc, unless_unimplemented};
use crate::publisher::publisher_client::PublisherClient as Publisher;
use crate::publisher::*;

/// The publisher, through every replica.
#[derive(Clone, Debug)]
pub struct PublisherClient {
    peer: Peer,
}

type Deadline = Option<Instant>;

impl PublisherClient {
    pub fn new(peer: Peer) -> Self {
        Self { peer }
    }

    /// The SCTs of a precertificate (`chain`: it, then its issuer).
    pub async fn get_scts(&self, chain: Vec<Vec<u8>>, deadline: Deadline) -> Result<Vec<Vec<u8>>, Problem> {
        let request = SubmitRequest { chain };
        let reply = rpc!(self.peer, Publisher, get_scts, "/quarry.publisher.v1.Publisher/GetScts", request, deadline)?;
        Ok(reply.scts)
    }

    /// Hands a final certificate (`chain`: it, then its issuer) to the logs that take them.
    pub async fn submit_final_certificate(&self, chain: Vec<Vec<u8>>, deadline: Deadline) -> Result<(), Problem> {
        let request = SubmitRequest { chain };
        rpc!(
            self.peer,
            Publisher,
            submit_final_certificate,
            "/quarry.publisher.v1.Publisher/SubmitFinalCertificate",
            request,
            deadline
        )
        .map(drop)
    }

    /// Hands several final certificates (each a chain: it, then its issuer) to the logs that take them, in one call.
    /// `Ok(false)`: the publisher is older than the call, and has taken none of them.
    pub async fn submit_final_certificates(
        &self,
        chains: Vec<Vec<Vec<u8>>>,
        deadline: Deadline,
    ) -> Result<bool, Problem> {
        const PATH: &str = "/quarry.publisher.v1.Publisher/SubmitFinalCertificates";
        let request = SubmitFinalCertificatesRequest {
            certificates: chains.into_iter().map(|chain| SubmitRequest { chain }).collect(),
        };
        let reply = self
            .peer
            .call(PATH, crate::client::idempotence(PATH), &request, deadline, |channel, request| async move {
                Publisher::new(channel).submit_final_certificates(request).await
            })
            .await;
        Ok(unless_unimplemented(reply)?.is_some())
    }
}
