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
        /// age identity for the chart's sops files (checked before packaging; packaged encrypted).
        #[arg(long, value_name = "FILE", env = "SOPS_AGE_KEY_FILE")]
        age_key_file: Option<PathBuf>,
    },
    /// Check one chart: Chart.yaml, values against the schema, templates render (exit 1 on problems).
    Lint {
        /// Chart directory.
        dir: PathBuf,
        /// age identity for the chart's sops files (`values.sops.yaml`, encrypted manifests).
        #[arg(long, value_name = "FILE", env = "SOPS_AGE_KEY_FILE")]
        age_key_file: Option<PathBuf>,
    },
}

fn keyring(file: Option<PathBuf>) -> crate::sops::Keyring {
    crate::sops::Keyring::new(file.map_or(crate::sops::AgeKeys::None, crate::sops::AgeKeys::File))
}

/// The root that file names in messages are relative to: `<root>` for a chart in `<root>/charts/<name>`
/// (its repository); otherwise the current directory when the chart is below it, else none (absolute
/// names), so `chart lint /tmp` names `/tmp/Chart.yaml`, not `tmp/Chart.yaml`.
fn repo_root_of(abs: &Path) -> PathBuf {
    if let Some(parent) = abs.parent()
        && parent.file_name().is_some_and(|n| n == "charts")
        && let Some(root) = parent.parent()
    {
        return root.to_path_buf();
    }
    match std::env::current_dir() {
        Ok(cwd) if abs.starts_with(&cwd) => cwd,
        _ => PathBuf::new(),
    }
}

pub fn run(cmd: ChartCommand) -> anyhow::Result<ExitCode> {
    let _bounds = crate::limits::Limits::current().enforce(match cmd {
        ChartCommand::Package { .. } => "pailot chart package",
        ChartCommand::Lint { .. } => "pailot chart lint",
    });
    match cmd {
        ChartCommand::Package {
            dir,
            destination,
            age_key_file,
        } => {
            let dir = std::path::absolute(&dir)
                .with_context(|| format!("cannot resolve {}", dir.display()))?;
            let pkg = package_chart(&dir, &destination, &keyring(age_key_file))?;
            println!("{}  sha256:{}", pkg.path.display(), pkg.sha256);
            Ok(ExitCode::SUCCESS)
        }
        ChartCommand::Lint { dir, age_key_file } => {
            let abs = std::path::absolute(&dir)
                .with_context(|| format!("cannot resolve {}", dir.display()))?;
            let root = repo_root_of(&abs);
            let problems = lint_chart(&root, &abs, &keyring(age_key_file))?;
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
