//! What a node is sent of each object: the typed objects of `GET /isthmus/v1/watch` lines,
//! which the controller writes from the store's objects ([`super::Mirror::render`]) and the
//! agent reads back, one type on both ends. Attribute names are Neutron's (and Octavia's), so
//! a line reads like the API's answer for the same object, trimmed to what the data plane
//! uses.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::addr::{Cidr, IpVersion};
pub use crate::port::{AddressPair, DhcpOption, DnsAssignment, FixedIp};
pub use crate::security_group::Direction;
pub use crate::subnet::HostRoute;

/// A network as the data plane needs it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Network {
    /// Id.
    pub id: String,
    /// Name.
    #[serde(default)]
    pub name: String,
    /// Owner.
    #[serde(default)]
    pub project_id: String,
    /// MTU of the network's devices.
    pub mtu: u32,
    /// `vxlan` or `flat`.
    #[serde(rename = "provider:network_type")]
    pub network_type: String,
    /// VNI of a VXLAN network.
    #[serde(rename = "provider:segmentation_id")]
    pub segmentation_id: Option<u32>,
    /// Physical network of a flat network.
    #[serde(rename = "provider:physical_network")]
    pub physical_network: Option<String>,
    /// Administrative state: none of a network's ports passes traffic while it is down.
    #[serde(default = "up")]
    pub admin_state_up: bool,
}

/// A port as the data plane needs it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Port {
    /// Id.
    pub id: String,
    /// Its network.
    pub network_id: String,
    /// MAC address.
    pub mac_address: String,
    /// Addresses.
    pub fixed_ips: Vec<FixedIp>,
    /// Node it is bound to ("" = unbound).
    #[serde(rename = "binding:host_id", default)]
    pub host_id: String,
    /// Security groups.
    #[serde(default)]
    pub security_groups: Vec<String>,
    /// Port security on or off.
    pub port_security_enabled: bool,
    /// Extra addresses and MACs it may use.
    #[serde(default)]
    pub allowed_address_pairs: Vec<AddressPair>,
    /// Status the controller has.
    pub status: String,
    /// Owner.
    #[serde(default)]
    pub project_id: String,
    /// What owns it (`network:router_interface_distributed`, `compute:nova`, ...).
    #[serde(default)]
    pub device_owner: String,
    /// The owning device (a router's id for router ports).
    #[serde(default)]
    pub device_id: String,
    /// Administrative state: a port that is down passes no traffic.
    #[serde(default = "up")]
    pub admin_state_up: bool,
    /// Its names, one per address (what DHCP hands out and DNS answers).
    #[serde(default)]
    pub dns_assignment: Vec<DnsAssignment>,
    /// Extra DHCP options.
    #[serde(default)]
    pub extra_dhcp_opts: Vec<DhcpOption>,
    /// When it is a trunk's subport: the parent whose device carries its frames, tagged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subport_of: Option<SubportOf>,
}

/// Where a subport's frames travel: on its trunk parent's device, with a VLAN tag.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubportOf {
    /// The parent port.
    pub port_id: String,
    /// The VLAN id.
    pub segmentation_id: u16,
}

impl Port {
    /// The DNS domain of its names (`openstack.local`, no trailing dot), empty when it has
    /// none.
    pub fn dns_domain(&self) -> String {
        self.dns_assignment
            .first()
            .and_then(|a| a.fqdn.strip_prefix(&format!("{}.", a.hostname)))
            .unwrap_or_default()
            .trim_end_matches('.')
            .to_owned()
    }

    /// Its MAC as bytes, when well formed.
    pub fn mac_bytes(&self) -> Option<[u8; 6]> {
        crate::mac::parse_unicast("mac_address", &self.mac_address).ok()
    }
}

fn up() -> bool {
    true
}

/// Nothing set, administratively up (as Neutron's default).
impl Default for Network {
    fn default() -> Self {
        Network {
            id: String::new(),
            name: String::new(),
            project_id: String::new(),
            mtu: 0,
            network_type: String::new(),
            segmentation_id: None,
            physical_network: None,
            admin_state_up: true,
        }
    }
}

/// Nothing set, administratively up (as Neutron's default).
impl Default for Port {
    fn default() -> Self {
        Port {
            id: String::new(),
            network_id: String::new(),
            mac_address: String::new(),
            fixed_ips: Vec::new(),
            host_id: String::new(),
            security_groups: Vec::new(),
            port_security_enabled: false,
            allowed_address_pairs: Vec::new(),
            status: String::new(),
            project_id: String::new(),
            device_owner: String::new(),
            device_id: String::new(),
            admin_state_up: true,
            dns_assignment: Vec::new(),
            extra_dhcp_opts: Vec::new(),
            subport_of: None,
        }
    }
}

/// An extra route of a router.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    /// Destination prefix.
    pub destination: String,
    /// Next hop.
    pub nexthop: IpAddr,
}

/// A router's gateway.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Gateway {
    /// External network.
    pub network_id: String,
    /// SNAT for instances without a floating IP.
    pub enable_snat: bool,
}

/// A router as the data plane needs it (its ports are ordinary ports of the view).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Router {
    /// Id.
    pub id: String,
    /// Administrative state.
    pub admin_state_up: bool,
    /// Gateway, if any.
    pub external_gateway_info: Option<Gateway>,
    /// Extra routes.
    #[serde(default)]
    pub routes: Vec<Route>,
}

/// A floating IP.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FloatingIp {
    /// Id.
    pub id: String,
    /// External address.
    pub floating_ip_address: IpAddr,
    /// External network.
    pub floating_network_id: String,
    /// Associated port.
    pub port_id: Option<String>,
    /// Its address.
    pub fixed_ip_address: Option<IpAddr>,
    /// The router doing the NAT.
    pub router_id: Option<String>,
    /// `ACTIVE` once the node doing its NAT has reported it.
    #[serde(default)]
    pub status: String,
}

/// A node (tunnel endpoint).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    /// Host name.
    pub name: String,
    /// Underlay address.
    pub tunnel_ip: IpAddr,
    /// Physical networks it maps (it can reach external networks on them).
    #[serde(default)]
    pub physnets: BTreeMap<String, String>,
}

/// `{"id": ...}`, how load balancers list what is under them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdOnly {
    /// The id.
    pub id: String,
}

/// A load balancer as the data plane needs it (read once, when its line arrives).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoadBalancer {
    /// Id.
    pub id: String,
    /// The VIP.
    pub vip_address: IpAddr,
    /// The VIP's network.
    pub vip_network_id: String,
    /// Administrative state.
    pub admin_state_up: bool,
    /// Its listeners.
    pub listeners: Vec<IdOnly>,
}

/// A listener.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Listener {
    /// Id.
    pub id: String,
    /// `TCP`, `UDP` or `SCTP`.
    pub protocol: String,
    /// Port on the VIP.
    pub protocol_port: u16,
    /// Administrative state.
    pub admin_state_up: bool,
    /// Its pool.
    pub default_pool_id: Option<String>,
    /// Most connections (-1: no limit).
    pub connection_limit: i64,
    /// Clients allowed (none: all).
    pub allowed_cidrs: Option<Vec<String>>,
}

/// Source-IP persistence of a pool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Persistence {
    /// Seconds.
    pub persistence_timeout: Option<u32>,
}

/// A pool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pool {
    /// Id.
    pub id: String,
    /// Administrative state.
    pub admin_state_up: bool,
    /// `ROUND_ROBIN`, `SOURCE_IP` or `SOURCE_IP_PORT`.
    pub lb_algorithm: String,
    /// Persistence, if any.
    pub session_persistence: Option<Persistence>,
    /// Its members.
    pub members: Vec<IdOnly>,
    /// Its health monitor.
    #[serde(default)]
    pub healthmonitor_id: Option<String>,
}

/// A pool member.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// Id.
    pub id: String,
    /// Address.
    pub address: IpAddr,
    /// Port.
    pub protocol_port: u16,
    /// Share of new connections.
    pub weight: u16,
    /// Used only when no other member is up.
    pub backup: bool,
    /// Administrative state.
    pub admin_state_up: bool,
    /// What its probes found (`ERROR`: out of the data plane).
    pub operating_status: String,
    /// Where probes go instead of `address`.
    #[serde(default)]
    pub monitor_address: Option<IpAddr>,
    /// Where probes go instead of `protocol_port`.
    #[serde(default)]
    pub monitor_port: Option<u16>,
}

/// A health monitor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthMonitor {
    /// Id.
    pub id: String,
    /// `PING`, `TCP`, `UDP-CONNECT` or `HTTP`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Administrative state.
    pub admin_state_up: bool,
    /// Seconds between probes.
    pub delay: u32,
    /// Seconds a probe may take.
    pub timeout: u32,
    /// Successes that bring a member up.
    pub max_retries: u32,
    /// Failures that take it down.
    pub max_retries_down: u32,
    /// HTTP path.
    pub url_path: Option<String>,
    /// HTTP codes.
    pub expected_codes: Option<String>,
}

/// A subnet as the data plane needs it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subnet {
    /// Id.
    pub id: String,
    /// Its network.
    pub network_id: String,
    /// Its prefix.
    pub cidr: Cidr,
    /// Its gateway address.
    #[serde(rename = "gateway_ip", default)]
    pub gateway: Option<IpAddr>,
    /// Whether the network's DHCP port serves it.
    #[serde(default)]
    pub enable_dhcp: bool,
    /// Name servers handed out (none: the DHCP port's resolver).
    #[serde(default)]
    pub dns_nameservers: Vec<IpAddr>,
    /// Extra routes handed out.
    #[serde(default)]
    pub host_routes: Vec<HostRoute>,
    /// IPv6: who sends router advertisements (`slaac`, `dhcpv6-stateful`, ...).
    #[serde(default)]
    pub ipv6_ra_mode: Option<String>,
    /// IPv6: how instances get their addresses.
    #[serde(default)]
    pub ipv6_address_mode: Option<String>,
}

/// A security group rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecurityGroupRule {
    /// Direction.
    pub direction: Direction,
    /// `IPv4` or `IPv6`.
    pub ethertype: String,
    /// Protocol name or number (none: any).
    #[serde(default)]
    pub protocol: Option<String>,
    /// Lowest port (ICMP: type).
    #[serde(default)]
    pub port_range_min: Option<u32>,
    /// Highest port (ICMP: code).
    #[serde(default)]
    pub port_range_max: Option<u32>,
    /// Remote prefix.
    #[serde(default)]
    pub remote_ip_prefix: Option<String>,
    /// Remote security group.
    #[serde(default)]
    pub remote_group_id: Option<String>,
    /// Remote address group.
    #[serde(default)]
    pub remote_address_group_id: Option<String>,
}

impl SecurityGroupRule {
    /// Whether the rule matches IPv6.
    pub fn is_v6(&self) -> bool {
        self.ethertype == "IPv6"
    }
}

/// A security group with its rules.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecurityGroup {
    /// Id.
    pub id: String,
    /// Whether its ports' connections are tracked.
    #[serde(default = "up")]
    pub stateful: bool,
    /// Its rules.
    #[serde(default)]
    pub security_group_rules: Vec<SecurityGroupRule>,
}

/// An address group: the remote of rules that name it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddressGroup {
    /// Id.
    pub id: String,
    /// Addresses or prefixes.
    #[serde(default)]
    pub addresses: Vec<Cidr>,
}

// What each stored object is sent as (the controller's half of the watch).

impl From<&crate::Network> for Network {
    fn from(n: &crate::Network) -> Self {
        Network {
            id: n.meta.id.clone(),
            name: n.meta.name.clone(),
            project_id: n.meta.project_id.clone(),
            mtu: n.mtu,
            network_type: n.network_type.as_str().to_owned(),
            segmentation_id: n.segmentation_id,
            physical_network: n.physical_network.clone(),
            admin_state_up: n.admin_state_up,
        }
    }
}

impl From<&crate::Port> for Port {
    fn from(p: &crate::Port) -> Self {
        Port {
            id: p.meta.id.clone(),
            network_id: p.network_id.clone(),
            mac_address: p.mac_address.clone(),
            fixed_ips: p.fixed_ips.clone(),
            host_id: p.binding.host_id.clone(),
            security_groups: p.security_groups.clone(),
            port_security_enabled: p.port_security_enabled,
            allowed_address_pairs: p.allowed_address_pairs.clone(),
            status: p.status.clone(),
            project_id: p.meta.project_id.clone(),
            device_owner: p.device_owner.clone(),
            device_id: p.device_id.clone(),
            admin_state_up: p.admin_state_up,
            dns_assignment: p.dns_assignment(),
            extra_dhcp_opts: p.extra_dhcp_opts.clone(),
            subport_of: match &p.trunk {
                Some(crate::trunk::TrunkRole::Sub {
                    parent_port_id,
                    segmentation_id,
                    ..
                }) => Some(SubportOf {
                    port_id: parent_port_id.clone(),
                    segmentation_id: *segmentation_id,
                }),
                _ => None,
            },
        }
    }
}

impl From<&crate::Subnet> for Subnet {
    fn from(s: &crate::Subnet) -> Self {
        Subnet {
            id: s.meta.id.clone(),
            network_id: s.network_id.clone(),
            cidr: s.cidr,
            gateway: s.gateway_ip,
            enable_dhcp: s.enable_dhcp,
            dns_nameservers: s.dns_nameservers.clone(),
            host_routes: s.host_routes.clone(),
            ipv6_ra_mode: s.ipv6_ra_mode.clone(),
            ipv6_address_mode: s.ipv6_address_mode.clone(),
        }
    }
}

impl From<&crate::SecurityGroupRule> for SecurityGroupRule {
    fn from(r: &crate::SecurityGroupRule) -> Self {
        SecurityGroupRule {
            direction: r.direction,
            ethertype: match r.ethertype {
                IpVersion::V4 => "IPv4",
                IpVersion::V6 => "IPv6",
            }
            .to_owned(),
            protocol: r.protocol.clone(),
            port_range_min: r.port_range_min,
            port_range_max: r.port_range_max,
            remote_ip_prefix: r.remote_ip_prefix.clone(),
            remote_group_id: r.remote_group_id.clone(),
            remote_address_group_id: r.remote_address_group_id.clone(),
        }
    }
}

impl SecurityGroup {
    /// A group as sent, with its rules.
    pub fn of<'a>(
        g: &crate::SecurityGroup,
        rules: impl IntoIterator<Item = &'a crate::SecurityGroupRule>,
    ) -> Self {
        SecurityGroup {
            id: g.meta.id.clone(),
            stateful: g.stateful,
            security_group_rules: rules.into_iter().map(SecurityGroupRule::from).collect(),
        }
    }
}

impl From<&crate::AddressGroup> for AddressGroup {
    fn from(g: &crate::AddressGroup) -> Self {
        AddressGroup {
            id: g.meta.id.clone(),
            addresses: g.addresses.clone(),
        }
    }
}

impl From<&crate::Router> for Router {
    fn from(r: &crate::Router) -> Self {
        Router {
            id: r.meta.id.clone(),
            admin_state_up: r.admin_state_up,
            external_gateway_info: r.gateway.as_ref().map(|g| Gateway {
                network_id: g.network_id.clone(),
                enable_snat: g.enable_snat,
            }),
            routes: r
                .routes
                .iter()
                .map(|route| Route {
                    destination: route.destination.to_string(),
                    nexthop: route.nexthop,
                })
                .collect(),
        }
    }
}

impl From<&crate::FloatingIp> for FloatingIp {
    fn from(f: &crate::FloatingIp) -> Self {
        let a = f.association.as_ref();
        FloatingIp {
            id: f.meta.id.clone(),
            floating_ip_address: f.floating_ip_address,
            floating_network_id: f.floating_network_id.clone(),
            port_id: a.map(|a| a.port_id.clone()),
            fixed_ip_address: a.map(|a| a.fixed_ip_address),
            router_id: a.map(|a| a.router_id.clone()),
            status: f.status.clone(),
        }
    }
}

impl From<&crate::node::Node> for Node {
    fn from(n: &crate::node::Node) -> Self {
        Node {
            name: n.name.clone(),
            tunnel_ip: n.tunnel_ip,
            physnets: n.physnets.clone(),
        }
    }
}

fn ids(ids: &[String]) -> Vec<IdOnly> {
    ids.iter().map(|id| IdOnly { id: id.clone() }).collect()
}

impl From<&crate::lbaas::LoadBalancer> for LoadBalancer {
    fn from(l: &crate::lbaas::LoadBalancer) -> Self {
        LoadBalancer {
            id: l.meta.id.clone(),
            vip_address: l.vip_address,
            vip_network_id: l.vip_network_id.clone(),
            admin_state_up: l.admin_state_up,
            listeners: ids(&l.listeners),
        }
    }
}

impl From<&crate::lbaas::Listener> for Listener {
    fn from(l: &crate::lbaas::Listener) -> Self {
        Listener {
            id: l.meta.id.clone(),
            protocol: l.protocol.as_str().to_owned(),
            protocol_port: l.protocol_port,
            admin_state_up: l.admin_state_up,
            default_pool_id: l.default_pool_id.clone(),
            connection_limit: l.connection_limit,
            allowed_cidrs: (!l.allowed_cidrs.is_empty())
                .then(|| l.allowed_cidrs.iter().map(Cidr::to_string).collect()),
        }
    }
}

impl From<&crate::lbaas::Pool> for Pool {
    fn from(p: &crate::lbaas::Pool) -> Self {
        Pool {
            id: p.meta.id.clone(),
            admin_state_up: p.admin_state_up,
            lb_algorithm: p.lb_algorithm.as_str().to_owned(),
            session_persistence: p.session_persistence.as_ref().map(|s| Persistence {
                persistence_timeout: Some(s.timeout),
            }),
            members: ids(&p.members),
            healthmonitor_id: p.healthmonitor_id.clone(),
        }
    }
}

impl From<&crate::lbaas::Member> for Member {
    fn from(m: &crate::lbaas::Member) -> Self {
        Member {
            id: m.meta.id.clone(),
            address: m.address,
            protocol_port: m.protocol_port,
            weight: m.weight,
            backup: m.backup,
            admin_state_up: m.admin_state_up,
            operating_status: m.shown_status().to_owned(),
            monitor_address: m.monitor_address,
            monitor_port: m.monitor_port,
        }
    }
}

impl From<&crate::lbaas::HealthMonitor> for HealthMonitor {
    fn from(h: &crate::lbaas::HealthMonitor) -> Self {
        HealthMonitor {
            id: h.meta.id.clone(),
            kind: h.kind.as_str().to_owned(),
            admin_state_up: h.admin_state_up,
            delay: h.delay,
            timeout: h.timeout,
            max_retries: h.max_retries,
            max_retries_down: h.max_retries_down,
            url_path: h.http().map(|x| x.url_path.clone()),
            expected_codes: h.http().map(|x| x.expected_codes.clone()),
        }
    }
}
