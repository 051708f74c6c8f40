//! The store's hold on its database: the engines it speaks, their schema migrations, the connection pools and each
//! connection's setup, SQLite's inline connections, and write transactions.

use std::sync::Arc;
use std::time::Duration;

use quarry_core::Problem;
use quarry_core::clock::now;
use sqlx::Connection;

use super::errors::{connection_ended, db_error, internal};
use super::inline_sqlite::{InlineSqlite, InlineTransaction};
use super::pool::{ConnectionPool, DbTransaction, PoolConfig};

/// A schema migration: version, name, SQL.
type Migration = (i64, &'static str, &'static str);

/// SQLite's schema migrations, applied in order at start-up; each runs once.
const SQLITE_MIGRATIONS: &[Migration] = &[
    (1, "initial", include_str!("../../migrations/sqlite/0001_initial.sql")),
    (2, "replacement_orders", include_str!("../../migrations/sqlite/0002_replacement_orders.sql")),
    (3, "external_account_id", include_str!("../../migrations/sqlite/0003_external_account_id.sql")),
    (4, "history_and_controls", include_str!("../../migrations/sqlite/0004_history_and_controls.sql")),
    (5, "crl_storage", include_str!("../../migrations/sqlite/0005_crl_storage.sql")),
    (6, "crl_changes", include_str!("../../migrations/sqlite/0006_crl_changes.sql")),
    (7, "recovery", include_str!("../../migrations/sqlite/0007_recovery.sql")),
    (8, "bad_keys", include_str!("../../migrations/sqlite/0008_bad_keys.sql")),
    (9, "external_account_claim", include_str!("../../migrations/sqlite/0009_external_account_claim.sql")),
    (10, "renewal_info_overrides", include_str!("../../migrations/sqlite/0010_renewal_info_overrides.sql")),
    (11, "orders_by_account", include_str!("../../migrations/sqlite/0011_orders_by_account.sql")),
];

/// PostgreSQL's schema migrations: the same versions, in PostgreSQL's types.
const POSTGRES_MIGRATIONS: &[Migration] = &[
    (1, "initial", include_str!("../../migrations/postgres/0001_initial.sql")),
    (2, "replacement_orders", include_str!("../../migrations/postgres/0002_replacement_orders.sql")),
    (3, "external_account_id", include_str!("../../migrations/postgres/0003_external_account_id.sql")),
    (4, "history_and_controls", include_str!("../../migrations/postgres/0004_history_and_controls.sql")),
    (5, "crl_storage", include_str!("../../migrations/postgres/0005_crl_storage.sql")),
    (6, "crl_changes", include_str!("../../migrations/postgres/0006_crl_changes.sql")),
    (7, "recovery", include_str!("../../migrations/postgres/0007_recovery.sql")),
    (8, "bad_keys", include_str!("../../migrations/postgres/0008_bad_keys.sql")),
    (9, "external_account_claim", include_str!("../../migrations/postgres/0009_external_account_claim.sql")),
    (10, "renewal_info_overrides", include_str!("../../migrations/postgres/0010_renewal_info_overrides.sql")),
    (11, "orders_by_account", include_str!("../../migrations/postgres/0011_orders_by_account.sql")),
];

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

    /// Independent writes as one statement, so that they cost one round trip to PostgreSQL instead of one each:
    /// PostgreSQL takes all but the last as data-modifying CTEs, SQLite runs statements separated by `;` in turn. No
    /// write may depend on another (PostgreSQL's CTEs see one snapshot and run in no set order); the parameters are
    /// numbered across all of them. Rows it returns are read with `fetch_all`: sqlx's `Any` driver on SQLite, asked
    /// for one row, looks only at the first statement's result.
    pub(crate) fn one_statement(self, writes: &[String]) -> String {
        match (self, writes.split_last()) {
            (_, None) => String::new(),
            (Self::Sqlite, Some(_)) => writes.join(";\n"),
            (Self::Postgres, Some((last, []))) => last.clone(),
            (Self::Postgres, Some((last, first))) => {
                let ctes: Vec<String> =
                    first.iter().enumerate().map(|(i, write)| format!("w{i} AS ({write})")).collect();
                format!("WITH {} {last}", ctes.join(", "))
            }
        }
    }

    /// How a transaction that will write begins (see `Store::begin_write`).
    pub(super) fn begin_write_statement(self) -> &'static str {
        match self {
            Self::Sqlite => "BEGIN IMMEDIATE",
            Self::Postgres => "BEGIN",
        }
    }

    fn migrations(self) -> &'static [Migration] {
        match self {
            Self::Sqlite => SQLITE_MIGRATIONS,
            Self::Postgres => POSTGRES_MIGRATIONS,
        }
    }
}

/// A pooled PostgreSQL connection idle longer than this is pinged before use (see `pool_options`).
const PING_IDLE_AFTER: Duration = Duration::from_secs(1);

/// How the store connects: pool size and the longest a statement may run.
#[derive(Debug, Clone, Copy)]
pub struct PoolSettings {
    pub max_connections: u32,
    pub statement_timeout: Duration,
}

/// Access to the database; cheap to clone.
#[derive(Clone)]
pub struct Store {
    /// Reads through sqlx. On PostgreSQL, writes too: `writer` is this same pool.
    pub(crate) pool: ConnectionPool,
    /// Writes through sqlx. On SQLite it is one connection of its own, so that those writers queue for it in the sa
    /// instead of polling SQLite's write lock; the certificate path's writes go to `inline`'s writer instead, whose
    /// page cache those rarer writes invalidate (SQLite drops a connection's whole cache when another connection
    /// wrote since).
    pub(crate) writer: ConnectionPool,
    /// SQLite only: the connections the certificate path's statements run on, in place (`inline_sqlite`).
    pub(crate) inline: Option<Arc<InlineSqlite>>,
    backend: Backend,
    crl_shards: i64,
}

/// Begins a transaction with `begin` on a connection of `pool`. A connection PostgreSQL ended while it sat in the
/// pool fails the `BEGIN`, before anything ran; the pool drops it, and the transaction begins on another, so a
/// database restart costs a write no error (at most one try per connection the pool can hold).
async fn begin_on(pool: &ConnectionPool, begin: &'static str) -> Result<DbTransaction, Problem> {
    let mut tries_left = pool.max_connections() + 1;
    loop {
        let conn = pool.acquire().await.map_err(db_error)?;
        match DbTransaction::begin(conn, begin).await {
            Ok(tx) => return Ok(tx),
            // `DbTransaction::begin` has already marked the ended connection to be discarded.
            Err((err, _)) if tries_left > 1 && connection_ended(&err) => {
                tracing::info!(%err, "a pooled connection had ended; beginning on another");
                tries_left -= 1;
            }
            Err((err, _)) => return Err(db_error(err)),
        }
    }
}

/// SQLite reading connections at most, whatever `max_connections` says, besides the one that writes: each write
/// makes every other connection drop its page cache and read the pages again, so more connections cost CPU and gain
/// nothing (two in all measured a quarter cheaper per certificate than eight). Two readers beside the writer measured
/// cheaper than one, whose reads queued behind each other.
const SQLITE_MAX_READERS: u32 = 2;

/// SQLite creates the database file but not its directory.
pub(super) fn create_parent_dir(url: &str) {
    let path = super::inline_sqlite::path_of_url(url);
    if let Some(parent) = std::path::Path::new(&path).parent()
        && !parent.as_os_str().is_empty()
    {
        let _ = std::fs::create_dir_all(parent);
    }
}

/// Whether a pool's connections may write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Reads,
    ReadsAndWrites,
}

/// A pool of at most `max_connections`, each connection set up for `backend` with `statement_timeout`; an SQLite
/// connection only for reads refuses to write (`query_only`), so that a write sent to the wrong pool fails loudly.
fn pool_config(backend: Backend, role: Role, max_connections: u32, statement_timeout: Duration) -> PoolConfig {
    let timeout_ms = statement_timeout.as_millis().clamp(1, i32::MAX as u128);
    let setup = match backend {
        // WAL lets readers run beside the writer; busy_timeout waits out the writer's lock. (A memory map of the
        // database cost more than it saved: it is remapped as the file grows.)
        Backend::Sqlite => format!(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON; PRAGMA busy_timeout = {timeout_ms}; PRAGMA query_only = {}",
            role == Role::Reads
        ),
        // `bytea` in hex, as folded reads decode it from their JSON (PostgreSQL's default, but a server or role
        // setting may change it).
        Backend::Postgres => format!("SET statement_timeout = {timeout_ms}; SET bytea_output = 'hex'"),
    };
    PoolConfig {
        max_connections,
        // Longer than SQLite's busy timeout, so that a caller queued behind a waiting writer is not failed first.
        acquire_timeout: statement_timeout.max(Duration::from_secs(1)) * 2,
        setup,
        ping_idle_after: match backend {
            // SQLite's connections live in this process: nothing ends them from outside.
            Backend::Sqlite => None,
            // But a PostgreSQL connection that sat idle a while may have been ended meanwhile (a restart, a
            // failover): pinged before use, it is replaced instead of failing a call. Under load connections rarely
            // idle that long. One used sooner fails its statement as `unavailable`, which callers retry.
            Backend::Postgres => Some(PING_IDLE_AFTER),
        },
    }
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
        let timeout = settings.statement_timeout;
        let (pool, writer, inline) = match backend {
            Backend::Sqlite => {
                let writer =
                    ConnectionPool::connect(url, pool_config(backend, Role::ReadsAndWrites, 1, timeout)).await?;
                let readers = settings.max_connections.min(SQLITE_MAX_READERS);
                let pool = ConnectionPool::connect(url, pool_config(backend, Role::Reads, readers, timeout)).await?;
                // After the pools: they create the file and set it to WAL.
                let inline =
                    InlineSqlite::open(url, timeout).await.map_err(|err| sqlx::Error::AnyDriverError(err.into()))?;
                (pool, writer, Some(Arc::new(inline)))
            }
            Backend::Postgres => {
                let config = pool_config(backend, Role::ReadsAndWrites, settings.max_connections, timeout);
                let pool = ConnectionPool::connect(url, config).await?;
                (pool.clone(), pool, None)
            }
        };
        Ok(Self { pool, writer, inline, backend, crl_shards: quarry_core::crl::DEFAULT_SHARDS })
    }

    /// Revoked certificates are filed under `shards` CRL shards per issuer.
    pub fn with_crl_shards(mut self, shards: i64) -> Self {
        self.crl_shards = shards.max(1);
        self
    }

    /// The CRL shards per issuer that revoked certificates are filed under: the sa's `crl_shards`.
    pub fn crl_shards(&self) -> i64 {
        self.crl_shards
    }

    /// The CRL shard of `serial` (hex), as the ca computed it for the certificate's CRL distribution point.
    pub fn crl_shard(&self, serial: &str) -> i64 {
        quarry_core::crl::shard(serial, self.crl_shards)
    }

    /// Starts a transaction that will write. SQLite's `BEGIN IMMEDIATE` takes the write lock at once: a deferred
    /// transaction that reads and then writes fails with SQLITE_BUSY, without waiting, when another writer got in
    /// between (WAL snapshot rules); PostgreSQL's row locks need nothing of the kind.
    pub(crate) async fn begin_write(&self) -> Result<DbTransaction, Problem> {
        begin_on(&self.writer, self.backend.begin_write_statement()).await
    }

    /// SQLite's inline connections; an internal error on PostgreSQL, which has none.
    pub(crate) fn inline(&self) -> Result<&InlineSqlite, Problem> {
        self.inline.as_deref().ok_or_else(|| internal("SQLite's inline connections asked of another engine"))
    }

    /// Runs `work` in a write transaction on SQLite's inline writer ([`InlineSqlite::write`]), in the store's write
    /// turn: the sqlx writer's one connection is held meanwhile, so that this process's writes of either kind queue
    /// in one fair line, not race for SQLite's lock (the sqlx writer's busy handler polls it, and would lose to
    /// inline writes that follow each other closely).
    pub(crate) async fn write_inline<T>(
        &self,
        work: impl FnOnce(&InlineTransaction<'_>) -> Result<T, Problem>,
    ) -> Result<T, Problem> {
        let inline = self.inline()?;
        let _turn = self.writer.acquire().await.map_err(db_error)?;
        inline.write(work).await
    }

    /// Which engine this store talks to.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Sets the connection-pool gauges (`quarry_db_pool_connections{state=idle|in_use}`).
    pub fn record_pool_gauges(&self) {
        let (idle, in_use) = self.connections();
        metrics::gauge!("quarry_db_pool_connections", "state" => "idle").set(idle as f64);
        metrics::gauge!("quarry_db_pool_connections", "state" => "in_use").set(in_use as f64);
    }

    /// Every connection the store holds open, as (idle, in use): its pools' and, on SQLite, the inline ones.
    pub(crate) fn connections(&self) -> (usize, usize) {
        // On SQLite the writing connection is a pool of its own; on PostgreSQL `writer` is `pool` again.
        let pools: &[&ConnectionPool] = match self.backend {
            Backend::Sqlite => &[&self.pool, &self.writer],
            Backend::Postgres => &[&self.pool],
        };
        let size: usize = pools.iter().map(|pool| pool.size() as usize).sum();
        let idle: usize = pools.iter().map(|pool| pool.num_idle()).sum();
        let (inline_idle, inline_in_use) = self.inline.as_deref().map_or((0, 0), InlineSqlite::connections);
        (idle + inline_idle, size.saturating_sub(idle) + inline_in_use)
    }

    /// Checks that the database answers (for health checks).
    pub async fn ping(&self) -> Result<(), sqlx::Error> {
        let mut conn = self.pool.acquire().await?;
        let result = conn.ping().await;
        conn.observe(&result);
        result
    }

    /// Applies every migration not yet applied. Replicas of the sa start together: each migration runs in a
    /// transaction that first takes the database's write lock (SQLite) or an advisory lock (PostgreSQL), so the
    /// second replica waits, then finds it applied.
    async fn migrate(&self) -> Result<(), sqlx::Error> {
        for (version, name, sql) in self.backend.migrations() {
            let begin = self.backend.begin_write_statement();
            let mut tx = DbTransaction::begin(self.writer.acquire().await?, begin).await.map_err(|(err, _)| err)?;
            if self.backend == Backend::Postgres {
                sqlx::query(MIGRATION_LOCK).execute(&mut *tx).await?;
            }
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
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use quarry_core::ErrorKind;
    use quarry_testkit::db::TestDatabase;

    /// A fresh store of two connections on each database the tests have, with the database it is on.
    pub(in crate::store) async fn stores_on_every_backend() -> Vec<(TestDatabase, Store)> {
        let settings = PoolSettings { max_connections: 2, statement_timeout: Duration::from_secs(5) };
        let mut stores = Vec::new();
        for db in TestDatabase::every_backend().await {
            let store = Store::open(&db.url, settings).await.expect("open the store");
            stores.push((db, store));
        }
        stores
    }

    /// On SQLite every write has one connection of its own; the reading connections refuse to write, so a write
    /// sent to them fails in the tests instead of quietly competing for SQLite's write lock.
    #[tokio::test]
    async fn sqlite_reads_and_writes_go_to_their_own_connections() {
        let db = TestDatabase::sqlite();
        let settings = PoolSettings { max_connections: 8, statement_timeout: Duration::from_secs(5) };
        let store = Store::open(&db.url, settings).await.expect("open the store");
        let insert = "INSERT INTO schema_migrations (version, name, applied_at) VALUES (1000, 'test', 0)";
        let refused = sqlx::query(insert).execute(&store.pool).await.expect_err("a reading connection writes");
        assert!(refused.to_string().contains("readonly"), "{refused}");
        sqlx::query(insert).execute(&store.writer).await.expect("the writing connection writes");
        let seen: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM schema_migrations WHERE version = 1000")
            .fetch_one(&store.pool)
            .await
            .unwrap();
        assert_eq!(seen, 1, "a read after the write sees it");
        // Whatever `max_connections` says: one connection writes, at most SQLITE_MAX_READERS read.
        assert_eq!(store.writer.max_connections(), 1);
        assert_eq!(store.pool.max_connections(), SQLITE_MAX_READERS);
    }

    /// PostgreSQL ended every connection the pool holds (a restart, a failover, an administrator): once they have
    /// sat idle past `PING_IDLE_AFTER` they are checked before use and replaced, so nothing fails; one used sooner
    /// fails its statement as `unavailable`, which callers retry, not as an internal error; a transaction begins on
    /// a live one.
    #[tokio::test]
    async fn connections_postgresql_ended_are_unavailable_then_replaced() {
        let Some(db) = TestDatabase::postgres().await else {
            eprintln!("no PostgreSQL here ({} unset)", quarry_testkit::db::POSTGRES_ENV);
            return;
        };
        let settings = PoolSettings { max_connections: 2, statement_timeout: Duration::from_secs(5) };
        let store = Store::open(&db.url, settings).await.expect("open the store");
        let end_every_connection = || super::super::pool::tests::end_other_sessions(&db.url);
        let read = || sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM schema_migrations").fetch_one(&store.pool);

        read().await.expect("a first read");
        end_every_connection().await;
        tokio::time::sleep(PING_IDLE_AFTER + Duration::from_millis(200)).await;
        for _ in 0..3 {
            read().await.expect("a read after the connections sat idle");
        }

        end_every_connection().await;
        let problem = read().await.map_err(db_error).expect_err("a read on an ended connection");
        assert_eq!(problem.kind, ErrorKind::Unavailable, "{}", problem.detail);

        // A transaction's BEGIN on an ended connection has run nothing: it begins on another at once.
        for write in [true, false] {
            let store = Store::open_replica(&db.url, settings).await.expect("open the store again");
            sqlx::query("SELECT 1").execute(&store.pool).await.expect("a read that opens a connection");
            end_every_connection().await;
            let tx = if write { store.begin_write().await } else { begin_on(&store.pool, "BEGIN").await };
            tx.expect("a transaction begins on a live connection").commit().await.expect("commit");
        }
    }

    /// Independent writes joined into one statement: run on each database, every row is written, and a write that
    /// fails leaves none of them once the transaction is dropped.
    #[tokio::test]
    async fn writes_joined_into_one_statement_write_every_row_or_none() {
        for (db, store) in stores_on_every_backend().await {
            let writes = |first: i64| {
                vec![
                    format!("INSERT INTO schema_migrations (version, name, applied_at) VALUES ({first}, $1, $2)"),
                    format!("INSERT INTO schema_migrations (version, name, applied_at) VALUES ({}, $1, $3)", first + 1),
                    "INSERT INTO paused_identifiers (account_id, identifier_type, identifier_value, paused_at, unpaused_at) \
                     VALUES ($3, 'dns', $1, $2, 0)"
                        .to_owned(),
                ]
            };
            let joined = store.backend().one_statement(&writes(1000));
            let mut tx = store.begin_write().await.unwrap();
            sqlx::query(sqlx::AssertSqlSafe(joined))
                .bind("joined")
                .bind(5_i64)
                .bind(6_i64)
                .execute(&mut *tx)
                .await
                .unwrap_or_else(|e| panic!("{}: {e}", db.url));
            tx.commit().await.unwrap();
            assert_eq!(db.count("schema_migrations WHERE version IN (1000, 1001)").await, 2, "{}", db.url);
            assert_eq!(db.count("paused_identifiers WHERE identifier_value = 'joined'").await, 1, "{}", db.url);

            // 999 is free and 1000 taken: the statement fails, and the transaction dropped keeps nothing of it.
            let failing = store.backend().one_statement(&writes(999)[..2]);
            let mut tx = store.begin_write().await.unwrap();
            let taken = sqlx::query(sqlx::AssertSqlSafe(failing)).bind("again").bind(7_i64).bind(8_i64);
            let problem = taken.execute(&mut *tx).await.map_err(db_error).expect_err("a taken version");
            assert_eq!(problem.kind, ErrorKind::Duplicate, "{}: {}", db.url, problem.detail);
            drop(tx);
            assert_eq!(db.count("schema_migrations WHERE version = 999").await, 0, "{}", db.url);
        }
    }
}
