//! Criterion timings of every sa hot query (random existing rows) on a database of `QUARRY_BENCH_ROWS`
//! certificates, 10,000 by default: SQLite in a temporary directory, or the empty database `QUARRY_BENCH_DB` names
//! (e.g. `postgres://postgres@127.0.0.1:5433/bench`). `cargo bench -p quarry-sa --bench queries`
//! (`hot_queries` shows how the same queries scale to millions of rows, with p99s and query plans.)

use criterion::{Criterion, criterion_group, criterion_main};
use sqlx::any::AnyArguments;

mod fixture;

fn hot_queries(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let rows: i64 = std::env::var("QUARRY_BENCH_ROWS").ok().and_then(|n| n.parse().ok()).unwrap_or(10_000);
    let dir = tempfile::tempdir().expect("temporary directory");
    let (mut conn, backend) = runtime.block_on(fixture::open(std::env::var("QUARRY_BENCH_DB").ok(), dir.path()));
    let now = quarry_core::clock::now();
    runtime.block_on(async {
        fixture::fill(&mut conn, 0, rows, now).await;
        sqlx::raw_sql("ANALYZE").execute(&mut conn).await.expect("analyze");
    });
    let mut group = c.benchmark_group(format!("sa_hot_query/{backend:?}/{rows}"));
    let mut rng = fixture::Rng(42);
    for (name, sql) in fixture::QUERIES {
        group.bench_function(*name, |b| {
            b.iter(|| {
                let mut arguments = AnyArguments::default();
                fixture::bind(name, rng.below(rows), now, &mut arguments);
                runtime.block_on(sqlx::query_with(*sql, arguments).fetch_all(&mut conn)).expect(name)
            })
        });
    }
    group.finish();
}

criterion_group!(benches, hot_queries);
criterion_main!(benches);
