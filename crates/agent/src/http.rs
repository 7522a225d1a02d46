//! A minimal HTTP/1.1 client for the controller: JSON requests and the chunked NDJSON watch.

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::AgentError;

/// The controller's address, from `http://host:port`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// `host:port`.
    pub authority: String,
}

impl Endpoint {
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
        Ok(Endpoint { authority })
    }

    async fn send(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<BufReader<TcpStream>, AgentError> {
        let mut stream = TcpStream::connect(&self.authority).await?;
        stream.set_nodelay(true)?;
        let payload = body.map(|b| b.to_string()).unwrap_or_default();
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nX-Roles: admin\r\nX-Project-Id: isthmus-agent\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            self.authority,
            payload.len()
        );
        stream.write_all(head.as_bytes()).await?;
        stream.write_all(payload.as_bytes()).await?;
        Ok(BufReader::new(stream))
    }

    /// Sends a request and reads the whole JSON answer.
    pub async fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(u16, Value), AgentError> {
        let mut reader = self.send(method, path, body).await?;
        let (status, chunked) = read_head(&mut reader).await?;
        let mut raw = Vec::new();
        if chunked {
            while let Some(chunk) = read_chunk(&mut reader).await? {
                raw.extend_from_slice(&chunk);
            }
        } else {
            reader.read_to_end(&mut raw).await?;
        }
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
        let mut reader = self.send("GET", path, None).await?;
        let (status, chunked) = read_head(&mut reader).await?;
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

async fn read_head(reader: &mut BufReader<TcpStream>) -> Result<(u16, bool), AgentError> {
    let mut line = String::new();
    reader.read_line(&mut line).await?;
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| AgentError::Controller(format!("bad status line '{}'", line.trim())))?;
    let mut chunked = false;
    loop {
        line.clear();
        if reader.read_line(&mut line).await? == 0 || line == "\r\n" {
            break;
        }
        let lower = line.to_ascii_lowercase();
        if lower.starts_with("transfer-encoding:") && lower.contains("chunked") {
            chunked = true;
        }
    }
    Ok((status, chunked))
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
