//! Distributed routing in the kernel: a controller and agents in a lab, routers made through
//! the API, VMs and pods (through the real `isthmus-cni` plugin) on different subnets.

mod cloud;

use std::time::Duration;

use cloud::{cloud, cni_add, cni_conf, ipv4_only, shared_network, wait_for, Cloud};
use isthmus_lab::{Lab, Netns};
use serde_json::{json, Value};

fn wait_agents(lab: &Lab, n: usize) {
    wait_for("registered agents", Duration::from_secs(20), || {
        lab.api("GET", "/v2.0/agents", None).1["agents"]
            .as_array()
            .is_some_and(|a| a.len() == n)
    });
}

/// Sends `count` pings at 20 ms intervals; whether every one was answered.
fn pings(from: &Netns, to: &str, count: u32) -> bool {
    from.exec(
        "ping",
        &["-c", &count.to_string(), "-i", "0.02", "-W", "1", to],
    )
    .is_ok()
}

/// A port of project-a on `net_id` bound to node `node` (1-based name), as Nova makes it.
fn vm_port(lab: &Lab, net_id: &str, node: usize, name: &str) -> Value {
    let (s, p) = lab.api(
        "POST",
        "/v2.0/ports",
        Some(&json!({"port": {
        "network_id": net_id, "project_id": "project-a", "binding:host_id": format!("node{node}"),
        "device_owner": "compute:nova", "name": name}})),
    );
    assert_eq!(s, 201, "{p}");
    p["port"].clone()
}

fn vm(lab: &Lab, node: usize, port: &Value, gateway: &str) -> isthmus_lab::Vm {
    let vm = lab
        .add_vm_for_port(node, port, 24, Some(gateway), 1450)
        .unwrap();
    ipv4_only(&vm.ns);
    vm
}

/// Packets received and sent by a device in a node.
fn packets(lab: &Lab, node: usize, device: &str) -> (u64, u64) {
    let out = lab.nodes[node]
        .ns
        .ip(&["-s", "-j", "link", "show", "dev", device])
        .unwrap();
    let v: Value = serde_json::from_str(&out).unwrap();
    let stats = &v[0]["stats64"];
    (
        stats["rx"]["packets"].as_u64().unwrap(),
        stats["tx"]["packets"].as_u64().unwrap(),
    )
}

fn vni(lab: &Lab, net_id: &str) -> u64 {
    let (_, n) = lab.api("GET", &format!("/v2.0/networks/{net_id}"), None);
    n["network"]["provider:segmentation_id"].as_u64().unwrap()
}

/// Router namespaces pinned by node `node`'s agent.
fn router_namespaces(lab: &Lab, node: usize) -> Vec<String> {
    std::fs::read_dir(&lab.nodes[node].netns_dir)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                // Not the networks' DHCP namespaces, which stay while their ports do.
                .filter(|n| n.starts_with("qrouter-") || n.starts_with("snat-"))
                .collect()
        })
        .unwrap_or_default()
}

fn add_pod(cloud: &Cloud, node: usize, pod: &isthmus_lab::Pod, args: &str) -> Value {
    let config = cni_conf(cloud, node, json!({}));
    cni_add(cloud, node, pod, "routed-pod", args, &config)
}

/// A router of project-a with interfaces on `subnets`, and a gateway on `external` if given.
fn router(lab: &Lab, external: Option<&str>, subnets: &[&str]) -> Value {
    let mut body = json!({"name": "r1", "project_id": "project-a"});
    if let Some(ext) = external {
        body["external_gateway_info"] = json!({ "network_id": ext });
    }
    let router = post(lab, "/v2.0/routers", json!({ "router": body }))["router"].clone();
    for subnet in subnets {
        let (s, info) = lab.api(
            "PUT",
            &format!(
                "/v2.0/routers/{}/add_router_interface",
                router["id"].as_str().unwrap()
            ),
            Some(&json!({ "subnet_id": subnet })),
        );
        assert_eq!(s, 200, "{info}");
    }
    router
}

/// Removes a router's interfaces, then the router; every node's namespaces for it go.
fn remove_router(lab: &Lab, router_id: &str, subnets: &[&str]) {
    for subnet in subnets {
        let (s, info) = lab.api(
            "PUT",
            &format!("/v2.0/routers/{router_id}/remove_router_interface"),
            Some(&json!({ "subnet_id": subnet })),
        );
        assert_eq!(s, 200, "{info}");
    }
    let (s, v) = lab.api("DELETE", &format!("/v2.0/routers/{router_id}"), None);
    assert_eq!(s, 204, "{v}");
    let nodes = lab.nodes.len();
    wait_for(
        "router namespaces to go from every node",
        Duration::from_secs(10),
        || (0..nodes).all(|n| router_namespaces(lab, n).is_empty()),
    );
}

/// project-a's default group admits ICMP from anywhere (the outside host).
fn allow_icmp_from_anywhere(lab: &Lab) {
    let (_, groups) = lab.api(
        "GET",
        "/v2.0/security-groups?project_id=project-a&name=default",
        None,
    );
    let group = groups["security_groups"][0]["id"].as_str().unwrap();
    post(
        lab,
        "/v2.0/security-group-rules",
        json!({"security_group_rule": {"security_group_id": group, "direction": "ingress",
        "ethertype": "IPv4", "protocol": "icmp", "remote_ip_prefix": "0.0.0.0/0"}}),
    );
}

/// Two subnets of project-a on one router: A (10.1.0.0/24) with VM 1 on node 1 and VM 3 on
/// node 3, B (10.2.0.0/24) with a pod on node 2 (through the CNI plugin). Guests speak IPv4
/// only.
struct Routed {
    router: Value,
    router_id: String,
    nets: [String; 2],
    subnets: [String; 2],
    vm1: isthmus_lab::Vm,
    vm1_port: Value,
    vm1_ip: String,
    vm3: isthmus_lab::Vm,
    vm3_port: Value,
    vm3_ip: String,
    pod: isthmus_lab::Pod,
    pod_ip: String,
}

fn routed(cloud: &Cloud, external: Option<&str>) -> Routed {
    let lab = &cloud.lab;
    let (net_a, sub_a) = shared_network(lab, "net-a", "10.1.0.0/24");
    let (net_b, sub_b) = shared_network(lab, "net-b", "10.2.0.0/24");
    let router = router(lab, external, &[&sub_a, &sub_b]);
    let vm1_port = vm_port(lab, &net_a, 1, "vm1");
    let vm1 = vm(lab, 0, &vm1_port, "10.1.0.1");
    let vm3_port = vm_port(lab, &net_a, 3, "vm3");
    let vm3 = vm(lab, 2, &vm3_port, "10.1.0.1");
    let (s, b) = lab.api(
        "PUT",
        "/isthmus/v1/namespace-bindings/team-b",
        Some(&json!({"namespace_binding": {"network_id": net_b, "project_id": "project-a"}})),
    );
    assert_eq!(s, 201, "{b}");
    let pod = lab.add_pod().unwrap();
    ipv4_only(&pod.ns);
    let result = add_pod(
        cloud,
        1,
        &pod,
        "K8S_POD_NAMESPACE=team-b;K8S_POD_NAME=web;K8S_POD_UID=uid-web",
    );
    let pod_ip = result["ips"][0]["address"]
        .as_str()
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_owned();
    assert!(pod_ip.starts_with("10.2.0."), "{result}");
    let ip = |p: &Value| p["fixed_ips"][0]["ip_address"].as_str().unwrap().to_owned();
    Routed {
        router_id: router["id"].as_str().unwrap().to_owned(),
        router,
        nets: [net_a, net_b],
        subnets: [sub_a, sub_b],
        vm1,
        vm1_ip: ip(&vm1_port),
        vm1_port,
        vm3,
        vm3_ip: ip(&vm3_port),
        vm3_port,
        pod,
        pod_ip,
    }
}

/// Everything a router namespace holds, as text (device indexes included: a recreated device
/// shows).
fn router_state(lab: &Lab, node: usize, namespace: &str) -> String {
    [
        &["ip", "-o", "link"][..],
        &["ip", "-o", "addr"],
        &["ip", "neigh", "show", "nud", "permanent"],
        &["ip", "route", "show", "table", "all"],
        &["ip", "rule"],
        &["nft", "list", "ruleset"],
    ]
    .iter()
    .map(|args| {
        let out = in_router(lab, node, namespace, args);
        // The kernel dumps neighbours in its (global) hash table's order, which changes when
        // the table grows for any namespace: compare them as a set.
        if args[1] == "neigh" {
            let mut lines: Vec<&str> = out.lines().collect();
            lines.sort_unstable();
            lines.join("\n")
        } else {
            out
        }
    })
    .collect::<Vec<_>>()
    .join("\n")
}

#[test]
fn subnets_are_routed_on_the_source_node_and_never_through_a_third() {
    let Some(mut cloud) = cloud(3) else { return };
    let lab = &cloud.lab;
    wait_agents(lab, 3);
    // VM 3 on node 3 in A gives node 3 both networks (and the router): it would see any traffic
    // flooded or relayed through it.
    let Routed {
        router_id,
        nets: [net_a, net_b],
        subnets: [sub_a, sub_b],
        vm1,
        vm1_ip,
        vm3,
        pod,
        pod_ip,
        ..
    } = routed(&cloud, None);

    wait_for(
        "VM 1 to reach the pod through the router",
        Duration::from_secs(20),
        || pings(&vm1.ns, &pod_ip, 1),
    );
    assert!(pings(&pod.ns, &vm1_ip, 3), "the pod reaches VM 1");
    assert!(pings(&vm3.ns, &pod_ip, 3), "VM 3 reaches the pod");

    // Every node with a port on one of the router's networks runs it.
    let namespace = format!("qrouter-{router_id}");
    for node in 0..3 {
        assert_eq!(
            router_namespaces(lab, node),
            std::slice::from_ref(&namespace),
            "node{node}"
        );
    }

    // Extra routes reach every copy of the router (next hop: VM 3, as if it routed 10.9/16).
    let vm3_ip = vm3
        .ns
        .ip(&["-o", "-4", "addr", "show", "eth0"])
        .unwrap()
        .split_whitespace()
        .nth(3)
        .and_then(|a| a.split('/').next())
        .unwrap()
        .to_owned();
    let route = |routes: Value| {
        let (s, v) = lab.api(
            "PUT",
            &format!("/v2.0/routers/{router_id}"),
            Some(&json!({"router": {"routes": routes}})),
        );
        assert_eq!(s, 200, "{v}");
    };
    route(json!([{"destination": "10.9.0.0/16", "nexthop": vm3_ip}]));
    let extra = format!("10.9.0.0/16 via {vm3_ip} dev qr-");
    wait_for(
        "the extra route on every node",
        Duration::from_secs(10),
        || (0..3).all(|n| in_router(lab, n, &namespace, &["ip", "route"]).contains(&extra)),
    );
    route(json!([]));
    wait_for("the extra route to go", Duration::from_secs(10), || {
        (0..3).all(|n| !in_router(lab, n, &namespace, &["ip", "route"]).contains("10.9.0.0/16"))
    });

    // Routed on the source node, tunnelled straight to the destination: node 3's tunnels
    // carry none of it, node 1 sends it out on B's tunnel itself.
    let (vni_a, vni_b) = (
        format!("vxlan-{}", vni(lab, &net_a)),
        format!("vxlan-{}", vni(lab, &net_b)),
    );
    // Guests announce themselves when they come up (multicast reports, flooded to every node
    // of their network, as on any LAN); the count starts once node 3 is quiet.
    let third = || (packets(lab, 2, &vni_a), packets(lab, 2, &vni_b));
    let mut last = third();
    wait_for("node 3 to be quiet", Duration::from_secs(15), || {
        std::thread::sleep(Duration::from_millis(1500));
        let now = third();
        std::mem::replace(&mut last, now) == now
    });
    let third_before = third();
    let node1_b_before = packets(lab, 0, &vni_b);
    assert!(pings(&vm1.ns, &pod_ip, 100), "100 routed pings from VM 1");
    assert!(
        pings(&pod.ns, &vm1_ip, 100),
        "100 routed pings from the pod"
    );
    let third_after = third();
    let node1_b_after = packets(lab, 0, &vni_b);
    assert_eq!(
        third_before, third_after,
        "node 3's tunnels carried none of it"
    );
    assert!(
        node1_b_after.1 - node1_b_before.1 >= 200,
        "node 1 routed VM 1's requests and its replies onto B itself: {node1_b_before:?} -> {node1_b_after:?}"
    );

    // Agent restarts reconcile by diff: routed traffic (a 0.01 s ping, VM 1 -> pod) loses
    // nothing while both agents restart, and the router namespaces are left exactly as they were
    // (same devices, addresses, neighbours, routes).
    let before: Vec<String> = (0..2).map(|n| router_state(lab, n, &namespace)).collect();
    let pinger = vm1
        .ns
        .command("ping")
        .args(["-q", "-i", "0.01", "-c", "330", "-w", "10", &pod_ip])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    for node in 0..2 {
        let restarted = cloud.lab.start_agent(cloud::BIN, node).unwrap();
        drop(std::mem::replace(&mut cloud.agents[node], restarted));
    }
    std::thread::sleep(Duration::from_millis(2000));
    let summary = String::from_utf8_lossy(&pinger.wait_with_output().unwrap().stdout).into_owned();
    let counts: Vec<u64> = summary
        .lines()
        .find(|l| l.contains("packet loss"))
        .unwrap_or_default()
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|t| t.parse().ok())
        .collect();
    eprintln!("routed ping during two agent restarts: {counts:?} (sent, received, ...)");
    assert!(counts[0] > 200 && counts[0] == counts[1], "{summary}");
    for (n, b) in before.iter().enumerate() {
        assert_eq!(
            b,
            &router_state(lab, n, &namespace),
            "node{} changed",
            n + 1
        );
    }

    // Gone through the API, gone from every node.
    remove_router(lab, &router_id, &[&sub_a, &sub_b]);
    assert!(!pings(&vm1.ns, &pod_ip, 1), "no router, no route");
    // Node 1 has no port on B: B's bridge and tunnel went with the router.
    let links = lab.nodes[0].ns.ip(&["-o", "link"]).unwrap();
    assert!(!links.contains(&vni_b), "{links}");
    let taps: Vec<&str> = links
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .filter_map(|n| n.split('@').next())
        .filter(|n| n.starts_with("tap"))
        .collect();
    assert_eq!(taps, [vm1.tap.as_str()], "the router's taps are gone");
}

/// Counts, in the outside host, the echo requests arriving from each of `sources`.
struct Seen<'a>(&'a Netns);

impl<'a> Seen<'a> {
    fn install(ns: &'a Netns, sources: &[&str]) -> Seen<'a> {
        let mut script =
            "table ip seen {\n chain input {\n  type filter hook input priority 0; policy accept;\n"
                .to_owned();
        for s in sources {
            script.push_str(&format!(
                "  ip saddr {s} icmp type echo-request counter comment \"{s}\"\n"
            ));
        }
        script.push_str(" }\n}\n");
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), script).unwrap();
        ns.exec("nft", &["-f", &file.path().to_string_lossy()])
            .unwrap();
        Seen(ns)
    }

    fn count(&self, source: &str) -> u64 {
        let out = self
            .0
            .exec("nft", &["-j", "list", "chain", "ip", "seen", "input"])
            .unwrap();
        let v: Value = serde_json::from_str(&out).unwrap();
        v["nftables"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|i| i["rule"]["comment"] == source)
            .flat_map(|i| i["rule"]["expr"].as_array().cloned().unwrap_or_default())
            .find_map(|e| e["counter"]["packets"].as_u64())
            .unwrap_or(0)
    }
}

fn post(lab: &Lab, path: &str, body: Value) -> Value {
    let (s, v) = lab.api("POST", path, Some(&body));
    assert_eq!(s, 201, "POST {path}: {v}");
    v
}

/// What is configured in a router namespace of node `node`.
fn in_router(lab: &Lab, node: usize, namespace: &str, args: &[&str]) -> String {
    let path = lab.nodes[node].netns_dir.join(namespace);
    let mut all = vec![format!("--net={}", path.display())];
    all.extend(args.iter().map(|a| a.to_string()));
    let all: Vec<&str> = all.iter().map(String::as_str).collect();
    isthmus_lab::run("nsenter", &all).unwrap_or_default()
}

#[test]
fn snat_floating_ips_and_the_physical_segment() {
    use isthmus_lab::PUBLIC_MAPPING;
    // node1 and node2 reach the external network; node3 does not.
    let mapped: &[&str] = &["--physnet", PUBLIC_MAPPING];
    let args = [mapped, mapped, &[]];
    let Some(mut cloud) = cloud::cloud_with(&args) else {
        return;
    };
    let lab = &cloud.lab;
    wait_agents(lab, 3);
    let ext = lab.create_public_network().unwrap();
    let Routed {
        router,
        router_id,
        subnets: [sub_a, sub_b],
        vm1,
        vm1_ip,
        vm3,
        vm3_ip,
        pod,
        pod_ip,
        vm1_port,
        vm3_port,
        ..
    } = routed(&cloud, Some(&ext));
    let external_ip = router["external_gateway_info"]["external_fixed_ips"][0]["ip_address"]
        .as_str()
        .unwrap()
        .to_owned();
    let (_, gw) = lab.api(
        "GET",
        &format!("/v2.0/ports?device_owner=network:router_gateway&device_id={router_id}"),
        None,
    );
    assert_eq!(
        gw["ports"][0]["binding:host_id"], "node1",
        "the gateway goes to a node mapping the physnet"
    );
    allow_icmp_from_anywhere(lab);

    let outside = lab.add_outside_host("172.24.4.200/24").unwrap();
    let seen = Seen::install(
        &outside,
        &[
            &external_ip,
            "172.24.4.50",
            "172.24.4.51",
            &vm1_ip,
            &vm3_ip,
            &pod_ip,
        ],
    );

    // SNAT: without floating IPs, everyone leaves with the router's external address.
    wait_for("VM 1 to reach the outside", Duration::from_secs(20), || {
        pings(&vm1.ns, "172.24.4.200", 1)
    });
    wait_for(
        "VM 3 (on a node without the physnet) to reach the outside",
        Duration::from_secs(20),
        || pings(&vm3.ns, "172.24.4.200", 1),
    );
    wait_for(
        "the pod to reach the outside",
        Duration::from_secs(20),
        || pings(&pod.ns, "172.24.4.200", 1),
    );
    let before = seen.count(&external_ip);
    assert!(pings(&vm3.ns, "172.24.4.200", 2));
    assert!(pings(&pod.ns, "172.24.4.200", 2));
    assert_eq!(seen.count(&external_ip), before + 4, "all of it SNAT'd");
    for source in [&vm1_ip, &vm3_ip, &pod_ip] {
        assert_eq!(seen.count(source), 0, "{source} never seen outside");
    }

    // The physical segment: with a route via the router's external address, the outside
    // reaches VMs and pods on their own addresses.
    for subnet in ["10.1.0.0/24", "10.2.0.0/24"] {
        outside
            .ip(&["route", "add", subnet, "via", &external_ip])
            .unwrap();
    }
    assert!(pings(&outside, &vm1_ip, 2), "VM 1 on its own address");
    assert!(pings(&outside, &pod_ip, 2), "the pod on its own address");
    for subnet in ["10.1.0.0/24", "10.2.0.0/24"] {
        outside.ip(&["route", "del", subnet]).unwrap();
    }

    // Floating IPs: VM 1's node maps the physnet, so node 1 NATs it itself; VM 3's does not,
    // so the gateway node does.
    for (address, port) in [("172.24.4.50", &vm1_port), ("172.24.4.51", &vm3_port)] {
        post(
            lab,
            "/v2.0/floatingips",
            json!({"floatingip": {"floating_network_id": ext, "floating_ip_address": address,
            "port_id": port["id"]}}),
        );
    }
    wait_for(
        "the outside to reach VM 1 on its floating IP",
        Duration::from_secs(20),
        || pings(&outside, "172.24.4.50", 1),
    );
    wait_for(
        "the outside to reach VM 3 on its floating IP",
        Duration::from_secs(20),
        || pings(&outside, "172.24.4.51", 1),
    );
    wait_for(
        "the nodes doing their NAT to report the floating IPs ACTIVE",
        Duration::from_secs(10),
        || {
            let (_, fips) = lab.api("GET", "/v2.0/floatingips", None);
            fips["floatingips"]
                .as_array()
                .is_some_and(|a| a.len() == 2 && a.iter().all(|f| f["status"] == "ACTIVE"))
        },
    );
    let qrouter = format!("qrouter-{router_id}");
    let snat = format!("snat-{router_id}");
    assert!(
        in_router(lab, 0, &qrouter, &["ip", "-o", "addr"]).contains("172.24.4.50/32"),
        "VM 1's floating IP lives in node 1's router"
    );
    assert!(
        in_router(lab, 0, &snat, &["ip", "-o", "addr"]).contains("172.24.4.51/32"),
        "VM 3's floating IP lives in the SNAT namespace"
    );
    assert!(pings(&vm1.ns, "172.24.4.200", 2));
    assert!(pings(&vm3.ns, "172.24.4.200", 2));
    assert_eq!(
        seen.count("172.24.4.50"),
        2,
        "VM 1 leaves with its floating IP"
    );
    assert_eq!(
        seen.count("172.24.4.51"),
        2,
        "VM 3 leaves with its floating IP"
    );
    assert_eq!(seen.count(&external_ip), before + 4, "nothing more SNAT'd");

    // What an operator sees on the gateway node.
    let netns_dir = lab.nodes[0].netns_dir.to_string_lossy().into_owned();
    let report = lab.nodes[0]
        .ns
        .exec(cloud::BIN, &["inspect", "--netns-dir", &netns_dir])
        .unwrap();
    for expected in [
        format!("  {snat}"),
        qrouter.clone(),
        "172.24.4.51/32".to_owned(),
        format!("dnat to {vm1_ip}"),
        format!("snat to {external_ip}"),
        "lookup".to_owned(),
        "route 0.0.0.0/0 via 172.24.4.1 dev qg-".to_owned(),
        "permanent neighbours".to_owned(),
    ] {
        assert!(
            report.contains(&expected),
            "inspect lacks {expected}:\n{report}"
        );
    }

    // The SNAT namespace's NAT table changed several times; each rule is there once.
    let nat = in_router(lab, 0, &snat, &["nft", "list", "table", "ip", "isthmus"]);
    assert_eq!(nat.matches("dnat to").count(), 1, "{nat}");
    assert_eq!(nat.matches("snat to").count(), 2, "{nat}");

    // Restarted agents find their namespaces right (rules, tables, NAT chains) and change
    // nothing.
    let places = [
        (0, qrouter.clone()),
        (0, snat.clone()),
        (2, qrouter.clone()),
    ];
    let before: Vec<String> = places
        .iter()
        .map(|(n, ns)| router_state(lab, *n, ns))
        .collect();
    for (node, extra) in args.iter().enumerate() {
        let restarted = cloud.lab.start_agent_with(cloud::BIN, node, extra).unwrap();
        drop(std::mem::replace(&mut cloud.agents[node], restarted));
    }
    std::thread::sleep(Duration::from_millis(2000));
    for ((n, ns), b) in places.iter().zip(&before) {
        assert_eq!(b, &router_state(lab, *n, ns), "{ns} on node{}", n + 1);
    }
    assert!(pings(&outside, "172.24.4.50", 1) && pings(&outside, "172.24.4.51", 1));

    // VM 1's floating IP moves to the pod on node 2 (which maps the physnet): the same
    // floating port, so the same MAC, now behind node 2; its gratuitous ARP tells the
    // external network at once (the fabric bridge would otherwise keep sending it to node 1).
    let (_, fips) = lab.api(
        "GET",
        "/v2.0/floatingips?floating_ip_address=172.24.4.50",
        None,
    );
    let moved = fips["floatingips"][0]["id"].as_str().unwrap().to_owned();
    let (_, pods) = lab.api(
        "GET",
        &format!("/v2.0/ports?fixed_ips=ip_address%3D{pod_ip}"),
        None,
    );
    let pod_port = pods["ports"][0]["id"].as_str().unwrap().to_owned();
    let (s, v) = lab.api(
        "PUT",
        &format!("/v2.0/floatingips/{moved}"),
        Some(&json!({"floatingip": {"port_id": pod_port}})),
    );
    assert_eq!(s, 200, "{v}");
    // (A ping alone proves nothing yet: until node 1 lets go, it still answers for VM 1.)
    wait_for(
        "node 2 to NAT the moved floating IP",
        Duration::from_secs(5),
        || in_router(lab, 1, &qrouter, &["ip", "-o", "addr"]).contains("172.24.4.50/32"),
    );
    wait_for(
        "the outside to reach the pod on the moved floating IP",
        Duration::from_secs(5),
        || pings(&outside, "172.24.4.50", 1),
    );

    // Gone through the API, gone from every node: namespaces, addresses, rules.
    let (_, fips) = lab.api("GET", "/v2.0/floatingips", None);
    for fip in fips["floatingips"].as_array().unwrap() {
        let (s, _) = lab.api(
            "DELETE",
            &format!("/v2.0/floatingips/{}", fip["id"].as_str().unwrap()),
            None,
        );
        assert_eq!(s, 204);
    }
    wait_for("the floating IPs to go", Duration::from_secs(10), || {
        !in_router(lab, 1, &qrouter, &["ip", "-o", "addr"]).contains("172.24.4.50")
    });
    assert!(!pings(&outside, "172.24.4.50", 1));
    assert!(pings(&vm1.ns, "172.24.4.200", 1), "back to SNAT");
    let (s, v) = lab.api(
        "PUT",
        &format!("/v2.0/routers/{router_id}"),
        Some(&json!({"router": {"external_gateway_info": {}}})),
    );
    assert_eq!(s, 200, "{v}");
    remove_router(lab, &router_id, &[&sub_a, &sub_b]);
}

/// keepalived (VRRPv3, 0.5 s adverts) in a VM namespace, with the VIP on `eth0`.
fn keepalived(
    vm: &isthmus_lab::Vm,
    dir: &std::path::Path,
    priority: u32,
    vip: &str,
) -> isthmus_lab::Daemon {
    let name = vm.ns.name();
    let conf = dir.join(format!("{name}.conf"));
    std::fs::write(
        &conf,
        format!(
            "global_defs {{\n  vrrp_garp_master_repeat 3\n  vrrp_garp_master_refresh 1\n}}\n\
             vrrp_instance vip {{\n  state BACKUP\n  interface eth0\n  virtual_router_id 51\n  \
             priority {priority}\n  advert_int 0.5\n  version 3\n  \
             virtual_ipaddress {{\n    {vip}/24\n  }}\n}}\n"
        ),
    )
    .unwrap();
    isthmus_lab::Daemon(
        vm.ns
            .command("keepalived")
            .args(["--dont-fork", "--log-console", "--vrrp", "--use-file"])
            .arg(&conf)
            .arg("--pid")
            .arg(dir.join(format!("{name}.pid")))
            .arg("--vrrp_pid")
            .arg(dir.join(format!("{name}.vrrp.pid")))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    )
}

fn holds(vm: &isthmus_lab::Vm, vip: &str) -> bool {
    vm.ns
        .ip(&["-o", "addr", "show", "eth0"])
        .is_ok_and(|a| a.contains(&format!("{vip}/")))
}

#[test]
fn keepalived_moves_a_floating_ip_between_vms_on_different_nodes() {
    use isthmus_lab::PUBLIC_MAPPING;
    let mapped: &[&str] = &["--physnet", PUBLIC_MAPPING];
    if isthmus_lab::run("keepalived", &["--version"]).is_err() {
        isthmus_lab::skip("keepalived is not installed (./test.sh installs it)");
        return;
    }
    let Some(cloud) = cloud::cloud_with(&[mapped, mapped, mapped]) else {
        return;
    };
    let lab = &cloud.lab;
    wait_agents(lab, 3);
    let ext = lab.create_public_network().unwrap();
    let (net_a, sub_a) = shared_network(lab, "net-a", "10.1.0.0/24");
    let (net_b, sub_b) = shared_network(lab, "net-b", "10.2.0.0/24");
    router(lab, Some(&ext), &[&sub_a, &sub_b]);

    // The VIP port holds the address (unbound: no node plugs it); both VMs may carry it.
    let vip_port = post(
        lab,
        "/v2.0/ports",
        json!({"port": {"network_id": net_a, "project_id": "project-a", "name": "vip",
        "fixed_ips": [{"ip_address": "10.1.0.100"}]}}),
    )["port"]
        .clone();
    let vip = "10.1.0.100";
    let mut vms = Vec::new();
    for node in [2, 3] {
        let (s, p) = lab.api(
            "POST",
            "/v2.0/ports",
            Some(&json!({"port": {
            "network_id": net_a, "project_id": "project-a", "binding:host_id": format!("node{node}"),
            "device_owner": "compute:nova", "name": format!("lb{node}"),
            "allowed_address_pairs": [{"ip_address": vip}]}})),
        );
        assert_eq!(s, 201, "{p}");
        vms.push(vm(lab, node - 1, &p["port"], "10.1.0.1"));
    }
    allow_icmp_from_anywhere(lab);
    post(
        lab,
        "/v2.0/floatingips",
        json!({"floatingip": {"floating_network_id": ext, "floating_ip_address": "172.24.4.60",
        "port_id": vip_port["id"]}}),
    );

    let dir = tempfile::tempdir().unwrap();
    let mut master = keepalived(&vms[0], dir.path(), 150, vip);
    wait_for("VM 1 to become master", Duration::from_secs(10), || {
        holds(&vms[0], vip)
    });
    let _backup = keepalived(&vms[1], dir.path(), 100, vip);
    let outside = lab.add_outside_host("172.24.4.200/24").unwrap();
    // A client on the other subnet, on node 1: its router resolves the VIP by ARP.
    let client = vm(lab, 0, &vm_port(lab, &net_b, 1, "client"), "10.2.0.1");
    wait_for(
        "the outside to reach the master through the floating IP",
        Duration::from_secs(20),
        || pings(&outside, "172.24.4.60", 1),
    );
    wait_for(
        "the client to reach the VIP through its router",
        Duration::from_secs(20),
        || pings(&client.ns, vip, 1),
    );
    assert!(!holds(&vms[1], vip), "one master");

    // 0.05 s pings through the floating IP and across the router while the master dies.
    let pinger = |from: &Netns, to: &str| {
        from.command("ping")
            .args(["-D", "-i", "0.05", "-W", "1", to])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let pings_in = [
        ("the floating IP", pinger(&outside, "172.24.4.60")),
        ("the router", pinger(&client.ns, vip)),
    ];
    std::thread::sleep(Duration::from_secs(1));
    // The master dies: its keepalived is killed (the VRRP process, then its parent; no clean
    // handover) and its interface goes down with it, so only the backup can answer.
    let vrrp_pid =
        std::fs::read_to_string(dir.path().join(format!("{}.vrrp.pid", vms[0].ns.name()))).unwrap();
    isthmus_lab::run("kill", &["-9", vrrp_pid.trim()]).unwrap();
    let killed = std::time::Instant::now();
    let _ = master.0.kill();
    vms[0].ns.ip(&["link", "set", "eth0", "down"]).unwrap();
    wait_for("VM 2 to take the address", Duration::from_secs(5), || {
        holds(&vms[1], vip)
    });
    let takeover = killed.elapsed();
    std::thread::sleep(Duration::from_secs(2));
    for (through, mut ping) in pings_in {
        let _ = ping.kill();
        let out = ping.wait_with_output().unwrap();
        let stamps: Vec<f64> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.contains("bytes from"))
            .filter_map(|l| l.strip_prefix('[')?.split(']').next()?.parse().ok())
            .collect();
        let gap = stamps
            .windows(2)
            .map(|w| w[1] - w[0])
            .fold(0.0_f64, f64::max);
        eprintln!(
            "keepalived failover: VIP moved after {:.2} s, longest gap between replies through {through} {gap:.2} s ({} replies)",
            takeover.as_secs_f64(),
            stamps.len()
        );
        assert!(stamps.len() > 40, "the ping ran: {}", stamps.len());
        assert!(
            gap < 3.0,
            "through {through}, the backup answered {gap:.2} s after the last reply from the master"
        );
        let last = stamps.last().copied().unwrap_or_default();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        assert!(
            now - last < 1.0,
            "replies through {through} still flow from the new master"
        );
    }
}

#[test]
fn a_lost_gateway_node_hands_snat_and_floating_ips_to_another() {
    use isthmus_lab::PUBLIC_MAPPING;
    if !isthmus_lab::runnable() {
        return;
    }
    // Heartbeats every second, gateways moved after 3 silent seconds (defaults: 10 and 30).
    let beat: &[&str] = &["--heartbeat-seconds", "1"];
    let mapped: &[&str] = &["--physnet", PUBLIC_MAPPING, "--heartbeat-seconds", "1"];
    let lab = Lab::new(3).unwrap();
    let data = tempfile::tempdir().unwrap();
    let mut cloud = cloud::start_cloud(
        lab,
        data,
        &["--gateway-down-seconds", "3"],
        &[mapped, mapped, beat],
    );
    let lab = &cloud.lab;
    wait_agents(lab, 3);
    let ext = lab.create_public_network().unwrap();
    let Routed {
        router_id,
        vm3,
        vm3_port,
        ..
    } = routed(&cloud, Some(&ext));
    let gateway_host = || {
        lab.api(
            "GET",
            &format!("/v2.0/ports?device_owner=network:router_gateway&device_id={router_id}"),
            None,
        )
        .1["ports"][0]["binding:host_id"]
            .clone()
    };
    assert_eq!(gateway_host(), "node1");
    allow_icmp_from_anywhere(lab);
    let outside = lab.add_outside_host("172.24.4.200/24").unwrap();
    // VM 3's node does not map the physnet: the gateway node NATs its floating IP.
    post(
        lab,
        "/v2.0/floatingips",
        json!({"floatingip": {"floating_network_id": ext, "floating_ip_address": "172.24.4.51",
        "port_id": vm3_port["id"]}}),
    );
    wait_for("SNAT through node 1", Duration::from_secs(20), || {
        pings(&vm3.ns, "172.24.4.200", 1)
    });
    wait_for(
        "the floating IP through node 1",
        Duration::from_secs(20),
        || pings(&outside, "172.24.4.51", 1),
    );

    // Node 1 dies: its agent stops and its links go down.
    let _ = cloud.agents[0].0.kill();
    let _ = cloud.agents[0].0.wait();
    for link in ["eth0", "eth1"] {
        lab.nodes[0].ns.ip(&["link", "set", link, "down"]).unwrap();
    }
    let lost = std::time::Instant::now();
    wait_for("SNAT through another node", Duration::from_secs(10), || {
        pings(&vm3.ns, "172.24.4.200", 1)
    });
    wait_for(
        "the floating IP through another node",
        Duration::from_secs(10).saturating_sub(lost.elapsed()),
        || pings(&outside, "172.24.4.51", 1),
    );
    eprintln!(
        "SNAT and the floating IP work again {:?} after node 1 was lost",
        lost.elapsed()
    );
    assert_eq!(gateway_host(), "node2");
}
