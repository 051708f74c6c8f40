//! The store's pool of database connections. sqlx's own pool pings every connection it takes back: a round trip to
//! PostgreSQL (or a hand-off to SQLite's thread) after every sa call. This one takes a connection back as it is, and
//! checks it only when something may be wrong with it: a transaction left open, a connection error seen anywhere in
//! the store while it was out, or a PostgreSQL connection idle past `ping_idle_after`.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::FutureExt;
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

/// Whether a PostgreSQL error code says the server ended the session: connection exceptions (`08…`), an
/// administrator or a shutdown ending it, the database dropped, an idle or idle-in-transaction session timeout.
pub(crate) fn ends_session(code: &str) -> bool {
    code.starts_with("08") || matches!(code, "57P01" | "57P02" | "57P04" | "57P05" | "25P03")
}

/// Whether `err` may leave its connection unusable (an I/O or protocol failure; PostgreSQL ending the session).
pub(crate) fn may_break_connection(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Io(_) | sqlx::Error::Protocol(_) | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| ends_session(&code)),
        _ => false,
    }
}

/// Whether opening a connection may succeed if tried again: the server not listening yet or going away, or
/// PostgreSQL starting up (`57P03`), as during a restart or a failover; or SQLite busy in the setup, which happens
/// when replicas open a fresh file together: their connections all set it to WAL at once, and SQLite answers one
/// that would deadlock waiting at once, without waiting out its busy timeout. A refused login or a bad URL is final.
fn may_connect_later(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Database(db) => {
            db.code().is_some_and(|code| code == "57P03" || ends_session(&code) || sqlite_busy(&code))
        }
        other => may_break_connection(other),
    }
}

/// SQLite's `SQLITE_BUSY` and its extended codes (recovery, snapshot, timeout); PostgreSQL's codes are five
/// characters, so none is mistaken for these.
pub(crate) fn sqlite_busy(code: &str) -> bool {
    matches!(code, "5" | "261" | "517" | "773")
}

/// The longest a returning connection's check (its ping or `ROLLBACK`) may take before it is closed instead: a
/// server that vanished without a reset never answers, and the check holds a place in the pool meanwhile.
const RETURN_CHECK_TIMEOUT: Duration = Duration::from_secs(5);

/// The longest the ping of a connection idle past `ping_idle_after` may take before another is used.
const IDLE_PING_TIMEOUT: Duration = Duration::from_secs(1);

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

    /// Opens a connection and sets it up, trying again with a growing pause while the server may soon take it,
    /// until `deadline`: calls wait out a database restart instead of failing at once.
    async fn open_connection(&self, deadline: tokio::time::Instant) -> Result<Conn, sqlx::Error> {
        let mut pause = Duration::from_millis(10);
        loop {
            let attempt = async {
                let mut raw = self.options.connect().await?;
                raw.execute(sqlx::raw_sql(sqlx::AssertSqlSafe(self.config.setup.clone()))).await?;
                Ok::<_, sqlx::Error>(raw)
            };
            match tokio::time::timeout_at(deadline, attempt).await {
                Err(_) => return Err(sqlx::Error::PoolTimedOut),
                Ok(Ok(raw)) => return Ok(Conn { raw, created: Instant::now(), counted: Counted::new(&self.open) }),
                Ok(Err(err)) if may_connect_later(&err) && tokio::time::Instant::now() + pause < deadline => {
                    tracing::debug!(%err, "the database refused a connection; trying again");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(1));
                }
                Ok(Err(err)) => return Err(err),
            }
        }
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
                break shared.open_connection(deadline).await?;
            };
            match shared.config.ping_idle_after {
                // Bounded too: a connection whose server vanished without a reset may never answer.
                Some(after) if since.elapsed() > after => {
                    let limit = deadline.min(tokio::time::Instant::now() + IDLE_PING_TIMEOUT);
                    match tokio::time::timeout_at(limit, conn.raw.ping()).await {
                        Ok(Ok(())) => break conn,
                        Ok(Err(err)) => tracing::info!(%err, "an idle connection had ended; replacing it"),
                        Err(_) => tracing::info!("an idle connection did not answer; replacing it"),
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
    /// A `BEGIN` was sent on it, or may have been (its call was cancelled), and no `COMMIT` has succeeded since.
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
    pub(crate) fn observe<T>(&mut self, result: &Result<T, sqlx::Error>) {
        if let Err(err) = result {
            self.observe_error(err);
        }
    }

    fn observe_error(&mut self, err: &sqlx::Error) {
        if may_break_connection(err) {
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
        // A statement cancelled mid-way leaves PostgreSQL's answer to read: sqlx's flush reads what is pending,
        // and is ready at once, without I/O, when nothing is. (On SQLite it does nothing: the connection's thread
        // finishes or drops the statement before its next command.)
        let settled = matches!(conn.raw.flush().now_or_never(), Some(Ok(())));
        if settled && !self.rollback_on_return && !trouble {
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
            let check = async {
                match rollback {
                    // Also when no transaction began (a `BEGIN` cancelled before it left): PostgreSQL only
                    // warns; SQLite's refusal discards the connection, a rare and cheap loss.
                    true => sqlx::raw_sql("ROLLBACK").execute(&mut conn.raw).await.is_ok(),
                    false => conn.raw.ping().await.is_ok(),
                }
            };
            if let Ok(true) = tokio::time::timeout(RETURN_CHECK_TIMEOUT, check).await {
                shared.put_idle(conn);
            }
            drop(permit);
        });
    }
}

/// A transaction on a pooled connection: `COMMIT`ted by [`DbTransaction::commit`], rolled back when dropped
/// without it (by the pool, before the connection is used again). `BEGIN` and `COMMIT` are plain statements, so
/// sqlx's own transaction depth stays at zero: sqlx's `begin` on it would send another `BEGIN`, not a savepoint.
pub(crate) struct DbTransaction {
    conn: PooledConnection,
}

impl DbTransaction {
    /// Begins a transaction with `begin` (`BEGIN`, `BEGIN IMMEDIATE`, …). On failure the connection comes back
    /// with the error; a connection the error may have broken is marked to be discarded.
    pub(crate) async fn begin(
        mut conn: PooledConnection,
        begin: &'static str,
    ) -> Result<Self, (sqlx::Error, PooledConnection)> {
        // Marked before the `BEGIN` leaves: if this call is cancelled while it runs, the transaction it may have
        // opened is rolled back before anyone else uses the connection.
        conn.rollback_on_return = true;
        let result = sqlx::raw_sql(begin).execute(&mut *conn).await;
        conn.observe(&result);
        match result {
            Ok(_) => Ok(Self { conn }),
            Err(err) => {
                // The database answered with a refusal: no transaction began.
                if matches!(err, sqlx::Error::Database(_)) {
                    conn.rollback_on_return = false;
                }
                Err((err, conn))
            }
        }
    }

    pub(crate) async fn commit(mut self) -> Result<(), sqlx::Error> {
        let result = sqlx::raw_sql("COMMIT").execute(&mut *self.conn).await;
        self.conn.observe(&result);
        result?;
        self.conn.rollback_on_return = false;
        Ok(())
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
            results.iter().for_each(|result| conn.observe(result));
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
pub(super) mod tests;
