"""What the lab benchmark drivers share (bench/lb.py, bench/k8s.py): entering a lab
namespace for the next socket, a connection attempt answered by a member's greeting, and
percentile summaries."""

import ctypes
import os
import socket
import statistics

CLONE_NEWNET = 0x40000000
libc = ctypes.CDLL("libc.so.6", use_errno=True)
_fds = {}


def enter(ns):
    fd = _fds.get(ns)
    if fd is None:
        fd = _fds[ns] = os.open(f"/run/netns/{ns}", os.O_RDONLY)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        raise OSError(ctypes.get_errno(), "setns")


def greet(ns, addr, port, timeout=0.2):
    """The name a server greets a new connection with, or None."""
    enter(ns)
    s = socket.socket()
    s.settimeout(timeout)
    try:
        s.connect((addr, port))
        return s.makefile().readline().strip() or None
    except OSError:
        return None
    finally:
        s.close()


def pct(values, p):
    s = sorted(values)
    return s[min(len(s) - 1, round((len(s) - 1) * p))]


def summary(values):
    return {"p50_ms": round(statistics.median(values) * 1e3, 2),
            "p99_ms": round(pct(values, 0.99) * 1e3, 2),
            "max_ms": round(max(values) * 1e3, 2), "n": len(values)}
