#!/usr/bin/env python3
"""Keystone auth against noauth, side by side: two release controllers on one machine (one
`--auth keystone` against a real Keystone from .venv-keystone, one noauth), the shared Neutron
harness creating ports at concurrency 8 against each in turn, then the latency of the first
request with a fresh token (the validation round trip to Keystone) against a request whose
token is cached. Run by bench/auth.sh (which builds the binary first)."""

import argparse
import json
import os
import pathlib
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = pathlib.Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv-keystone"
BIN = ROOT / "target/release/isthmus"


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def http(method, url, body=None, headers=None):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method)
    req.add_header("Content-Type", "application/json")
    for k, v in (headers or {}).items():
        req.add_header(k, v)
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            raw = r.read()
            return r.status, dict(r.headers), json.loads(raw) if raw else None
    except urllib.error.HTTPError as e:
        raw = e.read()
        return e.code, dict(e.headers), raw.decode(errors="replace")


def wait(url):
    for _ in range(600):
        try:
            urllib.request.urlopen(url, timeout=1)
            return
        except urllib.error.HTTPError:
            return
        except OSError:
            time.sleep(0.1)
    sys.exit(f"{url} did not come up")


class Keystone:
    def __init__(self, work):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/v3"
        conf = work / "keystone.conf"
        conf.write_text(
            f"[DEFAULT]\nuse_stderr = false\nlog_file = {work}/keystone.log\n"
            f"[database]\nconnection = sqlite:///{work}/keystone.db\n"
            "[token]\nprovider = fernet\n"
            f"[fernet_tokens]\nkey_repository = {work}/fernet-keys\n"
            f"[fernet_receipts]\nkey_repository = {work}/fernet-receipts\n"
            f"[credential]\nkey_repository = {work}/credential-keys\n"
            # Cheap password hashing: the benchmark issues hundreds of tokens.
            "[identity]\npassword_hash_rounds = 4\n"
        )
        manage = [str(VENV / "bin/keystone-manage"), "--config-file", str(conf)]
        subprocess.run(manage + ["db_sync"], check=True, capture_output=True)
        for step in ("fernet_setup", "credential_setup"):
            subprocess.run(manage + [step, "--keystone-user", "root", "--keystone-group", "root"],
                           check=True, capture_output=True)
        subprocess.run(manage + ["bootstrap", "--bootstrap-password", "admin-secret",
                                 "--bootstrap-public-url", self.url,
                                 "--bootstrap-region-id", "RegionOne"],
                       check=True, capture_output=True)
        env = dict(os.environ, OS_KEYSTONE_CONFIG_FILES=str(conf))
        self.proc = subprocess.Popen(
            [str(VENV / "bin/uwsgi"), "--http-socket", f"127.0.0.1:{self.port}",
             "--module", "keystone.wsgi.api:application", "--master", "--no-orphans",
             "--die-on-term", "--add-header", "Connection: close", "--processes", "2",
             "--threads", "4", "--virtualenv", str(VENV)],
            env=env, stdout=subprocess.DEVNULL, stderr=open(work / "uwsgi.log", "w"))
        wait(self.url)
        self.admin = self.token("admin", "admin-secret", "admin")

    def token(self, user, password, project):
        body = {"auth": {"identity": {"methods": ["password"], "password": {"user": {
            "name": user, "domain": {"id": "default"}, "password": password}}},
            "scope": {"project": {"name": project, "domain": {"id": "default"}}}}}
        status, headers, answer = http("POST", f"{self.url}/auth/tokens", body)
        assert status == 201, answer
        return {k.lower(): v for k, v in headers.items()}["x-subject-token"]

    def call(self, method, path, body=None):
        return http(method, f"{self.url}{path}", body, {"X-Auth-Token": self.admin})

    def user(self, name, project, role):
        status, _, v = self.call("POST", "/projects", {"project": {"name": project, "domain_id": "default"}})
        if status == 409:
            project_id = self.call("GET", f"/projects?name={project}")[2]["projects"][0]["id"]
        else:
            project_id = v["project"]["id"]
        user_id = self.call("POST", "/users", {"user": {"name": name, "domain_id": "default",
                                                       "password": f"{name}-secret"}})[2]["user"]["id"]
        status, _, v = self.call("POST", "/roles", {"role": {"name": role}})
        role_id = v["role"]["id"] if status == 201 else self.call("GET", f"/roles?name={role}")[2]["roles"][0]["id"]
        self.call("PUT", f"/projects/{project_id}/users/{user_id}/roles/{role_id}")
        return project_id

    def stop(self):
        self.proc.terminate()
        self.proc.wait()


def controller(work, name, extra):
    port = free_port()
    data = work / name
    data.mkdir()
    proc = subprocess.Popen([str(BIN), "controller", "--listen", f"127.0.0.1:{port}",
                             "--data-dir", str(data)] + extra,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    wait(f"{url}/healthz")
    return proc, url


def percentile(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--ports", type=int, default=2000)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--fresh-tokens", type=int, default=200)
    p.add_argument("--harness", default=str(ROOT.parent / "shared/bench/neutron_api_bench.py"))
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = pathlib.Path(tmp)
        ks = Keystone(work)
        ks.user("isthmus", "service", "service")
        project = ks.user("bencher", "bench", "admin")
        (work / "isthmus.pw").write_text("isthmus-secret\n")
        keystone_ctl, keystone_url = controller(work, "keystone", [
            "--auth", "keystone", "--keystone-url", ks.url, "--keystone-user", "isthmus",
            "--keystone-password-file", str(work / "isthmus.pw")])
        noauth_ctl, noauth_url = controller(work, "noauth", [])
        try:
            token = ks.token("bencher", "bencher-secret", "bench")
            setups = {
                "keystone": (keystone_url, [f"X-Auth-Token: {token}"]),
                "noauth": (noauth_url, [f"X-Project-Id: {project}", "X-Roles: admin"]),
            }
            for name, (url, headers) in setups.items():
                h = dict(x.split(": ", 1) for x in headers)
                http("PUT", f"{url}/v2.0/quotas/{project}",
                     {"quota": {"network": 1000000, "subnet": 1000000, "port": 1000000}}, h)
            rates = {name: [] for name in setups}
            p99 = {name: [] for name in setups}
            for r in range(args.repeat):
                for name, (url, headers) in setups.items():
                    out = work / f"{name}-{r}.json"
                    cmd = [sys.executable, args.harness, "--endpoint", url, "--ports", str(args.ports),
                           "--concurrency", "8", "--json", str(out), "--label", name]
                    for hdr in headers:
                        cmd += ["--header", hdr]
                    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
                    result = json.loads(out.read_text())
                    create = result["runs"][0]["levels"][0]["create"]
                    assert create["errors"] == 0, result["errors"][:3]
                    rates[name].append(round(create["rate_per_s"]))
                    p99[name].append(create["p99_ms"])
            ks_rate = statistics.median(rates["keystone"])
            na_rate = statistics.median(rates["noauth"])
            print(f"port create c=8, {args.ports} ports x {args.repeat} runs (medians):")
            print(f"  noauth:   {na_rate:8.0f} ports/s  p99 {statistics.median(p99['noauth']):.1f} ms  runs {rates['noauth']}")
            print(f"  keystone: {ks_rate:8.0f} ports/s  p99 {statistics.median(p99['keystone']):.1f} ms  runs {rates['keystone']}")
            print(f"  ratio keystone/noauth: {ks_rate / na_rate:.2f} (target >= 0.8)")

            first, cached = [], []
            for _ in range(args.fresh_tokens):
                fresh = ks.token("bencher", "bencher-secret", "bench")
                for bucket in (first, cached):
                    t = time.perf_counter()
                    status, _, _ = http("GET", f"{keystone_url}/v2.0/networks?limit=1",
                                        headers={"X-Auth-Token": fresh})
                    bucket.append((time.perf_counter() - t) * 1000)
                    assert status == 200, status
            t0 = []
            for _ in range(args.fresh_tokens):
                t = time.perf_counter()
                http("GET", f"{noauth_url}/v2.0/networks?limit=1",
                     headers={"X-Project-Id": project, "X-Roles": "admin"})
                t0.append((time.perf_counter() - t) * 1000)
            print(f"GET /v2.0/networks?limit=1, {args.fresh_tokens} requests each (ms, p50 / p99):")
            print(f"  first request with a new token (validated with Keystone): "
                  f"{percentile(first, 0.5):.1f} / {percentile(first, 0.99):.1f}")
            print(f"  same token again (cached):                                "
                  f"{percentile(cached, 0.5):.1f} / {percentile(cached, 0.99):.1f}")
            print(f"  noauth:                                                   "
                  f"{percentile(t0, 0.5):.1f} / {percentile(t0, 0.99):.1f}")
        finally:
            for proc in (keystone_ctl, noauth_ctl):
                proc.terminate()
                proc.wait()
            ks.stop()


if __name__ == "__main__":
    main()
