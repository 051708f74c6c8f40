//! Quarry's rate limits: Boulder's limits (`limits`), decided by GCRA with one theoretical arrival time per bucket
//! (`gcra`, pure), kept in an in-process store or in Redis shared by every replica (`store`), behind a `limiter`
//! that checks, spends (all of a batch or none), refunds and resets, and fails open when its store fails.
//!
//! Limit values are configuration — a limits file per environment — since they are one of the three things in
//! which staging may differ from production.

pub mod gcra;
pub mod limiter;
pub mod limits;
pub mod store;

pub use limiter::{Denial, Limiter, Transaction, Verdict};
pub use limits::{Bucket, LimitName, Limits, LimitsError, LimitsFile, OverrideEntry};
pub use store::{MemoryStore, RedisStore, Store, StoreError};

/// Now, in the microseconds the limiter works in.
pub fn now_micros() -> gcra::Micros {
    let now = time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000;
    i64::try_from(now).unwrap_or(i64::MAX)
}
