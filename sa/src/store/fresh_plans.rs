//! The plans each engine keeps for the hot joins on a fresh database, whose tables are nearly empty and have no
//! statistics yet: every joined row must be reached by a key, not by reading its whole table.

use quarry_core::Identifier;
use sqlx::{Connection, Row};

use super::authorizations::order_authorizations_read;
use super::database::Backend;
use super::database::tests::stores_on_every_backend;
use super::orders::reuse_candidates_read;
use super::statements::Statement;

/// A hot join as the store asks it on `backend`, PostgreSQL's types of its parameters, and values to plan it with.
struct HotJoin {
    name: &'static str,
    read: fn(Backend) -> Statement,
    postgres_types: &'static str,
    values: &'static str,
}

const HOT_JOINS: &[HotJoin] = &[
    HotJoin {
        name: "an order's authorizations",
        read: |backend| order_authorizations_read(backend, 7),
        postgres_types: "(BIGINT)",
        values: "(7)",
    },
    HotJoin {
        name: "orders to reuse",
        read: |backend| reuse_candidates_read(backend, 7, &[Identifier::dns("example.org")], "classic"),
        postgres_types: "(BIGINT, BYTEA, BIGINT, TEXT)",
        values: "(7, '\\x00', 0, 'classic')",
    },
];

/// The plan PostgreSQL keeps for a prepared statement once it stops planning each execution (forced here, as
/// it happens by itself from the sixth), and SQLite's plan, as text.
async fn kept_plan(url: &str, backend: Backend, join: &HotJoin, index: usize) -> String {
    let read = (join.read)(backend);
    let mut conn = sqlx::AnyConnection::connect(url).await.expect("connect");
    let lines: Vec<String> = match backend {
        Backend::Postgres => {
            sqlx::raw_sql("SET plan_cache_mode = force_generic_plan").execute(&mut conn).await.unwrap();
            let prepare = format!("PREPARE hot_{index} {} AS {}", join.postgres_types, read.sql());
            sqlx::raw_sql(sqlx::AssertSqlSafe(prepare)).execute(&mut conn).await.unwrap();
            let explain = format!("EXPLAIN EXECUTE hot_{index} {}", join.values);
            let rows = sqlx::raw_sql(sqlx::AssertSqlSafe(explain)).fetch_all(&mut conn).await.unwrap();
            rows.iter().map(|row| row.get::<String, _>(0)).collect()
        }
        Backend::Sqlite => {
            let explain = format!("EXPLAIN QUERY PLAN {}", read.sql());
            let rows = sqlx::query(sqlx::AssertSqlSafe(explain)).fetch_all(&mut conn).await.unwrap();
            rows.iter().map(|row| row.get::<String, _>("detail")).collect()
        }
    };
    let _ = conn.close().await;
    lines.join("\n")
}

#[tokio::test]
async fn the_hot_joins_reach_rows_by_their_keys_on_a_fresh_database() {
    for (db, store) in stores_on_every_backend().await {
        for (index, join) in HOT_JOINS.iter().enumerate() {
            let plan = kept_plan(&db.url, store.backend(), join, index).await;
            let full_scan =
                plan.lines().find(|line| line.contains("Seq Scan") || line.trim_start().starts_with("SCAN "));
            assert!(full_scan.is_none(), "{}: {} reads a whole table:\n{plan}", db.url, join.name);
        }
    }
}
