#!/usr/bin/env bash
# Installs everything summoner needs on a fresh Debian 12 machine (run as root):
# system packages, then a virtualenv in .venv with summoner and its test tools.
set -euo pipefail
cd "$(dirname "$0")/.."

PACKAGES=(
  # virtualization: libvirtd + QEMU, and the headers libvirt-python builds against
  qemu-system-x86 qemu-utils libvirt-daemon-system libvirt-dev dnsmasq-base pkg-config
  # building the guest kernel and the unikernel images
  linux-source-6.1 build-essential flex bison bc libelf-dev libssl-dev musl-tools cpio lz4 busybox-static
  # aarch64 guests: the cross compiler and static glibc for the kernel and images, QEMU's aarch64 emulator
  gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-system-arm
  # ip and ss: bridge-mode tests build network namespaces, the workers tests read sockets
  iproute2
  # DNS clients and reference tools used by tests and benchmarks
  bind9-utils bind9-dnsutils knot-dnsutils dnsperf nsd prometheus
  # a real recursive resolver in front of two summoners (tests/vm/test_federation.py)
  unbound
  # virt-xml-validate needs xmllint; the Arrowhead TLS tests write legacy keystores with openssl
  libxml2-utils openssl
  # setfacl: start-libvirt.sh lets QEMU's user reach images in a checkout under a private directory
  acl
  # systemd-analyze verifies deploy/summoner.service (systemd need not be running)
  systemd
  python3-venv curl
)

missing=()
for package in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
if ((${#missing[@]})); then
  echo "installing system packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # nsd, unbound and prometheus start services on install; policy-rc.d keeps them off
  # (the benchmark starts its own NSD on loopback, prometheus is only for promtool).
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
  trap 'rm -f /usr/sbin/policy-rc.d' EXIT
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[test]'
echo "summoner installed: $(.venv/bin/summoner --version)"
