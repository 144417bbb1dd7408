"""The double's Gatekeeper: what lets one double cloud find providers in
another, as core-java-spring 4.6.2 does it (GatekeeperController,
GatekeeperService, OrchestratorService.triggerInterCloud).

The requester side.  An orchestration with ``enableInterCloud`` whose local
lookup comes back empty (nothing registered, or nothing authorized), or one
with ``triggerInterCloud``, goes to the Gatekeeper -- only when the
Orchestrator runs with a Gatekeeper (``gatekeeper_is_present`` knob; upstream's
shipped orchestrator properties say true, the double's default is false, NO
GATEKEEPER mode):

1. global service discovery, ``POST /gatekeeper/init_gsd``:
   ``GSDQueryFormDTO`` → ``GSDQueryResultDTO`` (``results``: one
   ``GSDPollResponseDTO`` per neighbour cloud that has an authorized
   provider, ``unsuccessfulRequests``: the others);
2. the first cloud that answered is the target (cloud matchmaking);
3. inter-cloud negotiation, ``POST /gatekeeper/init_icn``:
   ``ICNRequestFormDTO`` → ``ICNResultDTO`` (``response``: a list of
   ``OrchestrationResultDTO``);
4. every result gets the warning ``FROM_OTHER_CLOUD``; with matchmaking, the
   first is picked (DefaultInterCloudProviderMatchmaker, without preferred
   providers).

The provider side answers the two relay messages (``gsd_poll``,
``icn_proposal``) upstream carries over ActiveMQ; the double carries them over
HTTP to the neighbour's ``POST /gatekeeper/relay/gsd_poll`` and
``/gatekeeper/relay/icn_proposal`` (not upstream paths), with the bodies
upstream puts in the messages (``GSDPollRequestDTO`` → ``GSDPollResponseDTO``,
``ICNProposalRequestDTO`` → ``ICNProposalResponseDTO``).  Both filter the
providers through the inter-cloud rules for the requester cloud
(``intercloud.py``); neither looks at intra-cloud rules (the ICN's orchestration
is an ``externalServiceRequest``).

Gateway mode: when the provider cloud has ``gateway_is_mandatory`` (and the
requester ``gateway_is_present``, else the provider cloud refuses), one
provider is chosen, the requester's Gateway opens a session (``gateway.py``),
and the result is rewritten to point at it: provider ``systemName``
"gateway", the Gateway's address, the session's port, the consumer gateway's
public key as ``authenticationInfo``, and the warning ``VIA_GATEWAY`` (then
``FROM_OTHER_CLOUD``).

Clouds: ``GET/POST /gatekeeper/mgmt/clouds`` (``CloudRequestDTO`` list → 201
``CloudWithRelaysListResponseDTO``); this cloud's own row exists from the
start (name and operator from the PKI's cloud certificate).  Which URL reaches
a cloud's gatekeeper (upstream: a relay) is test control: ``POST
/control/relay`` ``{"operator", "name", "url"}``.

Tests: tests/test_arrowhead_double_gatekeeper.py, tests/test_arrowhead_intercloud.py.
"""

from __future__ import annotations

import json
import random
from typing import Any

from twisted.internet import defer
from twisted.web.client import Agent, readBody
from twisted.web.http_headers import Headers
from twisted.web.iweb import IBodyProducer
from zope.interface import implementer

from tests.arrowhead_double.core import CoreError, State, now, page
from tests.arrowhead_double.gateway import PUBLIC_KEY, Gateway
from tests.arrowhead_double.intercloud import InterCloudAuthorization, cloud_response

GSD_POLL = "/gatekeeper/relay/gsd_poll"
ICN_PROPOSAL = "/gatekeeper/relay/icn_proposal"
CLOUDS = "/gatekeeper/mgmt/clouds"
# The relay a gateway session would use; a marker, nothing listens there.
# RelayRequestDTO; as RelayResponseDTO it also has id, createdAt, updatedAt.
RELAY = {"address": "127.0.0.1", "port": 61616, "authenticationInfo": None, "secure": False, "exclusive": False,
         "type": "GATEWAY_RELAY"}


def _empty_poll() -> dict[str, Any]:
    """``new GSDPollResponseDTO()`` as Jackson writes it."""
    return {"providerCloud": None, "requiredServiceDefinition": None, "availableInterfaces": None,
            "numOfProviders": None, "qosMeasurements": None, "serviceMetadata": None, "gatewayIsMandatory": False,
            "verifiedRelays": []}


def _empty_proposal() -> dict[str, Any]:
    return {"response": [], "useGateway": False, "relay": None, "connectionInfo": None}


class Gatekeeper:
    """``double``: the cloud's Orchestrator and Service Registry
    (``server.Double``), whose lookups the Gatekeeper uses as upstream's
    GatekeeperDriver calls them."""

    def __init__(self, state: State, reactor: Any, double: Any, own: tuple[str, str]) -> None:
        self.state = state
        self.double = double
        self.own_name, self.own_operator = own
        self.clouds: list[dict[str, Any]] = []
        self.relays: dict[tuple[str, str], str] = {}
        self.authorization = InterCloudAuthorization(state, self.cloud_by_id)
        self.gateway = Gateway(state, reactor)
        self._agent = Agent(reactor)
        self.reset()

    def reset(self) -> None:
        self.clouds.clear()
        self.relays.clear()
        self.authorization.reset()
        self.gateway.reset()
        self._add_cloud({"operator": self.own_operator, "name": self.own_name, "secure": False, "neighbor": False},
                        own=True)

    # -- clouds

    def _add_cloud(self, dto: dict[str, Any], own: bool = False) -> dict[str, Any]:
        stamp = now()
        cloud = {"id": next(self.state.ids), "operator": str(dto["operator"]).lower(),
                 "name": str(dto["name"]).lower(), "secure": bool(dto.get("secure")),
                 "neighbor": bool(dto.get("neighbor")), "ownCloud": own,
                 "authenticationInfo": dto.get("authenticationInfo"), "createdAt": stamp, "updatedAt": stamp}
        self.clouds.append(cloud)
        return cloud

    def cloud_by_id(self, ident: int) -> dict[str, Any] | None:
        return next((c for c in self.clouds if c["id"] == ident), None)

    def cloud_named(self, dto: dict[str, Any] | None) -> dict[str, Any] | None:
        if not dto:
            return None
        key = (str(dto.get("operator") or "").lower(), str(dto.get("name") or "").lower())
        return next((c for c in self.clouds if (c["operator"], c["name"]) == key), None)

    @property
    def own(self) -> dict[str, Any]:
        return next(c for c in self.clouds if c["ownCloud"])

    def own_request(self) -> dict[str, Any]:
        """getOwnCloud: a CloudRequestDTO."""
        own = self.own
        return {"operator": own["operator"], "name": own["name"], "secure": own["secure"], "neighbor": False,
                "authenticationInfo": own["authenticationInfo"], "gatekeeperRelayIds": None, "gatewayRelayIds": None}

    def list_clouds(self, body: Any, args: dict[str, str], cn: str | None) -> tuple[int, Any]:
        return 200, page([_with_relays(c) for c in self.clouds], args, CLOUDS)

    def register_clouds(self, body: Any, args: dict[str, str], cn: str | None) -> tuple[int, Any]:
        if not isinstance(body, list) or not body:
            raise CoreError("List of CloudRequestDTO is empty", origin=CLOUDS)
        for dto in body:  # GatekeeperController.validateCloudRequestDTO (the CN format check left out)
            if not isinstance(dto, dict):
                raise CoreError("CloudRequestDTO is empty", origin=CLOUDS)
            reasons = [r for bad, r in ((not str(dto.get("operator") or "").strip(), " operator is empty,"),
                                        (not str(dto.get("name") or "").strip(), " name is empty,")) if bad]
            if reasons:
                raise CoreError("CloudRequestDTO is invalid due to the following reasons:" + "".join(reasons)[:-1],
                                origin=CLOUDS)
        for dto in body:  # GatekeeperDBService.registerBulkCloudsWithRelays
            if self.cloud_named(dto) is not None:
                raise CoreError("List of CloudRequestDTO contains uinque constraint violation: "
                                f"{dto['operator']} operator with {dto['name']} name", "INVALID_PARAMETER")
        created = [_with_relays(self._add_cloud(dto)) for dto in body]
        return 201, {"data": created, "count": len(created)}

    def control_relay(self, body: Any, args: dict[str, str], cn: str | None) -> tuple[int, Any]:
        self.relays[(str(body["operator"]).lower(), str(body["name"]).lower())] = str(body["url"]).rstrip("/")
        return 200, {}

    # -- the Orchestrator's triggerInterCloud

    @defer.inlineCallbacks
    def trigger(self, form: dict[str, Any], flags: dict[str, bool]) -> Any:
        preferred = [p["providerCloud"] for p in form.get("preferredProviders") or [] if p.get("providerCloud")]
        gsd = yield self.init_gsd_form({"requestedService": form["requestedService"], "preferredClouds": preferred,
                                        "needQoSMeasurements": flags["enableQoS"]})
        if not gsd["results"]:
            return 200, {"response": []}
        target = gsd["results"][0]["providerCloud"]
        icn = yield self.init_icn_form({
            "requestedService": form["requestedService"], "targetCloudId": target["id"],
            "requesterSystem": form["requesterSystem"], "preferredSystems": [], "preferredGatewayRelays": [],
            "negotiationFlags": flags, "commands": form.get("commands") or {}})
        results = icn.get("response") or []
        for result in results:  # updateOrchestrationResultWarningWithForeignWarning
            if "FROM_OTHER_CLOUD" not in result["warnings"]:
                result["warnings"].append("FROM_OTHER_CLOUD")
        if flags["matchmaking"]:
            results = results[:1]  # DefaultInterCloudProviderMatchmaker: no preferred one, the first
        return 200, {"response": results}

    # -- requester side: GSD and ICN

    def init_gsd(self, body: Any, args: dict[str, str], cn: str | None) -> defer.Deferred:
        return self.init_gsd_form(body).addCallback(lambda result: (200, result))

    @defer.inlineCallbacks
    def init_gsd_form(self, form: Any) -> Any:
        if not isinstance(form, dict):
            raise CoreError("GSDQueryFormDTO is null", origin="/gatekeeper/init_gsd")
        if not isinstance(form.get("requestedService"), dict):
            raise CoreError("RequestedService is null", origin="/gatekeeper/init_gsd")
        if not str(form["requestedService"].get("serviceDefinitionRequirement") or "").strip():
            raise CoreError("serviceDefinitionRequirement is empty", origin="/gatekeeper/init_gsd")
        if form.get("preferredClouds"):
            clouds = [c for c in (self.cloud_named(p) for p in form["preferredClouds"]) if c is not None]
            if not clouds:
                raise CoreError("initGSDPoll failed: Given preferred clouds are not exists", "INVALID_PARAMETER")
        else:
            clouds = [c for c in self.clouds if c["neighbor"] and not c["ownCloud"]]
            if not clouds:
                raise CoreError("initGSDPoll failed: Neither preferred clouds were given, nor neighbor clouds "
                                "registered", "INVALID_PARAMETER")
        poll = {"requestedService": form["requestedService"], "requesterCloud": self.own_request(),
                "gatewayIsPresent": bool(self.state.knobs["gateway_is_present"]),
                "needQoSMeasurements": bool(form.get("needQoSMeasurements"))}
        results, errors, unsuccessful = [], [], 0
        for cloud in clouds:
            status, answer = yield self._relay(cloud, GSD_POLL, poll)
            if status != 200:
                errors.append(answer)
                unsuccessful += 1
            elif not answer.get("providerCloud"):
                unsuccessful += 1
            else:
                # the cloud as this cloud's database knows it
                answer["providerCloud"] = cloud_response(self.cloud_named(answer["providerCloud"]) or cloud)
                results.append(answer)
        if not results and errors:
            raise _error_from(errors[0])
        return {"results": results, "unsuccessfulRequests": unsuccessful}

    def init_icn(self, body: Any, args: dict[str, str], cn: str | None) -> defer.Deferred:
        return self.init_icn_form(body).addCallback(lambda result: (200, result))

    @defer.inlineCallbacks
    def init_icn_form(self, form: Any) -> Any:
        # GatekeeperController.validateICNRequestFormDTO, then getCloudById
        origin = "/gatekeeper/init_icn"
        if not isinstance(form, dict):
            raise CoreError("ICN form is null", origin=origin)
        if not isinstance(form.get("requestedService"), dict):
            raise CoreError("Requested service is null", origin=origin)
        if not str(form["requestedService"].get("serviceDefinitionRequirement") or "").strip():
            raise CoreError("Requested service definition is null or blank", origin=origin)
        ident = form.get("targetCloudId")
        if not isinstance(ident, int) or ident < 1:
            raise CoreError(f"Invalid id: {ident}", origin=origin)
        target = self.cloud_by_id(ident)
        if target is None:
            raise CoreError(f"Cloud with id '{ident}' not exists", "INVALID_PARAMETER")
        present = bool(self.state.knobs["gateway_is_present"])
        proposal = {"requestedService": form["requestedService"], "requesterCloud": self.own_request(),
                    "requesterSystem": form.get("requesterSystem"),
                    "preferredSystems": form.get("preferredSystems") or [],
                    "preferredGatewayRelays": [], "knownGatewayRelays": [RELAY] if present else [],
                    "negotiationFlags": form.get("negotiationFlags") or {}, "commands": form.get("commands") or {},
                    "gatewayIsPresent": present, "consumerGatewayPublicKey": PUBLIC_KEY if present else None}
        status, answer = yield self._relay(target, ICN_PROPOSAL, proposal)
        if status != 200:
            raise _error_from(answer)
        results = answer.get("response") or []
        if not results or not answer.get("useGateway"):
            return {"response": results}
        result = results[0]  # in gateway mode there is only one result
        try:
            port = self.gateway.connect_consumer(
                answer["connectionInfo"], form["requesterSystem"], result["provider"], self.own_request(),
                {"operator": target["operator"], "name": target["name"]},
                form["requestedService"]["serviceDefinitionRequirement"])
        except CoreError:
            return {"response": []}  # UnavailableServerException: logged, empty result upstream
        result["provider"].update({"systemName": "gateway", "address": self.gateway.host, "port": port,
                                   "authenticationInfo": PUBLIC_KEY})
        result["warnings"].append("VIA_GATEWAY")
        return {"response": [result]}

    @defer.inlineCallbacks
    def _relay(self, cloud: dict[str, Any], path: str, body: dict[str, Any]) -> Any:
        """One relay message and its answer: (status, JSON body)."""
        url = self.relays.get((cloud["operator"], cloud["name"]))
        if url is None:
            return 504, {"errorMessage": f"The following cloud does not have a relay: {cloud['operator']}."
                                         f"{cloud['name']}", "errorCode": 504, "exceptionType": "UNAVAILABLE",
                         "origin": path}
        try:
            response = yield self._agent.request(b"POST", (url + path).encode(),
                                                 Headers({b"Content-Type": [b"application/json"]}),
                                                 _Body(json.dumps(body).encode()))
            raw = yield readBody(response)
        except Exception as exc:
            return 504, {"errorMessage": f"Relay failure: {exc}", "errorCode": 504, "exceptionType": "UNAVAILABLE",
                         "origin": path}
        return response.code, json.loads(raw) if raw else None

    # -- provider side: the relay messages

    def gsd_poll(self, body: Any, args: dict[str, str], cn: str | None) -> Any:
        """GatekeeperService.doGSDPoll."""
        if not isinstance(body, dict):
            raise CoreError("GSDPollRequestDTO is null", "INVALID_PARAMETER")
        if self.state.knobs["gateway_is_mandatory"] and not body.get("gatewayIsPresent"):
            raise CoreError("Requester cloud must have gateway available", "INVALID_PARAMETER")
        service = body.get("requestedService")
        if not isinstance(service, dict) or not str(service.get("serviceDefinitionRequirement") or "").strip():
            raise CoreError("serviceDefinitionRequirement is empty", "INVALID_PARAMETER")
        requester = body.get("requesterCloud") or {}
        if not requester.get("operator") or not requester.get("name"):
            raise CoreError("GSDPollRequestDTO.CloudRequestDTO is invalid", "INVALID_PARAMETER")
        d = self.double.registry_query(service)
        return d.addCallback(self._polled, service, requester)

    def _polled(self, entries: list[dict[str, Any]], service: dict[str, Any],
                requester: dict[str, Any]) -> tuple[int, Any]:
        if not entries:
            return 200, _empty_poll()
        allowed = self.authorization.authorized(self.cloud_named(requester), requester, entries)
        if not allowed:
            return 200, _empty_poll()
        interfaces = sorted({i["interfaceName"] for e in allowed for i in e["interfaces"]})
        return 200, {"providerCloud": cloud_response(self.own), "requiredServiceDefinition":
                     service["serviceDefinitionRequirement"], "availableInterfaces": interfaces,
                     "numOfProviders": len(allowed), "qosMeasurements": [],
                     "serviceMetadata": service.get("metadataRequirements"),
                     "gatewayIsMandatory": bool(self.state.knobs["gateway_is_mandatory"]), "verifiedRelays": []}

    def icn_proposal(self, body: Any, args: dict[str, str], cn: str | None) -> Any:
        """GatekeeperService.doICN."""
        if not isinstance(body, dict):
            raise CoreError("ICN proposal request is null", "INVALID_PARAMETER")
        mandatory = bool(self.state.knobs["gateway_is_mandatory"])
        if mandatory and not body.get("gatewayIsPresent"):
            raise CoreError("Services are only available via gateway.", "AUTH")
        if mandatory and not (body.get("preferredGatewayRelays") or body.get("knownGatewayRelays")):
            raise CoreError("Services are only available via relay.", "AUTH")
        service = body.get("requestedService")
        if not isinstance(service, dict) or not str(service.get("serviceDefinitionRequirement") or "").strip():
            raise CoreError("Requested service definition is null or blank.", "INVALID_PARAMETER")
        if mandatory and not body.get("consumerGatewayPublicKey"):
            raise CoreError("Consumer gateway public key is null or blank.", "INVALID_PARAMETER")
        flags = {**(body.get("negotiationFlags") or {}), "externalServiceRequest": True}
        d = self.double.external_orchestration({"requesterSystem": body.get("requesterSystem"),
                                                "requestedService": service, "orchestrationFlags": flags})
        return d.addCallback(self._proposed, body, mandatory)

    def _proposed(self, results: list[dict[str, Any]], body: dict[str, Any], mandatory: bool) -> tuple[int, Any]:
        requester = body.get("requesterCloud") or {}
        if results:
            results = self.authorization.authorized(self.cloud_named(requester), requester, results,
                                                    service_key="service")
        if not results:
            return 200, _empty_proposal()
        if not mandatory:
            return 200, {**_empty_proposal(), "response": results}
        # one provider, a gateway connection being expensive: RandomICNProviderMatchmaker
        selected = random.choice(results)
        relay = {"id": 1, **RELAY, "createdAt": now(), "updatedAt": now()}
        return 200, {"response": [selected], "useGateway": True, "relay": relay,
                     "connectionInfo": self.gateway.connect_provider(requester)}


def _with_relays(cloud: dict[str, Any]) -> dict[str, Any]:
    """CloudWithRelaysResponseDTO."""
    return {**cloud_response(cloud), "gatekeeperRelays": [], "gatewayRelays": []}


def _error_from(dto: Any) -> CoreError:
    """Utilities.createExceptionFromErrorMessageDTO."""
    if not isinstance(dto, dict):
        return CoreError("Inter-cloud request failed", "ARROWHEAD", 500)
    return CoreError(str(dto.get("errorMessage")), str(dto.get("exceptionType") or "ARROWHEAD"),
                     int(dto.get("errorCode") or 500), origin=dto.get("origin"))


@implementer(IBodyProducer)
class _Body:
    """A minimal IBodyProducer for a JSON request body."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.length = len(data)

    def startProducing(self, consumer: Any) -> defer.Deferred:  # noqa: N802 - Twisted API
        consumer.write(self.data)
        return defer.succeed(None)

    def pauseProducing(self) -> None:  # noqa: N802 - Twisted API
        pass

    def stopProducing(self) -> None:  # noqa: N802 - Twisted API
        pass
