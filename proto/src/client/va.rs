//! The validation authority's client: the ra's (to the primary) and the primary's (to each remote perspective).

use std::time::Instant;

use quarry_core::Problem;
use quarry_core::peer::Peer;

use crate::client::rpc;
use crate::va::va_client::VaClient as Va;
use crate::va::*;

/// A va, through every replica.
#[derive(Clone, Debug)]
pub struct VaClient {
    peer: Peer,
}

type Deadline = Option<Instant>;

impl VaClient {
    pub fn new(peer: Peer) -> Self {
        Self { peer }
    }

    pub fn peer(&self) -> &Peer {
        &self.peer
    }

    /// Domain control validation, with CAA in the same call when the request asks.
    pub async fn do_dcv(&self, request: DcvRequest, deadline: Deadline) -> Result<ValidationResult, Problem> {
        rpc!(self.peer, Va, do_dcv, "/quarry.va.v1.VA/DoDCV", request, deadline)
    }

    pub async fn do_caa(&self, request: CaaRequest, deadline: Deadline) -> Result<ValidationResult, Problem> {
        rpc!(self.peer, Va, do_caa, "/quarry.va.v1.VA/DoCAA", request, deadline)
    }
}
