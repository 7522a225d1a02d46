//! The node's DHCP server, v4 and v6 (see [`isthmus_dataplane::dhcp`] and
//! [`isthmus_dataplane::dhcp6`]): one packet socket sees every DHCP request entering the
//! node's interfaces before any bridge does; a request that came in through the tap of a port
//! this node serves is answered out of that same tap, from the network's DHCP port. Requests
//! from anywhere else (a tunnel, a port bound elsewhere) are not this node's to answer.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;

use isthmus_dataplane::dhcp::{answer, reply_frame, request_payload};
use isthmus_dataplane::dhcp6;
use nix::net::if_::if_indextoname;
use nix::sys::socket::{
    recvfrom, sendto, setsockopt, socket, sockopt, AddressFamily, LinkAddr, MsgFlags, SockFlag,
    SockProtocol, SockType,
};
use tokio::io::unix::AsyncFd;
use tokio::sync::watch;

use crate::sockopt::{AttachFilter, PacketIgnoreOutgoing};

pub use isthmus_dataplane::plan::DhcpTables;

/// The leases, replaced whole at each reconcile.
pub type Leases = watch::Sender<Arc<DhcpTables>>;

/// Receive buffer of the packet socket (bytes; each request takes a few KiB of it).
const RECEIVE_BUFFER: usize = 8 << 20;
/// `PACKET_OUTGOING` in `sll_pkttype`.
const PACKET_OUTGOING: u8 = 4;

/// Classic BPF for `(ip and udp dst port 67) or (ip6 and udp dst port 547)` (IPv6 without
/// extension headers, as DHCPv6 clients send it): the kernel passes nothing else up, so the
/// socket costs one short filter per frame. Jumps count instructions after the current one.
const FILTER: [libc::sock_filter; 16] = [
    op(0x28, 0, 0, 12),          // 0: ldh [12] (EtherType)
    op(0x15, 0, 7, 0x0800),      // 1: IPv4? else 9
    op(0x30, 0, 0, 23),          // 2: ldb [23] (protocol)
    op(0x15, 0, 11, 17),         // 3: UDP? else drop
    op(0x28, 0, 0, 20),          // 4: ldh [20] (fragment offset)
    op(0x45, 9, 0, 0x1fff),      // 5: a later fragment: drop
    op(0xb1, 0, 0, 14),          // 6: x = IPv4 header length
    op(0x48, 0, 0, 16),          // 7: ldh [x + 16] (UDP destination port)
    op(0x15, 5, 6, 67),          // 8: port 67: accept, else drop
    op(0x15, 0, 5, 0x86dd),      // 9: IPv6? else drop
    op(0x30, 0, 0, 20),          // 10: ldb [20] (next header)
    op(0x15, 0, 3, 17),          // 11: UDP? else drop
    op(0x28, 0, 0, 56),          // 12: ldh [56] (UDP destination port)
    op(0x15, 0, 1, 547),         // 13: port 547? else drop
    op(0x06, 0, 0, 0x0004_0000), // 14: accept
    op(0x06, 0, 0, 0),           // 15: drop
];

const fn op(code: u16, jt: u8, jf: u8, k: u32) -> libc::sock_filter {
    libc::sock_filter { code, jt, jf, k }
}

/// A packet socket for every protocol (`ETH_P_ALL`): it sees frames before the bridge takes
/// them, which a socket for IPv4 only would not on bridge ports.
fn packet_socket() -> io::Result<OwnedFd> {
    let fd = socket(
        AddressFamily::Packet,
        SockType::Raw,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        SockProtocol::EthAll,
    )?;
    let program = libc::sock_fprog {
        len: FILTER.len() as u16,
        filter: FILTER.as_ptr().cast_mut(),
    };
    setsockopt(&fd, AttachFilter, &program)?;
    // A node's guests all asking at once (a host reboot) must not overflow the default
    // buffer: room for thousands of requests (root may exceed rmem_max). Best effort.
    if setsockopt(&fd, sockopt::RcvBufForce, &RECEIVE_BUFFER).is_err() {
        let _ = setsockopt(&fd, sockopt::RcvBuf, &RECEIVE_BUFFER);
    }
    // Best effort: without it (kernels before 4.20) outgoing copies are skipped below.
    let _ = setsockopt(&fd, PacketIgnoreOutgoing, &true);
    Ok(fd)
}

/// One received frame and where it came from (the interface, and whether it was outgoing).
fn receive(fd: &OwnedFd, buf: &mut [u8]) -> io::Result<(usize, LinkAddr)> {
    match recvfrom::<LinkAddr>(fd.as_raw_fd(), buf)? {
        (n, Some(from)) => Ok((n, from)),
        (_, None) => Err(io::Error::other("a frame without a link address")),
    }
}
/// Serves DHCP until the process ends.
pub async fn serve(leases: watch::Receiver<Arc<DhcpTables>>) -> io::Result<()> {
    // SAFETY: the descriptor is owned by the OwnedFd the AsyncFd holds, never replaced or
    // closed while registered.
    let fd = unsafe { AsyncFd::register(packet_socket()?) }.map_err(io::Error::from)?;
    let mut buf = vec![0u8; 2048];
    loop {
        let mut ready = fd.readable().await?;
        let (n, from) = match ready.try_io(|fd| receive(fd.get_ref(), &mut buf)) {
            Ok(Ok(got)) => got,
            Ok(Err(e)) => {
                tracing::warn!("DHCP receive: {e}");
                continue;
            }
            Err(_would_block) => continue,
        };
        if from.pkttype() == PACKET_OUTGOING {
            continue;
        }
        let frame = &buf[..n];
        let Some(tap) = u32::try_from(from.ifindex())
            .ok()
            .and_then(|index| if_indextoname(index).ok())
        else {
            continue;
        };
        let tap = tap.to_string_lossy();
        let tables = leases.borrow().clone();
        let reply = if let Some(payload) = request_payload(frame) {
            let Some(lease) = tables.v4.get(tap.as_ref()) else {
                continue;
            };
            match answer(lease, payload) {
                Ok(reply) => Some(reply_frame(lease, &reply)),
                Err(e) => {
                    tracing::warn!("DHCP request on {tap} not answered: {e}");
                    None
                }
            }
        } else if let Some((client, payload)) = dhcp6::request_payload(frame) {
            let Some(lease) = tables.v6.get(tap.as_ref()) else {
                continue;
            };
            dhcp6::answer(lease, payload).map(|message| dhcp6::reply_frame(lease, client, &message))
        } else {
            None
        };
        // Out of the tap it came in on (a raw packet socket sends the frame as built; of the
        // address only the interface and the protocol, the request's own, are used).
        if let Some(out) = reply {
            if let Err(e) = sendto(fd.get_ref().as_raw_fd(), &out, &from, MsgFlags::empty()) {
                tracing::warn!("DHCP reply to {tap}: {e}");
            }
        }
    }
}
