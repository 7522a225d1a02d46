//! A node's view, built from the lines of `GET /isthmus/v1/watch`: the typed objects of
//! [`isthmus_model::view::node`], the same types the controller writes them from.

use std::collections::{BTreeMap, BTreeSet};

pub use isthmus_model::dns_record::DnsRecord;
pub use isthmus_model::namespace_binding::NamespaceBinding;
pub use isthmus_model::view::node::{
    AddressGroup, AddressPair, DhcpOption, Direction, DnsAssignment, FixedIp, FloatingIp, Gateway,
    HealthMonitor, HostRoute, IdOnly, Listener, LoadBalancer, Member, Network, Node, Persistence,
    Pool, Port, Route, Router, SecurityGroup, SecurityGroupRule, Subnet,
};
use serde_json::Value;

/// Why a watch line could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum ViewError {
    /// Not JSON, or an object without the attributes the data plane needs.
    #[error("bad watch line: {0}")]
    BadLine(String),
}

/// Everything the node was sent, by kind and id, typed as the data plane reads it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NodeView {
    /// Networks with a local port.
    pub networks: BTreeMap<String, Network>,
    /// Ports of those networks, and members of remote groups.
    pub ports: BTreeMap<String, Port>,
    /// Every node by name.
    pub nodes: BTreeMap<String, Node>,
    /// Routers running on the node.
    pub routers: BTreeMap<String, Router>,
    /// Floating IPs of those routers.
    pub floating_ips: BTreeMap<String, FloatingIp>,
    /// Load balancers whose VIP local ports reach, with everything under them.
    pub balancing: Balancing,
    /// Bumped by every change to anything but [`NodeView::balancing`] (across relists too): a
    /// reconciler that saw this generation needs only the load balancers redone.
    pub generation: u64,
    /// Subnets of the networks.
    pub subnets: BTreeMap<String, Subnet>,
    /// Security groups of the ports, and the groups their rules name.
    pub security_groups: BTreeMap<String, SecurityGroup>,
    /// Address groups the rules name.
    pub address_groups: BTreeMap<String, AddressGroup>,
    /// Kubernetes namespaces' networks, by namespace.
    pub namespace_bindings: BTreeMap<String, NamespaceBinding>,
    /// Names the node's resolvers answer, by `<namespace>/<service>`.
    pub dns_records: BTreeMap<String, DnsRecord>,
    /// Revision of the last line applied.
    pub revision: u64,
    /// Whether the initial view is complete (a synced bookmark was seen).
    pub synced: bool,
    /// Whether the view is whole: synced, and no change applied since the last bookmark (the
    /// controller closes every batch with one, so a view read now is not half a batch).
    pub settled: bool,
    /// Every object held, (kind, id) → the revision its line carried: what a reconnecting
    /// agent tells the controller, which then sends only what differs ([`NodeView::held`]).
    pub revisions: BTreeMap<(String, String), u64>,
}

fn parse<T: serde::de::DeserializeOwned>(object: &Value) -> Result<T, ViewError> {
    T::deserialize(object).map_err(|e| ViewError::BadLine(e.to_string()))
}

/// The load-balancing objects of a view, typed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Balancing {
    /// Load balancers by id.
    pub load_balancers: BTreeMap<String, LoadBalancer>,
    /// Listeners by id.
    pub listeners: BTreeMap<String, Listener>,
    /// Pools by id.
    pub pools: BTreeMap<String, Pool>,
    /// Members by id.
    pub members: BTreeMap<String, Member>,
    /// Health monitors by id.
    pub monitors: BTreeMap<String, HealthMonitor>,
    /// Listeners whose service may have changed since a reconciler last took this set (a
    /// listener, its load balancer, its pool or one of the pool's members changed): a
    /// load-balancing-only pass redoes just these.
    pub changed: BTreeSet<String>,
}

impl Balancing {
    /// The listeners whose service an object of `kind` with `id` takes part in.
    fn listeners_of(&self, kind: &str, id: &str) -> Vec<String> {
        let of_pools = |pools: &[&str]| -> Vec<String> {
            self.listeners
                .values()
                .filter(|l| {
                    l.default_pool_id
                        .as_deref()
                        .is_some_and(|p| pools.contains(&p))
                })
                .map(|l| l.id.clone())
                .collect()
        };
        match kind {
            "listener" => vec![id.to_owned()],
            "loadbalancer" => self
                .load_balancers
                .get(id)
                .map(|lb| lb.listeners.iter().map(|l| l.id.clone()).collect())
                .unwrap_or_default(),
            "pool" => of_pools(&[id]),
            "member" => {
                let pools: Vec<&str> = self
                    .pools
                    .values()
                    .filter(|p| p.members.iter().any(|m| m.id == id))
                    .map(|p| p.id.as_str())
                    .collect();
                of_pools(&pools)
            }
            _ => Vec::new(),
        }
    }
}

/// Whether objects of `kind` are load-balancing ones (kept in [`NodeView::balancing`]).
fn is_balancing(kind: &str) -> bool {
    matches!(
        kind,
        "loadbalancer" | "listener" | "pool" | "member" | "healthmonitor"
    )
}

fn replace<T: PartialEq + Clone>(map: &mut BTreeMap<String, T>, id: String, value: T) -> bool {
    map.insert(id, value.clone()) != Some(value)
}

impl NodeView {
    /// A subnet, when the view has it.
    pub fn subnet_info(&self, id: &str) -> Option<&Subnet> {
        self.subnets.get(id)
    }

    /// The subnets of a network the view has.
    pub fn subnets_of<'a>(&'a self, network_id: &'a str) -> impl Iterator<Item = &'a Subnet> + 'a {
        self.subnets
            .values()
            .filter(move |s| s.network_id == network_id)
    }

    /// What the view holds, as the body of a resumed watch
    /// (`POST /isthmus/v1/watch`): `{"held": {kind: {id: revision}}}`.
    pub fn held(&self) -> Value {
        let mut kinds = serde_json::Map::new();
        for ((kind, id), revision) in &self.revisions {
            if let Value::Object(ids) = kinds
                .entry(kind.clone())
                .or_insert_with(|| Value::Object(serde_json::Map::new()))
            {
                ids.insert(id.clone(), Value::from(*revision));
            }
        }
        serde_json::json!({ "held": kinds })
    }

    /// Applies one watch line. Returns `Ok(true)` when the view changed. A `RELIST` line
    /// clears the view (the caller reconnects and receives a fresh snapshot).
    pub fn apply(&mut self, line: &Value) -> Result<bool, ViewError> {
        let field = |name: &str| line.get(name).and_then(Value::as_str).unwrap_or_default();
        if let Some(rev) = line.get("revision").and_then(Value::as_u64) {
            self.revision = self.revision.max(rev);
        }
        match field("type") {
            "BOOKMARK" => {
                if line.get("synced").and_then(Value::as_bool) == Some(true) {
                    self.synced = true;
                }
                self.settled = self.synced;
                Ok(false)
            }
            "RELIST" => {
                let generation = self.generation + 1;
                // Every listener held may be gone or different once the snapshot is in.
                let mut changed = std::mem::take(&mut self.balancing.changed);
                changed.extend(std::mem::take(&mut self.balancing.listeners).into_keys());
                *self = NodeView::default();
                self.generation = generation;
                self.balancing.changed = changed;
                Ok(true)
            }
            "ADDED" | "MODIFIED" | "DELETED" if is_balancing(field("kind")) => {
                // Both what the object was part of and what it is part of now.
                let (kind, id) = (field("kind"), Self::line_id(line));
                let before = self.balancing.listeners_of(kind, id);
                let changed = self.apply_object(line)?;
                if changed {
                    let after = self.balancing.listeners_of(kind, id);
                    self.balancing
                        .changed
                        .extend(before.into_iter().chain(after));
                }
                Ok(changed)
            }
            _ => self.apply_object(line),
        }
    }

    /// The id a watch line is about.
    fn line_id(line: &Value) -> &str {
        match line.get("id").and_then(Value::as_str).unwrap_or_default() {
            "" => line
                .get("object")
                .and_then(|o| o.get("id"))
                .and_then(Value::as_str)
                .unwrap_or_default(),
            id => id,
        }
    }

    /// Applies an `ADDED`, `MODIFIED` or `DELETED` line (or fails on an `ERROR` one).
    fn apply_object(&mut self, line: &Value) -> Result<bool, ViewError> {
        let field = |name: &str| line.get(name).and_then(Value::as_str).unwrap_or_default();
        match field("type") {
            "ADDED" | "MODIFIED" => {
                self.settled = false;
                let object = line
                    .get("object")
                    .ok_or_else(|| ViewError::BadLine("no object".into()))?;
                let id = Self::line_id(line);
                // A change the data plane does not see (a port renamed) changes nothing here.
                let changed = match field("kind") {
                    "network" => {
                        let n: Network = parse(object)?;
                        self.networks.insert(n.id.clone(), n.clone()) != Some(n)
                    }
                    "port" => {
                        // Status is the agent's own report coming back: nothing to reconcile.
                        let p: Port = parse(object)?;
                        let same = self.ports.get(&p.id).is_some_and(|old| {
                            Port {
                                status: p.status.clone(),
                                ..old.clone()
                            } == p
                        });
                        self.ports.insert(p.id.clone(), p);
                        !same
                    }
                    "node" => {
                        let n: Node = parse(object)?;
                        self.nodes.insert(n.name.clone(), n.clone()) != Some(n)
                    }
                    "router" => {
                        let r: Router = parse(object)?;
                        self.routers.insert(r.id.clone(), r.clone()) != Some(r)
                    }
                    "floatingip" => {
                        let f: FloatingIp = parse(object)?;
                        self.floating_ips.insert(f.id.clone(), f.clone()) != Some(f)
                    }
                    "loadbalancer" => {
                        let l: LoadBalancer = parse(object)?;
                        replace(&mut self.balancing.load_balancers, l.id.clone(), l)
                    }
                    "listener" => {
                        let l: Listener = parse(object)?;
                        replace(&mut self.balancing.listeners, l.id.clone(), l)
                    }
                    "pool" => {
                        let p: Pool = parse(object)?;
                        replace(&mut self.balancing.pools, p.id.clone(), p)
                    }
                    "member" => {
                        let m: Member = parse(object)?;
                        replace(&mut self.balancing.members, m.id.clone(), m)
                    }
                    "healthmonitor" => {
                        let h: HealthMonitor = parse(object)?;
                        replace(&mut self.balancing.monitors, h.id.clone(), h)
                    }
                    "subnet" => {
                        let v: Subnet = parse(object)?;
                        replace(&mut self.subnets, v.id.clone(), v)
                    }
                    "security_group" => {
                        let v: SecurityGroup = parse(object)?;
                        replace(&mut self.security_groups, v.id.clone(), v)
                    }
                    "address_group" => {
                        let v: AddressGroup = parse(object)?;
                        replace(&mut self.address_groups, v.id.clone(), v)
                    }
                    "namespace_binding" => {
                        let v: NamespaceBinding = parse(object)?;
                        replace(&mut self.namespace_bindings, v.namespace.clone(), v)
                    }
                    "dns_record" => {
                        let v: DnsRecord = parse(object)?;
                        replace(&mut self.dns_records, id.to_owned(), v)
                    }
                    // A kind this agent does not know (a newer controller's): nothing to do.
                    _ => false,
                };
                if changed && !is_balancing(field("kind")) {
                    self.generation += 1;
                }
                let revision = line.get("revision").and_then(Value::as_u64).unwrap_or(0);
                self.revisions
                    .insert((field("kind").to_owned(), id.to_owned()), revision);
                Ok(changed)
            }
            "DELETED" => {
                self.settled = false;
                let id = field("id").to_owned();
                self.revisions
                    .remove(&(field("kind").to_owned(), id.clone()));
                let removed = match field("kind") {
                    "network" => self.networks.remove(&id).is_some(),
                    "port" => self.ports.remove(&id).is_some(),
                    "node" => self.nodes.remove(&id).is_some(),
                    "router" => self.routers.remove(&id).is_some(),
                    "floatingip" => self.floating_ips.remove(&id).is_some(),
                    "loadbalancer" => self.balancing.load_balancers.remove(&id).is_some(),
                    "listener" => self.balancing.listeners.remove(&id).is_some(),
                    "pool" => self.balancing.pools.remove(&id).is_some(),
                    "member" => self.balancing.members.remove(&id).is_some(),
                    "healthmonitor" => self.balancing.monitors.remove(&id).is_some(),
                    "subnet" => self.subnets.remove(&id).is_some(),
                    "security_group" => self.security_groups.remove(&id).is_some(),
                    "address_group" => self.address_groups.remove(&id).is_some(),
                    "namespace_binding" => self.namespace_bindings.remove(&id).is_some(),
                    "dns_record" => self.dns_records.remove(&id).is_some(),
                    _ => false,
                };
                if removed && !is_balancing(field("kind")) {
                    self.generation += 1;
                }
                Ok(removed)
            }
            "ERROR" => Err(ViewError::BadLine(format!(
                "controller error: {}",
                field("message")
            ))),
            other => Err(ViewError::BadLine(format!("unknown line type '{other}'"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_view_is_settled_only_between_batches() {
        let mut view = NodeView::default();
        let node = json!({"type": "ADDED", "kind": "dns_record", "revision": 2, "id": "a/b",
            "object": {"id": "a/b", "fqdn": "b.a.svc.cluster.local.", "zone": "cluster.local.",
                "addresses": [], "network_id": "svc"}});
        view.apply(&node).unwrap();
        assert!(!view.settled, "not synced yet");
        view.apply(&json!({"type": "BOOKMARK", "revision": 2, "synced": true}))
            .unwrap();
        assert!(view.settled);
        view.apply(&json!({"type": "DELETED", "kind": "dns_record", "id": "a/b", "revision": 3}))
            .unwrap();
        assert!(!view.settled, "half a batch");
        view.apply(&json!({"type": "BOOKMARK", "revision": 3}))
            .unwrap();
        assert!(view.settled, "the batch is closed");
    }

    #[test]
    fn the_view_knows_what_it_holds() {
        let mut view = NodeView::default();
        let port = json!({"type": "ADDED", "kind": "namespace_binding", "revision": 4, "id": "ns1",
            "object": {"namespace": "ns1", "network_id": "n1", "project_id": "p",
                "created_at": "2026-12-05T00:00:00Z", "updated_at": "2026-12-05T00:00:00Z"}});
        view.apply(&port).unwrap();
        assert_eq!(
            view.held(),
            json!({"held": {"namespace_binding": {"ns1": 4}}})
        );
        view.apply(
            &json!({"type": "DELETED", "kind": "namespace_binding", "id": "ns1", "revision": 6}),
        )
        .unwrap();
        assert_eq!(view.held(), json!({"held": {}}));
    }

    #[test]
    fn applies_watch_lines() {
        let mut view = NodeView::default();
        let net = json!({"type": "ADDED", "kind": "network", "revision": 3, "object": {
            "id": "n1", "mtu": 1450, "provider:network_type": "vxlan", "provider:segmentation_id": 7,
            "provider:physical_network": null, "name": "x"}});
        assert!(view.apply(&net).unwrap());
        assert_eq!(view.networks["n1"].segmentation_id, Some(7));
        let port = json!({"type": "ADDED", "kind": "port", "revision": 4, "object": {
            "id": "p1", "network_id": "n1", "mac_address": "fa:16:3e:00:00:01",
            "fixed_ips": [{"subnet_id": "s", "ip_address": "10.0.0.2"}], "binding:host_id": "a",
            "security_groups": [], "port_security_enabled": true, "allowed_address_pairs": [], "status": "DOWN"}});
        view.apply(&port).unwrap();
        view.apply(&json!({"type": "BOOKMARK", "revision": 4, "synced": true}))
            .unwrap();
        assert!(view.synced);
        assert_eq!(view.revision, 4);
        assert!(view
            .apply(&json!({"type": "DELETED", "kind": "port", "id": "p1", "revision": 5}))
            .unwrap());
        assert!(view.ports.is_empty());
        assert!(view
            .apply(&json!({"type": "ADDED", "kind": "port", "object": {"id": "x"}}))
            .is_err());
        // Load balancers change without moving the generation; anything else moves it, and a
        // relist does too.
        let generation = view.generation;
        view.apply(&json!({"type": "ADDED", "kind": "member", "object": {
            "id": "m", "address": "10.0.0.9", "protocol_port": 80, "weight": 1, "backup": false,
            "admin_state_up": true, "operating_status": "NO_MONITOR"}}))
            .unwrap();
        assert_eq!(view.generation, generation);
        assert_eq!(view.balancing.members["m"].protocol_port, 80);
        view.apply(&json!({"type": "DELETED", "kind": "network", "id": "n1", "revision": 6}))
            .unwrap();
        assert_eq!(view.generation, generation + 1);
        view.apply(&json!({"type": "ADDED", "kind": "listener", "object": {
            "id": "l", "protocol": "TCP", "protocol_port": 80, "admin_state_up": true,
            "default_pool_id": null, "connection_limit": -1, "allowed_cidrs": []}}))
            .unwrap();
        view.balancing.changed.clear();
        view.apply(&json!({"type": "RELIST", "revision": 9}))
            .unwrap();
        assert!(view.networks.is_empty() && !view.synced);
        assert!(view.balancing.members.is_empty());
        // What the snapshot no longer holds must be redone by the next pass.
        assert!(view.balancing.changed.contains("l"));
        assert_eq!(view.generation, generation + 2);
    }
}
