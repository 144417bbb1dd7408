"""Every libvirt call summoner makes, kept off the reactor.

Threads:

- one *worker* thread (a one-thread ``ThreadPool``) makes every call on the
  connection, so calls are serialised and the reactor never blocks on
  libvirtd;
- one *event* thread runs libvirt's default event loop
  (``virEventRunDefaultImpl``), which delivers domain lifecycle events, the
  connection's close callback and keepalives; callbacks only hop onto the
  reactor with ``reactor.callFromThread``.

When libvirtd goes away (restart, crash, keepalive timeout) the close callback
fires; the backend then reconnects with exponential back-off, registers its
callbacks again (old ids die with the old connection) and tells its owner,
who reconciles with ``list_ours()``: VMs keep running across a libvirtd
restart and are found again through their metadata.

Tests: tests/vm/test_backend.py (libvirt's test driver), tests/vm/test_libvirt_real.py (real guests)
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from collections.abc import Callable
from typing import TypeVar

import libvirt
from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IReactorCore, IReactorThreads, IReactorTime
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from summoner.backoff import Backoff
from summoner.vm import metrics
from summoner.vm.backend import (
    BackendError,  # noqa: F401 (re-exported: callers catch it from here)
    DomainExistsError,
    DomainInfo,
    DomainState,
    EventHandler,
    Hypervisor,
    NotConnectedError,
    TrafficToken,
)
from summoner.vm.domxml import NS, NS_PREFIX, console_log_path, parse_metadata, qemu_log_path
from summoner.vm.libvirt_codes import (
    CLOSE_REASONS,
    CONNECTION_ERRORS,
    DETAIL_NAMES,
    EVENTS,
    NOT_RUNNING,
    STATES,
    ensure_event_loop,
    error_text,
    typed_error,
    version,
)
from summoner.vm.logtail import tail_file
from summoner.vm.traffic import host_connections, tap_counters, usernet_rows

T = TypeVar("T")

log = Logger(namespace="summoner.vm.libvirt")


class LibvirtBackend:
    """The ``Backend`` over one libvirt connection (see ``summoner.vm.backend``).

    ``on_event(domain_name, event, detail, uuid)`` and ``on_connected()`` are called
    on the reactor thread.  Every method returns a Deferred; failures are
    ``BackendError`` subclasses (``NotConnectedError`` while libvirtd is away).
    """

    def __init__(self, uri: str, reactor: IReactorTime, *,
                 on_event: EventHandler | None = None,
                 on_connected: Callable[[], None] | None = None,
                 reconnect_min: float = 0.25, reconnect_max: float = 10.0,
                 keepalive: tuple[int, int] = (5, 3)) -> None:
        self.uri = uri
        self.reactor = reactor
        self.on_event = on_event or (lambda name, event, detail, uuid: None)
        self.on_connected = on_connected or (lambda: None)
        self.reconnect_min = reconnect_min
        self.reconnect_max = reconnect_max
        self.keepalive = keepalive
        self._pool = ThreadPool(1, 1, name="summoner-libvirt")
        self._conn: libvirt.virConnect | None = None
        self._callback_ids: list[int] = []
        self._backoff = Backoff(reconnect_min, reconnect_max)
        self._reconnect_call: IDelayedCall | None = None
        self._connecting = False
        self._stopped = False
        self._ever_connected = False
        self._connected_waiters: list[defer.Deferred[bool]] = []
        self._down_since: float | None = None

    # -- lifecycle -----------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._conn is not None

    @property
    def down_since(self) -> float | None:
        return None if self._conn is not None else self._down_since

    def start(self) -> defer.Deferred[bool]:
        """Start the threads and connect.  Fires True once connected, or False
        after the first failed attempt (reconnection goes on in the background)."""
        ensure_event_loop()
        self._pool.start()
        # The worker thread is not a daemon: make sure reactor shutdown ends it
        # even if nobody calls stop().
        IReactorCore(self.reactor).addSystemEventTrigger("during", "shutdown", self._stop_pool)
        self._stopped = False
        self._down_since = self.reactor.seconds()
        return self._connect()

    def stop(self) -> defer.Deferred[None]:
        self._stopped = True
        if self._reconnect_call is not None and self._reconnect_call.active():
            self._reconnect_call.cancel()
        conn, self._conn = self._conn, None
        d = self._in_thread(lambda: self._close(conn)) if conn is not None else defer.succeed(None)

        return d.addBoth(lambda _: self._stop_pool())

    def _stop_pool(self) -> None:
        if self._pool.started and not self._pool.joined:
            self._pool.stop()

    def when_connected(self) -> defer.Deferred[bool]:
        if self._conn is not None:
            return defer.succeed(True)
        d: defer.Deferred[bool] = defer.Deferred()
        self._connected_waiters.append(d)
        return d

    def _connect(self) -> defer.Deferred[bool]:
        if self._connecting or self._conn is not None:
            return defer.succeed(self._conn is not None)
        self._connecting = True
        d = self._in_thread(self._open)
        d.addCallbacks(self._opened, self._open_failed)
        return d

    def _open(self) -> libvirt.virConnect:
        conn = libvirt.open(self.uri)
        try:
            conn.setKeepAlive(*self.keepalive)
        except libvirt.libvirtError:
            pass  # test:///default and other in-process drivers have no keepalive
        try:
            ids = [conn.domainEventRegisterAny(None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE,
                                               self._lifecycle_cb, None)]
        except libvirt.libvirtError:
            conn.close()  # a connection without events is useless; the retry opens a new one
            raise
        try:
            conn.registerCloseCallback(self._close_cb, None)
        except libvirt.libvirtError:
            pass  # in-process drivers never close under us
        self._callback_ids = ids
        return conn

    def _opened(self, conn: libvirt.virConnect) -> bool:
        self._connecting = False
        if self._stopped:
            self._in_thread(lambda: self._close(conn))
            return False
        self._conn = conn
        self._down_since = None
        self._backoff.succeeded()
        if self._ever_connected:
            metrics.RECONNECTS.inc()
            log.info("reconnected to libvirt at {uri}", uri=self.uri)
        else:
            log.info("connected to libvirt at {uri}", uri=self.uri)
        self._ever_connected = True
        waiters, self._connected_waiters = self._connected_waiters, []
        for w in waiters:
            w.callback(True)
        self.on_connected()
        return True

    def _open_failed(self, failure: Failure) -> bool:
        self._connecting = False
        log.warn("cannot connect to libvirt at {uri}: {err}; retrying in {delay:.2f}s",
                 uri=self.uri, err=error_text(failure.value), delay=self._backoff.upcoming)
        self._schedule_reconnect()
        return False

    def _schedule_reconnect(self) -> None:
        if self._stopped or (self._reconnect_call is not None and self._reconnect_call.active()):
            return
        self._reconnect_call = self.reactor.callLater(self._backoff.failed(), self._connect)

    def _close(self, conn: libvirt.virConnect) -> None:
        for cid in self._callback_ids:
            try:
                conn.domainEventDeregisterAny(cid)
            except libvirt.libvirtError:
                pass
        self._callback_ids = []
        try:
            conn.unregisterCloseCallback()
        except libvirt.libvirtError:
            pass
        try:
            conn.close()
        except libvirt.libvirtError:
            pass

    def _lost(self, why: str) -> None:
        """The connection died (reactor thread)."""
        conn, self._conn = self._conn, None
        if conn is None or self._stopped:
            return
        log.warn("lost libvirt connection ({why}); reconnecting", why=why)
        self._down_since = self.reactor.seconds()
        self._in_thread(lambda: self._close(conn))
        self._schedule_reconnect()

    # -- callbacks from the event thread -------------------------------------

    def _lifecycle_cb(self, conn: libvirt.virConnect, dom: libvirt.virDomain, event: int, detail: int,
                      opaque: None) -> None:
        kind = EVENTS.get(event)
        if kind is None:
            return  # an event type newer than this code; nothing here acts on it
        detail_name = DETAIL_NAMES[kind].get(detail, str(detail))
        IReactorThreads(self.reactor).callFromThread(self.on_event, dom.name(), kind, detail_name,
                                                     dom.UUIDString())

    def _close_cb(self, conn: libvirt.virConnect, reason: int, opaque: None) -> None:
        IReactorThreads(self.reactor).callFromThread(self._lost, CLOSE_REASONS.get(reason, str(reason)))

    # -- calls on the worker thread ------------------------------------------

    def _in_thread(self, fn: Callable[[], T]) -> defer.Deferred[T]:
        return deferToThreadPool(self.reactor, self._pool, fn)

    def _call(self, fn: Callable[[libvirt.virConnect], T]) -> defer.Deferred[T]:
        """Run ``fn(conn)`` on the worker thread; libvirt's errors become
        typed ``BackendError``s."""
        conn = self._conn
        if conn is None:
            return defer.fail(NotConnectedError(f"not connected to libvirt at {self.uri}"))

        def run() -> T:
            try:
                return fn(conn)
            except libvirt.libvirtError as exc:
                if exc.get_error_code() in CONNECTION_ERRORS and not _alive(conn):
                    IReactorThreads(self.reactor).callFromThread(self._lost, "call failed: " + error_text(exc))
                    raise NotConnectedError(error_text(exc)) from exc
                raise typed_error(exc) from exc

        return self._in_thread(run)

    # -- operations ------------------------------------------------------------

    def create(self, name: str, xml: str, *, paused: bool = False,
               autodestroy: bool = False) -> defer.Deferred[str]:
        """Start a transient domain; fires with its UUID (each transient
        instance gets a new one, which tells its events from a predecessor's).
        ``autodestroy``: libvirt destroys it when this connection closes (for
        throw-away domains; services' VMs must outlive summoner).

        ``DomainExistsError`` when a domain called ``name`` is there already,
        told by looking it up first: libvirt's own error for that case is a
        generic "operation failed" whose code says nothing."""
        flags = libvirt.VIR_DOMAIN_START_AUTODESTROY if autodestroy else 0
        if paused:
            flags |= libvirt.VIR_DOMAIN_START_PAUSED

        def run(conn: libvirt.virConnect) -> str:
            _refuse_existing(conn, name)
            return conn.createXML(xml, flags).UUIDString()
        return self._call(run)

    def save(self, name: str, path: str) -> defer.Deferred[None]:
        return self._call(lambda conn: _none(conn.lookupByName(name).saveFlags(path, None, 0)))

    def restore(self, name: str, path: str) -> defer.Deferred[str]:
        def run(conn: libvirt.virConnect) -> str:
            _refuse_existing(conn, name)
            conn.restoreFlags(path, None, libvirt.VIR_DOMAIN_SAVE_RUNNING)  # running, even if saved paused
            return conn.lookupByName(name).UUIDString()
        return self._call(run)

    def destroy(self, name: str, uuid: str | None = None) -> defer.Deferred[bool]:
        """Hard stop; fires True if it was running, False if already gone.

        With ``uuid``, only that instance: a later domain of the same name (a
        service re-booted after a zone change) is left alone."""
        def run(conn: libvirt.virConnect) -> bool:
            try:
                dom = conn.lookupByUUIDString(uuid) if uuid else conn.lookupByName(name)
                dom.destroy()
                return True
            except libvirt.libvirtError as exc:
                if exc.get_error_code() in NOT_RUNNING:
                    return False
                raise
        return self._call(run)

    def shutdown(self, name: str) -> defer.Deferred[bool]:
        """ACPI power button; the guest may ignore it (callers time out)."""
        def run(conn: libvirt.virConnect) -> bool:
            try:
                dom = conn.lookupByName(name)
            except libvirt.libvirtError as exc:
                if exc.get_error_code() in NOT_RUNNING:
                    return False
                raise
            dom.shutdownFlags(libvirt.VIR_DOMAIN_SHUTDOWN_ACPI_POWER_BTN)
            return True
        return self._call(run)

    def suspend(self, name: str) -> defer.Deferred[None]:
        return self._call(lambda conn: _none(conn.lookupByName(name).suspend()))

    def resume(self, name: str) -> defer.Deferred[None]:
        return self._call(lambda conn: _none(conn.lookupByName(name).resume()))

    def state(self, name: str) -> defer.Deferred[DomainState]:
        def run(conn: libvirt.virConnect) -> DomainState:
            try:
                st, _reason = conn.lookupByName(name).state()
            except libvirt.libvirtError as exc:
                if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                    return DomainState.GONE
                raise
            return STATES.get(st, DomainState.RUNNING)
        return self._call(run)

    def list_ours(self) -> defer.Deferred[list[DomainInfo]]:
        """Every active domain carrying summoner metadata."""
        def run(conn: libvirt.virConnect) -> list[DomainInfo]:
            out = []
            for dom in conn.listAllDomains(0):
                try:
                    text = dom.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, NS, 0)
                    st, _reason = dom.state()
                except libvirt.libvirtError:
                    continue  # not ours (no metadata in our namespace), or vanished meanwhile
                meta = parse_metadata(text)
                if meta is not None:
                    out.append(DomainInfo(dom.name(), STATES.get(st, DomainState.RUNNING), meta, dom.UUIDString()))
            return out
        return self._call(run)

    def set_metadata(self, name: str, xml: str) -> defer.Deferred[None]:
        return self._call(lambda conn: _none(conn.lookupByName(name).setMetadata(
            libvirt.VIR_DOMAIN_METADATA_ELEMENT, xml, NS_PREFIX, NS, libvirt.VIR_DOMAIN_AFFECT_LIVE)))

    def traffic(self, names: dict[str, str]) -> defer.Deferred[dict[str, TrafficToken]]:
        """Guest network activity tokens, ``{domain: token}`` for ``{domain:
        mode}``; a token that changes between two calls means traffic.

        bridge: the tap's rx/tx byte and packet counters (``interfaceStats``).
        user: QEMU's user-mode stack has no libvirt-visible interface, so the
        token is a connection table: QEMU's own (``info usernet``) plus the
        host's TCP sockets at the forwarded address and port (from the
        domain's metadata; see ``parse_proc_net_tcp``).  A connection open to
        the guest, or a new one since the last look, is activity.
        """
        def run(conn: libvirt.virConnect) -> dict[str, TrafficToken]:
            out: dict[str, TrafficToken] = {}
            forwarded: dict[str, tuple[str, int]] = {}
            for name, mode in names.items():
                try:
                    dom = conn.lookupByName(name)
                    if mode == "bridge":
                        out[name] = tap_counters(dom)
                    else:
                        out[name] = usernet_rows(dom)
                        meta = parse_metadata(dom.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, NS, 0))
                        if meta is not None:
                            forwarded[name] = (meta.address, meta.port)
                except libvirt.libvirtError:
                    continue
            if forwarded:
                host = host_connections(set(forwarded.values()))
                for name, end in forwarded.items():
                    out[name] = tuple(sorted((*out[name], *host.get(end, ()))))
            return out
        return self._call(run)

    def logs(self, name: str, lines: int = 15) -> defer.Deferred[tuple[str, str]]:
        """Fires with (qemu log tail, guest console tail) for failure messages."""
        def run() -> tuple[str, str]:
            return (tail_file(qemu_log_path(name), lines, skip_argv=True),
                    tail_file(console_log_path(name), lines))
        return self._in_thread(run)

    def hypervisor(self, virt_type: str, machine: str) -> defer.Deferred[Hypervisor]:
        """Fires with the ``Hypervisor`` libvirt would use for ``virt_type``
        domains of ``machine``; BackendError if it offers none."""
        def run(conn: libvirt.virConnect) -> Hypervisor:
            caps = ET.fromstring(conn.getDomainCapabilities(None, "x86_64", machine, virt_type, 0))
            return Hypervisor(version(conn.getLibVersion()), version(conn.getVersion()),
                              caps.findtext("path", ""), caps.findtext("machine", machine))
        return self._call(run)

    def kvm_usable(self) -> defer.Deferred[tuple[bool, str]]:
        """Whether KVM is offered at all (device present and libvirt agrees).
        Whether guests actually *run* under it is learnt from the first boot."""
        def run(conn: libvirt.virConnect) -> tuple[bool, str]:
            if not os.access("/dev/kvm", os.R_OK | os.W_OK):
                return False, "/dev/kvm is missing or not accessible"
            try:
                conn.getDomainCapabilities(None, "x86_64", None, "kvm", 0)
            except libvirt.libvirtError as exc:
                return False, "libvirt offers no kvm domains: " + error_text(exc)
            return True, "ok"
        return self._call(run)


def _refuse_existing(conn: libvirt.virConnect, name: str) -> None:
    try:
        existing = conn.lookupByName(name)
    except libvirt.libvirtError as exc:
        if exc.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:
            raise
    else:
        raise DomainExistsError(f"domain '{name}' already exists with uuid {existing.UUIDString()}")


def _none(_: object) -> None:
    """libvirt's calls return 0 on success; callers want nothing."""


def _alive(conn: libvirt.virConnect) -> bool:
    try:
        return bool(conn.isAlive())
    except libvirt.libvirtError:
        return False
