//! Floating IP operations: an address on an external network (held by a port the service
//! owns), associated with a fixed address behind a router with a gateway on that network.

use std::net::IpAddr;

use async_trait::async_trait;
use isthmus_model::addr::IpVersion;
use isthmus_model::floating_ip::{Association, FloatingIpRequest};
use isthmus_model::input::Method;
use isthmus_model::policy;
use isthmus_model::port::FixedIpRequest;
use isthmus_model::resource::{Resource, View};
use isthmus_model::router::OWNER_FLOATING_IP;
use isthmus_model::{Caller, Error, FloatingIp, Meta, Network, Port, Result, Router};
use isthmus_store::{Compare, Op, Txn};
use serde_json::{json, Value};

use super::{check_revision, encode, new_id, now, Attempt, Kind, Listed, Object, Service};
use crate::keys;

fn bad_fip(message: impl std::fmt::Display) -> Error {
    Error::BadRequest(format!("Bad floatingip request: {message}."))
}

impl Service {
    /// Ops removing a floating IP's association and its index keys (the caller writes the
    /// floating IP itself).
    pub(super) fn disassociate(fip: &mut FloatingIp) -> Vec<Op> {
        let Some(a) = fip.association.take() else {
            return Vec::new();
        };
        fip.status = "DOWN".to_owned();
        vec![
            Op::delete(keys::fip_association(
                &fip.floating_network_id,
                &a.port_id,
                a.fixed_ip_address,
            )),
            Op::delete(keys::port_fip(&a.port_id, &fip.meta.id)),
            Op::delete(keys::router_fip(&a.router_id, &fip.meta.id)),
        ]
    }

    /// Commits `txn` writing `fip` (with the association `planned`, if any); when a compare
    /// failed, says why if the association itself was refused, else asks for a retry.
    async fn commit_floating_ip(
        &self,
        txn: Txn,
        fip: &FloatingIp,
        planned: Option<&Association>,
    ) -> Result<Attempt<FloatingIp>> {
        let txn = txn.then(Op::put(keys::floating_ip(&fip.meta.id), encode(fip)?));
        if self.commit(txn).await? {
            return Ok(Attempt::Done(fip.clone()));
        }
        if let Some(a) = planned {
            if let Some(e) = self.explain_association(fip, a).await? {
                return Err(e);
            }
        }
        Ok(Attempt::Retry)
    }

    /// Resolves an association request: the caller's port, the fixed address (given or its
    /// only IPv4 one) and the router that reaches the external network from it.
    async fn plan_association(
        &self,
        caller: &Caller,
        fip: &FloatingIp,
        port_id: &str,
        fixed_ip: Option<IpAddr>,
        router: Option<&str>,
    ) -> Result<(Association, u64)> {
        // A router the caller cannot see is as good as absent.
        let router = match router {
            Some(id) => Some(self.load_visible::<Router>(caller, id).await?.0),
            None => None,
        };
        let (port, port_rev) = self.load_owned::<Port>(caller, port_id).await?;
        let v4: Vec<IpAddr> = port
            .fixed_ips
            .iter()
            .map(|f| f.ip_address)
            .filter(|ip| IpVersion::of(*ip) == IpVersion::V4)
            .collect();
        let ip = match fixed_ip {
            Some(ip) if port.fixed_ips.iter().any(|f| f.ip_address == ip) => ip,
            Some(ip) => return Err(bad_fip(format!("Port {port_id} does not have fixed ip {ip}"))),
            None => match v4.as_slice() {
                [ip] => *ip,
                [] => {
                    return Err(bad_fip(format!(
                        "No IPv4 addresses found on port {port_id}"
                    )))
                }
                _ => {
                    return Err(bad_fip(format!(
                        "Port {port_id} has multiple fixed IPv4 addresses.  Must provide a specific IPv4 address when assigning a floating IP"
                    )))
                }
            },
        };
        let router_id = self
            .router_for_floating_ip(&fip.floating_network_id, &port, ip, router.as_ref())
            .await?;
        Ok((
            Association {
                port_id: port_id.to_owned(),
                fixed_ip_address: ip,
                router_id,
            },
            port_rev,
        ))
    }

    /// Adds the association's claims to a transaction.
    fn associate(txn: Txn, fip: &FloatingIp, a: &Association, port_rev: u64) -> Txn {
        let claim = keys::fip_association(&fip.floating_network_id, &a.port_id, a.fixed_ip_address);
        txn.when(Compare::mod_revision(keys::port(&a.port_id), port_rev))
            .when(Compare::absent(&claim))
            .then(Op::put(claim, fip.meta.id.clone()))
            .then(Op::put(keys::port_fip(&a.port_id, &fip.meta.id), ""))
            .then(Op::put(keys::router_fip(&a.router_id, &fip.meta.id), ""))
    }

    /// After a failed commit: 409 when the fixed address already has a floating IP on this
    /// network, else `None` (retry).
    async fn explain_association(
        &self,
        fip: &FloatingIp,
        a: &Association,
    ) -> Result<Option<Error>> {
        let claim = keys::fip_association(&fip.floating_network_id, &a.port_id, a.fixed_ip_address);
        Ok(match self.store.get(&claim).await.map_err(super::store_error)? {
            Some(kv) if kv.value != fip.meta.id.as_bytes() => Some(Error::fault(
                "FloatingIPPortAlreadyAssociated",
                409,
                format!(
                    "Cannot associate floating IP {} ({}) with port {} using fixed IP {}, as that fixed IP already has a floating IP on external network {}.",
                    fip.floating_ip_address, fip.meta.id, a.port_id, a.fixed_ip_address, fip.floating_network_id
                ),
            )),
            _ => None,
        })
    }

    /// An agent's report that it NATs (`ACTIVE`) or cannot NAT (`ERROR`, `DOWN`) a floating
    /// IP. Only an associated floating IP can be `ACTIVE`.
    pub async fn set_floating_ip_status(
        &self,
        caller: &Caller,
        id: &str,
        body: Value,
    ) -> Result<Object> {
        policy::authorize_caller("update_floatingip:status", caller)?;
        let status = body
            .get("status")
            .and_then(Value::as_str)
            .filter(|s| ["ACTIVE", "DOWN", "ERROR"].contains(s))
            .ok_or_else(|| Error::invalid_attr("status", "must be one of ACTIVE, DOWN, ERROR"))?
            .to_owned();
        body.get("node")
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty())
            .ok_or_else(|| Error::invalid_attr("node", "the reporting node is required"))?;
        self.retry(|| async {
            let (mut fip, rev) = self.must_load::<FloatingIp>(id).await?;
            if status == "ACTIVE" && fip.association.is_none() {
                return Err(Error::Conflict(format!(
                    "Floating IP {id} is not associated with a port"
                )));
            }
            if fip.status == status {
                return Ok(Attempt::Done(fip.render(caller)));
            }
            fip.status = status.clone();
            fip.meta.touch(&now());
            Ok(if self.write_back(id, rev, &fip).await? {
                Attempt::Done(fip.render(caller))
            } else {
                Attempt::Retry
            })
        })
        .await
    }
}

impl Service {
    /// `GET /v2.0/floatingip_pools`: the subnets of the external networks `caller` may take
    /// floating IPs from.
    pub async fn floating_ip_pools(&self, caller: &Caller) -> Result<Vec<Value>> {
        let mut pools = Vec::new();
        for (network, _) in self.load_all::<Network>(keys::NETWORKS).await? {
            let external = network.external
                || self
                    .is_granted(
                        caller,
                        &network.meta.id,
                        isthmus_model::rbac::Action::AccessAsExternal,
                    )
                    .await?;
            if !external {
                continue;
            }
            for subnet_id in &network.subnets {
                if let Some((subnet, _)) = self.load::<isthmus_model::Subnet>(subnet_id).await? {
                    pools.push(json!({
                        "subnet_id": subnet.meta.id,
                        "subnet_name": subnet.meta.name,
                        "network_id": network.meta.id,
                        "project_id": subnet.meta.project_id,
                        "tenant_id": subnet.meta.project_id,
                        "cidr": subnet.cidr.to_string(),
                    }));
                }
            }
        }
        Ok(pools)
    }
}

#[async_trait]
impl Kind for FloatingIp {
    async fn complete(service: &Service, mut fip: FloatingIp) -> Result<FloatingIp> {
        if let Some(a) = &fip.association {
            fip.port_details = service
                .load::<Port>(&a.port_id)
                .await?
                .map(|(p, _)| isthmus_model::floating_ip::port_details(&p));
        }
        Ok(fip)
    }

    async fn list(service: &Service, caller: &Caller) -> Result<Vec<Listed>> {
        let mut out: Vec<Listed> = Vec::new();
        for (fip, _) in service.load_all::<FloatingIp>(keys::FLOATING_IPS).await? {
            if fip.visible_to(caller) {
                let fip = Self::complete(service, fip).await?;
                out.push(Box::new(View::owned(fip, caller)));
            }
        }
        Ok(out)
    }

    async fn create(service: &Service, caller: &Caller, body: Value) -> Result<Object> {
        let req = FloatingIpRequest::parse(body, Method::Create, caller)?;
        let network_id = req.floating_network_id.clone().unwrap_or_default();
        let (network, _) = service.load_visible::<Network>(caller, &network_id).await?;
        if !network.external
            && !service
                .is_granted(
                    caller,
                    &network_id,
                    isthmus_model::rbac::Action::AccessAsExternal,
                )
                .await?
        {
            return Err(bad_fip(format!(
                "Network {network_id} is not a valid external network"
            )));
        }
        let id = new_id();
        let project = req
            .project_id
            .clone()
            .unwrap_or_else(|| caller.project_id.clone());
        let requested = FixedIpRequest {
            subnet_id: req.subnet_id.clone(),
            ip_address: req.floating_ip_address,
        };
        let fixed_ips = if requested.subnet_id.is_none() && requested.ip_address.is_none() {
            Value::Null
        } else {
            json!([requested.to_wire()])
        };
        let port = service
            .create_service_port(&project, &network_id, fixed_ips, OWNER_FLOATING_IP, &id, "")
            .await?;
        let Some(address) = port
            .fixed_ips
            .iter()
            .map(|f| f.ip_address)
            .find(|ip| IpVersion::of(*ip) == IpVersion::V4)
        else {
            service.delete_service_ports([port.meta.id.clone()]).await;
            return Err(Error::IpAddressGenerationFailure(network_id));
        };
        let mut meta = Meta::new(id.clone(), project, &now());
        meta.description = req.description.clone().unwrap_or_default();
        meta.tags = req.tags.clone().unwrap_or_default();
        let base = FloatingIp {
            port_details: None,
            meta,
            floating_network_id: network_id,
            floating_ip_address: address,
            floating_port_id: port.meta.id.clone(),
            association: None,
            status: "DOWN".to_owned(),
        };
        let result = service
            .retry(|| async {
                let mut fip = base.clone();
                let mut txn = Txn::new().when(Compare::absent(keys::floating_ip(&id)));
                let mut planned = None;
                if let Some(Some(port_id)) = &req.port_id {
                    let (a, port_rev) = service
                        .plan_association(
                            caller,
                            &fip,
                            port_id,
                            req.fixed_ip_address,
                            req.router_id.as_deref(),
                        )
                        .await?;
                    txn = Service::associate(txn, &fip, &a, port_rev);
                    fip.association = Some(a.clone());
                    planned = Some(a);
                }
                service
                    .commit_floating_ip(txn, &fip, planned.as_ref())
                    .await
            })
            .await;
        match result {
            Ok(fip) => Ok(Self::complete(service, fip).await?.render(caller)),
            Err(e) => {
                service.delete_service_ports([port.meta.id]).await;
                Err(e)
            }
        }
    }

    async fn update(
        service: &Service,
        caller: &Caller,
        id: &str,
        body: Value,
        if_match: Option<u64>,
    ) -> Result<Object> {
        // An empty update disassociates, as Neutron reads a missing port_id as null.
        let empty = body
            .get("floatingip")
            .and_then(Value::as_object)
            .is_some_and(|m| m.is_empty());
        let mut req = FloatingIpRequest::parse(body, Method::Update, caller)?;
        if empty {
            req.port_id = Some(None);
        }
        let fip = service
            .retry(|| async {
                let (mut fip, rev) = service.load_owned::<FloatingIp>(caller, id).await?;
                check_revision(&fip.meta, if_match)?;
                let mut txn = Txn::new().when(Compare::mod_revision(keys::floating_ip(id), rev));
                if let Some(v) = &req.description {
                    fip.meta.description = v.clone();
                }
                let mut planned = None;
                // A router alone re-plans the current association through it.
                let wanted = match (&req.port_id, &req.router_id, &fip.association) {
                    (Some(wanted), _, _) => {
                        Some(wanted.as_ref().map(|p| (p.clone(), req.fixed_ip_address)))
                    }
                    (None, Some(_), Some(a)) => {
                        Some(Some((a.port_id.clone(), Some(a.fixed_ip_address))))
                    }
                    (None, Some(_), None) => {
                        return Err(bad_fip("router_id cannot be specified without a port_id"))
                    }
                    (None, None, _) => None,
                };
                if let Some(wanted) = wanted {
                    let plan = match wanted {
                        Some((port_id, fixed_ip)) => Some(
                            service
                                .plan_association(
                                    caller,
                                    &fip,
                                    &port_id,
                                    fixed_ip,
                                    req.router_id.as_deref(),
                                )
                                .await?,
                        ),
                        None => None,
                    };
                    let unchanged =
                        matches!((&plan, &fip.association), (Some((a, _)), Some(b)) if a == b);
                    // Only the router changes: the address claim is already this floating
                    // IP's (written with it, under the revision compared above).
                    let rerouted = match (&plan, &fip.association) {
                        (Some((a, _)), Some(b))
                            if !unchanged
                                && a.port_id == b.port_id
                                && a.fixed_ip_address == b.fixed_ip_address =>
                        {
                            Some((a.clone(), b.router_id.clone()))
                        }
                        _ => None,
                    };
                    if let Some((a, old_router)) = rerouted {
                        txn = txn
                            .then(Op::delete(keys::router_fip(&old_router, id)))
                            .then(Op::put(keys::router_fip(&a.router_id, id), ""));
                        fip.association = Some(a);
                    } else if !unchanged {
                        for op in Service::disassociate(&mut fip) {
                            txn = txn.then(op);
                        }
                        if let Some((a, port_rev)) = plan {
                            txn = Service::associate(txn, &fip, &a, port_rev);
                            fip.association = Some(a.clone());
                            planned = Some(a);
                        }
                    }
                }
                fip.meta.touch(&now());
                service
                    .commit_floating_ip(txn, &fip, planned.as_ref())
                    .await
            })
            .await?;
        Ok(Self::complete(service, fip).await?.render(caller))
    }

    async fn delete_txn(_service: &Service, _caller: &Caller, fip: &FloatingIp) -> Result<Txn> {
        let mut fip = fip.clone();
        Ok(Service::disassociate(&mut fip)
            .into_iter()
            .fold(Txn::new(), Txn::then))
    }

    async fn deleted(service: &Service, fip: &FloatingIp) {
        service
            .delete_service_ports([fip.floating_port_id.clone()])
            .await;
    }
}
