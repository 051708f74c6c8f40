//! Work a crash interrupted: validations begun and orders processing longer ago than their deadlines, or whose ra
//! replica stopped sending heartbeats, and the claims through which one ra replica takes each over. A claim is a
//! conditional update of the row's timestamp and owner, so of several sweeping replicas exactly one wins, and the
//! row's deadline starts again for whatever that one does.

use quarry_core::Problem;
use quarry_core::clock::{Timestamp, now};

use super::database::Store;
use super::errors::db_error;

/// One row left mid-way: its id and when its validation began, or its processing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StuckItem {
    pub id: i64,
    pub since: Timestamp,
}

/// Which rows count as stuck: begun before `before`, or before `orphaned_before` by an owner whose heartbeat has
/// lapsed (0: that is not asked).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StuckSince {
    pub before: Timestamp,
    pub orphaned_before: Timestamp,
}

impl Store {
    /// Pending, unexpired authorizations whose validation is stuck, oldest first.
    pub async fn stuck_authorizations(&self, since: StuckSince, limit: i64) -> Result<Vec<StuckItem>, Problem> {
        self.stuck(
            "SELECT id, attempted_at FROM authorizations a WHERE status = 'pending' AND attempted IS NOT NULL AND expires > $1 AND (attempted_at <= $2 OR (attempted_at <= $3 AND NOT EXISTS (SELECT 1 FROM ra_heartbeats h WHERE h.instance = a.attempted_by AND h.alive_until > $1))) ORDER BY attempted_at LIMIT $4",
            since,
            limit,
        )
        .await
    }

    /// Unexpired orders stuck processing, with neither a certificate nor an error, oldest first.
    pub async fn stuck_orders(&self, since: StuckSince, limit: i64) -> Result<Vec<StuckItem>, Problem> {
        self.stuck(
            "SELECT id, began_processing FROM orders o WHERE began_processing != 0 AND certificate_serial = '' AND error IS NULL AND expires > $1 AND (began_processing <= $2 OR (began_processing <= $3 AND NOT EXISTS (SELECT 1 FROM ra_heartbeats h WHERE h.instance = o.processing_by AND h.alive_until > $1))) ORDER BY began_processing LIMIT $4",
            since,
            limit,
        )
        .await
    }

    /// The (id, since) rows `query` finds, binding now, `since`'s two bounds and `limit` as $1 to $4.
    async fn stuck(&self, query: &'static str, since: StuckSince, limit: i64) -> Result<Vec<StuckItem>, Problem> {
        let rows: Vec<(i64, i64)> = sqlx::query_as(query)
            .bind(now())
            .bind(since.before)
            .bind(since.orphaned_before)
            .bind(limit)
            .fetch_all(&self.pool)
            .await
            .map_err(db_error)?;
        Ok(rows.into_iter().map(|(id, since)| StuckItem { id, since }).collect())
    }

    /// Takes the stuck validation of authorization `id` over for `owner`, if it is still the one that began at
    /// `since`: its attempt restarts now. `None` when another caller took it first (or it finished); else how often
    /// it was taken over before.
    pub async fn claim_stuck_authorization(
        &self,
        id: i64,
        since: Timestamp,
        owner: &str,
    ) -> Result<Option<i64>, Problem> {
        let mut tx = self.begin_write().await?;
        let updated = sqlx::query(
            "UPDATE authorizations SET attempted_at = $1, attempted_by = $4, recoveries = recoveries + 1 WHERE id = $2 AND attempted_at = $3 AND status = 'pending' AND attempted IS NOT NULL",
        )
        .bind(now().max(since + 1))
        .bind(id)
        .bind(since)
        .bind(owner)
        .execute(&mut *tx)
        .await
        .map_err(db_error)?
        .rows_affected();
        if updated != 1 {
            return Ok(None);
        }
        let recoveries: i64 = sqlx::query_scalar("SELECT recoveries FROM authorizations WHERE id = $1")
            .bind(id)
            .fetch_one(&mut *tx)
            .await
            .map_err(db_error)?;
        tx.commit().await.map_err(db_error)?;
        Ok(Some(recoveries - 1))
    }

    /// Takes the stuck order `id` over for `owner`, if it is still processing since `since`: its processing
    /// restarts now. `None` when another caller took it first (or it finished); else the serial of the
    /// precertificate stored for it, if one was.
    pub async fn claim_stuck_order(
        &self,
        id: i64,
        since: Timestamp,
        owner: &str,
    ) -> Result<Option<Option<String>>, Problem> {
        let updated = sqlx::query(
            "UPDATE orders SET began_processing = $1, processing_by = $4 WHERE id = $2 AND began_processing = $3 AND certificate_serial = '' AND error IS NULL",
        )
        .bind(now().max(since + 1))
        .bind(id)
        .bind(since)
        .bind(owner)
        .execute(&self.writer)
        .await
        .map_err(db_error)?
        .rows_affected();
        if updated != 1 {
            return Ok(None);
        }
        self.order_precertificate(id).await.map(Some)
    }

    /// The serial of the newest precertificate stored for order `id`, if one was.
    pub async fn order_precertificate(&self, id: i64) -> Result<Option<String>, Problem> {
        sqlx::query_scalar(
            "SELECT p.serial FROM serials s JOIN precertificates p ON p.serial = s.serial WHERE s.order_id = $1 ORDER BY s.created DESC LIMIT 1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await
        .map_err(db_error)
    }

    /// Records that ra replica `instance` is alive for `ttl_secs` more, by this database's clock; 0 removes it (a
    /// replica stopping: its leftover work is taken over at once).
    pub async fn heartbeat(&self, instance: &str, ttl_secs: i64) -> Result<(), Problem> {
        if ttl_secs <= 0 {
            sqlx::query("DELETE FROM ra_heartbeats WHERE instance = $1")
                .bind(instance)
                .execute(&self.writer)
                .await
                .map_err(db_error)?;
            return Ok(());
        }
        let now = now();
        sqlx::query(
            "INSERT INTO ra_heartbeats (instance, alive_until) VALUES ($1, $2) ON CONFLICT (instance) DO UPDATE SET alive_until = excluded.alive_until",
        )
        .bind(instance)
        .bind(now + ttl_secs)
        .execute(&self.writer)
        .await
        .map_err(db_error)?;
        // Replicas long gone are forgotten (their work was taken over when their heartbeat lapsed).
        sqlx::query("DELETE FROM ra_heartbeats WHERE alive_until < $1")
            .bind(now - 86_400)
            .execute(&self.writer)
            .await
            .map_err(db_error)?;
        Ok(())
    }
}
