//! Port security on a node, per DESIGN §5 (the two-table design verified on these machines):
//!
//! - `table bridge isthmus` sees the port: a frame from a port's tap goes to `from_<tap>`
//!   (anti-spoofing: source MAC, ARP sender, IPv4/IPv6 source must be the port's own or an
//!   allowed address pair; DHCP client allowed) which ORs the port's id into the low 16 bits
//!   of the packet mark; a frame to a port's tap ORs the id into the high 16 bits (`to_<tap>`).
//! - `table inet isthmus` sees bridged IP traffic through br_netfilter with conntrack; its
//!   forward chain accepts established traffic, then dispatches on the mark halves to the
//!   ports' stateful `egress_<tap>` and `ingress_<tap>` chains: invalid dropped, then the
//!   rules of the port's security groups, then drop. Remote groups are named sets of member
//!   addresses. A conntrack zone per network; the node's own VXLAN packets are not tracked.
//!
//! Every packet crosses these hooks, so the common case is decided first: IPv4 from a port's
//! own MAC and address in the first rule of its chain, established traffic in the first rule of the
//! forward chain (`bench/dataplane.sh` compares the cost with raw VXLAN and with conntrack
//! alone). Ports with port security off get no chains and pass everything; a node without a
//! guarded port has neither table, so no packet crosses a hook of ours and conntrack stays off
//! (and only bridges with a guarded port hand their traffic to the inet hooks, see
//! [`crate::l2`]). Both tables are diffed (see [`crate::nft`]): unchanged chains, elements and
//! set members are left alone, so established connections survive rule changes and agent
//! restarts.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use isthmus_model::addr::{compact, Cidr, IpVersion};
use isthmus_model::port::TAP_PREFIX;

use crate::dhcp::{CLIENT_PORT as DHCP_CLIENT_PORT, SERVER_PORT as DHCP_SERVER_PORT};
use isthmus_model::security_group::protocol_number;

use crate::nft::{Observed, Table};
use crate::node::{bridge_name, guarded_ports, NodeConfig};
use crate::view::{Direction, NodeView, Port, SecurityGroupRule};

/// Both tables' name.
pub const TABLE: &str = "isthmus";
/// Base chains of the bridge table.
pub const BRIDGE_BASE: &[&str] = &["prerouting", "forward"];
/// Base chains of the inet table.
pub const INET_BASE: &[&str] = &["prerouting", "output", "forward"];

const BRIDGE_SKELETON: &str = "  map port_in {\n    type ifname : verdict\n  }\n  map port_out {\n    type ifname : verdict\n  }\n  chain prerouting {\n    type filter hook prerouting priority -200; policy accept;\n  }\n  chain forward {\n    type filter hook forward priority -100; policy accept;\n  }\n";
const INET_SKELETON: &str = "  map egress {\n    type mark : verdict\n  }\n  map ingress {\n    type mark : verdict\n  }\n  chain prerouting {\n    type filter hook prerouting priority raw; policy accept;\n  }\n  chain output {\n    type filter hook output priority raw; policy accept;\n  }\n  chain forward {\n    type filter hook forward priority filter; policy accept;\n  }\n";

/// Mark bit a group's egress rule sets when it allows a packet (port ids stay below it).
const EGRESS_ALLOWED: u32 = 0x8000;
/// Highest port id: ids fill the mark's low 15 bits (and the same 15 of the high half).
const MAX_PORT_ID: u16 = 0x7fff;

/// Bridge-table set of the MACs of ports in stateless groups (frames to them are not
/// tracked).
const UNTRACKED_SET: &str = "untracked";

/// Whether `port`'s security groups are stateless (`stateful: false`; the API refuses a port
/// mixing both kinds).
fn is_stateless(view: &NodeView, port: &Port) -> bool {
    let mut groups = port
        .security_groups
        .iter()
        .filter_map(|g| view.security_groups.get(g))
        .peekable();
    groups.peek().is_some() && groups.all(|g| !g.stateful)
}

/// The egress and ingress chains of a security group.
pub fn group_chains(group_id: &str) -> (String, String) {
    let id = group_id.replace('-', "");
    (format!("sge_{id}"), format!("sgi_{id}"))
}

/// Neighbour discovery must pass whatever the groups say (as in Neutron): the inet table's
/// set of these ICMPv6 types.
const ND_TYPES: &str = "nd_types";
/// The bridge table's set of DHCPv4 server-to-client and client-to-server port pairs (see
/// [`from_port_rules`]).
const DHCP4_GUARD: &str = "dhcp4_guard";
/// The same for DHCPv6.
const DHCP6_GUARD: &str = "dhcp6_guard";

/// The named sets every guarded node's tables hold. Every port chain used to carry these as
/// anonymous sets of its own, and each anonymous set is a kernel object that nft reads back
/// before every transaction and the kernel names by scanning all others: at 200 pods they
/// made most of each transaction's time, growing with every pod.
fn constant_sets(bridge: &mut Table, inet: &mut Table) {
    let pairs = |server: u16, client: u16| {
        let pairs = [
            format!("{server} . {client}"),
            format!("{client} . {server}"),
        ];
        (
            "type inet_service . inet_service;".to_owned(),
            BTreeSet::from(pairs),
        )
    };
    bridge.sets.insert(
        DHCP4_GUARD.to_owned(),
        pairs(DHCP_SERVER_PORT, DHCP_CLIENT_PORT),
    );
    bridge.sets.insert(
        DHCP6_GUARD.to_owned(),
        pairs(crate::dhcp6::SERVER_PORT, crate::dhcp6::CLIENT_PORT),
    );
    let nd = [
        "nd-router-solicit",
        "nd-router-advert",
        "nd-neighbor-solicit",
        "nd-neighbor-advert",
        "mld-listener-query",
        "mld-listener-report",
        "mld2-listener-report",
    ];
    inet.sets.insert(
        ND_TYPES.to_owned(),
        (
            "type icmpv6_type;".to_owned(),
            nd.into_iter().map(str::to_owned).collect(),
        ),
    );
}

/// Up to this many values a port's "none of" test is written as plain comparisons, not as an
/// anonymous set (see [`constant_sets`] for why sets per port cost).
const INLINE_MAX: usize = 4;

/// A match of `selector` against any of `items`: a plain comparison for one item.
fn any_of(selector: &str, items: &BTreeSet<String>) -> String {
    if items.len() == 1 {
        format!("{selector} {}", set_items(items))
    } else {
        format!("{selector} {}", set(items))
    }
}

/// A match of `selector` against none of `items`: plain comparisons for a few items.
fn none_of(selector: &str, items: &BTreeSet<String>) -> String {
    if items.len() <= INLINE_MAX {
        items
            .iter()
            .map(|i| format!("{selector} != {i}"))
            .collect::<Vec<_>>()
            .join(" ")
    } else {
        format!("{selector} != {}", set(items))
    }
}

fn set_items(items: &BTreeSet<String>) -> String {
    items.iter().cloned().collect::<Vec<_>>().join(", ")
}

/// The two tables a node should have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter {
    /// `table bridge isthmus`.
    pub bridge: Table,
    /// `table inet isthmus`.
    pub inet: Table,
}

fn set(items: &BTreeSet<String>) -> String {
    format!("{{ {} }}", set_items(items))
}

/// The taps whose DHCP requests the node's own DHCP answers (see [`crate::dhcp`]), by
/// family: read on the tap, they need not travel further.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DhcpServed {
    /// Taps with a DHCPv4 lease.
    pub v4: BTreeSet<String>,
    /// Taps with a DHCPv6 lease.
    pub v6: BTreeSet<String>,
}

/// Whether one port's DHCPv4 and DHCPv6 are served by the node.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Served {
    v4: bool,
    v6: bool,
}

/// The chain of frames from a port: anti-spoofing from its MACs and addresses (addresses or
/// prefixes), then `mark` (the statement tagging what passes). IPv4 from the port's own MAC
/// and addresses, nearly every frame, is decided by the second rule.
fn from_port_rules(
    macs: &BTreeSet<String>,
    v4: &BTreeSet<String>,
    v6: &BTreeSet<String>,
    mark: &str,
    served: Served,
) -> Vec<String> {
    // Only the network's DHCP port serves DHCP and only routers advertise: an instance
    // answering as a DHCP server (v4 or v6) or sending router advertisements is dropped, as
    // Neutron's firewall does. A port the node's DHCP serves has its requests answered from
    // its tap before the bridge sees them: they are dropped too (one rule, one set lookup),
    // so they flood neither the network nor its tunnels. The IPv4 guard comes before the
    // rule accepting the port's own IPv4, the IPv6 ones before IPv6 is accepted.
    let (s4, c4) = (DHCP_SERVER_PORT, DHCP_CLIENT_PORT);
    let mut rules = vec![if served.v4 {
        format!("ether type ip udp sport . udp dport @{DHCP4_GUARD} counter drop")
    } else {
        format!("ether type ip udp sport {s4} udp dport {c4} counter drop")
    }];
    if !v4.is_empty() {
        rules.push(format!(
            "{} {} {mark} accept",
            any_of("ether saddr", macs),
            any_of("ip saddr", v4)
        ));
    }
    rules.push(format!("{} counter drop", none_of("ether saddr", macs)));
    rules.push(format!(
        "ether type arp {} counter drop",
        none_of("arp saddr ether", macs)
    ));
    // ARP probes (duplicate address detection) use sender 0.0.0.0.
    let mut arp_ips = v4.clone();
    arp_ips.insert("0.0.0.0".to_owned());
    rules.push(format!(
        "ether type arp {} counter drop",
        none_of("arp saddr ip", &arp_ips)
    ));
    rules.push(
        format!("ether type ip ip saddr 0.0.0.0 ip daddr 255.255.255.255 udp sport {DHCP_CLIENT_PORT} udp dport {DHCP_SERVER_PORT} accept"),
    );
    rules.push("ether type ip counter drop".to_owned());
    // Link-local (neighbour discovery) and the unspecified address (DAD) are always allowed.
    let mut v6 = v6.clone();
    v6.insert("fe80::/10".to_owned());
    v6.insert("::".to_owned());
    rules.push(format!(
        "ether type ip6 {} counter drop",
        none_of("ip6 saddr", &v6)
    ));
    let (s6, c6) = (crate::dhcp6::SERVER_PORT, crate::dhcp6::CLIENT_PORT);
    rules.push(if served.v6 {
        format!("ether type ip6 udp sport . udp dport @{DHCP6_GUARD} counter drop")
    } else {
        format!("ether type ip6 udp sport {s6} udp dport {c6} counter drop")
    });
    rules.push("ether type ip6 icmpv6 type nd-router-advert counter drop".to_owned());
    rules.push(mark.to_owned());
    rules
}

/// A port's addresses, v4 and v6, fixed and allowed pairs.
fn addresses(port: &Port) -> (BTreeSet<String>, BTreeSet<String>) {
    let (mut v4, mut v6) = (BTreeSet::new(), BTreeSet::new());
    for ip in &port.fixed_ips {
        match ip.ip_address {
            IpAddr::V4(a) => v4.insert(a.to_string()),
            IpAddr::V6(a) => v6.insert(a.to_string()),
        };
    }
    for pair in &port.allowed_address_pairs {
        if pair.ip_address.contains(':') {
            v6.insert(pair.ip_address.clone());
        } else {
            v4.insert(pair.ip_address.clone());
        }
    }
    (v4, v6)
}

/// Name of a remote group's address set.
pub fn group_set(group_id: &str, v6: bool) -> String {
    format!("rg{}_{}", if v6 { 6 } else { 4 }, group_id.replace('-', ""))
}

/// One group rule as nft match expressions, or `None` for a rule nft cannot express here.
fn rule_match(rule: &SecurityGroupRule) -> Option<(bool, String)> {
    let ingress = rule.direction == Direction::Ingress;
    let v6 = rule.is_v6();
    let mut parts = vec![format!("meta nfproto {}", if v6 { "ipv6" } else { "ipv4" })];
    let (min, max) = (rule.port_range_min, rule.port_range_max);
    if let Some(proto) = rule.protocol.as_deref() {
        let number = protocol_number(proto)?;
        match number {
            1 | 58 => {
                let (l4, field) = if v6 || number == 58 {
                    ("ipv6-icmp", "icmpv6")
                } else {
                    ("icmp", "icmp")
                };
                parts.push(format!("meta l4proto {l4}"));
                if let Some(t) = min {
                    parts.push(format!("{field} type {t}"));
                    if let Some(c) = max {
                        parts.push(format!("{field} code {c}"));
                    }
                }
            }
            n => {
                parts.push(format!("meta l4proto {n}"));
                match (min, max) {
                    (Some(a), Some(b)) if a == b => parts.push(format!("th dport {a}")),
                    (Some(a), Some(b)) => parts.push(format!("th dport {a}-{b}")),
                    (Some(a), None) | (None, Some(a)) => parts.push(format!("th dport {a}")),
                    (None, None) => {}
                }
            }
        }
    }
    let (family, side) = (
        if v6 { "ip6" } else { "ip" },
        if ingress { "saddr" } else { "daddr" },
    );
    if let Some(prefix) = &rule.remote_ip_prefix {
        parts.push(format!("{family} {side} {prefix}"));
    }
    if let Some(group) = &rule.remote_group_id {
        parts.push(format!("{family} {side} @{}", group_set(group, v6)));
    }
    if let Some(group) = &rule.remote_address_group_id {
        parts.push(format!("{family} {side} @{}", address_set(group, v6)));
    }
    Some((ingress, parts.join(" ")))
}

/// Name of an address group's set.
pub fn address_set(group_id: &str, v6: bool) -> String {
    format!("ag{}_{}", if v6 { 6 } else { 4 }, group_id.replace('-', ""))
}

/// An address group's prefixes from the view, v4 and v6 (empty until it arrives), merged
/// where they overlap (an interval set refuses overlapping elements).
fn address_group_members(view: &NodeView, group_id: &str) -> (BTreeSet<String>, BTreeSet<String>) {
    let prefixes: &[Cidr] = view
        .address_groups
        .get(group_id)
        .map_or(&[], |g| &g.addresses);
    let family = |version: IpVersion| -> BTreeSet<String> {
        let of_family: Vec<Cidr> = prefixes
            .iter()
            .copied()
            .filter(|p| p.version() == version)
            .collect();
        compact(version, &of_family)
            .iter()
            .map(Cidr::to_string)
            .collect()
    };
    (family(IpVersion::V4), family(IpVersion::V6))
}

/// Keeps the ids the kernel already uses (read from the inet `egress` map) and gives new ports
/// the lowest free ones, so a port's mark never changes while it exists.
pub fn port_ids(taps: &BTreeSet<String>, observed_inet: &Observed) -> BTreeMap<String, u16> {
    let mut ids = BTreeMap::new();
    for (key, chain) in observed_inet.maps.get("egress").into_iter().flatten() {
        let tap = chain.strip_prefix("egress_").unwrap_or_default();
        let id = u32::from_str_radix(key.trim_start_matches("0x"), 16).ok();
        if let (true, Some(id)) = (taps.contains(tap), id) {
            ids.insert(tap.to_owned(), id as u16);
        }
    }
    let mut used: BTreeSet<u16> = ids.values().copied().collect();
    for tap in taps {
        if !ids.contains_key(tap) {
            if let Some(free) = (1..=MAX_PORT_ID).find(|i| !used.contains(i)) {
                used.insert(free);
                ids.insert(tap.clone(), free);
            }
        }
    }
    ids
}

/// The conntrack zone of a network on every node: from its VNI, or a hash of its id for flat
/// networks. Zones keep overlapping tenant addresses of different networks apart in conntrack;
/// two networks whose VNIs are congruent modulo 65535 share one (they are merely not kept
/// apart from each other, as without zones).
pub fn zone(network: &crate::view::Network) -> u16 {
    let n = match network.segmentation_id {
        Some(vni) => u64::from(vni),
        None => u64::from_str_radix(&crate::nft::fnv64(&network.id)[..8], 16).unwrap_or(0),
    };
    ((n.saturating_sub(1)) % 65535 + 1) as u16
}

/// The base chains' rules (a node without guarded ports has no tables). The bridge chains
/// dispatch frames to the ports' chains; the inet prerouting chain puts each guarded network in
/// its conntrack zone (bridged traffic reaches the inet hooks with the bridge as its input
/// device) and, with the output chain, leaves the node's own VXLAN packets untracked (the
/// tenant packets inside are tracked on the bridge, tracking the tunnel as well only costs);
/// the forward chain accepts established traffic before any per-port dispatch (every port
/// chain would accept it) and sends the rest to the source port's egress and the destination
/// port's ingress chain.
fn base_rules(
    view: &NodeView,
    node: &NodeConfig,
    guarded: &BTreeMap<String, &Port>,
    stateless: bool,
) -> (BTreeMap<String, Vec<String>>, BTreeMap<String, Vec<String>>) {
    // Frames to a port of a stateless group are not tracked, wherever they come from (only
    // when the node has such a port: otherwise no frame pays for the lookup).
    let mut bridge_prerouting = Vec::new();
    if stateless {
        bridge_prerouting.push(format!("ether daddr @{UNTRACKED_SET} notrack"));
    }
    // Frames from or to anything but a port (the tunnel, router interfaces) pass on a prefix
    // comparison, cheaper than a miss in the map.
    bridge_prerouting.push(format!("iifname != \"{TAP_PREFIX}*\" accept"));
    bridge_prerouting.push("iifname vmap @port_in".to_owned());
    let bridge = BTreeMap::from([
        ("prerouting".to_owned(), bridge_prerouting),
        (
            "forward".to_owned(),
            vec![
                format!("oifname != \"{TAP_PREFIX}*\" accept"),
                "oifname vmap @port_out".to_owned(),
            ],
        ),
    ]);
    let zones: BTreeSet<String> = guarded
        .values()
        .filter_map(|p| view.networks.get(&p.network_id))
        .map(|n| format!("\"{}\" : {}", bridge_name(&n.id), zone(n)))
        .collect();
    let family = if node.tunnel_ip.is_ipv4() {
        "ip"
    } else {
        "ip6"
    };
    let port = crate::l2::VXLAN_PORT;
    let tunnel = |side: &str| {
        format!(
            "{family} {side} {} udp dport {port} notrack accept",
            node.tunnel_ip
        )
    };
    // Bridged packets arrive with their bridge as input device: once in their zone, done.
    // Untracked ones (stateless groups) stay so: a zone would give them a conntrack entry.
    let mut prerouting = Vec::new();
    if stateless {
        prerouting.push("ct state untracked accept".to_owned());
    }
    if !zones.is_empty() {
        prerouting.push(format!("ct zone set iifname map {} accept", set(&zones)));
    }
    prerouting.push(tunnel("daddr"));
    let inet = BTreeMap::from([
        ("prerouting".to_owned(), prerouting),
        ("output".to_owned(), vec![tunnel("saddr")]),
        (
            "forward".to_owned(),
            vec![
                "ct state established,related accept".to_owned(),
                "meta mark and 0x0000ffff vmap @egress".to_owned(),
                "meta mark and 0xffff0000 vmap @ingress".to_owned(),
            ],
        ),
    ]);
    (bridge, inet)
}

/// Both tables for `view`, with port ids from [`port_ids`] and the taps the node's DHCP
/// serves.
pub fn desired(
    view: &NodeView,
    node: &NodeConfig,
    ids: &BTreeMap<String, u16>,
    served: &DhcpServed,
) -> Filter {
    let mut bridge = Table {
        family: "bridge",
        name: TABLE,
        skeleton: BRIDGE_SKELETON.to_owned(),
        ..Table::default()
    };
    let mut inet = Table {
        family: "inet",
        name: TABLE,
        skeleton: INET_SKELETON.to_owned(),
        ..Table::default()
    };
    let mut remote_groups = BTreeSet::new();
    let mut address_groups = BTreeSet::new();
    let mut used_groups = BTreeSet::new();
    let guarded = guarded_ports(view, node);
    if guarded.is_empty() {
        bridge.absent = true;
        inet.absent = true;
        return Filter { bridge, inet };
    }
    let mut untracked_macs = BTreeSet::new();
    for (tap, port) in &guarded {
        let Some(&id) = ids.get(tap) else { continue };
        let stateless = is_stateless(view, port);
        let mut macs = BTreeSet::from([port.mac_address.to_ascii_lowercase()]);
        macs.extend(
            port.allowed_address_pairs
                .iter()
                .map(|p| p.mac_address.to_ascii_lowercase()),
        );
        let (v4, v6) = addresses(port);
        let (from, to) = (format!("from_{tap}"), format!("to_{tap}"));
        let mut mark = format!("meta mark set meta mark or 0x{id:08x}");
        if stateless {
            mark.push_str(" notrack");
            untracked_macs.extend(macs.iter().cloned());
        }
        bridge.chains.insert(
            from.clone(),
            from_port_rules(
                &macs,
                &v4,
                &v6,
                &mark,
                Served {
                    v4: served.v4.contains(tap),
                    v6: served.v6.contains(tap),
                },
            ),
        );
        bridge.chains.insert(
            to.clone(),
            vec![format!(
                "meta mark set meta mark or 0x{:08x}",
                u32::from(id) << 16
            )],
        );
        bridge
            .maps
            .entry("port_in".into())
            .or_default()
            .insert(format!("\"{tap}\""), from);
        bridge
            .maps
            .entry("port_out".into())
            .or_default()
            .insert(format!("\"{tap}\""), to);

        // A stateless port's traffic is untracked: its rules alone decide, both ways.
        let (mut egress, mut ingress) = if stateless {
            (Vec::new(), Vec::new())
        } else {
            (
                vec![
                    "ct state invalid counter drop".to_owned(),
                    "ct state established,related return".to_owned(),
                ],
                vec![
                    "ct state invalid counter drop".to_owned(),
                    "ct state established,related accept".to_owned(),
                ],
            )
        };
        egress.push(format!(
            "meta l4proto ipv6-icmp icmpv6 type @{ND_TYPES} return"
        ));
        ingress.push(format!(
            "meta l4proto ipv6-icmp icmpv6 type @{ND_TYPES} accept"
        ));
        // The groups' rules live in one chain pair per group, shared by the node's ports, so
        // a rule change rewrites one small chain whatever the number of ports using it.
        for group_id in &port.security_groups {
            if view.security_groups.contains_key(group_id) {
                let (out, inb) = group_chains(group_id);
                egress.push(format!("jump {out}"));
                ingress.push(format!("jump {inb}"));
                used_groups.insert(group_id.clone());
            }
        }
        egress.push(format!(
            "meta mark and 0x{EGRESS_ALLOWED:08x} == 0x{EGRESS_ALLOWED:08x} return"
        ));
        egress.push("counter drop".to_owned());
        ingress.push("counter drop".to_owned());
        let (eg, ing) = (format!("egress_{tap}"), format!("ingress_{tap}"));
        inet.chains.insert(eg.clone(), egress);
        inet.chains.insert(ing.clone(), ingress);
        inet.maps
            .entry("egress".into())
            .or_default()
            .insert(format!("0x{id:08x}"), eg);
        inet.maps
            .entry("ingress".into())
            .or_default()
            .insert(format!("0x{:08x}", u32::from(id) << 16), ing);
    }
    for group_id in &used_groups {
        let Some(group) = view.security_groups.get(group_id) else {
            continue;
        };
        let (mut out, mut inb) = (Vec::new(), Vec::new());
        for rule in &group.security_group_rules {
            if let Some(remote) = &rule.remote_group_id {
                remote_groups.insert(remote.clone());
            }
            if let Some(remote) = &rule.remote_address_group_id {
                address_groups.insert(remote.clone());
            }
            match rule_match(rule) {
                Some((true, m)) => inb.push(format!("{m} accept")),
                // Allowed egress marks the packet and goes back to the port's chain, which
                // returns to the forward chain for the destination's ingress checks.
                Some((false, m)) => out.push(format!(
                    "{m} meta mark set meta mark or 0x{EGRESS_ALLOWED:08x} return"
                )),
                None => {}
            }
        }
        let (out_name, in_name) = group_chains(group_id);
        inet.chains.insert(out_name, out);
        inet.chains.insert(in_name, inb);
    }
    let (bridge_base, inet_base) = base_rules(view, node, &guarded, !untracked_macs.is_empty());
    if !untracked_macs.is_empty() {
        bridge.sets.insert(
            UNTRACKED_SET.to_owned(),
            ("type ether_addr;".into(), untracked_macs),
        );
    }
    bridge.chains.extend(bridge_base);
    inet.chains.extend(inet_base);
    constant_sets(&mut bridge, &mut inet);
    for group in address_groups {
        let (v4, v6) = address_group_members(view, &group);
        inet.sets.insert(
            address_set(&group, false),
            ("type ipv4_addr; flags interval;".into(), v4),
        );
        inet.sets.insert(
            address_set(&group, true),
            ("type ipv6_addr; flags interval;".into(), v6),
        );
    }
    for group in remote_groups {
        let (mut v4, mut v6) = (BTreeSet::new(), BTreeSet::new());
        for port in view
            .ports
            .values()
            .filter(|p| p.security_groups.contains(&group))
        {
            let (a4, a6) = addresses(port);
            v4.extend(a4);
            v6.extend(a6);
        }
        inet.sets.insert(
            group_set(&group, false),
            ("type ipv4_addr; flags interval;".into(), v4),
        );
        inet.sets.insert(
            group_set(&group, true),
            ("type ipv6_addr; flags interval;".into(), v6),
        );
    }
    Filter { bridge, inet }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::view::{AddressPair, FixedIp};
    use serde_json::json;

    fn port(id: &str, host: &str, ip: &str, groups: &[&str], security: bool) -> Port {
        Port {
            id: id.into(),
            network_id: "n".into(),
            mac_address: "fa:16:3e:00:00:01".into(),
            fixed_ips: vec![FixedIp {
                subnet_id: "s".into(),
                ip_address: ip.parse().unwrap(),
            }],
            host_id: host.into(),
            security_groups: groups.iter().map(|g| g.to_string()).collect(),
            port_security_enabled: security,
            allowed_address_pairs: vec![AddressPair {
                ip_address: "10.0.0.50".into(),
                mac_address: "fa:16:3e:00:00:09".into(),
            }],
            status: "DOWN".into(),
            ..Default::default()
        }
    }

    fn view() -> NodeView {
        let mut v = NodeView::default();
        v.ports.insert(
            "local-port-1".into(),
            port("local-port-1", "a", "10.0.0.2", &["web"], true),
        );
        v.ports.insert(
            "open-port-02".into(),
            port("open-port-02", "a", "10.0.0.3", &[], false),
        );
        v.ports.insert(
            "remote-port3".into(),
            port("remote-port3", "b", "10.0.0.4", &["db"], true),
        );
        v.apply(&json!({"type": "ADDED", "kind": "security_group", "object": {"id": "web", "security_group_rules": [
            {"direction": "egress", "ethertype": "IPv4", "protocol": null, "port_range_min": null, "port_range_max": null, "remote_ip_prefix": null, "remote_group_id": null},
            {"direction": "ingress", "ethertype": "IPv4", "protocol": "tcp", "port_range_min": 80, "port_range_max": 80, "remote_ip_prefix": null, "remote_group_id": "db"},
            {"direction": "ingress", "ethertype": "IPv4", "protocol": "icmp", "port_range_min": null, "port_range_max": null, "remote_ip_prefix": "192.168.0.0/16", "remote_group_id": null},
        ]}}))
        .unwrap();
        v
    }

    fn node() -> NodeConfig {
        NodeConfig {
            name: "a".into(),
            tunnel_ip: "10.9.0.1".parse().unwrap(),
            physnets: BTreeMap::new(),
        }
    }

    #[test]
    fn port_chains_hold_no_anonymous_sets_for_a_few_values() {
        let mut v = view();
        // A pod's port: one MAC, one address.
        let port = v.ports.get_mut("local-port-1").unwrap();
        port.allowed_address_pairs.clear();
        let served = DhcpServed {
            v4: ["taplocal-port-".to_owned()].into(),
            v6: ["taplocal-port-".to_owned()].into(),
        };
        let taps = guarded_ports(&v, &node()).into_keys().collect();
        let ids = port_ids(&taps, &Observed::default());
        let f = desired(&v, &node(), &ids, &served);
        for (name, rules) in f.bridge.chains.iter().chain(&f.inet.chains) {
            if name.contains("tap") {
                assert!(rules.iter().all(|r| !r.contains('{')), "{name}: {rules:?}");
            }
        }
        assert_eq!(f.inet.sets[ND_TYPES].1.len(), 7);
        assert_eq!(f.bridge.sets[DHCP6_GUARD].1.len(), 2);
        // Many allowed pairs: one set lookup rather than a long run of comparisons.
        let port = v.ports.get_mut("local-port-1").unwrap();
        port.allowed_address_pairs = (10..16)
            .map(|i| AddressPair {
                ip_address: format!("10.0.0.{i}"),
                mac_address: "fa:16:3e:00:00:09".into(),
            })
            .collect();
        let f = desired(&v, &node(), &ids, &served);
        let from = &f.bridge.chains["from_taplocal-port-"];
        assert!(from[4].starts_with("ether type arp arp saddr ip != { 0.0.0.0, 10.0.0.10, "));
    }

    #[test]
    fn renders_both_tables() {
        let v = view();
        let taps: BTreeSet<String> = guarded_ports(&v, &node()).into_keys().collect();
        assert_eq!(taps.iter().collect::<Vec<_>>(), ["taplocal-port-"]);
        let ids = port_ids(&taps, &Observed::default());
        assert_eq!(ids["taplocal-port-"], 1);
        let f = desired(&v, &node(), &ids, &DhcpServed::default());
        let from = &f.bridge.chains["from_taplocal-port-"];
        assert_eq!(
            from[0], "ether type ip udp sport 67 udp dport 68 counter drop",
            "an instance is no DHCP server"
        );
        assert_eq!(
            from[1],
            "ether saddr { fa:16:3e:00:00:01, fa:16:3e:00:00:09 } ip saddr { 10.0.0.2, 10.0.0.50 } meta mark set meta mark or 0x00000001 accept",
            "the port's own IPv4 is decided by the rule after that guard"
        );
        // A few values are plain comparisons, not an anonymous set per port.
        assert_eq!(
            from[2],
            "ether saddr != fa:16:3e:00:00:01 ether saddr != fa:16:3e:00:00:09 counter drop"
        );
        assert_eq!(
            from[4],
            "ether type arp arp saddr ip != 0.0.0.0 arp saddr ip != 10.0.0.2 arp saddr ip != 10.0.0.50 counter drop"
        );
        assert_eq!(from[6], "ether type ip counter drop");
        assert!(
            from.contains(&"ether type ip6 icmpv6 type nd-router-advert counter drop".to_owned())
        );
        assert_eq!(
            from.last().unwrap(),
            "meta mark set meta mark or 0x00000001"
        );
        assert_eq!(
            f.bridge.chains["to_taplocal-port-"],
            ["meta mark set meta mark or 0x00010000"]
        );
        // The port's chains jump to its group's chains, which hold the rules.
        let ingress = &f.inet.chains["ingress_taplocal-port-"];
        assert_eq!(ingress[3..], ["jump sgi_web", "counter drop"]);
        let egress = &f.inet.chains["egress_taplocal-port-"];
        assert_eq!(
            egress[3..],
            [
                "jump sge_web",
                "meta mark and 0x00008000 == 0x00008000 return",
                "counter drop"
            ]
        );
        let group_in = &f.inet.chains["sgi_web"];
        assert!(
            group_in.contains(
                &"meta nfproto ipv4 meta l4proto 6 th dport 80 ip saddr @rg4_db accept".to_owned()
            ),
            "{group_in:?}"
        );
        assert!(group_in.contains(
            &"meta nfproto ipv4 meta l4proto icmp ip saddr 192.168.0.0/16 accept".to_owned()
        ));
        assert!(f.inet.chains["sge_web"].contains(
            &"meta nfproto ipv4 meta mark set meta mark or 0x00008000 return".to_owned()
        ));
        // New chains are created before any rule jumps to them.
        let script = f
            .inet
            .plan(&Observed::default(), INET_BASE)
            .unwrap()
            .to_string();
        let created = script.find("add chain inet isthmus sgi_web").unwrap();
        let jumped = script.find("jump sgi_web").unwrap();
        assert!(created < jumped, "{script}");
        // The remote group's members fill its set (addresses and allowed pairs).
        assert_eq!(
            f.inet.sets["rg4_db"].1,
            BTreeSet::from(["10.0.0.4".to_owned(), "10.0.0.50".to_owned()])
        );
        assert_eq!(
            f.inet.maps["ingress"]["0x00010000"],
            "ingress_taplocal-port-"
        );
        let first = f
            .inet
            .plan(&Observed::default(), INET_BASE)
            .unwrap()
            .to_string();
        assert!(first.contains("add set inet isthmus rg4_db"));
        // No network in the view: no zone; the node's own tunnel packets stay untracked.
        assert_eq!(
            f.inet.chains["prerouting"],
            ["ip daddr 10.9.0.1 udp dport 4789 notrack accept"]
        );
        assert_eq!(
            f.inet.chains["output"],
            ["ip saddr 10.9.0.1 udp dport 4789 notrack accept"]
        );
        assert_eq!(
            f.inet.chains["forward"][0],
            "ct state established,related accept"
        );
    }

    #[test]
    fn no_guarded_port_no_tables() {
        let mut v = view();
        v.ports.remove("local-port-1");
        let f = desired(&v, &node(), &BTreeMap::new(), &DhcpServed::default());
        let existing = Observed {
            exists: true,
            ..Observed::default()
        };
        for (table, base) in [(&f.bridge, BRIDGE_BASE), (&f.inet, INET_BASE)] {
            assert!(table.absent && table.chains.is_empty());
            assert_eq!(
                table
                    .plan(&existing, base)
                    .map(|p| p.to_string())
                    .as_deref(),
                Some(format!("delete table {} isthmus\n", table.family).as_str())
            );
            assert_eq!(table.plan(&Observed::default(), base), None);
            assert!(!table.as_observed().exists);
        }
    }

    #[test]
    fn zones_per_local_network() {
        let mut v = view();
        v.networks.insert(
            "n".into(),
            crate::view::Network {
                id: "n".into(),
                mtu: 1450,
                network_type: "vxlan".into(),
                segmentation_id: Some(70000),
                physical_network: None,
                ..Default::default()
            },
        );
        let taps: BTreeSet<String> = guarded_ports(&v, &node()).into_keys().collect();
        let f = desired(
            &v,
            &node(),
            &port_ids(&taps, &Observed::default()),
            &DhcpServed::default(),
        );
        assert_eq!(
            f.inet.chains["prerouting"],
            [
                "ct zone set iifname map { \"brqn\" : 4465 } accept",
                "ip daddr 10.9.0.1 udp dport 4789 notrack accept"
            ]
        );
    }

    #[test]
    fn ids_are_stable() {
        let mut observed = Observed::default();
        observed.maps.insert(
            "egress".into(),
            BTreeMap::from([("0x00000007".to_owned(), "egress_tapb".to_owned())]),
        );
        let taps = BTreeSet::from(["tapa".to_owned(), "tapb".to_owned()]);
        let ids = port_ids(&taps, &observed);
        assert_eq!(ids["tapb"], 7, "an existing port keeps its mark");
        assert_eq!(ids["tapa"], 1);
    }

    #[test]
    fn stateless_groups_are_not_tracked() {
        let mut v = view();
        v.security_groups.get_mut("web").unwrap().stateful = false;
        let taps: BTreeSet<String> = guarded_ports(&v, &node()).into_keys().collect();
        let ids = port_ids(&taps, &Observed::default());
        let f = desired(&v, &node(), &ids, &DhcpServed::default());
        let from = &f.bridge.chains["from_taplocal-port-"];
        assert!(from[1].ends_with("meta mark set meta mark or 0x00000001 notrack accept"));
        assert_eq!(
            f.bridge.chains["prerouting"][0], "ether daddr @untracked notrack",
            "frames to the port are not tracked either"
        );
        assert!(f.bridge.sets["untracked"].1.contains("fa:16:3e:00:00:01"));
        assert_eq!(f.inet.chains["prerouting"][0], "ct state untracked accept");
        let egress = &f.inet.chains["egress_taplocal-port-"];
        assert!(egress.iter().all(|r| !r.starts_with("ct ")), "{egress:?}");
        assert_eq!(egress[1], "jump sge_web");
        let ingress = &f.inet.chains["ingress_taplocal-port-"];
        assert_eq!(ingress[1..], ["jump sgi_web", "counter drop"]);
        // Stateful again: no untracked set, no extra rule on any frame.
        let stateful = desired(&view(), &node(), &ids, &DhcpServed::default());
        assert!(!stateful.bridge.sets.contains_key("untracked"));
        assert!(stateful.bridge.chains["prerouting"][0].starts_with("iifname != "));
    }

    #[test]
    fn address_groups_are_sets_kept_in_step() {
        let mut v = view();
        let web = v.security_groups.get_mut("web").unwrap();
        web.security_group_rules.push(
            serde_json::from_value(
                json!({"direction": "ingress", "ethertype": "IPv4", "protocol": "tcp",
                         "port_range_min": 22, "port_range_max": 22, "remote_ip_prefix": null,
                         "remote_group_id": null, "remote_address_group_id": "ag-1"}),
            )
            .unwrap(),
        );
        let taps: BTreeSet<String> = guarded_ports(&v, &node()).into_keys().collect();
        let ids = port_ids(&taps, &Observed::default());
        // Before the group arrives its sets exist, empty: the rule loads and admits nothing.
        let f = desired(&v, &node(), &ids, &DhcpServed::default());
        assert!(f.inet.chains["sgi_web"]
            .iter()
            .any(|r| r == "meta nfproto ipv4 meta l4proto 6 th dport 22 ip saddr @ag4_ag1 accept"));
        assert!(f.inet.sets["ag4_ag1"].1.is_empty());
        v.apply(&json!({"type": "ADDED", "kind": "address_group", "object":
            {"id": "ag-1", "addresses": ["10.1.0.0/24", "10.1.0.7/32", "10.2.0.1/32", "2001:db8::/64"]}}))
        .unwrap();
        let f = desired(&v, &node(), &ids, &DhcpServed::default());
        assert_eq!(
            f.inet.sets["ag4_ag1"].1.iter().collect::<Vec<_>>(),
            ["10.1.0.0/24", "10.2.0.1/32"],
            "overlaps merged"
        );
        assert_eq!(f.inet.sets["ag6_ag1"].1.len(), 1);
    }
}
