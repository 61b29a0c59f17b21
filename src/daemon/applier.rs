//! The apply engine (`crate::apply`) behind the loop's `Applier`: a lazily connected client, the inventory found once, and the drift watch.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OnceCell, mpsc, watch};

use super::config::Config;
use super::drift;
use super::reconcile::{Applier, Trigger};
use crate::apply::plan::Plan;
use crate::apply::progress::Progress;
use crate::apply::{self, ApplyReport, Server, Stop};
use crate::cluster::Cluster;
use crate::failure::{Failure, Reason, Stage};
use crate::inventory::{GroupKind, Inventory};

/// After a stop request, how long the engine may take to finish the objects in flight (normally
/// milliseconds: one SSA call each) before it is dropped; only a hung API call reaches it.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// A lazily connected API client and discovery cache (the daemon starts without the API server).
pub struct KubeAccess {
    kubeconfig: Option<PathBuf>,
    server: OnceCell<Server>,
}

impl KubeAccess {
    pub fn new(kubeconfig: Option<PathBuf>) -> Self {
        KubeAccess {
            kubeconfig,
            server: OnceCell::new(),
        }
    }

    /// A client (for leader election); not cached.
    pub async fn client(&self) -> Result<kube::Client, Failure> {
        crate::kube_client::client(self.kubeconfig.as_deref())
            .await
            .map_err(|e| Failure::new(Stage::Apply, Reason::ApiUnreachable, e.to_string()))
    }

    /// The client with its discovery cache, connected on first use.
    pub async fn server(&self) -> Result<&Server, Failure> {
        self.server
            .get_or_try_init(|| async {
                let client = self.client().await?;
                Server::new(client)
                    .await
                    .map_err(|e| Failure::new(Stage::Apply, e.kind().into(), e.to_string()))
            })
            .await
    }
}

/// The apply engine for the reconcile loop.
pub struct KubeApplier {
    pub kube: Arc<KubeAccess>,
    pub config: watch::Receiver<Arc<Config>>,
    /// Where the drift watch sends `Trigger::Drift`.
    pub triggers: mpsc::Sender<Trigger>,
    /// The drift watch and the kinds it covers; restarted when the kinds change.
    drift_watch: Mutex<Option<(BTreeSet<GroupKind>, tokio::task::JoinHandle<()>)>>,
    /// The inventory found for a cluster name (looked up once per name).
    inventory: Mutex<Option<(String, Inventory)>>,
}

impl KubeApplier {
    pub fn new(
        kube: Arc<KubeAccess>,
        config: watch::Receiver<Arc<Config>>,
        triggers: mpsc::Sender<Trigger>,
    ) -> Self {
        KubeApplier {
            kube,
            config,
            triggers,
            drift_watch: Mutex::new(None),
            inventory: Mutex::new(None),
        }
    }

    fn apply_config(&self, dry_run: bool, stop: Stop) -> apply::Config {
        let c = self.config.borrow();
        apply::Config {
            // The daemon is the owner of what it renders: take fields back from `kubectl scale` & co.
            force_conflicts: true,
            prune: c.reconcile.prune && !dry_run,
            wait: c.reconcile.wait && !dry_run,
            timeout: c.reconcile.timeout,
            dry_run,
            prune_limits: apply::prune::Config {
                max_objects: c.reconcile.mass_prune_threshold,
                ..Default::default()
            },
            stop,
            ..Default::default()
        }
    }

    /// Watch the plan's kinds for changes by others (restarted when the kinds change).
    fn ensure_drift_watch(&self, server: &Server, plan: &Plan, inv: &Inventory) {
        let kinds = drift::group_kinds(plan);
        let mut guard = self.drift_watch.lock().unwrap_or_else(|e| e.into_inner());
        if guard
            .as_ref()
            .is_some_and(|(k, t)| *k == kinds && !t.is_finished())
        {
            return;
        }
        if let Some((_, t)) = guard.take() {
            t.abort();
        }
        let task = tokio::spawn(drift::watch(
            server.clone(),
            kinds.clone(),
            inv.member_selector(),
            self.triggers.clone(),
            Duration::from_millis(500),
        ));
        *guard = Some((kinds, task));
    }
}

impl Drop for KubeApplier {
    fn drop(&mut self) {
        if let Some((_, t)) = self
            .drift_watch
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            t.abort();
        }
    }
}

impl Applier for KubeApplier {
    async fn inventory(&self, cluster: &Cluster) -> Result<Inventory, Failure> {
        if let Some((name, inv)) = &*self.inventory.lock().unwrap_or_else(|e| e.into_inner())
            && name == &cluster.name
            && inv.namespace == cluster.namespace
        {
            return Ok(inv.clone());
        }
        let server = self.kube.server().await?;
        let located = apply::locate_inventory(server, cluster).await?;
        if let apply::Found::Adopted { from } = &located.found {
            tracing::warn!(inventory = %located.inventory.parent_name(), from = %from, rule = %cluster.namespace,
                "using the inventory an earlier pailot left in another namespace (adopted where it is, not duplicated)");
        }
        *self.inventory.lock().unwrap_or_else(|e| e.into_inner()) =
            Some((cluster.name.clone(), located.inventory.clone()));
        Ok(located.inventory)
    }

    async fn apply(
        &self,
        plan: &Plan,
        inventory: &Inventory,
        stop: Stop,
        progress: &Progress,
    ) -> Result<ApplyReport, Failure> {
        let server = self.kube.server().await?;
        let cfg = self.apply_config(false, stop.clone());
        let work = run_engine(server, plan, inventory, &cfg, progress);
        tokio::pin!(work);
        let result = tokio::select! {
            r = &mut work => r,
            _ = stop.wait() => {
                match tokio::time::timeout(STOP_GRACE, &mut work).await {
                    Ok(r) => r,
                    Err(_) => {
                        tracing::warn!(grace_s = STOP_GRACE.as_secs(), "the apply did not stop in time (an API call hangs); dropped");
                        return Ok(ApplyReport { stopped: true, ..Default::default() });
                    }
                }
            }
        };
        let report = result?;
        if report.ok() && !report.stopped {
            self.ensure_drift_watch(server, plan, inventory);
        }
        Ok(report)
    }

    async fn drift(&self, plan: &Plan, inventory: &Inventory) -> Result<ApplyReport, Failure> {
        let server = self.kube.server().await?;
        let cfg = self.apply_config(true, Stop::never());
        run_engine(server, plan, inventory, &cfg, &Progress::quiet())
            .await
            .map_err(|e| Failure {
                stage: Stage::Drift,
                ..e.into()
            })
    }
}

/// Run the apply engine; boxed so its future is checked for `Send` with concrete lifetimes.
fn run_engine<'a>(
    server: &'a Server,
    plan: &'a Plan,
    inv: &'a Inventory,
    cfg: &'a apply::Config,
    progress: &'a Progress,
) -> std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<ApplyReport, apply::Error>> + Send + 'a>,
> {
    Box::pin(apply::apply(server, plan, inv, cfg, progress))
}
