"""The Arrowhead resolution stage: names summoner does not hold, answered by
a dynamic orchestration.

This stage keeps its own TTL-bounded cache of orchestration results and
answers a cache hit synchronously.  Rendered answers may be replayed by the
wire layer for at most ``WIRE_CACHE_SECONDS``, so a hit costs what a static
record costs while the TTL a client sees is never more than that stale.

Names of the configured Arrowhead domains are answered with a synthetic SOA;
names inside a served zone (with ``zone_names``) reach this stage as an
earlier stage's tentative NXDOMAIN, whose zone (``Answer.zone``) gives the
SOA: this stage never looks zones up itself.

Results from another cloud (``--arrowhead-intercloud``, warning
FROM_OTHER_CLOUD) are answered like local ones; one that arrives VIA_GATEWAY
points at this cloud's Gateway and a session port, so its cache entry (and
every TTL) lives no longer than ``--arrowhead-gateway-session``
(``records.py`` says how its port reaches the client).

Tests: tests/test_arrowhead_dns.py, tests/test_arrowhead_publish.py, tests/test_arrowhead_intercloud.py
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from dnslib import QTYPE, RCODE, RR, SOA
from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from summoner.answer import Answer, Apex, Query, servfail
from summoner.arrowhead import metrics
from summoner.arrowhead.circuit import CircuitBreaker
from summoner.arrowhead.client import (
    ArrowheadClient,
    ArrowheadError,
    ArrowheadHTTPError,
    ArrowheadTimeoutError,
    Provider,
    SystemRef,
)
from summoner.arrowhead.config import ArrowheadConfig, ServiceMapping, valid_name
from summoner.arrowhead.records import records as render_records

# How long the wire layer may replay an encoded answer: bounds how stale the
# TTL inside it can get, and how late a changed provider is noticed.
WIRE_CACHE_SECONDS = 1.0
MAX_CACHED_NAMES = 10_000
MAX_CONCURRENT_LOOKUPS = 64

log = Logger(namespace="summoner.arrowhead")


@dataclass(frozen=True, slots=True)
class _Target:
    """What a query name means to this stage."""

    soa: RR                 # for NXDOMAIN/NODATA authority sections
    service: str | None     # service definition; None for a domain apex
    mapping: ServiceMapping
    srv_target: str | None  # for _svc._tcp names: the host name SRV records point at
    # ``_tcp.<domain>``: it has names below it (``_svc._tcp.<domain>``), so it
    # exists without data -- NODATA, never NXDOMAIN (RFC 8020: resolvers that
    # minimise queries would stop at an NXDOMAIN here).
    empty_non_terminal: bool = False
    # Remote fallback for an on-demand host: the host's own name, which no
    # answer may point at (summoner's own registration of it).
    excluded: str | None = None


@dataclass(frozen=True, slots=True)
class _Entry:
    expires: float
    providers: tuple[Provider, ...]  # empty: negative entry


class ArrowheadStage:
    """A resolution stage; see the module docstring."""

    name = "arrowhead"

    def __init__(self, config: ArrowheadConfig, client: ArrowheadClient, requester: SystemRef,
                 reactor: IReactorTime) -> None:
        self.config = config
        self._client = client
        self._requester = requester.dto()
        self._reactor = reactor
        self.circuit = CircuitBreaker(config.circuit_threshold, config.circuit_cooldown, reactor.seconds)
        self._cache: dict[tuple[str, str], _Entry] = {}
        self._inflight: dict[tuple[str, str], list[defer.Deferred]] = {}
        self._soas: dict[str, RR] = {}
        self.last_error: str | None = None
        self.last_success: float | None = None
        #: called when the Orchestrator no longer knows summoner's system (a
        #: Service Registry whose database was reset); the publisher re-registers
        self.on_unknown_requester: Callable[[], None] | None = None

    # -- the stage interface

    def claims(self, key: str, zone: Apex | None = None) -> bool:
        return self._target(key, zone) is not None

    def resolve(self, query: Query, earlier: Answer | None = None) -> Answer | None | defer.Deferred:
        if earlier is not None and earlier.remote_service is not None:
            return self._remote_fallback(query, earlier, earlier.remote_service)
        target = self._target(query.key, earlier.zone if earlier is not None else None)
        if target is None:
            return None
        if target.service is None:
            return self._apex(query, target)
        if target.empty_non_terminal:
            return Answer(authority=[target.soa])
        if self.config.orchestrator_url is None:
            return None
        if not target.service:
            return self._render(query, target, (), target.soa.ttl)
        return self._lookup(query, target)

    def _remote_fallback(self, query: Query, earlier: Answer, service: str) -> Answer | None | defer.Deferred:
        """An on-demand host whose VM cannot boot: another provider of its
        service, never summoner's own registration of that very name."""
        if self.config.orchestrator_url is None or earlier.zone is None:
            return None
        mapping = self.config.mapping_for(query.key)
        return self._lookup(query, _Target(earlier.zone.soa, service, mapping, None, excluded=query.key))

    def _lookup(self, query: Query, target: _Target) -> Answer | None | defer.Deferred:
        assert target.service
        key = (target.service, target.mapping.suffix)
        entry = self._cache.get(key)
        now = self._reactor.seconds()
        if entry is not None:
            if entry.expires > now:
                return self._render(query, target, entry.providers, entry.expires - now, fresh=False)
            del self._cache[key]
        waiting: defer.Deferred = defer.Deferred()
        waiters = self._inflight.get(key)
        if waiters is not None:
            waiters.append(waiting)  # one orchestration call per name, however many ask
        elif not self.circuit.allow():
            metrics.LOOKUPS.labels("circuit_open").inc()
            return self._unanswerable(target)
        elif len(self._inflight) >= MAX_CONCURRENT_LOOKUPS:
            # A flood of distinct names must not become a flood of HTTPS
            # requests at the Orchestrator: beyond the cap, SERVFAIL at once.
            metrics.LOOKUPS.labels("overloaded").inc()
            return self._unanswerable(target)
        else:
            self._inflight[key] = [waiting]
            self._orchestrate(key, target)
        return waiting.addCallbacks(self._answer, self._failed, callbackArgs=(query, target), errbackArgs=(target,))

    # -- names

    def _target(self, key: str, zone: Apex | None) -> _Target | None:
        """``zone``: the served zone holding ``key``, from an earlier stage's
        tentative answer (None: in no served zone)."""
        domain = self._domain_of(key)
        if zone is not None:
            if key == zone.origin or (domain is None and not self.config.zone_names):
                return None  # a zone apex, or in-zone names are not ours to take
            soa = zone.soa
        elif domain is not None:
            soa = self._synthetic_soa(domain)
        else:
            return None
        mapping = self.config.mapping_for(key)
        if key == domain:
            return _Target(soa, None, mapping, None)
        labels = key.split(".")
        if labels[0] in ("_tcp", "_udp"):
            return _Target(soa, "", mapping, None, empty_non_terminal=True)
        first, srv_target = labels[0], None
        if len(labels) > 2 and first.startswith("_") and labels[1] in ("_tcp", "_udp"):
            first = first[1:]
            srv_target = ".".join([first, *labels[2:]])
        service = mapping.service or first
        # A label that cannot be an Arrowhead service definition gets an
        # NXDOMAIN without bothering the Orchestrator.
        return _Target(soa, service if valid_name(service) else "", mapping, srv_target)

    def _domain_of(self, key: str) -> str | None:
        best = None
        for domain in self.config.domains:
            if (key == domain or key.endswith("." + domain)) and (best is None or len(domain) > len(best)):
                best = domain
        return best

    def _synthetic_soa(self, domain: str) -> RR:
        soa = self._soas.get(domain)
        if soa is None:
            negative = min(self.config.ttl, 300)
            soa = RR(domain + ".", QTYPE.SOA, ttl=negative, rdata=SOA(
                domain + ".", "hostmaster." + domain + ".", (1, 3600, 600, 86400, negative)))
            self._soas[domain] = soa
        return soa

    def _apex(self, query: Query, target: _Target) -> Answer:
        answer = [target.soa] if query.qtype in (QTYPE.SOA, QTYPE.ANY) else []
        return Answer(answer=answer, authority=[] if answer else [target.soa], cacheable=False)

    # -- orchestration

    def _form(self, target: _Target) -> dict[str, Any]:
        mapping, config = target.mapping, self.config
        metadata_search = config.metadata_search if config.metadata_search is not None else bool(mapping.metadata)
        return {
            "requesterSystem": self._requester,
            "requesterCloud": None,
            "requestedService": {
                "serviceDefinitionRequirement": target.service,
                "interfaceRequirements": list(mapping.interfaces) or None,
                "securityRequirements": list(mapping.security) or None,
                "metadataRequirements": dict(mapping.metadata) or None,
                "versionRequirement": mapping.version,
                "minVersionRequirement": None,
                "maxVersionRequirement": None,
                "providerAddressTypeRequirements": None,
                "pingProviders": config.ping_providers,
            },
            # Every flag upstream knows, explicitly: all default to false there,
            # and overrideStore=false would mean an Orchestrator-Store lookup.
            "orchestrationFlags": {
                "matchmaking": config.matchmaking, "metadataSearch": metadata_search, "onlyPreferred": False,
                "pingProviders": config.ping_providers, "overrideStore": True, "triggerInterCloud": False,
                "externalServiceRequest": False, "enableInterCloud": config.intercloud, "enableQoS": False,
                "onlyIPAddressResponse": False, "onlyIPv4AddressResponse": False, "onlyIPv6AddressResponse": False,
            },
            "preferredProviders": [],
            "commands": {},
            "qosRequirements": {},
        }

    def _orchestrate(self, key: tuple[str, str], target: _Target) -> None:
        started = time.perf_counter()
        d = self._client.orchestrate(self._form(target), timeout=self.config.deadline)

        def done(providers: list[Provider]) -> None:
            metrics.LOOKUP_SECONDS.observe(time.perf_counter() - started)
            self.circuit.succeeded()
            self.last_success = self._reactor.seconds()
            expires = (self._reactor.seconds() + self._lifetime(providers) if providers
                       else self._negative_expiry(target))
            self._settle(key, tuple(providers), expires)

        def failed(failure: Failure) -> None:
            metrics.LOOKUP_SECONDS.observe(time.perf_counter() - started)
            error = failure.value
            if not isinstance(error, ArrowheadError):
                log.failure("Arrowhead lookup of {service} failed", failure, service=target.service)
                self.circuit.failed()
            elif error.unhealthy:
                self.circuit.failed()
            else:
                self.circuit.succeeded()  # it answered, only not to our liking
            self.last_error = str(error)
            if _unknown_requester(error) and self.on_unknown_requester is not None:
                self.on_unknown_requester()
            log.warn("Arrowhead lookup of service {service} failed: {error}{hint}",
                     service=target.service, error=error, hint=_hint(error))
            for waiting in self._inflight.pop(key, []):
                waiting.errback(failure)

        d.addCallbacks(done, failed)

    def _lifetime(self, providers: list[Provider]) -> float:
        """How long a positive result is cached: --arrowhead-ttl, and for a
        result through the Gateway no longer than its session's port is
        good for (--arrowhead-gateway-session)."""
        lifetime = self.config.ttl
        for provider in providers:
            if provider.from_other_cloud:
                metrics.INTERCLOUD.labels("gateway" if provider.via_gateway else "direct").inc()
            if provider.via_gateway:
                lifetime = min(lifetime, self.config.gateway_session)
        return lifetime

    def _negative_expiry(self, target: _Target) -> float:
        # RFC 2308: negative answers live for min(SOA TTL, SOA minimum); and
        # never longer than a positive one, or a provider that registers just
        # after a miss would stay invisible past --arrowhead-ttl.
        lifetime = min(target.soa.ttl, target.soa.rdata.times[4], self.config.ttl)
        return self._reactor.seconds() + lifetime

    def _settle(self, key: tuple[str, str], providers: tuple[Provider, ...], expires: float) -> None:
        if len(self._cache) >= MAX_CACHED_NAMES:
            # Random-name floods must not grow memory without bound: drop what
            # has expired, and everything if that is not enough.
            now = self._reactor.seconds()
            self._cache = {k: e for k, e in self._cache.items() if e.expires > now}
            if len(self._cache) >= MAX_CACHED_NAMES:
                self._cache.clear()
        self._cache[key] = _Entry(expires, providers)
        for waiting in self._inflight.pop(key, []):
            waiting.callback(_Entry(expires, providers))

    def _answer(self, result: _Entry, query: Query, target: _Target) -> Answer | None:
        metrics.LOOKUPS.labels("answer" if result.providers else "nxdomain").inc()
        return self._render(query, target, result.providers, result.expires - self._reactor.seconds(), fresh=True)

    # -- answers

    def _render(self, query: Query, target: _Target, providers: tuple[Provider, ...], remaining: float,
                fresh: bool = False) -> Answer | None:
        if target.excluded is not None:
            return self._render_fallback(query, target, providers, remaining)
        # The TTL never outlives the cache entry behind it.
        ttl = max(1, min(self.config.ttl, int(remaining)))
        replay = min(WIRE_CACHE_SECONDS, max(remaining, 0.0))
        # Every delivery of this answer, wire-level replays (on_hit) included,
        # is a cache hit, except the first delivery of a fresh orchestration result.
        on_hit = _cache_hit("positive" if providers else "negative")
        if not fresh:
            on_hit()
        soa = RR(target.soa.rname, QTYPE.SOA, ttl=min(ttl, target.soa.ttl), rdata=target.soa.rdata)
        if not providers:
            return Answer(rcode=RCODE.NXDOMAIN, authority=[soa], cacheable=True, cache_seconds=replay, on_hit=on_hit)
        records, additional = render_records(query, target.srv_target, providers, ttl)
        if records:
            return Answer(answer=records, additional=additional, cacheable=True, cache_seconds=replay, on_hit=on_hit)
        return Answer(authority=[soa], cacheable=True, cache_seconds=replay, on_hit=on_hit)  # NODATA

    def _render_fallback(self, query: Query, target: _Target, providers: tuple[Provider, ...],
                         remaining: float) -> Answer | None:
        others = tuple(p for p in providers if p.address.rstrip(".").lower() != target.excluded)
        if not others:
            metrics.FALLBACKS.labels("no_provider").inc()
            return None  # the on-demand stage's SERVFAIL stands
        metrics.FALLBACKS.labels("answer").inc()
        ttl = max(1, min(self.config.ttl, int(remaining)))
        records, additional = render_records(query, target.srv_target, others, ttl)
        # Not replayed by the wire layer: every query passes the on-demand
        # stage again, so the local VM is used again once it can boot.
        return Answer(answer=records, additional=additional, authority=[] if records else [target.soa],
                      cacheable=False)

    # -- errors reach DNS as SERVFAIL

    @staticmethod
    def _unanswerable(target: _Target) -> Answer | None:
        """The Orchestrator cannot be asked: SERVFAIL, or for a remote
        fallback the on-demand stage's own SERVFAIL."""
        if target.excluded is not None:
            metrics.FALLBACKS.labels("error").inc()
            return None
        return servfail()

    @staticmethod
    def _failed(failure: Failure, target: _Target) -> Answer | None:
        metrics.LOOKUPS.labels("timeout" if failure.check(ArrowheadTimeoutError) else "error").inc()
        return ArrowheadStage._unanswerable(target)

    def status(self) -> dict[str, Any]:
        return {
            "orchestrator": self.config.orchestrator_url,
            "circuit": self.circuit.state,
            "consecutive_failures": self.circuit.failures,
            "last_error": self.last_error,
            "last_success": self.last_success,
            "cached_names": len(self._cache),
            "lookups_in_flight": len(self._inflight),
        }


def _unknown_requester(error: ArrowheadError) -> bool:
    # Authorization's answer when the requester triple is not a known system.
    message = error.error.error_message if isinstance(error, ArrowheadHTTPError) and error.error else ""
    return "not exist in the database" in message


def _hint(error: ArrowheadError) -> str:
    if _unknown_requester(error):
        return ("; summoner's own system is not registered in the Service Registry with this name, address and "
                "port (set --arrowhead-registry, or register it and add an authorization rule)")
    if isinstance(error, ArrowheadHTTPError) and error.status == 401:
        return "; the core system rejected summoner's certificate or system name"
    return ""


def _cache_hit(kind: str) -> Callable[[], bool]:
    """An ``on_hit`` counting a cache hit of ``kind``; the answer always holds
    (its replay is bounded by ``cache_seconds`` instead)."""
    counter = metrics.CACHE_HITS.labels(kind)

    def hit() -> bool:
        counter.inc()
        return True
    return hit
