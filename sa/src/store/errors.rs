//! The store's errors: a database error as a typed kind a caller can act on (`duplicate`, `notFound`,
//! `unavailable`, `timeout`), the driver's text going to the log only.

use quarry_core::{ErrorKind, Problem};

/// What a database refused, whichever driver reported it: each is answered as the same typed problem.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Refusal {
    /// A unique key taken.
    Duplicate,
    /// A foreign key naming no row.
    MissingReference,
    /// A `NOT NULL` or `CHECK` constraint broken.
    BrokenConstraint,
    /// A lock held elsewhere past the wait for it (SQLite's `SQLITE_BUSY`).
    Busy,
}

/// `refusal` as the problem a caller can act on (`duplicate`, `notFound`, `malformed`, `unavailable`); the driver's
/// `err` goes to the log only, where it says more than the kind.
pub(crate) fn refused(refusal: Refusal, err: &dyn std::fmt::Display) -> Problem {
    match refusal {
        Refusal::Duplicate => Problem::new(ErrorKind::Duplicate, "the record already exists"),
        Refusal::MissingReference => Problem::not_found("a record it refers to does not exist"),
        Refusal::BrokenConstraint => {
            tracing::error!(%err, "database constraint violated");
            Problem::malformed("the record breaks a constraint of the schema")
        }
        Refusal::Busy => {
            tracing::warn!(%err, "database busy");
            Problem::new(ErrorKind::Unavailable, "the database is busy")
        }
    }
}

/// An error the caller cannot act on: logged, and answered as an internal error without its text.
pub(crate) fn internal(err: impl std::fmt::Display) -> Problem {
    tracing::error!(%err, "database error");
    Problem::internal("a database error occurred")
}

/// Whether `err` says the connection was ended under the statement (PostgreSQL shut down, restarted, or an
/// administrator ended it; the socket broke) rather than that the statement was wrong or the server refuses
/// connections.
pub(crate) fn connection_ended(err: &sqlx::Error) -> bool {
    use std::io::ErrorKind as Io;
    match err {
        sqlx::Error::Database(db) => db.code().is_some_and(|code| super::pool::ends_session(&code)),
        sqlx::Error::Io(io) => {
            matches!(io.kind(), Io::BrokenPipe | Io::ConnectionReset | Io::ConnectionAborted | Io::UnexpectedEof)
        }
        _ => false,
    }
}

/// A database error as a typed kind: a caller can act on `duplicate`, `notFound` or `unavailable`; the text of the
/// driver's error goes to the log only.
pub(crate) fn db_error(err: sqlx::Error) -> Problem {
    use sqlx::error::ErrorKind as DbKind;
    if super::pool::may_break_connection(&err) {
        super::pool::note_connection_trouble();
    }
    match &err {
        sqlx::Error::Database(db) => match db.kind() {
            DbKind::UniqueViolation => refused(Refusal::Duplicate, &err),
            DbKind::ForeignKeyViolation => refused(Refusal::MissingReference, &err),
            DbKind::NotNullViolation | DbKind::CheckViolation => refused(Refusal::BrokenConstraint, &err),
            // SQLite's SQLITE_BUSY (or a variant): the write lock stayed taken past the busy timeout.
            _ if db.code().is_some_and(|code| super::pool::sqlite_busy(&code)) => refused(Refusal::Busy, &err),
            // PostgreSQL's query_canceled: the statement timeout fired.
            _ if db.code().as_deref() == Some("57014") => {
                tracing::warn!(%err, "statement timed out");
                Problem::new(ErrorKind::Timeout, "the database took too long")
            }
            // PostgreSQL ended the connection (shut down, restarted, or an administrator ended it), or cannot take
            // one yet: the database is away, not the request wrong. The broken connection leaves the pool.
            _ if connection_ended(&err) || db.code().as_deref() == Some("57P03") => {
                tracing::warn!(%err, "database connection ended");
                Problem::new(ErrorKind::Unavailable, "the database is unavailable")
            }
            _ => internal(err),
        },
        sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) => {
            tracing::warn!(%err, "database unavailable");
            Problem::new(ErrorKind::Unavailable, "the database is unavailable")
        }
        _ => internal(err),
    }
}
