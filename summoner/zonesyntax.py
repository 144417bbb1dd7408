"""RFC 1035 5.1 master-file syntax: text → logical entries of tokens, each
with the line it is on.

Ours because errors must point at ``file:line`` and dnslib's ``ZoneParser``
tracks no lines.  This module knows no file names: a problem is a
``ZoneSyntaxError`` with its line, which ``summoner.zonefile`` turns into
``file:line: reason``.

Tests: tests/test_zonefile.py
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

_BARE_END = ' \t\r;()"'


class ZoneSyntaxError(ValueError):
    """A problem with the text itself, at ``line``."""

    def __init__(self, line: int, reason: str) -> None:
        super().__init__(reason)
        self.line = line
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Token:
    text: str
    line: int
    quoted: bool = False


@dataclass(slots=True)
class Entry:
    """One logical line (parentheses joined), with the line it starts on."""

    line: int
    tokens: list[Token]
    inherits_owner: bool


def tokenize(text: str) -> Iterator[Entry]:
    """Split master-file text into logical entries (RFC 1035 section 5.1)."""
    tokens: list[Token] = []
    depth = 0
    start_line = 0
    inherits = False
    for number, raw in enumerate(text.splitlines(), start=1):
        if depth == 0:
            tokens = []
            start_line = number
            inherits = raw[:1] in (" ", "\t")
        depth = _scan_line(raw, number, depth, tokens)
        if depth == 0 and tokens:
            yield Entry(start_line, tokens, inherits)
    if depth:
        raise ZoneSyntaxError(start_line, "unbalanced '(' (never closed)")


def _scan_line(raw: str, number: int, depth: int, tokens: list[Token]) -> int:
    """Append the tokens of one physical line; the parenthesis depth after it."""
    i, n = 0, len(raw)
    while i < n:
        ch = raw[i]
        if ch in " \t\r":
            i += 1
        elif ch == ";":
            break
        elif ch == "(":
            depth += 1
            i += 1
        elif ch == ")":
            if depth == 0:
                raise ZoneSyntaxError(number, "unbalanced ')'")
            depth -= 1
            i += 1
        elif ch == '"':
            i = _quoted(raw, i + 1, number, tokens)
        else:
            i = _bare(raw, i, number, tokens)
    return depth


def _quoted(raw: str, i: int, number: int, tokens: list[Token]) -> int:
    """The quoted string starting after its quote at ``i``; where scanning goes on."""
    n = len(raw)
    chars: list[str] = []
    while i < n and raw[i] != '"':
        step = 2 if raw[i] == "\\" and i + 1 < n else 1
        chars.append(raw[i:i + step])
        i += step
    if i >= n:
        raise ZoneSyntaxError(number, "unterminated quoted string")
    tokens.append(Token(_unescape("".join(chars)), number, quoted=True))
    return i + 1


def _bare(raw: str, i: int, number: int, tokens: list[Token]) -> int:
    j, n = i, len(raw)
    while j < n and raw[j] not in _BARE_END:
        j += 2 if raw[j] == "\\" else 1
    tokens.append(Token(raw[i:j], number))
    return j


def _unescape(text: str) -> str:
    """Master-file escapes in quoted text: ``\\X`` and ``\\DDD`` (RFC 1035 5.1)."""
    out: list[str] = []
    i = 0
    while i < len(text):
        if text[i] == "\\" and i + 1 < len(text):
            if text[i + 1:i + 4].isdigit() and len(text[i + 1:i + 4]) == 3:
                out.append(chr(int(text[i + 1:i + 4])))
                i += 4
                continue
            out.append(text[i + 1])
            i += 2
            continue
        out.append(text[i])
        i += 1
    return "".join(out)
