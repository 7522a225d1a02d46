//! Nodes: agent registration, heartbeats, their Neutron `agents` view, and port status
//! reports from agents.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use isthmus_model::lbaas::{merge_stats, stats_shard, Stats, STATS_SHARDS};
use isthmus_model::node::{Node, Registration, AGENT_DOWN_SECONDS};
use isthmus_model::policy;
use isthmus_model::port::POOL_DEVICE_ID;
use isthmus_model::resource::Resource;
use isthmus_model::{Caller, Error, Port, Result};
use isthmus_store::{Compare, LeaseId, Op, Txn};
use serde_json::Value;

use super::{encode, new_id, now, store_error, Attempt, Object, Service};
use crate::keys;

/// Port states an agent may report.
const PORT_STATES: &[&str] = &["ACTIVE", "DOWN", "ERROR", "BUILD"];

/// The lease a heartbeat key names.
pub(crate) fn lease_of(value: &[u8]) -> Option<LeaseId> {
    std::str::from_utf8(value).ok()?.parse().ok()
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Service {
    async fn load_node(&self, name: &str) -> Result<Option<(Node, u64)>> {
        let key = keys::node(name);
        match self.store.get(&key).await.map_err(store_error)? {
            None => Ok(None),
            Some(kv) => serde_json::from_slice(&kv.value)
                .map(|n| Some((n, kv.mod_revision)))
                .map_err(|e| Error::Internal(format!("corrupt record {key}: {e}"))),
        }
    }

    /// A registered node, or 404 `NodeNotFound`.
    pub async fn must_load_node(&self, name: &str) -> Result<Node> {
        self.load_node(name)
            .await?
            .map(|(n, _)| n)
            .ok_or_else(|| Error::not_found("Node", name))
    }

    /// How long ago the node last sent a heartbeat; `None` when it has been silent for
    /// [`AGENT_DOWN_SECONDS`] (its heartbeat lease has ended) or never beat.
    pub(crate) async fn silence_of(&self, name: &str) -> Result<Option<Duration>> {
        let Some(kv) = self
            .store
            .get(&keys::heartbeat(name))
            .await
            .map_err(store_error)?
        else {
            return Ok(None);
        };
        let Some(lease) = lease_of(&kv.value) else {
            return Ok(None);
        };
        Ok(self
            .store
            .lease_ttl(lease)
            .await
            .map_err(store_error)?
            .map(|ttl| ttl.since_renewed()))
    }

    async fn liveness(&self, name: &str) -> Result<(bool, Option<String>)> {
        let silence = self.silence_of(name).await?;
        let beat = silence.map(|s| unix_now().saturating_sub(s.as_secs()));
        Ok((beat.is_some(), beat.map(isthmus_model::time::rfc3339)))
    }

    /// Records a heartbeat of a registered node (404 `NodeNotFound` for another): renews the
    /// node's heartbeat lease, which writes nothing to the store's history. Only when the
    /// lease has ended (or on the first beat) is there a new lease and the key under it, put
    /// conditionally so that controllers racing to do it leave one.
    async fn beat(&self, name: &str) -> Result<()> {
        let key = keys::heartbeat(name);
        let current = self.store.get(&key).await.map_err(store_error)?;
        // A heartbeat key goes with its node, so a live one needs no look at the node.
        if let Some(lease) = current.as_ref().and_then(|kv| lease_of(&kv.value)) {
            if self.store.keep_alive(lease).await.map_err(store_error)? {
                return Ok(());
            }
        }
        self.must_load_node(name).await?;
        let lease = self
            .store
            .grant_lease(Duration::from_secs(AGENT_DOWN_SECONDS))
            .await
            .map_err(store_error)?;
        let txn = Txn::new()
            .when(Compare::mod_revision(
                &key,
                current.map_or(0, |kv| kv.mod_revision),
            ))
            .then(Op::put_leased(&key, lease.to_string(), lease));
        if !self.commit(txn).await? {
            // Another controller recorded this beat under its lease first; this lease would
            // only linger, empty, until it ends.
            if let Err(e) = self.store.revoke_lease(lease).await {
                tracing::warn!("revoking a spare heartbeat lease of {name}: {e}");
            }
        }
        Ok(())
    }

    /// Registers (or re-registers, on agent restart) a node; returns whether it is new.
    pub async fn register_node(&self, caller: &Caller, body: Value) -> Result<(bool, Object)> {
        policy::authorize_caller("create_node", caller)?;
        let reg = Registration::parse(body)?;
        let (created, node) = self
            .retry(|| async {
                let stamp = now();
                let existing = self.load_node(&reg.name).await?;
                let (node, compare, created) = match existing {
                    Some((old, rev)) => (
                        Node {
                            tunnel_ip: reg.tunnel_ip,
                            roles: reg.roles.clone(),
                            physnets: reg.physnets.clone(),
                            started_at: stamp,
                            ..old
                        },
                        Compare::mod_revision(keys::node(&reg.name), rev),
                        false,
                    ),
                    None => (
                        Node {
                            id: new_id(),
                            name: reg.name.clone(),
                            tunnel_ip: reg.tunnel_ip,
                            roles: reg.roles.clone(),
                            physnets: reg.physnets.clone(),
                            created_at: stamp.clone(),
                            started_at: stamp,
                        },
                        Compare::absent(keys::node(&reg.name)),
                        true,
                    ),
                };
                let txn = Txn::new()
                    .when(compare)
                    .then(Op::put(keys::node(&node.name), encode(&node)?));
                Ok(if self.commit(txn).await? {
                    Attempt::Done((created, node))
                } else {
                    Attempt::Retry
                })
            })
            .await?;
        self.beat(&node.name).await?;
        if !node.physnets.is_empty() {
            self.adopt_waiting_gateways(&node).await;
        }
        let (alive, beat) = self.liveness(&node.name).await?;
        Ok((created, node.render(alive, beat.as_deref())))
    }

    /// Records a heartbeat of a registered node.
    pub async fn heartbeat(&self, caller: &Caller, name: &str) -> Result<()> {
        policy::authorize_caller("update_node", caller)?;
        self.beat(name).await
    }

    /// Every node with its liveness.
    pub async fn list_nodes(&self, caller: &Caller, as_agents: bool) -> Result<Vec<Object>> {
        policy::authorize_caller(if as_agents { "get_agent" } else { "get_node" }, caller)?;
        let range = self.store.range(keys::NODES).await.map_err(store_error)?;
        let mut out = Vec::with_capacity(range.kvs.len());
        for kv in &range.kvs {
            let node: Node = serde_json::from_slice(&kv.value)
                .map_err(|e| Error::Internal(format!("corrupt record {}: {e}", kv.key)))?;
            let (alive, beat) = self.liveness(&node.name).await?;
            out.push(if as_agents {
                node.render_agent(alive, beat.as_deref())
            } else {
                node.render(alive, beat.as_deref())
            });
        }
        Ok(out)
    }

    /// One node by name.
    pub async fn show_node(&self, caller: &Caller, name: &str) -> Result<Object> {
        policy::authorize_caller("get_node", caller)?;
        let node = self.must_load_node(name).await?;
        let (alive, beat) = self.liveness(name).await?;
        Ok(node.render(alive, beat.as_deref()))
    }

    /// One node as a Neutron agent, by agent id.
    pub async fn show_agent(&self, caller: &Caller, id: &str) -> Result<Object> {
        self.list_nodes(caller, true)
            .await?
            .into_iter()
            .find(|a| a.get("id").and_then(Value::as_str) == Some(id))
            .ok_or_else(|| Error::not_found("Agent", id))
    }

    /// Forgets a node. Ports given to VMs and pods stay bound to the name; the ports its
    /// agent held ready in its pool are deleted, releasing their addresses, in the same
    /// transaction as the node (all or nothing, retried whole when the store changed).
    pub async fn delete_node(&self, caller: &Caller, name: &str) -> Result<()> {
        policy::authorize_caller("delete_node", caller)?;
        let beat = self
            .store
            .get(&keys::heartbeat(name))
            .await
            .map_err(store_error)?
            .and_then(|kv| lease_of(&kv.value));
        self.atomically(|| async {
            self.must_load_node(name).await?;
            let mut txn = Txn::new()
                .then(Op::delete(keys::node(name)))
                .then(Op::delete(keys::heartbeat(name)))
                .then(Op::delete(keys::applied(name)));
            for shard in 0..STATS_SHARDS {
                txn = txn.then(Op::delete(keys::lb_stats_shard(name, shard)));
            }
            self.commit(txn).await?;
            let pooled = self
                .load_where::<Port>(keys::PORTS, |p| {
                    p.binding.host_id == name && p.device_id == POOL_DEVICE_ID
                })
                .await?;
            for (port, _) in pooled {
                match self.remove_port(Some(caller), &port.meta.id, None).await {
                    Ok(()) | Err(Error::NotFound { .. }) => {}
                    Err(e) => return Err(e),
                }
            }
            Ok(())
        })
        .await?;
        if let Some(lease) = beat {
            // Its key is gone with the node; the lease would only linger until it ends.
            if let Err(e) = self.store.revoke_lease(lease).await {
                tracing::warn!("revoking the heartbeat lease of {name}: {e}");
            }
        }
        Ok(())
    }

    /// An agent reports the store revision its node's data plane has applied:
    /// `{"revision": N}` (what load balancers' `provisioning_status` waits for).
    pub async fn set_applied(&self, caller: &Caller, name: &str, body: Value) -> Result<()> {
        policy::authorize_caller("update_node", caller)?;
        let revision = body
            .get("revision")
            .and_then(Value::as_u64)
            .ok_or_else(|| Error::invalid_attr("revision", "a store revision is required"))?;
        self.must_load_node(name).await?;
        let txn = Txn::new().then(Op::put(keys::applied(name), revision.to_string()));
        self.commit(txn).await?;
        Ok(())
    }

    /// An agent reports what its load balancing counted: `{"listeners": {id: Stats | null},
    /// "replace": bool}`, the listeners whose statistics changed since its last report
    /// (`null`: no longer balanced there); `replace` starts the node's statistics afresh (an
    /// agent's first report). Only the shards the listeners are in are rewritten.
    pub async fn set_lb_stats(&self, caller: &Caller, name: &str, body: Value) -> Result<()> {
        policy::authorize_caller("update_node", caller)?;
        let changes: BTreeMap<String, Option<Stats>> = body
            .get("listeners")
            .cloned()
            .and_then(|l| serde_json::from_value(l).ok())
            .ok_or_else(|| {
                Error::invalid_attr("listeners", "statistics by listener id are required")
            })?;
        let replace = match body.get("replace") {
            None => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => return Err(Error::invalid_attr("replace", "must be a boolean")),
        };
        self.must_load_node(name).await?;
        if changes.is_empty() && !replace {
            return Ok(());
        }
        let mut by_shard: BTreeMap<u8, Vec<(&String, &Option<Stats>)>> = BTreeMap::new();
        for change in &changes {
            by_shard
                .entry(stats_shard(change.0))
                .or_default()
                .push(change);
        }
        self.retry(|| async {
            let shards = self
                .store
                .range(&keys::lb_stats(name))
                .await
                .map_err(store_error)?;
            let mut txn = Txn::new();
            for shard in 0..STATS_SHARDS {
                let touched = by_shard.get(&shard);
                if touched.is_none() && !replace {
                    continue;
                }
                let key = keys::lb_stats_shard(name, shard);
                let held = shards.kvs.iter().find(|kv| kv.key == key);
                let mut stats: BTreeMap<String, Stats> = match (&held, replace) {
                    (Some(kv), false) => serde_json::from_slice(&kv.value).unwrap_or_default(),
                    _ => BTreeMap::new(),
                };
                merge_stats(&mut stats, touched.into_iter().flatten().copied());
                txn = match held {
                    Some(kv) => txn.when(Compare::mod_revision(key.clone(), kv.mod_revision)),
                    None => txn.when(Compare::absent(&key)),
                };
                txn = if stats.is_empty() {
                    txn.then(Op::delete(key))
                } else {
                    txn.then(Op::put(key, encode(&stats)?))
                };
            }
            Ok(if self.commit(txn).await? {
                Attempt::Done(())
            } else {
                Attempt::Retry
            })
        })
        .await
    }

    /// The statistics of `listeners` summed over the nodes' last reports.
    pub(crate) async fn listener_stats(&self, listeners: &[String]) -> Result<Stats> {
        let reports = self
            .store
            .range(keys::LB_STATS)
            .await
            .map_err(store_error)?;
        let mut total = Stats::default();
        for kv in &reports.kvs {
            let Ok(report) = serde_json::from_slice::<BTreeMap<String, Stats>>(&kv.value) else {
                continue;
            };
            for id in listeners {
                if let Some(s) = report.get(id) {
                    total += *s;
                }
            }
        }
        Ok(total)
    }

    /// The store revision each live node has applied (a live node that never reported: 0).
    pub(crate) async fn applied_by_live_nodes(&self) -> Result<HashMap<String, u64>> {
        let beats = self
            .store
            .range(keys::HEARTBEATS)
            .await
            .map_err(store_error)?;
        let applied = self.store.range(keys::APPLIED).await.map_err(store_error)?;
        let number = |raw: &[u8]| -> u64 {
            std::str::from_utf8(raw)
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .unwrap_or(0)
        };
        // A heartbeat key lives while its node beats (its lease ends after
        // AGENT_DOWN_SECONDS of silence).
        let mut out: HashMap<String, u64> = beats
            .kvs
            .iter()
            .map(|kv| (keys::last_segment(&kv.key).to_owned(), 0))
            .collect();
        for kv in &applied.kvs {
            if let Some(rev) = out.get_mut(keys::last_segment(&kv.key)) {
                *rev = number(&kv.value);
            }
        }
        Ok(out)
    }

    /// An agent reports a port's status: `{"status": "ACTIVE", "node": "<name>"}`. Only the
    /// node the port is bound to may report.
    pub async fn set_port_status(&self, caller: &Caller, id: &str, body: Value) -> Result<Object> {
        policy::authorize_caller("update_port:status", caller)?;
        let status = body
            .get("status")
            .and_then(Value::as_str)
            .filter(|s| PORT_STATES.contains(s))
            .ok_or_else(|| {
                Error::invalid_attr("status", format!("must be one of {PORT_STATES:?}"))
            })?
            .to_owned();
        let node = body
            .get("node")
            .and_then(Value::as_str)
            .ok_or_else(|| Error::invalid_attr("node", "the reporting node is required"))?
            .to_owned();
        self.retry(|| async {
            let (mut port, rev) = self.must_load::<Port>(id).await?;
            if port.binding.host_id != node {
                return Err(Error::Conflict(format!(
                    "Port {id} is bound to '{}', not to '{node}'",
                    port.binding.host_id
                )));
            }
            if port.status == status {
                return Ok(Attempt::Done(port.render(caller)));
            }
            port.status = status.clone();
            port.meta.touch(&now());
            Ok(if self.write_back(id, rev, &port).await? {
                Attempt::Done(port.render(caller))
            } else {
                Attempt::Retry
            })
        })
        .await
    }
}
