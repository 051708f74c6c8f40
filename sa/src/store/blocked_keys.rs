//! Blocked keys: keys refused for future issuance, and the certificates by key that the bad-key revoker revokes.

use quarry_core::Problem;
use quarry_core::clock::{Timestamp, now};

use super::database::Store;
use super::errors::db_error;
use super::statements::Statement;

impl Store {
    /// Blocked keys whose certificates have not all been revoked yet, oldest first.
    pub async fn unchecked_blocked_keys(&self, limit: i64) -> Result<Vec<Vec<u8>>, Problem> {
        sqlx::query_scalar("SELECT key_hash FROM blocked_keys WHERE certificates_checked = 0 ORDER BY added LIMIT $1")
            .bind(limit.clamp(1, 1_000))
            .fetch_all(&self.pool)
            .await
            .map_err(db_error)
    }

    /// The serials of the certificates (and precertificates) with this key that expire after `now`.
    pub async fn serials_by_key(&self, key_hash: &[u8], now: Timestamp) -> Result<Vec<String>, Problem> {
        sqlx::query_scalar(
            "SELECT serial FROM key_hash_to_serial WHERE key_hash = $1 AND cert_not_after > $2 ORDER BY serial",
        )
        .bind(key_hash)
        .bind(now)
        .fetch_all(&self.pool)
        .await
        .map_err(db_error)
    }

    /// Records that every certificate of a blocked key has been revoked, if it was blocked before `added_before`.
    pub async fn mark_blocked_key_checked(&self, key_hash: &[u8], added_before: Timestamp) -> Result<(), Problem> {
        sqlx::query("UPDATE blocked_keys SET certificates_checked = 1 WHERE key_hash = $1 AND added < $2")
            .bind(key_hash)
            .bind(added_before)
            .execute(&self.writer)
            .await
            .map_err(db_error)?;
        Ok(())
    }

    /// Blocks a key for future issuance; blocking it twice is harmless.
    pub async fn add_blocked_key(&self, key_hash: &[u8], source: &str, comment: &str) -> Result<(), Problem> {
        sqlx::query("INSERT INTO blocked_keys (key_hash, added, source, comment) VALUES ($1, $2, $3, $4) ON CONFLICT (key_hash) DO NOTHING")
            .bind(key_hash)
            .bind(now())
            .bind(source)
            .bind(comment)
            .execute(&self.writer)
            .await
            .map_err(db_error)?;
        Ok(())
    }

    pub async fn key_blocked(&self, key_hash: &[u8]) -> Result<bool, Problem> {
        let answers = self.read_together(&[key_blocked_read(key_hash)]).await?;
        Ok(!answers[0].is_empty())
    }
}

/// The read of whether the key with hash `key_hash` is blocked: a row when it is.
pub(super) fn key_blocked_read(key_hash: &[u8]) -> Statement {
    Statement::new("SELECT added FROM blocked_keys WHERE key_hash = $1").bytes(key_hash)
}
