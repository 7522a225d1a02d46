//! Distributed load balancing, pure. Every node whose local ports can reach a VIP (its
//! network, or one a router joins to it) translates VIP:port to a member in the path of those
//! ports, so each connection is tracked and un-NATed by the client's own node:
//!
//! - `table inet isthmus_lb`: a verdict map from VIP . protocol . port to one chain per
//!   listener (allowed CIDRs, connection limit, source-IP persistence, then `numgen`/`jhash`
//!   over the members' weights) and one chain per member (DNAT). Bridged packets reach it
//!   through br_netfilter; a member connecting to its own VIP is SNATed to the VIP (hairpin).
//! - Bridged DNAT needs a route to the member from the bridge: each such network's bridge gets
//!   a routing table (`ip rule iif brq… lookup T`) with its subnets on-link, the subnets its
//!   routers reach via its gateway, the VIPs as local addresses (the node answers ARP for them
//!   with the bridge's MAC, and only for its own clients: VIP ARP requests never cross a
//!   tunnel) and permanent neighbours for the network's ports, so the kernel never ARPs from
//!   the bridge.
//!
//! The input is the view's load balancer objects (Octavia's, and Kubernetes Services made into
//! them); everything after [`services`] is independent of that wire format.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};

use isthmus_model::addr::Cidr;
use isthmus_model::lbaas::Stats;
use isthmus_model::network::{bridge_name, is_interface_name};
use isthmus_model::port::tap_name;
use isthmus_model::router::OWNER_INTERFACE;
use serde_json::Value;

use crate::nft::{fnv64, Table};
use crate::node::NodeConfig;
use crate::view::{Balancing, Listener, NodeView};

/// Name of both load-balancing tables.
pub const TABLE: &str = "isthmus_lb";
/// Base chains of the inet table.
pub const INET_BASE: &[&str] = &[
    "prerouting",
    "postrouting",
    "input",
    "count_in",
    "count_out",
];
/// Base chains of the bridge table.
pub const BRIDGE_BASE: &[&str] = &["forward", "output"];
/// Priority of the `iif brq… lookup T` rules (before the main table's).
pub const RULE_PRIORITY: u32 = 900;
/// First routing table number of a VXLAN network (plus its VNI); flat networks use a hash
/// above [`FLAT_TABLES`].
pub const VXLAN_TABLES: u32 = 0x1000_0000;
/// First routing table number of a flat network.
pub const FLAT_TABLES: u32 = 0x1100_0000;

const INET_SKELETON: &str = "  map services {\n    type ipv4_addr . inet_proto . inet_service : verdict\n  }\n  set hairpin {\n    type ipv4_addr . ipv4_addr\n  }\n  chain prerouting {\n    type nat hook prerouting priority dstnat; policy accept;\n  }\n  chain postrouting {\n    type nat hook postrouting priority srcnat; policy accept;\n  }\n  chain input {\n    type filter hook input priority filter; policy accept;\n  }\n  set bytes_in {\n    type ipv4_addr . inet_proto . inet_service\n    counter\n  }\n  set bytes_out {\n    type ipv4_addr . inet_proto . inet_service\n    counter\n  }\n  set connections {\n    type ipv4_addr . inet_proto . inet_service\n    counter\n  }\n  set refusals {\n    type ipv4_addr . inet_proto . inet_service\n    counter\n  }\n  chain count_in {\n    type filter hook prerouting priority -150; policy accept;\n  }\n  chain count_out {\n    type filter hook postrouting priority 300; policy accept;\n  }\n";

/// The counting sets: each listener's key (as in `services`, `VIP . protocol . port`) is an
/// element of each, whose counter the kernel updates on every lookup that finds it: bytes
/// from clients, bytes to clients, new connections (counted before DNAT, refused ones too) and
/// connections refused (not in `allowed_cidrs`, over `connection_limit`, or no member up).
/// Element counters, not named counter objects: nft reads every object of the ruleset before
/// each transaction, which would make every change cost more the more listeners there are.
pub const COUNTING: [&str; 4] = ["bytes_in", "bytes_out", "connections", "refusals"];

/// A counting set's declaration.
const COUNTING_DECL: &str = "type ipv4_addr . inet_proto . inet_service; counter;";

/// Where connections refused by a listener go: counted, dropped.
const REFUSE: &str = "refuse";

const BRIDGE_SKELETON: &str = "  set vips {\n    type ipv4_addr\n  }\n  chain forward {\n    type filter hook forward priority filter; policy accept;\n  }\n  chain output {\n    type filter hook output priority filter; policy accept;\n  }\n";

/// How a listener picks a member.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    /// In turn (per node), by weight.
    RoundRobin,
    /// A hash of the client address.
    SourceIp,
    /// A hash of the client address and port.
    SourceIpPort,
}

/// One member a listener may send a new connection to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backend {
    /// Its id (names its chain and persistence set).
    pub id: String,
    /// Its address.
    pub address: Ipv4Addr,
    /// Its port.
    pub port: u16,
    /// Its share.
    pub weight: u16,
}

/// One balanced VIP:port: what the data plane needs of a listener, its pool and members.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    /// The listener's id.
    pub id: String,
    /// The VIP.
    pub vip: Ipv4Addr,
    /// The VIP's network.
    pub network_id: String,
    /// `tcp`, `udp` or `sctp`.
    pub protocol: &'static str,
    /// The VIP port.
    pub port: u16,
    /// How a member is picked.
    pub algorithm: Algorithm,
    /// Source-IP persistence timeout, seconds.
    pub persistence: Option<u32>,
    /// Clients allowed (empty: all).
    pub allowed: Vec<Cidr>,
    /// Most concurrent connections through this node.
    pub connection_limit: Option<u32>,
    /// The members new connections go to (backups only when no other is up).
    pub backends: Vec<Backend>,
}

/// The services of every load balancer in the view (IPv4 VIPs; listeners or pools that are
/// down, and members down, in ERROR or of weight 0, are left out).
pub fn services(view: &NodeView) -> Vec<Service> {
    let b = &view.balancing;
    let mut out = Vec::new();
    for lb in b.load_balancers.values() {
        let IpAddr::V4(vip) = lb.vip_address else {
            continue;
        };
        if !lb.admin_state_up {
            continue;
        }
        for l in &lb.listeners {
            if let Some(service) = b
                .listeners
                .get(&l.id)
                .and_then(|listener| service(b, vip, &lb.vip_network_id, listener))
            {
                out.push(service);
            }
        }
    }
    out
}

/// The networks of the VIPs that have a service (see [`services`]), without making them.
pub fn vip_networks(view: &NodeView) -> BTreeSet<&str> {
    let b = &view.balancing;
    b.load_balancers
        .values()
        .filter(|lb| lb.admin_state_up && lb.vip_address.is_ipv4())
        .filter(|lb| {
            lb.listeners.iter().any(|l| {
                b.listeners
                    .get(&l.id)
                    .is_some_and(|l| l.admin_state_up && nft_protocol(&l.protocol).is_some())
            })
        })
        .map(|lb| lb.vip_network_id.as_str())
        .collect()
}

/// A listener's protocol as nft names it (`None`: not balanced in the kernel).
fn nft_protocol(protocol: &str) -> Option<&'static str> {
    match protocol {
        "TCP" => Some("tcp"),
        "UDP" => Some("udp"),
        "SCTP" => Some("sctp"),
        _ => None,
    }
}

fn service(b: &Balancing, vip: Ipv4Addr, network: &str, l: &Listener) -> Option<Service> {
    if !l.admin_state_up {
        return None;
    }
    let protocol = nft_protocol(l.protocol.as_str())?;
    let pool = l
        .default_pool_id
        .as_deref()
        .and_then(|p| b.pools.get(p))
        .filter(|p| p.admin_state_up);
    let (algorithm, persistence, mut members) = match pool {
        Some(pool) => (
            match pool.lb_algorithm.as_str() {
                "SOURCE_IP" => Algorithm::SourceIp,
                "SOURCE_IP_PORT" => Algorithm::SourceIpPort,
                _ => Algorithm::RoundRobin,
            },
            pool.session_persistence
                .as_ref()
                .map(|p| p.persistence_timeout.unwrap_or(360)),
            pool.members
                .iter()
                .filter_map(|m| b.members.get(&m.id))
                .filter(|m| m.admin_state_up && m.weight > 0 && m.operating_status != "ERROR")
                .collect::<Vec<_>>(),
        ),
        None => (Algorithm::RoundRobin, None, Vec::new()),
    };
    members.sort_by(|a, b| a.id.cmp(&b.id));
    let primary = members.iter().any(|m| !m.backup);
    let backends = members
        .into_iter()
        .filter(|m| m.backup != primary)
        .filter_map(|m| match m.address {
            IpAddr::V4(address) => Some(Backend {
                id: m.id.clone(),
                address,
                port: m.protocol_port,
                weight: m.weight,
            }),
            IpAddr::V6(_) => None,
        })
        .collect();
    let allowed = l
        .allowed_cidrs
        .iter()
        .flatten()
        .filter_map(|c| Cidr::parse_lenient(c))
        .filter(|c| c.version() == isthmus_model::addr::IpVersion::V4)
        .collect();
    Some(Service {
        id: l.id.clone(),
        vip,
        network_id: network.to_owned(),
        protocol,
        port: l.protocol_port,
        algorithm,
        persistence,
        allowed,
        connection_limit: u32::try_from(l.connection_limit).ok(),
        backends,
    })
}

/// What a health probe does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeKind {
    /// An ICMP echo.
    Ping,
    /// A TCP connection opened and closed.
    Tcp,
    /// A UDP datagram that must not draw an ICMP port unreachable.
    UdpConnect,
    /// `GET path` answered with one of the expected codes (`200`, `200,202`, `200-204`).
    Http {
        /// URL path.
        path: String,
        /// Expected status codes.
        expected: String,
    },
}

/// One member this node probes (it hosts the member's port), from its network's DHCP
/// namespace (the DHCP port's address is the probes' source).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    /// The member.
    pub member_id: String,
    /// Namespace the probe runs in.
    pub namespace: String,
    /// Where it goes (`monitor_address`/`monitor_port`, else the member's).
    pub target: std::net::SocketAddrV4,
    /// What it does.
    pub kind: ProbeKind,
    /// Seconds between probes.
    pub delay: u32,
    /// Seconds one probe may take.
    pub timeout: u32,
    /// Successes in a row that make the member ONLINE.
    pub rise: u32,
    /// Failures in a row that make it ERROR.
    pub fall: u32,
    /// Its `operating_status` as the view has it (what was last reported).
    pub reported: String,
}

/// The members of monitored pools whose ports this node hosts, on networks with a DHCP
/// namespace here (members elsewhere are their own nodes' to probe).
pub fn probes(view: &NodeView, node: &NodeConfig) -> Vec<Probe> {
    let b = &view.balancing;
    let mut out = Vec::new();
    for pool in b.pools.values() {
        let Some(monitor) = pool
            .healthmonitor_id
            .as_deref()
            .and_then(|h| b.monitors.get(h))
            .filter(|m| m.admin_state_up)
        else {
            continue;
        };
        let probe_kind = match monitor.kind.as_str() {
            "PING" => ProbeKind::Ping,
            "TCP" => ProbeKind::Tcp,
            "UDP-CONNECT" => ProbeKind::UdpConnect,
            "HTTP" => ProbeKind::Http {
                path: monitor.url_path.clone().unwrap_or_else(|| "/".to_owned()),
                expected: monitor
                    .expected_codes
                    .clone()
                    .unwrap_or_else(|| "200".to_owned()),
            },
            _ => continue,
        };
        for m in &pool.members {
            let Some(member) = b.members.get(&m.id) else {
                continue;
            };
            let IpAddr::V4(address) = member.address else {
                continue;
            };
            if !member.admin_state_up {
                continue;
            }
            let Some(port) = view.ports.values().find(|p| {
                p.host_id == node.name
                    && p.fixed_ips
                        .iter()
                        .any(|f| f.ip_address == IpAddr::V4(address))
            }) else {
                continue;
            };
            let has_namespace = crate::dhcp::dhcp_port(view, &port.network_id)
                .is_some_and(|d| d.fixed_ips.iter().any(|f| f.ip_address.is_ipv4()));
            if !has_namespace {
                continue;
            }
            let target_ip = match member.monitor_address {
                Some(IpAddr::V4(a)) => a,
                _ => address,
            };
            out.push(Probe {
                member_id: member.id.clone(),
                namespace: crate::dhcp::namespace_name(&port.network_id),
                target: std::net::SocketAddrV4::new(
                    target_ip,
                    member.monitor_port.unwrap_or(member.protocol_port),
                ),
                kind: probe_kind.clone(),
                delay: monitor.delay,
                timeout: monitor.timeout,
                rise: monitor.max_retries,
                fall: monitor.max_retries_down,
                reported: member.operating_status.clone(),
            });
        }
    }
    out
}

/// The statistics of `services` (the view's, [`services`]), by listener id: their elements'
/// counters in the counting sets of `table` (what `nft -j list table inet isthmus_lb` prints)
/// and their open connections in `conntrack` (the text of `/proc/net/nf_conntrack`).
/// Listeners not counted here (balanced by other nodes only) are left out.
pub fn listener_stats(
    services: &[Service],
    table: &Value,
    conntrack: &str,
) -> BTreeMap<String, Stats> {
    // (set, key) → (packets, bytes)
    let mut counted: BTreeMap<(&str, String), (u64, u64)> = BTreeMap::new();
    for item in table["nftables"].as_array().into_iter().flatten() {
        let set = &item["set"];
        let Some(name) = set["name"].as_str().filter(|n| COUNTING.contains(n)) else {
            continue;
        };
        for element in set["elem"].as_array().into_iter().flatten() {
            let element = &element["elem"];
            let parts: Option<Vec<String>> = element["val"]["concat"].as_array().map(|parts| {
                parts
                    .iter()
                    .map(|p| p.as_str().map_or_else(|| p.to_string(), str::to_owned))
                    .collect()
            });
            if let Some(parts) = parts {
                let counter = &element["counter"];
                let number = |key: &str| counter[key].as_u64().unwrap_or(0);
                counted.insert(
                    (name, parts.join(" . ")),
                    (number("packets"), number("bytes")),
                );
            }
        }
    }
    let active = open_connections(conntrack);
    let mut out = BTreeMap::new();
    for s in services {
        let key = service_key(s.vip, s.protocol, s.port);
        let read = |set: &'static str| counted.get(&(set, key.clone())).copied();
        let (Some(bytes_in), Some(bytes_out), Some(made), Some(refused)) = (
            read("bytes_in"),
            read("bytes_out"),
            read("connections"),
            read("refusals"),
        ) else {
            continue;
        };
        out.insert(
            s.id.clone(),
            Stats {
                bytes_in: bytes_in.1,
                bytes_out: bytes_out.1,
                active_connections: active.get(&key).copied().unwrap_or(0),
                total_connections: made.0,
                request_errors: refused.0,
            },
        );
    }
    out
}

/// Open connections through DNAT by original destination (`VIP . protocol . port`), from the
/// text of `/proc/net/nf_conntrack`: TCP and SCTP ones established, every UDP flow.
fn open_connections(conntrack: &str) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for line in conntrack.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        if words.first() != Some(&"ipv4") || words.len() < 6 {
            continue;
        }
        let protocol = words[2];
        let open = match protocol {
            "tcp" | "sctp" => words[5] == "ESTABLISHED",
            "udp" => true,
            _ => false,
        };
        let values = |key: &str| -> Vec<&str> {
            words
                .iter()
                .filter_map(|w| w.strip_prefix(key)?.strip_prefix('='))
                .collect()
        };
        let (src, dst, dport) = (values("src"), values("dst"), values("dport"));
        // The reply comes from another address than the client asked for: translated.
        let (Some(vip), Some(port), Some(member)) = (dst.first(), dport.first(), src.get(1)) else {
            continue;
        };
        let (Ok(vip), Ok(port)) = (vip.parse::<Ipv4Addr>(), port.parse::<u16>()) else {
            continue;
        };
        if open && *member != dst[0] {
            *out.entry(service_key(vip, protocol, port)).or_default() += 1;
        }
    }
    out
}

/// The routing table of a network's bridge.
pub fn route_table(view: &NodeView, network_id: &str) -> u32 {
    match view
        .networks
        .get(network_id)
        .and_then(|n| n.segmentation_id)
    {
        Some(vni) => VXLAN_TABLES + (vni & 0x00ff_ffff),
        None => {
            let h = u32::from_str_radix(&fnv64(network_id)[..6], 16).unwrap_or(0);
            FLAT_TABLES + h
        }
    }
}

/// What a route in a bridge's table is.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RouteKind {
    /// On the bridge's link.
    Link,
    /// Through a router's gateway address on the bridge's network.
    Via(Ipv4Addr),
    /// A VIP: the node answers ARP for it.
    Local,
    /// Anything else from the bridge goes nowhere.
    Unreachable,
}

/// One route of a bridge's table.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RouteEntry {
    /// Table number.
    pub table: u32,
    /// Destination (`0.0.0.0/0` for the default).
    pub destination: Cidr,
    /// What it is.
    pub kind: RouteKind,
    /// The bridge (none for `unreachable`).
    pub device: Option<String>,
}

/// One permanent neighbour on a bridge.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Neighbour {
    /// The bridge.
    pub device: String,
    /// Address.
    pub ip: Ipv4Addr,
    /// MAC, lower case.
    pub mac: String,
}

/// The root namespace's routing for bridged DNAT.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Routing {
    /// `iif <bridge> lookup <table>` rules.
    pub rules: BTreeSet<(String, u32)>,
    /// Routes in those tables.
    pub routes: BTreeSet<RouteEntry>,
    /// Permanent neighbours on those bridges.
    pub neighbours: BTreeSet<Neighbour>,
    /// Bridge ports in hairpin mode (taps of members that may connect to their own VIP).
    pub hairpin: BTreeSet<String>,
}

/// The node's whole load-balancing state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Desired {
    /// `table inet isthmus_lb`.
    pub inet: Table,
    /// `table bridge isthmus_lb`.
    pub bridge: Table,
    /// Routing for bridged DNAT.
    pub routing: Routing,
    /// What it was computed from, for the passes that redo only some listeners.
    pub memo: Memo,
}

/// What the kernel holds of a node's load balancing (read back, or what the agent last wrote).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observed {
    /// `table inet isthmus_lb`.
    pub inet: crate::nft::Observed,
    /// `table bridge isthmus_lb`.
    pub bridge: crate::nft::Observed,
    /// Routing for bridged DNAT.
    pub routing: Routing,
}

impl Observed {
    /// The bridges that balance.
    pub fn bridges(&self) -> BTreeSet<&str> {
        self.routing.bridges()
    }
}

/// The changes that bring a node's load balancing to what it should be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Routing changes, `ip -batch` lines, first: a VIP's first connection is routed as soon
    /// as its DNAT rule exists.
    pub routing: Vec<String>,
    /// Table changes (inet, then bridge), one transaction.
    pub tables: Vec<crate::nft::Plan>,
    /// What the kernel holds once applied (its bridges balance: they forward, without
    /// reverse-path filtering).
    pub after: Observed,
    /// What a whole plan was computed from (a plan of [`Memo::update`] has updated its memo
    /// in place).
    pub memo: Option<Memo>,
    /// VIPs to announce on their bridge once applied, (bridge, VIP): those of services that
    /// have members and whose chain this plan writes (a client that asked for the VIP before
    /// it could be answered need not wait for its next ARP retry).
    pub announce: Vec<(String, Ipv4Addr)>,
}

impl Desired {
    /// The changes turning `have` into this.
    pub fn plan(&self, have: &Observed) -> Plan {
        Plan {
            routing: self.routing.plan(&have.routing),
            tables: [
                self.inet.plan(&have.inet, INET_BASE),
                self.bridge.plan(&have.bridge, BRIDGE_BASE),
            ]
            .into_iter()
            .flatten()
            .collect(),
            after: Observed {
                inet: self.inet.as_observed(),
                bridge: self.bridge.as_observed(),
                routing: self.routing.clone(),
            },
            memo: Some(self.memo.clone()),
            announce: self.routing.local_vips(
                &self
                    .memo
                    .services
                    .values()
                    .filter(|s| !s.backends.is_empty())
                    .filter(|s| {
                        let chain = service_chain(&s.id);
                        let want = self
                            .inet
                            .chains
                            .get(&chain)
                            .and_then(|r| Table::chain_version(r));
                        have.inet.chains.get(&chain).cloned().flatten() != want
                    })
                    .map(|s| s.vip)
                    .collect(),
            ),
        }
    }
}

fn short(id: &str) -> &str {
    id.get(..11).unwrap_or(id)
}

/// The chain of a listener.
pub fn service_chain(id: &str) -> String {
    format!("svc-{}", short(id))
}

fn backend_chain(service: &str, backend: &str) -> String {
    format!("be-{}-{}", short(service), short(backend))
}

fn affinity_set(service: &str, backend: &str) -> String {
    format!("aff-{}-{}", short(service), short(backend))
}

/// What one service puts in `table inet isthmus_lb`.
struct Parts {
    /// Its chains (the listener's, and with persistence one per member), with their rules.
    chains: Vec<(String, Vec<String>)>,
    /// Its persistence sets (filled by the kernel): name, declaration.
    sets: Vec<(String, String)>,
    /// Its key in the `services` verdict map (`VIP . protocol . port`, to its chain) and its
    /// element in the counting sets.
    key: String,
}

fn parts(s: &Service) -> Parts {
    let mut chains = vec![(service_chain(&s.id), service_rules(s))];
    let mut sets = Vec::new();
    if let Some(timeout) = s.persistence {
        for b in &s.backends {
            let set = affinity_set(&s.id, &b.id);
            let rules = vec![
                format!("update @{set} {{ ip saddr }}"),
                format!(
                    "meta l4proto {} dnat ip to {}:{}",
                    s.protocol, b.address, b.port
                ),
            ];
            chains.push((backend_chain(&s.id, &b.id), rules));
            sets.push((
                set,
                format!("type ipv4_addr; flags dynamic,timeout; timeout {timeout}s;"),
            ));
        }
    }
    Parts {
        chains,
        sets,
        key: service_key(s.vip, s.protocol, s.port),
    }
}

/// A service's key in the `services` map and its element in the counting sets.
fn service_key(vip: Ipv4Addr, protocol: &str, port: u16) -> String {
    format!("{vip} . {protocol} . {port}")
}

/// The `hairpin` element of a member: its connections to itself through a VIP.
fn hairpin_element(address: Ipv4Addr) -> String {
    format!("{address} . {address}")
}

/// The rules of a listener's chain.
fn service_rules(s: &Service) -> Vec<String> {
    let mut rules = Vec::new();
    if !s.allowed.is_empty() {
        let cidrs: Vec<String> = s.allowed.iter().map(Cidr::to_string).collect();
        rules.push(format!(
            "ip saddr != {{ {} }} goto {REFUSE}",
            cidrs.join(", ")
        ));
    }
    if let Some(limit) = s.connection_limit {
        rules.push(format!("ct count over {limit} goto {REFUSE}"));
    }
    if s.backends.is_empty() {
        rules.push(format!("goto {REFUSE}"));
        return rules;
    }
    if s.persistence.is_some() {
        for b in &s.backends {
            rules.push(format!(
                "ip saddr @{} goto {}",
                affinity_set(&s.id, &b.id),
                backend_chain(&s.id, &b.id)
            ));
        }
    }
    let total: u32 = s.backends.iter().map(|b| u32::from(b.weight)).sum();
    let mut next = 0u32;
    let arms: Vec<String> = s
        .backends
        .iter()
        .map(|b| {
            let (from, to) = (next, next + u32::from(b.weight) - 1);
            next = to + 1;
            let range = if from == to {
                from.to_string()
            } else {
                format!("{from}-{to}")
            };
            // With persistence a member has a chain (it records the client); without, the
            // choice maps straight to the address, so a listener is one chain.
            if s.persistence.is_some() {
                format!("{range} : goto {}", backend_chain(&s.id, &b.id))
            } else {
                format!("{range} : {} . {}", b.address, b.port)
            }
        })
        .collect();
    let pick = match s.algorithm {
        Algorithm::RoundRobin => format!("numgen inc mod {total}"),
        Algorithm::SourceIp => format!("jhash ip saddr mod {total}"),
        Algorithm::SourceIpPort => format!("jhash ip saddr . th sport mod {total}"),
    };
    // A port translation (and `th sport`) needs the protocol matched in its own rule.
    let protocol = s.protocol;
    if s.persistence.is_some() {
        rules.push(format!(
            "meta l4proto {protocol} {pick} vmap {{ {} }}",
            arms.join(", ")
        ));
    } else {
        rules.push(format!(
            "meta l4proto {protocol} dnat ip to {pick} map {{ {} }}",
            arms.join(", ")
        ));
    }
    rules
}

/// Whether `a` and `b` are one network or joined by a router in the view (a client on `a`
/// reaches a VIP on `b`).
fn reaches(view: &NodeView, a: &str, b: &str) -> bool {
    a == b || !router_gateways(view, a, b).is_empty()
}

/// Router interfaces: (router, network, address) of every up interface port.
fn interfaces(view: &NodeView) -> Vec<(&str, &str, Ipv4Addr)> {
    view.ports
        .values()
        .filter(|p| p.device_owner == OWNER_INTERFACE)
        .filter(|p| {
            view.routers
                .get(&p.device_id)
                .is_some_and(|r| r.admin_state_up)
        })
        .flat_map(|p| {
            p.fixed_ips.iter().filter_map(move |f| match f.ip_address {
                IpAddr::V4(a) => Some((p.device_id.as_str(), p.network_id.as_str(), a)),
                IpAddr::V6(_) => None,
            })
        })
        .collect()
}

/// The gateway addresses on `from` of routers that also join `to`.
fn router_gateways(view: &NodeView, from: &str, to: &str) -> Vec<Ipv4Addr> {
    let all = interfaces(view);
    all.iter()
        .filter(|(r, n, _)| *n == from && all.iter().any(|(r2, n2, _)| r2 == r && *n2 == to))
        .map(|(_, _, a)| *a)
        .collect()
}

/// The networks with local ports whose clients reach a VIP on one of `vip_networks`: their
/// bridges balance (and so hand bridged traffic to netfilter).
pub fn balancing_networks<'a>(
    view: &'a NodeView,
    node: &NodeConfig,
    vip_networks: &BTreeSet<&str>,
) -> BTreeSet<&'a str> {
    view.ports
        .values()
        .filter(|p| p.host_id == node.name)
        .map(|p| p.network_id.as_str())
        .filter(|n| vip_networks.iter().any(|v| reaches(view, n, v)))
        .collect()
}

/// What a node's load balancing reads from outside the load balancers: the networks whose
/// bridges balance, the routing they need whatever the services are, and the local taps a
/// member's address would put in hairpin mode. While these stay the same, a pass redoes only
/// the services of the listeners that changed ([`pass`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Surroundings {
    /// The networks whose bridges balance.
    balancing: BTreeSet<String>,
    /// The routing of no service: rules, subnet and router routes, the unreachable default,
    /// neighbours.
    base: Routing,
    /// This node's taps on balancing networks (VIP ports aside), by address.
    taps: BTreeMap<Ipv4Addr, BTreeSet<String>>,
}

impl Surroundings {
    fn of(view: &NodeView, node: &NodeConfig, vip_networks: &BTreeSet<&str>) -> Surroundings {
        let balancing = balancing_networks(view, node, vip_networks);
        let mut r = Routing::default();
        let mut taps: BTreeMap<Ipv4Addr, BTreeSet<String>> = BTreeMap::new();
        for net in &balancing {
            let device = bridge_name(net);
            let table = route_table(view, net);
            r.rules.insert((device.clone(), table));
            let route = |destination: Cidr, kind: RouteKind| RouteEntry {
                table,
                destination,
                device: (kind != RouteKind::Unreachable).then(|| device.clone()),
                kind,
            };
            for s in view.subnets_of(net) {
                if s.cidr.version() == isthmus_model::addr::IpVersion::V4 {
                    r.routes.insert(route(s.cidr, RouteKind::Link));
                }
            }
            for other in view.networks.keys().filter(|n| n.as_str() != *net) {
                if let Some(gw) = router_gateways(view, net, other).first() {
                    for s in view.subnets_of(other) {
                        if s.cidr.version() == isthmus_model::addr::IpVersion::V4 {
                            r.routes.insert(route(s.cidr, RouteKind::Via(*gw)));
                        }
                    }
                }
            }
            r.routes
                .insert(route(Cidr::default_v4(), RouteKind::Unreachable));
            for p in view.ports.values().filter(|p| p.network_id == *net) {
                if p.device_owner == isthmus_model::lbaas::VIP_OWNER {
                    continue;
                }
                for f in &p.fixed_ips {
                    if let IpAddr::V4(ip) = f.ip_address {
                        r.neighbours.insert(Neighbour {
                            device: device.clone(),
                            ip,
                            mac: p.mac_address.to_ascii_lowercase(),
                        });
                        if p.host_id == node.name {
                            taps.entry(ip).or_default().insert(tap_name(&p.id));
                        }
                    }
                }
            }
        }
        Surroundings {
            balancing: balancing.into_iter().map(str::to_owned).collect(),
            base: r,
            taps,
        }
    }

    /// The routing of `services`: the base, their VIPs' local routes, their members' taps in
    /// hairpin mode.
    fn routing(&self, view: &NodeView, services: &[&Service]) -> Routing {
        let mut r = self.base.clone();
        for s in services {
            if self.balancing.contains(&s.network_id) {
                r.routes.insert(vip_route(view, &s.network_id, s.vip));
            }
            for b in &s.backends {
                r.hairpin
                    .extend(self.taps.get(&b.address).into_iter().flatten().cloned());
            }
        }
        r
    }

    /// Whether clients on a balancing network reach `network` (a service's VIP network).
    fn reached(&self, view: &NodeView, network: &str) -> bool {
        self.balancing.iter().any(|n| reaches(view, n, network))
    }
}

/// The load balancing of a full pass over `have` (what the kernel holds): with `memo` (the
/// last pass's) and the same surroundings, only the services of the `changed` listeners are
/// redone ([`Memo::update`]); otherwise every load balancer's, as [`desired`] has them.
pub fn pass(
    view: &NodeView,
    node: &NodeConfig,
    mut have: Observed,
    memo: Option<Memo>,
    changed: &BTreeSet<String>,
) -> Plan {
    if let Some(mut memo) = memo {
        let vip_networks: BTreeSet<&str> = memo.networks.keys().map(String::as_str).collect();
        if memo.surroundings == Surroundings::of(view, node, &vip_networks) {
            match memo.update(view, have, changed) {
                Ok(mut plan) => {
                    plan.memo = Some(memo);
                    return plan;
                }
                Err(back) => have = *back,
            }
        }
    }
    desired(view, node).plan(&have)
}

/// The node's load-balancing state for `view`.
pub fn desired(view: &NodeView, node: &NodeConfig) -> Desired {
    let services = services(view);
    let mut inet = Table {
        family: "inet",
        name: TABLE,
        skeleton: INET_SKELETON.to_owned(),
        ..Table::default()
    };
    let mut bridge = Table {
        family: "bridge",
        name: TABLE,
        skeleton: BRIDGE_SKELETON.to_owned(),
        ..Table::default()
    };
    let vip_networks = services.iter().map(|s| s.network_id.as_str()).collect();
    let surroundings = Surroundings::of(view, node, &vip_networks);
    if surroundings.balancing.is_empty() {
        inet.absent = true;
        bridge.absent = true;
        return Desired {
            inet,
            bridge,
            routing: Routing::default(),
            memo: Memo::default(),
        };
    }
    let services: Vec<&Service> = services
        .iter()
        .filter(|s| surroundings.reached(view, &s.network_id))
        .collect();
    let mut chains = BTreeMap::new();
    let mut vmap = BTreeMap::new();
    let mut hairpin = BTreeSet::new();
    let mut vips = BTreeSet::new();
    let mut counting: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
    for s in &services {
        let parts = parts(s);
        vmap.insert(parts.key.clone(), service_chain(&s.id));
        chains.extend(parts.chains);
        for (set, decl) in parts.sets {
            inet.sets.insert(set, (decl, BTreeSet::new()));
        }
        for set in COUNTING {
            counting.entry(set).or_default().insert(parts.key.clone());
        }
        vips.insert(s.vip.to_string());
        hairpin.extend(s.backends.iter().map(|b| hairpin_element(b.address)));
    }
    chains.insert(
        "prerouting".to_owned(),
        vec!["ip daddr . meta l4proto . th dport vmap @services".to_owned()],
    );
    // Counted (a lookup that finds a listener's element counts it) before DNAT, the VIP
    // still the destination, and after the reply's un-DNAT, the VIP the source again.
    let by_destination = "ip daddr . meta l4proto . th dport";
    chains.insert(
        "count_in".to_owned(),
        vec![
            format!("{by_destination} @bytes_in"),
            format!("ct state new {by_destination} @connections"),
        ],
    );
    chains.insert(
        "count_out".to_owned(),
        vec!["ct direction reply ip saddr . meta l4proto . th sport @bytes_out".to_owned()],
    );
    chains.insert(
        REFUSE.to_owned(),
        vec![format!("{by_destination} @refusals"), "drop".to_owned()],
    );
    chains.insert(
        "postrouting".to_owned(),
        vec![
            "ct status dnat ip saddr . ip daddr @hairpin snat ip to ct original ip daddr"
                .to_owned(),
        ],
    );
    // The VIPs are local addresses of the bridges' tables: nothing but balanced connections
    // (bridged, never delivered here) may reach the node through them.
    chains.insert(
        "input".to_owned(),
        vec![format!(
            "iifname \"{}*\" drop",
            isthmus_model::network::BRIDGE_PREFIX
        )],
    );
    inet.chains = chains;
    inet.maps.insert("services".to_owned(), vmap);
    inet.sets.insert(
        "hairpin".to_owned(),
        ("type ipv4_addr . ipv4_addr;".to_owned(), hairpin),
    );
    for set in COUNTING {
        inet.sets.insert(
            set.to_owned(),
            (
                COUNTING_DECL.to_owned(),
                counting.remove(set).unwrap_or_default(),
            ),
        );
    }
    bridge.chains.insert(
        "forward".to_owned(),
        vec!["arp operation request arp daddr ip @vips drop".to_owned()],
    );
    // The node announces a new VIP on its bridges (a client that asked before it was there
    // gets its answer then, not at its next ARP retry a second later), to its own ports only.
    let mut output = vec!["oifname \"vxlan-*\" arp daddr ip @vips drop".to_owned()];
    let uplinks: Vec<String> = node
        .physnets
        .values()
        .filter(|i| is_interface_name(i))
        .map(|i| format!("\"{i}\""))
        .collect();
    if !uplinks.is_empty() {
        output.push(format!(
            "oifname {{ {} }} arp daddr ip @vips drop",
            uplinks.join(", ")
        ));
    }
    bridge.chains.insert("output".to_owned(), output);
    bridge
        .sets
        .insert("vips".to_owned(), ("type ipv4_addr;".to_owned(), vips));
    Desired {
        inet,
        bridge,
        routing: surroundings.routing(view, &services),
        memo: Memo::new(surroundings, &services),
    }
}

/// What a node's load balancing was last computed from: the services it balances and how
/// many of them use each network, VIP and member address. A pass where only some listeners
/// changed redoes just their services with it ([`Memo::update`]), not every load balancer's.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Memo {
    /// The services balanced, by listener id.
    services: BTreeMap<String, Service>,
    /// What they were computed in.
    surroundings: Surroundings,
    /// Services by VIP network.
    networks: BTreeMap<String, usize>,
    /// Services by VIP.
    vips: BTreeMap<Ipv4Addr, usize>,
    /// Services by member address.
    backends: BTreeMap<Ipv4Addr, usize>,
    /// Services by key (`VIP . protocol . port`).
    keys: BTreeMap<String, usize>,
}

fn count<K: Ord + Clone>(map: &mut BTreeMap<K, usize>, key: &K, up: bool) {
    if up {
        *map.entry(key.clone()).or_default() += 1;
    } else if let Some(n) = map.get_mut(key) {
        *n -= 1;
        if *n == 0 {
            map.remove(key);
        }
    }
}

impl Memo {
    fn new(surroundings: Surroundings, services: &[&Service]) -> Memo {
        let mut memo = Memo {
            surroundings,
            ..Memo::default()
        };
        for s in services {
            memo.count(s, true);
            memo.services.insert(s.id.clone(), (*s).clone());
        }
        memo
    }

    fn count(&mut self, s: &Service, up: bool) {
        count(&mut self.networks, &s.network_id, up);
        count(&mut self.vips, &s.vip, up);
        count(&mut self.keys, &service_key(s.vip, s.protocol, s.port), up);
        for b in &s.backends {
            count(&mut self.backends, &b.address, up);
        }
    }

    /// The plan that redoes the services of the `changed` listeners over `have` (what the
    /// kernel holds as this memo was made or last updated), touching nothing else; the memo
    /// follows. `Err(have)`, the memo untouched, when that is not enough: the set of networks
    /// with balanced VIPs would change (so might the bridges that balance), or the tables are
    /// not there.
    pub fn update(
        &mut self,
        view: &NodeView,
        mut have: Observed,
        changed: &BTreeSet<String>,
    ) -> Result<Plan, Box<Observed>> {
        if !have.inet.exists || !have.bridge.exists {
            return Err(Box::new(have));
        }
        let redone: Vec<(String, Option<Service>)> = changed
            .iter()
            .map(|id| {
                let s =
                    service_of(view, id).filter(|s| self.surroundings.reached(view, &s.network_id));
                (id.clone(), s)
            })
            .filter(|(id, s)| self.services.get(id) != s.as_ref())
            .collect();
        let mut delta: BTreeMap<&str, isize> = BTreeMap::new();
        for (id, new) in &redone {
            if let Some(old) = self.services.get(id) {
                *delta.entry(&old.network_id).or_default() -= 1;
            }
            if let Some(new) = new {
                *delta.entry(&new.network_id).or_default() += 1;
            }
        }
        let had = |net: &str| self.networks.get(net).copied().unwrap_or(0) as isize;
        if delta
            .iter()
            .any(|(net, d)| (had(net) == 0) != (had(net) + d == 0))
        {
            return Err(Box::new(have));
        }

        // The parts of the tables and routing these services touch: as the kernel has them,
        // and as they become.
        let mut before = Observed::default();
        let mut inet = Table {
            family: "inet",
            name: TABLE,
            ..Table::default()
        };
        let mut bridge = Table {
            family: "bridge",
            name: TABLE,
            ..Table::default()
        };
        let mut after_routing = Routing::default();
        let mut addresses = BTreeSet::new();
        let mut vips = BTreeMap::new();
        let mut keys = BTreeSet::new();
        let mut announced = BTreeSet::new();
        let mut touched = |s: &Service, before: &mut Observed| {
            let parts = parts(s);
            for (chain, _) in &parts.chains {
                if let Some(version) = have.inet.chains.get(chain) {
                    before.inet.chains.insert(chain.clone(), version.clone());
                }
            }
            for (set, _) in &parts.sets {
                if let Some(elements) = have.inet.sets.get(set) {
                    before.inet.sets.insert(set.clone(), elements.clone());
                }
            }
            if let Some(target) = have
                .inet
                .maps
                .get("services")
                .and_then(|m| m.get(&parts.key))
            {
                before
                    .inet
                    .maps
                    .entry("services".to_owned())
                    .or_default()
                    .insert(parts.key.clone(), target.clone());
            }
            keys.insert(parts.key.clone());
            addresses.extend(s.backends.iter().map(|b| b.address));
            vips.insert(s.vip, s.network_id.clone());
            parts
        };
        for (id, new) in redone {
            if let Some(old) = self.services.remove(&id) {
                touched(&old, &mut before);
                self.count(&old, false);
            }
            if let Some(new) = new {
                let parts = touched(&new, &mut before);
                inet.maps
                    .entry("services".to_owned())
                    .or_default()
                    .insert(parts.key, service_chain(&new.id));
                inet.chains.extend(parts.chains);
                for (set, decl) in parts.sets {
                    inet.sets.insert(set, (decl, BTreeSet::new()));
                }
                if !new.backends.is_empty() {
                    announced.insert(new.vip);
                }
                self.count(&new, true);
                self.services.insert(id, new);
            }
        }
        // Only the touched elements of the shared sets: never the whole of them.
        let held = |set: Option<&BTreeSet<String>>, element: &String| {
            set.is_some_and(|s| s.contains(element))
        };
        before.inet.exists = true;
        for set in COUNTING {
            let have_set = have.inet.sets.get(set);
            before.inet.sets.insert(
                set.to_owned(),
                keys.iter().filter(|k| held(have_set, k)).cloned().collect(),
            );
            inet.sets.insert(
                set.to_owned(),
                (
                    COUNTING_DECL.to_owned(),
                    keys.iter()
                        .filter(|k| self.keys.contains_key(*k))
                        .cloned()
                        .collect(),
                ),
            );
        }
        before.inet.sets.insert(
            "hairpin".to_owned(),
            addresses
                .iter()
                .map(|a| hairpin_element(*a))
                .filter(|e| held(have.inet.sets.get("hairpin"), e))
                .collect(),
        );
        inet.sets.insert(
            "hairpin".to_owned(),
            (
                "type ipv4_addr . ipv4_addr;".to_owned(),
                addresses
                    .iter()
                    .filter(|a| self.backends.contains_key(a))
                    .map(|a| hairpin_element(*a))
                    .collect(),
            ),
        );
        before.bridge.exists = true;
        before.bridge.sets.insert(
            "vips".to_owned(),
            vips.keys()
                .map(Ipv4Addr::to_string)
                .filter(|v| held(have.bridge.sets.get("vips"), v))
                .collect(),
        );
        bridge.sets.insert(
            "vips".to_owned(),
            (
                "type ipv4_addr;".to_owned(),
                vips.keys()
                    .filter(|v| self.vips.contains_key(v))
                    .map(Ipv4Addr::to_string)
                    .collect(),
            ),
        );
        for (vip, net) in &vips {
            if !self.surroundings.balancing.contains(net) {
                continue;
            }
            let route = vip_route(view, net, *vip);
            if have.routing.routes.contains(&route) {
                before.routing.routes.insert(route.clone());
            }
            if self.vips.contains_key(vip) {
                after_routing.routes.insert(route);
            }
        }
        for address in &addresses {
            for tap in self.surroundings.taps.get(address).into_iter().flatten() {
                if have.routing.hairpin.contains(tap) {
                    before.routing.hairpin.insert(tap.clone());
                }
                if self.backends.contains_key(address) {
                    after_routing.hairpin.insert(tap.clone());
                }
            }
        }

        let plan = Plan {
            routing: after_routing.plan(&before.routing),
            tables: [
                inet.plan(&before.inet, INET_BASE),
                bridge.plan(&before.bridge, BRIDGE_BASE),
            ]
            .into_iter()
            .flatten()
            .collect(),
            after: Observed::default(),
            memo: None,
            announce: after_routing.local_vips(&announced),
        };
        have.inet.replace_part(&before.inet, &inet.as_observed());
        have.bridge
            .replace_part(&before.bridge, &bridge.as_observed());
        have.routing.replace_part(&before.routing, &after_routing);
        Ok(Plan {
            after: have,
            ..plan
        })
    }
}

/// The service of one listener, if it balances anything (see [`services`]).
fn service_of(view: &NodeView, listener_id: &str) -> Option<Service> {
    let b = &view.balancing;
    let listener = b.listeners.get(listener_id)?;
    let lb = b
        .load_balancers
        .values()
        .find(|lb| lb.listeners.iter().any(|l| l.id == listener_id))?;
    match lb.vip_address {
        IpAddr::V4(vip) if lb.admin_state_up => service(b, vip, &lb.vip_network_id, listener),
        _ => None,
    }
}

/// The local route that makes a VIP an address of its network's bridge table.
fn vip_route(view: &NodeView, network_id: &str, vip: Ipv4Addr) -> RouteEntry {
    RouteEntry {
        table: route_table(view, network_id),
        destination: Cidr::host(IpAddr::V4(vip)),
        kind: RouteKind::Local,
        device: Some(bridge_name(network_id)),
    }
}

impl Routing {
    /// The `ip -batch` lines turning `observed` into this (routes and neighbours replaced,
    /// what is no longer wanted deleted); empty when equal.
    pub fn plan(&self, observed: &Routing) -> Vec<String> {
        let mut lines = Vec::new();
        for n in self.neighbours.difference(&observed.neighbours) {
            lines.push(format!(
                "neigh replace {} lladdr {} dev {} nud permanent",
                n.ip, n.mac, n.device
            ));
        }
        for route in self.routes.difference(&observed.routes) {
            lines.push(format!("route replace {}", route_spec(route)));
        }
        for (device, table) in self.rules.difference(&observed.rules) {
            lines.push(format!(
                "rule add iif {device} lookup {table} priority {RULE_PRIORITY}"
            ));
        }
        for tap in self.hairpin.difference(&observed.hairpin) {
            lines.push(format!("link set dev {tap} type bridge_slave hairpin on"));
        }
        for tap in observed.hairpin.difference(&self.hairpin) {
            lines.push(format!("link set dev {tap} type bridge_slave hairpin off"));
        }
        for (device, table) in observed.rules.difference(&self.rules) {
            lines.push(format!(
                "rule del iif {device} lookup {table} priority {RULE_PRIORITY}"
            ));
        }
        for route in observed.routes.difference(&self.routes) {
            // A replaced route (same destination, other kind) is already gone.
            let replaced = self
                .routes
                .iter()
                .any(|r| r.table == route.table && r.destination == route.destination);
            if !replaced {
                lines.push(format!("route del {}", route_spec(route)));
            }
        }
        for n in observed.neighbours.difference(&self.neighbours) {
            let replaced = self
                .neighbours
                .iter()
                .any(|w| w.device == n.device && w.ip == n.ip);
            if !replaced {
                lines.push(format!("neigh del {} dev {}", n.ip, n.device));
            }
        }
        lines
    }

    /// Those of `vips` that are local addresses of a bridge here: (bridge, VIP).
    fn local_vips(&self, vips: &BTreeSet<Ipv4Addr>) -> Vec<(String, Ipv4Addr)> {
        self.routes
            .iter()
            .filter(|r| r.kind == RouteKind::Local)
            .filter(|r| matches!(r.destination.network, IpAddr::V4(v) if vips.contains(&v)))
            .filter_map(|r| match (&r.device, r.destination.network) {
                (Some(device), IpAddr::V4(vip)) => Some((device.clone(), vip)),
                _ => None,
            })
            .collect()
    }

    /// Replaces `old`, a part of this, with `new`.
    fn replace_part(&mut self, old: &Routing, new: &Routing) {
        fn swap<T: Ord + Clone>(set: &mut BTreeSet<T>, old: &BTreeSet<T>, new: &BTreeSet<T>) {
            for x in old {
                set.remove(x);
            }
            set.extend(new.iter().cloned());
        }
        swap(&mut self.rules, &old.rules, &new.rules);
        swap(&mut self.routes, &old.routes, &new.routes);
        swap(&mut self.neighbours, &old.neighbours, &new.neighbours);
        swap(&mut self.hairpin, &old.hairpin, &new.hairpin);
    }

    /// The bridges whose tables these are (they forward, without reverse-path filtering).
    pub fn bridges(&self) -> BTreeSet<&str> {
        self.rules.iter().map(|(d, _)| d.as_str()).collect()
    }
}

fn route_spec(r: &RouteEntry) -> String {
    let dest = if r.destination.prefix == 0 {
        "default".to_owned()
    } else {
        r.destination.to_string()
    };
    let dev = r.device.as_deref().unwrap_or_default();
    match &r.kind {
        RouteKind::Link => format!("table {} {dest} dev {dev} scope link", r.table),
        // `onlink`: the gateway's own subnet route may come later in the same batch.
        RouteKind::Via(gw) => format!("table {} {dest} via {gw} dev {dev} onlink", r.table),
        RouteKind::Local => format!("table {} local {dest} dev {dev}", r.table),
        RouteKind::Unreachable => format!("table {} unreachable {dest}", r.table),
    }
}

/// Whether a routing table number is one of a bridge's.
pub fn is_bridge_table(table: u32) -> bool {
    (VXLAN_TABLES..FLAT_TABLES + 0x0100_0000).contains(&table)
}

/// Reads the routing state back from `ip -j rule show`, `ip -j route show table all`,
/// `ip -j neigh show nud permanent` and `ip -j -d link show` (only what [`desired`] makes:
/// its rule priority, its tables, neighbours and hairpin ports on bridges).
pub fn parse_routing(rules: &Value, routes: &Value, neighbours: &Value, links: &Value) -> Routing {
    let mut r = Routing::default();
    let items = |v: &Value| v.as_array().cloned().unwrap_or_default();
    let table_of = |v: &Value| -> Option<u32> {
        match v {
            Value::Number(n) => n.as_u64().and_then(|n| u32::try_from(n).ok()),
            Value::String(s) => s.parse().ok(),
            _ => None,
        }
    };
    for rule in items(rules) {
        if rule["priority"].as_u64() != Some(u64::from(RULE_PRIORITY)) {
            continue;
        }
        if let (Some(iif), Some(table)) = (rule["iif"].as_str(), table_of(&rule["table"])) {
            r.rules.insert((iif.to_owned(), table));
        }
    }
    for route in items(routes) {
        let Some(table) = table_of(&route["table"]).filter(|t| is_bridge_table(*t)) else {
            continue;
        };
        let dst = route["dst"].as_str().unwrap_or_default();
        let destination = if dst == "default" {
            Cidr::default_v4()
        } else {
            match Cidr::parse_lenient(dst) {
                Some(c) => c,
                None => continue,
            }
        };
        let device = route["dev"].as_str().map(str::to_owned);
        let kind = match route["type"].as_str() {
            Some("local") => RouteKind::Local,
            Some("unreachable") => RouteKind::Unreachable,
            _ => match route["gateway"].as_str().and_then(|g| g.parse().ok()) {
                Some(gw) => RouteKind::Via(gw),
                None => RouteKind::Link,
            },
        };
        r.routes.insert(RouteEntry {
            table,
            destination,
            kind,
            device,
        });
    }
    let prefix = isthmus_model::network::BRIDGE_PREFIX;
    for n in items(neighbours) {
        let (Some(dev), Some(ip), Some(mac)) = (
            n["dev"].as_str(),
            n["dst"].as_str().and_then(|d| d.parse().ok()),
            n["lladdr"].as_str(),
        ) else {
            continue;
        };
        if dev.starts_with(prefix) {
            r.neighbours.insert(Neighbour {
                device: dev.to_owned(),
                ip,
                mac: mac.to_ascii_lowercase(),
            });
        }
    }
    for link in items(links) {
        let slave = &link["linkinfo"]["info_slave_data"];
        if slave["hairpin"].as_bool() == Some(true) {
            if let Some(name) = link["ifname"].as_str() {
                r.hairpin.insert(name.to_owned());
            }
        }
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn node() -> NodeConfig {
        NodeConfig {
            name: "n1".into(),
            tunnel_ip: "192.0.2.1".parse().unwrap(),
            physnets: BTreeMap::new(),
        }
    }

    fn add(view: &mut NodeView, kind: &str, object: Value) {
        view.apply(&json!({"type": "ADDED", "kind": kind, "object": object}))
            .unwrap();
    }

    fn port(id: &str, net: &str, ip: &str, host: &str, owner: &str, device: &str) -> Value {
        json!({"id": id, "network_id": net, "mac_address": "FA:16:3E:00:00:01",
               "fixed_ips": [{"subnet_id": format!("s-{net}"), "ip_address": ip}],
               "binding:host_id": host, "security_groups": [], "port_security_enabled": true,
               "status": "ACTIVE", "device_owner": owner, "device_id": device})
    }

    fn member(id: &str, ip: &str, weight: u16, backup: bool, status: &str) -> Value {
        json!({"id": id, "address": ip, "protocol_port": 8080, "weight": weight, "backup": backup,
               "admin_state_up": true, "operating_status": status})
    }

    /// Net a (10.0.0.0/24, the VIP's) and b (10.1.0.0/24) joined by router r; a client on b
    /// on this node, a member on a on this node.
    fn view() -> NodeView {
        let mut v = NodeView::default();
        for (net, vni, cidr) in [
            ("neta-000000", 7, "10.0.0.0/24"),
            ("netb-000000", 8, "10.1.0.0/24"),
        ] {
            add(
                &mut v,
                "network",
                json!({"id": net, "mtu": 1450, "provider:network_type": "vxlan",
                                          "provider:segmentation_id": vni, "provider:physical_network": null}),
            );
            add(
                &mut v,
                "subnet",
                json!({"id": format!("s-{net}"), "network_id": net, "cidr": cidr,
                                         "gateway_ip": null}),
            );
        }
        add(
            &mut v,
            "router",
            json!({"id": "r", "admin_state_up": true, "external_gateway_info": null}),
        );
        add(
            &mut v,
            "port",
            port("ra", "neta-000000", "10.0.0.1", "", OWNER_INTERFACE, "r"),
        );
        add(
            &mut v,
            "port",
            port("rb", "netb-000000", "10.1.0.1", "", OWNER_INTERFACE, "r"),
        );
        add(
            &mut v,
            "port",
            port(
                "client",
                "netb-000000",
                "10.1.0.5",
                "n1",
                "compute:nova",
                "",
            ),
        );
        add(
            &mut v,
            "port",
            port(
                "m1port",
                "neta-000000",
                "10.0.0.11",
                "n1",
                "compute:nova",
                "",
            ),
        );
        add(
            &mut v,
            "port",
            port("vip", "neta-000000", "10.0.0.50", "", "Octavia", "lb-1"),
        );
        add(
            &mut v,
            "loadbalancer",
            json!({"id": "lb", "vip_address": "10.0.0.50",
            "vip_network_id": "neta-000000", "admin_state_up": true, "listeners": [{"id": "listener-1"}]}),
        );
        add(
            &mut v,
            "listener",
            json!({"id": "listener-1", "protocol": "TCP", "protocol_port": 80,
            "admin_state_up": true, "default_pool_id": "pool", "connection_limit": -1,
            "allowed_cidrs": ["10.1.0.0/24"]}),
        );
        add(
            &mut v,
            "pool",
            json!({"id": "pool", "admin_state_up": true, "lb_algorithm": "ROUND_ROBIN",
            "session_persistence": null,
            "members": [{"id": "member-1"}, {"id": "member-2"}, {"id": "member-3"}, {"id": "member-4"}]}),
        );
        add(
            &mut v,
            "member",
            member("member-1", "10.0.0.11", 1, false, "NO_MONITOR"),
        );
        add(
            &mut v,
            "member",
            member("member-2", "10.0.0.12", 2, false, "ONLINE"),
        );
        add(
            &mut v,
            "member",
            member("member-3", "10.0.0.13", 1, false, "ERROR"),
        );
        add(
            &mut v,
            "member",
            member("member-4", "10.0.0.14", 1, true, "ONLINE"),
        );
        v
    }

    #[test]
    fn members_up_by_weight_backups_only_when_alone() {
        let mut v = view();
        let s = &services(&v)[0];
        let ids: Vec<&str> = s.backends.iter().map(|b| b.id.as_str()).collect();
        assert_eq!(ids, ["member-1", "member-2"]);
        assert_eq!(s.allowed.len(), 1);
        assert_eq!(s.connection_limit, None);
        for m in ["member-1", "member-2"] {
            add(&mut v, "member", member(m, "10.0.0.11", 1, false, "ERROR"));
        }
        let s = &services(&v)[0];
        let ids: Vec<&str> = s.backends.iter().map(|b| b.id.as_str()).collect();
        assert_eq!(ids, ["member-4"], "the backup takes over");
    }

    #[test]
    fn renders_the_service_chains_and_bridge_routing() {
        let d = desired(&view(), &node());
        let svc = &d.inet.chains[&service_chain("listener-1")];
        assert_eq!(svc[0], "ip saddr != { 10.1.0.0/24 } goto refuse");
        assert_eq!(
            svc[1],
            "meta l4proto tcp dnat ip to numgen inc mod 3 map { 0 : 10.0.0.11 . 8080, 1-2 : 10.0.0.12 . 8080 }"
        );
        assert!(
            !d.inet.chains.keys().any(|c| c.starts_with("be-")),
            "no member chains without persistence"
        );
        assert_eq!(
            d.inet.maps["services"]["10.0.0.50 . tcp . 80"],
            service_chain("listener-1")
        );
        assert!(d.inet.sets["hairpin"].1.contains("10.0.0.11 . 10.0.0.11"));
        // A new VIP's announcement stays off the tunnels.
        assert_eq!(
            d.bridge.chains["output"],
            ["oifname \"vxlan-*\" arp daddr ip @vips drop"]
        );
        // Its element in every counting set, under the same key.
        for set in COUNTING {
            assert!(d.inet.sets[set].1.contains("10.0.0.50 . tcp . 80"), "{set}");
        }
        // Both local networks balance: the client's (behind the router) and the member's.
        let ta = route_table(&view(), "neta-000000");
        let tb = route_table(&view(), "netb-000000");
        assert_eq!(ta, VXLAN_TABLES + 7);
        let routes: Vec<String> = d.routing.routes.iter().map(route_spec).collect();
        let bridge_b = bridge_name("netb-000000");
        assert!(routes.contains(&format!(
            "table {tb} 10.0.0.0/24 via 10.1.0.1 dev {bridge_b} onlink"
        )));
        assert!(routes.contains(&format!(
            "table {ta} local 10.0.0.50/32 dev {}",
            bridge_name("neta-000000")
        )));
        assert!(routes.contains(&format!("table {tb} unreachable default")));
        assert!(d.routing.hairpin.contains(&tap_name("m1port")));
        assert!(d
            .routing
            .neighbours
            .iter()
            .all(|n| n.ip.to_string() != "10.0.0.50" && n.mac == "fa:16:3e:00:00:01"));
    }

    #[test]
    fn persistence_and_source_hashing() {
        let mut v = view();
        add(
            &mut v,
            "pool",
            json!({"id": "pool", "admin_state_up": true, "lb_algorithm": "SOURCE_IP_PORT",
            "session_persistence": {"type": "SOURCE_IP", "persistence_timeout": 60},
            "members": [{"id": "member-1"}]}),
        );
        let d = desired(&v, &node());
        let svc = &d.inet.chains[&service_chain("listener-1")];
        assert_eq!(
            svc[1],
            "ip saddr @aff-listener-1-member-1 goto be-listener-1-member-1"
        );
        assert_eq!(
            svc[2],
            "meta l4proto tcp jhash ip saddr . th sport mod 1 vmap { 0 : goto be-listener-1-member-1 }"
        );
        assert_eq!(
            d.inet.chains["be-listener-1-member-1"],
            [
                "update @aff-listener-1-member-1 { ip saddr }",
                "meta l4proto tcp dnat ip to 10.0.0.11:8080"
            ]
        );
        assert!(d.inet.sets["aff-listener-1-member-1"]
            .0
            .contains("timeout 60s"));
        // The kernel fills persistence sets: a plan never touches their elements.
        let mut observed = d.inet.as_observed();
        observed
            .sets
            .get_mut("aff-listener-1-member-1")
            .unwrap()
            .insert("10.1.0.5".into());
        assert_eq!(d.inet.plan(&observed, INET_BASE), None);
    }

    #[test]
    fn probes_members_hosted_here_from_the_dhcp_namespace() {
        let mut v = view();
        add(
            &mut v,
            "pool",
            json!({"id": "pool", "admin_state_up": true, "lb_algorithm": "ROUND_ROBIN",
            "session_persistence": null, "healthmonitor_id": "hm",
            "members": [{"id": "member-1"}, {"id": "member-2"}]}),
        );
        add(
            &mut v,
            "healthmonitor",
            json!({"id": "hm", "type": "HTTP", "admin_state_up": true,
            "delay": 2, "timeout": 1, "max_retries": 2, "max_retries_down": 3,
            "url_path": "/up", "expected_codes": "200-204"}),
        );
        // No DHCP port on the member's network: nowhere to probe from.
        assert!(probes(&v, &node()).is_empty());
        let dhcp = isthmus_model::port::dhcp_port_id("neta-000000");
        add(
            &mut v,
            "port",
            port(&dhcp, "neta-000000", "10.0.0.2", "", "network:dhcp", "dhcp"),
        );
        let p = probes(&v, &node());
        assert_eq!(p.len(), 1, "member-2 is not hosted here: {p:?}");
        assert_eq!(p[0].member_id, "member-1");
        assert_eq!(p[0].namespace, crate::dhcp::namespace_name("neta-000000"));
        assert_eq!(p[0].target.to_string(), "10.0.0.11:8080");
        assert_eq!((p[0].rise, p[0].fall, p[0].delay), (2, 3, 2));
        assert!(matches!(&p[0].kind, ProbeKind::Http { path, .. } if path == "/up"));
    }

    #[test]
    fn no_reachable_vip_no_tables() {
        let mut v = view();
        v.apply(&json!({"type": "DELETED", "kind": "loadbalancer", "id": "lb"}))
            .unwrap();
        let d = desired(&v, &node());
        assert!(d.inet.absent && d.bridge.absent);
        assert_eq!(d.routing, Routing::default());
    }

    #[test]
    fn routing_plans_by_difference_and_reads_back() {
        let want = desired(&view(), &node()).routing;
        let all = want.plan(&Routing::default());
        assert!(all
            .iter()
            .any(|l| l.starts_with("rule add iif brqneta-000000 lookup")));
        assert!(all
            .iter()
            .any(|l| l.starts_with("neigh replace 10.0.0.11 lladdr fa:16:3e:00:00:01")));
        assert!(all
            .iter()
            .any(|l| l.starts_with("link set dev tapm1port type bridge_slave hairpin on")));
        assert!(want.plan(&want).is_empty());
        // What `ip -j` prints for that state reads back as equal.
        let tb = route_table(&view(), "netb-000000");
        let ta = route_table(&view(), "neta-000000");
        let rules: Value = want
            .rules
            .iter()
            .map(|(d, t)| json!({"priority": RULE_PRIORITY, "iif": d, "table": t.to_string()}))
            .collect();
        let routes: Value = want
            .routes
            .iter()
            .map(|r| {
                let dst = if r.destination.prefix == 0 {
                    "default".to_owned()
                } else if r.destination.prefix == 32 {
                    r.destination.network.to_string()
                } else {
                    r.destination.to_string()
                };
                let mut o = json!({"dst": dst, "table": r.table.to_string()});
                if let Some(d) = &r.device {
                    o["dev"] = json!(d);
                }
                match &r.kind {
                    RouteKind::Local => o["type"] = json!("local"),
                    RouteKind::Unreachable => o["type"] = json!("unreachable"),
                    RouteKind::Via(gw) => o["gateway"] = json!(gw.to_string()),
                    RouteKind::Link => {}
                }
                o
            })
            .chain([json!({"dst": "10.9.0.0/24", "dev": "eth0", "table": "main"})])
            .collect();
        let neighbours: Value = want
            .neighbours
            .iter()
            .map(|n| json!({"dst": n.ip.to_string(), "dev": n.device, "lladdr": n.mac}))
            .collect();
        let links = json!([{"ifname": "tapm1port", "linkinfo": {"info_slave_data": {"hairpin": true}}},
                           {"ifname": "tapclient", "linkinfo": {"info_slave_data": {"hairpin": false}}}]);
        let read = parse_routing(&rules, &routes, &neighbours, &links);
        assert_eq!(read, want, "tables {ta} {tb}");
        // A VIP gone: its local route goes, nothing else moves.
        let mut less = want.clone();
        less.routes.retain(|r| r.kind != RouteKind::Local);
        let lines = less.plan(&want);
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(lines[0].starts_with("route del table"), "{lines:?}");
    }

    /// The full plan's lines and the incremental one's, sorted (their order within a
    /// transaction may differ).
    fn lines(plan: &Plan) -> Vec<String> {
        let mut out: Vec<String> = plan.routing.clone();
        for t in &plan.tables {
            out.extend(t.to_string().lines().map(str::to_owned));
        }
        out.sort();
        out
    }

    #[test]
    fn a_pass_over_changed_listeners_plans_what_a_whole_one_does() {
        let mut v = view();
        let n = node();
        // Ten more load balancers on net a, one with persistence; a local port is a member.
        for i in 0..10 {
            add(
                &mut v,
                "loadbalancer",
                json!({"id": format!("lb{i}"),
                "vip_address": format!("10.0.0.{}", 60 + i), "vip_network_id": "neta-000000",
                "admin_state_up": true, "listeners": [{"id": format!("l{i}")}]}),
            );
            add(
                &mut v,
                "listener",
                json!({"id": format!("l{i}"), "protocol": "TCP",
                "protocol_port": 80, "admin_state_up": true, "default_pool_id": format!("p{i}"),
                "connection_limit": -1, "allowed_cidrs": []}),
            );
            let persistence =
                (i == 3).then(|| json!({"type": "SOURCE_IP", "persistence_timeout": 60}));
            add(
                &mut v,
                "pool",
                json!({"id": format!("p{i}"), "admin_state_up": true,
                "lb_algorithm": "ROUND_ROBIN", "session_persistence": persistence,
                "members": [{"id": format!("m{i}a")}, {"id": format!("m{i}b")}]}),
            );
            add(
                &mut v,
                "member",
                member(&format!("m{i}a"), "10.0.0.21", 1, false, "NO_MONITOR"),
            );
            add(
                &mut v,
                "member",
                member(
                    &format!("m{i}b"),
                    &format!("10.0.0.{}", 30 + i),
                    1,
                    false,
                    "NO_MONITOR",
                ),
            );
        }
        let full = desired(&v, &n);
        let mut have = full.plan(&Observed::default()).after;
        let mut memo = full.memo;
        v.balancing.changed.clear();
        let delete = |v: &mut NodeView, kind: &str, id: &str| {
            v.apply(&json!({"type": "DELETED", "kind": kind, "id": id}))
                .unwrap();
        };
        type Step<'a> = Box<dyn Fn(&mut NodeView) + 'a>;
        let steps: Vec<(&str, Step)> = vec![
            (
                "a member added",
                Box::new(|v| {
                    add(
                        v,
                        "member",
                        member("m0c", "10.0.0.11", 3, false, "NO_MONITOR"),
                    );
                    add(
                        v,
                        "pool",
                        json!({"id": "p0", "admin_state_up": true, "lb_algorithm": "ROUND_ROBIN",
                    "session_persistence": null, "members": [{"id": "m0a"}, {"id": "m0b"}, {"id": "m0c"}]}),
                    );
                }),
            ),
            (
                "a member of a local port goes to ERROR",
                Box::new(|v| {
                    add(v, "member", member("m0c", "10.0.0.11", 3, false, "ERROR"));
                }),
            ),
            (
                "a persistent pool's member removed",
                Box::new(move |v| {
                    add(
                        v,
                        "pool",
                        json!({"id": "p3", "admin_state_up": true, "lb_algorithm": "ROUND_ROBIN",
                    "session_persistence": {"type": "SOURCE_IP", "persistence_timeout": 60},
                    "members": [{"id": "m3a"}]}),
                    );
                    delete(v, "member", "m3b");
                }),
            ),
            (
                "a listener disabled",
                Box::new(|v| {
                    add(
                        v,
                        "listener",
                        json!({"id": "l5", "protocol": "TCP", "protocol_port": 80,
                    "admin_state_up": false, "default_pool_id": "p5", "connection_limit": -1,
                    "allowed_cidrs": []}),
                    );
                }),
            ),
            (
                "a load balancer deleted",
                Box::new(move |v| {
                    delete(v, "loadbalancer", "lb6");
                    delete(v, "listener", "l6");
                    delete(v, "pool", "p6");
                }),
            ),
            (
                "a load balancer added",
                Box::new(|v| {
                    add(
                        v,
                        "loadbalancer",
                        json!({"id": "lbx", "vip_address": "10.0.0.99",
                    "vip_network_id": "neta-000000", "admin_state_up": true,
                    "listeners": [{"id": "lx"}, {"id": "ly"}]}),
                    );
                    add(
                        v,
                        "listener",
                        json!({"id": "lx", "protocol": "UDP", "protocol_port": 53,
                    "admin_state_up": true, "default_pool_id": "p1", "connection_limit": 10,
                    "allowed_cidrs": ["10.1.0.0/24"]}),
                    );
                    add(
                        v,
                        "listener",
                        json!({"id": "ly", "protocol": "TCP", "protocol_port": 53,
                    "admin_state_up": true, "default_pool_id": null, "connection_limit": -1,
                    "allowed_cidrs": []}),
                    );
                }),
            ),
            (
                "the only member of a local address removed",
                Box::new(|v| {
                    add(
                        v,
                        "pool",
                        json!({"id": "p0", "admin_state_up": true, "lb_algorithm": "SOURCE_IP",
                    "session_persistence": null, "members": [{"id": "m0a"}, {"id": "m0b"}]}),
                    );
                    delete(v, "member", "m0c");
                }),
            ),
        ];
        for (what, step) in steps {
            step(&mut v);
            let changed = std::mem::take(&mut v.balancing.changed);
            assert!(!changed.is_empty(), "{what}: nothing marked changed");
            let whole = desired(&v, &n);
            let expected = whole.plan(&have);
            let plan = memo
                .update(&v, have, &changed)
                .unwrap_or_else(|_| panic!("{what}: fell back"));
            assert!(!plan.tables.is_empty(), "{what}: nothing planned");
            assert_eq!(lines(&plan), lines(&expected), "{what}");
            assert_eq!(plan.after, expected.after, "{what}");
            assert_eq!(plan.announce, expected.announce, "{what}");
            if what == "a load balancer added" {
                let vip: Ipv4Addr = "10.0.0.99".parse().unwrap();
                assert_eq!(plan.announce, [(bridge_name("neta-000000"), vip)]);
            }
            assert_eq!(memo, whole.memo, "{what}");
            have = plan.after;
        }

        // A VIP on a network no balanced VIP was on: the bridges that balance may change.
        add(
            &mut v,
            "network",
            json!({"id": "netc-000000", "mtu": 1450,
            "provider:network_type": "vxlan", "provider:segmentation_id": 12,
            "provider:physical_network": null}),
        );
        let before = memo.clone();
        add(
            &mut v,
            "loadbalancer",
            json!({"id": "lbc", "vip_address": "10.1.0.77",
            "vip_network_id": "netb-000000", "admin_state_up": true, "listeners": [{"id": "lc"}]}),
        );
        add(
            &mut v,
            "listener",
            json!({"id": "lc", "protocol": "TCP", "protocol_port": 80,
            "admin_state_up": true, "default_pool_id": "p1", "connection_limit": -1,
            "allowed_cidrs": []}),
        );
        let changed = std::mem::take(&mut v.balancing.changed);
        assert!(memo.update(&v, have.clone(), &changed).is_err());
        assert_eq!(memo, before, "a fallen-back update changes nothing");
    }

    #[test]
    fn a_full_pass_redoes_only_changed_listeners_while_the_surroundings_hold() {
        let mut v = view();
        let n = node();
        let first = pass(&v, &n, Observed::default(), None, &BTreeSet::new());
        let mut have = first.after;
        let mut memo = first.memo;
        v.balancing.changed.clear();
        let lb = |v: &mut NodeView, id: &str, vip: &str, address: &str| {
            add(
                v,
                "loadbalancer",
                json!({"id": id, "vip_address": vip, "vip_network_id": "neta-000000",
                "admin_state_up": true, "listeners": [{"id": format!("l-{id}")}]}),
            );
            add(
                v,
                "listener",
                json!({"id": format!("l-{id}"), "protocol": "TCP", "protocol_port": 80,
                "admin_state_up": true, "default_pool_id": format!("p-{id}"),
                "connection_limit": -1, "allowed_cidrs": []}),
            );
            add(
                v,
                "pool",
                json!({"id": format!("p-{id}"), "admin_state_up": true,
                "lb_algorithm": "ROUND_ROBIN", "session_persistence": null,
                "members": [{"id": format!("m-{id}")}]}),
            );
            add(
                v,
                "member",
                member(&format!("m-{id}"), address, 1, false, "NO_MONITOR"),
            );
        };
        type Step = Box<dyn Fn(&mut NodeView)>;
        let steps: Vec<(&str, bool, Step)> = vec![
            (
                // A Service's VIP port and tree in one batch: nothing it does not own moved.
                "a VIP port and its load balancer",
                true,
                Box::new(move |v| {
                    add(
                        v,
                        "port",
                        port("vip2", "neta-000000", "10.0.0.51", "", "Octavia", "lb-2"),
                    );
                    lb(v, "lb2", "10.0.0.51", "10.0.0.11");
                }),
            ),
            (
                // A local port on a balancing network: a neighbour, and a member's tap.
                "a local member port with its load balancer",
                false,
                Box::new(move |v| {
                    add(
                        v,
                        "port",
                        port(
                            "m3port",
                            "neta-000000",
                            "10.0.0.33",
                            "n1",
                            "compute:nova",
                            "",
                        ),
                    );
                    lb(v, "lb3", "10.0.0.52", "10.0.0.33");
                }),
            ),
            (
                "a remote port on a network that does not balance",
                true,
                Box::new(|v| {
                    add(
                        v,
                        "network",
                        json!({"id": "netz-000000", "mtu": 1450,
                        "provider:network_type": "vxlan", "provider:segmentation_id": 30,
                        "provider:physical_network": null}),
                    );
                    add(
                        v,
                        "port",
                        port("far", "netz-000000", "10.9.0.5", "n2", "compute:nova", ""),
                    );
                }),
            ),
        ];
        for (what, incremental, step) in steps {
            step(&mut v);
            let changed = std::mem::take(&mut v.balancing.changed);
            let whole = desired(&v, &n);
            let expected = whole.plan(&have);
            let kept = memo.clone().map(|m| m.surroundings);
            let plan = pass(&v, &n, have, memo, &changed);
            assert_eq!(lines(&plan), lines(&expected), "{what}");
            assert_eq!(plan.after, expected.after, "{what}");
            assert_eq!(plan.announce, expected.announce, "{what}");
            assert_eq!(plan.memo.as_ref(), Some(&whole.memo), "{what}");
            assert_eq!(
                kept == plan.memo.as_ref().map(|m| m.surroundings.clone()),
                incremental,
                "{what}: surroundings"
            );
            have = plan.after;
            memo = plan.memo;
        }
    }

    #[test]
    fn stats_come_from_the_listeners_counters_and_open_translated_connections() {
        let v = view();
        let counted = |set: &str, packets: u64, bytes: u64| {
            json!({"set": {"name": set, "elem": [
                {"elem": {"val": {"concat": ["10.0.0.99", "tcp", 80]},
                          "counter": {"packets": 99, "bytes": 99}}},
                {"elem": {"val": {"concat": ["10.0.0.50", "tcp", 80]},
                          "counter": {"packets": packets, "bytes": bytes}}},
            ]}})
        };
        let counters = json!({"nftables": [
            counted("bytes_in", 10, 1000),
            counted("bytes_out", 8, 4000),
            counted("connections", 3, 180),
            counted("refusals", 1, 60),
            {"set": {"name": "hairpin", "elem": ["10.0.0.11 . 10.0.0.11"]}},
        ]});
        let conntrack = "\
ipv4     2 tcp      6 431999 ESTABLISHED src=10.1.0.5 dst=10.0.0.50 sport=40000 dport=80 src=10.0.0.11 dst=10.1.0.5 sport=8080 dport=40000 [ASSURED] mark=0 zone=0 use=2
ipv4     2 tcp      6 119 TIME_WAIT src=10.1.0.5 dst=10.0.0.50 sport=40001 dport=80 src=10.0.0.12 dst=10.1.0.5 sport=8080 dport=40001 [ASSURED] mark=0 zone=0 use=2
ipv4     2 tcp      6 431999 ESTABLISHED src=10.1.0.5 dst=10.0.0.11 sport=40002 dport=80 src=10.0.0.11 dst=10.1.0.5 sport=80 dport=40002 [ASSURED] mark=0 zone=0 use=2
ipv6     10 tcp      6 431999 ESTABLISHED src=fd00::1 dst=fd00::2 sport=1 dport=80 src=fd00::2 dst=fd00::1 sport=80 dport=1 mark=0 zone=0 use=2
";
        let stats = listener_stats(&services(&v), &counters, conntrack);
        assert_eq!(
            stats["listener-1"],
            Stats {
                bytes_in: 1000,
                bytes_out: 4000,
                active_connections: 1,
                total_connections: 3,
                request_errors: 1,
            },
            "one established connection was translated; TIME_WAIT and direct ones are not open"
        );
        assert!(listener_stats(&services(&v), &json!({"nftables": []}), conntrack).is_empty());
    }

    #[test]
    fn vip_announcements_stay_off_the_uplinks_and_names_are_checked() {
        let mut n = node();
        n.physnets.insert("public".into(), "eth1".into());
        n.physnets.insert("odd".into(), "x\"; flush".into());
        let d = desired(&view(), &n);
        assert_eq!(
            d.bridge.chains["output"],
            [
                "oifname \"vxlan-*\" arp daddr ip @vips drop",
                "oifname { \"eth1\" } arp daddr ip @vips drop"
            ]
        );
    }
}
