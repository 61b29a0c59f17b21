//! Which template lines a render ran: the `{% if %}` / `{% for %}` structure of a template and, per render, the branches it took.
//!
//! Provenance locates a rendered field by its YAML key in the template text; a key that appears in
//! several places (an `{% if %}` branch and a `{% for %}` body) needs to know which of them ran.
//! [`Control::scan`] records, once per template, every control region with its line range.
//! [`Control::liveness`] then decides, for one render, every `{% if %}` that is not inside a loop
//! or macro by evaluating its conditions (and the top-level `{% set %}` statements before them)
//! with the render's context: the branch taken is [`Run::Ran`], the others [`Run::Skipped`].
//! Everything inside a loop, a macro or a branch whose condition could not be evaluated is
//! [`Run::Unknown`]: it may or may not have produced a given value.

use std::collections::{BTreeMap, HashSet};

use minijinja::value::Value as JValue;

/// Whether a line's text was rendered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Run {
    /// Outside any control block, or in branches known to be taken.
    Ran,
    /// In a branch known not to be taken.
    Skipped,
    /// In a loop, a macro, or a branch whose condition pailot cannot evaluate.
    Unknown,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum RegionKind {
    /// Branch `branch` of the `{% if %}` block `block` (conditions in `IfBlock`).
    Branch { block: usize },
    /// A `{% for TARGETS in ITER %}` body (not decided: it ran zero or more times).
    Loop { targets: Vec<String>, iter: String },
    /// A loop's `{% else %}`, a macro, call, filter, with or block-set body.
    Opaque,
    /// `{% block %}`: rendered in place.
    Transparent,
}

#[derive(Clone, Debug)]
struct Region {
    parent: Option<usize>,
    kind: RegionKind,
    /// Byte range of the body: from the end of the opening tag to the start of the closing one.
    from: usize,
    to: usize,
}

#[derive(Clone, Debug)]
struct IfBlock {
    /// (region, condition); `None` for `else`.
    branches: Vec<(usize, Option<String>)>,
}

#[derive(Clone, Debug)]
enum Stmt {
    Set {
        region: Option<usize>,
        name: String,
        expr: String,
    },
    If {
        block: usize,
    },
}

/// The control structure of one template.
#[derive(Clone, Debug, Default)]
pub struct Control {
    regions: Vec<Region>,
    ifs: Vec<IfBlock>,
    stmts: Vec<Stmt>,
    /// Innermost region around the first non-blank character of each 1-based line (index 0
    /// unused): `key: {% for %}...{% endfor %}` is outside the loop, `{% if %}key: v` inside.
    line_region: Vec<Option<usize>>,
}

/// What one render ran, per region.
#[derive(Clone, Debug, Default)]
pub struct Liveness {
    line_region: Vec<Option<usize>>,
    region_run: Vec<Run>,
    region_parent: Vec<Option<usize>>,
}

impl Liveness {
    /// Whether `line` (1-based) was rendered; lines outside every control block always were.
    pub fn line(&self, line: usize) -> Run {
        match self.line_region.get(line).copied().flatten() {
            Some(r) => self.region_run[r],
            None => Run::Ran,
        }
    }

    /// The innermost control region around `line` (`None`: outside every block).
    pub fn region(&self, line: usize) -> Option<usize> {
        self.line_region.get(line).copied().flatten()
    }

    /// Whether region `outer` is `inner` or contains it (`None`, the top level, contains all).
    pub fn encloses(&self, outer: Option<usize>, inner: Option<usize>) -> bool {
        let mut r = inner;
        loop {
            if r == outer {
                return true;
            }
            match r {
                Some(i) => r = self.region_parent[i],
                None => return false,
            }
        }
    }
}

/// One `{% ... %}` tag: its byte range, keyword and the rest of its body.
struct Tag<'a> {
    start: usize,
    end: usize,
    keyword: &'a str,
    rest: &'a str,
}

/// Every statement tag of `source` in order, skipping comments and `{% raw %}` blocks.
fn tags(source: &str) -> Vec<Tag<'_>> {
    let b = source.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    let mut raw = false;
    while i + 1 < b.len() {
        if b[i] != b'{' || !matches!(b[i + 1], b'%' | b'#') {
            i += 1;
            continue;
        }
        let comment = b[i + 1] == b'#';
        let close = if comment { "#}" } else { "%}" };
        let body_start = i + 2;
        let Some(len) = find_close(&source[body_start..], close, !comment) else {
            break;
        };
        let body = &source[body_start..body_start + len];
        let start = i;
        i = body_start + len + 2;
        if comment {
            continue;
        }
        let body = body.trim_matches(|c: char| c == '-' || c == '+' || c.is_whitespace());
        let kw_len = body
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(body.len());
        let (keyword, rest) = (&body[..kw_len], body[kw_len..].trim());
        if raw {
            raw = keyword != "endraw";
            continue;
        }
        raw = keyword == "raw";
        out.push(Tag {
            start,
            end: i,
            keyword,
            rest,
        });
    }
    out
}

/// Offset of `close` in `s`, skipping quoted strings when `quotes`.
fn find_close(s: &str, close: &str, quotes: bool) -> Option<usize> {
    if !quotes {
        return s.find(close);
    }
    let b = s.as_bytes();
    let c = close.as_bytes();
    let mut quote: Option<u8> = None;
    let mut i = 0;
    while i < b.len() {
        match (quote, b[i]) {
            (Some(q), x) if x == q => quote = None,
            (Some(_), b'\\') => i += 1,
            (Some(_), _) => {}
            (None, b'"' | b'\'') => quote = Some(b[i]),
            (None, _) if b[i..].starts_with(c) => return Some(i),
            (None, _) => {}
        }
        i += 1;
    }
    None
}

/// The targets and the iterable of a `{% for %}` tag body: `k, v in values.x.items() if v`
/// gives `[k, v]` and `values.x.items()`.
fn loop_header(rest: &str) -> (Vec<String>, String) {
    let Some((targets, iter)) = rest.split_once(" in ") else {
        return (Vec::new(), String::new());
    };
    let targets = targets
        .trim()
        .trim_matches(['(', ')'])
        .split(',')
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty())
        .collect();
    let iter = iter.trim();
    let iter = iter.strip_suffix("recursive").unwrap_or(iter).trim_end();
    let iter = match iter.find(" if ") {
        Some(i) => &iter[..i],
        None => iter,
    };
    (targets, iter.trim().to_string())
}

/// `NAME = EXPR` of a `{% set %}` tag (not `ns.attr = ...`, not a block set).
fn simple_set(rest: &str) -> Option<(&str, &str)> {
    let (name, expr) = rest.split_once('=')?;
    let name = name.trim();
    let expr = expr.trim();
    let ident = !name.is_empty()
        && name.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_')
        && !expr.starts_with('=');
    ident.then_some((name, expr))
}

impl Control {
    /// The control structure of `source` (unbalanced tags, which minijinja would have rejected at
    /// load, leave their regions open to the end).
    pub fn scan(source: &str) -> Control {
        let mut c = Control::default();
        // Open regions, innermost last: (region, if block when a branch).
        let mut open: Vec<(usize, Option<usize>)> = Vec::new();
        let push = |c: &mut Control, open: &mut Vec<(usize, Option<usize>)>, kind, from, block| {
            let parent = open.last().map(|(r, _)| *r);
            c.regions.push(Region {
                parent,
                kind,
                from,
                to: source.len(),
            });
            open.push((c.regions.len() - 1, block));
        };
        for t in tags(source) {
            match t.keyword {
                "if" => {
                    let block = c.ifs.len();
                    c.ifs.push(IfBlock {
                        branches: Vec::new(),
                    });
                    c.stmts.push(Stmt::If { block });
                    push(
                        &mut c,
                        &mut open,
                        RegionKind::Branch { block },
                        t.end,
                        Some(block),
                    );
                    let r = c.regions.len() - 1;
                    c.ifs[block].branches.push((r, Some(t.rest.to_string())));
                }
                "elif" | "else" => {
                    let Some(&(r, block)) = open.last() else {
                        continue;
                    };
                    open.pop();
                    c.regions[r].to = t.start;
                    match block {
                        Some(block) => {
                            push(
                                &mut c,
                                &mut open,
                                RegionKind::Branch { block },
                                t.end,
                                Some(block),
                            );
                            let nr = c.regions.len() - 1;
                            let cond = (t.keyword == "elif").then(|| t.rest.to_string());
                            c.ifs[block].branches.push((nr, cond));
                        }
                        // A loop's `else`.
                        None => push(&mut c, &mut open, RegionKind::Opaque, t.end, None),
                    }
                }
                "for" => {
                    let (targets, iter) = loop_header(t.rest);
                    push(
                        &mut c,
                        &mut open,
                        RegionKind::Loop { targets, iter },
                        t.end,
                        None,
                    )
                }
                "macro" | "call" | "filter" | "with" | "autoescape" => {
                    push(&mut c, &mut open, RegionKind::Opaque, t.end, None)
                }
                "block" => push(&mut c, &mut open, RegionKind::Transparent, t.end, None),
                "set" => match simple_set(t.rest) {
                    Some((name, expr)) => c.stmts.push(Stmt::Set {
                        region: open.last().map(|(r, _)| *r),
                        name: name.to_string(),
                        expr: expr.to_string(),
                    }),
                    // `{% set name %}...{% endset %}`: a block whose body renders into a variable.
                    None if !t.rest.contains('=') => {
                        push(&mut c, &mut open, RegionKind::Opaque, t.end, None)
                    }
                    None => {}
                },
                k if k.starts_with("end") && k != "endraw" => {
                    if let Some((r, _)) = open.pop() {
                        c.regions[r].to = t.start;
                    }
                }
                _ => {}
            }
        }
        // Byte offset of each line's first non-blank character.
        let mut at = Vec::new();
        let mut offset = 0;
        for line in source.split_inclusive('\n') {
            at.push(offset + (line.len() - line.trim_start().len()));
            offset += line.len();
        }
        c.line_region = vec![None; at.len() + 1];
        // Regions are created outer first, so an inner region overwrites its parent's lines.
        for (i, r) in c.regions.iter().enumerate() {
            let first = at.partition_point(|&p| p < r.from);
            let last = at.partition_point(|&p| p < r.to);
            for l in first..last {
                c.line_region[l + 1] = Some(i);
            }
        }
        c
    }

    /// The loops around `line`, innermost first: their targets and iterable expressions.
    pub fn loops_around(&self, line: usize) -> Vec<(&[String], &str)> {
        let mut out = Vec::new();
        let mut r = self.line_region.get(line).copied().flatten();
        while let Some(i) = r {
            if let RegionKind::Loop { targets, iter } = &self.regions[i].kind {
                out.push((targets.as_slice(), iter.as_str()));
            }
            r = self.regions[i].parent;
        }
        out
    }

    /// Whether the template has any control block at all.
    pub fn is_empty(&self) -> bool {
        self.regions.is_empty()
    }

    /// What one render with `context` ran (see the module docs). `env` is the chart's environment.
    pub fn liveness(
        &self,
        env: &minijinja::Environment<'static>,
        context: &BTreeMap<String, JValue>,
    ) -> Liveness {
        let mut run = vec![Run::Unknown; self.regions.len()];
        // Regions are created outer first: a parent's state is known before its children's.
        let inherited = |run: &[Run], parent: Option<usize>| parent.map_or(Run::Ran, |p| run[p]);
        let mut vars: BTreeMap<String, JValue> = BTreeMap::new();
        let mut unknown: HashSet<String> = HashSet::new();
        let eval = |vars: &BTreeMap<String, JValue>, unknown: &HashSet<String>, expr: &str| {
            if identifiers(expr).any(|id| unknown.contains(id)) {
                return None;
            }
            let mut ctx = context.clone();
            ctx.extend(vars.iter().map(|(k, v)| (k.clone(), v.clone())));
            env.compile_expression(expr).ok()?.eval(ctx).ok()
        };
        // Opaque and transparent regions take their state from their parent.
        let mut decided = vec![false; self.regions.len()];
        let settle = |run: &mut Vec<Run>, decided: &mut Vec<bool>, upto: usize| {
            for i in 0..upto.min(self.regions.len()) {
                if decided[i] {
                    continue;
                }
                let parent = inherited(run, self.regions[i].parent);
                match self.regions[i].kind {
                    RegionKind::Opaque | RegionKind::Loop { .. } => {
                        run[i] = if parent == Run::Skipped {
                            Run::Skipped
                        } else {
                            Run::Unknown
                        };
                        decided[i] = true;
                    }
                    RegionKind::Transparent => {
                        run[i] = parent;
                        decided[i] = true;
                    }
                    RegionKind::Branch { .. } => {}
                }
            }
        };
        for stmt in &self.stmts {
            match stmt {
                Stmt::Set { region, name, expr } => {
                    settle(&mut run, &mut decided, region.map_or(0, |r| r + 1));
                    match inherited(&run, *region) {
                        Run::Ran => match eval(&vars, &unknown, expr) {
                            Some(v) => {
                                unknown.remove(name);
                                vars.insert(name.clone(), v);
                            }
                            None => {
                                vars.remove(name);
                                unknown.insert(name.clone());
                            }
                        },
                        // A set inside a loop or an undecided branch may or may not have run.
                        Run::Unknown => {
                            vars.remove(name);
                            unknown.insert(name.clone());
                        }
                        Run::Skipped => {}
                    }
                }
                Stmt::If { block } => {
                    let branches = &self.ifs[*block].branches;
                    let Some(&(first, _)) = branches.first() else {
                        continue;
                    };
                    settle(&mut run, &mut decided, first);
                    let parent = inherited(&run, self.regions[first].parent);
                    let mut taken = None;
                    let mut outcome = parent;
                    if parent == Run::Ran {
                        for (i, (_, cond)) in branches.iter().enumerate() {
                            let truth = match cond {
                                None => Some(true),
                                Some(c) => eval(&vars, &unknown, c).map(|v| v.is_true()),
                            };
                            match truth {
                                Some(true) => {
                                    taken = Some(i);
                                    break;
                                }
                                Some(false) => {}
                                None => {
                                    outcome = Run::Unknown;
                                    break;
                                }
                            }
                        }
                    }
                    for (i, (r, _)) in branches.iter().enumerate() {
                        run[*r] = match outcome {
                            Run::Ran if taken == Some(i) => Run::Ran,
                            Run::Ran => Run::Skipped,
                            other => other,
                        };
                        decided[*r] = true;
                    }
                }
            }
        }
        settle(&mut run, &mut decided, self.regions.len());
        Liveness {
            line_region: self.line_region.clone(),
            region_run: run,
            region_parent: self.regions.iter().map(|r| r.parent).collect(),
        }
    }
}

/// Identifiers in an expression, outside string literals.
fn identifiers(expr: &str) -> impl Iterator<Item = &str> {
    let b = expr.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c == b'"' || c == b'\'' {
            i += 1;
            while i < b.len() && b[i] != c {
                i += usize::from(b[i] == b'\\') + 1;
            }
            i += 1;
        } else if c.is_ascii_alphabetic() || c == b'_' {
            let s = i;
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                i += 1;
            }
            out.push(&expr[s..i]);
        } else {
            i += 1;
        }
    }
    out.into_iter()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn live(src: &str, values: serde_json::Value) -> Vec<Run> {
        let env = crate::chart::filters::new_environment();
        let mut ctx = BTreeMap::new();
        ctx.insert(
            "values".to_string(),
            JValue::from(minijinja::value::Serde(&values)),
        );
        let l = Control::scan(src).liveness(&env, &ctx);
        (1..=src.lines().count()).map(|n| l.line(n)).collect()
    }

    #[test]
    fn branches_taken_skipped_and_unknown() {
        use Run::*;
        let src = "a: 1\n{% if values.on %}\nb: 1\n{% elif values.x %}\nb: 2\n{% else %}\nb: 3\n{% endif %}\n\
                   {% for i in values.list %}\n{% if i %}\nc: 1\n{% endif %}\n{% endfor %}\nd: 1\n";
        let got = live(
            src,
            serde_json::json!({"on": false, "x": true, "list": [1]}),
        );
        // Tag lines belong to the block around the tag.
        assert_eq!(
            got,
            vec![
                Ran, Ran, Skipped, Ran, Ran, Ran, Skipped, Ran, Ran, Unknown, Unknown, Unknown,
                Ran, Ran
            ]
        );
        // A condition that cannot be evaluated (strict undefined) leaves every branch unknown.
        let got = live(
            "{% if values.missing.deep %}\na: 1\n{% else %}\na: 2\n{% endif %}",
            serde_json::json!({}),
        );
        assert_eq!(got, vec![Ran, Unknown, Ran, Unknown, Ran]);
    }

    #[test]
    fn sets_feed_later_conditions_unless_a_loop_may_change_them() {
        use Run::*;
        let src = "{% set on = values.n > 1 %}\n{% if on %}\na: 1\n{% endif %}\n\
                   {% for i in [1] %}{% set on = false %}{% endfor %}\n{% if on %}\nb: 1\n{% endif %}";
        assert_eq!(
            live(src, serde_json::json!({"n": 2})),
            vec![Ran, Ran, Ran, Ran, Ran, Ran, Unknown, Ran]
        );
    }

    #[test]
    fn a_key_before_an_inline_block_is_outside_it() {
        use Run::*;
        let src = "a: \"{% for p in values.l %}{{ p }}{% endfor %}\"\n{% if values.on %}\n  b: 1{% endif %}\nc: 1";
        assert_eq!(
            live(src, serde_json::json!({"l": [1], "on": false})),
            vec![Ran, Ran, Skipped, Ran]
        );
        let c = Control::scan("{% for k, v in values.m.items() if v %}\nx: 1\n{% endfor %}");
        assert_eq!(
            c.loops_around(2),
            vec![(&["k".to_string(), "v".to_string()][..], "values.m.items()")]
        );
        assert!(c.loops_around(1).is_empty());
    }

    #[test]
    fn comments_raw_and_strings_do_not_open_blocks() {
        use Run::*;
        let src = "{# {% if x %} #}\n{% raw %}{% for %}{% endraw %}\n{% if values.on == \"%}\" %}\na: 1\n{% endif %}\nb: 1";
        assert_eq!(
            live(src, serde_json::json!({"on": "%}"})),
            vec![Ran, Ran, Ran, Ran, Ran, Ran]
        );
    }
}
