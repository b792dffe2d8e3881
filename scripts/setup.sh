#!/bin/bash
# Prepare a Debian 12 (bookworm) machine to run vdc. Run as root.
#
# Usage: scripts/setup.sh [--deps-only | --image-only] [--test-deps] [--bench-deps] [--lab]
#
#   (no flag)      install packages, build the vdc binary, build the guest image
#   --deps-only    install packages only
#   --image-only   build the guest image only
#   --test-deps    also install what the tests need (chromium, chromium-driver,
#                  python3-venv; restic and borgbackup, the peers of
#                  `vdc bench backup`, whose smoke runs in CI; schemathesis
#                  from PyPI into its own venv)
#   --bench-deps   also install the peers the benchmarks run against:
#                  libvirt (libvirt-daemon, libvirt-clients,
#                  libvirt-daemon-driver-qemu) from bookworm-backports, to
#                  match QEMU 10 (`vdc bench migrate`)
#   --lab          at the end, exec `target/release/vdc lab up`
#
# Steps:
#   1. add the bookworm-backports suite to apt unless a source already lists
#      it: the preinstalled qemu-utils 10 (from backports) breaks bookworm's
#      qemu-system-x86 7.2, so QEMU and the kernel come from backports;
#   2. install only the packages that are missing (dpkg-query), running
#      `apt-get update` only when something must be installed;
#   3. `cargo build --release -p vdc`, linked as /usr/local/bin/vdc;
#   4. scripts/build-guest-image.sh (cached: a re-run costs nothing);
#   with --test-deps, schemathesis (pinned major version) into a venv of its
#   own, where scripts/schemathesis.sh looks for it.
# Every step checks before it acts, so a re-run is fast and changes nothing.
set -euo pipefail

log() { echo "setup: $*" >&2; }
die() {
    log "error: $*"
    exit 1
}

repo=$(dirname "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")")

do_deps=1
do_build=1
do_image=1
do_lab=0
do_test_deps=0
do_bench_deps=0
for arg in "$@"; do
    case "$arg" in
        --deps-only) do_build=0 do_image=0 ;;
        --image-only) do_deps=0 do_build=0 ;;
        --lab) do_lab=1 ;;
        --test-deps) do_test_deps=1 ;;
        --bench-deps) do_bench_deps=1 ;;
        -h | --help)
            sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'
            exit 0
            ;;
        *) die "unknown argument: $arg (see --help)" ;;
    esac
done

# Packages taken from bookworm-backports (QEMU 10, kernel 6.12).
backports_pkgs=(qemu-system-x86 linux-image-amd64)
# Packages from bookworm: guest image tools (gcc and libc6-dev compile the
# guest's small static programs, guest/src); protobuf-compiler and
# libprotobuf-dev build the etcd client (crates/vdc-store-etcd); etcd-server
# is the replicated store (`vdc server --store etcd://`, the labs with
# several servers, the etcd store's tests); e2fsprogs' debugfs also reads
# backed-up file systems (file-level restore), and qemu-utils (preinstalled)
# brings qemu-nbd and qemu-img for backups of stopped VMs; nftables
# (bridge family) enforces port groups' security policy and outbound
# shaping on the VMs' taps.
base_pkgs=(busybox-static cpio iproute2 xz-utils syslinux syslinux-common extlinux
    dosfstools mtools fdisk e2fsprogs gcc libc6-dev
    protobuf-compiler libprotobuf-dev etcd-server nftables)
# Packages from bookworm-backports for the benchmarks (--bench-deps): the
# libvirt peer of `vdc bench migrate` (libvirt 11, built for QEMU 10).
bench_pkgs=(libvirt-daemon libvirt-clients libvirt-daemon-driver-qemu)
# Packages from bookworm for the tests (--test-deps): the web page's
# end-to-end test drives a headless Chromium over WebDriver; restic and borg
# are the peers of `vdc bench backup` (small, from bookworm; its smoke runs
# in CI, so they are test deps, not bench-only); schemathesis (the API
# contract check) lives in a Python venv.
test_pkgs=(chromium chromium-driver python3-venv restic borgbackup)
# Where scripts/schemathesis.sh finds schemathesis, and which version.
schemathesis_venv=/var/cache/vdc/schemathesis
schemathesis_req='schemathesis>=4.32,<5'

installed() {
    [ "$(dpkg-query -W -f='${db:Status-Abbrev}' "$1" 2>/dev/null)" = "ii " ]
}

have_backports_source() {
    grep -rqs --include='*.list' --include='*.sources' 'bookworm-backports' \
        /etc/apt/sources.list /etc/apt/sources.list.d/ 2>/dev/null
}

install_deps() {
    [ "$(id -u)" = 0 ] || die "installing packages needs root"
    local missing_bp=() missing_base=() p
    for p in "${backports_pkgs[@]}"; do installed "$p" || missing_bp+=("$p"); done
    if [ $do_bench_deps = 1 ]; then
        for p in "${bench_pkgs[@]}"; do installed "$p" || missing_bp+=("$p"); done
    fi
    for p in "${base_pkgs[@]}"; do installed "$p" || missing_base+=("$p"); done
    if [ $do_test_deps = 1 ]; then
        for p in "${test_pkgs[@]}"; do installed "$p" || missing_base+=("$p"); done
    fi
    if [ ${#missing_bp[@]} -eq 0 ] && [ ${#missing_base[@]} -eq 0 ]; then
        log "packages: all present"
        return
    fi
    if ! have_backports_source; then
        log "adding bookworm-backports to apt sources"
        cat > /etc/apt/sources.list.d/bookworm-backports.sources <<'EOF'
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
    fi
    export DEBIAN_FRONTEND=noninteractive
    log "apt-get update"
    apt-get update -qq >&2
    if [ ${#missing_bp[@]} -gt 0 ]; then
        log "installing from bookworm-backports: ${missing_bp[*]}"
        apt-get install -y -qq --no-install-recommends -t bookworm-backports "${missing_bp[@]}" >&2
    fi
    if [ ${#missing_base[@]} -gt 0 ]; then
        log "installing: ${missing_base[*]}"
        apt-get install -y -qq --no-install-recommends "${missing_base[@]}" >&2
    fi
}

install_schemathesis() {
    if "$schemathesis_venv/bin/schemathesis" --version >/dev/null 2>&1; then
        log "schemathesis: present"
        return
    fi
    log "installing schemathesis into $schemathesis_venv"
    mkdir -p "$(dirname "$schemathesis_venv")"
    /usr/bin/python3 -m venv "$schemathesis_venv" >&2
    "$schemathesis_venv/bin/pip" install -q "$schemathesis_req" >&2
}

build_vdc() {
    command -v cargo >/dev/null 2>&1 || die "cargo not found (install Rust, e.g. rustup)"
    log "cargo build --release -p vdc"
    (cd "$repo" && cargo build --release -p vdc) >&2
    # Put the CLI on the PATH (a link, so a rebuild is picked up).
    if [ -w /usr/local/bin ] && [ "$(readlink /usr/local/bin/vdc 2>/dev/null)" != "$repo/target/release/vdc" ]; then
        ln -sfn "$repo/target/release/vdc" /usr/local/bin/vdc
        log "linked /usr/local/bin/vdc"
    fi
}

build_image() {
    log "guest image"
    "$repo/scripts/build-guest-image.sh"
}

if [ $do_deps = 1 ]; then install_deps; fi
if [ $do_deps = 1 ] && [ $do_test_deps = 1 ]; then install_schemathesis; fi
if [ $do_build = 1 ]; then build_vdc; fi
if [ $do_image = 1 ]; then build_image; fi
if [ $do_lab = 1 ]; then
    cd "$repo"
    if status=$(target/release/vdc lab status -o json 2>/dev/null) &&
        printf '%s' "$status" | tr -d ' \n' | grep -q '"server":{[^}]*"alive":true'; then
        log "the lab is already up (restart it with: vdc lab down && scripts/setup.sh --lab)"
        exec target/release/vdc lab status
    fi
    exec target/release/vdc lab up
fi
exit 0
