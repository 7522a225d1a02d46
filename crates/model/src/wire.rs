//! The wire form of resources, one attribute at a time.
//!
//! A resource's [`crate::resource::Definition`] is the single definition of what a client
//! sees; [`Wire`] exposes it slot by slot. Responses are serialised straight from it, and list
//! filters and sorts read only the attributes they use, so listing thousands of objects builds
//! no intermediate maps.

use serde::ser::{Serialize, SerializeMap, Serializer};
use serde_json::{Map, Value};

/// A resource as one viewer sees it: a fixed sequence of named attribute slots.
pub trait Wire {
    /// How many attribute slots it has.
    fn count(&self) -> usize;
    /// The name of slot `index` (< `count()`).
    fn name_at(&self, index: usize) -> &'static str;
    /// The value of slot `index`; `None` when the viewer may not see it or it is never shown.
    fn value_at(&self, index: usize) -> Option<Value>;
    /// The resource id.
    fn id(&self) -> &str;
    /// One attribute by name; `None` when it has no such attribute or it is hidden.
    fn attr(&self, name: &str) -> Option<Value> {
        (0..self.count())
            .find(|&i| self.name_at(i) == name)
            .and_then(|i| self.value_at(i))
    }
}

impl<W: Wire + ?Sized> Wire for Box<W> {
    fn count(&self) -> usize {
        (**self).count()
    }
    fn name_at(&self, index: usize) -> &'static str {
        (**self).name_at(index)
    }
    fn value_at(&self, index: usize) -> Option<Value> {
        (**self).value_at(index)
    }
    fn id(&self) -> &str {
        (**self).id()
    }
    fn attr(&self, name: &str) -> Option<Value> {
        (**self).attr(name)
    }
}

/// Serialises a resource, all attributes or only `fields`.
pub struct WireSer<'a, W: ?Sized> {
    /// The resource.
    pub item: &'a W,
    /// Attributes to include; empty = all.
    pub fields: &'a [String],
}

impl<W: Wire + ?Sized> Serialize for WireSer<'_, W> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        for index in 0..self.item.count() {
            let name = self.item.name_at(index);
            if !self.fields.is_empty() && !self.fields.iter().any(|f| f == name) {
                continue;
            }
            if let Some(value) = self.item.value_at(index) {
                map.serialize_entry(name, &value)?;
            }
        }
        map.end()
    }
}

/// Every attribute as a JSON object.
pub fn to_map<W: Wire + ?Sized>(item: &W) -> Map<String, Value> {
    (0..item.count())
        .filter_map(|i| item.value_at(i).map(|v| (item.name_at(i).to_owned(), v)))
        .collect()
}
