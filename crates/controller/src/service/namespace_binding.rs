//! Namespace bindings: which network, and which project, the pods of a Kubernetes namespace
//! land on when their CNI configuration names no network. Held here so every node's agent
//! reads the same answer (the Kubernetes watcher will fill them from a namespace annotation);
//! every node's watch carries them.

use isthmus_model::input;
use isthmus_model::kubernetes::{is_dns_label, NamespaceIntent};
use isthmus_model::namespace_binding::{NamespaceBinding, Origin};
use isthmus_model::policy;
use isthmus_model::{Caller, Error, Network, Result, SecurityGroup};
use isthmus_store::{Compare, Op, Txn};
use serde_json::Value;

use super::{encode, now, store_error, Attempt, Object, Service};
use crate::keys;

/// A binding as asked for: the network and groups by id, the project when given.
struct Wanted {
    network: String,
    project: Option<String>,
    security_groups: Vec<String>,
    origin: Origin,
    cluster_domain: Option<String>,
}

impl Wanted {
    /// Whether `binding` already says this.
    fn matches(&self, binding: &NamespaceBinding) -> bool {
        binding.origin == self.origin
            && binding.network_id == self.network
            && self
                .project
                .as_ref()
                .is_none_or(|p| *p == binding.project_id)
            && binding.security_group_ids == self.security_groups
            && binding.cluster_domain == self.cluster_domain
    }
}

impl Service {
    async fn load_binding(&self, namespace: &str) -> Result<Option<(NamespaceBinding, u64)>> {
        let key = keys::namespace_binding(namespace);
        match self.store.get(&key).await.map_err(store_error)? {
            None => Ok(None),
            Some(kv) => serde_json::from_slice(&kv.value)
                .map(|b| Some((b, kv.mod_revision)))
                .map_err(|e| Error::Internal(format!("corrupt record {key}: {e}"))),
        }
    }

    /// Creates or replaces the binding of `namespace`:
    /// `{"namespace_binding": {"network_id": "...", "project_id": "...", "security_group_ids":
    /// [...]}}` (the project defaults to the network's, the groups to the project's default).
    /// Returns whether it is new. A binding set by the namespace's Kubernetes annotations is
    /// theirs while they are present (409).
    pub async fn put_namespace_binding(
        &self,
        caller: &Caller,
        namespace: &str,
        body: Value,
    ) -> Result<(bool, Object)> {
        policy::authorize_caller("update_namespace_binding", caller)?;
        let attrs = body
            .get("namespace_binding")
            .and_then(Value::as_object)
            .ok_or_else(|| {
                Error::BadRequest("Resource body required: {\"namespace_binding\": {...}}".into())
            })?;
        if let Some(k) = attrs.keys().find(|k| {
            !matches!(
                k.as_str(),
                "network_id" | "project_id" | "namespace" | "security_group_ids"
            )
        }) {
            return Err(Error::BadRequest(format!(
                "Unrecognized attribute(s) '{k}'"
            )));
        }
        let text = |k: &str| -> Result<Option<String>> {
            match attrs.get(k) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) if !s.is_empty() => Ok(Some(s.clone())),
                Some(_) => Err(Error::invalid_attr(k, "must be a non-empty string")),
            }
        };
        let network_id =
            text("network_id")?.ok_or_else(|| Error::invalid_attr("network_id", "is required"))?;
        let security_groups = match attrs.get("security_group_ids") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(ids)) => ids
                .iter()
                .map(|id| input::as_uuid("security_group_ids", id))
                .collect::<Result<_>>()?,
            Some(_) => {
                return Err(Error::invalid_attr(
                    "security_group_ids",
                    "must be a list of security group ids",
                ))
            }
        };
        let wanted = Wanted {
            network: input::as_uuid("network_id", &Value::String(network_id))?,
            project: text("project_id")?,
            security_groups,
            origin: Origin::Api,
            cluster_domain: None,
        };
        let (created, binding) = self.bind_namespace(namespace, &wanted).await?;
        Ok((created, binding.render()))
    }

    /// Makes the binding of `namespace` what its Kubernetes annotations ask for (network and
    /// groups by name or id) in the cluster of DNS domain `cluster_domain`; writes nothing
    /// when it already is. Returns whether it changed.
    pub async fn bind_namespace_from_annotations(
        &self,
        namespace: &str,
        intent: &NamespaceIntent,
        cluster_domain: &str,
    ) -> Result<bool> {
        let network = self.resolve_network(&intent.network).await?;
        let project = intent
            .project
            .clone()
            .unwrap_or_else(|| network.meta.project_id.clone());
        let mut security_groups = Vec::new();
        for group in &intent.security_groups {
            security_groups.push(self.resolve_security_group(group, &project).await?);
        }
        let wanted = Wanted {
            network: network.meta.id,
            project: Some(project),
            security_groups,
            origin: Origin::Kubernetes,
            cluster_domain: Some(cluster_domain.to_owned()),
        };
        if let Some((current, _)) = self.load_binding(namespace).await? {
            if wanted.matches(&current) {
                return Ok(false);
            }
        }
        self.bind_namespace(namespace, &wanted).await?;
        Ok(true)
    }

    /// Removes the binding of `namespace` if its Kubernetes annotations set it (the
    /// annotation is gone, or the namespace). Returns whether there was one.
    pub async fn unbind_namespace_from_annotations(&self, namespace: &str) -> Result<bool> {
        match self.load_binding(namespace).await? {
            Some((binding, rev)) if binding.origin == Origin::Kubernetes => {
                let key = keys::namespace_binding(namespace);
                let txn = Txn::new()
                    .when(Compare::mod_revision(key.clone(), rev))
                    .then(Op::delete(key));
                // Lost to a concurrent write: the next pass looks again.
                self.commit(txn).await
            }
            _ => Ok(false),
        }
    }

    /// The project of `namespace`'s pods, if it is bound.
    pub(crate) async fn namespace_project(&self, namespace: &str) -> Result<Option<String>> {
        Ok(self
            .load_binding(namespace)
            .await?
            .map(|(b, _)| b.project_id))
    }

    /// The security groups of `namespace`'s binding, if it is bound.
    pub(crate) async fn namespace_groups(&self, namespace: &str) -> Result<Option<Vec<String>>> {
        Ok(self
            .load_binding(namespace)
            .await?
            .map(|(b, _)| b.security_group_ids))
    }

    /// The namespaces whose binding came from Kubernetes annotations.
    pub async fn annotated_namespaces(&self) -> Result<Vec<String>> {
        Ok(self
            .load_all::<NamespaceBinding>(keys::NAMESPACE_BINDINGS)
            .await?
            .into_iter()
            .filter(|(b, _)| b.origin == Origin::Kubernetes)
            .map(|(b, _)| b.namespace)
            .collect())
    }

    /// Writes the binding of `namespace` (checked: network and groups exist, the groups
    /// belong to the binding's project).
    async fn bind_namespace(
        &self,
        namespace: &str,
        wanted: &Wanted,
    ) -> Result<(bool, NamespaceBinding)> {
        if !is_dns_label(namespace) {
            return Err(Error::invalid_attr(
                "namespace",
                format!("'{namespace}' is not a Kubernetes namespace name (DNS-1123 label)"),
            ));
        }
        self.retry(|| async {
            let (network, net_rev) = self.must_load::<Network>(&wanted.network).await?;
            let project = wanted
                .project
                .clone()
                .unwrap_or_else(|| network.meta.project_id.clone());
            let mut txn = Txn::new()
                // The network and groups must still be there when the binding lands.
                .when(Compare::mod_revision(
                    keys::network(&wanted.network),
                    net_rev,
                ));
            for id in &wanted.security_groups {
                let (group, rev) = self.must_load::<SecurityGroup>(id).await?;
                if group.meta.project_id != project {
                    return Err(Error::invalid_attr(
                        "security_group_ids",
                        format!("security group {id} is not of project {project}"),
                    ));
                }
                txn = txn.when(Compare::mod_revision(keys::security_group(id), rev));
            }
            let existing = self.load_binding(namespace).await?;
            if let Some((current, _)) = &existing {
                if current.origin == Origin::Kubernetes && wanted.origin == Origin::Api {
                    return Err(Error::Conflict(format!(
                        "The binding of namespace {namespace} is set by its Kubernetes annotations."
                    )));
                }
            }
            let stamp = now();
            let binding = NamespaceBinding {
                namespace: namespace.to_owned(),
                network_id: wanted.network.clone(),
                project_id: project,
                security_group_ids: wanted.security_groups.clone(),
                origin: wanted.origin,
                cluster_domain: wanted.cluster_domain.clone(),
                created_at: existing
                    .as_ref()
                    .map(|(b, _)| b.created_at.clone())
                    .unwrap_or_else(|| stamp.clone()),
                updated_at: stamp,
            };
            let key = keys::namespace_binding(namespace);
            let txn = txn
                .when(Compare::mod_revision(
                    key.clone(),
                    existing.as_ref().map_or(0, |(_, r)| *r),
                ))
                .then(Op::put(key, encode(&binding)?));
            Ok(if self.commit(txn).await? {
                Attempt::Done((existing.is_none(), binding))
            } else {
                Attempt::Retry
            })
        })
        .await
    }

    /// The binding of `namespace`, or 404 `NamespaceBindingNotFound`.
    pub async fn show_namespace_binding(&self, caller: &Caller, namespace: &str) -> Result<Object> {
        policy::authorize_caller("get_namespace_binding", caller)?;
        self.load_binding(namespace)
            .await?
            .map(|(b, _)| b.render())
            .ok_or_else(|| Error::not_found("NamespaceBinding", namespace))
    }

    /// Every binding, by namespace.
    pub async fn list_namespace_bindings(&self, caller: &Caller) -> Result<Vec<Object>> {
        policy::authorize_caller("get_namespace_binding", caller)?;
        let range = self
            .store
            .range(keys::NAMESPACE_BINDINGS)
            .await
            .map_err(store_error)?;
        range
            .kvs
            .iter()
            .map(|kv| {
                serde_json::from_slice::<NamespaceBinding>(&kv.value)
                    .map(|b| b.render())
                    .map_err(|e| Error::Internal(format!("corrupt record {}: {e}", kv.key)))
            })
            .collect()
    }

    /// Removes the binding of `namespace` (404 when there is none).
    pub async fn delete_namespace_binding(&self, caller: &Caller, namespace: &str) -> Result<()> {
        policy::authorize_caller("delete_namespace_binding", caller)?;
        let (binding, rev) = self
            .load_binding(namespace)
            .await?
            .ok_or_else(|| Error::not_found("NamespaceBinding", namespace))?;
        if binding.origin == Origin::Kubernetes {
            return Err(Error::Conflict(format!(
                "The binding of namespace {namespace} is set by its Kubernetes annotations."
            )));
        }
        let key = keys::namespace_binding(namespace);
        let txn = Txn::new()
            .when(Compare::mod_revision(key.clone(), rev))
            .then(Op::delete(key));
        self.commit(txn).await?;
        Ok(())
    }
}
