//! Security groups and rules: the per-project default group, duplicate detection, in-use
//! checks and cascading removal of rules that name a deleted group as remote.

use std::collections::HashMap;

use isthmus_model::security_group::{
    default_egress_rules, default_ingress_rules, GroupView, RuleView,
};
use isthmus_model::{Caller, Error, Result, SecurityGroup, SecurityGroupRule};
use isthmus_store::{Compare, Op, Txn};
use serde_json::Value;

use super::{check_revision, encode, new_id, now, store_error, Attempt, Listed, Object, Service};
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
        Ok(txn)
    }

    /// Deletes a rule with its index keys in `txn`.
    fn delete_rule(txn: Txn, rule: &SecurityGroupRule) -> Txn {
        let mut txn = txn
            .then(Op::delete(keys::security_group_rule(&rule.meta.id)))
            .then(Op::delete(keys::group_rule(
                &rule.security_group_id,
                &rule.meta.id,
            )));
        if let Some(remote) = &rule.remote_group_id {
            txn = txn.then(Op::delete(keys::remote_rule(remote, &rule.meta.id)));
        }
        txn
    }

    /// The id of `project_id`'s default group, creating it (with Neutron's four default rules)
    /// on first use.
    pub(crate) async fn ensure_default_group(&self, project_id: &str) -> Result<String> {
        let marker = keys::default_security_group(project_id);
        loop {
            if let Some(kv) = self.store.get(&marker).await.map_err(store_error)? {
                return String::from_utf8(kv.value.to_vec())
                    .map_err(|e| Error::Internal(format!("corrupt default group record: {e}")));
            }
            let stamp = now();
            let group = SecurityGroup::default_for(project_id, new_id(), &stamp);
            let mut rules = default_egress_rules(&group, [new_id(), new_id()], &stamp);
            rules.extend(default_ingress_rules(&group, [new_id(), new_id()], &stamp));
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
    ) -> Result<Vec<(String, u64)>> {
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            match self.load::<SecurityGroup>(id).await? {
                Some((g, rev)) if caller.is_admin || g.meta.project_id == project_id => {
                    out.push((id.clone(), rev))
                }
                _ => return Err(Error::not_found("SecurityGroup", id)),
            }
        }
        Ok(out)
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

    async fn render_group(&self, group: &SecurityGroup) -> Result<Object> {
        let rules = self.rules_of(&group.meta.id).await?;
        Ok(group.render(&rules.iter().collect::<Vec<_>>()))
    }

    pub(crate) async fn create_security_group(
        &self,
        caller: &Caller,
        body: Value,
    ) -> Result<Object> {
        let stamp = now();
        let group = SecurityGroup::parse_create(body, caller, new_id(), &stamp)?;
        self.ensure_default_group(&group.meta.project_id).await?;
        let rules = default_egress_rules(&group, [new_id(), new_id()], &stamp);
        let mut txn = Txn::new()
            .when(Compare::absent(keys::security_group(&group.meta.id)))
            .then(Op::put(
                keys::security_group(&group.meta.id),
                encode(&group)?,
            ));
        for rule in &rules {
            txn = Self::put_rule(txn, rule)?;
        }
        if !self.commit(txn).await? {
            return Err(Error::Internal("security group id collision".to_owned()));
        }
        Ok(group.render(&rules.iter().collect::<Vec<_>>()))
    }

    pub(crate) async fn show_security_group(&self, caller: &Caller, id: &str) -> Result<Object> {
        let (group, _) = self.load_owned::<SecurityGroup>(caller, id).await?;
        self.render_group(&group).await
    }

    pub(crate) async fn list_security_groups(&self, caller: &Caller) -> Result<Vec<Listed>> {
        // Neutron creates the caller's default group when it first lists groups.
        self.ensure_default_group(&caller.project_id).await?;
        let groups = self
            .load_all::<SecurityGroup>(keys::SECURITY_GROUPS)
            .await?;
        let mut rules: HashMap<String, Vec<SecurityGroupRule>> = HashMap::new();
        for (rule, _) in self
            .load_all::<SecurityGroupRule>(keys::SECURITY_GROUP_RULES)
            .await?
        {
            rules
                .entry(rule.security_group_id.clone())
                .or_default()
                .push(rule);
        }
        Ok(groups
            .into_iter()
            .filter(|(g, _)| caller.owns(&g.meta.project_id))
            .map(|(group, _)| {
                let rules = rules.remove(&group.meta.id).unwrap_or_default();
                Box::new(GroupView { group, rules }) as Listed
            })
            .collect())
    }

    pub(crate) async fn update_security_group(
        &self,
        caller: &Caller,
        id: &str,
        body: Value,
        if_match: Option<u64>,
    ) -> Result<Object> {
        let group = self
            .retry(|| {
                let body = body.clone();
                async move {
                    let (mut group, rev) = self.load_owned::<SecurityGroup>(caller, id).await?;
                    check_revision(&group.meta, if_match)?;
                    group.apply_update(body, &now())?;
                    Ok(if self.write_back(id, rev, &group).await? {
                        Attempt::Done(group)
                    } else {
                        Attempt::Retry
                    })
                }
            })
            .await?;
        self.render_group(&group).await
    }

    pub(crate) async fn delete_security_group(
        &self,
        caller: &Caller,
        id: &str,
        if_match: Option<u64>,
    ) -> Result<()> {
        self.retry(|| async move {
            let (group, rev) = self.load_owned::<SecurityGroup>(caller, id).await?;
            check_revision(&group.meta, if_match)?;
            if group.is_default && !caller.is_admin {
                return Err(Error::SecurityGroupCannotRemoveDefault);
            }
            let users = keys::group_ports_prefix(id);
            let mut txn = Txn::new()
                .when(Compare::mod_revision(keys::security_group(id), rev))
                .when(Compare::prefix_empty(&users))
                .then(Op::delete(keys::security_group(id)));
            if group.is_default {
                txn = txn.then(Op::delete(keys::default_security_group(
                    &group.meta.project_id,
                )));
            }
            // Its own rules, and other groups' rules naming it as remote (Neutron cascades).
            let mut doomed = self.rules_of(id).await?;
            for rule_id in self.index(&keys::remote_rules_prefix(id)).await? {
                if let Some((rule, _)) = self.load::<SecurityGroupRule>(&rule_id).await? {
                    if !doomed.iter().any(|r| r.meta.id == rule.meta.id) {
                        doomed.push(rule);
                    }
                }
            }
            for rule in &doomed {
                txn = Self::delete_rule(txn, rule);
            }
            if self.commit(txn).await? {
                return Ok(Attempt::Done(()));
            }
            if !self.index(&users).await?.is_empty() {
                return Err(Error::SecurityGroupInUse(id.to_owned()));
            }
            Ok(Attempt::Retry)
        })
        .await
    }

    pub(crate) async fn create_security_group_rule(
        &self,
        caller: &Caller,
        body: Value,
    ) -> Result<Object> {
        let parsed = SecurityGroupRule::parse_create(body, caller, new_id(), &now())?;
        self.retry(|| {
            let mut rule = parsed.clone();
            async move {
                let (mut group, rev) = self
                    .load_owned::<SecurityGroup>(caller, &rule.security_group_id)
                    .await?;
                rule.meta.project_id = group.meta.project_id.clone();
                let mut txn = Txn::new().when(Compare::mod_revision(
                    keys::security_group(&group.meta.id),
                    rev,
                ));
                if let Some(remote) = &rule.remote_group_id {
                    let (_, remote_rev) = self.load_owned::<SecurityGroup>(caller, remote).await?;
                    txn = txn.when(Compare::mod_revision(
                        keys::security_group(remote),
                        remote_rev,
                    ));
                }
                if let Some(existing) = self
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
                txn = Self::put_rule(txn, &rule)?;
                Ok(if self.commit(txn).await? {
                    Attempt::Done(rule.render(group.is_default))
                } else {
                    Attempt::Retry
                })
            }
        })
        .await
    }

    pub(crate) async fn show_security_group_rule(
        &self,
        caller: &Caller,
        id: &str,
    ) -> Result<Object> {
        let (rule, _) = self.load_owned::<SecurityGroupRule>(caller, id).await?;
        let in_default = self
            .load::<SecurityGroup>(&rule.security_group_id)
            .await?
            .is_some_and(|(g, _)| g.is_default);
        Ok(rule.render(in_default))
    }

    pub(crate) async fn list_security_group_rules(&self, caller: &Caller) -> Result<Vec<Listed>> {
        self.ensure_default_group(&caller.project_id).await?;
        let defaults: std::collections::HashSet<String> = self
            .load_all::<SecurityGroup>(keys::SECURITY_GROUPS)
            .await?
            .into_iter()
            .filter(|(g, _)| g.is_default)
            .map(|(g, _)| g.meta.id)
            .collect();
        Ok(self
            .load_all::<SecurityGroupRule>(keys::SECURITY_GROUP_RULES)
            .await?
            .into_iter()
            .filter(|(r, _)| caller.owns(&r.meta.project_id))
            .map(|(rule, _)| {
                let in_default_group = defaults.contains(&rule.security_group_id);
                Box::new(RuleView {
                    rule,
                    in_default_group,
                }) as Listed
            })
            .collect())
    }

    pub(crate) async fn delete_security_group_rule(&self, caller: &Caller, id: &str) -> Result<()> {
        self.retry(|| async move {
            let (rule, rule_rev) = self.load_owned::<SecurityGroupRule>(caller, id).await?;
            let (mut group, rev) = self
                .must_load::<SecurityGroup>(&rule.security_group_id)
                .await?;
            group.meta.touch(&now());
            let txn = Txn::new()
                .when(Compare::mod_revision(
                    keys::security_group_rule(id),
                    rule_rev,
                ))
                .when(Compare::mod_revision(
                    keys::security_group(&group.meta.id),
                    rev,
                ))
                .then(Op::put(
                    keys::security_group(&group.meta.id),
                    encode(&group)?,
                ));
            Ok(if self.commit(Self::delete_rule(txn, &rule)).await? {
                Attempt::Done(())
            } else {
                Attempt::Retry
            })
        })
        .await
    }
}
