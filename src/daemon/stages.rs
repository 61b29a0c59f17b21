//! The production stages of the loop: the git source and the renderer, both run as bounded helper jobs.

use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::watch;

use super::config::Config;
use super::helper::{self, ProvenanceJob, RenderJob};
use super::reconcile::{Renderer, Source};
use super::source::git::{Revision, SyncJob};
use crate::failure::{Failure, Reason, Stage};
use crate::manifest::ObjectId;
use crate::render::{RenderRequest, Rendered};

/// A helper that did not produce an answer: a breach of its limits during a render is the commit's
/// fault (the same commit would breach them again); anything else is the daemon's.
fn helper_failure(stage: Stage, e: helper::Error) -> Failure {
    let commit_at_fault = stage == Stage::Render
        && matches!(
            e,
            helper::Error::TimedOut { .. }
                | helper::Error::OutOfMemory { .. }
                | helper::Error::Died { .. }
        );
    let reason = if commit_at_fault {
        Reason::InvalidInput
    } else {
        Reason::Internal
    };
    let mut message = e.to_string();
    if commit_at_fault {
        message.push_str(
            "; the commit is refused (a template or overlay does too much work: look for unbounded loops or growing strings), the last good revision keeps running",
        );
    }
    Failure::new(stage, reason, message)
}

/// Fetches the configured ref in a helper process.
pub struct GitStage {
    pub config: watch::Receiver<Arc<Config>>,
}

impl Source for GitStage {
    async fn fetch(&self, pinned: &[String]) -> Result<Revision, Failure> {
        let (job, limits) = {
            let c = self.config.borrow();
            (
                SyncJob {
                    source: c.source.clone(),
                    dir: c.state_dir.join("source"),
                    pinned: pinned.to_vec(),
                },
                c.helpers,
            )
        };
        match helper::run(job, limits).await {
            Ok(Ok(rev)) => Ok(rev),
            Ok(Err(e)) => Err(e.into()),
            Err(e) => Err(helper_failure(Stage::Fetch, e)),
        }
    }
}

/// Renders a checked-out revision in a helper process, without field provenance.
///
/// Provenance (where each field's value came from) is only read for drift records, which are rare:
/// `provenance` renders the applied revision again, with it, when a drift check finds drift.
pub struct RepoRenderer {
    pub config: watch::Receiver<Arc<Config>>,
}

impl RepoRenderer {
    fn request(&self, revision: &Revision) -> (RenderRequest, helper::Limits) {
        let c = self.config.borrow();
        (
            RenderRequest {
                repo_root: revision.root.clone(),
                cluster_file: PathBuf::from(&c.source.cluster),
                overlays: c.source.overlays.clone(),
                revision: Some(revision.commit.clone()),
                age_keys: c.decryption.age_keys(),
            },
            c.helpers,
        )
    }
}

impl Renderer for RepoRenderer {
    async fn render(&self, revision: &Revision) -> Result<Rendered, Failure> {
        let (req, limits) = self.request(revision);
        match helper::run(RenderJob(req), limits).await {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(input)) => Err(Failure::input(Stage::Render, input)),
            Err(e) => Err(helper_failure(Stage::Render, e)),
        }
    }

    async fn provenance(
        &self,
        revision: &Revision,
        fields: Vec<(ObjectId, String)>,
    ) -> Result<Vec<Option<String>>, Failure> {
        let (request, limits) = self.request(revision);
        match helper::run(ProvenanceJob { request, fields }, limits).await {
            Ok(Ok(lines)) => Ok(lines),
            Ok(Err(input)) => Err(Failure::input(Stage::Drift, input)),
            Err(e) => Err(helper_failure(Stage::Drift, e)),
        }
    }
}
