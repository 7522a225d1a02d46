//! RBAC policies: who besides an object's owner may see and use it, and the in-use checks
//! Neutron makes before a grant goes away.

use std::collections::{HashMap, HashSet};

use async_trait::async_trait;
use isthmus_model::rbac::{granted, Action, ObjectType};
use isthmus_model::resource::Resource;
use isthmus_model::{
    AddressScope, Caller, Error, FloatingIp, Meta, Network, Port, RbacPolicy, Result, Router,
    SecurityGroup, Subnet, SubnetPool,
};
use isthmus_store::{Compare, Op, Txn};
use serde_json::Value;

use super::{encode, key_of, new_id, now, prefix_of, Attempt, Kind, Object, Service};
use crate::keys;

/// Every policy, by the object it shares (for lists).
pub(crate) type Grants = HashMap<String, Vec<RbacPolicy>>;

impl Service {
    /// The policies sharing `object_id`, with their revisions.
    async fn versioned_policies_on(&self, object_id: &str) -> Result<Vec<(RbacPolicy, u64)>> {
        let mut out = Vec::new();
        for id in self.index(&keys::rbac_object_prefix(object_id)).await? {
            if let Some(found) = self.load::<RbacPolicy>(&id).await? {
                out.push(found);
            }
        }
        Ok(out)
    }

    /// The policies sharing `object_id`.
    pub(crate) async fn policies_on(&self, object_id: &str) -> Result<Vec<RbacPolicy>> {
        Ok(self
            .versioned_policies_on(object_id)
            .await?
            .into_iter()
            .map(|(p, _)| p)
            .collect())
    }

    /// Every policy, by object.
    pub(crate) async fn all_grants(&self) -> Result<Grants> {
        let mut by_object: Grants = HashMap::new();
        for (p, _) in self.load_all::<RbacPolicy>(keys::RBAC_POLICIES).await? {
            by_object.entry(p.object_id.clone()).or_default().push(p);
        }
        Ok(by_object)
    }

    /// Whether a policy grants `caller`'s project `action` on `object_id`.
    pub(crate) async fn is_granted(
        &self,
        caller: &Caller,
        object_id: &str,
        action: Action,
    ) -> Result<bool> {
        Ok(granted(
            &self.policies_on(object_id).await?,
            &caller.project_id,
            action,
        ))
    }

    /// For a use of `object_id` by `project` that only a policy allows: compares the granting
    /// policy and rewrites the object's use mark (which revocations compare). `None` when no
    /// policy grants it.
    pub(crate) async fn grant_guard(
        &self,
        project: &str,
        object_id: &str,
        action: Action,
    ) -> Result<Option<Txn>> {
        let mut policies = self.versioned_policies_on(object_id).await?;
        policies.retain(|(p, _)| p.grants(project, action));
        // Prefer a grant to this project: a wildcard may go while it stays.
        policies.sort_by_key(|(p, _)| p.target_tenant != project);
        let Some((policy, rev)) = policies.first() else {
            return Ok(None);
        };
        let (key, rev) = (key_of::<RbacPolicy>(&policy.meta.id), *rev);
        Ok(Some(Txn::new().when(Compare::mod_revision(key, rev)).then(
            Op::put(keys::rbac_use(object_id), project.to_owned()),
        )))
    }

    /// A compare on `object_id`'s use mark as it is now, for a revocation.
    async fn use_mark(&self, object_id: &str) -> Result<Compare> {
        let mark = keys::rbac_use(object_id);
        Ok(
            match self.store.get(&mark).await.map_err(super::store_error)? {
                Some(kv) => Compare::mod_revision(mark, kv.mod_revision),
                None => Compare::absent(mark),
            },
        )
    }

    /// Ops deleting every policy on `object_id` (with their index and claims), for the
    /// object's own delete.
    pub(crate) async fn drop_policies(&self, txn: Txn, object_id: &str) -> Result<Txn> {
        let txn = txn.then(Op::delete(keys::rbac_use(object_id)));
        Ok(self.policies_on(object_id).await?.iter().fold(txn, forget))
    }

    /// The owner, key and revision of the object a policy shares, checking `caller` may
    /// share it: 404 when it cannot see it, 403 when it sees but does not own it.
    async fn shared_object(
        &self,
        caller: &Caller,
        object_type: ObjectType,
        id: &str,
    ) -> Result<(String, String, u64)> {
        async fn owned<T: Kind>(
            service: &Service,
            caller: &Caller,
            id: &str,
        ) -> Result<(String, String, u64)> {
            let (obj, rev) = service.load_visible::<T>(caller, id).await?;
            if !caller.owns(&obj.meta().project_id) {
                return Err(Error::PolicyNotAuthorized(
                    "rule:create_rbac_policy".to_owned(),
                ));
            }
            Ok((obj.meta().project_id.clone(), key_of::<T>(id), rev))
        }
        match object_type {
            ObjectType::Network => owned::<Network>(self, caller, id).await,
            ObjectType::SecurityGroup => owned::<SecurityGroup>(self, caller, id).await,
            ObjectType::Subnetpool => owned::<SubnetPool>(self, caller, id).await,
            ObjectType::AddressScope => owned::<AddressScope>(self, caller, id).await,
        }
    }

    /// Refuses to let `policy` stop granting what it grants while a project that would lose
    /// access still uses the object (`remaining` are the object's other policies).
    async fn check_not_in_use(&self, policy: &RbacPolicy, remaining: &[RbacPolicy]) -> Result<()> {
        let owner = &policy.meta.project_id;
        let loses = |project: &str| {
            project != owner
                && policy.grants(project, policy.action)
                && !granted(remaining, project, policy.action)
        };
        let id = &policy.object_id;
        let users: Vec<String> = match (policy.object_type, policy.action) {
            (ObjectType::Network, Action::AccessAsShared) => {
                let mut projects = Vec::new();
                for port_id in self.index(&keys::network_ports_prefix(id)).await? {
                    if let Some((port, _)) = self.load::<Port>(&port_id).await? {
                        projects.push(port.meta.project_id);
                    }
                }
                if let Some((network, _)) = self.load::<Network>(id).await? {
                    for subnet_id in &network.subnets {
                        if let Some((subnet, _)) = self.load::<Subnet>(subnet_id).await? {
                            projects.push(subnet.meta.project_id);
                        }
                    }
                }
                projects
            }
            (ObjectType::Network, Action::AccessAsExternal) => {
                let mut projects: Vec<String> = self
                    .load_all::<Router>(&prefix_of::<Router>())
                    .await?
                    .into_iter()
                    .filter(|(r, _)| r.gateway.as_ref().is_some_and(|g| &g.network_id == id))
                    .map(|(r, _)| r.meta.project_id)
                    .collect();
                projects.extend(
                    self.load_all::<FloatingIp>(&prefix_of::<FloatingIp>())
                        .await?
                        .into_iter()
                        .filter(|(f, _)| &f.floating_network_id == id)
                        .map(|(f, _)| f.meta.project_id),
                );
                projects
            }
            (ObjectType::SecurityGroup, _) => {
                let mut projects = Vec::new();
                for port_id in self.index(&keys::group_ports_prefix(id)).await? {
                    if let Some((port, _)) = self.load::<Port>(&port_id).await? {
                        projects.push(port.meta.project_id);
                    }
                }
                projects
            }
            (ObjectType::Subnetpool, _) => self
                .pool_allocations(id)
                .await?
                .into_iter()
                .map(|(project, _)| project)
                .collect(),
            (ObjectType::AddressScope, _) => {
                let mut projects = Vec::new();
                for pool_id in self.index(&keys::scope_pools_prefix(id)).await? {
                    if let Some((pool, _)) = self.load::<SubnetPool>(&pool_id).await? {
                        projects.push(pool.meta.project_id);
                    }
                }
                projects
            }
        };
        if users.iter().any(|p| loses(p)) {
            return Err(Error::fault(
                "RbacPolicyInUse",
                409,
                format!(
                    "RBAC policy on object {id} cannot be removed because other objects depend on it."
                ),
            ));
        }
        Ok(())
    }
}

impl Service {
    /// Adds to `txn` the wildcard `access_as_shared` policy of a network being shared (what
    /// `shared: true` is in Neutron: the policy `network rbac list` shows, whose deletion
    /// unshares the network).
    pub(crate) fn share_network(txn: Txn, network: &Network) -> Result<Txn> {
        let policy = RbacPolicy {
            meta: Meta::new(new_id(), network.meta.project_id.clone(), &now()),
            object_type: ObjectType::Network,
            object_id: network.meta.id.clone(),
            action: Action::AccessAsShared,
            target_tenant: WILDCARD.to_owned(),
        };
        record(txn, &policy)
    }

    /// Adds to `txn` the removal of a network's wildcard `access_as_shared` policy, refused
    /// while another project uses the network through it alone.
    pub(crate) async fn unshare_network(&self, txn: Txn, network_id: &str) -> Result<Txn> {
        let policies = self.versioned_policies_on(network_id).await?;
        let Some((wildcard, rev)) = policies
            .iter()
            .find(|(p, _)| is_shared_wildcard(p))
            .cloned()
        else {
            return Ok(txn);
        };
        let remaining: Vec<RbacPolicy> = policies
            .iter()
            .filter(|(p, _)| p.meta.id != wildcard.meta.id)
            .map(|(p, _)| p.clone())
            .collect();
        let mark = self.use_mark(network_id).await?;
        // Only the in-use refusal becomes Neutron's network error; a store failure stays one.
        self.check_not_in_use(&wildcard, &remaining)
            .await
            .map_err(|e| match e {
                Error::Fault {
                    kind: "RbacPolicyInUse",
                    ..
                } => Error::fault(
                    "InvalidSharedSetting",
                    409,
                    format!(
                        "Unable to reconfigure sharing settings for network {network_id}. Multiple tenants are using it."
                    ),
                ),
                other => other,
            })?;
        let txn = txn.when(mark).when(Compare::mod_revision(
            key_of::<RbacPolicy>(&wildcard.meta.id),
            rev,
        ));
        Ok(forget(txn, &wildcard))
    }

    /// When `before` → `after` changes whether a network is shared with everyone, adds the
    /// network's new `shared` flag (under its revision) to `txn`.
    async fn follow_sharing(
        &self,
        txn: Txn,
        before: Option<&RbacPolicy>,
        after: Option<&RbacPolicy>,
    ) -> Result<Txn> {
        let was = before.is_some_and(is_shared_wildcard);
        let is = after.is_some_and(is_shared_wildcard);
        let Some(policy) = before.or(after).filter(|_| was != is) else {
            return Ok(txn);
        };
        let (mut network, rev) = self.must_load::<Network>(&policy.object_id).await?;
        network.shared = is;
        let key = key_of::<Network>(&network.meta.id);
        Ok(txn
            .when(Compare::mod_revision(key.clone(), rev))
            .then(Op::put(key, encode(&network)?)))
    }
}

/// Who a wildcard policy targets.
const WILDCARD: &str = "*";

/// Whether a policy shares a network with every project: the network's `shared` flag.
fn is_shared_wildcard(p: &RbacPolicy) -> bool {
    p.object_type == ObjectType::Network
        && p.action == Action::AccessAsShared
        && p.target_tenant == WILDCARD
}

/// Adds a new policy to `txn`: the policy, its object's index entry and its claim (which
/// must be free).
fn record(txn: Txn, policy: &RbacPolicy) -> Result<Txn> {
    let claim = claim(policy);
    Ok(txn
        .when(Compare::absent(&claim))
        .then(Op::put(
            key_of::<RbacPolicy>(&policy.meta.id),
            encode(policy)?,
        ))
        .then(Op::put(
            keys::rbac_object(&policy.object_id, &policy.meta.id),
            "",
        ))
        .then(Op::put(claim, policy.meta.id.clone())))
}

/// Adds the removal of a policy to `txn`: the policy, its index entry and its claim.
fn forget(txn: Txn, policy: &RbacPolicy) -> Txn {
    txn.then(Op::delete(key_of::<RbacPolicy>(&policy.meta.id)))
        .then(Op::delete(keys::rbac_object(
            &policy.object_id,
            &policy.meta.id,
        )))
        .then(Op::delete(claim(policy)))
}

/// The claim that makes (object, action, target) unique.
fn claim(p: &RbacPolicy) -> String {
    keys::rbac_claim(&p.object_id, p.action.as_str(), &p.target_tenant)
}

fn duplicate() -> Error {
    Error::fault(
        "DuplicateRbacPolicy",
        409,
        "An RBAC policy already exists with those values.",
    )
}

/// Whether `caller` sees `obj` of a kind that RBAC can share with `action`: the model's
/// own rule (owner, shared flag) or a policy.
pub(crate) async fn visible_with_grants<T: Resource>(
    service: &Service,
    caller: &Caller,
    obj: &T,
    actions: &[Action],
) -> Result<bool> {
    if obj.visible_to(caller) {
        return Ok(true);
    }
    let policies = service.policies_on(&obj.meta().id).await?;
    Ok(actions
        .iter()
        .any(|a| granted(&policies, &caller.project_id, *a)))
}

/// The ids of objects `caller` may see through a policy, among `grants`.
pub(crate) fn granted_ids(grants: &Grants, caller: &Caller, actions: &[Action]) -> HashSet<String> {
    grants
        .iter()
        .filter(|(_, ps)| {
            actions
                .iter()
                .any(|a| granted(ps.iter(), &caller.project_id, *a))
        })
        .map(|(id, _)| id.clone())
        .collect()
}

#[async_trait]
impl Kind for RbacPolicy {
    async fn create(service: &Service, caller: &Caller, body: Value) -> Result<Object> {
        let stamp = now();
        let parsed =
            RbacPolicy::parse_create(body, caller, Meta::new(new_id(), String::new(), &stamp))?;
        let policy = service
            .retry(|| {
                let mut policy = parsed.clone();
                async move {
                    let (owner, object_key, object_rev) = service
                        .shared_object(caller, policy.object_type, &policy.object_id)
                        .await?;
                    policy.meta.project_id = owner;
                    let claim = claim(&policy);
                    if service
                        .store
                        .get(&claim)
                        .await
                        .map_err(super::store_error)?
                        .is_some()
                    {
                        return Err(duplicate());
                    }
                    // A network shared with everyone is rewritten with its `shared` flag.
                    let txn = service
                        .follow_sharing(Txn::new(), None, Some(&policy))
                        .await?
                        .when(Compare::mod_revision(object_key, object_rev))
                        .when(Compare::absent(key_of::<RbacPolicy>(&policy.meta.id)));
                    let txn = record(txn, &policy)?;
                    Ok(if service.commit(txn).await? {
                        Attempt::Done(policy)
                    } else {
                        Attempt::Retry
                    })
                }
            })
            .await?;
        Ok(policy.render(caller))
    }

    async fn apply_update(
        service: &Service,
        _caller: &Caller,
        policy: &mut RbacPolicy,
        body: Value,
    ) -> Result<Txn> {
        let before = policy.clone();
        policy.apply_update(body, &now())?;
        if policy.target_tenant == before.target_tenant {
            return Ok(Txn::new());
        }
        let others: Vec<RbacPolicy> = service
            .policies_on(&policy.object_id)
            .await?
            .into_iter()
            .filter(|p| p.meta.id != policy.meta.id)
            .chain(std::iter::once(policy.clone()))
            .collect();
        let mark = service.use_mark(&policy.object_id).await?;
        service.check_not_in_use(&before, &others).await?;
        let new_claim = claim(policy);
        if service
            .store
            .get(&new_claim)
            .await
            .map_err(super::store_error)?
            .is_some()
        {
            return Err(duplicate());
        }
        let txn = service
            .follow_sharing(Txn::new(), Some(&before), Some(policy))
            .await?;
        Ok(txn
            .when(mark)
            .when(Compare::absent(&new_claim))
            .then(Op::delete(claim(&before)))
            .then(Op::put(new_claim, policy.meta.id.clone())))
    }

    async fn delete_txn(service: &Service, _caller: &Caller, policy: &RbacPolicy) -> Result<Txn> {
        let others: Vec<(RbacPolicy, u64)> = service
            .versioned_policies_on(&policy.object_id)
            .await?
            .into_iter()
            .filter(|(p, _)| p.meta.id != policy.meta.id)
            .collect();
        let mark = service.use_mark(&policy.object_id).await?;
        let remaining: Vec<RbacPolicy> = others.iter().map(|(p, _)| p.clone()).collect();
        service.check_not_in_use(policy, &remaining).await?;
        // A new use or a change to the object's policies between this check and the commit
        // retries it.
        let mut txn = service
            .follow_sharing(Txn::new(), Some(policy), None)
            .await?
            .when(mark)
            .then(Op::delete(keys::rbac_object(
                &policy.object_id,
                &policy.meta.id,
            )))
            .then(Op::delete(claim(policy)));
        for (p, rev) in &others {
            txn = txn.when(Compare::mod_revision(
                key_of::<RbacPolicy>(&p.meta.id),
                *rev,
            ));
        }
        Ok(txn)
    }
}
