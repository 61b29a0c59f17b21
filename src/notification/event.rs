//! What the daemon reports: an [`Event`] (reconcile succeeded or failed, drift corrected, prune blocked, suspended, resumed).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The kinds of event, as configured in a sink's `events:` list.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "camelCase")]
pub enum EventKind {
    /// A revision was applied (and became healthy when waiting is on).
    ReconcileSucceeded,
    /// A stage failed (`stage`, `reason` and `message` say which and why).
    ReconcileFailed,
    /// Drifted objects were put back.
    DriftCorrected,
    /// Prune was refused (more deletions than `massPruneThreshold`).
    PruneBlocked,
    /// `pailot suspend`: no applying, no correcting.
    Suspended,
    /// `pailot resume`, or a `--for` suspension ran out.
    Resumed,
}

impl EventKind {
    pub const ALL: [EventKind; 6] = [
        EventKind::ReconcileSucceeded,
        EventKind::ReconcileFailed,
        EventKind::DriftCorrected,
        EventKind::PruneBlocked,
        EventKind::Suspended,
        EventKind::Resumed,
    ];

    /// The configuration/payload word (`reconcileFailed`).
    pub fn word(self) -> &'static str {
        match self {
            EventKind::ReconcileSucceeded => "reconcileSucceeded",
            EventKind::ReconcileFailed => "reconcileFailed",
            EventKind::DriftCorrected => "driftCorrected",
            EventKind::PruneBlocked => "pruneBlocked",
            EventKind::Suspended => "suspended",
            EventKind::Resumed => "resumed",
        }
    }

    /// A title for people.
    pub fn title(self) -> &'static str {
        match self {
            EventKind::ReconcileSucceeded => "Reconcile succeeded",
            EventKind::ReconcileFailed => "Reconcile failed",
            EventKind::DriftCorrected => "Drift corrected",
            EventKind::PruneBlocked => "Prune blocked",
            EventKind::Suspended => "Suspended",
            EventKind::Resumed => "Resumed",
        }
    }

    pub fn severity(self) -> Severity {
        match self {
            EventKind::ReconcileSucceeded | EventKind::Resumed => Severity::Info,
            EventKind::DriftCorrected | EventKind::Suspended => Severity::Warning,
            EventKind::ReconcileFailed | EventKind::PruneBlocked => Severity::Error,
        }
    }

    /// Events of one topic replace each other; deduplication compares an event only with the last
    /// one of its topic, so `failed, succeeded, failed` sends all three.
    pub(crate) fn topic(self) -> u8 {
        match self {
            EventKind::ReconcileSucceeded | EventKind::ReconcileFailed => 0,
            EventKind::DriftCorrected => 1,
            EventKind::PruneBlocked => 2,
            EventKind::Suspended | EventKind::Resumed => 3,
        }
    }
}

/// How bad it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Info,
    Warning,
    Error,
}

/// The longest message sent; longer ones are cut (on a character boundary, with `…`).
pub const MAX_MESSAGE_CHARS: usize = 1000;

/// One thing worth telling people about. Carries no secret values: build it from the daemon's
/// one-line messages, which never hold any, and [`Event::message`] also masks credentials in URLs.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Event {
    pub kind: EventKind,
    /// Unix time (seconds) it happened.
    pub time: u64,
    /// The commit concerned (the applied one; for a failure, the one that failed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
    /// The commit's subject line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// The failed stage (`fetch`, `verify`, `render`, `apply`, `wait`, `drift`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage: Option<String>,
    /// The failure's reason word (`api_unreachable`, `invalid_input`...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Charts concerned (changed, failed, drifted).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub charts: Vec<String>,
    /// One line for people.
    pub message: String,
}

impl Event {
    /// An event of `kind` at `time` saying `message` (cut to [`MAX_MESSAGE_CHARS`], credentials in
    /// URLs masked, whitespace runs folded to one space).
    pub fn new(kind: EventKind, time: u64, message: impl AsRef<str>) -> Event {
        Event {
            kind,
            time,
            revision: None,
            subject: None,
            stage: None,
            reason: None,
            charts: Vec::new(),
            message: clean_message(message.as_ref()),
        }
    }
    pub fn revision(mut self, revision: impl Into<String>) -> Self {
        self.revision = Some(revision.into());
        self
    }
    pub fn subject(mut self, subject: impl Into<String>) -> Self {
        self.subject = Some(clean_message(&subject.into()));
        self
    }
    pub fn stage(mut self, stage: impl Into<String>) -> Self {
        self.stage = Some(stage.into());
        self
    }
    pub fn reason(mut self, reason: impl Into<String>) -> Self {
        self.reason = Some(reason.into());
        self
    }
    pub fn charts<I: IntoIterator<Item = S>, S: Into<String>>(mut self, charts: I) -> Self {
        self.charts = charts.into_iter().map(Into::into).collect();
        self.charts.sort();
        self.charts.dedup();
        self
    }

    /// `cluster: Reconcile failed at 0123456789ab`: the first words of a chat message.
    pub(crate) fn headline(&self, cluster: &str) -> String {
        let mut s = format!("{}: {}", cluster, self.kind.title());
        if let Some(r) = &self.revision {
            s.push_str(&format!(" at {}", short(r)));
        }
        s
    }
}

/// The first 12 characters of a commit id.
pub(crate) fn short(rev: &str) -> &str {
    rev.get(..12).unwrap_or(rev)
}

/// One line, at most [`MAX_MESSAGE_CHARS`], with `scheme://user:password@` reduced to `scheme://***@`.
pub fn clean_message(text: &str) -> String {
    let folded = text.split_whitespace().collect::<Vec<_>>().join(" ");
    let masked = mask_url_credentials(&folded);
    if masked.chars().count() <= MAX_MESSAGE_CHARS {
        return masked;
    }
    let mut cut: String = masked.chars().take(MAX_MESSAGE_CHARS - 1).collect();
    cut.push('…');
    cut
}

fn mask_url_credentials(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("://") {
        let (head, tail) = rest.split_at(i + 3);
        out.push_str(head);
        let end = tail
            .find(|c: char| c.is_whitespace() || c == '/' || c == '"' || c == '\'')
            .unwrap_or(tail.len());
        let authority = &tail[..end];
        match authority.rfind('@') {
            Some(at) => {
                out.push_str("***");
                out.push_str(&authority[at..]);
            }
            None => out.push_str(authority),
        }
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_one_line_short_and_without_url_credentials() {
        let e = Event::new(
            EventKind::ReconcileFailed,
            0,
            "fetch https://oauth2:ghp_SECRET@github.com/acme/deploy.git failed:\n  connection refused",
        );
        assert_eq!(
            e.message,
            "fetch https://***@github.com/acme/deploy.git failed: connection refused"
        );
        assert!(!e.message.contains("SECRET"));
        let long = Event::new(EventKind::ReconcileFailed, 0, "x".repeat(5000));
        assert_eq!(long.message.chars().count(), MAX_MESSAGE_CHARS);
        assert_eq!(
            clean_message("see http://example.com/a and ssh://git@host/x"),
            "see http://example.com/a and ssh://***@host/x"
        );
    }

    #[test]
    fn charts_are_sorted_and_unique() {
        let e = Event::new(EventKind::DriftCorrected, 0, "m").charts(["b", "a", "b"]);
        assert_eq!(e.charts, vec!["a", "b"]);
    }
}
