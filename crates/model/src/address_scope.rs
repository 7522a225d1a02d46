//! Address scopes (`address-scope`): a set of subnet pools whose prefixes never overlap, so
//! addresses inside one scope are unique and routable without NAT.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::addr::IpVersion;
use crate::error::{Error, Result};
use crate::input::{Input, Method};
use crate::meta::{Caller, Meta};
use crate::resource::{attr, defaulted, Definition, Rights};

/// The `address-scopes` resource.
pub static DEFINITION: Definition<AddressScope> = Definition {
    collection: "address-scopes",
    singular: "address_scope",
    plural: "address_scopes",
    fault: "AddressScope",
    named: true,
    tagged: false,
    description: None,
    updatable: true,
    api: crate::resource::Api::Neutron,
    attributes: &[
        defaulted("shared", Rights::ALL, "false", |s, _| Some(json!(s.shared))),
        attr("ip_version", Rights::CREATE_QUERY, |s, _| {
            Some(json!(s.ip_version.number()))
        }),
    ],
};

/// A stored address scope.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddressScope {
    /// Standard attributes.
    pub meta: Meta,
    /// Visible to and usable by every project.
    pub shared: bool,
    /// The family of every pool in it.
    pub ip_version: IpVersion,
}

crate::resource!(AddressScope, DEFINITION, {
    /// Own, or shared with every project (policies for one project are the service's check).
    fn visible_to(&self, caller: &Caller) -> bool {
        caller.owns(&self.meta.project_id) || self.shared
    }
});

/// Reads an `ip_version` attribute (4 or 6).
pub fn ip_version(input: &mut Input) -> Result<Option<IpVersion>> {
    match input.nullable_integer("ip_version")?.flatten() {
        None => Ok(None),
        Some(4) => Ok(Some(IpVersion::V4)),
        Some(6) => Ok(Some(IpVersion::V6)),
        Some(v) => Err(Error::invalid_attr(
            "ip_version",
            format!("'{v}' is not in [4, 6]"),
        )),
    }
}

impl AddressScope {
    /// A new scope from a create body whose standard attributes are read into `meta`.
    pub fn from_input(meta: Meta, input: &mut Input) -> Result<AddressScope> {
        let shared = input.boolean("shared")?.unwrap_or(false);
        let ip_version = Input::required("ip_version", ip_version(input)?)?;
        Ok(AddressScope {
            meta,
            shared,
            ip_version,
        })
    }

    /// Applies an update body: a shared scope cannot be unshared.
    pub fn apply_update(&mut self, body: Value, now: &str) -> Result<()> {
        let mut input = Input::for_kind(body, &DEFINITION, Method::Update)?;
        self.meta.read_common(&mut input)?;
        if let Some(shared) = input.boolean("shared")? {
            if self.shared && !shared {
                return Err(Error::fault(
                    "AddressScopeUpdateError",
                    400,
                    format!(
                        "Unable to update address scope {}: Shared address scope can't be unshared",
                        self.meta.id
                    ),
                ));
            }
            self.shared = shared;
        }
        self.meta.touch(now);
        Ok(())
    }
}
