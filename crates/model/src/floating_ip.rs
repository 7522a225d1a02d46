//! Floating IPs: an address of an external network, 1:1 NAT'd to a fixed address of a port
//! behind a router with a gateway on that network.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::error::{Error, Result};
use crate::input::{as_ip, as_uuid, show, Input, Method};
use crate::meta::{owner_project, Caller, Meta};
use crate::resource::{attr, input, Definition, Rights};

/// The `floatingips` resource.
pub static DEFINITION: Definition<FloatingIp> = Definition {
    collection: "floatingips",
    singular: "floatingip",
    plural: "floatingips",
    fault: "FloatingIP",
    named: false,
    tagged: true,
    description: Some(Rights::ALL),
    updatable: true,
    api: crate::resource::Api::Neutron,
    attributes: &[
        attr("floating_ip_address", Rights::CREATE_QUERY, |f, _| {
            Some(json!(f.floating_ip_address))
        }),
        attr("floating_network_id", Rights::CREATE_QUERY, |f, _| {
            Some(json!(f.floating_network_id))
        }),
        attr("router_id", Rights::ALL, |f, _| {
            Some(json!(f.association.as_ref().map(|a| &a.router_id)))
        }),
        attr("port_id", Rights::ALL, |f, _| {
            Some(json!(f.association.as_ref().map(|a| &a.port_id)))
        }),
        attr("fixed_ip_address", Rights::ALL, |f, _| {
            Some(json!(f.association.as_ref().map(|a| a.fixed_ip_address)))
        }),
        attr("status", Rights::READ, |f, _| Some(json!(f.status))),
        attr("port_details", Rights::NONE, |f, _| {
            Some(f.port_details.clone().unwrap_or(Value::Null))
        }),
        input("subnet_id", Rights::CREATE),
    ],
};

/// What a floating IP is associated with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Association {
    /// The internal port.
    pub port_id: String,
    /// Its address the floating IP maps to.
    pub fixed_ip_address: IpAddr,
    /// The router that NATs it.
    pub router_id: String,
}

/// A stored floating IP.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FloatingIp {
    /// Standard attributes.
    pub meta: Meta,
    /// External network.
    pub floating_network_id: String,
    /// The address.
    pub floating_ip_address: IpAddr,
    /// The port on the external network holding the address.
    pub floating_port_id: String,
    /// The association, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub association: Option<Association>,
    /// `DOWN` until the agent doing its NAT reports it `ACTIVE`.
    pub status: String,
    /// The associated port as `port_details` shows it (`fip-port-details`), read with the
    /// floating IP for the API; never stored with it.
    #[serde(skip)]
    pub port_details: Option<Value>,
}

/// `port_details` of a floating IP associated with `port`.
pub fn port_details(port: &crate::Port) -> Value {
    json!({
        "name": port.meta.name,
        "network_id": port.network_id,
        "mac_address": port.mac_address,
        "admin_state_up": port.admin_state_up,
        "status": port.status,
        "device_id": port.device_id,
        "device_owner": port.device_owner,
    })
}

/// A validated create or update body. `port_id` is `Some(None)` when the body disassociates.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FloatingIpRequest {
    /// Owner (create only).
    pub project_id: Option<String>,
    /// External network (create only).
    pub floating_network_id: Option<String>,
    /// Requested address (create only).
    pub floating_ip_address: Option<IpAddr>,
    /// Subnet to allocate from (create only).
    pub subnet_id: Option<String>,
    /// `port_id`.
    pub port_id: Option<Option<String>>,
    /// `fixed_ip_address`.
    pub fixed_ip_address: Option<IpAddr>,
    /// `router_id` (`floating-ip-router-writable`): the router that NATs the association,
    /// when several reach its port; `None` (or null) lets the service choose.
    pub router_id: Option<String>,
    /// `description`.
    pub description: Option<String>,
    /// `tags` (create only).
    pub tags: Option<Vec<String>>,
}

impl FloatingIpRequest {
    /// Parses a create or update body.
    pub fn parse(body: Value, method: Method, caller: &Caller) -> Result<FloatingIpRequest> {
        let mut input = Input::for_kind(body, &DEFINITION, method)?;
        let mut req = FloatingIpRequest::default();
        if method == Method::Create {
            req.project_id = Some(owner_project(&mut input, caller)?);
            req.floating_network_id = Some(as_uuid(
                "floating_network_id",
                &Input::required("floating_network_id", input.take("floating_network_id"))?,
            )?);
            req.floating_ip_address = input
                .take("floating_ip_address")
                .filter(|v| !v.is_null())
                .map(|v| as_ip("floating_ip_address", &v))
                .transpose()?;
            req.subnet_id = input
                .take("subnet_id")
                .filter(|v| !v.is_null())
                .map(|v| as_uuid("subnet_id", &v))
                .transpose()?;
            req.tags = input
                .string_list("tags", crate::meta::TAG_MAX)?
                .map(crate::meta::normalize_tags)
                .transpose()?;
        }
        req.description = input.string("description", crate::meta::DESCRIPTION_MAX)?;
        req.port_id = match input.take("port_id") {
            None => None,
            Some(Value::Null) => Some(None),
            Some(v) => Some(Some(as_uuid("port_id", &v)?)),
        };
        req.fixed_ip_address = match input.take("fixed_ip_address") {
            None | Some(Value::Null) => None,
            Some(v) => Some(as_ip("fixed_ip_address", &v)?),
        };
        req.router_id = match input.take("router_id") {
            None | Some(Value::Null) => None,
            Some(v) => Some(as_uuid("router_id", &v)?),
        };
        // On update the association being changed may be the existing one (checked there).
        if method == Method::Create
            && req.router_id.is_some()
            && !matches!(req.port_id, Some(Some(_)))
        {
            return Err(Error::BadRequest(
                "router_id cannot be specified without a port_id".into(),
            ));
        }
        if req.fixed_ip_address.is_some() && !matches!(req.port_id, Some(Some(_))) {
            return Err(Error::BadRequest(format!(
                "fixed_ip_address cannot be specified without a port_id{}",
                req.fixed_ip_address
                    .map(|ip| format!(" (got {})", show(&json!(ip.to_string()))))
                    .unwrap_or_default()
            )));
        }
        Ok(req)
    }
}

crate::resource!(FloatingIp, DEFINITION);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resource::Resource;

    const NET: &str = "11111111-2222-3333-4444-555555555555";

    fn user() -> Caller {
        Caller::member("p")
    }

    #[test]
    fn parses_and_renders() {
        let req = FloatingIpRequest::parse(
            json!({"floatingip": {"floating_network_id": NET, "port_id": NET, "fixed_ip_address": "10.0.0.3"}}),
            Method::Create,
            &user(),
        )
        .unwrap();
        assert_eq!(req.port_id, Some(Some(NET.to_owned())));
        let off = FloatingIpRequest::parse(
            json!({"floatingip": {"port_id": null}}),
            Method::Update,
            &user(),
        )
        .unwrap();
        assert_eq!(off.port_id, Some(None));
        assert!(
            FloatingIpRequest::parse(json!({"floatingip": {}}), Method::Create, &user()).is_err()
        );
        assert!(FloatingIpRequest::parse(
            json!({"floatingip": {"floating_network_id": NET, "fixed_ip_address": "10.0.0.3"}}),
            Method::Create,
            &user()
        )
        .is_err());
        let fip = FloatingIp {
            port_details: None,
            meta: Meta::new("f".into(), "p".into(), "t"),
            floating_network_id: NET.into(),
            floating_ip_address: "172.24.4.10".parse().unwrap(),
            floating_port_id: "x".into(),
            association: None,
            status: "DOWN".into(),
        };
        let wire = fip.render(crate::resource::Viewer::ADMIN);
        assert_eq!(wire["port_id"], Value::Null);
        assert_eq!(wire["floating_ip_address"], "172.24.4.10");
        assert!(!wire.contains_key("name"));
    }
}
