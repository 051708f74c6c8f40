//! What finalizing an order checks (`GetFinalizationFacts`): its authorizations (and the order itself when asked),
//! whether the CSR's key is blocked, and whether the certificate would renew one, read on one pooled connection, so
//! that the call costs the sa one checkout (and the pool's check of the connection it takes back) instead of three.

use quarry_core::clock::Timestamp;
use quarry_core::model::{Authorization, Order};
use quarry_core::{Identifier, Problem};

use super::authorizations::order_authorizations;
use super::blocked_keys::key_blocked_on;
use super::certificates::fqdn_set_issued_since;
use super::database::{Store, db_error};
use super::orders::order_and_authorizations;

/// What a finalize asks.
#[derive(Debug, Clone)]
pub struct FinalizationQuestion {
    pub order_id: i64,
    /// The order itself is wanted too (its authorizations then come from the same read).
    pub with_order: bool,
    /// The hash of the CSR's public key.
    pub key_hash: Vec<u8>,
    /// The identifiers renewal is asked for; empty with `with_order`: the order's own.
    pub identifiers: Vec<Identifier>,
    /// The certificate renews one when a certificate for exactly the identifiers was issued after this.
    pub renewal_since: Timestamp,
}

/// What the sa knows that finalizing the order checks.
#[derive(Debug, Clone)]
pub struct FinalizationFacts {
    /// When asked `with_order`.
    pub order: Option<Order>,
    pub authorizations: Vec<Authorization>,
    pub key_blocked: bool,
    pub renewal: bool,
}

impl Store {
    /// Each part is what its own read answers (`key_blocked`, `get_order_and_authorizations` or
    /// `get_order_authorizations`, `fqdn_set_issuance_times`). A missing order is `notFound` only when the order is
    /// asked for; otherwise it has no authorizations.
    pub async fn finalization_facts(&self, question: &FinalizationQuestion) -> Result<FinalizationFacts, Problem> {
        let mut conn = self.pool.acquire().await.map_err(db_error)?;
        let key_blocked = key_blocked_on(&mut conn, &question.key_hash).await?;
        let (order, authorizations) = match question.with_order {
            true => order_and_authorizations(&mut conn, question.order_id).await.map(|(o, a)| (Some(o), a))?,
            false => (None, order_authorizations(&mut conn, question.order_id).await?),
        };
        let identifiers = match &order {
            Some(order) if question.identifiers.is_empty() => &order.identifiers,
            _ => &question.identifiers,
        };
        let renewal = !fqdn_set_issued_since(&mut conn, identifiers, question.renewal_since).await?.is_empty();
        Ok(FinalizationFacts { order, authorizations, key_blocked, renewal })
    }
}
