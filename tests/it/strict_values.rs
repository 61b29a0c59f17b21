//! Bad values are errors, not zeros (issue 12 item 5): capacities and requests that are not
//! Kubernetes quantities, duplicate keys in `values.schema.json`.

use crate::harness::pailot_in;
use crate::limits::{CLUSTER, config_map, repo_with_template};

const BUDGET: &[&str] = &["budget", "--cluster", "clusters/c.yaml"];

#[test]
fn capacities_that_are_not_quantities_stop_budget_at_their_line() {
    for (memory, why) in [
        ("32GiB", "unknown suffix \"GiB\"; write \"Gi\""),
        ("-16Gi", "must not be negative"),
        ("lots", "not a number"),
        ("NaN", "not a number"),
    ] {
        let t = repo_with_template(&config_map("", "x"));
        t.write(
            "clusters/c.yaml",
            &CLUSTER.replace("{memory: 32Gi,", &format!("{{memory: {memory},")),
        );
        let r = pailot_in(t.path(), BUDGET);
        assert_eq!(r.code, 2, "{memory}: {}{}", r.stdout, r.stderr);
        assert!(
            r.stderr.contains("clusters/c.yaml:9:"),
            "{memory}: {}",
            r.stderr
        );
        assert!(r.stderr.contains(why), "{memory}: {}", r.stderr);
        assert!(!r.stdout.contains("FITS") && !r.stdout.contains("OVER"));
    }
}

fn deployment(memory: &str) -> String {
    format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\nspec:\n  template:\n    spec:\n      containers:\n        - name: main\n          resources:\n            requests:\n              memory: {memory}\n"
    )
}

#[test]
fn a_request_that_is_not_a_quantity_stops_budget_naming_object_and_pointer() {
    let t = repo_with_template(&deployment("64GiB"));
    let r = pailot_in(t.path(), BUDGET);
    assert_eq!(r.code, 2, "{}{}", r.stdout, r.stderr);
    for needle in [
        "charts/web/templates/cm.yaml",
        "Deployment/default/web",
        "/spec/template/spec/containers/0/resources/requests/memory",
        "invalid quantity \"64GiB\"",
    ] {
        assert!(r.stderr.contains(needle), "lacks {needle}: {}", r.stderr);
    }
    let t = repo_with_template(&deployment("4Gi"));
    let r = pailot_in(t.path(), BUDGET);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("4.0 / 32.0"), "{}", r.stdout);
}

#[test]
fn a_duplicate_key_in_the_values_schema_is_an_error() {
    let t = repo_with_template(&config_map("", "{{ values.replicas }}"));
    t.write("charts/web/values.yaml", "replicas: 2\n");
    t.write(
        "charts/web/values.schema.json",
        "{\n  \"type\": \"object\",\n  \"properties\": {\n    \"replicas\": {\"type\": \"string\"},\n    \"replicas\": {\"type\": \"integer\"}\n  }\n}\n",
    );
    let r = pailot_in(t.path(), &["render", "--cluster", "clusters/c.yaml"]);
    assert_eq!(r.code, 2, "{}{}", r.stdout, r.stderr);
    assert!(
        r.stderr.contains("charts/web/values.schema.json:5:"),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr
            .contains("duplicate key \"replicas\" in the object at /properties"),
        "{}",
        r.stderr
    );
}
