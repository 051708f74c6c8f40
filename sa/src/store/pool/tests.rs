//! The pool's tests: what it lends and takes back, and how it treats a connection something may be wrong with.

use quarry_testkit::db::TestDatabase;

use super::*;

/// A PostgreSQL database when the test command provides a server (these tests need one), saying so otherwise.
async fn postgres() -> Option<TestDatabase> {
    let db = TestDatabase::postgres().await;
    if db.is_none() {
        eprintln!("no PostgreSQL here ({} unset)", quarry_testkit::db::POSTGRES_ENV);
    }
    db
}

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
pub(in crate::store) async fn end_other_sessions(url: &str) {
    let mut admin = AnyConnection::connect(url).await.expect("connect");
    let ended: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()",
    )
    .fetch_all(&mut admin)
    .await
    .expect("end the other sessions");
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
    until_counts(&pool, 1, 1).await;
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

/// Waits, bounded, until every connection of `pool` is back among the idle ones.
async fn until_all_back(pool: &ConnectionPool) {
    for _ in 0..200 {
        if pool.num_idle() == pool.size() as usize {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{} of {} connections are still out", pool.size() as usize - pool.num_idle(), pool.size());
}

/// A connection goes back to the pool as it is, with no round trip to check it: it is idle again the moment
/// the statement's answer is read (a check, as sqlx's pool makes, runs in a task and takes a while).
#[tokio::test]
async fn a_connection_goes_back_without_a_round_trip() {
    for db in TestDatabase::every_backend().await {
        let pool = connect(&db.url, 1).await;
        until_all_back(&pool).await;
        // Another test's connection error makes every connection out meanwhile get checked: try again then.
        let mut proved = false;
        for _ in 0..10 {
            let trouble = CONNECTION_TROUBLE.load(Ordering::Relaxed);
            let seven: i64 = sqlx::query_scalar("SELECT 7").fetch_one(&pool).await.unwrap();
            let idle = pool.num_idle();
            if CONNECTION_TROUBLE.load(Ordering::Relaxed) == trouble {
                assert_eq!((seven, idle), (7, 1), "{}: the connection is idle at once", db.url);
                proved = true;
                break;
            }
            until_all_back(&pool).await;
        }
        assert!(proved, "other tests kept reporting connection errors");
    }
}

/// A call cancelled while its `BEGIN` runs leaves no transaction behind: the pool rolls back before the
/// connection serves again (else SQLite would refuse the next `BEGIN`, and PostgreSQL would hold the session
/// idle in a transaction, with every later statement inside it).
#[tokio::test]
async fn a_call_cancelled_during_its_begin_leaves_no_transaction_open() {
    for db in TestDatabase::every_backend().await {
        let pool = connect(&db.url, 1).await;
        sqlx::raw_sql("CREATE TABLE marks (n BIGINT)").execute(&pool).await.unwrap();
        // Polled once and dropped: the `BEGIN` has left, its answer has not come. (A begin already done at
        // the first poll proves nothing; the next try is then made.)
        let mut cancelled = false;
        for _ in 0..20 {
            let mut call = Box::pin(begin(&pool));
            cancelled = futures::poll!(&mut call).is_pending();
            drop(call);
            until_all_back(&pool).await;
            if cancelled {
                break;
            }
        }
        assert!(cancelled, "{}: no begin was pending after its first poll", db.url);
        if db.url.starts_with("postgres") {
            let mut admin = AnyConnection::connect(&db.url).await.expect("connect");
            let open: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM pg_stat_activity WHERE datname = current_database() AND state LIKE 'idle in transaction%'",
            )
            .fetch_one(&mut admin)
            .await
            .unwrap();
            assert_eq!(open, 0, "a session left in a transaction");
        }
        let mut kept = begin(&pool).await;
        sqlx::query("INSERT INTO marks (n) VALUES (1)").execute(&mut *kept).await.unwrap();
        kept.commit().await.expect("commit");
        assert_eq!(db.count("marks").await, 1, "{}", db.url);
    }
}

/// A statement cancelled before its answer came leaves its connection out of the pool until the answer is read:
/// the next caller does not inherit the wait, and the connection serves again afterwards.
#[tokio::test]
async fn a_statement_cancelled_mid_way_is_waited_out_before_reuse() {
    let Some(db) = postgres().await else { return };
    let pool = connect(&db.url, 1).await;
    until_all_back(&pool).await;
    let slow = sqlx::query("SELECT pg_sleep(0.5)").execute(&pool);
    assert!(tokio::time::timeout(Duration::from_millis(100), slow).await.is_err(), "the statement was cancelled");
    assert_eq!(pool.num_idle(), 0, "the connection is not handed out while its answer is pending");
    until_all_back(&pool).await;
    let seven: i64 = sqlx::query_scalar("SELECT 7").fetch_one(&pool).await.unwrap();
    assert_eq!((seven, pool.size()), (7, 1), "the same connection serves again");
}

/// A transaction dropped without a commit is rolled back before its connection serves anyone again: on the
/// pool's one connection a new transaction begins, and only what it commits is kept.
#[tokio::test]
async fn a_transaction_dropped_is_rolled_back_before_its_connection_is_reused() {
    for db in TestDatabase::every_backend().await {
        let pool = connect(&db.url, 1).await;
        sqlx::raw_sql("CREATE TABLE marks (n BIGINT)").execute(&pool).await.unwrap();
        let postgres = db.url.starts_with("postgres");
        let session = || async {
            match postgres {
                true => sqlx::query_scalar::<_, i32>("SELECT pg_backend_pid()").fetch_one(&pool).await.ok(),
                false => None,
            }
        };
        let first_session = session().await;
        let mut dropped = begin(&pool).await;
        sqlx::query("INSERT INTO marks (n) VALUES (1)").execute(&mut *dropped).await.unwrap();
        drop(dropped);

        let mut kept = begin(&pool).await;
        sqlx::query("INSERT INTO marks (n) VALUES (2)").execute(&mut *kept).await.unwrap();
        kept.commit().await.expect("commit");
        assert_eq!(db.count("marks").await, 1, "{}", db.url);
        assert_eq!(db.count("marks WHERE n = 2").await, 1, "{}", db.url);
        until_counts(&pool, 1, 1).await;
        assert_eq!(session().await, first_session, "one connection served throughout");
    }
}

/// A connection whose statement found it ended is closed instead of pooled again, whether the statement ran on
/// the pool itself or on a connection the caller held (whose error the store maps with `db_error`): the next
/// statement opens a live one.
#[tokio::test]
async fn a_connection_found_ended_is_not_pooled_again() {
    let Some(db) = postgres().await else { return };
    let pool = connect(&db.url, 1).await;
    end_other_sessions(&db.url).await;
    let err = sqlx::query("SELECT 1").execute(&pool).await.expect_err("a statement on an ended session");
    assert!(may_break_connection(&err), "{err}");
    assert_eq!(pool.size(), 0, "the ended connection is closed");
    sqlx::query("SELECT 1").execute(&pool).await.expect("a statement on a new connection");

    let mut held = pool.acquire().await.unwrap();
    end_other_sessions(&db.url).await;
    let err = sqlx::query("SELECT 1").execute(&mut *held).await.expect_err("a statement on an ended session");
    let problem = super::super::errors::db_error(err);
    assert_eq!(problem.kind, quarry_core::ErrorKind::Unavailable, "{}", problem.detail);
    drop(held);
    until_counts(&pool, 0, 0).await;
    sqlx::query("SELECT 1").execute(&pool).await.expect("a statement on a new connection");
}
