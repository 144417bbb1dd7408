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
"""

from __future__ import annotations

import os
import socket
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import libvirt
from twisted.internet import defer
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

from summoner.backoff import Backoff
from summoner.vm import metrics
from summoner.vm.domxml import NS, NS_PREFIX, Metadata, console_log_path, parse_metadata, qemu_log_path

log = Logger(namespace="summoner.vm.libvirt")

# Errors that mean "the connection is gone", not "this call was wrong".
_CONNECTION_ERRORS = {
    getattr(libvirt, name) for name in (
        "VIR_ERR_SYSTEM_ERROR", "VIR_ERR_NO_CONNECT", "VIR_ERR_INVALID_CONN", "VIR_ERR_RPC",
        "VIR_ERR_AUTH_FAILED",
    ) if hasattr(libvirt, name)
}
_NOT_RUNNING = {libvirt.VIR_ERR_NO_DOMAIN, libvirt.VIR_ERR_OPERATION_INVALID}

_STATE_NAMES = {
    libvirt.VIR_DOMAIN_RUNNING: "running", libvirt.VIR_DOMAIN_BLOCKED: "running",
    libvirt.VIR_DOMAIN_PAUSED: "paused", libvirt.VIR_DOMAIN_PMSUSPENDED: "paused",
    libvirt.VIR_DOMAIN_SHUTDOWN: "running",  # shutting down: still there
    libvirt.VIR_DOMAIN_SHUTOFF: "shutoff", libvirt.VIR_DOMAIN_CRASHED: "crashed",
    libvirt.VIR_DOMAIN_NOSTATE: "running",
}


def _constant_names(prefix: str) -> dict[int, str]:
    return {getattr(libvirt, n): n[len(prefix):].lower() for n in dir(libvirt)
            if n.startswith(prefix) and isinstance(getattr(libvirt, n), int) and not n.endswith("_LAST")}


EVENT_NAMES = {
    libvirt.VIR_DOMAIN_EVENT_DEFINED: "defined", libvirt.VIR_DOMAIN_EVENT_UNDEFINED: "undefined",
    libvirt.VIR_DOMAIN_EVENT_STARTED: "started", libvirt.VIR_DOMAIN_EVENT_SUSPENDED: "suspended",
    libvirt.VIR_DOMAIN_EVENT_RESUMED: "resumed", libvirt.VIR_DOMAIN_EVENT_STOPPED: "stopped",
    libvirt.VIR_DOMAIN_EVENT_SHUTDOWN: "shutdown", libvirt.VIR_DOMAIN_EVENT_PMSUSPENDED: "pmsuspended",
    libvirt.VIR_DOMAIN_EVENT_CRASHED: "crashed",
}
_DETAIL_NAMES = {
    "stopped": _constant_names("VIR_DOMAIN_EVENT_STOPPED_"),
    "suspended": _constant_names("VIR_DOMAIN_EVENT_SUSPENDED_"),
    "resumed": _constant_names("VIR_DOMAIN_EVENT_RESUMED_"),
    "started": _constant_names("VIR_DOMAIN_EVENT_STARTED_"),
    "crashed": _constant_names("VIR_DOMAIN_EVENT_CRASHED_"),
    "shutdown": _constant_names("VIR_DOMAIN_EVENT_SHUTDOWN_"),
}
CLOSE_REASONS = {0: "error", 1: "eof", 2: "keepalive", 3: "client"}

# Signatures in the QEMU log of a KVM that cannot run guests (seen on nested
# hosts): the auto virt type falls back to TCG when a boot ends like this.
KVM_FAILURE_SIGNATURES = ("KVM internal error", "emulation failure", "failed to set MSR",
                          "kvm run failed", "Could not access KVM kernel module")


class BackendError(Exception):
    """A libvirt call failed; the message carries libvirt's error text."""


class NotConnectedError(BackendError):
    pass


@dataclass(frozen=True)
class Hypervisor:
    """What libvirt offers for one domain type (``summoner doctor``)."""
    libvirt_version: str
    qemu_version: str
    emulator: str
    machine: str


def _version(number: int) -> str:
    return f"{number // 1_000_000}.{number // 1000 % 1000}.{number % 1000}"


@dataclass(frozen=True)
class DomainInfo:
    name: str
    state: str                  # running | paused | shutoff | crashed
    metadata: Metadata | None
    uuid: str = ""


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


def _error_text(exc: BaseException) -> str:
    if isinstance(exc, libvirt.libvirtError):
        return exc.get_error_message() or str(exc)
    return str(exc)


def tail_file(path: str, lines: int = 15, max_bytes: int = 16384, skip_argv: bool = False) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - max_bytes))
            data = f.read().decode("utf-8", "replace")
    except OSError:
        return ""
    rows = data.splitlines()
    if skip_argv:
        # libvirt's QEMU log is appended to across runs, each starting with a
        # "starting up" line and the full command line, one argument per
        # line; the failure is in what follows, in the last run.
        starts = [i for i, r in enumerate(rows) if "starting up libvirt" in r]
        if starts:
            rows = rows[starts[-1]:]
        rows = [r for r in rows if not r.startswith("-") and not r.endswith("\\")]
    return "\n".join(rows[-lines:])


def parse_usernet(text: str) -> tuple[str, ...]:
    """Connections in QEMU's slirp table (HMP ``info usernet``), minus the
    listening host-forward sockets: what is talking to the guest right now."""
    rows = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("Hub", "Protocol", "VLAN")) or "HOST_FORWARD" in line:
            continue
        if line.startswith(("TCP", "UDP")):
            rows.append(" ".join(line.split()))
    return tuple(sorted(rows))


_TCP_STATES = {1: "ESTABLISHED", 2: "SYN_SENT", 3: "SYN_RECV", 4: "FIN_WAIT_1", 5: "FIN_WAIT_2",
               6: "TIME_WAIT", 7: "CLOSED", 8: "CLOSE_WAIT", 9: "LAST_ACK", 10: "LISTEN", 11: "CLOSING"}


def _proc_endpoint(text: str) -> tuple[str, int]:
    """``0100007F:1F90`` (address in host byte order) -> ("127.0.0.1", 8080)."""
    address, _, port = text.partition(":")
    return socket.inet_ntoa(struct.pack("=I", int(address, 16))), int(port, 16)


def parse_proc_net_tcp(text: str, endpoints: set[tuple[str, int]]) -> dict[tuple[str, int], tuple[str, ...]]:
    """The host's TCP sockets (``/proc/net/tcp``) with one end at one of
    ``endpoints``, listeners left out, as ``TCP[STATE] host LOCAL REMOTE``
    rows per endpoint.  In user mode every client connection to a guest is a
    loopback connection to QEMU's forwarded (address, port), and the side
    that closes first stays in TIME_WAIT for 60 s: a connection that came and
    went between two looks is still there to see (slirp's own table drops it
    at once)."""
    found: dict[tuple[str, int], list[str]] = {}
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 4:
            continue
        try:
            local, remote, state = _proc_endpoint(fields[1]), _proc_endpoint(fields[2]), int(fields[3], 16)
        except (ValueError, struct.error, OSError):
            continue
        if state == 10:
            continue  # QEMU's listening socket of the port forward
        for end in (local, remote):
            if end in endpoints:
                found.setdefault(end, []).append(
                    f"TCP[{_TCP_STATES.get(state, state)}] host {local[0]}:{local[1]} {remote[0]}:{remote[1]}")
    return {end: tuple(sorted(rows)) for end, rows in found.items()}


def host_connections(endpoints: set[tuple[str, int]]) -> dict[tuple[str, int], tuple[str, ...]]:
    try:
        with open("/proc/net/tcp") as f:
            text = f.read()
    except OSError:
        return {}
    return parse_proc_net_tcp(text, endpoints)


class LibvirtBackend:
    """Asynchronous facade over one libvirt connection.

    ``on_event(domain_name, event, detail, uuid)`` and ``on_connected()`` are called
    on the reactor thread.  Every method returns a Deferred; failures are
    ``BackendError`` (``NotConnectedError`` while libvirtd is away).
    """

    def __init__(self, uri: str, reactor: Any, *,
                 on_event: Callable[[str, str, str, str], None] | None = None,
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
        self._reconnect_call = None
        self._connecting = False
        self._stopped = False
        self._ever_connected = False
        self._connected_waiters: list[defer.Deferred] = []

    # -- lifecycle -----------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._conn is not None

    def start(self) -> defer.Deferred:
        """Start the threads and connect.  Fires True once connected, or False
        after the first failed attempt (reconnection goes on in the background)."""
        ensure_event_loop()
        self._pool.start()
        # The worker thread is not a daemon: make sure reactor shutdown ends it
        # even if nobody calls stop().
        self.reactor.addSystemEventTrigger("during", "shutdown", self._stop_pool)
        self._stopped = False
        return self._connect()

    def stop(self) -> defer.Deferred:
        self._stopped = True
        if self._reconnect_call is not None and self._reconnect_call.active():
            self._reconnect_call.cancel()
        conn, self._conn = self._conn, None
        d = self._in_thread(self._close, conn) if conn is not None else defer.succeed(None)

        return d.addBoth(lambda _: self._stop_pool())

    def _stop_pool(self) -> None:
        if self._pool.started and not self._pool.joined:
            self._pool.stop()

    def when_connected(self) -> defer.Deferred:
        if self._conn is not None:
            return defer.succeed(True)
        d: defer.Deferred = defer.Deferred()
        self._connected_waiters.append(d)
        return d

    def _connect(self) -> defer.Deferred:
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
            self._in_thread(self._close, conn)
            return False
        self._conn = conn
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

    def _open_failed(self, failure: Any) -> bool:
        self._connecting = False
        log.warn("cannot connect to libvirt at {uri}: {err}; retrying in {delay:.2f}s",
                 uri=self.uri, err=_error_text(failure.value), delay=self._backoff.upcoming)
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
        self._in_thread(self._close, conn)
        self._schedule_reconnect()

    # -- callbacks from the event thread -------------------------------------

    def _lifecycle_cb(self, conn: Any, dom: Any, event: int, detail: int, opaque: Any) -> None:
        name = EVENT_NAMES.get(event, str(event))
        detail_name = _DETAIL_NAMES.get(name, {}).get(detail, str(detail))
        self.reactor.callFromThread(self.on_event, dom.name(), name, detail_name, dom.UUIDString())

    def _close_cb(self, conn: Any, reason: int, opaque: Any) -> None:
        self.reactor.callFromThread(self._lost, CLOSE_REASONS.get(reason, str(reason)))

    # -- calls on the worker thread ------------------------------------------

    def _in_thread(self, fn: Callable[..., Any], *args: Any) -> defer.Deferred:
        return deferToThreadPool(self.reactor, self._pool, fn, *args)

    def _call(self, fn: Callable[..., Any], *args: Any) -> defer.Deferred:
        """Run ``fn(conn, *args)`` on the worker thread."""
        conn = self._conn
        if conn is None:
            return defer.fail(NotConnectedError(f"not connected to libvirt at {self.uri}"))

        def run() -> Any:
            try:
                return fn(conn, *args)
            except libvirt.libvirtError as exc:
                if exc.get_error_code() in _CONNECTION_ERRORS:
                    try:
                        alive = conn.isAlive()
                    except libvirt.libvirtError:
                        alive = False
                    if not alive:
                        self.reactor.callFromThread(self._lost, "call failed: " + _error_text(exc))
                raise BackendError(_error_text(exc)) from exc

        return self._in_thread(run)

    # -- operations ------------------------------------------------------------

    def create(self, xml: str, autodestroy: bool = False, paused: bool = False) -> defer.Deferred:
        """Start a transient domain; fires with its UUID (each transient
        instance gets a new one, which tells its events from a predecessor's).
        ``autodestroy``: libvirt destroys it when this connection closes (for
        throw-away domains; services' VMs must outlive summoner)."""
        flags = libvirt.VIR_DOMAIN_START_AUTODESTROY if autodestroy else 0
        if paused:
            flags |= libvirt.VIR_DOMAIN_START_PAUSED
        return self._call(lambda conn: conn.createXML(xml, flags).UUIDString())

    def destroy(self, name: str, uuid: str | None = None) -> defer.Deferred:
        """Hard stop; fires True if it was running, False if already gone.

        With ``uuid``, only that instance: a later domain of the same name (a
        service re-booted after a zone change) is left alone."""
        def run(conn: libvirt.virConnect) -> bool:
            try:
                dom = conn.lookupByUUIDString(uuid) if uuid else conn.lookupByName(name)
                dom.destroy()
                return True
            except libvirt.libvirtError as exc:
                if exc.get_error_code() in _NOT_RUNNING:
                    return False
                raise
        return self._call(run)

    def shutdown(self, name: str) -> defer.Deferred:
        """ACPI power button; the guest may ignore it (callers time out)."""
        def run(conn: libvirt.virConnect) -> bool:
            try:
                dom = conn.lookupByName(name)
            except libvirt.libvirtError as exc:
                if exc.get_error_code() in _NOT_RUNNING:
                    return False
                raise
            dom.shutdownFlags(libvirt.VIR_DOMAIN_SHUTDOWN_ACPI_POWER_BTN)
            return True
        return self._call(run)

    def suspend(self, name: str) -> defer.Deferred:
        return self._call(lambda conn: conn.lookupByName(name).suspend())

    def resume(self, name: str) -> defer.Deferred:
        return self._call(lambda conn: conn.lookupByName(name).resume())

    def state(self, name: str) -> defer.Deferred:
        """Fires with running | paused | shutoff | crashed | gone."""
        def run(conn: libvirt.virConnect) -> str:
            try:
                st, _reason = conn.lookupByName(name).state()
            except libvirt.libvirtError as exc:
                if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                    return "gone"
                raise
            return _STATE_NAMES.get(st, "running")
        return self._call(run)

    def list_ours(self) -> defer.Deferred:
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
                    out.append(DomainInfo(dom.name(), _STATE_NAMES.get(st, "running"), meta, dom.UUIDString()))
            return out
        return self._call(run)

    def set_metadata(self, name: str, xml: str) -> defer.Deferred:
        return self._call(lambda conn: conn.lookupByName(name).setMetadata(
            libvirt.VIR_DOMAIN_METADATA_ELEMENT, xml, NS_PREFIX, NS, libvirt.VIR_DOMAIN_AFFECT_LIVE))

    def traffic(self, names: dict[str, str]) -> defer.Deferred:
        """Guest network activity tokens, ``{domain: token}`` for ``{domain:
        mode}``; a token that changes between two calls means traffic.

        bridge: the tap's rx/tx byte and packet counters (``interfaceStats``).
        user: QEMU's user-mode stack has no libvirt-visible interface, so the
        token is a connection table: QEMU's own (``info usernet``) plus the
        host's TCP sockets at the forwarded address and port (from the
        domain's metadata; see ``parse_proc_net_tcp``).  A connection open to
        the guest, or a new one since the last look, is activity.
        """
        def run(conn: libvirt.virConnect) -> dict[str, Any]:
            out: dict[str, Any] = {}
            forwarded: dict[str, tuple[str, int]] = {}
            for name, mode in names.items():
                try:
                    dom = conn.lookupByName(name)
                    if mode == "bridge":
                        out[name] = self._tap_counters(dom)
                    else:
                        out[name] = self._usernet(dom)
                        meta = parse_metadata(dom.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, NS, 0))
                        if meta is not None:
                            forwarded[name] = (meta.address, meta.port)
                except libvirt.libvirtError:
                    continue
            if forwarded:
                host = host_connections(set(forwarded.values()))
                for name, end in forwarded.items():
                    out[name] = tuple(sorted(out[name] + host.get(end, ())))
            return out
        return self._call(run)

    @staticmethod
    def _tap_counters(dom: Any) -> tuple[int, ...]:
        import xml.etree.ElementTree as ET
        root = ET.fromstring(dom.XMLDesc(0))
        totals = [0, 0, 0, 0]
        for target in root.iterfind("devices/interface/target"):
            dev = target.get("dev")
            if dev:
                rx_bytes, rx_packets, _e, _d, tx_bytes, tx_packets, _e2, _d2 = dom.interfaceStats(dev)
                for i, v in enumerate((rx_bytes, rx_packets, tx_bytes, tx_packets)):
                    totals[i] += v
        return tuple(totals)

    @staticmethod
    def _usernet(dom: Any) -> tuple[str, ...]:
        import libvirt_qemu
        text = libvirt_qemu.qemuMonitorCommand(dom, "info usernet",
                                               libvirt_qemu.VIR_DOMAIN_QEMU_MONITOR_COMMAND_HMP)
        return parse_usernet(text)

    def logs(self, domain_name: str, lines: int = 15) -> defer.Deferred:
        """Fires with (qemu log tail, guest console tail) for failure messages."""
        def run() -> tuple[str, str]:
            return (tail_file(qemu_log_path(domain_name), lines, skip_argv=True),
                    tail_file(console_log_path(domain_name), lines))
        return self._in_thread(run)

    def hypervisor(self, virt_type: str, machine: str) -> defer.Deferred:
        """Fires with the ``Hypervisor`` libvirt would use for ``virt_type``
        domains of ``machine``; BackendError if it offers none."""
        def run(conn: libvirt.virConnect) -> Hypervisor:
            import xml.etree.ElementTree as ET
            caps = ET.fromstring(conn.getDomainCapabilities(None, "x86_64", machine, virt_type, 0))
            return Hypervisor(_version(conn.getLibVersion()), _version(conn.getVersion()),
                              caps.findtext("path", ""), caps.findtext("machine", machine))
        return self._call(run)

    def kvm_usable(self) -> defer.Deferred:
        """Whether KVM is offered at all (device present and libvirt agrees).
        Whether guests actually *run* under it is learnt from the first boot."""
        def run(conn: libvirt.virConnect) -> tuple[bool, str]:
            if not os.access("/dev/kvm", os.R_OK | os.W_OK):
                return False, "/dev/kvm is missing or not accessible"
            try:
                conn.getDomainCapabilities(None, "x86_64", None, "kvm", 0)
            except libvirt.libvirtError as exc:
                return False, "libvirt offers no kvm domains: " + _error_text(exc)
            return True, "ok"
        return self._call(run)
