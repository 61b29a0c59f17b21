//! How sops (Go: go.yaml.in/yaml/v3, encoding/json, strconv, time) types and prints scalars.
//!
//! The MAC of a sops file covers every value as Go's `sops.ToBytes` writes it, so an unencrypted
//! leaf must be typed exactly as sops' YAML or JSON store typed it (`yes` is a string, `0x10` is
//! 16, `2024-01-02` is a time). The decrypted document is the one `sops -d` prints, read back
//! by pailot's own reader: a float prints through Go's `%g` (YAML) or JSON rules first.

/// A scalar as sops holds it after loading: the Go type decides its MAC bytes and its output.
#[derive(Clone, Debug, PartialEq)]
pub enum GoValue {
    Null,
    Bool(bool),
    Int(i64),
    Uint(u64),
    Float(f64),
    Str(String),
    /// A timestamp, as Go's `time.Time.MarshalText` writes it (RFC 3339 with nanoseconds).
    Time(String),
}

/// The file format of a sops document: it decides number typing and float printing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Yaml,
    Json,
}

impl GoValue {
    /// `sops.ToBytes`: what the MAC hashes for this value (`None` for null: sops skips it).
    pub fn mac_bytes(&self) -> Option<Vec<u8>> {
        Some(match self {
            GoValue::Null => return None,
            GoValue::Bool(true) => b"True".to_vec(),
            GoValue::Bool(false) => b"False".to_vec(),
            GoValue::Int(i) => i.to_string().into_bytes(),
            // sops' ToBytes has no case for uint64: such a file cannot have been written by sops.
            GoValue::Uint(u) => u.to_string().into_bytes(),
            GoValue::Float(f) => format_f(*f).into_bytes(),
            GoValue::Str(s) | GoValue::Time(s) => s.clone().into_bytes(),
        })
    }

    /// The value pailot reads from `sops -d` output for this scalar.
    pub fn to_value(&self, format: Format) -> serde_json::Value {
        use serde_json::Value;
        match self {
            GoValue::Null => Value::Null,
            GoValue::Bool(b) => Value::Bool(*b),
            GoValue::Int(i) => Value::from(*i),
            GoValue::Uint(u) => Value::from(*u),
            GoValue::Str(s) | GoValue::Time(s) => Value::String(s.clone()),
            GoValue::Float(f) => match format {
                Format::Yaml => {
                    let text = format_g_yaml(*f);
                    crate::chart::yaml::parse_yaml_document(&text, "")
                        .unwrap_or(Value::String(text))
                }
                Format::Json => match format_json(*f) {
                    Some(text) => serde_json::from_str(&text).unwrap_or(Value::Null),
                    None => Value::Null,
                },
            },
        }
    }
}

/// Shortest round-trip digits of `f` (no sign) and the decimal point position `dp`
/// (value = 0.d1d2d3… × 10^dp), as Go's `strconv` computes them.
fn shortest_digits(f: f64) -> (String, i32) {
    let s = format!("{:e}", f.abs());
    let (mant, exp) = s.split_once('e').unwrap_or((&s, "0"));
    let digits: String = mant.chars().filter(|c| *c != '.').collect();
    let exp: i32 = exp.parse().unwrap_or(0);
    if digits.chars().all(|c| c == '0') {
        return (String::new(), 0);
    }
    (digits, exp + 1)
}

fn sign(f: f64) -> &'static str {
    if f.is_sign_negative() { "-" } else { "" }
}

/// `strconv.FormatFloat(f, 'f', -1, 64)`.
pub fn format_f(f: f64) -> String {
    if f.is_nan() {
        return "NaN".into();
    }
    if f.is_infinite() {
        return if f > 0.0 {
            "+Inf".into()
        } else {
            "-Inf".into()
        };
    }
    let (d, dp) = shortest_digits(f);
    let mut out = String::from(sign(f));
    fmt_f(&mut out, &d, dp, (d.len() as i32 - dp).max(0));
    out
}

fn fmt_f(out: &mut String, d: &str, dp: i32, prec: i32) {
    let digit = |i: i32| -> char {
        if i >= 0 && (i as usize) < d.len() {
            d.as_bytes()[i as usize] as char
        } else {
            '0'
        }
    };
    if dp > 0 {
        for i in 0..dp {
            out.push(digit(i));
        }
    } else {
        out.push('0');
    }
    if prec > 0 {
        out.push('.');
        for i in 0..prec {
            out.push(digit(dp + i));
        }
    }
}

fn fmt_e(out: &mut String, d: &str, dp: i32, prec: i32, min_exp_digits: usize) {
    let first = d.chars().next().unwrap_or('0');
    out.push(first);
    if prec > 0 {
        out.push('.');
        for i in 1..=prec {
            out.push(d.as_bytes().get(i as usize).map_or('0', |b| *b as char));
        }
    }
    out.push('e');
    let exp = if d.is_empty() { 0 } else { dp - 1 };
    out.push(if exp < 0 { '-' } else { '+' });
    let digits = exp.unsigned_abs().to_string();
    for _ in digits.len()..min_exp_digits {
        out.push('0');
    }
    out.push_str(&digits);
}

/// `strconv.FormatFloat(f, 'g', -1, 64)` with yaml.v3's `.inf`/`-.inf`/`.nan` spellings.
pub fn format_g_yaml(f: f64) -> String {
    if f.is_nan() {
        return ".nan".into();
    }
    if f.is_infinite() {
        return if f > 0.0 {
            ".inf".into()
        } else {
            "-.inf".into()
        };
    }
    let (d, dp) = shortest_digits(f);
    let mut out = String::from(sign(f));
    let exp = dp - 1;
    // Go: for the shortest representation, %e is used when exp < -4 || exp >= 6 (eprec = 6).
    if !d.is_empty() && !(-4..6).contains(&exp) {
        fmt_e(&mut out, &d, dp, d.len() as i32 - 1, 2);
    } else {
        fmt_f(&mut out, &d, dp, (d.len() as i32 - dp).max(0));
    }
    out
}

/// `json.Marshal(float64)`: `'f'` unless |f| < 1e-6 or ≥ 1e21, then `'e'` with a short exponent.
/// `None` for NaN and infinities, which Go's JSON encoder refuses.
pub fn format_json(f: f64) -> Option<String> {
    if !f.is_finite() {
        return None;
    }
    let abs = f.abs();
    if abs != 0.0 && !(1e-6..1e21).contains(&abs) {
        let (d, dp) = shortest_digits(f);
        let mut out = String::from(sign(f));
        fmt_e(&mut out, &d, dp, d.len() as i32 - 1, 1);
        Some(out)
    } else {
        Some(format_f(f))
    }
}

/// Go's `strconv.ParseInt(s, 0, 64)` then `ParseUint(s, 0, 64)` (base prefixes, leading-zero octal).
fn parse_int_base0(s: &str) -> Option<GoValue> {
    let (neg, body) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    if body.is_empty() {
        return None;
    }
    let lower = body.to_ascii_lowercase();
    let (radix, digits) = if let Some(r) = lower.strip_prefix("0x") {
        (16, r)
    } else if let Some(r) = lower.strip_prefix("0o") {
        (8, r)
    } else if let Some(r) = lower.strip_prefix("0b") {
        (2, r)
    } else if lower.len() > 1 && lower.starts_with('0') {
        (8, &lower[1..])
    } else {
        (10, lower.as_str())
    };
    if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
        return None;
    }
    let magnitude = u128::from_str_radix(digits, radix).ok()?;
    if neg {
        if magnitude <= i64::MAX as u128 + 1 {
            return Some(GoValue::Int((-(magnitude as i128)) as i64));
        }
        None
    } else if magnitude <= i64::MAX as u128 {
        Some(GoValue::Int(magnitude as i64))
    } else if magnitude <= u64::MAX as u128 {
        Some(GoValue::Uint(magnitude as u64))
    } else {
        None
    }
}

/// yaml.v3's `yamlStyleFloat`: `^[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?$`.
fn yaml_style_float(s: &str) -> bool {
    let b = s.as_bytes();
    let mut i = 0;
    if matches!(b.first(), Some(b'-' | b'+')) {
        i += 1;
    }
    let digits = |i: &mut usize| {
        let start = *i;
        while *i < b.len() && b[*i].is_ascii_digit() {
            *i += 1;
        }
        *i - start
    };
    if b.get(i) == Some(&b'.') {
        i += 1;
        if digits(&mut i) == 0 {
            return false;
        }
    } else {
        if digits(&mut i) == 0 {
            return false;
        }
        if b.get(i) == Some(&b'.') {
            i += 1;
            digits(&mut i);
        }
    }
    if matches!(b.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(b.get(i), Some(b'-' | b'+')) {
            i += 1;
        }
        if digits(&mut i) == 0 {
            return false;
        }
    }
    i == b.len()
}

/// yaml.v3's `resolve("", s)` for a plain (unquoted, untagged) scalar.
pub fn resolve_plain(s: &str) -> GoValue {
    let hint = match s.as_bytes().first() {
        None => return GoValue::Null,
        Some(b'+' | b'-') => 'S',
        Some(b'0'..=b'9') => 'D',
        Some(b'y' | b'Y' | b'n' | b'N' | b't' | b'T' | b'f' | b'F' | b'o' | b'O' | b'~') => 'M',
        Some(b'.') => '.',
        Some(_) => return GoValue::Str(s.to_string()),
    };
    match s {
        "true" | "True" | "TRUE" => return GoValue::Bool(true),
        "false" | "False" | "FALSE" => return GoValue::Bool(false),
        "~" | "null" | "Null" | "NULL" => return GoValue::Null,
        ".nan" | ".NaN" | ".NAN" => return GoValue::Float(f64::NAN),
        ".inf" | ".Inf" | ".INF" | "+.inf" | "+.Inf" | "+.INF" => {
            return GoValue::Float(f64::INFINITY);
        }
        "-.inf" | "-.Inf" | "-.INF" => return GoValue::Float(f64::NEG_INFINITY),
        _ => {}
    }
    match hint {
        '.' => {
            if s[1..]
                .bytes()
                .all(|c| c.is_ascii_digit() || b"eE+-.".contains(&c))
                && let Ok(f) = s.parse::<f64>()
            {
                return GoValue::Float(f);
            }
        }
        'D' | 'S' => {
            if let Some(t) = parse_timestamp(s) {
                return GoValue::Time(t);
            }
            let plain = s.replace('_', "");
            if let Some(v) = parse_int_base0(&plain) {
                return v;
            }
            if yaml_style_float(&plain)
                && let Ok(f) = plain.parse::<f64>()
            {
                return GoValue::Float(f);
            }
        }
        _ => {}
    }
    GoValue::Str(s.to_string())
}

/// A JSON number as sops' JSON store reads it: an int when `ParseInt(s, 10, 64)` takes it, else a float.
pub fn resolve_json_number(s: &str) -> Option<GoValue> {
    if let Ok(i) = s.parse::<i64>() {
        return Some(GoValue::Int(i));
    }
    s.parse::<f64>().ok().map(GoValue::Float)
}

fn days_in(month: u32, year: i64) -> u32 {
    match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        _ => 28,
    }
}

/// yaml.v3's implicit timestamp: `2006-1-2T15:4:5.999999999Z07:00` (also with `t` or a space and
/// no zone) or `2006-1-2`, as `time.Time.MarshalText` writes it back.
pub fn parse_timestamp(s: &str) -> Option<String> {
    let b = s.as_bytes();
    if b.len() < 5 || !b[..4].iter().all(u8::is_ascii_digit) || b[4] != b'-' {
        return None;
    }
    let mut i = 5;
    // Go's getnum(value, false): one or two digits.
    let num12 = |i: &mut usize| -> Option<u32> {
        let start = *i;
        while *i < b.len() && *i - start < 2 && b[*i].is_ascii_digit() {
            *i += 1;
        }
        if *i == start {
            return None;
        }
        s[start..*i].parse().ok()
    };
    let year: i64 = s[..4].parse().ok()?;
    let month = num12(&mut i)?;
    if b.get(i) != Some(&b'-') {
        return None;
    }
    i += 1;
    let day = num12(&mut i)?;
    if !(1..=12).contains(&month) || day < 1 || day > days_in(month, year) {
        return None;
    }
    let date = format!("{year:04}-{month:02}-{day:02}");
    if i == b.len() {
        return Some(format!("{date}T00:00:00Z"));
    }
    let with_zone = match b[i] {
        b'T' | b't' => true,
        b' ' => false,
        _ => return None,
    };
    i += 1;
    let hour = num12(&mut i)?;
    if b.get(i) != Some(&b':') {
        return None;
    }
    i += 1;
    let minute = num12(&mut i)?;
    if b.get(i) != Some(&b':') {
        return None;
    }
    i += 1;
    let second = num12(&mut i)?;
    if hour > 23 || minute > 59 || second > 59 {
        return None;
    }
    let mut nanos = String::new();
    if i + 1 < b.len() && (b[i] == b'.' || b[i] == b',') && b[i + 1].is_ascii_digit() {
        i += 1;
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        nanos = s[start..i].chars().take(9).collect();
        while nanos.len() < 9 {
            nanos.push('0');
        }
    }
    let frac = nanos.trim_end_matches('0');
    let frac = if frac.is_empty() {
        String::new()
    } else {
        format!(".{frac}")
    };
    let time = format!("{date}T{hour:02}:{minute:02}:{second:02}{frac}");
    if !with_zone {
        return (i == b.len()).then(|| format!("{time}Z"));
    }
    let zone = &s[i..];
    if zone == "Z" {
        return Some(format!("{time}Z"));
    }
    let zb = zone.as_bytes();
    if zb.len() != 6 || !matches!(zb[0], b'+' | b'-') || zb[3] != b':' {
        return None;
    }
    let hh: u32 = zone[1..3].parse().ok()?;
    let mm: u32 = zone[4..6].parse().ok()?;
    if !zone[1..3].bytes().all(|c| c.is_ascii_digit())
        || !zone[4..6].bytes().all(|c| c.is_ascii_digit())
    {
        return None;
    }
    if hh == 0 && mm == 0 {
        return Some(format!("{time}Z"));
    }
    Some(format!("{time}{zone}"))
}

/// Go's `strconv.ParseBool`.
pub fn parse_bool(s: &str) -> Option<bool> {
    match s {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

/// Go's `strconv.Atoi` (base 10, optional sign).
pub fn parse_atoi(s: &str) -> Option<i64> {
    let body = s.strip_prefix(['+', '-']).unwrap_or(s);
    if body.is_empty() || !body.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// Go's `strconv.ParseFloat(s, 64)` for the texts sops writes (`FormatFloat(f, 'f', -1, 64)`).
pub fn parse_float(s: &str) -> Option<f64> {
    match s {
        "+Inf" | "Inf" | "inf" | "+inf" => Some(f64::INFINITY),
        "-Inf" | "-inf" => Some(f64::NEG_INFINITY),
        "NaN" | "nan" => Some(f64::NAN),
        _ => s.parse().ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_print_like_go() {
        for (f, fmt_f, g, json) in [
            (1.0, "1", "1", "1"),
            (1.5, "1.5", "1.5", "1.5"),
            (0.0, "0", "0", "0"),
            (-0.0, "-0", "-0", "-0"),
            (1234.56789, "1234.56789", "1234.56789", "1234.56789"),
            (1e6, "1000000", "1e+06", "1000000"),
            (123456.0, "123456", "123456", "123456"),
            (1234567.0, "1234567", "1.234567e+06", "1234567"),
            (0.0001, "0.0001", "0.0001", "0.0001"),
            (0.00001, "0.00001", "1e-05", "0.00001"),
            (1e-7, "0.0000001", "1e-07", "1e-7"),
            (1e21, "1000000000000000000000", "1e+21", "1e+21"),
            (-2.5e-10, "-0.00000000025", "-2.5e-10", "-2.5e-10"),
        ] {
            assert_eq!(format_f(f), fmt_f, "{f} f");
            assert_eq!(format_g_yaml(f), g, "{f} g");
            assert_eq!(format_json(f).unwrap(), json, "{f} json");
        }
        assert_eq!(format_f(f64::INFINITY), "+Inf");
        assert_eq!(format_g_yaml(f64::NEG_INFINITY), "-.inf");
        assert_eq!(format_json(f64::NAN), None);
    }

    #[test]
    fn plain_scalars_resolve_like_yaml_v3() {
        use GoValue::*;
        for (text, want) in [
            ("", Null),
            ("~", Null),
            ("null", Null),
            ("yes", Str("yes".into())),
            ("on", Str("on".into())),
            ("True", Bool(true)),
            ("42", Int(42)),
            ("-42", Int(-42)),
            ("+7", Int(7)),
            ("1_000", Int(1000)),
            ("0x1F", Int(31)),
            ("0o17", Int(15)),
            ("017", Int(15)),
            ("08", Float(8.0)),
            ("0b101", Int(5)),
            ("1.5", Float(1.5)),
            ("1e3", Float(1000.0)),
            (".5", Float(0.5)),
            ("18446744073709551615", Uint(u64::MAX)),
            ("2024-01-02", Time("2024-01-02T00:00:00Z".into())),
            (
                "2024-1-2T3:04:05.500+02:00",
                Time("2024-01-02T03:04:05.5+02:00".into()),
            ),
            ("2024-01-02 10:00:00", Time("2024-01-02T10:00:00Z".into())),
            ("2024-02-30", Str("2024-02-30".into())),
            ("12:30", Str("12:30".into())),
            ("abc", Str("abc".into())),
            ("1.2.3", Str("1.2.3".into())),
            ("-", Str("-".into())),
        ] {
            let got = resolve_plain(text);
            match (&got, &want) {
                (Float(a), Float(b)) => assert!(a == b, "{text}: {got:?}"),
                _ => assert_eq!(got, want, "{text}"),
            }
        }
    }

    #[test]
    fn mac_bytes_follow_to_bytes() {
        assert_eq!(GoValue::Bool(true).mac_bytes().unwrap(), b"True");
        assert_eq!(GoValue::Float(1.0).mac_bytes().unwrap(), b"1");
        assert_eq!(GoValue::Null.mac_bytes(), None);
    }
}
