//! Distributed DHCP on the real kernel: namespace VMs run busybox's `udhcpc` (a real DHCP
//! client) against the agents, across two nodes.

mod cloud;

use std::collections::BTreeMap;
use std::time::Duration;

use cloud::{add_router_interface, cloud, create, default_group, ip_of, resolve, wait_for, BIN};
use isthmus_lab::{Lab, Vm};
use serde_json::{json, Value};

/// A udhcpc script that writes what the client was given, one `name=value` per line.
const SCRIPT: &str = "#!/bin/sh\n[ \"$1\" = bound ] || exit 0\nenv > \"$LEASE_FILE\"\n";

/// Runs `udhcpc` once in `vm` (up to `tries` DISCOVERs, one second apart; `requested`: the
/// address asked for with option 50). Returns what the server gave, or `None` with no lease.
fn udhcpc(
    vm: &Vm,
    dir: &std::path::Path,
    tries: u32,
    requested: Option<&str>,
) -> Option<BTreeMap<String, String>> {
    let script = dir.join("udhcpc.sh");
    std::fs::write(&script, SCRIPT).unwrap();
    std::process::Command::new("chmod")
        .args(["+x", script.to_str().unwrap()])
        .status()
        .unwrap();
    let lease = dir.join(format!("lease-{}", vm.tap));
    let _ = std::fs::remove_file(&lease);
    let tries = tries.to_string();
    let mut args = vec![
        "udhcpc",
        "-i",
        "eth0",
        "-n",
        "-q",
        "-f",
        "-t",
        &tries,
        "-T",
        "1",
        "-A",
        "1",
        "-s",
        script.to_str().unwrap(),
        "-O",
        "staticroutes",
        "-O",
        "mtu",
        "-O",
        "tftp",
    ];
    if let Some(ip) = requested {
        args.extend(["-r", ip]);
    }
    let out = vm
        .ns
        .command("busybox")
        .args(&args)
        .env("LEASE_FILE", &lease)
        .output()
        .unwrap();
    if !out.status.success() {
        return None;
    }
    let text = std::fs::read_to_string(&lease).ok()?;
    Some(
        text.lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect(),
    )
}

fn bound_port(lab: &Lab, net: &str, node: &str, extra: Value) -> Value {
    let mut body = json!({"network_id": net, "binding:host_id": node});
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    create(lab, "/v2.0/ports", "port", body)
}

#[test]
fn vms_get_their_ports_by_dhcp_from_their_own_node() {
    let Some(mut cloud) = cloud(2) else { return };
    let dir = tempfile::tempdir().unwrap();
    let lab = &cloud.lab;
    let net = create(lab, "/v2.0/networks", "network", json!({"name": "dhcp"}));
    let net = net["id"].as_str().unwrap().to_owned();
    let subnet = create(
        lab,
        "/v2.0/subnets",
        "subnet",
        json!({"network_id": net, "ip_version": 4, "cidr": "10.60.0.0/24",
               "host_routes": [{"destination": "192.168.77.0/24", "nexthop": "10.60.0.254"}]}),
    );
    let subnet_id = subnet["id"].as_str().unwrap().to_owned();
    // ICMP in, so the VMs can ping each other once addressed.
    let default = default_group(lab, None);
    create(
        lab,
        "/v2.0/security-group-rules",
        "security_group_rule",
        json!({
        "security_group_id": default, "direction": "ingress", "protocol": "icmp"}),
    );

    let a = bound_port(
        lab,
        &net,
        "node1",
        json!({"dns_name": "vm-a",
        "extra_dhcp_opts": [{"opt_name": "tftp-server", "opt_value": "10.60.0.9"}]}),
    );
    let b = bound_port(lab, &net, "node2", json!({}));
    assert_eq!(ip_of(&a), "10.60.0.3", "the DHCP port holds .2");
    let vm_a = lab.add_dhcp_vm(0, &a).unwrap();
    let vm_b = lab.add_dhcp_vm(1, &b).unwrap();

    // The tap is plugged once the agent has the port; udhcpc retries until then.
    let lease = udhcpc(&vm_a, dir.path(), 20, None).expect("vm-a got no lease");
    assert_eq!(lease["ip"], ip_of(&a));
    assert_eq!(lease["subnet"], "255.255.255.0");
    assert_eq!(lease["router"], "10.60.0.1");
    assert_eq!(
        lease["dns"], "10.60.0.2",
        "the DHCP port's address: the node's DNS"
    );
    assert_eq!(lease["serverid"], "10.60.0.2");
    assert_eq!(lease["mtu"], "1450");
    assert_eq!(lease["hostname"], "vm-a");
    assert_eq!(lease["domain"], "openstack.local");
    assert_eq!(lease["lease"], "86400");
    assert_eq!(lease["tftp"], "10.60.0.9", "extra_dhcp_opts");
    assert_eq!(
        lease["staticroutes"],
        "0.0.0.0/0 10.60.0.1 192.168.77.0/24 10.60.0.254 169.254.169.254/32 10.60.0.2"
    );
    let lease_b = udhcpc(&vm_b, dir.path(), 20, None).expect("vm-b got no lease");
    assert_eq!(lease_b["ip"], ip_of(&b));
    assert_eq!(
        lease_b["hostname"],
        format!("host-{}", ip_of(&b).replace('.', "-"))
    );
    // Addressed as told, the two reach each other across the nodes.
    for (vm, ip) in [(&vm_a, ip_of(&a)), (&vm_b, ip_of(&b))] {
        vm.ns
            .ip(&["addr", "add", &format!("{ip}/24"), "dev", "eth0"])
            .unwrap();
        vm.ns.ip(&["link", "set", "eth0", "mtu", "1450"]).unwrap();
    }
    wait_for("vm-a to reach vm-b", Duration::from_secs(10), || {
        vm_a.ns
            .exec("ping", &["-c", "1", "-W", "1", &ip_of(&b)])
            .is_ok()
    });
    // The DHCP port's address answers on every node (ARP from the DHCP namespace).
    for vm in [&vm_a, &vm_b] {
        vm.ns
            .exec("ping", &["-c", "1", "-W", "2", "10.60.0.2"])
            .unwrap();
    }

    // A renewal is answered too (unicast to the server).
    let renewed = udhcpc(&vm_a, dir.path(), 3, Some(&ip_of(&a))).expect("no renewal");
    assert_eq!(renewed["ip"], ip_of(&a));

    // The port's address changes: the old one is refused and the new one offered.
    let (s, v) = lab.api(
        "PUT",
        &format!("/v2.0/ports/{}", a["id"].as_str().unwrap()),
        Some(
            &json!({"port": {"fixed_ips": [{"subnet_id": subnet_id, "ip_address": "10.60.0.77"}]}}),
        ),
    );
    assert_eq!(s, 200, "{v}");
    wait_for(
        "the new address to be leased",
        Duration::from_secs(10),
        || udhcpc(&vm_a, dir.path(), 2, Some(&ip_of(&a))).is_some_and(|l| l["ip"] == "10.60.0.77"),
    );

    // A rogue DHCP server in vm-b (its group even lets DHCP requests in): vm-a's requests
    // stop at vm-a's port (the node answered them there), so it hears none; and what vm-b
    // sends as a DHCP server is dropped at vm-b's port. vm-a keeps getting its lease from the
    // network's DHCP port.
    create(
        lab,
        "/v2.0/security-group-rules",
        "security_group_rule",
        json!({
        "security_group_id": default, "direction": "ingress", "protocol": "udp",
        "port_range_min": 67, "port_range_max": 67}),
    );
    let conf = dir.path().join("udhcpd.conf");
    std::fs::write(
        &conf,
        format!(
            "start 10.60.0.200\nend 10.60.0.210\ninterface eth0\nlease_file {}\nopt router 10.60.0.200\n",
            dir.path().join("rogue.leases").display()
        ),
    )
    .unwrap();
    let rogue = Killed(
        vm_b.ns
            .command("busybox")
            .args(["udhcpd", "-f", conf.to_str().unwrap()])
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    std::thread::sleep(Duration::from_millis(300));
    for _ in 0..3 {
        let lease = udhcpc(&vm_a, dir.path(), 3, None).expect("no lease beside the rogue");
        assert_eq!(lease["ip"], "10.60.0.77");
        assert_eq!(lease["serverid"], "10.60.0.2");
    }
    // What a port's DHCP guard dropped.
    let dropped = |node: usize, tap: &str| {
        let rules = lab.nodes[node]
            .ns
            .exec(
                "nft",
                &["list", "chain", "bridge", "isthmus", &format!("from_{tap}")],
            )
            .unwrap();
        rules
            .lines()
            .find(|l| l.contains("ether type ip udp sport"))
            .and_then(|l| l.split("packets ").nth(1))
            .and_then(|n| n.split_whitespace().next())
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(0)
    };
    assert!(
        dropped(0, &vm_a.tap) >= 3,
        "vm-a's requests went past its port"
    );
    // An offer forged by vm-b, broadcast from port 67 to 68.
    let forged = "import socket\n\
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
        s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)\n\
        s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, b'eth0')\n\
        s.bind(('', 67))\n\
        s.sendto(bytes([2, 1, 6, 0]) + bytes(296), ('255.255.255.255', 68))\n";
    drop(rogue);
    let before = dropped(1, &vm_b.tap);
    vm_b.ns.exec("python3", &["-c", forged]).unwrap();
    wait_for(
        "vm-b's forged offer to be dropped",
        Duration::from_secs(5),
        || dropped(1, &vm_b.tap) > before,
    );

    // A subnet without DHCP gets no answer.
    let quiet = create(lab, "/v2.0/networks", "network", json!({"name": "quiet"}));
    let quiet = quiet["id"].as_str().unwrap().to_owned();
    create(
        lab,
        "/v2.0/subnets",
        "subnet",
        json!({"network_id": quiet, "ip_version": 4,
        "cidr": "10.61.0.0/24", "enable_dhcp": false}),
    );
    let c = bound_port(lab, &quiet, "node1", json!({}));
    let vm_c = lab.add_dhcp_vm(0, &c).unwrap();
    wait_for(
        "the quiet port's tap to be plugged",
        Duration::from_secs(10),
        || {
            lab.nodes[0]
                .ns
                .ip(&["-o", "link", "show", &vm_c.tap])
                .is_ok_and(|l| l.contains("master brq"))
        },
    );
    assert_eq!(
        udhcpc(&vm_c, dir.path(), 3, None),
        None,
        "enable_dhcp is false"
    );

    // An agent restart: leases keep being answered.
    drop(cloud.agents.remove(0));
    cloud
        .agents
        .insert(0, cloud.lab.start_agent(BIN, 0).unwrap());
    let lease = udhcpc(&vm_a, dir.path(), 10, None).expect("no lease after the restart");
    assert_eq!(lease["ip"], "10.60.0.77");

    // Only a port's own node answers it: with node 2's agent stopped (its bridge, tunnel and
    // taps stay), vm-b's DISCOVERs still flood to node 1 over VXLAN, and node 1 keeps quiet.
    drop(cloud.agents.remove(1));
    assert_eq!(
        udhcpc(&vm_b, dir.path(), 3, None),
        None,
        "node 1 answered a port bound to node 2"
    );
    cloud
        .agents
        .insert(1, cloud.lab.start_agent(BIN, 1).unwrap());
    let lease = udhcpc(&vm_b, dir.path(), 10, None).expect("no lease once node 2 is back");
    assert_eq!(lease["ip"], ip_of(&b));
}

/// Kills a process when the test ends.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn instance_names_follow_the_api_and_the_rest_is_forwarded() {
    // Upstream: a dnsmasq in the fabric that knows one outside name.
    let Some(cloud) = cloud::cloud_with(&[&["--dns-upstream", "10.251.0.254:53"]]) else {
        return;
    };
    let lab = &cloud.lab;
    let _upstream = Killed(
        lab.fabric
            .command("dnsmasq")
            .args([
                "--no-daemon",
                "--no-resolv",
                "--no-hosts",
                "--user=root",
                "--port=53",
                "--listen-address=10.251.0.254",
                "--bind-interfaces",
                "--address=/outside.example/192.0.2.7",
            ])
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let net = create(lab, "/v2.0/networks", "network", json!({"name": "named"}));
    let net = net["id"].as_str().unwrap().to_owned();
    create(
        lab,
        "/v2.0/subnets",
        "subnet",
        json!({"network_id": net, "ip_version": 4,
        "cidr": "10.62.0.0/24"}),
    );
    let asker = bound_port(lab, &net, "node1", json!({"dns_name": "asker"}));
    let vm = lab
        .add_vm_for_port(0, &asker, 24, Some("10.62.0.1"), 1450)
        .unwrap();
    let server = "10.62.0.2";
    wait_for("the node's DNS to answer", Duration::from_secs(10), || {
        resolve(&vm.ns, "asker.openstack.local", server) == [ip_of(&asker)]
    });
    // A new port's name resolves, a rename moves it, a delete removes it: each within 1 s.
    let web = bound_port(lab, &net, "node1", json!({"dns_name": "web"}));
    let web_id = web["id"].as_str().unwrap().to_owned();
    wait_for("a new name", Duration::from_secs(1), || {
        resolve(&vm.ns, "web.openstack.local", server) == [ip_of(&web)]
    });
    let (s, v) = lab.api(
        "PUT",
        &format!("/v2.0/ports/{web_id}"),
        Some(&json!({"port": {"dns_name": "www"}})),
    );
    assert_eq!(s, 200, "{v}");
    wait_for("the renamed name", Duration::from_secs(1), || {
        resolve(&vm.ns, "www.openstack.local", server) == [ip_of(&web)]
            && resolve(&vm.ns, "web.openstack.local", server).is_empty()
    });
    let (s, _) = lab.api("DELETE", &format!("/v2.0/ports/{web_id}"), None);
    assert_eq!(s, 204);
    wait_for("the deleted name to go", Duration::from_secs(1), || {
        resolve(&vm.ns, "www.openstack.local", server).is_empty()
    });
    // Names of other networks are not this one's; outside names come from upstream.
    let other = create(lab, "/v2.0/networks", "network", json!({"name": "other"}));
    let other = other["id"].as_str().unwrap().to_owned();
    create(
        lab,
        "/v2.0/subnets",
        "subnet",
        json!({"network_id": other, "ip_version": 4,
        "cidr": "10.63.0.0/24"}),
    );
    bound_port(lab, &other, "node1", json!({"dns_name": "elsewhere"}));
    std::thread::sleep(Duration::from_millis(300));
    assert!(resolve(&vm.ns, "elsewhere.openstack.local", server).is_empty());
    assert_eq!(resolve(&vm.ns, "outside.example", server), ["192.0.2.7"]);

    // This agent has no --metadata-url: the metadata address refuses connections.
    vm.ns
        .ip(&["route", "add", "169.254.169.254", "via", server])
        .unwrap();
    let refused = vm
        .ns
        .command("curl")
        .args([
            "-s",
            "-m",
            "3",
            "http://169.254.169.254/openstack/latest/meta_data.json",
        ])
        .status()
        .unwrap();
    assert_eq!(refused.code(), Some(7), "curl: could not connect");
}

/// A network with one IPv6 subnet in `mode` (RA and address mode) on a router; its id.
fn routed_v6_network(lab: &Lab, name: &str, cidr: &str, mode: &str) -> String {
    let net = create(lab, "/v2.0/networks", "network", json!({ "name": name }));
    let net = net["id"].as_str().unwrap().to_owned();
    let subnet = create(
        lab,
        "/v2.0/subnets",
        "subnet",
        json!({"network_id": net,
        "ip_version": 6, "cidr": cidr, "ipv6_ra_mode": mode, "ipv6_address_mode": mode}),
    );
    let router = create(
        lab,
        "/v2.0/routers",
        "router",
        json!({ "name": format!("r-{name}") }),
    );
    add_router_interface(
        lab,
        router["id"].as_str().unwrap(),
        subnet["id"].as_str().unwrap(),
    );
    net
}

#[test]
fn a_slaac_subnet_behind_a_router_configures_instances_by_router_advertisements() {
    let Some(cloud) = cloud(2) else { return };
    let lab = &cloud.lab;
    let net = routed_v6_network(lab, "v6", "2001:db8:70::/64", "slaac");
    let ports: Vec<Value> = (0..2)
        .map(|i| bound_port(lab, &net, &format!("node{}", i + 1), json!({})))
        .collect();
    // The instances have no address of their own: the kernel makes its EUI-64 address from
    // the advertised prefix, which is the address Neutron's IPAM gave the port.
    let vms: Vec<Vm> = ports
        .iter()
        .enumerate()
        .map(|(i, p)| lab.add_dhcp_vm(i, p).unwrap())
        .collect();
    for (vm, port) in vms.iter().zip(&ports) {
        let wanted = ip_of(port);
        assert!(wanted.starts_with("2001:db8:70:"), "{wanted}");
        wait_for(
            "an address from the advertisement",
            Duration::from_secs(30),
            || {
                vm.ns
                    .ip(&["-6", "-o", "addr", "show", "dev", "eth0", "scope", "global"])
                    .is_ok_and(|a| a.contains(&format!("{wanted}/64")))
            },
        );
        let routes = vm.ns.ip(&["-6", "route", "show", "default"]).unwrap();
        assert!(
            routes.contains("via fe80::"),
            "the router is the default: {routes}"
        );
    }
}

#[test]
fn dhcpv6_stateful_subnets_lease_the_ports_address_to_a_real_client() {
    let Some(cloud) = cloud(1) else { return };
    let lab = &cloud.lab;
    let dir = tempfile::tempdir().unwrap();
    let net = routed_v6_network(lab, "v6-stateful", "2001:db8:71::/64", "dhcpv6-stateful");
    let port = bound_port(lab, &net, "node1", json!({}));
    let vm = lab.add_dhcp_vm(0, &port).unwrap();
    let (_, dhcp) = lab.api(
        "GET",
        &format!("/v2.0/ports?network_id={net}&device_owner=network:dhcp"),
        None,
    );
    let server = ip_of(&dhcp["ports"][0]);
    let conf = dir.path().join("dhclient.conf");
    std::fs::write(&conf, "timeout 20;\nretry 1;\n").unwrap();
    let lease_file = dir.path().join("dhclient6.leases");
    // Once the tap is plugged and eth0's link-local address is usable.
    wait_for("a DHCPv6 lease", Duration::from_secs(40), || {
        vm.ns
            .command("dhclient")
            .args(["-6", "-1", "-sf", "/bin/true", "-cf"])
            .arg(&conf)
            .arg("-lf")
            .arg(&lease_file)
            .arg("-pf")
            .arg(dir.path().join("dhclient6.pid"))
            .arg("eth0")
            .output()
            .is_ok_and(|o| o.status.success())
    });
    let lease = std::fs::read_to_string(&lease_file).unwrap();
    assert!(
        lease.contains(&format!("iaaddr {}", ip_of(&port))),
        "{lease}"
    );
    assert!(
        lease.contains(&format!("dhcp6.name-servers {server}")),
        "{lease}"
    );
    assert!(
        lease.contains("dhcp6.domain-search \"openstack.local.\""),
        "{lease}"
    );
}
