//! Anti-spoofing for ports with port security (the `table bridge isthmus` half of DESIGN §5):
//! a frame entering the bridge from a port's tap must carry the port's MAC (or one of its
//! allowed-address-pair MACs) and, for IPv4/IPv6 and ARP, one of its addresses; DHCP client
//! traffic is let through. Ports with port security off get no chain and pass everything.
//!
//! The table is reconciled by diff in one nft transaction: each port chain's first rule
//! carries a hash of the chain's content, so only chains whose content changed are rewritten
//! (flush and refill, atomically), new ports get a chain and a map element, and gone ports lose
//! both. Nothing else in the table is touched on an agent restart.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use crate::l2::{tap_name, NodeConfig};
use crate::view::NodeView;

/// The table (bridge family).
pub const TABLE: &str = "isthmus";
/// The dispatch map: ingress device name → jump to its port chain.
pub const PORT_MAP: &str = "port_in";
/// Prefix of a rule comment carrying a chain's content hash.
const VERSION_TAG: &str = "isthmus:";

/// The chain of one port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Guard {
    /// Chain name (`from_<tap>`).
    pub chain: String,
    /// Its rules, in order (nft syntax).
    pub rules: Vec<String>,
    /// Hash of the rules.
    pub version: String,
}

/// Chain of a port's tap.
pub fn chain_name(tap: &str) -> String {
    format!("from_{tap}")
}

/// FNV-1a, 64 bits: stable across processes and versions, which `DefaultHasher` is not.
fn fnv64(text: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

fn set(items: &BTreeSet<String>) -> String {
    format!(
        "{{ {} }}",
        items.iter().cloned().collect::<Vec<_>>().join(", ")
    )
}

/// The rules of a port's chain from its MACs and addresses (addresses or prefixes).
pub fn rules(macs: &BTreeSet<String>, v4: &BTreeSet<String>, v6: &BTreeSet<String>) -> Vec<String> {
    let mut rules = vec![format!("ether saddr != {} counter drop", set(macs))];
    rules.push(format!(
        "ether type arp arp saddr ether != {} counter drop",
        set(macs)
    ));
    // ARP probes (duplicate address detection) use sender 0.0.0.0.
    let mut arp_ips = v4.clone();
    arp_ips.insert("0.0.0.0".to_owned());
    rules.push(format!(
        "ether type arp arp saddr ip != {} counter drop",
        set(&arp_ips)
    ));
    rules.push(
        "ether type ip ip saddr 0.0.0.0 ip daddr 255.255.255.255 udp sport 68 udp dport 67 accept"
            .to_owned(),
    );
    if v4.is_empty() {
        rules.push("ether type ip counter drop".to_owned());
    } else {
        rules.push(format!(
            "ether type ip ip saddr != {} counter drop",
            set(v4)
        ));
    }
    // Link-local (neighbour discovery) and the unspecified address (DAD) are always allowed.
    let mut v6 = v6.clone();
    v6.insert("fe80::/10".to_owned());
    v6.insert("::".to_owned());
    rules.push(format!(
        "ether type ip6 ip6 saddr != {} counter drop",
        set(&v6)
    ));
    rules
}

/// The chains the node's local ports with port security need, by tap.
pub fn desired(view: &NodeView, node: &NodeConfig) -> BTreeMap<String, Guard> {
    let mut guards = BTreeMap::new();
    for port in view.ports.values() {
        if port.host_id != node.name || !port.port_security_enabled {
            continue;
        }
        let mut macs = BTreeSet::from([port.mac_address.to_ascii_lowercase()]);
        let (mut v4, mut v6) = (BTreeSet::new(), BTreeSet::new());
        for ip in &port.fixed_ips {
            match ip.ip_address {
                IpAddr::V4(a) => v4.insert(a.to_string()),
                IpAddr::V6(a) => v6.insert(a.to_string()),
            };
        }
        for pair in &port.allowed_address_pairs {
            macs.insert(pair.mac_address.to_ascii_lowercase());
            if pair.ip_address.contains(':') {
                v6.insert(pair.ip_address.clone());
            } else {
                v4.insert(pair.ip_address.clone());
            }
        }
        let rules = rules(&macs, &v4, &v6);
        let tap = tap_name(&port.id);
        guards.insert(
            tap.clone(),
            Guard {
                chain: chain_name(&tap),
                version: fnv64(&rules.join("\n")),
                rules,
            },
        );
    }
    guards
}

/// What the kernel's table holds, as read back.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observed {
    /// Whether the table (with its map and dispatch chain) exists.
    pub table: bool,
    /// Port chains (`from_*`) and the content hash their first rule carries.
    pub chains: BTreeMap<String, Option<String>>,
    /// Map elements: tap → chain.
    pub map: BTreeMap<String, String>,
}

/// The nft script (one transaction) turning `observed` into `desired`; `None` when nothing
/// differs.
pub fn plan(desired: &BTreeMap<String, Guard>, observed: &Observed) -> Option<String> {
    let mut script = String::new();
    if !observed.table {
        script.push_str(&format!(
            "table bridge {TABLE} {{\n  map {PORT_MAP} {{\n    type ifname : verdict\n  }}\n  chain prerouting {{\n    type filter hook prerouting priority -200; policy accept;\n    iifname vmap @{PORT_MAP}\n  }}\n}}\n"
        ));
    }
    for (tap, guard) in desired {
        let have = observed.chains.get(&guard.chain);
        if have.is_none() {
            script.push_str(&format!("add chain bridge {TABLE} {}\n", guard.chain));
        }
        if have.and_then(|v| v.as_deref()) != Some(guard.version.as_str()) {
            if have.is_some() {
                script.push_str(&format!("flush chain bridge {TABLE} {}\n", guard.chain));
            }
            for (i, rule) in guard.rules.iter().enumerate() {
                let comment = if i == 0 {
                    format!(" comment \"{VERSION_TAG}{}\"", guard.version)
                } else {
                    String::new()
                };
                script.push_str(&format!(
                    "add rule bridge {TABLE} {} {rule}{comment}\n",
                    guard.chain
                ));
            }
        }
        if observed.map.get(tap) != Some(&guard.chain) {
            if observed.map.contains_key(tap) {
                script.push_str(&format!(
                    "delete element bridge {TABLE} {PORT_MAP} {{ \"{tap}\" }}\n"
                ));
            }
            script.push_str(&format!(
                "add element bridge {TABLE} {PORT_MAP} {{ \"{tap}\" : jump {} }}\n",
                guard.chain
            ));
        }
    }
    for (tap, chain) in &observed.map {
        if !desired.contains_key(tap) {
            let _ = chain;
            script.push_str(&format!(
                "delete element bridge {TABLE} {PORT_MAP} {{ \"{tap}\" }}\n"
            ));
        }
    }
    let wanted: BTreeSet<&String> = desired.values().map(|g| &g.chain).collect();
    for chain in observed.chains.keys() {
        if !wanted.contains(chain) {
            script.push_str(&format!("delete chain bridge {TABLE} {chain}\n"));
        }
    }
    (!script.is_empty()).then_some(script)
}

/// Reads [`Observed`] from `nft -j list table bridge isthmus` output.
pub fn parse_observed(json: &serde_json::Value) -> Observed {
    let mut observed = Observed {
        table: true,
        ..Observed::default()
    };
    let items = json["nftables"].as_array().cloned().unwrap_or_default();
    for item in &items {
        if let Some(chain) = item.get("chain") {
            let name = chain["name"].as_str().unwrap_or_default();
            if name.starts_with("from_") {
                observed.chains.entry(name.to_owned()).or_insert(None);
            }
        }
        if let Some(rule) = item.get("rule") {
            let chain = rule["chain"].as_str().unwrap_or_default();
            if let Some(version) = rule["comment"]
                .as_str()
                .and_then(|c| c.strip_prefix(VERSION_TAG))
            {
                observed
                    .chains
                    .insert(chain.to_owned(), Some(version.to_owned()));
            }
        }
        if let Some(map) = item.get("map") {
            if map["name"] == PORT_MAP {
                for elem in map["elem"].as_array().into_iter().flatten() {
                    if let (Some(tap), Some(target)) =
                        (elem[0].as_str(), elem[1]["jump"]["target"].as_str())
                    {
                        observed.map.insert(tap.to_owned(), target.to_owned());
                    }
                }
            }
        }
    }
    observed
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::view::{AddressPair, FixedIp, Port};

    fn view() -> NodeView {
        let mut v = NodeView::default();
        let port = |id: &str, security: bool| Port {
            id: id.into(),
            network_id: "n".into(),
            mac_address: "FA:16:3E:00:00:01".into(),
            fixed_ips: vec![FixedIp {
                subnet_id: "s".into(),
                ip_address: "10.0.0.2".parse().unwrap(),
            }],
            host_id: "a".into(),
            security_groups: vec![],
            port_security_enabled: security,
            allowed_address_pairs: vec![AddressPair {
                ip_address: "10.0.0.50".into(),
                mac_address: "fa:16:3e:00:00:09".into(),
            }],
            status: "DOWN".into(),
        };
        v.ports
            .insert("guarded-port-1".into(), port("guarded-port-1", true));
        v.ports
            .insert("open-port-0002".into(), port("open-port-0002", false));
        v
    }

    fn node() -> NodeConfig {
        NodeConfig {
            name: "a".into(),
            tunnel_ip: "10.9.0.1".parse().unwrap(),
            physnets: BTreeMap::new(),
        }
    }

    #[test]
    fn guards_only_ports_with_port_security() {
        let d = desired(&view(), &node());
        assert_eq!(d.keys().collect::<Vec<_>>(), ["tapguarded-por"]);
        let g = &d["tapguarded-por"];
        assert_eq!(
            g.rules[0],
            "ether saddr != { fa:16:3e:00:00:01, fa:16:3e:00:00:09 } counter drop"
        );
        assert!(g
            .rules
            .iter()
            .any(|r| r == "ether type ip ip saddr != { 10.0.0.2, 10.0.0.50 } counter drop"));
    }

    #[test]
    fn plan_is_a_diff() {
        let d = desired(&view(), &node());
        let first = plan(&d, &Observed::default()).unwrap();
        assert!(first.starts_with("table bridge isthmus"));
        assert!(first.contains(
            "add element bridge isthmus port_in { \"tapguarded-por\" : jump from_tapguarded-por }"
        ));
        // What the kernel holds after that script: nothing more to do.
        let g = &d["tapguarded-por"];
        let applied = Observed {
            table: true,
            chains: BTreeMap::from([(g.chain.clone(), Some(g.version.clone()))]),
            map: BTreeMap::from([("tapguarded-por".to_owned(), g.chain.clone())]),
        };
        assert_eq!(plan(&d, &applied), None);
        // A changed address rewrites exactly that chain, atomically.
        let mut v = view();
        v.ports
            .get_mut("guarded-port-1")
            .unwrap()
            .allowed_address_pairs
            .clear();
        let changed = plan(&desired(&v, &node()), &applied).unwrap();
        assert!(
            changed.starts_with("flush chain bridge isthmus from_tapguarded-por\n"),
            "{changed}"
        );
        assert!(!changed.contains("add element"));
        // A gone port loses its element, then its chain.
        let gone = plan(&BTreeMap::new(), &applied).unwrap();
        assert_eq!(gone, "delete element bridge isthmus port_in { \"tapguarded-por\" }\ndelete chain bridge isthmus from_tapguarded-por\n");
    }

    #[test]
    fn reads_nft_json() {
        let json = serde_json::json!({"nftables": [
            {"metainfo": {}},
            {"table": {"family": "bridge", "name": "isthmus"}},
            {"map": {"name": "port_in", "elem": [["tapx", {"jump": {"target": "from_tapx"}}]]}},
            {"chain": {"name": "prerouting"}},
            {"chain": {"name": "from_tapx"}},
            {"rule": {"chain": "from_tapx", "comment": "isthmus:abc"}},
        ]});
        let o = parse_observed(&json);
        assert_eq!(o.chains["from_tapx"], Some("abc".into()));
        assert_eq!(o.map["tapx"], "from_tapx");
    }
}
