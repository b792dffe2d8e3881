#!/usr/bin/env bash
# Checks the REST API against its own OpenAPI document with schemathesis:
# starts a `vdc server` of its own (empty store, no hosts, a port of its
# own), runs a bounded, seeded run over every operation except the
# streaming ones (the SSE event stream and the console) and the agents'
# report and join (agents only, with an agent credential: each report would
# connect a made-up host for a few seconds and change what every other
# operation answers), and fails on any
# failed check. Rules the schema can only state in words are listed in
# scripts/schemathesis.toml. Installed by `scripts/setup.sh --test-deps`.
#
# Usage: scripts/schemathesis.sh [VDC_BINARY]
#   VDC_BINARY       default target/debug/vdc (built by scripts/test.sh)
# Environment:
#   SCHEMATHESIS     the schemathesis program (default: the one setup.sh installs)
#   VDC_ST_EXAMPLES  test cases per operation and phase (default 25)
#   VDC_ST_SEED      random seed (default 20240501)
set -euo pipefail
cd "$(dirname "$0")/.."

vdc=${1:-target/debug/vdc}
st=${SCHEMATHESIS:-/var/cache/vdc/schemathesis/bin/schemathesis}
examples=${VDC_ST_EXAMPLES:-25}
seed=${VDC_ST_SEED:-20240501}

if [ ! -x "$vdc" ]; then
  echo "error: $vdc not found; build it first (cargo build -p vdc)" >&2
  exit 2
fi
if [ ! -x "$st" ]; then
  echo "error: schemathesis not found at $st; install it with scripts/setup.sh --deps-only --test-deps" >&2
  exit 2
fi

work=$(mktemp -d)
server_pid=
cleanup() {
  if [ -n "$server_pid" ]; then
    kill "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

token=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')
printf '%s\n' "$token" >"$work/token"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
base="http://127.0.0.1:$port"

"$vdc" server --listen "127.0.0.1:$port" --data-dir "$work/data" --token-file "$work/token" \
  >"$work/server.log" 2>&1 &
server_pid=$!
for _ in $(seq 1 100); do
  if python3 -c "import urllib.request; urllib.request.urlopen('$base/api/v1/version', timeout=1)" 2>/dev/null; then
    break
  fi
  if ! kill -0 "$server_pid" 2>/dev/null; then
    echo "error: vdc server exited; its log:" >&2
    cat "$work/server.log" >&2
    exit 1
  fi
  sleep 0.1
done

status=0
"$st" --config-file scripts/schemathesis.toml run "$base/api/v1/openapi.json" \
  --url "$base" \
  --header "Authorization: Bearer $token" \
  --checks all \
  --exclude-path /api/v1/events/stream \
  --exclude-path-regex '/console' \
  --exclude-path /api/v1/agent/report \
  --exclude-path /api/v1/agent/join \
  --phases examples,coverage,fuzzing \
  --max-examples "$examples" \
  --seed "$seed" \
  --generation-database none \
  --workers 2 \
  --request-timeout 10 \
  --no-color \
  --report junit --report-dir "$work/report" || status=$?
if [ "$status" -ne 0 ]; then
  echo "schemathesis found failures (exit $status); server log tail:" >&2
  tail -n 40 "$work/server.log" >&2
fi
exit "$status"
