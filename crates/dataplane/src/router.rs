//! Distributed routers (Neutron DVR's layout on Linux namespaces).
//!
//! East-west: every node hosting a port on one of a router's networks runs the router's
//! namespace `qrouter-<id>`, with one interface `qr-<port[0:11]>` per router interface port,
//! carrying the same gateway address and MAC on every node (an anycast gateway). Its other
//! end, `tap<port[0:11]>`, sits on the network's bridge. Traffic between subnets is routed on
//! the source node and leaves on the destination network's VXLAN straight to the destination
//! node: the router knows the MAC of every bound port on its subnets and holds it as a
//! permanent neighbour, so nothing is resolved across the overlay. Addresses that move
//! (allowed address pairs, VIPs) are resolved by ARP like on any router. On every bridge the
//! gateway MAC is pinned to the local router's tap (see [`crate::l2`]).
//!
//! North-south: the node holding the router's gateway port runs `snat-<id>` with `qg-` on the
//! external network (the router's external addresses) and one `sg-` per interface (the SNAT
//! ports' addresses). Every router namespace sends what its own routes do not cover to the
//! SNAT port of the source's subnet (`ip rule from <subnet>` after the main table), where it is
//! source-NATed to the router's external address, unless the source has a floating IP.
//! Floating IPs are 1:1 NAT on the node hosting their port when that node maps the external
//! network's physnet (a `qf-<floating port[0:11]>` interface in the router namespace with the
//! floating port's MAC, and a rule sending the fixed address out there); otherwise (no
//! physnet there, or an unbound VIP port) on `qg-` in the SNAT namespace. Hosts outside with a
//! route to a tenant subnet via the router's external address reach it without NAT.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};

use isthmus_model::addr::{to_u128, Cidr};
use isthmus_model::router::{OWNER_FLOATING_IP, OWNER_GATEWAY, OWNER_INTERFACE, OWNER_SNAT};

use crate::node::{bridge_name, tap_name, NodeConfig};
use crate::view::{FloatingIp, Gateway, NodeView, Port, Router, Subnet};

/// Prefix of distributed router namespaces.
pub const NAMESPACE_PREFIX: &str = "qrouter-";
/// Prefix of SNAT namespaces.
pub const SNAT_PREFIX: &str = "snat-";
/// The main routing table.
pub const MAIN_TABLE: u32 = 254;
/// Priority of the rules sending a floating IP's fixed address out of its `qf-` interface.
pub const FIP_RULE_PRIORITY: u32 = 32768;
/// Priority of the rules sending a subnet's other traffic to its SNAT port (after the main
/// table, 32766, and floating IPs).
pub const SNAT_RULE_PRIORITY: u32 = 40000;
/// The NAT table in router namespaces (`table ip isthmus`).
pub const NAT_TABLE: &str = "isthmus";
/// Its chains, both base chains: `inbound` (destination NAT) and `outbound` (source NAT).
const NAT_CHAINS: &[(&str, &str)] = &[
    (
        "inbound",
        "type nat hook prerouting priority dstnat; policy accept;",
    ),
    (
        "outbound",
        "type nat hook postrouting priority srcnat; policy accept;",
    ),
];

/// The distributed namespace of a router.
pub fn namespace_name(router_id: &str) -> String {
    format!("{NAMESPACE_PREFIX}{router_id}")
}

/// The SNAT namespace of a router.
pub fn snat_namespace_name(router_id: &str) -> String {
    format!("{SNAT_PREFIX}{router_id}")
}

fn short(port_id: &str) -> &str {
    port_id.get(..11).unwrap_or(port_id)
}

/// The router-side device of a router interface port.
pub fn interface_name(port_id: &str) -> String {
    format!("qr-{}", short(port_id))
}

/// The node-side end (`tap<port[0:11]>`) of a namespace interface (`qr-`, `qg-`, `sg-`,
/// `qf-`, `ns-` + port[0:11]).
pub fn peer_of(interface: &str) -> String {
    format!("tap{}", interface.get(3..).unwrap_or_default())
}

/// Whether a device name is one of a router (or DHCP) namespace's interfaces.
pub fn is_interface(name: &str) -> bool {
    ["qr-", "qg-", "sg-", "qf-", "ns-"]
        .iter()
        .any(|p| name.starts_with(p))
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
    /// The port's MAC.
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
    /// Routing table.
    pub table: u32,
    /// Destination network address.
    pub destination: IpAddr,
    /// Destination prefix length.
    pub prefix: u8,
    /// Next hop (none: on-link).
    pub via: Option<IpAddr>,
    /// Output device.
    pub device: String,
}

/// A policy rule: traffic from a prefix looks up a table.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Rule {
    /// Priority.
    pub priority: u32,
    /// Source network address.
    pub from: IpAddr,
    /// Source prefix length.
    pub prefix: u8,
    /// Table.
    pub table: u32,
}

/// A NAT chain: its rules, and the content hash the kernel's copy carries in its first
/// rule's comment (all that is read back).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NatChain {
    /// Content hash (empty for an empty chain).
    pub version: String,
    /// Rules, nft syntax (empty when read back).
    pub rules: Vec<String>,
}

impl NatChain {
    /// A chain with these rules.
    pub fn new(rules: Vec<String>) -> NatChain {
        // The hash the table planner writes on the chain's first rule.
        let version = crate::nft::Table::chain_version(&rules).unwrap_or_default();
        NatChain { version, rules }
    }
}

/// What one router namespace holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Namespace {
    /// Interfaces by name.
    pub interfaces: BTreeMap<String, Interface>,
    /// Permanent neighbours.
    pub neighbours: BTreeSet<Neighbour>,
    /// Static routes (connected routes come with the addresses).
    pub routes: BTreeSet<Route>,
    /// Policy rules.
    pub rules: BTreeSet<Rule>,
    /// NAT chains (`inbound`, `outbound`) of `table ip isthmus`.
    pub nat: BTreeMap<String, NatChain>,
}

/// Router namespaces by name: what a node should have, or what its kernel has.
pub type RouterState = BTreeMap<String, Namespace>;

fn owned_by(port: &Port, owner: &str, router_id: &str) -> bool {
    port.device_owner == owner && port.device_id == router_id
}

/// Which nodes run each router of the view: those with a bound port on one of its networks,
/// and the node holding its gateway port.
pub fn hosts(view: &NodeView) -> BTreeMap<String, BTreeSet<String>> {
    let mut out = BTreeMap::new();
    for router_id in view.routers.keys() {
        let networks: BTreeSet<&str> = view
            .ports
            .values()
            .filter(|p| owned_by(p, OWNER_INTERFACE, router_id))
            .map(|p| p.network_id.as_str())
            .collect();
        let nodes: BTreeSet<String> = view
            .ports
            .values()
            .filter(|p| !p.host_id.is_empty())
            .filter(|p| {
                networks.contains(p.network_id.as_str()) || owned_by(p, OWNER_GATEWAY, router_id)
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

/// A routing table number derived from an IPv4 address (as Neutron DVR does): unique among
/// the addresses of one router, and above the kernel's reserved tables.
fn table_of(ip: IpAddr) -> u32 {
    to_u128(ip) as u32
}

/// A port's interface on `network`: addresses with their subnets' prefixes.
pub(crate) fn interface(view: &NodeView, port: &Port) -> Option<Interface> {
    let network = view.networks.get(&port.network_id)?;
    let addresses = port
        .fixed_ips
        .iter()
        .filter_map(|f| {
            view.subnet_info(&f.subnet_id)
                .map(|s| (f.ip_address, s.cidr.prefix))
        })
        .collect();
    Some(Interface {
        network_id: port.network_id.clone(),
        peer: tap_name(&port.id),
        bridge: bridge_name(&port.network_id),
        mac: port.mac_address.to_ascii_lowercase(),
        mtu: network.mtu,
        addresses,
    })
}

/// Every bound port on `subnets` (but `except`) as a permanent neighbour on `device`.
pub(crate) fn neighbours_on(
    view: &NodeView,
    subnets: &BTreeSet<&str>,
    except: &str,
    device: &str,
    out: &mut BTreeSet<Neighbour>,
) {
    for other in view.ports.values() {
        if other.host_id.is_empty() || other.id == except {
            continue;
        }
        for fixed in &other.fixed_ips {
            if subnets.contains(fixed.subnet_id.as_str()) {
                out.insert(Neighbour {
                    device: device.to_owned(),
                    ip: fixed.ip_address,
                    mac: other.mac_address.to_ascii_lowercase(),
                });
            }
        }
    }
}

/// Where a floating IP is NATed: `Some(node)` on the node hosting its port when that node
/// maps the external network's physnet, `None` centrally on the gateway node.
fn fip_node(view: &NodeView, fip: &FloatingIp) -> Option<String> {
    let port = view.ports.get(fip.port_id.as_deref()?)?;
    let physnet = view
        .networks
        .get(&fip.floating_network_id)?
        .physical_network
        .as_ref()?;
    let node = view.nodes.get(&port.host_id)?;
    node.physnets
        .contains_key(physnet)
        .then(|| port.host_id.clone())
}

/// The node that NATs an associated floating IP: its port's node when that node maps the
/// external network's physnet, else the node holding the router's gateway port (which only
/// that node's view is sure to have).
pub fn nat_node(view: &NodeView, fip: &FloatingIp) -> Option<String> {
    fip.port_id.as_ref()?;
    fip_node(view, fip).or_else(|| {
        let router = fip.router_id.as_deref()?;
        view.ports
            .values()
            .find(|p| owned_by(p, OWNER_GATEWAY, router) && !p.host_id.is_empty())
            .map(|p| p.host_id.clone())
    })
}

/// The external subnet holding `ip` on `network`.
fn external_subnet<'a>(view: &'a NodeView, network: &'a str, ip: IpAddr) -> Option<&'a Subnet> {
    view.subnets_of(network).find(|s| s.cidr.contains(ip))
}

fn v4(ip: IpAddr) -> bool {
    ip.is_ipv4()
}

const DEFAULT_V4: IpAddr = IpAddr::V4(Ipv4Addr::UNSPECIFIED);

/// A router's ports in the view, by role.
struct RouterPorts<'a> {
    interfaces: Vec<&'a Port>,
    snat: Vec<&'a Port>,
    gateway: Option<&'a Port>,
}

impl<'a> RouterPorts<'a> {
    fn of(view: &'a NodeView, router_id: &str) -> RouterPorts<'a> {
        let ports = view.ports.values().filter(|p| p.device_id == router_id);
        let with = |owner: &str| ports.clone().filter(|p| p.device_owner == owner).collect();
        RouterPorts {
            interfaces: with(OWNER_INTERFACE),
            snat: with(OWNER_SNAT),
            gateway: ports.clone().find(|p| p.device_owner == OWNER_GATEWAY),
        }
    }
}

/// The router namespaces `view` implies for `node` ([`crate::plan::namespaces`] adds the
/// DHCP namespaces, which the same planner keeps).
pub fn desired(view: &NodeView, node: &NodeConfig) -> RouterState {
    let hosts = hosts(view);
    let mut state = RouterState::new();
    for (router_id, router) in &view.routers {
        if !router.admin_state_up || !hosts.get(router_id).is_some_and(|n| n.contains(&node.name)) {
            continue;
        }
        let ports = RouterPorts::of(view, router_id);
        let (mut ns, tenant_v4) = distributed(view, router, &ports);
        let central = floating_ips(view, node, router, &mut ns);
        let gateway = ports.gateway.filter(|gp| gp.host_id == node.name);
        if let (Some(gp), Some(ext)) = (gateway, &router.external_gateway_info) {
            let snat = snat_namespace(view, ext, gp, &ports.snat, &central, &tenant_v4);
            state.insert(snat_namespace_name(router_id), snat);
        }
        state.insert(namespace_name(router_id), ns);
    }
    state
}

/// A router's namespace as every node running it has it: its interfaces with their
/// neighbours, extra routes, and the rules sending the rest to the SNAT ports. Also returns
/// its IPv4 subnets (what the SNAT namespace translates).
fn distributed(
    view: &NodeView,
    router: &Router,
    ports: &RouterPorts<'_>,
) -> (Namespace, BTreeSet<String>) {
    let mut ns = Namespace::default();
    let mut tenant_v4 = BTreeSet::new();
    for port in &ports.interfaces {
        let Some(iface) = interface(view, port) else {
            continue;
        };
        let name = interface_name(&port.id);
        let subnets: BTreeSet<&str> = port
            .fixed_ips
            .iter()
            .map(|f| f.subnet_id.as_str())
            .collect();
        neighbours_on(view, &subnets, &port.id, &name, &mut ns.neighbours);
        // What the main table does not route goes to the subnet's SNAT port.
        for fixed in port.fixed_ips.iter().filter(|f| v4(f.ip_address)) {
            let Some(subnet) = view.subnet_info(&fixed.subnet_id) else {
                continue;
            };
            tenant_v4.insert(subnet.cidr.to_string());
            let snat_ip = ports
                .snat
                .iter()
                .flat_map(|p| &p.fixed_ips)
                .find(|f| f.subnet_id == fixed.subnet_id)
                .map(|f| f.ip_address);
            if let (Some(snat_ip), Some(_)) = (snat_ip, &router.external_gateway_info) {
                let table = table_of(fixed.ip_address);
                ns.rules.insert(Rule {
                    priority: SNAT_RULE_PRIORITY,
                    from: subnet.cidr.network,
                    prefix: subnet.cidr.prefix,
                    table,
                });
                ns.routes.insert(Route {
                    table,
                    destination: DEFAULT_V4,
                    prefix: 0,
                    via: Some(snat_ip),
                    device: name.clone(),
                });
            }
        }
        ns.interfaces.insert(name, iface);
    }
    for route in &router.routes {
        let Some(cidr) = Cidr::parse_lenient(&route.destination) else {
            continue;
        };
        // Out of the interface whose subnet holds the next hop.
        let device = ns.interfaces.iter().find(|(_, i)| {
            i.addresses.iter().any(|(ip, prefix)| {
                Cidr::parse_lenient(&format!("{ip}/{prefix}"))
                    .is_some_and(|c| c.contains(route.nexthop))
            })
        });
        if let Some((device, _)) = device {
            ns.routes.insert(Route {
                table: MAIN_TABLE,
                destination: cidr.network,
                prefix: cidr.prefix,
                via: Some(route.nexthop),
                device: device.clone(),
            });
        }
    }
    (ns, tenant_v4)
}

/// Adds to `ns` the floating IPs of `router` that `node` NATs itself (a `qf-` interface each,
/// with a rule, a table and 1:1 NAT); returns the (floating, fixed) pairs the SNAT namespace
/// NATs instead.
fn floating_ips(
    view: &NodeView,
    node: &NodeConfig,
    router: &Router,
    ns: &mut Namespace,
) -> Vec<(IpAddr, IpAddr)> {
    let Some(ext) = &router.external_gateway_info else {
        return Vec::new();
    };
    let mut central = Vec::new();
    let (mut dnat, mut snat) = (Vec::new(), Vec::new());
    let fips = view
        .floating_ips
        .values()
        .filter(|f| f.router_id.as_deref() == Some(router.id.as_str()) && f.port_id.is_some());
    for fip in fips {
        let Some(fixed) = fip.fixed_ip_address else {
            continue;
        };
        match fip_node(view, fip) {
            Some(n) if n == node.name => {}
            Some(_) => continue,
            None => {
                central.push((fip.floating_ip_address, fixed));
                continue;
            }
        }
        // Its own interface, with the floating port's MAC.
        let floating_port = view
            .ports
            .values()
            .find(|p| p.device_owner == OWNER_FLOATING_IP && p.device_id == fip.id);
        let (Some(port), Some(subnet)) = (
            floating_port,
            external_subnet(view, &ext.network_id, fip.floating_ip_address),
        ) else {
            continue;
        };
        let Some(mut iface) = interface(view, port) else {
            continue;
        };
        let name = format!("qf-{}", short(&port.id));
        // The address alone: the external prefix is routed per floating IP.
        iface.addresses = BTreeSet::from([(fip.floating_ip_address, 32)]);
        let table = table_of(fixed);
        ns.rules.insert(Rule {
            priority: FIP_RULE_PRIORITY,
            from: fixed,
            prefix: 32,
            table,
        });
        ns.routes.insert(Route {
            table,
            destination: subnet.cidr.network,
            prefix: subnet.cidr.prefix,
            via: None,
            device: name.clone(),
        });
        if let Some(gw) = subnet.gateway {
            ns.routes.insert(Route {
                table,
                destination: DEFAULT_V4,
                prefix: 0,
                via: Some(gw),
                device: name.clone(),
            });
        }
        dnat.push(format!(
            "iifname \"{name}\" ip daddr {} dnat to {fixed}",
            fip.floating_ip_address
        ));
        snat.push(format!(
            "oifname \"{name}\" ip saddr {fixed} snat to {}",
            fip.floating_ip_address
        ));
        ns.interfaces.insert(name, iface);
    }
    if !dnat.is_empty() {
        ns.nat = nat(dnat, snat);
    }
    central
}

/// The SNAT namespace of the node holding the gateway port `gp`: `qg-` with the router's
/// external addresses and the `central` floating IPs, one `sg-` per SNAT port, the default
/// route out, and the NAT (floating IPs first, then the subnets when `enable_snat`).
fn snat_namespace(
    view: &NodeView,
    ext: &Gateway,
    gp: &Port,
    snat_ports: &[&Port],
    central: &[(IpAddr, IpAddr)],
    tenant_v4: &BTreeSet<String>,
) -> Namespace {
    let mut snat = Namespace::default();
    let qg = format!("qg-{}", short(&gp.id));
    if let Some(mut iface) = interface(view, gp) {
        for fixed in &gp.fixed_ips {
            let gw = view.subnet_info(&fixed.subnet_id).and_then(|s| s.gateway);
            if let Some(gw) = gw.filter(|g| v4(*g)) {
                snat.routes.insert(Route {
                    table: MAIN_TABLE,
                    destination: DEFAULT_V4,
                    prefix: 0,
                    via: Some(gw),
                    device: qg.clone(),
                });
            }
        }
        let (mut dnat, mut rules) = (Vec::new(), Vec::new());
        for (floating, fixed) in central {
            iface.addresses.insert((*floating, 32));
            dnat.push(format!(
                "iifname \"{qg}\" ip daddr {floating} dnat to {fixed}"
            ));
            rules.push(format!(
                "oifname \"{qg}\" ip saddr {fixed} snat to {floating}"
            ));
            rules.extend(vip_masquerade(view, snat_ports, *fixed));
        }
        let external_v4 = gp.fixed_ips.iter().map(|f| f.ip_address).find(|ip| v4(*ip));
        if let (true, Some(address), false) = (ext.enable_snat, external_v4, tenant_v4.is_empty()) {
            let sources: Vec<&str> = tenant_v4.iter().map(String::as_str).collect();
            rules.push(format!(
                "oifname \"{qg}\" ip saddr {{ {} }} snat to {address}",
                sources.join(", ")
            ));
        }
        snat.interfaces.insert(qg, iface);
        snat.nat = nat(dnat, rules);
    }
    for sp in snat_ports {
        let Some(iface) = interface(view, sp) else {
            continue;
        };
        let name = format!("sg-{}", short(&sp.id));
        let subnets: BTreeSet<&str> = sp.fixed_ips.iter().map(|f| f.subnet_id.as_str()).collect();
        neighbours_on(view, &subnets, &sp.id, &name, &mut snat.neighbours);
        snat.interfaces.insert(name, iface);
    }
    snat
}

/// For a floating IP on a load balancer's VIP: connections it brings in leave towards the VIP
/// with this SNAT namespace's own address on the VIP's network as their source. The node
/// balancing them may send them to a member on another network, whose replies would
/// otherwise take the router's way out (another path, without either translation); to this
/// address they come back through that node and this namespace (as kube-proxy masquerades
/// external traffic). Members see this address, not the outside client's.
fn vip_masquerade(view: &NodeView, snat_ports: &[&Port], fixed: IpAddr) -> Option<String> {
    let lb = view
        .balancing
        .load_balancers
        .values()
        .find(|lb| lb.vip_address == fixed)?;
    let sp = snat_ports
        .iter()
        .find(|p| p.network_id == lb.vip_network_id)?;
    let own = sp
        .fixed_ips
        .iter()
        .map(|f| f.ip_address)
        .find(|ip| v4(*ip))?;
    Some(format!(
        "oifname \"sg-{}\" ip daddr {fixed} ct status dnat snat to {own}",
        short(&sp.id)
    ))
}

fn nat(dnat: Vec<String>, snat: Vec<String>) -> BTreeMap<String, NatChain> {
    BTreeMap::from([
        ("inbound".to_owned(), NatChain::new(dnat)),
        ("outbound".to_owned(), NatChain::new(snat)),
    ])
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
    /// Add a policy rule.
    AddRule(String, Rule),
    /// Remove a policy rule.
    DelRule(String, Rule),
    /// Change the namespace's NAT table (one transaction).
    Nat {
        /// Namespace.
        namespace: String,
        /// The changes, planned like every other table.
        plan: crate::nft::Plan,
    },
    /// Delete a namespace and everything in it.
    DelNamespace(String),
}

impl Op {
    /// The namespace the op changes.
    pub fn namespace(&self) -> &str {
        match self {
            Op::AddNamespace(ns) | Op::DelNamespace(ns) => ns,
            Op::AddInterface { namespace, .. }
            | Op::DelInterface { namespace, .. }
            | Op::AddAddress { namespace, .. }
            | Op::DelAddress { namespace, .. }
            | Op::Nat { namespace, .. } => namespace,
            Op::AddNeighbour(ns, _)
            | Op::DelNeighbour(ns, _)
            | Op::AddRoute(ns, _)
            | Op::DelRoute(ns, _)
            | Op::AddRule(ns, _)
            | Op::DelRule(ns, _) => ns,
        }
    }
}

/// An address to announce with a gratuitous ARP once its interface is on the bridge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Announcement {
    /// Namespace.
    pub namespace: String,
    /// Device.
    pub device: String,
    /// Its new IPv4 address.
    pub ip: Ipv4Addr,
    /// Its MAC.
    pub mac: String,
}

/// External addresses `ops` add (a floating IP on `qf-` or `qg-`, a gateway address): the
/// physical network must learn where they now live, as a floating IP's MAC may have been seen
/// on another node a moment ago.
pub fn announcements(ops: &[Op], desired: &RouterState) -> Vec<Announcement> {
    ops.iter()
        .filter_map(|op| match op {
            Op::AddAddress {
                namespace,
                device,
                address: (IpAddr::V4(ip), _),
            } if device.starts_with("qf-") || device.starts_with("qg-") => {
                let mac = desired.get(namespace)?.interfaces.get(device)?.mac.clone();
                Some(Announcement {
                    namespace: namespace.clone(),
                    device: device.clone(),
                    ip: *ip,
                    mac,
                })
            }
            _ => None,
        })
        .collect()
}

/// The NAT table of a namespace holding `want`, planned against what it holds (`have`, the
/// chains' content hashes as read back) by the same planner as every other table.
fn nat_plan(
    want: &BTreeMap<String, NatChain>,
    have: &BTreeMap<String, NatChain>,
) -> Option<crate::nft::Plan> {
    // A namespace that translates nothing needs no table.
    if have.is_empty() && want.values().all(|c| c.rules.is_empty()) {
        return None;
    }
    let table = crate::nft::Table {
        family: "ip",
        name: NAT_TABLE,
        skeleton: NAT_CHAINS
            .iter()
            .map(|(chain, hook)| format!("  chain {chain} {{\n    {hook}\n  }}\n"))
            .collect(),
        chains: want
            .iter()
            .map(|(name, c)| (name.clone(), c.rules.clone()))
            .collect(),
        ..Default::default()
    };
    let observed = crate::nft::Observed {
        exists: !have.is_empty(),
        chains: have
            .iter()
            .map(|(name, c)| {
                (
                    name.clone(),
                    (!c.version.is_empty()).then(|| c.version.clone()),
                )
            })
            .collect(),
        ..Default::default()
    };
    let base: Vec<&str> = NAT_CHAINS.iter().map(|(chain, _)| *chain).collect();
    table.plan(&observed, &base)
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
        // On-link routes first: a next hop must be reachable when its route is added.
        let (on_link, via): (Vec<&Route>, Vec<&Route>) =
            want.routes.iter().partition(|r| r.via.is_none());
        for r in on_link.into_iter().chain(via) {
            if !have.routes.contains(r) || gone.contains(&r.device) {
                ops.push(Op::AddRoute(ns_name.clone(), r.clone()));
            }
        }
        for r in have.routes.difference(&want.routes) {
            if !gone.contains(&r.device) {
                ops.push(Op::DelRoute(ns_name.clone(), r.clone()));
            }
        }
        for r in want.rules.difference(&have.rules) {
            ops.push(Op::AddRule(ns_name.clone(), r.clone()));
        }
        for r in have.rules.difference(&want.rules) {
            ops.push(Op::DelRule(ns_name.clone(), r.clone()));
        }
        if let Some(plan) = nat_plan(&want.nat, &have.nat) {
            ops.push(Op::Nat {
                namespace: ns_name.clone(),
                plan,
            });
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
            json!({"id": "sa", "network_id": "net-a", "cidr": "10.1.0.0/24", "gateway_ip": "10.1.0.1"}),
        ))
        .unwrap();
        v.apply(&line(
            "subnet",
            json!({"id": "sb", "network_id": "net-b", "cidr": "10.2.0.0/24", "gateway_ip": "10.2.0.1"}),
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
        assert_eq!(
            ns.routes.iter().collect::<Vec<_>>(),
            [&Route {
                table: MAIN_TABLE,
                destination: "10.9.0.0".parse().unwrap(),
                prefix: 16,
                via: Some("10.1.0.9".parse().unwrap()),
                device: "qr-a1000000000".into(),
            }],
            "the extra route leaves where its next hop is"
        );
        assert!(
            ns.rules.is_empty() && ns.nat.is_empty(),
            "no gateway: no SNAT"
        );
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
            kernel.devices.insert(
                tap.into(),
                crate::l2::Device {
                    bridge: None,
                    mtu: 1500,
                    up: false,
                },
            );
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
        // Believed pinned (an agent's memory) but back off its bridge: pinned again.
        let mut remembered = detached.clone();
        remembered.pins = kernel.pins.clone();
        let again = l2::plan(&state, &remembered);
        assert!(
            again.iter().any(|o| matches!(o, l2::Op::AddPin(_))),
            "{again:?}"
        );
    }

    /// The view with an external flat network on physnet `public` (172.24.4.0/24), the
    /// router's gateway on node1 (which maps `public`; node2 does not), SNAT ports, and two
    /// floating IPs: one for the VM on node1 (distributed), one for the pod on node2 (central).
    fn view_with_gateway() -> NodeView {
        let mut v = view();
        v.apply(&line(
            "network",
            json!({"id": "ext", "mtu": 1500, "provider:network_type": "flat",
            "provider:segmentation_id": null, "provider:physical_network": "public"}),
        ))
        .unwrap();
        v.apply(&line(
            "subnet",
            json!({"id": "se", "network_id": "ext", "cidr": "172.24.4.0/24", "gateway_ip": "172.24.4.1"}),
        ))
        .unwrap();
        v.apply(&line(
            "router",
            json!({"id": R, "admin_state_up": true, "routes": [],
            "external_gateway_info": {"network_id": "ext", "enable_snat": true}}),
        ))
        .unwrap();
        v.apply(&line(
            "node",
            json!({"name": "node1", "tunnel_ip": "192.0.2.1", "physnets": {"public": "eth1"}}),
        ))
        .unwrap();
        v.apply(&port(
            "e1000000000000",
            "ext",
            "se",
            "172.24.4.10",
            "node1",
            OWNER_GATEWAY,
        ))
        .unwrap();
        v.apply(&port(
            "s1000000000000",
            "net-a",
            "sa",
            "10.1.0.3",
            "node1",
            OWNER_SNAT,
        ))
        .unwrap();
        v.apply(&port(
            "s2000000000000",
            "net-b",
            "sb",
            "10.2.0.3",
            "node1",
            OWNER_SNAT,
        ))
        .unwrap();
        for (fip, address, port_id, fixed) in [
            ("f1", "172.24.4.20", "a2000000000000", "10.1.0.5"),
            ("f2", "172.24.4.21", "b2000000000000", "10.2.0.7"),
        ] {
            v.apply(&line(
                "floatingip",
                json!({"id": fip, "floating_ip_address": address, "floating_network_id": "ext",
                "port_id": port_id, "fixed_ip_address": fixed, "router_id": R}),
            ))
            .unwrap();
            let mut p = port(&format!("{fip}00000000000f"), "ext", "se", address, "", "");
            p["object"]["device_owner"] = json!(OWNER_FLOATING_IP);
            p["object"]["device_id"] = json!(fip);
            v.apply(&p).unwrap();
        }
        v
    }

    #[test]
    fn a_central_floating_ip_on_a_vip_comes_back_through_this_namespace() {
        let mut v = view_with_gateway();
        v.apply(&line(
            "loadbalancer",
            json!({"id": "lb1", "vip_address": "10.2.0.7", "vip_network_id": "net-b",
                   "admin_state_up": true, "listeners": []}),
        ))
        .unwrap();
        let snat = &desired(&v, &node("node1"))[&snat_namespace_name(R)];
        assert_eq!(
            snat.nat["outbound"].rules,
            [
                "oifname \"qg-e1000000000\" ip saddr 10.2.0.7 snat to 172.24.4.21",
                "oifname \"sg-s2000000000\" ip daddr 10.2.0.7 ct status dnat snat to 10.2.0.3",
                "oifname \"qg-e1000000000\" ip saddr { 10.1.0.0/24, 10.2.0.0/24 } snat to 172.24.4.10",
            ]
        );
    }

    #[test]
    fn north_south_snat_and_floating_ips() {
        let v = view_with_gateway();
        let one = desired(&v, &node("node1"));
        let two = desired(&v, &node("node2"));
        assert_eq!(
            one.keys().collect::<Vec<_>>(),
            [&namespace_name(R), &snat_namespace_name(R)]
        );
        assert_eq!(two.keys().collect::<Vec<_>>(), [&namespace_name(R)]);

        // Everywhere: what the main table does not route goes to the subnet's SNAT port.
        let q2 = &two[&namespace_name(R)];
        let table_b = table_of("10.2.0.1".parse().unwrap());
        assert!(q2.rules.contains(&Rule {
            priority: SNAT_RULE_PRIORITY,
            from: "10.2.0.0".parse().unwrap(),
            prefix: 24,
            table: table_b,
        }));
        assert!(q2.routes.contains(&Route {
            table: table_b,
            destination: DEFAULT_V4,
            prefix: 0,
            via: Some("10.2.0.3".parse().unwrap()),
            device: "qr-b1000000000".into(),
        }));
        assert!(
            q2.nat.is_empty(),
            "node2 maps no physnet: no floating IP here"
        );

        // node1 NATs its VM's floating IP itself, on qf- with the floating port's MAC.
        let q1 = &one[&namespace_name(R)];
        let qf = &q1.interfaces["qf-f1000000000"];
        assert_eq!(qf.bridge, "brqext");
        assert_eq!(qf.mac, "fa:16:3e:00:00:f1");
        assert_eq!(qf.addresses, [("172.24.4.20".parse().unwrap(), 32)].into());
        assert!(q1.rules.contains(&Rule {
            priority: FIP_RULE_PRIORITY,
            from: "10.1.0.5".parse().unwrap(),
            prefix: 32,
            table: table_of("10.1.0.5".parse().unwrap()),
        }));
        assert_eq!(
            q1.nat["inbound"].rules,
            ["iifname \"qf-f1000000000\" ip daddr 172.24.4.20 dnat to 10.1.0.5"]
        );

        // The SNAT namespace: the gateway address and the central floating IP on qg-, the
        // pod's floating IP translated before the subnets' SNAT.
        let snat = &one[&snat_namespace_name(R)];
        assert_eq!(
            snat.interfaces["qg-e1000000000"].addresses,
            [
                ("172.24.4.10".parse().unwrap(), 24),
                ("172.24.4.21".parse().unwrap(), 32)
            ]
            .into()
        );
        assert!(snat.interfaces.contains_key("sg-s1000000000"));
        assert_eq!(
            snat.nat["outbound"].rules,
            [
                "oifname \"qg-e1000000000\" ip saddr 10.2.0.7 snat to 172.24.4.21",
                "oifname \"qg-e1000000000\" ip saddr { 10.1.0.0/24, 10.2.0.0/24 } snat to 172.24.4.10",
            ]
        );
        assert!(snat
            .routes
            .iter()
            .any(|r| r.via == Some("172.24.4.1".parse().unwrap())));
        assert!(snat
            .neighbours
            .iter()
            .any(|n| n.ip.to_string() == "10.2.0.7"));

        // Converged: nothing to do; a changed chain is one op.
        assert!(plan(&one, &one).is_empty());
        let fresh = plan(&one, &RouterState::new());
        let announced: Vec<String> = announcements(&fresh, &one)
            .iter()
            .map(|a| format!("{} {}", a.device, a.ip))
            .collect();
        assert_eq!(
            announced,
            [
                "qf-f1000000000 172.24.4.20",
                "qg-e1000000000 172.24.4.10",
                "qg-e1000000000 172.24.4.21"
            ]
        );
        let mut have = one.clone();
        have.get_mut(&snat_namespace_name(R))
            .unwrap()
            .nat
            .remove("inbound");
        assert_eq!(
            plan(&one, &have)
                .iter()
                .filter(|o| matches!(o, Op::Nat { .. }))
                .count(),
            1
        );
        // Without SNAT the subnets leave untranslated; floating IPs still translate.
        let mut no_snat = v.clone();
        no_snat
            .routers
            .get_mut(R)
            .unwrap()
            .external_gateway_info
            .as_mut()
            .unwrap()
            .enable_snat = false;
        let rules =
            &desired(&no_snat, &node("node1"))[&snat_namespace_name(R)].nat["outbound"].rules;
        assert_eq!(
            rules,
            &["oifname \"qg-e1000000000\" ip saddr 10.2.0.7 snat to 172.24.4.21"]
        );
        let mut stale = one.clone();
        stale
            .get_mut(&snat_namespace_name(R))
            .unwrap()
            .nat
            .insert("outbound".into(), NatChain::new(vec!["accept".into()]));
        let script = plan(&one, &stale)
            .into_iter()
            .find_map(|o| match o {
                Op::Nat { plan, .. } => Some(plan.to_string()),
                _ => None,
            })
            .unwrap();
        assert!(
            script.contains("flush chain ip isthmus outbound\n"),
            "{script}"
        );
        assert!(script.contains("comment \"isthmus:"), "{script}");
        assert_eq!(
            script.matches("add rule").count(),
            2,
            "the script adds the chain's rules and nothing else: {script}"
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
        ns.interfaces.get_mut("qr-a1000000000").unwrap().mac = "fa:16:3e:ff:ff:ff".into();
        ns.neighbours.insert(Neighbour {
            device: "qr-b1000000000".into(),
            ip: "10.2.0.77".parse().unwrap(),
            mac: "fa:16:3e:00:00:77".into(),
        });
        let ops = plan(&want, &have);
        assert!(ops.contains(&Op::DelInterface {
            namespace: namespace_name(R),
            name: "qr-a1000000000".into()
        }));
        assert!(ops
            .iter()
            .any(|o| matches!(o, Op::AddNeighbour(_, n) if n.device == "qr-a1000000000")));
        assert!(ops
            .iter()
            .any(|o| matches!(o, Op::DelNeighbour(_, n) if n.ip.to_string() == "10.2.0.77")));
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
