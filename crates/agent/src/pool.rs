//! Port pools: ports per (network, project) created ahead of time and bound to this node, so
//! a pod's ADD takes one instead of waiting for the controller (and for the port's filters:
//! pool ports are in the node's view and filtered before any pod needs them). Each pool's
//! size follows its ADDs (see [`PoolDemand`]): bursts grow it, quiet shrinks it back. A
//! pool port is an ordinary Neutron port marked `device_id = "isthmus-pool"`: the agent
//! adopts its own after a restart and the controller deletes them with their node, so none
//! is leaked.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use isthmus_dataplane::pod::POOL_DEVICE_ID;
use isthmus_dataplane::pool::PoolDemand;
use serde_json::{json, Value};

use crate::reply::{self, Ports};
use crate::Shared;
use isthmus_dataplane::pod::POD_DEVICE_OWNER;

/// (network id, project id).
pub(crate) type PoolKey = (String, String);

/// One pool: its ready ports and how many it aims at.
struct Pool {
    free: Vec<String>,
    demand: PoolDemand,
}

/// The pools of one agent.
#[derive(Default)]
pub(crate) struct Pools {
    /// Ports each pool keeps at least (0: no pools).
    floor: usize,
    /// Ports a pool grows to at most.
    ceiling: usize,
    pools: Mutex<BTreeMap<PoolKey, Pool>>,
    /// Keys with a refill under way (one at a time per key).
    refilling: Mutex<BTreeSet<PoolKey>>,
}

impl Pools {
    /// Pools keeping between `floor` and `ceiling` ports ready per key, as ADDs ask.
    pub(crate) fn new(floor: usize, ceiling: usize) -> Pools {
        Pools {
            floor,
            ceiling,
            ..Pools::default()
        }
    }

    fn pools(&self) -> MutexGuard<'_, BTreeMap<PoolKey, Pool>> {
        self.pools.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn pool<'a>(&self, pools: &'a mut BTreeMap<PoolKey, Pool>, key: &PoolKey) -> &'a mut Pool {
        pools.entry(key.clone()).or_insert_with(|| Pool {
            free: Vec::new(),
            demand: PoolDemand::new(self.floor, self.ceiling, Instant::now()),
        })
    }

    /// A port for `key`, if the pool has one: the oldest whose filters are in place
    /// (`filtered`), else the oldest. Every ask counts towards the pool's size, and what
    /// counts is ports with their filters: one without makes its pod wait for the node's next
    /// pass (tens of milliseconds, hundreds under a burst), nearly as long as no port at all.
    pub(crate) fn take(&self, key: &PoolKey, filtered: &BTreeSet<String>) -> Option<String> {
        let mut pools = self.pools();
        let pool = self.pool(&mut pools, key);
        let at = pool.free.iter().position(|p| filtered.contains(p));
        let ready = at.is_some();
        let taken = match at {
            Some(at) => Some(pool.free.remove(at)),
            None if !pool.free.is_empty() => Some(pool.free.remove(0)),
            None => None,
        };
        let left = pool.free.iter().filter(|p| filtered.contains(*p)).count();
        pool.demand.took(Instant::now(), ready, left);
        taken
    }

    /// Returns a port to its pool; `false` when the pool is full (delete it instead).
    pub(crate) fn give_back(&self, key: &PoolKey, port_id: String) -> bool {
        let mut pools = self.pools();
        let pool = self.pool(&mut pools, key);
        if pool.free.len() < pool.demand.target() {
            pool.free.push(port_id);
            true
        } else {
            false
        }
    }

    /// Whether the pool of `key` has room for one more port.
    pub(crate) fn has_room(&self, key: &PoolKey) -> bool {
        self.missing(key) > 0
    }

    /// Ports the pool of `key` lacks.
    fn missing(&self, key: &PoolKey) -> usize {
        let mut pools = self.pools();
        let pool = self.pool(&mut pools, key);
        pool.demand.target().saturating_sub(pool.free.len())
    }

    /// Shrinks the pools no ADD asked for a while; returns the ports they no longer keep.
    fn shrink(&self) -> Vec<String> {
        let now = Instant::now();
        let mut extra = Vec::new();
        for pool in self.pools().values_mut() {
            if pool.demand.idle(now) && pool.free.len() > pool.demand.target() {
                extra.extend(pool.free.drain(pool.demand.target()..));
            }
        }
        extra
    }
}

/// Deletes the ports of pools that shrank, checking every few seconds.
pub(crate) async fn shrink_idle_pools(shared: Arc<Shared>) {
    loop {
        tokio::time::sleep(SHRINK_CHECK).await;
        for id in shared.pools.shrink() {
            let deleted = shared
                .config
                .controller
                .request("DELETE", &format!("/v2.0/ports/{id}"), None)
                .await;
            match deleted {
                Ok((204 | 404, _)) => {}
                Ok((status, answer)) => {
                    tracing::warn!("deleting pool port {id} answered {status}: {answer}")
                }
                Err(e) => tracing::warn!("deleting pool port {id}: {e}"),
            }
        }
    }
}

/// How often idle pools are looked for.
const SHRINK_CHECK: Duration = Duration::from_secs(10);

/// The body that turns a port into a pool port (or creates one).
pub(crate) fn pool_attributes(shared: &Shared) -> Value {
    json!({
        "name": POOL_DEVICE_ID,
        "device_owner": POD_DEVICE_OWNER,
        "device_id": POOL_DEVICE_ID,
        "binding:host_id": shared.config.node,
        "binding:profile": {},
    })
}

/// Takes back the pool ports this node's agent created before a restart, except those an
/// attachment record still names (a pod got them just before the restart).
pub(crate) async fn adopt(shared: &Shared, in_use: &BTreeSet<String>) {
    let path = format!(
        "/v2.0/ports?binding:host_id={}&device_id={POOL_DEVICE_ID}",
        shared.config.node
    );
    match shared.config.controller.request("GET", &path, None).await {
        Ok((200, body)) => match reply::read::<Ports>(&body, None) {
            Ok(listed) => {
                let pools = &shared.pools;
                let mut all = pools.pools();
                for port in listed.ports {
                    if in_use.contains(&port.id) {
                        continue;
                    }
                    let key = (port.network_id, port.project_id);
                    pools.pool(&mut all, &key).free.push(port.id);
                }
            }
            Err(why) => tracing::warn!("listing pool ports: {why}"),
        },
        Ok((status, body)) => {
            tracing::warn!("listing pool ports answered {status}: {body}")
        }
        Err(e) => tracing::warn!("listing pool ports: {e}"),
    }
}

/// Tops up the pool of `key` in the background.
pub(crate) fn refill(shared: &Arc<Shared>, key: &PoolKey) {
    let pools = &shared.pools;
    if pools.floor == 0 {
        return;
    }
    {
        let mut refilling = pools.refilling.lock().unwrap_or_else(|e| e.into_inner());
        if !refilling.insert(key.clone()) {
            return;
        }
    }
    let shared = shared.clone();
    let key = key.clone();
    tokio::spawn(async move {
        loop {
            let missing = shared.pools.missing(&key);
            if missing == 0 {
                break;
            }
            // All that is missing in one bulk create: one watch batch, one nft transaction.
            let mut port = pool_attributes(&shared);
            port["network_id"] = json!(key.0);
            port["project_id"] = json!(key.1);
            let body = json!({ "ports": vec![port; missing] });
            let created = shared
                .config
                .controller
                .request("POST", "/v2.0/ports", Some(&body))
                .await;
            match created {
                Ok((201, answer)) => {
                    for port in answer["ports"].as_array().into_iter().flatten() {
                        let id = port["id"].as_str().unwrap_or_default().to_owned();
                        if !shared.pools.give_back(&key, id.clone()) {
                            // Filled meanwhile by returned ports: don't keep extras.
                            let _ = shared
                                .config
                                .controller
                                .request("DELETE", &format!("/v2.0/ports/{id}"), None)
                                .await;
                        }
                    }
                }
                Ok((status, answer)) => {
                    tracing::warn!("refilling the pool of {key:?} answered {status}: {answer}");
                    break;
                }
                Err(e) => {
                    tracing::warn!("refilling the pool of {key:?}: {e}");
                    break;
                }
            }
        }
        shared
            .pools
            .refilling
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&key);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_without_their_filters_count_as_missing() {
        let pools = Pools::new(4, 64);
        let key: PoolKey = ("net".into(), "project".into());
        for id in ["a", "b", "c", "d"] {
            assert!(pools.give_back(&key, id.into()));
        }
        let filtered: BTreeSet<String> = ["c".to_owned()].into();
        // The filtered port goes first; the first ask never grows a pool.
        assert_eq!(pools.take(&key, &filtered).as_deref(), Some("c"));
        assert_eq!(pools.missing(&key), 1);
        // Three ports left, none ready: a pod waits for the node's next pass, so the pool
        // grows although it is more than half full.
        assert_eq!(pools.take(&key, &filtered).as_deref(), Some("a"));
        assert_eq!(pools.missing(&key), 8 - 2);
    }
}
