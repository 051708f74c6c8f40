//! SQLite run in place: parameters bound by number across a statement's parts, values read back by type, errors
//! typed as sqlx's are, the write lock waited for while another connection holds it, and a writer that stays
//! usable after a failed or abandoned transaction.

use std::time::Duration;

use quarry_core::ErrorKind;
use quarry_testkit::db::TestDatabase;

use super::*;
use crate::store::database::{PoolSettings, Store};
use crate::store::rows::get;

/// A migrated store on a fresh SQLite file, its inline connections waiting at most `busy_for` for a lock.
async fn store(db: &TestDatabase, busy_for: Duration) -> Store {
    let settings = PoolSettings { max_connections: 2, statement_timeout: busy_for };
    Store::open(&db.url, settings).await.expect("open the store")
}

/// `write`'s outcome, run while the store's sqlx writer holds a write transaction that it commits 100 ms in.
async fn while_the_sqlx_writer_holds_a_moment<T>(store: &Store, write: impl Future<Output = T>) -> T {
    let holder = store.begin_write().await.expect("the sqlx writer takes the lock");
    let release = async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        holder.commit().await.expect("the sqlx writer commits");
    };
    let (written, ()) = tokio::join!(write, release);
    written
}

fn insert_migration(version: i64, name: &str) -> Statement {
    Statement::new("INSERT INTO schema_migrations (version, name, applied_at) VALUES ($1, $2, $3) RETURNING version")
        .int(version)
        .text(name)
        .int(version * 10)
}

#[tokio::test]
async fn parameters_bind_by_number_across_parts_and_values_read_back_by_type() {
    let db = TestDatabase::sqlite();
    let store = store(&db, Duration::from_secs(5)).await;
    let inline = store.inline().unwrap();
    // Two parts sharing `$1`, in another order than they are bound; a boolean, a NULL and bytes.
    let statement = Statement::new(
        "INSERT INTO schema_migrations (version, name, applied_at) VALUES ($2, $1, CASE WHEN $3 THEN 1 ELSE 0 END);\n\
         SELECT version, name, applied_at, $4 AS absent, $5 AS raw FROM schema_migrations WHERE version = $2",
    )
    .text("first")
    .int(4000)
    .boolean(true)
    .optional_text(None)
    .bytes(*b"\x00\x01");
    let rows = inline.write(|tx| tx.run(&statement)).await.expect("write");
    assert_eq!(rows.len(), 1, "the INSERT answers no row, the SELECT one");
    assert_eq!(get::<i64>(&rows[0], "version").unwrap(), 4000);
    assert_eq!(get::<String>(&rows[0], "name").unwrap(), "first");
    assert_eq!(get::<i64>(&rows[0], "applied_at").unwrap(), 1);
    assert_eq!(get::<Option<String>>(&rows[0], "absent").unwrap(), None);
    assert_eq!(get::<Vec<u8>>(&rows[0], "raw").unwrap(), b"\x00\x01");
    // A value of another type, or a column that is not there, is an error, not a default.
    assert!(get::<String>(&rows[0], "version").is_err());
    assert!(get::<i64>(&rows[0], "no_such_column").is_err());

    // A statement naming a parameter it does not bind is refused, and nothing of it is kept.
    let short =
        Statement::new("INSERT INTO schema_migrations (version, name, applied_at) VALUES ($1, $2, 0)").int(4001);
    let refused = inline.write(|tx| tx.run(&short)).await.expect_err("an unbound parameter");
    assert_eq!(refused.kind, ErrorKind::ServerInternal, "{}", refused.detail);
    assert_eq!(db.count("schema_migrations WHERE version = 4001").await, 0);

    // Reads see what the inline writer committed, and so do sqlx's connections.
    let read = Statement::new("SELECT name FROM schema_migrations WHERE version = $1").int(4000);
    let answers = inline.read(&[read.clone(), read]).await.expect("read");
    assert_eq!(answers.iter().map(Vec::len).collect::<Vec<_>>(), [1, 1]);
    assert_eq!(db.count("schema_migrations WHERE version = 4000 AND name = 'first'").await, 1);
}

#[tokio::test]
async fn errors_are_typed_as_the_stores_others_are_and_keep_nothing() {
    let db = TestDatabase::sqlite();
    let store = store(&db, Duration::from_secs(5)).await;
    let inline = store.inline().unwrap();
    inline.write(|tx| tx.run(&insert_migration(5000, "taken"))).await.expect("write");

    // A duplicate key after a write of the same transaction: `duplicate`, and the first write is not kept.
    let duplicate = inline
        .write(|tx| {
            tx.run(&insert_migration(5001, "kept?"))?;
            tx.run(&insert_migration(5000, "again"))
        })
        .await
        .expect_err("a duplicate");
    assert_eq!(duplicate.kind, ErrorKind::Duplicate, "{}", duplicate.detail);
    assert_eq!(db.count("schema_migrations WHERE version = 5001").await, 0);

    // A row that refers to none: the foreign key is enforced, as `notFound`.
    let orphan =
        Statement::new("INSERT INTO order_authorizations (order_id, authorization_id, position) VALUES ($1, $2, 0)")
            .int(999_999)
            .int(999_999);
    let missing = inline.write(|tx| tx.run(&orphan)).await.expect_err("an orphan");
    assert_eq!(missing.kind, ErrorKind::NotFound, "{}", missing.detail);

    // The work's own refusal rolls back what it wrote.
    let refused = inline
        .write(|tx| {
            tx.run(&insert_migration(5002, "refused"))?;
            Err::<(), _>(Problem::malformed("refused by the caller"))
        })
        .await
        .expect_err("refused");
    assert_eq!(refused.kind, ErrorKind::Malformed);
    assert_eq!(db.count("schema_migrations WHERE version = 5002").await, 0);

    // Reading connections refuse to write.
    let written = inline.read(&[insert_migration(5003, "read")]).await.expect_err("a reader writes");
    assert_eq!(written.kind, ErrorKind::ServerInternal, "{}", written.detail);
    assert_eq!(db.count("schema_migrations WHERE version = 5003").await, 0);

    // After all that, the writer writes.
    inline.write(|tx| tx.run(&insert_migration(5004, "after"))).await.expect("write after failures");
    assert_eq!(db.count("schema_migrations WHERE version = 5004").await, 1);
}

/// While another connection holds SQLite's write lock, an inline write waits for it without blocking its thread
/// (the test's single-threaded runtime releases the lock meanwhile) and then commits; held past the wait, the write
/// fails as `unavailable` and keeps nothing.
#[tokio::test]
async fn a_write_waits_for_the_lock_another_connection_holds() {
    let db = TestDatabase::sqlite();
    let store = store(&db, Duration::from_millis(1500)).await;
    let inline = store.inline().unwrap();

    let write = inline.write(|tx| tx.run(&insert_migration(6000, "waited")));
    while_the_sqlx_writer_holds_a_moment(&store, write).await.expect("the write after the lock was released");
    assert_eq!(db.count("schema_migrations WHERE version = 6000").await, 1);

    let holder = store.begin_write().await.expect("the sqlx writer takes the lock again");
    let started = Instant::now();
    let busy = inline.write(|tx| tx.run(&insert_migration(6001, "busy"))).await.expect_err("the lock stays held");
    assert_eq!(busy.kind, ErrorKind::Unavailable, "{}", busy.detail);
    assert!(started.elapsed() >= Duration::from_millis(1000), "waited {:?}", started.elapsed());
    holder.commit().await.expect("release the lock");
    assert_eq!(db.count("schema_migrations WHERE version = 6001").await, 0);
    inline.write(|tx| tx.run(&insert_migration(6002, "free"))).await.expect("write once the lock is free");
}

/// A panic in the middle of a transaction rolls it back as it unwinds: nothing of it is kept, SQLite's write lock is
/// free at once for the store's other writer (which would otherwise fail as busy), and the inline writer goes on.
#[tokio::test]
async fn a_transaction_abandoned_by_a_panic_is_rolled_back_at_once() {
    let db = TestDatabase::sqlite();
    let store = store(&db, Duration::from_millis(500)).await;
    let abandoned = {
        let store = store.clone();
        tokio::spawn(async move {
            store
                .write_inline(|tx| {
                    tx.run(&insert_migration(7000, "abandoned")).unwrap();
                    panic!("the work panics part-way");
                    #[allow(unreachable_code)]
                    Ok(())
                })
                .await
        })
    };
    assert!(abandoned.await.expect_err("the task panicked").is_panic());
    sqlx::query("INSERT INTO schema_migrations (version, name, applied_at) VALUES (7002, 'sqlx', 0)")
        .execute(&store.writer)
        .await
        .expect("the sqlx writer writes right after the panic");
    store.write_inline(|tx| tx.run(&insert_migration(7001, "next"))).await.expect("the next write");
    assert_eq!(db.count("schema_migrations WHERE version = 7000").await, 0);
    assert_eq!(db.count("schema_migrations WHERE version IN (7001, 7002)").await, 2);
}

/// Writes through the store's write turn wait for a transaction of the sqlx writer to end, then commit.
#[tokio::test]
async fn an_inline_write_takes_its_turn_after_the_sqlx_writers_transaction() {
    let db = TestDatabase::sqlite();
    let store = store(&db, Duration::from_secs(5)).await;
    let write = store.write_inline(|tx| tx.run(&insert_migration(8000, "turn")));
    while_the_sqlx_writer_holds_a_moment(&store, write).await.expect("the inline write in its turn");
    assert_eq!(db.count("schema_migrations WHERE version = 8000").await, 1);
}

/// The writer does not checkpoint in its commits; the checkpoints it starts every [`COMMITS_PER_CHECKPOINT`]
/// commits keep the WAL from growing with every write (with none at all, these commits alone fill 34 MB of it).
#[tokio::test]
async fn the_wal_is_checkpointed_away_from_the_commits() {
    let db = TestDatabase::sqlite();
    let store = store(&db, Duration::from_secs(5)).await;
    let inline = store.inline().unwrap();
    let wal = format!("{}-wal", path_of_url(&db.url));
    let filler = "x".repeat(3000);
    let mut largest = 0;
    for version in 0..2000_i64 {
        inline.write(|tx| tx.run(&insert_migration(10_000 + version, &filler))).await.expect("write");
        largest = largest.max(std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0));
        // A moment now and then for the blocking thread's checkpoint.
        if version % COMMITS_PER_CHECKPOINT as i64 == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    assert!(largest < 4 << 20, "the WAL grew to {largest} bytes");
    assert_eq!(db.count("schema_migrations WHERE version >= 10000").await, 2000);
}

/// Replicas starting together on one file: while another's setup holds the database (here a fresh file, not yet
/// WAL, locked exclusively for a moment), opening the inline connections waits for it rather than failing as
/// "database is locked"; held past the wait, opening fails as busy.
#[tokio::test]
async fn opening_waits_for_the_lock_another_replicas_setup_holds() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("quarry.db");
    let url = format!("sqlite://{}?mode=rwc", path.display());
    let (held, lock_held) = std::sync::mpsc::channel();
    let holder = {
        let path = path.clone();
        std::thread::spawn(move || {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch("CREATE TABLE early (id INTEGER); BEGIN EXCLUSIVE; INSERT INTO early VALUES (1)")
                .unwrap();
            held.send(()).unwrap();
            std::thread::sleep(Duration::from_millis(150));
            conn.execute_batch("COMMIT").unwrap();
        })
    };
    lock_held.recv().unwrap();
    let opened = InlineSqlite::open(&url, Duration::from_secs(3)).await.expect("opened once the lock is free");
    holder.join().unwrap();
    let read = opened.read(&[Statement::new("SELECT COUNT(*) AS n FROM early")]).await.expect("read");
    assert_eq!(get::<i64>(&read[0][0], "n").unwrap(), 1);

    let other = dir.path().join("other.db");
    let conn = Connection::open(&other).unwrap();
    conn.execute_batch("CREATE TABLE early (id INTEGER); BEGIN EXCLUSIVE; INSERT INTO early VALUES (1)").unwrap();
    let url = format!("sqlite://{}?mode=rwc", other.display());
    let busy = InlineSqlite::open(&url, Duration::from_millis(100)).await.err().expect("the lock stays held");
    assert!(is_busy(&busy), "{busy}");
}

/// The inline connections are counted for the pool gauges: the writer in use while a write holds it, readers idle
/// once given back, and the store's count includes them beside its pools'.
#[tokio::test]
async fn the_inline_connections_are_counted_idle_or_in_use() {
    let db = TestDatabase::sqlite();
    let store = store(&db, Duration::from_secs(5)).await;
    let inline = store.inline().unwrap();
    assert_eq!(inline.connections(), (1, 0), "the writer alone, idle");
    inline.read(&[Statement::new("SELECT 1 AS one")]).await.expect("read");
    assert_eq!(inline.connections(), (1, 0), "a read while the writer is free runs on it");
    let held = inline.writer.lock().await;
    inline.read(&[Statement::new("SELECT 1 AS one")]).await.expect("read");
    assert_eq!(inline.connections(), (1, 1), "a read while the writer is held opens a reader and gives it back");
    drop(held);
    assert_eq!(inline.connections(), (2, 0));
    let during = inline.write(|_| Ok(inline.connections())).await.expect("write");
    assert_eq!(during, (1, 1), "the writer in use while the write holds it");
    let (all_idle, all_in_use) = store.connections();
    let pools_idle = all_idle - 2;
    assert!(pools_idle >= 2, "the sqlx writer and a reader at least: {pools_idle}");
    assert_eq!(all_in_use, 0);
}

/// A URL whose path is percent-encoded (a space in a directory's name) names the same file for the inline
/// connections as for sqlx's, which decodes it: a write in place is read back through sqlx.
#[tokio::test]
async fn a_percent_encoded_path_names_the_file_sqlx_opens() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/with%20space/quarry.db?mode=rwc", dir.path().display());
    assert_eq!(path_of_url(&url), format!("{}/with space/quarry.db", dir.path().display()));
    let settings = PoolSettings { max_connections: 2, statement_timeout: Duration::from_secs(5) };
    let store = Store::open(&url, settings).await.expect("open the store");
    store.inline().unwrap().write(|tx| tx.run(&insert_migration(9000, "spaced"))).await.expect("write");
    let seen: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM schema_migrations WHERE version = 9000")
        .fetch_one(&store.writer)
        .await
        .expect("read through sqlx");
    assert_eq!(seen, 1);
    assert!(dir.path().join("with space/quarry.db").is_file());
}

/// Reads run on the writer while it is free, on a reader while it is held (by a write elsewhere, a checkpoint) or
/// left inside a transaction: either way they see what every connection committed, the store's sqlx writer's too,
/// and never what a transaction has not committed.
#[tokio::test]
async fn reads_see_every_commit_on_whichever_connection_they_run() {
    let db = TestDatabase::sqlite();
    let store = store(&db, Duration::from_secs(5)).await;
    let inline = store.inline().unwrap();
    let count =
        |version: i64| Statement::new("SELECT COUNT(*) AS n FROM schema_migrations WHERE version = $1").int(version);
    let counted = |rows: Vec<Vec<InlineRow>>| get::<i64>(&rows[0][0], "n").unwrap();
    // Read once on each connection, so that both have the pages cached before the next commits.
    assert_eq!(counted(inline.read(&[count(7000)]).await.unwrap()), 0);
    let held = inline.writer.lock().await;
    assert_eq!(counted(inline.read(&[count(7000)]).await.unwrap()), 0);
    drop(held);
    sqlx::query("INSERT INTO schema_migrations (version, name, applied_at) VALUES (7000, 'sqlx', 1)")
        .execute(&store.writer)
        .await
        .expect("the sqlx writer commits");
    assert_eq!(counted(inline.read(&[count(7000)]).await.unwrap()), 1, "on the writer");
    let held = inline.writer.lock().await;
    assert_eq!(counted(inline.read(&[count(7000)]).await.unwrap()), 1, "on a reader");
    drop(held);
    inline.write(|tx| tx.run(&insert_migration(7001, "inline"))).await.expect("write");
    let held = inline.writer.lock().await;
    assert_eq!(counted(inline.read(&[count(7001)]).await.unwrap()), 1, "a reader sees the writer's commit");
    // A transaction left open on the writer (its rollback failed): reads go elsewhere and do not see it.
    held.execute_batch(
        "BEGIN IMMEDIATE; INSERT INTO schema_migrations (version, name, applied_at) VALUES (7002, 'open', 1)",
    )
    .expect("an open transaction");
    drop(held);
    assert_eq!(counted(inline.read(&[count(7002)]).await.unwrap()), 0, "nothing uncommitted is read");
    // The next write rolls it back before its own.
    inline.write(|tx| tx.run(&insert_migration(7003, "after"))).await.expect("write");
    assert_eq!(counted(inline.read(&[count(7002)]).await.unwrap()), 0);
    assert_eq!(counted(inline.read(&[count(7003)]).await.unwrap()), 1);
}

/// A statement that would write, asked as a read, is refused before it runs, on the writer as on a reader (whose
/// `query_only` would refuse it too), and nothing of it is kept; so is one that would change the writer's own
/// settings or open a transaction on it.
#[tokio::test]
async fn a_read_that_would_write_is_refused_on_either_connection() {
    let db = TestDatabase::sqlite();
    let store = store(&db, Duration::from_secs(5)).await;
    let inline = store.inline().unwrap();
    let refused = inline.read(&[insert_migration(7100, "on the writer")]).await.expect_err("refused");
    assert_eq!(refused.kind, ErrorKind::ServerInternal, "{refused:?}");
    let held = inline.writer.lock().await;
    inline.read(&[insert_migration(7101, "on a reader")]).await.expect_err("refused");
    drop(held);
    let kept: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM schema_migrations WHERE version >= 7100")
        .fetch_one(&store.writer)
        .await
        .expect("count");
    assert_eq!(kept, 0);
    // Statements SQLite calls read-only that would change the writer itself: refused too, and nothing changed.
    for changing in ["PRAGMA foreign_keys = OFF", "BEGIN", "SAVEPOINT s"] {
        inline.read(&[Statement::new(changing)]).await.expect_err(changing);
        let writer = inline.writer.lock().await;
        assert!(writer.is_autocommit(), "{changing}");
        let enforced: i64 = writer.query_row("PRAGMA foreign_keys", [], |row| row.get(0)).unwrap();
        assert_eq!(enforced, 1, "{changing}");
    }
    // Queries pass, a common table expression's among them.
    let rows = inline.read(&[Statement::new("WITH t(n) AS (SELECT 1) SELECT n FROM t")]).await.expect("a query");
    assert_eq!(get::<i64>(&rows[0][0], "n").unwrap(), 1);
}

/// A batch of reads longer than [`READS_ON_THE_WRITER`] runs on a reader, so that it does not hold off writes for
/// its whole length; shorter ones run on the writer when it is free.
#[tokio::test]
async fn a_long_batch_of_reads_leaves_the_writer_to_the_writes() {
    let db = TestDatabase::sqlite();
    let store = store(&db, Duration::from_secs(5)).await;
    let inline = store.inline().unwrap();
    let batch = |n: usize| vec![Statement::new("SELECT 1 AS one"); n];
    inline.read(&batch(READS_ON_THE_WRITER)).await.expect("read");
    assert_eq!(inline.connections(), (1, 0), "on the writer: no reader opened");
    let answers = inline.read(&batch(READS_ON_THE_WRITER + 1)).await.expect("read");
    assert_eq!(answers.len(), READS_ON_THE_WRITER + 1);
    assert_eq!(inline.connections(), (2, 0), "on a reader, given back");
}
