//! The expand/contract rule of docs/migrations.md, checked. During a rolling update the previous release's sa
//! replicas run against the schema the new release's migration Job has just applied, so a migration may only add
//! (tables, indexes, columns that are nullable or have a default); taking something away waits for a release that no
//! longer uses it, and says so. Two checks: every statement a released sa sends (recorded by
//! scripts/record-sa-queries.sh) still prepares on the current schema, on both backends; and every migration either
//! only expands or names what it contracts, which no released statement may still mention.

use std::path::{Path, PathBuf};

use quarry_sa::Store;
use quarry_sa::store::PoolSettings;
use quarry_testkit::db::TestDatabase;
use sqlx::{Connection, Executor, SqlSafeStr};

/// Every release's recorded statements: the releases a rolling update may still be running.
const RELEASED: &[(&str, &str)] = &[("0.1.0", include_str!("../../compat/queries-0.1.0.sql"))];

fn statements(text: &str) -> impl Iterator<Item = &str> {
    text.lines()
        .filter(|line| !line.starts_with("--") && !line.trim().is_empty())
        .map(|line| line.trim_end_matches(';'))
}

#[tokio::test]
async fn a_released_versions_queries_run_on_the_current_schema() {
    let settings = PoolSettings { max_connections: 2, statement_timeout: std::time::Duration::from_secs(5) };
    for db in TestDatabase::every_backend().await {
        // Opening the store applies every migration of this build.
        let _store = Store::open(&db.url, settings).await.expect("open and migrate");
        let mut connection = sqlx::AnyConnection::connect(&db.url).await.expect("connect");
        let mut prepared = 0;
        for (version, text) in RELEASED {
            for statement in statements(text) {
                // Recorded text, not built from input: the one place a test prepares SQL it did not write.
                let sql = sqlx::AssertSqlSafe(statement.to_owned()).into_sql_str();
                if let Err(err) = connection.prepare(sql).await
                    && names_what_is_gone(&err)
                {
                    panic!("release {version}'s statement no longer runs on {}: {err}\n{statement}", db.url);
                }
                prepared += 1;
            }
        }
        assert!(prepared > 50, "the recordings hold the sa's statements ({prepared})");
        // And the check bites: a statement naming a column or table the schema lacks is caught on each backend.
        for gone in ["SELECT retired_column FROM orders WHERE id = $1", "SELECT id FROM retired_table"] {
            let Err(err) = connection.prepare(gone.into_sql_str()).await else {
                panic!("{gone} prepared on {}", db.url)
            };
            assert!(names_what_is_gone(&err), "{}: {err}", db.url);
        }
    }
}

/// Whether preparing failed because the schema lacks what the statement names. PostgreSQL also infers the types of
/// parameters a prepared statement is not given (sqlx gives them at run time), so its type-inference errors say
/// nothing about the schema; SQLite checks names only.
fn names_what_is_gone(err: &sqlx::Error) -> bool {
    const UNDEFINED_TABLE: &str = "42P01";
    const UNDEFINED_COLUMN: &str = "42703";
    const UNDEFINED_OBJECT: &str = "42704";
    match err.as_database_error().and_then(|db| db.code()) {
        Some(code) if code.len() == 5 && code.starts_with("42") && code != "42601" => {
            [UNDEFINED_TABLE, UNDEFINED_COLUMN, UNDEFINED_OBJECT].contains(&code.as_ref())
        }
        // SQLite's errors carry no SQLSTATE; "no such table/column" is what a prepare can fail on.
        _ => true,
    }
}

/// A statement of a migration that takes something away from what a running release may use.
fn contraction(statement: &str) -> Option<&'static str> {
    let upper = statement.to_ascii_uppercase();
    let words: Vec<&str> = upper.split_whitespace().collect();
    let has = |sequence: &[&str]| words.windows(sequence.len()).any(|window| window == sequence);
    if has(&["DROP", "TABLE"]) || has(&["DROP", "COLUMN"]) {
        Some("drops what a running release may read or write")
    } else if has(&["RENAME"]) {
        Some("renames what a running release names")
    } else if has(&["SET", "NOT", "NULL"]) || (has(&["ALTER", "COLUMN"]) && has(&["TYPE"])) {
        Some("narrows a column a running release writes")
    } else if has(&["ADD", "COLUMN"]) && has(&["NOT", "NULL"]) && !has(&["DEFAULT"]) {
        Some("adds a required column a running release's inserts do not fill")
    } else {
        None
    }
}

fn migrations() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
    let mut files: Vec<PathBuf> = ["postgres", "sqlite"]
        .iter()
        .flat_map(|backend| std::fs::read_dir(dir.join(backend)).expect("migrations").map(|e| e.expect("entry").path()))
        .collect();
    files.sort();
    files
}

/// The names a migration declares it contracts: `-- contract: <name>` lines.
fn declared_contractions(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|line| line.trim().strip_prefix("-- contract:"))
        .map(|name| name.trim().to_owned())
        .collect()
}

/// Every migration, checked as the rule says; returns the findings.
fn check_migrations(files: &[(String, String)]) -> Vec<String> {
    let mut findings = Vec::new();
    for (name, text) in files {
        let declared = declared_contractions(text);
        let body: String =
            text.lines().filter(|line| !line.trim_start().starts_with("--")).collect::<Vec<_>>().join("\n");
        for statement in body.split(';').map(str::trim).filter(|s| !s.is_empty()) {
            let Some(what) = contraction(statement) else { continue };
            let named = declared.iter().find(|object| statement.contains(object.as_str()));
            match named {
                None => findings.push(format!(
                    "{name}: `{statement}` {what}: expand now, contract in a later release with `-- contract: <name>`"
                )),
                Some(object) => {
                    for (version, queries) in RELEASED {
                        if statements(queries).any(|query| mentions(query, object)) {
                            findings.push(format!(
                                "{name}: contracts {object}, which release {version} still uses: wait for a release \
                                 that no longer does"
                            ));
                        }
                    }
                }
            }
        }
    }
    findings
}

fn mentions(query: &str, object: &str) -> bool {
    query.split(|c: char| !c.is_ascii_alphanumeric() && c != '_').any(|word| word.eq_ignore_ascii_case(object))
}

#[test]
fn migrations_only_expand_unless_they_name_what_they_contract() {
    let files: Vec<(String, String)> = migrations()
        .into_iter()
        .map(|path| (path.display().to_string(), std::fs::read_to_string(&path).expect("read")))
        .collect();
    assert!(files.len() >= 18, "both backends' migrations: {}", files.len());
    let findings = check_migrations(&files);
    assert!(findings.is_empty(), "{findings:#?}");
}

/// The check itself: each way of taking something away is caught, and a declared contraction of something no
/// released statement uses passes.
#[test]
fn the_migration_rule_catches_every_contraction() {
    let refused = [
        "ALTER TABLE orders DROP COLUMN replaces",
        "DROP TABLE fqdn_sets",
        "ALTER TABLE accounts RENAME COLUMN contact TO contacts",
        "ALTER TABLE orders ALTER COLUMN profile SET NOT NULL",
        "ALTER TABLE orders ALTER COLUMN expires TYPE INTEGER",
        "ALTER TABLE accounts ADD COLUMN region TEXT NOT NULL",
    ];
    for statement in refused {
        let findings = check_migrations(&[("m.sql".to_owned(), format!("{statement};\n"))]);
        assert_eq!(findings.len(), 1, "{statement}: {findings:?}");
    }
    let expanding =
        "ALTER TABLE accounts ADD COLUMN region TEXT NOT NULL DEFAULT '';\nCREATE INDEX a ON orders (profile);\n";
    assert!(check_migrations(&[("m.sql".to_owned(), expanding.to_owned())]).is_empty());
    // Declared, but release 0.1.0 still reads the column: refused all the same.
    let early = "-- contract: replaces\nALTER TABLE orders DROP COLUMN replaces;\n";
    let findings = check_migrations(&[("m.sql".to_owned(), early.to_owned())]);
    assert!(findings.iter().any(|f| f.contains("release 0.1.0 still uses")), "{findings:?}");
    // Declared, and no release uses it any more.
    let late = "-- contract: legacy_notes\nALTER TABLE orders DROP COLUMN legacy_notes;\n";
    assert!(check_migrations(&[("m.sql".to_owned(), late.to_owned())]).is_empty());
}
