//! Router advertisements (see [`isthmus_dataplane::ra`]): one task per advertising `qr-`
//! interface, in its router namespace, sending the advertisement when it starts, every
//! [`INTERVAL`], and in answer to router solicitations. Restarted when what it advertises
//! changes, stopped when the interface goes.

use std::collections::BTreeMap;
use std::io;
use std::net::{Ipv6Addr, SocketAddrV6};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use isthmus_dataplane::ra::{message, Advertisement};
use tokio::task::AbortHandle;

use crate::sockopt::set;

/// Time between unsolicited advertisements (radvd's MaxRtrAdvInterval as Neutron sets it is
/// 100 s; solicitations are answered at once).
pub const INTERVAL: Duration = Duration::from_secs(30);
/// `ICMP6_FILTER` (linux/icmpv6.h), not in the libc crate.
const ICMP6_FILTER: libc::c_int = 1;
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
    let name = std::ffi::CString::new(device)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "device name"))?;
    // SAFETY: a NUL-terminated name.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if index == 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: plain socket(2); the descriptor is owned right away.
    let fd = unsafe {
        libc::socket(
            libc::AF_INET6,
            libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            libc::IPPROTO_ICMPV6,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by socket(2) and is owned by nothing else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let hops: libc::c_int = 255;
    set(&fd, libc::IPPROTO_IPV6, libc::IPV6_MULTICAST_HOPS, &hops)?;
    set(&fd, libc::IPPROTO_IPV6, libc::IPV6_UNICAST_HOPS, &hops)?;
    set(
        &fd,
        libc::IPPROTO_IPV6,
        libc::IPV6_MULTICAST_LOOP,
        &0 as &libc::c_int,
    )?;
    let index_int = index as libc::c_int;
    set(&fd, libc::IPPROTO_IPV6, libc::IPV6_MULTICAST_IF, &index_int)?;
    // Pass router solicitations only (a set bit blocks its type).
    let mut filter = [u32::MAX; 8];
    filter[(ROUTER_SOLICITATION >> 5) as usize] &= !(1 << (ROUTER_SOLICITATION & 31));
    set(&fd, libc::IPPROTO_ICMPV6, ICMP6_FILTER, &filter)?;
    // SAFETY: a NUL-terminated name of at most IFNAMSIZ bytes.
    let bound = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_BINDTODEVICE,
            name.as_ptr().cast(),
            name.as_bytes().len() as libc::socklen_t,
        )
    };
    if bound != 0 {
        return Err(io::Error::last_os_error());
    }
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
