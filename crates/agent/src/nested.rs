//! The nested CNI: `isthmus-cni` inside a VM (a Kubernetes node that is itself a VM) asks the
//! agent of the VM's node for a subport of the VM's trunk per pod attachment. It connects to
//! 169.254.169.254:9697 in the VM's network, which lands in that network's DHCP namespace on
//! this node, and speaks the CNI socket's one-line protocol. Who asks is known the way the
//! metadata proxy knows it: the connection's source address on that network is a port of
//! this node, and anti-spoofing guarantees it is that port's. The agent makes the subport
//! through the controller (which checks that the port is a trunk parent), waits until it is
//! plugged here, and answers with the CNI result and the VLAN the plugin tags in the guest.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Weak};
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

/// What every DHCP namespace's nested CNI listener shares.
pub struct Nested {
    shared: Weak<Shared>,
    instances: watch::Receiver<Arc<Instances>>,
}

impl Nested {
    /// A handler for `shared`'s node, knowing its ports from `instances`.
    pub fn new(shared: Weak<Shared>, instances: watch::Receiver<Arc<Instances>>) -> Nested {
        Nested { shared, instances }
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
        Command::Add => add(&shared, &parent, &request).await,
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

/// ADD: the attachment's subport (made, or found again for a retried ADD), once plugged.
async fn add(
    shared: &Shared,
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
    let body = json!({"subport": {
        "network": network,
        "container_id": request.container_id,
        "ifname": request.ifname,
        "name": name,
    }});
    let path = format!("/isthmus/v1/ports/{parent}/subports");
    let (status, answer) = shared
        .config
        .controller
        .request("POST", &path, Some(&body))
        .await
        .map_err(|e| {
            CniError::new(
                code::TRY_AGAIN_LATER,
                "the controller is not reachable",
                e.to_string(),
            )
        })?;
    if !(200..300).contains(&status) {
        let why = answer["NeutronError"]["message"]
            .as_str()
            .map_or_else(|| answer.to_string(), str::to_owned);
        return Err(CniError::new(
            SUBPORT_REFUSED,
            format!("the controller refused the subport ({status})"),
            why,
        ));
    }
    let subport = &answer["subport"];
    let port_id = subport["port"]["id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let vlan = subport["segmentation_id"].as_u64().unwrap_or_default();
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

/// DEL: the attachment's subport leaves the trunk and goes (nothing there is fine).
async fn release(shared: &Shared, parent: &str, request: &Request) -> Result<(), CniError> {
    let path = format!(
        "/isthmus/v1/ports/{parent}/subports/{}/{}",
        request.container_id, request.ifname
    );
    match shared
        .config
        .controller
        .request("DELETE", &path, None)
        .await
    {
        Ok((204, _)) => Ok(()),
        Ok((status, answer)) => Err(CniError::new(
            SUBPORT_REFUSED,
            format!("the controller refused to release the subport ({status})"),
            answer.to_string(),
        )),
        Err(e) => Err(CniError::new(
            code::TRY_AGAIN_LATER,
            "the controller is not reachable",
            e.to_string(),
        )),
    }
}
