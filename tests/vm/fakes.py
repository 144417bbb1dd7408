"""Test doubles for the on-demand tests that do not boot QEMU.

``FakeBackend`` speaks the ``LibvirtBackend`` interface; a "VM" is an HTTP
listener on the service's loopback address that appears ``boot_delay`` after
``create``, so the real probe, state machine, stage and reaper run unchanged.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from dnslib import QTYPE, RR, SOA, A
from twisted.internet import defer, reactor, task
from twisted.web import resource, server

from summoner.vm.domxml import parse_metadata
from summoner.vm.hosts import OnDemandHost
from summoner.vm.libvirt_backend import BackendError, DomainInfo

SOA_RR = RR("example.org", QTYPE.SOA, rdata=SOA("ns1.example.org", "h.example.org", (1, 3600, 600, 86400, 60)),
            ttl=300)


class _Hello(resource.Resource):
    isLeaf = True  # noqa: N815

    def __init__(self, status: int) -> None:
        super().__init__()
        self.status = status

    def render_GET(self, request: Any) -> bytes:  # noqa: N802
        request.setResponseCode(self.status)
        return b"hello\n"


def manifest(name: str, *, boot_timeout: float = 2.0, idle: float = 300, stop_mode: str = "destroy",
             memory: int = 64, interval_ms: int = 10, directory: Path | None = None,
             kernel: str = "fakes.py") -> SimpleNamespace:
    directory = directory or Path(__file__).parent
    return SimpleNamespace(
        name=name, directory=directory, config_hash=lambda: f"{name}-v1",
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

    # operations
    def create(self, xml: str, autodestroy: bool = False, paused: bool = False) -> defer.Deferred:
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
        return task.deferLater(reactor, 0.001, lambda: uuid)

    def _listen(self, name: str) -> None:
        dom = self.domains.get(name)
        if dom is None or dom["port"] is not None:
            return
        meta = dom["meta"]
        site = server.Site(_Hello(self.status.get(meta.service, 200)))
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
        return defer.succeed(name in self.domains)  # a guest that ignores ACPI

    def suspend(self, name: str) -> defer.Deferred:
        dom = self.domains[name]
        dom["state"] = "paused"
        self._unlisten(name)
        return defer.succeed(None)

    def resume(self, name: str) -> defer.Deferred:
        dom = self.domains.get(name)
        if dom is None:
            return defer.fail(BackendError("Domain not found"))
        dom["state"] = "running"
        if not dom["ran"]:  # a standby domain: the guest boots now
            dom["ran"] = True
            if dom["meta"].service not in self.silent:
                dom["timer"] = reactor.callLater(self.boot_delay, self._listen, name)
        else:
            self._listen(name)
        return defer.succeed(None)

    def set_metadata(self, name: str, xml: str) -> defer.Deferred:
        from summoner.vm.domxml import parse_metadata
        if name in self.domains:
            self.domains[name]["meta"] = parse_metadata(xml)
        return defer.succeed(None)

    def state(self, name: str) -> defer.Deferred:
        return defer.succeed(self.domains[name]["state"] if name in self.domains else "gone")

    def list_ours(self) -> defer.Deferred:
        return defer.succeed([DomainInfo(n, d["state"], d["meta"], d["uuid"]) for n, d in self.domains.items()])

    def traffic(self, names: dict[str, str]) -> defer.Deferred:
        return defer.succeed({n: self.traffic_tokens.get(n, ()) for n in names if n in self.domains})

    def logs(self, domain: str, lines: int = 15) -> defer.Deferred:
        return defer.succeed(("fake qemu log line", "fake console line"))
