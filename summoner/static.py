"""The static stage: authoritative answers from the zone files.

Names outside every zone are not ours (``None``).  An in-zone name that does
not exist gets a *tentative* NXDOMAIN so a later stage may still claim it.

The rules live here once; ``summoner.compiled`` asks this stage for each
answer's content (``answer_at``, ``referral``, ``nxdomain``) and keeps the
encoded result, which is what the wire layer answers from
(``lookup_wire``).  ``resolve`` is the same answer as dnslib objects, for the
questions the wire layer's hot path leaves to the chain.

A tentative NXDOMAIN carries its zone (``Answer.zone``: origin and SOA), so
the later stage that claims the name answers with this zone's SOA.

Tests: tests/test_static.py
"""

from __future__ import annotations

from dataclasses import dataclass

from dnslib import QTYPE, RCODE, RR, DNSLabel

from summoner.answer import Answer, Apex, Query, name_key
from summoner.compiled import CompiledZone, CompiledZones, Fragment
from summoner.zonefile import Zone, ZoneSet

MAX_CNAME_HOPS = 8
_ADDRESS_TYPES = (QTYPE.A, QTYPE.AAAA)


@dataclass(frozen=True, slots=True)
class _IndexedZone:
    zone: Zone
    existing: frozenset[str]  # owner names plus empty non-terminals (RFC 4592 2.2.2)
    delegations: frozenset[str]  # names below the apex that carry NS records
    apex: Apex


def _index(zone: Zone) -> _IndexedZone:
    existing: set[str] = set()
    for key in zone.records:
        name = key
        while True:
            existing.add(name)
            if name == zone.origin:
                break
            name = name.split(".", 1)[1]
    delegations = frozenset(
        key for key, rrs in zone.records.items()
        if key != zone.origin and any(rr.rtype == QTYPE.NS for rr in rrs)
    )
    return _IndexedZone(zone, frozenset(existing), delegations, Apex(zone.origin, negative_soa(zone)))


def negative_soa(zone: Zone) -> RR:
    """The SOA for an authority section, with the RFC 2308 negative TTL."""
    soa = zone.soa
    return RR(soa.rname, QTYPE.SOA, ttl=zone.negative_ttl, rdata=soa.rdata)


class StaticStage:
    name = "static"

    def __init__(self, zones: ZoneSet | None = None) -> None:
        self._zones: dict[str, _IndexedZone] = {}
        self.update(zones or ZoneSet())

    def update(self, zones: ZoneSet) -> None:
        # Build the whole index first and swap it in one assignment, so a
        # query never sees half of an old and half of a new zone set.
        indexed = {origin: _index(zone) for origin, zone in zones.zones.items()}
        compiled = CompiledZones([CompiledZone(z.zone, z.existing, z.delegations, self) for z in indexed.values()])
        self._zones, self.compiled = indexed, compiled

    def claims(self, key: str, zone: Apex | None = None) -> bool:
        return self._find(key) is not None

    def lookup_wire(self, name: bytes, starts: list[int], qtype: int) -> Fragment | None:
        """The compiled answer for a lower-cased wire name (None: in no zone)."""
        return self.compiled.lookup(name, starts, qtype)

    # -- the answers' content, for summoner.compiled

    def answer_at(self, origin: str, key: str, name: DNSLabel, qtype: int) -> Answer:
        answer = Answer()
        self._answer_name(self._zones[origin], name, key, qtype, answer, hops=0)
        return answer

    def referral(self, origin: str, cut: str) -> Answer:
        answer = Answer()
        self._refer(self._zones[origin], cut, answer)
        return answer

    def nxdomain(self, origin: str) -> Answer:
        answer = Answer()
        _no_such_name(self._zones[origin], answer, hops=0)
        return answer

    def _find(self, key: str) -> _IndexedZone | None:
        zones = self._zones
        while True:
            indexed = zones.get(key)
            if indexed is not None:
                return indexed
            dot = key.find(".")
            if dot < 0:
                return zones.get("")
            key = key[dot + 1:]

    def resolve(self, query: Query, earlier: Answer | None = None) -> Answer | None:
        indexed = self._find(query.key)
        if indexed is None:
            return None
        answer = Answer()
        self._answer_name(indexed, query.name, query.key, query.qtype, answer, hops=0)
        return answer

    def _answer_name(self, indexed: _IndexedZone, name: DNSLabel, key: str, qtype: int,
                     answer: Answer, hops: int) -> None:
        zone = indexed.zone
        referral = self._delegation_above(indexed, key)
        # DS lives on the parent side of a cut (RFC 4035 3.1.4.1): answered
        # here, authoritatively, not referred.
        if referral is not None and not (qtype == QTYPE.DS and referral == key):
            self._refer(indexed, referral, answer)
            return
        rrs = zone.records.get(key)
        if rrs is None and key not in indexed.existing:
            rrs = self._wildcard(indexed, key)
            if rrs is None:
                _no_such_name(indexed, answer, hops)
                return
        rrs = rrs or []
        matching = [rr for rr in rrs if rr.rtype == qtype or qtype == QTYPE.ANY]
        if not matching and qtype != QTYPE.CNAME:
            cname = next((rr for rr in rrs if rr.rtype == QTYPE.CNAME), None)
            if cname is not None:
                answer.answer.append(_owned_by(cname, name))
                self._follow(cname.rdata.label, qtype, answer, hops + 1)
                return
        if not matching:
            answer.authority.append(indexed.apex.soa)
            return
        answer.answer.extend(_owned_by(rr, name) for rr in matching)
        self._add_glue(matching, answer)

    def _follow(self, target: DNSLabel, qtype: int, answer: Answer, hops: int) -> None:
        if hops > MAX_CNAME_HOPS:
            return  # a loop or an absurd chain: hand back what we have
        key = name_key(target)
        indexed = self._find(key)
        if indexed is None:
            return  # leaves our authority: the client's resolver follows it
        self._answer_name(indexed, target, key, qtype, answer, hops)

    def _wildcard(self, indexed: _IndexedZone, key: str) -> list[RR] | None:
        """RFC 4592: the source of synthesis is ``*.<closest encloser>``."""
        origin = indexed.zone.origin
        encloser = key
        while encloser != origin:
            encloser = encloser.split(".", 1)[1]
            if encloser in indexed.existing:
                # A wildcard that is an empty non-terminal still exists: NODATA.
                wildcard = "*." + encloser
                return indexed.zone.records.get(wildcard, []) if wildcard in indexed.existing else None
        return None

    def _delegation_above(self, indexed: _IndexedZone, key: str) -> str | None:
        if not indexed.delegations:
            return None
        # The cut nearest the apex: everything below it is the child's.
        origin = indexed.zone.origin
        name, cut = key, None
        while name != origin and name:
            if name in indexed.delegations:
                cut = name
            name = name.split(".", 1)[1] if "." in name else ""
        return cut

    def _refer(self, indexed: _IndexedZone, cut: str, answer: Answer) -> None:
        ns = [rr for rr in indexed.zone.records[cut] if rr.rtype == QTYPE.NS]
        answer.authoritative = False
        answer.authority.extend(ns)
        self._add_glue(ns, answer)

    def _add_glue(self, rrs: list[RR], answer: Answer) -> None:
        """Addresses of in-zone targets (RFC 1034 4.3.2 step 6), saving a round trip."""
        for rr in rrs:
            if rr.rtype in (QTYPE.NS, QTYPE.MX):
                target = rr.rdata.label
            elif rr.rtype == QTYPE.SRV:
                target = rr.rdata.target
            else:
                continue
            key = name_key(target)
            indexed = self._find(key)
            if indexed is None:
                continue
            for glue in indexed.zone.records.get(key, ()):
                if glue.rtype in _ADDRESS_TYPES and glue not in answer.additional:
                    answer.additional.append(glue)


def _no_such_name(indexed: _IndexedZone, answer: Answer, hops: int) -> None:
    answer.rcode = RCODE.NXDOMAIN
    answer.authority.append(indexed.apex.soa)
    # Only the original name may be claimed by later stages; a dangling
    # CNAME target is this zone's own answer.
    if hops == 0:
        answer.tentative = True
        answer.zone = indexed.apex


def _owned_by(rr: RR, name: DNSLabel) -> RR:
    """The record with the question's spelling of its owner (wildcards, case echo)."""
    if rr.rname == name and str(rr.rname) == str(name) and not str(rr.rname).startswith("*"):
        return rr
    return RR(name, rr.rtype, rr.rclass, rr.ttl, rr.rdata)
