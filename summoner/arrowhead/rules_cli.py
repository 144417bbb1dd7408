"""``summoner arrowhead rules``: print the intra-cloud rules summoner's
published on-demand hosts need, with their state in Authorization;
``--apply`` adds the missing ones (and replaces those lacking an interface),
``--remove`` deletes the rules of hosts no longer published.  Idempotent:
a second run finds everything present and sends nothing.

It reads the configuration ``serve`` runs with (``--config``, ``--zones``,
the ``--arrowhead-*`` flags, ``--images`` for the images' ports), so the
providers are exactly the systems ``serve`` publishes.  The management
endpoints are the local system operator's in secure mode: give the sysop's
certificate with ``--sysop-pkcs12`` or ``--sysop-cert``/``--sysop-key``
(summoner's own certificate still names the provider systems).

Exit status: 0 when every needed rule is in place (and, with ``--remove``,
no obsolete one is left), 1 otherwise, 2 for a configuration error.

Tests: tests/test_arrowhead_rules.py
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from summoner.arrowhead.client import ArrowheadClient, ArrowheadError
from summoner.arrowhead.config import (
    ArrowheadConfig,
    ArrowheadConfigError,
    add_cli_arguments,
    config_from_args,
    own_system,
)
from summoner.arrowhead.publisher import PublishedService, publish_problems, published_services
from summoner.arrowhead.rules import Finding, RulesError, carry_out, needed, plan, resolve_consumer, snapshot
from summoner.arrowhead.tls import TLSConfigError, TLSMaterial, load_tls

TIMEOUT = 10.0


def add_arrowhead_command(commands: argparse._SubParsersAction,
                          schema: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """``summoner arrowhead rules``; ``schema``: serve's parser (the config file's keys)."""
    from summoner.vm.cli import add_check_arguments
    group = commands.add_parser("arrowhead", help="Arrowhead management for summoner's published hosts")
    actions = group.add_subparsers(dest="arrowhead_command", required=True, metavar="ACTION")
    rules = actions.add_parser("rules", help="the intra-cloud rules the published on-demand hosts need "
                                             "(--apply adds them, --remove drops those of hosts gone)")
    rules.add_argument("--config", type=Path, metavar="FILE", help="the serve configuration file")
    rules.add_argument("--zones", type=Path, default=Path("zones"), metavar="DIR")
    add_check_arguments(rules)
    add_cli_arguments(rules)
    mine = rules.add_argument_group("rules")
    mine.add_argument("--consumer", action="append", default=[], required=True, metavar="NAME[@ADDRESS:PORT]",
                      help="a consumer system that may reach every published host (repeatable); NAME alone "
                           "when one registered system has it")
    mine.add_argument("--arrowhead-authorization", metavar="URL", required=True,
                      help="Authorization base URL, e.g. https://authorization:8445")
    mine.add_argument("--apply", action="store_true", help="add the missing rules, replace those lacking an "
                                                           "interface")
    mine.add_argument("--remove", action="store_true",
                      help="delete the consumers' rules for summoner's provider systems that no published host "
                           "is any more")
    mine.add_argument("--sysop-cert", metavar="PEM", help="the local system operator's certificate (secure mode)")
    mine.add_argument("--sysop-key", metavar="PEM", help="its private key")
    mine.add_argument("--sysop-pkcs12", metavar="P12", help="the system operator's keystore (sysop.p12)")
    mine.add_argument("--sysop-password", metavar="PASSWORD", help="password of --sysop-pkcs12 or --sysop-key")
    rules.set_defaults(run=run_rules, options_parser=rules, config_schema=schema, command_words=2)
    return rules


def _services(args: argparse.Namespace, config: ArrowheadConfig) -> list[PublishedService]:
    """What serve publishes: the on-demand hosts, with the image's port when the zone names none."""
    from summoner.images import discover_in
    from summoner.vm.config import OnDemandConfig
    from summoner.vm.hosts import split_on_demand
    from summoner.zonefile import load_zone_dir
    images = discover_in(args.images or OnDemandConfig.images)
    _zones, hosts = split_on_demand(load_zone_dir(args.zones).zones.values(), images, args.network)
    problems = publish_problems(hosts)
    if problems:
        raise RulesError("\n".join(problems))
    for index, host in enumerate(hosts):
        if host.port is None and host.image in images:
            hosts[index] = dataclasses.replace(host, port=images[host.image].service.port)
    return published_services(hosts) if config.publish else []


def _sysop_tls(args: argparse.Namespace, config: ArrowheadConfig) -> TLSMaterial | None:
    if not config.secure:
        return None
    if not (args.sysop_pkcs12 or args.sysop_cert):
        raise RulesError("the management endpoints of a secure cloud are the local system operator's: give "
                         "--sysop-pkcs12 sysop.p12 (or --sysop-cert and --sysop-key)")
    try:
        return load_tls(cert=args.sysop_cert, key=args.sysop_key, pkcs12_path=args.sysop_pkcs12,
                        password=args.sysop_password, truststore=args.arrowhead_truststore,
                        truststore_password=args.arrowhead_truststore_password,
                        check_hostname=not args.arrowhead_no_hostname_check)
    except TLSConfigError as exc:
        raise RulesError(f"sysop certificate: {exc}") from exc


def run_rules(args: argparse.Namespace) -> int:
    from summoner.deferreds import run_alone
    from summoner.zonefile import ZoneError
    try:
        config = config_from_args(args)
        if config is None or config.registry_url is None:
            raise RulesError("give --arrowhead-registry (the Service Registry whose ids the rules use)")
        services = _services(args, config)
        tls = _sysop_tls(args, config)
    except (ArrowheadConfigError, RulesError) as exc:
        print(f"summoner arrowhead rules: {exc}", file=sys.stderr)
        return 2
    except ZoneError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return 2
    from twisted.internet import reactor
    client = ArrowheadClient(reactor, orchestrator_url=None, registry_url=config.registry_url, tls=tls,
                             connect_timeout=TIMEOUT, authorization_url=args.arrowhead_authorization)

    async def job() -> list[Finding]:
        try:
            held = await snapshot(client, TIMEOUT)
            consumers = [resolve_consumer(spec, held.systems) for spec in args.consumer]
            own = own_system(config)
            findings = plan(needed(own, config.publish_interfaces, services, consumers), held, own, consumers)
            await carry_out(client, findings, apply=args.apply, remove=args.remove, timeout=TIMEOUT)
            return findings
        finally:
            await client.close()
    try:
        findings = run_alone(job)
    except (ArrowheadError, RulesError) as exc:
        print(f"summoner arrowhead rules: {exc}", file=sys.stderr)
        return 1
    for finding in findings:
        print(finding.line())
    if not findings:
        print("no published on-demand hosts: no rules needed")
    return 0 if all(f.ok or (f.state == "obsolete" and not args.remove) for f in findings) else 1
