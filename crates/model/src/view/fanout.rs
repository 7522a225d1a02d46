//! Which node watches a change reaches, and what each must be sent: node views maintained
//! incrementally.
//!
//! Each watcher holds the [`Scope`]s its node subscribes to and what it was sent. A change
//! marks, as dirty, the changed object (and the objects whose place follows from it) on the
//! watchers that hold it or subscribe to a scope that now holds it, found through indexes; a
//! change to something a node's choice of scopes reads ([`Dependency`]) makes that node choose
//! again. A watcher then checks only its dirty objects. So a change costs in proportion to the
//! watchers it concerns and to its own size — neither to the number of watchers nor to the
//! size of their views — and a slow watcher's dirty set coalesces what it has not yet taken.

use std::collections::{BTreeSet, HashMap};

use super::{Change, Dependency, Mirror, Object, ObjectKey, Scope};

/// One open watch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WatcherId(u64);

#[derive(Debug)]
struct Watcher {
    node: String,
    scopes: BTreeSet<Scope>,
    dependencies: BTreeSet<Dependency>,
    /// What the watcher was sent: key → revision.
    sent: HashMap<ObjectKey, u64>,
    /// Objects whose presence or revision may differ from what was sent.
    dirty: BTreeSet<ObjectKey>,
    /// Whether the node's scopes must be chosen again.
    rescope: bool,
}

/// Every open watch with the indexes that route changes to them.
#[derive(Debug, Default)]
pub struct Fanout {
    next: u64,
    watchers: HashMap<WatcherId, Watcher>,
    subscribers: HashMap<Scope, Watchers>,
    dependents: HashMap<Dependency, Watchers>,
    holders: HashMap<ObjectKey, Watchers>,
    revision: u64,
}

/// The watchers an index entry names, sorted: most name one or a few, and a vector of one
/// costs 8 bytes where a `BTreeSet`'s node costs about 100 (and there is an entry per object
/// in any view).
type Watchers = Vec<WatcherId>;

fn link<K: std::hash::Hash + Eq + Clone>(index: &mut HashMap<K, Watchers>, key: &K, id: WatcherId) {
    let watchers = index.entry(key.clone()).or_default();
    if let Err(at) = watchers.binary_search(&id) {
        watchers.insert(at, id);
    }
}

fn unlink<K: std::hash::Hash + Eq>(index: &mut HashMap<K, Watchers>, key: &K, id: WatcherId) {
    if let Some(watchers) = index.get_mut(key) {
        if let Ok(at) = watchers.binary_search(&id) {
            watchers.remove(at);
        }
        if watchers.is_empty() {
            index.remove(key);
        }
    }
}

impl Fanout {
    /// No watchers.
    pub fn new() -> Self {
        Self::default()
    }

    /// The mirror revision the last [`Fanout::apply`] reflected.
    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// Opens a watch of `node`'s view; its first [`Fanout::drain`] yields the whole view.
    pub fn register(&mut self, node: &str) -> WatcherId {
        self.resume(node, HashMap::new())
    }

    /// Opens a watch of `node`'s view for a client that already holds `held` (key → view
    /// revision, from an earlier watch of any controller): its first [`Fanout::drain`] yields
    /// only what differs.
    pub fn resume(&mut self, node: &str, held: HashMap<ObjectKey, u64>) -> WatcherId {
        self.next += 1;
        let id = WatcherId(self.next);
        for key in held.keys() {
            link(&mut self.holders, key, id);
        }
        self.watchers.insert(
            id,
            Watcher {
                node: node.to_owned(),
                scopes: BTreeSet::new(),
                dependencies: BTreeSet::new(),
                dirty: held.keys().cloned().collect(),
                sent: held,
                rescope: true,
            },
        );
        id
    }

    /// Closes a watch.
    pub fn unregister(&mut self, id: WatcherId) {
        let Some(w) = self.watchers.remove(&id) else {
            return;
        };
        for s in &w.scopes {
            unlink(&mut self.subscribers, s, id);
        }
        for d in &w.dependencies {
            unlink(&mut self.dependents, d, id);
        }
        for k in w.sent.keys() {
            unlink(&mut self.holders, k, id);
        }
    }

    /// Routes the changes `mirror` logged ([`Mirror::take_changes`]) up to `revision`; returns
    /// the watchers that have something to check.
    pub fn apply(
        &mut self,
        mirror: &Mirror,
        changes: Vec<(ObjectKey, Option<Object>)>,
        revision: u64,
    ) -> BTreeSet<WatcherId> {
        self.revision = revision;
        let mut woken = BTreeSet::new();
        for (key, old) in changes {
            let new = mirror.get(&key);
            for object in old.iter().chain(new.as_deref()) {
                for d in Mirror::dependencies_of(object) {
                    for id in self.dependents.get(&d).into_iter().flatten() {
                        if let Some(w) = self.watchers.get_mut(id) {
                            w.rescope = true;
                            woken.insert(*id);
                        }
                    }
                }
            }
            let mut affected = vec![key];
            for object in old.iter().chain(new.as_deref()) {
                affected.extend(mirror.dependents_of(object));
            }
            for k in affected {
                let scopes = mirror.scopes_of(&k);
                let ids: BTreeSet<WatcherId> = self
                    .holders
                    .get(&k)
                    .into_iter()
                    .flatten()
                    .chain(
                        scopes
                            .iter()
                            .flat_map(|s| self.subscribers.get(s).into_iter().flatten()),
                    )
                    .copied()
                    .collect();
                for id in ids {
                    if let Some(w) = self.watchers.get_mut(&id) {
                        w.dirty.insert(k.clone());
                        woken.insert(id);
                    }
                }
            }
        }
        woken
    }

    /// After the mirror was rebuilt from a snapshot: every watcher chooses again and checks
    /// all it was sent. Returns every watcher.
    pub fn reset(&mut self, revision: u64) -> BTreeSet<WatcherId> {
        self.revision = revision;
        for w in self.watchers.values_mut() {
            w.rescope = true;
            w.dirty.extend(w.sent.keys().cloned());
        }
        self.watchers.keys().copied().collect()
    }

    /// What watcher `id` must be sent to match `mirror`, each change with the object's view
    /// revision (0 for deletions): additions and modifications in key order, then deletions.
    pub fn drain(&mut self, mirror: &Mirror, id: WatcherId) -> Vec<(Change, u64)> {
        let Fanout {
            watchers,
            subscribers,
            dependents,
            holders,
            ..
        } = self;
        let Some(w) = watchers.get_mut(&id) else {
            return Vec::new();
        };
        if w.rescope {
            w.rescope = false;
            let (scopes, dependencies) = mirror.subscriptions(&w.node);
            for s in w.scopes.difference(&scopes) {
                unlink(subscribers, s, id);
                w.dirty.extend(mirror.contents(s));
            }
            for s in scopes.difference(&w.scopes) {
                link(subscribers, s, id);
                w.dirty.extend(mirror.contents(s));
            }
            for d in w.dependencies.difference(&dependencies) {
                unlink(dependents, d, id);
            }
            for d in dependencies.difference(&w.dependencies) {
                link(dependents, d, id);
            }
            w.scopes = scopes;
            w.dependencies = dependencies;
        }
        let mut changes = Vec::new();
        let mut deleted = Vec::new();
        for key in std::mem::take(&mut w.dirty) {
            let now = mirror
                .scopes_of(&key)
                .iter()
                .any(|s| w.scopes.contains(s))
                .then(|| mirror.view_revision(&key))
                .flatten();
            match (w.sent.get(&key).copied(), now) {
                (None, Some(rev)) => {
                    link(holders, &key, id);
                    w.sent.insert(key.clone(), rev);
                    changes.push((Change::Added(key), rev));
                }
                (Some(old), Some(rev)) if old != rev => {
                    w.sent.insert(key.clone(), rev);
                    changes.push((Change::Modified(key), rev));
                }
                (Some(_), None) => {
                    unlink(holders, &key, id);
                    w.sent.remove(&key);
                    deleted.push((Change::Deleted(key), 0));
                }
                _ => {}
            }
        }
        changes.extend(deleted);
        changes
    }

    /// How many objects watcher `id` was sent (its view's size).
    pub fn view_size(&self, id: WatcherId) -> usize {
        self.watchers.get(&id).map_or(0, |w| w.sent.len())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::addr::IpVersion;
    use crate::floating_ip::Association;
    use crate::lbaas::health_monitor::Kind as MonitorKind;
    use crate::lbaas::pool::Algorithm;
    use crate::lbaas::{HealthMonitor, Listener, LoadBalancer, Member, Pool, Protocol};
    use crate::meta::Meta;
    use crate::node::Node;
    use crate::port::{Binding, FixedIp};
    use crate::router::{Gateway, Interface, OWNER_GATEWAY};
    use crate::security_group::Direction;
    use crate::view::tests::network;
    use crate::{AddressGroup, FloatingIp, Port, Router, SecurityGroup, SecurityGroupRule, Subnet};

    fn meta(id: &str) -> Meta {
        Meta::new(id.into(), "p".into(), "t")
    }

    /// A tiny deterministic generator (xorshift), so failures reproduce.
    struct Rng(u64);

    impl Rng {
        fn below(&mut self, n: usize) -> usize {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            (self.0 % n as u64) as usize
        }
        fn pick<'a>(&mut self, from: &[&'a str]) -> &'a str {
            from[self.below(from.len())]
        }
        fn some(&mut self, from: &[&str]) -> Vec<String> {
            from.iter()
                .filter(|_| self.below(2) == 0)
                .map(|s| s.to_string())
                .collect()
        }
    }

    const NETS: &[&str] = &["n1", "n2", "n3", "ext"];
    const HOSTS: &[&str] = &["", "h1", "h2", "h3"];
    const GROUPS: &[&str] = &["g1", "g2", "g3"];
    const PORTS: &[&str] = &["p1", "p2", "p3", "p4", "p5", "p6", "fp1", "fp2"];
    const ROUTERS: &[&str] = &["r1", "r2"];

    /// A random object of a random kind, over a small set of ids so that objects meet.
    fn random_object(rng: &mut Rng) -> Object {
        match rng.below(14) {
            0 => network(rng.pick(NETS)),
            1 => Object::Subnet(Subnet {
                meta: meta(rng.pick(&["s1", "s2", "s3"])),
                network_id: rng.pick(NETS).into(),
                cidr: crate::addr::Cidr::parse("10.0.0.0/24").unwrap(),
                subnetpool_id: None,
                service_types: vec![],
                shared: false,
                gateway_ip: None,
                allocation_pools: vec![],
                enable_dhcp: true,
                dns_nameservers: vec![],
                host_routes: vec![],
                ipv6_ra_mode: None,
                ipv6_address_mode: None,
            }),
            2 | 3 => {
                let gateway = rng.below(5) == 0;
                Object::Port(Port {
                    extra_dhcp_opts: Vec::new(),
                    meta: meta(rng.pick(PORTS)),
                    network_id: rng.pick(NETS).into(),
                    admin_state_up: true,
                    mac_address: "fa:16:3e:00:00:01".into(),
                    fixed_ips: vec![FixedIp {
                        subnet_id: "s1".into(),
                        ip_address: "10.0.0.2".parse().unwrap(),
                    }],
                    device_id: if gateway {
                        rng.pick(ROUTERS).into()
                    } else {
                        String::new()
                    },
                    device_owner: if gateway {
                        OWNER_GATEWAY.into()
                    } else {
                        String::new()
                    },
                    security_groups: rng.some(GROUPS),
                    port_security_enabled: rng.below(4) != 0,
                    allowed_address_pairs: vec![],
                    dns_name: String::new(),
                    dns_domain: String::new(),
                    binding: Binding {
                        host_id: rng.pick(HOSTS).into(),
                        ..Binding::default()
                    },
                    status: "DOWN".into(),
                    trunk: None,
                })
            }
            4 => Object::SecurityGroup(SecurityGroup::default_for(
                "p",
                rng.pick(GROUPS).into(),
                "t",
            )),
            5 => Object::SecurityGroupRule(SecurityGroupRule {
                meta: meta(rng.pick(&["sr1", "sr2", "sr3"])),
                security_group_id: rng.pick(GROUPS).into(),
                direction: Direction::Ingress,
                ethertype: IpVersion::V4,
                protocol: None,
                port_range_min: None,
                port_range_max: None,
                remote_ip_prefix: None,
                remote_group_id: (rng.below(2) == 0).then(|| rng.pick(GROUPS).into()),
                remote_address_group_id: (rng.below(2) == 0)
                    .then(|| rng.pick(&["ag1", "ag2"]).into()),
                in_default_group: false,
            }),
            6 => Object::AddressGroup(AddressGroup {
                meta: meta(rng.pick(&["ag1", "ag2"])),
                addresses: vec![],
            }),
            7 => Object::Router(Router {
                meta: meta(rng.pick(ROUTERS)),
                admin_state_up: true,
                gateway: (rng.below(2) == 0).then(|| Gateway {
                    network_id: "ext".into(),
                    enable_snat: true,
                    port_id: "gw".into(),
                    external_fixed_ips: vec![],
                }),
                routes: vec![],
                interfaces: rng
                    .some(NETS)
                    .into_iter()
                    .map(|n| Interface {
                        port_id: format!("q-{n}"),
                        network_id: n,
                        fixed_ips: vec![],
                        cidrs: vec![],
                        snat_port_id: None,
                    })
                    .collect(),
                availability_zone_hints: vec![],
                ha: false,
            }),
            8 => Object::FloatingIp(FloatingIp {
                meta: meta(rng.pick(&["f1", "f2"])),
                floating_network_id: "ext".into(),
                floating_ip_address: "172.24.4.10".parse().unwrap(),
                floating_port_id: rng.pick(&["fp1", "fp2"]).into(),
                association: (rng.below(3) != 0).then(|| Association {
                    port_id: rng.pick(PORTS).into(),
                    fixed_ip_address: "10.0.0.2".parse().unwrap(),
                    router_id: rng.pick(ROUTERS).into(),
                }),
                status: "DOWN".into(),
                port_details: None,
            }),
            9 => Object::LoadBalancer(LoadBalancer {
                meta: meta(rng.pick(&["lb1", "lb2"])),
                admin_state_up: true,
                provisioning_status: String::new(),
                vip_address: "10.0.0.9".parse().unwrap(),
                vip_port_id: "vip".into(),
                vip_subnet_id: "s1".into(),
                vip_network_id: rng.pick(NETS).into(),
                vip_port_owned: true,
                listeners: rng.some(&["l1", "l2"]),
                pools: rng.some(&["pl1", "pl2"]),
            }),
            10 => Object::Listener(Listener {
                meta: meta(rng.pick(&["l1", "l2"])),
                loadbalancer_id: rng.pick(&["lb1", "lb2"]).into(),
                admin_state_up: true,
                provisioning_status: String::new(),
                protocol: Protocol::Tcp,
                protocol_port: 80,
                connection_limit: -1,
                default_pool_id: None,
                allowed_cidrs: vec![],
                timeout_client_data: 0,
                timeout_member_connect: 0,
                timeout_member_data: 0,
                timeout_tcp_inspect: 0,
            }),
            11 => Object::Pool(Pool {
                meta: meta(rng.pick(&["pl1", "pl2"])),
                loadbalancer_id: rng.pick(&["lb1", "lb2"]).into(),
                listeners: vec![],
                admin_state_up: true,
                provisioning_status: String::new(),
                protocol: Protocol::Tcp,
                lb_algorithm: Algorithm::RoundRobin,
                session_persistence: None,
                members: rng.some(&["m1", "m2", "m3"]),
                healthmonitor_id: (rng.below(2) == 0).then(|| rng.pick(&["hm1", "hm2"]).into()),
            }),
            12 => Object::Member(Member {
                meta: meta(rng.pick(&["m1", "m2", "m3"])),
                pool_id: rng.pick(&["pl1", "pl2"]).into(),
                admin_state_up: true,
                provisioning_status: String::new(),
                operating_status: String::new(),
                address: "10.0.0.5".parse().unwrap(),
                protocol_port: 80,
                weight: 1,
                backup: false,
                subnet_id: None,
                monitor_address: None,
                monitor_port: None,
            }),
            _ => {
                if rng.below(2) == 0 {
                    Object::HealthMonitor(HealthMonitor {
                        meta: meta(rng.pick(&["hm1", "hm2"])),
                        pool_id: rng.pick(&["pl1", "pl2"]).into(),
                        admin_state_up: true,
                        provisioning_status: String::new(),
                        kind: MonitorKind::Tcp,
                        delay: 5,
                        timeout: 5,
                        max_retries: 3,
                        max_retries_down: 3,
                        http: None,
                    })
                } else {
                    Object::Node(Node {
                        id: "id".into(),
                        name: rng.pick(HOSTS).into(),
                        tunnel_ip: "192.0.2.1".parse().unwrap(),
                        roles: vec![],
                        physnets: BTreeMap::new(),
                        created_at: String::new(),
                        started_at: String::new(),
                    })
                }
            }
        }
    }

    /// What a watcher holds after applying every drained change.
    fn replay(held: &mut BTreeMap<ObjectKey, u64>, changes: Vec<(Change, u64)>) {
        for (change, rev) in changes {
            match change {
                Change::Added(k) => assert!(held.insert(k, rev).is_none(), "added twice"),
                Change::Modified(k) => assert!(held.insert(k, rev).is_some(), "not held"),
                Change::Deleted(k) => assert!(held.remove(&k).is_some(), "not held"),
            }
        }
    }

    #[test]
    fn incremental_views_match_views_computed_from_scratch() {
        for seed in 1..=40u64 {
            let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15));
            let mut mirror = Mirror::new();
            let mut fanout = Fanout::new();
            let mut watchers: Vec<(WatcherId, &str, BTreeMap<ObjectKey, u64>)> = HOSTS[1..]
                .iter()
                .map(|h| (fanout.register(h), *h, BTreeMap::new()))
                .collect();
            let mut revision = 0;
            for step in 0..300 {
                // A batch of one to three writes and deletes.
                for _ in 0..=rng.below(3) {
                    revision += 1;
                    let object = random_object(&mut rng);
                    if rng.below(6) == 0 {
                        mirror.delete(&object.key(), revision);
                    } else {
                        mirror.put(object, revision);
                    }
                }
                let woken = {
                    let changes = mirror.take_changes();
                    fanout.apply(&mirror, changes, revision)
                };
                // A watcher opened mid-way gets everything on its first drain.
                if step == 150 {
                    let id = fanout.register("h2");
                    watchers.push((id, "h2", BTreeMap::new()));
                }
                for (id, node, held) in &mut watchers {
                    let changes = fanout.drain(&mirror, *id);
                    assert!(
                        changes.is_empty() || woken.contains(id) || step == 0 || step == 150,
                        "seed {seed} step {step}: {node} changed without being woken"
                    );
                    replay(held, changes);
                    assert_eq!(
                        *held,
                        mirror.node_view(node),
                        "seed {seed} step {step}: {node}'s view"
                    );
                }
            }
        }
    }

    #[test]
    fn a_resumed_watch_gets_only_what_differs_from_what_its_client_holds() {
        let mut rng = Rng(11);
        let mut mirror = Mirror::new();
        let mut fanout = Fanout::new();
        let mut revision = 0;
        let mut churn = |mirror: &mut Mirror, rng: &mut Rng, n: usize| {
            for _ in 0..n {
                revision += 1;
                mirror.put(random_object(rng), revision);
            }
            mirror.take_changes();
            revision
        };
        churn(&mut mirror, &mut rng, 300);
        let first = fanout.register("h1");
        let mut held = BTreeMap::new();
        replay(&mut held, fanout.drain(&mirror, first));
        assert!(!held.is_empty());
        fanout.unregister(first);
        // The client reconnects unchanged: nothing to send.
        let same = fanout.resume("h1", held.clone().into_iter().collect());
        assert!(fanout.drain(&mirror, same).is_empty());
        fanout.unregister(same);
        // The state moves on while it is away: it gets the difference, and then holds the view.
        churn(&mut mirror, &mut rng, 40);
        let again = fanout.resume("h1", held.clone().into_iter().collect());
        let changes = fanout.drain(&mirror, again);
        let want = mirror.node_view("h1");
        let differing = want
            .iter()
            .filter(|(k, r)| held.get(*k) != Some(*r))
            .count()
            + held.keys().filter(|k| !want.contains_key(*k)).count();
        assert!(differing > 0);
        assert_eq!(changes.len(), differing, "exactly the difference");
        replay(&mut held, changes);
        assert_eq!(held, mirror.node_view("h1"));
    }

    #[test]
    fn a_change_outside_every_view_reaches_no_watcher() {
        let mut mirror = Mirror::new();
        let mut fanout = Fanout::new();
        let mut revision = 0;
        let mut put = |mirror: &mut Mirror, object: Object| {
            revision += 1;
            mirror.put(object, revision);
            revision
        };
        let port = |id: &str, net: &str, host: &str| {
            let mut rng = Rng(7);
            let Object::Port(mut p) = (loop {
                if let o @ Object::Port(_) = random_object(&mut rng) {
                    break o;
                }
            }) else {
                unreachable!()
            };
            p.meta = meta(id);
            p.network_id = net.into();
            p.binding.host_id = host.into();
            p.security_groups = vec![];
            p.device_owner = String::new();
            Object::Port(p)
        };
        put(&mut mirror, network("n1"));
        let watchers: Vec<WatcherId> = (0..50)
            .map(|i| {
                let host = format!("h{i}");
                put(&mut mirror, port(&format!("vm{i}"), "n1", &host));
                fanout.register(&host)
            })
            .collect();
        let rev = put(&mut mirror, network("n2"));
        {
            let changes = mirror.take_changes();
            fanout.apply(&mirror, changes, rev)
        };
        for id in &watchers {
            assert_eq!(fanout.drain(&mirror, *id).len(), 51, "the snapshot");
        }
        // 200 ports on n2, which no watcher's node has a port on: no watcher is woken.
        for i in 0..200 {
            let rev = put(&mut mirror, port(&format!("other{i}"), "n2", ""));
            let woken = {
                let changes = mirror.take_changes();
                fanout.apply(&mirror, changes, rev)
            };
            assert!(woken.is_empty(), "port {i} woke {woken:?}");
        }
        // A port on n1 reaches all 50; one bound to h3 on n2 makes h3 subscribe to n2.
        let rev = put(&mut mirror, port("new", "n1", ""));
        assert_eq!(
            {
                let changes = mirror.take_changes();
                fanout.apply(&mirror, changes, rev)
            }
            .len(),
            50
        );
        let rev = put(&mut mirror, port("h3-on-n2", "n2", "h3"));
        let woken = {
            let changes = mirror.take_changes();
            fanout.apply(&mirror, changes, rev)
        };
        assert_eq!(woken, BTreeSet::from([watchers[3]]));
        let changes = fanout.drain(&mirror, watchers[3]);
        assert_eq!(
            changes.len(),
            1 + 1 + 201,
            "n1's new port, n2 and its 201 ports"
        );
        fanout.unregister(watchers[3]);
        assert!(fanout.holders.values().all(|w| !w.contains(&watchers[3])));
        assert!(fanout
            .subscribers
            .values()
            .all(|w| !w.contains(&watchers[3])));
    }
}
