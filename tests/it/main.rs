//! All integration tests, in one test binary (ripgrep style). One module per area.

mod alerting_e2e;
mod apply;
mod bootstrap;
mod budget;
mod chart;
mod cluster_smoke;
mod daemon;
mod daemon_notify;
mod daemon_outage;
mod diff;
mod explain;
mod golden;
mod harness;
mod health;
mod init;
mod kube;
mod metrics;
mod overlay;
mod preflight;
mod prune;
mod reconcile;
mod render;
mod schema;
mod server;
mod source;
mod systemd;
