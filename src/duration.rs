//! Durations as pailot's configuration and flags write them (`500ms`, `60s`, `10m`, `1h30m`), and times for people.

use std::time::Duration;

/// Parse a duration like `500ms`, `60s`, `10m`, `1h30m`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    if t.is_empty() {
        return Err("empty duration".into());
    }
    let mut total = Duration::ZERO;
    let mut rest = t;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return Err(format!(
                "{text:?} is not a duration like 500ms, 60s, 10m or 1h"
            ));
        }
        let n: u64 = rest[..digits]
            .parse()
            .map_err(|_| format!("{text:?}: number too large"))?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let too_large = || format!("{text:?}: number too large");
        let d = match unit {
            "ms" => Duration::from_millis(n),
            "s" => Duration::from_secs(n),
            "m" => Duration::from_secs(n.checked_mul(60).ok_or_else(too_large)?),
            "h" => Duration::from_secs(n.checked_mul(3600).ok_or_else(too_large)?),
            _ => return Err(format!("{text:?}: unknown unit {unit:?} (use ms, s, m, h)")),
        };
        total = total.checked_add(d).ok_or_else(too_large)?;
    }
    Ok(total)
}

/// Write a duration in the same grammar, largest units first: `1h30m`, `45s`, `250ms`, `0s`.
///
/// Whole seconds drop the milliseconds, so `format_duration(parse_duration(x))` is `x` in its
/// shortest form for every `x` without a sub-second part.
pub fn format_duration(d: Duration) -> String {
    let secs = d.as_secs();
    if secs == 0 {
        let ms = d.subsec_millis();
        return if ms == 0 {
            "0s".into()
        } else {
            format!("{ms}ms")
        };
    }
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    let mut out = String::new();
    if h > 0 {
        out.push_str(&format!("{h}h"));
    }
    if m > 0 {
        out.push_str(&format!("{m}m"));
    }
    if s > 0 {
        out.push_str(&format!("{s}s"));
    }
    out
}

/// A Unix time (seconds) for people: `2026-12-07 12:00:00 UTC`.
pub fn format_unix(secs: u64) -> String {
    match jiff::Timestamp::from_second(secs.min(i64::MAX as u64) as i64) {
        Ok(t) => t.strftime("%Y-%m-%d %H:%M:%S UTC").to_string(),
        Err(_) => format!("@{secs}"),
    }
}

/// A Unix time (seconds) as RFC 3339 for programs: `2026-12-07T12:00:00Z`.
pub fn rfc3339_unix(secs: u64) -> String {
    match jiff::Timestamp::from_second(secs.min(i64::MAX as u64) as i64) {
        Ok(t) => t.to_string(),
        Err(_) => secs.to_string(),
    }
}

/// Seconds since the Unix epoch, now.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units_and_sums_parts() {
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration(" 2m ").unwrap(), Duration::from_secs(120));
        assert!(parse_duration("10 minutes").is_err());
        assert!(parse_duration("").is_err());
        assert!(parse_duration("5").is_err(), "a bare number has no unit");
        assert!(parse_duration("m5").is_err());
        assert!(
            parse_duration("99999999999999999h").is_err(),
            "overflow is an error, not a panic"
        );
    }

    #[test]
    fn formats_in_the_same_grammar() {
        for text in ["1h30m", "45s", "250ms", "2h", "1h1m1s", "0s"] {
            let d = parse_duration(text).unwrap();
            assert_eq!(format_duration(d), text);
        }
        assert_eq!(format_duration(Duration::from_millis(1500)), "1s");
    }

    #[test]
    fn times_in_utc() {
        assert_eq!(format_unix(1_800_000_000), "2027-01-15 08:00:00 UTC");
        assert_eq!(rfc3339_unix(1_800_000_000), "2027-01-15T08:00:00Z");
    }
}
