//! The load balancer: a VIP (a Neutron port on a tenant subnet) that listeners listen on.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::{admin_state, id_list, online, unsupported, validation, ACTIVE, PROVIDER};
use crate::error::{Error, Result};
use crate::input::{as_ip, as_uuid, Input, Method};
use crate::meta::Meta;
use crate::resource::{attr, Api, Definition, Rights};

/// The `loadbalancers` resource.
pub static DEFINITION: Definition<LoadBalancer> = Definition {
    collection: "loadbalancers",
    singular: "loadbalancer",
    plural: "loadbalancers",
    fault: "Load Balancer",
    named: true,
    tagged: true,
    description: Some(Rights::ALL),
    updatable: true,
    api: Api::Octavia,
    attributes: &[
        attr("provisioning_status", Rights::READ, |l, _| {
            Some(json!(l.provisioning_status))
        }),
        attr("operating_status", Rights::READ, |l, _| {
            Some(json!(online(l.admin_state_up)))
        }),
        attr("admin_state_up", Rights::ALL, |l, _| {
            Some(json!(l.admin_state_up))
        }),
        attr("vip_address", Rights::CREATE_QUERY, |l, _| {
            Some(json!(l.vip_address.to_string()))
        }),
        attr("vip_port_id", Rights::CREATE_QUERY, |l, _| {
            Some(json!(l.vip_port_id))
        }),
        attr("vip_subnet_id", Rights::CREATE_QUERY, |l, _| {
            Some(json!(l.vip_subnet_id))
        }),
        attr("vip_network_id", Rights::CREATE_QUERY, |l, _| {
            Some(json!(l.vip_network_id))
        }),
        attr("vip_qos_policy_id", Rights::CREATE_QUERY, |_, _| {
            Some(Value::Null)
        }),
        attr("vip_sg_ids", Rights::CREATE, |_, _| Some(json!([]))),
        attr("vip_vnic_type", Rights::READ, |_, _| Some(json!("normal"))),
        attr("additional_vips", Rights::CREATE, |_, _| Some(json!([]))),
        attr("listeners", Rights::CREATE, |l, _| {
            Some(id_list(&l.listeners))
        }),
        attr("pools", Rights::CREATE, |l, _| Some(id_list(&l.pools))),
        attr("provider", Rights::CREATE_QUERY, |_, _| {
            Some(json!(PROVIDER))
        }),
        attr("flavor_id", Rights::CREATE_QUERY, |_, _| Some(Value::Null)),
        attr("availability_zone", Rights::CREATE_QUERY, |_, _| {
            Some(Value::Null)
        }),
    ],
};

/// A stored load balancer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoadBalancer {
    /// Standard attributes.
    pub meta: Meta,
    /// `admin_state_up`: down, no listener of it forwards.
    pub admin_state_up: bool,
    /// `provisioning_status`: what the nodes have applied, computed on each read (never stored).
    #[serde(skip)]
    pub provisioning_status: String,
    /// The VIP's address (one of its port's fixed IPs).
    pub vip_address: IpAddr,
    /// The VIP's Neutron port.
    pub vip_port_id: String,
    /// The VIP address's subnet.
    pub vip_subnet_id: String,
    /// The VIP port's network.
    pub vip_network_id: String,
    /// Whether the VIP port was made for this load balancer (deleted with it) rather than
    /// given by the client as `vip_port_id`.
    pub vip_port_owned: bool,
    /// Its listeners' ids.
    pub listeners: Vec<String>,
    /// Its pools' ids.
    pub pools: Vec<String>,
}

crate::resource!(LoadBalancer, DEFINITION);

/// Where a new load balancer's VIP comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VipRequest {
    /// An existing port (`vip_port_id`): its address on `subnet_id` (or its first IPv4 one).
    Port {
        /// The port.
        port_id: String,
        /// The address to use, if given.
        address: Option<IpAddr>,
    },
    /// A new port on a network and/or subnet, with an optional address.
    New {
        /// `vip_network_id`.
        network_id: Option<String>,
        /// `vip_subnet_id`.
        subnet_id: Option<String>,
        /// `vip_address`.
        address: Option<IpAddr>,
    },
}

/// A create body, read: the load balancer without its VIP, and where the VIP comes from.
#[derive(Debug, Clone)]
pub struct CreateRequest {
    /// Standard attributes.
    pub meta: Meta,
    /// `admin_state_up`.
    pub admin_state_up: bool,
    /// The VIP.
    pub vip: VipRequest,
}

impl LoadBalancer {
    /// Reads a create body whose standard attributes are read into `meta`; what only a proxy
    /// can do (a whole tree of listeners and pools in one call, flavors, QoS) is refused.
    pub fn read_create(meta: Meta, input: &mut Input) -> Result<CreateRequest> {
        if let Some(p) = input.take("provider") {
            if p.as_str() != Some(PROVIDER) {
                return Err(Error::fault(
                    "ProviderNotEnabled",
                    400,
                    format!("Provider '{}' is not enabled.", p.as_str().unwrap_or("")),
                ));
            }
        }
        for key in ["listeners", "pools"] {
            if input.take(key).is_some_and(|v| v != json!([])) {
                return Err(unsupported(
                    "creating listeners and pools with the load balancer; create them one by one",
                ));
            }
        }
        for key in ["flavor_id", "vip_qos_policy_id", "availability_zone"] {
            if input.take(key).is_some_and(|v| !v.is_null()) {
                return Err(unsupported(key));
            }
        }
        if input.take("vip_sg_ids").is_some_and(|v| v != json!([])) {
            return Err(unsupported("vip_sg_ids"));
        }
        if input
            .take("additional_vips")
            .is_some_and(|v| v != json!([]))
        {
            return Err(unsupported("additional_vips"));
        }
        let admin_state_up = admin_state(input, true)?;
        let uuid = |input: &mut Input, key: &str| -> Result<Option<String>> {
            input.take(key).map(|v| as_uuid(key, &v)).transpose()
        };
        let port_id = uuid(input, "vip_port_id")?;
        let network_id = uuid(input, "vip_network_id")?;
        let subnet_id = uuid(input, "vip_subnet_id")?;
        let address = input
            .take("vip_address")
            .map(|v| as_ip("vip_address", &v))
            .transpose()?;
        let vip = match (port_id, network_id, subnet_id) {
            (Some(port_id), None, None) => VipRequest::Port { port_id, address },
            (Some(_), _, _) => {
                return Err(validation(
                    "vip_port_id cannot be combined with vip_network_id or vip_subnet_id",
                ))
            }
            (None, None, None) => {
                return Err(validation(
                    "VIP must contain one of: vip_port_id, vip_network_id, vip_subnet_id.",
                ))
            }
            (None, network_id, subnet_id) => VipRequest::New {
                network_id,
                subnet_id,
                address,
            },
        };
        Ok(CreateRequest {
            meta,
            admin_state_up,
            vip,
        })
    }

    /// The load balancer of a create request once its VIP port exists.
    pub fn new(
        request: CreateRequest,
        vip_port_id: String,
        vip_network_id: String,
        vip_subnet_id: String,
        vip_address: IpAddr,
        vip_port_owned: bool,
    ) -> LoadBalancer {
        LoadBalancer {
            meta: request.meta,
            admin_state_up: request.admin_state_up,
            provisioning_status: ACTIVE.to_owned(),
            vip_address,
            vip_port_id,
            vip_subnet_id,
            vip_network_id,
            vip_port_owned,
            listeners: Vec::new(),
            pools: Vec::new(),
        }
    }

    /// Applies an update body (name, description, tags, `admin_state_up`).
    pub fn apply_update(&mut self, input: &mut Input) -> Result<()> {
        if input
            .take("vip_qos_policy_id")
            .is_some_and(|v| !v.is_null())
        {
            return Err(unsupported("vip_qos_policy_id"));
        }
        self.admin_state_up = admin_state(input, self.admin_state_up)?;
        Ok(())
    }

    /// Whether it still has listeners or pools (a delete without `cascade` is refused).
    pub fn has_children(&self) -> bool {
        !self.listeners.is_empty() || !self.pools.is_empty()
    }
}

/// Polices a create or update body.
pub fn input(body: Value, method: Method) -> Result<Input> {
    Input::for_kind(body, &DEFINITION, method)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resource::Resource;

    fn read(body: Value) -> Result<CreateRequest> {
        let mut input = input(json!({ "loadbalancer": body }), Method::Create)?;
        LoadBalancer::read_create(Meta::new("lb".into(), "p".into(), "t"), &mut input)
    }

    #[test]
    fn needs_one_vip_source_and_refuses_proxy_features() {
        assert_eq!(
            read(json!({})).unwrap_err().type_name(),
            "ValidationException"
        );
        let subnet = "5e2fb5f7-6cb9-4f6a-9d8e-0f8a4f1c2b3d";
        let r = read(json!({"vip_subnet_id": subnet, "vip_address": "10.0.0.9"})).unwrap();
        assert!(matches!(
            r.vip,
            VipRequest::New {
                subnet_id: Some(_),
                address: Some(_),
                ..
            }
        ));
        let e = read(json!({"vip_subnet_id": subnet, "provider": "amphora"})).unwrap_err();
        assert_eq!(e.status(), 400);
        let e = read(json!({"vip_subnet_id": subnet, "flavor_id": subnet})).unwrap_err();
        assert_eq!(e.status(), 501);
        assert!(read(json!({"vip_subnet_id": "nope"})).is_err());
    }

    #[test]
    fn renders_octavias_attributes_without_neutrons() {
        let r = read(json!({"vip_network_id": "5e2fb5f7-6cb9-4f6a-9d8e-0f8a4f1c2b3d"})).unwrap();
        let lb = LoadBalancer::new(
            r,
            "port".into(),
            "net".into(),
            "sub".into(),
            "10.0.0.9".parse().unwrap(),
            true,
        );
        let shown = lb.render(crate::resource::Viewer::ADMIN);
        assert_eq!(shown["provider"], "isthmus");
        assert_eq!(shown["vip_address"], "10.0.0.9");
        assert_eq!(shown["provisioning_status"], "ACTIVE");
        assert!(shown.contains_key("project_id"));
        assert!(!shown.contains_key("tenant_id"));
        assert!(!shown.contains_key("revision_number"));
    }
}
