#!/usr/bin/env bash
# DR benchmark: the RTO a recovery plan's run measures (start to the last
# VM's guest ready) for a disaster failover of N VMs in one priority
# group, with each VM's RPO, from the run's own record.
#
# Usage (as root, after `cargo build -p vdc`):
#   bench/dr.sh [--smoke] [N]      # default N=10; --smoke: N=1
# Starts its own two-site lab (id "drb", ports 8592/8593, 1 host per
# site), removes it at the end.
set -euo pipefail
smoke=0
if [ "${1:-}" = "--smoke" ]; then smoke=1; shift; fi
n=${1:-10}
[ "$smoke" = 1 ] && n=1
vdc=${VDC:-target/debug/vdc}
port=8592
root=$(mktemp -d /tmp/vdc-dr-bench.XXXXXX)
cleanup() {
    "$vdc" lab down --lab-id drb --state-root "$root/run" >/dev/null 2>&1 || true
    rm -rf "$root"
}
trap cleanup EXIT
"$vdc" lab up --lab-id drb --sites 2 --hosts 1 --no-demo --port $port \
    --state-root "$root/run" --data-root "$root/data" >/dev/null
at_a() { VDC_URL=http://127.0.0.1:$port VDC_TOKEN_FILE=$root/run/drb/token "$vdc" "$@"; }
at_b() { VDC_URL=http://127.0.0.1:$((port + 1)) VDC_TOKEN_FILE=$root/run/drbb/token "$vdc" "$@"; }

vms=()
for i in $(seq 1 "$n"); do
    at_a vm create "vm$i" --template debian-busybox --linked --memory 80 --start --wait-ready >/dev/null
    at_a replication enable "vm$i" --site b --rpo 10s >/dev/null
    vms+=("vm$i")
done
list=$(IFS=,; echo "${vms[*]}")
at_b plan create bench --site a --group "$list" --map lab=lab >/dev/null
at_b -o json plan failover bench >"$root/run.json"
python3 - "$root/run.json" "$n" <<'PY'
import json, sys
run = json.load(open(sys.argv[1]))
rpos = [v["rpo_ms"] for v in run["vms"] if v.get("rpo_ms") is not None]
steps = {s["name"]: (s["finished_ms"] - s["started_ms"]) for s in run["steps"] if s.get("finished_ms")}
print(f"failover of {sys.argv[2]} VM(s) in one group: state {run['state']}")
print(f"  RTO (run start to last guest ready): {run['rto_ms']} ms")
print(f"  recover step: {steps.get('recover group 1')} ms, readiness wait: {steps.get('wait until group 1 is ready')} ms")
print(f"  RPO per VM: min {min(rpos)} ms, max {max(rpos)} ms")
sys.exit(0 if run["state"] == "succeeded" else 1)
PY
