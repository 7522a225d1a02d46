//! The nested CNI: `isthmus-cni` inside a VM (a Kubernetes node that is itself a VM) asks the
//! agent of the VM's node for a subport of the VM's trunk per pod attachment. It connects to
//! 169.254.169.254:9697 in the VM's network, which lands in that network's DHCP namespace on
//! this node, and speaks the CNI socket's one-line protocol. Who asks is known the way the
//! metadata proxy knows it: the connection's source address on that network is a port of
//! this node, and anti-spoofing guarantees it is that port's. The agent makes the subport
//! through the controller (which checks that the port is a trunk parent), waits until it is
//! plugged here, and answers with the CNI result and the VLAN the plugin tags in the guest.
//!
//! Like bare-metal pods' ports, subports are pooled: per (parent port, network) the agent
//! keeps `--pool-size` subports made ahead, already on the trunk and wired here, so an ADD
//! that finds one only names it after its pod. The pool is kept in `--state-dir`
//! (`nested-pool.json`) across agent restarts; an entry whose port went meanwhile is dropped
//! when it is taken.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use isthmus_cni::{code, CniError, Command, Request};
use isthmus_dataplane::pod;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::cni::{wait_interface, wait_plugged};
use crate::metadata::Instances;
use crate::Shared;

/// Largest request line.
const REQUEST_LIMIT: u64 = 64 * 1024;
/// How long a client gets to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// The controller refused the subport (as the CNI socket's code for a refused port).
const SUBPORT_REFUSED: u32 = 100;

/// `cni_container_id` of pooled subports (followed by a unique suffix).
const POOL_CONTAINER: &str = "isthmus-pool-";

/// A subport ready in a pool: its port and VLAN.
type Ready = (String, u64);
/// (parent port, network id).
type PoolKey = (String, String);

/// What every DHCP namespace's nested CNI listener shares.
pub struct Nested {
    shared: Weak<Shared>,
    instances: watch::Receiver<Arc<Instances>>,
    /// Subports kept ready per pool (0: none).
    pool_size: usize,
    pools: Mutex<BTreeMap<PoolKey, Vec<Ready>>>,
    /// Pools being topped up (one refill at a time per pool).
    refilling: Mutex<BTreeSet<PoolKey>>,
    /// Where the pools are kept.
    pool_file: PathBuf,
}

impl Nested {
    /// A handler for `shared`'s node, knowing its ports from `instances`, keeping `pool_size`
    /// subports ready per pool, in `state_dir`.
    pub fn new(
        shared: Weak<Shared>,
        instances: watch::Receiver<Arc<Instances>>,
        pool_size: usize,
        state_dir: &std::path::Path,
    ) -> Nested {
        let pool_file = state_dir.join("nested-pool.json");
        let pools = std::fs::read(&pool_file)
            .ok()
            .and_then(|raw| serde_json::from_slice::<Vec<(PoolKey, Vec<Ready>)>>(&raw).ok())
            .map(|entries| entries.into_iter().collect())
            .unwrap_or_default();
        Nested {
            shared,
            instances,
            pool_size,
            pools: Mutex::new(pools),
            refilling: Mutex::default(),
            pool_file,
        }
    }

    fn pools(&self) -> MutexGuard<'_, BTreeMap<PoolKey, Vec<Ready>>> {
        self.pools.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes a ready subport of `key`, keeping the pool file in step.
    fn take(&self, key: &PoolKey) -> Option<Ready> {
        let mut pools = self.pools();
        let taken = pools.get_mut(key).and_then(Vec::pop);
        if taken.is_some() {
            self.save(&pools);
        }
        taken
    }

    fn put(&self, key: &PoolKey, ready: Ready) {
        let mut pools = self.pools();
        pools.entry(key.clone()).or_default().push(ready);
        self.save(&pools);
    }

    fn save(&self, pools: &BTreeMap<PoolKey, Vec<Ready>>) {
        let entries: Vec<(&PoolKey, &Vec<Ready>)> = pools.iter().collect();
        let tmp = self.pool_file.with_extension("tmp");
        let written = serde_json::to_vec(&entries)
            .map_err(std::io::Error::other)
            .and_then(|raw| std::fs::write(&tmp, raw))
            .and_then(|()| std::fs::rename(&tmp, &self.pool_file));
        if let Err(e) = written {
            tracing::warn!("writing {}: {e}", self.pool_file.display());
        }
    }
}

/// Serves the nested CNI of `network_id`'s DHCP namespace on `listener`.
pub async fn serve(listener: TcpListener, network_id: String, nested: Arc<Nested>) {
    let network = Arc::new(network_id);
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!("nested CNI accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let (nested, network) = (nested.clone(), network.clone());
        tokio::spawn(async move {
            if let Err(e) = connection(&nested, &network, peer, stream).await {
                tracing::debug!("nested CNI connection from {peer}: {e}");
            }
        });
    }
}

async fn connection(
    nested: &Nested,
    network: &str,
    peer: SocketAddr,
    stream: TcpStream,
) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    let read = tokio::time::timeout(
        REQUEST_TIMEOUT,
        BufReader::new(read.take(REQUEST_LIMIT)).read_line(&mut line),
    )
    .await;
    let outcome = match read {
        Ok(Ok(_)) => handle(nested, network, peer.ip(), &line).await,
        Ok(Err(e)) => Err(CniError::new(
            code::IO_FAILURE,
            "unreadable request",
            e.to_string(),
        )),
        Err(_) => Err(CniError::new(code::IO_FAILURE, "no request in time", "")),
    };
    if let Err(e) = &outcome {
        tracing::warn!("nested CNI from {peer}: {e}");
    }
    let mut answer = match outcome {
        Ok((result, wiring)) => {
            let mut answer = isthmus_cni::answer(Ok(result));
            if let Some(wiring) = wiring {
                answer["nested"] = wiring;
            }
            answer
        }
        Err(e) => isthmus_cni::answer(Err(e)),
    }
    .to_string();
    answer.push('\n');
    write.write_all(answer.as_bytes()).await?;
    write.shutdown().await
}

/// One request: the CNI result, and for an ADD what the plugin sets up in the guest.
async fn handle(
    nested: &Nested,
    network: &str,
    from: IpAddr,
    line: &str,
) -> Result<(Value, Option<Value>), CniError> {
    let value: Value = serde_json::from_str(line)
        .map_err(|e| CniError::new(code::DECODE_FAILURE, "unreadable request", e.to_string()))?;
    let request = Request::from_json(&value)?;
    // Both go into the controller's URL: the spec's characters only.
    let plain = |s: &str| {
        s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
    };
    if !plain(&request.ifname) {
        return Err(CniError::new(
            code::INVALID_ENVIRONMENT,
            "a nested attachment's ifname is letters, digits, '_', '.' and '-'",
            "",
        ));
    }
    // IPv4 clients of a dual-stack socket arrive as v4-mapped addresses.
    let from = match from {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(from, IpAddr::V4),
        v4 => v4,
    };
    let parent = nested
        .instances
        .borrow()
        .get(&(network.to_owned(), from))
        .map(|i| i.port_id.clone())
        .ok_or_else(|| {
            CniError::new(
                code::NOT_AVAILABLE,
                "no port of this node has the address the request came from",
                from.to_string(),
            )
        })?;
    let shared = nested
        .shared
        .upgrade()
        .ok_or_else(|| CniError::new(code::TRY_AGAIN_LATER, "the agent is stopping", ""))?;
    match request.command {
        Command::Add => add(nested, &shared, &parent, &request).await,
        Command::Del => release(&shared, &parent, &request)
            .await
            .map(|()| (Value::Null, None)),
        Command::Status | Command::Check | Command::Gc => {
            if shared.view().synced {
                Ok((Value::Null, None))
            } else {
                Err(CniError::new(
                    code::NOT_AVAILABLE,
                    "the isthmus agent has not synced with the controller yet",
                    "",
                ))
            }
        }
        Command::Version => Ok((isthmus_cni::version_answer(&request.version()), None)),
    }
}

/// ADD: the attachment's subport (from the pool, made, or found again for a retried ADD),
/// once plugged.
async fn add(
    nested: &Nested,
    shared: &Arc<Shared>,
    parent: &str,
    request: &Request,
) -> Result<(Value, Option<Value>), CniError> {
    let network = request
        .config
        .get("network")
        .and_then(Value::as_str)
        .ok_or_else(|| {
            CniError::new(
                code::INVALID_CONFIG,
                "a nested attachment names its network (\"network\")",
                "",
            )
        })?;
    let name = match (
        request.args.get("K8S_POD_NAMESPACE"),
        request.args.get("K8S_POD_NAME"),
    ) {
        (Some(namespace), Some(pod)) => format!("{namespace}/{pod}"),
        _ => request.container_id.clone(),
    };
    let attachment = (
        request.container_id.as_str(),
        request.ifname.as_str(),
        name.as_str(),
    );
    // A pooled subport of this network, when the view tells which network it is: offered to
    // the controller, which gives it to this attachment unless the attachment has one already
    // (a retried ADD).
    let key = local_network(shared, network).map(|id| (parent.to_owned(), id));
    let offered = key.as_ref().and_then(|k| nested.take(k));
    let (made, outcome) = make(
        shared,
        parent,
        network,
        attachment,
        offered.as_ref().map(|(port, _)| port.as_str()),
    )
    .await
    .inspect_err(|_| {
        if let (Some(key), Some(ready)) = (&key, &offered) {
            nested.put(key, ready.clone());
        }
    })?;
    if let (Some(key), Some(ready), Some("kept")) = (&key, offered, outcome.as_deref()) {
        nested.put(key, ready);
    }
    let (port_id, vlan, network_id) = made;
    refill(nested, shared.clone(), (parent.to_owned(), network_id));
    let iface = wait_interface(shared, &port_id).await?;
    wait_plugged(shared, &port_id).await?;
    let mut result = pod::cni_result(&iface, "", &request.ifname, &request.netns);
    // The guest has no host-side device of this attachment: only the pod's interface.
    if let Some(interfaces) = result["interfaces"].as_array_mut() {
        interfaces.remove(0);
    }
    if let Some(ips) = result["ips"].as_array_mut() {
        for ip in ips {
            ip["interface"] = json!(0);
        }
    }
    Ok((
        result,
        Some(json!({"vlan": vlan, "mtu": iface.mtu, "port_id": port_id})),
    ))
}

/// The id of the network `reference` (an id, or a name only one network has) names in this
/// node's view; `None` when the view cannot tell (the controller resolves it then).
fn local_network(shared: &Shared, reference: &str) -> Option<String> {
    let view = shared.view();
    let mut found = view
        .networks
        .values()
        .filter(|n| n.id == reference || n.name == reference);
    match (found.next(), found.next()) {
        (Some(one), None) => Some(one.id.clone()),
        _ => None,
    }
}

/// Has the controller make (or find again) the subport of an attachment, offering the pooled
/// subport `pooled`: (port, VLAN, network id) and what became of the offer (`"taken"`,
/// `"kept"`, `"invalid"`; `None` without an offer).
async fn make(
    shared: &Shared,
    parent: &str,
    network: &str,
    attachment: (&str, &str, &str),
    pooled: Option<&str>,
) -> Result<((String, u64, String), Option<String>), CniError> {
    let (container_id, ifname, name) = attachment;
    let mut body = json!({"subport": {
        "network": network,
        "container_id": container_id,
        "ifname": ifname,
        "name": name,
    }});
    if let Some(pooled) = pooled {
        body["subport"]["pooled"] = json!(pooled);
    }
    let path = format!("/isthmus/v1/ports/{parent}/subports");
    let answer = controller(shared, "POST", &path, Some(&body)).await?;
    let subport = &answer["subport"];
    let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
    Ok((
        (
            text(&subport["port"]["id"]),
            subport["segmentation_id"].as_u64().unwrap_or_default(),
            text(&subport["port"]["network_id"]),
        ),
        subport["pool"].as_str().map(str::to_owned),
    ))
}

/// Tops up the pool of `key` in the background.
fn refill(nested: &Nested, shared: Arc<Shared>, key: PoolKey) {
    let size = nested.pool_size;
    let have = nested.pools().get(&key).map_or(0, Vec::len);
    if size == 0 || have >= size {
        return;
    }
    if !nested
        .refilling
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(key.clone())
    {
        return;
    }
    let Some(handler) = shared.services.nested() else {
        return;
    };
    tokio::spawn(async move {
        for n in have..size {
            let container = format!("{POOL_CONTAINER}{}", unique());
            let attachment = (container.as_str(), "pool", "isthmus-pool");
            match make(&shared, &key.0, &key.1, attachment, None).await {
                Ok(((port, vlan, _), _)) => handler.put(&key, (port, vlan)),
                Err(e) => {
                    tracing::warn!(
                        "subport pool of {} on {}: {e} ({n} of {size})",
                        key.0,
                        key.1
                    );
                    break;
                }
            }
        }
        handler
            .refilling
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&key);
    });
}

/// A suffix no other pool container id of this node has.
fn unique() -> String {
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{nanos:x}-{n}")
}

/// A controller call that must succeed (2xx): its answer, or the CNI error for the plugin.
async fn controller(
    shared: &Shared,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> Result<Value, CniError> {
    // The asker is a guest: it hears Neutron's own messages, never how the controller is
    // reached (that is logged here).
    let (status, answer) = shared
        .config
        .controller
        .request(method, path, body)
        .await
        .map_err(|e| {
            tracing::warn!("nested CNI: {method} {path}: {e}");
            CniError::new(code::TRY_AGAIN_LATER, "the controller is not reachable", "")
        })?;
    if (200..300).contains(&status) {
        return Ok(answer);
    }
    let why = answer["NeutronError"]["message"]
        .as_str()
        .unwrap_or_default();
    Err(CniError::new(
        SUBPORT_REFUSED,
        format!("the controller refused the subport ({status})"),
        why,
    ))
}

/// DEL: the attachment's subport leaves the trunk and goes (nothing there is fine).
async fn release(shared: &Shared, parent: &str, request: &Request) -> Result<(), CniError> {
    let path = format!(
        "/isthmus/v1/ports/{parent}/subports/{}/{}",
        request.container_id, request.ifname
    );
    controller(shared, "DELETE", &path, None).await.map(|_| ())
}
