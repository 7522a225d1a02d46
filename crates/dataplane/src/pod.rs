//! A pod's interface as its port implies it — MAC, MTU, addresses with prefix, routes, DNS —
//! and the CNI result that describes it to the runtime. The agent creates exactly this in the
//! pod's namespace.

use std::net::IpAddr;

pub use isthmus_model::port::{POD_DEVICE_OWNER, POOL_DEVICE_ID};

use isthmus_model::addr::Cidr;
use serde_json::{json, Value};

use crate::view::NodeView;

/// Why a pod interface cannot be derived from the view (yet).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PodError {
    /// The port is not (yet) in the node's view.
    #[error("port {0} is not in the node's view")]
    UnknownPort(String),
    /// Its network is not (yet) in the view.
    #[error("network {0} is not in the node's view")]
    UnknownNetwork(String),
    /// A subnet of its addresses is not (yet) in the view, or unreadable.
    #[error("subnet {0} is not in the node's view: {1}")]
    UnknownSubnet(String, String),
}

/// One address of the pod's interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodAddress {
    /// The address.
    pub ip: IpAddr,
    /// Its subnet's prefix length.
    pub prefix: u8,
    /// Its subnet's gateway.
    pub gateway: Option<IpAddr>,
}

/// A route in the pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodRoute {
    /// Destination.
    pub destination: Cidr,
    /// Next hop.
    pub gateway: IpAddr,
}

/// The pod side of a port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodInterface {
    /// The port's MAC.
    pub mac: String,
    /// The network's MTU.
    pub mtu: u32,
    /// The port's fixed IPs.
    pub addresses: Vec<PodAddress>,
    /// Default routes via the subnets' gateways, then the subnets' host routes.
    pub routes: Vec<PodRoute>,
    /// The subnets' DNS servers; for a subnet naming none, its DHCP port's address (where
    /// the node's DNS answers instances' names).
    pub nameservers: Vec<String>,
    /// The port's DNS domain (`openstack.local`), empty when unknown.
    pub domain: String,
}

/// The interface of local port `port_id`, from the node's view.
pub fn pod_interface(view: &NodeView, port_id: &str) -> Result<PodInterface, PodError> {
    let port = view
        .ports
        .get(port_id)
        .ok_or_else(|| PodError::UnknownPort(port_id.to_owned()))?;
    let network = view
        .networks
        .get(&port.network_id)
        .ok_or_else(|| PodError::UnknownNetwork(port.network_id.clone()))?;
    let mut iface = PodInterface {
        mac: port.mac_address.clone(),
        mtu: network.mtu,
        addresses: Vec::new(),
        routes: Vec::new(),
        nameservers: Vec::new(),
        domain: port.dns_domain(),
    };
    let dhcp = crate::dhcp::dhcp_port(view, &port.network_id);
    let mut host_routes = Vec::new();
    for fixed in &port.fixed_ips {
        let unknown = |why: String| PodError::UnknownSubnet(fixed.subnet_id.clone(), why);
        let subnet = view
            .subnet_info(&fixed.subnet_id)
            .ok_or_else(|| unknown("absent".into()))?;
        let cidr = subnet.cidr;
        iface.addresses.push(PodAddress {
            ip: fixed.ip_address,
            prefix: cidr.prefix,
            gateway: subnet.gateway,
        });
        // One default route per IP version: the first subnet with a gateway gives it.
        if let Some(gw) = subnet.gateway {
            let default = Cidr {
                network: if gw.is_ipv4() {
                    IpAddr::from([0u8; 4])
                } else {
                    IpAddr::from([0u16; 8])
                },
                prefix: 0,
            };
            if !iface.routes.iter().any(|r| r.destination == default) {
                iface.routes.push(PodRoute {
                    destination: default,
                    gateway: gw,
                });
            }
        }
        host_routes.extend(subnet.host_routes.iter().map(|r| PodRoute {
            destination: r.destination,
            gateway: r.nexthop,
        }));
        let own = subnet
            .enable_dhcp
            .then(|| dhcp.and_then(|d| d.fixed_ips.iter().find(|f| f.subnet_id == fixed.subnet_id)))
            .flatten()
            .map(|f| f.ip_address);
        let servers = if subnet.dns_nameservers.is_empty() {
            own.into_iter().collect()
        } else {
            subnet.dns_nameservers.clone()
        };
        for ns in servers.iter().map(IpAddr::to_string) {
            if !iface.nameservers.contains(&ns) {
                iface.nameservers.push(ns);
            }
        }
    }
    iface.routes.extend(host_routes);
    Ok(iface)
}

fn cidr_text(c: &Cidr) -> String {
    format!("{}/{}", c.network, c.prefix)
}

/// The search domains of a pod of Kubernetes namespace `namespace` in the cluster of DNS
/// domain `domain` (as the kubelet writes them).
pub fn cluster_search(namespace: &str, domain: &str) -> Vec<String> {
    let domain = domain.trim_end_matches('.');
    vec![
        format!("{namespace}.svc.{domain}"),
        format!("svc.{domain}"),
        domain.to_owned(),
    ]
}

/// `result` with `search` before the search domains it has (when it names a resolver).
pub fn with_search(mut result: Value, search: &[String]) -> Value {
    if search.is_empty() || result["dns"]["nameservers"].is_null() {
        return result;
    }
    let mut all: Vec<Value> = search.iter().map(|s| json!(s)).collect();
    if let Some(existing) = result["dns"]["search"].as_array() {
        all.extend(
            existing
                .iter()
                .filter(|s| !all.contains(s))
                .cloned()
                .collect::<Vec<_>>(),
        );
    }
    result["dns"]["search"] = Value::Array(all);
    result
}

/// The CNI result (1.0/1.1) for an interface wired as host `tap` and pod `ifname` in
/// `sandbox`. The caller sets `cniVersion`.
pub fn cni_result(iface: &PodInterface, tap: &str, ifname: &str, sandbox: &str) -> Value {
    let ips: Vec<Value> = iface
        .addresses
        .iter()
        .map(|a| {
            let mut ip = json!({"address": format!("{}/{}", a.ip, a.prefix), "interface": 1});
            if let Some(gw) = a.gateway {
                ip["gateway"] = json!(gw.to_string());
            }
            ip
        })
        .collect();
    let routes: Vec<Value> = iface
        .routes
        .iter()
        .map(|r| json!({"dst": cidr_text(&r.destination), "gw": r.gateway.to_string()}))
        .collect();
    let mut result = json!({
        "interfaces": [
            {"name": tap, "mtu": iface.mtu},
            {"name": ifname, "mac": iface.mac, "mtu": iface.mtu, "sandbox": sandbox},
        ],
        "ips": ips,
        "routes": routes,
        "dns": {},
    });
    if !iface.nameservers.is_empty() {
        result["dns"] = json!({"nameservers": iface.nameservers});
        if !iface.domain.is_empty() {
            result["dns"]["domain"] = json!(iface.domain);
            result["dns"]["search"] = json!([iface.domain]);
        }
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view() -> NodeView {
        let mut v = NodeView::default();
        for line in [
            json!({"type": "ADDED", "kind": "network", "object": {"id": "n", "mtu": 1450,
                "provider:network_type": "vxlan", "provider:segmentation_id": 5, "provider:physical_network": null}}),
            json!({"type": "ADDED", "kind": "subnet", "object": {"id": "s4", "network_id": "n", "cidr": "192.168.100.0/24",
                "gateway_ip": "192.168.100.1", "ip_version": 4, "dns_nameservers": ["192.168.100.53"],
                "host_routes": [{"destination": "10.9.0.0/16", "nexthop": "192.168.100.254"}]}}),
            json!({"type": "ADDED", "kind": "subnet", "object": {"id": "s6", "network_id": "n", "cidr": "fd00:1::/64",
                "gateway_ip": "fd00:1::1", "ip_version": 6, "dns_nameservers": [], "host_routes": []}}),
            json!({"type": "ADDED", "kind": "port", "object": {"id": "p", "network_id": "n",
                "mac_address": "fa:16:3e:00:00:07", "binding:host_id": "node2", "security_groups": [],
                "port_security_enabled": true, "allowed_address_pairs": [], "status": "DOWN",
                "fixed_ips": [{"subnet_id": "s4", "ip_address": "192.168.100.4"},
                              {"subnet_id": "s6", "ip_address": "fd00:1::4"}]}}),
        ] {
            v.apply(&line).unwrap();
        }
        v
    }

    #[test]
    fn derives_addresses_routes_and_dns() {
        let iface = pod_interface(&view(), "p").unwrap();
        assert_eq!(iface.mtu, 1450);
        assert_eq!(iface.addresses[0].prefix, 24);
        assert_eq!(iface.addresses[1].prefix, 64);
        let routes: Vec<String> = iface
            .routes
            .iter()
            .map(|r| format!("{} via {}", cidr_text(&r.destination), r.gateway))
            .collect();
        assert_eq!(
            routes,
            [
                "0.0.0.0/0 via 192.168.100.1",
                "::/0 via fd00:1::1",
                "10.9.0.0/16 via 192.168.100.254"
            ]
        );
        let result = cni_result(&iface, "tapp", "eth0", "/run/netns/x");
        assert_eq!(result["ips"][0]["address"], "192.168.100.4/24");
        assert_eq!(result["ips"][0]["gateway"], "192.168.100.1");
        assert_eq!(result["interfaces"][1]["sandbox"], "/run/netns/x");
        assert_eq!(result["dns"]["nameservers"][0], "192.168.100.53");
    }

    #[test]
    fn without_name_servers_the_dhcp_port_answers() {
        let mut v = view();
        for line in [
            json!({"type": "ADDED", "kind": "subnet", "object": {"id": "s4", "network_id": "n", "cidr": "192.168.100.0/24",
                "gateway_ip": "192.168.100.1", "ip_version": 4, "dns_nameservers": [], "enable_dhcp": true}}),
            json!({"type": "ADDED", "kind": "port", "object": {"id": isthmus_model::port::dhcp_port_id("n"), "network_id": "n",
                "mac_address": "fa:16:3e:00:00:02", "port_security_enabled": false, "status": "ACTIVE",
                "device_owner": "network:dhcp",
                "fixed_ips": [{"subnet_id": "s4", "ip_address": "192.168.100.2"}]}}),
        ] {
            v.apply(&line).unwrap();
        }
        v.ports.get_mut("p").unwrap().dns_assignment = vec![crate::view::DnsAssignment {
            hostname: "web".into(),
            ip_address: "192.168.100.4".parse().unwrap(),
            fqdn: "web.openstack.local.".into(),
        }];
        let result = cni_result(&pod_interface(&v, "p").unwrap(), "tapp", "eth0", "/x");
        assert_eq!(
            result["dns"],
            json!({"nameservers": ["192.168.100.2"], "domain": "openstack.local", "search": ["openstack.local"]})
        );
    }

    #[test]
    fn says_what_is_missing() {
        let mut v = view();
        assert_eq!(
            pod_interface(&v, "q"),
            Err(PodError::UnknownPort("q".into()))
        );
        v.subnets.remove("s6");
        assert!(matches!(
            pod_interface(&v, "p"),
            Err(PodError::UnknownSubnet(s, _)) if s == "s6"
        ));
    }

    #[test]
    fn kubernetes_pods_search_their_cluster_domains_first() {
        let search = cluster_search("team-b", "cluster.local.");
        assert_eq!(
            search,
            [
                "team-b.svc.cluster.local",
                "svc.cluster.local",
                "cluster.local"
            ]
        );
        let result = json!({"dns": {"nameservers": ["10.0.0.2"], "search": ["openstack.local"]}});
        assert_eq!(
            with_search(result, &search)["dns"]["search"],
            json!([
                "team-b.svc.cluster.local",
                "svc.cluster.local",
                "cluster.local",
                "openstack.local"
            ])
        );
        let no_resolver = json!({"dns": {}});
        assert_eq!(with_search(no_resolver.clone(), &search), no_resolver);
    }
}
