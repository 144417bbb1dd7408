"""Zone data compiled to wire fragments, so every static answer is fast.

A response to a one-question query is a 12-byte header, the question copied
from the query, and the sections.  The sections depend on the question only
through where its name's suffixes sit in the packet (name compression points
at them), so they can be encoded once and reused:

- an existing name (or an empty non-terminal): per name and type, encoded
  with that very name as the question;
- a name synthesised from a wildcard, a name below a delegation, a name that
  does not exist: per wildcard / cut / zone, type and *length* of the query
  name, encoded against a stand-in name of the same length whose only shared
  suffix is the wildcard's closest encloser, the cut or the zone apex.

What goes into a fragment is decided by the static stage's own resolver (the
``AnswerSource``), so compiled answers follow exactly the same rules as the
slow path: this module only decides *which* answer a name gets and encodes
it.  Fragments are built at first use and kept until the next zone load;
their number is bounded by the zone's names and types and 256 name lengths.

Tests: tests/test_static.py (through the static stage and the wire layer)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from dnslib import QTYPE, RCODE, DNSHeader, DNSLabel, DNSQuestion, DNSRecord

if TYPE_CHECKING:  # both import this module's neighbours; only their types are needed here
    from summoner.answer import Answer, Apex
    from summoner.zonefile import Zone

MAX_FRAGMENTS_PER_ZONE = 100_000
_FILLER = 0xFF  # stand-in label bytes: never in zone data, so nothing compresses against them
_NODATA = -1    # the type key of every type a name has no records of
_DS = QTYPE.DS
_CNAME = QTYPE.CNAME


@dataclass(frozen=True, slots=True)
class Fragment:
    """The sections of one response, compressed against the question."""

    rcode: int
    authoritative: bool
    tentative: bool           # a later stage may still claim the name (NXDOMAIN)
    counts: tuple[int, int, int]  # answer, authority, additional
    body: bytes
    # The answer to a name that exists: worth keeping as a whole response
    # for replay.  Not for synthesised (wildcard, NXDOMAIN, referral) names,
    # whose distinct names would only churn the replay cache.
    replayable: bool = False
    # A tentative fragment's zone, for the later stages' ``claims``.
    zone: Apex | None = None


# What a name in no zone, claimed by no stage, gets (the chain's final REFUSED).
REFUSED = Fragment(RCODE.REFUSED, False, False, (0, 0, 0), b"")


class AnswerSource(Protocol):
    """The static stage's resolver, asked once per fragment."""

    def answer_at(self, origin: str, key: str, name: DNSLabel, qtype: int) -> Answer: ...

    def referral(self, origin: str, cut: str) -> Answer: ...

    def nxdomain(self, origin: str) -> Answer: ...


def wire_name(key: str) -> bytes:
    """``www.example.org`` → its wire form, lower-cased (``""``: the root).
    Length bytes are below 64, so lower-casing touches only the labels."""
    return wire_name_of(DNSLabel(key)).lower()


def encode(name: DNSLabel, qtype: int, answer: Answer, replayable: bool = False) -> Fragment:
    """Encode ``answer`` after a question for ``name`` and keep the sections."""
    header = DNSHeader(qr=1)
    packed = DNSRecord(header, q=DNSQuestion(name, qtype), rr=list(answer.answer),
                       auth=list(answer.authority), ar=list(answer.additional)).pack()
    question_end = 12 + len(wire_name_of(name)) + 4
    return Fragment(answer.rcode, answer.authoritative, answer.tentative,
                    (len(answer.answer), len(answer.authority), len(answer.additional)),
                    bytes(packed[question_end:]), replayable, answer.zone)


def wire_name_of(name: DNSLabel) -> bytes:
    return b"".join(bytes([len(label)]) + label for label in name.label) + b"\0"


def stand_in(length: int, anchor: DNSLabel) -> DNSLabel:
    """A name of wire length ``length`` ending in ``anchor``, its other labels
    made of bytes no zone contains."""
    room = length - len(wire_name_of(anchor))
    labels: list[bytes] = []
    while room > 0:
        size = min(63, room - 1)
        if room - (size + 1) == 1:
            size -= 1  # a lone byte cannot be a label: leave two
        labels.append(bytes([_FILLER]) * size)
        room -= size + 1
    return DNSLabel(labels + list(anchor.label))


class _Node:
    """One existing name: its records' types and its compiled answers."""

    __slots__ = ("key", "types", "follows", "answers")

    def __init__(self, key: str, types: frozenset[int]) -> None:
        self.key = key
        self.types = types
        self.follows = _CNAME in types  # every type is answered by following the CNAME
        self.answers: dict[int, Fragment] = {}

    def type_key(self, qtype: int) -> int:
        """Types that get the same answer share one fragment."""
        return qtype if self.follows or qtype in self.types else _NODATA


class CompiledZone:
    def __init__(self, zone: Zone, existing: frozenset[str], delegations: frozenset[str],
                 source: AnswerSource) -> None:
        self.origin = zone.origin
        self.origin_wire = wire_name(zone.origin)
        self.source = source
        # Empty non-terminals are names too (RFC 4592 2.2.2), with no types.
        self.nodes = {wire_name(key): _Node(key, frozenset(rr.rtype for rr in zone.records.get(key, ())))
                      for key in existing}
        self.cuts = {wire_name(key): key for key in delegations}
        self.nxdomain: list[Fragment | None] = [None] * 256  # by query name length
        self.synthesised: dict[tuple[bytes, int, int], Fragment] = {}
        self.size = 0

    def lookup(self, name: bytes, starts: list[int], apex: int, qtype: int) -> Fragment:
        """The answer for wire name ``name`` (lower case) of this zone;
        ``starts[i]`` is where its i-th suffix begins (the last one is the
        root), ``starts[apex]`` where the zone's apex does."""
        if self.cuts:
            for i in range(apex - 1, -1, -1):
                cut = name[starts[i]:]
                if cut in self.cuts and not (i == 0 and qtype == _DS):  # DS: the parent side answers
                    return self._variable(cut, len(name), 0, self._refer, qtype)
        node = self.nodes.get(name)
        if node is not None:
            type_key = node.type_key(qtype)
            fragment = node.answers.get(type_key)
            if fragment is None:
                fragment = self._exact(node, qtype)
                if self._room():
                    node.answers[type_key] = fragment
            return fragment
        for i in range(1, apex + 1):
            encloser = self.nodes.get(name[starts[i]:])
            if encloser is not None:
                wildcard = self.nodes.get(b"\x01*" + name[starts[i]:])
                if wildcard is not None:
                    return self._variable(b"\x01*" + name[starts[i]:], len(name), wildcard.type_key(qtype),
                                          self._synthesised, qtype)
                break
        fragment = self.nxdomain[len(name)]
        if fragment is None:
            fragment = self.nxdomain[len(name)] = self._nxdomain(len(name), qtype)
        return fragment

    def _room(self) -> bool:
        self.size += 1
        return self.size <= MAX_FRAGMENTS_PER_ZONE

    def _variable(self, anchor: bytes, length: int, type_key: int, build: Callable[[bytes, int, int], Fragment],
                  qtype: int) -> Fragment:
        key = (anchor, length, type_key)
        fragment = self.synthesised.get(key)
        if fragment is None:
            fragment = build(anchor, length, qtype)
            if self._room():
                self.synthesised[key] = fragment
        return fragment

    def _exact(self, node: _Node, qtype: int) -> Fragment:
        name = DNSLabel(node.key)
        return encode(name, qtype, self.source.answer_at(self.origin, node.key, name, qtype), replayable=True)

    def _synthesised(self, wildcard: bytes, length: int, qtype: int) -> Fragment:
        key = self.nodes[wildcard].key
        name = stand_in(length, DNSLabel(self.nodes[wildcard[2:]].key))
        return encode(name, qtype, self.source.answer_at(self.origin, key, name, qtype))

    def _refer(self, cut: bytes, length: int, qtype: int) -> Fragment:
        key = self.cuts[cut]
        return encode(stand_in(length, DNSLabel(key)), qtype, self.source.referral(self.origin, key))

    def _nxdomain(self, length: int, qtype: int) -> Fragment:
        return encode(stand_in(length, DNSLabel(self.origin)), qtype, self.source.nxdomain(self.origin))


class CompiledZones:
    """Every zone, found by the longest suffix of the query name."""

    def __init__(self, zones: list[CompiledZone]) -> None:
        self.by_apex = {zone.origin_wire: zone for zone in zones}

    def lookup(self, name: bytes, starts: list[int], qtype: int) -> Fragment | None:
        """None: the name is in none of the zones."""
        by_apex = self.by_apex
        for i, start in enumerate(starts):
            zone = by_apex.get(name[start:])
            if zone is not None:
                return zone.lookup(name, starts, i, qtype)
        return None
