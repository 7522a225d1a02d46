//! The node-local DNS server of one DHCP namespace (see [`isthmus_dataplane::dns`]): names of
//! the namespace's network answered from the view, the rest forwarded to the upstream servers
//! from the agent's own namespace (the DHCP namespace has no way out).

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use isthmus_dataplane::dns::{answer, Answer, Names};
use tokio::net::UdpSocket;
use tokio::sync::watch;

/// Names by network.
pub type NameTable = BTreeMap<String, Arc<Names>>;

/// How long an upstream server gets before the next is asked.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(2);

/// Serves `network`'s names on `socket` until aborted (several tasks may serve one socket:
/// each takes the next query).
pub async fn serve(
    socket: Arc<UdpSocket>,
    network: String,
    names: watch::Receiver<Arc<NameTable>>,
    upstream: Arc<Vec<SocketAddr>>,
) {
    let mut buf = vec![0u8; 4096];
    loop {
        let Ok((n, client)) = socket.recv_from(&mut buf).await else {
            continue;
        };
        let table = names.borrow().clone();
        let empty = Names::default();
        let scope = table.get(&network).map(Arc::as_ref).unwrap_or(&empty);
        match answer(scope, &buf[..n]) {
            Answer::Local(bytes) => {
                let _ = socket.send_to(&bytes, client).await;
            }
            Answer::Forward => {
                let query = buf[..n].to_vec();
                let (socket, upstream) = (socket.clone(), upstream.clone());
                tokio::spawn(async move {
                    if let Some(reply) = forward(&query, &upstream).await {
                        let _ = socket.send_to(&reply, client).await;
                    }
                });
            }
            Answer::Drop => {}
        }
    }
}

/// Asks the upstream servers in turn; the first answer wins.
async fn forward(query: &[u8], upstream: &[SocketAddr]) -> Option<Vec<u8>> {
    for server in upstream {
        let bind = if server.is_ipv4() {
            SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0))
        } else {
            SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, 0))
        };
        let Ok(socket) = UdpSocket::bind(bind).await else {
            continue;
        };
        if socket.connect(server).await.is_err() || socket.send(query).await.is_err() {
            continue;
        }
        let mut buf = vec![0u8; 4096];
        // Only the answer to this query (same id) counts.
        let wait = async {
            loop {
                let n = socket.recv(&mut buf).await.ok()?;
                if n >= 2 && buf[..2] == query[..2] {
                    return Some(buf[..n].to_vec());
                }
            }
        };
        if let Ok(Some(reply)) = tokio::time::timeout(UPSTREAM_TIMEOUT, wait).await {
            return Some(reply);
        }
    }
    None
}

/// The name servers of a resolv.conf's content.
pub fn resolv_conf_servers(text: &str) -> Vec<SocketAddr> {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|s| s.trim().parse::<std::net::IpAddr>().ok())
        .map(|ip| SocketAddr::new(ip, 53))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_resolv_conf() {
        let servers = resolv_conf_servers(
            "# x\nsearch a\nnameserver 10.0.0.53\nnameserver  2001:db8::1\nnameserver bogus\n",
        );
        assert_eq!(
            servers,
            [
                "10.0.0.53:53".parse().unwrap(),
                "[2001:db8::1]:53".parse().unwrap()
            ]
        );
    }
}
