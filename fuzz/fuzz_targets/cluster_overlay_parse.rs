//! Cluster and overlay parsing: any text either parses and compiles (targets, selectors, ops,
//! quantities) or is an input error; nothing panics. The first byte picks which.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    if which % 2 == 0 {
        if let Ok(c) = pailot::overlay::parse_yaml::<pailot::cluster::Cluster>(text, "c.yaml") {
            let _ = c.template_context();
            for m in &c.machines {
                let _ = (m.capacity.memory.units(), m.capacity.cpu.millis(), m.node_labels());
            }
        }
    } else {
        let root = std::path::Path::new("/nonexistent-pailot-fuzz-repo");
        if let Ok(o) = pailot::overlay::compile_overlay(root, "fuzz", text) {
            let available = ["a".to_string(), "b".to_string()].into_iter().collect();
            let _ = pailot::overlay::chart_set(std::slice::from_ref(&o), &available);
            let _ = pailot::overlay::value_layers(std::slice::from_ref(&o), "a");
        }
    }
});
