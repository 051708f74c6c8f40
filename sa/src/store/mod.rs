//! The store: every query the sa makes, with transactions where atomicity matters, over SQLite or PostgreSQL
//! (chosen by the database URL). One set of queries serves both: `$N` parameters (sqlx binds them by number on
//! SQLite too), integers for booleans, and SQL both engines accept; each backend has its own migrations.
//!
//! One file per group of tables, each adding its queries to [`Store`]; `database` holds the store itself (pools,
//! migrations, transactions) and the helpers the others share, `pool` its connection pool; `reads` asks reads that do not
//! depend on each other together (one hand-off to SQLite's thread); `new_order_facts` reads across the groups what a new
//! order needs (in one transaction, but for the states of the orders it may reuse), and `finalization_facts` what a
//! finalize checks. The groups whose types the crate root re-exports are `pub(crate)`, so that this module's own
//! public names stay the ones below.

mod accounts;
mod authorizations;
mod blocked_keys;
pub(crate) mod certificates;
pub(crate) mod controls;
pub(crate) mod crl_shards;
mod database;
mod finalization_facts;
mod new_order_facts;
mod orders;
mod pool;
pub(crate) mod recovery;
pub(crate) mod renewal_info;
pub(crate) mod revocation;
mod statements;

pub use authorizations::ValidationOutcome;
pub use certificates::SerialReservation;
pub use database::{Backend, PoolSettings, Store};
pub use finalization_facts::{FinalizationFacts, FinalizationQuestion};
pub use new_order_facts::NewOrderQuestion;
pub use orders::{NewAuthorization, NewOrder};
pub use quarry_core::identifier::fqdn_set_hash;
pub use revocation::KeyCompromise;
