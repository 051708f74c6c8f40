//! The plans each engine keeps for the hot joins on a fresh database, whose tables are nearly empty and have no
//! statistics yet: every joined row must be reached by a key, not by reading its whole table.

use sqlx::{Connection, Row};

use super::database::Backend;
use super::database::tests::stores_on_every_backend;
use crate::queries;

/// A hot join: its SQL on each engine, PostgreSQL's parameter types, and values to plan it with.
struct HotJoin {
    name: &'static str,
    sqlite: &'static str,
    postgres: &'static str,
    postgres_types: &'static str,
    values: &'static str,
}

const HOT_JOINS: &[HotJoin] = &[
    HotJoin {
        name: "an order's authorizations",
        sqlite: queries::ORDER_AUTHORIZATIONS,
        postgres: queries::ORDER_AUTHORIZATIONS_POSTGRES,
        postgres_types: "(BIGINT)",
        values: "(7)",
    },
    HotJoin {
        name: "orders to reuse",
        sqlite: queries::ORDER_REUSE,
        postgres: queries::ORDER_REUSE_POSTGRES,
        postgres_types: "(BIGINT, BYTEA, BIGINT, TEXT)",
        values: "(7, '\\x00', 0, 'classic')",
    },
];

/// The plan PostgreSQL keeps for a prepared statement once it stops planning each execution (forced here, as
/// it happens by itself from the sixth), and SQLite's plan, as text.
async fn kept_plan(url: &str, backend: Backend, join: &HotJoin, index: usize) -> String {
    let mut conn = sqlx::AnyConnection::connect(url).await.expect("connect");
    let lines: Vec<String> = match backend {
        Backend::Postgres => {
            sqlx::raw_sql("SET plan_cache_mode = force_generic_plan").execute(&mut conn).await.unwrap();
            let prepare = format!("PREPARE hot_{index} {} AS {}", join.postgres_types, join.postgres);
            sqlx::raw_sql(sqlx::AssertSqlSafe(prepare)).execute(&mut conn).await.unwrap();
            let explain = format!("EXPLAIN EXECUTE hot_{index} {}", join.values);
            let rows = sqlx::raw_sql(sqlx::AssertSqlSafe(explain)).fetch_all(&mut conn).await.unwrap();
            rows.iter().map(|row| row.get::<String, _>(0)).collect()
        }
        Backend::Sqlite => {
            let explain = format!("EXPLAIN QUERY PLAN {}", join.sqlite);
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
