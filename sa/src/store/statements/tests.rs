//! Statements asked together: their parameters numbered across them, and the answers on both databases, for reads
//! and for writes committed together.

use quarry_core::ErrorKind;

use super::*;
use crate::store::database::Store;
use crate::store::database::tests::stores_on_every_backend;
use crate::store::rows::get;

#[test]
fn parameters_are_numbered_across_the_statements() {
    let renumbered = |sql, offset| renumbered(sql, offset).0;
    assert_eq!(renumbered("SELECT a FROM t WHERE b = $1 AND c = $2", 0), "SELECT a FROM t WHERE b = $1 AND c = $2");
    assert_eq!(renumbered("SELECT a FROM t WHERE b = $1 AND c = $12", 3), "SELECT a FROM t WHERE b = $4 AND c = $15");
    assert_eq!(renumbered("SELECT 'é' || $2, $", 1), "SELECT 'é' || $3, $");
    let reads = [
        Statement::new("SELECT $1, $2").int(1).int(2),
        Statement::new("SELECT $1").text("x"),
        Statement::new("SELECT 1"),
    ];
    let numbered = numbered_across(&reads).expect("statements");
    assert_eq!(numbered, ["SELECT $1, $2", "SELECT $3", "SELECT 1"]);
    // A statement naming a parameter it does not bind would take the next one's value: refused.
    let short = [Statement::new("SELECT $1, $2").int(1), Statement::new("SELECT $1").int(2)];
    assert!(numbered_across(&short).is_err());
    // What would split a statement's parts wrongly is refused in tests (a debug assertion).
    assert!(splits_cleanly("SELECT 'a''b'; UPDATE \"t\" SET a = 1"));
    for unclean in
        ["SELECT ';'", "SELECT 'a'';b'", "SELECT 1 -- a; b", "SELECT /* ; */ 1", "SELECT \"a;b\"", "SELECT 'open"]
    {
        assert!(!splits_cleanly(unclean), "{unclean}");
    }
}

/// Three rows in `schema_migrations` (versions 2000 to 2002, named `m<version>`, applied at ten times the version),
/// and three reads of them with parameters of each kind, the first in descending order, the second finding nothing,
/// the third answering a column of bytes and a `NULL` too.
async fn three_reads_of_three_rows(store: &Store) -> [Statement; 3] {
    for version in [2000_i64, 2001, 2002] {
        sqlx::query("INSERT INTO schema_migrations (version, name, applied_at) VALUES ($1, $2, $3)")
            .bind(version)
            .bind(format!("m{version}"))
            .bind(version * 10)
            .execute(&store.writer)
            .await
            .unwrap();
    }
    [
        Statement::new("SELECT version FROM schema_migrations WHERE version >= $1 AND name <> $2 ORDER BY version DESC")
            .int(2000)
            .text("m2001"),
        Statement::new("SELECT version FROM schema_migrations WHERE name = $1").text("none such"),
        Statement::new(
            "SELECT name, $2 AS raw, CAST(NULL AS TEXT) AS absent FROM schema_migrations WHERE applied_at = $1 AND $2 = $2",
        )
        .int(20010)
        .bytes(*b"a\\b\x00"),
    ]
}

/// Three reads with parameters of each kind, one finding nothing, answer each its own rows in order, columns of each
/// type read back, on both databases (on PostgreSQL folded into one statement); a read that fails part-way leaves
/// every connection usable.
#[tokio::test]
async fn reads_asked_together_answer_each_its_own_rows() {
    for (db, store) in stores_on_every_backend().await {
        let reads = three_reads_of_three_rows(&store).await;
        let answers = store.read_together(&reads).await.unwrap_or_else(|p| panic!("{}: {p:?}", db.url));
        assert_eq!(answers.len(), 3, "{}", db.url);
        let versions: Vec<i64> = answers[0].iter().map(|row| get(row, "version").unwrap()).collect();
        assert_eq!(versions, [2002, 2000], "{}", db.url);
        assert!(answers[1].is_empty(), "{}", db.url);
        let names: Vec<String> = answers[2].iter().map(|row| get(row, "name").unwrap()).collect();
        assert_eq!(names, ["m2001"], "{}", db.url);
        assert_eq!(get::<Vec<u8>>(&answers[2][0], "raw").unwrap(), b"a\\b\x00", "{}", db.url);
        assert_eq!(get::<Option<String>>(&answers[2][0], "absent").unwrap(), None, "{}", db.url);
        // A lone read is not folded: it answers the same.
        let alone = store.read_together(&reads[..1]).await.unwrap_or_else(|p| panic!("{}: {p:?}", db.url));
        let versions: Vec<i64> = alone[0].iter().map(|row| get(row, "version").unwrap()).collect();
        assert_eq!(versions, [2002, 2000], "{}", db.url);

        let failing = [reads[0].clone(), Statement::new("SELECT no_such_column FROM schema_migrations")];
        let failed = store.read_together(&failing).await;
        assert!(failed.is_err(), "{}: a read of a column that does not exist", db.url);
        // Each of the pool's connections answers again.
        for _ in 0..4 {
            let again = store.read_together(&reads).await.unwrap_or_else(|p| panic!("{}: {p:?}", db.url));
            assert_eq!(again[2].len(), 1, "{}", db.url);
        }
    }
}

/// Reads asked only whether they find a row answer one row of flags, in their order, their parameters numbered
/// across them, on both databases; asking none answers none.
#[tokio::test]
async fn reads_asked_whether_they_find_rows_answer_one_flag_each() {
    for (db, store) in stores_on_every_backend().await {
        let reads = three_reads_of_three_rows(&store).await;
        let asked = Statement::finds_rows(&reads).unwrap();
        let mut answers = store.read_together(&[asked]).await.unwrap_or_else(|p| panic!("{}: {p:?}", db.url));
        let flags = found(&answers.pop().unwrap(), reads.len()).unwrap_or_else(|p| panic!("{}: {p:?}", db.url));
        assert_eq!(flags, [true, false, true], "{}", db.url);
        // No read at all (a pause check of no identifier) answers no flag.
        let mut answers = store.read_together(&[Statement::finds_rows(&[]).unwrap()]).await.unwrap();
        assert_eq!(found(&answers.pop().unwrap(), 0).unwrap(), [false; 0], "{}", db.url);
    }
}

/// The rows of `SELECT value FROM t`, sorted.
async fn values(store: &Store) -> Vec<i64> {
    let rows = sqlx::query("SELECT value FROM transaction_test ORDER BY value").fetch_all(&store.pool).await.unwrap();
    rows.iter().map(|row| get(row, "value").unwrap()).collect()
}

/// Statements written and committed in one call: each answers its own rows (statements joined for SQLite count as
/// one), later statements see what earlier ones wrote, and a statement that fails keeps nothing of its call and
/// leaves the writer usable; on both databases.
#[tokio::test]
async fn writes_committed_together_keep_all_or_nothing() {
    for (db, store) in stores_on_every_backend().await {
        let url = &db.url;
        sqlx::query("CREATE TABLE transaction_test (value BIGINT PRIMARY KEY)").execute(&store.writer).await.unwrap();
        let insert =
            |value: i64| Statement::new("INSERT INTO transaction_test (value) VALUES ($1) RETURNING value").int(value);
        let joined = Statement::new(store.backend().one_statement(&[
            "INSERT INTO transaction_test (value) VALUES ($1)".to_owned(),
            "INSERT INTO transaction_test (value) VALUES ($2)".to_owned(),
        ]))
        .int(10)
        .int(11);
        let answers = store.write_committed(&[insert(1), joined, insert(2)]).await.expect(url);
        assert_eq!(answers.iter().map(Vec::len).collect::<Vec<_>>(), [1, 0, 1], "{url}");
        assert_eq!(get::<i64>(&answers[2][0], "value").unwrap(), 2, "{url}");
        let count = Statement::new("SELECT COUNT(*) AS n FROM transaction_test WHERE value < $1").int(100);
        let answers = store.write_committed(&[insert(3), count]).await.expect(url);
        assert_eq!(get::<i64>(&answers[1][0], "n").unwrap(), 5, "{url}: the transaction's own writes are seen");
        assert_eq!(values(&store).await, [1, 2, 3, 10, 11], "{url}");

        // A duplicate after a write: nothing of the call kept, and the writer writes again.
        let failed = store.write_committed(&[insert(20), insert(1)]).await;
        assert_eq!(failed.err().map(|p| p.kind), Some(ErrorKind::Duplicate), "{url}");
        let answers = store.write_committed(&[insert(50)]).await.expect(url);
        assert_eq!(answers.iter().map(Vec::len).collect::<Vec<_>>(), [1], "{url}");
        let failed = store.write_committed(&[insert(60), insert(50)]).await;
        assert_eq!(failed.err().map(|p| p.kind), Some(ErrorKind::Duplicate), "{url}");
        store.write_committed(&[insert(61)]).await.expect(url);
        assert_eq!(values(&store).await, [1, 2, 3, 10, 11, 50, 61], "{url}");
    }
}
