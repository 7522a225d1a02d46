//! What the Kubernetes watcher decides, apart from talking to Kubernetes: which namespace
//! binding a namespace's annotations ask for, what a pod's port annotation says, and which pod
//! ports have outlived their pod. Objects come in as plain annotations, UIDs and ports, so all
//! of it is tested without an API server.

use std::collections::{BTreeMap, HashMap};

use serde_json::json;

use crate::input::is_uuid;
use crate::port::{Port, POD_DEVICE_OWNER};

pub mod policy;
pub mod service;

/// Whether `name` is a DNS-1123 label, as Kubernetes namespace and Service names are (checked
/// again here: they become store keys and DNS names).
pub fn is_dns_label(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

/// A Kubernetes `protocol` (absent: TCP) as a load balancer's or rule's protocol.
pub fn protocol(name: Option<&str>) -> Option<crate::lbaas::Protocol> {
    use crate::lbaas::Protocol;
    match name.unwrap_or("TCP") {
        "TCP" => Some(Protocol::Tcp),
        "UDP" => Some(Protocol::Udp),
        "SCTP" => Some(Protocol::Sctp),
        _ => None,
    }
}

/// Namespace annotation: the network (name or id) its pods join.
pub const NETWORK_ANNOTATION: &str = "isthmus.io/network";
/// Namespace annotation: the project its pods' ports belong to.
pub const PROJECT_ANNOTATION: &str = "isthmus.io/project";
/// Namespace annotation: security groups (names or ids, comma-separated) of its pods' ports.
pub const SECURITY_GROUPS_ANNOTATION: &str = "isthmus.io/security-groups";
/// Pod annotation: the pod's port (`{"id", "mac", "ips"}`), written once the CNI made it.
pub const PORT_ANNOTATION: &str = "isthmus.io/port";

/// Longest annotation value taken as a name or id (Neutron's names are at most 255).
const MAX_REFERENCE: usize = 255;
/// Most security groups a namespace may name.
const MAX_GROUPS: usize = 32;

/// What a namespace's annotations ask for: its pods land on `network` in `project` under
/// `security_groups` (names and ids, resolved by the controller).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamespaceIntent {
    /// The network, by name or id.
    pub network: String,
    /// The project, when given (else the network's).
    pub project: Option<String>,
    /// Security groups by name or id (empty: the project's default group).
    pub security_groups: Vec<String>,
}

fn reference(key: &str, value: &str) -> Result<String, String> {
    let value = value.trim();
    if value.is_empty() {
        return Err(format!("annotation {key} is empty"));
    }
    if value.len() > MAX_REFERENCE || value.chars().any(char::is_control) {
        return Err(format!(
            "annotation {key} is not a name or id (at most {MAX_REFERENCE} printable characters)"
        ));
    }
    Ok(value.to_owned())
}

impl NamespaceIntent {
    /// The intent of a namespace with these annotations: `None` without
    /// `isthmus.io/network`, an error (for the log) when an annotation is malformed.
    pub fn from_annotations(
        annotations: &BTreeMap<String, String>,
    ) -> Result<Option<NamespaceIntent>, String> {
        let Some(network) = annotations.get(NETWORK_ANNOTATION) else {
            return Ok(None);
        };
        let network = reference(NETWORK_ANNOTATION, network)?;
        let project = annotations
            .get(PROJECT_ANNOTATION)
            .map(|p| reference(PROJECT_ANNOTATION, p))
            .transpose()?;
        let mut security_groups: Vec<String> = Vec::new();
        if let Some(list) = annotations.get(SECURITY_GROUPS_ANNOTATION) {
            for item in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                let group = reference(SECURITY_GROUPS_ANNOTATION, item)?;
                if !security_groups.contains(&group) {
                    security_groups.push(group);
                }
            }
            if security_groups.len() > MAX_GROUPS {
                return Err(format!(
                    "annotation {SECURITY_GROUPS_ANNOTATION} names more than {MAX_GROUPS} groups"
                ));
            }
        }
        Ok(Some(NamespaceIntent {
            network,
            project,
            security_groups,
        }))
    }
}

/// The value of a pod's `isthmus.io/port` annotation for its port.
pub fn port_annotation(port: &Port) -> String {
    let ips: Vec<String> = port
        .fixed_ips
        .iter()
        .map(|ip| ip.ip_address.to_string())
        .collect();
    json!({"id": port.meta.id, "mac": port.mac_address, "ips": ips}).to_string()
}

/// The UID of the Kubernetes pod `port` was made for by the CNI plugin, if it is a pod's
/// port: `device_owner` `compute:kubernetes`, a pod UID as `device_id`, made for a runtime's
/// container (ports waiting in a pool and ports of runtimes outside Kubernetes have none).
pub fn pod_uid(port: &Port) -> Option<&str> {
    (port.device_owner == POD_DEVICE_OWNER
        && is_uuid(&port.device_id)
        && port.binding.profile.contains_key("cni_container_id"))
    .then_some(port.device_id.as_str())
}

/// A pod port to delete: its pod is gone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Orphan {
    /// The port.
    pub port_id: String,
    /// The pod it was made for.
    pub pod_uid: String,
    /// Its `revision_number` when seen (deleted only if still at it).
    pub revision: u64,
}

/// Pod ports whose pod has left the cluster, deleted once they have been orphans for a
/// grace period (a pod's port is made before the watcher may have seen the pod, and a pod
/// whose runtime never called DEL would otherwise leak its port and address forever).
#[derive(Debug, Default)]
pub struct Orphans {
    /// Port id → (pod UID, second it was first seen without its pod).
    since: HashMap<String, (String, u64)>,
}

impl Orphans {
    /// Looks at `ports` at second `now`, with `live` telling whether a pod UID exists in the
    /// cluster: returns the ports orphaned for at least `grace` seconds. A port whose
    /// pod shows up again, or that is gone, is forgotten.
    pub fn sweep(
        &mut self,
        now: u64,
        grace: u64,
        ports: impl IntoIterator<Item = impl std::borrow::Borrow<Port>>,
        live: impl Fn(&str) -> bool,
    ) -> Vec<Orphan> {
        let mut seen: HashMap<String, (String, u64)> = HashMap::new();
        let mut expired = Vec::new();
        for port in ports {
            let port = port.borrow();
            let Some(uid) = pod_uid(port) else { continue };
            if live(uid) {
                continue;
            }
            let since = match self.since.get(&port.meta.id) {
                Some((known, since)) if known == uid => *since,
                _ => now,
            };
            if now.saturating_sub(since) >= grace {
                expired.push(Orphan {
                    port_id: port.meta.id.clone(),
                    pod_uid: uid.to_owned(),
                    revision: port.meta.revision_number,
                });
            }
            seen.insert(port.meta.id.clone(), (uid.to_owned(), since));
        }
        self.since = seen;
        expired
    }

    /// Ports waiting out their grace period.
    pub fn pending(&self) -> usize {
        self.since.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::port::{Binding, FixedIp};
    use crate::Meta;

    fn annotations(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn names_are_dns_labels() {
        assert!(is_dns_label("team-a"));
        assert!(!is_dns_label("Team"));
        assert!(!is_dns_label("-a"));
        assert!(!is_dns_label("a/b"));
        assert!(!is_dns_label(""));
        assert!(!is_dns_label(&"a".repeat(64)));
    }

    #[test]
    fn a_namespace_without_the_network_annotation_asks_for_nothing() {
        let a = annotations(&[(PROJECT_ANNOTATION, "p")]);
        assert_eq!(NamespaceIntent::from_annotations(&a), Ok(None));
    }

    #[test]
    fn namespace_annotations_give_network_project_and_groups() {
        let a = annotations(&[
            (NETWORK_ANNOTATION, " pods "),
            (PROJECT_ANNOTATION, "team-b"),
            (SECURITY_GROUPS_ANNOTATION, "web, default,,web"),
        ]);
        let intent = NamespaceIntent::from_annotations(&a).unwrap().unwrap();
        assert_eq!(intent.network, "pods");
        assert_eq!(intent.project.as_deref(), Some("team-b"));
        assert_eq!(intent.security_groups, ["web", "default"]);
    }

    #[test]
    fn malformed_namespace_annotations_are_errors() {
        for bad in [
            annotations(&[(NETWORK_ANNOTATION, "  ")]),
            annotations(&[(NETWORK_ANNOTATION, "a\nb")]),
            annotations(&[(NETWORK_ANNOTATION, &"n".repeat(256))]),
            annotations(&[(NETWORK_ANNOTATION, "n"), (PROJECT_ANNOTATION, "")]),
            annotations(&[
                (NETWORK_ANNOTATION, "n"),
                (
                    SECURITY_GROUPS_ANNOTATION,
                    &(0..33)
                        .map(|i| format!("g{i}"))
                        .collect::<Vec<_>>()
                        .join(","),
                ),
            ]),
        ] {
            assert!(NamespaceIntent::from_annotations(&bad).is_err(), "{bad:?}");
        }
    }

    const UID: &str = "6b1f0b52-8a4c-4bd5-9a0e-2f3b1c0d9e11";

    fn pod_port(id: &str, uid: &str) -> Port {
        let mut profile = serde_json::Map::new();
        profile.insert("cni_container_id".into(), json!("abc"));
        Port {
            meta: Meta::new(id.to_owned(), "p".to_owned(), "2026-12-05T00:00:00Z"),
            network_id: "n".into(),
            admin_state_up: true,
            mac_address: "fa:16:3e:00:00:01".into(),
            fixed_ips: vec![FixedIp {
                subnet_id: "s".into(),
                ip_address: "10.0.0.4".parse().unwrap(),
            }],
            device_id: uid.to_owned(),
            device_owner: POD_DEVICE_OWNER.to_owned(),
            security_groups: vec![],
            port_security_enabled: true,
            allowed_address_pairs: vec![],
            extra_dhcp_opts: vec![],
            dns_name: String::new(),
            dns_domain: String::new(),
            binding: Binding {
                host_id: "node1".into(),
                profile,
                vnic_type: "normal".into(),
            },
            status: "ACTIVE".into(),
            trunk: None,
        }
    }

    #[test]
    fn the_port_annotation_names_id_mac_and_addresses() {
        let value: serde_json::Value =
            serde_json::from_str(&port_annotation(&pod_port("p1", UID))).unwrap();
        assert_eq!(
            value,
            json!({"id": "p1", "mac": "fa:16:3e:00:00:01", "ips": ["10.0.0.4"]})
        );
    }

    #[test]
    fn only_ports_the_plugin_made_for_a_pod_have_a_pod_uid() {
        assert_eq!(pod_uid(&pod_port("p", UID)), Some(UID));
        let mut pool = pod_port("p", "isthmus-pool");
        assert_eq!(pod_uid(&pool), None);
        pool.device_id = UID.into();
        pool.binding.profile.clear();
        assert_eq!(pod_uid(&pool), None, "no container: not made by the plugin");
        let mut vm = pod_port("p", UID);
        vm.device_owner = "compute:nova".into();
        assert_eq!(pod_uid(&vm), None);
    }

    #[test]
    fn orphaned_ports_go_after_the_grace_period_and_not_before() {
        let mut orphans = Orphans::default();
        let ports = [
            pod_port("gone", UID),
            pod_port("alive", "11111111-2222-4333-8444-555555555555"),
        ];
        let live = |uid: &str| uid.starts_with("1111");
        assert!(orphans.sweep(100, 30, &ports, live).is_empty());
        assert_eq!(orphans.pending(), 1);
        assert!(orphans.sweep(129, 30, &ports, live).is_empty());
        let ids = |o: Vec<Orphan>| o.into_iter().map(|o| o.port_id).collect::<Vec<_>>();
        let expired = orphans.sweep(130, 30, &ports, live);
        assert_eq!(expired[0].pod_uid, UID);
        assert_eq!(ids(expired), ["gone"]);
        // The pod came back (the watcher had not seen it yet): the clock starts over.
        assert!(orphans.sweep(131, 30, &ports, |_| true).is_empty());
        assert_eq!(orphans.pending(), 0);
        assert!(orphans.sweep(132, 30, &ports, live).is_empty());
        // A port reused for another pod is a new orphan.
        let reused = [pod_port("gone", "22222222-2222-4333-8444-555555555555")];
        assert!(orphans.sweep(170, 30, &reused, live).is_empty());
        assert_eq!(ids(orphans.sweep(200, 30, &reused, live)), ["gone"]);
    }
}
