//! Address groups (`address-group`): named sets of addresses that security group rules name
//! as their remote (`remote_address_group_id`), kept in sync in every node's filter as they
//! change.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::addr::Cidr;
use crate::error::{Error, Result};
use crate::input::{as_string, show, Input, Method};
use crate::meta::Meta;
use crate::resource::{attr, Definition, Rights};

/// Most addresses one group holds.
pub const MAX_ADDRESSES: usize = 10_000;

/// The `address-groups` resource.
pub static DEFINITION: Definition<AddressGroup> = Definition {
    collection: "address-groups",
    singular: "address_group",
    plural: "address_groups",
    fault: "AddressGroup",
    named: true,
    tagged: false,
    description: Some(Rights::ALL),
    updatable: true,
    api: crate::resource::Api::Neutron,
    attributes: &[attr("addresses", Rights::CREATE_QUERY, |g, _| {
        Some(json!(g
            .addresses
            .iter()
            .map(Cidr::to_string)
            .collect::<Vec<_>>()))
    })],
};

/// A stored address group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddressGroup {
    /// Standard attributes.
    pub meta: Meta,
    /// Its addresses, as prefixes (a host is a /32 or /128), sorted and unique.
    pub addresses: Vec<Cidr>,
}

crate::resource!(AddressGroup, DEFINITION);

/// Parses a list of addresses or prefixes (host bits are masked, as Neutron normalises them).
pub fn parse_addresses(value: Value) -> Result<Vec<Cidr>> {
    let Value::Array(items) = value else {
        return Err(Error::invalid_attr(
            "addresses",
            format!("'{}' is not a list", show(&value)),
        ));
    };
    if items.len() > MAX_ADDRESSES {
        return Err(Error::invalid_attr(
            "addresses",
            format!("more than {MAX_ADDRESSES} addresses"),
        ));
    }
    items
        .iter()
        .map(|v| {
            let s = as_string("addresses", v, 64)?;
            Cidr::parse_lenient(&s).ok_or_else(|| {
                Error::invalid_attr("addresses", format!("'{s}' is not a valid IP subnet"))
            })
        })
        .collect()
}

impl AddressGroup {
    /// A new group from a create body whose standard attributes are read into `meta`.
    pub fn from_input(meta: Meta, input: &mut Input) -> Result<AddressGroup> {
        let mut group = AddressGroup {
            meta,
            addresses: Vec::new(),
        };
        if let Some(v) = input.take("addresses") {
            group.add(&parse_addresses(v)?)?;
        }
        Ok(group)
    }

    /// Applies an update body (name and description; addresses change through the actions).
    pub fn apply_update(&mut self, body: Value, now: &str) -> Result<()> {
        let mut input = Input::for_kind(body, &DEFINITION, Method::Update)?;
        self.meta.read_common(&mut input)?;
        self.meta.touch(now);
        Ok(())
    }

    /// `add_addresses`: those already present are refused, as Neutron does.
    pub fn add(&mut self, added: &[Cidr]) -> Result<()> {
        for a in added {
            if self.addresses.contains(a) {
                return Err(Error::fault(
                    "AddressesAlreadyExist",
                    400,
                    format!(
                        "Addresses ['{a}'] already exist in address group {}.",
                        self.meta.id
                    ),
                ));
            }
        }
        let mut all = self.addresses.clone();
        for a in added {
            if !all.contains(a) {
                all.push(*a);
            }
        }
        if all.len() > MAX_ADDRESSES {
            return Err(Error::invalid_attr(
                "addresses",
                format!("more than {MAX_ADDRESSES} addresses"),
            ));
        }
        all.sort_by_key(|c| (c.version().number(), c.first(), c.prefix));
        self.addresses = all;
        Ok(())
    }

    /// `remove_addresses`: those not present are refused, as Neutron does.
    pub fn remove(&mut self, removed: &[Cidr]) -> Result<()> {
        if let Some(missing) = removed.iter().find(|r| !self.addresses.contains(r)) {
            return Err(Error::fault(
                "AddressesNotFound",
                400,
                format!(
                    "Addresses ['{missing}'] not found in address group {}.",
                    self.meta.id
                ),
            ));
        }
        self.addresses.retain(|a| !removed.contains(a));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises_adds_and_removes() {
        let mut input = Input::for_kind(
            json!({"address_group": {"name": "g", "addresses": ["10.0.0.1", "10.0.1.7/24", "2001:db8::1"]}}),
            &DEFINITION,
            Method::Create,
        )
        .unwrap();
        let mut g =
            AddressGroup::from_input(Meta::new("g".into(), "p".into(), "t"), &mut input).unwrap();
        let shown: Vec<String> = g.addresses.iter().map(Cidr::to_string).collect();
        assert_eq!(shown, ["10.0.0.1/32", "10.0.1.0/24", "2001:db8::1/128"]);
        assert_eq!(
            g.add(&[Cidr::parse("10.0.0.1/32").unwrap()])
                .unwrap_err()
                .type_name(),
            "AddressesAlreadyExist"
        );
        g.remove(&[Cidr::parse("10.0.1.0/24").unwrap()]).unwrap();
        assert_eq!(g.addresses.len(), 2);
        assert_eq!(
            g.remove(&[Cidr::parse("10.9.9.9/32").unwrap()])
                .unwrap_err()
                .type_name(),
            "AddressesNotFound"
        );
        assert!(parse_addresses(json!(["bogus"])).is_err());
        assert!(parse_addresses(json!("10.0.0.1")).is_err());
    }
}
