#!/usr/bin/env python3
"""Kubernetes Services benchmark driver, run by `cargo bench -p isthmus --bench kubernetes`
inside the lab it builds (spec as JSON on stdin; results as JSON on stdout). One process, one
clock: Kubernetes objects go to the API server double over one keep-alive connection, Octavia
calls to the controller over another, probes over sockets made in the client VMs' namespaces.

1. Service created -> first connection through its ClusterIP from a VM (Service + EndpointSlice
   written to the API server; the controller's watcher turns them into a load balancer), side
   by side with the same load balancer created through the Octavia API (rounds A B B A).
2. An endpoint added to a Service's EndpointSlice -> the first connection through the
   ClusterIP that it answers, from a VM on every node.
3. With N Services present (each with 3 endpoints): one more added -> answered through its
   ClusterIP by a client VM on every node; controller and agent RSS at N.
"""

import http.client
import json
import sys
import time

from labnet import enter, greet, summary

spec = json.load(sys.stdin)


def connection(addr):
    enter(spec["fabric"])
    host, port = addr.split(":")
    c = http.client.HTTPConnection(host, int(port), timeout=60)
    c.connect()
    return c


neutron = connection(spec["controller"])
kube = connection(spec["apiserver"])


def call(conn, method, path, body=None, content="application/json"):
    data = json.dumps(body).encode() if body is not None else None
    try:
        conn.request(method, path, body=data, headers={"Content-Type": content})
        r = conn.getresponse()
    except (http.client.RemoteDisconnected, ConnectionError):
        # A keep-alive connection left idle (while probes ran) may have been closed by the
        # server: reads are asked again on a new one.
        if method != "GET":
            raise
        conn.close()
        enter(spec["fabric"])
        conn.connect()
        conn.request(method, path, body=data, headers={"Content-Type": content})
        r = conn.getresponse()
    raw = r.read()
    if r.status >= 300:
        raise RuntimeError(f"{method} {path}: {r.status} {raw[:300]!r}")
    return json.loads(raw) if raw else None


def vip(i):
    return f"10.96.{i // 200}.{i % 200 + 10}"


NS = "/api/v1/namespaces/bench"


def endpoints(members):
    return [{"addresses": [m], "conditions": {"ready": True}} for m in members]


def create_service(i):
    name = f"svc-{i}"
    call(kube, "POST", f"{NS}/services", {
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": "bench"},
        "spec": {"type": "ClusterIP", "clusterIP": vip(i), "clusterIPs": [vip(i)],
                 "ports": [{"name": "http", "protocol": "TCP", "port": 80, "targetPort": 8080}]}})
    call(kube, "POST", "/apis/discovery.k8s.io/v1/namespaces/bench/endpointslices", {
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": f"{name}-abcde", "namespace": "bench",
                     "labels": {"kubernetes.io/service-name": name}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "protocol": "TCP", "port": 8080}],
        "endpoints": endpoints(spec["members"])})


def delete_service(i):
    call(kube, "DELETE", f"{NS}/services/svc-{i}")
    call(kube, "DELETE", f"/apis/discovery.k8s.io/v1/namespaces/bench/endpointslices/svc-{i}-abcde")


def octavia_lb(i):
    lb = call(neutron, "POST", "/v2/lbaas/loadbalancers", {"loadbalancer": {
        "vip_subnet_id": spec["service_subnet"], "vip_address": vip(i),
        "project_id": spec["project"]}})["loadbalancer"]
    listener = call(neutron, "POST", "/v2/lbaas/listeners", {"listener": {
        "loadbalancer_id": lb["id"], "protocol": "TCP", "protocol_port": 80}})["listener"]
    pool = call(neutron, "POST", "/v2/lbaas/pools", {"pool": {
        "listener_id": listener["id"], "protocol": "TCP", "lb_algorithm": "ROUND_ROBIN"}})["pool"]
    for m in spec["members"]:
        call(neutron, "POST", f"/v2/lbaas/pools/{pool['id']}/members",
             {"member": {"address": m, "protocol_port": 8080}})
    return lb["id"]


def rss_mb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    return None


def wait_answered(clients, address, step=0.005, give_up=120):
    t = time.monotonic()
    pending = set(clients)
    while pending:
        for c in list(pending):
            if greet(c, address, 80, step) is not None:
                pending.discard(c)
        if time.monotonic() - t > give_up:
            raise RuntimeError(f"{address} not answered on {pending} after {give_up} s")
    return time.monotonic()


out = {}
clients = spec["clients"]
call(kube, "POST", "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace",
                                          "metadata": {"name": "bench"}})
next_vip = 0

# 1. created -> first connection, the watcher against the Octavia API, A B B A.
first = {"service": [], "octavia_api": []}
for _ in range(spec["samples"] // 2):
    for which in ["service", "octavia_api", "octavia_api", "service"]:
        i, next_vip = next_vip, next_vip + 1
        t0 = time.monotonic()
        lb = create_service(i) if which == "service" else octavia_lb(i)
        t1 = wait_answered(clients[:1], vip(i))
        first[which].append(t1 - t0)
        if which == "service":
            delete_service(i)
        else:
            call(neutron, "DELETE", f"/v2/lbaas/loadbalancers/{lb}?cascade=true")
out["created_to_first_connection"] = {k: summary(v) for k, v in first.items()}
print("created -> first connection", out["created_to_first_connection"], file=sys.stderr,
      flush=True)

# 2. an endpoint added -> answered through the ClusterIP on every node.
i, next_vip = next_vip, next_vip + 1
create_service(i)
wait_answered(clients, vip(i))
slice_path = f"/apis/discovery.k8s.io/v1/namespaces/bench/endpointslices/svc-{i}-abcde"
times = []
for _ in range(spec["samples"]):
    t0 = time.monotonic()
    call(kube, "PATCH", slice_path, {"endpoints": endpoints(spec["members"] + [spec["spare"]])},
         content="application/merge-patch+json")
    seen = set()
    while len(seen) < len(clients):
        for c in clients:
            if c not in seen and greet(c, vip(i), 80, 0.2) == "spare":
                seen.add(c)
    times.append(time.monotonic() - t0)
    call(kube, "PATCH", slice_path, {"endpoints": endpoints(spec["members"])},
         content="application/merge-patch+json")
    # Gone everywhere before the next sample.
    while any(greet(c, vip(i), 80, 0.2) == "spare" for c in clients for _ in range(4)):
        time.sleep(0.005)
out["endpoint_added_to_answered_on_every_node"] = summary(times)
print("endpoint added", out["endpoint_added_to_answered_on_every_node"], file=sys.stderr,
      flush=True)
delete_service(i)

# 3. one Service added with N present, applied on every node.
present = []
for scale in spec["scales"]:
    t = time.monotonic()
    while len(present) < scale:
        i, next_vip = next_vip, next_vip + 1
        create_service(i)
        present.append(i)
    # Every load balancer made and applied (the watcher takes marked Services in no
    # particular order): all of them answer on node 1, the last ten on every node.
    while len(call(neutron, "GET", "/v2/lbaas/loadbalancers?fields=id")["loadbalancers"]) < scale:
        time.sleep(0.2)
    for i in present:
        wait_answered(clients[:1], vip(i), step=0.05, give_up=1800)
    for i in present[-10:]:
        wait_answered(clients, vip(i), step=0.05, give_up=1800)
    made = time.monotonic() - t
    print(f"{scale} Services present ({made:.1f} s to create and apply)", file=sys.stderr,
          flush=True)
    times = []
    for _ in range(spec["samples"]):
        i, next_vip = next_vip, next_vip + 1
        t0 = time.monotonic()
        create_service(i)
        times.append(wait_answered(clients, vip(i)) - t0)
        delete_service(i)
        # One change measured at a time: the deletion is in the store and applied (its
        # nft transaction waits for the kernel's RCU grace period) before the next add.
        while len(call(neutron, "GET", "/v2/lbaas/loadbalancers?fields=id")["loadbalancers"]) > scale:
            time.sleep(0.01)
        time.sleep(0.3)
    out[f"service_add_at_{scale}"] = summary(times)
    out[f"rss_mb_at_{scale}"] = {"controller": rss_mb(spec["controller_pid"]),
                                 "agents": [rss_mb(p) for p in spec["agent_pids"]]}
    out[f"seconds_to_create_{scale}"] = round(made, 1)
    print(f"service add at {scale}", out[f"service_add_at_{scale}"],
          out[f"rss_mb_at_{scale}"], file=sys.stderr, flush=True)
print(json.dumps(out, indent=2))
