//! Keeping secret values out of text: the values a Secret carries, scrubbed from messages that quote them, and credentials stripped from URLs.
//!
//! The API server and schema validators quote the offending value in their errors (`expected string,
//! got ...{Value:73219944551}`). Where such an error is about a Secret, every value the Secret holds
//! (as written, and base64-decoded for `data`) is replaced by [`MASK`] before the text goes anywhere.

use base64::Engine;
use serde_json::Value;

/// What a secret value is replaced with.
pub const MASK: &str = "<redacted>";

/// Values shorter than this are not scrubbed from text: a one- or two-character value would mask
/// unrelated words (and reveals little on its own).
const MIN_SCRUB_LEN: usize = 3;

/// True for a core/v1 Secret.
pub fn is_secret(object: &Value) -> bool {
    object["kind"] == "Secret" && object["apiVersion"] == "v1"
}

/// Every value a Secret object carries in `data` (base64, and its decoded text) and `stringData`,
/// as the strings an error message could quote; empty for other objects.
pub fn secret_values(object: &Value) -> Vec<String> {
    if !is_secret(object) {
        return Vec::new();
    }
    let mut out = Vec::new();
    for field in ["data", "stringData"] {
        let Some(map) = object[field].as_object() else {
            continue;
        };
        for v in map.values() {
            let text = match v {
                Value::String(s) => s.clone(),
                Value::Null => continue,
                other => other.to_string(),
            };
            if field == "data"
                && let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(text.trim())
                && let Ok(decoded) = String::from_utf8(bytes)
            {
                out.push(decoded);
            }
            out.push(text);
        }
    }
    out.retain(|s| s.len() >= MIN_SCRUB_LEN);
    // Longest first, so that a value containing another is masked whole.
    out.sort_by_key(|s| std::cmp::Reverse(s.len()));
    out.dedup();
    out
}

/// `text` with every occurrence of each of `values` replaced by [`MASK`].
pub fn scrub(text: &str, values: &[String]) -> String {
    let mut out = text.to_string();
    for v in values {
        if out.contains(v.as_str()) {
            out = out.replace(v.as_str(), MASK);
        }
    }
    out
}

/// `url` without the user-info part (`https://user:token@host/x` → `https://host/x`); other URLs unchanged.
pub fn url_without_credentials(url: &str) -> String {
    match url_credentials(url) {
        Some((start, end)) => format!("{}{}", &url[..start], &url[end + 1..]),
        None => url.to_string(),
    }
}

/// Byte range of the `user[:password]` part of `scheme://user[:password]@host…` (the `@` at `end`).
pub fn url_credentials(url: &str) -> Option<(usize, usize)> {
    let scheme_end = url.find("://")? + 3;
    let authority_end = url[scheme_end..]
        .find(['/', '?', '#'])
        .map_or(url.len(), |i| scheme_end + i);
    let at = url[scheme_end..authority_end].rfind('@')? + scheme_end;
    Some((scheme_end, at))
}

/// True when `url` carries a password or token in its user-info (`https://user:token@host`); a bare
/// user name (`ssh://git@host`) is not a credential.
pub fn url_has_password(url: &str) -> bool {
    url_credentials(url).is_some_and(|(s, e)| url[s..e].contains(':'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn secret_values_cover_data_decoded_and_string_data() {
        let s = json!({"apiVersion": "v1", "kind": "Secret",
            "data": {"a": "aHVudGVyMi1TRUNSRVQ="}, "stringData": {"b": 73219944551i64, "c": "x"}});
        let v = secret_values(&s);
        assert!(v.contains(&"hunter2-SECRET".to_string()), "{v:?}");
        assert!(v.contains(&"aHVudGVyMi1TRUNSRVQ=".to_string()));
        assert!(v.contains(&"73219944551".to_string()));
        assert!(!v.contains(&"x".to_string()), "too short to scrub");
        let msg = "Secret \"s\" is invalid: stringData.b: expected string, got &value.valueUnstructured{Value:73219944551}; \"hunter2-SECRET\" is short";
        let clean = scrub(msg, &v);
        assert!(
            !clean.contains("73219944551") && !clean.contains("hunter2"),
            "{clean}"
        );
        assert!(clean.contains(MASK));
        assert!(
            secret_values(
                &json!({"apiVersion": "v1", "kind": "ConfigMap", "data": {"a": "hunter2"}})
            )
            .is_empty()
        );
    }

    #[test]
    fn url_credentials_are_stripped() {
        assert_eq!(
            url_without_credentials("https://user:TOKEN@git.example/o/r.git"),
            "https://git.example/o/r.git"
        );
        assert!(url_has_password("https://user:TOKEN@git.example/o/r.git"));
        assert!(url_has_password("https://x:y@h"));
        assert!(!url_has_password("ssh://git@github.com/o/r.git"));
        assert!(!url_has_password("https://git.example/a@b"));
        assert_eq!(
            url_without_credentials("https://git.example/a@b"),
            "https://git.example/a@b"
        );
        assert_eq!(url_without_credentials("/srv/repo"), "/srv/repo");
    }
}
