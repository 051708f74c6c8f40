//! Statements asked together: reads that do not depend on each other, and the statements that begin or end a write
//! transaction. sqlx runs each SQLite connection on a thread of its own, and every statement is a hand-off to that
//! thread and back (two wake-ups, which cost more than the statement). On SQLite the statements go as one string,
//! one hand-off in all, with `BEGIN` or `COMMIT` in it where one is needed; on PostgreSQL, whose driver binds
//! parameters to one statement at a time, they go one after another on one connection, as they did before.

use std::borrow::Cow;

use futures::TryStreamExt;
use quarry_core::Problem;
use sqlx::any::{AnyArguments, AnyQueryResult, AnyRow};
use sqlx::query::Query;
use sqlx::{Any, AnyConnection, Either, Executor};

use super::database::{Backend, Store, db_error, get, internal};
use super::pool::DbTransaction;

/// A value bound to a read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Param {
    Int(i64),
    Text(String),
    Bytes(Vec<u8>),
}

/// One statement whose parameters are numbered from `$1`, and their values in that order. Its SQL may be several
/// statements sharing those parameters, as [`Backend::one_statement`] joins them on SQLite (`;` separates them; the
/// store's SQL has none in a literal): their rows count as this statement's.
#[derive(Debug, Clone)]
pub(crate) struct Statement {
    sql: Cow<'static, str>,
    params: Vec<Param>,
}

impl Statement {
    pub(crate) fn new(sql: impl Into<Cow<'static, str>>) -> Self {
        let sql = sql.into();
        debug_assert!(splits_cleanly(&sql), "a statement's parts would be miscounted: {sql}");
        Self { sql, params: Vec::new() }
    }

    /// Its SQL, for tests that look at what the store sends.
    #[cfg(test)]
    pub(crate) fn sql(&self) -> &str {
        &self.sql
    }

    /// How many SQL statements it holds: how many results SQLite's driver gives it.
    fn parts(&self) -> usize {
        self.sql.split(';').filter(|part| !part.trim().is_empty()).count()
    }

    pub(crate) fn int(mut self, value: i64) -> Self {
        self.params.push(Param::Int(value));
        self
    }

    pub(crate) fn text(mut self, value: impl Into<String>) -> Self {
        self.params.push(Param::Text(value.into()));
        self
    }

    pub(crate) fn bytes(mut self, value: impl Into<Vec<u8>>) -> Self {
        self.params.push(Param::Bytes(value.into()));
        self
    }
}

/// Whether `sql` splits into its statements at every `;`, as [`Statement::parts`] counts them: no `;` inside a
/// quoted literal or name, and no comment (whose text could hold one, or be a part of its own).
fn splits_cleanly(sql: &str) -> bool {
    let mut quote = None;
    let mut previous = ' ';
    for c in sql.chars() {
        match quote {
            Some(open) if c == open => quote = None,
            Some(_) if c == ';' => return false,
            Some(_) => {}
            None if c == '\'' || c == '"' => quote = Some(c),
            None if (previous == '-' && c == '-') || (previous == '/' && c == '*') => return false,
            None => {}
        }
        previous = c;
    }
    quote.is_none()
}

fn bind_all<'q>(
    mut query: Query<'q, Any, AnyArguments>,
    params: impl Iterator<Item = &'q Param>,
) -> Query<'q, Any, AnyArguments> {
    for param in params {
        query = match param {
            Param::Int(value) => query.bind(*value),
            Param::Text(value) => query.bind(value.as_str()),
            Param::Bytes(value) => query.bind(value.as_slice()),
        };
    }
    query
}

/// `sql` with every parameter `$N` numbered `$(N + offset)`, and the highest `N`: SQLite's driver numbers the
/// parameters of a string of statements across all of them. The store's SQL has no `$` in a literal.
fn renumbered(sql: &str, offset: usize) -> (String, usize) {
    let mut out = String::with_capacity(sql.len() + 8);
    let mut highest = 0;
    let mut rest = sql;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..=at]);
        rest = &rest[at + 1..];
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if let Ok(number) = rest[..digits].parse::<usize>() {
            highest = highest.max(number);
            out.push_str(&(number + offset).to_string());
        } else {
            out.push_str(&rest[..digits]);
        }
        rest = &rest[digits..];
    }
    out.push_str(rest);
    (out, highest)
}

/// Each statement's SQL with its parameters numbered after those of the statements before it. A statement naming
/// more parameters than it binds is refused: joined to the others it would silently take the next one's values.
fn numbered_across(statements: &[Statement]) -> Result<Vec<String>, Problem> {
    let mut offset = 0;
    let mut numbered = Vec::with_capacity(statements.len());
    for statement in statements {
        let (sql, highest) = renumbered(&statement.sql, offset);
        if highest > statement.params.len() {
            return Err(internal(format!(
                "a statement names ${highest} but binds {} values: {}",
                statement.params.len(),
                statement.sql
            )));
        }
        numbered.push(sql);
        offset += statement.params.len();
    }
    Ok(numbered)
}

/// `statements` as one string of SQLite statements, their parameters numbered across them, after `leading` and
/// before `trailing` (`BEGIN`, `COMMIT`).
fn sqlite_string(statements: &[Statement], leading: Option<&str>, trailing: Option<&str>) -> Result<String, Problem> {
    let mut parts = Vec::with_capacity(statements.len() + 2);
    parts.extend(leading.map(str::to_owned));
    parts.extend(numbered_across(statements)?);
    parts.extend(trailing.map(str::to_owned));
    Ok(parts.join(";\n"))
}

impl Statement {
    /// One read answering whether each of `reads` finds a row, as one row of columns `found_0`, `found_1`, … (1 or 0,
    /// in `reads`' order; see [`found`]): reads whose rows only matter for being there cost one statement together,
    /// one round trip on PostgreSQL.
    pub(crate) fn finds_rows(reads: &[Statement]) -> Result<Statement, Problem> {
        if reads.is_empty() {
            return Ok(Statement::new("SELECT 0 AS found_none"));
        }
        let columns: Vec<String> = numbered_across(reads)?
            .iter()
            .enumerate()
            .map(|(i, sql)| format!("CAST(CASE WHEN EXISTS ({sql}) THEN 1 ELSE 0 END AS BIGINT) AS found_{i}"))
            .collect();
        Ok(Statement {
            sql: Cow::Owned(format!("SELECT {}", columns.join(", "))),
            params: reads.iter().flat_map(|read| read.params.iter().cloned()).collect(),
        })
    }

    /// One PostgreSQL statement of data-modifying CTEs: `WITH name AS (part), … main`, each part written with its
    /// own parameters from `$1`, numbered here after those of the parts before it. One round trip, and a
    /// transaction of its own; the parts see one snapshot, and each sees another's rows only through its
    /// `RETURNING` (a part that must wait for another refers to it by name).
    pub(crate) fn postgres_with(parts: Vec<(String, Statement)>, main: Statement) -> Result<Statement, Problem> {
        let (names, mut statements): (Vec<String>, Vec<Statement>) = parts.into_iter().unzip();
        statements.push(main);
        let mut numbered = numbered_across(&statements)?;
        let main_sql = numbered.pop().unwrap_or_default();
        let ctes: Vec<String> = names.iter().zip(numbered).map(|(name, sql)| format!("{name} AS ({sql})")).collect();
        let sql = if ctes.is_empty() { main_sql } else { format!("WITH {} {main_sql}", ctes.join(", ")) };
        Ok(Statement { sql: Cow::Owned(sql), params: statements.into_iter().flat_map(|s| s.params).collect() })
    }
}

/// What a [`Statement::finds_rows`] of `count` reads answered: whether each found a row.
pub(crate) fn found(rows: &[AnyRow], count: usize) -> Result<Vec<bool>, Problem> {
    let row = rows.first().ok_or_else(|| internal("a read of whether rows exist answered no row"))?;
    (0..count).map(|i| get::<i64>(row, &format!("found_{i}")).map(|found| found != 0)).collect()
}

/// `statements`' SQL as one query with every value bound.
fn sqlite_query<'q>(
    statements: &'q [Statement],
    leading: Option<&str>,
    trailing: Option<&str>,
) -> Result<Query<'q, Any, AnyArguments>, Problem> {
    let sql = sqlite_string(statements, leading, trailing)?;
    Ok(bind_all(sqlx::query(sqlx::AssertSqlSafe(sql)), statements.iter().flat_map(|s| &s.params)))
}

/// Each statement's rows, from the results of a string of statements: the driver follows each SQL statement's rows
/// with its result, rows or none. `leading` and `trailing` count the statements around `statements` (`BEGIN`,
/// `COMMIT`), whose results are dropped.
fn rows_by_statement(
    results: Vec<Either<AnyQueryResult, AnyRow>>,
    statements: &[Statement],
    leading: usize,
    trailing: usize,
) -> Result<Vec<Vec<AnyRow>>, Problem> {
    let mut answered = Vec::new();
    let mut rows = Vec::new();
    for result in results {
        match result {
            Either::Left(_) => answered.push(std::mem::take(&mut rows)),
            Either::Right(row) => rows.push(row),
        }
    }
    let expected = leading + statements.iter().map(Statement::parts).sum::<usize>() + trailing;
    if answered.len() != expected || !rows.is_empty() {
        return Err(internal(format!("{expected} statements answered {} times", answered.len())));
    }
    let mut answered = answered.into_iter().skip(leading);
    Ok(statements.iter().map(|statement| answered.by_ref().take(statement.parts()).flatten().collect()).collect())
}

/// `statement` as a query with its values bound.
fn bound(statement: &Statement) -> Query<'_, Any, AnyArguments> {
    let query = match &statement.sql {
        Cow::Borrowed(sql) => sqlx::query(*sql),
        Cow::Owned(sql) => sqlx::query(sqlx::AssertSqlSafe(sql.clone())),
    };
    bind_all(query, statement.params.iter())
}

/// Each statement's rows, one statement after another on `conn`.
async fn one_by_one(conn: &mut AnyConnection, statements: &[Statement]) -> Result<Vec<Vec<AnyRow>>, Problem> {
    let mut answers = Vec::with_capacity(statements.len());
    for statement in statements {
        answers.push(bound(statement).fetch_all(&mut *conn).await.map_err(db_error)?);
    }
    Ok(answers)
}

impl Store {
    /// The rows of each of `reads`, in their order, read on one connection of the reading pool, each read seeing
    /// the database as it is when it runs.
    pub(crate) async fn read_together(&self, reads: &[Statement]) -> Result<Vec<Vec<AnyRow>>, Problem> {
        match self.backend() {
            Backend::Sqlite => {
                let query = sqlite_query(reads, None, None)?;
                // The pool's own executor: a connection taken for the string alone, its errors observed.
                let results = (&self.pool).fetch_many(query).try_collect().await.map_err(db_error)?;
                rows_by_statement(results, reads, 0, 0)
            }
            Backend::Postgres => {
                let mut conn = self.pool.acquire().await.map_err(db_error)?;
                one_by_one(&mut conn, reads).await
            }
        }
    }

    /// Runs `statements` in their order in one write transaction and commits it; answers each one's rows. On SQLite
    /// `BEGIN IMMEDIATE`, the statements and `COMMIT` go as one string, one hand-off to the writer's thread; on
    /// PostgreSQL a lone statement runs by itself (a statement is its own transaction there), several between
    /// `BEGIN` and `COMMIT`. Only for statements whose rows need no look before the commit. A statement that fails
    /// keeps nothing of the transaction.
    pub(crate) async fn write_committed(&self, statements: &[Statement]) -> Result<Vec<Vec<AnyRow>>, Problem> {
        match (self.backend(), statements) {
            (Backend::Sqlite, _) => {
                let begin = self.backend().begin_write_statement();
                let query = sqlite_query(statements, Some(begin), Some("COMMIT"))?;
                let mut conn = self.writer.acquire().await.map_err(db_error)?;
                let results = conn.fetch_in_own_transaction(query).await.map_err(db_error)?;
                rows_by_statement(results, statements, 1, 1)
            }
            (Backend::Postgres, [statement]) => {
                Ok(vec![bound(statement).fetch_all(&self.writer).await.map_err(db_error)?])
            }
            (Backend::Postgres, _) => {
                let mut tx = self.begin_write().await?;
                let answers = one_by_one(&mut tx, statements).await?;
                tx.commit().await.map_err(db_error)?;
                Ok(answers)
            }
        }
    }

    /// Begins a write transaction with `statements`, run in their order, and answers each one's rows. On SQLite
    /// `BEGIN IMMEDIATE` and the statements go as one string, one hand-off to the writer's thread; on PostgreSQL
    /// they follow [`Store::begin_write`] one by one. On failure the transaction is rolled back.
    pub(crate) async fn begin_write_with_all(
        &self,
        statements: &[Statement],
    ) -> Result<(DbTransaction, Vec<Vec<AnyRow>>), Problem> {
        match self.backend() {
            Backend::Sqlite => {
                let query = sqlite_query(statements, Some(self.backend().begin_write_statement()), None)?;
                let conn = self.writer.acquire().await.map_err(db_error)?;
                let (tx, results) = DbTransaction::begin_with(conn, query).await.map_err(|(err, _)| db_error(err))?;
                // A malformed answer drops the transaction, which rolls it back.
                Ok((tx, rows_by_statement(results, statements, 1, 0)?))
            }
            Backend::Postgres => {
                let mut tx = self.begin_write().await?;
                let answers = one_by_one(&mut tx, statements).await?;
                Ok((tx, answers))
            }
        }
    }

    /// Runs `statements` in `tx`, in their order, and commits it; answers each one's rows. On SQLite the statements
    /// and `COMMIT` go as one string, one hand-off; on PostgreSQL one by one, then `COMMIT`. A statement that fails
    /// leaves the transaction to be rolled back, as a dropped one is. Only for statements whose rows need no look
    /// before the commit: whatever they answer is committed.
    pub(crate) async fn commit_with(
        &self,
        mut tx: DbTransaction,
        statements: &[Statement],
    ) -> Result<Vec<Vec<AnyRow>>, Problem> {
        match self.backend() {
            Backend::Sqlite => {
                let results = tx.fetch_and_commit(sqlite_query(statements, None, Some("COMMIT"))?).await;
                rows_by_statement(results.map_err(db_error)?, statements, 0, 1)
            }
            Backend::Postgres => {
                let answers = one_by_one(&mut tx, statements).await?;
                tx.commit().await.map_err(db_error)?;
                Ok(answers)
            }
        }
    }
}

#[cfg(test)]
mod tests;
