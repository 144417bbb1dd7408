#!/bin/sh
# Start libvirt's daemons for summoner (idempotent).
#
# Debian containers and CI runners have no systemd, so the daemons are started
# directly.  Safe to run again: a daemon already running is left alone.  Exits
# once `virsh -c qemu:///system version` answers, or fails after ~30 s.
set -eu

URI="${LIBVIRT_URI:-qemu:///system}"

mkdir -p /var/log/libvirt /var/log/libvirt/qemu /var/run/libvirt /var/lib/libvirt

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
