//! Router operations: gateways on external networks (with the node that hosts them),
//! interfaces by subnet or port, extra routes.
//!
//! A router's ports are created through the port path (so IPAM, MAC claims and indexes stay in
//! one place) and then recorded in the router with a compare on its revision; when that
//! compare fails the ports just created are deleted again, so a failed or raced request leaves
//! no port behind.

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use isthmus_model::addr::IpVersion;
use isthmus_model::input::Method;
use isthmus_model::node::Node;
use isthmus_model::port::FixedIp;
use isthmus_model::resource::Resource;
use isthmus_model::router::{
    Gateway, GatewayRequest, Interface, InterfaceRequest, RouterRequest, OWNER_GATEWAY,
    OWNER_INTERFACE, OWNER_SNAT,
};
use isthmus_model::{Caller, Error, Meta, Network, Port, Result, Router, Subnet};
use isthmus_store::{Compare, Op, Txn};
use serde_json::{json, Value};

use super::{check_revision, encode, new_id, now, Attempt, Kind, Object, Service};
use crate::keys;

/// The caller the service acts as for the ports it owns.
fn service_caller(project_id: &str) -> Caller {
    Caller::admin(project_id)
}

fn bad_router(message: impl std::fmt::Display) -> Error {
    Error::BadRequest(format!("Bad router request: {message}."))
}

/// What `add_router_interface` and `remove_router_interface` answer.
fn interface_info(router: &Router, interface: &Interface, subnet_ids: Vec<String>) -> Object {
    let map = json!({
        "id": router.meta.id,
        "tenant_id": router.meta.project_id,
        "project_id": router.meta.project_id,
        "port_id": interface.port_id,
        "network_id": interface.network_id,
        "subnet_id": subnet_ids.first(),
        "subnet_ids": subnet_ids,
    });
    match map {
        Value::Object(m) => m,
        _ => Object::new(),
    }
}

impl Service {
    /// Creates a port owned by the L3 service (router interface, gateway, SNAT, floating IP).
    pub(super) async fn create_service_port(
        &self,
        project_id: &str,
        network_id: &str,
        fixed_ips: Value,
        owner: &str,
        device_id: &str,
        host: &str,
    ) -> Result<Port> {
        let mut body = json!({
            "network_id": network_id,
            "project_id": project_id,
            "device_owner": owner,
            "device_id": device_id,
            "port_security_enabled": false,
            "binding:host_id": host,
        });
        if !fixed_ips.is_null() {
            body["fixed_ips"] = fixed_ips;
        }
        let created =
            <Port as Kind>::create(self, &service_caller(project_id), json!({ "port": body }))
                .await?;
        let id = created
            .get("id")
            .and_then(Value::as_str)
            .unwrap_or_default();
        Ok(self.must_load::<Port>(id).await?.0)
    }

    /// Deletes service ports, best effort (they may already be gone).
    pub(super) async fn delete_service_ports(&self, ids: impl IntoIterator<Item = String>) {
        for id in ids {
            if let Err(e) = self.delete_port_unchecked(&id).await {
                if !matches!(e, Error::NotFound { .. }) {
                    tracing::warn!("could not delete service port {id}: {e}");
                }
            }
        }
    }

    /// The node to host a gateway on `network`: among nodes mapping its physical network, the
    /// one with the fewest gateways (then by name); empty when no node maps it yet.
    async fn pick_gateway_host(&self, network: &Network) -> Result<String> {
        let Some(physnet) = &network.physical_network else {
            return Ok(String::new());
        };
        let nodes = self.load_all::<Node>(keys::NODES).await?;
        let mut load: BTreeMap<String, usize> = nodes
            .into_iter()
            .filter(|(n, _)| n.physnets.contains_key(physnet))
            .map(|(n, _)| (n.name, 0))
            .collect();
        // From the mirror's index by owner: decoding every port of the cloud would cost
        // far more than the few gateways read.
        self.informer().ready().await?;
        for port in self.informer().mirror().ports_owned_by(OWNER_GATEWAY) {
            if let Some(count) = load.get_mut(&port.binding.host_id) {
                *count += 1;
            }
        }
        Ok(load
            .into_iter()
            .min_by_key(|(name, count)| (*count, name.clone()))
            .map(|(name, _)| name)
            .unwrap_or_default())
    }

    /// Binds the gateway ports (with their SNAT ports) that wait for a node mapping their
    /// external network's physnet to `node`, which now does: a gateway set before any such
    /// node registered gets its SNAT namespace. Best effort: a failure is logged, and the
    /// node's next registration (every agent start) tries again.
    pub(super) async fn adopt_waiting_gateways(&self, node: &Node) {
        let adopted = async {
            for (router, _) in self.load_all::<Router>(keys::ROUTERS).await? {
                let Some(gateway) = &router.gateway else {
                    continue;
                };
                let Some((port, _)) = self.load::<Port>(&gateway.port_id).await? else {
                    continue;
                };
                let Some((network, _)) = self.load::<Network>(&gateway.network_id).await? else {
                    continue;
                };
                let maps = network
                    .physical_network
                    .as_ref()
                    .is_some_and(|p| node.physnets.contains_key(p));
                if !port.binding.host_id.is_empty() || !maps {
                    continue;
                }
                let caller = service_caller(&router.meta.project_id);
                let snat_ports = router
                    .interfaces
                    .iter()
                    .filter_map(|i| i.snat_port_id.clone());
                for id in std::iter::once(gateway.port_id.clone()).chain(snat_ports) {
                    let bind = json!({"port": {"binding:host_id": node.name}});
                    <Port as Kind>::update(self, &caller, &id, bind, None).await?;
                }
            }
            Ok::<(), Error>(())
        };
        if let Err(e) = adopted.await {
            tracing::warn!("binding waiting gateways to {}: {e}", node.name);
        }
    }

    /// Moves the gateways (with their SNAT ports) of nodes silent for `down_after` seconds to
    /// the live node mapping their external network's physnet that has the fewest gateways;
    /// their SNAT and central floating IPs follow (agents derive both from the gateway port's
    /// node). Several controllers may run it: each move is conditional on the port's
    /// revision, so a gateway moves once. Returns the routers moved.
    pub async fn reschedule_gateways(&self, down_after: Duration) -> Result<Vec<String>> {
        // Each node's silence, asked of the store once per call and only for the nodes that
        // host gateways or could take one over.
        let mut silences: BTreeMap<String, Option<Duration>> = BTreeMap::new();
        let mut alive = async |name: &str| -> Result<bool> {
            let silence = match silences.get(name) {
                Some(s) => *s,
                None => {
                    let s = self.silence_of(name).await?;
                    silences.insert(name.to_owned(), s);
                    s
                }
            };
            Ok(silence.is_some_and(|s| s <= down_after))
        };
        // From the mirror: a scan of the store every second would grow with the cloud.
        self.informer().ready().await?;
        let (nodes, mut gateways, hosted) = {
            let mirror = self.informer().mirror();
            let nodes: Vec<Node> = mirror.nodes().cloned().collect();
            let mut gateways: BTreeMap<String, usize> = BTreeMap::new();
            let mut hosted = Vec::new();
            for port in mirror.ports_owned_by(OWNER_GATEWAY) {
                *gateways.entry(port.binding.host_id.clone()).or_default() += 1;
                if port.binding.host_id.is_empty() {
                    continue;
                }
                let router = isthmus_model::view::object_key(
                    isthmus_model::view::ObjectKind::Router,
                    &port.device_id,
                );
                if let Some(isthmus_model::view::Object::Router(router)) = mirror.decoded(&router) {
                    hosted.push((router.clone(), port));
                }
            }
            (nodes, gateways, hosted)
        };
        let mut stranded = Vec::new();
        for (router, port) in hosted {
            if !alive(&port.binding.host_id).await? {
                stranded.push((router, port));
            }
        }
        let mut moved = Vec::new();
        for (router, port) in stranded {
            let Some(gateway) = &router.gateway else {
                continue;
            };
            let Some((network, _)) = self.load::<Network>(&gateway.network_id).await? else {
                continue;
            };
            let Some(physnet) = &network.physical_network else {
                continue;
            };
            let mut candidates = Vec::new();
            for node in nodes.iter().filter(|n| n.physnets.contains_key(physnet)) {
                if alive(&node.name).await? {
                    candidates.push(node);
                }
            }
            let Some(target) = candidates
                .into_iter()
                .min_by_key(|n| (gateways.get(&n.name).copied().unwrap_or(0), n.name.clone()))
                .map(|n| n.name.clone())
            else {
                // No live node maps the physnet: the gateway waits where it is.
                continue;
            };
            let caller = service_caller(&router.meta.project_id);
            let bind = json!({"port": {"binding:host_id": target}});
            match <Port as Kind>::update(
                self,
                &caller,
                &port.meta.id,
                bind.clone(),
                Some(port.meta.revision_number),
            )
            .await
            {
                Ok(_) => {}
                // Another controller moved it first.
                Err(Error::RevisionNumberConstraintFailed { .. } | Error::NotFound { .. }) => {
                    continue
                }
                Err(e) => return Err(e),
            }
            for snat in router
                .interfaces
                .iter()
                .filter_map(|i| i.snat_port_id.as_ref())
            {
                match <Port as Kind>::update(self, &caller, snat, bind.clone(), None).await {
                    Ok(_) | Err(Error::NotFound { .. }) => {}
                    Err(e) => return Err(e),
                }
            }
            *gateways.entry(target.clone()).or_default() += 1;
            tracing::warn!(
                "router {}'s gateway moved from silent node {} to {target}",
                router.meta.id,
                port.binding.host_id
            );
            moved.push(router.meta.id.clone());
        }
        Ok(moved)
    }

    /// An external network a router may use as gateway.
    async fn external_network(&self, caller: &Caller, id: &str) -> Result<Network> {
        let (network, _) = self.load_visible::<Network>(caller, id).await?;
        if !network.external
            && !self
                .is_granted(caller, id, isthmus_model::rbac::Action::AccessAsExternal)
                .await?
        {
            return Err(bad_router(format!(
                "Network {id} is not an external network"
            )));
        }
        Ok(network)
    }

    /// The SNAT port of one interface on the gateway node: an address on each of its subnets.
    async fn create_snat_port(
        &self,
        router: &Router,
        interface: &Interface,
        host: &str,
    ) -> Result<Port> {
        let fixed_ips: Vec<Value> = interface
            .fixed_ips
            .iter()
            .filter(|f| IpVersion::of(f.ip_address) == IpVersion::V4)
            .map(|f| json!({"subnet_id": f.subnet_id}))
            .collect();
        self.create_service_port(
            &router.meta.project_id,
            &interface.network_id,
            json!(fixed_ips),
            OWNER_SNAT,
            &router.meta.id,
            host,
        )
        .await
    }

    /// Sets, changes or clears a router's gateway.
    async fn set_gateway(
        &self,
        caller: &Caller,
        id: &str,
        wanted: Option<GatewayRequest>,
    ) -> Result<()> {
        let network = match &wanted {
            Some(g) => Some(self.external_network(caller, &g.network_id).await?),
            None => None,
        };
        self.retry(|| {
            let wanted = wanted.clone();
            let network = network.clone();
            async move {
                let (mut router, rev) = self.load_owned::<Router>(caller, id).await?;
                let old = router.gateway.clone();
                // Same network, same addresses: only SNAT mode changes.
                if let (Some(have), Some(want)) = (&mut router.gateway, &wanted) {
                    if have.network_id == want.network_id && want.external_fixed_ips.is_none() {
                        have.enable_snat = want.enable_snat.unwrap_or(have.enable_snat);
                        if Some(&*have) == old.as_ref() {
                            return Ok(Attempt::Done(()));
                        }
                        router.meta.touch(&now());
                        return Ok(if self.write_back(id, rev, &router).await? {
                            Attempt::Done(())
                        } else {
                            Attempt::Retry
                        });
                    }
                }
                if old.is_some() && !self.index(&keys::router_fips_prefix(id)).await?.is_empty() {
                    return Err(Error::fault(
                        "RouterExternalGatewayInUseByFloatingIp",
                        409,
                        format!(
                            "Gateway cannot be updated for router {id}, since a gateway to external network {} is required by one or more floating IPs.",
                            old.as_ref().map(|g| g.network_id.as_str()).unwrap_or_default()
                        ),
                    ));
                }
                let mut created = Vec::new();
                let mut doomed = Vec::new();
                if let Some(g) = &old {
                    doomed.push(g.port_id.clone());
                }
                for interface in &mut router.interfaces {
                    doomed.extend(interface.snat_port_id.take());
                }
                router.gateway = None;
                if let (Some(want), Some(network)) = (&wanted, &network) {
                    let host = self.pick_gateway_host(network).await?;
                    let fixed_ips = want.external_fixed_ips.as_ref().map(|ips| {
                        Value::Array(ips.iter().map(|f| f.to_wire()).collect())
                    });
                    let port = self
                        .create_service_port(
                            &router.meta.project_id,
                            &network.meta.id,
                            fixed_ips.unwrap_or(Value::Null),
                            OWNER_GATEWAY,
                            id,
                            &host,
                        )
                        .await?;
                    created.push(port.meta.id.clone());
                    router.gateway = Some(Gateway {
                        network_id: network.meta.id.clone(),
                        enable_snat: want.enable_snat.unwrap_or(true),
                        port_id: port.meta.id.clone(),
                        external_fixed_ips: port.fixed_ips.clone(),
                    });
                    let snapshot = router.clone();
                    for interface in &mut router.interfaces {
                        match self.create_snat_port(&snapshot, interface, &host).await {
                            Ok(p) => {
                                created.push(p.meta.id.clone());
                                interface.snat_port_id = Some(p.meta.id);
                            }
                            Err(e) => {
                                self.delete_service_ports(created).await;
                                return Err(e);
                            }
                        }
                    }
                }
                router.meta.touch(&now());
                if self.write_back(id, rev, &router).await? {
                    self.delete_service_ports(doomed).await;
                    Ok(Attempt::Done(()))
                } else {
                    self.delete_service_ports(created).await;
                    Ok(Attempt::Retry)
                }
            }
        })
        .await
    }

    /// `add_extraroutes` / `remove_extraroutes`: changes the routes in one atomic step.
    pub async fn change_extra_routes(
        &self,
        caller: &Caller,
        id: &str,
        body: Value,
        add: bool,
    ) -> Result<Object> {
        let verb = if add {
            "add_extraroutes"
        } else {
            "remove_extraroutes"
        };
        let router = self
            .modify::<Router>(caller, id, verb, |r| r.change_routes(body.clone(), add))
            .await?;
        Ok(router.render(caller))
    }

    /// Checks that `subnet` may join `router`: not already on it, no overlap, not external.
    fn check_new_subnet(router: &Router, subnet: &Subnet, network: &Network) -> Result<()> {
        if network.external {
            return Err(bad_router(format!(
                "Subnet {} is on external network {}; set it as the router's gateway instead",
                subnet.meta.id, network.meta.id
            )));
        }
        if router.interface_on(&subnet.meta.id).is_some() {
            return Err(bad_router(format!(
                "Router already has a port on subnet {}",
                subnet.meta.id
            )));
        }
        for interface in &router.interfaces {
            for (fixed, cidr) in interface.fixed_ips.iter().zip(&interface.cidrs) {
                if cidr.overlaps(&subnet.cidr) {
                    return Err(bad_router(format!(
                        "Cidr {} of subnet {} overlaps with cidr {cidr} of subnet {}",
                        subnet.cidr, subnet.meta.id, fixed.subnet_id
                    )));
                }
            }
        }
        Ok(())
    }

    /// `PUT /v2.0/routers/{id}/add_router_interface`.
    pub async fn add_router_interface(
        &self,
        caller: &Caller,
        id: &str,
        body: Value,
    ) -> Result<Object> {
        let request = InterfaceRequest::parse(body)?;
        // All or nothing: the interface port, its SNAT port and the router land in one
        // transaction, so no error (nor a client that goes away) leaves a port behind.
        let request = &request;
        self.atomically(|| self.add_interface_staged(caller, id, request))
            .await
    }

    async fn add_interface_staged(
        &self,
        caller: &Caller,
        id: &str,
        request: &InterfaceRequest,
    ) -> Result<Object> {
        self.retry(|| {
            let request = request.clone();
            async move {
                let (mut router, rev) = self.load_owned::<Router>(caller, id).await?;
                // The port: a new one on the subnet's gateway address, or the caller's.
                let (port, adopted) = match &request {
                    InterfaceRequest::Subnet(subnet_id) => {
                        let (subnet, _) = self.load_visible::<Subnet>(caller, subnet_id).await?;
                        let (network, _) = self.must_load::<Network>(&subnet.network_id).await?;
                        Self::check_new_subnet(&router, &subnet, &network)?;
                        let Some(gateway_ip) = subnet.gateway_ip else {
                            return Err(bad_router(
                                "Subnet for router interface must have a gateway IP",
                            ));
                        };
                        let port = self
                            .create_service_port(
                                &router.meta.project_id,
                                &network.meta.id,
                                json!([{"subnet_id": subnet_id, "ip_address": gateway_ip}]),
                                OWNER_INTERFACE,
                                id,
                                "",
                            )
                            .await
                            .map_err(|e| match e {
                                Error::IpAddressAlreadyAllocated { .. } => Error::fault(
                                    "IpAddressInUse",
                                    409,
                                    format!(
                                        "Unable to complete operation for network {}. The IP address {gateway_ip} is in use.",
                                        network.meta.id
                                    ),
                                ),
                                other => other,
                            })?;
                        (port, false)
                    }
                    InterfaceRequest::Port(port_id) => {
                        let (port, _) = self.load_owned::<Port>(caller, port_id).await?;
                        if !port.device_id.is_empty() || !port.device_owner.is_empty() {
                            return Err(Error::fault(
                                "PortInUse",
                                409,
                                format!(
                                    "Unable to complete operation on port {port_id} for network {}. Port already has an attached device {}.",
                                    port.network_id, port.device_id
                                ),
                            ));
                        }
                        if port.fixed_ips.is_empty() {
                            return Err(bad_router("Router port must have at least one fixed IP"));
                        }
                        let (network, _) = self.must_load::<Network>(&port.network_id).await?;
                        for fixed in &port.fixed_ips {
                            let (subnet, _) = self.must_load::<Subnet>(&fixed.subnet_id).await?;
                            Self::check_new_subnet(&router, &subnet, &network)?;
                        }
                        let admin = service_caller(&port.meta.project_id);
                        let body = json!({"port": {
                            "device_owner": OWNER_INTERFACE, "device_id": id,
                            "security_groups": [], "allowed_address_pairs": [],
                            "port_security_enabled": false, "binding:host_id": "",
                        }});
                        <Port as Kind>::update(self, &admin, port_id, body, None).await?;
                        (self.must_load::<Port>(port_id).await?.0, true)
                    }
                };
                let mut cidrs = Vec::new();
                for fixed in &port.fixed_ips {
                    cidrs.push(self.must_load::<Subnet>(&fixed.subnet_id).await?.0.cidr);
                }
                let mut interface = Interface {
                    port_id: port.meta.id.clone(),
                    network_id: port.network_id.clone(),
                    fixed_ips: port.fixed_ips.clone(),
                    cidrs,
                    snat_port_id: None,
                };
                let mut created = if adopted { vec![] } else { vec![port.meta.id.clone()] };
                if router.gateway.is_some() {
                    let host = self.gateway_host(&router).await?;
                    match self.create_snat_port(&router, &interface, &host).await {
                        Ok(p) => {
                            created.push(p.meta.id.clone());
                            interface.snat_port_id = Some(p.meta.id);
                        }
                        Err(e) => {
                            self.undo_interface(&port, adopted, created).await;
                            return Err(e);
                        }
                    }
                }
                router.interfaces.push(interface.clone());
                router.meta.touch(&now());
                if self.write_back(id, rev, &router).await? {
                    let subnets = interface.fixed_ips.iter().map(|f| f.subnet_id.clone()).collect();
                    return Ok(Attempt::Done(interface_info(&router, &interface, subnets)));
                }
                self.undo_interface(&port, adopted, created).await;
                Ok(Attempt::Retry)
            }
        })
        .await
    }

    /// Rolls back a half-added interface: deletes ports it created, gives an adopted port back.
    async fn undo_interface(&self, port: &Port, adopted: bool, created: Vec<String>) {
        self.delete_service_ports(created).await;
        if adopted {
            let body = json!({"port": {"device_owner": "", "device_id": ""}});
            let admin = service_caller(&port.meta.project_id);
            if let Err(e) = <Port as Kind>::update(self, &admin, &port.meta.id, body, None).await {
                tracing::warn!("could not release port {}: {e}", port.meta.id);
            }
        }
    }

    /// The node hosting a router's gateway port (empty when none).
    async fn gateway_host(&self, router: &Router) -> Result<String> {
        let Some(g) = &router.gateway else {
            return Ok(String::new());
        };
        Ok(self
            .load::<Port>(&g.port_id)
            .await?
            .map(|(p, _)| p.binding.host_id)
            .unwrap_or_default())
    }

    /// `PUT /v2.0/routers/{id}/remove_router_interface`.
    pub async fn remove_router_interface(
        &self,
        caller: &Caller,
        id: &str,
        body: Value,
    ) -> Result<Object> {
        let request = InterfaceRequest::parse(body)?;
        self.retry(|| {
            let request = request.clone();
            async move {
                let (mut router, rev) = self.load_owned::<Router>(caller, id).await?;
                let position = match &request {
                    InterfaceRequest::Subnet(s) => router
                        .interfaces
                        .iter()
                        .position(|i| i.fixed_ips.iter().any(|f| &f.subnet_id == s))
                        .ok_or_else(|| {
                            Error::fault(
                                "RouterInterfaceNotFoundForSubnet",
                                404,
                                format!("Router {id} has no interface on subnet {s}"),
                            )
                        })?,
                    InterfaceRequest::Port(p) => router
                        .interfaces
                        .iter()
                        .position(|i| &i.port_id == p)
                        .ok_or_else(|| {
                            Error::fault(
                                "RouterInterfaceNotFound",
                                404,
                                format!("Router {id} does not have an interface with id {p}"),
                            )
                        })?,
                };
                let interface = router.interfaces[position].clone();
                // Only the named subnet goes when the interface has others.
                let (gone, kept): (Vec<(FixedIp, _)>, Vec<(FixedIp, _)>) = interface
                    .fixed_ips
                    .iter()
                    .cloned()
                    .zip(interface.cidrs.iter().copied())
                    .partition(|(f, _)| match &request {
                        InterfaceRequest::Subnet(s) => &f.subnet_id == s,
                        InterfaceRequest::Port(_) => true,
                    });
                for fip_id in self.index(&keys::router_fips_prefix(id)).await? {
                    let Some((fip, _)) = self.load::<isthmus_model::FloatingIp>(&fip_id).await? else {
                        continue;
                    };
                    let used = fip.association.as_ref().is_some_and(|a| {
                        gone.iter().any(|(_, cidr)| cidr.contains(a.fixed_ip_address))
                    });
                    if used {
                        return Err(Error::fault(
                            "RouterInterfaceInUseByFloatingIP",
                            409,
                            format!(
                                "Router interface for subnet {} on router {id} cannot be deleted, as it is required by one or more floating IPs.",
                                gone[0].0.subnet_id
                            ),
                        ));
                    }
                }
                let subnet_ids: Vec<String> = gone.iter().map(|(f, _)| f.subnet_id.clone()).collect();
                let mut doomed = Vec::new();
                if kept.is_empty() {
                    router.interfaces.remove(position);
                    doomed.push(interface.port_id.clone());
                    doomed.extend(interface.snat_port_id.clone());
                } else {
                    let remaining: Vec<Value> = kept
                        .iter()
                        .map(|(f, _)| json!({"subnet_id": f.subnet_id, "ip_address": f.ip_address}))
                        .collect();
                    let admin = service_caller(&router.meta.project_id);
                    <Port as Kind>::update(self, &admin, &interface.port_id, json!({"port": {"fixed_ips": remaining}}), None)
                        .await?;
                    let entry = &mut router.interfaces[position];
                    entry.fixed_ips = kept.iter().map(|(f, _)| f.clone()).collect();
                    entry.cidrs = kept.iter().map(|(_, c)| *c).collect();
                }
                router.meta.touch(&now());
                if !self.write_back(id, rev, &router).await? {
                    return Ok(Attempt::Retry);
                }
                self.delete_service_ports(doomed).await;
                Ok(Attempt::Done(interface_info(&router, &interface, subnet_ids)))
            }
        })
        .await
    }

    /// The router that NATs a floating IP of `external_network_id` for `ip` of `port`: one
    /// with a gateway on that network and an interface on the address's subnet (`wanted`, the
    /// one the client named, must be such a router).
    pub(super) async fn router_for_floating_ip(
        &self,
        external_network_id: &str,
        port: &Port,
        ip: std::net::IpAddr,
        wanted: Option<&Router>,
    ) -> Result<String> {
        let subnet_id = port
            .fixed_ips
            .iter()
            .find(|f| f.ip_address == ip)
            .map(|f| f.subnet_id.clone())
            .unwrap_or_default();
        let reaches = |r: &Router| {
            r.gateway
                .as_ref()
                .is_some_and(|g| g.network_id == external_network_id)
                && r.interface_on(&subnet_id).is_some()
        };
        if let Some(router) = wanted {
            return if reaches(router) {
                Ok(router.meta.id.clone())
            } else {
                Err(Error::BadRequest(format!(
                    "Bad floatingip request: Router {} has no interface on subnet {subnet_id} and a gateway on external network {external_network_id}.",
                    router.meta.id
                )))
            };
        }
        let routers = self.load_all::<Router>(keys::ROUTERS).await?;
        routers
            .into_iter()
            .map(|(r, _)| r)
            .find(|r| reaches(r))
            .map(|r| r.meta.id)
            .ok_or_else(|| {
                Error::fault(
                    "ExternalGatewayForFloatingIPNotFound",
                    404,
                    format!(
                        "External network {external_network_id} is not reachable from subnet {subnet_id}.  Therefore, cannot associate Port {} with a Floating IP.",
                        port.meta.id
                    ),
                )
            })
    }
}

#[async_trait]
impl Kind for Router {
    async fn create(service: &Service, caller: &Caller, body: Value) -> Result<Object> {
        let req = RouterRequest::parse(body, Method::Create, caller)?;
        if let Some(Some(g)) = &req.gateway {
            service.external_network(caller, &g.network_id).await?;
        }
        let id = new_id();
        let mut meta = Meta::new(
            id.clone(),
            req.project_id
                .clone()
                .unwrap_or_else(|| caller.project_id.clone()),
            &now(),
        );
        meta.name = req.name.clone().unwrap_or_default();
        meta.description = req.description.clone().unwrap_or_default();
        meta.tags = req.tags.clone().unwrap_or_default();
        let router = Router {
            meta,
            admin_state_up: req.admin_state_up.unwrap_or(true),
            gateway: None,
            routes: Vec::new(),
            interfaces: Vec::new(),
            availability_zone_hints: req.availability_zone_hints.clone().unwrap_or_default(),
            ha: req.ha.unwrap_or(false),
        };
        let txn = Txn::new()
            .when(Compare::absent(keys::router(&id)))
            .then(Op::put(keys::router(&id), encode(&router)?));
        if !service.commit(txn).await? {
            return Err(Error::Internal(format!("router id {id} collided")));
        }
        if let Some(Some(gateway)) = req.gateway {
            if let Err(e) = service.set_gateway(caller, &id, Some(gateway)).await {
                let _ = <Router as Kind>::delete(service, caller, &id, None).await;
                return Err(e);
            }
        }
        Ok(service
            .load_owned::<Router>(caller, &id)
            .await?
            .0
            .render(caller))
    }

    async fn update(
        service: &Service,
        caller: &Caller,
        id: &str,
        body: Value,
        if_match: Option<u64>,
    ) -> Result<Object> {
        let req = RouterRequest::parse(body, Method::Update, caller)?;
        let (router, _) = service.load_owned::<Router>(caller, id).await?;
        check_revision(&router.meta, if_match)?;
        if let Some(gateway) = req.gateway.clone() {
            service.set_gateway(caller, id, gateway).await?;
        }
        service
            .retry(|| async {
                let (mut router, rev) = service.load_owned::<Router>(caller, id).await?;
                router.apply(&req, &now())?;
                Ok(if service.write_back(id, rev, &router).await? {
                    Attempt::Done(router.render(caller))
                } else {
                    Attempt::Retry
                })
            })
            .await
    }

    async fn action(
        service: &Service,
        caller: &Caller,
        id: &str,
        action: &str,
        body: Value,
    ) -> Result<Value> {
        Ok(match action {
            "add_router_interface" => {
                Value::Object(service.add_router_interface(caller, id, body).await?)
            }
            "remove_router_interface" => {
                Value::Object(service.remove_router_interface(caller, id, body).await?)
            }
            "add_extraroutes" | "remove_extraroutes" => {
                let add = action == "add_extraroutes";
                json!({"router": service.change_extra_routes(caller, id, body, add).await?})
            }
            _ => return Err(Error::PathNotFound),
        })
    }

    async fn delete_txn(_service: &Service, _caller: &Caller, router: &Router) -> Result<Txn> {
        if !router.interfaces.is_empty() {
            return Err(Error::fault(
                "RouterInUse",
                409,
                format!("Router {} still has ports", router.meta.id),
            ));
        }
        Ok(
            Txn::new().when(Compare::prefix_empty(keys::router_fips_prefix(
                &router.meta.id,
            ))),
        )
    }

    async fn deleted(service: &Service, router: &Router) {
        service
            .delete_service_ports(router.gateway.as_ref().map(|g| g.port_id.clone()))
            .await;
    }
}

impl Service {
    /// Deletes the L3 service ports (interfaces, gateways, SNAT ports) whose router is gone
    /// and that are older than `grace_seconds` (every router change is one transaction, so
    /// such a port is a leftover of an older controller or of a crash mid-way, never a router
    /// being built). Returns how many it deleted.
    pub async fn sweep_router_ports(&self, now_unix: u64, grace_seconds: u64) -> Result<usize> {
        let cutoff = isthmus_model::time::rfc3339(now_unix.saturating_sub(grace_seconds));
        let mut swept = 0;
        // From the mirror's index by owner (not a decode of every port in the store).
        self.informer().ready().await?;
        let l3: Vec<Port> = {
            let mirror = self.informer().mirror();
            [OWNER_INTERFACE, OWNER_GATEWAY, OWNER_SNAT]
                .iter()
                .flat_map(|owner| mirror.ports_owned_by(owner))
                .collect()
        };
        for port in l3 {
            // RFC 3339 UTC times of one format compare as text.
            if port.meta.created_at > cutoff {
                continue;
            }
            if self.load::<Router>(&port.device_id).await?.is_some() {
                continue;
            }
            match self.remove_port(None, &port.meta.id, None).await {
                Ok(()) => swept += 1,
                // Gone already (the mirror may lag behind its deletion).
                Err(Error::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(swept)
    }
}
