//! One definition per resource kind: its URL collection, JSON members, fault name and every
//! attribute once, with the rights a client has on it (set on create, change on update, filter
//! and sort by) and how it is rendered. Request bodies are policed, list queries checked and
//! responses written from this table alone; generic API code serves every kind from it.

use std::borrow::Borrow;
use std::marker::PhantomData;

use serde_json::{Map, Value};

use crate::meta::{Caller, Meta};
use crate::wire::{to_map, Wire};

/// What a client may do with an attribute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rights(u8);

impl Rights {
    /// Nothing but being known (a read-only attribute that is not a filter).
    pub const NONE: Rights = Rights(0);
    /// May be given on create (POST).
    pub const CREATE: Rights = Rights(1);
    /// May be given on update (PUT).
    pub const UPDATE: Rights = Rights(2);
    /// May be a list filter and a sort key.
    pub const QUERY: Rights = Rights(4);
    /// Given on create, changed on update, queried.
    pub const ALL: Rights = Rights(7);
    /// Given on create and queried.
    pub const CREATE_QUERY: Rights = Rights(5);
    /// Only shown and queried.
    pub const READ: Rights = Rights(4);

    /// Whether every right of `other` is in `self`.
    pub const fn has(self, other: Rights) -> bool {
        self.0 & other.0 == other.0
    }

    /// Both sets of rights.
    pub const fn with(self, other: Rights) -> Rights {
        Rights(self.0 | other.0)
    }
}

impl std::ops::BitOr for Rights {
    type Output = Rights;
    fn bitor(self, other: Rights) -> Rights {
        self.with(other)
    }
}

/// Who a resource is rendered for (admins see admin-only attributes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Viewer {
    /// Whether the viewer has the admin role.
    pub admin: bool,
}

impl Viewer {
    /// An admin: sees everything (what agents are sent).
    pub const ADMIN: Viewer = Viewer { admin: true };
}

impl From<&Caller> for Viewer {
    fn from(caller: &Caller) -> Self {
        Viewer {
            admin: caller.is_admin,
        }
    }
}

/// Renders one attribute of `T` for a viewer; `None` hides it.
pub type Render<T> = fn(&T, Viewer) -> Option<Value>;

/// One attribute of a resource.
pub struct Attribute<T: 'static> {
    /// Its name on the wire.
    pub name: &'static str,
    /// What clients may do with it.
    pub rights: Rights,
    /// How it is shown; `None` for write-only request attributes (`subnet_id` of a floating
    /// IP, `prefixlen` of a subnet).
    pub render: Option<Render<T>>,
}

impl<T> std::fmt::Debug for Attribute<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Attribute")
            .field("name", &self.name)
            .field("rights", &self.rights)
            .finish()
    }
}

/// An attribute rendered by `render`.
pub const fn attr<T>(name: &'static str, rights: Rights, render: Render<T>) -> Attribute<T> {
    Attribute {
        name,
        rights,
        render: Some(render),
    }
}

/// A request-only attribute: accepted with `rights`, never shown.
pub const fn input<T>(name: &'static str, rights: Rights) -> Attribute<T> {
    Attribute {
        name,
        rights,
        render: None,
    }
}

/// Everything the API needs to know about one kind of resource.
pub struct Definition<T: 'static> {
    /// URL collection (`security-groups`).
    pub collection: &'static str,
    /// JSON member of one object (`security_group`).
    pub singular: &'static str,
    /// JSON member of a list (`security_groups`).
    pub plural: &'static str,
    /// Neutron's name in `<Fault>NotFound`.
    pub fault: &'static str,
    /// Whether it has the `tags` sub-resource.
    pub tagged: bool,
    /// Whether PUT is allowed at all (security group rules cannot be updated).
    pub updatable: bool,
    /// Every attribute, in output order.
    pub attributes: &'static [Attribute<T>],
}

impl<T> std::fmt::Debug for Definition<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Definition")
            .field("collection", &self.collection)
            .finish()
    }
}

/// The rights side of a definition, without its type: what request bodies and list queries
/// are checked against.
pub trait Schema {
    /// The rights on `name`, `None` when the resource has no such attribute.
    fn rights(&self, name: &str) -> Option<Rights>;
}

impl<T> Schema for Definition<T> {
    fn rights(&self, name: &str) -> Option<Rights> {
        self.attributes
            .iter()
            .find(|a| a.name == name)
            .map(|a| a.rights)
    }
}

/// A plain list of names: each known with every right (tests, and bodies of native objects).
impl Schema for &[&str] {
    fn rights(&self, name: &str) -> Option<Rights> {
        self.contains(&name).then_some(Rights::ALL)
    }
}

/// A stored resource with standard attributes and a definition.
pub trait Resource: Sized + Send + Sync + 'static {
    /// The kind's definition.
    fn definition() -> &'static Definition<Self>;
    /// Standard attributes.
    fn meta(&self) -> &Meta;
    /// Standard attributes, to change.
    fn meta_mut(&mut self) -> &mut Meta;
    /// Whether `caller` may see it (default: its own project's, or an admin).
    fn visible_to(&self, caller: &Caller) -> bool {
        caller.owns(&self.meta().project_id)
    }
    /// Whether `caller` may change or delete what it sees (default: own, or an admin).
    fn changeable_by(&self, caller: &Caller) -> bool {
        caller.owns(&self.meta().project_id)
    }
    /// The Neutron wire object as `viewer` sees it.
    fn render(&self, viewer: impl Into<Viewer>) -> Map<String, Value> {
        to_map(&View::of(self, viewer))
    }
}

/// A resource as one viewer sees it, held owned (`View<T, T>`, lists) or borrowed
/// (`View<T, &T>`, one object).
#[derive(Debug, Clone)]
pub struct View<T, B = T> {
    /// The resource.
    pub obj: B,
    /// Who is looking.
    pub viewer: Viewer,
    kind: PhantomData<fn() -> T>,
}

impl<T: Resource> View<T, T> {
    /// `obj`, owned, as `viewer` sees it.
    pub fn owned(obj: T, viewer: impl Into<Viewer>) -> Self {
        View {
            obj,
            viewer: viewer.into(),
            kind: PhantomData,
        }
    }
}

impl<'a, T: Resource> View<T, &'a T> {
    /// `obj`, borrowed, as `viewer` sees it.
    pub fn of(obj: &'a T, viewer: impl Into<Viewer>) -> Self {
        View {
            obj,
            viewer: viewer.into(),
            kind: PhantomData,
        }
    }
}

impl<T: Resource, B: Borrow<T>> Wire for View<T, B> {
    fn count(&self) -> usize {
        T::definition().attributes.len()
    }

    fn name_at(&self, index: usize) -> &'static str {
        T::definition().attributes[index].name
    }

    fn value_at(&self, index: usize) -> Option<Value> {
        let render = T::definition().attributes[index].render?;
        render(self.obj.borrow(), self.viewer)
    }

    fn id(&self) -> &str {
        &self.obj.borrow().meta().id
    }
}

/// Standard attributes, the same for every kind. `named` kinds also have `name` and `tags`.
pub mod standard {
    use serde_json::{json, Value};

    use super::{attr, Attribute, Resource, Rights, Viewer};

    fn id<T: Resource>(t: &T, _: Viewer) -> Option<Value> {
        Some(json!(t.meta().id))
    }
    fn name<T: Resource>(t: &T, _: Viewer) -> Option<Value> {
        Some(json!(t.meta().name))
    }
    fn description<T: Resource>(t: &T, _: Viewer) -> Option<Value> {
        Some(json!(t.meta().description))
    }
    fn project<T: Resource>(t: &T, _: Viewer) -> Option<Value> {
        Some(json!(t.meta().project_id))
    }
    fn tags<T: Resource>(t: &T, _: Viewer) -> Option<Value> {
        Some(json!(t.meta().tags))
    }
    fn revision<T: Resource>(t: &T, _: Viewer) -> Option<Value> {
        Some(json!(t.meta().revision_number))
    }
    fn created<T: Resource>(t: &T, _: Viewer) -> Option<Value> {
        Some(json!(t.meta().created_at))
    }
    fn updated<T: Resource>(t: &T, _: Viewer) -> Option<Value> {
        Some(json!(t.meta().updated_at))
    }

    /// `id`: read-only.
    pub const fn id_attr<T: Resource>() -> Attribute<T> {
        attr("id", Rights::READ, id::<T>)
    }
    /// `name`: set and changed.
    pub const fn name_attr<T: Resource>() -> Attribute<T> {
        attr("name", Rights::ALL, name::<T>)
    }
    /// `description`: set and changed.
    pub const fn description_attr<T: Resource>() -> Attribute<T> {
        attr("description", Rights::ALL, description::<T>)
    }
    /// `description`, set on create only (security group rules).
    pub const fn fixed_description_attr<T: Resource>() -> Attribute<T> {
        attr("description", Rights::CREATE_QUERY, description::<T>)
    }
    /// `project_id`: set on create (admins for others).
    pub const fn project_attr<T: Resource>() -> Attribute<T> {
        attr("project_id", Rights::CREATE_QUERY, project::<T>)
    }
    /// `tenant_id`, the legacy name of `project_id`.
    pub const fn tenant_attr<T: Resource>() -> Attribute<T> {
        attr("tenant_id", Rights::CREATE_QUERY, project::<T>)
    }
    /// `tags`: set on create (changed through the tags sub-resource).
    pub const fn tags_attr<T: Resource>() -> Attribute<T> {
        attr("tags", Rights::CREATE_QUERY, tags::<T>)
    }
    /// `revision_number`.
    pub const fn revision_attr<T: Resource>() -> Attribute<T> {
        attr("revision_number", Rights::READ, revision::<T>)
    }
    /// `created_at`.
    pub const fn created_attr<T: Resource>() -> Attribute<T> {
        attr("created_at", Rights::READ, created::<T>)
    }
    /// `updated_at`.
    pub const fn updated_attr<T: Resource>() -> Attribute<T> {
        attr("updated_at", Rights::READ, updated::<T>)
    }
}
