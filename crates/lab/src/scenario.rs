//! `isthmus lab up | status | down`: the whole hybrid cloud on one machine for a newcomer —
//! a controller and N nodes with agents, a network `seamless`, a VM on node 1 and a pod
//! (wired by executing the real `isthmus-cni`) on node 2, their security groups and a ping
//! between them; then an external network `public` with a host outside, a router to it, and
//! a floating IP for the VM — and its removal.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::{
    run, CniCall, Lab, LabError, Result, CONTROLLER_ADDR, PUBLIC_CIDR, PUBLIC_MAPPING,
    PUBLIC_PHYSNET,
};

/// The network the lab creates.
pub const NETWORK: &str = "seamless";
/// Its subnet.
pub const CIDR: &str = "192.168.100.0/24";
/// The host outside the cloud.
pub const OUTSIDE: &str = "172.24.4.200";

/// Where a named lab lives.
#[derive(Debug, Clone)]
pub struct Place {
    /// Namespace name prefix (`<prefix>-fabric`, `<prefix>-node1`, ...).
    pub prefix: String,
    /// State, logs and sockets.
    pub dir: PathBuf,
}

impl Place {
    /// The lab called `name`, under `/run/<name>`: only `[a-z0-9-]{1,20}`, so that no name
    /// (`..`, `/`, `a/../../etc`) reaches outside /run or makes an odd namespace name.
    pub fn named(name: &str) -> Result<Place> {
        let valid = (1..=20).contains(&name.len())
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !valid {
            return Err(LabError::Name(name.to_owned()));
        }
        Ok(Place {
            prefix: name.to_owned(),
            dir: PathBuf::from("/run").join(name),
        })
    }
}

fn failed(what: &str, detail: impl std::fmt::Display) -> LabError {
    LabError::Failed {
        command: what.to_owned(),
        stderr: detail.to_string(),
    }
}

fn expect(lab: &Lab, method: &str, path: &str, body: Value, status: u16) -> Result<Value> {
    let (s, v) = lab.api(method, path, Some(&body));
    if s == status {
        Ok(v)
    } else {
        Err(failed(
            &format!("{method} {path}"),
            format!("answered {s}: {v}"),
        ))
    }
}

fn text(v: &Value) -> String {
    v.as_str().unwrap_or_default().to_owned()
}

fn wait(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Err(failed(what, format!("not within {timeout:?}")))
}

/// Namespaces of the lab named `prefix` that exist now.
pub fn namespaces(prefix: &str) -> Vec<String> {
    run("ip", &["netns", "list"])
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(&format!("{prefix}-")))
        .map(str::to_owned)
        .collect()
}

/// Builds the lab and runs the scenario, reporting to `out`. `bin` is the `isthmus`
/// binary, `plugin` the `isthmus-cni` binary. The caller checks that no lab of that name is
/// up and removes a half-built one when this fails.
pub fn up(
    place: &Place,
    nodes: usize,
    bin: &Path,
    plugin: &Path,
    out: &mut dyn Write,
) -> Result<()> {
    let bin_str = bin.to_string_lossy().into_owned();
    let lab = Lab::named(nodes, &place.prefix, place.dir.clone())?;
    let _ = writeln!(
        out,
        "fabric {} (underlay 10.251.0.0/24, controller http://{CONTROLLER_ADDR})",
        lab.fabric.name()
    );
    let controller = lab.start_controller(&bin_str, &place.dir.join("data"))?;
    let mut daemons = vec![controller];
    for i in 0..nodes {
        daemons.push(lab.start_agent_with(&bin_str, i, &["--physnet", PUBLIC_MAPPING])?);
        let node = &lab.nodes[i];
        let _ = writeln!(
            out,
            "{}: namespace {}, tunnel {}, agent log {}",
            node.name,
            node.ns.name(),
            node.underlay_ip,
            place.dir.join(format!("{}.log", node.name)).display()
        );
    }
    wait("agents to register", Duration::from_secs(30), || {
        lab.api("GET", "/v2.0/agents", None).1["agents"]
            .as_array()
            .is_some_and(|a| a.len() == nodes)
    })?;
    let net = expect(
        &lab,
        "POST",
        "/v2.0/networks",
        json!({"network": {"name": NETWORK, "shared": true}}),
        201,
    )?;
    let net_id = text(&net["network"]["id"]);
    let mtu = net["network"]["mtu"].as_u64().unwrap_or(1450) as u32;
    expect(
        &lab,
        "POST",
        "/v2.0/subnets",
        json!({"subnet": {"network_id": net_id, "ip_version": 4, "cidr": CIDR, "name": "seamless-v4"}}),
        201,
    )?;
    let _ = writeln!(
        out,
        "network {NETWORK} {net_id}: {CIDR}, VXLAN {}, MTU {mtu}",
        net["network"]["provider:segmentation_id"]
    );

    // The VM: what Nova would do — a port bound to node 1, a tap for it in the node.
    let port = expect(
        &lab,
        "POST",
        "/v2.0/ports",
        json!({"port": {
        "network_id": net_id, "project_id": "vm-project", "name": "vm1",
        "device_owner": "compute:nova", "binding:host_id": lab.nodes[0].name}}),
        201,
    )?;
    let port = &port["port"];
    let vm_ip = text(&port["fixed_ips"][0]["ip_address"]);
    let mut vm = Vm1::start(&lab, port, mtu, place, out)?;
    let _ = writeln!(
        out,
        "VM  vm1      {vm_ip:<15} project vm-project  on {}  ({})",
        lab.nodes[0].name,
        vm.describe()
    );

    // The pod: Kubernetes namespace `demo` bound to the network for project pod-project,
    // wired on the last node by the CNI plugin exactly as kubelet would call it.
    expect(
        &lab,
        "PUT",
        "/isthmus/v1/namespace-bindings/demo",
        json!({"namespace_binding": {"network_id": net_id, "project_id": "pod-project"}}),
        201,
    )?;
    let pod = lab.add_pod()?;
    let node = nodes - 1;
    let config = json!({"cniVersion": "1.1.0", "name": "isthmus", "type": "isthmus",
        "socket": lab.nodes[node].cni_socket})
    .to_string();
    let netns = pod.netns_path();
    let added = lab.cni(
        plugin,
        node,
        &CniCall {
            command: "ADD",
            container_id: "lab-web",
            netns: &netns,
            ifname: "eth0",
            args: "K8S_POD_NAMESPACE=demo;K8S_POD_NAME=web;K8S_POD_UID=lab-web-uid",
        },
        &config,
    );
    if !added.success {
        return Err(failed(
            "isthmus-cni ADD",
            format!("{} {}", added.stdout, added.stderr),
        ));
    }
    let pod_ip = text(&added.stdout["ips"][0]["address"])
        .split('/')
        .next()
        .unwrap_or_default()
        .to_owned();
    let _ = writeln!(
        out,
        "pod demo/web {pod_ip:<15} project pod-project on {}  (namespace {})",
        lab.nodes[node].name,
        pod.ns.name()
    );

    let ping =
        |from: &crate::Netns, to: &str| from.exec("ping", &["-c", "3", "-i", "0.2", "-W", "1", to]);
    wait(
        "the VM's port to turn ACTIVE",
        Duration::from_secs(10),
        || {
            lab.api("GET", &format!("/v2.0/ports/{}", text(&port["id"])), None)
                .1["port"]["status"]
                == "ACTIVE"
        },
    )?;
    vm.configure(&vm_ip, out)?;
    let blocked = vm.ping(&pod_ip).is_err();
    let _ = writeln!(
        out,
        "ping vm1 -> demo/web before any rule: {}",
        if blocked {
            "blocked (each project's default group admits only its own members)"
        } else {
            "answered (unexpected)"
        }
    );

    let group = |project: &str| -> Result<String> {
        let (_, v) = lab.api(
            "GET",
            &format!("/v2.0/security-groups?project_id={project}&name=default"),
            None,
        );
        Ok(text(&v["security_groups"][0]["id"]))
    };
    let (vm_group, pod_group) = (group("vm-project")?, group("pod-project")?);
    for (group, remote, what) in [
        (
            &vm_group,
            &pod_group,
            "vm-project/default admits ICMP from pod-project/default",
        ),
        (
            &pod_group,
            &vm_group,
            "pod-project/default admits ICMP from vm-project/default",
        ),
    ] {
        let rule = expect(
            &lab,
            "POST",
            "/v2.0/security-group-rules",
            json!({"security_group_rule": {
            "security_group_id": group, "direction": "ingress", "ethertype": "IPv4",
            "protocol": "icmp", "remote_group_id": remote}}),
            201,
        )?;
        let _ = writeln!(out, "rule {}: {what}  (openstack security group rule create --ingress --protocol icmp --remote-group {remote} {group})", text(&rule["security_group_rule"]["id"]));
    }
    wait("vm1 to reach demo/web", Duration::from_secs(10), || {
        vm.ping(&pod_ip).is_ok()
    })?;
    let from_vm = vm.ping(&pod_ip);
    for (result, label) in [
        (from_vm, "vm1 -> demo/web"),
        (ping(&pod.ns, &vm_ip), "demo/web -> vm1"),
    ] {
        let summary = result
            .map(|o| ping_summary(&o))
            .unwrap_or_else(|e| e.to_string());
        let _ = writeln!(out, "ping {label}: {summary}");
    }
    let outside = north_south(&lab, &net_id, &vm_ip, &text(&port["id"]), &pod, out)?;
    let _ = writeln!(
        out,
        "\nThe lab stays up: `isthmus lab status`, {}, `isthmus lab down`.",
        vm.how_to_reach(&pod_ip)
    );
    // Everything stays: namespaces, directory, processes.
    vm.keep();
    let mut pod = pod;
    pod.ns.keep();
    let mut outside = outside;
    outside.keep();
    lab.keep();
    for daemon in daemons {
        std::mem::forget(daemon);
    }
    Ok(())
}

/// `ping`'s summary, from iputils or busybox (which says "3 packets received"), as one line:
/// "3 packets transmitted, 3 received, 0% packet loss; rtt ...".
fn ping_summary(output: &str) -> String {
    let mut parts = Vec::new();
    for line in output.lines() {
        if line.contains("packet loss") {
            let numbers: Vec<&str> = line
                .split(|c: char| !c.is_ascii_digit() && c != '.')
                .filter(|t| !t.is_empty())
                .collect();
            if let [sent, received, loss, ..] = numbers.as_slice() {
                parts.push(format!(
                    "{sent} packets transmitted, {received} received, {loss}% packet loss"
                ));
            }
        } else if line.starts_with("rtt") || line.starts_with("round-trip") {
            parts.push(line.trim().to_owned());
        }
    }
    parts.join("; ")
}

/// Where the lab keeps its guest image (built once from Debian packages).
pub const GUEST_IMAGE_DIR: &str = "/var/cache/isthmus/guest";

/// vm1: a QEMU guest that asks DHCP for its address when QEMU is installed, else a namespace
/// with the port's address.
enum Vm1 {
    Namespace(crate::Vm),
    Guest(crate::guest::Guest),
}

impl Vm1 {
    fn start(lab: &Lab, port: &Value, mtu: u32, place: &Place, out: &mut dyn Write) -> Result<Vm1> {
        if !crate::guest::qemu_available() {
            let _ = writeln!(
                out,
                "vm1 is a namespace: {} is not installed (apt-get install qemu-system-x86 cpio for a real guest)",
                crate::guest::QEMU
            );
            return Ok(Vm1::Namespace(lab.add_vm_for_port(
                0,
                port,
                24,
                Some("192.168.100.1"),
                mtu,
            )?));
        }
        let _ = writeln!(
            out,
            "vm1 is a QEMU guest (TCG): Debian's kernel and busybox, image in {GUEST_IMAGE_DIR} (built once)"
        );
        let image = crate::guest::image(Path::new(GUEST_IMAGE_DIR))?;
        let console = place.dir.join("vm1.console");
        Ok(Vm1::Guest(
            lab.boot_interactive_guest(0, port, &image, &console)?,
        ))
    }

    fn describe(&self) -> String {
        match self {
            Vm1::Namespace(vm) => format!("namespace {}", vm.ns.name()),
            Vm1::Guest(g) => format!("QEMU guest, tap {}", g.tap),
        }
    }

    /// A guest asks DHCP for its address (a namespace has it already).
    fn configure(&mut self, expected: &str, out: &mut dyn Write) -> Result<()> {
        let Vm1::Guest(guest) = self else {
            return Ok(());
        };
        let (output, status) = guest.run(
            "udhcpc -i eth0 -n -q -t 30 -T 1 2>&1 | grep -E 'lease of|LEASE'",
            Duration::from_secs(90),
        )?;
        if status != 0 || !output.contains(expected) {
            return Err(failed("the guest's DHCP", output));
        }
        let lease = output
            .lines()
            .find(|l| l.contains("LEASE"))
            .unwrap_or_default()
            .trim()
            .to_owned();
        let _ = writeln!(out, "vm1 DHCP: {lease}");
        Ok(())
    }

    fn ping(&mut self, to: &str) -> Result<String> {
        match self {
            Vm1::Namespace(vm) => vm.ns.exec("ping", &["-c", "3", "-i", "0.2", "-W", "1", to]),
            Vm1::Guest(guest) => {
                let (output, status) =
                    guest.run(&format!("ping -c 3 -W 1 {to}"), Duration::from_secs(20))?;
                if status == 0 {
                    Ok(output)
                } else {
                    Err(failed("ping from the guest", output))
                }
            }
        }
    }

    fn how_to_reach(&self, pod_ip: &str) -> String {
        match self {
            Vm1::Namespace(vm) => format!("`ip netns exec {} ping {pod_ip}`", vm.ns.name()),
            Vm1::Guest(g) => format!(
                "vm1's console: `socat -,raw,echo=0 UNIX-CONNECT:{}`",
                g.console_socket().display()
            ),
        }
    }

    fn keep(self) {
        match self {
            Vm1::Namespace(mut vm) => vm.ns.keep(),
            Vm1::Guest(g) => g.keep(),
        }
    }
}

/// The external network `public` (flat, on every node's `eth1`) with a host outside, a router
/// `edge` from `seamless` to it, and a floating IP for the VM: the outside host reaches the VM
/// on it, the VM leaves with it, the pod leaves with the router's address.
fn north_south(
    lab: &Lab,
    net_id: &str,
    vm_ip: &str,
    vm_port: &str,
    pod: &crate::Pod,
    out: &mut dyn Write,
) -> Result<crate::Netns> {
    let public_id = lab.create_public_network()?;
    let outside = lab.add_outside_host(&format!("{OUTSIDE}/24"))?;
    let _ = writeln!(
        out,
        "\nnetwork public {public_id}: {PUBLIC_CIDR}, flat on physnet {PUBLIC_PHYSNET} (every node's eth1 on the fabric's br-public); outside host {OUTSIDE} (namespace {})",
        outside.name()
    );
    let router = expect(
        lab,
        "POST",
        "/v2.0/routers",
        json!({"router": {"name": "edge", "external_gateway_info": {"network_id": public_id}}}),
        201,
    )?;
    let router_id = text(&router["router"]["id"]);
    let external =
        text(&router["router"]["external_gateway_info"]["external_fixed_ips"][0]["ip_address"]);
    let (_, subnets) = lab.api("GET", &format!("/v2.0/subnets?network_id={net_id}"), None);
    expect(
        lab,
        "PUT",
        &format!("/v2.0/routers/{router_id}/add_router_interface"),
        json!({"subnet_id": text(&subnets["subnets"][0]["id"])}),
        200,
    )?;
    let (_, gateway) = lab.api(
        "GET",
        &format!("/v2.0/ports?device_owner=network:router_gateway&device_id={router_id}"),
        None,
    );
    let _ = writeln!(
        out,
        "router edge {router_id}: seamless-v4 (192.168.100.1, distributed on every node with a port there) -> public, external address {external}, SNAT on {}",
        text(&gateway["ports"][0]["binding:host_id"])
    );
    let (_, groups) = lab.api(
        "GET",
        "/v2.0/security-groups?project_id=vm-project&name=default",
        None,
    );
    expect(
        lab,
        "POST",
        "/v2.0/security-group-rules",
        json!({"security_group_rule": {"security_group_id": text(&groups["security_groups"][0]["id"]),
        "direction": "ingress", "ethertype": "IPv4", "protocol": "icmp", "remote_ip_prefix": "0.0.0.0/0"}}),
        201,
    )?;
    let fip = expect(
        lab,
        "POST",
        "/v2.0/floatingips",
        json!({"floatingip": {"floating_network_id": public_id, "port_id": vm_port}}),
        201,
    )?;
    let fip = text(&fip["floatingip"]["floating_ip_address"]);
    let _ = writeln!(
        out,
        "floating IP {fip} -> vm1 {vm_ip} (NATed on node1, which maps the physnet)"
    );
    let ping = |from: &crate::Netns, to: &str| {
        from.exec("ping", &["-c", "3", "-i", "0.2", "-W", "1", to])
            .map(|o| {
                o.lines()
                    .filter(|l| l.contains("packet loss"))
                    .collect::<Vec<_>>()
                    .join("; ")
            })
    };
    wait("the outside to reach vm1", Duration::from_secs(20), || {
        ping(&outside, &fip).is_ok()
    })?;
    for (from, to, label) in [
        (&outside, fip.as_str(), "outside -> floating IP (vm1)"),
        (
            &pod.ns,
            OUTSIDE,
            "demo/web -> outside (SNAT to the router's address)",
        ),
    ] {
        let summary = ping(from, to).unwrap_or_else(|e| e.to_string());
        let _ = writeln!(out, "ping {label}: {summary}");
    }
    Ok(outside)
}

/// What is up: namespaces, processes, the controller's view of nodes and ports.
pub fn status(place: &Place, out: &mut dyn Write) -> Result<()> {
    let spaces = namespaces(&place.prefix);
    if spaces.is_empty() {
        let _ = writeln!(out, "no lab named {} is up", place.prefix);
        return Ok(());
    }
    for ns in &spaces {
        let pids = run("ip", &["netns", "pids", ns]).unwrap_or_default();
        let procs: Vec<String> = pids
            .split_whitespace()
            .filter_map(|p| {
                std::fs::read_to_string(format!("/proc/{p}/cmdline"))
                    .ok()
                    .map(|c| format!("{p} {}", c.replace('\0', " ").trim()))
            })
            .collect();
        let _ = writeln!(
            out,
            "{ns}: {}",
            if procs.is_empty() {
                "no processes".to_owned()
            } else {
                procs.join(", ")
            }
        );
    }
    let fabric = format!("{}-fabric", place.prefix);
    let get = |path: &str| -> Value {
        run(
            "ip",
            &[
                "netns",
                "exec",
                &fabric,
                "curl",
                "-s",
                &format!("http://{CONTROLLER_ADDR}{path}"),
            ],
        )
        .ok()
        .and_then(|b| serde_json::from_str(&b).ok())
        .unwrap_or(Value::Null)
    };
    for agent in get("/v2.0/agents")["agents"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let _ = writeln!(
            out,
            "agent {} alive={} ",
            text(&agent["host"]),
            agent["alive"]
        );
    }
    for port in get("/v2.0/ports")["ports"].as_array().into_iter().flatten() {
        let _ = writeln!(
            out,
            "port {:<16} {:<15} {:<7} {:<18} {}",
            text(&port["name"]),
            text(&port["fixed_ips"][0]["ip_address"]),
            text(&port["status"]),
            text(&port["device_owner"]),
            text(&port["binding:host_id"])
        );
    }
    Ok(())
}

/// Removes every namespace (with its processes, devices and rules) and the directory.
pub fn down(place: &Place, out: &mut dyn Write) -> Result<()> {
    let spaces = namespaces(&place.prefix);
    for ns in &spaces {
        let pids = run("ip", &["netns", "pids", ns]).unwrap_or_default();
        for pid in pids.split_whitespace() {
            let _ = run("kill", &[pid]);
        }
    }
    // Give daemons a moment to stop cleanly, then make sure.
    std::thread::sleep(Duration::from_millis(300));
    for ns in &spaces {
        let pids = run("ip", &["netns", "pids", ns]).unwrap_or_default();
        for pid in pids.split_whitespace() {
            let _ = run("kill", &["-9", pid]);
        }
        run("ip", &["netns", "del", ns])?;
        let _ = writeln!(out, "removed {ns}");
    }
    if place.dir.exists() {
        crate::unpin_under(&place.dir);
        std::fs::remove_dir_all(&place.dir)
            .map_err(|e| failed(&format!("rm -r {}", place.dir.display()), e))?;
        let _ = writeln!(out, "removed {}", place.dir.display());
    }
    if spaces.is_empty() {
        let _ = writeln!(out, "no lab named {} was up", place.prefix);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lab_names_stay_under_run() {
        assert_eq!(
            Place::named("isthmus-lab").unwrap().dir,
            PathBuf::from("/run/isthmus-lab")
        );
        for bad in [
            "",
            "..",
            "/",
            "a/../../etc",
            "Lab",
            "a b",
            "x".repeat(21).as_str(),
            "é",
        ] {
            assert!(Place::named(bad).is_err(), "{bad:?}");
        }
    }
}
