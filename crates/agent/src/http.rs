//! The agent's HTTP client for the controller (hyper, with keep-alive): JSON requests and the
//! NDJSON watch, with a Keystone token when the controller authenticates (noauth headers
//! otherwise). Several controllers may be given; a connection that fails moves the agent to
//! the next. Every exchange has a deadline, and a watch that stays silent for three bookmark
//! intervals is dead.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

use crate::AgentError;

/// How long connecting to a controller or Keystone may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// How long a request may take, answer included (a watch: until its response head).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Silence after which a watch is dead: three of the controller's 5 s bookmark intervals.
pub const WATCH_SILENCE: Duration = Duration::from_secs(15);

type Client = hyper_util::client::legacy::Client<HttpConnector, Full<Bytes>>;

fn client() -> Client {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
    connector.set_nodelay(true);
    // Dead peers on idle pooled connections are found by the kernel too.
    connector.set_keepalive(Some(Duration::from_secs(30)));
    hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .build(connector)
}

/// Why an exchange failed: before anything was sent (the peer is out of reach: another
/// controller may do) or later.
enum Failure {
    Unreachable(String),
    Broken(String),
}

impl From<Failure> for AgentError {
    fn from(f: Failure) -> AgentError {
        match f {
            Failure::Unreachable(e) | Failure::Broken(e) => AgentError::Controller(e),
        }
    }
}

/// Sends one request to `authority` and waits (at most [`REQUEST_TIMEOUT`]) for the head of
/// its answer.
async fn exchange(
    client: &Client,
    authority: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> Result<hyper::Response<Incoming>, Failure> {
    let mut request = hyper::Request::builder()
        .method(method)
        .uri(format!("http://{authority}{path}"))
        .header("content-type", "application/json");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request
        .body(Full::new(Bytes::from(body.unwrap_or_default().to_owned())))
        .map_err(|e| Failure::Broken(format!("bad request {method} {path}: {e}")))?;
    match tokio::time::timeout(REQUEST_TIMEOUT, client.request(request)).await {
        Err(_) => Err(Failure::Broken(format!(
            "{authority} did not answer {method} {path} within {REQUEST_TIMEOUT:?}"
        ))),
        Ok(Err(e)) if e.is_connect() => Err(Failure::Unreachable(format!("{authority}: {e}"))),
        Ok(Err(e)) => Err(Failure::Broken(format!("{authority}: {e}"))),
        Ok(Ok(response)) => Ok(response),
    }
}

/// Reads a whole answer body (within [`REQUEST_TIMEOUT`]).
async fn read_all(response: hyper::Response<Incoming>) -> Result<Bytes, AgentError> {
    tokio::time::timeout(REQUEST_TIMEOUT, response.into_body().collect())
        .await
        .map_err(|_| AgentError::Controller("the answer did not arrive in time".into()))?
        .map(|b| b.to_bytes())
        .map_err(|e| AgentError::Controller(format!("reading the answer: {e}")))
}

/// The Keystone user an agent calls the controller as (it needs the `service` role), and its
/// current token, renewed at 80% of its life or when the controller refuses it.
pub struct KeystoneLogin {
    authority: String,
    path: String,
    user: String,
    password: String,
    project: String,
    domain: String,
    token: tokio::sync::Mutex<Option<(String, Instant)>>,
}

impl std::fmt::Debug for KeystoneLogin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeystoneLogin")
            .field("url", &format!("http://{}{}", self.authority, self.path))
            .field("user", &self.user)
            .field("project", &self.project)
            .finish_non_exhaustive()
    }
}

impl KeystoneLogin {
    /// A login for `user` at Keystone's `url` (`http://host:port/v3`), scoped to `project`.
    pub fn new(
        url: &str,
        user: &str,
        password: String,
        project: &str,
        domain: &str,
    ) -> Result<KeystoneLogin, AgentError> {
        let rest = url.strip_prefix("http://").ok_or_else(|| {
            AgentError::Config(format!(
                "Keystone URL must be http://host:port/v3, not '{url}'"
            ))
        })?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], rest[i..].trim_end_matches('/')),
            None => (rest, ""),
        };
        if authority.is_empty() {
            return Err(AgentError::Config(format!("bad Keystone URL '{url}'")));
        }
        Ok(KeystoneLogin {
            authority: authority.to_owned(),
            path: path.to_owned(),
            user: user.to_owned(),
            password,
            project: project.to_owned(),
            domain: domain.to_owned(),
            token: tokio::sync::Mutex::new(None),
        })
    }

    /// The current token; a new one when `renew` or when it is due.
    async fn token(&self, client: &Client, renew: bool) -> Result<String, AgentError> {
        let mut current = self.token.lock().await;
        if let Some((token, renew_at)) = current.as_ref() {
            if !renew && Instant::now() < *renew_at {
                return Ok(token.clone());
            }
        }
        let body = isthmus_model::keystone::password_request(
            &self.user,
            &self.password,
            &self.project,
            &self.domain,
        );
        let path = format!("{}/auth/tokens", self.path);
        let response = exchange(
            client,
            &self.authority,
            "POST",
            &path,
            &[],
            Some(&body.to_string()),
        )
        .await
        .map_err(|e| AgentError::Controller(format!("Keystone: {}", AgentError::from(e))))?;
        let status = response.status().as_u16();
        let subject_token = response
            .headers()
            .get("x-subject-token")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let raw = read_all(response).await?;
        match status {
            201 => {}
            400..=499 => {
                return Err(AgentError::Refused(format!(
                    "Keystone refused {}@{}: HTTP {}",
                    self.user, self.project, status
                )))
            }
            status => {
                return Err(AgentError::Controller(format!(
                    "Keystone answered {status} to {}@{}",
                    self.user, self.project
                )))
            }
        }
        let token = subject_token
            .ok_or_else(|| AgentError::Controller("Keystone sent no X-Subject-Token".into()))?;
        let issued = serde_json::from_slice(&raw)
            .ok()
            .and_then(|v: Value| isthmus_model::keystone::parse_token(&v))
            .ok_or_else(|| {
                AgentError::Controller("Keystone sent no project-scoped token".into())
            })?;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let lifetime = Duration::from_secs(issued.expires_at.saturating_sub(now));
        *current = Some((token.clone(), Instant::now() + lifetime.mul_f64(0.8)));
        Ok(token)
    }
}

/// The controllers (one or several, `http://host:port` each) and how to authenticate to
/// them. Clones share the connection pool and which controller is current.
#[derive(Clone)]
pub struct Endpoint {
    authorities: Arc<Vec<String>>,
    current: Arc<AtomicUsize>,
    keystone: Option<Arc<KeystoneLogin>>,
    client: Client,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("controllers", &self.authorities)
            .field("current", &self.authority())
            .field("keystone", &self.keystone)
            .finish()
    }
}

impl Endpoint {
    /// Calls the controller with `login`'s Keystone tokens instead of noauth headers.
    pub fn with_keystone(mut self, login: KeystoneLogin) -> Endpoint {
        self.keystone = Some(Arc::new(login));
        self
    }

    /// Parses `http://host[:port]` (port 9696 by default), or several such URLs separated by
    /// commas: controllers the agent fails over between.
    pub fn parse(urls: &str) -> Result<Endpoint, AgentError> {
        let authorities = urls
            .split(',')
            .map(|url| {
                let url = url.trim();
                let rest = url.strip_prefix("http://").ok_or_else(|| {
                    AgentError::Config(format!(
                        "controller URL must be http://host:port, not '{url}'"
                    ))
                })?;
                let authority = rest.trim_end_matches('/');
                if authority.is_empty() || authority.contains('/') {
                    return Err(AgentError::Config(format!("bad controller URL '{url}'")));
                }
                Ok(if authority.contains(':') {
                    authority.to_owned()
                } else {
                    format!("{authority}:9696")
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Endpoint {
            authorities: Arc::new(authorities),
            current: Arc::new(AtomicUsize::new(0)),
            keystone: None,
            client: client(),
        })
    }

    /// The controller (`host:port`) requests go to now.
    pub fn authority(&self) -> &str {
        let i = self.current.load(Ordering::Relaxed) % self.authorities.len();
        &self.authorities[i]
    }

    /// Moves to the next controller (after `failed`, unless another caller already moved).
    pub fn fail_over(&self, failed: &str) {
        let i = self.current.load(Ordering::Relaxed);
        if self.authorities.len() > 1 && self.authorities[i % self.authorities.len()] == failed {
            let _ = self
                .current
                .compare_exchange(i, i + 1, Ordering::Relaxed, Ordering::Relaxed);
        }
    }

    /// Sends a request with the agent's identity to the current controller, moving on to the
    /// next when one is out of reach; a refused token is renewed and the request sent once
    /// more.
    async fn send(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<hyper::Response<Incoming>, AgentError> {
        let payload = body.map(|b| b.to_string());
        let mut renew = false;
        let mut tries = 0;
        loop {
            let token = match &self.keystone {
                Some(login) => Some(login.token(&self.client, renew).await?),
                None => None,
            };
            let headers: Vec<(&str, &str)> = match &token {
                Some(token) => vec![("X-Auth-Token", token.as_str())],
                // noauth: a service, as Neutron expects of whoever binds ports (Nova, agents).
                None => vec![("X-Roles", "service"), ("X-Project-Id", "service")],
            };
            let authority = self.authority().to_owned();
            let sent = exchange(
                &self.client,
                &authority,
                method,
                path,
                &headers,
                payload.as_deref(),
            )
            .await;
            let response = match sent {
                Err(Failure::Unreachable(e)) => {
                    tries += 1;
                    self.fail_over(&authority);
                    if tries < self.authorities.len() {
                        continue;
                    }
                    return Err(AgentError::Controller(e));
                }
                other => other?,
            };
            if response.status() == 401 && token.is_some() && !renew {
                renew = true;
                continue;
            }
            return Ok(response);
        }
    }

    /// Sends a request and reads the whole JSON answer.
    pub async fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(u16, Value), AgentError> {
        let response = self.send(method, path, body).await?;
        let status = response.status().as_u16();
        let raw = read_all(response).await?;
        let value = if raw.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&raw)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&raw).into_owned()))
        };
        Ok((status, value))
    }

    /// Opens a streaming GET; lines are read with [`Lines::next`].
    pub async fn stream(&self, path: &str) -> Result<Lines, AgentError> {
        self.stream_with("GET", path, None).await
    }

    /// Opens a streaming request with a body (a resumed watch).
    pub async fn stream_with(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Lines, AgentError> {
        let response = self.send(method, path, body).await?;
        let status = response.status().as_u16();
        if status != 200 {
            let raw = read_all(response).await.unwrap_or_default();
            return Err(AgentError::Controller(format!(
                "watch answered {status}: {}",
                String::from_utf8_lossy(&raw)
            )));
        }
        Ok(Lines {
            body: response.into_body(),
            buffer: Vec::new(),
        })
    }
}

/// NDJSON lines of a streaming response.
pub struct Lines {
    body: Incoming,
    buffer: Vec<u8>,
}

impl Lines {
    /// The next line as JSON, or `None` when the stream ended; an error when nothing arrived
    /// for [`WATCH_SILENCE`] (the controller or the path to it is gone without a word).
    pub async fn next(&mut self) -> Result<Option<Value>, AgentError> {
        loop {
            if let Some(pos) = self.buffer.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buffer.drain(..=pos).collect();
                return serde_json::from_slice(&line)
                    .map(Some)
                    .map_err(|e| AgentError::Controller(format!("bad watch line: {e}")));
            }
            let frame = tokio::time::timeout(WATCH_SILENCE, self.body.frame())
                .await
                .map_err(|_| {
                    AgentError::Controller(format!(
                        "the watch was silent for {WATCH_SILENCE:?}: dead"
                    ))
                })?;
            match frame {
                None => return Ok(None),
                Some(Err(e)) => return Err(AgentError::Controller(format!("watch broke: {e}"))),
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.buffer.extend_from_slice(&data);
                    }
                }
            }
        }
    }
}
