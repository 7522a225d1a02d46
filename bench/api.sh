#!/usr/bin/env bash
# API benchmark on the embedded store (release build): the shared Neutron harness
# (../shared/bench/neutron_api_bench.py, same as Neutron's baseline), first with no agent
# watching, then with W agents watching (the production shape: each agent's node has a port
# under the project's default group, so every port the harness makes is in every agent's
# view, as in a one-project cloud); then the time to list 10,000 ports and the controller's
# memory at 100,000 ports (agents gone).
# Usage: bench/api.sh [--ports N] [--repeat R] [--watchers W]   (all traffic on 127.0.0.1)
set -euo pipefail
cd "$(dirname "$0")/.."
ports=2000 repeat=1 watchers=10
while (($#)); do
    case "$1" in
        --ports) ports=$2; shift 2 ;;
        --repeat) repeat=$2; shift 2 ;;
        --watchers) watchers=$2; shift 2 ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
done
harness=${NEUTRON_BENCH:-../shared/bench/neutron_api_bench.py}
cargo build --release -q -p isthmus
data=$(mktemp -d)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
./target/release/isthmus controller --listen "127.0.0.1:$port" --data-dir "$data" 2>/dev/null &
pid=$!
watch_pids=()
trap 'kill "${watch_pids[@]}" $pid 2>/dev/null; wait $pid 2>/dev/null; rm -rf "$data"' EXIT
ep="http://127.0.0.1:$port"
until curl -sf "$ep/healthz" >/dev/null; do sleep 0.1; done
# Quotas stay enforced (usage is counted on every create); the project may hold this many.
curl -sf -X PUT -H 'X-Project-Id: bench' -H 'X-Roles: admin' -H 'Content-Type: application/json' \
    -d '{"quota": {"network": 1000000, "subnet": 1000000, "port": 1000000}}' "$ep/v2.0/quotas/bench" >/dev/null

bench() {
    python3 "$harness" --endpoint "$ep" --header 'X-Project-Id: bench' --header 'X-Roles: admin' \
        --ports "$ports" --concurrency 1,8,32 --repeat "$repeat" | sed -n '/^endpoint/,$p'
}
api() {  # METHOD PATH [BODY]: as the bench project's admin; prints the answer
    curl -sf -X "$1" -H 'X-Project-Id: bench' -H 'X-Roles: admin' -H 'Content-Type: application/json' \
        ${3:+-d "$3"} "$ep$2"
}
echo "== no agent watching"
bench
echo "== $watchers agents watching"
net=$(api POST /v2.0/networks '{"network": {"name": "agents"}}' | python3 -c 'import json,sys; print(json.load(sys.stdin)["network"]["id"])')
api POST /v2.0/subnets "{\"subnet\": {\"network_id\": \"$net\", \"ip_version\": 4, \"cidr\": \"10.250.0.0/16\"}}" >/dev/null
for i in $(seq "$watchers"); do
    api POST /isthmus/v1/nodes "{\"node\": {\"name\": \"agent$i\", \"tunnel_ip\": \"10.255.0.$i\"}}" >/dev/null
    api POST /v2.0/ports "{\"port\": {\"network_id\": \"$net\", \"binding:host_id\": \"agent$i\"}}" >/dev/null
    curl -sN -H 'X-Project-Id: bench' -H 'X-Roles: admin' "$ep/isthmus/v1/watch?node=agent$i" >/dev/null &
    watch_pids+=($!)
done
bench
kill "${watch_pids[@]}" 2>/dev/null || true
watch_pids=()

list_ms() {  # median of 9 full GETs of the network's ports, in ms
    for _ in $(seq 9); do
        curl -s -o /dev/null -w '%{time_total}\n' -H 'X-Project-Id: bench' -H 'X-Roles: admin' \
            "$ep/v2.0/ports?network_id=$1"
    done | sort -n | sed -n 5p | awk '{printf "%.1f", $1 * 1000}'
}
rss_mb() { awk '/VmRSS/ {printf "%.0f", $2 / 1024}' "/proc/$pid/status"; }
peak_mb() { awk '/VmHWM/ {printf "%.0f", $2 / 1024}' "/proc/$pid/status"; }

net=$(python3 bench/mkports.py --endpoint "$ep" --ports 10000)
echo "list 10,000 ports (one GET, median of 9): $(list_ms "$net") ms   [Neutron 29: 1334-1707 ms for 2,000]"
echo "controller RSS at 10,000 ports: $(rss_mb) MB"
python3 bench/mkports.py --endpoint "$ep" --ports 90000 --network "$net" >/dev/null
echo "controller RSS at 100,000 ports (steady, after creation): $(rss_mb) MB   [Neutron 29: 460 MB at 2,000; target < 300 MB]"
echo "list 100,000 ports (one GET, median of 9): $(list_ms "$net") ms"
echo "controller RSS after listing 100,000 ports: $(rss_mb) MB (peak $(peak_mb) MB)"
