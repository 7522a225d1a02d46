//! Trunks on the real kernel with a real guest: a QEMU guest on node 1 whose port is a trunk
//! parent carries two subports of two networks as VLANs 101 and 102 (802.1q subinterfaces in
//! the guest; tc BPF on the host, which has no VLAN devices), each reaching a VM and a pod of
//! its network on node 2, under its own security groups; the parent's untagged traffic stays on
//! the parent's network; removing a subport cuts it off; an agent restart loses nothing.

mod cloud;

use std::process::Stdio;
use std::time::{Duration, Instant};

use cloud::{cloud, cni_add, cni_conf, create, default_group, ip_of, wait_for};
use isthmus_lab::guest::{self, Guest, GuestImage};
use serde_json::{json, Value};

fn image() -> Option<GuestImage> {
    if !guest::qemu_available() {
        isthmus_lab::skip("QEMU (qemu-system-x86) is not installed");
        return None;
    }
    Some(guest::image(&std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("guest")).unwrap())
}

/// Runs `command` in the guest; its output, after asserting it succeeded.
fn sh(guest: &mut Guest, command: &str) -> String {
    let (out, status) = guest.run(command, Duration::from_secs(60)).unwrap();
    assert_eq!(status, 0, "guest: {command}\n{out}");
    out
}

/// Whether the guest reaches `ip` (through `via`, an interface, when given).
/// Whether the guest reaches `ip`, from the pod (network namespace) of process `pod` when
/// given.
fn reaches(guest: &mut Guest, ip: &str, pod: Option<&str>) -> bool {
    let inside = pod
        .map(|p| format!("nsenter -t {p} -n "))
        .unwrap_or_default();
    let (_, status) = guest
        .run(
            &format!("{inside}ping -c 2 -W 2 {ip} >/dev/null"),
            Duration::from_secs(30),
        )
        .unwrap();
    status == 0
}

/// Whether a namespace reaches `ip` with one ping.
fn pings(ns: &isthmus_lab::Netns, ip: &str) -> bool {
    ns.exec("ping", &["-c", "1", "-W", "2", ip]).is_ok()
}

/// Packets sent and received by a finished `ping -q`.
fn ping_counts(summary: &str) -> (u64, u64) {
    let line = summary
        .lines()
        .find(|l| l.contains("packet loss"))
        .unwrap_or_default();
    let n: Vec<u64> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|t| t.parse().ok())
        .collect();
    (
        n.first().copied().unwrap_or(0),
        n.get(1).copied().unwrap_or(0),
    )
}

#[test]
fn a_guest_carries_two_networks_on_vlan_subports() {
    let Some(mut cloud) = cloud(2) else { return };
    let Some(image) = image() else { return };
    let lab = &cloud.lab;
    let project = "nested";
    let (mut nets, mut subnets) = (Vec::new(), Vec::new());
    for (name, cidr) in [
        ("vms", "10.80.0.0/24"),
        ("pods-a", "10.81.0.0/24"),
        ("pods-b", "10.82.0.0/24"),
    ] {
        let net = create(
            lab,
            "/v2.0/networks",
            "network",
            json!({"name": name, "project_id": project}),
        );
        let net = net["id"].as_str().unwrap().to_owned();
        let subnet = create(
            lab,
            "/v2.0/subnets",
            "subnet",
            json!({"network_id": net, "ip_version": 4, "cidr": cidr, "project_id": project}),
        );
        subnets.push(subnet["id"].as_str().unwrap().to_owned());
        nets.push(net);
    }
    let port = |net: &str, host: &str, extra: Value| {
        let mut body = json!({"network_id": net, "project_id": project, "binding:host_id": host});
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        create(lab, "/v2.0/ports", "port", body)
    };
    let parent = port(
        &nets[0],
        "node1",
        json!({"device_owner": "compute:nova", "device_id": "7d0c1e2f-0000-4000-8000-0000000000a1"}),
    );
    let sub_a = port(&nets[1], "", json!({"name": "pod-a-in-vm"}));
    let sub_b = port(&nets[2], "", json!({"name": "pod-b-in-vm"}));
    let default = default_group(lab, Some(project));
    create(
        lab,
        "/v2.0/security-group-rules",
        "security_group_rule",
        json!({"security_group_id": default, "direction": "ingress", "protocol": "icmp"}),
    );
    let trunk = create(
        lab,
        "/v2.0/trunks",
        "trunk",
        json!({"name": "vm-trunk", "port_id": parent["id"], "project_id": project, "sub_ports": [
            {"port_id": sub_a["id"], "segmentation_type": "vlan", "segmentation_id": 101},
            {"port_id": sub_b["id"], "segmentation_type": "vlan", "segmentation_id": 102},
        ]}),
    );
    let trunk_id = trunk["id"].as_str().unwrap().to_owned();

    // On node 2: a VM on each network, and a bare-metal pod on pods-a.
    let peer = |net: &str| port(net, "node2", json!({"device_owner": "compute:nova"}));
    let (vm_p, vm_a, vm_b) = (peer(&nets[0]), peer(&nets[1]), peer(&nets[2]));
    let vms: Vec<_> = [&vm_p, &vm_a, &vm_b]
        .iter()
        .map(|p| lab.add_vm_for_port(1, p, 24, None, 1450).unwrap())
        .collect();
    let pod = lab.add_pod().unwrap();
    let conf = cni_conf(&cloud, 1, json!({"network": nets[1], "project": project}));
    let added = cni_add(
        &cloud,
        1,
        &pod,
        "bare-pod",
        "K8S_POD_NAMESPACE=demo;K8S_POD_NAME=bare;K8S_POD_UID=uid-bare",
        &conf,
    );
    let pod_ip = added["ips"][0]["address"]
        .as_str()
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_owned();

    // The guest: its own address untagged on eth0, and two pods (network namespaces), each
    // with an 802.1q subinterface of eth0 with its subport's MAC and address.
    let scratch = tempfile::tempdir().unwrap();
    let console = scratch.path().join("console");
    let mut guest = lab
        .boot_interactive_guest(0, &parent, &image, &console)
        .unwrap();
    sh(
        &mut guest,
        &format!("ip addr add {}/24 dev eth0", ip_of(&parent)),
    );
    let mut pods = Vec::new();
    for (sub, vlan) in [(&sub_a, 101), (&sub_b, 102)] {
        let pid = sh(
            &mut guest,
            "unshare -n sleep 100000 >/dev/null 2>&1 & echo $!",
        );
        let pid = pid.trim().to_owned();
        sh(
            &mut guest,
            &format!(
                "ip link add link eth0 name eth0.{vlan} type vlan id {vlan} && \
                 ip link set eth0.{vlan} address {mac} && ip link set eth0.{vlan} netns {pid} && \
                 nsenter -t {pid} -n ip addr add {ip}/24 dev eth0.{vlan} && \
                 nsenter -t {pid} -n ip link set eth0.{vlan} up",
                mac = sub["mac_address"].as_str().unwrap(),
                ip = ip_of(sub)
            ),
        );
        pods.push(pid);
    }
    let (pod_a, pod_b) = (Some(pods[0].as_str()), Some(pods[1].as_str()));
    wait_for("the trunk to be ACTIVE", Duration::from_secs(30), || {
        let (_, v) = lab.api("GET", &format!("/v2.0/trunks/{trunk_id}"), None);
        v["trunk"]["status"] == "ACTIVE"
    });
    // The subports are plugged on node 1 like any port: veth pairs, the bridge end on the
    // subport network's bridge.
    let links = lab.nodes[0].ns.ip(&["-br", "link"]).unwrap();
    for sub in [&sub_a, &sub_b] {
        let id = sub["id"].as_str().unwrap();
        assert!(links.contains(&format!("spt{}", &id[..11])), "{links}");
        assert!(links.contains(&format!("tap{}", &id[..11])), "{links}");
    }

    assert!(
        reaches(&mut guest, &ip_of(&vm_a), pod_a),
        "pod A (VLAN 101) → VM on pods-a"
    );
    assert!(
        reaches(&mut guest, &pod_ip, pod_a),
        "pod A (VLAN 101) → bare-metal pod on pods-a"
    );
    assert!(
        reaches(&mut guest, &ip_of(&vm_b), pod_b),
        "pod B (VLAN 102) → VM on pods-b"
    );
    assert!(
        reaches(&mut guest, &ip_of(&vm_p), None),
        "the guest, untagged → VM on the parent's network"
    );
    // Pod A is on pods-a only: pods-b is reached through a router, not otherwise.
    assert!(!reaches(&mut guest, &ip_of(&vm_b), pod_a));
    let router = create(
        lab,
        "/v2.0/routers",
        "router",
        json!({"name": "pods-r", "project_id": project}),
    );
    let router = router["id"].as_str().unwrap().to_owned();
    for subnet in &subnets[1..] {
        cloud::add_router_interface(lab, &router, subnet);
    }
    sh(
        &mut guest,
        &format!(
            "nsenter -t {} -n ip route add default via 10.81.0.1",
            pods[0]
        ),
    );
    // The VM on pods-b answers through the router too.
    vms[2]
        .ns
        .ip(&["route", "add", "default", "via", "10.82.0.1"])
        .unwrap();
    wait_for(
        "pod A to reach pods-b through the router",
        Duration::from_secs(20),
        || reaches(&mut guest, &ip_of(&vm_b), pod_a),
    );
    // From node 2, each subport answers on its own network.
    assert!(pings(&vms[1].ns, &ip_of(&sub_a)));
    assert!(pings(&vms[2].ns, &ip_of(&sub_b)));

    // A security group on a subport is that subport's alone: pods-b's subport in a group that
    // admits nothing stops answering, the other and the parent go on.
    let closed = create(
        lab,
        "/v2.0/security-groups",
        "security_group",
        json!({"name": "closed", "project_id": project}),
    );
    let (s, v) = lab.api(
        "PUT",
        &format!("/v2.0/ports/{}", sub_b["id"].as_str().unwrap()),
        Some(&json!({"port": {"security_groups": [closed["id"]]}})),
    );
    assert_eq!(s, 200, "{v}");
    wait_for(
        "pods-b's subport to refuse pings",
        Duration::from_secs(10),
        || !pings(&vms[2].ns, &ip_of(&sub_b)),
    );
    assert!(pings(&vms[1].ns, &ip_of(&sub_a)));
    assert!(pings(&vms[0].ns, &ip_of(&parent)));

    // An agent restart loses no packet on a subport: a 0.01 s ping from node 2 to the guest's
    // VLAN 101 address while node 1's agent is replaced. A count, not a bare deadline: with `-w`
    // alone the echo sent at the deadline is still in flight when ping exits and counts as lost.
    let pinger = vms[1]
        .ns
        .command("ping")
        .args(["-q", "-i", "0.01", "-c", "330", "-w", "10", &ip_of(&sub_a)])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    drop(std::mem::replace(
        &mut cloud.agents[0],
        lab.start_agent(cloud::BIN, 0).unwrap(),
    ));
    let summary = String::from_utf8_lossy(&pinger.wait_with_output().unwrap().stdout).into_owned();
    let (sent, received) = ping_counts(&summary);
    eprintln!("ping to a subport during an agent restart: {summary}");
    assert!(sent > 200, "{summary}");
    assert_eq!(sent, received, "packets lost on the subport: {summary}");
    assert!(
        reaches(&mut guest, &ip_of(&vm_a), pod_a),
        "after the restart"
    );

    // Deleting the trunk while it carries subports is refused; removing a subport cuts it off
    // within a second.
    let (s, v) = lab.api("DELETE", &format!("/v2.0/trunks/{trunk_id}"), None);
    assert_eq!(
        (s, v["NeutronError"]["type"].as_str()),
        (409, Some("TrunkInUse"))
    );
    let (s, v) = lab.api(
        "PUT",
        &format!("/v2.0/trunks/{trunk_id}/remove_subports"),
        Some(&json!({"sub_ports": [{"port_id": sub_a["id"]}]})),
    );
    assert_eq!(s, 200, "{v}");
    let removed = Instant::now();
    wait_for("VLAN 101 to be cut off", Duration::from_secs(1), || {
        vms[1]
            .ns
            .exec("ping", &["-c", "1", "-W", "0.2", &ip_of(&sub_a)])
            .is_err()
    });
    eprintln!(
        "subport cut off {:?} after remove_subports",
        removed.elapsed()
    );
    let id = sub_a["id"].as_str().unwrap();
    wait_for("its veth pair to go", Duration::from_secs(10), || {
        !lab.nodes[0]
            .ns
            .ip(&["-br", "link"])
            .unwrap()
            .contains(&format!("spt{}", &id[..11]))
    });
    assert!(
        reaches(&mut guest, &ip_of(&vm_p), None),
        "the parent is untouched"
    );
    let (s, _) = lab.api(
        "PUT",
        &format!("/v2.0/trunks/{trunk_id}/remove_subports"),
        Some(&json!({"sub_ports": [{"port_id": sub_b["id"]}]})),
    );
    assert_eq!(s, 200);
    let (s, _) = lab.api("DELETE", &format!("/v2.0/trunks/{trunk_id}"), None);
    assert_eq!(s, 204);
    wait_for("every subport veth to go", Duration::from_secs(10), || {
        !lab.nodes[0]
            .ns
            .ip(&["-br", "link"])
            .unwrap()
            .contains("spt")
    });
    drop(guest);
}

/// Pods inside a guest, the nested way: `isthmus-cni` in the guest asks its node's agent (at
/// 169.254.169.254:9697 in the guest's network) for a subport of the guest's trunk per pod,
/// then makes the pod's 802.1q interface itself. The pods reach a VM of their network on
/// another node; DEL gives the subport back.
#[test]
fn pods_inside_a_guest_get_subports_through_the_nested_cni() {
    let Some(cloud) = cloud(2) else { return };
    let Some(image) = image() else { return };
    let lab = &cloud.lab;
    let project = "nested-cni";
    let mut nets = Vec::new();
    for (name, cidr) in [("k8s-nodes", "10.85.0.0/24"), ("k8s-pods", "10.86.0.0/24")] {
        let net = create(
            lab,
            "/v2.0/networks",
            "network",
            json!({"name": name, "project_id": project}),
        );
        let net = net["id"].as_str().unwrap().to_owned();
        create(
            lab,
            "/v2.0/subnets",
            "subnet",
            json!({"network_id": net, "ip_version": 4, "cidr": cidr, "project_id": project}),
        );
        nets.push(net);
    }
    let parent = create(
        lab,
        "/v2.0/ports",
        "port",
        json!({"network_id": nets[0], "project_id": project, "binding:host_id": "node1",
            "device_owner": "compute:nova", "device_id": "7d0c1e2f-0000-4000-8000-0000000000b7"}),
    );
    let default = default_group(lab, Some(project));
    create(
        lab,
        "/v2.0/security-group-rules",
        "security_group_rule",
        json!({"security_group_id": default, "direction": "ingress", "protocol": "icmp"}),
    );
    let trunk = create(
        lab,
        "/v2.0/trunks",
        "trunk",
        json!({"name": "k8s-node-1", "port_id": parent["id"], "project_id": project}),
    );
    let trunk_id = trunk["id"].as_str().unwrap().to_owned();
    let peer = create(
        lab,
        "/v2.0/ports",
        "port",
        json!({"network_id": nets[1], "project_id": project, "binding:host_id": "node2",
            "device_owner": "compute:nova"}),
    );
    let _vm = lab.add_vm_for_port(1, &peer, 24, None, 1450).unwrap();
    let (_, dhcp) = lab.api(
        "GET",
        &format!(
            "/v2.0/ports?network_id={}&device_owner=network:dhcp",
            nets[0]
        ),
        None,
    );
    let dhcp_ip = ip_of(&dhcp["ports"][0]);

    let plugin = cloud::cni_plugin();
    let files = guest::programs_with_libraries(&[&plugin]).unwrap();
    let copies: Vec<(&std::path::Path, &str)> = files
        .iter()
        .map(|(h, g)| (h.as_path(), g.as_str()))
        .collect();
    let scratch = tempfile::tempdir().unwrap();
    let console = scratch.path().join("console");
    let mut guest = lab
        .boot_interactive_guest_with(0, &parent, &image, &console, &copies)
        .unwrap();
    sh(
        &mut guest,
        &format!("ip addr add {}/24 dev eth0", ip_of(&parent)),
    );
    sh(
        &mut guest,
        &format!("ip route add 169.254.169.254 via {dhcp_ip}"),
    );
    let conf = json!({"cniVersion": "1.1.0", "name": "k8s-pods", "type": "isthmus",
        "network": "k8s-pods", "nested": {"interface": "eth0"}});
    sh(&mut guest, &format!("echo '{conf}' > /nested.json"));

    let subports = || {
        let (_, ports) = lab.api(
            "GET",
            &format!(
                "/v2.0/ports?network_id={}&device_owner=trunk:subport",
                nets[1]
            ),
            None,
        );
        let mut named: Vec<(String, String)> = ports["ports"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                let text = |k: &str| p[k].as_str().unwrap().to_owned();
                (text("name"), text("id"))
            })
            .collect();
        named.sort();
        named
    };
    let names = || subports().into_iter().map(|(n, _)| n).collect::<Vec<_>>();

    // Two pods, each in a network namespace of its own in the guest. The first ADD makes its
    // subport (VLAN 1) and has the agent make its pool of two (VLANs 2 and 3, --pool-size);
    // the second takes one of those.
    let mut pods = Vec::new();
    for name in ["nested-a", "nested-b"] {
        if name == "nested-b" {
            wait_for("the pool to be made", Duration::from_secs(20), || {
                names() == ["demo/nested-a", "isthmus-pool", "isthmus-pool"]
            });
        }
        let pid = sh(
            &mut guest,
            "unshare -n sleep 100000 >/dev/null 2>&1 & echo $!",
        );
        let pid = pid.trim().to_owned();
        let started = Instant::now();
        let added = sh(
            &mut guest,
            &format!(
                "CNI_COMMAND=ADD CNI_CONTAINERID={name} CNI_NETNS=/proc/{pid}/ns/net \
                 CNI_IFNAME=eth0 CNI_PATH=/ CNI_ARGS='K8S_POD_NAMESPACE=demo;K8S_POD_NAME={name}' \
                 /isthmus-cni < /nested.json"
            ),
        );
        eprintln!("nested ADD of {name} in the guest: {:?}", started.elapsed());
        let result: Value = serde_json::from_str(added.trim())
            .unwrap_or_else(|e| panic!("not a CNI result ({e}): {added}"));
        let address = result["ips"][0]["address"].as_str().unwrap().to_owned();
        assert!(address.starts_with("10.86.0."), "{result}");
        assert_eq!(result["interfaces"][0]["name"], "eth0");
        let inside = sh(
            &mut guest,
            &format!("nsenter -t {pid} -n ip -o addr show eth0"),
        );
        assert!(inside.contains(&address), "{inside}");
        pods.push((name, pid, address));
    }
    for (name, pid, _) in &pods {
        let (out, status) = guest
            .run(
                &format!("nsenter -t {pid} -n ping -c 2 -W 2 {}", ip_of(&peer)),
                Duration::from_secs(30),
            )
            .unwrap();
        assert_eq!(
            status, 0,
            "{name} cannot reach the VM on its network:\n{out}"
        );
    }
    // In the API: a subport per pod, named after it; the pool topped up again.
    wait_for("the pool to be topped up", Duration::from_secs(20), || {
        names()
            == [
                "demo/nested-a",
                "demo/nested-b",
                "isthmus-pool",
                "isthmus-pool",
            ]
    });
    let (_, v) = lab.api("GET", &format!("/v2.0/trunks/{trunk_id}"), None);
    let vlan_of = |port: &str| {
        v["trunk"]["sub_ports"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["port_id"] == port)
            .and_then(|s| s["segmentation_id"].as_u64())
    };
    let all = subports();
    assert_eq!(vlan_of(&all[0].1), Some(1), "{v}");
    assert!(
        matches!(vlan_of(&all[1].1), Some(2 | 3)),
        "the second pod's subport came from the pool: {v}"
    );
    assert!(lab.nodes[0].state_dir.join("nested-pool.json").exists());

    // DEL gives the subport back (twice is fine); the other pod goes on.
    let (name, pid, _) = &pods[0];
    for _ in 0..2 {
        sh(
            &mut guest,
            &format!(
                "CNI_COMMAND=DEL CNI_CONTAINERID={name} CNI_NETNS=/proc/{pid}/ns/net \
                 CNI_IFNAME=eth0 CNI_PATH=/ /isthmus-cni < /nested.json"
            ),
        );
    }
    let (_, v) = lab.api("GET", &format!("/v2.0/trunks/{trunk_id}"), None);
    assert_eq!(v["trunk"]["sub_ports"].as_array().unwrap().len(), 3, "{v}");
    assert!(!names().contains(&"demo/nested-a".to_owned()));
    let (_, status) = guest
        .run(
            &format!("nsenter -t {pid} -n ip link show eth0"),
            Duration::from_secs(10),
        )
        .unwrap();
    assert_ne!(status, 0, "the pod's interface is gone");
    let (_, pid_b, _) = &pods[1];
    sh(
        &mut guest,
        &format!("nsenter -t {pid_b} -n ping -c 1 -W 2 {}", ip_of(&peer)),
    );
}
