//! `pailot diff` against the real control plane: out-of-band edits show with the field and the other manager,
//! Secret values never show, exit codes 0/1/2; `apply` restores the edit.

use crate::apply::{FixtureRepo, need_cluster, with_action};

#[test]
fn out_of_band_scale_shows_in_diff_and_apply_restores_it() {
    let c = need_cluster!();
    let ns = c.namespace("diff-scale");
    let n = ns.name.clone();
    let repo = FixtureRepo::new(&n);
    repo.apply_json(&c, &[], 0);
    let clean = repo.pailot(&c, "diff", &[]);
    assert_eq!(
        clean.code, 0,
        "no change expected\n{}{}",
        clean.stdout, clean.stderr
    );

    let r = c.kubectl(&["scale", "deployment/db", "-n", &n, "--replicas=3"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let d = repo.pailot(&c, "diff", &[]);
    assert_eq!(d.code, 1, "{}{}", d.stdout, d.stderr);
    assert!(
        d.stdout
            .contains(&format!("~ Deployment/{n}/db (chart db) configured")),
        "{}",
        d.stdout
    );
    assert!(
        d.stdout
            .contains("/spec/replicas: 3 -> 1   [owned by kubectl]"),
        "{}",
        d.stdout
    );
    assert!(d.stdout.contains("prune: 0 object(s)"), "{}", d.stdout);

    // Without --force-conflicts the conflict is an error naming the manager and the field.
    let a = repo.pailot(&c, "apply", &[]);
    assert_eq!(a.code, 1, "{}{}", a.stdout, a.stderr);
    assert!(
        a.stderr
            .contains("conflict with field manager(s) kubectl: .spec.replicas"),
        "{}",
        a.stderr
    );
    let report = repo.apply_json(&c, &["--force-conflicts"], 0);
    assert_eq!(
        with_action(&report, "configured"),
        vec![format!("Deployment/{n}/db")]
    );
    assert_eq!(c.get(&n, "deployment/db").unwrap()["spec"]["replicas"], 1);
    assert_eq!(repo.pailot(&c, "diff", &[]).code, 0);
}

#[test]
fn diff_masks_secrets_and_lists_prunes() {
    let c = need_cluster!();
    let ns = c.namespace("diff-secret");
    let n = ns.name.clone();
    let repo = FixtureRepo::new(&n);
    repo.apply_json(&c, &[], 0);
    repo.set(&["without-web"], "  db: {replicas: 2}\n");
    let d = repo.pailot(&c, "diff", &[]);
    assert_eq!(d.code, 1, "{}{}", d.stdout, d.stderr);
    assert!(d.stdout.contains("prune: 4 object(s)"), "{}", d.stdout);
    assert!(
        d.stdout.contains(&format!("- Secret/{n}/web-secret")),
        "{}",
        d.stdout
    );
    assert!(d.stdout.contains("/spec/replicas: 1 -> 2"), "{}", d.stdout);
    // diff changes nothing.
    assert!(c.get(&n, "secret/web-secret").is_some());
    repo.set(&["all"], "  web: {password: brand-new-secret}\n");
    let d = repo.pailot(&c, "diff", &["-o", "json"]);
    assert_eq!(d.code, 1, "{}{}", d.stdout, d.stderr);
    assert!(
        !d.stdout.contains("brand-new-secret") && !d.stdout.contains("s3cr3t-value"),
        "secret leaked:\n{}",
        d.stdout
    );
    let text = repo.pailot(&c, "diff", &[]);
    assert!(
        !text.stdout.contains("brand-new-secret")
            && !text.stdout.contains("YnJhbmQtbmV3LXNlY3JldA"),
        "{}",
        text.stdout
    );
    assert!(
        text.stdout.contains(&format!("Secret/{n}/web-secret")),
        "{}",
        text.stdout
    );
}

#[test]
fn diff_exits_2_on_error() {
    let c = need_cluster!();
    let ns = c.namespace("diff-error");
    let repo = FixtureRepo::new(&ns.name);
    repo.tree
        .write("charts/db/templates/broken.yaml", "{{ nope.nope }}\n");
    assert_eq!(repo.pailot(&c, "diff", &[]).code, 2);
}
