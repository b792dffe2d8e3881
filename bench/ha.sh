#!/usr/bin/env bash
# HA restart benchmark: a host running several VMs is killed (every process
# of its namespace at once, `vdc lab fail HOST --kill`); for each VM, the
# time from the kill to its QEMU running on the other host (the
# `vm.state_changed` → running event) and to its guest reporting ready
# (`vm.guest_ready`), with the detection (`ha.host_state_changed` → failed)
# shown apart. The killed host is healed and the next trial kills the
# other one. Prints p50 and p95 over all trials as a Markdown table.
#
# Usage (root): bench/ha.sh [--trials N] [--vms N] [--smoke]
#   --smoke: 1 trial, 1 VM (for CI)
# Needs a built vdc (target/debug/vdc, or VDC_BIN) and jq.
set -euo pipefail
cd "$(dirname "$0")/.."

TRIALS=10
VMS=3
while [ $# -gt 0 ]; do
  case "$1" in
    --trials) TRIALS="$2"; shift 2 ;;
    --vms) VMS="$2"; shift 2 ;;
    --smoke) TRIALS=1; VMS=1; shift ;;
    *) echo "usage: bench/ha.sh [--trials N] [--vms N] [--smoke]" >&2; exit 2 ;;
  esac
done

VDC="${VDC_BIN:-target/debug/vdc}"
LAB=habn
PORT=8591
STATE_ROOT="$(mktemp -d /tmp/vdc-bench-ha.XXXXXX)"
DATA_ROOT="$STATE_ROOT/data"
export VDC_URL="http://127.0.0.1:$PORT"
export VDC_TOKEN_FILE="$STATE_ROOT/$LAB/token"
RESULTS="$STATE_ROOT/results.tsv"

cleanup() {
  local rc=$?
  if [ "$rc" -ne 0 ]; then
    mkdir -p /tmp/vdc-bench-ha-failure
    cp -r "$STATE_ROOT/$LAB/logs" /tmp/vdc-bench-ha-failure/ 2>/dev/null || true
    events_after 0 > /tmp/vdc-bench-ha-failure/events.json 2>/dev/null || true
    echo "failed; logs and events kept in /tmp/vdc-bench-ha-failure" >&2
  fi
  "$VDC" lab down --lab-id "$LAB" --state-root "$STATE_ROOT" >/dev/null 2>&1 || true
  rm -rf "$STATE_ROOT"
}
trap cleanup EXIT

now_ms() { date +%s%3N; }

# wait_for DESCRIPTION TIMEOUT_S COMMAND...: until COMMAND succeeds.
wait_for() {
  local what="$1" limit="$2"; shift 2
  local end=$(( $(date +%s) + limit ))
  until "$@" >/dev/null 2>&1; do
    if [ "$(date +%s)" -ge "$end" ]; then
      echo "timed out after ${limit}s waiting for $what" >&2
      exit 1
    fi
    sleep 0.2
  done
}

events_after() {
  curl -sf -H "Authorization: Bearer $(cat "$VDC_TOKEN_FILE")" \
    "$VDC_URL/api/v1/events?after=$1&limit=2000"
}

last_seq() {
  curl -sf -H "Authorization: Bearer $(cat "$VDC_TOKEN_FILE")" \
    "$VDC_URL/api/v1/events?limit=1" | jq '.[-1].seq // 0'
}

vm_ready_on_other() { # VM NOT_HOST
  "$VDC" vm show "$1" -o json | jq -e --arg h "$2" \
    '.state == "running" and .owner != $h and .guest.ready and (.operation == null)'
}

host_connected() {
  "$VDC" ha status -o json | jq -e --arg h "$1" '.hosts[] | select(.name == $h) | .state == "connected"'
}

echo "starting a 2-host lab..." >&2
"$VDC" lab up --hosts 2 --lab-id "$LAB" --port "$PORT" --no-demo \
  --state-root "$STATE_ROOT" --data-root "$DATA_ROOT" >/dev/null
for i in $(seq 1 "$VMS"); do
  "$VDC" vm create "hab-$i" -t debian-busybox --memory 128 --host host-1 --start >/dev/null
done
for i in $(seq 1 "$VMS"); do
  wait_for "hab-$i ready" 180 vm_ready_on_other "hab-$i" none
done

: > "$RESULTS"
victim=host-1
for t in $(seq 1 "$TRIALS"); do
  after=$(last_seq)
  killed=$(now_ms)
  "$VDC" lab fail "$victim" --kill --lab-id "$LAB" --state-root "$STATE_ROOT" >/dev/null
  for i in $(seq 1 "$VMS"); do
    wait_for "hab-$i on another host" 240 vm_ready_on_other "hab-$i" "$victim"
  done
  ev=$(events_after "$after")
  detect=$(jq --arg h "$victim" '[.[] | select(.topic == "ha.host_state_changed" and .object == $h and .data.to == "failed")][0].time_ms' <<<"$ev")
  for i in $(seq 1 "$VMS"); do
    running=$(jq --arg v "hab-$i" '[.[] | select(.topic == "vm.state_changed" and .object == $v and .data.to == "running")][0].time_ms' <<<"$ev")
    ready=$(jq --arg v "hab-$i" '[.[] | select(.topic == "vm.guest_ready" and .object == $v)][0].time_ms' <<<"$ev")
    printf '%s\t%s\t%s\t%s\n' "$t" $((detect - killed)) $((running - killed)) $((ready - killed)) >> "$RESULTS"
  done
  echo "trial $t: killed $victim; detection $((detect - killed)) ms" >&2
  "$VDC" lab fail "$victim" --heal --lab-id "$LAB" --state-root "$STATE_ROOT" >/dev/null
  wait_for "$victim to reconnect" 120 host_connected "$victim"
  if [ "$victim" = host-1 ]; then victim=host-2; else victim=host-1; fi
done

# p50 / p95 (nearest rank) of column $1 of the results.
pct() {
  cut -f "$1" "$RESULTS" | sort -n | awk -v p="$2" '{v[NR]=$1} END {i=int((p*NR+99)/100); if (i<1) i=1; print v[i]}'
}
n=$(wc -l < "$RESULTS")
echo
echo "| measure (from the SIGKILL of the host) | p50 | p95 |"
echo "|---|---|---|"
echo "| host declared failed (detection) | $(pct 2 50) ms | $(pct 2 95) ms |"
echo "| VM's QEMU running on the other host | $(pct 3 50) ms | $(pct 3 95) ms |"
echo "| guest ready on the other host | $(pct 4 50) ms | $(pct 4 95) ms |"
echo
echo "$TRIALS trials x $VMS VMs ($n restarts), 128 MiB guests, $(grep -c ^processor /proc/cpuinfo) CPUs, load average $(cut -d' ' -f1-3 /proc/loadavg)"
