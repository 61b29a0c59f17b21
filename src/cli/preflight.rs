//! `pailot preflight`: host checks.

use std::process::ExitCode;

use super::RepoArgs;

#[derive(clap::Args, Debug)]
pub struct PreflightArgs {
    #[command(flatten)]
    pub repo: RepoArgs,
}

pub fn run(_args: PreflightArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`pailot preflight` is not built yet")
}
