//! Socket options the `nix` crate does not define, declared through its own
//! `sockopt_impl!` so they are set with `nix::sys::socket::setsockopt` like the rest.

use nix::{setsockopt_impl, sockopt_impl};

sockopt_impl!(
    /// `SO_ATTACH_FILTER`: a classic BPF program deciding which frames reach the socket.
    AttachFilter,
    SetOnly,
    libc::SOL_SOCKET,
    libc::SO_ATTACH_FILTER,
    libc::sock_fprog
);

sockopt_impl!(
    /// `PACKET_IGNORE_OUTGOING` (Linux 4.20): frames the node sends are not copied to a
    /// packet socket.
    PacketIgnoreOutgoing,
    SetOnly,
    libc::SOL_PACKET,
    libc::PACKET_IGNORE_OUTGOING,
    bool
);

sockopt_impl!(
    /// `ICMP6_FILTER` (linux/icmpv6.h): one bit per ICMPv6 type, a set bit blocks it.
    Icmp6Filter,
    SetOnly,
    libc::IPPROTO_ICMPV6,
    ICMP6_FILTER,
    [u32; 8]
);

sockopt_impl!(
    /// `IPV6_MULTICAST_LOOP`: whether the socket's own multicast comes back to it.
    Ipv6MulticastLoop,
    SetOnly,
    libc::IPPROTO_IPV6,
    libc::IPV6_MULTICAST_LOOP,
    bool
);

sockopt_impl!(
    /// `IPV6_MULTICAST_IF`: the interface (by index) multicast leaves through.
    Ipv6MulticastIf,
    SetOnly,
    libc::IPPROTO_IPV6,
    libc::IPV6_MULTICAST_IF,
    libc::c_int
);

/// `ICMP6_FILTER`'s number, which the libc crate does not carry.
const ICMP6_FILTER: libc::c_int = 1;
