#!/usr/bin/env bash
# Replication benchmark: the RPO achieved under a steady write load.
# Each guest writes 64 KiB of random data and syncs every 200 ms; every VM
# is replicated to site b with an RPO target of 10 s; for DURATION seconds
# the largest lag (age of the newest applied point) and the largest
# achieved RPO (age of the previous point when a new one became usable)
# seen over all VMs are recorded.
#
# Usage (as root, after `cargo build -p vdc`):
#   bench/replication.sh [VMS...]      # default: 1 5; 60 s each
#   bench/replication.sh --smoke       # 1 VM, 30 s (CI)
# Starts its own two-site lab (id "rb", ports 8592/8593, 1 host per site)
# and removes it at the end.
set -euo pipefail
vdc=${VDC:-target/debug/vdc}
duration=60
counts=(1 5)
if [[ ${1:-} == --smoke ]]; then counts=(1); duration=30; shift; fi
if [[ $# -gt 0 ]]; then counts=("$@"); fi
port=8592
root=$(mktemp -d /tmp/vdc-repl-bench.XXXXXX)
cleanup() {
    "$vdc" lab down --lab-id rb --state-root "$root/run" >/dev/null 2>&1 || true
    rm -rf "$root"
}
trap cleanup EXIT
"$vdc" lab up --lab-id rb --sites 2 --hosts 1 --no-demo --port $port \
    --state-root "$root/run" --data-root "$root/data" >/dev/null
a() { VDC_URL=http://127.0.0.1:$port VDC_TOKEN_FILE=$root/run/rb/token "$vdc" "$@"; }

echo "vms  rpo_target_s  max_lag_s  max_achieved_rpo_s  points  sent_mib  (over ${duration}s of steady writes)"
made=0
for n in "${counts[@]}"; do
    while [[ $made -lt $n ]]; do
        made=$((made + 1))
        a vm create "w$made" --template debian-busybox --memory 80 --start --wait-ready >/dev/null
        a vm console "w$made" --send 'while true; do dd if=/dev/urandom of=/data/load bs=64k count=1 conv=notrunc 2>/dev/null; sync; sleep 0.2; done >/dev/null 2>&1 &' >/dev/null
        a replication enable "w$made" --site b --rpo 10s --retain-last 3 >/dev/null
    done
    max_lag=0; max_rpo=0
    end=$(( $(date +%s) + duration ))
    while [[ $(date +%s) -lt $end ]]; do
        read -r lag rpo < <(a replication list -o json | python3 -c '
import json, sys
rs = json.load(sys.stdin)
print(max([r.get("lag_ms") or 0 for r in rs] or [0]), max([r.get("achieved_rpo_ms") or 0 for r in rs] or [0]))')
        (( lag > max_lag )) && max_lag=$lag
        (( rpo > max_rpo )) && max_rpo=$rpo
        sleep 2
    done
    read -r points sent < <(a replication list -o json | python3 -c '
import json, sys
rs = json.load(sys.stdin)
print(sum(r["points"] for r in rs), sum(r["bytes_sent"] for r in rs) >> 20)')
    python3 -c 'import sys; n, lag, rpo, p, s = map(int, sys.argv[1:]); print(f"{n:3d}  {10:12d}  {lag/1000:9.1f}  {rpo/1000:18.1f}  {p:6d}  {s:8d}")' \
        "$n" "$max_lag" "$max_rpo" "$points" "$sent"
done
