//! JSON Schemas of the input file formats, generated from the Rust types (`pailot schema`).

use std::path::{Path, PathBuf};

use schemars::JsonSchema;

/// Why schemas could not be written or checked.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// One generated schema file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SchemaFile {
    /// File name inside the schema directory, e.g. `cluster.schema.json`.
    pub name: &'static str,
    /// Pretty JSON with a trailing newline.
    pub content: String,
}

fn render<T: JsonSchema>(name: &'static str) -> SchemaFile {
    let schema = schemars::schema_for!(T);
    let mut content = serde_json::to_string_pretty(&schema).unwrap_or_else(|_| "{}".into());
    content.push('\n');
    SchemaFile { name, content }
}

/// Every schema pailot publishes, in file-name order.
pub fn all() -> Vec<SchemaFile> {
    let mut v = vec![
        render::<crate::chart::ChartMeta>("chart.schema.json"),
        render::<crate::cluster::Cluster>("cluster.schema.json"),
        render::<crate::daemon::config::RawConfig>("daemon-config.schema.json"),
        render::<crate::overlay::Overlay>("overlay.schema.json"),
    ];
    v.sort_by_key(|s| s.name);
    v
}

/// Write every schema into `out` (created when missing); returns the paths written.
pub fn write(out: &Path) -> Result<Vec<PathBuf>, Error> {
    std::fs::create_dir_all(out).map_err(|source| Error::Write {
        path: out.to_path_buf(),
        source,
    })?;
    let mut written = Vec::new();
    for s in all() {
        let path = out.join(s.name);
        std::fs::write(&path, &s.content).map_err(|source| Error::Write {
            path: path.clone(),
            source,
        })?;
        written.push(path);
    }
    Ok(written)
}

/// Paths in `out` that are missing or differ from what `write` would produce.
pub fn stale(out: &Path) -> Vec<PathBuf> {
    all()
        .into_iter()
        .filter_map(|s| {
            let path = out.join(s.name);
            match std::fs::read_to_string(&path) {
                Ok(c) if c == s.content => None,
                _ => Some(path),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schemas_are_deterministic_and_describe_the_types() {
        let a = all();
        assert_eq!(a, all());
        let cluster = a.iter().find(|s| s.name == "cluster.schema.json").unwrap();
        let v: serde_json::Value = serde_json::from_str(&cluster.content).unwrap();
        assert!(v.pointer("/properties/machines").is_some());
        assert!(cluster.content.ends_with("}\n"));
        let chart = a.iter().find(|s| s.name == "chart.schema.json").unwrap();
        let v: serde_json::Value = serde_json::from_str(&chart.content).unwrap();
        assert!(v.pointer("/properties/dependsOn").is_some());
        assert_eq!(v["additionalProperties"], serde_json::json!(false));
    }
}
