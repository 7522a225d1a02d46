//! Trunks with a real guest (QEMU, TCG), in the production shape (agents watching, security
//! groups on, default pool size):
//! - throughput from the guest to a VM on another node, through a VLAN subport against the
//!   guest's untagged parent traffic over the same path (same guest, same peer node; rounds
//!   interleaved A B B A, iperf3 in the guest);
//! - nested pod wiring: `isthmus-cni` ADD in the guest until the pod pings a VM of its network
//!   on another node, for PODS pods, with the default subport pool and with `--pool-size 0`.
//!
//! Needs root, qemu-system-x86 and iperf3.
//! `cargo bench -p isthmus --bench trunk [-- ROUNDS SECONDS PODS]`

#[allow(dead_code)]
mod support;

use std::path::Path;
use std::time::Duration;

use isthmus_lab::guest::{self, Guest};
use isthmus_lab::Lab;
use serde_json::{json, Value};
use support::{cloud, median, spawn};

fn main() {
    let mut args = std::env::args().skip(1).filter(|a| !a.starts_with('-'));
    let rounds: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(4);
    let seconds: u32 = args.next().and_then(|a| a.parse().ok()).unwrap_or(5);
    let pods: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(20);
    if !guest::qemu_available() {
        eprintln!("the trunk benchmark needs qemu-system-x86");
        std::process::exit(1);
    }
    let image = guest::image(&Path::new(env!("CARGO_TARGET_TMPDIR")).join("guest")).unwrap();
    let iperf3 = which("iperf3").expect("the trunk benchmark needs iperf3");
    let plugin = Path::new(env!("CARGO_BIN_EXE_isthmus")).with_file_name("isthmus-cni");
    let files = guest::programs_with_libraries(&[&plugin, &iperf3]).unwrap();
    let files: Vec<(&Path, &str)> = files
        .iter()
        .map(|(h, g)| (h.as_path(), g.as_str()))
        .collect();

    let mut wiring = Vec::new();
    for (label, args) in [
        ("default pool (--pool-size 2)", &[][..]),
        ("no pool (--pool-size 0)", &["--pool-size", "0"][..]),
    ] {
        let cloud = cloud("trunk", 2, args);
        let mut setup = Setup::new(&cloud.lab, &image, &files);
        if wiring.is_empty() {
            throughput(&mut setup, rounds, seconds);
        }
        wiring.push((label, nested_wiring(&mut setup, pods)));
    }
    for (label, times) in &wiring {
        let mut sorted = times.clone();
        sorted.sort_by(f64::total_cmp);
        println!(
            "nested pod wiring, {label}: p50 {:.0} ms, min {:.0}, max {:.0} ({} pods, ADD in the guest until the pod pings a VM on another node)",
            median(times.clone()),
            sorted.first().copied().unwrap_or(0.0),
            sorted.last().copied().unwrap_or(0.0),
            times.len()
        );
    }
}

fn which(program: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(program))
        .find(|p| p.exists())
}

/// A guest on node 1 whose port is a trunk parent with one VLAN subport (101), and VMs on
/// node 2 on the parent's network and the subport's, each running an iperf3 server.
struct Setup<'a> {
    lab: &'a Lab,
    guest: Guest,
    parent_peer: String,
    subport_peer: String,
    pods_net: String,
    _servers: Vec<support::Killed>,
    _vms: Vec<isthmus_lab::Vm>,
    _console: tempfile::TempDir,
}

impl<'a> Setup<'a> {
    fn new(lab: &'a Lab, image: &guest::GuestImage, files: &[(&Path, &str)]) -> Setup<'a> {
        let project = "trunk-bench";
        let mut nets = Vec::new();
        for (name, cidr) in [("vms", "10.87.0.0/24"), ("pods", "10.88.0.0/24")] {
            let (_, net) = lab.api(
                "POST",
                "/v2.0/networks",
                Some(&json!({"network": {"name": name, "project_id": project}})),
            );
            let net = net["network"]["id"].as_str().unwrap().to_owned();
            lab.api(
                "POST",
                "/v2.0/subnets",
                Some(
                    &json!({"subnet": {"network_id": net, "ip_version": 4, "cidr": cidr,
                    "project_id": project}}),
                ),
            );
            nets.push(net);
        }
        let port = |net: &str, host: &str, extra: Value| {
            let mut body =
                json!({"network_id": net, "project_id": project, "binding:host_id": host});
            body.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            let (s, p) = lab.api("POST", "/v2.0/ports", Some(&json!({ "port": body })));
            assert_eq!(s, 201, "{p}");
            p["port"].clone()
        };
        let parent = port(
            &nets[0],
            "node1",
            json!({"device_owner": "compute:nova", "device_id": "7d0c1e2f-0000-4000-8000-00000000be01"}),
        );
        let sub = port(&nets[1], "", json!({}));
        let (_, groups) = lab.api(
            "GET",
            &format!("/v2.0/security-groups?name=default&project_id={project}"),
            None,
        );
        let group = groups["security_groups"][0]["id"]
            .as_str()
            .unwrap()
            .to_owned();
        for (protocol, port) in [("icmp", None), ("tcp", Some(5201))] {
            lab.api(
                "POST",
                "/v2.0/security-group-rules",
                Some(&json!({"security_group_rule": {"security_group_id": group,
                    "direction": "ingress", "protocol": protocol,
                    "port_range_min": port, "port_range_max": port}})),
            );
        }
        let (s, trunk) = lab.api(
            "POST",
            "/v2.0/trunks",
            Some(&json!({"trunk": {"port_id": parent["id"], "project_id": project,
                "sub_ports": [{"port_id": sub["id"], "segmentation_type": "vlan", "segmentation_id": 101}]}})),
        );
        assert_eq!(s, 201, "{trunk}");
        let peers: Vec<Value> = nets
            .iter()
            .map(|n| port(n, "node2", json!({"device_owner": "compute:nova"})))
            .collect();
        let vms: Vec<_> = peers
            .iter()
            .map(|p| lab.add_vm_for_port(1, p, 24, None, 1450).unwrap())
            .collect();
        let servers = vms
            .iter()
            .map(|vm| spawn(&vm.ns, "iperf3", &["-s"]))
            .collect();
        let ip = |p: &Value| p["fixed_ips"][0]["ip_address"].as_str().unwrap().to_owned();
        let (_, dhcp) = lab.api(
            "GET",
            &format!(
                "/v2.0/ports?network_id={}&device_owner=network:dhcp",
                nets[0]
            ),
            None,
        );
        let dhcp_ip = ip(&dhcp["ports"][0]);
        let console = tempfile::tempdir().unwrap();
        let mut guest = lab
            .boot_interactive_guest_with(0, &parent, image, &console.path().join("console"), files)
            .unwrap();
        for command in [
            format!("ip link set eth0 mtu 1450 && ip addr add {}/24 dev eth0", ip(&parent)),
            format!("ip route add 169.254.169.254 via {dhcp_ip}"),
            "ip link add link eth0 name eth0.101 type vlan id 101".to_owned(),
            format!(
                "ip link set eth0.101 address {} && ip addr add {}/24 dev eth0.101 && ip link set eth0.101 up",
                sub["mac_address"].as_str().unwrap(),
                ip(&sub)
            ),
            format!(
                "echo '{}' > /nested.json",
                json!({"cniVersion": "1.1.0", "name": "pods", "type": "isthmus",
                    "network": nets[1], "nested": {"interface": "eth0"}})
            ),
        ] {
            run(&mut guest, &command);
        }
        let (parent_peer, subport_peer) = (ip(&peers[0]), ip(&peers[1]));
        for peer in [&parent_peer, &subport_peer] {
            let reached = (0..30).any(|_| {
                guest
                    .run(&format!("ping -c 1 -W 1 {peer}"), Duration::from_secs(10))
                    .is_ok_and(|(_, status)| status == 0)
            });
            assert!(reached, "the guest cannot reach {peer}");
        }
        Setup {
            lab,
            guest,
            parent_peer,
            subport_peer,
            pods_net: nets[1].clone(),
            _servers: servers,
            _vms: vms,
            _console: console,
        }
    }
}

fn run(guest: &mut Guest, command: &str) -> String {
    let (out, status) = guest.run(command, Duration::from_secs(120)).unwrap();
    assert_eq!(status, 0, "guest: {command}\n{out}");
    out
}

/// Gbit/s received by an iperf3 client in the guest against `server` (its text summary: this
/// guest's iperf3 can stall writing `-J`). A run the emulated guest's iperf3 gives up on
/// (its control connection timing out) is run again, at most twice, and said.
fn guest_iperf(guest: &mut Guest, server: &str, seconds: u32) -> f64 {
    for attempt in 0..3 {
        let command = format!("/iperf3 -c {server} -t {seconds} -f m 2>&1");
        let (out, status) = guest.run(&command, Duration::from_secs(120)).unwrap();
        let rate = out
            .lines()
            .find(|l| l.trim_end().ends_with("receiver"))
            .and_then(|line| {
                let words: Vec<&str> = line.split_whitespace().collect();
                let at = words.iter().position(|w| *w == "Mbits/sec")?;
                words[at - 1].parse::<f64>().ok()
            });
        match rate {
            Some(mbps) if status == 0 => return mbps / 1000.0,
            _ => eprintln!(
                "iperf3 to {server} failed (attempt {}):\n{out}",
                attempt + 1
            ),
        }
    }
    panic!("iperf3 to {server} failed three times");
}

fn throughput(setup: &mut Setup, rounds: usize, seconds: u32) {
    let (mut untagged, mut tagged) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        let order = if round % 2 == 0 {
            [false, true]
        } else {
            [true, false]
        };
        for vlan in order {
            let peer = if vlan {
                setup.subport_peer.clone()
            } else {
                setup.parent_peer.clone()
            };
            let gbps = guest_iperf(&mut setup.guest, &peer, seconds);
            if vlan { &mut tagged } else { &mut untagged }.push(gbps);
        }
    }
    let (a, b) = (median(untagged.clone()), median(tagged.clone()));
    println!(
        "guest -> VM on another node, {rounds} rounds x {seconds} s: untagged (parent) {:.3} Gbit/s, VLAN subport {:.3} Gbit/s, ratio {:.2} (untagged {untagged:.3?}, subport {tagged:.3?})",
        a,
        b,
        b / a
    );
}

/// ADD -> the pod pings `setup`'s VM on its network, in ms, for `pods` pods. Timed on the
/// host around the guest's command, less the console's own round trip (a `true` timed just
/// before; busybox's `date` has no sub-second clock).
fn nested_wiring(setup: &mut Setup, pods: usize) -> Vec<f64> {
    let peer = setup.subport_peer.clone();
    let mut times = Vec::with_capacity(pods);
    for i in 0..pods {
        let pid = run(
            &mut setup.guest,
            "unshare -n sleep 100000 >/dev/null 2>&1 & echo $!",
        );
        let pid = pid.trim().to_owned();
        let started = std::time::Instant::now();
        run(&mut setup.guest, "true");
        let console = started.elapsed();
        let started = std::time::Instant::now();
        run(
            &mut setup.guest,
            &format!(
                "CNI_COMMAND=ADD CNI_CONTAINERID=bench{i} CNI_NETNS=/proc/{pid}/ns/net \
                 CNI_IFNAME=eth0 CNI_PATH=/ /isthmus-cni < /nested.json >/dev/null && \
                 until nsenter -t {pid} -n ping -c 1 -W 1 {peer} >/dev/null; do :; done"
            ),
        );
        let wired = started.elapsed().saturating_sub(console);
        times.push(wired.as_secs_f64() * 1e3);
        // Between pods, as a kubelet's sandboxes come: let a pool refill.
        std::thread::sleep(Duration::from_millis(500));
    }
    let (_, trunks) = setup.lab.api("GET", "/v2.0/trunks", None);
    eprintln!(
        "{} subports on the trunk after {pods} pods (network {})",
        trunks["trunks"][0]["sub_ports"]
            .as_array()
            .map_or(0, Vec::len),
        setup.pods_net
    );
    times
}
