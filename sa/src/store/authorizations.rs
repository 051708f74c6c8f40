//! Authorizations and their challenges: lookups (one, an order's, the valid ones an account may reuse), the fuse a
//! validation takes, its recorded outcome, and deactivation. A challenge is not a row of its own: it is read from its
//! authorization's offered types and the one attempted.

use quarry_core::clock::{Timestamp, now};
use quarry_core::model::{
    Authorization, AuthorizationStatus, Challenge, ChallengeStatus, ChallengeType, ValidationRecord,
};
use quarry_core::{ErrorKind, Identifier, IdentifierType, Problem};

use super::database::{Backend, Store};
use super::errors::{db_error, internal};
use super::rows::{ReadColumn, get};
use super::statements::Statement;
use crate::queries;
use crate::status::authorization_status;

/// The outcome of a validation to record.
#[derive(Debug, Clone)]
pub struct ValidationOutcome {
    pub id: i64,
    pub status: AuthorizationStatus,
    pub expires: Timestamp,
    pub attempted: String,
    pub attempted_at: Timestamp,
    pub records: Vec<ValidationRecord>,
    pub error: Option<Problem>,
}

impl Store {
    pub async fn get_authorization(&self, id: i64) -> Result<Authorization, Problem> {
        let row =
            sqlx::query(queries::AUTHORIZATION_BY_ID).bind(id).fetch_optional(&self.pool).await.map_err(db_error)?;
        row.map(|r| authorization_from_row(&r, now()))
            .transpose()?
            .ok_or_else(|| Problem::not_found(format!("authorization {id} not found")))
    }

    pub async fn get_order_authorizations(&self, order_id: i64) -> Result<Vec<Authorization>, Problem> {
        let mut answers = self.read_together(&[order_authorizations_read(self.backend(), order_id)]).await?;
        authorizations_from_rows(&answers.swap_remove(0), now())
    }

    /// Valid authorizations of `account_id` for exactly these identifier values (so a wildcard's never serves a
    /// plain name), expiring after `valid_until`, of `profile` (empty: any), newest per identifier.
    pub async fn get_valid_authorizations(
        &self,
        account_id: i64,
        identifiers: &[Identifier],
        valid_until: Timestamp,
        profile: &str,
    ) -> Result<Vec<Authorization>, Problem> {
        let reads = valid_authorization_reads(account_id, identifiers, valid_until, profile);
        let answers = self.read_together(&reads).await?;
        newest_valid_authorizations(&answers, now())
    }

    /// Marks a pending authorization as being validated by `owner` (an ra replica): a fuse against two
    /// validations at once.
    pub async fn set_authorization_processing(
        &self,
        id: i64,
        attempted: &str,
        attempted_at: Timestamp,
        owner: &str,
    ) -> Result<(), Problem> {
        let updated = sqlx::query(
            "UPDATE authorizations SET attempted = $1, attempted_at = $2, attempted_by = $5 WHERE id = $3 AND status = 'pending' AND attempted IS NULL AND expires > $4",
        )
        .bind(attempted)
        .bind(attempted_at)
        .bind(id)
        .bind(now())
        .bind(owner)
        .execute(&self.writer)
        .await
        .map_err(db_error)?
        .rows_affected();
        if updated == 1 {
            return Ok(());
        }
        let current = self.get_authorization(id).await?;
        if current.status == AuthorizationStatus::Pending {
            Err(Problem::new(ErrorKind::Conflict, "a validation of this authorization is already in progress"))
        } else {
            Err(Problem::malformed(format!("authorization is not pending (it is {})", current.status)))
        }
    }

    /// Records a validation's outcome and answers with the authorization as it now is. A repeat of the outcome
    /// already recorded is accepted (an ra retrying after a lost answer); any other outcome of a settled
    /// authorization is `malformed`.
    pub async fn finalize_authorization(&self, outcome: &ValidationOutcome) -> Result<Authorization, Problem> {
        if !matches!(outcome.status, AuthorizationStatus::Valid | AuthorizationStatus::Invalid) {
            return Err(Problem::malformed("an authorization can only be finalized as valid or invalid"));
        }
        let records = serde_json::to_string(&outcome.records).map_err(internal)?;
        let error = outcome.error.as_ref().map(serde_json::to_string).transpose().map_err(internal)?;
        let valid = outcome.status == AuthorizationStatus::Valid;
        // RETURNING: the caller gets what it recorded without a second statement. On SQLite it runs in place, on
        // PostgreSQL as one statement.
        let finalize = Statement::new(queries::FINALIZE_AUTHORIZATION)
            .text(outcome.status.as_str())
            .boolean(valid)
            .int(outcome.expires)
            .text(&outcome.attempted)
            .int(outcome.attempted_at)
            .boolean(valid)
            .int(outcome.attempted_at)
            .text(records)
            .optional_text(error)
            .int(outcome.id);
        let mut answers = self.write_committed(&[finalize]).await?;
        if let Some(row) = answers.pop().and_then(|rows| rows.into_iter().next()) {
            return authorization_from_row(&row, now());
        }
        // Not pending: accepted only as a repeat of the outcome recorded, answered from the same read.
        let row = sqlx::query(queries::AUTHORIZATION_BY_ID)
            .bind(outcome.id)
            .fetch_optional(&self.pool)
            .await
            .map_err(db_error)?
            .ok_or_else(|| Problem::malformed("authorization is not pending"))?;
        let status: String = get(&row, "status")?;
        let attempted: Option<String> = get(&row, "attempted")?;
        let attempted_at: Option<i64> = get(&row, "attempted_at")?;
        let same_outcome = status == outcome.status.as_str()
            && attempted.as_deref() == Some(outcome.attempted.as_str())
            && attempted_at == Some(outcome.attempted_at);
        if !same_outcome {
            return Err(Problem::malformed("authorization is not pending"));
        }
        authorization_from_row(&row, now())
    }

    /// Deactivates a pending or valid, unexpired authorization (RFC 8555 §7.5.2).
    pub async fn deactivate_authorization(&self, id: i64) -> Result<Authorization, Problem> {
        let updated = sqlx::query(
            "UPDATE authorizations SET status = 'deactivated' WHERE id = $1 AND status IN ('pending', 'valid') AND expires > $2",
        )
        .bind(id)
        .bind(now())
        .execute(&self.writer)
        .await
        .map_err(db_error)?
        .rows_affected();
        let authz = self.get_authorization(id).await?;
        if updated == 1 {
            Ok(authz)
        } else {
            Err(Problem::malformed(format!(
                "only pending or valid authorizations can be deactivated, not {}",
                authz.status
            )))
        }
    }
}

/// The read of an order's authorizations, in the order's order.
pub(super) fn order_authorizations_read(backend: Backend, order_id: i64) -> Statement {
    let sql = match backend {
        Backend::Sqlite => queries::ORDER_AUTHORIZATIONS,
        Backend::Postgres => queries::ORDER_AUTHORIZATIONS_POSTGRES,
    };
    Statement::new(sql).int(order_id)
}

pub(super) fn authorizations_from_rows(
    rows: &[impl ReadColumn],
    now: Timestamp,
) -> Result<Vec<Authorization>, Problem> {
    rows.iter().map(|r| authorization_from_row(r, now)).collect()
}

/// The reads of [`Store::get_valid_authorizations`], one per identifier.
pub(super) fn valid_authorization_reads(
    account_id: i64,
    identifiers: &[Identifier],
    valid_until: Timestamp,
    profile: &str,
) -> Vec<Statement> {
    let valid_until = valid_until.max(now());
    let read = |identifier: &Identifier| {
        Statement::new(queries::VALID_AUTHORIZATION)
            .int(account_id)
            .text(identifier.kind.as_str())
            .text(&identifier.value)
            .int(valid_until)
            .text(profile)
            .text(profile)
    };
    identifiers.iter().map(read).collect()
}

/// The authorizations [`valid_authorization_reads`] found, one answer per identifier.
pub(super) fn newest_valid_authorizations(
    answers: &[Vec<impl ReadColumn>],
    now: Timestamp,
) -> Result<Vec<Authorization>, Problem> {
    answers.iter().filter_map(|rows| rows.first()).map(|row| authorization_from_row(row, now)).collect()
}

fn authorization_from_row(row: &impl ReadColumn, now: Timestamp) -> Result<Authorization, Problem> {
    let stored: String = get(row, "status")?;
    let stored =
        AuthorizationStatus::parse(&stored).ok_or_else(|| internal(format!("bad authorization status {stored}")))?;
    let expires: i64 = get(row, "expires")?;
    let status = authorization_status(stored, expires, now);
    let kind: String = get(row, "identifier_type")?;
    let kind = IdentifierType::parse(&kind).ok_or_else(|| internal(format!("bad identifier type {kind}")))?;
    let value: String = get(row, "identifier_value")?;
    let requested = Identifier { kind, value };
    let token: String = get(row, "token")?;
    let attempted: Option<String> = get(row, "attempted")?;
    let validated_at: Option<i64> = get(row, "validated_at")?;
    let records: Option<String> = get(row, "validation_records")?;
    let records: Vec<ValidationRecord> =
        records.map(|r| serde_json::from_str(&r)).transpose().map_err(internal)?.unwrap_or_default();
    let error: Option<String> = get(row, "validation_error")?;
    let error: Option<Problem> = error.map(|e| serde_json::from_str(&e)).transpose().map_err(internal)?;
    let types: String = get(row, "challenge_types")?;
    let offered = types.split(',').filter_map(ChallengeType::parse).enumerate();
    let challenges = offered
        .filter_map(|(index, kind)| {
            let is_attempted = attempted.as_deref() == Some(kind.as_str());
            let (status, validated, error, records) = match stored {
                // A finished authorization shows only the challenge that decided it.
                AuthorizationStatus::Valid if is_attempted => {
                    (ChallengeStatus::Valid, validated_at.unwrap_or(0), None, records.clone())
                }
                AuthorizationStatus::Invalid if is_attempted => {
                    (ChallengeStatus::Invalid, 0, error.clone(), records.clone())
                }
                AuthorizationStatus::Valid | AuthorizationStatus::Invalid => return None,
                AuthorizationStatus::Pending if is_attempted => (ChallengeStatus::Processing, 0, None, Vec::new()),
                _ => (ChallengeStatus::Pending, 0, None, Vec::new()),
            };
            Some(Challenge {
                index: index as i64,
                kind,
                status,
                token: token.clone(),
                validated,
                error,
                validation_records: records,
            })
        })
        .collect();
    Ok(Authorization {
        id: get(row, "id")?,
        account_id: get(row, "account_id")?,
        wildcard: requested.is_wildcard(),
        identifier: requested.without_wildcard(),
        status,
        expires,
        challenges,
        profile: get(row, "profile")?,
        created: get(row, "created")?,
    })
}
