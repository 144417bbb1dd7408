"""RFC 1035 master files: reading, validating, and the in-memory zone model.

The syntax (tokens, lines, parentheses) is ``summoner.zonesyntax``; one entry
becomes one record in ``summoner.zonerecord``; this module reads the
directives, collects the records of a zone, checks the zone as a whole
(SOA, NS, CNAME rules) and loads a directory of zones.  Every problem is
reported as ``file:line: reason``.

Tests: tests/test_zonefile.py
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from dnslib import QTYPE, RR, DNSBuffer, DNSLabel

from summoner.answer import name_key
from summoner.zonerecord import absolute, parse_record, parse_ttl
from summoner.zonesyntax import Entry, ZoneSyntaxError, tokenize

__all__ = ["ZONE_SUFFIX", "Zone", "ZoneError", "ZoneSet", "load_zone_dir", "parse_ttl",
           "parse_zone_file", "parse_zone_text", "zone_name_for"]

ZONE_SUFFIX = ".zone"


class ZoneError(Exception):
    """One or more ``file:line: reason`` problems with zone files."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass
class Zone:
    origin: str
    path: Path
    soa: RR
    records: dict[str, list[RR]]
    lines: dict[tuple[str, int], int] = field(default_factory=dict)

    @property
    def record_count(self) -> int:
        return sum(len(rrs) for rrs in self.records.values())

    @property
    def negative_ttl(self) -> int:
        """RFC 2308: negative answers live for min(SOA TTL, SOA MINIMUM)."""
        return min(self.soa.ttl, self.soa.rdata.times[4])

    def location(self, key: str, rtype: int) -> str:
        line = self.lines.get((key, rtype))
        return f"{self.path}:{line}" if line else str(self.path)

    def without(self, names: set[str], rtypes: set[int] | None = None) -> Zone:
        """A copy with the records of ``names`` removed (only ``rtypes`` if given)."""
        records: dict[str, list[RR]] = {}
        for key, rrs in self.records.items():
            if key in names:
                rrs = [] if rtypes is None else [rr for rr in rrs if rr.rtype not in rtypes]
            if rrs:
                records[key] = rrs
        return Zone(self.origin, self.path, self.soa, records, self.lines)


def zone_name_for(path: Path) -> str:
    """``zones/example.org.zone`` serves ``example.org`` (BIND's zone/file pairing)."""
    return name_key(path.name[: -len(ZONE_SUFFIX)] if path.name.endswith(ZONE_SUFFIX) else path.name)


def parse_zone_file(path: Path, origin: str | None = None) -> Zone:
    """Read and validate one zone file; raises ZoneError listing every problem."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ZoneError([f"{path}:0: cannot read zone file: {exc}"]) from exc
    return parse_zone_text(text, origin or zone_name_for(path), path)


def parse_zone_text(text: str, origin: str, path: Path) -> Zone:
    """Parse and validate a zone's text; raises ZoneError listing every problem."""
    try:
        entries = list(tokenize(text))
    except ZoneSyntaxError as exc:
        raise ZoneError([f"{path}:{exc.line}: {exc.reason}"]) from None
    reader = _ZoneReader(name_key(origin), path)
    for entry in entries:
        reader.read(entry)
    return reader.zone()


class _ZoneReader:
    """The state of reading one zone's entries in order."""

    def __init__(self, apex: str, path: Path) -> None:
        self.apex = apex
        self.path = path
        self.where = str(path)
        self.problems: list[str] = []
        self.origin = DNSLabel(apex + ".")
        self.default_ttl: int | None = None
        self.last_owner: DNSLabel | None = None
        self.records: dict[str, list[RR]] = {}
        self.lines: dict[tuple[str, int], int] = {}
        self.record_lines: dict[int, int] = {}  # id(rr): its line, for problems with one record of an RRset
        self.soa: RR | None = None

    def problem(self, line: int, message: str) -> None:
        self.problems.append(f"{self.where}:{line}: {message}")

    def read(self, entry: Entry) -> None:
        words = [t.text for t in entry.tokens]
        head = words[0].upper() if not entry.inherits_owner else ""
        if head.startswith("$"):
            self._directive(entry.line, head, words)
            return
        try:
            rr, owner = parse_record(entry, self.origin, self.last_owner, self.default_ttl, self.soa)
        except ValueError as exc:
            self.problem(entry.line, str(exc))
            return
        self.last_owner = owner
        self._add(rr, owner, entry.line)

    def _directive(self, line: int, head: str, words: list[str]) -> None:
        if head == "$ORIGIN":
            if len(words) != 2:
                self.problem(line, "$ORIGIN takes exactly one name")
                return
            self.origin = absolute(words[1], self.origin)
        elif head == "$TTL":
            if len(words) != 2:
                self.problem(line, "$TTL takes exactly one value")
                return
            try:
                self.default_ttl = parse_ttl(words[1])
            except ValueError as exc:
                self.problem(line, str(exc))
        else:
            self.problem(line, f"unsupported directive {words[0]}")

    def _add(self, rr: RR, owner: DNSLabel, line: int) -> None:
        apex = self.apex
        key = name_key(owner)
        if key != apex and not key.endswith("." + apex):
            self.problem(line, f"{owner} is outside the zone's origin {apex}.")
            return
        if rr.rtype == QTYPE.SOA:
            if self.soa is not None:
                self.problem(line, f"duplicate SOA record (the first is at line {self.lines[(apex, QTYPE.SOA)]})")
                return
            if key != apex:
                self.problem(line, f"SOA record must be at the zone apex {apex}., not {owner}")
                return
            self.soa = rr
        existing = self.records.setdefault(key, [])
        if any(_same_rdata(rr, other) for other in existing):
            return  # an identical RR is the same RR (RFC 2181 5): keep one
        existing.append(rr)
        self.record_lines[id(rr)] = line
        self.lines.setdefault((key, rr.rtype), line)

    def zone(self) -> Zone:
        """The zone read, once it passes the whole-zone checks."""
        if self.soa is None and not self.problems:
            self.problems.append(f"{self.where}:1: zone {self.apex} has no SOA record at its apex")
        for key, rrs in self.records.items():
            self._check_cname(key, rrs)
        if self.soa is not None:
            self._check_apex_ns()
        if self.problems:
            raise ZoneError(self.problems)
        assert self.soa is not None
        return Zone(self.apex, self.path, self.soa, self.records, self.lines)

    def _check_cname(self, key: str, rrs: list[RR]) -> None:
        types = {rr.rtype for rr in rrs}
        if QTYPE.CNAME not in types:
            return
        cnames = [rr for rr in rrs if rr.rtype == QTYPE.CNAME]
        if len(cnames) > 1:
            self.problem(self.record_lines[id(cnames[1])], f"{key}. has more than one CNAME record")
        others = types - {QTYPE.CNAME, QTYPE.RRSIG, QTYPE.NSEC}
        if others:
            other = min(self.lines[(key, t)] for t in others)
            self.problem(max(self.lines[(key, QTYPE.CNAME)], other), f"CNAME and other data at {key}. (RFC 1034 3.6.2)")

    def _check_apex_ns(self) -> None:
        apex = self.apex
        apex_ns = [rr for rr in self.records.get(apex, []) if rr.rtype == QTYPE.NS]
        if not apex_ns:
            self.problem(self.lines[(apex, QTYPE.SOA)], f"zone {apex} has no NS records at its apex")
        for rr in apex_ns:
            target = name_key(rr.rdata.label)
            if target == apex or target.endswith("." + apex):
                target_types = {r.rtype for r in self.records.get(target, [])}
                if not target_types & {QTYPE.A, QTYPE.AAAA}:
                    self.problem(self.record_lines[id(rr)],
                                 f"NS {target}. is inside the zone but has no address records (A or AAAA)")


def _same_rdata(a: RR, b: RR) -> bool:
    return a.rtype == b.rtype and _rdata_wire(a) == _rdata_wire(b)


def _rdata_wire(rr: RR) -> bytes:
    buffer = DNSBuffer()
    rr.rdata.pack(buffer)
    return bytes(buffer.data)


@dataclass
class ZoneSet:
    """Every zone served, by origin."""

    zones: dict[str, Zone] = field(default_factory=dict)

    @property
    def record_count(self) -> int:
        return sum(zone.record_count for zone in self.zones.values())


def load_zone_dir(directory: Path) -> ZoneSet:
    """Load every ``*.zone`` file; raises ZoneError with all problems of all files."""
    if not directory.is_dir():
        raise ZoneError([f"{directory}:0: zone directory does not exist"])
    problems: list[str] = []
    zones: dict[str, Zone] = {}
    for path in sorted(directory.glob("*" + ZONE_SUFFIX)):
        try:
            zone = parse_zone_file(path)
        except ZoneError as exc:
            problems.extend(exc.problems)
            continue
        if zone.origin in zones:
            problems.append(f"{path}:0: zone {zone.origin} is also served from {zones[zone.origin].path}")
            continue
        zones[zone.origin] = zone
    if problems:
        raise ZoneError(problems)
    return ZoneSet(zones)
