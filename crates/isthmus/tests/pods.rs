//! Pods on the same networks as VMs, wired by executing the real `isthmus-cni` plugin inside
//! node namespaces exactly as a runtime does (env + stdin), against a controller and agents
//! in a lab.

mod cloud;

use std::time::Duration;

use cloud::{
    cloud, cni_add, cni_conf, cni_plugin, shared_network, shared_network_with, wait_for, Cloud,
};
use isthmus_lab::{CniCall, CniOutcome, Lab, Pod};
use serde_json::{json, Value};

fn wait_agents(lab: &Lab, n: usize) {
    wait_for("registered agents", Duration::from_secs(20), || {
        lab.api("GET", "/v2.0/agents", None).1["agents"]
            .as_array()
            .is_some_and(|a| a.len() == n)
    });
}

fn cni(cloud: &Cloud, node: usize, call: CniCall<'_>, config: &str) -> CniOutcome {
    cloud.lab.cni(&cni_plugin(), node, &call, config)
}

fn del(cloud: &Cloud, node: usize, pod: &Pod, id: &str, config: &str) {
    let netns = pod.netns_path();
    let out = cni(
        cloud,
        node,
        CniCall {
            command: "DEL",
            container_id: id,
            netns: &netns,
            ifname: "eth0",
            args: "",
        },
        config,
    );
    assert!(out.success, "DEL failed: {} {}", out.stdout, out.stderr);
    assert!(out.stdout.is_null(), "DEL prints nothing: {}", out.stdout);
    // The agent finishes the teardown after answering; its record goes last.
    let record = cloud.lab.nodes[node]
        .state_dir
        .join(format!("cni/{id}@eth0.json"));
    wait_for("the teardown to finish", Duration::from_secs(10), || {
        !record.exists()
    });
}

fn pings(from: &isthmus_lab::Netns, to: &str) -> bool {
    from.exec("ping", &["-c", "1", "-W", "1", to]).is_ok()
}

fn default_group(lab: &Lab, project: &str) -> String {
    let (_, v) = lab.api(
        "GET",
        &format!("/v2.0/security-groups?project_id={project}&name=default"),
        None,
    );
    v["security_groups"][0]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("no default group for {project}: {v}"))
        .to_owned()
}

/// Ports of a network, by whether they wait in a pool.
fn ports_of(lab: &Lab, net_id: &str) -> (Vec<Value>, Vec<Value>) {
    let (_, v) = lab.api("GET", &format!("/v2.0/ports?network_id={net_id}"), None);
    v["ports"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|p| p["device_owner"] != "network:dhcp")
        .partition(|p| p["device_id"] != POOL)
}

/// Ports given to VMs and pods (not waiting in a pool; not the network's DHCP port).
fn port_count(lab: &Lab, net_id: &str) -> usize {
    ports_of(lab, net_id).0.len()
}

/// Ports waiting in pools.
fn pooled(lab: &Lab, net_id: &str) -> usize {
    ports_of(lab, net_id).1.len()
}

const POOL: &str = "isthmus-pool";

/// Veth devices in node `node` (taps of VMs and pods, not of DHCP namespaces).
fn veths(lab: &Lab, node: usize) -> Vec<String> {
    // Not the DHCP namespaces' taps (the network's, on every node serving it).
    let (_, dhcp) = lab.api("GET", "/v2.0/ports?device_owner=network:dhcp", None);
    let dhcp: Vec<String> = dhcp["ports"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .filter_map(|p| p["id"].as_str().map(isthmus_lab::tap_name))
        .collect();
    let out = lab.nodes[node]
        .ns
        .ip(&["-o", "link", "show", "type", "veth"])
        .unwrap();
    out.lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n).to_owned())
        .filter(|n| n != "eth0" && n != isthmus_lab::PUBLIC_IFACE && !dhcp.contains(n))
        .collect()
}

#[test]
fn a_vm_and_a_pod_share_a_subnet_under_their_projects_groups() {
    let Some(cloud) = cloud(2) else { return };
    let lab = &cloud.lab;
    wait_agents(lab, 2);
    // With DHCP, as a real cloud has it: the DHCP port holds .2, the VM gets .3, the pod .4.
    let (net_id, _) = shared_network_with(lab, "seamless", "192.168.100.0/24", true);

    // The VM: a Nova-style port of project A on node 1, its tap made by the "hypervisor".
    let (s, p) = lab.api(
        "POST",
        "/v2.0/ports",
        Some(&json!({"port": {
        "network_id": net_id, "project_id": "project-a", "binding:host_id": "node1",
        "device_owner": "compute:nova", "name": "vm1", "dns_name": "vm1"}})),
    );
    assert_eq!(s, 201, "{p}");
    let vm_port = p["port"].clone();
    assert_eq!(vm_port["fixed_ips"][0]["ip_address"], "192.168.100.3");
    let vm = lab
        .add_vm(
            0,
            vm_port["id"].as_str().unwrap(),
            vm_port["mac_address"].as_str().unwrap(),
            "192.168.100.3/24",
            Some("192.168.100.1"),
            1450,
        )
        .unwrap();

    // The pod: Kubernetes namespace team-b is bound to the network for project B.
    let (s, b) = lab.api(
        "PUT",
        "/isthmus/v1/namespace-bindings/team-b",
        Some(&json!({"namespace_binding": {"network_id": net_id, "project_id": "project-b"}})),
    );
    assert_eq!(s, 201, "{b}");
    let pod = lab.add_pod().unwrap();
    let config = cni_conf(&cloud, 1, json!({}));
    let result = cni_add(
        &cloud,
        1,
        &pod,
        "c0ffee01",
        "IgnoreUnknown=1;K8S_POD_NAMESPACE=team-b;K8S_POD_NAME=web;K8S_POD_UID=uid-web",
        &config,
    );
    assert_eq!(result["cniVersion"], "1.1.0");
    assert_eq!(result["ips"][0]["address"], "192.168.100.4/24", "{result}");
    assert_eq!(result["ips"][0]["gateway"], "192.168.100.1");
    assert_eq!(result["interfaces"][1]["name"], "eth0");
    assert_eq!(
        result["interfaces"][1]["sandbox"],
        pod.netns_path().as_str()
    );
    assert_eq!(result["routes"][0]["dst"], "0.0.0.0/0");
    // The runtime is told to resolve with the node's DNS, on the DHCP port's address.
    assert_eq!(
        result["dns"],
        json!({"nameservers": ["192.168.100.2"], "domain": "openstack.local", "search": ["openstack.local"]})
    );
    let inside = pod.ns.ip(&["-o", "addr", "show", "eth0"]).unwrap();
    assert!(inside.contains("192.168.100.4/24"), "{inside}");
    let mac = result["interfaces"][1]["mac"].as_str().unwrap();
    assert!(pod.ns.ip(&["link", "show", "eth0"]).unwrap().contains(mac));

    // An ordinary Neutron port, listed next to the VM by the real client.
    let pod_port = ports_of(lab, &net_id)
        .0
        .into_iter()
        .find(|p| p["device_owner"] == "compute:kubernetes")
        .unwrap();
    assert_eq!(pod_port["name"], "team-b/web");
    assert_eq!(pod_port["device_id"], "uid-web");
    assert_eq!(pod_port["project_id"], "project-b");
    assert_eq!(pod_port["binding:host_id"], "node2");
    wait_for("the pod's port ACTIVE", Duration::from_secs(10), || {
        let path = format!("/v2.0/ports/{}", pod_port["id"].as_str().unwrap());
        lab.api("GET", &path, None).1["port"]["status"] == "ACTIVE"
    });
    if let Some(listed) = cloud.openstack(&["port", "list", "--network", &net_id]) {
        let names: Vec<&str> = listed
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|p| p["Name"].as_str())
            .collect();
        assert!(
            names.contains(&"vm1") && names.contains(&"team-b/web"),
            "{names:?}"
        );
    }

    // Different projects' default groups: no traffic either way.
    wait_for("the VM's port ACTIVE", Duration::from_secs(10), || {
        let path = format!("/v2.0/ports/{}", vm_port["id"].as_str().unwrap());
        lab.api("GET", &path, None).1["port"]["status"] == "ACTIVE"
    });
    assert!(!pings(&vm.ns, "192.168.100.4"), "VM reached the pod");
    assert!(!pings(&pod.ns, "192.168.100.3"), "pod reached the VM");

    // One rule on each side, through the real client, opens ICMP both ways.
    let (group_a, group_b) = (
        default_group(lab, "project-a"),
        default_group(lab, "project-b"),
    );
    for (group, remote) in [(&group_a, &group_b), (&group_b, &group_a)] {
        if cloud
            .openstack(&[
                "security",
                "group",
                "rule",
                "create",
                "--ingress",
                "--protocol",
                "icmp",
                "--remote-group",
                remote,
                group,
            ])
            .is_none()
        {
            let (s, r) = lab.api(
                "POST",
                "/v2.0/security-group-rules",
                Some(&json!({
                "security_group_rule": {"security_group_id": group, "direction": "ingress",
                "ethertype": "IPv4", "protocol": "icmp", "remote_group_id": remote}})),
            );
            assert_eq!(s, 201, "{r}");
        }
    }
    wait_for("VM -> pod ping", Duration::from_secs(10), || {
        pings(&vm.ns, "192.168.100.4")
    });
    wait_for("pod -> VM ping", Duration::from_secs(10), || {
        pings(&pod.ns, "192.168.100.3")
    });
    // The pod finds the VM by name through the node's DNS.
    let looked_up = pod
        .ns
        .exec(
            "busybox",
            &[
                "nslookup",
                "-type=a",
                "vm1.openstack.local",
                "192.168.100.2",
            ],
        )
        .unwrap();
    assert!(looked_up.contains("Address: 192.168.100.3"), "{looked_up}");

    // CHECK passes on a healthy attachment; DEL removes port and veth; DEL again is fine.
    let netns = pod.netns_path();
    let call = |command| CniCall {
        command,
        container_id: "c0ffee01",
        netns: &netns,
        ifname: "eth0",
        args: "",
    };
    let out = cni(&cloud, 1, call("CHECK"), &config);
    assert!(out.success, "CHECK: {} {}", out.stdout, out.stderr);
    del(&cloud, 1, &pod, "c0ffee01", &config);
    del(&cloud, 1, &pod, "c0ffee01", &config);
    assert_eq!(port_count(lab, &net_id), 1, "only the VM's port is left");
    assert!(veths(lab, 1).is_empty(), "{:?}", veths(lab, 1));
    assert!(pod.ns.ip(&["link", "show", "eth0"]).is_err());
}

/// Attachment records an agent holds.
fn records(cloud: &Cloud, node: usize) -> usize {
    std::fs::read_dir(cloud.lab.nodes[node].state_dir.join("cni"))
        .map(|d| d.count())
        .unwrap_or(0)
}

#[test]
fn cni_errors_follow_the_spec_and_leave_nothing_behind() {
    let Some(cloud) = cloud(1) else { return };
    let lab = &cloud.lab;
    wait_agents(lab, 1);
    let (net_id, _) = shared_network(lab, "pods", "10.20.0.0/24");
    let pod = lab.add_pod().unwrap();
    let netns = pod.netns_path();
    let good = cni_conf(&cloud, 0, json!({"network": "pods"}));
    let add_call = CniCall {
        command: "ADD",
        container_id: "bad0",
        netns: &netns,
        ifname: "eth0",
        args: "K8S_POD_NAMESPACE=x;K8S_POD_NAME=y",
    };
    let bogus_socket = cni_conf(
        &cloud,
        0,
        json!({"network": "pods", "socket": "/nonexistent/cni.sock"}),
    );
    let cases: Vec<(&str, CniCall<'_>, String, u64)> = vec![
        (
            "malformed stdin",
            add_call.clone(),
            "{\"cniVersion\":".into(),
            6,
        ),
        ("stdin not an object", add_call.clone(), "[]".into(), 6),
        (
            "unsupported cniVersion",
            add_call.clone(),
            good.replace("1.1.0", "0.3.1"),
            1,
        ),
        (
            "no CNI_NETNS",
            CniCall {
                netns: "",
                ..add_call.clone()
            },
            good.clone(),
            4,
        ),
        (
            "no CNI_CONTAINERID",
            CniCall {
                container_id: "",
                ..add_call.clone()
            },
            good.clone(),
            4,
        ),
        (
            "no CNI_COMMAND",
            CniCall {
                command: "",
                ..add_call.clone()
            },
            good.clone(),
            4,
        ),
        (
            "bad CNI_IFNAME",
            CniCall {
                ifname: "eth0/x",
                ..add_call.clone()
            },
            good.clone(),
            4,
        ),
        (
            "bad CNI_ARGS",
            CniCall {
                args: "garbage",
                ..add_call.clone()
            },
            good.clone(),
            4,
        ),
        (
            "unknown network",
            add_call.clone(),
            cni_conf(&cloud, 0, json!({"network": "nope"})),
            7,
        ),
        (
            "no network at all",
            add_call.clone(),
            cni_conf(&cloud, 0, json!({})),
            7,
        ),
        (
            "netns that does not exist",
            CniCall {
                netns: "/run/netns/isthmus-no-such-ns",
                ..add_call.clone()
            },
            good.clone(),
            3,
        ),
        ("agent not reachable", add_call.clone(), bogus_socket, 11),
    ];
    for (what, call, config, code) in cases {
        let out = cni(&cloud, 0, call, &config);
        assert!(!out.success, "{what}: exited 0");
        assert_eq!(out.stdout["code"], code, "{what}: {}", out.stdout);
        assert!(out.stdout["msg"].is_string(), "{what}: {}", out.stdout);
        assert!(
            out.stdout["cniVersion"].is_string(),
            "{what}: {}",
            out.stdout
        );
        assert_eq!(port_count(lab, &net_id), 0, "{what}: a port was left");
        assert!(veths(lab, 0).is_empty(), "{what}: {:?}", veths(lab, 0));
        assert_eq!(records(&cloud, 0), 0, "{what}: a record was left");
        assert!(pod.ns.ip(&["link", "show", "eth0"]).is_err(), "{what}");
    }

    // A subnet with no free address: the controller's refusal comes back, nothing is left.
    let (s, tiny) = lab.api(
        "POST",
        "/v2.0/networks",
        Some(&json!({"network": {"name": "tiny"}})),
    );
    assert_eq!(s, 201);
    let tiny_id = tiny["network"]["id"].as_str().unwrap();
    let (s, _) = lab.api(
        "POST",
        "/v2.0/subnets",
        Some(&json!({"subnet": {
        "network_id": tiny_id, "ip_version": 4, "cidr": "10.30.0.0/30", "enable_dhcp": false}})),
    );
    assert_eq!(s, 201);
    let filler = lab.add_pod().unwrap();
    let tiny_conf = cni_conf(&cloud, 0, json!({"network": tiny_id}));
    cni_add(&cloud, 0, &filler, "filler", "", &tiny_conf);
    let out = cni(&cloud, 0, add_call.clone(), &tiny_conf);
    assert!(!out.success);
    assert_eq!(out.stdout["code"], 100, "{}", out.stdout);
    assert!(
        out.stdout["details"]
            .as_str()
            .unwrap()
            .contains("No more IP addresses"),
        "{}",
        out.stdout
    );
    assert_eq!(port_count(lab, tiny_id), 1);
    assert_eq!(veths(lab, 0).len(), 1);
    del(&cloud, 0, &filler, "filler", &tiny_conf);

    // VERSION, STATUS; DEL of something never added succeeds.
    let out = cni(
        &cloud,
        0,
        CniCall {
            command: "VERSION",
            ..Default::default()
        },
        &good,
    );
    assert!(out.success);
    assert_eq!(out.stdout["supportedVersions"], json!(["1.0.0", "1.1.0"]));
    let out = cni(
        &cloud,
        0,
        CniCall {
            command: "STATUS",
            ..Default::default()
        },
        &good,
    );
    assert!(out.success && out.stdout.is_null(), "{}", out.stdout);
    let out = cni(
        &cloud,
        0,
        CniCall {
            command: "STATUS",
            ..Default::default()
        },
        &cni_conf(&cloud, 0, json!({"socket": "/nonexistent/cni.sock"})),
    );
    assert_eq!(out.stdout["code"], 50, "{}", out.stdout);
    del(&cloud, 0, &pod, "never-added", &good);

    // CHECK notices a broken attachment.
    cni_add(&cloud, 0, &pod, "chk", "", &good);
    let check = CniCall {
        command: "CHECK",
        container_id: "chk",
        ..add_call.clone()
    };
    assert!(cni(&cloud, 0, check.clone(), &good).success);
    pod.ns.ip(&["link", "set", "eth0", "down"]).unwrap();
    let out = cni(&cloud, 0, check, &good);
    assert!(!out.success);
    assert_eq!(out.stdout["code"], 101, "{}", out.stdout);

    // GC keeps what the runtime lists and removes the rest.
    let other = lab.add_pod().unwrap();
    cni_add(&cloud, 0, &other, "keep", "", &good);
    // A port taken from the pool becomes the pod's in the API just after ADD answers.
    wait_for("both pods' ports named", Duration::from_secs(5), || {
        port_count(lab, &net_id) == 2
    });
    let mut gc_conf: Value = serde_json::from_str(&good).unwrap();
    gc_conf["cni.dev/valid-attachments"] = json!([{"containerID": "keep", "ifname": "eth0"}]);
    let out = cni(
        &cloud,
        0,
        CniCall {
            command: "GC",
            ..Default::default()
        },
        &gc_conf.to_string(),
    );
    assert!(out.success, "GC: {} {}", out.stdout, out.stderr);
    assert_eq!(
        port_count(lab, &net_id),
        1,
        "GC removed the unlisted attachment's port"
    );
    assert_eq!(veths(lab, 0).len(), 1);
    assert!(pod.ns.ip(&["link", "show", "eth0"]).is_err());
    del(&cloud, 0, &other, "keep", &good);
    assert_eq!(port_count(lab, &net_id), 0);
    assert!(veths(lab, 0).is_empty());
    assert_eq!(records(&cloud, 0), 0);
}

fn used_ips(lab: &Lab, net_id: &str) -> u64 {
    let path = format!("/v2.0/network-ip-availabilities/{net_id}");
    lab.api("GET", &path, None).1["network_ip_availability"]["used_ips"]
        .as_u64()
        .unwrap()
}

/// Unicast FDB entries on a node's VXLAN device: remote MACs it forwards to.
fn remote_macs(lab: &Lab, node: usize, vni: u64) -> std::collections::BTreeSet<String> {
    let dev = format!("vxlan-{vni}");
    let out = lab.nodes[node]
        .ns
        .exec("bridge", &["-j", "fdb", "show", "dev", &dev])
        .unwrap_or_default();
    let entries: Value = serde_json::from_str(&out).unwrap_or(json!([]));
    entries
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["dst"].is_string())
        .filter_map(|e| e["mac"].as_str())
        .filter(|m| *m != "00:00:00:00:00:00")
        .map(str::to_owned)
        .collect()
}

#[test]
fn pods_churn_without_leaking_addresses_or_forwarding_entries() {
    let Some(cloud) = cloud(3) else { return };
    let lab = &cloud.lab;
    wait_agents(lab, 3);
    let (net_id, _) = shared_network(lab, "churn", "10.40.0.0/24");
    let (_, net) = lab.api("GET", &format!("/v2.0/networks/{net_id}"), None);
    let vni = net["network"]["provider:segmentation_id"].as_u64().unwrap();
    let (s, p) = lab.api(
        "POST",
        "/v2.0/ports",
        Some(&json!({"port": {
        "network_id": net_id, "binding:host_id": "node1", "device_owner": "compute:nova"}})),
    );
    assert_eq!(s, 201);
    let vm_port = p["port"].clone();
    let vm = lab.add_vm_for_port(0, &vm_port, 24, None, 1450).unwrap();
    let start = used_ips(lab, &net_id);
    let pods = [lab.add_pod().unwrap(), lab.add_pod().unwrap()];
    let configs = [1, 2].map(|node| cni_conf(&cloud, node, json!({"network": net_id})));
    const ROUNDS: usize = 100;
    for round in 0..ROUNDS {
        for (i, pod) in pods.iter().enumerate() {
            let id = format!("churn{i}");
            cni_add(&cloud, i + 1, pod, &id, "", &configs[i]);
            if round + 1 < ROUNDS {
                del(&cloud, i + 1, pod, &id, &configs[i]);
            }
        }
    }
    // The last round's pods are up: the VM (same default group) reaches both.
    for pod in &pods {
        let ip = pod.ns.ip(&["-4", "-o", "addr", "show", "eth0"]).unwrap();
        let ip = ip
            .split_whitespace()
            .nth(3)
            .unwrap()
            .split('/')
            .next()
            .unwrap()
            .to_owned();
        wait_for(
            "the VM to reach a churned pod",
            Duration::from_secs(10),
            || pings(&vm.ns, &ip),
        );
    }
    assert_eq!(
        used_ips(lab, &net_id),
        start + 2 + pooled(lab, &net_id) as u64
    );
    // Every node forwards exactly to the ports that exist on the other nodes.
    let (_, ports) = lab.api("GET", &format!("/v2.0/ports?network_id={net_id}"), None);
    let ports = ports["ports"].as_array().unwrap().clone();
    assert_eq!(ports.len(), 3 + pooled(lab, &net_id));
    for node in 0..3 {
        let host = format!("node{}", node + 1);
        let expected: std::collections::BTreeSet<String> = ports
            .iter()
            .filter(|p| p["binding:host_id"] != host.as_str())
            .map(|p| p["mac_address"].as_str().unwrap().to_owned())
            .collect();
        wait_for(
            "FDB entries of existing ports only",
            Duration::from_secs(10),
            || remote_macs(lab, node, vni) == expected,
        );
    }
    for (i, pod) in pods.iter().enumerate() {
        del(&cloud, i + 1, pod, &format!("churn{i}"), &configs[i]);
    }
    let (given, waiting) = ports_of(lab, &net_id);
    assert_eq!(given.len(), 1, "only the VM's port is given");
    assert_eq!(
        used_ips(lab, &net_id),
        start + waiting.len() as u64,
        "an address leaked"
    );
    for node in 0..3 {
        assert!(
            node == 0 || veths(lab, node).is_empty(),
            "{:?}",
            veths(lab, node)
        );
        let host = format!("node{}", node + 1);
        let expected: std::collections::BTreeSet<String> = given
            .iter()
            .chain(&waiting)
            .filter(|p| p["binding:host_id"] != host.as_str())
            .map(|p| p["mac_address"].as_str().unwrap().to_owned())
            .collect();
        wait_for(
            "FDB entries of the pods gone",
            Duration::from_secs(10),
            || remote_macs(lab, node, vni) == expected,
        );
    }
}

#[test]
fn pools_serve_adds_survive_agent_restarts_and_go_with_their_node() {
    let Some(mut cloud) = cloud(1) else { return };
    wait_agents(&cloud.lab, 1);
    let (net_id, _) = shared_network(&cloud.lab, "pooled", "10.50.0.0/24");
    let config = cni_conf(&cloud, 0, json!({"network": "pooled"}));
    let pods: Vec<Pod> = (0..3).map(|_| cloud.lab.add_pod().unwrap()).collect();

    // The first ADD creates its port and starts the pool (2 ports by default).
    cni_add(
        &cloud,
        0,
        &pods[0],
        "p0",
        "K8S_POD_NAMESPACE=ns;K8S_POD_NAME=p0",
        &config,
    );
    wait_for("a full pool", Duration::from_secs(10), || {
        pooled(&cloud.lab, &net_id) == 2
    });
    let waiting: Vec<String> = ports_of(&cloud.lab, &net_id)
        .1
        .iter()
        .map(|p| p["fixed_ips"][0]["ip_address"].as_str().unwrap().to_owned())
        .collect();

    // The next takes a pooled port (already filtered) and names it after the pod.
    let result = cni_add(
        &cloud,
        0,
        &pods[1],
        "p1",
        "K8S_POD_NAMESPACE=ns;K8S_POD_NAME=p1;K8S_POD_UID=uid-p1",
        &config,
    );
    let ip = result["ips"][0]["address"]
        .as_str()
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_owned();
    assert!(waiting.contains(&ip), "{ip} not from the pool {waiting:?}");
    // Its tap is node plumbing: no IPv6 address of its own (no link-local, so no router
    // solicitations or reports on the network), whoever attached it.
    let tap = result["interfaces"][0]["name"].as_str().unwrap();
    let addresses = cloud.lab.nodes[0]
        .ns
        .ip(&["-6", "-o", "addr", "show", "dev", tap])
        .unwrap();
    assert_eq!(addresses.trim(), "", "IPv6 on {tap}");
    wait_for(
        "the pooled port named after its pod",
        Duration::from_secs(10),
        || {
            ports_of(&cloud.lab, &net_id)
                .0
                .iter()
                .any(|p| p["name"] == "ns/p1" && p["device_id"] == "uid-p1")
        },
    );
    wait_for("p1 reaches p0", Duration::from_secs(10), || {
        pings(&pods[1].ns, "10.50.0.2")
    });
    wait_for("the pool refilled", Duration::from_secs(10), || {
        pooled(&cloud.lab, &net_id) == 2
    });

    // A restarted agent adopts its pool instead of creating another; this one also names a
    // default pod network, which a configuration without "network" lands on.
    cloud.agents.clear();
    cloud.agents.push(
        cloud
            .lab
            .start_agent_with(cloud::BIN, 0, &["--default-pod-network", "pooled"])
            .unwrap(),
    );
    wait_for("the CNI socket back", Duration::from_secs(20), || {
        cni(
            &cloud,
            0,
            CniCall {
                command: "STATUS",
                ..Default::default()
            },
            &config,
        )
        .success
    });
    let result = cni_add(
        &cloud,
        0,
        &pods[2],
        "p2",
        "",
        &cni_conf(&cloud, 0, json!({})),
    );
    let ip = result["ips"][0]["address"].as_str().unwrap();
    assert!(ip.starts_with("10.50.0."), "{ip}");
    wait_for(
        "the pool refilled after the restart",
        Duration::from_secs(10),
        || pooled(&cloud.lab, &net_id) == 2,
    );
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        (port_count(&cloud.lab, &net_id), pooled(&cloud.lab, &net_id)),
        (3, 2)
    );

    // DEL with a full pool deletes; the node's deletion reclaims the pool.
    for (i, pod) in pods.iter().enumerate() {
        del(&cloud, 0, pod, &format!("p{i}"), &config);
    }
    assert_eq!(
        (port_count(&cloud.lab, &net_id), pooled(&cloud.lab, &net_id)),
        (0, 2)
    );
    cloud.agents.clear();
    let (s, _) = cloud.lab.api("DELETE", "/isthmus/v1/nodes/node1", None);
    assert_eq!(s, 204);
    assert_eq!(pooled(&cloud.lab, &net_id), 0);
    assert_eq!(used_ips(&cloud.lab, &net_id), 0);
}

/// A multi-homed pod, Multus-style: one CNI ADD per attachment (`CNI_IFNAME` eth0 and net1),
/// each with its own network's configuration, each its own port. The pod reaches a VM on both
/// networks, keeps its first attachment's default route, and loses only the second one when it
/// is deleted.
#[test]
fn a_pod_with_two_attachments_reaches_both_networks() {
    let Some(cloud) = cloud(2) else { return };
    let lab = &cloud.lab;
    wait_agents(lab, 2);
    let (net_a, _) = shared_network(lab, "front", "10.91.0.0/24");
    let (net_b, _) = shared_network(lab, "back", "10.92.0.0/24");
    let mut vms = Vec::new();
    for net in [&net_a, &net_b] {
        let (s, p) = lab.api(
            "POST",
            "/v2.0/ports",
            Some(&json!({"port": {"network_id": net, "project_id": "multi",
                "binding:host_id": "node1", "port_security_enabled": false}})),
        );
        assert_eq!(s, 201, "{p}");
        vms.push((
            p["port"].clone(),
            lab.add_vm_for_port(0, &p["port"], 24, None, 1450).unwrap(),
        ));
    }
    let pod = lab.add_pod().unwrap();
    let netns = pod.netns_path();
    let args = "K8S_POD_NAMESPACE=multi;K8S_POD_NAME=both;K8S_POD_UID=uid-both";
    let mut results = Vec::new();
    for (ifname, net) in [("eth0", &net_a), ("net1", &net_b)] {
        let conf = cni_conf(&cloud, 1, json!({"network": net, "project": "multi"}));
        let out = cni(
            &cloud,
            1,
            CniCall {
                command: "ADD",
                container_id: "multi01",
                netns: &netns,
                ifname,
                args,
            },
            &conf,
        );
        assert!(out.success, "ADD {ifname}: {} {}", out.stdout, out.stderr);
        assert_eq!(out.stdout["interfaces"][1]["name"], ifname);
        results.push((conf, out.stdout));
    }
    let address = |i: usize| {
        results[i].1["ips"][0]["address"]
            .as_str()
            .unwrap()
            .split('/')
            .next()
            .unwrap()
            .to_owned()
    };
    assert!(address(0).starts_with("10.91.0."), "{}", results[0].1);
    assert!(address(1).starts_with("10.92.0."), "{}", results[1].1);
    for (ifname, i) in [("eth0", 0), ("net1", 1)] {
        let inside = pod.ns.ip(&["-o", "addr", "show", ifname]).unwrap();
        assert!(inside.contains(&address(i)), "{inside}");
    }
    let routes = pod.ns.ip(&["route", "show", "default"]).unwrap();
    assert!(
        routes.contains("via 10.91.0.1 dev eth0") && !routes.contains("net1"),
        "{routes}"
    );
    // Two ports for one pod, one per attachment.
    for (net, i) in [(&net_a, 0), (&net_b, 1)] {
        let (_, v) = lab.api(
            "GET",
            &format!("/v2.0/ports?network_id={net}&device_id=uid-both"),
            None,
        );
        let ports = v["ports"].as_array().unwrap();
        assert_eq!(ports.len(), 1, "{v}");
        assert_eq!(ports[0]["fixed_ips"][0]["ip_address"], address(i).as_str());
        assert_eq!(ports[0]["device_id"], "uid-both");
    }
    for (port, _) in &vms {
        let ip = port["fixed_ips"][0]["ip_address"].as_str().unwrap();
        wait_for(
            "the pod to reach both networks",
            Duration::from_secs(10),
            || pings(&pod.ns, ip),
        );
    }

    // Deleting the second attachment leaves the first.
    let out = cni(
        &cloud,
        1,
        CniCall {
            command: "DEL",
            container_id: "multi01",
            netns: &netns,
            ifname: "net1",
            args,
        },
        &results[1].0,
    );
    assert!(out.success, "DEL net1: {} {}", out.stdout, out.stderr);
    wait_for("net1's port to go", Duration::from_secs(10), || {
        lab.api(
            "GET",
            &format!("/v2.0/ports?network_id={net_b}&device_id=uid-both"),
            None,
        )
        .1["ports"]
            .as_array()
            .is_some_and(|p| p.is_empty())
    });
    assert!(pod.ns.ip(&["link", "show", "net1"]).is_err());
    let first = vms[0].0["fixed_ips"][0]["ip_address"].as_str().unwrap();
    assert!(pings(&pod.ns, first));
    del(&cloud, 1, &pod, "multi01", &results[0].0);
}
