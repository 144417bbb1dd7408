"""The one signature every VM backend implements, and its typed errors.

The fleet talks to libvirt only through ``Backend``: ``LibvirtBackend`` is
the real one, ``tests/vm/fakes.FakeBackend`` the test double, and both are
checked against this protocol (``tests/vm/test_backend.py``).  Errors are
classes chosen from libvirt's error codes, so callers never match message
text: a domain that already exists is ``DomainExistsError``, one that is not
there ``NoDomainError``, libvirtd away ``NotConnectedError``.

Tests: tests/vm/test_backend.py
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from twisted.internet import defer
from twisted.logger import Logger

from summoner.vm.domxml import Metadata

log = Logger(namespace="summoner.vm.backend")

# What ``Backend.traffic`` returns per domain, compared between two looks:
# the tap's counters (bridge mode) or a connection table (user mode).
TrafficToken = tuple[int, ...] | tuple[str, ...]


class BackendError(Exception):
    """A backend call failed; the message carries libvirt's error text."""


class NotConnectedError(BackendError):
    """libvirtd is away (restarting, crashed); the backend reconnects."""


class DomainExistsError(BackendError):
    """A domain of that name exists already (a leftover of a failed destroy)."""


class NoDomainError(BackendError):
    """The domain is not there (destroyed, or never created)."""


class DomainState(enum.StrEnum):
    RUNNING = "running"
    PAUSED = "paused"
    SHUTOFF = "shutoff"
    CRASHED = "crashed"
    GONE = "gone"

    @property
    def ended(self) -> bool:
        """No guest runs (or is paused) in it."""
        return self in (DomainState.SHUTOFF, DomainState.CRASHED, DomainState.GONE)


class DomainEvent(enum.StrEnum):
    """libvirt's lifecycle events (``VIR_DOMAIN_EVENT_*``)."""

    DEFINED = "defined"
    UNDEFINED = "undefined"
    STARTED = "started"
    SUSPENDED = "suspended"
    RESUMED = "resumed"
    STOPPED = "stopped"
    SHUTDOWN = "shutdown"
    PMSUSPENDED = "pmsuspended"
    CRASHED = "crashed"

    @property
    def ends_domain(self) -> bool:
        return self in (DomainEvent.STOPPED, DomainEvent.CRASHED)


@dataclass(frozen=True)
class DomainInfo:
    name: str
    state: DomainState
    metadata: Metadata | None
    uuid: str = ""


@dataclass(frozen=True)
class Hypervisor:
    """What libvirt offers for one domain type (``summoner doctor``)."""

    libvirt_version: str
    qemu_version: str
    emulator: str
    machine: str


# (domain name, event, libvirt's detail name, domain UUID); on the reactor thread.
EventHandler = Callable[[str, DomainEvent, str, str], None]


@runtime_checkable
class Backend(Protocol):
    """Asynchronous VM operations.  Every call returns a Deferred; failures
    are ``BackendError`` subclasses.  ``on_event`` and ``on_connected`` are
    called on the reactor thread."""

    on_event: EventHandler
    on_connected: Callable[[], None]

    @property
    def connected(self) -> bool: ...

    @property
    def down_since(self) -> float | None:
        """Reactor time since which libvirt has been unreachable; None while
        connected, or when unknown (then it counts as just gone)."""
        ...

    def start(self) -> defer.Deferred[bool]:
        """Connect; fires True once connected, False after a failed first try
        (reconnecting goes on)."""
        ...

    def stop(self) -> defer.Deferred[None]: ...

    def when_connected(self) -> defer.Deferred[bool]: ...

    def create(self, name: str, xml: str, *, paused: bool = False,
               autodestroy: bool = False) -> defer.Deferred[str]:
        """Start a transient domain; fires with its UUID.
        ``DomainExistsError`` if a domain called ``name`` exists."""
        ...

    def destroy(self, name: str, uuid: str | None = None) -> defer.Deferred[bool]:
        """Hard stop; True if it was running.  With ``uuid``, only that
        instance (not a successor of the same name)."""
        ...

    def shutdown(self, name: str) -> defer.Deferred[bool]:
        """The ACPI power button; False if the domain is not there."""
        ...

    def suspend(self, name: str) -> defer.Deferred[None]: ...

    def save(self, name: str, path: str) -> defer.Deferred[None]:
        """Write the running guest's whole state to ``path``; its QEMU
        process then ends (the domain is gone until ``restore``)."""
        ...

    def restore(self, name: str, path: str) -> defer.Deferred[str]:
        """Start domain ``name`` again from a ``save`` file; fires with its
        UUID.  ``DomainExistsError`` if a domain called ``name`` is there;
        ``BackendError`` for a file that cannot be restored."""
        ...

    def resume(self, name: str) -> defer.Deferred[None]: ...

    def state(self, name: str) -> defer.Deferred[DomainState]: ...

    def list_ours(self) -> defer.Deferred[list[DomainInfo]]:
        """Every active domain carrying summoner metadata."""
        ...

    def set_metadata(self, name: str, xml: str) -> defer.Deferred[None]: ...

    def traffic(self, names: dict[str, str]) -> defer.Deferred[dict[str, TrafficToken]]:
        """``{domain: token}`` for ``{domain: network mode}``."""
        ...

    def logs(self, name: str, lines: int = 15) -> defer.Deferred[tuple[str, str]]:
        """(QEMU log tail, guest console tail)."""
        ...

    def kvm_usable(self) -> defer.Deferred[tuple[bool, str]]: ...


async def destroy_quietly(backend: Backend, name: str, uuid: str | None = None) -> None:
    """Destroy a domain whose failure to go only needs saying (it is
    retried by the next reconciliation, or replaced by the next create)."""
    try:
        await backend.destroy(name, uuid)
    except BackendError as exc:
        log.warn("destroy of {domain} failed: {err}", domain=name, err=exc)
