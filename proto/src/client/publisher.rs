//! The Certificate Transparency publisher's client (the ca's).

use std::time::Instant;

use quarry_core::Problem;
use quarry_core::peer::Peer;

use crate::client::rpc;
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
}
