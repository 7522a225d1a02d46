//! L3 in the lab, side by side in one run (rounds interleaved A B C / C B A): TCP throughput
//! VM -> VM across two nodes on one subnet, VM -> VM across the same two nodes routed between
//! two subnets (the distributed router on the source node), and outside host -> VM through a
//! floating IP (NATed on the VM's node); then the time from associating a floating IP
//! (`PUT /v2.0/floatingips/{id}`) to the first echo reply the outside host gets through it
//! (pinging every 2 ms). Needs root and iperf3.
//! `cargo bench -p isthmus --bench routing [-- ROUNDS SECONDS ASSOCIATIONS]`

#[allow(dead_code)]
mod support;

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use isthmus_lab::{Daemon, Lab, Netns, PUBLIC_MAPPING};
use serde_json::{json, Value};
use support::{cloud, iperf, median};

fn post(lab: &Lab, path: &str, body: Value) -> Value {
    let (s, v) = lab.api("POST", path, Some(&body));
    assert_eq!(s, 201, "POST {path}: {v}");
    v
}

fn wait(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if check() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("timed out waiting for {what}");
}

fn pings(from: &Netns, to: &str) -> bool {
    from.exec("ping", &["-c", "1", "-W", "1", to]).is_ok()
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// Associates `fip` with `port` while the outside host pings it every 2 ms; the time from the
/// request to the first reply, in ms.
fn association_latency(lab: &Lab, outside: &Netns, fip: &str, address: &str, port: &str) -> f64 {
    let mut ping = outside
        .command("ping")
        .args(["-D", "-n", "-i", "0.002", "-W", "1", address])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = ping.stdout.take().unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let start = unix_now();
    let (s, v) = lab.api(
        "PUT",
        &format!("/v2.0/floatingips/{fip}"),
        Some(&json!({"floatingip": {"port_id": port}})),
    );
    assert_eq!(s, 200, "{v}");
    let first = BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .filter(|l| l.contains("bytes from"))
        .find_map(|l| l.strip_prefix('[')?.split(']').next()?.parse::<f64>().ok())
        .expect("a reply");
    let _ = ping.kill();
    let _ = ping.wait();
    let (s, v) = lab.api(
        "PUT",
        &format!("/v2.0/floatingips/{fip}"),
        Some(&json!({"floatingip": {"port_id": null}})),
    );
    assert_eq!(s, 200, "{v}");
    wait("the floating IP to go", || !pings(outside, address));
    (first - start) * 1000.0
}

fn main() {
    let mut args = std::env::args().skip(1).filter(|a| !a.starts_with('-'));
    let rounds: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(4);
    let seconds: u32 = args.next().and_then(|a| a.parse().ok()).unwrap_or(5);
    let associations: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(7);
    let cloud = cloud("routing", 2, &["--physnet", PUBLIC_MAPPING]);
    let lab = &cloud.lab;
    wait("agents", || {
        lab.api("GET", "/v2.0/agents", None).1["agents"]
            .as_array()
            .is_some_and(|a| a.len() == 2)
    });

    let ext = lab.create_public_network().expect("external network");
    let mut nets = Vec::new();
    for cidr in ["10.1.0.0/24", "10.2.0.0/24"] {
        let net = post(lab, "/v2.0/networks", json!({"network": {"name": cidr}}))["network"]["id"]
            .as_str()
            .unwrap()
            .to_owned();
        let sub = post(
            lab,
            "/v2.0/subnets",
            json!({"subnet": {"network_id": net, "ip_version": 4, "cidr": cidr}}),
        )["subnet"]["id"]
            .as_str()
            .unwrap()
            .to_owned();
        nets.push((net, sub));
    }
    let router = post(
        lab,
        "/v2.0/routers",
        json!({"router": {"name": "perf", "external_gateway_info": {"network_id": ext}}}),
    )["router"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    for (_, sub) in &nets {
        let (s, v) = lab.api(
            "PUT",
            &format!("/v2.0/routers/{router}/add_router_interface"),
            Some(&json!({"subnet_id": sub})),
        );
        assert_eq!(s, 200, "{v}");
    }
    // a1 on node 1 in A; a2 on node 2 in A (same subnet); b2 on node 2 in B (routed).
    let mut vms = Vec::new();
    let mut ports = Vec::new();
    for (node, net, gateway) in [
        (0, &nets[0].0, "10.1.0.1"),
        (1, &nets[0].0, "10.1.0.1"),
        (1, &nets[1].0, "10.2.0.1"),
    ] {
        let p = post(
            lab,
            "/v2.0/ports",
            json!({"port": {"network_id": net, "binding:host_id": format!("node{}", node + 1)}}),
        )["port"]
            .clone();
        let ip = p["fixed_ips"][0]["ip_address"].as_str().unwrap().to_owned();
        let vm = lab
            .add_vm_for_port(node, &p, 24, Some(gateway), 1450)
            .unwrap();
        vms.push((vm, ip));
        ports.push(p);
    }
    let group = ports[0]["security_groups"][0].as_str().unwrap().to_owned();
    for protocol in ["tcp", "icmp"] {
        post(
            lab,
            "/v2.0/security-group-rules",
            json!({"security_group_rule": {"security_group_id": group, "direction": "ingress",
            "ethertype": "IPv4", "protocol": protocol, "remote_ip_prefix": "0.0.0.0/0"}}),
        );
    }
    let outside = lab.add_outside_host("172.24.4.200/24").unwrap();
    let fip = post(
        lab,
        "/v2.0/floatingips",
        json!({"floatingip": {"floating_network_id": ext, "port_id": ports[1]["id"]}}),
    )["floatingip"]["floating_ip_address"]
        .as_str()
        .unwrap()
        .to_owned();
    let (a1, a2, b2) = (&vms[0], &vms[1], &vms[2]);
    wait("same-subnet connectivity", || pings(&a1.0.ns, &a2.1));
    wait("routed connectivity", || pings(&a1.0.ns, &b2.1));
    wait("floating IP connectivity", || pings(&outside, &fip));
    let _servers: Vec<Daemon> = [a2, b2]
        .iter()
        .map(|vm| {
            Daemon(
                vm.0.ns
                    .command("iperf3")
                    .args(["-s"])
                    .stdout(Stdio::null())
                    .spawn()
                    .unwrap(),
            )
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));

    let (mut same, mut routed, mut floating, mut ratios) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds {
        let mut run = [
            (0, &a1.0.ns, a2.1.as_str()),
            (1, &a1.0.ns, b2.1.as_str()),
            (2, &outside, fip.as_str()),
        ];
        if round % 2 == 1 {
            run.reverse();
        }
        let mut got = [0.0; 3];
        for (i, client, server) in run {
            got[i] = iperf(client, server, seconds);
        }
        println!(
            "round {round}: same subnet {:.2} Gbps, routed {:.2} Gbps, floating IP from outside {:.2} Gbps, routed/same {:.3}",
            got[0], got[1], got[2], got[1] / got[0]
        );
        same.push(got[0]);
        routed.push(got[1]);
        floating.push(got[2]);
        ratios.push(got[1] / got[0]);
    }
    println!(
        "VM->VM across nodes, 1 stream, {seconds} s x {rounds} rounds: same subnet {:.2} Gbps, routed {:.2} Gbps, median routed/same {:.3} (target >= 0.9); floating IP from the outside host {:.2} Gbps",
        median(same),
        median(routed),
        median(ratios),
        median(floating)
    );

    // A second floating IP, associated and disassociated with b2 (node 2) over and over.
    let (s, v) = lab.api(
        "POST",
        "/v2.0/floatingips",
        Some(&json!({"floatingip": {"floating_network_id": ext}})),
    );
    assert_eq!(s, 201, "{v}");
    let (id, address) = (
        v["floatingip"]["id"].as_str().unwrap().to_owned(),
        v["floatingip"]["floating_ip_address"]
            .as_str()
            .unwrap()
            .to_owned(),
    );
    let port = ports[2]["id"].as_str().unwrap().to_owned();
    let latencies: Vec<f64> = (0..associations)
        .map(|i| {
            let ms = association_latency(lab, &outside, &id, &address, &port);
            println!("association {i}: first reply from outside after {ms:.1} ms");
            ms
        })
        .collect();
    let mut sorted = latencies.clone();
    sorted.sort_by(|a, b| a.partial_cmp(b).unwrap());
    println!(
        "floating ip set --port -> first reply from outside: median {:.1} ms, max {:.1} ms over {associations} (target < 100 ms)",
        median(latencies),
        sorted.last().copied().unwrap_or_default()
    );
}
