//! Distributed routers: every node hosting a port on one of a router's networks runs the
//! router's namespace `qrouter-<id>`, with one interface `qr-<port[0:11]>` per router
//! interface port, carrying the same gateway address and MAC on every node (an anycast
//! gateway). Its other end, `tap<port[0:11]>`, sits on the network's bridge. Traffic between
//! subnets is routed on the source node and leaves on the destination network's VXLAN straight
//! to the destination node: the router knows the MAC of every bound port on its subnets and
//! holds it as a permanent neighbour, so nothing is resolved across the overlay. Addresses that
//! move (allowed address pairs, VIPs) are resolved by ARP like on any router.
//!
//! On every bridge the gateway MAC is pinned to the local router's tap, so frames routed by a
//! remote node (which carry the same MAC as source) never move it to the tunnel.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use isthmus_model::router::{OWNER_GATEWAY, OWNER_INTERFACE};

use crate::l2::{bridge_name, tap_name, NodeConfig};
use crate::view::{NodeView, Port};

/// Prefix of router namespaces.
pub const NAMESPACE_PREFIX: &str = "qrouter-";

/// The namespace of a router.
pub fn namespace_name(router_id: &str) -> String {
    format!("{NAMESPACE_PREFIX}{router_id}")
}

/// The router-side device of a router interface port.
pub fn interface_name(port_id: &str) -> String {
    format!("qr-{}", port_id.get(..11).unwrap_or(port_id))
}

/// The node-side end (`tap<port[0:11]>`) of a router interface `qr-<port[0:11]>`.
pub fn peer_of(interface: &str) -> String {
    format!("tap{}", interface.trim_start_matches("qr-"))
}

/// One interface of a router namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interface {
    /// The network it is on.
    pub network_id: String,
    /// Its other end on the network's bridge (`tap<port[0:11]>`).
    pub peer: String,
    /// The network's bridge.
    pub bridge: String,
    /// The interface port's MAC (the gateway MAC).
    pub mac: String,
    /// MTU of the network.
    pub mtu: u32,
    /// Addresses with prefix lengths.
    pub addresses: BTreeSet<(IpAddr, u8)>,
}

/// A permanent neighbour entry.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Neighbour {
    /// Device.
    pub device: String,
    /// Address.
    pub ip: IpAddr,
    /// MAC, lower case.
    pub mac: String,
}

/// A static route.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Route {
    /// Destination network address.
    pub destination: IpAddr,
    /// Destination prefix length.
    pub prefix: u8,
    /// Next hop.
    pub via: IpAddr,
}

/// What one router namespace holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Namespace {
    /// Interfaces by name (`qr-...`).
    pub interfaces: BTreeMap<String, Interface>,
    /// Permanent neighbours.
    pub neighbours: BTreeSet<Neighbour>,
    /// Static routes (connected routes come with the addresses).
    pub routes: BTreeSet<Route>,
}

/// Router namespaces by name: what a node should have, or what its kernel has.
pub type RouterState = BTreeMap<String, Namespace>;

fn is_interface_of(port: &Port, router_id: &str) -> bool {
    port.device_owner == OWNER_INTERFACE && port.device_id == router_id
}

/// Which nodes run each router of the view: those with a bound port on one of its networks,
/// and the node holding its gateway port.
pub fn hosts(view: &NodeView) -> BTreeMap<String, BTreeSet<String>> {
    let mut out = BTreeMap::new();
    for router_id in view.routers.keys() {
        let networks: BTreeSet<&str> = view
            .ports
            .values()
            .filter(|p| is_interface_of(p, router_id))
            .map(|p| p.network_id.as_str())
            .collect();
        let nodes: BTreeSet<String> = view
            .ports
            .values()
            .filter(|p| !p.host_id.is_empty())
            .filter(|p| {
                networks.contains(p.network_id.as_str())
                    || (p.device_owner == OWNER_GATEWAY && &p.device_id == router_id)
            })
            .map(|p| p.host_id.clone())
            .collect();
        out.insert(router_id.clone(), nodes);
    }
    out
}

/// The nodes running a router interface on each network: where a network's broadcasts must
/// reach (a gratuitous ARP from a moved address updates every router's neighbour), even on
/// nodes with no port of their own there.
pub fn nodes_by_network(view: &NodeView) -> BTreeMap<String, BTreeSet<String>> {
    let hosts = hosts(view);
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for port in view.ports.values() {
        let up = view
            .routers
            .get(&port.device_id)
            .is_some_and(|r| r.admin_state_up);
        if port.device_owner != OWNER_INTERFACE || !up {
            continue;
        }
        if let Some(nodes) = hosts.get(&port.device_id) {
            out.entry(port.network_id.clone())
                .or_default()
                .extend(nodes.iter().cloned());
        }
    }
    out
}

/// The router namespaces `view` implies for `node`.
pub fn desired(view: &NodeView, node: &NodeConfig) -> RouterState {
    let hosts = hosts(view);
    let mut state = RouterState::new();
    for (router_id, router) in &view.routers {
        if !router.admin_state_up || !hosts.get(router_id).is_some_and(|n| n.contains(&node.name)) {
            continue;
        }
        let mut ns = Namespace::default();
        for port in view
            .ports
            .values()
            .filter(|p| is_interface_of(p, router_id))
        {
            let Some(network) = view.networks.get(&port.network_id) else {
                continue;
            };
            let name = interface_name(&port.id);
            let mut subnets = BTreeSet::new();
            let mut addresses = BTreeSet::new();
            for fixed in &port.fixed_ips {
                if let Some((prefix, _)) = view.subnet(&fixed.subnet_id) {
                    addresses.insert((fixed.ip_address, prefix));
                    subnets.insert(fixed.subnet_id.as_str());
                }
            }
            // Every bound port on those subnets is a permanent neighbour.
            for other in view.ports.values() {
                if other.network_id != port.network_id
                    || other.host_id.is_empty()
                    || other.id == port.id
                {
                    continue;
                }
                for fixed in &other.fixed_ips {
                    if subnets.contains(fixed.subnet_id.as_str()) {
                        ns.neighbours.insert(Neighbour {
                            device: name.clone(),
                            ip: fixed.ip_address,
                            mac: other.mac_address.to_ascii_lowercase(),
                        });
                    }
                }
            }
            ns.interfaces.insert(
                name,
                Interface {
                    network_id: port.network_id.clone(),
                    peer: tap_name(&port.id),
                    bridge: bridge_name(&port.network_id),
                    mac: port.mac_address.to_ascii_lowercase(),
                    mtu: network.mtu,
                    addresses,
                },
            );
        }
        for route in &router.routes {
            let Some((net, prefix)) = route.destination.split_once('/') else {
                continue;
            };
            if let (Ok(destination), Ok(prefix)) = (net.parse(), prefix.parse()) {
                ns.routes.insert(Route {
                    destination,
                    prefix,
                    via: route.nexthop,
                });
            }
        }
        state.insert(namespace_name(router_id), ns);
    }
    state
}

/// One change to router namespaces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Create a namespace (loopback up, forwarding on).
    AddNamespace(String),
    /// Create a veth pair: `name` (with `mac`) in the namespace, `peer` on the node, both up.
    AddInterface {
        /// Namespace.
        namespace: String,
        /// Router-side name.
        name: String,
        /// Its parameters.
        interface: Interface,
    },
    /// Delete an interface (its peer goes with it).
    DelInterface {
        /// Namespace.
        namespace: String,
        /// Router-side name.
        name: String,
    },
    /// Add an address.
    AddAddress {
        /// Namespace.
        namespace: String,
        /// Device.
        device: String,
        /// Address and prefix length.
        address: (IpAddr, u8),
    },
    /// Remove an address.
    DelAddress {
        /// Namespace.
        namespace: String,
        /// Device.
        device: String,
        /// Address and prefix length.
        address: (IpAddr, u8),
    },
    /// Add or replace a permanent neighbour.
    AddNeighbour(String, Neighbour),
    /// Remove a neighbour.
    DelNeighbour(String, Neighbour),
    /// Add a static route.
    AddRoute(String, Route),
    /// Remove a static route.
    DelRoute(String, Route),
    /// Delete a namespace and everything in it.
    DelNamespace(String),
}

/// The changes that turn `observed` into `desired`. Only differences: an agent restart with
/// the namespaces already right plans nothing.
pub fn plan(desired: &RouterState, observed: &RouterState) -> Vec<Op> {
    let mut ops = Vec::new();
    let empty = Namespace::default();
    for (ns_name, want) in desired {
        let have = match observed.get(ns_name) {
            Some(have) => have,
            None => {
                ops.push(Op::AddNamespace(ns_name.clone()));
                &empty
            }
        };
        for (name, interface) in &want.interfaces {
            let existing = have.interfaces.get(name);
            let recreate =
                existing.is_some_and(|e| e.mac != interface.mac || e.mtu != interface.mtu);
            if recreate {
                ops.push(Op::DelInterface {
                    namespace: ns_name.clone(),
                    name: name.clone(),
                });
            }
            if existing.is_none() || recreate {
                ops.push(Op::AddInterface {
                    namespace: ns_name.clone(),
                    name: name.clone(),
                    interface: interface.clone(),
                });
            }
            let had = match existing {
                Some(e) if !recreate => e.addresses.clone(),
                _ => BTreeSet::new(),
            };
            for address in interface.addresses.difference(&had) {
                ops.push(Op::AddAddress {
                    namespace: ns_name.clone(),
                    device: name.clone(),
                    address: *address,
                });
            }
            for address in had.difference(&interface.addresses) {
                ops.push(Op::DelAddress {
                    namespace: ns_name.clone(),
                    device: name.clone(),
                    address: *address,
                });
            }
        }
        for name in have.interfaces.keys() {
            if !want.interfaces.contains_key(name) {
                ops.push(Op::DelInterface {
                    namespace: ns_name.clone(),
                    name: name.clone(),
                });
            }
        }
        // Entries on a recreated or removed device went with it.
        let gone: BTreeSet<&String> = have
            .interfaces
            .iter()
            .filter(|(name, e)| {
                want.interfaces
                    .get(*name)
                    .is_none_or(|w| w.mac != e.mac || w.mtu != e.mtu)
            })
            .map(|(name, _)| name)
            .collect();
        for n in &want.neighbours {
            if !have.neighbours.contains(n) || gone.contains(&n.device) {
                ops.push(Op::AddNeighbour(ns_name.clone(), n.clone()));
            }
        }
        for n in have.neighbours.difference(&want.neighbours) {
            if !gone.contains(&n.device) {
                ops.push(Op::DelNeighbour(ns_name.clone(), n.clone()));
            }
        }
        let recreated = !gone.is_empty();
        for r in &want.routes {
            if !have.routes.contains(r) || recreated {
                ops.push(Op::AddRoute(ns_name.clone(), r.clone()));
            }
        }
        for r in have.routes.difference(&want.routes) {
            if !recreated {
                ops.push(Op::DelRoute(ns_name.clone(), r.clone()));
            }
        }
    }
    for ns_name in observed.keys() {
        if !desired.contains_key(ns_name) {
            ops.push(Op::DelNamespace(ns_name.clone()));
        }
    }
    ops
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const R: &str = "rrrrrrrr-0000-0000-0000-000000000001";

    fn line(kind: &str, object: serde_json::Value) -> serde_json::Value {
        json!({"type": "ADDED", "kind": kind, "revision": 1, "object": object})
    }

    fn port(
        id: &str,
        net: &str,
        subnet: &str,
        ip: &str,
        host: &str,
        owner: &str,
    ) -> serde_json::Value {
        line(
            "port",
            json!({"id": id, "network_id": net, "mac_address": format!("fa:16:3e:00:00:{}", &id[..2]),
                   "fixed_ips": [{"subnet_id": subnet, "ip_address": ip}], "binding:host_id": host,
                   "port_security_enabled": owner.is_empty(), "status": "DOWN",
                   "device_owner": owner, "device_id": if owner.is_empty() { "" } else { R }}),
        )
    }

    /// Subnet A (10.1.0.0/24) on net-a, subnet B (10.2.0.0/24) on net-b, one router; a VM on
    /// node1 in A, a pod on node2 in B.
    fn view() -> NodeView {
        let mut v = NodeView::default();
        for (net, vni) in [("net-a", 1), ("net-b", 2)] {
            v.apply(&line(
                "network",
                json!({"id": net, "mtu": 1450, "provider:network_type": "vxlan",
                "provider:segmentation_id": vni, "provider:physical_network": null}),
            ))
            .unwrap();
        }
        v.apply(&line(
            "subnet",
            json!({"id": "sa", "cidr": "10.1.0.0/24", "gateway_ip": "10.1.0.1"}),
        ))
        .unwrap();
        v.apply(&line(
            "subnet",
            json!({"id": "sb", "cidr": "10.2.0.0/24", "gateway_ip": "10.2.0.1"}),
        ))
        .unwrap();
        v.apply(&line(
            "router",
            json!({"id": R, "admin_state_up": true, "external_gateway_info": null,
            "routes": [{"destination": "10.9.0.0/16", "nexthop": "10.1.0.9"}]}),
        ))
        .unwrap();
        v.apply(&port(
            "a1000000000000",
            "net-a",
            "sa",
            "10.1.0.1",
            "",
            OWNER_INTERFACE,
        ))
        .unwrap();
        v.apply(&port(
            "b1000000000000",
            "net-b",
            "sb",
            "10.2.0.1",
            "",
            OWNER_INTERFACE,
        ))
        .unwrap();
        v.apply(&port(
            "a2000000000000",
            "net-a",
            "sa",
            "10.1.0.5",
            "node1",
            "",
        ))
        .unwrap();
        v.apply(&port(
            "b2000000000000",
            "net-b",
            "sb",
            "10.2.0.7",
            "node2",
            "",
        ))
        .unwrap();
        v.apply(&line(
            "node",
            json!({"name": "node1", "tunnel_ip": "192.0.2.1"}),
        ))
        .unwrap();
        v.apply(&line(
            "node",
            json!({"name": "node2", "tunnel_ip": "192.0.2.2"}),
        ))
        .unwrap();
        v
    }

    fn node(name: &str) -> NodeConfig {
        NodeConfig {
            name: name.into(),
            tunnel_ip: "192.0.2.1".parse().unwrap(),
            physnets: BTreeMap::new(),
        }
    }

    #[test]
    fn every_hosting_node_runs_the_router_with_the_same_gateway() {
        let v = view();
        assert_eq!(
            hosts(&v)[R],
            ["node1".to_owned(), "node2".to_owned()].into()
        );
        let one = desired(&v, &node("node1"));
        let two = desired(&v, &node("node2"));
        assert_eq!(one, two, "same namespace on every node");
        assert!(desired(&v, &node("node3")).is_empty());
        let ns = &one[&namespace_name(R)];
        let qa = &ns.interfaces["qr-a1000000000"];
        assert_eq!(qa.peer, "tapa1000000000");
        assert_eq!(qa.bridge, "brqnet-a");
        assert_eq!(qa.addresses, [("10.1.0.1".parse().unwrap(), 24)].into());
        assert!(ns.neighbours.contains(&Neighbour {
            device: "qr-b1000000000".into(),
            ip: "10.2.0.7".parse().unwrap(),
            mac: "fa:16:3e:00:00:b2".into()
        }));
        assert_eq!(ns.neighbours.len(), 2, "router ports are not neighbours");
        assert_eq!(ns.routes.len(), 1);
        let by_network = nodes_by_network(&v);
        assert_eq!(by_network.len(), 2);
        assert_eq!(
            by_network["net-a"],
            ["node1".to_owned(), "node2".to_owned()].into()
        );
    }

    #[test]
    fn routers_bring_their_networks_taps_and_pinned_gateways_to_l2() {
        use crate::l2;
        let v = view();
        let me = node("node1");
        let routers = desired(&v, &me);
        let state = l2::desired(&v, &me, &routers);
        assert_eq!(
            state.bridges.keys().collect::<Vec<_>>(),
            ["brqnet-a", "brqnet-b"],
            "net-b has no port on node1 but its router interface"
        );
        assert_eq!(state.attachments["tapb1000000000"].bridge, "brqnet-b");
        assert!(state.pins.contains(&l2::Pin {
            device: "tapa1000000000".into(),
            mac: "fa:16:3e:00:00:a1".into()
        }));
        // The pod's MAC on net-b points at node2, and net-b floods there.
        let to_node2: Vec<&str> = state
            .fdb
            .iter()
            .filter(|f| f.device == "vxlan-2")
            .map(|f| f.mac.as_str())
            .collect();
        assert_eq!(to_node2, ["00:00:00:00:00:00", "fa:16:3e:00:00:b2"]);
        // net-a floods to node2 too: node2 has no port on net-a, but runs the router there.
        assert!(state
            .fdb
            .iter()
            .any(|f| f.device == "vxlan-1" && f.mac == l2::FLOOD_MAC));
        // Converged: nothing to plan; a detached tap loses its pin and gets it back.
        let mut kernel = l2::Observed::default();
        for tap in ["tapa1000000000", "tapb1000000000"] {
            kernel.devices.insert(tap.into(), (None, 1500));
        }
        let kernel = l2::simulate(&kernel, &l2::plan(&state, &kernel));
        assert!(l2::plan(&state, &kernel).is_empty());
        let detached = l2::simulate(
            &kernel,
            &[l2::Op::Detach {
                device: "tapa1000000000".into(),
            }],
        );
        let again = l2::plan(&state, &detached);
        assert!(
            again.iter().any(|o| matches!(o, l2::Op::AddPin(_))),
            "{again:?}"
        );
    }

    #[test]
    fn plans_only_differences() {
        let v = view();
        let want = desired(&v, &node("node1"));
        let ops = plan(&want, &RouterState::new());
        assert!(matches!(ops[0], Op::AddNamespace(_)));
        assert_eq!(
            ops.iter()
                .filter(|o| matches!(o, Op::AddInterface { .. }))
                .count(),
            2
        );
        assert!(plan(&want, &want).is_empty(), "converged: nothing to do");
        // A changed gateway MAC recreates the interface and re-adds what lived on it.
        let mut have = want.clone();
        let ns = have.get_mut(&namespace_name(R)).unwrap();
        ns.interfaces.get_mut("qr-b1000000000").unwrap().mac = "fa:16:3e:ff:ff:ff".into();
        ns.neighbours.insert(Neighbour {
            device: "qr-a1000000000".into(),
            ip: "10.1.0.77".parse().unwrap(),
            mac: "fa:16:3e:00:00:77".into(),
        });
        let ops = plan(&want, &have);
        assert!(ops.contains(&Op::DelInterface {
            namespace: namespace_name(R),
            name: "qr-b1000000000".into()
        }));
        assert!(ops
            .iter()
            .any(|o| matches!(o, Op::AddNeighbour(_, n) if n.device == "qr-b1000000000")));
        assert!(ops
            .iter()
            .any(|o| matches!(o, Op::DelNeighbour(_, n) if n.ip.to_string() == "10.1.0.77")));
        assert!(
            ops.iter().any(|o| matches!(o, Op::AddRoute(..))),
            "routes follow a recreated interface"
        );
        // Gone from the view: the namespace goes.
        assert_eq!(
            plan(&RouterState::new(), &want),
            [Op::DelNamespace(namespace_name(R))]
        );
    }
}
