//! `pailot init`: paictl quick-start.yaml -> Cluster file.

use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Args, Debug)]
pub struct InitArgs {
    /// The paictl quick-start.yaml to convert.
    #[arg(long = "from")]
    pub from: PathBuf,
    /// Where to write the Cluster file (default: stdout).
    #[arg(long, short = 'o')]
    pub out: Option<PathBuf>,
}

pub fn run(_args: InitArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`pailot init` is not built yet")
}
