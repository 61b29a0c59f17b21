//! `pailot render`: print the rendered manifests.

use std::io::Write;
use std::process::ExitCode;

use super::RepoArgs;
use crate::render::{ProvenanceMode, RenderRequest, render_with, to_json, write_yaml_stream};
use crate::sops::AgeKeys;

#[derive(clap::Args, Debug)]
pub struct RenderArgs {
    #[command(flatten)]
    pub repo: RepoArgs,
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value_t = ManifestFormat::Yaml)]
    pub output: ManifestFormat,
    /// Print Secret data and values decrypted from SOPS files as they are (masked by default).
    #[arg(long)]
    pub show_secrets: bool,
}

/// How manifests are printed: a YAML stream or one JSON list (no table: a manifest is data).
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ManifestFormat {
    Yaml,
    Json,
}

impl RepoArgs {
    /// The render request these flags describe.
    pub fn request(&self) -> RenderRequest {
        RenderRequest {
            repo_root: self.repo.clone(),
            cluster_file: self.cluster.clone(),
            overlays: if self.overlays.is_empty() {
                None
            } else {
                Some(self.overlays.clone())
            },
            revision: None,
            age_keys: match &self.age_key_file {
                Some(f) => AgeKeys::File(f.clone()),
                None => match std::env::var("SOPS_AGE_KEY") {
                    Ok(text) if !text.trim().is_empty() => {
                        AgeKeys::Inline(zeroize::Zeroizing::new(text))
                    }
                    _ => AgeKeys::None,
                },
            },
        }
    }
}

pub fn run(args: RenderArgs) -> anyhow::Result<ExitCode> {
    let bounds = crate::limits::Limits::current().enforce("pailot render");
    // Printing manifests needs no field provenance (`pailot explain` records it).
    let (_, mut set) = render_with(&args.repo.request(), ProvenanceMode::Skip)?;
    if !args.show_secrets {
        let mut hidden = 0;
        for (id, ro) in set.objects.iter_mut() {
            hidden += crate::mask::mask_object(&mut ro.object, set.provenance.secrets.get(id));
        }
        if hidden > 0 {
            eprintln!(
                "note: {hidden} secret value(s) masked (Secret data, values decrypted from encrypted files); --show-secrets prints them"
            );
        }
    }
    let json = (args.output == ManifestFormat::Json).then(|| to_json(&set));
    // Writing waits on whoever reads the output (`pailot render | less`): not render work.
    drop(bounds);
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let written = match &json {
        Some(text) => out.write_all(text.as_bytes()),
        None => write_yaml_stream(&set, &mut out),
    }
    .and_then(|_| out.flush());
    // Freeing thousands of objects just before exit is wasted work.
    std::mem::forget(set);
    // A closed pipe (`pailot render | head`) is not an error worth a message.
    if let Err(e) = written
        && e.kind() != std::io::ErrorKind::BrokenPipe
    {
        return Err(e.into());
    }
    Ok(ExitCode::SUCCESS)
}
