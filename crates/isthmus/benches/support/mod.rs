//! What the throughput benchmarks share: a lab with its controller and agents, an iperf3 run
//! and medians.

use std::process::{Child, Stdio};

use isthmus_lab::{unavailable, Daemon, Lab, Netns, Vm};
use serde_json::Value;

/// A process killed when dropped.
pub struct Killed(pub Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `program` in `ns` (output discarded), killed on drop.
pub fn spawn(ns: &Netns, program: &str, args: &[&str]) -> Killed {
    Killed(
        ns.command(program)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn"),
    )
}

/// A lab with the controller and one agent per node. Fields drop in order: the daemons stop
/// before the lab's namespaces go.
pub struct Cloud {
    _agents: Vec<Daemon>,
    _controller: Daemon,
    _data: tempfile::TempDir,
    /// The lab.
    pub lab: Lab,
}

/// Starts a [`Cloud`] of `nodes` nodes, agents started with `agent_args`; exits with the reason
/// when this machine cannot run `bench` (root and iproute2 needed).
pub fn cloud(bench: &str, nodes: usize, agent_args: &[&str]) -> Cloud {
    if let Some(why) = unavailable() {
        eprintln!("{bench} benchmark needs root and iproute2: {why}");
        std::process::exit(1);
    }
    let lab = Lab::new(nodes).expect("lab");
    let data = tempfile::tempdir().expect("data directory");
    let bin = env!("CARGO_BIN_EXE_isthmus");
    let controller = lab.start_controller(bin, data.path()).expect("controller");
    let agents = (0..nodes)
        .map(|i| lab.start_agent_with(bin, i, agent_args).expect("agent"))
        .collect();
    Cloud {
        _agents: agents,
        _controller: controller,
        _data: data,
        lab,
    }
}

/// Runs an iperf3 client (1 stream, `seconds`) in `client` against `server_ip`; Gbps received.
pub fn iperf(client: &Netns, server_ip: &str, seconds: u32) -> f64 {
    let out = client
        .exec(
            "iperf3",
            &["-c", server_ip, "-t", &seconds.to_string(), "-J"],
        )
        .expect("iperf3 client");
    let v: Value = serde_json::from_str(&out).expect("iperf3 JSON");
    v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .unwrap_or(0.0)
        / 1e9
}

/// The median (the mean of the middle two for an even count).
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// A VM on node `node` (0-based) with a new port on `net` of project `project` (IPv4 only, a
/// /16, routed by `gateway` if given); the VM and its address.
pub fn vm(
    lab: &Lab,
    net: &str,
    project: &str,
    node: usize,
    name: &str,
    gateway: Option<&str>,
) -> (Vm, String) {
    let (s, p) = lab.api(
        "POST",
        "/v2.0/ports",
        Some(
            &serde_json::json!({"port": {"network_id": net, "project_id": project, "name": name,
                                          "binding:host_id": format!("node{}", node + 1)}}),
        ),
    );
    assert_eq!(s, 201, "{p}");
    let p = &p["port"];
    let ip = p["fixed_ips"][0]["ip_address"].as_str().unwrap().to_owned();
    let vm = lab.add_vm_for_port(node, p, 16, gateway, 1450).unwrap();
    for key in ["all", "default"] {
        vm.ns
            .exec(
                "sysctl",
                &["-qw", &format!("net.ipv6.conf.{key}.disable_ipv6=1")],
            )
            .unwrap();
    }
    (vm, ip)
}
