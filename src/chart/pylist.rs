//! Python-style mutable lists for Jinja2 templates: `{% set l = [] %}` then `l.append(x)`, as paictl's Jinja2 ran them.
//!
//! minijinja's lists are immutable values, so an unchanged OpenPAI template that builds a list in a
//! loop (`{% set ignored = mount_points.append(...) %}`, v0.14's hadoop-data-node) failed to render.
//! At load, [`rewrite`] turns exactly the list literals that a template later mutates
//! (`{% set NAME = [...] %}` where the source calls `NAME.append(` / `.extend(` / ...) into
//! `[...]|_pailot_list`, a [`PyList`]: one shared, locked `Vec` that every scope sees, like a Python
//! list. The text is only appended after the literal, so lines, and columns up to the literal's end,
//! stay those of the file. Mutating any other list (a values list, a `split` result) is an error
//! that says which lists can be changed.

use std::sync::{Arc, Mutex};

use minijinja::value::{Enumerator, Kwargs, Object, ObjectRepr, Value};
use minijinja::{Error, ErrorKind, State};

/// The filter [`rewrite`] appends to a mutated list literal.
pub const FILTER: &str = "_pailot_list";

/// Python list methods that change the list in place.
const MUTATING: &[&str] = &[
    "append", "extend", "insert", "pop", "remove", "clear", "reverse", "sort",
];

/// A list a template mutates in place (see the module docs).
#[derive(Debug, Default)]
pub struct PyList(Mutex<Vec<Value>>);

impl PyList {
    fn items(&self) -> std::sync::MutexGuard<'_, Vec<Value>> {
        // A panic while holding the lock cannot leave a half-changed Vec: every change is one call.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// `[...]|_pailot_list`: a fresh mutable list holding the literal's items.
pub fn to_pylist(v: Value) -> Result<Value, Error> {
    let items = v.try_iter()?.collect();
    Ok(Value::from_object(PyList(Mutex::new(items))))
}

fn none() -> Value {
    Value::from(())
}

fn index_error(method: &str, what: &str) -> Error {
    Error::new(
        ErrorKind::InvalidOperation,
        format!("list.{method}: {what}"),
    )
}

/// Python's index normalisation: negative counts from the end; `insert` clamps, `pop` must hit.
fn resolve(i: i64, len: usize) -> i64 {
    if i < 0 { i + len as i64 } else { i }
}

impl Object for PyList {
    fn repr(self: &Arc<Self>) -> ObjectRepr {
        ObjectRepr::Seq
    }

    fn get_value(self: &Arc<Self>, key: &Value) -> Option<Value> {
        let items = self.items();
        let i = resolve(i64::try_from(key.clone()).ok()?, items.len());
        usize::try_from(i).ok().and_then(|i| items.get(i).cloned())
    }

    fn enumerate(self: &Arc<Self>) -> Enumerator {
        // A snapshot: a loop over the list may append to it, as in Python it would see the growth,
        // but Jinja2 templates do not rely on that and a snapshot cannot deadlock.
        Enumerator::Iter(Box::new(self.items().clone().into_iter()))
    }

    fn enumerator_len(self: &Arc<Self>) -> Option<usize> {
        Some(self.items().len())
    }

    fn call_method(
        self: &Arc<Self>,
        _state: &mut State<'_, '_>,
        method: &str,
        args: &[Value],
    ) -> Result<Value, Error> {
        use minijinja::value::from_args;
        match method {
            "append" => {
                let (x,): (Value,) = from_args(args)?;
                self.items().push(x);
                Ok(none())
            }
            "extend" => {
                let (more,): (Value,) = from_args(args)?;
                // Collected before locking: `l.extend(l)` must not deadlock.
                let more: Vec<Value> = more.try_iter()?.collect();
                self.items().extend(more);
                Ok(none())
            }
            "insert" => {
                let (i, x): (i64, Value) = from_args(args)?;
                let mut items = self.items();
                let at = resolve(i, items.len()).clamp(0, items.len() as i64) as usize;
                items.insert(at, x);
                Ok(none())
            }
            "pop" => {
                let (i,): (Option<i64>,) = from_args(args)?;
                let mut items = self.items();
                if items.is_empty() {
                    return Err(index_error("pop", "pop from empty list"));
                }
                let i = resolve(i.unwrap_or(-1), items.len());
                match usize::try_from(i).ok().filter(|&i| i < items.len()) {
                    Some(i) => Ok(items.remove(i)),
                    None => Err(index_error("pop", "pop index out of range")),
                }
            }
            "remove" => {
                let (x,): (Value,) = from_args(args)?;
                let mut items = self.items();
                match items.iter().position(|v| *v == x) {
                    Some(i) => {
                        items.remove(i);
                        Ok(none())
                    }
                    None => Err(index_error("remove", &format!("{x} is not in list"))),
                }
            }
            "clear" => {
                let () = from_args(args)?;
                self.items().clear();
                Ok(none())
            }
            "reverse" => {
                let () = from_args(args)?;
                self.items().reverse();
                Ok(none())
            }
            "sort" => {
                let (kwargs,): (Kwargs,) = from_args(args)?;
                let reverse: Option<bool> = kwargs.get("reverse")?;
                kwargs.assert_all_used()?;
                let mut items = self.items();
                items.sort();
                if reverse == Some(true) {
                    items.reverse();
                }
                Ok(none())
            }
            "index" => {
                let (x,): (Value,) = from_args(args)?;
                match self.items().iter().position(|v| *v == x) {
                    Some(i) => Ok(Value::from(i)),
                    None => Err(index_error("index", &format!("{x} is not in list"))),
                }
            }
            "copy" => {
                let () = from_args(args)?;
                Ok(Value::from_object(PyList(Mutex::new(self.items().clone()))))
            }
            // `count` and anything else: pycompat, through the unknown-method callback.
            _ => Err(Error::from(ErrorKind::UnknownMethod)),
        }
    }
}

/// pycompat's methods, plus a clear error for mutating a list that is not a [`PyList`].
pub fn unknown_method_callback(
    state: &mut State,
    value: &Value,
    method: &str,
    args: &[Value],
) -> Result<Value, Error> {
    if value.kind() == minijinja::value::ValueKind::Seq && MUTATING.contains(&method) {
        return Err(Error::new(
            ErrorKind::InvalidOperation,
            format!(
                "list.{method} changes a list in place; pailot can do that only to a list the template \
                 creates itself with `{{% set name = [...] %}}` (this one comes from values or a filter)"
            ),
        ));
    }
    minijinja_contrib::pycompat::unknown_method_callback(state, value, method, args)
}

/// `source` with every list literal that the template mutates turned into a [`PyList`], and whether
/// anything changed. Only `{% set NAME = [ ... ] %}` statements whose `NAME` appears as
/// `NAME.<mutating method>(` somewhere in the source are touched.
pub fn rewrite(source: &str) -> Option<String> {
    let mutated = mutated_names(source);
    if mutated.is_empty() {
        return None;
    }
    let mut out = String::with_capacity(source.len() + 32);
    let mut copied = 0;
    let mut from = 0;
    while let Some(open) = source[from..].find("{%").map(|i| from + i) {
        let Some(close) = tag_end(source, open + 2) else {
            break;
        };
        if let Some(at) = set_list_literal_end(&source[open + 2..close], &mutated) {
            let at = open + 2 + at;
            out.push_str(&source[copied..at]);
            out.push('|');
            out.push_str(FILTER);
            copied = at;
        }
        from = close + 2;
    }
    if copied == 0 {
        return None;
    }
    out.push_str(&source[copied..]);
    Some(out)
}

fn is_ident_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// Names `x` for which the source holds `x.<mutating method>(`.
fn mutated_names(source: &str) -> Vec<&str> {
    let b = source.as_bytes();
    let mut names = Vec::new();
    for m in MUTATING {
        let pat = format!(".{m}(");
        for (dot, _) in source.match_indices(&pat) {
            let start = b[..dot]
                .iter()
                .rposition(|&c| !is_ident_byte(c))
                .map_or(0, |i| i + 1);
            let name = &source[start..dot];
            if !name.is_empty() && !names.contains(&name) {
                names.push(name);
            }
        }
    }
    names
}

/// Byte offset of the `%}` closing a tag whose body starts at `from` (quoted strings skipped).
fn tag_end(source: &str, from: usize) -> Option<usize> {
    let b = source.as_bytes();
    let mut i = from;
    let mut quote: Option<u8> = None;
    while i + 1 < b.len() {
        match (quote, b[i]) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), b'\\') => i += 1,
            (Some(_), _) => {}
            (None, b'"' | b'\'') => quote = Some(b[i]),
            (None, b'%') if b[i + 1] == b'}' => return Some(i),
            (None, _) => {}
        }
        i += 1;
    }
    None
}

/// For a tag body `- set NAME = [ ... ] -` with `NAME` in `names`: the offset just after the `]`.
fn set_list_literal_end(body: &str, names: &[&str]) -> Option<usize> {
    let trimmed = body.trim_start_matches(['-', '+']).trim_start();
    let rest = trimmed.strip_prefix("set")?;
    if !rest.starts_with(char::is_whitespace) {
        return None;
    }
    let rest = rest.trim_start();
    let name_len = rest.bytes().take_while(|&c| is_ident_byte(c)).count();
    let name = &rest[..name_len];
    if !names.contains(&name) {
        return None;
    }
    let expr = rest[name_len..].trim_start().strip_prefix('=')?;
    if expr.starts_with('=') {
        return None;
    }
    let expr = expr.trim_start();
    let expr_start = body.len() - expr.len();
    if !expr.starts_with('[') {
        return None;
    }
    let end = matching_bracket(expr)?;
    // The literal must be the whole expression (`[a] + b` is left alone).
    let tail = expr[end..]
        .trim_end()
        .trim_end_matches(['-', '+'])
        .trim_end();
    tail.is_empty().then_some(expr_start + end)
}

/// Offset just after the `]` matching the `[` at the start of `expr`.
fn matching_bracket(expr: &str) -> Option<usize> {
    let b = expr.as_bytes();
    let mut depth = 0usize;
    let mut quote: Option<u8> = None;
    let mut i = 0;
    while i < b.len() {
        match (quote, b[i]) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), b'\\') => i += 1,
            (Some(_), _) => {}
            (None, b'"' | b'\'') => quote = Some(b[i]),
            (None, b'[' | b'(' | b'{') => depth += 1,
            (None, b']' | b')' | b'}') => {
                depth = depth.checked_sub(1)?;
                if depth == 0 {
                    return (b[i] == b']').then_some(i + 1);
                }
            }
            (None, _) => {}
        }
        i += 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(src: &str) -> Result<String, Error> {
        let mut env = minijinja::Environment::new();
        env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
        env.set_unknown_method_callback(unknown_method_callback);
        env.add_filter(FILTER, to_pylist);
        let src = rewrite(src).unwrap_or_else(|| src.to_string());
        env.render_str(&src, minijinja::context! { given => vec![1, 2] })
    }

    #[test]
    fn rewrite_touches_only_mutated_set_literals() {
        let src = "{% set a = [] %}{% set b = [1, [2], \"]\"] -%}{% set c = [] %}{% set d = [1] + c %}\
                   {{ a.append(1) }}{% set x = b.extend([3]) %}{% set y = d.pop() %}";
        let got = rewrite(src).unwrap();
        assert_eq!(
            got,
            "{% set a = []|_pailot_list %}{% set b = [1, [2], \"]\"]|_pailot_list -%}{% set c = [] %}\
             {% set d = [1] + c %}{{ a.append(1) }}{% set x = b.extend([3]) %}{% set y = d.pop() %}"
        );
        assert_eq!(rewrite("{% set a = [] %}{{ a | join }}"), None);
        assert_eq!(rewrite("{% set ab = [] %}{{ b.append(1) }}"), None);
        // Lines never move.
        let multi = "{% set l = [\n 1,\n 2] %}\n{% set _ = l.append(3) %}{{ l }}";
        assert_eq!(
            rewrite(multi).unwrap().lines().count(),
            multi.lines().count()
        );
    }

    #[test]
    fn list_methods_behave_like_python() {
        let src = "{% set l = [3] %}{% for i in [1, 2] %}{% set _ = l.append(i * 10) %}{% endfor %}\
                   {% set _ = l.extend([7, 8]) %}{% set _ = l.insert(0, 0) %}{% set _ = l.insert(-1, 5) %}\
                   {{ l }} {{ l.pop() }} {{ l.pop(0) }} {% set _ = l.remove(7) %}{{ l }} {{ l|length }} \
                   {% set _ = l.sort(reverse=true) %}{{ l }} {{ l.index(10) }} {{ l.count(3) }} \
                   {% set m = l.copy() %}{% set _ = m.clear() %}{{ m }} {{ l[-1] }} {{ l|join(',') }}";
        assert_eq!(
            render(src).unwrap(),
            "[0, 3, 10, 20, 7, 5, 8] 8 0 [3, 10, 20, 5] 4 [20, 10, 5, 3] 1 1 [] 3 20,10,5,3"
        );
        let src = "{% set l = [] %}{% set _ = l.append({\"a\": 1}) %}{{ l|tojson }}";
        assert_eq!(render(src).unwrap(), "[{\"a\": 1}]");
    }

    #[test]
    fn mutating_a_list_the_template_did_not_create_is_a_clear_error() {
        let err = render("{% set _ = given.append(3) %}").unwrap_err();
        assert!(
            err.to_string()
                .contains("only to a list the template creates"),
            "{err}"
        );
        let err = render("{% set l = [] %}{{ l.pop() }}").unwrap_err();
        assert!(err.to_string().contains("pop from empty list"), "{err}");
        // Non-mutating pycompat methods still work on every list.
        assert_eq!(render("{{ given.count(2) }}").unwrap(), "1");
    }
}
