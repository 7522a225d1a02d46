//! Port pools: a few ports per (network, project) created ahead of time and bound to this
//! node, so a pod's ADD takes one instead of waiting for the controller (and for the port's
//! filters: pool ports are in the node's view and filtered before any pod needs them). A
//! pool port is an ordinary Neutron port marked `device_id = "isthmus-pool"`: the agent
//! adopts its own after a restart and the controller deletes them with their node, so none
//! is leaked.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};

use isthmus_dataplane::pod::POOL_DEVICE_ID;
use serde_json::{json, Value};

use crate::reply::{self, Ports};
use crate::Shared;
use isthmus_dataplane::pod::POD_DEVICE_OWNER;

/// (network id, project id).
pub(crate) type PoolKey = (String, String);

/// The pools of one agent.
#[derive(Default)]
pub(crate) struct Pools {
    /// Ports kept ready per key.
    target: usize,
    free: Mutex<BTreeMap<PoolKey, Vec<String>>>,
    /// Keys with a refill under way (one at a time per key).
    refilling: Mutex<BTreeSet<PoolKey>>,
}

impl Pools {
    /// Pools keeping `target` ports ready per key.
    pub(crate) fn new(target: usize) -> Pools {
        Pools {
            target,
            ..Pools::default()
        }
    }

    fn free(&self) -> MutexGuard<'_, BTreeMap<PoolKey, Vec<String>>> {
        self.free.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A port for `key`, if the pool has one: the oldest whose filters are in place
    /// (`filtered`), else the oldest.
    pub(crate) fn take(&self, key: &PoolKey, filtered: &BTreeSet<String>) -> Option<String> {
        let mut free = self.free();
        let ports = free.get_mut(key)?;
        let at = ports.iter().position(|p| filtered.contains(p)).unwrap_or(0);
        (at < ports.len()).then(|| ports.remove(at))
    }

    /// Returns a port to its pool; `false` when the pool is full (delete it instead).
    pub(crate) fn give_back(&self, key: &PoolKey, port_id: String) -> bool {
        let mut free = self.free();
        let ports = free.entry(key.clone()).or_default();
        if ports.len() < self.target {
            ports.push(port_id);
            true
        } else {
            false
        }
    }

    /// Whether the pool of `key` has room for one more port.
    pub(crate) fn has_room(&self, key: &PoolKey) -> bool {
        self.free().get(key).map_or(0, Vec::len) < self.target
    }
}

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
                let mut free = shared.pools.free();
                for port in listed.ports {
                    if in_use.contains(&port.id) {
                        continue;
                    }
                    free.entry((port.network_id, port.project_id))
                        .or_default()
                        .push(port.id);
                }
            }
            Err(why) => eprintln!("isthmus agent: listing pool ports: {why}"),
        },
        Ok((status, body)) => {
            eprintln!("isthmus agent: listing pool ports answered {status}: {body}")
        }
        Err(e) => eprintln!("isthmus agent: listing pool ports: {e}"),
    }
}

/// Tops up the pool of `key` in the background.
pub(crate) fn refill(shared: &Arc<Shared>, key: &PoolKey) {
    let pools = &shared.pools;
    if pools.target == 0 {
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
            let missing = shared
                .pools
                .target
                .saturating_sub(shared.pools.free().get(&key).map_or(0, Vec::len));
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
                    eprintln!(
                        "isthmus agent: refilling the pool of {key:?} answered {status}: {answer}"
                    );
                    break;
                }
                Err(e) => {
                    eprintln!("isthmus agent: refilling the pool of {key:?}: {e}");
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
