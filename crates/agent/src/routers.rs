//! Router namespaces in the kernel: reads back what the `qrouter-*` and `snat-*` namespaces
//! pinned in the agent's namespace directory hold, and applies [`router::Op`]s. Each namespace
//! is entered once per pass, on a thread of its own, with a netlink connection opened inside
//! it; its NAT chains change in one `nft` transaction run inside it.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;

use futures_util::TryStreamExt;
use isthmus_dataplane::router::{
    self, Announcement, Interface, Namespace, NatChain, Neighbour, Op, Route, RouterState, Rule,
    NAMESPACE_PREFIX, NAT_TABLE, SNAT_PREFIX,
};
use nix::ifaddrs::getifaddrs;
use nix::sys::socket::{sendto, socket, LinkAddr, MsgFlags, SockFlag, SockType};
use rtnetlink::packet_route::address::{AddressAttribute, AddressFlags, AddressHeaderFlags};
use rtnetlink::packet_route::link::LinkAttribute;
use rtnetlink::packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourMessage, NeighbourState,
};
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteMessage, RouteProtocol, RouteScope,
};
use rtnetlink::packet_route::rule::{RuleAction, RuleAttribute, RuleMessage};
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::{Handle, IpVersion, LinkUnspec, RouteMessageBuilder};

use crate::netlink::{format_mac, in_netns, link_index, link_name, parse_mac, Netlink};
use crate::{netns, AgentError};

fn kernel(what: &str, e: impl std::fmt::Display) -> AgentError {
    AgentError::Kernel(format!("{what}: {e}"))
}

/// Sysctls of a router namespace: it forwards; an interface answers ARP only for its own
/// addresses (several `qf-` share the external bridge); sources are not checked against the
/// reverse path (routing is asymmetric by design: replies may come back another way); and no
/// ICMP redirect is sent, which would teach a VM to bypass its router for the SNAT port on its
/// own subnet (and with it, its floating IP's NAT).
const SYSCTLS: &[(&str, &str)] = &[
    ("/proc/sys/net/ipv4/ip_forward", "1"),
    ("/proc/sys/net/ipv6/conf/all/forwarding", "1"),
    ("/proc/sys/net/ipv4/conf/all/arp_ignore", "1"),
    ("/proc/sys/net/ipv4/conf/all/arp_announce", "2"),
    ("/proc/sys/net/ipv4/conf/all/rp_filter", "0"),
    ("/proc/sys/net/ipv4/conf/all/send_redirects", "0"),
];

/// The same, per interface (an interface takes the namespace's defaults when it is created,
/// which is before the namespace's own sysctls are written).
const INTERFACE_SYSCTLS: &[(&str, &str)] = &[("rp_filter", "0"), ("send_redirects", "0")];

/// Sets an IPv6 setting of a device in the current thread's namespace.
fn ipv6_conf(device: &str, key: &str, value: bool) -> Result<(), AgentError> {
    let path = format!("/proc/sys/net/ipv6/conf/{device}/{key}");
    std::fs::write(&path, if value { "1" } else { "0" }).map_err(|e| kernel(&path, e))
}

/// Reads every router (and DHCP) namespace pinned in `dir`.
pub async fn observe(dir: &Path) -> Result<RouterState, AgentError> {
    let mut state = RouterState::new();
    let mut names = netns::list(dir, NAMESPACE_PREFIX)?;
    names.extend(netns::list(dir, SNAT_PREFIX)?);
    names.extend(netns::list(dir, isthmus_dataplane::dhcp::NAMESPACE_PREFIX)?);
    for name in names {
        let file = netns::open(dir, &name)?;
        let mut ns = in_netns(file, |handle| async move { read_namespace(&handle).await }).await?;
        ns.nat = read_nat(&dir.join(&name)).await?;
        state.insert(name, ns);
    }
    Ok(state)
}

/// `nft list table ip isthmus` (with `flags`) in the namespace pinned at `path`; `None` when
/// the table does not exist.
async fn nft_list(path: &Path, flags: &[&str]) -> Result<Option<Vec<u8>>, AgentError> {
    let netns = format!("--net={}", path.display());
    let out = tokio::process::Command::new("nsenter")
        .arg(netns)
        .arg("nft")
        .args(flags)
        .args(["list", "table", "ip", NAT_TABLE])
        .output()
        .await?;
    if out.status.success() {
        return Ok(Some(out.stdout));
    }
    let err = String::from_utf8_lossy(&out.stderr);
    if err.contains("No such file or directory") {
        Ok(None)
    } else {
        Err(kernel("nft list (router namespace)", err.trim()))
    }
}

/// The NAT table of the namespace pinned at `path` as nft prints it, if it has one.
pub async fn list_nat(path: &Path) -> Result<Option<String>, AgentError> {
    Ok(nft_list(path, &[])
        .await?
        .map(|text| String::from_utf8_lossy(&text).into_owned()))
}

/// The NAT chains of the namespace pinned at `path`, by the content hash they carry.
async fn read_nat(path: &Path) -> Result<BTreeMap<String, NatChain>, AgentError> {
    let Some(text) = nft_list(path, &["-j"]).await? else {
        return Ok(Default::default());
    };
    let json: serde_json::Value =
        serde_json::from_slice(&text).map_err(|e| kernel("nft -j output", e))?;
    Ok(isthmus_dataplane::nft::parse_observed(&json)
        .chains
        .into_iter()
        .map(|(chain, version)| {
            let chain_state = NatChain {
                version: version.unwrap_or_default(),
                rules: Vec::new(),
            };
            (chain, chain_state)
        })
        .collect())
}

/// Applies NAT table changes in the namespace pinned at `path`, one transaction.
async fn write_nat(path: &Path, ops: &[Op]) -> Result<(), AgentError> {
    let script: String = ops
        .iter()
        .filter_map(|op| match op {
            Op::Nat { plan, .. } => Some(plan.to_string()),
            _ => None,
        })
        .collect();
    if script.is_empty() {
        return Ok(());
    }
    let netns = format!("--net={}", path.display());
    crate::kernel::feed("nsenter", &[netns.as_str(), "nft", "-f", "-"], &script).await
}

async fn read_namespace(handle: &Handle) -> Result<Namespace, AgentError> {
    let mut ns = Namespace::default();
    let mut names = BTreeMap::new();
    let mut links = crate::netlink::links_without_stats(handle).execute();
    while let Some(link) = links
        .try_next()
        .await
        .map_err(|e| kernel("reading links", e))?
    {
        let Some(name) = link_name(&link).map(str::to_owned) else {
            continue;
        };
        if !router::is_interface(&name) {
            continue;
        }
        let (mut mac, mut mtu) = (String::new(), 0);
        for attr in &link.attributes {
            match attr {
                LinkAttribute::Address(bytes) => mac = format_mac(bytes),
                LinkAttribute::Mtu(m) => mtu = *m,
                _ => {}
            }
        }
        names.insert(link.header.index, name.clone());
        ns.interfaces.insert(
            name.clone(),
            Interface {
                network_id: String::new(),
                peer: router::peer_of(&name),
                bridge: String::new(),
                mac,
                mtu,
                addresses: Default::default(),
            },
        );
    }
    let mut addresses = handle.address().get().execute();
    while let Some(m) = addresses
        .try_next()
        .await
        .map_err(|e| kernel("reading addresses", e))?
    {
        let Some(name) = names.get(&m.header.index) else {
            continue;
        };
        for attr in &m.attributes {
            if let AddressAttribute::Address(ip) = attr {
                // Link-local addresses come with the interface.
                let link_local =
                    matches!(ip, IpAddr::V6(v6) if v6.segments()[0] & 0xffc0 == 0xfe80);
                if let (false, Some(i)) = (link_local, ns.interfaces.get_mut(name)) {
                    i.addresses.insert((*ip, m.header.prefix_len));
                }
            }
        }
    }
    let mut neighbours = handle.neighbours().get().execute();
    while let Some(m) = neighbours
        .try_next()
        .await
        .map_err(|e| kernel("reading neighbours", e))?
    {
        let Some(device) = names.get(&m.header.ifindex) else {
            continue;
        };
        if m.header.state != NeighbourState::Permanent {
            continue;
        }
        let (mut ip, mut mac) = (None, None);
        for attr in &m.attributes {
            match attr {
                NeighbourAttribute::Destination(NeighbourAddress::Inet(a)) => {
                    ip = Some(IpAddr::V4(*a))
                }
                NeighbourAttribute::Destination(NeighbourAddress::Inet6(a)) => {
                    ip = Some(IpAddr::V6(*a))
                }
                NeighbourAttribute::LinkLayerAddress(bytes) => mac = Some(format_mac(bytes)),
                _ => {}
            }
        }
        if let (Some(ip), Some(mac)) = (ip, mac) {
            ns.neighbours.insert(Neighbour {
                device: device.clone(),
                ip,
                mac,
            });
        }
    }
    for family in [AddressFamily::Inet, AddressFamily::Inet6] {
        let mut message = RouteMessage::default();
        message.header.address_family = family;
        let mut routes = handle.route().get(message).execute();
        while let Some(m) = routes
            .try_next()
            .await
            .map_err(|e| kernel("reading routes", e))?
        {
            if m.header.protocol != RouteProtocol::Static {
                continue;
            }
            let (mut destination, mut via, mut device) = (None, None, None);
            let mut table = u32::from(m.header.table);
            for attr in &m.attributes {
                match attr {
                    RouteAttribute::Destination(a) => destination = route_ip(a),
                    RouteAttribute::Gateway(a) => via = route_ip(a),
                    RouteAttribute::Oif(i) => device = names.get(i).cloned(),
                    RouteAttribute::Table(t) => table = *t,
                    _ => {}
                }
            }
            let destination = destination.unwrap_or(match family {
                AddressFamily::Inet6 => IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
                _ => IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
            });
            if let Some(device) = device {
                ns.routes.insert(Route {
                    table,
                    destination,
                    prefix: m.header.destination_prefix_length,
                    via,
                    device,
                });
            }
        }
    }
    let mut rules = handle.rule().get(IpVersion::V4).execute();
    while let Some(m) = rules
        .try_next()
        .await
        .map_err(|e| kernel("reading rules", e))?
    {
        if let Some(rule) = rule_of(&m) {
            ns.rules.insert(rule);
        }
    }
    Ok(ns)
}

/// A source-prefix rule as [`Rule`] (the kernel's own rules have no source).
fn rule_of(m: &RuleMessage) -> Option<Rule> {
    let (mut from, mut priority) = (None, 0);
    let mut table = u32::from(m.header.table);
    for attr in &m.attributes {
        match attr {
            RuleAttribute::Source(ip) => from = Some(*ip),
            RuleAttribute::Priority(p) => priority = *p,
            RuleAttribute::Table(t) => table = *t,
            _ => {}
        }
    }
    Some(Rule {
        priority,
        from: from?,
        prefix: m.header.src_len,
        table,
    })
}

fn route_ip(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

/// Applies `ops` (from [`router::plan`]) to the namespaces pinned in `dir`; `netlink` is the
/// node's connection, which creates the veths. Every namespace is tried; the first failure is
/// returned.
pub async fn apply(netlink: &Netlink, dir: &Path, ops: &[Op]) -> Result<(), AgentError> {
    let mut by_namespace: BTreeMap<&str, Vec<Op>> = BTreeMap::new();
    for op in ops {
        by_namespace
            .entry(op.namespace())
            .or_default()
            .push(op.clone());
    }
    let mut first_error = None;
    for (name, ops) in by_namespace {
        if let Err(e) = apply_namespace(netlink, dir, name, ops).await {
            first_error.get_or_insert(e);
        }
    }
    first_error.map_or(Ok(()), Err)
}

async fn apply_namespace(
    netlink: &Netlink,
    dir: &Path,
    name: &str,
    ops: Vec<Op>,
) -> Result<(), AgentError> {
    if ops.contains(&Op::DelNamespace(name.to_owned())) {
        // Its interfaces and their peers on the bridges go with it.
        return netns::delete(dir, name);
    }
    let created = ops.contains(&Op::AddNamespace(name.to_owned()));
    if created {
        netns::create(dir, name)?;
    }
    // Veths are removed and made from the node's side: deleting the peer takes the router's
    // end with it, so a recreated interface finds its names free.
    for op in &ops {
        match op {
            Op::DelInterface { name, .. } => netlink.delete_link(&router::peer_of(name)).await?,
            Op::AddInterface {
                name, interface, ..
            } => {
                let file = netns::open(dir, op.namespace())?;
                netlink
                    .add_veth(&interface.peer, name, &interface.mac, interface.mtu, &file)
                    .await?
            }
            _ => {}
        }
    }
    let file = netns::open(dir, name)?;
    let nat_ops = ops.clone();
    in_netns(file, move |handle| async move {
        if created {
            for (path, value) in SYSCTLS {
                std::fs::write(path, value).map_err(|e| kernel(path, e))?;
            }
            set_up(&handle, "lo").await?;
        }
        for op in &ops {
            apply_inside(&handle, op).await?;
        }
        Ok(())
    })
    .await?;
    write_nat(&dir.join(name), &nat_ops).await
}

async fn index(handle: &Handle, name: &str) -> Result<u32, AgentError> {
    link_index(handle, name)
        .await?
        .ok_or_else(|| AgentError::Kernel(format!("{name} does not exist")))
}

async fn set_up(handle: &Handle, name: &str) -> Result<(), AgentError> {
    let i = index(handle, name).await?;
    handle
        .link()
        .set(LinkUnspec::new_with_index(i).up().build())
        .execute()
        .await
        .map_err(|e| kernel(&format!("setting {name} up"), e))
}

fn neighbour_message(index: u32, n: &Neighbour) -> NeighbourMessage {
    let mut m = NeighbourMessage::default();
    m.header.ifindex = index;
    let (family, address) = match n.ip {
        IpAddr::V4(a) => (AddressFamily::Inet, NeighbourAddress::Inet(a)),
        IpAddr::V6(a) => (AddressFamily::Inet6, NeighbourAddress::Inet6(a)),
    };
    m.header.family = family;
    m.attributes.push(NeighbourAttribute::Destination(address));
    m
}

async fn route_message(handle: &Handle, r: &Route) -> Result<RouteMessage, AgentError> {
    let device = index(handle, &r.device).await?;
    let mut builder = RouteMessageBuilder::<IpAddr>::new()
        .destination_prefix(r.destination, r.prefix)
        .map_err(|e| kernel("building a route", e))?;
    builder = match r.via {
        Some(via) => builder
            .gateway(via)
            .map_err(|e| kernel("building a route", e))?,
        None => builder.scope(RouteScope::Link),
    };
    Ok(builder
        .output_interface(device)
        .table_id(r.table)
        .protocol(RouteProtocol::Static)
        .build())
}

/// One op inside the router's namespace (namespace and veth creation happen outside).
async fn apply_inside(handle: &Handle, op: &Op) -> Result<(), AgentError> {
    match op {
        Op::AddNamespace(_) | Op::DelNamespace(_) => Ok(()),
        Op::AddInterface {
            name, interface, ..
        } => {
            // Before it comes up: the same address and MAC live on every node, so duplicate
            // address detection would find the other nodes' copies; and an interface with no
            // IPv6 subnet keeps quiet on the network (no multicast reports flooded to every
            // node).
            ipv6_conf(name, "accept_dad", false)?;
            let v6 = interface.addresses.iter().any(|(ip, _)| ip.is_ipv6());
            ipv6_conf(name, "disable_ipv6", !v6)?;
            for (key, value) in INTERFACE_SYSCTLS {
                let path = format!("/proc/sys/net/ipv4/conf/{name}/{key}");
                std::fs::write(&path, value).map_err(|e| kernel(&path, e))?;
            }
            set_up(handle, name).await
        }
        Op::DelInterface { .. } => Ok(()),
        Op::AddAddress {
            device, address, ..
        } => {
            let i = index(handle, device).await?;
            if address.0.is_ipv6() {
                ipv6_conf(device, "disable_ipv6", false)?;
            }
            let mut request = handle.address().add(i, address.0, address.1);
            if address.0.is_ipv6() {
                let message = request.message_mut();
                message.header.flags |= AddressHeaderFlags::Nodad;
                message
                    .attributes
                    .push(AddressAttribute::Flags(AddressFlags::Nodad));
            }
            request.replace().execute().await.map_err(|e| {
                kernel(
                    &format!("adding {}/{} to {device}", address.0, address.1),
                    e,
                )
            })
        }
        Op::DelAddress {
            device, address, ..
        } => {
            let i = index(handle, device).await?;
            let mut addresses = handle
                .address()
                .get()
                .set_link_index_filter(i)
                .set_address_filter(address.0)
                .execute();
            while let Some(m) = addresses
                .try_next()
                .await
                .map_err(|e| kernel("reading addresses", e))?
            {
                handle
                    .address()
                    .del(m)
                    .execute()
                    .await
                    .map_err(|e| kernel(&format!("removing {} from {device}", address.0), e))?;
            }
            Ok(())
        }
        Op::AddNeighbour(_, n) => {
            let i = index(handle, &n.device).await?;
            handle
                .neighbours()
                .add(i, n.ip)
                .link_layer_address(&parse_mac(&n.mac)?)
                .state(NeighbourState::Permanent)
                .replace()
                .execute()
                .await
                .map_err(|e| kernel(&format!("adding neighbour {} on {}", n.ip, n.device), e))
        }
        Op::DelNeighbour(_, n) => {
            let Some(i) = link_index(handle, &n.device).await? else {
                return Ok(());
            };
            handle
                .neighbours()
                .del(neighbour_message(i, n))
                .execute()
                .await
                .map_err(|e| kernel(&format!("removing neighbour {} on {}", n.ip, n.device), e))
        }
        Op::AddRoute(_, r) => handle
            .route()
            .add(route_message(handle, r).await?)
            .replace()
            .execute()
            .await
            .map_err(|e| kernel(&format!("adding route {}/{}", r.destination, r.prefix), e)),
        Op::DelRoute(_, r) => {
            // A route whose device is gone went with it.
            if link_index(handle, &r.device).await?.is_none() {
                return Ok(());
            }
            handle
                .route()
                .del(route_message(handle, r).await?)
                .execute()
                .await
                .map_err(|e| kernel(&format!("removing route {}/{}", r.destination, r.prefix), e))
        }
        Op::AddRule(_, r) => {
            let IpAddr::V4(from) = r.from else {
                return Err(AgentError::Kernel(format!(
                    "rule from {}: IPv4 only",
                    r.from
                )));
            };
            handle
                .rule()
                .add()
                .v4()
                .source_prefix(from, r.prefix)
                .table_id(r.table)
                .priority(r.priority)
                .action(RuleAction::ToTable)
                .execute()
                .await
                .map_err(|e| kernel(&format!("adding rule from {}/{}", r.from, r.prefix), e))
        }
        Op::DelRule(_, r) => {
            let mut rules = handle.rule().get(IpVersion::V4).execute();
            while let Some(m) = rules
                .try_next()
                .await
                .map_err(|e| kernel("reading rules", e))?
            {
                if rule_of(&m).as_ref() == Some(r) {
                    handle.rule().del(m).execute().await.map_err(|e| {
                        kernel(&format!("removing rule from {}/{}", r.from, r.prefix), e)
                    })?;
                }
            }
            Ok(())
        }
        Op::Nat { .. } => Ok(()),
    }
}

/// Sends one gratuitous ARP per announcement, from inside its namespace (after the interface's
/// node side is on its bridge).
pub async fn announce(dir: &Path, announcements: &[Announcement]) -> Result<(), AgentError> {
    let mut by_namespace: BTreeMap<&str, Vec<Announcement>> = BTreeMap::new();
    for a in announcements {
        by_namespace
            .entry(a.namespace.as_str())
            .or_default()
            .push(a.clone());
    }
    for (name, list) in by_namespace {
        let file = netns::open(dir, name)?;
        in_netns(file, move |handle| async move {
            let mut arps = Vec::new();
            for a in &list {
                arps.push((index(&handle, &a.device).await?, parse_mac(&a.mac)?, a.ip));
            }
            // A router's announcements are rare (a floating IP moving): a socket per pass.
            PacketSocket::new()?.gratuitous_arps(&arps)
        })
        .await?;
    }
    Ok(())
}

/// A raw packet socket of the namespace it was made in, for gratuitous ARPs (protocol 0: it
/// receives nothing). Closing one waits for the kernel's RCU grace period (about 10 ms), so
/// one is kept, never one made per announcement.
pub(crate) struct PacketSocket {
    fd: OwnedFd,
    /// The namespace's interfaces' link addresses by index, as `getifaddrs` reports them: of a
    /// raw packet socket's destination only the index counts (the frame carries the rest), and
    /// the kernel takes the protocol from the frame when the address has none.
    links: HashMap<usize, LinkAddr>,
}

impl PacketSocket {
    /// A socket in the current thread's namespace.
    pub(crate) fn new() -> Result<PacketSocket, AgentError> {
        let fd = socket(
            nix::sys::socket::AddressFamily::Packet,
            SockType::Raw,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
        .map_err(|e| kernel("packet socket", e))?;
        Ok(PacketSocket {
            fd,
            links: HashMap::new(),
        })
    }

    /// The link address of interface `index`, the namespace's interfaces read again when it is
    /// not known yet (made since the last read).
    fn link(&mut self, index: u32) -> Result<LinkAddr, AgentError> {
        let index = index as usize;
        if !self.links.contains_key(&index) {
            let interfaces = getifaddrs().map_err(|e| kernel("listing interfaces", e))?;
            self.links = interfaces
                .filter_map(|i| i.address?.as_link_addr().copied())
                .map(|link| (link.ifindex(), link))
                .collect();
        }
        self.links.get(&index).copied().ok_or_else(|| {
            kernel(
                "sending a gratuitous ARP",
                std::io::Error::other(format!("no interface with index {index}")),
            )
        })
    }

    /// Sends a gratuitous ARP (an ARP request for `ip` from `ip`) for each `(index, mac, ip)`
    /// out of interface `index`.
    pub(crate) fn gratuitous_arps(
        &mut self,
        announcements: &[(u32, Vec<u8>, std::net::Ipv4Addr)],
    ) -> Result<(), AgentError> {
        const BROADCAST: [u8; 6] = [0xff; 6];
        const ETH_P_ARP: u16 = 0x0806;
        for (index, mac, ip) in announcements {
            let mut frame = Vec::with_capacity(60);
            frame.extend_from_slice(&BROADCAST);
            frame.extend_from_slice(mac);
            frame.extend_from_slice(&ETH_P_ARP.to_be_bytes());
            // Ethernet, IPv4, 6-byte and 4-byte addresses, request.
            frame.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
            frame.extend_from_slice(mac);
            frame.extend_from_slice(&ip.octets());
            frame.extend_from_slice(&[0; 6]);
            frame.extend_from_slice(&ip.octets());
            frame.resize(60, 0);
            let to = self.link(*index)?;
            sendto(self.fd.as_raw_fd(), &frame, &to, MsgFlags::empty())
                .map_err(|e| kernel("sending a gratuitous ARP", e))?;
        }
        Ok(())
    }
}
