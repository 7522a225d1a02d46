//! The `standard-attr-tag` sub-resource: `/v2.0/{collection}/{id}/tags[/{tag}]`.

use isthmus_model::meta::{normalize_tags, validate_tag};
use isthmus_model::{
    Caller, Error, FloatingIp, Network, Port, Result, Router, SecurityGroup, Subnet,
};
use isthmus_store::{Compare, Op, Txn};

use super::{encode, now, Attempt, Kind, Service, Stored};

/// A change to a resource's tags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TagOp {
    /// Replace all tags.
    Replace(Vec<String>),
    /// Add one tag.
    Add(String),
    /// Remove one tag (404 `TagNotFound` if absent).
    Remove(String),
    /// Remove every tag.
    Clear,
}

impl Service {
    async fn change_tags<T: Stored>(
        &self,
        caller: &Caller,
        id: &str,
        op: &TagOp,
    ) -> Result<Vec<String>> {
        if let TagOp::Add(tag) | TagOp::Remove(tag) = op {
            validate_tag(tag)?;
        }
        let replacement = match op {
            TagOp::Replace(tags) => Some(normalize_tags(tags.clone())?),
            _ => None,
        };
        self.retry(|| {
            let replacement = replacement.clone();
            async move {
                let (mut obj, rev) = self.load_owned::<T>(caller, id).await?;
                let tags = &mut obj.meta_mut().tags;
                match op {
                    TagOp::Replace(_) => *tags = replacement.unwrap_or_default(),
                    TagOp::Add(tag) => {
                        if !tags.contains(tag) {
                            tags.push(tag.clone());
                            tags.sort();
                        }
                    }
                    TagOp::Remove(tag) => {
                        let before = tags.len();
                        tags.retain(|t| t != tag);
                        if tags.len() == before {
                            return Err(Error::NotFound {
                                kind: "Tag",
                                id: format!("{tag} on {id}"),
                            });
                        }
                    }
                    TagOp::Clear => tags.clear(),
                }
                let result = obj.meta().tags.clone();
                obj.meta_mut().touch(&now());
                let txn = Txn::new()
                    .when(Compare::mod_revision(T::key(id), rev))
                    .then(Op::put(T::key(id), encode(&obj)?));
                Ok(if self.commit(txn).await? {
                    Attempt::Done(result)
                } else {
                    Attempt::Retry
                })
            }
        })
        .await
    }

    /// Applies a tag change and returns the resulting tags.
    pub async fn update_tags(
        &self,
        kind: Kind,
        caller: &Caller,
        id: &str,
        op: TagOp,
    ) -> Result<Vec<String>> {
        match kind {
            Kind::Network => self.change_tags::<Network>(caller, id, &op).await,
            Kind::Subnet => self.change_tags::<Subnet>(caller, id, &op).await,
            Kind::Port => self.change_tags::<Port>(caller, id, &op).await,
            Kind::SecurityGroup => self.change_tags::<SecurityGroup>(caller, id, &op).await,
            Kind::Router => self.change_tags::<Router>(caller, id, &op).await,
            Kind::FloatingIp => self.change_tags::<FloatingIp>(caller, id, &op).await,
            Kind::SecurityGroupRule => Err(Error::PathNotFound),
        }
    }

    /// The tags of a resource.
    pub async fn tags(&self, kind: Kind, caller: &Caller, id: &str) -> Result<Vec<String>> {
        Ok(match kind {
            Kind::Network => self.load_owned::<Network>(caller, id).await?.0.meta.tags,
            Kind::Subnet => self.load_owned::<Subnet>(caller, id).await?.0.meta.tags,
            Kind::Port => self.load_owned::<Port>(caller, id).await?.0.meta.tags,
            Kind::SecurityGroup => {
                self.load_owned::<SecurityGroup>(caller, id)
                    .await?
                    .0
                    .meta
                    .tags
            }
            Kind::Router => self.load_owned::<Router>(caller, id).await?.0.meta.tags,
            Kind::FloatingIp => self.load_owned::<FloatingIp>(caller, id).await?.0.meta.tags,
            Kind::SecurityGroupRule => return Err(Error::PathNotFound),
        })
    }
}
