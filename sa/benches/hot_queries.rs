//! Fills a database with certificates (and their accounts, orders, authorizations, names and revocations) and times
//! every hot query of the sa at 10k, 100k and 1M certificates, then shows each query's plan: the goal is a p99 at
//! 1M within 2× of the p99 at 10k, which only index lookups achieve.
//!
//! `cargo bench -p quarry-sa --bench hot_queries -- --db postgres://postgres@127.0.0.1:5433/bench --rows 1000000`
//! (without `--db`, SQLite in a temporary directory). The database must be empty; it is migrated first.

use std::time::Instant;

use quarry_sa::store::Backend;
use sqlx::AnyConnection;
use sqlx::any::AnyArguments;

mod fixture;
use fixture::{QUERIES, Rng, bind, fill};

const SAMPLES: usize = 2_000;
/// Unmeasured queries first, so that each query's index pages are as warm as in a running CA.
const WARM_UP: usize = 200;

struct Args {
    db: Option<String>,
    rows: i64,
}

fn args() -> Args {
    let mut parsed = Args { db: None, rows: 1_000_000 };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--db" => parsed.db = args.next(),
            "--rows" => parsed.rows = args.next().and_then(|n| n.parse().ok()).expect("--rows N"),
            _ => {} // cargo bench passes --bench
        }
    }
    parsed
}

/// p50 and p99 latencies of each query over random existing rows, in microseconds.
async fn measure(conn: &mut AnyConnection, certs: i64, now: i64) -> Vec<(u128, u128)> {
    let mut rng = Rng(42);
    let mut results = Vec::new();
    for (name, sql) in QUERIES {
        let mut samples = Vec::with_capacity(SAMPLES);
        for i in 0..WARM_UP + SAMPLES {
            let mut arguments = AnyArguments::default();
            bind(name, rng.below(certs), now, &mut arguments);
            let started = Instant::now();
            let rows = sqlx::query_with(*sql, arguments).fetch_all(&mut *conn).await.expect(name);
            if i >= WARM_UP {
                samples.push(started.elapsed());
            }
            assert!(!rows.is_empty() || *name == "REVOKED_BY_SHARD", "{name} found nothing");
        }
        samples.sort();
        let at = |q: f64| samples[((samples.len() as f64 * q) as usize).min(samples.len() - 1)].as_micros();
        results.push((at(0.50), at(0.99)));
    }
    results
}

async fn plans(conn: &mut AnyConnection, backend: Backend, now: i64) {
    println!("\n### Query plans\n");
    for (name, sql) in QUERIES {
        let explain = match backend {
            Backend::Sqlite => format!("EXPLAIN QUERY PLAN {sql}"),
            Backend::Postgres => format!("EXPLAIN {sql}"),
        };
        let mut arguments = AnyArguments::default();
        bind(name, 12_345, now, &mut arguments);
        let rows =
            sqlx::query_with(sqlx::AssertSqlSafe(explain), arguments).fetch_all(&mut *conn).await.expect("explain");
        println!("{name}:");
        for row in rows {
            use sqlx::Row;
            let line: String = match backend {
                Backend::Sqlite => row.try_get("detail").unwrap_or_default(),
                Backend::Postgres => row.try_get(0).unwrap_or_default(),
            };
            println!("    {line}");
        }
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args = args();
    let dir = tempfile::tempdir().expect("temporary directory");
    let (mut conn, backend) = fixture::open(args.db, dir.path()).await;
    let now = quarry_core::clock::now();
    println!("## sa hot queries on {backend:?}: p50 / p99 in µs ({SAMPLES} samples each)\n");
    print!("| certificates | fill s |");
    for (name, _) in QUERIES {
        print!(" {name} |");
    }
    println!("\n|---|---|{}", "---|".repeat(QUERIES.len()));
    let mut filled = 0;
    for checkpoint in [10_000, 100_000, 1_000_000, 10_000_000].into_iter().filter(|c| *c <= args.rows) {
        let started = Instant::now();
        fill(&mut conn, filled, checkpoint, now).await;
        filled = checkpoint;
        sqlx::raw_sql("ANALYZE").execute(&mut conn).await.expect("analyze");
        let fill_secs = started.elapsed().as_secs_f64();
        let results = measure(&mut conn, filled, now).await;
        print!("| {filled} | {fill_secs:.0} |");
        for (p50, p99) in results {
            print!(" {p50} / {p99} |");
        }
        println!();
    }
    plans(&mut conn, backend, now).await;
}
