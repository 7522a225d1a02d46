#!/usr/bin/env bash
# DHCP and DNS side by side (see bench/dhcp_dns.py): Isthmus's agent against dnsmasq (as
# Neutron's DHCP agent runs it) and unbound, N ports on one node, interleaved rounds, plus a
# QEMU guest's boot -> lease.
#
# Usage (root): bench/dhcp-dns.sh [-n PORTS] [-r ROUNDS] [-b BOOTS]
# Needs: dnsmasq-base, dnsperf, unbound, qemu-system-x86, cpio (Debian), a release build.
set -euo pipefail
cd "$(dirname "$0")/.."
PORTS=500 ROUNDS=3 BOOTS=5
while getopts n:r:b: o; do
	case $o in
	n) PORTS=$OPTARG ;; r) ROUNDS=$OPTARG ;; b) BOOTS=$OPTARG ;;
	*) exit 2 ;;
	esac
done
for tool in dnsmasq dnsperf unbound qemu-system-x86_64 cpio; do
	command -v "$tool" >/dev/null || { echo "needs $tool (apt-get install dnsmasq-base dnsperf unbound qemu-system-x86 cpio)" >&2; exit 1; }
done
cargo build --release -q -p isthmus
tools/guest-image.sh target/guest
mkdir -p bench/results
exec python3 bench/dhcp_dns.py -n "$PORTS" -r "$ROUNDS" --boots "$BOOTS" \
	--bin target/release/isthmus --guest-image target/guest
