//! `pailot explain KIND/NAME[.NS] [POINTER]`: field provenance.

use std::process::ExitCode;

use serde::Serialize;
use serde_json::Value;

use super::{Output, RepoArgs, UsageError};
use crate::chart::ValueLayer;
use crate::manifest::{ObjectId, RenderedSet};
use crate::provenance::{FieldHistory, Origin, Step};
use crate::render::{ProvenanceMode, load_inputs, render_inputs};

#[derive(clap::Args, Debug)]
pub struct ExplainArgs {
    #[command(flatten)]
    pub repo: RepoArgs,
    /// Object as KIND/NAME or KIND/NAME.NAMESPACE (e.g. `DaemonSet/zookeeper-ds.default`).
    pub object: String,
    /// JSON pointer inside the object (e.g. `/spec/template/spec/containers/0/resources`); all fields when omitted.
    pub pointer: Option<String>,
    #[arg(long, short = 'o', value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

/// The provenance of one field, as `-o json` prints it.
#[derive(Debug, Serialize)]
pub struct FieldExplanation {
    pub pointer: String,
    pub steps: Vec<Step>,
}

pub fn run(args: ExplainArgs) -> anyhow::Result<ExitCode> {
    // `/` alone reads as "the whole object" (strictly it is the key "" at the root).
    let pointer = args
        .pointer
        .clone()
        .filter(|p| p != "/")
        .unwrap_or_default();
    if !pointer.is_empty() && !pointer.starts_with('/') {
        return Err(UsageError(format!(
            "`{pointer}` is not a JSON pointer (it must start with `/`)"
        ))
        .into());
    }
    let _bounds = crate::limits::Limits::current().enforce("pailot explain");
    let inputs = load_inputs(&args.repo.request())?;
    let set = render_inputs(&inputs, None, ProvenanceMode::Record)?;
    let id = find_object(&set, &args.object)?;
    let obj = &set.objects[&id].object;
    let empty = FieldHistory::default();
    let history = set.provenance.objects.get(&id).unwrap_or(&empty);
    let pointers = history.pointers_under(obj, &pointer);
    if pointers.is_empty() {
        return Err(UsageError(format!("{id} has no field at {pointer}")).into());
    }
    // The value layers of the object's chart, to show every layer that set a values key.
    let layers = inputs
        .charts
        .get(&set.objects[&id].chart)
        .map(|c| inputs.value_layers(c))
        .unwrap_or_default();
    let secrets = crate::mask::secret_pointers(obj, set.provenance.secrets.get(&id));
    let secret_ops = secret_ops(&inputs.overlays);
    let fields: Vec<FieldExplanation> = pointers
        .into_iter()
        .map(|p| {
            let mut steps = expand_value_layers(history.chain(obj, &p), &layers);
            mask_steps(&mut steps, &p, &secrets, &secret_ops);
            FieldExplanation { steps, pointer: p }
        })
        .collect();
    match args.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&fields)?),
        Output::Yaml => print!(
            "{}",
            crate::chart::to_yaml_string(&serde_json::to_value(&fields)?)
        ),
        Output::Table => {
            print!("{}", table(&fields));
            if let [only] = fields.as_slice() {
                println!("\n{}: {}", only.pointer, describe(&only.steps));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Find the object named `KIND/NAME`, `KIND/NAME.NAMESPACE` or `KIND/NAMESPACE/NAME` (kind case-insensitive).
pub fn find_object(set: &RenderedSet, query: &str) -> Result<ObjectId, UsageError> {
    let Some((kind, rest)) = query.split_once('/') else {
        return Err(UsageError(format!(
            "`{query}`: expected KIND/NAME or KIND/NAME.NAMESPACE"
        )));
    };
    let hits: Vec<&ObjectId> = set
        .objects
        .keys()
        .filter(|id| id.kind.eq_ignore_ascii_case(kind))
        .filter(|id| {
            let ns = id.namespace.as_deref().unwrap_or("");
            id.name == rest
                || (!ns.is_empty()
                    && (format!("{}.{ns}", id.name) == rest || format!("{ns}/{}", id.name) == rest))
        })
        .collect();
    // An exact `NAME` match beats `NAME.NS` readings of the same text.
    let exact: Vec<&ObjectId> = hits.iter().copied().filter(|id| id.name == rest).collect();
    let hits = if exact.len() == 1 { exact } else { hits };
    match hits.as_slice() {
        [one] => Ok((*one).clone()),
        [] => {
            let close = close_matches(set, kind, rest);
            let hint = if close.is_empty() {
                String::new()
            } else {
                format!("; close matches: {}", close.join(", "))
            };
            Err(UsageError(format!("no rendered object {query}{hint}")))
        }
        many => {
            let names: Vec<String> = many.iter().map(|id| short_name(id)).collect();
            Err(UsageError(format!(
                "{query} is ambiguous: {}",
                names.join(", ")
            )))
        }
    }
}

/// `Kind/name.namespace`: the form `explain` accepts.
fn short_name(id: &ObjectId) -> String {
    match &id.namespace {
        Some(ns) => format!("{}/{}.{ns}", id.kind, id.name),
        None => format!("{}/{}", id.kind, id.name),
    }
}

fn close_matches(set: &RenderedSet, kind: &str, name: &str) -> Vec<String> {
    let want = format!(
        "{}/{}",
        kind.to_ascii_lowercase(),
        name.to_ascii_lowercase()
    );
    let mut scored: Vec<(usize, String)> = set
        .objects
        .keys()
        .map(|id| {
            let cand = format!(
                "{}/{}",
                id.kind.to_ascii_lowercase(),
                id.name.to_ascii_lowercase()
            );
            let mut d = levenshtein(&want, &cand);
            if id.name.eq_ignore_ascii_case(name)
                || id
                    .name
                    .to_ascii_lowercase()
                    .contains(&name.to_ascii_lowercase())
            {
                d = d.min(2);
            }
            (d, short_name(id))
        })
        .filter(|(d, _)| *d <= want.len() / 3 + 2)
        .collect();
    scored.sort();
    scored.into_iter().take(5).map(|(_, s)| s).collect()
}

fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(ca != *cb))
                .min(prev[j + 1] + 1)
                .min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// A value for a table cell: strings bare, the rest compact JSON, long values cut.
fn cell(v: &Option<Value>, origin: &Origin) -> String {
    let s = match v {
        Some(Value::String(s)) => s.clone(),
        Some(v) => v.to_string(),
        None if matches!(origin.step_kind(), "remove" | "move") => "(removed)".into(),
        None => "(absent)".into(),
    };
    let s = s.replace('\n', "\\n");
    if s.chars().count() > 60 {
        format!("{}…", s.chars().take(59).collect::<String>())
    } else {
        s
    }
}

/// kubectl-style aligned table: POINTER, STEP, VALUE, ORIGIN; one row per step.
pub fn table(fields: &[FieldExplanation]) -> String {
    let mut rows: Vec<[String; 4]> = vec![[
        "POINTER".into(),
        "STEP".into(),
        "VALUE".into(),
        "ORIGIN".into(),
    ]];
    for f in fields {
        if f.steps.is_empty() {
            rows.push([
                f.pointer.clone(),
                "?".into(),
                String::new(),
                "(no recorded origin)".into(),
            ]);
        }
        for (i, s) in f.steps.iter().enumerate() {
            let pointer = if i == 0 {
                f.pointer.clone()
            } else {
                String::new()
            };
            rows.push([
                pointer,
                s.origin.step_kind().to_string(),
                cell(&s.value, &s.origin),
                s.origin.to_string(),
            ]);
        }
    }
    let widths: Vec<usize> = (0..3)
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for r in rows {
        for c in 0..3 {
            out.push_str(&r[c]);
            out.push_str(&" ".repeat(widths[c] - r[c].chars().count() + 2));
        }
        out.push_str(&r[3]);
        out.push('\n');
    }
    out
}

/// One sentence: "1Gi from charts/zk/templates/zk.yaml:42, replaced with 512Mi by overlays/x/overlay.yaml patch 2 op 0".
pub fn describe(steps: &[Step]) -> String {
    let mut parts = Vec::new();
    for (i, s) in steps.iter().enumerate() {
        let v = cell(&s.value, &s.origin);
        parts.push(match (i, &s.origin) {
            (0, Origin::Overlay { .. }) => {
                format!("{v} set by {} {}", s.origin.step_kind(), s.origin)
            }
            (0, _) => format!("{v} from {}", s.origin),
            (_, Origin::Overlay { op_kind, .. }) => match op_kind.as_str() {
                "remove" => format!("removed by {}", s.origin),
                "move" if s.value.is_none() => format!("moved away by {}", s.origin),
                "add" => format!("set to {v} by {}", s.origin),
                "copy" | "move" => format!("{op_kind} of {v} by {}", s.origin),
                _ => format!("replaced with {v} by {}", s.origin),
            },
            (_, Origin::Values { .. }) => format!("overridden with {v} by {}", s.origin),
            (_, _) => format!("{v} from {}", s.origin),
        });
    }
    if parts.is_empty() {
        "no recorded origin".into()
    } else {
        parts.join(", ")
    }
}

/// `(file, patch, op)` of every overlay op whose value was decrypted from a sops patch file.
fn secret_ops(overlays: &[crate::overlay::LoadedOverlay]) -> Vec<(String, usize, usize)> {
    let mut out = Vec::new();
    for o in overlays {
        for p in &o.patches {
            for (oi, op) in p.ops.iter().enumerate() {
                if op.shadow.is_some() {
                    out.push((op.file.clone(), p.index, oi));
                }
            }
        }
    }
    out
}

/// Hide step values that are secret: every step of a secret field (or one holding a secret),
/// and any step whose value came from an encrypted file or op. Origins stay: they name the
/// encrypted file and key.
fn mask_steps(
    steps: &mut [Step],
    pointer: &str,
    secrets: &std::collections::BTreeSet<String>,
    secret_ops: &[(String, usize, usize)],
) {
    let field_secret = crate::mask::touches(pointer, secrets);
    for s in steps {
        let from_secret_op = matches!(&s.origin, Origin::Overlay { file, patch, op, .. }
            if secret_ops.iter().any(|(f, p, o)| f == file && p == patch && o == op));
        if let Some(v) = &s.value {
            if from_secret_op {
                s.value = Some(Value::String(crate::mask::MASK.into()));
            } else if field_secret {
                s.value = Some(crate::mask::mask_value(v, pointer, secrets));
            }
        }
    }
}

/// Replace a `values` step by one step per value layer that set that key (chart values.yaml,
/// overlays, cluster file), oldest first, when the layers agree with the recorded step.
pub fn expand_value_layers(steps: Vec<Step>, layers: &[ValueLayer]) -> Vec<Step> {
    let mut out = Vec::with_capacity(steps.len());
    for step in steps {
        let Origin::Values {
            file,
            key,
            template,
            line,
        } = &step.origin
        else {
            out.push(step);
            continue;
        };
        let ptr: String = key
            .split('.')
            .map(|k| format!("/{}", k.replace('~', "~0").replace('/', "~1")))
            .collect();
        let mut set_by: Vec<Step> = layers
            .iter()
            .filter_map(|l| {
                let v = l.values.pointer(&ptr).filter(|v| !v.is_null())?;
                Some(Step {
                    origin: Origin::Values {
                        file: l.file.clone(),
                        key: key.clone(),
                        template: template.clone(),
                        line: *line,
                    },
                    value: Some(v.clone()),
                })
            })
            .collect();
        let agrees = set_by.last().is_some_and(|last| {
            matches!(&last.origin, Origin::Values { file: f, .. } if f == file)
                && last.value.as_ref().map(scalar_text) == step.value.as_ref().map(scalar_text)
        });
        if agrees && set_by.len() > 1 {
            // A value decrypted from a layer's sops file never shows.
            for (s, l) in set_by.iter_mut().zip(
                layers
                    .iter()
                    .filter(|l| l.values.pointer(&ptr).is_some_and(|v| !v.is_null())),
            ) {
                if crate::mask::touches(&ptr, &l.secret)
                    && let Some(v) = &s.value
                {
                    s.value = Some(crate::mask::mask_value(v, &ptr, &l.secret));
                }
            }
            out.extend(set_by);
        } else {
            out.push(step);
        }
    }
    out
}

fn scalar_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}
