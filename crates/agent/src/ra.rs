//! Router advertisements (see [`isthmus_dataplane::ra`]): one task per advertising `qr-`
//! interface, in its router namespace, sending the advertisement when it starts, every
//! [`INTERVAL`], and in answer to router solicitations. Restarted when what it advertises
//! changes, stopped when the interface goes.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io;
use std::net::{Ipv6Addr, SocketAddrV6};
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use isthmus_dataplane::ra::{message, Advertisement};
use nix::net::if_::if_nametoindex;
use nix::sys::socket::{setsockopt, sockopt, AddressFamily, SockFlag, SockProtocol, SockType};
use tokio::task::AbortHandle;

use crate::sockopt::{Icmp6Filter, Ipv6MulticastIf, Ipv6MulticastLoop};

/// Time between unsolicited advertisements (radvd's MaxRtrAdvInterval as Neutron sets it is
/// 100 s; solicitations are answered at once).
pub const INTERVAL: Duration = Duration::from_secs(30);
/// Router Solicitation.
const ROUTER_SOLICITATION: u32 = 133;

/// The running advertisers, by (namespace, interface).
#[derive(Default)]
pub struct Advertisers {
    running: Mutex<BTreeMap<(String, String), (Advertisement, AbortHandle)>>,
}

impl Advertisers {
    /// Runs exactly `wanted`.
    pub fn follow(&self, dir: &Path, wanted: Vec<Advertisement>) {
        let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        let wanted: BTreeMap<(String, String), Advertisement> = wanted
            .into_iter()
            .map(|a| ((a.namespace.clone(), a.device.clone()), a))
            .collect();
        running.retain(|key, (adv, task)| {
            let keep = wanted.get(key) == Some(adv);
            if !keep {
                task.abort();
            }
            keep
        });
        for (key, adv) in wanted {
            if running.contains_key(&key) {
                continue;
            }
            match start(dir, &adv) {
                Ok(task) => {
                    running.insert(key, (adv, task));
                }
                Err(e) => tracing::warn!(
                    "router advertisements on {} in {}: {e}",
                    adv.device,
                    adv.namespace
                ),
            }
        }
    }
}

/// A raw ICMPv6 socket on `device` (made inside the router namespace): hop limit 255 as
/// neighbour discovery requires, solicitations only.
fn socket(device: &str) -> io::Result<(std::net::UdpSocket, u32)> {
    let index = if_nametoindex(device)?;
    let fd = nix::sys::socket::socket(
        AddressFamily::Inet6,
        SockType::Raw,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        SockProtocol::IcmpV6,
    )?;
    setsockopt(&fd, sockopt::Ipv6MulticastHops, &255)?;
    setsockopt(&fd, sockopt::Ipv6Ttl, &255)?;
    setsockopt(&fd, Ipv6MulticastLoop, &false)?;
    let index_int = libc::c_int::try_from(index)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "interface index"))?;
    setsockopt(&fd, Ipv6MulticastIf, &index_int)?;
    // Pass router solicitations only (a set bit blocks its type).
    let mut filter = [u32::MAX; 8];
    filter[(ROUTER_SOLICITATION >> 5) as usize] &= !(1 << (ROUTER_SOLICITATION & 31));
    setsockopt(&fd, Icmp6Filter, &filter)?;
    setsockopt(&fd, sockopt::BindToDevice, &OsString::from(device))?;
    let socket = std::net::UdpSocket::from(fd);
    // All routers (ff02::2) hear solicitations.
    socket.join_multicast_v6(&Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 2), index)?;
    Ok((socket, index))
}

fn start(dir: &Path, adv: &Advertisement) -> Result<AbortHandle, crate::AgentError> {
    let device = adv.device.clone();
    let (socket, index) = crate::netns::run_in(dir, &adv.namespace, move || socket(&device))?;
    let socket = tokio::net::UdpSocket::from_std(socket)?;
    let packet = message(adv);
    let all_nodes = SocketAddrV6::new(Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1), 0, 0, index);
    let task = tokio::spawn(async move {
        let mut buf = [0u8; 1500];
        loop {
            if let Err(e) = socket.send_to(&packet, all_nodes).await {
                tracing::warn!("router advertisement: {e}");
            }
            // Until the next period, or a solicitation.
            let _ = tokio::time::timeout(INTERVAL, socket.recv_from(&mut buf)).await;
        }
    });
    Ok(task.abort_handle())
}
