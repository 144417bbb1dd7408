"""A faithful stand-in for the Arrowhead 4.x Service Registry, Authorization
and Orchestrator.

It follows core-java-spring 4.6.2 field by field where summoner can observe
it: the DTO shapes (``ServiceRegistryResponseDTO``, ``SystemResponseDTO``,
``OrchestrationResponseDTO`` with ``authorizationTokens: null`` and
``metadata: {}``), ISO-8601 timestamps, 201 on register, 400 with an
``ErrorMessageDTO`` for payload errors and duplicates, the Service Registry's
address rules (``addresses.py``), store-mode interface rules, the
``metadataSearch`` and ``pingProviders`` flag semantics, Authorization's
intra-cloud rules, which every provider is filtered through (the requester
must exist, then a rule must name it, the provider and the service definition;
``authorization.py``), token generation for TOKEN providers (a 500 in an
insecure cloud), random matchmaking, and in secure mode (the HTTPS listener,
mutual TLS) the certificate-CN rules of the access-control filters, management
paths (``/mgmt/``) for the local system operator (``sysop.<cloud>``) only.

Gatekeeper mode (``gatekeeper.py``, ``gateway.py``, ``intercloud.py``): two
double processes, each a cloud of its own, joined by their Gatekeepers;
``enableInterCloud`` and ``triggerInterCloud`` orchestrations reach the other
cloud's providers through GSD and ICN, filtered by its inter-cloud rules.

Both listeners share one state, like a cloud whose core systems run with and
without SSL at once -- which upstream cannot do, but which lets a test register
providers over HTTP while summoner talks HTTPS.  The HTTP listener is the
insecure cloud (tokens cannot be made there), the HTTPS one the secure cloud.

Management lookups: ``GET /serviceregistry/mgmt/systems``, ``/mgmt/services``
(service definitions) and ``/mgmt/interfaces``, paged as upstream.

Test control (not part of Arrowhead), under ``/control``:
``GET /control/state`` (systems, entries, rules, counters), ``POST /control/knobs``
(``{"delay": {"orchestration": s}, "fail": {"orchestration": ErrorMessageDTO},
"malformed": {"orchestration": true}}`` -- keys are ``orchestration``,
``register``, ``unregister``, ``register-system``, ``query``, ``rules``; and
``enforce_authorization`` (default true, as upstream, which always asks
Authorization), ``allow_self_addressing`` and ``allow_non_routable_addressing``
(default true, as the shipped application.properties set them; the code's
defaults are false), ``ping_timeout``, the Gatekeeper and Gateway knobs of ``core.DEFAULT_KNOBS``),
``POST /control/relay`` (``gatekeeper.py``), ``POST /control/reset`` (knobs and
counters; ``{"registry": true}`` also empties the registry and the rules).
"""

from __future__ import annotations

import datetime
import random
from collections.abc import Callable
from typing import Any

from twisted.internet import defer, endpoints, protocol
from twisted.logger import Logger

from tests.arrowhead_double import addresses
from tests.arrowhead_double.authorization import Authorization, rule_response
from tests.arrowhead_double.core import (
    INTERFACE_RE,
    SECURITY_TYPES,
    CoreError,
    SpringError,
    State,
    check_address,
    check_name,
    check_system,
    entry_response,
    now,
    page,
    system_response,
)
from tests.arrowhead_double.gatekeeper import Gatekeeper
from tests.arrowhead_double.intercloud import cloud_response
from tests.arrowhead_double.intercloud import rule_response as intercloud_rule_response

log = Logger(namespace="arrowhead-double")

FLAG_NAMES = ("matchmaking", "metadataSearch", "onlyPreferred", "pingProviders", "overrideStore",
              "triggerInterCloud", "externalServiceRequest", "enableInterCloud", "enableQoS",
              "onlyIPAddressResponse", "onlyIPv4AddressResponse", "onlyIPv6AddressResponse")

class Double:
    """Request handling shared by both listeners; ``cn`` is the client
    certificate's CN on the secure listener, None on the insecure one."""

    def __init__(self, clock: Any, reactor: Any, cloud_suffix: str | None) -> None:
        self.state = State(clock)
        self.authorization = Authorization(self.state)
        self.reactor = reactor
        self.cloud_suffix = cloud_suffix
        name, operator = (cloud_suffix or "testcloud.aitia.arrowhead.eu").split(".")[:2]
        self.gatekeeper = Gatekeeper(self.state, reactor, self, (name, operator))
        rules, gatekeeper, intercloud = self.authorization, self.gatekeeper, self.gatekeeper.authorization
        # ``{id}``: the last path segment, handed over as args["id"].
        self.routes: dict[tuple[bytes, str], Callable[..., Any]] = {
            (b"GET", "/serviceregistry/mgmt/systems"): self.mgmt_systems,
            (b"GET", "/serviceregistry/mgmt/services"): self.mgmt_services,
            (b"GET", "/serviceregistry/mgmt/interfaces"): self.mgmt_interfaces,
            (b"GET", "/authorization/echo"): self.echo,
            (b"GET", "/authorization/mgmt/intracloud"): rules.list,
            (b"POST", "/authorization/mgmt/intracloud"): rules.add,
            (b"GET", "/authorization/mgmt/intracloud/{id}"): rules.get,
            (b"DELETE", "/authorization/mgmt/intracloud/{id}"): rules.delete,
            (b"GET", "/authorization/mgmt/intercloud"): intercloud.list,
            (b"POST", "/authorization/mgmt/intercloud"): intercloud.add,
            (b"GET", "/authorization/mgmt/intercloud/{id}"): intercloud.get,
            (b"DELETE", "/authorization/mgmt/intercloud/{id}"): intercloud.delete,
            (b"GET", "/gatekeeper/echo"): self.echo,
            (b"GET", "/gatekeeper/mgmt/clouds"): gatekeeper.list_clouds,
            (b"POST", "/gatekeeper/mgmt/clouds"): gatekeeper.register_clouds,
            (b"POST", "/gatekeeper/init_gsd"): gatekeeper.init_gsd,
            (b"POST", "/gatekeeper/init_icn"): gatekeeper.init_icn,
            (b"POST", "/gatekeeper/relay/gsd_poll"): gatekeeper.gsd_poll,
            (b"POST", "/gatekeeper/relay/icn_proposal"): gatekeeper.icn_proposal,
            (b"GET", "/gateway/echo"): self.echo,
            (b"GET", "/gateway/mgmt/sessions"): gatekeeper.gateway.list,
            (b"POST", "/control/relay"): gatekeeper.control_relay,
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
        check_address(provider["address"], self.state.knobs)
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
            "serviceDefinition": self.state.named(self.state.definitions, definition, "serviceDefinition"),
            "provider": system, "serviceUri": uri, "endOfValidity": end or None, "secure": secure,
            "metadata": body.get("metadata") or None, "version": body.get("version") or 1,
            "interfaces": [self.state.named(self.state.interfaces, str(i).upper(), "interfaceName")
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
        check_address(body["address"], self.state.knobs)
        self._check_cn_name(body["systemName"], cn)
        if self.state.system({**body, "address": addresses.normalize(body["address"])}, create=False) is not None:
            raise CoreError(f"System with name: {body['systemName'].lower()}, address: "
                                     f"{body['address'].lower()}, port: {body['port']} already exists.",
                                     "INVALID_PARAMETER")
        system = self.state.system(body)
        assert system is not None
        return 201, system_response(system)

    def mgmt_systems(self, body: Any, args: dict[str, str], cn: str | None) -> tuple[int, Any]:
        """SystemListResponseDTO."""
        rows = [system_response(s) for s in self.state.systems.values()]
        return 200, page(rows, args, "/serviceregistry/mgmt/systems")

    def mgmt_services(self, body: Any, args: dict[str, str], cn: str | None) -> tuple[int, Any]:
        """ServiceDefinitionsListResponseDTO."""
        return 200, page(list(self.state.definitions.values()), args, "/serviceregistry/mgmt/services")

    def mgmt_interfaces(self, body: Any, args: dict[str, str], cn: str | None) -> tuple[int, Any]:
        """ServiceInterfacesListResponseDTO."""
        return 200, page(list(self.state.interfaces.values()), args, "/serviceregistry/mgmt/interfaces")

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
        _check_requester(body.get("requesterSystem"), cn)
        flags = {name: bool((body.get("orchestrationFlags") or {}).get(name, False)) for name in FLAG_NAMES}
        service = body.get("requestedService")
        if service is None and (flags["overrideStore"] or flags["triggerInterCloud"]):
            raise CoreError("Requested service is null while \"overrideStore\" or \"triggerInterCloud\" is set.")
        # OrchestratorController.orchestrationProcess
        gatekeeper = bool(self.state.knobs["gatekeeper_is_present"])
        if flags["externalServiceRequest"]:
            if not gatekeeper:
                raise CoreError("External service request can not be served. Orchestrator runs in NO GATEKEEPER mode.")
            return self.external_orchestration(body).addCallback(lambda results: (200, {"response": results}))
        if flags["triggerInterCloud"]:
            if not gatekeeper:
                raise CoreError("Forced inter cloud service request can not be served. Orchestrator runs in NO "
                                "GATEKEEPER mode.")
            return self.gatekeeper.trigger(body, flags)
        if (body.get("commands") or {}).get("qosExclusivity") and not flags["matchmaking"]:
            raise CoreError("Exclusive service orchestration is only possible when matchmaking is enabled.")
        preferred = body.get("preferredProviders") or []
        if flags["onlyPreferred"] and not any(p.get("providerCloud") is None for p in preferred):
            raise CoreError('There is no valid preferred provider, but "onlyPreferred" is set to true')
        if not flags["overrideStore"]:
            return _store_orchestration(service)
        if not str(service.get("serviceDefinitionRequirement") or "").strip():
            raise CoreError("Service definition requirement is null or blank")
        # The pingProviders *flag* overwrites the form's own field, and
        # metadata requirements count only with metadataSearch.
        d = self._filtered(service, ping=flags["pingProviders"], metadata=flags["metadataSearch"])
        return d.addCallback(self._orchestrated, body, flags, cn is not None)

    def _orchestrated(self, pair: tuple[list[dict[str, Any]], int], body: dict[str, Any],
                      flags: dict[str, bool], secure: bool) -> Any:
        """dynamicOrchestration; with enableInterCloud and a Gatekeeper, no
        provider here (or none authorized) means triggerInterCloud."""
        found, requester = pair[0], body["requesterSystem"]
        intercloud = flags["enableInterCloud"] and bool(self.state.knobs["gatekeeper_is_present"])
        if not found:
            return self.gatekeeper.trigger(body, flags) if intercloud else (200, {"response": []})
        # Authorization's intracloud check: the consumer must exist with this
        # exact name, address and port; then only the providers its rules name.
        consumer = self.state.system(requester, create=False)
        if consumer is None:
            raise CoreError(
                f"Consumer with name: {requester['systemName'].lower()}, address: {requester['address'].lower()} "
                f"and port: {requester['port']} is not exist in the database.", "INVALID_PARAMETER")
        found = self.authorization.authorized(consumer, found)
        if not found and intercloud:
            return self.gatekeeper.trigger(body, flags)
        if flags["onlyIPAddressResponse"] or flags["onlyIPv4AddressResponse"] or flags["onlyIPv6AddressResponse"]:
            found = [e for e in found if _address_ok(e["provider"]["address"], flags)]
        if flags["matchmaking"] and found:
            found = [random.choice(found)]
        # Tokens come last (OrchestratorDriver.generateAuthTokens), for what is left.
        return 200, {"response": [self._result(e, secure) for e in found]}

    def registry_query(self, service: dict[str, Any]) -> defer.Deferred:
        """What the Gatekeeper's GSD poll asks the Service Registry (``/query``
        with the requested service as it is): the entries."""
        d = self._filtered(service, ping=bool(service.get("pingProviders")), metadata=True)
        return d.addCallback(lambda pair: pair[0])

    def external_orchestration(self, form: dict[str, Any]) -> defer.Deferred:
        """OrchestratorService.externalServiceRequest: the requester is in
        another cloud, so no intra-cloud rules (the Gatekeeper checks the
        inter-cloud ones); no matchmaking either (the requester cloud's);
        results, tokens included, as for a local requester."""
        flags = form.get("orchestrationFlags") or {}
        service = form.get("requestedService") or {}
        if not str(service.get("serviceDefinitionRequirement") or "").strip():
            raise CoreError("Service definition requirement is null or blank")
        d = self._filtered(service, ping=bool(flags.get("pingProviders")), metadata=bool(flags.get("metadataSearch")))
        return d.addCallback(lambda pair: [self._result(e, False) for e in pair[0]])

    def _result(self, entry: dict[str, Any], secure: bool) -> dict[str, Any]:
        warnings = [] if entry["endOfValidity"] else ["TTL_UNKNOWN"]
        return {
            "provider": system_response(entry["provider"]),
            "service": entry["serviceDefinition"],
            "serviceUri": entry["serviceUri"],
            "secure": entry["secure"],
            "metadata": entry["metadata"] or {},
            "interfaces": entry["interfaces"],
            "version": entry["version"],
            "authorizationTokens": self.authorization.tokens(entry, secure),
            "warnings": warnings,
        }

    # -- control

    def control_state(self, body: Any, args: dict[str, str], cn: str | None) -> tuple[int, Any]:
        return 200, {"systems": [system_response(s) for s in self.state.systems.values()],
                     "entries": [entry_response(e) for e in self.state.entries],
                     "rules": [rule_response(r) for r in self.state.rules],
                     "intercloud_rules": [intercloud_rule_response(r) for r in self.gatekeeper.authorization.rules],
                     "clouds": [cloud_response(c) for c in self.gatekeeper.clouds],
                     "gateway_sessions": [s.dto for s in self.gatekeeper.gateway.sessions.values()],
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
        if (body or {}).get("registry"):
            self.gatekeeper.reset()
        return 200, {}


def _check_requester(requester: Any, cn: str | None) -> None:
    if requester is None:
        raise CoreError("Requester system is null.")
    check_system(requester, "Requester system")
    if cn is not None and requester["systemName"].lower() != cn.split(".", 1)[0].lower():
        raise CoreError(f"Requester system name({requester['systemName']}) and client name from "
                        f"certificate ({cn.split('.', 1)[0]}) do not match!", "AUTH", 401)


def _store_orchestration(service: dict[str, Any] | None) -> tuple[int, Any]:
    """Store orchestration: this double holds no store entries."""
    if service is not None:
        interfaces = service.get("interfaceRequirements") or []
        if not interfaces or not str(interfaces[0]).strip():
            raise CoreError("InterfaceRequirement  is null or blank.")
        if len(interfaces) > 1:
            raise CoreError("Only one interface requirement is allowed in store orchestration.")
    return 200, {"response": []}


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
