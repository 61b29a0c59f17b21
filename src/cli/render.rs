//! `pailot render`: print the rendered manifests.

use std::io::Write;
use std::process::ExitCode;

use super::{Output, RepoArgs, UsageError};
use crate::render::{ProvenanceMode, RenderRequest, render_with, to_json, write_yaml_stream};

#[derive(clap::Args, Debug)]
pub struct RenderArgs {
    #[command(flatten)]
    pub repo: RepoArgs,
    /// Output format (`yaml` or `json`).
    #[arg(long, short = 'o', value_enum, default_value_t = Output::Yaml)]
    pub output: Output,
}

impl RepoArgs {
    /// The render request these flags describe.
    pub fn request(&self) -> RenderRequest {
        RenderRequest {
            repo_root: self.repo.clone(),
            cluster_file: self.cluster.clone(),
            overlays: if self.overlays.is_empty() {
                None
            } else {
                Some(self.overlays.clone())
            },
            revision: None,
        }
    }
}

pub fn run(args: RenderArgs) -> anyhow::Result<ExitCode> {
    if args.output == Output::Table {
        return Err(UsageError("`pailot render` writes `-o yaml` or `-o json`".into()).into());
    }
    let bounds = crate::limits::Limits::current().enforce("pailot render");
    // Printing manifests needs no field provenance (`pailot explain` records it).
    let (_, set) = render_with(&args.repo.request(), ProvenanceMode::Skip)?;
    let json = (args.output == Output::Json).then(|| to_json(&set));
    // Writing waits on whoever reads the output (`pailot render | less`): not render work.
    drop(bounds);
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let written = match &json {
        Some(text) => out.write_all(text.as_bytes()),
        None => write_yaml_stream(&set, &mut out),
    }
    .and_then(|_| out.flush());
    // Freeing thousands of objects just before exit is wasted work.
    std::mem::forget(set);
    // A closed pipe (`pailot render | head`) is not an error worth a message.
    if let Err(e) = written
        && e.kind() != std::io::ErrorKind::BrokenPipe
    {
        return Err(e.into());
    }
    Ok(ExitCode::SUCCESS)
}
