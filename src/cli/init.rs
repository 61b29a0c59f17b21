//! `pailot init`: paictl quick-start.yaml -> Cluster file.

use std::path::PathBuf;
use std::process::ExitCode;

use super::UsageError;
use crate::diag::InputError;

#[derive(clap::Args, Debug)]
pub struct InitArgs {
    /// The paictl quick-start.yaml to convert.
    #[arg(long = "from")]
    pub from: PathBuf,
    /// Where to write the Cluster file (default: stdout).
    #[arg(long, short = 'o')]
    pub out: Option<PathBuf>,
    /// Overwrite the `-o` file when it exists.
    #[arg(long)]
    pub force: bool,
    /// Cluster name (default: the output file's stem, else `pai`, paictl's default cluster-id).
    #[arg(long)]
    pub name: Option<String>,
    /// Also write `.sops.yaml` (here, the repository root) encrypting `*.sops.yaml` files to this
    /// age public key (repeatable); see docs/secrets.md. An existing `.sops.yaml` is kept.
    #[arg(long, value_name = "AGE1...")]
    pub sops_age_recipient: Vec<String>,
}

pub fn run(args: InitArgs) -> anyhow::Result<ExitCode> {
    // Checked before converting: a hand-edited Cluster file is worth more than the conversion.
    if let Some(path) = &args.out
        && !args.force
        && path.exists()
    {
        return Err(UsageError(format!(
            "{} exists; pass --force to overwrite it",
            path.display()
        ))
        .into());
    }
    let shown = args.from.display().to_string();
    let text = std::fs::read_to_string(&args.from)
        .map_err(|e| InputError::new(&shown, format!("cannot read file: {e}")))?;
    let name = args
        .name
        .clone()
        .or_else(|| {
            args.out
                .as_ref()
                .and_then(|o| o.file_stem())
                .map(|s| s.to_string_lossy().into_owned())
        })
        .unwrap_or_else(|| "pai".into());
    let sops_config = (!args.sops_age_recipient.is_empty())
        .then(|| crate::init::sops_config(&args.sops_age_recipient))
        .transpose()?;
    let out = crate::init::convert(&text, &shown, &name)?;
    for w in &out.warnings {
        eprintln!("warning: {w}");
    }
    match &args.out {
        Some(path) => {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)?;
            }
            std::fs::write(path, &out.yaml)?;
            eprintln!("wrote {} (fill in each machine's capacity)", path.display());
        }
        None => print!("{}", out.yaml),
    }
    if let Some(config) = sops_config {
        let path = std::path::Path::new(".sops.yaml");
        if path.exists() {
            eprintln!("kept the existing .sops.yaml (not overwritten)");
        } else {
            std::fs::write(path, config)?;
            eprintln!(
                "wrote .sops.yaml: encrypt secrets with `sops -e -i clusters/{name}.secrets.sops.yaml`, then list it in the cluster file's valuesFiles (docs/secrets.md)"
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
