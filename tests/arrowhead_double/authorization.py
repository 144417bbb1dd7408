"""The double's Authorization system: intra-cloud rules as core-java-spring
4.6.2 keeps them (AuthorizationController, AuthorizationDBService), the
intra-cloud check the Orchestrator filters providers through, and token
generation, which fails in an insecure cloud.

Endpoints: ``GET/POST /authorization/mgmt/intracloud`` (list, paged; add:
``AuthorizationIntraCloudRequestDTO``, 201 with the *created* rules -- one that
exists already for the consumer, provider and service definition is skipped,
whatever its interfaces, as upstream does), ``GET/DELETE
/authorization/mgmt/intracloud/{id}``.  Management paths are for the local
system operator's certificate in secure mode (the listener checks that).
"""

from __future__ import annotations

from typing import Any

from tests.arrowhead_double.core import CoreError, State, now, page, system_response

MGMT = "/authorization/mgmt/intracloud"
TOKEN_ORIGIN = "/authorization/token"


def rule_response(rule: dict[str, Any]) -> dict[str, Any]:
    """AuthorizationIntraCloudResponseDTO."""
    return {"id": rule["id"], "consumerSystem": system_response(rule["consumer"]),
            "providerSystem": system_response(rule["provider"]), "serviceDefinition": rule["serviceDefinition"],
            "interfaces": list(rule["interfaces"]), "createdAt": rule["createdAt"], "updatedAt": rule["updatedAt"]}


class RuleStore:
    """What the intra- and inter-cloud rule tables share: their management
    list (paged), get and delete by id, and the error for an unknown id."""

    entity = "AuthorizationIntraCloud"
    mgmt = MGMT

    def __init__(self, rules: list[dict[str, Any]]) -> None:
        self.rules = rules

    def response(self, rule: dict[str, Any]) -> dict[str, Any]:
        return rule_response(rule)

    def list(self, body: Any, args: dict[str, str], cn: str | None) -> tuple[int, Any]:
        return 200, page([self.response(r) for r in self.rules], args, self.mgmt)

    def get(self, body: Any, args: dict[str, str], cn: str | None) -> tuple[int, Any]:
        return 200, self.response(self._rule(args))

    def delete(self, body: Any, args: dict[str, str], cn: str | None) -> tuple[int, Any]:
        self.rules.remove(self._rule(args))
        return 200, None

    def _rule(self, args: dict[str, str]) -> dict[str, Any]:
        ident = int(args["id"])
        if ident < 1:
            raise CoreError("Id must be greater than 0.", origin=self.mgmt + "/{id}")
        for rule in self.rules:
            if rule["id"] == ident:
                return rule
        raise CoreError(f"{self.entity} with id of '{ident}' not exists", "INVALID_PARAMETER")


def expand(providers: list[int], services: list[int], interfaces: list[int]) -> list[tuple[int, int, list[int]]]:
    """The rules one bulk request makes (createBulkAuthorization*): (provider,
    service, interfaces) each."""
    if len(providers) <= len(services) and len(services) >= len(interfaces):
        # one provider, one or more services, one interface
        return [(providers[0], service, interfaces[:1]) for service in services]
    # one service, one or more providers and interfaces
    return [(provider, services[0], interfaces) for provider in providers]


def narrowed(entry: dict[str, Any], rule: dict[str, Any]) -> list[dict[str, Any]]:
    """filterProviderListUsingAuthorizationResult: the entry with only the
    interfaces ``rule`` allows -- none left, no entry."""
    allowed = {i["id"] for i in rule["interfaces"]}
    interfaces = [i for i in entry["interfaces"] if i["id"] in allowed]
    return [{**entry, "interfaces": interfaces}] if interfaces else []


def id_sets(lists: list[list[Any]], names: tuple[str, str, str],
            origin: str) -> tuple[list[int], list[int], list[int]]:
    """A bulk rule request's provider, service and interface lists: at most
    one of two neighbouring ones may hold more than one id; the controllers
    drop invalid ids (only logging them) into sets, here in request order; a
    list left empty is the DB service's error."""
    for (first, second) in ((0, 1), (1, 2)):
        if len(lists[first]) > 1 and len(lists[second]) > 1:
            raise CoreError(f"{names[first]} list or {names[second]} list should contain only one element, but "
                            "both contain more", origin=origin)
    providers, services, interfaces = (list(dict.fromkeys(i for i in ids if isinstance(i, int) and i > 0))
                                       for ids in lists)
    for ids, name in zip((providers, services, interfaces), names, strict=True):
        if not ids:
            raise CoreError(f"{name} list is empty", "INVALID_PARAMETER")
    return providers, services, interfaces


class Authorization(RuleStore):
    def __init__(self, state: State) -> None:
        super().__init__(state.rules)  # State.reset empties the list in place
        self.state = state

    def add(self, body: Any, args: dict[str, str], cn: str | None) -> tuple[int, Any]:
        if not isinstance(body, dict):
            raise CoreError("Payload is invalid due to the following reasons: invalid consumer id, providerId list "
                            "is empty, serviceDefinitionList is empty, interfaceList is empty", origin=MGMT)
        consumer_id, providers, services, interfaces = _checked_request(body)
        consumer = self.state.by_id("system", consumer_id)
        if consumer is None:
            raise CoreError(f"Consumer system with id of {consumer_id} not exists", "INVALID_PARAMETER")
        wanted = expand(providers, services, interfaces)
        created = [rule for rule in (self._create(consumer, *item) for item in wanted) if rule is not None]
        return 201, {"data": [rule_response(r) for r in created], "count": len(created)}

    def _create(self, consumer: dict[str, Any], provider_id: int, service_id: int,
                interface_ids: list[int]) -> dict[str, Any] | None:
        provider = self.state.by_id("system", provider_id)
        if provider is None:
            raise CoreError(f"Provider system with id of {provider_id} not exists", "INVALID_PARAMETER")
        service = self.state.by_id("definition", service_id)
        if service is None:
            raise CoreError(f"ServiceDefinition with id of {service_id} not exists", "INVALID_PARAMETER")
        found = [i for i in (self.state.by_id("interface", ident) for ident in interface_ids) if i is not None]
        if not found:
            if len(interface_ids) == 1:
                raise CoreError(f"ServiceInterface with id of {interface_ids[0]} not exists", "INVALID_PARAMETER")
            raise CoreError("interfaceId list doesn't contain any existing ServiceInterface", "INVALID_PARAMETER")
        if any(r["consumer"] is consumer and r["provider"] is provider and r["serviceDefinition"] is service
               for r in self.state.rules):
            return None  # checkConstraintsOfAuthorizationIntraCloudTable: skipped, only logged upstream
        stamp = now()
        rule = {"id": next(self.state.ids), "consumer": consumer, "provider": provider, "serviceDefinition": service,
                "interfaces": found, "createdAt": stamp, "updatedAt": stamp}
        self.state.rules.append(rule)
        return rule

    # -- what the Orchestrator asks

    def authorized(self, consumer: dict[str, Any], entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The intra-cloud check and filterProviderListUsingAuthorizationResult:
        entries whose provider has a rule for this consumer and service
        definition, each with only the interfaces the rule allows."""
        if not self.state.knobs["enforce_authorization"]:
            return entries
        out = []
        for entry in entries:
            for rule in self.state.rules:
                if (rule["consumer"] is consumer and rule["provider"] is entry["provider"]
                        and rule["serviceDefinition"] is entry["serviceDefinition"]):
                    out.extend(narrowed(entry, rule))
        return out

    @staticmethod
    def tokens(entry: dict[str, Any], secure: bool) -> dict[str, str] | None:
        """authorizationTokens of an orchestration result: only TOKEN
        providers get them, and only a secure Authorization can make them."""
        if entry["secure"] != "TOKEN":
            return None
        if not secure:
            raise CoreError("Token generation is not possible in insecure mode.", "ARROWHEAD", 500,
                            origin=TOKEN_ORIGIN)
        # A real token is a JWE for the provider's key; summoner never
        # consumes them (DNS cannot carry them), so a marker stands in.
        return {i["interfaceName"]: "double-token" for i in entry["interfaces"]}


def _checked_request(body: dict[str, Any]) -> tuple[int, list[int], list[int], list[int]]:
    """AuthorizationController.registerAuthorizationIntraCloud's checks."""
    consumer = body.get("consumerId")
    lists = [body.get(k) or [] for k in ("providerIds", "serviceDefinitionIds", "interfaceIds")]
    reasons = [reason for bad, reason in (
        (not isinstance(consumer, int) or consumer < 1, " invalid consumer id"),
        (not lists[0], " providerId list is empty"),
        (not lists[1], " serviceDefinitionList is empty"),
        (not lists[2], " interfaceList is empty")) if bad]
    if reasons:
        raise CoreError("Payload is invalid due to the following reasons:" + ",".join(reasons), origin=MGMT)
    # createBulkAuthorizationIntraCloud, after the invalid ones went
    providers, services, interfaces = id_sets(lists, ("providerIds", "serviceDefinitionIds", "interfaceIds"), MGMT)
    assert isinstance(consumer, int)
    return consumer, providers, services, interfaces
