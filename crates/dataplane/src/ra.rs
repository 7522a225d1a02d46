//! IPv6 router advertisements from the distributed router (what radvd does for Neutron's
//! routers): every node running a router advertises, from its `qr-` interface, the IPv6
//! subnets with an `ipv6_ra_mode` — `slaac` (addresses from the prefix), `dhcpv6-stateless`
//! (addresses from the prefix, other settings from DHCPv6) or `dhcpv6-stateful` (addresses
//! from DHCPv6). Pure: which interfaces advertise what, and the ICMPv6 message.

use std::net::{IpAddr, Ipv6Addr};

use isthmus_model::router::OWNER_INTERFACE;

use crate::router::{interface_name, namespace_name, RouterState};
use crate::view::NodeView;

/// Router lifetime advertised (seconds).
pub const ROUTER_LIFETIME: u16 = 1800;
/// Valid lifetime of advertised prefixes (seconds).
pub const VALID_LIFETIME: u32 = 86_400;
/// Preferred lifetime of advertised prefixes (seconds).
pub const PREFERRED_LIFETIME: u32 = 14_400;

/// One advertised prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prefix {
    /// The prefix.
    pub network: Ipv6Addr,
    /// Its length.
    pub length: u8,
    /// Hosts may make their addresses from it (SLAAC).
    pub autonomous: bool,
}

/// What one router interface advertises.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Advertisement {
    /// The router namespace.
    pub namespace: String,
    /// The `qr-` interface.
    pub device: String,
    /// Its MAC (the source link-layer address option).
    pub mac: [u8; 6],
    /// The network's MTU.
    pub mtu: u32,
    /// Addresses come from DHCPv6 (M flag).
    pub managed: bool,
    /// Other settings come from DHCPv6 (O flag).
    pub other: bool,
    /// Prefixes.
    pub prefixes: Vec<Prefix>,
}

/// The advertisements of the routers `routers` (what the node runs) for `view`.
pub fn advertisements(view: &NodeView, routers: &RouterState) -> Vec<Advertisement> {
    let mut out = Vec::new();
    for port in view.ports.values() {
        if port.device_owner != OWNER_INTERFACE {
            continue;
        }
        let namespace = namespace_name(&port.device_id);
        let device = interface_name(&port.id);
        let Some(iface) = routers
            .get(&namespace)
            .and_then(|ns| ns.interfaces.get(&device))
        else {
            continue;
        };
        let mut adv = Advertisement {
            namespace,
            device,
            mac: match isthmus_model::mac::parse_unicast("mac_address", &iface.mac) {
                Ok(mac) => mac,
                Err(_) => continue,
            },
            mtu: iface.mtu,
            managed: false,
            other: false,
            prefixes: Vec::new(),
        };
        for fixed in &port.fixed_ips {
            let IpAddr::V6(_) = fixed.ip_address else {
                continue;
            };
            let Some(subnet) = view.subnet_info(&fixed.subnet_id) else {
                continue;
            };
            let (Some(mode), cidr) = (&subnet.ipv6_ra_mode, subnet.cidr) else {
                continue;
            };
            let IpAddr::V6(network) = cidr.network else {
                continue;
            };
            let autonomous = match mode.as_str() {
                "slaac" => true,
                "dhcpv6-stateless" => {
                    adv.other = true;
                    true
                }
                "dhcpv6-stateful" => {
                    adv.managed = true;
                    false
                }
                _ => continue,
            };
            adv.prefixes.push(Prefix {
                network,
                length: cidr.prefix,
                autonomous,
            });
        }
        if !adv.prefixes.is_empty() {
            out.push(adv);
        }
    }
    out
}

/// The ICMPv6 Router Advertisement (RFC 4861 4.2) for `adv`; the kernel fills in the
/// checksum of raw ICMPv6 sockets.
pub fn message(adv: &Advertisement) -> Vec<u8> {
    let mut m = vec![134, 0, 0, 0, 64];
    m.push(if adv.managed { 0x80 } else { 0 } | if adv.other { 0x40 } else { 0 });
    m.extend(ROUTER_LIFETIME.to_be_bytes());
    m.extend(0u32.to_be_bytes()); // reachable time: unspecified
    m.extend(0u32.to_be_bytes()); // retransmission timer: unspecified
                                  // Source link-layer address.
    m.extend([1, 1]);
    m.extend(adv.mac);
    // MTU.
    m.extend([5, 1, 0, 0]);
    m.extend(adv.mtu.to_be_bytes());
    for p in &adv.prefixes {
        m.extend([3, 4, p.length]);
        m.push(0x80 | if p.autonomous { 0x40 } else { 0 }); // on-link, autonomous
        m.extend(VALID_LIFETIME.to_be_bytes());
        m.extend(PREFERRED_LIFETIME.to_be_bytes());
        m.extend(0u32.to_be_bytes());
        m.extend(p.network.octets());
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::NodeConfig;
    use serde_json::json;
    use std::collections::BTreeMap;

    #[test]
    fn routers_advertise_their_ipv6_subnets_by_mode() {
        let mut view = NodeView::default();
        for line in [
            json!({"type": "ADDED", "kind": "network", "object": {"id": "n", "mtu": 1450,
                "provider:network_type": "vxlan", "provider:segmentation_id": 5}}),
            json!({"type": "ADDED", "kind": "router", "object": {"id": "r", "admin_state_up": true,
                "external_gateway_info": null}}),
            json!({"type": "ADDED", "kind": "subnet", "object": {"id": "s6", "network_id": "n",
                "cidr": "2001:db8:1::/64", "ip_version": 6, "ipv6_ra_mode": "slaac"}}),
            json!({"type": "ADDED", "kind": "subnet", "object": {"id": "s7", "network_id": "n",
                "cidr": "2001:db8:2::/64", "ip_version": 6, "ipv6_ra_mode": "dhcpv6-stateful"}}),
            json!({"type": "ADDED", "kind": "subnet", "object": {"id": "s8", "network_id": "n",
                "cidr": "2001:db8:3::/64", "ip_version": 6, "ipv6_ra_mode": null}}),
            json!({"type": "ADDED", "kind": "port", "object": {"id": "rp", "network_id": "n",
                "mac_address": "fa:16:3e:00:00:01", "port_security_enabled": false, "status": "ACTIVE",
                "device_owner": OWNER_INTERFACE, "device_id": "r",
                "fixed_ips": [{"subnet_id": "s6", "ip_address": "2001:db8:1::1"},
                              {"subnet_id": "s7", "ip_address": "2001:db8:2::1"},
                              {"subnet_id": "s8", "ip_address": "2001:db8:3::1"}]}}),
            json!({"type": "ADDED", "kind": "port", "object": {"id": "vm", "network_id": "n",
                "mac_address": "fa:16:3e:00:00:09", "port_security_enabled": true, "status": "ACTIVE",
                "binding:host_id": "n1", "fixed_ips": []}}),
        ] {
            view.apply(&line).unwrap();
        }
        let node = NodeConfig {
            name: "n1".into(),
            tunnel_ip: "10.0.0.1".parse().unwrap(),
            physnets: BTreeMap::new(),
        };
        let routers = crate::router::desired(&view, &node);
        let advs = advertisements(&view, &routers);
        assert_eq!(advs.len(), 1);
        let adv = &advs[0];
        assert_eq!(
            (adv.device.as_str(), adv.managed, adv.other),
            ("qr-rp", true, false)
        );
        assert_eq!(
            adv.prefixes.len(),
            2,
            "the subnet without a mode is not advertised"
        );
        assert!(adv.prefixes[0].autonomous && !adv.prefixes[1].autonomous);
        let m = message(adv);
        assert_eq!((m[0], m[5]), (134, 0x80));
        assert_eq!(m.len(), 16 + 8 + 8 + 2 * 32);
        assert_eq!(&m[18..24], &[0xfa, 0x16, 0x3e, 0, 0, 1]);
        assert_eq!(&m[28..32], &1450u32.to_be_bytes());
        assert_eq!((m[34], m[35]), (64, 0xc0));
        assert_eq!(&m[48..56], &[0x20, 0x01, 0x0d, 0xb8, 0, 1, 0, 0]);
        // Nothing runs where the router does not.
        assert!(advertisements(&view, &RouterState::new()).is_empty());
    }
}
