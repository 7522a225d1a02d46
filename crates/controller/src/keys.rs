//! The store's key layout. Objects live at `/isthmus/<kind>/<id>`; the other keys exist so
//! that every uniqueness rule and every "in use" check is a compare inside one transaction.

use std::net::IpAddr;

use isthmus_model::addr::sortable_key;

/// Prefix of every network.
pub const NETWORKS: &str = "/isthmus/networks/";
/// Prefix of every subnet.
pub const SUBNETS: &str = "/isthmus/subnets/";
/// Prefix of every port.
pub const PORTS: &str = "/isthmus/ports/";
/// Prefix of every security group.
pub const SECURITY_GROUPS: &str = "/isthmus/security-groups/";
/// Prefix of every security group rule.
pub const SECURITY_GROUP_RULES: &str = "/isthmus/security-group-rules/";
/// Prefix of every router.
pub const ROUTERS: &str = "/isthmus/routers/";
/// Prefix of every floating IP.
pub const FLOATING_IPS: &str = "/isthmus/floatingips/";
/// Prefix of every address group.
pub const ADDRESS_GROUPS: &str = "/isthmus/address-groups/";
/// Prefix of every registered node.
/// Load balancers, listeners, pools, members and health monitors (Octavia's collections).
pub const LOAD_BALANCERS: &str = "/isthmus/loadbalancers/";
/// Listeners.
pub const LISTENERS: &str = "/isthmus/listeners/";
/// Pools.
pub const POOLS: &str = "/isthmus/pools/";
/// Members.
pub const MEMBERS: &str = "/isthmus/members/";
/// Health monitors.
pub const HEALTH_MONITORS: &str = "/isthmus/healthmonitors/";
/// Nodes, by name.
pub const NODES: &str = "/isthmus/nodes/";
/// Prefix of every DNS record (`<namespace>/<service>` after it).
pub const DNS_RECORDS: &str = "/isthmus/dns-records/";

/// Prefix of every namespace binding.
pub const NAMESPACE_BINDINGS: &str = "/isthmus/namespace-bindings/";
/// Prefix of VNI claims.
pub const VNIS: &str = "/isthmus/vni/";

/// A network.
pub fn network(id: &str) -> String {
    format!("{NETWORKS}{id}")
}
/// A subnet.
pub fn subnet(id: &str) -> String {
    format!("{SUBNETS}{id}")
}
/// A port.
pub fn port(id: &str) -> String {
    format!("{PORTS}{id}")
}
/// A security group.
pub fn security_group(id: &str) -> String {
    format!("{SECURITY_GROUPS}{id}")
}
/// A security group rule.
pub fn security_group_rule(id: &str) -> String {
    format!("{SECURITY_GROUP_RULES}{id}")
}
/// A router.
pub fn router(id: &str) -> String {
    format!("{ROUTERS}{id}")
}
/// A floating IP.
pub fn floating_ip(id: &str) -> String {
    format!("{FLOATING_IPS}{id}")
}
/// Claim of a fixed address by a floating IP of an external network (value: floating IP
/// id): one floating IP per fixed address and external network.
pub fn fip_association(external_network_id: &str, port_id: &str, ip: IpAddr) -> String {
    format!(
        "/isthmus/fip-association/{external_network_id}/{port_id}/{}",
        sortable_key(ip)
    )
}
/// Floating IPs associated with a port.
pub fn port_fips_prefix(port_id: &str) -> String {
    format!("/isthmus/index/port-fips/{port_id}/")
}
/// One floating IP associated with a port.
pub fn port_fip(port_id: &str, fip_id: &str) -> String {
    format!("{}{fip_id}", port_fips_prefix(port_id))
}
/// Floating IPs NAT'd by a router.
pub fn router_fips_prefix(router_id: &str) -> String {
    format!("/isthmus/index/router-fips/{router_id}/")
}
/// One floating IP NAT'd by a router.
pub fn router_fip(router_id: &str, fip_id: &str) -> String {
    format!("{}{fip_id}", router_fips_prefix(router_id))
}
/// A node.
pub fn node(name: &str) -> String {
    format!("{NODES}{name}")
}

/// A DNS record (`<namespace>/<service>`).
pub fn dns_record(id: &str) -> String {
    format!("{DNS_RECORDS}{id}")
}

/// The binding of a Kubernetes namespace.
pub fn namespace_binding(namespace: &str) -> String {
    format!("{NAMESPACE_BINDINGS}{namespace}")
}

/// Claims of addresses in a subnet; sorted by address.
pub fn ipam_prefix(subnet_id: &str) -> String {
    format!("/isthmus/ipam/{subnet_id}/")
}
/// Claim of one address (value: port id).
pub fn ipam(subnet_id: &str, ip: IpAddr) -> String {
    format!("{}{}", ipam_prefix(subnet_id), sortable_key(ip))
}
/// Claim of a MAC within a network (value: port id).
pub fn mac(network_id: &str, mac: &str) -> String {
    format!("/isthmus/mac/{network_id}/{mac}")
}
/// Claim of a VNI (value: network id); zero-padded so claims sort numerically.
pub fn vni(vni: u32) -> String {
    format!("{VNIS}{vni:08}")
}
/// Claim of a physical network by a flat network (value: network id).
pub fn flat(physnet: &str) -> String {
    format!("/isthmus/flat/{physnet}")
}
/// A project's default security group (value: group id).
pub fn default_security_group(project_id: &str) -> String {
    format!("/isthmus/default-security-group/{project_id}")
}
/// Ports of a network.
pub fn network_ports_prefix(network_id: &str) -> String {
    format!("/isthmus/index/network-ports/{network_id}/")
}
/// One port of a network.
pub fn network_port(network_id: &str, port_id: &str) -> String {
    format!("{}{port_id}", network_ports_prefix(network_id))
}
/// Ports using a security group.
pub fn group_ports_prefix(group_id: &str) -> String {
    format!("/isthmus/index/group-ports/{group_id}/")
}
/// One port using a security group.
pub fn group_port(group_id: &str, port_id: &str) -> String {
    format!("{}{port_id}", group_ports_prefix(group_id))
}
/// Rules of a security group.
pub fn group_rules_prefix(group_id: &str) -> String {
    format!("/isthmus/index/group-rules/{group_id}/")
}
/// One rule of a security group.
pub fn group_rule(group_id: &str, rule_id: &str) -> String {
    format!("{}{rule_id}", group_rules_prefix(group_id))
}
/// Rules (of any group) whose remote group is `group_id`.
pub fn remote_rules_prefix(group_id: &str) -> String {
    format!("/isthmus/index/remote-group-rules/{group_id}/")
}
/// One rule whose remote group is `group_id`.
pub fn remote_rule(group_id: &str, rule_id: &str) -> String {
    format!("{}{rule_id}", remote_rules_prefix(group_id))
}

/// The last path segment of a key.
pub fn last_segment(key: &str) -> &str {
    key.rsplit('/').next().unwrap_or(key)
}

/// The store revision a node's data plane has applied (value: the revision), written by its
/// agent after each reconcile; kept out of every watch.
pub const APPLIED: &str = "/isthmus/applied/";

/// [`APPLIED`] of one node.
pub fn applied(name: &str) -> String {
    format!("{APPLIED}{name}")
}

/// What each node's load balancing counted, in [`STATS_SHARDS`] keys per node (value:
/// `{listener id: Stats}`, listeners that counted nothing left out), written by its agent
/// when it changes; kept out of every watch.
///
/// [`STATS_SHARDS`]: isthmus_model::lbaas::STATS_SHARDS
pub const LB_STATS: &str = "/isthmus/lb-stats/";

/// The prefix of one node's [`LB_STATS`] shards.
pub fn lb_stats(name: &str) -> String {
    format!("{LB_STATS}{name}/")
}

/// One shard of a node's [`LB_STATS`].
pub fn lb_stats_shard(name: &str, shard: u8) -> String {
    format!("{LB_STATS}{name}/{shard:x}")
}

/// Every live node's heartbeat key.
pub const HEARTBEATS: &str = "/isthmus/heartbeats/";

/// A node's heartbeat key (value: the id of the lease it lives under, which the node's
/// heartbeats renew), kept apart from the node so heartbeats do not wake every watcher.
pub fn heartbeat(name: &str) -> String {
    format!("/isthmus/heartbeats/{name}")
}

/// The controller that runs the singletons (value: its identity), under its lease.
pub const LEADER: &str = "/isthmus/leader";

/// Prefix of every RBAC policy.
pub const RBAC_POLICIES: &str = "/isthmus/rbac-policies/";
/// Policies on one shared object.
pub fn rbac_object_prefix(object_id: &str) -> String {
    format!("/isthmus/index/rbac-objects/{object_id}/")
}
/// One policy on a shared object.
pub fn rbac_object(object_id: &str, policy_id: &str) -> String {
    format!("{}{policy_id}", rbac_object_prefix(object_id))
}
/// Claim of one (object, action, target) grant: no two policies grant the same.
pub fn rbac_claim(object_id: &str, action: &str, target: &str) -> String {
    format!("/isthmus/rbac-claims/{object_id}/{action}/{target}")
}
/// Subnets allocated from a subnet pool (value: `<project> <cidr>`).
pub fn pool_subnets_prefix(pool_id: &str) -> String {
    format!("/isthmus/index/pool-subnets/{pool_id}/")
}
/// One subnet allocated from a subnet pool.
pub fn pool_subnet(pool_id: &str, subnet_id: &str) -> String {
    format!("{}{subnet_id}", pool_subnets_prefix(pool_id))
}
/// Rewritten by every allocation from a pool, so two allocations from one pool never
/// commit from the same view of it.
pub fn pool_allocation_lock(pool_id: &str) -> String {
    format!("/isthmus/pool-allocation/{pool_id}")
}
/// The default subnet pool of an IP family (value: pool id).
pub fn default_subnet_pool(version: u8) -> String {
    format!("/isthmus/default-subnetpool/{version}")
}
/// Subnet pools of an address scope.
pub fn scope_pools_prefix(scope_id: &str) -> String {
    format!("/isthmus/index/scope-pools/{scope_id}/")
}
/// One subnet pool of an address scope.
pub fn scope_pool(scope_id: &str, pool_id: &str) -> String {
    format!("{}{pool_id}", scope_pools_prefix(scope_id))
}
/// Rewritten by every use of an object that only an RBAC policy allows; a revocation
/// compares it, so a new use and the removal of its grant never both commit.
pub fn rbac_use(object_id: &str) -> String {
    format!("/isthmus/rbac-use/{object_id}")
}
/// Rules naming an address group as remote.
pub fn address_group_rules_prefix(group_id: &str) -> String {
    format!("/isthmus/index/address-group-rules/{group_id}/")
}
/// One rule naming an address group as remote.
pub fn address_group_rule(group_id: &str, rule_id: &str) -> String {
    format!("{}{rule_id}", address_group_rules_prefix(group_id))
}
