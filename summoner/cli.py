"""The ``summoner`` command line.

Tests: tests/test_configfile.py (every serve option), tests/test_zonefile.py (check),
tests/test_arrowhead_dns.py and tests/vm/test_e2e.py (serve, status), tests/test_arrowhead_rules.py
(arrowhead rules).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from summoner import __version__
from summoner.admin import parse_admin
from summoner.app import ServeConfig
from summoner.argtypes import non_negative, positive_int
from summoner.arrowhead.config import ArrowheadConfigError, config_from_args
from summoner.arrowhead.config import add_cli_arguments as add_arrowhead_arguments
from summoner.arrowhead.rules_cli import add_arrowhead_command
from summoner.images import ARCHES
from summoner.netaddr import host_port
from summoner.ratelimit import RateLimit
from summoner.vm.cli import (
    add_admin_commands,
    add_check_arguments,
    add_serve_arguments,
    check_on_demand,
    on_demand_config,
)
from summoner.vm.doctor import add_doctor_command
from summoner.zonefile import ZoneError, load_zone_dir


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="summoner", description=__doc__)
    parser.add_argument("--version", action="version", version=f"summoner {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the DNS server")
    serve.add_argument("--config", type=Path, metavar="FILE",
                       help="TOML file of serve options (keys: the flag names without dashes); flags override it")
    _add_serve_options(serve)
    add_arrowhead_arguments(serve)
    add_serve_arguments(serve)
    serve.set_defaults(run=run_serve, options_parser=serve, config_schema=serve)

    check = commands.add_parser("check", help="validate zone files and exit")
    check.add_argument("--zones", type=Path, default=ServeConfig.zones, metavar="DIR")
    add_check_arguments(check)
    check.set_defaults(run=run_check)
    add_admin_commands(commands)
    doctor = add_doctor_command(commands)
    doctor.add_argument("--config", type=Path, metavar="FILE",
                        help="the serve configuration file: check what serve would run with")
    doctor.set_defaults(options_parser=doctor, config_schema=serve)
    add_arrowhead_command(commands, serve)

    image = commands.add_parser("image", help="unikernel images")
    image_commands = image.add_subparsers(dest="image_command", required=True, metavar="ACTION")
    build = image_commands.add_parser("build", help="build an image's artifacts (cached; make decides)")
    build.add_argument("name", nargs="?", help="image name (a folder under --images)")
    build.add_argument("--all", action="store_true", help="build every image")
    build.add_argument("--images", type=Path, default=Path("images"), metavar="DIR")
    build.add_argument("--arch", choices=ARCHES,
                       help="NAME's build for this architecture (NAME or NAME-ARCH); with --all, every image of it")
    build.set_defaults(run=run_image_build)
    return parser


def _address(address: tuple[str, int] | None) -> str:
    if address is None:
        return "off"
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _add_serve_options(serve: argparse.ArgumentParser) -> None:
    """The DNS, metrics, admin and rate limiting options; defaults from ServeConfig and RateLimit."""
    d, r = ServeConfig(), RateLimit(0.0)
    serve.add_argument("--listen", type=host_port, default=d.listen, metavar="ADDR:PORT",
                       help=f"DNS address, UDP and TCP (default {_address(d.listen)}; IPv6 as [::1]:5353)")
    serve.add_argument("--zones", type=Path, default=d.zones, metavar="DIR",
                       help=f"directory of *.zone files (default {d.zones}/)")
    serve.add_argument("--metrics", type=host_port, default=d.metrics, metavar="ADDR:PORT",
                       help=f"Prometheus endpoint, path /metrics (default {_address(d.metrics)})")
    serve.add_argument("--no-metrics", action="store_true", help="do not serve metrics")
    serve.add_argument("--admin", type=parse_admin, default=d.admin, metavar="ADDR:PORT",
                       help="admin endpoint (summoner status/summon/stop; /services, /arrowhead), loopback "
                            f"by default, 'off' to disable (default: {_address(d.admin)})")
    serve.add_argument("--log-format", choices=("human", "json"), default="human",
                       help="log line format (default human)")
    serve.add_argument("--log-level", choices=("debug", "info", "warn", "error"), default="info")
    serve.add_argument("--tcp-idle-timeout", type=float, default=d.tcp_idle_timeout, metavar="SECONDS",
                       help="close idle DNS TCP connections after this long (default %(default)s)")
    serve.add_argument("--reload-interval", type=float, default=d.reload_interval, metavar="SECONDS",
                       help="how often the zone directory is checked for changes (default %(default)s)")
    serve.add_argument("--workers", type=positive_int, default=d.workers, metavar="N",
                       help="processes answering DNS on the port with SO_REUSEPORT: this one and N-1 workers "
                            "that answer static zone data and relay the rest here (default %(default)s)")
    rrl = serve.add_argument_group("response rate limiting (UDP; TCP is never limited)")
    rrl.add_argument("--rrl-rate", type=non_negative, default=0.0, metavar="N",
                     help="answers per second to one client network beyond which UDP answers are held back "
                          "(default 0: off; 20 is a common setting for a public authoritative server)")
    rrl.add_argument("--rrl-slip", type=int, default=r.slip, metavar="N",
                     help="every N-th held-back answer is sent truncated, so real clients retry over TCP; "
                          "0 drops them all (default %(default)s)")
    rrl.add_argument("--rrl-ipv4-prefix", type=int, default=r.ipv4_prefix, metavar="BITS",
                     help="IPv4 prefix length of a client network (default %(default)s)")
    rrl.add_argument("--rrl-ipv6-prefix", type=int, default=r.ipv6_prefix, metavar="BITS",
                     help="IPv6 prefix length of a client network (default %(default)s)")


def serve_config(args: argparse.Namespace) -> ServeConfig:
    """``summoner serve``'s ServeConfig from its parsed options."""
    return ServeConfig(
        listen=args.listen, zones=args.zones,
        metrics=None if args.no_metrics else args.metrics,
        tcp_idle_timeout=args.tcp_idle_timeout, reload_interval=args.reload_interval,
        rate_limit=RateLimit(args.rrl_rate, args.rrl_slip, args.rrl_ipv4_prefix, args.rrl_ipv6_prefix)
        if args.rrl_rate > 0 else None,
        admin=args.admin, workers=args.workers, log_format=args.log_format, log_level=args.log_level,
    )




def run_image_build(args: argparse.Namespace) -> int:
    from summoner.images import ImageBuildError, build_image
    if bool(args.all) == bool(args.name):
        print("summoner image build: give an image NAME or --all", file=sys.stderr)
        return 2
    target = "all" if args.all else args.name
    if args.arch is not None:
        from summoner.images import build_for_arch, discover_images
        target = args.arch if args.all else build_for_arch(args.name, args.arch, discover_images(args.images))
        if target is None:
            print(f"summoner image build: image {args.name!r} has no {args.arch} build: neither {args.name} nor "
                  f"{args.name}-{args.arch} is an {args.arch} image under {args.images}", file=sys.stderr)
            return 1
    try:
        build_image(target, args.images)
    except ImageBuildError as exc:
        print(f"summoner image build: {exc}", file=sys.stderr)
        return 1
    return 0


def run_check(args: argparse.Namespace) -> int:
    try:
        zones = load_zone_dir(args.zones)
    except ZoneError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return 1
    for zone in zones.zones.values():
        print(f"{zone.path}: zone {zone.origin}: {zone.record_count} records OK")
    problems = check_on_demand(zones.zones.values(), args)
    for problem in problems:
        print(problem, file=sys.stderr)
    return 1 if problems else 0


def run_serve(args: argparse.Namespace) -> int:
    from twisted.internet import reactor

    from summoner.app import App
    from summoner.logs import start_logging

    config = serve_config(args)
    try:
        arrowhead_config = config_from_args(args)
    except ArrowheadConfigError as exc:
        print(f"summoner: not starting: Arrowhead: {exc}", file=sys.stderr)
        return 2
    app = App(config, reactor, ondemand=on_demand_config(args), arrowhead=arrowhead_config)
    try:
        app.load_initial_zones()
    except ZoneError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        print("summoner: not starting: the zone files above are invalid", file=sys.stderr)
        return 1
    start_logging(args.log_format, args.log_level)
    try:
        app.listen()
    except Exception as exc:  # e.g. CannotListenError: address in use or not ours
        print(f"summoner: cannot listen: {exc}", file=sys.stderr)
        return 1
    app.start()
    reactor.addSystemEventTrigger("before", "shutdown", app.stop)
    reactor.run()
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    if getattr(args, "config", None) is not None:
        from summoner.configfile import ConfigError, apply
        try:
            # the options after the command's name (``arrowhead rules``: after both words)
            start = argv.index(args.command) + getattr(args, "command_words", 1)
            apply(args, args.options_parser, argv[start:], schema=args.config_schema)
        except ConfigError as exc:
            for problem in exc.problems:
                print(problem, file=sys.stderr)
            print(f"summoner: not starting: {args.config} is invalid", file=sys.stderr)
            return 2
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
