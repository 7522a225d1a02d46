//! Starts a real etcd server (Debian's `etcd-server`) on free loopback ports in a temp dir, for
//! tests. The server is killed and its directory removed on drop.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running etcd server.
pub struct EtcdServer {
    child: Child,
    _dir: tempfile::TempDir,
    /// Client URL, e.g. `http://127.0.0.1:40123`.
    pub endpoint: String,
}

/// Why an etcd server could not be started.
#[derive(Debug, thiserror::Error)]
pub enum EtcdServerError {
    /// The `etcd` binary is not installed.
    #[error("etcd binary not found (install Debian's etcd-server)")]
    NotInstalled,
    /// It started but did not answer in time, or failed otherwise.
    #[error("etcd did not start: {0}")]
    Failed(String),
}

fn free_port() -> Result<u16, EtcdServerError> {
    let listener =
        TcpListener::bind("127.0.0.1:0").map_err(|e| EtcdServerError::Failed(e.to_string()))?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(|e| EtcdServerError::Failed(e.to_string()))
}

/// Whether etcd on `port` says it is healthy: it has elected itself leader and serves
/// requests (an open port alone is not enough; requests before that fail).
fn healthy(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    if stream
        .write_all(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    answer.contains("\"health\":\"true\"")
}

fn etcd_binary() -> Option<String> {
    ["/usr/bin/etcd", "/usr/local/bin/etcd"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .map(str::to_owned)
}

impl EtcdServer {
    /// Starts etcd and waits until its client port accepts connections.
    pub fn start() -> Result<Self, EtcdServerError> {
        Self::start_with(&[])
    }

    /// [`EtcdServer::start`] with extra etcd flags (e.g. `--unsafe-no-fsync` for a test that
    /// measures volume, not durability).
    pub fn start_with(extra: &[&str]) -> Result<Self, EtcdServerError> {
        let binary = etcd_binary().ok_or(EtcdServerError::NotInstalled)?;
        let dir = tempfile::tempdir().map_err(|e| EtcdServerError::Failed(e.to_string()))?;
        let client_port = free_port()?;
        let peer_port = free_port()?;
        let endpoint = format!("http://127.0.0.1:{client_port}");
        let peer = format!("http://127.0.0.1:{peer_port}");
        let child = Command::new(binary)
            .arg("--name=isthmus-test")
            .arg(format!("--data-dir={}", dir.path().join("data").display()))
            .arg(format!("--listen-client-urls={endpoint}"))
            .arg(format!("--advertise-client-urls={endpoint}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster=isthmus-test={peer}"))
            .arg("--log-level=error")
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| EtcdServerError::Failed(e.to_string()))?;
        let server = EtcdServer {
            child,
            _dir: dir,
            endpoint,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if healthy(client_port) {
                return Ok(server);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(EtcdServerError::Failed("no answer within 20 s".into()))
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl EtcdServer {
    /// Starts etcd for a test. When etcd is not installed the test is skipped with a printed
    /// reason, except under CI (`CI` set), where a missing etcd fails the test.
    pub fn start_or_skip() -> Option<EtcdServer> {
        Self::start_or_skip_with(&[])
    }

    /// [`EtcdServer::start_or_skip`] with extra etcd flags.
    pub fn start_or_skip_with(extra: &[&str]) -> Option<EtcdServer> {
        match EtcdServer::start_with(extra) {
            Ok(server) => Some(server),
            Err(EtcdServerError::NotInstalled) if std::env::var_os("CI").is_none() => {
                eprintln!("SKIP: etcd is not installed (apt-get install etcd-server)");
                None
            }
            Err(e) => panic!("{e}"),
        }
    }
}
