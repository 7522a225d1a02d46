//! Security groups and rules: the per-project default group, duplicate detection, in-use
//! checks and cascading removal of rules that name a deleted group as remote.

use std::collections::{HashMap, HashSet};

use async_trait::async_trait;
use isthmus_model::input::Input;
use isthmus_model::rbac::Action;
use isthmus_model::resource::{Resource, View};
use isthmus_model::security_group::DefaultRule;
use isthmus_model::AddressGroup;
use isthmus_model::{Caller, Error, Result, SecurityGroup, SecurityGroupRule};
use isthmus_store::{Compare, Op, Txn};
use serde_json::{json, Value};

use super::rbac::{granted_ids, visible_with_grants};
use super::{
    encode, key_of, new_id, now, prefix_of, store_error, Attempt, Kind, Listed, Object, Service,
};
use crate::keys;

impl Service {
    /// Puts a rule with its index keys into `txn`.
    fn put_rule(txn: Txn, rule: &SecurityGroupRule) -> Result<Txn> {
        let mut txn = txn
            .then(Op::put(
                keys::security_group_rule(&rule.meta.id),
                encode(rule)?,
            ))
            .then(Op::put(
                keys::group_rule(&rule.security_group_id, &rule.meta.id),
                "",
            ));
        if let Some(remote) = &rule.remote_group_id {
            txn = txn.then(Op::put(keys::remote_rule(remote, &rule.meta.id), ""));
        }
        if let Some(group) = &rule.remote_address_group_id {
            txn = txn.then(Op::put(keys::address_group_rule(group, &rule.meta.id), ""));
        }
        Ok(txn)
    }

    /// Deletes a rule's index keys in `txn` (not the rule itself).
    fn delete_rule_index(txn: Txn, rule: &SecurityGroupRule) -> Txn {
        let mut txn = txn.then(Op::delete(keys::group_rule(
            &rule.security_group_id,
            &rule.meta.id,
        )));
        if let Some(remote) = &rule.remote_group_id {
            txn = txn.then(Op::delete(keys::remote_rule(remote, &rule.meta.id)));
        }
        if let Some(group) = &rule.remote_address_group_id {
            txn = txn.then(Op::delete(keys::address_group_rule(group, &rule.meta.id)));
        }
        txn
    }

    /// The template new groups take their rules from, seeded with Neutron's four rules the
    /// first time it is read.
    pub(crate) async fn default_rules(&self) -> Result<Vec<DefaultRule>> {
        let marker = DEFAULT_RULES_SEEDED;
        if self.store.get(marker).await.map_err(store_error)?.is_none() {
            let rules = DefaultRule::builtin(
                [new_id(), new_id(), new_id(), new_id()],
                crate::auth::NOAUTH_PROJECT,
                &now(),
            );
            let mut txn = Txn::new()
                .when(Compare::absent(marker))
                .then(Op::put(marker, ""));
            for rule in &rules {
                txn = txn.then(Op::put(key_of::<DefaultRule>(&rule.meta.id), encode(rule)?));
            }
            // Lost to another seeder: theirs is read below.
            self.commit(txn).await?;
        }
        Ok(self
            .load_all::<DefaultRule>(&prefix_of::<DefaultRule>())
            .await?
            .into_iter()
            .map(|(r, _)| r)
            .collect())
    }

    /// `group`'s rules from the template.
    async fn rules_from_template(
        &self,
        group: &SecurityGroup,
        now: &str,
    ) -> Result<Vec<SecurityGroupRule>> {
        Ok(self
            .default_rules()
            .await?
            .iter()
            .filter_map(|t| t.instantiate(group, new_id(), now))
            .collect())
    }

    /// The id of `project_id`'s default group, creating it (with the template's rules for
    /// default groups) on first use.
    pub(crate) async fn ensure_default_group(&self, project_id: &str) -> Result<String> {
        let marker = keys::default_security_group(project_id);
        loop {
            if let Some(kv) = self.store.get(&marker).await.map_err(store_error)? {
                return String::from_utf8(kv.value.to_vec())
                    .map_err(|e| Error::Internal(format!("corrupt default group record: {e}")));
            }
            let stamp = now();
            let group = SecurityGroup::default_for(project_id, new_id(), &stamp);
            let rules = self.rules_from_template(&group, &stamp).await?;
            let mut txn = Txn::new()
                .when(Compare::absent(&marker))
                .then(Op::put(marker.clone(), group.meta.id.clone()))
                .then(Op::put(
                    keys::security_group(&group.meta.id),
                    encode(&group)?,
                ));
            for rule in &rules {
                txn = Self::put_rule(txn, rule)?;
            }
            if self.commit(txn).await? {
                return Ok(group.meta.id);
            }
            // Another request created it first: read theirs.
        }
    }

    /// Checks groups a port of `project_id` will use and returns their revisions.
    pub(crate) async fn groups_for_port(
        &self,
        caller: &Caller,
        project_id: &str,
        ids: &[String],
    ) -> Result<(Vec<(String, u64)>, Txn)> {
        let mut out = Vec::with_capacity(ids.len());
        // A group used through a grant holds the grant until the port is written (its
        // revocation compares the use mark this rewrites, as for a shared network's ports).
        let mut guards = Txn::new();
        let mut kinds = HashSet::new();
        for id in ids {
            let Some((g, rev)) = self.load::<SecurityGroup>(id).await? else {
                return Err(Error::not_found("SecurityGroup", id));
            };
            kinds.insert(g.stateful);
            if g.meta.project_id != project_id {
                match self
                    .grant_guard(project_id, id, Action::AccessAsShared)
                    .await?
                {
                    Some(guard) => guards = guards.and(guard),
                    None if caller.is_admin() => {}
                    None => return Err(Error::not_found("SecurityGroup", id)),
                }
            }
            out.push((id.clone(), rev));
        }
        if kinds.len() > 1 {
            return Err(Error::fault(
                "SecurityGroupConflict",
                409,
                "Error Security group conflict: Cannot apply both stateful and stateless security groups on the same port at the same time.",
            ));
        }
        Ok((out, guards))
    }

    async fn rules_of(&self, group_id: &str) -> Result<Vec<SecurityGroupRule>> {
        let mut rules = Vec::new();
        for rule_id in self.index(&keys::group_rules_prefix(group_id)).await? {
            if let Some((rule, _)) = self.load::<SecurityGroupRule>(&rule_id).await? {
                rules.push(rule);
            }
        }
        Ok(rules)
    }
}

#[async_trait]
impl Kind for SecurityGroup {
    async fn visible(service: &Service, caller: &Caller, group: &SecurityGroup) -> Result<bool> {
        visible_with_grants(service, caller, group, &[Action::AccessAsShared]).await
    }

    async fn complete(service: &Service, group: SecurityGroup) -> Result<SecurityGroup> {
        let rules = service.rules_of(&group.meta.id).await?;
        Ok(group.with_rules(rules))
    }

    async fn list(service: &Service, caller: &Caller) -> Result<Vec<Listed>> {
        // Neutron creates the caller's default group when it first lists groups.
        service.ensure_default_group(&caller.project_id).await?;
        let groups = service
            .load_all::<SecurityGroup>(keys::SECURITY_GROUPS)
            .await?;
        let mut rules: HashMap<String, Vec<SecurityGroupRule>> = HashMap::new();
        for (rule, _) in service
            .load_all::<SecurityGroupRule>(keys::SECURITY_GROUP_RULES)
            .await?
        {
            rules
                .entry(rule.security_group_id.clone())
                .or_default()
                .push(rule);
        }
        let granted = granted_ids(
            &service.all_grants().await?,
            caller,
            &[Action::AccessAsShared],
        );
        Ok(groups
            .into_iter()
            .filter(|(g, _)| g.visible_to(caller) || granted.contains(&g.meta.id))
            .map(|(group, _)| {
                let rules = rules.remove(&group.meta.id).unwrap_or_default();
                Box::new(View::owned(group.with_rules(rules), caller)) as Listed
            })
            .collect())
    }

    async fn create(service: &Service, caller: &Caller, body: Value) -> Result<Object> {
        let stamp = now();
        let group = SecurityGroup::parse_create(body, caller, new_id(), &stamp)?;
        service.ensure_default_group(&group.meta.project_id).await?;
        let rules = service.rules_from_template(&group, &stamp).await?;
        let mut txn = Txn::new()
            .when(Compare::absent(keys::security_group(&group.meta.id)))
            .then(Op::put(
                keys::security_group(&group.meta.id),
                encode(&group)?,
            ));
        for rule in &rules {
            txn = Service::put_rule(txn, rule)?;
        }
        if !service.commit(txn).await? {
            return Err(Error::Internal("security group id collision".to_owned()));
        }
        Ok(group.with_rules(rules).render(caller))
    }

    async fn apply_update(
        service: &Service,
        _caller: &Caller,
        group: &mut SecurityGroup,
        body: Value,
    ) -> Result<Txn> {
        let was_stateful = group.stateful;
        group.apply_update(body, &now())?;
        if group.stateful == was_stateful {
            return Ok(Txn::new());
        }
        // Its ports would mix kinds, or change kind under their other groups.
        let users = keys::group_ports_prefix(&group.meta.id);
        if !service.index(&users).await?.is_empty() {
            return Err(Error::SecurityGroupInUse(group.meta.id.clone()));
        }
        Ok(Txn::new().when(Compare::prefix_empty(users)))
    }

    async fn delete_txn(service: &Service, caller: &Caller, group: &SecurityGroup) -> Result<Txn> {
        if group.is_default && !caller.is_admin() {
            return Err(Error::SecurityGroupCannotRemoveDefault);
        }
        let id = &group.meta.id;
        let mut txn = Txn::new().when(Compare::prefix_empty(keys::group_ports_prefix(id)));
        if group.is_default {
            txn = txn.then(Op::delete(keys::default_security_group(
                &group.meta.project_id,
            )));
        }
        // Its own rules, and other groups' rules naming it as remote (Neutron cascades).
        let mut doomed = service.rules_of(id).await?;
        for rule_id in service.index(&keys::remote_rules_prefix(id)).await? {
            if let Some((rule, _)) = service.load::<SecurityGroupRule>(&rule_id).await? {
                if !doomed.iter().any(|r| r.meta.id == rule.meta.id) {
                    doomed.push(rule);
                }
            }
        }
        for rule in &doomed {
            txn = Service::delete_rule_index(txn, rule)
                .then(Op::delete(keys::security_group_rule(&rule.meta.id)));
        }
        service.drop_policies(txn, id).await
    }

    async fn in_use(service: &Service, group: &SecurityGroup) -> Result<()> {
        let id = &group.meta.id;
        service
            .unused(&keys::group_ports_prefix(id), || {
                Error::SecurityGroupInUse(id.clone())
            })
            .await
    }
}

#[async_trait]
impl Kind for SecurityGroupRule {
    async fn complete(service: &Service, mut rule: SecurityGroupRule) -> Result<SecurityGroupRule> {
        rule.in_default_group = service
            .load::<SecurityGroup>(&rule.security_group_id)
            .await?
            .is_some_and(|(g, _)| g.is_default);
        Ok(rule)
    }

    async fn list(service: &Service, caller: &Caller) -> Result<Vec<Listed>> {
        service.ensure_default_group(&caller.project_id).await?;
        let defaults: HashSet<String> = service
            .load_all::<SecurityGroup>(keys::SECURITY_GROUPS)
            .await?
            .into_iter()
            .filter(|(g, _)| g.is_default)
            .map(|(g, _)| g.meta.id)
            .collect();
        Ok(service
            .load_all::<SecurityGroupRule>(keys::SECURITY_GROUP_RULES)
            .await?
            .into_iter()
            .filter(|(r, _)| r.visible_to(caller))
            .map(|(mut rule, _)| {
                rule.in_default_group = defaults.contains(&rule.security_group_id);
                Box::new(View::owned(rule, caller)) as Listed
            })
            .collect())
    }

    async fn create(service: &Service, caller: &Caller, body: Value) -> Result<Object> {
        let parsed = SecurityGroupRule::parse_create(body, caller, new_id(), &now())?;
        service
            .retry(|| {
                let mut rule = parsed.clone();
                async move {
                    let (mut group, rev) = service
                        .load_owned::<SecurityGroup>(caller, &rule.security_group_id)
                        .await?;
                    rule.meta.project_id = group.meta.project_id.clone();
                    let mut txn = Txn::new().when(Compare::mod_revision(
                        keys::security_group(&group.meta.id),
                        rev,
                    ));
                    if let Some(remote) = &rule.remote_group_id {
                        let (_, remote_rev) =
                            service.load_owned::<SecurityGroup>(caller, remote).await?;
                        txn = txn.when(Compare::mod_revision(
                            keys::security_group(remote),
                            remote_rev,
                        ));
                    }
                    // The address group stays until the rule is in (its delete checks for rules).
                    if let Some(remote) = &rule.remote_address_group_id {
                        let (_, remote_rev) =
                            service.load_visible::<AddressGroup>(caller, remote).await?;
                        txn = txn.when(Compare::mod_revision(
                            key_of::<AddressGroup>(remote),
                            remote_rev,
                        ));
                    }
                    if let Some(existing) = service
                        .rules_of(&group.meta.id)
                        .await?
                        .into_iter()
                        .find(|r| r.same_rule(&rule))
                    {
                        return Err(Error::SecurityGroupRuleExists(existing.meta.id));
                    }
                    // Bumping the group serialises rule changes per group, which keeps the
                    // duplicate check above race-free.
                    group.meta.touch(&now());
                    txn = txn.then(Op::put(
                        keys::security_group(&group.meta.id),
                        encode(&group)?,
                    ));
                    txn = Service::put_rule(txn, &rule)?;
                    Ok(if service.commit(txn).await? {
                        rule.in_default_group = group.is_default;
                        Attempt::Done(rule.render(caller))
                    } else {
                        Attempt::Retry
                    })
                }
            })
            .await
    }

    /// A rule change bumps its group, so agents see one change per group.
    async fn delete_txn(
        service: &Service,
        _caller: &Caller,
        rule: &SecurityGroupRule,
    ) -> Result<Txn> {
        let (mut group, rev) = service
            .must_load::<SecurityGroup>(&rule.security_group_id)
            .await?;
        group.meta.touch(&now());
        let txn = Txn::new()
            .when(Compare::mod_revision(
                keys::security_group(&group.meta.id),
                rev,
            ))
            .then(Op::put(
                keys::security_group(&group.meta.id),
                encode(&group)?,
            ));
        Ok(Service::delete_rule_index(txn, rule))
    }
}

/// Set once the template of default rules has been seeded.
const DEFAULT_RULES_SEEDED: &str = "/isthmus/default-security-group-rules-seeded";

#[async_trait]
impl Kind for DefaultRule {
    async fn list(service: &Service, caller: &Caller) -> Result<Vec<Listed>> {
        Ok(service
            .default_rules()
            .await?
            .into_iter()
            .map(|r| Box::new(View::owned(r, caller)) as Listed)
            .collect())
    }

    async fn create(service: &Service, caller: &Caller, body: Value) -> Result<Object> {
        let rule = DefaultRule::parse_create(
            body,
            caller,
            isthmus_model::Meta::new(new_id(), caller.project_id.clone(), &now()),
        )?;
        if let Some(existing) = service
            .default_rules()
            .await?
            .iter()
            .find(|r| r.same_rule(&rule))
        {
            return Err(Error::fault(
                "DuplicateDefaultSgRule",
                409,
                format!(
                    "Default security group rule already exists. Rule id is {}.",
                    existing.meta.id
                ),
            ));
        }
        let key = key_of::<DefaultRule>(&rule.meta.id);
        let txn = Txn::new()
            .when(Compare::absent(&key))
            .then(Op::put(key, encode(&rule)?));
        if !service.commit(txn).await? {
            return Err(Error::Internal("default rule id collision".to_owned()));
        }
        Ok(rule.render(caller))
    }
}

#[async_trait]
impl Kind for AddressGroup {
    fn from_input(
        _service: &Service,
        _caller: &Caller,
        meta: isthmus_model::Meta,
        input: &mut Input,
    ) -> Result<AddressGroup> {
        AddressGroup::from_input(meta, input)
    }

    async fn apply_update(
        _service: &Service,
        _caller: &Caller,
        group: &mut AddressGroup,
        body: Value,
    ) -> Result<Txn> {
        group.apply_update(body, &now())?;
        Ok(Txn::new())
    }

    async fn action(
        service: &Service,
        caller: &Caller,
        id: &str,
        action: &str,
        body: Value,
    ) -> Result<Value> {
        let add = match action {
            "add_addresses" => true,
            "remove_addresses" => false,
            _ => return Err(Error::PathNotFound),
        };
        Ok(json!({"address_group": service.change_addresses(caller, id, body, add).await?}))
    }

    async fn delete_txn(_service: &Service, _caller: &Caller, group: &AddressGroup) -> Result<Txn> {
        Ok(
            Txn::new().when(Compare::prefix_empty(keys::address_group_rules_prefix(
                &group.meta.id,
            ))),
        )
    }

    async fn in_use(service: &Service, group: &AddressGroup) -> Result<()> {
        let id = &group.meta.id;
        service
            .unused(&keys::address_group_rules_prefix(id), || {
                Error::fault(
                    "AddressGroupInUse",
                    409,
                    format!("Address group {id} is in use on one or more security group rules."),
                )
            })
            .await
    }
}

impl Service {
    /// `add_addresses` / `remove_addresses` on an address group; agents follow through their
    /// watch.
    pub async fn change_addresses(
        &self,
        caller: &Caller,
        id: &str,
        body: Value,
        add: bool,
    ) -> Result<Object> {
        let addresses = Input::required("addresses", body.get("addresses").cloned())?;
        let addresses = isthmus_model::address_group::parse_addresses(addresses)?;
        let verb = if add {
            "add_addresses"
        } else {
            "remove_addresses"
        };
        let group = self
            .modify::<AddressGroup>(caller, id, verb, |g| {
                if add {
                    g.add(&addresses)
                } else {
                    g.remove(&addresses)
                }
            })
            .await?;
        Ok(group.render(caller))
    }
}
