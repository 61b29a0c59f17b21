//! Template rendering under the limits: any template text either renders into objects or fails
//! with an input error naming the template, within the fuel and output limits; nothing panics,
//! hangs or grows without bound.

#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use pailot::chart::{RenderContext, load_chart, merge_values, render_chart};

fn repo() -> &'static tempfile::TempDir {
    static REPO: OnceLock<tempfile::TempDir> = OnceLock::new();
    REPO.get_or_init(|| {
        // Small limits keep each run short: the point is that they hold, not their size.
        pailot::limits::Limits {
            template_fuel: 200_000,
            rendered_output: 1 << 20,
            ..Default::default()
        }
        .install();
        let d = tempfile::tempdir().unwrap();
        let chart = d.path().join("charts/web");
        std::fs::create_dir_all(chart.join("templates")).unwrap();
        std::fs::create_dir_all(chart.join("files")).unwrap();
        std::fs::write(
            chart.join("Chart.yaml"),
            "apiVersion: pailot.dev/v1\nname: web\nversion: 0.1.0\n",
        )
        .unwrap();
        std::fs::write(chart.join("values.yaml"), "a: 1\nlist: [x, y]\nm: {k: v}\n").unwrap();
        std::fs::write(chart.join("files/f.txt"), "file text\n").unwrap();
        d
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let d = repo();
    let chart_dir = d.path().join("charts/web");
    std::fs::write(chart_dir.join("templates/t.yaml"), text).unwrap();
    let Ok(chart) = load_chart(d.path(), &chart_dir) else {
        return;
    };
    let cluster = pailot::chart::lint::sample_cluster();
    let ctx = RenderContext {
        cluster: cluster.template_context(),
        release: serde_json::json!({"name": "c", "namespace": "default", "revision": "r"}),
        record_origins: data.first().is_some_and(|b| b % 2 == 0),
    };
    let merged = merge_values(&[chart.default_layer()]);
    if let Err(e) = render_chart(&chart, &merged, &ctx) {
        assert!(e.file.starts_with("charts/web"), "{e}");
    }
});
