//! `pailot schema --out schemas/`.

use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Args, Debug)]
pub struct SchemaArgs {
    /// Directory to write the JSON Schemas into.
    #[arg(long, default_value = "schemas")]
    pub out: PathBuf,
    /// Only check that the files in `--out` are current (exit 1 when stale).
    #[arg(long)]
    pub check: bool,
}

pub fn run(_args: SchemaArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`pailot schema` is not built yet")
}
