#!/usr/bin/env bash
# Runs vdc's whole test suite: formatting and lints, unit, store
# conformance, API, the API contract (schemathesis against a real server),
# and end-to-end tests that boot real guests under QEMU (KVM where it works,
# TCG otherwise).
# Needs root (network namespaces, bridges, taps). Installs what is missing
# first, so it works on a fresh Debian 12 machine.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
  echo "error: the test suite needs root (it creates network namespaces and bridges)" >&2
  exit 2
fi

scripts/setup.sh --deps-only --test-deps
scripts/build-guest-image.sh >/dev/null

export RUST_BACKTRACE=1
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
# Debug builds; the e2e tests find the binary through Cargo.
cargo build --workspace --all-targets
scripts/schemathesis.sh target/debug/vdc
cargo test --workspace --no-fail-fast -- --test-threads="${VDC_TEST_THREADS:-4}"
