//! `pailot status`: what the running daemon last did.

use std::process::ExitCode;

#[derive(clap::Args, Debug)]
pub struct StatusArgs {
    /// Address of the daemon's HTTP server.
    #[arg(long, default_value = "http://127.0.0.1:9464", env = "PAILOT_STATUS_URL")]
    pub url: String,
}

pub fn run(_args: StatusArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`pailot status` is not built yet")
}
