//! One vocabulary for what went wrong: the stage, the reason word, and retry-or-wait, decided once for logs, `/status` and metrics.
//!
//! Failures are typed where they happen (`git::Error`, `InputError`, `apply::FailureKind`,
//! `helper::Error`) and turned into a [`Failure`] by the `From` impls below. Nothing downstream
//! parses message text to find a reason: the words of [`Stage::as_str`] and [`Reason::as_str`] are
//! the `stage`/`reason` labels, the `stage`/`reason` fields of `/status` and of the history, and
//! the fields of the log line.

use serde::{Deserialize, Serialize};

use crate::diag::InputError;

/// Where in the reconcile a failure happened (the `stage` label).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// Fetching the ref and checking it out.
    Fetch,
    /// Checking the commit's signature.
    Verify,
    /// Rendering charts and overlays.
    Render,
    /// Deciding whether the render may be applied: empty render, budget, dependency plan.
    Plan,
    /// Server-side apply (and the ApplySet parent).
    Apply,
    /// Deleting objects that left the render.
    Prune,
    /// Waiting for charts to become healthy.
    Wait,
    /// Comparing the live objects with the applied revision.
    Drift,
    /// Writing the daemon's own state (state dir).
    State,
}

impl Stage {
    /// Every stage, for tests and documentation tables.
    pub const ALL: [Stage; 9] = [
        Stage::Fetch,
        Stage::Verify,
        Stage::Render,
        Stage::Plan,
        Stage::Apply,
        Stage::Prune,
        Stage::Wait,
        Stage::Drift,
        Stage::State,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Fetch => "fetch",
            Stage::Verify => "verify",
            Stage::Render => "render",
            Stage::Plan => "plan",
            Stage::Apply => "apply",
            Stage::Prune => "prune",
            Stage::Wait => "wait",
            Stage::Drift => "drift",
            Stage::State => "state",
        }
    }
}

impl std::fmt::Display for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a stage failed (the `reason` label). Bounded: a new word is a new variant.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// The git remote could not be reached or refused the fetch.
    SourceUnreachable,
    /// The configured branch, tag or commit does not exist.
    RefNotFound,
    /// Verification is on and the commit is not signed.
    UnsignedCommit,
    /// Verification is on and the signature is not from an allowed signer.
    UntrustedSignature,
    /// A chart, overlay, cluster file, template or patch is invalid, or rendering it broke a limit.
    InvalidInput,
    /// The commit renders no object at all (it would unmanage everything).
    EmptyRender,
    /// The render's requests do not fit the machines' capacity.
    OverBudget,
    /// The Kubernetes API could not be reached, timed out, or answered 429/5xx.
    ApiUnreachable,
    /// The API refused an object (validation, admission, schema, field conflict, unknown kind).
    Rejected,
    /// A prune was refused (mass-prune threshold).
    PruneBlocked,
    /// Charts did not become healthy (a failed condition, or the timeout passed).
    Unhealthy,
    /// A local file could not be written (disk full, permissions): state dir, checkout.
    LocalIo,
    /// Shutdown or a newer commit interrupted the stage.
    Interrupted,
    /// A bug or an unexpected condition (a helper that died during a fetch, a task that panicked).
    Internal,
}

/// Every reason, for tests and documentation tables.
pub const ALL_REASONS: [Reason; 14] = [
    Reason::SourceUnreachable,
    Reason::RefNotFound,
    Reason::UnsignedCommit,
    Reason::UntrustedSignature,
    Reason::InvalidInput,
    Reason::EmptyRender,
    Reason::OverBudget,
    Reason::ApiUnreachable,
    Reason::Rejected,
    Reason::PruneBlocked,
    Reason::Unhealthy,
    Reason::LocalIo,
    Reason::Interrupted,
    Reason::Internal,
];

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::SourceUnreachable => "source_unreachable",
            Reason::RefNotFound => "ref_not_found",
            Reason::UnsignedCommit => "unsigned_commit",
            Reason::UntrustedSignature => "untrusted_signature",
            Reason::InvalidInput => "invalid_input",
            Reason::EmptyRender => "empty_render",
            Reason::OverBudget => "over_budget",
            Reason::ApiUnreachable => "api_unreachable",
            Reason::Rejected => "rejected",
            Reason::PruneBlocked => "prune_blocked",
            Reason::Unhealthy => "unhealthy",
            Reason::LocalIo => "local_io",
            Reason::Interrupted => "interrupted",
            Reason::Internal => "internal",
        }
    }

    /// Retry later (the world may change: network, API server, disk, pods) or wait for a new commit
    /// (the commit itself is the problem): decided here and nowhere else.
    pub fn next(self) -> Next {
        match self {
            Reason::SourceUnreachable
            | Reason::ApiUnreachable
            | Reason::Unhealthy
            | Reason::LocalIo
            | Reason::Interrupted
            | Reason::Internal => Next::Requeue,
            Reason::RefNotFound
            | Reason::UnsignedCommit
            | Reason::UntrustedSignature
            | Reason::InvalidInput
            | Reason::EmptyRender
            | Reason::OverBudget
            | Reason::Rejected
            | Reason::PruneBlocked => Next::AwaitChange,
        }
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What happens after a failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Next {
    /// Try again after an exponential backoff (a new commit ends the backoff at once).
    Requeue,
    /// Keep the last applied revision running; try again when the ref moves (or on SIGHUP).
    AwaitChange,
}

/// A failure of one stage of a reconcile: typed once where it happened, handled once by the loop.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, thiserror::Error)]
#[serde(rename_all = "camelCase")]
#[error("{stage} failed ({reason}): {message}")]
pub struct Failure {
    pub stage: Stage,
    pub reason: Reason,
    /// Readable text, no secret values (API error bodies are summarised, Secret values redacted).
    pub message: String,
    /// The input error (file, line/column, place, object) when the repository's content is at fault.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<InputError>,
    /// The charts the failure is about (failing or unhealthy), when it is about charts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub charts: Vec<String>,
}

impl Failure {
    pub fn new(stage: Stage, reason: Reason, message: impl Into<String>) -> Self {
        Failure {
            stage,
            reason,
            message: message.into(),
            input: None,
            charts: Vec::new(),
        }
    }

    /// The repository's content is at fault.
    pub fn input(stage: Stage, err: InputError) -> Self {
        Failure {
            stage,
            reason: Reason::InvalidInput,
            message: err.to_string(),
            input: Some(err),
            charts: Vec::new(),
        }
    }

    /// The same failure, about `charts`.
    pub fn with_charts(mut self, charts: impl IntoIterator<Item = String>) -> Self {
        self.charts = charts.into_iter().collect();
        self.charts.sort();
        self.charts.dedup();
        self
    }

    /// What the loop does next.
    pub fn next(&self) -> Next {
        self.reason.next()
    }
}

impl From<crate::apply::FailureKind> for Reason {
    fn from(k: crate::apply::FailureKind) -> Self {
        use crate::apply::FailureKind as K;
        match k {
            K::Unreachable => Reason::ApiUnreachable,
            K::Rejected | K::Conflict | K::UnknownKind => Reason::Rejected,
            K::Unhealthy | K::HealthTimeout | K::DeleteTimeout => Reason::Unhealthy,
            K::PruneRefused => Reason::PruneBlocked,
            K::Internal => Reason::Internal,
        }
    }
}

/// The stage of an apply failure of `kind` in `step`.
fn apply_stage(step: crate::apply::Step, kind: crate::apply::FailureKind) -> Stage {
    use crate::apply::{FailureKind as K, Step as S};
    match (step, kind) {
        (S::Prune, _) => Stage::Prune,
        (S::Health, _) | (_, K::Unhealthy | K::HealthTimeout) => Stage::Wait,
        _ => Stage::Apply,
    }
}

impl From<crate::apply::Error> for Failure {
    fn from(e: crate::apply::Error) -> Self {
        let kind = e.kind();
        Failure::new(apply_stage(e.step(), kind), kind.into(), e.to_string())
    }
}

impl Failure {
    /// The failure of an apply report, if any: the kind that decides what to do next wins — the API
    /// server's (retry the whole apply), then the objects' (wait for a new commit), the prune's, and
    /// last the charts' health. The message is that failure's, with a count of the others; `charts`
    /// lists every failing chart.
    pub fn from_report(report: &crate::apply::ApplyReport) -> Option<Failure> {
        use crate::apply::FailureKind as K;
        let precedence = |k: K| match k {
            K::Unreachable => 0,
            K::Rejected | K::Conflict | K::UnknownKind | K::Internal => 1,
            K::PruneRefused => 2,
            K::DeleteTimeout => 3,
            K::Unhealthy | K::HealthTimeout => 4,
        };
        let first = report.failures.iter().min_by_key(|f| precedence(f.kind))?;
        let mut message = first.to_string();
        if report.failures.len() > 1 {
            message.push_str(&format!(" (and {} more)", report.failures.len() - 1));
        }
        Some(
            Failure::new(
                apply_stage(first.step, first.kind),
                first.kind.into(),
                message,
            )
            .with_charts(report.failed_charts()),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_are_unique_and_serde_agrees_with_as_str() {
        let mut seen = std::collections::BTreeSet::new();
        for r in ALL_REASONS {
            assert!(seen.insert(r.as_str()), "{r:?}");
            assert_eq!(
                serde_json::to_value(r).unwrap(),
                serde_json::json!(r.as_str())
            );
        }
        for s in Stage::ALL {
            assert_eq!(
                serde_json::to_value(s).unwrap(),
                serde_json::json!(s.as_str())
            );
        }
    }

    #[test]
    fn the_commit_is_the_problem_only_for_input_like_reasons() {
        use Reason::*;
        for r in [
            InvalidInput,
            EmptyRender,
            OverBudget,
            Rejected,
            PruneBlocked,
            RefNotFound,
        ] {
            assert_eq!(r.next(), Next::AwaitChange, "{r:?}");
        }
        for r in [
            SourceUnreachable,
            ApiUnreachable,
            Unhealthy,
            LocalIo,
            Internal,
        ] {
            assert_eq!(r.next(), Next::Requeue, "{r:?}");
        }
    }
}
