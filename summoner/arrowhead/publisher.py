"""Publishing summoner's on-demand hosts in the Arrowhead Service Registry.

The registered provider is summoner's own system with the host's DNS name as
its address: a consumer that connects to it resolves the name through summoner
and so summons the VM.  Everything here is asynchronous and retried with
back-off; a Service Registry that is down never delays DNS serving.

summoner's system itself (the orchestration requester) is registered first and
is never unregistered: Authorization rules refer to its database id, and
removing the system would drop the operator's rules with it.

Tests: tests/test_arrowhead_publish.py, tests/test_arrowhead_dns.py (end to end),
tests/test_arrowhead_addresses.py (publish_problems).
"""

from __future__ import annotations

from collections.abc import Generator, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from summoner.answer import name_key
from summoner.arrowhead import metrics
from summoner.arrowhead.addresses import address_problem
from summoner.arrowhead.client import ArrowheadClient, ArrowheadError, ArrowheadHTTPError, SystemRef
from summoner.arrowhead.config import ArrowheadConfig, valid_name
from summoner.backoff import Backoff

log = Logger(namespace="summoner.arrowhead")

# What an inlineCallbacks method is before the decorator: it yields Deferreds.
Steps = Generator[defer.Deferred[object], object, bool]


class PublishableHost(Protocol):
    """What ``published_services`` reads of a host (the on-demand part's
    OnDemandHost; ``port`` and ``extra`` may be missing)."""

    @property
    def name(self) -> str: ...
    @property
    def image(self) -> str: ...


@dataclass(frozen=True)
class PublishedService:
    """One on-demand host as a service offered to the Arrowhead cloud."""

    dns_name: str            # the host's name; becomes the provider address
    service_definition: str  # e.g. "hello"
    port: int                # the port the image serves on
    image: str               # published as metadata "summoner-image"
    uri: str = "/"
    metadata: Mapping[str, str] = field(default_factory=dict, hash=False)

    @property
    def key(self) -> tuple[str, str, int, str]:
        """What the Service Registry treats as one entry."""
        return (self.service_definition.lower(), name_key(self.dns_name), self.port, self.uri)


def _published(host: PublishableHost) -> bool:
    extra = getattr(host, "extra", None) or {}
    return str(extra.get("arrowhead", "on")).lower() not in ("off", "no", "false")


def _definition(host: PublishableHost) -> str:
    extra = getattr(host, "extra", None) or {}
    return str(extra.get("arrowhead-service") or name_key(host.name).split(".", 1)[0])


_SWITCH = {"on": True, "yes": True, "true": True, "off": False, "no": False, "false": False}


def fallback_service(host: PublishableHost) -> str | None:
    """The service definition under which another provider may answer for
    ``host`` while its own VM cannot boot (remote fallback); None when its
    ``_summoner`` TXT record says ``arrowhead-fallback=off``.  The same
    definition it is published under, published or not."""
    extra = getattr(host, "extra", None) or {}
    if not _SWITCH.get(str(extra.get("arrowhead-fallback", "on")).lower(), True):
        return None
    definition = _definition(host)
    return definition.lower() if valid_name(definition) else None


def fallback_problems(hosts: Iterable[PublishableHost]) -> list[str]:
    """``file:line: reason`` for each host whose ``arrowhead-fallback=`` is neither on nor off."""
    problems = []
    for host in hosts:
        value = (getattr(host, "extra", None) or {}).get("arrowhead-fallback")
        if value is not None and str(value).lower() not in _SWITCH:
            where = getattr(host, "location", host.name)
            problems.append(f"{where}: arrowhead-fallback={value!r} must be on or off (on by default when "
                            f"Arrowhead is configured: answer with another provider of the host's service "
                            f"while its VM cannot boot)")
    return problems


def published_services(hosts: Iterable[PublishableHost], default_port: int = 80) -> list[PublishedService]:
    """PublishedService for each on-demand host (anything with ``name``,
    ``image``, ``port`` and an ``extra`` dict of its ``_summoner`` TXT keys).

    The service definition is ``arrowhead-service=`` from the TXT record, else
    the host's first label; ``arrowhead-uri=`` sets the service URI.  Hosts
    whose definition Arrowhead would reject are skipped with a warning (a
    served zone set never has them: see ``publish_problems``), and
    ``arrowhead=off`` keeps a host unpublished.
    """
    out = []
    for host in filter(_published, hosts):
        extra = dict(getattr(host, "extra", None) or {})
        name, definition = name_key(host.name), _definition(host)
        if not valid_name(definition):
            log.warn("Arrowhead: not publishing {name}: {definition!r} is not a valid service definition "
                     "(set arrowhead-service= in its _summoner TXT record)", name=name, definition=definition)
            continue
        port = getattr(host, "port", None) or default_port
        metadata = {k: v for k, v in extra.items() if k.startswith("meta.")}
        out.append(PublishedService(name, definition.lower(), int(port), str(host.image),
                                    extra.get("arrowhead-uri", "/"),
                                    {k[5:]: v for k, v in metadata.items()}))
    return out


def publish_problems(hosts: Iterable[PublishableHost]) -> list[str]:
    """``file:line: reason`` for each host to be published whose provider
    address (its DNS name) or service definition the Service Registry would
    refuse with a 400: the zones are refused at load instead."""
    problems = []
    for host in filter(_published, hosts):
        name, definition = name_key(host.name), _definition(host)
        where = f"{getattr(host, 'location', name)}: on-demand host {name} cannot be published in Arrowhead"
        off = "set arrowhead=off in its _summoner TXT record, or serve with --no-arrowhead-publish"
        reason = address_problem(name)
        if reason is not None:
            problems.append(f"{where}: the Service Registry refuses {name} as a provider address: {reason} "
                            f"(NetworkAddressVerifier) -- fix: rename the host, or {off}")
        if not valid_name(definition):
            problems.append(f"{where}: the Service Registry refuses the service definition {definition!r}: it "
                            f"must be letters, digits and dashes, start with a letter and be at most 63 characters "
                            f"-- fix: set arrowhead-service=NAME in its _summoner TXT record, or {off}")
    return problems


@dataclass
class _Record:
    service: PublishedService
    state: str = "pending"  # pending | registered | failed
    attempts: int = 0
    last_error: str | None = None


class ArrowheadPublisher:
    def __init__(self, config: ArrowheadConfig, client: ArrowheadClient, own: SystemRef, reactor: IReactorTime, *,
                 first_retry: float = 1.0, max_retry: float = 60.0, request_timeout: float = 5.0) -> None:
        self.config = config
        self._client = client
        self._own = own
        self._reactor = reactor
        self._backoff = Backoff(first_retry, max_retry, jitter=0.2)
        self._timeout = request_timeout
        self._records: dict[tuple[str, str, int, str], _Record] = {}
        self._desired: dict[tuple[str, str, int, str], PublishedService] = {}
        self.system_state = "pending"
        self.system_error: str | None = None
        self._started = False
        self._stopping = False
        self._run: defer.Deferred | None = None
        self._retry_call: IDelayedCall | None = None

    # -- the app's interface

    def update_services(self, services: Iterable[PublishedService]) -> None:
        """Make the Service Registry hold exactly these services (eventually)."""
        if self._stopping:
            return
        self._desired = {s.key: s for s in services} if self.config.publish else {}
        if self._started:
            self._kick()

    def start(self) -> defer.Deferred:
        """Begin registering in the background; fires at once."""
        self._started = True
        if self.config.registry_url is not None:
            self._kick()
        return defer.succeed(None)

    @defer.inlineCallbacks
    def stop(self) -> Generator[defer.Deferred[object], object, None]:
        """Clean shutdown: unregister what was registered (bounded in time)."""
        self._stopping = True
        self._desired = {}
        if self._retry_call is not None and self._retry_call.active():
            self._retry_call.cancel()
        if self._run is not None:
            yield self._run
        registered = [r for r in self._records.values() if r.state == "registered"]
        if registered:
            yield defer.DeferredList([self._unregister(r) for r in registered], consumeErrors=True)
        yield self._client.close()

    def system_lost(self) -> None:
        """The core systems no longer know summoner's system: register it again."""
        if self.system_state == "registered":
            log.warn("Arrowhead: the Orchestrator does not know system {name} any more; registering it again",
                     name=self._own.system_name)
            self.system_state = "pending"
            # A registry that forgot the system forgot its services too.
            for record in self._records.values():
                record.state = "pending"
            self._kick()

    def status(self) -> dict[str, Any]:
        return {
            "registry": self.config.registry_url,
            "system": {"name": self._own.system_name, "address": self._own.address, "port": self._own.port,
                       "state": self.system_state, "last_error": self.system_error},
            "services": [
                {"dns_name": r.service.dns_name, "service_definition": r.service.service_definition,
                 "port": r.service.port, "uri": r.service.uri, "state": r.state, "attempts": r.attempts,
                 "last_error": r.last_error}
                for r in self._records.values()],
        }

    # -- reconciliation

    def _kick(self) -> None:
        if self._run is None and not self._stopping and self.config.registry_url is not None:
            if self._retry_call is not None and self._retry_call.active():
                self._retry_call.cancel()
            self._run = self._reconcile()
            self._run.addBoth(self._ran)

    def _ran(self, outcome: bool | Failure) -> None:
        self._run = None
        if isinstance(outcome, Failure):
            log.failure("Arrowhead publisher failed", outcome)
            outcome = False
        if self._stopping:
            return
        if outcome:
            self._backoff.succeeded()
            if self._pending():
                self._kick()  # the wanted set changed while we worked
        else:
            delay = self._backoff.failed()
            self._retry_call = self._reactor.callLater(delay, self._kick)

    def _pending(self) -> bool:
        if self.system_state != "registered":
            return True
        wanted = self._desired
        return any(k not in self._records or self._records[k].state != "registered"
                   or self._records[k].service != service for k, service in wanted.items()) or any(
            k not in wanted for k in self._records)

    @defer.inlineCallbacks
    def _reconcile(self) -> Steps:
        """One pass; True when everything is in place, False to retry later."""
        if self.system_state != "registered":
            if not (yield self._register_system()):
                return False
        ok = True
        for key in [k for k in self._records if k not in self._desired]:
            if self._stopping:
                return True
            ok = (yield self._unregister(self._records[key])) and ok
        for key, service in list(self._desired.items()):
            if self._stopping:
                return True
            record = self._records.get(key)
            if record is not None and record.state == "registered" and record.service != service:
                # Same entry, new metadata or interfaces: the registry answers a
                # second register with "already exists", so withdraw it first.
                if not (yield self._unregister(record)):
                    ok = False
                    continue
            record = self._records.setdefault(key, _Record(service))
            if record.state != "registered":
                record.service = service  # register what is wanted now, not what was
                ok = (yield self._register(record)) and ok
        return ok

    @defer.inlineCallbacks
    def _register_system(self) -> Steps:
        try:
            yield self._client.register_system(self._own, self._timeout)
            metrics.REGISTRATIONS.labels("system_registered").inc()
        except ArrowheadHTTPError as exc:
            if not exc.already_exists:
                return self._system_failed(exc)
            metrics.REGISTRATIONS.labels("system_registered").inc()
        except ArrowheadError as exc:
            return self._system_failed(exc)
        self.system_state, self.system_error = "registered", None
        log.info("Arrowhead: system {name} ({address}:{port}) is registered", name=self._own.system_name,
                 address=self._own.address, port=self._own.port)
        return True

    def _system_failed(self, error: ArrowheadError) -> bool:
        metrics.REGISTRATIONS.labels("system_failed").inc()
        self.system_state, self.system_error = "failed", str(error)
        log.warn("Arrowhead: cannot register system {name}, retrying in about {delay:.0f} s: {error}",
                 name=self._own.system_name, delay=self._backoff.upcoming, error=error)
        return False

    def _body(self, service: PublishedService) -> dict[str, Any]:
        provider = SystemRef(self._own.system_name, service.dns_name.rstrip("."), service.port,
                             self._own.authentication_info)
        return {
            "serviceDefinition": service.service_definition.lower(),
            "providerSystem": provider.dto(),
            "serviceUri": service.uri,
            "endOfValidity": None,
            # With a client certificate the provider is the certificate's
            # system; CERTIFICATE needs the authenticationInfo we send.
            "secure": "CERTIFICATE" if self.config.secure else "NOT_SECURE",
            "metadata": {"summoner-image": service.image, **service.metadata},
            "version": None,
            "interfaces": list(self.config.publish_interfaces),
        }

    @defer.inlineCallbacks
    def _register(self, record: _Record) -> Steps:
        record.attempts += 1
        service = record.service
        result = "registered"
        try:
            yield self._client.register_service(self._body(service), self._timeout)
        except ArrowheadHTTPError as exc:
            if not exc.already_exists:
                return self._failed(record, exc)
            result = "already_registered"  # e.g. left over from before a crash: just as good
        except ArrowheadError as exc:
            return self._failed(record, exc)
        metrics.REGISTRATIONS.labels(result).inc()
        record.state, record.last_error = "registered", None
        log.info("Arrowhead: published {service} at {name}:{port}", service=service.service_definition,
                 name=service.dns_name, port=service.port)
        return True

    def _failed(self, record: _Record, error: ArrowheadError) -> bool:
        metrics.REGISTRATIONS.labels("failed").inc()
        record.state, record.last_error = "failed", str(error)
        log.warn("Arrowhead: cannot publish {service} at {name}, will retry: {error}",
                 service=record.service.service_definition, name=record.service.dns_name, error=error)
        return False

    @defer.inlineCallbacks
    def _unregister(self, record: _Record) -> Steps:
        service = record.service
        provider = SystemRef(self._own.system_name, service.dns_name.rstrip("."), service.port)
        try:
            yield self._client.unregister_service(service_definition=service.service_definition.lower(),
                                                  system=provider, service_uri=service.uri, timeout=self._timeout)
        except ArrowheadHTTPError as exc:
            if exc.status != 400:  # 400: no such entry, which is what we wanted
                return self._unregister_failed(record, exc)
        except ArrowheadError as exc:
            return self._unregister_failed(record, exc)
        metrics.REGISTRATIONS.labels("unregistered").inc()
        self._records.pop(service.key, None)
        log.info("Arrowhead: withdrew {service} at {name}", service=service.service_definition,
                 name=service.dns_name)
        return True

    def _unregister_failed(self, record: _Record, error: ArrowheadError) -> bool:
        metrics.REGISTRATIONS.labels("unregister_failed").inc()
        record.last_error = str(error)
        log.warn("Arrowhead: cannot withdraw {service} at {name}: {error}",
                 service=record.service.service_definition, name=record.service.dns_name, error=error)
        return False
