#!/usr/bin/env bash
# Leader failover time of the control plane: a lab with 3 etcd members and
# 3 servers (`vdc lab up --control-plane 3`, 1 host, no VM); the leading
# server is killed (SIGKILL) TRIALS times. Each trial measures from the
# kill to the `cluster.leader_changed` event of the next leader, which it
# publishes once its controllers run (journaled tasks resumed, monitors
# started). The killed server is started again between trials.
#
# Usage (root): bench/leader-failover.sh [TRIALS]   (default 5)
# Env: VDC (the vdc binary, default target/debug/vdc), LEASE_MS (the
# servers' --leader-lease-ms through VDC_LEADER_LEASE_MS; default 4000).
set -euo pipefail
cd "$(dirname "$0")/.."
TRIALS=${1:-5}
if [ -n "${LEASE_MS:-}" ]; then export VDC_LEADER_LEASE_MS=$LEASE_MS; fi
VDC=${VDC:-target/debug/vdc}
LAB=lfb1
PORT=${PORT:-18650}
WORK=$(mktemp -d /tmp/vdc-failover-XXXXXX)
lab() { "$VDC" lab "$@" --lab-id "$LAB" --state-root "$WORK/run"; }
trap 'lab down >/dev/null 2>&1 || true; rm -rf "$WORK"' EXIT
"$VDC" lab up --control-plane 3 --hosts 1 --no-demo --lab-id "$LAB" --port "$PORT" \
  --state-root "$WORK/run" --data-root "$WORK/data" >/dev/null
TOKEN=$(cat "$WORK/run/$LAB/token")
URLS=("http://127.0.0.1:$PORT" "http://127.0.0.1:$((PORT + 1))" "http://127.0.0.1:$((PORT + 2))")
# GET a path from the first server that answers.
get() {
  for u in "${URLS[@]}"; do
    if curl -sf -H "Authorization: Bearer $TOKEN" "$u/api/v1$1"; then return 0; fi
  done
  return 1
}
field() { python3 -c "import json,sys; d=json.load(sys.stdin); print($1)"; }
now_ms() { date +%s%3N; }
results=()
for i in $(seq 1 "$TRIALS"); do
  until leader=$(get /cluster/control-plane | field "d['leader']['id']" 2>/dev/null); do sleep 0.2; done
  last=$(get "/events?topics=cluster.leader_changed&limit=1" | field "d[-1]['seq'] if d else 0")
  t0=$(now_ms)
  lab fail "$leader" --kill >/dev/null
  while true; do
    ev=$(get "/events?topics=cluster.leader_changed&after=$last&limit=1" || echo '[]')
    if [ "$(echo "$ev" | field "len(d)")" = 1 ]; then break; fi
    sleep 0.1
  done
  t1=$(echo "$ev" | field "d[0]['time_ms']")
  new=$(echo "$ev" | field "d[0]['object']")
  took=$((t1 - t0))
  results+=("$took")
  echo "trial $i: killed $leader, $new leads after $took ms"
  lab fail "$leader" --heal >/dev/null
  until [ "$(get /cluster/control-plane | field "len(d['members'])")" = 3 ]; do sleep 0.2; done
done
printf '%s\n' "${results[@]}" | sort -n | python3 -c '
import sys
v = [int(x) for x in sys.stdin]
print(f"failover ms: min {v[0]}  median {v[len(v)//2]}  max {v[-1]}  (n={len(v)})")'
