//! Names outside Neutron's ports that the node-local resolvers answer: a Kubernetes Service's
//! `<svc>.<ns>.svc.<cluster domain>` (its cluster IP, or a headless Service's ready endpoint
//! addresses), answered to the instances of the networks routed to the service network.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// One name, as stored and sent to every node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DnsRecord {
    /// Its key: `<namespace>/<service>`.
    pub id: String,
    /// The fully qualified name, lower case, with the trailing dot.
    pub fqdn: String,
    /// The zone it is in (`svc.cluster.local.`): other names under it do not exist.
    pub zone: String,
    /// Its addresses.
    pub addresses: Vec<IpAddr>,
    /// The network whose routing domain sees it (the service network).
    pub network_id: String,
}

impl DnsRecord {
    /// The wire form.
    pub fn render(&self) -> Map<String, Value> {
        match serde_json::to_value(self) {
            Ok(Value::Object(m)) => m,
            _ => Map::new(),
        }
    }
}
