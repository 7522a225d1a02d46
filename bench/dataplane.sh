#!/usr/bin/env bash
# VM<->VM TCP throughput across two nodes, side by side in one run: the shared baseline harness
# (../shared/bench/dataplane/measure.sh: case a = raw VXLAN without filtering, case d = the
# hand-written two-table security-group ruleset with a 1,000-address set) and Isthmus's own
# lab (cargo bench --bench throughput: default security group vs port security off), rounds
# interleaved A B B A. Prints per-round figures and median ratios.
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
ours() { # round
	cargo bench -q -p isthmus --bench throughput -- 2 "$SECONDS_PER_RUN" 2>/dev/null |
		grep '^round' >"$WORK/ours-$1.txt"
}
for r in $(seq 1 "$ROUNDS"); do
	if [ $((r % 2)) = 1 ]; then shared "$r"; ours "$r"; else ours "$r"; shared "$r"; fi
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
    row = {"raw": tcp["a"], "hand": tcp["d"], "isthmus_sg": st.mean(sg), "isthmus_off": st.mean(off)}
    rows.append(row)
    print(f"round {r}: raw VXLAN {row['raw']:.2f}  hand-written SG {row['hand']:.2f}  "
          f"Isthmus SG {row['isthmus_sg']:.2f}  Isthmus port security off {row['isthmus_off']:.2f} Gbps")
med = lambda k: st.median(r[k] for r in rows)
ratio = lambda a, b: st.median(r[a] / r[b] for r in rows)
print(f"\nmedians (1 stream, Gbps): raw {med('raw'):.2f}, hand-written {med('hand'):.2f}, "
      f"Isthmus SG {med('isthmus_sg'):.2f}, Isthmus off {med('isthmus_off'):.2f}")
print(f"Isthmus SG / raw VXLAN:        {ratio('isthmus_sg', 'raw'):.3f}  (target >= 0.90)")
print(f"hand-written SG / raw VXLAN:   {ratio('hand', 'raw'):.3f}")
print(f"Isthmus SG / hand-written SG:  {ratio('isthmus_sg', 'hand'):.3f}  (target >= 1)")
print(f"Isthmus SG / Isthmus off:      {ratio('isthmus_sg', 'isthmus_off'):.3f}")
PY
