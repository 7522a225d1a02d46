//! Networks: provider segmentation (VXLAN VNI or flat physnet), MTU, sharing and
//! external flag.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::error::{Error, Result};
use crate::input::{Input, Method};
use crate::meta::{owner_project, Caller, Meta};
use crate::resource::{attr, defaulted, Definition, Rights};

/// Largest VXLAN network identifier.
pub const MAX_VNI: u32 = (1 << 24) - 1;
/// VXLAN over IPv4 costs 50 bytes of the underlay MTU.
pub const VXLAN_OVERHEAD: u32 = 50;
/// Smallest MTU that can carry IPv4.
pub const MIN_MTU: u32 = 68;

/// The `networks` resource.
pub static DEFINITION: Definition<Network> = Definition {
    collection: "networks",
    singular: "network",
    plural: "networks",
    fault: "Network",
    named: true,
    tagged: true,
    description: Some(Rights::ALL),
    updatable: true,
    api: crate::resource::Api::Neutron,
    attributes: &[
        defaulted("admin_state_up", Rights::ALL, "false", |n, _| {
            Some(json!(n.admin_state_up))
        }),
        attr("shared", Rights::ALL, |n, _| Some(json!(n.shared))),
        defaulted("router:external", Rights::ALL, "false", |n, _| {
            Some(json!(n.external))
        }),
        defaulted("mtu", Rights::ALL, "true", |n, _| Some(json!(n.mtu))),
        attr("provider:network_type", Rights::CREATE_QUERY, |n, _| {
            Some(json!(n.network_type.as_str()))
        }),
        attr("provider:physical_network", Rights::CREATE_QUERY, |n, _| {
            Some(json!(n.physical_network))
        }),
        attr("provider:segmentation_id", Rights::CREATE_QUERY, |n, _| {
            Some(json!(n.segmentation_id))
        }),
        attr("port_security_enabled", Rights::ALL, |n, _| {
            Some(json!(n.port_security_enabled))
        }),
        attr("dns_domain", Rights::ALL, |n, _| Some(json!(n.dns_domain))),
        attr("availability_zone_hints", Rights::CREATE_QUERY, |n, _| {
            Some(json!(n.availability_zone_hints))
        }),
        attr("availability_zones", Rights::READ, |_, _| {
            Some(json!(["nova"]))
        }),
        attr("status", Rights::READ, |_, _| Some(json!("ACTIVE"))),
        attr("subnets", Rights::READ, |n, _| Some(json!(n.subnets))),
        attr("ipv4_address_scope", Rights::READ, |n, _| {
            Some(json!(n.address_scopes.0))
        }),
        attr("ipv6_address_scope", Rights::READ, |n, _| {
            Some(json!(n.address_scopes.1))
        }),
        attr("l2_adjacency", Rights::READ, |_, _| Some(json!(true))),
    ],
};

/// How a network is carried between nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NetworkType {
    /// An overlay with a VNI.
    Vxlan,
    /// Untagged on a physical network interface of each node.
    Flat,
}

impl NetworkType {
    /// Neutron's name.
    pub fn as_str(self) -> &'static str {
        match self {
            NetworkType::Vxlan => "vxlan",
            NetworkType::Flat => "flat",
        }
    }
}

/// A stored network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Network {
    /// Standard attributes.
    pub meta: Meta,
    /// Administrative state.
    pub admin_state_up: bool,
    /// Visible to every project.
    pub shared: bool,
    /// `router:external`.
    pub external: bool,
    /// MTU offered to instances.
    pub mtu: u32,
    /// Segmentation type.
    pub network_type: NetworkType,
    /// Physical network of a flat network.
    pub physical_network: Option<String>,
    /// VNI of a VXLAN network.
    pub segmentation_id: Option<u32>,
    /// Default `port_security_enabled` of its ports.
    pub port_security_enabled: bool,
    /// DNS domain of its ports (empty: the controller's default).
    pub dns_domain: String,
    /// Availability zone hints (kept for clients; there is one zone).
    pub availability_zone_hints: Vec<String>,
    /// Ids of its subnets, in creation order.
    pub subnets: Vec<String>,
    /// The address scopes (IPv4, IPv6) of its subnets' pools, read with it for the API;
    /// never stored with it.
    #[serde(skip)]
    pub address_scopes: (Option<String>, Option<String>),
}

/// Limits the controller applies to new networks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NetworkLimits {
    /// MTU of the underlay between nodes.
    pub underlay_mtu: u32,
}

impl NetworkLimits {
    /// Largest MTU of a network of `kind`.
    pub fn max_mtu(&self, kind: NetworkType) -> u32 {
        match kind {
            NetworkType::Vxlan => self.underlay_mtu.saturating_sub(VXLAN_OVERHEAD),
            NetworkType::Flat => self.underlay_mtu,
        }
    }
}

/// A validated create request. The VNI, when not given, is allocated by the service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkCreate {
    /// The network to store (segmentation_id may still be None for VXLAN).
    pub network: Network,
}

/// Whether `name` is a network interface name the kernel accepts (1–15 bytes; not `.` or
/// `..`; no `/`, `:` or whitespace) that is also safe to quote in nft and `ip` scripts
/// (printable ASCII, no quote or backslash).
pub fn is_interface_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() < 16
        && name != "."
        && name != ".."
        && name
            .chars()
            .all(|c| c.is_ascii_graphic() && !matches!(c, '/' | ':' | '"' | '\\' | '\''))
}

/// Linux bridge of a network on every node (`brq` + first 11 characters of its id), as
/// Neutron's linuxbridge agent names it so Nova's os-vif plugs into it.
pub fn bridge_name(network_id: &str) -> String {
    format!(
        "{BRIDGE_PREFIX}{}",
        network_id.get(..11).unwrap_or(network_id)
    )
}

/// What every network bridge's name starts with.
pub const BRIDGE_PREFIX: &str = "brq";

fn normalize_dns_domain(domain: String) -> Result<String> {
    if domain.is_empty() {
        return Ok(domain);
    }
    let trimmed = domain.strip_suffix('.').unwrap_or(&domain);
    let labels_ok = !trimmed.is_empty()
        && trimmed.len() <= 253
        && trimmed.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    if !labels_ok {
        return Err(Error::invalid_attr(
            "dns_domain",
            format!("'{domain}' is not a valid DNS domain"),
        ));
    }
    Ok(format!("{trimmed}."))
}

fn check_mtu(mtu: i64, max: u32) -> Result<u32> {
    if mtu < i64::from(MIN_MTU) {
        return Err(Error::invalid_attr(
            "mtu",
            format!("'{mtu}' is too small, must be at least {MIN_MTU}"),
        ));
    }
    if mtu > i64::from(max) {
        return Err(Error::InvalidInput(format!(
            "Requested MTU is too big, maximum is {max}"
        )));
    }
    Ok(mtu as u32)
}

impl Network {
    /// Parses and validates a create body.
    pub fn parse_create(
        body: Value,
        caller: &Caller,
        limits: NetworkLimits,
        id: String,
        now: &str,
    ) -> Result<NetworkCreate> {
        let mut input = Input::for_kind(body, &DEFINITION, Method::Create)?;
        let project_id = owner_project(&mut input, caller)?;
        let mut meta = Meta::new(id, project_id, now);
        meta.read_common(&mut input)?;
        let network_type = match input
            .nullable_string("provider:network_type", 32)?
            .flatten()
        {
            None => NetworkType::Vxlan,
            Some(t) if t == "vxlan" => NetworkType::Vxlan,
            Some(t) if t == "flat" => NetworkType::Flat,
            Some(t) => {
                return Err(Error::InvalidInput(format!(
                    "network_type value '{t}' not supported"
                )))
            }
        };
        let physical_network = input
            .nullable_string("provider:physical_network", 64)?
            .flatten()
            .filter(|p| !p.is_empty());
        let segmentation_id = input
            .nullable_integer("provider:segmentation_id")?
            .flatten();
        let segmentation_id = match (network_type, segmentation_id) {
            (NetworkType::Flat, Some(_)) => {
                return Err(Error::InvalidInput(
                    "segmentation_id specified for flat network".to_owned(),
                ))
            }
            (NetworkType::Vxlan, Some(v)) if !(1..=i64::from(MAX_VNI)).contains(&v) => {
                return Err(Error::InvalidInput(format!(
                    "segmentation_id out of range (1 through {MAX_VNI})"
                )))
            }
            (_, v) => v.map(|v| v as u32),
        };
        match (network_type, &physical_network) {
            (NetworkType::Flat, None) => {
                return Err(Error::InvalidInput(
                    "physical_network required for flat provider network".to_owned(),
                ))
            }
            (NetworkType::Vxlan, Some(_)) => {
                return Err(Error::InvalidInput(
                    "provider:physical_network specified for vxlan network".to_owned(),
                ))
            }
            _ => {}
        }
        let max_mtu = limits.max_mtu(network_type);
        let mtu = match input.nullable_integer("mtu")?.flatten() {
            Some(m) => check_mtu(m, max_mtu)?,
            None => max_mtu,
        };
        let network = Network {
            address_scopes: (None, None),
            meta,
            admin_state_up: input.boolean("admin_state_up")?.unwrap_or(true),
            shared: input.boolean("shared")?.unwrap_or(false),
            external: input.boolean("router:external")?.unwrap_or(false),
            mtu,
            network_type,
            physical_network,
            segmentation_id,
            port_security_enabled: input.boolean("port_security_enabled")?.unwrap_or(true),
            dns_domain: normalize_dns_domain(input.string("dns_domain", 255)?.unwrap_or_default())?,
            availability_zone_hints: input
                .string_list("availability_zone_hints", 255)?
                .unwrap_or_default(),
            subnets: Vec::new(),
        };
        Ok(NetworkCreate { network })
    }

    /// Applies an update body; returns whether anything changed.
    pub fn apply_update(&mut self, body: Value, limits: NetworkLimits, now: &str) -> Result<()> {
        let mut input = Input::for_kind(body, &DEFINITION, Method::Update)?;
        self.meta.read_common(&mut input)?;
        if let Some(v) = input.boolean("admin_state_up")? {
            self.admin_state_up = v;
        }
        if let Some(v) = input.boolean("shared")? {
            self.shared = v;
        }
        if let Some(v) = input.boolean("router:external")? {
            self.external = v;
        }
        if let Some(m) = input.nullable_integer("mtu")? {
            let max = limits.max_mtu(self.network_type);
            self.mtu = match m {
                Some(m) => check_mtu(m, max)?,
                None => max,
            };
        }
        if let Some(v) = input.boolean("port_security_enabled")? {
            self.port_security_enabled = v;
        }
        if let Some(d) = input.nullable_string("dns_domain", 255)? {
            self.dns_domain = normalize_dns_domain(d.unwrap_or_default())?;
        }
        self.meta.touch(now);
        Ok(())
    }

    /// Whether `caller` may attach ports to it: own or shared.
    pub fn usable_by(&self, caller: &Caller) -> bool {
        caller.owns(&self.meta.project_id) || self.shared
    }
}

crate::resource!(Network, DEFINITION, {
    /// Own, shared or external.
    fn visible_to(&self, caller: &Caller) -> bool {
        caller.owns(&self.meta.project_id) || self.shared || self.external
    }
});

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resource::Resource;

    const LIMITS: NetworkLimits = NetworkLimits { underlay_mtu: 1500 };

    fn admin() -> Caller {
        Caller::admin("p")
    }
    fn user() -> Caller {
        Caller::member("u")
    }
    fn create(body: Value, caller: &Caller) -> Result<Network> {
        Network::parse_create(
            body,
            caller,
            LIMITS,
            "00000000-0000-0000-0000-000000000001".into(),
            "t",
        )
        .map(|c| c.network)
    }

    #[test]
    fn defaults() {
        let n = create(json!({"network": {"name": "n1"}}), &user()).unwrap();
        assert_eq!(n.mtu, 1450);
        assert_eq!(n.network_type, NetworkType::Vxlan);
        assert_eq!(n.meta.project_id, "u");
        assert!(n.port_security_enabled && n.admin_state_up && !n.shared);
        let wire = n.render(&user());
        assert_eq!(wire["tenant_id"], "u");
        assert!(
            !wire.contains_key("provider:network_type"),
            "provider attrs are admin-only"
        );
        assert!(n.render(&admin()).contains_key("provider:segmentation_id"));
    }

    #[test]
    fn provider_validation() {
        let flat = create(json!({"network": {"provider:network_type": "flat", "provider:physical_network": "public"}}), &admin()).unwrap();
        assert_eq!(flat.mtu, 1500);
        assert!(create(
            json!({"network": {"provider:network_type": "flat"}}),
            &admin()
        )
        .is_err());
        assert!(create(
            json!({"network": {"provider:network_type": "vlan"}}),
            &admin()
        )
        .is_err());
        assert!(create(
            json!({"network": {"provider:segmentation_id": 0}}),
            &admin()
        )
        .is_err());
        assert_eq!(
            create(
                json!({"network": {"provider:segmentation_id": 5}}),
                &admin()
            )
            .unwrap()
            .segmentation_id,
            Some(5)
        );
        assert!(create(json!({"network": {"mtu": 1451}}), &user()).is_err());
        assert_eq!(
            create(json!({"network": {"mtu": 1400}}), &user())
                .unwrap()
                .mtu,
            1400
        );
    }

    #[test]
    fn update_and_policing() {
        let mut n = create(json!({"network": {"name": "a"}}), &user()).unwrap();
        n.apply_update(
            json!({"network": {"name": "b", "dns_domain": "example.org"}}),
            LIMITS,
            "t2",
        )
        .unwrap();
        assert_eq!(n.meta.name, "b");
        assert_eq!(n.dns_domain, "example.org.");
        assert_eq!(n.meta.revision_number, 2);
        let err = n
            .apply_update(
                json!({"network": {"provider:network_type": "flat"}}),
                LIMITS,
                "t",
            )
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "Attribute 'provider:network_type' not allowed in PUT"
        );
        assert_eq!(bridge_name("0123456789abcdef"), "brq0123456789a");
    }
}
