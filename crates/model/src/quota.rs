//! Per-project quotas (`quotas`, `quota_details`): limits on how many of each resource a
//! project may hold; `-1` is unlimited.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::error::{Error, Result};
use crate::input::{as_integer, show};

/// Resources with a quota, Neutron's name and default limit.
pub const DEFAULTS: &[(&str, i64)] = &[
    ("network", 100),
    ("subnet", 100),
    ("port", 500),
    ("router", 10),
    ("floatingip", 50),
    ("security_group", 10),
    ("security_group_rule", 100),
];

/// The quota name of a resource collection (`security-group-rules` → `security_group_rule`).
pub fn resource_of(collection: &str) -> Option<&'static str> {
    Some(match collection {
        "networks" => "network",
        "subnets" => "subnet",
        "ports" => "port",
        "routers" => "router",
        "floatingips" => "floatingip",
        "security-groups" => "security_group",
        "security-group-rules" => "security_group_rule",
        _ => return None,
    })
}

/// A project's limits that differ from the defaults.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quota {
    /// The project.
    pub project_id: String,
    /// Resource → limit, for the resources set explicitly.
    pub limits: BTreeMap<String, i64>,
}

impl Quota {
    /// The limit of `resource` (its default unless set).
    pub fn limit(&self, resource: &str) -> i64 {
        self.limits.get(resource).copied().unwrap_or_else(|| {
            DEFAULTS
                .iter()
                .find(|(r, _)| *r == resource)
                .map_or(-1, |(_, d)| *d)
        })
    }

    /// Applies `{"quota": {"network": 10, ...}}`: each a whole number, `-1` for unlimited.
    /// Returns whether the caller asked to `force` limits under what is already used;
    /// `check_limit` is accepted and means nothing (usage is always checked, as in Neutron
    /// since 2025.1, `quota-check-limit-default`).
    pub fn apply_update(&mut self, body: Value) -> Result<bool> {
        let Some(Value::Object(mut changes)) = body.get("quota").cloned() else {
            return Err(Error::BadRequest(
                "Unable to find 'quota' in request body".to_owned(),
            ));
        };
        let mut flag = |name: &str| -> Result<bool> {
            match changes.remove(name) {
                None | Some(Value::Null) => Ok(false),
                Some(Value::Bool(b)) => Ok(b),
                Some(other) => Err(Error::invalid_attr(
                    name,
                    format!("'{}' is not a valid boolean value", show(&other)),
                )),
            }
        };
        let force = flag("force")?;
        flag("check_limit")?;
        let unknown: Vec<&str> = changes
            .keys()
            .map(String::as_str)
            .filter(|k| !DEFAULTS.iter().any(|(r, _)| r == k))
            .collect();
        if !unknown.is_empty() {
            return Err(Error::BadRequest(format!(
                "Unrecognized attribute(s) '{}'",
                unknown.join(", ")
            )));
        }
        for (resource, value) in &changes {
            let limit = as_integer(resource, value)?;
            if limit < -1 {
                return Err(Error::invalid_attr(
                    resource,
                    format!("'{}' should be greater than or equal to -1", show(value)),
                ));
            }
            self.limits.insert(resource.clone(), limit);
        }
        Ok(force)
    }

    /// `{"network": 100, ...}` with every resource.
    pub fn render(&self) -> Map<String, Value> {
        DEFAULTS
            .iter()
            .map(|(r, _)| ((*r).to_owned(), json!(self.limit(r))))
            .collect()
    }

    /// `{"network": {"limit", "used", "reserved"}, ...}` given what the project uses.
    pub fn render_details(&self, used: impl Fn(&str) -> usize) -> Map<String, Value> {
        DEFAULTS
            .iter()
            .map(|(r, _)| {
                (
                    (*r).to_owned(),
                    json!({"limit": self.limit(r), "used": used(r), "reserved": 0}),
                )
            })
            .collect()
    }

    /// 409 `OverQuota` when `used + adding` would pass the limit of `resource`.
    pub fn check(&self, resource: &str, used: usize, adding: usize) -> Result<()> {
        let limit = self.limit(resource);
        if limit >= 0 && used.saturating_add(adding) > limit as usize {
            return Err(Error::fault(
                "OverQuota",
                409,
                format!("Quota exceeded for resources: ['{resource}']."),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_defaults_and_checks() {
        let mut q = Quota::default();
        assert_eq!(q.limit("port"), 500);
        q.apply_update(json!({"quota": {"port": 2, "network": -1}}))
            .unwrap();
        assert_eq!(q.render()["port"], 2);
        assert!(q.check("port", 1, 1).is_ok());
        assert_eq!(q.check("port", 2, 1).unwrap_err().type_name(), "OverQuota");
        assert!(q.check("network", 1_000_000, 1).is_ok());
        assert!(q.apply_update(json!({"quota": {"port": -2}})).is_err());
        assert!(q.apply_update(json!({"quota": {"widgets": 1}})).is_err());
        assert!(q.apply_update(json!({"quota": {"port": "x"}})).is_err());
        assert_eq!(
            q.render_details(|r| usize::from(r == "port"))["port"],
            json!({"limit": 2, "used": 1, "reserved": 0})
        );
        assert_eq!(
            resource_of("security-group-rules"),
            Some("security_group_rule")
        );
    }
}
