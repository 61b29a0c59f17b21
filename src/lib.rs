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

pub mod chart;
pub mod cli;
pub mod cluster;
pub mod confine;
pub mod diag;
pub mod manifest;
pub mod provenance;
pub mod quantity;

/// Field manager for every server-side apply pailot makes.
pub const FIELD_MANAGER: &str = "pailot";
/// Version of this build, used in the ApplySet tooling label and `pailot_build_info`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
pub mod apply;
pub mod bootstrap;
pub mod budget;
pub mod daemon;
pub mod init;
pub mod inventory;
pub mod limits;
pub mod metrics;
pub mod overlay;
pub mod par;
pub mod preflight;
pub mod render;
pub mod schema;
pub mod server;
pub mod systemd;
