//! Renewal-information answers a client test suite chose for its certificates (Pebble's `set-renewal-info`), for
//! `quarry dev` only; kept in the database so that every wfe replica serves the same answer.

use quarry_core::Problem;
use quarry_core::clock::Timestamp;

use super::database::Store;
use super::errors::db_error;
use super::rows::get;

/// A renewal-information answer stored for one certificate (quarry dev only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenewalInfoOverride {
    /// Served verbatim as the body of the certificate's renewal-info resource: any text, malformed JSON included,
    /// so that a suite can test how its client copes.
    pub response: String,
    /// When it was stored.
    pub set_at: Timestamp,
}

impl Store {
    /// Stores `response` as the renewal-information answer of the certificate `serial` (replacing an earlier one);
    /// an empty `response` removes it, as Pebble reads an empty answer as none. `notFound` when no certificate with
    /// that serial was stored: an override only ever stands for a certificate the wfe could otherwise answer for.
    pub async fn set_renewal_info_override(&self, serial: &str, response: &str, at: Timestamp) -> Result<(), Problem> {
        let serial = serial.to_ascii_lowercase();
        if response.is_empty() {
            sqlx::query("DELETE FROM renewal_info_overrides WHERE serial = $1")
                .bind(&serial)
                .execute(&self.writer)
                .await
                .map_err(db_error)?;
            return Ok(());
        }
        // One statement, so that the certificate's existence and the write cannot be separated by another writer.
        let stored = sqlx::query(
            "INSERT INTO renewal_info_overrides (serial, response, set_at) SELECT serial, $2, $3 FROM certificates WHERE serial = $1 ON CONFLICT (serial) DO UPDATE SET response = excluded.response, set_at = excluded.set_at",
        )
        .bind(&serial)
        .bind(response)
        .bind(at)
        .execute(&self.writer)
        .await
        .map_err(db_error)?
        .rows_affected();
        if stored == 0 {
            return Err(Problem::not_found(format!("no certificate with serial {serial} was issued here")));
        }
        Ok(())
    }

    /// The renewal-information answer stored for the certificate `serial`, and when it was stored; `notFound` when
    /// there is none.
    pub async fn renewal_info_override(&self, serial: &str) -> Result<RenewalInfoOverride, Problem> {
        let row = sqlx::query("SELECT response, set_at FROM renewal_info_overrides WHERE serial = $1")
            .bind(serial.to_ascii_lowercase())
            .fetch_optional(&self.pool)
            .await
            .map_err(db_error)?
            .ok_or_else(|| Problem::not_found("no renewal-information override for this certificate"))?;
        Ok(RenewalInfoOverride { response: get(&row, "response")?, set_at: get(&row, "set_at")? })
    }
}
