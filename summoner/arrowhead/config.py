"""Arrowhead configuration: command-line flags and the checked config object.

The dataclass ``ArrowheadConfig`` holds every default; the flags take theirs from it.

Tests: tests/test_arrowhead_secure.py (TLS and name checks), tests/test_arrowhead_dns.py,
tests/test_configfile.py (the flags as file keys).
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from summoner.answer import name_key
from summoner.arrowhead.addresses import address_problem, normalize
from summoner.arrowhead.client import SystemRef
from summoner.arrowhead.tls import TLSConfigError, TLSMaterial, load_tls

# use_strict_service_definition_verifier (the upstream default) and system names.
NAME_RE = re.compile(r"^[A-Za-z](?:[0-9A-Za-z-]*[0-9A-Za-z])?$")
INTERFACE_RE = re.compile(r"^([A-Z_0-9]+)-(SECURE|INSECURE)-([A-Z_0-9]+)$")
SECURITY_TYPES = ("NOT_SECURE", "CERTIFICATE", "TOKEN")
# What a DNS answer can stand for: an address to connect to, with or without a
# client certificate.  A TOKEN provider also needs the token the Orchestrator
# hands out, which DNS cannot carry (and which an insecure cloud cannot make:
# the whole orchestration then fails with a 500).
DNS_SECURITY = ("NOT_SECURE", "CERTIFICATE")


class ArrowheadConfigError(ValueError):
    """A configuration summoner cannot start with; the text is for the operator."""


def valid_name(name: str) -> bool:
    return len(name) <= 63 and NAME_RE.match(name) is not None


@dataclass(frozen=True)
class ServiceMapping:
    """How names under ``suffix`` become a ``ServiceQueryFormDTO``.

    ``service`` None means the first label of the name (``temperature.ah.x`` →
    ``temperature``; ``_temperature._tcp.ah.x`` → ``temperature``).
    """

    suffix: str = ""
    service: str | None = None
    interfaces: tuple[str, ...] = ()
    security: tuple[str, ...] = DNS_SECURITY
    metadata: Mapping[str, str] = field(default_factory=dict, hash=False)
    version: int | None = None

    def matches(self, key: str) -> bool:
        return not self.suffix or key == self.suffix or key.endswith("." + self.suffix)


@dataclass(frozen=True)
class ArrowheadConfig:
    orchestrator_url: str | None = None
    registry_url: str | None = None
    system_name: str = "summoner"
    system_address: str = "127.0.0.1"
    system_port: int = 53
    domains: tuple[str, ...] = ()
    zone_names: bool = True
    mappings: tuple[ServiceMapping, ...] = (ServiceMapping(),)
    matchmaking: bool = True
    ping_providers: bool = False
    intercloud: bool = False
    metadata_search: bool | None = None  # None: on exactly when a mapping asks for metadata
    ttl: int = 30
    # How long a Gateway session port stays usable for a new client: upstream's
    # gateway_socket_timeout (30000 ms), the SO_TIMEOUT of the session's server
    # socket, after which an unused session is closed (its
    # inactive_gateway_bridge_timeout, 60 s, only counts once connected).
    gateway_session: int = 30
    deadline: float = 2.0
    circuit_threshold: int = 3
    circuit_cooldown: float = 10.0
    publish: bool = True
    publish_interfaces: tuple[str, ...] = ("HTTP-INSECURE-JSON",)
    tls: TLSMaterial | None = None

    @property
    def secure(self) -> bool:
        return self.tls is not None

    def mapping_for(self, key: str) -> ServiceMapping:
        """The most specific mapping whose suffix covers ``key``."""
        best = ServiceMapping()
        for mapping in self.mappings:
            if mapping.matches(key) and len(mapping.suffix) >= len(best.suffix):
                best = mapping
        return best


def add_cli_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``--arrowhead-*`` flags; without the first two, Arrowhead is off."""
    d = ArrowheadConfig()
    group = parser.add_argument_group(
        "Arrowhead", "Resolve names summoner does not hold through an Eclipse Arrowhead 4.x Orchestrator, "
        "and publish on-demand hosts in its Service Registry. Off unless a URL is given.")
    add = group.add_argument
    add("--arrowhead-orchestrator", metavar="URL",
        help="Orchestrator base URL, e.g. https://orchestrator:8441 (https means mutual TLS)")
    add("--arrowhead-registry", metavar="URL",
        help="Service Registry base URL, e.g. https://serviceregistry:8443 (needed to publish and to "
             "register summoner's own system, which orchestration requires)")
    add("--arrowhead-system-name", metavar="NAME",
        help="summoner's Arrowhead system name (default: the certificate's first CN label in secure mode, "
             f"'{d.system_name}' otherwise; a mismatch with the certificate is an error)")
    add("--arrowhead-system-address", metavar="ADDR", default=d.system_address,
        help="address summoner's system is registered with; authorization rules match it exactly "
             "(default %(default)s)")
    add("--arrowhead-system-port", metavar="PORT", type=int, default=d.system_port,
        help="port summoner's system is registered with (default %(default)s)")
    add("--arrowhead-domain", metavar="DOMAIN", action="append", default=[],
        help="resolve every name under DOMAIN through Arrowhead (repeatable)")
    add("--arrowhead-zone-names", action=argparse.BooleanOptionalAction, default=d.zone_names,
        help="resolve through Arrowhead the names inside served zones that are neither records nor "
             "on-demand hosts (default on)")
    add("--arrowhead-map", metavar="SUFFIX [KEY=VALUE ...]", nargs="+", action="append", default=[],
        help="service mapping for names under SUFFIX ('.' for all): service=DEF (default: the first label), "
             "interface=NAME, security=NOT_SECURE|CERTIFICATE|TOKEN|ANY (both repeatable), version=N, "
             "meta.KEY=VALUE; the longest matching suffix wins (repeatable)")
    add("--arrowhead-interface", metavar="NAME", action="append", default=[],
        help="interface requirement of the default mapping, e.g. HTTP-INSECURE-JSON (repeatable)")
    add("--arrowhead-security", metavar="TYPE", action="append", default=[],
        help="securityRequirements of the default mapping: NOT_SECURE, CERTIFICATE, TOKEN, or ANY for all three "
             f"(repeatable; default {' '.join(DNS_SECURITY)}: TOKEN providers need a token DNS cannot carry)")
    add("--arrowhead-matchmaking", action=argparse.BooleanOptionalAction, default=d.matchmaking,
        help="let the Orchestrator pick one provider (default on; off returns every provider as "
             "several records)")
    add("--arrowhead-ping-providers", action=argparse.BooleanOptionalAction, default=d.ping_providers,
        help="ask the Service Registry to TCP-ping providers first (slow: 5 s per dead provider upstream)")
    add("--arrowhead-intercloud", action=argparse.BooleanOptionalAction, default=d.intercloud,
        help="set enableInterCloud, so a Gatekeeper may find providers in neighbour clouds")
    add("--arrowhead-metadata-search", action=argparse.BooleanOptionalAction, default=d.metadata_search,
        help="set metadataSearch (default: on exactly when a mapping has meta.* requirements, since the "
             "Orchestrator discards them otherwise)")
    add("--arrowhead-ttl", metavar="SECONDS", type=int, default=d.ttl,
        help="lifetime of a cached orchestration result; answer TTLs count down from it (default %(default)s)")
    add("--arrowhead-gateway-session", metavar="SECONDS", type=int, default=d.gateway_session,
        help="lifetime of a result that arrives VIA_GATEWAY (another cloud's provider through this cloud's "
             "Gateway, on a per-session port): its cache entry and TTLs never outlive it; set it to the "
             "Gateway's gateway_socket_timeout in seconds (default %(default)s, upstream's default)")
    add("--arrowhead-deadline", metavar="SECONDS", type=float, default=d.deadline,
        help="answer SERVFAIL when the Orchestrator has not answered within this time (default %(default)s)")
    add("--arrowhead-circuit-threshold", metavar="N", type=int, default=d.circuit_threshold,
        help="consecutive Orchestrator failures that open the circuit (default %(default)s)")
    add("--arrowhead-circuit-cooldown", metavar="SECONDS", type=float, default=d.circuit_cooldown,
        help="how long an open circuit answers SERVFAIL at once before probing again (default %(default)s)")
    add("--arrowhead-publish", action=argparse.BooleanOptionalAction, default=d.publish,
        help="register on-demand hosts in the Service Registry (default on when --arrowhead-registry is set)")
    add("--arrowhead-publish-interface", metavar="NAME", action="append", default=[],
        help=f"interface of published services (repeatable; default {' '.join(d.publish_interfaces)})")
    add("--arrowhead-cert", metavar="PEM", help="client certificate (PEM, chain after it allowed)")
    add("--arrowhead-key", metavar="PEM", help="private key of --arrowhead-cert (PEM)")
    add("--arrowhead-pkcs12", metavar="P12",
        help="client keystore as Arrowhead ships it (PKCS#12, legacy RC2/3DES encryption accepted)")
    add("--arrowhead-pkcs12-password", metavar="PASSWORD",
        help="password of --arrowhead-pkcs12, or of an encrypted --arrowhead-key")
    add("--arrowhead-truststore", metavar="FILE",
        help="CA certificates to trust (PEM bundle or PKCS#12 truststore; Arrowhead's holds the cloud certificate)")
    add("--arrowhead-truststore-password", metavar="PASSWORD",
        help="password of a PKCS#12 truststore (default: --arrowhead-pkcs12-password)")
    add("--arrowhead-no-hostname-check", action="store_true",
        help="do not check that core-system certificates name the host in the URL (Arrowhead's bundled "
             "certificates only name localhost and 127.0.0.1)")


def config_from_args(args: argparse.Namespace) -> ArrowheadConfig | None:
    """The checked configuration, or None when Arrowhead is off.

    Raises :class:`ArrowheadConfigError` with an operator-facing message;
    key material is loaded here so that a bad keystore stops summoner at start.
    """
    orchestrator = _url(args.arrowhead_orchestrator, "--arrowhead-orchestrator")
    registry = _url(args.arrowhead_registry, "--arrowhead-registry")
    if orchestrator is None and registry is None:
        return None
    schemes = {urlsplit(u).scheme for u in (orchestrator, registry) if u}
    if len(schemes) > 1:
        raise ArrowheadConfigError("the Orchestrator and Service Registry URLs must both be http or both https: "
                                   "a local cloud runs secure or insecure as a whole")
    tls = _tls(args, secure=schemes == {"https"})
    name = _system_name(args.arrowhead_system_name, tls)
    if not 0 <= args.arrowhead_system_port <= 65535:
        raise ArrowheadConfigError("--arrowhead-system-port must be between 0 and 65535")
    refused = address_problem(args.arrowhead_system_address)
    if refused is not None:
        raise ArrowheadConfigError(f"--arrowhead-system-address {args.arrowhead_system_address!r}: the Service "
                                   f"Registry refuses it ({refused}); give the address other systems reach "
                                   "summoner's DNS at")
    default = ServiceMapping(interfaces=_interfaces(args.arrowhead_interface),
                             security=_security(args.arrowhead_security) or DNS_SECURITY)
    mappings = [default] + [_mapping(spec, default) for spec in args.arrowhead_map]
    for number, value in (("--arrowhead-ttl", args.arrowhead_ttl), ("--arrowhead-deadline", args.arrowhead_deadline),
                          ("--arrowhead-gateway-session", args.arrowhead_gateway_session),
                          ("--arrowhead-circuit-threshold", args.arrowhead_circuit_threshold)):
        if value <= 0:
            raise ArrowheadConfigError(f"{number} must be positive")
    return ArrowheadConfig(
        orchestrator_url=orchestrator, registry_url=registry, system_name=name,
        system_address=normalize(args.arrowhead_system_address), system_port=args.arrowhead_system_port,
        domains=tuple(name_key(d) for d in args.arrowhead_domain), zone_names=args.arrowhead_zone_names,
        mappings=tuple(mappings), matchmaking=args.arrowhead_matchmaking,
        ping_providers=args.arrowhead_ping_providers, intercloud=args.arrowhead_intercloud,
        metadata_search=args.arrowhead_metadata_search, ttl=args.arrowhead_ttl, deadline=args.arrowhead_deadline,
        gateway_session=args.arrowhead_gateway_session,
        circuit_threshold=args.arrowhead_circuit_threshold, circuit_cooldown=args.arrowhead_circuit_cooldown,
        publish=args.arrowhead_publish and registry is not None,
        publish_interfaces=_interfaces(args.arrowhead_publish_interface) or ArrowheadConfig.publish_interfaces,
        tls=tls)


def _tls(args: argparse.Namespace, *, secure: bool) -> TLSMaterial | None:
    """The key material of a secure (https) cloud; None for an insecure one."""
    if not secure:
        if any((args.arrowhead_cert, args.arrowhead_key, args.arrowhead_pkcs12)):
            raise ArrowheadConfigError("client certificates are given but the Arrowhead URLs are http: use https "
                                       "URLs for a secure cloud, or drop the certificate flags")
        return None
    try:
        return load_tls(cert=args.arrowhead_cert, key=args.arrowhead_key, pkcs12_path=args.arrowhead_pkcs12,
                        password=args.arrowhead_pkcs12_password, truststore=args.arrowhead_truststore,
                        truststore_password=args.arrowhead_truststore_password,
                        check_hostname=not args.arrowhead_no_hostname_check)
    except TLSConfigError as exc:
        raise ArrowheadConfigError(str(exc)) from exc


def _system_name(name: str | None, tls: TLSMaterial | None) -> str:
    """summoner's system name: the certificate's in secure mode (a different
    --arrowhead-system-name is an error), else the flag's or the default."""
    if tls is not None:
        if not valid_name(tls.system_name) or len(tls.common_name.split(".")) != 5:
            raise ArrowheadConfigError(f"client certificate CN {tls.common_name!r} is not an Arrowhead system CN "
                                       "(<system>.<cloud>.<operator>.arrowhead.eu)")
        if name and name.lower() != tls.system_name.lower():
            raise ArrowheadConfigError(
                f"--arrowhead-system-name {name!r} does not match the client certificate, whose CN "
                f"{tls.common_name!r} makes the system name {tls.system_name!r}; the core systems would "
                "reject every request (401)")
        name = tls.system_name
    name = (name or ArrowheadConfig.system_name).lower()
    if not valid_name(name):
        raise ArrowheadConfigError(f"system name {name!r} is not valid in Arrowhead 4.4+ "
                                   "(letters, digits and dashes, starting with a letter, no underscores)")
    return name


def _url(value: str | None, flag: str) -> str | None:
    if not value:
        return None
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ArrowheadConfigError(f"{flag} must be an http:// or https:// URL, not {value!r}")
    return value.rstrip("/")


def _interfaces(values: list[str]) -> tuple[str, ...]:
    out = tuple(v.upper() for v in values)
    for value in out:
        if not INTERFACE_RE.match(value):
            raise ArrowheadConfigError(f"interface {value!r} is not PROTOCOL-SECURE|INSECURE-FORMAT "
                                       "(e.g. HTTP-INSECURE-JSON)")
    return out


def _security(values: list[str]) -> tuple[str, ...]:
    """The security types asked for; ANY stands for all of them."""
    out: list[str] = []
    for value in (v.upper() for v in values):
        if value not in (*SECURITY_TYPES, "ANY"):
            raise ArrowheadConfigError(f"security type {value!r} is not one of {', '.join(SECURITY_TYPES)} or ANY")
        out.extend(SECURITY_TYPES if value == "ANY" else [value])
    return tuple(dict.fromkeys(out))


def _mapping(spec: list[str], default: ServiceMapping) -> ServiceMapping:
    suffix = spec[0].strip(".").lower()
    fields: dict[str, Any] = {"interfaces": [], "security": [], "metadata": {}}
    for item in spec[1:]:
        key, sep, value = item.partition("=")
        if not sep:
            raise ArrowheadConfigError(f"--arrowhead-map {spec[0]}: {item!r} is not KEY=VALUE")
        if key == "service":
            if not valid_name(value):
                raise ArrowheadConfigError(f"--arrowhead-map {spec[0]}: {value!r} is not a valid service definition")
            fields["service"] = value.lower()
        elif key == "interface":
            fields["interfaces"].append(value)
        elif key == "security":
            fields["security"].append(value)
        elif key == "version":
            try:
                fields["version"] = int(value)
            except ValueError as exc:
                raise ArrowheadConfigError(f"--arrowhead-map {spec[0]}: version must be a number") from exc
        elif key.startswith("meta.") and len(key) > 5:
            fields["metadata"][key[5:]] = value
        else:
            raise ArrowheadConfigError(f"--arrowhead-map {spec[0]}: unknown key {key!r}")
    return ServiceMapping(
        suffix=suffix, service=fields.get("service"),
        interfaces=_interfaces(fields["interfaces"]) or default.interfaces,
        security=_security(fields["security"]) or default.security,
        metadata=fields["metadata"], version=fields.get("version"))


def own_system(config: ArrowheadConfig) -> SystemRef:
    """summoner's own system as the requester of orchestrations and as the
    registered system (authorization rules refer to exactly this triple)."""
    return SystemRef(config.system_name, config.system_address, config.system_port,
                     config.tls.authentication_info if config.tls else None)
