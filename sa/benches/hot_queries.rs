//! Fills a database with certificates (and their accounts, orders, authorizations, names and revocations) and times
//! every hot query of the sa at 10k, 100k and 1M certificates, then shows each query's plan: the goal is a p99 at
//! 1M within 2× of the p99 at 10k, which only index lookups achieve.
//!
//! `cargo bench -p quarry-sa --bench hot_queries -- --db postgres://postgres@127.0.0.1:5433/bench --rows 1000000`
//! (without `--db`, SQLite in a temporary directory). The database must be empty; it is migrated first.

use std::time::{Duration, Instant};

use quarry_sa::queries;
use quarry_sa::store::{Backend, PoolSettings, Store};
use sqlx::any::AnyArguments;
use sqlx::{AnyConnection, Arguments, Connection};

const DAY: i64 = 86_400;
/// Certificates per registered domain (renewals of one set of names), and per account.
const CERTS_PER_DOMAIN: i64 = 4;
const CERTS_PER_ACCOUNT: i64 = 10;
/// One certificate in this many is revoked.
const REVOKED_ONE_IN: i64 = 100;
const CRL_SHARDS: i64 = 128;
/// Rows per multi-row INSERT: well under both engines' limits on bound parameters.
const BATCH: i64 = 500;
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

/// Deterministic pseudo-random numbers (SplitMix64), so that runs are comparable.
struct Rng(u64);
impl Rng {
    fn below(&mut self, n: i64) -> i64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        ((z ^ (z >> 31)) % n as u64) as i64
    }
}

fn domain(cert: i64) -> String {
    format!("d{}.bench-quarry.org", cert / CERTS_PER_DOMAIN)
}
fn account_of(cert: i64) -> i64 {
    cert / CERTS_PER_ACCOUNT + 1
}
fn key_hash(account: i64) -> Vec<u8> {
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &account.to_be_bytes()).as_ref().to_vec()
}
fn serial(cert: i64) -> String {
    format!("7f{:034x}", cert)
}
fn reversed(name: &str) -> String {
    name.split('.').rev().collect::<Vec<_>>().join(".")
}

/// A table, its columns, and the rows to insert.
type TableRows = (&'static str, &'static [&'static str], Vec<Vec<Value>>);

/// Values of one row, bound in order.
enum Value {
    Int(i64),
    Text(String),
    Bytes(Vec<u8>),
}

fn push(arguments: &mut AnyArguments, value: &Value) {
    match value {
        Value::Int(v) => arguments.add(*v).unwrap(),
        Value::Text(v) => arguments.add(v.clone()).unwrap(),
        Value::Bytes(v) => arguments.add(v.clone()).unwrap(),
    }
}

/// Inserts `rows` into `table` in multi-row statements.
async fn insert(conn: &mut AnyConnection, table: &str, columns: &[&str], rows: Vec<Vec<Value>>) {
    for chunk in rows.chunks(BATCH as usize) {
        let mut sql = format!("INSERT INTO {table} ({}) VALUES ", columns.join(", "));
        let mut arguments = AnyArguments::default();
        let mut n = 0;
        for (i, row) in chunk.iter().enumerate() {
            sql.push_str(if i == 0 { "(" } else { ", (" });
            for (j, value) in row.iter().enumerate() {
                n += 1;
                sql.push_str(&format!("{}${n}", if j == 0 { "" } else { ", " }));
                push(&mut arguments, value);
            }
            sql.push(')');
        }
        sqlx::query_with(sqlx::AssertSqlSafe(sql), arguments).execute(&mut *conn).await.expect("insert");
    }
}

/// Adds certificates `from..to` with everything that comes with them.
async fn fill(conn: &mut AnyConnection, from: i64, to: i64, now: i64) {
    use Value::*;
    let der = vec![0x30u8; 1_200];
    let mut step = from;
    while step < to {
        let end = (step + 10 * BATCH).min(to);
        let mut tables: Vec<TableRows> = vec![
            ("accounts", &["id", "jwk", "key_hash", "status", "contact", "created_at"], Vec::new()),
            (
                "authorizations",
                &[
                    "id",
                    "account_id",
                    "identifier_type",
                    "identifier_value",
                    "status",
                    "expires",
                    "challenge_types",
                    "token",
                    "profile",
                    "created",
                ],
                Vec::new(),
            ),
            (
                "orders",
                &[
                    "id",
                    "account_id",
                    "expires",
                    "certificate_serial",
                    "began_processing",
                    "created",
                    "profile",
                    "identifiers",
                ],
                Vec::new(),
            ),
            ("order_authorizations", &["order_id", "authorization_id", "position"], Vec::new()),
            ("order_fqdn_sets", &["set_hash", "order_id", "account_id", "expires"], Vec::new()),
            ("serials", &["serial", "account_id", "created", "expires"], Vec::new()),
            ("certificates", &["serial", "account_id", "digest", "der", "issued", "expires", "issuer_id"], Vec::new()),
            ("certificate_status", &["serial", "status", "not_after", "issuer_id"], Vec::new()),
            ("fqdn_sets", &["set_hash", "serial", "issued", "expires"], Vec::new()),
            ("issued_names", &["reversed_name", "not_before", "serial"], Vec::new()),
            (
                "revoked_certificates",
                &["issuer_id", "shard_idx", "serial", "revoked_date", "revoked_reason", "not_after_hour"],
                Vec::new(),
            ),
        ];
        for cert in step..end {
            let id = cert + 1;
            let account = account_of(cert);
            // Spread over the last 80 days, newest last.
            let issued = now - 80 * DAY + cert * (80 * DAY) / 1_000_000;
            let expires = issued + 90 * DAY;
            let name = domain(cert);
            let names = [name.clone(), format!("www.{name}")];
            let set_hash = quarry_sa::store::fqdn_set_hash(names.iter().map(String::as_str));
            let serial = serial(cert);
            if cert % CERTS_PER_ACCOUNT == 0 {
                tables[0].2.push(vec![
                    Int(account),
                    Bytes(b"{}".to_vec()),
                    Bytes(key_hash(account)),
                    Text("valid".into()),
                    Text("[]".into()),
                    Int(issued),
                ]);
            }
            tables[1].2.push(vec![
                Int(id),
                Int(account),
                Text("dns".into()),
                Text(name.clone()),
                Text("valid".into()),
                Int(issued + 30 * DAY),
                Text("http-01".into()),
                Text(format!("t{id}")),
                Text("classic".into()),
                Int(issued),
            ]);
            tables[2].2.push(vec![
                Int(id),
                Int(account),
                Int(issued + 7 * DAY),
                Text(serial.clone()),
                Int(issued),
                Int(issued),
                Text("classic".into()),
                Text("[]".into()),
            ]);
            tables[3].2.push(vec![Int(id), Int(id), Int(0)]);
            tables[4].2.push(vec![Bytes(set_hash.clone()), Int(id), Int(account), Int(issued + 7 * DAY)]);
            tables[5].2.push(vec![Text(serial.clone()), Int(account), Int(issued), Int(expires)]);
            tables[6].2.push(vec![
                Text(serial.clone()),
                Int(account),
                Text(format!("{id:064x}")),
                Bytes(der.clone()),
                Int(issued),
                Int(expires),
                Int(1),
            ]);
            tables[7].2.push(vec![Text(serial.clone()), Text("good".into()), Int(expires), Int(1)]);
            tables[8].2.push(vec![Bytes(set_hash), Text(serial.clone()), Int(issued), Int(expires)]);
            for n in &names {
                tables[9].2.push(vec![Text(reversed(n)), Int(issued), Text(serial.clone())]);
            }
            if cert % REVOKED_ONE_IN == 0 {
                tables[10].2.push(vec![
                    Int(1),
                    Int(cert % CRL_SHARDS),
                    Text(serial),
                    Int(issued + DAY),
                    Int(1),
                    Int(expires - expires % 3_600),
                ]);
            }
        }
        let mut tx = conn.begin().await.expect("begin");
        for (table, columns, rows) in tables {
            insert(&mut tx, table, columns, rows).await;
        }
        tx.commit().await.expect("commit");
        step = end;
    }
}

/// The hot queries, each with a way to bind random existing parameters.
fn bind(query: &str, cert: i64, now: i64, arguments: &mut AnyArguments) {
    let name = domain(cert);
    let set_hash = quarry_sa::store::fqdn_set_hash([name.as_str(), &format!("www.{name}")]);
    use Value::*;
    let values = match query {
        "ACCOUNT_BY_KEY" => vec![Bytes(key_hash(account_of(cert)))],
        "VALID_AUTHORIZATION" => vec![
            Int(account_of(cert)),
            Text("dns".into()),
            Text(name),
            Int(now - 90 * DAY),
            Text(String::new()),
            Text(String::new()),
        ],
        "ORDER_REUSE" => vec![Int(account_of(cert)), Bytes(set_hash), Int(now - 90 * DAY), Text("classic".into())],
        "FQDN_SET_TIMES" => vec![Bytes(set_hash), Int(now - 90 * DAY)],
        "CERTIFICATES_FOR_DOMAIN" => {
            let r = reversed(&name);
            vec![Text(r.clone()), Text(format!("{r}.")), Text(format!("{r}/")), Int(now - 90 * DAY)]
        }
        "REVOKED_BY_SHARD" => vec![Int(1), Int(cert % CRL_SHARDS), Int(now - 90 * DAY)],
        "CERTIFICATE_BY_SERIAL" => vec![Text(serial(cert))],
        other => panic!("unknown query {other}"),
    };
    for value in &values {
        push(arguments, value);
    }
}

const QUERIES: &[(&str, &str)] = &[
    ("ACCOUNT_BY_KEY", queries::ACCOUNT_BY_KEY),
    ("VALID_AUTHORIZATION", queries::VALID_AUTHORIZATION),
    ("ORDER_REUSE", queries::ORDER_REUSE),
    ("FQDN_SET_TIMES", queries::FQDN_SET_TIMES),
    ("CERTIFICATES_FOR_DOMAIN", queries::CERTIFICATES_FOR_DOMAIN),
    ("REVOKED_BY_SHARD", queries::REVOKED_BY_SHARD),
    ("CERTIFICATE_BY_SERIAL", queries::CERTIFICATE_BY_SERIAL),
];

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
    quarry_core::install_crypto_provider();
    let args = args();
    let dir = tempfile::tempdir().expect("temporary directory");
    let url = args.db.unwrap_or_else(|| format!("sqlite://{}/bench.db?mode=rwc", dir.path().display()));
    let settings = PoolSettings { max_connections: 1, statement_timeout: Duration::from_secs(600) };
    let store = Store::open(&url, settings).await.expect("open and migrate");
    let backend = store.backend();
    drop(store);
    let mut conn = AnyConnection::connect(&url).await.expect("connect");
    if backend == Backend::Sqlite {
        sqlx::raw_sql("PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL").execute(&mut conn).await.unwrap();
    }
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
