//! A namespace binding: the network, and the project, the pods of one Kubernetes namespace
//! land on when their CNI configuration names no network.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// One binding as stored and sent to agents.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamespaceBinding {
    /// The Kubernetes namespace.
    pub namespace: String,
    /// The network its pods join.
    pub network_id: String,
    /// The project their ports belong to.
    pub project_id: String,
    /// Security groups of their ports (empty: the project's default group).
    #[serde(default)]
    pub security_group_ids: Vec<String>,
    /// Who set it: the API, or the namespace's Kubernetes annotations (which win while
    /// present).
    #[serde(default)]
    pub origin: Origin,
    /// The Kubernetes cluster's DNS domain (bindings from annotations): pods of the namespace
    /// search `<namespace>.svc.<domain>`, `svc.<domain>` and `<domain>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_domain: Option<String>,
    /// When it was first set.
    pub created_at: String,
    /// When it last changed.
    pub updated_at: String,
}

/// Where a binding comes from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Origin {
    /// `PUT /isthmus/v1/namespace-bindings/{namespace}`.
    #[default]
    Api,
    /// The namespace's `isthmus.io/*` annotations, through the Kubernetes watcher.
    Kubernetes,
}

impl Origin {
    /// Its wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Origin::Api => "api",
            Origin::Kubernetes => "kubernetes",
        }
    }
}

impl NamespaceBinding {
    /// The wire form (its `id` is the namespace, so watch lines can name it).
    pub fn render(&self) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert("id".into(), Value::String(self.namespace.clone()));
        m.insert("namespace".into(), Value::String(self.namespace.clone()));
        m.insert("network_id".into(), Value::String(self.network_id.clone()));
        m.insert("project_id".into(), Value::String(self.project_id.clone()));
        m.insert(
            "security_group_ids".into(),
            Value::from(self.security_group_ids.clone()),
        );
        m.insert("origin".into(), Value::from(self.origin.as_str()));
        if let Some(domain) = &self.cluster_domain {
            m.insert("cluster_domain".into(), Value::from(domain.clone()));
        }
        m.insert("created_at".into(), Value::String(self.created_at.clone()));
        m.insert("updated_at".into(), Value::String(self.updated_at.clone()));
        m
    }
}
