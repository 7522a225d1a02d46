//! Names outside Neutron's ports that the node-local resolvers answer: a Kubernetes Service's
//! `<svc>.<ns>.svc.<cluster domain>` (its cluster IP, or a headless Service's ready endpoint
//! addresses, and SRV records for its named ports), answered to the instances of the networks
//! routed to the service network.

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
    /// Named ports, answered as SRV records `_<name>._<protocol>.<fqdn>`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<NamedPort>,
}

/// A named port of a record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamedPort {
    /// The port's name (a DNS label).
    pub name: String,
    /// `tcp`, `udp` or `sctp`.
    pub protocol: String,
    /// The port.
    pub port: u16,
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
