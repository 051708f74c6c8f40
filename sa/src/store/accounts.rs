//! Accounts (RFC 8555 §7.3): registration, contact and key changes, deactivation, and lookups by id and by key.

use quarry_core::clock::now;
use quarry_core::model::{Account, AccountStatus};
use quarry_core::{ErrorKind, Problem};

use super::database::Store;
use super::errors::{db_error, internal};
use super::rows::{ReadColumn, get};
use crate::queries;

impl Store {
    /// Creates an account. With `exclusive_binding`, its external account binding key claims the account: a second
    /// account with the same key is `unauthorized` (the database's unique claim decides between concurrent ones).
    pub async fn new_account(&self, account: &Account, exclusive_binding: bool) -> Result<Account, Problem> {
        let jwk = quarry_jose::Jwk::from_slice(&account.jwk)
            .map_err(|e| Problem::new(ErrorKind::BadPublicKey, e.to_string()))?;
        let contact = serde_json::to_string(&account.contact).map_err(internal)?;
        let created_at = if account.created_at == 0 { now() } else { account.created_at };
        let key_hash = jwk.thumbprint_sha256().to_vec();
        let claim =
            (exclusive_binding && !account.external_account_id.is_empty()).then_some(&account.external_account_id);
        let inserted = sqlx::query_scalar(
            "INSERT INTO accounts (jwk, key_hash, status, contact, terms_of_service_agreed, created_at, external_account_id, external_account_claim) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING id",
        )
        .bind(jwk.canonical_json().into_bytes())
        .bind(&key_hash)
        .bind(account.status.as_str())
        .bind(contact)
        .bind(i64::from(account.terms_of_service_agreed))
        .bind(created_at)
        .bind(&account.external_account_id)
        .bind(claim)
        .fetch_one(&self.writer)
        .await
        .map_err(db_error);
        let id: i64 = match inserted {
            Ok(id) => id,
            // The account key's own account (a retried creation) is `duplicate`, and its caller reads it; otherwise
            // the binding key's claim was taken.
            Err(problem) if problem.kind == ErrorKind::Duplicate && claim.is_some() => {
                let existing: Option<i64> = sqlx::query_scalar("SELECT id FROM accounts WHERE key_hash = $1")
                    .bind(&key_hash)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(db_error)?;
                if existing.is_some() {
                    return Err(problem);
                }
                return Err(Problem::unauthorized(format!(
                    "external account binding key {:?} is already bound to another account",
                    account.external_account_id
                )));
            }
            Err(problem) => return Err(problem),
        };
        self.get_account(id).await
    }

    /// Replaces the contacts of a valid account.
    pub async fn update_account_contact(&self, id: i64, contact: &[String]) -> Result<Account, Problem> {
        let contact = serde_json::to_string(contact).map_err(internal)?;
        let updated = sqlx::query("UPDATE accounts SET contact = $1 WHERE id = $2 AND status = 'valid'")
            .bind(contact)
            .bind(id)
            .execute(&self.writer)
            .await
            .map_err(db_error)?
            .rows_affected();
        self.account_after_update(id, updated).await
    }

    /// Replaces the key of a valid account; a key another account holds is a `duplicate`.
    pub async fn update_account_key(&self, id: i64, jwk: &[u8]) -> Result<Account, Problem> {
        let jwk =
            quarry_jose::Jwk::from_slice(jwk).map_err(|e| Problem::new(ErrorKind::BadPublicKey, e.to_string()))?;
        let updated = sqlx::query("UPDATE accounts SET jwk = $1, key_hash = $2 WHERE id = $3 AND status = 'valid'")
            .bind(jwk.canonical_json().into_bytes())
            .bind(jwk.thumbprint_sha256().to_vec())
            .bind(id)
            .execute(&self.writer)
            .await
            .map_err(db_error)?
            .rows_affected();
        self.account_after_update(id, updated).await
    }

    /// Deactivates a valid account for good (RFC 8555 §7.3.6).
    pub async fn deactivate_account(&self, id: i64) -> Result<Account, Problem> {
        let updated = sqlx::query("UPDATE accounts SET status = 'deactivated' WHERE id = $1 AND status = 'valid'")
            .bind(id)
            .execute(&self.writer)
            .await
            .map_err(db_error)?
            .rows_affected();
        self.account_after_update(id, updated).await
    }

    async fn account_after_update(&self, id: i64, updated: u64) -> Result<Account, Problem> {
        let account = self.get_account(id).await?;
        if updated == 1 {
            Ok(account)
        } else {
            Err(Problem::unauthorized(format!("account is not valid, has status {:?}", account.status.as_str())))
        }
    }

    pub async fn get_account(&self, id: i64) -> Result<Account, Problem> {
        let row = sqlx::query("SELECT id, jwk, status, contact, terms_of_service_agreed, created_at, external_account_id FROM accounts WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(db_error)?;
        row.map(|r| account_from_row(&r))
            .transpose()?
            .ok_or_else(|| Problem::not_found(format!("account {id} not found")))
    }

    pub async fn get_account_by_key(&self, jwk: &[u8]) -> Result<Account, Problem> {
        let jwk = quarry_jose::Jwk::from_slice(jwk).map_err(|e| Problem::malformed(e.to_string()))?;
        let row = sqlx::query(queries::ACCOUNT_BY_KEY)
            .bind(jwk.thumbprint_sha256().to_vec())
            .fetch_optional(&self.pool)
            .await
            .map_err(db_error)?;
        row.map(|r| account_from_row(&r)).transpose()?.ok_or_else(|| Problem::not_found("no account for this key"))
    }
}

fn account_from_row(row: &impl ReadColumn) -> Result<Account, Problem> {
    let status: String = get(row, "status")?;
    let contact: String = get(row, "contact")?;
    Ok(Account {
        id: get(row, "id")?,
        jwk: get(row, "jwk")?,
        status: AccountStatus::parse(&status).ok_or_else(|| internal(format!("bad account status {status}")))?,
        contact: serde_json::from_str(&contact).map_err(internal)?,
        terms_of_service_agreed: get::<i64>(row, "terms_of_service_agreed")? != 0,
        created_at: get(row, "created_at")?,
        external_account_id: get(row, "external_account_id")?,
    })
}
