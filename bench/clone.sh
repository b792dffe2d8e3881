#!/usr/bin/env bash
# Clone benchmark: the API call to a powered-off linked clone (request to
# the create task's end, as the CLI sees it), and full-clone throughput
# against `qemu-img convert` of the same disk in the same run.
#
# Usage (as root, after `cargo build -p vdc`):
#   bench/clone.sh [RUNS]          # default 5 runs of each
# Starts its own lab (id "cb", port 8590, 1 host), removes it at the end.
set -euo pipefail
runs=${1:-5}
vdc=${VDC:-target/debug/vdc}
port=8590
export VDC_URL=http://127.0.0.1:$port
root=$(mktemp -d /tmp/vdc-clone-bench.XXXXXX)
cleanup() {
    "$vdc" lab down --lab-id cb --state-root "$root/run" >/dev/null 2>&1 || true
    rm -rf "$root"
}
trap cleanup EXIT
"$vdc" lab up --lab-id cb --hosts 1 --no-demo --port $port \
    --state-root "$root/run" --data-root "$root/data" >/dev/null
export VDC_TOKEN_FILE=$root/run/cb/token
ms() { echo $(( $(date +%s%N) / 1000000 )); }

echo "linked clone of a template, powered off (ms): the task (request accepted to VM made), and the whole CLI call"
for i in $(seq 1 "$runs"); do
    t0=$(ms)
    task=$("$vdc" vm create "lc-$i" --template debian-busybox --linked --memory 80 2>&1 >/dev/null |
        sed -n 's/.*succeeded in \([0-9]*\)ms.*/\1/p')
    t1=$(ms)
    echo "  run $i: task $task  CLI $((t1 - t0))"
done

# A source VM with a 1 GiB disk of data: a full copy of its template plus
# 512 MiB written into its qcow2 (qemu-io, no guest needed).
"$vdc" vm create src --template debian-busybox --disk-gib 1 --memory 80 >/dev/null 2>&1
disk=$root/data/cb/shared/src/disk0.qcow2
qemu-io -f qcow2 -c "write -P 0x5a 256M 512M" "$disk" >/dev/null
bytes=$(qemu-img info --output=json "$disk" | python3 -c 'import json,sys; print(json.load(sys.stdin)["actual-size"])')
echo "full clone of a powered-off VM vs qemu-img convert of the same disk ($((bytes >> 20)) MiB allocated)"
for i in $(seq 1 "$runs"); do
    t0=$(ms)
    "$vdc" vm clone src "fc-$i" >/dev/null 2>&1
    t1=$(ms)
    qemu-img convert -f qcow2 -O qcow2 "$disk" "$root/copy-$i.qcow2"
    t2=$(ms)
    rm -f "$root/copy-$i.qcow2"
    v=$((t1 - t0)); q=$((t2 - t1))
    echo "  run $i: vdc $v ms ($((bytes * 1000 / v >> 20)) MiB/s)  qemu-img $q ms ($((bytes * 1000 / q >> 20)) MiB/s)  ratio $(awk "BEGIN { printf \"%.2f\", $v / $q }")"
    "$vdc" vm delete "fc-$i" --yes >/dev/null 2>&1
done
