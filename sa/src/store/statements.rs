//! Statements the store builds once for both engines: SQL with parameters `$1`, `$2`, … and their values, and the
//! builders that fold several into one (`finds_rows`, `postgres_with`, `postgres_folded`) where a round trip to
//! PostgreSQL matters. `together` runs them.

use std::borrow::Cow;

use quarry_core::Problem;
use sqlx::any::{Any, AnyArguments};
use sqlx::query::Query;

use super::errors::internal;
use super::rows::{ReadColumn, get};

/// A value bound to a read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Param {
    Int(i64),
    Bool(bool),
    Text(String),
    /// A text column's `NULL`.
    NoText,
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
        debug_assert!(splits_cleanly(&sql), "a statement's parts would be split wrongly: {sql}");
        Self { sql, params: Vec::new() }
    }

    /// Its SQL: one statement, or several separated by `;`.
    pub(crate) fn sql(&self) -> &str {
        &self.sql
    }

    /// The values of `$1`, `$2`, … in order.
    pub(crate) fn params(&self) -> &[Param] {
        &self.params
    }

    pub(crate) fn int(mut self, value: i64) -> Self {
        self.params.push(Param::Int(value));
        self
    }

    /// A boolean, for SQL that tests it (`CASE WHEN $N`); stored values are integers on both engines.
    pub(crate) fn boolean(mut self, value: bool) -> Self {
        self.params.push(Param::Bool(value));
        self
    }

    pub(crate) fn text(mut self, value: impl Into<String>) -> Self {
        self.params.push(Param::Text(value.into()));
        self
    }

    /// A text, or `NULL` for none.
    pub(crate) fn optional_text(mut self, value: Option<String>) -> Self {
        self.params.push(value.map_or(Param::NoText, Param::Text));
        self
    }

    pub(crate) fn bytes(mut self, value: impl Into<Vec<u8>>) -> Self {
        self.params.push(Param::Bytes(value.into()));
        self
    }
}

/// Whether `sql` splits into its statements at every `;`, as SQLite's inline runs split them: no `;` inside a
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

/// `sql` with every parameter `$N` numbered `$(N + offset)`, and the highest `N`: statements folded into one
/// number their parameters across all of them. The store's SQL has no `$` in a literal.
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
pub(crate) fn numbered_across(statements: &[Statement]) -> Result<Vec<String>, Problem> {
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

    /// One PostgreSQL statement answering every one of `reads`: a row of one column per read (`read_0`, `read_1`, …),
    /// that read's rows as a JSON array of objects keyed by column name, in the read's order (see
    /// [`folded_answers`]). One round trip where the reads took one each; the reads see one snapshot. Each read's
    /// rows reach `json_agg` straight from its own subquery, with nothing between them that could reorder them, so an
    /// `ORDER BY` in the read holds in its array (PostgreSQL aggregates rows in the order its input gives them; its
    /// documentation promises that only "usually", the exception being a join or grouping at the aggregate's own
    /// level, which this has none of). No read may name a column `folded_row`, the row's own alias here. `bytea`
    /// comes as `\x` and hex digits (`bytea_output`, set so on every connection).
    pub(crate) fn postgres_folded(reads: &[Statement]) -> Result<Statement, Problem> {
        let columns: Vec<String> = numbered_across(reads)?
            .iter()
            .enumerate()
            .map(|(i, sql)| {
                format!("(SELECT COALESCE(json_agg(folded_row), '[]')::text FROM ({sql}) AS folded_row) AS read_{i}")
            })
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
pub(crate) fn found(rows: &[impl ReadColumn], count: usize) -> Result<Vec<bool>, Problem> {
    let row = rows.first().ok_or_else(|| internal("a read of whether rows exist answered no row"))?;
    (0..count).map(|i| get::<i64>(row, &format!("found_{i}")).map(|found| found != 0)).collect()
}

/// `statement` as a query with its values bound.
pub(crate) fn bound(statement: &Statement) -> Query<'_, Any, AnyArguments> {
    let query = match &statement.sql {
        Cow::Borrowed(sql) => sqlx::query(*sql),
        Cow::Owned(sql) => sqlx::query(sqlx::AssertSqlSafe(sql.clone())),
    };
    bind_all(query, statement.params.iter())
}

fn bind_all<'q>(
    mut query: Query<'q, Any, AnyArguments>,
    params: impl Iterator<Item = &'q Param>,
) -> Query<'q, Any, AnyArguments> {
    for param in params {
        query = match param {
            Param::Int(value) => query.bind(*value),
            Param::Bool(value) => query.bind(*value),
            Param::Text(value) => query.bind(value.as_str()),
            Param::NoText => query.bind(None::<&str>),
            Param::Bytes(value) => query.bind(value.as_slice()),
        };
    }
    query
}

#[cfg(test)]
mod tests;
