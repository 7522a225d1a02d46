//! The parts of the controller's replies the agent reads, typed: a reply without them is an
//! error that says so, never an empty id.

use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::Value;

/// A port as the agent uses it.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct PortRef {
    /// Its id.
    pub id: String,
    /// Its network.
    pub network_id: String,
    /// Its project.
    pub project_id: String,
}

/// A network as the agent uses it.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct NetworkRef {
    /// Its id.
    pub id: String,
    /// Its project.
    pub project_id: String,
}

/// `{"ports": [...]}`.
#[derive(Debug, Deserialize)]
pub(crate) struct Ports {
    pub ports: Vec<PortRef>,
}

/// `{"networks": [...]}`.
#[derive(Debug, Deserialize)]
pub(crate) struct Networks {
    pub networks: Vec<NetworkRef>,
}

/// Reads `member` of `reply` (or the whole reply with `None`) as `T`; the error says what
/// was missing.
pub(crate) fn read<T: DeserializeOwned>(reply: &Value, member: Option<&str>) -> Result<T, String> {
    let part = match member {
        Some(m) => reply.get(m).cloned().unwrap_or(Value::Null),
        None => reply.clone(),
    };
    serde_json::from_value(part).map_err(|e| {
        format!(
            "unexpected reply from the controller ({}): {e}",
            member.unwrap_or("body")
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_reply_without_what_the_agent_needs_is_an_error() {
        let port: PortRef = read(
            &json!({"port": {"id": "p", "network_id": "n", "project_id": "a", "name": "x"}}),
            Some("port"),
        )
        .unwrap();
        assert_eq!((port.id.as_str(), port.project_id.as_str()), ("p", "a"));
        let missing = read::<PortRef>(&json!({"port": {"network_id": "n"}}), Some("port"));
        assert!(missing.unwrap_err().contains("missing field `id`"));
        assert!(read::<PortRef>(&json!({"NeutronError": {}}), Some("port")).is_err());
        assert!(read::<Networks>(&json!({"networks": [{"id": 5}]}), None).is_err());
    }
}
