//! A lab cloud for kernel tests: a controller in the fabric, an agent per node, and the real
//! clients (the `isthmus-cni` plugin, the `openstack` CLI) run where an operator would.
#![allow(dead_code)]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use isthmus_lab::{CniCall, Daemon, Lab, Pod};
use serde_json::json;

/// The `isthmus` binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_isthmus");

/// A lab with a controller in the fabric and an agent per node (fields drop in order:
/// processes first, then the namespaces).
pub struct Cloud {
    pub agents: Vec<Daemon>,
    pub controller: Daemon,
    pub data: tempfile::TempDir,
    pub lab: Lab,
}

/// A cloud of `nodes` nodes, or `None` (skipped, with the reason) where labs cannot run; under
/// CI that is a failure.
pub fn cloud(nodes: usize) -> Option<Cloud> {
    cloud_with(&vec![&[][..]; nodes])
}

/// A cloud with one node per entry, its agent started with those extra arguments.
pub fn cloud_with(agent_args: &[&[&str]]) -> Option<Cloud> {
    if !isthmus_lab::runnable() {
        return None;
    }
    let lab = Lab::new(agent_args.len()).unwrap();
    let data = tempfile::tempdir().unwrap();
    Some(start_cloud(lab, data, &[], agent_args))
}

/// Starts a controller (with `controller_args` after noauth) and an agent per entry of
/// `agent_args` in `lab`.
pub fn start_cloud(
    lab: Lab,
    data: tempfile::TempDir,
    controller_args: &[&str],
    agent_args: &[&[&str]],
) -> Cloud {
    let mut args = vec!["--auth", "noauth"];
    args.extend_from_slice(controller_args);
    let controller = lab.start_controller_with(BIN, data.path(), &args).unwrap();
    let agents = agent_args
        .iter()
        .enumerate()
        .map(|(i, extra)| lab.start_agent_with(BIN, i, extra).unwrap())
        .collect();
    Cloud {
        agents,
        controller,
        data,
        lab,
    }
}

pub fn wait_for(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if check() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("timed out waiting for {what}");
}

/// A network `name` with subnet `cidr`, shared so every project can put ports on it; no DHCP
/// (its VMs are namespaces with static addresses, and no DHCP port takes the first one).
pub fn shared_network(lab: &Lab, name: &str, cidr: &str) -> (String, String) {
    shared_network_with(lab, name, cidr, false)
}

/// [`shared_network`] with or without DHCP on its subnet (with it, the network's DHCP port
/// takes the subnet's first address).
pub fn shared_network_with(lab: &Lab, name: &str, cidr: &str, dhcp: bool) -> (String, String) {
    let (s, net) = lab.api(
        "POST",
        "/v2.0/networks",
        Some(&json!({"network": {"name": name, "shared": true}})),
    );
    assert_eq!(s, 201, "{net}");
    let net_id = net["network"]["id"].as_str().unwrap().to_owned();
    let (s, sub) = lab.api(
        "POST",
        "/v2.0/subnets",
        Some(&json!({"subnet": {"network_id": net_id, "ip_version": 4, "cidr": cidr, "enable_dhcp": dhcp}})),
    );
    assert_eq!(s, 201, "{sub}");
    (net_id, sub["subnet"]["id"].as_str().unwrap().to_owned())
}

/// No IPv6 in a guest: its router solicitations and multicast reports would be flooded to every
/// node on its network at moments of their own, and tests count packets and connections.
pub fn ipv4_only(ns: &isthmus_lab::Netns) {
    for key in ["all", "default"] {
        ns.exec(
            "sysctl",
            &["-qw", &format!("net.ipv6.conf.{key}.disable_ipv6=1")],
        )
        .unwrap();
    }
}

/// The `isthmus-cni` plugin, built next to `isthmus` by `cargo test --workspace` (or
/// `cargo build`).
pub fn cni_plugin() -> PathBuf {
    let path = PathBuf::from(BIN).with_file_name("isthmus-cni");
    assert!(
        path.exists(),
        "{} is missing: build it with `cargo build -p isthmus-cni` (./test.sh does)",
        path.display()
    );
    path
}

/// The `openstack` executable: `$ISTHMUS_OPENSTACK`, the repository's `.venv`, or `PATH`.
pub fn openstack() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("ISTHMUS_OPENSTACK") {
        return Some(PathBuf::from(p));
    }
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.venv/bin/openstack");
    if venv.exists() {
        return Some(venv);
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("openstack"))
            .find(|p| p.exists())
    })
}

impl Cloud {
    /// Runs the real `openstack` CLI in the fabric against the lab controller; `None` when
    /// the CLI is not installed (a failure under CI).
    pub fn openstack(&self, args: &[&str]) -> Option<serde_json::Value> {
        let Some(bin) = openstack() else {
            isthmus_lab::skip(
                "no openstack CLI (./test.sh installs python-openstackclient in .venv)",
            );
            return None;
        };
        let endpoint = format!("http://{}", isthmus_lab::CONTROLLER_ADDR);
        let bin = bin.to_string_lossy().into_owned();
        let mut all = vec![
            bin.as_str(),
            "--os-auth-type",
            "none",
            "--os-endpoint",
            endpoint.as_str(),
        ];
        all.extend_from_slice(args);
        all.extend(["-f", "json"]);
        let out = self
            .lab
            .fabric
            .exec(all[0], &all[1..])
            .unwrap_or_else(|e| panic!("openstack {args:?}: {e}"));
        Some(
            serde_json::from_str(&out)
                .unwrap_or_else(|e| panic!("openstack {args:?} printed {out}: {e}")),
        )
    }
}

/// The CNI network configuration for node `node`, with `extra` keys.
pub fn cni_conf(cloud: &Cloud, node: usize, extra: serde_json::Value) -> String {
    let mut c = json!({
        "cniVersion": "1.1.0",
        "name": "isthmus",
        "type": "isthmus",
        "socket": cloud.lab.nodes[node].cni_socket,
    });
    if let (Some(c), Some(extra)) = (c.as_object_mut(), extra.as_object()) {
        c.extend(extra.clone());
    }
    c.to_string()
}

/// A CNI ADD of `pod` as container `id` through the real plugin; its result (asserts success).
pub fn cni_add(
    cloud: &Cloud,
    node: usize,
    pod: &Pod,
    id: &str,
    args: &str,
    config: &str,
) -> serde_json::Value {
    let netns = pod.netns_path();
    let call = CniCall {
        command: "ADD",
        container_id: id,
        netns: &netns,
        ifname: "eth0",
        args,
    };
    let out = cloud.lab.cni(&cni_plugin(), node, &call, config);
    assert!(out.success, "ADD failed: {} {}", out.stdout, out.stderr);
    out.stdout
}

/// Creates `kind` (`"port"`, `"subnet"`, ...) at `path` through the API; its object.
pub fn create(lab: &Lab, path: &str, kind: &str, body: serde_json::Value) -> serde_json::Value {
    let (s, v) = lab.api("POST", path, Some(&json!({ kind: body })));
    assert_eq!(s, 201, "{v}");
    v[kind].clone()
}

/// A port's first address.
pub fn ip_of(port: &serde_json::Value) -> String {
    port["fixed_ips"][0]["ip_address"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// The id of the default security group (of `project`, or the first listed).
pub fn default_group(lab: &Lab, project: Option<&str>) -> String {
    let query = match project {
        Some(p) => format!("/v2.0/security-groups?name=default&project_id={p}"),
        None => "/v2.0/security-groups?name=default".to_owned(),
    };
    let (_, groups) = lab.api("GET", &query, None);
    groups["security_groups"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// Adds `subnet` to `router` through the API.
pub fn add_router_interface(lab: &Lab, router: &str, subnet: &str) {
    let (s, v) = lab.api(
        "PUT",
        &format!("/v2.0/routers/{router}/add_router_interface"),
        Some(&json!({ "subnet_id": subnet })),
    );
    assert_eq!(s, 200, "{v}");
}

/// What `nslookup NAME SERVER` (busybox) in `ns` says NAME is: its addresses (none when it
/// does not exist).
pub fn resolve(ns: &isthmus_lab::Netns, name: &str, server: &str) -> Vec<String> {
    let out = ns
        .command("busybox")
        .args(["nslookup", "-type=a", name, server])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    // The server's own "Address:" line comes first, before "Name:".
    text.split_once("Name:")
        .map(|(_, answers)| {
            answers
                .lines()
                .filter_map(|l| l.strip_prefix("Address:"))
                .map(|a| a.trim().to_owned())
                .collect()
        })
        .unwrap_or_default()
}
