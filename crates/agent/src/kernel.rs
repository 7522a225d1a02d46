//! The node's kernel: reads back the L2 state the agent manages and applies plans.
//!
//! Links are read in one netlink dump and existing links are changed (attached, detached)
//! over netlink; device creation and forwarding entries go through iproute2 in batch mode,
//! one `ip -batch`/`bridge -batch` process per group of changes (never one per device or
//! entry). Only devices named like the agent's (`brq*`, `vxlan-*`) and the devices attached
//! to them are considered, so nothing else on the node is touched.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::process::Stdio;

use isthmus_dataplane::l2::{Fdb, Observed, Op, Vxlan};
use serde_json::Value;
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

use crate::netlink::Netlink;
use crate::AgentError;

async fn output(program: &str, args: &[&str]) -> Result<String, AgentError> {
    let out = Command::new(program).args(args).output().await?;
    if !out.status.success() {
        return Err(AgentError::Kernel(format!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

async fn json(program: &str, args: &[&str]) -> Result<Vec<Value>, AgentError> {
    let text = output(program, args).await?;
    if text.trim().is_empty() {
        return Ok(Vec::new());
    }
    serde_json::from_str(&text).map_err(|e| AgentError::Kernel(format!("{program} output: {e}")))
}

/// One link as read back: name, MTU, bridge it is attached to, and whether it is up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    /// Name.
    pub name: String,
    /// MTU.
    pub mtu: u32,
    /// Bridge it is attached to.
    pub master: Option<String>,
    /// Administratively up.
    pub up: bool,
}

/// Reads the static forwarding entries on the given (managed) VXLAN devices.
pub async fn observe_fdb(vxlans: &BTreeMap<String, Vxlan>) -> Result<BTreeSet<Fdb>, AgentError> {
    let mut fdb = BTreeSet::new();
    if vxlans.is_empty() {
        return Ok(fdb);
    }
    for entry in json("bridge", &["-j", "fdb", "show"]).await? {
        let device = entry["ifname"].as_str().unwrap_or_default();
        let dst = entry["dst"].as_str().and_then(|d| d.parse::<IpAddr>().ok());
        if let (true, Some(dst), Some(mac)) =
            (vxlans.contains_key(device), dst, entry["mac"].as_str())
        {
            fdb.insert(Fdb {
                device: device.to_owned(),
                mac: mac.to_owned(),
                dst,
            });
        }
    }
    Ok(fdb)
}

/// Reads the managed L2 state (links over netlink, forwarding entries from `bridge`) and
/// every link.
pub async fn observe(netlink: &Netlink) -> Result<(Observed, Vec<Link>), AgentError> {
    let (mut observed, links) = netlink.links().await?;
    observed.fdb = observe_fdb(&observed.vxlans).await?;
    Ok((observed, links))
}

enum Tool {
    Ip,
    Bridge,
}

fn lines(op: &Op) -> (Tool, Vec<String>) {
    match op {
        Op::AddBridge { name, mtu } => (
            Tool::Ip,
            vec![
                format!("link add {name} type bridge"),
                format!("link set {name} mtu {mtu} up"),
            ],
        ),
        Op::SetMtu { name, mtu } => (Tool::Ip, vec![format!("link set {name} mtu {mtu}")]),
        Op::AddVxlan { name, vxlan } => (
            Tool::Ip,
            vec![
                format!(
                    "link add {name} type vxlan id {} local {} dstport {} nolearning",
                    vxlan.vni,
                    vxlan.local,
                    isthmus_dataplane::l2::VXLAN_PORT
                ),
                format!(
                    "link set {name} mtu {} master {} up",
                    vxlan.mtu, vxlan.bridge
                ),
            ],
        ),
        Op::Attach {
            device,
            bridge,
            mtu,
        } => (
            Tool::Ip,
            vec![format!("link set {device} mtu {mtu} master {bridge} up")],
        ),
        Op::Detach { device } => (Tool::Ip, vec![format!("link set {device} nomaster")]),
        Op::DelVxlan { name } | Op::DelBridge { name } => {
            (Tool::Ip, vec![format!("link del {name}")])
        }
        Op::AddFdb(f) => (
            Tool::Bridge,
            vec![format!(
                "fdb append {} dev {} dst {} self permanent",
                f.mac, f.device, f.dst
            )],
        ),
        Op::DelFdb(f) => (
            Tool::Bridge,
            vec![format!(
                "fdb del {} dev {} dst {} self",
                f.mac, f.device, f.dst
            )],
        ),
    }
}

/// Runs `program args` with `script` on its standard input.
async fn feed(program: &str, args: &[&str], script: &str) -> Result<(), AgentError> {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(script.as_bytes()).await?;
    }
    let out = child.wait_with_output().await?;
    if !out.status.success() {
        return Err(AgentError::Kernel(format!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

/// Applies ops in order: changes to existing links (attach, detach, MTU) over netlink, the
/// rest in one batch process per run of ops of the same tool.
pub async fn apply(netlink: &Netlink, ops: &[Op]) -> Result<(), AgentError> {
    let mut pending: Option<(Tool, String)> = None;
    let mut first_error = None;
    for op in ops {
        let direct = match op {
            Op::Attach {
                device,
                bridge,
                mtu,
            } => Some((device, Some(bridge.as_str()), Some(*mtu))),
            Op::Detach { device } => Some((device, None, None)),
            _ => None,
        };
        if let Some((device, bridge, mtu)) = direct {
            // What came before (a new bridge) must exist first.
            if let Some((t, script)) = pending.take() {
                if let Err(e) = run_batch(&t, &script).await {
                    first_error.get_or_insert(e);
                }
            }
            if let Err(e) = netlink.set_link(device, bridge, mtu).await {
                first_error.get_or_insert(e);
            }
            continue;
        }
        let (tool, cmds) = lines(op);
        let same = matches!(
            (&pending, &tool),
            (Some((Tool::Ip, _)), Tool::Ip) | (Some((Tool::Bridge, _)), Tool::Bridge)
        );
        if !same {
            if let Some((t, script)) = pending.take() {
                if let Err(e) = run_batch(&t, &script).await {
                    first_error.get_or_insert(e);
                }
            }
            pending = Some((tool, String::new()));
        }
        if let Some((_, script)) = pending.as_mut() {
            for c in cmds {
                script.push_str(&c);
                script.push('\n');
            }
        }
    }
    if let Some((t, script)) = pending {
        if let Err(e) = run_batch(&t, &script).await {
            first_error.get_or_insert(e);
        }
    }
    first_error.map_or(Ok(()), Err)
}

async fn run_batch(tool: &Tool, script: &str) -> Result<(), AgentError> {
    match tool {
        Tool::Ip => feed("ip", &["-force", "-batch", "-"], script).await,
        Tool::Bridge => feed("bridge", &["-force", "-batch", "-"], script).await,
    }
}

/// Reads one nft table (absent = empty, `exists` false).
pub async fn observe_nft_table(
    family: &str,
    name: &str,
) -> Result<isthmus_dataplane::nft::Observed, AgentError> {
    let Some(text) = nft_list(&["-j"], family, name).await? else {
        return Ok(isthmus_dataplane::nft::Observed::default());
    };
    let json: Value = serde_json::from_str(&text)
        .map_err(|e| AgentError::Kernel(format!("nft -j output: {e}")))?;
    Ok(isthmus_dataplane::nft::parse_observed(&json))
}

/// Hands bridged IPv4/IPv6 to the inet hooks (with conntrack) in this namespace, which
/// stateful security groups need; the setting is per network namespace.
pub fn enable_br_netfilter() -> Result<(), AgentError> {
    for family in ["iptables", "ip6tables"] {
        let path = format!("/proc/sys/net/bridge/bridge-nf-call-{family}");
        std::fs::write(&path, "1").map_err(|e| {
            AgentError::Kernel(format!(
                "{path}: {e} (is the br_netfilter module loaded? modprobe br_netfilter)"
            ))
        })?;
    }
    Ok(())
}

/// Applies an nft script as one transaction.
pub async fn nft(script: &str) -> Result<(), AgentError> {
    feed("nft", &["-f", "-"], script).await
}

/// `nft list table FAMILY NAME` as text (with counters), or `None` when it does not exist.
pub async fn list_nft_table(family: &str, name: &str) -> Result<Option<String>, AgentError> {
    nft_list(&[], family, name).await
}

async fn nft_list(flags: &[&str], family: &str, name: &str) -> Result<Option<String>, AgentError> {
    let out = Command::new("nft")
        .args(flags)
        .args(["list", "table", family, name])
        .output()
        .await?;
    if out.status.success() {
        return Ok(Some(String::from_utf8_lossy(&out.stdout).into_owned()));
    }
    let err = String::from_utf8_lossy(&out.stderr);
    if err.contains("No such file or directory") {
        Ok(None)
    } else {
        Err(AgentError::Kernel(format!("nft list: {}", err.trim())))
    }
}
