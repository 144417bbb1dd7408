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

Tests: tests/vm/test_hosts.py
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from dnslib import QTYPE, RR

from summoner.images import ARCHES, STOP_MODES, ImageManifest, build_for_arch, host_arch
from summoner.zonefile import Zone, ZoneError

LABEL = "_summoner"
INT_KEYS = {"memory": (16, 1 << 20), "vcpus": (1, 64), "port": (1, 65535), "ttl": (0, 86400)}
FLOAT_KEYS = {"idle": (0.0, 7 * 86400.0), "boot_timeout": (0.1, 3600.0)}
KEYS = {"image", "arch", "stop", "probe_path", *INT_KEYS, *FLOAT_KEYS}


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
    address6: str | None = None     # bridge mode: the IPv6 address the guest is given (its AAAA record)

    def records_of(self, qtype: int) -> list[RR]:
        return [rr for rr in self.records if rr.rtype == qtype]

    def fingerprint(self) -> str:
        """Changes whenever something that shapes the VM changes."""
        parts = [self.name, self.image, self.address, repr(self.memory_mib), repr(self.vcpus),
                 repr(self.port), repr(self.probe_path)]
        if self.address6 is not None:  # only when set: IPv4-only hosts keep their fingerprint
            parts.append(self.address6)
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


class _DeclarationError(Exception):
    """One ``file:line: reason`` for ZoneError, raised by a check below."""


def _int_value(key: str, value: str, where: str) -> int:
    low, high = INT_KEYS[key]
    if not value.isdigit() or not low <= int(value) <= high:
        raise _DeclarationError(f"{where}: {key}={value!r} must be an integer in [{low}, {high}]")
    return int(value)


def _seconds_value(key: str, value: str, where: str) -> float:
    low, high = FLOAT_KEYS[key]
    try:
        number = float(value)
    except ValueError:
        number = float("nan")
    if not low <= number <= high:
        raise _DeclarationError(f"{where}: {key}={value!r} must be a number of seconds in [{low:g}, {high:g}]")
    return number


def _stop_value(key: str, value: str, where: str) -> str:
    if value not in STOP_MODES:
        raise _DeclarationError(f"{where}: stop={value!r} must be one of {', '.join(STOP_MODES)}")
    return value


def _path_value(key: str, value: str, where: str) -> str:
    if not value.startswith("/") or any(c in value for c in " \r\n"):
        raise _DeclarationError(f"{where}: probe_path={value!r} must be an absolute path without spaces")
    return value


def _image_value(key: str, value: str, where: str) -> str:
    if not value:
        raise _DeclarationError(f"{where}: image= is empty")
    return value


def _arch_value(key: str, value: str, where: str) -> str:
    if value not in ARCHES:
        raise _DeclarationError(f"{where}: arch={value} must be one of {', '.join(ARCHES)}")
    return value


_CHECKS: dict[str, Callable[[str, str, str], int | float | str]] = {
    **dict.fromkeys(INT_KEYS, _int_value), **dict.fromkeys(FLOAT_KEYS, _seconds_value),
    "stop": _stop_value, "probe_path": _path_value, "image": _image_value, "arch": _arch_value,
}


def _parse_pair(token: str, where: str, values: dict[str, int | float | str], extra: dict[str, str]) -> None:
    """One ``key=value`` into ``values`` (or ``extra``); _DeclarationError if it is wrong."""
    key, sep, value = token.partition("=")
    key = key.strip().lower()
    if not sep or not key:
        raise _DeclarationError(f"{where}: expected key=value, got {token!r}")
    if _foreign(key):
        extra[key] = value
        return
    if key not in KEYS:
        raise _DeclarationError(f"{where}: unknown key {key!r} (known: {', '.join(sorted(KEYS))})")
    if key in values:
        raise _DeclarationError(f"{where}: {key} given twice")
    values[key] = _CHECKS[key](key, value, where)


def _parse_pairs(strings: list[str], where: str,
                 problems: list[str]) -> tuple[dict[str, int | float | str], dict[str, str]]:
    """The checked values by key, and the foreign keys' values unchecked."""
    values: dict[str, int | float | str] = {}
    extra: dict[str, str] = {}
    for token in strings:
        try:
            _parse_pair(token, where, values, extra)
        except _DeclarationError as problem:
            problems.append(str(problem))
    return values, extra


def _declarations(zone: Zone) -> dict[str, list[RR]]:
    """Host key → its ``_summoner`` TXT records."""
    prefix = LABEL + "."
    declared: dict[str, list[RR]] = {}
    for key, rrs in zone.records.items():
        if key.startswith(prefix):
            txts = [rr for rr in rrs if rr.rtype == QTYPE.TXT]
            if txts:
                declared[key[len(prefix):]] = txts
    return declared


def _check_image(host_key: str, image: str, where: str, images: Mapping[str, ImageManifest] | None) -> None:
    if host_key.startswith("*"):
        raise _DeclarationError(f"{where}: on-demand hosts cannot be wildcards ({host_key})")
    if images is not None and image not in images:
        known = ", ".join(sorted(images)) or "none found"
        raise _DeclarationError(f"{where}: unknown image {image!r} (images: {known})")


def image_for(name: str, arch: str | None, images: Mapping[str, ImageManifest] | None) -> str:
    """The image a host boots: ``name`` if it is built for ``arch`` (default
    this host's), else ``name-arch`` if that image is; without ``arch``, a
    ``name`` of another architecture (no native build beside it) is taken as
    named.  Raises _DeclarationError for an ``arch`` no image has."""
    if arch is not None and arch not in ARCHES:
        raise _DeclarationError(f"arch={arch} must be one of {', '.join(ARCHES)}")
    if images is None:
        return name
    found = build_for_arch(name, arch or host_arch(), images)
    if found is not None:
        return found
    if arch is not None:
        raise _DeclarationError(f"image {name!r} has no {arch} build: neither {name} nor {name}-{arch} is an "
                                f"{arch} image (build it: summoner image build {name}-{arch})")
    return name


def _check_virt_type(host_key: str, image: str, virt_type: str, images: Mapping[str, ImageManifest] | None) -> None:
    if virt_type != "kvm" or images is None or image not in images:
        return
    arch = images[image].boot.arch
    if arch != host_arch():
        raise _DeclarationError(f"{host_key}: image {image} is {arch}, this host is {host_arch()}: KVM runs only "
                                f"guests of the host's architecture; use --virt-type auto or qemu (TCG)")


def _address_records(zone: Zone, host_key: str, where: str, network: str) -> tuple[str, str | None, list[RR]]:
    """The host's one IPv4 address, its IPv6 address if any, and its A/AAAA records."""
    records = [rr for rr in zone.records.get(host_key, []) if rr.rtype in (QTYPE.A, QTYPE.AAAA)]
    v4 = [str(rr.rdata) for rr in records if rr.rtype == QTYPE.A]
    v6 = [rr for rr in records if rr.rtype == QTYPE.AAAA]
    if not v4:
        raise _DeclarationError(f"{where}: on-demand host {host_key} needs an A record "
                       f"(the address the service is reachable at)")
    if len(v4) > 1:
        raise _DeclarationError(f"{zone.location(host_key, QTYPE.A)}: on-demand host {host_key} has "
                       f"{len(v4)} A records; one VM has one address")
    address = v4[0]
    if network == "user":
        if not ipaddress.IPv4Address(address).is_loopback:
            raise _DeclarationError(f"{zone.location(host_key, QTYPE.A)}: {host_key} A {address} is not in "
                           f"127.0.0.0/8, which --network user needs (QEMU forwards that address)")
        if v6:
            raise _DeclarationError(f"{zone.location(host_key, QTYPE.AAAA)}: {host_key} has an AAAA record, "
                           f"but --network user forwards IPv4 loopback only; use --network bridge")
    if len(v6) > 1:
        raise _DeclarationError(f"{zone.location(host_key, QTYPE.AAAA)}: on-demand host {host_key} has "
                       f"{len(v6)} AAAA records; one VM has one address of each family")
    return address, str(v6[0].rdata) if v6 else None, records


def _check_ipv6(host_key: str, image: str, address6: str | None, zone: Zone,
                images: Mapping[str, ImageManifest] | None) -> None:
    """An AAAA is answered only for a guest that gets its address: the image must configure it."""
    if address6 is None or images is None or image not in images:
        return
    if images[image].network.ipv6_config == "none":
        raise _DeclarationError(f"{zone.location(host_key, QTYPE.AAAA)}: {host_key} has AAAA {address6}, but "
                       f"image {image!r} does not configure IPv6 ([network] ipv6_config is \"none\"), so "
                       f"nothing would listen there; remove the AAAA or use an image with "
                       f"ipv6_config = \"kernel-cmdline\"")


def _host(zone: Zone, host_key: str, txts: list[RR], images: Mapping[str, ImageManifest] | None, network: str,
          virt_type: str, problems: list[str]) -> OnDemandHost | None:
    """The declaration of ``host_key``, or None with its problems added."""
    where = zone.location(LABEL + "." + host_key, QTYPE.TXT)
    strings = [s for rr in txts for s in _txt_strings(rr)]
    values, extra = _parse_pairs(strings, where, problems)
    if "image" not in values:
        if not any(p.startswith(where) for p in problems):
            problems.append(f"{where}: on-demand declaration for {host_key} has no image=NAME")
        return None
    try:
        arch = values.get("arch")
        try:
            image = image_for(str(values["image"]), str(arch) if arch is not None else None, images)
            _check_virt_type(host_key, image, virt_type, images)
        except _DeclarationError as problem:
            raise _DeclarationError(f"{where}: {problem}") from None
        _check_image(host_key, image, where, images)
        address, address6, records = _address_records(zone, host_key, where, network)
        _check_ipv6(host_key, image, address6, zone, images)
    except _DeclarationError as problem:
        problems.append(str(problem))
        return None
    return OnDemandHost(
        name=host_key, zone=zone.origin, image=image, address=address,
        records=tuple(records), soa=zone.soa, negative_ttl=zone.negative_ttl,
        location=where,
        memory_mib=values.get("memory"), vcpus=values.get("vcpus"), idle=values.get("idle"),
        stop=values.get("stop"), boot_timeout=values.get("boot_timeout"),
        probe_path=values.get("probe_path"), port=values.get("port"), ttl=values.get("ttl"),
        extra=extra, address6=address6,
    )


def split_on_demand(zones: Iterable[Zone], images: Mapping[str, ImageManifest] | None = None,
                    network: str = "user", virt_type: str = "auto") -> tuple[list[Zone], list[OnDemandHost]]:
    """Take on-demand declarations out of ``zones``.

    Returns the zones without the ``_summoner`` TXT records and without the
    hosts' A/AAAA records (their other record types stay static), and the
    hosts.  ``images`` (name → manifest), when given, is checked for the image
    names.  Raises ``ZoneError`` listing every ``file:line: reason`` found.
    """
    problems: list[str] = []
    hosts: list[OnDemandHost] = []
    out_zones: list[Zone] = []
    seen_endpoints: dict[tuple[str, int | None], str] = {}
    for zone in zones:
        declared = _declarations(zone)
        if not declared:
            out_zones.append(zone)
            continue
        remove_addr: set[str] = set()
        for host_key, txts in sorted(declared.items()):
            host = _host(zone, host_key, txts, images, network, virt_type, problems)
            if host is None:
                continue
            endpoint = (host.address, host.port)
            if endpoint in seen_endpoints:
                problems.append(f"{host.location}: {host_key} uses address {host.address} already used by "
                                f"{seen_endpoints[endpoint]}")
                continue
            seen_endpoints[endpoint] = host_key
            remove_addr.add(host_key)
            hosts.append(host)
        stripped = zone.without({LABEL + "." + host for host in declared}, {QTYPE.TXT})
        stripped = stripped.without(remove_addr, {QTYPE.A, QTYPE.AAAA})
        out_zones.append(stripped)
    if problems:
        raise ZoneError(problems)
    return out_zones, hosts
