//! Patch targets: kustomize-compatible object selectors (anchored regexes, label/annotation selectors, chart).

use std::collections::BTreeMap;

use regex::Regex;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::manifest::ObjectId;

/// Which rendered objects a patch applies to. Every field given must match; regexes are anchored.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Target {
    /// API group (regex; the core group is the empty string).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// API version without the group (regex), e.g. `v1`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Kind (regex), e.g. `DaemonSet|Deployment`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// `metadata.name` (regex).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `metadata.namespace` (regex; cluster-scoped objects have the empty namespace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Kubernetes label selector: `a=b`, `a==b`, `a!=b`, `a in (x,y)`, `a notin (x)`, `a`, `!a`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label_selector: Option<String>,
    /// Annotation selector, same syntax as `labelSelector`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotation_selector: Option<String>,
    /// Name of the chart that rendered the object (regex).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chart: Option<String>,
}

/// Why a target cannot be compiled: which field, and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("invalid regex in target.{field}: {message}")]
    Regex {
        field: &'static str,
        message: String,
    },
    #[error("invalid target.{field} `{selector}`: {message}")]
    Selector {
        field: &'static str,
        selector: String,
        message: String,
    },
}

impl Error {
    /// The target field concerned (`kind`, `labelSelector`, ...).
    pub fn field(&self) -> &'static str {
        match self {
            Error::Regex { field, .. } | Error::Selector { field, .. } => field,
        }
    }
}

/// A target with its regexes compiled once and its selectors parsed.
#[derive(Clone, Debug)]
pub struct CompiledTarget {
    /// `name` when it is a plain name (no regex syntax): lets callers look the object up directly.
    literal_name: Option<String>,
    group: Option<Matcher>,
    version: Option<Matcher>,
    kind: Option<Matcher>,
    name: Option<Matcher>,
    namespace: Option<Matcher>,
    chart: Option<Matcher>,
    labels: Option<Selector>,
    annotations: Option<Selector>,
}

/// An anchored pattern: plain names compare as strings, the rest run a regex compiled once.
#[derive(Clone, Debug)]
enum Matcher {
    Literal(String),
    Regex(Regex),
}

impl Matcher {
    fn is_match(&self, s: &str) -> bool {
        match self {
            Matcher::Literal(l) => l == s,
            Matcher::Regex(r) => r.is_match(s),
        }
    }
}

fn is_literal(p: &str) -> bool {
    p.chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// Compiled regexes by pattern: overlays repeat the same few patterns across many patches.
fn cached_regex(pattern: &str) -> Result<Regex, regex::Error> {
    static CACHE: std::sync::OnceLock<std::sync::Mutex<std::collections::HashMap<String, Regex>>> =
        std::sync::OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    if let Some(r) = cache.lock().ok().and_then(|c| c.get(pattern).cloned()) {
        return Ok(r);
    }
    let r = Regex::new(&format!("^(?:{pattern})$"))?;
    if let Ok(mut c) = cache.lock() {
        c.insert(pattern.to_string(), r.clone());
    }
    Ok(r)
}

fn anchored(field: &'static str, re: &Option<String>) -> Result<Option<Matcher>, Error> {
    match re {
        None => Ok(None),
        Some(p) if is_literal(p) => Ok(Some(Matcher::Literal(p.clone()))),
        Some(re) => cached_regex(re)
            .map(|r| Some(Matcher::Regex(r)))
            .map_err(|e| Error::Regex {
                field,
                message: e
                    .to_string()
                    .lines()
                    .last()
                    .unwrap_or("")
                    .trim()
                    .to_string(),
            }),
    }
}

fn selector(field: &'static str, sel: &Option<String>) -> Result<Option<Selector>, Error> {
    match sel {
        None => Ok(None),
        Some(s) => Selector::parse(s)
            .map(Some)
            .map_err(|message| Error::Selector {
                field,
                selector: s.clone(),
                message,
            }),
    }
}

impl CompiledTarget {
    /// Compile the regexes (anchored as `^(?:re)$`) and parse the selectors of `t`.
    pub fn compile(t: &Target) -> Result<Self, Error> {
        let literal_name = t
            .name
            .as_ref()
            .filter(|n| !n.is_empty() && is_literal(n))
            .cloned();
        Ok(CompiledTarget {
            literal_name,
            group: anchored("group", &t.group)?,
            version: anchored("version", &t.version)?,
            kind: anchored("kind", &t.kind)?,
            name: anchored("name", &t.name)?,
            namespace: anchored("namespace", &t.namespace)?,
            chart: anchored("chart", &t.chart)?,
            labels: selector("labelSelector", &t.label_selector)?,
            annotations: selector("annotationSelector", &t.annotation_selector)?,
        })
    }

    /// The object name this target selects when its `name` is a plain name, not a pattern.
    pub fn literal_name(&self) -> Option<&str> {
        self.literal_name.as_deref()
    }

    /// True when the object `obj` with identity `id`, rendered by `chart`, is selected.
    pub fn matches(&self, id: &ObjectId, chart: &str, obj: &Value) -> bool {
        fn re(r: &Option<Matcher>, s: &str) -> bool {
            r.as_ref().is_none_or(|r| r.is_match(s))
        }
        re(&self.kind, &id.kind)
            && re(&self.name, &id.name)
            && re(&self.group, &id.group)
            && re(&self.version, &id.version)
            && re(&self.namespace, id.namespace.as_deref().unwrap_or(""))
            && re(&self.chart, chart)
            && self
                .labels
                .as_ref()
                .is_none_or(|s| s.matches(obj.pointer("/metadata/labels")))
            && self
                .annotations
                .as_ref()
                .is_none_or(|s| s.matches(obj.pointer("/metadata/annotations")))
    }
}

/// A parsed Kubernetes set-based selector: every requirement must hold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Selector {
    requirements: Vec<Requirement>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Requirement {
    Equals(String, String),
    NotEquals(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    NotExists(String),
}

fn valid_key(k: &str) -> bool {
    !k.is_empty()
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'))
}

fn valid_value(v: &str) -> bool {
    v.chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// Split on commas that are not inside parentheses.
fn split_top_level(s: &str) -> Result<Vec<&str>, String> {
    let (mut parts, mut depth, mut start) = (Vec::new(), 0i32, 0usize);
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => {
                depth -= 1;
                if depth < 0 {
                    return Err("unbalanced `)`".into());
                }
            }
            ',' if depth == 0 => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if depth != 0 {
        return Err("unbalanced `(`".into());
    }
    parts.push(&s[start..]);
    Ok(parts)
}

impl Selector {
    /// Parse `a=b,c!=d,e in (x,y),f notin (z),g,!h` (Kubernetes label selector syntax).
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut requirements = Vec::new();
        if s.trim().is_empty() {
            return Ok(Selector { requirements });
        }
        for part in split_top_level(s)? {
            let part = part.trim();
            if part.is_empty() {
                return Err("empty requirement".into());
            }
            requirements.push(Self::requirement(part)?);
        }
        Ok(Selector { requirements })
    }

    fn requirement(part: &str) -> Result<Requirement, String> {
        let check_key = |k: &str| -> Result<String, String> {
            let k = k.trim();
            if valid_key(k) {
                Ok(k.to_string())
            } else {
                Err(format!("invalid key `{k}`"))
            }
        };
        let check_value = |v: &str| -> Result<String, String> {
            let v = v.trim();
            if valid_value(v) {
                Ok(v.to_string())
            } else {
                Err(format!("invalid value `{v}`"))
            }
        };
        if let Some(rest) = part.strip_prefix('!') {
            return Ok(Requirement::NotExists(check_key(rest)?));
        }
        if let Some((k, v)) = part.split_once("!=") {
            return Ok(Requirement::NotEquals(check_key(k)?, check_value(v)?));
        }
        if let Some((k, v)) = part.split_once("==") {
            return Ok(Requirement::Equals(check_key(k)?, check_value(v)?));
        }
        if let Some((k, v)) = part.split_once('=') {
            return Ok(Requirement::Equals(check_key(k)?, check_value(v)?));
        }
        if let Some(open) = part.find('(') {
            let close = part
                .rfind(')')
                .filter(|&c| c > open && part[c + 1..].trim().is_empty());
            let close = close.ok_or_else(|| format!("`{part}`: expected `)` at the end"))?;
            let head: Vec<&str> = part[..open].split_whitespace().collect();
            let values = part[open + 1..close]
                .split(',')
                .map(check_value)
                .collect::<Result<Vec<_>, _>>()?;
            return match head.as_slice() {
                [k, "in"] => Ok(Requirement::In(check_key(k)?, values)),
                [k, "notin"] => Ok(Requirement::NotIn(check_key(k)?, values)),
                _ => Err(format!(
                    "`{part}`: expected `KEY in (...)` or `KEY notin (...)`"
                )),
            };
        }
        Ok(Requirement::Exists(check_key(part)?))
    }

    /// True when the map (labels or annotations; absent = empty) satisfies every requirement.
    pub fn matches(&self, map: Option<&Value>) -> bool {
        let get = |k: &str| map.and_then(|m| m.get(k)).map(value_str);
        self.requirements.iter().all(|r| match r {
            Requirement::Equals(k, v) => get(k).as_deref() == Some(v.as_str()),
            Requirement::NotEquals(k, v) => get(k).as_deref() != Some(v.as_str()),
            Requirement::In(k, vs) => get(k).is_some_and(|x| vs.contains(&x)),
            Requirement::NotIn(k, vs) => get(k).is_none_or(|x| !vs.contains(&x)),
            Requirement::Exists(k) => get(k).is_some(),
            Requirement::NotExists(k) => get(k).is_none(),
        })
    }

    /// Matches against a plain string map (used by tests and other callers).
    pub fn matches_map(&self, map: &BTreeMap<String, String>) -> bool {
        let v = serde_json::to_value(map).unwrap_or(Value::Null);
        self.matches(Some(&v))
    }
}

fn value_str(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn id(kind: &str, name: &str, ns: Option<&str>) -> ObjectId {
        ObjectId {
            group: "apps".into(),
            version: "v1".into(),
            kind: kind.into(),
            namespace: ns.map(str::to_string),
            name: name.into(),
        }
    }

    #[test]
    fn regexes_are_anchored() {
        let t = CompiledTarget::compile(&Target {
            kind: Some("Deploy".into()),
            ..Default::default()
        })
        .unwrap();
        assert!(!t.matches(&id("Deployment", "x", None), "c", &json!({})));
        let t = CompiledTarget::compile(&Target {
            kind: Some("DaemonSet|Deployment".into()),
            name: Some("hadoop-.*".into()),
            ..Default::default()
        })
        .unwrap();
        assert!(t.matches(&id("Deployment", "hadoop-rm", None), "c", &json!({})));
        assert!(t.matches(&id("DaemonSet", "hadoop-nm", None), "c", &json!({})));
        assert!(!t.matches(&id("DaemonSet", "my-hadoop-nm", None), "c", &json!({})));
        assert!(!t.matches(&id("StatefulSet", "hadoop-nm", None), "c", &json!({})));
    }

    #[test]
    fn namespace_and_chart_match() {
        let t = CompiledTarget::compile(&Target {
            namespace: Some("default".into()),
            chart: Some("zoo.*".into()),
            ..Default::default()
        })
        .unwrap();
        assert!(t.matches(&id("D", "x", Some("default")), "zookeeper", &json!({})));
        assert!(!t.matches(&id("D", "x", None), "zookeeper", &json!({})));
        assert!(!t.matches(&id("D", "x", Some("default")), "grafana", &json!({})));
    }

    #[test]
    fn bad_regex_names_the_field() {
        let e = CompiledTarget::compile(&Target {
            name: Some("(".into()),
            ..Default::default()
        })
        .unwrap_err();
        assert_eq!(e.field(), "name");
    }

    #[test]
    fn selector_syntax() {
        let obj =
            json!({"metadata": {"labels": {"app": "zookeeper", "tier": "db", "gpu": "true"}}});
        let labels = obj.pointer("/metadata/labels");
        let yes = [
            "app=zookeeper",
            "app==zookeeper",
            "tier!=web",
            "app in (zookeeper, kafka)",
            "app notin (grafana)",
            "gpu",
            "!missing",
            "app in (zookeeper),tier!=web",
            "missing notin (x)",
            "",
        ];
        for s in yes {
            assert!(
                Selector::parse(s).unwrap().matches(labels),
                "{s} should match"
            );
        }
        let no = [
            "app=kafka",
            "tier!=db",
            "app in (kafka)",
            "app notin (zookeeper)",
            "missing",
            "!gpu",
            "missing in (x)",
        ];
        for s in no {
            assert!(
                !Selector::parse(s).unwrap().matches(labels),
                "{s} should not match"
            );
        }
        assert!(!Selector::parse("app=zookeeper").unwrap().matches(None));
    }

    #[test]
    fn selector_errors() {
        for s in [
            "app in (a",
            "app in a)",
            "a b c",
            "app=",
            "=x",
            "a,,b",
            "app on (x)",
            "k=v w",
        ] {
            // `app=` is valid in Kubernetes (empty value); everything else here is not.
            let r = Selector::parse(s);
            if s == "app=" {
                assert!(r.is_ok());
            } else {
                assert!(r.is_err(), "{s} should be rejected");
            }
        }
    }
}
