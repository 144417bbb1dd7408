#!/bin/sh
# Start libvirt's daemons for summoner (idempotent).
#
# Debian containers and CI runners have no systemd, so the daemons are started
# directly.  Safe to run again: a daemon already running is left alone.  Exits
# once `virsh -c qemu:///system version` answers, or fails after ~30 s.
set -eu

URI="${LIBVIRT_URI:-qemu:///system}"

mkdir -p /var/log/libvirt /var/log/libvirt/qemu /var/run/libvirt /var/lib/libvirt

# /dev/kvm: without udev (containers, fresh CI hosts) the node stays root:root
# 0600, so QEMU, which libvirt runs as libvirt-qemu, cannot open it.  libvirt
# 9.0 then finds its cached QEMU capabilities (which say KVM) stale and
# re-probes QEMU on every API call: a domain start takes ~44 s instead of
# ~0.5 s.  Give the node what Debian's udev rule gives it (GROUP="kvm",
# MODE="0660"), and never more; a node the QEMU user can already use is left
# as it is.
QEMU_USER="${LIBVIRT_QEMU_USER:-libvirt-qemu}"
if [ -c /dev/kvm ] && getent group kvm >/dev/null 2>&1 && id "$QEMU_USER" >/dev/null 2>&1; then
    if ! runuser -u "$QEMU_USER" -- test -r /dev/kvm -a -w /dev/kvm; then
        before=$(stat -c '%U:%G %a' /dev/kvm)
        chgrp kvm /dev/kvm
        chmod 0660 /dev/kvm
        echo "start-libvirt: /dev/kvm was $before, unusable by $QEMU_USER; set to root:kvm 0660 as Debian's udev rule would"
    fi
fi

# The images: QEMU opens kernels, initrds and disks as $QEMU_USER, so every
# directory above them must be searchable by it.  A checkout under a private
# directory (mktemp -d makes 0700 ones, so do home directories) is not, and
# every boot then fails with "could not open kernel file: Permission
# denied".  Grant that user search permission (x, nothing else) on each such
# directory with an ACL, as virt-manager offers to; the ACL tools come from
# scripts/install.sh (package acl).
PROJECT=$(cd "$(dirname "$0")/.." && pwd)
if id "$QEMU_USER" >/dev/null 2>&1 && command -v setfacl >/dev/null 2>&1; then
    # From / down, so that only a directory that is itself closed gets the ACL.
    old_ifs=$IFS; IFS=/; set -- $PROJECT; IFS=$old_ifs
    dir=""
    for part in "$@"; do
        [ -n "$part" ] || continue
        dir="$dir/$part"
        if ! runuser -u "$QEMU_USER" -- test -x "$dir"; then
            setfacl -m "u:$QEMU_USER:x" "$dir"
            echo "start-libvirt: $QEMU_USER could not search $dir (QEMU opens the images below it); granted it x by ACL"
        fi
    done
fi

if ! pgrep -x virtlogd >/dev/null 2>&1; then
    virtlogd -d
fi
if ! pgrep -x libvirtd >/dev/null 2>&1; then
    libvirtd -d
fi

i=0
until virsh -c "$URI" version >/dev/null 2>&1; do
    i=$((i + 1))
    if [ "$i" -ge 150 ]; then
        echo "start-libvirt: libvirtd did not answer on $URI after 30 s" >&2
        virsh -c "$URI" version >&2 || true
        exit 1
    fi
    sleep 0.2
done
echo "start-libvirt: libvirtd is up ($URI)"
