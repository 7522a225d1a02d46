//! The L2 overlay of a node: one bridge and one VXLAN device per network present on the
//! node, static forwarding entries (l2population: each remote port's MAC to its node, and one
//! all-zero entry per remote node for broadcast by head-end replication), and local ports'
//! host-side devices attached to their network's bridge.
//!
//! Router interfaces (see [`crate::router`]) bring their networks to every node running the
//! router, attach their `tap` ends like ports, and pin the gateway MAC on that tap with a static
//! bridge entry: frames routed by a remote node carry the same source MAC, and must not move it
//! to the tunnel.
//!
//! Only the bridges of networks with a guarded port on the node (port security on, see
//! [`crate::node::guarded_ports`]) hand their bridged IPv4/IPv6 to the inet hooks
//! (br_netfilter, per bridge): a network without one is switched without netfilter, as fast as
//! raw VXLAN, however many guarded ports other networks of the node have.
//!
//! Kernel names follow Neutron's linuxbridge agent, so Nova's os-vif plugs into the same
//! bridges: `brq` + network id[0:11], `vxlan-<vni>`, `tap` + port id[0:11].

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use crate::router::{self, RouterState};
use crate::view::NodeView;

/// VXLAN's IANA port.
pub const VXLAN_PORT: u16 = 4789;
/// Destination MAC of the flood (broadcast, unknown unicast, multicast) entries.
pub const FLOOD_MAC: &str = "00:00:00:00:00:00";

pub use crate::node::{bridge_name, tap_name, NodeConfig};

/// The VXLAN device of a VNI.
pub fn vxlan_name(vni: u32) -> String {
    format!("vxlan-{vni}")
}

/// A bridge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bridge {
    /// Network it carries.
    pub network_id: String,
    /// MTU.
    pub mtu: u32,
    /// Whether bridged IPv4 and IPv6 traverse the inet hooks (`nf_call_iptables` and
    /// `nf_call_ip6tables`): `Some(both)`; `None` read back when the two differ.
    pub filtered: Option<bool>,
}

/// A VXLAN device, enslaved to its network's bridge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vxlan {
    /// Network identifier.
    pub vni: u32,
    /// Local tunnel address.
    pub local: IpAddr,
    /// MTU.
    pub mtu: u32,
    /// The bridge it belongs to.
    pub bridge: String,
}

/// A static forwarding entry on a VXLAN device.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Fdb {
    /// VXLAN device.
    pub device: String,
    /// MAC (all-zero for flooding).
    pub mac: String,
    /// Remote tunnel address.
    pub dst: IpAddr,
}

/// A MAC pinned on a bridge port by a static, sticky bridge entry (learning never moves it).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Pin {
    /// The bridge port.
    pub device: String,
    /// MAC, lower case.
    pub mac: String,
}

/// A device to attach to a bridge (a port's tap, or a physnet interface for flat networks).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    /// Bridge.
    pub bridge: String,
    /// MTU to set on the device.
    pub mtu: u32,
    /// Whether the device is up: a port or network with `admin_state_up` false is attached
    /// but down, so no frame passes it (and its port reports DOWN).
    pub up: bool,
}

/// A device present in the kernel that the agent does not manage itself (taps, physnet
/// interfaces), as read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    /// The bridge it is attached to, if any.
    pub bridge: Option<String>,
    /// Its MTU.
    pub mtu: u32,
    /// Whether it is administratively up.
    pub up: bool,
}

/// The L2 state a node should have.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct L2State {
    /// Bridges by name.
    pub bridges: BTreeMap<String, Bridge>,
    /// VXLAN devices by name.
    pub vxlans: BTreeMap<String, Vxlan>,
    /// Forwarding entries.
    pub fdb: BTreeSet<Fdb>,
    /// Attachments by device name (taps of local ports and routers, physnet interfaces).
    pub attachments: BTreeMap<String, Attachment>,
    /// Gateway MACs pinned on router taps.
    pub pins: BTreeSet<Pin>,
}

/// The L2 state `view` implies for `node`, which runs `routers` (from [`router::desired`]).
pub fn desired(view: &NodeView, node: &NodeConfig, routers: &RouterState) -> L2State {
    let mut state = L2State::default();
    let interfaces = || routers.values().flat_map(|ns| ns.interfaces.values());
    let local_networks: BTreeSet<&str> = view
        .ports
        .values()
        .filter(|p| p.host_id == node.name)
        .map(|p| p.network_id.as_str())
        .chain(interfaces().map(|i| i.network_id.as_str()))
        .collect();
    let router_nodes = router::nodes_by_network(view);
    let guarded: BTreeSet<&str> = crate::node::guarded_ports(view, node)
        .into_values()
        .map(|p| p.network_id.as_str())
        .collect();
    // Bridged DNAT of load-balanced connections needs netfilter on their bridges too.
    let balancing = crate::lb::balancing_networks(view, node, &crate::lb::vip_networks(view));
    for net_id in &local_networks {
        let Some(net) = view.networks.get(*net_id) else {
            continue;
        };
        let bridge = bridge_name(&net.id);
        state.bridges.insert(
            bridge.clone(),
            Bridge {
                network_id: net.id.clone(),
                mtu: net.mtu,
                filtered: Some(
                    guarded.contains(net.id.as_str()) || balancing.contains(net.id.as_str()),
                ),
            },
        );
        match (net.network_type.as_str(), net.segmentation_id) {
            ("vxlan", Some(vni)) => {
                let device = vxlan_name(vni);
                state.vxlans.insert(
                    device.clone(),
                    Vxlan {
                        vni,
                        local: node.tunnel_ip,
                        mtu: net.mtu,
                        bridge: bridge.clone(),
                    },
                );
                for port in view.ports.values().filter(|p| p.network_id == net.id) {
                    if port.host_id.is_empty() || port.host_id == node.name {
                        continue;
                    }
                    let Some(remote) = view.nodes.get(&port.host_id) else {
                        continue;
                    };
                    if remote.tunnel_ip == node.tunnel_ip {
                        continue;
                    }
                    let macs = std::iter::once(port.mac_address.as_str()).chain(
                        port.allowed_address_pairs
                            .iter()
                            .map(|p| p.mac_address.as_str()),
                    );
                    for mac in macs {
                        state.fdb.insert(Fdb {
                            device: device.clone(),
                            mac: mac.to_ascii_lowercase(),
                            dst: remote.tunnel_ip,
                        });
                    }
                    state.fdb.insert(Fdb {
                        device: device.clone(),
                        mac: FLOOD_MAC.to_owned(),
                        dst: remote.tunnel_ip,
                    });
                }
                for name in router_nodes.get(net.id.as_str()).into_iter().flatten() {
                    match view.nodes.get(name) {
                        Some(remote) if remote.tunnel_ip != node.tunnel_ip => {
                            state.fdb.insert(Fdb {
                                device: device.clone(),
                                mac: FLOOD_MAC.to_owned(),
                                dst: remote.tunnel_ip,
                            });
                        }
                        _ => {}
                    }
                }
            }
            ("flat", _) => {
                let iface = net
                    .physical_network
                    .as_ref()
                    .and_then(|p| node.physnets.get(p));
                if let Some(iface) = iface {
                    state.attachments.insert(
                        iface.clone(),
                        Attachment {
                            bridge: bridge.clone(),
                            mtu: net.mtu,
                            up: true,
                        },
                    );
                }
            }
            _ => {}
        }
        for port in view
            .ports
            .values()
            .filter(|p| p.network_id == net.id && p.host_id == node.name)
        {
            state.attachments.insert(
                tap_name(&port.id),
                Attachment {
                    bridge: bridge.clone(),
                    mtu: net.mtu,
                    up: port.admin_state_up && net.admin_state_up,
                },
            );
        }
    }
    for interface in interfaces() {
        state.attachments.insert(
            interface.peer.clone(),
            Attachment {
                bridge: interface.bridge.clone(),
                mtu: interface.mtu,
                up: true,
            },
        );
        state.pins.insert(Pin {
            device: interface.peer.clone(),
            mac: interface.mac.clone(),
        });
    }
    state
}

/// What the kernel has, as read back by the agent. `devices` are the other links present
/// (taps and physnet interfaces) with the bridge they are attached to, if any, and their MTU.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observed {
    /// Bridges whose names the agent manages (`brq*`).
    pub bridges: BTreeMap<String, Bridge>,
    /// VXLAN devices the agent manages (`vxlan-*`).
    pub vxlans: BTreeMap<String, Vxlan>,
    /// Static forwarding entries on those VXLAN devices.
    pub fdb: BTreeSet<Fdb>,
    /// Other present devices by name.
    pub devices: BTreeMap<String, Device>,
    /// Static entries on devices attached to those bridges.
    pub pins: BTreeSet<Pin>,
}

/// One kernel change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Create a bridge (up).
    AddBridge {
        /// Name.
        name: String,
        /// MTU.
        mtu: u32,
        /// Bridged IPv4/IPv6 traverse the inet hooks.
        filtered: bool,
    },
    /// Hand a bridge's IPv4/IPv6 to the inet hooks, or stop.
    SetFiltered {
        /// Bridge.
        name: String,
        /// On or off, for both families.
        filtered: bool,
    },
    /// Change a device's MTU.
    SetMtu {
        /// Device.
        name: String,
        /// MTU.
        mtu: u32,
    },
    /// Create a VXLAN device (nolearning, dstport 4789) in a bridge, up.
    AddVxlan {
        /// Name.
        name: String,
        /// Its parameters.
        vxlan: Vxlan,
    },
    /// Attach a present device to a bridge with an MTU, up or down.
    Attach {
        /// Device.
        device: String,
        /// Bridge.
        bridge: String,
        /// MTU.
        mtu: u32,
        /// Up (or down: administratively disabled).
        up: bool,
    },
    /// Add a static forwarding entry.
    AddFdb(Fdb),
    /// Remove a static forwarding entry.
    DelFdb(Fdb),
    /// Pin a MAC on a bridge port.
    AddPin(Pin),
    /// Remove a pin.
    DelPin(Pin),
    /// Detach a device from its bridge (the device itself belongs to its owner).
    Detach {
        /// Device.
        device: String,
    },
    /// Delete a VXLAN device.
    DelVxlan {
        /// Name.
        name: String,
    },
    /// Delete a bridge.
    DelBridge {
        /// Name.
        name: String,
    },
}

/// The changes that turn `observed` into `desired`, creations before the things that use
/// them and removals after. Only differences are planned: an agent restart with the kernel
/// already right plans nothing.
pub fn plan(desired: &L2State, observed: &Observed) -> Vec<Op> {
    let mut ops = Vec::new();
    // Bridges before anything is attached to them: a tap joins a bridge already filtering.
    for (name, bridge) in &desired.bridges {
        let filtered = bridge.filtered.unwrap_or(true);
        let Some(have) = observed.bridges.get(name) else {
            ops.push(Op::AddBridge {
                name: name.clone(),
                mtu: bridge.mtu,
                filtered,
            });
            continue;
        };
        if have.mtu != bridge.mtu {
            ops.push(Op::SetMtu {
                name: name.clone(),
                mtu: bridge.mtu,
            });
        }
        if have.filtered != Some(filtered) {
            ops.push(Op::SetFiltered {
                name: name.clone(),
                filtered,
            });
        }
    }
    let mut replaced_vxlans = Vec::new();
    for (name, vxlan) in &desired.vxlans {
        match observed.vxlans.get(name) {
            None => ops.push(Op::AddVxlan {
                name: name.clone(),
                vxlan: vxlan.clone(),
            }),
            // A device with another local address or bridge is recreated (its FDB goes with it).
            Some(have) if have.local != vxlan.local || have.bridge != vxlan.bridge => {
                ops.push(Op::DelVxlan { name: name.clone() });
                ops.push(Op::AddVxlan {
                    name: name.clone(),
                    vxlan: vxlan.clone(),
                });
                replaced_vxlans.push(name.clone());
            }
            Some(have) if have.mtu != vxlan.mtu => ops.push(Op::SetMtu {
                name: name.clone(),
                mtu: vxlan.mtu,
            }),
            Some(_) => {}
        }
    }
    // Devices (re)joining a bridge come without bridge entries.
    let mut joining = BTreeSet::new();
    for (device, want) in &desired.attachments {
        // A device that is not there yet (the hypervisor has not created the tap) is attached
        // when it appears.
        let Some(have) = observed.devices.get(device) else {
            continue;
        };
        let bridge = have.bridge.as_deref();
        if bridge != Some(want.bridge.as_str()) {
            joining.insert(device);
        }
        if bridge != Some(want.bridge.as_str()) || have.mtu != want.mtu || have.up != want.up {
            ops.push(Op::Attach {
                device: device.clone(),
                bridge: want.bridge.clone(),
                mtu: want.mtu,
                up: want.up,
            });
        }
    }
    for entry in &desired.fdb {
        if !observed.fdb.contains(entry) || replaced_vxlans.contains(&entry.device) {
            ops.push(Op::AddFdb(entry.clone()));
        }
    }
    for entry in &observed.fdb {
        if !desired.fdb.contains(entry) && desired.vxlans.contains_key(&entry.device) {
            ops.push(Op::DelFdb(entry.clone()));
        }
    }
    for pin in &desired.pins {
        // A pin needs its device on the bridge; it follows the attachment.
        let present = observed.devices.contains_key(&pin.device);
        if present && (!observed.pins.contains(pin) || joining.contains(&pin.device)) {
            ops.push(Op::AddPin(pin.clone()));
        }
    }
    for pin in &observed.pins {
        if !desired.pins.contains(pin) && observed.devices.contains_key(&pin.device) {
            ops.push(Op::DelPin(pin.clone()));
        }
    }
    for (device, have) in &observed.devices {
        let managed = have
            .bridge
            .as_ref()
            .is_some_and(|b| observed.bridges.contains_key(b));
        if managed && !desired.attachments.contains_key(device) {
            ops.push(Op::Detach {
                device: device.clone(),
            });
        }
    }
    for name in observed.vxlans.keys() {
        if !desired.vxlans.contains_key(name) {
            ops.push(Op::DelVxlan { name: name.clone() });
        }
    }
    for name in observed.bridges.keys() {
        if !desired.bridges.contains_key(name) {
            ops.push(Op::DelBridge { name: name.clone() });
        }
    }
    ops
}

/// The state after `ops` (what a perfect applier leaves), used to check plans converge.
pub fn simulate(observed: &Observed, ops: &[Op]) -> Observed {
    let mut s = observed.clone();
    for op in ops {
        match op {
            Op::AddBridge {
                name,
                mtu,
                filtered,
            } => {
                s.bridges.insert(
                    name.clone(),
                    Bridge {
                        network_id: String::new(),
                        mtu: *mtu,
                        filtered: Some(*filtered),
                    },
                );
            }
            Op::SetFiltered { name, filtered } => {
                if let Some(b) = s.bridges.get_mut(name) {
                    b.filtered = Some(*filtered);
                }
            }
            Op::SetMtu { name, mtu } => {
                if let Some(b) = s.bridges.get_mut(name) {
                    b.mtu = *mtu;
                }
                if let Some(v) = s.vxlans.get_mut(name) {
                    v.mtu = *mtu;
                }
            }
            Op::AddVxlan { name, vxlan } => {
                s.vxlans.insert(name.clone(), vxlan.clone());
            }
            Op::Attach {
                device,
                bridge,
                mtu,
                up,
            } => {
                s.devices.insert(
                    device.clone(),
                    Device {
                        bridge: Some(bridge.clone()),
                        mtu: *mtu,
                        up: *up,
                    },
                );
            }
            Op::AddFdb(f) => {
                s.fdb.insert(f.clone());
            }
            Op::DelFdb(f) => {
                s.fdb.remove(f);
            }
            Op::AddPin(p) => {
                s.pins.insert(p.clone());
            }
            Op::DelPin(p) => {
                s.pins.remove(p);
            }
            Op::Detach { device } => {
                if let Some(d) = s.devices.get_mut(device) {
                    d.bridge = None;
                }
                s.pins.retain(|p| &p.device != device);
            }
            Op::DelVxlan { name } => {
                s.vxlans.remove(name);
                s.fdb.retain(|f| &f.device != name);
            }
            Op::DelBridge { name } => {
                s.bridges.remove(name);
            }
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::view::{Network, Node, Port};

    const NET: &str = "aaaaaaaa-1111-2222-3333-444444444444";

    fn desired_here(view: &NodeView, node: &NodeConfig) -> L2State {
        desired(view, node, &router::desired(view, node))
    }

    fn node(name: &str, ip: &str) -> NodeConfig {
        NodeConfig {
            name: name.into(),
            tunnel_ip: ip.parse().unwrap(),
            physnets: BTreeMap::from([("public".to_owned(), "eth1".to_owned())]),
        }
    }

    fn port(id: &str, host: &str, mac: &str) -> Port {
        Port {
            id: id.into(),
            network_id: NET.into(),
            mac_address: mac.into(),
            fixed_ips: vec![],
            host_id: host.into(),
            security_groups: vec![],
            port_security_enabled: true,
            allowed_address_pairs: vec![],
            status: "DOWN".into(),
            ..Default::default()
        }
    }

    fn view() -> NodeView {
        let mut v = NodeView::default();
        v.networks.insert(
            NET.into(),
            Network {
                id: NET.into(),
                mtu: 1450,
                network_type: "vxlan".into(),
                segmentation_id: Some(42),
                physical_network: None,
                ..Default::default()
            },
        );
        for (n, ip) in [("a", "10.0.0.1"), ("b", "10.0.0.2"), ("c", "10.0.0.3")] {
            v.nodes.insert(
                n.into(),
                Node {
                    name: n.into(),
                    tunnel_ip: ip.parse().unwrap(),
                    physnets: BTreeMap::new(),
                },
            );
        }
        v.ports.insert(
            "p-local-000000".into(),
            port("p-local-000000", "a", "fa:16:3e:00:00:01"),
        );
        v.ports.insert(
            "p-remote-b".into(),
            port("p-remote-b", "b", "fa:16:3e:00:00:02"),
        );
        v.ports.insert(
            "p-remote-c".into(),
            port("p-remote-c", "c", "FA:16:3E:00:00:03"),
        );
        v.ports.insert(
            "p-unbound".into(),
            port("p-unbound", "", "fa:16:3e:00:00:04"),
        );
        v
    }

    #[test]
    fn desired_overlay() {
        let d = desired_here(&view(), &node("a", "10.0.0.1"));
        let bridge = bridge_name(NET);
        assert_eq!(bridge, "brqaaaaaaaa-11");
        assert_eq!(d.bridges[&bridge].mtu, 1450);
        assert_eq!(
            d.vxlans["vxlan-42"].local,
            "10.0.0.1".parse::<IpAddr>().unwrap()
        );
        let fdb: Vec<(String, String)> = d
            .fdb
            .iter()
            .map(|f| (f.mac.clone(), f.dst.to_string()))
            .collect();
        assert_eq!(
            fdb,
            [
                ("00:00:00:00:00:00".to_owned(), "10.0.0.2".to_owned()),
                ("00:00:00:00:00:00".to_owned(), "10.0.0.3".to_owned()),
                ("fa:16:3e:00:00:02".to_owned(), "10.0.0.2".to_owned()),
                ("fa:16:3e:00:00:03".to_owned(), "10.0.0.3".to_owned()),
            ]
        );
        assert_eq!(d.attachments.keys().collect::<Vec<_>>(), ["tapp-local-000"]);
        // A node with no local port on the network has nothing for it.
        assert_eq!(
            desired_here(&view(), &node("z", "10.0.0.9")),
            L2State::default()
        );
    }

    #[test]
    fn plan_converges_and_is_idempotent() {
        let me = node("a", "10.0.0.1");
        let want = desired_here(&view(), &me);
        let mut kernel = Observed::default();
        kernel.devices.insert(
            "tapp-local-000".into(),
            Device {
                bridge: None,
                mtu: 1500,
                up: false,
            },
        );
        let ops = plan(&want, &kernel);
        assert!(matches!(ops[0], Op::AddBridge { .. }));
        let kernel = simulate(&kernel, &ops);
        assert!(
            plan(&want, &kernel).is_empty(),
            "a second pass (agent restart) changes nothing"
        );

        // A remote port goes away: exactly its entries are removed, nothing is rebuilt.
        let mut v = view();
        v.ports.remove("p-remote-c");
        let ops = plan(&desired_here(&v, &me), &kernel);
        assert_eq!(ops.len(), 2, "{ops:?}");
        assert!(ops
            .iter()
            .all(|o| matches!(o, Op::DelFdb(f) if f.dst.to_string() == "10.0.0.3")));

        // The last local port goes: detach, then the VXLAN device and the bridge.
        v.ports.remove("p-local-000000");
        let ops = plan(&desired_here(&v, &me), &kernel);
        let kinds: Vec<&str> = ops
            .iter()
            .map(|o| match o {
                Op::Detach { .. } => "detach",
                Op::DelVxlan { .. } => "delvxlan",
                Op::DelBridge { .. } => "delbridge",
                _ => "other",
            })
            .collect();
        assert_eq!(kinds, ["detach", "delvxlan", "delbridge"]);
        assert_eq!(simulate(&kernel, &ops).bridges.len(), 0);
    }

    #[test]
    fn taps_wait_for_their_device_and_flat_networks_use_the_physnet() {
        let mut v = view();
        let me = node("a", "10.0.0.1");
        // The hypervisor has not created the tap yet: nothing to attach.
        let ops = plan(&desired_here(&v, &me), &Observed::default());
        assert!(!ops.iter().any(|o| matches!(o, Op::Attach { .. })));
        v.networks.get_mut(NET).unwrap().network_type = "flat".into();
        v.networks.get_mut(NET).unwrap().segmentation_id = None;
        v.networks.get_mut(NET).unwrap().physical_network = Some("public".into());
        let d = desired_here(&v, &me);
        assert!(d.vxlans.is_empty() && d.fdb.is_empty());
        assert_eq!(d.attachments["eth1"].bridge, bridge_name(NET));
    }

    #[test]
    fn only_networks_with_a_guarded_local_port_are_filtered() {
        let me = node("a", "10.0.0.1");
        let bridge = bridge_name(NET);
        let mut v = view();
        let mut kernel = Observed::default();
        kernel.devices.insert(
            "tapp-local-000".into(),
            Device {
                bridge: None,
                mtu: 1500,
                up: false,
            },
        );
        let ops = plan(&desired_here(&v, &me), &kernel);
        assert_eq!(
            ops[0],
            Op::AddBridge {
                name: bridge.clone(),
                mtu: 1450,
                filtered: true
            }
        );
        let kernel = simulate(&kernel, &ops);

        // Port security off on the only local port: the bridge stops filtering, nothing else
        // changes.
        v.ports
            .get_mut("p-local-000000")
            .unwrap()
            .port_security_enabled = false;
        let want = desired_here(&v, &me);
        assert_eq!(want.bridges[&bridge].filtered, Some(false));
        let ops = plan(&want, &kernel);
        assert_eq!(
            ops,
            [Op::SetFiltered {
                name: bridge.clone(),
                filtered: false
            }]
        );

        // A bridge read back with the families differing is set right, before a tap joins it.
        let mut kernel = simulate(&kernel, &ops);
        kernel.bridges.get_mut(&bridge).unwrap().filtered = None;
        kernel.devices.insert(
            "tapp-local-000".into(),
            Device {
                bridge: None,
                mtu: 1500,
                up: false,
            },
        );
        let ops = plan(&desired_here(&view(), &me), &kernel);
        let filtered = ops
            .iter()
            .position(|o| matches!(o, Op::SetFiltered { filtered: true, .. }));
        let attached = ops.iter().position(|o| matches!(o, Op::Attach { .. }));
        assert!(filtered.is_some() && filtered < attached, "{ops:?}");
    }

    #[test]
    fn ports_and_networks_administratively_down_stay_attached_but_down() {
        let me = node("a", "10.0.0.1");
        let tap = "tapp-local-000".to_owned();
        let mut kernel = Observed::default();
        kernel.devices.insert(
            tap.clone(),
            Device {
                bridge: None,
                mtu: 1500,
                up: false,
            },
        );
        let kernel = simulate(&kernel, &plan(&desired_here(&view(), &me), &kernel));
        assert!(kernel.devices[&tap].up);

        let mut v = view();
        v.ports.get_mut("p-local-000000").unwrap().admin_state_up = false;
        let down = plan(&desired_here(&v, &me), &kernel);
        assert_eq!(
            down,
            [Op::Attach {
                device: tap.clone(),
                bridge: bridge_name(NET),
                mtu: 1450,
                up: false
            }]
        );
        let kernel_down = simulate(&kernel, &down);
        assert!(plan(&desired_here(&v, &me), &kernel_down).is_empty());

        // A network that is down takes its ports down; up again, they come back.
        let mut v = view();
        v.networks.get_mut(NET).unwrap().admin_state_up = false;
        assert!(!desired_here(&v, &me).attachments[&tap].up);
        let up = plan(&desired_here(&view(), &me), &kernel_down);
        assert!(matches!(&up[..], [Op::Attach { up: true, .. }]), "{up:?}");
    }
}
