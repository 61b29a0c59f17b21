//! The daemon's reconcile history: the last N reconciles, one JSON line each in `<stateDir>/history.jsonl`.
//!
//! Flow: the daemon opens the file once ([`History::open`]: counts the lines, cuts a torn last line
//! left by a crash), then [`History::append`]s one [`Entry`] per reconcile (one `write` in append
//! mode, then `fdatasync`). When the file reaches twice the limit it is compacted to the newest
//! `limit` entries: written to a temporary file in the same directory, synced, renamed over the old
//! one. Readers ([`read`]) take the newest `limit` entries and skip a line that is not an entry with
//! a warning, so one bad line never hides the rest.
//!
//! Guarantees: the file holds between `limit` and `2 × limit` lines (a few hundred bytes each); the
//! daemon keeps no entries in memory, only the line count; a reader never sees a half-compacted file.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// File name inside the state directory.
pub const HISTORY_FILE: &str = "history.jsonl";
/// How many reconciles are kept when the configuration does not say.
pub const DEFAULT_LIMIT: usize = 100;
/// Group-readable, so members of the `pailot` group can read the history without the daemon.
const FILE_MODE: u32 = 0o640;

/// Why the history file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Opening, reading or writing the file failed.
    #[error("failed to {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// How a reconcile ended: the daemon's one vocabulary (`/status`, history, notifications).
pub use crate::daemon::status::Outcome;

/// How many objects of one chart each apply action touched.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(default, rename_all = "camelCase")]
pub struct ActionCounts {
    #[serde(skip_serializing_if = "is_zero")]
    pub created: u32,
    #[serde(skip_serializing_if = "is_zero")]
    pub configured: u32,
    #[serde(skip_serializing_if = "is_zero")]
    pub unchanged: u32,
    #[serde(skip_serializing_if = "is_zero")]
    pub deleted: u32,
    #[serde(skip_serializing_if = "is_zero")]
    pub skipped: u32,
    #[serde(skip_serializing_if = "is_zero")]
    pub failed: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl ActionCounts {
    /// Count one object under `action`.
    pub fn add(&mut self, action: crate::apply::Action) {
        use crate::apply::Action;
        let slot = match action {
            Action::Created => &mut self.created,
            Action::Configured => &mut self.configured,
            Action::Unchanged => &mut self.unchanged,
            Action::Deleted => &mut self.deleted,
            Action::Skipped => &mut self.skipped,
            Action::Failed => &mut self.failed,
        };
        *slot = slot.saturating_add(1);
    }

    /// Sum of every action.
    pub fn total(&self) -> u32 {
        self.created + self.configured + self.unchanged + self.deleted + self.skipped + self.failed
    }

    /// What changed, for people: `2 created, 1 configured` (`no changes` when nothing changed).
    pub fn summary(&self) -> String {
        let parts: Vec<String> = [
            (self.created, "created"),
            (self.configured, "configured"),
            (self.deleted, "deleted"),
            (self.failed, "failed"),
        ]
        .iter()
        .filter(|(n, _)| *n > 0)
        .map(|(n, w)| format!("{n} {w}"))
        .collect();
        if parts.is_empty() {
            "no changes".into()
        } else {
            parts.join(", ")
        }
    }
}

impl std::ops::AddAssign for ActionCounts {
    fn add_assign(&mut self, o: ActionCounts) {
        self.created += o.created;
        self.configured += o.configured;
        self.unchanged += o.unchanged;
        self.deleted += o.deleted;
        self.skipped += o.skipped;
        self.failed += o.failed;
    }
}

/// Per-chart action counts of an apply report (what an [`Entry`]'s `charts` holds).
pub fn chart_counts(report: &crate::apply::ApplyReport) -> BTreeMap<String, ActionCounts> {
    let mut charts: BTreeMap<String, ActionCounts> = BTreeMap::new();
    for o in &report.objects {
        charts.entry(o.chart.clone()).or_default().add(o.action);
    }
    charts
}

/// One reconcile, as the daemon records it. Holds no secret values: messages are the daemon's
/// one-line stage messages, which never carry them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Entry {
    /// Unix time (seconds) the reconcile started.
    pub started_at: u64,
    /// How long it took, in milliseconds.
    pub duration_ms: u64,
    /// What started it: `startup`, `watch`, `poll`, `webhook`, `drift`, `manual`, `resume`, `reload`, `retry`, `activated`.
    pub trigger: String,
    /// The commit reconciled (absent when the fetch failed before one was known).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
    /// The commit's subject line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// The commit's author (`Name <email>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author: Option<String>,
    pub result: Outcome,
    /// The failed stage (`fetch`, `verify`, `render`, `apply`, `wait`, `drift`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage: Option<String>,
    /// The failure's reason word (`api_unreachable`, `invalid_input`, ...), as in the metrics.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// One line on what failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Objects per chart and action.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub charts: BTreeMap<String, ActionCounts>,
    /// Drifted objects this reconcile put back.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub drift_corrections: u32,
}

impl Entry {
    /// Action counts over every chart.
    pub fn totals(&self) -> ActionCounts {
        let mut t = ActionCounts::default();
        for c in self.charts.values() {
            t += *c;
        }
        t
    }

    /// The entry narrowed to one chart, or `None` when the reconcile did not touch it.
    pub fn for_chart(&self, chart: &str) -> Option<Entry> {
        let counts = self.charts.get(chart)?;
        let mut e = self.clone();
        e.charts = BTreeMap::from([(chart.to_string(), *counts)]);
        Some(e)
    }
}

/// The writer the daemon keeps open: where the file is, how many entries to keep, how many lines it has.
#[derive(Debug)]
pub struct History {
    path: PathBuf,
    limit: usize,
    lines: usize,
}

impl History {
    /// Open (or create) `<state_dir>/history.jsonl`. A last line without its newline (a crash during
    /// an append) is cut off; lines that are not entries stay (readers skip them) and are reported.
    pub fn open(state_dir: &Path, limit: usize) -> Result<(History, Vec<String>), Error> {
        let path = state_dir.join(HISTORY_FILE);
        let io = |action, source| Error::Io {
            action,
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(state_dir).map_err(|e| io("create the directory of", e))?;
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| io("open", e))?;
        file.set_permissions(std::fs::Permissions::from_mode(FILE_MODE))
            .map_err(|e| io("set the mode of", e))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).map_err(|e| io("read", e))?;
        let mut warnings = Vec::new();
        let complete = match bytes.iter().rposition(|&b| b == b'\n') {
            Some(i) => i + 1,
            None => 0,
        };
        if complete < bytes.len() {
            file.set_len(complete as u64)
                .map_err(|e| io("truncate", e))?;
            warnings.push(format!(
                "{}: cut an unfinished last line ({} bytes; the daemon stopped while writing it)",
                path.display(),
                bytes.len() - complete
            ));
        }
        let (_, skipped) = parse_lines(&path, &bytes[..complete], usize::MAX);
        warnings.extend(skipped);
        let lines = bytes[..complete].iter().filter(|&&b| b == b'\n').count();
        Ok((
            History {
                path,
                limit: limit.max(1),
                lines,
            },
            warnings,
        ))
    }

    /// Where the file is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Record one reconcile; compacts the file when it holds twice the limit.
    pub fn append(&mut self, entry: &Entry) -> Result<(), Error> {
        let mut line = serde_json::to_vec(entry).expect("history entry serializes");
        line.push(b'\n');
        let io = |action, source| Error::Io {
            action,
            path: self.path.clone(),
            source,
        };
        let mut file = OpenOptions::new()
            .append(true)
            .create(true)
            .open(&self.path)
            .map_err(|e| io("open", e))?;
        if self.lines == 0 {
            file.set_permissions(std::fs::Permissions::from_mode(FILE_MODE))
                .map_err(|e| io("set the mode of", e))?;
        }
        // One write call: a reader sees the whole line or none of it.
        file.write_all(&line).map_err(|e| io("append to", e))?;
        file.sync_data().map_err(|e| io("sync", e))?;
        self.lines += 1;
        if self.lines >= 2 * self.limit {
            self.compact()?;
        }
        Ok(())
    }

    /// Rewrite the file with only the newest `limit` lines that are entries, atomically.
    pub fn compact(&mut self) -> Result<(), Error> {
        let io = |action, source| Error::Io {
            action,
            path: self.path.clone(),
            source,
        };
        let bytes = std::fs::read(&self.path).map_err(|e| io("read", e))?;
        let (entries, _) = parse_lines(&self.path, &bytes, self.limit);
        let mut text = Vec::new();
        for (_, raw) in &entries {
            text.extend_from_slice(raw);
            text.push(b'\n');
        }
        crate::atomic_file::write(&self.path, &text, FILE_MODE)
            .map_err(|e| io(e.action, e.source))?;
        self.lines = entries.len();
        Ok(())
    }
}

/// What a reader got: the newest entries (oldest first) and a warning per skipped line.
#[derive(Debug, Default)]
pub struct Loaded {
    pub entries: Vec<Entry>,
    pub warnings: Vec<String>,
}

/// Read the newest `limit` entries of `<state_dir>/history.jsonl` (oldest first). A missing file is
/// an empty history.
pub fn read(state_dir: &Path, limit: usize) -> Result<Loaded, Error> {
    let path = state_dir.join(HISTORY_FILE);
    let file = match File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Loaded::default()),
        Err(source) => {
            return Err(Error::Io {
                action: "open",
                path,
                source,
            });
        }
    };
    let mut bytes = Vec::new();
    BufReader::new(file)
        .read_to_end(&mut bytes)
        .map_err(|source| Error::Io {
            action: "read",
            path: path.clone(),
            source,
        })?;
    // A line still being appended has no newline yet: not an entry, and not worth a warning.
    let complete = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    let (entries, warnings) = parse_lines(&path, &bytes[..complete], limit);
    Ok(Loaded {
        entries: entries.into_iter().map(|(e, _)| e).collect(),
        warnings,
    })
}

/// The newest `limit` entries of `bytes` (oldest first, each with its raw line), and a warning for
/// each line that is not an entry.
fn parse_lines<'a>(
    path: &Path,
    bytes: &'a [u8],
    limit: usize,
) -> (Vec<(Entry, &'a [u8])>, Vec<String>) {
    let mut entries = Vec::new();
    let mut warnings = Vec::new();
    for (i, raw) in bytes.split(|&b| b == b'\n').enumerate() {
        if raw.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        match serde_json::from_slice::<Entry>(raw) {
            Ok(e) => entries.push((e, raw)),
            Err(err) => warnings.push(format!(
                "{} line {}: not a history entry ({err}); skipped",
                path.display(),
                i + 1
            )),
        }
    }
    let skip = entries.len().saturating_sub(limit);
    (entries.split_off(skip), warnings)
}

/// Count the lines of a history file (tests and diagnostics).
pub fn count_lines(path: &Path) -> std::io::Result<usize> {
    Ok(BufReader::new(File::open(path)?).lines().count())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(n: u64) -> Entry {
        Entry {
            started_at: 1_800_000_000 + n,
            duration_ms: 1200,
            trigger: "watch".into(),
            revision: Some(format!("{n:040x}")),
            subject: Some(format!("change {n}")),
            author: Some("Ops <ops@example.com>".into()),
            result: Outcome::Success,
            stage: None,
            reason: None,
            message: None,
            charts: BTreeMap::from([(
                "grafana".to_string(),
                ActionCounts {
                    configured: 1,
                    unchanged: 3,
                    ..Default::default()
                },
            )]),
            drift_corrections: 0,
        }
    }

    #[test]
    fn keeps_the_newest_entries_across_reopen_and_compaction() {
        let dir = tempfile::tempdir().unwrap();
        let (mut h, w) = History::open(dir.path(), 5).unwrap();
        assert!(w.is_empty());
        for n in 0..9 {
            h.append(&entry(n)).unwrap();
        }
        // 10 lines would be 2 × 5: not yet compacted.
        assert_eq!(count_lines(h.path()).unwrap(), 9);
        h.append(&entry(9)).unwrap();
        assert_eq!(count_lines(h.path()).unwrap(), 5, "compacted to the limit");
        drop(h);
        let (mut h, w) = History::open(dir.path(), 5).unwrap();
        assert!(w.is_empty(), "{w:?}");
        h.append(&entry(10)).unwrap();
        let got = read(dir.path(), 5).unwrap();
        let starts: Vec<u64> = got
            .entries
            .iter()
            .map(|e| e.started_at - 1_800_000_000)
            .collect();
        assert_eq!(starts, vec![6, 7, 8, 9, 10]);
        let mode = std::fs::metadata(h.path()).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o640);
    }

    #[test]
    fn a_corrupt_line_is_skipped_with_a_warning() {
        let dir = tempfile::tempdir().unwrap();
        let (mut h, _) = History::open(dir.path(), 10).unwrap();
        h.append(&entry(1)).unwrap();
        let mut f = OpenOptions::new().append(true).open(h.path()).unwrap();
        f.write_all(b"{\"startedAt\": oops\n").unwrap();
        h.append(&entry(2)).unwrap();
        let got = read(dir.path(), 10).unwrap();
        assert_eq!(got.entries.len(), 2);
        assert_eq!(got.warnings.len(), 1);
        assert!(got.warnings[0].contains("line 2"), "{:?}", got.warnings);
        // Compaction drops the bad line for good.
        h.compact().unwrap();
        assert!(read(dir.path(), 10).unwrap().warnings.is_empty());
    }

    #[test]
    fn a_torn_last_line_is_cut_on_open_and_ignored_by_readers() {
        let dir = tempfile::tempdir().unwrap();
        let (mut h, _) = History::open(dir.path(), 10).unwrap();
        h.append(&entry(1)).unwrap();
        let mut f = OpenOptions::new().append(true).open(h.path()).unwrap();
        f.write_all(b"{\"startedAt\": 17").unwrap();
        let got = read(dir.path(), 10).unwrap();
        assert_eq!((got.entries.len(), got.warnings.len()), (1, 0));
        let (mut h, w) = History::open(dir.path(), 10).unwrap();
        assert_eq!(w.len(), 1, "{w:?}");
        h.append(&entry(2)).unwrap();
        let got = read(dir.path(), 10).unwrap();
        assert_eq!(
            (got.entries.len(), got.warnings.len()),
            (2, 0),
            "{:?}",
            got.warnings
        );
    }

    #[test]
    fn missing_file_is_empty_and_chart_filter_narrows() {
        let dir = tempfile::tempdir().unwrap();
        assert!(read(dir.path(), 10).unwrap().entries.is_empty());
        let e = entry(1);
        assert!(e.for_chart("prometheus").is_none());
        assert_eq!(e.for_chart("grafana").unwrap().charts.len(), 1);
        assert_eq!(e.totals().summary(), "1 configured");
    }
}
