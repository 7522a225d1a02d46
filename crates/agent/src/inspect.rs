//! `isthmus inspect`: what the node's kernel holds, for an operator — bridges with their
//! networks and VXLAN devices, attached devices, forwarding entries with the remote tunnel
//! they point to, anti-spoofing and security-group chains with packet counters, router and
//! SNAT namespaces with their interfaces, routes, rules, neighbours and NAT rules, and (with a
//! controller) the node's ports with address, MAC, tap and status.

use std::fmt::Write;
use std::path::Path;

use isthmus_dataplane::l2::tap_name;

use crate::http::Endpoint;
use crate::{kernel, AgentError};

/// The report for this node (`node` and `controller` add the controller's view of its ports;
/// router namespaces are read from `netns_dir`).
pub async fn report(
    node: Option<&str>,
    controller: Option<&Endpoint>,
    netns_dir: &Path,
) -> Result<String, AgentError> {
    let observed = kernel::observe(&crate::netlink::Netlink::connect()?).await?;
    let mut out = String::new();
    let _ = writeln!(out, "bridges");
    if observed.bridges.is_empty() {
        let _ = writeln!(out, "  (none)");
    }
    for (name, bridge) in &observed.bridges {
        let netfilter = match bridge.filtered {
            Some(true) => "security groups (br_netfilter on)",
            Some(false) => "unfiltered (br_netfilter off)",
            None => "br_netfilter on for one IP family only",
        };
        let _ = writeln!(out, "  {name}  mtu {}  {netfilter}", bridge.mtu);
        for (vx, v) in observed.vxlans.iter().filter(|(_, v)| &v.bridge == name) {
            let _ = writeln!(
                out,
                "    {vx}  vni {}  local {}  mtu {}",
                v.vni, v.local, v.mtu
            );
        }
        for (device, d) in observed
            .devices
            .iter()
            .filter(|(_, d)| d.bridge.as_deref() == Some(name.as_str()))
        {
            let state = if d.up { "up" } else { "down" };
            let _ = writeln!(out, "    {device}  {state}  mtu {}", d.mtu);
        }
    }
    let _ = writeln!(out, "forwarding entries (static, per VXLAN device)");
    if observed.fdb.is_empty() {
        let _ = writeln!(out, "  (none)");
    }
    for entry in &observed.fdb {
        let what = if entry.mac == isthmus_dataplane::l2::FLOOD_MAC {
            "flood"
        } else {
            "port"
        };
        let _ = writeln!(
            out,
            "  {}  {}  -> {}  ({what})",
            entry.device, entry.mac, entry.dst
        );
    }
    if let (Some(node), Some(controller)) = (node, controller) {
        let path = format!("/v2.0/ports?binding:host_id={node}");
        let (status, body) = controller.request("GET", &path, None).await?;
        if status != 200 {
            return Err(AgentError::Controller(format!(
                "listing ports answered {status}: {body}"
            )));
        }
        let _ = writeln!(out, "ports bound to {node}");
        for port in body["ports"].as_array().into_iter().flatten() {
            let id = port["id"].as_str().unwrap_or_default();
            let ips: Vec<&str> = port["fixed_ips"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|f| f["ip_address"].as_str())
                .collect();
            let tap = tap_name(id);
            let present = if observed.devices.contains_key(&tap) {
                ""
            } else {
                " (no device yet)"
            };
            let _ = writeln!(
                out,
                "  {id}  {}  {}  {tap}{present}  {}  port security {}",
                ips.join(","),
                port["mac_address"].as_str().unwrap_or_default(),
                port["status"].as_str().unwrap_or_default(),
                if port["port_security_enabled"] == true {
                    "on"
                } else {
                    "off"
                },
            );
        }
    }
    for (family, what) in [
        ("bridge", "anti-spoofing and port marks"),
        ("inet", "security groups"),
    ] {
        let _ = writeln!(
            out,
            "{what} (table {family} {})",
            isthmus_dataplane::filter::TABLE
        );
        match kernel::list_nft_table(family, isthmus_dataplane::filter::TABLE).await? {
            Some(text) => out.push_str(&text),
            None => {
                let _ = writeln!(out, "  (none)");
            }
        }
    }
    routers(&mut out, netns_dir).await?;
    Ok(out)
}

/// Router and SNAT namespaces, as the agent reads them back, with their NAT tables as nft
/// prints them.
async fn routers(out: &mut String, netns_dir: &Path) -> Result<(), AgentError> {
    let state = crate::routers::observe(netns_dir).await?;
    let _ = writeln!(out, "router namespaces (in {})", netns_dir.display());
    if state.is_empty() {
        let _ = writeln!(out, "  (none)");
    }
    for (name, ns) in &state {
        let _ = writeln!(out, "  {name}");
        for (device, i) in &ns.interfaces {
            let addresses: Vec<String> = i
                .addresses
                .iter()
                .map(|(ip, prefix)| format!("{ip}/{prefix}"))
                .collect();
            let _ = writeln!(
                out,
                "    {device}  {}  mtu {}  {}  (node side {})",
                i.mac,
                i.mtu,
                addresses.join(","),
                i.peer
            );
        }
        for r in &ns.rules {
            let _ = writeln!(
                out,
                "    rule {}: from {}/{} lookup {}",
                r.priority, r.from, r.prefix, r.table
            );
        }
        for r in &ns.routes {
            let via = r.via.map(|v| format!(" via {v}")).unwrap_or_default();
            let _ = writeln!(
                out,
                "    route {}/{}{via} dev {} table {}",
                r.destination, r.prefix, r.device, r.table
            );
        }
        let _ = writeln!(out, "    {} permanent neighbours", ns.neighbours.len());
        for n in &ns.neighbours {
            let _ = writeln!(out, "      {} {} dev {}", n.ip, n.mac, n.device);
        }
        if let Some(nat) = crate::routers::list_nat(&netns_dir.join(name)).await? {
            let _ = writeln!(out, "    NAT");
            for line in nat.lines() {
                let _ = writeln!(out, "    {line}");
            }
        }
    }
    Ok(())
}
