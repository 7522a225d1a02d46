//! The metadata proxy's pure part, as Neutron's metadata agent does it: which instance an
//! address on a network is, and the headers Nova's metadata API trusts — `X-Instance-ID`
//! (the port's `device_id`), `X-Tenant-ID`, `X-Forwarded-For` (the instance's address) and
//! `X-Instance-ID-Signature`, the HMAC-SHA256 of the instance id under the secret shared
//! with Nova, in hex.

use std::collections::BTreeMap;
use std::net::IpAddr;

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::node::NodeConfig;
use crate::view::NodeView;

/// Who an instance is, to Nova.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    /// Nova's instance id: the port's `device_id`.
    pub instance_id: String,
    /// Its project.
    pub project_id: String,
    /// The port the address is on (a trunk parent asks for its pods' subports through it).
    pub port_id: String,
}

/// The node's own instances by (network, address): a request to the metadata address in a
/// network's DHCP namespace comes from one of them, or is refused.
pub fn instances(view: &NodeView, node: &NodeConfig) -> BTreeMap<(String, IpAddr), Instance> {
    let mut out = BTreeMap::new();
    for port in view.ports.values() {
        if port.host_id != node.name || port.device_id.is_empty() {
            continue;
        }
        for fixed in &port.fixed_ips {
            out.insert(
                (port.network_id.clone(), fixed.ip_address),
                Instance {
                    instance_id: port.device_id.clone(),
                    project_id: port.project_id.clone(),
                    port_id: port.id.clone(),
                },
            );
        }
    }
    out
}

/// `X-Instance-ID-Signature`: HMAC-SHA256 of the instance id under `secret`, lower-case hex.
pub fn signature(secret: &[u8], instance_id: &str) -> String {
    // HMAC takes keys of any length.
    let mut mac = match Hmac::<Sha256>::new_from_slice(secret) {
        Ok(mac) => mac,
        Err(_) => return String::new(),
    };
    mac.update(instance_id.as_bytes());
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Headers a client's request must not carry through the proxy (it would claim to be another
/// instance), and hop-by-hop headers.
pub const STRIPPED_HEADERS: &[&str] = &[
    "x-instance-id",
    "x-instance-id-signature",
    "x-tenant-id",
    "x-forwarded-for",
    "x-neutron-network-id",
    "x-neutron-router-id",
    "host",
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// The headers added to a request from `instance` at `address`.
pub fn headers(secret: &[u8], instance: &Instance, address: IpAddr) -> [(&'static str, String); 4] {
    [
        ("X-Instance-ID", instance.instance_id.clone()),
        ("X-Tenant-ID", instance.project_id.clone()),
        ("X-Forwarded-For", address.to_string()),
        (
            "X-Instance-ID-Signature",
            signature(secret, &instance.instance_id),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn signature_is_nova_s_hmac_sha256() {
        // RFC 4231 test case 2.
        assert_eq!(
            signature(b"Jefe", "what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn only_the_nodes_own_instances_are_known() {
        let mut view = NodeView::default();
        for (id, host, device) in [("p1", "n1", "vm-1"), ("p2", "n2", "vm-2"), ("p3", "n1", "")] {
            view.apply(&json!({"type": "ADDED", "kind": "port", "object": {
                "id": id, "network_id": "net", "mac_address": "fa:16:3e:00:00:01",
                "fixed_ips": [{"subnet_id": "s", "ip_address": format!("10.0.0.{}", &id[1..])}],
                "binding:host_id": host, "port_security_enabled": true, "status": "ACTIVE",
                "device_id": device, "project_id": "proj"}}))
                .unwrap();
        }
        let node = NodeConfig {
            name: "n1".into(),
            tunnel_ip: "10.9.0.1".parse().unwrap(),
            physnets: BTreeMap::new(),
        };
        let known = instances(&view, &node);
        assert_eq!(known.len(), 1);
        let who = &known[&("net".to_owned(), "10.0.0.1".parse().unwrap())];
        assert_eq!(
            (who.instance_id.as_str(), who.project_id.as_str()),
            ("vm-1", "proj")
        );
        let added = headers(b"s3cret", who, "10.0.0.1".parse().unwrap());
        assert_eq!(added[2], ("X-Forwarded-For", "10.0.0.1".to_owned()));
        assert_eq!(added[3].1, signature(b"s3cret", "vm-1"));
    }
}
