//! Keystone v3 as Isthmus speaks it (pure: the HTTP exchanges live in the controller and the
//! agent): the password-authentication request and what a token says about its holder.

use serde_json::{json, Value};

use crate::meta::Caller;
use crate::policy::Roles;
use crate::time::parse_rfc3339;

/// The body of `POST /v3/auth/tokens` authenticating `user` with `password`, scoped to
/// `project` (user and project both in `domain`, by name).
pub fn password_request(user: &str, password: &str, project: &str, domain: &str) -> Value {
    json!({"auth": {
        "identity": {"methods": ["password"], "password": {"user": {
            "name": user, "domain": {"name": domain}, "password": password}}},
        "scope": {"project": {"name": project, "domain": {"name": domain}}},
    }})
}

/// What a project-scoped token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    /// Its holder: project, user and roles (the roles Keystone lists, implied ones included).
    pub caller: Caller,
    /// When it expires, in seconds since the Unix epoch.
    pub expires_at: u64,
}

/// Reads a v3 token body (`{"token": {...}}`); `None` unless it is project-scoped (Neutron's
/// policies are project-scoped: system- and domain-scoped tokens identify no project).
pub fn parse_token(body: &Value) -> Option<Token> {
    let token = body.get("token")?;
    let project = token.get("project")?.get("id")?.as_str()?;
    let roles = token
        .get("roles")?
        .as_array()?
        .iter()
        .filter_map(|r| r.get("name").and_then(Value::as_str));
    let mut caller = Caller::new(project, Roles::from_names(roles));
    caller.user_id = token
        .get("user")
        .and_then(|u| u.get("id"))
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let expires_at = parse_rfc3339(token.get("expires_at")?.as_str()?)?;
    Some(Token { caller, expires_at })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn project_scoped_tokens_only() {
        let body = json!({"token": {
            "user": {"id": "u1"}, "project": {"id": "p1"},
            "roles": [{"name": "member"}, {"name": "reader"}, {"name": "custom"}],
            "expires_at": "2026-12-04T18:48:49.000000Z"}});
        let token = parse_token(&body).unwrap();
        assert_eq!(token.caller.project_id, "p1");
        assert_eq!(token.caller.user_id, "u1");
        assert_eq!(token.caller.roles, Roles::MEMBER | Roles::READER);
        assert_eq!(token.expires_at, 1_796_410_129);
        let system = json!({"token": {"system": {"all": true}, "roles": [{"name": "admin"}],
            "expires_at": "2026-12-04T18:48:49.000000Z"}});
        assert!(parse_token(&system).is_none());
        assert!(parse_token(&json!({"token": {"project": {"id": "p"}, "roles": []}})).is_none());
    }

    #[test]
    fn password_request_names_user_project_and_domain() {
        let body = password_request("isthmus", "pw", "service", "Default");
        assert_eq!(
            body["auth"]["identity"]["password"]["user"]["name"],
            "isthmus"
        );
        assert_eq!(
            body["auth"]["scope"]["project"]["domain"]["name"],
            "Default"
        );
    }
}
