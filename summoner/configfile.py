"""``--config FILE``: every ``serve`` option from a TOML file.

The file's keys are the options' long flag names without the dashes
(``listen``, ``reload-interval``, ``arrowhead-orchestrator``), so there is one
definition of every option, the argparse parser's, and no list to keep in
sync.  Values take the TOML type the flag stands for:

- flags without a value (``--no-metrics``) and ``--x/--no-x`` pairs: a bool
  (``no-metrics = true``, ``standby = true``, ``arrowhead-publish = false``);
- repeatable flags: an array (``images = ["images", "tests/images"]``); one
  that takes several values per use (``--arrowhead-map SUFFIX KEY=VALUE...``)
  an array of arrays, one per use (``[["lab.", "service=temp"]]``);
- numbers: a TOML integer (float options also take a float), never a string;
- everything else: a string.

Every value then goes through argparse's own conversion and ``choices`` check,
so a bad one gets exactly the reason the flag would get.  Flags given on the
command line override the file, repeatable ones included (``--images X``
replaces the file's ``images``).  Problems read ``FILE: KEY: reason`` (a TOML
syntax error ``FILE: line N: reason``).  The file is read once, at start;
SIGHUP reloads zones and images, not this file.

Tests: tests/test_configfile.py (deploy/summoner.toml must equal the defaults).
"""

from __future__ import annotations

import argparse
import difflib
import re
import tomllib
import typing
from collections.abc import Callable, Sequence
from pathlib import Path

_FLAG_ACTIONS = (argparse._StoreTrueAction, argparse._StoreFalseAction, argparse.BooleanOptionalAction)
_NOT_KEYS = {"help", "config"}
_TOML_WHERE = re.compile(r"^(?P<reason>.*) \((?:at line (?P<line>\d+), column (?P<column>\d+)|at end of document)\)$")


class ConfigError(Exception):
    """One or more ``FILE: KEY: reason`` problems."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


def options(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """The file's keys: each option's first long flag name without the dashes."""
    keys: dict[str, argparse.Action] = {}
    for action in parser._actions:
        long_names = [name for name in action.option_strings if name.startswith("--")]
        if long_names and action.dest not in _NOT_KEYS:
            keys[long_names[0][2:]] = action
    return keys


def _number_kind(converter: Callable[[str], object] | None) -> type | None:
    """int or float when the option's converter gives one (its declared return type)."""
    if converter in (int, float):
        return typing.cast(type, converter)
    try:
        returned = typing.get_type_hints(converter).get("return") if converter is not None else None
    except (NameError, TypeError):
        returned = None
    return returned if returned in (int, float) else None


def _scalar(parser: argparse.ArgumentParser, action: argparse.Action, raw: object) -> object:
    """One value of ``action`` from TOML; ValueError says what is wrong.

    Numbers must be TOML numbers, everything else a TOML string; either then
    goes through argparse's own conversion and ``choices`` check, so a bad
    value gets exactly the reason the flag would get."""
    kind = _number_kind(action.type)
    if kind is not None:
        numeric = (int, float) if kind is float else (int,)
        if isinstance(raw, bool) or not isinstance(raw, numeric):
            raise ValueError(f"expected {'a number' if kind is float else 'an integer'}, got {_type_name(raw)}")
        raw = str(raw)
    elif not isinstance(raw, str):
        raise ValueError(f"expected a string, got {_type_name(raw)}")
    try:
        value = parser._get_value(action, raw)
        parser._check_value(action, value)
    except argparse.ArgumentError as exc:
        raise ValueError(exc.message) from exc
    return value


def _one_use(parser: argparse.ArgumentParser, action: argparse.Action, raw: object) -> object:
    """What one use of the flag gives: a value, or a list when it takes several."""
    if action.nargs in (None, "?"):
        return _scalar(parser, action, raw)
    wanted = action.nargs if isinstance(action.nargs, int) else "one or more"
    if not isinstance(raw, list) or not raw or wanted not in (len(raw), "one or more"):
        got = (f"an array of {len(raw)}" if raw else "an empty array") if isinstance(raw, list) else _type_name(raw)
        raise ValueError(f"expected an array of {wanted} values for each {action.option_strings[0]}, got {got}")
    return [_scalar(parser, action, part) for part in raw]


def _value(parser: argparse.ArgumentParser, action: argparse.Action, raw: object) -> object:
    if isinstance(action, _FLAG_ACTIONS):
        if not isinstance(raw, bool):
            raise ValueError(f"expected true or false, got {_type_name(raw)}")
        return (not raw) if isinstance(action, argparse._StoreFalseAction) else raw
    if isinstance(action, argparse._AppendAction):
        if not isinstance(raw, list):
            raise ValueError(f"expected an array, got {_type_name(raw)}")
        return [_one_use(parser, action, item) for item in raw]
    return _one_use(parser, action, raw)


def _type_name(raw: object) -> str:
    return {bool: "a boolean", int: "an integer", float: "a float", str: "a string", list: "an array",
            dict: "a table"}.get(type(raw), type(raw).__name__)


def _read(path: Path) -> dict[str, object]:
    """The parsed document; a problem is ``FILE: reason`` or ``FILE: line N: reason``."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read it: {exc.strerror or exc}"]) from exc
    try:
        text = data.decode()
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise ConfigError([f"{path}: line {line}: not UTF-8 text (TOML files are UTF-8)"]) from exc
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        where = _TOML_WHERE.match(str(exc))
        if where is None:
            raise ConfigError([f"{path}: {exc}"]) from exc
        line = where["line"] or str(text.count("\n") + (not text.endswith("\n")))
        column = f" (column {where['column']})" if where["column"] else " (at the end of the file)"
        raise ConfigError([f"{path}: line {line}: {where['reason']}{column}"]) from exc


def _unknown(key: str, raw: object, known: dict[str, argparse.Action]) -> str:
    if key == "config":
        return "cannot be set in the file itself (give --config on the command line)"
    if isinstance(raw, dict):
        return "unknown option (the file has no tables: write every key at the top level)"
    close = difflib.get_close_matches(key, known, n=1)
    return "unknown option" + (f" (did you mean {close[0]}?)" if close else "")


def load(path: Path, parser: argparse.ArgumentParser) -> dict[str, object]:
    """The file's settings as ``{dest: value}``; raises ConfigError."""
    document = _read(path)
    known = options(parser)
    values: dict[str, object] = {}
    problems = []
    for key, raw in document.items():
        action = known.get(key)
        if action is None:
            problems.append(f"{path}: {key}: {_unknown(key, raw, known)}")
            continue
        try:
            values[action.dest] = _value(parser, action, raw)
        except ValueError as exc:
            problems.append(f"{path}: {key}: {exc}")
    if problems:
        raise ConfigError(problems)
    return values


def explicit(parser: argparse.ArgumentParser, argv: Sequence[str]) -> set[str]:
    """The options given on the command line (their dests)."""
    saved = [(action, action.default) for action in parser._actions]
    try:
        for action, _default in saved:
            action.default = argparse.SUPPRESS
        return set(vars(parser.parse_args(argv)))
    finally:
        for action, default in saved:
            action.default = default


def apply(args: argparse.Namespace, parser: argparse.ArgumentParser, argv: Sequence[str],
          schema: argparse.ArgumentParser | None = None) -> None:
    """Fill ``args`` (parsed from ``argv`` by ``parser``) from ``args.config``;
    the command line wins.  ``schema`` is the parser whose options the file
    may set (default ``parser``); keys it has but ``parser`` lacks are ignored,
    so one file serves both ``serve`` and ``doctor``."""
    values = load(args.config, schema or parser)
    given = explicit(parser, argv)
    for dest, value in values.items():
        if dest not in given and hasattr(args, dest):
            setattr(args, dest, value)
