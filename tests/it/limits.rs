//! Bounded render work: template fuel, `extends` depth, rendered output and input file sizes,
//! and the wall-clock and memory limits of the offline commands (issue 12 item 1).
//!
//! Each test runs the real `pailot` binary on a small hostile repository, with a timeout of its
//! own, so that a limit that does not hold fails the test instead of hanging or aborting it.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::{Run, TempTree, pailot_bin};

/// A one-machine cluster file rendering overlay `base`.
pub const CLUSTER: &str = "apiVersion: pailot.dev/v1\nkind: Cluster\nname: c\noverlays: [base]\nmachines:\n  - name: n1\n    address: 10.0.0.1\n    roles: [k8s-master, pai-master, pai-worker]\n    capacity: {memory: 32Gi, cpu: \"8\"}\n";

/// A repository with chart `web` (its template `cm.yaml` is `template`), overlay `base`
/// including it, and `clusters/c.yaml`.
pub fn repo_with_template(template: &str) -> TempTree {
    let t = TempTree::new();
    t.write(
        "charts/web/Chart.yaml",
        "apiVersion: pailot.dev/v1\nname: web\nversion: 0.1.0\n",
    );
    t.write("charts/web/templates/cm.yaml", template);
    t.write(
        "overlays/base/overlay.yaml",
        "apiVersion: pailot.dev/v1\nkind: Overlay\ncharts: {include: [web]}\n",
    );
    t.write("clusters/c.yaml", CLUSTER);
    t
}

/// A ConfigMap template whose `data.x` is `expr`'s output.
pub fn config_map(prefix: &str, expr: &str) -> String {
    format!(
        "{prefix}apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: web\ndata:\n  x: \"{expr}\"\n"
    )
}

/// Run `pailot ARGS` in `dir` with `env`, killed after `timeout` (then `code` is -1 and the
/// elapsed time says so).
pub fn pailot_timed(
    dir: &Path,
    env: &[(&str, &str)],
    args: &[&str],
    timeout: Duration,
) -> (Run, Duration) {
    let start = Instant::now();
    let mut child = Command::new(pailot_bin())
        .current_dir(dir)
        .envs(env.iter().copied())
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run pailot");
    // Drain the pipes on threads so a chatty child cannot block on a full pipe.
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let out_t = std::thread::spawn(move || {
        let mut s = Vec::new();
        std::io::Read::read_to_end(&mut out, &mut s).ok();
        s
    });
    let err_t = std::thread::spawn(move || {
        let mut s = Vec::new();
        std::io::Read::read_to_end(&mut err, &mut s).ok();
        s
    });
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break Some(s);
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let elapsed = start.elapsed();
    let run = Run {
        code: status.and_then(|s| s.code()).unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out_t.join().unwrap()).into_owned(),
        stderr: String::from_utf8_lossy(&err_t.join().unwrap()).into_owned(),
    };
    (run, elapsed)
}

/// Doubles a string 40 times (a loop-scoped `set` would not leak out of the loop: a namespace does).
const DOUBLING: &str = "{% set ns = namespace(s=\"x\") %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}\n";

const RENDER: &[&str] = &["render", "--cluster", "clusters/c.yaml"];
const LIMIT: Duration = Duration::from_secs(90);

fn assert_input_error(r: &Run, needles: &[&str]) {
    assert_eq!(r.code, 2, "exit code; stderr:\n{}", r.stderr);
    for n in needles {
        assert!(r.stderr.contains(n), "stderr lacks {n:?}:\n{}", r.stderr);
    }
}

#[test]
fn nested_range_loops_run_out_of_fuel_naming_the_template() {
    let t = repo_with_template(&config_map(
        "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}\n",
        "x",
    ));
    let (r, took) = pailot_timed(t.path(), &[], RENDER, LIMIT);
    assert_input_error(
        &r,
        &[
            "charts/web/templates/cm.yaml",
            "fuel",
            "chart web",
            "PAILOT_LIMIT_TEMPLATE_FUEL",
        ],
    );
    assert!(took < Duration::from_secs(30), "took {took:?}");
    // lint reports the same breach as a problem of the chart.
    let (l, _) = pailot_timed(
        t.path(),
        &[],
        &["lint", "--cluster", "clusters/c.yaml"],
        LIMIT,
    );
    assert_eq!(l.code, 1, "{}{}", l.stdout, l.stderr);
    assert!(l.stdout.contains("fuel"), "{}", l.stdout);
}

#[test]
fn doubling_a_string_forty_times_runs_out_of_fuel() {
    let t = repo_with_template(&config_map(DOUBLING, "{{ ns.s | length }}"));
    let (r, took) = pailot_timed(t.path(), &[], RENDER, LIMIT);
    assert_input_error(
        &r,
        &[
            "charts/web/templates/cm.yaml:1:",
            "used up its fuel",
            "set ns.s = ns.s ~ ns.s",
        ],
    );
    assert!(took < Duration::from_secs(30), "took {took:?}");
}

#[test]
fn a_ten_thousand_overlay_extends_chain_is_refused_not_overflowed() {
    let t = repo_with_template(&config_map("", "x"));
    for i in 0..10_000 {
        let extends = if i + 1 < 10_000 {
            format!("extends: [o{}]\n", i + 1)
        } else {
            "charts: {include: [web]}\n".to_string()
        };
        t.write(
            &format!("overlays/o{i}/overlay.yaml"),
            &format!("apiVersion: pailot.dev/v1\nkind: Overlay\n{extends}"),
        );
    }
    t.write("clusters/c.yaml", &CLUSTER.replace("[base]", "[o0]"));
    let (r, _) = pailot_timed(t.path(), &[], RENDER, LIMIT);
    assert_input_error(
        &r,
        &[
            "overlays/o31/overlay.yaml",
            "extends[0]",
            "deeper than 32 overlays: o0 -> o1 -> o2 -> ... -> o29 -> o30 -> o31 -> o32",
            "PAILOT_LIMIT_EXTENDS_DEPTH",
        ],
    );
    // A higher limit walks the whole chain without recursion.
    let (r, _) = pailot_timed(
        t.path(),
        &[("PAILOT_LIMIT_EXTENDS_DEPTH", "20000")],
        RENDER,
        LIMIT,
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
}

#[test]
fn rendered_output_over_the_limit_is_refused() {
    let t = repo_with_template(&config_map("# {{ \"x\" * 3000000 }}\n", "x"));
    let (r, _) = pailot_timed(
        t.path(),
        &[("PAILOT_LIMIT_RENDERED_OUTPUT", "2Mi")],
        RENDER,
        LIMIT,
    );
    assert_input_error(
        &r,
        &[
            "charts/web/templates/cm.yaml",
            "rendered output is larger than the limit of 2 MiB",
            "PAILOT_LIMIT_RENDERED_OUTPUT",
        ],
    );
    let (r, _) = pailot_timed(t.path(), &[], RENDER, LIMIT);
    assert_eq!(r.code, 0, "the default allows it: {}", r.stderr);
}

#[test]
fn an_input_file_over_the_limit_is_refused_before_it_is_parsed() {
    let t = repo_with_template(&config_map("", "x"));
    // 17 MiB of values: above the 16 MiB default.
    let mut values = String::with_capacity(17 << 20);
    while values.len() < 17 << 20 {
        values.push_str(&format!("k{}: \"{}\"\n", values.len(), "v".repeat(100)));
    }
    t.write("charts/web/values.yaml", &values);
    let (r, _) = pailot_timed(t.path(), &[], RENDER, LIMIT);
    assert_input_error(
        &r,
        &[
            "charts/web/values.yaml",
            "larger than the input file limit of 16 MiB",
            "PAILOT_LIMIT_INPUT_FILE",
        ],
    );
}

#[test]
fn the_wall_clock_limit_ends_a_render_with_exit_2() {
    let t = repo_with_template(&config_map(
        "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}\n",
        "x",
    ));
    let env = [
        ("PAILOT_LIMIT_WALL_CLOCK", "2s"),
        ("PAILOT_LIMIT_TEMPLATE_FUEL", "1000000000000000"),
    ];
    for cmd in [
        RENDER,
        &["budget", "--cluster", "clusters/c.yaml"],
        &["lint", "--cluster", "clusters/c.yaml"],
    ] {
        let (r, took) = pailot_timed(t.path(), &env, cmd, LIMIT);
        assert_input_error(
            &r,
            &[
                "exceeded its wall-clock limit of 2s while rendering charts/web/templates/cm.yaml",
                "PAILOT_LIMIT_WALL_CLOCK",
            ],
        );
        assert!(took < Duration::from_secs(20), "{cmd:?} took {took:?}");
    }
}

#[test]
fn the_memory_limit_ends_a_render_with_exit_2() {
    let t = repo_with_template(&config_map(DOUBLING, "{{ ns.s | length }}"));
    let env = [
        ("PAILOT_LIMIT_MEMORY", "256Mi"),
        ("PAILOT_LIMIT_TEMPLATE_FUEL", "1000000000000000"),
    ];
    let (r, took) = pailot_timed(t.path(), &env, RENDER, LIMIT);
    assert_input_error(
        &r,
        &[
            "pailot render exceeded its memory limit of 256 MiB",
            "PAILOT_LIMIT_MEMORY",
        ],
    );
    assert!(took < Duration::from_secs(30), "took {took:?}");
}

#[test]
fn a_misspelt_limit_is_a_usage_error() {
    let t = repo_with_template(&config_map("", "x"));
    let (r, _) = pailot_timed(t.path(), &[("PAILOT_LIMIT_MEMORY", "1GiB")], RENDER, LIMIT);
    assert_input_error(&r, &["PAILOT_LIMIT_MEMORY", "1GiB"]);
}

#[test]
fn the_projects_own_repository_renders_far_inside_the_limits() {
    // A tenth of each default still renders every cluster of this repository.
    let env = [
        ("PAILOT_LIMIT_TEMPLATE_FUEL", "500000"),
        ("PAILOT_LIMIT_MEMORY", "128Mi"),
        ("PAILOT_LIMIT_RENDERED_OUTPUT", "6Mi"),
        ("PAILOT_LIMIT_INPUT_FILE", "2Mi"),
        ("PAILOT_LIMIT_WALL_CLOCK", "20s"),
    ];
    let root = crate::harness::repo_root();
    let (r, _) = pailot_timed(&root, &env, &["lint"], LIMIT);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
}
