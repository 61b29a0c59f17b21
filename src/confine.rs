//! Reading repository input: every file is opened, then its real path is checked to lie inside
//! the repository (or chart, or `files/` directory) it belongs to, and its size is bounded.
//!
//! A repository is written by whoever can push to it. A symlink committed as `values.yaml`,
//! as a chart directory or as a patch file would otherwise make pailot read — and apply to the
//! cluster — any file the reconciler can read (a client key, `/etc/shadow`). Checking the path
//! text is not enough (`charts/x` may itself be a link), and checking the real path before
//! opening leaves a window in which a link can be swapped, so the check is made on the file
//! actually opened (`/proc/self/fd`). Every read of repository input goes through [`Root`]:
//! chart loading, values, schemas, templates, `files/` reads from templates, overlays, patch
//! files and the cluster file. Sizes are bounded by [`Limits::input_file`] (a 190 MB values file
//! took 2 GB of memory before).

use std::io::Read as _;
use std::path::{Path, PathBuf};

use crate::diag::InputError;
use crate::limits::Limits;

/// A directory input must stay inside, by real path.
#[derive(Clone, Debug)]
pub struct Root {
    real: PathBuf,
    /// What the directory is, for messages: `the repository`, `the chart`, `the chart's files/ directory`.
    what: &'static str,
}

impl Root {
    /// The real path of `dir`; `shown` names it in the error when it cannot be resolved.
    pub fn new(dir: &Path, what: &'static str, shown: &str) -> Result<Root, InputError> {
        let real = dir
            .canonicalize()
            .map_err(|e| InputError::new(shown, format!("cannot resolve {what} directory: {e}")))?;
        Ok(Root { real, what })
    }

    /// The real path of this root.
    pub fn real(&self) -> &Path {
        &self.real
    }

    /// What this root is, for messages (`the repository`).
    pub fn what(&self) -> &'static str {
        self.what
    }

    /// Whether the real path `p` lies inside this root.
    pub fn contains(&self, p: &Path) -> bool {
        p.starts_with(&self.real)
    }

    /// Read `path` as UTF-8 text; `shown` names it in errors (repo-relative).
    pub fn read_text(&self, path: &Path, shown: &str) -> Result<String, InputError> {
        let bytes = self.read_bytes(path, shown)?;
        utf8_text(bytes, shown)
    }

    /// Read `path` (a regular file whose real path lies inside this root, no larger than
    /// [`Limits::input_file`]).
    pub fn read_bytes(&self, path: &Path, shown: &str) -> Result<Vec<u8>, InputError> {
        let (file, _) = self.open(path, shown)?;
        read_bounded(file, shown)
    }

    /// Open `path` and check what was opened: its real path inside this root, a regular file.
    /// Returns the file and its real path.
    pub fn open(&self, path: &Path, shown: &str) -> Result<(std::fs::File, PathBuf), InputError> {
        let file = open_nonblocking(path)
            .map_err(|e| InputError::new(shown, format!("cannot read file: {e}")))?;
        let real = real_path_of(&file, path)
            .map_err(|e| InputError::new(shown, format!("cannot resolve file: {e}")))?;
        if !self.contains(&real) {
            return Err(InputError::new(
                shown,
                format!(
                    "resolves to {}, outside {}: pailot reads no file outside it (a symlink?)",
                    real.display(),
                    self.what
                ),
            ));
        }
        let meta = file
            .metadata()
            .map_err(|e| InputError::new(shown, format!("cannot read file: {e}")))?;
        if !meta.is_file() {
            return Err(InputError::new(shown, "not a regular file"));
        }
        Ok((file, real))
    }
}

/// Read a file given on the command line (not repository input): only the size is bounded.
pub fn read_text_unconfined(path: &Path, shown: &str) -> Result<String, InputError> {
    let file = open_nonblocking(path)
        .map_err(|e| InputError::new(shown, format!("cannot read file: {e}")))?;
    let meta = file
        .metadata()
        .map_err(|e| InputError::new(shown, format!("cannot read file: {e}")))?;
    if !meta.is_file() {
        return Err(InputError::new(shown, "not a regular file"));
    }
    let bytes = read_bounded(file, shown)?;
    utf8_text(bytes, shown)
}

fn read_bounded(file: std::fs::File, shown: &str) -> Result<Vec<u8>, InputError> {
    let limit = Limits::current().input_file;
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    if len > limit {
        return Err(too_large(shown, limit));
    }
    // The size can change between stat and read: read at most one byte past the limit.
    let mut bytes = Vec::with_capacity(len as usize);
    file.take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| InputError::new(shown, format!("cannot read file: {e}")))?;
    if bytes.len() as u64 > limit {
        return Err(too_large(shown, limit));
    }
    Ok(bytes)
}

fn too_large(shown: &str, limit: u64) -> InputError {
    crate::limits::exceeded(
        shown,
        format_args!(
            "file is larger than the input file limit of {}",
            crate::quantity::Bytes(limit)
        ),
        "PAILOT_LIMIT_INPUT_FILE",
    )
}

/// Open for reading without blocking on a FIFO or device (`O_NONBLOCK` does not change reads
/// of regular files).
fn open_nonblocking(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt as _;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
}

/// The real path of an open file: what `/proc/self/fd/N` points at (the file actually opened,
/// whatever happened to `path` since), or `path` resolved when /proc is not mounted.
fn real_path_of(file: &std::fs::File, path: &Path) -> std::io::Result<PathBuf> {
    use std::os::fd::AsRawFd as _;
    match std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd())) {
        Ok(p) if p.is_absolute() => Ok(p),
        _ => path.canonicalize(),
    }
}

/// Whether `path` lexically lies under `dir` (no `..`, both made absolute): input the
/// repository owns, as opposed to a file an operator named outside it.
pub fn lexically_inside(dir: &Path, path: &Path) -> bool {
    let abs = |p: &Path| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
    let (d, p) = (abs(dir), abs(path));
    p.starts_with(&d)
        && !p
            .components()
            .any(|c| matches!(c, std::path::Component::ParentDir))
}

/// `bytes` as text, or an error naming `shown` and the first invalid byte.
fn utf8_text(bytes: Vec<u8>, shown: &str) -> Result<String, InputError> {
    String::from_utf8(bytes).map_err(|e| {
        InputError::new(
            shown,
            format!(
                "not UTF-8 text (invalid byte at offset {})",
                e.utf8_error().valid_up_to()
            ),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn symlinks_out_of_the_root_are_refused_inside_ones_read() {
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("key.pem"), "SECRET").unwrap();
        let repo = tempfile::tempdir().unwrap();
        std::fs::write(repo.path().join("real.yaml"), "a: 1\n").unwrap();
        symlink(outside.path().join("key.pem"), repo.path().join("out.yaml")).unwrap();
        symlink(repo.path().join("real.yaml"), repo.path().join("in.yaml")).unwrap();
        symlink(outside.path(), repo.path().join("dir")).unwrap();
        let root = Root::new(repo.path(), "the repository", ".").unwrap();
        assert_eq!(
            root.read_text(&repo.path().join("in.yaml"), "in.yaml")
                .unwrap(),
            "a: 1\n"
        );
        for rel in ["out.yaml", "dir/key.pem"] {
            let e = root.read_text(&repo.path().join(rel), rel).unwrap_err();
            assert!(e.message.contains("outside the repository"), "{e}");
            assert!(!e.to_string().contains("SECRET"));
        }
        let e = root.read_text(&repo.path().join("dir"), "dir").unwrap_err();
        assert!(e.message.contains("outside"), "{e}");
    }

    #[test]
    fn special_files_are_refused_without_blocking() {
        let repo = tempfile::tempdir().unwrap();
        let fifo = repo.path().join("fifo.yaml");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: mkfifo with a valid C string.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let root = Root::new(repo.path(), "the repository", ".").unwrap();
        let e = root.read_text(&fifo, "fifo.yaml").unwrap_err();
        assert!(e.message.contains("not a regular file"), "{e}");
        let e = read_text_unconfined(Path::new("/dev/zero"), "/dev/zero").unwrap_err();
        assert!(e.message.contains("not a regular file"), "{e}");
    }

    #[test]
    fn lexical_containment() {
        assert!(lexically_inside(
            Path::new("/r"),
            Path::new("/r/clusters/a.yaml")
        ));
        assert!(!lexically_inside(Path::new("/r"), Path::new("/r/../etc/x")));
        assert!(!lexically_inside(Path::new("/r"), Path::new("/etc/x")));
    }
}
