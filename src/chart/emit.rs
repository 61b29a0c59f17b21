//! Fast block-YAML emitter that writes exactly what serde-saphyr writes.
//!
//! `pailot render` prints every object; serde-saphyr's serializer weighs each scalar against
//! YAML 1.1 and 1.2 readers, which is most of the output time. This emitter writes the
//! structure (serde-saphyr's layout: sequences at their key's indent, `- k: v` compact items,
//! `{}`/`[]` for empty collections) and the scalars that are certainly plain (`apps/v1`,
//! `512Mi`, `web-1`) itself, and asks serde-saphyr for every other scalar (numbers with a
//! fraction, strings that need quotes, multi-line strings), re-indenting block scalars. The
//! bytes are the same as `serde_saphyr::to_string`; the tests below and the golden renders
//! compare them.

use serde_json::{Map, Value};

/// `v` as block YAML, byte-identical to `serde_saphyr::to_string(v)`.
pub fn to_yaml_string(v: &Value) -> String {
    let mut out = String::new();
    let done = match v {
        Value::Object(m) if !m.is_empty() => map(m, 0, false, &mut out).is_some(),
        Value::Array(a) if !a.is_empty() => seq(a, 0, false, &mut out).is_some(),
        _ => false,
    };
    if done { out } else { saphyr(v) }
}

fn saphyr(v: &Value) -> String {
    match serde_saphyr::to_string(v) {
        Ok(s) => s,
        // Only non-string map keys can fail, and serde_json::Value has none.
        Err(err) => format!("# unserializable: {err}\n"),
    }
}

fn pad(out: &mut String, n: usize) {
    for _ in 0..n {
        out.push(' ');
    }
}

/// Entries at column `indent`; the first one continues the current line when `inline`.
fn map(m: &Map<String, Value>, indent: usize, inline: bool, out: &mut String) -> Option<()> {
    for (i, (k, v)) in m.iter().enumerate() {
        if i > 0 || !inline {
            pad(out, indent);
        }
        key(k, out)?;
        match v {
            Value::Object(c) if !c.is_empty() => {
                out.push_str(":\n");
                map(c, indent + 2, false, out)?;
            }
            Value::Array(c) if !c.is_empty() => {
                out.push_str(":\n");
                seq(c, indent, false, out)?;
            }
            _ => {
                out.push_str(": ");
                scalar(v, indent, out)?;
            }
        }
    }
    Some(())
}

/// `- item` lines at column `indent`; the first continues the current line when `inline`.
fn seq(a: &[Value], indent: usize, inline: bool, out: &mut String) -> Option<()> {
    for (i, v) in a.iter().enumerate() {
        if i > 0 || !inline {
            pad(out, indent);
        }
        out.push_str("- ");
        match v {
            Value::Object(c) if !c.is_empty() => map(c, indent + 2, true, out)?,
            Value::Array(c) if !c.is_empty() => seq(c, indent + 2, true, out)?,
            _ => scalar(v, indent, out)?,
        }
    }
    Some(())
}

/// A scalar (or empty collection) after `key: ` or `- `, whose owner sits at `indent`; ends
/// the line (and writes a block scalar's lines).
fn scalar(v: &Value, indent: usize, out: &mut String) -> Option<()> {
    match v {
        Value::Null => out.push_str("null\n"),
        Value::Bool(true) => out.push_str("true\n"),
        Value::Bool(false) => out.push_str("false\n"),
        Value::Object(_) => out.push_str("{}\n"),
        Value::Array(_) => out.push_str("[]\n"),
        Value::Number(n) if n.is_i64() || n.is_u64() => {
            out.push_str(&n.to_string());
            out.push('\n');
        }
        Value::String(s) if certainly_plain(s) => {
            out.push_str(s);
            out.push('\n');
        }
        _ => {
            // serde-saphyr's own choice, written at the top level: one line (quoted or
            // plain), or a block scalar header with its lines indented by two.
            let text = saphyr(v);
            let mut lines = text.split_inclusive('\n');
            out.push_str(lines.next()?);
            for line in lines {
                if line != "\n" {
                    pad(out, indent);
                }
                out.push_str(line);
            }
            if !out.ends_with('\n') {
                return None;
            }
        }
    }
    Some(())
}

fn key(k: &str, out: &mut String) -> Option<()> {
    if certainly_plain(k) {
        out.push_str(k);
        return Some(());
    }
    let mut m = Map::new();
    m.insert(k.to_string(), Value::Null);
    let text = saphyr(&Value::Object(m));
    let written = text.strip_suffix(": null\n")?;
    if written.contains('\n') {
        return None;
    }
    out.push_str(written);
    Some(())
}

/// Strings every YAML reader takes as that string, so serde-saphyr writes them plain too:
/// a letter then `[A-Za-z0-9_./-]` (not a YAML 1.1 boolean or null word), or a digit then
/// `[A-Za-z0-9./]` with a letter no number can hold (`512Mi`, `100m`, `3s`).
fn certainly_plain(s: &str) -> bool {
    let b = s.as_bytes();
    let Some(&first) = b.first() else {
        return false;
    };
    if first.is_ascii_alphabetic() {
        b.iter()
            .all(|&c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'/' | b'-'))
            && !(b.len() <= 5
                && matches!(
                    s.to_ascii_lowercase().as_str(),
                    "y" | "n"
                        | "yes"
                        | "no"
                        | "on"
                        | "off"
                        | "true"
                        | "false"
                        | "null"
                        | "nan"
                        | "inf"
                ))
    } else if first.is_ascii_digit() {
        b.iter()
            .all(|&c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'/'))
            && b.iter().any(|&c| {
                matches!(c, b'g'..=b'z' | b'G'..=b'Z') && !matches!(c, b'o' | b'O' | b'x' | b'X')
            })
    } else {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    #[test]
    fn kubernetes_objects_match_serde_saphyr() {
        let v = json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "labels": {"app": "web", "on": "yes", "y": "n"}},
            "spec": {"replicas": 2, "paused": false, "x": null, "ratio": 1.5, "big": 1.0e300,
                "template": {"spec": {"containers": [{"name": "main", "image": "r.example/web:v1",
                    "args": ["--port=80", "-v", "a: b", " lead", "trail ", "#c", "x #y", ""],
                    "resources": {"requests": {"memory": "512Mi", "cpu": "100m"}},
                    "env": [], "ports": [{"containerPort": 80}], "volumeMounts": [{}]}],
                "volumes": [[], [[1, 2], {"a": {"b": [{"c": {}}]}}]]}}},
            "data": {"script": "#!/bin/sh\necho hi\n", "strip": "a\nb", "keep": "x\n\n",
                "lead": "  indented\nnext\n", "tab": "a\tb", "ctl": "a\u{1}b", "quote": "it's \"q\"",
                "0644": "0644", "1.5": "true", "a:b": "c:d", "": "empty key", "-": "dash",
                "nested": {"deep": "multi\nline\n\nwith blank\n"}},
            "list": ["multi\nline\n", {"k": "v\nw"}],
        });
        assert_eq!(to_yaml_string(&v), serde_saphyr::to_string(&v).unwrap());
    }

    #[test]
    fn certainly_plain_is_certain() {
        for s in [
            "apps/v1", "512Mi", "100m", "3s", "web-1", "a.b_c", "v1", "1Gi", "10Gi",
        ] {
            assert!(certainly_plain(s), "{s}");
        }
        for s in [
            "",
            "yes",
            "No",
            "ON",
            "true",
            "Null",
            "nan",
            "0x1F",
            "1e3",
            "0o17",
            "1_000",
            "1.5",
            "2001-12-14",
            "-x",
            ".inf",
            "1:30",
            "a b",
            "a:b",
            "0xFFFF",
        ] {
            assert!(!certainly_plain(s), "{s}");
        }
    }

    fn arb_string() -> impl Strategy<Value = String> {
        prop_oneof![
            "[a-z][a-z0-9./-]{0,10}",
            "[0-9]{1,4}(Mi|Gi|m|s|h|[a-f]|e[0-9]|x[0-9a-f]|o[0-7])?",
            "[ -~]{0,12}",
            "(yes|no|on|off|y|n|true|null|Null|~|<<|=|-|---|\\.\\.\\.|0644|1:30|2001-12-14|\\.inf|nan)",
            "[a-z \n\t#:'\"-]{0,16}",
        ]
    }

    fn arb_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|n| json!(n)),
            any::<u64>().prop_map(|n| json!(n)),
            (-1.0e6f64..1.0e6).prop_map(|f| json!(f)),
            arb_string().prop_map(Value::String),
        ];
        leaf.prop_recursive(5, 64, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
                proptest::collection::vec((arb_string(), inner), 0..5)
                    .prop_map(|kv| Value::Object(kv.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 1024, ..ProptestConfig::default() })]

        #[test]
        fn output_is_byte_identical_to_serde_saphyr(v in arb_value()) {
            prop_assert_eq!(to_yaml_string(&v), serde_saphyr::to_string(&v).unwrap());
        }
    }
}
