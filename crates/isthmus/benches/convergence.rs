//! Convergence: time from the API's 201 for a new port to its forwarding entry and its address
//! in the security-group set (the default group admits its own members, so every node with a
//! port in it holds the set) being in place on every other node, and its tap — created in the
//! port's node right after the 201, as a hypervisor would — attached to the network's bridge,
//! with a controller and 10 agents in a lab.
//! Run as root: `cargo bench -p isthmus --bench convergence [-- SAMPLES]`.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use isthmus_lab::{unavailable, Daemon, Lab};
use serde_json::json;

const NODES: usize = 10;

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn main() {
    if let Some(why) = unavailable() {
        eprintln!("convergence benchmark needs root and iproute2: {why}");
        std::process::exit(1);
    }
    let samples: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(100);
    let lab = Lab::new(NODES).expect("lab");
    let data = tempfile::tempdir().unwrap();
    let bin = env!("CARGO_BIN_EXE_isthmus");
    let _controller = lab.start_controller(bin, data.path()).expect("controller");
    let _agents: Vec<Daemon> = (0..NODES)
        .map(|i| lab.start_agent(bin, i).expect("agent"))
        .collect();
    let (_, net) = lab.api(
        "POST",
        "/v2.0/networks",
        Some(&json!({"network": {"name": "bench"}})),
    );
    let net_id = net["network"]["id"].as_str().unwrap().to_owned();
    lab.api(
        "POST",
        "/v2.0/subnets",
        Some(&json!({"subnet": {"network_id": net_id, "ip_version": 4, "cidr": "10.90.0.0/16"}})),
    );

    // When each node saw each MAC appear in its FDB.
    let seen: Arc<Mutex<HashMap<(usize, String), Instant>>> = Arc::default();
    let mut monitors = Vec::new();
    for (i, node) in lab.nodes.iter().enumerate() {
        let mut child = node
            .ns
            .command("bridge")
            .args(["monitor", "fdb"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let fdb_seen = seen.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line.starts_with("Deleted") {
                    continue;
                }
                if let Some(mac) = line.split_whitespace().next() {
                    fdb_seen
                        .lock()
                        .unwrap()
                        .entry((i, mac.to_owned()))
                        .or_insert_with(Instant::now);
                }
            }
        });
        monitors.push(Daemon(child));
        // Set elements, keyed by address: "add element inet isthmus rg4_... { 10.90.0.5 }".
        let mut child = node
            .ns
            .command("nft")
            .args(["monitor"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let set_seen = seen.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if !line.starts_with("add element inet isthmus rg4_") {
                    continue;
                }
                let address = line
                    .rsplit('{')
                    .next()
                    .unwrap_or("")
                    .trim_end_matches('}')
                    .trim();
                set_seen
                    .lock()
                    .unwrap()
                    .entry((i, format!("set:{address}")))
                    .or_insert_with(Instant::now);
            }
        });
        monitors.push(Daemon(child));
        // Taps attached: "N: tapXXXX@...: ... master brq..." once the agent plugs them.
        let mut child = node
            .ns
            .command("ip")
            .args(["-o", "monitor", "link"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let tap_seen = seen.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line.starts_with("Deleted") || !line.contains(" master brq") {
                    continue;
                }
                if let Some(name) = line.split(": ").nth(1) {
                    let tap = name.split('@').next().unwrap_or(name).to_owned();
                    tap_seen
                        .lock()
                        .unwrap()
                        .entry((i, format!("tap:{tap}")))
                        .or_insert_with(Instant::now);
                }
            }
        });
        monitors.push(Daemon(child));
    }
    // Every node hosts the network with a port in the default group (one anchor port each), so
    // every node needs every forwarding entry and every member address.
    for node in &lab.nodes {
        lab.api(
            "POST",
            "/v2.0/ports",
            Some(&json!({"port": {"network_id": net_id, "binding:host_id": node.name}})),
        );
    }
    std::thread::sleep(Duration::from_secs(2));

    let mut converge = Vec::new();
    let mut fdb_only = Vec::new();
    for i in 0..samples {
        let host = i % NODES;
        let (status, port) = lab.api(
            "POST",
            "/v2.0/ports",
            Some(&json!({"port": {"network_id": net_id, "binding:host_id": lab.nodes[host].name}})),
        );
        let acked = Instant::now();
        assert_eq!(status, 201, "{port}");
        let mac = port["port"]["mac_address"].as_str().unwrap().to_owned();
        let member = format!(
            "set:{}",
            port["port"]["fixed_ips"][0]["ip_address"].as_str().unwrap()
        );
        let tap = isthmus_lab::tap_name(port["port"]["id"].as_str().unwrap());
        lab.nodes[host]
            .ns
            .ip(&[
                "link",
                "add",
                &tap,
                "type",
                "veth",
                "peer",
                "name",
                &format!("p{}", &tap[3..]),
            ])
            .unwrap();
        let tap_key = format!("tap:{tap}");
        let deadline = acked + Duration::from_secs(10);
        loop {
            let done = {
                let seen = seen.lock().unwrap();
                let times: Vec<Instant> = (0..NODES)
                    .filter(|n| *n != host)
                    .flat_map(|n| [seen.get(&(n, mac.clone())), seen.get(&(n, member.clone()))])
                    .chain([seen.get(&(host, tap_key.clone()))])
                    .flatten()
                    .copied()
                    .collect();
                (times.len() == 2 * (NODES - 1) + 1).then(|| times.into_iter().max().unwrap())
            };
            if let Some(last) = done {
                converge.push(last.saturating_duration_since(acked).as_secs_f64() * 1000.0);
                let seen = seen.lock().unwrap();
                let fdb_last = (0..NODES)
                    .filter(|n| *n != host)
                    .filter_map(|n| seen.get(&(n, mac.clone())).copied())
                    .max()
                    .unwrap();
                fdb_only.push(fdb_last.saturating_duration_since(acked).as_secs_f64() * 1000.0);
                break;
            }
            assert!(
                Instant::now() < deadline,
                "port {i} did not converge within 10 s"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    converge.sort_by(|a, b| a.partial_cmp(b).unwrap());
    fdb_only.sort_by(|a, b| a.partial_cmp(b).unwrap());
    println!(
        "  of which FDB entry alone: p50 {:.1} ms  p99 {:.1} ms",
        percentile(&fdb_only, 0.5),
        percentile(&fdb_only, 0.99)
    );
    println!(
        "convergence, API 201 -> FDB entry and security-group set element on all {} other nodes and tap attached on its own ({} agents, {} samples): p50 {:.1} ms  p90 {:.1} ms  p99 {:.1} ms  max {:.1} ms",
        NODES - 1,
        NODES,
        converge.len(),
        percentile(&converge, 0.5),
        percentile(&converge, 0.9),
        percentile(&converge, 0.99),
        converge.last().unwrap()
    );
}
