//! Address scopes and subnet pools: sharing through RBAC, one default pool per family,
//! unique prefixes within a scope, prefix allocation for subnets and the prefix operations.

use async_trait::async_trait;
use isthmus_model::addr::Cidr;
use isthmus_model::input::Input;
use isthmus_model::rbac::Action;
use isthmus_model::resource::{Resource, View};
use isthmus_model::subnet_pool::parse_prefixes;
use isthmus_model::{AddressScope, Caller, Error, Meta, Result, SubnetPool};
use isthmus_store::{Compare, Op, Txn};
use serde_json::{json, Value};

use super::rbac::{granted_ids, visible_with_grants};
use super::{key_of, now, prefix_of, store_error, Attempt, Kind, Listed, Service};
use crate::keys;

const SHARE: &[Action] = &[Action::AccessAsShared];

/// Lists a kind RBAC can share: what the model shows the caller plus what policies grant.
async fn list_shared<T: Kind>(service: &Service, caller: &Caller) -> Result<Vec<Listed>> {
    let grants = service.all_grants().await?;
    let granted = granted_ids(&grants, caller, SHARE);
    Ok(service
        .load_all::<T>(&prefix_of::<T>())
        .await?
        .into_iter()
        .filter(|(o, _)| o.visible_to(caller) || granted.contains(&o.meta().id))
        .map(|(o, _)| Box::new(View::owned(o, caller)) as Listed)
        .collect())
}

#[async_trait]
impl Kind for AddressScope {
    async fn visible(service: &Service, caller: &Caller, scope: &AddressScope) -> Result<bool> {
        visible_with_grants(service, caller, scope, SHARE).await
    }

    async fn list(service: &Service, caller: &Caller) -> Result<Vec<Listed>> {
        list_shared::<AddressScope>(service, caller).await
    }

    fn from_input(
        _service: &Service,
        _caller: &Caller,
        meta: Meta,
        input: &mut Input,
    ) -> Result<AddressScope> {
        AddressScope::from_input(meta, input)
    }

    async fn apply_update(
        _service: &Service,
        _caller: &Caller,
        scope: &mut AddressScope,
        body: Value,
    ) -> Result<Txn> {
        scope.apply_update(body, &now())?;
        Ok(Txn::new())
    }

    async fn delete_txn(service: &Service, _caller: &Caller, scope: &AddressScope) -> Result<Txn> {
        let txn = Txn::new().when(Compare::prefix_empty(keys::scope_pools_prefix(
            &scope.meta.id,
        )));
        service.drop_policies(txn, &scope.meta.id).await
    }

    async fn in_use(service: &Service, scope: &AddressScope) -> Result<()> {
        let id = &scope.meta.id;
        service
            .unused(&keys::scope_pools_prefix(id), || Error::fault(
                "AddressScopeInUse",
                409,
                format!("Unable to complete operation on address scope {id}. There are one or more subnet pools in use on the address scope."),
            ))
            .await
    }
}

impl Service {
    /// What a pool has handed out: (project, prefix) of each of its subnets.
    pub(crate) async fn pool_allocations(&self, pool_id: &str) -> Result<Vec<(String, Cidr)>> {
        let range = self
            .store
            .range(&keys::pool_subnets_prefix(pool_id))
            .await
            .map_err(store_error)?;
        range
            .kvs
            .iter()
            .map(|kv| {
                let text = String::from_utf8_lossy(&kv.value);
                text.split_once(' ')
                    .and_then(|(project, cidr)| {
                        Cidr::parse(cidr).ok().map(|c| (project.to_owned(), c))
                    })
                    .ok_or_else(|| Error::Internal(format!("corrupt allocation record {}", kv.key)))
            })
            .collect()
    }

    /// Compares and writes what keeps `pool`'s scope membership, default claim and
    /// prefixes consistent, given how it was (`before`, `None` on create).
    async fn pool_constraints(
        &self,
        caller: &Caller,
        pool: &SubnetPool,
        before: Option<&SubnetPool>,
    ) -> Result<Txn> {
        let id = &pool.meta.id;
        let mut txn = Txn::new();
        let old_scope = before.and_then(|b| b.address_scope_id.clone());
        if let Some(scope_id) = &pool.address_scope_id {
            let (scope, scope_rev) = self.load_visible::<AddressScope>(caller, scope_id).await?;
            if scope.ip_version != pool.ip_version {
                return Err(Error::fault(
                    "IllegalSubnetPoolIpVersionAssociationToAddressScope",
                    400,
                    format!("Illegal subnetpool association: subnetpool {id} cannot associate with address scope {scope_id} because subnetpool ip_version is not {}.", scope.ip_version.number()),
                ));
            }
            if !caller.owns(&scope.meta.project_id)
                && !scope.shared
                && !self
                    .is_granted(caller, scope_id, Action::AccessAsShared)
                    .await?
            {
                return Err(Error::fault(
                    "IllegalSubnetPoolAssociationToAddressScope",
                    400,
                    format!("Illegal subnetpool association: subnetpool {id} cannot be associated with address scope {scope_id}."),
                ));
            }
            // Pools in one scope never overlap; a pool joining or growing re-checks, and the
            // scope's revision orders concurrent joins.
            for other_id in self.index(&keys::scope_pools_prefix(scope_id)).await? {
                if &other_id == id {
                    continue;
                }
                if let Some((other, other_rev)) = self.load::<SubnetPool>(&other_id).await? {
                    if other
                        .prefixes
                        .iter()
                        .any(|o| pool.prefixes.iter().any(|p| p.overlaps(o)))
                    {
                        return Err(Error::fault(
                            "AddressScopePrefixConflict",
                            409,
                            "Failed to associate address scope: subnetpools within an address scope must have unique prefixes.",
                        ));
                    }
                    txn = txn.when(Compare::mod_revision(
                        key_of::<SubnetPool>(&other_id),
                        other_rev,
                    ));
                }
            }
            txn = txn
                .when(Compare::mod_revision(
                    key_of::<AddressScope>(scope_id),
                    scope_rev,
                ))
                .then(Op::put(keys::scope_pool(scope_id, id), ""));
        }
        if let Some(old) = old_scope.filter(|o| Some(o) != pool.address_scope_id.as_ref()) {
            txn = txn.then(Op::delete(keys::scope_pool(&old, id)));
        }
        let default_key = keys::default_subnet_pool(pool.ip_version.number());
        let was_default = before.is_some_and(|b| b.is_default);
        if pool.is_default && !was_default {
            if self
                .store
                .get(&default_key)
                .await
                .map_err(store_error)?
                .is_some()
            {
                return Err(Error::InvalidInput(format!(
                    "A default subnetpool for this IP family has already been set. Only one default may exist per IP family (IPv{})",
                    pool.ip_version.number()
                )));
            }
            txn = txn
                .when(Compare::absent(&default_key))
                .then(Op::put(default_key, id.clone()));
        } else if !pool.is_default && was_default {
            txn = txn.then(Op::delete(default_key));
        }
        Ok(txn)
    }

    /// `add_prefixes` / `remove_prefixes` on a pool: returns its prefixes.
    pub async fn subnet_pool_prefixes(
        &self,
        caller: &Caller,
        id: &str,
        body: Value,
        add: bool,
    ) -> Result<Value> {
        let requested = Input::required("prefixes", body.get("prefixes").cloned())?;
        let requested = parse_prefixes("prefixes", requested)?;
        let verb = if add {
            "add_prefixes"
        } else {
            "remove_prefixes"
        };
        let pool = self
            .retry(|| {
                let requested = requested.clone();
                async move {
                    let (mut pool, rev) = self
                        .load_for_change::<SubnetPool>(caller, id, None, verb)
                        .await?;
                    let before = pool.clone();
                    let lock = keys::pool_allocation_lock(id);
                    let lock_rev = self
                        .store
                        .get(&lock)
                        .await
                        .map_err(store_error)?
                        .map(|kv| kv.mod_revision);
                    if add {
                        pool.add_prefixes(&requested, &now())?;
                    } else {
                        let allocated: Vec<Cidr> = self
                            .pool_allocations(id)
                            .await?
                            .into_iter()
                            .map(|(_, c)| c)
                            .collect();
                        pool.remove_prefixes(&requested, &allocated, &now())?;
                    }
                    let key = key_of::<SubnetPool>(id);
                    let txn = self
                        .pool_constraints(caller, &pool, Some(&before))
                        .await?
                        .when(match lock_rev {
                            Some(r) => Compare::mod_revision(lock.clone(), r),
                            None => Compare::absent(lock.clone()),
                        })
                        .when(Compare::mod_revision(key.clone(), rev))
                        .then(Op::put(key, super::encode(&pool)?));
                    Ok(if self.commit(txn).await? {
                        Attempt::Done(pool)
                    } else {
                        Attempt::Retry
                    })
                }
            })
            .await?;
        Ok(json!({"prefixes": pool.prefixes.iter().map(Cidr::to_string).collect::<Vec<_>>()}))
    }

    /// The pool a subnet asks for (`None`: the family's default pool), which `caller` must be
    /// able to use.
    pub(crate) async fn pool_for_subnet(
        &self,
        caller: &Caller,
        pool_id: Option<&str>,
        version: isthmus_model::addr::IpVersion,
    ) -> Result<(SubnetPool, u64)> {
        let id = match pool_id {
            Some(id) => id.to_owned(),
            None => {
                let key = keys::default_subnet_pool(version.number());
                let kv = self
                    .store
                    .get(&key)
                    .await
                    .map_err(store_error)?
                    .ok_or_else(|| {
                        Error::BadRequest(format!(
                            "No default subnetpool found for IPv{}",
                            version.number()
                        ))
                    })?;
                String::from_utf8_lossy(&kv.value).into_owned()
            }
        };
        let (pool, rev) = self.load_visible::<SubnetPool>(caller, &id).await?;
        if pool.ip_version != version {
            return Err(Error::BadRequest(format!(
                "Cannot allocate IPv{} subnet from IPv{} subnet pool",
                version.number(),
                pool.ip_version.number()
            )));
        }
        Ok((pool, rev))
    }
}

#[async_trait]
impl Kind for SubnetPool {
    async fn visible(service: &Service, caller: &Caller, pool: &SubnetPool) -> Result<bool> {
        visible_with_grants(service, caller, pool, SHARE).await
    }

    async fn list(service: &Service, caller: &Caller) -> Result<Vec<Listed>> {
        list_shared::<SubnetPool>(service, caller).await
    }

    async fn create(service: &Service, caller: &Caller, body: Value) -> Result<super::Object> {
        let mut input = Input::for_kind(
            body,
            SubnetPool::definition(),
            isthmus_model::input::Method::Create,
        )?;
        let project_id = isthmus_model::meta::owner_project(&mut input, caller)?;
        let mut meta = Meta::new(super::new_id(), project_id, &now());
        meta.read_common(&mut input)?;
        let pool = SubnetPool::from_input(meta, &mut input)?;
        let pool = service
            .retry(|| {
                let pool = pool.clone();
                async move {
                    let key = key_of::<SubnetPool>(&pool.meta.id);
                    let txn = service
                        .pool_constraints(caller, &pool, None)
                        .await?
                        .when(Compare::absent(&key))
                        .then(Op::put(key, super::encode(&pool)?));
                    Ok(if service.commit(txn).await? {
                        Attempt::Done(pool)
                    } else {
                        Attempt::Retry
                    })
                }
            })
            .await?;
        Ok(pool.render(caller))
    }

    async fn apply_update(
        service: &Service,
        caller: &Caller,
        pool: &mut SubnetPool,
        body: Value,
    ) -> Result<Txn> {
        let before = pool.clone();
        pool.apply_update(body, &now())?;
        service.pool_constraints(caller, pool, Some(&before)).await
    }

    async fn action(
        service: &Service,
        caller: &Caller,
        id: &str,
        action: &str,
        body: Value,
    ) -> Result<Value> {
        match action {
            "add_prefixes" => service.subnet_pool_prefixes(caller, id, body, true).await,
            "remove_prefixes" => service.subnet_pool_prefixes(caller, id, body, false).await,
            _ => Err(Error::PathNotFound),
        }
    }

    async fn delete_txn(service: &Service, _caller: &Caller, pool: &SubnetPool) -> Result<Txn> {
        let id = &pool.meta.id;
        let mut txn = Txn::new().when(Compare::prefix_empty(keys::pool_subnets_prefix(id)));
        if let Some(scope) = &pool.address_scope_id {
            txn = txn.then(Op::delete(keys::scope_pool(scope, id)));
        }
        if pool.is_default {
            txn = txn.then(Op::delete(keys::default_subnet_pool(
                pool.ip_version.number(),
            )));
        }
        txn = txn.then(Op::delete(keys::pool_allocation_lock(id)));
        service.drop_policies(txn, id).await
    }

    async fn in_use(service: &Service, pool: &SubnetPool) -> Result<()> {
        let id = &pool.meta.id;
        service
            .unused(&keys::pool_subnets_prefix(id), || Error::fault(
                "SubnetPoolInUse",
                409,
                format!("Unable to complete operation on subnet pool {id}. Subnets are allocated from it."),
            ))
            .await
    }
}
