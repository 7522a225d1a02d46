//! Full resync: an agent starts on a node whose network has 10,000 ports on another node, all
//! (like the node's own port) under the project's default security group, as Neutron makes
//! them; time from process start to every forwarding entry being in the kernel, and to the
//! node's filter admitting every one of those ports (the default group's remote-group set
//! holding all their addresses). Repeated from an empty kernel each round. Run as root:
//! `cargo bench -p isthmus --bench resync [-- PORTS ROUNDS]`.

use std::time::{Duration, Instant};

use isthmus_lab::{unavailable, Lab};
use serde_json::json;

fn main() {
    if let Some(why) = unavailable() {
        eprintln!("resync benchmark needs root and iproute2: {why}");
        std::process::exit(1);
    }
    let mut args = std::env::args().skip(1).filter(|a| !a.starts_with('-'));
    let ports: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(10_000);
    let rounds: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(3);
    let lab = Lab::new(2).expect("lab");
    let data = tempfile::tempdir().unwrap();
    let bin = env!("CARGO_BIN_EXE_isthmus");
    let _controller = lab.start_controller(bin, data.path()).expect("controller");
    // An operator raises the project's port quota (Neutron's default is 500) for this many.
    let (s, _) = lab.api(
        "PUT",
        "/v2.0/quotas/fake_project_id",
        Some(&json!({"quota": {"port": 1_000_000}})),
    );
    assert_eq!(s, 200);
    let remote = &lab.nodes[1];
    let (s, _) = lab.api(
        "POST",
        "/isthmus/v1/nodes",
        Some(&json!({"node": {"name": remote.name, "tunnel_ip": remote.underlay_ip.to_string()}})),
    );
    assert_eq!(s, 201);
    let (_, net) = lab.api(
        "POST",
        "/v2.0/networks",
        Some(&json!({"network": {"name": "resync"}})),
    );
    let net_id = net["network"]["id"].as_str().unwrap().to_owned();
    let vni = net["network"]["provider:segmentation_id"].as_u64().unwrap();
    lab.api(
        "POST",
        "/v2.0/subnets",
        Some(&json!({"subnet": {"network_id": net_id, "ip_version": 4, "cidr": "10.64.0.0/16"}})),
    );
    let (_, local) = lab.api(
        "POST",
        "/v2.0/ports",
        Some(&json!({"port": {"network_id": net_id, "binding:host_id": lab.nodes[0].name}})),
    );
    let group = local["port"]["security_groups"][0]
        .as_str()
        .expect("the port is in the default group")
        .replace('-', "");
    // A VM on the port, so the node filters for it (and keeps its tap across rounds).
    let _vm = lab
        .add_vm_for_port(0, &local["port"], 16, None, 1450)
        .expect("vm");
    for _ in 0..ports.div_ceil(100) {
        let batch: Vec<_> = (0..100)
            .map(|_| json!({"network_id": net_id, "binding:host_id": remote.name}))
            .collect();
        let (s, v) = lab.api("POST", "/v2.0/ports", Some(&json!({ "ports": batch })));
        assert_eq!(s, 201, "{v}");
    }
    let want = ports.div_ceil(100) * 100 + 1; // every remote MAC plus the flood entry
                                              // Every port's address, its own included.
    let members = ports.div_ceil(100) * 100 + 1;
    let device = format!("vxlan-{vni}");
    let node = &lab.nodes[0];
    let set = format!("rg4_{group}");
    let admitted = || -> usize {
        node.ns
            .exec("nft", &["-j", "list", "set", "inet", "isthmus", &set])
            .ok()
            .and_then(|out| serde_json::from_str::<serde_json::Value>(&out).ok())
            .and_then(|v| {
                v["nftables"]
                    .as_array()?
                    .iter()
                    .find_map(|item| Some(item.get("set")?.get("elem")?.as_array()?.len()))
            })
            .unwrap_or(0)
    };
    let mut times = Vec::new();
    let mut filtered_times = Vec::new();
    for round in 0..rounds {
        // Start from an empty kernel.
        let _ = node.ns.ip(&["link", "del", &device]);
        let _ = node
            .ns
            .ip(&["link", "del", &format!("brq{}", &net_id[..11])]);
        let started = Instant::now();
        let agent = lab.start_agent(bin, 0).expect("agent");
        loop {
            let entries = node
                .ns
                .exec("bridge", &["fdb", "show", "dev", &device])
                .map(|out| out.lines().filter(|l| l.contains(" dst ")).count())
                .unwrap_or(0);
            if entries >= want {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "round {round}: {entries}/{want} entries after 60 s"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        let took = started.elapsed().as_secs_f64() * 1000.0;
        while admitted() < members {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "round {round}: {}/{members} addresses in {set} after 60 s",
                admitted()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        let filtered = started.elapsed().as_secs_f64() * 1000.0;
        println!(
            "round {round}: agent start -> {want} FDB entries in the kernel: {took:.0} ms; \
             -> the default group admitting all {members} ports: {filtered:.0} ms"
        );
        times.push(took);
        filtered_times.push(filtered);
        drop(agent);
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        v[v.len() / 2]
    };
    println!(
        "full resync, {} ports in the node's network, security groups on: median {:.0} ms to \
         forwarding, {:.0} ms to filtering, over {} rounds",
        ports,
        median(times),
        median(filtered_times),
        rounds
    );
}
