//! Statements asked together: reads that do not depend on each other (`Store::read_together`) and writes committed
//! together (`Store::write_committed`). On SQLite they run in place on the calling thread (`inline_sqlite`), several
//! at no more cost than one; on PostgreSQL, whose driver binds parameters to one statement at a time, several reads
//! are folded into one statement (`Statement::postgres_folded`), and writes go one after another in a transaction.

use quarry_core::Problem;
use sqlx::AnyConnection;

use super::database::{Backend, Store};
use super::errors::{db_error, internal};
use super::rows::{InlineRow, JsonRow, ReadColumn, Row, get};
use super::statements::{Statement, bound};

impl Store {
    /// The rows of each of `reads`, in their order: on SQLite read in turn on this thread (`inline_sqlite`), each
    /// seeing the database as it is when it runs; on PostgreSQL all of them in one statement
    /// ([`Statement::postgres_folded`]), one snapshot.
    pub(crate) async fn read_together(&self, reads: &[Statement]) -> Result<Vec<Vec<Row>>, Problem> {
        match self.backend() {
            Backend::Sqlite => Ok(inline_rows(self.inline()?.read(reads).await?)),
            Backend::Postgres if reads.len() > 1 => {
                let folded = Statement::postgres_folded(reads)?;
                let rows = bound(&folded).fetch_all(&self.pool).await.map_err(db_error)?;
                folded_answers(&rows, reads.len())
            }
            Backend::Postgres => {
                let mut conn = self.pool.acquire().await.map_err(db_error)?;
                one_by_one(&mut conn, reads).await
            }
        }
    }

    /// Runs `statements` in their order in one write transaction and commits it; answers each one's rows. On SQLite
    /// the transaction runs on this thread, from `BEGIN IMMEDIATE` to `COMMIT`; on PostgreSQL a lone statement runs
    /// by itself (a statement is its own transaction there), several between `BEGIN` and `COMMIT`. Only for
    /// statements whose rows need no look before the commit. A statement that fails keeps nothing of the
    /// transaction.
    pub(crate) async fn write_committed(&self, statements: &[Statement]) -> Result<Vec<Vec<Row>>, Problem> {
        match (self.backend(), statements) {
            (Backend::Sqlite, _) => {
                let answers = self.write_inline(|tx| statements.iter().map(|s| tx.run(s)).collect()).await?;
                Ok(inline_rows(answers))
            }
            (Backend::Postgres, [statement]) => {
                let rows = bound(statement).fetch_all(&self.writer).await.map_err(db_error)?;
                Ok(vec![rows.into_iter().map(Row::Sqlx).collect()])
            }
            (Backend::Postgres, _) => {
                let mut tx = self.begin_write().await?;
                let answers = one_by_one(&mut tx, statements).await?;
                tx.commit().await.map_err(db_error)?;
                Ok(answers)
            }
        }
    }
}

/// Each statement's rows read inline, as the store's rows.
fn inline_rows(answers: Vec<Vec<InlineRow>>) -> Vec<Vec<Row>> {
    answers.into_iter().map(|rows| rows.into_iter().map(Row::Inline).collect()).collect()
}

/// Each read's rows from the row a [`Statement::postgres_folded`] of `count` reads answered.
fn folded_answers(rows: &[impl ReadColumn], count: usize) -> Result<Vec<Vec<Row>>, Problem> {
    let row = rows.first().ok_or_else(|| internal("a folded read answered no row"))?;
    (0..count)
        .map(|i| {
            let json: String = get(row, &format!("read_{i}"))?;
            let objects: Vec<JsonRow> = serde_json::from_str(&json).map_err(internal)?;
            Ok(objects.into_iter().map(Row::Json).collect())
        })
        .collect()
}

/// Each statement's rows, one statement after another on `conn`.
async fn one_by_one(conn: &mut AnyConnection, statements: &[Statement]) -> Result<Vec<Vec<Row>>, Problem> {
    let mut answers = Vec::with_capacity(statements.len());
    for statement in statements {
        let rows = bound(statement).fetch_all(&mut *conn).await.map_err(db_error)?;
        answers.push(rows.into_iter().map(Row::Sqlx).collect());
    }
    Ok(answers)
}
