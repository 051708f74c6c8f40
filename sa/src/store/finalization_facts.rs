//! What finalizing an order checks (`GetFinalizationFacts`): its authorizations (and the order itself when asked),
//! whether the CSR's key is blocked, and whether the certificate would renew one, asked together: on SQLite read in
//! place on one connection, one round trip per read on PostgreSQL.

use quarry_core::clock::{Timestamp, now};
use quarry_core::model::{Authorization, Order};
use quarry_core::{Identifier, Problem};

use super::authorizations::authorizations_from_rows;
use super::blocked_keys::key_blocked_read;
use super::certificates::{fqdn_set_times_read, order_fqdn_set_times_read};
use super::database::Store;
use super::orders::{order_from_answers, order_reads};
use super::statements::{Statement, found};

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
    /// `get_order_authorizations`, `fqdn_set_issuance_times`). Asked for the order's own identifiers, renewal is
    /// read through the FQDN-set hash recorded with the order at its creation (every order has one), so that it need
    /// not wait for the order's read. A missing order is `notFound` only when the order is asked for; otherwise it
    /// has no authorizations.
    pub async fn finalization_facts(&self, question: &FinalizationQuestion) -> Result<FinalizationFacts, Problem> {
        let FinalizationQuestion { order_id, with_order, renewal_since, .. } = *question;
        let [order_read, authorizations_read] = order_reads(self.backend(), order_id);
        let renewal_read = match with_order && question.identifiers.is_empty() {
            true => order_fqdn_set_times_read(order_id, renewal_since),
            false => fqdn_set_times_read(&question.identifiers, renewal_since),
        };
        // Whether the key is blocked and whether the set renews a certificate: rows that only matter for being
        // there, asked as one read.
        let mut reads =
            vec![Statement::finds_rows(&[key_blocked_read(&question.key_hash), renewal_read])?, authorizations_read];
        if with_order {
            reads.push(order_read);
        }
        let answers = self.read_together(&reads).await?;
        let (order, authorizations) = match with_order {
            true => order_from_answers(order_id, &answers[2], &answers[1]).map(|(o, a)| (Some(o), a))?,
            false => (None, authorizations_from_rows(&answers[1], now())?),
        };
        let found = found(&answers[0], 2)?;
        Ok(FinalizationFacts { order, authorizations, key_blocked: found[0], renewal: found[1] })
    }
}
