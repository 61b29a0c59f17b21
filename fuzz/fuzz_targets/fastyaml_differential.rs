//! Differential: whatever `chart::fastyaml` accepts, serde-saphyr reads the same (and accepts);
//! the item lines it records for overlays match serde-saphyr's spans; the whole reading path
//! (`chart::parse_yaml_documents`) never panics.

#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fn serde_saphyr_reads(text: &str) -> Result<Vec<Value>, String> {
    serde_saphyr::from_multiple_with_options::<Value>(text, pailot::chart::yaml::options())
        .map(|d| d.into_iter().filter(|v| !v.is_null()).collect())
        .map_err(|e| e.to_string())
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Some(fast) = pailot::chart::fastyaml::parse_stream(text) {
        let slow = serde_saphyr_reads(text);
        assert_eq!(Ok(fast), slow, "fast reader and serde-saphyr differ on {text:?}");
    }
    if let Some((v, lines)) = pailot::chart::fastyaml::parse_document_with_lines(text, 1) {
        let slow: Vec<serde_saphyr::Spanned<serde::de::IgnoredAny>> =
            match serde_saphyr::from_str_with_options(text, pailot::chart::yaml::options()) {
                Ok(s) => s,
                Err(_) => return, // not a sequence: nothing to compare
            };
        if let Some(items) = v.as_array() {
            assert_eq!(items.len(), slow.len(), "{text:?}");
            for (i, s) in slow.iter().enumerate() {
                assert_eq!(
                    lines.get(&format!("/{i}")),
                    Some(s.referenced.line() as usize),
                    "item {i} of {text:?}"
                );
            }
        }
    }
    let _ = pailot::chart::parse_yaml_documents(text, "fuzz.yaml");
});
