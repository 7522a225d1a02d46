//! The node itself: its settings, the kernel names of what it hosts, and which of its ports
//! are guarded — what the L2, filter and router planners all build on.

use std::collections::BTreeMap;
use std::net::IpAddr;

pub use isthmus_model::network::bridge_name;
pub use isthmus_model::port::tap_name;

use crate::view::{NodeView, Port};

/// What the agent knows about its own node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeConfig {
    /// Its name (ports bind to it).
    pub name: String,
    /// Its tunnel address.
    pub tunnel_ip: IpAddr,
    /// Physical network → interface.
    pub physnets: BTreeMap<String, String>,
}

/// The local ports with port security, by tap.
pub fn guarded_ports<'a>(view: &'a NodeView, node: &NodeConfig) -> BTreeMap<String, &'a Port> {
    view.ports
        .values()
        .filter(|p| p.host_id == node.name && p.port_security_enabled)
        .map(|p| (tap_name(&p.id), p))
        .collect()
}
