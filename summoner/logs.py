"""Logging through twisted.logger: a human format, or one JSON object per line.

Tests: tests/test_reload.py (human and JSON log lines of a real server), tests/test_configfile.py
"""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from typing import IO

from twisted.logger import (
    FilteringLogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    formatEvent,
    globalLogBeginner,
)

LEVELS = {"debug": LogLevel.debug, "info": LogLevel.info, "warn": LogLevel.warn, "error": LogLevel.error}


def _timestamp(event: dict) -> str:
    return datetime.fromtimestamp(event.get("log_time", 0), tz=UTC).isoformat(timespec="milliseconds")


class HumanObserver:
    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream

    def __call__(self, event: dict) -> None:
        level = event.get("log_level", LogLevel.info).name.upper()
        line = f"{_timestamp(event)} {level:<5} [{event.get('log_namespace', '-')}] {formatEvent(event)}\n"
        failure = event.get("log_failure")
        if failure is not None:
            line += failure.getTraceback()
        self.stream.write(line)
        self.stream.flush()


class JSONObserver:
    """Fields a log shipper indexes: time, level, logger, message, and the
    event's own structured keys (names, counts) when they serialise cleanly."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream

    def __call__(self, event: dict) -> None:
        record: dict[str, object] = {
            "time": _timestamp(event),
            "level": event.get("log_level", LogLevel.info).name,
            "logger": event.get("log_namespace", "-"),
            "message": formatEvent(event),
        }
        for key, value in event.items():
            if not key.startswith("log_") and key not in record and isinstance(value, str | int | float | bool):
                record[key] = value
        failure = event.get("log_failure")
        if failure is not None:
            record["error"] = failure.getErrorMessage()
            record["traceback"] = failure.getTraceback()
        self.stream.write(json.dumps(record, default=str) + "\n")
        self.stream.flush()


def start_logging(fmt: str = "human", level: str = "info", stream: IO[str] | None = None) -> None:
    stream = stream or sys.stderr
    observer = JSONObserver(stream) if fmt == "json" else HumanObserver(stream)
    predicate = LogLevelFilterPredicate(defaultLogLevel=LEVELS[level])
    globalLogBeginner.beginLoggingTo([FilteringLogObserver(observer, [predicate])],
                                     redirectStandardIO=False)
