//! Routers (Neutron's `router`, `ext-gw-mode` and `extraroute` extensions): distributed by
//! construction, with an optional gateway on an external network.
//!
//! A router's interfaces are ordinary ports (`device_id` = the router) that the router also
//! lists in its stored record, so every "already attached", "in use" and overlap check is one
//! compare on the router's revision.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::addr::Cidr;
use crate::error::{Error, Result};
use crate::input::{as_bool, as_uuid, show, Input, Method};
use crate::meta::{owner_project, Caller, Meta};
use crate::port::{parse_fixed_ips, FixedIp, FixedIpRequest};
use crate::resource::{attr, Definition, Rights};

/// `device_owner` of a distributed router's interface ports (same gateway IP and MAC on every
/// node hosting the router).
pub const OWNER_INTERFACE: &str = "network:router_interface_distributed";
/// `device_owner` of a (centralized) router's interface ports, as other Neutron backends make
/// them.
pub const OWNER_LEGACY_INTERFACE: &str = "network:router_interface";
/// `device_owner` of a router's gateway port on its external network.
pub const OWNER_GATEWAY: &str = "network:router_gateway";
/// `device_owner` of the port per interface through which the gateway node SNATs that subnet
/// (Neutron's DVR name).
pub const OWNER_SNAT: &str = "network:router_centralized_snat";
/// `device_owner` of the port holding a floating IP's address on the external network.
pub const OWNER_FLOATING_IP: &str = "network:floatingip";
/// Neutron's default `max_routes`.
pub const MAX_ROUTES: usize = 30;

/// Whether a `device_owner` marks a port that only the L3 service may delete or re-own.
pub fn is_l3_owner(owner: &str) -> bool {
    [
        OWNER_INTERFACE,
        OWNER_GATEWAY,
        OWNER_SNAT,
        OWNER_FLOATING_IP,
    ]
    .contains(&owner)
        || is_interface_owner(owner)
}

/// Whether a `device_owner` marks a router's interface on a subnet (which holds the subnet's
/// gateway address, also on automatic IPv6 subnets).
pub fn is_interface_owner(owner: &str) -> bool {
    owner == OWNER_INTERFACE || owner == OWNER_LEGACY_INTERFACE
}

/// The `routers` resource.
pub static DEFINITION: Definition<Router> = Definition {
    collection: "routers",
    singular: "router",
    plural: "routers",
    fault: "Router",
    named: true,
    tagged: true,
    description: Some(Rights::ALL),
    updatable: true,
    api: crate::resource::Api::Neutron,
    attributes: &[
        attr("admin_state_up", Rights::ALL, |r, _| {
            Some(json!(r.admin_state_up))
        }),
        attr("status", Rights::READ, |_, _| Some(json!("ACTIVE"))),
        attr("external_gateway_info", Rights::ALL, |r, _| {
            Some(match &r.gateway {
                None => Value::Null,
                Some(g) => json!({
                    "network_id": g.network_id,
                    "enable_snat": g.enable_snat,
                    "external_fixed_ips": g.external_fixed_ips,
                }),
            })
        }),
        attr("routes", Rights::UPDATE.with(Rights::QUERY), |r, _| {
            Some(json!(r.routes))
        }),
        attr("distributed", Rights::ALL, |_, _| Some(Value::Bool(true))),
        attr("ha", Rights::ALL, |r, _| Some(Value::Bool(r.ha))),
        attr("availability_zone_hints", Rights::CREATE_QUERY, |r, _| {
            Some(json!(r.availability_zone_hints))
        }),
        attr("availability_zones", Rights::READ, |_, _| {
            Some(json!(["nova"]))
        }),
        attr("flavor_id", Rights::READ, |_, _| Some(Value::Null)),
    ],
};

/// An extra route (`destination` via `nexthop`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    /// Destination prefix.
    pub destination: Cidr,
    /// Next hop, on one of the router's subnets.
    pub nexthop: IpAddr,
}

/// The router's gateway.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Gateway {
    /// External network.
    pub network_id: String,
    /// Whether instances without a floating IP are SNAT'd to the gateway address.
    pub enable_snat: bool,
    /// The gateway port.
    pub port_id: String,
    /// Its addresses.
    pub external_fixed_ips: Vec<FixedIp>,
}

/// One interface: a port of the router on one network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interface {
    /// The interface port.
    pub port_id: String,
    /// Its network.
    pub network_id: String,
    /// Its addresses (the subnets' gateway addresses when added by subnet).
    pub fixed_ips: Vec<FixedIp>,
    /// Prefixes of those subnets, in the same order (for overlap and next-hop checks).
    pub cidrs: Vec<Cidr>,
    /// The gateway node's SNAT port on the same network, while the router has a gateway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snat_port_id: Option<String>,
}

/// A stored router.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Router {
    /// Standard attributes.
    pub meta: Meta,
    /// Administrative state.
    pub admin_state_up: bool,
    /// Gateway, if set.
    pub gateway: Option<Gateway>,
    /// Extra routes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<Route>,
    /// Interfaces, in the order they were added.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub interfaces: Vec<Interface>,
    /// Availability zone hints (kept for clients; there is one zone).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub availability_zone_hints: Vec<String>,
    /// `ha` as asked (`l3-ha`): every router is distributed, so east-west traffic already
    /// survives the loss of a node either way.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub ha: bool,
}

/// A requested gateway (`external_gateway_info`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayRequest {
    /// External network.
    pub network_id: String,
    /// `enable_snat` (Neutron's default: true).
    pub enable_snat: Option<bool>,
    /// `external_fixed_ips`.
    pub external_fixed_ips: Option<Vec<FixedIpRequest>>,
}

/// A validated create or update body. `gateway` is `Some(None)` when the body clears it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RouterRequest {
    /// Owner (create only).
    pub project_id: Option<String>,
    /// `name`.
    pub name: Option<String>,
    /// `description`.
    pub description: Option<String>,
    /// `tags` (create only).
    pub tags: Option<Vec<String>>,
    /// `admin_state_up`.
    pub admin_state_up: Option<bool>,
    /// `external_gateway_info`.
    pub gateway: Option<Option<GatewayRequest>>,
    /// `routes` (update only).
    pub routes: Option<Vec<Route>>,
    /// `availability_zone_hints` (create only).
    pub availability_zone_hints: Option<Vec<String>>,
    /// `ha`.
    pub ha: Option<bool>,
}

/// What `add_router_interface` / `remove_router_interface` name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InterfaceRequest {
    /// By subnet: the router takes the subnet's gateway address.
    Subnet(String),
    /// By an existing port.
    Port(String),
}

impl InterfaceRequest {
    /// Parses `{"subnet_id": ...}` or `{"port_id": ...}`.
    pub fn parse(body: Value) -> Result<InterfaceRequest> {
        let Value::Object(map) = body else {
            return Err(Error::BadRequest("Body contains invalid data".to_owned()));
        };
        if let Some(k) = map
            .keys()
            .find(|k| !["subnet_id", "port_id"].contains(&k.as_str()))
        {
            return Err(Error::BadRequest(format!(
                "Unrecognized attribute(s) '{k}'"
            )));
        }
        match (map.get("subnet_id"), map.get("port_id")) {
            (Some(_), Some(_)) => Err(Error::BadRequest(
                "Bad router request: Cannot specify both subnet-id and port-id.".to_owned(),
            )),
            (Some(s), None) => Ok(InterfaceRequest::Subnet(as_uuid("subnet_id", s)?)),
            (None, Some(p)) => Ok(InterfaceRequest::Port(as_uuid("port_id", p)?)),
            (None, None) => Err(Error::BadRequest(
                "Bad router request: Either subnet_id or port_id must be specified.".to_owned(),
            )),
        }
    }
}

fn parse_gateway(value: Value) -> Result<Option<GatewayRequest>> {
    let map = match value {
        Value::Null => return Ok(None),
        Value::Object(m) if m.is_empty() => return Ok(None),
        Value::Object(m) => m,
        other => {
            return Err(Error::invalid_attr(
                "external_gateway_info",
                format!("'{}' is not a dictionary", show(&other)),
            ))
        }
    };
    if let Some(k) = map
        .keys()
        .find(|k| !["network_id", "enable_snat", "external_fixed_ips"].contains(&k.as_str()))
    {
        return Err(Error::invalid_attr(
            "external_gateway_info",
            format!("Unexpected keys supplied: {k}"),
        ));
    }
    let network_id = as_uuid(
        "external_gateway_info",
        map.get("network_id").ok_or_else(|| {
            Error::invalid_attr(
                "external_gateway_info",
                "Validation of dictionary's keys failed. Expected keys: {'network_id'}",
            )
        })?,
    )?;
    let enable_snat = map
        .get("enable_snat")
        .map(|v| as_bool("enable_snat", v))
        .transpose()?;
    let external_fixed_ips = match map.get("external_fixed_ips") {
        None => None,
        Some(Value::Array(items)) => {
            let mut entries = Vec::with_capacity(items.len());
            for item in items {
                let Value::Object(entry) = item else {
                    return Err(Error::invalid_attr(
                        "external_fixed_ips",
                        format!("'{}' is not a dictionary", show(item)),
                    ));
                };
                entries.push(entry.clone());
            }
            Some(parse_fixed_ips("external_fixed_ips", entries)?)
        }
        Some(other) => {
            return Err(Error::invalid_attr(
                "external_fixed_ips",
                format!("'{}' is not a list", show(other)),
            ))
        }
    };
    Ok(Some(GatewayRequest {
        network_id,
        enable_snat,
        external_fixed_ips,
    }))
}

/// Parses a `routes` list (at most [`MAX_ROUTES`]).
pub fn parse_routes(value: Value) -> Result<Vec<Route>> {
    let items = match value {
        Value::Null => return Ok(Vec::new()),
        Value::Array(items) => items,
        other => {
            return Err(Error::invalid_attr(
                "routes",
                format!("'{}' is not a list", show(&other)),
            ))
        }
    };
    if items.len() > MAX_ROUTES {
        return Err(Error::BadRequest(format!(
            "Number of routes exceeds the maximum {MAX_ROUTES}"
        )));
    }
    let mut routes: Vec<Route> = Vec::new();
    for item in items {
        let bad = || {
            Error::invalid_attr(
                "routes",
                format!(
                    "'{}' is not a route with destination and nexthop",
                    show(&item)
                ),
            )
        };
        let destination = item
            .get("destination")
            .and_then(Value::as_str)
            .and_then(|d| Cidr::parse(d).ok())
            .ok_or_else(bad)?;
        let nexthop = item
            .get("nexthop")
            .and_then(Value::as_str)
            .and_then(|n| n.parse::<IpAddr>().ok())
            .ok_or_else(bad)?;
        let route = Route {
            destination,
            nexthop,
        };
        if routes.contains(&route) {
            return Err(Error::invalid_attr("routes", "Duplicate route"));
        }
        routes.push(route);
    }
    Ok(routes)
}

impl RouterRequest {
    /// Parses a create or update body.
    pub fn parse(body: Value, method: Method, caller: &Caller) -> Result<RouterRequest> {
        let mut input = Input::for_kind(body, &DEFINITION, method)?;
        let mut req = RouterRequest::default();
        if method == Method::Create {
            req.project_id = Some(owner_project(&mut input, caller)?);
            req.tags = input
                .string_list("tags", crate::meta::TAG_MAX)?
                .map(crate::meta::normalize_tags)
                .transpose()?;
            req.availability_zone_hints = input.string_list("availability_zone_hints", 255)?;
        }
        req.name = input.string("name", crate::meta::NAME_MAX)?;
        req.description = input.string("description", crate::meta::DESCRIPTION_MAX)?;
        req.admin_state_up = input.boolean("admin_state_up")?;
        if input.boolean("distributed")? == Some(false) {
            return Err(Error::InvalidInput(
                "Isthmus routers are always distributed; 'distributed' cannot be false".to_owned(),
            ));
        }
        req.ha = input.boolean("ha")?;
        if let Some(v) = input.take("external_gateway_info") {
            req.gateway = Some(parse_gateway(v)?);
        }
        if let Some(v) = input.take("routes") {
            req.routes = Some(parse_routes(v)?);
        }
        Ok(req)
    }
}

impl Router {
    /// Prefixes of every interface subnet.
    pub fn cidrs(&self) -> impl Iterator<Item = &Cidr> {
        self.interfaces.iter().flat_map(|i| i.cidrs.iter())
    }

    /// The router's own addresses on its subnets.
    pub fn own_addresses(&self) -> Vec<IpAddr> {
        self.interfaces
            .iter()
            .flat_map(|i| i.fixed_ips.iter().map(|f| f.ip_address))
            .collect()
    }

    /// The interface with an address on `subnet_id`.
    pub fn interface_on(&self, subnet_id: &str) -> Option<&Interface> {
        self.interfaces
            .iter()
            .find(|i| i.fixed_ips.iter().any(|f| f.subnet_id == subnet_id))
    }

    /// Checks extra routes against the interfaces: each next hop must be on a connected
    /// subnet and not be one of the router's own addresses.
    pub fn check_routes(&self, routes: &[Route]) -> Result<()> {
        let own = self.own_addresses();
        for route in routes {
            if route.destination.version() != crate::addr::IpVersion::of(route.nexthop) {
                return Err(Error::InvalidInput(format!(
                    "Invalid format for routes: {}, the nexthop is not of the destination's IP version",
                    route_text(route)
                )));
            }
            if !self.cidrs().any(|c| c.contains(route.nexthop)) {
                return Err(Error::InvalidInput(format!(
                    "Invalid format for routes: {}, the nexthop is not connected with router",
                    route_text(route)
                )));
            }
            if own.contains(&route.nexthop) {
                return Err(Error::InvalidInput(format!(
                    "Invalid format for routes: {}, the nexthop is used by router",
                    route_text(route)
                )));
            }
        }
        Ok(())
    }

    /// Applies an update's plain attributes (`If-Match` and the gateway are the service's):
    /// `ha` changes only while the router is (or is being set) administratively down, as
    /// Neutron's `router-admin-state-down-before-update` says.
    pub fn apply(&mut self, req: &RouterRequest, now: &str) -> Result<()> {
        if let Some(v) = &req.name {
            self.meta.name = v.clone();
        }
        if let Some(v) = &req.description {
            self.meta.description = v.clone();
        }
        let admin_state_up = req.admin_state_up.unwrap_or(self.admin_state_up);
        if let Some(ha) = req.ha.filter(|ha| *ha != self.ha) {
            if admin_state_up {
                return Err(Error::BadRequest(
                    "Cannot change HA attribute of active routers. Please set router admin_state_up to False prior to upgrade".to_owned(),
                ));
            }
            self.ha = ha;
        }
        self.admin_state_up = admin_state_up;
        if let Some(routes) = &req.routes {
            self.check_routes(routes)?;
            self.routes = routes.clone();
        }
        self.meta.touch(now);
        Ok(())
    }

    /// `add_extraroutes` (`add`) or `remove_extraroutes` (`extraroute-atomic`): routes
    /// added that are already there and routes removed that are not are no-ops.
    pub fn change_routes(&mut self, body: Value, add: bool) -> Result<()> {
        let Some(Value::Object(mut router)) = body.get("router").cloned() else {
            return Err(Error::BadRequest(
                "Unable to find 'router' in request body".to_owned(),
            ));
        };
        let routes = Input::required("routes", router.remove("routes"))?;
        if let Some(other) = router.keys().next() {
            return Err(Error::BadRequest(format!(
                "Unrecognized attribute(s) '{other}'"
            )));
        }
        let routes = parse_routes(routes)?;
        let mut next = self.routes.clone();
        if add {
            self.check_routes(&routes)?;
            for r in routes {
                if !next.contains(&r) {
                    next.push(r);
                }
            }
            if next.len() > MAX_ROUTES {
                return Err(Error::BadRequest(format!(
                    "Number of routes exceeds the maximum {MAX_ROUTES}"
                )));
            }
        } else {
            next.retain(|r| !routes.contains(r));
        }
        self.routes = next;
        Ok(())
    }
}

crate::resource!(Router, DEFINITION);

fn route_text(route: &Route) -> String {
    format!(
        "{{'destination': '{}', 'nexthop': '{}'}}",
        route.destination, route.nexthop
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resource::Resource;

    const NET: &str = "11111111-2222-3333-4444-555555555555";

    fn user() -> Caller {
        Caller::member("p")
    }

    #[test]
    fn parses_create_and_update() {
        let req = RouterRequest::parse(
            json!({"router": {"name": "r1", "external_gateway_info": {"network_id": NET, "enable_snat": false}}}),
            Method::Create,
            &user(),
        )
        .unwrap();
        let gw = req.gateway.unwrap().unwrap();
        assert_eq!((gw.network_id.as_str(), gw.enable_snat), (NET, Some(false)));
        let cleared = RouterRequest::parse(
            json!({"router": {"external_gateway_info": {}}}),
            Method::Update,
            &user(),
        )
        .unwrap();
        assert_eq!(cleared.gateway, Some(None));
        let routes = RouterRequest::parse(
            json!({"router": {"routes": [{"destination": "10.9.0.0/16", "nexthop": "10.0.0.5"}]}}),
            Method::Update,
            &user(),
        )
        .unwrap()
        .routes
        .unwrap();
        assert_eq!(routes[0].nexthop.to_string(), "10.0.0.5");
    }

    #[test]
    fn refuses_bad_input() {
        let bad = |body: Value, m: Method| RouterRequest::parse(body, m, &user()).unwrap_err();
        assert_eq!(
            bad(json!({"router": {"routes": []}}), Method::Create).status(),
            400
        );
        bad(
            json!({"router": {"external_gateway_info": {"enable_snat": true}}}),
            Method::Create,
        );
        bad(
            json!({"router": {"routes": [{"destination": "x", "nexthop": "10.0.0.1"}]}}),
            Method::Update,
        );
        assert!(InterfaceRequest::parse(json!({})).is_err());
        assert!(InterfaceRequest::parse(json!({"subnet_id": NET, "port_id": NET})).is_err());
        assert_eq!(
            InterfaceRequest::parse(json!({"port_id": NET})).unwrap(),
            InterfaceRequest::Port(NET.into())
        );
    }

    #[test]
    fn routes_need_a_connected_nexthop() {
        let mut r = Router {
            ha: false,
            meta: Meta::new("r".into(), "p".into(), "t"),
            admin_state_up: true,
            gateway: None,
            routes: vec![],
            interfaces: vec![Interface {
                port_id: "x".into(),
                network_id: NET.into(),
                fixed_ips: vec![FixedIp {
                    subnet_id: "s".into(),
                    ip_address: "10.0.0.1".parse().unwrap(),
                }],
                cidrs: vec![Cidr::parse("10.0.0.0/24").unwrap()],
                snat_port_id: None,
            }],
            availability_zone_hints: vec![],
        };
        let route = |d: &str, n: &str| Route {
            destination: Cidr::parse(d).unwrap(),
            nexthop: n.parse().unwrap(),
        };
        assert!(r.check_routes(&[route("10.9.0.0/16", "10.0.0.5")]).is_ok());
        assert!(r.check_routes(&[route("10.9.0.0/16", "10.1.0.5")]).is_err());
        assert!(r.check_routes(&[route("10.9.0.0/16", "10.0.0.1")]).is_err());
        r.admin_state_up = false;
        let wire = r.render(&user());
        assert_eq!(wire["external_gateway_info"], Value::Null);
        assert!(!wire.contains_key("distributed"));
    }
}
