//! Kubernetes Services as load balancers: a Service with a cluster IP is a load balancer whose
//! VIP is that address, each Service port a listener with one pool, each ready endpoint of its
//! EndpointSlices a member (terminating ones drain at weight 0), `sessionAffinity: ClientIP`
//! is `SOURCE_IP` persistence. This module computes what the tree should be and the steps
//! from what it is; the watcher reads the objects and performs the steps.

use std::collections::BTreeMap;
use std::net::IpAddr;

use crate::lbaas::{LoadBalancer, Member, Pool, Protocol};
use crate::view::{object_key, Mirror, Object, ObjectKind};

/// What a Service's load balancer's tags start with (then the Service's UID).
pub const SERVICE_TAG_PREFIX: &str = "k8s-service:";

/// The tag naming the Service a load balancer is for.
pub fn service_tag(uid: &str) -> String {
    format!("{SERVICE_TAG_PREFIX}{uid}")
}

/// The Service UID a load balancer is for, if it is a Service's.
pub fn service_of(lb: &LoadBalancer) -> Option<&str> {
    lb.meta
        .tags
        .iter()
        .find_map(|t| t.strip_prefix(SERVICE_TAG_PREFIX))
}

/// One port of a Service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePort {
    /// Its name (empty when the Service has a single unnamed port).
    pub name: String,
    /// TCP, UDP or SCTP.
    pub protocol: Protocol,
    /// The port on the cluster IP.
    pub port: u16,
}

/// A Service, as far as its load balancer goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceSpec {
    /// `metadata.uid`.
    pub uid: String,
    /// `metadata.namespace`.
    pub namespace: String,
    /// `metadata.name`.
    pub name: String,
    /// `spec.clusterIP`; `None` for headless Services (DNS only) and those without one
    /// (`ExternalName`).
    pub cluster_ip: Option<IpAddr>,
    /// `clusterIP: None`: its name resolves to its ready endpoints.
    pub headless: bool,
    /// `spec.ports`.
    pub ports: Vec<ServicePort>,
    /// `sessionAffinity: ClientIP`: its timeout in seconds.
    pub affinity: Option<u32>,
    /// `type: LoadBalancer`: the floating IP asked for (`spec.loadBalancerIP`), if any.
    pub external: Option<Option<IpAddr>>,
}

/// A port of an EndpointSlice (the target port, resolved per slice).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointPort {
    /// The Service port's name it serves.
    pub name: String,
    /// Its protocol.
    pub protocol: Protocol,
    /// The port on the endpoints.
    pub port: u16,
}

/// An endpoint of an EndpointSlice with its conditions (absent conditions as the API
/// defines them: ready and serving unless said otherwise, not terminating).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// Its addresses (one in practice).
    pub addresses: Vec<IpAddr>,
    /// `conditions.ready`.
    pub ready: bool,
    /// `conditions.serving`.
    pub serving: bool,
    /// `conditions.terminating`.
    pub terminating: bool,
}

/// An EndpointSlice of a Service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointSlice {
    /// `ports`.
    pub ports: Vec<EndpointPort>,
    /// `endpoints`.
    pub endpoints: Vec<Endpoint>,
}

/// A listener: (protocol, port).
pub type ListenerKey = (Protocol, u16);
/// A member: (address, port).
pub type MemberKey = (IpAddr, u16);

/// A listener as it should be.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct WantedListener {
    /// `SOURCE_IP` persistence timeout.
    pub persistence: Option<u32>,
    /// Members and their weights (0: draining, no new connections).
    pub members: BTreeMap<MemberKey, u16>,
}

/// A Service's load balancer as it should be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wanted {
    /// The VIP: the cluster IP.
    pub vip: IpAddr,
    /// Listeners.
    pub listeners: BTreeMap<ListenerKey, WantedListener>,
}

/// The load balancer `service` should have given its `slices`, or `None` when it has none
/// (headless, no cluster IP).
pub fn wanted(service: &ServiceSpec, slices: &[&EndpointSlice]) -> Option<Wanted> {
    let vip = service.cluster_ip?;
    let mut listeners = BTreeMap::new();
    for port in &service.ports {
        // (member, ready) per endpoint serving this port.
        let mut serving: Vec<(MemberKey, bool)> = Vec::new();
        for slice in slices {
            let Some(target) = slice
                .ports
                .iter()
                .find(|p| p.name == port.name && p.protocol == port.protocol)
            else {
                continue;
            };
            for endpoint in &slice.endpoints {
                let Some(address) = endpoint
                    .addresses
                    .iter()
                    .find(|a| a.is_ipv4() == vip.is_ipv4())
                else {
                    continue;
                };
                if endpoint.ready {
                    serving.push(((*address, target.port), true));
                } else if endpoint.serving && endpoint.terminating {
                    serving.push(((*address, target.port), false));
                }
            }
        }
        // Terminating endpoints drain (weight 0) while others are ready, and carry the
        // traffic when none is (kube-proxy's fallback).
        let any_ready = serving.iter().any(|(_, ready)| *ready);
        let mut members = BTreeMap::new();
        for (member, ready) in serving {
            let weight = u16::from(ready || !any_ready);
            let w = members.entry(member).or_insert(weight);
            *w = (*w).max(weight);
        }
        listeners.insert(
            (port.protocol, port.port),
            WantedListener {
                persistence: service.affinity,
                members,
            },
        );
    }
    Some(Wanted { vip, listeners })
}

/// The addresses `<svc>.<ns>.svc.<domain>` resolves to: the cluster IP, or a headless
/// Service's ready endpoints.
pub fn name_addresses(service: &ServiceSpec, slices: &[&EndpointSlice]) -> Vec<IpAddr> {
    if let Some(ip) = service.cluster_ip {
        return vec![ip];
    }
    if !service.headless {
        return Vec::new();
    }
    let mut out: Vec<IpAddr> = slices
        .iter()
        .flat_map(|s| &s.endpoints)
        .filter(|e| e.ready)
        .flat_map(|e| e.addresses.iter().copied())
        .collect();
    out.sort();
    out.dedup();
    out
}

/// The named ports `_<name>._<protocol>.<svc>...` SRV records give: the Service's ports, or a
/// headless Service's endpoint ports of those names.
pub fn name_ports(
    service: &ServiceSpec,
    slices: &[&EndpointSlice],
) -> Vec<(String, Protocol, u16)> {
    service
        .ports
        .iter()
        .filter(|p| !p.name.is_empty())
        .filter_map(|p| {
            let port = if service.cluster_ip.is_some() {
                Some(p.port)
            } else {
                slices
                    .iter()
                    .flat_map(|s| &s.ports)
                    .find(|e| e.name == p.name && e.protocol == p.protocol)
                    .map(|e| e.port)
            }?;
            Some((p.name.clone(), p.protocol, port))
        })
        .collect()
}

/// A listener as it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CurrentListener {
    /// Its id.
    pub listener_id: String,
    /// Its default pool, if any.
    pub pool: Option<CurrentPool>,
}

/// A pool as it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CurrentPool {
    /// Its id.
    pub pool_id: String,
    /// `SOURCE_IP` persistence timeout.
    pub persistence: Option<u32>,
    /// Members: id and weight.
    pub members: BTreeMap<MemberKey, (String, u16)>,
}

/// A Service's load balancer as it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Current {
    /// The load balancer's id.
    pub lb_id: String,
    /// Its VIP address.
    pub vip: IpAddr,
    /// Its VIP port.
    pub vip_port_id: String,
    /// Its listeners.
    pub listeners: BTreeMap<ListenerKey, CurrentListener>,
}

/// The tree under `lb` as `mirror` holds it.
pub fn current(mirror: &Mirror, lb: &LoadBalancer) -> Current {
    let mut listeners = BTreeMap::new();
    for id in &lb.listeners {
        let Some(Object::Listener(listener)) =
            mirror.decoded(&object_key(ObjectKind::Listener, id))
        else {
            continue;
        };
        let pool = listener.default_pool_id.as_ref().and_then(|p| {
            match mirror.decoded(&object_key(ObjectKind::Pool, p)) {
                Some(Object::Pool(pool)) => Some(current_pool(mirror, pool)),
                _ => None,
            }
        });
        listeners.insert(
            (listener.protocol, listener.protocol_port),
            CurrentListener {
                listener_id: listener.meta.id.clone(),
                pool,
            },
        );
    }
    Current {
        lb_id: lb.meta.id.clone(),
        vip: lb.vip_address,
        vip_port_id: lb.vip_port_id.clone(),
        listeners,
    }
}

fn current_pool(mirror: &Mirror, pool: &Pool) -> CurrentPool {
    let members = pool
        .members
        .iter()
        .filter_map(
            |id| match mirror.decoded(&object_key(ObjectKind::Member, id)) {
                Some(Object::Member(m)) => Some(member_entry(m)),
                _ => None,
            },
        )
        .collect();
    CurrentPool {
        pool_id: pool.meta.id.clone(),
        persistence: pool.session_persistence.map(|p| p.timeout),
        members,
    }
}

fn member_entry(m: &Member) -> (MemberKey, (String, u16)) {
    ((m.address, m.protocol_port), (m.meta.id.clone(), m.weight))
}

/// One change to a Service's load balancer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// A listener and its pool (members follow as [`Step::AddMember`]).
    CreateListener {
        /// Protocol and port.
        key: ListenerKey,
        /// The pool's persistence.
        persistence: Option<u32>,
    },
    /// A listener and its pool (with its members).
    DeleteListener {
        /// The listener.
        listener_id: String,
        /// Its pool.
        pool_id: Option<String>,
    },
    /// A pool's persistence.
    SetPersistence {
        /// The pool.
        pool_id: String,
        /// Its new persistence.
        persistence: Option<u32>,
    },
    /// A member of the pool of listener `key`.
    AddMember {
        /// The listener.
        key: ListenerKey,
        /// Address and port.
        member: MemberKey,
        /// Weight.
        weight: u16,
    },
    /// A member's weight.
    SetWeight {
        /// Its pool.
        pool_id: String,
        /// The member.
        member_id: String,
        /// The new weight.
        weight: u16,
    },
    /// A member gone.
    RemoveMember {
        /// Its pool.
        pool_id: String,
        /// The member.
        member_id: String,
    },
}

/// The steps from `current` to `wanted` (same VIP: a new cluster IP is a new load balancer).
/// Removals of members come after additions, so a rolling update never leaves a listener
/// with nothing to send to.
pub fn plan(wanted: &Wanted, current: &Current) -> Vec<Step> {
    let mut steps = Vec::new();
    let mut removals = Vec::new();
    for (key, listener) in &current.listeners {
        let keep = wanted.listeners.contains_key(key) && listener.pool.is_some();
        if !keep {
            steps.push(Step::DeleteListener {
                listener_id: listener.listener_id.clone(),
                pool_id: listener.pool.as_ref().map(|p| p.pool_id.clone()),
            });
        }
    }
    for (key, want) in &wanted.listeners {
        let pool = current.listeners.get(key).and_then(|l| l.pool.as_ref());
        let Some(pool) = pool else {
            steps.push(Step::CreateListener {
                key: *key,
                persistence: want.persistence,
            });
            for (member, weight) in &want.members {
                steps.push(Step::AddMember {
                    key: *key,
                    member: *member,
                    weight: *weight,
                });
            }
            continue;
        };
        if pool.persistence != want.persistence {
            steps.push(Step::SetPersistence {
                pool_id: pool.pool_id.clone(),
                persistence: want.persistence,
            });
        }
        for (member, weight) in &want.members {
            match pool.members.get(member) {
                None => steps.push(Step::AddMember {
                    key: *key,
                    member: *member,
                    weight: *weight,
                }),
                Some((id, w)) if w != weight => steps.push(Step::SetWeight {
                    pool_id: pool.pool_id.clone(),
                    member_id: id.clone(),
                    weight: *weight,
                }),
                Some(_) => {}
            }
        }
        for (member, (id, _)) in &pool.members {
            if !want.members.contains_key(member) {
                removals.push(Step::RemoveMember {
                    pool_id: pool.pool_id.clone(),
                    member_id: id.clone(),
                });
            }
        }
    }
    steps.extend(removals);
    steps
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn service(ports: &[(&str, Protocol, u16)], affinity: Option<u32>) -> ServiceSpec {
        ServiceSpec {
            uid: "u".into(),
            namespace: "ns".into(),
            name: "web".into(),
            cluster_ip: Some(ip("10.96.0.10")),
            ports: ports
                .iter()
                .map(|(n, p, port)| ServicePort {
                    name: (*n).into(),
                    protocol: *p,
                    port: *port,
                })
                .collect(),
            affinity,
            external: None,
            headless: false,
        }
    }

    fn endpoint(address: &str, ready: bool, serving: bool, terminating: bool) -> Endpoint {
        Endpoint {
            addresses: vec![ip(address)],
            ready,
            serving,
            terminating,
        }
    }

    fn slice(ports: &[(&str, Protocol, u16)], endpoints: Vec<Endpoint>) -> EndpointSlice {
        EndpointSlice {
            ports: ports
                .iter()
                .map(|(n, p, port)| EndpointPort {
                    name: (*n).into(),
                    protocol: *p,
                    port: *port,
                })
                .collect(),
            endpoints,
        }
    }

    #[test]
    fn ports_are_listeners_and_ready_endpoints_members_on_the_target_port() {
        let svc = service(
            &[("http", Protocol::Tcp, 80), ("dns", Protocol::Udp, 53)],
            Some(10800),
        );
        // A named target port resolves per slice: two slices, two container ports.
        let a = slice(
            &[("http", Protocol::Tcp, 8080), ("dns", Protocol::Udp, 5353)],
            vec![
                endpoint("10.0.0.4", true, true, false),
                endpoint("10.0.0.5", false, false, false),
            ],
        );
        let b = slice(
            &[("http", Protocol::Tcp, 9090)],
            vec![endpoint("10.0.0.6", true, true, false)],
        );
        let w = wanted(&svc, &[&a, &b]).unwrap();
        assert_eq!(w.vip, ip("10.96.0.10"));
        let http = &w.listeners[&(Protocol::Tcp, 80)];
        assert_eq!(http.persistence, Some(10800));
        assert_eq!(
            http.members,
            BTreeMap::from([((ip("10.0.0.4"), 8080), 1), ((ip("10.0.0.6"), 9090), 1)])
        );
        let dns = &w.listeners[&(Protocol::Udp, 53)];
        assert_eq!(dns.members, BTreeMap::from([((ip("10.0.0.4"), 5353), 1)]));
    }

    #[test]
    fn terminating_endpoints_drain_and_carry_traffic_only_when_nothing_is_ready() {
        let svc = service(&[("", Protocol::Tcp, 80)], None);
        let s = slice(
            &[("", Protocol::Tcp, 8080)],
            vec![
                endpoint("10.0.0.4", true, true, false),
                endpoint("10.0.0.5", false, true, true),
            ],
        );
        let m = &wanted(&svc, &[&s]).unwrap().listeners[&(Protocol::Tcp, 80)].members;
        assert_eq!(m[&(ip("10.0.0.5"), 8080)], 0, "draining");
        let s = slice(
            &[("", Protocol::Tcp, 8080)],
            vec![endpoint("10.0.0.5", false, true, true)],
        );
        let m = &wanted(&svc, &[&s]).unwrap().listeners[&(Protocol::Tcp, 80)].members;
        assert_eq!(m[&(ip("10.0.0.5"), 8080)], 1, "the only one left serves");
    }

    #[test]
    fn headless_services_have_no_load_balancer_and_resolve_to_their_ready_endpoints() {
        let mut svc = service(&[("", Protocol::Tcp, 80)], None);
        assert_eq!(name_addresses(&svc, &[]), [ip("10.96.0.10")]);
        svc.cluster_ip = None;
        svc.headless = true;
        assert_eq!(wanted(&svc, &[]), None);
        let s = slice(
            &[("", Protocol::Tcp, 8080)],
            vec![
                endpoint("10.0.0.5", true, true, false),
                endpoint("10.0.0.4", true, true, false),
                endpoint("10.0.0.6", false, true, true),
            ],
        );
        assert_eq!(
            name_addresses(&svc, &[&s]),
            [ip("10.0.0.4"), ip("10.0.0.5")]
        );
        svc.headless = false;
        assert!(
            name_addresses(&svc, &[&s]).is_empty(),
            "ExternalName: no addresses"
        );
    }

    fn current_of(w: &Wanted) -> Current {
        let mut n = 0;
        let mut id = |p: &str| {
            n += 1;
            format!("{p}{n}")
        };
        Current {
            lb_id: "lb".into(),
            vip: w.vip,
            vip_port_id: "vip".into(),
            listeners: w
                .listeners
                .iter()
                .map(|(k, l)| {
                    let listener_id = id("l");
                    let pool_id = id("p");
                    let members = l
                        .members
                        .iter()
                        .map(|(m, weight)| (*m, (id("m"), *weight)))
                        .collect();
                    (
                        *k,
                        CurrentListener {
                            listener_id,
                            pool: Some(CurrentPool {
                                pool_id,
                                persistence: l.persistence,
                                members,
                            }),
                        },
                    )
                })
                .collect(),
        }
    }

    #[test]
    fn the_plan_is_empty_when_the_tree_is_right_and_minimal_otherwise() {
        let svc = service(&[("", Protocol::Tcp, 80)], None);
        let three = slice(
            &[("", Protocol::Tcp, 8080)],
            ["10.0.0.4", "10.0.0.5", "10.0.0.6"]
                .iter()
                .map(|a| endpoint(a, true, true, false))
                .collect(),
        );
        let w3 = wanted(&svc, &[&three]).unwrap();
        let now = current_of(&w3);
        assert!(plan(&w3, &now).is_empty());

        // Scaled: one added, one terminating, one gone.
        let next = slice(
            &[("", Protocol::Tcp, 8080)],
            vec![
                endpoint("10.0.0.4", true, true, false),
                endpoint("10.0.0.5", false, true, true),
                endpoint("10.0.0.7", true, true, false),
            ],
        );
        let steps = plan(&wanted(&svc, &[&next]).unwrap(), &now);
        assert_eq!(steps.len(), 3, "{steps:?}");
        assert!(
            matches!(steps[1], Step::AddMember { member, weight: 1, .. } if member == (ip("10.0.0.7"), 8080))
        );
        assert!(matches!(&steps[0], Step::SetWeight { weight: 0, .. }));
        assert!(
            matches!(&steps[2], Step::RemoveMember { .. }),
            "removals last"
        );

        // A port changed and affinity turned on.
        let svc2 = service(&[("", Protocol::Tcp, 443)], Some(60));
        let steps = plan(&wanted(&svc2, &[&three]).unwrap(), &now);
        assert!(matches!(&steps[0], Step::DeleteListener { .. }));
        assert!(matches!(
            steps[1],
            Step::CreateListener {
                key: (Protocol::Tcp, 443),
                persistence: Some(60)
            }
        ));
        assert_eq!(steps.len(), 2 + 3);
        let svc3 = service(&[("", Protocol::Tcp, 80)], Some(60));
        assert_eq!(
            plan(&wanted(&svc3, &[&three]).unwrap(), &now),
            [Step::SetPersistence {
                pool_id: "p2".into(),
                persistence: Some(60)
            }]
        );
    }

    #[test]
    fn service_tags_name_the_service() {
        let tag = service_tag("6b1f0b52-8a4c-4bd5-9a0e-2f3b1c0d9e11");
        assert!(tag.len() <= crate::meta::TAG_MAX, "a valid Neutron tag");
    }
}
