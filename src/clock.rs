//! Wall-clock time for records (CDRs, audit records, webhooks): Unix epoch milliseconds.
//!
//! A leaf: the sans-IO machines take time as an input and never call this; the drivers and
//! services that write records do.

use std::time::{SystemTime, UNIX_EPOCH};

/// Current time as Unix epoch milliseconds.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}
