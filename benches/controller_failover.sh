#!/usr/bin/env bash
# Controller leader takeover time: starts a local cluster (3 controllers,
# 3 nodes), then KILLS times (default 12): kill -9 the controller leader,
# time until the surviving controllers report a new leader, restart the
# killed controller and wait until it follows again. Prints each takeover
# and the p50 and max, in milliseconds.
#
#   benches/controller_failover.sh      # builds and uses target/debug/tandem
#   cargo build --release && KILLS=20 TANDEM=target/release/tandem benches/controller_failover.sh
#
# The time is measured from the kill to the first `tandem status` that
# names a new leader; status polls every ~20 ms, so figures carry that much
# resolution, plus one `tandem status` process start. Needs python3 (JSON).
set -euo pipefail

KILLS=${KILLS:-12}
if [[ -z "${TANDEM:-}" ]]; then
    cargo build -q -p tandem --bin tandem
    TANDEM=target/debug/tandem
fi
[[ -x $TANDEM ]] || { echo "no tandem binary at $TANDEM" >&2; exit 2; }

DATA=$(mktemp -d /tmp/tandem-failover-XXXXXX)
CLUSTER=$DATA/cluster.json
declare -A PIDS=()

cleanup() {
    for pid in "${PIDS[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
    rm -rf "$DATA"
}
trap cleanup EXIT

"$TANDEM" up --detach --data "$DATA" --partitions 1024 > /dev/null
json() { python3 -c "import json,sys; d=json.load(open('$CLUSTER')); $1"; }
for entry in $(json "print(' '.join(f\"{p['role'][0]}{p['id']}={p['pid']}\" for p in d['controllers']+d['nodes']))"); do
    PIDS[${entry%%=*}]=${entry#*=}
done

status_json() { "$TANDEM" status --cluster "$CLUSTER" --json 2>/dev/null || echo '{}'; }
# The leader id, or nothing.
leader() { status_json | python3 -c "import json,sys; l=json.load(sys.stdin).get('leader'); print(l if l is not None else '')"; }
# True when all three controllers answer, in the leader's term.
settled() {
    status_json | python3 -c "
import json,sys
d=json.load(sys.stdin); rows=d.get('controllers',[])
ok = d.get('leader') is not None and len(rows)==3 and all(r['reachable'] and r['term']==d['term'] for r in rows)
sys.exit(0 if ok else 1)"
}
now_ms() { date +%s%3N; }

wait_settled() {
    local deadline=$(( $(now_ms) + 60000 ))
    until settled; do
        (( $(now_ms) < deadline )) || { echo "the group did not settle within 60 s" >&2; exit 1; }
        sleep 0.1
    done
}

times=()
for ((i = 1; i <= KILLS; i++)); do
    wait_settled
    old=$(leader)
    kill -9 "${PIDS[c$old]}"
    t0=$(now_ms)
    while true; do
        new=$(leader)
        if [[ -n $new && $new != "$old" ]]; then break; fi
        (( $(now_ms) - t0 < 60000 )) || { echo "no new leader within 60 s" >&2; exit 1; }
        sleep 0.02
    done
    took=$(( $(now_ms) - t0 ))
    times+=("$took")
    echo "kill $i: controller $old killed, controller $new leads after $took ms"
    # Restart the killed controller with its recorded command line.
    mapfile -t cmd < <(json "print('\n'.join([c for c in d['controllers'] if c['id']==$old][0]['command']))")
    "${cmd[@]}" >> "$DATA/controller-$old.log" 2>&1 &
    PIDS[c$old]=$!
    disown
done

sorted=($(printf '%s\n' "${times[@]}" | sort -n))
n=${#sorted[@]}
p50=${sorted[$(( (n - 1) / 2 ))]}
max=${sorted[$(( n - 1 ))]}
echo "leader takeover over $n kills: p50 $p50 ms, max $max ms (binary $TANDEM)"
