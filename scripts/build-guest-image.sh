#!/bin/bash
# Build the vdc guest image: a small self-booting qcow2 disk made only from
# Debian packages (the installed linux-image-amd64 kernel and busybox-static)
# plus the scripts in guest/ and its small C programs (guest/src, compiled
# static with gcc).
#
# Usage: scripts/build-guest-image.sh [OUTDIR]     (default /var/cache/vdc/images)
#
# Output: OUTDIR/vdc-guest-<hash>.qcow2, where <hash> is the first 12 hex
# digits of the sha256 of this script, the files under guest/, the kernel
# version, the busybox version and the gcc version. An image that already exists is reused.
# OUTDIR/vdc-guest.qcow2 is a symlink to the latest image. The image path is
# the last line of stdout; everything else goes to stderr.
#
# Steps (no loop devices, no mounts, no root rights except reading /boot):
#   1. initramfs: busybox, guest/initramfs/init, the modules of guest/modules
#      with their dependencies, decompressed (busybox insmod cannot read
#      .ko.xz) and listed in load order;
#   2. FAT /boot partition image (mkfs.vfat -C, mcopy): kernel, initramfs,
#      syslinux.cfg; `syslinux --install` writes its boot sector and
#      ldlinux.sys;
#   3. ext4 root partition image with `mkfs.ext4 -d`: busybox, guest/rootfs,
#      the programs of guest/src (`gcc -static -O2`, one binary per
#      guest/src/NAME.c as /bin/NAME), /data;
#   4. raw disk: MBR partition table (sfdisk), both partitions copied in,
#      SYSLINUX's mbr.bin in the first 440 bytes;
#   5. `qemu-img convert -O qcow2` into a temporary file, renamed into place
#      under an flock on OUTDIR/.lock, so concurrent builders are safe.
#
# Environment: VDC_GUEST_KERNEL=<version> picks another installed kernel.
set -euo pipefail

log() { echo "build-guest-image: $*" >&2; }
die() {
    log "error: $*"
    exit 1
}

script=$(readlink -f "${BASH_SOURCE[0]}")
repo=$(dirname "$(dirname "$script")")
guest=$repo/guest
outdir=${1:-/var/cache/vdc/images}

for tool in gcc busybox cpio gzip xz modinfo sfdisk mkfs.vfat mcopy syslinux mkfs.ext4 qemu-img flock sha256sum; do
    command -v "$tool" >/dev/null 2>&1 || die "$tool not found (run scripts/setup.sh --deps-only)"
done
[ -d "$guest" ] || die "no guest directory at $guest"

# --- kernel ------------------------------------------------------------------
# The kernel of the linux-image-amd64 metapackage, else the newest in /boot.
kver=${VDC_GUEST_KERNEL:-}
if [ -z "$kver" ]; then
    dep=$(dpkg-query -W -f='${Depends}' linux-image-amd64 2>/dev/null || true)
    dep=${dep%% *}
    kver=${dep#linux-image-}
    if [ -z "$dep" ] || [ ! -e "/boot/vmlinuz-$kver" ]; then
        kver=$(find /boot -maxdepth 1 -name 'vmlinuz-*' -printf '%f\n' | sed 's/^vmlinuz-//' | sort -V | tail -n 1)
    fi
fi
[ -n "$kver" ] || die "no kernel in /boot (install linux-image-amd64)"
kernel=/boot/vmlinuz-$kver
[ -r "$kernel" ] || die "cannot read $kernel"
[ -d "/lib/modules/$kver" ] || die "no modules for kernel $kver"
busybox_bin=$(command -v busybox)
file_out=$(od -An -c -N 4 "$busybox_bin" | tr -d ' ')
[ "$file_out" = '177ELF' ] || die "$busybox_bin is not an ELF binary"
bb_version=$(dpkg-query -W -f='${Version}' busybox-static 2>/dev/null || busybox | head -n 1)
gcc_version=$(gcc -dumpfullversion 2>/dev/null || gcc -dumpversion)

# --- cache key -------------------------------------------------------------
hash=$(
    {
        sha256sum "$script"
        (cd "$guest" && find . -type f ! -name '*.md' -print0 | sort -z | xargs -0 sha256sum)
        (cd "$guest" && find . -print0 | sort -z | xargs -0 stat -c '%n %a')
        echo "kernel $kver"
        echo "busybox $bb_version"
        echo "gcc $gcc_version"
    } | sha256sum | cut -c1-12
)
name=vdc-guest-$hash.qcow2
out=$outdir/$name

mkdir -p "$outdir" || die "cannot create $outdir"

link_latest() {
    local tmp_link="$outdir/.vdc-guest.qcow2.$$"
    ln -sfn "$name" "$tmp_link"
    mv -Tf "$tmp_link" "$outdir/vdc-guest.qcow2"
}

if [ -f "$out" ]; then
    link_latest
    echo "$out"
    exit 0
fi

exec 9>"$outdir/.lock"
flock 9
if [ -f "$out" ]; then
    # Another builder finished while we waited for the lock.
    link_latest
    echo "$out"
    exit 0
fi

log "building $name (kernel $kver)"
work=$(mktemp -d "$outdir/.build.XXXXXX")
trap 'rm -rf "$work"' EXIT

# Install busybox and a symlink per applet into a tree.
install_busybox() {
    local root=$1 applet
    mkdir -p "$root/bin" "$root/sbin" "$root/usr/bin" "$root/usr/sbin"
    cp "$busybox_bin" "$root/bin/busybox"
    while read -r applet; do
        [ -n "$applet" ] || continue
        [ -e "$root/$applet" ] || ln -s /bin/busybox "$root/$applet"
    done < <("$busybox_bin" --list-full)
    [ -e "$root/bin/sh" ] || ln -s /bin/busybox "$root/bin/sh"
}

# --- 1. initramfs ------------------------------------------------------------
initramfs=$work/initramfs
mkdir -p "$initramfs/etc" "$initramfs/lib/modules" "$initramfs/proc" "$initramfs/sys" \
    "$initramfs/dev" "$initramfs/newroot"
install_busybox "$initramfs"
cp "$guest/initramfs/init" "$initramfs/init"
chmod 0755 "$initramfs/init"

# Depth-first over modinfo's "depends" (and the crc32c soft dependency of
# ext4 is listed explicitly in guest/modules), emitting each module after its
# dependencies, once.
declare -A seen=()
order=()
add_module() {
    local mod=$1 args=$2 path deps dep
    mod=${mod//-/_}
    [ -z "${seen[$mod]:-}" ] || return 0
    seen[$mod]=1
    if ! path=$(modinfo -k "$kver" -n "$mod" 2>/dev/null); then
        log "module $mod not found for $kver, skipped"
        return 0
    fi
    case "$path" in
        /*) ;;
        *) return 0 ;; # "(builtin)"
    esac
    deps=$(modinfo -k "$kver" -F depends "$mod" 2>/dev/null || true)
    for dep in ${deps//,/ }; do
        add_module "$dep" ""
    done
    case "$path" in
        *.ko.xz) xz -dc "$path" > "$initramfs/lib/modules/$mod.ko" ;;
        *.ko.zst) zstd -qdc "$path" > "$initramfs/lib/modules/$mod.ko" ;;
        *.ko.gz) gzip -dc "$path" > "$initramfs/lib/modules/$mod.ko" ;;
        *.ko) cp "$path" "$initramfs/lib/modules/$mod.ko" ;;
        *) die "unknown module format: $path" ;;
    esac
    order+=("$mod${args:+ $args}")
}
while read -r mod args; do
    case "$mod" in '' | '#'*) continue ;; esac
    add_module "$mod" "$args"
done < "$guest/modules"
printf '%s\n' "${order[@]}" > "$initramfs/etc/modules.order"
log "modules: $(tr '\n' ' ' < "$initramfs/etc/modules.order")"

(cd "$initramfs" && find . -print0 | LC_ALL=C sort -z |
    cpio --null -o -H newc -R 0:0 --quiet) | gzip -9n > "$work/initrd.gz"

# --- 2. FAT /boot partition ---------------------------------------------------
boot_mib=32
root_mib=256
boot_start=2048                               # sectors (1 MiB)
boot_sectors=$((boot_mib * 2048))
root_start=$((boot_start + boot_sectors))
root_sectors=$((root_mib * 2048))
disk_sectors=$((root_start + root_sectors))

boot_img=$work/boot.img
mkfs.vfat -C -n VDCBOOT -h "$boot_start" "$boot_img" $((boot_mib * 1024)) >/dev/null
mcopy -i "$boot_img" "$kernel" ::/vmlinuz
mcopy -i "$boot_img" "$work/initrd.gz" ::/initrd.gz
mcopy -i "$boot_img" "$guest/syslinux.cfg" ::/syslinux.cfg
syslinux --install "$boot_img"

# --- 3. ext4 root partition --------------------------------------------------
rootfs=$work/rootfs
mkdir -p "$rootfs"
install_busybox "$rootfs"
cp -R "$guest/rootfs/." "$rootfs/"
for src in "$guest"/src/*.c; do
    [ -e "$src" ] || continue
    prog=$(basename "$src" .c)
    gcc -static -O2 -s -Wall -Wextra -Werror -o "$rootfs/bin/$prog" "$src" ||
        die "cannot compile $src (needs gcc and libc6-dev)"
done
mkdir -p "$rootfs/proc" "$rootfs/sys" "$rootfs/dev" "$rootfs/run" "$rootfs/tmp" \
    "$rootfs/data" "$rootfs/root" "$rootfs/mnt"
chmod 1777 "$rootfs/tmp"
chmod 0700 "$rootfs/root"
root_img=$work/root.img
mkfs.ext4 -q -F -L vdc-root -E root_owner=0:0 -d "$rootfs" "$root_img" "${root_mib}M" >&2

# --- 4. raw disk -----------------------------------------------------------
raw=$work/disk.raw
truncate -s $((disk_sectors * 512)) "$raw"
sfdisk --quiet "$raw" >/dev/null <<EOF
label: dos
start=$boot_start, size=$boot_sectors, type=e, bootable
start=$root_start, size=$root_sectors, type=83
EOF
dd if="$boot_img" of="$raw" bs=1M seek=$((boot_start / 2048)) conv=notrunc,sparse status=none
dd if="$root_img" of="$raw" bs=1M seek=$((root_start / 2048)) conv=notrunc,sparse status=none
mbr=/usr/lib/syslinux/mbr/mbr.bin
[ -r "$mbr" ] || die "no $mbr (install syslinux-common)"
dd if="$mbr" of="$raw" bs=440 count=1 conv=notrunc status=none

# --- 5. qcow2, atomically into place -------------------------------------------
tmp_out=$work/$name.tmp
qemu-img convert -q -O qcow2 "$raw" "$tmp_out"
chmod 0644 "$tmp_out"
mv -f "$tmp_out" "$out"
link_latest
log "built $out ($(du -k "$out" | cut -f1) KiB)"
echo "$out"
