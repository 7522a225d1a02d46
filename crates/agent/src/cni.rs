//! The agent's CNI server: `isthmus-cni` forwards each invocation here over a unix socket.
//! ADD creates (or takes from the pool) a Neutron port bound to this node, wires a veth whose
//! host side is the port's tap and whose pod side is `CNI_IFNAME` in the pod's namespace, and
//! answers once the reconciler has attached the tap under the port's security groups. Each
//! attachment is recorded in the state directory before the kernel is touched, so DEL, GC and
//! a failed ADD can always undo it, also across agent restarts.

use std::collections::{BTreeSet, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use isthmus_cni::{code, CniError, Command, Request};
use isthmus_dataplane::l2::{bridge_name, tap_name};
use isthmus_dataplane::pod::{self, PodInterface};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::task::JoinHandle;

use crate::netlink::{self, Reaper};
use crate::pool::{self, PoolKey};
use crate::reply::{self, Networks, PortRef};
use crate::{AgentError, Shared};
use isthmus_dataplane::pod::POD_DEVICE_OWNER;

/// How long an ADD waits for the port to reach this node's view and for its tap to be
/// attached; past that the runtime is told to try again (and nothing is left behind).
const READY_TIMEOUT: Duration = Duration::from_secs(15);

/// Plugin-specific error: the controller refused the port (bad network, no free address...).
const PORT_REFUSED: u32 = 100;
/// Plugin-specific error: CHECK found the attachment broken.
const ATTACHMENT_BROKEN: u32 = 101;

fn try_again(msg: impl Into<String>, details: impl std::fmt::Display) -> CniError {
    CniError::new(code::TRY_AGAIN_LATER, msg, details.to_string())
}

fn io_failure(msg: impl Into<String>, details: impl std::fmt::Display) -> CniError {
    CniError::new(code::IO_FAILURE, msg, details.to_string())
}

/// The CNI server of one agent.
pub(crate) struct Server {
    shared: Arc<Shared>,
    reaper: Arc<Reaper>,
    records: PathBuf,
    /// Renamings of pooled ports to their pods, still under way.
    naming: Mutex<HashMap<String, JoinHandle<()>>>,
    /// Teardowns after DEL, still under way, by record path.
    teardowns: Mutex<HashMap<PathBuf, JoinHandle<()>>>,
}

/// Binds the socket (replacing a stale one) and serves until the process ends.
pub(crate) async fn serve(shared: Arc<Shared>) -> Result<(), AgentError> {
    let socket = shared.config.cni_socket.clone();
    let records = shared.config.state_dir.join("cni");
    std::fs::create_dir_all(&records)?;
    if let Some(dir) = socket.parent() {
        std::fs::create_dir_all(dir)?;
    }
    match std::fs::remove_file(&socket) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.into()),
        _ => {}
    }
    let listener = UnixListener::bind(&socket)
        .map_err(|e| AgentError::Config(format!("cannot listen on {}: {e}", socket.display())))?;
    // Only root (the runtime) may attach containers.
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o600))?;
    }
    let in_use: BTreeSet<String> = std::fs::read_dir(&records)?
        .flatten()
        .filter_map(|e| std::fs::read(e.path()).ok())
        .filter_map(|raw| serde_json::from_slice::<Value>(&raw).ok())
        .filter_map(|r| r["port_id"].as_str().map(str::to_owned))
        .collect();
    pool::adopt(&shared, &in_use).await;
    tracing::info!("CNI socket {}", socket.display());
    let server = Arc::new(Server {
        reaper: Reaper::start(shared.netlink.clone()),
        shared,
        records,
        naming: Mutex::default(),
        teardowns: Mutex::default(),
    });
    // Teardowns a previous run accepted but did not finish.
    let pending: Vec<PathBuf> = std::fs::read_dir(&server.records)?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().and_then(|e| e.to_str()) == Some("json"))
        .collect();
    for path in pending {
        if let Ok(Some(record)) = server.load(&path) {
            if record.value["deleting"] == true {
                server.clone().tear_down(record);
            }
        }
    }
    loop {
        let (stream, _) = listener.accept().await?;
        let server = server.clone();
        tokio::spawn(async move {
            if let Err(e) = server.connection(stream).await {
                tracing::warn!("CNI connection: {e}");
            }
        });
    }
}

/// An attachment as recorded in the state directory.
/// Waits until the port, its network and subnets are in this node's view.
pub(crate) async fn wait_interface(
    shared: &Shared,
    port_id: &str,
) -> Result<PodInterface, CniError> {
    let mut revisions = shared.revisions.subscribe();
    let wait = async {
        loop {
            // Only a whole batch: half of one may hold the port but not yet its network's
            // DHCP port (the pod's resolver).
            let derived = {
                let view = shared.view();
                view.settled
                    .then(|| pod::pod_interface(&view, port_id).ok())
                    .flatten()
            };
            if let Some(iface) = derived {
                return Ok(iface);
            }
            if revisions.changed().await.is_err() {
                return Err(try_again("the agent is stopping", ""));
            }
        }
    };
    tokio::time::timeout(READY_TIMEOUT, wait)
        .await
        .map_err(|_| {
            let why = pod::pod_interface(&shared.view(), port_id)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            try_again("the port did not reach this node's view in time", why)
        })?
}

/// Waits until the reconciler reports the port's tap attached (filters in place).
pub(crate) async fn wait_plugged(shared: &Shared, port_id: &str) -> Result<(), CniError> {
    let mut plugged = shared.plugged.subscribe();
    shared.urgent.notify_one();
    tokio::time::timeout(READY_TIMEOUT, plugged.wait_for(|p| p.contains(port_id)))
        .await
        .map_err(|_| try_again("the port's tap was not attached in time", port_id))?
        .map_err(|_| try_again("the agent is stopping", ""))?;
    Ok(())
}

struct Record {
    path: PathBuf,
    value: Value,
}

impl Record {
    fn port_id(&self) -> &str {
        self.value["port_id"].as_str().unwrap_or_default()
    }

    fn pool_key(&self) -> PoolKey {
        let text = |k: &str| self.value[k].as_str().unwrap_or_default().to_owned();
        (text("network_id"), text("project_id"))
    }
}

impl Server {
    fn naming(&self) -> MutexGuard<'_, HashMap<String, JoinHandle<()>>> {
        self.naming.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn teardowns(&self) -> MutexGuard<'_, HashMap<PathBuf, JoinHandle<()>>> {
        self.teardowns.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Undoes an attachment in the background (deleting a veth waits out an RCU grace
    /// period in the kernel, tens of milliseconds, which the runtime need not wait for).
    /// The record, marked `deleting`, stays until it is done, so an agent restart finishes
    /// the job; an ADD of the same attachment waits for it.
    fn tear_down(self: Arc<Self>, record: Record) {
        let path = record.path.clone();
        let server = self.clone();
        let task = tokio::spawn(async move {
            if let Err(e) = server.undo(&record).await {
                tracing::warn!(
                    "CNI: tearing down {}: {e} (retried at the next DEL, GC or agent start)",
                    record.path.display()
                );
            }
            server.teardowns().remove(&record.path);
        });
        self.teardowns().insert(path, task);
    }

    /// Waits for a teardown of `path` still under way.
    async fn settle(&self, path: &Path) {
        let task = self.teardowns().remove(path);
        if let Some(task) = task {
            let _ = task.await;
        }
    }

    async fn connection(self: &Arc<Self>, stream: UnixStream) -> Result<(), AgentError> {
        let accepted = Instant::now();
        let (read, mut write) = stream.into_split();
        let mut line = String::new();
        BufReader::new(read).read_line(&mut line).await?;
        let outcome = match serde_json::from_str::<Value>(&line) {
            Ok(v) => match Request::from_json(&v) {
                Ok(request) => self.dispatch(&request).await,
                Err(e) => Err(e),
            },
            Err(e) => Err(CniError::new(
                code::DECODE_FAILURE,
                "unreadable request",
                e.to_string(),
            )),
        };
        if let Err(e) = &outcome {
            tracing::warn!("CNI: {e}");
        }
        let mut answer = isthmus_cni::answer(outcome).to_string();
        answer.push('\n');
        write.write_all(answer.as_bytes()).await?;
        write.shutdown().await?;
        tracing::debug!(
            total_us = accepted.elapsed().as_micros() as u64,
            "CNI request answered"
        );
        Ok(())
    }

    async fn dispatch(self: &Arc<Self>, request: &Request) -> Result<Value, CniError> {
        match request.command {
            Command::Add => self.add(request).await,
            Command::Del => self.del(request).await.map(|()| Value::Null),
            Command::Check => self.check(request).await.map(|()| Value::Null),
            Command::Status => self.status().map(|()| Value::Null),
            Command::Gc => self.gc(request).await.map(|()| Value::Null),
            Command::Version => Ok(isthmus_cni::version_answer(&request.version())),
        }
    }

    fn status(&self) -> Result<(), CniError> {
        if self.shared.view().synced {
            Ok(())
        } else {
            Err(CniError::new(
                code::NOT_AVAILABLE,
                "the isthmus agent has not synced with the controller yet",
                "",
            ))
        }
    }

    fn record_path(&self, container_id: &str, ifname: &str) -> PathBuf {
        self.records.join(format!("{container_id}@{ifname}.json"))
    }

    fn load(&self, path: &Path) -> Result<Option<Record>, CniError> {
        match std::fs::read(path) {
            Ok(raw) => serde_json::from_slice(&raw)
                .map(|value| {
                    Some(Record {
                        path: path.to_owned(),
                        value,
                    })
                })
                .map_err(|e| io_failure(format!("corrupt record {}", path.display()), e)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_failure("cannot read the attachment record", e)),
        }
    }

    /// Writes a record atomically (a crash leaves the old one or the new one).
    fn save(&self, path: &Path, value: &Value) -> Result<(), CniError> {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, value.to_string())
            .and_then(|()| std::fs::rename(&tmp, path))
            .map_err(|e| io_failure("cannot write the attachment record", e))
    }

    async fn add(&self, request: &Request) -> Result<Value, CniError> {
        let started = Instant::now();
        let path = self.record_path(&request.container_id, &request.ifname);
        self.settle(&path).await;
        // A repeated ADD (the runtime retrying after a timeout) answers what the first did.
        if let Some(record) = self.load(&path)? {
            if !record.value["result"].is_null() && record.value["deleting"] != true {
                return Ok(record.value["result"].clone());
            }
            self.undo(&record).await?;
        }
        let netns = File::open(&request.netns).map_err(|e| {
            CniError::new(
                code::UNKNOWN_CONTAINER,
                "the network namespace does not exist",
                format!("{}: {e}", request.netns),
            )
        })?;
        self.status()
            .map_err(|e| try_again(e.msg, "the agent is starting"))?;
        let Selected {
            key,
            groups,
            search,
        } = self.select_network(request).await?;
        // Pools hold ports under their project's default group: a namespace bound to other
        // groups gets a port made with them, never one that is open for a moment.
        let pooled = if groups.is_empty() {
            let filtered = self.shared.filtered.borrow();
            self.shared.pools.take(&key, &filtered)
        } else {
            None
        };
        let port_id = match &pooled {
            Some(id) => id.clone(),
            None => self.create_port(request, &key, &groups).await?.id,
        };
        let mut phases = Phases::new(started);
        phases.mark("port");
        // After this pod's own port, so a pod that found the pool empty still gets the
        // lowest free address.
        pool::refill(&self.shared, &key);
        let mut record = json!({
            "container_id": request.container_id,
            "ifname": request.ifname,
            "netns": request.netns,
            "network": request.config.get("name"),
            "network_id": key.0,
            "project_id": key.1,
            "port_id": port_id,
            "result": null,
        });
        let saved = self.save(&path, &record);
        let wired = match saved {
            Ok(()) => self
                .wire(request, &port_id, netns, &mut phases)
                .await
                .map(|result| pod::with_search(result, &search)),
            Err(e) => Err(e),
        };
        match wired {
            Ok(result) => {
                record["result"] = result.clone();
                self.save(&path, &record)?;
                phases.mark("saved");
                tracing::debug!(
                    container = %request.container_id,
                    port = %port_id,
                    pooled = pooled.is_some(),
                    phases = %phases,
                    "CNI ADD"
                );
                if pooled.is_some() {
                    // The port becomes the pod's in the API after the pod has its network.
                    let body = json!({"port": self.identity(request)});
                    let shared = self.shared.clone();
                    let id = port_id.clone();
                    let naming = tokio::spawn(async move {
                        let path = format!("/v2.0/ports/{port_id}");
                        match shared
                            .config
                            .controller
                            .request("PUT", &path, Some(&body))
                            .await
                        {
                            Ok((200, _)) => {}
                            Ok((status, answer)) => tracing::warn!(
                                "naming pod port {port_id} answered {status}: {answer}"
                            ),
                            Err(e) => tracing::warn!("naming pod port {port_id}: {e}"),
                        }
                    });
                    self.naming().insert(id, naming);
                }
                Ok(result)
            }
            Err(e) => {
                let record = Record {
                    path,
                    value: record,
                };
                if let Err(undo) = self.undo(&record).await {
                    tracing::warn!("CNI: undoing a failed ADD: {undo}");
                }
                Err(e)
            }
        }
    }

    /// Plugs port `port_id` into the pod and waits for the data plane.
    async fn wire(
        &self,
        request: &Request,
        port_id: &str,
        netns: File,
        phases: &mut Phases,
    ) -> Result<Value, CniError> {
        let iface = wait_interface(&self.shared, port_id).await?;
        phases.mark("view");
        let tap = tap_name(port_id);
        self.shared
            .netlink
            .add_veth(&tap, &request.ifname, &iface.mac, iface.mtu, &netns)
            .await
            .map_err(|e| io_failure("cannot create the pod's veth", e))?;
        phases.mark("veth");
        netlink::configure_pod(netns, request.ifname.clone(), iface.clone())
            .await
            .map_err(|e| io_failure("cannot configure the pod's interface", e))?;
        phases.mark("pod");
        // A port whose filters are already in place (a pool port) is attached right here;
        // any other waits for the reconciler, which installs its filters first.
        let network = self
            .shared
            .view()
            .ports
            .get(port_id)
            .map(|p| (p.network_id.clone(), p.admin_state_up));
        let filtered = self.shared.filtered.borrow().contains(port_id);
        let attached = match network {
            Some((network, up)) if filtered => {
                let netlink = &self.shared.netlink;
                let bridge = bridge_name(&network);
                netlink.without_ipv6_addresses(&tap).await.is_ok()
                    && netlink
                        .set_link(&tap, Some((&bridge, up)), Some(iface.mtu))
                        .await
                        .is_ok()
            }
            _ => false,
        };
        if !attached {
            wait_plugged(&self.shared, port_id).await?;
        }
        phases.mark(if attached { "attach" } else { "plugged" });
        Ok(pod::cni_result(
            &iface,
            &tap,
            &request.ifname,
            &request.netns,
        ))
    }

    /// The network and project for this pod, its security groups (empty: the project's
    /// default) and DNS search domains: the configuration's `network`, else the binding of the
    /// pod's namespace, else the agent's default pod network.
    async fn select_network(&self, request: &Request) -> Result<Selected, CniError> {
        let text = |k: &str| request.config.get(k).and_then(Value::as_str);
        let project = text("project").map(str::to_owned);
        if let Some(network) = text("network") {
            return Ok(Selected {
                key: self.resolve_network(network, project).await?,
                groups: Vec::new(),
                search: Vec::new(),
            });
        }
        if let Some(namespace) = request.args.get("K8S_POD_NAMESPACE") {
            // Bindings come with the node's view.
            let binding = self
                .shared
                .view()
                .namespace_bindings
                .get(namespace)
                .cloned();
            if let Some(binding) = binding {
                let network = &binding.network_id;
                let project = project.or(Some(binding.project_id));
                let groups = binding.security_group_ids;
                let search = binding
                    .cluster_domain
                    .as_deref()
                    .map(|domain| pod::cluster_search(namespace, domain))
                    .unwrap_or_default();
                return Ok(Selected {
                    key: self.resolve_network(network, project).await?,
                    groups,
                    search,
                });
            }
        }
        match &self.shared.config.default_pod_network {
            Some(network) => Ok(Selected {
                key: self.resolve_network(network, project).await?,
                groups: Vec::new(),
                search: Vec::new(),
            }),
            None => Err(CniError::new(
                code::INVALID_CONFIG,
                "no network for this pod",
                "the configuration names no \"network\", the pod's namespace has no binding and the agent has no --default-pod-network",
            )),
        }
    }

    /// A network by id or name (a name must be unambiguous, preferring the project's own):
    /// from this node's view when the network is there, else from the controller.
    async fn resolve_network(
        &self,
        network: &str,
        project: Option<String>,
    ) -> Result<(String, String), CniError> {
        let local: Vec<(String, String)> = self
            .shared
            .view()
            .networks
            .values()
            .filter(|n| n.id == network || n.name == network)
            .filter(|n| {
                project
                    .as_ref()
                    .is_none_or(|p| n.id == network || &n.project_id == p)
            })
            .map(|n| (n.id.clone(), n.project_id.clone()))
            .collect();
        if let [(id, owner)] = local.as_slice() {
            return Ok((id.clone(), project.unwrap_or_else(|| owner.clone())));
        }
        let (_, by_id) = self
            .controller(
                "GET",
                &format!("/v2.0/networks?id={}", query_escape(network)),
                None,
            )
            .await?;
        let networks = |answer: &Value| {
            reply::read::<Networks>(answer, None)
                .map(|n| n.networks)
                .map_err(|why| try_again("the controller's reply to a network lookup", why))
        };
        let mut found = networks(&by_id)?;
        if found.is_empty() {
            let (_, by_name) = self
                .controller(
                    "GET",
                    &format!("/v2.0/networks?name={}", query_escape(network)),
                    None,
                )
                .await?;
            found = networks(&by_name)?;
        }
        if found.len() > 1 {
            if let Some(p) = &project {
                found.retain(|n| &n.project_id == p);
            }
        }
        match found.as_slice() {
            [net] => Ok((
                net.id.clone(),
                project.unwrap_or_else(|| net.project_id.clone()),
            )),
            [] => Err(CniError::new(
                code::INVALID_CONFIG,
                format!("unknown network '{network}'"),
                "no network has that id or name",
            )),
            _ => Err(CniError::new(
                code::INVALID_CONFIG,
                format!("ambiguous network name '{network}'"),
                "several networks have that name; use its id or set \"project\"",
            )),
        }
    }

    /// The attributes that make a port this pod's: `<namespace>/<pod>`, the pod UID (or the
    /// container id), the attachment in `binding:profile`, and the DNS name `<pod>.<namespace>`
    /// (so instances resolve `<pod>.<namespace>.<domain>`) when both are DNS labels.
    fn identity(&self, request: &Request) -> Value {
        let arg = |k: &str| request.args.get(k).filter(|v| !v.is_empty());
        let (namespace, pod) = (arg("K8S_POD_NAMESPACE"), arg("K8S_POD_NAME"));
        let name = match (namespace, pod) {
            (Some(ns), Some(pod)) => format!("{ns}/{pod}"),
            _ => request.container_id.clone(),
        };
        let device_id = arg("K8S_POD_UID").unwrap_or(&request.container_id);
        let mut identity = json!({
            "name": name,
            "device_id": device_id,
            "binding:profile": {"cni_container_id": request.container_id, "cni_ifname": request.ifname},
        });
        if let (Some(ns), Some(pod)) = (namespace, pod) {
            let dns_name = format!("{pod}.{ns}");
            if pod_dns_name_ok(&dns_name) {
                identity["dns_name"] = json!(dns_name);
            }
        }
        identity
    }

    async fn create_port(
        &self,
        request: &Request,
        (network_id, project_id): &PoolKey,
        groups: &[String],
    ) -> Result<PortRef, CniError> {
        let mut port = self.identity(request);
        port["network_id"] = json!(network_id);
        port["project_id"] = json!(project_id);
        if !groups.is_empty() {
            port["security_groups"] = json!(groups);
        }
        port["device_owner"] = json!(POD_DEVICE_OWNER);
        port["binding:host_id"] = json!(self.shared.config.node);
        let body = json!({ "port": port });
        let (status, answer) = self.controller("POST", "/v2.0/ports", Some(&body)).await?;
        match status {
            201 => reply::read(&answer, Some("port"))
                .map_err(|why| try_again("the controller's reply to a port create", why)),
            s if s >= 500 => Err(try_again(
                "the controller failed to create the port",
                answer,
            )),
            _ => Err(CniError::new(
                PORT_REFUSED,
                "the controller refused the port",
                answer["NeutronError"]["message"]
                    .as_str()
                    .map(str::to_owned)
                    .unwrap_or_else(|| answer.to_string()),
            )),
        }
    }

    async fn controller(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(u16, Value), CniError> {
        self.shared
            .config
            .controller
            .request(method, path, body)
            .await
            .map_err(|e| try_again("the controller is not reachable", e))
    }

    /// Removes what an attachment holds: the veth, the port, then the record. Anything
    /// already gone is fine; a controller that cannot be reached keeps the record so the
    /// runtime's retry finishes the job.
    async fn undo(&self, record: &Record) -> Result<(), CniError> {
        let port_id = record.port_id();
        // A pooled port's renaming must land before the port is cleaned or deleted.
        let naming = self.naming().remove(port_id);
        if let Some(naming) = naming {
            let _ = naming.await;
        }
        if !port_id.is_empty() {
            self.reaper
                .delete(&tap_name(port_id))
                .await
                .map_err(|e| io_failure("cannot delete the pod's veth", e))?;
            if !self.return_to_pool(record).await? {
                let (status, answer) = self
                    .controller("DELETE", &format!("/v2.0/ports/{port_id}"), None)
                    .await?;
                if status != 204 && status != 404 {
                    return Err(try_again("the controller did not delete the port", answer));
                }
            }
        }
        match std::fs::remove_file(&record.path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(io_failure("cannot remove the attachment record", e))
            }
            _ => Ok(()),
        }
    }

    /// Cleans a port (pool name, marker, no attachment) and puts it back in its pool when
    /// that pool has room; `false` when it should be deleted instead.
    async fn return_to_pool(&self, record: &Record) -> Result<bool, CniError> {
        let key = record.pool_key();
        if key.0.is_empty() || !self.shared.pools.has_room(&key) {
            return Ok(false);
        }
        let port_id = record.port_id().to_owned();
        let body = json!({"port": pool::pool_attributes(&self.shared)});
        let (status, _) = self
            .controller("PUT", &format!("/v2.0/ports/{port_id}"), Some(&body))
            .await?;
        Ok(status == 200 && self.shared.pools.give_back(&key, port_id))
    }

    async fn del(self: &Arc<Self>, request: &Request) -> Result<(), CniError> {
        let path = self.record_path(&request.container_id, &request.ifname);
        if self.teardowns().contains_key(&path) {
            return Ok(());
        }
        let Some(mut record) = self.load(&path)? else {
            return Ok(());
        };
        record.value["deleting"] = Value::Bool(true);
        self.save(&path, &record.value)?;
        self.clone().tear_down(record);
        Ok(())
    }

    async fn check(&self, request: &Request) -> Result<(), CniError> {
        let broken = |what: String| CniError::new(ATTACHMENT_BROKEN, what, "");
        let path = self.record_path(&request.container_id, &request.ifname);
        let record = self
            .load(&path)?
            .filter(|r| !r.value["result"].is_null() && r.value["deleting"] != true)
            .ok_or_else(|| {
                broken(format!(
                    "no attachment {}/{}",
                    request.container_id, request.ifname
                ))
            })?;
        let port_id = record.port_id();
        let iface =
            pod::pod_interface(&self.shared.view(), port_id).map_err(|e| broken(e.to_string()))?;
        if !self.shared.plugged.borrow().contains(port_id) {
            return Err(broken(format!("the tap of port {port_id} is not attached")));
        }
        let netns = File::open(&request.netns).map_err(|e| {
            CniError::new(
                code::UNKNOWN_CONTAINER,
                "the network namespace does not exist",
                e.to_string(),
            )
        })?;
        let link = netlink::read_pod_link(netns, request.ifname.clone())
            .await
            .map_err(|e| io_failure("cannot read the pod's interface", e))?
            .ok_or_else(|| broken(format!("{} is missing in the pod", request.ifname)))?;
        if !link.up || !link.mac.eq_ignore_ascii_case(&iface.mac) {
            return Err(broken(format!(
                "{} is {} with MAC {}, expected up with {}",
                request.ifname,
                if link.up { "up" } else { "down" },
                link.mac,
                iface.mac
            )));
        }
        for a in &iface.addresses {
            if !link.addresses.contains(&a.ip) {
                return Err(broken(format!("{} lacks {}", request.ifname, a.ip)));
            }
        }
        Ok(())
    }

    /// Removes this network's attachments that the runtime no longer lists as valid.
    async fn gc(&self, request: &Request) -> Result<(), CniError> {
        let valid: BTreeSet<(String, String)> = request
            .config
            .get("cni.dev/valid-attachments")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .map(|a| {
                let text = |k: &str| a[k].as_str().unwrap_or_default().to_owned();
                (text("containerID"), text("ifname"))
            })
            .collect();
        let network = request.config.get("name").cloned().unwrap_or(Value::Null);
        let entries = std::fs::read_dir(&self.records)
            .map_err(|e| io_failure("cannot list attachment records", e))?;
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().and_then(|e| e.to_str()) != Some("json") {
                continue;
            }
            self.settle(&path).await;
            let Some(record) = self.load(&path)? else {
                continue;
            };
            let key = (
                record.value["container_id"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                record.value["ifname"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            );
            if record.value["network"] == network && !valid.contains(&key) {
                self.undo(&record).await?;
            }
        }
        Ok(())
    }
}

/// Percent-encodes a query value.
fn query_escape(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Whether a pod's `<pod>.<namespace>` makes a DNS name the controller takes (its own
/// `dns_name` check), lower case as Kubernetes names are, with room for the domain. Anything
/// else gets no name rather than a failed ADD.
fn pod_dns_name_ok(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 200
        && !name.bytes().any(|b| b.is_ascii_uppercase())
        && isthmus_model::port::check_dns_name(name).is_ok()
}

/// Where a pod goes: its network and project, its security groups (empty: the project's
/// default) and the DNS search domains of its Kubernetes cluster.
struct Selected {
    key: PoolKey,
    groups: Vec<String>,
    search: Vec<String>,
}

/// How long each step of an ADD took (logged at debug level: where a slow ADD spent its time).
struct Phases {
    last: Instant,
    spent: Vec<(&'static str, Duration)>,
}

impl Phases {
    fn new(started: Instant) -> Self {
        Phases {
            last: started,
            spent: Vec::new(),
        }
    }

    /// Ends the step `name` now.
    fn mark(&mut self, name: &'static str) {
        let now = Instant::now();
        self.spent.push((name, now - self.last));
        self.last = now;
    }
}

impl std::fmt::Display for Phases {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, (name, took)) in self.spent.iter().enumerate() {
            let sep = if i == 0 { "" } else { " " };
            write!(f, "{sep}{name}={:.1}ms", took.as_secs_f64() * 1e3)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::pod_dns_name_ok;

    #[test]
    fn pod_dns_names_are_labels_only() {
        assert!(pod_dns_name_ok("web.demo"));
        assert!(pod_dns_name_ok("web-0.team-b"));
        for bad in ["Web.demo", "-web.demo", "web..demo", "we_b.demo", ""] {
            assert!(!pod_dns_name_ok(bad), "{bad}");
        }
        assert!(!pod_dns_name_ok(&format!("{}.demo", "a".repeat(64))));
    }

    use super::query_escape;

    #[test]
    fn escapes_query_values() {
        assert_eq!(query_escape("seamless"), "seamless");
        assert_eq!(query_escape("a b/c&d"), "a%20b%2Fc%26d");
    }
}
