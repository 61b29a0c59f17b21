//! `pailot chart package|lint DIR`.

use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Subcommand, Debug)]
pub enum ChartCommand {
    /// Write a reproducible .tgz of the chart and print its sha256.
    Package {
        /// Chart directory.
        dir: PathBuf,
        /// Directory to write `<name>-<version>.tgz` into.
        #[arg(long, short = 'd', default_value = ".")]
        destination: PathBuf,
    },
    /// Check one chart: Chart.yaml, values against the schema, templates render.
    Lint {
        /// Chart directory.
        dir: PathBuf,
    },
}

pub fn run(_cmd: ChartCommand) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`pailot chart` is not built yet")
}
