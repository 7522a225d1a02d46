//! Applies the node's load balancing ([`isthmus_dataplane::lb`]): the two `isthmus_lb` nft
//! tables, and the routing bridged DNAT needs (rules, tables, permanent neighbours, hairpin
//! ports) through one `ip -batch` per change; the bridges that balance forward without
//! reverse-path filtering.

use std::collections::BTreeMap;

use isthmus_dataplane::lb::{self, Observed, Plan};
use tokio::process::Command;

use crate::netlink::Netlink;
use crate::AgentError;
use crate::{kernel, routers};

async fn ip_json(args: &[&str]) -> Result<serde_json::Value, AgentError> {
    let out = Command::new("ip").arg("-j").args(args).output().await?;
    if !out.status.success() {
        return Err(AgentError::Kernel(format!(
            "ip -j {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    // `ip -j` prints nothing at all for an empty table.
    if out.stdout.iter().all(u8::is_ascii_whitespace) {
        return Ok(serde_json::Value::Array(Vec::new()));
    }
    serde_json::from_slice(&out.stdout)
        .map_err(|e| AgentError::Kernel(format!("ip -j {}: {e}", args.join(" "))))
}

/// Reads what the kernel holds.
pub async fn observe() -> Result<Observed, AgentError> {
    let rules = ip_json(&["-4", "rule", "show"]).await?;
    let routes = ip_json(&["-4", "route", "show", "table", "all"]).await?;
    let neighbours = ip_json(&["-4", "neigh", "show", "nud", "permanent"]).await?;
    let links = ip_json(&["-d", "link", "show", "type", "bridge_slave"]).await?;
    Ok(Observed {
        inet: kernel::observe_nft_table("inet", lb::TABLE).await?,
        bridge: kernel::observe_nft_table("bridge", lb::TABLE).await?,
        routing: lb::parse_routing(&rules, &routes, &neighbours, &links),
    })
}

/// The load-balancing table's counting sets with their counters (`nft -j list set` of each,
/// as one `{"nftables": [...]}`), or `None` when this node balances nothing (no table). Sets
/// one by one: listing the whole table would also read every listener's chain (3.5 s of
/// nft at 10,000 listeners, against 0.13 s per set).
pub async fn counted() -> Result<Option<serde_json::Value>, AgentError> {
    let mut items = Vec::new();
    for set in lb::COUNTING {
        let Some(text) = kernel::list_nft_set_json("inet", lb::TABLE, set).await? else {
            return Ok(None);
        };
        let mut listed: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| AgentError::Kernel(format!("nft -j list set {set}: {e}")))?;
        if let Some(listed) = listed["nftables"].as_array_mut() {
            items.append(listed);
        }
    }
    Ok(Some(serde_json::json!({ "nftables": items })))
}

/// The connections conntrack tracks in the agent's namespace (the text of
/// `/proc/net/nf_conntrack`); empty, with a warning the first time, where the kernel does not
/// offer it.
pub fn conntrack() -> String {
    use std::sync::atomic::{AtomicBool, Ordering};
    static WARNED: AtomicBool = AtomicBool::new(false);
    const PATH: &str = "/proc/self/net/nf_conntrack";
    std::fs::read_to_string(PATH).unwrap_or_else(|e| {
        if !WARNED.swap(true, Ordering::Relaxed) {
            tracing::warn!("{PATH}: {e}: open connections are not counted");
        }
        String::new()
    })
}

fn sysctl(bridge: &str, key: &str, value: &str) -> Result<(), AgentError> {
    let path = format!("/proc/sys/net/ipv4/conf/{bridge}/{key}");
    match std::fs::read_to_string(&path) {
        Ok(v) if v.trim() == value => Ok(()),
        _ => std::fs::write(&path, value).map_err(|e| AgentError::Kernel(format!("{path}: {e}"))),
    }
}

/// The packet socket VIPs are announced through, made once in the agent's namespace.
static ANNOUNCER: std::sync::Mutex<Option<routers::PacketSocket>> = std::sync::Mutex::new(None);

/// Applies a plan, its tables in one transaction after the `before` ones (the filter tables'
/// changes of the same pass); returns what the kernel then holds.
pub async fn apply(
    netlink: &Netlink,
    plan: Plan,
    before: Vec<isthmus_dataplane::nft::Plan>,
) -> Result<Observed, AgentError> {
    for bridge in plan.after.bridges() {
        sysctl(bridge, "forwarding", "1")?;
        sysctl(bridge, "rp_filter", "0")?;
    }
    if !plan.routing.is_empty() {
        let mut batch = plan.routing.join("\n");
        batch.push('\n');
        kernel::feed("ip", &["-batch", "-"], &batch).await?;
    }
    kernel::nft(before.into_iter().chain(plan.tables)).await?;
    // A client that asked for a VIP before it was there learns it now, not at its next ARP
    // retry a second later: a gratuitous ARP from the bridge (the bridge table's output chain
    // keeps it to the node's own ports).
    let mut bridges = BTreeMap::new();
    let mut arps = Vec::new();
    for (bridge, vip) in &plan.announce {
        if !bridges.contains_key(bridge) {
            bridges.insert(bridge, netlink.index_and_mac(bridge).await?);
        }
        if let Some(Some((index, mac))) = bridges.get(bridge) {
            arps.push((*index, mac.clone(), *vip));
        }
    }
    if !arps.is_empty() {
        let mut socket = ANNOUNCER.lock().unwrap_or_else(|e| e.into_inner());
        if socket.is_none() {
            *socket = Some(routers::PacketSocket::new()?);
        }
        if let Some(socket) = socket.as_mut() {
            socket.gratuitous_arps(&arps)?;
        }
    }
    Ok(plan.after)
}
