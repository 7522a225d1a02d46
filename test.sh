#!/usr/bin/env bash
# Runs the whole Isthmus test suite. On a fresh Debian machine it first installs what the tests
# need (as root): etcd (store conformance, two controllers on one etcd), openssl (a throwaway
# CA and certificates for etcd over TLS), protoc (the etcd
# client's build), python3-venv + python-openstackclient and python-octaviaclient (the real Neutron and
# Octavia clients), iproute2 and
# iputils-ping, nftables, conntrack and curl (kernel tests in network namespaces, which need root), podman,
# runc and busybox-static (a real container runtime driving the CNI plugin), keepalived (VRRP
# moving a floating IP between VMs), python3-dev and gcc (uWSGI, which serves a real Keystone
# from PyPI to the authentication tests), qemu-system-x86 and cpio (real guests: Debian's kernel
# with a busybox initramfs, see tools/guest-image.sh), dnsmasq-base (an upstream DNS server) and
# isc-dhcp-client (dhclient -6, a real DHCPv6 client), clang and libbpf-dev (the agent's tc BPF
# programs for trunk subports, compiled by its build), containerd and containernetworking-plugins
# (its CRI plugin runs a pod sandbox through the CNI plugin as kubelet asks it, with the
# reference loopback plugin).
set -euo pipefail
cd "$(dirname "$0")"

packages=(etcd-server openssl protobuf-compiler python3-venv python3-dev gcc iproute2 iputils-ping nftables conntrack curl podman runc busybox-static keepalived cpio dnsmasq-base clang libbpf-dev containerd containernetworking-plugins)
# QEMU without its recommends (firmware for other architectures, GUI helpers); the guest's
# kernel is downloaded (not installed) from Debian by tools/guest-image.sh.
lean=(qemu-system-x86 isc-dhcp-client)
missing=()
for p in "${packages[@]}"; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
missing_lean=()
for p in "${lean[@]}"; do
    dpkg -s "$p" >/dev/null 2>&1 || missing_lean+=("$p")
done
if ((${#missing[@]} + ${#missing_lean[@]})); then
    if [ "$(id -u)" -eq 0 ]; then
        apt-get update -qq
        if ((${#missing[@]})); then
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
        fi
        if ((${#missing_lean[@]})); then
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing_lean[@]}"
        fi
    else
        echo "missing Debian packages: ${missing[*]} ${missing_lean[*]} (run as root, or: sudo apt-get install ${missing[*]} ${missing_lean[*]})" >&2
        exit 1
    fi
fi

if [ ! -x .venv/bin/openstack ] || [ ! -d .venv/lib/python3*/site-packages/octaviaclient ]; then
    python3 -m venv .venv
    .venv/bin/pip install --quiet --disable-pip-version-check python-openstackclient python-octaviaclient
fi
if [ ! -x .venv-keystone/bin/uwsgi ]; then
    python3 -m venv .venv-keystone
    .venv-keystone/bin/pip install --quiet --disable-pip-version-check keystone uwsgi
fi

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --quiet -- -D warnings
log=$(mktemp)
trap 'rm -f "$log"' EXIT
cargo test --workspace 2>&1 | tee "$log"
# One closing line for the whole suite.
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($i ~ /^passed;?$/) p += $(i-1); if ($i ~ /^failed;?$/) f += $(i-1) } }
     END { printf "%d passed, %d failed\n", p, f }' "$log"
