//! Who is calling: Neutron's `noauth` strategy (the caller comes from request headers) or
//! Keystone v3 tokens validated the way keystonemiddleware's `auth_token` does it (with a
//! service user's token, cached per token hash until the token expires or the cache TTL
//! passes).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::http::HeaderMap;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use isthmus_model::policy::Roles;
use isthmus_model::{keystone, Caller, Error};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// The project Neutron's noauth gives callers that send no project header.
pub const NOAUTH_PROJECT: &str = "fake_project_id";

/// keystonemiddleware's default `token_cache_time`.
pub const DEFAULT_TOKEN_CACHE: Duration = Duration::from_secs(300);

/// Cached validations kept at most (random tokens must not grow the cache without bound).
const CACHE_MAX: usize = 50_000;

/// Tokens longer than this are refused without asking Keystone (a fernet token is ~200
/// bytes; a JWS token under 1 KiB).
const TOKEN_MAX: usize = 8192;

/// How long one call to Keystone may take.
const KEYSTONE_TIMEOUT: Duration = Duration::from_secs(10);

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
}

/// The caller of a request under noauth: `X-Project-Id` (or the legacy `X-Tenant-Id`) names the
/// project, `X-Roles` (comma-separated) the roles (with what Keystone's defaults imply:
/// `admin` ⇒ `member` ⇒ `reader`), `X-User-Id` the user. With neither a project nor roles the
/// caller is an admin of `fake_project_id`, as with Neutron's noauth.
pub fn noauth_caller(headers: &HeaderMap) -> Caller {
    let project = header(headers, "x-project-id").or_else(|| header(headers, "x-tenant-id"));
    let roles = header(headers, "x-roles");
    let mut caller = match (project, roles) {
        (None, None) => Caller::admin(NOAUTH_PROJECT),
        (project, roles) => Caller::new(
            project.unwrap_or(NOAUTH_PROJECT),
            Roles::from_names(roles.unwrap_or_default().split(',')),
        ),
    };
    if let Some(user) = header(headers, "x-user-id") {
        caller.user_id = user.to_owned();
    }
    caller
}

/// How the API authenticates requests.
pub enum Auth {
    /// Neutron's noauth: identity from headers (loopback, the lab, tests).
    NoAuth,
    /// Keystone v3 tokens.
    Keystone(Box<Keystone>),
}

impl Auth {
    /// The caller of a request with `headers`, or why it is refused (401 in Neutron's
    /// format; 503 when Keystone cannot be asked).
    pub async fn caller(&self, headers: &HeaderMap) -> Result<Caller, Error> {
        match self {
            Auth::NoAuth => Ok(noauth_caller(headers)),
            Auth::Keystone(keystone) => match header(headers, "x-auth-token") {
                Some(token) => keystone.validate(token).await,
                None => Err(unauthorized()),
            },
        }
    }

    /// The `WWW-Authenticate` header value of a 401 (`Keystone uri="..."`).
    pub fn challenge(&self) -> Option<String> {
        match self {
            Auth::NoAuth => None,
            Auth::Keystone(k) => Some(format!("Keystone uri=\"{}\"", k.config.url)),
        }
    }
}

/// A 401 as keystonemiddleware words it, in Neutron's error body.
pub fn unauthorized() -> Error {
    Error::Fault {
        kind: "HTTPUnauthorized",
        status: 401,
        message: "The request you have made requires authentication.".to_owned(),
    }
}

fn unavailable() -> Error {
    Error::Fault {
        kind: "HTTPServiceUnavailable",
        status: 503,
        message: "The identity service cannot be reached; try again later.".to_owned(),
    }
}

/// The service user Isthmus validates tokens with (Neutron's `[keystone_authtoken]`).
#[derive(Debug, Clone)]
pub struct KeystoneConfig {
    /// Keystone's v3 endpoint, e.g. `http://keystone:5000/v3`.
    pub url: String,
    /// The service user's name.
    pub user: String,
    /// Its password.
    pub password: String,
    /// The project its token is scoped to.
    pub project: String,
    /// The domain of the user and the project.
    pub domain: String,
    /// How long a validation is cached at most (the token's own expiry also ends it).
    pub cache_ttl: Duration,
}

#[derive(Clone)]
enum Validation {
    Valid(Caller),
    Invalid,
    /// A valid token without a project (system or domain scope): Neutron's policies are
    /// project-scoped, so it may do nothing (403, as Neutron's scope enforcement answers).
    Unscoped,
}

fn wrong_scope() -> Error {
    Error::PolicyNotAuthorized("a project-scoped token".to_owned())
}

struct Cached {
    validation: Validation,
    until: Instant,
}

/// A Keystone token obtained with a password, and when to renew it.
#[derive(Clone)]
struct ServiceToken {
    token: String,
    renew_at: Instant,
}

/// A Keystone v3 client: validates callers' tokens with a service token of its own.
pub struct Keystone {
    config: KeystoneConfig,
    client: Client<HttpConnector, Full<Bytes>>,
    service_token: tokio::sync::Mutex<Option<ServiceToken>>,
    cache: Mutex<HashMap<[u8; 32], Cached>>,
}

/// A token Keystone issued: its value and what it says.
#[derive(Debug, Clone)]
pub struct Issued {
    /// The token (`X-Subject-Token`).
    pub token: String,
    /// Whom it identifies.
    pub caller: Caller,
    /// When it expires.
    pub expires: SystemTime,
}

/// Password-authenticates `user` at Keystone `url` and returns a token scoped to `project`
/// (both in `domain`). What agents and the controller's service user do.
pub async fn password_token(
    client: &Client<HttpConnector, Full<Bytes>>,
    url: &str,
    user: &str,
    password: &str,
    project: &str,
    domain: &str,
) -> Result<Issued, String> {
    let body = keystone::password_request(user, password, project, domain);
    let request = hyper::Request::post(format!("{}/auth/tokens", url.trim_end_matches('/')))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .map_err(|e| e.to_string())?;
    let (status, headers, body) = send(client, request).await?;
    if status != 201 {
        return Err(format!("Keystone refused {user}@{project}: HTTP {status}"));
    }
    let token = headers
        .get("x-subject-token")
        .and_then(|v| v.to_str().ok())
        .ok_or("Keystone sent no X-Subject-Token")?
        .to_owned();
    let issued = keystone::parse_token(&body)
        .ok_or("Keystone's token body is not a v3 project-scoped token")?;
    Ok(Issued {
        token,
        caller: issued.caller,
        expires: UNIX_EPOCH + Duration::from_secs(issued.expires_at),
    })
}

/// An HTTP client for Keystone.
pub fn http_client() -> Client<HttpConnector, Full<Bytes>> {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(KEYSTONE_TIMEOUT));
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .build(connector)
}

/// Sends `request` (once more on a fresh connection when a pooled one turns out closed: both
/// calls Isthmus makes to Keystone are safe to repeat).
async fn send(
    client: &Client<HttpConnector, Full<Bytes>>,
    request: hyper::Request<Full<Bytes>>,
) -> Result<(u16, hyper::HeaderMap, Value), String> {
    let (parts, body) = request.into_parts();
    let again = hyper::Request::from_parts(parts.clone(), body.clone());
    match exchange(client, hyper::Request::from_parts(parts, body)).await {
        Err(_) => exchange(client, again).await,
        done => done,
    }
}

async fn exchange(
    client: &Client<HttpConnector, Full<Bytes>>,
    request: hyper::Request<Full<Bytes>>,
) -> Result<(u16, hyper::HeaderMap, Value), String> {
    let exchange = async {
        let response = client.request(request).await.map_err(|e| e.to_string())?;
        let (parts, body) = response.into_parts();
        let bytes = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
        let value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Ok::<_, String>((parts.status.as_u16(), parts.headers, value))
    };
    tokio::time::timeout(KEYSTONE_TIMEOUT, exchange)
        .await
        .map_err(|_| "Keystone did not answer in time".to_owned())?
}

impl Keystone {
    /// A client for `config` (nothing is asked of Keystone until the first request).
    pub fn new(config: KeystoneConfig) -> Keystone {
        Keystone {
            config,
            client: http_client(),
            service_token: tokio::sync::Mutex::new(None),
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// Obtains the service token now: a controller checks its credentials at start.
    pub async fn login(&self) -> Result<(), String> {
        self.service_token(true).await.map(|_| ())
    }

    async fn service_token(&self, renew: bool) -> Result<String, String> {
        let mut current = self.service_token.lock().await;
        if let Some(t) = current.as_ref() {
            if !renew && Instant::now() < t.renew_at {
                return Ok(t.token.clone());
            }
        }
        let c = &self.config;
        let issued = password_token(
            &self.client,
            &c.url,
            &c.user,
            &c.password,
            &c.project,
            &c.domain,
        )
        .await?;
        let lifetime = issued
            .expires
            .duration_since(SystemTime::now())
            .unwrap_or_default();
        // Renew at 80% of its life, well before Keystone stops accepting it.
        let renew_at = Instant::now() + lifetime.mul_f64(0.8);
        *current = Some(ServiceToken {
            token: issued.token.clone(),
            renew_at,
        });
        Ok(issued.token)
    }

    fn cached(&self, key: &[u8; 32]) -> Option<Validation> {
        let cache = self.cache.lock().ok()?;
        cache
            .get(key)
            .filter(|c| Instant::now() < c.until)
            .map(|c| c.validation.clone())
    }

    fn remember(&self, key: [u8; 32], validation: Validation, until: Instant) {
        let Ok(mut cache) = self.cache.lock() else {
            return;
        };
        if cache.len() >= CACHE_MAX {
            let now = Instant::now();
            cache.retain(|_, c| now < c.until);
            if cache.len() >= CACHE_MAX {
                cache.clear();
            }
        }
        cache.insert(key, Cached { validation, until });
    }

    /// The caller a token identifies, from the cache or from Keystone
    /// (`GET /v3/auth/tokens` with `X-Subject-Token`).
    pub async fn validate(&self, token: &str) -> Result<Caller, Error> {
        if token.len() > TOKEN_MAX || !token.is_ascii() {
            return Err(unauthorized());
        }
        let key: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        match self.cached(&key) {
            Some(Validation::Valid(caller)) => return Ok(caller),
            Some(Validation::Invalid) => return Err(unauthorized()),
            Some(Validation::Unscoped) => return Err(wrong_scope()),
            None => {}
        }
        let mut renew = false;
        for _ in 0..2 {
            let service = self.service_token(renew).await.map_err(|e| {
                tracing::warn!("cannot authenticate to Keystone: {e}");
                unavailable()
            })?;
            let request = hyper::Request::get(format!(
                "{}/auth/tokens",
                self.config.url.trim_end_matches('/')
            ))
            .header("x-auth-token", service)
            .header("x-subject-token", token)
            .body(Full::new(Bytes::new()))
            .map_err(|_| unauthorized())?;
            let (status, _, body) = send(&self.client, request).await.map_err(|e| {
                tracing::warn!("Keystone token validation failed: {e}");
                unavailable()
            })?;
            let ttl_end = Instant::now() + self.config.cache_ttl;
            match status {
                200 => {
                    let Some(issued) = keystone::parse_token(&body) else {
                        self.remember(key, Validation::Unscoped, ttl_end);
                        return Err(wrong_scope());
                    };
                    let caller = issued.caller;
                    let left = (UNIX_EPOCH + Duration::from_secs(issued.expires_at))
                        .duration_since(SystemTime::now())
                        .unwrap_or_default();
                    if left.is_zero() {
                        return Err(unauthorized());
                    }
                    let until = ttl_end.min(Instant::now() + left);
                    self.remember(key, Validation::Valid(caller.clone()), until);
                    return Ok(caller);
                }
                // Our own token expired or was revoked: renew it once.
                401 if !renew => renew = true,
                404 | 400 | 401 => {
                    self.remember(key, Validation::Invalid, ttl_end);
                    return Err(unauthorized());
                }
                other => {
                    tracing::warn!("Keystone answered {other} to a token validation");
                    return Err(unavailable());
                }
            }
        }
        Err(unavailable())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn noauth_rules() {
        let mut h = HeaderMap::new();
        assert_eq!(noauth_caller(&h), Caller::admin(NOAUTH_PROJECT));
        h.insert("x-project-id", "a".parse().unwrap());
        let none = noauth_caller(&h);
        assert_eq!(none.project_id, "a");
        assert_eq!(none.roles, Roles::NONE);
        h.insert("x-roles", "reader".parse().unwrap());
        assert_eq!(noauth_caller(&h).roles, Roles::READER);
        h.insert("x-roles", "member, admin".parse().unwrap());
        assert!(noauth_caller(&h).is_admin());
    }
}
