"""On-demand hosts declared in zone files.

An on-demand host is the owner of an A (and/or AAAA) record plus a TXT record
at ``_summoner.<host>`` whose strings are ``key=value`` pairs::

    hello            IN A    127.0.0.10
    _summoner.hello  IN TXT  "image=hello" "idle=120"

Plain master-file syntax, so ``named-checkzone`` accepts it and the binding
lives next to the name where admins already edit.  ``split_on_demand`` takes
the declarations out of the zones: the static stage no longer answers the
host's addresses (the on-demand stage does, once the VM is ready) nor the
``_summoner`` TXT, which is configuration and not data to publish.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from dnslib import QTYPE, RR

from summoner.images import STOP_MODES
from summoner.zonefile import ZoneError

LABEL = "_summoner"
INT_KEYS = {"memory": (16, 1 << 20), "vcpus": (1, 64), "port": (1, 65535), "ttl": (0, 86400)}
FLOAT_KEYS = {"idle": (0.0, 7 * 86400.0), "boot_timeout": (0.1, 3600.0)}
KEYS = {"image", "stop", "probe_path", *INT_KEYS, *FLOAT_KEYS}


@dataclass(frozen=True)
class OnDemandHost:
    """One name whose address answers come from a summoned VM."""

    name: str                       # lower-case key, no trailing dot: hello.example.org
    zone: str                       # origin key of the zone it came from
    image: str
    address: str                    # the IPv4 address QEMU forwards (user) or the guest has (bridge)
    records: tuple[RR, ...]         # the A/AAAA records to answer with
    soa: RR                         # for NODATA answers on the host name
    negative_ttl: int
    location: str                   # file:line of the _summoner TXT, for messages
    memory_mib: int | None = None
    vcpus: int | None = None
    idle: float | None = None
    stop: str | None = None
    boot_timeout: float | None = None
    probe_path: str | None = None
    port: int | None = None
    ttl: int | None = None
    extra: dict[str, str] = field(default_factory=dict, compare=False)

    def records_of(self, qtype: int) -> list[RR]:
        return [rr for rr in self.records if rr.rtype == qtype]

    def fingerprint(self) -> str:
        """Changes whenever something that shapes the VM changes."""
        parts = [self.name, self.image, self.address, repr(self.memory_mib), repr(self.vcpus),
                 repr(self.port), repr(self.probe_path)]
        return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]


def _txt_strings(rr: RR) -> list[str]:
    out = []
    for item in rr.rdata.data:
        text = item.decode("utf-8", "replace") if isinstance(item, bytes) else str(item)
        out.extend(text.split())
    return out


def _foreign(key: str) -> bool:
    """Keys other parts read (Arrowhead publishing: ``arrowhead=off``,
    ``arrowhead-service=``, ``arrowhead-uri=``, ``meta.KEY=``); kept in
    ``OnDemandHost.extra`` unchecked."""
    return key == "arrowhead" or key.startswith(("arrowhead-", "meta."))


def _parse_pairs(strings: list[str], where: str, problems: list[str]) -> dict[str, Any]:
    values: dict[str, Any] = {"extra": {}}
    for token in strings:
        key, sep, value = token.partition("=")
        key = key.strip().lower()
        if not sep or not key:
            problems.append(f"{where}: expected key=value, got {token!r}")
            continue
        if _foreign(key):
            values["extra"][key] = value
            continue
        if key not in KEYS:
            problems.append(f"{where}: unknown key {key!r} (known: {', '.join(sorted(KEYS))})")
            continue
        if key in values:
            problems.append(f"{where}: {key} given twice")
            continue
        if key in INT_KEYS:
            low, high = INT_KEYS[key]
            if not value.isdigit() or not low <= int(value) <= high:
                problems.append(f"{where}: {key}={value!r} must be an integer in [{low}, {high}]")
                continue
            values[key] = int(value)
        elif key in FLOAT_KEYS:
            low, high = FLOAT_KEYS[key]
            try:
                number = float(value)
            except ValueError:
                number = float("nan")
            if not low <= number <= high:
                problems.append(f"{where}: {key}={value!r} must be a number of seconds in [{low:g}, {high:g}]")
                continue
            values[key] = number
        elif key == "stop":
            if value not in STOP_MODES:
                problems.append(f"{where}: stop={value!r} must be one of {', '.join(STOP_MODES)}")
                continue
            values[key] = value
        elif key == "probe_path":
            if not value.startswith("/") or any(c in value for c in " \r\n"):
                problems.append(f"{where}: probe_path={value!r} must be an absolute path without spaces")
                continue
            values[key] = value
        elif key == "image":
            if not value:
                problems.append(f"{where}: image= is empty")
                continue
            values[key] = value
    return values


def split_on_demand(zones: Iterable[Any], images: Mapping[str, Any] | None = None,
                    network: str = "user") -> tuple[list[Any], list[OnDemandHost]]:
    """Take on-demand declarations out of ``zones``.

    Returns the zones without the ``_summoner`` TXT records and without the
    hosts' A/AAAA records (their other record types stay static), and the
    hosts.  ``images`` (name → manifest), when given, is checked for the image
    names.  Raises ``ZoneError`` listing every ``file:line: reason`` found.
    """
    problems: list[str] = []
    hosts: list[OnDemandHost] = []
    out_zones: list[Any] = []
    seen_endpoints: dict[tuple[str, int | None], str] = {}
    prefix = LABEL + "."
    for zone in zones:
        declared: dict[str, list[RR]] = {}
        for key, rrs in zone.records.items():
            if key.startswith(prefix):
                txts = [rr for rr in rrs if rr.rtype == QTYPE.TXT]
                if txts:
                    declared[key[len(prefix):]] = txts
        if not declared:
            out_zones.append(zone)
            continue
        remove_txt = {prefix + host for host in declared}
        remove_addr: set[str] = set()
        for host_key, txts in sorted(declared.items()):
            where = zone.location(prefix + host_key, QTYPE.TXT)
            strings = [s for rr in txts for s in _txt_strings(rr)]
            values = _parse_pairs(strings, where, problems)
            if "image" not in values:
                if not any(p.startswith(where) for p in problems):
                    problems.append(f"{where}: on-demand declaration for {host_key} has no image=NAME")
                continue
            if host_key.startswith("*"):
                problems.append(f"{where}: on-demand hosts cannot be wildcards ({host_key})")
                continue
            if images is not None and values["image"] not in images:
                known = ", ".join(sorted(images)) or "none found"
                problems.append(f"{where}: unknown image {values['image']!r} (images: {known})")
                continue
            records = [rr for rr in zone.records.get(host_key, []) if rr.rtype in (QTYPE.A, QTYPE.AAAA)]
            v4 = [str(rr.rdata) for rr in records if rr.rtype == QTYPE.A]
            v6 = [rr for rr in records if rr.rtype == QTYPE.AAAA]
            if not v4:
                problems.append(f"{where}: on-demand host {host_key} needs an A record "
                                f"(the address the service is reachable at)")
                continue
            if len(v4) > 1:
                problems.append(f"{zone.location(host_key, QTYPE.A)}: on-demand host {host_key} has "
                                f"{len(v4)} A records; one VM has one address")
                continue
            address = v4[0]
            if network == "user":
                if not ipaddress.IPv4Address(address).is_loopback:
                    problems.append(f"{zone.location(host_key, QTYPE.A)}: {host_key} A {address} is not in "
                                    f"127.0.0.0/8, which --network user needs (QEMU forwards that address)")
                    continue
                if v6:
                    problems.append(f"{zone.location(host_key, QTYPE.AAAA)}: {host_key} has an AAAA record, "
                                    f"but --network user forwards IPv4 loopback only; use --network bridge")
                    continue
            endpoint = (address, values.get("port"))
            if endpoint in seen_endpoints:
                problems.append(f"{where}: {host_key} uses address {address} already used by "
                                f"{seen_endpoints[endpoint]}")
                continue
            seen_endpoints[endpoint] = host_key
            remove_addr.add(host_key)
            hosts.append(OnDemandHost(
                name=host_key, zone=zone.origin, image=values["image"], address=address,
                records=tuple(records), soa=zone.soa, negative_ttl=zone.negative_ttl,
                location=where,
                memory_mib=values.get("memory"), vcpus=values.get("vcpus"), idle=values.get("idle"),
                stop=values.get("stop"), boot_timeout=values.get("boot_timeout"),
                probe_path=values.get("probe_path"), port=values.get("port"), ttl=values.get("ttl"),
                extra=values["extra"],
            ))
        stripped = zone.without(remove_txt, {QTYPE.TXT})
        stripped = stripped.without(remove_addr, {QTYPE.A, QTYPE.AAAA})
        out_zones.append(stripped)
    if problems:
        raise ZoneError(problems)
    return out_zones, hosts
