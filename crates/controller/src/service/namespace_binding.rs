//! Namespace bindings: which network, and which project, the pods of a Kubernetes namespace
//! land on when their CNI configuration names no network. Held here so every node's agent
//! reads the same answer (the Kubernetes watcher will fill them from a namespace annotation);
//! every node's watch carries them.

use isthmus_model::namespace_binding::NamespaceBinding;
use isthmus_model::policy;
use isthmus_model::{Caller, Error, Network, Result};
use isthmus_store::{Compare, Op, Txn};
use serde_json::Value;

use super::{encode, now, store_error, Attempt, Object, Service};
use crate::keys;

/// Kubernetes namespace names are DNS-1123 labels.
fn valid_namespace(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
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
    /// `{"namespace_binding": {"network_id": "...", "project_id": "..."}}` (the project defaults
    /// to the network's). Returns whether it is new.
    pub async fn put_namespace_binding(
        &self,
        caller: &Caller,
        namespace: &str,
        body: Value,
    ) -> Result<(bool, Object)> {
        policy::authorize_caller("update_namespace_binding", caller)?;
        if !valid_namespace(namespace) {
            return Err(Error::invalid_attr(
                "namespace",
                format!("'{namespace}' is not a Kubernetes namespace name (DNS-1123 label)"),
            ));
        }
        let attrs = body
            .get("namespace_binding")
            .and_then(Value::as_object)
            .ok_or_else(|| {
                Error::BadRequest("Resource body required: {\"namespace_binding\": {...}}".into())
            })?;
        if let Some(k) = attrs
            .keys()
            .find(|k| !matches!(k.as_str(), "network_id" | "project_id" | "namespace"))
        {
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
        let project = text("project_id")?;
        self.retry(|| async {
            let (network, net_rev) = self.must_load::<Network>(&network_id).await?;
            let existing = self.load_binding(namespace).await?;
            let stamp = now();
            let binding = NamespaceBinding {
                namespace: namespace.to_owned(),
                network_id: network_id.clone(),
                project_id: project
                    .clone()
                    .unwrap_or_else(|| network.meta.project_id.clone()),
                created_at: existing
                    .as_ref()
                    .map(|(b, _)| b.created_at.clone())
                    .unwrap_or_else(|| stamp.clone()),
                updated_at: stamp,
            };
            let key = keys::namespace_binding(namespace);
            let txn = Txn::new()
                .when(Compare::mod_revision(
                    key.clone(),
                    existing.as_ref().map_or(0, |(_, r)| *r),
                ))
                // The network must still be there when the binding lands.
                .when(Compare::mod_revision(keys::network(&network_id), net_rev))
                .then(Op::put(key, encode(&binding)?));
            Ok(if self.commit(txn).await? {
                Attempt::Done((existing.is_none(), binding.render()))
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
        let (_, rev) = self
            .load_binding(namespace)
            .await?
            .ok_or_else(|| Error::not_found("NamespaceBinding", namespace))?;
        let key = keys::namespace_binding(namespace);
        let txn = Txn::new()
            .when(Compare::mod_revision(key.clone(), rev))
            .then(Op::delete(key));
        self.commit(txn).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::valid_namespace;

    #[test]
    fn namespace_names_are_dns_labels() {
        assert!(valid_namespace("team-a"));
        assert!(!valid_namespace("Team"));
        assert!(!valid_namespace("-a"));
        assert!(!valid_namespace(""));
        assert!(!valid_namespace(&"a".repeat(64)));
    }
}
