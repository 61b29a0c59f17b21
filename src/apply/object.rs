//! One object at a time: GET (or the listed copy), SSA dry-run, compare, apply only what changed; failures typed and redacted.

use std::collections::BTreeMap;

use futures::StreamExt;
use serde_json::Value;

use super::plan::PlannedObject;
use super::{Action, Config, Halt, ObjectReport, Server, Step, diff, ssa};
use crate::FIELD_MANAGER;
use crate::manifest::ObjectId;
use crate::order::{self, Stage};

/// What one group of objects came to: one report per object started, and how many a halt kept from starting.
pub(crate) struct GroupResult {
    pub reports: Vec<ObjectReport>,
    pub not_started: usize,
}

/// Apply one group of objects: rank by rank, objects of a rank concurrently; one report per object.
/// Once halted (stop requested, or a transient failure) no further object starts; those in flight finish.
pub(crate) async fn apply_group(
    server: &Server,
    objects: &[PlannedObject],
    config: &Config,
    live: &BTreeMap<ObjectId, Value>,
    stage: Stage,
    halt: &Halt<'_>,
) -> GroupResult {
    let mut out = Vec::new();
    let mut not_started = 0;
    let mut i = 0;
    while i < objects.len() {
        if halt.halted() {
            not_started += objects.len() - i;
            break;
        }
        let j = rank_end(objects, i, stage);
        // Futures built up front (not in a stream closure) keep the whole apply future `Send`.
        let futures: Vec<_> = objects[i..j]
            .iter()
            .map(|o| apply_object(server, o, config, live.get(&o.id), stage, halt))
            .collect();
        let results: Vec<Option<ObjectReport>> = futures::stream::iter(futures)
            .buffered(config.object_concurrency.max(1))
            .collect()
            .await;
        for r in results {
            match r {
                Some(r) => out.push(r),
                None => not_started += 1,
            }
        }
        i = j;
    }
    GroupResult {
        reports: out,
        not_started,
    }
}

/// End of the run of objects starting at `i` that may be applied at once: the same kind rank in a chart's
/// workloads; in the definitions stage, the same kind (CRDs and Namespaces go before cluster RBAC).
fn rank_end(objects: &[PlannedObject], i: usize, stage: Stage) -> usize {
    let same = |a: &PlannedObject, b: &PlannedObject| match stage {
        Stage::ClusterDefinitions => a.id.kind == b.id.kind,
        Stage::Classes => true,
        Stage::Workloads => order::kind_rank(&a.id.kind) == order::kind_rank(&b.id.kind),
    };
    let mut j = i + 1;
    while j < objects.len() && same(&objects[i], &objects[j]) {
        j += 1;
    }
    j
}

/// One object, unless halted (`None`: not started).
async fn apply_object(
    server: &Server,
    o: &PlannedObject,
    config: &Config,
    listed: Option<&Value>,
    stage: Stage,
    halt: &Halt<'_>,
) -> Option<ObjectReport> {
    if halt.halted() {
        return None;
    }
    let mut r = match apply_started_object(server, o, config, listed).await {
        Ok(r) => r,
        Err(e) => failed(o, stage, &e),
    };
    r.step = stage.into();
    if r.transient() {
        halt.transient_failure();
    }
    Some(r)
}

/// The report of an object whose API call failed: the kind from the error's type, the text readable
/// and without the values of a Secret (the API server quotes offending values).
fn failed(o: &PlannedObject, stage: Stage, e: &ssa::Error) -> ObjectReport {
    let mut r = ObjectReport::new(o, stage.into(), Action::Failed);
    r.failure = Some(e.kind());
    let text = format!("{e} (rendered from {})", o.template);
    r.reason = Some(crate::redact::scrub(
        &text,
        &crate::redact::secret_values(&o.object),
    ));
    r
}

/// GET live, dry-run SSA, compare; apply for real only when different.
async fn apply_started_object(
    server: &Server,
    o: &PlannedObject,
    config: &Config,
    listed: Option<&Value>,
) -> Result<ObjectReport, ssa::Error> {
    let mut r = ObjectReport::new(o, Step::Workloads, Action::Failed);
    if config.dry_run && !server.knows(&o.id) {
        // A custom resource whose CRD is part of this apply: the API server cannot dry-run it yet.
        r.action = Action::Created;
        r.reason = Some(format!(
            "{} {} is not served yet (its CRD is created by this apply)",
            o.id.api_version(),
            o.id.kind
        ));
        return Ok(r);
    }
    let live = match listed {
        Some(l) => Some(l.clone()),
        None => server.get(&o.id).await?,
    };
    // Absent: nothing to compare, so no dry run; apply it.
    if live.is_none() && !config.dry_run {
        server
            .apply(&o.id, &o.object, false, config.force_conflicts)
            .await?;
        r.action = Action::Created;
        return Ok(r);
    }
    if let Some(l) = &live
        && unchanged_fast(&o.object, l)
    {
        r.action = Action::Unchanged;
        return Ok(r);
    }
    // A diff always dry-runs with force so it can show the result; the owners of contested fields are listed.
    let force = config.force_conflicts || config.dry_run;
    let dry = match server.apply(&o.id, &o.object, true, force).await {
        Ok(d) => d,
        Err(e) if config.dry_run && live.is_none() && e.is_not_found() => {
            // Its namespace is created by this apply: nothing to dry-run against yet.
            r.action = Action::Created;
            r.reason = Some(format!(
                "namespace {} is created by this apply",
                o.id.namespace.as_deref().unwrap_or("")
            ));
            return Ok(r);
        }
        Err(e) => return Err(e),
    };
    // A controller may have written the object between our read and the dry run (the Deployment controller's
    // revision annotation right after a create): on a difference, read and dry-run once more before calling it
    // changed.
    let (live, dry) = match &live {
        Some(l) if diff::normalize(l) != diff::normalize(&dry) => {
            match (
                server.get(&o.id).await,
                server.apply(&o.id, &o.object, true, force).await,
            ) {
                (Ok(Some(l2)), Ok(d2)) => (Some(l2), d2),
                _ => (live, dry),
            }
        }
        _ => (live, dry),
    };
    match &live {
        Some(l) if diff::normalize(l) == diff::normalize(&dry) => {
            r.action = Action::Unchanged;
            return Ok(r);
        }
        Some(l) => {
            r.action = Action::Configured;
            if config.dry_run {
                r.changes = diff::field_changes(l, &dry, FIELD_MANAGER);
            }
        }
        None => r.action = Action::Created,
    }
    if !config.dry_run {
        server
            .apply(&o.id, &o.object, false, config.force_conflicts)
            .await?;
    }
    Ok(r)
}

/// The object pailot last applied is live unchanged: same desired hash, and every field it sets still has
/// its value (drift on a field pailot sets fails the second test).
fn unchanged_fast(desired: &Value, live: &Value) -> bool {
    let key = diff::DESIRED_HASH_ANNOTATION;
    desired["metadata"]["annotations"][key].is_string()
        && desired["metadata"]["annotations"][key] == live["metadata"]["annotations"][key]
        && diff::is_subset(desired, live)
}
