//! Objects by the references people write: an id, or a name only one object has (in the
//! project, for security groups). Used where names come from outside the API (Kubernetes
//! annotations, command-line options).

use isthmus_model::input;
use isthmus_model::{Error, Network, Result, SecurityGroup, Subnet};

use super::Service;
use crate::keys;

impl Service {
    /// A network by id, or by a name no other network has.
    pub async fn resolve_network(&self, reference: &str) -> Result<Network> {
        if input::is_uuid(reference) {
            if let Some((network, _)) = self.load::<Network>(reference).await? {
                return Ok(network);
            }
        }
        let mut named: Vec<Network> = self
            .load_all::<Network>(keys::NETWORKS)
            .await?
            .into_iter()
            .map(|(n, _)| n)
            .filter(|n| n.meta.name == reference)
            .collect();
        match named.len() {
            1 => Ok(named.remove(0)),
            0 => Err(Error::not_found("Network", reference)),
            _ => Err(Error::Conflict(format!(
                "Several networks are named '{reference}'; use its id."
            ))),
        }
    }

    /// A security group by id, or by its name in `project`.
    pub async fn resolve_security_group(&self, reference: &str, project: &str) -> Result<String> {
        if input::is_uuid(reference) && self.load::<SecurityGroup>(reference).await?.is_some() {
            return Ok(reference.to_owned());
        }
        let named: Vec<String> = self
            .load_all::<SecurityGroup>(keys::SECURITY_GROUPS)
            .await?
            .into_iter()
            .map(|(g, _)| g)
            .filter(|g| g.meta.name == reference && g.meta.project_id == project)
            .map(|g| g.meta.id)
            .collect();
        match named.as_slice() {
            [id] => Ok(id.clone()),
            [] => Err(Error::not_found("SecurityGroup", reference)),
            _ => Err(Error::Conflict(format!(
                "Several security groups of project {project} are named '{reference}'; use its id."
            ))),
        }
    }

    /// A subnet by id, or by a name no other subnet has.
    pub async fn resolve_subnet(&self, reference: &str) -> Result<Subnet> {
        if input::is_uuid(reference) {
            if let Some((subnet, _)) = self.load::<Subnet>(reference).await? {
                return Ok(subnet);
            }
        }
        let mut named: Vec<Subnet> = self
            .load_all::<Subnet>(keys::SUBNETS)
            .await?
            .into_iter()
            .map(|(s, _)| s)
            .filter(|s| s.meta.name == reference)
            .collect();
        match named.len() {
            1 => Ok(named.remove(0)),
            0 => Err(Error::not_found("Subnet", reference)),
            _ => Err(Error::Conflict(format!(
                "Several subnets are named '{reference}'; use its id."
            ))),
        }
    }
}
