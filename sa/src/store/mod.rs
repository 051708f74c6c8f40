//! The store: every query the sa makes, with transactions where atomicity matters, over SQLite or PostgreSQL
//! (chosen by the database URL). One set of queries serves both: `$N` parameters (sqlx binds them by number on
//! SQLite too), integers for booleans, and SQL both engines accept; each backend has its own migrations. Where one
//! engine is served better otherwise, the other's SQL is beside it: a write of several statements is one string on
//! SQLite and one statement of data-modifying CTEs on PostgreSQL, and two hot joins have a PostgreSQL form whose
//! plan does not depend on the tables' sizes (`crate::queries`).
//!
//! One file per group of tables, each adding its queries to [`Store`]; `database` holds the store itself (pools,
//! migrations, transactions) and the helpers the others share, `pool` its sqlx connection pool; `statements` builds
//! statements once for both engines and asks them together (reads that do not depend on each other, writes
//! committed together); `inline_sqlite` runs those on SQLite in place, on the calling thread, instead of handing
//! each to a connection thread of sqlx's (the certificate path's statements; the rest stay on sqlx);
//! `new_order_facts` reads across the groups what a new order needs, and `finalization_facts` what a finalize
//! checks. The groups whose types the crate root re-exports are `pub(crate)`, so that this module's own public
//! names stay the ones below.

mod accounts;
mod authorizations;
mod blocked_keys;
pub(crate) mod certificates;
pub(crate) mod controls;
pub(crate) mod crl_shards;
mod database;
mod errors;
mod finalization_facts;
#[cfg(test)]
mod fresh_plans;
mod inline_sqlite;
mod new_order_facts;
mod orders;
mod pool;
pub(crate) mod recovery;
pub(crate) mod renewal_info;
pub(crate) mod revocation;
mod rows;
mod statements;
mod together;

pub use authorizations::ValidationOutcome;
pub use certificates::SerialReservation;
pub use database::{Backend, PoolSettings, Store};
pub use finalization_facts::{FinalizationFacts, FinalizationQuestion};
pub use new_order_facts::NewOrderQuestion;
pub use orders::{NewAuthorization, NewOrder};
pub use quarry_core::identifier::fqdn_set_hash;
pub use revocation::KeyCompromise;
