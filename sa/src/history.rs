//! Issuance history the CA's policies read: FQDN-set and per-domain issuance in a window (renewal detection and
//! rate limits), precertificates, revoked certificates by CRL shard, and CRL shard leases.

use quarry_core::clock::Timestamp;
use quarry_core::identifier::fqdn_set_hash;
use quarry_core::{ErrorKind, Identifier, Problem};

use crate::queries;
use crate::store::certificates::reversed_name;
use crate::store::database::{Store, db_error, get};

/// How many due shards one `lease_crl_shard` call tries when other updaters keep winning them.
const LEASE_ATTEMPTS: usize = 8;

/// One entry of a CRL shard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevokedCertificate {
    pub serial: String,
    pub revoked_date: Timestamp,
    pub revoked_reason: i64,
}

/// A precertificate (the ca's linting copy of it) stored before the real one is signed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Precertificate {
    pub serial: String,
    pub account_id: i64,
    pub der: Vec<u8>,
    pub issued: Timestamp,
    pub expires: Timestamp,
    pub issuer_id: i64,
}

impl Store {
    /// When certificates for exactly this set of identifiers were issued since `since`, newest first.
    pub async fn fqdn_set_issuance_times(
        &self,
        identifiers: &[Identifier],
        since: Timestamp,
    ) -> Result<Vec<Timestamp>, Problem> {
        sqlx::query_scalar(queries::FQDN_SET_TIMES)
            .bind(fqdn_set_hash(identifiers.iter().map(|i| i.value.as_str())))
            .bind(since)
            .fetch_all(&self.pool)
            .await
            .map_err(db_error)
    }

    /// How many certificates named `domain` or a name under it, with a notBefore after `since`.
    pub async fn certificates_for_domain(&self, domain: &str, since: Timestamp) -> Result<i64, Problem> {
        let reversed = reversed_name(&domain.to_ascii_lowercase());
        // Names under the domain sort between "com.example." and "com.example/" ('/' follows '.'): a range the
        // (reversed_name, not_before) index answers on both engines, where LIKE would not use it on SQLite.
        sqlx::query_scalar(queries::CERTIFICATES_FOR_DOMAIN)
            .bind(&reversed)
            .bind(format!("{reversed}."))
            .bind(format!("{reversed}/"))
            .bind(since)
            .fetch_one(&self.pool)
            .await
            .map_err(db_error)
    }

    pub async fn get_precertificate(&self, serial: &str) -> Result<Precertificate, Problem> {
        let row = sqlx::query(
            "SELECT serial, account_id, der, issued, expires, issuer_id FROM precertificates WHERE serial = $1",
        )
        .bind(serial.to_ascii_lowercase())
        .fetch_optional(&self.pool)
        .await
        .map_err(db_error)?
        .ok_or_else(|| Problem::not_found(format!("precertificate {serial} not found")))?;
        Ok(Precertificate {
            serial: get(&row, "serial")?,
            account_id: get(&row, "account_id")?,
            der: get(&row, "der")?,
            issued: get(&row, "issued")?,
            expires: get(&row, "expires")?,
            issuer_id: get(&row, "issuer_id")?,
        })
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

    /// Leases the CRL shard of `issuer_id` updated longest ago among those due — not leased at `now`, last updated
    /// before `updated_before`, and either with revocations its CRL lacks or last signed before `stale_before` —
    /// until `leased_until`; `None` when there is none. Two updaters never hold one shard, and updaters that start a
    /// pass at the same moment update each shard once between them.
    pub async fn lease_crl_shard(
        &self,
        issuer_id: i64,
        shard_count: i64,
        now: Timestamp,
        leased_until: Timestamp,
        updated_before: Timestamp,
        stale_before: Timestamp,
    ) -> Result<Option<ShardLease>, Problem> {
        let mut tx = self.begin_write().await?;
        let known: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM crl_shards WHERE issuer_id = $1 AND idx < $2")
            .bind(issuer_id)
            .bind(shard_count)
            .fetch_one(&mut *tx)
            .await
            .map_err(db_error)?;
        // Shard rows are made once per issuer, on its first lease.
        for idx in (known < shard_count).then_some(0..shard_count).into_iter().flatten() {
            sqlx::query(
                "INSERT INTO crl_shards (issuer_id, idx) VALUES ($1, $2) ON CONFLICT (issuer_id, idx) DO NOTHING",
            )
            .bind(issuer_id)
            .bind(idx)
            .execute(&mut *tx)
            .await
            .map_err(db_error)?;
        }
        // Concurrent updaters pick the same oldest shard (PostgreSQL's reads do not lock): the loser of the UPDATE
        // below looks again, so that it goes on to the next due shard instead of ending its pass early.
        for _ in 0..LEASE_ATTEMPTS {
            let candidate: Option<(i64, i64)> = sqlx::query_as(
                "SELECT idx, revocations_pending FROM crl_shards WHERE issuer_id = $1 AND idx < $2 AND leased_until <= $3 AND this_update < $4 AND (this_update < $5 OR revocations_pending > 0) ORDER BY this_update, idx LIMIT 1",
            )
            .bind(issuer_id)
            .bind(shard_count)
            .bind(now)
            .bind(updated_before)
            .bind(stale_before)
            .fetch_optional(&mut *tx)
            .await
            .map_err(db_error)?;
            let Some((idx, revocations_pending)) = candidate else { break };
            // The SELECT's whole condition is checked again in the UPDATE: a racing updater that leased it first
            // wins, and so does one that leased, updated and released it between our SELECT and this UPDATE — the
            // shard is then no longer due, and leasing it again would sign a CRL no newer than the one it has.
            let leased = sqlx::query(
                "UPDATE crl_shards SET leased_until = $1 WHERE issuer_id = $2 AND idx = $3 AND leased_until <= $4 AND this_update < $5 AND (this_update < $6 OR revocations_pending > 0)",
            )
            .bind(leased_until)
            .bind(issuer_id)
            .bind(idx)
            .bind(now)
            .bind(updated_before)
            .bind(stale_before)
            .execute(&mut *tx)
            .await
            .map_err(db_error)?
            .rows_affected();
            if leased == 1 {
                tx.commit().await.map_err(db_error)?;
                return Ok(Some(ShardLease { idx, revocations_pending }));
            }
        }
        tx.commit().await.map_err(db_error)?;
        Ok(None)
    }

    /// Records a shard's new CRL and releases its lease; `revocations_seen` is the count its lease reported, all of
    /// which the CRL holds (revocations filed since still count).
    pub async fn update_crl_shard(
        &self,
        issuer_id: i64,
        idx: i64,
        this_update: Timestamp,
        next_update: Timestamp,
        der: &[u8],
        revocations_seen: i64,
    ) -> Result<(), Problem> {
        // Only a newer CRL replaces the stored one: an updater whose lease lapsed while it worked must not put back an
        // older CRL (nor take away revocations it did not see) after another updater stored a newer one.
        let updated = sqlx::query(
            "UPDATE crl_shards SET this_update = $1, next_update = $2, leased_until = 0, der = $3, revocations_pending = CASE WHEN revocations_pending > $4 THEN revocations_pending - $4 ELSE 0 END WHERE issuer_id = $5 AND idx = $6 AND this_update < $1",
        )
        .bind(this_update)
        .bind(next_update)
        .bind(der)
        .bind(revocations_seen.max(0))
        .bind(issuer_id)
        .bind(idx)
        .execute(&self.pool)
        .await
        .map_err(db_error)?
        .rows_affected();
        if updated == 1 {
            return Ok(());
        }
        let exists: Option<i64> = sqlx::query_scalar("SELECT idx FROM crl_shards WHERE issuer_id = $1 AND idx = $2")
            .bind(issuer_id)
            .bind(idx)
            .fetch_optional(&self.pool)
            .await
            .map_err(db_error)?;
        match exists {
            Some(_) => Err(Problem::new(
                ErrorKind::Conflict,
                format!("CRL shard {issuer_id}/{idx} already has a CRL as new as this one"),
            )),
            None => Err(Problem::not_found(format!("CRL shard {issuer_id}/{idx} not found"))),
        }
    }

    /// The latest CRL of a shard with its thisUpdate and nextUpdate.
    pub async fn get_crl(&self, issuer_id: i64, idx: i64) -> Result<StoredCrl, Problem> {
        let row = sqlx::query(
            "SELECT der, this_update, next_update FROM crl_shards WHERE issuer_id = $1 AND idx = $2 AND der IS NOT NULL",
        )
        .bind(issuer_id)
        .bind(idx)
        .fetch_optional(&self.pool)
        .await
        .map_err(db_error)?
        .ok_or_else(|| Problem::not_found(format!("no CRL for shard {issuer_id}/{idx} yet")))?;
        Ok(StoredCrl {
            der: get(&row, "der")?,
            this_update: get(&row, "this_update")?,
            next_update: get(&row, "next_update")?,
        })
    }
}

/// A leased CRL shard, and how many revocations were filed under it since its CRL was last signed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShardLease {
    pub idx: i64,
    pub revocations_pending: i64,
}

/// A shard's latest signed CRL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredCrl {
    pub der: Vec<u8>,
    pub this_update: Timestamp,
    pub next_update: Timestamp,
}
