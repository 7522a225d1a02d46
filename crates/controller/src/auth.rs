//! Neutron's `noauth` strategy: the caller comes from request headers.

use axum::http::HeaderMap;
use isthmus_model::Caller;

/// The project Neutron's noauth gives callers that send no project header.
pub const NOAUTH_PROJECT: &str = "fake_project_id";

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
}

/// The caller of a request under noauth: `X-Project-Id` (or the legacy `X-Tenant-Id`) names the
/// project, `X-Roles` (comma-separated) the roles. With neither header the caller is an admin
/// of `fake_project_id`, as with Neutron's noauth.
pub fn noauth_caller(headers: &HeaderMap) -> Caller {
    let project = header(headers, "x-project-id").or_else(|| header(headers, "x-tenant-id"));
    let roles = header(headers, "x-roles");
    match (project, roles) {
        (None, None) => Caller {
            project_id: NOAUTH_PROJECT.to_owned(),
            is_admin: true,
        },
        (project, roles) => Caller {
            project_id: project.unwrap_or(NOAUTH_PROJECT).to_owned(),
            is_admin: roles
                .map(|r| {
                    r.split(',')
                        .any(|role| role.trim().eq_ignore_ascii_case("admin"))
                })
                .unwrap_or(false),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn noauth_rules() {
        let mut h = HeaderMap::new();
        assert_eq!(
            noauth_caller(&h),
            Caller {
                project_id: NOAUTH_PROJECT.into(),
                is_admin: true
            }
        );
        h.insert("x-project-id", "a".parse().unwrap());
        assert_eq!(
            noauth_caller(&h),
            Caller {
                project_id: "a".into(),
                is_admin: false
            }
        );
        h.insert("x-roles", "member, admin".parse().unwrap());
        assert!(noauth_caller(&h).is_admin);
    }
}
