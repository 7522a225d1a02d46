//! Neutron's `network-ip-availability` extension: per network and subnet, how many pool
//! addresses exist and how many are allocated — read from the IPAM claims themselves, so a
//! leaked address shows up here.

use isthmus_model::policy;
use isthmus_model::{Caller, Error, Network, Result};
use serde_json::{json, Value};

use super::{store_error, Service};
use crate::keys;

/// A count as JSON: exact up to 2^64 - 1 (an IPv6 /64 pool), saturated beyond (JSON numbers
/// past u64 are not portable: serde_json cannot write them and most clients cannot read them).
fn json_count(n: u128) -> Value {
    json!(u64::try_from(n).unwrap_or(u64::MAX))
}

impl Service {
    async fn availability(&self, network: &Network) -> Result<Value> {
        let mut subnets = Vec::new();
        let (mut total, mut used) = (0u128, 0u128);
        for (subnet, _) in self.subnets_of(network).await? {
            let claims = self
                .store
                .range(&keys::ipam_prefix(&subnet.meta.id))
                .await
                .map_err(store_error)?;
            let size = subnet
                .allocation_pools
                .iter()
                .fold(0u128, |sum, p| sum.saturating_add(p.size()));
            let subnet_used = claims.kvs.len() as u128;
            total = total.saturating_add(size);
            used = used.saturating_add(subnet_used);
            subnets.push(json!({
                "subnet_id": subnet.meta.id,
                "subnet_name": subnet.meta.name,
                "cidr": subnet.cidr.to_string(),
                "ip_version": subnet.cidr.version().number(),
                "total_ips": json_count(size),
                "used_ips": json_count(subnet_used),
            }));
        }
        Ok(json!({
            "network_id": network.meta.id,
            "network_name": network.meta.name,
            "project_id": network.meta.project_id,
            "tenant_id": network.meta.project_id,
            "total_ips": json_count(total),
            "used_ips": json_count(used),
            "subnet_ip_availability": subnets,
        }))
    }

    /// IP availability of every network (admin only, as in Neutron).
    pub async fn list_ip_availabilities(&self, caller: &Caller) -> Result<Vec<Value>> {
        policy::authorize_caller("get_network_ip_availability", caller)?;
        let mut out = Vec::new();
        for (network, _) in self.load_all::<Network>(keys::NETWORKS).await? {
            out.push(self.availability(&network).await?);
        }
        Ok(out)
    }

    /// IP availability of one network.
    pub async fn show_ip_availability(&self, caller: &Caller, network_id: &str) -> Result<Value> {
        policy::authorize_caller("get_network_ip_availability", caller)?;
        let (network, _) = self
            .load::<Network>(network_id)
            .await?
            .ok_or_else(|| Error::not_found("Network", network_id))?;
        self.availability(&network).await
    }
}
