//! Reproducible chart archives: sorted entries, mtime 0, uid/gid 0, fixed modes, fixed gzip header.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use sha2::Digest as _;

use crate::confine::Root;
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
///
/// A symlink is archived as the file or directory it points to when that lies inside the chart;
/// one that resolves outside is an error naming it (a chart's `values.yaml` linked to
/// `/etc/passwd` once ended up in the archive).
pub fn archive_bytes(dir: &Path, name: &str) -> Result<Vec<u8>, InputError> {
    let chart = Root::new(dir, "the chart", &dir.display().to_string())?;
    let mut entries = Vec::new();
    collect(&chart, dir, dir, &mut entries, &mut Default::default())?;
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
            let data = chart.read_bytes(&full, &archived)?;
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
///
/// Nothing is written outside `dest`: the name is a DNS-1123 label and the version a semantic
/// version (checked by `load_meta`; `0.1.0+x/../../pwned` is refused), and the archive is
/// written to a temporary file in `dest` renamed into place, so an existing symlink of that
/// name is replaced rather than followed.
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
    let file_name = format!("{}-{}.tgz", meta.name, meta.version);
    if file_name.contains(['/', '\\']) || file_name.starts_with('.') {
        return Err(InputError::new(
            dir.join("Chart.yaml"),
            format!("`{file_name}` is not a plain file name"),
        ));
    }
    let path = dest.join(&file_name);
    let write_err = |e: std::io::Error| InputError::new(&path, format!("cannot write: {e}"));
    let mut tmp = tempfile::Builder::new()
        .prefix(".pailot-package-")
        .tempfile_in(dest)
        .map_err(write_err)?;
    tmp.write_all(&bytes).map_err(write_err)?;
    tmp.persist(&path).map_err(|e| write_err(e.error))?;
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

/// The entries under `dir` (paths relative to `base`, directory or not), following symlinks
/// that resolve inside `chart`; a directory reached twice is archived once.
fn collect(
    chart: &Root,
    base: &Path,
    dir: &Path,
    out: &mut Vec<(String, bool)>,
    seen: &mut std::collections::HashSet<PathBuf>,
) -> Result<(), InputError> {
    let io = |p: &Path, e: std::io::Error| {
        InputError::new(p, format!("cannot read chart directory: {e}"))
    };
    if let Ok(real) = dir.canonicalize()
        && !seen.insert(real)
    {
        return Ok(());
    }
    let mut entries = std::fs::read_dir(dir)
        .map_err(|e| io(dir, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| io(dir, e))?;
    // Name order, so which of two paths to one directory is archived does not depend on the
    // file system's order.
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let p = e.path();
        let name = e.file_name().to_string_lossy().into_owned();
        if name == ".git" || name.ends_with(".tgz") {
            continue;
        }
        let rel = super::rel_path(base, &p);
        let ft = e.file_type().map_err(|err| io(&p, err))?;
        let (is_dir, is_file) = if ft.is_symlink() {
            let target = p.canonicalize().map_err(|err| {
                InputError::new(&p, format!("cannot archive a dangling symlink: {err}"))
            })?;
            if !chart.contains(&target) {
                return Err(InputError::new(
                    &p,
                    format!(
                        "resolves to {}, outside the chart: a package holds only the chart's own files",
                        target.display()
                    ),
                ));
            }
            (target.is_dir(), target.is_file())
        } else {
            (ft.is_dir(), ft.is_file())
        };
        if is_dir {
            out.push((rel, true));
            collect(chart, base, &p, out, seen)?;
        } else if is_file {
            out.push((rel, false));
        }
    }
    Ok(())
}
