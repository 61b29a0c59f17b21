//! A fast reader for the YAML that templates actually emit, with serde-saphyr as the authority.
//!
//! Rendering a large repository is mostly parsing the rendered text back into objects, and a
//! general YAML parser spends ~150 instructions a byte on it. This reader handles the common
//! subset — block mappings and sequences, compact `- key: v` items, flow (JSON-like)
//! collections, one-line plain / single- / double-quoted scalars, and `|` / `|-` literal block
//! scalars — in one pass over the bytes.
//!
//! It never guesses. Whatever is outside that subset, or could read differently under YAML 1.1
//! (anchors, tags, `yes`/`on`, hex and octal-looking numbers, multi-line plain scalars,
//! duplicate keys, tabs, CR line ends, odd indentation...), makes it answer `None`, and the
//! caller parses the whole stream with serde-saphyr, which also produces every positioned
//! error. So for any text, the result is either exactly serde-saphyr's or `None`; the
//! differential tests below and in `tests/it/render.rs` hold it to that.

use serde_json::{Map, Number, Value};

/// Parse a YAML stream into its non-null documents, or `None` when the text is outside the
/// subset this reader is sure about (the caller then uses serde-saphyr).
pub fn parse_stream(text: &str) -> Option<Vec<Value>> {
    parse(text, None)
}

/// 1-based start lines of sequence items, by JSON pointer (`/patches/3`, `/patches/3/ops/0`),
/// for the items no deeper than the depth asked for: the lines serde-saphyr's `Spanned`
/// reports for the same items (overlay loading fills one from `Spanned` when this reader declines).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ItemLines(pub std::collections::HashMap<String, usize>);

impl ItemLines {
    pub fn get(&self, pointer: &str) -> Option<usize> {
        self.0.get(pointer).copied()
    }
}

/// Parse a single-document YAML text (an empty text is `null`) and record where the sequence
/// items whose pointer has at most `max_depth` segments start; `None` as for [`parse_stream`].
pub fn parse_document_with_lines(text: &str, max_depth: usize) -> Option<(Value, ItemLines)> {
    let mut rec = Recorder {
        max_depth,
        ..Recorder::default()
    };
    let mut docs = parse(text, Some(&mut rec))?;
    let v = match docs.len() {
        0 => Value::Null,
        1 => docs.remove(0),
        _ => return None,
    };
    Some((v, ItemLines(rec.lines)))
}

#[derive(Default)]
struct Recorder {
    max_depth: usize,
    path: Vec<String>,
    lines: std::collections::HashMap<String, usize>,
    counted_to: usize,
    line: usize,
}

impl Recorder {
    fn pointer(&self) -> String {
        let mut p = String::new();
        for seg in &self.path {
            p.push('/');
            p.push_str(&seg.replace('~', "~0").replace('/', "~1"));
        }
        p
    }
}

fn parse(text: &str, rec: Option<&mut Recorder>) -> Option<Vec<Value>> {
    if !plain_characters(text) {
        return None;
    }
    let mut p = Reader {
        s: text.as_bytes(),
        src: text,
        pos: 0,
        depth: 0,
        rec,
    };
    let mut docs = Vec::new();
    loop {
        let ind = p.next_content_line()?;
        if ind == END {
            if p.pos >= p.s.len() {
                return Some(docs);
            }
            // A `---` line: only a comment may follow it on the line.
            if p.s[p.pos] != b'-' {
                return None; // `...`
            }
            p.pos += 3;
            p.finish_line()?;
            continue;
        }
        p.pos += ind as usize;
        let v = p.node_at(ind as usize, -1)?;
        if p.next_content_line()? != END {
            return None;
        }
        if !v.is_null() {
            docs.push(v);
        }
    }
}

/// No control characters (YAML forbids most; CR and tabs change meaning), no BOM.
fn plain_characters(text: &str) -> bool {
    let bytes = text.as_bytes();
    if bytes
        .iter()
        .any(|&b| (b < 0x20 && b != b'\n' && b != b'\t') || b == 0x7f)
    {
        return false;
    }
    if bytes.is_ascii() {
        return true;
    }
    !text.chars().any(|c| {
        ('\u{80}'..='\u{9f}').contains(&c) || matches!(c, '\u{feff}' | '\u{fffe}' | '\u{ffff}')
    })
}

/// Indent value for "no more content here": end of text or a document marker line.
const END: i64 = -1;
const MAX_DEPTH: usize = 128;
/// YAML's limit for implicit keys.
const MAX_KEY: usize = 1024;

struct Reader<'a, 'r> {
    s: &'a [u8],
    src: &'a str,
    pos: usize,
    depth: usize,
    rec: Option<&'r mut Recorder>,
}

impl<'a> Reader<'a, '_> {
    /// Whether paths are being tracked at the current depth.
    fn tracking(&self) -> bool {
        self.rec
            .as_ref()
            .is_some_and(|r| r.path.len() < r.max_depth)
    }

    /// Enter item/key `seg`; for an item, record its start line (at `pos`).
    fn push(&mut self, seg: String, item: bool) {
        let pos = self.pos;
        let s = self.s;
        if let Some(r) = self.rec.as_deref_mut() {
            r.path.push(seg);
            if item {
                r.line += s[r.counted_to..pos].iter().filter(|&&b| b == b'\n').count();
                r.counted_to = pos;
                let ptr = r.pointer();
                r.lines.insert(ptr, r.line + 1);
            }
        }
    }

    fn pop(&mut self) {
        if let Some(r) = self.rec.as_deref_mut() {
            r.path.pop();
        }
    }

    fn peek(&self) -> Option<u8> {
        self.s.get(self.pos).copied()
    }

    fn at(&self, i: usize) -> Option<u8> {
        self.s.get(i).copied()
    }

    /// From the start of a line: skip blank and comment-only lines; leave `pos` at the start
    /// of the next content line and return its indent, or [`END`] at the end of the text or
    /// at a `---` / `...` line (with `pos` at that line).
    fn next_content_line(&mut self) -> Option<i64> {
        loop {
            let start = self.pos;
            if start >= self.s.len() {
                return Some(END);
            }
            let mut i = start;
            while self.at(i) == Some(b' ') {
                i += 1;
            }
            match self.at(i) {
                None => {
                    self.pos = i;
                    return Some(END);
                }
                Some(b'\n') => self.pos = i + 1,
                Some(b'\t') => return None,
                Some(b'#') => self.skip_to_next_line(i),
                Some(_) => {
                    if i == start && self.is_marker(start) {
                        return Some(END);
                    }
                    self.pos = start;
                    return Some((i - start) as i64);
                }
            }
        }
    }

    fn is_marker(&self, i: usize) -> bool {
        let m = &self.s[i..];
        (m.starts_with(b"---") || m.starts_with(b"..."))
            && matches!(m.get(3), None | Some(b' ') | Some(b'\n'))
    }

    fn skip_to_next_line(&mut self, from: usize) {
        self.pos = match self.s[from..].iter().position(|&b| b == b'\n') {
            Some(i) => from + i + 1,
            None => self.s.len(),
        };
    }

    /// After a value on a line: only spaces and a comment may follow; move to the next line.
    fn finish_line(&mut self) -> Option<()> {
        let mut i = self.pos;
        let mut spaced = i == 0 || matches!(self.s[i - 1], b' ' | b'\n');
        loop {
            match self.at(i) {
                None => {
                    self.pos = i;
                    return Some(());
                }
                Some(b'\n') => {
                    self.pos = i + 1;
                    return Some(());
                }
                Some(b' ') => {
                    spaced = true;
                    i += 1;
                }
                Some(b'#') if spaced => {
                    self.skip_to_next_line(i);
                    return Some(());
                }
                Some(_) => return None,
            }
        }
    }

    fn skip_spaces(&mut self) -> Option<usize> {
        let start = self.pos;
        while let Some(b) = self.peek() {
            match b {
                b' ' => self.pos += 1,
                b'\t' => return None,
                _ => break,
            }
        }
        Some(self.pos - start)
    }

    fn dash_item(&self, i: usize) -> bool {
        self.at(i) == Some(b'-') && matches!(self.at(i + 1), None | Some(b' ') | Some(b'\n'))
    }

    fn enter(&mut self) -> Option<()> {
        self.depth += 1;
        (self.depth <= MAX_DEPTH).then_some(())
    }

    /// A node whose content starts at `pos`, column `col`, inside a block parent at `parent`.
    fn node_at(&mut self, col: usize, parent: i64) -> Option<Value> {
        self.enter()?;
        let v = if self.dash_item(self.pos) {
            self.block_seq(col)?
        } else if self.scan_key()?.is_some() {
            self.block_map(col, parent)?
        } else {
            self.inline_value(parent, false)?
        };
        self.depth -= 1;
        Some(v)
    }

    /// `key: value` lines at column `col`; ends at a line indented at most `parent`.
    fn block_map(&mut self, col: usize, parent: i64) -> Option<Value> {
        let mut map = Map::new();
        loop {
            let (key, after) = self.scan_key()??;
            self.pos = after;
            self.skip_spaces()?;
            let track = self.tracking();
            if track {
                self.push(key.clone(), false);
            }
            let v = self.map_value(col)?;
            if track {
                self.pop();
            }
            if map.insert(key, v).is_some() {
                return None; // a duplicate key: serde-saphyr decides
            }
            let ind = self.next_content_line()?;
            if ind == col as i64 {
                self.pos += col;
                continue;
            }
            if ind > col as i64 || ind > parent {
                return None;
            }
            return Some(Value::Object(map));
        }
    }

    /// The value after `key:` of a mapping at column `col`, with `pos` after the spaces.
    fn map_value(&mut self, col: usize) -> Option<Value> {
        match self.peek() {
            None | Some(b'\n') | Some(b'#') => {
                self.finish_line()?;
                let ind = self.next_content_line()?;
                if ind > col as i64 {
                    self.pos += ind as usize;
                    self.node_at(ind as usize, col as i64)
                } else if ind == col as i64 && self.dash_item(self.pos + col) {
                    // A sequence may sit at its key's indent.
                    self.pos += col;
                    self.enter()?;
                    let v = self.block_seq(col);
                    self.depth -= 1;
                    v
                } else {
                    Some(Value::Null)
                }
            }
            _ => self.inline_value(col as i64, true),
        }
    }

    /// `- item` lines with the dash at column `col`.
    fn block_seq(&mut self, col: usize) -> Option<Value> {
        let mut items = Vec::new();
        loop {
            self.pos += 1; // the dash
            let spaces = self.skip_spaces()?;
            let item = match self.peek() {
                None | Some(b'\n') | Some(b'#') => {
                    self.finish_line()?;
                    let ind = self.next_content_line()?;
                    if ind > col as i64 {
                        self.pos += ind as usize;
                        if self.tracking() && self.peek() == Some(b'|') {
                            return None; // a block scalar item, as below
                        }
                        self.seq_item(items.len(), |r| r.node_at(ind as usize, col as i64))?
                    } else if self.tracking() {
                        // An empty item has no node of its own to take a line from; where
                        // serde-saphyr places it is its business (found by fuzzing).
                        return None;
                    } else {
                        Value::Null
                    }
                }
                // serde-saphyr places a block scalar item at its text, not its `|` (found by
                // fuzzing): decline rather than record another line.
                Some(b'|') if self.tracking() => return None,
                _ => {
                    let c = col + 1 + spaces;
                    self.seq_item(items.len(), |r| r.node_at(c, col as i64))?
                }
            };
            items.push(item);
            let ind = self.next_content_line()?;
            if ind == col as i64 && self.dash_item(self.pos + col) {
                self.pos += col;
                continue;
            }
            if ind > col as i64 {
                return None;
            }
            return Some(Value::Array(items));
        }
    }

    /// Item `i` of a sequence, starting at `pos`, with its line recorded when tracking.
    fn seq_item(&mut self, i: usize, f: impl FnOnce(&mut Self) -> Option<Value>) -> Option<Value> {
        if !self.tracking() {
            return f(self);
        }
        self.push(i.to_string(), true);
        let v = f(self);
        self.pop();
        v
    }

    /// A value that starts on this line and is not a block collection: a flow collection, a
    /// quoted or plain scalar, or a literal block scalar. Consumes through the end of the line
    /// (and the block scalar's lines).
    fn inline_value(&mut self, parent: i64, in_map: bool) -> Option<Value> {
        let v = match self.peek()? {
            b'[' | b'{' => self.flow_node(parent)?,
            b'"' => Value::String(self.double_quoted()?),
            b'\'' => Value::String(self.single_quoted()?),
            b'|' => return self.literal(parent),
            b'-' if in_map && self.dash_item(self.pos) => return None,
            _ => {
                let s = self.block_plain()?;
                resolve_plain(s)?
            }
        };
        self.finish_line()?;
        Some(v)
    }

    /// If the content at `pos` is `key:` (followed by a space or the line end), the key and
    /// the position after the colon. `Some(None)`: not a key; `None`: outside the subset.
    #[allow(clippy::option_option)]
    fn scan_key(&self) -> Option<Option<(String, usize)>> {
        let start = self.pos;
        match self.peek()? {
            b'"' | b'\'' => {
                let mut r = Reader {
                    s: self.s,
                    src: self.src,
                    pos: start,
                    depth: self.depth,
                    rec: None,
                };
                let key = if self.s[start] == b'"' {
                    r.double_quoted()?
                } else {
                    r.single_quoted()?
                };
                r.skip_spaces()?;
                if r.peek() == Some(b':')
                    && matches!(r.at(r.pos + 1), None | Some(b' ') | Some(b'\n'))
                {
                    if r.pos - start > MAX_KEY {
                        return None;
                    }
                    return Some(Some((key, r.pos + 1)));
                }
                Some(None)
            }
            b'[' | b'{' | b'|' | b'>' | b'-' | b'#' => Some(None),
            b'&' | b'*' | b'!' | b'%' | b'@' | b'`' | b'?' | b':' | b',' | b']' | b'}' => None,
            _ => {
                let mut i = start;
                let mut prev = b' ';
                loop {
                    match self.at(i) {
                        None | Some(b'\n') => return Some(None),
                        Some(b'#') if prev == b' ' => return Some(None),
                        Some(b'\t') => return None,
                        Some(b':') if matches!(self.at(i + 1), None | Some(b' ') | Some(b'\n')) => {
                            let key = self.src[start..i].trim_end_matches(' ');
                            if key.is_empty() || i - start > MAX_KEY || key == "<<" {
                                return None;
                            }
                            return match resolve_plain(key)? {
                                Value::String(k) => Some(Some((k, i + 1))),
                                _ => None,
                            };
                        }
                        Some(b) => prev = b,
                    }
                    i += 1;
                }
            }
        }
    }

    /// A plain scalar that ends with its line (or a ` #` comment).
    fn block_plain(&mut self) -> Option<&'a str> {
        let start = self.pos;
        match self.s[start] {
            b'-' | b'?' | b':' => {
                if matches!(self.at(start + 1), None | Some(b' ') | Some(b'\n')) {
                    return None;
                }
            }
            b'&' | b'*' | b'!' | b'%' | b'@' | b'`' | b'>' | b'#' | b',' | b']' | b'}' => {
                return None;
            }
            _ => {}
        }
        let mut i = start;
        let mut prev = 0u8;
        loop {
            match self.at(i) {
                None | Some(b'\n') => break,
                Some(b'#') if prev == b' ' => break,
                Some(b'\t') => return None,
                Some(b':') if matches!(self.at(i + 1), None | Some(b' ') | Some(b'\n')) => {
                    return None;
                }
                Some(b) => prev = b,
            }
            i += 1;
        }
        self.pos = i;
        Some(self.src[start..i].trim_end_matches(' '))
    }

    fn double_quoted(&mut self) -> Option<String> {
        self.pos += 1;
        let mut out = String::new();
        loop {
            let start = self.pos;
            while let Some(b) = self.peek() {
                if b == b'"' || b == b'\\' || b == b'\n' {
                    break;
                }
                self.pos += 1;
            }
            out.push_str(&self.src[start..self.pos]);
            match self.peek()? {
                b'"' => {
                    self.pos += 1;
                    return Some(out);
                }
                b'\n' => return None,
                _ => {
                    let e = self.at(self.pos + 1)?;
                    self.pos += 2;
                    match e {
                        b'"' => out.push('"'),
                        b'\\' => out.push('\\'),
                        b'/' => out.push('/'),
                        b'n' => out.push('\n'),
                        b't' => out.push('\t'),
                        b'r' => out.push('\r'),
                        b'0' => out.push('\0'),
                        b'b' => out.push('\u{8}'),
                        b'f' => out.push('\u{c}'),
                        b' ' => out.push(' '),
                        b'x' => out.push(self.hex_escape(2)?),
                        b'u' => out.push(self.hex_escape(4)?),
                        b'U' => out.push(self.hex_escape(8)?),
                        _ => return None,
                    }
                }
            }
        }
    }

    fn hex_escape(&mut self, n: usize) -> Option<char> {
        let digits = self.src.get(self.pos..self.pos + n)?;
        if !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        self.pos += n;
        char::from_u32(u32::from_str_radix(digits, 16).ok()?)
    }

    fn single_quoted(&mut self) -> Option<String> {
        self.pos += 1;
        let mut out = String::new();
        loop {
            let start = self.pos;
            while let Some(b) = self.peek() {
                if b == b'\'' || b == b'\n' {
                    break;
                }
                self.pos += 1;
            }
            out.push_str(&self.src[start..self.pos]);
            match self.peek()? {
                b'\'' if self.at(self.pos + 1) == Some(b'\'') => {
                    out.push('\'');
                    self.pos += 2;
                }
                b'\'' => {
                    self.pos += 1;
                    return Some(out);
                }
                _ => return None,
            }
        }
    }

    /// `|` or `|-` (clip or strip) whose owner sits at column `parent`.
    fn literal(&mut self, parent: i64) -> Option<Value> {
        if parent < 0 {
            return None;
        }
        self.pos += 1;
        let strip = match self.peek() {
            Some(b'-') => {
                self.pos += 1;
                true
            }
            Some(b' ') | Some(b'\n') | None => false,
            _ => return None, // `|+`, indentation indicators
        };
        self.finish_line()?;
        // The content indent comes from the first non-empty line.
        let mut i = self.pos;
        let mut leading_blank_max = 0;
        let indent = loop {
            let mut j = i;
            while self.at(j) == Some(b' ') {
                j += 1;
            }
            match self.at(j) {
                Some(b'\n') => {
                    leading_blank_max = leading_blank_max.max(j - i);
                    i = j + 1;
                }
                None | Some(b'\t') => return None,
                Some(_) => break j - i,
            }
        };
        if (indent as i64) <= parent || leading_blank_max > indent {
            return None;
        }
        let mut text = String::new();
        let mut pending_newlines = 0usize;
        let mut line = self.pos;
        let mut any = false;
        loop {
            let mut j = line;
            while j < line + indent && self.at(j) == Some(b' ') {
                j += 1;
            }
            match self.at(j) {
                // The end of the text (after spaces no deeper than the indent).
                None => break,
                Some(b'\n') => {
                    pending_newlines += 1;
                    line = j + 1;
                    continue;
                }
                Some(_) if j - line < indent => {
                    // A less indented line ends the scalar; it must be whitespace-free at its
                    // start (a tab here is not something we classify).
                    if self.s[line..j].contains(&b'\t') || self.at(j) == Some(b'\t') {
                        return None;
                    }
                    break;
                }
                Some(_) => {
                    // The last line may lack its newline (minijinja drops the final one);
                    // serde-saphyr reads it as if it were there.
                    let end = match self.s[j..].iter().position(|&b| b == b'\n') {
                        Some(k) => j + k,
                        None => self.s.len(),
                    };
                    let content = &self.src[j..end];
                    if content.bytes().all(|b| b == b' ' || b == b'\t') {
                        return None; // a whitespace-only line deeper than the indent
                    }
                    if any {
                        pending_newlines += 1;
                    }
                    for _ in 0..pending_newlines {
                        text.push('\n');
                    }
                    pending_newlines = 0;
                    text.push_str(content);
                    any = true;
                    line = (end + 1).min(self.s.len());
                }
            }
        }
        if !any {
            return None;
        }
        if !strip {
            text.push('\n');
        }
        self.pos = line;
        Some(Value::String(text))
    }

    // ---- flow collections -------------------------------------------------------------

    /// Skip spaces, line breaks and comments inside a flow collection whose block owner is
    /// at `parent`; continuation lines must be indented deeper than it.
    fn flow_ws(&mut self, parent: i64) -> Option<()> {
        let mut spaced = false;
        loop {
            match self.peek()? {
                b' ' => {
                    self.pos += 1;
                    spaced = true;
                }
                b'\n' => {
                    self.pos += 1;
                    let start = self.pos;
                    if self.is_marker_at(start) {
                        return None;
                    }
                    while self.peek() == Some(b' ') {
                        self.pos += 1;
                    }
                    let ind = (self.pos - start) as i64;
                    match self.peek() {
                        Some(b'\n') | Some(b'#') => {}
                        _ if ind <= parent => return None,
                        _ => {}
                    }
                    spaced = true;
                }
                b'#' if spaced => self.skip_to_next_line_keep_newline(),
                b'\t' => return None,
                _ => return Some(()),
            }
        }
    }

    fn is_marker_at(&self, i: usize) -> bool {
        i < self.s.len() && self.is_marker(i)
    }

    fn skip_to_next_line_keep_newline(&mut self) {
        self.pos = match self.s[self.pos..].iter().position(|&b| b == b'\n') {
            Some(i) => self.pos + i,
            None => self.s.len(),
        };
    }

    fn flow_node(&mut self, parent: i64) -> Option<Value> {
        self.enter()?;
        let v = match self.peek()? {
            b'{' => self.flow_map(parent)?,
            b'[' => self.flow_seq(parent)?,
            b'"' => Value::String(self.double_quoted()?),
            b'\'' => Value::String(self.single_quoted()?),
            _ => resolve_plain(self.flow_plain()?)?,
        };
        self.depth -= 1;
        Some(v)
    }

    /// Past the opening bracket of a flow collection closed by `close`: `true` when it is empty
    /// (and consumed).
    fn flow_open(&mut self, parent: i64, close: u8) -> Option<bool> {
        self.pos += 1;
        self.flow_ws(parent)?;
        if self.peek()? == close {
            self.pos += 1;
            return Some(true);
        }
        Some(false)
    }

    fn flow_map(&mut self, parent: i64) -> Option<Value> {
        let mut map = Map::new();
        if self.flow_open(parent, b'}')? {
            return Some(Value::Object(map));
        }
        loop {
            let quoted = matches!(self.peek()?, b'"' | b'\'');
            let key = match self.peek()? {
                b'"' => self.double_quoted()?,
                b'\'' => self.single_quoted()?,
                b'{' | b'[' => return None,
                _ => match resolve_plain(self.flow_plain()?)? {
                    Value::String(k) if k != "<<" => k,
                    _ => return None,
                },
            };
            self.flow_ws(parent)?;
            if self.peek()? != b':' {
                return None; // `{a, b}`: keys without values
            }
            self.pos += 1;
            if !quoted && !matches!(self.peek()?, b' ' | b'\n') {
                return None;
            }
            self.flow_ws(parent)?;
            if matches!(self.peek()?, b',' | b'}') {
                return None;
            }
            let track = self.tracking();
            if track {
                self.push(key.clone(), false);
            }
            let v = self.flow_node(parent)?;
            if track {
                self.pop();
            }
            if map.insert(key, v).is_some() {
                return None;
            }
            if self.flow_entry_end(parent, b'}')? {
                return Some(Value::Object(map));
            }
        }
    }

    /// After an entry of a flow collection closed by `close`: `true` when the collection ends
    /// (a trailing comma allowed), `false` when another entry follows a comma.
    fn flow_entry_end(&mut self, parent: i64, close: u8) -> Option<bool> {
        self.flow_ws(parent)?;
        let b = self.peek()?;
        if b == b',' {
            self.pos += 1;
            self.flow_ws(parent)?;
            if self.peek()? != close {
                return Some(false);
            }
        } else if b != close {
            return None; // includes `[a: b]`
        }
        self.pos += 1;
        Some(true)
    }

    fn flow_seq(&mut self, parent: i64) -> Option<Value> {
        let mut items = Vec::new();
        if self.flow_open(parent, b']')? {
            return Some(Value::Array(items));
        }
        loop {
            if matches!(self.peek()?, b',' | b']') {
                return None;
            }
            let item = self.seq_item(items.len(), |r| r.flow_node(parent))?;
            items.push(item);
            if self.flow_entry_end(parent, b']')? {
                return Some(Value::Array(items));
            }
        }
    }

    /// A plain scalar inside a flow collection: ends at `,[]{}`, `: `, ` #` or the line end.
    fn flow_plain(&mut self) -> Option<&'a str> {
        let start = self.pos;
        match self.peek()? {
            b'-' | b'?' | b':' => {
                if matches!(self.at(start + 1), None | Some(b' ') | Some(b'\n')) {
                    return None;
                }
            }
            b'&' | b'*' | b'!' | b'%' | b'@' | b'`' | b'|' | b'>' | b'#' | b',' | b']' | b'}' => {
                return None;
            }
            _ => {}
        }
        let mut i = start;
        let mut prev = 0u8;
        loop {
            match self.at(i) {
                None | Some(b'\n') | Some(b',') | Some(b'[') | Some(b']') | Some(b'{')
                | Some(b'}') => break,
                Some(b'#') if prev == b' ' => break,
                Some(b'\t') => return None,
                Some(b':')
                    if matches!(
                        self.at(i + 1),
                        None | Some(b' ')
                            | Some(b'\n')
                            | Some(b',')
                            | Some(b'[')
                            | Some(b']')
                            | Some(b'{')
                            | Some(b'}')
                    ) =>
                {
                    break;
                }
                Some(b) => prev = b,
            }
            i += 1;
        }
        self.pos = i;
        let s = self.src[start..i].trim_end_matches(' ');
        (!s.is_empty()).then_some(s)
    }
}

/// The value of a plain scalar, when it is certain: strings, `null`/`~`, `true`/`false`,
/// decimal integers, `0644`-style octal (kubectl's YAML 1.1 reading) and simple decimals.
/// Anything a YAML 1.1 or 1.2 reader could take for another type is `None`.
fn resolve_plain(s: &str) -> Option<Value> {
    match s {
        "" | "~" | "null" | "Null" | "NULL" => return Some(Value::Null),
        "true" | "True" | "TRUE" => return Some(Value::Bool(true)),
        "false" | "False" | "FALSE" => return Some(Value::Bool(false)),
        "y" | "Y" | "yes" | "Yes" | "YES" | "n" | "N" | "no" | "No" | "NO" | "on" | "On" | "ON"
        | "off" | "Off" | "OFF" | "=" | "-0" => return None,
        _ => {}
    }
    let b = s.as_bytes();
    // Other spellings of those words (`faLse`, `nUll`) are strings to YAML 1.1 and 1.2, but
    // serde-saphyr reads them case-insensitively (found by fuzzing): its call.
    if b.len() <= 5
        && matches!(
            s.to_ascii_lowercase().as_str(),
            "true" | "false" | "null" | "yes" | "no" | "on" | "off"
        )
    {
        return None;
    }
    if matches!(b[0], b'i' | b'I' | b'n' | b'N' | b'+' | b'-' | b'.') {
        let lower = s.to_ascii_lowercase();
        let unsigned = lower.trim_start_matches(['+', '-', '.']);
        if matches!(unsigned, "inf" | "infinity" | "nan") {
            return None;
        }
    }
    if !matches!(b[0], b'0'..=b'9' | b'+' | b'-' | b'.') {
        return Some(Value::String(s.to_string()));
    }
    let (neg, digits) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s),
    };
    let all_digits = |t: &str| !t.is_empty() && t.bytes().all(|c| c.is_ascii_digit());
    if all_digits(digits) {
        if digits.len() > 1 && digits.starts_with('0') {
            // `0644`: octal the way kubectl (YAML 1.1) reads it.
            if neg || !digits.bytes().all(|c| (b'0'..=b'7').contains(&c)) {
                return None;
            }
            return i64::from_str_radix(&digits[1..], 8)
                .ok()
                .map(|n| Value::Number(n.into()));
        }
        return s.parse::<i64>().ok().map(|n| Value::Number(n.into()));
    }
    if let Some((int, frac)) = digits.split_once('.')
        && all_digits(int)
        && all_digits(frac)
        && (int == "0" || !int.starts_with('0'))
    {
        let f: f64 = s.parse().ok()?;
        return Number::from_f64(f).map(Value::Number);
    }
    let unsigned = digits.strip_prefix('+').unwrap_or(digits).as_bytes();
    if unsigned.len() > 1
        && unsigned[0] == b'0'
        && matches!(unsigned[1], b'x' | b'X' | b'o' | b'O' | b'b' | b'B')
    {
        return None; // hex, 0o-octal, binary
    }
    if b.len() > 1 && !b.iter().any(u8::is_ascii_digit) && !b.contains(&b'.') {
        return Some(Value::String(s.to_string())); // `--`: no number has no digit
    }
    if b.iter().filter(|&&c| c == b'.').count() >= 2
        && b.iter().all(|&c| c == b'.' || c.is_ascii_digit())
    {
        return Some(Value::String(s.to_string())); // `10.0.0.1`
    }
    if b.iter().all(|c| b"0123456789+-._eE:".contains(c)) || b[0] == b'.' || b[0] == b'+' {
        return None;
    }
    if (b[0] == b'-') && b.get(1) == Some(&b'.') {
        return None;
    }
    Some(Value::String(s.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn saphyr(text: &str) -> Result<Vec<Value>, String> {
        serde_saphyr::from_multiple_with_options::<Value>(text, crate::chart::yaml::options())
            .map(|d| d.into_iter().filter(|v| !v.is_null()).collect())
            .map_err(|e| e.to_string())
    }

    /// The fast reader either agrees with serde-saphyr or declines.
    fn agrees(text: &str) -> bool {
        match parse_stream(text) {
            None => false,
            Some(fast) => {
                let slow = saphyr(text);
                assert_eq!(
                    Ok(fast.clone()),
                    slow,
                    "fast reader accepted text serde-saphyr reads differently:\n{text}"
                );
                true
            }
        }
    }

    #[test]
    fn scalars_agree_with_serde_saphyr_or_are_declined() {
        let scalars = [
            "a",
            "abc def",
            "1",
            "0",
            "-5",
            "42",
            "0644",
            "0755",
            "08",
            "0x1F",
            "0o17",
            "1.5",
            "-1.5",
            "0.25",
            "1.",
            ".5",
            "1e3",
            "1E3",
            "1_000",
            "1:30",
            "10.0.0.1",
            "1.2.3",
            "1Gi",
            "512Mi",
            "100m",
            "3s",
            "v1",
            "apps/v1",
            "true",
            "True",
            "TRUE",
            "false",
            "yes",
            "no",
            "on",
            "off",
            "y",
            "n",
            "null",
            "Null",
            "~",
            ".inf",
            "-.inf",
            ".nan",
            "inf",
            "nan",
            "Infinity",
            "-0",
            "-0.0",
            "+1",
            "+1.5",
            "2001-12-14",
            "-foo",
            "-1Gi",
            "http://x:80/y",
            "a:b",
            "x#y",
            "99999999999999999999",
            "-9223372036854775808",
            "9223372036854775807",
            "18446744073709551615",
            "=",
            "<<",
            "a b c",
            "12h30m",
            "0.0.0.0",
            "1.0",
            "00",
            "-08",
            "0b101",
            "1e-3",
            "-",
            "--",
            "---x",
            "foo-",
            "Ñandú",
        ];
        let mut declined = Vec::new();
        for s in scalars {
            for text in [
                format!("k: {s}\n"),
                format!("- {s}\n"),
                format!("{{k: {s}}}\n"),
            ] {
                if !agrees(&text) {
                    declined.push(text);
                }
            }
        }
        // The common Kubernetes shapes must take the fast path.
        for s in [
            "a", "1", "0644", "1.5", "1Gi", "100m", "true", "null", "apps/v1", "a:b",
        ] {
            assert!(agrees(&format!("k: {s}\n")), "{s} declined");
        }
        // What is declined is exactly what could be a number, a YAML 1.1 boolean or special.
        for d in &declined {
            assert!(
                !d.contains("Gi") && !d.contains("apps/v1") && !d.contains("abc"),
                "declined a plain string: {d}"
            );
        }
    }

    #[test]
    fn kubernetes_manifest_shapes_take_the_fast_path() {
        let text = r#"# leading comment
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web   # trailing comment
  labels: {app: web, "tier": 'front'}
  annotations:
    note: "tab\there \"q\" \u00e9"
    other: 'it''s'
spec:
  replicas: 2
  template:
    spec:
      containers:
      - name: main
        image: registry.example/web:v1
        args: ["--port=80", --verbose]
        env:
          - name: A
            value: "1"
          -
            name: B
        command:
        - sh
        - -c
        - |
          echo hello
            indented
          
          done
        ports: []
      volumes:
      - {name: v, emptyDir: {}}
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: c
data:
  strip: |-
    one
    two
  empty:
  key with spaces: value
---
{
  "apiVersion": "v1",
  "kind": "Service",
  "metadata": {"name": "s", "labels": {"a": "b"}},
  "spec": {"ports": [{"port": 80, "targetPort": 8080}], "x": 1.5, "y": null, "z": true}
}
...
"#;
        // `...` is outside the subset: declined as a whole.
        assert!(parse_stream(text).is_none());
        let text = text.replace("\n...\n", "\n");
        assert!(agrees(&text));
        let docs = parse_stream(&text).unwrap();
        assert_eq!(docs.len(), 3);
        assert_eq!(
            docs[0].pointer("/spec/template/spec/containers/0/command/2"),
            Some(&json!("echo hello\n  indented\n\ndone\n"))
        );
        assert_eq!(docs[1].pointer("/data/strip"), Some(&json!("one\ntwo")));
        assert_eq!(docs[1].pointer("/data/empty"), Some(&Value::Null));
    }

    #[test]
    fn uncertain_constructs_are_declined() {
        for text in [
            "a: &x 1\nb: *x\n",
            "a: !!str 1\n",
            "a: b\na: c\n",
            "a:\n\tb: 1\n",
            "a: 1\r\nb: 2\r\n",
            "a: >\n  folded\n",
            "a: |+\n  keep\n\n",
            "a: |2\n   x\n",
            "a: multi\n  line\n",
            "a: \"multi\n  line\"\n",
            "? complex\n: key\n",
            "<<: {a: 1}\n",
            "%YAML 1.2\n---\na: 1\n",
            "a: 1\n b: 2\n",
            "- a\n  - b\n",
            "a: b: c\n",
            "1: one\n",
            "a: yes\n",
            "[a: b]\n",
            "{a, b}\n",
        ] {
            assert_eq!(parse_stream(text), None, "should decline: {text:?}");
        }
    }

    #[test]
    fn deep_nesting_is_declined_not_overflowed() {
        let text = "[".repeat(10_000) + &"]".repeat(10_000);
        assert_eq!(parse_stream(&text), None);
        let mut block = String::new();
        for i in 0..2000 {
            block.push_str(&" ".repeat(i));
            block.push_str("a:\n");
        }
        assert_eq!(parse_stream(&block), None);
    }

    #[test]
    fn item_lines_match_serde_saphyr_spans() {
        #[derive(serde::Deserialize)]
        struct Doc {
            patches: Vec<serde_saphyr::Spanned<Patch>>,
        }
        #[derive(serde::Deserialize)]
        struct Patch {
            ops: Vec<serde_saphyr::Spanned<serde::de::IgnoredAny>>,
        }
        for text in [
            "patches:\n- target: {kind: A}\n  ops:\n  - op: add\n  -\n    op: remove\n# c\n- ops: [{op: a},\n    {op: b}]\n",
            "{\n \"patches\": [\n  {\n   \"ops\": [\n    {\"op\": \"a\"},\n    {\"op\": \"b\"}\n   ]\n  },\n  {\"ops\": []}\n ]\n}\n",
            "patches:\n  - ops:\n      - op: a\n\n      - op: b\n",
        ] {
            let (_, lines) = parse_document_with_lines(text, 4).expect(text);
            let doc: Doc = serde_saphyr::from_str(text).unwrap();
            for (pi, p) in doc.patches.iter().enumerate() {
                assert_eq!(
                    lines.get(&format!("/patches/{pi}")),
                    Some(p.referenced.line() as usize),
                    "{text}"
                );
                for (oi, o) in p.value.ops.iter().enumerate() {
                    assert_eq!(
                        lines.get(&format!("/patches/{pi}/ops/{oi}")),
                        Some(o.referenced.line() as usize),
                        "{text}"
                    );
                }
            }
        }
    }

    #[test]
    fn odd_spellings_of_yaml_words_are_left_to_serde_saphyr() {
        // fuzz/fastyaml_differential: `faLse` is a string to YAML, `false` to serde-saphyr.
        for word in ["faLse", "tRue", "NuLL", "yEs", "nO", "oFF", "oN"] {
            assert_eq!(parse_stream(&format!("k: {word}\n")), None, "{word}");
            assert_eq!(parse_stream(&format!("- {word}\n")), None, "{word}");
        }
        assert!(agrees("k: falsehood\n"));
    }

    #[test]
    fn block_scalar_items_are_not_given_a_line_of_our_own() {
        // fuzz/fastyaml_differential: we said line 1 (the `|`), serde-saphyr line 2.
        assert_eq!(parse_document_with_lines("   - |\n     text\n", 1), None);
        assert_eq!(parse_document_with_lines("- # c\n  |\n  text\n", 1), None);
        assert!(agrees("   - |\n     text\n"));
    }

    #[test]
    fn empty_items_are_not_given_a_line_of_our_own() {
        // fuzz/fastyaml_differential: the empty last item got no line, serde-saphyr says 5.
        let text = "-\n  name: Mark McGwire\n  hr:   65\n  avg:  0.278\n-\n";
        assert_eq!(parse_document_with_lines(text, 1), None);
        assert!(agrees(text), "without lines the fast reader still reads it");
    }

    #[test]
    fn empty_and_comment_only_documents_are_dropped() {
        assert_eq!(parse_stream("").unwrap(), Vec::<Value>::new());
        assert_eq!(
            parse_stream("---\n# c\n---\n").unwrap(),
            Vec::<Value>::new()
        );
        assert!(agrees("---\na: 1\n---\n\n---\nb: 2\n"));
        // minijinja drops a template's final newline; a literal block may end the text.
        assert!(agrees("a: |\n  x"));
        assert!(agrees("a: |-\n  x"));
        assert!(agrees("a: |\n  x\n  "));
        assert!(agrees("a: |\n  x\n\n  y\n\n"));
    }

    const SEEDS: &[&str] = &[
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: c\n  labels: {a: b, \"c\": 'd'}\ndata:\n  k: |\n    line one\n    line two\n  n: 0644\n",
        "- a: 1\n  b: [x, y]\n- - nested\n  - 2.5\n-\n  c: null\n# comment\n---\nk: \"q\\u00e9\"\n",
        "{\n  \"kind\": \"Service\",\n  \"spec\": {\"ports\": [{\"port\": 80}], \"x\": true}\n}\n",
        "a:\n- 1\n- two\nb:\n  c: |-\n    x\n\n    y\n  d: 'it''s'\n",
    ];
    const PIECES: &[&str] = &[
        " ", "  ", "\n", ":", ": ", "-", "- ", "#", " #", "\"", "'", "[", "]", "{", "}", ",", "|",
        "|-", ">", "a", "1", "0", ".", "\t", "&a ", "*a", "!!str ", "---\n", "...\n", "yes", "~",
        "\\", "? ", "<<",
    ];

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 512, ..Default::default() })]

        /// Random edits of valid YAML: whatever the fast reader accepts, serde-saphyr reads the
        /// same (and does not reject).
        #[test]
        fn edited_text_is_read_like_serde_saphyr_or_declined(
            seed in 0..SEEDS.len(),
            edits in proptest::collection::vec((0usize..400, 0usize..3, 0..PIECES.len(), 1usize..6), 1..5),
        ) {
            let mut t = SEEDS[seed].to_string();
            for (at, op, piece, len) in edits {
                let at = at % (t.len() + 1);
                match op {
                    0 => t.insert_str(at, PIECES[piece]),
                    1 => { let end = (at + len).min(t.len()); t.replace_range(at..end, ""); }
                    _ => { let end = (at + len).min(t.len()); t.replace_range(at..end, PIECES[piece]); }
                }
            }
            if let Some(fast) = parse_stream(&t) {
                proptest::prop_assert_eq!(Ok(fast), saphyr(&t), "text: {:?}", t);
            }
        }

        /// Values emitted as block YAML (serde-saphyr) and as JSON read back the same.
        #[test]
        fn emitted_values_read_back_the_same(v in arb_value()) {
            for text in [crate::chart::yaml::to_yaml_string(&v), serde_json::to_string_pretty(&v).unwrap() + "\n"] {
                if let Some(fast) = parse_stream(&text) {
                    proptest::prop_assert_eq!(Ok(fast), saphyr(&text), "text: {:?}", text);
                }
            }
        }
    }

    fn arb_value() -> impl proptest::strategy::Strategy<Value = Value> {
        use proptest::prelude::*;
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|n| json!(n)),
            (-1.0e6f64..1.0e6).prop_map(|f| json!(f)),
            "[ -~]{0,12}".prop_map(Value::String),
            "(yes|no|on|0644|1Gi|10\\.0\\.0\\.1|a: b|- x|#c|'q'|\"d\"|\\|)".prop_map(Value::String),
            "[a-z ]{0,5}\n[a-z ]{0,5}\n?".prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 48, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
                proptest::collection::btree_map("[a-z][a-z0-9 ./-]{0,8}", inner, 0..5)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }
}
