//! Subnets: IPv4 and IPv6 prefixes of a network, with gateway, allocation pools, DNS servers
//! and host routes.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::addr::{Cidr, IpRange, IpVersion};
use crate::error::{Error, Result};
use crate::input::{as_cidr, as_ip, as_string, as_uuid, show, Input, Method};
use crate::ipam;
use crate::meta::{owner_project, Caller, Meta};
use crate::resource::{attr, input, Definition, Rights};

/// The `subnets` resource.
pub static DEFINITION: Definition<Subnet> = Definition {
    collection: "subnets",
    singular: "subnet",
    plural: "subnets",
    fault: "Subnet",
    named: true,
    tagged: true,
    description: Some(Rights::ALL),
    updatable: true,
    api: crate::resource::Api::Neutron,
    attributes: &[
        attr("network_id", Rights::CREATE_QUERY, |s, _| {
            Some(json!(s.network_id))
        }),
        attr("ip_version", Rights::CREATE_QUERY, |s, _| {
            Some(json!(s.version().number()))
        }),
        attr("cidr", Rights::CREATE_QUERY, |s, _| {
            Some(json!(s.cidr.to_string()))
        }),
        attr("gateway_ip", Rights::ALL, |s, _| Some(json!(s.gateway_ip))),
        attr("allocation_pools", Rights::ALL, |s, _| {
            Some(json!(s.allocation_pools))
        }),
        attr("enable_dhcp", Rights::ALL, |s, _| {
            Some(json!(s.enable_dhcp))
        }),
        attr("dns_nameservers", Rights::ALL, |s, _| {
            Some(json!(s.dns_nameservers))
        }),
        attr("host_routes", Rights::ALL, |s, _| {
            Some(json!(s.host_routes))
        }),
        attr("ipv6_ra_mode", Rights::CREATE_QUERY, |s, _| {
            Some(json!(s.ipv6_ra_mode))
        }),
        attr("ipv6_address_mode", Rights::CREATE_QUERY, |s, _| {
            Some(json!(s.ipv6_address_mode))
        }),
        attr("subnetpool_id", Rights::CREATE_QUERY, |s, _| {
            Some(json!(s.subnetpool_id))
        }),
        attr("segment_id", Rights::CREATE_QUERY, |_, _| Some(Value::Null)),
        attr("shared", Rights::FILTER_ONLY, |s, _| Some(json!(s.shared))),
        attr("service_types", Rights::ALL, |s, _| {
            Some(json!(s.service_types))
        }),
        input("use_default_subnetpool", Rights::CREATE_QUERY),
        input("prefixlen", Rights::CREATE_QUERY),
    ],
};
/// Device owner prefixes a service type may name.
const SERVICE_TYPE_PREFIXES: &[&str] = &["network:", "neutron:", "compute:"];

fn parse_service_types(value: Value) -> Result<Vec<String>> {
    let Value::Array(items) = value else {
        return Err(Error::invalid_attr(
            "service_types",
            format!("'{}' is not a list", show(&value)),
        ));
    };
    let mut out: Vec<String> = Vec::with_capacity(items.len());
    for item in &items {
        let t = as_string("service_types", item, 255)?;
        if !SERVICE_TYPE_PREFIXES.iter().any(|p| t.starts_with(p)) {
            return Err(Error::fault(
                "InvalidSubnetServiceType",
                400,
                format!("Subnet service type {t} does not correspond to a valid device owner."),
            ));
        }
        if !out.contains(&t) {
            out.push(t);
        }
    }
    Ok(out)
}

impl Subnet {
    /// Whether a port owned by `device_owner` may take an address from it: it serves that
    /// owner, or serves no owner in particular.
    pub fn serves(&self, device_owner: &str) -> bool {
        self.service_types.is_empty() || self.service_types.iter().any(|t| t == device_owner)
    }
}

const IPV6_MODES: &[&str] = &["slaac", "dhcpv6-stateful", "dhcpv6-stateless"];

/// A static route handed to instances.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostRoute {
    /// Destination prefix.
    pub destination: Cidr,
    /// Next hop.
    pub nexthop: IpAddr,
}

/// A stored subnet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subnet {
    /// Standard attributes.
    pub meta: Meta,
    /// Its network.
    pub network_id: String,
    /// The prefix.
    pub cidr: Cidr,
    /// The pool the prefix was allocated from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnetpool_id: Option<String>,
    /// Device owners whose ports take addresses from it (`subnet-service-types`); empty:
    /// any port with no matching subnet.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub service_types: Vec<String>,
    /// Whether its network is shared (the filter `shared`), read with it for lists; never
    /// stored with it.
    #[serde(skip)]
    pub shared: bool,
    /// Gateway address, if any.
    pub gateway_ip: Option<IpAddr>,
    /// Where automatic addresses come from.
    pub allocation_pools: Vec<IpRange>,
    /// Whether instances get addresses by DHCP.
    pub enable_dhcp: bool,
    /// DNS servers for instances.
    pub dns_nameservers: Vec<IpAddr>,
    /// Extra routes for instances.
    pub host_routes: Vec<HostRoute>,
    /// IPv6 router advertisement mode.
    pub ipv6_ra_mode: Option<String>,
    /// IPv6 address mode; `slaac` and `dhcpv6-stateless` derive addresses from the MAC.
    pub ipv6_address_mode: Option<String>,
}

/// Most DNS servers per subnet: Neutron's default `max_dns_nameservers`.
pub const MAX_DNS_NAMESERVERS: usize = 5;
/// Most host routes per subnet: Neutron's default `max_subnet_host_routes`.
pub const MAX_HOST_ROUTES: usize = 20;
/// Most allocation pools per subnet. Neutron sets no number; Isthmus does, so that a body
/// cannot make a subnet of tens of thousands of ranges (every allocation walks them).
pub const MAX_ALLOCATION_POOLS: usize = 64;

fn parse_nameservers(v: Value, version: IpVersion) -> Result<Vec<IpAddr>> {
    let Value::Array(items) = v else {
        return Err(Error::invalid_attr("dns_nameservers", "not a list"));
    };
    if items.len() > MAX_DNS_NAMESERVERS {
        return Err(Error::fault(
            "DNSNameServersExhausted",
            400,
            format!("The number of DNS nameservers exceeds the limit {MAX_DNS_NAMESERVERS}."),
        ));
    }
    let mut out: Vec<IpAddr> = Vec::new();
    for item in &items {
        let ip = as_ip("dns_nameservers", item)?;
        if IpVersion::of(ip) != version {
            return Err(Error::InvalidInput(format!(
                "Nameserver {ip} is not of the subnet's IP version"
            )));
        }
        if out.contains(&ip) {
            return Err(Error::invalid_attr(
                "dns_nameservers",
                format!("Duplicate nameserver '{ip}'"),
            ));
        }
        out.push(ip);
    }
    Ok(out)
}

fn parse_routes(v: Value, version: IpVersion) -> Result<Vec<HostRoute>> {
    let Value::Array(items) = v else {
        return Err(Error::invalid_attr("host_routes", "not a list"));
    };
    if items.len() > MAX_HOST_ROUTES {
        return Err(Error::fault(
            "HostRoutesExhausted",
            400,
            format!("The number of host routes exceeds the limit {MAX_HOST_ROUTES}."),
        ));
    }
    let mut out: Vec<HostRoute> = Vec::new();
    for item in &items {
        let (Some(d), Some(n)) = (item.get("destination"), item.get("nexthop")) else {
            return Err(Error::invalid_attr(
                "host_routes",
                format!("'{item}' must have 'destination' and 'nexthop'"),
            ));
        };
        let route = HostRoute {
            destination: as_cidr("host_routes", d)?,
            nexthop: as_ip("host_routes", n)?,
        };
        if route.destination.version() != version || IpVersion::of(route.nexthop) != version {
            return Err(Error::InvalidInput(format!(
                "Host route {} via {} is not of the subnet's IP version",
                route.destination, route.nexthop
            )));
        }
        if out.contains(&route) {
            return Err(Error::invalid_attr("host_routes", "Duplicate hostroute"));
        }
        out.push(route);
    }
    Ok(out)
}

fn parse_pools(v: Value, cidr: &Cidr) -> Result<Vec<IpRange>> {
    let Value::Array(items) = v else {
        return Err(Error::invalid_attr("allocation_pools", "not a list"));
    };
    if items.len() > MAX_ALLOCATION_POOLS {
        return Err(Error::invalid_attr(
            "allocation_pools",
            format!("more than {MAX_ALLOCATION_POOLS} pools"),
        ));
    }
    items
        .iter()
        .map(|item| {
            let (Some(s), Some(e)) = (item.get("start"), item.get("end")) else {
                return Err(Error::invalid_attr(
                    "allocation_pools",
                    format!("'{item}' must have 'start' and 'end'"),
                ));
            };
            let range = IpRange {
                start: as_ip("allocation_pools", s)?,
                end: as_ip("allocation_pools", e)?,
            };
            if IpVersion::of(range.start) != cidr.version() {
                return Err(Error::InvalidInput(format!(
                    "Allocation pool {range} is not of the subnet's IP version"
                )));
            }
            Ok(range)
        })
        .collect()
}

fn check_gateway(cidr: &Cidr, gateway: IpAddr) -> Result<()> {
    if IpVersion::of(gateway) != cidr.version() {
        return Err(Error::InvalidInput(format!(
            "Gateway {gateway} is not of the subnet's IP version"
        )));
    }
    let n = crate::addr::to_u128(gateway);
    let is_network = n == cidr.first() && cidr.first() != cidr.last();
    let is_broadcast = cidr.version() == IpVersion::V4 && cidr.prefix < 31 && n == cidr.last();
    if is_network || is_broadcast {
        return Err(Error::InvalidInput(format!(
            "Gateway is not valid on subnet: {gateway} is the {} address of {cidr}",
            if is_network { "network" } else { "broadcast" }
        )));
    }
    Ok(())
}

impl Subnet {
    /// Parses and validates a create body (checks needing other subnets are the service's).
    pub fn parse_create(body: Value, caller: &Caller, id: String, now: &str) -> Result<Subnet> {
        let request = Subnet::begin_create(body, caller, id, now)?;
        let cidr = request.cidr.ok_or_else(|| {
            Error::BadRequest("A cidr must be specified in the absence of a subnet pool".to_owned())
        })?;
        request.finish(cidr, None)
    }

    /// Reads a create body up to its prefix: the service settles the prefix (given, or
    /// allocated from a subnet pool) and [`SubnetCreate::finish`]es.
    pub fn begin_create(
        body: Value,
        caller: &Caller,
        id: String,
        now: &str,
    ) -> Result<SubnetCreate> {
        let mut input = Input::for_kind(body, &DEFINITION, Method::Create)?;
        let project_id = owner_project(&mut input, caller)?;
        let mut meta = Meta::new(id, project_id, now);
        meta.read_common(&mut input)?;
        let network_id = as_uuid(
            "network_id",
            &Input::required("network_id", input.take("network_id"))?,
        )?;
        let explicit_pool = match input.take("subnetpool_id") {
            None | Some(Value::Null) => None,
            Some(v) => Some(as_uuid("subnetpool_id", &v)?),
        };
        let use_default = input.boolean("use_default_subnetpool")?.unwrap_or(false);
        let pool = match (explicit_pool, use_default) {
            (Some(_), true) => {
                return Err(Error::BadRequest(
                    "subnetpool_id and use_default_subnetpool cannot both be specified".to_owned(),
                ))
            }
            (Some(id), false) => PoolChoice::Pool(id),
            (None, true) => PoolChoice::Default,
            (None, false) => PoolChoice::None,
        };
        if input.take("segment_id").is_some_and(|v| !v.is_null()) {
            return Err(Error::BadRequest(
                "Routed segments are not supported".to_owned(),
            ));
        }
        let service_types = match input.take("service_types") {
            None | Some(Value::Null) => Vec::new(),
            Some(v) => parse_service_types(v)?,
        };
        let version = match crate::address_scope::ip_version(&mut input)? {
            Some(v) => v,
            None => {
                return Err(Error::BadRequest(
                    "Failed to parse request. Required attribute 'ip_version' not specified"
                        .to_owned(),
                ))
            }
        };
        let cidr = match input.take("cidr") {
            None | Some(Value::Null) => None,
            Some(v) => Some(as_cidr("cidr", &v)?),
        };
        if let Some(cidr) = cidr {
            if cidr.version() != version {
                return Err(Error::InvalidInput(format!(
                    "Cidr {cidr} does not match ip_version {}",
                    version.number()
                )));
            }
        }
        let prefixlen = match input.nullable_integer("prefixlen")?.flatten() {
            None => None,
            Some(n) if (0..=i64::from(version.bits())).contains(&n) => Some(n as u8),
            Some(n) => {
                return Err(Error::invalid_attr(
                    "prefixlen",
                    format!("'{n}' is not a valid prefix length"),
                ))
            }
        };
        if cidr.is_some() && prefixlen.is_some() {
            return Err(Error::BadRequest(
                "cidr and prefixlen must not be supplied together".to_owned(),
            ));
        }
        if pool == PoolChoice::None && prefixlen.is_some() {
            return Err(Error::BadRequest(
                "prefixlen is only valid with a subnet pool".to_owned(),
            ));
        }
        Ok(SubnetCreate {
            service_types,
            input,
            meta,
            network_id,
            version,
            cidr,
            prefixlen,
            pool,
        })
    }
}

/// Where a new subnet's prefix comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PoolChoice {
    /// An explicit `cidr`, no pool.
    None,
    /// The pool `subnetpool_id`.
    Pool(String),
    /// The family's default pool (`use_default_subnetpool`).
    Default,
}

/// A subnet create read up to its prefix.
#[derive(Debug, Clone)]
pub struct SubnetCreate {
    service_types: Vec<String>,
    input: Input,
    meta: Meta,
    /// The network.
    pub network_id: String,
    /// The family.
    pub version: IpVersion,
    /// The prefix asked for, if any.
    pub cidr: Option<Cidr>,
    /// The prefix length asked of a pool, if any.
    pub prefixlen: Option<u8>,
    /// Where the prefix comes from.
    pub pool: PoolChoice,
}

impl SubnetCreate {
    /// The new subnet's id.
    pub fn id(&self) -> &str {
        &self.meta.id
    }

    /// The project the subnet will belong to.
    pub fn project_id(&self) -> &str {
        &self.meta.project_id
    }

    /// Reads the rest of the body now that the prefix is `cidr` (from `subnetpool_id`, if
    /// any) and validates the subnet.
    pub fn finish(self, cidr: Cidr, subnetpool_id: Option<String>) -> Result<Subnet> {
        let SubnetCreate {
            service_types,
            mut input,
            meta,
            network_id,
            version,
            ..
        } = self;
        let gateway_ip = match input.take("gateway_ip") {
            None => Some(crate::addr::from_u128(version, cidr.first_host())),
            Some(Value::Null) => None,
            Some(v) => {
                let gw = as_ip("gateway_ip", &v)?;
                check_gateway(&cidr, gw)?;
                Some(gw)
            }
        };
        let allocation_pools = match input.take("allocation_pools") {
            None | Some(Value::Null) => ipam::default_pools(&cidr, gateway_ip),
            Some(v) => {
                let pools = parse_pools(v, &cidr)?;
                ipam::validate_pools(&cidr, &pools, gateway_ip)?;
                pools
            }
        };
        let dns_nameservers = match input.take("dns_nameservers") {
            None | Some(Value::Null) => Vec::new(),
            Some(v) => parse_nameservers(v, version)?,
        };
        let host_routes = match input.take("host_routes") {
            None | Some(Value::Null) => Vec::new(),
            Some(v) => parse_routes(v, version)?,
        };
        let mut mode = |key: &str| -> Result<Option<String>> {
            match input.take(key) {
                None | Some(Value::Null) => Ok(None),
                Some(v) => {
                    let m = as_string(key, &v, 32)?;
                    if !IPV6_MODES.contains(&m.as_str()) {
                        return Err(Error::invalid_attr(
                            key,
                            format!("'{m}' is not in {IPV6_MODES:?}"),
                        ));
                    }
                    Ok(Some(m))
                }
            }
        };
        let ipv6_ra_mode = mode("ipv6_ra_mode")?;
        let ipv6_address_mode = mode("ipv6_address_mode")?;
        if version == IpVersion::V4 && (ipv6_ra_mode.is_some() || ipv6_address_mode.is_some()) {
            return Err(Error::InvalidInput(
                "ipv6_ra_mode or ipv6_address_mode cannot be set when enable_dhcp is set to False or ip_version is 4"
                    .to_owned(),
            ));
        }
        if let (Some(ra), Some(addr)) = (&ipv6_ra_mode, &ipv6_address_mode) {
            if ra != addr {
                return Err(Error::InvalidInput(format!(
                    "ipv6_ra_mode set to '{ra}' with ipv6_address_mode set to '{addr}' is not valid. If both attributes are set, they must be the same value"
                )));
            }
        }
        let subnet = Subnet {
            shared: false,
            service_types,
            meta,
            network_id,
            cidr,
            subnetpool_id,
            gateway_ip,
            allocation_pools,
            enable_dhcp: input.boolean("enable_dhcp")?.unwrap_or(true),
            dns_nameservers,
            host_routes,
            ipv6_ra_mode,
            ipv6_address_mode,
        };
        if subnet.is_auto_address() && cidr.prefix != 64 {
            return Err(Error::InvalidInput(format!(
                "Invalid CIDR {cidr} for IPv6 address mode. OpenStack uses the EUI-64 address format, which requires the prefix to be /64"
            )));
        }
        Ok(subnet)
    }
}

impl Subnet {
    /// Applies an update body and records a new revision.
    pub fn apply_update(&mut self, body: Value, now: &str) -> Result<()> {
        let mut input = Input::for_kind(body, &DEFINITION, Method::Update)?;
        self.meta.read_common(&mut input)?;
        let version = self.cidr.version();
        if let Some(v) = input.take("gateway_ip") {
            self.gateway_ip = match v {
                Value::Null => None,
                v => {
                    let gw = as_ip("gateway_ip", &v)?;
                    check_gateway(&self.cidr, gw)?;
                    Some(gw)
                }
            };
        }
        if let Some(v) = input.take("allocation_pools") {
            self.allocation_pools = match v {
                Value::Null => ipam::default_pools(&self.cidr, self.gateway_ip),
                v => parse_pools(v, &self.cidr)?,
            };
        }
        ipam::validate_pools(&self.cidr, &self.allocation_pools, self.gateway_ip)?;
        if let Some(v) = input.take("service_types") {
            self.service_types = match v {
                Value::Null => Vec::new(),
                v => parse_service_types(v)?,
            };
        }
        if let Some(v) = input.take("dns_nameservers") {
            self.dns_nameservers = match v {
                Value::Null => Vec::new(),
                v => parse_nameservers(v, version)?,
            };
        }
        if let Some(v) = input.take("host_routes") {
            self.host_routes = match v {
                Value::Null => Vec::new(),
                v => parse_routes(v, version)?,
            };
        }
        if let Some(v) = input.boolean("enable_dhcp")? {
            self.enable_dhcp = v;
        }
        self.meta.touch(now);
        Ok(())
    }

    /// IPv6 subnets whose addresses are derived from the MAC (SLAAC, DHCPv6-stateless).
    pub fn is_auto_address(&self) -> bool {
        matches!(
            self.ipv6_address_mode.as_deref(),
            Some("slaac") | Some("dhcpv6-stateless")
        )
    }

    /// The address family.
    pub fn version(&self) -> IpVersion {
        self.cidr.version()
    }
}

crate::resource!(Subnet, DEFINITION);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resource::Resource;

    const NET: &str = "11111111-2222-3333-4444-555555555555";

    fn caller() -> Caller {
        Caller::member("p")
    }
    fn create(extra: Value) -> Result<Subnet> {
        let mut body = json!({"network_id": NET, "ip_version": 4, "cidr": "10.0.0.0/24"});
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        Subnet::parse_create(json!({"subnet": body}), &caller(), "id".into(), "t")
    }

    #[test]
    fn defaults_and_wire() {
        let s = create(json!({})).unwrap();
        assert_eq!(s.gateway_ip, Some("10.0.0.1".parse().unwrap()));
        let wire = s.render(crate::resource::Viewer::ADMIN);
        assert_eq!(
            wire["allocation_pools"],
            json!([{"start": "10.0.0.2", "end": "10.0.0.254"}])
        );
        assert_eq!(wire["ip_version"], 4);
        assert_eq!(wire["cidr"], "10.0.0.0/24");
        let no_gw = create(json!({"gateway_ip": null})).unwrap();
        assert_eq!(
            no_gw.render(crate::resource::Viewer::ADMIN)["gateway_ip"],
            Value::Null
        );
        assert_eq!(
            no_gw.allocation_pools[0].start,
            "10.0.0.1".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn v6_and_modes() {
        let s = create(json!({"ip_version": 6, "cidr": "2001:db8::/64", "ipv6_address_mode": "slaac", "ipv6_ra_mode": "slaac"})).unwrap();
        assert!(s.is_auto_address());
        assert!(create(
            json!({"ip_version": 6, "cidr": "2001:db8::/80", "ipv6_address_mode": "slaac"})
        )
        .is_err());
        assert!(create(json!({"ipv6_address_mode": "slaac"})).is_err());
        assert!(
            create(json!({"ip_version": 6})).is_err(),
            "cidr family must match"
        );
    }

    #[test]
    fn refusals() {
        assert!(create(json!({"cidr": "10.0.0.1/24"})).is_err());
        assert!(create(json!({"gateway_ip": "10.0.0.0"})).is_err());
        assert!(create(json!({"gateway_ip": "10.0.0.255"})).is_err());
        assert!(create(json!({"dns_nameservers": ["8.8.8.8", "8.8.8.8"]})).is_err());
        assert!(
            create(json!({"allocation_pools": [{"start": "10.0.0.1", "end": "10.0.0.9"}]}))
                .is_err()
        );
        assert!(create(
            json!({"host_routes": [{"destination": "10.1.0.0/16", "nexthop": "10.0.0.5"}]})
        )
        .is_ok());
        assert!(create(json!({"subnetpool_id": "x"})).is_err());
        let mut s = create(json!({})).unwrap();
        s.apply_update(json!({"subnet": {"gateway_ip": null, "allocation_pools": [{"start": "10.0.0.1", "end": "10.0.0.20"}]}}), "t").unwrap();
        assert_eq!(s.meta.revision_number, 2);
        assert!(s
            .apply_update(json!({"subnet": {"cidr": "10.9.0.0/24"}}), "t")
            .is_err());
    }
}
