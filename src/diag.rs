//! Input diagnostics: one error type that names the file, the place and the object.

use std::fmt;
use std::path::PathBuf;

/// An error in something the user wrote (a chart, an overlay, a cluster file, a patch).
///
/// Every input error reaching the CLI is one of these, so that the message always says
/// *where* (file, line/column or patch/op index, JSON pointer) and *what* (the object).
/// The CLI exits with code 2 for it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct InputError {
    /// File the input came from, relative to the repository root where possible.
    pub file: PathBuf,
    /// 1-based line in `file`, when the input is YAML/JSON text.
    pub line: Option<usize>,
    /// 1-based column in `file`.
    pub column: Option<usize>,
    /// Structured place inside the file, e.g. `patch 2 op 0` or `values.zookeeper`.
    pub place: Option<String>,
    /// JSON pointer inside the object (or document) concerned.
    pub pointer: Option<String>,
    /// The Kubernetes object concerned, as `Kind/namespace/name` (or `Kind/name`).
    pub object: Option<String>,
    /// What is wrong, as a lowercase fact.
    pub message: String,
}

impl InputError {
    /// A new error about `file` with `message`; add the place with the builder methods.
    pub fn new(file: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        InputError {
            file: file.into(),
            line: None,
            column: None,
            place: None,
            pointer: None,
            object: None,
            message: message.into(),
        }
    }
    pub fn at(mut self, line: usize, column: usize) -> Self {
        self.line = Some(line);
        self.column = Some(column);
        self
    }
    pub fn place(mut self, place: impl Into<String>) -> Self {
        self.place = Some(place.into());
        self
    }
    pub fn pointer(mut self, pointer: impl Into<String>) -> Self {
        self.pointer = Some(pointer.into());
        self
    }
    pub fn object(mut self, object: impl Into<String>) -> Self {
        self.object = Some(object.into());
        self
    }
}

impl fmt::Display for InputError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
            if let Some(col) = self.column {
                write!(f, ":{col}")?;
            }
        }
        write!(f, ":")?;
        if let Some(place) = &self.place {
            write!(f, " {place}")?;
        }
        if let Some(object) = &self.object {
            write!(f, " ({object})")?;
        }
        if let Some(pointer) = &self.pointer {
            write!(f, " at {pointer}")?;
        }
        if self.place.is_some() || self.object.is_some() || self.pointer.is_some() {
            write!(f, ":")?;
        }
        write!(f, " {}", self.message)
    }
}

impl std::error::Error for InputError {}
