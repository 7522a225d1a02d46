//! Objects by the references people write: an id, or a name only one object has (in the
//! project, for security groups). Used where names come from outside the API (Kubernetes
//! annotations, command-line options).

use isthmus_model::input;
use isthmus_model::resource::Resource;
use isthmus_model::{Error, Network, Result, SecurityGroup, Subnet};
use serde::de::DeserializeOwned;

use super::{prefix_of, Service};

impl Service {
    /// An object of kind `T` by id, or the one object `in_scope` accepts named `reference`.
    async fn resolve<T: Resource + DeserializeOwned>(
        &self,
        reference: &str,
        in_scope: impl Fn(&T) -> bool,
    ) -> Result<T> {
        if input::is_uuid(reference) {
            if let Some((object, _)) = self.load::<T>(reference).await? {
                return Ok(object);
            }
        }
        let mut named: Vec<T> = self
            .load_all::<T>(&prefix_of::<T>())
            .await?
            .into_iter()
            .map(|(o, _)| o)
            .filter(|o| o.meta().name == reference && in_scope(o))
            .collect();
        let definition = T::definition();
        match named.len() {
            1 => Ok(named.remove(0)),
            0 => Err(Error::not_found(definition.fault, reference)),
            _ => Err(Error::Conflict(format!(
                "Several {} are named '{reference}'; use the id.",
                definition.plural
            ))),
        }
    }

    /// A network by id, or by a name no other network has.
    pub async fn resolve_network(&self, reference: &str) -> Result<Network> {
        self.resolve(reference, |_: &Network| true).await
    }

    /// A subnet by id, or by a name no other subnet has.
    pub async fn resolve_subnet(&self, reference: &str) -> Result<Subnet> {
        self.resolve(reference, |_: &Subnet| true).await
    }

    /// A security group's id, from its id or its name in `project`.
    pub async fn resolve_security_group(&self, reference: &str, project: &str) -> Result<String> {
        self.resolve(reference, |g: &SecurityGroup| g.meta.project_id == project)
            .await
            .map(|g| g.meta.id)
    }
}
