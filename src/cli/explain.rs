//! `pailot explain KIND/NAME[.NS] [POINTER]`: field provenance.

use std::process::ExitCode;

use super::{Output, RepoArgs};

#[derive(clap::Args, Debug)]
pub struct ExplainArgs {
    #[command(flatten)]
    pub repo: RepoArgs,
    /// Object as KIND/NAME or KIND/NAME.NAMESPACE (e.g. `DaemonSet/zookeeper-ds.default`).
    pub object: String,
    /// JSON pointer inside the object (e.g. `/spec/template/spec/containers/0/resources`); all fields when omitted.
    pub pointer: Option<String>,
    #[arg(long, short = 'o', value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

pub fn run(_args: ExplainArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`pailot explain` is not built yet")
}
