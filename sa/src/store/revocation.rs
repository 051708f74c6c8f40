//! Revocation: a certificate's status turned revoked (or raised to keyCompromise), filed under its issuer's CRL shard
//! and counted against that shard's CRL in one transaction, and the entries of one shard that its CRL lists.

use quarry_core::clock::Timestamp;
use quarry_core::{ErrorKind, Problem};

use super::database::Store;
use super::errors::db_error;
use super::rows::get;
use crate::queries;

impl Store {
    /// Marks a good certificate revoked and files it under its issuer's CRL shard, in one transaction; a second
    /// revocation is `alreadyRevoked`.
    pub async fn revoke_certificate(&self, serial: &str, reason: i64, date: Timestamp) -> Result<(), Problem> {
        let serial = serial.to_ascii_lowercase();
        let mut tx = self.begin_write().await?;
        let updated = sqlx::query(
            "UPDATE certificate_status SET status = 'revoked', revoked_reason = $1, revoked_date = $2 WHERE serial = $3 AND status = 'good'",
        )
        .bind(reason)
        .bind(date)
        .bind(&serial)
        .execute(&mut *tx)
        .await
        .map_err(db_error)?
        .rows_affected();
        if updated == 1 {
            let (issuer_id, not_after): (i64, i64) =
                sqlx::query_as("SELECT issuer_id, not_after FROM certificate_status WHERE serial = $1")
                    .bind(&serial)
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(db_error)?;
            sqlx::query(
                "INSERT INTO revoked_certificates (issuer_id, shard_idx, serial, revoked_date, revoked_reason, not_after_hour) VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(issuer_id)
            .bind(self.crl_shard(&serial))
            .bind(&serial)
            .bind(date)
            .bind(reason)
            .bind(not_after - not_after.rem_euclid(3_600))
            .execute(&mut *tx)
            .await
            .map_err(db_error)?;
            self.crl_shard_changed(&mut tx, issuer_id, &serial).await?;
            return tx.commit().await.map_err(db_error);
        }
        drop(tx);
        let (status, ..) = self.get_certificate_status(&serial).await?;
        Err(Problem::new(ErrorKind::AlreadyRevoked, format!("certificate {serial} is already {status}")))
    }

    /// Records in `tx` that the CRL of `serial`'s shard is out of date (a shard without a row yet has never been
    /// signed: due anyway).
    async fn crl_shard_changed(
        &self,
        tx: &mut super::pool::DbTransaction,
        issuer_id: i64,
        serial: &str,
    ) -> Result<(), Problem> {
        sqlx::query(
            "UPDATE crl_shards SET revocations_pending = revocations_pending + 1 WHERE issuer_id = $1 AND idx = $2",
        )
        .bind(issuer_id)
        .bind(self.crl_shard(serial))
        .execute(&mut **tx)
        .await
        .map_err(db_error)?;
        Ok(())
    }

    /// Revokes a certificate for key compromise: a good one now, at `date`; one revoked for another reason has its
    /// reason raised to keyCompromise, keeping its date (as Boulder does: the revocation happened then, and CRL
    /// consumers learn that the key is compromised).
    pub async fn revoke_for_key_compromise(&self, serial: &str, date: Timestamp) -> Result<KeyCompromise, Problem> {
        match self.revoke_certificate(serial, KEY_COMPROMISE, date).await {
            Ok(()) => return Ok(KeyCompromise::Revoked),
            Err(problem) if problem.kind == ErrorKind::AlreadyRevoked => {}
            Err(problem) => return Err(problem),
        }
        let serial = serial.to_ascii_lowercase();
        let mut tx = self.begin_write().await?;
        let upgraded = sqlx::query(
            "UPDATE certificate_status SET revoked_reason = $1 WHERE serial = $2 AND status = 'revoked' AND revoked_reason != $1",
        )
        .bind(KEY_COMPROMISE)
        .bind(&serial)
        .execute(&mut *tx)
        .await
        .map_err(db_error)?
        .rows_affected();
        if upgraded == 0 {
            return Ok(KeyCompromise::Already);
        }
        let issuer_id: i64 = sqlx::query_scalar("SELECT issuer_id FROM certificate_status WHERE serial = $1")
            .bind(&serial)
            .fetch_one(&mut *tx)
            .await
            .map_err(db_error)?;
        sqlx::query("UPDATE revoked_certificates SET revoked_reason = $1 WHERE serial = $2")
            .bind(KEY_COMPROMISE)
            .bind(&serial)
            .execute(&mut *tx)
            .await
            .map_err(db_error)?;
        self.crl_shard_changed(&mut tx, issuer_id, &serial).await?;
        tx.commit().await.map_err(db_error)?;
        Ok(KeyCompromise::Upgraded)
    }

    /// The revoked certificates of one CRL shard that have not expired before `expires_after` (hour granularity),
    /// by serial.
    pub async fn revoked_certificates(
        &self,
        issuer_id: i64,
        shard: i64,
        expires_after: Timestamp,
    ) -> Result<Vec<RevokedCertificate>, Problem> {
        let rows = sqlx::query(queries::REVOKED_BY_SHARD)
            .bind(issuer_id)
            .bind(shard)
            .bind(expires_after - expires_after.rem_euclid(3_600))
            .fetch_all(&self.pool)
            .await
            .map_err(db_error)?;
        let mut revoked = rows
            .iter()
            .map(|row| {
                Ok(RevokedCertificate {
                    serial: get(row, "serial")?,
                    revoked_date: get(row, "revoked_date")?,
                    revoked_reason: get(row, "revoked_reason")?,
                })
            })
            .collect::<Result<Vec<_>, Problem>>()?;
        // Sorted here rather than by the database, so that the query reads the covering index and nothing else.
        revoked.sort_by(|a, b| a.serial.cmp(&b.serial));
        Ok(revoked)
    }
}

/// RFC 5280's keyCompromise reason code.
const KEY_COMPROMISE: i64 = 1;

/// What [`Store::revoke_for_key_compromise`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyCompromise {
    /// It was good and is now revoked.
    Revoked,
    /// It was revoked for another reason, now for key compromise.
    Upgraded,
    /// It was revoked for key compromise already.
    Already,
}

/// One entry of a CRL shard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevokedCertificate {
    pub serial: String,
    pub revoked_date: Timestamp,
    pub revoked_reason: i64,
}
