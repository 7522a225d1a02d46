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

/// A throwaway certificate authority with a server certificate for 127.0.0.1 and a client
/// certificate, made with the `openssl` command, for etcd over TLS in tests.
pub struct TestPki {
    dir: tempfile::TempDir,
}

impl TestPki {
    /// Makes the CA and both certificates (each key RSA 2048, valid one day).
    pub fn generate() -> Result<Self, EtcdServerError> {
        let dir = tempfile::tempdir().map_err(|e| EtcdServerError::Failed(e.to_string()))?;
        let run = |args: &[&str]| -> Result<(), EtcdServerError> {
            let out = Command::new("openssl")
                .args(args)
                .current_dir(dir.path())
                .output()
                .map_err(|e| EtcdServerError::Failed(format!("openssl: {e}")))?;
            if out.status.success() {
                Ok(())
            } else {
                Err(EtcdServerError::Failed(format!(
                    "openssl {}: {}",
                    args.join(" "),
                    String::from_utf8_lossy(&out.stderr)
                )))
            }
        };
        run(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=isthmus-test-ca",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
        ])?;
        std::fs::write(
            dir.path().join("server.ext"),
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\n",
        )
        .map_err(|e| EtcdServerError::Failed(e.to_string()))?;
        std::fs::write(
            dir.path().join("client.ext"),
            "extendedKeyUsage=clientAuth\n",
        )
        .map_err(|e| EtcdServerError::Failed(e.to_string()))?;
        for name in ["server", "client"] {
            run(&[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-subj",
                &format!("/CN=isthmus-{name}"),
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.csr"),
            ])?;
            run(&[
                "x509",
                "-req",
                "-in",
                &format!("{name}.csr"),
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "1",
                "-extfile",
                &format!("{name}.ext"),
                "-out",
                &format!("{name}.pem"),
            ])?;
        }
        Ok(TestPki { dir })
    }

    /// Path of a file the PKI holds: `ca.pem`, `server.pem`, `server.key`, `client.pem`,
    /// `client.key`.
    pub fn path(&self, name: &str) -> std::path::PathBuf {
        self.dir.path().join(name)
    }
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
        Self::launch(None, extra)
    }

    /// Starts etcd serving clients over TLS only, with `pki`'s server certificate, and
    /// requiring a client certificate signed by its CA (`--client-cert-auth`).
    pub fn start_tls(pki: &TestPki) -> Result<Self, EtcdServerError> {
        Self::launch(Some(pki), &[])
    }

    fn launch(pki: Option<&TestPki>, extra: &[&str]) -> Result<Self, EtcdServerError> {
        let binary = etcd_binary().ok_or(EtcdServerError::NotInstalled)?;
        let dir = tempfile::tempdir().map_err(|e| EtcdServerError::Failed(e.to_string()))?;
        let client_port = free_port()?;
        let peer_port = free_port()?;
        // Health is asked over plain HTTP on a port of its own, whatever clients speak.
        let metrics_port = free_port()?;
        let scheme = if pki.is_some() { "https" } else { "http" };
        let endpoint = format!("{scheme}://127.0.0.1:{client_port}");
        let peer = format!("http://127.0.0.1:{peer_port}");
        let mut tls = Vec::new();
        if let Some(pki) = pki {
            tls.push(format!("--cert-file={}", pki.path("server.pem").display()));
            tls.push(format!("--key-file={}", pki.path("server.key").display()));
            tls.push(format!(
                "--trusted-ca-file={}",
                pki.path("ca.pem").display()
            ));
            tls.push("--client-cert-auth".to_owned());
        }
        let child = Command::new(binary)
            .arg("--name=isthmus-test")
            .arg(format!("--data-dir={}", dir.path().join("data").display()))
            .arg(format!("--listen-client-urls={endpoint}"))
            .arg(format!("--advertise-client-urls={endpoint}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster=isthmus-test={peer}"))
            .arg(format!(
                "--listen-metrics-urls=http://127.0.0.1:{metrics_port}"
            ))
            .arg("--log-level=error")
            .args(tls)
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
            if healthy(metrics_port) {
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
        Self::or_skip(EtcdServer::start_with(extra))
    }

    /// [`EtcdServer::start_tls`], skipped (outside CI) like [`EtcdServer::start_or_skip`].
    pub fn start_tls_or_skip(pki: &TestPki) -> Option<EtcdServer> {
        Self::or_skip(EtcdServer::start_tls(pki))
    }

    fn or_skip(started: Result<EtcdServer, EtcdServerError>) -> Option<EtcdServer> {
        match started {
            Ok(server) => Some(server),
            Err(EtcdServerError::NotInstalled) if std::env::var_os("CI").is_none() => {
                eprintln!("SKIP: etcd is not installed (apt-get install etcd-server)");
                None
            }
            Err(e) => panic!("{e}"),
        }
    }
}
