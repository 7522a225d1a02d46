//! The kubelet's path: containerd's CRI plugin (Debian's containerd) runs a pod sandbox on an
//! Isthmus network through `isthmus-cni`, asked the way kubelet asks it (RunPodSandbox: the
//! runtime makes the pod's namespace and calls CNI ADD; StopPodSandbox: CNI DEL), following
//! ../shared/runtime/containerd-cri.sh and its sandbox workarounds (containerd inside a node's
//! network namespace, a local sandbox image, cgroupfs, a restricted oom_score_adj). The
//! sandbox's port is an ordinary Neutron port that a VM on another node reaches; removing the
//! sandbox leaves no port, veth or attachment record.

mod cloud;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use cloud::{cloud, cni_plugin, shared_network, wait_for};
use hyper_util::rt::TokioIo;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::{
    LinuxPodSandboxConfig, LinuxSandboxSecurityContext, NamespaceMode, NamespaceOption,
    PodSandboxConfig, PodSandboxMetadata, PodSandboxStatusRequest, RemovePodSandboxRequest,
    RunPodSandboxRequest, StopPodSandboxRequest,
};
use serde_json::json;
use tonic::transport::{Channel, Endpoint, Uri};

/// The sandbox image: busybox sleeping (containerd stops sandboxes with SIGKILL).
const IMAGE: &str = "localhost/isthmus-sandbox:1";

/// Builds the sandbox image as a docker-archive tarball (what `ctr images import` takes).
const MAKE_IMAGE: &str = r#"
import hashlib, io, json, sys, tarfile
out, ref, busybox = sys.argv[1:4]
layer = io.BytesIO()
with tarfile.open(fileobj=layer, mode="w", format=tarfile.USTAR_FORMAT) as t:
    d = tarfile.TarInfo("bin"); d.type = tarfile.DIRTYPE; d.mode = 0o755
    t.addfile(d)
    data = open(busybox, "rb").read()
    f = tarfile.TarInfo("bin/busybox"); f.size = len(data); f.mode = 0o755
    t.addfile(f, io.BytesIO(data))
lb = layer.getvalue()
diff = hashlib.sha256(lb).hexdigest()
cfg = {"architecture": "amd64", "os": "linux", "created": "1970-01-01T00:00:00Z",
       "config": {"Entrypoint": ["/bin/busybox", "sleep", "2147483647"], "Env": ["PATH=/bin"]},
       "rootfs": {"type": "layers", "diff_ids": ["sha256:" + diff]}}
cb = json.dumps(cfg).encode()
cid = hashlib.sha256(cb).hexdigest()
man = [{"Config": cid + ".json", "RepoTags": [ref], "Layers": [diff + "/layer.tar"]}]
with tarfile.open(out, "w") as t:
    for name, data in ((diff + "/layer.tar", lb), (cid + ".json", cb),
                       ("manifest.json", json.dumps(man).encode())):
        ti = tarfile.TarInfo(name); ti.size = len(data)
        t.addfile(ti, io.BytesIO(data))
"#;

fn which_in(dir: &str, program: &str) -> Option<PathBuf> {
    Some(Path::new(dir).join(program)).filter(|p| p.exists())
}

fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(program))
        .find(|p| p.exists())
}

/// containerd with private state, inside one node's network namespace; stopped, with its
/// shims, mounts and cgroups, when dropped.
struct Containerd {
    dir: tempfile::TempDir,
    socket: PathBuf,
    cgroup: String,
    child: Child,
    /// Sandboxes run, with their network namespace's pin (removed if still there at the end).
    sandboxes: std::cell::RefCell<Vec<(String, Option<PathBuf>)>>,
}

impl Containerd {
    fn start(lab: &isthmus_lab::Lab, node: usize, network: &str) -> Containerd {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for sub in ["net.d", "cni-bin", "root", "state"] {
            std::fs::create_dir_all(root.join(sub)).unwrap();
        }
        // The runtime finds plugins by their "type" in its plugin directory.
        std::os::unix::fs::symlink(cni_plugin(), root.join("cni-bin/isthmus")).unwrap();
        std::fs::write(
            root.join("net.d/10-isthmus.conflist"),
            json!({"cniVersion": "1.0.0", "name": "isthmus-cri", "plugins": [{"type": "isthmus",
                "network": network, "socket": lab.nodes[node].cni_socket}]})
            .to_string(),
        )
        .unwrap();
        let socket = root.join("containerd.sock");
        let cgroup = format!("/isthmus-cri-{}", std::process::id());
        // From ../shared/runtime/containerd-cri.sh: no snapshotters that need what this sandbox
        // lacks, no CAP_SYS_RESOURCE (restricted oom_score_adj), cgroupfs.
        let config = format!(
            r#"version = 2
root = "{root}/root"
state = "{root}/state"
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
                    "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs"]
[grpc]
  address = "{socket}"
[ttrpc]
  address = "{socket}.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = "{root}/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{IMAGE}"
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{root}/cni-bin"
    conf_dir = "{root}/net.d"
    max_conf_num = 1
"#,
            root = root.display(),
            socket = socket.display(),
        );
        std::fs::write(root.join("config.toml"), config).unwrap();
        // The runtime puts the CNI plugin "loopback" on every sandbox (go-cni's lo network).
        std::os::unix::fs::symlink(
            which_in("/usr/lib/cni", "loopback").expect("containernetworking-plugins"),
            root.join("cni-bin/loopback"),
        )
        .unwrap();
        let log = std::fs::File::create(root.join("containerd.log")).unwrap();
        // nsenter, not `ip netns exec`: containerd pins each sandbox's namespace with a bind
        // mount, which the agent must see, so it stays in the host's mount namespace.
        let child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", lab.nodes[node].ns.name()))
            .arg("containerd")
            .arg("-c")
            .arg(root.join("config.toml"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let containerd = Containerd {
            dir,
            socket,
            cgroup,
            child,
            sandboxes: std::cell::RefCell::default(),
        };
        wait_for("containerd's socket", Duration::from_secs(20), || {
            containerd.socket.exists()
        });
        let image = containerd.dir.path().join("sandbox.tar");
        let made = Command::new("python3")
            .args(["-c", MAKE_IMAGE])
            .arg(&image)
            .arg(IMAGE)
            .arg(which("busybox").expect("busybox-static"))
            .status()
            .unwrap();
        assert!(made.success());
        let imported = Command::new("ctr")
            .arg("--address")
            .arg(&containerd.socket)
            .args(["-n", "k8s.io", "images", "import"])
            .arg(&image)
            .output()
            .unwrap();
        assert!(
            imported.status.success(),
            "ctr import: {}",
            String::from_utf8_lossy(&imported.stderr)
        );
        containerd
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default()
    }
}

impl Containerd {
    /// Our cgroup in each hierarchy this machine has.
    fn cgroups(&self) -> Vec<PathBuf> {
        let cgroup = self.cgroup.trim_start_matches('/');
        std::fs::read_dir("/sys/fs/cgroup")
            .into_iter()
            .flatten()
            .flatten()
            .map(|h| h.path().join(cgroup))
            .chain([Path::new("/sys/fs/cgroup").join(cgroup)])
            .filter(|d| d.is_dir())
            .collect()
    }
}

/// Every process in cgroup `dir` and below.
fn processes(dir: &Path) -> Vec<String> {
    let mut found: Vec<String> = std::fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    for child in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if child.path().is_dir() {
            found.extend(processes(&child.path()));
        }
    }
    found
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Shims started by this containerd carry its socket on their command line; sandboxes
        // a failed test left are in its cgroup.
        let address = format!("-address {} ", self.socket.display());
        let mut doomed: Vec<String> = self.cgroups().iter().flat_map(|d| processes(d)).collect();
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
                continue;
            };
            if String::from_utf8_lossy(&cmdline)
                .replace('\0', " ")
                .contains(&address)
            {
                doomed.push(entry.file_name().to_string_lossy().into_owned());
            }
        }
        for pid in &doomed {
            let _ = Command::new("kill").args(["-9", pid]).status();
        }
        for _ in 0..50 {
            if doomed.iter().all(|p| !Path::new("/proc").join(p).exists()) {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let root = self.dir.path().display().to_string();
        let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
        let mut ours: Vec<&str> = mounts
            .lines()
            .filter_map(|l| l.split_whitespace().nth(1))
            .filter(|m| m.starts_with(&root))
            .collect();
        ours.sort_by(|a, b| b.cmp(a));
        for mount in ours {
            let _ = Command::new("umount").args(["-l", mount]).status();
        }
        for dir in self.cgroups() {
            let _ = Command::new("find")
                .arg(&dir)
                .args(["-mindepth", "1", "-depth", "-type", "d", "-delete"])
                .status();
            let _ = std::fs::remove_dir(&dir);
        }
        // What the runtime keeps outside its state directory for sandboxes a failed test left:
        // their namespaces' pins and the CNI library's result cache.
        for sandbox in self.sandboxes.borrow().iter() {
            if let Some(pinned) = &sandbox.1 {
                let _ = Command::new("umount").arg(pinned).status();
                let _ = std::fs::remove_file(pinned);
            }
            for cached in libcni_cache(&sandbox.0) {
                let _ = std::fs::remove_file(cached);
            }
        }
        for dir in [LIBCNI_CACHE, "/var/lib/cni"] {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

/// Where the CNI library containerd uses keeps its results.
const LIBCNI_CACHE: &str = "/var/lib/cni/results";

/// The CNI library's cached results of sandbox `id`.
fn libcni_cache(id: &str) -> Vec<PathBuf> {
    std::fs::read_dir(LIBCNI_CACHE)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.to_string_lossy().contains(id))
        .collect()
}

async fn connect(socket: PathBuf) -> RuntimeServiceClient<Channel> {
    let channel = Endpoint::try_from("http://[::]:50051")
        .unwrap()
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let socket = socket.clone();
            async move {
                Ok::<_, std::io::Error>(TokioIo::new(
                    tokio::net::UnixStream::connect(socket).await?,
                ))
            }
        }))
        .await
        .unwrap();
    RuntimeServiceClient::new(channel)
}

/// What kubelet sends for a pod `namespace/name` with `uid`.
fn sandbox(name: &str, namespace: &str, uid: &str, cgroup: &str) -> PodSandboxConfig {
    PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: name.into(),
            uid: uid.into(),
            namespace: namespace.into(),
            attempt: 0,
        }),
        hostname: name.into(),
        linux: Some(LinuxPodSandboxConfig {
            cgroup_parent: cgroup.into(),
            security_context: Some(LinuxSandboxSecurityContext {
                namespace_options: Some(NamespaceOption {
                    network: NamespaceMode::Pod as i32,
                    pid: NamespaceMode::Pod as i32,
                    ipc: NamespaceMode::Pod as i32,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[test]
fn containerd_runs_a_pod_sandbox_on_an_isthmus_network() {
    if which("containerd").is_none() || which_in("/usr/lib/cni", "loopback").is_none() {
        isthmus_lab::skip(
            "containerd or containernetworking-plugins is not installed (./test.sh installs them)",
        );
        return;
    }
    let Some(cloud) = cloud(2) else { return };
    let lab = &cloud.lab;
    let (net, _) = shared_network(lab, "cri", "10.93.0.0/24");
    let (s, p) = lab.api(
        "POST",
        "/v2.0/ports",
        Some(
            &json!({"port": {"network_id": net, "binding:host_id": "node1",
            "port_security_enabled": false}}),
        ),
    );
    assert_eq!(s, 201, "{p}");
    let vm = lab.add_vm_for_port(0, &p["port"], 24, None, 1450).unwrap();
    let containerd = Containerd::start(lab, 1, &net);

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let uid = "uid-cri-web";
    let (id, ip) = runtime.block_on(async {
        let mut cri = connect(containerd.socket.clone()).await;
        let config = sandbox("web", "cri-demo", uid, &containerd.cgroup);
        let ran = cri
            .run_pod_sandbox(RunPodSandboxRequest {
                config: Some(config),
                runtime_handler: String::new(),
            })
            .await;
        let id = match ran {
            Ok(r) => r.into_inner().pod_sandbox_id,
            Err(e) => panic!("RunPodSandbox: {e}\n{}", containerd.log()),
        };
        let status = cri
            .pod_sandbox_status(PodSandboxStatusRequest {
                pod_sandbox_id: id.clone(),
                verbose: true,
            })
            .await
            .unwrap()
            .into_inner();
        let info: serde_json::Value = status
            .info
            .get("info")
            .and_then(|i| serde_json::from_str(i).ok())
            .unwrap_or_default();
        let netns = info["runtimeSpec"]["linux"]["namespaces"]
            .as_array()
            .and_then(|a| a.iter().find(|n| n["type"] == "network"))
            .and_then(|n| n["path"].as_str())
            .map(PathBuf::from);
        containerd.sandboxes.borrow_mut().push((id.clone(), netns));
        let ip = status
            .status
            .and_then(|s| s.network)
            .map(|n| n.ip)
            .unwrap_or_default();
        (id, ip)
    });

    // An ordinary Neutron port, named after the pod, bound to the node.
    let (_, ports) = lab.api("GET", &format!("/v2.0/ports?device_id={uid}"), None);
    let ports = ports["ports"].as_array().unwrap().clone();
    assert_eq!(ports.len(), 1, "{ports:?}");
    assert_eq!(ports[0]["name"], "cri-demo/web");
    assert_eq!(ports[0]["binding:host_id"], "node2");
    assert_eq!(ports[0]["fixed_ips"][0]["ip_address"], ip.as_str());
    // Under its project's default group, which admits what a rule lets in.
    let project = ports[0]["project_id"].as_str().unwrap();
    let group = cloud::default_group(lab, Some(project));
    let (s, rule) = lab.api(
        "POST",
        "/v2.0/security-group-rules",
        Some(&json!({"security_group_rule": {"security_group_id": group,
            "direction": "ingress", "protocol": "icmp"}})),
    );
    assert_eq!(s, 201, "{rule}");
    wait_for(
        "the VM to reach the sandbox",
        Duration::from_secs(10),
        || vm.ns.exec("ping", &["-c", "1", "-W", "1", &ip]).is_ok(),
    );

    runtime.block_on(async {
        let mut cri = connect(containerd.socket.clone()).await;
        cri.stop_pod_sandbox(StopPodSandboxRequest {
            pod_sandbox_id: id.clone(),
        })
        .await
        .unwrap();
        cri.remove_pod_sandbox(RemovePodSandboxRequest {
            pod_sandbox_id: id.clone(),
        })
        .await
        .unwrap();
    });
    // Nothing left: no port, no veth, no attachment record; nor the runtime's namespace pin
    // and CNI result cache.
    let pinned = containerd.sandboxes.borrow()[0].1.clone();
    assert!(pinned.as_ref().is_some_and(|p| !p.exists()), "{pinned:?}");
    assert!(libcni_cache(&id).is_empty(), "{:?}", libcni_cache(&id));
    let port_id = ports[0]["id"].as_str().unwrap();
    wait_for("the sandbox's port to go", Duration::from_secs(10), || {
        lab.api("GET", &format!("/v2.0/ports?device_id={uid}"), None)
            .1["ports"]
            .as_array()
            .is_some_and(|p| p.is_empty())
    });
    let tap = format!("tap{}", &port_id[..11]);
    let records = lab.nodes[1].state_dir.join("cni");
    wait_for("the veth and record to go", Duration::from_secs(10), || {
        let links = lab.nodes[1].ns.ip(&["-br", "link"]).unwrap_or_default();
        let left = std::fs::read_dir(&records)
            .map(|d| {
                d.flatten()
                    .any(|e| e.file_name().to_string_lossy().starts_with(&id))
            })
            .unwrap_or(false);
        !links.contains(&tap) && !left
    });
}
