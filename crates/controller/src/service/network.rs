//! Network operations: VNI / physnet claims, visibility, in-use checks.

use std::collections::{BTreeSet, HashMap};

use async_trait::async_trait;
use isthmus_model::network::NetworkType;
use isthmus_model::rbac::Action;
use isthmus_model::resource::{Resource, View};
use isthmus_model::{Caller, Error, Network, Result, Subnet, SubnetPool};
use isthmus_store::{Compare, Op, Txn};
use serde_json::Value;

use super::rbac::{granted_ids, visible_with_grants};
use super::{encode, new_id, now, store_error, Attempt, Kind, Listed, Object, Service};
use crate::keys;

impl Service {
    /// Lowest VNI of the range that is neither claimed in the store nor held in-process.
    async fn pick_vni(&self) -> Result<Option<u32>> {
        let claimed: BTreeSet<u32> = self
            .store
            .range(keys::VNIS)
            .await
            .map_err(store_error)?
            .kvs
            .iter()
            .filter_map(|kv| keys::last_segment(&kv.key).parse().ok())
            .collect();
        let mut reserved = self.reserved_vnis.lock().unwrap_or_else(|e| e.into_inner());
        let (low, high) = self.config.vni_range;
        let mut candidate = low;
        while candidate <= high && (claimed.contains(&candidate) || reserved.contains(&candidate)) {
            candidate += 1;
        }
        if candidate > high {
            return Ok(None);
        }
        reserved.insert(candidate);
        Ok(Some(candidate))
    }

    /// Releases a VNI reservation (a staged request keeps it until it commits).
    pub(crate) fn release_vni(&self, vni: u32) {
        if crate::staged::Staged::hold_vni(vni) {
            return;
        }
        self.reserved_vnis
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&vni);
    }
}

impl Service {
    /// Subnet pool → its address scope, for every pool in one.
    async fn pool_scopes(&self) -> Result<HashMap<String, String>> {
        Ok(self
            .load_all::<SubnetPool>(&super::prefix_of::<SubnetPool>())
            .await?
            .into_iter()
            .filter_map(|(p, _)| p.address_scope_id.map(|s| (p.meta.id, s)))
            .collect())
    }
}

/// Network → the address scopes (IPv4, IPv6) of its subnets' pools (`pool_scopes`: pool →
/// scope).
fn scopes_by_network<'a>(
    subnets: impl IntoIterator<Item = &'a Subnet>,
    pool_scopes: &HashMap<String, String>,
) -> HashMap<String, (Option<String>, Option<String>)> {
    let mut out: HashMap<String, (Option<String>, Option<String>)> = HashMap::new();
    for subnet in subnets {
        let Some(scope) = subnet
            .subnetpool_id
            .as_ref()
            .and_then(|p| pool_scopes.get(p))
        else {
            continue;
        };
        let found = out.entry(subnet.network_id.clone()).or_default();
        let slot = match subnet.version() {
            isthmus_model::addr::IpVersion::V4 => &mut found.0,
            isthmus_model::addr::IpVersion::V6 => &mut found.1,
        };
        slot.get_or_insert_with(|| scope.clone());
    }
    out
}

/// What RBAC policies can grant on a network: either makes it visible.
pub(crate) const NETWORK_GRANTS: &[Action] = &[Action::AccessAsShared, Action::AccessAsExternal];

#[async_trait]
impl Kind for Network {
    async fn visible(service: &Service, caller: &Caller, network: &Network) -> Result<bool> {
        visible_with_grants(service, caller, network, NETWORK_GRANTS).await
    }

    async fn list(service: &Service, caller: &Caller) -> Result<Vec<Listed>> {
        let granted = granted_ids(&service.all_grants().await?, caller, NETWORK_GRANTS);
        let scopes = service.pool_scopes().await?;
        // One read of the subnets for every network, and none while no pool is in a scope.
        let mut by_network = if scopes.is_empty() {
            HashMap::new()
        } else {
            let subnets = service.load_all::<Subnet>(keys::SUBNETS).await?;
            scopes_by_network(subnets.iter().map(|(s, _)| s), &scopes)
        };
        Ok(service
            .load_all::<Network>(keys::NETWORKS)
            .await?
            .into_iter()
            .filter(|(n, _)| n.visible_to(caller) || granted.contains(&n.meta.id))
            .map(|(mut n, _)| {
                n.address_scopes = by_network.remove(&n.meta.id).unwrap_or_default();
                Box::new(View::owned(n, caller)) as Listed
            })
            .collect())
    }

    async fn complete(service: &Service, mut network: Network) -> Result<Network> {
        let scopes = service.pool_scopes().await?;
        if !scopes.is_empty() {
            let mut subnets = Vec::with_capacity(network.subnets.len());
            for id in &network.subnets {
                if let Some((subnet, _)) = service.load::<Subnet>(id).await? {
                    subnets.push(subnet);
                }
            }
            network.address_scopes = scopes_by_network(&subnets, &scopes)
                .remove(&network.meta.id)
                .unwrap_or_default();
        }
        Ok(network)
    }

    async fn create(service: &Service, caller: &Caller, body: Value) -> Result<Object> {
        let created = Network::parse_create(body, caller, service.limits(), new_id(), &now())?;
        let requested_vni = created.network.segmentation_id;
        service
            .retry(|| {
                let mut network = created.network.clone();
                async move {
                    let mut picked = None;
                    let claim = match network.network_type {
                        NetworkType::Vxlan => {
                            let vni = match requested_vni {
                                Some(v) => v,
                                None => {
                                    let v = service
                                        .pick_vni()
                                        .await?
                                        .ok_or(Error::NoNetworkAvailable)?;
                                    picked = Some(v);
                                    v
                                }
                            };
                            network.segmentation_id = Some(vni);
                            keys::vni(vni)
                        }
                        NetworkType::Flat => {
                            keys::flat(network.physical_network.as_deref().unwrap_or_default())
                        }
                    };
                    let mut txn = Txn::new()
                        .when(Compare::absent(&claim))
                        .then(Op::put(claim.clone(), network.meta.id.clone()))
                        .then(Op::put(keys::network(&network.meta.id), encode(&network)?));
                    if network.shared {
                        txn = Service::share_network(txn, &network)?;
                    }
                    let committed = service.commit(txn).await;
                    if let Some(v) = picked {
                        service.release_vni(v);
                    }
                    if committed? {
                        return Ok(Attempt::Done(network.render(caller)));
                    }
                    if picked.is_some() {
                        return Ok(Attempt::Retry);
                    }
                    Err(match network.network_type {
                        NetworkType::Vxlan => Error::SegmentInUse {
                            kind: "TunnelIdInUse",
                            message: format!(
                                "Unable to create the network. The tunnel ID {} is in use.",
                                requested_vni.unwrap_or_default()
                            ),
                        },
                        NetworkType::Flat => Error::SegmentInUse {
                            kind: "FlatNetworkInUse",
                            message: format!(
                                "Unable to create the flat network. Physical network {} is in use.",
                                network.physical_network.as_deref().unwrap_or_default()
                            ),
                        },
                    })
                }
            })
            .await
    }

    async fn apply_update(
        service: &Service,
        _caller: &Caller,
        network: &mut Network,
        body: Value,
    ) -> Result<Txn> {
        let was_shared = network.shared;
        network.apply_update(body, service.limits(), &now())?;
        // Its subnets' families bound the MTU; the network's revision covers its subnet list.
        for subnet_id in &network.subnets {
            if let Some((subnet, _)) = service.load::<Subnet>(subnet_id).await? {
                super::subnet::check_mtu(network, subnet.version())?;
            }
        }
        // Sharing with everyone is a wildcard RBAC policy, made or removed with the flag.
        match (was_shared, network.shared) {
            (false, true) => Service::share_network(Txn::new(), network),
            (true, false) => service.unshare_network(Txn::new(), &network.meta.id).await,
            _ => Ok(Txn::new()),
        }
    }

    async fn delete_txn(service: &Service, _caller: &Caller, network: &Network) -> Result<Txn> {
        let id = &network.meta.id;
        // Its DHCP port goes with it (Neutron deletes it too).
        let dhcp = service.release_dhcp(id, None).await?;
        let mut txn = dhcp.txn.when(Compare::prefix_empty_except(
            keys::network_ports_prefix(id),
            dhcp.except.clone(),
        ));
        if let Some(vni) = network.segmentation_id {
            txn = txn.then(Op::delete(keys::vni(vni)));
        }
        if let Some(physnet) = &network.physical_network {
            txn = txn.then(Op::delete(keys::flat(physnet)));
        }
        // Subnets go with their network (a subnet create bumps the network, so the
        // network's revision covers the list).
        for subnet_id in &network.subnets {
            if let Some((subnet, _)) = service.load::<Subnet>(subnet_id).await? {
                txn = txn
                    .when(Compare::prefix_empty_except(
                        keys::ipam_prefix(&subnet.meta.id),
                        dhcp.except.clone(),
                    ))
                    .then(Op::delete(keys::subnet(&subnet.meta.id)));
                if let Some(pool) = &subnet.subnetpool_id {
                    txn = txn.then(Op::delete(keys::pool_subnet(pool, &subnet.meta.id)));
                }
            }
        }
        service.drop_policies(txn, id).await
    }

    async fn in_use(service: &Service, network: &Network) -> Result<()> {
        let id = &network.meta.id;
        let except = service.release_dhcp(id, None).await?.except;
        service
            .unused_except(&keys::network_ports_prefix(id), &except, || {
                Error::NetworkInUse(id.clone())
            })
            .await
    }
}
