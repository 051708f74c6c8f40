//! CRL shards: the lease through which one crl-updater signs a due shard, the CRL it stores on release, and the
//! latest CRL of a shard. (Revocations mark their shard due: see `revocation`.)

use quarry_core::clock::Timestamp;
use quarry_core::{ErrorKind, Problem};

use super::database::Store;
use super::errors::db_error;
use super::rows::get;

/// How many due shards one `lease_crl_shard` call tries when other updaters keep winning them.
const LEASE_ATTEMPTS: usize = 8;

impl Store {
    /// Whether a crl-updater that counts `shard_count` shards may lease from this store: only at the count this
    /// store files revocations under. At another count its shards are not this store's (nor, with the ca agreeing
    /// with the sa, those the certificates name), and its CRLs would leave revocations out: the deployment's files
    /// have drifted apart, which the operator must mend, so the refusal names both keys.
    pub fn check_crl_shard_count(&self, shard_count: i64) -> Result<(), Problem> {
        let own = self.crl_shards();
        if shard_count == own {
            return Ok(());
        }
        Err(Problem::new(
            ErrorKind::Misconfigured,
            format!(
                "CRL shard counts differ: sa crl_shards {own}, crl-updater shards {shard_count}; the sa's and the \
                 ca's crl_shards and the crl-updater's shards must be equal (quarry_core::crl; `quarry env check` \
                 compares them)"
            ),
        ))
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
        .execute(&self.writer)
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
