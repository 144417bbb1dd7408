"""The on-demand stage of the resolution chain.

For an on-demand host: A/AAAA → summon (warm: synchronous, cacheable answer;
cold: a Deferred firing when the probe succeeds, SERVFAIL on failure); other
types → NODATA with the zone's SOA (records of other types that the zone kept
are answered by the static stage before us).  Other names → None.

A host whose VM cannot boot now (in back-off after failures, refused for
capacity, libvirt unreachable, a boot that failed) gets SERVFAIL, unless the
app wired ``remote`` (Arrowhead configured): then the SERVFAIL is tentative
and names the service the host stands for (``Answer.remote_service``), and a
later stage may answer with another provider of it.

A replayed answer asks its service (``on_hit=Service.hit``): demand is
recorded, and once the service is no longer READY the wire layer drops that
answer and asks this stage again, which summons the VM anew.

Tests: tests/test_wire.py (replay and re-summoning), tests/vm/test_fleet.py,
tests/test_arrowhead_fallback.py (remote fallback)
"""

from __future__ import annotations

from collections.abc import Callable

from dnslib import QTYPE, RCODE, RR
from twisted.internet import defer

from summoner.answer import Answer, Apex, Query, servfail
from summoner.vm.fleet import Fleet
from summoner.vm.hosts import OnDemandHost
from summoner.vm.lifecycle import Service

#: The service a host stands for elsewhere, or None: no remote fallback for it.
RemoteService = Callable[[OnDemandHost], str | None]

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

    def __init__(self, fleet: Fleet, remote: RemoteService | None = None) -> None:
        self.fleet = fleet
        self.remote = remote
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
            return self._cannot_boot(svc)
        return ready.addCallback(self._after_wait, entry, records)

    def _after_wait(self, ok: bool, entry: _Entry, records: list[RR]) -> Answer:
        svc = entry.service
        if not ok:
            return self._cannot_boot(svc)
        svc.touch()
        return Answer(answer=records, cacheable=True, on_hit=svc.hit)

    def _cannot_boot(self, svc: Service) -> Answer:
        service = self.remote(svc.host) if self.remote is not None else None
        if service is None:
            return servfail()
        host = svc.host
        return Answer(rcode=RCODE.SERVFAIL, authoritative=False, cacheable=False, tentative=True,
                      zone=Apex(host.zone, host.soa), remote_service=service)
