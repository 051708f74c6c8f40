//! The store: every query the sa makes, with transactions where atomicity matters, over SQLite or PostgreSQL
//! (chosen by the database URL). One set of queries serves both: `$N` parameters (sqlx binds them by number on
//! SQLite too), integers for booleans, and SQL both engines accept; each backend has its own migrations.

use std::time::Duration;

use quarry_core::clock::{Timestamp, now};
use quarry_core::model::{
    Account, AccountStatus, Authorization, AuthorizationStatus, Certificate, Challenge, ChallengeStatus, ChallengeType,
    MAX_ORDER_PAGE, Order, OrderPage, ValidationRecord,
};
use quarry_core::{ErrorKind, Identifier, IdentifierType, Problem};
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{Any, AnyPool, Connection, Executor, Row, Transaction};

use crate::queries;
use crate::status::{OrderFacts, authorization_status, order_status};

/// A schema migration: version, name, SQL.
type Migration = (i64, &'static str, &'static str);

/// SQLite's schema migrations, applied in order at start-up; each runs once.
const SQLITE_MIGRATIONS: &[Migration] = &[
    (1, "initial", include_str!("../migrations/sqlite/0001_initial.sql")),
    (2, "replacement_orders", include_str!("../migrations/sqlite/0002_replacement_orders.sql")),
    (3, "external_account_id", include_str!("../migrations/sqlite/0003_external_account_id.sql")),
    (4, "history_and_controls", include_str!("../migrations/sqlite/0004_history_and_controls.sql")),
    (5, "crl_storage", include_str!("../migrations/sqlite/0005_crl_storage.sql")),
    (6, "crl_changes", include_str!("../migrations/sqlite/0006_crl_changes.sql")),
    (7, "recovery", include_str!("../migrations/sqlite/0007_recovery.sql")),
    (8, "bad_keys", include_str!("../migrations/sqlite/0008_bad_keys.sql")),
    (9, "external_account_claim", include_str!("../migrations/sqlite/0009_external_account_claim.sql")),
    (10, "renewal_info_overrides", include_str!("../migrations/sqlite/0010_renewal_info_overrides.sql")),
    (11, "orders_by_account", include_str!("../migrations/sqlite/0011_orders_by_account.sql")),
];

/// PostgreSQL's schema migrations: the same versions, in PostgreSQL's types.
const POSTGRES_MIGRATIONS: &[Migration] = &[
    (1, "initial", include_str!("../migrations/postgres/0001_initial.sql")),
    (2, "replacement_orders", include_str!("../migrations/postgres/0002_replacement_orders.sql")),
    (3, "external_account_id", include_str!("../migrations/postgres/0003_external_account_id.sql")),
    (4, "history_and_controls", include_str!("../migrations/postgres/0004_history_and_controls.sql")),
    (5, "crl_storage", include_str!("../migrations/postgres/0005_crl_storage.sql")),
    (6, "crl_changes", include_str!("../migrations/postgres/0006_crl_changes.sql")),
    (7, "recovery", include_str!("../migrations/postgres/0007_recovery.sql")),
    (8, "bad_keys", include_str!("../migrations/postgres/0008_bad_keys.sql")),
    (9, "external_account_claim", include_str!("../migrations/postgres/0009_external_account_claim.sql")),
    (10, "renewal_info_overrides", include_str!("../migrations/postgres/0010_renewal_info_overrides.sql")),
    (11, "orders_by_account", include_str!("../migrations/postgres/0011_orders_by_account.sql")),
];

/// The most of an account's orders one page of its orders list looks at, listed or not: a page of an account whose
/// orders are mostly invalid (expired, failed) holds fewer ids, rather than one request reading every order the
/// account ever had.
const MAX_ORDERS_EXAMINED: i64 = 2 * MAX_ORDER_PAGE;

/// The last of the orders one page may look at — the `$3 + 1`th of the account's orders after an id — and the one
/// after it, if any: read from the index `orders_account_id` alone.
const LAST_ORDER_EXAMINED: &str =
    "SELECT id FROM orders WHERE account_id = $1 AND id > $2 ORDER BY id LIMIT 2 OFFSET $3";

/// The ids of an account's orders in an id range that are not invalid: what `status::order_status` derives on read,
/// said in SQL so that a page is one query rather than one per order. Valid (a certificate) whatever else is
/// recorded; else invalid with an error, once expired, or with an authorization that is not pending or valid, or is
/// past its expiry (a pending or valid one reads as expired then).
const LISTED_ACCOUNT_ORDERS: &str = "SELECT id FROM orders WHERE account_id = $1 AND id > $2 AND id <= $3 AND (certificate_serial != '' OR (error IS NULL AND expires > $4 AND NOT EXISTS (SELECT 1 FROM order_authorizations JOIN authorizations ON authorizations.id = order_authorizations.authorization_id WHERE order_authorizations.order_id = orders.id AND (authorizations.status NOT IN ('pending', 'valid') OR authorizations.expires <= $5)))) ORDER BY id LIMIT $6";

/// PostgreSQL's transaction-scoped lock that serializes migrations of sa replicas starting together.
const MIGRATION_LOCK: &str = "SELECT pg_advisory_xact_lock(7161302)";

/// The database engines the store speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    /// The backend a database URL names: `sqlite:` or `postgres:`/`postgresql:`.
    pub fn of_url(url: &str) -> Option<Self> {
        if url.starts_with("sqlite:") {
            Some(Self::Sqlite)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Some(Self::Postgres)
        } else {
            None
        }
    }

    fn migrations(self) -> &'static [Migration] {
        match self {
            Self::Sqlite => SQLITE_MIGRATIONS,
            Self::Postgres => POSTGRES_MIGRATIONS,
        }
    }
}

/// How the store connects: pool size and the longest a statement may run.
#[derive(Debug, Clone, Copy)]
pub struct PoolSettings {
    pub max_connections: u32,
    pub statement_timeout: Duration,
}

/// A new pending authorization to create with an order.
#[derive(Debug, Clone)]
pub struct NewAuthorization {
    pub identifier: Identifier,
    pub challenge_types: Vec<ChallengeType>,
    pub token: String,
    pub expires: Timestamp,
}

/// An order to create, with the authorizations it reuses and the ones it needs.
#[derive(Debug, Clone)]
pub struct NewOrder {
    pub account_id: i64,
    pub identifiers: Vec<Identifier>,
    pub expires: Timestamp,
    pub reused_authorization_ids: Vec<i64>,
    pub new_authorizations: Vec<NewAuthorization>,
    pub profile: String,
    /// The ARI CertID of the certificate this order replaces, as the client sent it.
    pub replaces: String,
    /// That certificate's serial (hex), recorded so that it is replaced only once; empty when none.
    pub replaces_serial: String,
}

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

/// Access to the database; cheap to clone.
#[derive(Clone)]
pub struct Store {
    pub(crate) pool: AnyPool,
    backend: Backend,
    crl_shards: i64,
}

pub(crate) fn internal(err: impl std::fmt::Display) -> Problem {
    tracing::error!(%err, "database error");
    Problem::internal("a database error occurred")
}

/// A database error as a typed kind: a caller can act on `duplicate`, `notFound` or `unavailable`; the text of the
/// driver's error goes to the log only.
pub(crate) fn db_error(err: sqlx::Error) -> Problem {
    use sqlx::error::ErrorKind as DbKind;
    match &err {
        sqlx::Error::Database(db) => match db.kind() {
            DbKind::UniqueViolation => Problem::new(ErrorKind::Duplicate, "the record already exists"),
            DbKind::ForeignKeyViolation => Problem::not_found("a record it refers to does not exist"),
            DbKind::NotNullViolation | DbKind::CheckViolation => {
                tracing::error!(%err, "database constraint violated");
                Problem::malformed("the record breaks a constraint of the schema")
            }
            // SQLite's SQLITE_BUSY (and its snapshot variant): the write lock stayed taken past the busy timeout.
            _ if matches!(db.code().as_deref(), Some("5" | "517")) => {
                tracing::warn!(%err, "database busy");
                Problem::new(ErrorKind::Unavailable, "the database is busy")
            }
            // PostgreSQL's query_canceled: the statement timeout fired.
            _ if db.code().as_deref() == Some("57014") => {
                tracing::warn!(%err, "statement timed out");
                Problem::new(ErrorKind::Timeout, "the database took too long")
            }
            _ => internal(err),
        },
        sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) => {
            tracing::warn!(%err, "database unavailable");
            Problem::new(ErrorKind::Unavailable, "the database is unavailable")
        }
        _ => internal(err),
    }
}

/// SQLite connections at most, whatever `max_connections` says: SQLite has one writer, and each write makes every
/// other connection drop its page cache and read the pages again, so more connections cost CPU and gain nothing
/// (two measured a quarter cheaper per certificate than eight).
const SQLITE_MAX_CONNECTIONS: u32 = 2;

/// SQLite creates the database file but not its directory.
fn create_parent_dir(url: &str) {
    let path = url.trim_start_matches("sqlite://").trim_start_matches("sqlite:");
    let path = path.split('?').next().unwrap_or_default();
    if let Some(parent) = std::path::Path::new(path).parent()
        && !parent.as_os_str().is_empty()
    {
        let _ = std::fs::create_dir_all(parent);
    }
}

pub use quarry_core::identifier::fqdn_set_hash;

/// `www.example.com` → `com.example.www`, so names under one domain sort together.
pub(crate) fn reversed_name(name: &str) -> String {
    name.split('.').rev().collect::<Vec<_>>().join(".")
}

impl Store {
    /// Opens the database at `url` (an SQLite file is created if missing) and brings its schema up to date.
    pub async fn open(url: &str, settings: PoolSettings) -> Result<Self, sqlx::Error> {
        let store = Self::connect(url, settings).await?;
        store.migrate().await?;
        Ok(store)
    }

    /// Opens a read replica: its schema is the primary's business, so nothing is migrated.
    pub async fn open_replica(url: &str, settings: PoolSettings) -> Result<Self, sqlx::Error> {
        Self::connect(url, settings).await
    }

    async fn connect(url: &str, settings: PoolSettings) -> Result<Self, sqlx::Error> {
        let backend = Backend::of_url(url).ok_or_else(|| {
            sqlx::Error::Configuration("the database URL must start with sqlite: or postgres://".into())
        })?;
        if backend == Backend::Sqlite {
            create_parent_dir(url);
        }
        sqlx::any::install_default_drivers();
        let timeout_ms = settings.statement_timeout.as_millis().clamp(1, i32::MAX as u128);
        let max_connections = match backend {
            Backend::Sqlite => settings.max_connections.min(SQLITE_MAX_CONNECTIONS),
            Backend::Postgres => settings.max_connections,
        };
        let pool = AnyPoolOptions::new()
            .max_connections(max_connections.max(1))
            // Longer than SQLite's busy timeout, so that a caller queued behind a waiting writer is not failed first.
            .acquire_timeout(settings.statement_timeout.max(Duration::from_secs(1)) * 2)
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    let setup = match backend {
                        // WAL lets readers run beside the writer; busy_timeout waits out the writer's lock. (A memory
                        // map of the database cost more than it saved: it is remapped as the file grows.)
                        Backend::Sqlite => format!(
                            "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON; PRAGMA busy_timeout = {timeout_ms}"
                        ),
                        Backend::Postgres => format!("SET statement_timeout = {timeout_ms}"),
                    };
                    conn.execute(sqlx::raw_sql(sqlx::AssertSqlSafe(setup))).await.map(|_| ())
                })
            })
            .connect(url)
            .await?;
        Ok(Self { pool, backend, crl_shards: quarry_core::crl::DEFAULT_SHARDS })
    }

    /// Revoked certificates are filed under `shards` CRL shards per issuer.
    pub fn with_crl_shards(mut self, shards: i64) -> Self {
        self.crl_shards = shards.max(1);
        self
    }

    /// The CRL shard of `serial` (hex), as the ca computed it for the certificate's CRL distribution point.
    pub fn crl_shard(&self, serial: &str) -> i64 {
        quarry_core::crl::shard(serial, self.crl_shards)
    }

    /// Starts a transaction that will write. SQLite's `BEGIN IMMEDIATE` takes the write lock at once: a deferred
    /// transaction that reads and then writes fails with SQLITE_BUSY, without waiting, when another writer got in
    /// between (WAL snapshot rules); PostgreSQL's row locks need nothing of the kind.
    pub(crate) async fn begin_write(&self) -> Result<Transaction<'static, Any>, Problem> {
        let begin = match self.backend {
            Backend::Sqlite => "BEGIN IMMEDIATE",
            Backend::Postgres => "BEGIN",
        };
        self.pool.begin_with(begin).await.map_err(db_error)
    }

    /// Which engine this store talks to.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Checks that the database answers (for health checks).
    /// Sets the connection-pool gauges (`quarry_db_pool_connections{state=idle|in_use}`).
    pub fn record_pool_gauges(&self) {
        let size = self.pool.size() as f64;
        let idle = self.pool.num_idle() as f64;
        metrics::gauge!("quarry_db_pool_connections", "state" => "idle").set(idle);
        metrics::gauge!("quarry_db_pool_connections", "state" => "in_use").set((size - idle).max(0.0));
    }

    pub async fn ping(&self) -> Result<(), sqlx::Error> {
        self.pool.acquire().await?.ping().await
    }

    /// Applies every migration not yet applied. Replicas of the sa start together: each migration runs in a
    /// transaction that first takes the database's write lock (SQLite) or an advisory lock (PostgreSQL), so the
    /// second replica waits, then finds it applied.
    async fn migrate(&self) -> Result<(), sqlx::Error> {
        for (version, name, sql) in self.backend.migrations() {
            let mut tx = match self.backend {
                Backend::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await?,
                Backend::Postgres => {
                    let mut tx = self.pool.begin().await?;
                    sqlx::query(MIGRATION_LOCK).execute(&mut *tx).await?;
                    tx
                }
            };
            sqlx::raw_sql(
                "CREATE TABLE IF NOT EXISTS schema_migrations (version BIGINT PRIMARY KEY, name TEXT NOT NULL, applied_at BIGINT NOT NULL)",
            )
            .execute(&mut *tx)
            .await?;
            let applied: Option<i64> = sqlx::query_scalar("SELECT version FROM schema_migrations WHERE version = $1")
                .bind(version)
                .fetch_optional(&mut *tx)
                .await?;
            if applied.is_none() {
                sqlx::raw_sql(*sql).execute(&mut *tx).await?;
                sqlx::query("INSERT INTO schema_migrations (version, name, applied_at) VALUES ($1, $2, $3)")
                    .bind(version)
                    .bind(name)
                    .bind(now())
                    .execute(&mut *tx)
                    .await?;
                tracing::info!(version, name, "applied schema migration");
            }
            tx.commit().await?;
        }
        Ok(())
    }

    // --- Accounts ---

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
        .fetch_one(&self.pool)
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
            .execute(&self.pool)
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
            .execute(&self.pool)
            .await
            .map_err(db_error)?
            .rows_affected();
        self.account_after_update(id, updated).await
    }

    /// Deactivates a valid account for good (RFC 8555 §7.3.6).
    pub async fn deactivate_account(&self, id: i64) -> Result<Account, Problem> {
        let updated = sqlx::query("UPDATE accounts SET status = 'deactivated' WHERE id = $1 AND status = 'valid'")
            .bind(id)
            .execute(&self.pool)
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

    // --- Authorizations ---

    pub async fn get_authorization(&self, id: i64) -> Result<Authorization, Problem> {
        let row =
            sqlx::query(queries::AUTHORIZATION_BY_ID).bind(id).fetch_optional(&self.pool).await.map_err(db_error)?;
        row.map(|r| authorization_from_row(&r, now()))
            .transpose()?
            .ok_or_else(|| Problem::not_found(format!("authorization {id} not found")))
    }

    pub async fn get_order_authorizations(&self, order_id: i64) -> Result<Vec<Authorization>, Problem> {
        let rows =
            sqlx::query(queries::ORDER_AUTHORIZATIONS).bind(order_id).fetch_all(&self.pool).await.map_err(db_error)?;
        let now = now();
        rows.iter().map(|r| authorization_from_row(r, now)).collect()
    }

    /// Valid authorizations of `account_id` for exactly these identifier values (so a wildcard's never serves a
    /// plain name), expiring after `valid_until`, newest per identifier.
    pub async fn get_valid_authorizations(
        &self,
        account_id: i64,
        identifiers: &[Identifier],
        valid_until: Timestamp,
        profile: &str,
    ) -> Result<Vec<Authorization>, Problem> {
        let now = now();
        let mut found = Vec::new();
        for identifier in identifiers {
            let row = sqlx::query(queries::VALID_AUTHORIZATION)
                .bind(account_id)
                .bind(identifier.kind.as_str())
                .bind(&identifier.value)
                .bind(valid_until.max(now))
                .bind(profile)
                .bind(profile)
                .fetch_optional(&self.pool)
                .await
                .map_err(db_error)?;
            if let Some(row) = row {
                found.push(authorization_from_row(&row, now)?);
            }
        }
        Ok(found)
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
        .execute(&self.pool)
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

    /// Records a validation's outcome, only if the authorization is still pending; the same outcome recorded again
    /// (a retry after a lost answer) is accepted.
    pub async fn finalize_authorization(&self, outcome: &ValidationOutcome) -> Result<(), Problem> {
        if !matches!(outcome.status, AuthorizationStatus::Valid | AuthorizationStatus::Invalid) {
            return Err(Problem::malformed("an authorization can only be finalized as valid or invalid"));
        }
        let records = serde_json::to_string(&outcome.records).map_err(internal)?;
        let error = outcome.error.as_ref().map(serde_json::to_string).transpose().map_err(internal)?;
        let valid = outcome.status == AuthorizationStatus::Valid;
        let updated = sqlx::query(
            "UPDATE authorizations SET status = $1, expires = CASE WHEN $2 THEN $3 ELSE expires END, attempted = $4, attempted_at = $5, validated_at = CASE WHEN $6 THEN $7 ELSE NULL END, validation_records = $8, validation_error = $9 WHERE id = $10 AND status = 'pending'",
        )
        .bind(outcome.status.as_str())
        .bind(valid)
        .bind(outcome.expires)
        .bind(&outcome.attempted)
        .bind(outcome.attempted_at)
        .bind(valid)
        .bind(outcome.attempted_at)
        .bind(records)
        .bind(error)
        .bind(outcome.id)
        .execute(&self.pool)
        .await
        .map_err(db_error)?
        .rows_affected();
        if updated == 1 {
            return Ok(());
        }
        let recorded: Option<(String, Option<String>, Option<i64>)> =
            sqlx::query_as("SELECT status, attempted, attempted_at FROM authorizations WHERE id = $1")
                .bind(outcome.id)
                .fetch_optional(&self.pool)
                .await
                .map_err(db_error)?;
        match recorded {
            Some((status, attempted, attempted_at))
                if status == outcome.status.as_str()
                    && attempted.as_deref() == Some(outcome.attempted.as_str())
                    && attempted_at == Some(outcome.attempted_at) =>
            {
                Ok(())
            }
            _ => Err(Problem::malformed("authorization is not pending")),
        }
    }

    /// Deactivates a pending or valid, unexpired authorization (RFC 8555 §7.5.2).
    pub async fn deactivate_authorization(&self, id: i64) -> Result<Authorization, Problem> {
        let updated = sqlx::query(
            "UPDATE authorizations SET status = 'deactivated' WHERE id = $1 AND status IN ('pending', 'valid') AND expires > $2",
        )
        .bind(id)
        .bind(now())
        .execute(&self.pool)
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

    // --- Orders ---

    /// Creates the new authorizations, the order and its links in one transaction.
    pub async fn new_order_and_authorizations(&self, order: &NewOrder) -> Result<Order, Problem> {
        let created = now();
        let mut tx = self.begin_write().await?;
        let mut authorization_ids = order.reused_authorization_ids.clone();
        for authz in &order.new_authorizations {
            let types: Vec<&str> = authz.challenge_types.iter().map(|t| t.as_str()).collect();
            let id: i64 = sqlx::query_scalar(
                "INSERT INTO authorizations (account_id, identifier_type, identifier_value, status, expires, challenge_types, token, profile, created) VALUES ($1, $2, $3, 'pending', $4, $5, $6, $7, $8) RETURNING id",
            )
            .bind(order.account_id)
            .bind(authz.identifier.kind.as_str())
            .bind(&authz.identifier.value)
            .bind(authz.expires)
            .bind(types.join(","))
            .bind(&authz.token)
            .bind(&order.profile)
            .bind(created)
            .fetch_one(&mut *tx)
            .await
            .map_err(db_error)?;
            authorization_ids.push(id);
        }
        let identifiers = serde_json::to_string(&order.identifiers).map_err(internal)?;
        let order_id: i64 = sqlx::query_scalar(
            "INSERT INTO orders (account_id, expires, created, profile, replaces, identifiers) VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
        )
        .bind(order.account_id)
        .bind(order.expires)
        .bind(created)
        .bind(&order.profile)
        .bind(&order.replaces)
        .bind(identifiers)
        .fetch_one(&mut *tx)
        .await
        .map_err(db_error)?;
        for (position, authz_id) in authorization_ids.iter().enumerate() {
            sqlx::query("INSERT INTO order_authorizations (order_id, authorization_id, position) VALUES ($1, $2, $3)")
                .bind(order_id)
                .bind(authz_id)
                .bind(position as i64)
                .execute(&mut *tx)
                .await
                .map_err(db_error)?;
        }
        sqlx::query("INSERT INTO order_fqdn_sets (set_hash, order_id, account_id, expires) VALUES ($1, $2, $3, $4)")
            .bind(fqdn_set_hash(order.identifiers.iter().map(|i| i.value.as_str())))
            .bind(order_id)
            .bind(order.account_id)
            .bind(order.expires)
            .execute(&mut *tx)
            .await
            .map_err(db_error)?;
        if !order.replaces_serial.is_empty() {
            sqlx::query(
                "INSERT INTO replacement_orders (serial, order_id, order_expires, replaced) VALUES ($1, $2, $3, 0) ON CONFLICT (serial) DO UPDATE SET order_id = excluded.order_id, order_expires = excluded.order_expires WHERE replacement_orders.replaced = 0",
            )
            .bind(order.replaces_serial.to_ascii_lowercase())
            .bind(order_id)
            .bind(order.expires)
            .execute(&mut *tx)
            .await
            .map_err(db_error)?;
        }
        tx.commit().await.map_err(db_error)?;
        self.get_order(order_id).await
    }

    /// Whether the certificate `serial` already has a replacement (RFC 9773 §5): a finalized replacement order, or
    /// one that can still be finalized. An expired or invalid replacement order does not count.
    pub async fn replacement_order_exists(&self, serial: &str) -> Result<bool, Problem> {
        let row: Option<(i64, i64, i64)> =
            sqlx::query_as("SELECT order_id, order_expires, replaced FROM replacement_orders WHERE serial = $1")
                .bind(serial.to_ascii_lowercase())
                .fetch_optional(&self.pool)
                .await
                .map_err(db_error)?;
        let Some((order_id, order_expires, replaced)) = row else { return Ok(false) };
        if replaced != 0 {
            return Ok(true);
        }
        if order_expires <= now() {
            return Ok(false);
        }
        let order = self.get_order(order_id).await?;
        Ok(order.status != quarry_core::model::OrderStatus::Invalid)
    }

    pub async fn get_order(&self, id: i64) -> Result<Order, Problem> {
        let row = sqlx::query(queries::ORDER_BY_ID).bind(id).fetch_optional(&self.pool).await.map_err(db_error)?;
        let row = row.ok_or_else(|| Problem::not_found(format!("order {id} not found")))?;
        let authorizations = self.get_order_authorizations(id).await?;
        order_from_row(&row, &authorizations, now())
    }

    /// The newest pending or ready order of the account for exactly this set of identifiers and profile.
    pub async fn get_order_for_names(
        &self,
        account_id: i64,
        identifiers: &[Identifier],
        profile: &str,
    ) -> Result<Order, Problem> {
        let ids: Vec<i64> = sqlx::query_scalar(queries::ORDER_REUSE)
            .bind(account_id)
            .bind(fqdn_set_hash(identifiers.iter().map(|i| i.value.as_str())))
            .bind(now())
            .bind(profile)
            .fetch_all(&self.pool)
            .await
            .map_err(db_error)?;
        for id in ids {
            let order = self.get_order(id).await?;
            if matches!(order.status, quarry_core::model::OrderStatus::Pending | quarry_core::model::OrderStatus::Ready)
            {
                return Ok(order);
            }
        }
        Err(Problem::not_found("no reusable order"))
    }

    /// One page of the account's orders list (RFC 8555 §7.1.2.1): the ids of its orders that are not invalid
    /// (pending, ready, processing, valid), after `after_id`, at most `limit` (1 to [`MAX_ORDER_PAGE`]), ascending.
    /// Keyset pagination over the index `orders_account_id`, so a page costs the same however far into the list it
    /// is; at most [`MAX_ORDERS_EXAMINED`] orders are looked at, so a page may hold fewer than `limit` ids and still
    /// have a next one.
    pub async fn account_orders(&self, account_id: i64, after_id: i64, limit: i64) -> Result<OrderPage, Problem> {
        if !(1..=MAX_ORDER_PAGE).contains(&limit) {
            return Err(Problem::malformed(format!("a page of orders holds 1 to {MAX_ORDER_PAGE}, not {limit}")));
        }
        // The range this page may look at: up to the last order examined, when the account has that many more.
        let last_examined: Vec<i64> = sqlx::query_scalar(LAST_ORDER_EXAMINED)
            .bind(account_id)
            .bind(after_id)
            .bind(MAX_ORDERS_EXAMINED - 1)
            .fetch_all(&self.pool)
            .await
            .map_err(db_error)?;
        let (up_to, more_beyond) = match last_examined[..] {
            [last, _] => (last, true),
            [last] => (last, false),
            _ => (i64::MAX, false),
        };
        let now = now();
        // One more than the page: whether another listed order follows it.
        let mut order_ids: Vec<i64> = sqlx::query_scalar(LISTED_ACCOUNT_ORDERS)
            .bind(account_id)
            .bind(after_id)
            .bind(up_to)
            .bind(now)
            .bind(now)
            .bind(limit + 1)
            .fetch_all(&self.pool)
            .await
            .map_err(db_error)?;
        let next_after_id = if order_ids.len() as i64 > limit {
            order_ids.truncate(limit as usize);
            order_ids.last().copied()
        } else {
            // A short page: the account's last orders, or the last of those examined with more beyond them.
            more_beyond.then_some(up_to)
        };
        Ok(OrderPage { order_ids, next_after_id })
    }

    /// Starts finalization by `owner` (an ra replica): succeeds once per order, and only when the order is ready.
    pub async fn set_order_processing(&self, id: i64, owner: &str) -> Result<(), Problem> {
        // The fuse is the conditional UPDATE alone: no transaction is held open while the order is read, so that
        // racing callers never wait on each other for a pooled connection.
        let order = self.get_order(id).await?;
        if order.status != quarry_core::model::OrderStatus::Ready {
            return Err(Problem::new(
                ErrorKind::OrderNotReady,
                format!("order's status ({:?}) is not acceptable for finalization", order.status.as_str()),
            ));
        }
        let updated = sqlx::query(
            "UPDATE orders SET began_processing = $1, processing_by = $3 WHERE id = $2 AND began_processing = 0",
        )
        .bind(now().max(1))
        .bind(id)
        .bind(owner)
        .execute(&self.pool)
        .await
        .map_err(db_error)?
        .rows_affected();
        if updated == 1 { Ok(()) } else { Err(Problem::new(ErrorKind::OrderNotReady, "order is already processing")) }
    }

    /// Marks an order failed — unless its certificate was stored meanwhile (the ca finished after its caller gave
    /// up): then the order is valid and this is a `conflict`.
    pub async fn set_order_error(&self, id: i64, problem: &Problem) -> Result<(), Problem> {
        let error = serde_json::to_string(problem).map_err(internal)?;
        let updated = sqlx::query("UPDATE orders SET error = $1 WHERE id = $2 AND certificate_serial = ''")
            .bind(error)
            .bind(id)
            .execute(&self.pool)
            .await
            .map_err(db_error)?
            .rows_affected();
        if updated == 1 {
            return Ok(());
        }
        let serial: Option<String> = sqlx::query_scalar("SELECT certificate_serial FROM orders WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(db_error)?;
        match serial {
            Some(serial) => Err(Problem::new(ErrorKind::Conflict, format!("order {id} has its certificate {serial}"))),
            None => Err(Problem::not_found(format!("order {id} not found"))),
        }
    }

    /// Records the certificate of a processing order and, in the same transaction, that the certificate it
    /// replaces (RFC 9773) is now replaced. Recording the same certificate again is accepted.
    pub async fn finalize_order(&self, id: i64, serial: &str) -> Result<(), Problem> {
        let mut tx = self.begin_write().await?;
        let updated = sqlx::query(
            "UPDATE orders SET certificate_serial = $1 WHERE id = $2 AND began_processing != 0 AND certificate_serial = '' AND error IS NULL",
        )
        .bind(serial)
        .bind(id)
        .execute(&mut *tx)
        .await
        .map_err(db_error)?
        .rows_affected();
        if updated != 1 {
            // Recorded already (storing the certificate links its order; or a retry after a lost answer): done.
            drop(tx);
            let recorded: Option<String> = sqlx::query_scalar("SELECT certificate_serial FROM orders WHERE id = $1")
                .bind(id)
                .fetch_optional(&self.pool)
                .await
                .map_err(db_error)?;
            if recorded.is_some_and(|recorded| recorded == serial) {
                return Ok(());
            }
            return Err(Problem::new(ErrorKind::OrderNotReady, "order is not processing"));
        }
        sqlx::query("UPDATE replacement_orders SET replaced = 1 WHERE order_id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(db_error)?;
        tx.commit().await.map_err(db_error)
    }

    // --- Serials and certificates ---

    /// Reserves a serial for a certificate of `order_id` (0: of no order).
    pub async fn add_serial(
        &self,
        account_id: i64,
        order_id: i64,
        serial: &str,
        created: Timestamp,
        expires: Timestamp,
    ) -> Result<(), Problem> {
        sqlx::query("INSERT INTO serials (serial, account_id, order_id, created, expires) VALUES ($1, $2, $3, $4, $5)")
            .bind(serial.to_ascii_lowercase())
            .bind(account_id)
            .bind(order_id)
            .bind(created)
            .bind(expires)
            .execute(&self.pool)
            .await
            .map_err(db_error)?;
        Ok(())
    }

    pub async fn serial_exists(&self, serial: &str) -> Result<bool, Problem> {
        let found: Option<String> = sqlx::query_scalar("SELECT serial FROM serials WHERE serial = $1")
            .bind(serial.to_ascii_lowercase())
            .fetch_optional(&self.pool)
            .await
            .map_err(db_error)?;
        Ok(found.is_some())
    }

    /// Stores a precertificate (the ca's linting copy) with everything issuance records: its status (so it can be
    /// revoked from now on), its FQDN set, its names and its key. A serial is stored once, and only if reserved;
    /// the same precertificate stored again (a retry after a lost answer) is accepted.
    pub async fn add_precertificate(
        &self,
        account_id: i64,
        der: &[u8],
        issued: Timestamp,
        issuer_id: i64,
    ) -> Result<String, Problem> {
        let facts = CertificateFacts::parse(der)?;
        match self.get_precertificate(&facts.serial).await {
            Ok(stored) if stored.der == der => return Ok(facts.serial),
            Ok(_) => return Err(Problem::new(ErrorKind::Duplicate, format!("serial {} is taken", facts.serial))),
            Err(problem) if problem.kind == ErrorKind::NotFound => {}
            Err(problem) => return Err(problem),
        }
        if !self.serial_exists(&facts.serial).await? {
            return Err(Problem::malformed(format!("serial {} was never reserved", facts.serial)));
        }
        let mut tx = self.begin_write().await?;
        sqlx::query(
            "INSERT INTO precertificates (serial, account_id, der, issued, expires, issuer_id) VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&facts.serial)
        .bind(account_id)
        .bind(der)
        .bind(issued)
        .bind(facts.not_after)
        .bind(issuer_id)
        .execute(&mut *tx)
        .await
        .map_err(db_error)?;
        sqlx::query(
            "INSERT INTO certificate_status (serial, status, not_after, issuer_id) VALUES ($1, 'good', $2, $3)",
        )
        .bind(&facts.serial)
        .bind(facts.not_after)
        .bind(issuer_id)
        .execute(&mut *tx)
        .await
        .map_err(db_error)?;
        sqlx::query("INSERT INTO fqdn_sets (set_hash, serial, issued, expires) VALUES ($1, $2, $3, $4)")
            .bind(fqdn_set_hash(facts.names.iter().map(String::as_str)))
            .bind(&facts.serial)
            .bind(issued)
            .bind(facts.not_after)
            .execute(&mut *tx)
            .await
            .map_err(db_error)?;
        for name in &facts.names {
            sqlx::query("INSERT INTO issued_names (reversed_name, not_before, serial, renewal) VALUES ($1, $2, $3, 0)")
                .bind(reversed_name(name))
                .bind(facts.not_before)
                .bind(&facts.serial)
                .execute(&mut *tx)
                .await
                .map_err(db_error)?;
        }
        sqlx::query("INSERT INTO key_hash_to_serial (key_hash, cert_not_after, serial) VALUES ($1, $2, $3)")
            .bind(facts.key_hash)
            .bind(facts.not_after)
            .bind(&facts.serial)
            .execute(&mut *tx)
            .await
            .map_err(db_error)?;
        tx.commit().await.map_err(db_error)?;
        Ok(facts.serial)
    }

    /// Stores the final certificate of a stored precertificate (same serial, same issuer) and, in the same
    /// transaction, makes the order it was issued for valid (RFC 9773: its replaced certificate is now replaced):
    /// so an order whose caller crashed, or gave up, after the ca finished is not left behind. The same
    /// certificate stored again (a retry after a lost answer) is accepted.
    pub async fn add_certificate(
        &self,
        account_id: i64,
        der: &[u8],
        issued: Timestamp,
        issuer_id: i64,
    ) -> Result<String, Problem> {
        let facts = CertificateFacts::parse(der)?;
        let precertificate = self.get_precertificate(&facts.serial).await.map_err(|problem| match problem.kind {
            ErrorKind::NotFound => Problem::malformed(format!("serial {} has no precertificate", facts.serial)),
            _ => problem,
        })?;
        if precertificate.issuer_id != issuer_id || precertificate.account_id != account_id {
            return Err(Problem::malformed(format!(
                "serial {}'s precertificate has another issuer or account",
                facts.serial
            )));
        }
        match self.get_certificate(&facts.serial).await {
            Ok(stored) if stored.der == der => return Ok(facts.serial),
            Ok(_) => return Err(Problem::new(ErrorKind::Duplicate, format!("serial {} is taken", facts.serial))),
            Err(problem) if problem.kind == ErrorKind::NotFound => {}
            Err(problem) => return Err(problem),
        }
        let digest = hex::encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der).as_ref());
        let mut tx = self.begin_write().await?;
        sqlx::query("INSERT INTO certificates (serial, account_id, digest, der, issued, expires, issuer_id) VALUES ($1, $2, $3, $4, $5, $6, $7)")
            .bind(&facts.serial)
            .bind(account_id)
            .bind(&digest)
            .bind(der)
            .bind(issued)
            .bind(facts.not_after)
            .bind(issuer_id)
            .execute(&mut *tx)
            .await
            .map_err(db_error)?;
        let order_id: Option<i64> = sqlx::query_scalar("SELECT order_id FROM serials WHERE serial = $1")
            .bind(&facts.serial)
            .fetch_optional(&mut *tx)
            .await
            .map_err(db_error)?;
        if let Some(order_id) = order_id.filter(|id| *id != 0) {
            // A failure recorded meanwhile (the ra gave up waiting) is superseded by the certificate.
            sqlx::query(
                "UPDATE orders SET certificate_serial = $1, error = NULL WHERE id = $2 AND certificate_serial = '' AND began_processing != 0",
            )
            .bind(&facts.serial)
            .bind(order_id)
            .execute(&mut *tx)
            .await
            .map_err(db_error)?;
            sqlx::query("UPDATE replacement_orders SET replaced = 1 WHERE order_id = $1")
                .bind(order_id)
                .execute(&mut *tx)
                .await
                .map_err(db_error)?;
        }
        tx.commit().await.map_err(db_error)?;
        Ok(facts.serial)
    }

    pub async fn get_certificate(&self, serial: &str) -> Result<Certificate, Problem> {
        let row = sqlx::query(queries::CERTIFICATE_BY_SERIAL)
            .bind(serial.to_ascii_lowercase())
            .fetch_optional(&self.pool)
            .await
            .map_err(db_error)?;
        let row = row.ok_or_else(|| Problem::not_found(format!("certificate {serial} not found")))?;
        Ok(Certificate {
            serial: get(&row, "serial")?,
            account_id: get(&row, "account_id")?,
            der: get(&row, "der")?,
            issued: get(&row, "issued")?,
            expires: get(&row, "expires")?,
            digest: get(&row, "digest")?,
            issuer_id: get(&row, "issuer_id")?,
        })
    }

    /// (status, revoked_date, revoked_reason, not_after, issuer_id) of a certificate.
    pub async fn get_certificate_status(&self, serial: &str) -> Result<(String, i64, i64, i64, i64), Problem> {
        let row = sqlx::query(queries::CERTIFICATE_STATUS_BY_SERIAL)
            .bind(serial.to_ascii_lowercase())
            .fetch_optional(&self.pool)
            .await
            .map_err(db_error)?;
        let row = row.ok_or_else(|| Problem::not_found(format!("certificate {serial} not found")))?;
        Ok((
            get(&row, "status")?,
            get(&row, "revoked_date")?,
            get(&row, "revoked_reason")?,
            get(&row, "not_after")?,
            get(&row, "issuer_id")?,
        ))
    }

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
        tx: &mut Transaction<'static, Any>,
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
            .execute(&self.pool)
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
            .execute(&self.pool)
            .await
            .map_err(db_error)?;
        Ok(())
    }

    pub async fn key_blocked(&self, key_hash: &[u8]) -> Result<bool, Problem> {
        let found: Option<i64> = sqlx::query_scalar("SELECT added FROM blocked_keys WHERE key_hash = $1")
            .bind(key_hash)
            .fetch_optional(&self.pool)
            .await
            .map_err(db_error)?;
        Ok(found.is_some())
    }
}

pub(crate) fn get<'r, T: sqlx::Decode<'r, Any> + sqlx::Type<Any>>(row: &'r AnyRow, column: &str) -> Result<T, Problem> {
    row.try_get(column).map_err(internal)
}

fn account_from_row(row: &AnyRow) -> Result<Account, Problem> {
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

fn authorization_from_row(row: &AnyRow, now: Timestamp) -> Result<Authorization, Problem> {
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

fn order_from_row(row: &AnyRow, authorizations: &[Authorization], now: Timestamp) -> Result<Order, Problem> {
    let error: Option<String> = get(row, "error")?;
    let error: Option<Problem> = error.map(|e| serde_json::from_str(&e)).transpose().map_err(internal)?;
    let identifiers: String = get(row, "identifiers")?;
    let identifiers: Vec<Identifier> = serde_json::from_str(&identifiers).map_err(internal)?;
    let certificate_serial: String = get(row, "certificate_serial")?;
    let began_processing: i64 = get(row, "began_processing")?;
    let expires: i64 = get(row, "expires")?;
    let statuses: Vec<AuthorizationStatus> = authorizations.iter().map(|a| a.status).collect();
    let status = order_status(
        &OrderFacts {
            has_error: error.is_some(),
            expires,
            began_processing: began_processing != 0,
            has_certificate: !certificate_serial.is_empty(),
            authorizations: &statuses,
        },
        now,
    );
    Ok(Order {
        id: get(row, "id")?,
        account_id: get(row, "account_id")?,
        status,
        expires,
        identifiers,
        authorization_ids: authorizations.iter().map(|a| a.id).collect(),
        error,
        certificate_serial,
        created: get(row, "created")?,
        profile: get(row, "profile")?,
        replaces: get(row, "replaces")?,
        began_processing,
        not_before: get(row, "not_before")?,
        not_after: get(row, "not_after")?,
    })
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

/// What the sa records about a certificate, read from its DER.
struct CertificateFacts {
    serial: String,
    not_before: i64,
    not_after: i64,
    names: Vec<String>,
    key_hash: Vec<u8>,
}

impl CertificateFacts {
    fn parse(der: &[u8]) -> Result<Self, Problem> {
        use x509_parser::prelude::*;
        let (_, cert) =
            parse_x509_certificate(der).map_err(|_| Problem::malformed("certificate DER does not parse"))?;
        let names = quarry_core::certificate::identifiers(&cert).into_iter().map(|id| id.value).collect();
        // The key→serial index is keyed by the canonical key hash, whatever encoding the certificate carries.
        let key = quarry_jose::Jwk::from_spki_der(cert.public_key().raw)
            .map_err(|e| Problem::malformed(format!("certificate public key: {e}")))?;
        Ok(Self {
            serial: hex::encode(cert.raw_serial()),
            not_before: cert.validity().not_before.timestamp(),
            not_after: cert.validity().not_after.timestamp(),
            names,
            key_hash: key.key_hash().to_vec(),
        })
    }
}
