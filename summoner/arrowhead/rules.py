"""The intra-cloud rules summoner's published on-demand hosts need, compared
with what Authorization holds, and the calls that make them so
(``summoner arrowhead rules``; the command line is in ``rules_cli.py``).

Each published host is a provider system of its own in Arrowhead: summoner's
system name, the host's DNS name as the address, the service's port.  A
consumer may reach it only through a rule naming the consumer, that provider
system, the service definition and the interfaces (upstream keeps one rule
per consumer, provider and service definition; adding one that exists is
skipped, whatever its interfaces, so a rule that lacks an interface is
removed and added again).  Rules are addressed by database ids, looked up
through the Service Registry's and Authorization's management lists.

A rule is *obsolete* when its consumer is one of the given consumers and its
provider is a published-host system of summoner's (summoner's system name, an
address other than summoner's own) that no published host is any more.

Tests: tests/test_arrowhead_rules.py
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from summoner.arrowhead.addresses import normalize
from summoner.arrowhead.client import (
    MGMT_INTERFACES,
    MGMT_INTRACLOUD,
    MGMT_SERVICES,
    MGMT_SYSTEMS,
    ArrowheadClient,
    ArrowheadError,
    SystemRef,
)
from summoner.arrowhead.publisher import PublishedService

SystemKey = tuple[str, str, int]  # how Arrowhead identifies a system: name, address, port


class RulesError(Exception):
    """Something the operator must fix first; the text says what."""


def system_text(key: SystemKey) -> str:
    return f"{key[0]} ({key[1]}:{key[2]})"


@dataclass(frozen=True)
class Need:
    """One rule a published host needs."""

    consumer: SystemKey
    provider: SystemKey
    service: str
    interfaces: tuple[str, ...]

    def text(self) -> str:
        return (f"{system_text(self.consumer)} -> {system_text(self.provider)} service {self.service} "
                f"interfaces {','.join(self.interfaces)}")


def needed(own: SystemRef, interfaces: Sequence[str], services: Iterable[PublishedService],
           consumers: Iterable[SystemKey]) -> list[Need]:
    """The rules each consumer needs to reach each published host."""
    providers = [((own.system_name, normalize(s.dns_name.rstrip(".")), s.port), s.service_definition.lower())
                 for s in services]
    return [Need(consumer, provider, service, tuple(i.upper() for i in interfaces))
            for consumer in consumers for provider, service in providers]


@dataclass(frozen=True)
class Snapshot:
    """What the core systems hold: systems, service definitions, interfaces (by key), rules."""

    systems: dict[SystemKey, int]
    definitions: dict[str, int]
    interfaces: dict[str, int]
    rules: list[dict[str, Any]]

    def rule_for(self, need: Need) -> dict[str, Any] | None:
        for rule in self.rules:
            if (_key(rule["consumerSystem"]) == need.consumer and _key(rule["providerSystem"]) == need.provider
                    and rule["serviceDefinition"]["serviceDefinition"] == need.service):
                return rule
        return None


def _key(system: dict[str, Any]) -> SystemKey:
    return (str(system["systemName"]).lower(), str(system["address"]).lower(), int(system["port"]))


async def snapshot(client: ArrowheadClient, timeout: float) -> Snapshot:
    systems = await client.mgmt_list(MGMT_SYSTEMS, timeout)
    definitions = await client.mgmt_list(MGMT_SERVICES, timeout)
    interfaces = await client.mgmt_list(MGMT_INTERFACES, timeout)
    rules = await client.mgmt_list(MGMT_INTRACLOUD, timeout)
    return Snapshot({_key(s): int(s["id"]) for s in systems},
                    {str(d["serviceDefinition"]).lower(): int(d["id"]) for d in definitions},
                    {str(i["interfaceName"]).upper(): int(i["id"]) for i in interfaces}, rules)


def resolve_consumer(spec: str, systems: Iterable[SystemKey]) -> SystemKey:
    """``NAME@ADDRESS:PORT``, or ``NAME`` when exactly one registered system has it."""
    name, _, where = spec.partition("@")
    name = name.strip().lower()
    if where:
        address, _, port = where.rpartition(":")
        if not address or not port.isdigit():
            raise RulesError(f"--consumer {spec!r} is not NAME or NAME@ADDRESS:PORT")
        return (name, normalize(address.strip("[]")), int(port))
    matches = sorted(key for key in systems if key[0] == name)
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise RulesError(f"--consumer {spec}: no system of that name is registered in the Service Registry; "
                         "start the consumer (it registers itself) or register it, then run this again")
    raise RulesError(f"--consumer {spec}: {len(matches)} registered systems have that name ("
                     + ", ".join(system_text(m) for m in matches) + "); give NAME@ADDRESS:PORT")


@dataclass
class Finding:
    """One line of the report: a rule's state, and what to send to make it right."""

    state: str  # present | missing | stale | unregistered | obsolete, then added | replaced | removed | failed
    text: str
    body: dict[str, Any] | None = None  # AuthorizationIntraCloudRequestDTO that adds it
    rule_id: int | None = None          # the existing rule (stale, obsolete)

    @property
    def ok(self) -> bool:
        return self.state in ("present", "added", "replaced", "removed")

    def line(self) -> str:
        return f"{self.state:<12} {self.text}"


def plan(needs: Sequence[Need], held: Snapshot, own: SystemRef, consumers: Iterable[SystemKey]) -> list[Finding]:
    """What each needed rule's state is, and which held rules are obsolete."""
    findings = [_finding(need, held) for need in needs]
    wanted = {(n.consumer, n.provider, n.service) for n in needs}
    ours = set(consumers)
    own_address = normalize(own.address)
    for rule in held.rules:
        consumer, provider = _key(rule["consumerSystem"]), _key(rule["providerSystem"])
        service = str(rule["serviceDefinition"]["serviceDefinition"])
        if (consumer in ours and provider[0] == own.system_name.lower() and provider[1] != own_address
                and (consumer, provider, service) not in wanted):
            names = ",".join(str(i["interfaceName"]) for i in rule["interfaces"])
            findings.append(Finding("obsolete", f"{system_text(consumer)} -> {system_text(provider)} service "
                                                f"{service} interfaces {names} (rule {rule['id']}: no published "
                                                "host is that provider any more)", rule_id=int(rule["id"])))
    return findings


def _finding(need: Need, held: Snapshot) -> Finding:
    rule = held.rule_for(need)
    if rule is not None:
        have = {str(i["interfaceName"]).upper() for i in rule["interfaces"]}
        if set(need.interfaces) <= have:
            return Finding("present", f"{need.text()} (rule {rule['id']})")
    lacking = [what for what, there in (
        (f"consumer {system_text(need.consumer)}", need.consumer in held.systems),
        (f"provider {system_text(need.provider)}", need.provider in held.systems),
        (f"service definition {need.service}", need.service in held.definitions),
        *((f"interface {i}", i in held.interfaces) for i in need.interfaces)) if not there]
    if lacking:
        return Finding("unregistered", f"{need.text()}: the Service Registry does not know the "
                                       f"{', '.join(lacking)} yet -- run summoner serve with this configuration "
                                       "(it publishes the hosts) and start the consumer, then run this again")
    body = {"consumerId": held.systems[need.consumer], "providerIds": [held.systems[need.provider]],
            "serviceDefinitionIds": [held.definitions[need.service]],
            "interfaceIds": [held.interfaces[i] for i in need.interfaces]}
    if rule is None:
        return Finding("missing", need.text(), body)
    have_text = ",".join(str(i["interfaceName"]) for i in rule["interfaces"])
    return Finding("stale", f"{need.text()} (rule {rule['id']} allows only {have_text})", body, int(rule["id"]))


async def carry_out(client: ArrowheadClient, findings: list[Finding], *, apply: bool, remove: bool,
                    timeout: float) -> None:
    """Add the missing rules, replace the stale ones (``apply``) and delete the
    obsolete ones (``remove``); each finding's state says how it went."""
    for finding in findings:
        try:
            if apply and finding.state == "stale" and finding.rule_id is not None and finding.body is not None:
                await client.remove_rule(finding.rule_id, timeout)
                await client.add_rule(finding.body, timeout)
                finding.state = "replaced"
            elif apply and finding.state == "missing" and finding.body is not None:
                await client.add_rule(finding.body, timeout)
                finding.state = "added"
            elif remove and finding.state == "obsolete" and finding.rule_id is not None:
                await client.remove_rule(finding.rule_id, timeout)
                finding.state = "removed"
        except ArrowheadError as exc:
            finding.state, finding.text = "failed", f"{finding.text}: {exc}"
