#!/usr/bin/env python3
"""DHCP and DNS side by side: Isthmus's agent against Debian's dnsmasq (as Neutron's DHCP agent
runs it: a hosts file, a static range, a SIGHUP per change) and unbound, on one machine, in one
run. Run by bench/dhcp-dns.sh (root), which builds the release binaries.

Topology: namespace bd-host runs a controller and an agent (node "bench"); N ports on one /16
with DHCP are bound to it, each a veth whose `tap<port[:11]>` end the agent plugs and whose
other end sits in namespace bd-cl with the port's MAC. For dnsmasq the same N MACs get a second
set of veths on a plain bridge `brdm` in bd-host, with dnsmasq (or unbound, for DNS) in
namespace bd-srv on that bridge at the DHCP port's address: client -> veth -> bridge -> veth ->
server on both sides.

Measured: DISCOVER->ACK latency (sequential, rounds interleaved), leases/s (all clients at
once), a port's address change -> the new address leased (API update vs hosts file + SIGHUP),
DNS QPS and latency with dnsperf (Isthmus vs dnsmasq vs unbound, the same N names), port
create -> name resolvable, and a QEMU guest's boot -> lease (TCG).
"""

import argparse
import ctypes
import json
import os
import random
import select
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request

HOST, CL, SRV, QI = "bd-host", "bd-cl", "bd-srv", "bd-qi"
API = "http://10.253.0.1:9696"
CIDR_BASE = "10.240"
SERVER = "10.240.0.2"
CLONE_NEWNET = 0x40000000
libc = ctypes.CDLL("libc.so.6", use_errno=True)


def sh(*args, check=True, **kw):
    return subprocess.run(args, check=check, capture_output=True, text=True, **kw).stdout


def ip(ns, *args):
    return sh("ip", "-n", ns, *args)


class InNetns:
    """Runs the block in a network namespace (sockets made there stay there)."""

    def __init__(self, name):
        self.name = name

    def __enter__(self):
        self.back = os.open("/proc/self/ns/net", os.O_RDONLY)
        fd = os.open(f"/run/netns/{self.name}", os.O_RDONLY)
        if libc.setns(fd, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), "setns")
        os.close(fd)

    def __exit__(self, *exc):
        libc.setns(self.back, CLONE_NEWNET)
        os.close(self.back)


def api(method, path, body=None):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(API + path, data=data, method=method,
                                 headers={"Content-Type": "application/json",
                                          "X-Project-Id": "bench", "X-Roles": "admin"})
    with urllib.request.urlopen(req, timeout=60) as r:
        text = r.read()
        return json.loads(text) if text else None


def until(seconds, done):
    """Polls `done` every 0.1 s for up to `seconds`."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not done():
        time.sleep(0.1)


def pct(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


# --- a raw DHCP client -------------------------------------------------------------------

def mac_bytes(mac):
    return bytes(int(b, 16) for b in mac.split(":"))


def dhcp_message(kind, mac, xid, requested=None, server=None):
    msg = struct.pack("!BBBBIHH4s4s4s4s16s64s128s", 1, 1, 6, 0, xid, 0, 0, b"\0" * 4, b"\0" * 4,
                      b"\0" * 4, b"\0" * 4, mac_bytes(mac) + b"\0" * 10, b"", b"")
    msg += b"\x63\x82\x53\x63" + bytes([53, 1, kind])
    if requested:
        msg += bytes([50, 4]) + socket.inet_aton(requested)
    if server:
        msg += bytes([54, 4]) + socket.inet_aton(server)
    return msg + bytes([55, 4, 1, 3, 6, 26, 255])


def checksum(data):
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def frame(mac, payload):
    udp_len = 8 + len(payload)
    iph = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + udp_len, 0, 0, 64, 17, 0,
                      b"\0\0\0\0", b"\xff\xff\xff\xff")
    iph = iph[:10] + struct.pack("!H", checksum(iph)) + iph[12:]
    udp = struct.pack("!HHHH", 68, 67, udp_len, 0)
    return b"\xff" * 6 + mac_bytes(mac) + b"\x08\x00" + iph + udp + payload


def parse_reply(data, xid):
    """(message type, yiaddr, server id) of a DHCP reply frame for `xid`, else None."""
    if len(data) < 14 + 20 + 8 + 240 or data[12:14] != b"\x08\x00" or data[23] != 17:
        return None
    ihl = (data[14] & 0x0F) * 4
    udp = 14 + ihl
    if struct.unpack("!H", data[udp + 2:udp + 4])[0] != 68:
        return None
    msg = data[udp + 8:]
    if msg[0] != 2 or struct.unpack("!I", msg[4:8])[0] != xid:
        return None
    yiaddr = socket.inet_ntoa(msg[16:20])
    opts, i, kind, server = msg[240:], 0, None, None
    while i < len(opts) and opts[i] != 255:
        if opts[i] == 0:
            i += 1
            continue
        code, length = opts[i], opts[i + 1]
        value = opts[i + 2:i + 2 + length]
        if code == 53:
            kind = value[0]
        elif code == 54:
            server = socket.inet_ntoa(value)
        i += 2 + length
    return kind, yiaddr, server


class Client:
    """One client interface in bd-cl: a packet socket bound to it."""

    def __init__(self, ifname, mac):
        self.ifname, self.mac = ifname, mac
        with InNetns(CL):
            self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0800))
            self.sock.bind((ifname, 0))
        self.sock.setblocking(False)

    def drain(self):
        try:
            while self.sock.recv(2048):
                pass
        except BlockingIOError:
            pass

    def exchange(self, timeout=2.0):
        """DISCOVER -> OFFER -> REQUEST -> ACK; returns (seconds, leased address) or None."""
        self.drain()
        xid = random.getrandbits(32)
        start = time.perf_counter()
        deadline = start + timeout
        self.sock.send(frame(self.mac, dhcp_message(1, self.mac, xid)))
        state, offered = "offer", None
        while time.perf_counter() < deadline:
            r, _, _ = select.select([self.sock], [], [], max(0, deadline - time.perf_counter()))
            if not r:
                break
            got = parse_reply(self.sock.recv(2048), xid)
            if not got:
                continue
            kind, yiaddr, server = got
            if state == "offer" and kind == 2:
                offered = yiaddr
                self.sock.send(frame(self.mac, dhcp_message(3, self.mac, xid, yiaddr, server)))
                state = "ack"
            elif state == "ack" and kind == 5:
                return time.perf_counter() - start, yiaddr
            elif kind == 6:
                return None
        return None


def send(client, data):
    """Sends a frame, waiting while the kernel's queues are full (ENOBUFS), as a client
    retransmitting would."""
    for _ in range(1000):
        try:
            client.sock.send(data)
            return
        except OSError as e:
            if e.errno != 105:
                raise
            time.sleep(0.001)


def burst(clients, timeout=20.0):
    """Every client at once; returns (leases, seconds)."""
    for c in clients:
        c.drain()
    xids = {c: random.getrandbits(32) for c in clients}
    state = {c: "offer" for c in clients}
    by_fd = {c.sock.fileno(): c for c in clients}
    start = time.perf_counter()
    for c in clients:
        send(c, frame(c.mac, dhcp_message(1, c.mac, xids[c])))
    done = 0
    poller = select.epoll()
    for c in clients:
        poller.register(c.sock.fileno(), select.EPOLLIN)
    last_try = {c: start for c in clients}
    while done < len(clients) and time.perf_counter() - start < timeout:
        # A client whose exchange went nowhere for a second starts over, as real ones do.
        now = time.perf_counter()
        for c in clients:
            if state[c] != "done" and now - last_try[c] > 1.0:
                state[c], last_try[c] = "offer", now
                send(c, frame(c.mac, dhcp_message(1, c.mac, xids[c])))
        for fd, _ in poller.poll(0.1):
            c = by_fd[fd]
            while True:
                try:
                    data = c.sock.recv(2048)
                except BlockingIOError:
                    break
                got = parse_reply(data, xids[c])
                if not got:
                    continue
                kind, yiaddr, server = got
                if state[c] == "offer" and kind == 2:
                    send(c, frame(c.mac, dhcp_message(3, c.mac, xids[c], yiaddr, server)))
                    state[c], last_try[c] = "ack", time.perf_counter()
                elif state[c] == "ack" and kind == 5:
                    state[c] = "done"
                    done += 1
    elapsed = time.perf_counter() - start
    poller.close()
    return done, elapsed


# --- DNS ----------------------------------------------------------------------------------

def dns_query(name, qid):
    q = b"".join(bytes([len(p)]) + p.encode() for p in name.rstrip(".").split(".")) + b"\0"
    return struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0) + q + struct.pack("!HH", 1, 1)


def resolves(sock, name, server):
    qid = random.getrandbits(16)
    sock.sendto(dns_query(name, qid), (server, 53))
    r, _, _ = select.select([sock], [], [], 0.2)
    if not r:
        return False
    data = sock.recv(1500)
    return struct.unpack("!H", data[:2])[0] == qid and struct.unpack("!H", data[6:8])[0] > 0


def dnsperf(ns, server, queries, seconds):
    out = sh("ip", "netns", "exec", ns, "dnsperf", "-s", server, "-d", queries, "-l",
             str(seconds), "-c", "8", "-q", "200")
    qps = float(out.split("Queries per second:")[1].split()[0])
    latency_ms = float(out.split("Average Latency (s):")[1].split()[0]) * 1000
    lost = out.split("Queries lost:")[1].split()[0]
    return qps, latency_ms, lost


# --- setup --------------------------------------------------------------------------------

def teardown():
    for ns in (HOST, CL, SRV, QI):
        pids = sh("ip", "netns", "pids", ns, check=False).split()
        for pid in pids:
            subprocess.run(["kill", pid], check=False)
    time.sleep(0.3)
    for ns in (HOST, CL, SRV, QI):
        subprocess.run(["ip", "netns", "del", ns], check=False, capture_output=True)
    subprocess.run(["ip", "link", "del", "bd-under"], check=False, capture_output=True)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("-n", "--ports", type=int, default=500)
    parser.add_argument("-r", "--rounds", type=int, default=3)
    parser.add_argument("--bin", default="target/release/isthmus")
    parser.add_argument("--guest-image", default="")
    parser.add_argument("--boots", type=int, default=5)
    parser.add_argument("--dns-seconds", type=int, default=10)
    args = parser.parse_args()
    teardown()
    work = tempfile.mkdtemp(prefix="isthmus-dhcp-bench.")
    results = {"ports": args.ports, "rounds": args.rounds}
    procs = []
    try:
        for ns in (HOST, CL, SRV, QI):
            sh("ip", "netns", "add", ns)
            ip(ns, "link", "set", "lo", "up")
        sh("ip", "link", "add", "bd-under", "type", "veth", "peer", "name", "under", "netns", HOST)
        sh("ip", "addr", "add", "10.253.0.254/24", "dev", "bd-under")
        sh("ip", "link", "set", "bd-under", "up")
        ip(HOST, "addr", "add", "10.253.0.1/24", "dev", "under")
        ip(HOST, "link", "set", "under", "up")
        log = open(f"{work}/host.log", "w")
        procs.append(subprocess.Popen(["ip", "netns", "exec", HOST, args.bin, "controller",
                                       "--listen", "10.253.0.1:9696", "--auth", "noauth",
                                       "--data-dir", f"{work}/data"], stdout=log, stderr=log))
        for _ in range(200):
            try:
                api("GET", "/healthz")
                break
            except Exception:
                time.sleep(0.05)
        # Quotas stay enforced; the bench's project may hold this many ports.
        api("PUT", "/v2.0/quotas/bench", {"quota": {"port": 100000}})
        net = api("POST", "/v2.0/networks", {"network": {"name": "bench"}})["network"]["id"]
        sub = api("POST", "/v2.0/subnets", {"subnet": {
            "network_id": net, "ip_version": 4, "cidr": f"{CIDR_BASE}.0.0/16"}})["subnet"]["id"]
        procs.append(subprocess.Popen(["ip", "netns", "exec", HOST, args.bin, "agent", "--node",
                                       "bench", "--tunnel-ip", "10.253.0.1", "--controller",
                                       "http://10.253.0.1:9696", "--state-dir", f"{work}/agent",
                                       "--cni-socket", f"{work}/cni.sock", "--netns-dir",
                                       f"{work}/netns", "--own-br-netfilter"],
                                      stdout=log, stderr=log))
        ports = []
        for start in range(0, args.ports, 250):
            items = [{"network_id": net, "binding:host_id": "bench", "device_owner": "compute:nova",
                      "dns_name": f"vm-{i}", "device_id": f"bench-{i}"}
                     for i in range(start, min(args.ports, start + 250))]
            ports += api("POST", "/v2.0/ports", {"ports": items})["ports"]
        assert ports[0]["fixed_ips"][0]["ip_address"] == f"{CIDR_BASE}.0.3", ports[0]
        # Port 0's client is the DNS asker, in a namespace of its own with its address.
        batch = []
        for i, p in enumerate(ports):
            tap = "tap" + p["id"][:11]
            peer_ns = QI if i == 0 else CL
            batch.append(f"link add {tap} type veth peer name c{i} netns {peer_ns}")
            batch.append(f"link add d{i} type veth peer name e{i} netns {CL if i else QI}")
        batch += ["link add brdm type bridge", "link set brdm up",
                  f"link add dmh type veth peer name dm0 netns {SRV}", "link set dmh master brdm",
                  "link set dmh up"]
        for i in range(len(ports)):
            batch += [f"link set d{i} master brdm", f"link set d{i} up"]
        subprocess.run(["ip", "-n", HOST, "-batch", "-"], input="\n".join(batch), text=True,
                       check=True)
        for ns, first, count in ((CL, 1, len(ports) - 1), (QI, 0, 1)):
            lines = []
            for i in range(first, first + count):
                mac = ports[i]["mac_address"]
                lines += [f"link set c{i} address {mac}", f"link set c{i} up",
                          f"link set e{i} address {mac}", f"link set e{i} up"]
            subprocess.run(["ip", "-n", ns, "-batch", "-"], input="\n".join(lines), text=True,
                           check=True)
        ip(SRV, "addr", "add", f"{SERVER}/16", "dev", "dm0")
        ip(SRV, "link", "set", "dm0", "up")
        # Wait until the agent has plugged every tap.
        until(60, lambda: all(p["status"] == "ACTIVE" for p in api(
            "GET", f"/v2.0/ports?network_id={net}&fields=status&device_owner=compute:nova")["ports"]))
        hosts = f"{work}/dnsmasq.hosts"
        with open(hosts, "w") as f:
            for p in ports:
                f.write(f"{p['mac_address']},{p['dns_assignment'][0]['hostname']},{p['fixed_ips'][0]['ip_address']}\n")
        dnsmasq = subprocess.Popen(["ip", "netns", "exec", SRV, "dnsmasq", "--no-daemon", "--user=root",
                                    "--no-hosts", "--no-resolv", "--port=0", "--interface=dm0",
                                    "--bind-interfaces", "--leasefile-ro", "--dhcp-authoritative",
                                    f"--dhcp-hostsfile={hosts}",
                                    f"--dhcp-range=set:s,{CIDR_BASE}.0.0,static,255.255.0.0,86400s",
                                    "--dhcp-option-force=option:mtu,1450"],
                                   stdout=log, stderr=log)
        procs.append(dnsmasq)
        time.sleep(0.5)
        isthmus = [Client(f"c{i}", p["mac_address"]) for i, p in enumerate(ports) if i]
        reference = [Client(f"e{i}", p["mac_address"]) for i, p in enumerate(ports) if i]

        # DISCOVER -> ACK, sequential, rounds interleaved.
        lat = {"isthmus": [], "dnsmasq": []}
        rate = {"isthmus": [], "dnsmasq": []}
        for r in range(args.rounds):
            for name, clients in (("isthmus", isthmus), ("dnsmasq", reference)):
                for c in clients:
                    got = c.exchange()
                    if got:
                        lat[name].append(got[0] * 1000)
                done, secs = burst(clients)
                rate[name].append(done / secs)
                print(f"round {r} {name}: {len(clients)} leases p50 "
                      f"{statistics.median(lat[name]):.2f} ms, burst {done} in {secs:.2f} s",
                      flush=True)
        for name in lat:
            results[f"dhcp_{name}"] = {
                "answered": len(lat[name]), "asked": args.rounds * len(isthmus),
                "p50_ms": round(pct(lat[name], 50), 3), "p99_ms": round(pct(lat[name], 99), 3),
                "leases_per_s": round(statistics.median(rate[name]), 1)}

        # A port's address changes: how long until the new one is leased.
        change = {"isthmus": [], "dnsmasq": []}
        # `ip netns exec` execs dnsmasq in place: the child's pid is dnsmasq's.
        pid = dnsmasq.pid
        for k in range(10):
            i = 1 + k
            new = f"{CIDR_BASE}.200.{10 + k}"
            t0 = time.perf_counter()
            api("PUT", f"/v2.0/ports/{ports[i]['id']}",
                {"port": {"fixed_ips": [{"subnet_id": sub, "ip_address": new}]}})
            while time.perf_counter() - t0 < 10:
                got = isthmus[i - 1].exchange(timeout=0.2)
                if got and got[1] == new:
                    change["isthmus"].append((time.perf_counter() - t0) * 1000)
                    break
            t0 = time.perf_counter()
            text = open(hosts).read().replace(
                f",{ports[i]['fixed_ips'][0]['ip_address']}\n", f",{new}\n")
            with open(hosts + ".new", "w") as f:
                f.write(text)
            os.replace(hosts + ".new", hosts)
            os.kill(pid, 1)
            while time.perf_counter() - t0 < 10:
                got = reference[i - 1].exchange(timeout=0.2)
                if got and got[1] == new:
                    change["dnsmasq"].append((time.perf_counter() - t0) * 1000)
                    break
        for name, values in change.items():
            results[f"change_{name}"] = {"n": len(values), "p50_ms": round(pct(values, 50), 2),
                                         "max_ms": round(max(values), 2),
                                         "how": "API update" if name == "isthmus" else "hosts file + SIGHUP"}
        dnsmasq.terminate()
        dnsmasq.wait()
        # The DHCP reference's address is the DHCP port's: gone before the DNS part, which
        # reaches bd-srv over the Isthmus network too.
        ip(SRV, "addr", "del", f"{SERVER}/16", "dev", "dm0")

        # DNS: the asker (port 0, port security on) queries its node's DNS on the DHCP port's
        # address; dnsmasq and unbound answer the same names on a port of the same network
        # without port security (as the DHCP port is), so all three are reached on one path:
        # the asker's security groups, the network's bridge.
        ip(QI, "addr", "add", f"{ports[0]['fixed_ips'][0]['ip_address']}/16", "dev", "c0")
        ref_ip = f"{CIDR_BASE}.250.250"
        ref = api("POST", "/v2.0/ports", {"port": {
            "network_id": net, "binding:host_id": "bench", "port_security_enabled": False,
            "fixed_ips": [{"subnet_id": sub, "ip_address": ref_ip}]}})["port"]
        ip(HOST, "link", "add", "tap" + ref["id"][:11], "type", "veth", "peer", "name", "srv0",
           "netns", SRV)
        ip(SRV, "link", "set", "srv0", "address", ref["mac_address"])
        ip(SRV, "addr", "add", f"{ref_ip}/16", "dev", "srv0")
        ip(SRV, "link", "set", "srv0", "up")
        until(10, lambda: api("GET", f"/v2.0/ports/{ref['id']}")["port"]["status"] == "ACTIVE")
        queries = f"{work}/queries"
        with open(queries, "w") as f:
            for p in ports:
                f.write(f"{p['dns_assignment'][0]['fqdn']} A\n")
        addn = f"{work}/addn-hosts"
        with open(addn, "w") as f:
            for p in ports:
                f.write(f"{p['fixed_ips'][0]['ip_address']} {p['dns_assignment'][0]['fqdn'].rstrip('.')}\n")
        dns = {}
        for r in range(args.rounds):
            dns.setdefault("isthmus", []).append(dnsperf(QI, SERVER, queries, args.dns_seconds))
            d = subprocess.Popen(["ip", "netns", "exec", SRV, "dnsmasq", "--no-daemon", "--user=root",
                                  "--no-hosts", "--no-resolv", f"--listen-address={ref_ip}",
                                  "--bind-interfaces", f"--addn-hosts={addn}", "--local-ttl=0",
                                  "--cache-size=10000"], stdout=log, stderr=log)
            time.sleep(0.5)
            dns.setdefault("dnsmasq", []).append(dnsperf(QI, ref_ip, queries, args.dns_seconds))
            d.terminate()
            d.wait()
            conf = f"{work}/unbound.conf"
            with open(conf, "w") as f:
                f.write(f"server:\n  interface: {ref_ip}\n  access-control: 0.0.0.0/0 allow\n"
                        "  username: \"\"\n  chroot: \"\"\n  do-daemonize: no\n  use-syslog: no\n"
                        f"  pidfile: \"{work}/unbound.pid\"\n  local-zone: \"openstack.local.\" static\n")
                for p in ports:
                    f.write(f"  local-data: \"{p['dns_assignment'][0]['fqdn']} 0 IN A {p['fixed_ips'][0]['ip_address']}\"\n")
            u = subprocess.Popen(["ip", "netns", "exec", SRV, "unbound", "-d", "-c", conf],
                                 stdout=log, stderr=log)
            time.sleep(1.0)
            dns.setdefault("unbound", []).append(dnsperf(QI, ref_ip, queries, args.dns_seconds))
            u.terminate()
            u.wait()
            print(f"round {r} DNS: " + ", ".join(f"{k} {v[-1][0]:.0f} qps" for k, v in dns.items()), flush=True)
        for name, runs in dns.items():
            results[f"dns_{name}"] = {"qps": round(statistics.median(q for q, _, _ in runs)),
                                      "latency_ms": round(statistics.median(l for _, l, _ in runs), 3),
                                      "lost": [lost for _, _, lost in runs]}

        # Port create -> its name resolvable on the node.
        with InNetns(QI):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        visible = []
        for k in range(100):
            name = f"fresh-{k}"
            t0 = time.perf_counter()
            api("POST", "/v2.0/ports", {"port": {"network_id": net, "dns_name": name,
                                                  "binding:host_id": "bench"}})
            while time.perf_counter() - t0 < 5:
                if resolves(sock, f"{name}.openstack.local", SERVER):
                    visible.append((time.perf_counter() - t0) * 1000)
                    break
        results["create_to_resolvable"] = {"n": len(visible), "p50_ms": round(pct(visible, 50), 2),
                                           "p99_ms": round(pct(visible, 99), 2)}

        # Guest boot -> lease (TCG).
        if args.guest_image:
            boots = []
            for b in range(args.boots):
                p = api("POST", "/v2.0/ports", {"port": {"network_id": net, "binding:host_id": "bench",
                                                          "device_owner": "compute:nova"}})["port"]
                tap = "tap" + p["id"][:11]
                ip(HOST, "tuntap", "add", "dev", tap, "mode", "tap")
                bdir = tempfile.mkdtemp(dir=work)
                with open(f"{bdir}/test.sh", "w") as f:
                    f.write("#!/bin/sh\nip link set eth0 up\nudhcpc -i eth0 -n -q -t 60 -T 1\n")
                os.chmod(f"{bdir}/test.sh", 0o755)
                sh("sh", "-c", f"cd {bdir} && echo test.sh | cpio -o -H newc --quiet > extra.cpio")
                base = open(f"{args.guest_image}/base.cpio.gz", "rb").read()
                base += b"\0" * (-len(base) % 4)
                with open(f"{bdir}/initrd", "wb") as f:
                    f.write(base + open(f"{bdir}/extra.cpio", "rb").read())
                console = f"{bdir}/console"
                open(console, "w").close()
                t0 = time.perf_counter()
                q = subprocess.Popen(["ip", "netns", "exec", HOST, "qemu-system-x86_64", "-accel", "tcg",
                                      "-m", "256", "-no-reboot", "-display", "none", "-monitor", "none",
                                      "-serial", f"file:{console}", "-kernel", f"{args.guest_image}/vmlinuz",
                                      "-initrd", f"{bdir}/initrd", "-append", "console=ttyS0 quiet panic=-1",
                                      "-netdev", f"tap,id=n0,ifname={tap},script=no,downscript=no",
                                      "-device", f"virtio-net-pci,netdev=n0,mac={p['mac_address']}"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                while time.perf_counter() - t0 < 120:
                    if "LEASE ip=" in open(console, errors="replace").read():
                        boots.append(time.perf_counter() - t0)
                        break
                    time.sleep(0.02)
                q.wait(timeout=120)
            results["guest_boot_to_lease_s"] = {"n": len(boots), "p50": round(pct(boots, 50), 2),
                                                "all": [round(b, 2) for b in boots]}
        print(json.dumps(results, indent=2))
        with open(f"bench/results/dhcp-dns-{time.strftime('%Y%m%d-%H%M%S')}.json", "w") as f:
            json.dump(results, f, indent=2)
    finally:
        for p in procs:
            p.terminate()
        teardown()


if __name__ == "__main__":
    main()
