//! Operator and policy controls kept in the database: identifiers paused for an account (Boulder's zombie-client
//! pausing) and rate-limit overrides.

use quarry_core::clock::Timestamp;
use quarry_core::{Identifier, IdentifierType, Problem};

use super::database::Store;
use super::errors::{db_error, internal};
use super::rows::get;
use super::statements::{Statement, found};

/// A rate limit raised (or lowered) for one bucket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimitOverride {
    /// The limit's name, e.g. `CertificatesPerDomain`.
    pub limit_name: String,
    /// The bucket it applies to, e.g. a registered domain or an account id.
    pub bucket_key: String,
    pub count: i64,
    pub period_secs: i64,
    pub burst: i64,
    pub comment: String,
    pub enabled: bool,
}

impl Store {
    /// Pauses issuance for `identifiers` on `account_id` (again, if they were unpaused).
    pub async fn pause_identifiers(
        &self,
        account_id: i64,
        identifiers: &[Identifier],
        at: Timestamp,
    ) -> Result<(), Problem> {
        let mut tx = self.begin_write().await?;
        for identifier in identifiers {
            sqlx::query(
                "INSERT INTO paused_identifiers (account_id, identifier_type, identifier_value, paused_at, unpaused_at) VALUES ($1, $2, $3, $4, 0) ON CONFLICT (account_id, identifier_type, identifier_value) DO UPDATE SET paused_at = excluded.paused_at, unpaused_at = 0",
            )
            .bind(account_id)
            .bind(identifier.kind.as_str())
            .bind(&identifier.value)
            .bind(at)
            .execute(&mut *tx)
            .await
            .map_err(db_error)?;
        }
        tx.commit().await.map_err(db_error)
    }

    /// Which of `identifiers` are paused for `account_id`.
    pub async fn paused_identifiers(
        &self,
        account_id: i64,
        identifiers: &[Identifier],
    ) -> Result<Vec<Identifier>, Problem> {
        let mut answers = self.read_together(&[Statement::finds_rows(&paused_reads(account_id, identifiers))?]).await?;
        Ok(paused_among(identifiers, &found(&answers.pop().unwrap_or_default(), identifiers.len())?))
    }

    /// Every identifier paused for `account_id`.
    pub async fn account_paused_identifiers(&self, account_id: i64) -> Result<Vec<Identifier>, Problem> {
        let rows = sqlx::query(
            "SELECT identifier_type, identifier_value FROM paused_identifiers WHERE account_id = $1 AND unpaused_at = 0 ORDER BY identifier_value",
        )
        .bind(account_id)
        .fetch_all(&self.pool)
        .await
        .map_err(db_error)?;
        rows.iter()
            .map(|row| {
                let kind: String = get(row, "identifier_type")?;
                let kind =
                    IdentifierType::parse(&kind).ok_or_else(|| internal(format!("bad identifier type {kind}")))?;
                Ok(Identifier { kind, value: get(row, "identifier_value")? })
            })
            .collect()
    }

    /// Unpauses everything paused for `account_id`; returns how many identifiers were unpaused.
    pub async fn unpause_account(&self, account_id: i64, at: Timestamp) -> Result<u64, Problem> {
        let unpaused =
            sqlx::query("UPDATE paused_identifiers SET unpaused_at = $1 WHERE account_id = $2 AND unpaused_at = 0")
                .bind(at.max(1))
                .bind(account_id)
                .execute(&self.writer)
                .await
                .map_err(db_error)?
                .rows_affected();
        Ok(unpaused)
    }

    /// Adds or replaces the override of one bucket.
    pub async fn set_rate_limit_override(&self, o: &RateLimitOverride, at: Timestamp) -> Result<(), Problem> {
        sqlx::query(
            "INSERT INTO rate_limit_overrides (limit_name, bucket_key, count, period_secs, burst, comment, enabled, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (limit_name, bucket_key) DO UPDATE SET count = excluded.count, period_secs = excluded.period_secs, burst = excluded.burst, comment = excluded.comment, enabled = excluded.enabled, updated_at = excluded.updated_at",
        )
        .bind(&o.limit_name)
        .bind(&o.bucket_key)
        .bind(o.count)
        .bind(o.period_secs)
        .bind(o.burst)
        .bind(&o.comment)
        .bind(i64::from(o.enabled))
        .bind(at)
        .execute(&self.writer)
        .await
        .map_err(db_error)?;
        Ok(())
    }

    /// The enabled override of one bucket, if any.
    pub async fn rate_limit_override(
        &self,
        limit_name: &str,
        bucket_key: &str,
    ) -> Result<Option<RateLimitOverride>, Problem> {
        let row = sqlx::query(
            "SELECT limit_name, bucket_key, count, period_secs, burst, comment, enabled FROM rate_limit_overrides WHERE limit_name = $1 AND bucket_key = $2 AND enabled = 1",
        )
        .bind(limit_name)
        .bind(bucket_key)
        .fetch_optional(&self.pool)
        .await
        .map_err(db_error)?;
        row.map(|row| {
            Ok(RateLimitOverride {
                limit_name: get(&row, "limit_name")?,
                bucket_key: get(&row, "bucket_key")?,
                count: get(&row, "count")?,
                period_secs: get(&row, "period_secs")?,
                burst: get(&row, "burst")?,
                comment: get(&row, "comment")?,
                enabled: get::<i64>(&row, "enabled")? != 0,
            })
        })
        .transpose()
    }

    /// Every enabled override.
    pub async fn enabled_rate_limit_overrides(&self) -> Result<Vec<RateLimitOverride>, Problem> {
        let rows = sqlx::query(
            "SELECT limit_name, bucket_key, count, period_secs, burst, comment, enabled FROM rate_limit_overrides WHERE enabled = 1 ORDER BY limit_name, bucket_key",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(db_error)?;
        rows.iter()
            .map(|row| {
                Ok(RateLimitOverride {
                    limit_name: get(row, "limit_name")?,
                    bucket_key: get(row, "bucket_key")?,
                    count: get(row, "count")?,
                    period_secs: get(row, "period_secs")?,
                    burst: get(row, "burst")?,
                    comment: get(row, "comment")?,
                    enabled: get::<i64>(row, "enabled")? != 0,
                })
            })
            .collect()
    }

    /// Disables an override (kept for the record); `notFound` when no enabled one exists.
    pub async fn disable_rate_limit_override(
        &self,
        limit_name: &str,
        bucket_key: &str,
        at: Timestamp,
    ) -> Result<(), Problem> {
        let updated = sqlx::query(
            "UPDATE rate_limit_overrides SET enabled = 0, updated_at = $1 WHERE limit_name = $2 AND bucket_key = $3 AND enabled = 1",
        )
        .bind(at)
        .bind(limit_name)
        .bind(bucket_key)
        .execute(&self.writer)
        .await
        .map_err(db_error)?
        .rows_affected();
        if updated == 1 {
            Ok(())
        } else {
            Err(Problem::not_found(format!("no enabled override of {limit_name} for {bucket_key}")))
        }
    }
}

/// The reads of which of `identifiers` are paused for `account_id`, one per identifier.
pub(super) fn paused_reads(account_id: i64, identifiers: &[Identifier]) -> Vec<Statement> {
    let read = |identifier: &Identifier| {
        Statement::new(
            "SELECT paused_at FROM paused_identifiers WHERE account_id = $1 AND identifier_type = $2 AND identifier_value = $3 AND unpaused_at = 0",
        )
        .int(account_id)
        .text(identifier.kind.as_str())
        .text(&identifier.value)
    };
    identifiers.iter().map(read).collect()
}

/// The identifiers [`paused_reads`] found paused: `found` says, per identifier, whether its read found a row.
pub(super) fn paused_among(identifiers: &[Identifier], found: &[bool]) -> Vec<Identifier> {
    identifiers.iter().zip(found).filter(|(_, found)| **found).map(|(identifier, _)| identifier.clone()).collect()
}
