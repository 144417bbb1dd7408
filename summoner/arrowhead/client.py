"""HTTP client of the Arrowhead 4.x core systems and their DTOs (mutual TLS:
``summoner.arrowhead.tls``, whose names are re-exported here).

Why Twisted's ``Agent`` and not ``requests`` on a thread pool: every call here
sits on the DNS answer path and has a hard deadline.  With ``Agent`` a timed-out
request is cancelled (its connection aborted) instead of occupying a pool
thread until a socket timeout; there is no thread hop on the fast path; the
connection pool gives the same keep-alive reuse as a ``requests.Session``.

Tests: tests/test_arrowhead_dns.py, tests/test_arrowhead_publish.py, tests/test_arrowhead_secure.py.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode, urlsplit

from OpenSSL import SSL
from twisted.internet import defer, protocol
from twisted.internet.error import ConnectError, ConnectingCancelledError, ConnectionLost, DNSLookupError
from twisted.internet.interfaces import IConsumer, IReactorTime
from twisted.python.failure import Failure
from twisted.web.client import Agent, HTTPConnectionPool, ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.iweb import IBodyProducer, IResponse
from zope.interface import implementer

from summoner.arrowhead.tls import TLSConfigError, TLSMaterial, TLSPolicy, load_tls, ssl_reason

__all__ = ["MGMT_INTERFACES", "MGMT_INTRACLOUD", "MGMT_SERVICES", "MGMT_SYSTEMS", "ORCHESTRATION",
           "ORCHESTRATOR_ECHO", "REGISTER", "REGISTER_SYSTEM", "REGISTRY_ECHO", "UNREGISTER",
           "ArrowheadClient", "ArrowheadError", "ArrowheadHTTPError", "ArrowheadMalformedError",
           "ArrowheadTLSError", "ArrowheadTimeoutError", "ArrowheadUnavailableError", "ErrorMessage", "Provider",
           "SystemRef", "TLSConfigError", "TLSMaterial", "load_tls", "parse_orchestration", "split_url"]

# Paths, from CommonConstants.
ORCHESTRATION = "/orchestrator/orchestration"
ORCHESTRATOR_ECHO = "/orchestrator/echo"
REGISTER = "/serviceregistry/register"
UNREGISTER = "/serviceregistry/unregister"
REGISTER_SYSTEM = "/serviceregistry/register-system"
REGISTRY_ECHO = "/serviceregistry/echo"
MGMT_SYSTEMS = "/serviceregistry/mgmt/systems"
MGMT_SERVICES = "/serviceregistry/mgmt/services"
MGMT_INTERFACES = "/serviceregistry/mgmt/interfaces"
MGMT_INTRACLOUD = "/authorization/mgmt/intracloud"


# --------------------------------------------------------------------------- errors


class ArrowheadError(Exception):
    """Any failed Arrowhead call."""

    #: whether this failure says the core system is unhealthy (trips the breaker)
    unhealthy = True


class ArrowheadUnavailableError(ArrowheadError):
    """No HTTP answer at all: refused, reset, DNS failure, TLS failure."""


class ArrowheadTimeoutError(ArrowheadUnavailableError):
    """No answer within the deadline."""


class ArrowheadTLSError(ArrowheadUnavailableError):
    """The TLS handshake failed; the message says which side refused."""


class ArrowheadMalformedError(ArrowheadError):
    """An answer that is not the JSON document the API promises."""


@dataclass(frozen=True, slots=True)
class ErrorMessage:
    """Upstream ``ErrorMessageDTO``."""

    error_message: str
    error_code: int | None = None
    exception_type: str | None = None
    origin: str | None = None

    @classmethod
    def from_body(cls, body: bytes) -> ErrorMessage | None:
        try:
            data = json.loads(body)
        except ValueError:
            return None
        if not isinstance(data, dict) or "errorMessage" not in data:
            return None
        code = data.get("errorCode")
        return cls(str(data.get("errorMessage")), code if isinstance(code, int) else None,
                   data.get("exceptionType"), data.get("origin"))

    def __str__(self) -> str:
        text = f"{self.error_message} ({self.exception_type or 'no type'}"
        return text + (f", origin {self.origin})" if self.origin else ")")


class ArrowheadHTTPError(ArrowheadError):
    """A non-success HTTP status; ``error`` is the decoded ``ErrorMessageDTO``."""

    def __init__(self, url: str, status: int, body: bytes) -> None:
        self.url = url
        self.status = status
        self.body = body
        self.error = ErrorMessage.from_body(body)
        detail = str(self.error) if self.error else (body[:200].decode("utf-8", "replace") or "empty body")
        super().__init__(f"{url} answered HTTP {status}: {detail}")

    @property
    def unhealthy(self) -> bool:  # type: ignore[override]
        # A 4xx is the core system working and telling us we are wrong; only
        # server-side failures should open the circuit.
        return self.status >= 500

    @property
    def already_exists(self) -> bool:
        """Upstream's duplicate-registration answer (400 ``... already exists.``)."""
        return (self.status == 400 and self.error is not None
                and "already exists" in self.error.error_message)


# ----------------------------------------------------------------------------- DTOs


@dataclass(frozen=True, slots=True)
class SystemRef:
    """``SystemRequestDTO``: how Arrowhead identifies a system (name, address, port)."""

    system_name: str
    address: str
    port: int
    authentication_info: str | None = None
    metadata: Mapping[str, str] | None = field(default=None, hash=False)

    def dto(self) -> dict[str, Any]:
        return {"systemName": self.system_name, "address": self.address, "port": self.port,
                "authenticationInfo": self.authentication_info,
                "metadata": dict(self.metadata) if self.metadata else None}


@dataclass(frozen=True, slots=True)
class Provider:
    """The parts of an ``OrchestrationResultDTO`` that DNS can express."""

    system_name: str
    address: str
    port: int
    service_definition: str
    service_uri: str
    secure: str
    interfaces: tuple[str, ...]
    warnings: tuple[str, ...]

    @property
    def via_gateway(self) -> bool:
        """Another cloud's provider, reached through this cloud's Gateway:
        ``address`` and ``port`` are the Gateway's and its session's."""
        return "VIA_GATEWAY" in self.warnings

    @property
    def from_other_cloud(self) -> bool:
        return "FROM_OTHER_CLOUD" in self.warnings

    @property
    def ip(self) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
        try:
            return ipaddress.ip_address(self.address)
        except ValueError:
            return None


def parse_orchestration(body: bytes) -> list[Provider]:
    """``OrchestrationResponseDTO`` → providers; anything off-shape is malformed."""
    try:
        data = json.loads(body)
        results = data["response"]
        if not isinstance(results, list):
            raise TypeError("response is not a list")
        providers = []
        for result in results:
            system = result["provider"]
            port = system["port"]
            if not isinstance(port, int) or not 0 <= port <= 65535 or not system["address"]:
                raise ValueError(f"bad provider address/port {system.get('address')!r}:{port!r}")
            providers.append(Provider(
                system_name=str(system["systemName"]),
                address=str(system["address"]).strip(),
                port=port,
                service_definition=str((result.get("service") or {}).get("serviceDefinition", "")),
                service_uri=str(result.get("serviceUri") or ""),
                secure=str(result.get("secure") or "NOT_SECURE"),
                interfaces=tuple(str(i.get("interfaceName")) for i in result.get("interfaces") or ()),
                warnings=tuple(str(w) for w in result.get("warnings") or ()),
            ))
        return providers
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise ArrowheadMalformedError(f"orchestration answer is not an OrchestrationResponseDTO: {exc}") from exc


# --------------------------------------------------------------------------- client


class ArrowheadClient:
    """Calls to the Orchestrator and the Service Registry; every method returns
    a Deferred that fails with an :class:`ArrowheadError` subclass."""

    def __init__(self, reactor: IReactorTime, *, orchestrator_url: str | None, registry_url: str | None,
                 tls: TLSMaterial | None, connect_timeout: float = 2.0, authorization_url: str | None = None) -> None:
        self._reactor: IReactorTime = reactor
        self.orchestrator_url = orchestrator_url.rstrip("/") if orchestrator_url else None
        self.registry_url = registry_url.rstrip("/") if registry_url else None
        self.authorization_url = authorization_url.rstrip("/") if authorization_url else None
        self._pool = HTTPConnectionPool(reactor, persistent=True)
        # Enough idle keep-alive connections for the concurrency the stage
        # allows; connection set-up (a TLS handshake) dominates a cold call.
        self._pool.maxPersistentPerHost = 8
        self._pool.retryAutomatically = False  # POST is not idempotent for us
        kwargs: dict[str, Any] = {"pool": self._pool, "connectTimeout": connect_timeout}
        if tls is not None:
            kwargs["contextFactory"] = TLSPolicy(tls)
        self._agent = Agent(reactor, **kwargs)

    # -- Orchestrator

    def orchestrate(self, form: Mapping[str, Any], timeout: float) -> defer.Deferred:
        """``POST /orchestrator/orchestration``; fires with a list of Provider."""
        d = self._call(self._url(self.orchestrator_url, ORCHESTRATION), b"POST", form, timeout, (200,))
        return d.addCallback(lambda answer: parse_orchestration(answer[1]))

    # -- Service Registry

    def register_system(self, system: SystemRef, timeout: float) -> defer.Deferred:
        return self._call(self._url(self.registry_url, REGISTER_SYSTEM), b"POST", system.dto(), timeout, (200, 201))

    def register_service(self, body: Mapping[str, Any], timeout: float) -> defer.Deferred:
        return self._call(self._url(self.registry_url, REGISTER), b"POST", body, timeout, (200, 201))

    def unregister_service(self, *, service_definition: str, system: SystemRef, service_uri: str,
                           timeout: float) -> defer.Deferred:
        # service_uri is mandatory since 4.4.0 (400 without it).
        query = urlencode({"service_definition": service_definition, "system_name": system.system_name,
                           "address": system.address, "port": system.port, "service_uri": service_uri})
        url = self._url(self.registry_url, UNREGISTER) + "?" + query
        return self._call(url, b"DELETE", None, timeout, (200, 204))

    # -- management (the local system operator's, in secure mode)

    def mgmt_list(self, path: str, timeout: float) -> defer.Deferred:
        """Every row of a management list (``{"data": [...], "count": N}``,
        unpaged); fires with a list of dicts."""
        base = self.authorization_url if path.startswith("/authorization/") else self.registry_url
        d = self._call(self._url(base, path), b"GET", None, timeout, (200,))
        return d.addCallback(lambda answer: _rows(answer[1], self._url(base, path)))

    def add_rule(self, body: Mapping[str, Any], timeout: float) -> defer.Deferred:
        """``POST /authorization/mgmt/intracloud`` (AuthorizationIntraCloudRequestDTO)."""
        d = self._call(self._url(self.authorization_url, MGMT_INTRACLOUD), b"POST", body, timeout, (200, 201))
        return d.addCallback(lambda answer: _rows(answer[1], MGMT_INTRACLOUD))

    def remove_rule(self, rule_id: int, timeout: float) -> defer.Deferred:
        url = self._url(self.authorization_url, f"{MGMT_INTRACLOUD}/{int(rule_id)}")
        return self._call(url, b"DELETE", None, timeout, (200, 204))

    def echo(self, which: str, timeout: float) -> defer.Deferred:
        base, path = ((self.orchestrator_url, ORCHESTRATOR_ECHO) if which == "orchestrator"
                      else (self.registry_url, REGISTRY_ECHO))
        return self._call(self._url(base, path), b"GET", None, timeout, (200,))

    def close(self) -> defer.Deferred:
        return self._pool.closeCachedConnections()

    # -- plumbing

    @staticmethod
    def _url(base: str | None, path: str) -> str:
        if base is None:
            raise ArrowheadError(f"no URL configured for {path}")
        return base + path

    def _call(self, url: str, method: bytes, body: Mapping[str, Any] | None, timeout: float,
              ok: tuple[int, ...]) -> defer.Deferred:
        headers = Headers({b"Accept": [b"application/json"]})
        producer = None
        if body is not None:
            headers.addRawHeader(b"Content-Type", b"application/json")
            producer = _Body(json.dumps(body).encode())
        d = self._agent.request(method, url.encode(), headers, producer)
        d.addCallback(lambda response: _read_body(response).addCallback(lambda data: (response.code, data)))
        d.addTimeout(timeout, self._reactor)
        d.addCallbacks(self._checked, self._translated, callbackArgs=(url, ok), errbackArgs=(url, timeout))
        return d

    @staticmethod
    def _checked(answer: tuple[int, bytes], url: str, ok: tuple[int, ...]) -> tuple[int, bytes]:
        if answer[0] not in ok:
            raise ArrowheadHTTPError(url, answer[0], answer[1])
        return answer

    @staticmethod
    def _translated(failure: Failure, url: str, timeout: float) -> None:
        if failure.check(ArrowheadError):
            failure.raiseException()
        # Agent wraps what went wrong on the connection in ``reasons`` -- a
        # cancellation by addTimeout included, which addTimeout then fails to
        # recognise as its own.
        reasons = getattr(failure.value, "reasons", None)
        # A deadline that strikes while still connecting cancels the connect
        # attempt, which surfaces as ConnectingCancelledError: a timeout too.
        if failure.check(defer.TimeoutError, defer.CancelledError, ConnectingCancelledError) or any(
                r.check(defer.CancelledError, ConnectingCancelledError) for r in reasons or ()):
            raise ArrowheadTimeoutError(f"{url}: no answer within {timeout:g} s")
        for reason in reasons or ():
            if reason.check(SSL.Error):
                raise ArrowheadTLSError(f"{url}: TLS handshake failed: {ssl_reason(reason.value)}")
        if reasons is not None or failure.check(ConnectError, DNSLookupError, ConnectionLost):
            what = reasons[0].getErrorMessage() if reasons else failure.getErrorMessage()
            raise ArrowheadUnavailableError(f"{url}: {what or failure.type.__name__}")
        failure.raiseException()


def _rows(body: bytes, url: str) -> list[dict[str, Any]]:
    """The ``data`` of a list DTO; anything off-shape is malformed."""
    try:
        data = json.loads(body)["data"]
        if not isinstance(data, list) or not all(isinstance(row, dict) for row in data):
            raise TypeError("data is not a list of objects")
        return data
    except (ValueError, TypeError, KeyError) as exc:
        raise ArrowheadMalformedError(f"{url}: answer is not a list DTO ({{data, count}}): {exc}") from exc


class _BodyCollector(protocol.Protocol):
    """readBody without its deprecation warning: cancelling (the deadline)
    drops the connection, and a late end of body is ignored."""

    def __init__(self, finished: defer.Deferred) -> None:
        self.parts: list[bytes] = []
        self.finished = finished

    def dataReceived(self, data: bytes) -> None:  # noqa: N802 - Twisted API
        self.parts.append(data)

    def connectionLost(self, reason: Failure | None = None) -> None:  # noqa: N802 - Twisted API
        if self.finished.called:
            return
        if reason is None or reason.check(ResponseDone, PotentialDataLoss):
            self.finished.callback(b"".join(self.parts))
        else:
            self.finished.errback(reason)


def _read_body(response: IResponse) -> defer.Deferred:
    collector: _BodyCollector

    def cancel(_: defer.Deferred) -> None:
        if collector.transport is not None:
            collector.transport.stopProducing()

    finished: defer.Deferred = defer.Deferred(cancel)
    collector = _BodyCollector(finished)
    response.deliverBody(collector)
    return finished


@implementer(IBodyProducer)
class _Body:
    """A request body written in one go: our JSON bodies are a few hundred
    bytes, and FileBodyProducer would spend extra reactor turns on them."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self.length = len(data)

    def startProducing(self, consumer: IConsumer) -> defer.Deferred:  # noqa: N802 - Twisted interface
        consumer.write(self._data)
        return defer.succeed(None)

    def pauseProducing(self) -> None:  # noqa: N802 - Twisted interface
        pass

    def resumeProducing(self) -> None:  # noqa: N802 - Twisted interface
        pass

    def stopProducing(self) -> None:  # noqa: N802 - Twisted interface
        pass


def split_url(url: str) -> tuple[str, str, int]:
    """(scheme, host, port) of a core-system URL, for logs and status."""
    parts = urlsplit(url)
    return parts.scheme, parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80)
