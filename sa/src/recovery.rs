//! Work a crash interrupted: validations begun and orders processing longer ago than their deadlines, and the
//! claims through which one ra replica takes each over. A claim is a conditional update of the row's timestamp, so
//! of several sweeping replicas exactly one wins, and the row's deadline starts again for whatever that one does.

use quarry_core::Problem;
use quarry_core::clock::{Timestamp, now};

use crate::store::{Store, db_error};

/// One row left mid-way: its id and when its validation began, or its processing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StuckItem {
    pub id: i64,
    pub since: Timestamp,
}

impl Store {
    /// Pending, unexpired authorizations whose validation began before `before`, oldest first.
    pub async fn stuck_authorizations(&self, before: Timestamp, limit: i64) -> Result<Vec<StuckItem>, Problem> {
        let rows: Vec<(i64, i64)> = sqlx::query_as(
            "SELECT id, attempted_at FROM authorizations WHERE status = 'pending' AND attempted IS NOT NULL AND attempted_at <= $1 AND expires > $2 ORDER BY attempted_at LIMIT $3",
        )
        .bind(before)
        .bind(now())
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .map_err(db_error)?;
        Ok(rows.into_iter().map(|(id, since)| StuckItem { id, since }).collect())
    }

    /// Unexpired orders processing since before `before`, with neither a certificate nor an error, oldest first.
    pub async fn stuck_orders(&self, before: Timestamp, limit: i64) -> Result<Vec<StuckItem>, Problem> {
        let rows: Vec<(i64, i64)> = sqlx::query_as(
            "SELECT id, began_processing FROM orders WHERE began_processing != 0 AND began_processing <= $1 AND certificate_serial = '' AND error IS NULL AND expires > $2 ORDER BY began_processing LIMIT $3",
        )
        .bind(before)
        .bind(now())
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .map_err(db_error)?;
        Ok(rows.into_iter().map(|(id, since)| StuckItem { id, since }).collect())
    }

    /// Takes the stuck validation of authorization `id` over, if it is still the one that began at `since`: its
    /// attempt restarts now. `None` when another caller took it first (or it finished); else how often it was
    /// taken over before.
    pub async fn claim_stuck_authorization(&self, id: i64, since: Timestamp) -> Result<Option<i64>, Problem> {
        let mut tx = self.begin_write().await?;
        let updated = sqlx::query(
            "UPDATE authorizations SET attempted_at = $1, recoveries = recoveries + 1 WHERE id = $2 AND attempted_at = $3 AND status = 'pending' AND attempted IS NOT NULL",
        )
        .bind(now().max(since + 1))
        .bind(id)
        .bind(since)
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

    /// Takes the stuck order `id` over, if it is still processing since `since`: its processing restarts now.
    /// `None` when another caller took it first (or it finished); else the serial of the precertificate stored for
    /// it, if one was.
    pub async fn claim_stuck_order(&self, id: i64, since: Timestamp) -> Result<Option<Option<String>>, Problem> {
        let updated = sqlx::query(
            "UPDATE orders SET began_processing = $1 WHERE id = $2 AND began_processing = $3 AND certificate_serial = '' AND error IS NULL",
        )
        .bind(now().max(since + 1))
        .bind(id)
        .bind(since)
        .execute(&self.pool)
        .await
        .map_err(db_error)?
        .rows_affected();
        if updated != 1 {
            return Ok(None);
        }
        let serial: Option<String> = sqlx::query_scalar(
            "SELECT p.serial FROM serials s JOIN precertificates p ON p.serial = s.serial WHERE s.order_id = $1 ORDER BY s.created DESC LIMIT 1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await
        .map_err(db_error)?;
        Ok(Some(serial))
    }
}
