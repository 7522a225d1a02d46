//! Port operations: address allocation (lowest free, compare-and-swap on one claim key per
//! address), MAC claims, security group references, DNS assignment and binding.

use std::collections::{BTreeSet, HashSet};
use std::net::IpAddr;

use async_trait::async_trait;
use isthmus_model::addr::{from_u128, to_u128, IpVersion};
use isthmus_model::input::Method;
use isthmus_model::port::{
    apply_dhcp_options, AddressPair, AddressPairRequest, Binding, FixedIp, FixedIpRequest,
};
use isthmus_model::rbac::Action;
use isthmus_model::resource::{Resource, View};
use isthmus_model::router::{is_interface_owner, is_l3_owner};
use isthmus_model::{
    ipam, mac, Caller, Error, FloatingIp, Network, Port, PortRequest, Result, Subnet,
};
use isthmus_store::{Compare, Op, Txn};
use serde_json::Value;

use super::{
    check_revision, encode, new_id, now, store_error, Attempt, IpReservation, Kind, Listed, Object,
    Service,
};
use crate::keys;

/// Why an address plan could not be made.
enum Shortage {
    /// Exhausted for good.
    Exhausted,
    /// Only addresses held by in-flight requests of this controller are left: wait for them.
    Busy,
}

/// The outcome of planning a port's addresses.
struct IpPlan {
    fixed_ips: Vec<FixedIp>,
    /// New claims: (subnet, address, asked for explicitly).
    claims: Vec<(String, IpAddr, bool)>,
}

fn is_reserved_address(subnet: &Subnet, ip: IpAddr) -> bool {
    let n = to_u128(ip);
    let cidr = subnet.cidr;
    (n == cidr.first() && cidr.first() != cidr.last())
        || (cidr.version() == IpVersion::V4 && cidr.prefix < 31 && n == cidr.last())
}

fn resolve_pairs(requested: Vec<AddressPairRequest>, own_mac: &str) -> Vec<AddressPair> {
    requested
        .into_iter()
        .map(|p| AddressPair {
            ip_address: p.ip_address,
            mac_address: p.mac_address.unwrap_or_else(|| own_mac.to_owned()),
        })
        .collect()
}

fn random_mac() -> String {
    let bytes = *uuid::Uuid::new_v4().as_bytes();
    mac::format(mac::generate([bytes[0], bytes[1], bytes[2]]))
}

/// What addresses are planned for: the port's MAC (SLAAC addresses) and its owner (subnet
/// service types).
#[derive(Clone, Copy)]
struct PortIdentity<'a> {
    mac: &'a str,
    device_owner: &'a str,
}

impl Service {
    /// The lowest address of `subnet`'s pools that is neither claimed in the store nor held by
    /// another in-flight request of this controller, held in-process on return.
    ///
    /// Claims are read page by page from the subnet's low-water mark (every address below it
    /// is claimed), so an allocation reads a few keys however full the subnet is.
    async fn allocate(
        &self,
        subnet: &Subnet,
        reservation: &mut IpReservation<'_>,
        taken_here: &[FixedIp],
    ) -> Result<std::result::Result<IpAddr, Shortage>> {
        const PAGE: usize = 256;
        let id = &subnet.meta.id;
        let version = subnet.version();
        let prefix = keys::ipam_prefix(id);
        let mut pools = subnet.allocation_pools.clone();
        pools.sort_by_key(|p| p.first());
        let mut low_water = self.low_water(id);
        for pool in &pools {
            let mut candidate = pool.first().max(low_water);
            while candidate <= pool.last() {
                let from = keys::ipam(id, from_u128(version, candidate));
                let page = self
                    .store
                    .range_from(&prefix, &from, PAGE)
                    .await
                    .map_err(store_error)?;
                let mut claimed: BTreeSet<u128> = page
                    .kvs
                    .iter()
                    .filter_map(|kv| {
                        isthmus_model::addr::from_sortable_key(keys::last_segment(&kv.key))
                    })
                    .map(to_u128)
                    .collect();
                let page_end = if page.kvs.len() < PAGE {
                    pool.last()
                } else {
                    claimed
                        .last()
                        .copied()
                        .unwrap_or(pool.last())
                        .min(pool.last())
                };
                // Everything up to the first address the store has not claimed is taken for
                // good (until a release lowers the mark again).
                let mut first_unclaimed = candidate;
                while first_unclaimed <= page_end && claimed.contains(&first_unclaimed) {
                    first_unclaimed += 1;
                }
                if candidate == low_water.max(pool.first()) {
                    low_water = first_unclaimed;
                    self.raise_low_water(id, first_unclaimed);
                }
                claimed.extend(taken_here.iter().map(|f| to_u128(f.ip_address)));
                let chosen = self.reserve_ip(reservation, id, |held| {
                    (first_unclaimed..=page_end).find(|c| !claimed.contains(c) && !held.contains(c))
                });
                if let Some(n) = chosen {
                    return Ok(Ok(from_u128(version, n)));
                }
                if page_end == u128::MAX {
                    break;
                }
                candidate = page_end + 1;
            }
        }
        Ok(if self.has_reservations(id) {
            Err(Shortage::Busy)
        } else {
            Err(Shortage::Exhausted)
        })
    }

    /// Plans a port's addresses from a request (or Neutron's defaults), keeping `existing`
    /// addresses the request still names.
    async fn plan_ips(
        &self,
        network: &Network,
        subnets: &[(Subnet, u64)],
        port: PortIdentity<'_>,
        request: Option<&[FixedIpRequest]>,
        existing: &[FixedIp],
        reservation: &mut IpReservation<'_>,
    ) -> Result<std::result::Result<IpPlan, Shortage>> {
        let PortIdentity {
            mac: port_mac,
            device_owner,
        } = port;
        let mac_bytes = mac::parse_unicast("mac_address", port_mac)?;
        let mut plan = IpPlan {
            fixed_ips: Vec::new(),
            claims: Vec::new(),
        };
        // Subnets reserved for other device owners (`service_types`) are not this port's.
        let served: Vec<&(Subnet, u64)> = subnets
            .iter()
            .filter(|(s, _)| s.serves(device_owner))
            .collect();
        let Some(request) = request else {
            if served.is_empty() && !subnets.is_empty() {
                return Err(Error::fault(
                    "IpAddressGenerationFailureNoMatchingSubnet",
                    409,
                    format!(
                        "No valid service subnet for the given device owner, network {}, service type {device_owner}.",
                        network.meta.id
                    ),
                ));
            }
            // Neutron's default: one address from the first IPv4 subnet with room, one from
            // the first stateful IPv6 subnet with room, and the SLAAC address of every
            // automatic IPv6 subnet.
            let mut wanted_v4 = false;
            let mut wanted_v6 = false;
            let (mut got_v4, mut got_v6) = (false, false);
            for (subnet, _) in served.iter().copied() {
                if subnet.is_auto_address() {
                    let ip = ipam::eui64(&subnet.cidr, mac_bytes);
                    plan.claims.push((subnet.meta.id.clone(), ip, false));
                    plan.fixed_ips.push(FixedIp {
                        subnet_id: subnet.meta.id.clone(),
                        ip_address: ip,
                    });
                    continue;
                }
                let (wanted, got) = match subnet.version() {
                    IpVersion::V4 => (&mut wanted_v4, &mut got_v4),
                    IpVersion::V6 => (&mut wanted_v6, &mut got_v6),
                };
                *wanted = true;
                if *got {
                    continue;
                }
                match self.allocate(subnet, reservation, &plan.fixed_ips).await? {
                    Ok(ip) => {
                        *got = true;
                        plan.claims.push((subnet.meta.id.clone(), ip, false));
                        plan.fixed_ips.push(FixedIp {
                            subnet_id: subnet.meta.id.clone(),
                            ip_address: ip,
                        });
                    }
                    Err(Shortage::Busy) => return Ok(Err(Shortage::Busy)),
                    Err(Shortage::Exhausted) => {}
                }
            }
            if (wanted_v4 && !got_v4) || (wanted_v6 && !got_v6) {
                return Err(Error::IpAddressGenerationFailure(network.meta.id.clone()));
            }
            return Ok(Ok(plan));
        };
        for entry in request {
            let subnet = match (&entry.subnet_id, entry.ip_address) {
                (Some(sid), _) => subnets
                    .iter()
                    .map(|(s, _)| s)
                    .find(|s| &s.meta.id == sid)
                    .ok_or_else(|| {
                        Error::InvalidInput(format!(
                            "Failed to create port on network {}, because fixed_ips included invalid subnet {sid}",
                            network.meta.id
                        ))
                    })?,
                (None, Some(ip)) => subnets
                    .iter()
                    .map(|(s, _)| s)
                    .find(|s| s.cidr.contains(ip))
                    .ok_or_else(|| Error::InvalidIpForNetwork(ip.to_string()))?,
                (None, None) => unreachable_request()?,
            };
            if !subnet.serves(device_owner)
                && !existing.iter().any(|f| f.subnet_id == subnet.meta.id)
            {
                return Err(Error::InvalidInput(format!(
                    "Subnet {} serves device owners {:?}, not '{device_owner}'",
                    subnet.meta.id, subnet.service_types
                )));
            }
            let ip = match entry.ip_address {
                Some(ip) => {
                    if !subnet.cidr.contains(ip) || is_reserved_address(subnet, ip) {
                        return Err(Error::InvalidIpForSubnet(ip.to_string()));
                    }
                    // Router interfaces take the gateway address of automatic subnets (the
                    // router advertises the prefix), as in Neutron.
                    if subnet.is_auto_address()
                        && !is_interface_owner(device_owner)
                        && ip != ipam::eui64(&subnet.cidr, mac_bytes)
                    {
                        return Err(Error::InvalidInput(format!(
                            "IPv6 address {ip} can not be directly assigned to a port on subnet {} since the subnet is configured for automatic addresses",
                            subnet.meta.id
                        )));
                    }
                    ip
                }
                None if subnet.is_auto_address() => ipam::eui64(&subnet.cidr, mac_bytes),
                None => match self.allocate(subnet, reservation, &plan.fixed_ips).await? {
                    Ok(ip) => ip,
                    Err(Shortage::Busy) => return Ok(Err(Shortage::Busy)),
                    Err(Shortage::Exhausted) => {
                        return Err(Error::IpAddressGenerationFailure(network.meta.id.clone()))
                    }
                },
            };
            if plan.fixed_ips.iter().any(|f| f.ip_address == ip) {
                return Err(Error::invalid_attr(
                    "fixed_ips",
                    format!("Duplicate IP address '{ip}'"),
                ));
            }
            let fixed = FixedIp {
                subnet_id: subnet.meta.id.clone(),
                ip_address: ip,
            };
            if !existing.contains(&fixed) {
                plan.claims
                    .push((subnet.meta.id.clone(), ip, entry.ip_address.is_some()));
            }
            plan.fixed_ips.push(fixed);
        }
        Ok(Ok(plan))
    }

    /// Loads a network's subnets.
    pub(super) async fn subnets_of(&self, network: &Network) -> Result<Vec<(Subnet, u64)>> {
        let mut out = Vec::with_capacity(network.subnets.len());
        for id in &network.subnets {
            if let Some(s) = self.load::<Subnet>(id).await? {
                out.push(s);
            }
        }
        Ok(out)
    }

    /// After a failed commit: a precise 409 when an explicitly requested address or MAC is
    /// taken, else `None` (retry).
    async fn explain_conflict(
        &self,
        network_id: &str,
        claims: &[(String, IpAddr, bool)],
        explicit_mac: Option<&str>,
        port_id: &str,
    ) -> Result<Option<Error>> {
        for (subnet_id, ip, explicit) in claims {
            if !explicit {
                continue;
            }
            if let Some(kv) = self
                .store
                .get(&keys::ipam(subnet_id, *ip))
                .await
                .map_err(store_error)?
            {
                if kv.value != port_id.as_bytes() {
                    return Ok(Some(Error::IpAddressAlreadyAllocated {
                        ip: ip.to_string(),
                        subnet_id: subnet_id.clone(),
                    }));
                }
            }
        }
        if let Some(m) = explicit_mac {
            if let Some(kv) = self
                .store
                .get(&keys::mac(network_id, m))
                .await
                .map_err(store_error)?
            {
                if kv.value != port_id.as_bytes() {
                    return Ok(Some(Error::MacAddressInUse {
                        net_id: network_id.to_owned(),
                        mac: m.to_owned(),
                    }));
                }
            }
        }
        Ok(None)
    }

    fn dns_domain_of<'a>(&'a self, network: &'a Network) -> &'a str {
        if network.dns_domain.is_empty() {
            &self.config.dns_domain
        } else {
            &network.dns_domain
        }
    }

    /// Deletes a port whatever owns it (the L3 service's own ports).
    pub(crate) async fn delete_port_unchecked(&self, id: &str) -> Result<()> {
        self.remove_port(None, id, None).await
    }

    /// Deletes port `id` if it still belongs to the Kubernetes pod `pod_uid` and is at
    /// `revision` (the watcher's collection of ports whose pod is gone); `false` when it
    /// changed in between or is gone already.
    pub async fn delete_pod_port(&self, id: &str, pod_uid: &str, revision: u64) -> Result<bool> {
        match self.load::<Port>(id).await? {
            Some((port, _)) if port.device_id == pod_uid => {}
            _ => return Ok(false),
        }
        match self.remove_port(None, id, Some(revision)).await {
            Ok(()) => Ok(true),
            Err(Error::NotFound { .. } | Error::RevisionNumberConstraintFailed { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Deletes a port, releasing its addresses and MAC and disassociating its floating IPs in
    /// the same transaction. Through the API (`caller` given) ports the L3 service owns are
    /// refused.
    pub(super) async fn remove_port(
        &self,
        caller: Option<&Caller>,
        id: &str,
        if_match: Option<u64>,
    ) -> Result<()> {
        self.retry(|| async move {
            let (port, rev) = match caller {
                Some(caller) => self.load_owned::<Port>(caller, id).await?,
                None => self.must_load::<Port>(id).await?,
            };
            if caller.is_some() && is_l3_owner(&port.device_owner) {
                return Err(Error::fault(
                    "ServicePortInUse",
                    409,
                    format!(
                        "Port {id} cannot be deleted directly via the port API: has device owner {}.",
                        port.device_owner
                    ),
                ));
            }
            check_revision(&port.meta, if_match)?;
            if let Some(role) = &port.trunk {
                return Err(role.in_use(id));
            }
            let mut txn = Txn::new()
                .when(Compare::mod_revision(keys::port(id), rev))
                .then(Op::delete(keys::port(id)))
                .then(Op::delete(keys::mac(&port.network_id, &port.mac_address)))
                .then(Op::delete(keys::network_port(&port.network_id, id)));
            for f in &port.fixed_ips {
                txn = txn.then(Op::delete(keys::ipam(&f.subnet_id, f.ip_address)));
            }
            for g in &port.security_groups {
                txn = txn.then(Op::delete(keys::group_port(g, id)));
            }
            // Neutron disassociates a deleted port's floating IPs.
            let fips_prefix = keys::port_fips_prefix(id);
            for fip_id in self.index(&fips_prefix).await? {
                let Some((mut fip, fip_rev)) = self.load::<FloatingIp>(&fip_id).await? else {
                    continue;
                };
                txn = txn.when(Compare::mod_revision(keys::floating_ip(&fip_id), fip_rev));
                for op in Self::disassociate(&mut fip) {
                    txn = txn.then(op);
                }
                fip.meta.touch(&now());
                txn = txn.then(Op::put(keys::floating_ip(&fip_id), encode(&fip)?));
            }
            if !self.commit(txn).await? {
                return Ok(Attempt::Retry);
            }
            for released in &port.fixed_ips {
                self.lower_low_water(&released.subnet_id, to_u128(released.ip_address));
            }
            Ok(Attempt::Done(()))
        })
        .await
    }

    /// Creates a port with a given id (the generic create draws a new one; the DHCP port's
    /// is derived from its network).
    pub(super) async fn create_port(
        &self,
        caller: &Caller,
        body: Value,
        id: String,
    ) -> Result<Object> {
        let service = self;
        let req = PortRequest::parse(body, Method::Create, caller)?;
        let created_at = now();
        let project = req
            .project_id
            .clone()
            .unwrap_or_else(|| caller.project_id.clone());
        let network_id = req.network_id.clone().unwrap_or_default();
        service.retry(|| async {
            let (network, net_rev) = service.load_visible::<Network>(caller, &network_id).await?;
            let grant = if network.usable_by(caller) {
                None
            } else {
                match service
                    .grant_guard(&project, &network_id, Action::AccessAsShared)
                    .await?
                {
                    Some(guard) => Some(guard),
                    None => return Err(Error::PolicyNotAuthorized("rule:create_port".to_owned())),
                }
            };
            network_owner_attributes(caller, &network, &req, "create")?;
            let subnets = service.subnets_of(&network).await?;
            let port_security = req.port_security_enabled.unwrap_or(network.port_security_enabled);
            let group_ids = match (&req.security_groups, port_security) {
                (Some(ids), false) if !ids.is_empty() => {
                    return Err(Error::BadRequest(
                        "Port security must be enabled and port must have an IP address in order to use security groups.".to_owned(),
                    ))
                }
                (_, false) => Vec::new(),
                (Some(ids), true) => ids.clone(),
                (None, true) => vec![service.ensure_default_group(&project).await?],
            };
            let (groups, group_guards) = service.groups_for_port(caller, &project, &group_ids).await?;
            if !port_security && req.allowed_address_pairs.as_ref().is_some_and(|p| !p.is_empty()) {
                return Err(Error::AddressPairAndPortSecurityRequired);
            }
            let mac_address = req.mac_address.clone().unwrap_or_else(random_mac);
            let mut reservation = service.reservation();
            let plan = match service
                .plan_ips(&network, &subnets, PortIdentity { mac: &mac_address, device_owner: req.device_owner.as_deref().unwrap_or_default() }, req.fixed_ips.as_deref(), &[], &mut reservation)
                .await?
            {
                Ok(plan) => plan,
                Err(_) => return Ok(Attempt::Retry),
            };
            let mut meta = isthmus_model::Meta::new(id.clone(), project.clone(), &created_at);
            meta.name = req.name.clone().unwrap_or_default();
            meta.description = req.description.clone().unwrap_or_default();
            meta.tags = req.tags.clone().unwrap_or_default();
            let port = Port {
                extra_dhcp_opts: req
                    .extra_dhcp_opts
                    .as_deref()
                    .map(|c| apply_dhcp_options(&[], c))
                    .unwrap_or_default(),
                meta,
                network_id: network.meta.id.clone(),
                admin_state_up: req.admin_state_up.unwrap_or(true),
                allowed_address_pairs: resolve_pairs(
                    req.allowed_address_pairs.clone().unwrap_or_default(),
                    &mac_address,
                ),
                mac_address,
                fixed_ips: plan.fixed_ips,
                device_id: req.device_id.clone().unwrap_or_default(),
                device_owner: req.device_owner.clone().unwrap_or_default(),
                security_groups: group_ids.clone(),
                port_security_enabled: port_security,
                dns_name: req.dns_name.clone().unwrap_or_default(),
                dns_domain: service.dns_domain_of(&network).to_owned(),
                binding: Binding {
                    host_id: req.host_id.clone().unwrap_or_default(),
                    profile: req.profile.clone().unwrap_or_default(),
                    vnic_type: "normal".to_owned(),
                },
                status: "DOWN".to_owned(),
                trunk: None,
            };

            let mut txn = grant
                .unwrap_or_default()
                .and(group_guards)
                .when(Compare::mod_revision(keys::network(&network.meta.id), net_rev))
                .when(Compare::absent(keys::port(&id)))
                .when(Compare::absent(keys::mac(&network.meta.id, &port.mac_address)))
                .then(Op::put(keys::port(&id), encode(&port)?))
                .then(Op::put(keys::mac(&network.meta.id, &port.mac_address), id.clone()))
                .then(Op::put(keys::network_port(&network.meta.id, &id), ""));
            for (subnet, rev) in &subnets {
                if plan.claims.iter().any(|(s, _, _)| s == &subnet.meta.id) {
                    txn = txn.when(Compare::mod_revision(keys::subnet(&subnet.meta.id), *rev));
                }
            }
            for (subnet_id, ip, _) in &plan.claims {
                let claim = keys::ipam(subnet_id, *ip);
                txn = txn.when(Compare::absent(&claim)).then(Op::put(claim, id.clone()));
            }
            for (group_id, rev) in &groups {
                txn = txn
                    .when(Compare::mod_revision(keys::security_group(group_id), *rev))
                    .then(Op::put(keys::group_port(group_id, &id), ""));
            }
            if service.commit(txn).await? {
                return Ok(Attempt::Done(port.render(caller)));
            }
            drop(reservation);
            match service
                .explain_conflict(&network.meta.id, &plan.claims, req.mac_address.as_deref(), &id)
                .await?
            {
                Some(e) => Err(e),
                None => Ok(Attempt::Retry),
            }
        })
        .await
    }
}

/// `PortRequest::parse` refuses entries with neither subnet nor address.
fn unreachable_request<T>() -> Result<T> {
    Err(Error::invalid_attr(
        "fixed_ips",
        "each entry needs a subnet_id or an ip_address",
    ))
}

/// Neutron's policy keeps `port_security_enabled` and `allowed_address_pairs` to the
/// network's owner (and admins): a project on someone else's network may not lift the
/// anti-spoofing that protects it.
fn network_owner_attributes(
    caller: &Caller,
    network: &Network,
    req: &PortRequest,
    verb: &str,
) -> Result<()> {
    if caller.owns(&network.meta.project_id) {
        return Ok(());
    }
    for (given, attribute) in [
        (req.port_security_enabled.is_some(), "port_security_enabled"),
        (req.allowed_address_pairs.is_some(), "allowed_address_pairs"),
    ] {
        if given {
            return Err(Error::PolicyNotAuthorized(format!(
                "rule:{verb}_port:{attribute}"
            )));
        }
    }
    Ok(())
}

#[async_trait]
impl Kind for Port {
    /// Its own, or on a network the caller owns (Neutron's `admin_owner_or_network_owner`).
    async fn visible(service: &Service, caller: &Caller, port: &Port) -> Result<bool> {
        if port.visible_to(caller) {
            return Ok(true);
        }
        Ok(service
            .load::<Network>(&port.network_id)
            .await?
            .is_some_and(|(n, _)| caller.owns(&n.meta.project_id)))
    }

    async fn list(service: &Service, caller: &Caller) -> Result<Vec<Listed>> {
        let ports = service.load_all::<Port>(keys::PORTS).await?;
        let owned_networks: HashSet<String> = if caller.is_privileged() {
            HashSet::new()
        } else {
            service
                .load_all::<Network>(keys::NETWORKS)
                .await?
                .into_iter()
                .filter(|(n, _)| caller.owns(&n.meta.project_id))
                .map(|(n, _)| n.meta.id)
                .collect()
        };
        Ok(ports
            .into_iter()
            .filter(|(p, _)| p.visible_to(caller) || owned_networks.contains(&p.network_id))
            .map(|(p, _)| Box::new(View::owned(p, caller)) as Listed)
            .collect())
    }

    async fn create(service: &Service, caller: &Caller, body: Value) -> Result<Object> {
        service.create_port(caller, body, new_id()).await
    }

    async fn update(
        service: &Service,
        caller: &Caller,
        id: &str,
        body: Value,
        if_match: Option<u64>,
    ) -> Result<Object> {
        let req = PortRequest::parse(body, Method::Update, caller)?;
        service.retry(|| async {
            let (old, rev) = service.load_owned::<Port>(caller, id).await?;
            check_revision(&old.meta, if_match)?;
            let (network, _) = service.must_load::<Network>(&old.network_id).await?;
            network_owner_attributes(caller, &network, &req, "update")?;
            let mut port = old.clone();
            let mut txn = Txn::new().when(Compare::mod_revision(keys::port(id), rev));

            if let Some(v) = &req.name {
                port.meta.name = v.clone();
            }
            if let Some(v) = &req.description {
                port.meta.description = v.clone();
            }
            if let Some(v) = req.admin_state_up {
                port.admin_state_up = v;
            }
            if let Some(v) = &req.device_id {
                port.device_id = v.clone();
            }
            if let Some(v) = &req.device_owner {
                port.device_owner = v.clone();
            }
            if let Some(v) = &req.dns_name {
                port.dns_name = v.clone();
            }
            if let Some(v) = &req.profile {
                port.binding.profile = v.clone();
            }
            if let Some(host) = &req.host_id {
                if *host != port.binding.host_id {
                    port.binding.host_id = host.clone();
                    // A new node has to plug it before it is ACTIVE again, and whichever node
                    // NATs its floating IPs now has to report them again.
                    port.status = "DOWN".to_owned();
                    for fip_id in service.index(&keys::port_fips_prefix(id)).await? {
                        let Some((mut fip, fip_rev)) = service.load::<FloatingIp>(&fip_id).await?
                        else {
                            continue;
                        };
                        if fip.status != "DOWN" {
                            fip.status = "DOWN".to_owned();
                            fip.meta.touch(&now());
                            txn = txn
                                .when(Compare::mod_revision(keys::floating_ip(&fip_id), fip_rev))
                                .then(Op::put(keys::floating_ip(&fip_id), encode(&fip)?));
                        }
                    }
                }
            }
            if let Some(changes) = &req.extra_dhcp_opts {
                port.extra_dhcp_opts = apply_dhcp_options(&port.extra_dhcp_opts, changes);
            }
            let wanted_mac = req
                .mac_address
                .clone()
                .or_else(|| req.regenerate_mac.then(random_mac));
            if let Some(new_mac) = &wanted_mac {
                if *new_mac != port.mac_address {
                    if !port.binding.host_id.is_empty() {
                        return Err(Error::Conflict(format!(
                            "Port {id} is bound to {}; unbind it before changing its MAC address",
                            port.binding.host_id
                        )));
                    }
                    let new_claim = keys::mac(&network.meta.id, new_mac);
                    txn = txn
                        .when(Compare::absent(&new_claim))
                        .then(Op::delete(keys::mac(&network.meta.id, &port.mac_address)))
                        .then(Op::put(new_claim, id.to_owned()));
                    port.mac_address = new_mac.clone();
                }
            }
            port.port_security_enabled = req.port_security_enabled.unwrap_or(port.port_security_enabled);
            if let Some(ids) = &req.security_groups {
                port.security_groups = ids.clone();
            }
            if !port.port_security_enabled && !port.security_groups.is_empty() {
                return Err(Error::PortSecurityPortHasSecurityGroup);
            }
            if let Some(pairs) = &req.allowed_address_pairs {
                port.allowed_address_pairs = resolve_pairs(pairs.clone(), &port.mac_address);
            }
            if !port.port_security_enabled && !port.allowed_address_pairs.is_empty() {
                return Err(Error::AddressPairAndPortSecurityRequired);
            }

            // Security group references: new ones must exist (and stay until we commit).
            let added: Vec<String> = port
                .security_groups
                .iter()
                .filter(|g| !old.security_groups.contains(g))
                .cloned()
                .collect();
            let (added, group_guards) =
                service.groups_for_port(caller, &port.meta.project_id, &added).await?;
            txn = txn.and(group_guards);
            for (group_id, group_rev) in added {
                txn = txn
                    .when(Compare::mod_revision(keys::security_group(&group_id), group_rev))
                    .then(Op::put(keys::group_port(&group_id, id), ""));
            }
            for group_id in old.security_groups.iter().filter(|g| !port.security_groups.contains(g)) {
                txn = txn.then(Op::delete(keys::group_port(group_id, id)));
            }

            // Addresses: plan the new list, claim what is new, release what is gone.
            let mut reservation = service.reservation();
            let mut claims = Vec::new();
            let mac_changed = port.mac_address != old.mac_address;
            if req.fixed_ips.is_some() || mac_changed {
                let subnets = service.subnets_of(&network).await?;
                if mac_changed
                    && req.fixed_ips.is_none()
                    && subnets.iter().any(|(s, _)| s.is_auto_address())
                {
                    return Err(Error::Conflict(
                        "Changing the MAC address of a port with SLAAC addresses needs new fixed_ips too".to_owned(),
                    ));
                }
                if let Some(requested) = req.fixed_ips.as_deref() {
                    let plan = match service
                        .plan_ips(&network, &subnets, PortIdentity { mac: &port.mac_address, device_owner: &port.device_owner }, Some(requested), &old.fixed_ips, &mut reservation)
                        .await?
                    {
                        Ok(plan) => plan,
                        Err(_) => return Ok(Attempt::Retry),
                    };
                    for old_ip in old.fixed_ips.iter().filter(|f| !plan.fixed_ips.contains(f)) {
                        txn = txn.then(Op::delete(keys::ipam(&old_ip.subnet_id, old_ip.ip_address)));
                    }
                    for (subnet_id, ip, _) in &plan.claims {
                        let claim = keys::ipam(subnet_id, *ip);
                        txn = txn.when(Compare::absent(&claim)).then(Op::put(claim, id.to_owned()));
                    }
                    for (subnet, subnet_rev) in &subnets {
                        if plan.claims.iter().any(|(s, _, _)| s == &subnet.meta.id) {
                            txn = txn.when(Compare::mod_revision(keys::subnet(&subnet.meta.id), *subnet_rev));
                        }
                    }
                    port.fixed_ips = plan.fixed_ips;
                    claims = plan.claims;
                }
            }
            port.dns_domain = service.dns_domain_of(&network).to_owned();
            port.meta.touch(&now());
            txn = service.trunk_follows_port(&old, &port, txn).await?;
            txn = txn.then(Op::put(keys::port(id), encode(&port)?));
            if service.commit(txn).await? {
                for released in old.fixed_ips.iter().filter(|f| !port.fixed_ips.contains(f)) {
                    service.lower_low_water(&released.subnet_id, to_u128(released.ip_address));
                }
                return Ok(Attempt::Done(port.render(caller)));
            }
            drop(reservation);
            let explicit_mac = req.mac_address.as_deref().filter(|m| *m != old.mac_address);
            match service.explain_conflict(&network.meta.id, &claims, explicit_mac, id).await? {
                Some(e) => Err(e),
                None => Ok(Attempt::Retry),
            }
        })
        .await
    }

    async fn delete(
        service: &Service,
        caller: &Caller,
        id: &str,
        if_match: Option<u64>,
    ) -> Result<()> {
        service.remove_port(Some(caller), id, if_match).await
    }
}
