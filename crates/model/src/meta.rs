//! What every Neutron resource shares: id, project, name, description, tags, revision and
//! timestamps; and who is asking.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::error::{Error, Result};
use crate::input::Input;
use crate::roles::Roles;

/// The caller of an API request (from noauth headers or a validated token).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The caller's project.
    pub project_id: String,
    /// The caller's user (empty under noauth).
    pub user_id: String,
    /// The caller's roles, with the roles they imply.
    pub roles: Roles,
}

impl Caller {
    /// A caller of `project_id` with `roles` (and what they imply).
    pub fn new(project_id: &str, roles: Roles) -> Caller {
        Caller {
            project_id: project_id.to_owned(),
            user_id: String::new(),
            roles: roles.implied(),
        }
    }

    /// An admin of `project_id`.
    pub fn admin(project_id: &str) -> Caller {
        Caller::new(project_id, Roles::ADMIN)
    }

    /// A member of `project_id`.
    pub fn member(project_id: &str) -> Caller {
        Caller::new(project_id, Roles::MEMBER)
    }

    /// Whether the caller has the admin role (Neutron's `context_is_admin`).
    pub fn is_admin(&self) -> bool {
        self.roles.has(Roles::ADMIN)
    }

    /// Whether the caller acts for other projects: an admin, or a service (Nova, Isthmus's
    /// agents) or advsvc user (Neutron's `is_admin or is_advsvc or is_service_role`).
    pub fn is_privileged(&self) -> bool {
        self.is_admin() || self.roles.has(Roles::SERVICE) || self.roles.has(Roles::ADVSVC)
    }

    /// Whether the caller may see and use a resource of `project_id`.
    pub fn owns(&self, project_id: &str) -> bool {
        self.is_privileged() || self.project_id == project_id
    }

    /// Refuses a non-admin setting an admin-only attribute, as Neutron's policy does.
    pub fn require_admin(&self, action: &str) -> Result<()> {
        if self.is_admin() {
            Ok(())
        } else {
            Err(Error::PolicyNotAuthorized(format!("rule:{action}")))
        }
    }
}

/// Standard attributes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    /// UUID.
    pub id: String,
    /// Owning project.
    pub project_id: String,
    /// Name (may be empty).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// Description (may be empty).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// Tags, kept sorted and unique.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// Bumped on every change.
    pub revision_number: u64,
    /// RFC 3339 creation time.
    pub created_at: String,
    /// RFC 3339 time of the last change.
    pub updated_at: String,
}

/// Largest name length Neutron accepts.
pub const NAME_MAX: usize = 255;
/// Largest description length Neutron accepts.
pub const DESCRIPTION_MAX: usize = 255;
/// Largest tag length.
pub const TAG_MAX: usize = 255;

impl Meta {
    /// Fresh standard attributes at revision 1.
    pub fn new(id: String, project_id: String, now: &str) -> Meta {
        Meta {
            id,
            project_id,
            name: String::new(),
            description: String::new(),
            tags: Vec::new(),
            revision_number: 1,
            created_at: now.to_owned(),
            updated_at: now.to_owned(),
        }
    }

    /// Records a change: next revision, new `updated_at`.
    pub fn touch(&mut self, now: &str) {
        self.revision_number += 1;
        self.updated_at = now.to_owned();
    }

    /// Takes `name`, `description` and `tags` from a body.
    pub fn read_common(&mut self, input: &mut Input) -> Result<()> {
        if let Some(name) = input.string("name", NAME_MAX)? {
            self.name = name;
        }
        if let Some(description) = input.string("description", DESCRIPTION_MAX)? {
            self.description = description;
        }
        if let Some(tags) = input.string_list("tags", TAG_MAX)? {
            self.tags = normalize_tags(tags)?;
        }
        Ok(())
    }

    /// One standard attribute; `named` is false for resources without name and tags (security
    /// group rules).
    pub fn attr(&self, name: &str, named: bool) -> Option<Value> {
        Some(match name {
            "id" => json!(self.id),
            "project_id" | "tenant_id" => json!(self.project_id),
            "description" => json!(self.description),
            "revision_number" => json!(self.revision_number),
            "created_at" => json!(self.created_at),
            "updated_at" => json!(self.updated_at),
            "name" if named => json!(self.name),
            "tags" if named => json!(self.tags),
            _ => return None,
        })
    }
}

/// Validates tags and returns them sorted and de-duplicated.
pub fn normalize_tags(tags: Vec<String>) -> Result<Vec<String>> {
    for tag in &tags {
        validate_tag(tag)?;
    }
    let mut tags = tags;
    tags.sort();
    tags.dedup();
    check_tag_count(tags.len())?;
    Ok(tags)
}

/// Most tags on one resource (Neutron's `MAX_TAGS`).
pub const MAX_TAGS: usize = 50;

/// Refuses more than [`MAX_TAGS`] tags on one resource, in Neutron's words.
pub fn check_tag_count(count: usize) -> Result<()> {
    if count > MAX_TAGS {
        return Err(Error::BadRequest(format!(
            "The number of tags exceed the per-resource limit of {MAX_TAGS}"
        )));
    }
    Ok(())
}

/// A tag is a non-empty string of at most 255 characters without commas (commas separate tags
/// in filters).
pub fn validate_tag(tag: &str) -> Result<()> {
    if tag.is_empty() || tag.chars().count() > TAG_MAX || tag.contains(',') {
        return Err(Error::invalid_attr(
            "tags",
            format!("'{tag}' is not a valid tag: 1 to {TAG_MAX} characters without commas"),
        ));
    }
    Ok(())
}

/// The project a new resource belongs to: the caller's, or (admin only) the one named by
/// `project_id`/`tenant_id` in the body.
pub fn owner_project(input: &mut Input, caller: &Caller) -> Result<String> {
    let project = input.string("project_id", 255)?;
    let tenant = input.string("tenant_id", 255)?;
    let requested = match (project, tenant) {
        (Some(p), Some(t)) if p != t => {
            return Err(Error::BadRequest(
                "'project_id' and 'tenant_id' do not match".to_owned(),
            ))
        }
        (Some(p), _) | (None, Some(p)) => Some(p),
        (None, None) => None,
    };
    match requested {
        None => Ok(caller.project_id.clone()),
        Some(p) if p == caller.project_id || caller.is_privileged() => {
            if p.is_empty() {
                return Err(Error::invalid_attr(
                    "project_id",
                    "'' is not a valid project",
                ));
            }
            Ok(p)
        }
        Some(_) => Err(foreign_project()),
    }
}

fn foreign_project() -> Error {
    Error::BadRequest(
        "Specifying 'project_id' or 'tenant_id' other than the authenticated project in request requires admin or advsvc or service privileges".to_owned(),
    )
}

/// Refuses a create body naming another project than the caller's unless the caller acts
/// for other projects: checked before the policy, as Neutron's `_validate_privileges` is.
pub fn check_owner(body: &serde_json::Map<String, Value>, caller: &Caller) -> Result<()> {
    let foreign = ["project_id", "tenant_id"].iter().any(|name| {
        body.get(*name)
            .and_then(Value::as_str)
            .is_some_and(|p| p != caller.project_id)
    });
    if foreign && !caller.is_privileged() {
        Err(foreign_project())
    } else {
        Ok(())
    }
}
