//! Pods on the same networks as VMs, wired by executing the real `isthmus-cni` plugin inside
//! node namespaces exactly as a runtime does (env + stdin), against a controller and agents
//! in a lab.

mod cloud;

use std::time::Duration;

use cloud::{cloud, cni_plugin, wait_for, Cloud};
use isthmus_lab::{CniCall, CniOutcome, Lab, Pod};
use serde_json::{json, Value};

/// A network `name` with subnet `cidr`, shared so every project can put ports on it.
fn shared_network(lab: &Lab, name: &str, cidr: &str) -> (String, String) {
    let (s, net) = lab.api(
        "POST",
        "/v2.0/networks",
        Some(&json!({"network": {"name": name, "shared": true}})),
    );
    assert_eq!(s, 201, "{net}");
    let net_id = net["network"]["id"].as_str().unwrap().to_owned();
    let (s, sub) = lab.api(
        "POST",
        "/v2.0/subnets",
        Some(&json!({"subnet": {"network_id": net_id, "ip_version": 4, "cidr": cidr}})),
    );
    assert_eq!(s, 201, "{sub}");
    (net_id, sub["subnet"]["id"].as_str().unwrap().to_owned())
}

fn wait_agents(lab: &Lab, n: usize) {
    wait_for("registered agents", Duration::from_secs(20), || {
        lab.api("GET", "/v2.0/agents", None).1["agents"]
            .as_array()
            .is_some_and(|a| a.len() == n)
    });
}

/// The CNI network configuration for node `node`.
fn conf(cloud: &Cloud, node: usize, extra: Value) -> String {
    let mut c = json!({
        "cniVersion": "1.1.0",
        "name": "isthmus",
        "type": "isthmus",
        "socket": cloud.lab.nodes[node].cni_socket,
    });
    if let (Some(c), Some(extra)) = (c.as_object_mut(), extra.as_object()) {
        c.extend(extra.clone());
    }
    c.to_string()
}

fn cni(cloud: &Cloud, node: usize, call: CniCall<'_>, config: &str) -> CniOutcome {
    cloud.lab.cni(&cni_plugin(), node, &call, config)
}

fn add(cloud: &Cloud, node: usize, pod: &Pod, id: &str, args: &str, config: &str) -> Value {
    let netns = pod.netns_path();
    let out = cni(
        cloud,
        node,
        CniCall {
            command: "ADD",
            container_id: id,
            netns: &netns,
            ifname: "eth0",
            args,
        },
        config,
    );
    assert!(out.success, "ADD failed: {} {}", out.stdout, out.stderr);
    out.stdout
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

fn port_count(lab: &Lab, net_id: &str) -> usize {
    lab.api("GET", &format!("/v2.0/ports?network_id={net_id}"), None)
        .1["ports"]
        .as_array()
        .map_or(0, Vec::len)
}

/// Veth devices in node `node` (taps of VMs and pods).
fn veths(lab: &Lab, node: usize) -> Vec<String> {
    let out = lab.nodes[node]
        .ns
        .ip(&["-o", "link", "show", "type", "veth"])
        .unwrap();
    out.lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n).to_owned())
        .filter(|n| n != "eth0")
        .collect()
}

#[test]
fn a_vm_and_a_pod_share_a_subnet_under_their_projects_groups() {
    let Some(cloud) = cloud(2) else { return };
    let lab = &cloud.lab;
    wait_agents(lab, 2);
    let (net_id, _) = shared_network(lab, "seamless", "192.168.100.0/24");

    // The VM: a Nova-style port of project A on node 1, its tap made by the "hypervisor".
    let (s, p) = lab.api(
        "POST",
        "/v2.0/ports",
        Some(&json!({"port": {
        "network_id": net_id, "project_id": "project-a", "binding:host_id": "node1",
        "device_owner": "compute:nova", "name": "vm1"}})),
    );
    assert_eq!(s, 201, "{p}");
    let vm_port = p["port"].clone();
    assert_eq!(vm_port["fixed_ips"][0]["ip_address"], "192.168.100.2");
    let vm = lab
        .add_vm(
            0,
            vm_port["id"].as_str().unwrap(),
            vm_port["mac_address"].as_str().unwrap(),
            "192.168.100.2/24",
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
    let config = conf(&cloud, 1, json!({}));
    let result = add(
        &cloud,
        1,
        &pod,
        "c0ffee01",
        "IgnoreUnknown=1;K8S_POD_NAMESPACE=team-b;K8S_POD_NAME=web;K8S_POD_UID=uid-web",
        &config,
    );
    assert_eq!(result["cniVersion"], "1.1.0");
    assert_eq!(result["ips"][0]["address"], "192.168.100.3/24", "{result}");
    assert_eq!(result["ips"][0]["gateway"], "192.168.100.1");
    assert_eq!(result["interfaces"][1]["name"], "eth0");
    assert_eq!(
        result["interfaces"][1]["sandbox"],
        pod.netns_path().as_str()
    );
    assert_eq!(result["routes"][0]["dst"], "0.0.0.0/0");
    let inside = pod.ns.ip(&["-o", "addr", "show", "eth0"]).unwrap();
    assert!(inside.contains("192.168.100.3/24"), "{inside}");
    let mac = result["interfaces"][1]["mac"].as_str().unwrap();
    assert!(pod.ns.ip(&["link", "show", "eth0"]).unwrap().contains(mac));

    // An ordinary Neutron port, listed next to the VM by the real client.
    let (_, ports) = lab.api(
        "GET",
        &format!("/v2.0/ports?network_id={net_id}&device_owner=compute:kubernetes"),
        None,
    );
    let pod_port = ports["ports"][0].clone();
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
    assert!(!pings(&vm.ns, "192.168.100.3"), "VM reached the pod");
    assert!(!pings(&pod.ns, "192.168.100.2"), "pod reached the VM");

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
        pings(&vm.ns, "192.168.100.3")
    });
    wait_for("pod -> VM ping", Duration::from_secs(10), || {
        pings(&pod.ns, "192.168.100.2")
    });

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
