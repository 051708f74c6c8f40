//! The store's pool of database connections. sqlx's own pool pings every connection it takes back: a round trip to
//! PostgreSQL (or a hand-off to SQLite's thread) after every sa call. This one takes a connection back as it is, and
//! checks it only when something may be wrong with it: a transaction left open, a connection error seen anywhere in
//! the store while it was out, or a PostgreSQL connection idle past `ping_idle_after`.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use futures::stream::{self, BoxStream, StreamExt};
use sqlx::any::{AnyConnectOptions, AnyQueryResult, AnyRow, AnyStatement, AnyTypeInfo};
use sqlx::{Any, AnyConnection, ConnectOptions, Connection, Either, Execute, Executor, SqlStr};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// A connection older than this is closed when it comes back, so that connections move to a replaced or failed-over
/// server in time (sqlx's pool default).
const MAX_LIFETIME: Duration = Duration::from_secs(30 * 60);

/// An idle connection unused this long is closed (sqlx's pool default).
const IDLE_TIMEOUT: Duration = Duration::from_secs(10 * 60);

/// Bumped whenever a statement fails in a way that may have broken its connection. A connection that was out while
/// it moved is checked before it is pooled again: the error may have been its own, seen by a caller that holds it
/// through `Deref` where the pool cannot look.
static CONNECTION_TROUBLE: AtomicU64 = AtomicU64::new(0);

/// Whether `err` may leave its connection unusable (an I/O or protocol failure; PostgreSQL ending the session).
pub(crate) fn may_break_connection(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Io(_) | sqlx::Error::Protocol(_) | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => {
            db.code().is_some_and(|code| code.starts_with("08") || matches!(&*code, "57P01" | "57P02"))
        }
        _ => false,
    }
}

/// Records that some connection may have broken (see [`CONNECTION_TROUBLE`]).
pub(crate) fn note_connection_trouble() {
    CONNECTION_TROUBLE.fetch_add(1, Ordering::Relaxed);
}

/// How a pool makes and keeps its connections.
#[derive(Debug, Clone)]
pub(crate) struct PoolConfig {
    /// Connections at most, in use and idle together.
    pub max_connections: u32,
    /// The longest a caller waits for a connection, opening one included.
    pub acquire_timeout: Duration,
    /// SQL run on every new connection before its first use.
    pub setup: String,
    /// An idle connection unused longer than this is pinged before it is handed out (`None`: never).
    pub ping_idle_after: Option<Duration>,
}

/// A bounded pool of connections to one database; cheap to clone.
#[derive(Clone)]
pub(crate) struct ConnectionPool {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for ConnectionPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectionPool")
            .field("max_connections", &self.shared.config.max_connections)
            .field("open", &self.size())
            .field("idle", &self.num_idle())
            .finish()
    }
}

struct Shared {
    options: AnyConnectOptions,
    config: PoolConfig,
    /// One permit per connection that may be out at once.
    permits: Arc<Semaphore>,
    /// Connections not in use, the most recently used last: handed out last-in first-out, so that the connections
    /// in use keep warm caches and the ones not needed age out.
    idle: Mutex<Vec<IdleConnection>>,
    /// Connections open, in use or idle (each [`Conn`] counts itself).
    open: Arc<AtomicU32>,
}

/// An open connection, counted in its pool's `open` for as long as it lives.
struct Conn {
    raw: AnyConnection,
    created: Instant,
    counted: Counted,
}

/// One in a pool's count of open connections, until dropped.
struct Counted(Arc<AtomicU32>);

impl Counted {
    fn new(open: &Arc<AtomicU32>) -> Self {
        open.fetch_add(1, Ordering::Relaxed);
        Self(open.clone())
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

struct IdleConnection {
    conn: Conn,
    since: Instant,
}

impl Shared {
    fn take_idle(&self) -> Option<IdleConnection> {
        let mut idle = self.idle.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        // The oldest sit first: those unused past the idle timeout close.
        let expired = idle.iter().take_while(|c| c.since.elapsed() > IDLE_TIMEOUT).count();
        idle.drain(..expired).for_each(|expired| close_in_background(expired.conn));
        idle.pop()
    }

    fn put_idle(&self, conn: Conn) {
        let mut idle = self.idle.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        idle.push(IdleConnection { conn, since: Instant::now() });
    }

    async fn open_connection(&self) -> Result<Conn, sqlx::Error> {
        let mut raw = self.options.connect().await?;
        raw.execute(sqlx::raw_sql(sqlx::AssertSqlSafe(self.config.setup.clone()))).await?;
        Ok(Conn { raw, created: Instant::now(), counted: Counted::new(&self.open) })
    }
}

/// Closes `conn` politely (PostgreSQL's `Terminate`) in a task of its own; outside a runtime it is just dropped.
fn close_in_background(conn: Conn) {
    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
        runtime.spawn(async move {
            let Conn { raw, counted, .. } = conn;
            let _ = raw.close().await;
            drop(counted);
        });
    }
}

impl ConnectionPool {
    /// A pool of connections to `url`; one is opened at once, so that a database that cannot be reached fails here.
    pub(crate) async fn connect(url: &str, config: PoolConfig) -> Result<Self, sqlx::Error> {
        let options: AnyConnectOptions = url.parse()?;
        let max_connections = config.max_connections.max(1);
        let config = PoolConfig { max_connections, ..config };
        let shared = Shared {
            options,
            permits: Arc::new(Semaphore::new(max_connections as usize)),
            idle: Mutex::new(Vec::with_capacity(max_connections as usize)),
            open: Arc::new(AtomicU32::new(0)),
            config,
        };
        let pool = Self { shared: Arc::new(shared) };
        drop(pool.acquire().await?);
        Ok(pool)
    }

    pub(crate) fn max_connections(&self) -> u32 {
        self.shared.config.max_connections
    }

    /// Connections open, in use or idle.
    pub(crate) fn size(&self) -> u32 {
        self.shared.open.load(Ordering::Relaxed)
    }

    pub(crate) fn num_idle(&self) -> usize {
        self.shared.idle.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).len()
    }

    /// A connection for the caller alone until the returned guard drops: an idle one if there is one (pinged first
    /// if it idled past `ping_idle_after`, and replaced if the ping fails), else a new one. Waits at most the
    /// acquire timeout for a free place.
    pub(crate) async fn acquire(&self) -> Result<PooledConnection, sqlx::Error> {
        let shared = &self.shared;
        let deadline = tokio::time::Instant::now() + shared.config.acquire_timeout;
        let permit = tokio::time::timeout_at(deadline, shared.permits.clone().acquire_owned())
            .await
            .map_err(|_| sqlx::Error::PoolTimedOut)?
            .map_err(|_| sqlx::Error::PoolClosed)?;
        let trouble_at_checkout = CONNECTION_TROUBLE.load(Ordering::Relaxed);
        let conn = loop {
            let Some(IdleConnection { mut conn, since }) = shared.take_idle() else {
                break tokio::time::timeout_at(deadline, shared.open_connection())
                    .await
                    .map_err(|_| sqlx::Error::PoolTimedOut)??;
            };
            match shared.config.ping_idle_after {
                // Within the acquire timeout too: a connection whose server vanished may never answer.
                Some(after) if since.elapsed() > after => {
                    match tokio::time::timeout_at(deadline, conn.raw.ping()).await {
                        Ok(Ok(())) => break conn,
                        Ok(Err(err)) => tracing::info!(%err, "an idle connection had ended; replacing it"),
                        Err(_) => return Err(sqlx::Error::PoolTimedOut),
                    }
                }
                _ => break conn,
            }
        };
        Ok(PooledConnection {
            conn: Some(conn),
            shared: self.shared.clone(),
            permit: Some(permit),
            trouble_at_checkout,
            rollback_on_return: false,
            discard: false,
        })
    }
}

/// A connection taken from a [`ConnectionPool`]; it goes back when this drops.
pub(crate) struct PooledConnection {
    conn: Option<Conn>,
    shared: Arc<Shared>,
    /// Released after the connection is back among the idle ones, so that a waiter finds it there.
    permit: Option<OwnedSemaphorePermit>,
    trouble_at_checkout: u64,
    /// A transaction began on it and was neither committed nor rolled back.
    rollback_on_return: bool,
    /// Closed instead of pooled again.
    discard: bool,
}

impl PooledConnection {
    /// Closes the connection when it is returned instead of pooling it again.
    pub(crate) fn discard(&mut self) {
        self.discard = true;
    }

    /// Notes what `result` says about the connection: an error that may have broken it discards it.
    fn observe<T>(&mut self, result: &Result<T, sqlx::Error>) {
        if let Err(err) = result
            && may_break_connection(err)
        {
            self.discard();
        }
    }
}

impl std::ops::Deref for PooledConnection {
    type Target = AnyConnection;

    fn deref(&self) -> &AnyConnection {
        &self.conn.as_ref().expect("a pooled connection is held until its guard drops").raw
    }
}

impl std::ops::DerefMut for PooledConnection {
    fn deref_mut(&mut self) -> &mut AnyConnection {
        &mut self.conn.as_mut().expect("a pooled connection is held until its guard drops").raw
    }
}

impl Drop for PooledConnection {
    fn drop(&mut self) {
        let Some(mut conn) = self.conn.take() else { return };
        let permit = self.permit.take();
        if self.discard {
            return;
        }
        if conn.created.elapsed() > MAX_LIFETIME {
            return close_in_background(conn);
        }
        let trouble = CONNECTION_TROUBLE.load(Ordering::Relaxed) != self.trouble_at_checkout;
        if !self.rollback_on_return && !trouble {
            self.shared.put_idle(conn);
            drop(permit);
            return;
        }
        // A check needs the connection's next round trip: it runs in a task of its own, holding the connection's
        // place until it is done. Outside a runtime (a pool dropped at shutdown) the connection just closes.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
        let shared = self.shared.clone();
        let rollback = self.rollback_on_return;
        runtime.spawn(async move {
            let alive = match rollback {
                // A database error answers from a live connection (SQLite had already ended the transaction).
                true => match sqlx::raw_sql("ROLLBACK").execute(&mut conn.raw).await {
                    Ok(_) => true,
                    Err(err) => !may_break_connection(&err),
                },
                false => conn.raw.ping().await.is_ok(),
            };
            if alive {
                shared.put_idle(conn);
            }
            drop(permit);
        });
    }
}

/// A transaction on a pooled connection: `COMMIT`ted by [`DbTransaction::commit`], rolled back when dropped
/// without it (by the pool, before the connection is used again).
pub(crate) struct DbTransaction {
    conn: PooledConnection,
    open: bool,
}

impl DbTransaction {
    /// Begins a transaction with `begin` (`BEGIN`, `BEGIN IMMEDIATE`, …). On failure the connection comes back
    /// with the error; a connection the error may have broken is marked to be discarded.
    pub(crate) async fn begin(
        mut conn: PooledConnection,
        begin: &'static str,
    ) -> Result<Self, (sqlx::Error, PooledConnection)> {
        let result = sqlx::raw_sql(begin).execute(&mut *conn).await;
        conn.observe(&result);
        match result {
            Ok(_) => Ok(Self { conn, open: true }),
            Err(err) => Err((err, conn)),
        }
    }

    pub(crate) async fn commit(mut self) -> Result<(), sqlx::Error> {
        let result = sqlx::raw_sql("COMMIT").execute(&mut *self.conn).await;
        self.conn.observe(&result);
        result?;
        self.open = false;
        Ok(())
    }
}

impl Drop for DbTransaction {
    fn drop(&mut self) {
        if self.open {
            self.conn.rollback_on_return = true;
        }
    }
}

impl std::ops::Deref for DbTransaction {
    type Target = AnyConnection;

    fn deref(&self) -> &AnyConnection {
        &self.conn
    }
}

impl std::ops::DerefMut for DbTransaction {
    fn deref_mut(&mut self) -> &mut AnyConnection {
        &mut self.conn
    }
}

/// A statement on the pool runs on a connection taken for it alone, as with sqlx's pool. Rows are gathered before
/// the connection goes back: the store reads every row of what it asks anyway.
impl<'p> Executor<'p> for &'_ ConnectionPool {
    type Database = Any;

    fn fetch_many<'e, 'q: 'e, E>(self, query: E) -> BoxStream<'e, Result<Either<AnyQueryResult, AnyRow>, sqlx::Error>>
    where
        'p: 'e,
        E: 'q + Execute<'q, Any>,
    {
        let pool = self.clone();
        let results = async move {
            let mut conn = match pool.acquire().await {
                Ok(conn) => conn,
                Err(err) => return vec![Err(err)],
            };
            let results: Vec<_> = (&mut *conn).fetch_many(query).collect().await;
            if results.iter().any(|result| matches!(result, Err(err) if may_break_connection(err))) {
                conn.discard();
            }
            results
        };
        Box::pin(stream::once(results).flat_map(stream::iter))
    }

    fn fetch_optional<'e, 'q: 'e, E>(self, query: E) -> BoxFuture<'e, Result<Option<AnyRow>, sqlx::Error>>
    where
        'p: 'e,
        E: 'q + Execute<'q, Any>,
    {
        let pool = self.clone();
        Box::pin(async move {
            let mut conn = pool.acquire().await?;
            let result = (&mut *conn).fetch_optional(query).await;
            conn.observe(&result);
            result
        })
    }

    fn prepare_with<'e>(
        self,
        sql: SqlStr,
        parameters: &'e [AnyTypeInfo],
    ) -> BoxFuture<'e, Result<AnyStatement, sqlx::Error>>
    where
        'p: 'e,
    {
        let pool = self.clone();
        Box::pin(async move {
            let mut conn = pool.acquire().await?;
            let result = (&mut *conn).prepare_with(sql, parameters).await;
            conn.observe(&result);
            result
        })
    }
}

#[cfg(test)]
mod tests {
    use quarry_testkit::db::TestDatabase;

    use super::*;

    fn config(max_connections: u32) -> PoolConfig {
        PoolConfig {
            max_connections,
            acquire_timeout: Duration::from_millis(300),
            setup: "SELECT 1".to_owned(),
            ping_idle_after: None,
        }
    }

    async fn connect(url: &str, max_connections: u32) -> ConnectionPool {
        sqlx::any::install_default_drivers();
        super::super::database::create_parent_dir(url);
        ConnectionPool::connect(url, config(max_connections)).await.expect("connect the pool")
    }

    async fn begin(pool: &ConnectionPool) -> DbTransaction {
        let conn = pool.acquire().await.expect("a connection");
        DbTransaction::begin(conn, "BEGIN").await.map_err(|(err, _)| err).expect("begin")
    }

    /// Ends every other session on `url`'s database and waits until they are gone.
    async fn end_other_sessions(url: &str) {
        let mut admin = AnyConnection::connect(url).await.expect("connect");
        let ended: Vec<bool> = sqlx::query_scalar(
            "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()",
        )
        .fetch_all(&mut admin)
        .await
        .expect("end the pool's sessions");
        assert!(!ended.is_empty() && ended.iter().all(|e| *e), "{ended:?}");
    }

    /// Waits, bounded, until `pool` holds `open` connections of which `idle` are idle: a connection checked on its
    /// return (as every connection out is while another test reports a connection error) is checked in a task of
    /// its own.
    async fn until_counts(pool: &ConnectionPool, open: u32, idle: usize) {
        for _ in 0..200 {
            if (pool.size(), pool.num_idle()) == (open, idle) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the pool holds {} connections, {} idle, not {open} and {idle}", pool.size(), pool.num_idle());
    }

    /// At most `max_connections` are out at once; a caller past the acquire timeout is told the pool timed out, a
    /// waiter gets a connection as soon as one comes back, and connections come back to be handed out again.
    #[tokio::test]
    async fn a_pool_lends_at_most_its_connections_and_takes_them_back() {
        let db = TestDatabase::sqlite();
        let pool = connect(&db.url, 2).await;
        assert_eq!((pool.size(), pool.num_idle()), (1, 1), "connecting opens one connection");
        let first = pool.acquire().await.unwrap();
        let second = pool.acquire().await.unwrap();
        assert_eq!((pool.size(), pool.num_idle()), (2, 0));
        assert!(matches!(pool.acquire().await, Err(sqlx::Error::PoolTimedOut)), "a third waits past the timeout");

        let waiter = tokio::spawn({
            let pool = pool.clone();
            async move { pool.acquire().await.map(drop) }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        drop(first);
        waiter.await.unwrap().expect("a waiter gets the connection that came back");
        drop(second);
        until_counts(&pool, 2, 2).await;
        let read: i64 = sqlx::query_scalar("SELECT 7").fetch_one(&pool).await.unwrap();
        assert_eq!((read, pool.size()), (7, 2), "a statement on the pool reuses an idle connection");
    }

    /// A connection goes back to the pool as it is, with no round trip to check it: PostgreSQL's view of the
    /// session shows the caller's statement as its last (sqlx's own pool would show its ping).
    #[tokio::test]
    async fn a_connection_goes_back_without_a_round_trip() {
        let Some(db) = TestDatabase::postgres().await else {
            eprintln!("no PostgreSQL here ({} unset)", quarry_testkit::db::POSTGRES_ENV);
            return;
        };
        let pool = connect(&db.url, 1).await;
        let mut admin = AnyConnection::connect(&db.url).await.expect("connect");
        // Another test's connection error makes every connection out meanwhile get checked: try again then.
        for _ in 0..10 {
            let trouble = CONNECTION_TROUBLE.load(Ordering::Relaxed);
            let pid: i32 =
                sqlx::query_scalar("SELECT pg_backend_pid() /* the caller's */").fetch_one(&pool).await.unwrap();
            let last: String = sqlx::query_scalar("SELECT query FROM pg_stat_activity WHERE pid = $1")
                .bind(pid)
                .fetch_one(&mut admin)
                .await
                .unwrap();
            if CONNECTION_TROUBLE.load(Ordering::Relaxed) == trouble {
                assert!(last.contains("the caller's"), "the session's last statement: {last}");
                assert_eq!(pool.num_idle(), 1);
                return;
            }
        }
        panic!("other tests kept reporting connection errors");
    }

    /// A transaction dropped without a commit is rolled back before its connection serves anyone again: on the
    /// pool's one connection a new transaction begins, and only what it commits is kept.
    #[tokio::test]
    async fn a_transaction_dropped_is_rolled_back_before_its_connection_is_reused() {
        for db in TestDatabase::every_backend().await {
            let pool = connect(&db.url, 1).await;
            sqlx::raw_sql("CREATE TABLE marks (n BIGINT)").execute(&pool).await.unwrap();
            let mut dropped = begin(&pool).await;
            sqlx::query("INSERT INTO marks (n) VALUES (1)").execute(&mut *dropped).await.unwrap();
            drop(dropped);

            let mut kept = begin(&pool).await;
            sqlx::query("INSERT INTO marks (n) VALUES (2)").execute(&mut *kept).await.unwrap();
            kept.commit().await.expect("commit");
            assert_eq!(db.count("marks").await, 1, "{}", db.url);
            assert_eq!(db.count("marks WHERE n = 2").await, 1, "{}", db.url);
            until_counts(&pool, 1, 1).await;
        }
    }

    /// A connection whose statement found it ended is closed instead of pooled again, whether the statement ran on
    /// the pool itself or on a connection the caller held (whose error the store maps with `db_error`): the next
    /// statement opens a live one.
    #[tokio::test]
    async fn a_connection_found_ended_is_not_pooled_again() {
        let Some(db) = TestDatabase::postgres().await else {
            eprintln!("no PostgreSQL here ({} unset)", quarry_testkit::db::POSTGRES_ENV);
            return;
        };
        let pool = connect(&db.url, 1).await;
        end_other_sessions(&db.url).await;
        let err = sqlx::query("SELECT 1").execute(&pool).await.expect_err("a statement on an ended session");
        assert!(may_break_connection(&err), "{err}");
        assert_eq!(pool.size(), 0, "the ended connection is closed");
        sqlx::query("SELECT 1").execute(&pool).await.expect("a statement on a new connection");

        let mut held = pool.acquire().await.unwrap();
        end_other_sessions(&db.url).await;
        let err = sqlx::query("SELECT 1").execute(&mut *held).await.expect_err("a statement on an ended session");
        let problem = super::super::database::db_error(err);
        assert_eq!(problem.kind, quarry_core::ErrorKind::Unavailable, "{}", problem.detail);
        drop(held);
        until_counts(&pool, 0, 0).await;
        sqlx::query("SELECT 1").execute(&pool).await.expect("a statement on a new connection");
    }
}
