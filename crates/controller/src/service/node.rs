//! Nodes: agent registration, heartbeats, their Neutron `agents` view, and port status
//! reports from agents.

use std::collections::HashMap;
use std::time::{SystemTime, UNIX_EPOCH};

use isthmus_model::node::{Node, Registration, AGENT_DOWN_SECONDS};
use isthmus_model::policy;
use isthmus_model::port::POOL_DEVICE_ID;
use isthmus_model::resource::Resource;
use isthmus_model::{Caller, Error, Port, Result};
use isthmus_store::{Compare, Op, Txn};
use serde_json::Value;

use super::{encode, new_id, now, store_error, Attempt, Object, Service};
use crate::keys;

/// Port states an agent may report.
const PORT_STATES: &[&str] = &["ACTIVE", "DOWN", "ERROR", "BUILD"];

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

    /// When the node last sent a heartbeat (unix seconds).
    async fn heartbeat_of(&self, name: &str) -> Result<Option<u64>> {
        Ok(self
            .store
            .get(&keys::heartbeat(name))
            .await
            .map_err(store_error)?
            .and_then(|kv| std::str::from_utf8(&kv.value).ok()?.parse().ok()))
    }

    async fn liveness(&self, name: &str) -> Result<(bool, Option<String>)> {
        let beat = self.heartbeat_of(name).await?;
        let alive = beat.is_some_and(|b| unix_now().saturating_sub(b) <= AGENT_DOWN_SECONDS);
        Ok((alive, beat.map(isthmus_model::time::rfc3339)))
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
                    .then(Op::put(keys::node(&node.name), encode(&node)?))
                    .then(Op::put(keys::heartbeat(&node.name), unix_now().to_string()));
                Ok(if self.commit(txn).await? {
                    Attempt::Done((created, node))
                } else {
                    Attempt::Retry
                })
            })
            .await?;
        if !node.physnets.is_empty() {
            self.adopt_waiting_gateways(&node).await;
        }
        let (alive, beat) = self.liveness(&node.name).await?;
        Ok((created, node.render(alive, beat.as_deref())))
    }

    /// Records a heartbeat of a registered node.
    pub async fn heartbeat(&self, caller: &Caller, name: &str) -> Result<()> {
        policy::authorize_caller("update_node", caller)?;
        self.must_load_node(name).await?;
        let txn = Txn::new().then(Op::put(keys::heartbeat(name), unix_now().to_string()));
        self.commit(txn).await?;
        Ok(())
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
        self.atomically(|| async {
            self.must_load_node(name).await?;
            let txn = Txn::new()
                .then(Op::delete(keys::node(name)))
                .then(Op::delete(keys::heartbeat(name)))
                .then(Op::delete(keys::applied(name)));
            self.commit(txn).await?;
            let pooled = self
                .load_all::<Port>(keys::PORTS)
                .await?
                .into_iter()
                .filter(|(p, _)| p.binding.host_id == name && p.device_id == POOL_DEVICE_ID);
            for (port, _) in pooled {
                match self.remove_port(Some(caller), &port.meta.id, None).await {
                    Ok(()) | Err(Error::NotFound { .. }) => {}
                    Err(e) => return Err(e),
                }
            }
            Ok(())
        })
        .await
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
        let now = unix_now();
        let mut out: HashMap<String, u64> = beats
            .kvs
            .iter()
            .filter(|kv| now.saturating_sub(number(&kv.value)) <= AGENT_DOWN_SECONDS)
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
