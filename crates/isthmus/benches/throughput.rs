//! VM <-> VM TCP throughput across two nodes over VXLAN: ports with Isthmus security groups
//! (anti-spoofing + stateful chains, default group) against ports with port security off on
//! another network of the same nodes (same overlay; its bridges skip netfilter), interleaved
//! A B B A over rounds. Needs root and iperf3.
//! `cargo bench -p isthmus --bench throughput [-- ROUNDS SECONDS]`

#[allow(dead_code)]
mod support;

use std::process::Stdio;
use std::time::Duration;

use isthmus_lab::Daemon;
use serde_json::json;
use support::{cloud, iperf, median};

fn main() {
    let mut args = std::env::args().skip(1).filter(|a| !a.starts_with('-'));
    let rounds: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(4);
    let seconds: u32 = args.next().and_then(|a| a.parse().ok()).unwrap_or(5);
    let cloud = cloud("throughput", 2, &[]);
    let lab = &cloud.lab;
    let network = |name: &str, cidr: &str| {
        let (_, net) = lab.api(
            "POST",
            "/v2.0/networks",
            Some(&json!({"network": {"name": name}})),
        );
        let id = net["network"]["id"].as_str().unwrap().to_owned();
        lab.api(
            "POST",
            "/v2.0/subnets",
            Some(&json!({"subnet": {"network_id": id, "ip_version": 4, "cidr": cidr}})),
        );
        id
    };
    let guarded = network("perf", "192.168.60.0/24");
    let open = network("perf-open", "192.168.61.0/24");
    let mut vms = Vec::new();
    let mut ips = Vec::new();
    // guarded pair (default group: members talk freely, statefully), then an open pair.
    for (node, security) in [(0, true), (1, true), (0, false), (1, false)] {
        let net_id = if security { &guarded } else { &open };
        let mut port =
            json!({"network_id": net_id, "binding:host_id": format!("node{}", node + 1)});
        if !security {
            port["port_security_enabled"] = json!(false);
            port["security_groups"] = json!([]);
        }
        let (s, p) = lab.api("POST", "/v2.0/ports", Some(&json!({ "port": port })));
        assert_eq!(s, 201, "{p}");
        let p = &p["port"];
        let ip = p["fixed_ips"][0]["ip_address"].as_str().unwrap().to_owned();
        vms.push(lab.add_vm_for_port(node, p, 24, None, 1450).unwrap());
        ips.push(ip);
    }
    for (from, to) in [(0, 1), (2, 3)] {
        let mut ok = false;
        for _ in 0..200 {
            if vms[from]
                .ns
                .exec("ping", &["-c", "1", "-W", "1", &ips[to]])
                .is_ok()
            {
                ok = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        assert!(ok, "no connectivity {from} -> {to}");
    }
    let guarded_chains = lab.nodes[1]
        .ns
        .exec("nft", &["list", "map", "inet", "isthmus", "ingress"])
        .unwrap();
    assert!(
        guarded_chains.contains(&vms[1].tap),
        "the guarded server port has no security-group chain"
    );
    let _servers: Vec<Daemon> = [1, 3]
        .iter()
        .map(|i| {
            Daemon(
                vms[*i]
                    .ns
                    .command("iperf3")
                    .args(["-s"])
                    .stdout(Stdio::null())
                    .spawn()
                    .unwrap(),
            )
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let (mut sg, mut raw, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds {
        let (a, b) = if round % 2 == 0 {
            let a = iperf(&vms[0].ns, &ips[1], seconds);
            (a, iperf(&vms[2].ns, &ips[3], seconds))
        } else {
            let b = iperf(&vms[2].ns, &ips[3], seconds);
            (iperf(&vms[0].ns, &ips[1], seconds), b)
        };
        println!("round {round}: with security groups {a:.2} Gbps, port security off {b:.2} Gbps, ratio {:.3}", a / b);
        sg.push(a);
        raw.push(b);
        ratios.push(a / b);
    }
    println!(
        "VM<->VM across nodes over VXLAN, 1 stream, {seconds} s x {rounds} rounds (ABBA): security groups {:.2} Gbps, port security off {:.2} Gbps, median ratio {:.3}",
        median(sg),
        median(raw),
        median(ratios)
    );
}
