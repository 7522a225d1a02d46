//! Network operations: VNI / physnet claims, visibility, in-use checks.

use std::collections::BTreeSet;

use isthmus_model::network::{NetworkType, NetworkView};
use isthmus_model::{Caller, Error, Network, Result, Subnet};
use isthmus_store::{Compare, Op, Txn};
use serde_json::Value;

use super::{check_revision, encode, new_id, now, store_error, Attempt, Listed, Object, Service};
use crate::keys;

impl Service {
    /// A network the caller may see, or 404.
    pub(crate) async fn visible_network(
        &self,
        caller: &Caller,
        id: &str,
    ) -> Result<(Network, u64)> {
        match self.load::<Network>(id).await? {
            Some((n, rev)) if n.visible_to(caller) => Ok((n, rev)),
            _ => Err(Error::not_found("Network", id)),
        }
    }

    /// A network the caller may change: 404 when invisible, 403 when only visible.
    async fn owned_network(
        &self,
        caller: &Caller,
        id: &str,
        action: &str,
    ) -> Result<(Network, u64)> {
        let (n, rev) = self.visible_network(caller, id).await?;
        if !caller.owns(&n.meta.project_id) {
            return Err(Error::PolicyNotAuthorized(format!("rule:{action}")));
        }
        Ok((n, rev))
    }

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

    fn release_vni(&self, vni: u32) {
        self.reserved_vnis
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&vni);
    }

    pub(crate) async fn create_network(&self, caller: &Caller, body: Value) -> Result<Object> {
        let created = Network::parse_create(body, caller, self.limits(), new_id(), &now())?;
        let requested_vni = created.network.segmentation_id;
        self.retry(|| {
            let mut network = created.network.clone();
            async move {
                let mut picked = None;
                let claim = match network.network_type {
                    NetworkType::Vxlan => {
                        let vni = match requested_vni {
                            Some(v) => v,
                            None => {
                                let v = self.pick_vni().await?.ok_or(Error::NoNetworkAvailable)?;
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
                let txn = Txn::new()
                    .when(Compare::absent(&claim))
                    .then(Op::put(claim.clone(), network.meta.id.clone()))
                    .then(Op::put(keys::network(&network.meta.id), encode(&network)?));
                let committed = self.commit(txn).await;
                if let Some(v) = picked {
                    self.release_vni(v);
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

    pub(crate) async fn show_network(&self, caller: &Caller, id: &str) -> Result<Object> {
        Ok(self.visible_network(caller, id).await?.0.render(caller))
    }

    pub(crate) async fn list_networks(&self, caller: &Caller) -> Result<Vec<Listed>> {
        Ok(self
            .load_all::<Network>(keys::NETWORKS)
            .await?
            .into_iter()
            .filter(|(n, _)| n.visible_to(caller))
            .map(|(obj, _)| {
                Box::new(NetworkView {
                    obj,
                    admin: caller.is_admin,
                }) as Listed
            })
            .collect())
    }

    pub(crate) async fn update_network(
        &self,
        caller: &Caller,
        id: &str,
        body: Value,
        if_match: Option<u64>,
    ) -> Result<Object> {
        self.retry(|| {
            let body = body.clone();
            async move {
                let (mut network, rev) = self.owned_network(caller, id, "update_network").await?;
                check_revision(&network.meta, if_match)?;
                network.apply_update(body, caller, self.limits(), &now())?;
                Ok(if self.write_back(id, rev, &network).await? {
                    Attempt::Done(network.render(caller))
                } else {
                    Attempt::Retry
                })
            }
        })
        .await
    }

    pub(crate) async fn delete_network(
        &self,
        caller: &Caller,
        id: &str,
        if_match: Option<u64>,
    ) -> Result<()> {
        self.retry(|| async move {
            let (network, rev) = self.owned_network(caller, id, "delete_network").await?;
            check_revision(&network.meta, if_match)?;
            let ports = keys::network_ports_prefix(id);
            let mut txn = Txn::new()
                .when(Compare::mod_revision(keys::network(id), rev))
                .when(Compare::prefix_empty(&ports))
                .then(Op::delete(keys::network(id)));
            if let Some(vni) = network.segmentation_id {
                txn = txn.then(Op::delete(keys::vni(vni)));
            }
            if let Some(physnet) = &network.physical_network {
                txn = txn.then(Op::delete(keys::flat(physnet)));
            }
            // Subnets go with their network (a subnet create bumps the network, so the
            // network's revision covers the list).
            for subnet_id in &network.subnets {
                if let Some((subnet, _)) = self.load::<Subnet>(subnet_id).await? {
                    txn = txn
                        .when(Compare::prefix_empty(keys::ipam_prefix(&subnet.meta.id)))
                        .then(Op::delete(keys::subnet(&subnet.meta.id)));
                }
            }
            if self.commit(txn).await? {
                return Ok(Attempt::Done(()));
            }
            if !self.index(&ports).await?.is_empty() {
                return Err(Error::NetworkInUse(id.to_owned()));
            }
            Ok(Attempt::Retry)
        })
        .await
    }
}
