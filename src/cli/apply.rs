//! `pailot diff`, `pailot apply`, `pailot uninstall`.

use std::process::ExitCode;

use super::RepoArgs;

#[derive(clap::Args, Debug)]
pub struct DiffArgs {
    #[command(flatten)]
    pub repo: RepoArgs,
}

#[derive(clap::Args, Debug)]
pub struct ApplyArgs {
    #[command(flatten)]
    pub repo: RepoArgs,
}

#[derive(clap::Args, Debug)]
pub struct UninstallArgs {
    #[command(flatten)]
    pub repo: RepoArgs,
}

pub fn run_diff(_args: DiffArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`pailot diff` is not built yet")
}

pub fn run_apply(_args: ApplyArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`pailot apply` is not built yet")
}

pub fn run_uninstall(_args: UninstallArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`pailot uninstall` is not built yet")
}
