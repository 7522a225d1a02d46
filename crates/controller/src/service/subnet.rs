//! Subnet operations: overlap checks within a network, in-use checks on delete.

use std::collections::HashSet;

use async_trait::async_trait;
use isthmus_model::resource::{Resource, View};
use isthmus_model::{Caller, Error, Network, Result, Subnet};
use isthmus_store::{Compare, Op, Txn};
use serde_json::Value;

use super::{encode, new_id, now, Attempt, Kind, Listed, Object, Service};
use crate::keys;

impl Service {}

#[async_trait]
impl Kind for Subnet {
    /// Its own, or on a network the caller may see.
    async fn visible(service: &Service, caller: &Caller, subnet: &Subnet) -> Result<bool> {
        if caller.owns(&subnet.meta.project_id) {
            return Ok(true);
        }
        Ok(service
            .load::<Network>(&subnet.network_id)
            .await?
            .is_some_and(|(n, _)| n.visible_to(caller)))
    }

    async fn list(service: &Service, caller: &Caller) -> Result<Vec<Listed>> {
        let subnets = service.load_all::<Subnet>(keys::SUBNETS).await?;
        let visible_networks: HashSet<String> = if caller.is_admin {
            HashSet::new()
        } else {
            service
                .load_all::<Network>(keys::NETWORKS)
                .await?
                .into_iter()
                .filter(|(n, _)| n.visible_to(caller))
                .map(|(n, _)| n.meta.id)
                .collect()
        };
        Ok(subnets
            .into_iter()
            .filter(|(s, _)| {
                caller.owns(&s.meta.project_id) || visible_networks.contains(&s.network_id)
            })
            .map(|(s, _)| Box::new(View::owned(s, caller)) as Listed)
            .collect())
    }

    async fn create(service: &Service, caller: &Caller, body: Value) -> Result<Object> {
        let parsed = Subnet::parse_create(body, caller, new_id(), &now())?;
        service.retry(|| {
            let subnet = parsed.clone();
            async move {
                let (mut network, net_rev) = service.load_visible::<Network>(caller, &subnet.network_id).await?;
                if !caller.owns(&network.meta.project_id) {
                    return Err(Error::PolicyNotAuthorized("rule:create_subnet".to_owned()));
                }
                for other_id in &network.subnets {
                    if let Some((other, _)) = service.load::<Subnet>(other_id).await? {
                        if other.cidr.overlaps(&subnet.cidr) {
                            return Err(Error::InvalidInput(format!(
                                "Requested subnet with cidr: {} for network: {} overlaps with another subnet",
                                subnet.cidr, network.meta.id
                            )));
                        }
                    }
                }
                network.subnets.push(subnet.meta.id.clone());
                network.meta.touch(&now());
                let txn = Txn::new()
                    .when(Compare::mod_revision(keys::network(&network.meta.id), net_rev))
                    .then(Op::put(keys::network(&network.meta.id), encode(&network)?))
                    .then(Op::put(keys::subnet(&subnet.meta.id), encode(&subnet)?));
                Ok(if service.commit(txn).await? {
                    Attempt::Done(subnet.render(caller))
                } else {
                    Attempt::Retry
                })
            }
        })
        .await
    }

    async fn apply_update(
        service: &Service,
        _caller: &Caller,
        subnet: &mut Subnet,
        body: Value,
    ) -> Result<Txn> {
        let old_gateway = subnet.gateway_ip;
        subnet.apply_update(body, &now())?;
        let mut txn = Txn::new();
        if let Some(gateway) = subnet.gateway_ip.filter(|g| Some(*g) != old_gateway) {
            // The new gateway must not be an address a port holds.
            let claim = keys::ipam(&subnet.meta.id, gateway);
            if service
                .store
                .get(&claim)
                .await
                .map_err(super::store_error)?
                .is_some()
            {
                return Err(Error::Conflict(format!(
                    "Gateway ip {gateway} conflicts with allocated IP of a port"
                )));
            }
            txn = txn.when(Compare::absent(claim));
        }
        Ok(txn)
    }

    async fn updated(service: &Service, subnet: &Subnet) {
        service.reset_low_water(&subnet.meta.id);
    }

    async fn delete_txn(service: &Service, _caller: &Caller, subnet: &Subnet) -> Result<Txn> {
        let id = &subnet.meta.id;
        let (mut network, net_rev) = service.must_load::<Network>(&subnet.network_id).await?;
        network.subnets.retain(|s| s != id);
        network.meta.touch(&now());
        Ok(Txn::new()
            .when(Compare::mod_revision(
                keys::network(&network.meta.id),
                net_rev,
            ))
            .when(Compare::prefix_empty(keys::ipam_prefix(id)))
            .then(Op::put(keys::network(&network.meta.id), encode(&network)?)))
    }

    async fn in_use(service: &Service, subnet: &Subnet) -> Result<()> {
        let id = &subnet.meta.id;
        if service.index(&keys::ipam_prefix(id)).await?.is_empty() {
            Ok(())
        } else {
            Err(Error::SubnetInUse(id.clone()))
        }
    }

    async fn deleted(service: &Service, subnet: &Subnet) {
        service.reset_low_water(&subnet.meta.id);
    }
}
