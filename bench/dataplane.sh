#!/usr/bin/env bash
# VM<->VM TCP throughput across two nodes, side by side in one run: the shared baseline harness
# (../shared/bench/dataplane/measure.sh: case a = raw VXLAN without filtering, case d = the
# hand-written two-table security-group ruleset with a 1,000-address set), raw VXLAN built by
# hand on the Isthmus lab's topology (underlay through a fabric bridge, as `lab` builds it:
# no agent, no br_netfilter, no rules) and, on that topology, the layers of a stateful filter one
# at a time up to the floor (br_netfilter, an empty inet chain, conntrack with one rule) and the
# hand-written ruleset, and Isthmus's own lab (cargo bench --bench throughput: default security
# group vs port security off on another network), rounds interleaved A B B A. Prints per-round
# figures and median ratios.
#
# Usage (root, iperf3 installed): bench/dataplane.sh [ROUNDS] [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
HARNESS=${HARNESS:-$PWD/../shared/bench/dataplane}
ROUNDS=${1:-4} SECONDS_PER_RUN=${2:-10}
WORK=$(mktemp -d /tmp/isthmus-dataplane.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
cargo bench -q -p isthmus --bench throughput --no-run 2>/dev/null

shared() { # round
	CASES="a d" DURATION=$SECONDS_PER_RUN "$HARNESS/measure.sh" 1 "$WORK/shared-$1.jsonl" >/dev/null 2>&1
}
lab_raw() { # round [brnf|hook|floor|hand]: raw VXLAN on the lab's topology; the other cases add,
	# on both nodes, what a stateful filter of bridged traffic needs, one layer at a time:
	# "brnf" br_netfilter on (no ruleset), "hook" plus one empty base chain in the inet forward
	# hook, "floor" plus conntrack with one rule accepting established traffic (and the tunnel
	# untracked): the least any stateful filter costs on this kernel; "hand" br_netfilter and the
	# harness's hand-written ruleset (sg-ruleset.sh, set of 1,000)
	local p=isthraw ns
	for ns in v1 v2 n1 n2 fabric; do ip netns del $p-$ns 2>/dev/null || true; done
	for ns in fabric n1 n2 v1 v2; do ip netns add $p-$ns; ip -n $p-$ns link set lo up; done
	# br_netfilter is on by default in a new namespace: off, as in the harness's raw case and
	# the lab's fabric; the floor and hand-written cases turn it on in the nodes
	for ns in fabric n1 n2; do
		for k in iptables ip6tables arptables; do
			ip netns exec $p-$ns sysctl -qw net.bridge.bridge-nf-call-$k=0
		done
	done
	ip -n $p-fabric link add name fab0 type bridge
	ip -n $p-fabric link set fab0 up
	for i in 1 2; do
		ip -n $p-fabric link add u$i type veth peer name eth0 netns $p-n$i
		ip -n $p-fabric link set u$i master fab0 up
		ip -n $p-n$i addr add 10.252.9.$i/24 dev eth0
		ip -n $p-n$i link set eth0 up
		ip -n $p-n$i link add brv type bridge
		ip -n $p-n$i link add vx type vxlan id 77 local 10.252.9.$i dstport 4789 nolearning
		ip -n $p-n$i link set vx mtu 1450 master brv up
		ip -n $p-n$i link set brv mtu 1450 up
		bridge -n $p-n$i fdb append 00:00:00:00:00:00 dev vx dst 10.252.9.$((3 - i)) self permanent
		ip -n $p-v$i link add eth0 type veth peer name tap netns $p-n$i
		ip -n $p-v$i link set eth0 mtu 1450 up
		ip -n $p-v$i addr add 192.168.77.$i/24 dev eth0
		ip -n $p-n$i link set tap mtu 1450 master brv up
	done
	case ${2:-} in brnf | hook | floor)
		for i in 1 2; do ip netns exec $p-n$i sysctl -qw net.bridge.bridge-nf-call-iptables=1; done
	esac
	if [ "${2:-}" = hook ]; then
		for i in 1 2; do
			ip netns exec $p-n$i nft 'add table inet empty; add chain inet empty forward { type filter hook forward priority filter; }'
		done
	fi
	if [ "${2:-}" = floor ]; then
		for i in 1 2; do
			ip netns exec $p-n$i nft -f - <<-EOF
				table inet floor {
					chain prerouting { type filter hook prerouting priority raw; udp dport 4789 notrack; }
					chain output { type filter hook output priority raw; udp dport 4789 notrack; }
					chain forward { type filter hook forward priority filter; ct state established,related accept; }
				}
			EOF
		done
	fi
	if [ "${2:-}" = hand ]; then
		local i mac
		for i in 1 2; do
			for k in iptables ip6tables arptables; do
				ip netns exec $p-n$i sysctl -qw net.bridge.bridge-nf-call-$k=1
			done
			mac=$(ip -n $p-v$i -br link show eth0 | awk '{print $3}')
			REMOTE_IPS="192.168.77.1 192.168.77.2" "$HARNESS/sg-ruleset.sh" 1000 \
				"tap,192.168.77.$i,$mac" | ip netns exec $p-n$i nft -f -
		done
	fi
	ip netns exec $p-v2 iperf3 -s -D --pidfile /run/$p-iperf.pid
	sleep 0.5
	ip netns exec $p-v1 ping -c 2 -W 1 192.168.77.2 >/dev/null
	ip netns exec $p-v1 iperf3 -c 192.168.77.2 -t "$SECONDS_PER_RUN" -J >"$WORK/lab${2:-raw}-$1.json"
	kill "$(cat /run/$p-iperf.pid)" 2>/dev/null || true
	for ns in v1 v2 n1 n2 fabric; do ip netns del $p-$ns; done
}
ours() { # round
	cargo bench -q -p isthmus --bench throughput -- 2 "$SECONDS_PER_RUN" 2>/dev/null |
		grep '^round' >"$WORK/ours-$1.txt"
}
for r in $(seq 1 "$ROUNDS"); do
	if [ $((r % 2)) = 1 ]; then
		shared "$r"; lab_raw "$r"; lab_raw "$r" brnf; lab_raw "$r" hook; lab_raw "$r" floor
		lab_raw "$r" hand; ours "$r"
	else
		ours "$r"; lab_raw "$r" hand; lab_raw "$r" floor; lab_raw "$r" hook; lab_raw "$r" brnf
		lab_raw "$r"; shared "$r"
	fi
	echo "round $r done" >&2
done
python3 - "$WORK" "$ROUNDS" <<'PY'
import json, re, statistics as st, sys
work, rounds = sys.argv[1], int(sys.argv[2])
rows = []
for r in range(1, rounds + 1):
    tcp = {}
    for l in open(f"{work}/shared-{r}.jsonl"):
        d = json.loads(l)
        if d["kind"] == "tcp" and d["streams"] == 1:
            tcp[d["case"]] = d["gbps"]
    sg, off = [], []
    for l in open(f"{work}/ours-{r}.txt"):
        m = re.search(r"security groups ([\d.]+) Gbps, port security off ([\d.]+) Gbps", l)
        sg.append(float(m.group(1))); off.append(float(m.group(2)))
    gbps = lambda f: json.load(open(f"{work}/{f}-{r}.json"))["end"]["sum_received"]["bits_per_second"] / 1e9
    row = {"raw": tcp["a"], "hand": tcp["d"], "lab_raw": gbps("labraw"), "lab_hand": gbps("labhand"),
           "lab_brnf": gbps("labbrnf"), "lab_hook": gbps("labhook"), "lab_floor": gbps("labfloor"),
           "isthmus_sg": st.mean(sg), "isthmus_off": st.mean(off)}
    rows.append(row)
    print(f"round {r}: harness raw VXLAN {row['raw']:.2f}  hand-written SG {row['hand']:.2f} | lab topology: "
          f"raw VXLAN {row['lab_raw']:.2f}  br_netfilter {row['lab_brnf']:.2f}  + empty inet chain {row['lab_hook']:.2f}  "
          f"floor {row['lab_floor']:.2f}  hand-written SG {row['lab_hand']:.2f}  "
          f"Isthmus SG {row['isthmus_sg']:.2f}  Isthmus port security off {row['isthmus_off']:.2f} Gbps")
med = lambda k: st.median(r[k] for r in rows)
ratio = lambda a, b: st.median(r[a] / r[b] for r in rows)
print(f"\nmedians (1 stream, Gbps): harness raw {med('raw'):.2f}, hand-written {med('hand'):.2f}; "
      f"lab topology raw {med('lab_raw'):.2f}, floor {med('lab_floor'):.2f}, hand-written {med('lab_hand'):.2f}, "
      f"Isthmus SG {med('isthmus_sg'):.2f}, Isthmus off {med('isthmus_off'):.2f}")
print(f"Isthmus SG / raw VXLAN:        {ratio('isthmus_sg', 'raw'):.3f}  (target >= 0.90)")
print(f"hand-written SG / raw VXLAN:   {ratio('hand', 'raw'):.3f}")
print(f"Isthmus SG / hand-written SG:  {ratio('isthmus_sg', 'hand'):.3f}  (target >= 1)")
print(f"Isthmus SG / Isthmus off:      {ratio('isthmus_sg', 'isthmus_off'):.3f}")
print(f"Isthmus SG / raw VXLAN on the lab topology: {ratio('isthmus_sg', 'lab_raw'):.3f}  (target >= 0.90)")
print(f"Isthmus SG / hand-written on the lab topology: {ratio('isthmus_sg', 'lab_hand'):.3f}  (target >= 1)")
print(f"hand-written / raw on the lab topology:     {ratio('lab_hand', 'lab_raw'):.3f}")
print("the floor, layer by layer, on the lab topology (/ raw):")
print(f"  br_netfilter on, no ruleset:              {ratio('lab_brnf', 'lab_raw'):.3f}")
print(f"  + one empty inet base chain (forward):    {ratio('lab_hook', 'lab_raw'):.3f}")
print(f"  + conntrack, one rule (the floor):        {ratio('lab_floor', 'lab_raw'):.3f}")
print(f"Isthmus SG / floor:                         {ratio('isthmus_sg', 'lab_floor'):.3f}")
print(f"raw on the lab topology / raw VXLAN:        {ratio('lab_raw', 'raw'):.3f}")
PY
