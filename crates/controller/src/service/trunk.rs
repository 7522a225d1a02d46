//! Trunks: the trunk record, its parent's `trunk_details` and each subport's role are
//! written in one transaction over the revisions they were read at, so a port joins at most
//! one trunk and a port in a trunk cannot be deleted (the delete compares the same port).
//! A subport is bound to its parent's node: that node's view carries it, and its agent wires
//! it behind the parent's device.

use async_trait::async_trait;
use isthmus_model::input::{Input, Method};
use isthmus_model::meta::owner_project;
use isthmus_model::resource::{Resource, View};
use isthmus_model::trunk::{
    self, Status, SubPort, SubPortDetail, SubPortRequest, TrunkRequest, TrunkRole, SUBPORT_OWNER,
};
use isthmus_model::{Caller, Error, Meta, Network, Port, Result, Trunk};
use isthmus_store::{Compare, Op, Txn};
use serde_json::Value;

use super::kind::{key_of, prefix_of};
use super::{encode, new_id, now, Attempt, Kind, Listed, Object, Service};
use crate::keys;

/// `cni_container_id` of the subports an agent keeps in its pools (a unique suffix follows).
pub const POOL_CONTAINER: &str = "isthmus-pool-";

/// Neutron's `PortInUse`: a port already attached to a device cannot become a subport.
fn port_in_use(port: &Port) -> Error {
    Error::fault(
        "PortInUse",
        409,
        format!(
            "Unable to complete operation on port {} for network {}. Port already has an \
             attached device {}.",
            port.meta.id, port.network_id, port.device_id
        ),
    )
}

/// A port leaving its trunk: no role, no trunk owner, no binding of its own.
fn release(port: &mut Port) {
    port.trunk = None;
    if port.device_owner == SUBPORT_OWNER {
        port.device_owner.clear();
    }
    if !port.binding.host_id.is_empty() {
        port.binding.host_id.clear();
        port.status = "DOWN".to_owned();
    }
    port.meta.touch(&now());
}

/// A port joining a trunk as subport: bound where its parent is.
fn enlist(port: &mut Port, trunk_id: &str, parent: &Port, segmentation_id: u16) {
    port.trunk = Some(TrunkRole::Sub {
        trunk_id: trunk_id.to_owned(),
        parent_port_id: parent.meta.id.clone(),
        segmentation_id,
    });
    port.device_owner = SUBPORT_OWNER.to_owned();
    if port.binding.host_id != parent.binding.host_id {
        port.binding.host_id = parent.binding.host_id.clone();
        port.status = "DOWN".to_owned();
    }
    port.meta.touch(&now());
}

/// Writes `port` over the revision it was read at.
fn put_port(txn: Txn, port: &Port, rev: u64) -> Result<Txn> {
    let key = keys::port(&port.meta.id);
    Ok(txn
        .when(Compare::mod_revision(key.clone(), rev))
        .then(Op::put(key, encode(port)?)))
}

/// The parent's `trunk_details` for `sub_ports`, with the MACs of `macs` (port id → MAC).
fn parent_role(trunk_id: &str, sub_ports: &[SubPort], macs: &[(String, String)]) -> TrunkRole {
    TrunkRole::Parent {
        trunk_id: trunk_id.to_owned(),
        sub_ports: sub_ports
            .iter()
            .map(|s| SubPortDetail {
                segmentation_id: s.segmentation_id,
                segmentation_type: s.segmentation_type.clone(),
                port_id: s.port_id.clone(),
                mac_address: macs
                    .iter()
                    .find(|(id, _)| *id == s.port_id)
                    .map(|(_, mac)| mac.clone())
                    .unwrap_or_default(),
            })
            .collect(),
    }
}

/// The MACs the parent's `trunk_details` shows now.
fn known_macs(parent: &Port) -> Vec<(String, String)> {
    match &parent.trunk {
        Some(TrunkRole::Parent { sub_ports, .. }) => sub_ports
            .iter()
            .map(|s| (s.port_id.clone(), s.mac_address.clone()))
            .collect(),
        _ => Vec::new(),
    }
}

impl Service {
    /// A trunk's status, from its parent's and subports' ports as their node reported them.
    async fn trunk_status(&self, trunk: &Trunk) -> Result<Status> {
        let parent = self
            .load::<Port>(&trunk.port_id)
            .await?
            .map(|(p, _)| p)
            .filter(|p| !p.binding.host_id.is_empty());
        let mut statuses = Vec::with_capacity(trunk.sub_ports.len());
        for s in &trunk.sub_ports {
            if let Some((p, _)) = self.load::<Port>(&s.port_id).await? {
                statuses.push(p.status);
            }
        }
        let statuses: Vec<&str> = statuses.iter().map(String::as_str).collect();
        Ok(Status::of(
            parent.as_ref().map(|p| p.status.as_str()),
            &statuses,
        ))
    }

    /// Checks requested subports (Neutron's `SubPortsValidator`, in its order) against the
    /// trunk's parent and the subports it already has; adds each port's new role to `txn`.
    /// Returns the new subports and their MACs.
    async fn join_sub_ports(
        &self,
        caller: &Caller,
        trunk_id: &str,
        parent: &Port,
        existing: &[SubPort],
        requests: &[SubPortRequest],
        mut txn: Txn,
    ) -> Result<(Vec<SubPort>, Vec<(String, String)>, Txn)> {
        let (parent_network, _) = self.must_load::<Network>(&parent.network_id).await?;
        let mut added: Vec<SubPort> = Vec::with_capacity(requests.len());
        let mut macs = Vec::with_capacity(requests.len());
        for request in requests {
            if request.port_id == parent.meta.id {
                return Err(trunk::parent_in_use(&request.port_id));
            }
            let (mut port, rev) = self.load_visible::<Port>(caller, &request.port_id).await?;
            let (network, _) = self.must_load::<Network>(&port.network_id).await?;
            let vlan = trunk::check_sub_port(
                request,
                &parent.meta.id,
                network.network_type.as_str(),
                network.mtu,
                parent_network.mtu,
            )?;
            if let Some(role) = &port.trunk {
                return Err(role.taken(&port.meta.id));
            }
            if !port.device_id.is_empty() {
                return Err(port_in_use(&port));
            }
            if existing
                .iter()
                .chain(&added)
                .any(|s| s.segmentation_id == vlan)
            {
                return Err(trunk::duplicate(trunk_id, vlan));
            }
            enlist(&mut port, trunk_id, parent, vlan);
            txn = put_port(txn, &port, rev)?;
            macs.push((port.meta.id.clone(), port.mac_address.clone()));
            added.push(SubPort {
                port_id: port.meta.id.clone(),
                segmentation_type: "vlan".to_owned(),
                segmentation_id: vlan,
            });
        }
        Ok((added, macs, txn))
    }

    /// `add_subports`.
    async fn add_sub_ports(&self, caller: &Caller, id: &str, body: Value) -> Result<Value> {
        let requests = trunk::parse_additions(&body)?;
        let trunk = self
            .retry(|| async {
                let (mut trunk, rev) = self
                    .load_for_change::<Trunk>(caller, id, None, "add_subports")
                    .await?;
                trunk::check_enabled(&trunk)?;
                if self.trunk_status(&trunk).await? == Status::Error {
                    return Err(Error::fault(
                        "TrunkInErrorState",
                        409,
                        format!(
                            "Trunk {id} is in error state. Attempt to resolve the error \
                             condition before proceeding."
                        ),
                    ));
                }
                let (mut parent, parent_rev) = self.must_load::<Port>(&trunk.port_id).await?;
                let (added, mut macs, txn) = self
                    .join_sub_ports(caller, id, &parent, &trunk.sub_ports, &requests, Txn::new())
                    .await?;
                macs.extend(known_macs(&parent));
                trunk.sub_ports.extend(added);
                parent.trunk = Some(parent_role(id, &trunk.sub_ports, &macs));
                self.write_trunk(trunk, rev, &parent, parent_rev, txn).await
            })
            .await?;
        self.trunk_body(caller, trunk).await
    }

    /// `remove_subports`.
    async fn remove_sub_ports(&self, caller: &Caller, id: &str, body: Value) -> Result<Value> {
        let removals = trunk::parse_removals(&body)?;
        let trunk = self
            .retry(|| async {
                let (mut trunk, rev) = self
                    .load_for_change::<Trunk>(caller, id, None, "remove_subports")
                    .await?;
                trunk::check_enabled(&trunk)?;
                let mut txn = Txn::new();
                for port_id in &removals {
                    if !trunk.sub_ports.iter().any(|s| s.port_id == *port_id) {
                        return Err(Error::fault(
                            "SubPortNotFound",
                            404,
                            format!("SubPort {port_id} on trunk {id} could not be found."),
                        ));
                    }
                    if let Some((mut port, port_rev)) = self.load::<Port>(port_id).await? {
                        release(&mut port);
                        txn = put_port(txn, &port, port_rev)?;
                    }
                }
                trunk.sub_ports.retain(|s| !removals.contains(&s.port_id));
                let (mut parent, parent_rev) = self.must_load::<Port>(&trunk.port_id).await?;
                parent.trunk = Some(parent_role(id, &trunk.sub_ports, &known_macs(&parent)));
                self.write_trunk(trunk, rev, &parent, parent_rev, txn).await
            })
            .await?;
        self.trunk_body(caller, trunk).await
    }

    /// Writes a changed `trunk` (read at `rev`) with its `parent` (read at `parent_rev`) and
    /// what `txn` already holds (its subports' ports).
    async fn write_trunk(
        &self,
        mut trunk: Trunk,
        rev: u64,
        parent: &Port,
        parent_rev: u64,
        txn: Txn,
    ) -> Result<Attempt<Trunk>> {
        trunk.meta.touch(&now());
        let key = key_of::<Trunk>(&trunk.meta.id);
        let txn = put_port(txn, parent, parent_rev)?
            .when(Compare::mod_revision(key.clone(), rev))
            .then(Op::put(key, encode(&trunk)?));
        Ok(if self.commit(txn).await? {
            Attempt::Done(trunk)
        } else {
            Attempt::Retry
        })
    }

    /// The trunk as `add_subports` and `remove_subports` answer: unwrapped.
    async fn trunk_body(&self, caller: &Caller, trunk: Trunk) -> Result<Value> {
        Ok(Value::Object(
            Trunk::complete(self, trunk).await?.render(caller),
        ))
    }

    /// The trunk whose parent is port `parent_id`, or 409 when the port is no trunk parent.
    async fn trunk_of_parent(&self, parent_id: &str) -> Result<(Port, Trunk)> {
        let (parent, _) = self.must_load::<Port>(parent_id).await?;
        let Some(TrunkRole::Parent { trunk_id, .. }) = &parent.trunk else {
            return Err(Error::Conflict(format!(
                "Port {parent_id} is not the parent port of a trunk"
            )));
        };
        let (trunk, _) = self.must_load::<Trunk>(trunk_id).await?;
        Ok((parent, trunk))
    }

    /// The subport of `trunk` made for attachment (`container_id`, `ifname`), if any.
    async fn attachment_subport(
        &self,
        trunk: &Trunk,
        container_id: &str,
        ifname: &str,
    ) -> Result<Option<(Port, u16)>> {
        for s in &trunk.sub_ports {
            let Some((port, _)) = self.load::<Port>(&s.port_id).await? else {
                continue;
            };
            let profile = &port.binding.profile;
            if profile.get("cni_container_id").and_then(Value::as_str) == Some(container_id)
                && profile.get("cni_ifname").and_then(Value::as_str) == Some(ifname)
            {
                return Ok(Some((port, s.segmentation_id)));
            }
        }
        Ok(None)
    }

    /// A subport for a pod inside the VM whose port is `parent_id` (the nested CNI path, asked
    /// by that VM's node agent): `{"subport": {"network": name or id, "container_id",
    /// "ifname", "name"}}` makes a port on the network in the parent's project and adds it to
    /// the parent's trunk at the lowest VLAN free there; the same attachment asked again gets
    /// the same subport; `"pooled": <port id>` offers a subport the agent made ahead (with a
    /// `cni_container_id` starting `isthmus-pool-`), which becomes the attachment's. Answers
    /// whether it was made, and `{"port", "segmentation_id", "trunk_id"}` (with `"pool"`: what
    /// became of the offered subport).
    pub async fn nested_subport(
        &self,
        caller: &Caller,
        parent_id: &str,
        body: Value,
    ) -> Result<(bool, Value)> {
        isthmus_model::policy::authorize_caller("create_subport", caller)?;
        let field = |name: &str| {
            body.get("subport")
                .and_then(|s| s.get(name))
                .and_then(Value::as_str)
                .map(str::to_owned)
                .ok_or_else(|| Error::invalid_attr(name, "a string is required"))
        };
        let (network, container_id, ifname) =
            (field("network")?, field("container_id")?, field("ifname")?);
        let name = field("name").unwrap_or_else(|_| container_id.clone());
        let (parent, trunk) = self.trunk_of_parent(parent_id).await?;
        let answer = |port: Port, vlan: u16, trunk_id: &str| {
            serde_json::json!({
                "port": port.render(caller),
                "segmentation_id": vlan,
                "trunk_id": trunk_id,
            })
        };
        let pooled = field("pooled").ok();
        // What became of the pool subport offered: "kept" (still the pool's), "taken" (this
        // attachment's now) or "invalid" (no pool subport of this trunk: the agent drops it).
        let pool = |mut body: Value, outcome: &str| {
            if pooled.is_some() {
                body["pool"] = Value::from(outcome);
            }
            body
        };
        if let Some((port, vlan)) = self
            .attachment_subport(&trunk, &container_id, &ifname)
            .await?
        {
            return Ok((false, pool(answer(port, vlan, &trunk.meta.id), "kept")));
        }
        if let Some(offered) = &pooled {
            if let Some((port, vlan)) = self
                .take_pooled(&trunk, offered, &container_id, &ifname, &name)
                .await?
            {
                return Ok((false, pool(answer(port, vlan, &trunk.meta.id), "taken")));
            }
        }
        let network = self.resolve_network(&network).await?;
        let port = serde_json::json!({"port": {
            "network_id": network.meta.id,
            "project_id": parent.meta.project_id,
            "name": name,
            "binding:profile": {"cni_container_id": container_id, "cni_ifname": ifname},
        }});
        // The VM's project pays for its pods' ports, as for any other.
        self.check_quota(caller, "ports", "port", &port).await?;
        let created = self.create_port(caller, port, new_id()).await?;
        let port_id = created
            .get("id")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let admin = Caller::admin(&parent.meta.project_id);
        // Concurrent attachments race for the lowest free VLAN: the loser takes the next.
        let mut outcome = Err(Error::Conflict("no VLAN left on the trunk".to_owned()));
        for _ in 0..16 {
            let (_, trunk) = self.trunk_of_parent(parent_id).await?;
            let Some(vlan) =
                (1..=4094u16).find(|v| !trunk.sub_ports.iter().any(|s| s.segmentation_id == *v))
            else {
                break;
            };
            let request = serde_json::json!({"sub_ports": [
                {"port_id": port_id, "segmentation_type": "vlan", "segmentation_id": vlan}
            ]});
            outcome = self
                .add_sub_ports(&admin, &trunk.meta.id, request)
                .await
                .map(|_| (vlan, trunk.meta.id));
            match &outcome {
                Err(e) if e.type_name() == "DuplicateSubPort" => continue,
                _ => break,
            }
        }
        match outcome {
            Ok((vlan, trunk_id)) => {
                let (port, _) = self.must_load::<Port>(&port_id).await?;
                Ok((true, pool(answer(port, vlan, &trunk_id), "invalid")))
            }
            Err(e) => {
                // Nothing half-done: the port made for it goes again.
                if let Err(cleanup) = self.delete_port_unchecked(&port_id).await {
                    tracing::warn!("removing port {port_id} of a failed subport: {cleanup}");
                }
                Err(e)
            }
        }
    }

    /// Pool subport `port_id` of `trunk`, renamed and re-profiled for an attachment; `None`
    /// when it is no pool subport of the trunk (any more).
    async fn take_pooled(
        &self,
        trunk: &Trunk,
        port_id: &str,
        container_id: &str,
        ifname: &str,
        name: &str,
    ) -> Result<Option<(Port, u16)>> {
        let Some(vlan) = trunk
            .sub_ports
            .iter()
            .find(|s| s.port_id == port_id)
            .map(|s| s.segmentation_id)
        else {
            return Ok(None);
        };
        self.retry(|| async {
            let Some((mut port, rev)) = self.load::<Port>(port_id).await? else {
                return Ok(Attempt::Done(None));
            };
            let pooled = port
                .binding
                .profile
                .get("cni_container_id")
                .and_then(Value::as_str)
                .is_some_and(|c| c.starts_with(POOL_CONTAINER));
            if !pooled {
                return Ok(Attempt::Done(None));
            }
            port.meta.name = name.to_owned();
            port.binding.profile = serde_json::Map::from_iter([
                ("cni_container_id".to_owned(), Value::from(container_id)),
                ("cni_ifname".to_owned(), Value::from(ifname)),
            ]);
            port.meta.touch(&now());
            Ok(if self.write_back(port_id, rev, &port).await? {
                Attempt::Done(Some((port, vlan)))
            } else {
                Attempt::Retry
            })
        })
        .await
    }

    /// Releases the subport made for attachment (`container_id`, `ifname`) of the VM whose
    /// port is `parent_id`: it leaves the trunk and is deleted. Nothing there is fine (a DEL
    /// may come twice).
    pub async fn release_nested_subport(
        &self,
        caller: &Caller,
        parent_id: &str,
        container_id: &str,
        ifname: &str,
    ) -> Result<()> {
        isthmus_model::policy::authorize_caller("delete_subport", caller)?;
        let (parent, trunk) = self.trunk_of_parent(parent_id).await?;
        let Some((port, _)) = self
            .attachment_subport(&trunk, container_id, ifname)
            .await?
        else {
            return Ok(());
        };
        let admin = Caller::admin(&parent.meta.project_id);
        let request = serde_json::json!({"sub_ports": [{"port_id": port.meta.id}]});
        match self.remove_sub_ports(&admin, &trunk.meta.id, request).await {
            Ok(_) => {}
            Err(e) if e.type_name() == "SubPortNotFound" => {}
            Err(e) => return Err(e),
        }
        match self.delete_port_unchecked(&port.meta.id).await {
            Err(Error::NotFound { .. }) | Ok(()) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// What a port update must also write when it changes a port in a trunk: a parent's new
    /// binding moves its subports with it; a subport's binding follows its parent's only;
    /// a subport's new MAC shows in its parent's `trunk_details`.
    pub(crate) async fn trunk_follows_port(
        &self,
        old: &Port,
        port: &Port,
        mut txn: Txn,
    ) -> Result<Txn> {
        match port.trunk.clone() {
            None => Ok(txn),
            Some(TrunkRole::Parent { sub_ports, .. }) => {
                if port.binding.host_id == old.binding.host_id {
                    return Ok(txn);
                }
                for s in &sub_ports {
                    let Some((mut sub, rev)) = self.load::<Port>(&s.port_id).await? else {
                        continue;
                    };
                    sub.binding.host_id = port.binding.host_id.clone();
                    sub.status = "DOWN".to_owned();
                    sub.meta.touch(&now());
                    txn = put_port(txn, &sub, rev)?;
                }
                Ok(txn)
            }
            Some(TrunkRole::Sub {
                trunk_id,
                parent_port_id,
                ..
            }) => {
                let Some((mut parent, parent_rev)) = self.load::<Port>(&parent_port_id).await?
                else {
                    return Ok(txn);
                };
                if port.binding.host_id != old.binding.host_id
                    && port.binding.host_id != parent.binding.host_id
                {
                    return Err(Error::Conflict(format!(
                        "Port {} is a subport of trunk {trunk_id}: it is bound where its parent \
                         port {parent_port_id} is",
                        port.meta.id
                    )));
                }
                if port.mac_address == old.mac_address {
                    return Ok(txn);
                }
                if let Some(TrunkRole::Parent { sub_ports, .. }) = &mut parent.trunk {
                    for s in sub_ports.iter_mut().filter(|s| s.port_id == port.meta.id) {
                        s.mac_address = port.mac_address.clone();
                    }
                }
                put_port(txn, &parent, parent_rev)
            }
        }
    }
}

#[async_trait]
impl Kind for Trunk {
    async fn complete(service: &Service, mut trunk: Trunk) -> Result<Trunk> {
        trunk.status = service.trunk_status(&trunk).await?;
        Ok(trunk)
    }

    async fn list(service: &Service, caller: &Caller) -> Result<Vec<Listed>> {
        let mut out: Vec<Listed> = Vec::new();
        for (trunk, _) in service.load_all::<Trunk>(&prefix_of::<Trunk>()).await? {
            if trunk.visible_to(caller) {
                let trunk = Trunk::complete(service, trunk).await?;
                out.push(Box::new(View::owned(trunk, caller)));
            }
        }
        Ok(out)
    }

    async fn create(service: &Service, caller: &Caller, body: Value) -> Result<Object> {
        let mut input = Input::for_kind(body, Trunk::definition(), Method::Create)?;
        let project_id = owner_project(&mut input, caller)?;
        let mut meta = Meta::new(new_id(), project_id, &now());
        meta.read_common(&mut input)?;
        let request = TrunkRequest::from_input(&mut input)?;
        let id = meta.id.clone();
        let trunk = service
            .retry(|| async {
                let (mut parent, parent_rev) = service
                    .load_visible::<Port>(caller, &request.port_id)
                    .await?;
                if let Some(role) = &parent.trunk {
                    // A subport cannot be a parent, nor a parent the parent of two trunks.
                    return Err(role.taken(&parent.meta.id));
                }
                let (sub_ports, macs, txn) = service
                    .join_sub_ports(caller, &id, &parent, &[], &request.sub_ports, Txn::new())
                    .await?;
                let trunk = Trunk {
                    meta: meta.clone(),
                    admin_state_up: request.admin_state_up,
                    port_id: parent.meta.id.clone(),
                    sub_ports,
                    status: Status::Down,
                };
                parent.trunk = Some(parent_role(&id, &trunk.sub_ports, &macs));
                let key = key_of::<Trunk>(&id);
                let txn = put_port(txn, &parent, parent_rev)?
                    .when(Compare::absent(&key))
                    .then(Op::put(key, encode(&trunk)?));
                Ok(if service.commit(txn).await? {
                    Attempt::Done(trunk)
                } else {
                    Attempt::Retry
                })
            })
            .await?;
        Ok(Trunk::complete(service, trunk).await?.render(caller))
    }

    fn apply_input(
        _service: &Service,
        _caller: &Caller,
        trunk: &mut Trunk,
        input: &mut Input,
    ) -> Result<()> {
        if let Some(up) = input.boolean("admin_state_up")? {
            trunk.admin_state_up = up;
        }
        Ok(())
    }

    async fn action(
        service: &Service,
        caller: &Caller,
        id: &str,
        action: &str,
        body: Value,
    ) -> Result<Value> {
        match action {
            "add_subports" => service.add_sub_ports(caller, id, body).await,
            "remove_subports" => service.remove_sub_ports(caller, id, body).await,
            _ => Err(Error::PathNotFound),
        }
    }

    async fn read_action(
        service: &Service,
        caller: &Caller,
        id: &str,
        action: &str,
    ) -> Result<Value> {
        match action {
            "get_subports" => {
                let (trunk, _) = service.load_visible::<Trunk>(caller, id).await?;
                Ok(trunk.sub_ports_body())
            }
            _ => Err(Error::PathNotFound),
        }
    }

    /// A trunk whose bound parent still carries subports is in use (Neutron's `TrunkInUse`
    /// for a driver that cannot untrunk a bound port): its subports' traffic would stop at
    /// once. Otherwise its ports leave it in the same transaction.
    async fn delete_txn(service: &Service, _caller: &Caller, trunk: &Trunk) -> Result<Txn> {
        trunk::check_enabled(trunk)?;
        let mut txn = Txn::new();
        if let Some((mut parent, rev)) = service.load::<Port>(&trunk.port_id).await? {
            if !trunk.sub_ports.is_empty() && !parent.binding.host_id.is_empty() {
                return Err(Error::fault(
                    "TrunkInUse",
                    409,
                    format!("Trunk {} is currently in use.", trunk.meta.id),
                ));
            }
            parent.trunk = None;
            txn = put_port(txn, &parent, rev)?;
        }
        for s in &trunk.sub_ports {
            if let Some((mut port, rev)) = service.load::<Port>(&s.port_id).await? {
                release(&mut port);
                txn = put_port(txn, &port, rev)?;
            }
        }
        Ok(txn)
    }
}
