"""Test doubles for the on-demand tests that do not boot QEMU.

``FakeBackend`` speaks the ``LibvirtBackend`` interface; a "VM" is an HTTP
listener on the service's loopback address that appears ``boot_delay`` after
``create``, so the real probe, state machine, stage and reaper run unchanged.

Where real libvirt and QEMU behave in ways summoner must cope with, the fake
does the same:

- lifecycle events for create (started; suspended too when created paused),
  suspend (suspended), resume (resumed) and destroy (stopped), delivered on
  their own, possibly before the call's own result (libvirt's event thread
  races the RPC reply);
- a suspended VM keeps its port forward: connections are accepted and then
  hang without a status line until the guest resumes;
- the configuration hash follows the manifest's values;
- while ``connected`` is False every call fails with NotConnectedError.
"""

from __future__ import annotations

import hashlib
import itertools
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from dnslib import QTYPE, RR, SOA, A
from twisted.internet import defer, reactor, task
from twisted.web import resource, server

from summoner.vm.domxml import parse_metadata
from summoner.vm.hosts import OnDemandHost
from summoner.vm.libvirt_backend import BackendError, DomainInfo, NotConnectedError

SOA_RR = RR("example.org", QTYPE.SOA, rdata=SOA("ns1.example.org", "h.example.org", (1, 3600, 600, 86400, 60)),
            ttl=300)


class _Hello(resource.Resource):
    isLeaf = True  # noqa: N815

    def __init__(self, status: int) -> None:
        super().__init__()
        self.status = status
        self.paused = False
        self.held: list[Any] = []

    def render_GET(self, request: Any) -> bytes | int:  # noqa: N802
        if self.paused:  # a paused guest: QEMU accepted the connection, nobody answers
            self.held.append(request)
            return server.NOT_DONE_YET
        request.setResponseCode(self.status)
        return b"hello\n"

    def resume(self) -> None:
        self.paused = False
        held, self.held = self.held, []
        for request in held:
            if not request.finished and not getattr(request, "_disconnected", False):
                request.setResponseCode(self.status)
                request.write(b"hello\n")
                request.finish()


def manifest(name: str, *, boot_timeout: float = 2.0, idle: float = 300, stop_mode: str = "destroy",
             memory: int = 64, interval_ms: int = 10, directory: Path | None = None,
             kernel: str = "fakes.py") -> SimpleNamespace:
    directory = directory or Path(__file__).parent
    # Like ImageManifest.config_hash: a different manifest is a different VM.
    identity = repr((name, boot_timeout, idle, stop_mode, memory, interval_ms, str(directory), kernel))
    digest = hashlib.sha256(identity.encode()).hexdigest()
    return SimpleNamespace(
        name=name, directory=directory, config_hash=lambda: digest,
        boot=SimpleNamespace(kind="kernel", kernel=kernel, initrd=None, cmdline="console=ttyS0"),
        resources=SimpleNamespace(memory_mib=memory, vcpus=1), service=SimpleNamespace(port=18080),
        probe=SimpleNamespace(path="/", expect_status=200, interval_ms=interval_ms, boot_timeout_s=boot_timeout,
                              request_timeout_ms=300),
        reap=SimpleNamespace(idle_timeout_s=idle, stop_mode=stop_mode, shutdown_grace_s=0.5),
    )


def host(label: str, address: str, image: str, **overrides: Any) -> OnDemandHost:
    name = f"{label}.example.org"
    return OnDemandHost(name=name, zone="example.org", image=image, address=address,
                        records=(RR(name, QTYPE.A, rdata=A(address), ttl=300),), soa=SOA_RR, negative_ttl=60,
                        location="test.zone:1", **overrides)


class FakeBackend:
    """In-memory libvirt stand-in; see module doc."""

    def __init__(self, boot_delay: float = 0.05) -> None:
        self.reactor = reactor
        self.boot_delay = boot_delay
        self.connected = True
        self.on_event = lambda *a: None
        self.on_connected = lambda: None
        self.domains: dict[str, dict[str, Any]] = {}
        self.creates = 0
        self.destroys = 0
        self.silent: set[str] = set()      # services whose VM never serves
        self.status: dict[str, int] = {}   # HTTP status per service (default 200)
        self.traffic_tokens: dict[str, Any] = {}
        self._uuids = itertools.count(1)

    # lifecycle
    def start(self) -> defer.Deferred:
        self.on_connected()
        return defer.succeed(True)

    def stop(self) -> defer.Deferred:
        for name in list(self.domains):
            self._unlisten(name)
        return defer.succeed(None)

    def when_connected(self) -> defer.Deferred:
        if self.connected:
            return defer.succeed(True)
        self._waiting = getattr(self, "_waiting", [])
        d: defer.Deferred = defer.Deferred()
        self._waiting.append(d)
        return d

    def reconnect(self) -> None:
        self.connected = True
        for d in getattr(self, "_waiting", []):
            d.callback(True)
        self._waiting = []
        self.on_connected()

    def kvm_usable(self) -> defer.Deferred:
        return defer.succeed((False, "fake"))

    def _check_connected(self) -> None:
        if not self.connected:
            raise NotConnectedError("not connected to libvirt at fake:///")

    def _event(self, name: str, event: str, detail: str, uuid: str) -> None:
        reactor.callLater(0, self.on_event, name, event, detail, uuid)

    # operations
    def create(self, xml: str, autodestroy: bool = False, paused: bool = False) -> defer.Deferred:
        if not self.connected:
            return defer.fail(NotConnectedError("not connected to libvirt at fake:///"))
        meta = parse_metadata(xml)
        assert meta is not None
        name = xml.split("<name>", 1)[1].split("</name>", 1)[0]
        if name in self.domains:
            return defer.fail(BackendError(f"domain '{name}' already exists"))
        self.creates += 1
        uuid = f"uuid-{next(self._uuids)}"
        dom = {"meta": meta, "state": "paused" if paused else "running", "port": None, "uuid": uuid, "xml": xml,
               "ran": not paused}
        self.domains[name] = dom
        if meta.service not in self.silent and not paused:
            dom["timer"] = reactor.callLater(self.boot_delay, self._listen, name)
        # The events come before the call's own reply here: the harder order.
        self._event(name, "started", "booted", uuid)
        if paused:
            self._event(name, "suspended", "paused", uuid)
        return task.deferLater(reactor, 0.001, lambda: uuid)

    def _listen(self, name: str) -> None:
        dom = self.domains.get(name)
        if dom is None or dom["port"] is not None:
            return
        meta = dom["meta"]
        dom["guest"] = _Hello(self.status.get(meta.service, 200))
        site = server.Site(dom["guest"])
        site.noisy = False
        dom["port"] = reactor.listenTCP(meta.port, site, interface=meta.address)

    def _unlisten(self, name: str) -> None:
        dom = self.domains.get(name)
        if dom is None:
            return
        timer = dom.pop("timer", None)
        if timer is not None and timer.active():
            timer.cancel()
        if dom["port"] is not None:
            dom["port"].stopListening()
            dom["port"] = None

    def destroy(self, name: str, uuid: str | None = None) -> defer.Deferred:
        if not self.connected:
            return defer.fail(NotConnectedError("not connected to libvirt at fake:///"))
        if name not in self.domains or (uuid and self.domains[name]["uuid"] != uuid):
            return defer.succeed(False)
        self.destroys += 1
        self._unlisten(name)
        dom = self.domains.pop(name)
        reactor.callLater(0, self.on_event, name, "stopped", "destroyed", dom["uuid"])
        return task.deferLater(reactor, 0.001, lambda: True)

    def kill(self, name: str) -> None:
        """A destroy behind summoner's back (virsh destroy)."""
        self._unlisten(name)
        dom = self.domains.pop(name)
        self.on_event(name, "stopped", "destroyed", dom["uuid"])

    def shutdown(self, name: str) -> defer.Deferred:
        return defer.maybeDeferred(lambda: self._check_connected() or name in self.domains)  # ACPI ignored

    def suspend(self, name: str) -> defer.Deferred:
        if not self.connected:
            return defer.fail(NotConnectedError("not connected to libvirt at fake:///"))
        dom = self.domains.get(name)
        if dom is None:
            return defer.fail(BackendError("Domain not found"))
        dom["state"] = "paused"
        if dom.get("guest") is not None:
            dom["guest"].paused = True  # the port forward stays open; nobody answers
        self._event(name, "suspended", "paused", dom["uuid"])
        return defer.succeed(None)

    def resume(self, name: str) -> defer.Deferred:
        if not self.connected:
            return defer.fail(NotConnectedError("not connected to libvirt at fake:///"))
        dom = self.domains.get(name)
        if dom is None:
            return defer.fail(BackendError("Domain not found"))
        dom["state"] = "running"
        self._event(name, "resumed", "unpaused", dom["uuid"])
        if not dom["ran"]:  # a standby domain: the guest boots now
            dom["ran"] = True
            if dom["meta"].service not in self.silent:
                dom["timer"] = reactor.callLater(self.boot_delay, self._listen, name)
        elif dom.get("guest") is not None:
            dom["guest"].resume()
        else:
            self._listen(name)
        return defer.succeed(None)

    def set_metadata(self, name: str, xml: str) -> defer.Deferred:
        from summoner.vm.domxml import parse_metadata
        if name in self.domains:
            self.domains[name]["meta"] = parse_metadata(xml)
        return defer.succeed(None)

    def state(self, name: str) -> defer.Deferred:
        return defer.maybeDeferred(lambda: self._check_connected() or (
            self.domains[name]["state"] if name in self.domains else "gone"))

    def list_ours(self) -> defer.Deferred:
        return defer.maybeDeferred(lambda: self._check_connected() or [
            DomainInfo(n, d["state"], d["meta"], d["uuid"]) for n, d in self.domains.items()])

    def traffic(self, names: dict[str, str]) -> defer.Deferred:
        return defer.maybeDeferred(lambda: self._check_connected() or {
            n: self.traffic_tokens.get(n, ()) for n in names if n in self.domains})

    def logs(self, domain: str, lines: int = 15) -> defer.Deferred:
        return defer.succeed(("fake qemu log line", "fake console line"))
