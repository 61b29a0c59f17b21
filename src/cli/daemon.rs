//! `pailot daemon --config F`: the GitOps reconciler.

use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Args, Debug)]
pub struct DaemonArgs {
    /// Daemon configuration file.
    #[arg(long, default_value = "/etc/pailot/pailot.yaml", env = "PAILOT_CONFIG")]
    pub config: PathBuf,
}

pub fn run(_args: DaemonArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`pailot daemon` is not built yet")
}
