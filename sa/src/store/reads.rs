//! Reads that do not depend on each other, asked together. sqlx runs each SQLite connection on a thread of its own,
//! and every statement is a hand-off to that thread and back (two wake-ups, which cost more than the read). On
//! SQLite the reads go as one string of statements, one hand-off in all; on PostgreSQL, whose driver binds
//! parameters to one statement at a time, they go one after another on one connection, as they did before.

use futures::TryStreamExt;
use quarry_core::Problem;
use sqlx::any::{AnyArguments, AnyQueryResult, AnyRow};
use sqlx::query::Query;
use sqlx::{Any, AnyConnection, Either, Executor};

use super::database::{Backend, Store, db_error, internal};

/// A value bound to a read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Param {
    Int(i64),
    Text(String),
    Bytes(Vec<u8>),
}

/// One read: a statement whose parameters are numbered from `$1`, and their values in that order.
#[derive(Debug, Clone)]
pub(crate) struct Read {
    sql: &'static str,
    params: Vec<Param>,
}

impl Read {
    pub(crate) fn new(sql: &'static str) -> Self {
        Self { sql, params: Vec::new() }
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

/// Whether reads asked together must see one state of the database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Snapshot {
    /// One transaction: a deferred one on SQLite (one WAL snapshot, no lock a writer would wait for), a read-only
    /// repeatable-read one on PostgreSQL.
    One,
    /// Each read sees the database as it is when it runs.
    EachRead,
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

/// The reads as one string of SQLite statements, their parameters numbered across them, between `BEGIN` and
/// `COMMIT` for one snapshot. A read naming more parameters than it binds is refused: in the string it would
/// silently take the next read's values (SQLite's driver leaves missing ones NULL only at the very end).
fn sqlite_statements(reads: &[Read], snapshot: Snapshot) -> Result<String, Problem> {
    let mut statements = Vec::with_capacity(reads.len() + 2);
    if snapshot == Snapshot::One {
        statements.push("BEGIN".to_owned());
    }
    let mut offset = 0;
    for read in reads {
        let (sql, highest) = renumbered(read.sql, offset);
        if highest > read.params.len() {
            return Err(internal(format!(
                "a read names ${highest} but binds {} values: {}",
                read.params.len(),
                read.sql
            )));
        }
        statements.push(sql);
        offset += read.params.len();
    }
    if snapshot == Snapshot::One {
        statements.push("COMMIT".to_owned());
    }
    Ok(statements.join(";\n"))
}

/// Each statement's rows, from the results of a string of statements: the driver follows each statement's rows
/// with its result, rows or none.
fn rows_by_statement(results: Vec<Either<AnyQueryResult, AnyRow>>) -> Vec<Vec<AnyRow>> {
    let mut statements = Vec::new();
    let mut rows = Vec::new();
    for result in results {
        match result {
            Either::Left(_) => statements.push(std::mem::take(&mut rows)),
            Either::Right(row) => rows.push(row),
        }
    }
    statements
}

/// Each read's rows, one read after another on `conn`.
async fn one_by_one(conn: &mut AnyConnection, reads: &[Read]) -> Result<Vec<Vec<AnyRow>>, Problem> {
    let mut answers = Vec::with_capacity(reads.len());
    for read in reads {
        let query = bind_all(sqlx::query(read.sql), read.params.iter());
        answers.push(query.fetch_all(&mut *conn).await.map_err(db_error)?);
    }
    Ok(answers)
}

impl Store {
    /// The rows of each of `reads`, in their order, read on one connection of the reading pool.
    pub(crate) async fn read_together(&self, reads: &[Read], snapshot: Snapshot) -> Result<Vec<Vec<AnyRow>>, Problem> {
        match (self.backend(), snapshot) {
            (Backend::Sqlite, _) => {
                let statements = sqlite_statements(reads, snapshot)?;
                let query =
                    bind_all(sqlx::query(sqlx::AssertSqlSafe(statements)), reads.iter().flat_map(|r| &r.params));
                let results = match snapshot {
                    Snapshot::One => {
                        let mut conn = self.pool.acquire().await.map_err(db_error)?;
                        conn.fetch_in_own_transaction(query).await
                    }
                    // The pool's own executor: a connection taken for the string alone, its errors observed.
                    Snapshot::EachRead => (&self.pool).fetch_many(query).try_collect().await,
                };
                let mut answers = rows_by_statement(results.map_err(db_error)?);
                let enclosing = if snapshot == Snapshot::One { 2 } else { 0 };
                if answers.len() != reads.len() + enclosing {
                    return Err(internal(format!("{} reads answered {} times", reads.len(), answers.len())));
                }
                if enclosing > 0 {
                    // BEGIN's and COMMIT's (empty) results.
                    answers.pop();
                    answers.remove(0);
                }
                Ok(answers)
            }
            (Backend::Postgres, Snapshot::One) => {
                let mut tx = self.begin_read().await?;
                let answers = one_by_one(&mut tx, reads).await?;
                tx.commit().await.map_err(db_error)?;
                Ok(answers)
            }
            (Backend::Postgres, Snapshot::EachRead) => {
                let mut conn = self.pool.acquire().await.map_err(db_error)?;
                one_by_one(&mut conn, reads).await
            }
        }
    }
}

#[cfg(test)]
mod tests;
