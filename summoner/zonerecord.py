"""One master-file entry → one resource record: owner, TTL and class in
either order (RFC 1035 5.1), the type, and its data, checked per type; the
data itself is parsed by dnslib's per-type ``fromZone``.

Every problem is a ``ValueError`` whose message is the reason;
``summoner.zonefile`` puts ``file:line:`` in front of it.

Tests: tests/test_zonefile.py
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable

from dnslib import CLASS, QTYPE, RDMAP, RR, SOA, DNSBuffer, DNSLabel
from dnslib.dns import RD

from summoner.zonesyntax import Entry, Token

MAX_TTL = 2**31 - 1
_TTL_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_TTL_PART = re.compile(r"(\d+)([smhdw])", re.IGNORECASE)
_CLASSES = {"IN", "CH", "HS", "CS"}


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


def absolute(text: str, origin: DNSLabel) -> DNSLabel:
    """A master-file name: ``@``, absolute (a trailing dot) or relative to ``origin``."""
    if text == "@":
        return origin
    if text.endswith(".") and not text.endswith("\\."):
        return DNSLabel(text)
    return origin.add(text)


def parse_record(entry: Entry, origin: DNSLabel, last_owner: DNSLabel | None,
                 default_ttl: int | None, soa: RR | None) -> tuple[RR, DNSLabel]:
    """The record of ``entry`` and its owner (the next entry may inherit it)."""
    words = [t.text for t in entry.tokens]
    owner = _owner(entry, words, origin, last_owner)
    ttl = _ttl_and_class(words)
    if not words:
        raise ValueError(f"record for {owner} has no type")
    type_text = words.pop(0).upper()
    rtype = _rtype_number(type_text)
    if ttl is None:
        ttl = _implicit_ttl(rtype, default_ttl, soa)
    tokens = entry.tokens[len(entry.tokens) - len(words):]
    rdata = parse_rdata(type_text, rtype, tokens, origin)
    if rtype == QTYPE.SOA and ttl == 0 and default_ttl is None:
        ttl = rdata.times[4]
    rr = RR(rname=owner, rtype=rtype, rclass=CLASS.IN, ttl=ttl, rdata=rdata)
    try:
        buffer = DNSBuffer()
        rr.pack(buffer)
    except Exception as exc:  # dnslib raises several types for unpackable data
        raise ValueError(f"invalid {type_text} data: {exc}") from None
    return rr, owner


def _owner(entry: Entry, words: list[str], origin: DNSLabel, last_owner: DNSLabel | None) -> DNSLabel:
    """The entry's owner; takes it off ``words``."""
    if entry.inherits_owner:
        if last_owner is None:
            raise ValueError("record has no owner name and there is no previous owner")
        return last_owner
    owner = absolute(words.pop(0), origin)
    if not words:
        raise ValueError(f"record for {owner} has no type")
    return owner


def _ttl_and_class(words: list[str]) -> int | None:
    """TTL and class, in either order (RFC 1035 5.1), taken off ``words``;
    the TTL if one was given."""
    ttl: int | None = None
    rclass = "IN"
    for _ in range(2):
        if words and words[0].upper() in _CLASSES:
            rclass = words.pop(0).upper()
        elif words and words[0][:1].isdigit():
            ttl = parse_ttl(words.pop(0))
    if rclass != "IN":
        raise ValueError(f"class {rclass} is not served (only IN)")
    return ttl


def _implicit_ttl(rtype: int, default_ttl: int | None, soa: RR | None) -> int:
    if default_ttl is not None:
        return default_ttl
    if soa is not None:
        return soa.rdata.times[4]  # RFC 1035: without $TTL, the SOA minimum
    if rtype == QTYPE.SOA:
        return 0  # fixed by the caller from the SOA's own minimum
    raise ValueError("no TTL given and no $TTL or SOA before this record")


def _rtype_number(text: str) -> int:
    if text.startswith("TYPE") and text[4:].isdigit():
        return int(text[4:])
    number = QTYPE.reverse.get(text)
    if number is None or text not in RDMAP:
        raise ValueError(f"unknown record type {text}")
    return number


def parse_rdata(type_text: str, rtype: int, tokens: list[Token], origin: DNSLabel) -> RD:
    words = [t.text for t in tokens]
    if not words:
        raise ValueError(f"{type_text} record has no data")
    if words[0] == "\\#":  # RFC 3597 generic form, for any type
        return _generic(words)
    if type_text.startswith("TYPE"):
        raise ValueError(f"{type_text} needs RFC 3597 generic data (\\# LENGTH HEX)")
    try:
        if rtype == QTYPE.SOA:
            return _soa(words, type_text, origin)
        check = _CHECKS.get(rtype)
        if check is not None:
            check(words, tokens, type_text)
        for index in _NAME_FIELDS.get(rtype, ()):
            words[index] = str(absolute(words[index], origin))
        return RDMAP[type_text].fromZone(words, origin)
    except ValueError:
        raise
    except Exception as exc:  # dnslib's fromZone raises assorted types on bad input
        raise ValueError(f"invalid {type_text} data {' '.join(words)!r}: {exc}") from None


def _generic(words: list[str]) -> RD:
    if len(words) < 2 or not words[1].isdigit():
        raise ValueError("generic rdata needs '\\# LENGTH HEX'")
    data = bytes.fromhex("".join(words[2:]))
    if len(data) != int(words[1]):
        raise ValueError(f"generic rdata length {words[1]} does not match {len(data)} bytes")
    return RD(data)


def _soa(words: list[str], type_text: str, origin: DNSLabel) -> SOA:
    _expect(words, 7, type_text)
    if not words[2].isdigit() or int(words[2]) > 0xFFFFFFFF:
        raise ValueError(f"SOA serial must be 0-4294967295, got {words[2]!r}")  # RFC 1982
    times = [int(words[2])] + [parse_ttl(w) for w in words[3:]]
    names = [absolute(w, origin) for w in words[:2]]
    return SOA(names[0], names[1], times)


def _check_a(words: list[str], tokens: list[Token], type_text: str) -> None:
    _expect(words, 1, type_text)
    _address(ipaddress.IPv4Address, words[0], type_text)


def _check_aaaa(words: list[str], tokens: list[Token], type_text: str) -> None:
    _expect(words, 1, type_text)
    _address(ipaddress.IPv6Address, words[0], type_text)


def _check_one_name(words: list[str], tokens: list[Token], type_text: str) -> None:
    _expect(words, 1, type_text)


def _check_mx(words: list[str], tokens: list[Token], type_text: str) -> None:
    _expect(words, 2, type_text)
    _u16(words[0], "MX preference")


def _check_srv(words: list[str], tokens: list[Token], type_text: str) -> None:
    _expect(words, 4, type_text)
    for word, what in zip(words[:3], ("priority", "weight", "port"), strict=True):
        _u16(word, f"SRV {what}")


def _check_txt(words: list[str], tokens: list[Token], type_text: str) -> None:
    for token in tokens:
        if len(token.text.encode()) > 255:
            raise ValueError("a TXT string is longer than 255 bytes")


# Per-type checks before dnslib parses the data: dnslib accepts too much.
_CHECKS: dict[int, Callable[[list[str], list[Token], str], None]] = {
    QTYPE.A: _check_a, QTYPE.AAAA: _check_aaaa, QTYPE.CNAME: _check_one_name, QTYPE.NS: _check_one_name,
    QTYPE.PTR: _check_one_name, QTYPE.MX: _check_mx, QTYPE.SRV: _check_srv, QTYPE.TXT: _check_txt,
}
# Which rdata fields are domain names, so relative names get the origin.
_NAME_FIELDS = {QTYPE.CNAME: (0,), QTYPE.NS: (0,), QTYPE.PTR: (0,), QTYPE.MX: (1,), QTYPE.SRV: (3,)}


def _expect(words: list[str], count: int, type_text: str) -> None:
    if len(words) != count:
        raise ValueError(f"{type_text} record needs {count} field(s), got {len(words)}")


def _address(kind: type[ipaddress.IPv4Address] | type[ipaddress.IPv6Address], text: str, type_text: str) -> None:
    try:
        kind(text)
    except ValueError:
        raise ValueError(f"{type_text} record has an invalid address {text!r}") from None


def _u16(text: str, what: str) -> None:
    if not text.isdigit() or int(text) > 65535:
        raise ValueError(f"{what} must be 0-65535, got {text!r}")
