//! Distributed DHCP (OVN-style native DHCP, no dnsmasq): every agent answers DHCPv4 for the
//! ports bound to its own node, from its view, with one server identity per network shared by
//! every node — the network's `network:dhcp` port, whose MAC and addresses live on every node
//! in a `qdhcp-<network>` namespace (`ns-<port[0:11]>`, its other end `tap<port[0:11]>` on the
//! bridge, the MAC pinned there like the distributed router's gateway). That namespace also
//! holds 169.254.169.254 (metadata) and is where the node's DNS answers.
//!
//! The agent reads DHCP requests where they enter the node (a packet socket on the port's
//! tap, so a request is tied to the port it came from, not to what it claims) and writes the
//! reply straight back out of that tap: a reply never crosses the bridge, so it never reaches
//! a tunnel or another port. What is here is pure: which leases a node serves, the reply to a
//! request, and the frames around them.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

use dhcproto::v4::{self, DhcpOption, MessageType, OptionCode, UnknownOption};
use dhcproto::{Decodable, Decoder, Encodable, Encoder};
use isthmus_model::port::{dhcp_port_id, OWNER_DHCP};

use crate::node::{tap_name, NodeConfig};
use crate::router::{Namespace, RouterState};
use crate::view::{NodeView, Port};

/// Prefix of the per-network DHCP namespaces.
pub const NAMESPACE_PREFIX: &str = "qdhcp-";
/// Nova's metadata address, held by every DHCP namespace.
pub const METADATA_IP: Ipv4Addr = Ipv4Addr::new(169, 254, 169, 254);
/// Lease time handed out (Neutron's `dhcp_lease_duration` default).
pub const LEASE_SECONDS: u32 = 86_400;
/// DHCP server port.
pub const SERVER_PORT: u16 = 67;
/// DHCP client port.
pub const CLIENT_PORT: u16 = 68;

/// The DHCP namespace of a network.
pub fn namespace_name(network_id: &str) -> String {
    format!("{NAMESPACE_PREFIX}{network_id}")
}

/// The namespace-side device of a DHCP port.
pub fn interface_name(port_id: &str) -> String {
    format!("ns-{}", port_id.get(..11).unwrap_or(port_id))
}

/// The network's DHCP port, if the view has it.
pub fn dhcp_port<'a>(view: &'a NodeView, network_id: &str) -> Option<&'a Port> {
    view.ports
        .get(&dhcp_port_id(network_id))
        .filter(|p| p.device_owner == OWNER_DHCP && p.network_id == network_id)
}

/// The DHCP namespaces `node` runs: one per network with a local port and a DHCP port, with
/// the DHCP port's MAC and addresses, 169.254.169.254, and every bound port of the network
/// as a permanent neighbour (answers to instances need no ARP across the overlay).
pub fn namespaces(view: &NodeView, node: &NodeConfig) -> RouterState {
    let mut state = RouterState::new();
    for port in view.ports.values().filter(|p| p.host_id == node.name) {
        let ns_name = namespace_name(&port.network_id);
        if state.contains_key(&ns_name) {
            continue;
        }
        let Some(dhcp) = dhcp_port(view, &port.network_id) else {
            continue;
        };
        let Some(mut iface) = crate::router::interface(view, dhcp) else {
            continue;
        };
        if iface.addresses.is_empty() {
            continue;
        }
        iface.addresses.insert((IpAddr::V4(METADATA_IP), 32));
        let device = interface_name(&dhcp.id);
        let mut ns = Namespace::default();
        let subnets = dhcp
            .fixed_ips
            .iter()
            .map(|f| f.subnet_id.as_str())
            .collect();
        crate::router::neighbours_on(view, &subnets, &dhcp.id, &device, &mut ns.neighbours);
        ns.interfaces.insert(device, iface);
        state.insert(ns_name, ns);
    }
    state
}

/// Everything one port's DHCPv4 answers hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The port.
    pub port_id: String,
    /// Its MAC.
    pub mac: [u8; 6],
    /// Its address.
    pub ip: Ipv4Addr,
    /// Its subnet's prefix length.
    pub prefix: u8,
    /// Its subnet's gateway.
    pub router: Option<Ipv4Addr>,
    /// Name servers.
    pub dns: Vec<Ipv4Addr>,
    /// Domain (option 15), without the trailing dot.
    pub domain: String,
    /// Host name (option 12).
    pub hostname: String,
    /// Interface MTU (option 26).
    pub mtu: u16,
    /// Classless static routes (option 121): destination, next hop.
    pub routes: Vec<(Ipv4Addr, u8, Ipv4Addr)>,
    /// Lease time in seconds.
    pub lease_seconds: u32,
    /// Server identifier: the DHCP port's address on the subnet.
    pub server_ip: Ipv4Addr,
    /// The DHCP port's MAC (source of the replies).
    pub server_mac: [u8; 6],
    /// `extra_dhcp_opts` (IPv4), encoded: (code, value).
    pub extra: Vec<(u8, Vec<u8>)>,
}

fn v4(ip: IpAddr) -> Option<Ipv4Addr> {
    match ip {
        IpAddr::V4(a) => Some(a),
        IpAddr::V6(_) => None,
    }
}

/// The leases `node` serves, by the tap of their port: its bound ports' first IPv4 address
/// on a subnet with `enable_dhcp` whose network has a DHCP port with an address there.
pub fn leases(view: &NodeView, node: &NodeConfig) -> BTreeMap<String, Lease> {
    let mut out = BTreeMap::new();
    for port in view.ports.values().filter(|p| p.host_id == node.name) {
        if let Some(lease) = lease_of(view, port) {
            out.insert(tap_name(&port.id), lease);
        }
    }
    out
}

fn lease_of(view: &NodeView, port: &Port) -> Option<Lease> {
    let dhcp = dhcp_port(view, &port.network_id)?;
    let network = view.networks.get(&port.network_id)?;
    port.fixed_ips.iter().find_map(|fixed| {
        let ip = v4(fixed.ip_address)?;
        let s = view.subnet_info(&fixed.subnet_id)?;
        if !s.enable_dhcp || s.network_id != port.network_id {
            return None;
        }
        let server_ip = dhcp
            .fixed_ips
            .iter()
            .find(|f| f.subnet_id == fixed.subnet_id)
            .and_then(|f| v4(f.ip_address))?;
        let cidr = s.cidr;
        let router = s.gateway.and_then(v4);
        let dns: Vec<Ipv4Addr> = s.dns_nameservers.iter().copied().filter_map(v4).collect();
        let dns = if dns.is_empty() { vec![server_ip] } else { dns };
        let assignment = port
            .dns_assignment
            .iter()
            .find(|a| a.ip_address == fixed.ip_address);
        let hostname = assignment
            .map(|a| a.hostname.clone())
            .unwrap_or_else(|| format!("host-{}", ip.to_string().replace('.', "-")));
        let domain = port.dns_domain();
        // With option 121 a client ignores option 3, so the default route is repeated in it
        // (RFC 3442); metadata goes to this network's DHCP namespace, whether or not a
        // router serves the subnet.
        let mut routes = Vec::new();
        if let Some(gw) = router {
            routes.push((Ipv4Addr::UNSPECIFIED, 0, gw));
        }
        for r in &s.host_routes {
            let (dst, Some(hop)) = (r.destination, v4(r.nexthop)) else {
                continue;
            };
            if let Some(net) = v4(dst.network) {
                if dst.prefix == 0 {
                    routes.retain(|(_, p, _)| *p != 0);
                }
                routes.push((net, dst.prefix, hop));
            }
        }
        if !routes.iter().any(|(d, p, _)| *d == METADATA_IP && *p == 32) {
            routes.push((METADATA_IP, 32, server_ip));
        }
        Some(Lease {
            port_id: port.id.clone(),
            mac: port.mac_bytes()?,
            ip,
            prefix: cidr.prefix,
            router,
            dns,
            domain,
            hostname,
            mtu: u16::try_from(network.mtu).unwrap_or(u16::MAX),
            routes,
            lease_seconds: LEASE_SECONDS,
            server_ip,
            server_mac: dhcp.mac_bytes()?,
            extra: port
                .extra_dhcp_opts
                .iter()
                .filter(|o| o.ip_version == 4)
                .filter_map(|o| extra_option(&o.opt_name, &o.opt_value))
                .collect(),
        })
    })
}

/// Option names dnsmasq (and so Neutron's `extra_dhcp_opts`) knows, with their codes and how
/// their values are written.
const NAMED_OPTIONS: &[(&str, u8, Kind)] = &[
    ("netmask", 1, Kind::Addresses),
    ("router", 3, Kind::Addresses),
    ("dns-server", 6, Kind::Addresses),
    ("log-server", 7, Kind::Addresses),
    ("hostname", 12, Kind::Text),
    ("domain-name", 15, Kind::Text),
    ("root-path", 17, Kind::Text),
    ("mtu", 26, Kind::U16),
    ("broadcast", 28, Kind::Addresses),
    ("ntp-server", 42, Kind::Addresses),
    ("netbios-ns", 44, Kind::Addresses),
    ("lease-time", 51, Kind::U32),
    ("T1", 58, Kind::U32),
    ("T2", 59, Kind::U32),
    ("tftp-server", 66, Kind::Text),
    ("bootfile-name", 67, Kind::Text),
    ("server-ip-address", 150, Kind::Addresses),
    ("tftp-server-address", 150, Kind::Addresses),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Addresses,
    Text,
    U16,
    U32,
}

/// Codes whose values are addresses or numbers when given by number.
fn kind_of_code(code: u8) -> Kind {
    NAMED_OPTIONS
        .iter()
        .find(|(_, c, _)| *c == code)
        .map(|(_, _, k)| *k)
        .unwrap_or(Kind::Text)
}

/// One `extra_dhcp_opts` entry as (code, value bytes): by dnsmasq's name or by number, with
/// or without dnsmasq's `option:` prefix (dnsmasq's `tag:` selectors are not supported);
/// `None` for what cannot be encoded (the option is left out, the rest of the lease stands).
fn extra_option(name: &str, value: &str) -> Option<(u8, Vec<u8>)> {
    let name = name.trim_start_matches("option:");
    let (code, kind) = match name.parse::<u8>() {
        Ok(code) if code != 0 && code != 255 => (code, kind_of_code(code)),
        Ok(_) => return None,
        Err(_) => NAMED_OPTIONS
            .iter()
            .find(|(n, _, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, c, k)| (*c, *k))?,
    };
    let bytes = match kind {
        Kind::Addresses => {
            let mut out = Vec::new();
            for part in value.split(',') {
                out.extend(part.trim().parse::<Ipv4Addr>().ok()?.octets());
            }
            out
        }
        Kind::Text => value.as_bytes().to_vec(),
        Kind::U16 => value.trim().parse::<u16>().ok()?.to_be_bytes().to_vec(),
        Kind::U32 => value.trim().parse::<u32>().ok()?.to_be_bytes().to_vec(),
    };
    (!bytes.is_empty() && bytes.len() <= 255).then_some((code, bytes))
}

/// Why a request gets no answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Ignored {
    /// Not a DHCP request this server can read.
    #[error("malformed request: {0}")]
    Malformed(String),
    /// Its hardware address is not the port's (a spoofed or relayed request).
    #[error("client hardware address is not the port's")]
    WrongClient,
    /// A message type a server does not answer (RELEASE, DECLINE, an answer).
    #[error("no answer to this message type")]
    NotAnswered,
    /// A REQUEST for another server's offer.
    #[error("request for another server")]
    OtherServer,
}

/// The DHCP reply to `request` (a BOOTREQUEST's bytes) from `lease`'s port: OFFER to
/// DISCOVER; ACK to a REQUEST for the port's address (NAK for any other); ACK without an
/// address to INFORM.
pub fn answer(lease: &Lease, request: &[u8]) -> Result<Reply, Ignored> {
    let msg = v4::Message::decode(&mut Decoder::new(request))
        .map_err(|e| Ignored::Malformed(e.to_string()))?;
    if msg.opcode() != v4::Opcode::BootRequest {
        return Err(Ignored::NotAnswered);
    }
    if msg.chaddr().get(..6) != Some(&lease.mac[..]) {
        return Err(Ignored::WrongClient);
    }
    let kind = msg.opts().msg_type().ok_or(Ignored::NotAnswered)?;
    let requested = match msg.opts().get(OptionCode::RequestedIpAddress) {
        Some(DhcpOption::RequestedIpAddress(ip)) => Some(*ip),
        _ => None,
    };
    let server = match msg.opts().get(OptionCode::ServerIdentifier) {
        Some(DhcpOption::ServerIdentifier(ip)) => Some(*ip),
        _ => None,
    };
    let reply_type = match kind {
        MessageType::Discover => MessageType::Offer,
        MessageType::Request => {
            if server.is_some_and(|s| s != lease.server_ip) {
                return Err(Ignored::OtherServer);
            }
            // SELECTING/INIT-REBOOT name the address in option 50; RENEWING/REBINDING in
            // ciaddr.
            let asked = requested.unwrap_or(msg.ciaddr());
            if asked == lease.ip {
                MessageType::Ack
            } else {
                MessageType::Nak
            }
        }
        MessageType::Inform => MessageType::Ack,
        _ => return Err(Ignored::NotAnswered),
    };
    let mut reply = v4::Message::new_with_id(
        msg.xid(),
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        msg.giaddr(),
        &lease.mac,
    );
    reply
        .set_opcode(v4::Opcode::BootReply)
        .set_flags(msg.flags());
    let opts = reply.opts_mut();
    opts.insert(DhcpOption::MessageType(reply_type));
    opts.insert(DhcpOption::ServerIdentifier(lease.server_ip));
    if reply_type == MessageType::Nak {
        return Ok(Reply::new(reply, &msg, lease));
    }
    let informing = kind == MessageType::Inform;
    if informing {
        reply.set_ciaddr(msg.ciaddr());
    } else {
        reply.set_yiaddr(lease.ip);
    }
    let opts = reply.opts_mut();
    if !informing {
        opts.insert(DhcpOption::AddressLeaseTime(lease.lease_seconds));
        opts.insert(DhcpOption::Renewal(lease.lease_seconds / 2));
        opts.insert(DhcpOption::Rebinding(lease.lease_seconds / 8 * 7));
    }
    let mask = u32::MAX
        .checked_shl(32 - u32::from(lease.prefix))
        .unwrap_or(0);
    opts.insert(DhcpOption::SubnetMask(Ipv4Addr::from(mask)));
    opts.insert(DhcpOption::BroadcastAddr(Ipv4Addr::from(
        u32::from(lease.ip) | !mask,
    )));
    if let Some(gw) = lease.router {
        opts.insert(DhcpOption::Router(vec![gw]));
    }
    if !lease.dns.is_empty() {
        opts.insert(DhcpOption::DomainNameServer(lease.dns.clone()));
    }
    if !lease.domain.is_empty() {
        opts.insert(DhcpOption::DomainName(lease.domain.clone()));
    }
    opts.insert(DhcpOption::Hostname(lease.hostname.clone()));
    opts.insert(DhcpOption::InterfaceMtu(lease.mtu));
    if !lease.routes.is_empty() {
        opts.insert(DhcpOption::Unknown(UnknownOption::new(
            OptionCode::ClasslessStaticRoute,
            classless_routes(&lease.routes),
        )));
    }
    for (code, value) in &lease.extra {
        opts.insert(DhcpOption::Unknown(UnknownOption::new(
            OptionCode::from(*code),
            value.clone(),
        )));
    }
    Ok(Reply::new(reply, &msg, lease))
}

/// Option 121's encoding (RFC 3442): prefix length, the significant octets of the
/// destination, the router.
fn classless_routes(routes: &[(Ipv4Addr, u8, Ipv4Addr)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (dst, prefix, hop) in routes {
        out.push(*prefix);
        out.extend(&dst.octets()[..usize::from(prefix.div_ceil(8))]);
        out.extend(hop.octets());
    }
    out
}

/// A reply and where it goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The DHCP message.
    pub message: Vec<u8>,
    /// Destination IPv4 address: the client's address when it has one (renewals, INFORM),
    /// else broadcast when it asked for it, else the offered address.
    pub dst_ip: Ipv4Addr,
    /// Destination MAC: the client's, or broadcast.
    pub dst_mac: [u8; 6],
    /// The message type sent.
    pub kind: MessageType,
}

impl Reply {
    fn new(reply: v4::Message, request: &v4::Message, lease: &Lease) -> Reply {
        let kind = reply.opts().msg_type().unwrap_or(MessageType::Unknown(0));
        // RFC 2131 4.1: to ciaddr when set; NAKs and broadcast-flagged requests to
        // broadcast; otherwise unicast to the address being offered.
        let (dst_ip, dst_mac) = if !request.ciaddr().is_unspecified() && kind != MessageType::Nak {
            (request.ciaddr(), lease.mac)
        } else if request.flags().broadcast() || kind == MessageType::Nak {
            (Ipv4Addr::BROADCAST, [0xff; 6])
        } else {
            (reply.yiaddr(), lease.mac)
        };
        let mut message = Vec::with_capacity(576);
        // Encoding into a Vec cannot fail for a message built here.
        let _ = reply.encode(&mut Encoder::new(&mut message));
        Reply {
            message,
            dst_ip,
            dst_mac,
            kind,
        }
    }
}

/// The DHCP payload of an Ethernet frame that is an IPv4/UDP datagram to port 67, if it is.
pub fn request_payload(frame: &[u8]) -> Option<&[u8]> {
    if frame.get(12..14)? != [0x08, 0x00] {
        return None;
    }
    let ip = frame.get(14..)?;
    let header_len = usize::from(ip.first()? & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([*ip.get(2)?, *ip.get(3)?]));
    // Protocol UDP, not a fragment.
    if header_len < 20 || *ip.get(9)? != 17 || u16::from_be_bytes([ip[6], ip[7]]) & 0x3fff != 0 {
        return None;
    }
    let udp = ip.get(header_len..total.min(ip.len()))?;
    if u16::from_be_bytes([*udp.get(2)?, *udp.get(3)?]) != SERVER_PORT {
        return None;
    }
    let udp_len = usize::from(u16::from_be_bytes([*udp.get(4)?, *udp.get(5)?]));
    udp.get(8..udp_len.min(udp.len()))
}

/// The Internet checksum (RFC 1071) over `chunks` taken as one byte string.
pub(crate) fn checksum(chunks: &[&[u8]]) -> u16 {
    let mut sum: u32 = 0;
    for chunk in chunks {
        let mut words = chunk.chunks_exact(2);
        for w in &mut words {
            sum += u32::from(u16::from_be_bytes([w[0], w[1]]));
        }
        if let [last] = words.remainder() {
            sum += u32::from(*last) << 8;
        }
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// The Ethernet frame carrying `reply` from the DHCP port to the client (UDP 67 → 68).
pub fn reply_frame(lease: &Lease, reply: &Reply) -> Vec<u8> {
    let udp_len = 8 + reply.message.len();
    let total = 20 + udp_len;
    let mut frame = Vec::with_capacity(14 + total);
    frame.extend(reply.dst_mac);
    frame.extend(lease.server_mac);
    frame.extend([0x08, 0x00]);
    let mut ip = [0u8; 20];
    ip[0] = 0x45;
    ip[1] = 0xc0; // DSCP CS6, as network control traffic
    ip[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    ip[8] = 64;
    ip[9] = 17;
    ip[12..16].copy_from_slice(&lease.server_ip.octets());
    ip[16..20].copy_from_slice(&reply.dst_ip.octets());
    let sum = checksum(&[&ip]);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    frame.extend(ip);
    let mut udp = [0u8; 8];
    udp[0..2].copy_from_slice(&SERVER_PORT.to_be_bytes());
    udp[2..4].copy_from_slice(&CLIENT_PORT.to_be_bytes());
    udp[4..6].copy_from_slice(&(udp_len as u16).to_be_bytes());
    let mut pseudo = [0u8; 12];
    pseudo[0..4].copy_from_slice(&lease.server_ip.octets());
    pseudo[4..8].copy_from_slice(&reply.dst_ip.octets());
    pseudo[9] = 17;
    pseudo[10..12].copy_from_slice(&(udp_len as u16).to_be_bytes());
    let sum = match checksum(&[&pseudo, &udp, &reply.message]) {
        0 => 0xffff,
        s => s,
    };
    udp[6..8].copy_from_slice(&sum.to_be_bytes());
    frame.extend(udp);
    frame.extend(&reply.message);
    frame
}

#[cfg(test)]
mod tests;
