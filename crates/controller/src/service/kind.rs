//! What every kind of resource shares in the service: reading, visibility, the change
//! scaffolding (retry, load, 404/403, `If-Match`, compare-and-swap write), tags and the
//! registry the API serves collections from. A kind is its model [`Resource`] definition plus a
//! [`Kind`] impl naming only what is special about it (allocation, in-use checks, cascades).

use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::Arc;

use async_trait::async_trait;
use isthmus_model::input::{Input, Method};
use isthmus_model::meta::{normalize_tags, owner_project, validate_tag};
use isthmus_model::policy;
use isthmus_model::resource::{Definition, Resource, Schema, View, Viewer};
use isthmus_model::{Caller, Error, Meta, Result};
use isthmus_store::{Compare, Op, Txn};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{Map, Value};

use super::{
    check_revision, decode, encode, new_id, now, store_error, Attempt, Listed, Object, Service,
};

/// The store key of object `id` of kind `T`: `/isthmus/<collection>/<id>`.
pub fn key_of<T: Resource>(id: &str) -> String {
    format!("/isthmus/{}/{id}", T::definition().collection)
}

/// The store prefix of every object of kind `T`.
pub fn prefix_of<T: Resource>() -> String {
    format!("/isthmus/{}/", T::definition().collection)
}

/// The policy rule of updating a `T` (`update_port`).
pub fn update_action<T: Resource>() -> String {
    format!("update_{}", T::definition().singular)
}

/// The policy rule of deleting a `T` (`delete_port`).
pub fn delete_action<T: Resource>() -> String {
    format!("delete_{}", T::definition().singular)
}

/// The policy rule of `verb` (`get`, `create`, `update`, `delete`) on a `T`'s tags
/// (`update_network:tags`); kinds without tag rows use their update rule.
fn tag_action<T: Resource>(verb: &str) -> String {
    let singular = T::definition().singular;
    let action = format!("{verb}_{singular}:tags");
    if policy::has_rule(&action) {
        action
    } else if verb == "get" {
        format!("get_{singular}")
    } else {
        format!("update_{singular}")
    }
}

/// What the policy's targets read of a listed object.
const POLICY_FIELDS: &[&str] = &[
    "id",
    "project_id",
    "network_id",
    "security_group_id",
    "device_owner",
    "shared",
    "router:external",
    "target_tenant",
];

/// The service side of one kind of resource. Every method has the generic behaviour as its
/// default; a kind overrides only what is special about it.
#[async_trait]
pub trait Kind: Resource + Serialize + DeserializeOwned + Clone {
    /// Whether `caller` may see `obj` (default: the model's rule).
    async fn visible(_service: &Service, caller: &Caller, obj: &Self) -> Result<bool> {
        Ok(obj.visible_to(caller))
    }

    /// What a response shows of `obj` beyond its record (security groups read their rules).
    async fn complete(_service: &Service, obj: Self) -> Result<Self> {
        Ok(obj)
    }

    /// Everything of this kind `caller` may see, ready to filter, sort and render.
    async fn list(service: &Service, caller: &Caller) -> Result<Vec<Listed>> {
        let mut out: Vec<Listed> = Vec::new();
        for (obj, _) in service.load_all::<Self>(&prefix_of::<Self>()).await? {
            if Self::visible(service, caller, &obj).await? {
                out.push(Box::new(View::owned(obj, caller)));
            }
        }
        Ok(out)
    }

    /// A new object from a create body whose standard attributes (`meta`) are already read,
    /// for the default `create` (kinds that allocate override `create` instead).
    fn from_input(
        _service: &Service,
        _caller: &Caller,
        _meta: Meta,
        _input: &mut Input,
    ) -> Result<Self> {
        Err(Error::BadRequest(format!(
            "{} cannot be created",
            Self::definition().plural
        )))
    }

    /// Creates an object: the default polices the body with the definition, reads the
    /// standard attributes, asks `from_input` for the rest and stores it.
    async fn create(service: &Service, caller: &Caller, body: Value) -> Result<Object> {
        let mut input = Input::for_kind(body, Self::definition(), Method::Create)?;
        let project_id = owner_project(&mut input, caller)?;
        let mut meta = Meta::new(new_id(), project_id, &now());
        meta.read_common(&mut input)?;
        let obj = Self::from_input(service, caller, meta, &mut input)?;
        let key = key_of::<Self>(&obj.meta().id);
        let txn = Txn::new()
            .when(Compare::absent(&key))
            .then(Op::put(key, encode(&obj)?));
        if !service.commit(txn).await? {
            return Err(Error::Internal(format!(
                "{} id collision",
                Self::definition().singular
            )));
        }
        Ok(Self::complete(service, obj).await?.render(caller))
    }

    /// Applies the non-standard attributes of an update body, for the default
    /// `apply_update`.
    fn apply_input(
        _service: &Service,
        _caller: &Caller,
        _obj: &mut Self,
        _input: &mut Input,
    ) -> Result<()> {
        Ok(())
    }

    /// Applies an update body to `obj` for the default `update`; returns what else the
    /// same transaction must compare or write. The default polices the body with the
    /// definition, reads the standard attributes and asks `apply_input` for the rest.
    async fn apply_update(
        service: &Service,
        caller: &Caller,
        obj: &mut Self,
        body: Value,
    ) -> Result<Txn> {
        let mut input = Input::for_kind(body, Self::definition(), Method::Update)?;
        obj.meta_mut().read_common(&mut input)?;
        Self::apply_input(service, caller, obj, &mut input)?;
        obj.meta_mut().touch(&now());
        Ok(Txn::new())
    }

    /// After an update committed.
    async fn updated(_service: &Service, _obj: &Self) {}

    /// Updates an object; `if_match` is an `If-Match: revision_number=N` constraint.
    async fn update(
        service: &Service,
        caller: &Caller,
        id: &str,
        body: Value,
        if_match: Option<u64>,
    ) -> Result<Object> {
        let obj = service
            .retry(|| {
                let body = body.clone();
                async move {
                    let (mut obj, rev) = service
                        .load_for_change::<Self>(caller, id, if_match, &update_action::<Self>())
                        .await?;
                    let key = key_of::<Self>(id);
                    let txn = Self::apply_update(service, caller, &mut obj, body)
                        .await?
                        .when(Compare::mod_revision(key.clone(), rev))
                        .then(Op::put(key, encode(&obj)?));
                    Ok(if service.commit(txn).await? {
                        Self::updated(service, &obj).await;
                        Attempt::Done(obj)
                    } else {
                        Attempt::Retry
                    })
                }
            })
            .await?;
        Ok(Self::complete(service, obj).await?.render(caller))
    }

    /// A member action (`PUT /v2.0/<collection>/<id>/<action>`, as `add_router_interface`):
    /// the whole response body. Kinds without actions answer 404.
    async fn action(
        _service: &Service,
        _caller: &Caller,
        _id: &str,
        _action: &str,
        _body: Value,
    ) -> Result<Value> {
        Err(Error::PathNotFound)
    }

    /// A member read (`GET /v2.0/<collection>/<id>/<action>`, as a trunk's `get_subports`):
    /// the whole response body. Kinds without one answer 404.
    async fn read_action(
        _service: &Service,
        _caller: &Caller,
        _id: &str,
        _action: &str,
    ) -> Result<Value> {
        Err(Error::PathNotFound)
    }

    /// What else deleting `obj` compares and removes in its transaction (index keys,
    /// claims, cascades); never `obj`'s own key.
    async fn delete_txn(_service: &Service, _caller: &Caller, _obj: &Self) -> Result<Txn> {
        Ok(Txn::new())
    }

    /// After a delete failed to commit: the error when `obj` is in use, `Ok` to retry.
    async fn in_use(_service: &Service, _obj: &Self) -> Result<()> {
        Ok(())
    }

    /// After a delete committed (what lives outside the store's transaction).
    async fn deleted(_service: &Service, _obj: &Self) {}

    /// Deletes an object.
    async fn delete(
        service: &Service,
        caller: &Caller,
        id: &str,
        if_match: Option<u64>,
    ) -> Result<()> {
        let obj = service
            .retry(|| async move {
                let (obj, rev) = service
                    .load_for_change::<Self>(caller, id, if_match, &delete_action::<Self>())
                    .await?;
                let key = key_of::<Self>(id);
                let txn = Self::delete_txn(service, caller, &obj)
                    .await?
                    .when(Compare::mod_revision(key.clone(), rev))
                    .then(Op::delete(key));
                if service.commit(txn).await? {
                    return Ok(Attempt::Done(obj));
                }
                Self::in_use(service, &obj).await?;
                Ok(Attempt::Retry)
            })
            .await?;
        Self::deleted(service, &obj).await;
        Ok(())
    }
}

/// A change to a resource's tags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TagOp {
    /// Replace all tags.
    Replace(Vec<String>),
    /// Add one tag.
    Add(String),
    /// Remove one tag (404 `TagNotFound` if absent).
    Remove(String),
    /// Remove every tag.
    Clear,
}

impl Service {
    /// Reads one stored object with its revision.
    pub(crate) async fn load<T: Resource + DeserializeOwned>(
        &self,
        id: &str,
    ) -> Result<Option<(T, u64)>> {
        let key = key_of::<T>(id);
        match self.store.get(&key).await.map_err(store_error)? {
            None => Ok(None),
            Some(kv) => Ok(Some((decode(&key, &kv.value)?, kv.mod_revision))),
        }
    }

    /// Reads one object or fails with `<Kind>NotFound`.
    pub(crate) async fn must_load<T: Resource + DeserializeOwned>(
        &self,
        id: &str,
    ) -> Result<(T, u64)> {
        self.load(id)
            .await?
            .ok_or_else(|| Error::not_found(T::definition().fault, id))
    }

    /// Reads an object the caller owns (admins: any); anything else is 404, so other
    /// projects' resources are indistinguishable from missing ones.
    pub(crate) async fn load_owned<T: Resource + DeserializeOwned>(
        &self,
        caller: &Caller,
        id: &str,
    ) -> Result<(T, u64)> {
        match self.load::<T>(id).await? {
            Some((obj, rev)) if caller.owns(&obj.meta().project_id) => Ok((obj, rev)),
            _ => Err(Error::not_found(T::definition().fault, id)),
        }
    }

    /// Reads an object the caller may see, or 404.
    pub(crate) async fn load_visible<T: Kind>(
        &self,
        caller: &Caller,
        id: &str,
    ) -> Result<(T, u64)> {
        match self.load::<T>(id).await? {
            Some((obj, rev))
                if T::visible(self, caller, &obj).await? && self.readable(caller, &obj).await? =>
            {
                Ok((obj, rev))
            }
            _ => Err(Error::not_found(T::definition().fault, id)),
        }
    }

    /// Whether the `get_<kind>` rule lets `caller` read `obj` (which it may see).
    async fn readable<T: Resource>(&self, caller: &Caller, obj: &T) -> Result<bool> {
        if super::policy::reads_as_visible(caller) {
            return Ok(true);
        }
        self.may_read(caller, T::definition().singular, &obj.render(Viewer::ADMIN))
            .await
    }

    /// Checks the policy rule `action` (`update_port`, `add_router_interface`,
    /// `delete_network:tags`, ...) for `caller` on `obj`.
    pub(crate) async fn authorize<T: Resource>(
        &self,
        caller: &Caller,
        action: &str,
        obj: &T,
    ) -> Result<()> {
        let singular = T::definition().singular;
        self.check(caller, singular, &obj.render(Viewer::ADMIN), |target| {
            policy::authorize(action, caller, target)
        })
        .await
    }

    /// Reads an object `caller` is about to change with `action` (the policy rule:
    /// `update_port`, `add_extraroutes`, ...): 404 when it may not see it, 403 when the rule
    /// refuses, 412 when `if_match` is not its revision.
    pub(crate) async fn load_for_change<T: Kind>(
        &self,
        caller: &Caller,
        id: &str,
        if_match: Option<u64>,
        action: &str,
    ) -> Result<(T, u64)> {
        let (obj, rev) = self.load_visible::<T>(caller, id).await?;
        self.authorize(caller, action, &obj).await?;
        check_revision(obj.meta(), if_match)?;
        Ok((obj, rev))
    }

    /// Changes one object `caller` may change (`action` is the policy rule)
    /// with `change`, retried from a fresh read when another writer got there first; returns
    /// it as written.
    pub(crate) async fn modify<T: Kind>(
        &self,
        caller: &Caller,
        id: &str,
        action: &str,
        change: impl Fn(&mut T) -> Result<()>,
    ) -> Result<T> {
        self.retry(|| async {
            let (mut obj, rev) = self.load_for_change::<T>(caller, id, None, action).await?;
            change(&mut obj)?;
            obj.meta_mut().touch(&now());
            Ok(if self.write_back(id, rev, &obj).await? {
                Attempt::Done(obj)
            } else {
                Attempt::Retry
            })
        })
        .await
    }

    /// `Ok` while nothing is indexed under `prefix` (nothing uses the object), else the
    /// error `in_use` makes: what a kind's [`Kind::in_use`] answers.
    pub(crate) async fn unused(&self, prefix: &str, in_use: impl FnOnce() -> Error) -> Result<()> {
        self.unused_except(prefix, &[], in_use).await
    }

    /// [`Service::unused`] but for the keys in `except` (a resource's own service entries).
    pub(crate) async fn unused_except(
        &self,
        prefix: &str,
        except: &[String],
        in_use: impl FnOnce() -> Error,
    ) -> Result<()> {
        let range = self.store.range(prefix).await.map_err(store_error)?;
        if range.kvs.iter().all(|kv| except.contains(&kv.key)) {
            Ok(())
        } else {
            Err(in_use())
        }
    }

    /// Writes `obj` back over the revision `rev` it was read at; false when it changed
    /// meanwhile (the caller retries).
    pub(crate) async fn write_back<T: Resource + Serialize>(
        &self,
        id: &str,
        rev: u64,
        obj: &T,
    ) -> Result<bool> {
        let key = key_of::<T>(id);
        let txn = Txn::new()
            .when(Compare::mod_revision(key.clone(), rev))
            .then(Op::put(key, encode(obj)?));
        self.commit(txn).await
    }
}

/// One collection of the API, whatever its kind: what the HTTP layer calls.
#[async_trait]
pub trait Endpoint: Send + Sync {
    /// The kind's attribute rights (request bodies, list queries).
    fn schema(&self) -> &'static (dyn Schema + Sync);
    /// URL collection name.
    fn collection(&self) -> &'static str;
    /// JSON member of one object.
    fn singular(&self) -> &'static str;
    /// JSON member of a list.
    fn plural(&self) -> &'static str;
    /// Creates one object.
    async fn create(&self, service: &Service, caller: &Caller, body: Value) -> Result<Object>;
    /// Shows one object.
    async fn show(&self, service: &Service, caller: &Caller, id: &str) -> Result<Object>;
    /// Everything the caller may see (the API filters, sorts and pages it).
    async fn list(&self, service: &Service, caller: &Caller) -> Result<Vec<Listed>>;
    /// Updates one object.
    async fn update(
        &self,
        service: &Service,
        caller: &Caller,
        id: &str,
        body: Value,
        if_match: Option<u64>,
    ) -> Result<Object>;
    /// Deletes one object.
    async fn delete(
        &self,
        service: &Service,
        caller: &Caller,
        id: &str,
        if_match: Option<u64>,
    ) -> Result<()>;
    /// A member action on one object.
    async fn action(
        &self,
        service: &Service,
        caller: &Caller,
        id: &str,
        action: &str,
        body: Value,
    ) -> Result<Value>;
    /// A member read on one object.
    async fn read_action(
        &self,
        service: &Service,
        caller: &Caller,
        id: &str,
        action: &str,
    ) -> Result<Value>;
    /// The tags of one object.
    async fn tags(&self, service: &Service, caller: &Caller, id: &str) -> Result<Vec<String>>;
    /// Changes the tags of one object and returns them.
    async fn update_tags(
        &self,
        service: &Service,
        caller: &Caller,
        id: &str,
        op: TagOp,
    ) -> Result<Vec<String>>;
}

struct Handle<T>(PhantomData<fn() -> T>);

fn definition<T: Resource>() -> &'static Definition<T> {
    T::definition()
}

#[async_trait]
impl<T: Kind> Endpoint for Handle<T> {
    fn schema(&self) -> &'static (dyn Schema + Sync) {
        definition::<T>()
    }
    fn collection(&self) -> &'static str {
        definition::<T>().collection
    }
    fn singular(&self) -> &'static str {
        definition::<T>().singular
    }
    fn plural(&self) -> &'static str {
        definition::<T>().plural
    }

    async fn create(&self, service: &Service, caller: &Caller, body: Value) -> Result<Object> {
        let definition = definition::<T>();
        // Unknown and create-only attributes are refused before the policy runs (400
        // before 403, as Neutron validates a body before it enforces).
        Input::for_kind(body.clone(), definition, Method::Create)?;
        if let Some(fields) = body.get(definition.singular).and_then(Value::as_object) {
            isthmus_model::meta::check_owner(fields, caller)?;
            let action = format!("create_{}", definition.singular);
            service
                .check(caller, definition.singular, fields, |target| {
                    policy::authorize(&action, caller, target)?;
                    policy::authorize_body(
                        "create",
                        definition.singular,
                        fields,
                        |name| definition.default_of(name),
                        caller,
                        target,
                    )
                })
                .await?;
        }
        service
            .check_quota(caller, definition.collection, definition.singular, &body)
            .await?;
        T::create(service, caller, body).await
    }

    async fn show(&self, service: &Service, caller: &Caller, id: &str) -> Result<Object> {
        let (obj, _) = service.load_visible::<T>(caller, id).await?;
        Ok(T::complete(service, obj).await?.render(caller))
    }

    async fn list(&self, service: &Service, caller: &Caller) -> Result<Vec<Listed>> {
        let items = T::list(service, caller).await?;
        if super::policy::reads_as_visible(caller) {
            return Ok(items);
        }
        // Callers without the reader role (a service-only token): the `get_<kind>` rule
        // decides per object.
        let singular = definition::<T>().singular;
        let mut readable = Vec::with_capacity(items.len());
        for item in items {
            let fields: Map<String, Value> = POLICY_FIELDS
                .iter()
                .filter_map(|name| item.attr(name).map(|v| ((*name).to_owned(), v)))
                .collect();
            if service.may_read(caller, singular, &fields).await? {
                readable.push(item);
            }
        }
        Ok(readable)
    }

    async fn update(
        &self,
        service: &Service,
        caller: &Caller,
        id: &str,
        body: Value,
        if_match: Option<u64>,
    ) -> Result<Object> {
        let definition = definition::<T>();
        if !definition.updatable {
            return Err(Error::BadRequest(format!(
                "{} cannot be updated",
                definition.plural
            )));
        }
        Input::for_kind(body.clone(), definition, Method::Update)?;
        // Every kind's update passes its rule here, whatever path its own update takes.
        let (obj, _) = service.load_visible::<T>(caller, id).await?;
        service
            .authorize(caller, &update_action::<T>(), &obj)
            .await?;
        if let Some(fields) = body.get(definition.singular).and_then(Value::as_object) {
            // The attribute rules see the object as it would be after the update.
            let mut target = obj.render(Viewer::ADMIN);
            target.extend(fields.iter().map(|(k, v)| (k.clone(), v.clone())));
            service
                .check(caller, definition.singular, &target, |target| {
                    policy::authorize_body(
                        "update",
                        definition.singular,
                        fields,
                        |_| None,
                        caller,
                        target,
                    )
                })
                .await?;
        }
        T::update(service, caller, id, body, if_match).await
    }

    async fn delete(
        &self,
        service: &Service,
        caller: &Caller,
        id: &str,
        if_match: Option<u64>,
    ) -> Result<()> {
        // Every kind's delete passes its rule here, whatever path its own delete takes.
        let (obj, _) = service.load_visible::<T>(caller, id).await?;
        service
            .authorize(caller, &delete_action::<T>(), &obj)
            .await?;
        T::delete(service, caller, id, if_match).await
    }

    async fn action(
        &self,
        service: &Service,
        caller: &Caller,
        id: &str,
        action: &str,
        body: Value,
    ) -> Result<Value> {
        let (obj, _) = service.load_visible::<T>(caller, id).await?;
        service.authorize(caller, action, &obj).await?;
        T::action(service, caller, id, action, body).await
    }

    async fn read_action(
        &self,
        service: &Service,
        caller: &Caller,
        id: &str,
        action: &str,
    ) -> Result<Value> {
        let (obj, _) = service.load_visible::<T>(caller, id).await?;
        service.authorize(caller, action, &obj).await?;
        T::read_action(service, caller, id, action).await
    }

    async fn tags(&self, service: &Service, caller: &Caller, id: &str) -> Result<Vec<String>> {
        if !definition::<T>().tagged {
            return Err(Error::PathNotFound);
        }
        let (obj, _) = service.load_visible::<T>(caller, id).await?;
        service
            .authorize(caller, &tag_action::<T>("get"), &obj)
            .await?;
        Ok(obj.meta().tags.clone())
    }

    async fn update_tags(
        &self,
        service: &Service,
        caller: &Caller,
        id: &str,
        op: TagOp,
    ) -> Result<Vec<String>> {
        if !definition::<T>().tagged {
            return Err(Error::PathNotFound);
        }
        if let TagOp::Add(tag) | TagOp::Remove(tag) = &op {
            validate_tag(tag)?;
        }
        let replacement = match &op {
            TagOp::Replace(tags) => Some(normalize_tags(tags.clone())?),
            _ => None,
        };
        let action = tag_action::<T>(match op {
            TagOp::Replace(_) => "update",
            TagOp::Add(_) => "create",
            TagOp::Remove(_) | TagOp::Clear => "delete",
        });
        let obj = service
            .modify::<T>(caller, id, &action, |obj| {
                let tags = &mut obj.meta_mut().tags;
                match &op {
                    TagOp::Replace(_) => *tags = replacement.clone().unwrap_or_default(),
                    TagOp::Add(tag) => {
                        if !tags.contains(tag) {
                            isthmus_model::meta::check_tag_count(tags.len() + 1)?;
                            tags.push(tag.clone());
                            tags.sort();
                        }
                    }
                    TagOp::Remove(tag) => {
                        let before = tags.len();
                        tags.retain(|t| t != tag);
                        if tags.len() == before {
                            return Err(Error::NotFound {
                                kind: "Tag",
                                id: format!("{tag} on {id}"),
                            });
                        }
                    }
                    TagOp::Clear => tags.clear(),
                }
                Ok(())
            })
            .await?;
        Ok(obj.meta().tags.clone())
    }
}

/// The collections an API serves, by URL name.
#[derive(Clone)]
pub struct Registry {
    kinds: Vec<Arc<dyn Endpoint>>,
    by_collection: HashMap<&'static str, usize>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.kinds.iter().map(|k| k.collection()))
            .finish()
    }
}

impl Registry {
    /// No collections.
    pub fn empty() -> Registry {
        Registry {
            kinds: Vec::new(),
            by_collection: HashMap::new(),
        }
    }

    /// Neutron's resources.
    pub fn neutron() -> Registry {
        Registry::empty()
            .with::<isthmus_model::Network>()
            .with::<isthmus_model::Subnet>()
            .with::<isthmus_model::Port>()
            .with::<isthmus_model::SecurityGroup>()
            .with::<isthmus_model::SecurityGroupRule>()
            .with::<isthmus_model::Router>()
            .with::<isthmus_model::FloatingIp>()
            .with::<isthmus_model::AddressScope>()
            .with::<isthmus_model::SubnetPool>()
            .with::<isthmus_model::RbacPolicy>()
            .with::<isthmus_model::security_group::DefaultRule>()
            .with::<isthmus_model::AddressGroup>()
            .with::<isthmus_model::Trunk>()
    }

    /// Octavia's resources (`/v2/lbaas/`).
    pub fn octavia() -> Registry {
        use isthmus_model::lbaas;
        Registry::empty()
            .with::<lbaas::LoadBalancer>()
            .with::<lbaas::Listener>()
            .with::<lbaas::Pool>()
            .with::<lbaas::Member>()
            .with::<lbaas::HealthMonitor>()
    }

    /// Adds kind `T` (replacing one with the same collection name).
    pub fn with<T: Kind>(mut self) -> Registry {
        let endpoint: Arc<dyn Endpoint> = Arc::new(Handle::<T>(PhantomData));
        let name = endpoint.collection();
        match self.by_collection.get(name) {
            Some(&i) => self.kinds[i] = endpoint,
            None => {
                self.by_collection.insert(name, self.kinds.len());
                self.kinds.push(endpoint);
            }
        }
        self
    }

    /// The collection named `collection` in URLs.
    pub fn find(&self, collection: &str) -> Option<&dyn Endpoint> {
        self.by_collection
            .get(collection)
            .map(|&i| self.kinds[i].as_ref())
    }

    /// Every collection, in registration order.
    pub fn iter(&self) -> impl Iterator<Item = &dyn Endpoint> {
        self.kinds.iter().map(|k| k.as_ref())
    }
}
