"""Zone hot reload: poll the zone directory, reload on change or SIGHUP.

Parsing runs on a worker thread and the new zone set is swapped in on the
reactor thread in one step, so queries in flight never see a half-loaded set.
A reload that fails validation keeps the last good zones.

Tests: tests/test_reload.py
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

from twisted.internet import task, threads
from twisted.logger import Logger

from summoner import metrics
from summoner.zonefile import ZONE_SUFFIX, ZoneError, ZoneSet, load_zone_dir

log = Logger(namespace="summoner.zones")

Fingerprint = tuple[tuple[str, int, int, int], ...]


def fingerprint(directory: Path) -> Fingerprint:
    """What changes when any zone file is edited, added, removed or replaced."""
    entries = []
    try:
        with os.scandir(directory) as it:
            for entry in it:
                if entry.name.endswith(ZONE_SUFFIX):
                    try:
                        st = entry.stat()
                    except OSError:
                        continue  # removed between listing and stat
                    entries.append((entry.name, st.st_mtime_ns, st.st_size, st.st_ino))
    except OSError:
        return ()
    return tuple(sorted(entries))


def record_loaded(zones: ZoneSet) -> None:
    metrics.ZONE_RELOADS.labels("success").inc()
    metrics.ZONES_LOADED.set(len(zones.zones))
    metrics.RECORDS_LOADED.set(zones.record_count)
    metrics.LAST_RELOAD.set(time.time())


class ZoneWatcher:
    def __init__(self, directory: Path, on_loaded: Callable[[ZoneSet], None],
                 interval: float = 1.0, reactor=None) -> None:
        if reactor is None:
            from twisted.internet import reactor as default_reactor
            reactor = default_reactor
        self.directory = directory
        self.on_loaded = on_loaded
        self.interval = interval
        self.reactor = reactor
        self._seen = fingerprint(directory)
        self._loading = False
        self._again = False
        self._loop = task.LoopingCall(self.poll)
        self._loop.clock = reactor

    def start(self) -> None:
        self._loop.start(self.interval, now=False)

    def stop(self) -> None:
        if self._loop.running:
            self._loop.stop()

    def poll(self) -> None:
        current = fingerprint(self.directory)
        if current != self._seen:
            self.reload("zone files changed")

    def reload(self, why: str = "requested") -> None:
        if self._loading:
            self._again = True  # one more pass once the running load ends
            return
        self._loading = True
        self._seen = fingerprint(self.directory)
        log.info("reloading zones from {dir} ({why})", dir=str(self.directory), why=why)
        d = threads.deferToThreadPool(self.reactor, self.reactor.getThreadPool(),
                                      load_zone_dir, self.directory)
        # Separate steps, so a ZoneError raised while applying (on-demand
        # declarations are checked then) is reported like a parse error.
        d.addCallback(self._loaded)
        d.addErrback(self._failed)
        d.addBoth(self._done)

    def _loaded(self, zones: ZoneSet) -> None:
        self.on_loaded(zones)
        record_loaded(zones)
        log.info("serving {zones} zone(s), {records} record(s)",
                 zones=len(zones.zones), records=zones.record_count)

    def _failed(self, failure) -> None:
        metrics.ZONE_RELOADS.labels("failure").inc()
        if failure.check(ZoneError):
            for problem in failure.value.problems:
                log.error("zone reload rejected, still serving the last good zones: {problem}",
                          problem=problem)
        else:
            log.failure("zone reload failed, still serving the last good zones", failure)

    def _done(self, _result) -> None:
        self._loading = False
        if self._again:
            self._again = False
            self.reload("changed again during the last reload")
