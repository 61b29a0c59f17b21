//! `pailot render`: print the rendered manifests.

use std::process::ExitCode;

use super::{Output, RepoArgs};

#[derive(clap::Args, Debug)]
pub struct RenderArgs {
    #[command(flatten)]
    pub repo: RepoArgs,
    /// Output format (`yaml` or `json`).
    #[arg(long, short = 'o', value_enum, default_value_t = Output::Yaml)]
    pub output: Output,
}

pub fn run(_args: RenderArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`pailot render` is not built yet")
}
