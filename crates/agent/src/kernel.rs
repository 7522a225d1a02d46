//! The node's kernel: reads back the L2 state the agent manages and applies plans.
//!
//! Links and forwarding entries are read and changed over netlink (see [`crate::netlink`]);
//! filter tables go through `nft -f`, one transaction per change (never one process per rule).
//! Only devices named like the agent's (`brq*`, `vxlan-*`) and the devices attached to them
//! are considered, so nothing else on the node is touched.

use std::process::Stdio;

use isthmus_dataplane::l2::{Observed, Op};
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

use crate::netlink::Netlink;
use crate::AgentError;

/// Reads the managed L2 state and every other link, all over netlink.
pub async fn observe(netlink: &Netlink) -> Result<Observed, AgentError> {
    let mut observed = netlink.links().await?;
    (observed.fdb, observed.pins) = netlink.fdb(&observed).await?;
    Ok(observed)
}

/// Applies ops in order over netlink, one request each (no process spawned); runs of
/// forwarding-entry changes go with many requests in flight. Every op is tried; the first
/// failure is returned.
pub async fn apply(netlink: &Netlink, ops: &[Op]) -> Result<(), AgentError> {
    let mut first_error = None;
    let mut run: Vec<&Op> = Vec::new();
    for (i, op) in ops.iter().enumerate() {
        let fdb = matches!(op, Op::AddFdb(_) | Op::DelFdb(_));
        if fdb {
            run.push(op);
        }
        if !fdb || i + 1 == ops.len() {
            if !run.is_empty() {
                if let Err(e) = netlink.apply_fdb(&run).await {
                    first_error.get_or_insert(e);
                }
                run.clear();
            }
            if !fdb {
                if let Err(e) = netlink.apply(op).await {
                    first_error.get_or_insert(e);
                }
            }
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// Runs `program args` with `script` on its standard input.
pub(crate) async fn feed(program: &str, args: &[&str], script: &str) -> Result<(), AgentError> {
    let started = std::time::Instant::now();
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
    tracing::debug!(
        program,
        bytes = script.len(),
        took_us = started.elapsed().as_micros() as u64,
        "fed"
    );
    tracing::trace!(script, "fed script");
    if !out.status.success() {
        return Err(AgentError::Kernel(format!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

/// Reads one nft table (absent = empty, `exists` false).
pub async fn observe_nft_table(
    family: &str,
    name: &str,
) -> Result<isthmus_dataplane::nft::Observed, AgentError> {
    let Some(text) = list_nft_table_json(family, name).await? else {
        return Ok(isthmus_dataplane::nft::Observed::default());
    };
    let json: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| AgentError::Kernel(format!("nft -j output: {e}")))?;
    Ok(isthmus_dataplane::nft::parse_observed(&json))
}

/// br_netfilter's namespace-wide switches (`bridge-nf-call-*`, a new namespace has them on).
const BRIDGE_NF_CALL: [&str; 3] = ["iptables", "ip6tables", "arptables"];

fn bridge_nf_call(family: &str) -> String {
    format!("/proc/sys/net/bridge/bridge-nf-call-{family}")
}

/// Fails unless br_netfilter is loaded: without it a bridge's `nf_call_iptables` is accepted
/// and does nothing, and security groups would silently not filter.
pub fn check_br_netfilter() -> Result<(), AgentError> {
    let path = bridge_nf_call("iptables");
    std::fs::read_to_string(&path).map(|_| ()).map_err(|e| {
        AgentError::Kernel(format!(
            "{path}: {e} (is the br_netfilter module loaded? modprobe br_netfilter)"
        ))
    })
}

/// Turns br_netfilter's namespace-wide switches off: the agent hands traffic to the inet hooks
/// per bridge (only bridges with guarded ports), so the other bridges skip netfilter. Only for
/// a namespace that is Isthmus's alone (other software's bridges would stop being filtered),
/// and only once the bridges are set, so no guarded bridge is ever left unfiltered.
pub fn br_netfilter_per_bridge() -> Result<(), AgentError> {
    for family in BRIDGE_NF_CALL {
        let path = bridge_nf_call(family);
        let on = std::fs::read_to_string(&path)
            .map_err(|e| AgentError::Kernel(format!("{path}: {e}")))?;
        if on.trim() != "0" {
            std::fs::write(&path, "0").map_err(|e| AgentError::Kernel(format!("{path}: {e}")))?;
        }
    }
    Ok(())
}

/// Applies table plans (none: nothing to do) as one transaction.
pub async fn nft(
    plans: impl IntoIterator<Item = isthmus_dataplane::nft::Plan>,
) -> Result<(), AgentError> {
    let script: String = plans.into_iter().map(|p| p.to_string()).collect();
    if script.is_empty() {
        return Ok(());
    }
    feed("nft", &["-f", "-"], &script).await
}

/// `nft list table FAMILY NAME` as text (with counters), or `None` when it does not exist.
pub async fn list_nft_table(family: &str, name: &str) -> Result<Option<String>, AgentError> {
    nft_list(&[], &["table", family, name]).await
}

/// `nft -j list table FAMILY NAME`, or `None` when it does not exist.
pub async fn list_nft_table_json(family: &str, name: &str) -> Result<Option<String>, AgentError> {
    nft_list(&["-j"], &["table", family, name]).await
}

/// `nft -j list set FAMILY TABLE SET`, or `None` when it does not exist.
pub async fn list_nft_set_json(
    family: &str,
    table: &str,
    set: &str,
) -> Result<Option<String>, AgentError> {
    nft_list(&["-j"], &["set", family, table, set]).await
}

async fn nft_list(flags: &[&str], what: &[&str]) -> Result<Option<String>, AgentError> {
    let out = Command::new("nft")
        .args(flags)
        .arg("list")
        .args(what)
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
