//! The storage authority's client: its read-only and read-write services, on the same replicas. The methods are
//! in `read_only.rs` and `read_write.rs`, one per RPC of each service.

mod read_only;
mod read_write;

use std::time::Instant;

use quarry_core::model::{Authorization, Order};
use quarry_core::peer::Peer;

/// The sa, through every replica.
#[derive(Clone, Debug)]
pub struct SaClient {
    pub(super) peer: Peer,
}

/// What finalizing an order checks in the sa, read in one call ([`SaClient::get_finalization_facts`]).
#[derive(Clone, Debug)]
pub struct FinalizationFacts {
    /// The order's authorizations.
    pub authorizations: Vec<Authorization>,
    /// Whether the CSR's key is blocked.
    pub key_blocked: bool,
    /// Whether a certificate for exactly the order's identifiers was issued since the renewal window began.
    pub renewal: bool,
    /// The order, when asked for (`None` from an sa that predates the question).
    pub order: Option<Order>,
}

/// When a call must have been answered; `None`: the peer's default.
pub(super) type Deadline = Option<Instant>;

impl SaClient {
    pub fn new(peer: Peer) -> Self {
        Self { peer }
    }

    pub fn peer(&self) -> &Peer {
        &self.peer
    }
}
