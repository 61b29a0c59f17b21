//! JSON text read into a `serde_json::Value` with duplicate object keys refused.
//!
//! serde_json keeps the last of two equal keys without a word, so a `values.schema.json` with
//! `"type"` written twice validates against a schema its author did not read. The error names
//! the key, the JSON pointer of the object holding it, and (through serde_json) line and column.

use std::fmt;

use serde::de::{DeserializeSeed, Error as _, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

/// Parse `text`, refusing duplicate keys in any object.
pub fn from_str(text: &str) -> Result<Value, serde_json::Error> {
    let mut de = serde_json::Deserializer::from_str(text);
    let v = Strict { pointer: "" }.deserialize(&mut de)?;
    de.end()?;
    Ok(v)
}

struct Strict<'a> {
    /// JSON pointer of the value being read.
    pointer: &'a str,
}

impl<'de> DeserializeSeed<'de> for Strict<'_> {
    type Value = Value;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Strict<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(v.into())
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(v.into())
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_string()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::new();
        loop {
            let pointer = format!("{}/{}", self.pointer, out.len());
            match seq.next_element_seed(Strict { pointer: &pointer })? {
                Some(v) => out.push(v),
                None => return Ok(Value::Array(out)),
            }
        }
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if out.contains_key(&key) {
                let at = if self.pointer.is_empty() {
                    "the top-level object".to_string()
                } else {
                    format!("the object at {}", self.pointer)
                };
                return Err(A::Error::custom(format!(
                    "duplicate key {key:?} in {at} (JSON keeps only one of them: remove the other)"
                )));
            }
            let pointer = format!("{}/{}", self.pointer, super::values::escape_segment(&key));
            let v = map.next_value_seed(Strict { pointer: &pointer })?;
            out.insert(key, v);
        }
        Ok(Value::Object(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicates_are_refused_with_pointer_and_line() {
        let text = "{\n  \"type\": \"object\",\n  \"properties\": {\n    \"a\": {\"type\": \"string\"},\n    \"a\": {\"type\": \"integer\"}\n  }\n}\n";
        assert!(
            serde_json::from_str::<Value>(text).is_ok(),
            "serde_json accepts it"
        );
        let e = from_str(text).unwrap_err();
        assert_eq!(e.line(), 5, "{e}");
        assert!(
            e.to_string().contains("\"a\" in the object at /properties"),
            "{e}"
        );
        let e = from_str("{\"type\": 1, \"type\": 2}").unwrap_err();
        assert!(e.to_string().contains("top-level"), "{e}");
    }

    #[test]
    fn same_value_as_serde_json_otherwise() {
        let text =
            r#"{"a": [1, 2.5, -3, "x", null, true, {"b": {}}], "c~/d": 18446744073709551615}"#;
        assert_eq!(
            from_str(text).unwrap(),
            serde_json::from_str::<Value>(text).unwrap()
        );
        assert!(from_str("{} x").is_err());
    }
}
