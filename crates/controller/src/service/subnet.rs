//! Subnet operations: overlap checks within a network, in-use checks on delete.

use isthmus_model::{Caller, Error, Network, Result, Subnet};
use isthmus_store::{Compare, Op, Txn};
use serde_json::Value;

use super::{check_revision, encode, new_id, now, Attempt, Listed, Object, Service};
use crate::keys;

impl Service {
    /// A subnet the caller may see (its own, or on a network it may see), or 404.
    pub(super) async fn visible_subnet(&self, caller: &Caller, id: &str) -> Result<(Subnet, u64)> {
        let Some((subnet, rev)) = self.load::<Subnet>(id).await? else {
            return Err(Error::not_found("Subnet", id));
        };
        if caller.owns(&subnet.meta.project_id) {
            return Ok((subnet, rev));
        }
        match self.load::<Network>(&subnet.network_id).await? {
            Some((n, _)) if n.visible_to(caller) => Ok((subnet, rev)),
            _ => Err(Error::not_found("Subnet", id)),
        }
    }

    async fn owned_subnet(&self, caller: &Caller, id: &str, action: &str) -> Result<(Subnet, u64)> {
        let (subnet, rev) = self.visible_subnet(caller, id).await?;
        if !caller.owns(&subnet.meta.project_id) {
            return Err(Error::PolicyNotAuthorized(format!("rule:{action}")));
        }
        Ok((subnet, rev))
    }

    pub(crate) async fn create_subnet(&self, caller: &Caller, body: Value) -> Result<Object> {
        let parsed = Subnet::parse_create(body, caller, new_id(), &now())?;
        self.retry(|| {
            let subnet = parsed.clone();
            async move {
                let (mut network, net_rev) = self.visible_network(caller, &subnet.network_id).await?;
                if !caller.owns(&network.meta.project_id) {
                    return Err(Error::PolicyNotAuthorized("rule:create_subnet".to_owned()));
                }
                for other_id in &network.subnets {
                    if let Some((other, _)) = self.load::<Subnet>(other_id).await? {
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
                Ok(if self.commit(txn).await? {
                    Attempt::Done(subnet.render())
                } else {
                    Attempt::Retry
                })
            }
        })
        .await
    }

    pub(crate) async fn show_subnet(&self, caller: &Caller, id: &str) -> Result<Object> {
        Ok(self.visible_subnet(caller, id).await?.0.render())
    }

    pub(crate) async fn list_subnets(&self, caller: &Caller) -> Result<Vec<Listed>> {
        let subnets = self.load_all::<Subnet>(keys::SUBNETS).await?;
        if caller.is_admin {
            return Ok(subnets
                .into_iter()
                .map(|(s, _)| Box::new(s) as Listed)
                .collect());
        }
        let visible_networks: std::collections::HashSet<String> = self
            .load_all::<Network>(keys::NETWORKS)
            .await?
            .into_iter()
            .filter(|(n, _)| n.visible_to(caller))
            .map(|(n, _)| n.meta.id)
            .collect();
        Ok(subnets
            .into_iter()
            .filter(|(s, _)| {
                caller.owns(&s.meta.project_id) || visible_networks.contains(&s.network_id)
            })
            .map(|(s, _)| Box::new(s) as Listed)
            .collect())
    }

    pub(crate) async fn update_subnet(
        &self,
        caller: &Caller,
        id: &str,
        body: Value,
        if_match: Option<u64>,
    ) -> Result<Object> {
        self.retry(|| {
            let body = body.clone();
            async move {
                let (mut subnet, rev) = self.owned_subnet(caller, id, "update_subnet").await?;
                check_revision(&subnet.meta, if_match)?;
                let old_gateway = subnet.gateway_ip;
                subnet.apply_update(body, &now())?;
                let mut txn = Txn::new().when(Compare::mod_revision(keys::subnet(id), rev));
                if let Some(gateway) = subnet.gateway_ip.filter(|g| Some(*g) != old_gateway) {
                    // The new gateway must not be an address a port holds.
                    let claim = keys::ipam(id, gateway);
                    if self
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
                txn = txn.then(Op::put(keys::subnet(id), encode(&subnet)?));
                Ok(if self.commit(txn).await? {
                    self.reset_low_water(id);
                    Attempt::Done(subnet.render())
                } else {
                    Attempt::Retry
                })
            }
        })
        .await
    }

    pub(crate) async fn delete_subnet(
        &self,
        caller: &Caller,
        id: &str,
        if_match: Option<u64>,
    ) -> Result<()> {
        self.retry(|| async move {
            let (subnet, rev) = self.owned_subnet(caller, id, "delete_subnet").await?;
            check_revision(&subnet.meta, if_match)?;
            let (mut network, net_rev) = self.must_load::<Network>(&subnet.network_id).await?;
            network.subnets.retain(|s| s != id);
            network.meta.touch(&now());
            let claims = keys::ipam_prefix(id);
            let txn = Txn::new()
                .when(Compare::mod_revision(keys::subnet(id), rev))
                .when(Compare::mod_revision(
                    keys::network(&network.meta.id),
                    net_rev,
                ))
                .when(Compare::prefix_empty(&claims))
                .then(Op::delete(keys::subnet(id)))
                .then(Op::put(keys::network(&network.meta.id), encode(&network)?));
            if self.commit(txn).await? {
                self.reset_low_water(id);
                return Ok(Attempt::Done(()));
            }
            if !self.index(&claims).await?.is_empty() {
                return Err(Error::SubnetInUse(id.to_owned()));
            }
            Ok(Attempt::Retry)
        })
        .await
    }
}
