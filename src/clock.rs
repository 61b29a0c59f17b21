//! Wall-clock time for records people read (status, history, state file); the reconcile loop's timers use tokio's clock.

use std::time::{SystemTime, UNIX_EPOCH};

/// Seconds since the Unix epoch, now.
pub fn unix_now() -> u64 {
    since_epoch().as_secs()
}

/// Seconds since the Unix epoch, now, with sub-second precision (metrics, `/status`).
pub fn unix_now_f64() -> f64 {
    since_epoch().as_secs_f64()
}

/// Milliseconds since the Unix epoch, now (per-chart timings of an apply).
pub fn unix_now_ms() -> u128 {
    since_epoch().as_millis()
}

fn since_epoch() -> std::time::Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}
