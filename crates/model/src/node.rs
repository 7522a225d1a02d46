//! Nodes: compute and Kubernetes hosts running an agent, and their Neutron `agents` view.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::error::{Error, Result};
use crate::input::{as_ip, as_string, Input, Method};

/// Neutron's default `agent_down_time`: an agent silent for longer is not alive.
pub const AGENT_DOWN_SECONDS: u64 = 75;

const ATTRIBUTES: &[&str] = &["name", "tunnel_ip", "roles", "physnets"];

/// A registered node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    /// Stable id (the Neutron agent id).
    pub id: String,
    /// Host name; ports bind to it with `binding:host_id`.
    pub name: String,
    /// Underlay address VXLAN tunnels to this node go to.
    pub tunnel_ip: IpAddr,
    /// What the node is (`compute`, `kubernetes`, `network`, ...).
    pub roles: Vec<String>,
    /// Physical network name → interface on this node.
    pub physnets: BTreeMap<String, String>,
    /// First registration.
    pub created_at: String,
    /// Last (re-)registration, i.e. agent start.
    pub started_at: String,
}

/// What an agent sends when it registers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    /// Host name.
    pub name: String,
    /// Tunnel address.
    pub tunnel_ip: IpAddr,
    /// Roles.
    pub roles: Vec<String>,
    /// Physical network mappings.
    pub physnets: BTreeMap<String, String>,
}

fn is_label(s: &str, max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

impl Registration {
    /// Parses `{"node": {"name", "tunnel_ip", "roles", "physnets"}}`.
    pub fn parse(body: Value) -> Result<Registration> {
        let mut input = Input::from_envelope(body, "node", Method::Create, &ATTRIBUTES)?;
        let name = Input::required("name", input.string("name", 253)?)?;
        if !is_label(&name, 253) {
            return Err(Error::invalid_attr(
                "name",
                format!("'{name}' is not a valid host name"),
            ));
        }
        let tunnel_ip = as_ip(
            "tunnel_ip",
            &Input::required("tunnel_ip", input.take("tunnel_ip"))?,
        )?;
        if tunnel_ip.is_unspecified() || tunnel_ip.is_multicast() {
            return Err(Error::invalid_attr(
                "tunnel_ip",
                format!("'{tunnel_ip}' cannot be a tunnel endpoint"),
            ));
        }
        let roles = input.string_list("roles", 64)?.unwrap_or_default();
        if let Some(bad) = roles.iter().find(|r| !is_label(r, 64)) {
            return Err(Error::invalid_attr(
                "roles",
                format!("'{bad}' is not a valid role"),
            ));
        }
        let mut physnets = BTreeMap::new();
        match input.take("physnets") {
            None | Some(Value::Null) => {}
            Some(Value::Object(map)) => {
                for (physnet, iface) in map {
                    let iface = as_string("physnets", &iface, 15)?;
                    if !is_label(&physnet, 64) || !is_label(&iface, 15) {
                        return Err(Error::invalid_attr(
                            "physnets",
                            format!("'{physnet}: {iface}' is not a physical network to interface mapping"),
                        ));
                    }
                    physnets.insert(physnet, iface);
                }
            }
            Some(other) => {
                return Err(Error::invalid_attr(
                    "physnets",
                    format!("'{other}' is not a dictionary"),
                ))
            }
        }
        Ok(Registration {
            name,
            tunnel_ip,
            roles,
            physnets,
        })
    }
}

impl Node {
    /// The node as the native API shows it.
    pub fn render(&self, alive: bool, heartbeat_at: Option<&str>) -> Map<String, Value> {
        let mut out = Map::new();
        out.insert("id".into(), json!(self.id));
        out.insert("name".into(), json!(self.name));
        out.insert("tunnel_ip".into(), json!(self.tunnel_ip));
        out.insert("roles".into(), json!(self.roles));
        out.insert("physnets".into(), json!(self.physnets));
        out.insert("created_at".into(), json!(self.created_at));
        out.insert("started_at".into(), json!(self.started_at));
        out.insert("heartbeat_at".into(), json!(heartbeat_at));
        out.insert("alive".into(), json!(alive));
        out
    }

    /// The node as a Neutron agent (`GET /v2.0/agents`).
    pub fn render_agent(&self, alive: bool, heartbeat_at: Option<&str>) -> Map<String, Value> {
        let mut out = Map::new();
        out.insert("id".into(), json!(self.id));
        out.insert("agent_type".into(), json!("Isthmus agent"));
        out.insert("binary".into(), json!("isthmus-agent"));
        out.insert("host".into(), json!(self.name));
        out.insert("topic".into(), json!("N/A"));
        out.insert("alive".into(), json!(alive));
        out.insert("admin_state_up".into(), json!(true));
        out.insert("availability_zone".into(), Value::Null);
        out.insert("description".into(), Value::Null);
        out.insert("resources_synced".into(), Value::Null);
        out.insert(
            "configurations".into(),
            json!({
                "tunneling_ip": self.tunnel_ip,
                "tunnel_types": ["vxlan"],
                "interface_mappings": self.physnets,
                "roles": self.roles,
                "l2_population": true,
            }),
        );
        out.insert(
            "created_at".into(),
            json!(self.created_at.replace('T', " ").trim_end_matches('Z')),
        );
        out.insert(
            "started_at".into(),
            json!(self.started_at.replace('T', " ").trim_end_matches('Z')),
        );
        out.insert(
            "heartbeat_timestamp".into(),
            json!(heartbeat_at.map(|h| h.replace('T', " ").trim_end_matches('Z').to_owned())),
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registration() {
        let r = Registration::parse(json!({"node": {"name": "node-1", "tunnel_ip": "10.0.0.11", "roles": ["compute"], "physnets": {"public": "eth1"}}})).unwrap();
        assert_eq!(r.physnets["public"], "eth1");
        assert!(Registration::parse(json!({"node": {"name": "n"}})).is_err());
        assert!(Registration::parse(
            json!({"node": {"name": "bad name", "tunnel_ip": "10.0.0.1"}})
        )
        .is_err());
        assert!(
            Registration::parse(json!({"node": {"name": "n", "tunnel_ip": "0.0.0.0"}})).is_err()
        );
        assert!(Registration::parse(json!({"node": {"name": "n", "tunnel_ip": "10.0.0.1", "physnets": {"p": "an-interface-name-too-long"}}})).is_err());
    }
}
