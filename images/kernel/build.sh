#!/bin/sh
# Build summoner's shared guest kernel from Debian's linux-source-6.1 package:
# tinyconfig + guest.config (+ patches/*.patch) -> build/vmlinux (an ELF with a PVH entry note that
# QEMU boots directly with -kernel).
#
# `build.sh arm64` builds the aarch64 kernel instead, cross-compiled with
# gcc-aarch64-linux-gnu: tinyconfig + guest-arm64.config -> build-arm64/Image
# (the arm64 boot image QEMU's virt machine loads with -kernel), in a source
# tree of its own (a kernel tree holds one configuration at a time).
#
# The result is cached: build/vmlinux is only rebuilt when the hash of the
# inputs (source tarball, config fragment, this script) changes, because a
# kernel build takes minutes on the 2-core CI machines.
#
# Environment: LINUX_TARBALL (default /usr/src/linux-source-6.1.tar.xz),
#              JOBS (default: number of CPUs), FORCE=1 to rebuild anyway.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
arch=${1:-x86_64}
case "$arch" in
    x86_64) build="$here/build"; fragment="$here/guest.config"; output=vmlinux; target=vmlinux
            cross=""; tiny=arch/x86/configs/tiny.config ;;
    arm64|aarch64) arch=arm64; build="$here/build-arm64"; fragment="$here/guest-arm64.config"; output=Image
            target=Image; cross=aarch64-linux-gnu-; tiny="" ;;
    *) echo "build.sh: unknown architecture $arch (x86_64 or arm64)" >&2; exit 2 ;;
esac
if [ -n "$cross" ] && ! command -v "${cross}gcc" >/dev/null 2>&1; then
    echo "build.sh: ${cross}gcc not found; apt-get install gcc-aarch64-linux-gnu (scripts/install.sh does)" >&2
    exit 1
fi
tarball=${LINUX_TARBALL:-/usr/src/linux-source-6.1.tar.xz}
jobs=${JOBS:-$(nproc)}

if [ ! -r "$tarball" ]; then
    echo "build.sh: $tarball not found; apt-get install linux-source-6.1" >&2
    exit 1
fi

mkdir -p "$build"
# Tests, CI and developers may all ask for the kernel at once; two builds in
# one tree corrupt each other, so serialise on a lock (the second caller then
# finds the cache fresh and returns immediately).
if [ -z "${_KERNEL_BUILD_LOCKED:-}" ]; then
    export _KERNEL_BUILD_LOCKED=1
    exec flock "$build/.lock" "$0" "$@"
fi
# Don't inherit a parent make's jobserver or flags (e.g. when run from
# images/Makefile): the kernel build must behave the same however it starts.
unset MAKEFLAGS MFLAGS MAKELEVEL MAKEOVERRIDES
# Hashing the 130 MB tarball costs well under a second, and unlike its mtime
# it also notices a Debian point release that replaced the file in place.
tarsum=$(sha256sum <"$tarball" | cut -c1-64)
# Local patches (patches/*.patch, applied in name order with patch -p1) are
# part of the source identity: changing one means a fresh extraction.
patchsum=$(cat /dev/null "$here"/patches/*.patch 2>/dev/null | sha256sum | cut -c1-64)
inputs=$( (echo "$tarsum $patchsum"; sha256sum <"$fragment"; sha256sum <"$0") | sha256sum | cut -c1-64)

if [ "${FORCE:-0}" != 1 ] && [ -f "$build/$output" ] && [ -f "$build/inputs.sha256" ] \
        && [ "$(cat "$build/inputs.sha256")" = "$inputs" ]; then
    echo "kernel: $(basename "$build")/$output is up to date ($inputs)"
    exit 0
fi

src="$build/src"
if [ ! -f "$src/.extracted" ] || [ "$(cat "$src/.extracted")" != "$tarsum $patchsum" ]; then
    echo "kernel: extracting $tarball"
    rm -rf "$src"
    mkdir -p "$src"
    tar -xJf "$tarball" -C "$src" --strip-components=1
    for p in "$here"/patches/*.patch; do
        [ -e "$p" ] || continue
        echo "kernel: applying $(basename "$p")"
        patch -d "$src" -p1 --quiet --forward <"$p"
    done
    echo "$tarsum $patchsum" >"$src/.extracted"
fi

# Fixed identity strings make the build reproducible (same inputs, same bytes).
export ARCH=$arch
[ -z "$cross" ] || export CROSS_COMPILE=$cross
export KBUILD_BUILD_TIMESTAMP='1970-01-01'
export KBUILD_BUILD_USER=summoner
export KBUILD_BUILD_HOST=summoner
export KBUILD_BUILD_VERSION=1

cd "$src"
# This is `make tinyconfig` with our fragment folded into the same
# allnoconfig pass (merge_config.sh -n): every option the fragment does not
# name stays off.  Merging afterwards with olddefconfig instead would switch on
# everything that defaults to y once its menu appears (IPv6, input devices,
# the i8042 keyboard...), each of which costs boot time.
scripts/kconfig/merge_config.sh -n kernel/configs/tiny.config $tiny "$fragment" >merge_config.log

# merge_config only warns when Kconfig drops an option (unmet dependency);
# a silently missing driver would show up much later as a guest that never
# answers, so fail the build here instead.
missing=0
while IFS= read -r line; do
    case "$line" in
        CONFIG_*=*)
            grep -qx "$line" .config || { echo "kernel: $line did not stick" >&2; missing=1; } ;;
        "# CONFIG_"*" is not set")
            opt=${line#"# "}; opt=${opt%" is not set"}
            grep -q "^$opt=" .config && { echo "kernel: $opt should be off" >&2; missing=1; } ;;
    esac
done <"$fragment"
[ "$missing" = 0 ] || exit 1

start=$(date +%s)
nice -n 10 make -j"$jobs" $target
echo "kernel: $arch built in $(( $(date +%s) - start )) s"

built=vmlinux
[ "$arch" = x86_64 ] || built=arch/$arch/boot/Image
cp .config "$build/config"
cp "$built" "$build/$output.tmp"
mv "$build/$output.tmp" "$build/$output"
echo "$inputs" >"$build/inputs.sha256"
ls -l "$build/$output"
