//! DHCPv6 for subnets with `ipv6_address_mode` `dhcpv6-stateful` (addresses, IA_NA) or
//! `dhcpv6-stateless` (name servers and domain only), answered like DHCPv4 (see
//! [`crate::dhcp`]): requests read on the port's tap, replies written back out of it, from
//! the network's DHCP port (its DUID-LL and link-local address). Pure: the leases, the reply,
//! the frames.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv6Addr};

use dhcproto::v6::{self, DhcpOption, DhcpOptions, IAAddr, MessageType, OptionCode, IANA};
use dhcproto::{Decodable, Decoder, Encodable, Encoder};
use hickory_proto::rr::Name;
use isthmus_model::addr::Cidr;

use crate::dhcp::{checksum, dhcp_port, LEASE_SECONDS};
use crate::node::{tap_name, NodeConfig};
use crate::view::{NodeView, Port};

/// DHCPv6 server port.
pub const SERVER_PORT: u16 = 547;
/// DHCPv6 client port.
pub const CLIENT_PORT: u16 = 546;

/// One port's DHCPv6 answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease6 {
    /// The port's MAC.
    pub mac: [u8; 6],
    /// Addresses on stateful subnets (IA_NA); none for stateless ones.
    pub addresses: Vec<Ipv6Addr>,
    /// Name servers.
    pub dns: Vec<Ipv6Addr>,
    /// Domain search list.
    pub domain: String,
    /// The DHCP port's MAC (source of replies, and its DUID-LL).
    pub server_mac: [u8; 6],
}

impl Lease6 {
    /// The server's DUID: DUID-LL (type 3) of the DHCP port's MAC, the same on every node.
    pub fn server_duid(&self) -> Vec<u8> {
        let mut duid = vec![0, 3, 0, 1];
        duid.extend(self.server_mac);
        duid
    }

    /// The server's link-local address (EUI-64 of the DHCP port's MAC, as the kernel gives
    /// its namespace interface).
    pub fn server_address(&self) -> Ipv6Addr {
        link_local(self.server_mac)
    }
}

/// The EUI-64 link-local address of a MAC.
pub fn link_local(mac: [u8; 6]) -> Ipv6Addr {
    let link = Cidr {
        network: IpAddr::V6(Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0)),
        prefix: 64,
    };
    match isthmus_model::ipam::eui64(&link, mac) {
        IpAddr::V6(a) => a,
        IpAddr::V4(_) => Ipv6Addr::UNSPECIFIED,
    }
}

/// The DHCPv6 leases `node` serves, by tap: its ports with an address on a DHCPv6 subnet.
pub fn leases(view: &NodeView, node: &NodeConfig) -> BTreeMap<String, Lease6> {
    view.ports
        .values()
        .filter(|p| p.host_id == node.name)
        .filter_map(|p| Some((tap_name(&p.id), lease_of(view, p)?)))
        .collect()
}

fn lease_of(view: &NodeView, port: &Port) -> Option<Lease6> {
    let dhcp = dhcp_port(view, &port.network_id)?;
    let mut lease = Lease6 {
        mac: port.mac_bytes()?,
        addresses: Vec::new(),
        dns: Vec::new(),
        domain: port.dns_domain(),
        server_mac: dhcp.mac_bytes()?,
    };
    let mut served = false;
    for fixed in &port.fixed_ips {
        let IpAddr::V6(address) = fixed.ip_address else {
            continue;
        };
        let Some(subnet) = view.subnet_info(&fixed.subnet_id) else {
            continue;
        };
        if !subnet.enable_dhcp || subnet.network_id != port.network_id {
            continue;
        }
        match subnet.ipv6_address_mode.as_deref() {
            Some("dhcpv6-stateful") => lease.addresses.push(address),
            Some("dhcpv6-stateless") => {}
            _ => continue,
        }
        served = true;
        let servers: Vec<Ipv6Addr> = subnet
            .dns_nameservers
            .iter()
            .filter_map(|ip| match ip {
                IpAddr::V6(a) => Some(*a),
                IpAddr::V4(_) => None,
            })
            .collect();
        // Without name servers of its own, the subnet's DHCP port address (the node's DNS).
        let servers = if servers.is_empty() {
            dhcp.fixed_ips
                .iter()
                .filter(|f| f.subnet_id == fixed.subnet_id)
                .filter_map(|f| match f.ip_address {
                    IpAddr::V6(a) => Some(a),
                    IpAddr::V4(_) => None,
                })
                .collect()
        } else {
            servers
        };
        for s in servers {
            if !lease.dns.contains(&s) {
                lease.dns.push(s);
            }
        }
    }
    served.then_some(lease)
}

/// The reply to a DHCPv6 request (its UDP payload) from `lease`'s port, if one is due:
/// SOLICIT → ADVERTISE (REPLY with Rapid Commit), REQUEST/RENEW/REBIND/CONFIRM → REPLY with
/// the port's addresses, INFORMATION-REQUEST → REPLY with name servers and domain.
pub fn answer(lease: &Lease6, request: &[u8]) -> Option<Vec<u8>> {
    let msg = v6::Message::decode(&mut Decoder::new(request)).ok()?;
    let client_id = match msg.opts().get(OptionCode::ClientId) {
        Some(DhcpOption::ClientId(id)) => id.clone(),
        _ => return None,
    };
    if let Some(DhcpOption::ServerId(id)) = msg.opts().get(OptionCode::ServerId) {
        if *id != lease.server_duid() {
            return None;
        }
    }
    let rapid = msg.opts().get(OptionCode::RapidCommit).is_some();
    let kind = match msg.msg_type() {
        MessageType::Solicit if rapid => MessageType::Reply,
        MessageType::Solicit => MessageType::Advertise,
        MessageType::Request
        | MessageType::Renew
        | MessageType::Rebind
        | MessageType::Confirm
        | MessageType::InformationRequest => MessageType::Reply,
        _ => return None,
    };
    let mut reply = v6::Message::new_with_id(kind, msg.xid());
    let opts = reply.opts_mut();
    opts.insert(DhcpOption::ClientId(client_id));
    opts.insert(DhcpOption::ServerId(lease.server_duid()));
    if kind == MessageType::Reply && rapid {
        opts.insert(DhcpOption::RapidCommit);
    }
    if msg.msg_type() != MessageType::InformationRequest {
        // One IA_NA per IA the client asked for, holding the port's addresses.
        for ia in msg.opts().iter() {
            let DhcpOption::IANA(asked) = ia else {
                continue;
            };
            let mut ia_opts = DhcpOptions::new();
            for address in &lease.addresses {
                ia_opts.insert(DhcpOption::IAAddr(IAAddr {
                    addr: *address,
                    preferred_life: LEASE_SECONDS,
                    valid_life: LEASE_SECONDS,
                    opts: DhcpOptions::new(),
                }));
            }
            if lease.addresses.is_empty() {
                ia_opts.insert(DhcpOption::StatusCode(v6::StatusCode {
                    status: v6::Status::NoAddrsAvail,
                    msg: "stateless subnet: no addresses".into(),
                }));
            }
            reply.opts_mut().insert(DhcpOption::IANA(IANA {
                id: asked.id,
                t1: LEASE_SECONDS / 2,
                t2: LEASE_SECONDS / 8 * 7,
                opts: ia_opts,
            }));
        }
    }
    let opts = reply.opts_mut();
    if !lease.dns.is_empty() {
        opts.insert(DhcpOption::DomainNameServers(lease.dns.clone()));
    }
    if let Ok(name) = Name::from_ascii(format!("{}.", lease.domain)) {
        if !lease.domain.is_empty() {
            opts.insert(DhcpOption::DomainSearchList(vec![name]));
        }
    }
    let mut out = Vec::with_capacity(256);
    reply.encode(&mut Encoder::new(&mut out)).ok()?;
    Some(out)
}

/// The DHCPv6 payload and source address of an Ethernet frame that is an IPv6/UDP datagram
/// to port 547 (no extension headers), if it is.
pub fn request_payload(frame: &[u8]) -> Option<(Ipv6Addr, &[u8])> {
    if frame.get(12..14)? != [0x86, 0xdd] || *frame.get(20)? != 17 {
        return None;
    }
    let src: [u8; 16] = frame.get(22..38)?.try_into().ok()?;
    let udp = frame.get(54..)?;
    if u16::from_be_bytes([*udp.get(2)?, *udp.get(3)?]) != SERVER_PORT {
        return None;
    }
    let len = usize::from(u16::from_be_bytes([*udp.get(4)?, *udp.get(5)?]));
    Some((Ipv6Addr::from(src), udp.get(8..len.min(udp.len()))?))
}

/// The Ethernet frame carrying `message` from the DHCP port to the client at `dst` (UDP
/// 547 → 546).
pub fn reply_frame(lease: &Lease6, dst: Ipv6Addr, message: &[u8]) -> Vec<u8> {
    let src = lease.server_address();
    let udp_len = 8 + message.len();
    let mut frame = Vec::with_capacity(14 + 40 + udp_len);
    frame.extend(lease.mac);
    frame.extend(lease.server_mac);
    frame.extend([0x86, 0xdd]);
    frame.extend([0x60, 0, 0, 0]);
    frame.extend((udp_len as u16).to_be_bytes());
    frame.extend([17, 255]);
    frame.extend(src.octets());
    frame.extend(dst.octets());
    let mut udp = [0u8; 8];
    udp[0..2].copy_from_slice(&SERVER_PORT.to_be_bytes());
    udp[2..4].copy_from_slice(&CLIENT_PORT.to_be_bytes());
    udp[4..6].copy_from_slice(&(udp_len as u16).to_be_bytes());
    let mut pseudo = Vec::with_capacity(40);
    pseudo.extend(src.octets());
    pseudo.extend(dst.octets());
    pseudo.extend((udp_len as u32).to_be_bytes());
    pseudo.extend([0, 0, 0, 17]);
    let sum = match checksum(&[&pseudo, &udp, message]) {
        0 => 0xffff,
        s => s,
    };
    udp[6..8].copy_from_slice(&sum.to_be_bytes());
    frame.extend(udp);
    frame.extend(message);
    frame
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn view(mode: &str) -> NodeView {
        let mut view = NodeView::default();
        for line in [
            json!({"type": "ADDED", "kind": "network", "object": {"id": "n", "mtu": 1450,
                "provider:network_type": "vxlan", "provider:segmentation_id": 5}}),
            json!({"type": "ADDED", "kind": "subnet", "object": {"id": "s6", "network_id": "n",
                "cidr": "2001:db8:9::/64", "ip_version": 6, "enable_dhcp": true,
                "ipv6_address_mode": mode, "ipv6_ra_mode": mode, "dns_nameservers": []}}),
            json!({"type": "ADDED", "kind": "port", "object": {"id": isthmus_model::port::dhcp_port_id("n"), "network_id": "n",
                "mac_address": "fa:16:3e:00:00:02", "port_security_enabled": false, "status": "ACTIVE",
                "device_owner": "network:dhcp",
                "fixed_ips": [{"subnet_id": "s6", "ip_address": "2001:db8:9::2"}]}}),
            json!({"type": "ADDED", "kind": "port", "object": {"id": "vm", "network_id": "n",
                "mac_address": "fa:16:3e:00:00:09", "port_security_enabled": true, "status": "ACTIVE",
                "binding:host_id": "n1",
                "dns_assignment": [{"hostname": "vm", "ip_address": "2001:db8:9::9", "fqdn": "vm.openstack.local."}],
                "fixed_ips": [{"subnet_id": "s6", "ip_address": "2001:db8:9::9"}]}}),
        ] {
            view.apply(&line).unwrap();
        }
        view
    }

    fn node() -> NodeConfig {
        NodeConfig {
            name: "n1".into(),
            tunnel_ip: "10.0.0.1".parse().unwrap(),
            physnets: BTreeMap::new(),
        }
    }

    fn request(kind: MessageType, extra: Vec<DhcpOption>) -> Vec<u8> {
        let mut m = v6::Message::new_with_id(kind, [1, 2, 3]);
        m.opts_mut().insert(DhcpOption::ClientId(vec![
            0, 3, 0, 1, 0xfa, 0x16, 0x3e, 0, 0, 9,
        ]));
        for o in extra {
            m.opts_mut().insert(o);
        }
        let mut out = Vec::new();
        m.encode(&mut Encoder::new(&mut out)).unwrap();
        out
    }

    fn ia() -> DhcpOption {
        DhcpOption::IANA(IANA {
            id: 7,
            t1: 0,
            t2: 0,
            opts: DhcpOptions::new(),
        })
    }

    #[test]
    fn stateful_subnets_lease_the_ports_address() {
        let lease = leases(&view("dhcpv6-stateful"), &node())
            .remove("tapvm")
            .unwrap();
        assert_eq!(
            lease.addresses,
            ["2001:db8:9::9".parse::<Ipv6Addr>().unwrap()]
        );
        assert_eq!(lease.dns, ["2001:db8:9::2".parse::<Ipv6Addr>().unwrap()]);
        let advertise = answer(&lease, &request(MessageType::Solicit, vec![ia()])).unwrap();
        let m = v6::Message::decode(&mut Decoder::new(&advertise)).unwrap();
        assert_eq!((m.msg_type(), m.xid()), (MessageType::Advertise, [1, 2, 3]));
        match m.opts().get(OptionCode::IANA) {
            Some(DhcpOption::IANA(ia)) => {
                assert_eq!(ia.id, 7);
                match ia.opts.get(OptionCode::IAAddr) {
                    Some(DhcpOption::IAAddr(a)) => assert_eq!(a.addr.to_string(), "2001:db8:9::9"),
                    other => panic!("{other:?}"),
                }
            }
            other => panic!("{other:?}"),
        }
        let rapid = answer(
            &lease,
            &request(MessageType::Solicit, vec![ia(), DhcpOption::RapidCommit]),
        )
        .unwrap();
        assert_eq!(
            v6::Message::decode(&mut Decoder::new(&rapid))
                .unwrap()
                .msg_type(),
            MessageType::Reply
        );
        // Another server's request is not ours.
        let other = request(
            MessageType::Request,
            vec![
                ia(),
                DhcpOption::ServerId(vec![0, 3, 0, 1, 1, 2, 3, 4, 5, 6]),
            ],
        );
        assert_eq!(answer(&lease, &other), None);
        let ours = request(
            MessageType::Request,
            vec![ia(), DhcpOption::ServerId(lease.server_duid())],
        );
        assert!(answer(&lease, &ours).is_some());
        assert_eq!(lease.server_address().to_string(), "fe80::f816:3eff:fe00:2");
    }

    #[test]
    fn stateless_subnets_give_settings_only_and_slaac_none() {
        let lease = leases(&view("dhcpv6-stateless"), &node())
            .remove("tapvm")
            .unwrap();
        assert!(lease.addresses.is_empty());
        let reply = answer(&lease, &request(MessageType::InformationRequest, vec![])).unwrap();
        let m = v6::Message::decode(&mut Decoder::new(&reply)).unwrap();
        assert_eq!(m.msg_type(), MessageType::Reply);
        assert!(m.opts().get(OptionCode::DomainNameServers).is_some());
        assert!(m.opts().get(OptionCode::IANA).is_none());
        assert!(leases(&view("slaac"), &node()).is_empty());
    }

    #[test]
    fn frames_carry_a_valid_udp_checksum() {
        let lease = leases(&view("dhcpv6-stateful"), &node())
            .remove("tapvm")
            .unwrap();
        let dst: Ipv6Addr = "fe80::f816:3eff:fe00:9".parse().unwrap();
        let out = reply_frame(&lease, dst, b"hello");
        let mut pseudo = Vec::new();
        pseudo.extend(&out[22..54]);
        pseudo.extend(13u32.to_be_bytes());
        pseudo.extend([0, 0, 0, 17]);
        assert_eq!(checksum(&[&pseudo, &out[54..]]), 0);
        // Seen from the client's side, swapped to 546 → 547, it parses back.
        let mut request = out.clone();
        request[54..56].copy_from_slice(&CLIENT_PORT.to_be_bytes());
        request[56..58].copy_from_slice(&SERVER_PORT.to_be_bytes());
        let (src, payload) = request_payload(&request).unwrap();
        assert_eq!((src, payload), (lease.server_address(), &b"hello"[..]));
    }
}
