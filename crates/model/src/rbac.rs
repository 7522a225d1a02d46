//! RBAC policies (`rbac-policies` and its per-type extensions): an object's owner grants
//! another project (or every project, `*`) access to a network, security group, subnet pool
//! or address scope.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::error::{Error, Result};
use crate::input::{as_string, as_uuid, Input, Method};
use crate::meta::{Caller, Meta};
use crate::resource::{attr, Definition, Rights};

/// `target_tenant` meaning every project.
pub const EVERY_PROJECT: &str = "*";

/// The `rbac-policies` resource.
pub static DEFINITION: Definition<RbacPolicy> = Definition {
    collection: "rbac-policies",
    singular: "rbac_policy",
    plural: "rbac_policies",
    fault: "RbacPolicy",
    named: false,
    tagged: false,
    description: None,
    updatable: true,
    api: crate::resource::Api::Neutron,
    attributes: &[
        attr("object_type", Rights::CREATE_QUERY, |p, _| {
            Some(json!(p.object_type.as_str()))
        }),
        attr("object_id", Rights::CREATE_QUERY, |p, _| {
            Some(json!(p.object_id))
        }),
        attr("action", Rights::CREATE_QUERY, |p, _| {
            Some(json!(p.action.as_str()))
        }),
        attr("target_tenant", Rights::ALL, |p, _| {
            Some(json!(p.target_tenant))
        }),
        attr("target_project", Rights::READ, |p, _| {
            Some(json!(p.target_tenant))
        }),
    ],
};

/// What kind of object a policy shares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ObjectType {
    /// A network.
    Network,
    /// A security group.
    SecurityGroup,
    /// A subnet pool.
    Subnetpool,
    /// An address scope.
    AddressScope,
}

impl ObjectType {
    /// Every type, in Neutron's order.
    pub const ALL: [ObjectType; 4] = [
        ObjectType::Network,
        ObjectType::SecurityGroup,
        ObjectType::Subnetpool,
        ObjectType::AddressScope,
    ];

    /// Neutron's name.
    pub fn as_str(self) -> &'static str {
        match self {
            ObjectType::Network => "network",
            ObjectType::SecurityGroup => "security_group",
            ObjectType::Subnetpool => "subnetpool",
            ObjectType::AddressScope => "address_scope",
        }
    }

    /// The actions a policy on this type may grant.
    pub fn actions(self) -> &'static [Action] {
        match self {
            ObjectType::Network => &[Action::AccessAsShared, Action::AccessAsExternal],
            _ => &[Action::AccessAsShared],
        }
    }
}

/// What a policy grants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// See and use the object (attach ports, build on it).
    AccessAsShared,
    /// See the network as external (router gateways, floating IPs).
    AccessAsExternal,
}

impl Action {
    /// Neutron's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::AccessAsShared => "access_as_shared",
            Action::AccessAsExternal => "access_as_external",
        }
    }
}

/// A stored RBAC policy. Its `project_id` is the owner of the object it shares.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RbacPolicy {
    /// Standard attributes.
    pub meta: Meta,
    /// The kind of object shared.
    pub object_type: ObjectType,
    /// The object shared.
    pub object_id: String,
    /// What is granted.
    pub action: Action,
    /// The project granted to, or `*`.
    pub target_tenant: String,
}

crate::resource!(RbacPolicy, DEFINITION);

fn target(input: &mut Input) -> Result<Option<String>> {
    match input.take("target_tenant") {
        None => Ok(None),
        Some(v) => {
            let t = as_string("target_tenant", &v, 255)?;
            if t.is_empty() {
                return Err(Error::invalid_attr(
                    "target_tenant",
                    "'' is not a valid project",
                ));
            }
            Ok(Some(t))
        }
    }
}

impl RbacPolicy {
    /// Parses a create body (the object's existence and ownership are the service's check;
    /// the policy belongs to the object's owner).
    pub fn parse_create(body: Value, caller: &Caller, meta: Meta) -> Result<RbacPolicy> {
        let mut input = Input::for_kind(body, &DEFINITION, Method::Create)?;
        crate::meta::owner_project(&mut input, caller)?;
        let object_type = match input.string("object_type", 255)?.as_deref().map(|t| {
            ObjectType::ALL
                .into_iter()
                .find(|o| o.as_str() == t)
                .ok_or(t)
        }) {
            None => {
                return Err(Error::BadRequest(
                    "Failed to parse request. Required attribute 'object_type' not specified"
                        .to_owned(),
                ))
            }
            Some(Ok(t)) => t,
            Some(Err(other)) => {
                let valid: Vec<&str> = ObjectType::ALL.iter().map(|o| o.as_str()).collect();
                return Err(Error::invalid_attr(
                    "object_type",
                    format!("'{other}' is not in {valid:?}"),
                ));
            }
        };
        let object_id = as_uuid(
            "object_id",
            &Input::required("object_id", input.take("object_id"))?,
        )?;
        let action_name = Input::required("action", input.string("action", 255)?)?;
        let action = object_type
            .actions()
            .iter()
            .copied()
            .find(|a| a.as_str() == action_name)
            .ok_or_else(|| {
                let valid: Vec<&str> = object_type.actions().iter().map(|a| a.as_str()).collect();
                Error::fault(
                    "InvalidActionForType",
                    400,
                    format!(
                        "Invalid action '{action_name}' for object type '{}'. Valid actions: {valid:?}",
                        object_type.as_str()
                    ),
                )
            })?;
        let target_tenant = Input::required("target_tenant", target(&mut input)?)?;
        Ok(RbacPolicy {
            meta,
            object_type,
            object_id,
            action,
            target_tenant,
        })
    }

    /// Applies an update body (only `target_tenant` may change).
    pub fn apply_update(&mut self, body: Value, now: &str) -> Result<()> {
        let mut input = Input::for_kind(body, &DEFINITION, Method::Update)?;
        if let Some(t) = target(&mut input)? {
            self.target_tenant = t;
        }
        self.meta.touch(now);
        Ok(())
    }

    /// Whether it grants `action` to `project`.
    pub fn grants(&self, project: &str, action: Action) -> bool {
        self.action == action
            && (self.target_tenant == EVERY_PROJECT || self.target_tenant == project)
    }
}

/// Whether any of `policies` grants `action` on their object to `project`.
pub fn granted<'a>(
    policies: impl IntoIterator<Item = &'a RbacPolicy>,
    project: &str,
    action: Action,
) -> bool {
    policies.into_iter().any(|p| p.grants(project, action))
}

#[cfg(test)]
mod tests {
    use super::*;

    const NET: &str = "11111111-2222-3333-4444-555555555555";

    fn owner() -> Caller {
        Caller::member("a")
    }

    fn parse(body: Value) -> Result<RbacPolicy> {
        RbacPolicy::parse_create(
            json!({ "rbac_policy": body }),
            &owner(),
            Meta::new("p".into(), "a".into(), "t"),
        )
    }

    #[test]
    fn parses_and_grants() {
        let p = parse(json!({"object_type": "network", "object_id": NET,
                             "action": "access_as_shared", "target_tenant": "b"}))
        .unwrap();
        assert!(p.grants("b", Action::AccessAsShared));
        assert!(!p.grants("c", Action::AccessAsShared));
        assert!(!p.grants("b", Action::AccessAsExternal));
        let every = parse(json!({"object_type": "network", "object_id": NET,
                                 "action": "access_as_external", "target_tenant": "*"}))
        .unwrap();
        assert!(every.grants("anyone", Action::AccessAsExternal));
        assert!(granted([&p, &every], "z", Action::AccessAsExternal));
    }

    #[test]
    fn refuses_what_neutron_refuses() {
        let bad_type = parse(json!({"object_type": "router", "object_id": NET,
                                    "action": "access_as_shared", "target_tenant": "b"}))
        .unwrap_err();
        assert_eq!(bad_type.status(), 400);
        let bad_action = parse(json!({"object_type": "security_group", "object_id": NET,
                                      "action": "access_as_external", "target_tenant": "b"}))
        .unwrap_err();
        assert_eq!(bad_action.type_name(), "InvalidActionForType");
        assert!(parse(json!({"object_type": "network", "object_id": NET,
                             "action": "access_as_shared"}))
        .is_err());
        assert!(parse(json!({"object_type": "network", "object_id": "x",
                             "action": "access_as_shared", "target_tenant": "b"}))
        .is_err());
    }
}
