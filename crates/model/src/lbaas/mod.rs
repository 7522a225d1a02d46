//! Load balancers as Octavia v2 describes them (`/v2/lbaas/`): a load balancer owns a VIP (a
//! Neutron port), listeners (protocol and port on the VIP), pools (a balancing algorithm and
//! members) and health monitors. The same objects serve Kubernetes Services; the data plane
//! reads them through `dataplane::lb`, never through this wire format.
//!
//! Octavia's HTTP-level features (L7 policies, TLS termination, HTTP listeners) need a proxy
//! and are refused as a provider without them refuses them (501, as Octavia's OVN provider).

pub mod health_monitor;
pub mod listener;
pub mod load_balancer;
pub mod member;
pub mod pool;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{Error, Result};
use crate::input::{as_integer, show, Input};

pub use health_monitor::HealthMonitor;
pub use listener::Listener;
pub use load_balancer::LoadBalancer;
pub use member::Member;
pub use pool::Pool;

/// Octavia's statistics of a listener (a load balancer's are its listeners' summed), as one
/// node counts its own clients' connections and as the controller sums the nodes'.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    /// Bytes from clients.
    pub bytes_in: u64,
    /// Bytes to clients.
    pub bytes_out: u64,
    /// Connections open now (TCP and SCTP established, UDP flows conntrack still holds).
    pub active_connections: u64,
    /// Connections made, refused ones included.
    pub total_connections: u64,
    /// Connections refused: not in `allowed_cidrs`, over `connection_limit`, or no member up.
    pub request_errors: u64,
}

impl std::ops::AddAssign for Stats {
    fn add_assign(&mut self, other: Stats) {
        self.bytes_in += other.bytes_in;
        self.bytes_out += other.bytes_out;
        self.active_connections += other.active_connections;
        self.total_connections += other.total_connections;
        self.request_errors += other.request_errors;
    }
}

impl Stats {
    /// Whether nothing was counted (a listener with such statistics is not stored).
    pub fn is_zero(&self) -> bool {
        *self == Stats::default()
    }
}

/// How many store keys a node's statistics are spread over, by listener: a node balancing
/// tens of thousands of listeners stays far below a store's value size limit (etcd's is
/// 1.5 MiB), and a report rewrites only the shards its listeners are in.
pub const STATS_SHARDS: u8 = 16;

/// The shard of a listener's statistics.
pub fn stats_shard(listener_id: &str) -> u8 {
    let h = listener_id.bytes().fold(0x811c_9dc5_u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    });
    (h % u32::from(STATS_SHARDS)) as u8
}

/// Applies a report's `changes` to one shard: a listener's new statistics, or `None` when
/// the node no longer balances it (nothing counted is not kept either).
pub fn merge_stats<'a>(
    shard: &mut std::collections::BTreeMap<String, Stats>,
    changes: impl IntoIterator<Item = (&'a String, &'a Option<Stats>)>,
) {
    for (id, stats) in changes {
        match stats {
            Some(s) if !s.is_zero() => {
                shard.insert(id.clone(), *s);
            }
            _ => {
                shard.remove(id);
            }
        }
    }
}

/// The one provider: every load balancer is distributed in the nodes' kernels.
pub const PROVIDER: &str = "isthmus";

/// What `/v2/lbaas/providers` says about it.
pub const PROVIDER_DESCRIPTION: &str =
    "Isthmus: distributed nftables load balancing on every node, no load-balancer VM";

/// `device_owner` of the VIP port, as Octavia sets it.
pub const VIP_OWNER: &str = "Octavia";

/// `provisioning_status` once a change is committed.
pub const ACTIVE: &str = "ACTIVE";

/// `operating_status` values.
pub mod operating {
    /// Working.
    pub const ONLINE: &str = "ONLINE";
    /// Disabled (`admin_state_up` false).
    pub const OFFLINE: &str = "OFFLINE";
    /// A member without a health monitor.
    pub const NO_MONITOR: &str = "NO_MONITOR";
    /// A member its monitor found down.
    pub const ERROR: &str = "ERROR";
    /// Some but not all members are up.
    pub const DEGRADED: &str = "DEGRADED";
}

/// A listener's or pool's protocol: the ones a kernel load balancer forwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Protocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
    /// SCTP.
    Sctp,
}

impl Protocol {
    /// Octavia's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
            Protocol::Sctp => "SCTP",
        }
    }

    /// Parses `protocol`: the proxy protocols Octavia knows are refused as unsupported.
    pub fn parse(value: &Value) -> Result<Protocol> {
        match value.as_str().unwrap_or_default() {
            "TCP" => Ok(Protocol::Tcp),
            "UDP" => Ok(Protocol::Udp),
            "SCTP" => Ok(Protocol::Sctp),
            p @ ("HTTP" | "HTTPS" | "TERMINATED_HTTPS" | "PROXY" | "PROXYV2" | "PROMETHEUS") => {
                Err(unsupported(&format!(
                    "protocol {p} needs a proxy; this provider forwards TCP, UDP and SCTP"
                )))
            }
            _ => Err(invalid_option(value, "protocol")),
        }
    }
}

/// Octavia's 501 for what this provider does not do.
pub fn unsupported(what: &str) -> Error {
    Error::fault(
        "ProviderUnsupportedOptionError",
        501,
        format!("Provider '{PROVIDER}' does not support a requested option: {what}"),
    )
}

/// Octavia's 400 for a value outside an attribute's choices.
pub fn invalid_option(value: &Value, option: &str) -> Error {
    Error::fault(
        "InvalidOption",
        400,
        format!("{} is not a valid option for {option}", show(value)),
    )
}

/// Octavia's 400 `ValidationException`.
pub fn validation(detail: impl std::fmt::Display) -> Error {
    Error::fault(
        "ValidationException",
        400,
        format!("Validation failure: {detail}"),
    )
}

/// An integer attribute within `min..=max`, in wsme's wording.
pub fn bounded(input: &mut Input, key: &str, min: i64, max: i64) -> Result<Option<i64>> {
    let Some(value) = input.take(key) else {
        return Ok(None);
    };
    let n = as_integer(key, &value)?;
    if n < min || n > max {
        return Err(Error::fault(
            "InvalidInput",
            400,
            format!(
                "Invalid input for field/attribute {key}. Value: '{n}'. Value should be between {min} and {max}"
            ),
        ));
    }
    Ok(Some(n))
}

/// A required port number (`protocol_port`), 1 to 65535.
pub fn required_port(input: &mut Input, key: &str) -> Result<u16> {
    let port = bounded(input, key, 1, 65_535)?.ok_or_else(|| {
        Error::fault(
            "InvalidInput",
            400,
            format!("Invalid input for field/attribute {key}. Mandatory field missing."),
        )
    })?;
    Ok(port as u16)
}

/// `admin_state_up`, `true` unless the body says otherwise.
pub fn admin_state(input: &mut Input, current: bool) -> Result<bool> {
    Ok(input.boolean("admin_state_up")?.unwrap_or(current))
}

/// The `operating_status` of an object that is up when `admin_state_up`.
pub fn online(admin_state_up: bool) -> &'static str {
    if admin_state_up {
        operating::ONLINE
    } else {
        operating::OFFLINE
    }
}

/// `[{"id": ...}, ...]`, how Octavia lists related objects.
pub fn id_list(ids: &[String]) -> Value {
    Value::Array(
        ids.iter()
            .map(|id| serde_json::json!({ "id": id }))
            .collect(),
    )
}
