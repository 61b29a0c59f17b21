//! `pailot budget`: requests/limits per machine vs capacity.

use std::process::ExitCode;

use super::{Output, RepoArgs};
use crate::budget::{Budget, compute};

#[derive(clap::Args, Debug)]
pub struct BudgetArgs {
    #[command(flatten)]
    pub repo: RepoArgs,
    #[arg(long, short = 'o', value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

fn gib(bytes: u64) -> String {
    format!("{:.1}", bytes as f64 / (1024.0 * 1024.0 * 1024.0))
}

fn cpu(milli: u64) -> String {
    if milli.is_multiple_of(1000) {
        format!("{}", milli / 1000)
    } else {
        format!("{milli}m")
    }
}

fn table(rows: &[Vec<String>]) -> String {
    let widths: Vec<usize> = (0..rows[0].len())
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        out.push_str(line.join("   ").trim_end());
        out.push('\n');
    }
    out
}

/// The kubectl-like text form: one summary row per machine, then what runs on each.
pub fn render_table(b: &Budget) -> String {
    let mut rows = vec![
        [
            "MACHINE",
            "MEMORY REQUESTS (GiB)",
            "MEMORY LIMITS (GiB)",
            "CPU REQUESTS",
            "CPU LIMITS",
            "GPU",
            "STATUS",
        ]
        .map(String::from)
        .to_vec(),
    ];
    for m in &b.machines {
        let pct = |a: u64, c: u64| {
            a.saturating_mul(100)
                .checked_div(c)
                .map_or_else(|| "-".to_string(), |p| format!("{p}%"))
        };
        rows.push(vec![
            m.machine.clone(),
            format!(
                "{} / {} ({})",
                gib(m.requests_memory),
                gib(m.capacity_memory),
                pct(m.requests_memory, m.capacity_memory)
            ),
            format!("{} / {}", gib(m.limits_memory), gib(m.capacity_memory)),
            format!(
                "{} / {}",
                cpu(m.requests_cpu_milli),
                cpu(m.capacity_cpu_milli)
            ),
            cpu(m.limits_cpu_milli),
            format!("{} / {}", m.requests_gpu, m.capacity_gpu),
            if m.fits { "FITS".into() } else { "OVER".into() },
        ]);
    }
    let mut out = table(&rows);
    for m in &b.machines {
        out.push_str(&format!("\n{}:\n", m.machine));
        let mut items: Vec<_> = m.items.iter().collect();
        items.sort_by(|a, b| {
            b.request_memory
                .cmp(&a.request_memory)
                .then(a.object.cmp(&b.object))
        });
        let mut rows = vec![
            [
                "OBJECT",
                "CONTAINER",
                "MEM REQUEST",
                "MEM LIMIT",
                "CPU REQUEST",
                "GPU",
            ]
            .map(String::from)
            .to_vec(),
        ];
        for it in items {
            let mib = |b: u64| {
                if b == 0 {
                    "-".to_string()
                } else {
                    format!("{}Mi", b / (1024 * 1024))
                }
            };
            rows.push(vec![
                if it.replica > 0 {
                    format!("{} #{}", it.object, it.replica)
                } else {
                    it.object.clone()
                },
                it.container.clone(),
                mib(it.request_memory),
                mib(it.limit_memory),
                cpu(it.request_cpu_milli),
                it.request_gpu.to_string(),
            ]);
        }
        for line in table(&rows).lines() {
            out.push_str("  ");
            out.push_str(line);
            out.push('\n');
        }
    }
    if !b.unplaced.is_empty() {
        out.push_str("\nnot placed (no machine matches the node selector/affinity):\n");
        for it in &b.unplaced {
            out.push_str(&format!("  {} {}\n", it.object, it.container));
        }
    }
    out
}

pub fn run(args: BudgetArgs) -> anyhow::Result<ExitCode> {
    let _bounds = crate::limits::Limits::current().enforce("pailot budget");
    let (cluster, set) = crate::render::render(&args.repo.request())?;
    let budget = compute(&cluster, &set)?;
    let text = match args.output {
        Output::Table => render_table(&budget),
        Output::Json => {
            let mut s = serde_json::to_string_pretty(&budget)?;
            s.push('\n');
            s
        }
        Output::Yaml => crate::chart::to_yaml_string(&serde_json::to_value(&budget)?),
    };
    print!("{text}");
    Ok(if budget.fits() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(super::EXIT_DIFF)
    })
}
