//! A desired nftables table and the one-transaction script that turns the kernel's table into
//! it, touching only what differs: chains whose content changed are flushed and refilled
//! atomically (their first rule carries a content hash, so unchanged chains are recognised
//! after an agent restart), and map and set elements are added and removed one by one.

use std::collections::{BTreeMap, BTreeSet};

/// Prefix of the rule comment carrying a chain's content hash.
pub const VERSION_TAG: &str = "isthmus:";

/// FNV-1a, 64 bits: stable across processes and versions, which `DefaultHasher` is not.
pub fn fnv64(text: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// A table as it should be.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Table {
    /// `bridge` or `inet`.
    pub family: &'static str,
    /// Table name.
    pub name: &'static str,
    /// Declarations (base chains without rules, maps), nft syntax for the inside of
    /// `table { ... }`: applied with the table, and again whenever a base chain's rules change
    /// (declaring what exists is a no-op, so an upgraded agent adds what a newer skeleton has).
    pub skeleton: String,
    /// Chains by name, with their rules: the skeleton's base chains and regular chains.
    pub chains: BTreeMap<String, Vec<String>>,
    /// Map elements: map → key → chain to jump to.
    pub maps: BTreeMap<String, BTreeMap<String, String>>,
    /// Named sets: name → (declaration inside `set NAME { ... }`, elements).
    pub sets: BTreeMap<String, (String, BTreeSet<String>)>,
    /// The table should not exist at all (its base chains, even empty, would still be hooks
    /// every packet crosses).
    pub absent: bool,
}

/// A table as read back from the kernel.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observed {
    /// Whether the table exists.
    pub exists: bool,
    /// Regular chains and the content hash their first rule carries.
    pub chains: BTreeMap<String, Option<String>>,
    /// Map elements.
    pub maps: BTreeMap<String, BTreeMap<String, String>>,
    /// Set elements.
    pub sets: BTreeMap<String, BTreeSet<String>>,
}

impl Table {
    fn version(rules: &[String]) -> String {
        fnv64(&rules.join("\n"))
    }

    /// The content hash a chain's first rule carries; an empty chain carries none.
    fn chain_version(rules: &[String]) -> Option<String> {
        (!rules.is_empty()).then(|| Self::version(rules))
    }

    /// What the kernel holds once this table's plan is applied (an agent keeps it instead of
    /// reading the table back after each of its own transactions).
    pub fn as_observed(&self) -> Observed {
        if self.absent {
            return Observed::default();
        }
        Observed {
            exists: true,
            chains: self
                .chains
                .iter()
                .map(|(name, rules)| (name.clone(), Self::chain_version(rules)))
                .collect(),
            maps: self.maps.clone(),
            sets: self
                .sets
                .iter()
                .map(|(name, (_, elements))| (name.clone(), elements.clone()))
                .collect(),
        }
    }

    /// The script (one transaction) turning `observed` into this table; `None` if equal.
    /// `base_chains` are the skeleton's chain names: declared by the skeleton, never created or
    /// deleted as regular chains.
    pub fn plan(&self, observed: &Observed, base_chains: &[&str]) -> Option<String> {
        let (family, table) = (self.family, self.name);
        if self.absent {
            return observed
                .exists
                .then(|| format!("delete table {family} {table}\n"));
        }
        let stale = |name: &str| {
            let want = self
                .chains
                .get(name)
                .and_then(|rules| Self::chain_version(rules));
            observed.chains.get(name).cloned().flatten() != want
        };
        let mut s = String::new();
        if !observed.exists || base_chains.iter().any(|name| stale(name)) {
            s.push_str(&format!("table {family} {table} {{\n{}}}\n", self.skeleton));
        }
        for (name, (decl, _)) in &self.sets {
            if !observed.sets.contains_key(name) {
                s.push_str(&format!("add set {family} {table} {name} {{ {decl} }}\n"));
            }
        }
        for (name, (decl, elements)) in &self.sets {
            // The kernel fills dynamic sets itself (`update @set`): never diffed.
            if decl.contains("dynamic") {
                continue;
            }
            let have = observed.sets.get(name).cloned().unwrap_or_default();
            let add: Vec<&String> = elements.difference(&have).collect();
            let del: Vec<&String> = have.difference(elements).collect();
            if !add.is_empty() {
                s.push_str(&format!(
                    "add element {family} {table} {name} {{ {} }}\n",
                    join(&add)
                ));
            }
            if !del.is_empty() {
                s.push_str(&format!(
                    "delete element {family} {table} {name} {{ {} }}\n",
                    join(&del)
                ));
            }
        }
        // Every new chain first: rules of one chain may jump to another new one.
        let base = |name: &str| base_chains.contains(&name);
        for name in self.chains.keys() {
            if !observed.chains.contains_key(name) && !base(name) {
                s.push_str(&format!("add chain {family} {table} {name}\n"));
            }
        }
        // A base chain this table leaves without rules is emptied, never deleted.
        for name in base_chains {
            if !self.chains.contains_key(*name) && stale(name) {
                s.push_str(&format!("flush chain {family} {table} {name}\n"));
            }
        }
        for (name, rules) in &self.chains {
            if stale(name) {
                if observed.chains.contains_key(name) {
                    s.push_str(&format!("flush chain {family} {table} {name}\n"));
                }
                let version = Self::version(rules);
                for (i, rule) in rules.iter().enumerate() {
                    let comment = if i == 0 {
                        format!(" comment \"{VERSION_TAG}{version}\"")
                    } else {
                        String::new()
                    };
                    s.push_str(&format!(
                        "add rule {family} {table} {name} {rule}{comment}\n"
                    ));
                }
            }
        }
        for (map, elements) in &self.maps {
            let have = observed.maps.get(map).cloned().unwrap_or_default();
            for (key, target) in elements {
                if have.get(key) != Some(target) {
                    if have.contains_key(key) {
                        s.push_str(&format!(
                            "delete element {family} {table} {map} {{ {key} }}\n"
                        ));
                    }
                    s.push_str(&format!(
                        "add element {family} {table} {map} {{ {key} : jump {target} }}\n"
                    ));
                }
            }
        }
        for (map, have) in &observed.maps {
            let want = self.maps.get(map);
            for key in have.keys() {
                if want.is_none_or(|w| !w.contains_key(key)) {
                    s.push_str(&format!(
                        "delete element {family} {table} {map} {{ {key} }}\n"
                    ));
                }
            }
        }
        // Chains that go are emptied first: one may jump to another that goes with it.
        let gone: Vec<&String> = observed
            .chains
            .keys()
            .filter(|name| !self.chains.contains_key(*name) && !base(name))
            .collect();
        for name in &gone {
            s.push_str(&format!("flush chain {family} {table} {name}\n"));
        }
        for name in &gone {
            s.push_str(&format!("delete chain {family} {table} {name}\n"));
        }
        for name in observed.sets.keys() {
            if !self.sets.contains_key(name) {
                s.push_str(&format!("delete set {family} {table} {name}\n"));
            }
        }
        (!s.is_empty()).then_some(s)
    }
}

fn join(items: &[&String]) -> String {
    items
        .iter()
        .map(|s| s.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// A concatenation (`10.0.0.3 . tcp . 80`) as written in scripts.
fn concat_of(value: &serde_json::Value) -> Option<String> {
    let parts = value.get("concat")?.as_array()?;
    let parts: Option<Vec<String>> = parts
        .iter()
        .map(|p| match p {
            serde_json::Value::String(s) => Some(s.clone()),
            serde_json::Value::Number(n) => Some(n.to_string()),
            _ => None,
        })
        .collect();
    Some(parts?.join(" . "))
}

/// A map key as nft prints it back: names quoted, marks in hex, concatenations spelled out.
fn key_of(value: &serde_json::Value) -> Option<String> {
    if let Some(c) = concat_of(value) {
        return Some(c);
    }
    match value {
        serde_json::Value::String(s) => Some(format!("\"{s}\"")),
        serde_json::Value::Number(n) => n.as_u64().map(|n| format!("0x{n:08x}")),
        _ => None,
    }
}

fn element_of(value: &serde_json::Value) -> Option<String> {
    match value {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Object(o) => {
            if let Some(c) = concat_of(value) {
                Some(c)
            } else if let Some(p) = o.get("prefix") {
                Some(format!("{}/{}", p["addr"].as_str()?, p["len"].as_u64()?))
            } else {
                o.get("elem").and_then(|e| element_of(&e["val"]))
            }
        }
        _ => None,
    }
}

/// Reads a table from `nft -j list table FAMILY NAME` output.
pub fn parse_observed(json: &serde_json::Value) -> Observed {
    let mut observed = Observed {
        exists: true,
        ..Observed::default()
    };
    for item in json["nftables"].as_array().into_iter().flatten() {
        if let Some(chain) = item.get("chain") {
            if chain.get("hook").is_none() {
                if let Some(name) = chain["name"].as_str() {
                    observed.chains.entry(name.to_owned()).or_insert(None);
                }
            }
        }
        if let Some(rule) = item.get("rule") {
            let chain = rule["chain"].as_str().unwrap_or_default();
            let version = rule["comment"]
                .as_str()
                .and_then(|c| c.strip_prefix(VERSION_TAG));
            let entry = observed.chains.entry(chain.to_owned()).or_insert(None);
            match version {
                Some(v) => *entry = Some(v.to_owned()),
                // Rules no agent versioned (a chain's first rule carries the version): content
                // that matches no desired version, so the chain is refilled or emptied.
                None if entry.is_none() => *entry = Some(String::new()),
                None => {}
            }
        }
        if let Some(map) = item.get("map") {
            let entry = observed
                .maps
                .entry(map["name"].as_str().unwrap_or_default().to_owned())
                .or_default();
            for elem in map["elem"].as_array().into_iter().flatten() {
                if let (Some(key), Some(target)) =
                    (key_of(&elem[0]), elem[1]["jump"]["target"].as_str())
                {
                    entry.insert(key, target.to_owned());
                }
            }
        }
        if let Some(set) = item.get("set") {
            let entry = observed
                .sets
                .entry(set["name"].as_str().unwrap_or_default().to_owned())
                .or_default();
            for elem in set["elem"].as_array().into_iter().flatten() {
                if let Some(e) = element_of(elem) {
                    entry.insert(e);
                }
            }
        }
    }
    observed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> Table {
        Table {
            family: "inet",
            name: "t",
            skeleton: "  map m {\n    type mark : verdict\n  }\n".into(),
            chains: BTreeMap::from([("c1".to_owned(), vec!["accept".to_owned()])]),
            maps: BTreeMap::from([(
                "m".to_owned(),
                BTreeMap::from([("0x00000001".to_owned(), "c1".to_owned())]),
            )]),
            sets: BTreeMap::from([(
                "s".to_owned(),
                (
                    "type ipv4_addr; flags interval;".to_owned(),
                    BTreeSet::from(["10.0.0.1".to_owned()]),
                ),
            )]),
            absent: false,
        }
    }

    #[test]
    fn plans_only_differences() {
        let t = table();
        let first = t.plan(&Observed::default(), &[]).unwrap();
        assert!(first.starts_with("table inet t {"));
        let applied = Observed {
            exists: true,
            chains: BTreeMap::from([("c1".to_owned(), Some(Table::version(&t.chains["c1"])))]),
            maps: t.maps.clone(),
            sets: BTreeMap::from([("s".to_owned(), t.sets["s"].1.clone())]),
        };
        assert_eq!(t.plan(&applied, &[]), None);
        assert_eq!(t.as_observed(), applied, "what an applied plan leaves");
        let mut changed = t.clone();
        changed.sets.get_mut("s").unwrap().1 = BTreeSet::from(["10.0.0.2".to_owned()]);
        assert_eq!(
            changed.plan(&applied, &[]).unwrap(),
            "add element inet t s { 10.0.0.2 }\ndelete element inet t s { 10.0.0.1 }\n"
        );
    }

    #[test]
    fn base_chains_are_redeclared_and_refilled_when_their_rules_change() {
        let mut t = table();
        t.skeleton
            .push_str("  chain forward {\n    type filter hook forward priority filter;\n  }\n");
        t.chains.insert("forward".into(), vec!["jump c1".into()]);
        let first = t.plan(&Observed::default(), &["forward"]).unwrap();
        assert!(!first.contains("add chain inet t forward"), "{first}");
        // An older agent's table: the base chain's rules carry no version.
        let mut old = t.as_observed();
        old.chains.insert("forward".into(), Some(String::new()));
        let upgrade = t.plan(&old, &["forward"]).unwrap();
        assert!(upgrade.starts_with("table inet t {\n"), "{upgrade}");
        assert!(
            upgrade.contains("flush chain inet t forward\nadd rule inet t forward jump c1 comment")
        );
        assert_eq!(t.plan(&t.as_observed(), &["forward"]), None);
        let mut emptied = t.clone();
        emptied.chains.remove("forward");
        let script = emptied.plan(&t.as_observed(), &["forward"]).unwrap();
        assert!(script.contains("flush chain inet t forward\n"), "{script}");
        assert!(!script.contains("delete chain inet t forward"), "{script}");
    }

    #[test]
    fn parses_nft_json() {
        let json = serde_json::json!({"nftables": [
            {"table": {}},
            {"set": {"name": "s", "elem": ["10.0.0.1", {"prefix": {"addr": "10.1.0.0", "len": 16}}]}},
            {"map": {"name": "m", "elem": [[1, {"jump": {"target": "c1"}}], ["tapx", {"jump": {"target": "c2"}}]]}},
            {"chain": {"name": "forward", "hook": "forward"}},
            {"chain": {"name": "c1"}},
            {"rule": {"chain": "c1", "comment": "isthmus:abc"}},
            {"rule": {"chain": "c1"}},
            {"rule": {"chain": "forward"}},
        ]});
        let o = parse_observed(&json);
        assert_eq!(
            o.sets["s"],
            BTreeSet::from(["10.0.0.1".to_owned(), "10.1.0.0/16".to_owned()])
        );
        assert_eq!(o.maps["m"]["0x00000001"], "c1");
        assert_eq!(o.maps["m"]["\"tapx\""], "c2");
        assert_eq!(o.chains["c1"].as_deref(), Some("abc"));
        assert_eq!(
            o.chains["forward"].as_deref(),
            Some(""),
            "a base chain holding rules no agent versioned"
        );
    }
}
