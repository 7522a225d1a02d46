//! Socket options on raw descriptors (packet and raw ICMPv6 sockets, which the standard
//! library does not make).

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};

/// Sets option `name` at `level` to `value` (setsockopt(2)).
pub(crate) fn set<T>(
    fd: &OwnedFd,
    level: libc::c_int,
    name: libc::c_int,
    value: &T,
) -> io::Result<()> {
    // SAFETY: setsockopt(2) reads `size_of::<T>()` bytes from a live value.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (value as *const T).cast(),
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}
