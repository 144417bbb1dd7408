"""summoner.configfile: every serve option from a TOML file, strict errors,
flags over the file, and the shipped example equal to the defaults."""

from __future__ import annotations

import argparse
import subprocess
from pathlib import Path

import dns.rcode
import pytest

from summoner.arrowhead.config import config_from_args as arrowhead_config
from summoner.cli import build_parser
from summoner.configfile import ConfigError, _number_kind, apply, options
from summoner.vm.cli import on_demand_config
from tests.conftest import EXAMPLE_ZONES, ROOT, summoner_command

# Values for options whose strings go through a converter of their own.
SAMPLES = {"listen": "127.0.0.9:1053", "metrics": "127.0.0.9:1054", "admin": "127.0.0.9:1055"}


def serve_parser() -> argparse.ArgumentParser:
    return build_parser()._subparsers._group_actions[0].choices["serve"]


def parse(tmp_path: Path, text: str, *flags: str) -> argparse.Namespace:
    config = tmp_path / "summoner.toml"
    config.write_text(text)
    argv = ["serve", "--config", str(config), *flags]
    args = build_parser().parse_args(argv)
    apply(args, args.options_parser, argv[1:], schema=args.config_schema)
    return args


def sample(key: str, action: argparse.Action) -> tuple[str, object]:
    """A TOML value for ``key`` that differs from its default, and what it parses to."""
    if isinstance(action, argparse._StoreTrueAction):
        return "true", True
    if isinstance(action, argparse.BooleanOptionalAction):
        return ("false", False) if action.default else ("true", True)
    if isinstance(action, argparse._AppendAction):
        if action.nargs == "+":
            return '[["lab.", "service=temp"]]', [["lab.", "service=temp"]]
        value = "/srv/images" if action.type is Path else "X-ONE"
        return f'["{value}"]', [Path(value) if action.type is Path else value]
    if _number_kind(action.type) is not None:
        value = 7 if action.default != 7 else 8
        return str(value), _number_kind(action.type)(value)
    if action.choices:
        choice = next(c for c in action.choices if c != action.default)
        return f'"{choice}"', choice
    text = SAMPLES.get(key, "/srv/x" if action.type is Path else "x-value")
    return f'"{text}"', action.type(text) if action.type else text


def test_every_serve_option_can_be_set_from_the_file(tmp_path):
    keys = options(serve_parser())
    assert {"listen", "zones", "max-vms", "standby", "no-metrics", "arrowhead-orchestrator", "arrowhead-map",
            "images", "admin"} <= set(keys)
    lines, expected = [], {}
    for key, action in keys.items():
        text, value = sample(key, action)
        lines.append(f"{key} = {text}")
        expected[action.dest] = value
    args = parse(tmp_path, "\n".join(lines))
    defaults = build_parser().parse_args(["serve"])
    for dest, value in expected.items():
        assert getattr(args, dest) == value, dest
        assert getattr(args, dest) != getattr(defaults, dest), dest


@pytest.mark.parametrize("text, problem", [
    ("max-vm = 3", "max-vm: unknown option (did you mean max-vms?)"),
    ('max-vms = "16"', "max-vms: expected an integer, got a string"),
    ("reload-interval = true", "reload-interval: expected a number, got a boolean"),
    ("standby = 1", "standby: expected true or false, got an integer"),
    ('images = "images"', "images: expected an array, got a string"),
    ('listen = "127.0.0.1"', "listen: '127.0.0.1': expected ADDR:PORT"),
    ("max-vms = 0", "max-vms: must be >= 1"),
    ('virt-type = "xen"', "virt-type: must be one of auto, kvm, qemu, not 'xen'"),
    ('arrowhead-map = ["lab."]', 'arrowhead-map: expected an array of non-empty arrays, e.g. [[".", "service=x"]]'),
])
def test_a_bad_key_type_or_value_names_file_key_and_reason(tmp_path, text, problem):
    with pytest.raises(ConfigError) as caught:
        parse(tmp_path, text)
    assert caught.value.problems == [f"{tmp_path / 'summoner.toml'}: {problem}"]


def test_a_toml_syntax_error_names_the_line(tmp_path):
    with pytest.raises(ConfigError) as caught:
        parse(tmp_path, 'listen = "127.0.0.1:53"\nmax-vms = = 3\nzones = "zones"\n')
    [problem] = caught.value.problems
    assert problem.startswith(f"{tmp_path / 'summoner.toml'}: ") and "line 2" in problem, problem


def test_flags_override_the_file_repeatable_ones_included(tmp_path):
    text = 'listen = "127.0.0.9:1053"\nmax-vms = 3\nimages = ["/srv/a", "/srv/b"]\nstandby = true\n'
    args = parse(tmp_path, text, "--listen", "127.0.0.8:2053", "--images", "/srv/c", "--no-standby")
    assert args.listen == ("127.0.0.8", 2053)
    assert args.images == [Path("/srv/c")]  # replaced, not appended to
    assert args.standby is False
    assert args.max_vms == 3  # not given as a flag: the file's


def test_the_shipped_example_is_the_defaults_and_names_every_option(tmp_path):
    example = ROOT / "deploy" / "summoner.toml"
    args = parse(tmp_path, example.read_text())
    defaults = build_parser().parse_args(["serve"])
    assert on_demand_config(args) == on_demand_config(defaults)
    assert arrowhead_config(args) == arrowhead_config(defaults)
    for dest in ("listen", "zones", "metrics", "no_metrics", "log_format", "log_level", "tcp_idle_timeout",
                 "reload_interval", "no_on_demand"):
        assert getattr(args, dest) == getattr(defaults, dest), dest
    text = example.read_text()
    for key in options(serve_parser()):
        assert f"\n{key} = " in text or f"\n# {key} = " in text, f"{key} is missing from {example}"


def test_serve_runs_from_a_config_file_and_refuses_a_bad_one(start_server, tmp_path):
    from tests.conftest import free_port
    port = free_port()
    config = tmp_path / "summoner.toml"
    config.write_text(f'listen = "127.0.0.1:{port}"\nzones = "/nonexistent"\nno-on-demand = true\n'
                      'reload-interval = 0.5\n')
    # launch() passes --listen and --zones itself: those flags override the file's values
    server = start_server(EXAMPLE_ZONES, "--config", str(config))
    reply = server.query("www.example.org", "A")
    assert reply.rcode() == dns.rcode.NOERROR and reply.answer[0][0].address == "127.0.0.2"
    assert "admin endpoint" not in server.log()  # no-on-demand from the file: no VM part at all
    bad = tmp_path / "bad.toml"
    bad.write_text("listen = 5353\n")
    done = subprocess.run(summoner_command() + ["serve", "--config", str(bad)], capture_output=True, text=True,
                          cwd=ROOT, timeout=60)
    assert done.returncode == 2
    assert done.stderr.splitlines() == [f"{bad}: listen: expected a string, got an integer",
                                        f"summoner: not starting: {bad} is invalid"]


def test_serve_listens_where_the_file_says(tmp_path):
    import dns.message
    import dns.query

    from tests.conftest import free_port
    port, metrics_port = free_port(), free_port()
    config = tmp_path / "summoner.toml"
    config.write_text(f'listen = "127.0.0.1:{port}"\nzones = "{EXAMPLE_ZONES}"\nno-on-demand = true\n'
                      f'metrics = "127.0.0.1:{metrics_port}"\n')
    process = subprocess.Popen(summoner_command() + ["serve", "--config", str(config)], cwd=ROOT,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            try:
                reply = dns.query.udp(dns.message.make_query("www.example.org", "A"), "127.0.0.1", port=port,
                                      timeout=0.3)
                break
            except dns.exception.Timeout:
                assert process.poll() is None, "summoner exited"
        assert reply.answer[0][0].address == "127.0.0.2"
    finally:
        process.terminate()
        process.wait(timeout=20)
