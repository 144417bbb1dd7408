"""``--config FILE``: every ``serve`` option from a TOML file.

The file's keys are the options' long flag names without the dashes
(``listen``, ``reload-interval``, ``arrowhead-orchestrator``), so there is one
definition of every option, the argparse parser's, and no list to keep in
sync.  Values take the TOML type the flag stands for:

- flags without a value (``--no-metrics``) and ``--x/--no-x`` pairs: a bool
  (``no-metrics = true``, ``standby = true``, ``arrowhead-publish = false``);
- repeatable flags: an array (``images = ["images", "tests/images"]``); one
  that takes several values per use (``--arrowhead-map SUFFIX KEY=VALUE...``)
  an array of arrays;
- numbers: a TOML integer (float options also take a float), never a string;
- everything else: a string, converted and checked exactly as the flag's
  value would be, so a bad value gives the flag's own reason.

Flags given on the command line override the file, repeatable ones included
(``--images X`` replaces the file's ``images``).  Errors read ``FILE: KEY:
reason``.  The file is read once, at start; SIGHUP reloads zones and images
only.
"""

from __future__ import annotations

import argparse
import difflib
import tomllib
import typing
from collections.abc import Callable, Sequence
from pathlib import Path

_FLAG_ACTIONS = (argparse._StoreTrueAction, argparse._StoreFalseAction, argparse.BooleanOptionalAction)
_NOT_KEYS = {"help", "config"}


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


def _scalar(action: argparse.Action, raw: object) -> object:
    """One value of ``action`` from TOML; ValueError says what is wrong."""
    kind = _number_kind(action.type)
    if kind is not None:
        numeric = (int, float) if kind is float else (int,)
        if isinstance(raw, bool) or not isinstance(raw, numeric):
            raise ValueError(f"expected {'a number' if kind is float else 'an integer'}, got {_type_name(raw)}")
        raw = str(raw)
    elif not isinstance(raw, str):
        raise ValueError(f"expected a string, got {_type_name(raw)}")
    if action.choices is not None and raw not in action.choices:
        raise ValueError(f"must be one of {', '.join(map(str, action.choices))}, not {raw!r}")
    if action.type is None:
        return raw
    try:
        return action.type(raw)
    except (argparse.ArgumentTypeError, ValueError, TypeError) as exc:
        raise ValueError(str(exc) or f"bad value {raw!r}") from exc


def _value(action: argparse.Action, raw: object) -> object:
    if isinstance(action, _FLAG_ACTIONS):
        if not isinstance(raw, bool):
            raise ValueError(f"expected true or false, got {_type_name(raw)}")
        return (not raw) if isinstance(action, argparse._StoreFalseAction) else raw
    if isinstance(action, argparse._AppendAction):
        if not isinstance(raw, list):
            raise ValueError(f"expected an array, got {_type_name(raw)}")
        if action.nargs in ("+", "*"):
            if not all(isinstance(item, list) and item for item in raw):
                raise ValueError("expected an array of non-empty arrays, e.g. [[\".\", \"service=x\"]]")
            return [[_scalar(action, part) for part in item] for item in raw]
        return [_scalar(action, item) for item in raw]
    return _scalar(action, raw)


def _type_name(raw: object) -> str:
    return {bool: "a boolean", int: "an integer", float: "a float", str: "a string", list: "an array",
            dict: "a table"}.get(type(raw), type(raw).__name__)


def load(path: Path, parser: argparse.ArgumentParser) -> dict[str, object]:
    """The file's settings as ``{dest: value}``; raises ConfigError."""
    try:
        document = tomllib.loads(path.read_text())
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read it: {exc.strerror or exc}"]) from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{path}: {exc}"]) from exc
    known = options(parser)
    values: dict[str, object] = {}
    problems = []
    for key, raw in document.items():
        action = known.get(key)
        if action is None:
            close = difflib.get_close_matches(key, known, n=1)
            problems.append(f"{path}: {key}: unknown option" + (f" (did you mean {close[0]}?)" if close else ""))
            continue
        try:
            values[action.dest] = _value(action, raw)
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
