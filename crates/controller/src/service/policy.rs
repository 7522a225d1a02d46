//! Neutron's policy (the table in `isthmus_model::policy`) applied to requests: the target a
//! rule is evaluated against comes from the object as an admin sees it (or a create body):
//! its project, and, when a rule needs them, the owner and shared/external state of its
//! network and the owner of its security group, read from the store.

use isthmus_model::policy::{self, Roles, Target};
use isthmus_model::rbac::Action;
use isthmus_model::{Caller, Error, Network, Result, SecurityGroup};
use serde_json::{Map, Value};

use super::{Kind, Service};

fn text<'a>(obj: &'a Map<String, Value>, name: &str) -> Option<&'a str> {
    obj.get(name).and_then(Value::as_str)
}

fn flag(obj: &Map<String, Value>, name: &str) -> bool {
    obj.get(name).and_then(Value::as_bool).unwrap_or(false)
}

/// The owner of `obj` (a create body names it, or the caller owns it).
fn owner<'a>(caller: &'a Caller, obj: &'a Map<String, Value>) -> &'a str {
    text(obj, "project_id")
        .or_else(|| text(obj, "tenant_id"))
        .unwrap_or(&caller.project_id)
}

/// What the target holds without reading the store: the owner and the object's own fields.
fn own_target(caller: &Caller, singular: &str, obj: &Map<String, Value>) -> Target {
    let project = owner(caller, obj);
    let mut target = Target::owned_by(project);
    match singular {
        "network" => {
            target = target
                .with("network:project_id", project)
                .with("networks:shared", flag(obj, "shared"))
                .with("networks:router:external", flag(obj, "router:external"));
        }
        "port" => {
            if let Some(owner) = text(obj, "device_owner") {
                target = target.with("port:device_owner", owner);
            }
        }
        "subnetpool" | "address_scope" | "address_group" => {
            target = target.with(&format!("{singular}s:shared"), flag(obj, "shared"));
        }
        "rbac_policy" => {
            if let Some(to) = text(obj, "target_tenant").or_else(|| text(obj, "target_project")) {
                target = target
                    .with("rbac_policy:target_tenant", to)
                    .with("rbac_policy:target_project", to);
            }
        }
        _ => {}
    }
    target
}

/// Whether every object `caller` may see by project and sharing is also readable under the
/// `get_*` rules: true for admins and for readers of any project, as every `get_*` row admits
/// a reader on its own objects, on its network's and on shared ones — exactly what the
/// visibility rules let through. Others (a service-only token, a caller with no known role)
/// are checked object by object with [`Service::may_read`].
pub(crate) fn reads_as_visible(caller: &Caller) -> bool {
    caller.roles.has(Roles::READER) || caller.is_admin()
}

impl Service {
    /// Whether an object `caller` may see by project and sharing may also be read under the
    /// `get_<singular>` rule (see [`reads_as_visible`] for who needs no check).
    pub(crate) async fn may_read(
        &self,
        caller: &Caller,
        singular: &str,
        obj: &Map<String, Value>,
    ) -> Result<bool> {
        let action = format!("get_{singular}");
        self.check(caller, singular, obj, |target| {
            policy::authorize(&action, caller, target)
        })
        .await
        .map(|()| true)
        .or_else(|e| match e {
            Error::PolicyNotAuthorized(_) | Error::NotFound { .. } => Ok(false),
            other => Err(other),
        })
    }

    /// Runs `check` against the target of `obj`: first with what the object itself says, and,
    /// when that is refused and the object hangs off a network or a security group, again with
    /// their owners and sharing read from the store (those facts only ever allow more).
    pub(crate) async fn check(
        &self,
        caller: &Caller,
        singular: &str,
        obj: &Map<String, Value>,
        check: impl Fn(&Target) -> Result<()>,
    ) -> Result<()> {
        let target = own_target(caller, singular, obj);
        let refused = match check(&target) {
            Ok(()) => return Ok(()),
            Err(e) => e,
        };
        let network_id = text(obj, "network_id").filter(|_| singular != "network");
        let group_id = text(obj, "security_group_id");
        let shareable = matches!(
            singular,
            "network" | "security_group" | "subnetpool" | "address_scope" | "address_group"
        );
        if network_id.is_none() && group_id.is_none() && !shareable {
            return Err(refused);
        }
        let mut target = target;
        if let Some(id) = network_id {
            // A network the caller may not see answers 404, as Neutron's
            // `_validate_network_tenant_ownership` hides it before the policy runs.
            let network = match self.load::<Network>(id).await? {
                Some((network, _)) if Network::visible(self, caller, &network).await? => {
                    Some(network)
                }
                _ => return Err(Error::not_found("Network", id)),
            };
            if let Some(network) = network {
                let shared =
                    network.shared || self.is_granted(caller, id, Action::AccessAsShared).await?;
                let external = network.external;
                target = target
                    .with("network:project_id", &network.meta.project_id)
                    .with("networks:shared", shared)
                    .with("networks:router:external", external)
                    .with("subnets:router:external", external);
            }
        }
        if let Some(id) = group_id {
            match self.load::<SecurityGroup>(id).await? {
                Some((group, _)) if SecurityGroup::visible(self, caller, &group).await? => {
                    target = target.with("security_group:project_id", &group.meta.project_id);
                }
                _ => return Err(Error::not_found("SecurityGroup", id)),
            }
        }
        if shareable {
            if let Some(id) = text(obj, "id") {
                let granted = self.is_granted(caller, id, Action::AccessAsShared).await?;
                let field = format!("{singular}s:shared");
                let shared = flag(obj, "shared") || granted;
                target = target.with(&field, shared);
                if singular == "network" {
                    let external = flag(obj, "router:external")
                        || self
                            .is_granted(caller, id, Action::AccessAsExternal)
                            .await?;
                    target = target.with("networks:router:external", external);
                }
            }
        }
        check(&target)
    }
}
