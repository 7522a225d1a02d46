#!/usr/bin/env python3
"""Prints Neutron's default policy as `name<TAB>check string` rows: the table
`crates/model/src/policy/neutron.tsv` is this script's output for the pinned commit.

Usage: tools/neutron-policy.py NEUTRON_CHECKOUT > crates/model/src/policy/neutron.tsv
Needs `neutron-lib` and `oslo.policy` importable (pip install neutron-lib).
"""
import pathlib
import shutil
import subprocess
import sys
import tempfile

checkout = pathlib.Path(sys.argv[1])
commit = subprocess.run(["git", "-C", str(checkout), "rev-parse", "HEAD"], check=True,
                        capture_output=True, text=True).stdout.strip()
version = subprocess.run(["git", "-C", str(checkout), "describe", "--tags"], check=True,
                         capture_output=True, text=True).stdout.strip()
with tempfile.TemporaryDirectory() as tmp:
    # Only the policy modules: importing the whole of neutron would need its dependencies.
    package = pathlib.Path(tmp, "neutron", "conf")
    shutil.copytree(checkout / "neutron" / "conf" / "policies", package / "policies")
    for init in (pathlib.Path(tmp, "neutron"), package):
        (init / "__init__.py").touch()
    sys.path.insert(0, tmp)
    from neutron.conf import policies

    rules = {rule.name: rule.check_str for rule in policies.list_rules()}
print(f"# Neutron's default policy (name<TAB>check string), pinned to neutron {version}")
print(f"# (openstack/neutron {commit}), generated from neutron/conf/policies/ by")
print("# tools/neutron-policy.py; do not edit by hand.")
for name, check in rules.items():
    print(f"{name}\t{check}")
