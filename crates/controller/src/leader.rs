//! One leader among the controllers sharing a store, elected through a store lease (etcd's
//! election recipe): the leader holds [`keys::LEADER`] under its lease and renews it; when it
//! stops, the key goes at once; when it dies or hangs, the lease ends and the key with it, and
//! another controller takes over. The singletons (sweeps, compaction, gateway failover) run
//! only on the leader.

use std::time::Duration;

use isthmus_store::{Compare, LeaseId, Op, SharedStore, StoreError, Txn};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::keys;

/// Whether this controller leads now.
#[derive(Debug, Clone)]
pub struct Leadership(watch::Receiver<bool>);

impl Leadership {
    /// Whether this controller leads now.
    pub fn leads(&self) -> bool {
        *self.0.borrow()
    }

    /// Waits until this controller leads (forever if the campaign has ended).
    pub async fn wait(&mut self) {
        if self.0.wait_for(|l| *l).await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// Runs for leadership as `me` until `stop` turns true (then hands the lead over at once).
/// Returns the [`Leadership`] to read and the campaign to spawn.
pub fn campaign(
    store: SharedStore,
    me: String,
    ttl: Duration,
    stop: watch::Receiver<bool>,
) -> (Leadership, impl std::future::Future<Output = ()>) {
    let (leading, leadership) = watch::channel(false);
    (Leadership(leadership), run(store, me, ttl, leading, stop))
}

async fn run(
    store: SharedStore,
    me: String,
    ttl: Duration,
    leading: watch::Sender<bool>,
    mut stop: watch::Receiver<bool>,
) {
    // Followers look a few times per lease: a dead leader is replaced within about
    // `ttl + ttl / 3`.
    let pace = (ttl / 3).max(Duration::from_millis(200));
    loop {
        if *stop.borrow() {
            return;
        }
        match try_lead(&store, &me, ttl).await {
            Ok(Some(lease)) => {
                tracing::info!("{me} leads (lease {lease})");
                leading.send_replace(true);
                hold(&store, lease, ttl, pace, &mut stop).await;
                leading.send_replace(false);
                if *stop.borrow() {
                    // Hand over now instead of after the lease's time.
                    if let Err(e) = store.revoke_lease(lease).await {
                        tracing::warn!("handing the lead over: {e}");
                    }
                    return;
                }
                tracing::warn!("{me} lost the lead");
            }
            Ok(None) => {}
            Err(e) => tracing::warn!("running for leader: {e}"),
        }
        tokio::select! {
            _ = tokio::time::sleep(pace) => {}
            _ = stop.changed() => {}
        }
    }
}

/// Takes the lead if nobody holds it: `Some(lease)` when this controller now leads.
async fn try_lead(
    store: &SharedStore,
    me: &str,
    ttl: Duration,
) -> Result<Option<LeaseId>, StoreError> {
    if store.get(keys::LEADER).await?.is_some() {
        return Ok(None);
    }
    let lease = store.grant_lease(ttl).await?;
    let taken = store
        .txn(
            Txn::new()
                .when(Compare::absent(keys::LEADER))
                .then(Op::put_leased(keys::LEADER, me.to_owned(), lease)),
        )
        .await;
    match taken {
        Ok(t) if t.succeeded => Ok(Some(lease)),
        other => {
            let _ = store.revoke_lease(lease).await;
            other.map(|_| None)
        }
    }
}

/// Renews the lead's lease every `pace` until it is lost or `stop` turns true. A leader that
/// cannot renew for two thirds of the lease steps down before the lease can end and another
/// controller lead beside it.
async fn hold(
    store: &SharedStore,
    lease: LeaseId,
    ttl: Duration,
    pace: Duration,
    stop: &mut watch::Receiver<bool>,
) {
    let mut renewed = Instant::now();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(pace) => {}
            _ = stop.changed() => return,
        }
        if *stop.borrow() {
            return;
        }
        match store.keep_alive(lease).await {
            Ok(true) => renewed = Instant::now(),
            Ok(false) => return,
            Err(e) => tracing::warn!("renewing the lead: {e}"),
        }
        if renewed.elapsed() >= ttl * 2 / 3 {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use isthmus_store::MemoryStore;

    use super::*;

    async fn until(what: impl Fn() -> bool) -> Duration {
        let start = Instant::now();
        while !what() {
            assert!(start.elapsed() < Duration::from_secs(10), "timed out");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        start.elapsed()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_leads_and_another_takes_over_when_it_stops_or_dies() {
        let store: SharedStore = Arc::new(MemoryStore::new());
        let ttl = Duration::from_secs(1);
        let (stop_a, stopped_a) = watch::channel(false);
        let (stop_b, stopped_b) = watch::channel(false);
        let (a, run_a) = campaign(store.clone(), "a".into(), ttl, stopped_a);
        let run_a = tokio::spawn(run_a);
        until(|| a.leads()).await;
        let (b, run_b) = campaign(store.clone(), "b".into(), ttl, stopped_b);
        let run_b = tokio::spawn(run_b);
        // b never leads beside a, however long a leads.
        for _ in 0..20 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            assert!(a.leads() && !b.leads());
        }
        // a stops: it hands over at once (no lease time to wait).
        stop_a.send_replace(true);
        run_a.await.unwrap();
        assert!(!a.leads());
        let took = until(|| b.leads()).await;
        assert!(took < ttl, "took over in {took:?}");
        let value = store.get(keys::LEADER).await.unwrap().unwrap().value;
        assert_eq!(&value[..], b"b");

        // b dies without a word: c takes over once b's lease has ended.
        run_b.abort();
        let (_stop_c, stopped_c) = watch::channel(false);
        let (c, run_c) = campaign(store.clone(), "c".into(), ttl, stopped_c);
        let run_c = tokio::spawn(run_c);
        let took = until(|| c.leads()).await;
        assert!(
            took >= ttl / 2,
            "c led {took:?} after b died, beside b's lease"
        );
        run_c.abort();
        drop(stop_b);
    }
}
