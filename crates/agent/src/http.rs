//! A minimal HTTP/1.1 client for the controller: JSON requests and the chunked NDJSON watch,
//! with a Keystone token when the controller authenticates (noauth headers otherwise).

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::AgentError;

/// How long one exchange with Keystone may take.
const KEYSTONE_TIMEOUT: Duration = Duration::from_secs(10);

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
    async fn token(&self, renew: bool) -> Result<String, AgentError> {
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
        let exchange = async {
            let mut reader =
                send_raw(&self.authority, "POST", &path, &[], Some(&body.to_string())).await?;
            let head = read_head(&mut reader).await?;
            let raw = read_body(&mut reader, head.chunked).await?;
            Ok::<_, AgentError>((head, raw))
        };
        let (head, raw) = tokio::time::timeout(KEYSTONE_TIMEOUT, exchange)
            .await
            .map_err(|_| AgentError::Controller("Keystone did not answer in time".into()))?
            .map_err(|e| AgentError::Controller(format!("Keystone at {}: {e}", self.authority)))?;
        match head.status {
            201 => {}
            400..=499 => {
                return Err(AgentError::Refused(format!(
                    "Keystone refused {}@{}: HTTP {}",
                    self.user, self.project, head.status
                )))
            }
            status => {
                return Err(AgentError::Controller(format!(
                    "Keystone answered {status} to {}@{}",
                    self.user, self.project
                )))
            }
        }
        let token = head
            .subject_token
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

/// The controller's address, from `http://host:port`, and how to authenticate to it.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// `host:port`.
    pub authority: String,
    keystone: Option<Arc<KeystoneLogin>>,
}

impl Endpoint {
    /// Calls the controller with `login`'s Keystone tokens instead of noauth headers.
    pub fn with_keystone(mut self, login: KeystoneLogin) -> Endpoint {
        self.keystone = Some(Arc::new(login));
        self
    }

    /// Parses `http://host[:port]` (port 9696 by default).
    pub fn parse(url: &str) -> Result<Endpoint, AgentError> {
        let rest = url.strip_prefix("http://").ok_or_else(|| {
            AgentError::Config(format!(
                "controller URL must be http://host:port, not '{url}'"
            ))
        })?;
        let authority = rest.trim_end_matches('/');
        if authority.is_empty() || authority.contains('/') {
            return Err(AgentError::Config(format!("bad controller URL '{url}'")));
        }
        let authority = if authority.contains(':') {
            authority.to_owned()
        } else {
            format!("{authority}:9696")
        };
        Ok(Endpoint {
            authority,
            keystone: None,
        })
    }

    /// Sends a request with the agent's identity; a refused token is renewed and the request
    /// sent once more.
    async fn send(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(Head, BufReader<TcpStream>), AgentError> {
        let payload = body.map(|b| b.to_string());
        let mut renew = false;
        loop {
            let token = match &self.keystone {
                Some(login) => Some(login.token(renew).await?),
                None => None,
            };
            let headers: Vec<(&str, &str)> = match &token {
                Some(token) => vec![("X-Auth-Token", token.as_str())],
                // noauth: a service, as Neutron expects of whoever binds ports (Nova, agents).
                None => vec![("X-Roles", "service"), ("X-Project-Id", "service")],
            };
            let mut reader =
                send_raw(&self.authority, method, path, &headers, payload.as_deref()).await?;
            let head = read_head(&mut reader).await?;
            if head.status == 401 && token.is_some() && !renew {
                renew = true;
                continue;
            }
            return Ok((head, reader));
        }
    }

    /// Sends a request and reads the whole JSON answer.
    pub async fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(u16, Value), AgentError> {
        let (head, mut reader) = self.send(method, path, body).await?;
        let status = head.status;
        let raw = read_body(&mut reader, head.chunked).await?;
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
        let (head, mut reader) = self.send(method, path, body).await?;
        let (status, chunked) = (head.status, head.chunked);
        if status != 200 {
            let mut raw = Vec::new();
            reader.read_to_end(&mut raw).await?;
            return Err(AgentError::Controller(format!(
                "watch answered {status}: {}",
                String::from_utf8_lossy(&raw)
            )));
        }
        Ok(Lines {
            reader,
            chunked,
            buffer: Vec::new(),
        })
    }
}

/// Writes one request with `Connection: close`.
async fn send_raw(
    authority: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    payload: Option<&str>,
) -> Result<BufReader<TcpStream>, AgentError> {
    let mut stream = TcpStream::connect(authority).await?;
    stream.set_nodelay(true)?;
    let payload = payload.unwrap_or_default();
    let extra: String = headers
        .iter()
        .map(|(name, value)| format!("{name}: {value}\r\n"))
        .collect();
    // Head and body in one write: one segment for small requests.
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {authority}\r\n{extra}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{payload}",
        payload.len()
    );
    stream.write_all(request.as_bytes()).await?;
    Ok(BufReader::new(stream))
}

/// What the agent reads of a response head.
struct Head {
    status: u16,
    chunked: bool,
    /// Keystone's `X-Subject-Token`.
    subject_token: Option<String>,
}

async fn read_head(reader: &mut BufReader<TcpStream>) -> Result<Head, AgentError> {
    let mut line = String::new();
    reader.read_line(&mut line).await?;
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| AgentError::Controller(format!("bad status line '{}'", line.trim())))?;
    let mut head = Head {
        status,
        chunked: false,
        subject_token: None,
    };
    loop {
        line.clear();
        if reader.read_line(&mut line).await? == 0 || line == "\r\n" {
            break;
        }
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("transfer-encoding") {
            head.chunked |= value.to_ascii_lowercase().contains("chunked");
        } else if name.eq_ignore_ascii_case("x-subject-token") {
            head.subject_token = Some(value.to_owned());
        }
    }
    Ok(head)
}

async fn read_body(
    reader: &mut BufReader<TcpStream>,
    chunked: bool,
) -> Result<Vec<u8>, AgentError> {
    let mut raw = Vec::new();
    if chunked {
        while let Some(chunk) = read_chunk(reader).await? {
            raw.extend_from_slice(&chunk);
        }
    } else {
        reader.read_to_end(&mut raw).await?;
    }
    Ok(raw)
}

async fn read_chunk(reader: &mut BufReader<TcpStream>) -> Result<Option<Vec<u8>>, AgentError> {
    let mut size = String::new();
    if reader.read_line(&mut size).await? == 0 {
        return Ok(None);
    }
    let n = usize::from_str_radix(size.trim().split(';').next().unwrap_or(""), 16)
        .map_err(|_| AgentError::Controller(format!("bad chunk size '{}'", size.trim())))?;
    if n == 0 {
        return Ok(None);
    }
    let mut chunk = vec![0; n + 2];
    reader.read_exact(&mut chunk).await?;
    chunk.truncate(n);
    Ok(Some(chunk))
}

/// NDJSON lines of a streaming response.
pub struct Lines {
    reader: BufReader<TcpStream>,
    chunked: bool,
    buffer: Vec<u8>,
}

impl Lines {
    /// The next line as JSON, or `None` when the stream ended.
    pub async fn next(&mut self) -> Result<Option<Value>, AgentError> {
        loop {
            if let Some(pos) = self.buffer.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buffer.drain(..=pos).collect();
                return serde_json::from_slice(&line)
                    .map(Some)
                    .map_err(|e| AgentError::Controller(format!("bad watch line: {e}")));
            }
            let more = if self.chunked {
                read_chunk(&mut self.reader).await?
            } else {
                let mut buf = vec![0; 64 * 1024];
                let n = self.reader.read(&mut buf).await?;
                buf.truncate(n);
                (n > 0).then_some(buf)
            };
            match more {
                Some(data) => self.buffer.extend_from_slice(&data),
                None => return Ok(None),
            }
        }
    }
}
