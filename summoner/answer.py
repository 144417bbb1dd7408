"""What flows through the resolution chain: the question a stage sees
(``Query``), what a stage says (``Answer``), the zone a name is in (``Apex``)
and the one canonical form of a name (``name_key``).

The lowest module of the DNS half: the chain, the stages, the compiled
answers and the zone parser all use these, and it imports none of them.

Tests: tests/test_resolution.py
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from dnslib import QTYPE, RCODE, RR, DNSLabel
from twisted.internet import defer


@dataclass(frozen=True, slots=True)
class Query:
    """One question, as stages see it.

    ``name`` is the name as the client wrote it (stages must compare
    case-insensitively; ``key`` is the lower-cased form with no trailing dot).
    """

    name: DNSLabel
    qtype: int
    qclass: int = 1
    key: str = ""
    protocol: str = "udp"

    @classmethod
    def of(cls, name: str | DNSLabel, qtype: int | str, protocol: str = "udp") -> Query:
        label = name if isinstance(name, DNSLabel) else DNSLabel(name)
        numeric = qtype if isinstance(qtype, int) else getattr(QTYPE, qtype)
        return cls(label, numeric, 1, name_key(label), protocol)

    @property
    def type_name(self) -> str:
        return QTYPE.get(self.qtype, f"TYPE{self.qtype}")


def name_key(name: DNSLabel | str) -> str:
    """Canonical lookup key of a name: lower case, no trailing dot."""
    return str(name).rstrip(".").lower()


@dataclass(frozen=True, slots=True)
class Apex:
    """The served zone a name is in: its origin (a key, as ``name_key``
    gives it) and the SOA record an authority section carries for it (with
    the RFC 2308 negative TTL)."""

    origin: str
    soa: RR


@dataclass(slots=True)
class Answer:
    """What a stage says about a query.

    ``cacheable`` tells the wire layer it may keep the encoded response and
    replay it for identical questions (until the app clears the whole cache
    on a zone reload).
    ``cache_seconds`` bounds how long that replay may last, for answers whose
    TTLs count down (None: no time limit).
    ``on_hit`` is called on every replay of the cached answer (not on its
    first delivery, which the stage has seen itself).  It records demand
    (idle reaping needs that) and returns whether the cached answer still
    holds: False, and the wire layer drops that one entry and resolves the
    query afresh through the chain (a VM that stopped is summoned again);
    every other cached answer stays.  None: the answer holds until the cache
    is cleared or ``cache_seconds`` pass.
    ``zone``: for a tentative answer, the served zone the name is in; the
    chain hands the tentative answer to later stages (``earlier``), which
    answer in-zone names with that zone's SOA.
    ``remote_service``: for a tentative answer about a name whose own
    provider cannot answer now (an on-demand VM that cannot boot), the
    service the name stands for; a later stage may answer with another
    provider of that service (remote fallback), else this answer stands.
    """

    rcode: int = RCODE.NOERROR
    answer: list[RR] = field(default_factory=list)
    authority: list[RR] = field(default_factory=list)
    additional: list[RR] = field(default_factory=list)
    authoritative: bool = True
    tentative: bool = False
    cacheable: bool = True
    cache_seconds: float | None = None
    on_hit: Callable[[], bool] | None = None
    zone: Apex | None = None
    remote_service: str | None = None


def refused() -> Answer:
    return Answer(rcode=RCODE.REFUSED, authoritative=False, cacheable=True)


def servfail() -> Answer:
    return Answer(rcode=RCODE.SERVFAIL, authoritative=False, cacheable=False)


StageResult = Answer | None | defer.Deferred
