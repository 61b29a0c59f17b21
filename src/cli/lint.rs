//! `pailot lint`: charts, overlays, clusters.

use std::process::ExitCode;

use super::RepoArgs;

#[derive(clap::Args, Debug)]
pub struct LintArgs {
    #[command(flatten)]
    pub repo: RepoArgs,
}

pub fn run(_args: LintArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`pailot lint` is not built yet")
}
