//! Kubernetes resource quantities (memory bytes, CPU millicores) parsed and printed.

use std::fmt;

/// A quantity that could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid quantity {0:?}: expected a number with an optional suffix (Ki Mi Gi Ti, k M G T, m)"
)]
pub struct QuantityError(pub String);

/// Parse a memory quantity (`512Mi`, `1Gi`, `1G`, `1000`, `1.5Gi`) into bytes.
pub fn parse_memory(s: &str) -> Result<u64, QuantityError> {
    parse_scaled(s, 1.0).map(|v| v.round() as u64)
}

/// Parse a CPU quantity (`1000m`, `2`, `0.5`) into millicores.
pub fn parse_cpu(s: &str) -> Result<u64, QuantityError> {
    parse_scaled(s, 1000.0).map(|v| v.round() as u64)
}

/// Parse a quantity given as a JSON value (string or number).
pub fn parse_memory_value(v: &serde_json::Value) -> Result<u64, QuantityError> {
    match v {
        serde_json::Value::String(s) => parse_memory(s),
        serde_json::Value::Number(n) => Ok(n.as_f64().unwrap_or(0.0).max(0.0) as u64),
        other => Err(QuantityError(other.to_string())),
    }
}

/// Parse a CPU quantity given as a JSON value (string or number).
pub fn parse_cpu_value(v: &serde_json::Value) -> Result<u64, QuantityError> {
    match v {
        serde_json::Value::String(s) => parse_cpu(s),
        serde_json::Value::Number(n) => {
            Ok((n.as_f64().unwrap_or(0.0).max(0.0) * 1000.0).round() as u64)
        }
        other => Err(QuantityError(other.to_string())),
    }
}

fn parse_scaled(s: &str, unit_scale: f64) -> Result<f64, QuantityError> {
    let t = s.trim();
    let err = || QuantityError(s.to_string());
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, suffix) = t.split_at(split);
    if num.is_empty() {
        return Err(err());
    }
    let n: f64 = num.parse().map_err(|_| err())?;
    if !n.is_finite() {
        return Err(err());
    }
    let mult = match suffix {
        "" => unit_scale,
        "m" => unit_scale / 1000.0,
        "k" => 1e3 * unit_scale,
        "M" => 1e6 * unit_scale,
        "G" => 1e9 * unit_scale,
        "T" => 1e12 * unit_scale,
        "Ki" => 1024.0 * unit_scale,
        "Mi" => 1024.0 * 1024.0 * unit_scale,
        "Gi" => 1024.0 * 1024.0 * 1024.0 * unit_scale,
        "Ti" => 1024.0_f64.powi(4) * unit_scale,
        _ => return Err(err()),
    };
    Ok(n * mult)
}

/// Bytes printed as MiB/GiB for people: `24.0 GiB`, `512 MiB`.
pub struct Bytes(pub u64);

impl fmt::Display for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mib = self.0 as f64 / (1024.0 * 1024.0);
        if mib >= 1024.0 {
            write!(f, "{:.1} GiB", mib / 1024.0)
        } else {
            write!(f, "{:.0} MiB", mib)
        }
    }
}

/// Millicores printed for people: `1500m` or `2`.
pub struct Millicores(pub u64);

impl fmt::Display for Millicores {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 % 1000 == 0 {
            write!(f, "{}", self.0 / 1000)
        } else {
            write!(f, "{}m", self.0)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_suffixes() {
        assert_eq!(parse_memory("512Mi").unwrap(), 512 * 1024 * 1024);
        assert_eq!(parse_memory("1Gi").unwrap(), 1 << 30);
        assert_eq!(parse_memory("1000Mi").unwrap(), 1000 * 1024 * 1024);
        assert_eq!(parse_memory("1G").unwrap(), 1_000_000_000);
        assert_eq!(parse_memory("1.5Gi").unwrap(), 3 << 29);
        assert!(parse_memory("lots").is_err());
        assert!(parse_memory("-1Gi").is_err());
        assert!(parse_memory("").is_err());
    }

    #[test]
    fn cpu_suffixes() {
        assert_eq!(parse_cpu("1000m").unwrap(), 1000);
        assert_eq!(parse_cpu("2").unwrap(), 2000);
        assert_eq!(parse_cpu("0.5").unwrap(), 500);
        assert!(parse_cpu("1x").is_err());
    }
}
