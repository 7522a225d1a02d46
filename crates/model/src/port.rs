//! Ports: a VM's or pod's attachment to a network, with addresses, MAC, security groups,
//! allowed address pairs, DNS name and binding.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::addr::Cidr;
use crate::error::{Error, Result};
use crate::input::{as_ip, as_string, as_uuid, show, Input, Method};
use crate::mac;
use crate::meta::{owner_project, Caller, Meta};
use crate::network::bridge_name;
use crate::resource::{attr, defaulted, Definition, Rights};

/// The `ports` resource.
pub static DEFINITION: Definition<Port> = Definition {
    collection: "ports",
    singular: "port",
    plural: "ports",
    fault: "Port",
    named: true,
    tagged: true,
    description: Some(Rights::ALL),
    updatable: true,
    api: crate::resource::Api::Neutron,
    attributes: &[
        defaulted("network_id", Rights::CREATE_QUERY, "\"\"", |p, _| {
            Some(json!(p.network_id))
        }),
        attr("admin_state_up", Rights::ALL, |p, _| {
            Some(json!(p.admin_state_up))
        }),
        attr("mac_address", Rights::ALL, |p, _| {
            Some(json!(p.mac_address))
        }),
        attr("fixed_ips", Rights::ALL, |p, _| Some(json!(p.fixed_ips))),
        attr("device_id", Rights::ALL, |p, _| Some(json!(p.device_id))),
        defaulted("device_owner", Rights::ALL, "\"\"", |p, _| {
            Some(json!(p.device_owner))
        }),
        defaulted("security_groups", Rights::ALL, "\"\"", |p, _| {
            Some(json!(p.security_groups))
        }),
        attr("port_security_enabled", Rights::ALL, |p, _| {
            Some(json!(p.port_security_enabled))
        }),
        attr("allowed_address_pairs", Rights::ALL, |p, _| {
            Some(json!(p.allowed_address_pairs))
        }),
        attr("dns_name", Rights::ALL, |p, _| Some(json!(p.dns_name))),
        attr("dns_assignment", Rights::READ, |p, _| {
            Some(json!(p.dns_assignment()))
        }),
        attr("binding:host_id", Rights::ALL, |p, _| {
            Some(json!(p.binding.host_id))
        }),
        defaulted("binding:profile", Rights::ALL, "{}", |p, _| {
            Some(Value::Object(p.binding.profile.clone()))
        }),
        defaulted("binding:vnic_type", Rights::ALL, "\"normal\"", |p, _| {
            Some(json!(p.binding.vnic_type))
        }),
        attr("binding:vif_type", Rights::READ, |p, _| {
            Some(json!(p.vif_type()))
        }),
        attr("binding:vif_details", Rights::READ, |p, _| {
            Some(p.vif_details())
        }),
        attr("status", Rights::READ, |p, _| Some(json!(p.status))),
        attr("extra_dhcp_opts", Rights::ALL, |p, _| {
            Some(json!(p.extra_dhcp_opts))
        }),
        attr("ip_allocation", Rights::READ, |_, _| {
            Some(json!("immediate"))
        }),
        attr("trunk_details", Rights::NONE, |p, _| {
            crate::trunk::details(p)
        }),
    ],
};
/// Neutron's default `max_allowed_address_pair`.
pub const MAX_ADDRESS_PAIRS: usize = 10;

/// Most fixed IPs a port (or a router gateway) may ask for: Neutron's default
/// `max_fixed_ips_per_port`.
pub const MAX_FIXED_IPS: usize = 5;

/// One address of a port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FixedIp {
    /// Subnet the address belongs to.
    pub subnet_id: String,
    /// The address.
    pub ip_address: IpAddr,
}

/// An extra address (or prefix) and MAC the port may send from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddressPair {
    /// Address or prefix, as given (normalised).
    pub ip_address: String,
    /// MAC; the port's own when not given.
    pub mac_address: String,
}

/// One extra DHCP option of a port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DhcpOption {
    /// Option name or number (`mtu`, `26`, `tftp-server`).
    pub opt_name: String,
    /// Its value.
    pub opt_value: String,
    /// The family it is for: 4 or 6.
    pub ip_version: u8,
}

/// A requested change to a port's extra DHCP options: a value of `None` removes the option.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DhcpOptionChange {
    /// Option name.
    pub opt_name: String,
    /// New value, or `None` to remove it.
    pub opt_value: Option<String>,
    /// The family: 4 or 6.
    pub ip_version: u8,
}

/// Neutron's limit on extra DHCP options per port.
pub const MAX_DHCP_OPTIONS: usize = 50;

fn parse_dhcp_options(items: Vec<Map<String, Value>>) -> Result<Vec<DhcpOptionChange>> {
    const KEY: &str = "extra_dhcp_opts";
    if items.len() > MAX_DHCP_OPTIONS {
        return Err(Error::invalid_attr(
            KEY,
            format!("more than {MAX_DHCP_OPTIONS} options"),
        ));
    }
    let mut out: Vec<DhcpOptionChange> = Vec::with_capacity(items.len());
    for item in items {
        if let Some(k) = item
            .keys()
            .find(|k| !["opt_name", "opt_value", "ip_version"].contains(&k.as_str()))
        {
            return Err(Error::invalid_attr(
                KEY,
                format!("'{k}' is not a DHCP option attribute"),
            ));
        }
        let opt_name = match item.get("opt_name") {
            Some(v) => as_string(KEY, v, 64)?,
            None => return Err(Error::invalid_attr(KEY, "opt_name is required")),
        };
        if opt_name.trim().is_empty() {
            return Err(Error::invalid_attr(KEY, "opt_name must not be empty"));
        }
        let opt_value = match item.get("opt_value") {
            None | Some(Value::Null) => None,
            Some(v) => Some(as_string(KEY, v, 255)?),
        };
        let ip_version = match item.get("ip_version") {
            None | Some(Value::Null) => 4,
            Some(v) => match crate::input::as_integer(KEY, v)? {
                4 => 4,
                6 => 6,
                n => {
                    return Err(Error::invalid_attr(
                        KEY,
                        format!("ip_version '{n}' is not in [4, 6]"),
                    ))
                }
            },
        };
        if out
            .iter()
            .any(|o| o.opt_name == opt_name && o.ip_version == ip_version)
        {
            return Err(Error::invalid_attr(
                KEY,
                format!("Duplicate option '{opt_name}' for IPv{ip_version}"),
            ));
        }
        out.push(DhcpOptionChange {
            opt_name,
            opt_value,
            ip_version,
        });
    }
    Ok(out)
}

/// `options` with `changes` applied: set, replaced or (value `None`) removed.
pub fn apply_dhcp_options(options: &[DhcpOption], changes: &[DhcpOptionChange]) -> Vec<DhcpOption> {
    let mut out = options.to_vec();
    for change in changes {
        out.retain(|o| !(o.opt_name == change.opt_name && o.ip_version == change.ip_version));
        if let Some(value) = &change.opt_value {
            out.push(DhcpOption {
                opt_name: change.opt_name.clone(),
                opt_value: value.clone(),
                ip_version: change.ip_version,
            });
        }
    }
    out
}

/// One entry of `dns_assignment`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DnsAssignment {
    /// Host name.
    pub hostname: String,
    /// The address.
    pub ip_address: IpAddr,
    /// `hostname.domain.`
    pub fqdn: String,
}

/// Where the port is bound (`binding:*`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Binding {
    /// Node name; empty when unbound.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub host_id: String,
    /// Free-form profile.
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub profile: Map<String, Value>,
    /// Always `normal` (a tap or veth on a bridge).
    pub vnic_type: String,
}

/// A requested fixed IP: by subnet, by address, or both.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FixedIpRequest {
    /// Subnet to allocate from.
    pub subnet_id: Option<String>,
    /// Exact address.
    pub ip_address: Option<IpAddr>,
}

impl FixedIpRequest {
    /// The request as a `fixed_ips` entry of a port body.
    pub fn to_wire(&self) -> Value {
        let mut entry = Map::new();
        if let Some(s) = &self.subnet_id {
            entry.insert("subnet_id".into(), json!(s));
        }
        if let Some(ip) = self.ip_address {
            entry.insert("ip_address".into(), json!(ip));
        }
        Value::Object(entry)
    }
}

/// A requested address pair (MAC resolved once the port's MAC is known).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddressPairRequest {
    /// Address or prefix.
    pub ip_address: String,
    /// MAC, if given.
    pub mac_address: Option<String>,
}

/// `device_id` of a pod port an agent holds ready in its pool (bound to the agent's node,
/// not yet given to a pod). The controller deletes them with their node.
pub const POOL_DEVICE_ID: &str = "isthmus-pool";

/// `device_owner` of a network's DHCP port: one per network with an address on each subnet
/// with `enable_dhcp`, served by every node's agent (DHCP, DNS and metadata answer from it).
pub const OWNER_DHCP: &str = "network:dhcp";

/// The id of a network's DHCP port: derived from the network's (a UUID of version 8 from
/// SHA-256), so that every controller agrees on it, two creating it at once collide on one
/// key, and agents find it without a search.
pub fn dhcp_port_id(network_id: &str) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(format!("isthmus dhcp port {network_id}").as_bytes());
    let mut b = [0u8; 16];
    b.copy_from_slice(&digest[..16]);
    b[6] = (b[6] & 0x0f) | 0x80; // version 8 (custom)
    b[8] = (b[8] & 0x3f) | 0x80; // RFC 4122 variant
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

/// `device_owner` of a Kubernetes pod's port.
pub const POD_DEVICE_OWNER: &str = "compute:kubernetes";

/// What every port's host-side device name starts with.
pub const TAP_PREFIX: &str = "tap";

/// The kernel name of a port's host-side device: `tap` + first 11 characters of its id, as
/// Neutron's linuxbridge agent and Nova's os-vif name it.
pub fn tap_name(port_id: &str) -> String {
    format!("{TAP_PREFIX}{}", port_id.get(..11).unwrap_or(port_id))
}

/// A stored port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Port {
    /// Standard attributes.
    pub meta: Meta,
    /// Its network.
    pub network_id: String,
    /// Administrative state.
    pub admin_state_up: bool,
    /// MAC address, lower case.
    pub mac_address: String,
    /// Addresses.
    pub fixed_ips: Vec<FixedIp>,
    /// Owner device (VM uuid, pod uid, router id).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub device_id: String,
    /// Owner kind (`compute:nova`, `compute:kubernetes`, `network:...`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub device_owner: String,
    /// Security group ids.
    pub security_groups: Vec<String>,
    /// Anti-spoofing and security groups on or off.
    pub port_security_enabled: bool,
    /// Extra addresses the port may use.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_address_pairs: Vec<AddressPair>,
    /// Extra DHCP options (`extra_dhcp_opt`) its DHCP server hands out.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extra_dhcp_opts: Vec<DhcpOption>,
    /// DNS host name (may be empty).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub dns_name: String,
    /// DNS domain the port's names are in (fixed when the port was last written, as Neutron
    /// does); `dns_assignment` derives from it.
    pub dns_domain: String,
    /// Binding.
    pub binding: Binding,
    /// `DOWN` until the node's agent reports it `ACTIVE`.
    pub status: String,
    /// Its part in a trunk, if any (written with the trunk).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trunk: Option<crate::trunk::TrunkRole>,
}

/// Everything a create or update body may ask for, validated but not yet resolved against the
/// network, subnets, groups and allocations (the service's job).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PortRequest {
    /// Owner project (create only).
    pub project_id: Option<String>,
    /// Network (create only).
    pub network_id: Option<String>,
    /// `name`.
    pub name: Option<String>,
    /// `description`.
    pub description: Option<String>,
    /// `tags` (create only).
    pub tags: Option<Vec<String>>,
    /// `admin_state_up`.
    pub admin_state_up: Option<bool>,
    /// `mac_address`.
    pub mac_address: Option<String>,
    /// `mac_address: null` on update: a new random MAC (`port-mac-address-regenerate`).
    pub regenerate_mac: bool,
    /// `extra_dhcp_opts` changes.
    pub extra_dhcp_opts: Option<Vec<DhcpOptionChange>>,
    /// `fixed_ips`.
    pub fixed_ips: Option<Vec<FixedIpRequest>>,
    /// `device_id`.
    pub device_id: Option<String>,
    /// `device_owner`.
    pub device_owner: Option<String>,
    /// `security_groups`.
    pub security_groups: Option<Vec<String>>,
    /// `port_security_enabled`.
    pub port_security_enabled: Option<bool>,
    /// `allowed_address_pairs`.
    pub allowed_address_pairs: Option<Vec<AddressPairRequest>>,
    /// `dns_name`.
    pub dns_name: Option<String>,
    /// `binding:host_id`.
    pub host_id: Option<String>,
    /// `binding:profile`.
    pub profile: Option<Map<String, Value>>,
    /// `binding:vnic_type`.
    pub vnic_type: Option<String>,
}

/// Parses a list of `{subnet_id, ip_address}` requests (`fixed_ips`, a gateway's
/// `external_fixed_ips`), naming `attr` in errors.
pub(crate) fn parse_fixed_ips(
    attr: &str,
    items: Vec<Map<String, Value>>,
) -> Result<Vec<FixedIpRequest>> {
    if items.len() > MAX_FIXED_IPS {
        // Neutron's max_fixed_ips_per_port.
        return Err(Error::InvalidInput(format!(
            "Exceeded maximum amount of fixed ips per port ({MAX_FIXED_IPS})."
        )));
    }
    let mut out: Vec<FixedIpRequest> = Vec::new();
    for item in items {
        if let Some(k) = item
            .keys()
            .find(|k| !["subnet_id", "ip_address"].contains(&k.as_str()))
        {
            return Err(Error::invalid_attr(
                attr,
                format!("'{k}' is not a valid {attr} key"),
            ));
        }
        let subnet_id = item
            .get("subnet_id")
            .map(|v| as_uuid(attr, v))
            .transpose()?;
        let ip_address = item.get("ip_address").map(|v| as_ip(attr, v)).transpose()?;
        if subnet_id.is_none() && ip_address.is_none() {
            return Err(Error::invalid_attr(
                attr,
                "each entry needs a subnet_id or an ip_address",
            ));
        }
        if let Some(ip) = ip_address {
            if out.iter().any(|o| o.ip_address == Some(ip)) {
                return Err(Error::invalid_attr(
                    attr,
                    format!("Duplicate IP address '{ip}'"),
                ));
            }
        }
        out.push(FixedIpRequest {
            subnet_id,
            ip_address,
        });
    }
    Ok(out)
}

fn parse_pairs(items: Vec<Map<String, Value>>) -> Result<Vec<AddressPairRequest>> {
    if items.len() > MAX_ADDRESS_PAIRS {
        return Err(Error::BadRequest(format!(
            "Number of address pairs exceeds the maximum of {MAX_ADDRESS_PAIRS}"
        )));
    }
    let mut out: Vec<AddressPairRequest> = Vec::new();
    for item in items {
        if let Some(k) = item
            .keys()
            .find(|k| !["ip_address", "mac_address"].contains(&k.as_str()))
        {
            return Err(Error::invalid_attr(
                "allowed_address_pairs",
                format!("Unrecognized attribute(s) '{k}'"),
            ));
        }
        let raw = as_string(
            "allowed_address_pairs",
            item.get("ip_address").ok_or_else(|| {
                Error::invalid_attr(
                    "allowed_address_pairs",
                    "AllowedAddressPair must contain ip_address",
                )
            })?,
            64,
        )?;
        let ip_address = if raw.contains('/') {
            Cidr::parse(&raw)
                .map_err(|_| {
                    Error::invalid_attr(
                        "allowed_address_pairs",
                        format!("'{raw}' is not a valid IP address or subnet"),
                    )
                })?
                .to_string()
        } else {
            raw.parse::<IpAddr>()
                .map_err(|_| {
                    Error::invalid_attr(
                        "allowed_address_pairs",
                        format!("'{raw}' is not a valid IP address"),
                    )
                })?
                .to_string()
        };
        let mac_address = item
            .get("mac_address")
            .map(|v| {
                let s = as_string("allowed_address_pairs", v, 17)?;
                mac::parse_unicast("allowed_address_pairs", &s).map(mac::format)
            })
            .transpose()?;
        let pair = AddressPairRequest {
            ip_address,
            mac_address,
        };
        if out.contains(&pair) {
            return Err(Error::BadRequest(
                "Request contains duplicate address pair".to_owned(),
            ));
        }
        out.push(pair);
    }
    Ok(out)
}

/// Validates a DNS host name as Neutron's `dns_name` does (labels of letters, digits and
/// hyphens; no leading or trailing hyphen); empty means no name.
pub fn check_dns_name(name: &str) -> Result<()> {
    if name.is_empty() {
        return Ok(());
    }
    let trimmed = name.strip_suffix('.').unwrap_or(name);
    let ok = trimmed.len() <= 253
        && trimmed.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    if ok {
        Ok(())
    } else {
        Err(Error::invalid_attr(
            "dns_name",
            format!("'{name}' not a valid PQDN or FQDN"),
        ))
    }
}

impl PortRequest {
    /// Parses a create (`Method::Create`) or update body.
    pub fn parse(body: Value, method: Method, caller: &Caller) -> Result<PortRequest> {
        let mut input = Input::for_kind(body, &DEFINITION, method)?;
        let mut req = PortRequest::default();
        if method == Method::Create {
            req.project_id = Some(owner_project(&mut input, caller)?);
            req.network_id = Some(as_uuid(
                "network_id",
                &Input::required("network_id", input.take("network_id"))?,
            )?);
            req.tags = input
                .string_list("tags", crate::meta::TAG_MAX)?
                .map(crate::meta::normalize_tags)
                .transpose()?;
        }
        req.name = input.string("name", crate::meta::NAME_MAX)?;
        req.description = input.string("description", crate::meta::DESCRIPTION_MAX)?;
        req.admin_state_up = input.boolean("admin_state_up")?;
        match input.nullable_string("mac_address", 32)? {
            None => {}
            Some(None) => req.regenerate_mac = method == Method::Update,
            Some(Some(m)) => {
                req.mac_address = Some(mac::format(mac::parse_unicast("mac_address", &m)?))
            }
        }
        req.extra_dhcp_opts = input
            .object_list("extra_dhcp_opts")?
            .map(parse_dhcp_options)
            .transpose()?;
        req.fixed_ips = input
            .object_list("fixed_ips")?
            .map(|items| parse_fixed_ips("fixed_ips", items))
            .transpose()?;
        req.device_id = input.string("device_id", 255)?;
        req.device_owner = input.string("device_owner", 255)?;
        req.security_groups = match input.take("security_groups") {
            None => None,
            Some(Value::Null) => Some(Vec::new()),
            Some(Value::Array(items)) => {
                let mut ids: Vec<String> = Vec::new();
                for item in &items {
                    let id = as_uuid("security_groups", item)?;
                    if !ids.contains(&id) {
                        ids.push(id);
                    }
                }
                Some(ids)
            }
            Some(other) => {
                return Err(Error::invalid_attr(
                    "security_groups",
                    format!("'{}' is not a list", show(&other)),
                ))
            }
        };
        req.port_security_enabled = input.boolean("port_security_enabled")?;
        req.allowed_address_pairs = input
            .object_list("allowed_address_pairs")?
            .map(parse_pairs)
            .transpose()?;
        req.dns_name = input.string("dns_name", 255)?;
        if let Some(name) = &req.dns_name {
            check_dns_name(name)?;
        }
        req.host_id = input.string("binding:host_id", 255)?;
        req.profile = match input.take("binding:profile") {
            None => None,
            Some(Value::Null) => Some(Map::new()),
            Some(Value::Object(m)) => Some(m),
            Some(other) => {
                return Err(Error::invalid_attr(
                    "binding:profile",
                    format!("'{}' is not a dictionary", show(&other)),
                ))
            }
        };
        req.vnic_type = input.string("binding:vnic_type", 64)?;
        if let Some(v) = &req.vnic_type {
            if v != "normal" {
                return Err(Error::InvalidInput(format!(
                    "binding:vnic_type '{v}' is not supported: Isthmus plugs 'normal' ports (tap or veth on a bridge)"
                )));
            }
        }
        Ok(req)
    }
}

impl Port {
    /// The kernel name of the port's host-side device.
    pub fn tap_name(&self) -> String {
        tap_name(&self.meta.id)
    }

    /// `binding:vif_type`: `bridge` once bound to a node, else `unbound`.
    pub fn vif_type(&self) -> &'static str {
        if self.binding.host_id.is_empty() {
            "unbound"
        } else {
            "bridge"
        }
    }

    /// `dns_assignment`: a name for each address, in the port's DNS domain.
    pub fn dns_assignment(&self) -> Vec<DnsAssignment> {
        self.fixed_ips
            .iter()
            .map(|f| {
                let hostname = if self.dns_name.is_empty() {
                    format!("host-{}", f.ip_address.to_string().replace(['.', ':'], "-"))
                } else {
                    self.dns_name.trim_end_matches('.').to_owned()
                };
                let fqdn = if self.dns_name.ends_with('.') {
                    self.dns_name.clone()
                } else {
                    format!("{hostname}.{}", self.dns_domain)
                };
                DnsAssignment {
                    hostname,
                    ip_address: f.ip_address,
                    fqdn,
                }
            })
            .collect()
    }

    /// `binding:vif_details`: the bridge a bound port is plugged into.
    fn vif_details(&self) -> Value {
        if self.binding.host_id.is_empty() {
            json!({})
        } else {
            json!({
                "bridge_name": bridge_name(&self.network_id),
                "port_filter": self.port_security_enabled,
                "connectivity": "l2",
            })
        }
    }
}

crate::resource!(Port, DEFINITION);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resource::Resource;

    const NET: &str = "11111111-2222-3333-4444-555555555555";
    const SUB: &str = "aaaaaaaa-2222-3333-4444-555555555555";

    fn user() -> Caller {
        Caller::member("p")
    }

    #[test]
    fn parses_a_full_create() {
        let req = PortRequest::parse(
            json!({"port": {
                "network_id": NET, "name": "vm1", "dns_name": "hello",
                "fixed_ips": [{"subnet_id": SUB}, {"ip_address": "10.0.0.7"}],
                "allowed_address_pairs": [{"ip_address": "10.0.0.0/24"}, {"ip_address": "10.0.0.99", "mac_address": "FA:16:3E:00:00:01"}],
                "mac_address": "fa:16:3e:aa:bb:cc",
            }}),
            Method::Create,
            &user(),
        )
        .unwrap();
        assert_eq!(req.project_id.as_deref(), Some("p"));
        assert_eq!(req.fixed_ips.as_ref().unwrap().len(), 2);
        let pairs = req.allowed_address_pairs.unwrap();
        assert_eq!(pairs[1].mac_address.as_deref(), Some("fa:16:3e:00:00:01"));
    }

    #[test]
    fn refuses_bad_input() {
        let bad =
            |port: Value| PortRequest::parse(json!({ "port": port }), Method::Create, &user());
        assert!(bad(json!({})).is_err(), "network_id is required");
        assert!(bad(json!({"network_id": NET, "mac_address": "01:00:5e:00:00:01"})).is_err());
        assert!(bad(json!({"network_id": NET, "fixed_ips": [{"ip_address": "x"}]})).is_err());
        assert!(bad(json!({"network_id": NET, "fixed_ips": [{"ip_address": "10.0.0.1"}, {"ip_address": "10.0.0.1"}]})).is_err());
        assert!(bad(json!({"network_id": NET, "dns_name": "-bad"})).is_err());
        assert!(bad(json!({"network_id": NET, "security_groups": ["nope"]})).is_err());
        assert!(bad(json!({"network_id": NET, "status": "ACTIVE"})).is_err());
        assert!(bad(json!({"network_id": NET, "allowed_address_pairs": [{"ip_address": "10.0.0.1"}, {"ip_address": "10.0.0.1"}]})).is_err());
    }

    #[test]
    fn dns_assignment_and_binding() {
        let mut port = Port {
            extra_dhcp_opts: Vec::new(),
            meta: Meta::new("0123456789abcdef".into(), "p".into(), "t"),
            network_id: NET.into(),
            admin_state_up: true,
            mac_address: "fa:16:3e:00:00:01".into(),
            fixed_ips: vec![FixedIp {
                subnet_id: SUB.into(),
                ip_address: "10.0.0.3".parse().unwrap(),
            }],
            device_id: String::new(),
            device_owner: String::new(),
            security_groups: vec![],
            port_security_enabled: true,
            allowed_address_pairs: vec![],
            dns_name: "hello".into(),
            dns_domain: "openstack.local.".into(),
            binding: Binding::default(),
            status: "DOWN".into(),
            trunk: None,
        };
        assert_eq!(port.dns_assignment()[0].fqdn, "hello.openstack.local.");
        port.dns_name.clear();
        assert_eq!(port.dns_assignment()[0].hostname, "host-10-0-0-3");
        assert_eq!(port.tap_name(), "tap0123456789a");
        let admin = Caller::admin("x");
        assert_eq!(port.render(&admin)["binding:vif_type"], "unbound");
        port.binding.host_id = "node1".into();
        assert_eq!(
            port.render(&admin)["binding:vif_details"]["bridge_name"],
            "brq11111111-22"
        );
        assert!(!port.render(&user()).contains_key("binding:host_id"));
    }
}
