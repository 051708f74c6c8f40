//! Databases for tests: SQLite in a temporary directory always, and a fresh PostgreSQL database whenever the test
//! command provides a server (`QUARRY_TEST_POSTGRES_URL`, an administrative URL such as
//! `postgres://postgres@127.0.0.1:5433/postgres`; `scripts/test.sh` starts one).

use sqlx::Connection;

/// The environment variable naming the PostgreSQL server tests may create databases on.
pub const POSTGRES_ENV: &str = "QUARRY_TEST_POSTGRES_URL";

/// One empty database for one test; an SQLite file lives as long as this value.
pub struct TestDatabase {
    pub url: String,
    _dir: Option<tempfile::TempDir>,
}

impl TestDatabase {
    /// An SQLite database in a fresh temporary directory (the file is created on first use).
    pub fn sqlite() -> Self {
        let dir = tempfile::tempdir().expect("temporary directory");
        // A directory below, so that the sa must create it.
        let url = format!("sqlite://{}/db/quarry.db?mode=rwc", dir.path().display());
        Self { url, _dir: Some(dir) }
    }

    /// A new, empty PostgreSQL database, when the test command provides a server; `None` otherwise.
    pub async fn postgres() -> Option<Self> {
        let admin = std::env::var(POSTGRES_ENV).ok().filter(|url| !url.is_empty())?;
        let mut random = [0u8; 8];
        aws_lc_rs::rand::fill(&mut random).expect("random bytes");
        let name = format!("quarry_test_{}", random.iter().map(|b| format!("{b:02x}")).collect::<String>());
        let mut conn = sqlx::postgres::PgConnection::connect(&admin)
            .await
            .unwrap_or_else(|err| panic!("{POSTGRES_ENV} is set but PostgreSQL is not reachable: {err}"));
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut conn)
            .await
            .expect("create a test database");
        let _ = conn.close().await;
        let (server, _) = admin.rsplit_once('/').expect("a database URL with a path");
        Some(Self { url: format!("{server}/{name}"), _dir: None })
    }

    /// The number of rows in `table`, read directly from the database (tests check what the services stored);
    /// `table` may end in a `WHERE` clause to count only some.
    pub async fn count(&self, table: &str) -> i64 {
        sqlx::any::install_default_drivers();
        let mut conn = sqlx::AnyConnection::connect(&self.url).await.expect("connect to the test database");
        let count: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT COUNT(*) FROM {table}")))
            .fetch_one(&mut conn)
            .await
            .expect("count rows");
        let _ = conn.close().await;
        count
    }

    /// SQLite, and PostgreSQL when available: every backend a suite should run against.
    pub async fn every_backend() -> Vec<Self> {
        let mut databases = vec![Self::sqlite()];
        databases.extend(Self::postgres().await);
        databases
    }
}
