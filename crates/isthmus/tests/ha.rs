//! High availability in the lab: two controllers on a three-member etcd cluster (Debian's
//! etcd, in the fabric), agents given both controllers, two VMs pinging every 10 ms.
//! - a create storm through both controllers, one killed with SIGKILL mid-way: every write
//!   acknowledged is there, the agents watch the other controller within 5 s, no ping lost;
//! - a partition (the agents' controller SIGSTOPped): they find the watch silent within three
//!   bookmark intervals and move on, the kernel untouched meanwhile;
//! - one etcd member down: writes go on; two down: the API answers 503 in Neutron's format
//!   within 2 s; one back: writes go on.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod cloud;

use cloud::{shared_network, wait_for, BIN};
use isthmus_lab::{Daemon, Lab, Netns};
use serde_json::json;

const A: &str = "10.251.0.254:9696";
const B: &str = "10.251.0.254:9697";

/// One etcd member in the fabric, on loopback ports of its own.
struct Member {
    name: String,
    dir: std::path::PathBuf,
    client: String,
    peer: String,
    process: Option<Child>,
}

fn etcd_cluster(fabric: &Netns, dir: &std::path::Path) -> Vec<Member> {
    let members: Vec<Member> = (0..3)
        .map(|i| Member {
            name: format!("m{i}"),
            dir: dir.join(format!("m{i}")),
            client: format!("http://127.0.0.1:{}", 23790 + i),
            peer: format!("http://127.0.0.1:{}", 23800 + i),
            process: None,
        })
        .collect();
    let cluster = members
        .iter()
        .map(|m| format!("{}={}", m.name, m.peer))
        .collect::<Vec<_>>()
        .join(",");
    let mut members = members;
    for m in &mut members {
        start_member(fabric, m, &cluster);
    }
    wait_for("a healthy etcd cluster", Duration::from_secs(30), || {
        members.iter().all(|m| healthy(fabric, &m.client))
    });
    members
}

fn start_member(fabric: &Netns, m: &mut Member, cluster: &str) {
    let child = fabric
        .command("etcd")
        .arg(format!("--name={}", m.name))
        .arg(format!("--data-dir={}", m.dir.display()))
        .arg(format!("--listen-client-urls={}", m.client))
        .arg(format!("--advertise-client-urls={}", m.client))
        .arg(format!("--listen-peer-urls={}", m.peer))
        .arg(format!("--initial-advertise-peer-urls={}", m.peer))
        .arg(format!("--initial-cluster={cluster}"))
        .arg("--initial-cluster-token=isthmus-ha")
        .arg("--log-level=error")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("etcd (Debian's etcd-server)");
    m.process = Some(child);
}

fn stop_member(m: &mut Member) {
    if let Some(mut child) = m.process.take() {
        let _ = child.kill();
        let _ = child.wait();
    }
}

fn healthy(fabric: &Netns, client: &str) -> bool {
    fabric
        .exec("curl", &["-s", "-m", "2", &format!("{client}/health")])
        .is_ok_and(|out| out.contains("\"health\":\"true\""))
}

fn signal(child: &Child, sig: &str) {
    let status = Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

fn controller(lab: &Lab, listen: &str, data: &std::path::Path, endpoints: &str) -> Daemon {
    lab.start_controller_at(
        BIN,
        listen,
        data,
        &[
            "--auth",
            "noauth",
            "--store",
            "etcd",
            "--etcd-endpoints",
            endpoints,
        ],
    )
    .unwrap()
}

/// Whether node `node`'s VXLAN device of `vni` forwards `mac` (the agent has the port).
fn forwards(lab: &Lab, node: usize, vni: u64, mac: &str) -> bool {
    lab.nodes[node]
        .ns
        .exec("bridge", &["fdb", "show", "dev", &format!("vxlan-{vni}")])
        .is_ok_and(|out| out.contains(mac))
}

/// A port on `net` bound to node 2 through controller `at`; its MAC.
fn remote_port(lab: &Lab, at: &str, net: &str) -> String {
    let (s, p) = lab.api_at(
        at,
        "POST",
        "/v2.0/ports",
        Some(
            &json!({"port": {"network_id": net, "binding:host_id": "node2",
                              "port_security_enabled": false}}),
        ),
        &[],
    );
    assert_eq!(s, 201, "{p}");
    p["port"]["mac_address"].as_str().unwrap().to_owned()
}

#[test]
fn controllers_and_etcd_members_fail_without_losing_writes_or_packets() {
    if !isthmus_lab::runnable() {
        return;
    }
    let lab = Lab::new(2).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut etcd = etcd_cluster(&lab.fabric, dir.path());
    let endpoints = etcd
        .iter()
        .map(|m| m.client.clone())
        .collect::<Vec<_>>()
        .join(",");
    let mut a = controller(&lab, A, &dir.path().join("a"), &endpoints);
    let b = controller(&lab, B, &dir.path().join("b"), &endpoints);
    let both = format!("http://{A},http://{B}");
    let _agents: Vec<Daemon> = (0..2)
        .map(|i| {
            lab.start_agent_with(BIN, i, &["--controller", &both])
                .unwrap()
        })
        .collect();
    let (net, _) = shared_network(&lab, "ha", "192.168.60.0/24");
    let vni = lab.api("GET", &format!("/v2.0/networks/{net}"), None).1["network"]
        ["provider:segmentation_id"]
        .as_u64()
        .unwrap();
    let mut vms = Vec::new();
    for (node, host) in [(0, "node1"), (1, "node2")] {
        let (s, p) = lab.api(
            "POST",
            "/v2.0/ports",
            Some(&json!({"port": {"network_id": net, "binding:host_id": host,
                                  "port_security_enabled": false, "device_owner": "compute:nova"}})),
        );
        assert_eq!(s, 201, "{p}");
        vms.push(
            lab.add_vm_for_port(node, &p["port"], 24, None, 1450)
                .unwrap(),
        );
    }
    let peer = "192.168.60.3";
    wait_for(
        "the VMs to reach each other",
        Duration::from_secs(30),
        || {
            vms[0]
                .ns
                .exec("ping", &["-c", "1", "-W", "1", peer])
                .is_ok()
        },
    );
    let ping = vms[0]
        .ns
        .command("ping")
        .args(["-q", "-i", "0.01", "-W", "1", peer])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();

    // A create storm through both controllers; A killed mid-way.
    let acknowledged: Vec<String> = std::thread::scope(|scope| {
        let storms: Vec<_> = [A, B]
            .into_iter()
            .map(|at| {
                let (lab, net) = (&lab, &net);
                scope.spawn(move || {
                    let mut made = Vec::new();
                    let until = Instant::now() + Duration::from_secs(4);
                    while Instant::now() < until {
                        let (s, p) = lab.api_at(
                            at,
                            "POST",
                            "/v2.0/ports",
                            Some(&json!({"port": {"network_id": net,
                                                  "port_security_enabled": false}})),
                            &[],
                        );
                        if s == 201 {
                            made.push(p["port"]["id"].as_str().unwrap().to_owned());
                        }
                    }
                    made
                })
            })
            .collect();
        std::thread::sleep(Duration::from_secs(2));
        signal(&a.0, "-KILL");
        storms.into_iter().flat_map(|s| s.join().unwrap()).collect()
    });
    let killed = Instant::now();
    let _ = a.0.wait();
    assert!(
        acknowledged.len() > 20,
        "the storm made {}",
        acknowledged.len()
    );
    for id in &acknowledged {
        let (s, _) = lab.api_at(B, "GET", &format!("/v2.0/ports/{id}"), None, &[]);
        assert_eq!(s, 200, "acknowledged port {id} is lost");
    }
    // The agents follow B: a port made there reaches node 1's forwarding table.
    let mac = remote_port(&lab, B, &net);
    wait_for(
        "node 1 to follow controller B",
        Duration::from_secs(5),
        || forwards(&lab, 0, vni, &mac),
    );
    eprintln!(
        "agents followed B {:?} after A was killed",
        killed.elapsed()
    );

    // A back; B stops answering without closing anything (a partition): the agents find its
    // watch silent within three bookmark intervals and move to A.
    drop(a);
    let _a = controller(&lab, A, &dir.path().join("a"), &endpoints);
    let later: Vec<_> = (0..2)
        .map(|_| {
            let (s, p) = lab.api_at(
                B,
                "POST",
                "/v2.0/ports",
                Some(
                    &json!({"port": {"network_id": net, "binding:host_id": "node1",
                                      "port_security_enabled": false}}),
                ),
                &[],
            );
            assert_eq!(s, 201, "{p}");
            p["port"].clone()
        })
        .collect();
    let ip = |p: &serde_json::Value| p["fixed_ips"][0]["ip_address"].as_str().unwrap().to_owned();
    wait_for(
        "node 1 to have the new ports",
        Duration::from_secs(5),
        || {
            later
                .iter()
                .all(|p| forwards(&lab, 1, vni, p["mac_address"].as_str().unwrap()))
        },
    );
    signal(&b.0, "-STOP");
    let stopped = Instant::now();
    // Meanwhile the kernel side goes on without the controller: VMs plugged one after the
    // other are wired at once, though their status reports cannot get through.
    for p in &later {
        let vm = lab.add_vm_for_port(0, p, 24, None, 1450).unwrap();
        let plugged = Instant::now();
        wait_for(
            "a VM plugged while the controller hangs",
            Duration::from_secs(3),
            || {
                vms[0]
                    .ns
                    .exec("ping", &["-c", "1", "-W", "1", &ip(p)])
                    .is_ok()
            },
        );
        eprintln!(
            "VM plugged with the controller stopped: reachable in {:?}",
            plugged.elapsed()
        );
        vms.push(vm);
    }
    let mac = remote_port(&lab, A, &net);
    wait_for(
        "node 1 to move to controller A",
        Duration::from_secs(25),
        || forwards(&lab, 0, vni, &mac),
    );
    eprintln!("agents moved to A {:?} after B stopped", stopped.elapsed());
    signal(&b.0, "-CONT");

    // etcd: one member down, writes go on; two down, 503 within 2 s; one back, writes again.
    let create = |name: &str| {
        let started = Instant::now();
        let (s, v) = lab.api_at(
            A,
            "POST",
            "/v2.0/networks",
            Some(&json!({"network": {"name": name}})),
            &[],
        );
        (s, v, started.elapsed())
    };
    stop_member(&mut etcd[2]);
    wait_for(
        "a write with one etcd member down",
        Duration::from_secs(10),
        || create("one-down").0 == 201,
    );
    stop_member(&mut etcd[1]);
    let (s, v, took) = create("two-down");
    assert_eq!(s, 503, "{v}");
    assert_eq!(v["NeutronError"]["type"], "HTTPServiceUnavailable", "{v}");
    assert!(took < Duration::from_secs(2), "answered after {took:?}");
    let cluster = etcd
        .iter()
        .map(|m| format!("{}={}", m.name, m.peer))
        .collect::<Vec<_>>()
        .join(",");
    start_member(&lab.fabric, &mut etcd[1], &cluster);
    wait_for(
        "a write once quorum is back",
        Duration::from_secs(30),
        || create("back").0 == 201,
    );

    // Not one ping lost through all of it.
    signal(&ping, "-INT");
    let out = ping.wait_with_output().unwrap();
    let summary = String::from_utf8_lossy(&out.stdout);
    let line = summary
        .lines()
        .find(|l| l.contains("packets transmitted"))
        .unwrap_or_else(|| panic!("no ping summary: {summary}"));
    let counts: Vec<u64> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|n| n.parse().ok())
        .collect();
    eprintln!("ping: {line}");
    assert!(counts[0] > 1000, "{line}");
    assert_eq!(counts[0], counts[1], "pings lost: {line}");
    for m in &mut etcd {
        stop_member(m);
    }
}
