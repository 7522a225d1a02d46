//! What a node needs to know, computed from a mirror of the desired state.
//!
//! A node's view holds: every network with a port bound to the node, all ports and subnets of
//! those networks (for forwarding entries), the security groups its ports use with the groups
//! their rules name as remote and the member ports of those remote groups (for address sets),
//! and every node (for tunnel endpoints).

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use bytes::Bytes;
use serde_json::Value;

use crate::dns_record::DnsRecord;
use crate::lbaas::{HealthMonitor, Listener, LoadBalancer, Member, Pool};
use crate::namespace_binding::NamespaceBinding;
use crate::node::Node;

use crate::router::OWNER_GATEWAY;
use crate::{
    AddressGroup, FloatingIp, Network, Port, Router, SecurityGroup, SecurityGroupRule, Subnet,
};

mod fanout;
pub mod node;

pub use fanout::{Fanout, WatcherId};

/// A desired-state object.
#[derive(Debug, Clone, PartialEq)]
pub enum Object {
    /// A network.
    Network(Network),
    /// A subnet.
    Subnet(Subnet),
    /// A port.
    Port(Port),
    /// A security group (its rules are separate objects).
    SecurityGroup(SecurityGroup),
    /// A security group rule.
    SecurityGroupRule(SecurityGroupRule),
    /// A node.
    Node(Node),
    /// A namespace binding (keyed by namespace).
    NamespaceBinding(NamespaceBinding),
    /// A name the node-local resolvers answer (keyed `<namespace>/<service>`).
    DnsRecord(DnsRecord),
    /// A router.
    Router(Router),
    /// A floating IP.
    FloatingIp(FloatingIp),
    /// An address group.
    AddressGroup(AddressGroup),
    /// A load balancer.
    LoadBalancer(LoadBalancer),
    /// A listener.
    Listener(Listener),
    /// A pool.
    Pool(Pool),
    /// A pool member.
    Member(Member),
    /// A health monitor.
    HealthMonitor(HealthMonitor),
}

/// Kinds of objects, as named on the watch stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ObjectKind {
    /// `network`.
    Network,
    /// `subnet`.
    Subnet,
    /// `port`.
    Port,
    /// `security_group` (with its rules).
    SecurityGroup,
    /// `security_group_rule` (sent inside their group).
    SecurityGroupRule,
    /// `node`.
    Node,
    /// `namespace_binding`.
    NamespaceBinding,
    /// `dns_record`.
    DnsRecord,
    /// `router`.
    Router,
    /// `floatingip`.
    FloatingIp,
    /// `address_group`.
    AddressGroup,
    /// `loadbalancer`.
    LoadBalancer,
    /// `listener`.
    Listener,
    /// `pool`.
    Pool,
    /// `member`.
    Member,
    /// `healthmonitor`.
    HealthMonitor,
}

impl ObjectKind {
    /// Every kind.
    pub const ALL: [ObjectKind; 16] = [
        ObjectKind::Network,
        ObjectKind::Subnet,
        ObjectKind::Port,
        ObjectKind::SecurityGroup,
        ObjectKind::SecurityGroupRule,
        ObjectKind::Node,
        ObjectKind::NamespaceBinding,
        ObjectKind::DnsRecord,
        ObjectKind::Router,
        ObjectKind::FloatingIp,
        ObjectKind::AddressGroup,
        ObjectKind::LoadBalancer,
        ObjectKind::Listener,
        ObjectKind::Pool,
        ObjectKind::Member,
        ObjectKind::HealthMonitor,
    ];

    /// The kind named `name` on the wire.
    pub fn parse(name: &str) -> Option<ObjectKind> {
        Self::ALL.into_iter().find(|k| k.as_str() == name)
    }

    /// The name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ObjectKind::Network => "network",
            ObjectKind::Subnet => "subnet",
            ObjectKind::Port => "port",
            ObjectKind::SecurityGroup => "security_group",
            ObjectKind::SecurityGroupRule => "security_group_rule",
            ObjectKind::Node => "node",
            ObjectKind::NamespaceBinding => "namespace_binding",
            ObjectKind::DnsRecord => "dns_record",
            ObjectKind::Router => "router",
            ObjectKind::FloatingIp => "floatingip",
            ObjectKind::AddressGroup => "address_group",
            ObjectKind::LoadBalancer => "loadbalancer",
            ObjectKind::Listener => "listener",
            ObjectKind::Pool => "pool",
            ObjectKind::Member => "member",
            ObjectKind::HealthMonitor => "healthmonitor",
        }
    }
}

/// An object's id (nodes: their name), shared: the mirror's map, its indexes and every
/// watch's record of what it sent hold one allocation per object, not a string each.
pub type Id = Arc<str>;

/// (kind, id) of an object.
pub type ObjectKey = (ObjectKind, Id);

/// The key of object `id` of `kind`.
pub fn object_key(kind: ObjectKind, id: &str) -> ObjectKey {
    (kind, Id::from(id))
}

/// A part of the desired state that nodes see as a whole: a node's view is the union of the
/// scopes it subscribes to ([`Mirror::subscriptions`]).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    /// Nodes, namespace bindings and DNS records: every node sees them.
    Global,
    /// A network with its subnets, its ports and the load balancers whose VIP is on it.
    Network(String),
    /// A router's external network with its subnets (not its ports).
    Gateway(String),
    /// A router with its floating IPs and their ports on the external network.
    Router(String),
    /// A security group (carrying its rules).
    Group(String),
    /// The ports in a security group (a remote group's members).
    Members(String),
    /// An address group.
    AddressGroup(String),
}

/// Something a node's choice of scopes reads: a change to it makes the node choose again.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Dependency {
    /// The ports bound to a node.
    Host(String),
    /// Which routers have an interface on a network.
    RoutersOn(String),
    /// A router's interfaces and gateway.
    Router(String),
    /// The rules of a security group (their remote groups and address groups).
    Rules(String),
}

impl Object {
    /// Its key.
    pub fn key(&self) -> ObjectKey {
        match self {
            Object::Network(n) => object_key(ObjectKind::Network, &n.meta.id),
            Object::Subnet(s) => object_key(ObjectKind::Subnet, &s.meta.id),
            Object::Port(p) => object_key(ObjectKind::Port, &p.meta.id),
            Object::SecurityGroup(g) => object_key(ObjectKind::SecurityGroup, &g.meta.id),
            Object::SecurityGroupRule(r) => object_key(ObjectKind::SecurityGroupRule, &r.meta.id),
            Object::Node(n) => object_key(ObjectKind::Node, &n.name),
            Object::NamespaceBinding(b) => object_key(ObjectKind::NamespaceBinding, &b.namespace),
            Object::DnsRecord(r) => object_key(ObjectKind::DnsRecord, &r.id),
            Object::Router(r) => object_key(ObjectKind::Router, &r.meta.id),
            Object::FloatingIp(f) => object_key(ObjectKind::FloatingIp, &f.meta.id),
            Object::AddressGroup(g) => object_key(ObjectKind::AddressGroup, &g.meta.id),
            Object::LoadBalancer(l) => object_key(ObjectKind::LoadBalancer, &l.meta.id),
            Object::Listener(l) => object_key(ObjectKind::Listener, &l.meta.id),
            Object::Pool(p) => object_key(ObjectKind::Pool, &p.meta.id),
            Object::Member(m) => object_key(ObjectKind::Member, &m.meta.id),
            Object::HealthMonitor(h) => object_key(ObjectKind::HealthMonitor, &h.meta.id),
        }
    }
}

/// Whether the mirror indexes the ports of `owner` (see [`Mirror::ports_owned_by`]).
fn owner_indexed(owner: &str) -> bool {
    owner.starts_with("network:") || owner == crate::port::POD_DEVICE_OWNER
}

/// A port from its stored JSON (decoded once already, when the mirror took it).
fn decode_port(raw: &[u8]) -> Option<Port> {
    serde_json::from_slice(raw).ok()
}

/// Ids by what they are indexed under.
type Index = HashMap<String, BTreeSet<Id>>;

fn index_add(index: &mut Index, key: &str, id: &Id) {
    index
        .entry(key.to_owned())
        .or_default()
        .insert(Arc::clone(id));
}

fn index_remove(index: &mut Index, key: &str, id: &str) {
    if let Some(set) = index.get_mut(key) {
        set.remove(id);
        if set.is_empty() {
            index.remove(key);
        }
    }
}

/// Counts bound port `p` in (`up`) or out of its network's hosts.
fn count_host(index: &mut HashMap<String, BTreeMap<String, usize>>, p: &Port, up: bool) {
    let hosts = index.entry(p.network_id.clone()).or_default();
    let n = hosts.entry(p.binding.host_id.clone()).or_default();
    if up {
        *n += 1;
    } else {
        *n = n.saturating_sub(1);
        if *n == 0 {
            hosts.remove(&p.binding.host_id);
        }
    }
    if hosts.is_empty() {
        index.remove(&p.network_id);
    }
}

/// How the mirror holds an object.
#[derive(Debug)]
enum Held {
    /// Decoded.
    Decoded(Box<Object>),
    /// A port as the store holds it: its JSON, shared with the store's own copy. Ports are
    /// the kind counted in hundreds of thousands, and a decoded one costs about twice its
    /// JSON (1.2 KB against 0.6 KB) on top of the store's; it is decoded when read.
    Port(Bytes),
}

/// All objects with their revisions, indexed for view computation.
#[derive(Debug, Default)]
pub struct Mirror {
    objects: HashMap<ObjectKey, (Held, u64)>,
    ports_by_host: Index,
    ports_by_network: Index,
    /// Per network, the hosts its bound ports are on, with how many ports each.
    hosts_by_network: HashMap<String, BTreeMap<String, usize>>,
    ports_by_group: Index,
    ports_by_device_owner: Index,
    subnets_by_network: Index,
    rules_by_group: Index,
    routers_by_network: Index,
    fips_by_router: Index,
    fips_by_port: Index,
    lbs_by_network: Index,
    fips_by_floating_port: Index,
    /// Objects every node sees (nodes, namespace bindings, DNS records).
    globals: BTreeSet<ObjectKey>,
    /// What changed since [`Mirror::take_changes`] last ran: each key with the object it held
    /// before (for the watch fan-out, which must know where an object was as well as where it
    /// is).
    log: Vec<(ObjectKey, Option<Object>)>,
}

impl Mirror {
    /// An empty mirror.
    pub fn new() -> Self {
        Self::default()
    }

    /// The revision of the mirrored object, if any.
    pub fn revision(&self, key: &ObjectKey) -> Option<u64> {
        self.objects.get(key).map(|(_, r)| *r)
    }

    /// The mirrored object (a port is decoded from its stored JSON).
    pub fn get(&self, key: &ObjectKey) -> Option<Cow<'_, Object>> {
        match &self.objects.get(key)?.0 {
            Held::Decoded(object) => Some(Cow::Borrowed(object)),
            Held::Port(raw) => Some(Cow::Owned(Object::Port(decode_port(raw)?))),
        }
    }

    /// A mirrored object the mirror keeps decoded: anything but a port read from the store
    /// (`None` for such a port, which [`Mirror::get`] and [`Mirror::port`] decode).
    pub fn decoded(&self, key: &ObjectKey) -> Option<&Object> {
        match &self.objects.get(key)?.0 {
            Held::Decoded(object) => Some(object),
            Held::Port(_) => None,
        }
    }

    /// The mirrored port `id`.
    pub fn port(&self, id: &str) -> Option<Port> {
        match &self.objects.get(&object_key(ObjectKind::Port, id))?.0 {
            Held::Decoded(object) => match &**object {
                Object::Port(p) => Some(p.clone()),
                _ => None,
            },
            Held::Port(raw) => decode_port(raw),
        }
    }

    /// Takes `key` out of the map, decoded.
    fn take(&mut self, key: &ObjectKey) -> Option<Object> {
        match self.objects.remove(key)?.0 {
            Held::Decoded(object) => Some(*object),
            Held::Port(raw) => decode_port(&raw).map(Object::Port),
        }
    }

    fn unindex(&mut self, object: &Object) {
        match object {
            Object::Port(p) => {
                index_remove(&mut self.ports_by_host, &p.binding.host_id, &p.meta.id);
                index_remove(&mut self.ports_by_network, &p.network_id, &p.meta.id);
                if !p.binding.host_id.is_empty() {
                    count_host(&mut self.hosts_by_network, p, false);
                }
                for g in &p.security_groups {
                    index_remove(&mut self.ports_by_group, g, &p.meta.id);
                }
                if owner_indexed(&p.device_owner) {
                    index_remove(&mut self.ports_by_device_owner, &p.device_owner, &p.meta.id);
                }
            }
            Object::Subnet(s) => {
                index_remove(&mut self.subnets_by_network, &s.network_id, &s.meta.id)
            }
            Object::SecurityGroupRule(r) => {
                index_remove(&mut self.rules_by_group, &r.security_group_id, &r.meta.id)
            }
            Object::Router(r) => {
                for i in &r.interfaces {
                    index_remove(&mut self.routers_by_network, &i.network_id, &r.meta.id);
                }
            }
            Object::FloatingIp(f) => {
                if let Some(a) = &f.association {
                    index_remove(&mut self.fips_by_router, &a.router_id, &f.meta.id);
                    index_remove(&mut self.fips_by_port, &a.port_id, &f.meta.id);
                }
                index_remove(
                    &mut self.fips_by_floating_port,
                    &f.floating_port_id,
                    &f.meta.id,
                );
            }
            Object::LoadBalancer(l) => {
                index_remove(&mut self.lbs_by_network, &l.vip_network_id, &l.meta.id)
            }
            Object::Node(_) | Object::NamespaceBinding(_) | Object::DnsRecord(_) => {
                self.globals.remove(&object.key());
            }
            _ => {}
        }
    }

    /// Indexes `object`, whose key (with the id allocation it shares) is `key`.
    fn index(&mut self, object: &Object, key: &ObjectKey) {
        let id = &key.1;
        match object {
            Object::Port(p) => {
                if !p.binding.host_id.is_empty() {
                    index_add(&mut self.ports_by_host, &p.binding.host_id, id);
                    count_host(&mut self.hosts_by_network, p, true);
                }
                index_add(&mut self.ports_by_network, &p.network_id, id);
                for g in &p.security_groups {
                    index_add(&mut self.ports_by_group, g, id);
                }
                if owner_indexed(&p.device_owner) {
                    index_add(&mut self.ports_by_device_owner, &p.device_owner, id);
                }
            }
            Object::Subnet(s) => index_add(&mut self.subnets_by_network, &s.network_id, id),
            Object::SecurityGroupRule(r) => {
                index_add(&mut self.rules_by_group, &r.security_group_id, id)
            }
            Object::Router(r) => {
                for i in &r.interfaces {
                    index_add(&mut self.routers_by_network, &i.network_id, id);
                }
            }
            Object::FloatingIp(f) => {
                if let Some(a) = &f.association {
                    index_add(&mut self.fips_by_router, &a.router_id, id);
                    index_add(&mut self.fips_by_port, &a.port_id, id);
                }
                index_add(&mut self.fips_by_floating_port, &f.floating_port_id, id);
            }
            Object::LoadBalancer(l) => index_add(&mut self.lbs_by_network, &l.vip_network_id, id),
            Object::Node(_) | Object::NamespaceBinding(_) | Object::DnsRecord(_) => {
                self.globals.insert(key.clone());
            }
            _ => {}
        }
    }

    /// The load balancers whose VIP is on `network`.
    pub fn load_balancers_on<'a>(
        &'a self,
        network: &str,
    ) -> impl Iterator<Item = &'a LoadBalancer> + 'a {
        self.lbs_by_network
            .get(network)
            .into_iter()
            .flatten()
            .filter_map(
                |id| match self.decoded(&object_key(ObjectKind::LoadBalancer, id)) {
                    Some(Object::LoadBalancer(l)) => Some(l),
                    _ => None,
                },
            )
    }

    /// The floating IPs associated with `port`.
    pub fn floating_ips_of<'a>(&'a self, port: &str) -> impl Iterator<Item = &'a FloatingIp> + 'a {
        self.fips_by_port
            .get(port)
            .into_iter()
            .flatten()
            .filter_map(
                |id| match self.decoded(&object_key(ObjectKind::FloatingIp, id)) {
                    Some(Object::FloatingIp(f)) => Some(f),
                    _ => None,
                },
            )
    }

    /// Every node.
    pub fn nodes(&self) -> impl Iterator<Item = &Node> + '_ {
        self.globals
            .iter()
            .filter(|(kind, _)| *kind == ObjectKind::Node)
            .filter_map(|key| match self.decoded(key) {
                Some(Object::Node(n)) => Some(n),
                _ => None,
            })
    }

    /// The ports whose `device_owner` is `owner`, decoded: network service ports (`network:*`)
    /// and pods' (the owners indexed; not VMs', the bulk of a cloud that nothing asks for).
    pub fn ports_owned_by<'a>(&'a self, owner: &str) -> impl Iterator<Item = Port> + 'a {
        debug_assert!(owner_indexed(owner), "ports of {owner} are not indexed");
        self.ports_by_device_owner
            .get(owner)
            .into_iter()
            .flatten()
            .filter_map(|id| self.port(id))
    }

    /// Stores an object written at `revision`, unless the mirror already has a newer one
    /// (events replayed after a snapshot are ignored). Returns whether it was applied.
    pub fn put(&mut self, object: Object, revision: u64) -> bool {
        self.put_held(object, None, revision)
    }

    /// [`Mirror::put`] of an object read from the store as `raw` (its stored JSON, which
    /// the mirror keeps instead of the object when it is a port).
    pub fn put_stored(&mut self, object: Object, raw: Bytes, revision: u64) -> bool {
        self.put_held(object, Some(raw), revision)
    }

    fn put_held(&mut self, object: Object, raw: Option<Bytes>, revision: u64) -> bool {
        let key = object.key();
        if self.revision(&key).is_some_and(|r| r >= revision) {
            return false;
        }
        let old = self.take(&key);
        if let Some(old) = &old {
            self.unindex(old);
        }
        self.index(&object, &key);
        let held = match (&object, raw) {
            (Object::Port(_), Some(raw)) => Held::Port(raw),
            _ => Held::Decoded(Box::new(object)),
        };
        self.objects.insert(key.clone(), (held, revision));
        self.log.push((key, old));
        true
    }

    /// The objects changed since the last call, each with what it was before (`None`: it is
    /// new). An object changed twice appears twice.
    pub fn take_changes(&mut self) -> Vec<(ObjectKey, Option<Object>)> {
        std::mem::take(&mut self.log)
    }

    /// Removes an object deleted at `revision`, unless the mirror holds a newer version.
    pub fn delete(&mut self, key: &ObjectKey, revision: u64) -> bool {
        if self.revision(key).is_none_or(|r| r > revision) {
            return false;
        }
        if let Some(old) = self.take(key) {
            self.unindex(&old);
            self.log.push((key.clone(), Some(old)));
        }
        true
    }

    fn ids<'a>(index: &'a Index, key: &str) -> impl Iterator<Item = &'a Id> {
        index.get(key).into_iter().flatten()
    }

    /// The objects `node` needs, with their revisions (see [`Mirror::view_revision`]): the
    /// contents of its [`Mirror::subscriptions`]. The watch maintains this incrementally
    /// ([`Fanout`]); this computes it from scratch.
    pub fn node_view(&self, node: &str) -> BTreeMap<ObjectKey, u64> {
        let (scopes, _) = self.subscriptions(node);
        let mut view = BTreeMap::new();
        for scope in &scopes {
            for key in self.contents(scope) {
                if let Some(rev) = self.view_revision(&key) {
                    view.insert(key, rev);
                }
            }
        }
        view
    }

    /// The revision a node is sent for `key`: its own, except that a security group carries
    /// its rules (its revision is the highest of its own and its rules').
    pub fn view_revision(&self, key: &ObjectKey) -> Option<u64> {
        let own = self.revision(key)?;
        if key.0 != ObjectKind::SecurityGroup {
            return Some(own);
        }
        let rules = Self::ids(&self.rules_by_group, &key.1)
            .filter_map(|r| self.revision(&(ObjectKind::SecurityGroupRule, Arc::clone(r))))
            .max()
            .unwrap_or(0);
        Some(own.max(rules))
    }

    /// What `node` subscribes to, and what that choice depends on.
    ///
    /// A node sees every network with a port bound to it, with all its ports and subnets (for
    /// forwarding entries) and the load balancers whose VIP is on it; the routers on those
    /// networks and the gateway routers it hosts, with all their networks, their floating IPs
    /// and the external network's subnets (a node hosting a port on any of a router's networks
    /// runs that router); the security groups its ports use, the groups their rules name as
    /// remote with those groups' member ports (for address sets) and the address groups they
    /// name; and everything [`Scope::Global`].
    pub fn subscriptions(&self, node: &str) -> (BTreeSet<Scope>, BTreeSet<Dependency>) {
        let mut scopes = BTreeSet::from([Scope::Global]);
        let mut deps = BTreeSet::from([Dependency::Host(node.to_owned())]);
        let mut networks = BTreeSet::new();
        let mut groups = BTreeSet::new();
        let mut routers = BTreeSet::new();
        for port_id in Self::ids(&self.ports_by_host, node) {
            if let Some(p) = self.port(port_id) {
                networks.insert(p.network_id.clone());
                if p.port_security_enabled {
                    groups.extend(p.security_groups.iter().cloned());
                }
                if p.device_owner == OWNER_GATEWAY {
                    routers.insert(p.device_id.clone());
                }
            }
        }
        for net in &networks {
            deps.insert(Dependency::RoutersOn(net.clone()));
            routers.extend(Self::ids(&self.routers_by_network, net).map(|r| r.to_string()));
        }
        for router_id in routers {
            deps.insert(Dependency::Router(router_id.clone()));
            let Some(Object::Router(r)) = self.decoded(&object_key(ObjectKind::Router, &router_id))
            else {
                continue;
            };
            networks.extend(r.interfaces.iter().map(|i| i.network_id.clone()));
            if let Some(g) = &r.gateway {
                scopes.insert(Scope::Gateway(g.network_id.clone()));
            }
            scopes.insert(Scope::Router(router_id));
        }
        scopes.extend(networks.into_iter().map(Scope::Network));
        let mut remote = BTreeSet::new();
        for g in &groups {
            deps.insert(Dependency::Rules(g.clone()));
            for r in Self::ids(&self.rules_by_group, g) {
                if let Some(Object::SecurityGroupRule(rule)) =
                    self.decoded(&(ObjectKind::SecurityGroupRule, Arc::clone(r)))
                {
                    if let Some(rg) = &rule.remote_group_id {
                        remote.insert(rg.clone());
                    }
                    if let Some(ag) = &rule.remote_address_group_id {
                        scopes.insert(Scope::AddressGroup(ag.clone()));
                    }
                }
            }
        }
        scopes.extend(remote.iter().cloned().map(Scope::Members));
        scopes.extend(groups.into_iter().chain(remote).map(Scope::Group));
        (scopes, deps)
    }

    /// The objects a scope holds now.
    pub fn contents(&self, scope: &Scope) -> Vec<ObjectKey> {
        let mut keys = Vec::new();
        // The map's own key, with the id allocation it shares (an index's ids are those).
        let mut add = |key: ObjectKey| {
            if let Some((key, _)) = self.objects.get_key_value(&key) {
                keys.push(key.clone());
            }
        };
        match scope {
            Scope::Global => return self.globals.iter().cloned().collect(),
            Scope::Network(net) | Scope::Gateway(net) => {
                add(object_key(ObjectKind::Network, net));
                for s in Self::ids(&self.subnets_by_network, net) {
                    add((ObjectKind::Subnet, Arc::clone(s)));
                }
                if let Scope::Network(_) = scope {
                    for p in Self::ids(&self.ports_by_network, net) {
                        add((ObjectKind::Port, Arc::clone(p)));
                    }
                    for lb in Self::ids(&self.lbs_by_network, net) {
                        keys.extend(self.load_balancer_tree(lb));
                    }
                }
            }
            Scope::Router(r) => {
                add(object_key(ObjectKind::Router, r));
                for f in Self::ids(&self.fips_by_router, r) {
                    add((ObjectKind::FloatingIp, Arc::clone(f)));
                    // Its port on the external network: the MAC that answers for the address.
                    if let Some(Object::FloatingIp(fip)) =
                        self.decoded(&(ObjectKind::FloatingIp, Arc::clone(f)))
                    {
                        add(object_key(ObjectKind::Port, &fip.floating_port_id));
                    }
                }
            }
            Scope::Group(g) => add(object_key(ObjectKind::SecurityGroup, g)),
            Scope::Members(g) => {
                for p in Self::ids(&self.ports_by_group, g) {
                    add((ObjectKind::Port, Arc::clone(p)));
                }
            }
            Scope::AddressGroup(a) => add(object_key(ObjectKind::AddressGroup, a)),
        }
        keys
    }

    /// The scopes holding `key` now (the inverse of [`Mirror::contents`]).
    pub fn scopes_of(&self, key: &ObjectKey) -> Vec<Scope> {
        let Some(object) = self.get(key) else {
            return Vec::new();
        };
        match &*object {
            Object::Network(n) => vec![
                Scope::Network(n.meta.id.clone()),
                Scope::Gateway(n.meta.id.clone()),
            ],
            Object::Subnet(s) => vec![
                Scope::Network(s.network_id.clone()),
                Scope::Gateway(s.network_id.clone()),
            ],
            Object::Port(p) => {
                let mut scopes = vec![Scope::Network(p.network_id.clone())];
                scopes.extend(p.security_groups.iter().cloned().map(Scope::Members));
                for f in Self::ids(&self.fips_by_floating_port, &p.meta.id) {
                    if let Some(Object::FloatingIp(fip)) =
                        self.decoded(&(ObjectKind::FloatingIp, Arc::clone(f)))
                    {
                        scopes.extend(
                            fip.association
                                .iter()
                                .map(|a| Scope::Router(a.router_id.clone())),
                        );
                    }
                }
                scopes
            }
            Object::SecurityGroup(g) => vec![Scope::Group(g.meta.id.clone())],
            Object::SecurityGroupRule(_) => Vec::new(),
            Object::Node(_) | Object::NamespaceBinding(_) | Object::DnsRecord(_) => {
                vec![Scope::Global]
            }
            Object::Router(r) => vec![Scope::Router(r.meta.id.clone())],
            Object::FloatingIp(f) => f
                .association
                .iter()
                .map(|a| Scope::Router(a.router_id.clone()))
                .collect(),
            Object::AddressGroup(g) => vec![Scope::AddressGroup(g.meta.id.clone())],
            Object::LoadBalancer(_)
            | Object::Listener(_)
            | Object::Pool(_)
            | Object::Member(_)
            | Object::HealthMonitor(_) => self
                .tree_holder(key)
                .and_then(
                    |lb| match self.decoded(&object_key(ObjectKind::LoadBalancer, &lb)) {
                        Some(Object::LoadBalancer(l)) => {
                            Some(vec![Scope::Network(l.vip_network_id.clone())])
                        }
                        _ => None,
                    },
                )
                .unwrap_or_default(),
        }
    }

    /// The load balancer whose tree (as [`Mirror::load_balancer_tree`] walks it, parent to
    /// child) holds `key`, if one does.
    fn tree_holder(&self, key: &ObjectKey) -> Option<String> {
        let (parent, holds) = match self.decoded(key)? {
            Object::LoadBalancer(l) => return Some(l.meta.id.clone()),
            Object::Listener(l) => {
                let lb = object_key(ObjectKind::LoadBalancer, &l.loadbalancer_id);
                let holds = matches!(self.decoded(&lb), Some(Object::LoadBalancer(b)) if b.listeners.iter().any(|l| **l == *key.1));
                (lb, holds)
            }
            Object::Pool(p) => {
                let lb = object_key(ObjectKind::LoadBalancer, &p.loadbalancer_id);
                let holds = matches!(self.decoded(&lb), Some(Object::LoadBalancer(b)) if b.pools.iter().any(|p| **p == *key.1));
                (lb, holds)
            }
            Object::Member(m) => {
                let pool = object_key(ObjectKind::Pool, &m.pool_id);
                let holds = matches!(self.decoded(&pool), Some(Object::Pool(p)) if p.members.iter().any(|m| **m == *key.1));
                (pool, holds)
            }
            Object::HealthMonitor(h) => {
                let pool = object_key(ObjectKind::Pool, &h.pool_id);
                let holds = matches!(self.decoded(&pool), Some(Object::Pool(p)) if p.healthmonitor_id.as_deref() == Some(&*key.1));
                (pool, holds)
            }
            _ => return None,
        };
        if holds {
            self.tree_holder(&parent)
        } else {
            None
        }
    }

    /// What choosing a node's subscriptions read of `object` (see [`Mirror::subscriptions`]):
    /// when it changes, the nodes depending on these choose again.
    pub fn dependencies_of(object: &Object) -> Vec<Dependency> {
        match object {
            Object::Port(p) if !p.binding.host_id.is_empty() => {
                vec![Dependency::Host(p.binding.host_id.clone())]
            }
            Object::Router(r) => std::iter::once(Dependency::Router(r.meta.id.clone()))
                .chain(
                    r.interfaces
                        .iter()
                        .map(|i| Dependency::RoutersOn(i.network_id.clone())),
                )
                .collect(),
            Object::SecurityGroupRule(r) => vec![Dependency::Rules(r.security_group_id.clone())],
            _ => Vec::new(),
        }
    }

    /// Other objects whose place in scopes (or revision as sent) follows from `object`: a
    /// group's from its rules, a floating IP's external port from the floating IP, and a load
    /// balancer's children from the lists of their parents.
    pub fn dependents_of(&self, object: &Object) -> Vec<ObjectKey> {
        match object {
            Object::SecurityGroupRule(r) => {
                vec![object_key(ObjectKind::SecurityGroup, &r.security_group_id)]
            }
            Object::FloatingIp(f) => vec![object_key(ObjectKind::Port, &f.floating_port_id)],
            Object::LoadBalancer(l) => {
                let mut keys: Vec<ObjectKey> = l
                    .listeners
                    .iter()
                    .map(|i| object_key(ObjectKind::Listener, i))
                    .collect();
                for p in &l.pools {
                    keys.push(object_key(ObjectKind::Pool, p));
                    if let Some(pool @ Object::Pool(_)) =
                        self.decoded(&object_key(ObjectKind::Pool, p))
                    {
                        keys.extend(self.dependents_of(pool));
                    }
                }
                keys
            }
            Object::Pool(p) => p
                .members
                .iter()
                .map(|m| object_key(ObjectKind::Member, m))
                .chain(
                    p.healthmonitor_id
                        .iter()
                        .map(|h| object_key(ObjectKind::HealthMonitor, h)),
                )
                .collect(),
            _ => Vec::new(),
        }
    }

    /// Whether `node` hosts a port with address `ip` (the node that probes a member at `ip`).
    pub fn hosts_address(&self, node: &str, ip: std::net::IpAddr) -> bool {
        Self::ids(&self.ports_by_host, node).any(|p| {
            self.port(p)
                .is_some_and(|port| port.fixed_ips.iter().any(|f| f.ip_address == ip))
        })
    }

    /// The load balancer `key` (a load balancer, listener, pool, member or monitor) belongs to.
    pub fn load_balancer_of(&self, key: &ObjectKey) -> Option<String> {
        match self.decoded(key)? {
            Object::LoadBalancer(l) => Some(l.meta.id.clone()),
            Object::Listener(l) => Some(l.loadbalancer_id.clone()),
            Object::Pool(p) => Some(p.loadbalancer_id.clone()),
            Object::Member(m) => self.load_balancer_of(&object_key(ObjectKind::Pool, &m.pool_id)),
            Object::HealthMonitor(h) => {
                self.load_balancer_of(&object_key(ObjectKind::Pool, &h.pool_id))
            }
            _ => None,
        }
    }

    /// The nodes whose views hold load balancer `lb_id`: those with a port on its VIP's
    /// network or on a network a router joins to it (as [`Mirror::node_view`] decides).
    pub fn load_balancer_nodes(&self, lb_id: &str) -> BTreeSet<String> {
        let Some(Object::LoadBalancer(lb)) =
            self.decoded(&object_key(ObjectKind::LoadBalancer, lb_id))
        else {
            return BTreeSet::new();
        };
        let mut networks = BTreeSet::from([lb.vip_network_id.clone()]);
        for r in Self::ids(&self.routers_by_network, &lb.vip_network_id) {
            if let Some(Object::Router(router)) = self.decoded(&(ObjectKind::Router, Arc::clone(r)))
            {
                networks.extend(router.interfaces.iter().map(|i| i.network_id.clone()));
            }
        }
        networks
            .iter()
            .flat_map(|n| self.hosts_on(n))
            .map(str::to_owned)
            .collect()
    }

    /// The hosts with a port bound on `network_id`.
    pub fn hosts_on(&self, network_id: &str) -> impl Iterator<Item = &str> {
        self.hosts_by_network
            .get(network_id)
            .into_iter()
            .flat_map(|hosts| hosts.keys().map(String::as_str))
    }

    /// The latest revision of `key` and of everything under it (a listener's pool, a pool's
    /// members and monitor, a load balancer's all): what a node must have applied for the
    /// object to be in place.
    pub fn subtree_revision(&self, key: &ObjectKey) -> Option<u64> {
        let own = self.revision(key)?;
        let child = |kind: ObjectKind, id: &String| self.subtree_revision(&object_key(kind, id));
        let below = match self.decoded(key) {
            Some(Object::LoadBalancer(l)) => l
                .listeners
                .iter()
                .filter_map(|i| child(ObjectKind::Listener, i))
                .chain(l.pools.iter().filter_map(|p| child(ObjectKind::Pool, p)))
                .max(),
            Some(Object::Listener(l)) => l
                .default_pool_id
                .as_ref()
                .and_then(|p| child(ObjectKind::Pool, p)),
            Some(Object::Pool(p)) => p
                .members
                .iter()
                .filter_map(|m| child(ObjectKind::Member, m))
                .chain(
                    p.healthmonitor_id
                        .iter()
                        .filter_map(|h| child(ObjectKind::HealthMonitor, h)),
                )
                .max(),
            _ => None,
        };
        Some(own.max(below.unwrap_or(0)))
    }

    /// A load balancer and its listeners, pools, members and monitors (those that exist).
    fn load_balancer_tree(&self, lb_id: &str) -> Vec<ObjectKey> {
        let Some(Object::LoadBalancer(lb)) =
            self.decoded(&object_key(ObjectKind::LoadBalancer, lb_id))
        else {
            return Vec::new();
        };
        // A child belongs to the tree when its parent lists it and it names that parent.
        let mut keys = vec![object_key(ObjectKind::LoadBalancer, lb_id)];
        for l in &lb.listeners {
            if let Some(Object::Listener(listener)) =
                self.decoded(&object_key(ObjectKind::Listener, l))
            {
                if listener.loadbalancer_id == lb_id {
                    keys.push(object_key(ObjectKind::Listener, l));
                }
            }
        }
        for p in &lb.pools {
            let Some(Object::Pool(pool)) = self.decoded(&object_key(ObjectKind::Pool, p)) else {
                continue;
            };
            if pool.loadbalancer_id != lb_id {
                continue;
            }
            keys.push(object_key(ObjectKind::Pool, p));
            for m in &pool.members {
                if matches!(self.decoded(&object_key(ObjectKind::Member, m)),
                            Some(Object::Member(member)) if member.pool_id == *p)
                {
                    keys.push(object_key(ObjectKind::Member, m));
                }
            }
            if let Some(h) = &pool.healthmonitor_id {
                if matches!(self.decoded(&object_key(ObjectKind::HealthMonitor, h)),
                            Some(Object::HealthMonitor(m)) if m.pool_id == *p)
                {
                    keys.push(object_key(ObjectKind::HealthMonitor, h));
                }
            }
        }
        keys
    }

    /// An object as sent to agents: its [`node`] type (groups carry their rules).
    pub fn render(&self, key: &ObjectKey) -> Option<Value> {
        fn sent<T: serde::Serialize>(object: T) -> Value {
            // The node types are plain data: serialising them cannot fail.
            serde_json::to_value(object).unwrap_or(Value::Null)
        }
        Some(match &*self.get(key)? {
            Object::Network(n) => sent(node::Network::from(n)),
            Object::Subnet(s) => sent(node::Subnet::from(s)),
            Object::Port(p) => sent(node::Port::from(p)),
            Object::SecurityGroup(g) => {
                let rules: Vec<SecurityGroupRule> = Self::ids(&self.rules_by_group, &g.meta.id)
                    .filter_map(|r| {
                        match self.decoded(&(ObjectKind::SecurityGroupRule, Arc::clone(r))) {
                            Some(Object::SecurityGroupRule(rule)) => Some(rule.clone()),
                            _ => None,
                        }
                    })
                    .collect();
                sent(node::SecurityGroup::of(g, &rules))
            }
            Object::SecurityGroupRule(r) => sent(node::SecurityGroupRule::from(r)),
            Object::Node(n) => sent(node::Node::from(n)),
            Object::NamespaceBinding(b) => Value::Object(b.render()),
            Object::DnsRecord(r) => Value::Object(r.render()),
            Object::Router(r) => sent(node::Router::from(r)),
            Object::FloatingIp(f) => sent(node::FloatingIp::from(f)),
            Object::AddressGroup(g) => sent(node::AddressGroup::from(g)),
            Object::LoadBalancer(l) => sent(node::LoadBalancer::from(l)),
            Object::Listener(l) => sent(node::Listener::from(l)),
            Object::Pool(p) => sent(node::Pool::from(p)),
            Object::Member(m) => sent(node::Member::from(m)),
            Object::HealthMonitor(h) => sent(node::HealthMonitor::from(h)),
        })
    }
}

/// A change to send to a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Entered the view.
    Added(ObjectKey),
    /// Changed while in the view.
    Modified(ObjectKey),
    /// Left the view (or was deleted).
    Deleted(ObjectKey),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meta::Meta;
    use crate::port::{Binding, FixedIp};
    use crate::security_group::{DefaultRule, Direction};

    fn port(id: &str, net: &str, host: &str, groups: &[&str]) -> Object {
        Object::Port(Port {
            extra_dhcp_opts: Vec::new(),
            meta: Meta::new(id.into(), "p".into(), "t"),
            network_id: net.into(),
            admin_state_up: true,
            mac_address: "fa:16:3e:00:00:01".into(),
            fixed_ips: vec![FixedIp {
                subnet_id: "s".into(),
                ip_address: "10.0.0.2".parse().unwrap(),
            }],
            device_id: String::new(),
            device_owner: String::new(),
            security_groups: groups.iter().map(|g| g.to_string()).collect(),
            port_security_enabled: true,
            allowed_address_pairs: vec![],
            dns_name: String::new(),
            dns_domain: "openstack.local.".into(),
            binding: Binding {
                host_id: host.into(),
                ..Binding::default()
            },
            status: "DOWN".into(),
            trunk: None,
        })
    }

    /// A network object as the API makes it (fan-out tests use it too).
    pub(super) fn network(id: &str) -> Object {
        let body = serde_json::json!({"network": {}});
        let caller = crate::Caller::admin("p");
        let limits = crate::NetworkLimits { underlay_mtu: 1500 };
        Object::Network(
            Network::parse_create(body, &caller, limits, id.into(), "t")
                .unwrap()
                .network,
        )
    }

    fn keys(view: &BTreeMap<ObjectKey, u64>, kind: ObjectKind) -> Vec<String> {
        view.keys()
            .filter(|(k, _)| *k == kind)
            .map(|(_, id)| id.to_string())
            .collect()
    }

    #[test]
    fn ports_from_the_store_are_held_as_their_json_and_read_decoded() {
        let mut m = Mirror::new();
        let stored = |o: &Object| match o {
            Object::Port(p) => Bytes::from(serde_json::to_vec(p).unwrap()),
            _ => unreachable!(),
        };
        let mut pod = port("p1", "net-a", "node1", &["g1"]);
        if let Object::Port(p) = &mut pod {
            p.device_owner = crate::port::POD_DEVICE_OWNER.into();
        }
        let raw = stored(&pod);
        assert!(m.put_stored(pod.clone(), raw.clone(), 5));
        let key = object_key(ObjectKind::Port, "p1");
        assert!(
            matches!(&m.objects[&key], (Held::Port(held), 5) if held.as_ptr() == raw.as_ptr()),
            "the store's buffer itself, not a copy"
        );
        assert_eq!(m.get(&key).as_deref(), Some(&pod));
        assert_eq!(m.port("p1").map(Object::Port), Some(pod.clone()));
        assert!(m.decoded(&key).is_none());
        assert_eq!(m.ports_owned_by(crate::port::POD_DEVICE_OWNER).count(), 1);
        assert!(m.hosts_address("node1", "10.0.0.2".parse().unwrap()));
        assert!(m.node_view("node1").contains_key(&key));
        assert_eq!(
            m.scopes_of(&key),
            [Scope::Network("net-a".into()), Scope::Members("g1".into())]
        );
        m.take_changes();

        // Moved: its old self is logged decoded and leaves the old network's indexes.
        let moved = port("p1", "net-b", "node2", &[]);
        assert!(m.put_stored(moved.clone(), stored(&moved), 6));
        assert_eq!(m.take_changes(), [(key.clone(), Some(pod))]);
        assert!(m.contents(&Scope::Network("net-a".into())).is_empty());
        // One id allocation for the map, its indexes and the keys it hands out.
        let (held_key, _) = m.objects.get_key_value(&key).unwrap();
        let listed = &m.contents(&Scope::Network("net-b".into()))[0];
        assert!(Arc::ptr_eq(&held_key.1, &listed.1));
        assert!(Arc::ptr_eq(
            &held_key.1,
            m.ports_by_network["net-b"].first().unwrap()
        ));
        assert_eq!(
            m.contents(&Scope::Network("net-b".into())),
            std::slice::from_ref(&key)
        );
        assert_eq!(m.ports_owned_by(crate::port::POD_DEVICE_OWNER).count(), 0);
        assert!(m.node_view("node1").is_empty());
        assert!(m.delete(&key, 7));
        assert_eq!(m.take_changes(), [(key.clone(), Some(moved))]);
        assert!(m.get(&key).is_none());
    }

    #[test]
    fn hosts_on_a_network_follow_its_bound_ports() {
        let mut m = Mirror::new();
        fn hosts(m: &Mirror) -> Vec<&str> {
            m.hosts_on("net-a").collect()
        }
        m.put(port("p1", "net-a", "node1", &[]), 1);
        m.put(port("p2", "net-a", "node2", &[]), 2);
        m.put(port("p3", "net-a", "node2", &[]), 3);
        m.put(port("vip", "net-a", "", &[]), 4);
        m.put(port("b", "net-b", "node4", &[]), 5);
        assert_eq!(hosts(&m), ["node1", "node2"]);
        m.put(port("p1", "net-a", "node3", &[]), 6);
        assert_eq!(hosts(&m), ["node2", "node3"]);
        m.delete(&(ObjectKind::Port, "p2".into()), 7);
        assert_eq!(hosts(&m), ["node2", "node3"]);
        m.delete(&(ObjectKind::Port, "p3".into()), 8);
        m.put(port("p1", "net-b", "node3", &[]), 9);
        assert!(hosts(&m).is_empty());
        assert!(!m.hosts_by_network.contains_key("net-a"));
    }

    #[test]
    fn view_follows_local_ports() {
        let mut m = Mirror::new();
        let mut rev = 0;
        let mut put = |m: &mut Mirror, o: Object| {
            rev += 1;
            assert!(m.put(o, rev));
        };
        put(&mut m, network("net-a"));
        put(&mut m, network("net-b"));
        let web = SecurityGroup::default_for("p", "web".into(), "t");
        let db = SecurityGroup::default_for("p", "db".into(), "t");
        put(&mut m, Object::SecurityGroup(web.clone()));
        put(&mut m, Object::SecurityGroup(db.clone()));
        let template = DefaultRule::builtin(["t1", "t2", "t3", "t4"].map(String::from), "p", "t");
        let rules = |group: &SecurityGroup, direction: Direction, ids: [&str; 2]| {
            template
                .iter()
                .filter(|t| t.direction == direction)
                .zip(ids)
                .filter_map(|(t, id)| t.instantiate(group, id.into(), "t"))
                .collect::<Vec<_>>()
        };
        for r in rules(&web, Direction::Ingress, ["r1", "r2"]) {
            put(&mut m, Object::SecurityGroupRule(r));
        }
        // web's ingress rules name web itself as remote; db allows ingress from web.
        let mut from_web = rules(&db, Direction::Egress, ["r3", "r4"]);
        from_web[0].remote_group_id = Some("web".into());
        for r in from_web {
            put(&mut m, Object::SecurityGroupRule(r));
        }
        put(&mut m, port("p1", "net-a", "node1", &["db"]));
        put(&mut m, port("p2", "net-a", "node2", &["web"]));
        put(&mut m, port("p3", "net-b", "node2", &["web"]));
        put(&mut m, port("p4", "net-b", "node3", &["other"]));

        let v1 = m.node_view("node1");
        assert_eq!(keys(&v1, ObjectKind::Network), ["net-a"]);
        // p2 is on net-a; p3 is a member of web, the remote group of db's rule.
        assert_eq!(keys(&v1, ObjectKind::Port), ["p1", "p2", "p3"]);
        assert_eq!(keys(&v1, ObjectKind::SecurityGroup), ["db", "web"]);
        assert!(keys(&m.node_view("node9"), ObjectKind::Port).is_empty());

        // Moving p1 away empties node1's networks; deleting is idempotent against replays.
        let before = m.node_view("node1");
        put(&mut m, port("p1", "net-b", "node3", &[]));
        let after = m.node_view("node1");
        assert!(before.contains_key(&(ObjectKind::Network, "net-a".into())));
        assert!(!after.contains_key(&(ObjectKind::Network, "net-a".into())));
        assert!(keys(&after, ObjectKind::Port).is_empty());
        assert!(
            !m.put(port("p1", "net-a", "node1", &["db"]), 1),
            "stale replay ignored"
        );
        assert!(m.delete(&(ObjectKind::Port, "p1".into()), 100));
        assert!(!m.delete(&(ObjectKind::Port, "p1".into()), 101));
        // A group's revision follows its rules.
        let rendered = m
            .render(&(ObjectKind::SecurityGroup, "web".into()))
            .unwrap();
        assert_eq!(
            rendered["security_group_rules"].as_array().unwrap().len(),
            2
        );
    }

    #[test]
    fn nodes_running_a_router_see_all_its_networks_and_floating_ips() {
        use crate::floating_ip::Association;
        use crate::router::{Gateway, Interface, OWNER_GATEWAY, OWNER_INTERFACE};
        let mut m = Mirror::new();
        let mut rev = 0;
        let mut put = |m: &mut Mirror, o: Object| {
            rev += 1;
            assert!(m.put(o, rev));
        };
        for n in ["net-a", "net-b", "net-c", "ext"] {
            put(&mut m, network(n));
        }
        let interface = |port: &str, net: &str| Interface {
            port_id: port.into(),
            network_id: net.into(),
            fixed_ips: vec![],
            cidrs: vec![],
            snat_port_id: None,
        };
        put(
            &mut m,
            Object::Router(Router {
                ha: false,
                meta: Meta::new("r1".into(), "p".into(), "t"),
                admin_state_up: true,
                gateway: Some(Gateway {
                    network_id: "ext".into(),
                    enable_snat: true,
                    port_id: "gw".into(),
                    external_fixed_ips: vec![],
                }),
                routes: vec![],
                interfaces: vec![interface("qa", "net-a"), interface("qb", "net-b")],
                availability_zone_hints: vec![],
            }),
        );
        let owned = |id: &str, net: &str, host: &str, owner: &str| {
            let Object::Port(mut p) = port(id, net, host, &[]) else {
                unreachable!()
            };
            p.device_owner = owner.into();
            p.device_id = "r1".into();
            Object::Port(p)
        };
        put(&mut m, owned("qa", "net-a", "", OWNER_INTERFACE));
        put(&mut m, owned("qb", "net-b", "", OWNER_INTERFACE));
        put(&mut m, owned("gw", "ext", "gwnode", OWNER_GATEWAY));
        put(&mut m, port("vm", "net-a", "node1", &[]));
        put(&mut m, port("other", "net-c", "node2", &[]));
        put(
            &mut m,
            Object::FloatingIp(FloatingIp {
                port_details: None,
                meta: Meta::new("f1".into(), "p".into(), "t"),
                floating_network_id: "ext".into(),
                floating_ip_address: "172.24.4.10".parse().unwrap(),
                floating_port_id: "fp".into(),
                association: Some(Association {
                    port_id: "vm".into(),
                    fixed_ip_address: "10.0.0.2".parse().unwrap(),
                    router_id: "r1".into(),
                }),
                status: "DOWN".into(),
            }),
        );
        let v1 = m.node_view("node1");
        assert_eq!(keys(&v1, ObjectKind::Router), ["r1"]);
        assert_eq!(keys(&v1, ObjectKind::Network), ["ext", "net-a", "net-b"]);
        assert_eq!(keys(&v1, ObjectKind::FloatingIp), ["f1"]);
        assert!(
            !keys(&v1, ObjectKind::Port).contains(&"gw".to_owned()),
            "the external network's ports stay with the nodes on it"
        );
        let gw = m.node_view("gwnode");
        assert_eq!(
            keys(&gw, ObjectKind::Router),
            ["r1"],
            "the gateway node runs it"
        );
        assert!(keys(&m.node_view("node2"), ObjectKind::Router).is_empty());
        let rendered = m.render(&(ObjectKind::Router, "r1".into())).unwrap();
        assert_eq!(rendered["external_gateway_info"]["network_id"], "ext");
    }
}
