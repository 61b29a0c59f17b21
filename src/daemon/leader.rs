//! Leader election through a coordination.k8s.io/v1 Lease: acquire, renew, expire; publishes "am I leader".
//!
//! Only the leader applies; the others keep serving metrics and report `pailot_leader 0`.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::PostParams;
use tokio::sync::watch;

use super::config::LeaderConfig;

/// Why one election round failed (the loop logs it and retries).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("failed to read or write Lease {namespace}/{name}: {source}")]
    Api {
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
}

/// What to do with the lease as it is now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// No lease yet: create it holding it.
    Create,
    /// We hold it: renew.
    Renew,
    /// Someone else held it but let it expire: take it over.
    TakeOver,
    /// Someone else holds a live lease.
    Follow { holder: String },
}

/// Decide from the lease's spec (`None`: no lease) and the current time in milliseconds.
pub fn decide(
    spec: Option<&LeaseSpec>,
    me: &str,
    now_ms: i64,
    default_duration: Duration,
) -> Decision {
    let Some(spec) = spec else {
        return Decision::Create;
    };
    let holder = spec.holder_identity.clone().unwrap_or_default();
    if holder == me {
        return Decision::Renew;
    }
    if holder.is_empty() {
        return Decision::TakeOver;
    }
    let duration_ms = spec
        .lease_duration_seconds
        .map(|s| i64::from(s) * 1000)
        .unwrap_or(default_duration.as_millis() as i64);
    let renewed_ms = spec
        .renew_time
        .as_ref()
        .or(spec.acquire_time.as_ref())
        .map(|t| t.0.as_millisecond());
    match renewed_ms {
        Some(r) if r + duration_ms > now_ms => Decision::Follow { holder },
        _ => Decision::TakeOver,
    }
}

/// Identity of this daemon in the lease: `<hostname>_<pid>`.
pub fn identity() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    format!(
        "{}_{}",
        if host.is_empty() { "pailot" } else { &host },
        std::process::id()
    )
}

/// Runs the election until `stop` becomes true; `leader` says whether we hold the lease.
///
/// Guarantees: `leader` turns false when a renewal has not succeeded for a full lease duration,
/// before anyone else can take the lease over. On stop, a held lease is released (holder cleared)
/// so another daemon takes over at once.
pub async fn run(
    api: Api<Lease>,
    cfg: LeaderConfig,
    me: String,
    leader: watch::Sender<bool>,
    mut stop: watch::Receiver<bool>,
) {
    let retry = cfg.lease_duration / 3;
    let mut last_renewed: Option<tokio::time::Instant> = None;
    loop {
        match round(&api, &cfg, &me).await {
            Ok(true) => {
                last_renewed = Some(tokio::time::Instant::now());
                if !*leader.borrow() {
                    tracing::info!(lease = %cfg.lease_name, identity = %me, "became leader");
                }
                leader.send_replace(true);
            }
            Ok(false) => {
                if *leader.borrow() {
                    tracing::warn!(lease = %cfg.lease_name, "lost leadership");
                }
                leader.send_replace(false);
                last_renewed = None;
            }
            Err(e) => {
                tracing::warn!(error = %e, "leader election round failed");
                if last_renewed.is_some_and(|t| t.elapsed() >= cfg.lease_duration.mul_f64(0.8)) {
                    tracing::warn!(lease = %cfg.lease_name, "could not renew the lease in time; stepping down");
                    leader.send_replace(false);
                    last_renewed = None;
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(retry) => {}
            _ = stop.changed() => break,
        }
    }
    if *leader.borrow() {
        release(&api, &cfg, &me).await;
        leader.send_replace(false);
    }
}

/// One acquire/renew attempt; `Ok(true)` when we hold the lease afterwards.
async fn round(api: &Api<Lease>, cfg: &LeaderConfig, me: &str) -> Result<bool, Error> {
    let err = |source| Error::Api {
        namespace: cfg.namespace.clone(),
        name: cfg.lease_name.clone(),
        source,
    };
    let current = api.get_opt(&cfg.lease_name).await.map_err(err)?;
    let now = Timestamp::now();
    let decision = decide(
        current.as_ref().and_then(|l| l.spec.as_ref()),
        me,
        now.as_millisecond(),
        cfg.lease_duration,
    );
    let seconds = cfg.lease_duration.as_secs().max(1) as i32;
    let result = match (decision, current) {
        (Decision::Follow { .. }, _) => return Ok(false),
        (Decision::Create, _) => {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(cfg.lease_name.clone()),
                    ..Default::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(me.to_string()),
                    lease_duration_seconds: Some(seconds),
                    acquire_time: Some(MicroTime(now)),
                    renew_time: Some(MicroTime(now)),
                    lease_transitions: Some(0),
                    ..Default::default()
                }),
            };
            api.create(&PostParams::default(), &lease).await
        }
        (decision, Some(mut lease)) => {
            let spec = lease.spec.get_or_insert_with(Default::default);
            if decision == Decision::TakeOver {
                spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
                spec.acquire_time = Some(MicroTime(now));
            }
            spec.holder_identity = Some(me.to_string());
            spec.lease_duration_seconds = Some(seconds);
            spec.renew_time = Some(MicroTime(now));
            // `replace` carries the resourceVersion we read: a concurrent writer makes this a 409.
            api.replace(&cfg.lease_name, &PostParams::default(), &lease)
                .await
        }
        (_, None) => return Ok(false),
    };
    match result {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
        Err(e) => Err(err(e)),
    }
}

/// Give the lease up (clear the holder) so a standby takes over without waiting for expiry.
async fn release(api: &Api<Lease>, cfg: &LeaderConfig, me: &str) {
    if let Ok(Some(mut lease)) = api.get_opt(&cfg.lease_name).await
        && let Some(spec) = lease
            .spec
            .as_mut()
            .filter(|s| s.holder_identity.as_deref() == Some(me))
    {
        spec.holder_identity = None;
        spec.renew_time = None;
        let _ = api
            .replace(&cfg.lease_name, &PostParams::default(), &lease)
            .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(holder: &str, renewed_ms: i64, secs: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(holder.into()),
            lease_duration_seconds: Some(secs),
            renew_time: Some(MicroTime(Timestamp::from_millisecond(renewed_ms).unwrap())),
            ..Default::default()
        }
    }

    #[test]
    fn acquire_renew_follow_expire() {
        let d = Duration::from_secs(15);
        assert_eq!(decide(None, "a", 0, d), Decision::Create);
        assert_eq!(
            decide(Some(&spec("a", 0, 15)), "a", 1_000, d),
            Decision::Renew
        );
        assert_eq!(
            decide(Some(&spec("b", 0, 15)), "a", 14_999, d),
            Decision::Follow { holder: "b".into() }
        );
        assert_eq!(
            decide(Some(&spec("b", 0, 15)), "a", 15_000, d),
            Decision::TakeOver
        );
        assert_eq!(
            decide(Some(&LeaseSpec::default()), "a", 0, d),
            Decision::TakeOver
        );
    }
}
