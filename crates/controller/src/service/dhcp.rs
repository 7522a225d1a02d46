//! The DHCP port of each network, as Neutron's DHCP agent keeps it: one `network:dhcp` port
//! per network with an address on every subnet with `enable_dhcp`, taken right after the
//! subnet commits (so the first VM of a new subnet gets `.3`, after the gateway's `.1` and the
//! DHCP port's `.2`; a port created in that same instant may take `.2` first, as with
//! Neutron's DHCP agent, and the DHCP port then gets the next free address). No node holds it: every agent serves DHCP, DNS and metadata for its own
//! ports with this one MAC and these addresses, like the distributed router's gateway.
//!
//! Subnet create and update bring the port in line after they commit (a sweep repairs what a
//! crash in between left); subnet and network deletes take the port's addresses (or the
//! port) away in their own transaction, so they are never "in use" by it.

use isthmus_model::port::{dhcp_port_id, OWNER_DHCP};
use isthmus_model::{Caller, Error, Network, Port, Result, Subnet};
use isthmus_store::{Compare, Op, Txn};
use serde_json::json;

use super::{encode, now, Service};
use crate::keys;

/// The `device_id` of a network's DHCP port.
fn device_id(network_id: &str) -> String {
    format!("dhcp-{network_id}")
}

/// What a subnet or network delete must do about the DHCP port in its transaction.
pub(super) struct DhcpRelease {
    /// Compares and operations to add.
    pub txn: Txn,
    /// Keys under the subnet's claims (and the network's port index) the in-use checks skip.
    pub except: Vec<String>,
}

impl Service {
    /// The network's DHCP port, if it has one.
    async fn dhcp_port(&self, network_id: &str) -> Result<Option<(Port, u64)>> {
        self.load::<Port>(&dhcp_port_id(network_id)).await
    }

    /// Brings a network's DHCP port in line with its subnets: created with an address on each
    /// subnet with `enable_dhcp`, addresses added and removed as subnets turn DHCP on and off,
    /// deleted when none is left.
    pub(crate) async fn sync_dhcp_port(&self, network_id: &str) -> Result<()> {
        let Some((network, _)) = self.load::<Network>(network_id).await? else {
            return Ok(());
        };
        let subnets = self.subnets_of(&network).await?;
        let wanted: Vec<&Subnet> = subnets
            .iter()
            .map(|(s, _)| s)
            // Subnets reserved for other device owners (service types) get none, as Neutron's
            // DHCP agent makes none there.
            .filter(|s| s.enable_dhcp && !s.allocation_pools.is_empty() && s.serves(OWNER_DHCP))
            .collect();
        let id = dhcp_port_id(network_id);
        let admin = Caller::admin(&network.meta.project_id);
        match self.dhcp_port(network_id).await? {
            None if wanted.is_empty() => Ok(()),
            Some(_) if wanted.is_empty() => match self.delete_port_unchecked(&id).await {
                Ok(()) | Err(Error::NotFound { .. }) => Ok(()),
                Err(e) => Err(e),
            },
            None => {
                let fixed_ips: Vec<_> = wanted
                    .iter()
                    .map(|s| json!({"subnet_id": s.meta.id}))
                    .collect();
                let body = json!({"port": {
                    "network_id": network_id,
                    "project_id": network.meta.project_id,
                    "device_owner": OWNER_DHCP,
                    "device_id": device_id(network_id),
                    "port_security_enabled": false,
                    "fixed_ips": fixed_ips,
                }});
                match self.create_port(&admin, body, id.clone()).await {
                    Ok(_) => {}
                    // Another controller made it meanwhile.
                    Err(Error::Conflict(_)) if self.dhcp_port(network_id).await?.is_some() => {}
                    Err(e) => return Err(e),
                }
                // No one reports a distributed port's status: it is up wherever it is needed.
                self.set_dhcp_port_active(&id).await
            }
            Some((port, _)) => {
                let same = port.fixed_ips.len() == wanted.len()
                    && wanted
                        .iter()
                        .all(|s| port.fixed_ips.iter().any(|f| f.subnet_id == s.meta.id));
                if !same {
                    let keep = port
                        .fixed_ips
                        .iter()
                        .filter(|f| wanted.iter().any(|s| s.meta.id == f.subnet_id))
                        .map(|f| json!({"subnet_id": f.subnet_id, "ip_address": f.ip_address}));
                    let add = wanted
                        .iter()
                        .filter(|s| !port.fixed_ips.iter().any(|f| f.subnet_id == s.meta.id))
                        .map(|s| json!({"subnet_id": s.meta.id}));
                    let body = json!({"port": {"fixed_ips": keep.chain(add).collect::<Vec<_>>()}});
                    <Port as super::Kind>::update(self, &admin, &id, body, None).await?;
                }
                self.set_dhcp_port_active(&id).await
            }
        }
    }

    /// [`Service::sync_dhcp_port`] after a subnet change has committed: a failure is logged
    /// (the subnet stands; the sweep tries again).
    pub(super) async fn sync_dhcp_port_logged(&self, network_id: &str) {
        if let Err(e) = self.sync_dhcp_port(network_id).await {
            tracing::warn!("DHCP port of network {network_id} not synced: {e}");
        }
    }

    async fn set_dhcp_port_active(&self, id: &str) -> Result<()> {
        self.retry(|| async move {
            let Some((mut port, rev)) = self.load::<Port>(id).await? else {
                return Ok(super::Attempt::Done(()));
            };
            if port.status == "ACTIVE" {
                return Ok(super::Attempt::Done(()));
            }
            port.status = "ACTIVE".to_owned();
            port.meta.touch(&now());
            Ok(if self.write_back(id, rev, &port).await? {
                super::Attempt::Done(())
            } else {
                super::Attempt::Retry
            })
        })
        .await
    }

    /// Brings every network's DHCP port in line (repairs what a crash between a subnet's
    /// commit and its DHCP port's left); a network that cannot be synced now (its subnets
    /// full, say) is logged and the others still are. Returns how many networks it changed.
    pub async fn sweep_dhcp_ports(&self) -> Result<usize> {
        let mut changed = 0;
        for (network, _) in self.load_all::<Network>(keys::NETWORKS).await? {
            let id = &network.meta.id;
            let before = self.dhcp_port(id).await?.map(|(_, r)| r);
            if let Err(e) = self.sync_dhcp_port(id).await {
                tracing::warn!("DHCP port of network {id} not repaired: {e}");
                continue;
            }
            let after = self.dhcp_port(id).await?.map(|(_, r)| r);
            changed += usize::from(before != after);
        }
        Ok(changed)
    }

    /// What deleting `subnet` (`None`: the whole network) does to the network's DHCP port in
    /// the same transaction: its address on the subnet released, or the port deleted when no
    /// address (or no network) is left.
    pub(super) async fn release_dhcp(
        &self,
        network_id: &str,
        subnet_id: Option<&str>,
    ) -> Result<DhcpRelease> {
        let mut release = DhcpRelease {
            txn: Txn::new(),
            except: Vec::new(),
        };
        let Some((mut port, rev)) = self.dhcp_port(network_id).await? else {
            return Ok(release);
        };
        let id = port.meta.id.clone();
        let (gone, kept): (Vec<_>, Vec<_>) = port
            .fixed_ips
            .iter()
            .cloned()
            .partition(|f| subnet_id.is_none_or(|s| s == f.subnet_id));
        let mut txn = Txn::new().when(Compare::mod_revision(keys::port(&id), rev));
        for f in &gone {
            let claim = keys::ipam(&f.subnet_id, f.ip_address);
            release.except.push(claim.clone());
            txn = txn.then(Op::delete(claim));
        }
        if kept.is_empty() {
            release.except.push(keys::network_port(network_id, &id));
            txn = txn
                .then(Op::delete(keys::port(&id)))
                .then(Op::delete(keys::mac(network_id, &port.mac_address)))
                .then(Op::delete(keys::network_port(network_id, &id)));
        } else {
            port.fixed_ips = kept;
            port.meta.touch(&now());
            txn = txn.then(Op::put(keys::port(&id), encode(&port)?));
        }
        release.txn = txn;
        Ok(release)
    }
}
