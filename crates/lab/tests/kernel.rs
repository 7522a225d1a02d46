//! Kernel end to end: the dataplane's L2 plan, applied in lab node namespaces, gives VMs on
//! different nodes one L2 network over VXLAN; another VNI stays apart; the lab leaves nothing.

use std::collections::BTreeMap;

use isthmus_dataplane::l2::{desired, plan, Fdb, NodeConfig, Observed, Op};
use isthmus_dataplane::view::{Network, Node as ViewNode, NodeView, Port};
use isthmus_lab::{run, runnable, Lab, Netns};

/// Skips (with the reason) outside CI when labs cannot be built here; fails under CI.
fn lab_or_skip(nodes: usize) -> Option<Lab> {
    runnable().then(|| Lab::new(nodes).expect("build lab"))
}

/// `ip link ... type bridge` options handing the bridge's IPv4 and IPv6 to netfilter, or not.
fn nf_call(on: bool) -> [&'static str; 4] {
    let on = if on { "1" } else { "0" };
    ["nf_call_iptables", on, "nf_call_ip6tables", on]
}

/// Applies plan ops with iproute2 in `ns` (the test's stand-in for the agent's netlink applier).
fn apply(ns: &Netns, ops: &[Op]) {
    for op in ops {
        match op {
            Op::AddBridge {
                name,
                mtu,
                filtered,
            } => {
                ns.ip(&[
                    &["link", "add", name, "type", "bridge"][..],
                    &nf_call(*filtered),
                ]
                .concat())
                    .unwrap();
                ns.ip(&["link", "set", name, "mtu", &mtu.to_string(), "up"])
                    .unwrap();
            }
            Op::SetFiltered { name, filtered } => {
                ns.ip(&[
                    &["link", "set", name, "type", "bridge"][..],
                    &nf_call(*filtered),
                ]
                .concat())
                    .unwrap();
            }
            Op::SetMtu { name, mtu } => {
                ns.ip(&["link", "set", name, "mtu", &mtu.to_string()])
                    .unwrap();
            }
            Op::AddVxlan { name, vxlan } => {
                ns.ip(&[
                    "link",
                    "add",
                    name,
                    "type",
                    "vxlan",
                    "id",
                    &vxlan.vni.to_string(),
                    "local",
                    &vxlan.local.to_string(),
                    "dstport",
                    "4789",
                    "nolearning",
                ])
                .unwrap();
                ns.ip(&[
                    "link",
                    "set",
                    name,
                    "mtu",
                    &vxlan.mtu.to_string(),
                    "master",
                    &vxlan.bridge,
                    "up",
                ])
                .unwrap();
            }
            Op::Attach {
                device,
                bridge,
                mtu,
                up,
            } => {
                ns.ip(&[
                    "link",
                    "set",
                    device,
                    "mtu",
                    &mtu.to_string(),
                    "master",
                    bridge,
                    if *up { "up" } else { "down" },
                ])
                .unwrap();
            }
            Op::AddFdb(Fdb { device, mac, dst }) => {
                ns.exec(
                    "bridge",
                    &[
                        "fdb",
                        "append",
                        mac,
                        "dev",
                        device,
                        "dst",
                        &dst.to_string(),
                        "self",
                        "permanent",
                    ],
                )
                .unwrap();
            }
            Op::DelFdb(Fdb { device, mac, dst }) => {
                ns.exec(
                    "bridge",
                    &[
                        "fdb",
                        "del",
                        mac,
                        "dev",
                        device,
                        "dst",
                        &dst.to_string(),
                        "self",
                    ],
                )
                .unwrap();
            }
            Op::Detach { device } => {
                ns.ip(&["link", "set", device, "nomaster"]).unwrap();
            }
            Op::DelVxlan { name } | Op::DelBridge { name } => {
                ns.ip(&["link", "del", name]).unwrap();
            }
            Op::AddPin(pin) => {
                ns.exec(
                    "bridge",
                    &[
                        "fdb",
                        "replace",
                        &pin.mac,
                        "dev",
                        &pin.device,
                        "master",
                        "static",
                        "sticky",
                    ],
                )
                .unwrap();
            }
            Op::DelPin(pin) => {
                ns.exec(
                    "bridge",
                    &["fdb", "del", &pin.mac, "dev", &pin.device, "master"],
                )
                .unwrap();
            }
        }
    }
}

fn network(id: &str, vni: u32) -> Network {
    Network {
        id: id.into(),
        mtu: 1450,
        network_type: "vxlan".into(),
        segmentation_id: Some(vni),
        physical_network: None,
        ..Default::default()
    }
}

fn port(id: &str, net: &str, host: &str, mac: &str) -> Port {
    Port {
        id: id.into(),
        network_id: net.into(),
        mac_address: mac.into(),
        fixed_ips: vec![],
        host_id: host.into(),
        security_groups: vec![],
        port_security_enabled: false,
        allowed_address_pairs: vec![],
        status: "DOWN".into(),
        ..Default::default()
    }
}

fn ping(from: &Netns, to: &str) -> bool {
    from.exec("ping", &["-c", "2", "-W", "1", "-i", "0.2", to])
        .is_ok()
}

#[test]
fn planned_overlay_carries_vms_across_nodes() {
    let Some(lab) = lab_or_skip(2) else { return };
    assert!(
        ping(&lab.nodes[0].ns, &lab.nodes[1].underlay_ip.to_string()),
        "underlay works"
    );

    const RED: &str = "11111111-aaaa-4000-8000-000000000001";
    const BLUE: &str = "22222222-bbbb-4000-8000-000000000002";
    let vm1_port = "a1000000-0000-4000-8000-000000000001";
    let vm2_port = "a2000000-0000-4000-8000-000000000002";
    let vm3_port = "a3000000-0000-4000-8000-000000000003";
    let vm1 = lab
        .add_vm(
            0,
            vm1_port,
            "fa:16:3e:00:00:01",
            "192.168.77.2/24",
            None,
            1450,
        )
        .unwrap();
    let vm2 = lab
        .add_vm(
            1,
            vm2_port,
            "fa:16:3e:00:00:02",
            "192.168.77.3/24",
            None,
            1450,
        )
        .unwrap();
    // Same addresses space, other network: must not be reachable from red.
    let vm3 = lab
        .add_vm(
            1,
            vm3_port,
            "fa:16:3e:00:00:03",
            "192.168.77.4/24",
            None,
            1450,
        )
        .unwrap();

    let mut view = NodeView::default();
    view.networks.insert(RED.into(), network(RED, 100));
    view.networks.insert(BLUE.into(), network(BLUE, 200));
    for node in &lab.nodes {
        view.nodes.insert(
            node.name.clone(),
            ViewNode {
                name: node.name.clone(),
                tunnel_ip: node.underlay_ip.into(),
                physnets: BTreeMap::new(),
            },
        );
    }
    view.ports.insert(
        vm1_port.into(),
        port(vm1_port, RED, "node1", "fa:16:3e:00:00:01"),
    );
    view.ports.insert(
        vm2_port.into(),
        port(vm2_port, RED, "node2", "fa:16:3e:00:00:02"),
    );
    view.ports.insert(
        vm3_port.into(),
        port(vm3_port, BLUE, "node2", "fa:16:3e:00:00:03"),
    );

    let mut kernels = Vec::new();
    for (node, taps) in lab
        .nodes
        .iter()
        .zip([vec![&vm1.tap], vec![&vm2.tap, &vm3.tap]])
    {
        let config = NodeConfig {
            name: node.name.clone(),
            tunnel_ip: node.underlay_ip.into(),
            physnets: BTreeMap::new(),
        };
        let want = desired(&view, &config, &Default::default());
        let mut observed = Observed::default();
        for tap in taps {
            observed.devices.insert(
                tap.clone(),
                isthmus_dataplane::l2::Device {
                    bridge: None,
                    mtu: 1500,
                    up: false,
                },
            );
        }
        let ops = plan(&want, &observed);
        apply(&node.ns, &ops);
        let after = isthmus_dataplane::l2::simulate(&observed, &ops);
        assert!(
            plan(&want, &after).is_empty(),
            "a second pass plans nothing"
        );
        kernels.push((config, after));
    }
    assert!(
        ping(&vm1.ns, "192.168.77.3"),
        "VMs on one network, different nodes, reach each other"
    );
    assert!(
        !ping(&vm1.ns, "192.168.77.4"),
        "a VM on another network is not reachable"
    );

    // The kernel really has what the plan says: static entries, no learning on the tunnel.
    let fdb = lab.nodes[0]
        .ns
        .exec("bridge", &["fdb", "show", "dev", "vxlan-100"])
        .unwrap();
    assert!(fdb.contains("fa:16:3e:00:00:02 dst 10.251.0.2"), "{fdb}");
    assert!(fdb.contains("00:00:00:00:00:00 dst 10.251.0.2"), "{fdb}");
    let details = lab.nodes[0]
        .ns
        .ip(&["-d", "link", "show", "vxlan-100"])
        .unwrap();
    assert!(
        details.contains("nolearning") && details.contains("dstport 4789"),
        "{details}"
    );

    // vm2 leaves: node1 removes exactly its entries and the network stays up for vm1.
    view.ports.remove(vm2_port);
    let (config, observed) = &kernels[0];
    let ops = plan(&desired(&view, config, &Default::default()), observed);
    assert!(ops.iter().all(|o| matches!(o, Op::DelFdb(_))), "{ops:?}");
    apply(&lab.nodes[0].ns, &ops);
    let fdb = lab.nodes[0]
        .ns
        .exec("bridge", &["fdb", "show", "dev", "vxlan-100"])
        .unwrap();
    assert!(!fdb.contains("dst 10.251.0.2"), "{fdb}");

    // Dropping the lab removes every namespace it made.
    let names: Vec<String> = [&vm1.ns, &vm2.ns, &vm3.ns, &lab.fabric]
        .iter()
        .map(|n| n.name().to_owned())
        .chain(lab.nodes.iter().map(|n| n.ns.name().to_owned()))
        .collect();
    drop((vm1, vm2, vm3, lab));
    let left = run("ip", &["netns", "list"]).unwrap();
    for name in names {
        assert!(!left.contains(&name), "{name} left behind");
    }
}
