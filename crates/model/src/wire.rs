//! The wire form of resources, one attribute at a time.
//!
//! Each resource answers [`Wire::attr`] for the attributes of its Neutron representation; that
//! is the single definition of what a client sees. Responses are serialised straight from it,
//! and list filters and sorts read only the attributes they use, so listing thousands of
//! objects builds no intermediate maps.

use serde::ser::{Serialize, SerializeMap, Serializer};
use serde_json::{Map, Value};

/// A resource as one viewer sees it.
pub trait Wire {
    /// Every attribute name it may have, in output order.
    fn names(&self) -> &'static [&'static str];
    /// One attribute; `None` when the resource has no such attribute or the viewer may not see
    /// it.
    fn attr(&self, name: &str) -> Option<Value>;
    /// The resource id.
    fn id(&self) -> &str;
}

impl<W: Wire + ?Sized> Wire for Box<W> {
    fn names(&self) -> &'static [&'static str] {
        (**self).names()
    }
    fn attr(&self, name: &str) -> Option<Value> {
        (**self).attr(name)
    }
    fn id(&self) -> &str {
        (**self).id()
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
        for name in self.item.names() {
            if !self.fields.is_empty() && !self.fields.iter().any(|f| f == name) {
                continue;
            }
            if let Some(value) = self.item.attr(name) {
                map.serialize_entry(name, &value)?;
            }
        }
        map.end()
    }
}

/// Every attribute as a JSON object.
pub fn to_map<W: Wire + ?Sized>(item: &W) -> Map<String, Value> {
    item.names()
        .iter()
        .filter_map(|name| item.attr(name).map(|v| ((*name).to_owned(), v)))
        .collect()
}
