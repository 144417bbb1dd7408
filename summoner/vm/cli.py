"""Glue between the ``summoner`` command line and the on-demand part.

``summoner serve`` gets the on-demand flags (``add_serve_arguments``) and
hands ``on_demand_config(args)`` to its App, which builds the on-demand part.
``summoner status|summon|stop`` (``add_admin_commands``) talk to a running
server's admin endpoint.

Tests: tests/test_configfile.py (the flags), tests/vm/test_e2e.py (status, summon, stop).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from summoner import admin
from summoner.images import STOP_MODES
from summoner.vm.config import NETWORK_MODES, OnDemandConfig, add_cli_arguments, config_from_args

if TYPE_CHECKING:
    from summoner.zonefile import Zone

# What ``add_subparsers`` returns.
Commands = argparse._SubParsersAction


def add_serve_arguments(serve: argparse.ArgumentParser) -> None:
    add_cli_arguments(serve)
    serve.add_argument("--no-on-demand", action="store_true",
                       help="serve on-demand hosts' records statically; no libvirt")


def on_demand_config(args: argparse.Namespace) -> OnDemandConfig | None:
    """The on-demand part's configuration, or None with ``--no-on-demand``."""
    return None if getattr(args, "no_on_demand", False) else config_from_args(args)


def add_check_arguments(check: argparse.ArgumentParser) -> None:
    d = OnDemandConfig()
    check.add_argument("--images", type=Path, action="append", default=None, metavar="DIR",
                       help="image directories to check on-demand declarations against "
                            f"(default: {' '.join(map(str, d.images))})")
    check.add_argument("--network", choices=NETWORK_MODES, default=d.network)


def check_on_demand(zones: Iterable[Zone], args: argparse.Namespace) -> list[str]:
    """``summoner check``: the on-demand declarations' problems (empty: fine)."""
    from summoner.images import discover_in
    from summoner.vm.hosts import split_on_demand
    from summoner.zonefile import ZoneError
    dirs = args.images or OnDemandConfig.images
    try:
        _zones, hosts = split_on_demand(zones, discover_in(dirs), args.network)
    except ZoneError as exc:
        return exc.problems
    for host in hosts:
        print(f"{host.location}: on-demand {host.name} -> image {host.image} at {host.address}")
    return []


def add_admin_commands(commands: Commands) -> None:
    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--admin", default=admin.DEFAULT_URL, metavar="URL",
                       help=f"admin endpoint of the running server (default {admin.DEFAULT_URL})")
        p.add_argument("--json", action="store_true", help="print JSON instead of a table")

    status = commands.add_parser("status", help="show on-demand services (and Arrowhead) of a running server")
    common(status)
    status.set_defaults(run=run_status)
    summon = commands.add_parser("summon", help="boot an on-demand service now and wait until ready")
    common(summon)
    summon.add_argument("name", help="host name (hello.example.org) or its first label")
    summon.set_defaults(run=run_summon)
    stop = commands.add_parser("stop", help="stop an on-demand service's VM")
    common(stop)
    stop.add_argument("name")
    stop.add_argument("--mode", choices=STOP_MODES, default=None,
                      help="override the image's stop mode")
    stop.set_defaults(run=run_stop)


def _print(args: argparse.Namespace, result: list[dict[str, object]] | dict[str, object]) -> None:
    import json
    if args.json:
        print(json.dumps(result, indent=1))
    elif isinstance(result, list):
        print(admin.format_status(result))
    else:
        print(admin.format_status([result["service"]]) if result.get("service") else result)
        if result.get("error"):
            print(f"error: {result['error']}", file=sys.stderr)


def run_status(args: argparse.Namespace) -> int:
    try:
        services = admin.fetch_status(args.admin)
        arrowhead = admin.fetch_arrowhead(args.admin)
    except admin.AdminError as exc:
        print(f"summoner: {exc}", file=sys.stderr)
        return 1
    if args.json:
        import json
        print(json.dumps({"services": services, "arrowhead": arrowhead}, indent=1))
        return 0
    print(admin.format_status(services) if services is not None else "no on-demand part (--no-on-demand)")
    if arrowhead is not None:
        print()
        print(admin.format_arrowhead(arrowhead))
    return 0


def run_summon(args: argparse.Namespace) -> int:
    try:
        result = admin.summon(args.admin, args.name)
    except admin.AdminError as exc:
        print(f"summoner: {exc}", file=sys.stderr)
        return 1
    _print(args, result)
    return 0 if result.get("ok") else 1


def run_stop(args: argparse.Namespace) -> int:
    try:
        result = admin.stop(args.admin, args.name, args.mode)
    except admin.AdminError as exc:
        print(f"summoner: {exc}", file=sys.stderr)
        return 1
    _print(args, result)
    return 0 if result.get("ok") else 1
