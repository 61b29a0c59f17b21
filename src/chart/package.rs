//! Reproducible chart archives: sorted entries, mtime 0, uid/gid 0, fixed modes, fixed gzip header.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use sha2::Digest as _;

use crate::diag::InputError;

/// A written archive.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Package {
    pub path: PathBuf,
    /// Hex sha256 of the archive bytes.
    pub sha256: String,
}

/// Archive bytes of the chart in `dir`: `<name>/...` entries in path order, directories 0755,
/// files 0644 (0755 when executable), owners 0, mtime 0, gzip header without name or time.
pub fn archive_bytes(dir: &Path, name: &str) -> Result<Vec<u8>, InputError> {
    let mut entries = Vec::new();
    collect(dir, dir, &mut entries)
        .map_err(|e| InputError::new(dir, format!("cannot read chart directory: {e}")))?;
    entries.sort();
    let gz = flate2::GzBuilder::new()
        .mtime(0)
        .operating_system(255)
        .write(Vec::new(), flate2::Compression::best());
    let mut tar = tar::Builder::new(gz);
    tar.mode(tar::HeaderMode::Deterministic);
    for (rel, is_dir) in entries {
        let full = dir.join(&rel);
        let archived = format!("{name}/{rel}");
        let mut h = tar::Header::new_gnu();
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        let io = |e: std::io::Error| InputError::new(&full, format!("cannot archive: {e}"));
        if is_dir {
            h.set_entry_type(tar::EntryType::Directory);
            h.set_mode(0o755);
            h.set_size(0);
            tar.append_data(&mut h, format!("{archived}/"), std::io::empty())
                .map_err(io)?;
        } else {
            let data = std::fs::read(&full).map_err(io)?;
            h.set_entry_type(tar::EntryType::Regular);
            h.set_mode(if is_executable(&full) { 0o755 } else { 0o644 });
            h.set_size(data.len() as u64);
            tar.append_data(&mut h, &archived, data.as_slice())
                .map_err(io)?;
        }
    }
    let gz = tar
        .into_inner()
        .map_err(|e| InputError::new(dir, format!("cannot archive: {e}")))?;
    gz.finish()
        .map_err(|e| InputError::new(dir, format!("cannot compress: {e}")))
}

/// Write `<name>-<version>.tgz` for the chart in `dir` into `dest` and return its path and sha256.
pub fn package_chart(
    dir: &Path,
    dest: &Path,
    keyring: &crate::sops::Keyring,
) -> Result<Package, InputError> {
    let root = dir.parent().and_then(Path::parent).unwrap_or(dir);
    let meta = super::load::load_meta(root, dir)?;
    // A chart that does not load (bad templates, values, schema) is not packaged.
    super::load::load_chart_with(root, dir, keyring)?;
    let bytes = archive_bytes(dir, &meta.name)?;
    std::fs::create_dir_all(dest)
        .map_err(|e| InputError::new(dest, format!("cannot create directory: {e}")))?;
    let path = dest.join(format!("{}-{}.tgz", meta.name, meta.version));
    let mut f = std::fs::File::create(&path)
        .map_err(|e| InputError::new(&path, format!("cannot write: {e}")))?;
    f.write_all(&bytes)
        .map_err(|e| InputError::new(&path, format!("cannot write: {e}")))?;
    Ok(Package {
        path,
        sha256: hex::encode(sha2::Sha256::digest(&bytes)),
    })
}

fn is_executable(p: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::metadata(p)
            .map(|m| m.permissions().mode() & 0o111 != 0)
            .unwrap_or(false)
    }
    #[cfg(not(unix))]
    {
        let _ = p;
        false
    }
}

fn collect(root: &Path, dir: &Path, out: &mut Vec<(String, bool)>) -> std::io::Result<()> {
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let p = e.path();
        let name = e.file_name().to_string_lossy().into_owned();
        if name == ".git" || name.ends_with(".tgz") {
            continue;
        }
        let rel = super::rel_path(root, &p);
        let ft = e.file_type()?;
        if ft.is_dir() {
            out.push((rel, true));
            collect(root, &p, out)?;
        } else if p.is_file() {
            out.push((rel, false));
        }
    }
    Ok(())
}
