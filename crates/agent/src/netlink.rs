//! The agent's netlink adapter (rtnetlink): the node's links, bridges, tunnels and forwarding
//! entries; veths created straight into a pod's or router's network namespace, and the inside
//! configured from within it. Each call is one netlink request per object, with no process
//! spawned.

use std::collections::BTreeSet;
use std::fs::File;
use std::future::Future;
use std::net::IpAddr;
use std::os::fd::AsRawFd;

use futures_util::{StreamExt, TryStreamExt};
use isthmus_dataplane::l2::{Bridge, Device, Fdb, Observed, Op, Pin, Vxlan, VXLAN_PORT};
use isthmus_dataplane::pod::PodInterface;
use nix::sys::socket::{setsockopt, sockopt};
use rtnetlink::packet_core::{
    NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_APPEND, NLM_F_CREATE, NLM_F_REPLACE,
    NLM_F_REQUEST,
};
use rtnetlink::packet_route::address::{AddressAttribute, AddressFlags, AddressHeaderFlags};
use rtnetlink::packet_route::link::{
    AfSpecInet6, AfSpecUnspec, In6AddrGenMode, InfoBridge, InfoData, InfoKind, InfoVeth, InfoVxlan,
    LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use rtnetlink::packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use rtnetlink::packet_route::{AddressFamily, RouteNetlinkMessage};
use rtnetlink::{
    Handle, LinkBridge, LinkMessageBuilder, LinkUnspec, LinkVeth, LinkVxlan, RouteMessageBuilder,
};

use crate::AgentError;

fn kernel(what: &str, e: impl std::fmt::Display) -> AgentError {
    AgentError::Kernel(format!("{what}: {e}"))
}

/// Whether a netlink error is "no such device" (the thing is already gone).
fn is_absent(e: &rtnetlink::Error) -> bool {
    matches!(e, rtnetlink::Error::NetlinkError(m)
        if m.code.is_some_and(|c| c.get() == -libc::ENODEV))
}

/// Whether a netlink error is "file exists" (the thing is there already).
fn is_exists(e: &rtnetlink::Error) -> bool {
    matches!(e, rtnetlink::Error::NetlinkError(m)
        if m.code.is_some_and(|c| c.get() == -libc::EEXIST))
}

/// Parses `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(mac: &str) -> Result<Vec<u8>, AgentError> {
    let bytes: Vec<u8> = mac
        .split(':')
        .map(|b| u8::from_str_radix(b, 16))
        .collect::<Result<_, _>>()
        .map_err(|_| AgentError::Kernel(format!("bad MAC address '{mac}'")))?;
    if bytes.len() == 6 {
        Ok(bytes)
    } else {
        Err(AgentError::Kernel(format!("bad MAC address '{mac}'")))
    }
}

/// Formats a MAC as `aa:bb:cc:dd:ee:ff`.
pub fn format_mac(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// A netlink connection in the agent's own namespace.
#[derive(Clone)]
pub struct Netlink {
    handle: Handle,
}

impl Netlink {
    /// Opens the connection (its reader runs on the current tokio runtime).
    pub fn connect() -> Result<Netlink, AgentError> {
        Ok(Netlink {
            handle: open_connection()?,
        })
    }

    /// Creates a veth whose host side is `host` (left down: it is attached once its filters
    /// are in place) and whose other side is created directly inside `netns` (a pod's or a
    /// router's) as `ifname` with `mac` and `mtu`.
    pub async fn add_veth(
        &self,
        host: &str,
        ifname: &str,
        mac: &str,
        mtu: u32,
        netns: &File,
    ) -> Result<(), AgentError> {
        let peer = LinkMessageBuilder::<LinkUnspec>::new()
            .name(ifname.to_owned())
            .address(parse_mac(mac)?)
            .mtu(mtu)
            .setns_by_fd(netns.as_raw_fd())
            .build();
        let veth = LinkMessageBuilder::<LinkVeth>::new_with_info_kind(InfoKind::Veth)
            .name(host.to_owned())
            .mtu(mtu)
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
            .build();
        self.handle
            .link()
            .add(veth)
            .execute()
            .await
            .map_err(|e| kernel(&format!("creating veth {host} / {ifname}"), e))
    }

    /// Creates a veth with both ends in this namespace: `node_end` up, `bridge_end` left down
    /// (the L2 plan attaches it to its bridge, up, once its filters are in place).
    pub async fn add_pair(
        &self,
        node_end: &str,
        bridge_end: &str,
        mtu: u32,
    ) -> Result<(), AgentError> {
        let peer = LinkMessageBuilder::<LinkUnspec>::new()
            .name(bridge_end.to_owned())
            .mtu(mtu)
            .build();
        let veth = LinkMessageBuilder::<LinkVeth>::new_with_info_kind(InfoKind::Veth)
            .name(node_end.to_owned())
            .mtu(mtu)
            .up()
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
            .build();
        self.handle
            .link()
            .add(veth)
            .execute()
            .await
            .map_err(|e| kernel(&format!("creating veth {node_end} / {bridge_end}"), e))
    }

    /// Deletes a link (a veth with its peer, wherever that is); absent is not an error.
    pub async fn delete_link(&self, name: &str) -> Result<(), AgentError> {
        let Some(index) = link_index(&self.handle, name).await? else {
            return Ok(());
        };
        match self.handle.link().del(index).execute().await {
            Err(e) if !is_absent(&e) => Err(kernel(&format!("deleting {name}"), e)),
            _ => Ok(()),
        }
    }

    /// A link's index, if it exists.
    pub async fn find(&self, name: &str) -> Result<Option<u32>, AgentError> {
        link_index(&self.handle, name).await
    }

    /// A link's index and MAC address, if it exists.
    pub async fn index_and_mac(&self, name: &str) -> Result<Option<(u32, Vec<u8>)>, AgentError> {
        let Some(link) = link_message(&self.handle, name).await? else {
            return Ok(None);
        };
        let mac = link.attributes.iter().find_map(|a| match a {
            LinkAttribute::Address(bytes) => Some(bytes.clone()),
            _ => None,
        });
        Ok(mac.map(|mac| (link.header.index, mac)))
    }

    /// Whether a link exists.
    pub async fn has_link(&self, name: &str) -> Result<bool, AgentError> {
        Ok(link_index(&self.handle, name).await?.is_some())
    }

    /// Reads every link in one dump: the bridges and VXLAN devices the agent manages, and the
    /// other devices with their bridge, MTU and state. Forwarding entries are not read here.
    pub async fn links(&self) -> Result<Observed, AgentError> {
        let mut messages = Vec::new();
        let mut dump = links_without_stats(&self.handle).execute();
        while let Some(m) = dump
            .try_next()
            .await
            .map_err(|e| kernel("reading links", e))?
        {
            messages.push(m);
        }
        let names: std::collections::HashMap<u32, String> = messages
            .iter()
            .filter_map(|m| link_name(m).map(|n| (m.header.index, n.to_owned())))
            .collect();
        let mut observed = Observed::default();
        for m in &messages {
            let Some(name) = link_name(m).map(str::to_owned) else {
                continue;
            };
            let (mut mtu, mut master, mut kind, mut vxlan) = (0, None, None, (None, None));
            let mut nf_call = (false, false);
            let up = m.header.flags.contains(LinkFlags::Up);
            // A device waiting for the reaper is as good as gone.
            if m.attributes.contains(&LinkAttribute::Group(DOOMED_GROUP)) {
                continue;
            }
            for attr in &m.attributes {
                match attr {
                    LinkAttribute::Mtu(v) => mtu = *v,
                    LinkAttribute::Controller(i) => master = names.get(i).cloned(),
                    LinkAttribute::LinkInfo(infos) => {
                        for info in infos {
                            match info {
                                LinkInfo::Kind(k) => kind = Some(k.clone()),
                                LinkInfo::Data(InfoData::Bridge(data)) => {
                                    for d in data {
                                        match d {
                                            InfoBridge::NfCallIpTables(on) => nf_call.0 = *on,
                                            InfoBridge::NfCallIp6Tables(on) => nf_call.1 = *on,
                                            _ => {}
                                        }
                                    }
                                }
                                LinkInfo::Data(InfoData::Vxlan(data)) => {
                                    for d in data {
                                        match d {
                                            InfoVxlan::Id(id) => vxlan.0 = Some(*id),
                                            InfoVxlan::Local(ip) => vxlan.1 = Some(IpAddr::V4(*ip)),
                                            InfoVxlan::Local6(ip) => {
                                                vxlan.1 = Some(IpAddr::V6(*ip))
                                            }
                                            _ => {}
                                        }
                                    }
                                }
                                _ => {}
                            }
                        }
                    }
                    _ => {}
                }
            }
            match (kind, vxlan) {
                (Some(InfoKind::Bridge), _) if name.starts_with("brq") => {
                    observed.bridges.insert(
                        name.clone(),
                        Bridge {
                            network_id: String::new(),
                            mtu,
                            filtered: (nf_call.0 == nf_call.1).then_some(nf_call.0),
                        },
                    );
                }
                (Some(InfoKind::Vxlan), (Some(vni), Some(local))) if name.starts_with("vxlan-") => {
                    observed.vxlans.insert(
                        name.clone(),
                        Vxlan {
                            vni,
                            local,
                            mtu,
                            bridge: master.clone().unwrap_or_default(),
                        },
                    );
                }
                _ => {
                    observed.devices.insert(
                        name,
                        Device {
                            bridge: master,
                            mtu,
                            up,
                        },
                    );
                }
            }
        }
        Ok(observed)
    }

    /// Keeps `device` (still down) from ever giving itself an IPv6 address: no link-local, so
    /// it sends no router solicitation nor report onto the tenant network once attached. One
    /// request, where the `disable_ipv6` sysctl retries for the kernel's rtnl lock in a loop
    /// while other requests hold it (as concurrent ADDs do).
    pub async fn without_ipv6_addresses(&self, device: &str) -> Result<(), AgentError> {
        // By name: the kernel finds the device itself (no lookup request first).
        let mut message = LinkUnspec::new_with_name(device).build();
        message
            .attributes
            .push(LinkAttribute::AfSpecUnspec(vec![AfSpecUnspec::Inet6(
                vec![AfSpecInet6::AddrGenMode(In6AddrGenMode::None)],
            )]));
        match self.handle.link().set(message).execute().await {
            Err(e) if !is_absent(&e) => Err(kernel(&format!("setting {device}'s IPv6"), e)),
            _ => Ok(()),
        }
    }

    /// Sets a device's bridge (`Some`, with whether the device is up) or detaches it
    /// (`None`), with an MTU. A device that went away meanwhile needs nothing.
    pub async fn set_link(
        &self,
        device: &str,
        bridge: Option<(&str, bool)>,
        mtu: Option<u32>,
    ) -> Result<(), AgentError> {
        let mut message = LinkUnspec::new_with_name(device);
        if let Some(mtu) = mtu {
            message = message.mtu(mtu);
        }
        message = match bridge {
            Some((bridge, up)) => {
                let master = link_index(&self.handle, bridge)
                    .await?
                    .ok_or_else(|| AgentError::Kernel(format!("bridge {bridge} is missing")))?;
                let message = message.controller(master);
                if up {
                    message.up()
                } else {
                    message.down()
                }
            }
            None => message.nocontroller(),
        };
        match self.handle.link().set(message.build()).execute().await {
            Err(e) if !is_absent(&e) => Err(kernel(&format!("setting {device}"), e)),
            _ => Ok(()),
        }
    }
}

/// Turns IPv6 off on a device of the agent's namespace (nothing to do where IPv6 is absent
/// or the device went away meanwhile).
fn disable_ipv6(device: &str) -> Result<(), AgentError> {
    let path = format!("/proc/sys/net/ipv6/conf/{device}/disable_ipv6");
    match std::fs::write(&path, "1") {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(kernel(&path, e)),
        _ => Ok(()),
    }
}

/// How long a netlink answer is awaited where a lost one would hold up more than its caller.
const ANSWER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// The answer to a netlink request, or an error when none came within [`ANSWER_TIMEOUT`].
async fn answered<T>(request: impl Future<Output = T>) -> Result<T, AgentError> {
    tokio::time::timeout(ANSWER_TIMEOUT, request)
        .await
        .map_err(|_| AgentError::Kernel("netlink gave no answer in time".into()))
}

/// The link group of devices waiting to be deleted ("ISTH").
const DOOMED_GROUP: u32 = 0x4953_5448;

/// Deletes devices in batches. The kernel waits out an RCU grace period (~20 ms here) per
/// deletion request; a request for a link group deletes every device in it for one wait, so
/// devices (detached and down at once: no traffic) are moved to a group and the group is
/// deleted in one request per batch. A batch holds the kernel's rtnl lock, which every ADD's
/// veth and bridge port need, for its whole length: batches stay small (see [`REAP_BATCH`]) so
/// a burst of DELs never stalls the ADDs beside it for long.
pub struct Reaper {
    netlink: Netlink,
    wake: tokio::sync::Notify,
    rounds: tokio::sync::watch::Sender<u64>,
    /// Devices detached and down, waiting for a batch.
    pending: std::sync::Mutex<std::collections::VecDeque<u32>>,
}

/// Most devices one deletion request takes (measured: 200 pod veths in one request held
/// ADDs up to 70 ms at 4 workers).
const REAP_BATCH: usize = 16;

/// Logs a reaper request that failed, or went unanswered, other than for its device being
/// gone already.
fn warn_failed(what: &str, answer: Result<Result<(), rtnetlink::Error>, AgentError>) {
    let error = match answer {
        Ok(Ok(())) => return,
        Ok(Err(e)) if is_absent(&e) => return,
        Ok(Err(e)) => e.to_string(),
        Err(e) => e.to_string(),
    };
    tracing::warn!("{what}: {error}");
}

impl Reaper {
    /// A reaper; its loop runs on the current runtime until the process ends.
    pub fn start(netlink: Netlink) -> std::sync::Arc<Reaper> {
        let reaper = std::sync::Arc::new(Reaper {
            netlink,
            wake: tokio::sync::Notify::new(),
            rounds: tokio::sync::watch::Sender::new(0),
            pending: std::sync::Mutex::default(),
        });
        let runner = reaper.clone();
        tokio::spawn(async move {
            loop {
                runner.wake.notified().await;
                // Let concurrent deletions join this batch.
                tokio::time::sleep(std::time::Duration::from_millis(2)).await;
                loop {
                    let batch: Vec<u32> = {
                        let mut pending = runner.pending.lock().unwrap_or_else(|e| e.into_inner());
                        let n = pending.len().min(REAP_BATCH);
                        pending.drain(..n).collect()
                    };
                    if batch.is_empty() {
                        break;
                    }
                    runner.reap(&batch).await;
                    runner.rounds.send_modify(|r| *r += 1);
                }
            }
        });
        reaper
    }

    /// Deletes the devices `batch` (by index) in one request. Each answer is awaited for
    /// [`ANSWER_TIMEOUT`] at most: the reaper serves every deletion of the node, and the devices
    /// of a round whose answer was lost are looked for again by their callers.
    async fn reap(&self, batch: &[u32]) {
        let link = self.netlink.handle.link();
        for &index in batch {
            let mut doom = LinkUnspec::new_with_index(index).build();
            doom.attributes.push(LinkAttribute::Group(DOOMED_GROUP));
            let answer = answered(link.set(doom).execute()).await;
            warn_failed(&format!("marking device {index} for deletion"), answer);
        }
        let mut message = LinkMessageBuilder::<LinkUnspec>::new().build();
        message.attributes.push(LinkAttribute::Group(DOOMED_GROUP));
        let answer = answered(link.del_with_message(message).execute()).await;
        warn_failed("deleting doomed devices", answer);
    }

    /// Deletes `name` (and its veth peer, wherever it is); returns when it is gone.
    pub async fn delete(&self, name: &str) -> Result<(), AgentError> {
        let Some(index) = link_index(&self.netlink.handle, name).await? else {
            return Ok(());
        };
        let doom = LinkUnspec::new_with_index(index)
            .nocontroller()
            .down()
            .build();
        match answered(self.netlink.handle.link().set(doom).execute()).await? {
            Ok(()) => {}
            Err(e) if is_absent(&e) => return Ok(()),
            Err(e) => return Err(kernel(&format!("taking {name} down for deletion"), e)),
        }
        // The round count is read before the device is queued: the round that takes it is
        // always a later one.
        let mut rounds = self.rounds.subscribe();
        loop {
            let seen = *rounds.borrow_and_update();
            {
                let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
                // Queued once; again only when a batch took it and it is still there.
                if !pending.contains(&index) {
                    pending.push_back(index);
                }
            }
            self.wake.notify_one();
            rounds
                .wait_for(|r| *r > seen)
                .await
                .map_err(|_| AgentError::Kernel("the device reaper stopped".into()))?;
            if !self.netlink.has_link(name).await? {
                return Ok(());
            }
        }
    }
}

impl Netlink {
    /// Reads the static forwarding entries (with a remote) on the managed VXLAN devices, and the
    /// static entries (pins) on the other devices attached to managed bridges.
    pub async fn fdb(
        &self,
        observed: &Observed,
    ) -> Result<(BTreeSet<Fdb>, BTreeSet<Pin>), AgentError> {
        let (mut entries, mut pins) = (BTreeSet::new(), BTreeSet::new());
        let attached = observed.devices.iter().filter(|(_, device)| {
            device
                .bridge
                .as_ref()
                .is_some_and(|b| observed.bridges.contains_key(b))
        });
        let names = observed.vxlans.keys().chain(attached.map(|(name, _)| name));
        let mut devices = std::collections::HashMap::new();
        for name in names {
            if let Some(index) = link_index(&self.handle, name).await? {
                devices.insert(index, name.clone());
            }
        }
        if devices.is_empty() {
            return Ok((entries, pins));
        }
        let mut request = self.handle.neighbours().get();
        request.message_mut().header.family = AddressFamily::Bridge;
        let mut dump = request.execute();
        while let Some(m) = dump
            .try_next()
            .await
            .map_err(|e| kernel("reading forwarding entries", e))?
        {
            let Some(device) = devices.get(&m.header.ifindex) else {
                continue;
            };
            let (mut mac, mut dst) = (None, None);
            for attr in &m.attributes {
                match attr {
                    NeighbourAttribute::LinkLayerAddress(bytes) => mac = Some(format_mac(bytes)),
                    NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)) => {
                        dst = Some(IpAddr::V4(*ip))
                    }
                    NeighbourAttribute::Destination(NeighbourAddress::Inet6(ip)) => {
                        dst = Some(IpAddr::V6(*ip))
                    }
                    // Bridge-family entries carry the remote without its family.
                    NeighbourAttribute::Destination(NeighbourAddress::Other(bytes)) => {
                        dst = match bytes.len() {
                            4 => <[u8; 4]>::try_from(bytes.as_slice()).ok().map(IpAddr::from),
                            16 => <[u8; 16]>::try_from(bytes.as_slice())
                                .ok()
                                .map(IpAddr::from),
                            _ => None,
                        }
                    }
                    _ => {}
                }
            }
            let Some(mac) = mac else { continue };
            if observed.vxlans.contains_key(device) {
                if let Some(dst) = dst {
                    entries.insert(Fdb {
                        device: device.clone(),
                        mac,
                        dst,
                    });
                }
            } else if m.header.state == NeighbourState::Noarp
                && m.header.flags.contains(NeighbourFlags::Controller)
            {
                pins.insert(Pin {
                    device: device.clone(),
                    mac,
                });
            }
        }
        Ok((entries, pins))
    }

    /// A static, sticky entry of the bridge (`bridge fdb ... master static sticky`).
    fn pin_message(index: u32, pin: &Pin) -> Result<NeighbourMessage, AgentError> {
        let mut m = NeighbourMessage::default();
        m.header.family = AddressFamily::Bridge;
        m.header.ifindex = index;
        m.header.state = NeighbourState::Noarp;
        m.header.flags = NeighbourFlags::Controller | NeighbourFlags::Sticky;
        m.attributes
            .push(NeighbourAttribute::LinkLayerAddress(parse_mac(&pin.mac)?));
        Ok(m)
    }

    async fn set_pin(&self, pin: &Pin, add: bool) -> Result<(), AgentError> {
        let Some(index) = link_index(&self.handle, &pin.device).await? else {
            return Ok(());
        };
        let m = Self::pin_message(index, pin)?;
        let mut message = NetlinkMessage::from(if add {
            RouteNetlinkMessage::NewNeighbour(m)
        } else {
            RouteNetlinkMessage::DelNeighbour(m)
        });
        if add {
            message.header.flags = NLM_F_CREATE | NLM_F_REPLACE;
        }
        match self.call(message).await {
            Err(e) if add || (!is_absent(&e) && !is_missing_entry(&e)) => {
                Err(kernel(&format!("pinning {} on {}", pin.mac, pin.device), e))
            }
            _ => Ok(()),
        }
    }

    async fn index(&self, name: &str) -> Result<u32, AgentError> {
        link_index(&self.handle, name)
            .await?
            .ok_or_else(|| AgentError::Kernel(format!("{name} does not exist")))
    }

    fn fdb_message(index: u32, f: &Fdb) -> Result<NeighbourMessage, AgentError> {
        let mut m = NeighbourMessage::default();
        m.header.family = AddressFamily::Bridge;
        m.header.ifindex = index;
        m.header.state = NeighbourState::Permanent;
        m.header.flags = NeighbourFlags::Own;
        m.attributes
            .push(NeighbourAttribute::LinkLayerAddress(parse_mac(&f.mac)?));
        m.attributes
            .push(NeighbourAttribute::Destination(match f.dst {
                IpAddr::V4(ip) => NeighbourAddress::Inet(ip),
                IpAddr::V6(ip) => NeighbourAddress::Inet6(ip),
            }));
        Ok(m)
    }

    /// Sends one request and waits for its acknowledgement.
    async fn call(
        &self,
        mut message: NetlinkMessage<RouteNetlinkMessage>,
    ) -> Result<(), rtnetlink::Error> {
        message.header.flags |= NLM_F_REQUEST | NLM_F_ACK;
        let mut handle = self.handle.clone();
        let mut answers = handle.request(message)?;
        while let Some(answer) = answers.next().await {
            if let NetlinkPayload::Error(e) = answer.payload {
                return Err(rtnetlink::Error::NetlinkError(e));
            }
        }
        Ok(())
    }

    /// Applies one L2 change (see [`Op`]). Bridges, tunnels and attached devices are the
    /// node's plumbing, with no address of their own: IPv6 is turned off on them so they never
    /// speak on the tenant network (router solicitations and multicast reports flooded to every
    /// node of the network).
    pub async fn apply(&self, op: &Op) -> Result<(), AgentError> {
        match op {
            // Before it is up: an attached device never speaks at all.
            Op::Attach { device, .. } => {
                disable_ipv6(device)?;
                self.apply_change(op).await
            }
            Op::AddBridge { name, .. } | Op::AddVxlan { name, .. } => {
                self.apply_change(op).await?;
                disable_ipv6(name)
            }
            _ => self.apply_change(op).await,
        }
    }

    async fn apply_change(&self, op: &Op) -> Result<(), AgentError> {
        let failed = |what: String| move |e: rtnetlink::Error| kernel(&what, e);
        match op {
            Op::AddBridge {
                name,
                mtu,
                filtered,
            } => self
                .handle
                .link()
                .add(
                    LinkBridge::new(name)
                        .mtu(*mtu)
                        .nf_call_iptables(*filtered)
                        .nf_call_ip6tables(*filtered)
                        .up()
                        .build(),
                )
                .execute()
                .await
                .map_err(failed(format!("creating bridge {name}"))),
            Op::SetFiltered { name, filtered } => {
                let mut message = LinkBridge::new(name)
                    .nf_call_iptables(*filtered)
                    .nf_call_ip6tables(*filtered)
                    .build();
                message.header.index = self.index(name).await?;
                // RTM_NEWLINK on the existing bridge: RTM_SETLINK ignores a kind's options.
                self.handle
                    .link()
                    .change(message)
                    .execute()
                    .await
                    .map_err(failed(format!("setting br_netfilter on {name}")))
            }
            Op::SetMtu { name, mtu } => {
                let index = self.index(name).await?;
                self.handle
                    .link()
                    .set(LinkUnspec::new_with_index(index).mtu(*mtu).build())
                    .execute()
                    .await
                    .map_err(failed(format!("setting the MTU of {name}")))
            }
            Op::AddVxlan { name, vxlan } => {
                let bridge = self.index(&vxlan.bridge).await?;
                let builder = LinkVxlan::new(name, vxlan.vni)
                    .port(VXLAN_PORT)
                    .learning(false);
                let builder = match vxlan.local {
                    IpAddr::V4(ip) => builder.local(ip),
                    IpAddr::V6(ip) => builder.local6(ip),
                };
                self.handle
                    .link()
                    .add(builder.mtu(vxlan.mtu).controller(bridge).up().build())
                    .execute()
                    .await
                    .map_err(failed(format!("creating {name}")))
            }
            Op::Attach {
                device,
                bridge,
                mtu,
                up,
            } => self.set_link(device, Some((bridge, *up)), Some(*mtu)).await,
            Op::Detach { device } => self.set_link(device, None, None).await,
            Op::DelVxlan { name } | Op::DelBridge { name } => self.delete_link(name).await,
            Op::AddPin(pin) => self.set_pin(pin, true).await,
            Op::DelPin(pin) => self.set_pin(pin, false).await,
            Op::AddFdb(f) => self.add_fdb(self.index(&f.device).await?, f).await,
            Op::DelFdb(f) => match link_index(&self.handle, &f.device).await? {
                Some(index) => self.del_fdb(index, f).await,
                None => Ok(()),
            },
        }
    }

    /// Appends a forwarding entry (the flood entry, all-zero MAC, has one remote per node).
    async fn add_fdb(&self, index: u32, f: &Fdb) -> Result<(), AgentError> {
        let mut message = NetlinkMessage::from(RouteNetlinkMessage::NewNeighbour(
            Self::fdb_message(index, f)?,
        ));
        message.header.flags = NLM_F_CREATE | NLM_F_APPEND;
        self.call(message).await.map_err(|e| {
            kernel(
                &format!("adding {} dst {} on {}", f.mac, f.dst, f.device),
                e,
            )
        })
    }

    async fn del_fdb(&self, index: u32, f: &Fdb) -> Result<(), AgentError> {
        let message = NetlinkMessage::from(RouteNetlinkMessage::DelNeighbour(Self::fdb_message(
            index, f,
        )?));
        match self.call(message).await {
            Err(e) if !is_absent(&e) && !is_missing_entry(&e) => Err(kernel(
                &format!("removing {} dst {} on {}", f.mac, f.dst, f.device),
                e,
            )),
            _ => Ok(()),
        }
    }

    /// Applies a run of forwarding-entry changes with many requests in flight (a full resync
    /// has tens of thousands), resolving each device once.
    pub async fn apply_fdb(&self, ops: &[&Op]) -> Result<(), AgentError> {
        let mut indexes = std::collections::HashMap::new();
        for op in ops {
            if let Op::AddFdb(f) | Op::DelFdb(f) = op {
                if !indexes.contains_key(&f.device) {
                    let index = link_index(&self.handle, &f.device).await?;
                    indexes.insert(f.device.clone(), index);
                }
            }
        }
        let mut first_error = None;
        let indexes = &indexes;
        for chunk in ops.chunks(256) {
            let results = futures_util::future::join_all(chunk.iter().map(|op| async move {
                match op {
                    Op::AddFdb(f) => match indexes.get(&f.device).copied().flatten() {
                        Some(index) => self.add_fdb(index, f).await,
                        None => Err(AgentError::Kernel(format!("{} does not exist", f.device))),
                    },
                    Op::DelFdb(f) => match indexes.get(&f.device).copied().flatten() {
                        Some(index) => self.del_fdb(index, f).await,
                        None => Ok(()),
                    },
                    other => self.apply(other).await,
                }
            }))
            .await;
            for r in results {
                if let Err(e) = r {
                    first_error.get_or_insert(e);
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

/// Whether a netlink error is "no such entry".
fn is_missing_entry(e: &rtnetlink::Error) -> bool {
    matches!(e, rtnetlink::Error::NetlinkError(m)
        if m.code.is_some_and(|c| c.get() == -libc::ENOENT))
}

/// A link's name.
pub(crate) fn link_name(m: &LinkMessage) -> Option<&str> {
    m.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(n) => Some(n.as_str()),
        _ => None,
    })
}

/// A link request whose answers leave out the counters (link, IPv6 and ICMPv6 statistics):
/// more than half of each link's message, which a full pass would read for every link on
/// the node and never use.
pub(crate) fn links_without_stats(handle: &Handle) -> rtnetlink::LinkGetRequest {
    handle.link().get().set_filter_mask(
        AddressFamily::Unspec,
        vec![rtnetlink::packet_route::link::LinkExtentMask::SkipStats],
    )
}

async fn link_message(handle: &Handle, name: &str) -> Result<Option<LinkMessage>, AgentError> {
    let mut links = links_without_stats(handle)
        .match_name(name.to_owned())
        .execute();
    match links.try_next().await {
        Ok(link) => Ok(link),
        Err(e) if is_absent(&e) => Ok(None),
        Err(e) => Err(kernel(&format!("reading link {name}"), e)),
    }
}

/// A link's index; `None` when it does not exist.
pub(crate) async fn link_index(handle: &Handle, name: &str) -> Result<Option<u32>, AgentError> {
    Ok(link_message(handle, name).await?.map(|l| l.header.index))
}

/// Receive buffer of the agent's netlink sockets (bytes). Every request of a connection is
/// answered on its one socket, and the kernel drops an answer that finds the socket's queue
/// full, leaving its request waiting forever: a dump of every link (hundreds of kilobytes on a
/// node with hundreds of pods) must fit beside the acknowledgements of requests made meanwhile.
/// Measured: with the default 208 KiB, 4 CNI workers lost 59 acknowledgements in a few minutes
/// and the device reaper waited forever on one of them.
const NETLINK_RECEIVE_BUFFER: usize = 8 << 20;

/// A netlink connection of the current thread's namespace, its reader spawned on the current
/// runtime, with room for [`NETLINK_RECEIVE_BUFFER`] bytes of answers (root may exceed
/// `rmem_max`; without it, best effort).
fn open_connection() -> Result<Handle, AgentError> {
    use rtnetlink::sys::AsyncSocket;
    let (mut connection, handle, _) = rtnetlink::new_connection()?;
    let socket = connection.socket_mut().socket_mut();
    if setsockopt(&*socket, sockopt::RcvBufForce, &NETLINK_RECEIVE_BUFFER).is_err() {
        let _ = setsockopt(&*socket, sockopt::RcvBuf, &NETLINK_RECEIVE_BUFFER);
    }
    tokio::spawn(connection);
    Ok(handle)
}

/// Runs `f` with a netlink connection opened inside `netns`, on a thread of its own (a
/// namespace switch is per thread, so the agent's runtime never leaves its namespace).
pub(crate) async fn in_netns<T, F, Fut>(netns: File, f: F) -> Result<T, AgentError>
where
    T: Send + 'static,
    F: FnOnce(Handle) -> Fut + Send + 'static,
    Fut: Future<Output = Result<T, AgentError>>,
{
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("isthmus-netns".into())
        .spawn(move || {
            let outcome = (|| {
                // This thread ends when the closure returns.
                crate::netns::enter(&netns)?;
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_io()
                    .build()?;
                runtime.block_on(async { f(open_connection()?).await })
            })();
            let _ = tx.send(outcome);
        })?;
    rx.await
        .map_err(|_| AgentError::Kernel("the namespace thread died".into()))?
}

/// Brings `ifname` up inside `netns` with the pod's addresses and routes. IPv6 addresses
/// skip duplicate address detection: IPAM already made them unique.
pub async fn configure_pod(
    netns: File,
    ifname: String,
    iface: PodInterface,
) -> Result<(), AgentError> {
    in_netns(netns, move |handle| async move {
        let index = link_index(&handle, &ifname)
            .await?
            .ok_or_else(|| AgentError::Kernel(format!("{ifname} did not arrive in the pod")))?;
        // Not at creation: a veth end cannot be up before its peer exists.
        handle
            .link()
            .set(LinkUnspec::new_with_index(index).up().build())
            .execute()
            .await
            .map_err(|e| kernel(&format!("setting {ifname} up"), e))?;
        for a in &iface.addresses {
            let mut request = handle.address().add(index, a.ip, a.prefix);
            if a.ip.is_ipv6() {
                let message = request.message_mut();
                message.header.flags |= AddressHeaderFlags::Nodad;
                message
                    .attributes
                    .push(AddressAttribute::Flags(AddressFlags::Nodad));
            }
            request
                .replace()
                .execute()
                .await
                .map_err(|e| kernel(&format!("adding {}/{} to {ifname}", a.ip, a.prefix), e))?;
        }
        for r in &iface.routes {
            let route = RouteMessageBuilder::<IpAddr>::new()
                .destination_prefix(r.destination.network, r.destination.prefix)
                .and_then(|b| b.gateway(r.gateway))
                .map_err(|e| kernel("building a route", e))?
                .output_interface(index)
                .build();
            let add = handle.route().add(route);
            // A pod with several attachments keeps the default route of its first one (as
            // Multus's secondary networks do); the others bring only their own routes.
            if r.destination.prefix == 0 {
                match add.execute().await {
                    Err(e) if is_exists(&e) => continue,
                    done => done.map_err(|e| kernel("adding the default route", e))?,
                }
                continue;
            }
            add.replace().execute().await.map_err(|e| {
                kernel(
                    &format!(
                        "adding route {}/{} via {}",
                        r.destination.network, r.destination.prefix, r.gateway
                    ),
                    e,
                )
            })?;
        }
        Ok(())
    })
    .await
}

/// What a pod's interface looks like from inside its namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodLink {
    /// Its MAC.
    pub mac: String,
    /// Whether it is up.
    pub up: bool,
    /// Its addresses.
    pub addresses: Vec<IpAddr>,
}

/// Reads `ifname` inside `netns`; `None` when it is not there.
pub async fn read_pod_link(netns: File, ifname: String) -> Result<Option<PodLink>, AgentError> {
    in_netns(netns, move |handle| async move {
        let Some(link) = link_message(&handle, &ifname).await? else {
            return Ok(None);
        };
        let mut mac = String::new();
        for attr in &link.attributes {
            if let LinkAttribute::Address(bytes) = attr {
                mac = format_mac(bytes);
            }
        }
        let up = link.header.flags.contains(LinkFlags::Up);
        let mut addresses = Vec::new();
        let mut stream = handle
            .address()
            .get()
            .set_link_index_filter(link.header.index)
            .execute();
        while let Some(message) = stream
            .try_next()
            .await
            .map_err(|e| kernel("reading addresses", e))?
        {
            for attr in &message.attributes {
                if let AddressAttribute::Address(ip) = attr {
                    addresses.push(*ip);
                }
            }
        }
        Ok(Some(PodLink { mac, up, addresses }))
    })
    .await
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn macs_round_trip() {
        let bytes = parse_mac("fa:16:3e:0a:0b:0c").unwrap();
        assert_eq!(format_mac(&bytes), "fa:16:3e:0a:0b:0c");
        assert!(parse_mac("fa:16:3e").is_err());
        assert!(parse_mac("zz:16:3e:0a:0b:0c").is_err());
    }

    /// A burst of deletions, arriving in waves while batches are being deleted, all return
    /// (each waits for a round that took its device) and leave no device behind.
    #[test]
    fn the_reaper_deletes_every_device_of_a_burst() {
        if !isthmus_lab::runnable() {
            return;
        }
        const DEVICES: usize = 80;
        std::thread::spawn(|| {
            // This thread (and the `ip` it runs) in a namespace of its own.
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            let ip = |args: &[&str]| {
                let out = std::process::Command::new("ip")
                    .args(args)
                    .output()
                    .unwrap();
                assert!(out.status.success(), "ip {args:?}: {out:?}");
            };
            for i in 0..DEVICES {
                let (a, b) = (format!("rp{i}"), format!("rq{i}"));
                ip(&["link", "add", &a, "type", "veth", "peer", "name", &b]);
            }
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async {
                let netlink = Netlink::connect().unwrap();
                let reaper = Reaper::start(netlink.clone());
                let mut deletions = tokio::task::JoinSet::new();
                for i in 0..DEVICES {
                    let reaper = reaper.clone();
                    deletions.spawn(async move {
                        let wave = (i % 9) as u64;
                        tokio::time::sleep(Duration::from_millis(wave * 3)).await;
                        reaper.delete(&format!("rp{i}")).await
                    });
                }
                let all = async {
                    while let Some(done) = deletions.join_next().await {
                        done.unwrap().unwrap();
                    }
                };
                tokio::time::timeout(Duration::from_secs(30), all)
                    .await
                    .expect("a deletion never returned");
                for i in 0..DEVICES {
                    assert!(!netlink.has_link(&format!("rp{i}")).await.unwrap());
                    assert!(!netlink.has_link(&format!("rq{i}")).await.unwrap());
                }
            });
        })
        .join()
        .unwrap();
    }
}
