"""Test doubles for the on-demand tests that do not boot QEMU.

``FakeBackend`` implements ``summoner.vm.backend.Backend``; a "VM" is a listener
on the service's loopback address, so the real probe, state machine, stage
and reaper run unchanged.  It behaves like libvirt + QEMU (user networking)
where summoner's logic depends on it; each point was watched on a real
domain under ``qemu:///system`` (libvirt 9, QEMU 7.2, TCG):

- Lifecycle events come for every call, as libvirt sends them (event,
  detail): create → ``resumed/unpaused`` then ``started/booted``; create
  paused → ``started/booted``, ``suspended/paused``; suspend →
  ``suspended/paused``; resume → ``resumed/unpaused``; destroy →
  ``shutdown/host``, ``stopped/destroyed``; a guest that powers off on the
  ACPI button → ``shutdown/guest``, then ``stopped/shutdown`` (about 2 s
  later under libvirt).
- Their order against the call's own result, on the reactor thread: libvirt
  sends each event before or after its reply, but the event thread and the
  caller's thread race to hand them to the reactor, so any order can occur.
  Counted over 15 rounds (45 suspends and resumes, 30 destroys): suspend's
  event came first 45 of 45 times, resume's 43 of 45, create's ``resumed``
  15 of 15 and destroy's ``shutdown`` 30 of 30; create's ``started`` came
  *after* the result 13 of 15 times, a paused create's two events 12 of 15,
  destroy's ``stopped`` 20 of 30.  The fake delivers each event in its own
  reactor turn (``callLater(0)``), by default in the usual order
  (``event_order = "usual"``); ``"before"`` and ``"after"`` put every event
  before or after the call's result, the two extremes libvirt can produce.
- QEMU's port forward listens from the moment the domain exists (paused or
  not) until it is destroyed.  A connection made before the guest's network
  is up hangs (no SYN-ACK from the guest; slirp retries seconds later);
  one made while a booted guest is paused hangs and is answered on resume;
  with the guest up but not listening (``silent``) it is closed at once (the
  guest's RST).  There is never a "connection refused" while the domain
  exists.
- ``connected = False`` (libvirtd away): every call fails with
  ``NotConnectedError`` and no events arrive, like ``LibvirtBackend``.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dnslib import QTYPE, RR, SOA, A
from twisted.internet import defer, protocol, reactor

from summoner.images import (
    BootSpec,
    BuildSpec,
    ImageManifest,
    NetworkSpec,
    ProbeSpec,
    ReapSpec,
    Resources,
    ServiceSpec,
)
from summoner.vm.backend import (
    BackendError,
    DomainEvent,
    DomainExistsError,
    DomainInfo,
    DomainState,
    NoDomainError,
    NotConnectedError,
)
from summoner.vm.domxml import parse_metadata
from summoner.vm.hosts import OnDemandHost

SOA_RR = RR("example.org", QTYPE.SOA, rdata=SOA("ns1.example.org", "h.example.org", (1, 3600, 600, 86400, 60)),
            ttl=300)
STARTED, SUSPENDED, RESUMED = DomainEvent.STARTED, DomainEvent.SUSPENDED, DomainEvent.RESUMED
STOPPED, SHUTDOWN = DomainEvent.STOPPED, DomainEvent.SHUTDOWN


def manifest(name: str, *, boot_timeout: float = 2.0, idle: float = 300, stop_mode: str = "destroy",
             memory: int = 64, interval_ms: int = 10, directory: Path | None = None,
             kernel: str = "fakes.py", build: str = "build 1", ipv6: bool = False,
             arch: str = "x86_64") -> ImageManifest:
    """A real ``ImageManifest``, as ``load_manifest`` would make it, of a
    kernel-boot image whose "kernel" is a file that exists (so the image
    counts as built).  ``build`` stands for the manifest's content: a
    different value is a different manifest (a new config hash).  ``ipv6``:
    the guest configures the address of summoner_ip6= (as hello and tasks do)."""
    directory = directory or Path(__file__).parent
    probe = ProbeSpec(path="/", expect_status=200, interval_ms=interval_ms, boot_timeout_s=boot_timeout,
                      request_timeout_ms=300)
    reap = ReapSpec(idle_timeout_s=idle, stop_mode=stop_mode, shutdown_grace_s=0.5)
    resources = Resources(memory_mib=memory, vcpus=1)
    return ImageManifest(
        name=name, description=f"test image {name}", path=(directory / "image.toml").resolve(),
        boot=BootSpec(kind="kernel", arch=arch, kernel=(directory / kernel).resolve(), cmdline="console=ttyS0",
                      machine="virt" if arch == "aarch64" else None),
        resources=resources, service=ServiceSpec(port=18080), probe=probe,
        network=NetworkSpec(ipv6_config="kernel-cmdline" if ipv6 else "none"), reap=reap,
        build=BuildSpec(), canonical=repr((name, build, probe, reap, resources)))


def host(label: str, address: str, image: str, **overrides: Any) -> OnDemandHost:
    name = f"{label}.example.org"
    return OnDemandHost(name=name, zone="example.org", image=image, address=address,
                        records=(RR(name, QTYPE.A, rdata=A(address), ttl=300),), soa=SOA_RR, negative_ttl=60,
                        location="test.zone:1", **overrides)


class _Forwarded(protocol.Protocol):
    """The host side of one connection through QEMU's port forward."""

    def __init__(self, vm: dict[str, Any]) -> None:
        self.vm = vm
        self.buffer = b""
        self.attached = False

    def connectionMade(self) -> None:  # noqa: N802 (Twisted's name)
        self.vm["conns"].add(self)
        if self.vm["net_up"] and self.vm["state"] == "running":
            self.attach()
        elif self.vm["net_up"]:
            self.vm["held"].append(self)  # answered on resume
        # else: the guest has no network yet: the connection hangs

    def attach(self) -> None:
        """The guest got the SYN: it serves, or resets the connection."""
        if self.vm["silent"]:
            self.transport.loseConnection()
            return
        self.attached = True
        self.dataReceived(b"")

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        self.buffer += data
        if self.attached and b"\r\n\r\n" in self.buffer:
            status = self.vm["status"]()
            self.transport.write(b"HTTP/1.1 %d X\r\nContent-Length: 6\r\nConnection: close\r\n\r\nhello\n" % status)
            self.transport.loseConnection()
            self.attached = False

    def connectionLost(self, reason: Any = protocol.connectionDone) -> None:  # noqa: N802
        self.vm["conns"].discard(self)
        if self in self.vm["held"]:
            self.vm["held"].remove(self)


class _PortForward(protocol.ServerFactory):
    noisy = False

    def __init__(self, vm: dict[str, Any]) -> None:
        self.vm = vm

    def buildProtocol(self, addr: Any) -> protocol.Protocol:  # noqa: N802
        return _Forwarded(self.vm)


class FakeBackend:
    """In-memory libvirt + QEMU stand-in; see the module doc."""

    def __init__(self, boot_delay: float = 0.05, call_delay: float = 0.001) -> None:
        self.reactor = reactor
        self.boot_delay = boot_delay      # guest start to its network being up and serving
        self.call_delay = call_delay      # how long each libvirt call takes
        self.shutdown_delay = (0.01, 0.1)  # ACPI button to shutdown/guest, then to stopped/shutdown
        self.event_order = "usual"  # or "before" / "after": every event before / after the call's result
        self.connected = True
        self.down_since: float | None = None  # unknown: a fake outage counts as just begun
        self.on_event: Callable[[str, DomainEvent, str, str], None] = lambda *a: None
        self.on_connected: Callable[[], None] = lambda: None
        self.domains: dict[str, dict[str, Any]] = {}
        self.creates = 0
        self.destroys = 0
        self.shutdowns = 0
        self.saves = 0
        self.save_attempts = 0
        self.save_error: str | None = None  # every save fails with it
        self.restores = 0
        self.silent: set[str] = set()      # services whose guest never listens
        self.acpi: set[str] = set()        # services whose guest powers off on the ACPI button
        self.status: dict[str, int] = {}   # HTTP status per service (default 200)
        self.traffic_tokens: dict[str, Any] = {}
        self.events: list[tuple[str, DomainEvent, str]] = []  # (domain, event, detail) as delivered
        self._uuids = itertools.count(1)
        self._waiting: list[defer.Deferred] = []

    # -- connection ------------------------------------------------------------

    def start(self) -> defer.Deferred:
        self.connected = True
        self.on_connected()
        return defer.succeed(True)

    def stop(self) -> defer.Deferred:
        """Like ``LibvirtBackend.stop``: the connection closes, VMs keep running."""
        self.connected = False
        return defer.succeed(None)

    def teardown(self) -> None:
        """End of a test: every "VM" goes, with its listener and connections."""
        for name in list(self.domains):
            self._vanish(name)

    def when_connected(self) -> defer.Deferred:
        if self.connected:
            return defer.succeed(True)
        d: defer.Deferred = defer.Deferred()
        self._waiting.append(d)
        return d

    def reconnect(self) -> None:
        self.connected = True
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            d.callback(True)
        self.on_connected()

    # -- plumbing ----------------------------------------------------------------

    def _call(self, run: Callable[[], tuple[Any, list, list]]) -> defer.Deferred:
        """``run()`` does the call's work at once and returns (result, events
        that usually come before the result, events that usually come after)."""
        if not self.connected:
            return defer.fail(NotConnectedError("not connected to libvirt at fake:///"))
        try:
            result, before, after = run()
        except BackendError as exc:
            return defer.fail(exc)
        d: defer.Deferred = defer.Deferred()
        first, after = {"usual": (before, after), "before": (before + after, []),
                        "after": ([], before + after)}[self.event_order]
        steps = [lambda ev=ev: self._deliver(*ev) for ev in first]
        steps.append(lambda: d.callback(result))
        steps += [lambda ev=ev: self._deliver(*ev) for ev in after]

        def step() -> None:
            steps.pop(0)()
            if steps:
                reactor.callLater(0, step)
        reactor.callLater(self.call_delay, step)
        return d

    def _deliver(self, name: str, event: DomainEvent, detail: str, uuid: str) -> None:
        if not self.connected:
            return  # events of a dead connection are lost
        self.events.append((name, event, detail))
        self.on_event(name, event, detail, uuid)

    def _domain(self, name: str) -> dict[str, Any]:
        vm = self.domains.get(name)
        if vm is None:
            raise NoDomainError(f"Domain not found: no domain with matching name '{name}'")
        return vm

    def _run_guest(self, name: str) -> None:
        """The guest's vCPUs start for the first time: its network comes up
        ``boot_delay`` later."""
        vm = self.domains[name]
        vm["ran"] = True
        vm["timer"] = reactor.callLater(self.boot_delay, self._net_up, name)

    def _net_up(self, name: str) -> None:
        vm = self.domains.get(name)
        if vm is not None:
            vm["net_up"] = True

    def _vanish(self, name: str) -> dict[str, Any]:
        """QEMU exits: the port forward and its connections go with it."""
        vm = self.domains.pop(name)
        timer = vm.get("timer")
        if timer is not None and timer.active():
            timer.cancel()
        vm["port"].stopListening()
        for conn in list(vm["conns"]):
            conn.transport.abortConnection()
        return vm

    # -- operations ----------------------------------------------------------------

    def _new_domain(self, name: str, xml: str, paused: bool) -> dict[str, Any]:
        meta = parse_metadata(xml)
        assert meta is not None
        assert f"<name>{name}</name>" in xml, (name, xml)
        if name in self.domains:
            raise DomainExistsError(f"domain '{name}' already exists with uuid {self.domains[name]['uuid']}")
        vm: dict[str, Any] = {
            "meta": meta, "state": "paused" if paused else "running", "uuid": f"uuid-{next(self._uuids)}",
            "xml": xml, "ran": False, "net_up": False, "conns": set(), "held": [], "memory": {},
            "silent": meta.service in self.silent,
            "status": lambda service=meta.service: self.status.get(service, 200),
        }
        vm["port"] = reactor.listenTCP(meta.port, _PortForward(vm), interface=meta.address)
        self.domains[name] = vm
        return vm

    def create(self, name: str, xml: str, *, paused: bool = False, autodestroy: bool = False) -> defer.Deferred:
        def run() -> tuple[Any, list, list]:
            vm = self._new_domain(name, xml, paused)
            self.creates += 1
            uuid = vm["uuid"]
            if paused:
                return uuid, [], [(name, STARTED, "booted", uuid), (name, SUSPENDED, "paused", uuid)]
            self._run_guest(name)
            return uuid, [(name, RESUMED, "unpaused", uuid)], [(name, STARTED, "booted", uuid)]
        return self._call(run)

    def save(self, name: str, path: str) -> defer.Deferred:
        """Like virDomainSaveFlags: the guest's state (here its ``memory``
        dict, which tests fill) goes to ``path``; the domain ends."""
        def run() -> tuple[Any, list, list]:
            vm = self._domain(name)
            self.save_attempts += 1
            if self.save_error:  # e.g. libvirt refusing a domain with a transient disk; the guest runs on
                raise BackendError(self.save_error)
            Path(path).write_text(json.dumps({"name": name, "xml": vm["xml"], "memory": vm["memory"],
                                              "booted": vm["ran"], "uuid": vm["uuid"]}))
            self.saves += 1
            self._vanish(name)
            return None, [], [(name, STOPPED, "saved", vm["uuid"])]
        return self._call(run)

    def restore(self, name: str, path: str) -> defer.Deferred:
        """Like virDomainRestoreFlags (running): the guest goes on where it
        was, network up, under the UUID it was saved with (watched on
        qemu:///system); a file that is not a save image fails."""
        def run() -> tuple[Any, list, list]:
            try:
                saved = json.loads(Path(path).read_text())
            except (OSError, ValueError) as exc:
                raise BackendError(f"operation failed: failed to read qemu header: {exc}") from exc
            vm = self._new_domain(name, saved["xml"], paused=False)
            vm["uuid"] = saved["uuid"]  # libvirt restores the domain with the UUID it was saved with
            vm["memory"] = saved["memory"]
            vm["ran"] = vm["net_up"] = saved["booted"]
            self.restores += 1
            return vm["uuid"], [], [(name, STARTED, "restored", vm["uuid"])]
        return self._call(run)

    def destroy(self, name: str, uuid: str | None = None) -> defer.Deferred:
        def run() -> tuple[Any, list, list]:
            vm = self.domains.get(name)
            if vm is None or (uuid and vm["uuid"] != uuid):
                return False, [], []
            self.destroys += 1
            self._vanish(name)
            return True, [(name, SHUTDOWN, "host", vm["uuid"])], [(name, STOPPED, "destroyed", vm["uuid"])]
        return self._call(run)

    def kill(self, name: str) -> None:
        """A destroy behind summoner's back (virsh destroy): only its events
        reach summoner, in later reactor turns."""
        vm = self._vanish(name)
        reactor.callLater(0, self._deliver, name, SHUTDOWN, "host", vm["uuid"])
        reactor.callLater(0.001, self._deliver, name, STOPPED, "destroyed", vm["uuid"])

    def lose(self, name: str) -> None:
        """A domain that went away while summoner was not listening: no event."""
        self._vanish(name)

    def shutdown(self, name: str) -> defer.Deferred:
        """The ACPI power button: only guests in ``acpi`` power off."""
        def run() -> tuple[Any, list, list]:
            vm = self.domains.get(name)
            if vm is None:
                return False, [], []
            self.shutdowns += 1
            if vm["meta"].service in self.acpi and vm["state"] == "running" and vm["ran"]:
                to_guest, to_stop = self.shutdown_delay

                def powered_off() -> None:
                    if self.domains.get(name) is vm:
                        self._deliver(name, SHUTDOWN, "guest", vm["uuid"])
                        reactor.callLater(to_stop, stopped)

                def stopped() -> None:
                    if self.domains.get(name) is vm:
                        self._vanish(name)
                        self._deliver(name, STOPPED, "shutdown", vm["uuid"])
                reactor.callLater(self.call_delay + to_guest, powered_off)
            return True, [], []
        return self._call(run)

    def suspend(self, name: str) -> defer.Deferred:
        def run() -> tuple[Any, list, list]:
            vm = self._domain(name)
            if vm["state"] == "paused":
                return None, [], []
            vm["state"] = "paused"
            if vm.get("timer") is not None and vm["timer"].active():
                # the guest's clock stops with it: its network comes up later
                vm["net_left"] = vm["timer"].getTime() - reactor.seconds()
                vm["timer"].cancel()
            return None, [(name, SUSPENDED, "paused", vm["uuid"])], []
        return self._call(run)

    def resume(self, name: str) -> defer.Deferred:
        def run() -> tuple[Any, list, list]:
            vm = self._domain(name)
            if vm["state"] == "running":
                return None, [], []
            vm["state"] = "running"
            if not vm["ran"]:  # a standby domain: the guest boots now
                self._run_guest(name)
            elif "net_left" in vm:
                vm["timer"] = reactor.callLater(vm.pop("net_left"), self._net_up, name)
            for conn in vm["held"]:
                conn.attach()
            vm["held"] = []
            return None, [(name, RESUMED, "unpaused", vm["uuid"])], []
        return self._call(run)

    def set_metadata(self, name: str, xml: str) -> defer.Deferred:
        def run() -> tuple[Any, list, list]:
            self._domain(name)["meta"] = parse_metadata(xml)
            return None, [], []
        return self._call(run)

    def state(self, name: str) -> defer.Deferred:
        return self._call(lambda: (DomainState(self.domains[name]["state"]) if name in self.domains
                                   else DomainState.GONE, [], []))

    def list_ours(self) -> defer.Deferred:
        return self._call(lambda: ([DomainInfo(n, DomainState(d["state"]), d["meta"], d["uuid"])
                                    for n, d in self.domains.items()], [], []))

    def traffic(self, names: dict[str, str]) -> defer.Deferred:
        return self._call(lambda: ({n: self.traffic_tokens.get(n, ()) for n in names if n in self.domains},
                                   [], []))

    def kvm_usable(self) -> defer.Deferred:
        return self._call(lambda: ((False, "fake"), [], []))

    def logs(self, name: str, lines: int = 15) -> defer.Deferred:
        return defer.succeed(("fake qemu log line", "fake console line"))
