"""The on-demand stage of the resolution chain.

For an on-demand host: A/AAAA → summon (warm: synchronous, cacheable answer;
cold: a Deferred firing when the probe succeeds, SERVFAIL on failure); other
types → NODATA with the zone's SOA (records of other types that the zone kept
are answered by the static stage before us).  Other names → None.

A replayed answer asks its service (``on_hit=Service.hit``): demand is
recorded, and once the service is no longer READY the wire layer drops that
answer and asks this stage again, which summons the VM anew.

Tests: tests/test_wire.py (replay and re-summoning), tests/vm/test_fleet.py
"""

from __future__ import annotations

from dnslib import QTYPE, RR
from twisted.internet import defer

from summoner.answer import Answer, Apex, Query, servfail
from summoner.vm.fleet import Fleet
from summoner.vm.lifecycle import Service

ADDRESS_TYPES = (QTYPE.A, QTYPE.AAAA)


def _with_ttl(rr: RR, ttl: int) -> RR:
    return RR(rr.rname, rr.rtype, rr.rclass, ttl, rr.rdata)


class _Entry:
    """Pre-built answers for one host, so the warm path allocates little."""

    __slots__ = ("service", "records", "nodata")

    def __init__(self, service: Service, default_ttl: int) -> None:
        host = service.host
        ttl = host.ttl if host.ttl is not None else default_ttl
        self.service = service
        self.records = {qtype: [_with_ttl(rr, ttl) for rr in host.records_of(qtype)] for qtype in ADDRESS_TYPES}
        self.nodata = [_with_ttl(host.soa, host.negative_ttl)]


class OnDemandStage:
    name = "on-demand"

    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet
        self.entries: dict[str, _Entry] = {}
        self.refresh()

    def refresh(self) -> None:
        """Rebuild the per-host answers after the fleet's hosts changed."""
        ttl = self.fleet.config.answer_ttl
        self.entries = {name: _Entry(svc, ttl) for name, svc in self.fleet.services.items()}

    def claims(self, key: str, zone: Apex | None = None) -> bool:
        return key in self.entries

    def resolve(self, query: Query, earlier: Answer | None = None) -> Answer | None | defer.Deferred:
        entry = self.entries.get(query.key)
        if entry is None:
            return None
        records = entry.records.get(query.qtype)
        if not records:
            # NODATA: no summoning for types the host has no records of (an
            # AAAA lookup beside the A must not wait on a boot).
            return Answer(authority=entry.nodata, cacheable=True)
        svc = entry.service
        ready = self.fleet.ensure_ready(svc)
        if ready is True:
            svc.touch()
            return Answer(answer=records, cacheable=True, on_hit=svc.hit)
        if ready is False:
            return servfail()
        return ready.addCallback(self._after_wait, entry, records)

    @staticmethod
    def _after_wait(ok: bool, entry: _Entry, records: list[RR]) -> Answer:
        if not ok:
            return servfail()
        svc = entry.service
        svc.touch()
        return Answer(answer=records, cacheable=True, on_hit=svc.hit)
