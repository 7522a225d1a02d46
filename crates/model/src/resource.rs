//! One definition per resource kind: its URL collection, JSON members, fault name and every
//! attribute once, with the rights a client has on it (set on create, change on update, filter
//! and sort by) and how it is rendered. Request bodies are policed, list queries checked and
//! responses written from this table alone; generic API code serves every kind from it.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::{OnceLock, RwLock};

use serde_json::{json, Map, Value};

use crate::error::Result;
use crate::input::{Input, Method};
pub use crate::input::{Rights, Schema};
use crate::meta::{Caller, Meta};
use crate::policy::{self, Roles};
use crate::wire::{to_map, Wire};

/// Who a resource is rendered for: attributes Neutron's policy hides from the viewer's roles
/// (`get_<kind>:<attribute>` rules, as `binding:host_id` for all but admins and services) are
/// left out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Viewer {
    /// The viewer's roles.
    pub roles: Roles,
}

impl Viewer {
    /// An admin: sees everything (what agents are sent).
    pub const ADMIN: Viewer = Viewer {
        roles: Roles::ADMIN,
    };
}

impl From<&Caller> for Viewer {
    fn from(caller: &Caller) -> Self {
        Viewer {
            roles: caller.roles,
        }
    }
}

/// Which attributes of `definition` (by index) `roles` may not see, computed once per kind
/// and role set.
fn hidden_attributes<T>(definition: &'static Definition<T>, roles: Roles) -> u128 {
    if roles.has(Roles::ADMIN) {
        // Every `get_*:*` row admits admins.
        return 0;
    }
    type Masks = RwLock<HashMap<(usize, u8), u128>>;
    static MASKS: OnceLock<Masks> = OnceLock::new();
    let masks = MASKS.get_or_init(Masks::default);
    let key = (definition as *const Definition<T> as usize, roles.bits());
    if let Some(mask) = masks.read().ok().and_then(|m| m.get(&key).copied()) {
        return mask;
    }
    let mask = (0..definition.len().min(128))
        .filter(|&i| !policy::attribute_visible(definition.singular, definition.name_at(i), roles))
        .fold(0u128, |mask, i| mask | 1 << i);
    if let Ok(mut masks) = masks.write() {
        masks.insert(key, mask);
    }
    mask
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
    /// Its default as JSON text, where Neutron's policy must know it: a create that sets an
    /// attribute to its default does not use the attribute's rule (`"shared": false`).
    pub default: Option<&'static str>,
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
        default: None,
    }
}

/// An attribute rendered by `render` whose default (JSON text) the policy needs.
pub const fn defaulted<T>(
    name: &'static str,
    rights: Rights,
    default: &'static str,
    render: Render<T>,
) -> Attribute<T> {
    Attribute {
        name,
        rights,
        render: Some(render),
        default: Some(default),
    }
}

/// A request-only attribute: accepted with `rights`, never shown.
pub const fn input<T>(name: &'static str, rights: Rights) -> Attribute<T> {
    Attribute {
        name,
        rights,
        render: None,
        default: None,
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
    /// Whether it has a `name` (floating IPs and security group rules have none).
    pub named: bool,
    /// Whether it has `tags` and the tags sub-resource.
    pub tagged: bool,
    /// The rights on `description` (security group rules: set on create only); `None` for
    /// kinds without one (RBAC policies).
    pub description: Option<Rights>,
    /// Whether PUT is allowed at all (security group rules cannot be updated).
    pub updatable: bool,
    /// Which API serves it: its standard attributes and error format follow from that.
    pub api: Api,
    /// Its own attributes, in output order; the standard ones (`id`, `name`, `description`,
    /// `project_id`, `tenant_id` before them; `tags`, `revision_number`, `created_at`,
    /// `updated_at` after) come from the flags above.
    pub attributes: &'static [Attribute<T>],
}

impl<T> std::fmt::Debug for Definition<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Definition")
            .field("collection", &self.collection)
            .finish()
    }
}

/// The API a kind belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    /// Neutron v2.0: `tenant_id` beside `project_id`, `revision_number`, `NeutronError` bodies.
    Neutron,
    /// Octavia v2 (`/v2/lbaas/`): no `tenant_id` or `revision_number`; tags on every kind.
    Octavia,
}

/// A standard attribute, kept in [`Meta`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standard {
    /// `id`.
    Id,
    /// `name`.
    Name,
    /// `description`.
    Description,
    /// `project_id`.
    Project,
    /// `tenant_id`, the legacy name of `project_id`.
    Tenant,
    /// `tags`.
    Tags,
    /// `revision_number`.
    Revision,
    /// `created_at`.
    Created,
    /// `updated_at`.
    Updated,
}

impl Standard {
    /// Its name on the wire.
    pub fn name(self) -> &'static str {
        match self {
            Standard::Id => "id",
            Standard::Name => "name",
            Standard::Description => "description",
            Standard::Project => "project_id",
            Standard::Tenant => "tenant_id",
            Standard::Tags => "tags",
            Standard::Revision => "revision_number",
            Standard::Created => "created_at",
            Standard::Updated => "updated_at",
        }
    }

    fn rights<T>(self, definition: &Definition<T>) -> Rights {
        match self {
            Standard::Name => Rights::ALL,
            Standard::Description => definition.description.unwrap_or(Rights::READ),
            // Octavia's tags are an ordinary attribute.
            Standard::Tags if definition.api == Api::Octavia => Rights::ALL,
            // Neutron's tags change through their sub-resource.
            Standard::Project | Standard::Tenant | Standard::Tags => Rights::CREATE_QUERY,
            Standard::Id | Standard::Revision | Standard::Created | Standard::Updated => {
                Rights::READ
            }
        }
    }

    fn render(self, meta: &Meta) -> Value {
        match self {
            Standard::Id => json!(meta.id),
            Standard::Name => json!(meta.name),
            Standard::Description => json!(meta.description),
            Standard::Project | Standard::Tenant => json!(meta.project_id),
            Standard::Tags => json!(meta.tags),
            Standard::Revision => json!(meta.revision_number),
            Standard::Created => json!(meta.created_at),
            Standard::Updated => json!(meta.updated_at),
        }
    }
}

/// One attribute slot of a definition.
#[derive(Debug)]
pub enum Slot<'a, T: 'static> {
    /// A standard attribute.
    Standard(Standard),
    /// One of the kind's own.
    Own(&'a Attribute<T>),
}

impl<T> Definition<T> {
    fn head(&self) -> &'static [Standard] {
        use Standard::*;
        if self.api == Api::Octavia {
            return match (self.named, self.description.is_some()) {
                (true, true) => &[Id, Name, Description, Project],
                (true, false) => &[Id, Name, Project],
                (false, true) => &[Id, Description, Project],
                (false, false) => &[Id, Project],
            };
        }
        match (self.named, self.description.is_some()) {
            (true, true) => &[Id, Name, Description, Project, Tenant],
            (true, false) => &[Id, Name, Project, Tenant],
            (false, true) => &[Id, Description, Project, Tenant],
            (false, false) => &[Id, Project, Tenant],
        }
    }

    fn tail(&self) -> &'static [Standard] {
        use Standard::*;
        if self.api == Api::Octavia {
            &[Tags, Created, Updated]
        } else if self.tagged {
            &[Tags, Revision, Created, Updated]
        } else {
            &[Revision, Created, Updated]
        }
    }

    /// How many attributes it has, standard ones included.
    pub fn len(&self) -> usize {
        self.head().len() + self.attributes.len() + self.tail().len()
    }

    /// Whether it has no attribute at all (never: every kind has an id).
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Attribute `index` (< `len()`), in output order.
    pub fn slot(&self, index: usize) -> Slot<'_, T> {
        let head = self.head();
        if let Some(s) = head.get(index) {
            return Slot::Standard(*s);
        }
        match self.attributes.get(index - head.len()) {
            Some(a) => Slot::Own(a),
            None => Slot::Standard(self.tail()[index - head.len() - self.attributes.len()]),
        }
    }

    /// The default of the kind's own attribute `name`, where the definition gives one.
    pub fn default_of(&self, name: &str) -> Option<Value> {
        self.attributes
            .iter()
            .find(|a| a.name == name)
            .and_then(|a| a.default)
            .and_then(|json| serde_json::from_str(json).ok())
    }

    /// The name of attribute `index`.
    pub fn name_at(&self, index: usize) -> &'static str {
        match self.slot(index) {
            Slot::Standard(s) => s.name(),
            Slot::Own(a) => a.name,
        }
    }
}

impl Input {
    /// A body of one kind of resource, policed by its definition.
    pub fn for_kind<T>(body: Value, definition: &Definition<T>, method: Method) -> Result<Input> {
        Self::from_envelope(body, definition.singular, method, definition)
    }
}

impl<T> Schema for Definition<T> {
    fn rights(&self, name: &str) -> Option<Rights> {
        self.head()
            .iter()
            .chain(self.tail())
            .find(|s| s.name() == name)
            .map(|s| s.rights(self))
            .or_else(|| {
                self.attributes
                    .iter()
                    .find(|a| a.name == name)
                    .map(|a| a.rights)
            })
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
    /// The Neutron wire object as `viewer` sees it.
    fn render(&self, viewer: impl Into<Viewer>) -> Map<String, Value> {
        to_map(&View::of(self, viewer))
    }
}

/// Implements [`Resource`] for a type whose standard attributes are its `meta` field, with
/// `definition` as its definition and, optionally, overrides of the provided methods.
#[macro_export]
macro_rules! resource {
    ($ty:ty, $definition:expr) => {
        $crate::resource!($ty, $definition, {});
    };
    ($ty:ty, $definition:expr, { $($overrides:tt)* }) => {
        impl $crate::resource::Resource for $ty {
            fn definition() -> &'static $crate::resource::Definition<Self> {
                &$definition
            }
            fn meta(&self) -> &$crate::Meta {
                &self.meta
            }
            fn meta_mut(&mut self) -> &mut $crate::Meta {
                &mut self.meta
            }
            $($overrides)*
        }
    };
}

/// A resource as one viewer sees it, held owned (`View<T, T>`, lists) or borrowed
/// (`View<T, &T>`, one object).
#[derive(Debug, Clone)]
pub struct View<T, B = T> {
    /// The resource.
    pub obj: B,
    /// Who is looking.
    pub viewer: Viewer,
    /// The attributes (by index) hidden from the viewer.
    hidden: u128,
    kind: PhantomData<fn() -> T>,
}

impl<T: Resource> View<T, T> {
    /// `obj`, owned, as `viewer` sees it.
    pub fn owned(obj: T, viewer: impl Into<Viewer>) -> Self {
        let viewer = viewer.into();
        View {
            obj,
            viewer,
            hidden: hidden_attributes(T::definition(), viewer.roles),
            kind: PhantomData,
        }
    }
}

impl<'a, T: Resource> View<T, &'a T> {
    /// `obj`, borrowed, as `viewer` sees it.
    pub fn of(obj: &'a T, viewer: impl Into<Viewer>) -> Self {
        let viewer = viewer.into();
        View {
            obj,
            viewer,
            hidden: hidden_attributes(T::definition(), viewer.roles),
            kind: PhantomData,
        }
    }
}

impl<T: Resource, B: Borrow<T>> Wire for View<T, B> {
    fn count(&self) -> usize {
        T::definition().len()
    }

    fn name_at(&self, index: usize) -> &'static str {
        T::definition().name_at(index)
    }

    fn value_at(&self, index: usize) -> Option<Value> {
        if index < 128 && self.hidden & 1 << index != 0 {
            return None;
        }
        let obj = self.obj.borrow();
        match T::definition().slot(index) {
            Slot::Standard(s) => Some(s.render(obj.meta())),
            Slot::Own(a) if a.rights.has(Rights::HIDDEN) => None,
            Slot::Own(a) => (a.render?)(obj, self.viewer),
        }
    }

    /// Filters and sorts also read filter-only attributes.
    fn attr(&self, name: &str) -> Option<Value> {
        let definition = T::definition();
        let obj = self.obj.borrow();
        (0..definition.len()).find_map(|i| match definition.slot(i) {
            _ if i < 128 && self.hidden & 1 << i != 0 => None,
            Slot::Standard(s) if s.name() == name => Some(s.render(obj.meta())),
            Slot::Own(a) if a.name == name => a.render.and_then(|r| r(obj, self.viewer)),
            _ => None,
        })
    }

    fn id(&self) -> &str {
        &self.obj.borrow().meta().id
    }
}
