//! Wall-clock time as Unix seconds, the unit every timestamp in Quarry's wire types and tables uses.

use std::time::{SystemTime, UNIX_EPOCH};

/// Unix time in whole seconds.
pub type Timestamp = i64;

/// The current Unix time in seconds.
pub fn now() -> Timestamp {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}
