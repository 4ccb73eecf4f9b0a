//! The one clock: wall time as Unix milliseconds (events, host history) and seconds
//! (leases). Pure cores take `now` as an argument; only their callers read this.
use std::time::{SystemTime, UNIX_EPOCH};

/// Unix time in milliseconds.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Unix time in seconds.
pub fn now_secs() -> u64 {
    now_ms() / 1000
}
