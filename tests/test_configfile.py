"""summoner.configfile: every serve option from a TOML file, strict errors,
flags over the file, and the shipped example equal to the defaults."""

from __future__ import annotations

import argparse
import os
import re
import subprocess
from pathlib import Path

import dns.rcode
import pytest

from summoner.arrowhead.config import config_from_args as arrowhead_config
from summoner.cli import build_parser
from summoner.configfile import ConfigError, _number_kind, apply, options
from summoner.vm.cli import on_demand_config
from tests.conftest import EXAMPLE_ZONES, ROOT, Server, free_port, summoner_command, wait_until_answering

EXAMPLE = ROOT / "deploy" / "summoner.toml"
# Values for options whose strings go through a converter of their own.
SAMPLES = {"listen": "127.0.0.9:1053", "metrics": "127.0.0.9:1054", "admin": "127.0.0.9:1055",
           "domain-prefix": "x-value-"}


def serve_parser() -> argparse.ArgumentParser:
    return build_parser()._subparsers._group_actions[0].choices["serve"]


def parse(tmp_path: Path, text: str | bytes, *flags: str) -> argparse.Namespace:
    """``summoner serve --config FILE *flags`` as main() parses it, FILE holding ``text``."""
    config = tmp_path / "summoner.toml"
    config.write_bytes(text if isinstance(text, bytes) else text.encode())
    argv = ["serve", "--config", str(config), *flags]
    args = build_parser().parse_args(argv)
    apply(args, args.options_parser, argv[1:], schema=args.config_schema)
    return args


def problems(tmp_path: Path, text: str | bytes) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse(tmp_path, text)
    prefix = f"{tmp_path / 'summoner.toml'}: "
    assert all(problem.startswith(prefix) for problem in caught.value.problems), caught.value.problems
    return [problem.removeprefix(prefix) for problem in caught.value.problems]


def sample(key: str, action: argparse.Action) -> tuple[str, list[str]]:
    """A TOML value for ``key`` that differs from its default, and the same setting as flags."""
    flag = f"--{key}"
    if isinstance(action, argparse._StoreTrueAction):
        return "true", [flag]
    if isinstance(action, argparse.BooleanOptionalAction):
        return ("false", [f"--no-{key}"]) if action.default else ("true", [flag])
    if isinstance(action, argparse._AppendAction):
        if action.nargs == "+":
            return ('[["lab.", "service=temp"], [".", "interface=HTTP-SECURE-JSON"]]',
                    [flag, "lab.", "service=temp", flag, ".", "interface=HTTP-SECURE-JSON"])
        return '["/srv/a", "/srv/b"]', [flag, "/srv/a", flag, "/srv/b"]
    kind = _number_kind(action.type)
    if kind is not None:
        value = 7.5 if kind is float else (7 if action.default != 7 else 8)
        return str(value), [flag, str(value)]
    if action.choices:
        choice = next(c for c in action.choices if c != action.default)
        return f'"{choice}"', [flag, choice]
    text = SAMPLES.get(key, "/srv/x" if action.type is Path else "x-value")
    return f'"{text}"', [flag, text]


def test_every_serve_option_is_a_key_that_sets_what_its_flag_sets(tmp_path):
    parser = serve_parser()
    keys = options(parser)
    lines, flags = [], []
    for action in parser._actions:
        if action.dest in ("help", "config"):
            continue
        key = next(name for name in action.option_strings if name.startswith("--"))[2:]
        assert keys.get(key) is action, f"{action.option_strings} has no key"
        text, argv = sample(key, action)
        lines.append(f"{key} = {text}")
        flags += argv
    assert len(lines) == len(keys) > 60
    from_file = parse(tmp_path, "\n".join(lines))
    from_flags = build_parser().parse_args(["serve", *flags])
    defaults = build_parser().parse_args(["serve"])
    for action in keys.values():
        assert getattr(from_file, action.dest) == getattr(from_flags, action.dest), action.dest
        assert getattr(from_file, action.dest) != getattr(defaults, action.dest), action.dest


def test_values_take_the_type_the_flag_stands_for(tmp_path):
    args = parse(tmp_path, 'listen = "[::1]:1053"\nreload-interval = 2\ntcp-idle-timeout = 0.5\nmax-vms = 3\n'
                           'images = ["images", "tests/images"]\nno-metrics = true\narrowhead-publish = false\n'
                           'arrowhead-map = [[".", "service=temp", "meta.unit=celsius"]]\narrowhead-domain = []\n')
    assert args.listen == ("::1", 1053)
    assert args.reload_interval == 2.0 and isinstance(args.reload_interval, float)  # an int is fine for a float
    assert args.tcp_idle_timeout == 0.5
    assert args.max_vms == 3
    assert args.images == [Path("images"), Path("tests/images")]
    assert args.no_metrics is True and args.arrowhead_publish is False
    assert args.arrowhead_map == [[".", "service=temp", "meta.unit=celsius"]]
    assert args.arrowhead_domain == []


@pytest.mark.parametrize("text, problem", [
    ("max-vm = 3", "max-vm: unknown option (did you mean max-vms?)"),
    ("reload-intervall = 1", "reload-intervall: unknown option (did you mean reload-interval?)"),
    ("colour = 1", "colour: unknown option"),
    ('[dns]\nlisten = "127.0.0.1:53"',
     "dns: unknown option (the file has no tables: write every key at the top level)"),
    ('config = "other.toml"', "config: cannot be set in the file itself (give --config on the command line)"),
    ('max-vms = "16"', "max-vms: expected an integer, got a string"),
    ("max-vms = 16.0", "max-vms: expected an integer, got a float"),
    ('reload-interval = "1"', "reload-interval: expected a number, got a string"),
    ("reload-interval = true", "reload-interval: expected a number, got a boolean"),
    ("listen = 5353", "listen: expected a string, got an integer"),
    ("standby = 1", "standby: expected true or false, got an integer"),
    ('no-metrics = "yes"', "no-metrics: expected true or false, got a string"),
    ('images = "images"', "images: expected an array, got a string"),
    ("images = [1]", "images: expected a string, got an integer"),
    ('arrowhead-map = ["lab."]',
     "arrowhead-map: expected an array of one or more values for each --arrowhead-map, got a string"),
    ("arrowhead-map = [[]]",
     "arrowhead-map: expected an array of one or more values for each --arrowhead-map, got an empty array"),
    ('listen = "127.0.0.1"', "listen: '127.0.0.1': expected ADDR:PORT"),
    ('admin = "localhost:9154"', "admin: bad admin address 'localhost'"),
    ("max-vms = 0", "max-vms: must be >= 1"),
    ("workers = 0", "workers: must be >= 1"),
    ("rrl-rate = -1", "rrl-rate: must be >= 0"),
    ('virt-type = "xen"', "virt-type: invalid choice: 'xen' (choose from 'auto', 'kvm', 'qemu')"),
])
def test_a_bad_key_type_or_value_names_file_key_and_reason(tmp_path, text, problem):
    assert problems(tmp_path, text) == [problem]


@pytest.mark.parametrize("key, toml, flag", [
    ("listen", '"127.0.0.1"', "127.0.0.1"), ("metrics", '"[::1]"', "[::1]"), ("admin", '"nowhere:1"', "nowhere:1"),
    ("max-vms", "0", "0"), ("rrl-rate", "-1", "-1"), ("log-level", '"verbose"', "verbose"),
    ("stop-mode", '"pause"', "pause"),
])
def test_a_bad_value_gets_the_reason_its_flag_gets(tmp_path, capsys, key, toml, flag):
    with pytest.raises(SystemExit):
        serve_parser().parse_args([f"--{key}", flag])
    flag_reason = capsys.readouterr().err.strip().splitlines()[-1].partition(f"argument --{key}: ")[2]
    assert flag_reason
    assert problems(tmp_path, f"{key} = {toml}") == [f"{key}: {flag_reason}"]


def test_every_problem_of_the_file_is_reported_at_once(tmp_path):
    assert problems(tmp_path, 'listen = 53\nmax-vms = "2"\nzones = "zones"\nstandby = "no"\n') == [
        "listen: expected a string, got an integer", "max-vms: expected an integer, got a string",
        "standby: expected true or false, got a string"]


@pytest.mark.parametrize("text, problem", [
    ('listen = "127.0.0.1:53"\nmax-vms = = 3\nzones = "zones"\n', "line 2: Invalid value (column 11)"),
    ('zones = "zones"\n[images\n', "line 2: Expected ']' at the end of a table declaration (column 8)"),
    ('listen = "127.0.0.1:53"\nzones = "zones', "line 2: Unterminated string (at the end of the file)"),
    ('max-vms = 3\nmax-vms = 4\n', "line 2: Cannot overwrite a value (column 12)"),
    (b'zones = "zones"\n# caf\xe9\n', "line 2: not UTF-8 text (TOML files are UTF-8)"),
])
def test_a_toml_syntax_error_names_the_line(tmp_path, text, problem):
    assert problems(tmp_path, text) == [problem]


def test_a_missing_or_unreadable_file_is_a_clear_error(tmp_path):
    missing = tmp_path / "missing.toml"
    with pytest.raises(ConfigError) as caught:
        apply(argparse.Namespace(config=missing), serve_parser(), [])
    assert caught.value.problems == [f"{missing}: cannot read it: No such file or directory"]
    with pytest.raises(ConfigError) as caught:
        apply(argparse.Namespace(config=tmp_path), serve_parser(), [])
    assert caught.value.problems == [f"{tmp_path}: cannot read it: Is a directory"]


def test_flags_override_the_file_repeatable_ones_included(tmp_path):
    text = ('listen = "127.0.0.9:1053"\nmax-vms = 3\nmemory-budget-mib = 1024\nimages = ["/srv/a", "/srv/b"]\n'
            'standby = true\narrowhead-map = [["lab.", "service=temp"]]\narrowhead-domain = ["ah.example"]\n')
    args = parse(tmp_path, text, "--listen", "127.0.0.8:2053", "--images", "/srv/c", "--no-standby",
                 "--arrowhead-map", ".", "service=x", "--max-vms", "16")
    assert args.listen == ("127.0.0.8", 2053)
    assert args.images == [Path("/srv/c")]  # replaced, not appended to
    assert args.arrowhead_map == [[".", "service=x"]]
    assert args.standby is False
    assert args.max_vms == 16  # given as a flag, even if equal to the default
    assert args.memory_budget_mib == 1024 and args.arrowhead_domain == ["ah.example"]  # not flags: the file's
    assert parse(tmp_path, text, "--standby").standby is True


def test_doctor_reads_the_same_file_and_skips_the_keys_it_has_no_use_for(tmp_path):
    config = tmp_path / "summoner.toml"
    config.write_text('listen = "127.0.0.1:1053"\nmax-vms = 3\nnetwork = "bridge"\nimages = ["/srv/a"]\n')
    argv = ["doctor", "--config", str(config), "--max-vms", "4"]
    args = build_parser().parse_args(argv)
    apply(args, args.options_parser, argv[1:], schema=args.config_schema)
    assert (args.network, args.images, args.max_vms) == ("bridge", [Path("/srv/a")], 4)
    assert not hasattr(args, "listen")
    config.write_text("max-vms = 0\n")  # checked against serve's options all the same
    with pytest.raises(ConfigError):
        apply(args, args.options_parser, argv[1:], schema=args.config_schema)


def test_the_shipped_example_is_the_defaults_and_names_every_option(tmp_path):
    args = parse(tmp_path, EXAMPLE.read_text())
    defaults = build_parser().parse_args(["serve"])
    dests = {action.dest for action in options(serve_parser()).values()}
    differ = {dest for dest in dests if getattr(args, dest) != getattr(defaults, dest)}
    # The example spells out `images`, whose argparse default (None) stands for ["images"].
    assert differ == {"images"} and args.images == [Path("images")]
    assert on_demand_config(args) == on_demand_config(defaults)
    assert arrowhead_config(args) == arrowhead_config(defaults)
    text = EXAMPLE.read_text()
    for key in options(serve_parser()):
        assert re.search(rf"^(# )?{re.escape(key)} = ", text, re.MULTILINE), f"{key} is missing from {EXAMPLE}"


def test_the_commented_out_lines_of_the_example_are_valid_settings(tmp_path):
    uncommented, count = re.subn(r"^# ([a-z0-9-]+ = )", r"\1", EXAMPLE.read_text(), flags=re.MULTILINE)
    assert count >= 10
    args = parse(tmp_path, uncommented)
    assert args.boot_timeout == 10.0 and args.stop_mode == "destroy"
    assert args.arrowhead_orchestrator == "https://orchestrator:8441"


def test_serve_answers_on_the_address_and_zones_the_file_names(tmp_path):
    port, metrics_port = free_port(), free_port()
    config = tmp_path / "summoner.toml"
    config.write_text(f'listen = "127.0.0.1:{port}"\nzones = "{EXAMPLE_ZONES}"\n'
                      f'metrics = "127.0.0.1:{metrics_port}"\nlog-format = "json"\n')
    args = ["serve", "--config", str(config), "--no-on-demand", "--admin", "off"]
    log_path = tmp_path / "summoner.log"
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(summoner_command() + args, stdout=log_file, stderr=subprocess.STDOUT, cwd=ROOT,
                                   env={**os.environ, "PYTHONUNBUFFERED": "1"})
    server = Server("127.0.0.1", port, metrics_port, process, log_path, EXAMPLE_ZONES, args)
    try:
        wait_until_answering(server)
        reply = server.query("www.example.org", "A")
        assert reply.rcode() == dns.rcode.NOERROR and reply.answer[0][0].address == "127.0.0.2"
        assert "summoner_dns_queries_total" in server.metrics()
        assert server.log().startswith("{")  # log-format from the file
    finally:
        assert server.stop() in (0, -15)


def test_flags_override_the_file_in_a_running_server(start_server, tmp_path):
    config = tmp_path / "summoner.toml"
    config.write_text(f'listen = "127.0.0.1:{free_port()}"\nzones = "/nonexistent"\nno-on-demand = true\n')
    # start_server passes --listen, --zones, --metrics and --admin itself: they win over the file
    server = start_server(EXAMPLE_ZONES, "--config", str(config))
    reply = server.query("www.example.org", "A")
    assert reply.rcode() == dns.rcode.NOERROR and reply.answer[0][0].address == "127.0.0.2"
    log = server.log()  # no-on-demand from the file: no VM part at all, but the admin endpoint
    assert "libvirt" not in log and "admin endpoint on" in log


def test_serve_refuses_a_bad_or_missing_file_with_status_2(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('listen = 5353\nmax-vm = 3\n')
    done = subprocess.run(summoner_command() + ["serve", "--config", str(bad)], capture_output=True, text=True,
                          cwd=ROOT, timeout=60)
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr.splitlines() == [f"{bad}: listen: expected a string, got an integer",
                                        f"{bad}: max-vm: unknown option (did you mean max-vms?)",
                                        f"summoner: not starting: {bad} is invalid"]
    missing = tmp_path / "missing.toml"
    done = subprocess.run(summoner_command() + ["serve", "--config", str(missing)], capture_output=True, text=True,
                          cwd=ROOT, timeout=60)
    assert done.returncode == 2
    assert done.stderr.splitlines() == [f"{missing}: cannot read it: No such file or directory",
                                        f"summoner: not starting: {missing} is invalid"]
