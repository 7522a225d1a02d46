//! Kubernetes Services, measured in a lab of 3 nodes with the production shape (the
//! controller's watcher on an API server double, agents watching, security groups on, default
//! pool sizes): Service created -> first connection through its ClusterIP (beside the same
//! load balancer made through the Octavia API), an endpoint added -> answered on every node,
//! and one Service added with N present, applied on every node. The lab is built here; `bench/k8s.py` times everything with one clock.
//! Run as root: `cargo bench -p isthmus --bench kubernetes [-- SAMPLES SCALE...]`.

#[path = "../tests/apiserver/mod.rs"]
mod apiserver;
#[allow(dead_code)]
mod support;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use isthmus_lab::{unavailable, Lab, CONTROLLER_ADDR};
use serde_json::json;
use support::spawn;

const BACKEND: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/lb/backend.py");
const DRIVER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../bench/k8s.py");
const APISERVER: &str = "10.251.0.254:6443";

fn main() {
    let mut args = std::env::args().skip(1).filter(|a| !a.starts_with('-'));
    let samples: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(20);
    let scales: Vec<usize> = args.filter_map(|a| a.parse().ok()).collect();
    let scales = if scales.is_empty() {
        vec![100, 1000]
    } else {
        scales
    };
    if let Some(why) = unavailable() {
        eprintln!("kubernetes benchmark needs root and iproute2: {why}");
        std::process::exit(1);
    }
    let lab = Lab::new(3).expect("lab");
    let k8s = apiserver::ApiServer::start(lab.fabric.listen_tcp(APISERVER).expect("listen"));
    let data = tempfile::tempdir().expect("data directory");
    let kubeconfig = data.path().join("kubeconfig");
    k8s.kubeconfig(&kubeconfig);
    let bin = env!("CARGO_BIN_EXE_isthmus");
    let controller = lab
        .start_controller_with(
            bin,
            data.path(),
            &[
                "--auth",
                "noauth",
                "--kubeconfig",
                kubeconfig.to_str().unwrap(),
                "--service-subnet",
                "service-cidr",
            ],
        )
        .expect("controller");
    let agents: Vec<_> = (0..3)
        .map(|i| lab.start_agent(bin, i).expect("agent"))
        .collect();

    let api = |path: &str, body: serde_json::Value| {
        let (s, v) = lab.api("POST", path, Some(&body));
        assert_eq!(s, 201, "{path}: {v}");
        v
    };
    let net = api(
        "/v2.0/networks",
        json!({"network": {"name": "members", "project_id": "bench"}}),
    );
    let net = net["network"]["id"].as_str().unwrap().to_owned();
    let sub = api(
        "/v2.0/subnets",
        json!({"subnet": {"network_id": net, "ip_version": 4, "cidr": "10.80.0.0/16",
                          "project_id": "bench"}}),
    );
    let services = api(
        "/v2.0/networks",
        json!({"network": {"name": "services", "project_id": "bench"}}),
    );
    let service_sub = api(
        "/v2.0/subnets",
        json!({"subnet": {"name": "service-cidr", "network_id": services["network"]["id"],
                          "ip_version": 4, "cidr": "10.96.0.0/16", "enable_dhcp": false,
                          "project_id": "bench"}}),
    );
    let router = api(
        "/v2.0/routers",
        json!({"router": {"name": "cluster", "project_id": "bench"}}),
    );
    let router = router["router"]["id"].as_str().unwrap().to_owned();
    for subnet in [&sub["subnet"]["id"], &service_sub["subnet"]["id"]] {
        let (s, v) = lab.api(
            "PUT",
            &format!("/v2.0/routers/{router}/add_router_interface"),
            Some(&json!({"subnet_id": subnet})),
        );
        assert_eq!(s, 200, "{v}");
    }
    let vm =
        |node: usize, name: &str| support::vm(&lab, &net, "bench", node, name, Some("10.80.0.1"));
    let clients: Vec<_> = (0..3).map(|n| vm(n, &format!("client{n}")).0).collect();
    let (_, groups) = lab.api(
        "GET",
        "/v2.0/security-groups?name=default&project_id=bench",
        None,
    );
    let group = groups["security_groups"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    api(
        "/v2.0/security-group-rules",
        json!({"security_group_rule": {"security_group_id": group, "direction": "ingress",
               "protocol": "tcp", "port_range_min": 8080, "port_range_max": 8080,
               "remote_ip_prefix": "0.0.0.0/0"}}),
    );
    let mut servers = Vec::new();
    let mut members = Vec::new();
    for (node, name) in [(1, "m1"), (2, "m2"), (1, "m3"), (2, "spare")] {
        let (server, ip) = vm(node, name);
        servers.push(spawn(&server.ns, "python3", &[BACKEND, name, "8080"]));
        members.push((server, ip));
    }
    std::thread::sleep(Duration::from_secs(2));
    let spec = json!({
        "fabric": lab.fabric.name(),
        "controller": CONTROLLER_ADDR,
        "apiserver": APISERVER,
        "service_subnet": service_sub["subnet"]["id"],
        "project": "bench",
        "clients": clients.iter().map(|c| c.ns.name()).collect::<Vec<_>>(),
        "members": members[..3].iter().map(|(_, ip)| ip.clone()).collect::<Vec<_>>(),
        "spare": members[3].1,
        "samples": samples,
        "scales": scales,
        "controller_pid": controller.0.id(),
        "agent_pids": agents.iter().map(|a| a.0.id()).collect::<Vec<_>>(),
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
    drop(agents);
    drop(controller);
    assert!(status.success(), "bench/k8s.py failed");
}
