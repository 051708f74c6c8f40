//! What new-order reads before it creates (`GetNewOrderFacts`): the reusable order, the paused identifiers, renewal
//! and the valid authorizations to reuse, in one read transaction, so that a new order costs the ra one sa call
//! and the sa one connection instead of four of each.

use quarry_core::clock::Timestamp;
use quarry_core::model::NewOrderFacts;
use quarry_core::{Identifier, Problem};

use super::authorizations::valid_authorizations;
use super::certificates::fqdn_set_issued_since;
use super::controls::paused_among;
use super::database::{Store, db_error};
use super::orders::reusable_order;

/// What a new order asks.
#[derive(Debug, Clone)]
pub struct NewOrderQuestion {
    pub account_id: i64,
    /// The order's identifiers, normalised, wildcards as the order asks for them.
    pub identifiers: Vec<Identifier>,
    pub profile: String,
    /// An RFC 9773 replacement order is always new: no reusable order is looked for.
    pub replacement: bool,
    /// The set is a renewal when a certificate for exactly it was issued after this.
    pub renewal_since: Timestamp,
    /// Valid authorizations are reused only when they expire after this.
    pub valid_until: Timestamp,
}

impl Store {
    /// Each part is what its own read answers (`get_order_for_names`, `paused_identifiers`,
    /// `fqdn_set_issuance_times`, `get_valid_authorizations`). A reusable order is the whole answer, as it is the
    /// ra's: the rest is read only when there is none.
    pub async fn new_order_facts(&self, question: &NewOrderQuestion) -> Result<NewOrderFacts, Problem> {
        let NewOrderQuestion { account_id, identifiers, profile, .. } = question;
        let mut tx = self.begin_read().await?;
        if !question.replacement
            && let Some(order) = reusable_order(&mut tx, *account_id, identifiers, profile).await?
        {
            tx.commit().await.map_err(db_error)?;
            return Ok(NewOrderFacts { reusable_order: Some(order), ..NewOrderFacts::default() });
        }
        // Pauses are recorded for an authorization's identifier, which never carries the wildcard label.
        let pausable: Vec<Identifier> = identifiers.iter().map(Identifier::without_wildcard).collect();
        let paused = paused_among(&mut tx, *account_id, &pausable).await?;
        let renewal = !fqdn_set_issued_since(&mut tx, identifiers, question.renewal_since).await?.is_empty();
        let valid_authorizations =
            valid_authorizations(&mut tx, *account_id, identifiers, question.valid_until, profile).await?;
        tx.commit().await.map_err(db_error)?;
        Ok(NewOrderFacts { reusable_order: None, paused, renewal, valid_authorizations })
    }
}
