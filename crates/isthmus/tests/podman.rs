//! A real container runtime drives the plugin: podman (Debian's, CNI network backend, runc,
//! a busybox rootfs directory, no image pulls) runs inside a lab node's namespace with
//! `isthmus-cni` as its network plugin, following ../shared/runtime/podman-cni.sh and its
//! sandbox workarounds. The container lands on the same network as a VM on another node.

mod cloud;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use cloud::{cloud, cni_plugin, wait_for};
use serde_json::json;

const NET: &str = "isthmus-seamless";

/// Podman with private storage and configuration, inside one node's namespace.
struct Podman {
    dir: PathBuf,
    netns: String,
    cgroup: String,
}

impl Podman {
    fn new(dir: PathBuf, netns: &str, socket: &Path) -> Podman {
        let cgroup = format!("isthmus-podman-{}", std::process::id());
        for sub in ["net.d", "rootfs/bin", "rootfs/etc", "cni-bin"] {
            std::fs::create_dir_all(dir.join(sub)).unwrap();
        }
        let busybox = which("busybox").expect("busybox-static");
        std::fs::copy(&busybox, dir.join("rootfs/bin/busybox")).unwrap();
        for applet in ["sh", "ip", "ping", "sleep", "cat"] {
            std::os::unix::fs::symlink("busybox", dir.join("rootfs/bin").join(applet)).unwrap();
        }
        // The runtime finds plugins by their "type" in its plugin directory.
        std::os::unix::fs::symlink(cni_plugin(), dir.join("cni-bin/isthmus")).unwrap();
        let hard_nofile = String::from_utf8(
            Command::new("sh")
                .args(["-c", "ulimit -Hn"])
                .output()
                .unwrap()
                .stdout,
        )
        .unwrap();
        let hard_nofile = hard_nofile.trim();
        // Workarounds from ../shared/runtime/podman-cni.sh: rlimits within this sandbox's hard
        // limits, cgroupfs, file events, runc.
        std::fs::write(
            dir.join("containers.conf"),
            format!(
                r#"[containers]
default_ulimits = ["nofile={hard_nofile}:{hard_nofile}", "nproc=4096:4096"]

[network]
network_backend = "cni"
cni_plugin_dirs = ["{bin}"]
network_config_dir = "{netd}"
default_network = "{NET}"

[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
runtime = "runc"
"#,
                bin = dir.join("cni-bin").display(),
                netd = dir.join("net.d").display(),
            ),
        )
        .unwrap();
        let conflist = json!({"cniVersion": "1.0.0", "name": NET, "plugins": [
            {"type": "isthmus", "network": "seamless", "project": "demo", "socket": socket}]});
        std::fs::write(
            dir.join(format!("net.d/{NET}.conflist")),
            conflist.to_string(),
        )
        .unwrap();
        Podman {
            dir,
            netns: netns.to_owned(),
            cgroup,
        }
    }

    fn run(&self, args: &[&str]) -> (bool, String, String) {
        let d = |s: &str| self.dir.join(s).to_string_lossy().into_owned();
        let out = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.netns))
            .arg("env")
            .arg(format!("CONTAINERS_CONF={}", d("containers.conf")))
            .args(["podman", "--root", &d("storage"), "--runroot", &d("run")])
            .args([
                "--storage-driver",
                "overlay",
                "--cgroup-manager",
                "cgroupfs",
            ])
            .args(["--events-backend", "file"])
            .args(args)
            .output()
            .expect("run podman");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).trim().to_owned(),
            String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        )
    }

    fn ok(&self, args: &[&str]) -> String {
        let (ok, out, err) = self.run(args);
        assert!(ok, "podman {args:?}: {out} {err}");
        out
    }

    fn start(&self, name: &str) -> String {
        let rootfs = self.dir.join("rootfs").to_string_lossy().into_owned();
        let parent = format!("/{}", self.cgroup);
        self.ok(&[
            "run",
            "-d",
            "--cgroup-parent",
            &parent,
            "--name",
            name,
            "--network",
            NET,
            "--rootfs",
            &rootfs,
            "/bin/sleep",
            "3600",
        ]);
        self.ok(&[
            "inspect",
            "-f",
            &format!("{{{{(index .NetworkSettings.Networks \"{NET}\").IPAddress}}}}"),
            name,
        ])
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let _ = self.run(&["rm", "-a", "-f", "-t", "0"]);
        // podman's async cleanup may still hold storage mounts.
        for _ in 0..5 {
            if let Ok(mounts) = std::fs::read_to_string("/proc/mounts") {
                let dir = self.dir.to_string_lossy().into_owned();
                let mut ours: Vec<&str> = mounts
                    .lines()
                    .filter_map(|l| l.split_whitespace().nth(1))
                    .filter(|m| m.starts_with(&dir))
                    .collect();
                ours.sort_by(|a, b| b.cmp(a));
                for m in ours {
                    let _ = Command::new("umount").args(["-l", m]).status();
                }
            }
            if std::fs::remove_dir_all(&self.dir).is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        if let Ok(hierarchies) = std::fs::read_dir("/sys/fs/cgroup") {
            for h in hierarchies.flatten() {
                let dir = h.path().join(&self.cgroup);
                let _ = Command::new("find")
                    .arg(&dir)
                    .args(["-mindepth", "1", "-depth", "-type", "d", "-delete"])
                    .status();
                let _ = std::fs::remove_dir(&dir);
            }
        }
    }
}

fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(program))
            .find(|p| p.exists())
    })
}

#[test]
fn podman_puts_a_container_next_to_a_vm() {
    let missing: Vec<&str> = ["podman", "runc", "busybox", "nsenter"]
        .into_iter()
        .filter(|p| which(p).is_none())
        .collect();
    if !missing.is_empty() {
        isthmus_lab::skip(&format!(
            "missing {missing:?} (./test.sh installs podman, runc, busybox-static)"
        ));
        return;
    }
    let Some(cloud) = cloud(2) else { return };
    let lab = &cloud.lab;
    wait_for("2 agents", Duration::from_secs(20), || {
        lab.api("GET", "/v2.0/agents", None).1["agents"]
            .as_array()
            .is_some_and(|a| a.len() == 2)
    });
    let (s, net) = lab.api(
        "POST",
        "/v2.0/networks",
        Some(&json!({"network": {"name": "seamless", "shared": true}})),
    );
    assert_eq!(s, 201, "{net}");
    let net_id = net["network"]["id"].as_str().unwrap().to_owned();
    let (s, _) = lab.api(
        "POST",
        "/v2.0/subnets",
        Some(&json!({"subnet": {
        "network_id": net_id, "ip_version": 4, "cidr": "192.168.100.0/24"}})),
    );
    assert_eq!(s, 201);
    let (s, p) = lab.api(
        "POST",
        "/v2.0/ports",
        Some(&json!({"port": {
        "network_id": net_id, "project_id": "demo", "binding:host_id": "node1",
        "device_owner": "compute:nova", "name": "vm1"}})),
    );
    assert_eq!(s, 201, "{p}");
    let port = &p["port"];
    let vm = lab
        .add_vm(
            0,
            port["id"].as_str().unwrap(),
            port["mac_address"].as_str().unwrap(),
            "192.168.100.3/24",
            Some("192.168.100.1"),
            1450,
        )
        .unwrap();

    let podman = Podman::new(
        lab.dir.0.join("podman"),
        lab.nodes[1].ns.name(),
        &lab.nodes[1].cni_socket,
    );
    let ip = podman.start("c1");
    assert_eq!(
        ip, "192.168.100.4",
        "the container gets the next free address"
    );
    let (_, ports) = lab.api("GET", &format!("/v2.0/ports?network_id={net_id}"), None);
    let container_port = ports["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["fixed_ips"][0]["ip_address"] == "192.168.100.4")
        .cloned()
        .expect("the container's port");
    assert_eq!(container_port["device_owner"], "compute:kubernetes");
    assert_eq!(container_port["binding:host_id"], "node2");
    assert_eq!(container_port["project_id"], "demo");
    wait_for("VM -> container", Duration::from_secs(10), || {
        vm.ns.exec("ping", &["-c", "1", "-W", "1", &ip]).is_ok()
    });
    let out = podman.ok(&["exec", "c1", "ping", "-c", "2", "-W", "2", "192.168.100.3"]);
    assert!(out.contains("0% packet loss"), "{out}");

    // Removing the container runs DEL: the port goes (or back to the pool), the veth too.
    podman.ok(&["rm", "-f", "-t", "0", "c1"]);
    let tap = isthmus_lab::tap_name(container_port["id"].as_str().unwrap());
    wait_for(
        "the container's port released",
        Duration::from_secs(10),
        || {
            let path = format!("/v2.0/ports/{}", container_port["id"].as_str().unwrap());
            let (s, p) = lab.api("GET", &path, None);
            (s == 404 || p["port"]["device_id"] == "isthmus-pool")
                && lab.nodes[1].ns.ip(&["link", "show", &tap]).is_err()
        },
    );
}
