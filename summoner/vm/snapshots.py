"""Saved guest states for stop mode ``snapshot``: where they live, what
they cost, and which are still good.

A snapshot is one file per service, ``<state dir>/<service>-<config
hash>.save``: libvirt writes the guest's memory and device state to a
temporary name and the file is renamed only once the save succeeded, so a
crash while saving never leaves a file that would restore into a broken
guest.  The configuration hash (the one re-adoption uses) is in the name: a
rebuilt image or a changed declaration cannot restore an old guest, and its
file is removed as soon as the fleet sees the change.  A restore consumes
the file (the guest moves on from it).  All snapshots together stay within
``--snapshot-budget-mib``; an idle VM that would not fit is destroyed instead.

A *golden* snapshot (``<service>-<config hash>.golden``, images with
``snapshot_boot = true``) is taken once, right after a configuration's first
boot answered its probe, before any client used it; later cold starts
restore it instead of booting, and it is kept (not consumed) until the
configuration changes.

Tests: tests/vm/test_snapshots.py
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from twisted.logger import Logger

from summoner.vm import metrics
from summoner.vm.backend import Backend, BackendError
from summoner.vm.lifecycle import Service
from summoner.vm.spec import VMSpec

log = Logger(namespace="summoner.vm.snapshots")

SUFFIX = ".save"
GOLDEN = ".golden"
PARTIAL = ".partial"


@dataclass(frozen=True)
class Snapshot:
    path: Path
    size: int   # bytes


class NoSnapshotError(Exception):
    """Why a snapshot was not made (no room, no directory, libvirt refused)."""


class SnapshotStore:
    def __init__(self, directory: Path, budget_mib: int,
                 unlink_later: Callable[[Path], None] | None = None) -> None:
        """``unlink_later``: removes a file off the reactor thread (a
        snapshot is as big as its guest's memory: unlinking 256 MiB took
        50 ms here); the store first renames the file out of sight, so it
        is gone at once for every lookup.  None: unlink at once."""
        self.directory = directory
        self.budget_bytes = budget_mib * 1024 * 1024
        self._unlink_later = unlink_later
        self._serial = itertools.count()
        # Saves in flight, each counted at its guest's memory size until
        # committed or abandoned: N VMs reaped at once cannot overshoot.
        self._reserved: dict[Path, int] = {}

    def path_for(self, spec: VMSpec, golden: bool = False) -> Path:
        return self.directory / f"{spec.service}-{spec.config_hash}{GOLDEN if golden else SUFFIX}"

    def partial_for(self, spec: VMSpec, golden: bool = False) -> Path:
        """Where libvirt writes a save in progress."""
        return self.directory / f"{spec.service}-{spec.config_hash}{'-golden' if golden else ''}{PARTIAL}"

    def find(self, spec: VMSpec, golden: bool = False) -> Snapshot | None:
        path = self.path_for(spec, golden)
        try:
            size = path.stat().st_size
        except OSError:
            return None
        return Snapshot(path, size)

    def for_cold_start(self, spec: VMSpec) -> tuple[Snapshot | None, Snapshot | None]:
        """What a cold start of ``spec`` restores, in this order: the
        service's own snapshot, then (images with snapshot_boot) the golden one."""
        return self.find(spec), self.find(spec, golden=True) if spec.snapshot_boot else None

    def used_bytes(self) -> int:
        """Bytes on disk plus the reservations of the saves in flight."""
        return sum(size for _path, size in self._files()) + sum(self._reserved.values())

    def has_room(self, spec: VMSpec) -> str | None:
        """None if a snapshot of ``spec`` fits the budget (its guest memory,
        the most a save can take); else why not."""
        need = spec.memory_mib * 1024 * 1024
        used = self.used_bytes()
        if used + need > self.budget_bytes:
            return (f"snapshot budget: needs up to {spec.memory_mib} MiB, {used / 2**20:.0f} of "
                    f"{self.budget_bytes / 2**20:.0f} MiB in use (--snapshot-budget-mib)")
        return None

    def prepare(self, spec: VMSpec, golden: bool = False) -> Path:
        """The directory exists and no stale partial save is in the way;
        returns where the save goes (OSError if the directory cannot be made)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        partial = self.partial_for(spec, golden)
        self._remove(partial, missing_ok=True)
        self._reserved[partial] = spec.memory_mib * 1024 * 1024
        return partial

    def abandon(self, spec: VMSpec, golden: bool = False) -> None:
        """The save failed or was cancelled: its partial file goes."""
        partial = self.partial_for(spec, golden)
        self._reserved.pop(partial, None)
        try:
            self._remove(partial, missing_ok=True)
        except OSError as exc:
            log.warn("cannot remove {path}: {err}", path=str(partial), err=exc)

    def commit(self, spec: VMSpec, golden: bool = False) -> Snapshot:
        """The save succeeded: make it the service's snapshot (or golden snapshot)."""
        self._reserved.pop(self.partial_for(spec, golden), None)
        os.replace(self.partial_for(spec, golden), self.path_for(spec, golden))
        self.update_metrics()
        found = self.find(spec, golden)
        assert found is not None
        return found

    def discard(self, spec: VMSpec, why: str | None = None, golden: bool = False) -> None:
        for path in (self.path_for(spec, golden), self.partial_for(spec, golden)):
            try:
                self._remove(path)
            except FileNotFoundError:
                continue
            except OSError as exc:
                log.warn("cannot remove snapshot {path}: {err}", path=str(path), err=exc)
                continue
            if why:
                log.info("removed snapshot {path} ({why})", path=str(path), why=why)
        self.update_metrics()

    def keep_only(self, specs: Iterable[VMSpec]) -> None:
        """Remove every snapshot (and partial save) that belongs to no
        current service configuration: removed hosts, changed images."""
        wanted = {self.path_for(spec, golden).name for spec in specs for golden in (False, True)}
        for path, _size in self._files(include_partial=True):
            if path.name not in wanted:
                self._reserved.pop(path, None)
                try:
                    self._remove(path)
                    log.info("removed snapshot {path} (its service or configuration is gone)", path=str(path))
                except OSError as exc:
                    log.warn("cannot remove snapshot {path}: {err}", path=str(path), err=exc)
        self._empty_trash()
        self.update_metrics()

    def _empty_trash(self) -> None:
        """Files a crash left in .trash before their unlink ran."""
        if self._unlink_later is None:
            return
        try:
            leftovers = [Path(entry.path) for entry in os.scandir(self.directory / ".trash") if entry.is_file()]
        except OSError:
            return
        for path in leftovers:
            self._unlink_later(path)

    def _remove(self, path: Path, missing_ok: bool = False) -> None:
        """Gone at once for every lookup; the bytes are freed off the reactor."""
        if self._unlink_later is None:
            path.unlink(missing_ok=missing_ok)
            return
        trash = self.directory / ".trash"
        trash.mkdir(exist_ok=True)
        moved = trash / f"{path.name}.{next(self._serial)}"
        try:
            os.replace(path, moved)
        except FileNotFoundError:
            if not missing_ok:
                raise
            return
        self._unlink_later(moved)

    def update_metrics(self) -> None:
        files = self._files()
        for kind, suffix in (("stopped", SUFFIX), ("golden", GOLDEN)):
            sizes = [size for path, size in files if path.name.endswith(suffix)]
            metrics.SNAPSHOTS.labels(kind).set(len(sizes))
            metrics.SNAPSHOT_BYTES.labels(kind).set(sum(sizes))

    def _files(self, include_partial: bool = False) -> list[tuple[Path, int]]:
        suffixes = (SUFFIX, GOLDEN, PARTIAL) if include_partial else (SUFFIX, GOLDEN)
        try:
            entries = list(os.scandir(self.directory))
        except OSError:
            return []
        out = []
        for entry in entries:
            if entry.name.endswith(suffixes) and entry.is_file():
                try:
                    out.append((Path(entry.path), entry.stat().st_size))
                except OSError:
                    continue
        return out


async def save_guest(store: SnapshotStore, backend: Backend, svc: Service, golden: bool = False) -> Snapshot:
    """Save ``svc``'s running (or paused) guest through libvirt: its QEMU
    ends and its state becomes the service's snapshot (or, ``golden``, the
    configuration's golden snapshot).  ``NoSnapshotError`` says why not; the
    domain may then still run, or be gone."""
    spec = svc.spec
    why = store.has_room(spec)
    if why is not None:
        raise NoSnapshotError(why)
    try:
        partial = store.prepare(spec, golden)
    except OSError as exc:
        raise NoSnapshotError(f"cannot write to {store.directory}: {exc} (see --state-dir)") from exc
    svc.saves_pending += 1  # its "stopped (saved)" event is summoner's own
    saved = False
    try:
        await backend.save(spec.domain_name, str(partial))
        saved = True
    except BackendError as exc:
        raise NoSnapshotError(f"libvirt: {exc}") from exc
    finally:
        if not saved:
            svc.saves_pending -= 1
            store.abandon(spec, golden)
    return store.commit(spec, golden)
