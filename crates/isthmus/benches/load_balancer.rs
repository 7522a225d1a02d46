//! Load balancers, measured in a lab of 3 nodes with the production shape (agents watching,
//! security groups on): create -> first connection, one member added at 10 and at 1,000 load
//! balancers (applied on every node), and VIP against direct throughput and connection rate.
//! The lab is built here; `bench/lb.py` times everything with one clock.
//! Run as root: `cargo bench -p isthmus --bench load_balancer [-- SAMPLES ROUNDS SECONDS SCALE]`.

#[allow(dead_code)]
mod support;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use isthmus_lab::CONTROLLER_ADDR;
use serde_json::json;
use support::{cloud, spawn};

const BACKEND: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/lb/backend.py");
const DRIVER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../bench/lb.py");

fn main() {
    let mut args = std::env::args().skip(1).filter(|a| !a.starts_with('-'));
    let samples: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(20);
    let rounds: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(3);
    let seconds: u32 = args.next().and_then(|a| a.parse().ok()).unwrap_or(5);
    let scale: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(1000);
    let cloud = cloud("load_balancer", 3, &[]);
    let lab = &cloud.lab;
    let (_, net) = lab.api(
        "POST",
        "/v2.0/networks",
        Some(&json!({"network": {"name": "lb-bench", "project_id": "bench"}})),
    );
    let net = net["network"]["id"].as_str().unwrap().to_owned();
    let (_, sub) = lab.api(
        "POST",
        "/v2.0/subnets",
        Some(
            &json!({"subnet": {"network_id": net, "ip_version": 4, "cidr": "10.80.0.0/16",
                               "project_id": "bench"}}),
        ),
    );
    let sub = sub["subnet"]["id"].as_str().unwrap().to_owned();
    let vm = |node: usize, name: &str| support::vm(lab, &net, "bench", node, name, None);
    let clients: Vec<_> = (0..3).map(|n| vm(n, &format!("client{n}")).0).collect();
    // The project's default group (made with its first port) lets the members' ports in.
    let (_, groups) = lab.api(
        "GET",
        "/v2.0/security-groups?name=default&project_id=bench",
        None,
    );
    let group = groups["security_groups"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    for port in [8080, 5201] {
        let (s, r) = lab.api(
            "POST",
            "/v2.0/security-group-rules",
            Some(
                &json!({"security_group_rule": {"security_group_id": group, "direction": "ingress",
                "protocol": "tcp", "port_range_min": port, "port_range_max": port,
                "remote_ip_prefix": "0.0.0.0/0"}}),
            ),
        );
        assert_eq!(s, 201, "{r}");
    }
    let mut servers = Vec::new();
    let mut members = Vec::new();
    for (node, name) in [(1, "m1"), (2, "m2"), (1, "m3"), (2, "spare")] {
        let (server, ip) = vm(node, name);
        servers.push(spawn(&server.ns, "python3", &[BACKEND, name, "8080"]));
        if name == "m1" {
            servers.push(spawn(&server.ns, "iperf3", &["-s"]));
        }
        members.push((server, ip));
    }
    std::thread::sleep(Duration::from_secs(2));
    let spec = json!({
        "fabric": lab.fabric.name(),
        "controller": CONTROLLER_ADDR,
        "subnet": sub,
        "clients": clients.iter().map(|c| c.ns.name()).collect::<Vec<_>>(),
        "members": members[..3].iter().map(|(_, ip)| ip.clone()).collect::<Vec<_>>(),
        "spare": members[3].1,
        "iperf_server": members[0].1,
        "samples": samples,
        "scales": [10, scale],
        "rounds": rounds,
        "seconds": seconds,
    });
    let mut driver = Command::new("python3")
        .arg(DRIVER)
        .stdin(Stdio::piped())
        .spawn()
        .expect("python3");
    driver
        .stdin
        .take()
        .unwrap()
        .write_all(spec.to_string().as_bytes())
        .unwrap();
    let status = driver.wait().unwrap();
    drop(servers);
    assert!(status.success(), "bench/lb.py failed");
}
