//! Kubernetes resource quantities (memory bytes, CPU millicores), parsed strictly and printed.
//!
//! The grammar is Kubernetes' own (`k8s.io/apimachinery/pkg/api/resource`): a decimal number
//! with an optional sign, then a binary suffix (`Ki Mi Gi Ti Pi Ei`), a decimal one
//! (`n u m k M G T P E`) or an exponent (`e3`, `E-2`). Anything else — `32GiB`, `lots`, `NaN`,
//! spaces — is an error that says why, never 0: a budget computed from a misread capacity is
//! worse than no budget. Values are computed exactly in integers and rounded up, as the
//! apiserver rounds (`0.1m` CPU is 1 millicore). Negative amounts are refused: no capacity,
//! request or limit can be below zero.

use std::fmt;

/// A quantity that could not be read: the text and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid quantity {text:?}: {reason}")]
pub struct QuantityError {
    /// The quantity as written.
    pub text: String,
    /// What is wrong with it.
    pub reason: String,
}

fn error(text: &str, reason: impl Into<String>) -> QuantityError {
    QuantityError {
        text: text.to_string(),
        reason: reason.into(),
    }
}

const SUFFIXES: &str = "a number with an optional suffix: Ki Mi Gi Ti Pi Ei, n u m k M G T P E, or an exponent like e3";

/// An exactly parsed, non-negative quantity: `mantissa × 10^exp10 × 2^exp2`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Exact {
    mantissa: u128,
    exp10: i32,
    exp2: u32,
}

fn parse_exact(s: &str) -> Result<Exact, QuantityError> {
    let b = s.as_bytes();
    if b.is_empty() {
        return Err(error(s, format!("empty; expected {SUFFIXES}")));
    }
    let mut i = 0;
    let negative = match b[0] {
        b'-' => {
            i += 1;
            true
        }
        b'+' => {
            i += 1;
            false
        }
        _ => false,
    };
    let mut mantissa: u128 = 0;
    let mut digits = 0usize;
    let mut frac = 0i32;
    let mut seen_point = false;
    let mut significant = 0usize;
    while i < b.len() {
        match b[i] {
            c @ b'0'..=b'9' => {
                digits += 1;
                if mantissa > 0 || c != b'0' {
                    significant += 1;
                }
                if significant > 30 {
                    return Err(error(s, "more than 30 significant digits"));
                }
                mantissa = mantissa * 10 + u128::from(c - b'0');
                if seen_point {
                    frac += 1;
                }
            }
            b'.' if !seen_point => seen_point = true,
            _ => break,
        }
        i += 1;
    }
    if digits == 0 {
        return Err(error(s, format!("not a number; expected {SUFFIXES}")));
    }
    let suffix = &s[i..];
    let (exp10, exp2) = match suffix {
        "" => (0, 0),
        "n" => (-9, 0),
        "u" => (-6, 0),
        "m" => (-3, 0),
        "k" => (3, 0),
        "M" => (6, 0),
        "G" => (9, 0),
        "T" => (12, 0),
        "P" => (15, 0),
        "E" => (18, 0),
        "Ki" => (0, 10),
        "Mi" => (0, 20),
        "Gi" => (0, 30),
        "Ti" => (0, 40),
        "Pi" => (0, 50),
        "Ei" => (0, 60),
        e if (e.starts_with('e') || e.starts_with('E')) && e.len() > 1 => {
            let n = &e[1..];
            let unsigned = n.strip_prefix(['+', '-']).unwrap_or(n);
            if unsigned.is_empty() || !unsigned.bytes().all(|c| c.is_ascii_digit()) {
                return Err(error(
                    s,
                    format!("unknown suffix {e:?}; expected {SUFFIXES}"),
                ));
            }
            let x: i32 = n
                .parse()
                .ok()
                .filter(|x: &i32| x.abs() <= 60)
                .ok_or_else(|| error(s, "exponent out of range"))?;
            (x, 0)
        }
        other => {
            let hint = if other.len() == 3 && other.ends_with("iB") {
                format!("; write {:?}", &other[..2])
            } else if other.len() == 2 && other.ends_with('B') {
                let p = other[..1].to_uppercase();
                let si = if p == "K" { "k".to_string() } else { p.clone() };
                format!(
                    "; write {:?} (powers of 1024) or {si:?} (powers of 1000)",
                    format!("{p}i")
                )
            } else {
                String::new()
            };
            return Err(error(
                s,
                format!("unknown suffix {other:?}{hint}; expected {SUFFIXES}"),
            ));
        }
    };
    if negative && mantissa != 0 {
        return Err(error(s, "must not be negative"));
    }
    Ok(Exact {
        mantissa,
        exp10: exp10 - frac,
        exp2,
    })
}

impl Exact {
    /// `self × scale`, rounded up to an integer; `None` when it does not fit in a u64.
    fn scaled_ceil(self, scale: u128) -> Option<u64> {
        let mut v = self.mantissa.checked_mul(scale)?;
        v = v.checked_mul(1u128.checked_shl(self.exp2)?)?;
        if self.exp10 >= 0 {
            v = v.checked_mul(10u128.checked_pow(self.exp10 as u32)?)?;
        } else {
            let d = 10u128.checked_pow(self.exp10.unsigned_abs())?;
            v = v.div_ceil(d);
        }
        u64::try_from(v).ok()
    }
}

fn parse_scaled(s: &str, scale: u128) -> Result<u64, QuantityError> {
    parse_exact(s)?
        .scaled_ceil(scale)
        .ok_or_else(|| error(s, "too large"))
}

/// Parse a memory quantity (`512Mi`, `1Gi`, `1G`, `1000`, `1.5Gi`) into bytes (rounded up).
pub fn parse_memory(s: &str) -> Result<u64, QuantityError> {
    parse_scaled(s, 1)
}

/// Parse a CPU quantity (`1000m`, `2`, `0.5`) into millicores (rounded up).
pub fn parse_cpu(s: &str) -> Result<u64, QuantityError> {
    parse_scaled(s, 1000)
}

/// Parse a count of devices (`nvidia.com/gpu`): a whole, non-negative number.
pub fn parse_count(s: &str) -> Result<u64, QuantityError> {
    let milli = parse_cpu(s)?;
    if !milli.is_multiple_of(1000) {
        return Err(error(s, "must be a whole number of devices"));
    }
    Ok(milli / 1000)
}

/// The text of a quantity given as a JSON value (a string, or a number as Kubernetes accepts).
fn value_text(v: &serde_json::Value) -> Result<std::borrow::Cow<'_, str>, QuantityError> {
    match v {
        serde_json::Value::String(s) => Ok(s.as_str().into()),
        serde_json::Value::Number(n) => Ok(n.to_string().into()),
        other => Err(error(
            &other.to_string(),
            "must be a string like \"512Mi\" or a number",
        )),
    }
}

/// Parse a memory quantity given as a JSON value (string or number) into bytes.
pub fn parse_memory_value(v: &serde_json::Value) -> Result<u64, QuantityError> {
    parse_memory(&value_text(v)?)
}

/// Parse a CPU quantity given as a JSON value (string or number) into millicores.
pub fn parse_cpu_value(v: &serde_json::Value) -> Result<u64, QuantityError> {
    parse_cpu(&value_text(v)?)
}

/// Parse a device count given as a JSON value (string or number).
pub fn parse_count_value(v: &serde_json::Value) -> Result<u64, QuantityError> {
    parse_count(&value_text(v)?)
}

/// A quantity as written in a file (`32Gi`, `"8"`, `7500m`), checked when the file is read:
/// the text is kept for templates and output, the value is exact. Valid means non-negative and
/// small enough that [`Quantity::millis`] fits in a u64 (so [`Quantity::units`] does too).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Quantity {
    text: String,
    exact: Exact,
}

impl Quantity {
    /// The value rounded up to whole units (bytes for memory, cores for CPU).
    pub fn units(&self) -> u64 {
        self.exact.scaled_ceil(1).expect("checked at parse")
    }

    /// The value in thousandths, rounded up (millicores for CPU).
    pub fn millis(&self) -> u64 {
        self.exact.scaled_ceil(1000).expect("checked at parse")
    }

    /// The quantity as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl std::str::FromStr for Quantity {
    type Err = QuantityError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let exact = parse_exact(s)?;
        exact
            .scaled_ceil(1000)
            .ok_or_else(|| error(s, "too large"))?;
        Ok(Quantity {
            text: s.to_string(),
            exact,
        })
    }
}

impl fmt::Display for Quantity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl serde::Serialize for Quantity {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

impl<'de> serde::Deserialize<'de> for Quantity {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Quantity;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a Kubernetes quantity such as \"32Gi\" or \"8\"")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Quantity, E> {
                v.parse().map_err(E::custom)
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Quantity, E> {
                self.visit_str(&v.to_string())
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Quantity, E> {
                self.visit_str(&v.to_string())
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Quantity, E> {
                match serde_json::Number::from_f64(v) {
                    Some(n) => self.visit_str(&n.to_string()),
                    None => Err(E::custom(error(&v.to_string(), "not a number"))),
                }
            }
        }
        d.deserialize_any(Visitor)
    }
}

impl schemars::JsonSchema for Quantity {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Quantity".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "A Kubernetes quantity: a non-negative number with an optional suffix (Ki Mi Gi Ti Pi Ei, n u m k M G T P E, or an exponent like e3), e.g. \"32Gi\", \"8\", \"7500m\".",
            "type": ["string", "number"],
            "pattern": "^\\+?([0-9]+(\\.[0-9]*)?|\\.[0-9]+)([eE][-+]?[0-9]+|Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E)?$"
        })
    }
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
        if self.0.is_multiple_of(1000) {
            write!(f, "{}", self.0 / 1000)
        } else {
            write!(f, "{}m", self.0)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn memory_suffixes() {
        assert_eq!(parse_memory("512Mi").unwrap(), 512 * 1024 * 1024);
        assert_eq!(parse_memory("1Gi").unwrap(), 1 << 30);
        assert_eq!(parse_memory("1000Mi").unwrap(), 1000 * 1024 * 1024);
        assert_eq!(parse_memory("1G").unwrap(), 1_000_000_000);
        assert_eq!(parse_memory("1.5Gi").unwrap(), 3 << 29);
        assert_eq!(parse_memory("1e3").unwrap(), 1000);
        assert_eq!(parse_memory("1E3").unwrap(), 1000);
        assert_eq!(parse_memory("1E").unwrap(), 1_000_000_000_000_000_000);
        assert_eq!(parse_memory("12e-1").unwrap(), 2, "rounded up");
        assert_eq!(parse_memory(".5k").unwrap(), 500);
        assert_eq!(parse_memory("5.").unwrap(), 5);
        assert_eq!(parse_memory("+1Ki").unwrap(), 1024);
        assert_eq!(parse_memory("-0").unwrap(), 0);
        assert_eq!(parse_memory("100m").unwrap(), 1, "0.1 byte rounds up");
    }

    #[test]
    fn what_kubernetes_refuses_is_an_error_not_zero() {
        for (text, why) in [
            ("32GiB", "write \"Gi\""),
            ("-16Gi", "negative"),
            ("lots", "not a number"),
            ("NaN", "not a number"),
            ("", "empty"),
            ("1.2.3", "unknown suffix"),
            (" 1Gi", "not a number"),
            ("1Gi ", "unknown suffix"),
            ("1e", "unknown suffix"),
            ("1ex", "unknown suffix"),
            ("16EB", "unknown suffix"),
            ("99999999999999999999Ei", "too large"),
            ("1e60", "too large"),
            ("1e99", "out of range"),
            ("1234567890123456789012345678901234", "significant digits"),
        ] {
            let e = parse_memory(text).unwrap_err();
            assert!(e.to_string().contains(why), "{text:?}: {e}");
            assert_eq!(e.text, text);
        }
    }

    #[test]
    fn cpu_suffixes() {
        assert_eq!(parse_cpu("1000m").unwrap(), 1000);
        assert_eq!(parse_cpu("2").unwrap(), 2000);
        assert_eq!(parse_cpu("0.5").unwrap(), 500);
        assert_eq!(
            parse_cpu("0.0001").unwrap(),
            1,
            "rounds up like the apiserver"
        );
        assert_eq!(parse_cpu("250000u").unwrap(), 250);
        assert!(parse_cpu("1x").is_err());
        assert!(parse_cpu("-1").is_err());
    }

    #[test]
    fn quantity_keeps_its_text_and_reads_from_yaml() {
        let q: Quantity = "1.5Gi".parse().unwrap();
        assert_eq!((q.units(), q.as_str()), (3 << 29, "1.5Gi"));
        let c: Quantity = "7500m".parse().unwrap();
        assert_eq!((c.units(), c.millis()), (8, 7500));
        assert!("1E".parse::<Quantity>().is_err(), "1e21 millis do not fit");
        #[derive(serde::Deserialize)]
        struct Cap {
            memory: Quantity,
            cpu: Quantity,
        }
        let cap: Cap = serde_saphyr::from_str("memory: 32Gi\ncpu: 8\n").unwrap();
        assert_eq!((cap.memory.units(), cap.cpu.millis()), (32 << 30, 8000));
        assert_eq!(serde_json::to_value(&cap.cpu).unwrap(), json!("8"));
        let e = serde_saphyr::from_str::<Cap>("memory: 32GiB\ncpu: 8\n")
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("32GiB") && e.contains("line 1"), "{e}");
    }

    #[test]
    fn json_values() {
        assert_eq!(parse_memory_value(&json!(64)).unwrap(), 64);
        assert_eq!(parse_cpu_value(&json!(0.5)).unwrap(), 500);
        assert_eq!(parse_cpu_value(&json!(1e3)).unwrap(), 1_000_000);
        assert!(parse_cpu_value(&json!(-1)).is_err());
        assert!(parse_memory_value(&json!(true)).is_err());
        assert!(parse_memory_value(&json!(null)).is_err());
        assert_eq!(parse_count_value(&json!(2)).unwrap(), 2);
        assert_eq!(parse_count_value(&json!("1")).unwrap(), 1);
        assert!(parse_count_value(&json!(0.5)).is_err());
    }
}
