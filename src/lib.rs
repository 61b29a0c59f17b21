//! pailot: charts + layered overlays -> deterministic manifests -> server-side apply -> drift watch.
//!
//! ```text
//!  trigger (notify | poll | webhook | signal)
//!    └─▶ Revision     {commit, checkout dir}                 source
//!    └─▶ Chart[]      {meta, values, templates}              chart        (pure)
//!    └─▶ RenderedSet  {ObjectId → object, provenance}        render + overlay (pure)
//!    └─▶ Plan         {stages, dependency DAG, prunes}       plan         (pure)
//!    └─▶ ApplyReport  {id → created|configured|unchanged|deleted|skipped, health}  apply
//!    └─▶ Inventory    {revision, members}                    inventory (ApplySet parent Secret + state file)
//! ```

// Errors carry the file, place, object and message an operator needs (`InputError`, `Failure`); they are
// built once per failed run, so their size costs nothing and boxing them would only add noise. The
// reconciler's state enum has one live value.
#![allow(clippy::result_large_err, clippy::large_enum_variant)]

pub mod chart;
pub mod cli;
pub mod clock;
pub mod cluster;
pub mod confine;
pub mod diag;
pub mod duration;
pub mod failure;
pub mod manifest;
pub mod mask;
pub mod provenance;
pub mod quantity;
pub mod redact;
pub mod secret;

/// Field manager for every server-side apply pailot makes.
pub const FIELD_MANAGER: &str = "pailot";
/// Version of this build, used in the ApplySet tooling label and `pailot_build_info`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
pub mod apply;
pub mod atomic_file;
pub mod bootstrap;
pub mod budget;
pub mod control;
pub mod daemon;
pub mod history;
pub mod init;
pub mod inventory;
pub mod kube_client;
pub mod limits;
pub mod metrics;
pub mod notification;
pub mod oom;
pub mod order;
pub mod overlay;
pub mod par;
pub mod preflight;
pub mod render;
pub mod rollout;
pub mod schema;
pub mod server;
pub mod sops;
pub mod suspension;
pub mod systemd;
