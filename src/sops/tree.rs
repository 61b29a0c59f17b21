//! A sops document as its store loads it: ordered maps with string keys, sequences, and scalars
//! with the text and style Go's YAML decoder typed them by (comments are not part of the MAC).

use std::collections::HashMap;

use saphyr_parser::{Event, Parser, ScalarStyle};

use super::golang::{Format, GoValue, parse_timestamp, resolve_json_number, resolve_plain};

/// One node of a loaded document.
#[derive(Clone, Debug, PartialEq)]
pub enum Node {
    /// Keys in file order (duplicates refused when loading).
    Map(Vec<(String, Node)>),
    Seq(Vec<Node>),
    Scalar(GoValue),
}

impl Node {
    /// The value under `key` of a map.
    pub fn get(&self, key: &str) -> Option<&Node> {
        match self {
            Node::Map(items) => items.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    /// The scalar as a string, when it is one.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Node::Scalar(GoValue::Str(s) | GoValue::Time(s)) => Some(s),
            _ => None,
        }
    }
}

/// Why a document could not be loaded (the text is an encrypted file: no secret in messages).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadError {
    pub line: Option<usize>,
    pub column: Option<usize>,
    pub message: String,
}

fn fail(message: impl Into<String>) -> LoadError {
    LoadError {
        line: None,
        column: None,
        message: message.into(),
    }
}

enum Frame {
    Map {
        items: Vec<(String, Node)>,
        pending_key: Option<String>,
        anchor: usize,
    },
    Seq {
        items: Vec<Node>,
        anchor: usize,
    },
}

/// yaml.v3's typing of one scalar (quoted and block scalars are strings; tags as written).
fn scalar_value(
    text: &str,
    style: ScalarStyle,
    tag: Option<&saphyr_parser::Tag>,
    format: Format,
) -> Result<GoValue, LoadError> {
    let quoted = style != ScalarStyle::Plain;
    if format == Format::Json {
        if quoted {
            return Ok(GoValue::Str(text.to_string()));
        }
        return match text {
            "true" => Ok(GoValue::Bool(true)),
            "false" => Ok(GoValue::Bool(false)),
            "null" => Ok(GoValue::Null),
            _ => resolve_json_number(text)
                .ok_or_else(|| fail(format!("invalid JSON value `{text}`"))),
        };
    }
    let short = tag.map(|t| {
        let handle = if t.handle == "tag:yaml.org,2002:" {
            "!!"
        } else {
            t.handle.as_str()
        };
        format!("{handle}{}", t.suffix)
    });
    match short.as_deref() {
        None | Some("!") if quoted => Ok(GoValue::Str(text.to_string())),
        None | Some("!") => Ok(resolve_plain(text)),
        Some("!!str") => Ok(GoValue::Str(text.to_string())),
        Some("!!null") => Ok(GoValue::Null),
        Some("!!bool") => match resolve_plain(text) {
            b @ GoValue::Bool(_) => Ok(b),
            _ => Err(fail(format!("cannot decode `{text}` as a !!bool"))),
        },
        Some("!!int") => match resolve_plain(text) {
            v @ (GoValue::Int(_) | GoValue::Uint(_)) => Ok(v),
            _ => Err(fail(format!("cannot decode `{text}` as a !!int"))),
        },
        Some("!!float") => match resolve_plain(text) {
            GoValue::Int(i) => Ok(GoValue::Float(i as f64)),
            v @ GoValue::Float(_) => Ok(v),
            _ => Err(fail(format!("cannot decode `{text}` as a !!float"))),
        },
        Some("!!timestamp") => parse_timestamp(text)
            .map(GoValue::Time)
            .ok_or_else(|| fail(format!("cannot decode `{text}` as a !!timestamp"))),
        Some(other) => Err(fail(format!(
            "the YAML tag {other} is not supported in an encrypted file"
        ))),
    }
}

/// Load every document of `text` (YAML, or JSON read as YAML flow style): what sops' store sees.
/// An empty document is `None`.
pub fn load(text: &str, format: Format) -> Result<Vec<Option<Node>>, LoadError> {
    let mut docs = Vec::new();
    let mut stack: Vec<Frame> = Vec::new();
    let mut anchors: HashMap<usize, Node> = HashMap::new();
    let mut root: Option<Node> = None;
    for item in Parser::new_from_str(text) {
        let (event, span) = item.map_err(|e| LoadError {
            line: Some(e.marker().line()),
            column: Some(e.marker().col() + 1),
            message: e.info().to_string(),
        })?;
        let at = |mut e: LoadError| {
            e.line = Some(span.start.line());
            e.column = Some(span.start.col() + 1);
            e
        };
        let finished: Option<(Node, usize)> = match event {
            Event::DocumentStart(_) => {
                root = None;
                None
            }
            Event::DocumentEnd => {
                docs.push(root.take());
                None
            }
            Event::MappingStart(anchor, _) => {
                stack.push(Frame::Map {
                    items: Vec::new(),
                    pending_key: None,
                    anchor,
                });
                None
            }
            Event::SequenceStart(anchor, _) => {
                stack.push(Frame::Seq {
                    items: Vec::new(),
                    anchor,
                });
                None
            }
            Event::MappingEnd => match stack.pop() {
                Some(Frame::Map { items, anchor, .. }) => Some((Node::Map(items), anchor)),
                _ => return Err(at(fail("unbalanced mapping"))),
            },
            Event::SequenceEnd => match stack.pop() {
                Some(Frame::Seq { items, anchor }) => Some((Node::Seq(items), anchor)),
                _ => return Err(at(fail("unbalanced sequence"))),
            },
            Event::Scalar(value, style, anchor, tag) => {
                let v = scalar_value(&value, style, tag.as_deref(), format).map_err(at)?;
                Some((Node::Scalar(v), anchor))
            }
            Event::Alias(id) => {
                let node = anchors
                    .get(&id)
                    .cloned()
                    .ok_or_else(|| at(fail("alias to an unknown anchor")))?;
                Some((node, 0))
            }
            _ => None,
        };
        let Some((node, anchor)) = finished else {
            continue;
        };
        if anchor != 0 {
            anchors.insert(anchor, node.clone());
        }
        match stack.last_mut() {
            None => root = Some(node),
            Some(Frame::Seq { items, .. }) => items.push(node),
            Some(Frame::Map {
                items, pending_key, ..
            }) => match pending_key.take() {
                None => {
                    let key = match node {
                        Node::Scalar(GoValue::Str(s)) => s,
                        _ => {
                            return Err(at(fail(
                                "a mapping key is not a string (sops supports string keys only)",
                            )));
                        }
                    };
                    if items.iter().any(|(k, _)| *k == key) {
                        return Err(at(fail(format!("duplicate key `{key}`"))));
                    }
                    *pending_key = Some(key);
                }
                Some(key) => items.push((key, node)),
            },
        }
    }
    Ok(docs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_is_typed_like_sops() {
        let docs = load(
            "a: yes\nb: \"1\"\nc: 1\nd: &x [1, two]\ne: *x\nf: |\n  line\n# comment\n",
            Format::Yaml,
        )
        .unwrap();
        let Some(Node::Map(items)) = &docs[0] else {
            panic!("{docs:?}")
        };
        let keys: Vec<&str> = items.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["a", "b", "c", "d", "e", "f"]);
        assert_eq!(items[0].1, Node::Scalar(GoValue::Str("yes".into())));
        assert_eq!(items[1].1, Node::Scalar(GoValue::Str("1".into())));
        assert_eq!(items[2].1, Node::Scalar(GoValue::Int(1)));
        assert_eq!(items[3].1, items[4].1);
        assert_eq!(items[5].1, Node::Scalar(GoValue::Str("line\n".into())));
    }

    #[test]
    fn duplicates_and_non_string_keys_are_refused() {
        assert!(
            load("a: 1\na: 2\n", Format::Yaml)
                .unwrap_err()
                .message
                .contains("duplicate")
        );
        assert!(load("1: x\n", Format::Yaml).is_err());
    }

    #[test]
    fn json_numbers_are_ints_or_floats() {
        let docs = load(
            "{\"a\": 1, \"b\": 1.0, \"c\": \"x\", \"d\": [true, null]}",
            Format::Json,
        )
        .unwrap();
        let Some(Node::Map(items)) = &docs[0] else {
            panic!()
        };
        assert_eq!(items[0].1, Node::Scalar(GoValue::Int(1)));
        assert_eq!(items[1].1, Node::Scalar(GoValue::Float(1.0)));
        assert_eq!(
            items[3].1,
            Node::Seq(vec![
                Node::Scalar(GoValue::Bool(true)),
                Node::Scalar(GoValue::Null)
            ])
        );
    }
}
