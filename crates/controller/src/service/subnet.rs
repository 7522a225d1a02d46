//! Subnet operations: overlap checks within a network, in-use checks on delete.

use std::collections::{HashMap, HashSet};

use async_trait::async_trait;
use isthmus_model::addr::{Cidr, IpVersion};
use isthmus_model::resource::{Resource, View};
use isthmus_model::subnet::PoolChoice;
use isthmus_model::{Caller, Error, Network, Result, Subnet, SubnetPool};
use isthmus_store::{Compare, Op, Txn};
use serde_json::Value;

use super::network::NETWORK_GRANTS;
use super::rbac::granted_ids;
use super::{encode, key_of, new_id, now, Attempt, Kind, Listed, Object, Service};
use crate::keys;

/// Smallest MTU IPv6 works on (RFC 8200).
const IPV6_MIN_MTU: u32 = 1280;

/// A network carrying IPv6 needs an MTU of at least 1280 (IPv4's 68 holds for every
/// network): a subnet that needs more than the network gives conflicts with it.
pub(crate) fn check_mtu(network: &Network, version: IpVersion) -> Result<()> {
    if version == IpVersion::V6 && network.mtu < IPV6_MIN_MTU {
        return Err(Error::Conflict(format!(
            "IPv6 subnets need an MTU of at least {IPV6_MIN_MTU}; network {} has {}",
            network.meta.id, network.mtu
        )));
    }
    Ok(())
}

#[async_trait]
impl Kind for Subnet {
    /// Its own, or on a network the caller may see.
    async fn visible(service: &Service, caller: &Caller, subnet: &Subnet) -> Result<bool> {
        if caller.owns(&subnet.meta.project_id) {
            return Ok(true);
        }
        match service.load::<Network>(&subnet.network_id).await? {
            Some((n, _)) => Network::visible(service, caller, &n).await,
            None => Ok(false),
        }
    }

    async fn list(service: &Service, caller: &Caller) -> Result<Vec<Listed>> {
        let subnets = service.load_all::<Subnet>(keys::SUBNETS).await?;
        let granted = if caller.is_privileged() {
            HashSet::new()
        } else {
            granted_ids(&service.all_grants().await?, caller, NETWORK_GRANTS)
        };
        // Network id → whether the caller sees it, and whether it is shared.
        let networks: HashMap<String, (bool, bool)> = service
            .load_all::<Network>(keys::NETWORKS)
            .await?
            .into_iter()
            .map(|(n, _)| {
                let visible = n.visible_to(caller) || granted.contains(&n.meta.id);
                (n.meta.id, (visible, n.shared))
            })
            .collect();
        Ok(subnets
            .into_iter()
            .filter_map(|(mut s, _)| {
                let (visible, shared) = networks.get(&s.network_id).copied().unwrap_or_default();
                s.shared = shared;
                (caller.owns(&s.meta.project_id) || visible)
                    .then(|| Box::new(View::owned(s, caller)) as Listed)
            })
            .collect())
    }

    async fn create(service: &Service, caller: &Caller, body: Value) -> Result<Object> {
        let request = Subnet::begin_create(body, caller, new_id(), &now())?;
        let created = service
            .retry(|| {
                let request = request.clone();
                async move {
                    let (mut network, net_rev) = service
                        .load_visible::<Network>(caller, &request.network_id)
                        .await?;
                    if !caller.owns(&network.meta.project_id) {
                        return Err(Error::PolicyNotAuthorized("rule:create_subnet".to_owned()));
                    }
                    let mut txn = Txn::new();
                    let id = request.id().to_owned();
                    let (cidr, pool_id) = match &request.pool {
                        PoolChoice::None => (
                            request.cidr.ok_or_else(|| {
                                Error::BadRequest(
                                    "A cidr must be specified in the absence of a subnet pool"
                                        .to_owned(),
                                )
                            })?,
                            None,
                        ),
                        choice => {
                            let wanted = match choice {
                                PoolChoice::Pool(p) => Some(p.as_str()),
                                _ => None,
                            };
                            let (pool, pool_rev) = service
                                .pool_for_subnet(caller, wanted, request.version)
                                .await?;
                            let pool_id = pool.meta.id.clone();
                            let lock = keys::pool_allocation_lock(&pool_id);
                            let lock_rev = service
                                .store
                                .get(&lock)
                                .await
                                .map_err(super::store_error)?
                                .map(|kv| kv.mod_revision);
                            let allocations = service.pool_allocations(&pool_id).await?;
                            let all: Vec<Cidr> = allocations.iter().map(|(_, c)| *c).collect();
                            let mine: Vec<Cidr> = allocations
                                .iter()
                                .filter(|(p, _)| p == request.project_id())
                                .map(|(_, c)| *c)
                                .collect();
                            let cidr = pool.allocate(request.cidr, request.prefixlen, &all, &mine)?;
                            txn = txn
                                .when(match lock_rev {
                                    Some(r) => Compare::mod_revision(lock.clone(), r),
                                    None => Compare::absent(lock.clone()),
                                })
                                .when(Compare::mod_revision(key_of::<SubnetPool>(&pool_id), pool_rev))
                                .then(Op::put(lock, id.clone()))
                                .then(Op::put(
                                    keys::pool_subnet(&pool_id, &id),
                                    format!("{} {cidr}", request.project_id()),
                                ));
                            (cidr, Some(pool_id))
                        }
                    };
                    let subnet = request.finish(cidr, pool_id)?;
                    check_mtu(&network, subnet.version())?;
                    for other_id in &network.subnets {
                        if let Some((other, _)) = service.load::<Subnet>(other_id).await? {
                            if other.cidr.overlaps(&subnet.cidr) {
                                return Err(Error::InvalidInput(format!(
                                    "Requested subnet with cidr: {} for network: {} overlaps with another subnet",
                                    subnet.cidr, network.meta.id
                                )));
                            }
                            if other.version() == subnet.version()
                                && other.subnetpool_id != subnet.subnetpool_id
                            {
                                return Err(Error::fault(
                                    "NetworkSubnetPoolAffinityError",
                                    400,
                                    "Subnets hosted on the same network must be allocated from the same subnet pool.",
                                ));
                            }
                        }
                    }
                    network.subnets.push(subnet.meta.id.clone());
                    network.meta.touch(&now());
                    let txn = txn
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
            .await?;
        service.sync_dhcp_port_logged(&request.network_id).await;
        Ok(created)
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
        service.sync_dhcp_port_logged(&subnet.network_id).await;
    }

    async fn delete_txn(service: &Service, _caller: &Caller, subnet: &Subnet) -> Result<Txn> {
        let id = &subnet.meta.id;
        let (mut network, net_rev) = service.must_load::<Network>(&subnet.network_id).await?;
        network.subnets.retain(|s| s != id);
        network.meta.touch(&now());
        // The DHCP port's address goes with the subnet (Neutron deletes it too).
        let dhcp = service.release_dhcp(&subnet.network_id, Some(id)).await?;
        let mut txn = dhcp.txn;
        if let Some(pool) = &subnet.subnetpool_id {
            txn = txn.then(Op::delete(keys::pool_subnet(pool, id)));
        }
        Ok(txn
            .when(Compare::mod_revision(
                keys::network(&network.meta.id),
                net_rev,
            ))
            .when(Compare::prefix_empty_except(
                keys::ipam_prefix(id),
                dhcp.except,
            ))
            .then(Op::put(keys::network(&network.meta.id), encode(&network)?)))
    }

    async fn in_use(service: &Service, subnet: &Subnet) -> Result<()> {
        let id = &subnet.meta.id;
        let except = service
            .release_dhcp(&subnet.network_id, Some(id))
            .await?
            .except;
        service
            .unused_except(&keys::ipam_prefix(id), &except, || {
                Error::SubnetInUse(id.clone())
            })
            .await
    }

    async fn deleted(service: &Service, subnet: &Subnet) {
        service.reset_low_water(&subnet.meta.id);
    }
}
