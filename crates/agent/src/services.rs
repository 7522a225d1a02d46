//! What the agent runs inside the node's DHCP namespaces (`qdhcp-<network>`): started when a
//! namespace appears, stopped when it goes. For now a sink for DHCP requests sent to the DHCP
//! port's address (renewals): the agent answers them from the tap they came in on, and the
//! namespace must not answer them with an ICMP port unreachable.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::Mutex;

use isthmus_dataplane::dhcp::{NAMESPACE_PREFIX, SERVER_PORT};
use isthmus_dataplane::router::RouterState;
use tokio::task::AbortHandle;

/// The tasks serving each DHCP namespace.
#[derive(Default)]
pub struct Services {
    running: Mutex<BTreeMap<String, Vec<AbortHandle>>>,
}

impl Services {
    /// Starts what is missing in the DHCP namespaces of `namespaces` and stops what runs in
    /// namespaces no longer there. A namespace whose sockets cannot be made yet is tried
    /// again at the next pass.
    pub fn follow(&self, dir: &Path, namespaces: &RouterState, node: &str) {
        let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        running.retain(|name, tasks| {
            let keep = namespaces.contains_key(name);
            if !keep {
                tasks.iter().for_each(AbortHandle::abort);
            }
            keep
        });
        for name in namespaces
            .keys()
            .filter(|n| n.starts_with(NAMESPACE_PREFIX))
        {
            if running.contains_key(name) {
                continue;
            }
            match start(dir, name) {
                Ok(tasks) => {
                    running.insert(name.clone(), tasks);
                }
                Err(e) => eprintln!("isthmus agent: {node}: services of {name} not started: {e}"),
            }
        }
    }
}

fn start(dir: &Path, name: &str) -> Result<Vec<AbortHandle>, crate::AgentError> {
    let sink = crate::netns::run_in(dir, name, || {
        let socket =
            std::net::UdpSocket::bind(SocketAddr::from((Ipv4Addr::UNSPECIFIED, SERVER_PORT)))?;
        socket.set_nonblocking(true)?;
        Ok(socket)
    })?;
    let sink = tokio::net::UdpSocket::from_std(sink)?;
    let drain = tokio::spawn(async move {
        let mut buf = [0u8; 1500];
        while sink.recv(&mut buf).await.is_ok() {}
    });
    Ok(vec![drain.abort_handle()])
}
