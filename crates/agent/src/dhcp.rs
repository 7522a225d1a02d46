//! The node's DHCP server, v4 and v6 (see [`isthmus_dataplane::dhcp`] and
//! [`isthmus_dataplane::dhcp6`]): one packet socket sees every DHCP request entering the
//! node's interfaces before any bridge does; a request that came in through the tap of a port
//! this node serves is answered out of that same tap, from the network's DHCP port. Requests
//! from anywhere else (a tunnel, a port bound elsewhere) are not this node's to answer.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;

use isthmus_dataplane::dhcp::{answer, reply_frame, request_payload};
use isthmus_dataplane::dhcp6;
use tokio::io::unix::AsyncFd;
use tokio::sync::watch;

use crate::sockopt::set;

pub use isthmus_dataplane::plan::DhcpTables;

/// The leases, replaced whole at each reconcile.
pub type Leases = watch::Sender<Arc<DhcpTables>>;

/// `ETH_P_ALL` in network order: a socket for every protocol sees frames before the bridge
/// takes them (a socket for IPv4 only would not see frames on bridge ports).
const ETH_P_ALL: u16 = 0x0003;
/// `ETH_P_IP`.
const ETH_P_IP: u16 = 0x0800;
/// `ETH_P_IPV6`.
const ETH_P_IPV6: u16 = 0x86dd;
/// `PACKET_IGNORE_OUTGOING` (Linux 4.20): frames the node sends are not copied to the socket.
const PACKET_IGNORE_OUTGOING: libc::c_int = 23;
/// Receive buffer of the packet socket (bytes; each request takes a few KiB of it).
const RECEIVE_BUFFER: libc::c_int = 8 << 20;
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

fn packet_socket() -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2); the descriptor is owned right away.
    let fd = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            libc::c_int::from(ETH_P_ALL.to_be()),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by socket(2) and is owned by nothing else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let program = libc::sock_fprog {
        len: FILTER.len() as u16,
        filter: FILTER.as_ptr().cast_mut(),
    };
    set(&fd, libc::SOL_SOCKET, libc::SO_ATTACH_FILTER, &program)?;
    // A node's guests all asking at once (a host reboot) must not overflow the default
    // buffer: room for thousands of requests (root may exceed rmem_max). Best effort.
    let buffer: libc::c_int = RECEIVE_BUFFER;
    if set(&fd, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, &buffer).is_err() {
        let _ = set(&fd, libc::SOL_SOCKET, libc::SO_RCVBUF, &buffer);
    }
    // Best effort: without it (kernels before 4.20) outgoing copies are skipped below.
    let _ = set(
        &fd,
        libc::SOL_PACKET,
        PACKET_IGNORE_OUTGOING,
        &1 as &libc::c_int,
    );
    Ok(fd)
}

fn interface_name(index: i32) -> Option<String> {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    let index = u32::try_from(index).ok()?;
    // SAFETY: `buf` has IF_NAMESIZE bytes, as if_indextoname requires.
    let name = unsafe { libc::if_indextoname(index, buf.as_mut_ptr()) };
    if name.is_null() {
        return None;
    }
    // SAFETY: on success the buffer holds a NUL-terminated name.
    let name = unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) };
    Some(name.to_string_lossy().into_owned())
}

/// One received frame and the interface it came in on.
fn receive(fd: &OwnedFd, buf: &mut [u8]) -> io::Result<(usize, i32, u8)> {
    // SAFETY: a zeroed sockaddr_ll is valid; recvfrom(2) writes at most `len` bytes into it
    // and at most `buf.len()` into `buf`.
    unsafe {
        let mut from: libc::sockaddr_ll = std::mem::zeroed();
        let mut len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
        let n = libc::recvfrom(
            fd.as_raw_fd(),
            buf.as_mut_ptr().cast(),
            buf.len(),
            0,
            (&mut from as *mut libc::sockaddr_ll).cast(),
            &mut len,
        );
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok((n as usize, from.sll_ifindex, from.sll_pkttype))
    }
}

fn send(fd: &OwnedFd, index: i32, dst: [u8; 6], protocol: u16, frame: &[u8]) -> io::Result<()> {
    // SAFETY: a zeroed sockaddr_ll is valid; sendto(2) reads `frame` and the address.
    unsafe {
        let mut to: libc::sockaddr_ll = std::mem::zeroed();
        to.sll_family = libc::AF_PACKET as u16;
        to.sll_protocol = protocol.to_be();
        to.sll_ifindex = index;
        to.sll_halen = 6;
        to.sll_addr[..6].copy_from_slice(&dst);
        let n = libc::sendto(
            fd.as_raw_fd(),
            frame.as_ptr().cast(),
            frame.len(),
            0,
            (&to as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        );
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Serves DHCP until the process ends.
pub async fn serve(leases: watch::Receiver<Arc<DhcpTables>>) -> io::Result<()> {
    // SAFETY: the descriptor is owned by the OwnedFd the AsyncFd holds, never replaced or
    // closed while registered.
    let fd = unsafe { AsyncFd::register(packet_socket()?) }.map_err(io::Error::from)?;
    let mut buf = vec![0u8; 2048];
    loop {
        let mut ready = fd.readable().await?;
        let (n, index, kind) = match ready.try_io(|fd| receive(fd.get_ref(), &mut buf)) {
            Ok(Ok(got)) => got,
            Ok(Err(e)) => {
                tracing::warn!("DHCP receive: {e}");
                continue;
            }
            Err(_would_block) => continue,
        };
        if kind == PACKET_OUTGOING {
            continue;
        }
        let frame = &buf[..n];
        let Some(tap) = interface_name(index) else {
            continue;
        };
        let tables = leases.borrow().clone();
        let reply = if let Some(payload) = request_payload(frame) {
            let Some(lease) = tables.v4.get(&tap) else {
                continue;
            };
            match answer(lease, payload) {
                Ok(reply) => Some((reply_frame(lease, &reply), reply.dst_mac, ETH_P_IP)),
                Err(e) => {
                    tracing::warn!("DHCP request on {tap} not answered: {e}");
                    None
                }
            }
        } else if let Some((client, payload)) = dhcp6::request_payload(frame) {
            let Some(lease) = tables.v6.get(&tap) else {
                continue;
            };
            dhcp6::answer(lease, payload).map(|message| {
                (
                    dhcp6::reply_frame(lease, client, &message),
                    lease.mac,
                    ETH_P_IPV6,
                )
            })
        } else {
            None
        };
        if let Some((out, dst, protocol)) = reply {
            if let Err(e) = send(fd.get_ref(), index, dst, protocol, &out) {
                tracing::warn!("DHCP reply to {tap}: {e}");
            }
        }
    }
}
