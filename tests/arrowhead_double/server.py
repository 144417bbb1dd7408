"""A faithful stand-in for the Arrowhead 4.x Service Registry and Orchestrator.

It follows core-java-spring 4.6.2 field by field where summoner can observe
it: the DTO shapes (``ServiceRegistryResponseDTO``, ``SystemResponseDTO``,
``OrchestrationResponseDTO`` with ``authorizationTokens: null`` and
``metadata: {}``), ISO-8601 timestamps, 201 on register, 400 with an
``ErrorMessageDTO`` for payload errors and duplicates, the requester-must-exist
check (done upstream by Authorization, only when providers were found),
store-mode interface rules, the ``metadataSearch`` and ``pingProviders`` flag
semantics, random matchmaking, and in secure mode (the HTTPS listener, mutual
TLS) the certificate-CN rules of the access-control filters.

Both listeners share one state, like a cloud whose core systems run with and
without SSL at once -- which upstream cannot do, but which lets a test register
providers over HTTP while summoner talks HTTPS.

Test control (not part of Arrowhead), under ``/control``:
``GET /control/state`` (systems, entries, counters), ``POST /control/knobs``
(``{"delay": {"orchestration": s}, "fail": {"orchestration": ErrorMessageDTO},
"malformed": {"orchestration": true}, "deny": ["service", ...]}`` -- keys are
``orchestration``, ``register``, ``unregister``, ``register-system``,
``query``), ``POST /control/reset`` (knobs and counters; ``{"registry": true}``
also empties the registry).
"""

from __future__ import annotations

import datetime
import itertools
import json
import random
import re
from collections import Counter
from collections.abc import Callable
from typing import Any

from cryptography.x509.oid import NameOID
from twisted.internet import defer, endpoints, protocol
from twisted.logger import Logger
from twisted.web import resource, server

log = Logger(namespace="arrowhead-double")

NAME_RE = re.compile(r"^[A-Za-z](?:[0-9A-Za-z-]*[0-9A-Za-z])?$")
INTERFACE_RE = re.compile(r"^([A-Z_0-9]+)-(SECURE|INSECURE)-([A-Z_0-9]+)$")
SECURITY_TYPES = ("NOT_SECURE", "CERTIFICATE", "TOKEN")
FLAG_NAMES = ("matchmaking", "metadataSearch", "onlyPreferred", "pingProviders", "overrideStore",
              "triggerInterCloud", "externalServiceRequest", "enableInterCloud", "enableQoS",
              "onlyIPAddressResponse", "onlyIPv4AddressResponse", "onlyIPv6AddressResponse")
# Status from the exception type when errorCode is not an HTTP code
# (Utilities.calculateHttpStatusFromCoreError).
TYPE_STATUS = {"AUTH": 401, "BAD_PAYLOAD": 400, "INVALID_PARAMETER": 400, "DATA_NOT_FOUND": 404,
               "UNAVAILABLE": 504, "TIMEOUT": 504}


def now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class CoreError(Exception):
    def __init__(self, message: str, exception_type: str = "BAD_PAYLOAD", code: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.exception_type = exception_type
        self.code = code

    def dto(self, origin: str) -> tuple[int, dict[str, Any]]:
        status = self.code if self.code and 100 <= self.code < 600 else TYPE_STATUS.get(self.exception_type, 500)
        return status, {"errorMessage": self.message, "errorCode": status,
                        "exceptionType": self.exception_type, "origin": origin}


class SpringError(Exception):
    """Framework-level 400 (unreadable JSON, missing request parameter): no DTO."""


class State:
    def __init__(self, clock: Any) -> None:
        self.clock = clock
        self.ids = itertools.count(1)
        self.systems: dict[tuple[str, str, int], dict[str, Any]] = {}
        self.definitions: dict[str, dict[str, Any]] = {}
        self.interfaces: dict[str, dict[str, Any]] = {}
        self.entries: list[dict[str, Any]] = []
        self.counters: Counter[str] = Counter()
        self.knobs: dict[str, Any] = {}
        self.reset()

    def reset(self, registry: bool = False) -> None:
        self.counters.clear()
        self.knobs = {"delay": {}, "fail": {}, "malformed": {}, "deny": [], "ping_timeout": 5.0}
        if registry:
            self.systems.clear()
            self.entries.clear()

    # -- records

    def _named(self, table: dict[str, dict[str, Any]], key: str, field: str) -> dict[str, Any]:
        if key not in table:
            stamp = now()
            table[key] = {"id": next(self.ids), field: key, "createdAt": stamp, "updatedAt": stamp}
        return table[key]

    def system(self, dto: dict[str, Any], create: bool = True) -> dict[str, Any] | None:
        key = (dto["systemName"].lower(), dto["address"].lower(), int(dto["port"]))
        if key not in self.systems and create:
            stamp = now()
            self.systems[key] = {"id": next(self.ids), "systemName": key[0], "address": key[1], "port": key[2],
                                 "authenticationInfo": dto.get("authenticationInfo"),
                                 "metadata": dto.get("metadata") or None, "createdAt": stamp, "updatedAt": stamp}
        return self.systems.get(key)


def system_response(system: dict[str, Any]) -> dict[str, Any]:
    # SystemResponseDTO is NON_NULL: absent fields are left out.
    return {k: v for k, v in system.items() if v is not None}


def entry_response(entry: dict[str, Any]) -> dict[str, Any]:
    out = dict(entry)
    out["provider"] = system_response(entry["provider"])
    return {k: v for k, v in out.items() if v is not None}


def check_system(dto: Any, what: str = "System") -> None:
    """SystemRequestDTO rules (checkSystemRequest)."""
    if not isinstance(dto, dict):
        raise CoreError(f"{what} is null.")
    if not str(dto.get("systemName") or "").strip():
        raise CoreError("System name is null or blank.")
    if not str(dto.get("address") or "").strip():
        raise CoreError("System address is null or blank.")
    port = dto.get("port")
    if port is None:
        raise CoreError("System port is null.")
    if not isinstance(port, int) or not 0 <= port <= 65535:
        raise CoreError("System port must be between 0 and 65535.")


def check_name(name: str, what: str) -> None:
    if "_" in name or len(name) > 63 or not NAME_RE.match(name):
        raise CoreError(f"{what} has invalid format. Name must match with the following regular "
                                 "expression: ^[A-Za-z](?:[0-9A-Za-z-]*[0-9A-Za-z])?$ and at most 63 characters")


class Double:
    """Request handling shared by both listeners; ``cn`` is the client
    certificate's CN on the secure listener, None on the insecure one."""

    def __init__(self, clock: Any, reactor: Any, cloud_suffix: str | None) -> None:
        self.state = State(clock)
        self.reactor = reactor
        self.cloud_suffix = cloud_suffix
        self.routes: dict[tuple[bytes, str], Callable[..., Any]] = {
            (b"GET", "/serviceregistry/echo"): self.echo,
            (b"GET", "/orchestrator/echo"): self.echo,
            (b"POST", "/serviceregistry/register"): self.register,
            (b"DELETE", "/serviceregistry/unregister"): self.unregister,
            (b"POST", "/serviceregistry/register-system"): self.register_system,
            (b"POST", "/serviceregistry/query"): self.query,
            (b"POST", "/orchestrator/orchestration"): self.orchestration,
            (b"GET", "/control/state"): self.control_state,
            (b"POST", "/control/knobs"): self.control_knobs,
            (b"POST", "/control/reset"): self.control_reset,
        }

    # -- Service Registry

    def echo(self, body: Any, args: dict[str, str], cn: str | None) -> tuple[int, Any]:
        return 200, "Got it!"

    def _check_cn_name(self, name: str, cn: str | None) -> None:
        if cn is not None and name.lower() != cn.split(".", 1)[0].lower():
            raise CoreError(f"Provider system name ({name}) and certificate common name "
                                     f"({cn.split('.', 1)[0]}) do not match!", "AUTH", 401)

    def register(self, body: Any, args: dict[str, str], cn: str | None) -> tuple[int, Any]:
        if not isinstance(body, dict):
            raise SpringError()
        definition = str(body.get("serviceDefinition") or "").strip()
        if not definition:
            raise CoreError("Service definition is null or blank")
        check_name(definition, "Service definition")
        provider = body.get("providerSystem")
        check_system(provider, "Provider system")
        check_name(provider["systemName"], "System name")
        self._check_cn_name(provider["systemName"], cn)
        end = body.get("endOfValidity")
        if end:
            try:
                datetime.datetime.strptime(end, "%Y-%m-%dT%H:%M:%SZ")
            except (TypeError, ValueError) as exc:
                raise CoreError("End of validity is specified in the wrong format. "
                                         "Please provide UTC time using ISO-8601 format.") from exc
        secure = body.get("secure") or "NOT_SECURE"
        if secure not in SECURITY_TYPES:
            raise CoreError(f"Security type is not valid: {secure}")
        if secure != "NOT_SECURE" and not provider.get("authenticationInfo"):
            raise CoreError("Security type is in conflict with the availability of the authentication info.")
        interfaces = body.get("interfaces") or []
        if not interfaces:
            raise CoreError("Interfaces list is null or empty.")
        for name in interfaces:
            if not INTERFACE_RE.match(str(name).upper()):
                raise CoreError(f"Specified interface name is not valid: {name}")
        definition = definition.lower()
        uri = str(body.get("serviceUri") or "")
        system = self.state.system(provider)
        assert system is not None
        for entry in self.state.entries:
            if (entry["serviceDefinition"]["serviceDefinition"] == definition and entry["provider"] is system
                    and entry["serviceUri"] == uri):
                raise CoreError(
                    f"Service Registry entry with provider: ({system['systemName']}, {system['address']}:"
                    f"{system['port']}), service definition: {definition} and service uri: {uri} already exists.",
                    "INVALID_PARAMETER")
        stamp = now()
        entry = {
            "id": next(self.state.ids),
            "serviceDefinition": self.state._named(self.state.definitions, definition, "serviceDefinition"),
            "provider": system, "serviceUri": uri, "endOfValidity": end or None, "secure": secure,
            "metadata": body.get("metadata") or None, "version": body.get("version") or 1,
            "interfaces": [self.state._named(self.state.interfaces, str(i).upper(), "interfaceName")
                           for i in interfaces],
            "createdAt": stamp, "updatedAt": stamp,
        }
        self.state.entries.append(entry)
        return 201, entry_response(entry)

    def unregister(self, body: Any, args: dict[str, str], cn: str | None) -> tuple[int, Any]:
        for required in ("service_definition", "system_name", "port", "service_uri"):
            if required not in args:
                raise SpringError()
        self._check_cn_name(args["system_name"], cn)
        try:
            port = int(args["port"])
        except ValueError as exc:
            raise SpringError() from exc
        definition, name = args["service_definition"].lower(), args["system_name"].lower()
        address = args.get("address", "").lower()
        for entry in list(self.state.entries):
            provider = entry["provider"]
            if (entry["serviceDefinition"]["serviceDefinition"] == definition
                    and provider["systemName"] == name and provider["port"] == port
                    and (not address or provider["address"] == address)
                    and entry["serviceUri"] == args["service_uri"]):
                self.state.entries.remove(entry)
                return 200, None
        raise CoreError(f"Service Registry entry with provider: ({name}, {address}:{port}) and service "
                                 f"definition: {definition} does not exist.", "INVALID_PARAMETER")

    def register_system(self, body: Any, args: dict[str, str], cn: str | None) -> tuple[int, Any]:
        if not isinstance(body, dict):
            raise SpringError()
        check_system(body)
        check_name(body["systemName"], "System name")
        self._check_cn_name(body["systemName"], cn)
        if self.state.system(body, create=False) is not None:
            raise CoreError(f"System with name: {body['systemName'].lower()}, address: "
                                     f"{body['address'].lower()}, port: {body['port']} already exists.",
                                     "INVALID_PARAMETER")
        system = self.state.system(body)
        assert system is not None
        return 201, system_response(system)

    def query(self, body: Any, args: dict[str, str], cn: str | None) -> tuple[int, Any] | defer.Deferred:
        if not isinstance(body, dict):
            raise SpringError()
        if cn is not None:
            raise CoreError("Only public core system services are allowed to query directly.", "AUTH", 401)
        return self._filtered(body, ping=bool(body.get("pingProviders")), metadata=True).addCallback(
            lambda pair: (200, {"serviceQueryData": [entry_response(e) for e in pair[0]], "unfilteredHits": pair[1]}))

    @defer.inlineCallbacks
    def _filtered(self, form: dict[str, Any], *, ping: bool, metadata: bool) -> Any:
        """ServiceRegistryDBService.queryRegistry: address type, interfaces,
        security, version, metadata, then ping."""
        definition = str(form.get("serviceDefinitionRequirement") or "").strip().lower()
        if not definition:
            raise CoreError("Service definition requirement is null or blank")
        found = [e for e in self.state.entries if e["serviceDefinition"]["serviceDefinition"] == definition]
        unfiltered = len(found)
        interfaces = [str(i).upper() for i in form.get("interfaceRequirements") or []]
        if interfaces:
            found = [e for e in found if any(i["interfaceName"] in interfaces for i in e["interfaces"])]
        security = form.get("securityRequirements") or []
        if security:
            found = [e for e in found if e["secure"] in security]
        version = form.get("versionRequirement")
        if version is not None:
            found = [e for e in found if e["version"] == version]
        else:
            low, high = form.get("minVersionRequirement"), form.get("maxVersionRequirement")
            found = [e for e in found
                     if (low is None or e["version"] >= low) and (high is None or e["version"] <= high)]
        wanted = form.get("metadataRequirements") or {}
        if metadata and wanted:
            found = [e for e in found if all((e["metadata"] or {}).get(k) == v for k, v in wanted.items())]
        if ping:
            alive = []
            for entry in found:
                if (yield self._ping(entry["provider"])):
                    alive.append(entry)
            found = alive
        return found, unfiltered

    def _ping(self, provider: dict[str, Any]) -> defer.Deferred:
        # RegistryUtils.pingService: a TCP connect, not ICMP.
        endpoint = endpoints.HostnameEndpoint(self.reactor, provider["address"], provider["port"],
                                              timeout=self.state.knobs["ping_timeout"])
        d = endpoints.connectProtocol(endpoint, protocol.Protocol())
        d.addCallback(lambda proto: proto.transport.loseConnection() or True)
        return d.addErrback(lambda _: False)

    # -- Orchestrator

    def orchestration(self, body: Any, args: dict[str, str], cn: str | None) -> Any:
        if not isinstance(body, dict):
            raise SpringError()
        requester = body.get("requesterSystem")
        if requester is None:
            raise CoreError("Requester system is null.")
        check_system(requester, "Requester system")
        if cn is not None and requester["systemName"].lower() != cn.split(".", 1)[0].lower():
            raise CoreError(f"Requester system name({requester['systemName']}) and client name from "
                                     f"certificate ({cn.split('.', 1)[0]}) do not match!", "AUTH", 401)
        flags = {name: bool((body.get("orchestrationFlags") or {}).get(name, False)) for name in FLAG_NAMES}
        service = body.get("requestedService")
        if service is None and (flags["overrideStore"] or flags["triggerInterCloud"]):
            raise CoreError("Requested service is null while \"overrideStore\" or \"triggerInterCloud\" is set.")
        if flags["triggerInterCloud"] or flags["externalServiceRequest"]:
            raise CoreError("Intercloud mode is not supported. Orchestrator runs in NO GATEKEEPER mode.")
        if (body.get("commands") or {}).get("qosExclusivity") and not flags["matchmaking"]:
            raise CoreError("Exclusive service orchestration is only possible when matchmaking is enabled.")
        preferred = body.get("preferredProviders") or []
        if flags["onlyPreferred"] and not any(p.get("providerCloud") is None for p in preferred):
            raise CoreError('There is no valid preferred provider, but "onlyPreferred" is set to true')
        if not flags["overrideStore"]:
            # Store orchestration: this double holds no store entries.
            if service is not None:
                interfaces = service.get("interfaceRequirements") or []
                if not interfaces or not str(interfaces[0]).strip():
                    raise CoreError("InterfaceRequirement  is null or blank.")
                if len(interfaces) > 1:
                    raise CoreError("Only one interface requirement is allowed in store orchestration.")
            return 200, {"response": []}
        if not str(service.get("serviceDefinitionRequirement") or "").strip():
            raise CoreError("Service definition requirement is null or blank")
        # The pingProviders *flag* overwrites the form's own field, and
        # metadata requirements count only with metadataSearch.
        d = self._filtered(service, ping=flags["pingProviders"], metadata=flags["metadataSearch"])
        return d.addCallback(self._orchestrated, requester, flags, service)

    def _orchestrated(self, pair: tuple[list[dict[str, Any]], int], requester: dict[str, Any],
                      flags: dict[str, bool], service: dict[str, Any]) -> tuple[int, Any]:
        found = pair[0]
        if not found:
            return 200, {"response": []}
        # Authorization's intracloud check: the consumer must exist with this
        # exact name, address and port.
        if self.state.system(requester, create=False) is None:
            raise CoreError(
                f"Consumer with name: {requester['systemName'].lower()}, address: {requester['address'].lower()} "
                f"and port: {requester['port']} is not exist in the database.", "INVALID_PARAMETER")
        denied = set(self.state.knobs["deny"])
        found = [e for e in found if e["serviceDefinition"]["serviceDefinition"] not in denied]
        if flags["onlyIPAddressResponse"] or flags["onlyIPv4AddressResponse"] or flags["onlyIPv6AddressResponse"]:
            found = [e for e in found if _address_ok(e["provider"]["address"], flags)]
        if flags["matchmaking"] and found:
            found = [random.choice(found)]
        return 200, {"response": [self._result(e) for e in found]}

    @staticmethod
    def _result(entry: dict[str, Any]) -> dict[str, Any]:
        warnings = [] if entry["endOfValidity"] else ["TTL_UNKNOWN"]
        return {
            "provider": system_response(entry["provider"]),
            "service": entry["serviceDefinition"],
            "serviceUri": entry["serviceUri"],
            "secure": entry["secure"],
            "metadata": entry["metadata"] or {},
            "interfaces": entry["interfaces"],
            "version": entry["version"],
            # Tokens need the Authorization system's key pair; summoner never
            # consumes them (DNS cannot carry them), so a marker stands in.
            "authorizationTokens": ({i["interfaceName"]: "double-token" for i in entry["interfaces"]}
                                    if entry["secure"] == "TOKEN" else None),
            "warnings": warnings,
        }

    # -- control

    def control_state(self, body: Any, args: dict[str, str], cn: str | None) -> tuple[int, Any]:
        return 200, {"systems": [system_response(s) for s in self.state.systems.values()],
                     "entries": [entry_response(e) for e in self.state.entries],
                     "counters": dict(self.state.counters), "knobs": self.state.knobs}

    def control_knobs(self, body: Any, args: dict[str, str], cn: str | None) -> tuple[int, Any]:
        for key, value in (body or {}).items():
            if isinstance(value, dict) and isinstance(self.state.knobs.get(key), dict):
                self.state.knobs[key].update(value)
            else:
                self.state.knobs[key] = value
        return 200, self.state.knobs

    def control_reset(self, body: Any, args: dict[str, str], cn: str | None) -> tuple[int, Any]:
        self.state.reset(registry=bool((body or {}).get("registry")))
        return 200, {}


def _address_ok(address: str, flags: dict[str, bool]) -> bool:
    import ipaddress
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    if flags["onlyIPv4AddressResponse"]:
        return ip.version == 4
    if flags["onlyIPv6AddressResponse"]:
        return ip.version == 6
    return True


def _common_name(cert: Any) -> str:
    names = cert.to_cryptography().subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value) if names else ""


OPERATION = {"/orchestrator/orchestration": "orchestration", "/serviceregistry/register": "register",
             "/serviceregistry/unregister": "unregister", "/serviceregistry/register-system": "register-system",
             "/serviceregistry/query": "query"}


class Listener(resource.Resource):
    isLeaf = True  # noqa: N815 - Twisted API

    def __init__(self, double: Double, secure: bool) -> None:
        super().__init__()
        self.double = double
        self.secure = secure

    def render(self, request: server.Request) -> Any:
        path = request.path.decode()
        handler = self.double.routes.get((request.method, path))
        if handler is None:
            return self._send(request, 404, {"errorMessage": f"No handler for {path}", "errorCode": 404,
                                             "exceptionType": "GENERIC", "origin": path})
        cn = None
        if self.secure and not path.startswith("/control/"):
            cn = _common_name(request.transport.getPeerCertificate())
            denial = self._access(cn)
            if denial:
                return self._send(request, *CoreError(denial, "AUTH", 401).dto(path))
        operation = OPERATION.get(path)
        state = self.double.state
        if operation:
            state.counters[operation] += 1
        delay = float(state.knobs["delay"].get(operation, 0) or 0) if operation else 0.0
        if delay:
            self.double.reactor.callLater(delay, self._handle, request, handler, path, operation, cn)
        else:
            self._handle(request, handler, path, operation, cn)
        return server.NOT_DONE_YET

    def _access(self, cn: str) -> str | None:
        # AccessControlFilter: five labels, same cloud.operator.arrowhead.eu.
        parts = cn.split(".")
        if len(parts) != 5 or ".".join(parts[1:]) != self.double.cloud_suffix:
            return f"Unauthorized access: {cn}, invalid certificate."
        return None

    def _handle(self, request: server.Request, handler: Callable[..., Any], path: str,
                operation: str | None, cn: str | None) -> None:
        if request.finished or request.channel is None:
            return  # the client gave up while we were "slow"
        state = self.double.state
        if operation and state.knobs["fail"].get(operation):
            failure = dict(state.knobs["fail"][operation])
            failure.setdefault("origin", path)
            return self._send(request, int(failure.get("errorCode", 500)), failure)
        if operation and state.knobs["malformed"].get(operation):
            return self._send(request, 200, None, raw=b'{"response": [{"provider": ')
        try:
            raw = request.content.read()
            body = json.loads(raw) if raw else None
        except ValueError:
            return self._send(request, 400, None)
        args = {k.decode(): v[0].decode() for k, v in request.args.items()}
        d = defer.maybeDeferred(handler, body, args, cn)
        d.addCallback(lambda result: self._send(request, *result))
        d.addErrback(self._failed, request, path)

    def _failed(self, failure: Any, request: server.Request, path: str) -> None:
        if failure.check(CoreError):
            return self._send(request, *failure.value.dto(path))
        if failure.check(SpringError):
            return self._send(request, 400, None)
        log.failure("double failed on {path}", failure, path=path)
        return self._send(request, 500, {"errorMessage": failure.getErrorMessage(), "errorCode": 500,
                                         "exceptionType": "GENERIC", "origin": path})

    @staticmethod
    def _send(request: server.Request, status: int, payload: Any, raw: bytes | None = None) -> None:
        if request.finished or request.channel is None:
            return
        request.setResponseCode(status)
        if raw is None:
            if payload is None:
                raw = b""
            elif isinstance(payload, str):
                request.setHeader(b"Content-Type", b"text/plain")
                raw = payload.encode()
            else:
                request.setHeader(b"Content-Type", b"application/json")
                raw = json.dumps(payload).encode()
        else:
            request.setHeader(b"Content-Type", b"application/json")
        request.write(raw)
        request.finish()
