//! One security-group change affecting many ports: 1,000 ports on one node share the project's
//! default group; a rule is added to (then removed from) the group through the API. Timed from
//! the API's 201 (204) to the nft transaction carrying it being committed on the node, seen by
//! `nft monitor` there. (The group's rules live in one chain pair shared by its ports, so the
//! transaction rewrites that chain only.) Run as root:
//! `cargo bench -p isthmus --bench sg_change [-- PORTS SAMPLES]`.

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use isthmus_lab::{unavailable, Daemon, Lab};
use serde_json::json;

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn main() {
    if let Some(why) = unavailable() {
        eprintln!("sg_change benchmark needs root and iproute2: {why}");
        std::process::exit(1);
    }
    let mut args = std::env::args().skip(1).filter(|a| !a.starts_with('-'));
    let ports: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(1000);
    let samples: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(10);
    let lab = Lab::new(1).expect("lab");
    let data = tempfile::tempdir().unwrap();
    let bin = env!("CARGO_BIN_EXE_isthmus");
    let _controller = lab.start_controller(bin, data.path()).expect("controller");
    let _agent = lab.start_agent(bin, 0).expect("agent");
    let (_, net) = lab.api(
        "POST",
        "/v2.0/networks",
        Some(&json!({"network": {"name": "bench"}})),
    );
    let net_id = net["network"]["id"].as_str().unwrap().to_owned();
    lab.api(
        "POST",
        "/v2.0/subnets",
        Some(&json!({"subnet": {"network_id": net_id, "ip_version": 4, "cidr": "10.91.0.0/16"}})),
    );
    // An operator raises the project's port quota (Neutron's default is 500) for this many.
    let (s, _) = lab.api(
        "PUT",
        "/v2.0/quotas/bench",
        Some(&json!({"quota": {"port": 1_000_000}})),
    );
    assert_eq!(s, 200);
    let body = json!({"ports": (0..ports).map(|_| json!({
        "network_id": net_id, "project_id": "bench", "binding:host_id": "node1"})).collect::<Vec<_>>()});
    let (s, answer) = lab.api("POST", "/v2.0/ports", Some(&body));
    assert_eq!(s, 201, "{answer}");
    let node = &lab.nodes[0].ns;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let chains = node
            .exec("nft", &["list", "table", "inet", "isthmus"])
            .unwrap_or_default();
        if chains.matches("chain ingress_").count() == ports {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the node never got {ports} ports' chains: {}",
            chains.matches("chain ingress_").count()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let (_, groups) = lab.api(
        "GET",
        "/v2.0/security-groups?project_id=bench&name=default",
        None,
    );
    let group = groups["security_groups"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();

    let (tx, rx) = mpsc::channel::<(String, Instant)>();
    let mut monitor = node
        .command("nft")
        .args(["monitor", "rules"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = monitor.stdout.take().unwrap();
    let _monitor = Daemon(monitor);
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send((line, Instant::now()));
        }
    });
    std::thread::sleep(Duration::from_millis(500));
    let wait = |needle: &str, from: Instant| -> f64 {
        loop {
            let (line, at) = rx
                .recv_timeout(Duration::from_secs(30))
                .expect("the change never reached the kernel");
            if line.contains(needle) {
                return at.saturating_duration_since(from).as_secs_f64() * 1000.0;
            }
        }
    };
    let (mut added, mut removed) = (Vec::new(), Vec::new());
    for i in 0..samples {
        let port = 20000 + i;
        let (s, rule) = lab.api("POST", "/v2.0/security-group-rules", Some(&json!({
            "security_group_rule": {"security_group_id": group, "direction": "ingress",
            "ethertype": "IPv4", "protocol": "tcp", "port_range_min": port, "port_range_max": port}})));
        let t = Instant::now();
        assert_eq!(s, 201, "{rule}");
        added.push(wait(&format!("dport {port} accept"), t));
        // Let the rest of that transaction's events drain.
        std::thread::sleep(Duration::from_millis(300));
        while rx.try_recv().is_ok() {}
        let id = rule["security_group_rule"]["id"].as_str().unwrap();
        let (s, _) = lab.api("DELETE", &format!("/v2.0/security-group-rules/{id}"), None);
        let t = Instant::now();
        assert_eq!(s, 204);
        // Removal rewrites the group's chain without the rule: its first new rule shows it.
        removed.push(wait("add rule inet isthmus sgi_", t));
        std::thread::sleep(Duration::from_millis(300));
        while rx.try_recv().is_ok() {}
    }
    for v in [&mut added, &mut removed] {
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    }
    println!(
        "security-group rule added, affecting {ports} ports on one node: API 201 -> committed: p50 {:.1} ms  max {:.1} ms ({samples} samples)",
        percentile(&added, 0.5),
        added.last().unwrap()
    );
    println!(
        "security-group rule removed, affecting {ports} ports: API 204 -> committed: p50 {:.1} ms  max {:.1} ms",
        percentile(&removed, 0.5),
        removed.last().unwrap()
    );
}
