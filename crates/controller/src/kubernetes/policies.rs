//! NetworkPolicies → security groups. A pass reads every policy, pod and namespace from the
//! reflectors and the pods' addresses from their ports, and when any of that changed makes
//! the groups and the pods' ports what `isthmus_model::kubernetes::policy` says: one group per
//! policy (tagged with its UID), allow-all helper groups per project, and on each pod's port
//! the groups of the policies selecting it (its namespace's groups again once none does). The
//! groups are ordinary Neutron security groups, visible in `openstack security group list`.

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use isthmus_model::addr::{Cidr, IpVersion};
use isthmus_model::kubernetes::policy::{
    group_rules, pod_groups, policy_tag, Direction, GroupRule, Helper, Operator, Peer, PodInfo,
    Policy, PortSpec, Requirement, Rule, Selector, POLICY_TAG_PREFIX,
};
use isthmus_model::kubernetes::{pod_uid, protocol};
use isthmus_model::lbaas::Protocol;
use isthmus_model::port::POD_DEVICE_OWNER;
use isthmus_model::{Caller, Error, Result, SecurityGroup, SecurityGroupRule};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::networking::v1::{NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::Api;
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::Store;
use kube::Client;
use serde_json::{json, Value};
use tokio::sync::Notify;

use super::Cache;
use crate::{keys, Registry, Service};

/// Tag of the helper group that allows all ingress.
const ALL_INGRESS_TAG: &str = "k8s-np-helper:ingress";
/// Tag of the helper group that allows all egress.
const ALL_EGRESS_TAG: &str = "k8s-np-helper:egress";

fn helper_tag(helper: Helper) -> &'static str {
    match helper {
        Helper::AllIngress => ALL_INGRESS_TAG,
        Helper::AllEgress => ALL_EGRESS_TAG,
    }
}

/// Whether a group is one this module manages (a policy's or a helper).
fn managed(group: &SecurityGroup) -> bool {
    group
        .meta
        .tags
        .iter()
        .any(|t| t.starts_with(POLICY_TAG_PREFIX) || t == ALL_INGRESS_TAG || t == ALL_EGRESS_TAG)
}

/// The managed group of `project` tagged `tag`.
fn tagged<'a>(groups: &'a [SecurityGroup], tag: &str, project: &str) -> Option<&'a SecurityGroup> {
    groups
        .iter()
        .find(|g| g.meta.project_id == project && g.meta.tags.iter().any(|t| t == tag))
}

/// A pod's port as the pass needs it.
struct PodPort {
    id: String,
    project: String,
    groups: BTreeSet<String>,
}

/// The NetworkPolicy part of the watcher.
pub(super) struct Policies {
    policies: Cache<NetworkPolicy>,
    /// Fingerprint of the inputs the last successful pass applied.
    applied: Option<u64>,
    /// Why the last pass failed (said once; it is tried again on every change).
    failing: Option<String>,
    neutron: Registry,
}

impl Policies {
    /// Starts the reflector.
    pub(super) fn start(client: &Client, changed: Arc<Notify>) -> Self {
        Policies {
            policies: Cache::start(Api::all(client.clone()), "networkpolicies", changed, |_| {}),
            applied: None,
            failing: None,
            neutron: Registry::neutron(),
        }
    }

    /// Makes the next pass apply everything again.
    pub(super) fn forget(&mut self) {
        self.applied = None;
    }

    /// Brings the groups and the pods' ports in line, when anything they depend on changed.
    pub(super) async fn sync(
        &mut self,
        service: &Service,
        pods: &Store<Pod>,
        namespaces: &Store<PartialObjectMeta<Namespace>>,
    ) {
        if !self.policies.ready() {
            return;
        }
        let mut policies: Vec<Policy> = Vec::new();
        let mut refused: Vec<String> = Vec::new();
        for np in self.policies.store.state() {
            match policy(&np) {
                Ok(p) => policies.push(p),
                Err(why) => refused.push(why),
            }
        }
        policies.sort_by(|a, b| a.uid.cmp(&b.uid));
        refused.sort();
        let labels: BTreeMap<String, BTreeMap<String, String>> = namespaces
            .state()
            .iter()
            .filter_map(|n| {
                Some((
                    n.metadata.name.clone()?,
                    n.metadata
                        .labels
                        .clone()
                        .unwrap_or_default()
                        .into_iter()
                        .collect(),
                ))
            })
            .collect();
        let (infos, ports) = pod_infos(service, pods);
        let mut hasher = DefaultHasher::new();
        (&policies, &refused, &labels, &infos).hash(&mut hasher);
        for (uid, port) in &ports {
            (uid, &port.id, &port.project, &port.groups).hash(&mut hasher);
        }
        let fingerprint = hasher.finish();
        if self.applied == Some(fingerprint) {
            return;
        }
        for why in &refused {
            tracing::warn!("{why}; not applied");
        }
        match self
            .apply(service, &policies, &labels, &infos, &ports)
            .await
        {
            Ok(()) => {
                self.applied = Some(fingerprint);
                self.failing = None;
            }
            Err(e) => {
                let why = e.to_string();
                if self.failing.as_ref() != Some(&why) {
                    tracing::warn!("applying NetworkPolicies: {why}");
                    self.failing = Some(why);
                }
                self.applied = None;
            }
        }
    }

    async fn apply(
        &self,
        service: &Service,
        policies: &[Policy],
        labels: &BTreeMap<String, BTreeMap<String, String>>,
        infos: &[PodInfo],
        ports: &BTreeMap<String, PodPort>,
    ) -> Result<()> {
        let groups: Vec<SecurityGroup> = service
            .load_all::<SecurityGroup>(keys::SECURITY_GROUPS)
            .await?
            .into_iter()
            .map(|(g, _)| g)
            .filter(managed)
            .collect();
        let rules: Vec<SecurityGroupRule> = service
            .load_all::<SecurityGroupRule>(keys::SECURITY_GROUP_RULES)
            .await?
            .into_iter()
            .map(|(r, _)| r)
            .filter(|r| groups.iter().any(|g| g.meta.id == r.security_group_id))
            .collect();

        // One group per policy, in the project of its namespace's pods.
        let mut policy_groups: HashMap<String, String> = HashMap::new();
        for policy in policies {
            let project = match service.namespace_project(&policy.namespace).await? {
                Some(p) => p,
                None => match infos
                    .iter()
                    .find(|i| i.namespace == policy.namespace)
                    .and_then(|i| ports.get(&i.uid))
                {
                    Some(port) => port.project.clone(),
                    // No binding and no pod: nothing to protect yet.
                    None => continue,
                },
            };
            let tag = policy_tag(&policy.uid);
            let name = format!("k8s-np:{}/{}", policy.namespace, policy.name);
            let (id, fresh) = match tagged(&groups, &tag, &project) {
                Some(g) => (g.meta.id.clone(), false),
                None => (
                    self.create_group(service, &project, &name, &tag).await?,
                    true,
                ),
            };
            let wanted = group_rules(policy, infos, labels);
            self.set_rules(service, &project, &id, &wanted, &rules, fresh)
                .await?;
            policy_groups.insert(policy.uid.clone(), id);
        }

        // Each pod's port: its policies' groups (and helpers), or its namespace's again.
        let mut helpers: HashMap<(String, Helper), String> = HashMap::new();
        for info in infos {
            let Some(port) = ports.get(&info.uid) else {
                continue;
            };
            let wanted: BTreeSet<String> = match pod_groups(info, policies) {
                Some((uids, needs)) => {
                    let mut ids = BTreeSet::new();
                    for uid in uids {
                        match policy_groups.get(&uid) {
                            Some(id) => ids.insert(id.clone()),
                            None => {
                                return Err(Error::Internal(format!(
                                    "no group for policy {uid} of pod {}",
                                    info.uid
                                )))
                            }
                        };
                    }
                    for helper in needs {
                        let key = (port.project.clone(), helper);
                        let id = match helpers.get(&key) {
                            Some(id) => id.clone(),
                            None => {
                                let id = self
                                    .helper(service, &port.project, helper, &groups, &rules)
                                    .await?;
                                helpers.insert(key, id.clone());
                                id
                            }
                        };
                        ids.insert(id);
                    }
                    ids
                }
                None => {
                    let ours = groups.iter().any(|g| port.groups.contains(&g.meta.id));
                    if !ours {
                        continue;
                    }
                    self.namespace_groups(service, &info.namespace, &port.project)
                        .await?
                }
            };
            if wanted != port.groups {
                let body = json!({"port": {"security_groups": wanted}});
                self.endpoint("ports")?
                    .update(service, &Caller::admin(&port.project), &port.id, body, None)
                    .await?;
            }
        }

        // Groups of policies gone (their ports moved off them above).
        let live: BTreeSet<String> = policies.iter().map(|p| policy_tag(&p.uid)).collect();
        for group in &groups {
            let stale = group
                .meta
                .tags
                .iter()
                .any(|t| t.starts_with(POLICY_TAG_PREFIX) && !live.contains(t));
            if stale {
                let caller = Caller::admin(&group.meta.project_id);
                match self
                    .endpoint("security-groups")?
                    .delete(service, &caller, &group.meta.id, None)
                    .await
                {
                    Ok(()) | Err(Error::NotFound { .. }) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(())
    }

    async fn create_group(
        &self,
        service: &Service,
        project: &str,
        name: &str,
        tag: &str,
    ) -> Result<String> {
        let body = json!({"security_group": {
            "name": name, "project_id": project, "tags": [tag],
            "description": "Kubernetes NetworkPolicy (managed by Isthmus)",
        }});
        let group = self
            .endpoint("security-groups")?
            .create(service, &Caller::admin(project), body)
            .await?;
        group
            .get("id")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| Error::Internal("a created security group has no id".into()))
    }

    /// The helper group of `project`, made and filled if missing.
    async fn helper(
        &self,
        service: &Service,
        project: &str,
        helper: Helper,
        groups: &[SecurityGroup],
        rules: &[SecurityGroupRule],
    ) -> Result<String> {
        let tag = helper_tag(helper);
        let (id, fresh) = match tagged(groups, tag, project) {
            Some(g) => (g.meta.id.clone(), false),
            None => {
                let name = match helper {
                    Helper::AllIngress => "k8s-np:allow-all-ingress",
                    Helper::AllEgress => "k8s-np:allow-all-egress",
                };
                (self.create_group(service, project, name, tag).await?, true)
            }
        };
        let direction = match helper {
            Helper::AllIngress => Direction::Ingress,
            Helper::AllEgress => Direction::Egress,
        };
        let wanted: BTreeSet<GroupRule> = [
            Cidr::default_v4(),
            Cidr {
                network: std::net::Ipv6Addr::UNSPECIFIED.into(),
                prefix: 0,
            },
        ]
        .into_iter()
        .map(|remote| GroupRule {
            direction,
            protocol: None,
            ports: None,
            remote,
        })
        .collect();
        self.set_rules(service, project, &id, &wanted, rules, fresh)
            .await?;
        Ok(id)
    }

    /// Makes group `id`'s rules exactly `wanted`; `known` are the rules read at the start of
    /// the pass, which a group made in this pass (`fresh`) is not in yet (its default egress
    /// rules go too).
    async fn set_rules(
        &self,
        service: &Service,
        project: &str,
        id: &str,
        wanted: &BTreeSet<GroupRule>,
        known: &[SecurityGroupRule],
        fresh: bool,
    ) -> Result<()> {
        let caller = Caller::admin(project);
        let mut have: Vec<(Option<GroupRule>, String)> = known
            .iter()
            .filter(|r| r.security_group_id == id)
            .map(|r| (group_rule(r), r.meta.id.clone()))
            .collect();
        if fresh {
            have = service
                .load_all::<SecurityGroupRule>(keys::SECURITY_GROUP_RULES)
                .await?
                .into_iter()
                .filter(|(r, _)| r.security_group_id == id)
                .map(|(r, _)| (group_rule(&r), r.meta.id.clone()))
                .collect();
        }
        let present: BTreeSet<&GroupRule> = have.iter().filter_map(|(r, _)| r.as_ref()).collect();
        for rule in wanted.iter().filter(|r| !present.contains(r)) {
            let mut body = json!({
                "security_group_id": id,
                "direction": rule.direction.as_str(),
                "ethertype": rule.remote.version().ethertype(),
                "remote_ip_prefix": rule.remote.to_string(),
            });
            if let Some(protocol) = rule.protocol {
                body["protocol"] = json!(protocol.as_str().to_lowercase());
            }
            if let Some((min, max)) = rule.ports {
                body["port_range_min"] = json!(min);
                body["port_range_max"] = json!(max);
            }
            self.endpoint("security-group-rules")?
                .create(service, &caller, json!({ "security_group_rule": body }))
                .await?;
        }
        for (rule, rule_id) in &have {
            if rule.as_ref().is_none_or(|r| !wanted.contains(r)) {
                match self
                    .endpoint("security-group-rules")?
                    .delete(service, &caller, rule_id, None)
                    .await
                {
                    Ok(()) | Err(Error::NotFound { .. }) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(())
    }

    /// The groups a pod of `namespace` has when no policy selects it: its binding's, else
    /// the project's default group.
    async fn namespace_groups(
        &self,
        service: &Service,
        namespace: &str,
        project: &str,
    ) -> Result<BTreeSet<String>> {
        if let Some(groups) = service.namespace_groups(namespace).await? {
            if !groups.is_empty() {
                return Ok(groups.into_iter().collect());
            }
        }
        service
            .resolve_security_group("default", project)
            .await
            .map(|id| BTreeSet::from([id]))
    }

    fn endpoint(&self, collection: &str) -> Result<&dyn crate::Endpoint> {
        self.neutron
            .find(collection)
            .ok_or_else(|| Error::Internal(format!("no Neutron collection {collection}")))
    }
}

/// A stored rule as a [`GroupRule`] (`None` for what policies never make: remote groups).
fn group_rule(r: &SecurityGroupRule) -> Option<GroupRule> {
    if r.remote_group_id.is_some() || r.remote_address_group_id.is_some() {
        return None;
    }
    let remote = match &r.remote_ip_prefix {
        Some(p) => Cidr::parse_lenient(p)?,
        None => match r.ethertype {
            IpVersion::V4 => Cidr::default_v4(),
            IpVersion::V6 => Cidr {
                network: std::net::Ipv6Addr::UNSPECIFIED.into(),
                prefix: 0,
            },
        },
    };
    let protocol = match r.protocol.as_deref() {
        None => None,
        Some("tcp" | "6") => Some(Protocol::Tcp),
        Some("udp" | "17") => Some(Protocol::Udp),
        Some("sctp" | "132") => Some(Protocol::Sctp),
        Some(_) => return None,
    };
    let ports = match (r.port_range_min, r.port_range_max) {
        (Some(a), Some(b)) => Some((u16::try_from(a).ok()?, u16::try_from(b).ok()?)),
        (None, None) => None,
        _ => return None,
    };
    Some(GroupRule {
        direction: r.direction,
        protocol,
        ports,
        remote,
    })
}

/// Every pod with a port: as policies see it, and its port.
fn pod_infos(service: &Service, pods: &Store<Pod>) -> (Vec<PodInfo>, BTreeMap<String, PodPort>) {
    let mirror = service.informer().mirror();
    let mut ports: BTreeMap<String, PodPort> = BTreeMap::new();
    let mut ips: HashMap<String, Vec<std::net::IpAddr>> = HashMap::new();
    for port in mirror.ports_owned_by(POD_DEVICE_OWNER) {
        let Some(uid) = pod_uid(&port) else { continue };
        // A pod's first attachment (eth0) is the one policies govern.
        let first = port
            .binding
            .profile
            .get("cni_ifname")
            .and_then(Value::as_str)
            == Some("eth0");
        if first || !ports.contains_key(uid) {
            ips.insert(
                uid.to_owned(),
                port.fixed_ips.iter().map(|f| f.ip_address).collect(),
            );
            ports.insert(
                uid.to_owned(),
                PodPort {
                    id: port.meta.id.clone(),
                    project: port.meta.project_id.clone(),
                    groups: port.security_groups.iter().cloned().collect(),
                },
            );
        }
    }
    let mut infos: Vec<PodInfo> = pods
        .state()
        .iter()
        .filter_map(|pod| {
            let uid = pod.metadata.uid.clone()?;
            let ips = ips.get(&uid)?.clone();
            let named_ports = pod
                .spec
                .iter()
                .flat_map(|s| s.containers.iter())
                .flat_map(|c| c.ports.iter().flatten())
                .filter_map(|p| {
                    Some((
                        p.name.clone()?,
                        protocol(p.protocol.as_deref())?,
                        u16::try_from(p.container_port).ok()?,
                    ))
                })
                .collect();
            Some(PodInfo {
                uid,
                namespace: pod.metadata.namespace.clone()?,
                labels: pod
                    .metadata
                    .labels
                    .clone()
                    .unwrap_or_default()
                    .into_iter()
                    .collect(),
                ips,
                named_ports,
            })
        })
        .collect();
    infos.sort_by(|a, b| a.uid.cmp(&b.uid));
    (infos, ports)
}

fn selector(s: &LabelSelector) -> Option<Selector> {
    let mut expressions = Vec::new();
    for e in s.match_expressions.iter().flatten() {
        let operator = match e.operator.as_str() {
            "In" => Operator::In,
            "NotIn" => Operator::NotIn,
            "Exists" => Operator::Exists,
            "DoesNotExist" => Operator::DoesNotExist,
            _ => return None,
        };
        expressions.push(Requirement {
            key: e.key.clone(),
            operator,
            values: e.values.clone().unwrap_or_default(),
        });
    }
    Some(Selector {
        labels: s
            .match_labels
            .clone()
            .unwrap_or_default()
            .into_iter()
            .collect(),
        expressions,
    })
}

fn peer(p: &NetworkPolicyPeer) -> Option<Peer> {
    if let Some(block) = &p.ip_block {
        return Some(Peer::Block {
            cidr: Cidr::parse_lenient(&block.cidr)?,
            except: block
                .except
                .iter()
                .flatten()
                .filter_map(|c| Cidr::parse_lenient(c))
                .collect(),
        });
    }
    Some(Peer::Pods {
        namespaces: match &p.namespace_selector {
            Some(s) => Some(selector(s)?),
            None => None,
        },
        pods: match &p.pod_selector {
            Some(s) => Some(selector(s)?),
            None => None,
        },
    })
}

fn port(p: &NetworkPolicyPort) -> Option<(Protocol, PortSpec)> {
    let protocol = protocol(p.protocol.as_deref())?;
    let spec = match &p.port {
        None => PortSpec::Any,
        Some(IntOrString::Int(n)) => {
            let first = u16::try_from(*n).ok()?;
            let last = match p.end_port {
                Some(e) => u16::try_from(e).ok()?,
                None => first,
            };
            PortSpec::Range(first, last)
        }
        Some(IntOrString::String(name)) => PortSpec::Named(name.clone()),
    };
    Some((protocol, spec))
}

fn rule(
    peers: Option<&Vec<NetworkPolicyPeer>>,
    ports: Option<&Vec<NetworkPolicyPort>>,
) -> Option<Rule> {
    Some(Rule {
        peers: peers
            .into_iter()
            .flatten()
            .map(peer)
            .collect::<Option<_>>()?,
        ports: ports
            .into_iter()
            .flatten()
            .map(port)
            .collect::<Option<_>>()?,
    })
}

/// A NetworkPolicy in the model's terms, or why not: one using what this cannot express is
/// not applied at all rather than half.
fn policy(np: &NetworkPolicy) -> std::result::Result<Policy, String> {
    let name = np.metadata.name.clone().unwrap_or_default();
    let namespace = np.metadata.namespace.clone().unwrap_or_default();
    let unusable = || {
        format!(
            "NetworkPolicy {namespace}/{name} uses a selector, peer or port this cannot express"
        )
    };
    let spec = np.spec.as_ref().ok_or_else(unusable)?;
    let types: Vec<&str> = match &spec.policy_types {
        Some(t) => t.iter().map(String::as_str).collect(),
        // Ingress always; Egress when it has egress rules (the API's default).
        None if spec.egress.is_some() => vec!["Ingress", "Egress"],
        None => vec!["Ingress"],
    };
    let converted = (|| {
        let ingress = if types.contains(&"Ingress") {
            Some(
                spec.ingress
                    .iter()
                    .flatten()
                    .map(|r| rule(r.from.as_ref(), r.ports.as_ref()))
                    .collect::<Option<Vec<_>>>()?,
            )
        } else {
            None
        };
        let egress = if types.contains(&"Egress") {
            Some(
                spec.egress
                    .iter()
                    .flatten()
                    .map(|r| rule(r.to.as_ref(), r.ports.as_ref()))
                    .collect::<Option<Vec<_>>>()?,
            )
        } else {
            None
        };
        Some(Policy {
            uid: np.metadata.uid.clone()?,
            namespace: namespace.clone(),
            name: name.clone(),
            selector: match &spec.pod_selector {
                Some(s) => selector(s)?,
                None => Selector::default(),
            },
            ingress,
            egress,
        })
    })();
    converted.ok_or_else(unusable)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(spec: Value) -> std::result::Result<Policy, String> {
        let np: NetworkPolicy = serde_json::from_value(json!({
            "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": "p", "namespace": "x", "uid": "u"}, "spec": spec,
        }))
        .unwrap();
        policy(&np)
    }

    #[test]
    fn policy_types_default_as_the_api_defines_them() {
        let ingress_only = parse(json!({"podSelector": {}})).unwrap();
        assert_eq!(
            (ingress_only.ingress, ingress_only.egress),
            (Some(vec![]), None)
        );
        let both = parse(json!({"podSelector": {}, "egress": [{}]})).unwrap();
        assert_eq!(both.egress, Some(vec![Rule::default()]));
        assert!(both.ingress.is_some());
    }

    #[test]
    fn ports_ranges_names_and_blocks_convert() {
        let p = parse(json!({
            "podSelector": {"matchExpressions": [{"key": "app", "operator": "In", "values": ["db"]}]},
            "policyTypes": ["Ingress"],
            "ingress": [{
                "from": [{"ipBlock": {"cidr": "10.0.0.0/16", "except": ["10.0.1.0/24"]}},
                         {"namespaceSelector": {}, "podSelector": {"matchLabels": {"a": "b"}}}],
                "ports": [{"port": 8000, "endPort": 8080}, {"protocol": "UDP", "port": "dns"}, {}],
            }],
        }))
        .unwrap();
        let rule = &p.ingress.unwrap()[0];
        assert_eq!(
            rule.ports,
            [
                (Protocol::Tcp, PortSpec::Range(8000, 8080)),
                (Protocol::Udp, PortSpec::Named("dns".into())),
                (Protocol::Tcp, PortSpec::Any),
            ]
        );
        assert!(matches!(&rule.peers[0], Peer::Block { except, .. } if except.len() == 1));
        assert!(
            matches!(&rule.peers[1], Peer::Pods { namespaces: Some(s), pods: Some(_) } if *s == Selector::default())
        );
        assert_eq!(p.selector.expressions[0].operator, Operator::In);
    }

    #[test]
    fn what_cannot_be_expressed_is_refused_whole() {
        let bad =
            parse(json!({"podSelector": {"matchExpressions": [{"key": "a", "operator": "Gt"}]}}));
        assert!(bad.unwrap_err().contains("NetworkPolicy x/p"));
        assert!(
            parse(json!({"podSelector": {}, "ingress": [{"ports": [{"protocol": "ICMP"}]}]}))
                .is_err()
        );
    }
}
