"""RFC 1035 master files: reading, validating, and the in-memory zone model.

The tokenizer is ours because errors must point at ``file:line`` and dnslib's
``ZoneParser`` tracks no lines (nor TTL units on records, nor class-before-TTL);
the record data itself is parsed by dnslib's per-type ``fromZone``.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from dnslib import CLASS, QTYPE, RDMAP, RR, SOA, DNSBuffer, DNSLabel
from dnslib.dns import RD

from summoner.resolution import name_key

MAX_TTL = 2**31 - 1
ZONE_SUFFIX = ".zone"
_TTL_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_TTL_PART = re.compile(r"(\d+)([smhdw])", re.IGNORECASE)
_CLASSES = {"IN", "CH", "HS", "CS"}


class ZoneError(Exception):
    """One or more ``file:line: reason`` problems with zone files."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass(frozen=True, slots=True)
class Token:
    text: str
    line: int
    quoted: bool = False


@dataclass(slots=True)
class Entry:
    """One logical line (parentheses joined), with the line it starts on."""

    line: int
    tokens: list[Token]
    inherits_owner: bool


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


def parse_ttl(text: str) -> int:
    """A TTL as BIND writes it: seconds, or units such as ``1h30m``."""
    if text.isdigit():
        value = int(text)
    else:
        parts = _TTL_PART.findall(text)
        if not parts or "".join(n + u for n, u in parts).lower() != text.lower():
            raise ValueError(f"bad TTL {text!r}")
        value = sum(int(n) * _TTL_UNITS[u.lower()] for n, u in parts)
    if value > MAX_TTL:
        raise ValueError(f"TTL {text} is above the maximum {MAX_TTL}")
    return value


def _looks_like_ttl(text: str) -> bool:
    return text[:1].isdigit()


def tokenize(text: str, path: str) -> Iterator[Entry]:
    """Split master-file text into logical entries (RFC 1035 section 5.1)."""
    tokens: list[Token] = []
    depth = 0
    start_line = 0
    inherits = False
    for number, raw in enumerate(text.splitlines(), start=1):
        if depth == 0:
            tokens = []
            start_line = number
            inherits = raw[:1] in (" ", "\t")
        i, n = 0, len(raw)
        while i < n:
            ch = raw[i]
            if ch in " \t\r":
                i += 1
            elif ch == ";":
                break
            elif ch == "(":
                depth += 1
                i += 1
            elif ch == ")":
                if depth == 0:
                    raise ZoneError([f"{path}:{number}: unbalanced ')'"])
                depth -= 1
                i += 1
            elif ch == '"':
                j = i + 1
                chars: list[str] = []
                while j < n and raw[j] != '"':
                    if raw[j] == "\\" and j + 1 < n:
                        chars.append(raw[j:j + 2])
                        j += 2
                    else:
                        chars.append(raw[j])
                        j += 1
                if j >= n:
                    raise ZoneError([f"{path}:{number}: unterminated quoted string"])
                tokens.append(Token(_unescape("".join(chars)), number, quoted=True))
                i = j + 1
            else:
                j = i
                while j < n and raw[j] not in ' \t\r;()"':
                    j += 2 if raw[j] == "\\" else 1
                tokens.append(Token(raw[i:j], number))
                i = j
        if depth == 0 and tokens:
            yield Entry(start_line, tokens, inherits)
    if depth:
        raise ZoneError([f"{path}:{start_line}: unbalanced '(' (never closed)"])


def _unescape(text: str) -> str:
    """Master-file escapes in quoted text: ``\\X`` and ``\\DDD`` (RFC 1035 5.1)."""
    out: list[str] = []
    i = 0
    while i < len(text):
        if text[i] == "\\" and i + 1 < len(text):
            if text[i + 1:i + 4].isdigit() and len(text[i + 1:i + 4]) == 3:
                out.append(chr(int(text[i + 1:i + 4])))
                i += 4
                continue
            out.append(text[i + 1])
            i += 2
            continue
        out.append(text[i])
        i += 1
    return "".join(out)


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
    apex = name_key(origin)
    where = str(path)
    problems: list[str] = []
    current_origin = DNSLabel(apex + ".")
    default_ttl: int | None = None
    last_owner: DNSLabel | None = None
    records: dict[str, list[RR]] = {}
    lines: dict[tuple[str, int], int] = {}
    record_lines: dict[int, int] = {}  # id(rr): its line, for problems with one record of an RRset
    soa: RR | None = None

    def problem(line: int, message: str) -> None:
        problems.append(f"{where}:{line}: {message}")

    try:
        entries = list(tokenize(text, where))
    except ZoneError as exc:
        raise ZoneError(exc.problems) from None

    for entry in entries:
        words = [t.text for t in entry.tokens]
        line = entry.line
        head = words[0].upper() if not entry.inherits_owner else ""
        if head == "$ORIGIN":
            if len(words) != 2:
                problem(line, "$ORIGIN takes exactly one name")
                continue
            current_origin = _absolute(words[1], current_origin)
            continue
        if head == "$TTL":
            if len(words) != 2:
                problem(line, "$TTL takes exactly one value")
                continue
            try:
                default_ttl = parse_ttl(words[1])
            except ValueError as exc:
                problem(line, str(exc))
            continue
        if head.startswith("$"):
            problem(line, f"unsupported directive {words[0]}")
            continue
        try:
            rr, owner = _parse_record(entry, current_origin, last_owner, default_ttl, soa)
        except ValueError as exc:
            problem(line, str(exc))
            continue
        last_owner = owner
        key = name_key(owner)
        if key != apex and not key.endswith("." + apex):
            problem(line, f"{owner} is outside the zone's origin {apex}.")
            continue
        if rr.rtype == QTYPE.SOA:
            if soa is not None:
                problem(line, f"duplicate SOA record (the first is at line {lines[(apex, QTYPE.SOA)]})")
                continue
            if key != apex:
                problem(line, f"SOA record must be at the zone apex {apex}., not {owner}")
                continue
            soa = rr
        existing = records.setdefault(key, [])
        if any(_same_rdata(rr, other) for other in existing):
            continue  # an identical RR is the same RR (RFC 2181 5): keep one
        existing.append(rr)
        record_lines[id(rr)] = line
        lines.setdefault((key, rr.rtype), line)

    if soa is None and not problems:
        problems.append(f"{where}:1: zone {apex} has no SOA record at its apex")
    for key, rrs in records.items():
        types = {rr.rtype for rr in rrs}
        if QTYPE.CNAME in types:
            cnames = [rr for rr in rrs if rr.rtype == QTYPE.CNAME]
            if len(cnames) > 1:
                problem(record_lines[id(cnames[1])], f"{key}. has more than one CNAME record")
            others = types - {QTYPE.CNAME, QTYPE.RRSIG, QTYPE.NSEC}
            if others:
                other = min(lines[(key, t)] for t in others)
                problem(max(lines[(key, QTYPE.CNAME)], other),
                        f"CNAME and other data at {key}. (RFC 1034 3.6.2)")
    if soa is not None:
        apex_ns = [rr for rr in records.get(apex, []) if rr.rtype == QTYPE.NS]
        if not apex_ns:
            problem(lines[(apex, QTYPE.SOA)], f"zone {apex} has no NS records at its apex")
        for rr in apex_ns:
            target = name_key(rr.rdata.label)
            if target == apex or target.endswith("." + apex):
                target_types = {r.rtype for r in records.get(target, [])}
                if not target_types & {QTYPE.A, QTYPE.AAAA}:
                    problem(record_lines[id(rr)],
                            f"NS {target}. is inside the zone but has no address records (A or AAAA)")
    if problems:
        raise ZoneError(problems)
    assert soa is not None
    return Zone(apex, path, soa, records, lines)


def _absolute(text: str, origin: DNSLabel) -> DNSLabel:
    if text == "@":
        return origin
    if text.endswith(".") and not text.endswith("\\."):
        return DNSLabel(text)
    return origin.add(text)


def _parse_record(entry: Entry, origin: DNSLabel, last_owner: DNSLabel | None,
                  default_ttl: int | None, soa: RR | None) -> tuple[RR, DNSLabel]:
    words = [t.text for t in entry.tokens]
    if entry.inherits_owner:
        if last_owner is None:
            raise ValueError("record has no owner name and there is no previous owner")
        owner = last_owner
    else:
        owner = _absolute(words.pop(0), origin)
        if not words:
            raise ValueError(f"record for {owner} has no type")
    ttl: int | None = None
    rclass = "IN"
    # TTL and class may come in either order (RFC 1035 5.1).
    for _ in range(2):
        if words and words[0].upper() in _CLASSES:
            rclass = words.pop(0).upper()
        elif words and _looks_like_ttl(words[0]):
            ttl = parse_ttl(words.pop(0))
    if rclass != "IN":
        raise ValueError(f"class {rclass} is not served (only IN)")
    if not words:
        raise ValueError(f"record for {owner} has no type")
    type_text = words.pop(0).upper()
    rtype = _rtype_number(type_text)
    if ttl is None:
        if default_ttl is not None:
            ttl = default_ttl
        elif soa is not None:
            ttl = soa.rdata.times[4]  # RFC 1035: without $TTL, the SOA minimum
        elif rtype == QTYPE.SOA:
            ttl = 0  # fixed below from the SOA's own minimum
        else:
            raise ValueError("no TTL given and no $TTL or SOA before this record")
    tokens = entry.tokens[len(entry.tokens) - len(words):]
    rdata = _parse_rdata(type_text, rtype, tokens, origin)
    if rtype == QTYPE.SOA and ttl == 0 and default_ttl is None:
        ttl = rdata.times[4]
    rr = RR(rname=owner, rtype=rtype, rclass=CLASS.IN, ttl=ttl, rdata=rdata)
    try:
        buffer = DNSBuffer()
        rr.pack(buffer)
    except Exception as exc:  # dnslib raises several types for unpackable data
        raise ValueError(f"invalid {type_text} data: {exc}") from None
    return rr, owner


def _rtype_number(text: str) -> int:
    if text.startswith("TYPE") and text[4:].isdigit():
        return int(text[4:])
    number = QTYPE.reverse.get(text)
    if number is None or text not in RDMAP:
        raise ValueError(f"unknown record type {text}")
    return number


def _parse_rdata(type_text: str, rtype: int, tokens: list[Token], origin: DNSLabel) -> RD:
    words = [t.text for t in tokens]
    if not words:
        raise ValueError(f"{type_text} record has no data")
    if words[0] == "\\#":  # RFC 3597 generic form, for any type
        if len(words) < 2 or not words[1].isdigit():
            raise ValueError("generic rdata needs '\\# LENGTH HEX'")
        data = bytes.fromhex("".join(words[2:]))
        if len(data) != int(words[1]):
            raise ValueError(f"generic rdata length {words[1]} does not match {len(data)} bytes")
        return RD(data)
    if type_text.startswith("TYPE"):
        raise ValueError(f"{type_text} needs RFC 3597 generic data (\\# LENGTH HEX)")
    try:
        if rtype == QTYPE.A:
            _expect(words, 1, type_text)
            _address(ipaddress.IPv4Address, words[0], type_text)
        elif rtype == QTYPE.AAAA:
            _expect(words, 1, type_text)
            _address(ipaddress.IPv6Address, words[0], type_text)
        elif rtype in (QTYPE.CNAME, QTYPE.NS, QTYPE.PTR):
            _expect(words, 1, type_text)
        elif rtype == QTYPE.MX:
            _expect(words, 2, type_text)
            _u16(words[0], "MX preference")
        elif rtype == QTYPE.SRV:
            _expect(words, 4, type_text)
            for word, what in zip(words[:3], ("priority", "weight", "port"), strict=True):
                _u16(word, f"SRV {what}")
        elif rtype == QTYPE.SOA:
            _expect(words, 7, type_text)
            if not words[2].isdigit() or int(words[2]) > 0xFFFFFFFF:
                raise ValueError(f"SOA serial must be 0-4294967295, got {words[2]!r}")  # RFC 1982
            times = [int(words[2])] + [parse_ttl(w) for w in words[3:]]
            names = [_absolute(w, origin) for w in words[:2]]
            return SOA(names[0], names[1], times)
        elif rtype == QTYPE.TXT:
            for token in tokens:
                if len(token.text.encode()) > 255:
                    raise ValueError("a TXT string is longer than 255 bytes")
        for index in _NAME_FIELDS.get(rtype, ()):
            words[index] = str(_absolute(words[index], origin))
        return RDMAP[type_text].fromZone(words, origin)
    except ValueError:
        raise
    except Exception as exc:  # dnslib's fromZone raises assorted types on bad input
        raise ValueError(f"invalid {type_text} data {' '.join(words)!r}: {exc}") from None


# Which rdata fields are domain names, so relative names get the origin.
_NAME_FIELDS = {QTYPE.CNAME: (0,), QTYPE.NS: (0,), QTYPE.PTR: (0,), QTYPE.MX: (1,), QTYPE.SRV: (3,)}


def _expect(words: list[str], count: int, type_text: str) -> None:
    if len(words) != count:
        raise ValueError(f"{type_text} record needs {count} field(s), got {len(words)}")


def _address(kind: type, text: str, type_text: str) -> None:
    try:
        kind(text)
    except ValueError:
        raise ValueError(f"{type_text} record has an invalid address {text!r}") from None


def _u16(text: str, what: str) -> None:
    if not text.isdigit() or int(text) > 65535:
        raise ValueError(f"{what} must be 0-65535, got {text!r}")


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
