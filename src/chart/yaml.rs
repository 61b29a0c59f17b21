//! YAML text <-> `serde_json::Value` for charts: multi-document parsing with positions, and emitting.

use serde_json::Value;

use crate::diag::InputError;

/// Parse a YAML stream into its non-empty documents (kubectl's YAML 1.1 reading: `0644` is octal).
///
/// The error names `file` and the line/column serde-saphyr reports.
pub fn parse_yaml_documents(text: &str, file: &str) -> Result<Vec<Value>, InputError> {
    let options = serde_saphyr::options! { legacy_octal_numbers: true };
    match serde_saphyr::from_multiple_with_options::<Value>(text, options) {
        Ok(docs) => Ok(docs.into_iter().filter(|d| !d.is_null()).collect()),
        Err(err) => Err(yaml_error(file, &err)),
    }
}

/// Parse a single YAML document (an empty text is `null`).
pub fn parse_yaml_document(text: &str, file: &str) -> Result<Value, InputError> {
    let mut docs = parse_yaml_documents(text, file)?;
    match docs.len() {
        0 => Ok(Value::Null),
        1 => Ok(docs.remove(0)),
        n => Err(InputError::new(file, format!("expected one YAML document, found {n}"))),
    }
}

/// An `InputError` for a serde-saphyr error, with its position when known.
pub fn yaml_error(file: &str, err: &serde_saphyr::Error) -> InputError {
    let mut message = err.to_string();
    // serde-saphyr renders a multi-line snippet; the first line is the fact.
    if let Some(first) = message.lines().next() {
        message = first.trim().to_string();
    }
    let mut e = InputError::new(file, format!("invalid YAML: {message}"));
    if let Some(loc) = err.location() {
        if loc.line() > 0 {
            e = e.at(loc.line() as usize, loc.column().max(1) as usize);
        }
    }
    e
}

/// Emit `v` as block YAML (strings like `"yes"`, `"on"`, `"0644"` are quoted, so YAML 1.1
/// readers see the same values).
pub fn to_yaml_string(v: &Value) -> String {
    match serde_saphyr::to_string(v) {
        Ok(s) => s,
        // Only non-string map keys can fail, and serde_json::Value has none.
        Err(err) => format!("# unserializable: {err}\n"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn octal_and_booleans_read_like_kubectl() {
        let docs = parse_yaml_documents("mode: 0644\nflag: yes\n---\n---\nb: 1\n", "x.yaml").unwrap();
        assert_eq!(docs, vec![json!({"mode": 420, "flag": true}), json!({"b": 1})]);
    }

    #[test]
    fn errors_carry_file_and_line() {
        let err = parse_yaml_documents("a: 1\nb: [1, 2\nc: 3\n", "bad.yaml").unwrap_err();
        assert_eq!(err.file.to_str(), Some("bad.yaml"));
        assert!(err.line.is_some(), "{err:?}");
    }

    #[test]
    fn emitter_quotes_yaml11_booleans() {
        let s = to_yaml_string(&json!({"a": "yes", "b": "on", "c": "0644", "d": 3}));
        let back = parse_yaml_documents(&s, "round.yaml").unwrap();
        assert_eq!(back, vec![json!({"a": "yes", "b": "on", "c": "0644", "d": 3})]);
    }
}
