//! Uninstall: delete the inventory's members chart by chart in reverse dependency order, then the ApplySet parent.

use std::collections::BTreeSet;
use std::time::Duration;

use serde::Serialize;

use super::plan::Plan;
use super::progress::{ChartState, Progress};
use super::{Error, Server, Step, list_members, prune, server_err};
use crate::inventory::{self, Inventory};

/// What `uninstall` did.
#[derive(Clone, Debug, Serialize, Default)]
pub struct UninstallReport {
    pub deleted: Vec<String>,
    pub kept: Vec<String>,
    pub errors: Vec<String>,
    /// True when the ApplySet parent was deleted too (nothing left in it).
    pub parent_deleted: bool,
}

/// Delete the inventory's members (only those of `only_chart` when given), charts in reverse dependency order,
/// waiting for each chart's deletions; protected kinds stay unless `allow_protected`. The caller has found
/// the parent (`inventory::locate`); a missing parent is reported by it, not here.
pub async fn uninstall(
    server: &Server,
    plan: &Plan,
    inv: &Inventory,
    only_chart: Option<&str>,
    allow_protected: bool,
    timeout: Duration,
    progress: &Progress,
) -> Result<UninstallReport, Error> {
    let err = server_err(Step::Inventory);
    let pid = inv.parent_id();
    let mut out = UninstallReport::default();
    let Some(parent) = server.get(&pid).await.map_err(&err)? else {
        return Ok(out);
    };
    inv.check_parent(&parent)?;
    let (gks, nss) = inventory::recorded(&parent);
    let members = list_members(server, inv, &gks, &nss).await.map_err(&err)?;
    let chart_label = |m: &prune::Member| prune::chart_label(&m.metadata);
    // Unknown charts first (nothing depends on them), then the plan's charts in reverse order.
    let known: Vec<String> = plan.charts.iter().map(|c| c.name.clone()).collect();
    let mut order: Vec<String> = members
        .iter()
        .map(chart_label)
        .filter(|c| !known.contains(c))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    order.extend(known.into_iter().rev());
    if let Some(only) = only_chart {
        order.retain(|c| c == only);
    }
    for chart in &order {
        let mine: Vec<&prune::Member> = members
            .iter()
            .filter(|m| &chart_label(m) == chart)
            .collect();
        if mine.is_empty() {
            continue;
        }
        progress.set(chart, ChartState::Applying, "deleting");
        let mut deleted = Vec::new();
        for m in mine {
            if prune::is_protected(&m.id)
                && !allow_protected
                && m.metadata["annotations"][prune::PRUNE_ANNOTATION].as_str() != Some("allow")
            {
                out.kept.push(m.id.to_string());
                continue;
            }
            match server.delete(&m.id).await {
                Ok(()) => deleted.push(&m.id),
                Err(e) => out.errors.push(e.to_string()),
            }
        }
        for id in deleted {
            match server.wait_deleted(id, timeout).await {
                Ok(()) => out.deleted.push(id.to_string()),
                Err(e) => out.errors.push(e.to_string()),
            }
        }
        progress.set(
            chart,
            if out.errors.is_empty() {
                ChartState::Healthy
            } else {
                ChartState::Failed
            },
            "deleted",
        );
    }
    if only_chart.is_none() && out.errors.is_empty() && out.kept.is_empty() {
        server.delete(&pid).await.map_err(&err)?;
        out.parent_deleted = true;
    }
    Ok(out)
}
