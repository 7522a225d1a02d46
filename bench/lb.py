#!/usr/bin/env python3
"""Load-balancer benchmark driver, run by `cargo bench -p isthmus --bench load_balancer` inside
the lab it builds (spec as JSON on stdin; results as JSON on stdout). One process, one clock:
API calls go over one keep-alive HTTP connection made in the fabric namespace, probes over
sockets made in the client VMs' namespaces (setns per socket).

1. create -> first connection: load balancer + listener + pool + 3 members through the API,
   then the client VM on node 1 connects until the VIP answers (20 samples).
2. one member added with N load balancers of 3 members present (N = 10, then 1,000): from the
   member's 201 until a client VM on every node has had a connection answered by it.
3. VM -> VIP -> member against VM -> member directly: iperf3 (1 stream) and new TCP
   connections per second, rounds A B B A.
"""

import http.client
import json
import statistics
import subprocess
import sys
import time

from labnet import enter, greet, summary

spec = json.load(sys.stdin)
enter(spec["fabric"])
host, port = spec["controller"].split(":")
api_conn = http.client.HTTPConnection(host, int(port), timeout=30)
api_conn.connect()


def api(method, path, body=None):
    data = json.dumps(body).encode() if body is not None else None
    api_conn.request(method, path, body=data, headers={"Content-Type": "application/json"})
    r = api_conn.getresponse()
    raw = r.read()
    if r.status >= 300:
        raise RuntimeError(f"{method} {path}: {r.status} {raw[:300]!r}")
    return json.loads(raw) if raw else None


def load_balancer(members, subnet, port=80, member_port=8080):
    lb = api("POST", "/v2/lbaas/loadbalancers",
             {"loadbalancer": {"vip_subnet_id": subnet, "project_id": "bench"}})["loadbalancer"]
    listener = api("POST", "/v2/lbaas/listeners", {"listener": {
        "loadbalancer_id": lb["id"], "protocol": "TCP", "protocol_port": port}})["listener"]
    pool = api("POST", "/v2/lbaas/pools", {"pool": {
        "listener_id": listener["id"], "protocol": "TCP", "lb_algorithm": "ROUND_ROBIN"}})["pool"]
    for m in members:
        api("POST", f"/v2/lbaas/pools/{pool['id']}/members",
            {"member": {"address": m, "protocol_port": member_port}})
    return lb, pool


out = {}
clients, members, subnet = spec["clients"], spec["members"], spec["subnet"]
# Thousands of short connections per second from one client would otherwise run out of ports
# in TIME_WAIT (direct and through the VIP alike).
for c in clients:
    subprocess.run(["ip", "netns", "exec", c, "sysctl", "-qw", "net.ipv4.tcp_tw_reuse=1"],
                   check=True)

# 1. create -> first connection.
first, after_api = [], []
for _ in range(spec["samples"]):
    t0 = time.monotonic()
    lb, _ = load_balancer(members, subnet)
    t_api = time.monotonic()
    # A SYN that meets no rule yet is dropped, not refused: short attempts keep the
    # resolution at a few milliseconds.
    while greet(clients[0], lb["vip_address"], 80, 0.005) is None:
        pass
    t1 = time.monotonic()
    first.append(t1 - t0)
    after_api.append(t1 - t_api)
    api("DELETE", f"/v2/lbaas/loadbalancers/{lb['id']}?cascade=true")
out["create_to_first_connection"] = summary(first)
out["last_201_to_first_connection"] = summary(after_api)
print("create -> first connection", out["create_to_first_connection"], file=sys.stderr, flush=True)


# 2. one member added at N load balancers.
def member_add(samples):
    lb, pool = present[0]
    vip = lb["vip_address"]
    times = []
    for _ in range(samples):
        t0 = time.monotonic()
        m = api("POST", f"/v2/lbaas/pools/{pool['id']}/members",
                {"member": {"address": spec["spare"], "protocol_port": 8080}})["member"]
        t_201 = time.monotonic()
        seen = set()
        while len(seen) < len(clients):
            for c in clients:
                if c not in seen and greet(c, vip, 80, 0.2) == "spare":
                    seen.add(c)
        times.append(time.monotonic() - t_201)
        api("DELETE", f"/v2/lbaas/pools/{pool['id']}/members/{m['id']}")
        # Gone everywhere before the next sample (every node has 3 members again).
        while any(greet(c, vip, 80, 0.2) == "spare" for c in clients for _ in range(4)):
            time.sleep(0.005)
        del t0
    return times


present = []
for scale in spec["scales"]:
    t = time.monotonic()
    while len(present) < scale:
        present.append(load_balancer(members, subnet))
    print(f"{scale} load balancers present ({time.monotonic() - t:.1f} s to create)",
          file=sys.stderr, flush=True)
    # Every node has applied them all: the last one answers everywhere.
    for c in clients:
        while greet(c, present[-1][0]["vip_address"], 80) is None:
            time.sleep(0.01)
    out[f"member_add_at_{scale}"] = summary(member_add(spec["samples"]))
    print(f"member add at {scale}", out[f"member_add_at_{scale}"], file=sys.stderr, flush=True)

# 3. throughput and connection rate, VIP vs direct.
direct_ip = spec["iperf_server"]
lb, _ = load_balancer([direct_ip], subnet, port=5201, member_port=5201)
lb8080, _ = load_balancer([direct_ip], subnet, port=8080, member_port=8080)
while greet(clients[0], lb8080["vip_address"], 8080) is None:
    time.sleep(0.01)


def iperf(target):
    r = subprocess.run(["ip", "netns", "exec", clients[0], "iperf3", "-c", target, "-t",
                        str(spec["seconds"]), "-J"], capture_output=True, text=True, check=True)
    return json.loads(r.stdout)["end"]["sum_received"]["bits_per_second"] / 1e9


def rate(target):
    end, n = time.monotonic() + spec["seconds"], 0
    while time.monotonic() < end:
        if greet(clients[0], target, 8080, 1.0) is not None:
            n += 1
    return n / spec["seconds"]


through = {"direct": [], "vip": []}
conns = {"direct": [], "vip": []}
for _ in range(spec["rounds"]):
    for which in ["direct", "vip", "vip", "direct"]:
        through[which].append(iperf(direct_ip if which == "direct" else lb["vip_address"]))
        conns[which].append(rate(direct_ip if which == "direct" else lb8080["vip_address"]))
out["iperf_gbps"] = {k: round(statistics.median(v), 3) for k, v in through.items()}
out["iperf_ratio_vip_over_direct"] = round(
    statistics.median(through["vip"]) / statistics.median(through["direct"]), 3)
out["connections_per_s"] = {k: round(statistics.median(v), 1) for k, v in conns.items()}
out["connections_ratio_vip_over_direct"] = round(
    statistics.median(conns["vip"]) / statistics.median(conns["direct"]), 3)
print(json.dumps(out, indent=2))
