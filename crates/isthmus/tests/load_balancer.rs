//! Load balancers in the kernel: the Octavia API on the lab controller, members that are VMs
//! and pods (through the real `isthmus-cni`) on three nodes, clients on the VIP's network and
//! behind a router; every node balances its own clients with nftables.

mod cloud;
mod lb;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Stdio};
use std::time::{Duration, Instant};

use cloud::{
    add_router_interface, cloud, cni_add, cni_conf, create, ip_of, ipv4_only, shared_network,
    wait_for, Cloud, BIN,
};
use isthmus_lab::{Lab, Netns};
use lb::{count, serve, within, CLIENT};
use serde_json::{json, Value};

/// One held connection: the member that took it, and an echo through it.
struct Held {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    member: String,
}

impl Held {
    fn open(ns: &Netns, vip: &str, port: u16) -> Held {
        let mut child = ns
            .command("python3")
            .args([CLIENT, "hold", vip, &port.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut member = String::new();
        stdout.read_line(&mut member).unwrap();
        Held {
            child,
            stdin,
            stdout,
            member: member.trim().to_owned(),
        }
    }

    fn echo(&mut self, text: &str) -> String {
        writeln!(self.stdin, "{text}").unwrap();
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        line.trim().to_owned()
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn vm_port(lab: &Lab, net: &str, node: usize, name: &str) -> Value {
    create(
        lab,
        "/v2.0/ports",
        "port",
        json!({"network_id": net, "project_id": "project-a", "binding:host_id": format!("node{node}"),
               "device_owner": "compute:nova", "name": name}),
    )
}

fn lbaas(lab: &Lab, path: &str, kind: &str, body: Value) -> Value {
    let (s, v) = lab.api(
        "POST",
        &format!("/v2/lbaas/{path}"),
        Some(&json!({ kind: body })),
    );
    assert_eq!(s, 201, "{path}: {v}");
    v[kind].clone()
}

/// A TCP listener on port 80 of load balancer `lb`, with a round-robin pool.
fn tcp_listener_and_pool(lab: &Lab, lb: &Value) -> (Value, Value) {
    let listener = lbaas(
        lab,
        "listeners",
        "listener",
        json!({"loadbalancer_id": id(lb), "protocol": "TCP", "protocol_port": 80}),
    );
    let pool = lbaas(
        lab,
        "pools",
        "pool",
        json!({"listener_id": id(&listener), "protocol": "TCP", "lb_algorithm": "ROUND_ROBIN"}),
    );
    (listener, pool)
}

/// A load balancer (`body`) with a TCP listener on port 80 whose round-robin pool has one
/// member, `member`:8080.
fn tcp_balancer(lab: &Lab, body: Value, member: &str) -> Value {
    let lb = lbaas(lab, "loadbalancers", "loadbalancer", body);
    let (_, pool) = tcp_listener_and_pool(lab, &lb);
    lbaas(
        lab,
        &format!("pools/{}/members", id(&pool)),
        "member",
        json!({"address": member, "protocol_port": 8080}),
    );
    lb
}

fn put(lab: &Lab, path: &str, body: Value) {
    let (s, v) = lab.api("PUT", &format!("/v2/lbaas/{path}"), Some(&body));
    assert_eq!(s, 200, "{path}: {v}");
}

fn id(v: &Value) -> String {
    v["id"].as_str().unwrap().to_owned()
}

/// Waits until every connection of a burst from `ns` is answered.
fn wait_served(ns: &Netns, vip: &str, port: u16) {
    wait_for("the VIP to answer", Duration::from_secs(20), || {
        let c = count(ns, vip, port, 6);
        !c.contains_key("<failed>")
    });
}

fn pod(cloud: &Cloud, node: usize, name: &str) -> (isthmus_lab::Pod, String) {
    let pod = cloud.lab.add_pod().unwrap();
    ipv4_only(&pod.ns);
    let config = cni_conf(cloud, node, json!({}));
    let args = format!("K8S_POD_NAMESPACE=web;K8S_POD_NAME={name};K8S_POD_UID=uid-{name}");
    let result = cni_add(cloud, node, &pod, name, &args, &config);
    let ip = result["ips"][0]["address"].as_str().unwrap();
    let ip = ip.split('/').next().unwrap().to_owned();
    (pod, ip)
}

#[test]
fn load_balancer_spreads_tracks_and_cleans_up() {
    // Node 1 reaches the external network (the router's gateway, where a floating IP on the
    // unbound VIP port is NATed).
    let mapped: &[&str] = &["--physnet", isthmus_lab::PUBLIC_MAPPING];
    let Some(cloud) = cloud::cloud_with(&[mapped, &[], &[]]) else {
        return;
    };
    let lab = &cloud.lab;
    // DHCP on the members' network: its DHCP namespace is where health probes come from.
    let (net_a, sub_a) = cloud::shared_network_with(lab, "lb-a", "10.50.0.0/24", true);
    let (net_b, sub_b) = shared_network(lab, "lb-b", "10.60.0.0/24");
    wait_for("the agents", Duration::from_secs(20), || {
        lab.api("GET", "/v2.0/agents", None).1["agents"]
            .as_array()
            .is_some_and(|a| a.len() == 3)
    });
    let public = lab.create_public_network().unwrap();
    let router = create(
        lab,
        "/v2.0/routers",
        "router",
        json!({"name": "r", "project_id": "project-a",
               "external_gateway_info": {"network_id": public}}),
    );
    add_router_interface(lab, &id(&router), &sub_a);
    add_router_interface(lab, &id(&router), &sub_b);
    let (s, b) = lab.api(
        "PUT",
        "/isthmus/v1/namespace-bindings/web",
        Some(&json!({"namespace_binding": {"network_id": net_a, "project_id": "project-a"}})),
    );
    assert_eq!(s, 201, "{b}");

    // Clients: a VM on node 1 and one behind the router on node 3. Members: a VM on node 2,
    // pods on nodes 2 and 3.
    let c1_port = vm_port(lab, &net_a, 1, "client");
    // The project's default group (made with its first port) lets the members' port in.
    let group = cloud::default_group(lab, Some("project-a"));
    for (protocol, port) in [("tcp", 8080), ("udp", 8080)] {
        create(
            lab,
            "/v2.0/security-group-rules",
            "security_group_rule",
            json!({"security_group_id": group, "direction": "ingress", "protocol": protocol,
                   "port_range_min": port, "port_range_max": port, "remote_ip_prefix": "0.0.0.0/0"}),
        );
    }
    let c1 = lab
        .add_vm_for_port(0, &c1_port, 24, Some("10.50.0.1"), 1450)
        .unwrap();
    ipv4_only(&c1.ns);
    let c2_port = vm_port(lab, &net_b, 3, "routed-client");
    let c2 = lab
        .add_vm_for_port(2, &c2_port, 24, Some("10.60.0.1"), 1450)
        .unwrap();
    ipv4_only(&c2.ns);
    let m1_port = vm_port(lab, &net_a, 2, "vm-member");
    let m1 = lab
        .add_vm_for_port(1, &m1_port, 24, Some("10.50.0.1"), 1450)
        .unwrap();
    ipv4_only(&m1.ns);
    let (p2, p2_ip) = pod(&cloud, 1, "p2");
    let (p3, p3_ip) = pod(&cloud, 2, "p3");
    let mut servers = vec![
        serve(&m1.ns, "m1"),
        serve(&p2.ns, "p2"),
        serve(&p3.ns, "p3"),
    ];

    let lb = lbaas(
        lab,
        "loadbalancers",
        "loadbalancer",
        json!({"name": "web", "vip_subnet_id": sub_a, "project_id": "project-a"}),
    );
    let vip = lb["vip_address"].as_str().unwrap().to_owned();
    let (listener, pool) = tcp_listener_and_pool(lab, &lb);
    let pool_id = id(&pool);
    let mut members = BTreeMap::new();
    for (name, ip) in [
        ("m1", ip_of(&m1_port)),
        ("p2", p2_ip.clone()),
        ("p3", p3_ip.clone()),
    ] {
        let m = lbaas(
            lab,
            &format!("pools/{pool_id}/members"),
            "member",
            json!({"address": ip, "protocol_port": 8080, "subnet_id": sub_a}),
        );
        members.insert(name, id(&m));
    }
    // ACTIVE once every node that balances for the VIP has applied the whole tree: from then
    // on every connection is served.
    let (_, shown) = lab.api("GET", &format!("/v2/lbaas/loadbalancers/{}", id(&lb)), None);
    assert_ne!(
        shown["loadbalancer"]["provisioning_status"], "ERROR",
        "{shown}"
    );
    wait_for("the load balancer ACTIVE", Duration::from_secs(20), || {
        let (_, shown) = lab.api("GET", &format!("/v2/lbaas/loadbalancers/{}", id(&lb)), None);
        shown["loadbalancer"]["provisioning_status"] == "ACTIVE"
    });
    let counts = count(&c1.ns, &vip, 80, 6);
    assert!(
        !counts.contains_key("<failed>"),
        "ACTIVE but not served: {counts:?}"
    );

    // 300 connections from the VM on node 1: a third each.
    let counts = count(&c1.ns, &vip, 80, 300);
    for m in ["m1", "p2", "p3"] {
        assert!(within(&counts, m, 100, 30), "{counts:?}");
    }
    // A pod that is a member reaches its own VIP (hairpin): every connection is answered,
    // its own server among them.
    let counts = count(&p2.ns, &vip, 80, 9);
    assert!(
        !counts.contains_key("<failed>") && counts.contains_key("p2"),
        "{counts:?}"
    );
    // A VM on another subnet, behind the router, on node 3.
    let counts = count(&c2.ns, &vip, 80, 30);
    assert!(
        !counts.contains_key("<failed>") && counts.len() == 3,
        "{counts:?}"
    );

    // From outside, through a floating IP on the VIP port.
    let fip = create(
        lab,
        "/v2.0/floatingips",
        "floatingip",
        json!({"floating_network_id": public, "port_id": lb["vip_port_id"], "project_id": "project-a"}),
    );
    let floating = fip["floating_ip_address"].as_str().unwrap().to_owned();
    let outside = lab.add_outside_host("172.24.4.200/24").unwrap();
    wait_for("the floating IP to answer", Duration::from_secs(20), || {
        !count(&outside, &floating, 80, 3).contains_key("<failed>")
    });
    let counts = count(&outside, &floating, 80, 30);
    assert!(
        !counts.contains_key("<failed>") && counts.len() == 3,
        "{counts:?}"
    );

    // Weights 1:2:1.
    put(
        lab,
        &format!("pools/{pool_id}/members/{}", members["p2"]),
        json!({"member": {"weight": 2}}),
    );
    wait_for("the weights to apply", Duration::from_secs(10), || {
        let c = count(&c1.ns, &vip, 80, 40);
        within(&c, "p2", 20, 4)
    });
    let counts = count(&c1.ns, &vip, 80, 300);
    assert!(
        within(&counts, "p2", 150, 30) && within(&counts, "m1", 75, 25),
        "{counts:?}"
    );

    // Source-IP persistence: every connection of one client lands on one member.
    put(
        lab,
        &format!("pools/{pool_id}"),
        json!({"pool": {"session_persistence": {"type": "SOURCE_IP"}}}),
    );
    wait_for("persistence", Duration::from_secs(10), || {
        count(&c1.ns, &vip, 80, 20).len() == 1
    });
    assert_eq!(count(&c1.ns, &vip, 80, 50).len(), 1);

    // A member taken down gets no new connection; the one open to it goes on.
    let mut held = Held::open(&c1.ns, &vip, 80);
    let taken = held.member.clone();
    put(
        lab,
        &format!("pools/{pool_id}/members/{}", members[taken.as_str()]),
        json!({"member": {"admin_state_up": false}}),
    );
    wait_for("the member to leave", Duration::from_secs(10), || {
        !count(&c1.ns, &vip, 80, 10).contains_key(&taken)
    });
    let counts = count(&c1.ns, &vip, 80, 30);
    assert!(
        !counts.contains_key(&taken) && !counts.contains_key("<failed>"),
        "{counts:?}"
    );
    assert_eq!(held.echo("still there"), "still there");
    // Statistics: what each node counted of its own clients, reported with its heartbeats
    // (every 10 s) and summed; the held connection is open.
    let stats =
        |path: String| lab.api("GET", &format!("/v2/lbaas/{path}/stats"), None).1["stats"].clone();
    let listener_stats = || stats(format!("listeners/{}", id(&listener)));
    wait_for("statistics", Duration::from_secs(25), || {
        let s = listener_stats();
        s["total_connections"].as_u64() >= Some(600) && s["active_connections"].as_u64() >= Some(1)
    });
    let s = listener_stats();
    assert!(
        s["bytes_in"].as_u64() > Some(0) && s["bytes_out"].as_u64() > Some(0),
        "{s}"
    );
    let whole = stats(format!("loadbalancers/{}", id(&lb)));
    assert!(
        whole["total_connections"].as_u64() >= s["total_connections"].as_u64(),
        "{whole} {s}"
    );
    drop(held);
    put(
        lab,
        &format!("pools/{pool_id}/members/{}", members[taken.as_str()]),
        json!({"member": {"admin_state_up": true}}),
    );
    put(
        lab,
        &format!("pools/{pool_id}"),
        json!({"pool": {"session_persistence": null}}),
    );

    // A health monitor: a member whose server stops is ERROR and gets no new connection within
    // delay x max_retries_down + 1 s; restarted, it is ONLINE and back.
    lbaas(
        lab,
        "healthmonitors",
        "healthmonitor",
        json!({"pool_id": pool_id, "type": "TCP", "delay": 1, "timeout": 1, "max_retries": 1,
                 "max_retries_down": 2}),
    );
    let member_status = |name: &str| -> String {
        let (_, m) = lab.api(
            "GET",
            &format!("/v2/lbaas/pools/{pool_id}/members/{}", members[name]),
            None,
        );
        m["member"]["operating_status"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };
    wait_for("every member ONLINE", Duration::from_secs(10), || {
        ["m1", "p2", "p3"]
            .iter()
            .all(|m| member_status(m) == "ONLINE")
    });
    servers.pop();
    let stopped = Instant::now();
    wait_for("p3 ERROR", Duration::from_secs(10), || {
        member_status("p3") == "ERROR"
    });
    wait_for("p3 out of the data plane", Duration::from_secs(10), || {
        !count(&c1.ns, &vip, 80, 6).contains_key("p3")
    });
    let gone = stopped.elapsed();
    assert!(
        gone < Duration::from_secs(3),
        "p3 left after {gone:?} (budget: 1 s x 2 + 1 s)"
    );
    let counts = count(&c1.ns, &vip, 80, 30);
    assert!(
        !counts.contains_key("<failed>") && !counts.contains_key("p3"),
        "{counts:?}"
    );
    let (_, status) = lab.api(
        "GET",
        &format!("/v2/lbaas/loadbalancers/{}/status", id(&lb)),
        None,
    );
    let tree = &status["statuses"]["loadbalancer"];
    assert_eq!(tree["operating_status"], "DEGRADED", "{status}");
    assert_eq!(
        tree["listeners"][0]["pools"][0]["operating_status"], "DEGRADED",
        "{status}"
    );
    servers.push(serve(&p3.ns, "p3"));
    wait_for("p3 ONLINE and back", Duration::from_secs(10), || {
        member_status("p3") == "ONLINE" && count(&c1.ns, &vip, 80, 6).contains_key("p3")
    });

    // allowed_cidrs: only the routed subnet may connect.
    put(
        lab,
        &format!("listeners/{}", id(&listener)),
        json!({"listener": {"allowed_cidrs": ["10.60.0.0/24"]}}),
    );
    wait_for("allowed_cidrs", Duration::from_secs(10), || {
        count(&c1.ns, &vip, 80, 1).contains_key("<failed>")
    });
    assert!(!count(&c2.ns, &vip, 80, 5).contains_key("<failed>"));
    wait_for("the refusals counted", Duration::from_secs(25), || {
        listener_stats()["request_errors"].as_u64() >= Some(1)
    });

    // A UDP listener with its own pool.
    let udp = lbaas(
        lab,
        "listeners",
        "listener",
        json!({"loadbalancer_id": id(&lb), "protocol": "UDP", "protocol_port": 53}),
    );
    let udp_pool = lbaas(
        lab,
        "pools",
        "pool",
        json!({"listener_id": id(&udp), "protocol": "UDP", "lb_algorithm": "SOURCE_IP_PORT"}),
    );
    let udp_member = lbaas(
        lab,
        &format!("pools/{}/members", id(&udp_pool)),
        "member",
        json!({"address": p3_ip, "protocol_port": 8080}),
    );
    wait_for("the UDP listener", Duration::from_secs(10), || {
        c1.ns
            .exec("python3", &[CLIENT, "udp", &vip, "53"])
            .is_ok_and(|answer| answer.trim() == "p3 hello")
    });
    // A UDP-CONNECT monitor: a datagram drawing an ICMP port unreachable is a failure.
    lbaas(
        lab,
        "healthmonitors",
        "healthmonitor",
        json!({"pool_id": id(&udp_pool), "type": "UDP-CONNECT", "delay": 1, "timeout": 1,
               "max_retries": 1, "max_retries_down": 2}),
    );
    let udp_status = || -> String {
        let path = format!(
            "/v2/lbaas/pools/{}/members/{}",
            id(&udp_pool),
            id(&udp_member)
        );
        lab.api("GET", &path, None).1["member"]["operating_status"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };
    wait_for("the UDP member ONLINE", Duration::from_secs(10), || {
        udp_status() == "ONLINE"
    });
    servers.pop();
    wait_for("the UDP member ERROR", Duration::from_secs(10), || {
        udp_status() == "ERROR"
    });

    // A client that asks for a VIP before it can be answered is answered as soon as its node
    // can: the node announces the VIP once its service has members. Not at the client's next
    // ARP retry (made 3 s here, so that a missed announcement cannot hide behind it), nor at
    // its next SYN a second later (an announcement before the members would release its
    // first SYN into a listener that refuses it).
    c1.ns
        .exec(
            "sysctl",
            &["-qw", "net.ipv4.neigh.eth0.retrans_time_ms=3000"],
        )
        .unwrap();
    let early = "10.50.0.222";
    let (early_lb, asked, active, connected, answer) = std::thread::scope(|scope| {
        let asked = Instant::now();
        let client = scope.spawn(|| {
            let answer = c1.ns.exec("python3", &[CLIENT, "count", early, "80", "1"]);
            (Instant::now(), answer)
        });
        // Its first ARP request goes unanswered.
        std::thread::sleep(Duration::from_millis(100));
        let lb = lbaas(
            lab,
            "loadbalancers",
            "loadbalancer",
            json!({"vip_subnet_id": sub_a, "vip_address": early, "project_id": "project-a"}),
        );
        let listener = lbaas(
            lab,
            "listeners",
            "listener",
            json!({"loadbalancer_id": id(&lb), "protocol": "TCP", "protocol_port": 80}),
        );
        // The nodes make the VIP theirs with a listener that has no member yet.
        std::thread::sleep(Duration::from_millis(200));
        let pool = lbaas(
            lab,
            "pools",
            "pool",
            json!({"listener_id": id(&listener), "protocol": "TCP", "lb_algorithm": "ROUND_ROBIN"}),
        );
        lbaas(
            lab,
            &format!("pools/{}/members", id(&pool)),
            "member",
            json!({"address": ip_of(&m1_port), "protocol_port": 8080}),
        );
        wait_for(
            "the early load balancer ACTIVE",
            Duration::from_secs(10),
            || {
                let (_, shown) =
                    lab.api("GET", &format!("/v2/lbaas/loadbalancers/{}", id(&lb)), None);
                shown["loadbalancer"]["provisioning_status"] == "ACTIVE"
            },
        );
        let active = Instant::now();
        let (connected, answer) = client.join().unwrap();
        (id(&lb), asked, active, connected, answer)
    });
    let answer = answer.unwrap();
    assert!(answer.contains("m1"), "{answer}");
    assert!(
        active - asked < Duration::from_millis(900),
        "the load balancer took {:?} to be ACTIVE: too long to tell an announced VIP from a SYN retry",
        active - asked
    );
    assert!(
        connected - asked < Duration::from_millis(980),
        "answered {:?} after the first ask (ACTIVE after {:?}): the VIP was not announced once it could be answered",
        connected - asked,
        active - asked
    );
    let (s, v) = lab.api(
        "DELETE",
        &format!("/v2/lbaas/loadbalancers/{early_lb}?cascade=true"),
        None,
    );
    assert_eq!(s, 204, "{v}");

    // Cascade delete: no VIP port, no table, no rule, no route on any node.
    let (s, v) = lab.api(
        "DELETE",
        &format!("/v2/lbaas/loadbalancers/{}?cascade=true", id(&lb)),
        None,
    );
    assert_eq!(s, 204, "{v}");
    let (_, port) = lab.api(
        "GET",
        &format!("/v2.0/ports/{}", lb["vip_port_id"].as_str().unwrap()),
        None,
    );
    assert!(port["port"].is_null(), "{port}");
    for node in &lab.nodes {
        wait_for(
            "the node's balancing to go",
            Duration::from_secs(10),
            || {
                let inet = node
                    .ns
                    .exec("nft", &["list", "table", "inet", "isthmus_lb"]);
                let rules = node.ns.ip(&["-4", "rule", "show"]).unwrap_or_default();
                inet.is_err() && !rules.lines().any(|l| l.starts_with("900:"))
            },
        );
    }
    assert!(count(&c1.ns, &vip, 80, 1).contains_key("<failed>"));
}

/// What a node's balancing holds, with nft rule handles (a rewritten rule gets a new one).
fn balancing_state(lab: &Lab, node: usize) -> String {
    let ns = &lab.nodes[node].ns;
    let mut state = ns
        .exec("nft", &["-a", "list", "table", "inet", "isthmus_lb"])
        .unwrap();
    for args in [
        &["-4", "rule", "show"][..],
        &["-4", "route", "show", "table", "all"],
        &["-4", "neigh", "show", "nud", "permanent"],
    ] {
        let mut lines: Vec<String> = ns.ip(args).unwrap().lines().map(str::to_owned).collect();
        lines.sort();
        state.push_str(&lines.join("\n"));
    }
    state
}

/// An agent restart with 100 load balancers changes nothing in the kernel and loses no
/// established connection.
#[test]
fn agent_restart_keeps_100_load_balancers_and_their_connections() {
    let Some(mut cloud) = cloud(2) else {
        return;
    };
    let lab = &cloud.lab;
    let (net, sub) = shared_network(lab, "lb-many", "10.70.0.0/24");
    let client_port = vm_port(lab, &net, 1, "client");
    let client = lab
        .add_vm_for_port(0, &client_port, 24, None, 1450)
        .unwrap();
    ipv4_only(&client.ns);
    let member_port = vm_port(lab, &net, 2, "member");
    let member = lab
        .add_vm_for_port(1, &member_port, 24, None, 1450)
        .unwrap();
    ipv4_only(&member.ns);
    let group = cloud::default_group(lab, Some("project-a"));
    create(
        lab,
        "/v2.0/security-group-rules",
        "security_group_rule",
        json!({"security_group_id": group, "direction": "ingress", "protocol": "tcp",
               "port_range_min": 8080, "port_range_max": 8080, "remote_ip_prefix": "0.0.0.0/0"}),
    );
    let _server = serve(&member.ns, "m");
    let (mut vips, mut lbs) = (Vec::new(), Vec::new());
    for i in 0..100 {
        let lb = tcp_balancer(
            lab,
            json!({"name": format!("lb{i}"), "vip_subnet_id": sub, "project_id": "project-a"}),
            &ip_of(&member_port),
        );
        vips.push(lb["vip_address"].as_str().unwrap().to_owned());
        lbs.push(id(&lb));
    }
    let (first, last) = (&vips[0], &vips[99]);
    wait_served(&client.ns, last, 80);
    let mut held = Held::open(&client.ns, first, 80);
    assert_eq!(held.member, "m");
    let before = balancing_state(lab, 0);
    assert!(before.matches("svc-").count() >= 200, "{before}");

    drop(std::mem::replace(
        &mut cloud.agents[0],
        lab.start_agent(BIN, 0).unwrap(),
    ));
    wait_for(
        "the restarted agent's first pass",
        Duration::from_secs(20),
        || lab.api("GET", "/isthmus/v1/nodes/node1", None).1["node"]["alive"] == json!(true),
    );
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        balancing_state(lab, 0),
        before,
        "the restart rewrote the kernel"
    );
    assert_eq!(held.echo("after the restart"), "after the restart");
    assert!(!count(&client.ns, last, 80, 5).contains_key("<failed>"));

    // One of them deleted: its chains go (each one jumps to the next), the rest stay.
    let gone = &lbs[50];
    let (s, v) = lab.api(
        "DELETE",
        &format!("/v2/lbaas/loadbalancers/{gone}?cascade=true"),
        None,
    );
    assert_eq!(s, 204, "{v}");
    wait_for("its chains to go", Duration::from_secs(10), || {
        count(&client.ns, &vips[50], 80, 1).contains_key("<failed>")
    });
    let left = balancing_state(lab, 0);
    assert_eq!(left.matches("chain svc-").count(), 99, "{left}");
    assert!(!count(&client.ns, last, 80, 5).contains_key("<failed>"));
}
