"""The double's Authorization, inter-cloud half: the rules that let another
cloud consume a provider of this one, as core-java-spring 4.6.2 keeps them
(AuthorizationController.registerAuthorizationInterCloud,
AuthorizationDBService.createBulkAuthorizationInterCloud and
checkAuthorizationInterCloudResponse).

Endpoints: ``GET/POST /authorization/mgmt/intercloud`` (list, paged; add:
``AuthorizationInterCloudRequestDTO`` -- ``cloudId``, ``providerIdList``,
``serviceDefinitionIdList``, ``interfaceIdList`` -- 201 with the *created*
``AuthorizationInterCloudResponseDTO`` rows; one that exists already for the
cloud, provider and service definition is skipped, as upstream only logs it),
``GET/DELETE /authorization/mgmt/intercloud/{id}``.  ``cloudId`` is a row of
the Gatekeeper's cloud table (``gatekeeper.py``), the requester cloud as this
cloud knows it.

Tests: tests/test_arrowhead_double_gatekeeper.py.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tests.arrowhead_double.authorization import RuleStore, expand, id_sets, narrowed
from tests.arrowhead_double.core import CoreError, State, now, system_response

MGMT = "/authorization/mgmt/intercloud"


def cloud_response(cloud: dict[str, Any]) -> dict[str, Any]:
    """CloudResponseDTO (no NON_NULL: every field, nulls included)."""
    return {k: cloud[k] for k in ("id", "operator", "name", "secure", "neighbor", "ownCloud", "authenticationInfo",
                                  "createdAt", "updatedAt")}


def rule_response(rule: dict[str, Any]) -> dict[str, Any]:
    """AuthorizationInterCloudResponseDTO."""
    return {"id": rule["id"], "cloud": cloud_response(rule["cloud"]), "provider": system_response(rule["provider"]),
            "serviceDefinition": rule["serviceDefinition"], "interfaces": list(rule["interfaces"]),
            "createdAt": rule["createdAt"], "updatedAt": rule["updatedAt"]}


class InterCloudAuthorization(RuleStore):
    """``cloud_by_id``: the Gatekeeper's cloud table (Authorization shares
    the database with it upstream)."""

    entity = "AuthorizationInterCloud"
    mgmt = MGMT

    def __init__(self, state: State, cloud_by_id: Callable[[int], dict[str, Any] | None]) -> None:
        super().__init__([])
        self.state = state
        self._cloud_by_id = cloud_by_id

    def reset(self) -> None:
        self.rules.clear()

    def response(self, rule: dict[str, Any]) -> dict[str, Any]:
        return rule_response(rule)

    # -- management (list, get, delete: RuleStore's)

    def add(self, body: Any, args: dict[str, str], cn: str | None) -> tuple[int, Any]:
        cloud_id, providers, services, interfaces = _checked_request(body if isinstance(body, dict) else {})
        cloud = self._cloud_by_id(cloud_id)
        if cloud is None:
            raise CoreError(f"Cloud with id of {cloud_id} not exists", "INVALID_PARAMETER")
        wanted = expand(providers, services, interfaces)
        created = [rule for rule in (self._create(cloud, *item) for item in wanted) if rule is not None]
        return 201, {"data": [rule_response(r) for r in created], "count": len(created)}

    def _create(self, cloud: dict[str, Any], provider_id: int, service_id: int,
                interface_ids: list[int]) -> dict[str, Any] | None:
        found = [self.state.by_id("interface", ident) for ident in interface_ids]
        if any(i is None for i in found):
            missing = interface_ids[found.index(None)]
            raise CoreError(f"ServiceInterface with id of {missing} not exists", "INVALID_PARAMETER")
        provider = self.state.by_id("system", provider_id)
        if provider is None:
            raise CoreError(f"Provider system with id of {provider_id} not exists", "INVALID_PARAMETER")
        service = self.state.by_id("definition", service_id)
        if service is None:
            raise CoreError(f"ServiceDefinition with id of {service_id} not exists", "INVALID_PARAMETER")
        if any(r["cloud"] is cloud and r["provider"] is provider and r["serviceDefinition"] is service
               for r in self.rules):
            return None  # checkConstraintsOfAuthorizationInterCloudTable: skipped, only logged upstream
        stamp = now()
        rule = {"id": next(self.state.ids), "cloud": cloud, "provider": provider, "serviceDefinition": service,
                "interfaces": found, "createdAt": stamp, "updatedAt": stamp}
        self.rules.append(rule)
        return rule

    # -- what the Gatekeeper asks (GSD poll and ICN proposal, provider side)

    def authorized(self, cloud: dict[str, Any] | None, requested: dict[str, Any],
                   entries: list[dict[str, Any]], service_key: str = "serviceDefinition") -> list[dict[str, Any]]:
        """checkAuthorizationInterCloudResponse and the filtering after it:
        entries whose provider has a rule for the requester cloud and service
        definition, each with only the interfaces the rule allows.  An
        unknown requester cloud is an error (``cloud`` None).  ``entries``: registry
        entries, or orchestration results (``service_key`` "service")."""
        if cloud is None:
            raise CoreError("No cloud exists with the following operator and name: "
                            f"{requested.get('operator')}, {requested.get('name')}", "INVALID_PARAMETER")
        if not self.state.knobs["enforce_authorization"]:
            return entries
        out = []
        for entry in entries:
            for rule in self.rules:
                if (rule["cloud"] is cloud and rule["provider"]["id"] == entry["provider"]["id"]
                        and rule["serviceDefinition"]["id"] == entry[service_key]["id"]):
                    out.extend(narrowed(entry, rule))
        return out


def _checked_request(body: dict[str, Any]) -> tuple[int, list[int], list[int], list[int]]:
    """registerAuthorizationInterCloud's checks (its messages differ from the
    intra-cloud ones), then createBulkAuthorizationInterCloud's."""
    cloud = body.get("cloudId")
    lists = [body.get(k) or [] for k in ("providerIdList", "serviceDefinitionIdList", "interfaceIdList")]
    reasons = [reason for bad, reason in (
        (not isinstance(cloud, int) or cloud < 1, "Cloud Id is not valid,"),
        (not lists[0], " ProviderList is null or blank,"),
        (not lists[1], " ServiceDefinitionList is null or blank,"),
        (not lists[2], " InterfaceList is null or blank,")) if bad]
    if reasons:
        raise CoreError("".join(reasons)[:-1].strip(), origin=MGMT)
    providers, services, interfaces = id_sets(lists, ("providerId", "serviceDefinitionId", "interfaceId"), MGMT)
    assert isinstance(cloud, int)
    return cloud, providers, services, interfaces
