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

/// A Unix time (seconds) for people: `2026-12-07 12:00:00 UTC`.
pub fn format_unix(secs: i64) -> String {
    match jiff::Timestamp::from_second(secs) {
        Ok(t) => t.strftime("%Y-%m-%d %H:%M:%S UTC").to_string(),
        Err(_) => format!("@{secs}"),
    }
}

/// A Unix time (seconds) as RFC 3339 for programs: `2026-12-07T12:00:00Z`.
pub fn rfc3339_unix(secs: i64) -> String {
    match jiff::Timestamp::from_second(secs) {
        Ok(t) => t.to_string(),
        Err(_) => secs.to_string(),
    }
}

fn since_epoch() -> std::time::Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    #[test]
    fn times_in_utc() {
        assert_eq!(super::format_unix(1_800_000_000), "2027-01-15 08:00:00 UTC");
        assert_eq!(super::rfc3339_unix(1_800_000_000), "2027-01-15T08:00:00Z");
    }
}
