//! Health probes of the load-balancer members this node hosts
//! ([`isthmus_dataplane::lb::probes`]): one task per
//! member probes it every `delay` seconds from its network's DHCP namespace and reports to the
//! controller when it crosses `max_retries` successes (ONLINE) or `max_retries_down`
//! failures (ERROR) in a row; every node then drops or restores it.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, SocketAddrV4, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::time::Duration;

use isthmus_dataplane::lb::{Probe, ProbeKind};
use isthmus_model::lbaas::health_monitor::expects;
use isthmus_model::lbaas::operating;
use serde_json::json;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::http::Endpoint;
use crate::netns;

/// Follows the probes the view asks for.
pub struct Prober {
    probes: watch::Sender<Vec<Probe>>,
}

impl Prober {
    /// Starts probing in the namespaces pinned in `dir`, reporting to `controller` as `node`.
    pub fn start(dir: PathBuf, controller: Endpoint, node: String) -> Prober {
        let (probes, rx) = watch::channel(Vec::new());
        tokio::spawn(manage(rx, dir, controller, node));
        Prober { probes }
    }

    /// Probes exactly `probes` from now on.
    pub fn follow(&self, probes: Vec<Probe>) {
        self.probes.send_if_modified(|old| {
            let changed = *old != probes;
            if changed {
                *old = probes;
            }
            changed
        });
    }
}

/// A probe without what the controller last recorded (changes of that do not restart it).
fn settings(p: &Probe) -> Probe {
    Probe {
        reported: String::new(),
        ..p.clone()
    }
}

async fn manage(
    mut rx: watch::Receiver<Vec<Probe>>,
    dir: PathBuf,
    controller: Endpoint,
    node: String,
) {
    let mut running: HashMap<String, (Probe, watch::Sender<String>, JoinHandle<()>)> =
        HashMap::new();
    while rx.changed().await.is_ok() {
        let probes = rx.borrow_and_update().clone();
        let wanted: HashMap<&str, &Probe> =
            probes.iter().map(|p| (p.member_id.as_str(), p)).collect();
        running.retain(|id, (settings_then, _, task)| {
            let keep = wanted
                .get(id.as_str())
                .is_some_and(|p| settings(p) == *settings_then);
            if !keep {
                task.abort();
            }
            keep
        });
        for probe in &probes {
            match running.get(&probe.member_id) {
                Some((_, reported, _)) => {
                    reported.send_if_modified(|r| {
                        let changed = *r != probe.reported;
                        r.clone_from(&probe.reported);
                        changed
                    });
                }
                None => {
                    let (reported, reported_rx) = watch::channel(probe.reported.clone());
                    let task = tokio::spawn(track(
                        probe.clone(),
                        reported_rx,
                        dir.clone(),
                        controller.clone(),
                        node.clone(),
                    ));
                    running.insert(probe.member_id.clone(), (settings(probe), reported, task));
                }
            }
        }
    }
}

/// Probes one member for as long as it is wanted.
async fn track(
    probe: Probe,
    reported: watch::Receiver<String>,
    dir: PathBuf,
    controller: Endpoint,
    node: String,
) {
    let mut state: Option<&'static str> = match probe.reported.as_str() {
        operating::ONLINE => Some(operating::ONLINE),
        operating::ERROR => Some(operating::ERROR),
        _ => None,
    };
    let (mut successes, mut failures) = (0u32, 0u32);
    let mut interval = tokio::time::interval(Duration::from_secs(u64::from(probe.delay.max(1))));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        let ok = run(&probe, &dir).await;
        if ok {
            successes += 1;
            failures = 0;
        } else {
            failures += 1;
            successes = 0;
        }
        if ok && successes >= probe.rise {
            state = Some(operating::ONLINE);
        } else if !ok && failures >= probe.fall {
            state = Some(operating::ERROR);
        }
        // Reported whenever the controller's record differs (a transition, or a record
        // another writer changed).
        if let Some(status) = state {
            if *reported.borrow() != status {
                report(&controller, &node, &probe.member_id, status).await;
            }
        }
    }
}

async fn report(controller: &Endpoint, node: &str, member: &str, status: &str) {
    let path = format!("/isthmus/v1/members/{member}/status");
    let body = json!({ "operating_status": status, "node": node });
    match controller.request("PUT", &path, Some(&body)).await {
        // 404: the member is gone since this view was taken.
        Ok((200 | 404, _)) => {}
        Ok((code, answer)) => {
            tracing::warn!("member {member} status {status}: {code} {answer}")
        }
        Err(e) => tracing::warn!("member {member} status {status}: {e}"),
    }
}

/// One probe; whether the member answered as its monitor expects.
async fn run(probe: &Probe, dir: &std::path::Path) -> bool {
    let timeout = Duration::from_secs(u64::from(probe.timeout.max(1)));
    if probe.kind == ProbeKind::Ping {
        let path = dir.join(&probe.namespace);
        let status = tokio::process::Command::new("nsenter")
            .arg(format!("--net={}", path.display()))
            .args(["ping", "-n", "-q", "-c", "1", "-W"])
            .arg(timeout.as_secs().to_string())
            .arg(probe.target.ip().to_string())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .await;
        return status.is_ok_and(|s| s.success());
    }
    let (dir, ns, target, kind) = (
        dir.to_owned(),
        probe.namespace.clone(),
        probe.target,
        probe.kind.clone(),
    );
    tokio::task::spawn_blocking(move || {
        netns::run_in(&dir, &ns, move || Ok(socket_probe(&kind, target, timeout))).unwrap_or(false)
    })
    .await
    .unwrap_or(false)
}

/// A TCP, UDP or HTTP probe, run inside the member's network.
fn socket_probe(kind: &ProbeKind, target: SocketAddrV4, timeout: Duration) -> bool {
    let addr = SocketAddr::V4(target);
    match kind {
        ProbeKind::Tcp => TcpStream::connect_timeout(&addr, timeout).is_ok(),
        ProbeKind::Http { path, expected } => {
            let Ok(mut stream) = TcpStream::connect_timeout(&addr, timeout) else {
                return false;
            };
            let _ = stream.set_read_timeout(Some(timeout));
            let _ = stream.set_write_timeout(Some(timeout));
            let request = format!(
                "GET {path} HTTP/1.0\r\nHost: {}\r\nUser-Agent: isthmus-health\r\n\r\n",
                target.ip()
            );
            if stream.write_all(request.as_bytes()).is_err() {
                return false;
            }
            let mut head = [0u8; 64];
            let n = stream.read(&mut head).unwrap_or(0);
            let line = String::from_utf8_lossy(&head[..n]);
            line.split_whitespace()
                .nth(1)
                .and_then(|c| c.parse::<u16>().ok())
                .is_some_and(|code| expects(expected, code))
        }
        ProbeKind::UdpConnect => {
            let Ok(socket) = UdpSocket::bind("0.0.0.0:0") else {
                return false;
            };
            if socket.connect(addr).is_err() || socket.send(b"isthmus-health").is_err() {
                return false;
            }
            let _ = socket.set_read_timeout(Some(timeout));
            let mut buf = [0u8; 512];
            // An ICMP port unreachable fails the probe; an answer or silence passes it.
            !matches!(socket.recv(&mut buf), Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused)
        }
        ProbeKind::Ping => false,
    }
}
