//! `pailot bootstrap [--reset]`: host bootstrap.

use std::process::ExitCode;

use super::RepoArgs;

#[derive(clap::Args, Debug)]
pub struct BootstrapArgs {
    #[command(flatten)]
    pub repo: RepoArgs,
}

pub fn run(_args: BootstrapArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`pailot bootstrap` is not built yet")
}
