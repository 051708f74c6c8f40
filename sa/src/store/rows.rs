//! Rows as the store reads them, whichever way they came (sqlx, SQLite run in place, a folded PostgreSQL read's
//! JSON), and their columns read by name as one of the types the store stores.

use std::sync::Arc;

use quarry_core::Problem;
use rusqlite::types::Value as InlineValue;
use sqlx::any::AnyRow;
use sqlx::{Any, Row as _};

use super::errors::internal;

/// A row read inline: its statement's column names, shared by every row of it, and its values.
#[derive(Debug, Clone)]
pub(crate) struct InlineRow {
    columns: Arc<[String]>,
    values: Vec<InlineValue>,
}

impl InlineRow {
    /// A row of `columns` (shared by every row of its statement) holding `values`.
    pub(crate) fn new(columns: Arc<[String]>, values: Vec<InlineValue>) -> Self {
        Self { columns, values }
    }

    /// The value of `column`, if the row has one by that name.
    pub(crate) fn value(&self, column: &str) -> Option<&InlineValue> {
        self.columns.iter().position(|name| name == column).map(|i| &self.values[i])
    }
}

/// The value of `column` in `row`, as `T`.
pub(crate) fn get<T: ColumnValue>(row: &impl ReadColumn, column: &str) -> Result<T, Problem> {
    row.read_column(column)
}

/// A row the store read: through sqlx, from SQLite run inline, or from a folded PostgreSQL read's JSON.
#[derive(Clone)]
pub(crate) enum Row {
    Sqlx(AnyRow),
    Inline(InlineRow),
    /// A row of a read folded into one PostgreSQL statement with others (`Statement::postgres_folded`).
    Json(JsonRow),
}

/// A row as PostgreSQL's `json_agg` gives it: an object keyed by column name.
pub(crate) type JsonRow = serde_json::Map<String, serde_json::Value>;

/// A row whose columns [`get`] reads by name.
pub(crate) trait ReadColumn {
    fn read_column<T: ColumnValue>(&self, column: &str) -> Result<T, Problem>;
}

impl ReadColumn for AnyRow {
    fn read_column<T: ColumnValue>(&self, column: &str) -> Result<T, Problem> {
        self.try_get(column).map_err(internal)
    }
}

impl ReadColumn for InlineRow {
    fn read_column<T: ColumnValue>(&self, column: &str) -> Result<T, Problem> {
        let value = self.value(column).ok_or_else(|| internal(format!("no column {column}")))?;
        T::from_inline(value).ok_or_else(|| internal(format!("column {column} holds {value:?}")))
    }
}

impl ReadColumn for JsonRow {
    fn read_column<T: ColumnValue>(&self, column: &str) -> Result<T, Problem> {
        let value = self.get(column).ok_or_else(|| internal(format!("no column {column}")))?;
        T::from_json(value).ok_or_else(|| internal(format!("column {column} holds {value}")))
    }
}

impl ReadColumn for Row {
    fn read_column<T: ColumnValue>(&self, column: &str) -> Result<T, Problem> {
        match self {
            Row::Sqlx(row) => row.read_column(column),
            Row::Inline(row) => row.read_column(column),
            Row::Json(row) => row.read_column(column),
        }
    }
}

/// A type a column is read as, from either kind of row.
pub(crate) trait ColumnValue: Sized + for<'r> sqlx::Decode<'r, Any> + sqlx::Type<Any> {
    /// `value` as this type, if it is one (SQLite's storage classes: no conversion between them).
    fn from_inline(value: &InlineValue) -> Option<Self>;

    /// `value`, as PostgreSQL's `to_json` writes this type, if it is one (`bytea` as `\x` and hex digits).
    fn from_json(value: &serde_json::Value) -> Option<Self>;
}

impl ColumnValue for i64 {
    fn from_inline(value: &InlineValue) -> Option<Self> {
        match value {
            InlineValue::Integer(value) => Some(*value),
            _ => None,
        }
    }

    fn from_json(value: &serde_json::Value) -> Option<Self> {
        value.as_i64()
    }
}

impl ColumnValue for String {
    fn from_inline(value: &InlineValue) -> Option<Self> {
        match value {
            InlineValue::Text(value) => Some(value.clone()),
            _ => None,
        }
    }

    fn from_json(value: &serde_json::Value) -> Option<Self> {
        value.as_str().map(str::to_owned)
    }
}

impl ColumnValue for Vec<u8> {
    fn from_inline(value: &InlineValue) -> Option<Self> {
        match value {
            InlineValue::Blob(value) => Some(value.clone()),
            _ => None,
        }
    }

    fn from_json(value: &serde_json::Value) -> Option<Self> {
        hex::decode(value.as_str()?.strip_prefix("\\x")?).ok()
    }
}

impl<T: ColumnValue> ColumnValue for Option<T> {
    fn from_inline(value: &InlineValue) -> Option<Self> {
        match value {
            InlineValue::Null => Some(None),
            value => T::from_inline(value).map(Some),
        }
    }

    fn from_json(value: &serde_json::Value) -> Option<Self> {
        match value {
            serde_json::Value::Null => Some(None),
            value => T::from_json(value).map(Some),
        }
    }
}
