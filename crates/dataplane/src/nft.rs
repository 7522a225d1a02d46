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

impl Observed {
    /// Replaces `old`, a part of this table (some of its chains, map keys, sets and set
    /// elements), with `new`: what the kernel holds once a plan from `old` to `new` is applied.
    pub fn replace_part(&mut self, old: &Observed, new: &Observed) {
        for chain in old.chains.keys() {
            self.chains.remove(chain);
        }
        self.chains
            .extend(new.chains.iter().map(|(k, v)| (k.clone(), v.clone())));
        for (map, keys) in &old.maps {
            if let Some(m) = self.maps.get_mut(map) {
                for key in keys.keys() {
                    m.remove(key);
                }
            }
        }
        for (map, elements) in &new.maps {
            let m = self.maps.entry(map.clone()).or_default();
            m.extend(elements.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
        for (set, elements) in &old.sets {
            if !new.sets.contains_key(set) {
                self.sets.remove(set);
            } else if let Some(have) = self.sets.get_mut(set) {
                for e in elements {
                    have.remove(e);
                }
            }
        }
        for (set, elements) in &new.sets {
            let have = self.sets.entry(set.clone()).or_default();
            have.extend(elements.iter().cloned());
        }
    }
}

impl Table {
    fn version(rules: &[String]) -> String {
        fnv64(&rules.join("\n"))
    }

    /// The content hash a chain's first rule carries; an empty chain carries none.
    pub fn chain_version(rules: &[String]) -> Option<String> {
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

    /// The changes (one transaction) turning `observed` into this table; `None` if equal.
    /// `base_chains` are the skeleton's chain names: declared by the skeleton, never created or
    /// deleted as regular chains.
    pub fn plan(&self, observed: &Observed, base_chains: &[&str]) -> Option<Plan> {
        let mut changes = Vec::new();
        if self.absent {
            if observed.exists {
                changes.push(Change::DeleteTable);
            }
            return Plan::of(self, changes);
        }
        let stale = |name: &str| {
            let want = self
                .chains
                .get(name)
                .and_then(|rules| Self::chain_version(rules));
            observed.chains.get(name).cloned().flatten() != want
        };
        if !observed.exists || base_chains.iter().any(|name| stale(name)) {
            changes.push(Change::Declare(self.skeleton.clone()));
        }
        for (name, (decl, _)) in &self.sets {
            if !observed.sets.contains_key(name) {
                changes.push(Change::AddSet(name.clone(), decl.clone()));
            }
        }
        for (name, (decl, elements)) in &self.sets {
            // The kernel fills dynamic sets itself (`update @set`): never diffed.
            if decl.contains("dynamic") {
                continue;
            }
            let have = observed.sets.get(name).cloned().unwrap_or_default();
            let add: Vec<String> = elements.difference(&have).cloned().collect();
            let del: Vec<String> = have.difference(elements).cloned().collect();
            if !add.is_empty() {
                changes.push(Change::AddElements(name.clone(), add));
            }
            if !del.is_empty() {
                changes.push(Change::DeleteElements(name.clone(), del));
            }
        }
        // Every new chain first: rules of one chain may jump to another new one.
        let base = |name: &str| base_chains.contains(&name);
        for name in self.chains.keys() {
            if !observed.chains.contains_key(name) && !base(name) {
                changes.push(Change::AddChain(name.clone()));
            }
        }
        // A base chain this table leaves without rules is emptied, never deleted.
        for name in base_chains {
            if !self.chains.contains_key(*name) && stale(name) {
                changes.push(Change::FlushChain((*name).to_owned()));
            }
        }
        for (name, rules) in &self.chains {
            if stale(name) {
                if observed.chains.contains_key(name) {
                    changes.push(Change::FlushChain(name.clone()));
                }
                let version = Self::version(rules);
                for (i, rule) in rules.iter().enumerate() {
                    changes.push(Change::AddRule {
                        chain: name.clone(),
                        rule: rule.clone(),
                        version: (i == 0).then(|| version.clone()),
                    });
                }
            }
        }
        for (map, elements) in &self.maps {
            let have = observed.maps.get(map).cloned().unwrap_or_default();
            for (key, target) in elements {
                if have.get(key) != Some(target) {
                    if have.contains_key(key) {
                        changes.push(Change::DeleteMapElement(map.clone(), key.clone()));
                    }
                    changes.push(Change::AddMapElement {
                        map: map.clone(),
                        key: key.clone(),
                        chain: target.clone(),
                    });
                }
            }
        }
        for (map, have) in &observed.maps {
            let want = self.maps.get(map);
            for key in have.keys() {
                if want.is_none_or(|w| !w.contains_key(key)) {
                    changes.push(Change::DeleteMapElement(map.clone(), key.clone()));
                }
            }
        }
        // Chains that go are emptied first: one may jump to another that goes with it.
        let gone: Vec<&String> = observed
            .chains
            .keys()
            .filter(|name| !self.chains.contains_key(*name) && !base(name))
            .collect();
        changes.extend(gone.iter().map(|name| Change::FlushChain((*name).clone())));
        changes.extend(gone.iter().map(|name| Change::DeleteChain((*name).clone())));
        for name in observed.sets.keys() {
            if !self.sets.contains_key(name) {
                changes.push(Change::DeleteSet(name.clone()));
            }
        }
        Plan::of(self, changes)
    }
}

/// One change to a table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Declare the table with its skeleton (what exists is left alone).
    Declare(String),
    /// Add a set: name, declaration.
    AddSet(String, String),
    /// Add elements to a set.
    AddElements(String, Vec<String>),
    /// Remove elements from a set.
    DeleteElements(String, Vec<String>),
    /// Add a regular chain.
    AddChain(String),
    /// Empty a chain.
    FlushChain(String),
    /// Append a rule; the first of a chain carries the chain's content hash.
    AddRule {
        /// Chain.
        chain: String,
        /// Rule, nft syntax.
        rule: String,
        /// The chain's content hash, on its first rule.
        version: Option<String>,
    },
    /// Map a key to a chain.
    AddMapElement {
        /// Verdict map.
        map: String,
        /// Key.
        key: String,
        /// Chain jumped to.
        chain: String,
    },
    /// Remove a key from a map.
    DeleteMapElement(String, String),
    /// Delete an (emptied) chain.
    DeleteChain(String),
    /// Delete a set.
    DeleteSet(String),
    /// Delete the whole table.
    DeleteTable,
}

/// The changes to one table, applied as one transaction (`nft -f` of its [`Display`] form).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// `bridge`, `inet`, `ip`.
    pub family: &'static str,
    /// Table name.
    pub table: &'static str,
    /// The changes, in order.
    pub changes: Vec<Change>,
}

impl Plan {
    fn of(table: &Table, changes: Vec<Change>) -> Option<Plan> {
        (!changes.is_empty()).then_some(Plan {
            family: table.family,
            table: table.name,
            changes,
        })
    }
}

impl std::fmt::Display for Plan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (family, table) = (self.family, self.table);
        for change in &self.changes {
            match change {
                Change::Declare(skeleton) => {
                    writeln!(f, "table {family} {table} {{\n{skeleton}}}")?
                }
                Change::AddSet(name, decl) => {
                    writeln!(f, "add set {family} {table} {name} {{ {decl} }}")?
                }
                Change::AddElements(set, elements) => writeln!(
                    f,
                    "add element {family} {table} {set} {{ {} }}",
                    elements.join(", ")
                )?,
                Change::DeleteElements(set, elements) => writeln!(
                    f,
                    "delete element {family} {table} {set} {{ {} }}",
                    elements.join(", ")
                )?,
                Change::AddChain(name) => writeln!(f, "add chain {family} {table} {name}")?,
                Change::FlushChain(name) => writeln!(f, "flush chain {family} {table} {name}")?,
                Change::AddRule {
                    chain,
                    rule,
                    version,
                } => match version {
                    Some(v) => writeln!(
                        f,
                        "add rule {family} {table} {chain} {rule} comment \"{VERSION_TAG}{v}\""
                    )?,
                    None => writeln!(f, "add rule {family} {table} {chain} {rule}")?,
                },
                Change::AddMapElement { map, key, chain } => writeln!(
                    f,
                    "add element {family} {table} {map} {{ {key} : jump {chain} }}"
                )?,
                Change::DeleteMapElement(map, key) => {
                    writeln!(f, "delete element {family} {table} {map} {{ {key} }}")?
                }
                Change::DeleteChain(name) => writeln!(f, "delete chain {family} {table} {name}")?,
                Change::DeleteSet(name) => writeln!(f, "delete set {family} {table} {name}")?,
                Change::DeleteTable => writeln!(f, "delete table {family} {table}")?,
            }
        }
        Ok(())
    }
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
        let first = t.plan(&Observed::default(), &[]).unwrap().to_string();
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
            changed.plan(&applied, &[]).unwrap().to_string(),
            "add element inet t s { 10.0.0.2 }\ndelete element inet t s { 10.0.0.1 }\n"
        );
    }

    #[test]
    fn base_chains_are_redeclared_and_refilled_when_their_rules_change() {
        let mut t = table();
        t.skeleton
            .push_str("  chain forward {\n    type filter hook forward priority filter;\n  }\n");
        t.chains.insert("forward".into(), vec!["jump c1".into()]);
        let first = t
            .plan(&Observed::default(), &["forward"])
            .unwrap()
            .to_string();
        assert!(!first.contains("add chain inet t forward"), "{first}");
        // An older agent's table: the base chain's rules carry no version.
        let mut old = t.as_observed();
        old.chains.insert("forward".into(), Some(String::new()));
        let upgrade = t.plan(&old, &["forward"]).unwrap().to_string();
        assert!(upgrade.starts_with("table inet t {\n"), "{upgrade}");
        assert!(
            upgrade.contains("flush chain inet t forward\nadd rule inet t forward jump c1 comment")
        );
        assert_eq!(t.plan(&t.as_observed(), &["forward"]), None);
        let mut emptied = t.clone();
        emptied.chains.remove("forward");
        let script = emptied
            .plan(&t.as_observed(), &["forward"])
            .unwrap()
            .to_string();
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
