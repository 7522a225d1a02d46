//! Trunk subports on a node without 802.1q devices: per local subport a veth pair, the node
//! end `spt<subport[0:11]>` and the bridge end `tap<subport[0:11]>` (an ordinary port device:
//! the L2 plan attaches it to the subport network's bridge and the filter guards it), and
//! the two BPF map entries that join the node end to its parent's tap and VLAN. What here
//! is pure: which subports a node wires and what changes to get there.

use std::collections::{BTreeMap, BTreeSet};

use crate::node::{tap_name, NodeConfig};
use crate::view::NodeView;

/// Prefix of a subport veth's node end.
pub const VETH_PREFIX: &str = "spt";

/// The node end of subport `port_id`'s veth.
pub fn veth_name(port_id: &str) -> String {
    format!("{VETH_PREFIX}{}", port_id.get(..11).unwrap_or(port_id))
}

/// One subport this node wires.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Subport {
    /// The subport's port.
    pub port_id: String,
    /// Node end of its veth (`spt…`): where the BPF program tags and redirects.
    pub veth: String,
    /// Bridge end of its veth (`tap…`): the port's device.
    pub tap: String,
    /// The parent port's tap.
    pub parent_tap: String,
    /// VLAN id on the parent's device.
    pub vlan: u16,
    /// The subport network's MTU.
    pub mtu: u32,
}

/// The subports `node` wires: its own subports whose parent's tap is present (`present`:
/// the device names the kernel has), by veth name.
pub fn desired(
    view: &NodeView,
    node: &NodeConfig,
    present: &BTreeSet<String>,
) -> BTreeMap<String, Subport> {
    view.ports
        .values()
        .filter(|p| p.host_id == node.name)
        .filter_map(|p| {
            let of = p.subport_of.as_ref()?;
            let parent = view.ports.get(&of.port_id)?;
            let parent_tap = tap_name(&parent.id);
            if parent.host_id != node.name || !present.contains(&parent_tap) {
                return None;
            }
            let mtu = view.networks.get(&p.network_id)?.mtu;
            let veth = veth_name(&p.id);
            Some((
                veth.clone(),
                Subport {
                    port_id: p.id.clone(),
                    veth,
                    tap: tap_name(&p.id),
                    parent_tap,
                    vlan: of.segmentation_id,
                    mtu,
                },
            ))
        })
        .collect()
}

/// What the kernel's veths must undergo to match `desired`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Veths (node ends) of subports no longer wired here: deleting one removes the pair.
    pub remove: Vec<String>,
    /// Pairs to create.
    pub add: Vec<Subport>,
    /// Every subport wired after the plan (the BPF maps hold exactly these).
    pub wired: Vec<Subport>,
}

/// The plan from the veth node ends present (`present`: every device name the kernel has).
pub fn plan(desired: &BTreeMap<String, Subport>, present: &BTreeSet<String>) -> Plan {
    Plan {
        remove: present
            .iter()
            .filter(|d| d.starts_with(VETH_PREFIX) && !desired.contains_key(*d))
            .cloned()
            .collect(),
        // A pair missing its bridge end (deleted by hand) is made again whole.
        add: desired
            .values()
            .filter(|s| !present.contains(&s.veth) || !present.contains(&s.tap))
            .cloned()
            .collect(),
        wired: desired.values().cloned().collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use isthmus_model::view::node::{Network, Port, SubportOf};

    fn port(id: &str, net: &str, host: &str, of: Option<(&str, u16)>) -> Port {
        Port {
            id: id.into(),
            network_id: net.into(),
            host_id: host.into(),
            subport_of: of.map(|(p, vlan)| SubportOf {
                port_id: p.into(),
                segmentation_id: vlan,
            }),
            ..Port::default()
        }
    }

    #[test]
    fn a_node_wires_its_subports_once_their_parent_tap_is_there() {
        let mut view = NodeView::default();
        for (id, mtu) in [("net-vm", 1450), ("net-a", 1400)] {
            view.networks.insert(
                id.into(),
                Network {
                    id: id.into(),
                    mtu,
                    ..Network::default()
                },
            );
        }
        for p in [
            port("parent-00000001", "net-vm", "n1", None),
            port(
                "subport-0000001",
                "net-a",
                "n1",
                Some(("parent-00000001", 101)),
            ),
            // Another node's subport, and one whose parent is not in the view.
            port(
                "subport-0000002",
                "net-a",
                "n2",
                Some(("parent-00000001", 102)),
            ),
            port(
                "subport-0000003",
                "net-a",
                "n1",
                Some(("gone-000000000", 103)),
            ),
        ] {
            view.ports.insert(p.id.clone(), p);
        }
        let node = NodeConfig {
            name: "n1".into(),
            tunnel_ip: "10.0.0.1".parse().unwrap(),
            physnets: Default::default(),
        };
        let mut present = BTreeSet::from(["sptstale-00000".to_owned()]);
        assert!(
            desired(&view, &node, &present).is_empty(),
            "no parent tap yet"
        );
        present.insert("tapparent-0000".into());
        let want = desired(&view, &node, &present);
        let sub = &want["sptsubport-000"];
        assert_eq!(
            (sub.tap.as_str(), sub.parent_tap.as_str(), sub.vlan, sub.mtu),
            ("tapsubport-000", "tapparent-0000", 101, 1400)
        );
        assert_eq!(want.len(), 1);
        let first = plan(&want, &present);
        assert_eq!(first.remove, ["sptstale-00000"]);
        assert_eq!(first.add.len(), 1);
        present.insert("sptsubport-000".into());
        present.insert("tapsubport-000".into());
        present.remove("sptstale-00000");
        let again = plan(&want, &present);
        assert!(again.add.is_empty() && again.remove.is_empty());
        assert_eq!(again.wired.len(), 1);
    }
}
