#!/usr/bin/env python3
"""Creates many ports in one network through the Neutron API (bulk POSTs, 8 in flight) and
prints the network id. Traffic goes only to --endpoint."""
import argparse
import concurrent.futures
import json
import urllib.request

ap = argparse.ArgumentParser()
ap.add_argument("--endpoint", required=True)
ap.add_argument("--ports", type=int, required=True)
ap.add_argument("--network", help="add to this network instead of creating one")
args = ap.parse_args()
HEADERS = {"Content-Type": "application/json", "X-Project-Id": "bench", "X-Roles": "admin"}


def post(path, body):
    req = urllib.request.Request(args.endpoint + path, data=json.dumps(body).encode(),
                                 headers=HEADERS, method="POST")
    with urllib.request.urlopen(req) as resp:
        return json.load(resp)


net = args.network
if net is None:
    net = post("/v2.0/networks", {"network": {"name": "bench-big"}})["network"]["id"]
    post("/v2.0/subnets", {"subnet": {"network_id": net, "ip_version": 4, "cidr": "10.128.0.0/12"}})


def batch(i):
    post("/v2.0/ports", {"ports": [{"network_id": net, "name": f"p{i}-{j}", "device_owner": "compute:nova",
                                    "device_id": f"vm-{i}-{j}"} for j in range(100)]})


with concurrent.futures.ThreadPoolExecutor(8) as pool:
    list(pool.map(batch, range(args.ports // 100)))
print(net)
