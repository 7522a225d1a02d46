//! Controller failover: one agent given two controllers (sharing an etcd in the lab's fabric);
//! the controller it watches is killed with SIGKILL, KILLS times (then restarted). Reported:
//! time from the kill until the agent has applied a change made through the other controller
//! (a port bound to another node, whose MAC reaches the agent's VXLAN forwarding table),
//! p50/p99. Default agent settings. Root and Debian's etcd-server needed.
//! `cargo bench -p isthmus --bench failover [-- KILLS]` (default 10).

use std::process::Stdio;
use std::time::{Duration, Instant};

use isthmus_lab::{unavailable, Daemon, Lab};
use serde_json::json;

const ADDRS: [&str; 2] = ["10.251.0.254:9696", "10.251.0.254:9697"];

fn controller(lab: &Lab, listen: &str, data: &std::path::Path) -> Daemon {
    let bin = env!("CARGO_BIN_EXE_isthmus");
    lab.start_controller_at(
        bin,
        listen,
        data,
        &[
            "--auth",
            "noauth",
            "--store",
            "etcd",
            "--etcd-endpoints",
            "http://127.0.0.1:23790",
        ],
    )
    .expect("controller")
}

fn percentile(mut v: Vec<f64>, p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn main() {
    if let Some(why) = unavailable() {
        eprintln!("failover benchmark needs root and iproute2: {why}");
        std::process::exit(1);
    }
    let kills: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(10);
    let lab = Lab::new(2).expect("lab");
    let dir = tempfile::tempdir().expect("temp dir");
    let _etcd = Daemon(
        lab.fabric
            .command("etcd")
            .arg(format!("--data-dir={}", dir.path().join("etcd").display()))
            .arg("--listen-client-urls=http://127.0.0.1:23790")
            .arg("--advertise-client-urls=http://127.0.0.1:23790")
            .arg("--listen-peer-urls=http://127.0.0.1:23800")
            .arg("--log-level=error")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("etcd (Debian's etcd-server)"),
    );
    let healthy = || {
        lab.fabric
            .exec("curl", &["-s", "-m", "1", "http://127.0.0.1:23790/health"])
            .is_ok_and(|o| o.contains("\"health\":\"true\""))
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while !healthy() {
        assert!(Instant::now() < deadline, "etcd did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    let data = |i: usize| dir.path().join(format!("c{i}"));
    let mut controllers = [
        Some(controller(&lab, ADDRS[0], &data(0))),
        Some(controller(&lab, ADDRS[1], &data(1))),
    ];
    let both = format!("http://{},http://{}", ADDRS[0], ADDRS[1]);
    let bin = env!("CARGO_BIN_EXE_isthmus");
    let _agent = lab
        .start_agent_with(bin, 0, &["--controller", &both])
        .expect("agent");
    let other = &lab.nodes[1];
    let (s, _) = lab.api(
        "POST",
        "/isthmus/v1/nodes",
        Some(&json!({"node": {"name": other.name, "tunnel_ip": other.underlay_ip.to_string()}})),
    );
    assert_eq!(s, 201);
    let (_, net) = lab.api(
        "POST",
        "/v2.0/networks",
        Some(&json!({"network": {"name": "failover"}})),
    );
    let net_id = net["network"]["id"].as_str().unwrap().to_owned();
    let vni = net["network"]["provider:segmentation_id"].as_u64().unwrap();
    lab.api(
        "POST",
        "/v2.0/subnets",
        Some(
            &json!({"subnet": {"network_id": net_id, "ip_version": 4, "cidr": "10.70.0.0/16",
                                "enable_dhcp": false}}),
        ),
    );
    let (_, local) = lab.api(
        "POST",
        "/v2.0/ports",
        Some(
            &json!({"port": {"network_id": net_id, "binding:host_id": lab.nodes[0].name,
                              "port_security_enabled": false}}),
        ),
    );
    let _vm = lab
        .add_vm_for_port(0, &local["port"], 16, None, 1450)
        .expect("vm");
    let forwards = |mac: &str| {
        lab.nodes[0]
            .ns
            .exec("bridge", &["fdb", "show", "dev", &format!("vxlan-{vni}")])
            .is_ok_and(|out| out.contains(mac))
    };
    let remote_port = |at: &str| {
        let (s, p) = lab.api_at(
            at,
            "POST",
            "/v2.0/ports",
            Some(
                &json!({"port": {"network_id": net_id, "binding:host_id": other.name,
                                  "port_security_enabled": false}}),
            ),
            &[],
        );
        assert_eq!(s, 201, "{p}");
        p["port"]["mac_address"].as_str().unwrap().to_owned()
    };
    // The agent starts on the first controller.
    let mac = remote_port(ADDRS[0]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !forwards(&mac) {
        assert!(
            Instant::now() < deadline,
            "the agent never wired the network"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut times = Vec::new();
    let mut current = 0;
    for round in 0..kills {
        if let Some(mut killed) = controllers[current].take() {
            let _ = killed.0.kill();
            let _ = killed.0.wait();
        }
        let at = Instant::now();
        let next = 1 - current;
        let mac = remote_port(ADDRS[next]);
        let deadline = at + Duration::from_secs(60);
        while !forwards(&mac) {
            assert!(
                Instant::now() < deadline,
                "round {round}: the agent never followed"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        let took = at.elapsed().as_secs_f64() * 1000.0;
        println!("  kill {round}: watching again and applied in {took:.0} ms");
        times.push(took);
        controllers[current] = Some(controller(&lab, ADDRS[current], &data(current)));
        current = next;
    }
    println!(
        "{}",
        json!({"kills": kills, "p50_ms": percentile(times.clone(), 0.5),
               "p99_ms": percentile(times.clone(), 0.99), "max_ms": percentile(times, 1.0)})
    );
}
