#!/usr/bin/env bash
# CNI ADD/CHECK/DEL side by side: Debian's reference bridge + host-local plugins against
# isthmus-cni, driven by the shared harness (../shared/bench/cni/bench.py, interleaved rounds)
# in one run. Like the harness's own bench.sh it builds a private "host" namespace and one
# namespace per pod; here the host namespace also runs an Isthmus controller and agent, so
# ADD goes plugin -> agent socket -> controller (port, IPAM) -> kernel, as on a real node.
#
# Usage (root): bench/cni.sh [-n PODS] [-w WORKERS] [-r ROUNDS] [-p POOL_SIZE] [-m POOL_MAX]
#   POOL_SIZE: the agent's --pool-size (ports kept ready at least per network; 0 = every ADD
#   creates its port through the controller); POOL_MAX: its --pool-max (how far a pool grows
#   under bursts; default 64, the agent's; -m POOL_SIZE = a fixed pool).
# Needs: containernetworking-plugins (Debian), a release build (cargo build --release).
# With RUST_LOG=isthmus_agent::cni=debug and AGENT_LOG=FILE, the agent's log (each ADD's time
# per step) is kept in FILE.
set -euo pipefail
cd "$(dirname "$0")/.."
HARNESS=${HARNESS:-../shared/bench/cni}
PODS=200 WORKERS=4 ROUNDS=3 POOL=2 POOL_MAX=64
while getopts n:w:r:p:m: o; do
	case $o in
	n) PODS=$OPTARG ;; w) WORKERS=$OPTARG ;; r) ROUNDS=$OPTARG ;; p) POOL=$OPTARG ;; m) POOL_MAX=$OPTARG ;;
	*) exit 2 ;;
	esac
done
[ -x /usr/lib/cni/bridge ] || { echo "needs Debian's containernetworking-plugins" >&2; exit 1; }
cargo build --release -q -p isthmus -p isthmus-cni
BIN=$PWD/target/release
HOST=bl-cni-host PFX=bl-cni-p
OUT=$PWD/bench/results/cni-$(date +%Y%m%d-%H%M%S).jsonl
mkdir -p bench/results

teardown() {
	if [ -n "${AGENT_LOG:-}" ] && [ -n "${WORK:-}" ] && [ -f "$WORK/agent.log" ]; then
		cp "$WORK/agent.log" "$AGENT_LOG"
	fi
	ip netns pids $HOST 2>/dev/null | xargs -r kill 2>/dev/null || true
	sleep 0.2
	# The agent's DHCP namespace for the bench network (an agent leaves its kernel state).
	if [ -n "${WORK:-}" ] && [ -f "$WORK/network" ]; then
		ip netns del "qdhcp-$(cat "$WORK/network")" 2>/dev/null || true
	fi
	for ns in $(ip netns list | awk '{print $1}' | grep -E "^($PFX[0-9]+|$HOST)\$" || true); do
		ip netns del "$ns"
	done
	rm -rf /run/bl-cni "${WORK:-}"
}
teardown
WORK=$(mktemp -d /tmp/isthmus-cni-bench.XXXXXX)
trap teardown EXIT

ip netns add $HOST
ip -n $HOST link set lo up
ip -n $HOST link add underlay type veth peer name underlay-peer
ip -n $HOST addr add 10.252.0.1/24 dev underlay
ip -n $HOST link set underlay up
ip -n $HOST link set underlay-peer up
for i in $(seq 0 $((PODS - 1))); do ip netns add "$PFX$i"; done

ip netns exec $HOST "$BIN/isthmus" controller --listen 127.0.0.1:9696 --data-dir "$WORK/data" \
	>"$WORK/controller.log" 2>&1 &
api() { ip netns exec $HOST curl -sf -X "$1" -H 'Content-Type: application/json' \
	"http://127.0.0.1:9696$2" ${3:+-d "$3"}; }
for _ in $(seq 100); do api GET /healthz >/dev/null 2>&1 && break; sleep 0.1; done
net=$(api POST /v2.0/networks '{"network": {"name": "bench"}}' |
	python3 -c 'import json,sys; print(json.load(sys.stdin)["network"]["id"])')
echo "$net" >"$WORK/network"
api POST /v2.0/subnets "{\"subnet\": {\"network_id\": \"$net\", \"ip_version\": 4, \"cidr\": \"10.250.0.0/16\"}}" >/dev/null
ip netns exec $HOST "$BIN/isthmus" agent --node bench --tunnel-ip 10.252.0.1 \
	--controller http://127.0.0.1:9696 --state-dir "$WORK/agent" --cni-socket "$WORK/cni.sock" --pool-size "$POOL" --pool-max "$POOL_MAX" \
	>"$WORK/agent.log" 2>&1 &
for _ in $(seq 100); do [ -S "$WORK/cni.sock" ] && break; sleep 0.1; done

# The plugin's "type" is its executable's name in CNI_PATH.
ln -s "$BIN/isthmus-cni" "$WORK/isthmus-cni"
cat >"$WORK/isthmus.conf" <<CONF
{"cniVersion": "1.0.0", "name": "bl-isthmus", "type": "isthmus-cni", "network": "bench",
 "socket": "$WORK/cni.sock"}
CONF
python3 "$HARNESS/bench.py" --host-netns $HOST --pod-prefix $PFX --pods "$PODS" \
	--workers "$WORKERS" --rounds "$ROUNDS" --out "$OUT" \
	--case "ref=/usr/lib/cni:$HARNESS/conf/bridge.conf" \
	--case "isthmus-pool$POOL-max$POOL_MAX=$WORK:$WORK/isthmus.conf"
python3 "$HARNESS/summarize.py" "$OUT" | tee "${OUT%.jsonl}.summary.md"
