//! Request bodies: Neutron's envelope (`{"network": {...}}`), attribute policing and typed
//! conversion with Neutron's error wording.

use std::net::IpAddr;

use serde_json::{Map, Value};

use crate::addr::{Cidr, CidrError};
use crate::error::{Error, Result};

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
    /// A filter that is never shown (Neutron's `is_visible: False, is_filter: True`, as
    /// `shared` on subnets).
    pub const FILTER_ONLY: Rights = Rights(12);
    /// Never shown (part of [`Rights::FILTER_ONLY`]).
    pub const HIDDEN: Rights = Rights(8);

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

/// The rights side of a definition, without its type: what request bodies and list queries
/// are checked against.
pub trait Schema {
    /// The rights on `name`, `None` when the resource has no such attribute.
    fn rights(&self, name: &str) -> Option<Rights>;
}

/// A plain list of names: each known with every right (tests, and bodies of native objects).
impl Schema for &[&str] {
    fn rights(&self, name: &str) -> Option<Rights> {
        self.contains(&name).then_some(Rights::ALL)
    }
}

/// Whether a body creates or updates (attributes are allowed separately for each).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// POST.
    Create,
    /// PUT.
    Update,
}

impl Method {
    fn verb(self) -> &'static str {
        match self {
            Method::Create => "POST",
            Method::Update => "PUT",
        }
    }
}

/// The attributes of one resource in a request body, consumed one by one.
#[derive(Debug, Clone)]
pub struct Input {
    map: Map<String, Value>,
}

/// Parses raw JSON into a value, 400 `MalformedRequestBody` when it is not JSON.
pub fn parse_json(body: &[u8]) -> Result<Value> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(Error::BadRequest("Resource body required".to_owned()));
    }
    serde_json::from_slice(body).map_err(|e| Error::MalformedRequestBody(e.to_string()))
}

impl Input {
    /// Unwraps `{"<resource>": {...}}` and checks every attribute is known to `schema` and
    /// allowed for this method.
    pub fn from_envelope(
        body: Value,
        resource: &str,
        method: Method,
        schema: &dyn Schema,
    ) -> Result<Input> {
        let Value::Object(mut outer) = body else {
            return Err(Error::BadRequest("Body contains invalid data".to_owned()));
        };
        let inner = outer.remove(resource).ok_or_else(|| {
            Error::BadRequest(format!("Unable to find '{resource}' in request body"))
        })?;
        if !outer.is_empty() {
            return Err(Error::BadRequest(format!(
                "Unrecognized attribute(s) '{}'",
                outer.keys().cloned().collect::<Vec<_>>().join(", ")
            )));
        }
        let Value::Object(map) = inner else {
            return Err(Error::BadRequest(format!(
                "Invalid format for '{resource}': expected an object"
            )));
        };
        Self::from_map(map, method, schema)
    }

    /// Polices an attribute map already unwrapped (bulk items).
    pub fn from_map(map: Map<String, Value>, method: Method, schema: &dyn Schema) -> Result<Input> {
        let unknown: Vec<&str> = map
            .keys()
            .map(String::as_str)
            .filter(|k| schema.rights(k).is_none())
            .collect();
        if !unknown.is_empty() {
            return Err(Error::BadRequest(format!(
                "Unrecognized attribute(s) '{}'",
                unknown.join(", ")
            )));
        }
        let needed = match method {
            Method::Create => Rights::CREATE,
            Method::Update => Rights::UPDATE,
        };
        if let Some(forbidden) = map
            .keys()
            .find(|k| !schema.rights(k).is_some_and(|r| r.has(needed)))
        {
            return Err(Error::BadRequest(format!(
                "Attribute '{forbidden}' not allowed in {}",
                method.verb()
            )));
        }
        Ok(Input { map })
    }

    /// What is left of the body.
    pub fn into_map(self) -> Map<String, Value> {
        self.map
    }

    /// Whether the body carries `key` (even as null).
    pub fn has(&self, key: &str) -> bool {
        self.map.contains_key(key)
    }

    /// Takes the raw value of `key`.
    pub fn take(&mut self, key: &str) -> Option<Value> {
        self.map.remove(key)
    }

    /// Fails with Neutron's "Required attribute not specified" when `value` is absent.
    pub fn required<T>(key: &str, value: Option<T>) -> Result<T> {
        value.ok_or_else(|| {
            Error::BadRequest(format!(
                "Failed to parse request. Required attribute '{key}' not specified"
            ))
        })
    }

    /// A string of at most `max` characters.
    pub fn string(&mut self, key: &str, max: usize) -> Result<Option<String>> {
        match self.take(key) {
            None => Ok(None),
            Some(v) => as_string(key, &v, max).map(Some),
        }
    }

    /// A string or null.
    pub fn nullable_string(&mut self, key: &str, max: usize) -> Result<Option<Option<String>>> {
        match self.take(key) {
            None => Ok(None),
            Some(Value::Null) => Ok(Some(None)),
            Some(v) => as_string(key, &v, max).map(|s| Some(Some(s))),
        }
    }

    /// A boolean (Neutron also converts "true"/"false"/"1"/"0" strings).
    pub fn boolean(&mut self, key: &str) -> Result<Option<bool>> {
        match self.take(key) {
            None => Ok(None),
            Some(v) => as_bool(key, &v).map(Some),
        }
    }

    /// An integer or null (strings of digits are converted, as Neutron does).
    pub fn nullable_integer(&mut self, key: &str) -> Result<Option<Option<i64>>> {
        match self.take(key) {
            None => Ok(None),
            Some(Value::Null) => Ok(Some(None)),
            Some(v) => as_integer(key, &v).map(|n| Some(Some(n))),
        }
    }

    /// A list of strings.
    pub fn string_list(&mut self, key: &str, max_each: usize) -> Result<Option<Vec<String>>> {
        match self.take(key) {
            None => Ok(None),
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| as_string(key, v, max_each))
                .collect::<Result<Vec<_>>>()
                .map(Some),
            Some(other) => Err(Error::invalid_attr(
                key,
                format!("'{}' is not a list", show(&other)),
            )),
        }
    }

    /// A list of objects.
    pub fn object_list(&mut self, key: &str) -> Result<Option<Vec<Map<String, Value>>>> {
        match self.take(key) {
            None => Ok(None),
            Some(Value::Array(items)) => items
                .into_iter()
                .map(|v| match v {
                    Value::Object(m) => Ok(m),
                    other => Err(Error::invalid_attr(
                        key,
                        format!("'{}' is not a dictionary", show(&other)),
                    )),
                })
                .collect::<Result<Vec<_>>>()
                .map(Some),
            Some(Value::Null) => Ok(Some(Vec::new())),
            Some(other) => Err(Error::invalid_attr(
                key,
                format!("'{}' is not a list", show(&other)),
            )),
        }
    }
}

/// Compact JSON of a value for error messages (strings without quotes).
pub fn show(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Converts `v` to a string of at most `max` characters.
pub fn as_string(key: &str, v: &Value, max: usize) -> Result<String> {
    match v {
        Value::String(s) if s.chars().count() <= max => Ok(s.clone()),
        Value::String(s) => Err(Error::invalid_attr(
            key,
            format!("'{s}' exceeds maximum length of {max}"),
        )),
        other => Err(Error::invalid_attr(
            key,
            format!("'{}' is not a valid string", show(other)),
        )),
    }
}

/// Converts `v` to a boolean the way Neutron's `convert_to_boolean` does.
pub fn as_bool(key: &str, v: &Value) -> Result<bool> {
    match v {
        Value::Bool(b) => Ok(*b),
        Value::String(s) => match s.to_ascii_lowercase().as_str() {
            "true" | "1" => Ok(true),
            "false" | "0" => Ok(false),
            _ => Err(Error::invalid_attr(
                key,
                format!("'{s}' cannot be converted to boolean"),
            )),
        },
        Value::Number(n) if n.as_i64() == Some(1) => Ok(true),
        Value::Number(n) if n.as_i64() == Some(0) => Ok(false),
        other => Err(Error::invalid_attr(
            key,
            format!("'{}' cannot be converted to boolean", show(other)),
        )),
    }
}

/// Converts `v` to an integer (numbers, or strings of digits).
pub fn as_integer(key: &str, v: &Value) -> Result<i64> {
    let n = match v {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.trim().parse::<i64>().ok(),
        _ => None,
    };
    n.ok_or_else(|| Error::invalid_attr(key, format!("'{}' is not an integer", show(v))))
}

/// Parses an IP address attribute.
pub fn as_ip(key: &str, v: &Value) -> Result<IpAddr> {
    let s = as_string(key, v, 64)?;
    s.parse::<IpAddr>()
        .map_err(|_| Error::invalid_attr(key, format!("'{s}' is not a valid IP address")))
}

/// Parses a CIDR attribute that must be a network address (host bits clear).
pub fn as_cidr(key: &str, v: &Value) -> Result<Cidr> {
    let s = as_string(key, v, 64)?;
    match Cidr::parse(&s) {
        Ok(c) if s.contains('/') => Ok(c),
        Ok(_) | Err(CidrError::Invalid) => Err(Error::invalid_attr(
            key,
            format!("'{s}' is not a valid IP subnet"),
        )),
        Err(CidrError::HostBitsSet(suggested)) => Err(Error::invalid_attr(
            key,
            format!("'{s}' isn't a recognized IP subnet cidr, '{suggested}' is recommended"),
        )),
    }
}

/// Checks a UUID-shaped id (Neutron validates ids of referenced resources).
pub fn as_uuid(key: &str, v: &Value) -> Result<String> {
    let s = as_string(key, v, 36)?;
    if is_uuid(&s) {
        Ok(s)
    } else {
        Err(Error::invalid_attr(
            key,
            format!("'{s}' is not a valid UUID"),
        ))
    }
}

/// Whether `s` looks like a hyphenated UUID.
pub fn is_uuid(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    struct Known;
    impl Schema for Known {
        fn rights(&self, name: &str) -> Option<Rights> {
            match name {
                "name" | "admin_state_up" => Some(Rights::ALL),
                "status" => Some(Rights::READ),
                _ => None,
            }
        }
    }

    #[test]
    fn envelope_and_attribute_policing() {
        let ok = Input::from_envelope(
            json!({"network": {"name": "n"}}),
            "network",
            Method::Create,
            &Known,
        );
        assert!(ok.is_ok());
        let unknown = Input::from_envelope(
            json!({"network": {"nonsense": 1}}),
            "network",
            Method::Create,
            &Known,
        )
        .unwrap_err();
        assert_eq!(unknown.to_string(), "Unrecognized attribute(s) 'nonsense'");
        let forbidden = Input::from_envelope(
            json!({"network": {"status": "UP"}}),
            "network",
            Method::Create,
            &Known,
        )
        .unwrap_err();
        assert_eq!(
            forbidden.to_string(),
            "Attribute 'status' not allowed in POST"
        );
        let missing = Input::from_envelope(json!({"port": {}}), "network", Method::Create, &Known)
            .unwrap_err();
        assert_eq!(missing.status(), 400);
        assert_eq!(
            parse_json(b"{nope").unwrap_err().type_name(),
            "MalformedRequestBody"
        );
    }

    #[test]
    fn conversions() {
        assert!(as_bool("x", &json!("True")).unwrap());
        assert!(as_bool("x", &json!("maybe")).is_err());
        assert_eq!(as_integer("x", &json!("42")).unwrap(), 42);
        assert!(as_string("name", &json!(5), 255).is_err());
        assert!(as_cidr("cidr", &json!("10.0.0.1/24"))
            .unwrap_err()
            .to_string()
            .contains("'10.0.0.0/24' is recommended"));
        assert!(is_uuid("3f2504e0-4f89-11d3-9a0c-0305e82c3301"));
        assert!(!is_uuid("not-a-uuid"));
    }
}
