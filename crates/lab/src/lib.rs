//! A multi-node cloud on one machine, in network namespaces: a fabric namespace holding the
//! underlay bridge, one namespace per node connected to it by a veth, and VMs as namespaces
//! whose veth peer sits in their node as `tap<port_id[0:11]>`, exactly where a hypervisor
//! would put it, and pods as empty namespaces wired by executing the CNI plugin in their node.
//! Every namespace has a unique name and is removed (with its processes) when dropped, also
//! when a test panics; `isthmus lab up` keeps a named one instead ([`scenario`]). All
//! addresses live inside these namespaces.
//!
//! The harness drives iproute2 (`ip`), as an operator would; the agent itself programs the
//! kernel over netlink.

pub mod guest;
pub mod scenario;

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

/// The underlay prefix of a lab (fabric bridge .254, node N at .N).
pub const UNDERLAY_PREFIX: &str = "10.251.0";
/// Underlay MTU.
pub const UNDERLAY_MTU: u32 = 1500;
/// The lab's external physical network: a bridge `br-public` in the fabric, and in every
/// node an interface on it (`--physnet public:eth1` maps it).
pub const PUBLIC_PHYSNET: &str = "public";
/// The nodes' interface on the external physical network.
pub const PUBLIC_IFACE: &str = "eth1";
/// The agent argument mapping the lab's external physical network.
pub const PUBLIC_MAPPING: &str = "public:eth1";
/// The external network's subnet (see [`Lab::create_public_network`]).
pub const PUBLIC_CIDR: &str = "172.24.4.0/24";

/// Why a lab operation failed.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    /// A command could not be started (iproute2 missing?).
    #[error("cannot run {command}: {source}")]
    Spawn {
        /// The command line.
        command: String,
        /// Cause.
        source: std::io::Error,
    },
    /// A command failed.
    #[error("`{command}` failed: {stderr}")]
    Failed {
        /// The command line.
        command: String,
        /// What it printed on stderr.
        stderr: String,
    },
    /// A port object lacks what a VM needs from it.
    #[error("port {0} has no id, MAC or fixed IP")]
    Port(String),
    /// A lab name that is not `[a-z0-9-]{{1,20}}` (it becomes a directory under /run and
    /// namespace names).
    #[error("lab name {0:?} is not 1 to 20 of a-z, 0-9 and '-'")]
    Name(String),
}

/// Result of lab operations.
pub type Result<T> = std::result::Result<T, LabError>;

/// Runs a command, returning its stdout or an error carrying its stderr.
pub fn run(program: &str, args: &[&str]) -> Result<String> {
    let command = format!("{program} {}", args.join(" "));
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|source| LabError::Spawn {
            command: command.clone(),
            source,
        })?;
    if !out.status.success() {
        return Err(LabError::Failed {
            command,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A network namespace removed on drop (unless kept).
#[derive(Debug)]
pub struct Netns {
    name: String,
    keep: bool,
}

/// How a lab names its namespaces.
#[derive(Debug, Clone)]
pub enum Naming {
    /// `isth-<pid>-<n>-<role>`: unique per process, for tests running side by side.
    Unique,
    /// `<prefix>-<role>` (VMs and pods numbered): a lab that outlives its process
    /// (`isthmus lab up`) and is found again by name.
    Fixed(String),
}

impl Naming {
    fn name(&self, role: &str) -> String {
        match self {
            Naming::Unique => {
                let n = COUNTER.fetch_add(1, Ordering::SeqCst);
                format!("isth-{}-{n}-{role}", std::process::id())
            }
            Naming::Fixed(prefix) => format!("{prefix}-{role}"),
        }
    }
}

impl Netns {
    /// Creates `isth-<pid>-<n>-<role>` with loopback up.
    pub fn create(role: &str) -> Result<Netns> {
        Netns::named(&Naming::Unique.name(role))
    }

    /// Creates namespace `name` with loopback up.
    pub fn named(name: &str) -> Result<Netns> {
        run("ip", &["netns", "add", name])?;
        let ns = Netns {
            name: name.to_owned(),
            keep: false,
        };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// Leaves the namespace in place when dropped.
    pub fn keep(&mut self) {
        self.keep = true;
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `ip -n <ns> <args>`.
    pub fn ip(&self, args: &[&str]) -> Result<String> {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        run("ip", &all)
    }

    /// Runs a program inside the namespace.
    pub fn exec(&self, program: &str, args: &[&str]) -> Result<String> {
        let mut all = vec!["netns", "exec", self.name.as_str(), program];
        all.extend_from_slice(args);
        run("ip", &all)
    }

    /// A TCP listener bound to `addr` inside the namespace, for a server the test process
    /// itself runs there (the socket keeps its namespace; the process stays where it is).
    pub fn listen_tcp(&self, addr: &str) -> Result<std::net::TcpListener> {
        let path = format!("/run/netns/{}", self.name);
        let target = addr.to_owned();
        let bound = std::thread::spawn(move || -> std::io::Result<std::net::TcpListener> {
            let ns = std::fs::File::open(&path)?;
            // Only this thread moves, and it ends here.
            nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)?;
            std::net::TcpListener::bind(&target)
        })
        .join()
        .unwrap_or_else(|_| Err(std::io::Error::other("the binding thread panicked")));
        bound.map_err(|source| LabError::Spawn {
            command: format!("listen on {addr} in {}", self.name),
            source,
        })
    }

    /// A command that runs `program` inside the namespace (for long-lived processes).
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if self.keep {
            return;
        }
        // Processes left in the namespace would keep its devices alive.
        if let Ok(pids) = run("ip", &["netns", "pids", &self.name]) {
            for pid in pids.split_whitespace() {
                let _ = run("kill", &["-9", pid]);
            }
        }
        let _ = run("ip", &["netns", "del", &self.name]);
    }
}

/// A node of the lab.
#[derive(Debug)]
pub struct Node {
    /// Its namespace.
    pub ns: Netns,
    /// Its name (what ports bind to).
    pub name: String,
    /// Its underlay (tunnel) address, on `eth0`.
    pub underlay_ip: Ipv4Addr,
    /// Its agent's `--state-dir`.
    pub state_dir: PathBuf,
    /// Its agent's `--cni-socket`.
    pub cni_socket: PathBuf,
    /// Its agent's `--netns-dir` (router namespaces).
    pub netns_dir: PathBuf,
}

/// A pod sandbox: a network namespace, as a runtime creates it before calling CNI.
#[derive(Debug)]
pub struct Pod {
    /// Its namespace.
    pub ns: Netns,
}

impl Pod {
    /// `CNI_NETNS` of this pod.
    pub fn netns_path(&self) -> String {
        format!("/run/netns/{}", self.ns.name())
    }
}

/// A directory removed on drop (unless kept).
#[derive(Debug)]
pub struct ScratchDir(pub PathBuf, pub bool);

impl Drop for ScratchDir {
    fn drop(&mut self) {
        if !self.1 {
            unpin_under(&self.0);
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// Detaches every mount under `dir` (namespaces the agents pinned there), deepest first, so the
/// directory can be removed and the namespaces go once nothing else holds them.
pub fn unpin_under(dir: &Path) {
    let Ok(mounts) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    // The fifth field is the mount point (spaces escaped as \040).
    let mut points: Vec<PathBuf> = mounts
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(p.replace("\\040", " ")))
        .filter(|p| p.starts_with(dir))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for point in points {
        let _ = run("umount", &["-l", &point.to_string_lossy()]);
    }
}

/// One CNI invocation of the plugin, as a runtime makes it.
#[derive(Debug, Clone, Default)]
pub struct CniCall<'a> {
    /// `CNI_COMMAND`.
    pub command: &'a str,
    /// `CNI_CONTAINERID`.
    pub container_id: &'a str,
    /// `CNI_NETNS`.
    pub netns: &'a str,
    /// `CNI_IFNAME`.
    pub ifname: &'a str,
    /// `CNI_ARGS`.
    pub args: &'a str,
}

/// What the plugin did: whether it exited 0, and what it printed on stdout (JSON, or null).
#[derive(Debug, Clone)]
pub struct CniOutcome {
    /// Exit status 0.
    pub success: bool,
    /// Parsed stdout (null when empty).
    pub stdout: serde_json::Value,
    /// stderr, for failure messages.
    pub stderr: String,
}

/// A VM: a namespace with `eth0`, whose peer is the port's tap in its node.
#[derive(Debug)]
pub struct Vm {
    /// Its namespace.
    pub ns: Netns,
    /// The tap name in the node.
    pub tap: String,
}

/// A fabric with nodes.
#[derive(Debug)]
pub struct Lab {
    /// Nodes, in order (`node1`, `node2`, ...); dropped before the fabric.
    pub nodes: Vec<Node>,
    /// The fabric namespace (underlay bridge `br-underlay`, address .254).
    pub fabric: Netns,
    /// State directories and sockets of the nodes' agents.
    pub dir: ScratchDir,
    /// Agents get `--own-br-netfilter` (a node namespace is its agent's alone); tests of the
    /// agent on a shared namespace turn it off.
    pub own_br_netfilter: bool,
    naming: Naming,
    /// VMs and pods created so far, by role (numbers their namespaces).
    guests: std::sync::Mutex<std::collections::BTreeMap<String, usize>>,
}

pub use isthmus_model::port::tap_name;

impl Lab {
    /// A fabric and `nodes` nodes on its underlay, uniquely named, removed on drop.
    pub fn new(nodes: usize) -> Result<Lab> {
        let fabric = Netns::create("fabric")?;
        let dir = std::env::temp_dir().join(fabric.name().replace("-fabric", ""));
        Lab::build(nodes, fabric, dir, Naming::Unique)
    }

    /// A lab named `<prefix>-*` with its state under `dir`, for `isthmus lab up`: call
    /// [`Lab::keep`] to leave it running after the process ends.
    pub fn named(nodes: usize, prefix: &str, dir: PathBuf) -> Result<Lab> {
        let naming = Naming::Fixed(prefix.to_owned());
        let fabric = Netns::named(&naming.name("fabric"))?;
        Lab::build(nodes, fabric, dir, naming)
    }

    /// Every namespace and directory of the lab stays when it is dropped.
    pub fn keep(mut self) {
        self.fabric.keep();
        for node in &mut self.nodes {
            node.ns.keep();
        }
        self.dir.1 = true;
    }

    /// Daemons of a named lab log to `<dir>/<role>.log` and run in their own process group,
    /// so they outlive the command that started them; test labs' daemons inherit stderr.
    fn daemon_output(&self, command: &mut Command, role: &str) {
        use std::os::unix::process::CommandExt;
        command.stdout(Stdio::null());
        if let Naming::Fixed(_) = self.naming {
            if let Ok(log) = std::fs::File::create(self.dir.0.join(format!("{role}.log"))) {
                command.stderr(log);
            }
            command.process_group(0);
        }
    }

    fn guest_name(&self, role: &str) -> String {
        match &self.naming {
            Naming::Unique => Naming::Unique.name(role),
            fixed => {
                let mut guests = self.guests.lock().unwrap_or_else(|e| e.into_inner());
                let n = guests.entry(role.to_owned()).or_insert(0);
                *n += 1;
                fixed.name(&format!("{role}{n}"))
            }
        }
    }

    fn build(nodes: usize, fabric: Netns, dir: PathBuf, naming: Naming) -> Result<Lab> {
        // The fabric stands for physical switches: its bridges must not hand frames to
        // netfilter, which new namespaces do by default when br_netfilter is loaded.
        fabric.exec(
            "sh",
            &[
                "-c",
                "for k in iptables ip6tables arptables; do echo 0 > /proc/sys/net/bridge/bridge-nf-call-$k; done",
            ],
        )?;
        fabric.ip(&["link", "add", "br-underlay", "type", "bridge"])?;
        fabric.ip(&[
            "addr",
            "add",
            &format!("{UNDERLAY_PREFIX}.254/24"),
            "dev",
            "br-underlay",
        ])?;
        fabric.ip(&["link", "set", "br-underlay", "up"])?;
        fabric.ip(&["link", "add", "br-public", "type", "bridge"])?;
        fabric.ip(&["link", "set", "br-public", "up"])?;
        std::fs::create_dir_all(&dir).map_err(|source| LabError::Spawn {
            command: format!("mkdir {}", dir.display()),
            source,
        })?;
        let mut lab = Lab {
            nodes: Vec::new(),
            fabric,
            dir: ScratchDir(dir, false),
            own_br_netfilter: true,
            naming,
            guests: Default::default(),
        };
        for i in 1..=nodes {
            let ns = Netns::named(&lab.naming.name(&format!("node{i}")))?;
            lab.plug(&format!("u-node{i}"), "br-underlay", &ns, "eth0")?;
            let underlay_ip = Ipv4Addr::new(10, 251, 0, i as u8);
            ns.ip(&["addr", "add", &format!("{underlay_ip}/24"), "dev", "eth0"])?;
            ns.ip(&["link", "set", "eth0", "up"])?;
            // The external network: plugged, left for the agent to bridge when it maps it.
            lab.plug(&format!("p-node{i}"), "br-public", &ns, PUBLIC_IFACE)?;
            ns.ip(&["link", "set", PUBLIC_IFACE, "up"])?;
            let name = format!("node{i}");
            lab.nodes.push(Node {
                ns,
                state_dir: lab.dir.0.join(&name),
                cni_socket: lab.dir.0.join(format!("{name}.cni.sock")),
                netns_dir: lab.dir.0.join(format!("{name}.netns")),
                name,
                underlay_ip,
            });
        }
        Ok(lab)
    }

    /// A VM for `port` as the API returns it: its id, MAC and first fixed IP (with
    /// `prefix_len`); otherwise as [`Lab::add_vm`].
    pub fn add_vm_for_port(
        &self,
        node: usize,
        port: &serde_json::Value,
        prefix_len: u8,
        gateway: Option<&str>,
        mtu: u32,
    ) -> Result<Vm> {
        let (Some(id), Some(mac), Some(ip)) = (
            port["id"].as_str(),
            port["mac_address"].as_str(),
            port["fixed_ips"][0]["ip_address"].as_str(),
        ) else {
            return Err(LabError::Port(port.to_string()));
        };
        self.add_vm(node, id, mac, &format!("{ip}/{prefix_len}"), gateway, mtu)
    }

    /// A VM on node `node` (0-based) for `port_id`: `eth0` with the port's MAC, address
    /// (`a.b.c.d/len`, none when empty), MTU and default route via `gateway`; the peer is left
    /// down in the node as the tap, for the agent (or a test) to plug.
    pub fn add_vm(
        &self,
        node: usize,
        port_id: &str,
        mac: &str,
        address: &str,
        gateway: Option<&str>,
        mtu: u32,
    ) -> Result<Vm> {
        let node = &self.nodes[node];
        let ns = Netns::named(&self.guest_name("vm"))?;
        let tap = tap_name(port_id);
        ns.ip(&[
            "link",
            "add",
            "eth0",
            "type",
            "veth",
            "peer",
            "name",
            &tap,
            "netns",
            node.ns.name(),
        ])?;
        ns.ip(&[
            "link",
            "set",
            "eth0",
            "address",
            mac,
            "mtu",
            &mtu.to_string(),
        ])?;
        if !address.is_empty() {
            ns.ip(&["addr", "add", address, "dev", "eth0"])?;
        }
        ns.ip(&["link", "set", "eth0", "up"])?;
        if let Some(gw) = gateway {
            ns.ip(&["route", "add", "default", "via", gw])?;
        }
        Ok(Vm { ns, tap })
    }

    /// A VM that has no address yet (it asks DHCP for it): `eth0` with the port's MAC, up,
    /// MTU 1500 until DHCP says otherwise.
    pub fn add_dhcp_vm(&self, node: usize, port: &serde_json::Value) -> Result<Vm> {
        let (Some(id), Some(mac)) = (port["id"].as_str(), port["mac_address"].as_str()) else {
            return Err(LabError::Port(port.to_string()));
        };
        self.add_vm(node, id, mac, "", None, 1500)
    }

    /// A host on the external network (outside the cloud): a namespace whose `eth0` is on the
    /// fabric's `br-public` with `address` (`a.b.c.d/len`).
    pub fn add_outside_host(&self, address: &str) -> Result<Netns> {
        let ns = Netns::named(&self.guest_name("outside"))?;
        let peer = format!("o-{}", COUNTER.fetch_add(1, Ordering::SeqCst));
        self.plug(&peer, "br-public", &ns, "eth0")?;
        ns.ip(&["addr", "add", address, "dev", "eth0"])?;
        ns.ip(&["link", "set", "eth0", "up"])?;
        Ok(ns)
    }

    /// A veth (underlay MTU) from the fabric's `bridge` (end `peer`, up) to `ifname` in `ns`
    /// (left down).
    fn plug(&self, peer: &str, bridge: &str, ns: &Netns, ifname: &str) -> Result<()> {
        let mtu = UNDERLAY_MTU.to_string();
        self.fabric.ip(&[
            "link",
            "add",
            peer,
            "mtu",
            &mtu,
            "type",
            "veth",
            "peer",
            "name",
            ifname,
            "netns",
            ns.name(),
        ])?;
        self.fabric
            .ip(&["link", "set", peer, "master", bridge, "up"])?;
        Ok(())
    }

    /// Creates the external network `public` through the API (flat on the lab's physnet) with
    /// subnet [`PUBLIC_CIDR`], whose addresses .10-.99 go to routers and floating IPs (the rest
    /// is for outside hosts); returns its id.
    pub fn create_public_network(&self) -> Result<String> {
        let created = |what: &str, (status, body): (u16, serde_json::Value)| {
            if status == 201 {
                Ok(body)
            } else {
                Err(LabError::Failed {
                    command: format!("POST /v2.0/{what}"),
                    stderr: format!("answered {status}: {body}"),
                })
            }
        };
        let body = serde_json::json!({"network": {"name": "public", "router:external": true,
            "provider:network_type": "flat", "provider:physical_network": PUBLIC_PHYSNET}});
        let network = created("networks", self.api("POST", "/v2.0/networks", Some(&body)))?;
        let id = network["network"]["id"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let body = serde_json::json!({"subnet": {"network_id": id, "ip_version": 4,
            "cidr": PUBLIC_CIDR, "name": "public-v4",
            "allocation_pools": [{"start": "172.24.4.10", "end": "172.24.4.99"}]}});
        created("subnets", self.api("POST", "/v2.0/subnets", Some(&body)))?;
        Ok(id)
    }

    /// A pod sandbox (an empty network namespace, as a runtime makes one).
    pub fn add_pod(&self) -> Result<Pod> {
        Ok(Pod {
            ns: Netns::named(&self.guest_name("pod"))?,
        })
    }

    /// Executes the CNI plugin at `plugin` inside node `node` (0-based) exactly as a runtime
    /// does: a clean environment with the CNI variables, the network configuration on stdin.
    pub fn cni(&self, plugin: &Path, node: usize, call: &CniCall<'_>, config: &str) -> CniOutcome {
        use std::io::Write;
        let mut command = self.nodes[node].ns.command("env");
        command.arg("-i");
        for (k, v) in [
            ("CNI_COMMAND", call.command),
            ("CNI_CONTAINERID", call.container_id),
            ("CNI_NETNS", call.netns),
            ("CNI_IFNAME", call.ifname),
            ("CNI_ARGS", call.args),
        ] {
            if !v.is_empty() {
                command.arg(format!("{k}={v}"));
            }
        }
        let plugin_dir = plugin.parent().map(Path::display).map(|d| d.to_string());
        command
            .arg(format!("CNI_PATH={}", plugin_dir.unwrap_or_default()))
            .arg("PATH=/usr/sbin:/usr/bin:/sbin:/bin")
            .arg(plugin)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let outcome = command.spawn().and_then(|mut child| {
            if let Some(mut stdin) = child.stdin.take() {
                stdin.write_all(config.as_bytes())?;
            }
            child.wait_with_output()
        });
        match outcome {
            Ok(out) => CniOutcome {
                success: out.status.success(),
                stdout: serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null),
                stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            },
            Err(e) => CniOutcome {
                success: false,
                stdout: serde_json::Value::Null,
                stderr: format!("cannot run {}: {e}", plugin.display()),
            },
        }
    }
}

/// Where a lab's controller listens: the fabric's underlay address, reachable from every node.
pub const CONTROLLER_ADDR: &str = "10.251.0.254:9696";

/// A process started for a lab (controller, agent, monitor), killed on drop.
#[derive(Debug)]
pub struct Daemon(pub Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Lab {
    /// Calls the lab controller's API from inside the fabric (curl), as admin; returns the
    /// status (0 when nothing answered) and the JSON body (null when there is none).
    pub fn api(
        &self,
        method: &str,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> (u16, serde_json::Value) {
        self.api_with(method, path, body, &[])
    }

    /// [`Lab::api`] with extra request headers (`X-Auth-Token: ...` for a controller that
    /// validates Keystone tokens).
    pub fn api_with(
        &self,
        method: &str,
        path: &str,
        body: Option<&serde_json::Value>,
        headers: &[&str],
    ) -> (u16, serde_json::Value) {
        self.api_at(CONTROLLER_ADDR, method, path, body, headers)
    }

    /// [`Lab::api_with`] against the controller at `addr` (`host:port`, in the fabric).
    pub fn api_at(
        &self,
        addr: &str,
        method: &str,
        path: &str,
        body: Option<&serde_json::Value>,
        headers: &[&str],
    ) -> (u16, serde_json::Value) {
        let url = format!("http://{addr}{path}");
        let payload = body.map(|b| b.to_string()).unwrap_or_default();
        let mut args = vec![
            "-s",
            "-X",
            method,
            "-H",
            "Content-Type: application/json",
            "-w",
            "\n%{http_code}",
        ];
        for header in headers {
            args.extend(["-H", header]);
        }
        if !payload.is_empty() {
            args.extend(["-d", payload.as_str()]);
        }
        args.push(&url);
        let out = self.fabric.exec("curl", &args).unwrap_or_default();
        let (body, code) = out.trim_end().rsplit_once('\n').unwrap_or(("", out.trim()));
        (
            code.parse().unwrap_or(0),
            serde_json::from_str(body).unwrap_or(serde_json::Value::Null),
        )
    }

    /// Starts `isthmus controller` (the binary at `bin`) in the fabric with its store in
    /// `data_dir`, and waits until it answers. The lab is a closed world of namespaces: its
    /// controller uses Neutron's noauth (explicitly, as its address is not loopback).
    pub fn start_controller(&self, bin: &str, data_dir: &std::path::Path) -> Result<Daemon> {
        self.start_controller_with(bin, data_dir, &["--auth", "noauth"])
    }

    /// [`Lab::start_controller`] with `extra` arguments (e.g. `--auth keystone ...`).
    pub fn start_controller_with(
        &self,
        bin: &str,
        data_dir: &std::path::Path,
        extra: &[&str],
    ) -> Result<Daemon> {
        self.start_controller_at(bin, CONTROLLER_ADDR, data_dir, extra)
    }

    /// [`Lab::start_controller_with`] listening on `listen` (`host:port` in the fabric): one
    /// of several controllers.
    pub fn start_controller_at(
        &self,
        bin: &str,
        listen: &str,
        data_dir: &std::path::Path,
        extra: &[&str],
    ) -> Result<Daemon> {
        let mut command = self.fabric.command(bin);
        command
            .args(["controller", "--listen", listen, "--data-dir"])
            .arg(data_dir)
            .args(extra);
        self.daemon_output(&mut command, "controller");
        let child = command.spawn().map_err(|source| LabError::Spawn {
            command: format!("{bin} controller"),
            source,
        })?;
        let daemon = Daemon(child);
        for _ in 0..400 {
            if self.api_at(listen, "GET", "/healthz", None, &[]).0 == 200 {
                return Ok(daemon);
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        Err(LabError::Failed {
            command: format!("{bin} controller"),
            stderr: "no answer within 20 s".into(),
        })
    }

    /// Starts `isthmus agent` for node `index` (0-based) against the lab controller.
    pub fn start_agent(&self, bin: &str, index: usize) -> Result<Daemon> {
        self.start_agent_with(bin, index, &[])
    }

    /// The same with extra agent arguments (`--default-pod-network NET`, `--pool-size N`...;
    /// `--controller URLS` in place of the lab controller's).
    pub fn start_agent_with(&self, bin: &str, index: usize, extra: &[&str]) -> Result<Daemon> {
        let node = &self.nodes[index];
        // Not `ip netns exec`: its private mount namespace would take the router namespaces
        // the agent pins with it when the agent stops.
        let mut command = Command::new("nsenter");
        command
            .arg(format!("--net=/run/netns/{}", node.ns.name()))
            .arg(bin);
        self.daemon_output(&mut command, &node.name);
        command
            .args([
                "agent",
                "--node",
                &node.name,
                "--tunnel-ip",
                &node.underlay_ip.to_string(),
            ])
            .args(
                (!extra.contains(&"--controller"))
                    .then(|| {
                        [
                            "--controller".to_owned(),
                            format!("http://{CONTROLLER_ADDR}"),
                        ]
                    })
                    .into_iter()
                    .flatten(),
            )
            .arg("--state-dir")
            .arg(&node.state_dir)
            .arg("--cni-socket")
            .arg(&node.cni_socket)
            .arg("--netns-dir")
            .arg(&node.netns_dir)
            .args(self.own_br_netfilter.then_some("--own-br-netfilter"))
            .args(extra)
            .spawn()
            .map(Daemon)
            .map_err(|source| LabError::Spawn {
                command: format!("{bin} agent"),
                source,
            })
    }
}

/// A test that cannot run here says why and skips; under CI (`CI` set) a skip is a failure.
pub fn skip(why: &str) {
    assert!(
        std::env::var_os("CI").is_none(),
        "CI must run this test: {why}"
    );
    eprintln!("SKIP: {why}");
}

/// Whether labs can be built here; when not, [`skip`]s with the reason.
pub fn runnable() -> bool {
    match unavailable() {
        Some(why) => {
            skip(&why);
            false
        }
        None => true,
    }
}

/// Whether this process can build labs (root, with iproute2); otherwise why not.
pub fn unavailable() -> Option<String> {
    match run("id", &["-u"]) {
        Ok(uid) if uid.trim() == "0" => {}
        Ok(_) => return Some("lab tests need root (network namespaces)".into()),
        Err(e) => return Some(e.to_string()),
    }
    run("ip", &["-V"])
        .err()
        .map(|e| format!("iproute2 missing: {e}"))
}
