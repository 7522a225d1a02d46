//! Leader election through a `coordination.k8s.io/v1` Lease, as client-go's leaderelection
//! does it: the holder renews the lease every few seconds; another controller takes it over
//! once it has seen the same record unchanged for a whole lease duration (measured on its own
//! clock, so clocks need not agree); writes are compare-and-swap on the resourceVersion.

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};
use tokio::sync::watch;

/// Where and as whom to hold the lease.
#[derive(Debug, Clone)]
pub struct LeaseConfig {
    /// Namespace of the Lease object.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// This controller's identity (`holderIdentity`).
    pub identity: String,
    /// `leaseDurationSeconds`: how long a silent holder keeps it.
    pub duration: Duration,
}

impl LeaseConfig {
    /// How often the holder renews and the others look (client-go: 2 s for 15 s).
    fn retry_period(&self) -> Duration {
        (self.duration / 7).max(Duration::from_millis(200))
    }

    /// How long a holder that cannot renew keeps acting as leader (client-go's renew
    /// deadline: 10 s for 15 s), so it stops before anyone may take over.
    fn renew_deadline(&self) -> Duration {
        self.duration * 2 / 3
    }
}

/// The record last seen, and when (on this controller's clock).
struct Observed {
    holder: String,
    renew_time: Option<Timestamp>,
    at: Instant,
}

/// Runs the election forever, publishing on `leader` whether this controller holds the
/// lease; releases it when `stop` turns true (so a stopping controller hands over at once).
pub async fn elect(
    api: Api<Lease>,
    config: LeaseConfig,
    leader: watch::Sender<bool>,
    mut stop: watch::Receiver<bool>,
) {
    let mut observed: Option<Observed> = None;
    let mut renewed: Option<Instant> = None;
    loop {
        if *stop.borrow() {
            if *leader.borrow() {
                leader.send_replace(false);
                release(&api, &config).await;
            }
            return;
        }
        match attempt(&api, &config, &mut observed).await {
            Ok(true) => renewed = Some(Instant::now()),
            Ok(false) => renewed = None,
            Err(e) => tracing::warn!("Kubernetes lease {}/{}: {e}", config.namespace, config.name),
        }
        let leading = renewed.is_some_and(|at| at.elapsed() < config.renew_deadline());
        leader.send_if_modified(|was| {
            if *was != leading {
                tracing::info!(
                    "{} the Kubernetes lease {}/{} as {}",
                    if leading { "holds" } else { "does not hold" },
                    config.namespace,
                    config.name,
                    config.identity
                );
            }
            std::mem::replace(was, leading) != leading
        });
        tokio::select! {
            () = tokio::time::sleep(config.retry_period()) => {}
            _ = stop.changed() => {}
        }
    }
}

/// One round: creates, renews or takes over the lease when this controller may; returns
/// whether it holds it now.
async fn attempt(
    api: &Api<Lease>,
    config: &LeaseConfig,
    observed: &mut Option<Observed>,
) -> Result<bool, kube::Error> {
    let now = MicroTime(Timestamp::now());
    let seconds = i32::try_from(config.duration.as_secs())
        .unwrap_or(i32::MAX)
        .max(1);
    let Some(mut lease) = api.get_opt(&config.name).await? else {
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(config.name.clone()),
                namespace: Some(config.namespace.clone()),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(config.identity.clone()),
                lease_duration_seconds: Some(seconds),
                acquire_time: Some(now.clone()),
                renew_time: Some(now),
                lease_transitions: Some(0),
                ..LeaseSpec::default()
            }),
        };
        return match api.create(&PostParams::default(), &lease).await {
            Ok(_) => Ok(true),
            Err(e) if conflict(&e) => Ok(false),
            Err(e) => Err(e),
        };
    };
    let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
    let holder = spec.holder_identity.clone().unwrap_or_default();
    let renew_time = spec.renew_time.as_ref().map(|t| t.0);
    if holder != config.identity {
        let unchanged = observed
            .as_ref()
            .is_some_and(|o| o.holder == holder && o.renew_time == renew_time);
        if !unchanged {
            *observed = Some(Observed {
                holder: holder.clone(),
                renew_time,
                at: Instant::now(),
            });
        }
        let their_duration = spec
            .lease_duration_seconds
            .and_then(|s| u64::try_from(s).ok())
            .map_or(config.duration, Duration::from_secs);
        let expired = holder.is_empty()
            || observed
                .as_ref()
                .is_some_and(|o| o.at.elapsed() >= their_duration);
        if !expired {
            return Ok(false);
        }
        spec.holder_identity = Some(config.identity.clone());
        spec.acquire_time = Some(now.clone());
        spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
    }
    spec.renew_time = Some(now);
    spec.lease_duration_seconds = Some(seconds);
    match api
        .replace(&config.name, &PostParams::default(), &lease)
        .await
    {
        Ok(_) => Ok(true),
        // Someone else wrote it first: look again next round.
        Err(e) if conflict(&e) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Gives the lease up (holder cleared), if this controller still holds it.
async fn release(api: &Api<Lease>, config: &LeaseConfig) {
    let Ok(Some(mut lease)) = api.get_opt(&config.name).await else {
        return;
    };
    let Some(spec) = lease.spec.as_mut() else {
        return;
    };
    if spec.holder_identity.as_deref() != Some(config.identity.as_str()) {
        return;
    }
    spec.holder_identity = None;
    spec.renew_time = Some(MicroTime(Timestamp::now()));
    if let Err(e) = api
        .replace(&config.name, &PostParams::default(), &lease)
        .await
    {
        tracing::info!("releasing the Kubernetes lease: {e}");
    }
}

fn conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(status) if status.code == 409)
}
