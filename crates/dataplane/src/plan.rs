//! A node's whole plan: one pure function from (the node's view, the node, what its kernel
//! holds) to every change the agent applies, in the order it applies them, and to what the
//! agent then serves and reports.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;

use crate::l2::{self, L2State};
use crate::lb;
use crate::metadata::Instance;
use crate::nft;
use crate::node::{guarded_ports, tap_name, NodeConfig};
use crate::ra::Advertisement;
use crate::router::{self, Announcement, RouterState};
use crate::view::NodeView;
use crate::{dhcp, dhcp6, dns, filter, metadata, ra, trunk};

/// What a node's kernel holds, as far as plans go: read back, or what the agent last wrote.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Observed {
    /// `table bridge isthmus`.
    pub bridge: nft::Observed,
    /// `table inet isthmus`.
    pub inet: nft::Observed,
    /// Router and DHCP namespaces.
    pub routers: RouterState,
    /// Bridges, VXLAN devices, forwarding entries, other devices.
    pub l2: l2::Observed,
    /// Load balancing.
    pub balancing: lb::Observed,
}

/// The DHCP leases a node answers, by tap.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DhcpTables {
    /// DHCPv4.
    pub v4: BTreeMap<String, dhcp::Lease>,
    /// DHCPv6.
    pub v6: BTreeMap<String, dhcp6::Lease6>,
}

/// The namespaces `view` implies for `node`: its routers' and its networks' DHCP
/// namespaces, kept by one planner.
pub fn namespaces(view: &NodeView, node: &NodeConfig) -> RouterState {
    let mut state = router::desired(view, node);
    state.extend(dhcp::namespaces(view, node));
    state
}

/// What the node's own servers answer: DHCP, metadata, DNS, router advertisements.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Services {
    /// DHCP leases by tap.
    pub leases: DhcpTables,
    /// Who may ask for metadata, by (DHCP namespace, address).
    pub instances: BTreeMap<(String, IpAddr), Instance>,
    /// What each network resolves.
    pub names: BTreeMap<String, Arc<dns::Names>>,
    /// Router advertisements to send.
    pub advertisements: Vec<Advertisement>,
}

/// Everything one reconcile pass does, in order.
#[derive(Debug, Clone, PartialEq)]
pub struct NodePlan {
    /// Step 1: the filter tables, one transaction: no tap joins a bridge before its chains exist.
    pub filter: Vec<nft::Plan>,
    /// The filter tables once applied.
    pub filter_after: (nft::Observed, nft::Observed),
    /// Local ports whose chains are in place once the filter is applied.
    pub filtered: BTreeSet<String>,
    /// Step 2: router and DHCP namespace changes: their taps must exist to be attached.
    pub router_ops: Vec<router::Op>,
    /// The namespaces once applied.
    pub routers: RouterState,
    /// Step 3: what the node's servers answer, in those namespaces.
    pub services: Services,
    /// Step 4: bridges, tunnels, forwarding entries and attachments (router taps made in
    /// step 2 included).
    pub l2_ops: Vec<l2::Op>,
    /// The L2 state once applied.
    pub l2: L2State,
    /// Step 5: load balancing, once the bridges and taps it routes over are in place.
    pub balancing: lb::Plan,
    /// Health probes of the members this node hosts.
    pub probes: Vec<lb::Probe>,
    /// Step 6: gratuitous ARPs for external addresses that moved here, once their
    /// interfaces are on the bridges.
    pub announcements: Vec<Announcement>,
    /// Local ports plugged once applied (tap attached to its bridge and up).
    pub plugged: BTreeSet<String>,
    /// Local ports whose status the controller has otherwise: port → status to report.
    pub port_status: BTreeMap<String, &'static str>,
    /// Floating IPs this node NATs and the controller does not have ACTIVE.
    pub floating_ips: BTreeSet<String>,
    /// The view revision the plan brings the kernel to.
    pub revision: u64,
    /// The subport veths to make and remove, and the subports wired after.
    pub trunks: trunk::Plan,
}

/// What a pass has from the passes before it.
#[derive(Debug, Default)]
pub struct Earlier {
    /// What the last pass's load balancing was computed from, if it was applied.
    pub memo: Option<lb::Memo>,
    /// The listeners whose services may have changed since that pass.
    pub changed: BTreeSet<String>,
}

/// The node's whole plan (its load balancing redone only where `earlier` allows, see
/// [`lb::pass`]).
pub fn node(
    view: &NodeView,
    node: &NodeConfig,
    mut observed: Observed,
    earlier: Earlier,
) -> NodePlan {
    let taps: BTreeSet<String> = guarded_ports(view, node).into_keys().collect();
    // The leases decide both what the DHCP server answers and whose requests stop at their
    // tap: derived once.
    let leases = DhcpTables {
        v4: dhcp::leases(view, node),
        v6: dhcp6::leases(view, node),
    };
    let served = filter::DhcpServed {
        v4: leases.v4.keys().cloned().collect(),
        v6: leases.v6.keys().cloned().collect(),
    };
    let wanted = filter::desired(
        view,
        node,
        &filter::port_ids(&taps, &observed.inet),
        &served,
    );
    let filter = [
        wanted.bridge.plan(&observed.bridge, filter::BRIDGE_BASE),
        wanted.inet.plan(&observed.inet, filter::INET_BASE),
    ]
    .into_iter()
    .flatten()
    .collect();
    let local = || view.ports.values().filter(|p| p.host_id == node.name);

    let routers = namespaces(view, node);
    let router_ops = router::plan(&routers, &observed.routers);
    let announcements = router::announcements(&router_ops, &routers);
    let services = Services {
        leases,
        instances: metadata::instances(view, node),
        names: dns::names(view),
        advertisements: ra::advertisements(view, &routers),
    };

    let l2 = l2::desired(view, node, &routers);
    let devices = devices_after(&observed.l2, &router_ops, &observed.routers);
    let l2_ops = l2::plan(&l2, &devices);
    let balancing = lb::pass(
        view,
        node,
        std::mem::take(&mut observed.balancing),
        earlier.memo,
        &earlier.changed,
    );
    let probes = lb::probes(view, node);
    let present: BTreeSet<String> = devices.devices.keys().cloned().collect();
    let trunks = trunk::plan(&trunk::desired(view, node, &present), &present);
    let plugged: BTreeSet<String> = local()
        .filter(|p| {
            let tap = tap_name(&p.id);
            devices.devices.contains_key(&tap) && l2.attachments.get(&tap).is_some_and(|a| a.up)
        })
        .map(|p| p.id.clone())
        .collect();
    let port_status = local()
        .filter_map(|p| {
            let status = if plugged.contains(&p.id) {
                "ACTIVE"
            } else {
                "DOWN"
            };
            (p.status != status).then(|| (p.id.clone(), status))
        })
        .collect();
    let floating_ips = view
        .floating_ips
        .values()
        .filter(|f| f.status != "ACTIVE" && router::nat_node(view, f).as_ref() == Some(&node.name))
        .map(|f| f.id.clone())
        .collect();

    NodePlan {
        filter,
        filter_after: (wanted.bridge.as_observed(), wanted.inet.as_observed()),
        filtered: local().map(|p| p.id.clone()).collect(),
        router_ops,
        routers,
        services,
        l2_ops,
        l2,
        balancing,
        probes,
        announcements,
        plugged,
        port_status,
        floating_ips,
        revision: view.revision,
        trunks,
    }
}

/// The L2 devices once `router_ops` are applied over `routers`: each interface made brings its
/// node-side end (up, on no bridge yet), each one removed (or whose namespace goes) takes it.
fn devices_after<'a>(
    observed: &'a l2::Observed,
    router_ops: &[router::Op],
    routers: &RouterState,
) -> Cow<'a, l2::Observed> {
    let touches = |op: &router::Op| {
        matches!(
            op,
            router::Op::AddInterface { .. }
                | router::Op::DelInterface { .. }
                | router::Op::DelNamespace(_)
        )
    };
    // Most passes change no interface: the kernel's state (with the forwarding entries of
    // every remote port) is then used as it is, not copied.
    if !router_ops.iter().any(touches) {
        return Cow::Borrowed(observed);
    }
    let mut after = observed.clone();
    for op in router_ops {
        match op {
            router::Op::AddInterface { interface, .. } => {
                after.devices.insert(
                    interface.peer.clone(),
                    l2::Device {
                        bridge: None,
                        mtu: interface.mtu,
                        up: true,
                    },
                );
            }
            router::Op::DelInterface { name, .. } => {
                after.devices.remove(&router::peer_of(name));
            }
            router::Op::DelNamespace(namespace) => {
                for name in routers
                    .get(namespace)
                    .into_iter()
                    .flat_map(|ns| ns.interfaces.keys())
                {
                    after.devices.remove(&router::peer_of(name));
                }
            }
            _ => {}
        }
    }
    let present = |device: &String| after.devices.contains_key(device);
    after.pins.retain(|p| present(&p.device));
    Cow::Owned(after)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn view() -> NodeView {
        let mut v = NodeView::default();
        for line in [
            json!({"type": "ADDED", "kind": "network", "object": {"id": "n", "mtu": 1450,
                "provider:network_type": "vxlan", "provider:segmentation_id": 5,
                "provider:physical_network": null}}),
            json!({"type": "ADDED", "kind": "subnet", "object": {"id": "s", "network_id": "n",
                "cidr": "10.0.0.0/24", "gateway_ip": "10.0.0.1"}}),
            json!({"type": "ADDED", "kind": "port", "object": {"id": "aaaaaaaa-port-1", "network_id": "n",
                "mac_address": "fa:16:3e:00:00:01", "binding:host_id": "a", "security_groups": [],
                "port_security_enabled": false, "allowed_address_pairs": [], "status": "DOWN",
                "fixed_ips": [{"subnet_id": "s", "ip_address": "10.0.0.3"}]}}),
            json!({"type": "ADDED", "kind": "port", "object": {"id": "bbbbbbbb-port-2", "network_id": "n",
                "mac_address": "fa:16:3e:00:00:02", "binding:host_id": "a", "security_groups": [],
                "port_security_enabled": false, "allowed_address_pairs": [], "status": "ACTIVE",
                "admin_state_up": false, "fixed_ips": [{"subnet_id": "s", "ip_address": "10.0.0.4"}]}}),
            json!({"type": "BOOKMARK", "revision": 7, "synced": true}),
        ] {
            v.apply(&line).unwrap();
        }
        v
    }

    fn config() -> NodeConfig {
        NodeConfig {
            name: "a".into(),
            tunnel_ip: "10.9.0.1".parse().unwrap(),
            physnets: BTreeMap::new(),
        }
    }

    #[test]
    fn one_pass_plans_everything_and_what_to_report() {
        let v = view();
        let mut observed = Observed::default();
        // The hypervisor made the first port's tap; the second's is not there yet.
        observed.l2.devices.insert(
            tap_name("aaaaaaaa-port-1"),
            l2::Device {
                bridge: None,
                mtu: 1500,
                up: false,
            },
        );
        let plan = node(&v, &config(), observed.clone(), Earlier::default());
        assert!(
            plan.l2_ops.iter().any(|op| matches!(op,
            l2::Op::Attach { device, up: true, .. } if *device == tap_name("aaaaaaaa-port-1"))),
            "{:?}",
            plan.l2_ops
        );
        assert_eq!(plan.plugged, BTreeSet::from(["aaaaaaaa-port-1".to_owned()]));
        assert_eq!(
            plan.port_status,
            BTreeMap::from([
                ("aaaaaaaa-port-1".to_owned(), "ACTIVE"),
                ("bbbbbbbb-port-2".to_owned(), "DOWN"),
            ])
        );
        assert_eq!(plan.filtered.len(), 2);
        assert_eq!(plan.revision, 7);

        // Applied: the same kernel plans nothing.
        let mut after = observed.clone();
        (after.bridge, after.inet) = plan.filter_after.clone();
        after.routers = plan.routers.clone();
        after.balancing = plan.balancing.after.clone();
        for (name, bridge) in &plan.l2.bridges {
            after.l2.bridges.insert(name.clone(), bridge.clone());
        }
        after.l2.vxlans = plan.l2.vxlans.clone();
        after.l2.fdb = plan.l2.fdb.clone();
        after.l2.pins = plan.l2.pins.clone();
        for (device, a) in &plan.l2.attachments {
            if let Some(d) = after.l2.devices.get_mut(device) {
                *d = l2::Device {
                    bridge: Some(a.bridge.clone()),
                    mtu: a.mtu,
                    up: a.up,
                };
            }
        }
        let again = node(&v, &config(), after, Earlier::default());
        assert!(again.filter.is_empty(), "{:?}", again.filter);
        assert!(again.router_ops.is_empty());
        assert!(again.l2_ops.is_empty(), "{:?}", again.l2_ops);
        assert!(again.balancing.routing.is_empty() && again.balancing.tables.is_empty());
    }

    #[test]
    fn router_taps_made_in_the_pass_are_attached_in_it() {
        let mut observed = l2::Observed::default();
        let interface = router::Interface {
            network_id: "n".into(),
            peer: "tapabc".into(),
            bridge: "brqn".into(),
            mac: "fa:16:3e:00:00:09".into(),
            mtu: 1450,
            addresses: Default::default(),
        };
        let made = devices_after(
            &observed,
            &[router::Op::AddInterface {
                namespace: "qrouter-r".into(),
                name: "qr-abc".into(),
                interface: interface.clone(),
            }],
            &RouterState::new(),
        );
        assert_eq!(made.devices["tapabc"].bridge, None);
        observed = made.into_owned();
        let mut held = RouterState::new();
        held.entry("qrouter-r".into())
            .or_default()
            .interfaces
            .insert("qr-abc".into(), interface);
        let gone = devices_after(
            &observed,
            &[router::Op::DelNamespace("qrouter-r".into())],
            &held,
        );
        assert!(gone.devices.is_empty());
    }
}
