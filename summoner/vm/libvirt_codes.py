"""libvirt's numbers as summoner's types (domain states, lifecycle events,
error codes), and libvirt's process-wide event loop.

Tests: tests/vm/test_backend.py
"""

from __future__ import annotations

import threading

import libvirt
from twisted.logger import Logger

from summoner.vm.backend import BackendError, DomainEvent, DomainExistsError, DomainState, NoDomainError

log = Logger(namespace="summoner.vm.libvirt")

# Errors that mean "the connection is gone", not "this call was wrong".
CONNECTION_ERRORS = {
    getattr(libvirt, name) for name in (
        "VIR_ERR_SYSTEM_ERROR", "VIR_ERR_NO_CONNECT", "VIR_ERR_INVALID_CONN", "VIR_ERR_RPC",
        "VIR_ERR_AUTH_FAILED",
    ) if hasattr(libvirt, name)
}
NOT_RUNNING = {libvirt.VIR_ERR_NO_DOMAIN, libvirt.VIR_ERR_OPERATION_INVALID}

STATES = {
    libvirt.VIR_DOMAIN_RUNNING: DomainState.RUNNING, libvirt.VIR_DOMAIN_BLOCKED: DomainState.RUNNING,
    libvirt.VIR_DOMAIN_PAUSED: DomainState.PAUSED, libvirt.VIR_DOMAIN_PMSUSPENDED: DomainState.PAUSED,
    libvirt.VIR_DOMAIN_SHUTDOWN: DomainState.RUNNING,  # shutting down: still there
    libvirt.VIR_DOMAIN_SHUTOFF: DomainState.SHUTOFF, libvirt.VIR_DOMAIN_CRASHED: DomainState.CRASHED,
    libvirt.VIR_DOMAIN_NOSTATE: DomainState.RUNNING,
}


def _constant_names(prefix: str) -> dict[int, str]:
    return {getattr(libvirt, n): n[len(prefix):].lower() for n in dir(libvirt)
            if n.startswith(prefix) and isinstance(getattr(libvirt, n), int) and not n.endswith("_LAST")}


EVENTS = {
    libvirt.VIR_DOMAIN_EVENT_DEFINED: DomainEvent.DEFINED, libvirt.VIR_DOMAIN_EVENT_UNDEFINED: DomainEvent.UNDEFINED,
    libvirt.VIR_DOMAIN_EVENT_STARTED: DomainEvent.STARTED, libvirt.VIR_DOMAIN_EVENT_SUSPENDED: DomainEvent.SUSPENDED,
    libvirt.VIR_DOMAIN_EVENT_RESUMED: DomainEvent.RESUMED, libvirt.VIR_DOMAIN_EVENT_STOPPED: DomainEvent.STOPPED,
    libvirt.VIR_DOMAIN_EVENT_SHUTDOWN: DomainEvent.SHUTDOWN,
    libvirt.VIR_DOMAIN_EVENT_PMSUSPENDED: DomainEvent.PMSUSPENDED,
    libvirt.VIR_DOMAIN_EVENT_CRASHED: DomainEvent.CRASHED,
}
DETAIL_NAMES = {event: _constant_names(f"VIR_DOMAIN_EVENT_{event.name}_") for event in DomainEvent}
CLOSE_REASONS = {0: "error", 1: "eof", 2: "keepalive", 3: "client"}


def version(number: int) -> str:
    return f"{number // 1_000_000}.{number // 1000 % 1000}.{number % 1000}"


def typed_error(exc: libvirt.libvirtError) -> BackendError:
    """libvirt's error as the backend's typed error, by error code."""
    code = exc.get_error_code()
    text = error_text(exc)
    if code == libvirt.VIR_ERR_NO_DOMAIN:
        return NoDomainError(text)
    if code == libvirt.VIR_ERR_DOM_EXIST:
        return DomainExistsError(text)
    return BackendError(text)


# -- the process-wide event loop --------------------------------------------

_event_loop_lock = threading.Lock()
_event_loop_started = False


def ensure_event_loop() -> None:
    """Register libvirt's default event implementation and run it forever in a
    daemon thread.  Must happen before the first connection is opened, and can
    happen only once per process (libvirt cannot swap loops)."""
    global _event_loop_started
    with _event_loop_lock:
        if _event_loop_started:
            return
        # libvirt's default error handler prints every error to stderr, even
        # those we expect and handle (lookups of gone domains); errors reach
        # us as exceptions anyway.
        libvirt.registerErrorHandler(lambda ctx, err: None, None)
        libvirt.virEventRegisterDefaultImpl()
        # A timer keeps the loop from sleeping forever with nothing registered
        # (fvirt does the same "to prevent hangs").
        libvirt.virEventAddTimeout(60_000, lambda timer, opaque: None, None)

        def run() -> None:
            while True:
                if libvirt.virEventRunDefaultImpl() < 0:
                    log.error("libvirt event loop iteration failed")

        threading.Thread(target=run, name="libvirt-events", daemon=True).start()
        _event_loop_started = True


def error_text(exc: BaseException) -> str:
    if isinstance(exc, libvirt.libvirtError):
        return exc.get_error_message() or str(exc)
    return str(exc)


