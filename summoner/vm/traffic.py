"""Whether a guest is in use, read from outside it.

A ready VM is idle when it has had no DNS query and no guest network traffic
for its idle timeout (``summoner.vm.reaper``).  Traffic is read per network
mode: in bridge mode the tap's counters (``Backend.traffic`` returns them);
in user mode QEMU's connection table (HMP ``info usernet``) plus the host's
TCP sockets at the forwarded address (slirp forgets a finished connection at
once; the host keeps it in TIME_WAIT).  This module parses those and decides
whether two looks show use.

Tests: tests/vm/test_traffic.py
"""

from __future__ import annotations

import socket
import struct
import xml.etree.ElementTree as ET

import libvirt

from summoner.vm.backend import TrafficToken


def parse_usernet(text: str) -> tuple[str, ...]:
    """Connections in QEMU's slirp table (HMP ``info usernet``), minus the
    listening host-forward sockets: what is talking to the guest right now."""
    rows = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("Hub", "Protocol", "VLAN")) or "HOST_FORWARD" in line:
            continue
        if line.startswith(("TCP", "UDP")):
            rows.append(" ".join(line.split()))
    return tuple(sorted(rows))


_TCP_STATES = {1: "ESTABLISHED", 2: "SYN_SENT", 3: "SYN_RECV", 4: "FIN_WAIT_1", 5: "FIN_WAIT_2",
               6: "TIME_WAIT", 7: "CLOSED", 8: "CLOSE_WAIT", 9: "LAST_ACK", 10: "LISTEN", 11: "CLOSING"}


def _proc_endpoint(text: str) -> tuple[str, int]:
    """``0100007F:1F90`` (address in host byte order) -> ("127.0.0.1", 8080)."""
    address, _, port = text.partition(":")
    return socket.inet_ntoa(struct.pack("=I", int(address, 16))), int(port, 16)


def parse_proc_net_tcp(text: str, endpoints: set[tuple[str, int]]) -> dict[tuple[str, int], tuple[str, ...]]:
    """The host's TCP sockets (``/proc/net/tcp``) with one end at one of
    ``endpoints``, listeners left out, as ``TCP[STATE] host LOCAL REMOTE``
    rows per endpoint.  In user mode every client connection to a guest is a
    loopback connection to QEMU's forwarded (address, port), and the side
    that closes first stays in TIME_WAIT for 60 s: a connection that came and
    went between two looks is still there to see (slirp's own table drops it
    at once)."""
    found: dict[tuple[str, int], list[str]] = {}
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 4:
            continue
        try:
            local, remote, state = _proc_endpoint(fields[1]), _proc_endpoint(fields[2]), int(fields[3], 16)
        except (ValueError, struct.error, OSError):
            continue
        if state == 10:
            continue  # QEMU's listening socket of the port forward
        for end in (local, remote):
            if end in endpoints:
                found.setdefault(end, []).append(
                    f"TCP[{_TCP_STATES.get(state, state)}] host {local[0]}:{local[1]} {remote[0]}:{remote[1]}")
    return {end: tuple(sorted(rows)) for end, rows in found.items()}


def host_connections(endpoints: set[tuple[str, int]]) -> dict[tuple[str, int], tuple[str, ...]]:
    try:
        with open("/proc/net/tcp") as f:
            text = f.read()
    except OSError:
        return {}
    return parse_proc_net_tcp(text, endpoints)


# slirp keeps closed connections in its table for a while; they are not use.
_CLOSING = ("TCP[TIME_WAIT]", "TCP[CLOSED]", "TCP[CLOSING]", "TCP[LAST_ACK]", "TCP[FIN_WAIT_2]")


def traffic_seen(mode: str, before: TrafficToken | None, now: TrafficToken) -> bool:
    """Whether two activity tokens (see ``Backend.traffic``) show use.

    bridge: the interface counters moved.  user: a connection is open (an
    idle but open connection is a client still using the service), or one
    appeared since the last look (it may have come and gone in between).
    """
    if before is None:
        return False  # first look: nothing to compare with
    if mode != "user":
        return now != before
    rows = set(now)
    return any(not row.startswith(_CLOSING) for row in rows) or bool(rows - set(before))


# -- read on libvirt's worker thread (LibvirtBackend.traffic) --------------------


def tap_counters(dom: libvirt.virDomain) -> tuple[int, ...]:
    """A bridge-mode domain's tap counters: rx bytes, rx packets, tx bytes, tx packets."""
    root = ET.fromstring(dom.XMLDesc(0))
    totals = [0, 0, 0, 0]
    for target in root.iterfind("devices/interface/target"):
        dev = target.get("dev")
        if dev:
            rx_bytes, rx_packets, _e, _d, tx_bytes, tx_packets, _e2, _d2 = dom.interfaceStats(dev)
            for i, v in enumerate((rx_bytes, rx_packets, tx_bytes, tx_packets)):
                totals[i] += v
    return tuple(totals)


def usernet_rows(dom: libvirt.virDomain) -> tuple[str, ...]:
    """A user-mode domain's slirp connection table (HMP ``info usernet``)."""
    import libvirt_qemu
    text = libvirt_qemu.qemuMonitorCommand(dom, "info usernet",
                                           libvirt_qemu.VIR_DOMAIN_QEMU_MONITOR_COMMAND_HMP)
    return parse_usernet(text)
