//! What new-order reads before it creates (`GetNewOrderFacts`): the candidate orders for reuse, the paused
//! identifiers, renewal and the valid authorizations to reuse, asked together, so that a new order costs the ra one
//! sa call (on SQLite read in place on one connection; one round trip per read on PostgreSQL). Each read sees the
//! database as it is when it runs: the facts do not depend on each other, and the order is written later, in a
//! transaction of its own, whatever they saw. A candidate's state is read after them, only when there is one.

use quarry_core::clock::{Timestamp, now};
use quarry_core::model::NewOrderFacts;
use quarry_core::{Identifier, Problem};

use super::authorizations::{newest_valid_authorizations, valid_authorization_reads};
use super::certificates::fqdn_set_times_read;
use super::controls::{paused_among, paused_reads};
use super::database::Store;
use super::orders::reuse_candidates_read;
use super::statements::{Statement, found};

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
    /// ra's; its candidates' states are read after the rest, only when there are candidates. (The rest is read
    /// even then: on PostgreSQL that is 2 round trips per identifier more than before for a reused order, a rare
    /// request.)
    pub async fn new_order_facts(&self, question: &NewOrderQuestion) -> Result<NewOrderFacts, Problem> {
        let NewOrderQuestion { account_id, identifiers, profile, .. } = question;
        // Pauses are recorded for an authorization's identifier, which never carries the wildcard label.
        let pausable: Vec<Identifier> = identifiers.iter().map(Identifier::without_wildcard).collect();
        let mut reads = Vec::with_capacity(2 + identifiers.len());
        if !question.replacement {
            reads.push(reuse_candidates_read(self.backend(), *account_id, identifiers, profile));
        }
        // Whether each identifier is paused and whether the set renews a certificate: rows that only matter for
        // being there, asked as one read.
        let mut existence = paused_reads(*account_id, &pausable);
        existence.push(fqdn_set_times_read(identifiers, question.renewal_since));
        let found_at = reads.len();
        reads.push(Statement::finds_rows(&existence)?);
        reads.extend(valid_authorization_reads(*account_id, identifiers, question.valid_until, profile));
        let answers = self.read_together(&reads).await?;
        if !question.replacement
            && let Some(order) = self.first_reusable(&answers[0]).await?
        {
            return Ok(NewOrderFacts { reusable_order: Some(order), ..NewOrderFacts::default() });
        }
        let found = found(&answers[found_at], existence.len())?;
        Ok(NewOrderFacts {
            reusable_order: None,
            paused: paused_among(&pausable, &found[..pausable.len()]),
            renewal: found[pausable.len()],
            valid_authorizations: newest_valid_authorizations(&answers[found_at + 1..], now())?,
        })
    }
}
