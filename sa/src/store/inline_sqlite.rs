//! SQLite run on the calling task's own thread, for the statements of the certificate path. sqlx runs every SQLite
//! connection on a thread of its own: each statement is handed to that thread and its answer handed back, two
//! wake-ups that cost more than the statement (measured: pinned to one CPU, where a wake-up is cheap, the sa spent
//! 17 % less). These connections are rusqlite's, used in place: a read or a write transaction runs to its end
//! without yielding, as it takes SQLite tens to hundreds of microseconds. Only taking SQLite's write lock may wait,
//! and it waits here by sleeping, not by blocking the thread (`busy_timeout` 0, retried), since another sa replica
//! or the store's sqlx writer may hold it.
//!
//! The writer never checkpoints the WAL itself (SQLite's automatic checkpoint would run in the commit that crosses
//! its threshold, on this thread, and a checkpoint syncs the WAL and the database file to disk): every
//! [`COMMITS_PER_CHECKPOINT`] commits a checkpoint runs on a blocking thread, on a connection of its own, while it
//! holds the writer, so that inline writes wait for it asynchronously and it copies the whole WAL (a checkpoint
//! racing a writer never catches up under steady load, and the WAL, restarted only once wholly copied, would grow
//! without end).
//!
//! The store's other statements (accounts, revocation, CRLs, the sweeper's) stay on sqlx; both kinds of connection
//! open the same file, in WAL mode, so each reads what the other committed.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, TryLockError};
use std::time::{Duration, Instant};

use quarry_core::Problem;
use rusqlite::types::Value;
use rusqlite::{Connection, OpenFlags, ffi};

use super::errors::{Refusal, internal, refused};
use super::rows::InlineRow;
use super::statements::{Param, Statement};

/// Idle reading connections kept: each is used by one thread at a time, so no more than the runtime's worker
/// threads, one per CPU, are needed at once. Asked once, at open: the standard library reads the CPU affinity and
/// the cgroup's quota from files each time.
fn max_idle_readers() -> usize {
    std::thread::available_parallelism().map_or(2, usize::from).max(2)
}

/// Prepared statements kept per connection (each reader, the writer, the checkpoints' connection): every statement
/// of the certificate path, reads and writes alike since the writer runs reads too, and the dynamic ones (links of
/// orders of several sizes, flag reads) that repeat.
const STATEMENT_CACHE: usize = 256;

/// The most statements one batch of reads may run on the writer, holding off writes meanwhile (see
/// [`InlineSqlite::read`]): a certificate's reads are batches of one to a few, a new order's one per name and a few.
const READS_ON_THE_WRITER: usize = 8;

/// The first pause while another connection holds the write lock, and the longest; the lock is held for a
/// transaction's length, well under a millisecond on the certificate path.
const FIRST_BUSY_PAUSE: Duration = Duration::from_millis(1);
const LONGEST_BUSY_PAUSE: Duration = Duration::from_millis(10);

/// Commits of the inline writer between two checkpoints: a certificate's steps write about 50 pages, so the WAL
/// holds a few megabytes at most between checkpoints, as with SQLite's own threshold of 1,000 pages.
pub(crate) const COMMITS_PER_CHECKPOINT: u64 = 64;

/// The WAL checkpoints, run away from the commits: their own connection, and whether one is under way.
struct Checkpoints {
    path: String,
    read_only: bool,
    commits_since: AtomicU64,
    running: AtomicBool,
    connection: Mutex<Option<Connection>>,
}

impl Checkpoints {
    /// Counts a commit, and every [`COMMITS_PER_CHECKPOINT`] commits, unless a checkpoint is under way, starts
    /// one: it takes `writer` (once the commit's own write lets it go), then checkpoints on a blocking thread.
    /// Passive: it waits for no reader, and copies all but what a reader still reads.
    fn committed(self: &Arc<Self>, writer: &Arc<tokio::sync::Mutex<Connection>>) {
        if self.commits_since.fetch_add(1, Ordering::Relaxed) + 1 < COMMITS_PER_CHECKPOINT
            || self.running.swap(true, Ordering::AcqRel)
        {
            return;
        }
        self.commits_since.store(0, Ordering::Relaxed);
        let (checkpoints, writer) = (Arc::clone(self), Arc::clone(writer));
        drop(tokio::spawn(async move {
            let held = writer.lock_owned().await;
            let done = tokio::task::spawn_blocking({
                let checkpoints = Arc::clone(&checkpoints);
                move || {
                    if let Err(err) = checkpoints.checkpoint() {
                        tracing::warn!(%err, "WAL checkpoint failed");
                    }
                    drop(held);
                }
            });
            let _ = done.await;
            checkpoints.running.store(false, Ordering::Release);
        }));
    }

    fn checkpoint(&self) -> Result<(), rusqlite::Error> {
        let mut connection = self.connection.lock().unwrap_or_else(PoisonError::into_inner);
        let conn = match connection.as_mut() {
            Some(conn) => conn,
            None => connection.insert(open_connection(&self.path, Opened::Writer { read_only: self.read_only })?),
        };
        conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
    }
}

/// The inline connections to one SQLite file: one that writes, and readers opened as threads need them.
pub(crate) struct InlineSqlite {
    path: String,
    /// Whether the URL asked for the file read-only (`mode=ro`): every connection is opened so.
    read_only: bool,
    writer: Arc<tokio::sync::Mutex<Connection>>,
    readers: Mutex<Vec<Connection>>,
    /// Readers taken and not yet given back: in use.
    readers_out: AtomicUsize,
    /// The most idle readers kept ([`max_idle_readers`]).
    max_idle_readers: usize,
    /// How long a read or a write waits for SQLite's locks before failing as busy: the store's statement timeout.
    busy_for: Duration,
    checkpoints: Arc<Checkpoints>,
}

/// A write transaction under way on the inline writer: statements run in it, committed when the work returns
/// `Ok`. Dropped uncommitted (the work failed, or panicked), it is rolled back at once: an open transaction holds
/// SQLite's write lock against every other writer, the store's sqlx writer and other sa replicas among them.
pub(crate) struct InlineTransaction<'c>(&'c Connection);

impl Drop for InlineTransaction<'_> {
    fn drop(&mut self) {
        if !self.0.is_autocommit() {
            // A rollback that fails leaves it open: the next write rolls it back before its `BEGIN`.
            let _ = self.0.execute_batch("ROLLBACK");
        }
    }
}

impl InlineTransaction<'_> {
    /// Runs `statement` (all its parts) and answers its rows.
    pub(crate) fn run(&self, statement: &Statement) -> Result<Vec<InlineRow>, Problem> {
        run(self.0, statement).map_err(inline_error)
    }
}

/// The file an `sqlite:` URL names, percent-decoded as sqlx decodes it (`%3F` for a `?` in a name, `%20` for a
/// space), so that the inline connections open the file the store's pools opened.
pub(crate) fn path_of_url(url: &str) -> String {
    let path = url.trim_start_matches("sqlite://").trim_start_matches("sqlite:");
    let encoded = path.split('?').next().unwrap_or_default();
    percent_encoding::percent_decode_str(encoded).decode_utf8_lossy().into_owned()
}

impl InlineSqlite {
    /// Opens the writer on the SQLite file of `url`, which the store's sqlx pools have created, set to WAL and
    /// migrated. Another replica starting on the same file may hold a lock its setup needs for a moment (setting
    /// WAL, migrating): that is waited for as any other lock, up to `busy_for`.
    pub(crate) async fn open(url: &str, busy_for: Duration) -> Result<Self, rusqlite::Error> {
        let path = path_of_url(url);
        let read_only = url.split_once('?').is_some_and(|(_, query)| query.split('&').any(|kv| kv == "mode=ro"));
        let mut waiting = BusyWait::new(busy_for);
        let writer = loop {
            let opened = open_connection(&path, Opened::Writer { read_only })
                .and_then(|writer| writer.execute_batch("PRAGMA wal_autocheckpoint = 0").map(|()| writer));
            match opened {
                Err(err) if is_busy(&err) && waiting.may_wait() => waiting.pause().await,
                other => break other?,
            }
        };
        let checkpoints = Arc::new(Checkpoints {
            path: path.clone(),
            read_only,
            commits_since: AtomicU64::new(0),
            running: AtomicBool::new(false),
            connection: Mutex::new(None),
        });
        Ok(Self {
            path,
            read_only,
            writer: Arc::new(tokio::sync::Mutex::new(writer)),
            readers: Mutex::new(Vec::new()),
            readers_out: AtomicUsize::new(0),
            max_idle_readers: max_idle_readers(),
            busy_for,
            checkpoints,
        })
    }

    /// The rows of each of `reads`, in their order, each read seeing the database as it is when it runs.
    ///
    /// On the writer when it is free and between transactions, else on a reader. SQLite empties a connection's
    /// page cache whenever another connection has committed since its last read, so a reader read back from the
    /// file every page the certificate path's writes had just changed; the writer wrote them and still holds them
    /// (measured: page reads were about 4 % of the sa's CPU). The reads run to their end without yielding, so a
    /// write on another worker waits for them: only batches of at most [`READS_ON_THE_WRITER`] statements run there
    /// (a new order's reads grow with its names), and a write already waiting has the lock passed to it first.
    pub(crate) async fn read(&self, reads: &[Statement]) -> Result<Vec<Vec<InlineRow>>, Problem> {
        let mut waiting = BusyWait::new(self.busy_for);
        loop {
            let on_writer = (reads.len() <= READS_ON_THE_WRITER)
                .then(|| self.writer.try_lock().ok())
                .flatten()
                .filter(|writer| writer.is_autocommit());
            let run_all = |conn: &Connection| -> Result<Vec<Vec<InlineRow>>, rusqlite::Error> {
                reads.iter().map(|read| run_read_only(conn, read)).collect()
            };
            let answers = match on_writer {
                Some(writer) => run_all(&writer),
                None => self.take_reader().and_then(|conn| {
                    let answers = run_all(&conn);
                    self.give_back_reader(conn);
                    answers
                }),
            };
            match answers {
                Err(err) if is_busy(&err) && waiting.may_wait() => waiting.pause().await,
                other => return other.map_err(inline_error),
            }
        }
    }

    /// Runs `work` in a write transaction (SQLite's `BEGIN IMMEDIATE`: the write lock taken at once, waited for
    /// here while another connection holds it, together with this writer, for at most the statement timeout) and
    /// commits it when `work` answers `Ok`; otherwise nothing of it is kept, whether `work` fails or panics. `work`
    /// runs without yielding, so no other task of this sa writes meanwhile. Callers take the store's write turn
    /// first (`Store::write_inline`), so that the sqlx writer's writes and these queue in one line.
    pub(crate) async fn write<T>(
        &self,
        work: impl FnOnce(&InlineTransaction<'_>) -> Result<T, Problem>,
    ) -> Result<T, Problem> {
        let mut waiting = BusyWait::new(self.busy_for);
        let conn = tokio::time::timeout(self.busy_for, self.writer.lock())
            .await
            .map_err(|_| refused(Refusal::Busy, &"the inline writer stayed taken"))?;
        // A transaction whose rollback failed would fail every later `BEGIN`.
        if !conn.is_autocommit() {
            conn.execute_batch("ROLLBACK").map_err(inline_error)?;
        }
        loop {
            match conn.execute_batch("BEGIN IMMEDIATE") {
                Ok(()) => break,
                Err(err) if is_busy(&err) && waiting.may_wait() => waiting.pause().await,
                Err(err) => return Err(inline_error(err)),
            }
        }
        let transaction = InlineTransaction(&conn);
        let outcome = work(&transaction).and_then(|answer| {
            conn.execute_batch("COMMIT").map_err(inline_error)?;
            self.checkpoints.committed(&self.writer);
            Ok(answer)
        });
        drop(transaction);
        outcome
    }

    /// The inline connections open now, as (idle, in use): the writer (in use while a write or a checkpoint holds
    /// it), the readers, and the checkpoints' own connection once opened (in use while a checkpoint runs on it). For the store's
    /// pool gauges, which would otherwise not see the connections the certificate path uses.
    pub(crate) fn connections(&self) -> (usize, usize) {
        let writer_idle = usize::from(self.writer.try_lock().is_ok());
        let readers_idle = self.readers.lock().unwrap_or_else(PoisonError::into_inner).len();
        // A checkpoint holds its connection's lock while it runs.
        let (checkpointer_idle, checkpointer_in_use) = match self.checkpoints.connection.try_lock() {
            Err(TryLockError::WouldBlock) => (0, 1),
            Ok(connection) => (usize::from(connection.is_some()), 0),
            Err(TryLockError::Poisoned(poisoned)) => (usize::from(poisoned.into_inner().is_some()), 0),
        };
        let idle = writer_idle + readers_idle + checkpointer_idle;
        let in_use = (1 - writer_idle) + self.readers_out.load(Ordering::Relaxed) + checkpointer_in_use;
        (idle, in_use)
    }

    /// An idle reader, or a new one (whose setup may meet a lock, waited for as a read's own).
    fn take_reader(&self) -> Result<Connection, rusqlite::Error> {
        let idle = self.readers.lock().unwrap_or_else(PoisonError::into_inner).pop();
        let conn = match idle {
            Some(conn) => conn,
            None => open_connection(&self.path, Opened::Reader { read_only: self.read_only })?,
        };
        self.readers_out.fetch_add(1, Ordering::Relaxed);
        Ok(conn)
    }

    fn give_back_reader(&self, conn: Connection) {
        self.readers_out.fetch_sub(1, Ordering::Relaxed);
        let mut idle = self.readers.lock().unwrap_or_else(PoisonError::into_inner);
        if idle.len() < self.max_idle_readers {
            idle.push(conn);
        }
    }
}

/// Pauses, growing, while SQLite's locks are held elsewhere, for at most the store's statement timeout.
struct BusyWait {
    until: Instant,
    pause: Duration,
}

impl BusyWait {
    fn new(busy_for: Duration) -> Self {
        Self { until: Instant::now() + busy_for, pause: FIRST_BUSY_PAUSE }
    }

    fn may_wait(&self) -> bool {
        Instant::now() + self.pause < self.until
    }

    async fn pause(&mut self) {
        tokio::time::sleep(self.pause).await;
        self.pause = (self.pause * 2).min(LONGEST_BUSY_PAUSE);
    }
}

/// What a connection is opened for.
#[derive(Clone, Copy)]
enum Opened {
    /// Writes, or checkpoints; read-only when the URL says so.
    Writer { read_only: bool },
    /// Reads only: it refuses to write (`query_only`); opened read-only when the URL says so.
    Reader { read_only: bool },
}

/// A connection set up as the sqlx pools' are (foreign keys enforced, `synchronous = NORMAL` in WAL), but never
/// waiting inside SQLite for a lock: `busy_timeout` 0 comes first, before anything that could wait (rusqlite opens
/// with 5 s). A reader leaves the journal mode as the writer set it.
fn open_connection(path: &str, opened: Opened) -> Result<Connection, rusqlite::Error> {
    let mode = match opened {
        Opened::Writer { read_only: true } | Opened::Reader { read_only: true } => OpenFlags::SQLITE_OPEN_READ_ONLY,
        Opened::Writer { read_only: false } | Opened::Reader { read_only: false } => OpenFlags::SQLITE_OPEN_READ_WRITE,
    };
    let conn = Connection::open_with_flags(path, mode | OpenFlags::SQLITE_OPEN_NO_MUTEX | OpenFlags::SQLITE_OPEN_URI)?;
    conn.execute_batch("PRAGMA busy_timeout = 0")?;
    let setup = match opened {
        Opened::Writer { read_only: false } => {
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON"
        }
        Opened::Writer { read_only: true } | Opened::Reader { .. } => {
            "PRAGMA foreign_keys = ON; PRAGMA query_only = ON"
        }
    };
    conn.execute_batch(setup)?;
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    Ok(conn)
}

/// Runs every part of `statement` (its SQL statements, which share its parameters `$1`, `$2`, …) and answers their
/// rows together.
fn run(conn: &Connection, statement: &Statement) -> Result<Vec<InlineRow>, rusqlite::Error> {
    run_parts(conn, statement, Access::ReadWrite)
}

/// [`run`] for a read, refusing before it runs any part that is not a query: a read may run on the writer, which
/// `query_only` does not guard as it guards the readers. A part must be a `SELECT` (or `WITH … SELECT`) that SQLite
/// finds read-only: SQLite also calls `BEGIN`, `ATTACH` and the pragmas that change only the connection (foreign
/// keys off, say) read-only, and on the writer those would change what later writes run under.
fn run_read_only(conn: &Connection, statement: &Statement) -> Result<Vec<InlineRow>, rusqlite::Error> {
    run_parts(conn, statement, Access::ReadOnly)
}

/// Whether an SQL statement starts as a query does.
fn is_query(sql: &str) -> bool {
    let start = sql.trim_start().get(..6).unwrap_or_default();
    start.eq_ignore_ascii_case("select") || start.get(..4).is_some_and(|w| w.eq_ignore_ascii_case("with"))
}

/// Whether a statement's parts may write.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Access {
    ReadOnly,
    ReadWrite,
}

fn run_parts(conn: &Connection, statement: &Statement, access: Access) -> Result<Vec<InlineRow>, rusqlite::Error> {
    let mut rows = Vec::new();
    for part in statement.sql().split(';').filter(|part| !part.trim().is_empty()) {
        // Checked before preparing as well as after: SQLite applies some pragmas (`foreign_keys` among them) as it
        // prepares them.
        let refused = || {
            rusqlite::Error::SqliteFailure(
                ffi::Error::new(ffi::SQLITE_READONLY),
                Some(format!("a read that is not a query: {}", part.trim())),
            )
        };
        if access == Access::ReadOnly && !is_query(part) {
            return Err(refused());
        }
        let mut prepared = conn.prepare_cached(part)?;
        if access == Access::ReadOnly && !prepared.readonly() {
            return Err(refused());
        }
        for index in 1..=prepared.parameter_count() {
            let param = prepared
                .parameter_name(index)
                .and_then(|name| name.strip_prefix('$'))
                .and_then(|number| number.parse::<usize>().ok())
                .and_then(|number| statement.params().get(number.checked_sub(1)?))
                .ok_or_else(|| rusqlite::Error::InvalidParameterName(format!("parameter {index} of {part}")))?;
            match param {
                Param::Int(value) => prepared.raw_bind_parameter(index, value)?,
                Param::Bool(value) => prepared.raw_bind_parameter(index, value)?,
                Param::Text(value) => prepared.raw_bind_parameter(index, value.as_str())?,
                Param::NoText => prepared.raw_bind_parameter(index, rusqlite::types::Null)?,
                Param::Bytes(value) => prepared.raw_bind_parameter(index, value.as_slice())?,
            }
        }
        let columns: Arc<[String]> = prepared.column_names().into_iter().map(str::to_owned).collect();
        let mut answered = prepared.raw_query();
        while let Some(row) = answered.next()? {
            let values = (0..columns.len()).map(|i| row.get::<_, Value>(i)).collect::<Result<_, _>>()?;
            rows.push(InlineRow::new(Arc::clone(&columns), values));
        }
    }
    Ok(rows)
}

/// SQLITE_BUSY and its variants: a lock another connection holds, which it lets go.
fn is_busy(err: &rusqlite::Error) -> bool {
    err.sqlite_error_code() == Some(rusqlite::ErrorCode::DatabaseBusy)
}

/// An inline SQLite error as the same typed problems the store gives sqlx's (`db_error`).
pub(crate) fn inline_error(err: rusqlite::Error) -> Problem {
    let extended = match &err {
        rusqlite::Error::SqliteFailure(failure, _) => Some(failure.extended_code),
        _ => None,
    };
    match extended {
        Some(ffi::SQLITE_CONSTRAINT_UNIQUE | ffi::SQLITE_CONSTRAINT_PRIMARYKEY) => refused(Refusal::Duplicate, &err),
        Some(ffi::SQLITE_CONSTRAINT_FOREIGNKEY) => refused(Refusal::MissingReference, &err),
        Some(ffi::SQLITE_CONSTRAINT_NOTNULL | ffi::SQLITE_CONSTRAINT_CHECK) => refused(Refusal::BrokenConstraint, &err),
        _ if is_busy(&err) => refused(Refusal::Busy, &err),
        _ => internal(err),
    }
}

#[cfg(test)]
mod tests;
