//! NetworkPolicy as security groups, with Kubernetes semantics: each policy is one group whose
//! rules allow what the policy allows, peers as the addresses of the pods its selectors match
//! (and `ipBlock`s minus their `except`s); a pod selected by some policy for a direction gets
//! exactly the policies selecting it, plus an allow-all group for a direction no policy of it
//! restricts; groups are stateful, so replies pass as Kubernetes requires.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use crate::addr::{cover, Cidr, IpVersion};
use crate::lbaas::Protocol;
pub use crate::security_group::Direction;

/// What policy groups' tags start with (then the policy's UID).
pub const POLICY_TAG_PREFIX: &str = "k8s-np:";

/// The tag naming the NetworkPolicy a security group is for.
pub fn policy_tag(uid: &str) -> String {
    format!("{POLICY_TAG_PREFIX}{uid}")
}

/// A label selector's operator.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Operator {
    /// `In`.
    In,
    /// `NotIn`.
    NotIn,
    /// `Exists`.
    Exists,
    /// `DoesNotExist`.
    DoesNotExist,
}

/// A `matchExpressions` entry.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Requirement {
    /// The label.
    pub key: String,
    /// How it is tested.
    pub operator: Operator,
    /// The values `In`/`NotIn` test against.
    pub values: Vec<String>,
}

/// A label selector (empty: everything).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct Selector {
    /// `matchLabels`.
    pub labels: BTreeMap<String, String>,
    /// `matchExpressions`.
    pub expressions: Vec<Requirement>,
}

impl Selector {
    /// Whether `labels` satisfy it.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.labels.iter().all(|(k, v)| labels.get(k) == Some(v))
            && self.expressions.iter().all(|r| {
                let value = labels.get(&r.key);
                match r.operator {
                    Operator::In => value.is_some_and(|v| r.values.contains(v)),
                    Operator::NotIn => value.is_none_or(|v| !r.values.contains(v)),
                    Operator::Exists => value.is_some(),
                    Operator::DoesNotExist => value.is_none(),
                }
            })
    }
}

/// A pod as policies see it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PodInfo {
    /// `metadata.uid`.
    pub uid: String,
    /// Its namespace.
    pub namespace: String,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// Its addresses (its port's).
    pub ips: Vec<IpAddr>,
    /// Its containers' named ports: (name, protocol, number).
    pub named_ports: Vec<(String, Protocol, u16)>,
}

/// A peer of a rule.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Peer {
    /// Pods: in the namespaces `namespaces` selects (`None`: the policy's own), matching
    /// `pods` (`None`: all of them).
    Pods {
        /// `namespaceSelector`.
        namespaces: Option<Selector>,
        /// `podSelector`.
        pods: Option<Selector>,
    },
    /// `ipBlock`.
    Block {
        /// `cidr`.
        cidr: Cidr,
        /// `except`.
        except: Vec<Cidr>,
    },
}

/// A port of a rule.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PortSpec {
    /// Every port of the protocol.
    Any,
    /// One port, or `port`..=`endPort`.
    Range(u16, u16),
    /// A container port's name.
    Named(String),
}

/// One `ingress` or `egress` rule: traffic with any of `peers` (none: anyone) on any of
/// `ports` (none: any).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct Rule {
    /// `from`/`to`.
    pub peers: Vec<Peer>,
    /// `ports`: protocol and port.
    pub ports: Vec<(Protocol, PortSpec)>,
}

/// A NetworkPolicy.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Policy {
    /// `metadata.uid`.
    pub uid: String,
    /// `metadata.namespace`.
    pub namespace: String,
    /// `metadata.name`.
    pub name: String,
    /// `podSelector`.
    pub selector: Selector,
    /// Ingress rules when `policyTypes` has `Ingress` (an empty list denies all ingress).
    pub ingress: Option<Vec<Rule>>,
    /// Egress rules when `policyTypes` has `Egress`.
    pub egress: Option<Vec<Rule>>,
}

impl Policy {
    /// Whether it selects `pod`.
    pub fn selects(&self, pod: &PodInfo) -> bool {
        pod.namespace == self.namespace && self.selector.matches(&pod.labels)
    }
}

/// One security group rule (its ethertype is its remote prefix's family).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GroupRule {
    /// Direction.
    pub direction: Direction,
    /// Protocol (`None`: any).
    pub protocol: Option<Protocol>,
    /// Port range (`None`: any).
    pub ports: Option<(u16, u16)>,
    /// Remote prefix.
    pub remote: Cidr,
}

/// A rule's protocol and port range (`None`: any).
type Ports = (Option<Protocol>, Option<(u16, u16)>);

/// `cidr` without the `except`ed prefixes, as the fewest prefixes.
pub fn without(cidr: Cidr, except: &[Cidr]) -> Vec<Cidr> {
    let version = cidr.version();
    let mut left = vec![(cidr.first(), cidr.last())];
    for hole in except.iter().filter(|e| e.version() == version) {
        let (first, last) = (hole.first(), hole.last());
        left = left
            .into_iter()
            .flat_map(|(a, b)| {
                let mut keep = Vec::new();
                if first > a {
                    keep.push((a, b.min(first - 1)));
                }
                if last < b {
                    keep.push((a.max(last + 1), b));
                }
                if last < a || first > b {
                    keep = vec![(a, b)];
                }
                keep
            })
            .collect();
    }
    left.into_iter()
        .flat_map(|(a, b)| cover(version, a, b))
        .collect()
}

/// The rules of `policy`'s group, given every pod (`pods`) and namespace labels.
pub fn group_rules(
    policy: &Policy,
    pods: &[PodInfo],
    namespaces: &BTreeMap<String, BTreeMap<String, String>>,
) -> BTreeSet<GroupRule> {
    let mut out = BTreeSet::new();
    let selected: Vec<&PodInfo> = pods.iter().filter(|p| policy.selects(p)).collect();
    for (direction, rules) in [
        (Direction::Ingress, &policy.ingress),
        (Direction::Egress, &policy.egress),
    ] {
        for rule in rules.iter().flatten() {
            // Peers as prefixes, and (for named ports of egress) the peer pods.
            let mut remotes: BTreeSet<Cidr> = BTreeSet::new();
            let mut peer_pods: Vec<&PodInfo> = Vec::new();
            if rule.peers.is_empty() {
                remotes.insert(Cidr::default_v4());
                peer_pods.extend(pods.iter());
            }
            for peer in &rule.peers {
                match peer {
                    Peer::Block { cidr, except } => {
                        if cidr.version() == IpVersion::V4 {
                            remotes.extend(without(*cidr, except));
                        }
                    }
                    Peer::Pods {
                        namespaces: ns_selector,
                        pods: pod_selector,
                    } => {
                        for pod in pods {
                            let in_namespace = match ns_selector {
                                None => pod.namespace == policy.namespace,
                                Some(s) => namespaces
                                    .get(&pod.namespace)
                                    .is_some_and(|labels| s.matches(labels)),
                            };
                            if in_namespace
                                && pod_selector.as_ref().is_none_or(|s| s.matches(&pod.labels))
                            {
                                peer_pods.push(pod);
                                remotes.extend(
                                    pod.ips
                                        .iter()
                                        .filter(|ip| ip.is_ipv4())
                                        .map(|ip| Cidr::host(*ip)),
                                );
                            }
                        }
                    }
                }
            }
            // Ports: named ones resolve on the pods that own them (the selected pods for
            // ingress, the peers for egress).
            let mut ports: BTreeSet<Ports> = BTreeSet::new();
            if rule.ports.is_empty() {
                ports.insert((None, None));
            }
            for (protocol, spec) in &rule.ports {
                match spec {
                    PortSpec::Any => {
                        ports.insert((Some(*protocol), None));
                    }
                    PortSpec::Range(a, b) => {
                        ports.insert((Some(*protocol), Some((*a, *b))));
                    }
                    PortSpec::Named(name) => {
                        let owners: &[&PodInfo] = match direction {
                            Direction::Ingress => &selected,
                            Direction::Egress => &peer_pods,
                        };
                        for pod in owners {
                            for (n, p, number) in &pod.named_ports {
                                if n == name && p == protocol {
                                    ports.insert((Some(*protocol), Some((*number, *number))));
                                }
                            }
                        }
                    }
                }
            }
            for remote in &remotes {
                for (protocol, range) in &ports {
                    out.insert(GroupRule {
                        direction,
                        protocol: *protocol,
                        ports: *range,
                        remote: *remote,
                    });
                }
            }
        }
    }
    out
}

/// The helper groups a selected pod may need beside its policies'.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Helper {
    /// Allows all ingress (no policy of the pod restricts ingress).
    AllIngress,
    /// Allows all egress (no policy of the pod restricts egress).
    AllEgress,
}

/// For a pod: the policies selecting it (by UID) and the helpers it needs, or `None` when no
/// policy selects it (it keeps its namespace's groups).
pub fn pod_groups(pod: &PodInfo, policies: &[Policy]) -> Option<(Vec<String>, Vec<Helper>)> {
    let mine: Vec<&Policy> = policies.iter().filter(|p| p.selects(pod)).collect();
    if mine.is_empty() {
        return None;
    }
    let mut helpers = Vec::new();
    if mine.iter().all(|p| p.ingress.is_none()) {
        helpers.push(Helper::AllIngress);
    }
    if mine.iter().all(|p| p.egress.is_none()) {
        helpers.push(Helper::AllEgress);
    }
    Some((mine.iter().map(|p| p.uid.clone()).collect(), helpers))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn cidr(s: &str) -> Cidr {
        Cidr::parse(s).unwrap()
    }

    fn pod(uid: &str, ns: &str, l: &[(&str, &str)], ip: &str) -> PodInfo {
        PodInfo {
            uid: uid.into(),
            namespace: ns.into(),
            labels: labels(l),
            ips: vec![ip.parse().unwrap()],
            named_ports: vec![("http".into(), Protocol::Tcp, 8080)],
        }
    }

    #[test]
    fn selectors_follow_kubernetes_semantics() {
        let s = Selector {
            labels: labels(&[("app", "web")]),
            expressions: vec![
                Requirement {
                    key: "tier".into(),
                    operator: Operator::In,
                    values: vec!["a".into(), "b".into()],
                },
                Requirement {
                    key: "canary".into(),
                    operator: Operator::DoesNotExist,
                    values: vec![],
                },
            ],
        };
        assert!(s.matches(&labels(&[("app", "web"), ("tier", "a")])));
        assert!(!s.matches(&labels(&[("app", "web"), ("tier", "c")])));
        assert!(!s.matches(&labels(&[("app", "web"), ("tier", "a"), ("canary", "1")])));
        assert!(Selector::default().matches(&labels(&[])));
        let not_in = Selector {
            labels: BTreeMap::new(),
            expressions: vec![Requirement {
                key: "env".into(),
                operator: Operator::NotIn,
                values: vec!["prod".into()],
            }],
        };
        assert!(
            not_in.matches(&labels(&[])),
            "NotIn holds for an absent label"
        );
    }

    #[test]
    fn ip_blocks_lose_their_excepts() {
        assert_eq!(
            without(cidr("10.0.0.0/24"), &[cidr("10.0.0.128/25")]),
            [cidr("10.0.0.0/25")]
        );
        assert_eq!(
            without(cidr("10.0.0.0/24"), &[cidr("10.0.0.4/32")]),
            [
                cidr("10.0.0.0/30"),
                cidr("10.0.0.5/32"),
                cidr("10.0.0.6/31"),
                cidr("10.0.0.8/29"),
                cidr("10.0.0.16/28"),
                cidr("10.0.0.32/27"),
                cidr("10.0.0.64/26"),
                cidr("10.0.0.128/25"),
            ]
        );
        assert!(without(cidr("10.0.0.0/24"), &[cidr("10.0.0.0/16")]).is_empty());
        assert_eq!(
            without(cidr("10.0.0.0/24"), &[cidr("10.9.0.0/16")]),
            [cidr("10.0.0.0/24")]
        );
    }

    #[test]
    fn peers_are_the_addresses_of_the_pods_the_selectors_match() {
        let pods = [
            pod("a", "x", &[("app", "db")], "10.0.0.4"),
            pod("b", "x", &[("app", "web")], "10.0.0.5"),
            pod("c", "y", &[("app", "web")], "10.0.0.6"),
        ];
        let namespaces = BTreeMap::from([
            ("x".to_owned(), labels(&[("team", "x")])),
            ("y".to_owned(), labels(&[("team", "y")])),
        ]);
        let policy = Policy {
            uid: "p".into(),
            namespace: "x".into(),
            name: "db".into(),
            selector: Selector {
                labels: labels(&[("app", "db")]),
                expressions: vec![],
            },
            ingress: Some(vec![
                // Pods labelled web in the policy's namespace, on the named port.
                Rule {
                    peers: vec![Peer::Pods {
                        namespaces: None,
                        pods: Some(Selector {
                            labels: labels(&[("app", "web")]),
                            expressions: vec![],
                        }),
                    }],
                    ports: vec![(Protocol::Tcp, PortSpec::Named("http".into()))],
                },
                // Anything in namespace y, on 5432.
                Rule {
                    peers: vec![Peer::Pods {
                        namespaces: Some(Selector {
                            labels: labels(&[("team", "y")]),
                            expressions: vec![],
                        }),
                        pods: None,
                    }],
                    ports: vec![(Protocol::Tcp, PortSpec::Range(5432, 5432))],
                },
            ]),
            egress: Some(vec![]),
        };
        let rules = group_rules(&policy, &pods, &namespaces);
        let rule = |ip: &str, port: u16| GroupRule {
            direction: Direction::Ingress,
            protocol: Some(Protocol::Tcp),
            ports: Some((port, port)),
            remote: cidr(ip),
        };
        assert_eq!(
            rules,
            BTreeSet::from([rule("10.0.0.5/32", 8080), rule("10.0.0.6/32", 5432)])
        );
        // The selected pod has its policy and no helper (both directions restricted); the
        // others keep their namespace's groups.
        assert_eq!(
            pod_groups(&pods[0], std::slice::from_ref(&policy)),
            Some((vec!["p".into()], vec![]))
        );
        assert_eq!(pod_groups(&pods[1], &[policy]), None);
    }

    #[test]
    fn a_direction_no_policy_restricts_stays_open() {
        let deny_ingress = Policy {
            uid: "deny".into(),
            namespace: "x".into(),
            name: "deny".into(),
            selector: Selector::default(),
            ingress: Some(vec![]),
            egress: None,
        };
        let p = pod("a", "x", &[], "10.0.0.4");
        assert!(group_rules(&deny_ingress, std::slice::from_ref(&p), &BTreeMap::new()).is_empty());
        assert_eq!(
            pod_groups(&p, &[deny_ingress]),
            Some((vec!["deny".into()], vec![Helper::AllEgress]))
        );
        // An empty peer list is everyone, an empty port list every port.
        let open = Policy {
            uid: "o".into(),
            namespace: "x".into(),
            name: "o".into(),
            selector: Selector::default(),
            ingress: Some(vec![Rule::default()]),
            egress: None,
        };
        assert_eq!(
            group_rules(&open, &[p], &BTreeMap::new()),
            BTreeSet::from([GroupRule {
                direction: Direction::Ingress,
                protocol: None,
                ports: None,
                remote: Cidr::default_v4()
            }])
        );
    }
}
