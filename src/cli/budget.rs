//! `pailot budget`: requests/limits per machine vs capacity.

use std::process::ExitCode;

use super::{Output, RepoArgs};

#[derive(clap::Args, Debug)]
pub struct BudgetArgs {
    #[command(flatten)]
    pub repo: RepoArgs,
    #[arg(long, short = 'o', value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

pub fn run(_args: BudgetArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`pailot budget` is not built yet")
}
