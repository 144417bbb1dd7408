"""HTTP client of the Arrowhead 4.x core systems, their DTOs, and mutual TLS.

Why Twisted's ``Agent`` and not ``requests`` on a thread pool: every call here
sits on the DNS answer path and has a hard deadline.  With ``Agent`` a timed-out
request is cancelled (its connection aborted) instead of occupying a pool
thread until a socket timeout; there is no thread hop on the fast path; the
connection pool gives the same keep-alive reuse as a ``requests.Session``; and
TLS is configured from in-memory key material, so a PKCS#12 keystore never has
to be unpacked into a temporary PEM file holding a private key.
"""

from __future__ import annotations

import base64
import ipaddress
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import NameOID
from OpenSSL import SSL, crypto
from service_identity import CertificateError, VerificationError
from service_identity.hazmat import DNS_ID, IPAddress_ID, verify_service_identity
from service_identity.pyopenssl import extract_patterns
from twisted.internet import defer, protocol
from twisted.internet.error import ConnectError, ConnectingCancelledError, ConnectionLost, DNSLookupError
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator, IReactorTime
from twisted.logger import Logger
from twisted.web.client import Agent, HTTPConnectionPool, ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.iweb import IBodyProducer, IPolicyForHTTPS
from zope.interface import implementer

log = Logger(namespace="summoner.arrowhead")

# Paths, from CommonConstants.
ORCHESTRATION = "/orchestrator/orchestration"
ORCHESTRATOR_ECHO = "/orchestrator/echo"
REGISTER = "/serviceregistry/register"
UNREGISTER = "/serviceregistry/unregister"
REGISTER_SYSTEM = "/serviceregistry/register-system"
REGISTRY_ECHO = "/serviceregistry/echo"


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


# ------------------------------------------------------------------------------ TLS

# X509_V_ERR_* codes worth a human explanation in the log.
_VERIFY_ERRORS = {
    2: "unable to get issuer certificate",
    9: "certificate is not yet valid",
    10: "certificate has expired",
    18: "self-signed certificate",
    19: "self-signed certificate in chain",
    20: "unable to get local issuer certificate (not signed by a CA in the truststore)",
    21: "unable to verify the first certificate",
}


class TLSConfigError(ValueError):
    """Key material that cannot be used; the message is meant for the operator."""


@dataclass(frozen=True)
class TLSMaterial:
    """summoner's client identity and the trust anchors for the core systems."""

    key: Any  # a cryptography private key
    certificate: x509.Certificate
    chain: tuple[x509.Certificate, ...]
    trusted: tuple[x509.Certificate, ...]
    check_hostname: bool = True

    @property
    def common_name(self) -> str:
        names = self.certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        return str(names[0].value) if names else ""

    @property
    def system_name(self) -> str:
        """Arrowhead's rule: the system name is the first CN label."""
        return self.common_name.split(".", 1)[0]

    @property
    def authentication_info(self) -> str:
        """Base64 of the DER SubjectPublicKeyInfo, as Java's ``getEncoded()``."""
        der = self.certificate.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        return base64.b64encode(der).decode("ascii")


def load_tls(*, cert: str | None = None, key: str | None = None, pkcs12_path: str | None = None,
             password: str | None = None, truststore: str | None = None,
             truststore_password: str | None = None, check_hostname: bool = True) -> TLSMaterial:
    """Load a PEM pair or a PKCS#12 keystore (legacy RC2/3DES encryption too),
    and a truststore (PEM bundle or PKCS#12)."""
    secret = password.encode() if password is not None else None
    if pkcs12_path:
        if cert or key:
            raise TLSConfigError("give either --arrowhead-pkcs12 or --arrowhead-cert/--arrowhead-key, not both")
        try:
            private_key, certificate, extra = pkcs12.load_key_and_certificates(
                Path(pkcs12_path).read_bytes(), secret)
        except (OSError, ValueError) as exc:
            raise TLSConfigError(f"cannot read PKCS#12 keystore {pkcs12_path}: {exc}") from exc
        if private_key is None or certificate is None:
            raise TLSConfigError(f"PKCS#12 keystore {pkcs12_path} holds no key and certificate")
        chain = tuple(extra)
    elif cert and key:
        try:
            certs = x509.load_pem_x509_certificates(Path(cert).read_bytes())
            private_key = serialization.load_pem_private_key(Path(key).read_bytes(), secret)
        except (OSError, ValueError, TypeError) as exc:
            raise TLSConfigError(f"cannot read certificate {cert} / key {key}: {exc}") from exc
        certificate, chain = certs[0], tuple(certs[1:])
    else:
        raise TLSConfigError("secure mode needs --arrowhead-cert and --arrowhead-key, or --arrowhead-pkcs12")
    if certificate.public_key().public_numbers() != private_key.public_key().public_numbers():
        raise TLSConfigError("the private key does not belong to the client certificate")
    if not truststore:
        raise TLSConfigError("secure mode needs --arrowhead-truststore (the cloud certificate)")
    trusted = _load_truststore(truststore, truststore_password if truststore_password is not None else password)
    return TLSMaterial(private_key, certificate, chain, trusted, check_hostname)


def _load_truststore(path: str, password: str | None) -> tuple[x509.Certificate, ...]:
    data = Path(path).read_bytes()
    if b"-----BEGIN CERTIFICATE-----" in data:
        return tuple(x509.load_pem_x509_certificates(data))
    try:
        bundle = pkcs12.load_pkcs12(data, password.encode() if password is not None else None)
    except ValueError as exc:
        raise TLSConfigError(f"cannot read truststore {path}: {exc}") from exc
    found = [entry.certificate for entry in bundle.additional_certs]
    if bundle.cert is not None:
        found.append(bundle.cert.certificate)
    if not found:
        raise TLSConfigError(f"truststore {path} holds no certificate")
    return tuple(found)


def _openssl_context(material: TLSMaterial) -> SSL.Context:
    context = SSL.Context(SSL.TLS_CLIENT_METHOD)
    context.set_min_proto_version(SSL.TLS1_2_VERSION)
    context.use_certificate(material.certificate)
    context.use_privatekey(material.key)
    for extra in material.chain:
        context.add_extra_chain_cert(extra)
    context.check_privatekey()
    store = context.get_cert_store()
    assert store is not None
    for anchor in material.trusted:
        store.add_cert(crypto.X509.from_cryptography(anchor))
    # Arrowhead truststores hold the *cloud* certificate, which is not
    # self-signed; Java accepts any trust anchor, OpenSSL only with this flag.
    store.set_flags(crypto.X509StoreFlags.PARTIAL_CHAIN)
    return context


@implementer(IOpenSSLClientConnectionCreator)
class _Connector:
    """One TLS client connection to ``host``: chain check always, hostname
    check (SAN DNS name or IP) unless switched off, failures logged plainly."""

    def __init__(self, context: SSL.Context, host: str, port: int, check_hostname: bool) -> None:
        self._context = context
        self._host = host
        self._where = f"{host}:{port}"
        self._check_hostname = check_hostname
        try:
            ipaddress.ip_address(host)
            self._identity: Any = IPAddress_ID(host)
            self._sni: bytes | None = None
        except ValueError:
            self._identity = DNS_ID(host)
            self._sni = host.encode("idna")

    def clientConnectionForTLS(self, tls_protocol: Any) -> SSL.Connection:  # noqa: N802 - Twisted interface
        connection = SSL.Connection(self._context, None)
        if self._sni:
            connection.set_tlsext_host_name(self._sni)
        connection.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, self._verify)
        return connection

    def _verify(self, connection: SSL.Connection, cert: crypto.X509, errno: int, depth: int, ok: int) -> bool:
        names = cert.to_cryptography().subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        subject = names[0].value if names else "?"
        if not ok:
            log.error("TLS: rejecting certificate CN={cn} of {where} at chain depth {depth}: {why}; "
                      "is --arrowhead-truststore the certificate of this Arrowhead cloud?",
                      cn=subject, where=self._where, depth=depth,
                      why=_VERIFY_ERRORS.get(errno, f"X509 error {errno}"))
            return False
        if depth == 0 and self._check_hostname:
            try:
                verify_service_identity(extract_patterns(cert), [self._identity], [])
            except (VerificationError, CertificateError):  # CertificateError: no subjectAltName at all
                log.error("TLS: hostname mismatch: the certificate CN={cn} of {where} is not valid for {host} "
                          "({names}); use a URL with a name the certificate holds, issue the core system a "
                          "certificate whose subjectAltName includes {host}, or pass --arrowhead-no-hostname-check "
                          "(the chain of trust is still checked)",
                          cn=subject, where=self._where, host=self._host, names=_subject_alt_names(cert))
                return False
        return True


def _subject_alt_names(cert: crypto.X509) -> str:
    try:
        sans = cert.to_cryptography().extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return "it has no subjectAltName"
    names = ([f"DNS:{name}" for name in sans.get_values_for_type(x509.DNSName)]
             + [f"IP:{address}" for address in sans.get_values_for_type(x509.IPAddress)])
    return "its subjectAltName holds " + (", ".join(names) or "no DNS name or IP address")


@implementer(IPolicyForHTTPS)
class _Policy:
    def __init__(self, material: TLSMaterial) -> None:
        self._material = material
        self._context = _openssl_context(material)

    def creatorForNetloc(self, hostname: bytes, port: int) -> _Connector:  # noqa: N802 - Twisted interface
        return _Connector(self._context, hostname.decode("ascii"), port, self._material.check_hostname)


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

    def __init__(self, reactor: Any, *, orchestrator_url: str | None, registry_url: str | None,
                 tls: TLSMaterial | None, connect_timeout: float = 2.0) -> None:
        self._reactor: IReactorTime = reactor
        self.orchestrator_url = orchestrator_url.rstrip("/") if orchestrator_url else None
        self.registry_url = registry_url.rstrip("/") if registry_url else None
        self._pool = HTTPConnectionPool(reactor, persistent=True)
        # Enough idle keep-alive connections for the concurrency the stage
        # allows; connection set-up (a TLS handshake) dominates a cold call.
        self._pool.maxPersistentPerHost = 8
        self._pool.retryAutomatically = False  # POST is not idempotent for us
        kwargs: dict[str, Any] = {"pool": self._pool, "connectTimeout": connect_timeout}
        if tls is not None:
            kwargs["contextFactory"] = _Policy(tls)
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
    def _translated(failure: Any, url: str, timeout: float) -> None:
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
                raise ArrowheadTLSError(f"{url}: TLS handshake failed: {_ssl_reason(reason.value)}")
        if reasons is not None or failure.check(ConnectError, DNSLookupError, ConnectionLost):
            what = reasons[0].getErrorMessage() if reasons else failure.getErrorMessage()
            raise ArrowheadUnavailableError(f"{url}: {what or failure.type.__name__}")
        failure.raiseException()


class _BodyCollector(protocol.Protocol):
    """readBody without its deprecation warning: cancelling (the deadline)
    drops the connection, and a late end of body is ignored."""

    def __init__(self, finished: defer.Deferred) -> None:
        self.parts: list[bytes] = []
        self.finished = finished

    def dataReceived(self, data: bytes) -> None:  # noqa: N802 - Twisted API
        self.parts.append(data)

    def connectionLost(self, reason: Any = None) -> None:  # noqa: N802 - Twisted API
        if self.finished.called:
            return
        if reason is None or reason.check(ResponseDone, PotentialDataLoss):
            self.finished.callback(b"".join(self.parts))
        else:
            self.finished.errback(reason)


def _read_body(response: Any) -> defer.Deferred:
    collector: _BodyCollector

    def cancel(_: defer.Deferred) -> None:
        if collector.transport is not None:
            collector.transport.stopProducing()

    finished: defer.Deferred = defer.Deferred(cancel)
    collector = _BodyCollector(finished)
    response.deliverBody(collector)
    return finished


def _ssl_reason(error: SSL.Error) -> str:
    texts = [part[2] for part in error.args[0] if isinstance(part, tuple) and len(part) == 3] \
        if error.args and isinstance(error.args[0], list) else [str(error)]
    joined = ", ".join(t for t in texts if t) or str(error)
    if "certificate verify failed" in joined:
        return joined + " (summoner refused the server's certificate; the TLS: line logged before says why)"
    if "alert" in joined:
        return joined + " (the server refused our client certificate)"
    return joined


@implementer(IBodyProducer)
class _Body:
    """A request body written in one go: our JSON bodies are a few hundred
    bytes, and FileBodyProducer would spend extra reactor turns on them."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self.length = len(data)

    def startProducing(self, consumer: Any) -> defer.Deferred:  # noqa: N802 - Twisted interface
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
