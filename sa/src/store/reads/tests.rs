//! Reads asked together: the SQL SQLite is sent, and the answers on both databases.

use super::*;
use crate::store::database::get;
use crate::store::database::tests::stores_on_every_backend;

#[test]
fn parameters_are_numbered_across_the_statements() {
    let renumbered = |sql, offset| renumbered(sql, offset).0;
    assert_eq!(renumbered("SELECT a FROM t WHERE b = $1 AND c = $2", 0), "SELECT a FROM t WHERE b = $1 AND c = $2");
    assert_eq!(renumbered("SELECT a FROM t WHERE b = $1 AND c = $12", 3), "SELECT a FROM t WHERE b = $4 AND c = $15");
    assert_eq!(renumbered("SELECT 'é' || $2, $", 1), "SELECT 'é' || $3, $");
    let reads = [Read::new("SELECT $1, $2").int(1).int(2), Read::new("SELECT $1").text("x"), Read::new("SELECT 1")];
    let statements = |reads, snapshot| sqlite_statements(reads, snapshot).expect("statements");
    assert_eq!(statements(&reads, Snapshot::EachRead), "SELECT $1, $2;\nSELECT $3;\nSELECT 1");
    assert_eq!(statements(&reads[1..2], Snapshot::One), "BEGIN;\nSELECT $1;\nCOMMIT");
    // A read naming a parameter it does not bind would take the next read's value: refused.
    let short = [Read::new("SELECT $1, $2").int(1), Read::new("SELECT $1").int(2)];
    assert!(sqlite_statements(&short, Snapshot::EachRead).is_err());
}

/// Three reads with parameters of each kind, one finding nothing, answer each its own rows in order, on both
/// databases and either way of seeing the database; a read that fails part-way leaves every connection usable and
/// out of any transaction.
#[tokio::test]
async fn reads_asked_together_answer_each_its_own_rows() {
    for (db, store) in stores_on_every_backend().await {
        for version in [2000_i64, 2001, 2002] {
            sqlx::query("INSERT INTO schema_migrations (version, name, applied_at) VALUES ($1, $2, $3)")
                .bind(version)
                .bind(format!("m{version}"))
                .bind(version * 10)
                .execute(&store.writer)
                .await
                .unwrap();
        }
        let reads = [
            Read::new("SELECT version FROM schema_migrations WHERE version >= $1 AND name <> $2 ORDER BY version")
                .int(2000)
                .text("m2001"),
            Read::new("SELECT version FROM schema_migrations WHERE name = $1").text("none such"),
            Read::new("SELECT name FROM schema_migrations WHERE applied_at = $1 AND $2 = $2").int(20010).bytes(*b"ab"),
        ];
        for snapshot in [Snapshot::One, Snapshot::EachRead] {
            let answers = store.read_together(&reads, snapshot).await.unwrap_or_else(|p| panic!("{}: {p:?}", db.url));
            assert_eq!(answers.len(), 3, "{} {snapshot:?}", db.url);
            let versions: Vec<i64> = answers[0].iter().map(|row| get(row, "version").unwrap()).collect();
            assert_eq!(versions, [2000, 2002], "{} {snapshot:?}", db.url);
            assert!(answers[1].is_empty(), "{} {snapshot:?}", db.url);
            let names: Vec<String> = answers[2].iter().map(|row| get(row, "name").unwrap()).collect();
            assert_eq!(names, ["m2001"], "{} {snapshot:?}", db.url);

            let failing = [reads[0].clone(), Read::new("SELECT no_such_column FROM schema_migrations")];
            let failed = store.read_together(&failing, snapshot).await;
            assert!(failed.is_err(), "{} {snapshot:?}: a read of a column that does not exist", db.url);
            // Each of the pool's connections answers again, none left in a transaction (its BEGIN would fail).
            for _ in 0..4 {
                let again = store.read_together(&reads, Snapshot::One).await;
                let again = again.unwrap_or_else(|p| panic!("{} {snapshot:?}: {p:?}", db.url));
                assert_eq!(again[2].len(), 1, "{} {snapshot:?}", db.url);
            }
        }
    }
}
