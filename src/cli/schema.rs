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

pub fn run(args: SchemaArgs) -> anyhow::Result<ExitCode> {
    if args.check {
        let stale = crate::schema::stale(&args.out);
        if stale.is_empty() {
            println!("{}: schemas are current", args.out.display());
            return Ok(ExitCode::SUCCESS);
        }
        for p in &stale {
            eprintln!(
                "stale: {} (run `pailot schema --out {}`)",
                p.display(),
                args.out.display()
            );
        }
        return Ok(ExitCode::from(super::EXIT_DIFF));
    }
    for p in crate::schema::write(&args.out)? {
        println!("wrote {}", p.display());
    }
    Ok(ExitCode::SUCCESS)
}
