//! Kernel end to end: a controller in the lab's fabric, one agent per node namespace; ports
//! created through the API and bound to nodes; VMs plugged as a hypervisor would (a tap
//! appears in the node). The agents build the overlay, VMs ping across nodes, ports turn
//! ACTIVE, and deleting the ports removes every bridge and VXLAN device. The VMs here are
//! namespaces with static addresses (as with a config drive), so their subnets have no DHCP
//! and no DHCP port takes the first address (DHCP has tests of its own).

use std::process::Stdio;
use std::time::Duration;

mod cloud;

use cloud::{cloud, shared_network, wait_for};
use isthmus_lab::{Daemon, Lab};
use serde_json::{json, Value};

use cloud::BIN;

#[test]
fn agents_build_the_overlay_from_the_api() {
    let Some(mut cloud) = cloud(3) else { return };
    let lab = &cloud.lab;
    let agents = &mut cloud.agents;
    wait_for("3 registered agents", Duration::from_secs(20), || {
        lab.api("GET", "/v2.0/agents", None).1["agents"]
            .as_array()
            .is_some_and(|a| a.len() == 3)
    });

    let (s, net) = lab.api(
        "POST",
        "/v2.0/networks",
        Some(&json!({"network": {"name": "seamless"}})),
    );
    assert_eq!(s, 201);
    let net_id = net["network"]["id"].as_str().unwrap().to_owned();
    let (s, _) = lab.api(
        "POST",
        "/v2.0/subnets",
        Some(
            &json!({"subnet": {"network_id": net_id, "ip_version": 4, "cidr": "192.168.100.0/24", "enable_dhcp": false}}),
        ),
    );
    assert_eq!(s, 201);
    let mut ports = Vec::new();
    let mut vms = Vec::new();
    for (node, host) in [(0, "node1"), (1, "node2")] {
        let (s, p) = lab.api(
            "POST",
            "/v2.0/ports",
            Some(&json!({"port": {
            "network_id": net_id, "binding:host_id": host, "port_security_enabled": false,
            "device_owner": "compute:nova"}})),
        );
        assert_eq!(s, 201, "{p}");
        let p = p["port"].clone();
        let ip = format!("{}/24", p["fixed_ips"][0]["ip_address"].as_str().unwrap());
        vms.push(
            lab.add_vm(
                node,
                p["id"].as_str().unwrap(),
                p["mac_address"].as_str().unwrap(),
                &ip,
                None,
                1450,
            )
            .unwrap(),
        );
        ports.push(p);
    }
    assert_eq!(ports[0]["fixed_ips"][0]["ip_address"], "192.168.100.2");
    assert_eq!(ports[1]["fixed_ips"][0]["ip_address"], "192.168.100.3");

    wait_for(
        "VM1 to ping VM2 across nodes",
        Duration::from_secs(20),
        || {
            vms[0]
                .ns
                .exec("ping", &["-c", "1", "-W", "1", "192.168.100.3"])
                .is_ok()
        },
    );
    // Another network with the same CIDR (tenants may overlap): a VM there, on node2, is not
    // reachable from VM1, which still reaches VM2 on its own network.
    let (_, other) = lab.api(
        "POST",
        "/v2.0/networks",
        Some(&json!({"network": {"name": "other"}})),
    );
    let other_id = other["network"]["id"].as_str().unwrap().to_owned();
    let (_, other_subnet) = lab.api(
        "POST",
        "/v2.0/subnets",
        Some(&json!({"subnet": {
        "network_id": other_id, "ip_version": 4, "cidr": "192.168.100.0/24", "enable_dhcp": false}})),
    );
    let other_subnet = other_subnet["subnet"]["id"].as_str().unwrap().to_owned();
    let (s, p3) = lab.api(
        "POST",
        "/v2.0/ports",
        Some(&json!({"port": {
        "network_id": other_id, "binding:host_id": "node2", "port_security_enabled": false,
        "fixed_ips": [{"subnet_id": other_subnet, "ip_address": "192.168.100.9"}]}})),
    );
    assert_eq!(s, 201, "{p3}");
    let p3 = &p3["port"];
    let vm3 = lab
        .add_vm(
            1,
            p3["id"].as_str().unwrap(),
            p3["mac_address"].as_str().unwrap(),
            "192.168.100.9/24",
            None,
            1450,
        )
        .unwrap();
    let p3_path = format!("/v2.0/ports/{}", p3["id"].as_str().unwrap());
    wait_for(
        "the other network's port to be plugged",
        Duration::from_secs(20),
        || lab.api("GET", &p3_path, None).1["port"]["status"] == "ACTIVE",
    );
    assert!(
        vms[0]
            .ns
            .exec("ping", &["-c", "2", "-W", "1", "192.168.100.9"])
            .is_err(),
        "networks must be isolated"
    );
    assert!(vms[0]
        .ns
        .exec("ping", &["-c", "1", "-W", "1", "192.168.100.3"])
        .is_ok());
    lab.api("DELETE", &p3_path, None);
    drop(vm3);
    for p in &ports {
        let path = format!("/v2.0/ports/{}", p["id"].as_str().unwrap());
        wait_for("ACTIVE status", Duration::from_secs(20), || {
            lab.api("GET", &path, None).1["port"]["status"] == "ACTIVE"
        });
    }
    // `isthmus inspect` on node1 shows the bridge (not filtering: its port has port security
    // off), the entry towards node2 and the ports.
    let report = lab.nodes[0]
        .ns
        .exec(
            BIN,
            &[
                "inspect",
                "--node",
                "node1",
                "--controller",
                &format!("http://{}", isthmus_lab::CONTROLLER_ADDR),
            ],
        )
        .unwrap();
    assert!(
        report
            .lines()
            .any(|l| l.contains(&format!("brq{}", &net_id[..11]))
                && l.ends_with("unfiltered (br_netfilter off)")),
        "{report}"
    );
    assert!(
        report.contains(&format!(
            "{}  -> 10.251.0.2  (port)",
            ports[1]["mac_address"].as_str().unwrap()
        )),
        "{report}"
    );
    assert!(
        report.contains(&format!(
            "{}  192.168.100.2",
            ports[0]["id"].as_str().unwrap()
        )),
        "{report}"
    );
    assert!(report.contains("ACTIVE"), "{report}");

    // node3 hosts nothing: no bridge, no VXLAN device, and node1 has exact forwarding entries.
    let node3 = lab.nodes[2].ns.ip(&["-br", "link"]).unwrap();
    assert!(
        !node3.contains("brq") && !node3.contains("vxlan-"),
        "{node3}"
    );
    let vni = net["network"]["provider:segmentation_id"].as_u64().unwrap();
    let fdb = lab.nodes[0]
        .ns
        .exec("bridge", &["fdb", "show", "dev", &format!("vxlan-{vni}")])
        .unwrap();
    assert!(
        fdb.contains(&format!(
            "{} dst 10.251.0.2",
            ports[1]["mac_address"].as_str().unwrap()
        )),
        "{fdb}"
    );
    assert!(
        !fdb.contains("10.251.0.3"),
        "no entries towards a node without ports: {fdb}"
    );

    // An agent restart reconciles by diff and never flushes: a 0.01 s ping across nodes loses
    // nothing while node1's agent is killed (the data plane keeps forwarding) and restarted.
    let pinger = vms[0]
        .ns
        .command("ping")
        .args(["-q", "-i", "0.01", "-c", "260", "-w", "10", "192.168.100.3"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    drop(std::mem::replace(
        &mut agents[0],
        lab.start_agent(BIN, 0).unwrap(),
    ));
    std::thread::sleep(Duration::from_millis(1500));
    let summary = String::from_utf8_lossy(&pinger.wait_with_output().unwrap().stdout).into_owned();
    let line = summary
        .lines()
        .find(|l| l.contains("packet loss"))
        .unwrap_or_default()
        .to_owned();
    let (sent, received) = {
        let n: Vec<u64> = line
            .split(|c: char| !c.is_ascii_digit())
            .filter_map(|t| t.parse().ok())
            .collect();
        (
            n.first().copied().unwrap_or(0),
            n.get(1).copied().unwrap_or(0),
        )
    };
    eprintln!("ping across nodes during an agent restart: {line}");
    assert!(sent > 200, "{summary}");
    assert_eq!(
        sent, received,
        "packets lost during the agent restart: {summary}"
    );

    // Deleting the ports through the API removes every bridge and VXLAN device.
    for p in &ports {
        let (s, _) = lab.api(
            "DELETE",
            &format!("/v2.0/ports/{}", p["id"].as_str().unwrap()),
            None,
        );
        assert_eq!(s, 204);
    }
    for node in &lab.nodes[..2] {
        wait_for("the overlay to be removed", Duration::from_secs(20), || {
            let links = node.ns.ip(&["-br", "link"]).unwrap();
            !links.contains("brq") && !links.contains("vxlan-")
        });
    }
}

/// A VM that changes its source IP or MAC is dropped; an allowed-address-pair address is let
/// through; a port with port security disabled passes everything.
#[test]
fn ports_cannot_spoof() {
    let Some(cloud) = cloud(2) else { return };
    let lab = &cloud.lab;
    let (_, net) = lab.api(
        "POST",
        "/v2.0/networks",
        Some(&json!({"network": {"name": "guarded"}})),
    );
    let net_id = net["network"]["id"].as_str().unwrap().to_owned();
    lab.api(
        "POST",
        "/v2.0/subnets",
        Some(
            &json!({"subnet": {"network_id": net_id, "ip_version": 4, "cidr": "192.168.90.0/24", "enable_dhcp": false}}),
        ),
    );
    let (mut vms, mut ids) = (Vec::new(), Vec::new());
    // a: guarded, with an allowed address pair; b: guarded; c: port security off.
    let specs = [
        (
            0,
            json!({"binding:host_id": "node1", "allowed_address_pairs": [{"ip_address": "192.168.90.50"}]}),
        ),
        (1, json!({"binding:host_id": "node2"})),
        (
            1,
            json!({"binding:host_id": "node2", "port_security_enabled": false, "security_groups": []}),
        ),
    ];
    for (node, extra) in specs {
        let mut body = extra.clone();
        body["network_id"] = json!(net_id);
        let (s, p) = lab.api("POST", "/v2.0/ports", Some(&json!({ "port": body })));
        assert_eq!(s, 201, "{p}");
        let p = &p["port"];
        let ip = format!("{}/24", p["fixed_ips"][0]["ip_address"].as_str().unwrap());
        ids.push(p["id"].as_str().unwrap().to_owned());
        vms.push(
            lab.add_vm(
                node,
                p["id"].as_str().unwrap(),
                p["mac_address"].as_str().unwrap(),
                &ip,
                None,
                1450,
            )
            .unwrap(),
        );
    }
    let (a, b, c) = (&vms[0], &vms[1], &vms[2]);
    // This test is about spoofing only: let ICMP into the default group from anywhere (so the
    // port without groups may reach b too).
    let (_, groups) = lab.api(
        "GET",
        "/v2.0/security-groups?name=default&project_id=fake_project_id",
        None,
    );
    let default = groups["security_groups"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (s, _) = lab.api("POST", "/v2.0/security-group-rules", Some(&json!({"security_group_rule": {
        "security_group_id": default, "direction": "ingress", "protocol": "icmp", "remote_ip_prefix": "0.0.0.0/0"}})));
    assert_eq!(s, 201);
    let ping_from = |vm: &isthmus_lab::Vm, src: &str| {
        vm.ns
            .exec("ping", &["-c", "1", "-W", "1", "-I", src, "192.168.90.3"])
            .is_ok()
    };
    wait_for("a to reach b", Duration::from_secs(20), || {
        ping_from(a, "192.168.90.2")
    });
    wait_for("a's guard", Duration::from_secs(20), || {
        lab.nodes[0]
            .ns
            .exec("nft", &["list", "map", "bridge", "isthmus", "port_in"])
            .unwrap_or_default()
            .contains(&a.tap)
    });

    // Another source address is dropped; the allowed pair's address passes.
    a.ns.ip(&["addr", "add", "192.168.90.77/24", "dev", "eth0"])
        .unwrap();
    assert!(
        !ping_from(a, "192.168.90.77"),
        "a spoofed source address must be dropped"
    );
    a.ns.ip(&["addr", "add", "192.168.90.50/24", "dev", "eth0"])
        .unwrap();
    wait_for(
        "the allowed address pair to pass",
        Duration::from_secs(5),
        || ping_from(a, "192.168.90.50"),
    );

    // Another MAC is dropped, the port's own passes again.
    a.ns.ip(&["link", "set", "eth0", "address", "fa:16:3e:99:99:99"])
        .unwrap();
    b.ns.ip(&["neigh", "flush", "dev", "eth0"]).unwrap();
    assert!(
        !ping_from(a, "192.168.90.2"),
        "a spoofed MAC must be dropped"
    );

    // Port security off: anything goes.
    c.ns.ip(&["addr", "add", "192.168.90.88/24", "dev", "eth0"])
        .unwrap();
    c.ns.ip(&["link", "set", "eth0", "address", "fa:16:3e:88:88:88"])
        .unwrap();
    wait_for(
        "the unguarded port to pass anything",
        Duration::from_secs(5),
        || ping_from(c, "192.168.90.88"),
    );

    // Only a bridge with a guarded port hands its traffic to netfilter (br_netfilter per
    // bridge; the namespace-wide switch is off). With b unguarded too, node2 has none: its
    // bridge stops, its tables go, node1's stay for a, and c's traffic still flows.
    let bridge = format!("brq{}", &net_id[..11]);
    let filtered = |node: usize| {
        let link = lab.nodes[node]
            .ns
            .ip(&["-d", "link", "show", &bridge])
            .unwrap();
        link.contains("nf_call_iptables 1") && link.contains("nf_call_ip6tables 1")
    };
    assert!(filtered(0) && filtered(1));
    for node in &lab.nodes {
        let switch = node
            .ns
            .exec("cat", &["/proc/sys/net/bridge/bridge-nf-call-iptables"])
            .unwrap();
        assert_eq!(switch.trim(), "0");
    }
    let (s, body) = lab.api(
        "PUT",
        &format!("/v2.0/ports/{}", ids[1]),
        Some(&json!({"port": {"port_security_enabled": false, "security_groups": []}})),
    );
    assert_eq!(s, 200, "{body}");
    let ruleset = |node: usize| {
        lab.nodes[node]
            .ns
            .exec("nft", &["list", "ruleset"])
            .unwrap()
    };
    wait_for("node2 to stop filtering", Duration::from_secs(10), || {
        !filtered(1) && !ruleset(1).contains("isthmus")
    });
    assert!(filtered(0) && ruleset(0).contains("table inet isthmus"));
    assert!(ping_from(c, "192.168.90.88"));
}

/// Without `--own-br-netfilter` (a namespace shared with other software, a Kubernetes node for
/// one) the agent leaves br_netfilter's namespace-wide switch as it found it, and still turns
/// br_netfilter on for the bridge of its guarded port.
#[test]
fn br_netfilter_switch_is_left_as_found_in_a_shared_namespace() {
    if !isthmus_lab::runnable() {
        return;
    }
    let mut lab = Lab::new(1).unwrap();
    lab.own_br_netfilter = false;
    let data = tempfile::tempdir().unwrap();
    let _controller = lab.start_controller(BIN, data.path()).unwrap();
    let _agent = lab.start_agent(BIN, 0).unwrap();
    let (net_id, _) = shared_network(&lab, "shared-ns", "192.168.95.0/24");
    let (s, port) = lab.api(
        "POST",
        "/v2.0/ports",
        Some(&json!({"port": {"network_id": net_id, "binding:host_id": "node1"}})),
    );
    assert_eq!(s, 201, "{port}");
    let node = &lab.nodes[0].ns;
    let bridge = format!("brq{}", &net_id[..11]);
    wait_for(
        "the guarded bridge to filter",
        Duration::from_secs(20),
        || {
            node.ip(&["-d", "link", "show", &bridge])
                .is_ok_and(|link| link.contains("nf_call_iptables 1"))
        },
    );
    // The bridge and the tables come from one completed pass (the switch is written, when
    // owned, at the end of a pass).
    wait_for("the node's tables", Duration::from_secs(10), || {
        node.exec("nft", &["list", "table", "inet", "isthmus"])
            .is_ok()
    });
    let switch = node
        .exec("cat", &["/proc/sys/net/bridge/bridge-nf-call-iptables"])
        .unwrap();
    assert_eq!(switch.trim(), "1", "a new namespace's default, left alone");
}

/// Two projects' VMs on one shared network: `project-a`'s on node1 and `project-b`'s on node2,
/// each port in its project's default group.
struct TwoProjects {
    /// The network as the API shows it (`{"network": {...}}`).
    net: serde_json::Value,
    /// VM a (project-a, node1), VM b (project-b, node2).
    vms: Vec<isthmus_lab::Vm>,
    /// Default group of project-a.
    group_a: String,
    /// Default group of project-b.
    group_b: String,
}

fn two_projects(lab: &Lab, name: &str, cidr: &str) -> TwoProjects {
    let (net_id, _) = shared_network(lab, name, cidr);
    let (_, net) = lab.api("GET", &format!("/v2.0/networks/{net_id}"), None);
    let mut vms = Vec::new();
    for (node, project) in [(0, "project-a"), (1, "project-b")] {
        let (s, p) = lab.api("POST", "/v2.0/ports", Some(&json!({"port": {
            "network_id": net_id, "project_id": project, "binding:host_id": format!("node{}", node + 1)}})));
        assert_eq!(s, 201, "{p}");
        let p = &p["port"];
        let ip = format!("{}/24", p["fixed_ips"][0]["ip_address"].as_str().unwrap());
        vms.push(
            lab.add_vm(
                node,
                p["id"].as_str().unwrap(),
                p["mac_address"].as_str().unwrap(),
                &ip,
                None,
                1450,
            )
            .unwrap(),
        );
    }
    let group_of = |project: &str| {
        let (_, g) = lab.api(
            "GET",
            &format!("/v2.0/security-groups?name=default&project_id={project}"),
            None,
        );
        g["security_groups"][0]["id"].as_str().unwrap().to_owned()
    };
    TwoProjects {
        net,
        vms,
        group_a: group_of("project-a"),
        group_b: group_of("project-b"),
    }
}

/// Security groups, Neutron semantics: two projects' VMs on a shared network, each in its
/// project's default group, cannot talk; an ingress rule naming the other project's group
/// opens exactly that (ICMP, one direction); a remote_ip_prefix rule likewise; removing the
/// rule closes it again for new connections.
#[test]
fn security_groups_between_projects() {
    let Some(cloud) = cloud(2) else { return };
    let lab = &cloud.lab;
    let two = two_projects(lab, "shared", "192.168.80.0/24");
    let net = &two.net;
    let net_id = net["network"]["id"].as_str().unwrap().to_owned();
    let (a, b) = (&two.vms[0], &two.vms[1]);
    let (group_a, group_b) = (two.group_a.clone(), two.group_b.clone());
    let ping =
        |vm: &isthmus_lab::Vm, to: &str| vm.ns.exec("ping", &["-c", "1", "-W", "1", to]).is_ok();
    for (node, vm) in lab.nodes.iter().zip([a, b]) {
        wait_for(
            "the port's security-group chains",
            Duration::from_secs(20),
            || {
                node.ns
                    .exec("nft", &["list", "map", "inet", "isthmus", "ingress"])
                    .unwrap_or_default()
                    .contains(&format!("ingress_{}", vm.tap))
            },
        );
    }
    let prerouting = lab.nodes[0]
        .ns
        .exec("nft", &["list", "chain", "inet", "isthmus", "prerouting"])
        .unwrap();
    let vni = net["network"]["provider:segmentation_id"].as_u64().unwrap();
    assert!(
        prerouting.contains(&format!(
            "ct zone set iifname map {{ \"brq{}\" : {vni} }}",
            &net_id[..11]
        )),
        "{prerouting}"
    );
    assert!(
        !ping(a, "192.168.80.3"),
        "default groups of different projects must not talk (a -> b)"
    );
    assert!(
        !ping(b, "192.168.80.2"),
        "default groups of different projects must not talk (b -> a)"
    );

    // b lets ICMP in from members of a's group: a reaches b, b still cannot reach a.
    let (s, rule) = lab.api("POST", "/v2.0/security-group-rules", Some(&json!({"security_group_rule": {
        "security_group_id": group_b, "direction": "ingress", "ethertype": "IPv4", "protocol": "icmp",
        "remote_group_id": group_a}})));
    assert_eq!(s, 201, "{rule}");
    wait_for(
        "a to reach b through the remote-group rule",
        Duration::from_secs(10),
        || ping(a, "192.168.80.3"),
    );
    assert!(
        !ping(b, "192.168.80.2"),
        "the rule opens one direction only"
    );
    // Only ICMP: TCP to b stays closed (nothing answers, not even a reset).
    assert!(a
        .ns
        .exec(
            "timeout",
            &["2", "bash", "-c", "exec 3<>/dev/tcp/192.168.80.3/22"]
        )
        .is_err());

    // a lets ICMP in from b's address by prefix.
    let (s, _) = lab.api("POST", "/v2.0/security-group-rules", Some(&json!({"security_group_rule": {
        "security_group_id": group_a, "direction": "ingress", "ethertype": "IPv4", "protocol": "icmp",
        "remote_ip_prefix": "192.168.80.3/32"}})));
    assert_eq!(s, 201);
    wait_for(
        "b to reach a through the prefix rule",
        Duration::from_secs(10),
        || ping(b, "192.168.80.2"),
    );
    // Conntrack holds the tenants' flows in the network's zone, and none of the tunnel's own
    // packets (left untracked: tracking them would only cost).
    let tracked = lab.nodes[0]
        .ns
        .exec("cat", &["/proc/net/nf_conntrack"])
        .unwrap();
    assert!(
        tracked
            .lines()
            .any(|l| l.contains("src=192.168.80.3 dst=192.168.80.2")
                && l.contains(&format!("zone={vni} "))),
        "{tracked}"
    );
    assert!(!tracked.contains("dport=4789"), "{tracked}");

    // Removing the remote-group rule closes a -> b again for new connections.
    let rule_id = rule["security_group_rule"]["id"].as_str().unwrap();
    let (s, _) = lab.api(
        "DELETE",
        &format!("/v2.0/security-group-rules/{rule_id}"),
        None,
    );
    assert_eq!(s, 204);
    wait_for("a -> b to close again", Duration::from_secs(10), || {
        !ping(a, "192.168.80.3")
    });
    assert!(ping(b, "192.168.80.2"), "the other rule is untouched");

    // Deleting the ports through the API leaves no table (so no chain, element or set) behind.
    let (_, ports) = lab.api("GET", &format!("/v2.0/ports?network_id={net_id}"), None);
    for p in ports["ports"].as_array().unwrap() {
        lab.api(
            "DELETE",
            &format!("/v2.0/ports/{}", p["id"].as_str().unwrap()),
            None,
        );
    }
    for node in &lab.nodes {
        wait_for("the filter tables to go", Duration::from_secs(10), || {
            let tables = node
                .ns
                .exec("nft", &["list", "ruleset"])
                .unwrap_or_default();
            !tables.contains("isthmus")
        });
    }
}

/// An established TCP connection keeps flowing (no stall over 1 s) while unrelated rules are
/// added and removed and while both agents are restarted; afterwards, removing the rule that
/// admitted it stops new connections.
#[test]
fn established_flows_survive_rule_changes_and_restarts() {
    let Some(mut cloud) = cloud(2) else { return };
    let lab = &cloud.lab;
    let agents = &mut cloud.agents;
    let two = two_projects(lab, "flows", "192.168.70.0/24");
    let (a, b) = (&two.vms[0], &two.vms[1]);
    let (group_a, group_b) = (two.group_a.clone(), two.group_b.clone());
    let (_, tcp_rule) = lab.api("POST", "/v2.0/security-group-rules", Some(&json!({"security_group_rule": {
        "security_group_id": group_b, "direction": "ingress", "protocol": "tcp", "port_range_min": 7000,
        "port_range_max": 7000, "remote_group_id": group_a}})));
    let tcp_rule = tcp_rule["security_group_rule"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let server = "import socket\ns=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\ns.bind(('0.0.0.0', 7000)); s.listen(8)\nwhile True:\n    c, _ = s.accept()\n    while True:\n        d = c.recv(4096)\n        if not d: break\n        c.sendall(d)\n";
    let _server = Daemon(
        b.ns.command("python3")
            .args(["-c", server])
            .spawn()
            .unwrap(),
    );
    let connect = "import socket, sys\ntry:\n    socket.create_connection(('192.168.70.3', 7000), timeout=1).close()\nexcept OSError:\n    sys.exit(1)\n";
    wait_for("a to connect to b:7000", Duration::from_secs(20), || {
        a.ns.exec("python3", &["-c", connect]).is_ok()
    });

    // Echo 100 bytes every 10 ms for 6 s; any stall over 1 s fails the client.
    let client = "import socket, sys, time\nc = socket.create_connection(('192.168.70.3', 7000), timeout=2); c.settimeout(1)\nn = 0; end = time.time() + 6\nwhile time.time() < end:\n    c.sendall(b'x' * 100); got = b''\n    while len(got) < 100:\n        d = c.recv(100 - len(got))\n        if not d: sys.exit(2)\n        got += d\n    n += 1; time.sleep(0.01)\nprint(n)\n";
    let flow =
        a.ns.command("python3")
            .args(["-c", client])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    // Unrelated rule changes on both groups...
    let (_, extra) = lab.api("POST", "/v2.0/security-group-rules", Some(&json!({"security_group_rule": {
        "security_group_id": group_b, "direction": "ingress", "protocol": "udp", "port_range_min": 9999,
        "port_range_max": 9999, "remote_ip_prefix": "10.0.0.0/8"}})));
    lab.api(
        "POST",
        "/v2.0/security-group-rules",
        Some(&json!({"security_group_rule": {
        "security_group_id": group_a, "direction": "ingress", "protocol": "icmp"}})),
    );
    std::thread::sleep(Duration::from_millis(500));
    lab.api(
        "DELETE",
        &format!(
            "/v2.0/security-group-rules/{}",
            extra["security_group_rule"]["id"].as_str().unwrap()
        ),
        None,
    );
    // ...and both agents restart.
    for (i, agent) in agents.iter_mut().enumerate() {
        std::thread::sleep(Duration::from_millis(500));
        drop(std::mem::replace(agent, lab.start_agent(BIN, i).unwrap()));
    }
    let out = flow.wait_with_output().unwrap();
    let exchanged: u64 = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(0);
    assert!(
        out.status.success(),
        "the established flow broke: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(exchanged > 200, "only {exchanged} exchanges in 6 s");
    eprintln!("established TCP flow: {exchanged} request/response exchanges in 6 s across rule changes and two agent restarts");

    // Removing the admitting rule stops new connections.
    lab.api(
        "DELETE",
        &format!("/v2.0/security-group-rules/{tcp_rule}"),
        None,
    );
    wait_for(
        "new connections to b:7000 to be refused",
        Duration::from_secs(10),
        || a.ns.exec("python3", &["-c", connect]).is_err(),
    );
}

/// IPv6 through the same filters: two VMs of one project (default group: members talk) ping
/// over IPv6 across nodes (neighbour discovery passes the stateful chains), and a spoofed IPv6
/// source is dropped.
#[test]
fn ipv6_through_security_groups() {
    let Some(cloud) = cloud(2) else { return };
    let lab = &cloud.lab;
    let (_, net) = lab.api(
        "POST",
        "/v2.0/networks",
        Some(&json!({"network": {"name": "v6"}})),
    );
    let net_id = net["network"]["id"].as_str().unwrap().to_owned();
    let (s, sub) = lab.api(
        "POST",
        "/v2.0/subnets",
        Some(&json!({"subnet": {
        "network_id": net_id, "ip_version": 6, "cidr": "2001:db8:60::/64", "enable_dhcp": false}})),
    );
    assert_eq!(s, 201, "{sub}");
    let mut vms = Vec::new();
    let mut ips = Vec::new();
    for node in 0..2 {
        let (s, p) = lab.api(
            "POST",
            "/v2.0/ports",
            Some(&json!({"port": {
            "network_id": net_id, "binding:host_id": format!("node{}", node + 1)}})),
        );
        assert_eq!(s, 201, "{p}");
        let p = &p["port"];
        let ip = p["fixed_ips"][0]["ip_address"].as_str().unwrap().to_owned();
        // The lab's VM takes an IPv4-style address argument; add the IPv6 one without DAD.
        let vm = lab
            .add_vm(
                node,
                p["id"].as_str().unwrap(),
                p["mac_address"].as_str().unwrap(),
                "169.254.0.1/32",
                None,
                1450,
            )
            .unwrap();
        vm.ns
            .ip(&[
                "-6",
                "addr",
                "add",
                &format!("{ip}/64"),
                "dev",
                "eth0",
                "nodad",
            ])
            .unwrap();
        vms.push(vm);
        ips.push(ip);
    }
    assert_eq!(ips, ["2001:db8:60::2", "2001:db8:60::3"]);
    let ping6 = |vm: &isthmus_lab::Vm, src: &str, to: &str| {
        vm.ns
            .exec("ping", &["-6", "-c", "1", "-W", "1", "-I", src, to])
            .is_ok()
    };
    for (node, vm) in lab.nodes.iter().zip(&vms) {
        wait_for(
            "the port's security-group chains",
            Duration::from_secs(20),
            || {
                node.ns
                    .exec("nft", &["list", "map", "inet", "isthmus", "ingress"])
                    .unwrap_or_default()
                    .contains(&format!("ingress_{}", vm.tap))
            },
        );
    }
    wait_for(
        "IPv6 between group members across nodes",
        Duration::from_secs(20),
        || ping6(&vms[0], &ips[0], &ips[1]),
    );
    vms[0]
        .ns
        .ip(&[
            "-6",
            "addr",
            "add",
            "2001:db8:60::77/64",
            "dev",
            "eth0",
            "nodad",
        ])
        .unwrap();
    assert!(
        !ping6(&vms[0], "2001:db8:60::77", &ips[1]),
        "a spoofed IPv6 source must be dropped"
    );
}

/// A stateless security group: traffic its rules allow passes in both directions without a
/// conntrack entry on either node, a reply no rule allows is dropped (no state admits it),
/// and the group cannot turn stateful or share a port with a stateful one.
#[test]
fn stateless_security_groups_track_nothing() {
    let Some(cloud) = cloud(2) else { return };
    let lab = &cloud.lab;
    if isthmus_lab::run("conntrack", &["--version"]).is_err() {
        isthmus_lab::skip("no conntrack tool (apt-get install conntrack)");
        return;
    }
    let (net, _) = shared_network(lab, "stateless", "192.168.80.0/24");
    let (s, group) = lab.api(
        "POST",
        "/v2.0/security-groups",
        Some(&json!({"security_group": {"name": "stateless", "stateful": false}})),
    );
    assert_eq!(s, 201, "{group}");
    assert_eq!(group["security_group"]["stateful"], false);
    let gid = group["security_group"]["id"].as_str().unwrap().to_owned();
    // Only what the test allows: drop the default egress rules new groups get.
    for rule in group["security_group"]["security_group_rules"]
        .as_array()
        .unwrap()
    {
        let id = rule["id"].as_str().unwrap();
        lab.api("DELETE", &format!("/v2.0/security-group-rules/{id}"), None);
    }
    let rule = |direction: &str, protocol: &str, port: Option<u16>| {
        let mut body =
            json!({"security_group_id": gid, "direction": direction, "protocol": protocol});
        if let Some(p) = port {
            body["port_range_min"] = json!(p);
            body["port_range_max"] = json!(p);
        }
        let (s, v) = lab.api(
            "POST",
            "/v2.0/security-group-rules",
            Some(&json!({"security_group_rule": body})),
        );
        assert_eq!(s, 201, "{v}");
    };
    rule("ingress", "icmp", None);
    rule("egress", "icmp", None);
    rule("ingress", "tcp", Some(7000));
    rule("egress", "tcp", Some(7000));

    let mut vms = Vec::new();
    for (node, ip) in [(0, "192.168.80.2"), (1, "192.168.80.3")] {
        let (s, port) = lab.api(
            "POST",
            "/v2.0/ports",
            Some(&json!({"port": {
            "network_id": net, "fixed_ips": [{"ip_address": ip}], "security_groups": [gid],
            "binding:host_id": lab.nodes[node].name}})),
        );
        assert_eq!(s, 201, "{port}");
        vms.push(
            lab.add_vm_for_port(node, &port["port"], 24, None, 1450)
                .unwrap(),
        );
    }
    let (a, b) = (&vms[0], &vms[1]);
    let untracked = |what: &str| {
        for node in &lab.nodes {
            let entries = node.ns.exec("conntrack", &["-L"]).unwrap_or_default();
            assert!(
                !entries.contains("192.168.80."),
                "{what}: conntrack entries on {}:\n{entries}",
                node.name
            );
        }
    };

    // Ping both ways: echo and reply are each allowed by a rule.
    wait_for("a to ping b", Duration::from_secs(30), || {
        a.ns.exec("ping", &["-c", "1", "-W", "1", "192.168.80.3"])
            .is_ok()
    });
    assert!(b
        .ns
        .exec("ping", &["-c", "3", "-i", "0.2", "-W", "1", "192.168.80.2"])
        .is_ok());
    untracked("after pings");

    // TCP to b:7000: the SYN is allowed in, but b's SYN-ACK leaves from port 7000 to an
    // ephemeral port, which no egress rule allows and no connection state admits.
    let server = "import socket\ns=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\ns.bind(('0.0.0.0', 7000)); s.listen(8)\nwhile True:\n    c, _ = s.accept(); c.close()\n";
    let _server = Daemon(
        b.ns.command("python3")
            .args(["-c", server])
            .spawn()
            .unwrap(),
    );
    let connect = "import socket, sys\ntry:\n    socket.create_connection(('192.168.80.3', 7000), timeout=1).close()\nexcept OSError:\n    sys.exit(1)\n";
    std::thread::sleep(Duration::from_millis(500));
    for _ in 0..3 {
        assert!(
            a.ns.exec("python3", &["-c", connect]).is_err(),
            "a reply no rule allows got through"
        );
    }
    // Allowing TCP both ways (any port) lets connections through, still untracked.
    rule("ingress", "tcp", None);
    rule("egress", "tcp", None);
    wait_for("a to connect to b:7000", Duration::from_secs(20), || {
        a.ns.exec("python3", &["-c", connect]).is_ok()
    });
    untracked("after TCP connections");

    // The API keeps ports single-kind.
    let (s, v) = lab.api(
        "PUT",
        &format!("/v2.0/security-groups/{gid}"),
        Some(&json!({"security_group": {"stateful": true}})),
    );
    assert_eq!(
        (s, v["NeutronError"]["type"].as_str()),
        (409, Some("SecurityGroupInUse"))
    );
    let (_, groups) = lab.api("GET", "/v2.0/security-groups?name=default", None);
    let default = groups["security_groups"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (s, v) = lab.api(
        "POST",
        "/v2.0/ports",
        Some(&json!({"port": {
        "network_id": net, "security_groups": [gid, default]}})),
    );
    assert_eq!(
        (s, v["NeutronError"]["type"].as_str()),
        (409, Some("SecurityGroupConflict"))
    );
}

/// An address group as a rule's remote: the filter on the port's node follows the group's
/// addresses as they are added and removed.
#[test]
fn address_groups_follow_their_addresses_in_the_data_plane() {
    let Some(cloud) = cloud(2) else { return };
    let lab = &cloud.lab;
    let (net, _) = shared_network(lab, "addressed", "192.168.81.0/24");
    let (s, ag) = lab.api(
        "POST",
        "/v2.0/address-groups",
        Some(&json!({"address_group": {"name": "pingers", "addresses": ["192.168.81.99"]}})),
    );
    assert_eq!(s, 201, "{ag}");
    let ag = ag["address_group"]["id"].as_str().unwrap().to_owned();
    let (_, group) = lab.api(
        "POST",
        "/v2.0/security-groups",
        Some(&json!({"security_group": {"name": "guarded"}})),
    );
    let gid = group["security_group"]["id"].as_str().unwrap().to_owned();
    let (s, v) = lab.api(
        "POST",
        "/v2.0/security-group-rules",
        Some(&json!({"security_group_rule": {
        "security_group_id": gid, "direction": "ingress", "protocol": "icmp",
        "remote_address_group_id": ag}})),
    );
    assert_eq!(s, 201, "{v}");
    let (_, server) = lab.api(
        "POST",
        "/v2.0/ports",
        Some(&json!({"port": {
        "network_id": net, "fixed_ips": [{"ip_address": "192.168.81.2"}], "security_groups": [gid],
        "binding:host_id": lab.nodes[0].name}})),
    );
    let (_, client) = lab.api("POST", "/v2.0/ports", Some(&json!({"port": {
        "network_id": net, "fixed_ips": [{"ip_address": "192.168.81.3"}], "port_security_enabled": false,
        "security_groups": [], "binding:host_id": lab.nodes[1].name}})));
    let _server = lab
        .add_vm_for_port(0, &server["port"], 24, None, 1450)
        .unwrap();
    let client = lab
        .add_vm_for_port(1, &client["port"], 24, None, 1450)
        .unwrap();
    let ping = || {
        client
            .ns
            .exec("ping", &["-c", "1", "-W", "1", "192.168.81.2"])
            .is_ok()
    };
    // The port is plugged and filtered: wait for its chain, then pings are refused.
    wait_for("the server's filter", Duration::from_secs(30), || {
        lab.nodes[0]
            .ns
            .exec("nft", &["list", "table", "inet", "isthmus"])
            .is_ok_and(|t| t.contains("ag4_"))
    });
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        !ping() && !ping(),
        "a client outside the address group got through"
    );

    let groups = format!("/v2.0/address-groups/{ag}");
    let (s, _) = lab.api(
        "PUT",
        &format!("{groups}/add_addresses"),
        Some(&json!({"addresses": ["192.168.81.3"]})),
    );
    assert_eq!(s, 200);
    wait_for("the client to be let in", Duration::from_secs(20), ping);
    let (s, _) = lab.api(
        "PUT",
        &format!("{groups}/remove_addresses"),
        Some(&json!({"addresses": ["192.168.81.3"]})),
    );
    assert_eq!(s, 200);
    wait_for(
        "the client to be shut out again",
        Duration::from_secs(20),
        || !ping(),
    );
}

#[test]
fn ports_and_networks_set_down_pass_no_traffic_and_report_down() {
    let Some(cloud) = cloud(2) else { return };
    let lab = &cloud.lab;
    wait_for("2 registered agents", Duration::from_secs(20), || {
        lab.api("GET", "/v2.0/agents", None).1["agents"]
            .as_array()
            .is_some_and(|a| a.len() == 2)
    });
    let (_, net) = lab.api(
        "POST",
        "/v2.0/networks",
        Some(&json!({"network": {"name": "adminstate"}})),
    );
    let net_id = net["network"]["id"].as_str().unwrap().to_owned();
    let (s, _) = lab.api(
        "POST",
        "/v2.0/subnets",
        Some(
            &json!({"subnet": {"network_id": net_id, "ip_version": 4, "cidr": "192.168.77.0/24", "enable_dhcp": false}}),
        ),
    );
    assert_eq!(s, 201);
    let mut vms = Vec::new();
    let mut ids = Vec::new();
    for (node, host) in [(0, "node1"), (1, "node2")] {
        let (s, p) = lab.api(
            "POST",
            "/v2.0/ports",
            Some(
                &json!({"port": {"network_id": net_id, "binding:host_id": host,
                                  "port_security_enabled": false}}),
            ),
        );
        assert_eq!(s, 201, "{p}");
        vms.push(
            lab.add_vm_for_port(node, &p["port"], 24, None, 1450)
                .unwrap(),
        );
        ids.push(p["port"]["id"].as_str().unwrap().to_owned());
    }
    let status = |id: &str| {
        lab.api("GET", &format!("/v2.0/ports/{id}"), None).1["port"]["status"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };
    let pings = || {
        vms[0]
            .ns
            .exec("ping", &["-c", "1", "-W", "1", "192.168.77.3"])
            .is_ok()
    };
    wait_for("VM1 to ping VM2", Duration::from_secs(20), pings);
    wait_for("both ports ACTIVE", Duration::from_secs(20), || {
        ids.iter().all(|id| status(id) == "ACTIVE")
    });

    // The second VM's port goes down: no traffic reaches it, and it reports DOWN.
    let set = |path: String, body: Value| assert_eq!(lab.api("PUT", &path, Some(&body)).0, 200);
    set(
        format!("/v2.0/ports/{}", ids[1]),
        json!({"port": {"admin_state_up": false}}),
    );
    wait_for("the port to report DOWN", Duration::from_secs(20), || {
        status(&ids[1]) == "DOWN"
    });
    assert!(!pings(), "a port that is down passes traffic");
    set(
        format!("/v2.0/ports/{}", ids[1]),
        json!({"port": {"admin_state_up": true}}),
    );
    wait_for("VM1 to ping VM2 again", Duration::from_secs(20), pings);

    // The whole network down: every port of it on every node.
    set(
        format!("/v2.0/networks/{net_id}"),
        json!({"network": {"admin_state_up": false}}),
    );
    wait_for("both ports DOWN", Duration::from_secs(20), || {
        ids.iter().all(|id| status(id) == "DOWN")
    });
    assert!(!pings(), "a network that is down passes traffic");
    set(
        format!("/v2.0/networks/{net_id}"),
        json!({"network": {"admin_state_up": true}}),
    );
    wait_for(
        "VM1 to ping VM2 once the network is up",
        Duration::from_secs(20),
        pings,
    );
    wait_for("both ports ACTIVE again", Duration::from_secs(20), || {
        ids.iter().all(|id| status(id) == "ACTIVE")
    });
}
