//! `pailot chart package|lint DIR`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;

use crate::chart::{lint::lint_chart, package::package_chart};

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
    /// Check one chart: Chart.yaml, values against the schema, templates render (exit 1 on problems).
    Lint {
        /// Chart directory.
        dir: PathBuf,
    },
}

/// Repository root of a chart directory: `<root>/charts/<name>` -> `<root>`, otherwise its parent.
fn repo_root_of(dir: &Path) -> PathBuf {
    let abs = std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf());
    let parent = abs
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| abs.clone());
    if parent.file_name().is_some_and(|n| n == "charts") {
        parent.parent().map(Path::to_path_buf).unwrap_or(parent)
    } else {
        parent
    }
}

pub fn run(cmd: ChartCommand) -> anyhow::Result<ExitCode> {
    let _bounds = crate::limits::Limits::current().enforce(match cmd {
        ChartCommand::Package { .. } => "pailot chart package",
        ChartCommand::Lint { .. } => "pailot chart lint",
    });
    match cmd {
        ChartCommand::Package { dir, destination } => {
            let dir = std::path::absolute(&dir)
                .with_context(|| format!("cannot resolve {}", dir.display()))?;
            let pkg = package_chart(&dir, &destination)?;
            println!("{}  sha256:{}", pkg.path.display(), pkg.sha256);
            Ok(ExitCode::SUCCESS)
        }
        ChartCommand::Lint { dir } => {
            let abs = std::path::absolute(&dir)
                .with_context(|| format!("cannot resolve {}", dir.display()))?;
            let root = repo_root_of(&abs);
            let problems = lint_chart(&root, &abs)?;
            if problems.is_empty() {
                println!("{}: ok", dir.display());
                return Ok(ExitCode::SUCCESS);
            }
            for p in &problems {
                eprintln!("error: {p}");
            }
            eprintln!("{}: {} problem(s)", dir.display(), problems.len());
            Ok(ExitCode::from(super::EXIT_DIFF))
        }
    }
}
