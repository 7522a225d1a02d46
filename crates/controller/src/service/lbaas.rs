//! Octavia's resources: load balancers, listeners, pools, members and health monitors. A
//! child is written in one transaction with the parents that list it (a load balancer lists
//! its listeners and pools, a pool its members), so a concurrent change to a parent retries
//! and no list ever names a missing child. The VIP is an ordinary Neutron port.

use std::collections::HashMap;
use std::net::IpAddr;

use async_trait::async_trait;
use isthmus_model::addr::IpVersion;
use isthmus_model::input::{Input, Method};
use isthmus_model::lbaas::load_balancer::{CreateRequest, VipRequest};
use isthmus_model::lbaas::{
    health_monitor, listener, load_balancer, member, online, operating, pool, unsupported,
    validation, HealthMonitor, Listener, LoadBalancer, Member, Pool, ACTIVE, VIP_OWNER,
};
use isthmus_model::meta::owner_project;
use isthmus_model::resource::{Resource, View};
use isthmus_model::view::{Mirror, ObjectKind};
use isthmus_model::{Caller, Error, Meta, Network, Port, Result, Subnet};
use isthmus_store::{Compare, Op, Txn};
use serde_json::{json, Value};

use super::{encode, key_of, new_id, now, prefix_of, Attempt, Kind, Listed, Object, Service};

/// Octavia's 400 for a related object that does not exist (or is not the caller's).
fn invalid_subresource(kind: &str, id: &str) -> Error {
    Error::fault("InvalidSubresource", 400, format!("{kind} {id} not found."))
}

/// `provisioning_status` while a change is not yet in place on every node that needs it.
const PENDING_CREATE: &str = "PENDING_CREATE";
/// [`PENDING_CREATE`] of a change to an existing object.
const PENDING_UPDATE: &str = "PENDING_UPDATE";

/// What `provisioning_status` is computed from: the revision each live node has applied.
pub(crate) struct Applied(HashMap<String, u64>);

impl Applied {
    /// ACTIVE once every live node whose view holds the object's load balancer has applied
    /// the object and everything under it; PENDING_CREATE/PENDING_UPDATE until then. A node
    /// that stops heartbeating stops counting, so nothing stays pending for a dead node.
    fn status(&self, mirror: &Mirror, kind: ObjectKind, id: &str, revision_number: u64) -> String {
        let pending = if revision_number <= 1 {
            PENDING_CREATE
        } else {
            PENDING_UPDATE
        };
        let key = isthmus_model::view::object_key(kind, id);
        let (Some(revision), Some(lb)) =
            (mirror.subtree_revision(&key), mirror.load_balancer_of(&key))
        else {
            return pending.to_owned();
        };
        let behind = mirror
            .load_balancer_nodes(&lb)
            .iter()
            .any(|n| self.0.get(n).is_some_and(|applied| *applied < revision));
        if behind { pending } else { ACTIVE }.to_owned()
    }
}

/// An Octavia object whose `provisioning_status` the nodes decide.
trait Provisioned: Resource {
    /// Its kind in the mirror.
    const KIND: ObjectKind;
    /// Its `provisioning_status`, to set.
    fn provisioning(&mut self) -> &mut String;
}

macro_rules! provisioned {
    ($ty:ty, $kind:expr) => {
        impl Provisioned for $ty {
            const KIND: ObjectKind = $kind;
            fn provisioning(&mut self) -> &mut String {
                &mut self.provisioning_status
            }
        }
    };
}

provisioned!(LoadBalancer, ObjectKind::LoadBalancer);
provisioned!(Listener, ObjectKind::Listener);
provisioned!(Pool, ObjectKind::Pool);
provisioned!(Member, ObjectKind::Member);
provisioned!(HealthMonitor, ObjectKind::HealthMonitor);

impl Service {
    /// What the nodes have applied, with the mirror caught up with this controller's writes.
    pub(crate) async fn applied(&self) -> Result<Applied> {
        let informer = self.informer().clone();
        informer.ready().await?;
        informer
            .catch_up(self.last_write(), std::time::Duration::from_secs(1))
            .await?;
        Ok(Applied(self.applied_by_live_nodes().await?))
    }

    /// `objs` with their provisioning status as the nodes have it.
    async fn provisioned<T: Provisioned>(&self, mut objs: Vec<T>) -> Result<Vec<T>> {
        let applied = self.applied().await?;
        for obj in &mut objs {
            self.stamp(&applied, obj);
        }
        Ok(objs)
    }

    /// Sets `obj`'s provisioning status from `applied`.
    fn stamp<T: Provisioned>(&self, applied: &Applied, obj: &mut T) {
        let (id, revision_number) = (obj.meta().id.clone(), obj.meta().revision_number);
        let status = applied.status(&self.informer().mirror(), T::KIND, &id, revision_number);
        *obj.provisioning() = status;
    }

    /// One object as `caller` sees it, with its provisioning status.
    async fn rendered<T: Provisioned>(&self, obj: T, caller: &Caller) -> Result<Object> {
        let obj = self.provisioned(vec![obj]).await?.remove(0);
        Ok(obj.render(caller))
    }
}

impl Service {
    /// Commits `txn`: done with `value`, or retry when another writer got there first.
    async fn attempt<T>(&self, txn: Txn, value: T) -> Result<Attempt<T>> {
        Ok(if self.commit(txn).await? {
            Attempt::Done(value)
        } else {
            Attempt::Retry
        })
    }
}

/// Everything of kind `T` `caller` may see, with provisioning statuses.
async fn list_provisioned<T: Provisioned + Kind>(
    service: &Service,
    caller: &Caller,
) -> Result<Vec<Listed>> {
    let mut visible = Vec::new();
    for (obj, _) in service.load_all::<T>(&prefix_of::<T>()).await? {
        if T::visible(service, caller, &obj).await? {
            visible.push(obj);
        }
    }
    Ok(service
        .provisioned(visible)
        .await?
        .into_iter()
        .map(|obj| Box::new(View::owned(obj, caller)) as Listed)
        .collect())
}

/// Reads a create body's standard attributes; the owner is the caller's project (or, for
/// admins, the one the body names).
fn read_meta(caller: &Caller, input: &mut Input) -> Result<Meta> {
    let project_id = owner_project(input, caller)?;
    let mut meta = Meta::new(new_id(), project_id, &now());
    meta.read_common(input)?;
    Ok(meta)
}

/// `put` of `obj` over revision `rev`, as a change (its revision number and `updated_at`
/// move: a parent whose children change is PENDING_UPDATE until the nodes have them).
fn rewrite<T: Resource + serde::Serialize>(txn: Txn, obj: &mut T, rev: u64) -> Result<Txn> {
    obj.meta_mut().touch(&now());
    let key = key_of::<T>(&obj.meta().id);
    Ok(txn
        .when(Compare::mod_revision(key.clone(), rev))
        .then(Op::put(key, encode(obj)?)))
}

/// `put` of a new `obj`.
fn insert<T: Resource + serde::Serialize>(txn: Txn, obj: &T) -> Result<Txn> {
    let key = key_of::<T>(&obj.meta().id);
    Ok(txn
        .when(Compare::absent(&key))
        .then(Op::put(key, encode(obj)?)))
}

impl Service {
    /// The VIP of a new load balancer: the client's port, or a new port on the requested
    /// network or subnet. Returns (port, network, subnet, address, whether made here).
    async fn vip_port(
        &self,
        caller: &Caller,
        request: &CreateRequest,
    ) -> Result<(String, String, String, IpAddr, bool)> {
        let lb_id = &request.meta.id;
        let (network_id, subnet_id, address) = match &request.vip {
            VipRequest::Port { port_id, address } => {
                let (port, _) = self
                    .load_visible::<Port>(caller, port_id)
                    .await
                    .map_err(|_| invalid_subresource("Port", port_id))?;
                let mut fixed: Vec<_> = port
                    .fixed_ips
                    .iter()
                    .filter(|f| address.is_none_or(|a| a == f.ip_address))
                    .collect();
                fixed.sort_by_key(|f| !f.ip_address.is_ipv4());
                let Some(f) = fixed.first() else {
                    return Err(validation(format!(
                        "Port {port_id} has no address to use as the VIP"
                    )));
                };
                return Ok((
                    port.meta.id.clone(),
                    port.network_id.clone(),
                    f.subnet_id.clone(),
                    f.ip_address,
                    false,
                ));
            }
            VipRequest::New {
                network_id,
                subnet_id,
                address,
            } => (network_id, subnet_id, address),
        };
        let subnet = match subnet_id {
            Some(id) => Some(
                self.load_visible::<Subnet>(caller, id)
                    .await
                    .map_err(|_| invalid_subresource("Subnet", id))?
                    .0,
            ),
            None => None,
        };
        let network_id = match (network_id, &subnet) {
            (Some(n), Some(s)) if &s.network_id != n => {
                return Err(validation(format!(
                    "Subnet {} is not on network {n}",
                    s.meta.id
                )))
            }
            (Some(n), _) => n.clone(),
            (None, Some(s)) => s.network_id.clone(),
            (None, None) => {
                return Err(validation(
                    "VIP must contain one of: vip_port_id, vip_network_id, vip_subnet_id.",
                ))
            }
        };
        let subnet = match subnet {
            Some(s) => s,
            None => {
                let (network, _) = self
                    .load_visible::<Network>(caller, &network_id)
                    .await
                    .map_err(|_| invalid_subresource("Network", &network_id))?;
                let mut subnets: Vec<Subnet> = self
                    .subnets_of(&network)
                    .await?
                    .into_iter()
                    .map(|(s, _)| s)
                    .filter(|s| address.is_none_or(|a| s.cidr.contains(a)))
                    .collect();
                subnets.sort_by_key(|s| s.cidr.version() != IpVersion::V4);
                subnets.into_iter().next().ok_or_else(|| {
                    validation(format!("Network {network_id} has no subnet for the VIP"))
                })?
            }
        };
        let mut fixed = json!({ "subnet_id": subnet.meta.id });
        if let Some(a) = address {
            fixed["ip_address"] = json!(a.to_string());
        }
        let body = json!({"port": {
            "network_id": network_id,
            "fixed_ips": [fixed],
            "device_owner": VIP_OWNER,
            "device_id": format!("lb-{lb_id}"),
            "name": format!("octavia-lb-{lb_id}"),
            "project_id": request.meta.project_id,
        }});
        let port = self.create_port(caller, body, new_id()).await?;
        let port_id = port["id"].as_str().unwrap_or_default().to_owned();
        let vip = port["fixed_ips"]
            .as_array()
            .and_then(|ips| ips.first())
            .and_then(|f| f["ip_address"].as_str())
            .and_then(|a| a.parse::<IpAddr>().ok());
        match vip {
            Some(vip) => Ok((port_id, network_id, subnet.meta.id, vip, true)),
            None => {
                self.drop_vip_port(&port_id).await;
                Err(Error::Internal(format!(
                    "VIP port {port_id} has no address"
                )))
            }
        }
    }

    /// Deletes a VIP port made for a load balancer; a failure is logged (the port is then an
    /// ordinary port its owner can delete).
    async fn drop_vip_port(&self, port_id: &str) {
        if let Err(e) = self.delete_port_unchecked(port_id).await {
            if !matches!(e, Error::NotFound { .. }) {
                tracing::warn!("VIP port {port_id} not deleted: {e}");
            }
        }
    }

    /// Reads the load balancer a child names, as the caller may see it (400 otherwise).
    async fn parent_lb(&self, caller: &Caller, id: &str) -> Result<(LoadBalancer, u64)> {
        self.load_visible::<LoadBalancer>(caller, id)
            .await
            .map_err(|_| invalid_subresource("Load Balancer", id))
    }

    /// Deletes a load balancer and everything under it in one transaction, then its VIP port
    /// (Octavia's `?cascade=true`).
    pub async fn delete_load_balancer_cascade(&self, caller: &Caller, id: &str) -> Result<()> {
        let lb = self
            .retry(|| async {
                let (lb, rev) = self
                    .load_for_change::<LoadBalancer>(
                        caller,
                        id,
                        None,
                        &super::kind::delete_action::<LoadBalancer>(),
                    )
                    .await?;
                let mut txn = Txn::new()
                    .when(Compare::mod_revision(key_of::<LoadBalancer>(id), rev))
                    .then(Op::delete(key_of::<LoadBalancer>(id)));
                for l in &lb.listeners {
                    txn = txn.then(Op::delete(key_of::<Listener>(l)));
                }
                for p in &lb.pools {
                    let Some((pool, pool_rev)) = self.load::<Pool>(p).await? else {
                        continue;
                    };
                    txn = txn
                        .when(Compare::mod_revision(key_of::<Pool>(p), pool_rev))
                        .then(Op::delete(key_of::<Pool>(p)));
                    for m in &pool.members {
                        txn = txn.then(Op::delete(key_of::<Member>(m)));
                    }
                    if let Some(h) = &pool.healthmonitor_id {
                        txn = txn.then(Op::delete(key_of::<HealthMonitor>(h)));
                    }
                }
                Ok(if self.commit(txn).await? {
                    Attempt::Done(lb)
                } else {
                    Attempt::Retry
                })
            })
            .await?;
        if lb.vip_port_owned {
            self.drop_vip_port(&lb.vip_port_id).await;
        }
        Ok(())
    }

    /// An agent reports what its health probes found of a member it hosts:
    /// `{"operating_status": "ONLINE" | "ERROR", "node": "<name>"}` (Isthmus's native API,
    /// agents only); only the node hosting the member's port may report.
    pub async fn set_member_status(
        &self,
        caller: &Caller,
        id: &str,
        body: Value,
    ) -> Result<Object> {
        isthmus_model::policy::authorize_caller("update_member:status", caller)?;
        let status = body
            .get("operating_status")
            .and_then(Value::as_str)
            .filter(|s| [operating::ONLINE, operating::ERROR].contains(s))
            .ok_or_else(|| Error::invalid_attr("operating_status", "must be ONLINE or ERROR"))?
            .to_owned();
        let node = body
            .get("node")
            .and_then(Value::as_str)
            .ok_or_else(|| Error::invalid_attr("node", "the reporting node is required"))?
            .to_owned();
        let informer = self.informer().clone();
        informer.ready().await?;
        self.retry(|| async {
            let (mut member, rev) = self.must_load::<Member>(id).await?;
            // Only the node hosting the member's port probes it.
            if !informer.mirror().hosts_address(&node, member.address) {
                return Err(Error::Conflict(format!(
                    "Member {id} ({}) has no port on node '{node}'",
                    member.address
                )));
            }
            // A report racing the monitor's deletion must not undo its NO_MONITOR.
            let monitored = match self.load::<Pool>(&member.pool_id).await? {
                Some((pool, _)) => pool.healthmonitor_id.is_some(),
                None => false,
            };
            if !monitored || member.operating_status == status {
                return Ok(Attempt::Done(member.render(caller)));
            }
            member.operating_status = status.clone();
            Ok(if self.write_back(id, rev, &member).await? {
                Attempt::Done(member.render(caller))
            } else {
                Attempt::Retry
            })
        })
        .await
    }

    /// The pool a member belongs to, if the member exists.
    pub async fn member_pool(&self, id: &str) -> Result<Option<String>> {
        Ok(self.load::<Member>(id).await?.map(|(m, _)| m.pool_id))
    }

    /// The status tree of a load balancer (`GET /loadbalancers/{id}/status`).
    pub async fn load_balancer_status(&self, caller: &Caller, id: &str) -> Result<Value> {
        let (mut lb, _) = self.load_visible::<LoadBalancer>(caller, id).await?;
        let applied = self.applied().await?;
        self.stamp(&applied, &mut lb);
        let mut listeners = Vec::new();
        for l in &lb.listeners {
            let Some((mut listener, _)) = self.load::<Listener>(l).await? else {
                continue;
            };
            self.stamp(&applied, &mut listener);
            let shown = listener.render(caller);
            let mut pools = Vec::new();
            if let Some(p) = &listener.default_pool_id {
                if let Some((mut pool, _)) = self.load::<Pool>(p).await? {
                    self.stamp(&applied, &mut pool);
                    pools.push(self.pool_status(&pool, &applied, caller).await?);
                }
            }
            let pool_states: Vec<&str> = pools
                .iter()
                .filter_map(|p| p["operating_status"].as_str())
                .collect();
            let own = shown["operating_status"].as_str().unwrap_or_default();
            listeners.push(json!({
                "id": listener.meta.id, "name": listener.meta.name,
                "provisioning_status": shown["provisioning_status"],
                "operating_status": worst(own, &pool_states),
                "pools": pools,
            }));
        }
        let listener_states: Vec<&str> = listeners
            .iter()
            .filter_map(|l| l["operating_status"].as_str())
            .collect();
        Ok(json!({"statuses": {"loadbalancer": {
            "id": lb.meta.id, "name": lb.meta.name,
            "provisioning_status": lb.provisioning_status,
            "operating_status": worst(online(lb.admin_state_up), &listener_states),
            "listeners": listeners,
        }}}))
    }

    async fn pool_status(&self, pool: &Pool, applied: &Applied, caller: &Caller) -> Result<Value> {
        // (The members' statuses decide the pool's, as Octavia's health manager does.)
        let shown = pool.render(caller);
        let mut members = Vec::new();
        for m in &pool.members {
            if let Some((mut member, _)) = self.load::<Member>(m).await? {
                self.stamp(applied, &mut member);
                members.push(json!({
                    "id": member.meta.id, "name": member.meta.name,
                    "address": member.address.to_string(),
                    "protocol_port": member.protocol_port,
                    "provisioning_status": member.provisioning_status,
                    "operating_status": member.shown_status(),
                }));
            }
        }
        let mut status = json!({
            "id": pool.meta.id, "name": pool.meta.name,
            "provisioning_status": shown["provisioning_status"],
            "operating_status": pool_operating(pool, &members),
            "members": members,
        });
        if let Some(h) = &pool.healthmonitor_id {
            if let Some((mut monitor, _)) = self.load::<HealthMonitor>(h).await? {
                self.stamp(applied, &mut monitor);
                let shown = monitor.render(caller);
                status["health_monitor"] = json!({
                    "id": monitor.meta.id, "name": monitor.meta.name,
                    "type": shown["type"],
                    "provisioning_status": shown["provisioning_status"],
                    "operating_status": shown["operating_status"],
                });
            }
        }
        Ok(status)
    }
}

/// A pool's `operating_status` from its members': OFFLINE when disabled, ERROR when every
/// monitored member is down, DEGRADED when some are, else ONLINE.
fn pool_operating(pool: &Pool, members: &[Value]) -> &'static str {
    if !pool.admin_state_up {
        return operating::OFFLINE;
    }
    let down = members
        .iter()
        .filter(|m| m["operating_status"] == operating::ERROR)
        .count();
    match down {
        0 => operating::ONLINE,
        n if n == members.len() => operating::ERROR,
        _ => operating::DEGRADED,
    }
}

/// The status of something holding pools: its worst pool's, an ERROR pool making it DEGRADED.
fn worst(own: &str, pools: &[&str]) -> String {
    if own == operating::OFFLINE {
        return own.to_owned();
    }
    if pools
        .iter()
        .any(|p| *p == operating::ERROR || *p == operating::DEGRADED)
    {
        operating::DEGRADED.to_owned()
    } else {
        own.to_owned()
    }
}

#[async_trait]
impl Kind for LoadBalancer {
    async fn list(service: &Service, caller: &Caller) -> Result<Vec<Listed>> {
        list_provisioned::<Self>(service, caller).await
    }

    async fn complete(service: &Service, obj: Self) -> Result<Self> {
        Ok(service.provisioned(vec![obj]).await?.remove(0))
    }

    async fn create(service: &Service, caller: &Caller, body: Value) -> Result<Object> {
        let mut input = load_balancer::input(body, Method::Create)?;
        let meta = read_meta(caller, &mut input)?;
        let request = LoadBalancer::read_create(meta, &mut input)?;
        let (port_id, network_id, subnet_id, address, owned) =
            service.vip_port(caller, &request).await?;
        if address.is_ipv6() {
            if owned {
                service.drop_vip_port(&port_id).await;
            }
            return Err(unsupported(
                "IPv6 VIPs (the kernel data plane balances IPv4 for now)",
            ));
        }
        let lb = LoadBalancer::new(
            request,
            port_id.clone(),
            network_id,
            subnet_id,
            address,
            owned,
        );
        let committed = service.commit(insert(Txn::new(), &lb)?).await;
        if !matches!(committed, Ok(true)) && owned {
            service.drop_vip_port(&port_id).await;
        }
        match committed? {
            true => service.rendered(lb, caller).await,
            false => Err(Error::Internal("load balancer id collision".to_owned())),
        }
    }

    fn apply_input(
        _service: &Service,
        _caller: &Caller,
        obj: &mut Self,
        input: &mut Input,
    ) -> Result<()> {
        obj.apply_update(input)
    }

    async fn delete_txn(_service: &Service, _caller: &Caller, obj: &Self) -> Result<Txn> {
        if obj.has_children() {
            return Err(validation(format!(
                "Cannot delete Load Balancer {} - it has children",
                obj.meta.id
            )));
        }
        Ok(Txn::new())
    }

    async fn deleted(service: &Service, obj: &Self) {
        if obj.vip_port_owned {
            service.drop_vip_port(&obj.vip_port_id).await;
        }
    }
}

impl Service {
    /// Makes `pool_id` the default pool of `listener` in `txn`: the pool must be on the same
    /// load balancer, speak the listener's protocol and serve no other listener.
    async fn attach_pool(&self, txn: Txn, listener: &Listener, pool_id: &str) -> Result<Txn> {
        let (mut pool, rev) = self
            .load::<Pool>(pool_id)
            .await?
            .filter(|(p, _)| p.loadbalancer_id == listener.loadbalancer_id)
            .ok_or_else(|| invalid_subresource("Pool", pool_id))?;
        if pool.protocol != listener.protocol {
            return Err(validation(format!(
                "The pool protocol '{}' is invalid while the listener protocol is '{}'.",
                pool.protocol.as_str(),
                listener.protocol.as_str()
            )));
        }
        if pool.listeners.iter().any(|l| l != &listener.meta.id) {
            return Err(Error::fault(
                "ValidationException",
                409,
                format!(
                    "Validation failure: Pool {pool_id} is already in use by another listener."
                ),
            ));
        }
        if !pool.listeners.contains(&listener.meta.id) {
            pool.listeners.push(listener.meta.id.clone());
        }
        rewrite(txn, &mut pool, rev)
    }

    /// Removes `listener_id` from the listeners of `pool_id` in `txn`.
    async fn detach_pool(&self, txn: Txn, listener_id: &str, pool_id: &str) -> Result<Txn> {
        let Some((mut pool, rev)) = self.load::<Pool>(pool_id).await? else {
            return Ok(txn);
        };
        pool.listeners.retain(|l| l != listener_id);
        rewrite(txn, &mut pool, rev)
    }
}

#[async_trait]
impl Kind for Listener {
    async fn list(service: &Service, caller: &Caller) -> Result<Vec<Listed>> {
        list_provisioned::<Self>(service, caller).await
    }

    async fn complete(service: &Service, obj: Self) -> Result<Self> {
        Ok(service.provisioned(vec![obj]).await?.remove(0))
    }

    async fn create(service: &Service, caller: &Caller, body: Value) -> Result<Object> {
        let mut input = listener::input(body, Method::Create)?;
        let meta = read_meta(caller, &mut input)?;
        let listener = Listener::from_input(meta, &mut input)?;
        let created = service
            .retry(|| {
                let mut listener = listener.clone();
                async move {
                    let (mut lb, lb_rev) =
                        service.parent_lb(caller, &listener.loadbalancer_id).await?;
                    listener.meta.project_id = lb.meta.project_id.clone();
                    for other in &lb.listeners {
                        if let Some((o, _)) = service.load::<Listener>(other).await? {
                            if o.protocol == listener.protocol
                                && o.protocol_port == listener.protocol_port
                            {
                                return Err(Error::fault(
                                    "DuplicateListenerEntry",
                                    409,
                                    format!(
                                        "Another Listener on this Load Balancer is already using protocol {} and protocol_port {}",
                                        o.protocol.as_str(),
                                        o.protocol_port
                                    ),
                                ));
                            }
                        }
                    }
                    let mut txn = Txn::new();
                    if let Some(pool_id) = &listener.default_pool_id {
                        txn = service.attach_pool(txn, &listener, pool_id).await?;
                    }
                    lb.listeners.push(listener.meta.id.clone());
                    let txn = insert(rewrite(txn, &mut lb, lb_rev)?, &listener)?;
                    service.attempt(txn, listener).await
                }
            })
            .await?;
        service.rendered(created, caller).await
    }

    async fn apply_update(
        service: &Service,
        _caller: &Caller,
        obj: &mut Self,
        body: Value,
    ) -> Result<Txn> {
        let mut input = listener::input(body, Method::Update)?;
        obj.meta.read_common(&mut input)?;
        let before = obj.default_pool_id.clone();
        obj.apply(&mut input)?;
        obj.meta.touch(&now());
        let mut txn = Txn::new();
        if before != obj.default_pool_id {
            if let Some(old) = &before {
                txn = service.detach_pool(txn, &obj.meta.id, old).await?;
            }
            if let Some(new) = &obj.default_pool_id {
                txn = service.attach_pool(txn, obj, new).await?;
            }
        }
        Ok(txn)
    }

    async fn delete_txn(service: &Service, _caller: &Caller, obj: &Self) -> Result<Txn> {
        let mut txn = Txn::new();
        if let Some((mut lb, rev)) = service.load::<LoadBalancer>(&obj.loadbalancer_id).await? {
            lb.listeners.retain(|l| l != &obj.meta.id);
            txn = rewrite(txn, &mut lb, rev)?;
        }
        if let Some(pool_id) = &obj.default_pool_id {
            txn = service.detach_pool(txn, &obj.meta.id, pool_id).await?;
        }
        Ok(txn)
    }
}

#[async_trait]
impl Kind for Pool {
    async fn list(service: &Service, caller: &Caller) -> Result<Vec<Listed>> {
        list_provisioned::<Self>(service, caller).await
    }

    async fn complete(service: &Service, obj: Self) -> Result<Self> {
        Ok(service.provisioned(vec![obj]).await?.remove(0))
    }

    async fn create(service: &Service, caller: &Caller, body: Value) -> Result<Object> {
        let mut input = pool::input(body, Method::Create)?;
        let meta = read_meta(caller, &mut input)?;
        let request = Pool::read_create(meta, &mut input)?;
        let created = service
            .retry(|| {
                let mut pool = request.pool.clone();
                let listener_id = request.listener_id.clone();
                async move {
                    let mut txn = Txn::new();
                    if let Some(listener_id) = &listener_id {
                        let (mut listener, rev) = service
                            .load_visible::<Listener>(caller, listener_id)
                            .await
                            .map_err(|_| invalid_subresource("Listener", listener_id))?;
                        if !pool.loadbalancer_id.is_empty()
                            && pool.loadbalancer_id != listener.loadbalancer_id
                        {
                            return Err(validation(
                                "Listener and pool must be on the same load balancer.",
                            ));
                        }
                        if listener.default_pool_id.is_some() {
                            return Err(Error::fault(
                                "DuplicatePoolEntry",
                                409,
                                "This listener already has a default pool",
                            ));
                        }
                        if listener.protocol != pool.protocol {
                            return Err(validation(format!(
                                "The pool protocol '{}' is invalid while the listener protocol is '{}'.",
                                pool.protocol.as_str(),
                                listener.protocol.as_str()
                            )));
                        }
                        pool.loadbalancer_id = listener.loadbalancer_id.clone();
                        pool.listeners = vec![listener_id.clone()];
                        listener.default_pool_id = Some(pool.meta.id.clone());
                        txn = rewrite(txn, &mut listener, rev)?;
                    }
                    let (mut lb, lb_rev) = service.parent_lb(caller, &pool.loadbalancer_id).await?;
                    pool.meta.project_id = lb.meta.project_id.clone();
                    lb.pools.push(pool.meta.id.clone());
                    let txn = insert(rewrite(txn, &mut lb, lb_rev)?, &pool)?;
                    service.attempt(txn, pool).await
                }
            })
            .await?;
        service.rendered(created, caller).await
    }

    fn apply_input(
        _service: &Service,
        _caller: &Caller,
        obj: &mut Self,
        input: &mut Input,
    ) -> Result<()> {
        obj.apply(input)
    }

    async fn delete_txn(service: &Service, _caller: &Caller, obj: &Self) -> Result<Txn> {
        let mut txn = Txn::new();
        if let Some((mut lb, rev)) = service.load::<LoadBalancer>(&obj.loadbalancer_id).await? {
            lb.pools.retain(|p| p != &obj.meta.id);
            txn = rewrite(txn, &mut lb, rev)?;
        }
        for l in &obj.listeners {
            if let Some((mut listener, rev)) = service.load::<Listener>(l).await? {
                listener.default_pool_id = None;
                txn = rewrite(txn, &mut listener, rev)?;
            }
        }
        // Octavia deletes a pool's members and health monitor with it.
        for m in &obj.members {
            txn = txn.then(Op::delete(key_of::<Member>(m)));
        }
        if let Some(h) = &obj.healthmonitor_id {
            txn = txn.then(Op::delete(key_of::<HealthMonitor>(h)));
        }
        Ok(txn)
    }
}

#[async_trait]
impl Kind for Member {
    async fn list(service: &Service, caller: &Caller) -> Result<Vec<Listed>> {
        list_provisioned::<Self>(service, caller).await
    }

    async fn complete(service: &Service, obj: Self) -> Result<Self> {
        Ok(service.provisioned(vec![obj]).await?.remove(0))
    }

    async fn create(service: &Service, caller: &Caller, body: Value) -> Result<Object> {
        let mut input = member::input(body, Method::Create)?;
        let meta = read_meta(caller, &mut input)?;
        let member = Member::from_input(meta, &mut input)?;
        if let Some(subnet_id) = &member.subnet_id {
            let (subnet, _) = service
                .load_visible::<Subnet>(caller, subnet_id)
                .await
                .map_err(|_| invalid_subresource("Subnet", subnet_id))?;
            if !subnet.cidr.contains(member.address) {
                return Err(validation(format!(
                    "Member address {} is not on subnet {subnet_id}",
                    member.address
                )));
            }
        }
        let created = service
            .retry(|| {
                let mut member = member.clone();
                async move {
                    let (mut pool, rev) =
                        service.load_visible::<Pool>(caller, &member.pool_id).await?;
                    member.meta.project_id = pool.meta.project_id.clone();
                    for other in &pool.members {
                        if let Some((o, _)) = service.load::<Member>(other).await? {
                            if o.address == member.address
                                && o.protocol_port == member.protocol_port
                            {
                                return Err(Error::fault(
                                    "DuplicateMemberEntry",
                                    409,
                                    format!(
                                        "Another member on this pool is already using ip {} on protocol_port {}",
                                        o.address, o.protocol_port
                                    ),
                                ));
                            }
                        }
                    }
                    pool.members.push(member.meta.id.clone());
                    let txn = insert(rewrite(Txn::new(), &mut pool, rev)?, &member)?;
                    service.attempt(txn, member).await
                }
            })
            .await?;
        service.rendered(created, caller).await
    }

    fn apply_input(
        _service: &Service,
        _caller: &Caller,
        obj: &mut Self,
        input: &mut Input,
    ) -> Result<()> {
        obj.apply(input)
    }

    async fn delete_txn(service: &Service, _caller: &Caller, obj: &Self) -> Result<Txn> {
        let Some((mut pool, rev)) = service.load::<Pool>(&obj.pool_id).await? else {
            return Ok(Txn::new());
        };
        pool.members.retain(|m| m != &obj.meta.id);
        rewrite(Txn::new(), &mut pool, rev)
    }
}

#[async_trait]
impl Kind for HealthMonitor {
    async fn list(service: &Service, caller: &Caller) -> Result<Vec<Listed>> {
        list_provisioned::<Self>(service, caller).await
    }

    async fn complete(service: &Service, obj: Self) -> Result<Self> {
        Ok(service.provisioned(vec![obj]).await?.remove(0))
    }

    async fn create(service: &Service, caller: &Caller, body: Value) -> Result<Object> {
        let mut input = health_monitor::input(body, Method::Create)?;
        let meta = read_meta(caller, &mut input)?;
        let monitor = HealthMonitor::from_input(meta, &mut input)?;
        let created = service
            .retry(|| {
                let mut monitor = monitor.clone();
                async move {
                    let (mut pool, rev) = service
                        .load_visible::<Pool>(caller, &monitor.pool_id)
                        .await
                        .map_err(|_| invalid_subresource("Pool", &monitor.pool_id))?;
                    if pool.healthmonitor_id.is_some() {
                        return Err(Error::fault(
                            "DuplicateHealthMonitor",
                            409,
                            "This pool already has a health monitor",
                        ));
                    }
                    monitor.meta.project_id = pool.meta.project_id.clone();
                    pool.healthmonitor_id = Some(monitor.meta.id.clone());
                    let txn = insert(rewrite(Txn::new(), &mut pool, rev)?, &monitor)?;
                    service.attempt(txn, monitor).await
                }
            })
            .await?;
        service.rendered(created, caller).await
    }

    fn apply_input(
        _service: &Service,
        _caller: &Caller,
        obj: &mut Self,
        input: &mut Input,
    ) -> Result<()> {
        obj.apply(input)
    }

    async fn delete_txn(service: &Service, _caller: &Caller, obj: &Self) -> Result<Txn> {
        let Some((mut pool, rev)) = service.load::<Pool>(&obj.pool_id).await? else {
            return Ok(Txn::new());
        };
        pool.healthmonitor_id = None;
        let mut txn = rewrite(Txn::new(), &mut pool, rev)?;
        // Unmonitored members are NO_MONITOR again (and back in every node's data plane).
        for m in &pool.members {
            if let Some((mut member, member_rev)) = service.load::<Member>(m).await? {
                if member.operating_status != operating::NO_MONITOR {
                    member.operating_status = operating::NO_MONITOR.to_owned();
                    txn = rewrite(txn, &mut member, member_rev)?;
                }
            }
        }
        Ok(txn)
    }
}
