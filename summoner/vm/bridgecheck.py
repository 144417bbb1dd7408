"""``summoner doctor``'s checks of the host network for ``--network bridge``.

What README "Bridge mode" asks the operator to set up, read back from the
kernel (``/sys/class/net``, ``/proc/sys``, ``ip -json addr``): the bridge
exists and is up; the gateway given to guests is on the segment (on the
bridge itself when this host routes for them); and when this host is that
gateway, it forwards the family, or the guests reach only the segment.

Tests: tests/vm/test_bridge.py (in the namespaces it creates), tests/test_doctor.py
"""

from __future__ import annotations

import ipaddress
import json
import subprocess
from pathlib import Path

from summoner.vm.config import OnDemandConfig
from summoner.vm.doctor import Finding, Level

SYS_NET = Path("/sys/class/net")
PROC_SYS = Path("/proc/sys/net")
IFF_UP = 0x1


def bridge_addresses(bridge: str) -> list[ipaddress.IPv4Interface | ipaddress.IPv6Interface] | None:
    """The bridge's addresses with their prefixes; None when ``ip`` cannot say."""
    try:
        done = subprocess.run(["ip", "-json", "addr", "show", "dev", bridge], capture_output=True, text=True,
                              timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if done.returncode != 0:
        return None
    found = []
    for link in json.loads(done.stdout or "[]"):
        for info in link.get("addr_info", []):
            found.append(ipaddress.ip_interface(f"{info['local']}/{info['prefixlen']}"))
    return found


def _forwarding(family: int) -> str | None:
    path = PROC_SYS / ("ipv4/ip_forward" if family == 4 else "ipv6/conf/all/forwarding")
    try:
        return path.read_text().strip()
    except OSError:
        return None


def check_bridge(config: OnDemandConfig) -> list[Finding]:
    if config.network != "bridge":
        return []
    bridge = config.bridge
    device = SYS_NET / bridge
    if not (device / "bridge").is_dir():
        what = "does not exist" if not device.exists() else "is not a bridge"
        return [Finding("bridge", Level.FAIL, f"{bridge} {what}: guests' taps have nowhere to go",
                        f"ip link add {bridge} type bridge && ip link set {bridge} up (or --bridge NAME)")]
    flags = int((device / "flags").read_text().strip(), 16)
    if not flags & IFF_UP:
        return [Finding("bridge", Level.FAIL, f"{bridge} is down", f"ip link set {bridge} up")]
    addresses = bridge_addresses(bridge) or []
    shown = ", ".join(str(a) for a in addresses) or "no addresses"
    findings = [Finding("bridge", Level.OK, f"{bridge} is up ({shown})")]
    for family, gateway in ((4, config.bridge_gateway), (6, config.bridge_ipv6_gateway)):
        findings.append(_gateway(bridge, family, gateway, addresses))
    return findings


def _gateway(bridge: str, family: int, gateway: str,
             addresses: list[ipaddress.IPv4Interface | ipaddress.IPv6Interface]) -> Finding:
    check = "bridge-gateway" if family == 4 else "bridge-gateway6"
    flag = "--bridge-gateway" if family == 4 else "--bridge-ipv6-gateway"
    if not gateway:
        return Finding(check, Level.OK, f"no {flag}: guests reach the {bridge} segment only (IPv{family})")
    try:
        address = ipaddress.ip_address(gateway)
    except ValueError:
        return Finding(check, Level.FAIL, f"{flag} {gateway} is not an address", f"fix {flag}")
    mine = [a for a in addresses if a.version == family]
    if any(a.ip == address for a in mine):
        return _forwarding_finding(check, family, gateway, bridge)
    if any(address in a.network for a in mine):
        return Finding(check, Level.OK, f"{gateway} is another router on {bridge}'s segment: it routes for guests")
    return Finding(check, Level.WARN, f"{gateway} is neither an address of {bridge} nor on its networks "
                   f"({', '.join(str(a) for a in mine) or f'no IPv{family} address'}): guests cannot reach it",
                   f"ip addr add {gateway}/{'24' if family == 4 else '64'} dev {bridge} if this host routes "
                   f"for the guests, or set {flag} to the segment's router")


def _forwarding_finding(check: str, family: int, gateway: str, bridge: str) -> Finding:
    setting = "net.ipv4.ip_forward" if family == 4 else "net.ipv6.conf.all.forwarding"
    value = _forwarding(family)
    if value == "1":
        return Finding(check, Level.OK, f"{gateway} is {bridge}'s own address and {setting} = 1: this host "
                       f"routes for the guests")
    return Finding(check, Level.WARN, f"{gateway} is {bridge}'s own address, but {setting} = {value}: clients "
                   f"beyond the segment cannot reach the guests (the segment itself can)",
                   f"sysctl -w {setting}=1 (and allow it in the firewall) if they should")
